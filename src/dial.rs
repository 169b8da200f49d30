//! Resolve, guard, dial: turn an allowed destination into a connected upstream socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::net::{TcpSocket, TcpStream};

use crate::policy::ip_guard::canonical;
use crate::policy::{Host, IpGuard, Reason};
use crate::resolve::{Answers, DnsError, Filtered, LookupFailure, Resolver, filter};
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
    /// Times every dial, by how it ended (`upstream_connect_seconds`).
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
    /// the rest in order within `--connect-timeout`. `private` are the
    /// `allow_private` ranges of the rule that allowed the exchange: guarded
    /// private addresses in them pass (see [`IpGuard::is_dialable_with`]).
    pub(crate) async fn dial(
        &self,
        guard: &IpGuard,
        private: &[IpNet],
        host: &Host,
        port: u16,
    ) -> Result<Upstream, DialError> {
        let answers = match host {
            Host::Ip(ip) => Answers {
                addrs: vec![*ip],
                failed: None,
            },
            Host::Name(name) => self.resolver.lookup(name).await.map_err(|e| {
                tracing::debug!(host = %name, error = %e, "lookup failed");
                DialError::Dns(e)
            })?,
        };
        let usable = filter(answers.addrs, |ip| {
            guard.is_dialable_with(ip, private) && !self.is_own_addr(SocketAddr::new(ip, port))
        });
        if usable.dialable.is_empty() {
            tracing::debug!(%host, blocked = ?usable.blocked, failed = ?answers.failed, "nothing dialable");
            return Err(unusable(usable, answers.failed));
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let result = connect_first(&usable.dialable, port, deadline, self.connect_timeout).await;
        self.metrics.upstream_connect(
            &host.to_string(),
            connect_result(&result),
            started.elapsed(),
        );
        result
    }

    /// The addresses the proxy's listeners are bound to.
    pub(crate) fn own_ips(&self) -> Vec<IpAddr> {
        self.own_addrs.iter().map(SocketAddr::ip).collect()
    }

    /// Whether dialing `addr` would reach one of the proxy's own listeners (see [`is_own`]).
    pub(crate) fn is_own_addr(&self, addr: SocketAddr) -> bool {
        is_own(&self.own_addrs, addr, is_local)
    }
}

/// Tries each of `ips` in turn until `deadline` (`--connect-timeout`,
/// `budget`, from the first try); the first that accepts is the upstream.
async fn connect_first(
    ips: &[IpAddr],
    port: u16,
    deadline: tokio::time::Instant,
    budget: Duration,
) -> Result<Upstream, DialError> {
    let mut last = None;
    for (tried, ip) in ips.iter().enumerate() {
        let addr = SocketAddr::new(*ip, port);
        let Ok(connected) = tokio::time::timeout_at(deadline, connect(addr)).await else {
            return Err(DialError::Timeout {
                after: budget,
                addr,
            });
        };
        match connected {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(Upstream { stream, addr });
            }
            Err(e) if crate::listener::is_fd_exhaustion(&e) => {
                static LIMIT: RateLimit = RateLimit::new();
                if let Some(suppressed) = LIMIT.allow() {
                    tracing::warn!(%addr, suppressed, "out of file descriptors dialing upstream");
                }
                return Err(DialError::OutOfFiles { addr });
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "connect failed");
                last = Some((addr, e.kind(), tried + 1));
            }
        }
    }
    Err(match last {
        Some((addr, kind, tried)) => DialError::Connect { addr, kind, tried },
        // `dial` never passes an empty list.
        None => DialError::Dns(DnsError::NoAddresses),
    })
}

/// Why nothing could be dialed: `blocked_ip` only when every lookup succeeded
/// and the guard refused every answer; with a lookup failed (upstream or
/// locally), the answer is incomplete and the reason is `dns_error`.
fn unusable(usable: Filtered, failed: Option<LookupFailure>) -> DialError {
    match failed {
        None if usable.all_blocked() => DialError::Guarded(usable.blocked),
        None => DialError::Dns(DnsError::NoAddresses),
        Some(failure) => DialError::Incomplete {
            failure,
            guarded: usable.blocked,
        },
    }
}

