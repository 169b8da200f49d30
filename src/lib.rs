//! portcullis: an egress forward proxy that lets a workload reach only the
//! hostnames its team allowed.
//!
//! The path of a connection, and the module that owns each step:
//!
//! - [`listener`]: accept (with `--max-connections`), parse the request
//!   ([`listener::client`]: CONNECT and absolute-form HTTP), record the exchange.
//! - [`policy`]: the pure decision core (YAML -> compiled `Policy` -> `decide`).
//! - [`resolve`] and [`dial`]: resolve the name ourselves, drop guarded
//!   addresses, connect within `--connect-timeout`.
//! - [`tunnel`]: relay bytes with counting and an idle timeout.
//! - [`telemetry`]: Prometheus metrics and the JSON audit log, on the side.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`cli`] and [`commands`]: flags, `check` and `explain`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod commands;
pub mod dial;
pub mod health;
pub mod listener;
pub mod policy;
pub mod reload;
pub mod resolve;
pub mod schema;
#[cfg(all(feature = "splice", target_os = "linux"))]
mod splice;
pub mod state;
pub mod suggest;
pub mod telemetry;
pub mod tls_peek;
pub mod tunnel;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::RunArgs;
use crate::policy::Diagnostic;
use crate::state::{Limits, Shared, Snapshot};
use crate::telemetry::Listener;
use crate::telemetry::audit::AuditLog;
use crate::telemetry::diag::DiagStats;
use crate::telemetry::metrics::Metrics;

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
/// `--drain-timeout` + [`EXIT_MARGIN`] of `shutdown`, even when a log sink is stuck.
/// `diagnostics` are the stderr writer's loss counters, exported on `/metrics`.
pub async fn run(
    args: RunArgs,
    diagnostics: DiagStats,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let (compiled, sha256) =
        commands::load_policy_with_hash(&args.policy).map_err(|problems| RunError::Policy {
            path: args.policy.clone(),
            problems,
        })?;
    // Installed before anything is served: SIGHUP's default action is to exit.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(RunError::Signal)?;
    for w in &compiled.warnings() {
        tracing::warn!(policy = %args.policy.display(), "{w}");
    }
    let metrics = Arc::new(Metrics::new(args.max_destination_labels).with_diagnostics(diagnostics));
    metrics.set_policy(1, &compiled.policy.rule_counts());
    let audit = Arc::new(AuditLog::open(
        std::path::Path::new(&args.audit_log),
        telemetry::audit::DEFAULT_CAPACITY,
        metrics.audit_counters(),
    )?);
    let resolver = resolve::Resolver::new(&args.nameservers)?.with_metrics(metrics.clone());

    let explicit = bind("explicit", args.listen).await?;
    let admin = bind("admin", args.admin).await?;
    let transparent_tls = match args.transparent_tls {
        Some(addr) => Some(bind("transparent_tls", addr).await?),
        None => None,
    };
    let transparent_http = match args.transparent_http {
        Some(addr) => Some(bind("transparent_http", addr).await?),
        None => None,
    };
    let bound: Vec<(&str, &TcpListener)> = [
        Some(("explicit", &explicit)),
        Some(("admin", &admin)),
        transparent_tls.as_ref().map(|l| ("transparent_tls", l)),
        transparent_http.as_ref().map(|l| ("transparent_http", l)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let own_addrs = bound
        .iter()
        .filter_map(|(_, l)| l.local_addr().ok())
        .collect();
    for (what, l) in &bound {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(listener = *what, addr = %addr, "listening");
        }
    }
    let data_listener_count =
        1 + usize::from(transparent_tls.is_some()) + usize::from(transparent_http.is_some());
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    let budget = fd_budget(
        open_files_limit(),
        args.max_connections,
        workers,
        data_listener_count,
    );
    let resolver = resolver.with_max_lookups(budget.dns_lookups);
    let limits = Limits {
        connect_timeout: args.connect_timeout,
        idle_timeout: args.idle_timeout,
        header_timeout: args.header_timeout,
        max_connections: budget.max_connections,
        max_connections_per_client: args.max_connections_per_client,
    };
    let rules: usize = compiled.policy.rule_counts().iter().map(|(_, n)| n).sum();
    let snapshot = Snapshot {
        policy: compiled.policy,
        generation: 1,
        sha256: sha256.clone(),
    };
    let dialer = dial::Dialer::new(resolver, own_addrs, limits.connect_timeout, metrics.clone());
    let telemetry = telemetry::Telemetry { metrics, audit };
    let shared = Arc::new(Shared::new(
        snapshot,
        dialer,
        telemetry,
        limits,
        args.revalidate_on_reload,
    ));
    shared
        .telemetry
        .audit
        .write(&telemetry::audit::AuditRecord::policy_reload(
            Some(1),
            telemetry::audit::ReloadDetails {
                result: telemetry::ReloadResult::Ok,
                path: Some(args.policy.display().to_string()),
                sha256: Some(sha256),
                rules: Some(rules),
                error: None,
                changes: None,
            },
        ));

    let admin_task = tokio::spawn(admin::serve(
        shared.telemetry.metrics.clone(),
        shared.lifecycle.clone(),
        shared.limits.header_timeout,
        admin,
    ));
    let data_listeners: Vec<(Listener, TcpListener)> = [
        Some((Listener::Explicit, explicit)),
        transparent_tls.map(|l| (Listener::TransparentTls, l)),
        transparent_http.map(|l| (Listener::TransparentHttp, l)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let accepting = TaskTracker::new();
    // Ends the worker threads' event loops once the drain is over.
    let stop_workers = CancellationToken::new();
    let workers = match start_workers(workers, &shared, &accepting, &stop_workers, &data_listeners)
    {
        Ok(workers) => workers,
        Err(e) => {
            // Threads already started stop accepting and end.
            shared.lifecycle.draining.cancel();
            stop_workers.cancel();
            return Err(e);
        }
    };
    spawn_accept_loops(&shared, &accepting, data_listeners);
    let reloader = tokio::spawn(reload::run(shared.clone(), args.policy.clone(), hup));
    let loss_reporter = tokio::spawn(report_audit_losses(shared.telemetry.audit.clone()));
    shared.lifecycle.set_ready(true);
    tracing::info!(policy = %args.policy.display(), generation = 1, "ready");

    shutdown.await;
    // The final audit flush must end by then, leaving time for the last log lines.
    let exit_by = std::time::Instant::now() + args.drain_timeout + EXIT_MARGIN - LAST_WORDS;
    tracing::info!(drain_timeout = ?args.drain_timeout, "draining");
    let lifecycle = shared.lifecycle.clone();
    lifecycle.draining.cancel();
    accepting.close();
    accepting.wait().await;
    lifecycle.tracker.close();
    if tokio::time::timeout(args.drain_timeout, lifecycle.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing the connections still open");
        lifecycle.abort.cancel();
        // Give cut tunnels a moment to write their audit records.
        let _ = tokio::time::timeout(Duration::from_secs(2), lifecycle.tracker.wait()).await;
    }
    for task in [admin_task, reloader, loss_reporter] {
        task.abort();
        let _ = task.await;
    }
    // The worker threads let go of `shared` once their last connection is
    // done, or now: what is still running there is dropped with their loops.
    stop_workers.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        for done in workers {
            let _ = done.await;
        }
    })
    .await;
    let audit = shared.telemetry.audit.clone();
    drop(shared);
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
    Ok(())
}

/// How far past `--drain-timeout` the process may run after SIGTERM (SPEC 10).
pub const EXIT_MARGIN: Duration = Duration::from_secs(5);

/// Kept out of the audit flush's share of [`EXIT_MARGIN`]: the last log lines and exit.
const LAST_WORDS: Duration = Duration::from_millis(1500);

/// Warns once a second with the audit records lost in that second, so a warning states
/// the true count (a warning per loss, rate-limited, would report only the first).
async fn report_audit_losses(audit: Arc<AuditLog>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        audit.report_losses();
    }
}

