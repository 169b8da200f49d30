//! Who each client matches: clients added, removed or reordered, and their
//! selectors. Clients are tried in order and the first that matches wins,
//! so what a client matches is its sources minus every earlier client's.
//!
//! Only `sources` selects a client today. Certificates, tokens and VPC
//! endpoints will be further selector kinds: each a set compared like the
//! sources (one `selector` change per kind), and the order analysis will
//! then treat two clients as overlapping only when every kind overlaps.

use super::super::{Client, Policy};
use super::ranges::AddrSet;
use super::{Handover, Kind};

/// One `clients` entry with the addresses it lists.
pub(super) struct Entry<'p> {
    pub(super) client: &'p Client,
    pub(super) sources: AddrSet,
}

impl Entry<'_> {
    pub(super) fn name(&self) -> &str {
        &self.client.name
    }
}

/// A policy's clients in order, and the addresses each matches first.
pub(super) struct Roster<'p> {
    /// Whether the policy has a `clients` section at all.
    pub(super) listed: bool,
    pub(super) entries: Vec<Entry<'p>>,
    matched: Vec<AddrSet>,
}

impl<'p> Roster<'p> {
    pub(super) fn of(policy: &'p Policy) -> Roster<'p> {
        let entries: Vec<Entry<'p>> = policy
            .clients
            .iter()
            .flatten()
            .map(|client| Entry {
                client,
                sources: AddrSet::from_nets(&client.selectors.sources),
            })
            .collect();
        let matched = first_match(entries.iter().map(|e| &e.sources));
        Roster {
            listed: policy.clients.is_some(),
            entries,
            matched,
        }
    }

    pub(super) fn find(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name() == name)
    }

    fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name().to_string()).collect()
    }

    /// Every address some client lists.
    fn all_sources(&self) -> AddrSet {
        self.entries
            .iter()
            .fold(AddrSet::default(), |acc, e| acc.union(&e.sources))
    }
}

/// What each of `sources` matches when tried in this order.
fn first_match<'a>(sources: impl Iterator<Item = &'a AddrSet>) -> Vec<AddrSet> {
    let mut taken = AddrSet::default();
    sources
        .map(|s| {
            let mine = s.minus(&taken);
            taken = taken.union(s);
            mine
        })
        .collect()
}

/// A client only `new` lists, with the addresses it takes from old clients.
pub(super) fn added(old: &Roster<'_>, new: &Roster<'_>, at: usize) -> Kind {
    let entry = &new.entries[at];
    let takes = old
        .entries
        .iter()
        .zip(&old.matched)
        .filter_map(|(o, theirs)| {
            handover(
                &new.matched[at].intersect(theirs),
                Some(o.name()),
                Some(entry.name()),
            )
        })
        .collect();
    Kind::ClientAdded {
        position: at + 1,
        sources: entry.sources.cidr_strings(),
        mode: entry.client.mode.as_str(),
        allow: own_allow(entry.client),
        takes,
        unreachable: new.matched[at].is_empty(),
    }
}

/// A client only `old` lists, with where its addresses go.
pub(super) fn removed(old: &Roster<'_>, new: &Roster<'_>, at: usize) -> Kind {
    let entry = &old.entries[at];
    let mine = &old.matched[at];
    let mut gives: Vec<Handover> = new
        .entries
        .iter()
        .zip(&new.matched)
        .filter_map(|(n, theirs)| {
            handover(&mine.intersect(theirs), Some(entry.name()), Some(n.name()))
        })
        .collect();
    gives.extend(handover(
        &mine.minus(&new.all_sources()),
        Some(entry.name()),
        None,
    ));
    Kind::ClientRemoved {
        position: at + 1,
        sources: entry.sources.cidr_strings(),
        mode: entry.client.mode.as_str(),
        allow: own_allow(entry.client),
        gives,
    }
}

/// The change to the `sources` of the client at `was` in `old` and `at` in
/// `new`, as the addresses they cover, with the addresses it takes from
/// other clients or gives up.
pub(super) fn sources(old: &Roster<'_>, was: usize, new: &Roster<'_>, at: usize) -> Option<Kind> {
    let (before, after) = (&old.entries[was], &new.entries[at]);
    if before.sources == after.sources {
        return None;
    }
    let name = after.name();
    let direction = if after.sources.contains_all(&before.sources) {
        "widened"
    } else if before.sources.contains_all(&after.sources) {
        "narrowed"
    } else {
        "changed"
    };
    let (mine_then, mine_now) = (&old.matched[was], &new.matched[at]);
    let takes = old
        .entries
        .iter()
        .zip(&old.matched)
        .filter(|(o, _)| o.name() != name)
        .filter_map(|(o, theirs)| handover(&mine_now.intersect(theirs), Some(o.name()), Some(name)))
        .collect();
    let mut gives: Vec<Handover> = new
        .entries
        .iter()
        .zip(&new.matched)
        .filter(|(n, _)| n.name() != name)
        .filter_map(|(n, theirs)| {
            handover(&mine_then.intersect(theirs), Some(name), Some(n.name()))
        })
        .collect();
    gives.extend(handover(
        &mine_then.minus(&new.all_sources()),
        Some(name),
        None,
    ));
    let (old_list, new_list) = (before.sources.cidr_strings(), after.sources.cidr_strings());
    Some(Kind::Selector {
        selector: "sources",
        direction,
        added: new_list
            .iter()
            .filter(|c| !old_list.contains(c))
            .cloned()
            .collect(),
        removed: old_list
            .iter()
            .filter(|c| !new_list.contains(c))
            .cloned()
            .collect(),
        every_v4: after.sources.has_every_v4() && !before.sources.has_every_v4(),
        every_v6: after.sources.has_every_v6() && !before.sources.has_every_v6(),
        old: old_list,
        new: new_list,
        takes,
        gives,
    })
}

