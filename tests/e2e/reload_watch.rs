//! What the policy watch takes and when: a slow in-place writer is taken at
//! its close and never before, a rename-replace at once, symlink chains into
//! other directories are followed, a deleted file fails the reload and keeps
//! the last good policy, and content that did not change is `unchanged`.

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::reload::{PolicyDir, WAIT, policy, start, wait_generation, world, write_renamed};
use crate::support::client::{connect, read_head, send_connect};
use crate::support::dns::TestDns;
use crate::support::metrics::metric_sum;
use crate::support::proxy::{Launch, POLL, Proxy};

/// How long the slow writer stops between its two halves.
const PAUSE: Duration = Duration::from_millis(2500);

/// "At once": well inside the 2 s a quiet-period watcher would wait.
const AT_ONCE: Duration = Duration::from_millis(1500);

/// The status the proxy answers `CONNECT target` with (the stream is dropped).
async fn connect_status(proxy: &Proxy, target: &str) -> u16 {
    let mut s = connect(proxy.addr()).await;
    send_connect(&mut s, target).await;
    read_head(&mut s).await.status
}

async fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_sum(&proxy.metrics().await, name, labels)
}

async fn generation(proxy: &Proxy) -> Option<f64> {
    metric(proxy, "portcullis_policy_generation", &[]).await
}

async fn reloads(proxy: &Proxy, result: &str) -> Option<f64> {
    metric(
        proxy,
        "portcullis_policy_reloads_total",
        &[("result", result)],
    )
    .await
}

/// Waits for `generation` and returns how long it took.
/// Waits until `policy_reloads_total{result}` is `count`, then for an audit
/// record of a reload with that result; returns the record.
async fn wait_reload(proxy: &Proxy, result: &str, count: f64) -> serde_json::Value {
    let labels = [("result", result)];
    proxy
        .wait_metric(
            "portcullis_policy_reloads_total",
            &labels,
            |n| n == count,
            WAIT,
        )
        .await;
    proxy
        .wait_audit(
            |r| r["event"] == "policy_reload" && r["result"] == result,
            WAIT,
        )
        .await
}

async fn generation_within(proxy: &Proxy, generation: f64, within: Duration) -> Duration {
    let started = Instant::now();
    proxy
        .wait_metric(
            "portcullis_policy_generation",
            &[],
            |g| g == generation,
            within,
        )
        .await;
    started.elapsed()
}

async fn start_at(path: &Path, dns: &TestDns) -> Proxy {
    let launch = Launch {
        policy_path: Some(path),
        ..Launch::default()
    };
    Proxy::launch("", dns.addr(), launch).await
}

/// Opens `path` for writing in place (truncated), as `>` in a shell does.
fn open_in_place(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

/// The incident: a writer rewrites the policy in place, stops for seconds
/// half-way (fd still open), then writes the rest. Its first half alone is a
/// valid policy that allows `denied.test`; the complete file denies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_in_place_writer_is_taken_at_its_close_and_never_before() {
    let (dns, echo) = world(&["old.test", "new.test", "denied.test"]).await;
    let dir = PolicyDir::new("slow-writer");
    std::fs::write(dir.file(), policy(&["old.test"])).unwrap();
    let proxy = start(&dir, &dns, &[]).await;
    let port = echo.addr().port();
    let [old, new, denied] = ["old", "new", "denied"].map(|h| format!("{h}.test:{port}"));

    let mut file = open_in_place(&dir.file());
    file.write_all(policy(&["new.test", "denied.test"]).as_bytes())
        .unwrap();
    let resume = Instant::now() + PAUSE;
    let mut probes = 0;
    while Instant::now() < resume {
        assert_eq!(
            connect_status(&proxy, &denied).await,
            403,
            "half a file is live"
        );
        assert_eq!(
            connect_status(&proxy, &new).await,
            403,
            "half a file is live"
        );
        assert_eq!(
            connect_status(&proxy, &old).await,
            200,
            "the old policy left"
        );
        assert_eq!(generation(&proxy).await, Some(1.0));
        probes += 1;
        sleep(POLL).await;
    }
    assert!(probes >= 5, "only {probes} probes during the pause");

    file.write_all(b"deny:\n  - denied.test\n").unwrap();
    drop(file);
    let took = generation_within(&proxy, 2.0, AT_ONCE).await;
    assert_eq!(connect_status(&proxy, &new).await, 200);
    assert_eq!(connect_status(&proxy, &denied).await, 403);
    assert_eq!(connect_status(&proxy, &old).await, 403);
    assert_eq!(
        (reloads(&proxy, "ok").await, reloads(&proxy, "error").await),
        (Some(1.0), Some(0.0)),
        "one reload, of the complete file ({took:?} after the close)"
    );
}

