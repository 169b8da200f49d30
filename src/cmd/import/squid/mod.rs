//! `portcullis import squid`: `acl` and `http_access` lines to a policy.
//!
//! Squid applies the first `http_access` line whose ACLs all match; a
//! portcullis policy has a deny list that always wins, allow lists, and
//! clients matched first by source. The walk below keeps what maps exactly,
//! turns what does not into the stricter choice, and says so in a comment.

mod emit;
mod parse;
#[cfg(test)]
mod tests;

use std::path::Path;

use ipnet::IpNet;

use super::ImportError;
use super::dom::{Dom, parse_dom};
use super::draft::{Draft, clip};
use super::ports::PortSet;
use parse::{Acl, Config, Kind, Rule};

/// Converts the text of a squid.conf (`dir` resolves relative ACL files).
pub(crate) fn import(text: &str, dir: &Path) -> Result<Draft, ImportError> {
    let cfg = parse::parse(text, dir)?;
    let mut walk = Walk::new(&cfg);
    for rule in &cfg.rules {
        walk.rule(rule);
    }
    Ok(walk.finish())
}

/// An allow line that was carried over.
struct Allowed {
    line: usize,
    src: Option<String>,
    /// Each destination with its origin and the ports it still allows.
    doms: Vec<(Dom, String, PortSet)>,
    /// Source addresses every rule from here on is limited to (`deny !localnet`).
    universe: Option<Vec<IpNet>>,
}

/// A deny line with destinations.
struct Denied {
    line: usize,
    src: Option<String>,
    doms: Vec<(Dom, String)>,
    ports: Option<PortSet>,
    note: Option<String>,
}

/// A rule's conditions, sorted by what they test.
#[derive(Default)]
struct Terms<'a> {
    src: Vec<&'a str>,
    not_src: Vec<&'a str>,
    dest: Vec<&'a str>,
    not_dest: Vec<&'a str>,
    port: Vec<PortSet>,
    not_port: Vec<PortSet>,
    connect: bool,
    never: bool,
    opaque: Vec<String>,
}

struct Walk<'a> {
    cfg: &'a Config,
    draft: Draft,
    /// `deny !Safe_ports`: ports every request is limited to.
    guard: PortSet,
    /// `deny CONNECT !SSL_ports`: ports CONNECT is limited to.
    connect_guard: Option<(usize, PortSet)>,
    /// `deny Bad_ports`.
    denied_ports: PortSet,
    /// `deny !allowed_sites`: every later allow is limited to these.
    dest_universe: Option<(usize, Vec<(Dom, String)>)>,
    src_universe: Option<Vec<IpNet>>,
    allows: Vec<Allowed>,
    denies: Vec<Denied>,
    /// `deny badnet`: these sources get nothing from later lines.
    blocked: Vec<(usize, String)>,
    /// The line of a `deny all`, after which nothing is reached.
    stopped: Option<usize>,
}

