//! Starting: load the policy, bind the listeners, build the shared parts, start serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::Signal;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::RunError;
use super::config::Config;
use super::workers::{spawn_accept_loops, start_workers};
use crate::cli::RunArgs;
use crate::dial::Dialer;
use crate::listener::mtls::{TlsFiles, TlsServer};
use crate::policy::diagnostic::Code;
use crate::state::{Shared, Snapshot};
use crate::telemetry::audit::{AuditLog, QueueLimit};
use crate::telemetry::diag::DiagStats;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::{self, Listener, Telemetry};
use crate::{admin, policy_file, reload, resolve};

/// A proxy serving: what the drain has to stop, in order.
pub(super) struct Running {
    pub shared: Arc<Shared>,
    /// The accept loops.
    pub accepting: TaskTracker,
    /// Ends the worker threads' event loops once the drain is over.
    pub stop_workers: CancellationToken,
    /// Each resolves when its worker thread has let go of `shared`.
    pub workers: Vec<oneshot::Receiver<()>>,
    /// The admin listener, the reloader and the audit loss reporter.
    pub tasks: [JoinHandle<()>; 4],
    pub drain_timeout: Duration,
}

/// Loads the policy, binds every listener and starts serving; nothing is
/// served when any step fails.
pub(super) async fn start(args: RunArgs, diagnostics: DiagStats) -> Result<Running, RunError> {
    let (compiled, sha256) =
        policy_file::load_policy_with_hash(&args.policy).map_err(|problems| RunError::Policy {
            path: args.policy.clone(),
            problems,
        })?;
    // Installed before anything is served: SIGHUP's default action is to exit.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(RunError::Signal)?;
    // Report mode is announced with every policy that goes live, ignore
    // comments or not (`reload::announce`).
    let warnings = compiled.warnings(policy_file::today());
    for w in warnings.iter().filter(|w| w.code != Code::ReportMode) {
        tracing::warn!(policy = %args.policy.display(), "{w}");
    }
    let metrics = Arc::new(Metrics::new(args.max_destination_labels).with_diagnostics(diagnostics));
    let audit = Arc::new(AuditLog::open(
        std::path::Path::new(&args.audit_log),
        QueueLimit {
            capacity: args.audit_queue_records.get(),
            overflow: args.audit_overflow,
        },
        metrics.audit_counters(),
    )?);
    let resolver = resolve::Resolver::new(&args.nameservers)?.with_metrics(metrics.clone());
    let instance = telemetry::instance::identify(args.instance_id.as_deref()).await;

    let tls = tls_server(&args)?;
    let bound = Bound::bind(&args).await?;
    let own_addrs = bound.announce();
    let own_ips: Vec<_> = own_addrs.iter().map(SocketAddr::ip).collect();
    let problems = compiled.policy.own_address_problems(&own_ips);
    if !problems.is_empty() {
        return Err(RunError::Policy {
            path: args.policy.clone(),
            problems,
        });
    }
    let config = Config::from_args(&args, bound.data_count());
    metrics.set_max_connections(config.limits.max_connections);
    let resolver = resolver.with_max_lookups(config.dns_lookups);
    let snapshot = Snapshot {
        policy: compiled.policy,
        generation: 1,
        sha256: sha256.into(),
    };
    let dialer = Dialer::new(
        resolver,
        own_addrs,
        config.limits.connect_timeout,
        metrics.clone(),
    );
    let shared = Arc::new(Shared::new(
        snapshot,
        dialer,
        Telemetry {
            metrics,
            audit,
            instance,
        },
        config.limits,
        args.revalidate_on_reload,
    ));
    reload::announce(&shared.telemetry, &args.policy, &shared.policy.load(), None);
    serve(shared, bound, tls, config.workers, &args, hup).await
}

/// The `--listen-tls` configuration, when that listener is asked for.
fn tls_server(args: &RunArgs) -> Result<Option<Arc<TlsServer>>, RunError> {
    let (Some(_), Some(cert), Some(key), Some(client_ca)) = (
        args.listen_tls,
        &args.tls_cert,
        &args.tls_key,
        &args.tls_client_ca,
    ) else {
        return Ok(None);
    };
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: client_ca.clone(),
    };
    Ok(Some(Arc::new(TlsServer::load(files)?)))
}

