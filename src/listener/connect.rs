//! `CONNECT host:port`: decide, dial, answer 200, then tunnel with the
//! TLS handshake checks of SPEC 9.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::http1::{Conn, decide_target, refusal};
use super::{Body, Exchange, full};
use crate::dial::Upstream;
use crate::policy::Reason;
use crate::state::Snapshot;
use crate::tls_peek::{ClientFlight, Expect};
use crate::tunnel::{self, Counters, End, Inspect};

pub(super) async fn connect(
    conn: Arc<Conn>,
    snap: Arc<Snapshot>,
    mut ex: Exchange,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let shared = &conn.shared;
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    // A CONNECT request has no content (RFC 9110 9.3.6): bytes after the head
    // are tunnel bytes. A declared body would be swallowed as one, so refuse it.
    let declares_body = req.headers().contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let authority = authority.filter(|_| !declares_body);
    let Some(authority) = authority.filter(|_| req.uri().path_and_query().is_none()) else {
        ex.bad_request(&snap);
        return refusal(&shared.telemetry, ex, Reason::BadRequest);
    };
    let (host, port) = match decide_target(&snap, &mut ex, &authority, None) {
        Ok(target) => target,
        Err(reason) => return refusal(&shared.telemetry, ex, reason),
    };
    let upstream = match shared.dialer.dial(&snap.policy.guard, &host, port).await {
        Ok(up) => up,
        Err(reason) => return refusal(&shared.telemetry, ex, reason),
    };
    ex.dialed(upstream.addr);
    ex.responded(200);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let slot = conn.slot.clone();
    let conn_peer = conn.peer;
    let target = host;
    let shared_task = shared.clone();
    shared.lifecycle.tracker.spawn(async move {
        let shared = shared_task;
        match on_upgrade.await {
            Ok(upgraded) => {
                let counters = Counters::default();
                let Upstream { stream, .. } = upstream;
                let cancel = shared.lifecycle.abort.child_token();
                let _registration = shared
                    .policy
                    .open_tunnels
                    .as_ref()
                    .map(|open| open.register(conn_peer.ip(), target.clone(), port, cancel.clone()));
                let tls = snap.policy.tls;
                let expect = if tls.sni_must_match {
                    Expect::Host(target.clone())
                } else {
                    Expect::Any
                };
                let inspect = Inspect {
                    flight: ClientFlight::new(expect, tls.ech_allowed),
                    header_timeout: shared.limits.header_timeout,
                };
                let client = match upgraded.downcast::<TokioIo<TcpStream>>() {
                    Ok(parts) => tunnel::ClientSide { stream: parts.io.into_inner(), prefix: parts.read_buf },
                    Err(_) => {
                        tracing::error!("CONNECT upgrade is not a TCP stream");
                        ex.finish(&shared.telemetry);
                        return;
                    }
                };
                let end = tunnel::pump(
                    client,
                    stream,
                    shared.limits.idle_timeout,
                    &cancel,
                    &counters,
                    Some(inspect),
                )
                .await;
                let cut = match end {
                    End::Aborted if !shared.lifecycle.abort.is_cancelled() => Some(Reason::PolicyRevoked),
                    End::Refused(v) => {
                        tracing::debug!(host = ?ex.host(), reason = v.reason.as_str(), cause = v.cause, "tunnel refused during the TLS handshake");
                        Some(v.reason)
                    }
                    _ => None,
                };
                ex.saw_sni(counters.sni.get().cloned());
                tracing::debug!(host = ?ex.host(), ?end, "tunnel closed");
                ex.tunnel_ended(cut, &counters);
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
        ex.finish(&shared.telemetry);
        drop(slot);
    }.in_current_span());
    let mut resp = Response::new(full(""));
    resp.extensions_mut()
        .insert(ReasonPhrase::from_static(b"Connection Established"));
    resp
}
