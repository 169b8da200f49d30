//! The proxy under test: `portcullis run` as a child process, with its stderr, audit log and admin API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use super::client::http_get;
use super::metrics::metric_sum;
use super::{AbortOnDrop, TempPolicy, bin, root};

/// How long the binary may take to bind both listeners and report ready.
pub const STARTUP: Duration = Duration::from_secs(15);

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(25);

/// The keys every audit record carries (`null` when absent).
pub const AUDIT_KEYS: [&str; 26] = [
    "ts",
    "event",
    "listener",
    "client",
    "client_addr",
    "method",
    "host",
    "port",
    "sni",
    "decision",
    "reason",
    "rule",
    "upstream_addr",
    "status",
    "bytes_egress",
    "bytes_ingress",
    "duration_ms",
    "policy_generation",
    "request_id",
    "instance",
    "policy_sha256",
    "identity",
    "error",
    "end",
    "enforce_reason",
    "detail",
];

/// A policy that allows `allow` (rules as written) and carves loopback out of the IP guard so
/// the test origins on 127.0.0.1 / ::1 can be dialed. `extra` is appended as top-level YAML.
pub fn loopback_policy(allow: &[&str], extra: &str) -> String {
    format!(
        "version: 1\n{}ip_guard:\n  allowed: [127.0.0.0/8, \"::1/128\"]\n{extra}",
        allow_list(allow)
    )
}

/// The `allow:` block for `rules`, each quoted.
pub fn allow_list(rules: &[&str]) -> String {
    if rules.is_empty() {
        return "allow: []\n".to_owned();
    }
    let items: String = rules.iter().map(|r| format!("  - \"{r}\"\n")).collect();
    format!("allow:\n{items}")
}

/// How the proxy is configured beyond its policy and nameserver.
#[derive(Debug, Clone, Copy, Default)]
pub struct Launch<'a> {
    /// Extra `run` flags.
    pub args: &'a [&'a str],
    /// Pass policy, listeners, nameserver, audit log and log format as `PORTCULLIS_*`
    /// variables instead of flags.
    pub via_env: bool,
    /// Audit log to stdout (`-`, the default) instead of a file.
    pub audit_stdout: bool,
    /// Use this policy file (which the test owns and may rewrite) instead of
    /// writing the YAML to a temp file.
    pub policy_path: Option<&'a std::path::Path>,
    /// Start under `ulimit -n` of this many file descriptors.
    pub fd_limit: Option<u32>,
    /// Extra environment variables for the process.
    pub env: &'a [(&'a str, &'a str)],
}

/// Where the audit records of a [`Proxy`] go.
enum Audit {
    File(PathBuf),
    Stdout(Lines, AbortOnDrop),
}

type Lines = Arc<Mutex<Vec<String>>>;