/// Starts `workers - 1` threads besides the caller's, each with a single-threaded event loop accepting on its
/// own descriptor of every data listener. The kernel hands each connection
/// to whichever thread accepts it first, and the connection stays there: no
/// task hops between threads, which keeps tail latency down on small
/// machines where the proxy shares its cores. The threads serve until the
/// drain is over (`shared.tracker` is closed and empty); each receiver
/// resolves when its thread has let go of `shared`.
fn start_workers(
    workers: usize,
    shared: &Arc<Shared>,
    accepting: &TaskTracker,
    stop: &CancellationToken,
    listeners: &[(Listener, TcpListener)],
) -> Result<Vec<tokio::sync::oneshot::Receiver<()>>, RunError> {
    let mut stopped = Vec::with_capacity(workers);
    for i in 1..workers {
        let mut own = Vec::with_capacity(listeners.len());
        for (kind, l) in listeners {
            let dup = socket2::SockRef::from(l)
                .try_clone()
                .map_err(RunError::Workers)?;
            own.push((*kind, std::net::TcpListener::from(dup)));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RunError::Workers)?;
        let shared = shared.clone();
        let accepting = accepting.clone();
        let stop = stop.clone();
        let (done, stopped_rx) = tokio::sync::oneshot::channel();
        stopped.push(stopped_rx);
        std::thread::Builder::new()
            .name(format!("portcullis-w{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut registered = Vec::with_capacity(own.len());
                    for (kind, l) in own {
                        match TcpListener::from_std(l) {
                            Ok(l) => registered.push((kind, l)),
                            Err(e) => tracing::error!(worker = i, error = %e, "cannot listen"),
                        }
                    }
                    spawn_accept_loops(&shared, &accepting, registered);
                    tokio::select! {
                        () = shared.lifecycle.tracker.wait() => {}
                        () = stop.cancelled() => {}
                    }
                });
                drop(runtime);
                let _ = done.send(());
            })
            .map_err(RunError::Workers)?;
    }
    tracing::info!(workers, "serving");
    Ok(stopped)
}

