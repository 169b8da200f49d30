//! `CONNECT host:port`: decide, dial, answer 200, then tunnel with the
//! TLS handshake checks described in docs/security.md.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::http1::{Conn, decide_target, refusal};
use super::{Body, Exchange, REQUEST_ID_HEADER, Refusal, full, request_id_value};
use crate::dial::Upstream;
use crate::policy::{Host, Reason};
use crate::state::{ConnSlot, Shared, Snapshot};
use crate::telemetry::Ending;
use crate::tls_peek::{ClientFlight, Expect};
use crate::tunnel::{self, ClientSide, ClientStream, Counters, End, Inspect};
use tokio_rustls::server::TlsStream;

pub(super) async fn connect(
    conn: Arc<Conn>,
    snap: Arc<Snapshot>,
    mut ex: Exchange,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let shared = &conn.shared;
    let Some(authority) = authority(&req) else {
        ex.bad_request(&snap);
        let why = "CONNECT must name host:port and carry no body";
        return refusal(&shared.telemetry, ex, Refusal::new(Reason::BadRequest, why));
    };
    let (host, port) = match decide_target(&snap, &mut ex, &authority, None) {
        Ok(target) => target,
        Err(refused) => return refusal(&shared.telemetry, ex, refused),
    };
    let upstream = match shared
        .dialer
        .dial(&snap.policy.guard, ex.allow_private(), &host, port)
        .await
    {
        Ok(up) => up,
        Err(e) => return refusal(&shared.telemetry, ex, Refusal::dial(&e, &host)),
    };
    ex.dialed(upstream.addr);
    ex.responded(200);
    let id = ex.id();
    let tunnel = Tunnel {
        shared: shared.clone(),
        snap,
        ex,
        upstream,
        target: host,
        port,
        slot: conn.slot.clone(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    shared
        .lifecycle
        .tracker
        .spawn(tunnel.run(on_upgrade).in_current_span());
    let mut resp = Response::new(full(""));
    resp.extensions_mut()
        .insert(ReasonPhrase::from_static(b"Connection Established"));
    resp.headers_mut()
        .insert(REQUEST_ID_HEADER, request_id_value(id));
    resp
}

/// The `host:port` a well-formed CONNECT names. A CONNECT request has no
/// content (RFC 9110 9.3.6): bytes after the head are tunnel bytes, so a
/// declared body would be swallowed as one; such a request is refused.
fn authority(req: &Request<Incoming>) -> Option<String> {
    let declares_body = req.headers().contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    authority.filter(|_| !declares_body && req.uri().path_and_query().is_none())
}

/// A CONNECT dialed and answered 200, waiting for hyper to hand over the client's socket.
struct Tunnel {
    shared: Arc<Shared>,
    snap: Arc<Snapshot>,
    ex: Exchange,
    upstream: Upstream,
    target: Host,
    port: u16,
    /// Keeps the client connection counted until the tunnel ends.
    slot: Arc<ConnSlot>,
}

impl Tunnel {
    /// Relays until the tunnel ends, then writes its record.
    async fn run(self, on_upgrade: OnUpgrade) {
        let Tunnel {
            shared,
            snap,
            mut ex,
            upstream,
            target,
            port,
            slot,
        } = self;
        match on_upgrade.await {
            Ok(upgraded) => {
                let Some(client) = client_side(upgraded) else {
                    tracing::error!("CONNECT upgrade is not a TCP stream");
                    let error = "the CONNECT upgrade is not a TCP stream".to_string();
                    ex.ended(Ending::Error, Some(error));
                    ex.finish(&shared.telemetry);
                    return;
                };
                let inspect = inspection(&snap, target.clone(), shared.limits.header_timeout);
                let ends = (client, upstream.stream);
                let counters = Counters::default();
                relay(
                    &shared,
                    &mut ex,
                    ends,
                    (target, port),
                    &counters,
                    Some(inspect),
                )
                .await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                ex.ended(Ending::Error, Some(format!("CONNECT upgrade failed: {e}")));
            }
        }
        ex.finish(&shared.telemetry);
        drop(slot);
    }
}

/// Relays between the client and the upstream as a tunnel to `target`
/// (counted, idle-timed, drained, revoked by a reload that no longer allows
/// it) until it ends; records in `ex` how it ended and what it relayed.
/// `counters` may already hold bytes passed on before the relay started.
pub(super) async fn relay(
    shared: &Shared,
    ex: &mut Exchange,
    (client, upstream): (ClientSide, TcpStream),
    (target, port): (Host, u16),
    counters: &Counters,
    inspect: Option<Inspect>,
) {
    let cancel = shared.lifecycle.abort.child_token();
    let registration = (shared.policy.open_tunnels.as_ref()).map(|open| {
        let who = ex.credentials().clone();
        open.register(who, target, port, cancel.clone())
    });
    let idle = shared.limits.idle_timeout;
    let end = tunnel::pump(client, upstream, idle, &cancel, counters, inspect).await;
    if let End::Refused(v) = end {
        tracing::debug!(host = ?ex.host(), reason = v.reason.as_str(), cause = v.cause, "tunnel refused during the TLS handshake");
    }
    // Only a reload's revocation cancels this tunnel's own token
    // without the drain's abort.
    let revoked_by = registration
        .as_ref()
        .filter(|_| !shared.lifecycle.abort.is_cancelled())
        .and_then(|r| r.revoked_by());
    drop(registration);
    ex.saw_sni(counters.sni.get().cloned());
    tracing::debug!(host = ?ex.host(), ?end, "tunnel closed");
    ex.tunnel_ended(end, counters, revoked_by);
}

/// The client's socket (TCP, or TLS on `--listen-tls`), with what hyper read past the CONNECT head.
pub(super) fn client_side(upgraded: Upgraded) -> Option<ClientSide> {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            return Some(ClientSide {
                stream: ClientStream::Tcp(parts.io.into_inner()),
                prefix: parts.read_buf,
            });
        }
        Err(upgraded) => upgraded,
    };
    let parts = upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>().ok()?;
    Some(ClientSide {
        stream: ClientStream::Tls(Box::new(parts.io.into_inner())),
        prefix: parts.read_buf,
    })
}

/// How the client's TLS handshake is checked: the SNI must name `target`
/// unless the policy says otherwise.
fn inspection(snap: &Snapshot, target: Host, header_timeout: Duration) -> Inspect {
    let tls = snap.policy.tls;
    let expect = if tls.sni_must_match {
        Expect::Host(target)
    } else {
        Expect::Any
    };
    Inspect {
        flight: ClientFlight::new(expect, tls.ech_allowed),
        header_timeout,
    }
}
