//! Raw HTTP/1.1 clients for exact-bytes cases: CONNECT, absolute-form requests, response heads, curl.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::Command;
use tokio::time::{Instant, timeout};

use super::{AbortOnDrop, spawn_accept_loop};

/// Bound on any single network step; a test fails rather than hangs.
pub const IO: Duration = Duration::from_secs(10);

/// The loopback address test names resolve to.
pub const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A parsed response status line and header fields (body left unread on the stream).
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub raw: String,
}

impl Head {
    /// The first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the `Connection` field lists `close`.
    pub fn closes(&self) -> bool {
        (self.header("connection").unwrap_or(""))
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    }
}

/// Connects to `addr` from 127.0.0.1.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    timeout(IO, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect {addr}: timed out"))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// Connects to `addr` from the source address `src` (e.g. 127.0.0.2), to be another client.
pub async fn connect_from(src: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((src, 0)))
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    timeout(IO, socket.connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect {addr} from {src}: timed out"))
        .unwrap_or_else(|e| panic!("connect {addr} from {src}: {e}"))
}

/// Writes all of `bytes`, failing the test on error.
pub async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    timeout(IO, stream.write_all(bytes))
        .await
        .expect("write timed out")
        .expect("write");
}

/// Writes `CONNECT target HTTP/1.1` with a matching `Host`.
pub async fn send_connect(stream: &mut TcpStream, target: &str) {
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    send(stream, req.as_bytes()).await;
}

/// Reads a response head byte by byte (so no tunnel byte is consumed). `Ok(None)` on EOF
/// before the first byte.
pub async fn try_read_head<R: AsyncRead + Unpin>(stream: &mut R) -> io::Result<Option<Head>> {
    let mut buf = Vec::new();
    let read = async {
        while !buf.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await? == 0 {
                if buf.is_empty() {
                    return Ok(false);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF inside head: {:?}", String::from_utf8_lossy(&buf)),
                ));
            }
            buf.push(byte[0]);
            if buf.len() > 64 * 1024 {
                return Err(io::Error::other("response head over 64 KiB"));
            }
        }
        Ok(true)
    };
    match timeout(IO, read).await {
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no response head")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(false)) => Ok(None),
        Ok(Ok(true)) => parse_head(&String::from_utf8_lossy(&buf)).map(Some),
    }
}

fn parse_head(raw: &str) -> io::Result<Head> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad head: {raw:?}"));
    let mut lines = raw.split("\r\n");
    let status_line = lines.next().ok_or_else(bad)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().ok_or_else(bad)?;
    if !version.starts_with("HTTP/1.") {
        return Err(bad());
    }
    let status = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let headers = (lines.filter(|l| !l.is_empty()))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Head {
        status,
        headers,
        raw: raw.to_owned(),
    })
}

/// Reads a response head, failing the test on EOF, error or timeout.
pub async fn read_head<R: AsyncRead + Unpin>(stream: &mut R) -> Head {
    match try_read_head(stream).await {
        Ok(Some(head)) => head,
        Ok(None) => panic!("connection closed before a response head"),
        Err(e) => panic!("reading response head: {e}"),
    }
}

/// Reads the body of a response to a non-HEAD, non-CONNECT request: Content-Length,
/// chunked, or until EOF.
pub async fn read_body<R: AsyncRead + Unpin>(stream: &mut R, head: &Head) -> Vec<u8> {
    let read = async {
        let mut body = Vec::new();
        if let Some(len) = head.header("content-length") {
            let len: usize = len.parse().expect("numeric Content-Length");
            body.resize(len, 0);
            stream.read_exact(&mut body).await?;
        } else if (head.header("transfer-encoding").unwrap_or("")).contains("chunked") {
            loop {
                let line = read_line(stream).await?;
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    while !read_line(stream).await?.is_empty() {}
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                stream.read_exact(&mut body[start..]).await?;
                read_line(stream).await?;
            }
        } else {
            stream.read_to_end(&mut body).await?;
        }
        io::Result::Ok(body)
    };
    timeout(IO, read)
        .await
        .expect("reading body timed out")
        .expect("reading body")
}

