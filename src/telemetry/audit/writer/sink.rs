//! The audit writer thread: batched writes, the file followed across rotation
//! and deletion, and what a failed write does (`--audit-overflow`): `refuse`
//! keeps the batch and retries, `drop` counts it lost and moves on.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use super::super::AuditError;
use super::WriterState;
use crate::cli::AuditOverflow;

/// Where the writer thread writes, and how it finds the file again after a rotation.
pub(super) enum Sink {
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
    /// (renamed by logrotate, deleted). Runs on the writer thread only, before each write.
    /// `Some(gone)` when it reopened, `gone` telling whether the old file had lost its
    /// last name (deleted: what was written there is lost).
    fn follow(&mut self, forced: bool, shared: &WriterState) -> Option<bool> {
        let Sink::Path { path, file } = self else {
            return None;
        };
        let why = match (std::fs::metadata(&*path), file.metadata()) {
            _ if forced => "sighup",
            (Err(e), _) if e.kind() == io::ErrorKind::NotFound => "deleted",
            (Ok(named), Ok(open)) if (named.dev(), named.ino()) != (open.dev(), open.ino()) => {
                "replaced"
            }
            // The same file, or nothing to compare: keep writing where we are.
            _ => return None,
        };
        match open_append(path) {
            Ok(new) => {
                let gone = file.metadata().is_ok_and(|m| m.nlink() == 0);
                *file = new;
                tracing::info!(path = %path.display(), why, "audit log reopened");
                Some(gone)
            }
            Err(e) => {
                if let Some(suppressed) = shared.writer_warning.allow() {
                    tracing::warn!(%e, suppressed, "cannot reopen the audit log");
                }
                None
            }
        }
    }

    /// Whether the open file has lost its last name: what is written there is
    /// gone for whoever opens the path.
    fn unlinked(&self) -> bool {
        match self {
            Sink::Stream(_) => false,
            Sink::Path { file, .. } => file.metadata().is_ok_and(|m| m.nlink() == 0),
        }
    }

    /// Writes what is left of `batch`. A batch that went into a file deleted
    /// meanwhile (between the check before the write and its end) is written
    /// again at the path: nobody can read the deleted copy, so nothing is doubled.
    fn put(&mut self, batch: &mut Batch, shared: &WriterState) -> io::Result<()> {
        self.put_rest(batch)?;
        if self.unlinked() {
            // Nothing was written where anyone can read it.
            batch.written = 0;
            if self.follow(false, shared).is_none() || self.unlinked() {
                return Err(io::Error::other(
                    "the audit file was deleted and cannot be recreated at its path",
                ));
            }
            self.put_rest(batch)?;
        }
        Ok(())
    }