/// A reorder of the clients both policies list, when it alone changes which
/// client matches some address (judged on the old sources; changes to the
/// sources themselves are reported per client).
pub(super) fn order(old: &Roster<'_>, new: &Roster<'_>) -> Option<Kind> {
    let common_old: Vec<&Entry<'_>> = old
        .entries
        .iter()
        .filter(|e| new.find(e.name()).is_some())
        .collect();
    let common_new: Vec<&Entry<'_>> = new
        .entries
        .iter()
        .filter_map(|e| old.find(e.name()).map(|i| &old.entries[i]))
        .collect();
    let same_order = common_old
        .iter()
        .zip(&common_new)
        .all(|(a, b)| a.name() == b.name());
    if same_order {
        return None;
    }
    let before = first_match(common_old.iter().map(|e| &e.sources));
    let after = first_match(common_new.iter().map(|e| &e.sources));
    let mut moved = Vec::new();
    for (from, had) in common_old.iter().zip(&before) {
        for (to, has) in common_new.iter().zip(&after) {
            if from.name() != to.name() {
                moved.extend(handover(
                    &had.intersect(has),
                    Some(from.name()),
                    Some(to.name()),
                ));
            }
        }
    }
    (!moved.is_empty()).then(|| Kind::ClientOrder {
        old: old.names(),
        new: new.names(),
        moved,
    })
}

fn handover(ranges: &AddrSet, from: Option<&str>, to: Option<&str>) -> Option<Handover> {
    (!ranges.is_empty()).then(|| Handover {
        ranges: ranges.cidr_strings(),
        from: from.map(str::to_string),
        to: to.map(str::to_string),
    })
}

/// A client's own `allow` rules, canonical (`pattern:ports`), once each.
fn own_allow(client: &Client) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    client
        .allow
        .rules()
        .iter()
        .map(|rule| super::destination(&rule.pattern, &rule.ports))
        .filter(|text| seen.insert(text.clone()))
        .collect()
}

/// Changes to the credential selectors (`certificates`, `tokens`,
/// `vpc_endpoints`) of one client. A kind a client does not list is not
/// required, so listing one narrows who the client is, and dropping one
/// widens it; within a kind, more values widen and fewer narrow.
pub(super) fn credentials(old: &Roster<'_>, was: usize, new: &Roster<'_>, at: usize) -> Vec<Kind> {
    let (before, after) = (
        &old.entries[was].client.selectors,
        &new.entries[at].client.selectors,
    );
    let kinds: [(&'static str, Vec<String>, Vec<String>); 3] = [
        (
            "certificates",
            before.certificates.iter().map(|c| c.to_string()).collect(),
            after.certificates.iter().map(|c| c.to_string()).collect(),
        ),
        (
            "tokens",
            before.tokens.iter().map(|t| t.short()).collect(),
            after.tokens.iter().map(|t| t.short()).collect(),
        ),
        (
            "vpc_endpoints",
            before.vpc_endpoints.clone(),
            after.vpc_endpoints.clone(),
        ),
    ];
    let mut out = Vec::new();
    for (selector, old_list, new_list) in kinds {
        let added: Vec<String> = (new_list.iter())
            .filter(|v| !old_list.contains(v))
            .cloned()
            .collect();
        let removed: Vec<String> = (old_list.iter())
            .filter(|v| !new_list.contains(v))
            .cloned()
            .collect();
        if added.is_empty() && removed.is_empty() {
            continue;
        }
        let direction = match (old_list.is_empty(), new_list.is_empty()) {
            // Not required before, required now: fewer callers are this client.
            (true, false) => "narrowed",
            // Required before, any caller now (if its other selectors match).
            (false, true) => "widened",
            _ if removed.is_empty() => "widened",
            _ if added.is_empty() => "narrowed",
            _ => "changed",
        };
        out.push(Kind::Selector {
            selector,
            direction,
            old: old_list,
            new: new_list,
            added,
            removed,
            every_v4: false,
            every_v6: false,
            takes: Vec::new(),
            gives: Vec::new(),
        });
    }
    out
}
