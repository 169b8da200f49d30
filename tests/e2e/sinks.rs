//! Log sinks that stall or move (docs/security.md): a stderr or stdout nobody reads never stalls the
//! data path or `/healthz`, losses are counted, SIGTERM ends in bounded time, and the audit
//! file follows logrotate's rename and a delete. [`overflow`]: what a full audit queue does.

mod overflow;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

use crate::support::client::{
    LOCAL, connect_refused, echo_roundtrip, finish, http_get, open_tunnel,
};
use crate::support::dns::TestDns;
use crate::support::log_line::listening_addr;
use crate::support::metrics::metric_sum;
use crate::support::origin::TcpEcho;
use crate::support::proxy::{POLL, STARTUP, loopback_policy};
use crate::support::{AbortOnDrop, TempPolicy, bin, root};

const WAIT: Duration = Duration::from_secs(10);

/// The names the test policy allows: `allowed.test` (resolving to 127.0.0.1) on any port,
/// and the names under `nx.test` (which do not exist).
const ALLOWED: [&str; 2] = ["allowed.test:*", "*.nx.test"];

/// Where the child's stdout (the audit log with `--audit-log -`) and stderr go.
#[derive(Clone, Copy, PartialEq)]
enum Sink {
    /// Read continuously, lines kept.
    Read,
    /// Read until start-up is logged, then never again: a stalled pipe.
    Stalled,
}

/// `portcullis run` with the pipes wired as a test needs; killed when dropped.
struct Spawned {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Held open and unread while stalled.
    _stderr_pipe: Option<BufReader<ChildStderr>>,
    stdout: Option<ChildStdout>,
    reader: Option<AbortOnDrop>,
    _policy: TempPolicy,
    _dns: TestDns,
}

/// How the exchanges a test sent were answered.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// `403 not_allowed`: admitted, so each must have its audit record.
    forbidden: usize,
    /// `503 audit_unavailable`: refused for want of room in the audit queue.
    unavailable: usize,
}

