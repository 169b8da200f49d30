//! Destination name resolution: hickory-resolver with TTL caching, A and AAAA side by side.
//!
//! The proxy resolves every name itself and dials only what it resolved; [`filter`] then
//! splits the answers into what `ip_guard` lets it dial and what it must not.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as WireError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RecordType};
use tokio::sync::Semaphore;

use crate::telemetry::metrics::{DnsResult, Metrics};

mod recent;
use recent::Recent;

/// Per-try timeout; a dead server costs [`TRIES`] of these, not resolv.conf's 5 s each.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Tries per query in all (hickory counts retries after the first).
const TRIES: usize = 2;

/// Lookups in flight at once unless [`Resolver::with_max_lookups`] says otherwise.
pub(crate) const DEFAULT_MAX_LOOKUPS: usize = 256;

/// Descriptors one lookup may hold while it is pending: A and AAAA go side by
/// side, and each may ask two nameservers at once (hickory's default
/// concurrency) over UDP, or over TCP after a truncated answer.
pub(crate) const FDS_PER_LOOKUP: usize = 4;

/// How long a lookup waits for a free slot before it fails as `dns_error`:
/// as long as a lookup may take, so a slot frees up unless the resolver is
/// flooded.
const QUEUE_WAIT: Duration = Duration::from_secs(TIMEOUT.as_secs() * TRIES as u64);

/// The resolver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ResolveInitError {
    #[error("cannot read the system DNS configuration (/etc/resolv.conf): {0}")]
    SystemConfig(#[source] NetError),
    #[error("cannot build the DNS resolver: {0}")]
    Build(#[source] NetError),
}

/// Why a name gave no address. Every variant is the `dns_error` reason for the client
/// except `InvalidName`, which callers should have refused earlier as `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DnsError {
    #[error("{0:?} is not a valid DNS name")]
    InvalidName(String),
    #[error("the name does not exist (NXDOMAIN)")]
    NxDomain,
    #[error("the name has no A or AAAA records")]
    NoAddresses,
    #[error("lookup failed: {0}")]
    Failed(LookupFailure),
    #[error("too many lookups in flight")]
    Busy,
}

/// Why one query failed, kept as data so the audit log can spell it
/// (`SERVFAIL`, `timeout`) without parsing an error message back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LookupFailure {
    /// The server answered with this error code.
    Code(ResponseCode),
    /// No answer within the resolver's tries.
    Timeout,
    /// Anything else, such as a local error (out of descriptors).
    Other(String),
}

impl LookupFailure {
    fn of(error: NetError) -> LookupFailure {
        match error {
            NetError::Timeout => LookupFailure::Timeout,
            NetError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => LookupFailure::Timeout,
            NetError::Dns(WireError::ResponseCode(code)) => LookupFailure::Code(code),
            other => LookupFailure::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for LookupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The mnemonics of RFC 1035 and dig, not hickory's prose.
            LookupFailure::Code(code) => match code {
                ResponseCode::FormErr => f.write_str("FORMERR"),
                ResponseCode::ServFail => f.write_str("SERVFAIL"),
                ResponseCode::NXDomain => f.write_str("NXDOMAIN"),
                ResponseCode::NotImp => f.write_str("NOTIMP"),
                ResponseCode::Refused => f.write_str("REFUSED"),
                other => write!(f, "RCODE {}", u16::from(*other)),
            },
            LookupFailure::Timeout => f.write_str("timeout"),
            LookupFailure::Other(text) => f.write_str(text),
        }
    }
}

impl DnsError {
    /// The short cause an audit record's `error` names: `NXDOMAIN`,
    /// `no addresses`, `SERVFAIL`, `timeout`, ...
    pub(crate) fn cause(&self) -> String {
        match self {
            Self::InvalidName(_) => "invalid name".to_string(),
            Self::NxDomain => "NXDOMAIN".to_string(),
            Self::NoAddresses => "no addresses".to_string(),
            Self::Failed(failure) => failure.to_string(),
            Self::Busy => "too many lookups in flight".to_string(),
        }
    }

    /// The `dns_lookup_seconds{result}` label for this failure.
    pub(crate) fn metric_result(&self) -> DnsResult {
        match self {
            Self::NxDomain => DnsResult::NxDomain,
            Self::NoAddresses => DnsResult::NoAddresses,
            Self::InvalidName(_) | Self::Failed(_) | Self::Busy => DnsResult::Error,
        }
    }
}

