//! What portcullis really writes, gathered once for the tests: audit records
//! (stdout) and diagnostics (stderr) from real runs of the binary, including
//! a rejected policy reload and both ways it reports lost audit records.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const WAIT: Duration = Duration::from_secs(20);

/// Lines portcullis wrote.
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// stdout with `--audit-log -`: the audit records.
    pub(crate) stdout: Vec<String>,
    /// stderr: the diagnostics.
    pub(crate) stderr: Vec<String>,
    /// Audit records the runs lost, by their own count: `lost_total` while
    /// running plus `abandoned` at exit.
    pub(crate) lost: u64,
    /// Exchanges refused as `audit_unavailable`, by the proxy's own count (`refused_total`).
    pub(crate) refused: u64,
}

/// Gathered on first use: each test reads the same lines.
pub(crate) fn output() -> &'static Output {
    static OUTPUT: OnceLock<Output> = OnceLock::new();
    OUTPUT.get_or_init(gather)
}

type Lines = Arc<Mutex<Vec<String>>>;

fn lines(lines: &Lines) -> Vec<String> {
    lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

fn collect(stream: impl Read + Send + 'static) -> Lines {
    let lines = Lines::default();
    let sink = Arc::clone(&lines);
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    });
    lines
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or(Value::Null)
}

