//! `ip_guard` changes: which addresses became dialable or blocked.

use super::super::IpGuard;
use super::Kind;
use super::ranges::AddrSet;

/// The IPv6 ranges whose addresses are judged by the IPv4 address they
/// embed (see `ip_guard::embedded_ipv4`): compatible `::/96` but `::` and
/// `::1`, mapped, SIIT, NAT64 well-known and local-use, 6to4.
const EMBEDDING: &[&str] = &[
    "::/96",
    "::ffff:0:0/96",
    "::ffff:0:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "2002::/16",
];

/// What a reviewer should know about a range that changed: the names of the
/// ranges the `default` guard is made of.
const LABELS: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this\" network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    (
        "169.254.0.0/16",
        "link-local: cloud metadata 169.254.169.254, ECS task metadata 169.254.170.2",
    ),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("224.0.0.0/3", "multicast and reserved"),
    ("0.0.0.0/0", "every IPv4 address"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/127", "unspecified and loopback"),
    ("fc00::/7", "unique local, private"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("fe80::/9", "link-local and site-local"),
    ("ff00::/8", "multicast"),
    ("2001::/32", "Teredo"),
    ("::/0", "every IPv6 address"),
];

/// The metadata address most worth naming when it becomes dialable.
const METADATA: &str = "169.254.169.254";

/// The guard change, if any address may be judged differently.
pub(super) fn diff(old: &IpGuard, new: &IpGuard) -> Option<Kind> {
    let (old_blocked, old_allowed) = sets(old);
    let (new_blocked, new_allowed) = sets(new);
    if old_blocked == new_blocked && old_allowed == new_allowed {
        return None;
    }
    // An address is dialable when `allowed` covers it or `blocked` does not.
    let old_open = old_allowed.union(&old_blocked.complement());
    let new_open = new_allowed.union(&new_blocked.complement());
    let now_dialable = new_open.minus(&old_open);
    let now_blocked = old_open.minus(&new_open);
    if now_dialable.is_empty() && now_blocked.is_empty() && !embedded_forms_differ(old, new) {
        return None;
    }
    Some(Kind::IpGuard {
        now_dialable: now_dialable.cidr_strings(),
        now_blocked: now_blocked.cidr_strings(),
        blocked_added: new_blocked.minus(&old_blocked).cidr_strings(),
        blocked_removed: old_blocked.minus(&new_blocked).cidr_strings(),
        allowed_added: new_allowed.minus(&old_allowed).cidr_strings(),
        allowed_removed: old_allowed.minus(&new_allowed).cidr_strings(),
    })
}

fn sets(guard: &IpGuard) -> (AddrSet, AddrSet) {
    (
        AddrSet::from_nets(guard.blocked()),
        AddrSet::from_nets(guard.allowed()),
    )
}

/// Whether an address that embeds an IPv4 one may be judged differently
/// although no range changed outright. Such an address is dialable when
/// `allowed` covers it or its IPv4 address, or `blocked` covers neither; so
/// it can change only when a list changed inside the embedding ranges, or
/// an IPv4 range changed while a list names part of those ranges.
fn embedded_forms_differ(old: &IpGuard, new: &IpGuard) -> bool {
    let embedding = embedding();
    let (old_blocked, old_allowed) = sets(old);
    let (new_blocked, new_allowed) = sets(new);
    let changed =
        symmetric(&old_blocked, &new_blocked).union(&symmetric(&old_allowed, &new_allowed));
    let named = old_blocked
        .union(&old_allowed)
        .union(&new_blocked)
        .union(&new_allowed);
    !changed.intersect(&embedding).is_empty()
        || (changed.has_v4() && !named.intersect(&embedding).is_empty())
}

fn embedding() -> AddrSet {
    let nets: Vec<ipnet::IpNet> = EMBEDDING
        .iter()
        .map(|s| s.parse().expect("EMBEDDING holds valid CIDRs"))
        .collect();
    let not_embedding: Vec<ipnet::IpNet> = vec!["::/127".parse().expect("valid CIDR")];
    AddrSet::from_nets(&nets).minus(&AddrSet::from_nets(&not_embedding))
}

fn symmetric(a: &AddrSet, b: &AddrSet) -> AddrSet {
    a.minus(b).union(&b.minus(a))
}

/// `10.0.0.0/8 (private)`; a range that holds the metadata address says so.
pub(super) fn label(cidr: &str) -> String {
    if let Some((_, what)) = LABELS.iter().find(|(c, _)| *c == cidr) {
        return format!("{cidr} ({what})");
    }
    let metadata: std::net::IpAddr = METADATA.parse().expect("valid address");
    match cidr.parse::<ipnet::IpNet>() {
        Ok(net) if net.contains(&metadata) => {
            format!("{cidr} (includes cloud metadata {METADATA})")
        }
        _ => cidr.to_string(),
    }
}

/// Whether the cloud metadata address is in one of `cidrs`.
pub(super) fn includes_metadata(cidrs: &[String]) -> bool {
    let metadata: std::net::IpAddr = METADATA.parse().expect("valid address");
    cidrs
        .iter()
        .filter_map(|c| c.parse::<ipnet::IpNet>().ok())
        .any(|n| n.contains(&metadata))
}
