//! docs/security.md's hardened edges: own addresses in embedded forms, the admin listener's cap and
//! header timeout, broken request framing, an upstream `101`, and `dns_error` versus
//! `blocked_ip` when one of the two lookups fails.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_server::proto::rr::RecordType;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::support::client::{
    EchoV6, IO, LOCAL, connect, connect_refused, echo_roundtrip, eventually, expect_closed,
    expect_refusal, http_get, open_tunnel, read_head, send,
};
use crate::support::dns::TestDns;
use crate::support::origin::TcpEcho;
use crate::support::proxy::{Launch, Proxy, allow_list, loopback_policy};
use crate::support::{AbortOnDrop, bind_loopback, spawn_accept_loop};

const AUDIT_WAIT: Duration = Duration::from_secs(10);

/// What one connection to a [`RawOrigin`] sent, and whether it has ended.
#[derive(Debug, Default)]
struct Seen {
    bytes: Vec<u8>,
    closed: bool,
}

/// A raw TCP origin on 127.0.0.1 that records every connection, answers `reply` (if any)
/// once a request head has arrived, and notes when the peer closes or resets.
struct RawOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>>,
    _task: AbortOnDrop,
}

impl RawOrigin {
    async fn start(reply: Option<&'static [u8]>) -> RawOrigin {
        let listener = bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let seen: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>> = Arc::default();
        let all = seen.clone();
        let task = spawn_accept_loop(listener, Arc::new(AtomicUsize::new(0)), move |stream| {
            let conn = Arc::new(Mutex::new(Seen::default()));
            all.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn.clone());
            record(stream, conn, reply)
        });
        RawOrigin {
            addr,
            seen,
            _task: task,
        }
    }

    /// (connections accepted, connections that have ended).
    fn counts(&self) -> (usize, usize) {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let closed = (seen.iter())
            .filter(|c| c.lock().unwrap_or_else(PoisonError::into_inner).closed)
            .count();
        (seen.len(), closed)
    }

    /// Everything the connections sent, concatenated.
    fn received(&self) -> String {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        (seen.iter())
            .map(|c| {
                let c = c.lock().unwrap_or_else(PoisonError::into_inner);
                String::from_utf8_lossy(&c.bytes).into_owned()
            })
            .collect()
    }
}

async fn record(mut stream: TcpStream, conn: Arc<Mutex<Seen>>, reply: Option<&'static [u8]>) {
    let mut replied = reply.is_none();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let head_done = {
            let mut c = conn.lock().unwrap_or_else(PoisonError::into_inner);
            c.bytes.extend_from_slice(&buf[..n]);
            c.bytes.windows(4).any(|w| w == b"\r\n\r\n")
        };
        if head_done && !replied {
            replied = true;
            if let Some(reply) = reply
                && stream.write_all(reply).await.is_err()
            {
                break;
            }
        }
    }
    conn.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
}

/// A name whose only address embeds 127.0.0.1 (IPv4-mapped, then NAT64), asked for on the
/// port of the admin and of the explicit listener, with `ip_guard.allowed` covering loopback:
/// refused as guarded, never dialed, so `/metrics` is never reached through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_listeners_are_never_dialed_in_embedded_forms() {
    let dns = TestDns::start().await;
    let forms: [(&str, Ipv6Addr); 2] = [
        ("mapped.test", "::ffff:127.0.0.1".parse().unwrap()),
        ("nat64.test", "64:ff9b::7f00:1".parse().unwrap()),
    ];
    for (name, ip) in forms {
        dns.set_a(name, &[], 60);
        dns.set_aaaa_embedding_loopback(name, &[ip], 60);
    }
    let proxy = Proxy::start(&loopback_policy(&["*.test:*"], ""), dns.addr(), &[]).await;

    // The mapped form goes first: should the check regress, it is dialed on loopback and the
    // test fails before the NAT64 form (which would route off the host) is ever tried.
    for (name, _) in forms {
        let admin = format!("{name}:{}", proxy.admin().port());
        let mut stream = connect(proxy.addr()).await;
        let req = format!("GET http://{admin}/metrics HTTP/1.1\r\nHost: {admin}\r\n\r\n");
        send(&mut stream, req.as_bytes()).await;
        expect_refusal(&mut stream, 403, "blocked_ip").await;
        let record = proxy
            .wait_audit(|r| r["host"] == name && r["method"] == "GET", AUDIT_WAIT)
            .await;
        assert_eq!(record["upstream_addr"], Value::Null, "{record}");

        let own = format!("{name}:{}", proxy.addr().port());
        connect_refused(proxy.addr(), &own, 403, "blocked_ip").await;
        let record = proxy
            .wait_audit(
                |r| r["host"] == name && r["method"] == "CONNECT",
                AUDIT_WAIT,
            )
            .await;
        assert_eq!(record["upstream_addr"], Value::Null, "{record}");
    }
}

