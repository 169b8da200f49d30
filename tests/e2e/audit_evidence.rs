//! The audit record as evidence: `request_id` (and the `X-Portcullis-Request-Id`
//! header that ties a response to it), `instance` (flag, ECS task metadata,
//! host name), `policy_sha256`, `identity`, `error`, `end`, `enforce_reason`
//! and `detail` on every kind of record, against the real binary.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::reload::{PolicyDir, policy, wait_generation, world, write_renamed};
use crate::support::client::{
    Head, LOCAL, closed_port, connect, echo_roundtrip, expect_closed, finish, read_body, read_head,
    send, send_connect,
};
use crate::support::dns::TestDns;
use crate::support::origin::{HttpOrigin, TcpEcho};
use crate::support::proxy::{AUDIT_KEYS, Launch, Proxy, loopback_policy};
use crate::support::{AbortOnDrop, bind_loopback, spawn_accept_loop};

const WAIT: Duration = Duration::from_secs(10);

/// The header that ties a response to its audit record.
const ID_HEADER: &str = "x-portcullis-request-id";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every key is there; `identity` is `null` (the source address alone matched).
fn assert_every_key(record: &Value) {
    let object = record.as_object().expect("audit record is an object");
    for key in AUDIT_KEYS {
        assert!(object.contains_key(key), "no `{key}` in {record}");
    }
    assert_eq!(record["identity"], Value::Null, "{record}");
}

/// Sends `CONNECT target` on a fresh connection: the head, and the body when
/// the proxy refused (a 200's stream is returned to be the tunnel).
async fn connect_to(proxy: &Proxy, target: &str) -> (Head, String, TcpStream) {
    let mut stream = connect(proxy.addr()).await;
    send_connect(&mut stream, target).await;
    let head = read_head(&mut stream).await;
    let body = match head.status {
        200 => String::new(),
        _ => String::from_utf8(read_body(&mut stream, &head).await).expect("UTF-8 body"),
    };
    (head, body, stream)
}

/// The id the proxy sent, which must be a lowercase UUID.
fn header_id(head: &Head) -> String {
    let id = head
        .header(ID_HEADER)
        .unwrap_or_else(|| panic!("no {ID_HEADER}:\n{}", head.raw));
    assert_eq!(id.len(), 36, "{id}");
    id.to_owned()
}

async fn record_with_id(proxy: &Proxy, id: &str) -> Value {
    proxy.wait_audit(|r| r["request_id"] == id, WAIT).await
}

