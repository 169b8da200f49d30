use super::writer::{CloseReport, STALL, WRITE_BUF};
use crate::cli::AuditOverflow;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;
use std::sync::atomic::AtomicUsize;

const RECORD_KEYS: [&str; 26] = [
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
    let parsed = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
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
    conn.request_id = Some(crate::telemetry::RequestId::new());
    conn.instance = Some("edge-1".into());
    conn.policy_sha256 = Some("ab".repeat(32).into());
    conn.error = Some("connection reset".into());
    conn.end = Some(crate::telemetry::Ending::Error);
    conn.enforce_reason = Some(Reason::NotAllowed);
    conn.detail = Some("revoked by generation 4".into());
    log.write(&conn);

    let mut denied = AuditRecord::new(Event::Request);
    denied.decision = Some(Verdict::Deny);
    denied.reason = Some(Reason::NotAllowed);
    log.write(&denied);

    log.write(&AuditRecord::policy_reload(
        4,
        "cd".repeat(32).into(),
        ReloadDetails {
            result: ReloadResult::Ok,
            path: Some("config/portcullis.yaml".into()),
            sha256: None,
            rules: Some(12),
            changes: Some(serde_json::json!({"added": ["a.example"]})),
        },
        None,
    ));
    let started = conn.ts.0;
    log.close_within(Instant::now() + Duration::from_secs(10));

    let records = read_lines(&path);
    let raw = std::fs::read_to_string(&path).expect("read audit file");
    let _ = std::fs::remove_file(&path);
    assert_eq!(records.len(), 3);
    // One `error` key per line, whatever the event: a flattened duplicate
    // would make the line ambiguous (parsers keep either value).
    for line in raw.lines() {
        assert_eq!(line.matches("\"error\":").count(), 1, "{line}");
    }
    for record in &records {
        for key in RECORD_KEYS {
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
    assert_eq!(conn.len(), RECORD_KEYS.len(), "no extra keys: {conn:?}");
    assert_eq!(conn["event"], "connection");
    assert_eq!(conn["listener"], "explicit");
    assert_eq!(conn["client_addr"], "127.0.0.1:40000");
    assert_eq!(conn["upstream_addr"], "[::1]:443");
    assert_eq!(conn["port"], 443);
    assert_eq!(conn["decision"], "allow");
    assert_eq!(conn["duration_ms"], 1234);
    assert_eq!(conn["instance"], "edge-1");
    assert_eq!(conn["end"], "error");
    assert_eq!(conn["enforce_reason"], "not_allowed");
    assert_eq!(conn["identity"], serde_json::Value::Null);
    assert_eq!(conn["request_id"].as_str().map(str::len), Some(36));

    let denied = &records[1];
    assert_eq!(denied.len(), RECORD_KEYS.len());
    assert_eq!(denied["event"], "request");
    assert_eq!(denied["reason"], "not_allowed");
    for key in RECORD_KEYS
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
    assert_eq!(reload["policy_sha256"], "cd".repeat(32));
    assert!(reload["error"].is_null());
    assert!(reload["request_id"].is_null());
    assert_eq!(reload.len(), RECORD_KEYS.len() + 5, "{reload:?}");
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

fn limit(capacity: usize, overflow: AuditOverflow) -> QueueLimit {
    QueueLimit { capacity, overflow }
}

/// Holds the writer thread in its first write; returns the log and the key to let it go.
fn stuck_log(
    out: Arc<std::sync::Mutex<Vec<u8>>>,
    limit: QueueLimit,
) -> (AuditLog, mpsc::Sender<()>) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, gate) = mpsc::channel();
    let sink = Gated {
        entered: Some(entered_tx),
        gate: Some(gate),
        out,
    };
    let log = AuditLog::from_writer(sink, limit).expect("start writer");
    // A line bigger than a batch is written on its own, so the writer holds nothing else.
    let mut big = AuditRecord::new(Event::Request);
    big.rule = Some("x".repeat(WRITE_BUF + 1024));
    log.write(&big);
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("writer thread reached the sink");
    (log, release)
}

fn lines_of(out: &std::sync::Mutex<Vec<u8>>) -> Vec<serde_json::Value> {
    let out = out.lock().expect("sink lock");
    (out.split(|b| *b == b'\n'))
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("every line is a whole JSON record"))
        .collect()
}

