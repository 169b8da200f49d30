//! The results of a run: a human table (targets side by side, portcullis/peer ratios against
//! the goals: issue 6's against Squid, issue 22's against Traffic Server) and a JSON document.

use serde::Serialize;
use serde_json::{Value, json};

use crate::http::Forwarding;
use crate::idle::Idle;
use crate::throughput::{Direction, Throughput, cpu_per_gib, harness_cpu_per_gib};
use crate::tunnels::Tunnels;

/// Everything measured on one target.
#[derive(Debug, Default, Serialize)]
pub struct TargetReport {
    pub name: String,
    pub pid: Option<u32>,
    pub throughput: Vec<Throughput>,
    /// Proxy CPU seconds per GiB over all throughput runs.
    pub cpu_seconds_per_gib: Option<f64>,
    /// One per round.
    pub tunnels: Vec<Tunnels>,
    /// One per round.
    pub http: Vec<Forwarding>,
    pub idle: Option<Idle>,
    /// Size of portcullis' audit log at the end (shows auditing was on).
    pub audit_log_bytes: Option<u64>,
    /// Figures that could not be measured, and why.
    pub failures: Vec<String>,
}

impl TargetReport {
    pub fn finish(&mut self) {
        self.cpu_seconds_per_gib = cpu_per_gib(&self.throughput);
    }

    /// Median over rounds.
    fn gbps(&self, direction: Direction, streams: usize) -> Option<f64> {
        median(
            (self.throughput.iter())
                .filter(|t| t.direction == direction && t.streams == streams)
                .map(|t| t.gbit_per_s),
        )
    }

    /// The most cores other work kept busy during any figure of this target.
    fn background_max(&self) -> Option<f64> {
        let all = (self.throughput.iter().map(|t| t.background_cores))
            .chain(self.tunnels.iter().map(|t| t.background_cores))
            .chain(self.http.iter().map(|h| h.background_cores))
            .chain(self.idle.iter().map(|i| i.background_cores));
        all.flatten().reduce(f64::max)
    }
}

/// The median of `values` (mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(match v.len() % 2 {
        1 => v[mid],
        _ => (v[mid - 1] + v[mid]) / 2.0,
    })
}

/// Whether bigger is better, and the goal ratio portcullis/peer.
#[derive(Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
    None,
}

/// The peers portcullis is compared with, in table order.
const PEERS: [&str; 3] = ["squid", "trafficserver", "portcullis-b"];

/// Median of one latency percentile over rounds, in milliseconds.
fn ms<'a>(
    l: impl Iterator<Item = &'a crate::tunnels::Latency>,
    pick: fn(&crate::tunnels::Latency) -> u64,
) -> Option<f64> {
    median(l.map(|l| pick(l) as f64 / 1000.0))
}

/// Reads one figure of a target.
type Getter = Box<dyn Fn(&TargetReport) -> Option<f64>>;

/// One row of the table.
struct Row {
    key: String,
    label: String,
    unit: &'static str,
    /// Against Squid (issue 6).
    goal: Goal,
    /// Against Traffic Server (issue 22).
    goal_ats: Goal,
    get: Getter,
}

impl Row {
    fn goal_for(&self, peer: &str) -> Goal {
        match peer {
            "squid" => self.goal,
            "trafficserver" => self.goal_ats,
            _ => Goal::None,
        }
    }
}

