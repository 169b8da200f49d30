//! Raw YAML -> `Policy`: validate, normalise every pattern once, and collect every error.

use std::collections::HashSet;
use std::sync::Arc;

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::date::Date;
use super::identity::{self, CertName, Selectors, TokenDigest};
use super::ignore::Ignores;
use super::ip_guard::{default_blocked, forbidden_private, parse_net};
use super::lint::{self, ClientSpans, Spans};
use super::pattern::{Ports, parse_destination, valid_port};
use super::raw::{RawClient, RawEch, RawMode, RawPolicy, RawRule, Text};
use super::ruleset::{Rule, RuleMeta, RuleSet};
use super::{Client, IpGuard, Mode, Policy, TlsPolicy, keys};

/// The only policy format version this build reads.
pub const VERSION: i64 = 1;
/// Ports a destination allows when it names none and `default_ports` is absent.
pub const DEFAULT_PORTS: &[u16] = &[443];

/// The longest `deny_message`, in characters.
pub const DENY_MESSAGE_MAX: usize = 200;

pub use super::diagnostic::{Code, Diagnostic, Severity};

/// A policy that compiled. Its warnings are worked out on demand: `check`
/// and start-up want them, a hot reload does not wait for them.
#[derive(Debug)]
pub struct Compiled {
    /// The compiled policy.
    pub policy: Policy,
    spans: Spans,
    ignores: Ignores,
}

impl Compiled {
    /// Every warning, in file order, less those an ignore comment silences.
    /// `today` decides which rules have expired.
    pub fn warnings(&self, today: Date) -> Vec<Diagnostic> {
        let mut out = self
            .ignores
            .apply(lint::lint(&self.policy, &self.spans, today));
        out.sort_by_key(|d| (d.line, d.column));
        out
    }
}

/// Everything `check` has to say about one policy text.
#[derive(Debug)]
pub struct Checked {
    /// The policy, when it compiled without errors.
    pub compiled: Option<Compiled>,
    /// Every error and (not silenced) warning, in file order.
    pub problems: Vec<Diagnostic>,
}

/// Checks a policy file's text: every error and every warning in one pass.
/// Warnings are worked out even when there are errors, on the rules that
/// did compile; only a text that is not YAML, or a value of the wrong type,
/// stops the check early. `today` decides which rules have expired.
pub fn check(text: &str, today: Date) -> Checked {
    let built = build(text);
    let mut problems = built.errors;
    let warnings = built
        .policy
        .as_ref()
        .map(|(policy, spans)| built.ignores.apply(lint::lint(policy, spans, today)));
    problems.extend(warnings.into_iter().flatten());
    problems.sort_by_key(|d| (d.line, d.column));
    let compiled = match built.policy {
        Some((policy, spans)) if problems.iter().all(|d| d.severity == Severity::Warning) => {
            Some(Compiled {
                policy,
                spans,
                ignores: built.ignores,
            })
        }
        _ => None,
    };
    Checked { compiled, problems }
}

/// Parses and compiles a policy file's text, collecting every error (sorted by position).
pub fn compile(text: &str) -> Result<Compiled, Vec<Diagnostic>> {
    let built = build(text);
    match built.policy {
        Some((policy, spans)) if built.errors.is_empty() => Ok(Compiled {
            policy,
            spans,
            ignores: built.ignores,
        }),
        _ => {
            let mut errors = built.errors;
            errors.sort_by_key(|d| (d.line, d.column));
            Err(errors)
        }
    }
}

/// What one pass over a policy text produced: its errors, and the policy
/// made of everything that did compile (`None` when the text's structure
/// could not be read at all).
struct Built {
    policy: Option<(Policy, Spans)>,
    errors: Vec<Diagnostic>,
    ignores: Ignores,
}

