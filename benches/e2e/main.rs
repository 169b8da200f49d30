//! End-to-end load harness: origins, DNS and proxies on loopback; see `cli.rs` for options.
//!
//! ```text
//! cargo bench --bench e2e                                  # portcullis vs direct
//! cargo bench --bench e2e -- --compare squid,trafficserver --setup-hosts # + peers, ratios
//! cargo bench --bench e2e -- --proxy 127.0.0.1:3128 --proxy-pid PID --skip-portcullis
//! ```
//! Each figure is measured for `--seconds` (default 5) after a short warm-up; the whole
//! default run takes about 90 s. `--idle-tunnels 5000` needs ~10,000 open files in this
//! process (it raises its soft limit when the hard one allows; else `ulimit -n 65536`).

// Cargo.toml's [lints] turn `unreachable_pub` on for every target; this harness's
// shared fixtures are `pub` for its own modules on purpose.
#![allow(unreachable_pub)]

mod cli;
mod client;
mod dns;
mod http;
mod idle;
mod mtls;
mod origin;
mod report;
mod suite;
mod sysstat;
mod target;
mod throughput;
mod tunnels;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;
use serde_json::json;

use cli::Options;
use target::Target;

/// PIDs of proxies this harness started, killed by the watchdog if the run overruns.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn main() {
    let opts = Options::parse();
    if let Err(e) = opts.validate() {
        eprintln!("e2e: {e}");
        std::process::exit(2);
    }
    start_watchdog(&opts);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        tokio::select! {
            res = run(&opts) => match res {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("e2e: {e}");
                    1
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("e2e: interrupted");
                130
            }
        }
    });
    // Dropping the runtime drops any proxy still running (kill_on_drop).
    drop(runtime);
    std::process::exit(code);
}

/// Exits the process (killing the proxies it started) if the run takes far longer than its
/// figures are bounded to.
fn start_watchdog(opts: &Options) {
    let figure = opts.measure() + opts.warmup() + Duration::from_secs(2);
    let figures = (2 * opts.streams.len() as u32 + 2) * opts.rounds as u32;
    let per_target = figure * figures + Duration::from_secs(180);
    // Up to five targets: direct, portcullis, portcullis-b, Squid, Traffic Server.
    let bound = per_target * 5 + Duration::from_secs(120);
    std::thread::spawn(move || {
        std::thread::sleep(bound);
        eprintln!("e2e: watchdog: run exceeded {bound:?}; stopping");
        for pid in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        std::process::exit(3);
    });
}

/// Whether /etc/hosts maps origin.test and origin2.test to 127.0.0.1; adds the line when
/// `setup` and it is missing.
fn hosts_ready(setup: bool) -> Result<(), String> {
    let has = |text: &str| {
        text.lines().any(|l| {
            let words: Vec<&str> = l
                .split('#')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            words.first() == Some(&"127.0.0.1") && dns::NAMES.iter().all(|n| words[1..].contains(n))
        })
    };
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if has(&hosts) {
        return Ok(());
    }
    if !setup {
        return Err("Squid resolves origin.test via /etc/hosts, which lacks \
                    `127.0.0.1 origin.test origin2.test`: add it, or pass --setup-hosts"
            .into());
    }
    let mut text = hosts;
    if !text.ends_with('\n') && !text.is_empty() {
        text.push('\n');
    }
    text.push_str("127.0.0.1 origin.test origin2.test\n");
    std::fs::write("/etc/hosts", text).map_err(|e| format!("--setup-hosts: /etc/hosts: {e}"))?;
    eprintln!("e2e: added `127.0.0.1 origin.test origin2.test` to /etc/hosts");
    Ok(())
}

