//! Destinations as both source formats name them (a domain, a domain and
//! its subdomains, an address range), with the set relations the importers
//! need to keep first-match order faithful.

use ipnet::IpNet;

use super::ports::PortSet;
use crate::policy::pattern::parse_destination;

/// One destination value of the source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dom {
    /// `name`, and with `subs` every name below it (Squid's `.example.com`).
    Name {
        /// Lowercase, without a leading dot.
        name: String,
        /// Whether names below `name` match too.
        subs: bool,
        /// Whether `name` itself matches (Smokescreen's `*.x` does not).
        apex: bool,
    },
    /// Literal addresses in this range.
    Net(IpNet),
}

impl Dom {
    /// Whether every host `other` matches, `self` matches too.
    pub(crate) fn covers(&self, other: &Dom) -> bool {
        match (self, other) {
            (Dom::Net(a), Dom::Net(b)) => a.contains(b),
            (
                Dom::Name { name, subs, apex },
                Dom::Name {
                    name: n2,
                    subs: s2,
                    apex: a2,
                },
            ) => {
                if name == n2 {
                    (*apex || !*a2) && (*subs || !*s2)
                } else {
                    *subs && n2.ends_with(&format!(".{name}"))
                }
            }
            _ => false,
        }
    }

    /// Whether some host matches both.
    pub(crate) fn overlaps(&self, other: &Dom) -> bool {
        match (self, other) {
            (Dom::Net(a), Dom::Net(b)) => a.contains(b) || b.contains(a),
            (Dom::Name { .. }, Dom::Name { .. }) => {
                self.covers(other) || other.covers(self) || self.same_name_overlap(other)
            }
            _ => false,
        }
    }

    fn same_name_overlap(&self, other: &Dom) -> bool {
        match (self, other) {
            (
                Dom::Name { name, subs, apex },
                Dom::Name {
                    name: n2,
                    subs: s2,
                    apex: a2,
                },
            ) => name == n2 && ((*subs && *s2) || (*apex && *a2)),
            _ => false,
        }
    }

    /// The part of `self` that `other` also matches, when it is one value.
    pub(crate) fn intersect(&self, other: &Dom) -> Option<Dom> {
        if other.covers(self) {
            Some(self.clone())
        } else if self.covers(other) {
            Some(other.clone())
        } else {
            None
        }
    }

    /// The value as the source wrote it, for comments.
    pub(crate) fn describe(&self) -> String {
        match self {
            Dom::Name {
                name,
                subs: true,
                apex: true,
            } => format!(".{name}"),
            Dom::Name {
                name, subs: true, ..
            } => format!("*.{name}"),
            Dom::Name { name, .. } => name.clone(),
            Dom::Net(n) => n.to_string(),
        }
    }

    /// portcullis destinations matching the same hosts on `ports`
    /// (`None`: every port, as a `deny` entry without ports means).
    pub(crate) fn dests(&self, ports: Option<&PortSet>) -> Vec<String> {
        let suffix = match ports {
            Some(p) if p.is_default() => String::new(),
            Some(p) => format!(":{}", p.render()),
            None => String::new(),
        };
        match self {
            Dom::Name { name, subs, apex } => {
                let mut out = Vec::new();
                if *apex {
                    out.push(format!("{name}{suffix}"));
                }
                if *subs {
                    out.push(format!("*.{name}{suffix}"));
                }
                out
            }
            Dom::Net(IpNet::V4(n)) if n.prefix_len() == 32 => vec![format!("{}{suffix}", n.addr())],
            Dom::Net(IpNet::V4(n)) => vec![format!("{n}{suffix}")],
            Dom::Net(IpNet::V6(n)) if n.prefix_len() == 128 => {
                vec![format!("[{}]{suffix}", n.addr())]
            }
            Dom::Net(IpNet::V6(n)) => vec![format!("[{n}]{suffix}")],
        }
    }
}

/// Parses a domain value: `example.com`, `.example.com` (with `squid_dot`,
/// the domain and its subdomains), `*.example.com` (names below only), or
/// an address. `Err` says why portcullis cannot write it.
pub(crate) fn parse_dom(value: &str, squid_dot: bool) -> Result<Dom, String> {
    let v = value.trim().trim_end_matches('.').to_ascii_lowercase();
    if let Ok(ip) = v.parse::<std::net::IpAddr>() {
        return Ok(Dom::Net(IpNet::from(ip)));
    }
    if let Ok(net) = v.parse::<IpNet>() {
        return Ok(Dom::Net(net.trunc()));
    }
    let dom = if let Some(rest) = v.strip_prefix('.').filter(|_| squid_dot) {
        Dom::Name {
            name: rest.to_string(),
            subs: true,
            apex: true,
        }
    } else if let Some(rest) = v.strip_prefix("*.") {
        Dom::Name {
            name: rest.to_string(),
            subs: true,
            apex: false,
        }
    } else {
        Dom::Name {
            name: v.clone(),
            subs: false,
            apex: true,
        }
    };
    let Dom::Name { name, .. } = &dom else {
        unreachable!("built as a name above")
    };
    if name.contains('*') || name.is_empty() {
        return Err(format!("`{value}` is not a domain portcullis can write"));
    }
    for d in dom.dests(None) {
        if let Err(e) = parse_destination(&d) {
            return Err(e.message);
        }
    }
    Ok(dom)
}
