//! `IpGuard`: which addresses may be dialed, whatever name they came from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::IpNet;

/// The ranges the policy reference calls `default`: private, loopback, link-local
/// (cloud metadata 169.254.169.254, ECS task metadata 169.254.170.2),
/// carrier-grade NAT, benchmarking, multicast and reserved space, and their
/// IPv6 counterparts (site-local `fec0::/10` included: deprecated, but still
/// routed inside some networks). IPv6 forms that embed an IPv4 address are
/// not listed: [`canonical`] reduces them to that address first.
pub const DEFAULT_BLOCKED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
    "2001::/32",
];

/// The guarded ranges an allow rule's `allow_private` may open: private-use
/// IPv4 (RFC 1918), shared carrier-grade NAT space and IPv6 unique local
/// addresses, where cloud private endpoints live. Nothing else the guard
/// blocks (loopback, link-local, unspecified, multicast, ...) is ever opened
/// by a rule, whatever range it names.
pub const PRIVATE: &[&str] = &[
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
];

/// Addresses that hand out credentials or instance identity to whoever asks
/// from inside the host: never a destination, and never opened by
/// `allow_private` (some sit inside [`PRIVATE`] ranges).
pub const METADATA: &[(&str, &str)] = &[
    ("169.254.169.254", "cloud instance metadata"),
    ("169.254.170.2", "ECS task metadata and credentials"),
    ("169.254.170.23", "EKS Pod Identity credentials"),
    ("fd00:ec2::254", "EC2 instance metadata over IPv6"),
    ("fd00:ec2::23", "EKS Pod Identity credentials over IPv6"),
    ("100.100.100.200", "Alibaba Cloud instance metadata"),
];

