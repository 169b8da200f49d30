//! The audit log (SPEC section 8): one JSON line per decision, written off the data path.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Serialize, Serializer};

use super::diag::RateLimit;
use super::{Listener, ReloadResult, label_enum};
use crate::policy::{Reason, Verdict};

/// Records queued between the data path and the writer thread before new ones are dropped.
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

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
        let t = self.0.max(UNIX_EPOCH);
        write!(f, "{}", humantime::format_rfc3339_millis(t))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
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
    pub decision: Option<Verdict>,
    pub reason: Option<Reason>,
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

/// The audit log's counters, made up front by the metrics registry (SPEC 12).
#[derive(Clone, Debug, Default)]
pub struct AuditCounters {
    /// Records lost: queue full, serialisation or write errors, abandoned at exit.
    pub dropped: Counter,
    /// Records accepted and not yet written out by the writer thread.
    pub queued: Gauge,
}

/// State shared by callers and the writer thread.
#[derive(Debug)]
struct WriterState {
    counters: AuditCounters,
    /// `dropped` as of the last warning, so each warning states what it adds.
    reported: AtomicU64,
    /// Set on SIGHUP: reopen the file at the path before the next write.
    reopen: AtomicBool,
    /// Rate limit of the writer thread's own warnings (write and reopen failures).
    writer_warning: RateLimit,
}

impl WriterState {
    fn lost(&self, n: u64) {
        self.counters.dropped.inc_by(n);
    }
}

/// What [`AuditLog::close_within`] could not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReport {
    /// Records accepted but never written: the sink did not take them in time.
    pub abandoned: u64,
    /// Every record lost over the process's life, `abandoned` included.
    pub lost_total: u64,
}

/// Where the writer thread writes, and how it finds the file again after a rotation.
enum Sink {
    /// Standard output, or any writer: nothing to reopen.
    Stream(Box<dyn Write + Send>),
    Path {
        path: PathBuf,
        file: File,
    },
}

impl Sink {
    fn out(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stream(out) => out,
            Sink::Path { file, .. } => file,
        }
    }

    /// Reopens the path when `forced` (SIGHUP) or when it no longer names the open file
    /// (renamed by logrotate, deleted). Runs on the writer thread only.
    fn follow(&mut self, forced: bool, shared: &WriterState) {
        let Sink::Path { path, file } = self else {
            return;
        };
        let why = match (std::fs::metadata(&*path), file.metadata()) {
            _ if forced => "sighup",
            (Err(e), _) if e.kind() == io::ErrorKind::NotFound => "deleted",
            (Ok(named), Ok(open)) if (named.dev(), named.ino()) != (open.dev(), open.ino()) => {
                "replaced"
            }
            // The same file, or nothing to compare: keep writing where we are.
            _ => return,
        };
        match open_append(path) {
            Ok(new) => {
                *file = new;
                tracing::info!(path = %path.display(), why, "audit log reopened");
            }
            Err(e) => {
                if let Some(suppressed) = shared.writer_warning.allow() {
                    tracing::warn!(%e, suppressed, "cannot reopen the audit log; still writing to the old file");
                }
            }
        }
    }
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// A JSON-lines sink whose `write` never blocks: lines go through a bounded queue to a
/// dedicated thread. [`AuditLog::close_within`] writes out what it can by a deadline;
/// dropping it does the same with a short grace (`DROP_GRACE`).
#[derive(Debug)]
pub struct AuditLog {
    tx: Option<SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<WriterState>,
}

/// How long dropping an [`AuditLog`] waits for the writer.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// At exit, a writer that has not written a record for this long is given up on.
const STALL: Duration = Duration::from_secs(1);

/// How often the writer thread checks that the path still names the open file.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

