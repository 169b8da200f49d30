//! Reload latency: how long from a policy file being replaced to new
//! decisions, for 10k- and 100k-rule policies, and whether CONNECT latency
//! rises while reloads run. Starts the real binary on loopback.
//!
//! Run: `cargo bench --bench reload` (figures printed as a table).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RELOADS: usize = 10;

fn policy(rules: usize, marker: usize) -> String {
    let mut y = String::from("version: 1\nallow:\n  - \"127.0.0.0/8:*\"\n");
    for i in 0..rules {
        match i % 20 {
            0..=15 => y.push_str(&format!("  - host{i}.tenant{}.example.org\n", i % 97)),
            16..=18 => y.push_str(&format!("  - \"*.svc{i}.example.net\"\n")),
            _ => y.push_str(&format!("  - \"api-*.glob{i}.example.com\"\n")),
        }
    }
    y.push_str(&format!(
        "  - marker{marker}.example.org\nip_guard:\n  allowed: [127.0.0.0/8]\n"
    ));
    y
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn generation(admin: SocketAddr) -> u64 {
    let text = get(admin, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("portcullis_policy_generation "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

struct Running {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(policy_path: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--nameserver", "127.0.0.1:9", "--audit-log", "/dev/null"])
        .arg("--policy")
        .arg(policy_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start portcullis");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (mut proxy, mut admin) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.is_none() || admin.is_none() {
        assert!(Instant::now() < deadline, "portcullis did not start");
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
            panic!("portcullis exited");
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["message"] == "listening" {
            let addr = v["addr"].as_str().and_then(|a| a.parse().ok());
            match v["listener"].as_str() {
                Some("explicit") => proxy = addr,
                Some("admin") => admin = addr,
                _ => {}
            }
        }
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    Running {
        child,
        proxy: proxy.unwrap(),
        admin: admin.unwrap(),
    }
}

/// CONNECT to the echo origin and wait for the 200; returns the latency.
fn connect_once(proxy: SocketAddr, target: SocketAddr) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_nodelay(true).unwrap();
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    t.elapsed()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn main() {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    println!(
        "| rules | compile+swap, file written -> new generation (median / max of {RELOADS}) | CONNECT p50 / p99 idle | CONNECT p50 / p99 during reloads |"
    );
    println!("|---|---|---|---|");
    for rules in [10_000usize, 100_000] {
        let dir =
            std::env::temp_dir().join(format!("portcullis-reload-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.yaml");
        std::fs::write(&path, policy(rules, 0)).unwrap();
        let run = start(&path);
        let ready = Instant::now() + Duration::from_secs(60);
        while !get(run.admin, "/readyz").contains(" 200 ") {
            assert!(Instant::now() < ready);
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut idle: Vec<Duration> = (0..300).map(|_| connect_once(run.proxy, target)).collect();

        let stop = Arc::new(AtomicBool::new(false));
        let during = Arc::new(Mutex::new(Vec::new()));
        let client = {
            let (stop, during, proxy) = (stop.clone(), during.clone(), run.proxy);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let d = connect_once(proxy, target);
                    during.lock().unwrap().push(d);
                }
            })
        };
        let mut latencies = Vec::new();
        for i in 1..=RELOADS {
            let text = policy(rules, i);
            let tmp = dir.join("policy.yaml.tmp");
            std::fs::write(&tmp, text).unwrap();
            let t = Instant::now();
            std::fs::rename(&tmp, &path).unwrap();
            let want = i as u64 + 1;
            let deadline = t + Duration::from_secs(30);
            while generation(run.admin) < want {
                assert!(Instant::now() < deadline, "reload {i} not seen");
                std::thread::sleep(Duration::from_millis(2));
            }
            latencies.push(t.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        client.join().unwrap();
        let mut during = during.lock().unwrap().clone();
        let max = *latencies.iter().max().unwrap();
        println!(
            "| {rules} | {:.0} ms / {:.0} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms ({} CONNECTs) |",
            percentile(&mut latencies, 0.5).as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            percentile(&mut idle, 0.5).as_secs_f64() * 1e3,
            percentile(&mut idle, 0.99).as_secs_f64() * 1e3,
            percentile(&mut during, 0.5).as_secs_f64() * 1e3,
            percentile(&mut during, 0.99).as_secs_f64() * 1e3,
            during.len(),
        );
        drop(run);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