fn rows(streams: &[usize]) -> Vec<Row> {
    let mut rows = Vec::new();
    for dir in [Direction::Download, Direction::Upload] {
        for &s in streams {
            let name = match dir {
                Direction::Download => "download",
                Direction::Upload => "upload",
            };
            rows.push(Row {
                key: format!("tunnel_{name}_{s}_streams_gbit_per_s"),
                label: format!(
                    "CONNECT tunnel {name}, {s} stream{}",
                    if s > 1 { "s" } else { "" }
                ),
                unit: "Gbit/s",
                goal: Goal::AtLeast(2.0),
                goal_ats: Goal::AtLeast(1.5),
                get: Box::new(move |r| r.gbps(dir, s)),
            });
        }
    }
    let row = |key: &str, label: &str, unit, goal, get: fn(&TargetReport) -> Option<f64>| Row {
        key: key.into(),
        label: label.into(),
        unit,
        goal,
        goal_ats: Goal::None,
        get: Box::new(get),
    };
    let ats = |mut row: Row, goal: Goal| {
        row.goal_ats = goal;
        row
    };
    rows.extend([
        row(
            "cpu_seconds_per_gib",
            "proxy CPU per GiB tunnelled",
            "s",
            Goal::AtMost(0.5),
            |r| r.cpu_seconds_per_gib,
        ),
        row(
            "harness_cpu_seconds_per_gib_download",
            "generator + origins CPU per GiB, download",
            "s",
            Goal::None,
            |r| harness_cpu_per_gib(&r.throughput, Direction::Download),
        ),
        row(
            "harness_cpu_seconds_per_gib_upload",
            "generator + origins CPU per GiB, upload",
            "s",
            Goal::None,
            |r| harness_cpu_per_gib(&r.throughput, Direction::Upload),
        ),
        ats(
            row(
                "tunnels_per_second",
                "new tunnels per second",
                "/s",
                Goal::AtLeast(1.5),
                |r| median(r.tunnels.iter().map(|t| t.per_second)),
            ),
            Goal::AtLeast(1.25),
        ),
        row(
            "cycle_p50_ms",
            "whole cycle p50 (connect..close)",
            "ms",
            Goal::None,
            |r| {
                ms(
                    r.tunnels.iter().filter_map(|t| t.cycle_latency.as_ref()),
                    |l| l.p50_us,
                )
            },
        ),
        ats(
            row(
                "cycle_p99_ms",
                "whole cycle p99 (connect..close)",
                "ms",
                Goal::None,
                |r| {
                    ms(
                        r.tunnels.iter().filter_map(|t| t.cycle_latency.as_ref()),
                        |l| l.p99_us,
                    )
                },
            ),
            Goal::AtMost(1.0),
        ),
        row(
            "cpu_us_per_connection",
            "proxy CPU per new tunnel",
            "us",
            Goal::None,
            |r| {
                median(
                    r.tunnels
                        .iter()
                        .filter_map(|t| t.proxy_cpu_us_per_connection),
                )
            },
        ),
        row(
            "wait_us_per_connection",
            "proxy run-queue wait per new tunnel",
            "us",
            Goal::None,
            |r| {
                median(
                    r.tunnels
                        .iter()
                        .filter_map(|t| t.proxy_wait_us_per_connection),
                )
            },
        ),
        row(
            "connect_p50_ms",
            "CONNECT -> 200 p50",
            "ms",
            Goal::None,
            |r| {
                let l = r.tunnels.iter().filter_map(|t| t.connect_latency.as_ref());
                median(l.map(|l| l.p50_us as f64 / 1000.0))
            },
        ),
        row(
            "connect_p99_ms",
            "CONNECT -> 200 p99",
            "ms",
            Goal::AtMost(0.5),
            |r| {
                let l = r.tunnels.iter().filter_map(|t| t.connect_latency.as_ref());
                median(l.map(|l| l.p99_us as f64 / 1000.0))
            },
        ),
        row(
            "proxy_cores_tunnels",
            "proxy CPU during new tunnels",
            "cores",
            Goal::None,
            |r| median(r.tunnels.iter().filter_map(|t| t.proxy_cores)),
        ),
        row(
            "rss_kb_per_idle_tunnel",
            "RSS per idle tunnel",
            "KB",
            Goal::AtMost(1.0 / 3.0),
            |r| r.idle.as_ref().map(|i| i.kb_per_tunnel),
        ),
        ats(
            row(
                "http_requests_per_second",
                "plain-HTTP forwarding",
                "req/s",
                Goal::AtLeast(2.0),
                |r| median(r.http.iter().map(|h| h.requests_per_second)),
            ),
            Goal::AtLeast(1.25),
        ),
        row("http_p50_ms", "forwarding p50", "ms", Goal::None, |r| {
            ms(r.http.iter().filter_map(|h| h.latency.as_ref()), |l| {
                l.p50_us
            })
        }),
        ats(
            row("http_p99_ms", "forwarding p99", "ms", Goal::None, |r| {
                ms(r.http.iter().filter_map(|h| h.latency.as_ref()), |l| {
                    l.p99_us
                })
            }),
            Goal::AtMost(1.0),
        ),
        row(
            "cpu_us_per_request",
            "proxy CPU per forwarded request",
            "us",
            Goal::None,
            |r| median(r.http.iter().filter_map(|h| h.proxy_cpu_us_per_request)),
        ),
        row(
            "wait_us_per_request",
            "proxy run-queue wait per forwarded request",
            "us",
            Goal::None,
            |r| median(r.http.iter().filter_map(|h| h.proxy_wait_us_per_request)),
        ),
        row(
            "proxy_cores_http",
            "proxy CPU during HTTP forwarding",
            "cores",
            Goal::None,
            |r| median(r.http.iter().filter_map(|h| h.proxy_cores)),
        ),
    ]);
    rows
}

fn fmt(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "-".into(),
        Some(v) if unit == "/s" || unit == "req/s" => format!("{:.0} {unit}", v),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0} {unit}"),
        Some(v) => format!("{v:.2} {unit}"),
    }
}