impl Spawned {
    /// Starts the proxy on 127.0.0.1:0 allowing only [`ALLOWED`] (`not_allowed` needs no DNS);
    /// `audit` is a path or `-` (then stdout is a pipe the test does not read until
    /// [`Spawned::read_audit`]).
    async fn start(audit: &str, stderr: Sink, env: &[(&str, &str)], args: &[&str]) -> Spawned {
        let dns = TestDns::start().await;
        dns.set_a("allowed.test", &[LOCAL], 60);
        let policy = TempPolicy::new(&loopback_policy(&ALLOWED, ""));
        let mut cmd = Command::new(bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PORTCULLIS_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("run")
            .args(["--policy", policy.path_str()])
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--nameserver", &dns.addr().to_string()])
            .args(["--audit-log", audit, "--log-format", "json"])
            .args(args)
            .envs(env.iter().copied())
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(if audit == "-" {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn portcullis run");
        let mut pipe = BufReader::new(child.stderr.take().expect("piped stderr"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (mut addr, mut admin) = (None, None);
        let started = timeout(STARTUP, async {
            while addr.is_none() || admin.is_none() {
                let mut line = String::new();
                if pipe.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return false;
                }
                addr = addr.or_else(|| listening_addr(&line, "explicit"));
                admin = admin.or_else(|| listening_addr(&line, "admin"));
                lines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
            true
        })
        .await;
        let text = lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .concat();
        assert!(matches!(started, Ok(true)), "no listening lines:\n{text}");
        let (pipe, reader) = match stderr {
            Sink::Stalled => (Some(pipe), None),
            Sink::Read => {
                let sink = lines.clone();
                let task = AbortOnDrop(tokio::spawn(async move {
                    let mut reader = pipe.lines();
                    while let Ok(Some(line)) = reader.next_line().await {
                        sink.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(line);
                    }
                }));
                (None, Some(task))
            }
        };
        let spawned = Spawned {
            stdout: child.stdout.take(),
            child,
            addr: addr.expect("explicit listener"),
            admin: admin.expect("admin listener"),
            stderr: lines,
            _stderr_pipe: pipe,
            reader,
            _policy: policy,
            _dns: dns,
        };
        spawned.await_ready().await;
        spawned
    }

    async fn await_ready(&self) {
        let deadline = Instant::now() + STARTUP;
        while !matches!(http_get(self.admin, "/readyz").await, Ok((200, _))) {
            assert!(
                Instant::now() < deadline,
                "/readyz not 200 within {STARTUP:?}"
            );
            sleep(POLL).await;
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("\n")
    }

    /// The sum of the samples `name` on `/metrics`, `None` when the proxy does not export it.
    async fn metric(&self, name: &str) -> Option<f64> {
        self.metric_with(name, &[]).await
    }

    /// [`Spawned::metric`] over the samples with every label of `labels`.
    async fn metric_with(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (status, text) = http_get(self.admin, "/metrics")
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        assert_eq!(status, 200, "GET /metrics");
        metric_sum(&text, name, labels)
    }

    /// The address of `listener` (`transparent_tls`, ...) from its `listening` line.
    async fn listening(&self, listener: &str) -> SocketAddr {
        let mut addr = None;
        until(self, WAIT, &format!("a {listener} listening line"), || {
            addr = (self.stderr.lock().unwrap_or_else(PoisonError::into_inner))
                .iter()
                .find_map(|l| listening_addr(l, listener));
            let found = addr.is_some();
            async move { found }
        })
        .await;
        addr.expect("found")
    }

    /// Starts reading the audit log from stdout (`--audit-log -`), unread until now;
    /// the lines read so far are in the returned list.
    fn read_audit(&mut self) -> (Arc<Mutex<Vec<Value>>>, AbortOnDrop) {
        let stdout = self.stdout.take().expect("stdout not read yet");
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        let task = AbortOnDrop(tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let record = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}"));
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(record);
            }
        }));
        (records, task)
    }

    async fn healthz(&self) {
        let answer = http_get(self.admin, "/healthz").await;
        assert!(matches!(answer, Ok((200, _))), "/healthz: {answer:?}");
    }

    /// Sends refused CONNECTs for `{prefix}-{i}.test` (`not_allowed`), `parallel` at a time;
    /// each must be answered (the client helpers fail after 10 s).
    async fn refusals(&self, prefix: &str, range: std::ops::Range<usize>, parallel: usize) {
        self.refuse(prefix, "test", range, parallel).await;
    }

    /// [`Spawned::refusals`] for `{prefix}-{i}.{domain}`; under `nx.test` (allowed, but
    /// the names do not exist) each is a `dns_error` that logs a debug line.
    async fn refuse(
        &self,
        prefix: &str,
        domain: &str,
        range: std::ops::Range<usize>,
        parallel: usize,
    ) {
        let (status, reason) = match domain {
            "nx.test" => (502, "dns_error"),
            _ => (403, "not_allowed"),
        };
        let next = Arc::new(AtomicUsize::new(range.start));
        let mut tasks = JoinSet::new();
        for _ in 0..parallel {
            let (next, addr) = (next.clone(), self.addr);
            let (prefix, domain) = (prefix.to_owned(), domain.to_owned());
            let end = range.end;
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        return;
                    }
                    let target = format!("{prefix}-{i}.{domain}:443");
                    connect_refused(addr, &target, status, reason).await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("refusal task");
        }
    }

    async fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        timeout(within, self.child.wait())
            .await
            .ok()
            .map(|s| s.expect("wait"))
    }
}

/// Polls `cond` until it holds; fails with `what` and the proxy's stderr after `within`.
async fn until<F, Fut>(proxy: &Spawned, within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}\nstderr:\n{}",
            proxy.stderr_text()
        );
        sleep(POLL).await;
    }
}

/// The JSON audit lines in `path` (complete lines only), or none when it does not exist.
fn audit_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<&str> = text.split('\n').collect();
    lines.pop();
    (lines.iter())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn hosts(path: &Path) -> Vec<String> {
    (audit_lines(path).iter())
        .filter_map(|r| r["host"].as_str().map(str::to_owned))
        .collect()
}

/// A fresh audit path in the temp directory, with its rotated siblings removed on drop.
struct AuditPath(PathBuf);