fn generation(g: u64) -> AuditRecord {
    let mut rec = AuditRecord::new(Event::Request);
    rec.policy_generation = Some(g);
    rec
}

fn generations_in(records: &[serde_json::Value]) -> Vec<u64> {
    (records.iter())
        .filter_map(|r| r["policy_generation"].as_u64())
        .collect()
}

/// Runs `calls` on another thread while the writer is stuck; fails if they have not
/// returned within 10 s (they waited for the writer).
fn without_waiting(log: AuditLog, calls: impl FnOnce(&AuditLog) + Send + 'static) -> AuditLog {
    let log = Arc::new(log);
    let (done, returned) = mpsc::channel();
    let caller = Arc::clone(&log);
    std::thread::spawn(move || {
        calls(&caller);
        drop(caller);
        let _ = done.send(());
    });
    returned
        .recv_timeout(Duration::from_secs(10))
        .expect("a write waited for the stuck writer");
    Arc::try_unwrap(log).expect("the caller thread let go of the log")
}

/// Polls `cond` every 10 ms; fails with `what` after 10 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_full_queue_drops_instead_of_blocking() {
    let out = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (log, release) = stuck_log(out.clone(), limit(2, AuditOverflow::Drop));
    let log = without_waiting(log, |log| {
        for g in 0..10 {
            assert!(log.admit(), "drop mode admits whatever the queue holds");
            log.write(&generation(g));
        }
    });
    // The stuck record and the first one queued fill the two places.
    assert_eq!(log.dropped(), 9, "one queued, the rest dropped");

    release.send(()).expect("release the sink");
    log.close_within(Instant::now() + Duration::from_secs(10));
    assert_eq!(generations_in(&lines_of(&out)), [0]);
}

#[test]
fn refuse_mode_refuses_new_exchanges_and_never_drops_an_admitted_one() {
    let out = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (log, release) = stuck_log(out.clone(), limit(4, AuditOverflow::Refuse));
    // Three exchanges admitted while there is room; the queue is then full.
    for _ in 0..3 {
        assert!(log.admit());
    }
    for g in 0..3 {
        log.write(&generation(g));
    }
    assert_eq!(log.queued(), 4);
    assert!(!log.admit(), "a full queue admits nothing new");
    // Records owed before the queue filled go in anyway, past the capacity, without waiting.
    let log = without_waiting(log, |log| {
        for g in 3..10 {
            log.write(&generation(g));
        }
    });
    assert_eq!(log.queued(), 11);
    // A refused exchange's own record is best effort: no room, counted as dropped.
    log.offer(&generation(100));
    assert_eq!((log.dropped(), log.queued()), (1, 11));

    release.send(()).expect("release the sink");
    wait_until("the queue written out", || log.queued() == 0);
    assert!(log.admit(), "room again");
    log.offer(&generation(200));
    log.close_within(Instant::now() + Duration::from_secs(10));
    assert_eq!(
        generations_in(&lines_of(&out)),
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 200],
        "every owed record, in order, once"
    );
}

/// A sink whose writes fail (ENOSPC) while `failing`, after taking `partial`
/// bytes of the first failing write when set.
#[derive(Clone, Default)]
struct Flaky {
    state: Arc<std::sync::Mutex<FlakyState>>,
}

#[derive(Default)]
struct FlakyState {
    failing: bool,
    partial: Option<usize>,
    failures: usize,
    out: Vec<u8>,
}

impl Flaky {
    fn set_failing(&self, failing: bool, partial: Option<usize>) {
        let mut state = self.state.lock().expect("sink lock");
        (state.failing, state.partial) = (failing, partial);
    }

    fn failures(&self) -> usize {
        self.state.lock().expect("sink lock").failures
    }

    fn records(&self) -> Vec<serde_json::Value> {
        let out = std::sync::Mutex::new(self.state.lock().expect("sink lock").out.clone());
        lines_of(&out)
    }
}

