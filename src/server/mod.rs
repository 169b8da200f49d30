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
    /// The policy file failed to load or compile.
    #[error("the policy {path} does not load")]
    Policy {
        /// The policy file.
        path: PathBuf,
        /// Everything wrong with it.
        problems: Vec<Diagnostic>,
    },
    /// A listener could not bind.
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        /// Which listener (`explicit`, `admin`, `transparent_tls`, `transparent_http`).
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] telemetry::audit::AuditError),
    /// The DNS resolver could not be set up.
    #[error(transparent)]
    Resolver(#[from] resolve::ResolveInitError),
    /// The SIGHUP handler could not be installed.
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(std::io::Error),
    /// The `--listen-tls` certificate, key or client CA does not load.
    #[error("cannot set up --listen-tls: {0}")]
    Tls(#[from] crate::listener::mtls::TlsError),
    /// The worker threads could not be started.
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
