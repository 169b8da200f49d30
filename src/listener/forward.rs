//! Plain-HTTP forwarding: absolute-form requests on the explicit listener,
//! `Host`-addressed requests on the transparent one; keep-alive both sides.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::body::{Counting, Finishing};
use super::http1::{Conn, decide_target, refusal};
use super::upgrade;
use super::{Body, Exchange, REQUEST_ID_HEADER, Refusal, request_id_value};
use crate::dial::Upstream;
use crate::limits::UPSTREAMS_PER_CONNECTION;
use crate::policy::host::split_host_port;
use crate::policy::{Host, Reason};
use crate::state::{Lifecycle, Snapshot};
use crate::telemetry::Listener;

type UpstreamBody = Counting<Incoming>;

/// An upstream HTTP/1 connection kept for the next request to the same `host:port`.
pub(super) struct Pooled {
    key: String,
    sender: SendRequest<UpstreamBody>,
    addr: SocketAddr,
}

pub(super) async fn forward(
    conn: Arc<Conn>,
    snap: Arc<Snapshot>,
    mut ex: Exchange,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let shared = &conn.shared;
    let uri = req.uri().clone();
    let Some((authority, default_port)) = destination(&conn, &req) else {
        ex.bad_request(&snap);
        let why = match conn.listener {
            Listener::TransparentHttp => "no Host header names the destination",
            _ => "a proxy needs absolute-form requests (GET http://host/path)",
        };
        return refusal(&shared.telemetry, ex, Refusal::new(Reason::BadRequest, why));
    };
    if uri.scheme_str().is_some_and(|s| s != "http") {
        // https:// in absolute-form would ask us to originate TLS: use CONNECT.
        ex.target_raw(&authority, None);
        ex.bad_request(&snap);
        let why = "only http:// is forwarded; use CONNECT for TLS";
        return refusal(&shared.telemetry, ex, Refusal::new(Reason::BadRequest, why));
    }
    let (host, port) = match decide_target(&snap, &mut ex, &authority, Some(default_port)) {
        Ok(target) => target,
        Err(refused) => return refusal(&shared.telemetry, ex, refused),
    };
    if !host_header_agrees(req.headers(), &host, port, default_port) {
        let why = "the Host header disagrees with the request target";
        return refusal(&shared.telemetry, ex, Refusal::new(Reason::BadRequest, why));
    }
    let key = format!("{host}:{port}");
    let mut pooled = match take_upstream(&conn, &key).await {
        Some(p) => p,
        None => match shared
            .dialer
            .dial(&snap.policy.guard, ex.allow_private(), &host, port)
            .await
        {
            Ok(up) => {
                let addr = up.addr;
                match handshake(&shared.lifecycle, up).await {
                    Ok(sender) => Pooled { key, sender, addr },
                    Err(e) => {
                        let why = format!("HTTP handshake with {addr} failed: {}", chain(&e));
                        let refused = Refusal::new(Reason::ConnectError, why.clone());
                        return refusal(&shared.telemetry, ex, refused.with_error(why));
                    }
                }
            }
            Err(e) => return refusal(&shared.telemetry, ex, Refusal::dial(&e, &host)),
        },
    };
    ex.dialed(pooled.addr);
    let egress = Arc::new(AtomicU64::new(0));
    let websocket = upgrade::asks_websocket(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if websocket.is_some() {
        upgrade::mark(&mut parts.headers);
    }
    parts.headers.remove(header::PROXY_AUTHORIZATION);
    if !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&authority)
    {
        parts.headers.insert(header::HOST, v);
    }
    parts.uri = origin_form(&uri);
    let broken = Arc::new(AtomicBool::new(false));
    let body = Counting::watched(body, egress.clone(), broken.clone());
    let upstream_req = Request::from_parts(parts, body);
    // An upstream that accepts but never answers gets --idle-timeout, as a tunnel would.
    let sent = tokio::time::timeout(
        shared.limits.idle_timeout,
        pooled.sender.send_request(upstream_req),
    );
    let addr = pooled.addr;
    let resp = match sent.await {
        Ok(Ok(resp)) => resp,
        // The upstream connection saw part of a request: it is dropped, never pooled.
        Ok(Err(e)) if broken.load(Ordering::Relaxed) => {
            tracing::debug!(upstream = %addr, error = %e, "client request body broken");
            let why = "the request body broke its framing or ended early";
            return refusal(&shared.telemetry, ex, Refusal::new(Reason::BadRequest, why));
        }
        Ok(Err(e)) => {
            tracing::debug!(upstream = %addr, error = %e, "upstream request failed");
            let why = format!(
                "upstream {addr} failed before the response head: {}",
                chain(&e)
            );
            let refused = Refusal::new(Reason::ConnectError, why.clone());
            return refusal(&shared.telemetry, ex, refused.with_error(why));
        }
        Err(_) => {
            tracing::debug!(upstream = %addr, "upstream sent no response head in time");
            let within = humantime::format_duration(shared.limits.idle_timeout);
            let why = format!("no response head from {addr} within {within}");
            let refused = Refusal::new(Reason::ConnectTimeout, why.clone());
            return refusal(&shared.telemetry, ex, refused.with_error(why));
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = websocket else {
            // `Upgrade` was stripped, so nothing asked for this: the upstream
            // now speaks something else on the connection, which is dropped.
            tracing::debug!(upstream = %addr, "upstream switched protocols unasked");
            let why = format!("upstream {addr} switched protocols unasked");
            let refused = Refusal::new(Reason::ConnectError, why.clone());
            return refusal(&shared.telemetry, ex, refused.with_error(why));
        };
        if let Some(how) = upgrade::refused_switch(resp.headers()) {
            // The connection speaks an unknown protocol now: dropped, nothing relayed.
            tracing::debug!(upstream = %addr, how, "upstream switched to something else");
            let why = format!("upstream {addr} answered the WebSocket upgrade with 101 {how}");
            let refused = Refusal::new(Reason::ConnectError, why.clone());
            return refusal(&shared.telemetry, ex, refused.with_error(why));
        }
        return upgrade::switch(&conn, ex, (host, port), client, resp);
    }
    put_upstream(&conn, pooled).await;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Replaces any the origin sent: the id is the proxy's, never the origin's word.
    parts
        .headers
        .insert(REQUEST_ID_HEADER, request_id_value(ex.id()));
    ex.responded(parts.status.as_u16());
    let body = Finishing::new(
        body,
        egress,
        ex,
        shared.telemetry.clone(),
        shared.lifecycle.abort.clone(),
    )
    .boxed_unsync();
    Response::from_parts(parts, body)
}

/// The `host[:port]` to decide on, and the port to assume when it names none.
/// The explicit listener takes the absolute-form URI (origin-form `GET /` is
/// for origin servers, not proxies); the transparent listener takes the URI
/// or else the `Host` header, with the redirected port as the default.
fn destination(conn: &Conn, req: &Request<Incoming>) -> Option<(String, u16)> {
    let uri_authority = req.uri().authority().map(|a| a.as_str().to_string());
    match conn.listener {
        Listener::TransparentHttp => {
            let port = conn.original_dst.map_or(80, |d| d.port());
            let host = || {
                req.headers()
                    .get(header::HOST)?
                    .to_str()
                    .ok()
                    .map(str::to_string)
            };
            Some((uri_authority.or_else(host)?, port))
        }
        _ => Some((uri_authority.filter(|_| req.uri().scheme().is_some())?, 80)),
    }
}

/// An idle upstream for `key` that is still usable, if one is kept.
async fn take_upstream(conn: &Conn, key: &str) -> Option<Pooled> {
    let mut list = conn.upstreams.lock().await;
    let i = list.iter().position(|p| p.key == key)?;
    let mut pooled = list.swap_remove(i);
    drop(list);
    pooled.sender.ready().await.ok()?;
    Some(pooled)
}

async fn put_upstream(conn: &Conn, pooled: Pooled) {
    let mut list = conn.upstreams.lock().await;
    if list.len() >= UPSTREAMS_PER_CONNECTION {
        list.remove(0);
    }
    list.push(pooled);
}

async fn handshake(
    lifecycle: &Lifecycle,
    up: Upstream,
) -> Result<SendRequest<UpstreamBody>, hyper::Error> {
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(up.stream))
        .await
        .inspect_err(|e| tracing::debug!(error = %e, "upstream handshake failed"))?;
    // With upgrades, a `101` hands the socket to the response instead of
    // failing the connection: a WebSocket takes it, anything else drops it.
    let connection = connection.with_upgrades();
    let abort = lifecycle.abort.clone();
    lifecycle.tracker.spawn(
        async move {
            tokio::select! {
                res = connection => if let Err(e) = res {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                },
                () = abort.cancelled() => {}
            }
        }
        .in_current_span(),
    );
    Ok(sender)
}

