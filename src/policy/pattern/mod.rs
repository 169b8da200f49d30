//! Destination patterns as written in the policy (`host[:ports]`), and how one is parsed.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;

use super::diagnostic::Code;
use super::host::{Host, HostError, normalize_name};
use super::ip_guard::parse_net;

/// Which ports a destination covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    /// Every port (`:*`).
    Any,
    /// These inclusive ranges.
    Ranges(Vec<RangeInclusive<u16>>),
}

/// The ports of a destination that names none when the policy sets no
/// `default_ports`: 443.
impl Default for Ports {
    fn default() -> Self {
        Ports::Ranges(
            super::compile::DEFAULT_PORTS
                .iter()
                .map(|&p| p..=p)
                .collect(),
        )
    }
}

impl Ports {
    /// Whether `port` is covered.
    pub fn contains(&self, port: u16) -> bool {
        match self {
            Ports::Any => true,
            Ports::Ranges(r) => r.iter().any(|r| r.contains(&port)),
        }
    }

    /// True when every port of `other` is also in `self`.
    pub fn covers(&self, other: &Ports) -> bool {
        match (self, other) {
            (Ports::Any, _) => true,
            (Ports::Ranges(_), Ports::Any) => false,
            (Ports::Ranges(_), Ports::Ranges(theirs)) => theirs
                .iter()
                .all(|r| (*r.start()..=*r.end()).all(|p| self.contains(p))),
        }
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ports::Any => f.write_str("*"),
            Ports::Ranges(ranges) => {
                for (i, r) in ranges.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    if r.start() == r.end() {
                        write!(f, "{}", r.start())?;
                    } else {
                        write!(f, "{}-{}", r.start(), r.end())?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// What a destination matches, normalised.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Exactly this name.
    Exact(Box<str>),
    /// `*.suffix`: any name strictly below `suffix`, at any depth.
    Suffix(Box<str>),
    /// Labels with `*` inside them; `*` never crosses a dot. With
    /// `any_depth`, a leading `*.` allows one or more further labels in front.
    Glob {
        /// Whether the pattern started with `*.`.
        any_depth: bool,
        /// The normalised labels, without that leading `*.`.
        labels: Box<str>,
    },
    /// An IP range, for clients that dial literal addresses.
    Net(IpNet),
}

impl Pattern {
    /// The naive, obviously-correct match: the index in `ruleset.rs` must agree with it.
    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (Pattern::Exact(n), Host::Name(h)) => **n == **h,
            (Pattern::Suffix(s), Host::Name(h)) => is_strictly_below(h, s),
            (Pattern::Glob { any_depth, labels }, Host::Name(h)) => {
                glob_matches(labels, *any_depth, h)
            }
            (Pattern::Net(net), Host::Ip(ip)) => net.contains(ip),
            _ => false,
        }
    }

    /// The labels after the last one holding a wildcard: what a wildcard
    /// pattern is anchored on (`*.s3.amazonaws.com` -> `s3.amazonaws.com`).
    pub fn wildcard_tail(&self) -> Option<&str> {
        match self {
            Pattern::Suffix(s) => Some(s),
            Pattern::Glob { labels, .. } => {
                let last_wild = labels.rfind('*')?;
                labels[last_wild..]
                    .find('.')
                    .map(|dot| &labels[last_wild + dot + 1..])
            }
            _ => None,
        }
    }
}

/// `name` is `suffix` with one or more labels in front.
pub fn is_strictly_below(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() + 1
        && name.ends_with(suffix)
        && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

fn glob_matches(pattern: &str, any_depth: bool, host: &str) -> bool {
    let pat: Vec<&str> = pattern.split('.').collect();
    let labels: Vec<&str> = host.split('.').collect();
    let extra = match labels.len().checked_sub(pat.len()) {
        Some(0) if !any_depth => 0,
        Some(n) if any_depth && n >= 1 => n,
        _ => return false,
    };
    pat.iter()
        .zip(&labels[extra..])
        .all(|(p, l)| label_matches(p.as_bytes(), l.as_bytes()))
}

/// `*` matches any run of characters inside one label.
fn label_matches(pat: &[u8], label: &[u8]) -> bool {
    match pat.split_first() {
        None => label.is_empty(),
        Some((b'*', rest)) => (0..=label.len()).any(|i| label_matches(rest, &label[i..])),
        Some((c, rest)) => label.first() == Some(c) && label_matches(rest, &label[1..]),
    }
}

/// A problem with one destination string, with a hint on what to write instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    /// Which kind of problem (`check`'s code).
    pub code: Code,
    /// What is wrong.
    pub message: String,
    /// What to write instead, when there is an obvious fix.
    pub hint: Option<String>,
}

impl PatternError {
    fn new(code: Code, message: impl Into<String>, hint: impl Into<Option<String>>) -> Self {
        PatternError {
            code,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// Splits `host[:ports]` / `[v6][:ports]` and parses both halves. `ports`
/// is `None` when the destination names none (the caller picks the default).
pub fn parse_destination(text: &str) -> Result<(Pattern, Option<Ports>), PatternError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(PatternError::new(
            Code::BadDestination,
            "empty destination",
            "write a host name such as `api.example.com` or `api.example.com:443`".to_string(),
        ));
    }
    let (host, ports) = split_host_ports(text)?;
    let pattern = parse_pattern(host)?;
    let ports = ports.map(parse_ports).transpose()?;
    Ok((pattern, ports))
}

/// Whether a destination as written names its ports (`host:443`), rather
/// than taking the default ones; `true` for text that is not a destination.
/// Reads only the separator, not the host.
pub fn names_ports(text: &str) -> bool {
    split_host_ports(text.trim()).map_or(true, |(_, ports)| ports.is_some())
}

fn split_host_ports(text: &str) -> Result<(&str, Option<&str>), PatternError> {
    if text.starts_with('[') {
        let close = text.find(']').ok_or_else(|| {
            PatternError::new(
                Code::BadDestination,
                format!("`{text}` opens `[` without closing it"),
                "write IPv6 as `[2001:db8::/32]:443`".to_string(),
            )
        })?;
        let rest = &text[close + 1..];
        return match rest.strip_prefix(':') {
            Some(ports) => Ok((&text[..=close], Some(ports))),
            None if rest.is_empty() => Ok((&text[..=close], None)),
            None => Err(PatternError::new(
                Code::BadDestination,
                format!("unexpected `{rest}` after `]`"),
                "write IPv6 as `[2001:db8::/32]:443`".to_string(),
            )),
        };
    }
    match text.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Err(PatternError::new(
            Code::BadDestination,
            format!("`{text}` looks like an IPv6 address without brackets"),
            format!("write `[{text}]` or `[{text}]:443`"),
        )),
        Some((host, ports)) => Ok((host, Some(ports))),
        None => Ok((text, None)),
    }
}

fn parse_pattern(host: &str) -> Result<Pattern, PatternError> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = &inner[..inner.len() - 1];
        return match parse_net(inner) {
            Ok(net @ IpNet::V6(_)) => Ok(Pattern::Net(net)),
            Ok(IpNet::V4(_)) => Err(PatternError::new(
                Code::BadDestination,
                format!("`{host}`: brackets are for IPv6 only"),
                format!("write `{inner}`"),
            )),
            Err(e) => Err(PatternError::new(Code::BadCidr, e, None)),
        };
    }
    if host.contains('/') || host.parse::<IpAddr>().is_ok() {
        return parse_net(host)
            .map(Pattern::Net)
            .map_err(|e| PatternError::new(Code::BadCidr, e, None));
    }
    if host.contains('*') {
        return parse_wildcard(host);
    }
    match Host::parse(host) {
        Ok(Host::Name(n)) => Ok(Pattern::Exact(n)),
        Ok(Host::Ip(_)) => unreachable!("IP literals were handled above"),
        Err(HostError::NonCanonicalIpv4) => Err(PatternError::new(
            Code::BadDestination,
            format!("`{host}` is not a canonical IPv4 address"),
            "write dotted-quad form such as `203.0.113.7` or a CIDR such as `203.0.113.0/24`"
                .to_string(),
        )),
        Err(e) => Err(PatternError::new(
            Code::BadDestination,
            format!("`{host}`: {e}"),
            None,
        )),
    }
}

