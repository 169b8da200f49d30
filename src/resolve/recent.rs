//! Whole answers given recently, kept until the first of their records expires.
//!
//! hickory caches each record type by its TTL, but a cached lookup still
//! builds a query name, asks its cache for A and AAAA (hashing, an LRU touch
//! each) and assembles both answers: about a twentieth of the proxy's CPU per
//! new tunnel to a busy destination. This map answers a repeated name with
//! one hash probe. It holds only complete answers (both families answered,
//! none failed) and never past the earliest expiry hickory reported, so it
//! changes nothing about what a name resolves to, only how fast it is found
//! again. Every dial still checks each address against `ip_guard`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Names kept at most; when full, expired entries are dropped, and a new
/// name is not kept if none had expired (hickory still has it).
pub(super) const MAX_NAMES: usize = 1024;

/// Recent whole answers by name (as the caller spelled it, already normalised).
#[derive(Debug, Default)]
pub(super) struct Recent {
    names: Mutex<HashMap<Box<str>, Entry>>,
}

#[derive(Debug)]
struct Entry {
    addrs: Vec<IpAddr>,
    until: Instant,
}

impl Recent {
    /// The addresses `host` resolved to, if they are still valid at `now`.
    pub(super) fn get(&self, host: &str, now: Instant) -> Option<Vec<IpAddr>> {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let entry = names.get(host)?;
        (now < entry.until).then(|| entry.addrs.clone())
    }

    /// Keeps `addrs` for `host` until `until`.
    pub(super) fn put(&self, host: &str, addrs: &[IpAddr], until: Instant, now: Instant) {
        if until <= now {
            return;
        }
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.len() >= MAX_NAMES && !names.contains_key(host) {
            names.retain(|_, entry| now < entry.until);
            if names.len() >= MAX_NAMES {
                return;
            }
        }
        let entry = Entry {
            addrs: addrs.to_vec(),
            until,
        };
        names.insert(host.into(), entry);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn an_answer_is_kept_until_it_expires() {
        let recent = Recent::default();
        let now = Instant::now();
        recent.put("a.test", &[IP], now + Duration::from_secs(60), now);
        assert_eq!(recent.get("a.test", now), Some(vec![IP]));
        assert_eq!(
            recent.get("a.test", now + Duration::from_secs(59)),
            Some(vec![IP])
        );
        assert_eq!(recent.get("a.test", now + Duration::from_secs(60)), None);
        assert_eq!(recent.get("b.test", now), None);
    }

    #[test]
    fn an_expired_answer_is_not_kept() {
        let recent = Recent::default();
        let now = Instant::now();
        recent.put("a.test", &[IP], now, now);
        assert_eq!(recent.get("a.test", now - Duration::from_secs(1)), None);
    }

    #[test]
    fn a_full_map_makes_room_only_from_expired_names() {
        let recent = Recent::default();
        let now = Instant::now();
        for i in 0..MAX_NAMES {
            let until = now + Duration::from_secs(if i == 0 { 1 } else { 60 });
            recent.put(&format!("n{i}.test"), &[IP], until, now);
        }
        let later = now + Duration::from_secs(2);
        recent.put("new.test", &[IP], later + Duration::from_secs(60), later);
        assert_eq!(
            recent.get("new.test", later),
            Some(vec![IP]),
            "took the expired one's place"
        );
        recent.put("other.test", &[IP], later + Duration::from_secs(60), later);
        assert_eq!(recent.get("other.test", later), None, "no room: not kept");
        assert_eq!(
            recent.get("n1.test", later),
            Some(vec![IP]),
            "nothing valid was evicted"
        );
    }
}
