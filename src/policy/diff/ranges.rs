//! Sets of IP addresses as sorted, disjoint intervals: the diff compares
//! client sources and `ip_guard` ranges as the addresses they cover, however
//! the CIDRs that spell them are split, ordered or repeated.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const V4_MAX: u128 = u32::MAX as u128;
const V6_MAX: u128 = u128::MAX;

/// Sorted, disjoint, non-adjacent inclusive intervals of one address family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Intervals(Vec<(u128, u128)>);

impl Intervals {
    fn from_unsorted(mut v: Vec<(u128, u128)>) -> Intervals {
        v.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            match out.last_mut() {
                Some(last) if last.1 == u128::MAX || lo <= last.1 + 1 => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Intervals(out)
    }

    fn union(&self, other: &Intervals) -> Intervals {
        Intervals::from_unsorted(self.0.iter().chain(&other.0).copied().collect())
    }

    fn complement(&self, max: u128) -> Intervals {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut next = Some(0u128);
        for &(lo, hi) in &self.0 {
            if let Some(n) = next
                && lo > n
            {
                out.push((n, lo - 1));
            }
            next = hi.checked_add(1);
        }
        if let Some(n) = next
            && n <= max
        {
            out.push((n, max));
        }
        Intervals(out)
    }

    fn intersect(&self, other: &Intervals) -> Intervals {
        let (a, b) = (&self.0, &other.0);
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < a.len() && j < b.len() {
            let lo = a[i].0.max(b[j].0);
            let hi = a[i].1.min(b[j].1);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a[i].1 < b[j].1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Intervals(out)
    }

    /// The fewest CIDR blocks (base, prefix length) that cover the set exactly.
    fn blocks(&self, bits: u32) -> Vec<(u128, u8)> {
        let mut out = Vec::new();
        for &(lo, hi) in &self.0 {
            let mut lo = lo;
            loop {
                let mut host_bits = if lo == 0 {
                    bits
                } else {
                    lo.trailing_zeros().min(bits)
                };
                while last_offset(host_bits) > hi - lo {
                    host_bits -= 1;
                }
                out.push((lo, (bits - host_bits) as u8));
                match lo.checked_add(last_offset(host_bits)) {
                    Some(end) if end < hi => lo = end + 1,
                    _ => break,
                }
            }
        }
        out
    }
}

/// `2^host_bits - 1`: the offset of a block's last address from its first.
fn last_offset(host_bits: u32) -> u128 {
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// A set of IPv4 and IPv6 addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct AddrSet {
    v4: Intervals,
    v6: Intervals,
}

impl AddrSet {
    /// The addresses the CIDRs cover.
    pub(super) fn from_nets<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> AddrSet {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((
                    u128::from(u32::from(n.network())),
                    u128::from(u32::from(n.broadcast())),
                )),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        AddrSet {
            v4: Intervals::from_unsorted(v4),
            v6: Intervals::from_unsorted(v6),
        }
    }

    /// Whether the set holds no address.
    pub(super) fn is_empty(&self) -> bool {
        self.v4.0.is_empty() && self.v6.0.is_empty()
    }

    /// The addresses in either set.
    pub(super) fn union(&self, other: &AddrSet) -> AddrSet {
        AddrSet {
            v4: self.v4.union(&other.v4),
            v6: self.v6.union(&other.v6),
        }
    }

    /// The addresses in both sets.
    pub(super) fn intersect(&self, other: &AddrSet) -> AddrSet {
        AddrSet {
            v4: self.v4.intersect(&other.v4),
            v6: self.v6.intersect(&other.v6),
        }
    }

    /// Every address not in the set.
    pub(super) fn complement(&self) -> AddrSet {
        AddrSet {
            v4: self.v4.complement(V4_MAX),
            v6: self.v6.complement(V6_MAX),
        }
    }

    /// The addresses in `self` but not in `other`.
    pub(super) fn minus(&self, other: &AddrSet) -> AddrSet {
        self.intersect(&other.complement())
    }

    /// Whether every address of `other` is in `self`.
    pub(super) fn contains_all(&self, other: &AddrSet) -> bool {
        other.minus(self).is_empty()
    }

    /// Whether the set holds an IPv4 address.
    pub(super) fn has_v4(&self) -> bool {
        !self.v4.0.is_empty()
    }

    /// Whether the set holds every IPv4 address.
    pub(super) fn has_every_v4(&self) -> bool {
        self.v4.0 == [(0, V4_MAX)]
    }

    /// Whether the set holds every IPv6 address.
    pub(super) fn has_every_v6(&self) -> bool {
        self.v6.0 == [(0, V6_MAX)]
    }

    /// The set as the fewest CIDRs, IPv4 first, each family in address order.
    pub(super) fn cidrs(&self) -> Vec<IpNet> {
        let v4 = self.v4.blocks(32).into_iter().map(|(base, len)| {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(base as u32), len).expect("prefix within 32"))
        });
        let v6 = self.v6.blocks(128).into_iter().map(|(base, len)| {
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(base), len).expect("prefix within 128"))
        });
        v4.chain(v6).collect()
    }

    /// [`AddrSet::cidrs`] as text, IPv6 without brackets.
    pub(super) fn cidr_strings(&self) -> Vec<String> {
        self.cidrs().iter().map(IpNet::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cidrs: &[&str]) -> AddrSet {
        let nets: Vec<IpNet> = cidrs.iter().map(|c| c.parse().unwrap()).collect();
        AddrSet::from_nets(&nets)
    }

    #[test]
    fn cidrs_are_canonical_whatever_the_spelling() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "halves merge",
                &["10.0.0.128/25", "10.0.0.0/25"],
                &["10.0.0.0/24"],
            ),
            (
                "a covered range disappears",
                &["10.0.0.0/8", "10.1.0.0/16"],
                &["10.0.0.0/8"],
            ),
            (
                "duplicates collapse",
                &["10.0.0.0/8", "10.0.0.0/8"],
                &["10.0.0.0/8"],
            ),
            ("everything", &["0.0.0.0/0", "::/0"], &["0.0.0.0/0", "::/0"]),
            ("v6 halves", &["8000::/1", "::/1"], &["::/0"]),
            (
                "single hosts",
                &["10.0.0.1/32", "10.0.0.2/32"],
                &["10.0.0.1/32", "10.0.0.2/32"],
            ),
            ("empty", &[], &[]),
        ];
        for (name, input, want) in cases {
            assert_eq!(set(input).cidr_strings(), *want, "{name}");
        }
    }

    #[test]
    fn set_algebra() {
        let everything_but = set(&["0.0.0.0/0"]).minus(&set(&["10.0.1.0/24"]));
        assert_eq!(everything_but.cidrs().len(), 24);
        assert_eq!(
            everything_but.union(&set(&["10.0.1.0/24"])).cidr_strings(),
            ["0.0.0.0/0"]
        );
        assert!(set(&["0.0.0.0/0"]).has_every_v4());
        assert!(!set(&["0.0.0.0/1"]).has_every_v4());
        assert!(AddrSet::default().complement().has_every_v6());
        assert!(set(&["10.0.0.0/8"]).contains_all(&set(&["10.0.1.0/24", "10.9.0.0/16"])));
        assert!(!set(&["10.0.0.0/8"]).contains_all(&set(&["11.0.0.0/24"])));
        assert_eq!(
            set(&["10.0.0.0/8"])
                .intersect(&set(&["10.0.1.0/24", "11.0.0.0/8"]))
                .cidr_strings(),
            ["10.0.1.0/24"]
        );
        assert_eq!(set(&["::/0"]).complement().cidr_strings(), ["0.0.0.0/0"]);
        assert_eq!(set(&["::/128", "::1/128"]).cidr_strings(), ["::/127"]);
    }
}
