//! Bulk throughput through CONNECT tunnels (or direct): download from the source origin or
//! upload into the sink, with N parallel streams, and the proxy's CPU time meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use crate::client::open_raw;
use crate::origin::{BULK_BUF, MODE_SINK, MODE_SOURCE};
use crate::sysstat::cpu_seconds;
use crate::target::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Origin -> client.
    Download,
    /// Client -> origin.
    Upload,
}

/// One throughput figure.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub direction: Direction,
    pub streams: usize,
    pub gbit_per_s: f64,
    /// Bytes moved in the measured interval.
    pub bytes: u64,
    pub seconds: f64,
    /// Proxy CPU (user + system) during the measured interval.
    pub proxy_cpu_seconds: Option<f64>,
    /// Proxy CPU seconds per GiB moved in this run.
    pub proxy_cpu_seconds_per_gib: Option<f64>,
    /// CPU of this harness (load generator and origins: the two ends of every
    /// stream) during the measured interval. On a saturated rig this, not the
    /// proxy, can be what caps a figure: compare it across directions.
    pub harness_cpu_seconds: Option<f64>,
    /// Streams that ended with an error (or early) before the interval was over.
    pub failed_streams: u64,
    /// Cores busy with other work meanwhile.
    pub background_cores: Option<f64>,
}

/// Measures `streams` parallel streams in `direction` for `measure`, after `warmup`.
pub async fn run(
    target: &Target,
    origin: SocketAddr,
    direction: Direction,
    streams: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<Throughput, String> {
    let moved = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..streams {
        let (mut stream, _) = open_raw(target.proxy, origin)
            .await
            .map_err(|e| format!("{} {direction:?}: open stream: {e}", target.name))?;
        let header: Vec<u8> = match direction {
            Direction::Download => [&[MODE_SOURCE][..], &u64::MAX.to_be_bytes()].concat(),
            Direction::Upload => vec![MODE_SINK],
        };
        stream.write_all(&header).await.map_err(|e| e.to_string())?;
        let (moved, failed) = (moved.clone(), failed.clone());
        tasks.spawn(async move {
            let mut buf = vec![b'u'; BULK_BUF];
            loop {
                let step = match direction {
                    Direction::Download => stream.read(&mut buf).await,
                    Direction::Upload => stream.write(&buf).await,
                };
                match step {
                    Ok(0) | Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(n) => moved.fetch_add(n as u64, Ordering::Relaxed),
                };
            }
        });
    }
    sleep(warmup).await;
    let harness = || cpu_seconds(std::process::id());
    let (t0, b0, c0, h0) = (
        Instant::now(),
        moved.load(Ordering::Relaxed),
        target.cpu_seconds(),
        harness(),
    );
    sleep(measure).await;
    let (t1, b1, c1, h1) = (
        Instant::now(),
        moved.load(Ordering::Relaxed),
        target.cpu_seconds(),
        harness(),
    );
    let failed_streams = failed.load(Ordering::Relaxed);
    // Dropping the tasks closes the client ends; the proxy tears the tunnels down.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    sleep(Duration::from_millis(300)).await;
    let seconds = (t1 - t0).as_secs_f64();
    let bytes = b1 - b0;
    let proxy_cpu_seconds = c0.zip(c1).map(|(a, b)| b - a);
    let gib = bytes as f64 / (1u64 << 30) as f64;
    Ok(Throughput {
        direction,
        streams,
        gbit_per_s: bytes as f64 * 8.0 / seconds / 1e9,
        bytes,
        seconds,
        proxy_cpu_seconds,
        proxy_cpu_seconds_per_gib: proxy_cpu_seconds.filter(|_| gib > 0.0).map(|c| c / gib),
        harness_cpu_seconds: h0.zip(h1).map(|(a, b)| b - a),
        failed_streams,
        background_cores: None,
    })
}

/// Proxy CPU seconds per GiB over all `runs` together.
pub fn cpu_per_gib(runs: &[Throughput]) -> Option<f64> {
    per_gib(runs.iter(), |r| r.proxy_cpu_seconds)
}

/// Harness (load generator and origins) CPU seconds per GiB over the `direction` runs.
pub fn harness_cpu_per_gib(runs: &[Throughput], direction: Direction) -> Option<f64> {
    let runs = runs.iter().filter(|r| r.direction == direction);
    per_gib(runs, |r| r.harness_cpu_seconds)
}

fn per_gib<'a>(
    runs: impl Iterator<Item = &'a Throughput> + Clone,
    cpu: impl Fn(&Throughput) -> Option<f64>,
) -> Option<f64> {
    let total: Option<f64> = runs.clone().map(cpu).sum();
    let bytes: u64 = runs.map(|r| r.bytes).sum();
    let gib = bytes as f64 / (1u64 << 30) as f64;
    total.filter(|_| gib > 0.0).map(|c| c / gib)
}
