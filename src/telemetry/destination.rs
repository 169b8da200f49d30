//! The bounded `destination` label: the first hosts seen keep their name, later ones are `_other`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Default number of distinct `destination` label values before `_other`.
pub(crate) const DEFAULT_DESTINATION_CAP: usize = 1000;

/// The `destination` label value once the cap is reached.
pub(crate) const OTHER_DESTINATION: &str = "_other";

/// The `destination` label value of a request too malformed to name one.
pub(crate) const INVALID_DESTINATION: &str = "_invalid";

/// Longest host kept as a label value: a valid DNS name is at most 253 bytes, so anything
/// longer is junk from a client and must not be stored.
const MAX_HOST_LEN: usize = 253;

/// Bounds the `destination` label: the first `max` distinct hosts ever seen keep their name,
/// every later one is `_other`. Hosts are attacker-chosen, so memory is bounded too
/// (at most `max` names of at most 253 bytes each).
#[derive(Debug)]
pub(crate) struct DestinationCap {
    max: usize,
    seen: RwLock<HashSet<Arc<str>>>,
    /// Set once `seen` is full, so unseen hosts skip the write lock from then on.
    full: AtomicBool,
    other: Arc<str>,
}

impl DestinationCap {
    /// A cap of `max` distinct destinations (`0` labels everything `_other`).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            seen: RwLock::new(HashSet::new()),
            full: AtomicBool::new(max == 0),
            other: Arc::from(OTHER_DESTINATION),
        }
    }

    /// The label value for `host`: itself if it is (or now becomes) one of the first `max`
    /// distinct hosts, `_other` otherwise.
    pub(crate) fn label(&self, host: &str) -> Arc<str> {
        if host.len() > MAX_HOST_LEN {
            return self.other.clone();
        }
        // A poisoned lock only means another thread panicked mid-insert; the set is still valid.
        if let Some(known) = self
            .seen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(host)
        {
            return known.clone();
        }
        if self.full.load(Ordering::Relaxed) {
            return self.other.clone();
        }
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = seen.get(host) {
            return known.clone();
        }
        if seen.len() >= self.max {
            self.full.store(true, Ordering::Relaxed);
            return self.other.clone();
        }
        let label: Arc<str> = Arc::from(host);
        seen.insert(label.clone());
        label
    }
}

impl Default for DestinationCap {
    fn default() -> Self {
        Self::new(DEFAULT_DESTINATION_CAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_first_hosts_and_is_thread_safe() {
        let cap = Arc::new(DestinationCap::new(50));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cap = Arc::clone(&cap);
                std::thread::spawn(move || {
                    (0..200)
                        .map(|i| cap.label(&format!("{}.example", (i * 7 + t) % 120)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut named = HashSet::new();
        for thread in threads {
            let labels = thread.join().expect("worker thread");
            named.extend(labels.into_iter().filter(|l| &**l != OTHER_DESTINATION));
        }
        assert_eq!(named.len(), 50);
        // Once admitted, a host keeps its own label.
        for host in &named {
            assert_eq!(cap.label(host), *host);
        }
        assert_eq!(
            &*DestinationCap::new(0).label("a.example"),
            OTHER_DESTINATION
        );
    }
}
