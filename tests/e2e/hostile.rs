//! Hostile input against the running binary: every case gets a clear error
//! or a clean close, and the proxy still serves afterwards.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::client::{
    connect, connect_from, echo_roundtrip, expect_closed, expect_refusal, open_tunnel, read_body,
    read_head, send, send_connect, try_read_head,
};
use crate::support::dns::TestDns;
use crate::support::origin::{HttpOrigin, TcpEcho};
use crate::support::proxy::{Launch, Proxy, loopback_policy};

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;
const WAIT: Duration = Duration::from_secs(10);

struct World {
    dns: TestDns,
    echo: TcpEcho,
    http: HttpOrigin,
}

async fn world() -> World {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    World {
        dns,
        echo: TcpEcho::start().await,
        http: HttpOrigin::start().await,
    }
}

/// The proxy still tunnels after whatever came before.
async fn still_serves(proxy: &Proxy, w: &World) {
    let mut t = open_tunnel(
        proxy.addr(),
        &format!("origin.test:{}", w.echo.addr().port()),
    )
    .await;
    echo_roundtrip(&mut t, b"still here").await;
}

/// Sends raw bytes on a fresh connection; returns the status, or None when
/// the proxy closed without answering.
async fn raw(proxy: &Proxy, bytes: &[u8]) -> Option<u16> {
    let mut s = connect(proxy.addr()).await;
    let _ = s.write_all(bytes).await;
    let head = tokio::time::timeout(WAIT, try_read_head(&mut s))
        .await
        .expect("no answer, no close");
    head.ok().flatten().map(|h| h.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_targets_and_request_lines_are_refused() {
    let w = world().await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), w.dns.addr(), &[]).await;
    let port = w.echo.addr().port();
    for target in [
        "origin.test:0".to_string(),
        "origin.test:65536".to_string(),
        "origin.test:-1".to_string(),
        format!("origin.test:+{port}"),
        format!("origin.test:0{port}"),
        format!("[origin.test]:{port}"),
        format!("[fe80::1%25eth0]:{port}"),
        format!("user:pass@origin.test:{port}"),
        "origin.test".to_string(),
    ] {
        let status = raw(
            &proxy,
            format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            matches!(status, Some(400) | None),
            "CONNECT {target}: {status:?}"
        );
    }
    let http = w.http.addr().port();
    for req in [
        format!(
            "GET http://user:pass@origin.test:{http}/echo HTTP/1.1\r\nHost: origin.test:{http}\r\n\r\n"
        ),
        format!("GET http://origin.test:{http}/e\0cho HTTP/1.1\r\n\r\n"),
        format!("GET http://orïgin.test:{http}/ HTTP/1.1\r\n\r\n"),
        format!("G\u{e9}T http://origin.test:{http}/ HTTP/1.1\r\n\r\n"),
        "\x16\x03\x01\x00\x05hello\r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_string(),
    ] {
        let status = raw(&proxy, req.as_bytes()).await;
        assert!(matches!(status, Some(400) | None), "{req:?}: {status:?}");
    }
    still_serves(&proxy, &w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_header_floods_are_refused() {
    let w = world().await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), w.dns.addr(), &[]).await;
    let big = format!(
        "CONNECT origin.test:1 HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(matches!(
        raw(&proxy, big.as_bytes()).await,
        Some(431 | 400) | None
    ));
    let mut flood = String::from("GET http://origin.test/ HTTP/1.1\r\n");
    for i in 0..500 {
        flood.push_str(&format!("X-{i}: 1\r\n"));
    }
    flood.push_str("\r\n");
    assert!(matches!(
        raw(&proxy, flood.as_bytes()).await,
        Some(431 | 400) | None
    ));
    // Refused by the HTTP parser before any decision, yet audited and counted.
    wait_parser_refusals(&proxy, Some(431), 2, 2).await;
    still_serves(&proxy, &w).await;
}

/// Bytes the HTTP parser cannot read (a TLS ClientHello on the HTTP port) get
/// its `400`; an HTTP/2 preface is closed without an answer. Both are audited
/// and counted as `bad_request`, with the status sent (none for the preface).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_the_parser_refuses_are_audited_with_the_status_sent() {
    let w = world().await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), w.dns.addr(), &[]).await;
    let hello = b"\x16\x03\x01\x00\x2a\x01\x00\x00\x26\x03\x03 not http at all\r\n\r\n";
    assert_eq!(raw(&proxy, hello).await, Some(400));
    wait_parser_refusals(&proxy, Some(400), 1, 1).await;
    assert_eq!(raw(&proxy, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await, None);
    wait_parser_refusals(&proxy, None, 1, 2).await;
    still_serves(&proxy, &w).await;
}

