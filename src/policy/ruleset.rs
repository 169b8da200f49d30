//! `RuleSet`: one list of destinations, indexed so a lookup costs the same at 10 or 100k rules.

use std::collections::HashMap;
use std::sync::Arc;

use globset::{Candidate, GlobBuilder, GlobMatcher};
use ipnet::IpNet;

use super::date::Date;
use super::host::Host;
use super::pattern::{Pattern, Ports};

/// One destination of the policy file, compiled.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The destination exactly as written in the file.
    pub text: Arc<str>,
    /// What it matches.
    pub pattern: Pattern,
    /// The ports it allows.
    pub ports: Ports,
    /// 1-based line in the file.
    pub line: u64,
    /// 1-based column in the file.
    pub column: u64,
    /// The file it is written in, by its name inside the policy directory;
    /// `None` for a policy that is one file.
    pub file: Option<Arc<str>>,
    /// Owner, ticket, expiry and note, when the rule is written as a mapping.
    pub meta: Option<Arc<RuleMeta>>,
}

/// What the mapping form of a rule says about it besides its destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleMeta {
    /// Who owns the rule.
    pub owner: Option<Arc<str>>,
    /// The ticket that asked for it.
    pub ticket: Option<Arc<str>>,
    /// The last day it is meant to be needed; it stays enforced after.
    pub expires: Option<Date>,
    /// Why it exists.
    pub note: Option<Arc<str>>,
    /// Guarded private ranges this allow rule, and only it, may dial.
    pub allow_private: Option<Arc<[IpNet]>>,
}

impl Rule {
    /// Where the rule is written, for people: `line 4`, or
    /// `20-payments.yaml line 4` when the policy is a directory.
    pub fn place(&self) -> String {
        match &self.file {
            Some(file) => format!("{file} line {}", self.line),
            None => format!("line {}", self.line),
        }
    }

    /// Who owns the rule, when the file says.
    pub fn owner(&self) -> Option<&str> {
        self.meta.as_ref()?.owner.as_deref()
    }

    /// The rule's ticket, when the file says.
    pub fn ticket(&self) -> Option<&str> {
        self.meta.as_ref()?.ticket.as_deref()
    }

    /// The rule's `expires` day, when the file gives one.
    pub fn expires(&self) -> Option<Date> {
        self.meta.as_ref()?.expires
    }

    /// The guarded private ranges this rule may dial (`allow_private`);
    /// empty for most rules.
    pub fn allow_private(&self) -> &[IpNet] {
        (self.meta.as_ref())
            .and_then(|m| m.allow_private.as_deref())
            .unwrap_or(&[])
    }

    /// Whether the rule's `expires` day is before `today`.
    pub fn expired(&self, today: Date) -> bool {
        self.expires().is_some_and(|d| d < today)
    }
}

impl Rule {
    /// Whether the rule covers `host` on `port` (the unindexed check).
    pub fn matches(&self, host: &Host, port: u16) -> bool {
        self.ports.contains(port) && self.pattern.matches(host)
    }
}

/// A host prepared once per decision: the globset form is built lazily and
/// shared by every rule set consulted.
pub struct Target<'a> {
    /// The destination host.
    pub host: &'a Host,
    /// The destination port.
    pub port: u16,
    glob_form: std::cell::OnceCell<Option<String>>,
}

impl<'a> Target<'a> {
    /// Prepares `host:port` for lookups; nothing is built until a glob needs it.
    pub fn new(host: &'a Host, port: u16) -> Self {
        Target {
            host,
            port,
            glob_form: std::cell::OnceCell::new(),
        }
    }

    /// Globs see labels as path components, so that `*` (which globset
    /// never lets cross a `/` with `literal_separator`) never crosses a dot.
    fn glob_candidate(&self) -> Option<Candidate<'_>> {
        self.glob_form
            .get_or_init(|| self.host.name().map(|n| n.replace('.', "/")))
            .as_deref()
            .map(Candidate::new)
    }
}