/// portcullis / peer for a row, and whether it meets the goal against that peer.
fn ratio(row: &Row, ours: &TargetReport, theirs: &TargetReport) -> Option<(f64, Option<bool>)> {
    let (a, b) = ((row.get)(ours)?, (row.get)(theirs)?);
    if b == 0.0 {
        return None;
    }
    let r = a / b;
    let met = match row.goal_for(&theirs.name) {
        Goal::AtLeast(g) => Some(r >= g),
        Goal::AtMost(g) => Some(r <= g),
        Goal::None => None,
    };
    Some((r, met))
}

fn goal_text(goal: Goal) -> String {
    match goal {
        Goal::AtLeast(g) if (g * 10.0).fract() != 0.0 => format!(">= {g:.2}x"),
        Goal::AtLeast(g) => format!(">= {g:.1}x"),
        Goal::AtMost(g) if (g - 1.0 / 3.0).abs() < 1e-9 => "<= 0.33x".into(),
        Goal::AtMost(g) => format!("<= {g:.1}x"),
        Goal::None => "".into(),
    }
}

/// The peers of `reports` that portcullis is compared with.
fn peers(reports: &[TargetReport]) -> Vec<&TargetReport> {
    (PEERS.iter())
        .filter_map(|p| reports.iter().find(|r| r.name == *p))
        .collect()
}

/// The side-by-side table; with `portcullis` and peers, per peer the ratio and the goal.
pub fn table(reports: &[TargetReport], streams: &[usize]) -> String {
    let ours = reports.iter().find(|r| r.name == "portcullis");
    let peers = match ours {
        Some(_) => peers(reports),
        None => Vec::new(),
    };
    let mut header = vec!["figure".to_owned()];
    header.extend(reports.iter().map(|r| r.name.clone()));
    for p in &peers {
        header.extend([
            format!("portcullis/{}", p.name),
            "goal".into(),
            "met".into(),
        ]);
    }
    let mut lines = vec![header];
    for row in rows(streams) {
        let mut line = vec![row.label.clone()];
        line.extend(reports.iter().map(|r| fmt((row.get)(r), row.unit)));
        for theirs in &peers {
            let goal = goal_text(row.goal_for(&theirs.name));
            match ours.and_then(|ours| ratio(&row, ours, theirs)) {
                Some((r, met)) => {
                    // Three decimals, so a miss by a hair rarely prints as the goal itself.
                    line.push(format!("{r:.3}x"));
                    line.push(goal);
                    line.push(met.map_or("", |m| if m { "yes" } else { "NO" }).into());
                }
                None => line.extend(["-".into(), goal, "".into()]),
            }
        }
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> = (line.iter().zip(&widths))
            .enumerate()
            .map(|(c, (cell, w))| match c {
                0 => format!("{cell:<w$}"),
                _ => format!("{cell:>w$}"),
            })
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        }
    }
    for r in reports {
        for f in &r.failures {
            out.push_str(&format!("note: {}: {f}\n", r.name));
        }
        if let Some(b) = r.background_max().filter(|b| *b > 0.25) {
            out.push_str(&format!(
                "note: {}: other work kept up to {b:.2} cores busy during a figure (noisy)\n",
                r.name
            ));
        }
    }
    out
}

/// The JSON document: settings, machine, per-target details, a flat summary and ratios.
pub fn json(reports: &[TargetReport], streams: &[usize], settings: Value) -> Value {
    let rows = rows(streams);
    let mut summary = serde_json::Map::new();
    for r in reports {
        let figures: serde_json::Map<String, Value> = rows
            .iter()
            .map(|row| (row.key.clone(), json!((row.get)(r))))
            .collect();
        summary.insert(r.name.clone(), Value::Object(figures));
    }
    let ours = reports.iter().find(|r| r.name == "portcullis");
    let ratios_over = |theirs: &TargetReport| {
        let ours = ours?;
        let map: serde_json::Map<String, Value> = (rows.iter())
            .map(|row| {
                let goal = goal_text(row.goal_for(&theirs.name));
                let value = ratio(row, ours, theirs)
                    .map(|(r, met)| json!({"ratio": r, "goal": goal, "met": met}));
                (row.key.clone(), json!(value))
            })
            .collect();
        Some(Value::Object(map))
    };
    let ratios: serde_json::Map<String, Value> = (peers(reports).into_iter())
        .filter_map(|p| Some((p.name.clone(), ratios_over(p)?)))
        .collect();
    let squid = ratios.get("squid").cloned();
    json!({
        "settings": settings,
        "machine": machine(),
        "summary": summary,
        "ratios_portcullis_over_squid": squid,
        "ratios_portcullis_over": ratios,
        "targets": reports,
    })
}

/// Cores, CPU model, kernel and default TCP congestion control of this machine (a pacing
/// algorithm such as BBR makes every loopback flow several times more expensive).
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = (cpuinfo.lines())
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .ok();
    let congestion = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map(|s| s.trim().to_owned())
        .ok();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": model,
        "kernel": kernel,
        "tcp_congestion_control": congestion,
    })
}
