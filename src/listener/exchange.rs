//! `Exchange`: one connection or request from accept to its audit record, changed only by its transitions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::dial::DialError;
use crate::policy::{CertName, Credentials, Decision, Host, PresentedToken, Reason, Verdict};
use crate::reload::Revocation;
use crate::state::Snapshot;
use crate::telemetry::audit::Event;
use crate::telemetry::exchange::Finished;
use crate::telemetry::{Ending, Listener, RequestId, Telemetry};
use crate::tunnel::{Counters, End, Side};

/// Why the proxy refused an exchange: the reason, the cause in words (the
/// audit `detail` and the refusal body) and, for network and TLS failures,
/// the short `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub reason: Reason,
    /// `None`: the reason's own message says it all.
    pub detail: Option<String>,
    pub error: Option<String>,
}

impl Refusal {
    pub(crate) fn new(reason: Reason, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: Some(detail.into()),
            error: None,
        }
    }

    /// A dial that failed for `host`.
    pub(crate) fn dial(e: &DialError, host: &Host) -> Refusal {
        Refusal {
            reason: e.reason(),
            detail: Some(e.detail(host)),
            error: e.error(),
        }
    }

    /// Also names `error` as the short cause.
    pub(crate) fn with_error(mut self, error: impl Into<String>) -> Refusal {
        self.error = Some(error.into());
        self
    }

    /// The detail, or the reason's message when there is none.
    pub(crate) fn detail(&self) -> &str {
        self.detail.as_deref().unwrap_or(self.reason.message())
    }
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Refusal {
        Refusal {
            reason,
            detail: None,
            error: None,
        }
    }
}

/// One decided connection or request, from accept to its audit record.
/// Dropping one unfinished loses its record: [`Exchange::finish`] consumes it.
#[must_use = "an exchange writes its audit record only when finished"]
#[derive(Debug)]
pub(crate) struct Exchange {
    started: Instant,
    id: RequestId,
    listener: Listener,
    event: Event,
    client_addr: SocketAddr,
    /// Who the client is: its address and the credentials it presented.
    creds: Credentials,
    /// For each credential kind presented (certificate, token, VPC
    /// endpoint): whether it got the caller in, once decided.
    auth: [Option<bool>; 3],
    method: Option<String>,
    /// The destination as normalised, or as received when it did not parse.
    host: Option<String>,
    port: Option<u16>,
    sni: Option<String>,
    decision: Option<Decision>,
    /// Where the exchange ended: the decision's reason, or a later failure.
    reason: Reason,
    generation: Option<u64>,
    policy_sha256: Option<Arc<str>>,
    has_clients: bool,
    upstream: Option<SocketAddr>,
    status: Option<u16>,
    egress: u64,
    ingress: u64,
    /// Admitted by the audit log: its record is owed, never dropped for want of room.
    admitted: bool,
    /// Set when the proxy refused (or cut) the exchange.
    refused: bool,
    detail: Option<String>,
    error: Option<String>,
    end: Option<Ending>,
    /// The policy's `deny_message` for this caller, added to a refusal's body.
    deny_message: Option<Arc<str>>,
}

impl Exchange {
    pub(crate) fn new(listener: Listener, event: Event, client_addr: SocketAddr) -> Exchange {
        Exchange {
            started: Instant::now(),
            id: RequestId::new(),
            listener,
            event,
            client_addr,
            creds: Credentials::from(client_addr.ip()),
            auth: [None; 3],
            method: None,
            host: None,
            port: None,
            sni: None,
            decision: None,
            reason: Reason::BadRequest,
            generation: None,
            policy_sha256: None,
            has_clients: false,
            upstream: None,
            status: None,
            egress: 0,
            ingress: 0,
            admitted: false,
            refused: false,
            detail: None,
            error: None,
            end: None,
            deny_message: None,
        }
    }

    /// The `deny_message` a refusal of this exchange carries: the matched
    /// client's, else the policy's.
    pub(crate) fn deny_message(&self) -> Option<&str> {
        self.deny_message.as_deref()
    }

    /// Takes the policy's top-level `deny_message`, for a refusal before
    /// any decision (the audit log full).
    pub(crate) fn undecided_on(&mut self, snap: &Snapshot) {
        self.deny_message = snap.policy.deny_message_for(None);
    }

    /// Whether the audit log has room for one more exchange; `false`: refuse
    /// it as `audit_unavailable`. Once admitted, the record is always written
    /// (`--audit-overflow refuse`); one never admitted is best effort.
    pub(crate) fn admit(&mut self, telemetry: &Telemetry) -> bool {
        self.admitted = telemetry.audit.admit();
        self.admitted
    }

    /// The exchange's id: the audit `request_id`, sent as `X-Portcullis-Request-Id`.
    pub(crate) fn id(&self) -> RequestId {
        self.id
    }

    /// Records what the connection proved about the client: the names of
    /// its verified certificate and the VPC endpoint it came through.
    pub(crate) fn connection_credentials(
        &mut self,
        certificate: Arc<[CertName]>,
        vpc_endpoint: Option<Arc<str>>,
    ) {
        self.creds.certificate = certificate;
        self.creds.vpc_endpoint = vpc_endpoint;
    }

    /// Records the proxy token the request presented.
    pub(crate) fn presented(&mut self, token: PresentedToken) {
        self.creds.token = Some(token);
    }

    /// Who the client is, as decisions see it.
    pub(crate) fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// The decision, once made.
    pub(crate) fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// The guarded private ranges this exchange may dial: the `allow_private`
    /// of the rule that allowed it, none before a decision.
    pub(crate) fn allow_private(&self) -> &[ipnet::IpNet] {
        self.decision.as_ref().map_or(&[], Decision::allow_private)
    }