/// Exact names in a hash map, `*.suffix` keyed on the suffix (probed once
/// per label of the request), globs keyed the same way on the labels after
/// their last wildcard (a wildcard may not sit in the top-level label, so
/// every glob has such a tail), IP ranges in a list. Only the globs that
/// share a tail with the request are ever run.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    exact: Index<Vec<u32>>,
    suffix: Index<Vec<u32>>,
    globs: Index<Vec<(u32, GlobMatcher)>>,
    nets: Vec<u32>,
}

/// Rules by name or name tail. foldhash rather than SipHash: the keys come
/// from the reviewed policy and every request probes one to four of them,
/// so hashing speed counts and flooding a table is not open to a client
/// (its seed is still random per process).
type Index<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet::new(Vec::new())
    }
}

impl RuleSet {
    /// Indexes `rules`, keeping their order.
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        let mut exact: Index<Vec<u32>> = Index::default();
        let mut suffix: Index<Vec<u32>> = Index::default();
        let mut globs: Index<Vec<(u32, GlobMatcher)>> = Index::default();
        let mut nets = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let i = i as u32;
            match &rule.pattern {
                Pattern::Exact(n) => exact.entry(n.clone()).or_default().push(i),
                Pattern::Suffix(s) => suffix.entry(s.clone()).or_default().push(i),
                Pattern::Glob { any_depth, labels } => {
                    let body = labels.replace('.', "/");
                    let glob = if *any_depth {
                        format!("*/**/{body}")
                    } else {
                        body
                    };
                    let glob = GlobBuilder::new(&glob)
                        .literal_separator(true)
                        .backslash_escape(true)
                        .build()
                        .expect("wildcard patterns hold only [a-z0-9_*-] labels");
                    let tail = rule
                        .pattern
                        .wildcard_tail()
                        .expect("globs end in a literal label");
                    globs
                        .entry(tail.into())
                        .or_default()
                        .push((i, glob.compile_matcher()));
                }
                Pattern::Net(_) => nets.push(i),
            }
        }
        RuleSet {
            rules,
            exact,
            suffix,
            globs,
            nets,
        }
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// How many rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The most specific rule that matches: an exact name, then the longest
    /// `*.suffix`, then the first glob, then the first IP range, in file order.
    pub fn find(&self, target: &Target<'_>) -> Option<&Rule> {
        let port = target.port;
        self.find_where(target, |ports| ports.contains(port))
    }

    /// The rule [`RuleSet::find`] would pick if the port did not matter: when
    /// `find` finds nothing, this tells "allowed on other ports" from "not
    /// allowed at all". The same indexed lookup, so it costs what `find` does.
    pub fn find_any_port(&self, target: &Target<'_>) -> Option<&Rule> {
        self.find_where(target, |_| true)
    }

    fn find_where(&self, target: &Target<'_>, port_ok: impl Fn(&Ports) -> bool) -> Option<&Rule> {
        let pick = |ids: &[u32]| {
            ids.iter()
                .map(|&i| &self.rules[i as usize])
                .find(|r| port_ok(&r.ports))
        };
        match target.host {
            Host::Name(name) => {
                if let Some(rule) = self.exact.get(&**name).and_then(|ids| pick(ids)) {
                    return Some(rule);
                }
                if !self.suffix.is_empty()
                    && let Some(rule) = proper_suffixes(name)
                        .find_map(|s| self.suffix.get(s).and_then(|ids| pick(ids)))
                {
                    return Some(rule);
                }
                if !self.globs.is_empty() {
                    return self
                        .first_glob(name, target, &port_ok)
                        .map(|i| &self.rules[i as usize]);
                }
                None
            }
            Host::Ip(ip) => self
                .nets
                .iter()
                .map(|&i| &self.rules[i as usize])
                .find(|r| {
                    port_ok(&r.ports) && matches!(&r.pattern, Pattern::Net(n) if n.contains(ip))
                }),
        }
    }
}

