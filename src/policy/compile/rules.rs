//! The `allow` and `deny` lists: each entry's destination, metadata and `allow_private`.

use std::sync::Arc;

use ipnet::IpNet;
use serde_saphyr::Spanned;

use super::super::date::Date;
use super::super::ip_guard::forbidden_private;
use super::super::pattern::{Ports, parse_destination};
use super::super::raw::{RawRule, Text};
use super::super::ruleset::{Rule, RuleMeta};
use super::{Code, Compiler, List};

impl Compiler {
    /// The rules of one list in one file, in file order.
    pub(super) fn rules(
        &mut self,
        list: Vec<Spanned<RawRule>>,
        default_ports: &Ports,
        kind: List,
    ) -> Vec<Rule> {
        let mut rules = Vec::with_capacity(list.len());
        for item in list {
            let Some((dest, meta)) = self.entry(item, kind) else {
                continue;
            };
            match parse_destination(&dest.value) {
                Ok((pattern, ports)) => rules.push(Rule {
                    text: Arc::from(dest.value.trim()),
                    pattern,
                    ports: ports.unwrap_or_else(|| default_ports.clone()),
                    line: dest.referenced.line(),
                    column: dest.referenced.column(),
                    file: self.file.clone(),
                    meta,
                }),
                Err(e) => self.error(e.code, dest.referenced, e.message, e.hint),
            }
        }
        rules
    }

    /// An entry's destination and metadata; `None` (with an error) when
    /// the mapping has no `dest` or a bad `expires`.
    pub(super) fn entry(
        &mut self,
        item: Spanned<RawRule>,
        kind: List,
    ) -> Option<(Text, Option<Arc<RuleMeta>>)> {
        let at = item.referenced;
        let m = match item.value {
            RawRule::Plain(text) => return Some((Spanned::new(text, at, item.defined), None)),
            RawRule::Meta(m) => *m,
        };
        let expires = match &m.expires {
            None => None,
            Some(e) => match Date::parse(e.value.trim()) {
                Ok(day) => Some(day),
                Err(message) => {
                    self.error(
                        Code::InvalidValue,
                        e.referenced,
                        format!("`expires`: {message}"),
                        Some(
                            "write the last day the rule is needed, e.g. `expires: 2027-01-31`"
                                .into(),
                        ),
                    );
                    return None;
                }
            },
        };
        let Some(dest) = m.dest else {
            self.error(
                Code::MissingKey,
                at,
                "missing key `dest` in a rule written as a mapping",
                Some("name the destination, e.g. `dest: api.stripe.com:443`".into()),
            );
            return None;
        };
        let allow_private = m
            .allow_private
            .and_then(|list| self.allow_private(list, kind));
        let text = |t: Option<Text>| t.map(|t| Arc::from(t.value.trim()));
        let meta = RuleMeta {
            owner: text(m.owner),
            ticket: text(m.ticket),
            expires,
            note: text(m.note),
            allow_private,
        };
        Some((dest, Some(Arc::new(meta))))
    }

    /// An allow rule's `allow_private` ranges. A range that does not parse,
    /// or that touches link-local, loopback, unspecified or metadata
    /// addresses, is an error at its place; so is the key on a deny rule.
    pub(super) fn allow_private(
        &mut self,
        list: Spanned<Vec<Text>>,
        kind: List,
    ) -> Option<Arc<[IpNet]>> {
        if kind == List::Deny {
            self.error(
                Code::InvalidValue,
                list.referenced,
                "`allow_private` on a deny rule: a deny rule refuses its destination at every address",
                Some("move the rule to `allow`, or remove `allow_private`".into()),
            );
            return None;
        }
        let mut nets = Vec::with_capacity(list.value.len());
        for item in list.value {
            let at = item.referenced;
            let Some(net) = self.net(item) else { continue };
            match forbidden_private(&net) {
                Some(what) => self.error(
                    Code::PrivateRangeForbidden,
                    at,
                    format!("`allow_private` range `{net}` covers {what}: a rule may never dial these"),
                    Some("name only the private range of the endpoint, e.g. `10.0.0.0/16` (a VPC's CIDR)".into()),
                ),
                None => nets.push(net),
            }
        }
        (!nets.is_empty()).then(|| nets.into())
    }
}
