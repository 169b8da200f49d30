//! New tunnels per second: workers loop connect, CONNECT, 1-byte echo, close; with the
//! CONNECT -> 200 and whole-cycle latency percentiles (hdrhistogram, microseconds) and the
//! proxy's CPU per connection.

use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use crate::client::{echo_byte, open_raw};
use crate::origin::MODE_ECHO;
use crate::target::Target;

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        (!h.is_empty()).then(|| Latency {
            samples: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

/// A histogram of 1 µs .. 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// What the workers of a closed-loop run counted in the measured window.
pub struct Tally {
    pub done: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub hist: Histogram<u64>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            done: 0,
            errors: 0,
            first_error: None,
            hist: histogram(),
        }
    }

    pub fn error(&mut self, e: impl ToString) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }

    pub fn merge(&mut self, other: Tally) {
        self.done += other.done;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.hist.add(&other.hist).expect("same histogram bounds");
    }
}

/// The measured window of a run: completions inside `[from, to)` count.
#[derive(Clone, Copy)]
pub struct Window {
    pub from: Instant,
    pub to: Instant,
}

impl Window {
    pub fn after(warmup: Duration, measure: Duration) -> Window {
        let from = Instant::now() + warmup;
        Window {
            from,
            to: from + measure,
        }
    }

    pub fn contains(&self, t: Instant) -> bool {
        self.from <= t && t < self.to
    }

    pub fn seconds(&self) -> f64 {
        (self.to - self.from).as_secs_f64()
    }
}

/// The new-tunnels figure.
#[derive(Debug, Clone, Serialize)]
pub struct Tunnels {
    pub workers: usize,
    pub per_second: f64,
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// CONNECT -> 200 (absent for the direct baseline). Not comparable between proxies
    /// that answer before connecting upstream (Traffic Server) and those that answer after.
    pub connect_latency: Option<Latency>,
    /// The whole cycle: connect, CONNECT, 200, 1-byte echo, close.
    pub cycle_latency: Option<Latency>,
    /// Proxy CPU (user + system) in the measured window per connection completed in it.
    pub proxy_cpu_us_per_connection: Option<f64>,
    /// Time the proxy's threads waited, runnable, for a core in the window, per connection
    /// completed: the share of the latency that is the scheduler's, not the proxy's work.
    pub proxy_wait_us_per_connection: Option<f64>,
    /// Cores the proxy used on average over the run (warm-up included).
    pub proxy_cores: Option<f64>,
    /// Cores busy with other work meanwhile.
    pub background_cores: Option<f64>,
}

/// Runs `workers` closed-loop workers for `warmup + measure`.
pub async fn run(
    target: &Target,
    origin: SocketAddr,
    workers: usize,
    warmup: Duration,
    measure: Duration,
) -> Tunnels {
    let window = Window::after(warmup, measure);
    let cpu = crate::sysstat::cpu_in_window(target.pid, window);
    let proxy = target.proxy;
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(async move {
            let (mut tally, mut cycles) = (Tally::new(), histogram());
            while Instant::now() < window.to {
                let start = Instant::now();
                let attempt = async {
                    let (mut stream, latency) = open_raw(proxy, origin).await?;
                    echo_byte(&mut stream, MODE_ECHO).await?;
                    drop(stream);
                    std::io::Result::Ok(latency)
                };
                match attempt.await {
                    Ok(latency) if window.contains(Instant::now()) => {
                        tally.done += 1;
                        if let Some(l) = latency {
                            tally.hist.saturating_record(l.as_micros().max(1) as u64);
                        }
                        cycles.saturating_record(start.elapsed().as_micros().max(1) as u64);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tally.error(e);
                        // Do not spin on a refusing proxy (or an exhausted port range).
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (tally, cycles)
        });
    }
    let (mut total, mut cycles) = (Tally::new(), histogram());
    while let Some(done) = tasks.join_next().await {
        if let Ok((tally, c)) = done {
            total.merge(tally);
            cycles.add(&c).expect("same histogram bounds");
        }
    }
    let cpu = cpu.await.ok().flatten();
    // Let the proxy (and the kernel) finish closing before the next figure.
    sleep(Duration::from_millis(500)).await;
    Tunnels {
        workers,
        per_second: total.done as f64 / window.seconds(),
        completed: total.done,
        errors: total.errors,
        first_error: total.first_error,
        connect_latency: Latency::of(&total.hist),
        cycle_latency: Latency::of(&cycles),
        proxy_cpu_us_per_connection: crate::sysstat::us_per(cpu.map(|u| u.cpu), total.done),
        proxy_wait_us_per_connection: crate::sysstat::us_per(
            cpu.and_then(|u| u.run_wait),
            total.done,
        ),
        proxy_cores: None,
        background_cores: None,
    }
}
