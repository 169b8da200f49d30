//! WebSocket over plain HTTP: an absolute-form upgrade to an allowed origin becomes a
//! tunnel (counted, idle-timed, drained, revoked, audited once with status 101); other
//! upgrades, denied hosts and origins that switch to something else are refused.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::reload::{PolicyDir, policy, start, wait_generation, write_renamed};
use crate::support::client::{
    IO, LOCAL, connect, expect_closed, expect_refusal, read_body, read_head, send,
};
use crate::support::dns::TestDns;
use crate::support::origin::HttpOrigin;
use crate::support::proxy::{Proxy, loopback_policy};
use crate::support::websocket::{
    WsOrigin, close, echo_text, expect_switch, next_message, open_ws, send_handshake,
    switching_protocols, text_frame, ws_client,
};

const WAIT: Duration = Duration::from_secs(10);
const EXPLICIT: [(&str, &str); 1] = [("listener", "explicit")];

/// DNS with `ws.test` and `denied.test` on loopback, and a proxy allowing only `ws.test`.
async fn setup(args: &[&str]) -> (TestDns, Proxy) {
    let dns = TestDns::start().await;
    dns.set_a("ws.test", &[LOCAL], 60);
    dns.set_a("denied.test", &[LOCAL], 60);
    let proxy = Proxy::start(&loopback_policy(&["ws.test:*"], ""), dns.addr(), args).await;
    (dns, proxy)
}

