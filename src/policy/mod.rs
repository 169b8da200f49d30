//! The pure decision core: a compiled policy and `decide`. No I/O, no runtime, no clock.

pub mod cases;
pub mod compile;
pub mod diagnostic;
pub mod diff;
pub mod explain;
pub mod host;
pub mod ignore;
pub mod ip_guard;
pub mod keys;
pub mod lint;
pub mod pattern;
pub mod raw;
pub mod ruleset;

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

pub use compile::{Checked, Compiled};
pub use diagnostic::{Code, Diagnostic, Severity};
pub use host::{Host, HostError};
pub use ip_guard::IpGuard;
use ruleset::{Rule, RuleSet, Target};

/// What happens to the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let through.
    Allow,
    /// Refused.
    Deny,
    /// Let through, but enforce would have denied it (`mode: report`).
    Report,
}

impl Verdict {
    /// The lowercase name used in metrics labels and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Report => "report",
        }
    }

    /// Whether the traffic goes through.
    pub fn permits(self) -> bool {
        self != Verdict::Deny
    }
}

/// Why a connection or request ended the way it did. One value picks the
/// status code, the metric label and the audit `reason` (SPEC section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Let through: a rule allowed it.
    Allowed,
    /// No rule allows the destination.
    NotAllowed,
    /// The source address is in no `clients` entry.
    ClientNotAllowed,
    /// Every address the destination resolves to is blocked by the `ip_guard`.
    BlockedIp,
    /// The request or its destination is malformed.
    BadRequest,
    /// The destination name did not resolve.
    DnsError,
    /// Dialing the destination failed.
    ConnectError,
    /// Dialing the destination took longer than `--connect-timeout`.
    ConnectTimeout,
    /// A connection limit was reached.
    Overloaded,
    /// The ClientHello's SNI differs from the CONNECT host.
    SniMismatch,
    /// The ClientHello carries encrypted_client_hello and the policy denies ECH.
    EchRefused,
    /// The ClientHello carries no server name.
    NoSni,
    /// A reload removed the destination of an open tunnel (`--revalidate-on-reload`).
    PolicyRevoked,
    /// A TLS stream that breaks the handshake rules the proxy checks (SPEC 9).
    TlsViolation,
    /// The audit log cannot take the exchange's record (`--audit-overflow refuse`).
    AuditUnavailable,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 15] = [
        Reason::Allowed,
        Reason::NotAllowed,
        Reason::ClientNotAllowed,
        Reason::BlockedIp,
        Reason::BadRequest,
        Reason::DnsError,
        Reason::ConnectError,
        Reason::ConnectTimeout,
        Reason::Overloaded,
        Reason::SniMismatch,
        Reason::EchRefused,
        Reason::NoSni,
        Reason::PolicyRevoked,
        Reason::TlsViolation,
        Reason::AuditUnavailable,
    ];

    /// The snake_case label used in metrics and the audit `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::NotAllowed => "not_allowed",
            Reason::ClientNotAllowed => "client_not_allowed",
            Reason::BlockedIp => "blocked_ip",
            Reason::BadRequest => "bad_request",
            Reason::DnsError => "dns_error",
            Reason::ConnectError => "connect_error",
            Reason::ConnectTimeout => "connect_timeout",
            Reason::Overloaded => "overloaded",
            Reason::SniMismatch => "sni_mismatch",
            Reason::EchRefused => "ech_refused",
            Reason::NoSni => "no_sni",
            Reason::PolicyRevoked => "policy_revoked",
            Reason::TlsViolation => "tls_violation",
            Reason::AuditUnavailable => "audit_unavailable",
        }
    }

    /// The one-line body of the error response.
    pub fn message(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::NotAllowed => "destination not allowed by the egress policy",
            Reason::ClientNotAllowed => "client address not listed in the egress policy",
            Reason::BlockedIp => "destination resolves only to blocked addresses",
            Reason::BadRequest => "malformed request or destination",
            Reason::DnsError => "destination name could not be resolved",
            Reason::ConnectError => "could not connect to the destination",
            Reason::ConnectTimeout => "timed out connecting to the destination",
            Reason::Overloaded => "proxy connection limit reached",
            Reason::SniMismatch => "TLS server name differs from the CONNECT host",
            Reason::EchRefused => "encrypted ClientHello refused by policy",
            Reason::NoSni => "TLS ClientHello carries no server name",
            Reason::PolicyRevoked => "destination removed from the policy",
            Reason::TlsViolation => "TLS handshake broke the rules the proxy checks",
            Reason::AuditUnavailable => {
                "the audit log cannot keep up; the proxy refuses what it cannot record, retry shortly"
            }
        }
    }
}

