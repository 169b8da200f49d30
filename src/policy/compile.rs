//! Raw YAML -> `Policy`: validate, normalise every pattern once, and collect every error.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::date::Date;
use super::identity::{self, CertName, Selectors, TokenDigest};
use super::ignore::Ignores;
use super::ip_guard::{default_blocked, forbidden_private, parse_net};
use super::lint::{self, At, ClientSpans, Spans};
use super::pattern::{Ports, parse_destination, valid_port};
use super::raw::{RawClient, RawEch, RawIpGuard, RawMode, RawPolicy, RawRule, Text};
use super::ruleset::{Rule, RuleMeta, RuleSet};
use super::{Client, IpGuard, Mode, Policy, TlsPolicy, keys, skipped};

/// The only policy format version this build reads.
pub const VERSION: i64 = 1;
/// Ports a destination allows when it names none and `default_ports` is absent.
pub const DEFAULT_PORTS: &[u16] = &[443];

/// The longest `deny_message`, in characters.
pub const DENY_MESSAGE_MAX: usize = 200;

pub use super::diagnostic::{Code, Diagnostic, Severity};

/// One file of a policy: its name inside the policy directory (`None` for
/// a policy that is one file) and its text.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// The file's name inside the directory, which diagnostics and rules carry.
    pub name: Option<&'a str>,
    /// The file's YAML.
    pub text: &'a str,
}

/// A policy that compiled. Its warnings are worked out on demand: `check`
/// and start-up want them, a hot reload does not wait for them.
#[derive(Debug)]
pub struct Compiled {
    /// The compiled policy.
    pub policy: Policy,
    spans: Spans,
    ignores: FileIgnores,
}

