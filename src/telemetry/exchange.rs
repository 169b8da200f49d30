//! A finished exchange as telemetry sees it: the one metrics count and the one audit record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::audit::{AuditLog, AuditRecord, Event};
use super::destination::destination_of;
use super::metrics::Metrics;
use super::{DEFAULT_CLIENT, Ending, Listener, RequestId, UNKNOWN_CLIENT};
use crate::policy::{Credential, Reason, Verdict};

/// Everything an exchange recorded, once it is over.
#[derive(Debug)]
pub struct Finished {
    pub listener: Listener,
    pub event: Event,
    pub client_addr: SocketAddr,
    /// The `clients` entry the source matched, when the policy named one.
    pub client: Option<Arc<str>>,
    /// The credential that matched the client (the audit `identity`).
    pub identity: Option<String>,
    /// For the certificate, the token and the VPC endpoint, when presented:
    /// whether it got the caller in (`client_auth_total`).
    pub auth: [Option<bool>; 3],
    /// Whether the deciding policy has a `clients` section: an unmatched
    /// source is then `_unknown`, not `default`.
    pub has_clients: bool,
    pub method: Option<String>,
    /// The destination as normalised, or as received when it did not parse.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub sni: Option<String>,
    /// The verdict as audited (a later refusal is a deny).
    pub verdict: Verdict,
    pub reason: Reason,
    pub rule: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub status: Option<u16>,
    pub egress: u64,
    pub ingress: u64,
    pub duration: Duration,
    pub generation: Option<u64>,
    /// Admitted by the audit log: the record is owed (see [`AuditLog::write`]).
    pub admitted: bool,
    pub request_id: RequestId,
    /// Which proxy this is.
    pub instance: Arc<str>,
    /// SHA-256 of the deciding policy.
    pub policy_sha256: Option<Arc<str>>,
    /// A short cause of a network or TLS failure.
    pub error: Option<String>,
    /// How an admitted exchange ended.
    pub end: Option<Ending>,
    /// In report mode, the reason enforce would have refused with.
    pub enforce_reason: Option<Reason>,
    /// For refusals, the human cause.
    pub detail: Option<String>,
}

impl Finished {
    /// Counts the exchange, then writes its audit record (best effort when
    /// the exchange was never admitted).
    pub fn record(self, metrics: &Metrics, audit: &AuditLog) {
        self.count(metrics);
        let admitted = self.admitted;
        let record = AuditRecord::from(self);
        if admitted {
            audit.write(&record);
        } else {
            audit.offer(&record);
        }
    }

    /// The `client` label: the matched entry, else `_unknown` or `default`.
    fn client_label(&self) -> &str {
        match self.client.as_deref() {
            Some(name) => name,
            None if self.has_clients => UNKNOWN_CLIENT,
            None => DEFAULT_CLIENT,
        }
    }

    /// The `destination` label: the host only for traffic the policy let through.
    fn destination(&self) -> &str {
        destination_of(self.verdict, self.host.as_deref())
    }

    fn count(&self, metrics: &Metrics) {
        let client = self.client_label().to_string();
        let destination = self.destination();
        metrics.request(
            self.listener,
            &client,
            self.verdict,
            self.reason,
            destination,
        );
        let kinds = [
            Credential::Certificate,
            Credential::Token,
            Credential::VpcEndpoint,
        ];
        for (kind, ok) in kinds.into_iter().zip(self.auth) {
            if let Some(ok) = ok {
                metrics.client_auth(kind, ok);
            }
        }
        if self.egress > 0 || self.ingress > 0 {
            metrics.tunnel_bytes(&client, destination, self.egress, self.ingress);
        }
    }
}

impl From<Finished> for AuditRecord {
    fn from(f: Finished) -> Self {
        let mut rec = AuditRecord::new(f.event);
        rec.listener = Some(f.listener);
        rec.client = f.client.as_deref().map(str::to_string);
        rec.client_addr = Some(f.client_addr);
        rec.identity = f.identity;
        rec.method = f.method;
        rec.host = f.host;
        rec.port = f.port;
        rec.sni = f.sni;
        rec.decision = Some(f.verdict);
        rec.reason = Some(f.reason);
        rec.rule = f.rule.as_deref().map(str::to_string);
        rec.upstream_addr = f.upstream;
        rec.status = f.status;
        rec.bytes_egress = Some(f.egress);
        rec.bytes_ingress = Some(f.ingress);
        rec.duration_ms = Some(f.duration.as_millis() as u64);
        rec.policy_generation = f.generation;
        rec.request_id = Some(f.request_id);
        rec.instance = Some(f.instance);
        rec.policy_sha256 = f.policy_sha256;
        rec.error = f.error;
        rec.end = f.end;
        rec.enforce_reason = f.enforce_reason;
        rec.detail = f.detail;
        rec
    }
}
