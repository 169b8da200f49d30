//! Draining: stop accepting, give connections `--drain-timeout`, cut the rest, flush the audit log.

use std::sync::Arc;
use std::time::Instant;

use super::start::Running;
use crate::limits::{CUT_GRACE, EXIT_MARGIN, LAST_WORDS};
use crate::telemetry::audit::AuditLog;

impl Running {
    /// Stops serving; returns within `--drain-timeout` + [`EXIT_MARGIN`].
    pub(super) async fn drain(self) {
        let Running {
            shared,
            accepting,
            stop_workers,
            workers,
            tasks,
            drain_timeout,
        } = self;
        // The final audit flush must end by then, leaving time for the last log lines.
        let exit_by = Instant::now() + drain_timeout + EXIT_MARGIN - LAST_WORDS;
        tracing::info!(drain_timeout = ?drain_timeout, "draining");
        let lifecycle = shared.lifecycle.clone();
        lifecycle.draining.cancel();
        accepting.close();
        accepting.wait().await;
        lifecycle.tracker.close();
        if tokio::time::timeout(drain_timeout, lifecycle.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached; closing the connections still open");
            lifecycle.abort.cancel();
            // Give cut tunnels a moment to write their audit records.
            let _ = tokio::time::timeout(CUT_GRACE, lifecycle.tracker.wait()).await;
        }
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        // The worker threads let go of `shared` once their last connection is
        // done, or now: what is still running there is dropped with their loops.
        stop_workers.cancel();
        let _ = tokio::time::timeout(CUT_GRACE, async {
            for done in workers {
                let _ = done.await;
            }
        })
        .await;
        let audit = shared.telemetry.audit.clone();
        drop(shared);
        close_audit(audit, exit_by);
    }
}

/// Flushes what the audit log still holds by `exit_by`, when nothing else holds the log.
fn close_audit(audit: Arc<AuditLog>, exit_by: Instant) {
    match Arc::try_unwrap(audit) {
        Ok(log) => {
            log.report_losses();
            let report = log.close_within(exit_by);
            if report.abandoned > 0 {
                tracing::error!(
                    abandoned = report.abandoned,
                    lost_total = report.lost_total,
                    "stopped; the audit sink did not take the last records in time"
                );
            } else {
                tracing::info!(audit_records_lost = report.lost_total, "stopped");
            }
        }
        Err(audit) => {
            audit.report_losses();
            tracing::error!(
                abandoned = audit.queued(),
                "stopped; the audit log was still in use, its queued records are abandoned"
            );
        }
    }
}