/// A writer killed mid-file: the kernel closes its descriptor, which is a
/// close like any other. What it left is compiled; here it does not parse,
/// so the reload fails and the last good policy stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_file_leaves_the_last_good_policy_when_its_prefix_is_invalid() {
    let (dns, echo) = world(&["old.test", "new.test"]).await;
    let dir = PolicyDir::new("killed-writer");
    std::fs::write(dir.file(), policy(&["old.test"])).unwrap();
    let proxy = start(&dir, &dns, &[]).await;
    let port = echo.addr().port();

    let full = policy(&["new.test"]);
    let cut = &full[..full.find("new.test").unwrap() + 3];
    let status = std::process::Command::new("sh")
        .args([
            "-c",
            r#"exec 3>"$0"; printf %s "$1" >&3; kill -KILL $$"#,
            dir.file().to_str().unwrap(),
            cut,
        ])
        .status()
        .unwrap();
    assert!(!status.success(), "the writer was meant to die: {status}");
    proxy
        .wait_metric(
            "portcullis_policy_reloads_total",
            &[("result", "error")],
            |n| n == 1.0,
            WAIT,
        )
        .await;
    assert_eq!(generation(&proxy).await, Some(1.0));
    assert_eq!(
        connect_status(&proxy, &format!("old.test:{port}")).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_replace_is_taken_at_once() {
    let (dns, echo) = world(&["a.test", "b.test"]).await;
    let dir = PolicyDir::new("rename-at-once");
    std::fs::write(dir.file(), policy(&["a.test"])).unwrap();
    let proxy = start(&dir, &dns, &[]).await;
    write_renamed(&dir.file(), &policy(&["b.test"]));
    generation_within(&proxy, 2.0, AT_ONCE).await;
    let port = echo.addr().port();
    assert_eq!(connect_status(&proxy, &format!("b.test:{port}")).await, 200);
    assert_eq!(connect_status(&proxy, &format!("a.test:{port}")).await, 403);
}

/// The kubelet's layout, swapped twice (each swap deletes the old data
/// directory): every swap is taken at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_data_swaps_are_taken_at_once_each_time() {
    let (dns, echo) = world(&["one.test", "two.test", "three.test"]).await;
    let dir = PolicyDir::new("configmap-twice");
    let data = |n: u32, allow: &str| {
        let d = dir.0.join(format!("..2026_11_29_17_0{n}_00.00000000{n}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("policy.yaml"), policy(&[allow])).unwrap();
        d
    };
    let first = data(1, "one.test");
    symlink(first.file_name().unwrap(), dir.0.join("..data")).unwrap();
    symlink("..data/policy.yaml", dir.file()).unwrap();
    let proxy = start(&dir, &dns, &[]).await;
    let port = echo.addr().port();

    let mut previous = first;
    for (n, host) in [(2, "two.test"), (3, "three.test")] {
        let next = data(n, host);
        symlink(next.file_name().unwrap(), dir.0.join("..data_tmp")).unwrap();
        std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
        std::fs::remove_dir_all(&previous).unwrap();
        generation_within(&proxy, f64::from(n), AT_ONCE).await;
        assert_eq!(connect_status(&proxy, &format!("{host}:{port}")).await, 200);
        previous = next;
    }
    assert_eq!(
        connect_status(&proxy, &format!("one.test:{port}")).await,
        403
    );
    assert_eq!(reloads(&proxy, "error").await, Some(0.0));
}

/// `link -> ../dir2/link2 -> dir3/real.yaml`: editing the final target in
/// place reloads; re-pointing `link2` into a fourth directory reloads, and
/// from then on edits there are seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_chain_into_other_directories_is_followed() {
    let (dns, echo) = world(&["a.test", "b.test", "c.test", "d.test"]).await;
    let [d1, d2, d3, d4] = ["chain-1", "chain-2", "chain-3", "chain-4"].map(PolicyDir::new);
    let real = d3.0.join("real.yaml");
    std::fs::write(&real, policy(&["a.test"])).unwrap();
    symlink(&real, d2.0.join("link2")).unwrap();
    let relative = Path::new("..")
        .join(d2.0.file_name().unwrap())
        .join("link2");
    symlink(&relative, d1.0.join("link")).unwrap();
    let proxy = start_at(&d1.0.join("link"), &dns).await;
    let port = echo.addr().port();
    let status = async |host: &str| connect_status(&proxy, &format!("{host}:{port}")).await;
    assert_eq!(status("a.test").await, 200);

    std::fs::write(&real, policy(&["b.test"])).unwrap();
    wait_generation(&proxy, 2.0).await;
    assert_eq!((status("a.test").await, status("b.test").await), (403, 200));

    let other = d4.0.join("other.yaml");
    std::fs::write(&other, policy(&["c.test"])).unwrap();
    symlink(&other, d2.0.join("link2.tmp")).unwrap();
    std::fs::rename(d2.0.join("link2.tmp"), d2.0.join("link2")).unwrap();
    generation_within(&proxy, 3.0, AT_ONCE).await;
    assert_eq!((status("b.test").await, status("c.test").await), (403, 200));

    std::fs::write(&other, policy(&["d.test"])).unwrap();
    wait_generation(&proxy, 4.0).await;
    assert_eq!((status("c.test").await, status("d.test").await), (403, 200));
    // The file the chain left is no longer the policy: had its edit been
    // taken, the next edit of `other` would be generation 6.
    std::fs::write(&real, policy(&["a.test"])).unwrap();
    std::fs::write(&other, policy(&["d.test", "b.test"])).unwrap();
    let deadline = Instant::now() + WAIT;
    while status("b.test").await != 200 {
        assert!(Instant::now() < deadline, "the last edit was never taken");
        sleep(POLL).await;
    }
    assert_eq!(generation(&proxy).await, Some(5.0));
    assert_eq!(status("a.test").await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_policy_fails_the_reload_keeps_the_last_good_one_and_is_loaded_when_back() {
    let (dns, echo) = world(&["a.test", "b.test"]).await;
    let dir = PolicyDir::new("deleted");
    std::fs::write(dir.file(), policy(&["a.test"])).unwrap();
    let proxy = start(&dir, &dns, &[]).await;
    let port = echo.addr().port();

    std::fs::remove_file(dir.file()).unwrap();
    let rec = wait_reload(&proxy, "error", 1.0).await;
    assert_eq!(rec["policy_generation"], 1, "{rec}");
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(error.contains("No such file"), "{rec}");
    let warned = proxy.stderr_text().lines().any(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        v["level"] == "WARN" && l.contains("policy.yaml") && l.contains("last good policy")
    });
    assert!(warned, "no WARN line:\n{}", proxy.stderr_text());
    assert_eq!(generation(&proxy).await, Some(1.0));
    assert_eq!(connect_status(&proxy, &format!("a.test:{port}")).await, 200);

    std::fs::write(dir.file(), policy(&["b.test"])).unwrap();
    generation_within(&proxy, 2.0, AT_ONCE).await;
    assert_eq!(connect_status(&proxy, &format!("b.test:{port}")).await, 200);
    assert_eq!(
        reloads(&proxy, "error").await,
        Some(1.0),
        "one deletion, one failure"
    );
}

/// SIGHUP takes the file as it stands, even mid-write; the writer's close
/// then finds the content already in force: `unchanged`, same generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_takes_the_file_as_it_is_and_the_close_after_is_unchanged() {
    let (dns, echo) = world(&["a.test", "b.test"]).await;
    let dir = PolicyDir::new("sighup-midwrite");
    std::fs::write(dir.file(), policy(&["a.test"])).unwrap();
    let proxy = start(&dir, &dns, &[]).await;
    let port = echo.addr().port();

    let mut file = open_in_place(&dir.file());
    file.write_all(policy(&["b.test"]).as_bytes()).unwrap();
    proxy.signal("HUP").await;
    wait_generation(&proxy, 2.0).await;
    assert_eq!(connect_status(&proxy, &format!("b.test:{port}")).await, 200);
    drop(file);
    let rec = wait_reload(&proxy, "unchanged", 1.0).await;
    assert_eq!(rec["policy_generation"], 2, "{rec}");
    assert_eq!(generation(&proxy).await, Some(2.0));
}

/// SIGHUP, an in-place rewrite and a rename-replace of the same bytes: three
/// `unchanged` reloads, and the generation stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_of_unchanged_content_are_unchanged_and_keep_the_generation() {
    let (dns, _echo) = world(&["a.test"]).await;
    let dir = PolicyDir::new("unchanged");
    let text = policy(&["a.test"]);
    std::fs::write(dir.file(), &text).unwrap();
    let proxy = start(&dir, &dns, &[]).await;

    proxy.signal("HUP").await;
    let rec = proxy
        .wait_audit(
            |r| r["event"] == "policy_reload" && r["result"] == "unchanged",
            WAIT,
        )
        .await;
    assert_eq!(rec["policy_generation"], 1, "{rec}");
    assert_eq!(rec["sha256"].as_str().map(str::len), Some(64), "{rec}");
    std::fs::write(dir.file(), &text).unwrap();
    proxy
        .wait_metric(
            "portcullis_policy_reloads_total",
            &[("result", "unchanged")],
            |n| n == 2.0,
            WAIT,
        )
        .await;
    write_renamed(&dir.file(), &text);
    proxy
        .wait_metric(
            "portcullis_policy_reloads_total",
            &[("result", "unchanged")],
            |n| n == 3.0,
            WAIT,
        )
        .await;
    assert_eq!(generation(&proxy).await, Some(1.0));
    assert_eq!(reloads(&proxy, "ok").await, Some(0.0));
}