async fn run(opts: &Options) -> Result<(), String> {
    if opts.compares("squid") {
        hosts_ready(opts.setup_hosts)?;
    }
    let idle_fds = match opts.idle_tunnels {
        0 => Ok(()),
        n if opts.wants("idle") => sysstat::ensure_fd_limit(n),
        _ => Ok(()),
    };
    let (dns, _dns_server) = dns::start().await?;
    let (raw_port, http_port) = opts.origin_ports();
    let origins = origin::start(raw_port, http_port).await?;
    eprintln!(
        "e2e: DNS {dns}, raw origin {}, HTTP origin {}",
        origins.raw, origins.http
    );
    let mut bin = None;
    if !opts.skip_portcullis && opts.proxy.is_none() {
        bin = Some(target::portcullis_bin(
            opts.portcullis_bin.as_deref(),
            opts.no_build,
        )?);
    }

    let mut targets = Vec::new();
    if !opts.skip_direct {
        targets.push(Target::direct());
    }
    if let Some(bin) = &bin {
        eprintln!("e2e: starting {}", bin.display());
        targets.push(Target::portcullis(bin, dns, &opts.portcullis_args).await?);
    }
    if let (Some(b), true) = (&opts.portcullis_b, bin.is_some()) {
        eprintln!("e2e: starting {} as portcullis-b", b.display());
        targets
            .push(Target::portcullis_named("portcullis-b", b, dns, &opts.portcullis_args).await?);
    }
    if let Some(addr) = opts.proxy {
        targets.push(Target::external(
            &opts.proxy_name,
            Some(addr),
            opts.proxy_pid,
        ));
    }
    if opts.compares("trafficserver") {
        let conf = opts.trafficserver_conf.clone().unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/e2e/peers/trafficserver")
        });
        eprintln!("e2e: starting traffic_server with {}", conf.display());
        targets.push(Target::trafficserver(&conf, opts.trafficserver_addr, dns).await?);
    }
    if opts.compares("squid") {
        let conf = opts.squid_conf.clone().unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/e2e/peers/squid.conf")
        });
        eprintln!("e2e: starting squid -N -f {}", conf.display());
        targets.push(Target::squid(&conf, opts.squid_addr).await?);
    }
    for t in &targets {
        if let (Some(pid), true) = (t.pid, t.started_here()) {
            CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
        }
    }
    let reports = suite::run(opts, &targets, origins, &idle_fds).await;
    for t in targets {
        t.stop().await;
    }
    let mtls = match &bin {
        Some(bin) if opts.wants("mtls") => {
            eprintln!("e2e: mTLS connections (a portcullis with --listen-tls)");
            let figure = mtls::run(
                bin,
                dns,
                origins.raw,
                &opts.portcullis_args,
                opts.workers,
                &opts.mtls_proxy_workers,
                opts.warmup(),
                opts.measure(),
            )
            .await;
            if let Err(e) = &figure {
                eprintln!("e2e: mTLS figure: {e}");
            }
            figure.ok()
        }
        _ => None,
    };

    println!("\n{}", report::table(&reports, &opts.streams));
    if let Some(m) = &mtls {
        println!("{}", mtls::table(m));
    }
    let settings = json!({
        "seconds": opts.seconds,
        "warmup_ms": opts.warmup_ms,
        "streams": opts.streams,
        "workers": opts.workers,
        "http_body": opts.http_body,
        "idle_tunnels": opts.idle_tunnels,
        "idle_echo_bytes": opts.idle_echo_bytes,
        "rounds": opts.rounds,
        "dns_ttl_seconds": dns::TTL,
        "portcullis_b": opts.portcullis_b.as_ref().map(|b| b.display().to_string()),
        "origin_raw": origins.raw.to_string(),
        "origin_http": origins.http.to_string(),
        "portcullis_bin": bin.as_ref().map(|b| b.display().to_string()),
        "portcullis_bin_modified_unix": bin.as_ref().and_then(|b| modified_unix(b)),
        "git_head": git(&["rev-parse", "HEAD"]),
        "git_dirty_paths": git(&["status", "--porcelain"]).map(|s| s.lines().count()),
        "portcullis_args": opts.portcullis_args,
    });
    let mut doc = report::json(&reports, &opts.streams, settings);
    doc["mtls"] = json!(mtls);
    let text = serde_json::to_string_pretty(&doc).expect("serialisable report");
    if let Some(path) = &opts.json {
        std::fs::write(path, &text).map_err(|e| format!("--json {}: {e}", path.display()))?;
        eprintln!("e2e: wrote {}", path.display());
    }
    if !opts.quiet_json {
        println!("{text}");
    }
    Ok(())
}

/// When `path` was last written, in seconds since the epoch (which build was measured).
fn modified_unix(path: &std::path::Path) -> Option<u64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(
        modified
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs(),
    )
}

/// The trimmed output of a read-only `git` command in the crate, if it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
