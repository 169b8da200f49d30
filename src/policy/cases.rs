//! Expected decisions (`portcullis test`): a YAML list of cases, each a
//! client or source, a destination and the verdict the policy must give.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::explain::{Explanation, parse_target};
use super::{Policy, Reason, Verdict};

/// One expected decision: a client (by `name`) or a `source` address, a
/// destination, and the verdict the policy must give.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Case", extend("not" = { "required": ["client", "source"] }))]
pub struct RawCase {
    /// What the case pins, printed when it fails.
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// The client, by its `name` in the policy.
    #[schemars(with = "Option<String>", length(min = 1))]
    pub client: Option<Spanned<String>>,
    /// The connection's source address: the client is the first whose `sources` list it, as in the proxy.
    #[schemars(with = "Option<String>", length(min = 1))]
    pub source: Option<Spanned<String>>,
    /// The destination: `HOST`, `HOST:PORT`, `[IPv6]:PORT`, or a URL such as `https://api.stripe.com/v1/charges`. Without a port: the URL scheme's, else 443.
    #[schemars(with = "String", length(min = 1))]
    pub dest: Spanned<String>,
    /// The verdict the policy must give.
    #[schemars(with = "Expect")]
    pub expect: Spanned<Expect>,
    /// The reason the decision must carry, when the case pins it.
    #[schemars(with = "Option<ExpectReason>")]
    pub reason: Option<Spanned<ExpectReason>>,
}

/// A verdict a case expects: exactly what `explain` prints as `decision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// A rule allows it.
    Allow,
    /// It is refused.
    Deny,
    /// Report mode lets it through, but enforce would refuse it.
    Report,
}

impl Expect {
    /// As written.
    pub fn as_str(self) -> &'static str {
        self.verdict().as_str()
    }

    fn verdict(self) -> Verdict {
        match self {
            Expect::Allow => Verdict::Allow,
            Expect::Deny => Verdict::Deny,
            Expect::Report => Verdict::Report,
        }
    }
}

/// The reasons a policy decision can carry (the rest come from the network).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExpectReason {
    /// A rule allows it.
    Allowed,
    /// No rule allows it, or a deny rule matches.
    NotAllowed,
    /// The source matches no `clients` entry.
    ClientNotAllowed,
    /// The destination is an address in `ip_guard.blocked`.
    BlockedIp,
    /// The destination is not a valid host.
    BadRequest,
}

impl ExpectReason {
    fn reason(self) -> Reason {
        match self {
            ExpectReason::Allowed => Reason::Allowed,
            ExpectReason::NotAllowed => Reason::NotAllowed,
            ExpectReason::ClientNotAllowed => Reason::ClientNotAllowed,
            ExpectReason::BlockedIp => Reason::BlockedIp,
            ExpectReason::BadRequest => Reason::BadRequest,
        }
    }
}

/// A problem that stops the cases from running (exit 2), at a 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseError {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// What is wrong.
    pub message: String,
}

impl CaseError {
    fn new(at: Location, message: impl Into<String>) -> Self {
        CaseError {
            line: at.line(),
            column: at.column(),
            message: message.into(),
        }
    }
}

/// A case, its decision, and whether they agree.
#[derive(Debug)]
pub struct Outcome<'p> {
    /// 1-based line of the case.
    pub line: u64,
    /// 1-based column of the case.
    pub column: u64,
    /// The case's name, or a description made from its fields.
    pub label: String,
    /// The destination host and port, as parsed.
    pub dest: (String, u16),
    /// What the case expects.
    pub expect: Expect,
    /// The reason the case expects, if any.
    pub expect_reason: Option<Reason>,
    /// What the policy decides, and why.
    pub got: Explanation<'p>,
}

impl Outcome<'_> {
    /// Whether the decision is what the case expects.
    pub fn passed(&self) -> bool {
        self.got.decision.verdict == self.expect.verdict()
            && self
                .expect_reason
                .is_none_or(|r| r == self.got.decision.reason)
    }
}

/// Parses a cases file: `Err` holds the first problem, with its location.
pub fn parse(text: &str) -> Result<Vec<Spanned<RawCase>>, CaseError> {
    if text.trim().is_empty() {
        return Err(CaseError {
            line: 1,
            column: 1,
            message: "the cases file is empty: list at least one case".into(),
        });
    }
    let cases: Vec<Spanned<RawCase>> = serde_saphyr::from_str(text).map_err(|e| {
        let at = e.location().unwrap_or(Location::UNKNOWN);
        CaseError::new(at, super::compile::yaml_message(&e))
    })?;
    if cases.is_empty() {
        return Err(CaseError {
            line: 1,
            column: 1,
            message: "the cases file lists no cases".into(),
        });
    }
    Ok(cases)
}

/// Runs every case against `policy`. `Err` lists every case that cannot
/// run (an unknown client, a bad address or destination): each would
/// otherwise pass or fail for the wrong reason.
pub fn run<'p>(
    policy: &'p Policy,
    cases: &[Spanned<RawCase>],
) -> Result<Vec<Outcome<'p>>, Vec<CaseError>> {
    let mut outcomes = Vec::with_capacity(cases.len());
    let mut errors = Vec::new();
    for case in cases {
        match run_one(policy, case) {
            Ok(o) => outcomes.push(o),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(outcomes)
    } else {
        Err(errors)
    }
}

