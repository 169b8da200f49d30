//! The pure decision core: a compiled policy and `decide`. No I/O, no runtime, no clock.

pub mod cases;
pub mod compile;
pub mod date;
pub mod diagnostic;
pub mod diff;
pub mod explain;
pub mod host;
pub mod identity;
pub mod ignore;
pub mod ip_guard;
pub mod keys;
pub mod lint;
pub mod pattern;
pub mod private;
pub mod raw;
pub mod ruleset;
mod skipped;

use std::sync::Arc;

use ipnet::IpNet;

pub use compile::{Checked, Compiled};
pub use diagnostic::{Code, Diagnostic, Severity};
pub use host::{Host, HostError};
pub use identity::{
    Caller, CertName, Credential, Credentials, Identity, PresentedToken, Selectors, TokenDigest,
};
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
/// status code, the metric label and the audit `reason` (docs/reference/refusals.md).
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
    /// A TLS stream that breaks the handshake rules the proxy checks (docs/security.md).
    TlsViolation,
    /// The audit log cannot take the exchange's record (`--audit-overflow refuse`).
    AuditUnavailable,
    /// The policy lists proxy tokens and the request matches no client: it
    /// presented no token, a malformed one, or one no matching client lists.
    ProxyAuthRequired,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 16] = [
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
        Reason::ProxyAuthRequired,
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
            Reason::ProxyAuthRequired => "proxy_auth_required",
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
            Reason::ProxyAuthRequired => {
                "proxy authentication required: send Proxy-Authorization with a token the policy lists"
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
    /// The deciding allow rule's `allow_private` ranges, when it let the
    /// traffic through: guarded private addresses it may dial.
    pub allow_private: Option<Arc<[IpNet]>>,
    /// The `clients` entry the caller matched; `None` when the policy has no `clients`.
    pub client: Option<Arc<str>>,
    /// The credential that matched the client; `None` when the source alone did.
    pub identity: Option<Identity>,
    /// Whether the matched client lists certificate, token and VPC endpoint
    /// selectors (in that order): the credentials that took part in the match.
    pub used: [bool; 3],
}

impl Decision {
    /// The guarded private ranges this exchange may dial: the deciding
    /// allow rule's `allow_private`, empty for most.
    pub fn allow_private(&self) -> &[IpNet] {
        self.allow_private.as_deref().unwrap_or(&[])
    }
}

/// The `allow_private` ranges a decision carries: those of the rule that
/// let the traffic through, none for a refusal.
fn private_of(rule: Option<&Rule>, verdict: Verdict) -> Option<Arc<[IpNet]>> {
    let meta = rule?.meta.as_ref()?;
    meta.allow_private.clone().filter(|_| verdict.permits())
}

/// A `clients` entry.
#[derive(Debug)]
pub struct Client {
    /// Unique name: the `client` label in metrics and the audit log.
    pub name: Arc<str>,
    /// How a caller is recognised as this client.
    pub selectors: Selectors,
    /// This client's mode (the top-level one unless overridden).
    pub mode: Mode,
    /// Destinations this client may reach on top of the top-level `allow`.
    pub allow: RuleSet,
    /// Added to this client's refusals (the top-level one unless overridden).
    pub deny_message: Option<Arc<str>>,
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
    /// Some client lists `tokens`: a caller that matches no client is asked
    /// to authenticate (`407`) rather than refused.
    pub uses_tokens: bool,
    /// Added to the refusal bodies of callers that match no client
    /// (`deny_message`); each client carries its own or this one.
    pub deny_message: Option<Arc<str>>,
    /// Whether the policy or any client sets a `deny_message`.
    pub has_deny_messages: bool,
}

impl Policy {
    /// Parses and compiles a policy file's text. Pure: the caller reads the file.
    pub fn from_yaml(text: &str) -> Result<Compiled, Vec<Diagnostic>> {
        compile::compile(text)
    }

    /// The line added to a refusal of a caller matched to `client` (by
    /// name; `None`: no client matched).
    pub fn deny_message_for(&self, client: Option<&str>) -> Option<Arc<str>> {
        if !self.has_deny_messages {
            return None;
        }
        match client.and_then(|name| self.client_named(name)) {
            Some(c) => c.deny_message.clone(),
            None => self.deny_message.clone(),
        }
    }

    /// The `clients` entry called `name`.
    pub fn client_named(&self, name: &str) -> Option<&Client> {
        self.clients.as_ref()?.iter().find(|c| &*c.name == name)
    }

    /// The first `clients` entry `caller` matches, in file order, with the
    /// credential that named it.
    pub fn matched<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
    ) -> Option<(&Client, Option<Identity>)> {
        let caller = caller.into();
        self.clients
            .as_ref()?
            .iter()
            .find_map(|c| Some((c, c.selectors.matches(&caller)?)))
    }

    /// The first `clients` entry `caller` matches, in file order.
    pub fn client_for<'c>(&self, caller: impl Into<Caller<'c>>) -> Option<&Client> {
        self.matched(caller).map(|(c, _)| c)
    }

    /// Decides a request from `caller` (an address, or a [`Caller`] with
    /// its credentials) to `host:port`.
    pub fn decide<'c>(&self, caller: impl Into<Caller<'c>>, host: &Host, port: u16) -> Decision {
        let matched = self.matched(caller);
        let client = matched.as_ref().map(|(c, _)| *c);
        let (verdict, reason, rule) = self.judge(client, host, port);
        let (client, identity, used) = Self::named(matched);
        Decision {
            verdict,
            reason,
            allow_private: private_of(rule, verdict),
            rule: rule.map(|r| r.text.clone()),
            client,
            identity,
            used,
        }
    }

    /// Decides a request of `client` (a `clients` entry chosen by name, as
    /// `explain --client NAME` does; `None`: a caller no client matched) to `host:port`.
    pub fn decide_for(&self, client: Option<&Client>, host: &Host, port: u16) -> Decision {
        let (verdict, reason, rule) = self.judge(client, host, port);
        let (client, identity, used) = Self::named(client.map(|c| (c, None)));
        Decision {
            verdict,
            reason,
            allow_private: private_of(rule, verdict),
            rule: rule.map(|r| r.text.clone()),
            client,
            identity,
            used,
        }
    }

    /// The verdict, reason and deciding rule for `client` (the matched entry) to `host:port`.
    fn judge<'p>(
        &'p self,
        client: Option<&'p Client>,
        host: &Host,
        port: u16,
    ) -> (Verdict, Reason, Option<&'p Rule>) {
        let mode = client.map_or(self.mode, |c| c.mode);
        let (reason, rule) = match (&self.clients, client) {
            (Some(_), None) if self.uses_tokens => (Reason::ProxyAuthRequired, None),
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
        (verdict, reason, rule)
    }

    fn named(
        matched: Option<(&Client, Option<Identity>)>,
    ) -> (Option<Arc<str>>, Option<Identity>, [bool; 3]) {
        match matched {
            Some((c, identity)) => {
                let s = &c.selectors;
                let used = [
                    Credential::Certificate,
                    Credential::Token,
                    Credential::VpcEndpoint,
                ]
                .map(|k| s.uses(k));
                (Some(c.name.clone()), identity, used)
            }
            None => (None, None, [false; 3]),
        }
    }

    /// Parses `host` first; a malformed host is denied as `bad_request` in every mode.
    pub fn decide_str<'c>(&self, caller: impl Into<Caller<'c>>, host: &str, port: u16) -> Decision {
        match Host::parse(host) {
            Ok(host) => self.decide(caller, &host, port),
            Err(_) => self.bad_request(caller),
        }
    }

    /// The decision for a request too malformed to look at.
    pub fn bad_request<'c>(&self, caller: impl Into<Caller<'c>>) -> Decision {
        let (client, identity, used) = Self::named(self.matched(caller));
        Decision {
            verdict: Verdict::Deny,
            reason: Reason::BadRequest,
            rule: None,
            allow_private: None,
            client,
            identity,
            used,
        }
    }

    /// Why `decision` (of [`Policy::decide`] for `host:port` from
    /// `client_addr`) refuses, in words a developer can act on: the audit
    /// `detail` and the refusal body, word for word the cause `explain`
    /// gives. Runs only for refusals.
    pub fn refusal_detail<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        host: &Host,
        port: u16,
        decision: &Decision,
    ) -> String {
        let caller = caller.into();
        let mut e = self.explain_host(self.client_for(caller), Ok(host.clone()), port);
        e.caller = Some(caller.describe());
        let mut cause = e.cause(port);
        if decision.reason == Reason::ProxyAuthRequired && caller.token.is_none() {
            cause.push_str("; send a token (Proxy-Authorization)");
        }
        cause
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
            (Some(rule), Host::Ip(ip))
                if !self.guard.is_dialable_with(*ip, rule.allow_private()) =>
            {
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

    /// Every rule, top-level `allow` and `deny` first, then each client's
    /// `allow`, whose `expires` day is before `today` (they stay enforced).
    pub fn expired_rules(&self, today: date::Date) -> Vec<&Rule> {
        let clients = self.clients.iter().flatten().map(|c| &c.allow);
        [&self.allow, &self.deny]
            .into_iter()
            .chain(clients)
            .flat_map(|set| set.rules())
            .filter(|r| r.expired(today))
            .collect()
    }

    /// The rules whose `expires` day had not passed on `before` and has on `today`.
    pub fn newly_expired(&self, before: date::Date, today: date::Date) -> Vec<&Rule> {
        (self.expired_rules(today).into_iter())
            .filter(|r| !r.expired(before))
            .collect()
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