/// `enforce` denies; `report` lets traffic through and records what enforce would deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Deny what no rule allows.
    #[default]
    Enforce,
    /// Let everything through; record what enforce would deny.
    Report,
}

impl Mode {
    /// The name as written in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Report => "report",
        }
    }
}

/// How ClientHellos inside CONNECT tunnels are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsPolicy {
    /// A ClientHello's SNI must equal the CONNECT host.
    pub sni_must_match: bool,
    /// Whether ClientHellos carrying encrypted_client_hello may pass.
    pub ech_allowed: bool,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        TlsPolicy {
            sni_must_match: true,
            ech_allowed: false,
        }
    }
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What happens to the traffic.
    pub verdict: Verdict,
    /// For `Report`, the reason enforce mode would have denied with.
    pub reason: Reason,
    /// The destination that decided, as written in the file.
    pub rule: Option<Arc<str>>,
    /// The `clients` entry the source matched; `None` when the policy has no `clients`.
    pub client: Option<Arc<str>>,
}

/// A `clients` entry.
#[derive(Debug)]
pub struct Client {
    /// Unique name: the `client` label in metrics and the audit log.
    pub name: Arc<str>,
    /// Source ranges this entry covers.
    pub sources: Vec<IpNet>,
    /// This client's mode (the top-level one unless overridden).
    pub mode: Mode,
    /// Destinations this client may reach on top of the top-level `allow`.
    pub allow: RuleSet,
}

/// A compiled, immutable policy. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Policy {
    /// The top-level mode.
    pub mode: Mode,
    /// Ports a destination allows when it names none (`default_ports`).
    pub default_ports: pattern::Ports,
    /// Destinations every client may reach.
    pub allow: RuleSet,
    /// Destinations nobody reaches, whatever allows them.
    pub deny: RuleSet,
    /// `None` when the file has no `clients` section: every source is welcome.
    pub clients: Option<Vec<Client>>,
    /// Addresses never dialed.
    pub guard: IpGuard,
    /// ClientHello checks inside CONNECT tunnels.
    pub tls: TlsPolicy,
}

impl Policy {
    /// Parses and compiles a policy file's text. Pure: the caller reads the file.
    pub fn from_yaml(text: &str) -> Result<Compiled, Vec<Diagnostic>> {
        compile::compile(text)
    }

    /// The `clients` entry called `name`.
    pub fn client_named(&self, name: &str) -> Option<&Client> {
        self.clients.as_ref()?.iter().find(|c| &*c.name == name)
    }

    /// The first `clients` entry listing `addr`, in file order.
    pub fn client_for(&self, addr: IpAddr) -> Option<&Client> {
        let addr = addr.to_canonical();
        self.clients
            .as_ref()?
            .iter()
            .find(|c| c.sources.iter().any(|n| n.contains(&addr)))
    }

    /// Decides a request from `client_addr` to `host:port`.
    pub fn decide(&self, client_addr: IpAddr, host: &Host, port: u16) -> Decision {
        self.decide_for(self.client_for(client_addr), host, port)
    }

