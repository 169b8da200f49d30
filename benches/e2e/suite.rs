//! The figure loop: every selected figure on every target, targets taking turns figure by
//! figure so that compared figures are measured close together on a shared machine.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;

use crate::cli::Options;
use crate::client::{ORIGIN_HOST, ResponseReader, connect, echo_byte, open_raw};
use crate::origin::{MODE_ECHO, Origins};
use crate::report::TargetReport;
use crate::sysstat::Background;
use crate::target::Target;
use crate::throughput::Direction;
use crate::{http, idle, throughput, tunnels};

/// One tunnel with an echo and one forwarded request, so a misconfigured proxy fails fast.
async fn sanity(target: &Target, origins: Origins) -> Result<(), String> {
    let (mut s, _) = open_raw(target.proxy, origins.raw)
        .await
        .map_err(|e| format!("CONNECT to the raw origin: {e}"))?;
    echo_byte(&mut s, MODE_ECHO)
        .await
        .map_err(|e| format!("echo: {e}"))?;
    let dial: SocketAddr = target.proxy.unwrap_or(origins.http);
    let mut s = connect(dial).await.map_err(|e| e.to_string())?;
    let port = origins.http.port();
    let req = format!(
        "GET http://{ORIGIN_HOST}:{port}/bytes/3 HTTP/1.1\r\nHost: {ORIGIN_HOST}:{port}\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let resp = ResponseReader::new()
        .read(&mut s)
        .await
        .map_err(|e| format!("forwarded GET: {e}"))?;
    match (resp.status, resp.body_len) {
        (200, 3) => Ok(()),
        (status, len) => Err(format!("forwarded GET: status {status}, {len} body bytes")),
    }
}

/// Runs every selected figure on every target; `idle_fds` says whether this process may
/// hold the idle tunnels.
pub async fn run(
    opts: &Options,
    targets: &[Target],
    origins: Origins,
    idle_fds: &Result<(), String>,
) -> Vec<TargetReport> {
    let mut reports: Vec<TargetReport> = (targets.iter())
        .map(|t| TargetReport {
            name: t.name.clone(),
            pid: t.pid,
            ..TargetReport::default()
        })
        .collect();
    let mut live = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        match sanity(target, origins).await {
            Ok(()) => live.push(i),
            Err(e) => {
                eprintln!("e2e: {}: sanity check failed: {e}", target.name);
                let note = format!("sanity check failed, nothing measured: {e}");
                reports[i].failures.push(note);
            }
        }
    }
    let (warmup, measure) = (opts.warmup(), opts.measure());
    for round in 0..opts.rounds {
        let mut order = live.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        if opts.rounds > 1 {
            eprintln!("e2e: round {}/{}", round + 1, opts.rounds);
        }
        if opts.wants("throughput") {
            for direction in [Direction::Download, Direction::Upload] {
                for &streams in &opts.streams {
                    for &i in &order {
                        let (t, bg) = (&targets[i], Background::start(targets[i].pid));
                        let res =
                            throughput::run(t, origins.raw, direction, streams, warmup, measure);
                        match res.await {
                            Ok(mut r) => {
                                r.background_cores = bg.cores();
                                eprintln!(
                                    "e2e: {}: {direction:?} x{streams}: {:.2} Gbit/s",
                                    t.name, r.gbit_per_s
                                );
                                reports[i].throughput.push(r);
                            }
                            Err(e) => reports[i].failures.push(format!("throughput: {e}")),
                        }
                    }
                }
            }
        }
        if opts.wants("tunnels") {
            for &i in &order {
                let (t, bg) = (&targets[i], Background::start(targets[i].pid));
                let mut r = tunnels::run(t, origins.raw, opts.workers, warmup, measure).await;
                (r.background_cores, r.proxy_cores) = (bg.cores(), bg.proxy_cores());
                eprintln!(
                    "e2e: {}: {:.0} tunnels/s ({} errors, proxy {:.2} cores)",
                    t.name,
                    r.per_second,
                    r.errors,
                    r.proxy_cores.unwrap_or(0.0)
                );
                reports[i].tunnels.push(r);
            }
        }
        if opts.wants("http") {
            for &i in &order {
                let (t, bg) = (&targets[i], Background::start(targets[i].pid));
                let (n, body) = (opts.workers, opts.http_body);
                let mut r = http::run(t, origins.http, n, body, warmup, measure).await;
                (r.background_cores, r.proxy_cores) = (bg.cores(), bg.proxy_cores());
                eprintln!(
                    "e2e: {}: {:.0} forwarded req/s ({} errors, proxy {:.2} cores)",
                    t.name,
                    r.requests_per_second,
                    r.errors,
                    r.proxy_cores.unwrap_or(0.0)
                );
                reports[i].http.push(r);
            }
        }
    }
    if opts.wants("idle") && opts.idle_tunnels > 0 {
        for &i in &live {
            let t = &targets[i];
            if t.proxy.is_none() {
                continue;
            }
            if let Err(e) = idle_fds {
                reports[i].failures.push(format!("idle tunnels: {e}"));
                continue;
            }
            let bg = Background::start(t.pid);
            match idle::run(t, origins.raw, opts.idle_tunnels, opts.idle_echo_bytes).await {
                Ok(mut r) => {
                    r.background_cores = bg.cores();
                    eprintln!(
                        "e2e: {}: {:.1} KB per idle tunnel ({} open)",
                        t.name, r.kb_per_tunnel, r.opened
                    );
                    reports[i].idle = Some(r);
                }
                Err(e) => reports[i].failures.push(format!("idle tunnels: {e}")),
            }
        }
    }
    for (r, t) in reports.iter_mut().zip(targets) {
        r.audit_log_bytes = t.audit_bytes();
        r.finish();
    }
    reports
}
