//! The diagnostic log's sink: stderr behind a bounded, lossy, non-blocking writer, so a
//! stalled stderr never stalls an event loop; lost lines are counted.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;

/// Lines held for the writer thread before new ones are dropped (~300 bytes each).
const QUEUE_LINES: usize = 8 * 1024;

/// The writer side of the diagnostic log: hand [`Diagnostics::make_writer`] to the
/// subscriber, keep this value until exit, then [`Diagnostics::finish`].
pub struct Diagnostics {
    writer: CountingMaker,
    guard: WorkerGuard,
    stats: DiagStats,
}

/// How many diagnostic lines were lost or are still waiting, readable from anywhere.
#[derive(Clone, Debug)]
pub struct DiagStats {
    /// Lines refused because the queue was full.
    full: ErrorCounter,
    /// Lines the writer thread failed to write (stderr closed, say).
    failed: Arc<AtomicU64>,
    /// Lines handed to the non-blocking writer.
    submitted: Arc<AtomicU64>,
    /// Lines the writer thread is done with (written or failed).
    done: Arc<AtomicU64>,
}

impl DiagStats {
    /// Diagnostic lines lost so far (`portcullis_log_lines_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.full.dropped_lines() as u64 + self.failed.load(Ordering::Relaxed)
    }

    /// Lines queued and not yet written.
    fn pending(&self) -> u64 {
        let settled = self.full.dropped_lines() as u64 + self.done.load(Ordering::Relaxed);
        self.submitted
            .load(Ordering::Relaxed)
            .saturating_sub(settled)
    }
}

impl Diagnostics {
    /// Starts the writer thread on a duplicate of stderr's descriptor (so it never holds the
    /// standard library's stderr lock while a write is stuck).
    pub fn stderr() -> io::Result<Self> {
        let fd = io::stderr().as_fd().try_clone_to_owned()?;
        let failed = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let sink = Sink {
            out: std::fs::File::from(fd),
            failed: failed.clone(),
            done: done.clone(),
        };
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(QUEUE_LINES)
            .thread_name("diagnostics")
            .finish(sink);
        let submitted = Arc::new(AtomicU64::new(0));
        let stats = DiagStats {
            full: writer.error_counter(),
            failed,
            submitted: submitted.clone(),
            done,
        };
        Ok(Self {
            writer: CountingMaker { writer, submitted },
            guard,
            stats,
        })
    }

    /// What the subscriber writes formatted lines to.
    pub fn make_writer(&self) -> impl for<'a> MakeWriter<'a> + Send + Sync + 'static {
        self.writer.clone()
    }

    /// The loss counters, for `/metrics`.
    pub fn stats(&self) -> DiagStats {
        self.stats.clone()
    }

    /// Gives queued lines up to `within` to reach stderr, then lets go without waiting more.
    /// (Dropping the worker guard could block on a full queue and then print to stdout,
    /// which may be the audit log: it is forgotten instead; the process is exiting.)
    pub fn finish(self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.stats.pending() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::mem::forget(self.guard);
    }
}

/// Counts each formatted line (one `write_all` per event) on its way into the queue.
#[derive(Clone)]
struct CountingMaker {
    writer: NonBlocking,
    submitted: Arc<AtomicU64>,
}

impl<'a> MakeWriter<'a> for CountingMaker {
    type Writer = CountingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CountingWriter {
            inner: self.writer.clone(),
            submitted: self.submitted.clone(),
        }
    }
}

struct CountingWriter {
    inner: NonBlocking,
    submitted: Arc<AtomicU64>,
}

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.submitted.fetch_add(1, Ordering::Relaxed);
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The writer thread's end: stderr, counting lines done and lines that failed.
struct Sink {
    out: std::fs::File,
    failed: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    /// The worker writes each queued line with one `write_all`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let result = self.out.write_all(buf);
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Lets a per-connection diagnostic through at most once per interval, counting the rest.
#[derive(Debug)]
pub struct RateLimit {
    /// Milliseconds after the first call of the last line let through, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    const INTERVAL_MS: u64 = 1000;

    /// A limiter for one call site (`static`).
    pub const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` when this line may be logged.
    pub fn allow(&self) -> Option<u64> {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let now = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= Self::INTERVAL_MS;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_through_and_counts_the_rest() {
        let limit = RateLimit::new();
        assert_eq!(limit.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.allow(), None);
        }
        assert_eq!(limit.suppressed.load(Ordering::Relaxed), 5);
    }
}
