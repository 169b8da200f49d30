//! `RuleSet`: one list of destinations, indexed so a lookup costs the same at 10 or 100k rules.

use std::collections::HashMap;
use std::sync::Arc;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use super::host::Host;
use super::pattern::{Pattern, Ports};

/// One destination of the policy file, compiled.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The destination exactly as written in the file.
    pub text: Arc<str>,
    pub pattern: Pattern,
    pub ports: Ports,
    pub line: u64,
    pub column: u64,
}

impl Rule {
    pub fn matches(&self, host: &Host, port: u16) -> bool {
        self.ports.contains(port) && self.pattern.matches(host)
    }
}

/// A host prepared once per decision: the globset form is built lazily and
/// shared by every rule set consulted.
pub struct Target<'a> {
    pub host: &'a Host,
    pub port: u16,
    glob_form: std::cell::OnceCell<Option<String>>,
}

impl<'a> Target<'a> {
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
/// per label of the request), true globs in one `GlobSet`, IP ranges in a list.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    exact: HashMap<Box<str>, Vec<u32>>,
    suffix: HashMap<Box<str>, Vec<u32>>,
    globs: GlobSet,
    glob_rules: Vec<u32>,
    nets: Vec<u32>,
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet::new(Vec::new())
    }
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut suffix: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut globs = GlobSetBuilder::new();
        let mut glob_rules = Vec::new();
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
                    globs.add(glob);
                    glob_rules.push(i);
                }
                Pattern::Net(_) => nets.push(i),
            }
        }
        let globs = globs.build().expect("each glob compiled on its own");
        RuleSet {
            rules,
            exact,
            suffix,
            globs,
            glob_rules,
            nets,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The most specific rule that matches: an exact name, then the longest
    /// `*.suffix`, then the first glob, then the first IP range, in file order.
    pub fn find(&self, target: &Target<'_>) -> Option<&Rule> {
        let port = target.port;
        let pick = |ids: &[u32]| {
            ids.iter()
                .map(|&i| &self.rules[i as usize])
                .find(|r| r.ports.contains(port))
        };
        match target.host {
            Host::Name(name) => {
                if let Some(rule) = self.exact.get(&**name).and_then(|ids| pick(ids)) {
                    return Some(rule);
                }
                if !self.suffix.is_empty() {
                    let mut rest: &str = name;
                    while let Some(dot) = rest.find('.') {
                        rest = &rest[dot + 1..];
                        if let Some(rule) = self.suffix.get(rest).and_then(|ids| pick(ids)) {
                            return Some(rule);
                        }
                    }
                }
                if !self.glob_rules.is_empty() {
                    let cand = target.glob_candidate()?;
                    let mut hits = self.globs.matches_candidate(&cand);
                    hits.sort_unstable();
                    let ids: Vec<u32> = hits.into_iter().map(|g| self.glob_rules[g]).collect();
                    return pick(&ids);
                }
                None
            }
            Host::Ip(ip) => self
                .nets
                .iter()
                .map(|&i| &self.rules[i as usize])
                .find(|r| {
                    r.ports.contains(port)
                        && matches!(&r.pattern, Pattern::Net(n) if n.contains(ip))
                }),
        }
    }
}

impl RuleSet {
    /// Every rule whose pattern matches at least everything `pattern` does,
    /// found through the index (for `check`'s shadowing warnings).
    pub fn covering<'s>(&'s self, pattern: &Pattern) -> Vec<&'s Rule> {
        let mut ids: Vec<u32> = Vec::new();
        let suffixes_of = |name: &str, ids: &mut Vec<u32>, include_self: bool| {
            if include_self {
                ids.extend(self.suffix.get(name).into_iter().flatten());
            }
            let mut rest = name;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                ids.extend(self.suffix.get(rest).into_iter().flatten());
            }
        };
        match pattern {
            Pattern::Exact(name) => {
                ids.extend(self.exact.get(name).into_iter().flatten());
                suffixes_of(name, &mut ids, false);
                if !self.glob_rules.is_empty() {
                    let slashed = name.replace('.', "/");
                    let cand = Candidate::new(&slashed);
                    ids.extend(
                        self.globs
                            .matches_candidate(&cand)
                            .into_iter()
                            .map(|g| self.glob_rules[g]),
                    );
                }
            }
            Pattern::Suffix(s) => suffixes_of(s, &mut ids, true),
            Pattern::Glob { .. } => {
                ids.extend(
                    self.glob_rules
                        .iter()
                        .filter(|&&i| self.rules[i as usize].pattern == *pattern),
                );
                if let Some(tail) = pattern.wildcard_tail() {
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