/// Accepts on `listeners` from the current thread's event loop; the
/// connections accepted are served there.
fn spawn_accept_loops(
    shared: &Arc<Shared>,
    accepting: &TaskTracker,
    listeners: Vec<(Listener, TcpListener)>,
) {
    use listener::{accept_loop, client, tls};
    for (kind, l) in listeners {
        let shared = shared.clone();
        match kind {
            Listener::Explicit => {
                accepting.spawn(accept_loop(shared, l, kind, client::serve_explicit))
            }
            Listener::TransparentTls => accepting.spawn(accept_loop(shared, l, kind, tls::serve)),
            Listener::TransparentHttp => {
                accepting.spawn(accept_loop(shared, l, kind, client::serve_transparent))
            }
        };
    }
}

/// Descriptors kept out of the connection budget besides those counted below:
/// listeners, the audit log, the file watcher, and headroom.
const FD_HEADROOM: usize = 64;

/// Descriptors of a worker thread, besides its connections: idle splice
/// pipes (`splice::POOL_MAX` of them), its event loop's epoll and waker and
/// signal pipe, and per data listener a duplicate and a reserve descriptor.
fn fds_per_worker(listeners: usize) -> usize {
    #[cfg(all(feature = "splice", target_os = "linux"))]
    let pooled_pipes = splice::POOL_MAX;
    #[cfg(not(all(feature = "splice", target_os = "linux")))]
    let pooled_pipes = 0;
    2 * pooled_pipes + 3 + 2 * listeners
}

/// How the open-files limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FdBudget {
    /// The effective `--max-connections`.
    max_connections: usize,
    /// DNS lookups in flight at once.
    dns_lookups: usize,
}

/// The soft open-files limit of this process, where the platform says.
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse::<usize>().ok()
}

/// Shares the open-files limit `soft` out so that running out of descriptors
/// shows up as `503 overloaded` (or a `dns_error`), never as failed accepts.
/// Fixed first: headroom, the worker threads, and the admin listener's
/// connections (one more while the oldest idle one is being closed). Of the
/// rest, a sixteenth goes to pending DNS lookups ([`resolve::FDS_PER_LOOKUP`]
/// each): they last milliseconds, connections last minutes. Each client
/// connection may then hold two descriptors (client and upstream).
fn fd_budget(
    soft: Option<usize>,
    max_connections: usize,
    workers: usize,
    listeners: usize,
) -> FdBudget {
    let Some(soft) = soft else {
        return FdBudget {
            max_connections,
            dns_lookups: resolve::DEFAULT_MAX_LOOKUPS,
        };
    };
    let fixed = FD_HEADROOM + fds_per_worker(listeners) * workers + admin::MAX_CONNECTIONS + 1;
    let rest = soft.saturating_sub(fixed);
    let dns_lookups = (rest / 16 / resolve::FDS_PER_LOOKUP).clamp(1, resolve::DEFAULT_MAX_LOOKUPS);
    let fit = rest
        .saturating_sub(dns_lookups * resolve::FDS_PER_LOOKUP)
        .max(2)
        / 2;
    if fit < max_connections {
        // Expected on common limits (a `nofile` of 20000 fits 9,9xx of the
        // default 10000): fitting is the intended behaviour, not a fault.
        tracing::info!(
            max_connections,
            open_files_limit = soft,
            using = fit,
            "--max-connections lowered to fit the open-files limit; raise `ulimit -n` for more"
        );
    }
    FdBudget {
        max_connections: fit.min(max_connections),
        dns_lookups,
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { what, addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_shared_out() {
        let fixed = FD_HEADROOM + fds_per_worker(1) * 2 + admin::MAX_CONNECTIONS + 1;
        let cases = [
            (
                "no limit known",
                None,
                10_000,
                10_000,
                resolve::DEFAULT_MAX_LOOKUPS,
            ),
            // 1600 left: 100 for lookups (25 of them), 1500 for 750 connections.
            ("tight limit", Some(fixed + 1600), 10_000, 750, 25),
            (
                "roomy limit",
                Some(1_048_576),
                10_000,
                10_000,
                resolve::DEFAULT_MAX_LOOKUPS,
            ),
            ("below what is fixed", Some(fixed / 2), 10_000, 1, 1),
        ];
        for (name, soft, asked, connections, lookups) in cases {
            let budget = fd_budget(soft, asked, 2, 1);
            assert_eq!(
                budget,
                FdBudget {
                    max_connections: connections,
                    dns_lookups: lookups
                },
                "{name}"
            );
        }
    }
}
