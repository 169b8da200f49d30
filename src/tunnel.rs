//! Byte pumping between client and upstream sockets, with counting, an idle
//! timeout, and a check of the client's first flight.
//!
//! An idle tunnel holds no copy buffer: each direction waits for its socket
//! to become readable, borrows a buffer only while bytes are moving, and
//! gives it back before waiting again.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::policy::Reason;
use crate::tls_peek::{FirstFlight, read_first_flight};

/// Copy buffer per direction while bytes are moving.
const BUF: usize = 16 * 1024;

/// Why a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed (or one reset).
    Closed,
    /// No bytes either way for the idle timeout.
    Idle,
    /// The drain timeout expired during shutdown, or a reload revoked the tunnel.
    Aborted,
    /// The client's first bytes failed the first-flight check.
    Refused(Reason),
}

/// Checks the client's first flight (a TLS ClientHello, or other bytes)
/// before anything is forwarded.
pub struct FirstFlightCheck<F> {
    pub timeout: Duration,
    pub check: F,
}

/// For tunnels whose first bytes need no check.
pub type NoCheck = fn(&FirstFlight) -> Result<(), Reason>;
pub const NO_CHECK: Option<FirstFlightCheck<NoCheck>> = None;

enum Stop {
    Io,
    Refused(Reason),
}

/// Bytes relayed: client -> upstream (`egress`) and back (`ingress`).
#[derive(Debug, Default)]
pub struct Counters {
    pub egress: AtomicU64,
    pub ingress: AtomicU64,
    /// Milliseconds since the tunnel started, at the last byte either way.
    last_activity_ms: AtomicU64,
    /// The server name of the client's ClientHello, when it sent one.
    pub sni: OnceLock<String>,
}

impl Counters {
    pub fn egress(&self) -> u64 {
        self.egress.load(Ordering::Relaxed)
    }

    pub fn ingress(&self) -> u64 {
        self.ingress.load(Ordering::Relaxed)
    }
}

/// The client side of a tunnel: its socket, and bytes already read from it
/// (what hyper buffered after the CONNECT head).
pub struct Client {
    pub stream: TcpStream,
    pub prefix: Bytes,
}

/// Relays bytes both ways until both directions are done, the tunnel sits
/// idle for `idle`, or `abort` fires. A half-close is passed on: when one
/// side stops sending, the other side's write half is shut down and the
/// opposite direction keeps flowing. With `first`, the client's first bytes
/// are judged before any is forwarded, while upstream bytes already flow
/// (server-first protocols).
pub async fn pump<F>(
    client: Client,
    upstream: TcpStream,
    idle: Duration,
    abort: &CancellationToken,
    counters: &Counters,
    first: Option<FirstFlightCheck<F>>,
) -> End
where
    F: FnOnce(&FirstFlight) -> Result<(), Reason>,
{
    let start = Instant::now();
    let Client { stream, prefix } = client;
    // Copy the prefix out: the `Bytes` may share the (much larger) buffer
    // the request head was read into, which an idle tunnel must not keep.
    let mut head = prefix.to_vec();
    drop(prefix);
    let (mut client_r, client_w) = stream.into_split();
    let (up_r, mut up_w) = upstream.into_split();
    let activity = &counters.last_activity_ms;
    let touch = || activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let egress = async move {
        if let Some(FirstFlightCheck { timeout, check }) = first {
            if head.is_empty() {
                // Hold no buffer while the client has not spoken.
                client_r.readable().await.map_err(|_| Stop::Io)?;
            }
            let flight = match read_first_flight(&mut client_r, &mut head, timeout).await {
                Ok(flight) => flight,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(Stop::Refused(Reason::BadRequest));
                }
                Err(_) => return Err(Stop::Io),
            };
            if let FirstFlight::Hello(hello) = &flight
                && let Some(name) = hello.server_names.first()
            {
                let _ = counters.sni.set(name.clone());
            }
            check(&flight).map_err(Stop::Refused)?;
            if head.is_empty() {
                // The client closed without a byte.
                return up_w.shutdown().await.map_err(|_| Stop::Io);
            }
        }
        if !head.is_empty() {
            up_w.write_all(&head).await.map_err(|_| Stop::Io)?;
            counters
                .egress
                .fetch_add(head.len() as u64, Ordering::Relaxed);
            touch();
        }
        drop(head);
        one_way(client_r, up_w, &counters.egress, &touch)
            .await
            .map_err(|_| Stop::Io)
    };
    let ingress = async {
        one_way(up_r, client_w, &counters.ingress, &touch)
            .await
            .map_err(|_| Stop::Io)
    };
    // An error in one direction (a reset) ends the tunnel.
    let both = async { tokio::try_join!(egress, ingress) };
    tokio::select! {
        res = both => match res {
            Err(Stop::Refused(reason)) => End::Refused(reason),
            Ok(_) | Err(Stop::Io) => End::Closed,
        },
        () = idle_watch(idle, activity, start) => End::Idle,
        () = abort.cancelled() => End::Aborted,
    }
}