/// Waits until `n` requests the parser refused with `status` are audited
/// (no host, `bad_request`), and `counted` refusals in all are counted.
async fn wait_parser_refusals(proxy: &Proxy, status: Option<u16>, n: usize, counted: usize) {
    let refused = |r: &serde_json::Value| {
        r["event"] == "request"
            && r["reason"] == "bad_request"
            && r["decision"] == "deny"
            && r["status"] == status.map_or(serde_json::Value::Null, Into::into)
            && r["host"].is_null()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy.audit_records().iter().filter(|r| refused(r)).count() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} refused heads with status {status:?} not audited: {:?}",
            proxy.audit_records()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy
        .wait_metric(
            "portcullis_requests_total",
            &[("reason", "bad_request"), ("destination", "_denied")],
            |count| count >= counted as f64,
            WAIT,
        )
        .await;
}

/// Bytes sent after the CONNECT head (pipelined requests) are tunnel bytes:
/// they go to the destination and nowhere else. A CONNECT that declares a
/// body is refused, since the body would vanish into the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_connect_stay_in_the_tunnel() {
    let w = world().await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), w.dns.addr(), &[]).await;
    let port = w.echo.addr().port();
    let mut s = connect(proxy.addr()).await;
    let tail = b"GET http://evil.test/ HTTP/1.1\r\n\r\n";
    let mut pipelined =
        format!("CONNECT origin.test:{port} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    pipelined.extend_from_slice(tail);
    send(&mut s, &pipelined).await;
    let head = read_head(&mut s).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    let mut back = vec![0u8; tail.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, tail);
    assert!(
        proxy
            .audit_records()
            .iter()
            .all(|r| r["host"] != "evil.test")
    );

    for framing in ["Content-Length: 5", "Transfer-Encoding: chunked"] {
        let req =
            format!("CONNECT origin.test:{port} HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\nhello");
        assert!(
            matches!(raw(&proxy, req.as_bytes()).await, Some(400) | None),
            "{framing}"
        );
    }
    still_serves(&proxy, &w).await;
}

