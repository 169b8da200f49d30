//! Command-line options of the end-to-end bench (`cargo bench --bench e2e -- --help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// End-to-end load harness: origins, DNS and a proxy on loopback; prints a table and JSON.
///
/// Default: builds nothing (cargo bench already built `portcullis`), starts portcullis with
/// an allow-origin policy, audit log to a temp file and metrics on, and measures it plus a
/// direct (no proxy) baseline. `--compare squid,trafficserver` also starts Squid
/// (`benches/e2e/peers/squid.conf`) and/or Apache Traffic Server
/// (`benches/e2e/peers/trafficserver/`) and prints portcullis/peer ratios.
#[derive(Debug, Clone, Parser)]
#[command(name = "e2e")]
pub struct Options {
    /// Seconds each figure is measured for (after a short warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,

    /// Warm-up before each measured interval, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub warmup_ms: u64,

    /// Rounds of the throughput, tunnels and HTTP figures; the report shows per-figure
    /// medians. Targets take turns figure by figure (order reversed every other round), so
    /// figures compared with each other are measured seconds apart.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,

    /// Bytes each idle tunnel echoes once before it goes idle (1 = the tunnel carried one
    /// byte each way; 65536 makes a proxy touch its whole copy buffers).
    #[arg(long, default_value_t = 1)]
    pub idle_echo_bytes: usize,

    /// Idle tunnels held open for the RSS-per-tunnel figure (0 skips it).
    #[arg(long, default_value_t = 5000)]
    pub idle_tunnels: usize,

    /// Concurrent workers (tunnels/s) and keep-alive clients (HTTP forwarding).
    #[arg(long, default_value_t = 32)]
    pub workers: usize,

    /// Body size of the plain-HTTP forwarding figure (`GET /bytes/N`).
    #[arg(long, default_value_t = 1024)]
    pub http_body: usize,

    /// `--workers` counts of the proxy measured by the `mtls` figure, one proxy each, in
    /// the same run (comma list; empty: the proxy's default, or `--portcullis-arg`'s).
    #[arg(long, value_delimiter = ',')]
    pub mtls_proxy_workers: Vec<usize>,

    /// Parallel stream counts of the throughput figures (comma list).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub streams: Vec<usize>,

    /// Measure an already-running proxy at this address instead of starting portcullis.
    #[arg(long, requires = "proxy_pid")]
    pub proxy: Option<SocketAddr>,

    /// PID of the `--proxy` process (for CPU and RSS from /proc).
    #[arg(long, requires = "proxy")]
    pub proxy_pid: Option<u32>,

    /// Name of the `--proxy` target in the report.
    #[arg(long, default_value = "proxy")]
    pub proxy_name: String,

    /// Peers to start and measure in the same run (comma list of: squid, trafficserver).
    /// Squid binds the origins on 9000 (raw) and 9001 (HTTP), as its config expects.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,

    /// Same as `--compare squid`.
    #[arg(long)]
    pub compare_squid: bool,

    /// Squid config for `--compare-squid` (default: benches/e2e/peers/squid.conf in the crate).
    #[arg(long)]
    pub squid_conf: Option<PathBuf>,

    /// Squid's listening address (as in the config).
    #[arg(long, default_value = "127.0.0.1:3128")]
    pub squid_addr: SocketAddr,

    /// Directory of the Traffic Server configuration for `--compare trafficserver`
    /// (default: benches/e2e/peers/trafficserver in the crate).
    #[arg(long)]
    pub trafficserver_conf: Option<PathBuf>,

    /// Traffic Server's listening address (as in its records.config).
    #[arg(long, default_value = "127.0.0.1:3130")]
    pub trafficserver_addr: SocketAddr,

    /// Another portcullis binary measured in the same run as `portcullis-b` (same policy,
    /// DNS and arguments): a same-run A/B of two builds.
    #[arg(long)]
    pub portcullis_b: Option<PathBuf>,

