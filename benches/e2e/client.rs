//! Client side of the load: opening a raw-origin connection directly or through a CONNECT
//! tunnel, and reading HTTP/1.1 responses off a keep-alive connection.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// The name every request and tunnel targets (resolved by the proxy: DNS or /etc/hosts).
pub const ORIGIN_HOST: &str = "origin.test";

/// Bound on any single network step of a worker (connect, CONNECT, one echo, one response).
pub const STEP: Duration = Duration::from_secs(5);

/// Maps "too many open files" to an error that says what to do.
pub fn explain(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(24) || e.raw_os_error() == Some(23) {
        io::Error::other(format!(
            "{e}: raise the open-files limit (`ulimit -n 65536`) or lower --idle-tunnels"
        ))
    } else {
        e
    }
}

/// Connects to `addr` with TCP_NODELAY, within [`STEP`].
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    assert!(addr.ip().is_loopback(), "the bench never leaves loopback");
    let stream = timeout(STEP, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(ErrorKind::TimedOut, "connect timed out"))?
        .map_err(explain)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A connection to the raw origin: direct when `proxy` is `None`, else a CONNECT tunnel to
/// `origin.test:PORT`. Returns the stream and, for a tunnel, the CONNECT -> 200 latency.
pub async fn open_raw(
    proxy: Option<SocketAddr>,
    origin: SocketAddr,
) -> io::Result<(TcpStream, Option<Duration>)> {
    let Some(proxy) = proxy else {
        return Ok((connect(origin).await?, None));
    };
    let mut stream = connect(proxy).await?;
    let port = origin.port();
    let request =
        format!("CONNECT {ORIGIN_HOST}:{port} HTTP/1.1\r\nHost: {ORIGIN_HOST}:{port}\r\n\r\n");
    let start = Instant::now();
    stream.write_all(request.as_bytes()).await?;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    let head_end = loop {
        if len == buf.len() {
            return Err(io::Error::other("CONNECT response head over 1 KiB"));
        }
        let n = timeout(STEP, stream.read(&mut buf[len..]))
            .await
            .map_err(|_| io::Error::new(ErrorKind::TimedOut, "no CONNECT response"))??;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "proxy closed after CONNECT",
            ));
        }
        len += n;
        if let Some(end) = find(&buf[..len], b"\r\n\r\n") {
            break end + 4;
        }
    };
    let latency = start.elapsed();
    let head = String::from_utf8_lossy(&buf[..head_end]);
    if status_of(head.as_bytes()) != Some(200) {
        let first = head.lines().next().unwrap_or("").to_owned();
        return Err(io::Error::other(format!("CONNECT refused: {first}")));
    }
    if head_end != len {
        return Err(io::Error::other(
            "bytes after the CONNECT 200 before any were sent",
        ));
    }
    Ok((stream, Some(latency)))
}

/// One echo round trip of `byte` on `stream`, within [`STEP`].
pub async fn echo_byte(stream: &mut TcpStream, byte: u8) -> io::Result<()> {
    stream.write_all(&[byte]).await?;
    let mut got = [0u8; 1];
    timeout(STEP, stream.read_exact(&mut got))
        .await
        .map_err(|_| io::Error::new(ErrorKind::TimedOut, "no echo"))??;
    if got[0] != byte {
        return Err(io::Error::other("echo returned a different byte"));
    }
    Ok(())
}

/// Echoes `n` bytes (the first one [`MODE_ECHO`](crate::origin::MODE_ECHO)) on `stream`.
pub async fn echo_bytes(stream: &mut TcpStream, n: usize) -> io::Result<()> {
    let mut out = vec![b'e'; n];
    out[0] = crate::origin::MODE_ECHO;
    stream.write_all(&out).await?;
    let mut back = vec![0u8; n];
    timeout(STEP, stream.read_exact(&mut back))
        .await
        .map_err(|_| io::Error::new(ErrorKind::TimedOut, "no echo"))??;
    if back != out {
        return Err(io::Error::other("echo returned different bytes"));
    }
    Ok(())
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The status code of an `HTTP/1.x NNN ...` head.
pub fn status_of(head: &[u8]) -> Option<u16> {
    if !head.starts_with(b"HTTP/1.") || head.len() < 12 {
        return None;
    }
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Reads HTTP/1.1 responses off one keep-alive connection, reusing one buffer.
pub struct ResponseReader {
    buf: Vec<u8>,
    /// Bytes of `buf` that belong to the next response.
    start: usize,
    end: usize,
}

/// What one response said.
pub struct Response {
    pub status: u16,
    pub body_len: usize,
    /// The server will close the connection after this response.
    pub close: bool,
}

impl ResponseReader {
    pub fn new() -> ResponseReader {
        ResponseReader {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// Makes at least one more byte available; EOF is an error (a response was expected).
    async fn fill(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        if self.start > 0 && self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = timeout(STEP, stream.read(&mut self.buf[self.end..]))
            .await
            .map_err(|_| io::Error::new(ErrorKind::TimedOut, "no response"))??;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed mid-response",
            ));
        }
        self.end += n;
        Ok(())
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    async fn line(&mut self, stream: &mut TcpStream) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n") {
                let line = self.buf[self.start..self.start + i].to_vec();
                self.start += i + 2;
                return Ok(line);
            }
            self.fill(stream).await?;
        }
    }

    /// Skips `n` body bytes.
    async fn skip(&mut self, stream: &mut TcpStream, mut n: usize) -> io::Result<()> {
        loop {
            let have = (self.end - self.start).min(n);
            self.start += have;
            n -= have;
            if n == 0 {
                return Ok(());
            }
            self.fill(stream).await?;
        }
    }

    /// Reads one whole response (Content-Length or chunked body).
    pub async fn read(&mut self, stream: &mut TcpStream) -> io::Result<Response> {
        let status_line = self.line(stream).await?;
        let status = status_of(&status_line).ok_or_else(|| io::Error::other("bad status line"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            let line = self.line(stream).await?;
            if line.is_empty() {
                break;
            }
            let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
            let Some((name, value)) = text.split_once(':') else {
                continue;
            };
            match (name.trim(), value.trim()) {
                ("content-length", v) => length = v.parse::<usize>().ok(),
                ("transfer-encoding", v) => chunked = v.contains("chunked"),
                ("connection" | "proxy-connection", v) => close |= v.contains("close"),
                _ => {}
            }
        }
        let mut body_len = 0;
        if chunked {
            loop {
                let size_line = self.line(stream).await?;
                let size = String::from_utf8_lossy(&size_line);
                let size = size.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| io::Error::other("bad chunk size"))?;
                if size == 0 {
                    while !self.line(stream).await?.is_empty() {}
                    break;
                }
                self.skip(stream, size).await?;
                self.line(stream).await?;
                body_len += size;
            }
        } else if let Some(n) = length {
            self.skip(stream, n).await?;
            body_len = n;
        } else if status >= 200 && status != 204 && status != 304 {
            return Err(io::Error::other(
                "response without length (read-to-close unsupported)",
            ));
        }
        Ok(Response {
            status,
            body_len,
            close,
        })
    }
}