/// Why a destination could not be dialed, as data: the reason it is
/// refused with, the audit `error` and the refusal's `detail` all derive
/// from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DialError {
    /// The name did not resolve.
    Dns(DnsError),
    /// Every answer is guarded (or one of the proxy's own addresses), and
    /// every lookup succeeded.
    Guarded(Vec<IpAddr>),
    /// A lookup failed, and nothing the others found is dialable.
    Incomplete {
        failure: LookupFailure,
        guarded: Vec<IpAddr>,
    },
    /// Every address failed; the last failure, and how many were tried.
    Connect {
        addr: SocketAddr,
        kind: std::io::ErrorKind,
        tried: usize,
    },
    /// `--connect-timeout` (`after`) ran out while dialing `addr`.
    Timeout { after: Duration, addr: SocketAddr },
    /// The process ran out of file descriptors.
    OutOfFiles { addr: SocketAddr },
}

/// How a dial ended, for `upstream_connect_seconds`: `refused` when the last
/// address tried refused the connection, `error` for any other failure.
fn connect_result(result: &Result<Upstream, DialError>) -> ConnectResult {
    match result {
        Ok(_) => ConnectResult::Ok,
        Err(DialError::Timeout { .. }) => ConnectResult::Timeout,
        Err(DialError::Connect {
            kind: std::io::ErrorKind::ConnectionRefused,
            ..
        }) => ConnectResult::Refused,
        Err(_) => ConnectResult::Error,
    }
}

/// Guarded addresses named in a refusal, at most this many.
const NAMED_ADDRESSES: usize = 8;

impl DialError {
    /// The reason the exchange ends with.
    pub(crate) fn reason(&self) -> Reason {
        match self {
            DialError::Dns(DnsError::InvalidName(_)) => Reason::BadRequest,
            DialError::Dns(_) | DialError::Incomplete { .. } => Reason::DnsError,
            DialError::Guarded(_) => Reason::BlockedIp,
            DialError::Connect { .. } => Reason::ConnectError,
            DialError::Timeout { .. } => Reason::ConnectTimeout,
            DialError::OutOfFiles { .. } => Reason::Overloaded,
        }
    }

    /// The audit `error`: a short cause for the network failures
    /// (`NXDOMAIN`, `connection refused 203.0.113.10:443`, ...); `None`
    /// where the reason says it all (a guard refusal, running out of files).
    pub(crate) fn error(&self) -> Option<String> {
        match self {
            DialError::Dns(DnsError::InvalidName(_))
            | DialError::Guarded(_)
            | DialError::OutOfFiles { .. } => None,
            DialError::Dns(e) => Some(e.cause()),
            DialError::Incomplete { failure, .. } => Some(failure.to_string()),
            DialError::Connect { addr, kind, tried } => Some(match tried {
                1 => format!("{kind} {addr}"),
                n => format!("{kind} {addr} (last of {n} addresses)"),
            }),
            DialError::Timeout { after, addr } => Some(format!(
                "timeout after {} {addr}",
                humantime::format_duration(*after)
            )),
        }
    }

    /// The refusal's `detail`, also its body: the cause in words, naming `host`.
    pub(crate) fn detail(&self, host: &Host) -> String {
        match self {
            DialError::Dns(DnsError::InvalidName(_)) => format!("{host} is not a valid DNS name"),
            DialError::Dns(e) => format!("cannot resolve {host}: {}", e.cause()),
            DialError::Guarded(addrs) => {
                format!("every address of {host} is guarded ({})", list(addrs))
            }
            DialError::Incomplete { failure, guarded } if guarded.is_empty() => {
                format!("cannot resolve {host}: {failure}")
            }
            DialError::Incomplete { failure, guarded } => format!(
                "cannot resolve {host}: {failure}; the other answers are guarded ({})",
                list(guarded)
            ),
            DialError::OutOfFiles { addr } => {
                format!("out of file descriptors dialing {addr}")
            }
            DialError::Connect { .. } | DialError::Timeout { .. } => {
                self.error().unwrap_or_default()
            }
        }
    }
}

