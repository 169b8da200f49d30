//! `portcullis health`: a health check for container runtimes that have no
//! curl (the image is distroless): `GET /readyz` on the admin listener, exit 0
//! on `200`, 1 on anything else (503 while starting or draining, refused,
//! timed out, garbage).
//!
//! Plain HTTP/1.1 over a blocking `std::net::TcpStream` with one deadline for
//! the whole exchange: no runtime, no HTTP client dependency.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::cli::HealthArgs;
use crate::cmd::exit;

/// The path asked: 200 once a policy is loaded and listeners are bound, 503 while draining.
pub const PATH: &str = "/readyz";

/// The most of the response read while looking for the status line.
const MAX_HEAD: usize = 4096;

/// `portcullis health`: one line on `out` when ready, on `err` otherwise.
pub fn check(args: &HealthArgs, out: &mut impl Write, err: &mut impl Write) -> io::Result<i32> {
    let addr = target(args.admin);
    match get_status(addr, PATH, args.timeout) {
        Ok(200) => {
            writeln!(out, "portcullis health: http://{addr}{PATH}: 200 ready")?;
            Ok(exit::OK)
        }
        Ok(status) => {
            writeln!(
                err,
                "portcullis health: http://{addr}{PATH}: {status} not ready"
            )?;
            Ok(exit::INVALID)
        }
        Err(e) => {
            writeln!(err, "portcullis health: http://{addr}{PATH}: {e}")?;
            Ok(exit::INVALID)
        }
    }
}

/// The address to dial for a listener bound to `admin`: an unspecified IP
/// (`0.0.0.0:9090`, what a container binds so Prometheus can scrape it) is
/// reached on loopback, so the same `PORTCULLIS_ADMIN` serves `run` and `health`.
pub fn target(admin: SocketAddr) -> SocketAddr {
    match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), admin.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), admin.port())
        }
        _ => admin,
    }
}

/// `GET path` on `addr`, returning the response's status code; the whole
/// exchange (connect, write, read the status line) must finish within `timeout`.
pub fn get_status(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<u16> {
    let deadline = Instant::now() + timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    };
    let mut stream = TcpStream::connect_timeout(&addr, remaining()?)?;
    stream.set_write_timeout(Some(remaining()?))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: portcullis-health\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;

    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    loop {
        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
            return parse_status_line(&head[..end]);
        }
        if head.len() >= MAX_HEAD {
            return Err(bad("no HTTP status line"));
        }
        stream.set_read_timeout(Some(remaining()?))?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(bad("connection closed before a status line"));
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// `HTTP/1.1 200 OK` -> 200.
fn parse_status_line(line: &[u8]) -> io::Result<u16> {
    let line = std::str::from_utf8(line).map_err(|_| bad("status line is not text"))?;
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad("malformed status line"));
    };
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(bad("malformed status line"));
    }
    code.parse().map_err(|_| bad("malformed status code"))
}

fn bad(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// A one-shot server answering `reply` to the first request.
    fn serve_once(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let _ = s.write_all(reply);
        });
        addr
    }

    #[test]
    fn reads_the_status_code() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n");
        assert_eq!(get_status(addr, PATH, Duration::from_secs(2)).unwrap(), 200);
        let addr = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(get_status(addr, PATH, Duration::from_secs(2)).unwrap(), 503);
    }

    #[test]
    fn garbage_and_silence_are_errors() {
        let addr = serve_once(b"SSH-2.0-OpenSSH\r\n");
        assert!(get_status(addr, PATH, Duration::from_secs(2)).is_err());
        let addr = serve_once(b"");
        assert!(get_status(addr, PATH, Duration::from_secs(2)).is_err());
        // Accepts (the kernel does) but never answers.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        let e = get_status(
            silent.local_addr().unwrap(),
            PATH,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn unspecified_admin_is_dialed_on_loopback() {
        assert_eq!(
            target("0.0.0.0:9090".parse().unwrap()),
            "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            target("[::]:9090".parse().unwrap()),
            "[::1]:9090".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            target("10.0.0.5:9090".parse().unwrap()),
            "10.0.0.5:9090".parse::<SocketAddr>().unwrap()
        );
    }
}
