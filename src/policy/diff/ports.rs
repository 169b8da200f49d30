//! `PortSet`: the ports one destination is reachable on, compared as a set
//! and printed in the order the policy first names them (`443,80`).

use std::fmt;

use super::super::pattern::Ports;

/// A set of ports, from the rules that cover one destination.
#[derive(Clone, Debug, Default)]
pub(super) struct PortSet {
    /// Ranges in the order they were added: what the reader wrote.
    written: Vec<(u16, u16)>,
}

impl PartialEq for PortSet {
    fn eq(&self, other: &Self) -> bool {
        self.canonical() == other.canonical()
    }
}

impl Eq for PortSet {}

impl PortSet {
    /// The ports of `ports`; `*` is every port, 0 included, as `decide` sees it.
    pub(super) fn of(ports: &Ports) -> PortSet {
        let mut set = PortSet::default();
        set.add(ports);
        set
    }

    /// Adds the ports of `ports` after those already in the set.
    pub(super) fn add(&mut self, ports: &Ports) {
        match ports {
            Ports::Any => self.written.push((0, u16::MAX)),
            Ports::Ranges(ranges) => self
                .written
                .extend(ranges.iter().map(|r| (*r.start(), *r.end()))),
        }
    }

    /// The ports of both sets.
    pub(super) fn union(&self, other: &PortSet) -> PortSet {
        let mut written = self.written.clone();
        written.extend_from_slice(&other.written);
        PortSet { written }
    }

    /// Whether every port of `self` is in `other`.
    pub(super) fn within(&self, other: &PortSet) -> bool {
        let theirs = other.canonical();
        self.canonical()
            .iter()
            .all(|&(lo, hi)| theirs.iter().any(|&(a, b)| a <= lo && hi <= b))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// Merged ranges, each with the position of the first written range in it.
    fn merged(&self) -> Vec<(u16, u16, usize)> {
        let mut ranges: Vec<(u16, u16, usize)> = self
            .written
            .iter()
            .enumerate()
            .map(|(i, &(lo, hi))| (lo, hi, i))
            .collect();
        ranges.sort_unstable();
        let mut out: Vec<(u16, u16, usize)> = Vec::with_capacity(ranges.len());
        for (lo, hi, i) in ranges {
            match out.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => {
                    last.1 = last.1.max(hi);
                    last.2 = last.2.min(i);
                }
                _ => out.push((lo, hi, i)),
            }
        }
        out
    }

    /// The ports as sorted, merged ranges: equal sets, equal ranges.
    pub(super) fn ranges(&self) -> Vec<(u16, u16)> {
        self.canonical()
    }

    fn canonical(&self) -> Vec<(u16, u16)> {
        self.merged()
            .into_iter()
            .map(|(lo, hi, _)| (lo, hi))
            .collect()
    }
}

/// `*` for every port, else ranges and ports as the policy writes them, in
/// the order it first names them: `443,80`, `8000-8100`.
impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut merged = self.merged();
        if merged.first().is_some_and(|r| (r.0, r.1) == (0, u16::MAX)) {
            return f.write_str("*");
        }
        merged.sort_by_key(|r| r.2);
        for (i, (lo, hi, _)) in merged.into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(list: &[(u16, u16)]) -> Ports {
        Ports::Ranges(list.iter().map(|&(lo, hi)| lo..=hi).collect())
    }

    #[test]
    fn compares_as_a_set_and_prints_in_written_order() {
        let mut a = PortSet::of(&ports(&[(443, 443)]));
        a.add(&ports(&[(80, 80), (443, 443)]));
        assert_eq!(a.to_string(), "443,80");
        assert_eq!(a, PortSet::of(&ports(&[(80, 80), (443, 443)])));
        let mut r = PortSet::of(&ports(&[(8000, 8050)]));
        r.add(&ports(&[(8051, 8100)]));
        assert_eq!(r, PortSet::of(&ports(&[(8000, 8100)])));
        assert_eq!(r.to_string(), "8000-8100");
        assert_eq!(PortSet::of(&Ports::Any).to_string(), "*");
        assert_ne!(PortSet::of(&Ports::Any), PortSet::of(&ports(&[(1, 65535)])));
        assert_ne!(a, PortSet::default());
        assert!(PortSet::default().is_empty());
        assert!(a.within(&PortSet::of(&Ports::Any)));
        assert!(!PortSet::of(&Ports::Any).within(&a));
        assert!(PortSet::of(&ports(&[(8010, 8020)])).within(&r));
        assert!(!PortSet::of(&ports(&[(7999, 8020)])).within(&r));
        assert!(
            PortSet::of(&ports(&[(7999, 8020)]))
                .within(&r.union(&PortSet::of(&ports(&[(7999, 7999)]))))
        );
    }
}