impl<'a> Walk<'a> {
    fn new(cfg: &'a Config) -> Walk<'a> {
        let mut draft = Draft::default();
        for (line, text, why) in &cfg.other {
            draft.skip(&format!("line {line}"), &format!("`{}`: {why}", clip(text)));
        }
        Walk {
            cfg,
            draft,
            guard: PortSet::all(),
            connect_guard: None,
            denied_ports: PortSet::empty(),
            dest_universe: None,
            src_universe: None,
            allows: Vec::new(),
            denies: Vec::new(),
            blocked: Vec::new(),
            stopped: None,
        }
    }

    fn skip(&mut self, rule: &Rule, why: &str) {
        self.draft.skip(
            &format!("line {}", rule.line),
            &format!("`{}`: {why}", clip(&rule.text)),
        );
    }

    fn terms(&self, rule: &'a Rule) -> Terms<'a> {
        let mut t = Terms::default();
        for (neg, name) in &rule.terms {
            let acl = &self.cfg.acls[name.as_str()];
            if let Some(why) = &acl.unusable {
                t.opaque.push(format!("acl `{name}`: {why}"));
                continue;
            }
            if acl.kind == Kind::Src
                && let Err(e) = acl.nets()
            {
                t.opaque.push(format!("acl `{name}`: {e}"));
                continue;
            }
            match (&acl.kind, *neg) {
                (Kind::Src, _) if universal(acl) => t.never |= *neg,
                (Kind::Src, false) => t.src.push(name),
                (Kind::Src, true) => t.not_src.push(name),
                (Kind::DstDomain | Kind::Dst, false) => t.dest.push(name),
                (Kind::DstDomain | Kind::Dst, true) => t.not_dest.push(name),
                (Kind::Port, neg) => match PortSet::parse_squid(&values(acl)) {
                    Ok(p) if neg => t.not_port.push(p),
                    Ok(p) => t.port.push(p),
                    Err(e) => t.opaque.push(format!("acl `{name}`: {e}")),
                },
                (Kind::Method, false)
                    if values(acl)
                        .iter()
                        .all(|m| m.eq_ignore_ascii_case("CONNECT")) =>
                {
                    t.connect = true
                }
                (Kind::Method, _) => t.opaque.push(format!(
                    "acl `{name}` tests the request method, which a portcullis policy does not"
                )),
                (Kind::Other(kind), _) => t.opaque.push(format!(
                    "acl `{name}` is `{kind}`, which has no portcullis equivalent"
                )),
            }
        }
        t
    }

    fn rule(&mut self, rule: &'a Rule) {
        if let Some(line) = self.stopped {
            let why = format!("never reached: `http_access deny all` on line {line} comes first");
            return self.skip(rule, &why);
        }
        let t = self.terms(rule);
        if t.never {
            return self.skip(rule, "never matches (`!all`)");
        }
        if !t.opaque.is_empty() {
            let why = t.opaque.join("; ");
            return if rule.allow {
                self.skip(rule, &format!("{why}; what it allowed is denied"))
            } else {
                self.skip(rule, &format!("WARNING: {why}; requests it refused may now be allowed by the lines below it: review them"))
            };
        }
        if rule.allow {
            self.allow(rule, t)
        } else {
            self.deny(rule, t)
        }
    }

    fn allow(&mut self, rule: &Rule, t: Terms<'_>) {
        if !t.not_src.is_empty() || t.src.len() > 1 || t.dest.len() > 1 {
            return self.skip(rule, "combines source or destination ACLs in a way a policy cannot write; what it allowed is denied");
        }
        let universe = self.dest_universe.clone();
        let doms = match (t.dest.first(), &universe) {
            (Some(name), universe) => {
                let mut doms = self.doms(name);
                if let Some((line, u)) = universe {
                    let before = doms.len();
                    doms = doms
                        .iter()
                        .flat_map(|(d, o)| {
                            u.iter()
                                .filter_map(|(ud, _)| d.intersect(ud).map(|x| (x, o.clone())))
                        })
                        .collect();
                    if doms.len() < before {
                        let why = format!(
                            "some of its destinations are outside what `http_access deny !…` on line {line} lets through; left out"
                        );
                        self.skip(rule, &why);
                    }
                }
                doms
            }
            (None, Some((_, u))) => u.clone(),
            (None, None) => {
                return self.skip(rule, "allows every destination; a policy lists destinations: run these clients with `mode: report` and collect theirs with `portcullis suggest`");
            }
        };
        let mut ports = t
            .port
            .iter()
            .fold(self.guard.and(&PortSet::all()), |acc, p| acc.and(p));
        if let Some((_, g)) = &self.connect_guard {
            ports = ports.and(g);
        }
        ports = t
            .not_port
            .iter()
            .fold(ports.minus(&self.denied_ports), |acc, p| acc.minus(p));
        if ports.is_empty() {
            return self.skip(rule, "no port is left once the port rules above apply");
        }
        if t.connect {
            self.skip(rule, "applies to CONNECT only in Squid; portcullis allows these destinations for plain HTTP requests on the same ports too");
        }
        for name in &t.not_dest {
            let excluded = self.doms(name);
            self.denies.push(Denied {
                line: rule.line,
                src: t.src.first().map(|s| s.to_string()),
                doms: excluded,
                ports: None,
                note: Some(format!("excluded by `!{name}` on line {}", rule.line)),
            });
        }
        self.allows.push(Allowed {
            line: rule.line,
            src: t.src.first().map(|s| s.to_string()),
            doms: doms
                .into_iter()
                .map(|(d, o)| (d, o, ports.clone()))
                .collect(),
            universe: self.src_universe.clone(),
        });
    }

    fn deny(&mut self, rule: &Rule, t: Terms<'_>) {
        let only = |n: usize| {
            t.src.len()
                + t.not_src.len()
                + t.dest.len()
                + t.not_dest.len()
                + t.port.len()
                + t.not_port.len()
                == n
        };
        if only(0) && !t.connect {
            self.stopped = Some(rule.line);
        } else if only(t.not_port.len()) && !t.not_port.is_empty() {
            let allowed = t.not_port.iter().fold(PortSet::empty(), |acc, p| acc.or(p));
            if t.connect {
                let g = match &self.connect_guard {
                    Some((_, g)) => g.and(&allowed),
                    None => allowed,
                };
                self.connect_guard = Some((rule.line, g));
            } else {
                self.guard = self.guard.and(&allowed);
            }
        } else if only(t.port.len()) && !t.port.is_empty() {
            let denied = t.port.iter().fold(PortSet::all(), |acc, p| acc.and(p));
            self.denied_ports = self.denied_ports.or(&denied);
            if t.connect {
                self.skip(rule, "denies these ports to CONNECT only in Squid; portcullis denies them to plain HTTP too");
            }
        } else if only(1) && t.src.len() == 1 {
            self.blocked.push((rule.line, t.src[0].to_string()));
        } else if only(1) && t.not_src.len() == 1 {
            let nets = self.nets(t.not_src[0]);
            self.src_universe = Some(match self.src_universe.take() {
                Some(u) => intersect_nets(&u, &nets),
                None => nets,
            });
        } else if only(1) && t.not_dest.len() == 1 {
            let doms = self.doms(t.not_dest[0]);
            self.dest_universe = Some((rule.line, doms));
        } else if t.dest.len() == 1
            && t.not_src.is_empty()
            && t.not_dest.is_empty()
            && t.not_port.is_empty()
            && t.src.len() <= 1
        {
            let ports = (!t.port.is_empty())
                .then(|| t.port.iter().fold(PortSet::all(), |acc, p| acc.and(p)));
            let note = t.connect.then(|| {
                format!(
                    "line {} denied these to CONNECT only; here they are denied to plain HTTP too",
                    rule.line
                )
            });
            let doms = self.doms(t.dest[0]);
            self.denies.push(Denied {
                line: rule.line,
                src: t.src.first().map(|s| s.to_string()),
                doms,
                ports,
                note,
            });
        } else {
            self.skip(rule, "WARNING: combines ACLs in a way a policy cannot write; requests it refused may now be allowed by the lines below it: review them");
        }
    }

    /// A destination ACL's values; those portcullis cannot write become comments.
    fn doms(&mut self, name: &str) -> Vec<(Dom, String)> {
        let acl = &self.cfg.acls[name];
        let mut out = Vec::new();
        for (v, origin) in &acl.values {
            let origin = format!("{origin} (acl {name})");
            match parse_dom(v, acl.kind == Kind::DstDomain) {
                Ok(d) => out.push((d, origin)),
                Err(e) => self.draft.skip(&origin, &format!("{e}; left out")),
            }
        }
        out
    }

    fn nets(&self, name: &str) -> Vec<IpNet> {
        self.cfg.acls[name].nets().unwrap_or_default()
    }
}

fn values(acl: &Acl) -> Vec<String> {
    acl.values.iter().map(|(v, _)| v.clone()).collect()
}

/// `src all` and equivalents: every address.
fn universal(acl: &Acl) -> bool {
    acl.nets()
        .is_ok_and(|n| n.iter().any(|n| n.prefix_len() == 0))
}

fn intersect_nets(a: &[IpNet], b: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if x.contains(y) {
                out.push(*y);
            } else if y.contains(x) {
                out.push(*x);
            }
        }
    }
    out.dedup();
    out
}