/// Content-Length with Transfer-Encoding: the request is re-framed (or
/// refused), so a request hidden in the body never reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_framing_cannot_smuggle_a_request() {
    let w = world().await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), w.dns.addr(), &[]).await;
    let port = w.http.addr().port();
    let smuggle = format!(
        "POST http://origin.test:{port}/echo HTTP/1.1\r\nHost: origin.test:{port}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: origin.test\r\n\r\n"
    );
    let mut s = connect(proxy.addr()).await;
    send(&mut s, smuggle.as_bytes()).await;
    let _ = tokio::time::timeout(WAIT, async {
        while let Ok(Some(head)) = try_read_head(&mut s).await {
            let body = read_body(&mut s, &head).await;
            assert!(!String::from_utf8_lossy(&body).contains("/smuggled"));
        }
    })
    .await;
    assert!(
        w.http.requests() <= 1,
        "the origin saw {} requests",
        w.http.requests()
    );
    still_serves(&proxy, &w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_connections_then_service() {
    let w = world().await;
    let proxy = Proxy::start(
        &loopback_policy(&["origin.test:*"], ""),
        w.dns.addr(),
        &["--header-timeout", "2s"],
    )
    .await;
    // 1000, or as many as the open-files limit leaves room for in the proxy
    // (two descriptors per connection, 64 kept back) and in this test.
    let soft: usize = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))?
                .split_whitespace()
                .nth(3)?
                .parse()
                .ok()
        })
        .unwrap_or(1024);
    let n = 1000.min(soft.saturating_sub(64) / 2 - 20);
    let mut idle = Vec::new();
    for i in 0..n {
        let mut s = connect(proxy.addr()).await;
        if i % 2 == 0 {
            let _ = s.write_all(b"CONNECT origin.test:1 HTTP/1.1\r\n").await;
        }
        idle.push(s);
    }
    still_serves(&proxy, &w).await;
    // The header timeout closes every one of them.
    for s in idle.iter_mut().take(50) {
        expect_closed(s, WAIT).await;
    }
    still_serves(&proxy, &w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_silent_upstreams_are_contained() {
    let w = world().await;
    let silent = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s); // accept, never answer
        }
    });
    let resetter = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let reset_port = resetter.local_addr().unwrap().port();
    let resets = tokio::spawn(async move {
        while let Ok((s, _)) = resetter.accept().await {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s); // RST
        }
    });
    let args = ["--idle-timeout", "1s"];
    let proxy = Proxy::start(
        &loopback_policy(&["origin.test:*"], ""),
        w.dns.addr(),
        &args,
    )
    .await;

    // A client that resets mid-tunnel.
    let t = open_tunnel(
        proxy.addr(),
        &format!("origin.test:{}", w.echo.addr().port()),
    )
    .await;
    let _ = socket2::SockRef::from(&t).set_linger(Some(Duration::ZERO));
    drop(t);
    // An upstream that resets: 502 when the reset beats the dial, else the tunnel closes.
    let mut t = connect(proxy.addr()).await;
    send_connect(&mut t, &format!("origin.test:{reset_port}")).await;
    let head = read_head(&mut t).await;
    match head.status {
        200 => drop(expect_closed(&mut t, WAIT).await),
        _ => assert_eq!(
            (head.status, head.header("x-portcullis-reason")),
            (502, Some("connect_error")),
            "{}",
            head.raw
        ),
    }
    // An upstream that never answers: plain HTTP gets 504 after the idle timeout.
    let mut s = connect(proxy.addr()).await;
    send(&mut s, format!("GET http://origin.test:{silent_port}/ HTTP/1.1\r\nHost: origin.test:{silent_port}\r\n\r\n").as_bytes()).await;
    expect_refusal(&mut s, 504, "connect_timeout").await;
    // ... and a tunnel to it ends at the idle timeout.
    let mut t = open_tunnel(proxy.addr(), &format!("origin.test:{silent_port}")).await;
    expect_closed(&mut t, WAIT).await;
    still_serves(&proxy, &w).await;
    keep.abort();
    resets.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_connection_limit() {
    let w = world().await;
    let args = ["--max-connections-per-client", "2"];
    let proxy = Proxy::start(
        &loopback_policy(&["origin.test:*"], ""),
        w.dns.addr(),
        &args,
    )
    .await;
    let target = format!("origin.test:{}", w.echo.addr().port());
    let _a = open_tunnel(proxy.addr(), &target).await;
    let mut b = open_tunnel(proxy.addr(), &target).await;
    let mut third = connect(proxy.addr()).await;
    send_connect(&mut third, &target).await;
    expect_refusal(&mut third, 503, "overloaded").await;
    // Another source is not affected.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 2), proxy.addr()).await;
    send_connect(&mut other, &target).await;
    assert_eq!(read_head(&mut other).await.status, 200);
    b.shutdown().await.unwrap();
    expect_closed(&mut b, WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut s = connect(proxy.addr()).await;
        send_connect(&mut s, &target).await;
        if read_head(&mut s).await.status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With few file descriptors, new clients get 503 overloaded instead of a
/// crash, a hang or a busy loop, and service resumes once tunnels close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_descriptor_exhaustion_degrades_to_overloaded() {
    let w = world().await;
    let policy = loopback_policy(&["origin.test:*"], "");
    let launch = Launch {
        fd_limit: Some(96),
        ..Launch::default()
    };
    let proxy = Proxy::launch(&policy, w.dns.addr(), launch).await;
    let target = format!("origin.test:{}", w.echo.addr().port());
    let mut open = Vec::new();
    let mut overloaded = 0;
    for _ in 0..80 {
        let mut s = connect(proxy.addr()).await;
        send_connect(&mut s, &target).await;
        match tokio::time::timeout(Duration::from_secs(3), try_read_head(&mut s))
            .await
            .expect("no answer within 3 s")
        {
            Ok(Some(h)) if h.status == 200 => open.push(s),
            Ok(Some(h)) => {
                assert_eq!(
                    (h.status, h.header("x-portcullis-reason")),
                    (503, Some("overloaded")),
                    "{}",
                    h.raw
                );
                overloaded += 1;
            }
            _ => overloaded += 1,
        }
    }
    assert!(
        overloaded > 0,
        "never ran out with 96 descriptors and {} tunnels",
        open.len()
    );
    assert!(!open.is_empty());
    drop(open);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut s = connect(proxy.addr()).await;
        send_connect(&mut s, &target).await;
        if matches!(try_read_head(&mut s).await, Ok(Some(h)) if h.status == 200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service did not resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        crate::support::client::http_get(proxy.admin(), "/healthz")
            .await
            .unwrap()
            .0,
        200
    );
}