fn build(text: &str) -> Built {
    let mut built = Built {
        policy: None,
        errors: Vec::new(),
        ignores: Ignores::scan(text),
    };
    let Some(top) = keys::first_content(text) else {
        built.errors.push(Diagnostic::at(
            Code::EmptyFile,
            1,
            1,
            "the policy file holds no YAML document, only comments or blank lines",
            Some("start with `version: 1` and an `allow:` list".to_string()),
        ));
        return built;
    };
    // One parse when all is well: unknown keys are only noticed here, and
    // located by a second reading when there are some.
    let mut unknown = false;
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_ignored::deserialize(de, |path| unknown |= keys::is_unknown_key(&path))
    });
    let raw: RawPolicy = match parsed {
        Ok(raw) => raw,
        Err(e) => {
            match keys::unknown_keys(text) {
                // Not YAML at all: the plain tree does not parse either.
                Err(syntax) => built.errors.push(yaml_error(&syntax, Code::YamlSyntax)),
                // A value of the wrong type: the shape past it is unknown,
                // but every unknown key is still worth reporting.
                Ok(found) => {
                    built.errors.extend(found);
                    built.errors.push(yaml_error(&e, Code::InvalidValue));
                }
            }
            return built;
        }
    };
    if unknown {
        match keys::unknown_keys(text) {
            Ok(found) if !found.is_empty() => built.errors.extend(found),
            // The schema and serde disagree: never load a file with a key
            // serde ignored.
            _ => built.errors.push(Diagnostic::at(
                Code::UnknownKey,
                top.0,
                top.1,
                "the policy has a key this portcullis does not read",
                None,
            )),
        }
    }
    let mut cx = Compiler {
        errors: std::mem::take(&mut built.errors),
        spans: Spans::default(),
    };
    let policy = cx.policy(raw, top);
    built.errors = cx.errors;
    built.policy = Some((policy, cx.spans));
    built
}

/// A parser or type error. `fallback` is the code when the message is not
/// one of the kinds recognised here.
fn yaml_error(e: &serde_saphyr::Error, fallback: Code) -> Diagnostic {
    let at = e.location().unwrap_or(Location::UNKNOWN);
    let message = yaml_message(e);
    let (code, hint) = if message.contains("duplicate") {
        (
            Code::DuplicateKey,
            Some("merge the two entries into one key".to_string()),
        )
    } else if message.contains("missing field") {
        (Code::MissingKey, None)
    } else if fallback == Code::InvalidValue {
        (
            Code::InvalidValue,
            Some("see docs/reference/policy.md for each key's type and values".to_string()),
        )
    } else {
        (fallback, None)
    };
    Diagnostic::new(code, at, message, hint)
}

/// A YAML parser or type error's message without the position, which
/// callers print themselves.
pub(crate) fn yaml_message(e: &serde_saphyr::Error) -> String {
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
    message.to_string()
}

struct Compiler {
    errors: Vec<Diagnostic>,
    spans: Spans,
}

impl Compiler {
    fn error(
        &mut self,
        code: Code,
        at: Location,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.errors.push(Diagnostic::new(code, at, message, hint));
    }

    fn policy(&mut self, raw: RawPolicy, top: (u64, u64)) -> Policy {
        match &raw.version {
            None => self.errors.push(Diagnostic::at(
                Code::MissingKey,
                top.0,
                top.1,
                "missing key `version`",
                Some(format!("start the file with `version: {VERSION}`")),
            )),
            Some(v) if v.value != VERSION => self.error(
                Code::BadVersion,
                v.referenced,
                format!("unsupported policy version {}", v.value),
                Some(format!("this portcullis reads `version: {VERSION}`")),
            ),
            Some(_) => {}
        }
        let top_mode = mode(raw.mode.as_ref()).unwrap_or_default();
        self.spans.mode = raw.mode.as_ref().map(|m| m.referenced.into());
        let default_ports = self.default_ports(raw.default_ports);
        let top_message = self.deny_message(raw.deny_message);
        let allow = self.rules(raw.allow.unwrap_or_default(), &default_ports, List::Allow);
        let deny = self.rules(raw.deny.unwrap_or_default(), &Ports::Any, List::Deny);
        let clients = raw
            .clients
            .map(|cs| self.clients(cs, &default_ports, top_mode, top_message.as_ref()));
        let guard = match raw.ip_guard {
            Some(g) => {
                let blocked = match g.blocked {
                    Some(b) => {
                        let names_default = b.value.0.iter().any(|i| i.value.trim() == "default");
                        self.spans.blocked = Some((b.referenced.into(), names_default));
                        self.blocked(b)
                    }
                    None => default_blocked(),
                };
                let mut allowed = Vec::new();
                for item in g.allowed.unwrap_or_default() {
                    let at = item.referenced;
                    if let Some(net) = self.net(item) {
                        self.spans.guard_allowed.push((net, at.into()));
                        allowed.push(net);
                    }
                }
                IpGuard::new(blocked, allowed)
            }
            None => IpGuard::default(),
        };
        let tls = raw.tls.map_or_else(TlsPolicy::default, |t| TlsPolicy {
            sni_must_match: t.sni_must_match.unwrap_or(true),
            ech_allowed: t.ech == Some(RawEch::Allow),
        });
        let uses_tokens = (clients.iter().flatten()).any(|c| !c.selectors.tokens.is_empty());
        let has_deny_messages =
            top_message.is_some() || (clients.iter().flatten()).any(|c| c.deny_message.is_some());
        Policy {
            deny_message: top_message,
            has_deny_messages,
            uses_tokens,
            mode: top_mode,
            default_ports,
            allow,
            deny,
            clients,
            guard,
            tls,
        }
    }

