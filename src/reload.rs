//! Hot reload: watch the policy's symlink chain and SIGHUP, compile off the
//! data path, swap atomically, and (optionally) cut tunnels the new policy
//! denies.
//!
//! A file written in place is taken when its writer closes it, never while
//! it is being written (the `watch` module says which events mean "complete"); a
//! rename-replace or a symlink swap is taken at once. A policy directory is
//! taken when one of its files is, or is added or removed, and only once
//! two reads of it agree.

mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use crate::policy::{Credentials, Host, Mode, diff};
use crate::policy_file::{PolicyFiles, read_policy, render};
use crate::state::{Shared, Snapshot};
use crate::telemetry::audit::{AuditRecord, ReloadDetails};
use crate::telemetry::{ReloadResult, Telemetry};
use watch::{Due, Events, PolicyWatch};

/// Editors and ConfigMap swaps touch several names at once: let a burst of
/// events land before acting on it.
const BURST: Duration = Duration::from_millis(25);

/// How many times a policy directory is read again, [`BURST`] apart, for
/// two reads that agree before the reload gives up (and keeps the policy).
const SETTLE_READS: usize = 20;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// SIGHUP: take the file as it is now, and report it even if it is still missing.
    Signal,
    /// A watch event said the file is complete.
    Watch,
}

/// The reload loop, its watch in place.
pub(crate) struct Reloader {
    shared: Arc<Shared>,
    path: PathBuf,
    hup: Signal,
    watch: Option<Arc<Mutex<PolicyWatch>>>,
}

impl Reloader {
    /// Starts watching `path`; changes made once this returns are seen.
    pub(crate) async fn start(shared: Arc<Shared>, path: PathBuf, hup: Signal) -> Reloader {
        let watch = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || PolicyWatch::new(&path)).await
        };
        let watch = match watch {
            Ok(Ok(w)) => Some(Arc::new(Mutex::new(w))),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot watch the policy; reload with SIGHUP");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the policy watch; reload with SIGHUP");
                None
            }
        };
        Reloader {
            shared,
            path,
            hup,
            watch,
        }
    }

    /// Reloads on file changes and on SIGHUP until the proxy drains.
    pub(crate) async fn run(mut self) {
        let (shared, path) = (&self.shared, self.path.as_path());
        let events = self.watch.as_ref().map(|w| lock(w).events());
        // Reported once per disappearance (SIGHUP reports it again).
        let mut gone = false;
        loop {
            let settle = events.as_ref().and_then(Events::settle_at);
            let work = tokio::select! {
                () = changed(events.as_ref()) => {
                    tokio::time::sleep(BURST).await;
                    events.as_ref().and_then(Events::due).map(Work::Watch)
                }
                () = sleep_until(settle), if settle.is_some() => {
                    events.as_ref().and_then(Events::due).map(Work::Watch)
                }
                Some(()) = self.hup.recv() => Some(Work::Signal),
                () = shared.lifecycle.draining.cancelled() => return,
            };
            let Some(work) = work else { continue };
            // Before the read, so that no change after it goes unseen.
            if let Some(w) = &self.watch {
                refresh(w).await;
            }
            match work {
                Work::Watch(Due::Take) => reload(shared, path, Trigger::Watch, &mut gone).await,
                // A file of a policy directory removed or renamed away is a change to take.
                Work::Watch(Due::Recheck) if is_dir(path).await => {
                    reload(shared, path, Trigger::Watch, &mut gone).await
                }
                Work::Watch(Due::Recheck) => recheck(shared, path, &mut gone).await,
                Work::Signal => {
                    // Before the reload's own record, so that record already goes to the new file.
                    shared.telemetry.audit.reopen();
                    reload(shared, path, Trigger::Signal, &mut gone).await
                }
            }
        }
    }
}

/// What the reload loop was woken for.
enum Work {
    Watch(Due),
    Signal,
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn changed(events: Option<&Events>) {
    match events {
        Some(e) => e.changed().await,
        None => std::future::pending().await,
    }
}

fn lock(watch: &Mutex<PolicyWatch>) -> std::sync::MutexGuard<'_, PolicyWatch> {
    watch.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Follows the chain again and moves the watches, off the event loop.
async fn refresh(watch: &Arc<Mutex<PolicyWatch>>) {
    let watch = watch.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || lock(&watch).refresh()).await {
        tracing::error!(error = %e, "policy watch refresh failed");
    }
}

async fn is_dir(path: &Path) -> bool {
    tokio::fs::metadata(path).await.is_ok_and(|m| m.is_dir())
}

/// Reads the policy; a directory until two reads [`BURST`] apart agree, so
/// that a change of several files (a `git pull`, an editor's save) is
/// taken whole. A directory that never settles is a problem to report.
fn read_settled(path: &Path) -> PolicyFiles {
    let mut files = read_policy(path);
    if !files.is_dir {
        return files;
    }
    for _ in 0..SETTLE_READS {
        std::thread::sleep(BURST);
        let again = read_policy(path);
        if again == files {
            return again;
        }
        files = again;
    }
    files.problems.push(crate::policy::Diagnostic::at(
        crate::policy::Code::Unreadable,
        1,
        1,
        "the policy directory kept changing while it was read; the change is taken at its next event",
        None,
    ));
    files
}

