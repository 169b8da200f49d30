//! Command-line interface: every `run` flag also reads its `PORTCULLIS_*` environment variable.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The policy the proxy loads when `--policy` is not given.
pub const DEFAULT_POLICY: &str = "config/portcullis.yaml";

/// The `portcullis` command line.
#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Egress forward proxy that allows only listed hostnames"
)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Validate policy files: every error and warning with its code; errors (and, with --strict, warnings) exit 1.
    Check(CheckArgs),
    /// Show how the policy decides one destination, and why: exit 0 allow/report, 3 deny, 2 on error.
    Explain(ExplainArgs),
    /// Run a file of expected decisions against a policy: exit 0 when all hold, 1 on any mismatch, 2 on error.
    Test(TestArgs),
    /// Show the destinations each client gains and loses between two policies.
    Diff(DiffArgs),
    /// Ask a running proxy's admin listener for /readyz: exit 0 when ready, 1 otherwise.
    Health(HealthArgs),
    /// Print the JSON Schema of the policy file, or of a `test` cases file (for editors and CI).
    Schema(SchemaArgs),
    /// Suggest an allowlist from audit logs (e.g. of `mode: report`), for review.
    Suggest(SuggestArgs),
    /// Print a new random proxy token and, on the next line, the `sha256:` digest a client's `tokens:` lists.
    Token(TokenArgs),
    /// Convert a Squid or Smokescreen allowlist into a policy on stdout, with a comment on all it could not carry over: exit 0 imported, 1 not a valid source file, 2 unreadable.
    Import(ImportArgs),
}

/// `portcullis token` takes no arguments.
#[derive(Debug, Args)]
pub struct TokenArgs {}

/// `portcullis suggest` arguments.
#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// Audit log to read (JSON lines, plain or gzip); repeat for several; `-` (the default) is stdin.
    #[arg(long = "audit", value_name = "PATH|-")]
    pub audit: Vec<String>,
    /// The policy in force: print only what it would deny, and list its allow rules no record used.
    #[arg(long, value_name = "CURRENT")]
    pub policy: Option<PathBuf>,
    /// Only this client's destinations (`default`: the top-level list).
    #[arg(long, value_name = "NAME")]
    pub client: Option<String>,
    /// Leave out destinations seen fewer than N times.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_count: u64,
    /// `auto`: 3+ names below one domain become `*.domain` (never over a public suffix or a shared-tenant domain); `none`: exact names only.
    #[arg(long, value_enum, default_value = "auto")]
    pub collapse: crate::cmd::suggest::Collapse,
    /// With --policy: print CURRENT with the suggested rules added (comments kept), not only the rules to add.
    #[arg(long, requires = "policy")]
    pub merge: bool,
}

/// `portcullis health` arguments.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Admin listener of the proxy to ask (an unspecified IP such as 0.0.0.0 means loopback).
    #[arg(long, env = "PORTCULLIS_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// Give up (and exit 1) after this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `portcullis schema` arguments.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Which file's schema: the policy, or a `portcullis test` cases file.
    #[arg(value_enum, default_value = "policy")]
    pub kind: SchemaKind,
}

/// Which schema `portcullis schema` prints: `policy` or `cases`.
// No `///` on the values: clap would list them as possible-value help and reflow all of `--help`.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    Policy,
    Cases,
}

/// `portcullis diff` arguments.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The policy before the change (e.g. the base branch's file or directory).
    pub old: PathBuf,
    /// The policy after the change (a file or a directory).
    pub new: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

