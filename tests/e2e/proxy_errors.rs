//! Every row of docs/reference/refusals.md's error table: status, `X-Portcullis-Reason`, body, close, and the audit record.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::support::client::{
    LOCAL, closed_port, connect, connect_refused, expect_refusal, read_head, send,
};
use crate::support::dns::TestDns;
use crate::support::origin::TcpEcho;
use crate::support::proxy::{Proxy, allow_list, loopback_policy};

const AUDIT_WAIT: Duration = Duration::from_secs(10);

/// Waits for the audit record of `host` and checks its decision, reason and status.
async fn audited(proxy: &Proxy, host: &str, decision: &str, reason: &str, status: u16) -> Value {
    let record = proxy.wait_audit(|r| r["host"] == host, AUDIT_WAIT).await;
    assert_eq!(
        (&record["decision"], &record["reason"], &record["status"]),
        (
            &Value::from(decision),
            &Value::from(reason),
            &Value::from(status)
        ),
        "{record}"
    );
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_allowed_for_unlisted_and_denied_names() {
    let dns = TestDns::start().await;
    dns.set_a("secret.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let policy = loopback_policy(&["*.test:*"], "deny:\n  - secret.test\n");
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;
    let port = echo.addr().port();

    connect_refused(
        proxy.addr(),
        &format!("example.com:{port}"),
        403,
        "not_allowed",
    )
    .await;
    // Deny wins over a matching allow, for CONNECT and absolute-form alike.
    connect_refused(
        proxy.addr(),
        &format!("secret.test:{port}"),
        403,
        "not_allowed",
    )
    .await;
    let mut stream = connect(proxy.addr()).await;
    let req =
        format!("GET http://secret.test:{port}/ HTTP/1.1\r\nHost: secret.test:{port}\r\n\r\n");
    send(&mut stream, req.as_bytes()).await;
    expect_refusal(&mut stream, 403, "not_allowed").await;

    let record = audited(&proxy, "secret.test", "deny", "not_allowed", 403).await;
    assert_eq!(
        record["rule"], "secret.test",
        "the deny rule decided: {record}"
    );
    assert_eq!(record["upstream_addr"], Value::Null, "{record}");
    assert_eq!(echo.connections(), 0);
    assert_eq!(
        dns.queries("secret.test"),
        0,
        "denied names are not resolved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_not_allowed_when_no_client_lists_the_source() {
    let dns = TestDns::start().await;
    dns.set_a("open.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let clients = "clients:\n  - name: other\n    sources: [127.0.0.9/32]\n";
    let proxy = Proxy::start(&loopback_policy(&["open.test:*"], clients), dns.addr(), &[]).await;
    let target = format!("open.test:{}", echo.addr().port());

    connect_refused(proxy.addr(), &target, 403, "client_not_allowed").await;
    audited(&proxy, "open.test", "deny", "client_not_allowed", 403).await;
    assert_eq!(echo.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_ip_when_every_answer_is_in_the_default_guard() {
    let dns = TestDns::start().await;
    dns.set_a("local.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    // Default guard: 127.0.0.0/8 is blocked even though the name is allowed.
    let policy = format!(
        "version: 1\n{}",
        allow_list(&["local.test:*", "127.0.0.0/8:*"])
    );
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;
    let port = echo.addr().port();

    connect_refused(
        proxy.addr(),
        &format!("local.test:{port}"),
        403,
        "blocked_ip",
    )
    .await;
    audited(&proxy, "local.test", "deny", "blocked_ip", 403).await;
    connect_refused(
        proxy.addr(),
        &format!("127.0.0.1:{port}"),
        403,
        "blocked_ip",
    )
    .await;
    assert_eq!(echo.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_never_dials_its_own_listeners() {
    let dns = TestDns::start().await;
    let policy = loopback_policy(&["127.0.0.0/8:*"], "");
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;

    for own in [proxy.addr(), proxy.admin()] {
        let mut stream = connect(proxy.addr()).await;
        send(
            &mut stream,
            format!("CONNECT {own} HTTP/1.1\r\nHost: {own}\r\n\r\n").as_bytes(),
        )
        .await;
        let head = read_head(&mut stream).await;
        assert_ne!(head.status, 200, "CONNECT to its own {own} was let through");
        assert!(head.header("x-portcullis-reason").is_some(), "{}", head.raw);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_error_for_nxdomain_servfail_and_no_addresses() {
    let dns = TestDns::start().await;
    dns.set_servfail("servfail.test");
    dns.set_a("empty.test", &[], 60);
    dns.set_aaaa("empty.test", &[], 60);
    let proxy = Proxy::start(&loopback_policy(&["*.test:*"], ""), dns.addr(), &[]).await;

    for host in ["nxdomain.test", "servfail.test", "empty.test"] {
        connect_refused(proxy.addr(), &format!("{host}:443"), 502, "dns_error").await;
        // The policy allowed it; resolution failed afterwards.
        audited(&proxy, host, "allow", "dns_error", 502).await;
        assert!(dns.queries(host) >= 1, "{host} was looked up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_error_when_the_upstream_refuses() {
    let dns = TestDns::start().await;
    dns.set_a("down.test", &[LOCAL], 60);
    let proxy = Proxy::start(&loopback_policy(&["down.test:*"], ""), dns.addr(), &[]).await;
    let port = closed_port().await;

    connect_refused(
        proxy.addr(),
        &format!("down.test:{port}"),
        502,
        "connect_error",
    )
    .await;
    let record = audited(&proxy, "down.test", "allow", "connect_error", 502).await;
    assert_eq!(record["rule"], "down.test:*", "{record}");

    // Absolute-form: the same row.
    let mut stream = connect(proxy.addr()).await;
    let req = format!("GET http://down.test:{port}/ HTTP/1.1\r\nHost: down.test:{port}\r\n\r\n");
    send(&mut stream, req.as_bytes()).await;
    expect_refusal(&mut stream, 502, "connect_error").await;
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so dials hang.
/// Returns it with the connections that fill its queue (both must stay alive).
pub(crate) async fn unanswering_listener() -> (TcpListener, Vec<TcpStream>, SocketAddr) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((LOCAL, 0))).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("local_addr");
    let mut held = Vec::new();
    for _ in 0..16 {
        match timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => return (listener, held, addr),
        }
    }
    panic!("accept queue of {addr} never filled; cannot make a dial hang on loopback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_when_the_upstream_never_answers() {
    let dns = TestDns::start().await;
    dns.set_a("slow.test", &[Ipv4Addr::LOCALHOST], 60);
    let (_listener, _held, addr) = unanswering_listener().await;
    let args = ["--connect-timeout", "1s"];
    let proxy = Proxy::start(&loopback_policy(&["slow.test:*"], ""), dns.addr(), &args).await;

    let started = tokio::time::Instant::now();
    connect_refused(
        proxy.addr(),
        &format!("slow.test:{}", addr.port()),
        504,
        "connect_timeout",
    )
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "gave up after {waited:?}, before the timeout"
    );
    audited(&proxy, "slow.test", "allow", "connect_timeout", 504).await;
}
