//! The systems under test: direct (no proxy), portcullis started as a child process, Squid,
//! or any running proxy; plus CPU and RSS readings from /proc.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

#[path = "../../tests/e2e/support/log_line.rs"]
mod log_line;
use log_line::listening_addr;

/// How long a proxy may take to start listening.
const STARTUP: Duration = Duration::from_secs(30);

/// What is being measured.
pub struct Target {
    pub name: String,
    /// The proxy's listener; `None` for the direct baseline.
    pub proxy: Option<SocketAddr>,
    /// The proxy process, for /proc readings.
    pub pid: Option<u32>,
    child: Option<Child>,
    scratch: Option<PathBuf>,
    _stderr: Option<tokio::task::JoinHandle<()>>,
    /// The proxy's stderr lines (start-up ones kept), when it was started here.
    lines: Arc<Mutex<Vec<String>>>,
}

impl Target {
    pub fn direct() -> Target {
        Target::external("direct", None, None)
    }

    /// A proxy started by someone else.
    pub fn external(name: &str, proxy: Option<SocketAddr>, pid: Option<u32>) -> Target {
        Target {
            name: name.to_owned(),
            proxy,
            pid,
            child: None,
            scratch: None,
            _stderr: None,
            lines: Arc::default(),
        }
    }

    /// Starts `portcullis run` on 127.0.0.1:0 with a policy allowing the origins, `dns` as its
    /// only nameserver, the audit log in a temp file and the admin listener (metrics) on.
    pub async fn portcullis(
        bin: &Path,
        dns: SocketAddr,
        extra: &[String],
    ) -> Result<Target, String> {
        Self::portcullis_named("portcullis", bin, dns, extra).await
    }

    /// [`Target::portcullis`] under another name (its own scratch directory too).
    pub async fn portcullis_named(
        name: &str,
        bin: &Path,
        dns: SocketAddr,
        extra: &[String],
    ) -> Result<Target, String> {
        let scratch = std::env::temp_dir().join(format!("{name}-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
        // Separate directories: portcullis watches the policy's directory, so an audit log
        // beside it would wake the watcher on every audit write.
        let (policy_dir, audit_dir) = (scratch.join("policy"), scratch.join("audit"));
        for dir in [&policy_dir, &audit_dir] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let policy = policy_dir.join("policy.yaml");
        let audit = audit_dir.join("audit.jsonl");
        let yaml = "version: 1\nallow:\n  - \"origin.test:*\"\n  - \"origin2.test:*\"\n\
                    ip_guard:\n  allowed: [127.0.0.0/8]\n";
        std::fs::write(&policy, yaml).map_err(|e| format!("{}: {e}", policy.display()))?;
        let mut cmd = Command::new(bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PORTCULLIS_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("run")
            .arg("--policy")
            .arg(&policy)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--nameserver", &dns.to_string(), "--log-format", "json"])
            .args(["--drain-timeout", "1s"])
            .arg("--audit-log")
            .arg(&audit)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let pid = child.id();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = lines.clone();
        let reader = tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut lines = sink.lock().unwrap_or_else(PoisonError::into_inner);
                // Keep the start-up lines and a tail; never grow without bound.
                if lines.len() >= 400 {
                    lines.drain(100..200);
                }
                lines.push(line);
            }
        });
        let mut target = Target {
            name: name.into(),
            proxy: None,
            pid,
            child: Some(child),
            scratch: Some(scratch),
            _stderr: Some(reader),
            lines: lines.clone(),
        };
        let text = || {
            lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .join("\n")
        };
        let deadline = Instant::now() + STARTUP;
        let (listen, admin) = loop {
            let found = |which: &str| {
                let lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
                lines.iter().find_map(|l| listening_addr(l, which))
            };
            if let (Some(l), Some(a)) = (found("explicit"), found("admin")) {
                break (l, a);
            }
            if let Some(Ok(Some(status))) = target.child.as_mut().map(Child::try_wait) {
                sleep(Duration::from_millis(100)).await;
                return Err(format!(
                    "portcullis exited at start-up ({status}):\n{}",
                    text()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "portcullis: no `listening` lines in {STARTUP:?}:\n{}",
                    text()
                ));
            }
            sleep(Duration::from_millis(25)).await;
        };
        while http_status(admin, "/readyz").await != Some(200) {
            if Instant::now() > deadline {
                return Err(format!(
                    "portcullis: /readyz not 200 in {STARTUP:?}:\n{}",
                    text()
                ));
            }
            sleep(Duration::from_millis(25)).await;
        }
        target.proxy = Some(listen);
        Ok(target)
    }

