//! Byte pumping between client and upstream sockets, with counting, an idle
//! timeout, and a check of the client's first flight.
//!
//! An idle tunnel holds no copy buffer: each direction waits for its socket
//! to become readable, borrows a buffer only while bytes are moving, and
//! gives it back before waiting again.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::tls_peek::{self, ClientFlight, Violation};

mod handshake;

/// Copy buffer per direction while bytes are moving.
pub(crate) const BUF: usize = 16 * 1024;

/// One end of a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Upstream,
}

/// Why a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Both directions are done; this side stopped sending first (a reset
    /// after that still counts as a close).
    Closed(Side),
    /// A socket failed (a reset) before either side closed.
    Failed(std::io::ErrorKind),
    /// No bytes either way for the idle timeout.
    Idle,
    /// The drain timeout expired during shutdown, or a reload revoked the tunnel.
    Aborted,
    /// The client's TLS handshake broke a rule; it was sent an `access_denied` alert.
    Refused(Violation),
}

/// Bytes relayed: client -> upstream (`egress`) and back (`ingress`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub egress: AtomicU64,
    pub ingress: AtomicU64,
    /// Milliseconds since the tunnel started, at the last byte either way.
    last_activity_ms: AtomicU64,
    /// The server name of the client's first ClientHello, when it sent one.
    pub sni: OnceLock<String>,
    /// The side that stopped sending first.
    first_closed: OnceLock<Side>,
}

impl Counters {
    /// Notes that `side` stopped sending (its EOF was read); the first call wins.
    pub(crate) fn closed(&self, side: Side) {
        let _ = self.first_closed.set(side);
    }

    /// The side that stopped sending first, if either did.
    pub(crate) fn first_closed(&self) -> Option<Side> {
        self.first_closed.get().copied()
    }

    pub(crate) fn egress(&self) -> u64 {
        self.egress.load(Ordering::Relaxed)
    }

    pub(crate) fn ingress(&self) -> u64 {
        self.ingress.load(Ordering::Relaxed)
    }
}

/// The client side of a tunnel: its socket, and bytes already read from it
/// (what hyper buffered after the CONNECT head).
pub(crate) struct ClientSide {
    pub stream: ClientStream,
    pub prefix: Bytes,
}

/// The client's stream: a TCP socket, or TLS over one (`--listen-tls`).
pub(crate) enum ClientStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// How the client's handshake is inspected.
pub(crate) struct Inspect {
    /// The inspector, possibly already holding the first ClientHello.
    pub flight: ClientFlight,
    /// How long a started ClientHello may take to arrive whole.
    pub header_timeout: Duration,
}

/// Relays bytes both ways until both directions are done, the tunnel sits
/// idle for `idle`, or `abort` fires. A half-close is passed on: when one
/// side stops sending, the other side's write half is shut down and the
/// opposite direction keeps flowing.
///
/// With `inspect`, every byte the client sends is judged before it is
/// forwarded until the TLS handshake is settled (docs/security.md), while upstream
/// bytes already flow (server-first protocols); a refused client gets a TLS
/// `access_denied` alert and the tunnel ends.
pub(crate) async fn pump(
    client: ClientSide,
    upstream: TcpStream,
    idle: Duration,
    abort: &CancellationToken,
    counters: &Counters,
    inspect: Option<Inspect>,
) -> End {
    let start = Instant::now();
    let activity = &counters.last_activity_ms;
    let touch = || activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let run = relay(client, upstream, counters, inspect, &touch);
    tokio::select! {
        end = run => end,
        () = idle_watch(idle, activity, start) => End::Idle,
        () = abort.cancelled() => End::Aborted,
    }
}

async fn relay(
    client: ClientSide,
    upstream: TcpStream,
    counters: &Counters,
    inspect: Option<Inspect>,
    touch: &impl Fn(),
) -> End {
    let ClientSide { stream, prefix } = client;
    match stream {
        ClientStream::Tcp(client) => {
            relay_tcp(client, prefix, upstream, counters, inspect, touch).await
        }
        ClientStream::Tls(client) => {
            relay_io(*client, prefix, upstream, counters, inspect, touch).await
        }
    }
}