impl Compiled {
    /// Every warning, in file order, less those an ignore comment silences.
    /// `today` decides which rules have expired.
    pub fn warnings(&self, today: Date) -> Vec<Diagnostic> {
        let mut out = self
            .ignores
            .apply(lint::lint(&self.policy, &self.spans, today));
        out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
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
    check_sources(&[Source { name: None, text }], today)
}

/// [`check`] for a policy made of several files (a policy directory).
pub fn check_sources(sources: &[Source<'_>], today: Date) -> Checked {
    let built = build(sources);
    let mut problems = built.errors;
    let warnings = built
        .policy
        .as_ref()
        .map(|(policy, spans)| built.ignores.apply(lint::lint(policy, spans, today)));
    problems.extend(warnings.into_iter().flatten());
    problems.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
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
    compile_sources(&[Source { name: None, text }])
}

/// [`compile`] for a policy made of several files, in the order given:
/// `allow`, `deny` and `clients` concatenate; `mode`, `default_ports`,
/// `ip_guard`, `tls` and `deny_message` may each be set in one file only.
pub fn compile_sources(sources: &[Source<'_>]) -> Result<Compiled, Vec<Diagnostic>> {
    let built = build(sources);
    match built.policy {
        Some((policy, spans)) if built.errors.is_empty() => Ok(Compiled {
            policy,
            spans,
            ignores: built.ignores,
        }),
        _ => {
            let mut errors = built.errors;
            errors.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
            Err(errors)
        }
    }
}

/// What one pass over a policy's files produced: their errors, and the
/// policy made of everything that did compile (`None` when some file's
/// structure could not be read at all).
struct Built {
    policy: Option<(Policy, Spans)>,
    errors: Vec<Diagnostic>,
    ignores: FileIgnores,
}

/// The ignore comments of each file.
#[derive(Debug, Default)]
struct FileIgnores(Vec<(Option<Arc<str>>, Ignores)>);

impl FileIgnores {
    /// `diags` less those a comment in their own file silences, plus the
    /// comments that name no code.
    fn apply(&self, diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
        let silenced = |d: &Diagnostic| {
            (self.0.iter()).any(|(file, ignores)| *file == d.file && ignores.silences(d))
        };
        let mut out: Vec<Diagnostic> = diags.into_iter().filter(|d| !silenced(d)).collect();
        for (file, ignores) in &self.0 {
            out.extend((ignores.apply(Vec::new()).into_iter()).map(|d| d.in_file(file.clone())));
        }
        out
    }
}

/// One file's parsed YAML.
struct Part<'a> {
    file: Option<Arc<str>>,
    text: &'a str,
    raw: RawPolicy,
    /// Where its first content is.
    top: (u64, u64),
}

fn build(sources: &[Source<'_>]) -> Built {
    let mut built = Built {
        policy: None,
        errors: Vec::new(),
        ignores: FileIgnores::default(),
    };
    if sources.is_empty() {
        // Never an empty policy that denies everything without saying why.
        built.errors.push(Diagnostic::at(
            Code::EmptyFile,
            1,
            1,
            "no policy file: the policy directory holds no `*.yaml` or `*.yml` file",
            Some("add a file that starts with `version: 1`".to_string()),
        ));
        return built;
    }
    let mut parts = Vec::with_capacity(sources.len());
    for source in sources {
        let file: Option<Arc<str>> = source.name.map(Arc::from);
        built
            .ignores
            .0
            .push((file.clone(), Ignores::scan(source.text)));
        let mut errors = Vec::new();
        if let Some((raw, top)) = parse(source.text, &mut errors) {
            parts.push(Part {
                file: file.clone(),
                text: source.text,
                raw,
                top,
            });
        }
        (built.errors).extend(errors.into_iter().map(|d| d.in_file(file.clone())));
    }
    // The files that parsed are compiled even when another did not, for
    // their errors; the policy is only whole when every file parsed.
    let whole = parts.len() == sources.len();
    let mut cx = Compiler {
        errors: std::mem::take(&mut built.errors),
        spans: Spans::default(),
        file: None,
    };
    let policy = cx.policy(parts);
    built.errors = cx.errors;
    built.policy = whole.then_some((policy, cx.spans));
    built
}

/// One file's text as the serde mirror, with the place of its first
/// content; `None` when its structure cannot be read (the reasons are in `errors`).
fn parse(text: &str, errors: &mut Vec<Diagnostic>) -> Option<(RawPolicy, (u64, u64))> {
    let Some(top) = keys::first_content(text) else {
        errors.push(Diagnostic::at(
            Code::EmptyFile,
            1,
            1,
            "the policy file holds no YAML document, only comments or blank lines",
            Some("start with `version: 1` and an `allow:` list".to_string()),
        ));
        return None;
    };
    // One parse when all is well: unknown keys are only noticed here, and
    // located by a second reading when there are some.
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        skipped::deserialize::<_, RawPolicy>(de)
    });
    let (raw, unknown) = match parsed {
        Ok(read) => read,
        Err(e) => {
            match keys::unknown_keys(text) {
                // Not YAML at all: the plain tree does not parse either.
                Err(syntax) => errors.push(yaml_error(&syntax, Code::YamlSyntax)),
                // A value of the wrong type: the shape past it is unknown,
                // but every unknown key is still worth reporting.
                Ok(found) => {
                    errors.extend(found);
                    errors.push(yaml_error(&e, Code::InvalidValue));
                }
            }
            return None;
        }
    };
    if unknown {
        match keys::unknown_keys(text) {
            Ok(found) if !found.is_empty() => errors.extend(found),
            // The schema and serde disagree: never load a file with a key
            // serde ignored.
            _ => errors.push(Diagnostic::at(
                Code::UnknownKey,
                top.0,
                top.1,
                "the policy has a key this portcullis does not read",
                None,
            )),
        }
    }
    Some((raw, top))
}

/// Where the top-level `key` is written in `text` (its first content when
/// it cannot be found). Only asked when two files set the same key.
fn key_at(text: &str, key: &str) -> (u64, u64) {
    let found = match serde_saphyr::from_str::<keys::Node>(text) {
        Ok(keys::Node::Map(entries)) => (entries.into_iter())
            .find(|(k, _)| k.value == key)
            .map(|(k, _)| (k.referenced.line(), k.referenced.column())),
        _ => None,
    };
    found
        .or_else(|| keys::first_content(text))
        .unwrap_or((1, 1))
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
    /// The file being compiled, which errors and rules are tagged with.
    file: Option<Arc<str>>,
}

/// A key that may be set in one file only: the file that set it, its
/// text (to find the key again on a conflict) and the value.
type Once<'a, T> = Option<(Option<Arc<str>>, &'a str, T)>;

