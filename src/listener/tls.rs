//! The transparent TLS listener: the destination is the ClientHello's SNI,
//! the port the one a REDIRECT rule rewrote (else 443). Denials get a TLS
//! `access_denied` alert.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Exchange, Peer, Refusal, original_dst};
use crate::policy::{Host, Reason};
use crate::state::{ConnSlot, Shared};
use crate::telemetry::audit::Event;
use crate::telemetry::{Listener, Telemetry};
use crate::tls_peek::{
    self, ACCESS_DENIED, ClientFlight, Expect, INTERNAL_ERROR, Violation, read_first_flight,
};
use crate::tunnel::{self, Counters, End, Inspect};

/// Serves one redirected connection: read the ClientHello, decide on its
/// SNI, dial, replay the hello and relay.
pub(crate) async fn serve(shared: Arc<Shared>, mut stream: TcpStream, peer: Peer, slot: ConnSlot) {
    let Peer {
        addr: peer,
        vpc_endpoint,
    } = peer;
    let snap = shared.policy.load_full();
    let mut ex = Exchange::new(Listener::TransparentTls, Event::Connection, peer);
    ex.came_through(vpc_endpoint);
    let port = original_dst(&stream).map_or(443, |d| d.port());
    // Every later ClientHello must name the same server as the first (docs/security.md).
    let mut flight = ClientFlight::new(Expect::Any, snap.policy.tls.ech_allowed);
    let timeout = shared.limits.header_timeout;
    let host = match read_hello(&mut stream, &mut flight, timeout, peer).await {
        FirstFlight::Sni(host) => host,
        FirstFlight::Refused(v) => {
            ex.bad_request(&snap);
            ex.at_port(port);
            ex.saw_sni(flight.last_sni().map(ToString::to_string));
            let mut refused = Refusal::new(v.reason, v.cause);
            if v.reason == Reason::TlsViolation {
                refused = refused.with_error(v.cause);
            }
            return refuse_with_alert(&shared.telemetry, ex, stream, refused, ACCESS_DENIED).await;
        }
        FirstFlight::Nothing => {
            ex.bad_request(&snap);
            let why = "no TLS ClientHello (other bytes, or none before the header timeout)";
            ex.refused(Refusal::new(Reason::BadRequest, why), None);
            return ex.finish(&shared.telemetry);
        }
        FirstFlight::NoSni => {
            ex.bad_request(&snap);
            ex.at_port(port);
            let refused = Refusal::new(Reason::NoSni, "the ClientHello names no server");
            return refuse_with_alert(&shared.telemetry, ex, stream, refused, ACCESS_DENIED).await;
        }
    };
    ex.saw_sni(Some(host.to_string()));
    if !ex.admit(&shared.telemetry) {
        ex.at_port(port);
        let refused = Refusal::from(Reason::AuditUnavailable);
        return refuse_with_alert(&shared.telemetry, ex, stream, refused, INTERNAL_ERROR).await;
    }
    if !ex.decide(&snap, &host, port).verdict.permits() {
        let decision = ex.decision().expect("just decided");
        let detail = (snap.policy).refusal_detail(ex.credentials(), &host, port, decision);
        let refused = Refusal::new(decision.reason, detail);
        return refuse_with_alert(&shared.telemetry, ex, stream, refused, ACCESS_DENIED).await;
    }
    let upstream = match shared
        .dialer
        .dial(&snap.policy.guard, ex.allow_private(), &host, port)
        .await
    {
        Ok(up) => up,
        Err(e) => {
            let refused = Refusal::dial(&e, &host);
            let description = if refused.reason == Reason::BlockedIp {
                ACCESS_DENIED
            } else {
                INTERNAL_ERROR
            };
            return refuse_with_alert(&shared.telemetry, ex, stream, refused, description).await;
        }
    };
    ex.dialed(upstream.addr);
    relay(&shared, ex, stream, upstream.stream, flight, &host).await;
    drop(slot);
}

/// What the client's first flight came to.
enum FirstFlight {
    /// A ClientHello naming a server (a name: the inspector refuses addresses, RFC 6066 3).
    Sni(Host),
    /// A ClientHello without a server name.
    NoSni,
    /// A flight that broke the handshake rules.
    Refused(Violation),
    /// No ClientHello within the header timeout, or the client went away.
    Nothing,
}

/// Reads the client's first flight into `flight`, within `timeout`.
async fn read_hello(
    stream: &mut TcpStream,
    flight: &mut ClientFlight,
    timeout: Duration,
    peer: SocketAddr,
) -> FirstFlight {
    let read = tokio::time::timeout(timeout, read_first_flight(stream, flight, timeout)).await;
    let hello = match read {
        Ok(Ok(Ok(()))) => flight.first_hello().cloned(),
        Ok(Ok(Err(v))) => {
            tracing::debug!(%peer, reason = v.reason.as_str(), cause = v.cause, "ClientHello refused on the transparent TLS listener");
            return FirstFlight::Refused(v);
        }
        // A ClientHello that started and did not finish in time is a TLS
        // stream breaking its rules, as inside a CONNECT tunnel.
        Err(_) if flight.is_tls() == Some(true) => {
            tracing::debug!(%peer, "ClientHello timeout on the transparent TLS listener");
            return FirstFlight::Refused(Violation::tls("ClientHello timeout"));
        }
        Ok(Err(_)) | Err(_) => None,
    };
    let Some(hello) = hello else {
        tracing::debug!(%peer, "no ClientHello on the transparent TLS listener");
        return FirstFlight::Nothing;
    };
    match hello.sni {
        Some(host) => FirstFlight::Sni(host),
        None => FirstFlight::NoSni,
    }
}

/// Replays the buffered ClientHello upstream exactly as the client sent it,
/// relays until the tunnel ends, and writes the record.
async fn relay(
    shared: &Shared,
    mut ex: Exchange,
    stream: TcpStream,
    upstream: TcpStream,
    flight: ClientFlight,
    host: &Host,
) {
    let counters = Counters::default();
    let client = tunnel::ClientSide {
        stream: tunnel::ClientStream::Tcp(stream),
        prefix: bytes::Bytes::new(),
    };
    let inspect = Inspect {
        flight,
        header_timeout: shared.limits.header_timeout,
    };
    let end = tunnel::pump(
        client,
        upstream,
        shared.limits.idle_timeout,
        &shared.lifecycle.abort,
        &counters,
        Some(inspect),
    )
    .await;
    match end {
        End::Refused(v) => {
            tracing::debug!(host = %host, reason = v.reason.as_str(), cause = v.cause, "transparent tunnel refused during the TLS handshake");
        }
        End::Aborted => {
            tracing::debug!(host = %host, "transparent tunnel cut at the drain timeout");
        }
        End::Closed(_) | End::Failed(_) | End::Idle => {
            tracing::debug!(host = %host, ?end, "transparent tunnel closed");
        }
    }
    // No revocation here: `--revalidate-on-reload` tracks CONNECT tunnels.
    ex.tunnel_ended(end, &counters, None);
    ex.finish(&shared.telemetry);
}

/// Sends a fatal alert, closes, and records the refusal.
async fn refuse_with_alert(
    telemetry: &Telemetry,
    mut ex: Exchange,
    mut stream: TcpStream,
    refused: Refusal,
    description: u8,
) {
    ex.refused(refused, None);
    ex.finish(telemetry);
    let _ = stream.try_write(&tls_peek::alert(description));
    let _ = stream.shutdown().await;
}
