//! A real Prometheus server on loopback: scrapes one proxy's admin listener every second,
//! evaluates a rules file every second, and answers the HTTP API; killed when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::time::{Instant, sleep};

use crate::support::client::http_get;
use crate::support::proxy::POLL;

/// The scrape job's name: what the PodMonitor's `jobLabel` gives in a cluster.
pub(super) const JOB: &str = "portcullis";

/// Start-up on a loaded 2-core machine (Prometheus itself needs about a second).
const STARTUP: Duration = Duration::from_secs(60);

/// Another process may take the port between our probe and Prometheus's bind.
const BIND_ATTEMPTS: usize = 5;

/// A running `prometheus`, with its configuration, rules and storage in a temp directory.
pub(super) struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`/metrics`) as job [`JOB`] every second, with
    /// `rules` (the text of a rules file) evaluated every second; returns once it is ready.
    pub(super) async fn start(target: SocketAddr, rules: &str) -> Prometheus {
        let binary = find_in_path("prometheus").unwrap_or_else(|| {
            panic!(
                "`prometheus` is not installed: these tests run a real Prometheus server. \
                 Install it (Debian: apt-get install prometheus; .ci/run does)"
            )
        });
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-prometheus-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the Prometheus directory");
        std::fs::write(dir.join("rules.yml"), rules).expect("write rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{target}\"]\n",
            dir.join("rules.yml").display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");

        let mut failures = Vec::new();
        for _ in 0..BIND_ATTEMPTS {
            match Self::spawn(&binary, &dir).await {
                Ok((child, addr)) => return Prometheus { child, addr, dir },
                Err(log) if log.contains("address already in use") => failures.push(log),
                Err(log) => panic!("prometheus did not start:\n{log}"),
            }
        }
        panic!(
            "prometheus found no free port in {BIND_ATTEMPTS} attempts:\n{}",
            failures.join("\n---\n")
        );
    }

    /// One attempt on a port that was free a moment ago: the process and its address once
    /// `/-/ready` answers 200, or its log when it exits first.
    async fn spawn(binary: &Path, dir: &Path) -> Result<(Child, SocketAddr), String> {
        let addr = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            probe.local_addr().expect("local_addr")
        };
        let config = dir.join("prometheus.yml");
        let log_path = dir.join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("create prometheus.log");
        let mut child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}:\n{}", read_log()));
            }
            if let Ok((200, _)) = http_get(addr, "/-/ready").await {
                // Ready, but maybe another test's server won the port: ours has our config.
                if serves_config(addr, &config).await {
                    return Ok((child, addr));
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "address already in use: {addr} answers for another Prometheus"
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "prometheus not ready on {addr} within {STARTUP:?}:\n{}",
                    read_log()
                );
            }
            sleep(POLL).await;
        }
    }

    /// `GET /api/v1/PATH?PARAMS`: the `data` of a `success` answer, else the error it names.
    pub(super) async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url =
            reqwest::Url::parse_with_params(&format!("http://{}/api/v1/{path}", self.addr), params)
                .expect("API URL");
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let (status, body) = http_get(self.addr, &target)
            .await
            .map_err(|e| format!("GET {target}: {e}"))?;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {target}: {status}, not JSON ({e}): {body}"))?;
        match answer["status"].as_str() {
            Some("success") => Ok(answer["data"].clone()),
            _ => Err(format!(
                "{status} {}: {}",
                answer["errorType"], answer["error"]
            )),
        }
    }

    /// An instant query's result (a vector's samples, or a scalar), failing the test if the
    /// query is rejected.
    pub(super) async fn query(&self, expr: &str) -> Vec<Value> {
        let data = (self.api("query", &[("query", expr)]).await)
            .unwrap_or_else(|e| panic!("query `{expr}` failed: {e}\n{}", self.log()));
        match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                data["result"].as_array().cloned().unwrap_or_default()
            }
            _ => vec![data["result"].clone()],
        }
    }

    /// Polls the instant query `expr` until its result is not empty, and returns it.
    pub(super) async fn wait_query(&self, expr: &str, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let result = self.query(expr).await;
            if !result.is_empty() {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "`{expr}` returned nothing within {within:?}\nprometheus log:\n{}",
                self.log()
            );
            sleep(POLL).await;
        }
    }

    /// Polls `cond` until it holds; fails after `within` with `what` and the server's log.
    pub(super) async fn wait_for<F, Fut>(&self, within: Duration, what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while !cond().await {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}\nprometheus log:\n{}",
                self.log()
            );
            sleep(POLL).await;
        }
    }

    /// What the server has logged so far.
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SIGKILL, then reap it so that nothing writes to the directory being removed.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the Prometheus on `addr` was started with `config`.
async fn serves_config(addr: SocketAddr, config: &Path) -> bool {
    let Ok((200, body)) = http_get(addr, "/api/v1/status/flags").await else {
        return false;
    };
    let flags: Value = serde_json::from_str(&body).unwrap_or_default();
    flags["data"]["config.file"].as_str() == config.to_str()
}

/// `name`'s path in one of `$PATH`'s directories.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
