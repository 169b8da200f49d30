//! Absolute-form HTTP forwarding: per-request decisions, header stripping, keep-alive, bad forms.

use serde_json::Value;

use crate::support::client::{
    LOCAL, connect, expect_closed, expect_refusal, read_body, read_head, send,
};
use crate::support::dns::TestDns;
use crate::support::origin::HttpOrigin;
use crate::support::proxy::{Proxy, loopback_policy};
use tokio::net::TcpStream;

/// DNS with `origin.test` (and `other.test`) on loopback, an HTTP origin, and a proxy allowing
/// `allow`.
async fn setup(allow: &[&str]) -> (TestDns, HttpOrigin, Proxy) {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    dns.set_a("other.test", &[LOCAL], 60);
    let origin = HttpOrigin::start().await;
    let proxy = Proxy::start(&loopback_policy(allow, ""), dns.addr(), &[]).await;
    (dns, origin, proxy)
}

/// Sends `GET http://authority/path` with `Host: authority` and `extra` header lines.
async fn get(stream: &mut TcpStream, authority: &str, path: &str, extra: &str) {
    let req = format!("GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n");
    send(stream, req.as_bytes()).await;
}

/// Reads a 200 response whose body is the origin's `/echo` JSON.
async fn read_echo(stream: &mut TcpStream) -> Value {
    let head = read_head(stream).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    let body = read_body(stream, &head).await;
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("echo JSON ({e}): {}", String::from_utf8_lossy(&body)))
}

fn header_names(echo: &Value) -> Vec<String> {
    (echo["headers"].as_array().expect("headers array").iter())
        .map(|pair| pair[0].as_str().expect("name").to_ascii_lowercase())
        .collect()
}