/// Relays one direction until EOF: zero-copy where `splice` is built in,
/// through a user-space buffer otherwise.
async fn one_way(
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
    count: &AtomicU64,
    touch: &impl Fn(),
) -> std::io::Result<()> {
    #[cfg(all(feature = "splice", target_os = "linux"))]
    return crate::splice::one_way(r, w, count, touch).await;
    #[cfg(not(all(feature = "splice", target_os = "linux")))]
    return copy_one_way(r, w, count, touch).await;
}

/// Copies until EOF, then shuts the write side down. The portable path:
/// used without `splice`, and tested either way.
#[cfg_attr(all(feature = "splice", target_os = "linux"), allow(dead_code))]
pub(crate) async fn copy_one_way(
    r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    count: &AtomicU64,
    touch: &impl Fn(),
) -> std::io::Result<()> {
    loop {
        r.readable().await?;
        if copy_burst(&r, &mut w, count, touch).await? {
            return w.shutdown().await;
        }
    }
}

/// Copies what `r` has to give right now; `true` at EOF. The buffer lives
/// only for the burst.
pub(crate) async fn copy_burst(
    r: &OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    count: &AtomicU64,
    touch: &impl Fn(),
) -> std::io::Result<bool> {
    let mut buf = vec![0u8; BUF];
    loop {
        match r.try_read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                w.write_all(&buf[..n]).await?;
                count.fetch_add(n as u64, Ordering::Relaxed);
                touch();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// Resolves once no byte has moved for `idle`.
async fn idle_watch(idle: Duration, last_ms: &AtomicU64, start: Instant) {
    loop {
        let last = start + Duration::from_millis(last_ms.load(Ordering::Relaxed));
        let deadline = last + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// Two connected loopback socket pairs: (proxy side, test side) for the
    /// client and for the upstream.
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        async fn pair() -> (TcpStream, TcpStream) {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let out = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (inn, _) = l.accept().await.unwrap();
            (inn, out)
        }
        (pair().await, pair().await)
    }

    fn client(stream: TcpStream, prefix: &'static [u8]) -> Client {
        Client {
            stream,
            prefix: Bytes::from_static(prefix),
        }
    }

    #[tokio::test]
    async fn relays_both_ways_counts_prefix_and_passes_half_close() {
        let ((c, mut client_peer), (u, mut upstream_peer)) = pairs().await;
        let counters = Counters::default();
        let abort = CancellationToken::new();
        let pumping = pump(
            client(c, b">"),
            u,
            Duration::from_secs(5),
            &abort,
            &counters,
            NO_CHECK,
        );
        let driving = async {
            client_peer.write_all(b"hello").await.unwrap();
            let mut got = [0u8; 6];
            upstream_peer.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b">hello");
            client_peer.shutdown().await.unwrap();
            // upstream sees EOF, yet can still answer
            let mut rest = Vec::new();
            upstream_peer.read_to_end(&mut rest).await.unwrap();
            upstream_peer.write_all(b"world!").await.unwrap();
            upstream_peer.shutdown().await.unwrap();
            let mut back = Vec::new();
            client_peer.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"world!");
        };
        let (end, ()) = tokio::join!(pumping, driving);
        assert_eq!(end, End::Closed);
        assert_eq!((counters.egress(), counters.ingress()), (6, 6));
    }

    #[tokio::test]
    async fn server_first_bytes_flow_while_the_first_flight_is_awaited() {
        let ((c, mut client_peer), (u, mut upstream_peer)) = pairs().await;
        let counters = Counters::default();
        let abort = CancellationToken::new();
        let check = FirstFlightCheck {
            timeout: Duration::from_secs(5),
            check: |_: &FirstFlight| Ok(()),
        };
        let pumping = pump(
            client(c, b""),
            u,
            Duration::from_secs(5),
            &abort,
            &counters,
            Some(check),
        );
        let driving = async {
            upstream_peer
                .write_all(b"220 smtp ready\r\n")
                .await
                .unwrap();
            let mut greeting = [0u8; 16];
            client_peer.read_exact(&mut greeting).await.unwrap();
            client_peer.write_all(b"EHLO x\r\n").await.unwrap();
            let mut got = [0u8; 8];
            upstream_peer.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"EHLO x\r\n");
            drop((client_peer, upstream_peer));
        };
        let (end, ()) = tokio::join!(pumping, driving);
        assert_eq!(end, End::Closed);
    }

    #[tokio::test]
    async fn a_refused_first_flight_forwards_nothing() {
        let ((c, mut client_peer), (u, mut upstream_peer)) = pairs().await;
        let counters = Counters::default();
        let check = FirstFlightCheck {
            timeout: Duration::from_secs(5),
            check: |_: &FirstFlight| Err(Reason::SniMismatch),
        };
        client_peer
            .write_all(b"\x16\x03\x01\x00\x05hello")
            .await
            .unwrap();
        let end = pump(
            client(c, b""),
            u,
            Duration::from_secs(5),
            &CancellationToken::new(),
            &counters,
            Some(check),
        )
        .await;
        assert_eq!(end, End::Refused(Reason::SniMismatch));
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
        assert_eq!(counters.egress(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_end() {
        let ((c, _keep_client), (u, _keep_upstream)) = pairs().await;
        let end = pump(
            client(c, b""),
            u,
            Duration::from_secs(3),
            &CancellationToken::new(),
            &Counters::default(),
            NO_CHECK,
        )
        .await;
        assert_eq!(end, End::Idle);
    }

    /// The portable copy path, tested on its own whatever the build uses.
    #[tokio::test]
    async fn copy_path_relays_and_counts() {
        let ((c, mut client_peer), (u, mut upstream_peer)) = pairs().await;
        let (r, _w) = c.into_split();
        let (_r2, w2) = u.into_split();
        let count = AtomicU64::new(0);
        let relaying = copy_one_way(r, w2, &count, &|| {});
        let driving = async {
            let big = vec![7u8; 1 << 20];
            client_peer.write_all(&big).await.unwrap();
            client_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            upstream_peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, big);
        };
        let (res, ()) = tokio::join!(relaying, driving);
        res.unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 1 << 20);
    }

    #[tokio::test]
    async fn abort_ends_the_tunnel() {
        let ((c, _keep_client), (u, _keep_upstream)) = pairs().await;
        let abort = CancellationToken::new();
        abort.cancel();
        let end = pump(
            client(c, b""),
            u,
            Duration::from_secs(60),
            &abort,
            &Counters::default(),
            NO_CHECK,
        )
        .await;
        assert_eq!(end, End::Aborted);
    }
}
