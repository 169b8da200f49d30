//! A portcullis binary serving a policy on loopback ephemeral ports, for the
//! test crates that run a binary of their choice (the cargo-built one, the
//! static release build): `run` with JSON logs, the audit log on stdout, an
//! unreachable nameserver, and the listeners' addresses read back from the
//! `listening` log lines. Killed on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the listeners may take to be announced.
const ANNOUNCED: Duration = Duration::from_secs(20);

pub(crate) struct Served {
    pub(crate) child: Child,
    /// Listener name (`explicit`, `admin`, ...) -> address.
    pub(crate) listeners: HashMap<String, SocketAddr>,
}

impl Served {
    /// Starts `bin run` on `policy` and waits until every listener in `wanted` is announced.
    pub(crate) fn start(bin: &Path, policy: &Path, wanted: &[&str]) -> Served {
        let mut child = Command::new(bin)
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--nameserver",
                "127.0.0.1:9",
                "--log-format",
                "json",
                "--audit-log",
                "-",
                "--policy",
            ])
            .arg(policy)
            .env_remove("PORTCULLIS_NAMESERVERS")
            .env_remove("PORTCULLIS_ADMIN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portcullis run");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["message"] == "listening" {
                    let listener = v["listener"].as_str().unwrap_or_default().to_owned();
                    let addr = v["addr"].as_str().unwrap_or_default().to_owned();
                    let _ = tx.send((listener, addr));
                }
            }
        });
        // Owned from here: a failed wait below kills the child.
        let mut served = Served {
            child,
            listeners: HashMap::new(),
        };
        let deadline = Instant::now() + ANNOUNCED;
        while !wanted.iter().all(|w| served.listeners.contains_key(*w)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (listener, addr) = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `listening` lines for {wanted:?}"));
            let addr: SocketAddr = addr.parse().expect("listening addr");
            served.listeners.insert(listener, addr);
        }
        served
    }

    /// The address of the `name` listener (one of those waited for).
    pub(crate) fn addr(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
