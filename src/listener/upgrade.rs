//! WebSocket over plain HTTP: which forwarded requests may ask the origin to
//! switch protocols, what the origin's `101` must say, and the tunnel the
//! two upgraded connections then become.
//!
//! Only `websocket` is passed on. Any other `Upgrade` (such as `h2c`) is
//! stripped with the other hop-by-hop headers, so the origin answers the
//! request in HTTP/1.1, and a `101` to it is refused as unasked.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::connect::{client_side, relay};
use super::http1::Conn;
use super::{Body, Exchange, REQUEST_ID_HEADER, full, request_id_value};
use crate::policy::Host;
use crate::state::{ConnSlot, Shared};
use crate::telemetry::Ending;
use crate::tunnel::{ClientSide, ClientStream, Counters};

/// The one protocol an upgrade may switch to.
const WEBSOCKET: &str = "websocket";

/// Whether `req` asks to switch to WebSocket: a `GET` over HTTP/1.1 whose
/// `Connection` names `upgrade` and whose `Upgrade` offers `websocket`
/// (RFC 6455 4.1).
pub(super) fn asks_websocket<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && lists(req.headers(), header::CONNECTION, "upgrade")
        && lists(req.headers(), header::UPGRADE, WEBSOCKET)
}

/// Puts back, after the hop-by-hop headers were stripped, the two that ask
/// the next hop for WebSocket (on the request) or agree to it (on the `101`).
pub(super) fn mark(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(WEBSOCKET));
}

/// Why the origin's `101` does not switch to WebSocket, if it does not:
/// its `Upgrade` must name `websocket` and nothing else.
pub(super) fn refused_switch(headers: &HeaderMap) -> Option<String> {
    let named: Vec<&str> = (headers.get_all(header::UPGRADE).iter())
        .map(|v| v.to_str().unwrap_or("(not text)"))
        .collect();
    match named.as_slice() {
        [one] if one.trim().eq_ignore_ascii_case(WEBSOCKET) => None,
        [] => Some("without an Upgrade header".to_string()),
        _ => {
            let shown: String = named.join(", ").chars().take(64).collect();
            Some(format!("with `Upgrade: {shown}`, not websocket"))
        }
    }
}

/// Whether a comma-separated header lists `token` (case-insensitively; a
/// protocol's `/version` is ignored).
fn lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    (headers.get_all(name).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split('/').next().unwrap_or("").trim())
        .any(|t| t.eq_ignore_ascii_case(token))
}

/// Answers the client with the origin's `101` (its end-to-end headers, the
/// proxy's request id) and hands both connections, once hyper lets go of
/// them, to a tunnel task that finishes `ex` when it ends.
pub(super) fn switch(
    conn: &Conn,
    mut ex: Exchange,
    target: (Host, u16),
    client: OnUpgrade,
    mut resp: Response<Incoming>,
) -> Response<Body> {
    let upstream = hyper::upgrade::on(&mut resp);
    let (mut parts, _empty) = resp.into_parts();
    super::forward::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    mark(&mut parts.headers);
    parts
        .headers
        .insert(REQUEST_ID_HEADER, request_id_value(ex.id()));
    ex.responded(parts.status.as_u16());
    let switched = Switched {
        shared: conn.shared.clone(),
        ex,
        target,
        slot: conn.slot.clone(),
    };
    let tracker = &conn.shared.lifecycle.tracker;
    tracker.spawn(switched.run(client, upstream).in_current_span());
    Response::from_parts(parts, full(""))
}

/// A WebSocket the origin agreed to, waiting for both upgraded connections.
struct Switched {
    shared: Arc<Shared>,
    ex: Exchange,
    target: (Host, u16),
    /// Keeps the client connection counted until the tunnel ends.
    slot: Arc<ConnSlot>,
}

impl Switched {
    /// Relays until the tunnel ends, then writes its record.
    async fn run(self, client: OnUpgrade, upstream: OnUpgrade) {
        let Switched {
            shared,
            mut ex,
            target,
            slot,
        } = self;
        let counters = Counters::default();
        match take_over(&shared, client, upstream, &counters).await {
            Ok(ends) => relay(&shared, &mut ex, ends, target, &counters, None).await,
            Err((end, error)) => {
                tracing::debug!(host = ?ex.host(), error, "WebSocket never became a tunnel");
                ex.relayed(counters.egress(), counters.ingress());
                ex.ended(end, Some(error));
            }
        }
        ex.finish(&shared.telemetry);
        drop(slot);
    }
}