impl AuditPath {
    fn new(name: &str) -> AuditPath {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "portcullis-sinks-{}-{n}-{name}.jsonl",
            std::process::id()
        ));
        AuditPath(path)
    }

    fn with_suffix(&self, suffix: &str) -> PathBuf {
        let mut s = self.0.clone().into_os_string();
        s.push(suffix);
        PathBuf::from(s)
    }

    fn str(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for AuditPath {
    fn drop(&mut self) {
        for suffix in ["", ".1", ".2"] {
            let _ = std::fs::remove_file(self.with_suffix(suffix));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stderr_never_stalls_the_proxy_and_lost_lines_are_counted() {
    let audit = AuditPath::new("stderr");
    // Debug level: every connection writes diagnostic lines, as when someone is debugging.
    let proxy = Spawned::start(
        audit.str(),
        Sink::Stalled,
        &[("PORTCULLIS_LOG", "debug")],
        &[],
    )
    .await;
    // A 64 KiB pipe fills within a few hundred refusals; go well past it, until lines are lost.
    let mut sent = 0;
    loop {
        proxy.refuse("stderr", "nx.test", sent..sent + 500, 8).await;
        sent += 500;
        proxy.healthz().await;
        if proxy
            .metric("portcullis_log_lines_dropped_total")
            .await
            .is_some_and(|n| n > 0.0)
        {
            break;
        }
        assert!(
            sent < 20_000,
            "{sent} refusals and portcullis_log_lines_dropped_total is still 0 or absent"
        );
    }
    // Still serving after the loss, and the audit log (a file) is complete.
    connect_refused(proxy.addr, "one-more.test:443", 403, "not_allowed").await;
    proxy.healthz().await;
    let path = audit.0.clone();
    until(&proxy, WAIT, "every refusal audited", || {
        let path = path.clone();
        async move { hosts(&path).len() > sent }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_audit_stdout_in_drop_mode_serves_counts_and_warns_the_true_count() {
    let echo = TcpEcho::start().await;
    let args = ["--audit-overflow", "drop", "--audit-queue-records", "500"];
    let proxy = Spawned::start("-", Sink::Read, &[], &args).await;
    // Nobody reads stdout: the pipe fills, then the writer's queue (for good, not a burst
    // the writer is about to take); then records are dropped.
    let mut sent = 0;
    let dropped = loop {
        proxy.refusals("stdout", sent..sent + 200, 8).await;
        sent += 200;
        proxy.healthz().await;
        let full =
            (proxy.metric("portcullis_audit_queue_records").await).is_some_and(|q| q >= 500.0);
        match proxy.metric("portcullis_audit_records_dropped_total").await {
            Some(n) if n > 0.0 && full => break n,
            _ => assert!(
                sent < 40_000,
                "{sent} refusals and portcullis_audit_records_dropped_total is still 0 or absent"
            ),
        }
    };
    assert!(dropped <= sent as f64, "{dropped} dropped of {sent}");
    let queued = proxy.metric("portcullis_audit_queue_records").await;
    assert!(
        queued.is_some_and(|q| q > 0.0),
        "portcullis_audit_queue_records = {queued:?} while the writer is stuck"
    );
    // A burst more, then quiet: the warnings must add up to what the metric says.
    proxy.refusals("burst", 0..300, 8).await;
    let total = proxy
        .metric("portcullis_audit_records_dropped_total")
        .await
        .expect("exported");
    assert!(
        total >= dropped + 300.0,
        "{total} after a burst of 300 more"
    );
    let warned = || {
        (proxy.stderr.lock().unwrap_or_else(PoisonError::into_inner))
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["lost"].as_u64())
            .sum::<u64>()
    };
    until(
        &proxy,
        WAIT,
        "warnings adding up to the dropped total",
        || {
            let w = warned();
            async move { w as f64 == total }
        },
    )
    .await;
    connect_refused(proxy.addr, "one-more.test:443", 403, "not_allowed").await;
    // Allowed traffic keeps flowing; nothing was refused for want of room.
    let mut tunnel = open_tunnel(proxy.addr, &format!("allowed.test:{}", echo.addr().port())).await;
    echo_roundtrip(&mut tunnel, b"still serving").await;
    finish(&mut tunnel).await;
    let refused = proxy
        .metric_with(
            "portcullis_requests_total",
            &[("reason", "audit_unavailable")],
        )
        .await;
    assert_eq!(refused.unwrap_or(0.0), 0.0);
    proxy.healthz().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_audit_sink_exits_in_time_and_reports_what_it_abandoned() {
    let mut proxy = Spawned::start("-", Sink::Read, &[], &["--drain-timeout", "1s"]).await;
    // ~1000 records are several times a pipe's 64 KiB: the writer is stuck with records left.
    let sent = 1000;
    proxy.refusals("term", 0..sent, 8).await;
    proxy.signal("TERM").await;
    let signalled = Instant::now();
    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    let status = status
        .unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{}", proxy.stderr_text()));
    assert!(
        took < Duration::from_secs(6),
        "exit took {took:?}, over --drain-timeout + 5 s"
    );
    assert!(status.success(), "exit status {status}");
    // What reached the pipe, plus what the last line says was abandoned, covers every record.
    let mut written = Vec::new();
    let mut stdout = proxy.stdout.take().expect("piped stdout");
    timeout(WAIT, stdout.read_to_end(&mut written))
        .await
        .expect("stdout at EOF")
        .expect("read stdout");
    let complete = written.iter().filter(|b| **b == b'\n').count();
    // The reader ends at EOF: then it holds every line the process wrote.
    if let Some(reader) = proxy.reader.as_mut() {
        let _ = timeout(WAIT, &mut reader.0).await;
    }
    let stderr = proxy.stderr_text();
    let last = stderr.lines().last().unwrap_or_default();
    let last: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    let abandoned = last["abandoned"]
        .as_u64()
        .unwrap_or_else(|| panic!("last stderr line reports no `abandoned` count: {last}"));
    let records = sent + 1; // and the start-up policy_reload record
    assert!(abandoned >= 1, "{last}");
    assert!(
        complete + abandoned as usize >= records && abandoned as usize <= records,
        "{complete} lines written + {abandoned} abandoned vs {records} records: {last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_audit_file_is_reopened_and_nothing_is_lost() {
    let audit = AuditPath::new("rotate");
    let proxy = Spawned::start(audit.str(), Sink::Read, &[], &[]).await;
    proxy.refusals("before", 0..20, 4).await;
    let path = audit.0.clone();
    until(&proxy, WAIT, "records before the rotation", || {
        let path = path.clone();
        async move { hosts(&path).len() >= 20 }
    })
    .await;

    // logrotate's default `create` mode: rename, then a new empty file at the path.
    let rotated = audit.with_suffix(".1");
    std::fs::rename(&audit.0, &rotated).expect("rename");
    std::fs::write(&audit.0, b"").expect("create");
    let mut sent = 0;
    let deadline = Instant::now() + WAIT;
    while hosts(&audit.0).is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing written at {} after the rename ({sent} refusals)\n{}",
            audit.str(),
            proxy.stderr_text()
        );
        proxy.refusals("after", sent..sent + 10, 2).await;
        sent += 10;
        sleep(POLL).await;
    }
    // Every refusal is in one of the two files, exactly once.
    let expected: HashSet<String> = (0..20)
        .map(|i| format!("before-{i}.test"))
        .chain((0..sent).map(|i| format!("after-{i}.test")))
        .collect();
    until(&proxy, WAIT, "every record in one of the two files", || {
        let found: Vec<String> = hosts(&rotated).into_iter().chain(hosts(&audit.0)).collect();
        let ok = found.len() == expected.len()
            && found.iter().cloned().collect::<HashSet<_>>() == expected;
        async move { ok }
    })
    .await;

    // SIGHUP reopens at once: the reload record it causes is already in the new file.
    let second = audit.with_suffix(".2");
    std::fs::rename(&audit.0, &second).expect("rename again");
    proxy.signal("HUP").await;
    let path = audit.0.clone();
    until(
        &proxy,
        WAIT,
        "the SIGHUP's policy_reload record at the path",
        || {
            let reloads = (audit_lines(&path).iter())
                .filter(|r| r["event"] == "policy_reload")
                .count();
            async move { reloads == 1 }
        },
    )
    .await;
    let old = audit_lines(&second);
    assert!(
        old.iter().all(|r| r["event"] != "policy_reload"),
        "the SIGHUP's reload record went to the renamed file: {old:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_audit_file_is_recreated_and_loses_nothing() {
    let audit = AuditPath::new("delete");
    let proxy = Spawned::start(audit.str(), Sink::Read, &[], &[]).await;
    proxy.refusals("before", 0..5, 1).await;
    let path = audit.0.clone();
    until(&proxy, WAIT, "records before the delete", || {
        let path = path.clone();
        async move { hosts(&path).len() >= 5 }
    })
    .await;
    std::fs::remove_file(&audit.0).expect("delete");
    // At once, and then no more: the records must not go to the deleted file, waiting
    // for a later write to notice the delete.
    proxy.refusals("after", 0..10, 2).await;
    let expected: HashSet<String> = (0..10).map(|i| format!("after-{i}.test")).collect();
    until(
        &proxy,
        WAIT,
        "every record since the delete at the path",
        || {
            let found = hosts(&path);
            let ok = found.len() == expected.len()
                && found.iter().cloned().collect::<HashSet<_>>() == expected;
            async move { ok }
        },
    )
    .await;
    // And later ones after them.
    proxy.refusals("later", 0..10, 2).await;
    until(&proxy, WAIT, "later records at the path", || {
        let n = hosts(&path).len();
        async move { n == 20 }
    })
    .await;
}
