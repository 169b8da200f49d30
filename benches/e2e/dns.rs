//! The DNS server of the runs: the e2e tests' in-process hickory server,
//! answering `origin.test` and `origin2.test` with 127.0.0.1 only.

use std::net::{Ipv4Addr, SocketAddr};

#[path = "../../tests/e2e/support/dns.rs"]
#[allow(dead_code)]
mod test_dns;

pub use test_dns::TestDns;

/// The names the DNS server knows; everything else is NXDOMAIN.
pub const NAMES: [&str; 2] = ["origin.test", "origin2.test"];

/// TTL of the A answers, as a real zone would have: portcullis and Traffic Server
/// (whose only nameserver this is) cache each answer for a minute and ask again, so both
/// pay the same lookups. Squid reads the names from /etc/hosts instead (no lookups).
pub const TTL: u32 = 60;

/// Starts the server; it serves until the returned handle is dropped.
pub async fn start() -> Result<(SocketAddr, TestDns), String> {
    let dns = TestDns::start().await;
    // NODATA for AAAA is cached too, as a real server's SOA allows.
    dns.set_negative_ttl(TTL);
    for name in NAMES {
        dns.set_a(name, &[Ipv4Addr::LOCALHOST], TTL);
    }
    Ok((dns.addr(), dns))
}
