//! Byte pumping between client and upstream, with counting and an idle timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::sync::OnceLock;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::policy::Reason;
use crate::tls_peek::{FirstFlight, read_first_flight};

/// Copy buffer per direction.
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

/// Relays bytes both ways until both directions are done, the tunnel sits
/// idle for `idle`, or `abort` fires. A half-close is passed on: when one
/// side stops sending, the other side's write half is shut down and the
/// opposite direction keeps flowing. With `first`, the client's first bytes
/// are judged before any is forwarded, while upstream bytes already flow
/// (server-first protocols).
pub async fn pump<C, U, F>(
    client: C,
    upstream: U,
    idle: Duration,
    abort: &CancellationToken,
    counters: &Counters,
    first: Option<FirstFlightCheck<F>>,
) -> End
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
    F: FnOnce(&FirstFlight) -> Result<(), Reason>,
{
    let start = Instant::now();
    let (mut client_r, client_w) = tokio::io::split(client);
    let (up_r, mut up_w) = tokio::io::split(upstream);
    let activity = &counters.last_activity_ms;
    let egress = async {
        if let Some(FirstFlightCheck { timeout, check }) = first {
            let mut buf = Vec::new();
            let flight = read_first_flight(&mut client_r, &mut buf, timeout)
                .await
                .map_err(|_| Stop::Refused(Reason::BadRequest))?;
            if let FirstFlight::Hello(hello) = &flight
                && let Some(name) = hello.server_names.first()
            {
                let _ = counters.sni.set(name.clone());
            }
            check(&flight).map_err(Stop::Refused)?;
            if buf.is_empty() {
                // The client closed without a byte.
                return up_w.shutdown().await.map_err(|_| Stop::Io);
            }
            up_w.write_all(&buf).await.map_err(|_| Stop::Io)?;
            counters
                .egress
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        one_way(client_r, up_w, &counters.egress, activity, start)
            .await
            .map_err(|_| Stop::Io)
    };
    let ingress = async {
        one_way(up_r, client_w, &counters.ingress, activity, start)
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

async fn one_way<R, W>(
    mut r: R,
    mut w: W,
    count: &AtomicU64,
    activity: &AtomicU64,
    start: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
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

/// For tunnels whose first bytes need no check.
pub type NoCheck = fn(&FirstFlight) -> Result<(), Reason>;
pub const NO_CHECK: Option<FirstFlightCheck<NoCheck>> = None;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn relays_both_ways_counts_and_passes_half_close() {
        let (client, mut client_peer) = duplex(64);
        let (upstream, mut upstream_peer) = duplex(64);
        let counters = Counters::default();
        let abort = CancellationToken::new();
        let pumping = pump(
            client,
            upstream,
            Duration::from_secs(5),
            &abort,
            &counters,
            NO_CHECK,
        );
        let driving = async {
            client_peer.write_all(b"hello").await.unwrap();
            let mut got = [0u8; 5];
            upstream_peer.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
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
        assert_eq!((counters.egress(), counters.ingress()), (5, 6));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_end() {
        let (client, _keep_client) = duplex(64);
        let (upstream, _keep_upstream) = duplex(64);
        let counters = Counters::default();
        let end = pump(
            client,
            upstream,
            Duration::from_secs(3),
            &CancellationToken::new(),
            &counters,
            NO_CHECK,
        )
        .await;
        assert_eq!(end, End::Idle);
    }

    #[tokio::test]
    async fn abort_ends_the_tunnel() {
        let (client, _keep_client) = duplex(64);
        let (upstream, _keep_upstream) = duplex(64);
        let abort = CancellationToken::new();
        abort.cancel();
        let end = pump(
            client,
            upstream,
            Duration::from_secs(60),
            &abort,
            &Counters::default(),
            NO_CHECK,
        )
        .await;
        assert_eq!(end, End::Aborted);
    }
}