async fn read_line<R: AsyncRead + Unpin>(stream: &mut R) -> io::Result<String> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        line.push(stream.read_u8().await?);
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Asserts an error response exactly as docs/reference/refusals.md describes it: `status`, `X-Portcullis-Reason`,
/// a one-line `text/plain` body and `Connection: close`; then that the proxy closes.
pub async fn expect_refusal(stream: &mut TcpStream, status: u16, reason: &str) {
    let head = read_head(stream).await;
    assert_eq!(
        (head.status, head.header("x-portcullis-reason")),
        (status, Some(reason)),
        "response:\n{}",
        head.raw
    );
    assert!(head.closes(), "no `Connection: close`:\n{}", head.raw);
    let content_type = head.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain"),
        "Content-Type {content_type:?}:\n{}",
        head.raw
    );
    let body = String::from_utf8(read_body(stream, &head).await).expect("UTF-8 body");
    let line = body.strip_suffix('\n').unwrap_or(&body);
    let line = line.strip_suffix('\r').unwrap_or(line);
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "body is not one line: {body:?}"
    );
    expect_closed(stream, IO).await;
}

/// Sends `CONNECT target` on a fresh connection and asserts the refusal of docs/reference/refusals.md.
pub async fn connect_refused(proxy: SocketAddr, target: &str, status: u16, reason: &str) {
    let mut stream = connect(proxy).await;
    send_connect(&mut stream, target).await;
    expect_refusal(&mut stream, status, reason).await;
}

/// Opens a CONNECT tunnel and asserts `200`; the stream is then the tunnel.
pub async fn open_tunnel(proxy: SocketAddr, target: &str) -> TcpStream {
    let mut stream = connect(proxy).await;
    tunnel_on(&mut stream, target).await;
    stream
}

/// Sends `CONNECT target` on `stream` and asserts `HTTP/1.1 200`.
pub async fn tunnel_on(stream: &mut TcpStream, target: &str) {
    send_connect(stream, target).await;
    let head = read_head(stream).await;
    assert_eq!(head.status, 200, "CONNECT {target}:\n{}", head.raw);
    assert!(
        head.raw.starts_with("HTTP/1.1 200"),
        "status line: {}",
        head.raw
    );
}

/// Writes `data` into a tunnel to an echo server and asserts the same bytes come back.
pub async fn echo_roundtrip(stream: &mut TcpStream, data: &[u8]) {
    send(stream, data).await;
    let mut back = vec![0u8; data.len()];
    timeout(IO, stream.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .expect("echo read");
    assert_eq!(back, data, "echo returned other bytes");
}

/// Half-closes our side and reads until the peer closes too (the tunnel has ended).
pub async fn finish(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    expect_closed(stream, IO).await;
}

/// Reads until EOF or a read error, within `within`; returns the bytes that came first.
pub async fn expect_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    if timeout(within, drain).await.is_err() {
        panic!("connection still open after {within:?}");
    }
    seen
}

/// `GET path` with HTTP/1.0 (no chunking, server closes) on a fresh connection: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| io::Error::other(format!("no head in {text:?}")))?;
        let head = parse_head(&format!("{head}\r\n\r\n"))?;
        io::Result::Ok((head.status, body.to_owned()))
    };
    timeout(IO, exchange)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "admin GET")))
}

/// A port that was bound and released: nothing listens there, so dialing it is refused.
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
    listener.local_addr().expect("local_addr").port()
}

/// Runs `curl ARGS...` with no proxy variables from the environment except `env`.
pub async fn curl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["--max-time", "20"]).args(args);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
        "CURL_HOME",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("curl timed out")
        .expect("run curl")
}

/// A TCP echo server on `[::1]`; stops when dropped.
pub struct EchoV6 {
    pub addr: SocketAddr,
    _task: AbortOnDrop,
}

impl EchoV6 {
    pub async fn start() -> EchoV6 {
        let listener = TcpListener::bind("[::1]:0").await.expect("bind [::1]:0");
        let addr = listener.local_addr().expect("local_addr");
        let accepted = std::sync::Arc::default();
        let task = spawn_accept_loop(listener, accepted, |mut stream| async move {
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
            let _ = write.shutdown().await;
        });
        EchoV6 { addr, _task: task }
    }
}

/// Polls `cond` every 25 ms until it holds; fails after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