/// Lists that concatenate across files, with the file they come from.
struct Lists {
    file: Option<Arc<str>>,
    allow: Vec<Spanned<RawRule>>,
    deny: Vec<Spanned<RawRule>>,
    clients: Option<Vec<Spanned<RawClient>>>,
}

impl Compiler {
    fn error(
        &mut self,
        code: Code,
        at: Location,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let d = Diagnostic::new(code, at, message, hint).in_file(self.file.clone());
        self.errors.push(d);
    }

    /// `at` in the file being compiled, for the warnings' spans.
    fn at(&self, at: Location) -> At {
        At {
            line: at.line(),
            column: at.column(),
            file: self.file.clone(),
        }
    }

    /// Keeps `value` in `slot` when no earlier file set `key`; when one
    /// did, an error at this file's key naming the other file's.
    fn once<'a, T>(
        &mut self,
        key: &str,
        slot: &mut Once<'a, T>,
        (file, text): (&Option<Arc<str>>, &'a str),
        value: Option<T>,
    ) {
        let Some(value) = value else { return };
        let Some((first_file, first_text, _)) = slot else {
            *slot = Some((file.clone(), text, value));
            return;
        };
        let (line, column) = key_at(text, key);
        let (first_line, first_column) = key_at(first_text, key);
        let first = At {
            line: first_line,
            column: first_column,
            file: first_file.clone(),
        };
        self.errors.push(
            Diagnostic::at(
                Code::DuplicateKey,
                line,
                column,
                format!(
                    "`{key}` is set in {} and again here; each file of a policy directory may add rules and clients, but `{key}` is set in one file only",
                    first.place()
                ),
                Some(format!(
                    "keep `{key}` in one file (the platform's base file) and remove it here"
                )),
            )
            .in_file(file.clone()),
        );
    }

