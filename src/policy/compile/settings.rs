//! The settings of a policy file: `ip_guard`, `deny_message`, `default_ports`.

use std::sync::Arc;

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::super::IpGuard;
use super::super::ip_guard::{default_blocked, parse_net};
use super::super::pattern::{Ports, valid_port};
use super::super::raw::{OneOrMany, RawIpGuard, Text};
use super::{Code, Compiler, DEFAULT_PORTS, DENY_MESSAGE_MAX};

impl Compiler {
    pub(super) fn ip_guard(&mut self, g: RawIpGuard) -> IpGuard {
        let blocked = match g.blocked {
            Some(b) => {
                let names_default = b.value.0.iter().any(|i| i.value.trim() == "default");
                self.spans.blocked = Some((self.at(b.referenced), names_default));
                self.blocked(b)
            }
            None => default_blocked(),
        };
        let mut allowed = Vec::new();
        for item in g.allowed.unwrap_or_default() {
            let at = self.at(item.referenced);
            if let Some(net) = self.net(item) {
                self.spans.guard_allowed.push((net, at));
                allowed.push(net);
            }
        }
        IpGuard::new(blocked, allowed)
    }

    /// A `deny_message`: one line of at most [`DENY_MESSAGE_MAX`] printable
    /// characters, since it goes into every refusal body as it is.
    pub(super) fn deny_message(&mut self, raw: Option<Text>) -> Option<Arc<str>> {
        let raw = raw?;
        let text = raw.value.trim();
        let problem = if text.is_empty() {
            Some("`deny_message` is empty".to_string())
        } else if text.chars().any(char::is_control) {
            Some("`deny_message` must be one line without control characters".to_string())
        } else if text.chars().count() > DENY_MESSAGE_MAX {
            Some(format!(
                "`deny_message` is {} characters long; at most {DENY_MESSAGE_MAX} fit in a refusal",
                text.chars().count()
            ))
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.error(
                    Code::BadDenyMessage,
                    raw.referenced,
                    message,
                    Some("say where to ask for access in one short line, e.g. `ask in #egress-requests`".into()),
                );
                None
            }
            None => Some(Arc::from(text)),
        }
    }

    pub(super) fn default_ports(&mut self, raw: Option<Spanned<Vec<Spanned<i64>>>>) -> Ports {
        let Some(list) = raw else {
            return Ports::Ranges(DEFAULT_PORTS.iter().map(|&p| p..=p).collect());
        };
        let mut ranges = Vec::new();
        for p in &list.value {
            match valid_port(p.value) {
                Some(port) => ranges.push(port..=port),
                None => self.error(
                    Code::BadPort,
                    p.referenced,
                    format!("`{}` is not a port", p.value),
                    Some("ports are 1-65535".into()),
                ),
            }
        }
        if list.value.is_empty() {
            self.error(
                Code::EmptyDefaultPorts,
                list.referenced,
                "`default_ports` is empty, so destinations without ports would match nothing",
                Some("write `default_ports: [443]` or remove the key".into()),
            );
        }
        Ports::Ranges(ranges)
    }

    pub(super) fn blocked(&mut self, raw: Spanned<OneOrMany>) -> Vec<IpNet> {
        let mut out = Vec::new();
        for item in raw.value.0 {
            if item.value.trim() == "default" {
                out.extend(default_blocked());
                continue;
            }
            let at = if item.referenced == Location::UNKNOWN {
                raw.referenced
            } else {
                item.referenced
            };
            out.extend(self.net(Spanned::new(item.value, at, at)));
        }
        out
    }

    pub(super) fn nets(&mut self, list: Vec<Text>) -> Vec<IpNet> {
        list.into_iter().filter_map(|item| self.net(item)).collect()
    }

    pub(super) fn net(&mut self, item: Text) -> Option<IpNet> {
        match parse_net(item.value.trim()) {
            Ok(net) => Some(net),
            Err(e) => {
                self.error(
                    Code::BadCidr,
                    item.referenced,
                    e,
                    Some("write a CIDR such as `10.0.1.0/24` or `fd00:1::/64`".into()),
                );
                None
            }
        }
    }
}
