//! The audit log's queue: records counted against a capacity, the exchanges
//! admitted while there is room, what happens to a record that finds the
//! queue full (`--audit-overflow`), and a bounded close. The thread that
//! writes the queue out is [`sink`].

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::super::diag::RateLimit;
use super::{AuditError, AuditRecord, DEFAULT_CAPACITY};
use crate::cli::AuditOverflow;

mod sink;

#[cfg(test)]
pub(super) use sink::WRITE_BUF;
use sink::{Sink, open_append};

/// The audit log's counters, made up front by the metrics registry.
#[derive(Clone, Debug, Default)]
pub struct AuditCounters {
    /// Records lost: queue full (`drop`, or a record nobody was admitted for),
    /// serialisation or write errors (`drop`), abandoned at exit.
    pub dropped: Counter,
    /// Records accepted and not yet written out by the writer thread: the
    /// queue's length, which [`AuditLog::admit`] compares with the capacity.
    pub queued: Gauge,
}

/// How many records may wait for the writer, and what happens when that many do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimit {
    /// `--audit-queue-records` (at least 1).
    pub capacity: usize,
    /// `--audit-overflow`.
    pub overflow: AuditOverflow,
}

impl Default for QueueLimit {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            overflow: AuditOverflow::Refuse,
        }
    }
}

/// State shared by callers and the writer thread.
#[derive(Debug)]
struct WriterState {
    counters: AuditCounters,
    capacity: i64,
    overflow: AuditOverflow,
    /// `dropped` as of the last warning, so each warning states what it adds.
    reported: AtomicU64,
    /// Exchanges [`AuditLog::admit`] refused, and how many of them were reported.
    refused: AtomicU64,
    refused_reported: AtomicU64,
    /// Set on SIGHUP: reopen the file at the path before the next write.
    reopen: AtomicBool,
    /// Set when a close gives up on the writer: a writer retrying a failed write stops.
    closing: AtomicBool,
    /// Rate limit of the writer thread's own warnings (write and reopen failures).
    writer_warning: RateLimit,
}

impl WriterState {
    fn lost(&self, n: u64) {
        self.counters.dropped.inc_by(n);
    }

    /// Takes `n` records off the queue (written, or given up on).
    fn dequeued(&self, n: u64) {
        (self.counters.queued).dec_by(i64::try_from(n).unwrap_or(i64::MAX));
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

/// A JSON-lines sink whose `write` never blocks: lines go through a queue to a
/// dedicated thread. The queue holds at most `capacity` records, except that
/// under `--audit-overflow refuse` the record of an exchange admitted while
/// there was room is always queued: memory stays bounded because nothing new
/// is admitted while the queue is full (at most the capacity plus the
/// exchanges open at that moment). [`AuditLog::close_within`] writes out what
/// it can by a deadline; dropping it does the same with a short grace (`DROP_GRACE`).
#[derive(Debug)]
pub struct AuditLog {
    tx: Option<Sender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<WriterState>,
}

/// How long dropping an [`AuditLog`] waits for the writer.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// At exit, a writer that has not written a record for this long is given up on.
pub(super) const STALL: Duration = Duration::from_secs(1);

impl AuditLog {
    /// `-` is standard output; anything else a file opened for append (and reopened
    /// when rotated or deleted).
    pub fn open(
        target: &Path,
        limit: QueueLimit,
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
            Sink::Stream(Box::new(std::fs::File::from(fd)))
        } else {
            Sink::Path {
                path: target.to_path_buf(),
                file: open_append(target)?,
            }
        };
        Self::start(sink, limit, counters)
    }

    /// Audit lines appended to `path`, created if missing.
    pub fn file(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        Self::open(
            path.as_ref(),
            QueueLimit::default(),
            AuditCounters::default(),
        )
    }

    /// Audit lines to any writer.
    pub fn from_writer(
        writer: impl Write + Send + 'static,
        limit: QueueLimit,
    ) -> Result<Self, AuditError> {
        Self::start(
            Sink::Stream(Box::new(writer)),
            limit,
            AuditCounters::default(),
        )
    }

    fn start(sink: Sink, limit: QueueLimit, counters: AuditCounters) -> Result<Self, AuditError> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(WriterState {
            counters,
            capacity: i64::try_from(limit.capacity.max(1)).unwrap_or(i64::MAX),
            overflow: limit.overflow,
            reported: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            refused_reported: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            writer_warning: RateLimit::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || sink::drain(&rx, sink, &thread_shared))
            .map_err(AuditError::Spawn)?;
        Ok(Self {
            tx: Some(tx),
            writer: Some(writer),
            shared,
        })
    }

    /// Whether a new exchange may start: under `--audit-overflow refuse`, only
    /// while the queue has room (a refusal is counted for [`AuditLog::report_losses`]);
    /// under `drop`, always. An admitted exchange's record goes in with [`AuditLog::write`].
    pub fn admit(&self) -> bool {
        let room = self.shared.overflow == AuditOverflow::Drop
            || self.shared.counters.queued.get() < self.shared.capacity;
        if !room {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
        }
        room
    }

    /// Queues a record the log owes: an admitted exchange's, or a policy reload's.
    /// Under `--audit-overflow refuse` it is queued even when the queue is full; under
    /// `drop` a full queue drops it (counted). Never waits.
    pub fn write(&self, record: &AuditRecord) {
        self.enqueue(record, self.shared.overflow == AuditOverflow::Refuse);
    }

    /// Queues a record on a best-effort basis, as for an exchange that was never
    /// admitted (refused before [`AuditLog::admit`], or by it): a full queue drops it (counted).
    pub fn offer(&self, record: &AuditRecord) {
        self.enqueue(record, false);
    }

    /// Serialises on the caller's thread and never waits.
    fn enqueue(&self, record: &AuditRecord, owed: bool) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return self.shared.lost(1);
        };
        line.push(b'\n');
        let Some(tx) = &self.tx else {
            return self.shared.lost(1);
        };
        // Counted before the send, so the writer never takes one off that is not counted.
        let before = self.shared.counters.queued.inc();
        if (!owed && before >= self.shared.capacity) || tx.send(line).is_err() {
            self.shared.counters.queued.dec();
            self.shared.lost(1);
        }
    }

    /// Records lost so far.
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

    /// Warns once with every record lost since the last call, and with every exchange
    /// refused for want of room, if any. Called once a second (not on each loss, so a
    /// burst is reported with its true size).
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
        let refused = self.shared.refused.load(Ordering::Relaxed);
        let before = self
            .shared
            .refused_reported
            .swap(refused, Ordering::Relaxed);
        if refused > before {
            tracing::warn!(
                refused = refused - before,
                refused_total = refused,
                queued = self.queued(),
                "the audit log cannot keep up: new exchanges are refused with 503 \
                 audit_unavailable until its queue has room"
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
            self.shared.closing.store(true, Ordering::SeqCst);
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
