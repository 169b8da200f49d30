//! Hot reload: watch the policy's directory and SIGHUP, compile off the data
//! path, swap atomically, and (optionally) cut tunnels the new policy denies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use sha2::{Digest, Sha256};
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::commands::render;
use crate::policy::{Host, Policy, diff};
use crate::state::{Shared, Snapshot};
use crate::telemetry::ReloadResult;
use crate::telemetry::audit::{AuditRecord, ReloadDetails};

/// Editors and ConfigMap swaps touch several files at once: wait for quiet.
const DEBOUNCE: Duration = Duration::from_millis(25);

/// Hex SHA-256 of the policy file's bytes, recorded with each generation.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Watches the directory (not the file: editors replace files by rename,
/// and Kubernetes swaps a `..data` symlink) and pokes `tx` after each burst.
fn watch(
    path: &Path,
    tx: mpsc::Sender<()>,
) -> Result<Debouncer<notify_debouncer_full::notify::RecommendedWatcher, RecommendedCache>, String>
{
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    // The policy itself, or Kubernetes' `..data` / `..2026_...` swap; not
    // unrelated files (an audit log written next to the policy, say).
    let relevant = move |p: &Path| {
        p.file_name()
            .is_some_and(|f| Some(f) == name.as_deref() || f.as_encoded_bytes().starts_with(b".."))
    };
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |res: DebounceEventResult| {
        let Ok(events) = res else { return };
        if events
            .iter()
            .flat_map(|e| e.paths.iter())
            .any(|p| relevant(p))
        {
            // A full channel already holds a pending reload: nothing is lost.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| e.to_string())?;
    debouncer
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(debouncer)
}

/// Reloads on file changes and on SIGHUP until the proxy drains.
pub async fn run(shared: Arc<Shared>, path: PathBuf, mut hup: Signal) {
    let mut last = shared.policy.load().sha256.clone();
    let (tx, mut rx) = mpsc::channel(1);
    let _watcher = match watch(&path, tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the policy directory; reload with SIGHUP");
            None
        }
    };
    loop {
        tokio::select! {
            Some(()) = rx.recv() => reload(&shared, &path, &mut last, false).await,
            Some(()) = hup.recv() => {
                // Before the reload's own record, so that record already goes to the new file.
                shared.audit.reopen();
                reload(&shared, &path, &mut last, true).await
            }
            () = shared.draining.cancelled() => return,
        }
    }
}

/// Reads, compiles and swaps in the policy at `path`. A file that does not
/// compile is logged with every line and column, counted, and ignored. Bytes
/// already tried (`last`, good or bad) are skipped unless `forced` (SIGHUP).
pub async fn reload(shared: &Arc<Shared>, path: &Path, last: &mut String, forced: bool) {
    let current = shared.policy.load_full();
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        // Mid-swap, the file can be missing for a moment; the next event retries.
        Err(e) if !forced && e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => return reload_failed(shared, path, &current, format!("cannot read: {e}")),
    };
    let sha = sha256_hex(&bytes);
    if sha == *last && !forced {
        return;
    }
    last.clone_from(&sha);
    let started = std::time::Instant::now();
    let compiled = tokio::task::spawn_blocking(move || {
        let text = String::from_utf8_lossy(&bytes);
        Policy::from_yaml(&text)
    })
    .await;
    let compile_ms = started.elapsed().as_millis() as u64;
    let compiled = match compiled {
        Ok(Ok(c)) => c,
        Ok(Err(problems)) => {
            for p in &problems {
                tracing::error!(problem = %render(path, p), "policy reload rejected; keeping the last good policy");
            }
            let summary = problems
                .iter()
                .map(|p| render(path, p))
                .collect::<Vec<_>>()
                .join("; ");
            return reload_failed(shared, path, &current, summary);
        }
        Err(e) => return reload_failed(shared, path, &current, format!("compiler panicked: {e}")),
    };
    let changes = diff::diff(&current.policy, &compiled.policy);
    let generation = current.generation + 1;
    let rules = compiled.policy.rule_counts();
    let next = Arc::new(Snapshot {
        policy: compiled.policy,
        generation,
        sha256: sha.clone(),
    });
    shared.policy.store(next.clone());
    shared.metrics.policy_reload(true);
    shared.metrics.set_policy(generation, &rules);
    tracing::info!(generation, sha256 = %sha, compile_ms, changed_clients = changes.len(), "policy reloaded");
    let details = ReloadDetails {
        result: ReloadResult::Ok,
        path: Some(path.display().to_string()),
        sha256: Some(sha),
        rules: Some(rules.iter().map(|(_, n)| n).sum()),
        error: None,
        changes: serde_json::to_value(&changes).ok(),
    };
    shared
        .audit
        .write(&AuditRecord::policy_reload(Some(generation), details));
    if let Some(open) = &shared.open_tunnels {
        let revoked = open.revalidate(&next.policy);
        if revoked > 0 {
            tracing::info!(generation, revoked, "closed tunnels the new policy denies");
        }
    }
}

fn reload_failed(shared: &Shared, path: &Path, current: &Snapshot, error: String) {
    shared.metrics.policy_reload(false);
    let details = ReloadDetails {
        result: ReloadResult::Error,
        path: Some(path.display().to_string()),
        sha256: None,
        rules: None,
        error: Some(error),
        changes: None,
    };
    shared.audit.write(&AuditRecord::policy_reload(
        Some(current.generation),
        details,
    ));
}

/// Open tunnels, so that `--revalidate-on-reload` can re-decide them.
#[derive(Default)]
pub struct OpenTunnels {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, OpenTunnel>>,
}

struct OpenTunnel {
    client: IpAddr,
    host: Host,
    port: u16,
    cancel: CancellationToken,
}

/// Unregisters its tunnel when dropped.
pub struct Registration<'a> {
    set: &'a OpenTunnels,
    id: u64,
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
    pub fn register(
        &self,
        client: IpAddr,
        host: Host,
        port: u16,
        cancel: CancellationToken,
    ) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = OpenTunnel {
            client,
            host,
            port,
            cancel,
        };
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, entry);
        Registration { set: self, id }
    }

    /// Cancels every tunnel `policy` no longer permits; returns how many.
    pub fn revalidate(&self, policy: &Policy) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut revoked = 0;
        for t in open.values() {
            if !policy.decide(t.client, &t.host, t.port).verdict.permits() {
                t.cancel.cancel();
                revoked += 1;
            }
        }
        revoked
    }
}