impl AuditLog {
    /// `-` is standard output; anything else a file opened for append (and reopened
    /// when rotated), with at most `capacity` records queued.
    pub fn open(
        target: &Path,
        capacity: usize,
        counters: AuditCounters,
    ) -> Result<Self, AuditError> {
        let sink = if target == Path::new("-") {
            // A descriptor of our own: a stuck write never holds the stdout lock.
            let fd = io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| AuditError::Open {
                    path: target.to_path_buf(),
                    source,
                })?;
            Sink::Stream(Box::new(File::from(fd)))
        } else {
            Sink::Path {
                path: target.to_path_buf(),
                file: open_append(target)?,
            }
        };
        Self::start(sink, capacity, counters)
    }

    /// Audit lines appended to `path`, created if missing.
    pub fn file(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        Self::open(path.as_ref(), DEFAULT_CAPACITY, AuditCounters::default())
    }

    /// Audit lines to any writer, with at most `capacity` lines queued (at least 1).
    pub fn from_writer(
        writer: impl Write + Send + 'static,
        capacity: usize,
    ) -> Result<Self, AuditError> {
        Self::start(
            Sink::Stream(Box::new(writer)),
            capacity,
            AuditCounters::default(),
        )
    }

    fn start(sink: Sink, capacity: usize, counters: AuditCounters) -> Result<Self, AuditError> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let shared = Arc::new(WriterState {
            counters,
            reported: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            writer_warning: RateLimit::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || drain(&rx, sink, &thread_shared))
            .map_err(AuditError::Spawn)?;
        Ok(Self {
            tx: Some(tx),
            writer: Some(writer),
            shared,
        })
    }

    /// Queues one record. Serialises on the caller's thread and never waits: when the queue
    /// is full the record is counted as dropped (see [`AuditLog::report_losses`]).
    pub fn write(&self, record: &AuditRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return self.shared.lost(1);
        };
        line.push(b'\n');
        let Some(tx) = &self.tx else {
            return self.shared.lost(1);
        };
        // Counted before the send, so the writer never takes one off that is not counted.
        self.shared.counters.queued.inc();
        if tx.try_send(line).is_err() {
            self.shared.counters.queued.dec();
            self.shared.lost(1);
        }
    }

    /// Records lost so far: queue full, serialisation or write errors.
    pub fn dropped(&self) -> u64 {
        self.shared.counters.dropped.get()
    }

    /// Records accepted and not yet written.
    pub fn queued(&self) -> u64 {
        u64::try_from(self.shared.counters.queued.get()).unwrap_or(0)
    }

    /// Asks the writer thread to reopen the file at the path before its next write
    /// (SIGHUP). Never does file IO itself.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::SeqCst);
    }

    /// Warns once with every record lost since the last call, if any. Called once a second
    /// (not on each loss, so a burst is reported with its true size).
    pub fn report_losses(&self) {
        let total = self.dropped();
        let before = self.shared.reported.swap(total, Ordering::Relaxed);
        if total > before {
            tracing::warn!(
                lost = total - before,
                lost_total = total,
                "audit records lost: queue full or the audit sink failing"
            );
        }
    }

    /// Writes out what is queued; gives up at `deadline`, or once the writer has not
    /// written anything for `STALL` (1 s). What was not written is counted as lost.
    pub fn close_within(mut self, deadline: Instant) -> CloseReport {
        self.close(deadline)
    }

    fn close(&mut self, deadline: Instant) -> CloseReport {
        // Dropping the sender lets the writer drain what is queued and then see the end.
        drop(self.tx.take());
        let queued = &self.shared.counters.queued;
        if let Some(writer) = self.writer.take() {
            let mut last = queued.get();
            let mut progress = Instant::now();
            while !writer.is_finished() {
                let left = queued.get();
                if left < last {
                    (last, progress) = (left, Instant::now());
                }
                if Instant::now() >= deadline || progress.elapsed() >= STALL {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if writer.is_finished() && writer.join().is_err() {
                tracing::error!("audit writer thread panicked");
            }
        }
        // The writer may still take a record after this; counting it lost too is the safe side.
        let abandoned = u64::try_from(queued.get()).unwrap_or(0);
        self.shared.lost(abandoned);
        CloseReport {
            abandoned,
            lost_total: self.dropped(),
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.close(Instant::now() + DROP_GRACE);
        }
    }
}

/// How long the writer gathers records before writing them out: one write
/// per batch under load, at most this much delay when traffic is light.
const BATCH: Duration = Duration::from_millis(10);

/// Largest batch in one `write` (~15k records/s fit in one per [`BATCH`]).
const WRITE_BUF: usize = 64 * 1024;

/// The writer thread: after the first line of a batch it sleeps for [`BATCH`] (records
/// queue up without waking it), then writes out everything queued. Between batches, and
/// at least every [`FOLLOW_EVERY`], it checks whether the file was rotated.
fn drain(rx: &Receiver<Vec<u8>>, mut sink: Sink, shared: &WriterState) {
    let mut batch = Vec::with_capacity(WRITE_BUF);
    let mut followed = Instant::now();
    loop {
        let first = match rx.recv_timeout(FOLLOW_EVERY) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let forced = shared.reopen.swap(false, Ordering::SeqCst);
        if forced || followed.elapsed() >= FOLLOW_EVERY {
            sink.follow(forced, shared);
            followed = Instant::now();
        }
        let Some(first) = first else { continue };
        batch.extend_from_slice(&first);
        let mut lines = 1;
        std::thread::sleep(BATCH);
        let mut open = true;
        while open {
            match rx.try_recv() {
                Ok(line) => {
                    if batch.len() + line.len() > WRITE_BUF {
                        put(&mut sink, &mut batch, lines, shared);
                        lines = 0;
                    }
                    batch.extend_from_slice(&line);
                    lines += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        put(&mut sink, &mut batch, lines, shared);
        if !open {
            return;
        }
    }
}

/// Writes `lines` records in `batch` and empties it. A failed write counts them all lost
/// (part of the batch may have gone out; the count errs on the side of loss).
fn put(sink: &mut Sink, batch: &mut Vec<u8>, lines: u64, shared: &WriterState) {
    if let Err(error) = sink.out().write_all(batch) {
        shared.lost(lines);
        if let Some(suppressed) = shared.writer_warning.allow() {
            tracing::warn!(%error, suppressed, "writing the audit log failed");
        }
    }
    shared
        .counters
        .queued
        .dec_by(i64::try_from(lines).unwrap_or(i64::MAX));
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

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
        conn.decision = Some(Verdict::Allow);
        conn.reason = Some(Reason::Allowed);
        conn.rule = Some("api.stripe.com".into());
        conn.upstream_addr = Some("[::1]:443".parse().expect("addr"));
        conn.status = Some(200);
        conn.bytes_egress = Some(10);
        conn.bytes_ingress = Some(20);
        conn.duration_ms = Some(1234);
        conn.policy_generation = Some(3);
        log.write(&conn);

        let mut denied = AuditRecord::new(Event::Request);
        denied.decision = Some(Verdict::Deny);
        denied.reason = Some(Reason::NotAllowed);
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
        log.close_within(Instant::now() + Duration::from_secs(10));

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
        log.close_within(Instant::now() + Duration::from_secs(10));
        let written = out
            .lock()
            .expect("sink lock")
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        assert_eq!(written, 3);
    }

    #[test]
    fn close_gives_up_on_a_stuck_sink_and_counts_what_it_abandoned() {
        let (entered_tx, entered) = mpsc::channel();
        let (release, gate) = mpsc::channel();
        let sink = Gated {
            entered: Some(entered_tx),
            gate: Some(gate),
            out: Arc::default(),
        };
        let log = AuditLog::from_writer(sink, 8).expect("start writer");
        log.write(&AuditRecord::new(Event::Request));
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("writer thread reached the sink");
        for _ in 0..3 {
            log.write(&AuditRecord::new(Event::Request));
        }
        assert_eq!(log.queued(), 4, "one in the stuck write, three queued");

        let started = Instant::now();
        let report = log.close_within(started + Duration::from_secs(60));
        assert!(
            started.elapsed() < STALL + Duration::from_secs(2),
            "close waited {:?} on a stuck sink",
            started.elapsed()
        );
        assert_eq!(
            report,
            CloseReport {
                abandoned: 4,
                lost_total: 4
            }
        );
        drop(release);
    }

    #[test]
    fn a_renamed_or_deleted_file_is_reopened_at_its_path() {
        let path = temp_path("rotate.jsonl");
        let rotated = temp_path("rotate.jsonl.1");
        let log = AuditLog::file(&path).expect("open audit file");
        let record = |generation| {
            let mut rec = AuditRecord::new(Event::Request);
            rec.policy_generation = Some(generation);
            rec
        };
        let generations = |p: &Path| -> Vec<u64> {
            read_lines(p)
                .iter()
                .filter_map(|r| r["policy_generation"].as_u64())
                .collect()
        };
        let wait_for = |p: &Path, want: &[u64]| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::read_to_string(p).is_err() || generations(p) != want {
                assert!(
                    Instant::now() < deadline,
                    "{} never held {want:?}",
                    p.display()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        log.write(&record(1));
        wait_for(&path, &[1]);
        std::fs::rename(&path, &rotated).expect("rename");
        log.reopen();
        log.write(&record(2));
        wait_for(&path, &[2]);
        std::fs::remove_file(&path).expect("delete");
        // Found by the writer's own check, without a signal.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut next = 3;
        while !path.exists() {
            assert!(Instant::now() < deadline, "not recreated");
            log.write(&record(next));
            next += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(log);
        assert_eq!(generations(&rotated), [1]);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&rotated);
    }
}
