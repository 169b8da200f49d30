//! What changes in reach between two policies: for `portcullis diff` and
//! for the `changes` of a `policy_reload` audit record.
//!
//! Reach is who may connect where: the modes, the `ip_guard`, the TLS
//! checks, which client each source address is, and which destinations
//! each client may reach on which ports. Each change is reported once,
//! where it applies: a top-level change once for every client, a client's
//! own change under that client. Edits that leave reach as it was
//! (reordered or duplicate rules, comments, a redundant rule, a reorder of
//! clients that changes nobody's match) report nothing.
//!
//! Policy keys still to come slot in as further [`Kind`]s or fields:
//! certificates, tokens and VPC endpoints as further [`Kind::Selector`]s.
//! `allow_private` is a [`Kind::AllowPrivate`] beside the destination's ports.

mod change;
mod clients;
mod dest;
mod guard;
mod ports;
mod private;
mod ranges;
mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;

use super::Policy;
use super::pattern::{Pattern, Ports, parse_destination};
use super::ruleset::{RuleMeta, RuleSet};
pub use change::{Change, Handover, Kind};
use clients::Roster;
use dest::Lists;
use ports::PortSet;
pub use render::render;

/// The pseudo-client whose rules apply to every source.
pub const EVERYONE: &str = "default";

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(n) => f.write_str(n),
            Pattern::Suffix(s) => write!(f, "*.{s}"),
            Pattern::Glob {
                any_depth: true,
                labels,
            } => write!(f, "*.{labels}"),
            Pattern::Glob {
                any_depth: false,
                labels,
            } => f.write_str(labels),
            Pattern::Net(IpNet::V6(net)) => write!(f, "[{net}]"),
            Pattern::Net(net) => write!(f, "{net}"),
        }
    }
}

/// The canonical `pattern:ports` text of a destination.
pub fn destination(pattern: &Pattern, ports: &Ports) -> String {
    format!("{pattern}:{}", PortSet::of(ports))
}

/// Every change in reach from `old` to `new`: top-level changes first, then
/// each client's in the new policy's order, then the removed clients.
pub fn diff(old: &Policy, new: &Policy) -> Vec<Change> {
    let (old_roster, new_roster) = (Roster::of(old), Roster::of(new));
    let mut out = Out {
        changes: Vec::new(),
        cx: render::Context {
            listed: new_roster.listed,
        },
    };
    top_level(old, new, &old_roster, &new_roster, &mut out);
    for (at, entry) in new_roster.entries.iter().enumerate() {
        let name = Some(entry.name());
        let Some(was) = old_roster.find(entry.name()) else {
            out.push(name, clients::added(&old_roster, &new_roster, at));
            for kind in private::diff(&RuleSet::default(), &entry.client.allow) {
                out.push(name, kind);
            }
            continue;
        };
        let before = &old_roster.entries[was];
        if let Some(kind) = clients::sources(&old_roster, was, &new_roster, at) {
            out.push(name, kind);
        }
        for kind in clients::credentials(&old_roster, was, &new_roster, at) {
            out.push(name, kind);
        }
        let (old_mode, new_mode) = (before.client.mode, entry.client.mode);
        // A client that follows the top-level mode changes with it: that
        // change is printed once, at the top level.
        let follows_top = old_mode == old.mode && new_mode == new.mode;
        if old_mode != new_mode && !follows_top {
            out.push(
                name,
                Kind::Mode {
                    old: old_mode.as_str(),
                    new: new_mode.as_str(),
                    keep_own_mode: Vec::new(),
                },
            );
        }
        // The client's own changes, on top of the top-level ones already printed.
        let old_default = changed_default(old, new);
        let (old_own, new_own) = (&before.client.allow, &entry.client.allow);
        let then = Lists::default()
            .with(&new.allow, old_default)
            .with(old_own, None);
        let now = Lists::default()
            .with(&new.allow, old_default)
            .with(new_own, old_default);
        destinations(
            &then,
            &now,
            (old_own, None),
            (new_own, old_default),
            "allow",
            name,
            &mut out,
        );
        for kind in private::diff(old_own, new_own) {
            out.push(name, kind);
        }
    }
    for (at, entry) in old_roster.entries.iter().enumerate() {
        if new_roster.find(entry.name()).is_none() {
            out.push(
                Some(entry.name()),
                clients::removed(&old_roster, &new_roster, at),
            );
        }
    }
    out.changes
}