/// What a name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answers {
    /// IPv4 first, then IPv6, without duplicates; never empty.
    pub addrs: Vec<IpAddr>,
    /// Why the other family's lookup failed, when one did (SERVFAIL, a
    /// timeout, a local error such as running out of descriptors). With none
    /// of `addrs` dialable, the answer is then incomplete: `dns_error`, never
    /// `blocked_ip`.
    pub failed: Option<LookupFailure>,
}

impl Answers {
    /// The answer for an IP literal: itself, complete.
    fn literal(ip: IpAddr) -> Self {
        Answers {
            addrs: vec![ip],
            failed: None,
        }
    }
}

/// Answers split by the IP guard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filtered {
    /// Addresses the proxy may dial, in resolver order.
    pub dialable: Vec<IpAddr>,
    /// Addresses the guard refused.
    pub blocked: Vec<IpAddr>,
}

impl Filtered {
    /// True when there were answers and the guard refused every one (`blocked_ip`).
    pub(crate) fn all_blocked(&self) -> bool {
        self.dialable.is_empty() && !self.blocked.is_empty()
    }
}

/// Splits `addrs` into dialable and blocked, keeping their order.
pub(crate) fn filter(
    addrs: impl IntoIterator<Item = IpAddr>,
    is_dialable: impl Fn(IpAddr) -> bool,
) -> Filtered {
    let mut out = Filtered::default();
    for addr in addrs {
        if is_dialable(addr) {
            out.dialable.push(addr);
        } else {
            out.blocked.push(addr);
        }
    }
    out
}

/// A caching stub resolver. Cheap to clone; clones share the cache and the
/// bound on lookups in flight.
#[derive(Debug, Clone)]
pub(crate) struct Resolver {
    inner: TokioResolver,
    metrics: Option<Arc<Metrics>>,
    /// One permit per lookup in flight: pending lookups hold descriptors,
    /// which the open-files budget must account for.
    slots: Arc<Semaphore>,
    queue_wait: Duration,
    /// Whole answers still valid, found again without asking hickory.
    recent: Arc<Recent>,
}

impl Resolver {
    /// Uses `nameservers` (UDP, TCP when a reply is truncated), or the system configuration
    /// when the slice is empty. `/etc/hosts` is never consulted: destinations come from DNS.
    pub(crate) fn new(nameservers: &[SocketAddr]) -> Result<Self, ResolveInitError> {
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(ResolveInitError::SystemConfig)?
        } else {
            let servers = nameservers.iter().map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            });
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers.collect()),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.timeout = TIMEOUT;
        opts.attempts = TRIES - 1;
        opts.use_hosts_file = ResolveHosts::Never;
        // Names are always queried fully qualified, so search/ndots never apply; zero makes
        // that explicit should a relative name ever slip through.
        opts.ndots = 0;
        let inner = builder.build().map_err(ResolveInitError::Build)?;
        Ok(Self {
            inner,
            metrics: None,
            slots: Arc::new(Semaphore::new(DEFAULT_MAX_LOOKUPS)),
            queue_wait: QUEUE_WAIT,
            recent: Arc::default(),
        })
    }

    /// Lets at most `max` lookups (at least one) be in flight at once; a lookup that
    /// finds none free waits up to its own duration, then fails as [`DnsError::Busy`].
    pub(crate) fn with_max_lookups(mut self, max: usize) -> Self {
        self.slots = Arc::new(Semaphore::new(max.max(1)));
        self
    }

    /// Records every lookup's duration and outcome in `dns_lookup_seconds`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The addresses of `host` (a normalised name, trailing dot optional): IPv4 first, then
    /// IPv6, duplicates removed. An IP literal is returned as is, without a query.
    ///
    /// IPv4 comes first because many container networks (Fargate and Docker defaults) have
    /// no IPv6 egress: a dialer walking the list in order reaches a working address first
    /// and still falls back to IPv6 where IPv4 fails.
    pub(crate) async fn lookup(&self, host: &str) -> Result<Answers, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Answers::literal(ip));
        }
        let started = Instant::now();
        if let Some(addrs) = self.recent.get(host, started) {
            if let Some(metrics) = &self.metrics {
                metrics.dns_lookup(DnsResult::Ok, started.elapsed());
            }
            return Ok(Answers {
                addrs,
                failed: None,
            });
        }
        let result = match tokio::time::timeout(self.queue_wait, self.slots.acquire()).await {
            Ok(Ok(_slot)) => self.resolve(host).await,
            // Closed never happens (the semaphore is never closed); both mean no slot.
            Ok(Err(_)) | Err(_) => Err(DnsError::Busy),
        };
        if let Some(metrics) = &self.metrics {
            let label = match &result {
                Ok(_) => DnsResult::Ok,
                Err(error) => error.metric_result(),
            };
            metrics.dns_lookup(label, started.elapsed());
        }
        result
    }

    async fn resolve(&self, host: &str) -> Result<Answers, DnsError> {
        let name = fully_qualified(host)?;
        let ((v4, v4_until), (v6, v6_until)) = tokio::join!(
            self.family(name.clone(), RecordType::A),
            self.family(name, RecordType::AAAA),
        );
        let answers = combine(v4, v6)?;
        if let (Some(v4), Some(v6), None) = (v4_until, v6_until, &answers.failed) {
            let now = Instant::now();
            self.recent.put(host, &answers.addrs, v4.min(v6), now);
        }
        Ok(answers)
    }

    /// One record type's outcome, with when it expires: a positive answer at
    /// its records' TTL, a "no such records" at the negative TTL of the
    /// zone's SOA; `None` for failures and negative answers without an SOA.
    async fn family(&self, name: Name, record_type: RecordType) -> (Answer, Option<Instant>) {
        match self.inner.lookup(name, record_type).await {
            Ok(lookup) => {
                let until = lookup.valid_until();
                let addrs: Vec<IpAddr> = lookup
                    .answers()
                    .iter()
                    .filter(|record| record.record_type() == record_type)
                    .filter_map(|record| record.data.ip_addr())
                    .collect();
                if addrs.is_empty() {
                    (Answer::NoData, None)
                } else {
                    (Answer::Addrs(addrs), Some(until))
                }
            }
            Err(NetError::Dns(WireError::NoRecordsFound(NoRecords {
                response_code,
                negative_ttl,
                ..
            }))) => match response_code {
                ResponseCode::NXDomain => (Answer::NxDomain, None),
                ResponseCode::NoError => {
                    let until = negative_ttl
                        .map(|ttl| Instant::now() + Duration::from_secs(u64::from(ttl)));
                    (Answer::NoData, until)
                }
                code => (Answer::Failed(LookupFailure::Code(code)), None),
            },
            Err(error) => (Answer::Failed(LookupFailure::of(error)), None),
        }
    }
}

