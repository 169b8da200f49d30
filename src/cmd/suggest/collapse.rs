//! Suggested destinations, and how sibling names under one registrable domain
//! become one wildcard without ever reaching a public suffix or a shared-tenant domain.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::flagged::{covers_flagged, flagged};
use crate::policy::lint::too_broad;
use crate::policy::pattern::is_strictly_below;

/// How many distinct names (or narrower wildcards) below one parent it takes
/// for `--collapse auto` to replace them with `*.parent`.
pub const COLLAPSE_MIN_NAMES: usize = 3;

/// How often and when something was seen. Timestamps are the audit log's own
/// RFC 3339 UTC strings, which order as text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// How many records.
    pub count: u64,
    /// The earliest timestamp.
    pub first: Option<String>,
    /// The latest timestamp.
    pub last: Option<String>,
}

impl Seen {
    /// Counts one record seen at `ts`.
    pub fn add(&mut self, ts: Option<&str>) {
        self.count += 1;
        if let Some(ts) = ts {
            self.widen(ts, ts);
        }
    }

    /// Adds the counts and time span of `other`.
    pub fn merge(&mut self, other: &Seen) {
        self.count += other.count;
        if let (Some(first), Some(last)) = (&other.first, &other.last) {
            self.widen(first, last);
        }
    }

    fn widen(&mut self, first: &str, last: &str) {
        if self.first.as_deref().is_none_or(|f| first < f) {
            self.first = Some(first.to_string());
        }
        if self.last.as_deref().is_none_or(|l| last > l) {
            self.last = Some(last.to_string());
        }
    }
}

/// What a suggested rule matches.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dest {
    /// Exactly this (normalised) name.
    Name(String),
    /// `*.suffix`: every name strictly below `suffix`.
    Wildcard(String),
    /// A literal address the client dialed: a one-address range.
    Ip(IpAddr),
}

impl Dest {
    /// Whether every name this matches is strictly below `parent`.
    fn is_strictly_below(&self, parent: &str) -> bool {
        match self {
            Dest::Name(n) | Dest::Wildcard(n) => is_strictly_below(n, parent),
            Dest::Ip(_) => false,
        }
    }

    /// Whether `self` matches everything `other` matches.
    pub fn covers(&self, other: &Dest) -> bool {
        match (self, other) {
            (Dest::Wildcard(s), Dest::Wildcard(n)) => n == s || is_strictly_below(n, s),
            (Dest::Wildcard(s), Dest::Name(n)) => is_strictly_below(n, s),
            _ => self == other,
        }
    }

    /// Output order: names grouped by domain (labels compared right to left,
    /// a wildcard just after its apex), then IPv4, then IPv6 addresses.
    pub fn sort_key(&self) -> (u8, String, Option<IpAddr>) {
        let reversed = |n: &str| n.rsplit('.').collect::<Vec<_>>().join(".");
        match self {
            Dest::Name(n) => (0, reversed(n), None),
            Dest::Wildcard(s) => (0, format!("{}.*", reversed(s)), None),
            Dest::Ip(ip) => (1, String::new(), Some(*ip)),
        }
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Name(n) => f.write_str(n),
            Dest::Wildcard(s) => write!(f, "*.{s}"),
            Dest::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Dest::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// One rule to suggest: a destination, the ports it was reached on, and its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suggestion {
    /// What the rule matches.
    pub dest: Dest,
    /// The ports it was reached on.
    pub ports: BTreeSet<u16>,
    /// How often and when.
    pub seen: Seen,
    /// For a wildcard, the names seen that it replaces.
    pub names: BTreeSet<String>,
    /// How many clients' lists it was lifted from to the top level (0: none).
    pub lifted_from: usize,
}

impl Suggestion {
    /// A suggestion for `dest` with nothing seen yet.
    pub fn new(dest: Dest) -> Suggestion {
        Suggestion {
            dest,
            ports: BTreeSet::new(),
            seen: Seen::default(),
            names: BTreeSet::new(),
            lifted_from: 0,
        }
    }

    /// The destination as the policy file writes it: `host:443` or `host:80,443`.
    pub fn rule_text(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        format!("{}:{}", self.dest, ports.join(","))
    }

    /// Whether `self` allows everything `other` allows.
    pub fn covers(&self, other: &Suggestion) -> bool {
        self.dest.covers(&other.dest) && other.ports.is_subset(&self.ports)
    }