impl Write for Flaky {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.state.lock().expect("sink lock");
        if !state.failing {
            state.out.extend_from_slice(buf);
            return Ok(buf.len());
        }
        if let Some(n) = state.partial.take() {
            let n = n.min(buf.len());
            state.out.extend_from_slice(&buf[..n]);
            return Ok(n);
        }
        state.failures += 1;
        Err(io::Error::from_raw_os_error(28)) // ENOSPC
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn refuse_mode_keeps_records_a_failing_sink_refused_and_retries() {
    let sink = Flaky::default();
    sink.set_failing(true, Some(30));
    let log = AuditLog::from_writer(sink.clone(), limit(3, AuditOverflow::Refuse)).expect("start");
    for g in 0..3 {
        assert!(log.admit());
        log.write(&generation(g));
    }
    // Part of the first record went out, then the disk filled: nothing is dropped,
    // the queue stays full and new exchanges are refused.
    wait_until("a few failed attempts", || sink.failures() >= 2);
    assert_eq!((log.dropped(), log.queued()), (0, 3));
    assert!(
        !log.admit(),
        "a sink that fails fills the queue: fail closed"
    );

    sink.set_failing(false, None);
    wait_until("the queue written out", || log.queued() == 0);
    assert!(log.admit());
    assert_eq!(log.dropped(), 0);
    assert_eq!(
        generations_in(&sink.records()),
        [0, 1, 2],
        "each record once, the cut one completed"
    );
    drop(log);
}

#[test]
fn drop_mode_counts_what_a_failing_sink_refused_and_moves_on() {
    let sink = Flaky::default();
    let log = AuditLog::from_writer(sink.clone(), limit(3, AuditOverflow::Drop)).expect("start");
    log.write(&generation(0));
    wait_until("the first record written", || log.queued() == 0);
    // The next write takes half a record and fails; the batch after it fails outright.
    sink.set_failing(true, Some(30));
    for g in 1..4 {
        log.write(&generation(g));
    }
    wait_until("every failed record counted", || log.dropped() == 2);
    assert!(log.admit(), "drop mode keeps admitting");
    wait_until("the cut record retried", || sink.failures() >= 3);
    assert_eq!(
        log.dropped(),
        2,
        "the cut record is kept to complete its line"
    );
    sink.set_failing(false, None);
    wait_until("the queue empty", || log.queued() == 0);
    log.write(&generation(4));
    log.close_within(Instant::now() + Duration::from_secs(10));
    // The cut record is completed, so every line parses; the two not started are lost.
    assert_eq!(generations_in(&sink.records()), [0, 1, 4]);
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
    let log = AuditLog::from_writer(sink, limit(8, AuditOverflow::Refuse)).expect("start writer");
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

#[test]
fn records_written_right_after_a_delete_land_at_the_path() {
    let path = temp_path("deleted.jsonl");
    let log = AuditLog::file(&path).expect("open audit file");
    log.write(&generation(1));
    wait_until("the first record written", || log.queued() == 0);
    std::fs::remove_file(&path).expect("delete");
    // At once, well before the idle check: the writer must see the delete before it writes.
    for g in 2..6 {
        log.write(&generation(g));
    }
    log.close_within(Instant::now() + Duration::from_secs(10));
    assert_eq!(generations_in(&read_json(&path)), [2, 3, 4, 5]);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn close_gives_up_on_a_sink_that_keeps_failing() {
    let sink = Flaky::default();
    sink.set_failing(true, None);
    let log = AuditLog::from_writer(sink.clone(), limit(8, AuditOverflow::Refuse)).expect("start");
    for g in 0..3 {
        log.write(&generation(g));
    }
    wait_until("a failed attempt", || sink.failures() >= 1);
    let started = Instant::now();
    let report = log.close_within(started + Duration::from_secs(60));
    assert!(
        started.elapsed() < STALL + Duration::from_secs(2),
        "close waited {:?} on a failing sink",
        started.elapsed()
    );
    assert_eq!(
        report,
        CloseReport {
            abandoned: 3,
            lost_total: 3
        }
    );
}

fn read_json(path: &Path) -> Vec<serde_json::Value> {
    read_lines(path)
        .into_iter()
        .map(serde_json::Value::Object)
        .collect()
}