/// One record type's outcome.
#[derive(Debug)]
enum Answer {
    Addrs(Vec<IpAddr>),
    /// The name exists without records of this type.
    NoData,
    NxDomain,
    Failed(LookupFailure),
}

/// `host` as an absolute name, so resolv.conf `search` domains are never appended.
fn fully_qualified(host: &str) -> Result<Name, DnsError> {
    let invalid = || DnsError::InvalidName(host.to_owned());
    // A numeric last label is an IPv4 address in a form browsers and libc accept
    // (`2130706433`, `0x7f.1`, `0177.0.0.1`): never ask DNS about it.
    let last = host.strip_suffix('.').unwrap_or(host).rsplit('.').next();
    let numeric = |label: &str| {
        let hex = label
            .strip_prefix("0x")
            .or_else(|| label.strip_prefix("0X"));
        match hex {
            Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
            None => label.bytes().all(|b| b.is_ascii_digit()),
        }
    };
    if last.is_none_or(|label| label.is_empty() || numeric(label)) {
        return Err(invalid());
    }
    let mut name = Name::from_ascii(host).map_err(|_| invalid())?;
    name.set_fqdn(true);
    Ok(name)
}

/// Merges both families: any address wins (noting a failure of the other family);
/// otherwise NXDOMAIN only when both say so, and a failure on either side is reported
/// over a mere absence of records.
fn combine(v4: Answer, v6: Answer) -> Result<Answers, DnsError> {
    let mut addrs: Vec<IpAddr> = Vec::new();
    for answer in [&v4, &v6] {
        if let Answer::Addrs(found) = answer {
            for addr in found {
                if !addrs.contains(addr) {
                    addrs.push(*addr);
                }
            }
        }
    }
    if !addrs.is_empty() {
        let failed = [v4, v6].into_iter().find_map(|answer| match answer {
            Answer::Failed(reason) => Some(reason),
            _ => None,
        });
        return Ok(Answers { addrs, failed });
    }
    match (v4, v6) {
        (Answer::NxDomain, Answer::NxDomain) => Err(DnsError::NxDomain),
        (Answer::Failed(reason), _) | (_, Answer::Failed(reason)) => Err(DnsError::Failed(reason)),
        _ => Err(DnsError::NoAddresses),
    }
}

#[cfg(test)]
mod tests;
