//! What connections share, split by concern: admission, lifecycle, the policy store.
//!
//! The dialer ([`crate::dial::Dialer`]) and telemetry ([`crate::telemetry::Telemetry`])
//! are the other parts; [`Shared`] holds them all, and each function takes only the parts it uses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dial::Dialer;
use crate::limits::Limits;
use crate::policy::Policy;
use crate::reload::OpenTunnels;
use crate::telemetry::metrics::{ActiveGuard, Metrics};
use crate::telemetry::{Listener, Telemetry};

/// A compiled policy and the generation number it was loaded as.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub policy: Policy,
    pub generation: u64,
    /// SHA-256 of the file it was compiled from, hex.
    pub sha256: Arc<str>,
}

/// Every part, for the tasks that own a connection. Functions take the part they use.
pub(crate) struct Shared {
    pub admission: Admission,
    pub lifecycle: Lifecycle,
    pub dialer: Dialer,
    /// Each connection loads a snapshot once and keeps it to its end.
    pub policy: PolicyStore,
    pub telemetry: Telemetry,
    pub limits: Limits,
}

impl Shared {
    pub(crate) fn new(
        snapshot: Snapshot,
        dialer: Dialer,
        telemetry: Telemetry,
        limits: Limits,
        revalidate_on_reload: bool,
    ) -> Shared {
        let lifecycle = Lifecycle::default();
        let policy = PolicyStore::new(snapshot, revalidate_on_reload);
        Shared {
            admission: Admission::new(
                limits.max_connections,
                limits.max_connections_per_client,
                telemetry.metrics.clone(),
            ),
            lifecycle,
            dialer,
            policy,
            telemetry,
            limits,
        }
    }
}

/// The policy in force, swapped whole by a reload, and the tunnels a reload may revoke.
pub(crate) struct PolicyStore {
    current: ArcSwap<Snapshot>,
    /// Present with `--revalidate-on-reload`.
    pub open_tunnels: Option<Arc<OpenTunnels>>,
}

impl PolicyStore {
    pub(crate) fn new(snapshot: Snapshot, revalidate_on_reload: bool) -> PolicyStore {
        PolicyStore {
            current: ArcSwap::from_pointee(snapshot),
            open_tunnels: revalidate_on_reload.then(Arc::default),
        }
    }

    /// The snapshot in force, for a look that ends before the next await.
    pub(crate) fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The snapshot in force, kept by a connection to its end.
    pub(crate) fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Puts `next` in force for every later decision.
    pub(crate) fn store(&self, next: Arc<Snapshot>) {
        self.current.store(next);
    }
}

/// Start, drain and abort: which tasks are running, and whether to stop them.
#[derive(Clone, Default)]
pub(crate) struct Lifecycle {
    /// Every connection, request and tunnel task, so that a drain can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled on SIGTERM: stop accepting, finish in-flight requests.
    pub draining: CancellationToken,
    /// Cancelled when the drain timeout expires: cut what is still open.
    pub abort: CancellationToken,
    ready: Arc<AtomicBool>,
}

impl Lifecycle {
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Policy loaded, listeners bound, and not draining.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.is_cancelled()
    }
}

/// Who gets a connection slot: `--max-connections` in all, and
/// `--max-connections-per-client` per source address.
pub(crate) struct Admission {
    permits: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// 0 for no limit.
    per_client: usize,
    /// Counts the open connections (`active_connections`).
    metrics: Arc<Metrics>,
}

/// Held for as long as a client connection (and any tunnel it became) is open.
pub(crate) struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    _active: ActiveGuard,
    _source: Option<SourceSlot>,
}

/// A connection counted against `--max-connections` (and open), not yet
/// against its source address.
pub(crate) struct Permit {
    permit: OwnedSemaphorePermit,
    active: ActiveGuard,
}

/// One connection counted against its source address.
struct SourceSlot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(
        max_connections: usize,
        per_client: usize,
        metrics: Arc<Metrics>,
    ) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(max_connections)),
            per_source: Arc::default(),
            per_client,
            metrics,
        }
    }

    /// A place among the `--max-connections`, for a connection whose source
    /// is not known yet (its PROXY protocol header is still to be read), or
    /// `None` when they are all open.
    pub(crate) fn try_permit(&self, listener: Listener) -> Option<Permit> {
        Some(Permit {
            permit: self.permits.clone().try_acquire_owned().ok()?,
            active: self.metrics.connection_opened(listener),
        })
    }

    /// The slot of a connection holding `permit`, or `None` when `source`
    /// already holds `--max-connections-per-client`.
    pub(crate) fn try_source(&self, permit: Permit, source: IpAddr) -> Option<ConnSlot> {
        let per_client = self.per_client;
        let source = if per_client == 0 {
            None
        } else {
            let ip = source.to_canonical();
            let mut counts = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
            let n = counts.entry(ip).or_insert(0);
            if *n >= per_client {
                return None;
            }
            *n += 1;
            Some(SourceSlot {
                ip,
                counts: self.per_source.clone(),
            })
        };
        Some(ConnSlot {
            _permit: permit.permit,
            _active: permit.active,
            _source: source,
        })
    }
}
