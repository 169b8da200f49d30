//! TLS handshake inspection without terminating TLS: every ClientHello the
//! client sends in the clear is checked, until the server's first flight
//! shows a ServerHello that is not a HelloRetryRequest (docs/security.md).
//!
//! [`ClientFlight`] reads the client's records: the first must be a
//! handshake record starting a ClientHello, and every ClientHello must pass
//! the same checks and name the same server as the first. [`ServerWatch`]
//! reads the server's records until the handshake is past the point where
//! the client could send another ClientHello in the clear. Both are sans-IO;
//! the tunnel feeds them. The bytes are forwarded exactly as they came.

mod client;
mod hello;
mod server;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

pub use client::{ClientFlight, Expect};
pub use hello::{ClientHello, synth};
pub use server::{ServerState, ServerWatch};

use crate::policy::Reason;

/// Largest handshake message (a ClientHello) we reassemble.
pub const MAX_HELLO: usize = 16 * 1024;
/// Largest record payload: 2^14 plus the expansion TLS 1.2 allows
/// (RFC 5246 6.2.3), so encrypted early data fits too.
const MAX_RECORD: usize = (1 << 14) + 2048;

const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;

const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_SERVER_HELLO: u8 = 2;

/// Whether a stream whose first bytes are `first, second` is TLS: a record
/// content type (20-23) with protocol major version 3. OpenSSL accepts any
/// minor version on a first record, so the minor is not looked at; a
/// stream starting with a handshake byte is TLS whatever follows.
fn starts_tls(first: u8, second: u8) -> bool {
    first == CONTENT_HANDSHAKE
        || ((CONTENT_CHANGE_CIPHER_SPEC..=CONTENT_APPLICATION_DATA).contains(&first) && second == 3)
}

/// Why a TLS stream was refused: the reason recorded, and a short cause for
/// the diagnostic log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What the audit log and metrics record.
    pub reason: Reason,
    /// A short cause for the diagnostic log.
    pub cause: &'static str,
}

impl Violation {
    pub(crate) const fn tls(cause: &'static str) -> Violation {
        Violation {
            reason: Reason::TlsViolation,
            cause,
        }
    }
}

/// A fatal TLS alert record (RFC 8446 6.2), sent to a refused client.
pub fn alert(description: u8) -> [u8; 7] {
    [CONTENT_ALERT, 0x03, 0x03, 0x00, 0x02, 0x02, description]
}

/// `access_denied`: what a refused client is told.
pub const ACCESS_DENIED: u8 = 49;
/// `internal_error`: the proxy could not reach the destination.
pub const INTERNAL_ERROR: u8 = 80;

/// Reads from `r` into `flight` until its first ClientHello is complete, the
/// stream turns out not to be TLS, or the peer closes. The `timeout` starts
/// with the first byte: a client that has sent nothing yet is left alone
/// (server-first protocols wait). `Ok(Err(_))` is a refusal.
pub async fn read_first_flight<R: AsyncRead + Unpin>(
    r: &mut R,
    flight: &mut ClientFlight,
    timeout: Duration,
) -> std::io::Result<Result<(), Violation>> {
    let mut deadline = None;
    loop {
        if flight.first_hello().is_some() || flight.is_tls() == Some(false) {
            return Ok(Ok(()));
        }
        let buf = flight.buffer();
        buf.reserve(4096);
        let n = if buf.is_empty() {
            r.read_buf(buf).await?
        } else {
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
            match tokio::time::timeout_at(deadline, r.read_buf(buf)).await {
                Ok(read) => read?,
                Err(_) => return Ok(Err(Violation::tls("ClientHello timeout"))),
            }
        };
        if n == 0 {
            return Ok(flight.closed());
        }
        if let Err(v) = flight.inspect() {
            return Ok(Err(v));
        }
    }
}

#[cfg(test)]
mod tests;