/// The audit record of the exchange the proxy answered with `head`.
async fn record_of(proxy: &Proxy, head: &crate::support::client::Head) -> Value {
    let id = head
        .header("x-portcullis-request-id")
        .unwrap_or_else(|| panic!("no request id:\n{}", head.raw))
        .to_owned();
    proxy.wait_audit(|r| r["request_id"] == id, WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_through_the_proxy_and_is_audited_once_as_a_101_tunnel() {
    let (_dns, proxy) = setup(&[]).await;
    let origin = WsOrigin::start().await;
    let authority = format!("ws.test:{}", origin.addr().port());

    let mut stream = connect(proxy.addr()).await;
    let extra = "Connection: Upgrade, X-Drop-Me\r\nX-Drop-Me: 1\r\n\
                 Proxy-Authorization: Basic dXNlcjpwYXNz\r\nKeep-Alive: timeout=5\r\n\
                 X-Keep-Me: kept\r\n";
    let key = send_handshake(&mut stream, &authority, "/chat?room=1", extra).await;
    let head = expect_switch(&mut stream, &key).await;
    let mut ws = ws_client(stream).await;
    echo_text(&mut ws, "hello through the proxy").await;
    ws.send(Message::binary(vec![7u8; 300]))
        .await
        .expect("send");
    match next_message(&mut ws).await {
        Some(Message::Binary(back)) => assert_eq!(back.as_ref(), &[7u8; 300][..]),
        other => panic!("binary echo: {other:?}"),
    }
    proxy
        .wait_metric(
            "portcullis_active_connections",
            &EXPLICIT,
            |n| n == 1.0,
            WAIT,
        )
        .await;

    // The origin saw the upgrade, in origin-form, and no other hop-by-hop header.
    let seen = origin.heads().concat().to_ascii_lowercase();
    assert!(seen.starts_with("get /chat?room=1\r\n"), "{seen}");
    assert!(seen.contains("upgrade: websocket\r\n"), "{seen}");
    assert!(seen.contains("connection: upgrade\r\n"), "{seen}");
    assert!(seen.contains("x-keep-me: kept\r\n"), "{seen}");
    for gone in ["x-drop-me", "proxy-authorization", "keep-alive"] {
        assert!(!seen.contains(gone), "{gone} reached the origin:\n{seen}");
    }

    close(ws).await;
    let rec = record_of(&proxy, &head).await;
    assert_eq!(rec["event"], "request", "{rec}");
    assert_eq!(rec["method"], "GET", "{rec}");
    assert_eq!(rec["status"], 101, "{rec}");
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["host"], "ws.test", "{rec}");
    // The origin ends the connection after the closing handshake (RFC 6455 7.1.1).
    assert_eq!(rec["end"], "upstream_closed", "{rec}");
    assert_eq!(rec["detail"], Value::Null, "{rec}");
    // Frames both ways: the 300-byte message and more each way (masked from the client).
    for key in ["bytes_egress", "bytes_ingress"] {
        assert!(rec[key].as_u64().is_some_and(|n| n > 300), "{key}: {rec}");
    }
    let records = proxy.audit_records();
    let same = records
        .iter()
        .filter(|r| r["request_id"] == rec["request_id"]);
    assert_eq!(same.count(), 1, "one record per WebSocket");
    proxy
        .wait_metric(
            "portcullis_active_connections",
            &EXPLICIT,
            |n| n == 0.0,
            WAIT,
        )
        .await;
    let egress = [("destination", "ws.test"), ("direction", "egress")];
    proxy
        .wait_metric(
            "portcullis_tunnel_bytes_total",
            &egress,
            |n| n > 300.0,
            WAIT,
        )
        .await;
}

/// Bytes the origin writes in the same packet as its `101` (a server-first frame) reach the
/// client first, and are counted as ingress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_with_the_101_reaches_the_client() {
    let (_dns, proxy) = setup(&[]).await;
    let origin = WsOrigin::raw(|accept| switching_protocols(accept, &text_frame("welcome"))).await;
    let authority = format!("ws.test:{}", origin.addr().port());

    let (mut ws, head) = open_ws(proxy.addr(), &authority, "/").await;
    match next_message(&mut ws).await {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), "welcome"),
        other => panic!("the origin's first frame: {other:?}"),
    }
    echo_text(&mut ws, "and then echo").await;
    close(ws).await;
    let rec = record_of(&proxy, &head).await;
    assert_eq!(rec["status"], 101, "{rec}");
    let welcome = text_frame("welcome").len() as u64;
    assert!(
        rec["bytes_ingress"].as_u64().is_some_and(|n| n > welcome),
        "{rec}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_and_later_frames_go_nowhere() {
    let (_dns, proxy) = setup(&["--idle-timeout", "1s"]).await;
    let origin = WsOrigin::start().await;
    let authority = format!("ws.test:{}", origin.addr().port());

    let (mut ws, head) = open_ws(proxy.addr(), &authority, "/").await;
    echo_text(&mut ws, "before the timeout").await;
    let rec = record_of(&proxy, &head).await;
    assert_eq!(
        (&rec["status"], &rec["end"]),
        (&Value::from(101), &Value::from("idle_timeout")),
        "{rec}"
    );
    // The proxy closed both sides: a frame sent now is never echoed.
    let _ = ws.send(Message::text("after the timeout")).await;
    assert_eq!(
        next_message(&mut ws).await,
        None,
        "the WebSocket is still open"
    );
    let ended = || async { origin.ended() == 1 };
    crate::support::client::eventually(WAIT, "the origin's side closed", ended).await;
    proxy
        .wait_metric(
            "portcullis_active_connections",
            &EXPLICIT,
            |n| n == 0.0,
            WAIT,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_to_a_denied_host_is_refused_before_any_dial() {
    let (_dns, proxy) = setup(&[]).await;
    let origin = WsOrigin::start().await;
    let authority = format!("denied.test:{}", origin.addr().port());

    let mut stream = connect(proxy.addr()).await;
    send_handshake(&mut stream, &authority, "/", "").await;
    expect_refusal(&mut stream, 403, "not_allowed").await;
    let rec = proxy.wait_audit(|r| r["host"] == "denied.test", WAIT).await;
    assert_eq!(
        (&rec["status"], &rec["reason"], &rec["end"]),
        (&Value::from(403), &Value::from("not_allowed"), &Value::Null),
        "{rec}"
    );
    assert_eq!(origin.connections(), 0, "the denied origin was dialed");
}

/// An origin that answers the handshake `101` without switching to WebSocket: `502`, the
/// refusal audited, and no byte of what it sent after the `101` reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_that_is_not_websocket_is_bad_gateway_and_relays_nothing() {
    let (_dns, proxy) = setup(&[]).await;
    type Reply = fn(&str) -> Vec<u8>;
    let cases: [(&str, Reply, &str); 2] = [
        (
            "no Upgrade header",
            |_| b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\nLEAKED".to_vec(),
            "without an Upgrade header",
        ),
        (
            "another protocol",
            |_| {
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nLEAKED"
                    .to_vec()
            },
            "`Upgrade: h2c`",
        ),
    ];
    for (name, reply, detail) in cases {
        let origin = WsOrigin::raw(reply).await;
        let authority = format!("ws.test:{}", origin.addr().port());
        let mut stream = connect(proxy.addr()).await;
        send_handshake(&mut stream, &authority, "/", "").await;
        let head = read_head(&mut stream).await;
        assert_eq!(
            (head.status, head.header("x-portcullis-reason")),
            (502, Some("connect_error")),
            "{name}:\n{}",
            head.raw
        );
        let body = read_body(&mut stream, &head).await;
        let rest = expect_closed(&mut stream, IO).await;
        let sent = String::from_utf8_lossy(&[body, rest].concat()).into_owned();
        assert!(!sent.contains("LEAKED"), "{name}: relayed {sent:?}");
        let rec = record_of(&proxy, &head).await;
        assert_eq!(
            (&rec["status"], &rec["reason"]),
            (&Value::from(502), &Value::from("connect_error")),
            "{name}: {rec}"
        );
        assert!(
            rec["detail"].as_str().is_some_and(|d| d.contains(detail)),
            "{name}: {rec}"
        );
        let closed = || async { origin.ended() == 1 };
        crate::support::client::eventually(WAIT, "upstream dropped", closed).await;
    }
}

/// An origin that does not speak WebSocket answers the upgrade in plain HTTP: forwarded as
/// any response, and the client connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_forwarded_as_a_plain_response() {
    let (_dns, proxy) = setup(&[]).await;
    let origin = HttpOrigin::start().await;
    let authority = format!("ws.test:{}", origin.addr().port());

    let mut stream = connect(proxy.addr()).await;
    send_handshake(&mut stream, &authority, "/echo", "").await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    let echo: Value = serde_json::from_slice(&read_body(&mut stream, &head).await).unwrap();
    let headers = echo["headers"].to_string().to_ascii_lowercase();
    assert!(headers.contains(r#"["upgrade","websocket"]"#), "{echo}");

    let req = format!("GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    send(&mut stream, req.as_bytes()).await;
    let again = read_head(&mut stream).await;
    assert_eq!(again.status, 200, "{}", again.raw);
    assert_eq!(read_body(&mut stream, &again).await, b"ok");
    let rec = record_of(&proxy, &head).await;
    assert_eq!(rec["status"], 200, "{rec}");
}

/// `Upgrade: h2c` (or anything but websocket) is not passed on: the origin answers in
/// HTTP/1.1, and a `101` it sends anyway is unasked, so `502`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_upgrades_are_stripped_and_answered_in_http1() {
    let (_dns, proxy) = setup(&[]).await;
    let origin = HttpOrigin::start().await;
    let authority = format!("ws.test:{}", origin.addr().port());

    let mut stream = connect(proxy.addr()).await;
    let req = format!(
        "GET http://{authority}/echo HTTP/1.1\r\nHost: {authority}\r\n\
         Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    );
    send(&mut stream, req.as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    let echo = String::from_utf8(read_body(&mut stream, &head).await).unwrap();
    let lower = echo.to_ascii_lowercase();
    assert!(
        !lower.contains("h2c") && !lower.contains("http2-settings"),
        "{echo}"
    );

    let switching = WsOrigin::raw(|_| {
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec()
    })
    .await;
    let authority = format!("ws.test:{}", switching.addr().port());
    let mut stream = connect(proxy.addr()).await;
    let req = format!(
        "GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\
         Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    );
    send(&mut stream, req.as_bytes()).await;
    expect_refusal(&mut stream, 502, "connect_error").await;
    let seen = switching.heads().concat().to_ascii_lowercase();
    assert!(!seen.contains("upgrade:"), "Upgrade went upstream:\n{seen}");
}

/// The transparent HTTP listener forwards the same way: a stock WebSocket client (origin-form
/// request, `Host` names the destination) gets its echo, and the tunnel is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transparent_listener_carries_websockets_too() {
    let (_dns, proxy) = setup(&["--transparent-http", "127.0.0.1:0"]).await;
    let origin = WsOrigin::start().await;
    let listener = proxy
        .listening_addr("transparent_http")
        .expect("transparent_http listening");
    let url = format!("ws://ws.test:{}/t", origin.addr().port());

    let stream = connect(listener).await;
    let (mut ws, resp) = tokio::time::timeout(IO, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("handshake timed out")
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    echo_text(&mut ws, "transparently").await;
    close(ws).await;
    let rec = proxy
        .wait_audit(
            |r| r["listener"] == "transparent_http" && r["status"] == 101,
            WAIT,
        )
        .await;
    assert_eq!(rec["end"], "upstream_closed", "{rec}");
    assert!(rec["bytes_egress"].as_u64().is_some_and(|n| n > 0), "{rec}");
}

/// On SIGTERM an open WebSocket is kept until `--drain-timeout`, then cut and audited as
/// `drain`; the process still exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_open_websockets() {
    let (_dns, mut proxy) = setup(&["--drain-timeout", "1s"]).await;
    let origin = WsOrigin::start().await;
    let authority = format!("ws.test:{}", origin.addr().port());

    let (mut ws, head) = open_ws(proxy.addr(), &authority, "/").await;
    echo_text(&mut ws, "before the drain").await;
    proxy.sigterm().await;
    proxy.wait_clean_exit(WAIT).await;
    assert_eq!(next_message(&mut ws).await, None, "still open after exit");
    let rec = record_of(&proxy, &head).await;
    assert_eq!(
        (&rec["status"], &rec["end"]),
        (&Value::from(101), &Value::from("drain")),
        "{rec}"
    );
}

/// With `--revalidate-on-reload`, a reload that no longer allows the host cuts its open
/// WebSockets, as it does CONNECT tunnels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_denies_the_host_revokes_its_websockets() {
    let dns = TestDns::start().await;
    dns.set_a("ws.test", &[LOCAL], 60);
    let origin = WsOrigin::start().await;
    let dir = PolicyDir::new("websocket");
    std::fs::write(dir.file(), policy(&["ws.test"])).unwrap();
    let proxy = start(&dir, &dns, &["--revalidate-on-reload"]).await;
    let authority = format!("ws.test:{}", origin.addr().port());

    let (mut ws, head) = open_ws(proxy.addr(), &authority, "/").await;
    echo_text(&mut ws, "allowed for now").await;
    write_renamed(&dir.file(), &policy(&[]));
    wait_generation(&proxy, 2.0).await;
    assert_eq!(
        next_message(&mut ws).await,
        None,
        "still open after revocation"
    );
    let rec = record_of(&proxy, &head).await;
    assert_eq!(
        (&rec["status"], &rec["reason"], &rec["end"]),
        (
            &Value::from(101),
            &Value::from("policy_revoked"),
            &Value::from("policy_revoked")
        ),
        "{rec}"
    );
}