/// Collects the lines `pipe` produces in the background.
fn collect_lines(pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> (Lines, AbortOnDrop) {
    let lines = Lines::default();
    let sink = lines.clone();
    let task = AbortOnDrop(tokio::spawn(async move {
        let mut reader = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    }));
    (lines, task)
}

/// A running `portcullis run`, killed when dropped.
pub struct Proxy {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    admin: SocketAddr,
    audit: Audit,
    stderr: Lines,
    _policy: Option<TempPolicy>,
    stderr_task: AbortOnDrop,
}

impl Proxy {
    /// Writes `policy_yaml` to a temp file and starts the proxy on 127.0.0.1:0 (explicit and
    /// admin listeners) with `dns` as its only nameserver and a fresh audit file; returns once
    /// both listeners are logged as bound and `/readyz` answers 200.
    pub async fn start(policy_yaml: &str, dns: SocketAddr, extra_args: &[&str]) -> Proxy {
        let launch = Launch {
            args: extra_args,
            ..Launch::default()
        };
        Proxy::launch(policy_yaml, dns, launch).await
    }

    /// [`Proxy::start`] with the choices of `launch`.
    pub async fn launch(policy_yaml: &str, dns: SocketAddr, launch: Launch<'_>) -> Proxy {
        static N: AtomicUsize = AtomicUsize::new(0);
        let policy = launch
            .policy_path
            .is_none()
            .then(|| TempPolicy::new(policy_yaml));
        let policy_arg = match (&policy, launch.policy_path) {
            (Some(temp), _) => temp.path_str().to_owned(),
            (None, Some(path)) => path.to_str().expect("UTF-8 policy path").to_owned(),
            (None, None) => unreachable!("one of the two is set"),
        };
        let audit_path = std::env::temp_dir().join(format!(
            "portcullis-audit-{}-{}.jsonl",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&audit_path);
        let audit_arg = match launch.audit_stdout {
            true => "-",
            false => audit_path.to_str().expect("UTF-8 temp path"),
        };
        let settings = [
            ("--policy", "PORTCULLIS_POLICY", policy_arg.as_str()),
            ("--listen", "PORTCULLIS_LISTEN", "127.0.0.1:0"),
            ("--admin", "PORTCULLIS_ADMIN", "127.0.0.1:0"),
            ("--nameserver", "PORTCULLIS_NAMESERVERS", &dns.to_string()),
            ("--audit-log", "PORTCULLIS_AUDIT_LOG", audit_arg),
            ("--log-format", "PORTCULLIS_LOG_FORMAT", "json"),
        ]
        .map(|(flag, var, value)| (flag, var, value.to_owned()));
        let mut cmd = match launch.fd_limit {
            None => Command::new(bin()),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")])
                    .arg(bin());
                sh
            }
        };
        cmd.arg("run");
        // The test's own environment must not change what the flags say
        // (nor, on ECS, name the instance).
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("PORTCULLIS_") || key_text.starts_with("ECS_CONTAINER_METADATA")
            {
                cmd.env_remove(key);
            }
        }
        cmd.envs(launch.env.iter().copied());
        for (flag, var, value) in &settings {
            match launch.via_env {
                true => cmd.env(var, value),
                false => cmd.args([flag, value.as_str()]),
            };
        }
        cmd.args(launch.args)
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(match launch.audit_stdout {
                true => Stdio::piped(),
                false => Stdio::null(),
            })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn portcullis run");
        let pid = child.id().expect("child pid");
        let (stderr, stderr_task) = collect_lines(child.stderr.take().expect("piped stderr"));
        let audit = match child.stdout.take() {
            Some(stdout) => {
                let (lines, task) = collect_lines(stdout);
                Audit::Stdout(lines, task)
            }
            None => Audit::File(audit_path),
        };
        let mut proxy = Proxy {
            child,
            pid,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            audit,
            stderr,
            _policy: policy,
            stderr_task,
        };
        proxy.await_listeners().await;
        proxy.await_ready().await;
        proxy
    }

    /// Waits for the two `listening` lines on stderr, failing fast if the process exits.
    async fn await_listeners(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let explicit = self.listening_addr("explicit");
            let admin = self.listening_addr("admin");
            if let (Some(explicit), Some(admin)) = (explicit, admin) {
                self.addr = explicit;
                self.admin = admin;
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The reader ends at EOF: then it holds all the process wrote before dying.
                let _ = tokio::time::timeout(STARTUP, &mut self.stderr_task.0).await;
                panic!(
                    "portcullis exited at start-up ({status}):\n{}",
                    self.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no `listening` lines for explicit and admin within {STARTUP:?}:\n{}",
                self.stderr_text()
            );
            sleep(POLL).await;
        }
    }

    /// Polls `/readyz` until it answers 200.
    async fn await_ready(&self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok((200, _)) = http_get(self.admin, "/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz not 200 within {STARTUP:?}:\n{}",
                self.stderr_text()
            );
            sleep(POLL).await;
        }
    }

    /// The address of a `listening` line for `listener` (`explicit`, `admin`,
    /// `transparent_tls`, `transparent_http`), if logged yet.
    pub fn listening_addr(&self, listener: &str) -> Option<SocketAddr> {
        let lines = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        lines
            .iter()
            .find_map(|line| super::log_line::listening_addr(line, listener))
    }

    /// The explicit proxy listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        lines.join("\n")
    }

    /// Every complete line of the audit log so far, parsed. A line that is not JSON fails the
    /// test (on stdout, that means something other than audit records was written there).
    pub fn audit_records(&self) -> Vec<Value> {
        let lines: Vec<String> = match &self.audit {
            Audit::File(path) => {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
                // The last piece is empty or a line still being written.
                lines.pop();
                lines
            }
            Audit::Stdout(lines, _) => lines.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        };
        (lines.iter().filter(|l| !l.trim().is_empty()))
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Polls the audit log until a record satisfies `pred`, and returns it.
    pub async fn wait_audit(&self, pred: impl Fn(&Value) -> bool, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let records = self.audit_records();
            if let Some(found) = records.iter().find(|r| pred(r)) {
                return found.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no matching audit record within {within:?}; records:\n{}\nstderr:\n{}",
                (records.iter().map(Value::to_string))
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.stderr_text()
            );
            sleep(POLL).await;
        }
    }

    /// `GET /metrics` on the admin listener (must be 200).
    pub async fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin, "/metrics")
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", self.stderr_text()));
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// Polls `/metrics` until the sum of samples `name{labels}` satisfies `pred`; returns the text.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        pred: impl Fn(f64) -> bool,
        within: Duration,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.metrics().await;
            if metric_sum(&text, name, labels).is_some_and(&pred) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} never matched within {within:?}:\n{text}"
            );
            sleep(POLL).await;
        }
    }

    /// Sends SIGTERM to the process.
    pub async fn sigterm(&self) {
        self.signal("TERM").await;
    }

    /// Sends the signal `name` (`TERM`, `INT`, `HUP`) to the process.
    pub async fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// Waits for the process to exit, and asserts it exited with status 0.
    pub async fn wait_clean_exit(&mut self, within: Duration) {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for portcullis"),
            Err(_) => panic!(
                "portcullis still running after {within:?}:\n{}",
                self.stderr_text()
            ),
        };
        assert!(
            status.success(),
            "exit status {status}:\n{}",
            self.stderr_text()
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Audit::File(path) = &self.audit {
            let _ = std::fs::remove_file(path);
        }
    }
}
