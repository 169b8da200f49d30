//! The bounded `destination` label: refused traffic is `_denied`; of the hosts the policy let
//! through, the first seen keep their name and later ones are `_other`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::policy::Verdict;

/// Default number of distinct `destination` label values before `_other`.
pub(crate) const DEFAULT_DESTINATION_CAP: usize = 1000;

/// The `destination` label value once the cap is reached.
pub(crate) const OTHER_DESTINATION: &str = "_other";

/// The `destination` label value of every refused exchange, whatever host it named.
pub(crate) const DENIED_DESTINATION: &str = "_denied";

/// The `destination` an exchange is counted under (before the cap): its host when the
/// policy let it through (`allow`, including one whose dial then failed, and `report`);
/// `_denied` for every refusal. A refused host is whatever the client sent, so it must
/// never take a place in the label budget that allowed destinations need.
pub(crate) fn destination_of(verdict: Verdict, host: Option<&str>) -> &str {
    match (verdict, host) {
        (Verdict::Allow | Verdict::Report, Some(host)) => host,
        _ => DENIED_DESTINATION,
    }
}

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
    denied: Arc<str>,
}

impl DestinationCap {
    /// A cap of `max` distinct destinations (`0` labels everything `_other`).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            seen: RwLock::new(HashSet::new()),
            full: AtomicBool::new(max == 0),
            other: Arc::from(OTHER_DESTINATION),
            denied: Arc::from(DENIED_DESTINATION),
        }
    }

    /// The label value for `host`: itself if it is (or now becomes) one of the first `max`
    /// distinct hosts, `_other` otherwise. `_denied` takes no place.
    pub(crate) fn label(&self, host: &str) -> Arc<str> {
        if host == DENIED_DESTINATION {
            return self.denied.clone();
        }
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
    fn only_traffic_the_policy_let_through_is_named() {
        let cases = [
            (
                "allowed",
                Verdict::Allow,
                Some("api.example"),
                "api.example",
            ),
            (
                "reported",
                Verdict::Report,
                Some("new.example"),
                "new.example",
            ),
            (
                "denied",
                Verdict::Deny,
                Some("x.attacker.example"),
                "_denied",
            ),
            (
                "refused before a host was read",
                Verdict::Deny,
                None,
                "_denied",
            ),
            ("allowed without a host", Verdict::Allow, None, "_denied"),
        ];
        for (name, verdict, host, want) in cases {
            assert_eq!(destination_of(verdict, host), want, "{name}");
        }
    }

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

    #[test]
    fn denied_takes_no_place_under_the_cap() {
        let cap = DestinationCap::new(1);
        assert_eq!(&*cap.label(DENIED_DESTINATION), DENIED_DESTINATION);
        assert_eq!(&*cap.label("a.example"), "a.example");
        assert_eq!(&*cap.label(DENIED_DESTINATION), DENIED_DESTINATION);
        assert_eq!(&*cap.label("b.example"), OTHER_DESTINATION);
    }
}
