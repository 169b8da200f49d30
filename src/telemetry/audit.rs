//! The audit log (SPEC section 8): one JSON line per decision, written off the data path.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use super::{Decision, Listener, ReloadResult, label_enum};

/// Records queued between the data path and the writer thread before new ones are dropped.
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

/// At most one "audit records dropped" warning per this many milliseconds.
const WARN_INTERVAL_MS: u64 = 1000;

label_enum! {
    /// What an audit record describes.
    Event {
        /// A CONNECT tunnel or transparent connection, written when it ends.
        Connection => "connection",
        /// One forwarded HTTP request, written when it ends.
        Request => "request",
        /// A policy reload attempt.
        PolicyReload => "policy_reload",
    }
}

/// A wall-clock instant, serialised as RFC 3339 UTC with milliseconds (`2026-11-29T16:47:59.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self(SystemTime::now())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A clock set before 1970 is clamped to the epoch rather than failing the record.
        let since_epoch = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since_epoch.as_secs();
        let (year, month, day) = civil_from_days(secs / 86_400);
        let rem = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            since_epoch.subsec_millis()
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, restricted to dates from the epoch on).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Extra keys on `policy_reload` records only; every one is present, `null` when absent.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadDetails {
    /// Whether the new policy was swapped in.
    pub result: ReloadResult,
    /// The policy file that was read.
    pub path: Option<String>,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: Option<String>,
    /// Rules in the new policy.
    pub rules: Option<usize>,
    /// Why the file was rejected (with line and column).
    pub error: Option<String>,
    /// What changed against the previous policy, in whatever shape the reloader chooses.
    pub changes: Option<serde_json::Value>,
}

/// One audit line. Every SPEC key is always serialised, `null` when `None`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub ts: Timestamp,
    pub event: Event,
    pub listener: Option<Listener>,
    /// The policy client's name.
    pub client: Option<String>,
    pub client_addr: Option<SocketAddr>,
    pub method: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub sni: Option<String>,
    pub decision: Option<Decision>,
    /// A `Reason::as_str()`, never a free string.
    pub reason: Option<&'static str>,
    /// The rule that decided, as written in the policy.
    pub rule: Option<String>,
    pub upstream_addr: Option<SocketAddr>,
    pub status: Option<u16>,
    pub bytes_egress: Option<u64>,
    pub bytes_ingress: Option<u64>,
    pub duration_ms: Option<u64>,
    pub policy_generation: Option<u64>,
    /// Only set by [`AuditRecord::policy_reload`], so SPEC keys can never be shadowed.
    #[serde(flatten)]
    reload: Option<ReloadDetails>,
}

impl AuditRecord {
    /// A record stamped now with every field absent; fill in what is known.
    pub fn new(event: Event) -> Self {
        Self {
            ts: Timestamp::now(),
            event,
            listener: None,
            client: None,
            client_addr: None,
            method: None,
            host: None,
            port: None,
            sni: None,
            decision: None,
            reason: None,
            rule: None,
            upstream_addr: None,
            status: None,
            bytes_egress: None,
            bytes_ingress: None,
            duration_ms: None,
            policy_generation: None,
            reload: None,
        }
    }

    /// A `policy_reload` record; `generation` is the policy in force afterwards.
    pub fn policy_reload(generation: Option<u64>, details: ReloadDetails) -> Self {
        Self {
            policy_generation: generation,
            reload: Some(details),
            ..Self::new(Event::PolicyReload)
        }
    }

    /// The reload details, on `policy_reload` records.
    pub fn reload_details(&self) -> Option<&ReloadDetails> {
        self.reload.as_ref()
    }
}

/// Failure to set up the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot start the audit writer thread: {0}")]
    Spawn(#[source] io::Error),
}