fn top_level(
    old: &Policy,
    new: &Policy,
    old_roster: &Roster<'_>,
    new_roster: &Roster<'_>,
    out: &mut Out,
) {
    let presence = |listed: bool| if listed { "present" } else { "absent" };
    if old_roster.listed != new_roster.listed {
        out.push(
            None,
            Kind::ClientsSection {
                old: presence(old_roster.listed),
                new: presence(new_roster.listed),
            },
        );
    }
    if old.mode != new.mode {
        let keep_own_mode = new_roster
            .entries
            .iter()
            .filter(|e| {
                old_roster
                    .find(e.name())
                    .is_some_and(|i| old_roster.entries[i].client.mode == e.client.mode)
            })
            .map(|e| e.name().to_string())
            .collect();
        out.push(
            None,
            Kind::Mode {
                old: old.mode.as_str(),
                new: new.mode.as_str(),
                keep_own_mode,
            },
        );
    }
    if let Some(kind) = guard::diff(&old.guard, &new.guard) {
        out.push(None, kind);
    }
    let bool_str = |b: bool| if b { "true" } else { "false" };
    let ech_str = |allowed: bool| if allowed { "allow" } else { "deny" };
    for (setting, was, is) in [
        (
            "sni_must_match",
            bool_str(old.tls.sni_must_match),
            bool_str(new.tls.sni_must_match),
        ),
        (
            "ech",
            ech_str(old.tls.ech_allowed),
            ech_str(new.tls.ech_allowed),
        ),
    ] {
        if was != is {
            out.push(
                None,
                Kind::Tls {
                    setting,
                    old: was,
                    new: is,
                },
            );
        }
    }
    let (old_ports, new_ports) = (
        PortSet::of(&old.default_ports),
        PortSet::of(&new.default_ports),
    );
    // Listing the destinations that take the default ports reads every rule:
    // only when those ports changed.
    let takers = (old_ports != new_ports).then(|| default_port_takers(new));
    if let Some(takers) = takers.filter(|t| !t.is_empty()) {
        out.push(
            None,
            Kind::DefaultPorts {
                old: old_ports.to_string(),
                new: new_ports.to_string(),
                destinations: takers,
            },
        );
    }
    let old_default = changed_default(old, new);
    destinations(
        &Lists::default().with(&old.allow, None),
        &Lists::default().with(&new.allow, old_default),
        (&old.allow, None),
        (&new.allow, old_default),
        "allow",
        None,
        out,
    );
    for kind in private::diff(&old.allow, &new.allow) {
        out.push(None, kind);
    }
    // A deny rule without ports is every port, whatever `default_ports` says.
    destinations(
        &Lists::default().with(&old.deny, None),
        &Lists::default().with(&new.deny, None),
        (&old.deny, None),
        (&new.deny, None),
        "deny",
        None,
        out,
    );
    if let Some(kind) = clients::order(old_roster, new_roster) {
        out.push(None, kind);
    }
}

/// The old `default_ports`, to read the new policy's rules that name no
/// ports with, when they differ from the new ones (`default_ports` is then
/// one change of its own, not one per destination).
fn changed_default<'p>(old: &'p Policy, new: &Policy) -> Option<&'p Ports> {
    (PortSet::of(&old.default_ports) != PortSet::of(&new.default_ports))
        .then_some(&old.default_ports)
}

/// The allow destinations of `policy` that name no ports, once each.
fn default_port_takers(policy: &Policy) -> Vec<String> {
    let lists =
        std::iter::once(&policy.allow).chain(policy.clients.iter().flatten().map(|c| &c.allow));
    let mut seen = BTreeSet::new();
    lists
        .flat_map(|l| l.rules())
        .filter(|r| !dest::names_ports(r))
        .map(|r| r.pattern.to_string())
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

fn destinations(
    old: &Lists<'_>,
    new: &Lists<'_>,
    old_list: dest::Side<'_>,
    new_list: dest::Side<'_>,
    list: &'static str,
    client: Option<&str>,
    out: &mut Out,
) {
    let shown = |p: &PortSet| (!p.is_empty()).then(|| p.to_string());
    for moved in dest::compare(old, new, old_list, new_list) {
        let meta = (meta_of(new_list.0, &moved.destination))
            .or_else(|| meta_of(old_list.0, &moved.destination));
        let field = |f: fn(&RuleMeta) -> Option<&Arc<str>>| meta.and_then(f).map(|v| v.to_string());
        out.push(
            client,
            Kind::Destination {
                list,
                owner: field(|m| m.owner.as_ref()),
                ticket: field(|m| m.ticket.as_ref()),
                destination: moved.destination,
                old_ports: shown(&moved.old),
                new_ports: shown(&moved.new),
            },
        );
    }
}

/// The metadata of the rule of `set` whose pattern is `destination`
/// (canonical), for a reviewer to see whose change it is.
fn meta_of<'s>(set: &'s RuleSet, destination: &str) -> Option<&'s RuleMeta> {
    let (pattern, _) = parse_destination(destination).ok()?;
    (set.covering(&pattern).into_iter())
        .filter(|r| r.pattern.to_string() == destination)
        .find_map(|r| r.meta.as_deref())
}

/// The changes so far, and what their text needs to know.
struct Out {
    changes: Vec<Change>,
    cx: render::Context,
}

impl Out {
    fn push(&mut self, client: Option<&str>, kind: Kind) {
        let text = render::text(client, &kind, &self.cx);
        self.changes.push(Change {
            client: client.map(str::to_string),
            kind,
            text,
        });
    }
}
