//! HTTP/1 client connections on the explicit and transparent-HTTP listeners:
//! one exchange per request, each decided on its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::forward::{Pooled, forward};
use super::{Body, Exchange, Peer, Refusal, connect, error_response, proxy_auth};
use crate::limits::MAX_HEAD_BYTES;
use crate::policy::host::split_host_port;
use crate::policy::{CertName, Host, Reason};
use crate::state::{ConnSlot, PolicyStore, Shared, Snapshot};
use crate::telemetry::audit::Event;
use crate::telemetry::{Listener, Telemetry};

/// State of one client connection.
pub(super) struct Conn {
    pub shared: Arc<Shared>,
    pub listener: Listener,
    /// The client's address (a PROXY protocol header's source, if any).
    pub peer: SocketAddr,
    /// The VPC endpoint a PROXY protocol v2 header named.
    pub vpc_endpoint: Option<Arc<str>>,
    /// Where the client meant to go, when iptables redirected it here.
    pub original_dst: Option<SocketAddr>,
    /// Shared with tunnels this connection becomes, so the slot lives as long as they do.
    pub slot: Arc<ConnSlot>,
    /// Idle keep-alive upstreams.
    pub upstreams: Mutex<Vec<Pooled>>,
    /// The names of the client's verified certificate (`--listen-tls`); empty otherwise.
    pub certificate: Arc<[CertName]>,
}

/// Serves an explicit-proxy client connection.
pub(crate) async fn serve_explicit(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: Peer,
    slot: ConnSlot,
) {
    serve(shared, stream, peer, slot, Listener::Explicit).await
}

/// Serves a client connection redirected to the transparent HTTP listener.
pub(crate) async fn serve_transparent(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: Peer,
    slot: ConnSlot,
) {
    serve(shared, stream, peer, slot, Listener::TransparentHttp).await
}

/// Serves a client connection of the TLS listener, whose certificate had `certificate`'s names.
pub(crate) async fn serve_tls(
    shared: Arc<Shared>,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
    slot: ConnSlot,
    certificate: Arc<[CertName]>,
) {
    let conn = Conn {
        shared: shared.clone(),
        listener: Listener::ExplicitTls,
        peer: peer.addr,
        vpc_endpoint: peer.vpc_endpoint,
        original_dst: None,
        slot: Arc::new(slot),
        upstreams: Mutex::new(Vec::new()),
        certificate,
    };
    serve_io(conn, stream).await
}

/// Serves one client connection until it closes or the proxy drains.
async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: Peer,
    slot: ConnSlot,
    listener: Listener,
) {
    let Peer {
        addr: peer,
        vpc_endpoint,
    } = peer;
    let original_dst = match listener {
        Listener::TransparentHttp => super::original_dst(&stream),
        _ => None,
    };
    let conn = Conn {
        shared: shared.clone(),
        listener,
        peer,
        vpc_endpoint,
        original_dst,
        slot: Arc::new(slot),
        upstreams: Mutex::new(Vec::new()),
        certificate: Arc::from([]),
    };
    serve_io(conn, stream).await
}

/// Speaks HTTP/1 on `io` (a TCP or TLS stream) for `conn`.
async fn serve_io<I>(conn: Conn, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shared = conn.shared.clone();
    let (listener, peer) = (conn.listener, conn.peer);
    let conn = Arc::new(conn);
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
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(http);
    tokio::select! {
        res = http.as_mut() => conn_end(&shared.telemetry, &shared.policy, listener, peer, res),
        () = shared.lifecycle.draining.cancelled() => {
            http.as_mut().graceful_shutdown();
            tokio::select! {
                res = http => conn_end(&shared.telemetry, &shared.policy, listener, peer, res),
                () = shared.lifecycle.abort.cancelled() => {}
            }
        }
    }
}

