//! Raw YAML -> `Policy`: validate, normalise every pattern once, and collect every error.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::identity::{self, CertName, Selectors, TokenDigest};
use super::ip_guard::{default_blocked, parse_net};
use super::pattern::{Ports, parse_destination, valid_port};
use super::raw::{RawClient, RawEch, RawMode, RawPolicy, Text};
use super::ruleset::{Rule, RuleSet};
use super::{Client, IpGuard, Mode, Policy, TlsPolicy, lint};

/// The only policy format version this build reads.
pub const VERSION: i64 = 1;
/// Ports a destination allows when it names none and `default_ports` is absent.
pub const DEFAULT_PORTS: &[u16] = &[443];

/// How serious a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy does not load.
    Error,
    /// The policy loads, but probably does not say what was meant.
    Warning,
}

/// One problem found in a policy file, at a 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// What is wrong.
    pub message: String,
    /// What to write instead, when there is an obvious fix.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error at `at`.
    pub fn error(at: Location, message: impl Into<String>, hint: Option<String>) -> Self {
        Diagnostic::new(Severity::Error, at, message, hint)
    }

    /// A warning at `at`.
    pub fn warning(at: Location, message: impl Into<String>, hint: Option<String>) -> Self {
        Diagnostic::new(Severity::Warning, at, message, hint)
    }

    fn new(
        severity: Severity,
        at: Location,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Self {
        Diagnostic {
            severity,
            line: at.line(),
            column: at.column(),
            message: message.into(),
            hint,
        }
    }
}

/// `LINE:COLUMN: error: message (hint)`; callers prefix the path.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}: {severity}: {}",
            self.line, self.column, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// A policy that compiled. Its warnings are worked out on demand: `check`
/// and start-up want them, a hot reload does not wait for them.
#[derive(Debug)]
pub struct Compiled {
    /// The compiled policy.
    pub policy: Policy,
}

impl Compiled {
    /// Duplicates, shadowed rules, and wildcards broader than they look.
    pub fn warnings(&self) -> Vec<Diagnostic> {
        lint::lint(&self.policy)
    }
}

/// Parses and compiles a policy file's text, collecting every error (sorted by position).
pub fn compile(text: &str) -> Result<Compiled, Vec<Diagnostic>> {
    if text.trim().is_empty() {
        return Err(vec![Diagnostic::error(
            Location::UNKNOWN,
            "the policy file is empty",
            Some("start with `version: 1` and an `allow:` list".into()),
        )]);
    }
    let raw: RawPolicy = serde_saphyr::from_str(text).map_err(|e| vec![yaml_error(&e)])?;
    let mut cx = Compiler::default();
    let policy = cx.policy(raw);
    if cx.errors.is_empty() {
        Ok(Compiled { policy })
    } else {
        cx.errors.sort_by_key(|d| (d.line, d.column));
        Err(cx.errors)
    }
}

fn yaml_error(e: &serde_saphyr::Error) -> Diagnostic {
    let at = e.location().unwrap_or(Location::UNKNOWN);
    // saphyr's text is "error: line L column C: message"; we print the position ourselves.
    let full = e.without_snippet().to_string();
    let mut message = full.trim().strip_prefix("error: ").unwrap_or(full.trim());
    if message.starts_with("line ")
        && let Some((_, rest)) = message.split_once(": ")
    {
        message = rest;
    }
    if let Some((head, _)) = message.rsplit_once(" at line ") {
        message = head;
    }
    // saphyr's advice on its own options means nothing to a policy author.
    if let Some((head, _)) = message.split_once(", set DuplicateKeyPolicy") {
        message = head;
    }
    let message = message.to_string();
    let hint = if message.contains("unknown field") {
        Some("check the key's spelling and indentation (README, \"Policy format\")".into())
    } else {
        None
    };
    Diagnostic::error(at, message, hint)
}

#[derive(Default)]
struct Compiler {
    errors: Vec<Diagnostic>,
}

impl Compiler {
    fn error(&mut self, at: Location, message: impl Into<String>, hint: Option<String>) {
        self.errors.push(Diagnostic::error(at, message, hint));
    }

    fn policy(&mut self, raw: RawPolicy) -> Policy {
        if raw.version.value != VERSION {
            self.error(
                raw.version.referenced,
                format!("unsupported policy version {}", raw.version.value),
                Some(format!("this portcullis reads `version: {VERSION}`")),
            );
        }
        let top_mode = mode(raw.mode.as_ref()).unwrap_or_default();
        let default_ports = self.default_ports(raw.default_ports);
        let allow = self.rules(raw.allow.unwrap_or_default(), &default_ports);
        let deny = self.rules(raw.deny.unwrap_or_default(), &Ports::Any);
        let clients = raw
            .clients
            .map(|cs| self.clients(cs, &default_ports, top_mode));
        let guard = match raw.ip_guard {
            Some(g) => {
                let blocked = g.blocked.map_or_else(default_blocked, |b| self.blocked(b));
                let allowed = self.nets(g.allowed.unwrap_or_default());
                IpGuard::new(blocked, allowed)
            }
            None => IpGuard::default(),
        };
        let tls = raw.tls.map_or_else(TlsPolicy::default, |t| TlsPolicy {
            sni_must_match: t.sni_must_match.unwrap_or(true),
            ech_allowed: t.ech == Some(RawEch::Allow),
        });
        let uses_tokens = (clients.iter().flatten()).any(|c| !c.selectors.tokens.is_empty());
        Policy {
            uses_tokens,
            mode: top_mode,
            allow,
            deny,
            clients,
            guard,
            tls,
        }
    }

