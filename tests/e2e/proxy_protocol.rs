//! `--proxy-protocol`: PROXY v1/v2 headers as a load balancer (an AWS NLB) sends them,
//! crafted byte by byte here and sent by curl; the header's source is the client.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::support::client::{
    IO, LOCAL, connect, curl, echo_roundtrip, expect_closed, expect_refusal, read_body, read_head,
    send, send_connect, tunnel_on,
};
use crate::support::dns::TestDns;
use crate::support::origin::{HttpOrigin, TcpEcho};
use crate::support::proxy::{Proxy, loopback_policy};

const WAIT: Duration = Duration::from_secs(10);
const VPCE: &str = "vpce-0a1b2c3d4e5f67890";

/// Only clients behind the load balancer in 192.0.2.0/24 may reach `echo.test` and
/// `origin.test`; the TCP peer of every test connection (127.0.0.1) is no client.
const TENANT: &str = r#"clients:
  - name: tenant
    sources: [192.0.2.0/24]
    allow: ["echo.test:*", "origin.test:*"]
"#;

/// The v2 signature.
const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header for TCP over IPv4 from `src` to 10.0.0.1:3128, with `tlvs`.
fn v2(src: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let SocketAddr::V4(src) = src else {
        panic!("IPv4 only")
    };
    let mut body = src.ip().octets().to_vec();
    body.extend_from_slice(&[10, 0, 0, 1]);
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&3128u16.to_be_bytes());
    body.extend_from_slice(tlvs);
    v2_raw(0x21, 0x11, &body, None)
}

/// A v2 header with this command, family byte and body; `len`: the length to announce
/// instead of the body's.
fn v2_raw(command: u8, family: u8, body: &[u8], len: Option<u16>) -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    h.push(command);
    h.push(family);
    let len = len.unwrap_or_else(|| u16::try_from(body.len()).unwrap());
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// The TLV an AWS NLB adds behind a PrivateLink endpoint: type 0xEA, subtype 0x01, the id.
fn aws_vpce(id: &str) -> Vec<u8> {
    let mut t = vec![0xEA];
    t.extend_from_slice(&u16::try_from(id.len() + 1).unwrap().to_be_bytes());
    t.push(0x01);
    t.extend_from_slice(id.as_bytes());
    t
}

fn tenant_addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(192, 0, 2, last), port))
}

async fn setup(args: &[&str]) -> (TestDns, TcpEcho, Proxy) {
    let dns = TestDns::start().await;
    dns.set_a("echo.test", &[LOCAL], 60);
    dns.set_a("origin.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let mut all = vec!["--proxy-protocol"];
    all.extend_from_slice(args);
    let proxy = Proxy::start(&loopback_policy(&[], TENANT), dns.addr(), &all).await;
    (dns, echo, proxy)
}

/// The record of the exchange whose `client_addr` is `addr`.
async fn record_of(proxy: &Proxy, addr: &str) -> Value {
    proxy
        .wait_audit(
            |r| r["client_addr"] == addr && r["event"] != "policy_reload",
            WAIT,
        )
        .await
}

/// The header's source is the client `sources` match, and the audited `client_addr`;
/// the bytes after the header reach the client's tunnel untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headers_source_is_the_client() {
    let (_dns, echo, proxy) = setup(&[]).await;
    let target = format!("echo.test:{}", echo.addr().port());

    // An NLB behind a PrivateLink endpoint: v2 with the AWS TLV, and the
    // CONNECT in the same write (one segment), as a client's first bytes follow.
    let mut stream = connect(proxy.addr()).await;
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let first = [
        v2(tenant_addr(7, 5555), &aws_vpce(VPCE)),
        request.into_bytes(),
    ]
    .concat();
    send(&mut stream, &first).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    echo_roundtrip(&mut stream, b"from behind the load balancer").await;
    drop(stream);
    let rec = record_of(&proxy, "192.0.2.7:5555").await;
    assert_eq!(
        (&rec["client"], &rec["reason"], &rec["listener"]),
        (
            &Value::from("tenant"),
            &Value::from("allowed"),
            &Value::from("explicit")
        ),
        "{rec}"
    );

    // v1, as HAProxy sends it.
    let mut stream = connect(proxy.addr()).await;
    send(&mut stream, b"PROXY TCP4 192.0.2.8 10.0.0.1 6666 3128\r\n").await;
    tunnel_on(&mut stream, &target).await;
    echo_roundtrip(&mut stream, b"v1").await;
    drop(stream);
    let rec = record_of(&proxy, "192.0.2.8:6666").await;
    assert_eq!(rec["client"], "tenant", "{rec}");

    // A header naming a source outside every client: refused as that source.
    let mut stream = connect(proxy.addr()).await;
    send(&mut stream, &v2("198.51.100.9:7777".parse().unwrap(), &[])).await;
    send_connect(&mut stream, &target).await;
    expect_refusal(&mut stream, 403, "client_not_allowed").await;
    let rec = record_of(&proxy, "198.51.100.9:7777").await;
    assert_eq!(rec["client"], Value::Null, "{rec}");

    // LOCAL (the NLB's own health check): the connection is the peer itself,
    // here 127.0.0.1, which is no client.
    let mut stream = connect(proxy.addr()).await;
    send(&mut stream, &v2_raw(0x20, 0x00, &[], None)).await;
    send_connect(&mut stream, &target).await;
    expect_refusal(&mut stream, 403, "client_not_allowed").await;
    assert_eq!(echo.connections(), 2);

    let text = proxy.metrics().await;
    let labels = [("client", "tenant"), ("reason", "allowed")];
    assert_eq!(
        crate::support::metrics::metric_sum(&text, "portcullis_requests_total", &labels),
        Some(2.0),
        "{text}"
    );
}