/// Starts the admin listener, the workers' accept loops, the reloader and
/// the loss reporter, then declares the proxy ready.
async fn serve(
    shared: Arc<Shared>,
    bound: Bound,
    tls: Option<Arc<TlsServer>>,
    workers: usize,
    args: &RunArgs,
    hup: Signal,
) -> Result<Running, RunError> {
    let status = Arc::new(admin::Admin {
        metrics: shared.telemetry.metrics.clone(),
        lifecycle: shared.lifecycle.clone(),
        policy_path: args.policy.clone(),
        listeners: bound.addrs(),
        instance: shared.telemetry.instance.clone(),
    });
    let (admin, data_listeners) = bound.split();
    let admin_task = tokio::spawn(admin::serve(status, shared.limits.header_timeout, admin));
    let accepting = TaskTracker::new();
    let stop_workers = CancellationToken::new();
    let workers = match start_workers(
        workers,
        &shared,
        &tls,
        &accepting,
        &stop_workers,
        &data_listeners,
    ) {
        Ok(workers) => workers,
        Err(e) => {
            // Threads already started stop accepting and end.
            shared.lifecycle.draining.cancel();
            stop_workers.cancel();
            return Err(e);
        }
    };
    spawn_accept_loops(&shared, &tls, &accepting, data_listeners);
    let reloader = reload::Reloader::start(shared.clone(), args.policy.clone(), hup).await;
    let reloader = tokio::spawn(reloader.run());
    let loss_reporter = tokio::spawn(report_audit_losses(shared.telemetry.audit.clone()));
    let expiry = tokio::spawn(watch_expiry(shared.clone(), args.policy.clone()));
    shared.lifecycle.set_ready(true);
    tracing::info!(policy = %args.policy.display(), generation = 1, "ready");
    Ok(Running {
        shared,
        accepting,
        stop_workers,
        workers,
        tasks: [admin_task, reloader, loss_reporter, expiry],
        drain_timeout: args.drain_timeout,
    })
}

/// Every listener the arguments ask for, bound.
struct Bound {
    explicit: TcpListener,
    explicit_tls: Option<TcpListener>,
    admin: TcpListener,
    transparent_tls: Option<TcpListener>,
    transparent_http: Option<TcpListener>,
}

impl Bound {
    async fn bind(args: &RunArgs) -> Result<Bound, RunError> {
        let explicit = bind("explicit", args.listen).await?;
        let admin = bind("admin", args.admin).await?;
        let explicit_tls = match args.listen_tls {
            Some(addr) => Some(bind("explicit_tls", addr).await?),
            None => None,
        };
        let transparent_tls = match args.transparent_tls {
            Some(addr) => Some(bind("transparent_tls", addr).await?),
            None => None,
        };
        let transparent_http = match args.transparent_http {
            Some(addr) => Some(bind("transparent_http", addr).await?),
            None => None,
        };
        Ok(Bound {
            explicit,
            explicit_tls,
            admin,
            transparent_tls,
            transparent_http,
        })
    }

    /// Logs each listener's address; returns them all, never to be dialed.
    fn announce(&self) -> Vec<SocketAddr> {
        let bound = self.addrs();
        for (what, addr) in &bound {
            tracing::info!(listener = *what, addr = %addr, "listening");
        }
        bound.into_iter().map(|(_, addr)| addr).collect()
    }

    /// Every listener's kind and bound address.
    fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        [
            Some(("explicit", &self.explicit)),
            Some(("admin", &self.admin)),
            self.explicit_tls.as_ref().map(|l| ("explicit_tls", l)),
            self.transparent_tls
                .as_ref()
                .map(|l| ("transparent_tls", l)),
            self.transparent_http
                .as_ref()
                .map(|l| ("transparent_http", l)),
        ]
        .into_iter()
        .flatten()
        .filter_map(|(what, l): (&'static str, &TcpListener)| Some((what, l.local_addr().ok()?)))
        .collect()
    }

    /// Data listeners: each costs descriptors on every worker.
    fn data_count(&self) -> usize {
        1 + usize::from(self.explicit_tls.is_some())
            + usize::from(self.transparent_tls.is_some())
            + usize::from(self.transparent_http.is_some())
    }

    /// The admin listener, and the data listeners with their kinds.
    fn split(self) -> (TcpListener, Vec<(Listener, TcpListener)>) {
        let data = [
            Some((Listener::Explicit, self.explicit)),
            self.explicit_tls.map(|l| (Listener::ExplicitTls, l)),
            self.transparent_tls.map(|l| (Listener::TransparentTls, l)),
            self.transparent_http
                .map(|l| (Listener::TransparentHttp, l)),
        ]
        .into_iter()
        .flatten()
        .collect();
        (self.admin, data)
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { what, addr, source })
}

/// How often the day is looked at for rules that expire while their policy
/// is in force.
const EXPIRY_CHECK: Duration = Duration::from_secs(600);

/// Keeps `portcullis_policy_expired_rules` true as the days pass, and warns
/// the day a rule of the policy in force expires (a reload does both too).
async fn watch_expiry(shared: Arc<Shared>, path: std::path::PathBuf) {
    let mut tick = tokio::time::interval(EXPIRY_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = None;
    loop {
        tick.tick().await;
        let snap = shared.policy.load();
        let today = policy_file::today();
        let before = match seen.replace((snap.generation, today)) {
            Some((generation, day)) if generation == snap.generation && day != today => day,
            // A new generation was counted and warned about when it loaded.
            _ => continue,
        };
        for rule in snap.policy.newly_expired(before, today) {
            let day = rule.expires().map(|d| d.to_string()).unwrap_or_default();
            tracing::warn!(
                path = %path.display(),
                generation = snap.generation,
                rule = %rule.text,
                line = rule.line,
                expires = %day,
                owner = rule.owner().unwrap_or(""),
                ticket = rule.ticket().unwrap_or(""),
                "expired-rule: the rule's expires day has passed; it is still enforced"
            );
        }
        let expired = snap.policy.expired_rules(today).len();
        shared.telemetry.metrics.expired_rules(expired);
    }
}

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