fn parse_wildcard(host: &str) -> Result<Pattern, PatternError> {
    let wildcard_hint = || {
        "use `*.example.com` (any name below it) or `*` inside one label such as `api-*.example.com`"
            .to_string()
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host == "*" {
        return Err(PatternError::new(
            Code::BadWildcard,
            "`*` alone would allow every destination",
            "list the names the workload needs; use `mode: report` to discover them".to_string(),
        ));
    }
    let (any_depth, rest) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if rest.contains("**") {
        return Err(PatternError::new(
            Code::BadWildcard,
            format!("`{host}`: `**` is not supported"),
            wildcard_hint(),
        ));
    }
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.last().is_some_and(|l| l.contains('*')) {
        return Err(PatternError::new(
            Code::BadWildcard,
            format!("`{host}`: a wildcard in the top-level label matches any registry"),
            wildcard_hint(),
        ));
    }
    let mut out = Vec::with_capacity(labels.len());
    for label in labels {
        let norm = if label.contains('*') {
            let lower = label.to_ascii_lowercase();
            let ok = lower
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_*".contains(&b));
            if !ok || lower.len() > super::host::MAX_LABEL_LEN {
                return Err(PatternError::new(
                    Code::BadWildcard,
                    format!("`{host}`: bad wildcard label `{label}`"),
                    wildcard_hint(),
                ));
            }
            lower
        } else {
            normalize_name(label).map_err(|e| {
                PatternError::new(
                    Code::BadDestination,
                    format!("`{host}`: {e}"),
                    wildcard_hint(),
                )
            })?
        };
        out.push(norm);
    }
    let labels = out.join(".");
    if any_depth && !labels.contains('*') {
        Ok(Pattern::Suffix(labels.into_boxed_str()))
    } else {
        Ok(Pattern::Glob {
            any_depth,
            labels: labels.into_boxed_str(),
        })
    }
}

fn parse_ports(text: &str) -> Result<Ports, PatternError> {
    let hint = || "ports are 1-65535: `host:443`, `host:443,80`, `host:8000-8100` or `host:*`";
    if text.trim() == "*" {
        return Ok(Ports::Any);
    }
    let port = |s: &str| -> Result<u16, PatternError> {
        let s = s.trim();
        match s.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) && !s.starts_with('0') && !s.starts_with('+') => {
                Ok(p as u16)
            }
            _ => Err(PatternError::new(
                Code::BadPort,
                format!("`{s}` is not a port"),
                hint().to_string(),
            )),
        }
    };
    let mut ranges = Vec::new();
    for item in text.split(',') {
        let range = match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(PatternError::new(
                        Code::BadPort,
                        format!("port range `{item}` is backwards"),
                        format!("write `{hi}-{lo}`"),
                    ));
                }
                lo..=hi
            }
            None => {
                let p = port(item)?;
                p..=p
            }
        };
        ranges.push(range);
    }
    Ok(Ports::Ranges(ranges))
}

/// Checks a `default_ports` entry.
pub fn valid_port(n: i64) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests;
