//! Loopback origins: a raw TCP origin (sink / source / echo, chosen by the first byte) and a
//! hyper HTTP/1.1 origin serving `GET /bytes/N`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// First byte of a raw-origin connection: discard everything the client sends.
pub const MODE_SINK: u8 = b'S';
/// First byte of a raw-origin connection, followed by a big-endian u64 N: the origin
/// writes N bytes, then closes.
pub const MODE_SOURCE: u8 = b'D';
/// Any other first byte (we use this one): echo every byte, the first one included.
pub const MODE_ECHO: u8 = b'E';

/// Size of the buffers the source writes from and the sink reads into.
pub const BULK_BUF: usize = 256 * 1024;

/// Largest body `/bytes/N` serves.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Where the two origins listen.
#[derive(Debug, Clone, Copy)]
pub struct Origins {
    pub raw: SocketAddr,
    pub http: SocketAddr,
}

/// Binds both origins on 127.0.0.1 (port 0 = OS-chosen) and serves them in the background.
pub async fn start(raw_port: u16, http_port: u16) -> Result<Origins, String> {
    let raw = bind(raw_port, "raw origin").await?;
    let http = bind(http_port, "HTTP origin").await?;
    let origins = Origins {
        raw: raw.local_addr().map_err(|e| e.to_string())?,
        http: http.local_addr().map_err(|e| e.to_string())?,
    };
    tokio::spawn(accept_loop(raw, |s| Box::pin(serve_raw(s))));
    tokio::spawn(accept_loop(http, |s| Box::pin(serve_http(s))));
    Ok(origins)
}

async fn bind(port: u16, what: &str) -> Result<TcpListener, String> {
    // std's listener has a fixed backlog of 128; build it with a deep one for connection storms.
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.set_reuseaddr(true).map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .map_err(|e| format!("{what}: cannot bind 127.0.0.1:{port}: {e}"))?;
    sock.listen(4096)
        .map_err(|e| format!("{what}: listen: {e}"))
}

type ConnFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Accepts forever; an accept error (e.g. EMFILE) pauses briefly instead of ending the loop.
async fn accept_loop(listener: TcpListener, serve: fn(TcpStream) -> ConnFuture) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream));
            }
            Err(e) => {
                eprintln!("origin accept error: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// One raw-origin connection; the mode is chosen by the client's first byte.
async fn serve_raw(mut stream: TcpStream) {
    let mut first = [0u8; 1];
    if !matches!(stream.read(&mut first).await, Ok(1)) {
        return;
    }
    match first[0] {
        MODE_SINK => {
            let mut buf = vec![0u8; BULK_BUF];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        MODE_SOURCE => {
            let mut len = [0u8; 8];
            if stream.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut left = u64::from_be_bytes(len);
            let buf = vec![b'x'; BULK_BUF];
            while left > 0 {
                let n = left.min(BULK_BUF as u64) as usize;
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                left -= n as u64;
            }
            let _ = stream.shutdown().await;
        }
        _ => {
            // Echo: small buffer, since the idle-tunnel figure holds thousands of these.
            if stream.write_all(&first).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = stream.shutdown().await;
        }
    }
}

/// One HTTP/1.1 keep-alive connection.
async fn serve_http(stream: TcpStream) {
    let service = hyper::service::service_fn(handle);
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The body bytes every response slices from.
fn filler() -> &'static Bytes {
    static FILLER: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    FILLER.get_or_init(|| Bytes::from(vec![b'x'; 1024 * 1024]))
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = req
        .uri()
        .path()
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok());
    let response = match n {
        Some(n) if n <= MAX_BODY => {
            let body = if n <= filler().len() {
                filler().slice(..n)
            } else {
                Bytes::from(vec![b'x'; n])
            };
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(Full::new(body))
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"try /bytes/N\n"))),
    };
    Ok(response.expect("valid response"))
}