/// A name on the chain went away: report the policy gone if it is.
async fn recheck(shared: &Shared, path: &Path, gone: &mut bool) {
    // Still there, a writer may be filling a new file: its close is what
    // makes it count. Unreadable: the next read reports it.
    if let Err(e) = tokio::fs::metadata(path).await
        && e.kind() == std::io::ErrorKind::NotFound
        && !std::mem::replace(gone, true)
    {
        policy_gone(shared, path, &e);
    }
}

fn policy_gone(shared: &Shared, path: &Path, e: &std::io::Error) {
    tracing::warn!(path = %path.display(), error = %e, "the policy file is gone; keeping the last good policy");
    let current = shared.policy.load();
    reload_failed(shared, path, &current, None, format!("cannot read: {e}"));
}

/// Reads, compiles and swaps in the policy at `path`. A file that does not
/// compile is logged with every line and column, counted, and ignored.
/// Content equal to the policy in force is `unchanged`: counted and
/// audited, and the generation stays.
async fn reload(shared: &Arc<Shared>, path: &Path, trigger: Trigger, gone: &mut bool) {
    let current = shared.policy.load_full();
    let files = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || read_settled(&path)).await
    };
    let files = match files {
        Ok(files) => files,
        Err(e) => {
            let error = format!("policy read panicked: {e}");
            return reload_failed(shared, path, &current, None, error);
        }
    };
    if files.missing {
        if !std::mem::replace(gone, true) || trigger == Trigger::Signal {
            let e = std::io::Error::from(std::io::ErrorKind::NotFound);
            policy_gone(shared, path, &e);
        }
        return;
    }
    *gone = false;
    let sha = (!files.files.is_empty()).then(|| files.sha256());
    if files.problems.is_empty() && sha.as_deref() == Some(&*current.sha256) {
        return reload_unchanged(shared, path, &current, trigger);
    }
    let started = std::time::Instant::now();
    // Compiling and comparing a large policy takes a while: off the event loop, both.
    let previous = Arc::clone(&current);
    let compiled = tokio::task::spawn_blocking(move || {
        files.compile().map(|c| {
            let changes = diff::diff(&previous.policy, &c.policy);
            (c, changes)
        })
    })
    .await;
    let compile_ms = started.elapsed().as_millis() as u64;
    // `allow_private` over one of the proxy's own addresses: refused like a compile error.
    let own = shared.dialer.own_ips();
    let compiled = compiled.map(|done| {
        done.and_then(|(c, changes)| match c.policy.own_address_problems(&own) {
            problems if problems.is_empty() => Ok((c, changes)),
            problems => Err(problems),
        })
    });
    let (compiled, changes) = match compiled {
        Ok(Ok(done)) => done,
        Ok(Err(problems)) => {
            for p in &problems {
                tracing::error!(problem = %render(path, p), "policy reload rejected; keeping the last good policy");
            }
            let summary = problems
                .iter()
                .map(|p| render(path, p))
                .collect::<Vec<_>>()
                .join("; ");
            return reload_failed(shared, path, &current, sha, summary);
        }
        Err(e) => {
            let error = format!("compiler panicked: {e}");
            return reload_failed(shared, path, &current, sha, error);
        }
    };
    let Some(sha) = sha else {
        // A policy compiles from at least one file; never swap in one made of none.
        let error = "no policy file was read".to_string();
        return reload_failed(shared, path, &current, None, error);
    };
    let generation = current.generation + 1;
    let next = Arc::new(Snapshot {
        policy: compiled.policy,
        generation,
        sha256: sha.as_str().into(),
    });
    shared.policy.store(next.clone());
    shared
        .telemetry
        .metrics
        .policy_reload(ReloadResult::Ok, None);
    tracing::info!(generation, sha256 = %sha, compile_ms, changes = changes.len(), ?trigger, "policy reloaded");
    announce(
        &shared.telemetry,
        path,
        &next,
        serde_json::to_value(&changes).ok(),
    );
    if let Some(open) = &shared.policy.open_tunnels {
        let revoked = open.revalidate(&next);
        if revoked > 0 {
            tracing::info!(generation, revoked, "closed tunnels the new policy denies");
        }
    }
}