    fn policy(&mut self, parts: Vec<Part<'_>>) -> Policy {
        let mut mode: Once<'_, Spanned<RawMode>> = None;
        let mut default_ports: Once<'_, _> = None;
        let mut deny_message: Once<'_, Text> = None;
        let mut ip_guard: Once<'_, _> = None;
        let mut tls: Once<'_, _> = None;
        let mut lists = Vec::with_capacity(parts.len());
        for part in parts {
            self.file = part.file.clone();
            self.version(part.raw.version.as_ref(), part.top);
            let raw = part.raw;
            let here = (&part.file, part.text);
            self.once("mode", &mut mode, here, raw.mode);
            self.once("default_ports", &mut default_ports, here, raw.default_ports);
            self.once("deny_message", &mut deny_message, here, raw.deny_message);
            self.once("ip_guard", &mut ip_guard, here, raw.ip_guard);
            self.once("tls", &mut tls, here, raw.tls);
            lists.push(Lists {
                file: part.file,
                allow: raw.allow.unwrap_or_default(),
                deny: raw.deny.unwrap_or_default(),
                clients: raw.clients,
            });
        }
        let top_mode = match mode {
            Some((file, _, m)) => {
                self.file = file;
                self.spans.mode = Some(self.at(m.referenced));
                mode_of(&m)
            }
            None => Mode::default(),
        };
        let default_ports = match default_ports {
            Some((file, _, ports)) => {
                self.file = file;
                self.default_ports(Some(ports))
            }
            None => self.default_ports(None),
        };
        let top_message = deny_message.and_then(|(file, _, text)| {
            self.file = file;
            self.deny_message(Some(text))
        });
        let guard = match ip_guard {
            Some((file, _, g)) => {
                self.file = file;
                self.ip_guard(g)
            }
            None => IpGuard::default(),
        };
        let tls = tls.map_or_else(TlsPolicy::default, |(_, _, t)| TlsPolicy {
            sni_must_match: t.sni_must_match.unwrap_or(true),
            ech_allowed: t.ech == Some(RawEch::Allow),
        });
        let (mut allow, mut deny) = (Vec::new(), Vec::new());
        let mut clients: Option<Vec<Client>> = None;
        let mut seen = HashMap::new();
        for list in lists {
            self.file = list.file;
            allow.extend(self.rules(list.allow, &default_ports, List::Allow));
            deny.extend(self.rules(list.deny, &Ports::Any, List::Deny));
            if let Some(cs) = list.clients {
                let defaults = (&default_ports, top_mode, top_message.as_ref());
                let more = self.clients(cs, defaults, &mut seen);
                clients.get_or_insert_with(Vec::new).extend(more);
            }
        }
        self.file = None;
        let uses_tokens = (clients.iter().flatten()).any(|c| !c.selectors.tokens.is_empty());
        let has_deny_messages =
            top_message.is_some() || (clients.iter().flatten()).any(|c| c.deny_message.is_some());
        Policy {
            deny_message: top_message,
            has_deny_messages,
            uses_tokens,
            mode: top_mode,
            default_ports,
            allow: RuleSet::new(allow),
            deny: RuleSet::new(deny),
            clients,
            guard,
            tls,
        }
    }

    /// A file's `version`, which every file of a directory states.
    fn version(&mut self, version: Option<&Spanned<i64>>, top: (u64, u64)) {
        match version {
            None => self.errors.push(
                Diagnostic::at(
                    Code::MissingKey,
                    top.0,
                    top.1,
                    "missing key `version`",
                    Some(format!("start the file with `version: {VERSION}`")),
                )
                .in_file(self.file.clone()),
            ),
            Some(v) if v.value != VERSION => self.error(
                Code::BadVersion,
                v.referenced,
                format!("unsupported policy version {}", v.value),
                Some(format!("this portcullis reads `version: {VERSION}`")),
            ),
            Some(_) => {}
        }
    }

    fn ip_guard(&mut self, g: RawIpGuard) -> IpGuard {
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

    /// The rules of one list in one file, in file order.
    fn rules(
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

    /// One file's `clients`; `seen` holds where each name was defined, in
    /// this file and the files before it.
    fn clients(
        &mut self,
        raw: Vec<Spanned<RawClient>>,
        (default_ports, top_mode, top_message): (&Ports, Mode, Option<&Arc<str>>),
        seen: &mut HashMap<String, At>,
    ) -> Vec<Client> {
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
            } else if let Some(first) = seen.get(&name) {
                let message = format!(
                    "client `{name}` is defined twice: first at {}",
                    first.place()
                );
                self.error(
                    Code::DuplicateClient,
                    name_at,
                    message,
                    Some("merge the two entries, or give one a new name".into()),
                );
            } else {
                seen.insert(name.clone(), self.at(name_at));
            }
            let selectors = self.selectors(&c, &name, name_at);
            self.spans.clients.push(ClientSpans {
                at: self.at(name_at),
                mode: c.mode.as_ref().map(|m| self.at(m.referenced)),
            });
            let allow = self.rules(c.allow.unwrap_or_default(), default_ports, List::Allow);
            out.push(Client {
                name: Arc::from(name),
                selectors,
                mode: c.mode.as_ref().map_or(top_mode, mode_of),
                allow: RuleSet::new(allow),
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

fn mode_of(raw: &Spanned<RawMode>) -> Mode {
    match raw.value {
        RawMode::Enforce => Mode::Enforce,
        RawMode::Report => Mode::Report,
    }
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
