//! Listeners: accepting connections (each in its own tracing span) and answering refusals.
//!
//! [`http1`] serves HTTP/1 connections (explicit and transparent), handing
//! CONNECT to `connect` and other requests to `forward`; [`tls`] is the
//! transparent TLS listener; [`Exchange`] is what each of them records.

pub(crate) mod body;
mod connect;
mod exchange;
mod forward;
pub(crate) mod http1;
pub(crate) mod mtls;
mod proxy_auth;
pub(crate) mod proxy_protocol;
pub(crate) mod tls;
mod upgrade;

pub(crate) use exchange::{Exchange, Refusal};
use proxy_protocol::{HeaderError, ProxyProtocol};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::ext::ReasonPhrase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::limits::{ACCEPT_BACKOFF, OVERLOADED_ANSWER, RESERVE_WAIT};
use crate::policy::Reason;
use crate::state::{ConnSlot, Permit, Shared};
use crate::telemetry::audit::Event;
use crate::telemetry::diag::RateLimit;
use crate::telemetry::{Listener, RequestId, Telemetry};

/// The client end of a connection, as the proxy decides for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    /// The client's address: the PROXY protocol header's source with
    /// `--proxy-protocol`, else the TCP peer.
    pub addr: SocketAddr,
    /// The AWS VPC endpoint the connection came through (PROXY protocol v2,
    /// AWS TLV), for the policy's `vpc_endpoints`.
    pub vpc_endpoint: Option<Arc<str>>,
}

impl Peer {
    /// A client known by its address only.
    pub(crate) fn at(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            vpc_endpoint: None,
        }
    }
}

/// Response bodies the proxy sends: its own short texts or a relayed origin body.
pub(crate) type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// The header that names why the proxy refused.
pub(crate) const REASON_HEADER: &str = "x-portcullis-reason";

/// The header that carries the exchange's audit `request_id`, on every
/// response the proxy writes or relays.
pub(crate) const REQUEST_ID_HEADER: &str = "x-portcullis-request-id";

/// `id` as a header value.
pub(crate) fn request_id_value(id: RequestId) -> HeaderValue {
    HeaderValue::try_from(id.to_string()).expect("a UUID is a valid header value")
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The error response: status, `X-Portcullis-Reason`, `X-Portcullis-Request-Id`,
/// a one-line body naming the reason and the detail, `Connection: close`.
pub(crate) fn error_response(
    refusal: &Refusal,
    id: RequestId,
    deny_message: Option<&str>,
) -> Response<Body> {
    let reason = refusal.reason;
    let status = http_status(reason).unwrap_or(StatusCode::FORBIDDEN);
    let mut body = error_body(refusal);
    if let Some(message) = deny_message {
        body.push_str(message);
        body.push('\n');
    }
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    if let Some(phrase) = reason_phrase(status, reason) {
        resp.extensions_mut().insert(phrase);
    }
    let h = resp.headers_mut();
    h.insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    h.insert(REQUEST_ID_HEADER, request_id_value(id));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if reason == Reason::ProxyAuthRequired {
        h.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static(proxy_auth::CHALLENGE),
        );
    }
    resp
}

/// The status line's reason phrase: the standard one and the reason code,
/// `Forbidden (portcullis: not_allowed)`. Python, Java and git print the
/// status line of a failed CONNECT and nothing else, so the cause reaches
/// the person reading the error.
fn reason_phrase(status: StatusCode, reason: Reason) -> Option<ReasonPhrase> {
    let standard = status.canonical_reason().unwrap_or("Error");
    ReasonPhrase::try_from(format!("{standard} (portcullis: {})", reason.as_str())).ok()
}

/// The HTTP status an explicit-proxy client receives for `reason`; `None`
/// for the reasons only a TLS tunnel ends with (answered with an alert, if at all).
fn http_status(reason: Reason) -> Option<StatusCode> {
    match reason {
        Reason::Allowed => Some(StatusCode::OK),
        Reason::NotAllowed | Reason::ClientNotAllowed | Reason::BlockedIp => {
            Some(StatusCode::FORBIDDEN)
        }
        Reason::BadRequest => Some(StatusCode::BAD_REQUEST),
        Reason::DnsError | Reason::ConnectError => Some(StatusCode::BAD_GATEWAY),
        Reason::ConnectTimeout => Some(StatusCode::GATEWAY_TIMEOUT),
        Reason::Overloaded | Reason::AuditUnavailable => Some(StatusCode::SERVICE_UNAVAILABLE),
        Reason::ProxyAuthRequired => Some(StatusCode::PROXY_AUTHENTICATION_REQUIRED),
        Reason::SniMismatch
        | Reason::EchRefused
        | Reason::NoSni
        | Reason::PolicyRevoked
        | Reason::TlsViolation => None,
    }
}