/// More idle admin connections than the process has descriptors: the admin listener holds
/// at most 64, closing the oldest idle one for each newcomer, so `/healthz` answers at once
/// and the data path keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_connections_never_starve_healthz_or_the_proxy() {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let launch = Launch {
        fd_limit: Some(256),
        // Long enough that the header timeout never frees a slot during the test.
        args: &["--header-timeout", "120s"],
        ..Launch::default()
    };
    let policy = loopback_policy(&["origin.test:*"], "");
    let proxy = Proxy::launch(&policy, dns.addr(), launch).await;

    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(connect(proxy.admin()).await);
    }
    let healthz = timeout(Duration::from_secs(5), http_get(proxy.admin(), "/healthz"))
        .await
        .expect("/healthz not answered within 5 s behind 300 idle admin connections")
        .expect("GET /healthz");
    assert_eq!(healthz.0, 200, "{healthz:?}");

    // The oldest idle connection made room; the newest is still served.
    expect_closed(&mut idle[0], IO).await;
    let newest = idle.last_mut().expect("connections");
    send(newest, b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n").await;
    assert_eq!(read_head(newest).await.status, 200);

    let target = format!("origin.test:{}", echo.addr().port());
    let mut tunnel = open_tunnel(proxy.addr(), &target).await;
    echo_roundtrip(&mut tunnel, b"still serving").await;
}

/// `--header-timeout` applies to the admin listener too: a head that never completes is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_applies_header_timeout() {
    let dns = TestDns::start().await;
    let args = ["--header-timeout", "1s"];
    let proxy = Proxy::start(&loopback_policy(&[], ""), dns.addr(), &args).await;

    let mut stream = connect(proxy.admin()).await;
    send(&mut stream, b"GET /healthz HTTP/1.1\r\n").await;
    let started = Instant::now();
    expect_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the header timeout",
        started.elapsed()
    );
}

/// A chunked request body with a bad chunk size or a bad chunk extension is `400
/// bad_request`, and the upstream connection that saw part of it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunked_framing_is_bad_request_and_drops_the_upstream() {
    let dns = TestDns::start().await;
    dns.set_a("raw.test", &[LOCAL], 60);
    let origin = RawOrigin::start(None).await;
    let proxy = Proxy::start(&loopback_policy(&["raw.test:*"], ""), dns.addr(), &[]).await;
    let authority = format!("raw.test:{}", origin.addr.port());

    let cases = [
        ("bad chunk size", "5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n"),
        (
            "bad chunk extension",
            "5\r\nhello\r\n4;ext\nbad\r\nmore\r\n0\r\n\r\n",
        ),
    ];
    for (n, (case, body)) in cases.into_iter().enumerate() {
        let mut stream = connect(proxy.addr()).await;
        let req = format!(
            "POST http://{authority}/upload HTTP/1.1\r\nHost: {authority}\r\n\
             Transfer-Encoding: chunked\r\n\r\n{body}"
        );
        send(&mut stream, req.as_bytes()).await;
        let head = read_head(&mut stream).await;
        assert_eq!(
            (head.status, head.header("x-portcullis-reason")),
            (400, Some("bad_request")),
            "{case}:\n{}",
            head.raw
        );
        expect_closed(&mut stream, IO).await;
        eventually(IO, &format!("{case}: upstream connection dropped"), || {
            let (accepted, closed) = origin.counts();
            async move { accepted == n + 1 && closed == n + 1 }
        })
        .await;
    }
    let refusals = || {
        (proxy.audit_records().iter())
            .filter(|r| r["method"] == "POST" && r["reason"] == "bad_request" && r["status"] == 400)
            .count()
    };
    eventually(AUDIT_WAIT, "one bad_request record per case", || {
        let n = refusals();
        async move { n == cases.len() }
    })
    .await;
    assert!(
        !origin.received().contains("more"),
        "a chunk after the broken one went upstream:\n{}",
        origin.received()
    );
}

