//! Destination changes: for every pattern either policy names, the ports it
//! is reachable on before and after.
//!
//! A pattern's ports are those of every rule that covers it (`*.example.com`
//! covers `a.example.com`), so a redundant rule, a duplicate or a reordered
//! list changes nothing, widening `a.example.com` to `*.example.com` shows as
//! the wildcard gained, and the ports of one destination print on one line.
//! Coverage comes from the rule index ([`RuleSet::covering`]), so the cost
//! grows with the number of rules, not its square.

use std::collections::{BTreeMap, HashSet};

use super::super::pattern::{self, Pattern, Ports};
use super::super::ruleset::{Rule, RuleSet};
use super::ports::PortSet;

/// Rule lists that together give one reach. A list may come with the
/// `default_ports` to assume for its rules that name no ports: the diff
/// reads the new policy's rules with the old default, so that a
/// `default_ports` change is one change, not one per destination.
#[derive(Default)]
pub(super) struct Lists<'p> {
    sets: Vec<(&'p RuleSet, Option<&'p Ports>)>,
}

impl<'p> Lists<'p> {
    pub(super) fn with(mut self, set: &'p RuleSet, default_ports: Option<&'p Ports>) -> Self {
        self.sets.push((set, default_ports));
        self
    }

    /// The ports on which the lists reach everything `pattern` matches.
    fn reach(&self, pattern: &Pattern) -> PortSet {
        let mut out = PortSet::default();
        for (set, default_ports) in &self.sets {
            for rule in set.covering(pattern) {
                out.add(ports_of(rule, *default_ports));
            }
        }
        out
    }
}

/// One rule list of one side, with the `default_ports` to assume for its
/// rules that name none (`None`: as compiled).
pub(super) type Side<'p> = (&'p RuleSet, Option<&'p Ports>);

fn ports_of<'r>(rule: &'r Rule, default_ports: Option<&'r Ports>) -> &'r Ports {
    match default_ports {
        Some(ports) if !names_ports(rule) => ports,
        _ => &rule.ports,
    }
}

/// Whether the rule as written names its ports (else they are `default_ports`).
pub(super) fn names_ports(rule: &Rule) -> bool {
    pattern::names_ports(&rule.text)
}

/// One destination whose ports differ; an empty set is "not reachable".
pub(super) struct Moved {
    pub(super) destination: String,
    pub(super) old: PortSet,
    pub(super) new: PortSet,
}

/// Every destination whose ports differ between `old` and `new`, in pattern
/// order. `old_list` and `new_list` are the lists that differ between the
/// two (the others are common to both): only their rules that the other
/// side lacks can change what is reached, so only their patterns are
/// looked at, and a reload that changes one rule of 100k costs little.
pub(super) fn compare(
    old: &Lists<'_>,
    new: &Lists<'_>,
    old_list: Side<'_>,
    new_list: Side<'_>,
) -> Vec<Moved> {
    type Key<'r> = (&'r Pattern, Vec<(u16, u16)>);
    fn keyed<'r>((set, default_ports): Side<'r>) -> Vec<Key<'r>> {
        set.rules().iter().map(|r| key(r, default_ports)).collect()
    }
    let (old_keys, new_keys) = (keyed(old_list), keyed(new_list));
    // foldhash: the keys are the two policies' own rules.
    type Set<'k, 'r> = HashSet<&'k Key<'r>, foldhash::fast::RandomState>;
    let (old_set, new_set): (Set<'_, '_>, Set<'_, '_>) =
        (old_keys.iter().collect(), new_keys.iter().collect());
    // Only the rules one side lacks are spelled out, so a reload that
    // changes one rule of 100k writes one pattern, not 100k.
    let mut patterns: BTreeMap<String, &Pattern> = BTreeMap::new();
    for (keys, other) in [(&old_keys, &new_set), (&new_keys, &old_set)] {
        for key in keys {
            if !other.contains(key) {
                patterns.entry(key.0.to_string()).or_insert(key.0);
            }
        }
    }
    let moved: Vec<(Moved, &Pattern)> = patterns
        .into_iter()
        .filter_map(|(destination, pattern)| {
            let (old, new) = (old.reach(pattern), new.reach(pattern));
            (old != new).then_some((
                Moved {
                    destination,
                    old,
                    new,
                },
                pattern,
            ))
        })
        .collect();
    without_implied(moved)
}

/// A rule as the diff sees it: its pattern and the ports it takes.
fn key<'r>(rule: &'r Rule, default_ports: Option<&Ports>) -> (&'r Pattern, Vec<(u16, u16)>) {
    (
        &rule.pattern,
        PortSet::of(ports_of(rule, default_ports)).ranges(),
    )
}

/// Leaves out a change that a change of a broader pattern already shows:
/// with `+ *.example.com:443` printed, `+ y.example.com:443` says nothing
/// more. Every port the narrower pattern gains must be one the broader
/// ones reach now, and every port it loses one they reached before. This
/// only ever hides a change when a broader one is shown.
fn without_implied(moved: Vec<(Moved, &Pattern)>) -> Vec<Moved> {
    let index = RuleSet::new(
        moved
            .iter()
            .map(|(m, pattern)| Rule {
                text: m.destination.as_str().into(),
                pattern: (*pattern).clone(),
                ports: Ports::Any,
                line: 0,
                column: 0,
                file: None,
                meta: None,
            })
            .collect(),
    );
    let at: std::collections::HashMap<&str, usize> = moved
        .iter()
        .enumerate()
        .map(|(i, (m, _))| (m.destination.as_str(), i))
        .collect();
    let position = |rule: &Rule| at.get(&*rule.text).copied();
    let implied: Vec<bool> = moved
        .iter()
        .map(|(m, pattern)| {
            let broader: Vec<&Moved> = index
                .covering(pattern)
                .into_iter()
                .filter_map(position)
                .map(|i| &moved[i].0)
                .filter(|b| b.destination != m.destination)
                .collect();
            let (mut then, mut now) = (PortSet::default(), PortSet::default());
            for b in &broader {
                then = then.union(&b.old);
                now = now.union(&b.new);
            }
            !broader.is_empty()
                && m.new.within(&m.old.union(&now))
                && m.old.within(&m.new.union(&then))
        })
        .collect();
    moved
        .into_iter()
        .zip(implied)
        .filter_map(|((m, _), implied)| (!implied).then_some(m))
        .collect()
}