    fn absorb(&mut self, member: Suggestion) {
        self.lifted_from = if self.seen.count == 0 {
            member.lifted_from
        } else {
            self.lifted_from.min(member.lifted_from)
        };
        self.ports.extend(member.ports);
        self.seen.merge(&member.seen);
        match member.dest {
            Dest::Name(n) => {
                self.names.insert(n);
            }
            _ => self.names.extend(member.names),
        }
    }
}

/// Replaces every group of at least [`COLLAPSE_MIN_NAMES`] names (or narrower
/// wildcards) strictly below one parent with `*.parent`, deepest parents
/// first. A parent is considered only at or below the registrable domain of
/// the names (Public Suffix List), and never when `check` would call a
/// wildcard over it too broad: a public suffix or a shared-tenant domain
/// (`*.amazonaws.com` stays the exact names seen). A flagged paste or tunnel
/// service is never absorbed, and no wildcard is written that would match
/// one (`*.github.com` covers `gist.github.com`). The apex itself is never
/// absorbed, since `*.example.com` does not match `example.com`. Ports of a
/// wildcard are the union of its members' ports.
pub fn collapse(items: Vec<Suggestion>) -> Vec<Suggestion> {
    // Parents never span registrable domains: collapse each domain on its own,
    // so the work grows with the names of one domain, not of the whole log.
    let mut by_domain: BTreeMap<String, Vec<Suggestion>> = BTreeMap::new();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let registrable = match &item.dest {
            Dest::Name(n) if flagged(&item.dest).is_none() => psl::domain_str(n),
            _ => None,
        };
        match registrable {
            Some(domain) => by_domain.entry(domain.to_string()).or_default().push(item),
            None => out.push(item),
        }
    }
    for (domain, items) in by_domain {
        out.extend(collapse_domain(&domain, items));
    }
    out
}

