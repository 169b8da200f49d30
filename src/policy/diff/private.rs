//! `allow_private` changes: which guarded private ranges one allow
//! destination may dial, before and after.
//!
//! A destination's private ranges are those of the rules with its pattern
//! in one list (the rule that decides a name is the most specific one, so
//! a broader rule's ranges never reach it); compared as the addresses they
//! cover, so splitting or reordering ranges changes nothing.

use std::collections::BTreeMap;

use super::super::ruleset::RuleSet;
use super::Kind;
use super::ranges::AddrSet;

/// The destinations of one allow list whose private ranges differ between
/// `old` and `new`, in pattern order.
pub(super) fn diff(old: &RuleSet, new: &RuleSet) -> Vec<Kind> {
    let (before, after) = (by_pattern(old), by_pattern(new));
    let empty = AddrSet::default();
    let patterns: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    patterns
        .into_iter()
        .filter_map(|pattern| {
            let was = before.get(pattern).unwrap_or(&empty);
            let is = after.get(pattern).unwrap_or(&empty);
            let (now_dialable, now_blocked) = (is.minus(was), was.minus(is));
            (!now_dialable.is_empty() || !now_blocked.is_empty()).then(|| Kind::AllowPrivate {
                destination: pattern.clone(),
                now_dialable: now_dialable.cidr_strings(),
                now_blocked: now_blocked.cidr_strings(),
            })
        })
        .collect()
}

/// Each pattern of `set` with private ranges, and the addresses they cover.
fn by_pattern(set: &RuleSet) -> BTreeMap<String, AddrSet> {
    let mut out: BTreeMap<String, AddrSet> = BTreeMap::new();
    for rule in set.rules().iter().filter(|r| !r.allow_private().is_empty()) {
        let ranges = AddrSet::from_nets(rule.allow_private());
        let entry = out.entry(rule.pattern.to_string()).or_default();
        *entry = entry.union(&ranges);
    }
    out
}
