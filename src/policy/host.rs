//! `Host`: a request's destination, normalised once into a valid DNS name or a canonical IP.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use idna::AsciiDenyList;
use idna::uts46::{DnsLength, Hyphens, Uts46};

/// Longest name we accept, in octets, without the trailing dot (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// A destination host as the policy sees it.
///
/// A `Name` is ASCII lowercase, has no trailing dot, is punycode where the
/// input was Unicode, and consists only of valid labels. An `Ip` came from a
/// canonical literal: a dotted quad or a bracketed IPv6 address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A normalised host name.
    Name(Box<str>),
    /// A literal IP address.
    Ip(IpAddr),
}

/// Why a host string is not a destination we will look at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The host is empty.
    #[error("empty host name")]
    Empty,
    /// A label is empty (e.g. `a..b`).
    #[error("host name has an empty label")]
    EmptyLabel,
    /// A label over 63 characters.
    #[error("host name label longer than 63 characters")]
    LabelTooLong,
    /// A name over 253 characters.
    #[error("host name longer than 253 characters")]
    NameTooLong,
    /// A character no host name label may hold.
    #[error("host name contains a character outside letters, digits, '-' and '_'")]
    BadCharacter,
    /// Unicode that IDNA (UTS 46) rejects.
    #[error("host name is not valid IDNA (UTS 46)")]
    Idna,
    /// An IPv4 address in a form other than the dotted quad (octal, hex, short).
    #[error("IPv4 address not in canonical dotted-quad form")]
    NonCanonicalIpv4,
    /// An unparsable or zoned IPv6 literal.
    #[error("bad IPv6 literal (write it as [2001:db8::1], without a zone)")]
    BadIpv6,
    /// A port that is not 1-65535 in plain decimal.
    #[error("bad port (1-65535, decimal, no leading zero or sign)")]
    BadPort,
}

/// Splits `host[:port]` or `[v6][:port]` as written in a CONNECT target, a
/// `Host` header or an absolute URI. The port is `None` when absent; a port
/// must be plain decimal 1-65535 (`0443`, `+443`, `-1` and `65536` are refused).
pub fn split_host_port(input: &str) -> Result<(&str, Option<u16>), HostError> {
    let (host, port) = if input.starts_with('[') {
        let end = input.find(']').ok_or(HostError::BadIpv6)?;
        match &input[end + 1..] {
            "" => (&input[..=end], None),
            rest => (
                &input[..=end],
                Some(rest.strip_prefix(':').ok_or(HostError::BadIpv6)?),
            ),
        }
    } else {
        match input.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => return Err(HostError::BadIpv6),
            Some((h, p)) => (h, Some(p)),
            None => (input, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && !p.starts_with(['0', '+']) => Some(n),
            _ => return Err(HostError::BadPort),
        },
    };
    Ok((host, port))
}

