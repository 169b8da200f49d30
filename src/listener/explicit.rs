//! The explicit proxy listener: `CONNECT host:port` tunnels and absolute-form HTTP forwarding.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use http::header::{self, HeaderMap, HeaderName};
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::ext::ReasonPhrase;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::body::{Counting, Finishing};
use super::{Body, Exchange, error_response, full};
use crate::dial::{Upstream, dial};
use crate::policy::host::split_host_port;
use crate::policy::{Host, Reason};
use crate::state::{ConnSlot, MAX_HEAD_BYTES, Shared, Snapshot};
use crate::telemetry::Listener;
use crate::telemetry::audit::Event;
use crate::tls_peek::{FirstFlight, check_tunnel};
use crate::tunnel::{self, Counters, End, FirstFlightCheck};

/// Upstream connections one client connection keeps open for keep-alive.
const MAX_UPSTREAMS: usize = 4;

type UpstreamBody = Counting<Incoming>;

/// State of one client connection.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// Shared with tunnels this connection becomes, so the slot lives as long as they do.
    slot: Arc<ConnSlot>,
    /// Idle keep-alive upstreams.
    upstreams: Mutex<Vec<Pooled>>,
}

/// An upstream HTTP/1 connection kept for the next request to the same `host:port`.
struct Pooled {
    key: String,
    sender: SendRequest<UpstreamBody>,
    addr: SocketAddr,
}

/// Serves one client connection until it closes or the proxy drains.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, slot: ConnSlot) {
    let conn = Arc::new(Conn {
        shared: shared.clone(),
        peer,
        slot: Arc::new(slot),
        upstreams: Mutex::new(Vec::new()),
    });
    let svc = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(conn, req).await) }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES.max(8192) * 4)
        .half_close(false)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(http);
    tokio::select! {
        res = http.as_mut() => log_conn_end(peer, res),
        () = shared.draining.cancelled() => {
            http.as_mut().graceful_shutdown();
            tokio::select! {
                res = http => log_conn_end(peer, res),
                () = shared.abort.cancelled() => {}
            }
        }
    }
}