/// Every kind of record carries every key, with the values each kind calls
/// for; the header the client got names the record it is audited under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_kind_carries_the_evidence_keys() {
    let dns = TestDns::start().await;
    for name in ["origin.test", "closed.test"] {
        dns.set_a(name, &[LOCAL], 60);
    }
    let echo = TcpEcho::start().await;
    let origin = HttpOrigin::start().await;
    let yaml = loopback_policy(&["origin.test:*", "closed.test:*", "nx.test:*"], "");
    let sha = sha256_hex(yaml.as_bytes());
    let proxy = Proxy::start(&yaml, dns.addr(), &["--instance-id", "edge-7"]).await;
    let echo_port = echo.addr().port();
    let closed = closed_port().await;

    // policy_reload at start: no exchange, so no id; the policy in force.
    let reload = proxy
        .wait_audit(|r| r["event"] == "policy_reload", WAIT)
        .await;
    assert_every_key(&reload);
    assert_eq!(reload["request_id"], Value::Null, "{reload}");
    assert_eq!(reload["instance"], "edge-7", "{reload}");
    assert_eq!(reload["policy_sha256"], sha.as_str(), "{reload}");
    assert_eq!(reload["sha256"], sha.as_str(), "{reload}");

    // An allowed tunnel: the 200 carries the id; the client closes first.
    let (head, _, mut tunnel) = connect_to(&proxy, &format!("origin.test:{echo_port}")).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    let id = header_id(&head);
    echo_roundtrip(&mut tunnel, b"evidence").await;
    finish(&mut tunnel).await;
    let allowed = record_with_id(&proxy, &id).await;
    assert_every_key(&allowed);
    let want = [
        ("event", Value::from("connection")),
        ("decision", Value::from("allow")),
        ("instance", Value::from("edge-7")),
        ("policy_sha256", Value::from(sha.as_str())),
        ("end", Value::from("client_closed")),
        ("error", Value::Null),
        ("detail", Value::Null),
        ("enforce_reason", Value::Null),
    ];
    for (key, value) in want {
        assert_eq!(allowed[key], value, "`{key}` in {allowed}");
    }

    // A denied CONNECT: the body's detail is the record's.
    let (head, body, _) = connect_to(&proxy, &format!("denied.test:{echo_port}")).await;
    assert_eq!(head.status, 403, "{}", head.raw);
    let denied = record_with_id(&proxy, &header_id(&head)).await;
    assert_every_key(&denied);
    let detail = format!("no allow rule for denied.test:{echo_port}");
    assert_eq!(body, format!("portcullis: not_allowed: {detail}\n"));
    assert_eq!(denied["detail"], detail.as_str(), "{denied}");
    assert_eq!(denied["end"], Value::Null, "refusals have no end: {denied}");
    assert_eq!(denied["policy_sha256"], sha.as_str(), "{denied}");

    // A forwarded request: the relayed response carries the id too.
    let mut stream = connect(proxy.addr()).await;
    let port = origin.addr().port();
    let req = format!(
        "GET http://origin.test:{port}/bytes/5 HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n"
    );
    send(&mut stream, req.as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    read_body(&mut stream, &head).await;
    let request = record_with_id(&proxy, &header_id(&head)).await;
    assert_every_key(&request);
    assert_eq!(request["event"], "request", "{request}");
    assert_eq!(request["end"], "upstream_closed", "{request}");
    assert_eq!(request["detail"], Value::Null, "{request}");
    drop(stream);

    // A malformed destination.
    let (head, body, _) = connect_to(&proxy, "0x7f.1:443").await;
    assert_eq!(head.status, 400, "{}", head.raw);
    let bad = record_with_id(&proxy, &header_id(&head)).await;
    assert_every_key(&bad);
    assert_eq!(bad["reason"], "bad_request", "{bad}");
    let detail = bad["detail"].as_str().expect("detail");
    // What is wrong, in the proxy's words; the raw target stays in `host`.
    assert!(
        detail.contains("not in canonical dotted-quad form"),
        "{bad}"
    );
    assert_eq!(bad["host"], "0x7f.1", "{bad}");
    assert_eq!(body, format!("portcullis: bad_request: {detail}\n"));

    // NXDOMAIN from the test DNS: a 502 whose record names the cause.
    let (head, body, _) = connect_to(&proxy, "nx.test:443").await;
    assert_eq!(head.status, 502, "{}", head.raw);
    let nx = record_with_id(&proxy, &header_id(&head)).await;
    assert_every_key(&nx);
    assert_eq!(nx["reason"], "dns_error", "{nx}");
    assert_eq!(nx["error"], "NXDOMAIN", "{nx}");
    assert_eq!(nx["detail"], "cannot resolve nx.test: NXDOMAIN", "{nx}");
    assert_eq!(
        body,
        "portcullis: dns_error: cannot resolve nx.test: NXDOMAIN\n"
    );

    // A closed port: the record names the address that refused.
    let (head, body, _) = connect_to(&proxy, &format!("closed.test:{closed}")).await;
    assert_eq!(head.status, 502, "{}", head.raw);
    let refused = record_with_id(&proxy, &header_id(&head)).await;
    assert_every_key(&refused);
    let cause = format!("connection refused 127.0.0.1:{closed}");
    assert_eq!(refused["reason"], "connect_error", "{refused}");
    assert_eq!(refused["error"], cause.as_str(), "{refused}");
    assert_eq!(refused["detail"], cause.as_str(), "{refused}");
    assert_eq!(body, format!("portcullis: connect_error: {cause}\n"));
    assert_eq!(refused["end"], Value::Null, "{refused}");
}