    /// Writes `batch` from where the last attempt stopped, so a retry after a
    /// partial write doubles nothing.
    fn put_rest(&mut self, batch: &mut Batch) -> io::Result<()> {
        let out = self.out();
        while batch.written < batch.bytes.len() {
            match out.write(&batch.bytes[batch.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => batch.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        out.flush()
    }
}

pub(super) fn open_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Records taken off the channel and not yet written out.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
    /// Bytes already written by an attempt that then failed.
    written: usize,
}

impl Batch {
    fn push(&mut self, line: &[u8]) {
        self.bytes.extend_from_slice(line);
        self.lines += 1;
    }

    fn is_empty(&self) -> bool {
        self.lines == 0
    }

    fn clear(&mut self) {
        self.bytes.clear();
        (self.lines, self.written) = (0, 0);
    }

    /// After the file was reopened: starts the batch again at the line the
    /// last attempt cut short, or from its start when the old file is gone
    /// (`lost`), so the new file never begins with half a line.
    fn rewind(&mut self, lost: bool) {
        self.written = match self.bytes[..self.written].iter().rposition(|b| *b == b'\n') {
            Some(i) if !lost => i + 1,
            _ => 0,
        };
    }

    /// After a failed write under `drop`: forgets the records that were written
    /// and drops those the write did not start, keeping the rest of one it cut
    /// short (so the file never holds half a line followed by another record).
    /// Returns (written, dropped).
    fn settle(&mut self) -> (u64, u64) {
        let newlines = |bytes: &[u8]| bytes.iter().filter(|b| **b == b'\n').count() as u64;
        // Where the record the write reached starts, and where it ends when it was cut.
        let start = (self.bytes[..self.written].iter())
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let end = match self.bytes[start..].iter().position(|b| *b == b'\n') {
            Some(i) if self.written > start => start + i + 1,
            _ => start,
        };
        let written = newlines(&self.bytes[..start]);
        let kept = u64::from(end > start);
        let dropped = self.lines - written - kept;
        self.bytes.truncate(end);
        self.bytes.drain(..start);
        self.written -= start;
        self.lines = kept;
        (written, dropped)
    }
}

/// How long the writer gathers records before writing them out: one write
/// per batch under load, at most this much delay when traffic is light.
const BATCH: Duration = Duration::from_millis(10);

/// A batch is written out once it holds this much (~15k records/s fit in one per [`BATCH`]).
pub(in super::super) const WRITE_BUF: usize = 64 * 1024;

/// How often an idle writer thread checks that the path still names the open file.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// The first and the longest wait before a failed write is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The writer thread. Idle, it waits for a first record, then sleeps for
/// [`BATCH`] (records queue up without waking it) and writes out everything
/// queued, [`WRITE_BUF`] at a time. Before every write, and at least every
/// [`FOLLOW_EVERY`], it checks whether the file was rotated or deleted. A
/// failed write is retried with a growing wait under `refuse` (the queue then
/// fills and new exchanges are refused), dropped and counted under `drop`.
pub(super) fn drain(rx: &Receiver<Vec<u8>>, mut sink: Sink, shared: &WriterState) {
    let mut batch = Batch::default();
    let mut retry: Option<Duration> = None;
    // More was queued than the last batch took: go on without waiting.
    let mut backlog = false;
    let mut open = true;
    loop {
        if let Some(wait) = retry {
            std::thread::sleep(wait);
        } else if batch.is_empty() && !backlog {
            match rx.recv_timeout(FOLLOW_EVERY) {
                Ok(line) => {
                    batch.push(&line);
                    std::thread::sleep(BATCH);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        if shared.closing.load(Ordering::SeqCst) {
            // The close gave up on us and counted what is left as abandoned.
            return;
        }
        if let Some(gone) = sink.follow(shared.reopen.swap(false, Ordering::SeqCst), shared) {
            batch.rewind(gone);
        }
        while open && batch.bytes.len() < WRITE_BUF {
            match rx.try_recv() {
                Ok(line) => batch.push(&line),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        backlog = open && batch.bytes.len() >= WRITE_BUF;
        if batch.is_empty() {
            if !open {
                return;
            }
            continue;
        }
        match sink.put(&mut batch, shared) {
            Ok(()) => {
                shared.dequeued(batch.lines);
                batch.clear();
                retry = None;
            }
            Err(error) => {
                let records = batch.lines;
                match shared.overflow {
                    AuditOverflow::Refuse => {
                        if let Some(suppressed) = shared.writer_warning.allow() {
                            tracing::warn!(%error, records, suppressed, "writing the audit log failed; retrying (new exchanges are refused once its queue is full)");
                        }
                    }
                    AuditOverflow::Drop => {
                        let (written, dropped) = batch.settle();
                        shared.lost(dropped);
                        shared.dequeued(written + dropped);
                        if let Some(suppressed) = shared.writer_warning.allow() {
                            tracing::warn!(%error, records, suppressed, "writing the audit log failed; records dropped");
                        }
                    }
                }
                retry = (!batch.is_empty())
                    .then(|| retry.map_or(RETRY_FIRST, |w| (w * 2).min(RETRY_MAX)));
            }
        }
    }
}