/// How `check`, `explain`, `test` and `diff` print their results: `text` (human-readable lines) or `json` (one document).
// No `///` on the values: clap would list them as possible-value help and reflow all of `--help`.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// `portcullis run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file (YAML, version 1), or a directory of them (every *.yaml/*.yml in it); reloaded when it changes.
    #[arg(long, env = "PORTCULLIS_POLICY", default_value = DEFAULT_POLICY)]
    pub policy: PathBuf,
    /// Explicit proxy listener (CONNECT and absolute-form HTTP).
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "127.0.0.1:3128")]
    pub listen: SocketAddr,
    /// Admin listener: /metrics, /healthz, /readyz.
    #[arg(long, env = "PORTCULLIS_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// HTTPS proxy listener requiring a client certificate (mTLS), speaking the
    /// `--listen` protocol inside TLS; off when absent. Needs --tls-cert, --tls-key and --tls-client-ca.
    #[arg(
        long,
        env = "PORTCULLIS_LISTEN_TLS",
        requires_all = ["tls_cert", "tls_key", "tls_client_ca"]
    )]
    pub listen_tls: Option<SocketAddr>,
    /// PEM certificate chain of the --listen-tls server; reloaded when it changes.
    #[arg(long, env = "PORTCULLIS_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the --listen-tls server; reloaded when it changes.
    #[arg(long, env = "PORTCULLIS_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that --listen-tls client certificates must chain to; reloaded when it changes.
    #[arg(long, env = "PORTCULLIS_TLS_CLIENT_CA", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
    /// Transparent TLS listener (destination from SNI); off when absent.
    #[arg(long, env = "PORTCULLIS_TRANSPARENT_TLS")]
    pub transparent_tls: Option<SocketAddr>,
    /// Transparent HTTP listener (destination from Host); off when absent.
    #[arg(long, env = "PORTCULLIS_TRANSPARENT_HTTP")]
    pub transparent_http: Option<SocketAddr>,
    /// DNS server(s) to query instead of the system resolv.conf: `IP` (port 53) or `IP:PORT`, `[IPv6]:PORT`.
    #[arg(
        long = "nameserver",
        env = "PORTCULLIS_NAMESERVERS",
        value_delimiter = ',',
        value_parser = parse_nameserver
    )]
    pub nameservers: Vec<SocketAddr>,
    /// Give up dialing the destination after this long.
    #[arg(long, env = "PORTCULLIS_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Close a tunnel after this long with no bytes either way.
    #[arg(long, env = "PORTCULLIS_IDLE_TIMEOUT", default_value = "300s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// The request head (or ClientHello) must arrive within this.
    #[arg(long, env = "PORTCULLIS_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// On SIGTERM, let open connections finish for this long.
    #[arg(long, env = "PORTCULLIS_DRAIN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Connections accepted at once; beyond it clients get 503 overloaded.
    #[arg(long, env = "PORTCULLIS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Connections one source address may hold open; beyond it, 503 overloaded. 0: no limit.
    #[arg(
        long,
        env = "PORTCULLIS_MAX_CONNECTIONS_PER_CLIENT",
        default_value_t = 0
    )]
    pub max_connections_per_client: usize,
    /// Every connection on the proxy listeners (`--listen` and the
    /// transparent ones) must start with a PROXY protocol v1 or v2 header, as
    /// a load balancer such as an AWS NLB sends; its source is the client.
    #[arg(long, env = "PORTCULLIS_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
    /// With --proxy-protocol: the peers (load balancers) allowed to send the
    /// header, as CIDRs or addresses, comma-separated; others are closed. Default: any peer.
    #[arg(
        long,
        env = "PORTCULLIS_PROXY_PROTOCOL_FROM",
        value_delimiter = ',',
        value_name = "CIDR",
        value_parser = parse_cidr,
        requires = "proxy_protocol"
    )]
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Threads serving connections, each with its own event loop and all
    /// listeners; a connection stays on the thread that accepted it.
    /// 0: one per CPU the process may use (cgroup quotas included).
    #[arg(long, env = "PORTCULLIS_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Audit log destination: a file path, or `-` for stdout. A file is reopened on
    /// SIGHUP and when its path no longer names it (logrotate `create`, a delete).
    #[arg(long, env = "PORTCULLIS_AUDIT_LOG", default_value = "-")]
    pub audit_log: String,
    /// When the audit queue is full: `refuse` answers new exchanges `503
    /// audit_unavailable` until it has room, so that nothing admitted goes
    /// unlogged; `drop` keeps serving and counts the records it loses.
    #[arg(
        long,
        env = "PORTCULLIS_AUDIT_OVERFLOW",
        value_enum,
        default_value = "refuse"
    )]
    pub audit_overflow: AuditOverflow,
    /// Audit records that may wait for the writer before `--audit-overflow` applies.
    #[arg(
        long,
        env = "PORTCULLIS_AUDIT_QUEUE_RECORDS",
        default_value = "16384",
        value_name = "N"
    )]
    pub audit_queue_records: NonZeroUsize,
    /// Diagnostic log format (always on stderr).
    #[arg(
        long,
        env = "PORTCULLIS_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogFormat,
    /// After a reload, close open tunnels whose destination the new policy denies.
    #[arg(long, env = "PORTCULLIS_REVALIDATE_ON_RELOAD")]
    pub revalidate_on_reload: bool,
    /// Names this proxy in every audit record (`instance`). Default: the ECS
    /// task ARN when ECS task metadata (v4) answers within 1 s, else the host name.
    #[arg(long, env = "PORTCULLIS_INSTANCE_ID", value_name = "ID")]
    pub instance_id: Option<String>,
    /// Distinct `destination` label values before metrics use `_other`.
    #[arg(
        long,
        env = "PORTCULLIS_MAX_DESTINATION_LABELS",
        default_value_t = 1000
    )]
    pub max_destination_labels: usize,
}

