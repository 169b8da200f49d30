//! `run`: configuration from the arguments, start, serve until told to stop, drain.

mod config;
mod drain;
mod start;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cli::RunArgs;
use crate::policy::Diagnostic;
use crate::telemetry::diag::DiagStats;
use crate::{resolve, telemetry};

/// Why `run` could not start. Nothing is served when any of these happen:
/// the proxy never starts open.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the policy {path} does not load")]
    Policy {
        path: PathBuf,
        problems: Vec<Diagnostic>,
    },
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Audit(#[from] telemetry::audit::AuditError),
    #[error(transparent)]
    Resolver(#[from] resolve::ResolveInitError),
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(std::io::Error),
    #[error("cannot start worker threads: {0}")]
    Workers(std::io::Error),
}

/// Runs the proxy until `shutdown` resolves, then drains: `/readyz` turns
/// 503, listeners stop accepting, open connections and tunnels get
/// `--drain-timeout` to finish, and whatever is left is cut. Returns within
/// `--drain-timeout` + [`EXIT_MARGIN`](crate::limits::EXIT_MARGIN) of `shutdown`, even when a log sink is stuck.
/// `diagnostics` are the stderr writer's loss counters, exported on `/metrics`.
pub async fn run(
    args: RunArgs,
    diagnostics: DiagStats,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let running = start::start(args, diagnostics).await?;
    shutdown.await;
    running.drain().await;
    Ok(())
}
