//! Audit records and metrics after real traffic, and the destination label cap.

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::proxy_errors::unanswering_listener;
use crate::support::client::{
    LOCAL, closed_port, connect, connect_refused, echo_roundtrip, finish, open_tunnel, read_body,
    read_head, send,
};
use crate::support::dns::TestDns;
use crate::support::metrics::{metric_sum, samples};
use crate::support::origin::{HttpOrigin, TcpEcho};
use crate::support::proxy::{AUDIT_KEYS, Launch, Proxy, loopback_policy};

const WAIT: Duration = Duration::from_secs(10);

fn assert_all_keys(record: &Value) {
    let object = record.as_object().expect("audit record is an object");
    for key in AUDIT_KEYS {
        assert!(
            object.contains_key(key),
            "audit record lacks `{key}`: {record}"
        );
    }
    let ts = record["ts"].as_str().expect("ts is a string");
    OffsetDateTime::parse(ts, &Rfc3339)
        .unwrap_or_else(|e| panic!("ts {ts:?} is not RFC 3339: {e}"));
    let fraction = ts.split_once('.').map(|(_, f)| f.trim_end_matches('Z'));
    assert_eq!(
        fraction.map(str::len),
        Some(3),
        "ts {ts:?} has no milliseconds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_record_has_every_key_and_exact_byte_counts() {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), dns.addr(), &[]).await;
    let port = echo.addr().port();

    let mut tunnel = open_tunnel(proxy.addr(), &format!("origin.test:{port}")).await;
    let local = tunnel.local_addr().expect("local_addr");
    echo_roundtrip(&mut tunnel, &[7u8; 1000]).await;
    echo_roundtrip(&mut tunnel, &[9u8; 234]).await;
    finish(&mut tunnel).await;

    let r = proxy.wait_audit(|r| r["host"] == "origin.test", WAIT).await;
    assert_all_keys(&r);
    let expect = [
        ("event", Value::from("connection")),
        ("listener", Value::from("explicit")),
        ("client_addr", Value::from(local.to_string())),
        ("method", Value::from("CONNECT")),
        ("port", Value::from(port)),
        ("sni", Value::Null),
        ("decision", Value::from("allow")),
        ("reason", Value::from("allowed")),
        ("rule", Value::from("origin.test:*")),
        ("upstream_addr", Value::from(echo.addr().to_string())),
        ("status", Value::from(200)),
        ("bytes_egress", Value::from(1234)),
        ("bytes_ingress", Value::from(1234)),
        ("policy_generation", Value::from(1)),
    ];
    for (key, want) in expect {
        assert_eq!(r[key], want, "`{key}` in {r}");
    }
    assert!(r["duration_ms"].is_u64(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_written_at_once_and_requests_get_their_own_records() {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let origin = HttpOrigin::start().await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), dns.addr(), &[]).await;
    let port = origin.addr().port();

    connect_refused(
        proxy.addr(),
        &format!("denied.test:{port}"),
        403,
        "not_allowed",
    )
    .await;
    let denial = proxy.wait_audit(|r| r["host"] == "denied.test", WAIT).await;
    assert_all_keys(&denial);
    assert_eq!(denial["event"], "connection", "{denial}");
    assert_eq!(denial["decision"], "deny", "{denial}");
    assert_eq!(denial["reason"], "not_allowed", "{denial}");
    assert_eq!(denial["status"], 403, "{denial}");
    assert_eq!(denial["rule"], Value::Null, "no rule matched: {denial}");

    // Two requests on one connection: two records, one per request.
    let mut stream = connect(proxy.addr()).await;
    for path in ["/echo", "/bytes/5"] {
        let req = format!(
            "GET http://origin.test:{port}{path} HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n"
        );
        send(&mut stream, req.as_bytes()).await;
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, 200, "{}", head.raw);
        read_body(&mut stream, &head).await;
    }
    drop(stream);
    let is_request = |r: &Value| r["event"] == "request" && r["host"] == "origin.test";
    proxy
        .wait_audit(
            |_| {
                proxy
                    .audit_records()
                    .iter()
                    .filter(|r| is_request(r))
                    .count()
                    >= 2
            },
            WAIT,
        )
        .await;
    for r in proxy.audit_records().iter().filter(|r| is_request(r)) {
        assert_all_keys(r);
        assert_eq!(r["method"], "GET", "{r}");
        assert_eq!(r["listener"], "explicit", "{r}");
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["port"], port, "{r}");
        assert_eq!(r["upstream_addr"], origin.addr().to_string(), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions_bytes_and_connections() {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let policy = loopback_policy(&["origin.test:*", "spare.test"], "");
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;
    let port = echo.addr().port();

    let before = proxy.metrics().await;
    assert_eq!(
        metric_sum(&before, "portcullis_policy_generation", &[]),
        Some(1.0),
        "{before}"
    );
    let rules = metric_sum(&before, "portcullis_policy_rules", &[("client", "default")]);
    assert!(
        rules.is_some_and(|n| n >= 1.0),
        "policy_rules{{client=default}}:\n{before}"
    );

    let mut tunnel = open_tunnel(proxy.addr(), &format!("origin.test:{port}")).await;
    echo_roundtrip(&mut tunnel, &[1u8; 300]).await;
    let explicit = [("listener", "explicit")];
    proxy
        .wait_metric(
            "portcullis_active_connections",
            &explicit,
            |n| n >= 1.0,
            WAIT,
        )
        .await;
    finish(&mut tunnel).await;
    connect_refused(
        proxy.addr(),
        &format!("denied.test:{port}"),
        403,
        "not_allowed",
    )
    .await;

    let allowed = [
        ("listener", "explicit"),
        ("client", "default"),
        ("decision", "allow"),
        ("reason", "allowed"),
        ("destination", "origin.test"),
    ];
    proxy
        .wait_metric("portcullis_requests_total", &allowed, |n| n == 1.0, WAIT)
        .await;
    let denied = [
        ("listener", "explicit"),
        ("client", "default"),
        ("decision", "deny"),
        ("reason", "not_allowed"),
        ("destination", "_denied"),
    ];
    proxy
        .wait_metric("portcullis_requests_total", &denied, |n| n == 1.0, WAIT)
        .await;
    for direction in ["egress", "ingress"] {
        let labels = [
            ("client", "default"),
            ("destination", "origin.test"),
            ("direction", direction),
        ];
        proxy
            .wait_metric(
                "portcullis_tunnel_bytes_total",
                &labels,
                |n| n == 300.0,
                WAIT,
            )
            .await;
    }
    let text = proxy
        .wait_metric(
            "portcullis_active_connections",
            &explicit,
            |n| n == 0.0,
            WAIT,
        )
        .await;
    let lookups = metric_sum(&text, "portcullis_dns_lookup_seconds_count", &[]);
    assert!(
        lookups.is_some_and(|n| n >= 1.0),
        "dns_lookup_seconds:\n{text}"
    );
    let dials = metric_sum(
        &text,
        "portcullis_upstream_connect_seconds_count",
        &[("destination", "origin.test")],
    );
    assert_eq!(dials, Some(1.0), "upstream_connect_seconds:\n{text}");
}

/// Every dial is timed, labelled with how it ended: accepted, refused, or timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_seconds_says_how_each_dial_ended() {
    let dns = TestDns::start().await;
    for name in ["up.test", "down.test", "slow.test"] {
        dns.set_a(name, &[LOCAL], 60);
    }
    let echo = TcpEcho::start().await;
    let (_listener, _held, hanging) = unanswering_listener().await;
    let policy = loopback_policy(&["up.test:*", "down.test:*", "slow.test:*"], "");
    let args = ["--connect-timeout", "1s"];
    let proxy = Proxy::start(&policy, dns.addr(), &args).await;

    let mut tunnel = open_tunnel(proxy.addr(), &format!("up.test:{}", echo.addr().port())).await;
    finish(&mut tunnel).await;
    let down = format!("down.test:{}", closed_port().await);
    connect_refused(proxy.addr(), &down, 502, "connect_error").await;
    let slow = format!("slow.test:{}", hanging.port());
    connect_refused(proxy.addr(), &slow, 504, "connect_timeout").await;

    let name = "portcullis_upstream_connect_seconds_count";
    for (destination, result) in [
        ("up.test", "ok"),
        ("down.test", "refused"),
        ("slow.test", "timeout"),
    ] {
        let labels = [("destination", destination), ("result", result)];
        proxy.wait_metric(name, &labels, |n| n == 1.0, WAIT).await;
    }
    let text = proxy.metrics().await;
    assert_eq!(metric_sum(&text, name, &[]), Some(3.0), "{text}");
}

/// Allowed names that fail to resolve keep their own label (the policy allowed them), up
/// to the cap; later ones are `_other`. The audit log still names every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_label_is_capped_whatever_names_clients_send() {
    let dns = TestDns::start().await;
    let args = ["--max-destination-labels", "5"];
    let policy = loopback_policy(&["*.wild.test:*"], "");
    let proxy = Proxy::start(&policy, dns.addr(), &args).await;

    for i in 0..20 {
        connect_refused(
            proxy.addr(),
            &format!("n{i}.wild.test:443"),
            502,
            "dns_error",
        )
        .await;
    }
    let failed = [("decision", "allow"), ("reason", "dns_error")];
    let text = proxy
        .wait_metric("portcullis_requests_total", &failed, |n| n == 20.0, WAIT)
        .await;
    let destinations: BTreeSet<String> = (samples(&text, "portcullis_requests_total").iter())
        .filter_map(|s| s.label("destination").map(str::to_owned))
        .collect();
    assert_eq!(destinations.len(), 6, "{destinations:?}");
    assert!(destinations.contains("_other"), "{destinations:?}");
    assert!(destinations.contains("n0.wild.test"), "{destinations:?}");
    // The audit log still names every host (records reach the file within a batch).
    let named = || {
        (proxy.audit_records().iter())
            .filter_map(|r| r["host"].as_str().map(str::to_owned))
            .filter(|h| h.ends_with(".wild.test"))
            .collect::<BTreeSet<_>>()
            .len()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while named() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the audit log names {} of 20 hosts",
            named()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Denied names are the client's choice: all of them are `_denied`, so a flood of
/// random names never takes the label budget that allowed destinations need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_names_never_use_up_the_destination_budget() {
    const DENIED: usize = 300;
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let args = ["--max-destination-labels", "100"];
    let policy = loopback_policy(&["origin.test:*"], "");
    let proxy = Proxy::start(&policy, dns.addr(), &args).await;

    let random = std::collections::hash_map::RandomState::new();
    for i in 0..DENIED {
        let name = format!("{:x}.attacker.test:443", random.hash_one(i));
        connect_refused(proxy.addr(), &name, 403, "not_allowed").await;
    }
    let mut tunnel =
        open_tunnel(proxy.addr(), &format!("origin.test:{}", echo.addr().port())).await;
    echo_roundtrip(&mut tunnel, b"mine").await;
    finish(&mut tunnel).await;

    let allowed = [("decision", "allow"), ("destination", "origin.test")];
    let text = proxy
        .wait_metric("portcullis_requests_total", &allowed, |n| n == 1.0, WAIT)
        .await;
    let denied = [("decision", "deny"), ("destination", "_denied")];
    let count = metric_sum(&text, "portcullis_requests_total", &denied);
    assert_eq!(count, Some(DENIED as f64), "{text}");
    let destinations: BTreeSet<String> =
        ["portcullis_requests_total", "portcullis_tunnel_bytes_total"]
            .iter()
            .flat_map(|name| samples(&text, name))
            .filter_map(|s| s.label("destination").map(str::to_owned))
            .collect();
    let want = BTreeSet::from(["_denied".to_owned(), "origin.test".to_owned()]);
    assert_eq!(destinations, want, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_configuration_and_audit_records_on_stdout() {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    // Every setting from PORTCULLIS_* variables, and the default audit destination: stdout.
    let launch = Launch {
        via_env: true,
        audit_stdout: true,
        ..Launch::default()
    };
    let policy = loopback_policy(&["origin.test:*"], "");
    let proxy = Proxy::launch(&policy, dns.addr(), launch).await;
    let port = echo.addr().port();

    let mut tunnel = open_tunnel(proxy.addr(), &format!("origin.test:{port}")).await;
    echo_roundtrip(&mut tunnel, b"env").await;
    finish(&mut tunnel).await;
    connect_refused(
        proxy.addr(),
        &format!("denied.test:{port}"),
        403,
        "not_allowed",
    )
    .await;

    // Every stdout line must parse as a record (diagnostics belong on stderr).
    let allowed = proxy.wait_audit(|r| r["host"] == "origin.test", WAIT).await;
    let denied = proxy.wait_audit(|r| r["host"] == "denied.test", WAIT).await;
    for r in [&allowed, &denied] {
        assert_all_keys(r);
    }
    assert_eq!(allowed["bytes_egress"], 3, "{allowed}");
    assert_eq!(denied["decision"], "deny", "{denied}");
    assert!(
        dns.queries("origin.test") >= 1,
        "PORTCULLIS_NAMESERVERS was used"
    );
}

/// The first `policy_reload` record counts each rule once: top-level rules
/// are not counted again for every client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_record_counts_each_rule_once() {
    let dns = TestDns::start().await;
    let policy = "version: 1\nallow: [a.test, b.test]\ndeny: [c.test]\nclients:\n  - name: one\n    sources: [127.0.0.0/8]\n  - name: two\n    sources: [\"::1/128\"]\n";
    let proxy = Proxy::start(policy, dns.addr(), &[]).await;
    let rec = proxy
        .wait_audit(|r| r["event"] == "policy_reload", Duration::from_secs(10))
        .await;
    assert_eq!(rec["rules"], 3, "{rec}");
}