/// curl's own PROXY v1 header (`--haproxy-protocol`) names its real source: 127.0.0.1,
/// no tenant; a policy source of 127.0.0.0/8 lets it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_haproxy_header() {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let origin = HttpOrigin::start().await;
    let policy = loopback_policy(
        &[],
        "clients:\n  - name: local\n    sources: [127.0.0.0/8]\n    allow: [\"origin.test:*\"]\n",
    );
    let proxy = Proxy::start(&policy, dns.addr(), &["--proxy-protocol"]).await;
    let url = format!("http://origin.test:{}/echo", origin.addr().port());
    let proxy_url = format!("http://{}", proxy.addr());

    let out = curl(&["-sS", "--haproxy-protocol", "-x", &proxy_url, &url], &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = proxy.wait_audit(|r| r["host"] == "origin.test", WAIT).await;
    assert_eq!(
        (&rec["client"], &rec["status"]),
        (&Value::from("local"), &Value::from(200)),
        "{rec}"
    );

    // The same curl without the header is refused: every connection must carry one.
    let out = curl(&["-sS", "-x", &proxy_url, &url], &[]).await;
    assert!(!out.status.success());
    assert_eq!(origin.requests(), 1);
}

/// Each bad header: closed without an answer, nothing dialed, counted by what was wrong,
/// audited as `bad_request` from the TCP peer with a detail naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_headers_are_closed_counted_and_audited() {
    let (_dns, echo, proxy) = setup(&[]).await;
    let target = format!("echo.test:{}", echo.addr().port());
    let connect_req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let good = v2(tenant_addr(7, 5555), &[]);
    let mut past_end = v2(tenant_addr(7, 5555), &[]);
    // A TLV announcing 200 bytes with 2 behind it; the header's own length counts 5 more.
    past_end.extend_from_slice(&[0xEA, 0, 200, 0x01, b'v']);
    let len = u16::from_be_bytes([past_end[14], past_end[15]]) + 5;
    past_end[14..16].copy_from_slice(&len.to_be_bytes());
    let cases: [(&str, Vec<u8>, &str, &str); 6] = [
        (
            "no header: a plain CONNECT",
            connect_req.clone().into_bytes(),
            "missing",
            "no PROXY protocol header",
        ),
        (
            "garbage",
            b"PROXY not a header at all\r\n".to_vec(),
            "malformed",
            "malformed PROXY protocol header",
        ),
        ("a TLV length past its end", past_end, "malformed", "TLV"),
        (
            "a v2 header announcing 60000 bytes",
            v2_raw(0x21, 0x11, &[0; 64], Some(60_000)),
            "oversized",
            "60000 bytes",
        ),
        (
            "a v1 line without its CRLF",
            [b"PROXY TCP4 ".as_slice(), &[b'9'; 120]].concat(),
            "oversized",
            "107 bytes",
        ),
        (
            "truncated: the connection ends mid-header",
            good[..20].to_vec(),
            "truncated",
            "after 20 bytes",
        ),
    ];
    for (name, bytes, reason, detail) in cases {
        let mut stream = connect(proxy.addr()).await;
        let port = stream.local_addr().unwrap().port();
        send(&mut stream, &bytes).await;
        // Half-close: the proxy sees the end of what this client will ever send
        // (it may have closed already: the bytes told it enough).
        let _ = stream.shutdown().await;
        let answer = expect_closed(&mut stream, IO).await;
        assert!(answer.is_empty(), "{name}: answered {answer:?}");
        let rec = record_of(&proxy, &format!("127.0.0.1:{port}")).await;
        assert_eq!(
            (&rec["reason"], &rec["decision"], &rec["event"]),
            (
                &Value::from("bad_request"),
                &Value::from("deny"),
                &Value::from("connection")
            ),
            "{name}: {rec}"
        );
        let said = rec["detail"].as_str().unwrap_or_default();
        assert!(said.contains(detail), "{name}: detail {said:?}");
        proxy
            .wait_metric(
                "portcullis_proxy_protocol_errors_total",
                &[("reason", reason)],
                |n| n >= 1.0,
                WAIT,
            )
            .await;
    }
    let text = proxy.metrics().await;
    let all =
        crate::support::metrics::metric_sum(&text, "portcullis_proxy_protocol_errors_total", &[]);
    assert_eq!(all, Some(6.0), "{text}");
    assert_eq!(echo.connections(), 0, "nothing was dialed");
}