fn run_one<'p>(policy: &'p Policy, case: &Spanned<RawCase>) -> Result<Outcome<'p>, CaseError> {
    let at = case.referenced;
    let c = &case.value;
    let (client, who) = match (&c.client, &c.source) {
        (Some(_), Some(s)) => {
            return Err(CaseError::new(
                s.referenced,
                "give `client` or `source`, not both",
            ));
        }
        (Some(name), None) => match policy.client_named(name.value.trim()) {
            Some(client) => (Some(client), format!("client {}", client.name)),
            None => {
                return Err(CaseError::new(
                    name.referenced,
                    unknown_client(policy, &name.value),
                ));
            }
        },
        (None, Some(source)) => {
            let ip: IpAddr = source.value.trim().parse().map_err(|_| {
                CaseError::new(
                    source.referenced,
                    format!("`{}` is not an IP address", source.value),
                )
            })?;
            (policy.client_for(ip), format!("source {ip}"))
        }
        (None, None) if policy.clients.is_some() => {
            return Err(CaseError::new(
                at,
                "the policy has `clients`: give the case a `client` (a name) or a `source` (an address)",
            ));
        }
        (None, None) => (None, "any source".to_string()),
    };
    let (host, port) =
        parse_target(&c.dest.value).map_err(|e| CaseError::new(c.dest.referenced, e))?;
    let mut got = policy.explain(client, &host, port);
    got.caller = Some(who.clone());
    let label = match &c.name {
        Some(n) => n.value.clone(),
        None => format!("{who} -> {}", c.dest.value.trim()),
    };
    Ok(Outcome {
        line: at.line(),
        column: at.column(),
        label,
        dest: (host, port),
        expect: c.expect.value,
        expect_reason: c.reason.as_ref().map(|r| r.value.reason()),
        got,
    })
}

fn unknown_client(policy: &Policy, name: &str) -> String {
    let names: Vec<&str> = policy.clients.iter().flatten().map(|c| &*c.name).collect();
    if names.is_empty() {
        return format!(
            "no client `{name}`: the policy has no `clients`; use `source` or leave both out"
        );
    }
    let mut message = format!("no client `{name}` in the policy");
    match super::keys::closest(name, names.iter().copied()) {
        Some(near) => message.push_str(&format!(" (did you mean `{near}`?)")),
        None => message.push_str(&format!(" (clients: {})", names.join(", "))),
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: 1\nallow: [api.stripe.com]\nclients:\n  - name: payments\n    sources: [10.0.1.0/24]\n  - name: batch\n    sources: [10.0.3.0/24]\n    mode: report\n";

    fn outcomes(cases: &str) -> Vec<(String, bool)> {
        let policy = Policy::from_yaml(POLICY).unwrap().policy;
        let parsed = parse(cases).unwrap();
        run(&policy, &parsed)
            .unwrap()
            .iter()
            .map(|o| (o.label.clone(), o.passed()))
            .collect()
    }

    #[test]
    fn verdict_and_optional_reason_must_both_agree() {
        let got = outcomes(
            "- {client: payments, dest: api.stripe.com, expect: allow}\n- {client: payments, dest: \"https://evil.example/x\", expect: deny, reason: not_allowed}\n- {source: 192.0.2.1, dest: api.stripe.com, expect: deny, reason: client_not_allowed}\n- {name: batch learns, client: batch, dest: evil.example, expect: report}\n- {client: payments, dest: evil.example, expect: allow}\n- {client: payments, dest: api.stripe.com, expect: allow, reason: not_allowed}\n- {client: batch, dest: evil.example, expect: deny}\n",
        );
        let passed: Vec<bool> = got.iter().map(|(_, p)| *p).collect();
        assert_eq!(
            passed,
            [true, true, true, true, false, false, false],
            "{got:?}"
        );
        assert_eq!(got[0].0, "client payments -> api.stripe.com");
        assert_eq!(got[3].0, "batch learns");
    }

    #[test]
    fn cases_that_cannot_run_are_errors_with_their_place() {
        let policy = Policy::from_yaml(POLICY).unwrap().policy;
        let parsed = parse(
            "- {client: paymnts, dest: a.example, expect: allow}\n- {source: nope, dest: a.example, expect: allow}\n- {dest: a.example, expect: allow}\n- {client: payments, source: 10.0.1.1, dest: a.example, expect: allow}\n- {client: payments, dest: \"a.example:0\", expect: allow}\n",
        )
        .unwrap();
        let errors = run(&policy, &parsed).unwrap_err();
        let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 2, 3, 4, 5], "{errors:?}");
        assert!(errors[0].message.contains("did you mean `payments`?"));
    }

    #[test]
    fn malformed_files_name_line_and_column() {
        let e = parse("- {client: a, dest: x, expect: maybe}\n").unwrap_err();
        assert_eq!((e.line, e.column), (1, 32), "{e:?}");
        let e = parse("- client: a\n  dest: x\n  expect: allow\n  extra: 1\n").unwrap_err();
        assert_eq!((e.line, e.column), (4, 3), "{e:?}");
        assert!(!e.message.contains(" at line "), "{e:?}");
        assert!(parse("").is_err());
        assert!(parse("[]").is_err());
    }
}
