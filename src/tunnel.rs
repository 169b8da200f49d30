//! Byte pumping between client and upstream, with counting and an idle timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Copy buffer per direction.
const BUF: usize = 16 * 1024;

/// Why a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed (or one reset).
    Closed,
    /// No bytes either way for the idle timeout.
    Idle,
    /// The drain timeout expired during shutdown.
    Aborted,
}

/// Bytes relayed: client -> upstream (`egress`) and back (`ingress`).
#[derive(Debug, Default)]
pub struct Counters {
    pub egress: AtomicU64,
    pub ingress: AtomicU64,
    /// Milliseconds since the tunnel started, at the last byte either way.
    last_activity_ms: AtomicU64,
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
/// opposite direction keeps flowing.
pub async fn pump<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    abort: &CancellationToken,
    counters: &Counters,
) -> End
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let start = Instant::now();
    let (client_r, client_w) = tokio::io::split(client);
    let (up_r, up_w) = tokio::io::split(upstream);
    let egress = one_way(
        client_r,
        up_w,
        &counters.egress,
        &counters.last_activity_ms,
        start,
    );
    let ingress = one_way(
        up_r,
        client_w,
        &counters.ingress,
        &counters.last_activity_ms,
        start,
    );
    let both = async {
        // An error in one direction (a reset) ends the tunnel.
        let _ = tokio::try_join!(egress, ingress);
    };
    tokio::select! {
        () = both => End::Closed,
        () = idle_watch(idle, &counters.last_activity_ms, start) => End::Idle,
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
        let pumping = pump(client, upstream, Duration::from_secs(5), &abort, &counters);
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
        )
        .await;
        assert_eq!(end, End::Aborted);
    }
}
