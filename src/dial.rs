//! Resolve, guard, dial: turn an allowed destination into a connected upstream socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};

use crate::policy::ip_guard::canonical;
use crate::policy::{Host, IpGuard, Reason};
use crate::resolve::{Answers, DnsError, Filtered, Resolver, filter};
use crate::telemetry::diag::RateLimit;
use crate::telemetry::metrics::{ConnectResult, Metrics};

/// A connected upstream.
pub(crate) struct Upstream {
    pub stream: TcpStream,
    pub addr: SocketAddr,
}

/// Turns allowed destinations into connected upstream sockets.
pub(crate) struct Dialer {
    resolver: Resolver,
    /// The proxy's own listening addresses, never dialed.
    own_addrs: Vec<SocketAddr>,
    /// `--connect-timeout`, for all the addresses of one destination.
    connect_timeout: Duration,
    /// Times dials, successful or not (`upstream_connect_seconds`).
    metrics: Arc<Metrics>,
}

impl Dialer {
    pub(crate) fn new(
        resolver: Resolver,
        own_addrs: Vec<SocketAddr>,
        connect_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Dialer {
        Dialer {
            resolver,
            own_addrs,
            connect_timeout,
            metrics,
        }
    }

    /// Resolves `host` itself (never trusting an address from the client), drops
    /// every answer `guard` or the proxy's own addresses rule out, and tries
    /// the rest in order within `--connect-timeout`.
    pub(crate) async fn dial(
        &self,
        guard: &IpGuard,
        host: &Host,
        port: u16,
    ) -> Result<Upstream, Reason> {
        let answers = match host {
            Host::Ip(ip) => Answers {
                addrs: vec![*ip],
                failed: None,
            },
            Host::Name(name) => self.resolver.lookup(name).await.map_err(|e| {
                tracing::debug!(host = %name, error = %e, "lookup failed");
                match e {
                    DnsError::InvalidName(_) => Reason::BadRequest,
                    _ => Reason::DnsError,
                }
            })?,
        };
        let usable = filter(answers.addrs, |ip| {
            guard.is_dialable(ip) && !self.is_own_addr(SocketAddr::new(ip, port))
        });
        if usable.dialable.is_empty() {
            tracing::debug!(%host, blocked = ?usable.blocked, failed = ?answers.failed, "nothing dialable");
            return Err(unusable_reason(&usable, answers.failed.as_deref()));
        }
        let started = Instant::now();
        let dialed =
            tokio::time::timeout(self.connect_timeout, connect_first(&usable.dialable, port)).await;
        let (result, ended) = match dialed {
            Ok(Ok(upstream)) => (Ok(upstream), ConnectResult::Ok),
            Ok(Err((reason, ended))) => (Err(reason), ended),
            Err(_) => (Err(Reason::ConnectTimeout), ConnectResult::Timeout),
        };
        self.metrics
            .upstream_connect(&host.to_string(), ended, started.elapsed());
        result
    }

    /// Whether dialing `addr` would reach one of the proxy's own listeners (see [`is_own`]).
    pub(crate) fn is_own_addr(&self, addr: SocketAddr) -> bool {
        is_own(&self.own_addrs, addr, is_local)
    }
}

/// Tries each of `ips` in turn; the first that accepts is the upstream. A failure
/// says how it ended for `upstream_connect_seconds`: refused by every address, or not.
async fn connect_first(ips: &[IpAddr], port: u16) -> Result<Upstream, (Reason, ConnectResult)> {
    let mut last = Reason::ConnectError;
    let mut all_refused = true;
    for ip in ips {
        let addr = SocketAddr::new(*ip, port);
        match connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(Upstream { stream, addr });
            }
            Err(e) if crate::listener::is_fd_exhaustion(&e) => {
                static LIMIT: RateLimit = RateLimit::new();
                if let Some(suppressed) = LIMIT.allow() {
                    tracing::warn!(%addr, suppressed, "out of file descriptors dialing upstream");
                }
                return Err((Reason::Overloaded, ConnectResult::Error));
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "connect failed");
                last = Reason::ConnectError;
                all_refused &= e.kind() == std::io::ErrorKind::ConnectionRefused;
            }
        }
    }
    let ended = match all_refused {
        true => ConnectResult::Refused,
        false => ConnectResult::Error,
    };
    Err((last, ended))
}

/// Why nothing could be dialed: `blocked_ip` only when every lookup succeeded
/// and the guard refused every answer; with a lookup failed (upstream or
/// locally), the answer is incomplete and the reason is `dns_error`.
fn unusable_reason(usable: &Filtered, failed: Option<&str>) -> Reason {
    if usable.all_blocked() && failed.is_none() {
        Reason::BlockedIp
    } else {
        Reason::DnsError
    }
}