impl RuleSet {
    /// The first glob in file order matching `name` with ports `port_ok` accepts.
    fn first_glob(
        &self,
        name: &str,
        target: &Target<'_>,
        port_ok: &impl Fn(&Ports) -> bool,
    ) -> Option<u32> {
        let mut best: Option<u32> = None;
        for tail in proper_suffixes(name) {
            let Some(bucket) = self.globs.get(tail) else {
                continue;
            };
            let cand = target.glob_candidate()?;
            for (i, glob) in bucket {
                if best.is_some_and(|b| b < *i) {
                    break;
                }
                if port_ok(&self.rules[*i as usize].ports) && glob.is_match_candidate(&cand) {
                    best = Some(*i);
                    break;
                }
            }
        }
        best
    }

    /// Every rule whose pattern matches at least everything `pattern` does,
    /// found through the index (for `check`'s shadowing warnings).
    pub fn covering<'s>(&'s self, pattern: &Pattern) -> Vec<&'s Rule> {
        let mut ids: Vec<u32> = Vec::new();
        let suffixes_of = |name: &str, ids: &mut Vec<u32>, include_self: bool| {
            if include_self {
                ids.extend(self.suffix.get(name).into_iter().flatten());
            }
            for rest in proper_suffixes(name) {
                ids.extend(self.suffix.get(rest).into_iter().flatten());
            }
        };
        match pattern {
            Pattern::Exact(name) => {
                ids.extend(self.exact.get(name).into_iter().flatten());
                suffixes_of(name, &mut ids, false);
                let slashed = name.replace('.', "/");
                let cand = Candidate::new(&slashed);
                for tail in proper_suffixes(name) {
                    let globs = self.globs.get(tail).into_iter().flatten();
                    ids.extend(
                        globs
                            .filter(|(_, g)| g.is_match_candidate(&cand))
                            .map(|(i, _)| *i),
                    );
                }
            }
            Pattern::Suffix(s) => suffixes_of(s, &mut ids, true),
            Pattern::Glob { .. } => {
                if let Some(tail) = pattern.wildcard_tail() {
                    let same = self.globs.get(tail).into_iter().flatten();
                    ids.extend(
                        same.map(|(i, _)| *i)
                            .filter(|&i| self.rules[i as usize].pattern == *pattern),
                    );
                    suffixes_of(tail, &mut ids, true);
                }
            }
            Pattern::Net(net) => ids.extend(self.nets.iter().filter(
                |&&i| matches!(&self.rules[i as usize].pattern, Pattern::Net(n) if n.contains(net)),
            )),
        }
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(|i| &self.rules[i as usize]).collect()
    }
}

impl RuleSet {
    /// Every rule whose pattern matches `host`, whatever its ports, in file
    /// order (for "allowed only on other ports"), found through the index.
    pub fn matching_host(&self, host: &Host) -> Vec<&Rule> {
        let mut ids: Vec<u32> = Vec::new();
        match host {
            Host::Name(name) => {
                ids.extend(self.exact.get(&**name).into_iter().flatten());
                let slashed = name.replace('.', "/");
                let cand = Candidate::new(&slashed);
                for tail in proper_suffixes(name) {
                    ids.extend(self.suffix.get(tail).into_iter().flatten());
                    let globs = self.globs.get(tail).into_iter().flatten();
                    ids.extend(
                        globs
                            .filter(|(_, g)| g.is_match_candidate(&cand))
                            .map(|(i, _)| *i),
                    );
                }
            }
            Host::Ip(ip) => ids.extend(self.nets.iter().filter(
                |&&i| matches!(&self.rules[i as usize].pattern, Pattern::Net(n) if n.contains(ip)),
            )),
        }
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(|i| &self.rules[i as usize]).collect()
    }
}

/// `a.b.c` -> `b.c`, `c`: the suffixes a `*.` rule or a glob tail can be keyed on.
fn proper_suffixes(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('.')
        .map(move |(dot, _)| &name[dot + 1..])
}
