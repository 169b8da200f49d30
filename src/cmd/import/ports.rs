//! Sets of TCP ports (Squid's `port` ACLs and the guards built from them).

/// A set of ports 1-65535, as a bitmap: unions, intersections and
/// differences are exact and cheap.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PortSet(Box<[u64; 1024]>);

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortSet({})", self.render())
    }
}

impl PortSet {
    /// No port.
    pub(crate) fn empty() -> PortSet {
        PortSet(Box::new([0; 1024]))
    }

    /// Every port, 1-65535.
    pub(crate) fn all() -> PortSet {
        let mut s = PortSet::empty();
        s.insert_range(1, 65535);
        s
    }

    /// Adds `lo..=hi`.
    pub(crate) fn insert_range(&mut self, lo: u16, hi: u16) {
        for p in lo..=hi {
            self.0[usize::from(p) / 64] |= 1 << (p % 64);
        }
    }

    /// Whether `p` is in the set.
    pub(crate) fn contains(&self, p: u16) -> bool {
        self.0[usize::from(p) / 64] & (1 << (p % 64)) != 0
    }

    /// Ports in both.
    pub(crate) fn and(&self, other: &PortSet) -> PortSet {
        let mut s = self.clone();
        s.0.iter_mut()
            .zip(other.0.iter())
            .for_each(|(a, b)| *a &= b);
        s
    }

    /// Ports in either.
    pub(crate) fn or(&self, other: &PortSet) -> PortSet {
        let mut s = self.clone();
        s.0.iter_mut()
            .zip(other.0.iter())
            .for_each(|(a, b)| *a |= b);
        s
    }

    /// Ports in `self` but not in `other`.
    pub(crate) fn minus(&self, other: &PortSet) -> PortSet {
        let mut s = self.clone();
        s.0.iter_mut()
            .zip(other.0.iter())
            .for_each(|(a, b)| *a &= !b);
        s
    }

    /// Whether every port of `other` is in `self`.
    pub(crate) fn covers(&self, other: &PortSet) -> bool {
        other.minus(self).is_empty()
    }

    /// No port at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// Exactly 443, the `default_ports` of an imported policy.
    pub(crate) fn is_default(&self) -> bool {
        let mut d = PortSet::empty();
        d.insert_range(443, 443);
        *self == d
    }

    /// portcullis's port list: `*`, or `443,80,1025-65535`.
    pub(crate) fn render(&self) -> String {
        if *self == PortSet::all() {
            return "*".to_string();
        }
        let mut parts = Vec::new();
        let mut p: u32 = 1;
        while p <= 65535 {
            if self.contains(p as u16) {
                let lo = p;
                while p < 65535 && self.contains((p + 1) as u16) {
                    p += 1;
                }
                parts.push(if lo == p {
                    lo.to_string()
                } else {
                    format!("{lo}-{p}")
                });
            }
            p += 1;
        }
        parts.join(",")
    }

    /// Parses Squid's port values: `443`, `1025-65535`.
    pub(crate) fn parse_squid(values: &[String]) -> Result<PortSet, String> {
        let mut s = PortSet::empty();
        for v in values {
            let (lo, hi) = v.split_once('-').unwrap_or((v, v));
            match (lo.parse::<u16>(), hi.parse::<u16>()) {
                (Ok(lo), Ok(hi)) if lo >= 1 && lo <= hi => s.insert_range(lo, hi),
                _ => return Err(format!("`{v}` is not a port or a port range")),
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_runs_as_ranges() {
        let s = PortSet::parse_squid(&["80".into(), "443".into(), "1025-65535".into()]).unwrap();
        assert_eq!(s.render(), "80,443,1025-65535");
        assert_eq!(PortSet::all().render(), "*");
        let ssl = PortSet::parse_squid(&["443".into()]).unwrap();
        assert!(s.and(&ssl).is_default());
        assert!(s.covers(&ssl) && !ssl.covers(&s));
        assert!(PortSet::parse_squid(&["0".into()]).is_err());
        assert!(PortSet::parse_squid(&["90-80".into()]).is_err());
        assert!(PortSet::parse_squid(&["https".into()]).is_err());
    }
}