impl Host {
    /// Parses a host as it appears in a request: a name, a dotted quad, or a
    /// bracketed IPv6 literal. Anything that looks like a number but is not a
    /// canonical dotted quad (`2130706433`, `0x7f.1`, `0177.0.0.1`) is refused:
    /// resolvers and browsers disagree on what those mean.
    pub fn parse(input: &str) -> Result<Host, HostError> {
        if let Some(inner) = input.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(HostError::BadIpv6)?;
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| HostError::BadIpv6);
        }
        let trimmed = input.strip_suffix('.').unwrap_or(input);
        if trimmed.is_empty() {
            return Err(HostError::Empty);
        }
        if looks_numeric(trimmed) {
            // A trailing dot is tolerated on names only: "1.2.3.4." is not canonical.
            return input
                .parse::<Ipv4Addr>()
                .map(|ip| Host::Ip(IpAddr::V4(ip)))
                .map_err(|_| HostError::NonCanonicalIpv4);
        }
        let name = normalize_name(trimmed)?;
        // UTS 46 maps some characters to nothing or to digits ("2\u{ad}" ->
        // "2", fullwidth "１２７.０.０.１"): a numeric result is an odd IP spelling.
        if looks_numeric(&name) {
            return Err(HostError::NonCanonicalIpv4);
        }
        Ok(Host::Name(name.into_boxed_str()))
    }

    /// The name, if this host is one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Name(n) => Some(n),
            Host::Ip(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// The WHATWG URL rule: when the last label is a number (decimal, or `0x`
/// hex), the whole host is meant as an IPv4 address.
fn looks_numeric(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or(host);
    if last.is_empty() {
        return false;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let lower = last.as_bytes();
    lower.len() >= 2
        && lower[0] == b'0'
        && (lower[1] | 0x20) == b'x'
        && lower[2..].iter().all(|b| b.is_ascii_hexdigit())
}

/// Lowercases, applies UTS 46 (punycode) and validates a name without its
/// trailing dot. The common all-ASCII case skips the IDNA machinery.
pub(crate) fn normalize_name(name: &str) -> Result<String, HostError> {
    if let Some(simple) = simple_ascii(name) {
        return simple;
    }
    if name.is_ascii() && !name.bytes().all(name_char) {
        return Err(HostError::BadCharacter);
    }
    via_idna(name)
}

/// A byte a name may hold before lowercasing.
fn name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

/// UTS 46 maps case and width, so "ＡＰＩ.example.com" and "API.example.com"
/// meet at "api.example.com"; '_' is let through (SRV-style names are real).
fn via_idna(name: &str) -> Result<String, HostError> {
    const DENY: AsciiDenyList = AsciiDenyList::new(true, "%#/:<>?@[\\]^|*!\"$&'()+,;=`{}~");
    let out = Uts46::new()
        .to_ascii(name.as_bytes(), DENY, Hyphens::Allow, DnsLength::Ignore)
        .map_err(|_| HostError::Idna)?
        .into_owned();
    validate_name(&out)?;
    Ok(out)
}

/// A name of letters, digits, `-`, `_` and dots with no `xn--` label:
/// lowercased and checked in one pass, as `validate_name` would check it.
/// `None` for anything else, which the caller sorts out.
fn simple_ascii(name: &str) -> Option<Result<String, HostError>> {
    let mut out = Vec::with_capacity(name.len());
    let mut label_start = 0;
    let mut first_error = None;
    for (i, &b) in name.as_bytes().iter().enumerate() {
        let c = b.to_ascii_lowercase();
        match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {
                // An `xn--` label is punycode, which IDNA checks.
                if c == b'-' && i == label_start + 3 && out[label_start..] == *b"xn-" {
                    return None;
                }
            }
            b'.' => {
                first_error = first_error.or(label_error(i - label_start));
                label_start = i + 1;
            }
            _ => return None,
        }
        out.push(c);
    }
    first_error = first_error.or(label_error(name.len() - label_start));
    let verdict = if name.is_empty() {
        Err(HostError::Empty)
    } else if name.len() > MAX_NAME_LEN {
        Err(HostError::NameTooLong)
    } else if let Some(e) = first_error {
        Err(e)
    } else {
        // Only ASCII letters, digits, '-', '_' and '.' were pushed.
        Ok(String::from_utf8(out).expect("ASCII"))
    };
    Some(verdict)
}

/// What is wrong with a label of `len` octets, if anything.
fn label_error(len: usize) -> Option<HostError> {
    match len {
        0 => Some(HostError::EmptyLabel),
        n if n > MAX_LABEL_LEN => Some(HostError::LabelTooLong),
        _ => None,
    }
}

/// Checks an already lowercased ASCII name against the DNS rules.
pub(crate) fn validate_name(name: &str) -> Result<(), HostError> {
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(HostError::NameTooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(HostError::BadCharacter);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Result<String, HostError> {
        Host::parse(s).map(|h| h.to_string())
    }

    #[test]
    fn names_are_normalised() {
        let cases = [
            ("api.stripe.com", "api.stripe.com"),
            ("API.Stripe.COM", "api.stripe.com"),
            ("api.stripe.com.", "api.stripe.com"),
            ("_dmarc.example.com", "_dmarc.example.com"),
            ("bücher.de", "xn--bcher-kva.de"),
            ("BÜCHER.de", "xn--bcher-kva.de"),
            ("XN--BCHER-KVA.de", "xn--bcher-kva.de"),
            ("ｅｘａｍｐｌｅ.com", "example.com"),
            ("localhost", "localhost"),
            ("1.2.3.4.example.com", "1.2.3.4.example.com"),
            ("0x10.example.com", "0x10.example.com"),
        ];
        for (input, want) in cases {
            assert_eq!(name(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{}.com", ["abcdefghi"; 26].join("."));
        let cases: Vec<(&str, HostError)> = vec![
            ("", HostError::Empty),
            (".", HostError::Empty),
            ("example..com", HostError::EmptyLabel),
            ("example.com..", HostError::EmptyLabel),
            (".example.com", HostError::EmptyLabel),
            (&long_label, HostError::LabelTooLong),
            (&long_name, HostError::NameTooLong),
            ("exa mple.com", HostError::BadCharacter),
            ("example.com:443", HostError::BadCharacter),
            ("ex*ample.com", HostError::BadCharacter),
            ("user@example.com", HostError::BadCharacter),
            ("xn--zz.com", HostError::Idna),
        ];
        for (input, want) in cases {
            let got = Host::parse(input);
            assert!(got.is_err(), "{input:?} parsed as {got:?}");
            if want != HostError::BadCharacter && want != HostError::Idna {
                assert_eq!(got, Err(want), "{input:?}");
            }
        }
    }

    #[test]
    fn only_canonical_ip_literals_are_ips() {
        assert_eq!(
            Host::parse("203.0.113.7"),
            Ok(Host::Ip("203.0.113.7".parse().unwrap()))
        );
        assert_eq!(
            Host::parse("[2001:db8::1]"),
            Ok(Host::Ip("2001:db8::1".parse().unwrap()))
        );
        for odd in [
            "2130706433",
            "0x7f.1",
            "0x7F000001",
            "0177.0.0.1",
            "1.2.3.010",
            "127.1",
            "127.0.1",
            "1.2.3.4.",
            "256.1.1.1",
            "1.2.3.4.5",
            "example.0x1",
            "example.123",
        ] {
            assert_eq!(Host::parse(odd), Err(HostError::NonCanonicalIpv4), "{odd}");
        }
        // Found by the `host` fuzz target: IDNA mapping that yields digits.
        for odd in [
            "2\u{ad}",
            "127\u{ad}.0.0.1",
            "１２７.０.０.１",
            "example.1\u{ad}",
        ] {
            assert_eq!(
                Host::parse(odd),
                Err(HostError::NonCanonicalIpv4),
                "{odd:?}"
            );
        }
        for odd in ["[fe80::1%eth0]", "[1.2.3.4]", "[::1", "[example.com]"] {
            assert_eq!(Host::parse(odd), Err(HostError::BadIpv6), "{odd}");
        }
    }

    #[test]
    fn host_and_port_split() {
        assert_eq!(
            split_host_port("api.stripe.com:443"),
            Ok(("api.stripe.com", Some(443)))
        );
        assert_eq!(
            split_host_port("api.stripe.com"),
            Ok(("api.stripe.com", None))
        );
        assert_eq!(split_host_port("[::1]:8443"), Ok(("[::1]", Some(8443))));
        assert_eq!(split_host_port("[::1]"), Ok(("[::1]", None)));
        for bad in [
            "h:0", "h:65536", "h:-1", "h:+443", "h:0443", "h:", "h:x", "::1:443", "[::1]x", "[::1",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unbracketed_ipv6_is_not_a_name() {
        assert!(Host::parse("2001:db8::1").is_err());
    }
}

#[cfg(test)]
mod one_pass {
    use super::*;

    /// The four-pass normalisation the one-pass version replaced: the oracle.
    fn reference(name: &str) -> Result<String, HostError> {
        let ascii_simple = name.bytes().all(name_char);
        let ace = |name: &str| {
            name.split('.')
                .any(|l| l.len() >= 4 && l[..4].eq_ignore_ascii_case("xn--"))
        };
        if ascii_simple && !ace(name) {
            let out = name.to_ascii_lowercase();
            validate_name(&out)?;
            Ok(out)
        } else if !ascii_simple && name.is_ascii() {
            Err(HostError::BadCharacter)
        } else {
            via_idna(name)
        }
    }

    #[test]
    fn edges_agree_with_the_reference() {
        let long_label = "a".repeat(64);
        let long_name = format!("{}.com", "abcdefghi.".repeat(25));
        for name in [
            "",
            ".",
            "a..b",
            "a.",
            ".a",
            "API.Example.COM",
            "xn--bcher-kva.example",
            "XN--bcher-kva.example",
            "xn--.example",
            "xn-a.example",
            "a.xn--zz",
            "a b.example",
            "a%b.xn--bcher-kva",
            "bücher.example",
            "_srv._tcp.example.com",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert_eq!(normalize_name(name), reference(name), "{name:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_name_agrees_with_the_reference(name in "[a-zA-Z0-9._ %é-]{0,80}|([a-zA-Z0-9-]{0,70}\\.){0,5}[xX][nN]--[a-z0-9-]{0,10}") {
            proptest::prop_assert_eq!(normalize_name(&name), reference(&name));
        }
    }
}