/// A running `portcullis run`; killed on drop.
pub(crate) struct Run {
    child: Child,
    stdout: Option<Lines>,
    /// Held unread: the pipe fills and the audit writer stalls.
    _stalled: Option<ChildStdout>,
    stderr: Lines,
    addr: SocketAddr,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Run {
    /// `audit` is `--audit-log`; with `-`, stdout is read unless `stall_stdout`.
    pub(crate) fn start(policy: &Path, audit: &str, stall_stdout: bool, extra: &[&str]) -> Run {
        let mut child = Command::new(BIN)
            .args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--nameserver", "127.0.0.1:9", "--log-format", "json"])
            .args(["--audit-log", audit])
            .args(extra)
            .arg("--policy")
            .arg(policy)
            .env_remove("PORTCULLIS_NAMESERVERS")
            .env_remove("PORTCULLIS_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portcullis run");
        let stderr = collect(child.stderr.take().unwrap());
        let stdout = child.stdout.take().unwrap();
        let (stdout, stalled) = if stall_stdout {
            (None, Some(stdout))
        } else {
            (Some(collect(stdout)), None)
        };
        let mut run = Run {
            child,
            stdout,
            _stalled: stalled,
            stderr,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = run.wait_stderr("the explicit listener's `listening` line", |v| {
            v["message"] == "listening" && v["listener"] == "explicit"
        });
        run.addr = json(&line)["addr"].as_str().unwrap().parse().unwrap();
        run
    }

    fn wait(&self, what: &str, source: &Lines, pred: impl Fn(&Value) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = lines(source).into_iter().find(|l| pred(&json(l))) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {WAIT:?}; stderr:\n{}",
                lines(&self.stderr).join("\n")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_stderr(&self, what: &str, pred: impl Fn(&Value) -> bool) -> String {
        self.wait(what, &self.stderr, pred)
    }

    pub(crate) fn wait_stdout(&self, what: &str, pred: impl Fn(&Value) -> bool) -> String {
        self.wait(what, self.stdout.as_ref().expect("stdout is read"), pred)
    }

    /// The explicit listener's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A CONNECT to a host the policy does not allow: answered 403 at once.
    fn refused_connect(&self, host: &str) {
        let head = self.connect(host);
        assert!(head.starts_with("HTTP/1.1 403"), "{host}: {head}");
    }

    /// Sends `CONNECT host:443` and returns the response head.
    fn connect(&self, host: &str) -> String {
        let mut s = TcpStream::connect(self.addr).expect("connect to the proxy");
        s.set_read_timeout(Some(WAIT)).unwrap();
        write!(s, "CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// SIGTERM, then the exit (bounded by `WAIT`).
    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "still running {WAIT:?} after SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-deploy-pci-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gather() -> Output {
    let dir = tempdir();
    let policy = dir.join("portcullis.yaml");
    std::fs::write(&policy, "version: 1\nallow: [api.stripe.com]\n").unwrap();
    let mut out = Output::default();

    // Decisions and reloads, with the audit log on stdout as the ECS recipes run it.
    let run = Run::start(&policy, "-", false, &[]);
    run.wait_stdout("the start-up policy_reload record", |v| {
        v["event"] == "policy_reload" && v["result"] == "ok"
    });
    run.refused_connect("pastebin.com");
    run.wait_stdout("the record of the refusal", |v| v["host"] == "pastebin.com");
    // A broken policy, replaced atomically as the sync container does: rejected.
    let next = dir.join(".portcullis.yaml.new");
    std::fs::write(&next, "version: 1\nallow: [\n").unwrap();
    std::fs::rename(&next, &policy).unwrap();
    run.wait_stdout("the rejected reload's record", |v| {
        v["event"] == "policy_reload" && v["result"] == "error"
    });
    out.stdout = lines(run.stdout.as_ref().unwrap());
    out.stderr.extend(lines(&run.stderr));
    drop(run);
    std::fs::write(&policy, "version: 1\nallow: [api.stripe.com]\n").unwrap();

    // An audit sink that fails every write, with `--audit-overflow drop`: the
    // records are lost, and a warning says how many.
    let run = Run::start(&policy, "/dev/full", false, &["--audit-overflow", "drop"]);
    let run_stderr = run.stderr.clone();
    run.refused_connect("pastebin.com");
    run.wait_stderr("the `audit records lost` warning", |v| {
        v["lost"].as_u64().is_some_and(|n| n > 0)
    });
    drop(run);
    let stderr = lines(&run_stderr);
    out.lost += (stderr.iter())
        .filter_map(|l| json(l)["lost_total"].as_u64())
        .max()
        .unwrap_or(0);
    out.stderr.extend(stderr);

    // The same sink with the default `--audit-overflow refuse` and a queue of
    // two: the start-up record and one refusal fill it, and what comes next is
    // refused as `audit_unavailable`, which a warning counts once a second.
    let run = Run::start(&policy, "/dev/full", false, &["--audit-queue-records", "2"]);
    let run_stderr = run.stderr.clone();
    let mut unavailable = 0;
    for i in 0..20 {
        let head = run.connect(&format!("full-{i}.example"));
        if head.starts_with("HTTP/1.1 503") {
            assert!(head.contains("audit_unavailable"), "{head}");
            unavailable += 1;
        }
    }
    assert!(
        unavailable > 0,
        "no exchange was refused as audit_unavailable"
    );
    run.wait_stderr("the `audit log cannot keep up` warning", |v| {
        v["refused_total"].as_u64() == Some(unavailable)
    });
    drop(run);
    let stderr = lines(&run_stderr);
    out.refused = unavailable;
    // The refusals' own records found no room either: lost, and counted.
    out.lost += (stderr.iter())
        .filter_map(|l| json(l)["lost_total"].as_u64())
        .max()
        .unwrap_or(0);
    out.stderr.extend(stderr);

    // A stalled stdout (the log router not reading) at SIGTERM: what is still
    // queued is abandoned, and the last line says how much.
    let mut run = Run::start(&policy, "-", true, &["--drain-timeout", "1s"]);
    // Several times a pipe's 64 KiB of records, so the writer is stuck with some left.
    for i in 0..600 {
        run.refused_connect(&format!("stall-{i}.example"));
    }
    run.terminate();
    let stderr = run.stderr.clone();
    drop(run);
    // The reader thread ends at EOF, once the process has gone.
    let deadline = Instant::now() + WAIT;
    let abandoned = |l: &String| json(l)["abandoned"].as_u64().filter(|&n| n > 0);
    while !lines(&stderr).iter().any(|l| abandoned(l).is_some()) {
        assert!(
            Instant::now() < deadline,
            "no line reports abandoned records:\n{}",
            lines(&stderr).join("\n")
        );
        thread::sleep(Duration::from_millis(20));
    }
    let stderr = lines(&stderr);
    out.lost += stderr.iter().filter_map(abandoned).sum::<u64>();
    out.stderr.extend(stderr);
    let _ = std::fs::remove_dir_all(&dir);
    out
}