/// `a, b, c`, at most [`NAMED_ADDRESSES`] of them.
fn list(addrs: &[IpAddr]) -> String {
    let mut text = (addrs.iter().take(NAMED_ADDRESSES))
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if addrs.len() > NAMED_ADDRESSES {
        text.push_str(&format!(" and {} more", addrs.len() - NAMED_ADDRESSES));
    }
    text
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
        let servfail = LookupFailure::Code(hickory_resolver::proto::op::ResponseCode::ServFail);
        let local = LookupFailure::Other("Too many open files".into());
        let cases = [
            (
                "all guarded, both lookups answered",
                vec![ip("::1"), ip("127.0.0.1")],
                None,
                Reason::BlockedIp,
                None,
                "every address of h.test is guarded (::1, 127.0.0.1)",
            ),
            (
                "A failed, AAAA guarded",
                vec![ip("::1")],
                Some(servfail),
                Reason::DnsError,
                Some("SERVFAIL"),
                "cannot resolve h.test: SERVFAIL; the other answers are guarded (::1)",
            ),
            (
                "AAAA failed locally, A guarded",
                vec![ip("127.0.0.1")],
                Some(local),
                Reason::DnsError,
                Some("Too many open files"),
                "cannot resolve h.test: Too many open files; the other answers are guarded (127.0.0.1)",
            ),
            (
                "no answers at all",
                vec![],
                None,
                Reason::DnsError,
                Some("no addresses"),
                "cannot resolve h.test: no addresses",
            ),
        ];
        let host = Host::parse("h.test").unwrap();
        for (name, blocked, failed, reason, error, detail) in cases {
            let usable = Filtered {
                dialable: vec![],
                blocked,
            };
            let e = unusable(usable, failed);
            assert_eq!(e.reason(), reason, "{name}");
            assert_eq!(e.error().as_deref(), error, "{name}");
            assert_eq!(e.detail(&host), detail, "{name}");
        }
    }

    #[test]
    fn connect_failures_name_the_address() {
        let a = addr("127.0.0.1:443");
        let host = Host::parse("h.test").unwrap();
        let refused = DialError::Connect {
            addr: a,
            kind: std::io::ErrorKind::ConnectionRefused,
            tried: 1,
        };
        assert_eq!(refused.reason(), Reason::ConnectError);
        let want = "connection refused 127.0.0.1:443";
        assert_eq!(refused.error().as_deref(), Some(want));
        assert_eq!(refused.detail(&host), want);
        let timeout = DialError::Timeout {
            after: Duration::from_secs(10),
            addr: addr("203.0.113.10:443"),
        };
        assert_eq!(timeout.reason(), Reason::ConnectTimeout);
        assert_eq!(
            timeout.error().as_deref(),
            Some("timeout after 10s 203.0.113.10:443")
        );
        let many: Vec<IpAddr> = (1..=10).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        assert!(
            DialError::Guarded(many)
                .detail(&host)
                .ends_with("10.0.0.8 and 2 more)")
        );
    }

    /// The address that timed out is the one being tried when the budget ran out.
    #[tokio::test(start_paused = true)]
    async fn a_timeout_names_the_address_it_was_dialing() {
        // TEST-NET-3 is never routed: the connect hangs (or fails at once
        // where the network says so, which this test then skips).
        let ip: IpAddr = "203.0.113.10".parse().unwrap();
        let budget = Duration::from_secs(10);
        let deadline = tokio::time::Instant::now() + budget;
        match connect_first(&[ip], 443, deadline, budget).await {
            Err(e @ DialError::Timeout { .. }) => assert_eq!(
                e.error().as_deref(),
                Some("timeout after 10s 203.0.113.10:443")
            ),
            other => eprintln!("skipped: the network answered {:?}", other.err()),
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
