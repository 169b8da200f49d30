//! The first phase of an inspected tunnel: both directions relayed through
//! the TLS inspectors until the client's handshake is settled, then handed
//! over to the blind relay.

use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{BUF, Counters, Side};
use crate::tls_peek::{ClientFlight, ServerState, ServerWatch, Violation};

/// Which directions are still open when the relay takes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Open {
    /// The client may still send.
    pub client: bool,
    /// The upstream may still send.
    pub upstream: bool,
}

impl Open {
    pub(super) const BOTH: Open = Open {
        client: true,
        upstream: true,
    };
}

pub(super) enum Stop {
    /// A socket failed (a reset): the tunnel ends.
    Io(std::io::ErrorKind),
    /// The client broke a rule.
    Refused(Violation),
}

impl From<Violation> for Stop {
    fn from(v: Violation) -> Stop {
        Stop::Refused(v)
    }
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Stop {
        Stop::Io(e.kind())
    }
}

/// Relays while judging: client bytes go upstream only once `flight` has
/// cleared them; server bytes are passed on at once, after `watch` has seen
/// them. Returns when the client's stream is not TLS, when a ServerHello
/// that is not a HelloRetryRequest answered a checked ClientHello, or when
/// the client can send no more; the directions still open are handed back.
///
/// The client is a TCP socket, or TLS over one (`--listen-tls`).
pub(super) async fn inspect<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    upstream: &mut TcpStream,
    mut flight: ClientFlight,
    header_timeout: Duration,
    counters: &Counters,
    touch: &impl Fn(),
) -> Result<Open, Stop> {
    let inspected = relay(
        client,
        upstream,
        &mut flight,
        header_timeout,
        counters,
        touch,
    )
    .await;
    if let Some(sni) = flight.last_sni() {
        let _ = counters.sni.set(sni.to_string());
    }
    inspected
}

/// The loop of [`inspect`]. Client reads wait on the stream itself:
/// `read_buf` is cancel-safe, so losing the race to the upstream loses no
/// client byte.
async fn relay<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    upstream: &mut TcpStream,
    flight: &mut ClientFlight,
    header_timeout: Duration,
    counters: &Counters,
    touch: &impl Fn(),
) -> Result<Open, Stop> {
    let mut watch = ServerWatch::new();
    let mut open = Open::BOTH;
    let mut deadline: Option<Instant> = None;
    // Bytes hyper read after the CONNECT head are already in `flight`.
    flight.inspect()?;
    loop {
        let ready = flight.ready();
        if !ready.is_empty() {
            upstream.write_all(ready).await?;
            let n = ready.len() as u64;
            counters.egress.fetch_add(n, Ordering::Relaxed);
            touch();
            flight.advance();
        }
        let hello_seen = flight.first_hello().is_some();
        let settled = hello_seen && watch.state() == ServerState::Established;
        if flight.is_tls() == Some(false) || settled || !open.client {
            return Ok(open);
        }
        if !hello_seen && !flight.buffer().is_empty() {
            deadline.get_or_insert_with(|| Instant::now() + header_timeout);
        }
        let hello_due = async {
            match deadline {
                Some(at) if !hello_seen => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        let buf = flight.buffer();
        buf.reserve(4096);
        tokio::select! {
            read = client.read_buf(buf) => {
                if read? == 0 {
                    flight.closed()?;
                    counters.closed(Side::Client);
                    open.client = false;
                    upstream.shutdown().await?;
                } else {
                    flight.inspect()?;
                }
            }
            readable = upstream.readable(), if open.upstream => {
                readable?;
                // Uninitialised capacity: `try_read_buf` does not need it zeroed.
                let mut buf = Vec::with_capacity(BUF);
                match upstream.try_read_buf(&mut buf) {
                    Ok(0) => {
                        counters.closed(Side::Upstream);
                        open.upstream = false;
                        client.shutdown().await?;
                    }
                    Ok(n) => {
                        // Judged before the client can see it, so that the
                        // client's answer is never read as its hello.
                        if hello_seen {
                            watch.feed(&buf[..n]);
                        } else {
                            watch.spoke_first();
                        }
                        client.write_all(&buf[..n]).await?;
                        counters.ingress.fetch_add(n as u64, Ordering::Relaxed);
                        touch();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            () = hello_due => return Err(Violation::tls("ClientHello timeout").into()),
        }
    }
}