fn log_conn_end(peer: SocketAddr, res: Result<(), hyper::Error>) {
    if let Err(e) = res {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let snap = conn.shared.policy.load_full();
    let event = if req.method() == Method::CONNECT {
        Event::Connection
    } else {
        Event::Request
    };
    let mut ex = Exchange::new(Listener::Explicit, event, conn.peer);
    ex.method = Some(req.method().as_str().to_string());
    if req.method() == Method::CONNECT {
        connect(conn, snap, ex, req).await
    } else {
        forward(conn, snap, ex, req).await
    }
}

/// Ends the exchange with an error response.
fn refuse(shared: &Shared, mut ex: Exchange, reason: Reason) -> Response<Body> {
    ex.reason = reason;
    let resp = error_response(reason);
    ex.status = Some(resp.status().as_u16());
    ex.finish(shared);
    resp
}

/// Parses and decides `host[:port]`; `Err` is the response to send.
fn decide_target(
    snap: &Snapshot,
    ex: &mut Exchange,
    authority: &str,
    default_port: Option<u16>,
) -> Result<(Host, u16), Reason> {
    let parsed = split_host_port(authority).ok().and_then(|(h, p)| {
        ex.target_raw(h, p.or(default_port));
        Some((Host::parse(h).ok()?, p.or(default_port)?))
    });
    let Some((host, port)) = parsed else {
        if ex.host.is_none() {
            ex.target_raw(authority, None);
        }
        ex.bad_request(snap);
        return Err(Reason::BadRequest);
    };
    let decision = ex.decide(snap, &host, port);
    if decision.verdict.permits() {
        Ok((host, port))
    } else {
        Err(decision.reason)
    }
}

async fn connect(
    conn: Arc<Conn>,
    snap: Arc<Snapshot>,
    mut ex: Exchange,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let shared = &conn.shared;
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let Some(authority) = authority.filter(|_| req.uri().path_and_query().is_none()) else {
        ex.bad_request(&snap);
        return refuse(shared, ex, Reason::BadRequest);
    };
    let (host, port) = match decide_target(&snap, &mut ex, &authority, None) {
        Ok(target) => target,
        Err(reason) => return refuse(shared, ex, reason),
    };
    let upstream = match dial(shared, &snap, &host, port).await {
        Ok(up) => up,
        Err(reason) => return refuse(shared, ex, reason),
    };
    ex.upstream = Some(upstream.addr);
    ex.status = Some(200);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let slot = conn.slot.clone();
    let conn_peer = conn.peer;
    let target = host;
    let shared_task = shared.clone();
    shared.tracker.spawn(async move {
        let shared = shared_task;
        match on_upgrade.await {
            Ok(upgraded) => {
                let counters = Counters::default();
                let Upstream { stream, .. } = upstream;
                let cancel = shared.abort.child_token();
                let _registration = shared
                    .open_tunnels
                    .as_ref()
                    .map(|open| open.register(conn_peer.ip(), target.clone(), port, cancel.clone()));
                let tls = snap.policy.tls;
                let first = FirstFlightCheck {
                    timeout: shared.limits.header_timeout,
                    check: |flight: &FirstFlight| check_tunnel(flight, &target, &tls),
                };
                let end = tunnel::pump(
                    TokioIo::new(upgraded),
                    stream,
                    shared.limits.idle_timeout,
                    &cancel,
                    &counters,
                    Some(first),
                )
                .await;
                match end {
                    End::Aborted if !shared.abort.is_cancelled() => ex.reason = Reason::PolicyRevoked,
                    End::Refused(reason) => {
                        tracing::info!(host = ?ex.host, reason = reason.as_str(), "tunnel refused after its first bytes");
                        ex.reason = reason;
                    }
                    _ => {}
                }
                ex.sni = counters.sni.get().cloned();
                tracing::debug!(host = ?ex.host, ?end, "tunnel closed");
                ex.egress = counters.egress();
                ex.ingress = counters.ingress();
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
        ex.finish(&shared);
        drop(slot);
    });
    let mut resp = Response::new(full(""));
    resp.extensions_mut()
        .insert(ReasonPhrase::from_static(b"Connection Established"));
    resp
}

async fn forward(
    conn: Arc<Conn>,
    snap: Arc<Snapshot>,
    mut ex: Exchange,
    req: Request<Incoming>,
) -> Response<Body> {
    let shared = &conn.shared;
    let uri = req.uri().clone();
    // Origin-form (`GET /`) is for origin servers; a proxy needs absolute-form.
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        ex.bad_request(&snap);
        return refuse(shared, ex, Reason::BadRequest);
    };
    if scheme != "http" {
        // https:// in absolute-form would ask us to originate TLS: use CONNECT.
        ex.target_raw(authority.host(), authority.port_u16());
        ex.bad_request(&snap);
        return refuse(shared, ex, Reason::BadRequest);
    }
    let (host, port) = match decide_target(&snap, &mut ex, authority.as_str(), Some(80)) {
        Ok(target) => target,
        Err(reason) => return refuse(shared, ex, reason),
    };
    if !host_header_agrees(req.headers(), &host, port) {
        ex.reason = Reason::BadRequest;
        return refuse(shared, ex, Reason::BadRequest);
    }
    let key = format!("{host}:{port}");
    let mut pooled = match take_upstream(&conn, &key).await {
        Some(p) => p,
        None => match dial(shared, &snap, &host, port).await {
            Ok(up) => {
                ex.upstream = Some(up.addr);
                match handshake(shared, up).await {
                    Ok(sender) => Pooled {
                        key,
                        sender,
                        addr: ex.upstream.unwrap_or(conn.peer),
                    },
                    Err(()) => return refuse(shared, ex, Reason::ConnectError),
                }
            }
            Err(reason) => return refuse(shared, ex, reason),
        },
    };
    ex.upstream = Some(pooled.addr);
    let egress = Arc::new(AtomicU64::new(0));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::PROXY_AUTHORIZATION);
    if !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    parts.uri = origin_form(&uri);
    let upstream_req = Request::from_parts(parts, Counting::new(body, egress.clone()));
    let resp = match pooled.sender.send_request(upstream_req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(upstream = %pooled.addr, error = %e, "upstream request failed");
            return refuse(shared, ex, Reason::ConnectError);
        }
    };
    put_upstream(&conn, pooled).await;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    ex.status = Some(parts.status.as_u16());
    let body = Finishing::new(body, egress, ex, shared.clone()).boxed_unsync();
    Response::from_parts(parts, body)
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
    if list.len() >= MAX_UPSTREAMS {
        list.remove(0);
    }
    list.push(pooled);
}

async fn handshake(shared: &Arc<Shared>, up: Upstream) -> Result<SendRequest<UpstreamBody>, ()> {
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(up.stream))
        .await
        .map_err(|e| tracing::debug!(error = %e, "upstream handshake failed"))?;
    let abort = shared.abort.clone();
    shared.tracker.spawn(async move {
        tokio::select! {
            res = connection => if let Err(e) = res {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            },
            () = abort.cancelled() => {}
        }
    });
    Ok(sender)
}

/// A `Host` header, when present, must name the URI's host and port.
fn host_header_agrees(headers: &HeaderMap, host: &Host, port: u16) -> bool {
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
        Ok((h, p)) => Host::parse(h).is_ok_and(|h| h == *host) && p.unwrap_or(80) == port,
        Err(_) => false,
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1) and any header `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
        assert!(host_header_agrees(&HeaderMap::new(), &host, 80));
        assert!(host_header_agrees(&with("origin.test"), &host, 80));
        assert!(host_header_agrees(&with("ORIGIN.test:80"), &host, 80));
        assert!(host_header_agrees(&with("origin.test:8080"), &host, 8080));
        assert!(!host_header_agrees(&with("origin.test"), &host, 8080));
        assert!(!host_header_agrees(&with("evil.test"), &host, 80));
        assert!(!host_header_agrees(&with("origin.test:0080"), &host, 80));
    }
}
