//! Hot reload against the running binary: in-place writes, rename-replace,
//! the Kubernetes ConfigMap symlink swap, invalid files, reloads under load,
//! and `--revalidate-on-reload` (SIGHUP and the watch's finer points:
//! `reload_watch`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::client::{
    connect, connect_refused, echo_roundtrip, expect_closed, open_tunnel, read_head, send_connect,
};
use crate::support::dns::TestDns;
use crate::support::origin::TcpEcho;
use crate::support::proxy::{Launch, Proxy, loopback_policy};

pub(super) const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;
pub(super) const WAIT: Duration = Duration::from_secs(10);

/// A directory of its own for each test: the proxy watches it.
pub(super) struct PolicyDir(pub(super) PathBuf);

impl PolicyDir {
    pub(super) fn new(name: &str) -> PolicyDir {
        let dir =
            std::env::temp_dir().join(format!("portcullis-reload-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        PolicyDir(dir)
    }

    pub(super) fn file(&self) -> PathBuf {
        self.0.join("policy.yaml")
    }
}

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// DNS for `names` (all on 127.0.0.1) and an echo origin.
pub(super) async fn world(names: &[&str]) -> (TestDns, TcpEcho) {
    let dns = TestDns::start().await;
    for n in names {
        dns.set_a(n, &[LOCAL], 60);
    }
    (dns, TcpEcho::start().await)
}

pub(super) fn policy(allow: &[&str]) -> String {
    let rules: Vec<String> = allow.iter().map(|h| format!("{h}:*")).collect();
    let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
    loopback_policy(&rules, "")
}

pub(super) async fn start(dir: &PolicyDir, dns: &TestDns, args: &[&str]) -> Proxy {
    let path = dir.file();
    let launch = Launch {
        args,
        policy_path: Some(&path),
        ..Launch::default()
    };
    Proxy::launch("", dns.addr(), launch).await
}

pub(super) async fn wait_generation(proxy: &Proxy, generation: f64) {
    proxy
        .wait_metric(
            "portcullis_policy_generation",
            &[],
            |g| g == generation,
            WAIT,
        )
        .await;
}

pub(super) fn write_renamed(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_write_is_picked_up_and_audited() {
    let (dns, echo) = world(&["a.test", "b.test"]).await;
    let dir = PolicyDir::new("inplace");
    std::fs::write(dir.file(), policy(&["a.test"])).unwrap();
    let proxy = start(&dir, &dns, &[]).await;
    let port = echo.addr().port();
    connect_refused(proxy.addr(), &format!("b.test:{port}"), 403, "not_allowed").await;

    std::fs::write(dir.file(), policy(&["a.test", "b.test"])).unwrap();
    wait_generation(&proxy, 2.0).await;
    let mut tunnel = open_tunnel(proxy.addr(), &format!("b.test:{port}")).await;
    echo_roundtrip(&mut tunnel, b"after reload").await;

    let rec = proxy
        .wait_audit(
            |r| r["event"] == "policy_reload" && r["policy_generation"] == 2,
            WAIT,
        )
        .await;
    assert_eq!(rec["result"], "ok");
    assert_eq!(rec["sha256"].as_str().map(str::len), Some(64));
    let changes = rec["changes"].to_string();
    assert!(changes.contains("b.test:*"), "{changes}");
    let text = proxy.metrics().await;
    assert!(
        text.contains("portcullis_policy_reloads_total{result=\"ok\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_last_good_policy_until_a_valid_one_arrives() {
    let (dns, echo) = world(&["a.test", "b.test"]).await;
    let dir = PolicyDir::new("invalid");
    std::fs::write(dir.file(), policy(&["a.test"])).unwrap();
    let proxy = start(&dir, &dns, &[]).await;
    let port = echo.addr().port();

    std::fs::write(dir.file(), "version: 1\nallow:\n  - \"*\"\n  - b.test:0\n").unwrap();
    proxy
        .wait_metric(
            "portcullis_policy_reloads_total",
            &[("result", "error")],
            |n| n == 1.0,
            WAIT,
        )
        .await;
    let rec = proxy
        .wait_audit(
            |r| r["event"] == "policy_reload" && r["result"] == "error",
            WAIT,
        )
        .await;
    let error = rec["error"].as_str().unwrap();
    assert!(
        error.contains("policy.yaml:3:5: error[bad-wildcard]:")
            && error.contains("policy.yaml:4:5: error[bad-port]:"),
        "{error}"
    );
    // The audit record and the log line are written independently: wait
    // for the line rather than read stderr once.
    crate::support::client::eventually(WAIT, "the reload error logged with its place", || async {
        proxy.stderr_text().contains("policy.yaml:3:5")
    })
    .await;
    assert_eq!(
        crate::support::client::http_get(proxy.admin(), "/readyz")
            .await
            .unwrap()
            .0,
        200
    );
    let mut tunnel = open_tunnel(proxy.addr(), &format!("a.test:{port}")).await;
    echo_roundtrip(&mut tunnel, b"still served").await;
    let text = proxy.metrics().await;
    assert!(text.contains("portcullis_policy_generation 1"), "{text}");

    write_renamed(&dir.file(), &policy(&["b.test"]));
    wait_generation(&proxy, 2.0).await;
    let mut tunnel = open_tunnel(proxy.addr(), &format!("b.test:{port}")).await;
    echo_roundtrip(&mut tunnel, b"fixed").await;
}

/// A client loop does CONNECTs while the file is replaced 20 times: no
/// connection fails, and a tunnel opened before the reloads still works after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_drop_nothing() {
    let (dns, echo) = world(&["a.test", "x.test", "y.test"]).await;
    let dir = PolicyDir::new("load");
    std::fs::write(dir.file(), policy(&["a.test", "x.test"])).unwrap();
    let proxy = start(&dir, &dns, &[]).await;
    let port = echo.addr().port();
    let mut early = open_tunnel(proxy.addr(), &format!("a.test:{port}")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let addr = proxy.addr();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut s = connect(addr).await;
                send_connect(&mut s, &format!("a.test:{port}")).await;
                let head = read_head(&mut s).await;
                let counter = if head.status == 200 { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for generation in 2..=21 {
        let extra = if generation % 2 == 0 {
            "y.test"
        } else {
            "x.test"
        };
        write_renamed(&dir.file(), &policy(&["a.test", extra]));
        wait_generation(&proxy, f64::from(generation)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "the client loop barely ran"
    );
    echo_roundtrip(&mut early, b"opened before 20 reloads").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidate_on_reload_closes_exactly_the_revoked_tunnels() {
    let (dns, echo) = world(&["keep.test", "drop.test"]).await;
    let dir = PolicyDir::new("revalidate");
    std::fs::write(dir.file(), policy(&["keep.test", "drop.test"])).unwrap();
    let proxy = start(&dir, &dns, &["--revalidate-on-reload"]).await;
    let port = echo.addr().port();
    let mut keep = open_tunnel(proxy.addr(), &format!("keep.test:{port}")).await;
    let mut cut = open_tunnel(proxy.addr(), &format!("drop.test:{port}")).await;
    echo_roundtrip(&mut cut, b"before").await;

    write_renamed(&dir.file(), &policy(&["keep.test"]));
    wait_generation(&proxy, 2.0).await;
    expect_closed(&mut cut, WAIT).await;
    let rec = proxy
        .wait_audit(
            |r| r["host"] == "drop.test" && r["event"] == "connection",
            WAIT,
        )
        .await;
    assert_eq!(
        (rec["reason"].as_str(), rec["decision"].as_str()),
        (Some("policy_revoked"), Some("deny"))
    );
    assert_eq!(
        rec["policy_generation"], 1,
        "the record names the generation that allowed it"
    );
    echo_roundtrip(&mut keep, b"still allowed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_revalidation_open_tunnels_outlive_their_rule() {
    let (dns, echo) = world(&["gone.test"]).await;
    let dir = PolicyDir::new("norevalidate");
    std::fs::write(dir.file(), policy(&["gone.test"])).unwrap();
    let proxy = start(&dir, &dns, &[]).await;
    let port = echo.addr().port();
    let mut tunnel = open_tunnel(proxy.addr(), &format!("gone.test:{port}")).await;
    write_renamed(&dir.file(), &policy(&[]));
    wait_generation(&proxy, 2.0).await;
    echo_roundtrip(&mut tunnel, b"kept open").await;
    connect_refused(
        proxy.addr(),
        &format!("gone.test:{port}"),
        403,
        "not_allowed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_rules_stay_enforced_and_are_counted_and_logged_at_start_and_reload() {
    let (dns, echo) = world(&["old.test", "older.test"]).await;
    let dir = PolicyDir::new("expired");
    let port = echo.addr().port();
    let with = |extra: &str| {
        format!(
            "version: 1\nallow:\n  - {{dest: \"old.test:*\", owner: team-a, ticket: SEC-1, expires: 2020-01-01}}\n{extra}ip_guard:\n  allowed: [127.0.0.0/8]\n"
        )
    };
    std::fs::write(dir.file(), with("")).unwrap();
    let proxy = start(&dir, &dns, &[]).await;
    proxy
        .wait_metric("portcullis_policy_expired_rules", &[], |n| n == 1.0, WAIT)
        .await;
    // Expired, still enforced: the tunnel opens.
    let mut tunnel = open_tunnel(proxy.addr(), &format!("old.test:{port}")).await;
    echo_roundtrip(&mut tunnel, b"still allowed").await;

    std::fs::write(
        dir.file(),
        with("  - {dest: \"older.test:*\", owner: team-b, expires: 2019-05-01}\n"),
    )
    .unwrap();
    wait_generation(&proxy, 2.0).await;
    proxy
        .wait_metric("portcullis_policy_expired_rules", &[], |n| n == 2.0, WAIT)
        .await;
    crate::support::client::eventually(WAIT, "expired rules logged at reload", || async {
        let log = proxy.stderr_text();
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("expired-rule") && l.contains("older.test"))
    })
    .await;
    let log = proxy.stderr_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("expired-rule") && l.contains("old.test")),
        "start-up warning:\n{log}"
    );
}