/// Logs how a client connection ended. A request head the HTTP parser
/// refused never reached [`handle`]: it is audited and counted here as
/// `bad_request`, with the status the parser answered.
fn conn_end(
    telemetry: &Telemetry,
    policy: &PolicyStore,
    listener: Listener,
    peer: SocketAddr,
    res: Result<(), hyper::Error>,
) {
    let Err(e) = res else { return };
    tracing::debug!(%peer, error = %e, "client connection ended with an error");
    if !e.is_parse() {
        return;
    }
    let (status, detail) = if e.is_parse_version_h2() {
        // Closed without an answer.
        (
            None,
            "an HTTP/2 connection preface: this proxy speaks HTTP/1.1".to_string(),
        )
    } else if e.is_parse_too_large() {
        // A head over `MAX_HEAD_BYTES`. (hyper's 414 needs a 64 KiB URI,
        // which never fits under that limit.)
        (
            Some(431),
            format!("request head over {MAX_HEAD_BYTES} bytes"),
        )
    } else {
        (Some(400), format!("unparseable request head: {e}"))
    };
    let mut ex = Exchange::new(listener, Event::Request, peer);
    ex.bad_request(&policy.load());
    ex.refused(Refusal::new(Reason::BadRequest, detail), status);
    ex.finish(telemetry);
}

async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let snap = conn.shared.policy.load_full();
    let event = if req.method() == Method::CONNECT {
        Event::Connection
    } else {
        Event::Request
    };
    let mut ex = Exchange::new(conn.listener, event, conn.peer);
    ex.requested(req.method().as_str());
    ex.connection_credentials(conn.certificate.clone(), conn.vpc_endpoint.clone());
    ex.undecided_on(&snap);
    if !ex.admit(&conn.shared.telemetry) {
        return refusal(&conn.shared.telemetry, ex, Reason::AuditUnavailable);
    }
    // Only a policy that lists tokens reads the header: elsewhere a client
    // that always sends one keeps working as before.
    if snap.policy.uses_tokens {
        match proxy_auth::presented(req.headers()) {
            Ok(Some(token)) => ex.presented(token),
            Ok(None) => {}
            Err(why) => {
                if let Some(a) = req.uri().authority() {
                    ex.target_raw(a.as_str(), a.port_u16());
                }
                ex.bad_credentials(&snap);
                let refused = Refusal::new(Reason::ProxyAuthRequired, why);
                return refusal(&conn.shared.telemetry, ex, refused);
            }
        }
    }
    match (conn.listener, req.method()) {
        (Listener::Explicit | Listener::ExplicitTls, &Method::CONNECT) => {
            connect::connect(conn, snap, ex, req).await
        }
        // A redirected client speaks to the origin: CONNECT makes no sense there.
        (_, &Method::CONNECT) => {
            ex.bad_request(&snap);
            let why = "CONNECT sent to the transparent HTTP listener";
            refusal(
                &conn.shared.telemetry,
                ex,
                Refusal::new(Reason::BadRequest, why),
            )
        }
        _ => forward(conn, snap, ex, req).await,
    }
}

/// Ends the exchange with an error response, returned to send.
pub(super) fn refusal(
    telemetry: &Telemetry,
    mut ex: Exchange,
    refusal: impl Into<Refusal>,
) -> Response<Body> {
    let refusal = refusal.into();
    let resp = error_response(&refusal, ex.id(), ex.deny_message());
    ex.refused(refusal, Some(resp.status().as_u16()));
    ex.finish(telemetry);
    resp
}

/// Parses and decides `host[:port]`; `Err` is the refusal to send.
pub(super) fn decide_target(
    snap: &Snapshot,
    ex: &mut Exchange,
    authority: &str,
    default_port: Option<u16>,
) -> Result<(Host, u16), Refusal> {
    // The detail says what is wrong without echoing the client's bytes: the
    // audit record's `host` keeps them (truncated), the body does not.
    let parsed = split_host_port(authority).and_then(|(h, p)| {
        ex.target_raw(h, p.or(default_port));
        Ok((Host::parse(h)?, p.or(default_port)))
    });
    let (host, port) = match parsed {
        Ok((host, Some(port))) => (host, port),
        Ok((_, None)) => {
            ex.bad_request(snap);
            let detail = "the CONNECT target names no port (host:port)";
            return Err(Refusal::new(Reason::BadRequest, detail));
        }
        Err(e) => {
            if ex.host().is_none() {
                ex.target_raw(authority, None);
            }
            ex.bad_request(snap);
            let detail = format!("the destination is not valid: {e}");
            return Err(Refusal::new(Reason::BadRequest, detail));
        }
    };
    let decision = ex.decide(snap, &host, port);
    if decision.verdict.permits() {
        Ok((host, port))
    } else {
        let decision = ex.decision().expect("just decided");
        let detail = (snap.policy).refusal_detail(ex.credentials(), &host, port, decision);
        Err(Refusal::new(decision.reason, detail))
    }
}