    /// Starts `squid -N -f conf` and waits until `addr` accepts connections.
    pub async fn squid(conf: &Path, addr: SocketAddr) -> Result<Target, String> {
        if TcpStream::connect(addr).await.is_ok() {
            return Err(format!(
                "something already listens on {addr} (a stale squid?)"
            ));
        }
        std::fs::create_dir_all("/tmp/peers/squid")
            .map_err(|e| format!("/tmp/peers/squid: {e}"))?;
        let chown = std::process::Command::new("chown")
            .args(["proxy:proxy", "/tmp/peers/squid"])
            .status();
        if !matches!(chown, Ok(s) if s.success()) {
            eprintln!("warning: `chown proxy:proxy /tmp/peers/squid` failed; Squid may not start");
        }
        let mut child = Command::new("squid")
            .arg("-N")
            .arg("-f")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn squid (apt-get install -y squid): {e}"))?;
        let pid = child.id();
        let deadline = Instant::now() + STARTUP;
        while TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "squid exited at start-up ({status}); see /tmp/peers/squid/cache.log"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("squid: {addr} not accepting within {STARTUP:?}"));
            }
            sleep(Duration::from_millis(50)).await;
        }
        Ok(Target {
            name: "squid".into(),
            proxy: Some(addr),
            pid,
            child: Some(child),
            scratch: None,
            _stderr: None,
            lines: Arc::default(),
        })
    }

    /// Starts Apache Traffic Server (`traffic_server` alone, no manager) with the files of
    /// `conf` copied to /tmp/peers/trafficserver/etc, `dns` as its only nameserver (no
    /// /etc/hosts), and waits until `addr` (the port of its records.config) accepts.
    pub async fn trafficserver(
        conf: &Path,
        addr: SocketAddr,
        dns: SocketAddr,
    ) -> Result<Target, String> {
        if TcpStream::connect(addr).await.is_ok() {
            return Err(format!(
                "something already listens on {addr} (a stale traffic_server?)"
            ));
        }
        let root = Path::new("/tmp/peers/trafficserver");
        let etc = root.join("etc");
        for dir in ["etc", "run", "cache"] {
            let _ = std::fs::remove_dir_all(root.join(dir));
        }
        for dir in ["etc", "run", "cache"] {
            std::fs::create_dir_all(root.join(dir))
                .map_err(|e| format!("{}: {e}", root.join(dir).display()))?;
        }
        for log in ["access.log", "diags.log", "error.log", "traffic.out"] {
            let _ = std::fs::remove_file(root.join(log));
        }
        let entries = std::fs::read_dir(conf).map_err(|e| format!("{}: {e}", conf.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let to = match name.to_str() {
                Some("runroot.yaml") => root.join("runroot.yaml"),
                _ => etc.join(&name),
            };
            std::fs::copy(entry.path(), &to).map_err(|e| format!("{}: {e}", to.display()))?;
        }
        // Files ATS looks for; empty = feature unused (no cache storage at all).
        for f in [
            "storage.config",
            "cache.config",
            "hosting.config",
            "parent.config",
            "volume.config",
            "splitdns.config",
            "ssl_multicert.config",
            "socks.config",
            "sni.yaml",
            "strategies.yaml",
            "resolv.conf.empty",
            "hosts.empty",
        ] {
            std::fs::write(etc.join(f), "").map_err(|e| format!("{f}: {e}"))?;
        }
        // The bench's DNS server (60 s TTL) as the only nameserver, as for portcullis; an
        // empty hosts file so the names are not read from /etc/hosts (Squid's source).
        let records = etc.join("records.config");
        let text = std::fs::read_to_string(&records).map_err(|e| format!("records.config: {e}"))?;
        let text: Vec<String> = (text.lines())
            .map(|l| {
                if l.starts_with("CONFIG proxy.config.dns.nameservers ") {
                    format!("CONFIG proxy.config.dns.nameservers STRING {dns}")
                } else if l.starts_with("CONFIG proxy.config.hostdb.host_file.path ") {
                    format!(
                        "CONFIG proxy.config.hostdb.host_file.path STRING {}",
                        etc.join("hosts.empty").display()
                    )
                } else {
                    l.to_owned()
                }
            })
            .collect();
        std::fs::write(&records, text.join("\n") + "\n")
            .map_err(|e| format!("records.config: {e}"))?;
        let chown = std::process::Command::new("chown")
            .args(["-R", "trafficserver:trafficserver"])
            .arg(root)
            .status();
        if !matches!(chown, Ok(s) if s.success()) {
            eprintln!(
                "warning: `chown -R trafficserver {}` failed",
                root.display()
            );
        }
        let run_root = root.join("runroot.yaml");
        // Its open-files limit up to the hard one, as for a deployed ATS.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -n "$(ulimit -Hn)"; exec traffic_server --run-root="$1""#)
            .arg("sh")
            .arg(&run_root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn traffic_server (apt-get install -y trafficserver): {e}"))?;
        let pid = child.id();
        let deadline = Instant::now() + STARTUP;
        while TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "traffic_server exited at start-up ({status}); see {}/diags.log",
                    root.display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "traffic_server: {addr} not accepting within {STARTUP:?}"
                ));
            }
            sleep(Duration::from_millis(50)).await;
        }
        Ok(Target {
            name: "trafficserver".into(),
            proxy: Some(addr),
            pid,
            child: Some(child),
            scratch: None,
            _stderr: None,
            lines: Arc::default(),
        })
    }

    /// Bytes in the audit log of a portcullis this harness started.
    pub fn audit_bytes(&self) -> Option<u64> {
        let path = self.scratch.as_ref()?.join("audit").join("audit.jsonl");
        std::fs::metadata(path).ok().map(|m| m.len())
    }

    /// Whether this harness started (and will stop) the process.
    pub fn started_here(&self) -> bool {
        self.child.is_some()
    }

    /// Stops a proxy this harness started (SIGTERM, then SIGKILL after a few seconds).
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if timeout(Duration::from_secs(8), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Utime + stime of the proxy process, in seconds.
    /// The address the proxy announced for `listener` (e.g. `explicit_tls`).
    pub fn listening(&self, listener: &str) -> Option<SocketAddr> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().find_map(|l| listening_addr(l, listener))
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::sysstat::cpu_seconds(self.pid?)
    }

    /// VmRSS of the proxy process, in KiB.
    pub fn rss_kb(&self) -> Option<u64> {
        crate::sysstat::rss_kb(self.pid?)
    }
}

/// Status of a one-shot `GET path` (HTTP/1.0-style, connection closed), if any.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()
    };
    timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// The portcullis binary: `--portcullis-bin`, else the one cargo built for this bench, else
/// `target/release/portcullis` next to this executable (built with cargo unless `no_build`).
pub fn portcullis_bin(given: Option<&Path>, no_build: bool) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    let cargo_built = PathBuf::from(env!("CARGO_BIN_EXE_portcullis"));
    if cargo_built.exists() {
        return Ok(cargo_built);
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/release/deps/e2e-HASH -> target/release/portcullis
    let release = exe.parent().and_then(Path::parent).ok_or("no target dir")?;
    let bin = release.join("portcullis");
    if !bin.exists() && !no_build {
        eprintln!("building portcullis: cargo build --release --bin portcullis");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "--bin", "portcullis"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .map_err(|e| format!("cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build --release --bin portcullis: {status}"));
        }
    }
    if !bin.exists() {
        return Err(format!(
            "{} missing: run `cargo build --release`",
            bin.display()
        ));
    }
    Ok(bin)
}