/// Both sockets, once hyper has sent the client its `101`, with the bytes
/// the origin sent after its own `101` already passed on to the client (and
/// counted as ingress). Bounded by the idle timeout and the drain's abort.
async fn take_over(
    shared: &Shared,
    client: OnUpgrade,
    upstream: OnUpgrade,
    counters: &Counters,
) -> Result<(ClientSide, TcpStream), (Ending, String)> {
    let idle = shared.limits.idle_timeout;
    let work = async {
        let (client, upstream) = tokio::join!(client, upstream);
        let client = client.map_err(|e| format!("client upgrade failed: {e}"))?;
        let upstream = upstream.map_err(|e| format!("upstream upgrade failed: {e}"))?;
        let mut client = client_side(client).ok_or("the client upgrade is not a TCP stream")?;
        let upstream = (upstream.downcast::<TokioIo<TcpStream>>())
            .map_err(|_| "the upstream upgrade is not a TCP stream")?;
        greet(&mut client.stream, &upstream.read_buf)
            .await
            .map_err(|e| format!("passing on the origin's first bytes failed: {e}"))?;
        (counters.ingress).fetch_add(upstream.read_buf.len() as u64, Ordering::Relaxed);
        Ok((client, upstream.io.into_inner()))
    };
    tokio::select! {
        done = tokio::time::timeout(idle, work) => match done {
            Ok(Ok(ends)) => Ok(ends),
            Ok(Err(error)) => Err((Ending::Error, error)),
            Err(_) => Err((Ending::IdleTimeout, "the upgrade did not complete".to_string())),
        },
        () = shared.lifecycle.abort.cancelled() => {
            Err((Ending::Drain, "drained before the upgrade completed".to_string()))
        }
    }
}

/// Writes what the origin sent right after its `101` (a server-first
/// frame) to the client, before the relay starts.
async fn greet(client: &mut ClientStream, bytes: &Bytes) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    match client {
        ClientStream::Tcp(s) => s.write_all(bytes).await,
        ClientStream::Tls(s) => {
            s.write_all(bytes).await?;
            s.flush().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder()
            .method(method)
            .version(version)
            .uri("http://origin.test/ws");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap()
    }

    struct Case {
        name: &'static str,
        method: Method,
        version: Version,
        headers: &'static [(&'static str, &'static str)],
        websocket: bool,
    }

    #[test]
    fn which_requests_ask_for_websocket() {
        const WS: &[(&str, &str)] = &[("connection", "Upgrade"), ("upgrade", "websocket")];
        let case = |name, method, version, headers, websocket| Case {
            name,
            method,
            version,
            headers,
            websocket,
        };
        let cases = [
            case(
                "a plain WebSocket handshake",
                Method::GET,
                Version::HTTP_11,
                WS,
                true,
            ),
            case(
                "tokens in any case, among others",
                Method::GET,
                Version::HTTP_11,
                &[
                    ("connection", "keep-alive, UPGRADE"),
                    ("upgrade", "h2c, WebSocket"),
                ],
                true,
            ),
            case(
                "h2c is not websocket",
                Method::GET,
                Version::HTTP_11,
                &[("connection", "upgrade"), ("upgrade", "h2c")],
                false,
            ),
            case(
                "Upgrade not named in Connection",
                Method::GET,
                Version::HTTP_11,
                &[("upgrade", "websocket")],
                false,
            ),
            case(
                "a POST opens no WebSocket",
                Method::POST,
                Version::HTTP_11,
                WS,
                false,
            ),
            case(
                "HTTP/1.0 has no upgrades",
                Method::GET,
                Version::HTTP_10,
                WS,
                false,
            ),
            case(
                "no upgrade at all",
                Method::GET,
                Version::HTTP_11,
                &[],
                false,
            ),
        ];
        for c in cases {
            let req = request(c.method, c.version, c.headers);
            assert_eq!(asks_websocket(&req), c.websocket, "{}", c.name);
        }
    }

    #[test]
    fn a_101_must_name_websocket_alone() {
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::UPGRADE, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        assert_eq!(refused_switch(&with(&["websocket"])), None);
        assert_eq!(refused_switch(&with(&["WebSocket"])), None);
        assert_eq!(
            refused_switch(&with(&[])).as_deref(),
            Some("without an Upgrade header")
        );
        assert_eq!(
            refused_switch(&with(&["h2c"])).as_deref(),
            Some("with `Upgrade: h2c`, not websocket")
        );
        assert!(refused_switch(&with(&["websocket", "h2c"])).is_some());
    }

    #[test]
    fn marking_replaces_whatever_connection_said() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        mark(&mut h);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }
}