/// In report mode the exchange goes through, and the record says what
/// enforce mode would have refused it with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_records_the_reason_enforce_would_have_used() {
    let dns = TestDns::start().await;
    dns.set_a("unlisted.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let yaml = loopback_policy(&["other.test"], "mode: report\n");
    let proxy = Proxy::start(&yaml, dns.addr(), &[]).await;
    let (head, _, mut tunnel) =
        connect_to(&proxy, &format!("unlisted.test:{}", echo.addr().port())).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    echo_roundtrip(&mut tunnel, b"reported").await;
    finish(&mut tunnel).await;
    let rec = record_with_id(&proxy, &header_id(&head)).await;
    assert_every_key(&rec);
    assert_eq!(rec["decision"], "report", "{rec}");
    assert_eq!(rec["enforce_reason"], "not_allowed", "{rec}");
    assert_eq!(
        rec["detail"],
        Value::Null,
        "let through, so no refusal: {rec}"
    );
    assert_eq!(rec["end"], "client_closed", "{rec}");
}

/// Many exchanges, many ids: no two alike, and each header names exactly
/// one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_unique_and_each_names_its_record() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test"], ""), dns.addr(), &[]).await;
    const N: usize = 200;
    let mut sent = BTreeSet::new();
    for i in 0..N {
        let (head, _, _) = connect_to(&proxy, &format!("n{i}.denied.test:443")).await;
        assert_eq!(head.status, 403, "{}", head.raw);
        assert!(sent.insert(header_id(&head)), "a repeated id");
    }
    let audited = || {
        (proxy.audit_records().iter())
            .filter(|r| r["reason"] == "not_allowed")
            .filter_map(|r| r["request_id"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    crate::support::client::eventually(WAIT, "every refusal audited", || async {
        audited().len() >= N
    })
    .await;
    let ids = audited();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate request_id in the log");
    assert_eq!(
        unique, sent,
        "the headers and the records name the same ids"
    );
}

/// A response cut short by the upstream is an `error` end with its cause;
/// the client still got the upstream's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_dies_mid_response_is_an_error_end() {
    let dns = TestDns::start().await;
    dns.set_a("short.test", &[LOCAL], 60);
    let listener = bind_loopback().await;
    let port = listener.local_addr().expect("local_addr").port();
    // Promises 100 bytes, sends 10, closes.
    let _origin = spawn_accept_loop(listener, Arc::default(), |mut stream| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await;
    });
    let proxy = Proxy::start(&loopback_policy(&["short.test:*"], ""), dns.addr(), &[]).await;
    let mut stream = connect(proxy.addr()).await;
    let req = format!("GET http://short.test:{port}/ HTTP/1.1\r\nHost: short.test:{port}\r\n\r\n");
    send(&mut stream, req.as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    let got = expect_closed(&mut stream, WAIT).await;
    assert!(got.len() < 100, "the whole body arrived: {}", got.len());
    let rec = record_with_id(&proxy, &header_id(&head)).await;
    assert_every_key(&rec);
    assert_eq!(rec["reason"], "allowed", "{rec}");
    assert_eq!(rec["end"], "error", "{rec}");
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("upstream failed mid-response"), "{rec}");
}

/// A TLS stream that breaks the rules names the rule it broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_violation_names_its_cause() {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), dns.addr(), &[]).await;
    let (head, _, mut tunnel) =
        connect_to(&proxy, &format!("origin.test:{}", echo.addr().port())).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    // An alert record before any ClientHello.
    send(&mut tunnel, &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]).await;
    expect_closed(&mut tunnel, WAIT).await;
    let rec = record_with_id(&proxy, &header_id(&head)).await;
    assert_every_key(&rec);
    assert_eq!(rec["reason"], "tls_violation", "{rec}");
    assert_eq!(
        rec["error"], "an alert record before the ClientHello",
        "{rec}"
    );
    assert_eq!(rec["detail"], rec["error"], "{rec}");
    assert_eq!(rec["end"], Value::Null, "a refusal: {rec}");
}