/// A DNS server: `IP:PORT`, `[IPv6]:PORT`, or an address alone for port 53,
/// as in resolv.conf.
fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    s.parse::<SocketAddr>()
        .or_else(|_| {
            let bare = s.strip_prefix('[').and_then(|b| b.strip_suffix(']'));
            bare.unwrap_or(s)
                .parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| {
            format!("`{s}` is not a nameserver address (10.0.0.2, 10.0.0.2:53, [fd00::2]:53)")
        })
}

/// A CIDR, or one address (a /32 or /128).
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("`{s}` is not a CIDR (10.0.0.0/8) or an IP address"))
}

/// Diagnostic log line format: `json` (one object per line) or `text` (human-readable lines).
// No `///` on the values: clap would list them as possible-value help and reflow all of `--help`.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// What the audit log does when its queue is full (`--audit-overflow`):
/// `refuse` new exchanges (fail closed), or `drop` records (counted).
// No `///` on the values: clap would list them as possible-value help and reflow all of `--help`.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum AuditOverflow {
    #[default]
    Refuse,
    Drop,
}

/// `portcullis check` arguments.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files (or directories of them) to validate.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// Fail (exit 1) on warnings too, not only on errors.
    #[arg(long)]
    pub strict: bool,
}

/// `portcullis explain` arguments.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Policy file (or directory of policy files) to evaluate.
    #[arg(long, env = "PORTCULLIS_POLICY")]
    pub policy: PathBuf,
    /// The client: a `clients` name (its rules), or a source address (matched as the proxy would).
    #[arg(long, value_name = "NAME|IP", default_value = "127.0.0.1")]
    pub client: String,
    /// A credential the caller presents, matched as the proxy would (with
    /// `--client IP` as its source): a certificate name (`spiffe://…`,
    /// `dns:NAME`, `cn:NAME`), a token's `sha256:` digest, or a VPC
    /// endpoint id (`vpce-…`). Repeat for several.
    #[arg(long, value_name = "CREDENTIAL")]
    pub identity: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// Destination: `HOST`, `HOST:PORT`, `IP:PORT`, `[IPv6]:PORT`, or a URL
    /// (`https://api.stripe.com/v1/charges`). Port: the URL scheme's, else 443.
    pub target: String,
}

/// `portcullis test` arguments.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Policy file (or directory of policy files) the cases are run against.
    #[arg(long, env = "PORTCULLIS_POLICY")]
    pub policy: PathBuf,
    /// Cases file: a YAML list of `{client: NAME | source: IP, dest: DEST, expect: allow|deny|report, reason: REASON}`.
    pub cases: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

/// `portcullis import` arguments.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// What the file is: a squid.conf, or a Smokescreen ACL (YAML, `version: v1`).
    #[arg(value_enum)]
    pub source: ImportSource,
    /// The file to convert.
    pub file: PathBuf,
}

/// Which proxy's configuration `portcullis import` reads.
// No `///` on the values: clap would list them as possible-value help and reflow all of `--help`.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImportSource {
    Squid,
    Smokescreen,
}

impl ImportSource {
    /// As written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ImportSource::Squid => "Squid configuration",
            ImportSource::Smokescreen => "Smokescreen ACL",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nameserver_without_a_port_is_asked_on_53() {
        let ok = |s: &str| parse_nameserver(s).unwrap().to_string();
        assert_eq!(ok("10.0.0.2"), "10.0.0.2:53");
        assert_eq!(ok(" 10.0.0.2:5353 "), "10.0.0.2:5353");
        assert_eq!(ok("fd00::2"), "[fd00::2]:53");
        assert_eq!(ok("[fd00::2]"), "[fd00::2]:53");
        assert_eq!(ok("[fd00::2]:5353"), "[fd00::2]:5353");
        for bad in ["dns.example", "10.0.0.2:", "10.0.0.2:99999", ""] {
            assert!(parse_nameserver(bad).is_err(), "{bad}");
        }
    }
}