/// Announces a policy that went live, at start and at every reload: the
/// generation and rule gauges, and the `policy_reload` audit record.
pub(crate) fn announce(
    telemetry: &Telemetry,
    path: &Path,
    snap: &Snapshot,
    changes: Option<serde_json::Value>,
) {
    let generation = snap.generation;
    let expired = snap.policy.expired_rules(crate::policy_file::today());
    // At start the policy's warnings, these among them, are logged already.
    if generation > 1 {
        for rule in &expired {
            let day = rule.expires().map(|d| d.to_string()).unwrap_or_default();
            tracing::warn!(
                path = %path.display(),
                generation,
                rule = %rule.text,
                file = rule.file.as_deref().unwrap_or(""),
                line = rule.line,
                expires = %day,
                owner = rule.owner().unwrap_or(""),
                ticket = rule.ticket().unwrap_or(""),
                "expired-rule: the rule's expires day has passed; it is still enforced"
            );
        }
    }
    warn_report_mode(path, snap);
    telemetry.metrics.policy_loaded(snap, expired.len());
    let details = ReloadDetails {
        result: ReloadResult::Ok,
        path: Some(path.display().to_string()),
        sha256: Some(snap.sha256.to_string()),
        rules: Some(snap.policy.rule_count()),
        changes,
    };
    telemetry.write_audit(AuditRecord::policy_reload(
        generation,
        snap.sha256.clone(),
        details,
        None,
    ));
}

/// Warns, at start and at every reload, while the policy or a client is in
/// report mode: traffic it would deny goes through. An ignore comment in
/// the file silences `check`, never this.
fn warn_report_mode(path: &Path, snap: &Snapshot) {
    let policy = &snap.policy;
    let clients: Vec<&str> = (policy.clients.iter().flatten())
        .filter(|c| c.mode == Mode::Report)
        .map(|c| &*c.name)
        .collect();
    if policy.mode == Mode::Report || !clients.is_empty() {
        tracing::warn!(
            path = %path.display(),
            generation = snap.generation,
            top_level = policy.mode == Mode::Report,
            clients = %clients.join(","),
            "report mode: what the policy would deny is let through and only recorded"
        );
    }
}

fn reload_unchanged(shared: &Shared, path: &Path, current: &Snapshot, trigger: Trigger) {
    shared
        .telemetry
        .metrics
        .policy_reload(ReloadResult::Unchanged, None);
    tracing::info!(generation = current.generation, sha256 = %current.sha256, ?trigger, "policy unchanged");
    let details = ReloadDetails {
        result: ReloadResult::Unchanged,
        path: Some(path.display().to_string()),
        sha256: Some(current.sha256.to_string()),
        rules: Some(current.policy.rule_count()),
        changes: None,
    };
    shared.telemetry.write_audit(AuditRecord::policy_reload(
        current.generation,
        current.sha256.clone(),
        details,
        None,
    ));
}

fn reload_failed(
    shared: &Shared,
    path: &Path,
    current: &Snapshot,
    sha256: Option<String>,
    error: String,
) {
    shared
        .telemetry
        .metrics
        .policy_reload(ReloadResult::Error, Some(&error));
    let details = ReloadDetails {
        result: ReloadResult::Error,
        path: Some(path.display().to_string()),
        sha256,
        rules: None,
        changes: None,
    };
    shared.telemetry.write_audit(AuditRecord::policy_reload(
        current.generation,
        current.sha256.clone(),
        details,
        Some(error),
    ));
}

/// Open tunnels, so that `--revalidate-on-reload` can re-decide them.
#[derive(Default)]
pub(crate) struct OpenTunnels {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, OpenTunnel>>,
}

struct OpenTunnel {
    client: Credentials,
    host: Host,
    port: u16,
    cancel: CancellationToken,
    revoked_by: Arc<OnceLock<Revocation>>,
}

/// The reload that cut a tunnel: the policy now in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Revocation {
    pub generation: u64,
    pub sha256: Arc<str>,
}

/// Unregisters its tunnel when dropped.
pub(crate) struct Registration<'a> {
    set: &'a OpenTunnels,
    id: u64,
    revoked_by: Arc<OnceLock<Revocation>>,
}

impl Registration<'_> {
    /// The reload that revoked the tunnel, if one did.
    pub(crate) fn revoked_by(&self) -> Option<Revocation> {
        self.revoked_by.get().cloned()
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.set
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl OpenTunnels {
    /// Tracks a tunnel; `cancel` is cancelled if a reload revokes it.
    pub(crate) fn register(
        &self,
        client: Credentials,
        host: Host,
        port: u16,
        cancel: CancellationToken,
    ) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revoked_by = Arc::new(OnceLock::new());
        let entry = OpenTunnel {
            client,
            host,
            port,
            cancel,
            revoked_by: revoked_by.clone(),
        };
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, entry);
        Registration {
            set: self,
            id,
            revoked_by,
        }
    }

    /// Cancels every tunnel the policy of `snap` no longer permits, noting
    /// that `snap` revoked it; returns how many.
    pub(crate) fn revalidate(&self, snap: &Snapshot) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut revoked = 0;
        for t in open.values() {
            if !snap
                .policy
                .decide(&t.client, &t.host, t.port)
                .verdict
                .permits()
            {
                let _ = t.revoked_by.set(Revocation {
                    generation: snap.generation,
                    sha256: snap.sha256.clone(),
                });
                t.cancel.cancel();
                revoked += 1;
            }
        }
        revoked
    }
}
