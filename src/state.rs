//! What every connection shares: the current policy snapshot, resolver, telemetry and limits.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::policy::Policy;
use crate::reload::OpenTunnels;
use crate::resolve::Resolver;
use crate::telemetry::Listener;
use crate::telemetry::audit::AuditLog;
use crate::telemetry::metrics::{ActiveGuard, Metrics};

/// A compiled policy and the generation number it was loaded as.
#[derive(Debug)]
pub struct Snapshot {
    pub policy: Policy,
    pub generation: u64,
    /// SHA-256 of the file it was compiled from.
    pub sha256: String,
}

/// Timeouts and limits from the command line.
#[derive(Clone, Debug)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// Open connections one source address may hold; 0 for no limit.
    pub max_connections_per_client: usize,
}

/// Largest request head (request line and headers) the explicit listener reads.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

pub struct Shared {
    /// Each connection loads this once and keeps the snapshot to its end.
    pub policy: ArcSwap<Snapshot>,
    pub resolver: Resolver,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<AuditLog>,
    pub limits: Limits,
    /// The proxy's own listening addresses, never dialed.
    pub own_addrs: Vec<SocketAddr>,
    permits: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Every connection, request and tunnel task, so that a drain can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled on SIGTERM: stop accepting, finish in-flight requests.
    pub draining: CancellationToken,
    /// Cancelled when the drain timeout expires: cut what is still open.
    pub abort: CancellationToken,
    /// Present with `--revalidate-on-reload`.
    pub open_tunnels: Option<OpenTunnels>,
    ready: AtomicBool,
}

/// Held for as long as a client connection (and any tunnel it became) is open.
pub struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    _active: ActiveGuard,
    _source: Option<SourceSlot>,
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

impl Shared {
    pub fn new(
        snapshot: Snapshot,
        resolver: Resolver,
        metrics: Arc<Metrics>,
        audit: Arc<AuditLog>,
        limits: Limits,
        own_addrs: Vec<SocketAddr>,
        revalidate_on_reload: bool,
    ) -> Shared {
        Shared {
            policy: ArcSwap::from_pointee(snapshot),
            resolver,
            metrics,
            audit,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_source: Arc::default(),
            limits,
            own_addrs,
            tracker: TaskTracker::new(),
            draining: CancellationToken::new(),
            abort: CancellationToken::new(),
            open_tunnels: revalidate_on_reload.then(OpenTunnels::default),
            ready: AtomicBool::new(false),
        }
    }

    /// A connection slot, or `None` when `--max-connections` are open, or
    /// `source` already holds `--max-connections-per-client`.
    pub fn try_slot(&self, listener: Listener, source: IpAddr) -> Option<ConnSlot> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let per_client = self.limits.max_connections_per_client;
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
            _permit: permit,
            _active: self.metrics.connection_opened(listener),
            _source: source,
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Policy loaded, listeners bound, and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.is_cancelled()
    }

    /// Whether dialing `addr` would reach one of the proxy's own listeners
    /// (see [`crate::dial::is_own`]).
    pub fn is_own_addr(&self, addr: SocketAddr) -> bool {
        crate::dial::is_own(&self.own_addrs, addr, crate::dial::is_local)
    }
}