/// Ranges an `allow_private` entry may not touch at all, with what they
/// are: `check` refuses a range that overlaps one (metadata addresses too).
const NEVER_PRIVATE: &[(&str, &str)] = &[
    ("0.0.0.0/8", "the unspecified \"this\" network"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local, where cloud metadata lives"),
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
];

/// Whether `allow_private` ranges `private` open `ip`: its canonical form
/// (see [`canonical`]) is in a [`PRIVATE`] range, is no [`METADATA`]
/// address, and one of `private` covers it.
pub fn opens_private(private: &[IpNet], ip: IpAddr) -> bool {
    if private.is_empty() {
        return false;
    }
    let judged = canonical(ip);
    static PARSED: LazyLock<(Vec<IpNet>, Vec<IpAddr>)> = LazyLock::new(|| {
        let private = PRIVATE.iter().map(|s| s.parse().expect("valid CIDR"));
        let metadata = METADATA.iter().map(|(s, _)| s.parse().expect("address"));
        (private.collect(), metadata.collect())
    });
    let (private_class, metadata) = &*PARSED;
    private_class.iter().any(|net| net.contains(&judged))
        && !metadata.contains(&judged)
        && private.iter().any(|net| net.contains(&judged))
}

/// Why `net` may not be an `allow_private` range: the link-local,
/// loopback, unspecified or metadata space it overlaps, named; `None` when
/// it touches none.
pub fn forbidden_private(net: &IpNet) -> Option<String> {
    let overlaps = |other: &IpNet| net.contains(other) || other.contains(net);
    let touched: Vec<(IpNet, &str)> = (NEVER_PRIVATE.iter())
        .map(|(s, what)| (s.parse().expect("NEVER_PRIVATE holds valid CIDRs"), *what))
        .filter(|(range, _)| overlaps(range))
        .collect();
    let mut found: Vec<String> = (touched.iter())
        .map(|(range, what)| format!("{range} ({what})"))
        .collect();
    // Metadata addresses, unless a range named already holds them.
    found.extend(METADATA.iter().filter_map(|(s, what)| {
        let ip: IpAddr = s.parse().expect("METADATA holds addresses");
        let named = touched.iter().any(|(range, _)| range.contains(&ip));
        (net.contains(&ip) && !named).then(|| format!("{ip} ({what})"))
    }));
    (!found.is_empty()).then(|| found.join(", "))
}

/// Blocked ranges minus the carve-outs of `allowed`.
#[derive(Clone, Debug)]
pub struct IpGuard {
    blocked: Vec<IpNet>,
    allowed: Vec<IpNet>,
}

impl Default for IpGuard {
    fn default() -> Self {
        IpGuard::new(default_blocked(), Vec::new())
    }
}

/// The `default` ranges, parsed.
pub fn default_blocked() -> Vec<IpNet> {
    DEFAULT_BLOCKED
        .iter()
        .map(|s| s.parse().expect("DEFAULT_BLOCKED holds valid CIDRs"))
        .collect()
}

impl IpGuard {
    /// A guard that refuses `blocked` except where `allowed` carves out.
    pub fn new(blocked: Vec<IpNet>, allowed: Vec<IpNet>) -> IpGuard {
        IpGuard { blocked, allowed }
    }

    /// True when the proxy may open a connection to `ip`.
    ///
    /// An IPv6 address that embeds an IPv4 one (see [`canonical`]) is judged
    /// by the IPv4 address, because that is where the packets end up. A range
    /// may name either form: the address is blocked when `blocked` covers
    /// either, unless `allowed` covers either.
    pub fn is_dialable(&self, ip: IpAddr) -> bool {
        let judged = canonical(ip);
        let covers = |nets: &[IpNet]| {
            nets.iter()
                .any(|net| net.contains(&ip) || net.contains(&judged))
        };
        covers(&self.allowed) || !covers(&self.blocked)
    }

    /// True when the proxy may open a connection to `ip` for an exchange
    /// whose allow rule carries the `allow_private` ranges `private`: the
    /// guard lets it through, or those ranges open it ([`opens_private`]).
    pub fn is_dialable_with(&self, ip: IpAddr, private: &[IpNet]) -> bool {
        self.is_dialable(ip) || opens_private(private, ip)
    }

    /// The ranges never dialed.
    pub fn blocked(&self) -> &[IpNet] {
        &self.blocked
    }

    /// The ranges carved out of `blocked`.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }
}

/// The address packets to `ip` end up at: an IPv6 address that embeds an
/// IPv4 one is reduced to it, every other address is returned as is. The IP
/// guard and the proxy's own-address check both compare in this form, so
/// that no spelling of an address is judged differently from the address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The IPv4 address an IPv6 address carries, for the forms that route to it:
/// IPv4-mapped `::ffff:0:0/96`, SIIT IPv4-translated `::ffff:0:0:0/96`,
/// IPv4-compatible `::/96` (but `::` and `::1`), NAT64 well-known
/// `64:ff9b::/96` and local-use `64:ff9b:1::/48` (the IPv4 address in the
/// last 32 bits, as a `/96` prefix inside it carries it), and 6to4
/// `2002::/16` (the IPv4 address in bits 16-47).
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low32 = Ipv4Addr::from(u128::from(v6) as u32);
    let mapped = s[..6] == [0, 0, 0, 0, 0, 0xffff];
    let translated = s[..6] == [0, 0, 0, 0, 0xffff, 0];
    let compatible = s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1);
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    let local_nat64 = s[..3] == [0x64, 0xff9b, 1];
    if mapped || translated || compatible || nat64 || local_nat64 {
        return Some(low32);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::from((u128::from(v6) >> 80) as u32));
    }
    None
}