/// A client stream the relay only reads and writes (TLS over TCP).
trait ClientIo: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> ClientIo for T {}

/// Relays between a client stream of any kind and the upstream: the same
/// inspection and counting as [`relay_tcp`], through user-space buffers.
async fn relay_io<C: ClientIo>(
    mut client: C,
    prefix: Bytes,
    mut upstream: TcpStream,
    counters: &Counters,
    inspect: Option<Inspect>,
    touch: &impl Fn(),
) -> End {
    let open =
        match first_flight(&mut client, prefix, &mut upstream, counters, inspect, touch).await {
            Ok(open) => open,
            Err(handshake::Stop::Io(kind)) => return End::Failed(kind),
            Err(handshake::Stop::Refused(v)) => {
                // Bounded: the refusal must not wait on a client that reads nothing.
                let alert = tls_peek::alert(tls_peek::ACCESS_DENIED);
                let _ = tokio::time::timeout(ALERT_WAIT, async {
                    client.write_all(&alert).await?;
                    client.shutdown().await
                })
                .await;
                return End::Refused(v);
            }
        };
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut up_r, mut up_w) = upstream.into_split();
    let egress = async {
        if open.client {
            copy_io(&mut client_r, &mut up_w, &counters.egress, touch).await?;
        }
        counters.closed(Side::Client);
        Ok(())
    };
    let ingress = async {
        if open.upstream {
            copy_io(&mut up_r, &mut client_w, &counters.ingress, touch).await?;
        }
        counters.closed(Side::Upstream);
        Ok(())
    };
    let joined: std::io::Result<((), ())> = tokio::try_join!(egress, ingress);
    match (joined, counters.first_closed()) {
        (_, Some(side)) => End::Closed(side),
        (Err(e), None) => End::Failed(e.kind()),
        (Ok(_), None) => End::Closed(Side::Client),
    }
}

/// How long a refused client of a TLS stream gets to take its alert.
const ALERT_WAIT: Duration = Duration::from_secs(1);

