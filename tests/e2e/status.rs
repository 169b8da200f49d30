//! `GET /status` on the admin listener against the running binary: what it reports at
//! start, after a good reload, a bad one, an unchanged one and a deleted file, and while
//! draining; and the reload gauges that go with it.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::reload::{PolicyDir, start, world, write_renamed};
use crate::support::client::{echo_roundtrip, finish, http_get, open_tunnel};
use crate::support::metrics::metric_sum;
use crate::support::proxy::{Proxy, loopback_policy};

const WAIT: Duration = Duration::from_secs(10);

async fn status(proxy: &Proxy) -> Value {
    let (code, body) = http_get(proxy.admin(), "/status")
        .await
        .unwrap_or_else(|e| panic!("GET /status: {e}"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// Polls `/status` until `pred` holds; returns the document.
async fn wait_status(proxy: &Proxy, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let doc = status(proxy).await;
        if pred(&doc) {
            return doc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/status never showed {what}:\n{doc:#}\n{}",
            proxy.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rfc3339(doc: &Value, pointer: &str) -> OffsetDateTime {
    let text = doc.pointer(pointer).and_then(Value::as_str);
    let text = text.unwrap_or_else(|| panic!("no {pointer} in {doc:#}"));
    OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|e| panic!("{pointer} {text:?}: {e}"))
}

/// The reload gauges and the one `policy_info` series, from a fresh scrape.
async fn reload_gauges(proxy: &Proxy) -> (f64, f64, Vec<(String, String)>) {
    let text = proxy.metrics().await;
    let gauge = |name: &str| metric_sum(&text, name, &[]).unwrap_or_else(|| panic!("no {name}"));
    let info = crate::support::metrics::samples(&text, "portcullis_policy_info");
    let info = (info.iter())
        .map(|s| {
            assert_eq!(s.value, 1.0, "{text}");
            let label = |k: &str| s.label(k).unwrap_or_default().to_owned();
            (label("sha256"), label("mode"))
        })
        .collect();
    (
        gauge("portcullis_policy_last_reload_successful"),
        gauge("portcullis_policy_last_reload_success_timestamp_seconds"),
        info,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_good_bad_unchanged_and_missing_policies() {
    let (dns, echo) = world(&["a.test", "b.test"]).await;
    let dir = PolicyDir::new("status");
    let first = loopback_policy(&["a.test:*"], "");
    std::fs::write(dir.file(), &first).unwrap();
    let proxy = start(&dir, &dns, &["--instance-id", "egress-a"]).await;

    // At start: the load counts as a successful reload.
    let doc = status(&proxy).await;
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"), "{doc:#}");
    assert_eq!(doc["instance"], "egress-a", "{doc:#}");
    assert_eq!(doc["draining"], false, "{doc:#}");
    let path = dir.file().display().to_string();
    let policy = &doc["policy"];
    assert_eq!(policy["path"], path.as_str(), "{doc:#}");
    assert_eq!(policy["sha256"], sha256_hex(&first), "{doc:#}");
    assert_eq!(policy["generation"], 1, "{doc:#}");
    assert_eq!(policy["mode"], "enforce", "{doc:#}");
    let default = json!([{"name": "default", "mode": "enforce", "rules": 1}]);
    assert_eq!(policy["clients"], default, "{doc:#}");
    let started = rfc3339(&doc, "/policy/loaded_at");
    assert_eq!(rfc3339(&doc, "/last_reload/at"), started, "{doc:#}");
    assert_eq!(doc["last_reload"]["result"], "ok", "{doc:#}");
    assert!(doc["last_reload"]["error"].is_null(), "{doc:#}");
    let listeners = json!([
        {"kind": "explicit", "addr": proxy.addr().to_string()},
        {"kind": "admin", "addr": proxy.admin().to_string()},
    ]);
    assert_eq!(doc["listeners"], listeners, "{doc:#}");
    let (ok, at_start, info) = reload_gauges(&proxy).await;
    assert_eq!(ok, 1.0);
    assert_eq!(info, [(sha256_hex(&first), "enforce".to_owned())]);

    // A good reload: a second generation, with a client in report mode.
    let clients = "clients:\n  - name: ops\n    sources: [10.9.0.0/16]\n    mode: report\n    allow: [c.test]\n  - name: local\n    sources: [127.0.0.0/8]\n";
    let second = loopback_policy(&["a.test:*", "b.test:*"], clients);
    write_renamed(&dir.file(), &second);
    let doc = wait_status(&proxy, "generation 2", |d| d["policy"]["generation"] == 2).await;
    let policy = &doc["policy"];
    assert_eq!(policy["sha256"], sha256_hex(&second), "{doc:#}");
    assert_eq!(policy["mode"], "mixed", "{doc:#}");
    let want = json!([
        {"name": "default", "mode": "enforce", "rules": 2},
        {"name": "ops", "mode": "report", "rules": 3},
        {"name": "local", "mode": "enforce", "rules": 2},
    ]);
    assert_eq!(policy["clients"], want, "{doc:#}");
    assert_eq!(doc["last_reload"]["result"], "ok", "{doc:#}");
    let loaded = rfc3339(&doc, "/policy/loaded_at");
    assert!(loaded >= started, "{doc:#}");
    let (ok, at_good, info) = reload_gauges(&proxy).await;
    assert_eq!(ok, 1.0);
    assert!(at_good >= at_start, "{at_good} < {at_start}");
    assert_eq!(
        info,
        [(sha256_hex(&second), "mixed".to_owned())],
        "one series"
    );

    // A bad reload: reported with its error; the second generation stays in force.
    write_renamed(&dir.file(), "version: 1\nallow: [a.test]\nbogus_key: 1\n");
    let doc = wait_status(&proxy, "a failed reload", |d| {
        d["last_reload"]["result"] == "error"
    })
    .await;
    let error = doc["last_reload"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("bogus_key"), "{doc:#}");
    assert!(rfc3339(&doc, "/last_reload/at") >= loaded, "{doc:#}");
    assert_eq!(doc["policy"]["generation"], 2, "{doc:#}");
    assert_eq!(doc["policy"]["sha256"], sha256_hex(&second), "{doc:#}");
    assert_eq!(rfc3339(&doc, "/policy/loaded_at"), loaded, "{doc:#}");
    let (ok, at_bad, info) = reload_gauges(&proxy).await;
    assert_eq!(ok, 0.0);
    assert_eq!(at_bad, at_good, "a failure keeps the last success time");
    assert_eq!(info, [(sha256_hex(&second), "mixed".to_owned())]);
    let mut tunnel = open_tunnel(proxy.addr(), &format!("b.test:{}", echo.addr().port())).await;
    echo_roundtrip(&mut tunnel, b"still generation 2").await;
    finish(&mut tunnel).await;

    // The file in force again: unchanged, which is a success.
    write_renamed(&dir.file(), &second);
    let doc = wait_status(&proxy, "an unchanged reload", |d| {
        d["last_reload"]["result"] == "unchanged"
    })
    .await;
    assert!(doc["last_reload"]["error"].is_null(), "{doc:#}");
    assert_eq!(doc["policy"]["generation"], 2, "{doc:#}");
    let (ok, at_unchanged, _) = reload_gauges(&proxy).await;
    assert_eq!(ok, 1.0);
    assert!(at_unchanged >= at_good, "{at_unchanged} < {at_good}");

    // A deleted file is a failed reload.
    std::fs::remove_file(dir.file()).unwrap();
    let doc = wait_status(&proxy, "a missing policy", |d| {
        d["last_reload"]["result"] == "error"
    })
    .await;
    let error = doc["last_reload"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot read"), "{doc:#}");
    assert_eq!(doc["policy"]["generation"], 2, "{doc:#}");
    let (ok, _, _) = reload_gauges(&proxy).await;
    assert_eq!(ok, 0.0);
}

/// `/status` answers while the proxy drains (and says so), and a wrong path names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_while_draining_and_unknown_paths_point_to_it() {
    let (dns, echo) = world(&["a.test"]).await;
    let policy = loopback_policy(&["a.test:*"], "");
    let proxy = Proxy::start(&policy, dns.addr(), &["--drain-timeout", "30s"]).await;

    let (code, body) = http_get(proxy.admin(), "/nope").await.expect("GET /nope");
    assert_eq!(code, 404);
    assert!(body.contains("/status"), "{body}");

    // An open tunnel keeps the drain going.
    let mut tunnel = open_tunnel(proxy.addr(), &format!("a.test:{}", echo.addr().port())).await;
    proxy.sigterm().await;
    let doc = wait_status(&proxy, "draining", |d| d["draining"] == true).await;
    assert_eq!(doc["policy"]["generation"], 1, "{doc:#}");
    echo_roundtrip(&mut tunnel, b"draining").await;
    finish(&mut tunnel).await;
}
