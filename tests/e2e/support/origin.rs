//! Real origin servers on 127.0.0.1: an HTTP/1.1 echo server, a TCP echo and a server-first TCP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{AbortOnDrop, bind_loopback, spawn_accept_loop};

/// The origin's request handler, shared by [`HttpOrigin`] and the TLS origin.
///
/// * `/echo*` (any method): 200 with JSON `{"method", "path" (path+query), "uri" (request
///   target as parsed), "headers": [[name, value], ...], "body"}`. Header names are
///   lowercase (hyper normalises them); values are as received, one entry per field line.
/// * `/bytes/N`: 200 with N bytes of `x`.
/// * anything else: 200 `ok`.
pub async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Always read the whole body so the connection can be kept alive.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path = parts.uri.path();
    let (status, content_type, bytes) = if path.starts_with("/echo") {
        let headers: Vec<[String; 2]> = (parts.headers.iter())
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                [name.as_str().to_owned(), value]
            })
            .collect();
        let json = serde_json::json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map_or(path, |pq| pq.as_str()),
            "uri": parts.uri.to_string(),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        let json = serde_json::to_vec(&json).expect("serialise echo");
        (StatusCode::OK, "application/json", Bytes::from(json))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        match n.parse::<usize>() {
            Ok(n) => (StatusCode::OK, "text/plain", Bytes::from(vec![b'x'; n])),
            Err(_) => (StatusCode::BAD_REQUEST, "text/plain", Bytes::from("bad N")),
        }
    } else {
        (StatusCode::OK, "text/plain", Bytes::from_static(b"ok"))
    };
    let response = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(bytes))
        .expect("valid response");
    Ok(response)
}

/// Serves HTTP/1.1 with keep-alive on one connection (plain or TLS) until it closes.
pub async fn serve_http1<I>(io: I, requests: Arc<AtomicUsize>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        requests.fetch_add(1, Ordering::SeqCst);
        handle(req)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// An HTTP/1.1 origin on 127.0.0.1 serving [`handle`]; stops when dropped.
#[derive(Debug)]
pub struct HttpOrigin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

impl HttpOrigin {
    /// Binds 127.0.0.1:0 and starts serving; bound before this returns.
    pub async fn start() -> HttpOrigin {
        let listener = bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let reqs = requests.clone();
        let task = spawn_accept_loop(listener, connections.clone(), move |stream| {
            serve_http1(stream, reqs.clone())
        });
        HttpOrigin {
            addr,
            connections,
            requests,
            _task: task,
        }
    }

    /// Where the origin listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far (counted at accept, before any byte is read).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// HTTP requests received so far, over all connections.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Copies every byte back until EOF, then half-closes the write side.
async fn echo(mut stream: TcpStream) {
    let (mut read, mut write) = stream.split();
    let _ = tokio::io::copy(&mut read, &mut write).await;
    let _ = write.shutdown().await;
}

/// A raw TCP echo server on 127.0.0.1; stops when dropped.
#[derive(Debug)]
pub struct TcpEcho {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

impl TcpEcho {
    /// Binds 127.0.0.1:0 and starts echoing; bound before this returns.
    pub async fn start() -> TcpEcho {
        let listener = bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let task = spawn_accept_loop(listener, connections.clone(), echo);
        TcpEcho {
            addr,
            connections,
            _task: task,
        }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A server-first TCP server (like SMTP): sends a greeting on accept, then echoes.
#[derive(Debug)]
pub struct ServerFirst {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

impl ServerFirst {
    /// Binds 127.0.0.1:0; each accepted connection first receives `greeting`.
    pub async fn start(greeting: &'static [u8]) -> ServerFirst {
        let listener = bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let task = spawn_accept_loop(
            listener,
            connections.clone(),
            move |mut stream| async move {
                if stream.write_all(greeting).await.is_ok() {
                    echo(stream).await;
                }
            },
        );
        ServerFirst {
            addr,
            connections,
            _task: task,
        }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