    /// A `deny_message`: one line of at most [`DENY_MESSAGE_MAX`] printable
    /// characters, since it goes into every refusal body as it is.
    fn deny_message(&mut self, raw: Option<Text>) -> Option<Arc<str>> {
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

    fn default_ports(&mut self, raw: Option<Spanned<Vec<Spanned<i64>>>>) -> Ports {
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

    fn rules(&mut self, list: Vec<Spanned<RawRule>>, default_ports: &Ports, kind: List) -> RuleSet {
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
                    meta,
                }),
                Err(e) => self.error(e.code, dest.referenced, e.message, e.hint),
            }
        }
        RuleSet::new(rules)
    }

    /// An entry's destination and metadata; `None` (with an error) when
    /// the mapping has no `dest` or a bad `expires`.
    fn entry(
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
    fn allow_private(&mut self, list: Spanned<Vec<Text>>, kind: List) -> Option<Arc<[IpNet]>> {
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

    fn clients(
        &mut self,
        raw: Vec<Spanned<RawClient>>,
        default_ports: &Ports,
        top_mode: Mode,
        top_message: Option<&Arc<str>>,
    ) -> Vec<Client> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for entry in raw {
            let at = entry.referenced;
            let c = entry.value;
            let name = c.name.as_ref().map_or("", |n| n.value.trim()).to_string();
            let name_at = c.name.as_ref().map_or(at, |n| n.referenced);
            if name.is_empty() {
                self.error(
                    Code::EmptyClientName,
                    name_at,
                    "client has no name",
                    Some("name each client, e.g. `name: payments`".into()),
                );
            } else if !seen.insert(name.clone()) {
                self.error(
                    Code::DuplicateClient,
                    name_at,
                    format!("client `{name}` is defined twice"),
                    Some("merge the two entries".into()),
                );
            }
            let selectors = self.selectors(&c, &name, name_at);
            self.spans.clients.push(ClientSpans {
                at: name_at.into(),
                mode: c.mode.as_ref().map(|m| m.referenced.into()),
            });
            out.push(Client {
                name: Arc::from(name),
                selectors,
                mode: mode(c.mode.as_ref()).unwrap_or(top_mode),
                allow: self.rules(c.allow.unwrap_or_default(), default_ports, List::Allow),
                deny_message: self
                    .deny_message(c.deny_message)
                    .or_else(|| top_message.cloned()),
            });
        }
        out
    }

    /// How a caller is recognised as client `name`: every kind it lists must match.
    fn selectors(&mut self, c: &RawClient, name: &str, name_at: Location) -> Selectors {
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
                    Code::NoSelector,
                    list.referenced,
                    format!("client `{name}` has no {key}: an empty list matches nobody"),
                    Some(format!("list values, e.g. {example}, or remove the key")),
                );
            }
        }
        if kinds.iter().all(|(_, list, _)| list.is_none()) {
            self.error(
                Code::NoSelector,
                name_at,
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

    /// Each item parsed by `parse`, or a `bad-selector` error at its place.
    fn parsed<T>(&mut self, list: Vec<Text>, parse: fn(&str) -> Result<T, String>) -> Vec<T> {
        let mut out = Vec::with_capacity(list.len());
        for item in list {
            match parse(&item.value) {
                Ok(v) => out.push(v),
                Err(e) => self.error(Code::BadSelector, item.referenced, e, None),
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
            out.extend(self.net(Spanned::new(item.value, at, at)));
        }
        out
    }

    fn nets(&mut self, list: Vec<Text>) -> Vec<IpNet> {
        list.into_iter().filter_map(|item| self.net(item)).collect()
    }

    fn net(&mut self, item: Text) -> Option<IpNet> {
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

/// Which list a rule is in: only allow rules may carry `allow_private`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum List {
    Allow,
    Deny,
}

fn mode(raw: Option<&Spanned<RawMode>>) -> Option<Mode> {
    raw.map(|m| match m.value {
        RawMode::Enforce => Mode::Enforce,
        RawMode::Report => Mode::Report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(text: &str) -> Vec<&'static str> {
        check(text, Date::from_days(0))
            .problems
            .iter()
            .map(|d| d.code.as_str())
            .collect()
    }

    #[test]
    fn unknown_keys_are_reported_beside_a_type_error() {
        assert_eq!(
            codes("version: 1\nalow: [x.example]\nallow: oops\n"),
            ["unknown-key", "invalid-value"]
        );
    }

    #[test]
    fn a_policy_with_an_unknown_key_never_loads() {
        let errors = compile("version: 1\nallow: [a.example]\ntls: {sni_must_mach: false}\n")
            .expect_err("an unknown key is an error");
        assert_eq!(errors[0].code, Code::UnknownKey);
        assert_eq!((errors[0].line, errors[0].column), (3, 7));
    }

    #[test]
    fn warnings_come_with_errors_and_ignore_comments_apply() {
        let text = "version: 1\nmode: report  # portcullis: ignore[report-mode]\nallow:\n  - \"*.co.uk\"\n  - a.example:0\n";
        assert_eq!(codes(text), ["public-suffix-wildcard", "bad-port"]);
        let checked = check(text, Date::from_days(0));
        assert!(checked.compiled.is_none());
    }

    #[test]
    fn an_empty_or_comment_only_file_is_empty() {
        assert_eq!(codes(""), ["empty-file"]);
        assert_eq!(codes("# nothing\n\n---\n"), ["empty-file"]);
        assert_eq!(codes("~\n"), ["invalid-value"]);
    }

    #[test]
    fn rules_may_carry_metadata_and_expire_without_changing_decisions() {
        let text = "version: 1\nallow:\n  - a.example\n  - {dest: b.example, owner: o, ticket: T-1, expires: 2027-01-31, note: n}\ndeny:\n  - {dest: c.example, expires: 2020-01-01}\n";
        let compiled = compile(text).expect("valid");
        let policy = &compiled.policy;
        let b = &policy.allow.rules()[1];
        assert_eq!((b.owner(), b.ticket()), (Some("o"), Some("T-1")));
        assert_eq!((b.line, b.column), (4, 12));
        assert_eq!(policy.allow.rules()[0].meta, None);
        let day = |t| Date::parse(t).unwrap();
        assert_eq!(policy.expired_rules(day("2027-01-31")).len(), 1);
        assert_eq!(policy.expired_rules(day("2027-02-01")).len(), 2);
        // Expired or not, b.example is allowed and c.example denied.
        let ip = std::net::IpAddr::from([10, 0, 0, 1]);
        assert!(policy.decide_str(ip, "b.example", 443).verdict.permits());
        assert!(!policy.decide_str(ip, "c.example", 443).verdict.permits());
        let codes = |today| {
            compiled
                .warnings(day(today))
                .iter()
                .map(|d| (d.line, d.code.as_str()))
                .collect::<Vec<_>>()
        };
        assert_eq!(codes("2020-01-01"), vec![]);
        assert_eq!(
            codes("2027-02-01"),
            vec![(4, "expired-rule"), (6, "expired-rule")]
        );
    }
}
