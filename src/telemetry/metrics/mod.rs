//! Prometheus metrics: one registry, handles made up front, bounded labels; the standard
//! `process_*` metrics beside it.

mod format;
mod policy;
mod process;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::audit::AuditCounters;
use super::diag::DiagStats;
use super::{Listener, ReloadResult, label_enum};
use crate::listener::proxy_protocol::HeaderProblem;
use crate::policy::{Reason, Verdict};
use crate::state::Snapshot;

pub(crate) use super::destination::{DEFAULT_DESTINATION_CAP, DestinationCap};
pub(crate) use format::Format;
use policy::PolicyCollector;
pub(crate) use policy::{LastReload, LivePolicy, PolicyMode, PolicyStatus};
use process::ProcessCollector;

/// Latency buckets in seconds, 1 ms to 10 s, shared by the DNS and connect histograms.
const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

label_enum! {
    /// Direction of tunnelled bytes, seen from the client.
    Direction {
        /// Client to upstream.
        Egress => "egress",
        /// Upstream to client.
        Ingress => "ingress",
    }
}

label_enum! {
    /// Outcome of one name lookup, for `dns_lookup_seconds`.
    DnsResult {
        /// At least one address.
        Ok => "ok",
        /// The name does not exist.
        NxDomain => "nxdomain",
        /// The name exists but has no A or AAAA records.
        NoAddresses => "no_addresses",
        /// SERVFAIL, timeout, or any other failure.
        Error => "error",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: Listener,
    client: Arc<str>,
    decision: Verdict,
    reason: Reason,
    destination: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelLabels {
    client: Arc<str>,
    destination: Arc<str>,
    direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: Listener,
}

label_enum! {
    /// How one upstream dial ended, for `upstream_connect_seconds`.
    ConnectResult {
        /// An address accepted the connection.
        Ok => "ok",
        /// Every address refused the connection.
        Refused => "refused",
        /// No address accepted within `--connect-timeout`.
        Timeout => "timeout",
        /// Anything else: unreachable, out of file descriptors, ...
        Error => "error",
    }
}

label_enum! {
    /// The credential a client authenticated with, for `client_auth_total`.
    AuthMethod {
        /// A client certificate on `--listen-tls`.
        Certificate => "certificate",
        /// A proxy token in `Proxy-Authorization`.
        Token => "token",
        /// A VPC endpoint id from a PROXY protocol v2 header.
        VpcEndpoint => "vpc_endpoint",
    }
}

impl From<crate::policy::Credential> for AuthMethod {
    fn from(c: crate::policy::Credential) -> Self {
        match c {
            crate::policy::Credential::Certificate => AuthMethod::Certificate,
            crate::policy::Credential::Token => AuthMethod::Token,
            crate::policy::Credential::VpcEndpoint => AuthMethod::VpcEndpoint,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    method: AuthMethod,
    result: AuthResult,
}

label_enum! {
    /// Whether a credential got its caller in.
    AuthResult {
        /// It matched the client that decided.
        Ok => "ok",
        /// Rejected: a failed TLS handshake, a malformed header, or no client matched.
        Failed => "failed",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectLabels {
    destination: Arc<str>,
    result: ConnectResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    result: DnsResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyProtocolLabels {
    reason: HeaderProblem,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    client: Arc<str>,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every portcullis metric, registered once under the `portcullis_` prefix, and the
/// process metrics under their standard names.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `process_*`: every client library exports these without its application's prefix.
    process: Registry,
    destinations: DestinationCap,
    max_connections: Gauge,
    requests: Family<RequestLabels, Counter>,
    tunnel_bytes: Family<TunnelLabels, Counter>,
    active_connections: Family<ListenerLabels, Gauge>,
    upstream_connect: HistogramFamily<ConnectLabels>,
    dns_lookup: HistogramFamily<DnsLabels>,
    policy_reloads: Family<ReloadLabels, Counter>,
    policy_generation: Gauge,
    policy_rules: Family<ClientLabels, Gauge>,
    policy_expired_rules: Gauge,
    proxy_protocol_errors: Family<ProxyProtocolLabels, Counter>,
    client_auth: Family<AuthLabels, Counter>,
    /// The policy in force and the last reload, for `policy_info`, the last-reload gauges and `/status`.
    policy: Arc<PolicyStatus>,
    audit: AuditCounters,
}

/// `log_lines_dropped_total`, read from the diagnostic writer's counters at scrape time.
#[derive(Debug)]
struct LogLinesDropped(DiagStats);

impl Collector for LogLinesDropped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let counter = ConstCounter::new(self.0.dropped());
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Diagnostic lines lost because stderr did not keep up",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

impl Metrics {
    /// Registers every metric; `destination_cap` bounds the `destination` label.
    pub fn new(destination_cap: usize) -> Self {
        let mut process = Registry::with_prefix("process");
        process.register_collector(Box::new(ProcessCollector::new()));
        let mut metrics = Self {
            registry: Registry::with_prefix("portcullis"),
            process,
            destinations: DestinationCap::new(destination_cap),
            max_connections: Gauge::default(),
            requests: Family::default(),
            tunnel_bytes: Family::default(),
            active_connections: Family::default(),
            upstream_connect: Family::new_with_constructor(latency_histogram),
            dns_lookup: Family::new_with_constructor(latency_histogram),
            policy_reloads: Family::default(),
            policy_generation: Gauge::default(),
            policy_rules: Family::default(),
            policy_expired_rules: Gauge::default(),
            proxy_protocol_errors: Family::default(),
            client_auth: Family::default(),
            policy: Arc::default(),
            audit: AuditCounters::default(),
        };
        // In this order on `/metrics`.
        metrics.register_build();
        metrics.register_traffic();
        metrics.register_policy();
        metrics.register_audit();
        metrics.zero_known_labels();
        metrics
    }

    /// What was built and how it was started.
    fn register_build(&mut self) {
        let build = Family::<BuildLabels, Gauge>::default();
        let version = env!("CARGO_PKG_VERSION").to_string();
        build.get_or_create(&BuildLabels { version }).set(1);
        let registry = &mut self.registry;
        registry.register(
            "build_info",
            "The portcullis version running, as the label `version` (always 1)",
            build,
        );
        registry.register(
            "max_connections",
            "Client connections the proxy admits at once: --max-connections, lowered to fit the open-files limit",
            self.max_connections.clone(),
        );
    }

    /// What the data path counts. Counters get their `_total` suffix from the encoder.
    fn register_traffic(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "requests",
            "Decided connections and requests",
            self.requests.clone(),
        );
        registry.register(
            "tunnel_bytes",
            "Bytes relayed through tunnels and forwarded requests",
            self.tunnel_bytes.clone(),
        );
        registry.register(
            "active_connections",
            "Client connections currently open",
            self.active_connections.clone(),
        );
        registry.register_with_unit(
            "upstream_connect",
            "Time spent dialing the upstream, by how the dial ended",
            Unit::Seconds,
            self.upstream_connect.clone(),
        );
        registry.register_with_unit(
            "dns_lookup",
            "Time to resolve a destination name",
            Unit::Seconds,
            self.dns_lookup.clone(),
        );
        registry.register(
            "proxy_protocol_errors",
            "Connections closed for their PROXY protocol header (--proxy-protocol), by what was wrong",
            self.proxy_protocol_errors.clone(),
        );
        registry.register(
            "client_auth",
            "Client credentials checked, by method and result",
            self.client_auth.clone(),
        );
    }

    /// The policy in force and its reloads.
    fn register_policy(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "policy_reloads",
            "Policy reload attempts",
            self.policy_reloads.clone(),
        );
        registry.register(
            "policy_generation",
            "Generation of the policy in force",
            self.policy_generation.clone(),
        );
        registry.register(
            "policy_rules",
            "Allow rules in force per client",
            self.policy_rules.clone(),
        );
        registry.register(
            "policy_expired_rules",
            "Rules in force whose expires day has passed",
            self.policy_expired_rules.clone(),
        );
        registry.register_collector(Box::new(PolicyCollector(self.policy.clone())));
    }

    /// The audit log's losses and backlog.
    fn register_audit(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "audit_records_dropped",
            "Audit records lost: queue full, write errors, or abandoned at exit",
            self.audit.dropped.clone(),
        );
        registry.register(
            "audit_queue_records",
            "Audit records waiting for the writer",
            self.audit.queued.clone(),
        );
    }

    /// Known label sets start at zero so rate() and absent() work before the first event.
    fn zero_known_labels(&self) {
        for result in [
            ReloadResult::Ok,
            ReloadResult::Error,
            ReloadResult::Unchanged,
        ] {
            drop(self.policy_reloads.get_or_create(&ReloadLabels { result }));
        }
        for method in [
            AuthMethod::Certificate,
            AuthMethod::Token,
            AuthMethod::VpcEndpoint,
        ] {
            for result in [AuthResult::Ok, AuthResult::Failed] {
                drop(
                    self.client_auth
                        .get_or_create(&AuthLabels { method, result }),
                );
            }
        }
        for listener in [
            Listener::Explicit,
            Listener::ExplicitTls,
            Listener::TransparentTls,
            Listener::TransparentHttp,
        ] {
            drop(
                self.active_connections
                    .get_or_create(&ListenerLabels { listener }),
            );
        }
        for reason in HeaderProblem::ALL {
            drop(
                self.proxy_protocol_errors
                    .get_or_create(&ProxyProtocolLabels { reason }),
            );
        }
    }

    /// Counts a connection closed for its PROXY protocol header.
    pub(crate) fn proxy_protocol_error(&self, reason: HeaderProblem) {
        let labels = ProxyProtocolLabels { reason };
        self.proxy_protocol_errors.get_or_create(&labels).inc();
    }

    /// Counts one credential checked: `ok` when it got its caller in.
    pub fn client_auth(&self, method: impl Into<AuthMethod>, ok: bool) {
        let result = if ok {
            AuthResult::Ok
        } else {
            AuthResult::Failed
        };
        let method = method.into();
        self.client_auth
            .get_or_create(&AuthLabels { method, result })
            .inc();
    }

    /// Publishes the effective connection limit.
    pub fn set_max_connections(&self, max: usize) {
        self.max_connections
            .set(i64::try_from(max).unwrap_or(i64::MAX));
    }

    /// Exports the diagnostic log's losses as `log_lines_dropped_total`.
    pub fn with_diagnostics(mut self, stats: DiagStats) -> Self {
        self.registry
            .register_collector(Box::new(LogLinesDropped(stats)));
        self
    }

    /// The policy in force and the last reload, as `/status` reports them.
    pub(crate) fn policy_status(&self) -> &PolicyStatus {
        &self.policy
    }

    /// The audit log's counters, registered here.
    pub fn audit_counters(&self) -> AuditCounters {
        self.audit.clone()
    }

    /// The capped `destination` label for `host` (what the other methods record).
    pub fn destination_label(&self, host: &str) -> Arc<str> {
        self.destinations.label(host)
    }

    /// Counts one decided connection or request. `destination` is the normalised host
    /// of traffic the policy let through, or `_denied`; capped here.
    pub fn request(
        &self,
        listener: Listener,
        client: &str,
        decision: Verdict,
        reason: Reason,
        destination: &str,
    ) {
        let labels = RequestLabels {
            listener,
            client: Arc::from(client),
            decision,
            reason,
            destination: self.destinations.label(destination),
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// Adds the bytes one tunnel or forwarded exchange relayed in each direction.
    pub fn tunnel_bytes(&self, client: &str, destination: &str, egress: u64, ingress: u64) {
        let client: Arc<str> = Arc::from(client);
        let destination = self.destinations.label(destination);
        for (direction, bytes) in [(Direction::Egress, egress), (Direction::Ingress, ingress)] {
            let labels = TunnelLabels {
                client: client.clone(),
                destination: destination.clone(),
                direction,
            };
            self.tunnel_bytes.get_or_create(&labels).inc_by(bytes);
        }
    }

    /// Counts an open client connection until the returned guard is dropped.
    #[must_use = "the connection is counted only while the guard lives"]
    pub fn connection_opened(&self, listener: Listener) -> ActiveGuard {
        let gauge = self
            .active_connections
            .get_or_create_owned(&ListenerLabels { listener });
        gauge.inc();
        ActiveGuard { gauge }
    }

    /// Records how long dialing `destination` took, and how it ended.
    pub fn upstream_connect(&self, destination: &str, result: ConnectResult, elapsed: Duration) {
        let labels = ConnectLabels {
            destination: self.destinations.label(destination),
            result,
        };
        self.upstream_connect
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Records how long a name lookup took and how it ended.
    pub fn dns_lookup(&self, result: DnsResult, elapsed: Duration) {
        self.dns_lookup
            .get_or_create(&DnsLabels { result })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one reload attempt and keeps how it ended; `error` says why it failed.
    pub fn policy_reload(&self, result: ReloadResult, error: Option<&str>) {
        self.policy_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
        self.policy
            .attempted(result, error.map(str::to_string), SystemTime::now());
    }

    /// Publishes the policy now in force (at start, and after each reload that loaded
    /// one): its generation, SHA-256, mode, and the rule count per client. Clients the
    /// previous policy had and this one lacks disappear from `policy_rules`.
    /// `expired` is the number of its rules whose `expires` day has passed.
    /// Sets `portcullis_policy_expired_rules` as the days pass.
    pub(crate) fn expired_rules(&self, expired: usize) {
        self.policy_expired_rules
            .set(i64::try_from(expired).unwrap_or(i64::MAX));
    }

    pub(crate) fn policy_loaded(&self, snap: &Snapshot, expired: usize) {
        self.policy_expired_rules
            .set(i64::try_from(expired).unwrap_or(i64::MAX));
        self.policy.went_live(snap, SystemTime::now());
        self.policy_generation
            .set(i64::try_from(snap.generation).unwrap_or(i64::MAX));
        // A scrape racing this swap may briefly see no series; it never sees stale clients.
        self.policy_rules.clear();
        for (client, rules) in &snap.policy.rule_counts() {
            let labels = ClientLabels {
                client: Arc::from(client.as_str()),
            };
            self.policy_rules
                .get_or_create(&labels)
                .set(i64::try_from(*rules).unwrap_or(i64::MAX));
        }
    }

    /// Every metric in OpenMetrics text format.
    pub fn encode(&self) -> String {
        self.encode_as(Format::OpenMetrics)
    }

    /// Every metric in `format` (serve with [`Format::content_type`]).
    pub fn encode_as(&self, format: Format) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, and every label value here encodes infallibly.
        let encoded = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process))
            .and_then(|()| encode_eof(&mut out));
        if let Err(error) = encoded {
            tracing::error!(%error, "encoding metrics failed");
        }
        match format {
            Format::OpenMetrics => out,
            Format::Text => format::to_text(&out),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(DEFAULT_DESTINATION_CAP)
    }
}

/// Keeps one connection counted in `active_connections`; decrements on drop.
#[derive(Debug)]
pub struct ActiveGuard {
    gauge: Gauge,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests;