/// [`collapse`] for names that share the registrable domain `registrable`.
fn collapse_domain(registrable: &str, mut items: Vec<Suggestion>) -> Vec<Suggestion> {
    let mut parents: BTreeSet<(Reverse<usize>, String)> = BTreeSet::new();
    for item in &items {
        let Dest::Name(name) = &item.dest else {
            continue;
        };
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if parent.len() < registrable.len() {
                break;
            }
            parents.insert((Reverse(parent.split('.').count()), parent.to_string()));
            rest = parent;
        }
    }
    for (_, parent) in parents {
        if too_broad(&parent).is_some() || covers_flagged(&parent) {
            continue;
        }
        let (members, mut rest): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|s| s.dest.is_strictly_below(&parent));
        if members.len() >= COLLAPSE_MIN_NAMES {
            let mut wildcard = Suggestion::new(Dest::Wildcard(parent));
            for m in members {
                wildcard.absorb(m);
            }
            rest.push(wildcard);
        } else {
            rest.extend(members);
        }
        items = rest;
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str, ports: &[u16], count: u64) -> Suggestion {
        let mut s = Suggestion::new(Dest::Name(n.to_string()));
        s.ports.extend(ports);
        for i in 0..count {
            s.seen
                .add(Some(&format!("2026-01-0{}T00:00:00.000Z", 1 + i % 9)));
        }
        s
    }

    fn rules(items: &[Suggestion]) -> Vec<String> {
        let mut out: Vec<_> = items.iter().map(Suggestion::rule_text).collect();
        out.sort();
        out
    }

    fn collapsed(names: &[&str]) -> Vec<String> {
        rules(&collapse(
            names.iter().map(|n| name(n, &[443], 1)).collect(),
        ))
    }

    #[test]
    fn three_siblings_become_a_wildcard_with_merged_ports_and_history() {
        let items = vec![
            name("api.example.com", &[443], 2),
            name("files.example.com", &[443, 80], 1),
            name("m.example.com", &[443], 4),
            name("example.com", &[443], 1),
            name("api.stripe.com", &[443], 1),
        ];
        let out = collapse(items);
        assert_eq!(
            rules(&out),
            [
                "*.example.com:80,443",
                "api.stripe.com:443",
                "example.com:443"
            ]
        );
        let wild = out
            .iter()
            .find(|s| s.dest == Dest::Wildcard("example.com".into()))
            .unwrap();
        assert_eq!(wild.seen.count, 7);
        assert_eq!(wild.seen.first.as_deref(), Some("2026-01-01T00:00:00.000Z"));
        assert_eq!(wild.seen.last.as_deref(), Some("2026-01-04T00:00:00.000Z"));
        assert_eq!(
            wild.names.iter().collect::<Vec<_>>(),
            ["api.example.com", "files.example.com", "m.example.com"]
        );
    }

    #[test]
    fn two_siblings_stay_exact() {
        assert_eq!(
            collapsed(&["a.example.com", "b.example.com"]),
            ["a.example.com:443", "b.example.com:443"]
        );
    }

    #[test]
    fn the_narrowest_parent_wins() {
        assert_eq!(
            collapsed(&[
                "a.eu.api.example.com",
                "b.eu.api.example.com",
                "c.eu.api.example.com",
                "www.example.com",
            ]),
            ["*.eu.api.example.com:443", "www.example.com:443"]
        );
        // A collapsed subtree counts as one member of its parent.
        assert_eq!(
            collapsed(&[
                "a.x.example.com",
                "b.x.example.com",
                "c.x.example.com",
                "p.example.com",
                "q.example.com",
            ]),
            ["*.example.com:443"]
        );
    }

    #[test]
    fn never_a_wildcard_over_a_public_suffix() {
        // Each is its own registrable domain: nothing above them is collapsible.
        assert_eq!(
            collapsed(&["a.co.uk", "b.co.uk", "c.co.uk"]),
            ["a.co.uk:443", "b.co.uk:443", "c.co.uk:443"]
        );
        assert_eq!(
            collapsed(&["alpha.com", "beta.com", "gamma.com"]),
            ["alpha.com:443", "beta.com:443", "gamma.com:443"]
        );
        // Names registered under a private-section suffix (github.io) are owned by different people.
        assert_eq!(
            collapsed(&["alice.github.io", "bob.github.io", "carol.github.io"]),
            [
                "alice.github.io:443",
                "bob.github.io:443",
                "carol.github.io:443"
            ]
        );
    }

    #[test]
    fn never_a_wildcard_over_a_shared_tenant_domain() {
        let aws = [
            "sts.amazonaws.com",
            "sqs.amazonaws.com",
            "ec2.amazonaws.com",
            "logs.amazonaws.com",
        ];
        assert_eq!(collapsed(&aws).len(), 4, "{:?}", collapsed(&aws));
        assert!(collapsed(&aws).iter().all(|r| !r.contains('*')));
        let buckets = [
            "a.s3.amazonaws.com",
            "b.s3.amazonaws.com",
            "c.s3.amazonaws.com",
            "d.s3.eu-west-1.amazonaws.com",
            "e.s3.eu-west-1.amazonaws.com",
            "f.s3.eu-west-1.amazonaws.com",
        ];
        assert!(collapsed(&buckets).iter().all(|r| !r.contains('*')));
        let azure = [
            "one.blob.core.windows.net",
            "two.blob.core.windows.net",
            "three.blob.core.windows.net",
        ];
        assert!(collapsed(&azure).iter().all(|r| !r.contains('*')));
        let gcs = [
            "a.storage.googleapis.com",
            "b.storage.googleapis.com",
            "c.storage.googleapis.com",
        ];
        assert!(collapsed(&gcs).iter().all(|r| !r.contains('*')));
        // Deeper names below a bucket are one owner's, but the lint still
        // calls anything below a shared-tenant domain too broad: stay exact.
        let deep = [
            "x.mybucket.s3.amazonaws.com",
            "y.mybucket.s3.amazonaws.com",
            "z.mybucket.s3.amazonaws.com",
        ];
        assert!(collapsed(&deep).iter().all(|r| !r.contains('*')));
    }

    #[test]
    fn the_refusals_agree_with_check() {
        use crate::policy::lint::{Breadth, too_broad};
        assert_eq!(too_broad("example.com"), None);
        assert_eq!(too_broad("com"), Some(Breadth::PublicSuffix));
        assert_eq!(too_broad("co.uk"), Some(Breadth::PublicSuffix));
        assert!(matches!(
            too_broad("amazonaws.com"),
            Some(Breadth::SharedTenant {
                domain: "amazonaws.com",
                ..
            })
        ));
        assert!(matches!(
            too_broad("eu-west-1.s3.amazonaws.com"),
            Some(Breadth::SharedTenant {
                domain: "s3.amazonaws.com",
                ..
            })
        ));
    }

    #[test]
    fn ips_are_never_collapsed() {
        let items: Vec<Suggestion> = ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
            .iter()
            .map(|ip| {
                let mut s = Suggestion::new(Dest::Ip(ip.parse().unwrap()));
                s.ports.insert(443);
                s
            })
            .collect();
        assert_eq!(collapse(items).len(), 3);
    }

    #[test]
    fn cover_rules() {
        let wild = Dest::Wildcard("example.com".into());
        assert!(wild.covers(&Dest::Name("a.example.com".into())));
        assert!(wild.covers(&Dest::Wildcard("x.example.com".into())));
        assert!(wild.covers(&Dest::Wildcard("example.com".into())));
        assert!(!wild.covers(&Dest::Name("example.com".into())));
        assert!(!wild.covers(&Dest::Name("xexample.com".into())));
        let exact = Dest::Name("a.example.com".into());
        assert!(exact.covers(&exact.clone()));
        assert!(!exact.covers(&Dest::Name("b.example.com".into())));
    }

    #[test]
    fn sort_groups_names_by_domain() {
        let mut d = [
            Dest::Ip("2001:db8::1".parse().unwrap()),
            Dest::Name("www.zeta.com".into()),
            Dest::Ip("203.0.113.7".parse().unwrap()),
            Dest::Name("api.example.com".into()),
            Dest::Wildcard("example.com".into()),
            Dest::Name("example.com".into()),
            Dest::Name("registry.npmjs.org".into()),
        ];
        d.sort_by_key(Dest::sort_key);
        let text: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "example.com",
                "*.example.com",
                "api.example.com",
                "www.zeta.com",
                "registry.npmjs.org",
                "203.0.113.7",
                "[2001:db8::1]"
            ]
        );
    }
}
