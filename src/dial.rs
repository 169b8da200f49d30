//! Resolve, guard, dial: turn an allowed destination into a connected upstream socket.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tokio::net::{TcpSocket, TcpStream};

use crate::policy::{Host, Reason};
use crate::resolve::{DnsError, filter};
use crate::state::{Shared, Snapshot};
use crate::telemetry::diag::RateLimit;

/// A connected upstream.
pub struct Upstream {
    pub stream: TcpStream,
    pub addr: SocketAddr,
}

/// Resolves `host` itself (never trusting an address from the client), drops
/// every answer the guard or the proxy's own addresses rule out, and tries
/// the rest in order within `--connect-timeout`.
pub async fn dial(
    shared: &Shared,
    snap: &Snapshot,
    host: &Host,
    port: u16,
) -> Result<Upstream, Reason> {
    let addrs: Vec<IpAddr> = match host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => shared.resolver.lookup(name).await.map_err(|e| {
            tracing::debug!(host = %name, error = %e, "lookup failed");
            match e {
                DnsError::InvalidName(_) => Reason::BadRequest,
                _ => Reason::DnsError,
            }
        })?,
    };
    let guard = &snap.policy.guard;
    let usable = filter(addrs, |ip| {
        guard.is_dialable(ip) && !shared.is_own_addr(SocketAddr::new(ip, port))
    });
    if usable.dialable.is_empty() {
        tracing::debug!(%host, blocked = ?usable.blocked, "every address is guarded");
        return Err(if usable.all_blocked() {
            Reason::BlockedIp
        } else {
            Reason::DnsError
        });
    }
    let started = Instant::now();
    let attempt = async {
        let mut last = Reason::ConnectError;
        for ip in &usable.dialable {
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
                    return Err(Reason::Overloaded);
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "connect failed");
                    last = Reason::ConnectError;
                }
            }
        }
        Err(last)
    };
    let result = tokio::time::timeout(shared.limits.connect_timeout, attempt)
        .await
        .unwrap_or(Err(Reason::ConnectTimeout));
    if result.is_ok() {
        shared
            .metrics
            .upstream_connect(&host.to_string(), started.elapsed());
    }
    result
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
