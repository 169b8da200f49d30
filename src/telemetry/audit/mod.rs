//! The audit log (docs/reference/audit.md): one JSON line per decision, written off the data path.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use super::{Ending, Listener, ReloadResult, RequestId, label_enum};
use crate::policy::{Reason, Verdict};

/// Records queued between the data path and the writer thread before `--audit-overflow` applies.
pub(crate) const DEFAULT_CAPACITY: usize = 16 * 1024;

label_enum! {
    /// What an audit record describes.
    Event {
        /// A CONNECT tunnel or transparent connection, written when it ends.
        Connection => "connection",
        /// One forwarded HTTP request, written when it ends.
        Request => "request",
        /// A policy reload attempt.
        PolicyReload => "policy_reload",
    }
}

/// A wall-clock instant, serialised as RFC 3339 UTC with milliseconds (`2026-11-29T16:47:59.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self(SystemTime::now())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A clock set before 1970 is clamped to the epoch rather than failing the record.
        let t = self.0.max(UNIX_EPOCH);
        write!(f, "{}", humantime::format_rfc3339_millis(t))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Extra keys on `policy_reload` records only; every one is present, `null` when absent.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadDetails {
    /// Whether the new policy was swapped in.
    pub result: ReloadResult,
    /// The policy file that was read.
    pub path: Option<String>,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: Option<String>,
    /// Rules in the new policy.
    pub rules: Option<usize>,
    /// What changed against the previous policy, in whatever shape the reloader chooses.
    pub changes: Option<serde_json::Value>,
}

/// One audit line. Every key is always serialised, `null` when `None`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub ts: Timestamp,
    pub event: Event,
    pub listener: Option<Listener>,
    /// The policy client's name.
    pub client: Option<String>,
    pub client_addr: Option<SocketAddr>,
    pub method: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub sni: Option<String>,
    pub decision: Option<Verdict>,
    pub reason: Option<Reason>,
    /// The rule that decided, as written in the policy.
    pub rule: Option<String>,
    pub upstream_addr: Option<SocketAddr>,
    pub status: Option<u16>,
    pub bytes_egress: Option<u64>,
    pub bytes_ingress: Option<u64>,
    pub duration_ms: Option<u64>,
    pub policy_generation: Option<u64>,
    /// The exchange's unique id, also sent to the client; `null` on `policy_reload`.
    pub request_id: Option<RequestId>,
    /// Which proxy wrote the record (`--instance-id`, the ECS task ARN, or the host name).
    pub instance: Option<Arc<str>>,
    /// SHA-256 of the policy that decided (on `policy_reload`, the one in force afterwards).
    pub policy_sha256: Option<Arc<str>>,
    /// The credential that matched the client (`spiffe://…`, `dns:…`, `cn:…`,
    /// `token:USER`, `vpce-…`); `null` when the source address alone did.
    pub identity: Option<String>,
    /// A short cause of a network or TLS failure; on `policy_reload`, why the file was rejected.
    pub error: Option<String>,
    /// How an admitted exchange ended; `null` for refusals.
    pub end: Option<Ending>,
    /// In report mode, the reason enforce mode would have refused with.
    pub enforce_reason: Option<Reason>,
    /// For refusals, the human cause (also the refusal body).
    pub detail: Option<String>,
    /// Only set by [`AuditRecord::policy_reload`], so the keys above can never be shadowed.
    #[serde(flatten)]
    reload: Option<ReloadDetails>,
}

impl AuditRecord {
    /// A record stamped now with every field absent; fill in what is known.
    pub fn new(event: Event) -> Self {
        Self {
            ts: Timestamp::now(),
            event,
            listener: None,
            client: None,
            client_addr: None,
            method: None,
            host: None,
            port: None,
            sni: None,
            decision: None,
            reason: None,
            rule: None,
            upstream_addr: None,
            status: None,
            bytes_egress: None,
            bytes_ingress: None,
            duration_ms: None,
            policy_generation: None,
            request_id: None,
            instance: None,
            policy_sha256: None,
            identity: None,
            error: None,
            end: None,
            enforce_reason: None,
            detail: None,
            reload: None,
        }
    }

    /// A `policy_reload` record; `generation` and `sha256` are the policy in
    /// force afterwards, `error` why the file was rejected.
    pub fn policy_reload(
        generation: u64,
        sha256: Arc<str>,
        details: ReloadDetails,
        error: Option<String>,
    ) -> Self {
        Self {
            policy_generation: Some(generation),
            policy_sha256: Some(sha256),
            error,
            reload: Some(details),
            ..Self::new(Event::PolicyReload)
        }
    }

    /// The reload details, on `policy_reload` records.
    pub fn reload_details(&self) -> Option<&ReloadDetails> {
        self.reload.as_ref()
    }
}

/// Failure to set up the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot start the audit writer thread: {0}")]
    Spawn(#[source] io::Error),
}

mod writer;

pub(crate) use writer::{AuditCounters, AuditLog, QueueLimit};

#[cfg(test)]
mod tests;