/// Parses a CIDR or a bare address (taken as a single-host range), refusing
/// host bits set below the prefix so that `10.1.2.3/8` is not silently `10.0.0.0/8`.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address or CIDR range"))?;
    if net.network() != net.addr() {
        return Err(format!(
            "`{s}` has host bits set below the prefix; write `{}`",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_guard_blocks_every_listed_range() {
        let guard = IpGuard::default();
        let blocked = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "169.254.170.2",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.170",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            // embedded IPv4 forms of blocked addresses
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.1.2.3",
            "64:ff9b::192.168.0.1",
            "2002:a9fe:a9fe::1",
            "2002:0a00:0001::",
            "2002:7f00:1::1",
        ];
        for s in blocked {
            assert!(!guard.is_dialable(ip(s)), "{s} should be blocked");
        }
        let open = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "192.0.1.1",
            "198.17.255.255",
            "203.0.113.7",
            "223.255.255.255",
            "2606:4700::1111",
            "2001:1::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ];
        for s in open {
            assert!(guard.is_dialable(ip(s)), "{s} should be dialable");
        }
    }

    #[test]
    fn allowed_carves_out_of_blocked_including_embedded_forms() {
        let guard = IpGuard::new(default_blocked(), vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(guard.is_dialable(ip("127.0.0.1")));
        assert!(guard.is_dialable(ip("::ffff:127.0.0.1")));
        assert!(!guard.is_dialable(ip("::1")));
        let v6 = IpGuard::new(default_blocked(), vec!["::1/128".parse().unwrap()]);
        assert!(v6.is_dialable(ip("::1")));
        assert!(!v6.is_dialable(ip("::")));
        assert!(!v6.is_dialable(ip("127.0.0.1")));
        assert!(!guard.is_dialable(ip("169.254.169.254")));
    }

    #[test]
    fn canonical_reduces_every_embedding_form_to_its_ipv4() {
        let cases = [
            ("IPv4 stays", "192.0.2.1", "192.0.2.1"),
            ("plain IPv6 stays", "2606:4700::1111", "2606:4700::1111"),
            ("IPv6 unspecified stays", "::", "::"),
            ("IPv6 loopback stays", "::1", "::1"),
            ("IPv4-mapped", "::ffff:127.0.0.1", "127.0.0.1"),
            ("SIIT IPv4-translated", "::ffff:0:127.0.0.1", "127.0.0.1"),
            ("IPv4-compatible", "::10.1.2.3", "10.1.2.3"),
            ("NAT64 well-known", "64:ff9b::7f00:1", "127.0.0.1"),
            ("NAT64 local-use", "64:ff9b:1::a9fe:a9fe", "169.254.169.254"),
            (
                "NAT64 local-use, another /96 inside the /48",
                "64:ff9b:1:abcd::7f00:1",
                "127.0.0.1",
            ),
            ("6to4", "2002:7f00:1::1", "127.0.0.1"),
            (
                "next to NAT64 well-known",
                "64:ff9c::7f00:1",
                "64:ff9c::7f00:1",
            ),
            (
                "next to NAT64 local-use",
                "64:ff9b:2::7f00:1",
                "64:ff9b:2::7f00:1",
            ),
            ("next to mapped", "::fffe:7f00:1", "::fffe:7f00:1"),
        ];
        for (name, input, want) in cases {
            assert_eq!(canonical(ip(input)), ip(want), "{name}: {input}");
        }
    }

    #[test]
    fn default_guard_covers_the_0_2_additions() {
        let guard = IpGuard::default();
        let cases = [
            ("site-local fec0::/10", "fec0::1", false),
            ("site-local, top of range", "feff:ffff::1", false),
            ("SIIT of metadata", "::ffff:0:a9fe:a9fe", false),
            ("SIIT of loopback", "::ffff:0:127.0.0.1", false),
            ("SIIT of a public address", "::ffff:0:8.8.8.8", true),
            ("local-use NAT64 of loopback", "64:ff9b:1::7f00:1", false),
            ("local-use NAT64 of private", "64:ff9b:1:0:0:0:a00:1", false),
            (
                "local-use NAT64 of a public address",
                "64:ff9b:1::808:808",
                true,
            ),
            ("just above site-local", "ff00::1", false),
            ("global unicast", "2606:4700::1111", true),
        ];
        for (name, addr, dialable) in cases {
            assert_eq!(guard.is_dialable(ip(addr)), dialable, "{name}: {addr}");
        }
    }

    #[test]
    fn ranges_may_name_either_form_of_an_embedded_address() {
        let net = |s: &str| -> IpNet { s.parse().unwrap() };
        let cases = [
            (
                "a blocked NAT64 prefix blocks what it embeds",
                IpGuard::new(vec![net("64:ff9b::/96")], vec![]),
                "64:ff9b::808:808",
                false,
            ),
            (
                "the IPv4 range blocks the NAT64 form",
                IpGuard::new(vec![net("8.8.8.0/24")], vec![]),
                "64:ff9b::808:808",
                false,
            ),
            (
                "an IPv4 carve-out opens the mapped form",
                IpGuard::new(default_blocked(), vec![net("127.0.0.0/8")]),
                "::ffff:127.0.0.1",
                true,
            ),
            (
                "an IPv6 carve-out opens its own range only",
                IpGuard::new(default_blocked(), vec![net("::1/128")]),
                "::ffff:127.0.0.1",
                false,
            ),
        ];
        for (name, guard, addr, dialable) in cases {
            assert_eq!(guard.is_dialable(ip(addr)), dialable, "{name}: {addr}");
        }
    }

    #[test]
    fn parse_net_is_strict() {
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert!(parse_net("10.1.2.3/8").unwrap_err().contains("10.0.0.0/8"));
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
    }

    #[test]
    fn allow_private_opens_only_guarded_private_addresses_in_its_ranges() {
        let guard = IpGuard::default();
        let net = |s: &str| -> IpNet { s.parse().unwrap() };
        // Wider than check allows: the guard still opens only private space.
        let wide = [net("0.0.0.0/0"), net("::/0")];
        let cases = [
            ("RFC 1918", "10.20.0.5", true),
            ("CGNAT", "100.64.1.1", true),
            ("unique local", "fd00:1::5", true),
            ("mapped private", "::ffff:192.168.1.1", true),
            ("loopback", "127.0.0.1", false),
            ("IPv6 loopback", "::1", false),
            ("link-local", "169.254.1.1", false),
            ("instance metadata", "169.254.169.254", false),
            (
                "metadata over IPv6, inside fc00::/7",
                "fd00:ec2::254",
                false,
            ),
            ("Pod Identity over IPv6", "fd00:ec2::23", false),
            ("Alibaba metadata, inside CGNAT", "100.100.100.200", false),
            ("unspecified", "0.0.0.0", false),
            ("multicast", "224.0.0.1", false),
            ("benchmarking", "198.18.0.1", false),
        ];
        for (name, addr, want) in cases {
            assert_eq!(
                guard.is_dialable_with(ip(addr), &wide),
                want,
                "{name}: {addr}"
            );
        }
        let narrow = [net("10.20.0.0/16")];
        assert!(guard.is_dialable_with(ip("10.20.255.1"), &narrow));
        assert!(!guard.is_dialable_with(ip("10.21.0.1"), &narrow));
        assert!(!guard.is_dialable_with(ip("10.20.0.5"), &[]));
    }

    #[test]
    fn forbidden_private_names_what_a_range_touches() {
        let net = |s: &str| -> IpNet { s.parse().unwrap() };
        assert_eq!(forbidden_private(&net("10.0.0.0/8")), None);
        assert_eq!(forbidden_private(&net("fd00:1::/64")), None);
        let cases = [
            ("169.254.170.23/32", "169.254.0.0/16 (link-local"),
            ("127.0.0.0/8", "127.0.0.0/8 (loopback)"),
            ("::/0", "::1/128 (loopback)"),
            (
                "fc00::/7",
                "fd00:ec2::254 (EC2 instance metadata over IPv6)",
            ),
            (
                "100.100.0.0/16",
                "100.100.100.200 (Alibaba Cloud instance metadata)",
            ),
            ("0.0.0.0/0", "0.0.0.0/8"),
        ];
        for (range, want) in cases {
            let got = forbidden_private(&net(range)).unwrap_or_default();
            assert!(got.contains(want), "{range}: {got}");
        }
    }
}