/// `portcullis: REASON: DETAIL`, one line: control characters in the detail
/// (which may quote what the client sent) become spaces.
fn error_body(refusal: &Refusal) -> String {
    let detail: String = (refusal.detail().chars())
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("portcullis: {}: {detail}\n", refusal.reason.as_str())
}

/// The destination an iptables/nftables REDIRECT rule rewrote, when the
/// connection was redirected (`SO_ORIGINAL_DST` reports the listener's own
/// address when it was not).
pub(crate) fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let dst = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    let dst = dst.ok()?.as_socket()?;
    (dst != local).then_some(dst)
}

/// Accepts until draining, handing each connection (with its slot) to `serve`.
/// Beyond `--max-connections`, `refuse_overloaded` answers instead. With
/// `--proxy-protocol`, the connection's task reads its header first.
pub(crate) async fn accept_loop<F, Fut>(
    shared: Arc<Shared>,
    listener: TcpListener,
    kind: Listener,
    serve: F,
) where
    F: Fn(Arc<Shared>, TcpStream, Peer, ConnSlot) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // One descriptor held back: when the process runs out, it is given up
    // so that the waiting client can still be told `503 overloaded`.
    let mut reserve = std::fs::File::open("/dev/null").ok();
    let inherited = SocketOptions::set_on_listener(&listener);
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.lifecycle.draining.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) if is_fd_exhaustion(&e) && reserve.is_some() => {
                static LIMIT: RateLimit = RateLimit::new();
                if let Some(suppressed) = LIMIT.allow() {
                    tracing::warn!(
                        listener = kind.as_str(),
                        suppressed,
                        "out of file descriptors; refusing with 503"
                    );
                }
                drop(reserve.take());
                // Every worker thread may be here for the same waiting client:
                // the one that gets it answers; the others must not park on
                // `accept` (and miss the drain) waiting for the next client.
                let accepted = tokio::select! {
                    biased;
                    () = shared.lifecycle.draining.cancelled() => return,
                    accepted = tokio::time::timeout(RESERVE_WAIT, listener.accept()) => accepted,
                };
                if let Ok(Ok((stream, peer))) = accepted {
                    shared.lifecycle.tracker.spawn(refuse_overloaded(
                        shared.telemetry.clone(),
                        stream,
                        peer,
                        kind,
                    ));
                }
                tokio::time::sleep(RESERVE_WAIT).await;
                reserve = std::fs::File::open("/dev/null").ok();
                continue;
            }
            Err(e) => {
                // Still out of descriptors, or a transient error: back off instead of spinning.
                tracing::debug!(listener = kind.as_str(), error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                reserve = reserve.or_else(|| std::fs::File::open("/dev/null").ok());
                continue;
            }
        };
        inherited.complete(&stream, peer);
        let span = connection_span(kind, peer);
        let tracker = &shared.lifecycle.tracker;
        let Some(permit) = shared.admission.try_permit(kind) else {
            let refuse = refuse_overloaded(shared.telemetry.clone(), stream, peer, kind);
            tracker.spawn(refuse.instrument(span));
            continue;
        };
        if let Some(pp) = &shared.limits.proxy_protocol {
            let task = behind_proxy(
                shared.clone(),
                pp.clone(),
                stream,
                peer,
                permit,
                kind,
                serve.clone(),
            );
            tracker.spawn(task.instrument(span));
            continue;
        }
        match shared.admission.try_source(permit, peer.ip()) {
            Some(slot) => {
                tracker.spawn(serve(shared.clone(), stream, Peer::at(peer), slot).instrument(span));
            }
            None => {
                let refuse = refuse_overloaded(shared.telemetry.clone(), stream, peer, kind);
                tracker.spawn(refuse.instrument(span));
            }
        }
    }
}

