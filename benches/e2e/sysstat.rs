//! Readings from /proc: a process's CPU time, RSS and open-files limit, and how busy the rest of the machine was
//! while a figure ran (the rig is shared, so every figure records its background load).

use std::sync::OnceLock;

use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use crate::tunnels::Window;

/// File descriptors this process needs besides the idle tunnels.
const SPARE_FDS: u64 = 256;

/// Clock ticks per second (`getconf CLK_TCK`, asked once; 100 when unavailable).
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Utime + stime (fields 14 and 15 of /proc/PID/stat) of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may contain spaces: state is field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) as f64 / clk_tck())
}

/// VmRSS of `pid`, in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy CPU seconds of the whole machine (user, nice, system, steal in /proc/stat).
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already in user). irq and
    // softirq are left out: on loopback most of that is our own traffic, which the kernel
    // charges to no process.
    let busy = v.get(0..3)?.iter().sum::<u64>() + v.get(7)?;
    Some(busy as f64 / clk_tck())
}

/// A snapshot to measure how many cores other work kept busy over an interval.
pub struct Background {
    at: Instant,
    busy: Option<f64>,
    ours: Option<f64>,
    proxy_before: Option<f64>,
    pid: Option<u32>,
}

impl Background {
    /// Starts the interval; `proxy` is the measured proxy (its CPU is not background).
    pub fn start(proxy: Option<u32>) -> Background {
        Background {
            at: Instant::now(),
            busy: machine_busy_seconds(),
            ours: Self::ours(proxy),
            proxy_before: proxy.and_then(cpu_seconds),
            pid: proxy,
        }
    }

    fn ours(proxy: Option<u32>) -> Option<f64> {
        let me = cpu_seconds(std::process::id())?;
        match proxy {
            Some(pid) => Some(me + cpu_seconds(pid)?),
            None => Some(me),
        }
    }

    /// Average cores the proxy used since `start`.
    pub fn proxy_cores(&self) -> Option<f64> {
        let secs = self.at.elapsed().as_secs_f64();
        let now = cpu_seconds(self.pid?)?;
        let before = self.proxy_before?;
        (secs > 0.0).then(|| (now - before) / secs)
    }

    /// Average cores busy with anything but this harness and the proxy since `start`.
    pub fn cores(&self) -> Option<f64> {
        let secs = self.at.elapsed().as_secs_f64();
        let busy = machine_busy_seconds()? - self.busy?;
        let ours = Self::ours(self.pid)? - self.ours?;
        (secs > 0.0).then(|| ((busy - ours) / secs).max(0.0))
    }
}

/// Makes sure this process may hold `tunnels` client sockets plus the origin's ends:
/// raises the soft RLIMIT_NOFILE (with `prlimit`) when the hard limit allows.
pub fn ensure_fd_limit(tunnels: usize) -> Result<(), String> {
    let need = tunnels as u64 * 2 + SPARE_FDS;
    let (soft, hard) = nofile().ok_or("cannot read /proc/self/limits")?;
    if soft >= need {
        return Ok(());
    }
    if hard >= need {
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={need}:{hard}")])
            .status();
    }
    match nofile() {
        Some((soft, _)) if soft >= need => Ok(()),
        _ => Err(format!(
            "{tunnels} idle tunnels need {need} open files in this process (the origin holds \
             the other end of each), but the limit is {soft} (hard {hard}): run \
             `ulimit -n 65536` first, or pass a smaller --idle-tunnels"
        )),
    }
}

/// The soft and hard `Max open files` of this process.
fn nofile() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line["Max open files".len()..].split_whitespace();
    let parse = |s: Option<&str>| match s? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    Some((parse(nums.next())?, parse(nums.next())?))
}

/// Seconds the threads of `pid` spent runnable but waiting for a core
/// (`run_delay`, the second field of /proc/PID/task/TID/schedstat), summed
/// over the threads alive now; `None` without schedstats.
pub fn run_wait_seconds(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns: u64 = 0;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        ns += stat.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

/// What a proxy used inside a measured window.
#[derive(Clone, Copy, Debug)]
pub struct WindowUse {
    /// User + system CPU seconds.
    pub cpu: f64,
    /// Seconds its threads waited, runnable, for a core (see [`run_wait_seconds`]).
    pub run_wait: Option<f64>,
}

/// CPU seconds `pid` used inside `window`, and how long its threads waited for a core
/// meanwhile (read at its start and end by a task of its own, so the warm-up and the
/// wind-down are left out).
pub fn cpu_in_window(pid: Option<u32>, window: Window) -> JoinHandle<Option<WindowUse>> {
    tokio::spawn(async move {
        let pid = pid?;
        sleep_until(window.from).await;
        let (cpu, wait) = (cpu_seconds(pid)?, run_wait_seconds(pid));
        sleep_until(window.to).await;
        let run_wait = match (wait, run_wait_seconds(pid)) {
            (Some(before), Some(after)) => Some((after - before).max(0.0)),
            _ => None,
        };
        Some(WindowUse {
            cpu: cpu_seconds(pid)? - cpu,
            run_wait,
        })
    })
}

/// Microseconds of proxy CPU per completed unit (connection, request) in a window.
pub fn us_per(cpu: Option<f64>, done: u64) -> Option<f64> {
    (done > 0).then_some(cpu? * 1e6 / done as f64)
}