    fn default_ports(&mut self, raw: Option<Vec<Spanned<i64>>>) -> Ports {
        let Some(list) = raw else {
            return Ports::Ranges(DEFAULT_PORTS.iter().map(|&p| p..=p).collect());
        };
        let mut ranges = Vec::new();
        for p in &list {
            match valid_port(p.value) {
                Some(port) => ranges.push(port..=port),
                None => self.error(
                    p.referenced,
                    format!("`{}` is not a port", p.value),
                    Some("ports are 1-65535".into()),
                ),
            }
        }
        if list.is_empty() {
            self.error(
                Location::UNKNOWN,
                "`default_ports` is empty, so destinations without ports would match nothing",
                Some("write `default_ports: [443]` or remove the key".into()),
            );
        }
        Ports::Ranges(ranges)
    }

    fn rules(&mut self, list: Vec<Text>, default_ports: &Ports) -> RuleSet {
        let mut rules = Vec::with_capacity(list.len());
        for item in list {
            match parse_destination(&item.value) {
                Ok((pattern, ports)) => rules.push(Rule {
                    text: Arc::from(item.value.trim()),
                    pattern,
                    ports: ports.unwrap_or_else(|| default_ports.clone()),
                    line: item.referenced.line(),
                    column: item.referenced.column(),
                }),
                Err(e) => self.error(item.referenced, e.message, e.hint),
            }
        }
        RuleSet::new(rules)
    }

    fn clients(
        &mut self,
        raw: Vec<RawClient>,
        default_ports: &Ports,
        top_mode: Mode,
    ) -> Vec<Client> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for c in raw {
            let name = c.name.value.trim().to_string();
            if name.is_empty() {
                self.error(
                    c.name.referenced,
                    "client name is empty",
                    Some("name each client, e.g. `name: payments`".into()),
                );
            } else if !seen.insert(name.clone()) {
                self.error(
                    c.name.referenced,
                    format!("client `{name}` is defined twice"),
                    Some("merge the two entries".into()),
                );
            }
            let selectors = self.selectors(&c, &name);
            out.push(Client {
                name: Arc::from(name),
                selectors,
                mode: mode(c.mode.as_ref()).unwrap_or(top_mode),
                allow: self.rules(c.allow.unwrap_or_default(), default_ports),
            });
        }
        out
    }

    /// The client's selectors; a client without any, or with an empty list, is an error.
    fn selectors(&mut self, c: &RawClient, name: &str) -> Selectors {
        let kinds = [
            ("sources", &c.sources, "`sources: [10.0.1.0/24]`"),
            (
                "certificates",
                &c.certificates,
                "`certificates: [\"spiffe://acme.internal/ns/payments/sa/api\"]`",
            ),
            (
                "tokens",
                &c.tokens,
                "`tokens: [\"sha256:…\"]` (`portcullis token` makes one)",
            ),
            (
                "vpc_endpoints",
                &c.vpc_endpoints,
                "`vpc_endpoints: [vpce-0a1b2c3d4e5f67890]`",
            ),
        ];
        for (key, list, example) in &kinds {
            if let Some(list) = list
                && list.value.is_empty()
            {
                self.error(
                    list.referenced,
                    format!("client `{name}` has no {key}: an empty list matches nobody"),
                    Some(format!("list values, e.g. {example}, or remove the key")),
                );
            }
        }
        if kinds.iter().all(|(_, list, _)| list.is_none()) {
            self.error(
                c.name.referenced,
                format!("client `{name}` has no selector: nothing says which callers it is"),
                Some("give it `sources`, `certificates`, `tokens` or `vpc_endpoints` (all listed kinds must match)".into()),
            );
        }
        let items = |list: &Option<Spanned<Vec<Text>>>| {
            list.as_ref().map_or(&[][..], |l| &l.value[..]).to_vec()
        };
        Selectors {
            sources: self.nets(items(&c.sources)),
            certificates: self.parsed(items(&c.certificates), CertName::parse_selector),
            tokens: self.parsed(items(&c.tokens), TokenDigest::parse_selector),
            vpc_endpoints: self.parsed(items(&c.vpc_endpoints), identity::parse_vpc_endpoint),
        }
    }

    /// Each item parsed by `parse`, or an error at its place.
    fn parsed<T>(&mut self, list: Vec<Text>, parse: fn(&str) -> Result<T, String>) -> Vec<T> {
        let mut out = Vec::with_capacity(list.len());
        for item in list {
            match parse(&item.value) {
                Ok(v) => out.push(v),
                Err(e) => self.error(item.referenced, e, None),
            }
        }
        out
    }

    fn blocked(&mut self, raw: Spanned<super::raw::OneOrMany>) -> Vec<IpNet> {
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
            self.net(Spanned::new(item.value, at, at), &mut out);
        }
        out
    }

    fn nets(&mut self, list: Vec<Text>) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(list.len());
        for item in list {
            self.net(item, &mut out);
        }
        out
    }

    fn net(&mut self, item: Text, out: &mut Vec<IpNet>) {
        match parse_net(item.value.trim()) {
            Ok(net) => out.push(net),
            Err(e) => self.error(
                item.referenced,
                e,
                Some("write a CIDR such as `10.0.1.0/24` or `fd00:1::/64`".into()),
            ),
        }
    }
}

fn mode(raw: Option<&Spanned<RawMode>>) -> Option<Mode> {
    raw.map(|m| match m.value {
        RawMode::Enforce => Mode::Enforce,
        RawMode::Report => Mode::Report,
    })
}
