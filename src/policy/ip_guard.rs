//! `IpGuard`: which addresses may be dialed, whatever name they came from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The ranges SPEC section 2 calls `default`: private, loopback, link-local
/// (cloud metadata 169.254.169.254, ECS task metadata 169.254.170.2),
/// carrier-grade NAT, benchmarking, multicast and reserved space, and their
/// IPv6 counterparts.
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
    "ff00::/8",
    "2001::/32",
];

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
    pub fn new(blocked: Vec<IpNet>, allowed: Vec<IpNet>) -> IpGuard {
        IpGuard { blocked, allowed }
    }

    /// True when the proxy may open a connection to `ip`.
    ///
    /// An IPv6 address that embeds an IPv4 one (IPv4-mapped, IPv4-compatible,
    /// NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged by the IPv4 address,
    /// because that is where the packets end up.
    pub fn is_dialable(&self, ip: IpAddr) -> bool {
        let allowed = |ip: &IpAddr| self.allowed.iter().any(|net| net.contains(ip));
        if allowed(&ip) {
            return true;
        }
        let judged = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        !self.blocked.iter().any(|net| net.contains(&judged)) || allowed(&judged)
    }

    pub fn blocked(&self) -> &[IpNet] {
        &self.blocked
    }

    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }
}

/// The IPv4 address an IPv6 address carries, for the forms that route to it.
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low32 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    // ::a.b.c.d (deprecated IPv4-compatible); :: and ::1 are IPv6's own.
    let compatible = s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1);
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if mapped || compatible || nat64 {
        return Some(low32);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
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
    fn parse_net_is_strict() {
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert!(parse_net("10.1.2.3/8").unwrap_err().contains("10.0.0.0/8"));
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
    }
}
