//! The transparent TLS listener: the destination is the ClientHello's SNI,
//! the port the one a REDIRECT rule rewrote (else 443). Denials get a TLS
//! `access_denied` alert.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Exchange, original_dst};
use crate::dial::dial;
use crate::policy::{Host, Reason};
use crate::state::{ConnSlot, Shared};
use crate::telemetry::Listener;
use crate::telemetry::audit::Event;
use crate::tls_peek::{FirstFlight, read_first_flight};
use crate::tunnel::{self, Counters, End, NO_CHECK};

/// TLS alert descriptions (RFC 8446 6.2).
const ACCESS_DENIED: u8 = 49;
const INTERNAL_ERROR: u8 = 80;

/// A fatal alert record, sent in place of a ServerHello.
fn alert(description: u8) -> [u8; 7] {
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]
}

pub async fn serve(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr, slot: ConnSlot) {
    let snap = shared.policy.load_full();
    let mut ex = Exchange::new(Listener::TransparentTls, Event::Connection, peer);
    let port = original_dst(&stream).map_or(443, |d| d.port());
    let mut hello_bytes = Vec::new();
    let timeout = shared.limits.header_timeout;
    let read = tokio::time::timeout(
        timeout,
        read_first_flight(&mut stream, &mut hello_bytes, timeout),
    )
    .await;
    let hello = match read {
        Ok(Ok(FirstFlight::Hello(hello))) => hello,
        other => {
            tracing::debug!(%peer, outcome = ?other.map(|r| r.map(|_| ())), "no ClientHello on the transparent TLS listener");
            ex.bad_request(&snap);
            return ex.finish(&shared);
        }
    };
    let sni = match hello.server_names.as_slice() {
        [] => {
            ex.bad_request(&snap);
            ex.port = Some(port);
            return refuse(&shared, ex, stream, Reason::NoSni, ACCESS_DENIED).await;
        }
        [one] => one.clone(),
        _ => {
            ex.bad_request(&snap);
            return refuse(&shared, ex, stream, Reason::BadRequest, ACCESS_DENIED).await;
        }
    };
    ex.sni = Some(sni.clone());
    ex.target_raw(&sni, Some(port));
    // An SNI is a name, never an address (RFC 6066 3).
    let host = match Host::parse(&sni) {
        Ok(h @ Host::Name(_)) => h,
        _ => {
            ex.bad_request(&snap);
            return refuse(&shared, ex, stream, Reason::BadRequest, ACCESS_DENIED).await;
        }
    };
    let decision = ex.decide(&snap, &host, port);
    if !decision.verdict.permits() {
        let reason = decision.reason;
        return refuse(&shared, ex, stream, reason, ACCESS_DENIED).await;
    }
    if hello.ech && !snap.policy.tls.ech_allowed {
        return refuse(&shared, ex, stream, Reason::EchRefused, ACCESS_DENIED).await;
    }
    let mut upstream = match dial(&shared, &snap, &host, port).await {
        Ok(up) => up,
        Err(reason) => {
            let description = if reason == Reason::BlockedIp {
                ACCESS_DENIED
            } else {
                INTERNAL_ERROR
            };
            return refuse(&shared, ex, stream, reason, description).await;
        }
    };
    ex.upstream = Some(upstream.addr);
    // Replay the ClientHello exactly as the client sent it.
    if upstream.stream.write_all(&hello_bytes).await.is_err() {
        return refuse(&shared, ex, stream, Reason::ConnectError, INTERNAL_ERROR).await;
    }
    let counters = Counters::default();
    let client = tunnel::Client {
        stream,
        prefix: bytes::Bytes::new(),
    };
    let end = tunnel::pump(
        client,
        upstream.stream,
        shared.limits.idle_timeout,
        &shared.abort,
        &counters,
        NO_CHECK,
    )
    .await;
    tracing::debug!(host = %host, ?end, "transparent tunnel closed");
    if end == End::Aborted {
        tracing::debug!(host = %host, "transparent tunnel cut at the drain timeout");
    }
    ex.egress = counters.egress() + hello_bytes.len() as u64;
    ex.ingress = counters.ingress();
    ex.finish(&shared);
    drop(slot);
}

/// Sends a fatal alert, closes, and records the refusal.
async fn refuse(
    shared: &Shared,
    mut ex: Exchange,
    mut stream: TcpStream,
    reason: Reason,
    description: u8,
) {
    ex.reason = reason;
    ex.finish(shared);
    let _ = stream.write_all(&alert(description)).await;
    let _ = stream.shutdown().await;
}