    /// Records the VPC endpoint a PROXY protocol header named.
    pub(crate) fn came_through(&mut self, vpc_endpoint: Option<Arc<str>>) {
        self.creds.vpc_endpoint = vpc_endpoint;
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
        self.policy_sha256 = Some(snap.sha256.clone());
        self.has_clients = snap.policy.clients.is_some();
        let decision = snap.policy.decide(&self.creds, host, port);
        self.reason = decision.reason;
        self.deny_message = snap.policy.deny_message_for(decision.client.as_deref());
        if self.has_clients {
            let presented = self.creds.presented();
            for (k, auth) in self.auth.iter_mut().enumerate() {
                *auth = match (presented[k], &decision.client) {
                    (false, _) => None,
                    (true, None) => Some(false),
                    (true, Some(_)) => decision.used[k].then_some(true),
                };
            }
        }
        self.decision.insert(decision)
    }

    /// Records a request too malformed to decide.
    pub(crate) fn bad_request(&mut self, snap: &Snapshot) {
        self.generation = Some(snap.generation);
        self.policy_sha256 = Some(snap.sha256.clone());
        self.has_clients = snap.policy.clients.is_some();
        let decision = snap.policy.bad_request(&self.creds);
        self.deny_message = snap.policy.deny_message_for(decision.client.as_deref());
        self.decision = Some(decision);
        self.reason = Reason::BadRequest;
    }

    /// Records a request refused for a malformed `Proxy-Authorization`
    /// header: a failed token, whatever else the request says.
    pub(crate) fn bad_credentials(&mut self, snap: &Snapshot) {
        self.bad_request(snap);
        self.auth[1] = Some(false);
    }

    /// Records the upstream the exchange was dialed to.
    pub(crate) fn dialed(&mut self, upstream: SocketAddr) {
        self.upstream = Some(upstream);
    }

    /// Records the status the client was answered with.
    pub(crate) fn responded(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// Ends the exchange on a refusal, with the status sent (`None`: no HTTP answer).
    pub(crate) fn refused(&mut self, refusal: impl Into<Refusal>, status: Option<u16>) {
        self.status = status;
        self.cut(refusal.into());
    }

    /// Ends the exchange on a refusal after its status was sent (a tunnel refused mid-handshake).
    fn cut(&mut self, refusal: Refusal) {
        self.reason = refusal.reason;
        self.refused = true;
        self.detail = Some(refusal.detail().to_string());
        self.error = refusal.error;
    }

    /// Records how an admitted exchange ended, and the failure when it was one.
    pub(crate) fn ended(&mut self, end: Ending, error: Option<String>) {
        self.end = Some(end);
        if error.is_some() {
            self.error = error;
        }
    }

    /// Records how a tunnel ended and what it relayed. `revoked_by`: the
    /// reload that cut it, if one did; any other abort is the drain.
    pub(crate) fn tunnel_ended(
        &mut self,
        end: End,
        counters: &Counters,
        revoked_by: Option<Revocation>,
    ) {
        self.relayed(counters.egress(), counters.ingress());
        match (end, revoked_by) {
            (End::Refused(v), _) => {
                let detail = self.handshake_detail(v.reason, v.cause, counters);
                let error = (v.reason == Reason::TlsViolation).then(|| v.cause.to_string());
                self.cut(Refusal {
                    reason: v.reason,
                    detail: Some(detail),
                    error,
                });
            }
            (End::Aborted, Some(by)) => {
                // The record keeps the generation (and digest) that admitted
                // the tunnel; the detail names the one that revoked it.
                self.reason = Reason::PolicyRevoked;
                self.detail = Some(format!(
                    "revoked by generation {} (policy sha256 {})",
                    by.generation, by.sha256
                ));
                self.ended(Ending::PolicyRevoked, None);
            }
            (End::Aborted, None) => self.ended(Ending::Drain, None),
            (End::Idle, _) => self.ended(Ending::IdleTimeout, None),
            (End::Closed(Side::Client), _) => self.ended(Ending::ClientClosed, None),
            (End::Closed(Side::Upstream), _) => self.ended(Ending::UpstreamClosed, None),
            (End::Failed(kind), _) => self.ended(Ending::Error, Some(kind.to_string())),
        }
    }

    /// The detail of a tunnel refused during the TLS handshake.
    fn handshake_detail(&self, reason: Reason, cause: &str, counters: &Counters) -> String {
        match (reason, counters.sni.get(), self.host.as_deref()) {
            (Reason::SniMismatch, Some(sni), Some(host))
                if matches!(self.listener, Listener::Explicit | Listener::ExplicitTls)
                    && sni != host =>
            {
                format!("ClientHello names SNI {sni}, CONNECT named {host}")
            }
            (Reason::SniMismatch, Some(sni), _) => format!("{cause}: {sni}"),
            _ => cause.to_string(),
        }
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
        let enforce_reason = (self.decision.as_ref())
            .filter(|d| d.verdict == Verdict::Report)
            .map(|d| d.reason);
        let (client, rule, identity) = match self.decision {
            Some(d) => (d.client, d.rule, d.identity.map(|i| i.name)),
            None => (None, None, None),
        };
        // A refusal has a detail and no end; an admitted exchange has an end
        // (and, when a reload revoked it, a detail naming that reload).
        let end = if self.refused { None } else { self.end };
        let finished = Finished {
            listener: self.listener,
            event: self.event,
            client_addr: self.client_addr,
            client,
            identity,
            auth: self.auth,
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
            request_id: self.id,
            instance: telemetry.instance.clone(),
            policy_sha256: self.policy_sha256,
            error: self.error,
            end,
            enforce_reason,
            detail: self.detail,
        };
        telemetry.record(finished);
    }
}