/// Counters shared by callers and the writer thread.
#[derive(Debug)]
struct Shared {
    dropped: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` of the last warning, `u64::MAX` before the first.
    last_warn_ms: AtomicU64,
}

impl Shared {
    /// True at most once per [`WARN_INTERVAL_MS`], so a stuck sink cannot flood stderr.
    fn warn_due(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= WARN_INTERVAL_MS;
        due && self
            .last_warn_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn lost(&self, why: &dyn fmt::Display) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if self.warn_due() {
            tracing::warn!(dropped_total = total, "audit record lost: {why}");
        }
    }
}

/// A JSON-lines sink whose `write` never blocks: lines go through a bounded queue to a
/// dedicated thread. Dropping it (or [`AuditLog::flush_and_close`]) writes out everything
/// queued before returning; share it as `Arc<AuditLog>` and let the last owner close it.
#[derive(Debug)]
pub struct AuditLog {
    tx: Option<SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl AuditLog {
    /// `-` is standard output; anything else a file opened for append.
    pub fn open(target: &Path) -> Result<Self, AuditError> {
        if target == Path::new("-") {
            Self::stdout()
        } else {
            Self::file(target)
        }
    }

    /// Audit lines on standard output (diagnostics go to standard error).
    pub fn stdout() -> Result<Self, AuditError> {
        Self::from_writer(io::stdout(), DEFAULT_CAPACITY)
    }

    /// Audit lines appended to `path`, created if missing.
    pub fn file(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|source| AuditError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_writer(file, DEFAULT_CAPACITY)
    }

    /// Audit lines to any writer, with at most `capacity` lines queued (at least 1).
    pub fn from_writer(
        writer: impl Write + Send + 'static,
        capacity: usize,
    ) -> Result<Self, AuditError> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            started: Instant::now(),
            last_warn_ms: AtomicU64::new(u64::MAX),
        });
        let thread_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                drain(
                    rx,
                    BufWriter::with_capacity(WRITE_BUF, writer),
                    &thread_shared,
                )
            })
            .map_err(AuditError::Spawn)?;
        Ok(Self {
            tx: Some(tx),
            writer: Some(writer),
            shared,
        })
    }

    /// Queues one record. Serialises on the caller's thread and never waits: when the queue
    /// is full the record is counted in [`AuditLog::dropped`] and a warning is rate-limited.
    pub fn write(&self, record: &AuditRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(error) => return self.shared.lost(&error),
        };
        line.push(b'\n');
        let Some(tx) = &self.tx else {
            return self.shared.lost(&"audit log closed");
        };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.shared.lost(&"queue full"),
            Err(TrySendError::Disconnected(_)) => self.shared.lost(&"writer thread gone"),
        }
    }

    /// Records lost so far: queue full, serialisation or write errors.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes out every queued record, flushes, and stops the writer thread.
    pub fn flush_and_close(mut self) {
        self.close();
    }

    fn close(&mut self) {
        // Dropping the sender lets the writer drain what is queued and then see the end.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("audit writer thread panicked");
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// How long the writer gathers records before writing them out: one write
/// per batch under load, at most this much delay when traffic is light.
const BATCH: std::time::Duration = std::time::Duration::from_millis(10);

/// Room for a batch in one `write` at ~15k records/s (an 8 KiB buffer took
/// ~7 writes per batch at that rate).
const WRITE_BUF: usize = 64 * 1024;

/// The writer thread: after the first line of a batch it sleeps for
/// [`BATCH`] (records queue up without waking it), then writes out
/// everything queued and flushes.
fn drain(rx: Receiver<Vec<u8>>, mut out: BufWriter<impl Write>, shared: &Shared) {
    while let Ok(line) = rx.recv() {
        put(&mut out, &line, shared);
        std::thread::sleep(BATCH);
        loop {
            match rx.try_recv() {
                Ok(line) => put(&mut out, &line, shared),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    flush(&mut out, shared);
                    return;
                }
            }
        }
        flush(&mut out, shared);
    }
    flush(&mut out, shared);
}

fn put(out: &mut impl Write, line: &[u8], shared: &Shared) {
    if let Err(error) = out.write_all(line) {
        shared.lost(&error);
    }
}

fn flush(out: &mut impl Write, shared: &Shared) {
    // Lines already handed to the buffer are not counted again; the failure is still reported.
    if let Err(error) = out.flush()
        && shared.warn_due()
    {
        tracing::warn!(%error, "flushing the audit log failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    const SPEC_KEYS: [&str; 18] = [
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
    ];

    fn temp_path(name: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!(
            "portcullis-audit-{}-{n}-{name}",
            std::process::id()
        ))
    }

    fn read_lines(path: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let text = std::fs::read_to_string(path).expect("read audit file");
        text.lines()
            .map(|line| match serde_json::from_str(line) {
                Ok(serde_json::Value::Object(map)) => map,
                other => panic!("not a JSON object: {line:?} -> {other:?}"),
            })
            .collect()
    }

    fn parse_ts(ts: &str) -> SystemTime {
        let parsed =
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("{ts:?} is not RFC 3339: {e}"));
        let nanos = u64::try_from(parsed.unix_timestamp_nanos()).expect("after 1970");
        UNIX_EPOCH + Duration::from_nanos(nanos)
    }

    #[test]
    fn timestamps_are_rfc3339_utc_millis() {
        for (secs, millis, want) in [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.005Z"),
            (1_795_970_879, 123, "2026-11-29T16:47:59.123Z"),
            (4_102_444_799, 999, "2099-12-31T23:59:59.999Z"),
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis);
            assert_eq!(Timestamp(t).to_string(), want);
        }
        // Cross-check against an independent parser over ~400 years of dates.
        let mut secs: u64 = 17;
        while secs < 13_000_000_000 {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(secs % 1000);
            let text = Timestamp(t).to_string();
            assert_eq!(text.len(), 24, "{text}");
            assert_eq!(parse_ts(&text), t, "{text}");
            secs += 86_400 * 37 + 3_607;
        }
        let before_epoch = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(
            Timestamp(before_epoch).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn every_spec_key_is_present_and_absent_values_are_null() {
        let path = temp_path("keys.jsonl");
        let log = AuditLog::file(&path).expect("open audit file");

        let mut conn = AuditRecord::new(Event::Connection);
        conn.listener = Some(Listener::Explicit);
        conn.client = Some("payments".into());
        conn.client_addr = Some(SocketAddr::from(([127, 0, 0, 1], 40_000)));
        conn.method = Some("CONNECT".into());
        conn.host = Some("api.stripe.com".into());
        conn.port = Some(443);
        conn.sni = Some("api.stripe.com".into());
        conn.decision = Some(Decision::Allow);
        conn.reason = Some("allowed");
        conn.rule = Some("api.stripe.com".into());
        conn.upstream_addr = Some("[::1]:443".parse().expect("addr"));
        conn.status = Some(200);
        conn.bytes_egress = Some(10);
        conn.bytes_ingress = Some(20);
        conn.duration_ms = Some(1234);
        conn.policy_generation = Some(3);
        log.write(&conn);

        let mut denied = AuditRecord::new(Event::Request);
        denied.decision = Some(Decision::Deny);
        denied.reason = Some("not_allowed");
        log.write(&denied);

        log.write(&AuditRecord::policy_reload(
            Some(4),
            ReloadDetails {
                result: ReloadResult::Ok,
                path: Some("config/portcullis.yaml".into()),
                sha256: None,
                rules: Some(12),
                error: None,
                changes: Some(serde_json::json!({"added": ["a.example"]})),
            },
        ));
        let started = conn.ts.0;
        log.flush_and_close();

        let records = read_lines(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(records.len(), 3);
        for record in &records {
            for key in SPEC_KEYS {
                assert!(record.contains_key(key), "{key} missing from {record:?}");
            }
            let ts = record["ts"].as_str().expect("ts is a string");
            assert_eq!(ts.len(), 24, "{ts}");
            assert!(ts.ends_with('Z'));
            let drift = parse_ts(ts)
                .duration_since(started)
                .unwrap_or_else(|e| e.duration());
            assert!(drift < Duration::from_secs(60), "{ts}");
        }

        let conn = &records[0];
        assert_eq!(conn.len(), SPEC_KEYS.len(), "no extra keys: {conn:?}");
        assert_eq!(conn["event"], "connection");
        assert_eq!(conn["listener"], "explicit");
        assert_eq!(conn["client_addr"], "127.0.0.1:40000");
        assert_eq!(conn["upstream_addr"], "[::1]:443");
        assert_eq!(conn["port"], 443);
        assert_eq!(conn["decision"], "allow");
        assert_eq!(conn["duration_ms"], 1234);

        let denied = &records[1];
        assert_eq!(denied.len(), SPEC_KEYS.len());
        assert_eq!(denied["event"], "request");
        assert_eq!(denied["reason"], "not_allowed");
        for key in SPEC_KEYS
            .iter()
            .filter(|k| !["ts", "event", "decision", "reason"].contains(k))
        {
            assert!(denied[*key].is_null(), "{key} should be null");
        }

        let reload = &records[2];
        assert_eq!(reload["event"], "policy_reload");
        assert_eq!(reload["policy_generation"], 4);
        assert_eq!(reload["result"], "ok");
        assert_eq!(reload["rules"], 12);
        assert!(reload["sha256"].is_null());
        assert!(reload["error"].is_null());
        assert_eq!(reload["changes"]["added"][0], "a.example");
    }

    #[test]
    fn appends_and_drop_flushes() {
        let path = temp_path("append.jsonl");
        for generation in 1..=2 {
            let log = AuditLog::file(&path).expect("open audit file");
            let mut rec = AuditRecord::new(Event::Request);
            rec.policy_generation = Some(generation);
            log.write(&rec);
            drop(log);
        }
        let records = read_lines(&path);
        let _ = std::fs::remove_file(&path);
        let generations: Vec<_> = records
            .iter()
            .map(|r| r["policy_generation"].clone())
            .collect();
        assert_eq!(generations, [1, 2]);
    }

    /// A sink that holds the writer thread inside its first write until released.
    struct Gated {
        entered: Option<mpsc::Sender<()>>,
        gate: Option<mpsc::Receiver<()>>,
        out: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let (Some(entered), Some(gate)) = (self.entered.take(), self.gate.take()) {
                let _ = entered.send(());
                let _ = gate.recv();
            }
            self.out.lock().expect("sink lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        let (entered_tx, entered) = mpsc::channel();
        let (release, gate) = mpsc::channel();
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Gated {
            entered: Some(entered_tx),
            gate: Some(gate),
            out: Arc::clone(&out),
        };
        let log = AuditLog::from_writer(sink, 2).expect("start writer");
        // A BufWriter passes a line bigger than its buffer straight to the sink.
        let mut big = AuditRecord::new(Event::Request);
        big.rule = Some("x".repeat(WRITE_BUF + 1024));
        log.write(&big);
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("writer thread reached the sink");

        let started = Instant::now();
        for _ in 0..10 {
            log.write(&AuditRecord::new(Event::Request));
        }
        assert!(started.elapsed() < Duration::from_secs(1), "write blocked");
        assert_eq!(log.dropped(), 8, "two queued, the rest dropped");

        release.send(()).expect("release the sink");
        log.flush_and_close();
        let written = out
            .lock()
            .expect("sink lock")
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        assert_eq!(written, 3);
    }
}