fn header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    (echo["headers"].as_array()?.iter())
        .find(|pair| pair[0].as_str() == Some(name))
        .and_then(|pair| pair[1].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_get_is_forwarded_in_origin_form() {
    let (_dns, origin, proxy) = setup(&["origin.test:*"]).await;
    let authority = format!("origin.test:{}", origin.addr().port());

    let mut stream = connect(proxy.addr()).await;
    get(&mut stream, &authority, "/echo?q=1", "").await;
    let echo = read_echo(&mut stream).await;
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/echo?q=1", "{echo}");
    assert_eq!(
        echo["uri"], "/echo?q=1",
        "the origin gets origin-form: {echo}"
    );
    assert_eq!(header(&echo, "host"), Some(authority.as_str()), "{echo}");

    // No path at all: the origin is asked for `/`.
    let req = format!("GET http://{authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    send(&mut stream, req.as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    assert_eq!(read_body(&mut stream, &head).await, b"ok");
    assert_eq!(origin.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_ip_hosts_are_bad_request_in_absolute_form_too() {
    let (dns, origin, proxy) = setup(&["origin.test:*", "127.0.0.0/8:*"]).await;
    let port = origin.addr().port();

    for host in ["2130706433", "0x7f.1", "0177.0.0.1"] {
        let mut stream = connect(proxy.addr()).await;
        get(&mut stream, &format!("{host}:{port}"), "/echo", "").await;
        expect_refusal(&mut stream, 400, "bad_request").await;
        assert_eq!(dns.queries(host), 0, "{host} must never be resolved");
    }
    // The canonical form is allowed by the range rule.
    let mut stream = connect(proxy.addr()).await;
    get(&mut stream, &format!("127.0.0.1:{port}"), "/echo", "").await;
    read_echo(&mut stream).await;
    assert_eq!(origin.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_and_proxy_authorization_are_stripped() {
    let (_dns, origin, proxy) = setup(&["origin.test:*"]).await;
    let authority = format!("origin.test:{}", origin.addr().port());

    let mut stream = connect(proxy.addr()).await;
    let extra = "Connection: keep-alive, X-Drop-Me\r\n\
                 X-Drop-Me: secret\r\n\
                 Keep-Alive: timeout=5\r\n\
                 Proxy-Connection: keep-alive\r\n\
                 Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
                 TE: trailers\r\n\
                 Trailer: X-Checksum\r\n\
                 Upgrade: h2c\r\n\
                 X-Keep-Me: kept\r\n\
                 User-Agent: e2e-test/1\r\n\
                 Accept: application/json\r\n\
                 Authorization: Bearer origin-token\r\n";
    get(&mut stream, &authority, "/echo", extra).await;
    let echo = read_echo(&mut stream).await;
    let names = header_names(&echo);
    for stripped in [
        "x-drop-me",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !names.iter().any(|n| n == stripped),
            "{stripped} reached the origin: {echo}"
        );
    }
    // hyper may add `connection: keep-alive` towards the origin, never the client's tokens.
    let connection = header(&echo, "connection").unwrap_or("");
    assert!(
        !connection.to_ascii_lowercase().contains("x-drop-me"),
        "{echo}"
    );
    assert_eq!(header(&echo, "x-keep-me"), Some("kept"), "{echo}");
    assert_eq!(header(&echo, "user-agent"), Some("e2e-test/1"), "{echo}");
    assert_eq!(header(&echo, "accept"), Some("application/json"), "{echo}");
    assert_eq!(
        header(&echo, "authorization"),
        Some("Bearer origin-token"),
        "{echo}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_forwarded() {
    let (_dns, origin, proxy) = setup(&["origin.test:*"]).await;
    let authority = format!("origin.test:{}", origin.addr().port());

    let mut stream = connect(proxy.addr()).await;
    let req = format!(
        "POST http://{authority}/echo HTTP/1.1\r\nHost: {authority}\r\n\
         Content-Length: 11\r\n\r\nhello world"
    );
    send(&mut stream, req.as_bytes()).await;
    let echo = read_echo(&mut stream).await;
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], "hello world");

    // A chunked body on the same connection: re-framed, never mixed into the next request.
    let req = format!(
        "POST http://{authority}/echo HTTP/1.1\r\nHost: {authority}\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n chunk\r\n0\r\n\r\n"
    );
    send(&mut stream, req.as_bytes()).await;
    let echo = read_echo(&mut stream).await;
    assert_eq!(echo["body"], "hello chunk");
    get(&mut stream, &authority, "/echo", "").await;
    assert_eq!(read_echo(&mut stream).await["method"], "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_decides_each_request_and_reuses_the_upstream() {
    let (_dns, origin, proxy) = setup(&["origin.test:*"]).await;
    let authority = format!("origin.test:{}", origin.addr().port());

    let mut stream = connect(proxy.addr()).await;
    for _ in 0..2 {
        get(&mut stream, &authority, "/echo", "").await;
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, 200, "{}", head.raw);
        assert!(
            !head.closes(),
            "allowed responses keep the connection: {}",
            head.raw
        );
        read_body(&mut stream, &head).await;
    }
    assert_eq!(origin.requests(), 2);
    assert_eq!(
        origin.connections(),
        1,
        "both requests share one upstream connection"
    );

    // Same client connection, now a destination the policy does not allow.
    let denied = format!("other.test:{}", origin.addr().port());
    get(&mut stream, &denied, "/echo", "").await;
    expect_refusal(&mut stream, 403, "not_allowed").await;
    assert_eq!(origin.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_80_is_assumed_when_the_uri_has_none() {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let origin = HttpOrigin::start().await;
    let rule = format!("origin.test:{}", origin.addr().port());
    let proxy = Proxy::start(&loopback_policy(&[&rule], ""), dns.addr(), &[]).await;

    // Only the origin's port is allowed, so the implicit :80 is denied (and never dialed).
    let mut stream = connect(proxy.addr()).await;
    get(&mut stream, "origin.test", "/echo", "").await;
    expect_refusal(&mut stream, 403, "not_allowed").await;
    let record = proxy
        .wait_audit(
            |r| r["host"] == "origin.test",
            std::time::Duration::from_secs(10),
        )
        .await;
    assert_eq!(record["port"], 80, "{record}");
    assert_eq!(origin.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_disagreeing_with_the_uri_is_bad_request() {
    let (_dns, origin, proxy) = setup(&["origin.test:*", "other.test:*"]).await;
    let port = origin.addr().port();

    let mut stream = connect(proxy.addr()).await;
    let req =
        format!("GET http://origin.test:{port}/echo HTTP/1.1\r\nHost: other.test:{port}\r\n\r\n");
    send(&mut stream, req.as_bytes()).await;
    expect_refusal(&mut stream, 400, "bad_request").await;
    assert_eq!(origin.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_is_compared_as_a_name_not_as_bytes() {
    let (_dns, origin, proxy) = setup(&["origin.test:*"]).await;
    let port = origin.addr().port();

    // Host names are case-insensitive: this Host agrees with the URI.
    let mut stream = connect(proxy.addr()).await;
    let req =
        format!("GET http://origin.test:{port}/echo HTTP/1.1\r\nHost: Origin.TEST:{port}\r\n\r\n");
    send(&mut stream, req.as_bytes()).await;
    read_echo(&mut stream).await;
    // Same name, another port: it disagrees.
    let req = format!("GET http://origin.test:{port}/echo HTTP/1.1\r\nHost: origin.test:1\r\n\r\n");
    send(&mut stream, req.as_bytes()).await;
    expect_refusal(&mut stream, 400, "bad_request").await;
    assert_eq!(origin.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_form_requests_to_the_proxy_are_bad_request() {
    let (_dns, origin, proxy) = setup(&["origin.test:*"]).await;

    let mut stream = connect(proxy.addr()).await;
    let host = format!("origin.test:{}", origin.addr().port());
    let req = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n");
    send(&mut stream, req.as_bytes()).await;
    expect_refusal(&mut stream, 400, "bad_request").await;
    assert_eq!(origin.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_http_is_answered_400_or_closed() {
    let (_dns, origin, proxy) = setup(&["origin.test:*"]).await;

    let mut stream = connect(proxy.addr()).await;
    send(&mut stream, b"\x16\x03\x01 this is not HTTP\r\n\r\n").await;
    let seen = expect_closed(&mut stream, std::time::Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(
        seen.is_empty() || text.starts_with("HTTP/1.1 400"),
        "expected 400 or a close, got {text:?}"
    );
    assert_eq!(origin.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_connection_reaches_each_origin_it_names() {
    let (_dns, first, proxy) = setup(&["origin.test:*"]).await;
    let second = HttpOrigin::start().await;

    // A proxy that reused the first upstream for the second authority would send both to one.
    let mut stream = connect(proxy.addr()).await;
    for origin in [&first, &second, &first] {
        let authority = format!("origin.test:{}", origin.addr().port());
        get(&mut stream, &authority, "/echo", "").await;
        let echo = read_echo(&mut stream).await;
        assert_eq!(header(&echo, "host"), Some(authority.as_str()), "{echo}");
    }
    assert_eq!((first.requests(), second.requests()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_arrive_intact() {
    let (_dns, origin, proxy) = setup(&["origin.test:*"]).await;
    let authority = format!("origin.test:{}", origin.addr().port());

    let mut stream = connect(proxy.addr()).await;
    get(&mut stream, &authority, "/bytes/3000000", "").await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    let body = read_body(&mut stream, &head).await;
    assert_eq!(body.len(), 3_000_000);
    assert!(body.iter().all(|&b| b == b'x'));
}
