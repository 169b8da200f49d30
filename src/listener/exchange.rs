//! `Exchange`: one connection or request from accept to its audit record, changed only by its transitions.

use std::net::SocketAddr;
use std::time::Instant;

use crate::policy::{Decision, Host, Reason, Verdict};
use crate::state::Snapshot;
use crate::telemetry::audit::Event;
use crate::telemetry::exchange::Finished;
use crate::telemetry::{Listener, Telemetry};
use crate::tunnel::Counters;

/// One decided connection or request, from accept to its audit record.
/// Dropping one unfinished loses its record: [`Exchange::finish`] consumes it.
#[must_use = "an exchange writes its audit record only when finished"]
#[derive(Debug)]
pub(crate) struct Exchange {
    started: Instant,
    listener: Listener,
    event: Event,
    client_addr: SocketAddr,
    method: Option<String>,
    /// The destination as normalised, or as received when it did not parse.
    host: Option<String>,
    port: Option<u16>,
    sni: Option<String>,
    decision: Option<Decision>,
    /// Where the exchange ended: the decision's reason, or a later failure.
    reason: Reason,
    generation: Option<u64>,
    has_clients: bool,
    upstream: Option<SocketAddr>,
    status: Option<u16>,
    egress: u64,
    ingress: u64,
    /// Admitted by the audit log: its record is owed, never dropped for want of room.
    admitted: bool,
}

impl Exchange {
    pub(crate) fn new(listener: Listener, event: Event, client_addr: SocketAddr) -> Exchange {
        Exchange {
            started: Instant::now(),
            listener,
            event,
            client_addr,
            method: None,
            host: None,
            port: None,
            sni: None,
            decision: None,
            reason: Reason::BadRequest,
            generation: None,
            has_clients: false,
            upstream: None,
            status: None,
            egress: 0,
            ingress: 0,
            admitted: false,
        }
    }

    /// Whether the audit log has room for one more exchange; `false`: refuse
    /// it as `audit_unavailable`. Once admitted, the record is always written
    /// (`--audit-overflow refuse`); one never admitted is best effort.
    pub(crate) fn admit(&mut self, telemetry: &Telemetry) -> bool {
        self.admitted = telemetry.audit.admit();
        self.admitted
    }

    /// Records the request method.
    pub(crate) fn requested(&mut self, method: &str) {
        self.method = Some(method.to_string());
    }

    /// Records the destination as received, before it is known to be valid.
    pub(crate) fn target_raw(&mut self, host: &str, port: Option<u16>) {
        const MAX: usize = 512;
        let mut end = host.len().min(MAX);
        while !host.is_char_boundary(end) {
            end -= 1;
        }
        self.host = Some(host[..end].to_string());
        self.port = port;
    }

    /// The destination recorded so far (normalised once decided).
    pub(crate) fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Records the destination port where nothing else names it (the transparent TLS listener).
    pub(crate) fn at_port(&mut self, port: u16) {
        self.port = Some(port);
    }

    /// Records the server name the client's ClientHello named.
    pub(crate) fn saw_sni(&mut self, sni: Option<String>) {
        self.sni = sni;
    }

    /// Decides `host:port` on `snap` and records the outcome.
    pub(crate) fn decide(&mut self, snap: &Snapshot, host: &Host, port: u16) -> &Decision {
        self.host = Some(host.to_string());
        self.port = Some(port);
        self.generation = Some(snap.generation);
        self.has_clients = snap.policy.clients.is_some();
        let decision = snap.policy.decide(self.client_addr.ip(), host, port);
        self.reason = decision.reason;
        self.decision.insert(decision)
    }

    /// Records a request too malformed to decide.
    pub(crate) fn bad_request(&mut self, snap: &Snapshot) {
        self.generation = Some(snap.generation);
        self.has_clients = snap.policy.clients.is_some();
        self.decision = Some(snap.policy.bad_request(self.client_addr.ip()));
        self.reason = Reason::BadRequest;
    }

    /// Records the upstream the exchange was dialed to.
    pub(crate) fn dialed(&mut self, upstream: SocketAddr) {
        self.upstream = Some(upstream);
    }

    /// Records the status the client was answered with.
    pub(crate) fn responded(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// Ends the exchange on `reason`, with the status sent (`None`: no HTTP answer).
    pub(crate) fn refused(&mut self, reason: Reason, status: Option<u16>) {
        self.reason = reason;
        self.status = status;
    }

    /// Records what a tunnel relayed, and `cut`, the reason it was cut
    /// short for (a refused handshake, a revoked destination), if any.
    pub(crate) fn tunnel_ended(&mut self, cut: Option<Reason>, counters: &Counters) {
        if let Some(reason) = cut {
            self.reason = reason;
        }
        self.relayed(counters.egress(), counters.ingress());
    }

    /// Records the bytes relayed each way.
    pub(crate) fn relayed(&mut self, egress: u64, ingress: u64) {
        self.egress = egress;
        self.ingress = ingress;
    }

    /// The verdict as audited: a guard refusal after resolution, or a request
    /// that never reached a decision, is a deny.
    fn verdict(&self) -> Verdict {
        match (&self.decision, self.reason) {
            (
                _,
                Reason::BlockedIp
                | Reason::BadRequest
                | Reason::Overloaded
                | Reason::SniMismatch
                | Reason::EchRefused
                | Reason::NoSni
                | Reason::PolicyRevoked
                | Reason::TlsViolation,
            ) => Verdict::Deny,
            (Some(d), _) => d.verdict,
            (None, _) => Verdict::Deny,
        }
    }

    /// Writes the audit record and counts the exchange.
    pub(crate) fn finish(self, telemetry: &Telemetry) {
        let verdict = self.verdict();
        let (client, rule) = match self.decision {
            Some(d) => (d.client, d.rule),
            None => (None, None),
        };
        let finished = Finished {
            listener: self.listener,
            event: self.event,
            client_addr: self.client_addr,
            client,
            has_clients: self.has_clients,
            method: self.method,
            host: self.host,
            port: self.port,
            sni: self.sni,
            verdict,
            reason: self.reason,
            rule,
            upstream: self.upstream,
            status: self.status,
            egress: self.egress,
            ingress: self.ingress,
            duration: self.started.elapsed(),
            generation: self.generation,
            admitted: self.admitted,
        };
        telemetry.record(finished);
    }
}