/// An upstream that answers `101` to a request the proxy did not forward as an upgrade
/// (it strips any `Upgrade` but websocket): `502 connect_error`, never a bare `101`
/// relayed to the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unasked_101_is_connect_error() {
    let dns = TestDns::start().await;
    dns.set_a("raw.test", &[LOCAL], 60);
    let reply =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let origin = RawOrigin::start(Some(reply)).await;
    let proxy = Proxy::start(&loopback_policy(&["raw.test:*"], ""), dns.addr(), &[]).await;
    let authority = format!("raw.test:{}", origin.addr.port());

    let mut stream = connect(proxy.addr()).await;
    let req = format!(
        "GET http://{authority}/ws HTTP/1.1\r\nHost: {authority}\r\n\
         Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    );
    send(&mut stream, req.as_bytes()).await;
    expect_refusal(&mut stream, 502, "connect_error").await;
    eventually(IO, "upstream connection dropped", || {
        let counts = origin.counts();
        async move { counts == (1, 1) }
    })
    .await;
    let lower = origin.received().to_ascii_lowercase();
    assert!(
        !lower.contains("upgrade:"),
        "Upgrade went upstream:\n{lower}"
    );
}

/// `blocked_ip` only when every lookup succeeded and every answer is guarded: an A lookup
/// that fails (SERVFAIL) next to a guarded AAAA answer is `dns_error`; the same AAAA answer,
/// when the guard lets it through, is dialed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_is_dns_error_never_blocked_ip() {
    let dns = TestDns::start().await;
    dns.set_aaaa("half.test", &[Ipv6Addr::LOCALHOST], 60);
    dns.set_servfail_of("half.test", RecordType::A);
    dns.set_a("guarded.test", &[LOCAL], 60);
    dns.set_aaaa("guarded.test", &[Ipv6Addr::LOCALHOST], 60);
    // The default guard: 127.0.0.0/8 and ::1 are blocked.
    let guarded = format!("version: 1\n{}", allow_list(&["*.test:*"]));
    let proxy = Proxy::start(&guarded, dns.addr(), &[]).await;

    connect_refused(proxy.addr(), "half.test:443", 502, "dns_error").await;
    let record = proxy
        .wait_audit(|r| r["host"] == "half.test", AUDIT_WAIT)
        .await;
    assert_eq!(
        (&record["reason"], &record["status"]),
        (&Value::from("dns_error"), &Value::from(502)),
        "{record}"
    );
    assert!(dns.queries_of("half.test", RecordType::A) >= 1);
    connect_refused(proxy.addr(), "guarded.test:443", 403, "blocked_ip").await;

    // What did resolve is still dialed when the guard allows it.
    let echo = EchoV6::start().await;
    let open = loopback_policy(&["*.test:*"], "");
    let proxy = Proxy::start(&open, dns.addr(), &[]).await;
    let mut tunnel = open_tunnel(proxy.addr(), &format!("half.test:{}", echo.addr.port())).await;
    echo_roundtrip(&mut tunnel, b"via AAAA").await;
}