/// Copies until EOF, then shuts the write side down. The buffer is held
/// only while a read is answered: an idle tunnel waits without one.
async fn copy_io<R, W>(
    r: &mut R,
    w: &mut W,
    count: &AtomicU64,
    touch: &impl Fn(),
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    loop {
        buf.reserve(BUF);
        let n = r.read_buf(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        buf.clear();
        if buf.capacity() > BUF {
            buf.shrink_to(0);
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        touch();
    }
}

/// Passes on what hyper read after the CONNECT head and, with `inspect`,
/// judges the client's TLS handshake; the directions still open are handed back.
async fn first_flight<C: ClientIo>(
    client: &mut C,
    prefix: Bytes,
    upstream: &mut TcpStream,
    counters: &Counters,
    inspect: Option<Inspect>,
    touch: &impl Fn(),
) -> Result<handshake::Open, handshake::Stop> {
    match inspect {
        Some(Inspect {
            mut flight,
            header_timeout,
        }) => {
            flight.buffer().extend_from_slice(&prefix);
            drop(prefix);
            handshake::inspect(client, upstream, flight, header_timeout, counters, touch).await
        }
        None => {
            if !prefix.is_empty() {
                upstream.write_all(&prefix).await?;
                counters
                    .egress
                    .fetch_add(prefix.len() as u64, Ordering::Relaxed);
                touch();
            }
            Ok(handshake::Open::BOTH)
        }
    }
}

/// Relays between TCP sockets: zero-copy once the handshake is settled.
async fn relay_tcp(
    mut client: TcpStream,
    prefix: Bytes,
    mut upstream: TcpStream,
    counters: &Counters,
    inspect: Option<Inspect>,
    touch: &impl Fn(),
) -> End {
    let mut open = handshake::Open::BOTH;
    match inspect {
        Some(Inspect {
            mut flight,
            header_timeout,
        }) => {
            // Copied out: the `Bytes` may share the (much larger) buffer
            // the request head was read into, which a tunnel must not keep.
            flight.buffer().extend_from_slice(&prefix);
            drop(prefix);
            let inspected = handshake::inspect(
                &mut client,
                &mut upstream,
                flight,
                header_timeout,
                counters,
                touch,
            )
            .await;
            match inspected {
                Ok(still_open) => open = still_open,
                Err(handshake::Stop::Io(kind)) => return End::Failed(kind),
                Err(handshake::Stop::Refused(v)) => {
                    // One small write that cannot block: the refusal must not wait on the client.
                    let _ = client.try_write(&tls_peek::alert(tls_peek::ACCESS_DENIED));
                    let _ = client.shutdown().await;
                    return End::Refused(v);
                }
            }
        }
        None if !prefix.is_empty() => {
            let head = prefix.to_vec();
            drop(prefix);
            if let Err(e) = upstream.write_all(&head).await {
                return End::Failed(e.kind());
            }
            counters
                .egress
                .fetch_add(head.len() as u64, Ordering::Relaxed);
            touch();
        }
        None => {}
    }
    let (client_r, client_w) = client.into_split();
    let (up_r, up_w) = upstream.into_split();
    let egress = async {
        if open.client {
            one_way(client_r, up_w, &counters.egress, touch).await?;
        }
        counters.closed(Side::Client);
        Ok(())
    };
    let ingress = async {
        if open.upstream {
            one_way(up_r, client_w, &counters.ingress, touch).await?;
        }
        counters.closed(Side::Upstream);
        Ok(())
    };
    // An error in one direction (a reset) ends the tunnel.
    let joined: std::io::Result<((), ())> = tokio::try_join!(egress, ingress);
    match (joined, counters.first_closed()) {
        (_, Some(side)) => End::Closed(side),
        (Err(e), None) => End::Failed(e.kind()),
        // Both directions finished, so one of them noted its close.
        (Ok(_), None) => End::Closed(Side::Client),
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
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    count: &AtomicU64,
    touch: &impl Fn(),
) -> std::io::Result<()> {
    while let Copied::Bytes { .. } = copy_step(&mut r, &mut w, count, touch).await? {}
    w.shutdown().await
}

/// What one [`copy_step`] moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Copied {
    /// The source sent its EOF.
    Eof,
    /// Bytes went on; `full` when they filled the copy buffer, so that the
    /// source may well have more right now (bulk data).
    Bytes { full: bool },
}

thread_local! {
    /// The worker thread's copy buffer. It is filled and emptied within one
    /// poll, never held across an `.await`, so one per thread serves every
    /// tunnel on it: no allocation and no zeroing per read.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; BUF].into_boxed_slice());
}

/// Waits until `r` has bytes (or its EOF), reads them into the thread's
/// buffer and writes them to `w` in the same poll; only what `w` does not
/// take at once is copied out and written before returning.
///
/// Reading through `poll_read` lets tokio note a short read as "drained":
/// the next wait goes straight to the event loop instead of first trying
/// a read that would block. Per small exchange that is one `recvfrom` and
/// one `sendto`, where `splice` takes two splices and a failed one.
pub(crate) async fn copy_step(
    r: &mut OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    count: &AtomicU64,
    touch: &impl Fn(),
) -> std::io::Result<Copied> {
    let (n, rest) = std::future::poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|buf| {
            let mut read = ReadBuf::new(buf);
            std::task::ready!(Pin::new(&mut *r).poll_read(cx, &mut read))?;
            let data = read.filled();
            if data.is_empty() {
                return Poll::Ready(Ok((0, Vec::new())));
            }
            let sent = match w.try_write(data) {
                Ok(sent) => sent,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(e) => return Poll::Ready(Err(e)),
            };
            Poll::Ready(Ok((data.len(), data[sent..].to_vec())))
        })
    })
    .await?;
    if n == 0 {
        return Ok(Copied::Eof);
    }
    if !rest.is_empty() {
        w.write_all(&rest).await?;
    }
    count.fetch_add(n as u64, Ordering::Relaxed);
    touch();
    Ok(Copied::Bytes { full: n == BUF })
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
mod tests;
