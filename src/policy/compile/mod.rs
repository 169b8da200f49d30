//! Raw YAML -> `Policy`: validate, normalise every pattern once, and collect every error.

use std::collections::HashMap;
use std::sync::Arc;

use serde_saphyr::{Location, Spanned};

use super::date::Date;
use super::ignore::Ignores;
use super::lint::{self, At, Spans};
use super::pattern::Ports;
use super::raw::{RawClient, RawEch, RawMode, RawPolicy, RawRule, Text};
use super::ruleset::RuleSet;
use super::{Client, IpGuard, Mode, Policy, TlsPolicy};

mod clients;
mod read;
mod rules;
mod settings;

pub(crate) use read::yaml_message;
use read::{key_at, parse};

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
mod tests;