    /// Decides a request of `client` (the entry its source matched; `None`
    /// when it matched none) to `host:port`.
    pub fn decide_for(&self, client: Option<&Client>, host: &Host, port: u16) -> Decision {
        let mode = client.map_or(self.mode, |c| c.mode);
        let client_name = client.map(|c| c.name.clone());
        let (reason, rule) = match (&self.clients, client) {
            (Some(_), None) => (Reason::ClientNotAllowed, None),
            _ => self.match_rules(client, host, port),
        };
        let verdict = match (reason, mode) {
            (Reason::Allowed, _) => Verdict::Allow,
            // The guard is a safety net, not an allowlist: report mode never
            // opens the way to metadata or private addresses.
            (Reason::BlockedIp, _) => Verdict::Deny,
            (_, Mode::Report) => Verdict::Report,
            (_, Mode::Enforce) => Verdict::Deny,
        };
        Decision {
            verdict,
            reason,
            rule: rule.map(|r| r.text.clone()),
            client: client_name,
        }
    }

    /// Parses `host` first; a malformed host is denied as `bad_request` in every mode.
    pub fn decide_str(&self, client_addr: IpAddr, host: &str, port: u16) -> Decision {
        match Host::parse(host) {
            Ok(host) => self.decide(client_addr, &host, port),
            Err(_) => self.bad_request(client_addr),
        }
    }

    /// The decision for a request too malformed to look at.
    pub fn bad_request(&self, client_addr: IpAddr) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            reason: Reason::BadRequest,
            rule: None,
            client: self.client_for(client_addr).map(|c| c.name.clone()),
        }
    }

    /// Why `decision` (of [`Policy::decide`] for `host:port` from
    /// `client_addr`) refuses, in words a developer can act on: the audit
    /// `detail` and the refusal body. Runs only for refusals; the one extra
    /// lookup (does the host match a rule on other ports?) uses the same
    /// index as the decision.
    pub fn refusal_detail(
        &self,
        client_addr: IpAddr,
        host: &Host,
        port: u16,
        decision: &Decision,
    ) -> String {
        match (decision.reason, &decision.rule) {
            (Reason::ClientNotAllowed, _) => {
                format!("source {} matches no client", client_addr.to_canonical())
            }
            (Reason::NotAllowed, Some(rule)) => format!("deny rule `{rule}`"),
            (Reason::NotAllowed, None) => {
                let target = Target::new(host, port);
                let client = self.client_for(client_addr);
                let elsewhere = (self.allow.find_any_port(&target))
                    .or_else(|| client.and_then(|c| c.allow.find_any_port(&target)));
                match elsewhere {
                    Some(rule) => format!("{host} is allowed only on ports {}", rule.ports),
                    None => format!("no allow rule for {host}:{port}"),
                }
            }
            (Reason::BlockedIp, _) => format!("{host} is a guarded address"),
            (reason, _) => reason.message().to_string(),
        }
    }

    fn match_rules<'p>(
        &'p self,
        client: Option<&'p Client>,
        host: &Host,
        port: u16,
    ) -> (Reason, Option<&'p Rule>) {
        let target = Target::new(host, port);
        if let Some(rule) = self.deny.find(&target) {
            return (Reason::NotAllowed, Some(rule));
        }
        let allowed = self
            .allow
            .find(&target)
            .or_else(|| client.and_then(|c| c.allow.find(&target)));
        match (allowed, host) {
            (None, _) => (Reason::NotAllowed, None),
            (Some(rule), Host::Ip(ip)) if !self.guard.is_dialable(*ip) => {
                (Reason::BlockedIp, Some(rule))
            }
            (Some(rule), _) => (Reason::Allowed, Some(rule)),
        }
    }

    /// Number of rules in the policy: top-level allow and deny rules once,
    /// plus each client's own allow rules (the `rules` of audit records and
    /// `check --format json`).
    pub fn rule_count(&self) -> usize {
        let clients: usize = self.clients.iter().flatten().map(|c| c.allow.len()).sum();
        self.allow.len() + self.deny.len() + clients
    }

    /// Number of allow rules that apply to each client (`policy_rules` metric).
    /// The pseudo-client `default` counts the top-level rules.
    pub fn rule_counts(&self) -> Vec<(String, usize)> {
        let mut out = vec![(
            diff::EVERYONE.to_string(),
            self.allow.len() + self.deny.len(),
        )];
        for c in self.clients.iter().flatten() {
            out.push((
                c.name.to_string(),
                self.allow.len() + self.deny.len() + c.allow.len(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests;