/// Serves a connection that starts with a PROXY protocol header: the
/// header's client is the one counted against `--max-connections-per-client`
/// and decided for. A connection without an acceptable header is closed,
/// counted and audited as `bad_request`; one that sends nothing at all is
/// only closed, like a port check on a listener without the header.
async fn behind_proxy<F, Fut>(
    shared: Arc<Shared>,
    pp: ProxyProtocol,
    mut stream: TcpStream,
    tcp_peer: SocketAddr,
    permit: Permit,
    kind: Listener,
    serve: F,
) where
    F: Fn(Arc<Shared>, TcpStream, Peer, ConnSlot) -> Fut,
    Fut: Future<Output = ()>,
{
    let timeout = shared.limits.header_timeout;
    let read = tokio::select! {
        biased;
        () = shared.lifecycle.draining.cancelled() => return,
        read = pp.read(&mut stream, tcp_peer, timeout) => read,
    };
    let peer = match read {
        Ok(peer) => peer,
        Err(e) => return refuse_header(&shared, kind, tcp_peer, &e),
    };
    tracing::Span::current().record("client", tracing::field::display(peer.addr));
    tracing::debug!(client = %peer.addr, vpc_endpoint = ?peer.vpc_endpoint, "PROXY protocol header");
    match shared.admission.try_source(permit, peer.addr.ip()) {
        Some(slot) => serve(shared, stream, peer, slot).await,
        None => refuse_overloaded(shared.telemetry.clone(), stream, peer.addr, kind).await,
    }
}

/// Counts and audits a refused PROXY protocol header; dropping the stream closes it.
fn refuse_header(shared: &Shared, kind: Listener, tcp_peer: SocketAddr, e: &HeaderError) {
    let Some(problem) = e.problem() else { return };
    tracing::debug!(peer = %tcp_peer, problem = problem.as_str(), error = %e, "PROXY protocol header refused");
    shared.telemetry.metrics.proxy_protocol_error(problem);
    let mut ex = Exchange::new(kind, Event::Connection, tcp_peer);
    ex.bad_request(&shared.policy.load());
    ex.refused(Refusal::new(Reason::BadRequest, e.to_string()), None);
    ex.finish(&shared.telemetry);
}

