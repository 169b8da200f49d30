//! `CONNECT` tunnels: names, ports and IP literals, bad targets, per-client policies, report mode.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::support::client::{
    EchoV6, IO, LOCAL, closed_port, connect, connect_from, connect_refused, echo_roundtrip,
    expect_refusal, finish, open_tunnel, read_head, send, send_connect, tunnel_on,
};
use crate::support::dns::TestDns;
use crate::support::origin::{ServerFirst, TcpEcho};
use crate::support::proxy::{Proxy, loopback_policy};

const AUDIT_WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_name_gets_200_and_a_byte_tunnel() {
    let dns = TestDns::start().await;
    dns.set_a("echo.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(&loopback_policy(&["echo.test:*"], ""), dns.addr(), &[]).await;

    let mut tunnel = open_tunnel(proxy.addr(), &format!("echo.test:{}", echo.addr().port())).await;
    echo_roundtrip(&mut tunnel, b"hello through the tunnel").await;
    // Binary, not just text: every byte value passes unchanged.
    let all: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    echo_roundtrip(&mut tunnel, &all).await;
    finish(&mut tunnel).await;
    assert_eq!(echo.connections(), 1);
    assert!(
        dns.queries("echo.test") >= 1,
        "the proxy resolved the name itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_first_protocols_work_without_client_bytes() {
    let dns = TestDns::start().await;
    dns.set_a("smtp.test", &[LOCAL], 60);
    let server = ServerFirst::start(b"220 ready\r\n").await;
    let proxy = Proxy::start(&loopback_policy(&["smtp.test:*"], ""), dns.addr(), &[]).await;

    let target = format!("smtp.test:{}", server.addr().port());
    let mut tunnel = open_tunnel(proxy.addr(), &target).await;
    let mut greeting = [0u8; 11];
    timeout(IO, tunnel.read_exact(&mut greeting))
        .await
        .expect("greeting must arrive before the client sends anything")
        .expect("read greeting");
    assert_eq!(&greeting, b"220 ready\r\n");
    echo_roundtrip(&mut tunnel, b"EHLO me\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_together_with_the_connect_head_are_not_lost() {
    let dns = TestDns::start().await;
    dns.set_a("echo.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(&loopback_policy(&["echo.test:*"], ""), dns.addr(), &[]).await;

    // A client that does not wait for the 200 (e.g. TLS false start): one write, both parts.
    let target = format!("echo.test:{}", echo.addr().port());
    let mut stream = connect(proxy.addr()).await;
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nearly bytes");
    send(&mut stream, req.as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    let mut early = [0u8; 11];
    timeout(IO, stream.read_exact(&mut early))
        .await
        .expect("early bytes never echoed")
        .expect("read");
    assert_eq!(&early, b"early bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_close_still_delivers_the_other_direction() {
    let dns = TestDns::start().await;
    dns.set_a("echo.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(&loopback_policy(&["echo.test:*"], ""), dns.addr(), &[]).await;

    let mut tunnel = open_tunnel(proxy.addr(), &format!("echo.test:{}", echo.addr().port())).await;
    // Send everything and our FIN at once; the echo is still answering when the FIN arrives.
    let data = vec![b'h'; 512 * 1024];
    let (mut read, mut write) = tunnel.split();
    let writer = async {
        write.write_all(&data).await.expect("write");
        write.shutdown().await.expect("shutdown");
    };
    let mut back = Vec::new();
    let reader = timeout(IO, read.read_to_end(&mut back));
    let ((), got) = tokio::join!(writer, reader);
    got.expect("echo never finished").expect("read");
    assert_eq!(back.len(), data.len(), "bytes lost after our half-close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_normalised_before_the_decision() {
    let dns = TestDns::start().await;
    dns.set_a("echo.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(&loopback_policy(&["echo.test:*"], ""), dns.addr(), &[]).await;

    let target = format!("Echo.TEST.:{}", echo.addr().port());
    let mut tunnel = open_tunnel(proxy.addr(), &target).await;
    echo_roundtrip(&mut tunnel, b"normalised").await;
    finish(&mut tunnel).await;
    let record = proxy
        .wait_audit(|r| r["event"] == "connection", AUDIT_WAIT)
        .await;
    assert_eq!(record["host"], "echo.test", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_are_part_of_the_rule() {
    let dns = TestDns::start().await;
    dns.set_a("echo.test", &[LOCAL], 60);
    dns.set_a("bare.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let port = echo.addr().port();
    let rule = format!("echo.test:{port}");
    // `bare.test` names no port, so only default_ports (443) are allowed.
    let proxy = Proxy::start(&loopback_policy(&[&rule, "bare.test"], ""), dns.addr(), &[]).await;

    let mut tunnel = open_tunnel(proxy.addr(), &format!("echo.test:{port}")).await;
    echo_roundtrip(&mut tunnel, b"x").await;
    let other = closed_port().await;
    connect_refused(
        proxy.addr(),
        &format!("echo.test:{other}"),
        403,
        "not_allowed",
    )
    .await;
    connect_refused(
        proxy.addr(),
        &format!("bare.test:{port}"),
        403,
        "not_allowed",
    )
    .await;
    assert_eq!(echo.connections(), 1, "denied targets are never dialed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_literal_needs_an_ip_range_rule() {
    let dns = TestDns::start().await;
    dns.set_a("echo.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let target = format!("127.0.0.1:{}", echo.addr().port());

    let by_name = Proxy::start(&loopback_policy(&["echo.test:*"], ""), dns.addr(), &[]).await;
    connect_refused(by_name.addr(), &target, 403, "not_allowed").await;
    assert_eq!(echo.connections(), 0);

    let by_range = Proxy::start(&loopback_policy(&["127.0.0.0/8:*"], ""), dns.addr(), &[]).await;
    let mut tunnel = open_tunnel(by_range.addr(), &target).await;
    echo_roundtrip(&mut tunnel, b"literal").await;
    assert_eq!(echo.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_literal_in_brackets_is_allowed_by_a_v6_range() {
    let dns = TestDns::start().await;
    let echo = EchoV6::start().await;
    let policy = loopback_policy(&["[::1/128]:*"], "");
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;

    let target = format!("[::1]:{}", echo.addr.port());
    let mut tunnel = open_tunnel(proxy.addr(), &target).await;
    echo_roundtrip(&mut tunnel, b"over v6").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_ipv4_is_bad_request_and_never_resolved() {
    let dns = TestDns::start().await;
    let echo = TcpEcho::start().await;
    let policy = loopback_policy(&["127.0.0.0/8:*", "*.test:*"], "");
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;
    let port = echo.addr().port();

    for host in ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0x7f000001"] {
        connect_refused(proxy.addr(), &format!("{host}:{port}"), 400, "bad_request").await;
        assert_eq!(dns.queries(host), 0, "{host} must never be resolved");
    }
    assert_eq!(echo.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_host_names_are_bad_request() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(&loopback_policy(&["*.test:*"], ""), dns.addr(), &[]).await;

    let long_label = format!("{}.test", "a".repeat(64));
    let long_name = format!("{}test", "abcdefghi.".repeat(26));
    for host in ["a..b.test", &long_label, &long_name, "bad!name.test"] {
        connect_refused(proxy.addr(), &format!("{host}:443"), 400, "bad_request").await;
    }
    // No port at all.
    let mut stream = connect(proxy.addr()).await;
    send_connect(&mut stream, "x.test").await;
    expect_refusal(&mut stream, 400, "bad_request").await;
}

const CLIENTS: &str = r#"clients:
  - name: payments
    sources: [127.0.0.2/32]
    allow: ["pay.test:*"]
  - name: billing
    sources: [127.0.0.3/32]
    allow: ["bill.test:*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_gets_its_own_allow_list() {
    let dns = TestDns::start().await;
    dns.set_a("pay.test", &[LOCAL], 60);
    dns.set_a("bill.test", &[LOCAL], 60);
    dns.set_a("shared.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let port = echo.addr().port();
    let policy = loopback_policy(&["shared.test:*"], CLIENTS);
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;
    let (pay, bill, shared) = (
        format!("pay.test:{port}"),
        format!("bill.test:{port}"),
        format!("shared.test:{port}"),
    );

    let payments = [127, 0, 0, 2].into();
    let billing = [127, 0, 0, 3].into();
    for (src, mine, theirs) in [(payments, &pay, &bill), (billing, &bill, &pay)] {
        for target in [mine, &shared] {
            let mut stream = connect_from(src, proxy.addr()).await;
            tunnel_on(&mut stream, target).await;
            echo_roundtrip(&mut stream, b"mine").await;
        }
        let mut stream = connect_from(src, proxy.addr()).await;
        send_connect(&mut stream, theirs).await;
        expect_refusal(&mut stream, 403, "not_allowed").await;
    }
    // 127.0.0.1 is in no client's sources.
    connect_refused(proxy.addr(), &shared, 403, "client_not_allowed").await;

    let record = proxy
        .wait_audit(
            |r| r["host"] == "bill.test" && r["decision"] == "deny",
            AUDIT_WAIT,
        )
        .await;
    assert_eq!(record["client"], "payments", "{record}");
    let client_addr = record["client_addr"].as_str().unwrap_or_default();
    assert!(client_addr.starts_with("127.0.0.2:"), "{record}");
    let labels = [
        ("client", "billing"),
        ("decision", "allow"),
        ("destination", "bill.test"),
    ];
    proxy
        .wait_metric(
            "portcullis_requests_total",
            &labels,
            |v| v == 1.0,
            AUDIT_WAIT,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_lets_traffic_through_and_records_what_enforce_would_do() {
    let dns = TestDns::start().await;
    dns.set_a("unlisted.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let policy = loopback_policy(&["listed.test:*"], "mode: report\n");
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;

    let target = format!("unlisted.test:{}", echo.addr().port());
    let mut tunnel = open_tunnel(proxy.addr(), &target).await;
    echo_roundtrip(&mut tunnel, b"reported").await;
    finish(&mut tunnel).await;

    let record = proxy
        .wait_audit(|r| r["host"] == "unlisted.test", AUDIT_WAIT)
        .await;
    assert_eq!(record["decision"], "report", "{record}");
    assert_eq!(record["reason"], "not_allowed", "{record}");
    assert_eq!(record["status"], 200, "{record}");
    let labels = [("decision", "report"), ("reason", "not_allowed")];
    proxy
        .wait_metric(
            "portcullis_requests_total",
            &labels,
            |v| v >= 1.0,
            AUDIT_WAIT,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_can_be_put_in_report_mode_alone() {
    let dns = TestDns::start().await;
    dns.set_a("unlisted.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let clients = "clients:\n  - name: enforced\n    sources: [127.0.0.2/32]\n  \
                   - name: observed\n    sources: [127.0.0.4/32]\n    mode: report\n";
    let proxy = Proxy::start(
        &loopback_policy(&["listed.test:*"], clients),
        dns.addr(),
        &[],
    )
    .await;
    let target = format!("unlisted.test:{}", echo.addr().port());

    let mut observed = connect_from([127, 0, 0, 4].into(), proxy.addr()).await;
    tunnel_on(&mut observed, &target).await;
    echo_roundtrip(&mut observed, b"watched").await;
    let mut enforced = connect_from([127, 0, 0, 2].into(), proxy.addr()).await;
    send_connect(&mut enforced, &target).await;
    expect_refusal(&mut enforced, 403, "not_allowed").await;

    finish(&mut observed).await;
    let record = proxy
        .wait_audit(|r| r["client"] == "observed", AUDIT_WAIT)
        .await;
    assert_eq!(
        (&record["decision"], &record["reason"]),
        (&"report".into(), &"not_allowed".into()),
        "{record}"
    );
}