    /// Append `127.0.0.1 origin.test origin2.test` to /etc/hosts when missing (Squid needs it).
    #[arg(long)]
    pub setup_hosts: bool,

    /// Fixed port of the raw TCP origin (default: OS-chosen; 9000 with --compare-squid).
    #[arg(long)]
    pub origin_raw_port: Option<u16>,

    /// Fixed port of the HTTP origin (default: OS-chosen; 9001 with --compare-squid).
    #[arg(long)]
    pub origin_http_port: Option<u16>,

    /// The portcullis binary (default: the one cargo built alongside this bench).
    #[arg(long)]
    pub portcullis_bin: Option<PathBuf>,

    /// Never run `cargo build --release --bin portcullis`, even when the binary is missing.
    #[arg(long)]
    pub no_build: bool,

    /// Extra `portcullis run` argument (repeatable), e.g. `--portcullis-arg=--idle-timeout=60s`.
    #[arg(long = "portcullis-arg", allow_hyphen_values = true)]
    pub portcullis_args: Vec<String>,

    /// Skip the portcullis target (e.g. only `--proxy` or only Squid).
    #[arg(long)]
    pub skip_portcullis: bool,

    /// Skip the direct (no proxy) baseline.
    #[arg(long)]
    pub skip_direct: bool,

    /// Only these figures (comma list of: throughput, tunnels, http, idle, mtls).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,

    /// Write the JSON report here (it is always printed too, after the table).
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Do not print the JSON report on stdout.
    #[arg(long)]
    pub quiet_json: bool,

    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,

    /// Positional filters passed by `cargo bench NAME`; ignored.
    #[arg(hide = true)]
    pub filters: Vec<String>,
}

impl Options {
    pub fn measure(&self) -> Duration {
        Duration::from_secs_f64(self.seconds.max(0.1))
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_millis(self.warmup_ms)
    }

    /// Whether figure `name` is selected by `--only` (all are by default).
    pub fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }

    /// Whether peer `name` (`squid` or `trafficserver`) is compared.
    pub fn compares(&self, name: &str) -> bool {
        self.compare.iter().any(|c| c == name) || (name == "squid" && self.compare_squid)
    }

    /// Ports to bind the origins on: fixed ones when asked or when Squid is compared.
    pub fn origin_ports(&self) -> (u16, u16) {
        let squid = self.compares("squid");
        let raw = self.origin_raw_port.unwrap_or(if squid { 9000 } else { 0 });
        let http = self
            .origin_http_port
            .unwrap_or(if squid { 9001 } else { 0 });
        (raw, http)
    }

    /// Sanity checks clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        for name in &self.only {
            if !["throughput", "tunnels", "http", "idle", "mtls"].contains(&name.as_str()) {
                return Err(format!("--only: unknown figure {name:?}"));
            }
        }
        for name in &self.compare {
            if !["squid", "trafficserver"].contains(&name.as_str()) {
                return Err(format!("--compare: unknown peer {name:?}"));
            }
        }
        if let Some(addr) = self.proxy
            && !addr.ip().is_loopback()
        {
            return Err(format!(
                "--proxy {addr}: only loopback proxies are measured"
            ));
        }
        if !self.squid_addr.ip().is_loopback() {
            return Err("--squid-addr must be a loopback address".into());
        }
        if !self.trafficserver_addr.ip().is_loopback() {
            return Err("--trafficserver-addr must be a loopback address".into());
        }
        if self.streams.is_empty() || self.streams.iter().any(|&s| s == 0 || s > 256) {
            return Err("--streams: counts must be 1..=256".into());
        }
        if self.rounds == 0 || self.rounds > 20 {
            return Err("--rounds must be 1..=20".into());
        }
        if self.idle_echo_bytes == 0 || self.idle_echo_bytes > 1 << 20 {
            return Err("--idle-echo-bytes must be 1..=1048576".into());
        }
        if self.workers == 0 || self.workers > 1024 {
            return Err("--workers must be 1..=1024".into());
        }
        Ok(())
    }
}