/// The span every diagnostic line about one client connection is logged in,
/// so that lines of concurrent connections can be told apart. At `debug`
/// level only: with debug lines off it is disabled, and neither the id nor
/// the fields are computed.
fn connection_span(kind: Listener, peer: SocketAddr) -> tracing::Span {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    tracing::debug_span!(
        "conn",
        listener = kind.as_str(),
        %peer,
        // The PROXY protocol header's source, once read.
        client = tracing::field::Empty,
        id = NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// Options every accepted connection gets. Set once on the listening
/// socket where Linux passes them on to accepted sockets, saving a
/// `setsockopt` or two per connection; set per connection otherwise.
struct SocketOptions {
    /// Accepted sockets come with `TCP_NODELAY`.
    nodelay: bool,
    /// Accepted sockets come with Reno (the listener only sees loopback clients).
    reno: bool,
}

impl SocketOptions {
    fn set_on_listener(listener: &TcpListener) -> SocketOptions {
        let sock = socket2::SockRef::from(listener);
        let loopback = listener.local_addr().is_ok_and(|a| is_loopback(a.ip()));
        SocketOptions {
            nodelay: cfg!(target_os = "linux") && sock.set_tcp_nodelay(true).is_ok(),
            reno: cfg!(target_os = "linux") && loopback && sock.set_tcp_congestion(b"reno").is_ok(),
        }
    }

    fn complete(&self, stream: &TcpStream, peer: SocketAddr) {
        if !self.nodelay {
            let _ = stream.set_nodelay(true);
        }
        if !self.reno {
            same_host_congestion(stream, peer);
        }
    }
}

/// A connection with a loopback peer (the application next to a sidecar, or
/// an upstream on loopback that the policy's `ip_guard` lets through) uses
/// Reno instead of the host's default congestion control. Over loopback
/// there is no congestion to control, but a pacing algorithm such as BBR
/// still paces every send with timers: on a BBR host, downloads through a
/// loopback client connection took 0.25 s of proxy CPU per GiB with BBR and
/// 0.16-0.22 s with Reno, at 1.3-1.6x the throughput, and uploads to a
/// loopback origin ran at 14-15 Gbit/s with BBR and 19-23 with Reno (README
/// "Performance"). Every other connection keeps the host's choice. Best
/// effort: on failure the default stays.
///
/// For accepted sockets this runs after the handshake, unless the listener
/// (bound to loopback) already passed Reno on; upstream sockets get it
/// before they connect (`dial`).
fn same_host_congestion(stream: &TcpStream, peer: SocketAddr) {
    if is_loopback(peer.ip()) {
        let _ = socket2::SockRef::from(stream).set_tcp_congestion(b"reno");
    }
}

/// Loopback, including the IPv4-mapped form an IPv4 peer of a `[::]` socket
/// shows (::ffff:127.0.0.1).
pub(crate) fn is_loopback(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// EMFILE / ENFILE: the process or the system is out of file descriptors.
pub(crate) fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Answers `503 overloaded` without parsing anything, then closes. The
/// client's request is drained briefly so that closing does not reset the
/// connection before the client has read the answer.
async fn refuse_overloaded(
    telemetry: Telemetry,
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
) {
    let mut ex = Exchange::new(kind, Event::Connection, peer);
    let id = ex.id();
    let refusal = Refusal::from(Reason::Overloaded);
    ex.refused(refusal.clone(), Some(503));
    ex.finish(&telemetry);
    // A TLS client would read plain HTTP as garbage: close without an answer.
    if matches!(kind, Listener::TransparentTls | Listener::ExplicitTls) {
        return;
    }
    let body = error_body(&refusal);
    let head = format!(
        "HTTP/1.1 503 Service Unavailable (portcullis: {})\r\n{REASON_HEADER}: {}\r\n{REQUEST_ID_HEADER}: {id}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        Reason::Overloaded.as_str(),
        Reason::Overloaded.as_str(),
        body.len()
    );
    let io = async {
        stream.write_all(head.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            if stream.read(&mut sink).await? == 0 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(OVERLOADED_ANSWER, io).await;
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// Accepts one client of `listen` connecting to `connect_ip`, with the accepted socket
    /// on Cubic; returns it with its peer address, or `None` where that cannot be set up.
    async fn accepted_on_cubic(listen: &str, connect_ip: &str) -> Option<(TcpStream, SocketAddr)> {
        let listener = TcpListener::bind(listen).await.ok()?;
        let port = listener.local_addr().ok()?.port();
        let client = TcpStream::connect((connect_ip, port)).await.ok()?;
        let (accepted, peer) = listener.accept().await.ok()?;
        drop(client);
        let sock = socket2::SockRef::from(&accepted);
        // Start from something else than Reno, whatever the host's default is.
        sock.set_tcp_congestion(b"cubic").unwrap();
        assert_eq!(congestion(&accepted), "cubic");
        Some((accepted, peer))
    }

    fn congestion(stream: &TcpStream) -> String {
        let name = socket2::SockRef::from(stream).tcp_congestion().unwrap();
        String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_string()
    }

    #[tokio::test]
    async fn loopback_clients_get_reno() {
        let (accepted, peer) = accepted_on_cubic("127.0.0.1:0", "127.0.0.1").await.unwrap();
        same_host_congestion(&accepted, peer);
        assert_eq!(congestion(&accepted), "reno");
    }

    /// A loopback listener hands out sockets that already have `TCP_NODELAY` and Reno.
    #[tokio::test]
    async fn a_loopback_listener_passes_nodelay_and_reno_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sock = socket2::SockRef::from(&listener);
        sock.set_tcp_congestion(b"cubic").unwrap();
        let options = SocketOptions::set_on_listener(&listener);
        assert!(options.nodelay && options.reno);
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        assert_eq!(congestion(&accepted), "reno");
    }

    /// An IPv4 client of a dual-stack `[::]` listener arrives as ::ffff:127.0.0.1.
    #[tokio::test]
    async fn mapped_loopback_clients_get_reno() {
        let Some((accepted, peer)) = accepted_on_cubic("[::]:0", "127.0.0.1").await else {
            eprintln!("skipped: no dual-stack IPv6 listener here");
            return;
        };
        assert!(peer.is_ipv6(), "{peer}");
        same_host_congestion(&accepted, peer);
        assert_eq!(congestion(&accepted), "reno");
    }
}