/// A peer outside `--proxy-protocol-from` is closed whatever it sends: its header
/// could name any client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_from_an_untrusted_peer_is_refused() {
    let (_dns, echo, proxy) = setup(&["--proxy-protocol-from", "10.0.0.0/8"]).await;
    let target = format!("echo.test:{}", echo.addr().port());
    let mut stream = connect(proxy.addr()).await;
    let port = stream.local_addr().unwrap().port();
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    // One write: the proxy closes as soon as it has accepted.
    send(
        &mut stream,
        &[
            v2(tenant_addr(7, 5555), &aws_vpce(VPCE)),
            request.into_bytes(),
        ]
        .concat(),
    )
    .await;
    let answer = expect_closed(&mut stream, IO).await;
    assert!(answer.is_empty(), "answered {answer:?}");
    let rec = record_of(&proxy, &format!("127.0.0.1:{port}")).await;
    assert_eq!(rec["reason"], "bad_request", "{rec}");
    let detail = rec["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("--proxy-protocol-from"), "{detail}");
    proxy
        .wait_metric(
            "portcullis_proxy_protocol_errors_total",
            &[("reason", "untrusted")],
            |n| n == 1.0,
            WAIT,
        )
        .await;
    assert_eq!(echo.connections(), 0);

    // Trusted once the list names the peer (two ranges, the env var's comma form).
    let (_dns, echo, proxy) = setup(&["--proxy-protocol-from", "10.0.0.0/8,127.0.0.1"]).await;
    let mut stream = connect(proxy.addr()).await;
    send(&mut stream, &v2(tenant_addr(7, 5555), &[])).await;
    tunnel_on(&mut stream, &format!("echo.test:{}", echo.addr().port())).await;
    echo_roundtrip(&mut stream, b"trusted").await;
}