/// A tiny ECS task metadata endpoint on loopback: answers `GET {prefix}/task`
/// with a task document, counting the requests.
struct FakeMetadata {
    base: String,
    requests: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

const ARN: &str = "arn:aws:ecs:eu-west-1:123456789012:task/egress/4f6e0c2a9b8d4e61a3c5b7d9e1f20a3b";

impl FakeMetadata {
    async fn start() -> FakeMetadata {
        let listener = bind_loopback().await;
        let base = format!("http://{}/v4/c0ffee", listener.local_addr().expect("addr"));
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let task = spawn_accept_loop(listener, Arc::default(), move |mut stream| {
            let counted = counted.clone();
            async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1
                {
                    head.push(byte[0]);
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let body = if head.starts_with(b"GET /v4/c0ffee/task ") {
                    format!(r#"{{"Cluster":"egress","TaskARN":"{ARN}","Family":"portcullis"}}"#)
                } else {
                    String::new()
                };
                let status = if body.is_empty() {
                    "404 Not Found"
                } else {
                    "200 OK"
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
            }
        });
        FakeMetadata {
            base,
            requests,
            _task: task,
        }
    }
}

/// Starts the proxy with `ECS_CONTAINER_METADATA_URI_V4=endpoint` and `args`.
async fn start_on_ecs(dns: &TestDns, endpoint: &str, args: &[&str]) -> Proxy {
    let env = [("ECS_CONTAINER_METADATA_URI_V4", endpoint)];
    let launch = Launch {
        args,
        env: &env,
        ..Launch::default()
    };
    Proxy::launch(&loopback_policy(&[], ""), dns.addr(), launch).await
}

async fn instance_of(proxy: &Proxy) -> Value {
    let rec = proxy
        .wait_audit(|r| r["event"] == "policy_reload", WAIT)
        .await;
    rec["instance"].clone()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("read the host name")
        .trim()
        .to_owned()
}

/// The WARN lines about the ECS lookup.
fn ecs_warnings(proxy: &Proxy) -> usize {
    (proxy.stderr_text().lines())
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_default();
            v["level"] == "WARN" && l.contains("ECS task metadata")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ecs_task_arn_names_the_instance() {
    let dns = TestDns::start().await;
    let metadata = FakeMetadata::start().await;
    let proxy = start_on_ecs(&dns, &metadata.base, &[]).await;
    assert_eq!(instance_of(&proxy).await, ARN);
    assert_eq!(metadata.requests.load(Ordering::SeqCst), 1, "one lookup");
    assert_eq!(ecs_warnings(&proxy), 0, "{}", proxy.stderr_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_flag_wins_over_ecs_and_needs_no_lookup() {
    let dns = TestDns::start().await;
    let metadata = FakeMetadata::start().await;
    let proxy = start_on_ecs(&dns, &metadata.base, &["--instance-id", "egress-a"]).await;
    assert_eq!(instance_of(&proxy).await, "egress-a");
    let env = [
        ("ECS_CONTAINER_METADATA_URI_V4", metadata.base.as_str()),
        ("PORTCULLIS_INSTANCE_ID", "egress-b"),
    ];
    let launch = Launch {
        env: &env,
        ..Launch::default()
    };
    let by_env = Proxy::launch(&loopback_policy(&[], ""), dns.addr(), launch).await;
    assert_eq!(instance_of(&by_env).await, "egress-b");
    assert_eq!(metadata.requests.load(Ordering::SeqCst), 0);
}

/// An endpoint that accepts and never answers, and one where nothing
/// listens: the proxy still starts (the fixture waits for `/readyz`), names
/// itself by its host name, and says why once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_metadata_endpoint_falls_back_to_the_host_name() {
    let dns = TestDns::start().await;
    let silent = bind_loopback().await;
    let silent_base = format!("http://{}/v4/x", silent.local_addr().expect("addr"));
    let held = Arc::new(AtomicUsize::new(0));
    let _silent = spawn_accept_loop(silent, held.clone(), |mut stream| async move {
        // Reads the request, never answers, keeps the connection open.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await.unwrap_or(0) > 0 {}
        std::future::pending::<()>().await;
    });
    let closed_base = format!("http://127.0.0.1:{}/v4/x", closed_port().await);
    for base in [silent_base, closed_base] {
        let proxy = start_on_ecs(&dns, &base, &[]).await;
        assert_eq!(instance_of(&proxy).await, host_name(), "{base}");
        assert_eq!(
            ecs_warnings(&proxy),
            1,
            "{base}: one WARN:\n{}",
            proxy.stderr_text()
        );
    }
    assert_eq!(
        held.load(Ordering::SeqCst),
        1,
        "the silent endpoint was asked"
    );
}

/// A rejected file's record carries that file's digest while the policy in
/// force (and its digest) stays; content equal to the policy in force is
/// `unchanged` and bumps no generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_records_carry_the_digest_of_what_was_read_and_what_is_in_force() {
    let (dns, _echo) = world(&["a.test"]).await;
    let dir = PolicyDir::new("evidence-reload");
    let good = policy(&["a.test"]);
    std::fs::write(dir.file(), &good).unwrap();
    let launch_path = dir.file();
    let launch = Launch {
        policy_path: Some(&launch_path),
        ..Launch::default()
    };
    let proxy = Proxy::launch("", dns.addr(), launch).await;
    let good_sha = sha256_hex(good.as_bytes());

    let bad = "version: 1\nallow:\n  - \"*\"\n";
    write_renamed(&dir.file(), bad);
    let rejected = proxy
        .wait_audit(
            |r| r["event"] == "policy_reload" && r["result"] == "error",
            WAIT,
        )
        .await;
    assert_every_key(&rejected);
    assert_eq!(rejected["sha256"], sha256_hex(bad.as_bytes()), "{rejected}");
    assert_eq!(rejected["policy_sha256"], good_sha.as_str(), "{rejected}");
    assert_eq!(rejected["policy_generation"], 1, "{rejected}");
    assert!(
        rejected["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{rejected}"
    );

    write_renamed(&dir.file(), &good);
    let unchanged = proxy
        .wait_audit(
            |r| r["event"] == "policy_reload" && r["result"] == "unchanged",
            WAIT,
        )
        .await;
    assert_every_key(&unchanged);
    assert_eq!(unchanged["policy_generation"], 1, "{unchanged}");
    assert_eq!(unchanged["sha256"], good_sha.as_str(), "{unchanged}");
    assert_eq!(unchanged["policy_sha256"], good_sha.as_str(), "{unchanged}");
    wait_generation(&proxy, 1.0).await;
}

/// A tunnel revoked by a reload keeps the generation (and digest) that
/// admitted it; its detail names the generation and digest that revoked it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tunnel_names_the_reload_that_revoked_it() {
    let (dns, echo) = world(&["keep.test", "drop.test"]).await;
    let dir = PolicyDir::new("evidence-revoke");
    let first = policy(&["keep.test", "drop.test"]);
    std::fs::write(dir.file(), &first).unwrap();
    let launch_path = dir.file();
    let args = ["--revalidate-on-reload"];
    let launch = Launch {
        args: &args,
        policy_path: Some(&launch_path),
        ..Launch::default()
    };
    let proxy = Proxy::launch("", dns.addr(), launch).await;
    let (head, _, mut cut) = connect_to(&proxy, &format!("drop.test:{}", echo.addr().port())).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    echo_roundtrip(&mut cut, b"before").await;

    let second = policy(&["keep.test"]);
    write_renamed(&dir.file(), &second);
    wait_generation(&proxy, 2.0).await;
    expect_closed(&mut cut, WAIT).await;
    let rec = record_with_id(&proxy, &header_id(&head)).await;
    assert_every_key(&rec);
    assert_eq!(rec["reason"], "policy_revoked", "{rec}");
    assert_eq!(rec["end"], "policy_revoked", "{rec}");
    assert_eq!(rec["policy_generation"], 1, "{rec}");
    assert_eq!(rec["policy_sha256"], sha256_hex(first.as_bytes()), "{rec}");
    let want = format!(
        "revoked by generation 2 (policy sha256 {})",
        sha256_hex(second.as_bytes())
    );
    assert_eq!(rec["detail"], want.as_str(), "{rec}");
}