/// An error and its causes, `: `-joined (hyper's own text names only the outermost).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A `Host` header, when present, must name the URI's host and port.
fn host_header_agrees(headers: &HeaderMap, host: &Host, port: u16, default_port: u16) -> bool {
    let mut values = headers.get_all(header::HOST).iter();
    let Some(value) = values.next() else {
        return true;
    };
    if values.next().is_some() {
        return false;
    }
    let Ok(text) = value.to_str() else {
        return false;
    };
    match split_host_port(text) {
        Ok((h, p)) => Host::parse(h).is_ok_and(|h| h == *host) && p.unwrap_or(default_port) == port,
        Err(_) => false,
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1) and any header `Connection` names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

fn origin_form(uri: &Uri) -> Uri {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("x-keep", "1"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-keep"]);
    }

    #[test]
    fn host_header_must_agree_with_the_uri() {
        let host = Host::parse("origin.test").unwrap();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(host_header_agrees(&HeaderMap::new(), &host, 80, 80));
        assert!(host_header_agrees(&with("origin.test"), &host, 80, 80));
        assert!(host_header_agrees(&with("ORIGIN.test:80"), &host, 80, 80));
        assert!(host_header_agrees(
            &with("origin.test:8080"),
            &host,
            8080,
            80
        ));
        assert!(!host_header_agrees(&with("origin.test"), &host, 8080, 80));
        assert!(!host_header_agrees(&with("evil.test"), &host, 80, 80));
        assert!(!host_header_agrees(
            &with("origin.test:0080"),
            &host,
            80,
            80
        ));
    }
}