/// A peer that starts a header and stops is closed at `--header-timeout`; others are
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_header_times_out_without_holding_up_others() {
    let (_dns, echo, proxy) = setup(&["--header-timeout", "2s", "--workers", "1"]).await;
    let target = format!("echo.test:{}", echo.addr().port());
    let mut stalled = connect(proxy.addr()).await;
    send(&mut stalled, b"PROXY TCP4 192.0.2.").await;
    let mut silent = connect(proxy.addr()).await;

    let mut stream = connect(proxy.addr()).await;
    send(&mut stream, &v2(tenant_addr(9, 5555), &[])).await;
    tunnel_on(&mut stream, &target).await;
    echo_roundtrip(&mut stream, b"not held up").await;

    for conn in [&mut stalled, &mut silent] {
        let answer = expect_closed(conn, WAIT).await;
        assert!(answer.is_empty(), "answered {answer:?}");
    }
    let text = proxy
        .wait_metric(
            "portcullis_proxy_protocol_errors_total",
            &[("reason", "timeout")],
            |n| n == 2.0,
            WAIT,
        )
        .await;
    assert!(text.contains("portcullis_proxy_protocol_errors_total"));
    let rec = proxy
        .wait_audit(|r| r["reason"] == "bad_request", WAIT)
        .await;
    let detail = rec["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("header timeout"), "{rec}");
}

/// `--max-connections-per-client` counts the header's source, not the load balancer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limits_count_the_headers_source() {
    let (_dns, echo, proxy) = setup(&["--max-connections-per-client", "1"]).await;
    let target = format!("echo.test:{}", echo.addr().port());
    let mut first = connect(proxy.addr()).await;
    send(&mut first, &v2(tenant_addr(7, 1), &[])).await;
    tunnel_on(&mut first, &target).await;

    // Same client again: over its limit.
    let mut again = connect(proxy.addr()).await;
    send(&mut again, &v2(tenant_addr(7, 2), &[])).await;
    send_connect(&mut again, &target).await;
    expect_refusal(&mut again, 503, "overloaded").await;

    // Another client through the same peer: served.
    let mut other = connect(proxy.addr()).await;
    send(&mut other, &v2(tenant_addr(8, 1), &[])).await;
    tunnel_on(&mut other, &target).await;
    echo_roundtrip(&mut other, b"another client").await;
    echo_roundtrip(&mut first, b"still open").await;
    let rec = record_of(&proxy, "192.0.2.7:2").await;
    assert_eq!(rec["reason"], "overloaded", "{rec}");
}

/// The transparent HTTP listener takes the header too (an NLB may front it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transparent_listeners_take_the_header_too() {
    let (_dns, _echo, proxy) = setup(&["--transparent-http", "127.0.0.1:0"]).await;
    let origin = HttpOrigin::start().await;
    let listener = proxy
        .listening_addr("transparent_http")
        .expect("transparent_http listening");
    let host = format!("origin.test:{}", origin.addr().port());
    let request = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");

    let mut stream = connect(listener).await;
    send(
        &mut stream,
        &[v2(tenant_addr(7, 4444), &[]), request.clone().into_bytes()].concat(),
    )
    .await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    read_body(&mut stream, &head).await;
    let rec = record_of(&proxy, "192.0.2.7:4444").await;
    assert_eq!(
        (&rec["client"], &rec["listener"]),
        (&Value::from("tenant"), &Value::from("transparent_http")),
        "{rec}"
    );

    // Without a header: closed, like on --listen.
    let mut stream = connect(listener).await;
    send(&mut stream, request.as_bytes()).await;
    let answer = expect_closed(&mut stream, IO).await;
    assert!(answer.is_empty(), "answered {answer:?}");
    assert_eq!(origin.requests(), 1);
}

/// The AWS TLV's VPC endpoint id is a credential: a client listing it in
/// `vpc_endpoints` is matched by it (whatever the source), audited with it as
/// `identity`, and a connection through another endpoint is not that client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vpc_endpoint_of_the_aws_tlv_selects_its_client() {
    let dns = TestDns::start().await;
    dns.set_a("echo.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let partner = format!(
        r#"clients:
  - name: partner
    vpc_endpoints: [{VPCE}]
    allow: ["echo.test:*"]
"#
    );
    let policy = loopback_policy(&[], &partner);
    let proxy = Proxy::start(&policy, dns.addr(), &["--proxy-protocol"]).await;
    let target = format!("echo.test:{}", echo.addr().port());

    let mut stream = connect(proxy.addr()).await;
    send(&mut stream, &v2(tenant_addr(20, 2020), &aws_vpce(VPCE))).await;
    tunnel_on(&mut stream, &target).await;
    echo_roundtrip(&mut stream, b"through the endpoint").await;
    drop(stream);
    let rec = record_of(&proxy, "192.0.2.20:2020").await;
    assert_eq!(
        (&rec["client"], &rec["identity"], &rec["reason"]),
        (
            &Value::from("partner"),
            &Value::from(VPCE),
            &Value::from("allowed")
        ),
        "{rec}"
    );

    // Another endpoint (or none): no client.
    let other = "vpce-0123456789abcdef0";
    let mut stream = connect(proxy.addr()).await;
    send(&mut stream, &v2(tenant_addr(21, 2121), &aws_vpce(other))).await;
    send_connect(&mut stream, &target).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 403, "{}", head.raw);
    let rec = record_of(&proxy, "192.0.2.21:2121").await;
    assert_eq!(rec["reason"], "client_not_allowed", "{rec}");
    assert!(rec["identity"].is_null(), "{rec}");
}