/// Whether dialing `addr` would reach one of the listeners bound at `own`.
///
/// Both sides are compared in [`canonical`] form, so `::ffff:127.0.0.1`,
/// `64:ff9b::7f00:1` or `2002:7f00:1::` are 127.0.0.1 here as in the IP
/// guard, and the unspecified address is where `connect(2)` takes it: to
/// loopback. A listener on a specific address is reached at that address
/// and port only; a wildcard listener (`0.0.0.0`, `::`) at its port on every
/// address `is_local` reports (of either family: a `::` listener takes IPv4
/// too, and over-refusing a local port costs nothing).
pub(crate) fn is_own(
    own: &[SocketAddr],
    addr: SocketAddr,
    is_local: impl Fn(IpAddr) -> bool,
) -> bool {
    let dest = match canonical(addr.ip()) {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    (own.iter().filter(|l| l.port() == addr.port())).any(|l| match canonical(l.ip()) {
        listen if listen.is_unspecified() => is_local(dest),
        listen => listen == dest,
    })
}

/// Whether `ip` (canonical) belongs to this host: loopback, or an address a
/// socket can be bound to, i.e. one of a local interface's. Asking the
/// kernel at the moment of the dial sees interfaces that came and went since
/// start-up; it runs only for a destination at a wildcard listener's port.
/// Any error but "address not available" counts as local: when unsure, the
/// address is not dialed.
pub(crate) fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || bindable(ip)
}

fn bindable(ip: IpAddr) -> bool {
    match std::net::UdpSocket::bind(SocketAddr::new(ip, 0)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AddrNotAvailable,
    }
}

/// Connects to `addr`. A loopback peer gets Reno before the handshake, like
/// loopback clients (README "Decisions"): switched afterwards, a pacing
/// algorithm such as BBR would already have turned the socket's pacing on.
async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if crate::listener::is_loopback(addr.ip()) {
        let _ = socket2::SockRef::from(&socket).set_tcp_congestion(b"reno");
    }
    socket.connect(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocked_ip_only_when_every_lookup_succeeded() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            (
                "all guarded, both lookups answered",
                vec![ip("::1")],
                None,
                Reason::BlockedIp,
            ),
            (
                "A failed, AAAA guarded",
                vec![ip("::1")],
                Some("SERVFAIL"),
                Reason::DnsError,
            ),
            (
                "AAAA failed locally, A guarded",
                vec![ip("127.0.0.1")],
                Some("Too many open files"),
                Reason::DnsError,
            ),
            ("no answers at all", vec![], None, Reason::DnsError),
        ];
        for (name, blocked, failed, want) in cases {
            let usable = Filtered {
                dialable: vec![],
                blocked,
            };
            assert_eq!(unusable_reason(&usable, failed), want, "{name}");
        }
    }

    #[test]
    fn own_listeners_are_recognised_in_every_form() {
        // Local here: loopback and 192.0.2.2 (a pretend interface address).
        let local = |ip: IpAddr| ip.is_loopback() || ip == "192.0.2.2".parse::<IpAddr>().unwrap();
        let specific = [addr("127.0.0.1:3128"), addr("127.0.0.1:9090")];
        let wildcard = [addr("0.0.0.0:3128"), addr("[::]:9090")];
        let cases: [(&str, &[SocketAddr], &str, bool); 20] = [
            ("same address and port", &specific, "127.0.0.1:3128", true),
            ("admin port", &specific, "127.0.0.1:9090", true),
            ("IPv4-mapped", &specific, "[::ffff:127.0.0.1]:9090", true),
            ("SIIT", &specific, "[::ffff:0:127.0.0.1]:9090", true),
            (
                "NAT64 well-known",
                &specific,
                "[64:ff9b::7f00:1]:3128",
                true,
            ),
            (
                "NAT64 local-use",
                &specific,
                "[64:ff9b:1::7f00:1]:3128",
                true,
            ),
            ("6to4", &specific, "[2002:7f00:1::]:3128", true),
            ("IPv4-compatible", &specific, "[::127.0.0.1]:3128", true),
            (
                "unspecified dials loopback",
                &specific,
                "0.0.0.0:3128",
                true,
            ),
            ("other port", &specific, "127.0.0.1:3129", false),
            ("other loopback address", &specific, "127.0.0.2:3128", false),
            (
                "IPv6 loopback, IPv4 listener",
                &specific,
                "[::1]:3128",
                false,
            ),
            ("wildcard: loopback", &wildcard, "127.0.0.9:3128", true),
            (
                "wildcard: mapped loopback",
                &wildcard,
                "[::ffff:127.0.0.1]:9090",
                true,
            ),
            ("wildcard: IPv6 loopback", &wildcard, "[::1]:3128", true),
            (
                "wildcard: interface address",
                &wildcard,
                "192.0.2.2:3128",
                true,
            ),
            (
                "wildcard: NAT64 of interface",
                &wildcard,
                "[64:ff9b::c000:202]:9090",
                true,
            ),
            ("wildcard: unspecified", &wildcard, "[::]:3128", true),
            (
                "wildcard: remote address at its port",
                &wildcard,
                "203.0.113.7:3128",
                false,
            ),
            (
                "wildcard: local address, other port",
                &wildcard,
                "192.0.2.2:443",
                false,
            ),
        ];
        for (name, own, dest, want) in cases {
            assert_eq!(is_own(own, addr(dest), local), want, "{name}: {dest}");
        }
    }

    #[test]
    fn local_addresses_are_asked_of_the_kernel() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(is_local(
            "::ffff:127.0.0.1".parse::<IpAddr>().map(canonical).unwrap()
        ));
        // TEST-NET-2: on no interface of a test machine.
        assert!(!is_local("198.51.100.1".parse().unwrap()));
    }
}
