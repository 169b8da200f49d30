//! The audit log's writer thread: a bounded queue, batched writes, losses
//! counted, the file followed across rotation, a bounded close.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::super::diag::RateLimit;
use super::{AuditError, AuditRecord, DEFAULT_CAPACITY};

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
pub(super) const STALL: Duration = Duration::from_secs(1);

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
pub(super) const WRITE_BUF: usize = 64 * 1024;

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
