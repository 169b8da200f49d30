//! RSS per idle tunnel: the proxy's VmRSS before and after N open, idle CONNECT tunnels to the
//! echo origin (each carried one byte each way first), once RSS has settled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

use crate::client::{echo_bytes, open_raw};
use crate::target::Target;

/// Tunnels being opened at once.
const OPENING: usize = 64;

/// Bound on opening all tunnels.
const OPEN_WITHIN: Duration = Duration::from_secs(90);

/// Bound on waiting for RSS to settle.
const SETTLE_WITHIN: Duration = Duration::from_secs(10);

/// The idle-tunnel figure.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub requested: usize,
    /// Bytes each tunnel echoed before going idle.
    pub echoed_bytes: usize,
    pub opened: usize,
    pub errors: u64,
    pub first_error: Option<String>,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    /// (after - before) / opened, in KiB.
    pub kb_per_tunnel: f64,
    pub open_seconds: f64,
    /// Cores busy with other work meanwhile.
    pub background_cores: Option<f64>,
}

/// Polls VmRSS every 500 ms until two reads differ by less than 1% (bounded).
async fn settled_rss(target: &Target) -> Option<u64> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut last = target.rss_kb()?;
    loop {
        sleep(Duration::from_millis(500)).await;
        let now = target.rss_kb()?;
        if now.abs_diff(last) * 100 < last.max(1) || Instant::now() > deadline {
            return Some(now);
        }
        last = now;
    }
}

/// Opens `n` tunnels, keeps them idle, and reads the proxy's RSS growth.
pub async fn run(
    target: &Target,
    origin: SocketAddr,
    n: usize,
    echo: usize,
) -> Result<Idle, String> {
    if target.proxy.is_none() || target.pid.is_none() {
        return Err("needs a proxy with a known PID".into());
    }
    let before = settled_rss(target).await.ok_or("cannot read VmRSS")?;
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(OPENING));
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        let proxy = target.proxy;
        tasks.spawn(async move {
            let _permit = permit;
            let (mut stream, _) = open_raw(proxy, origin).await?;
            echo_bytes(&mut stream, echo).await?;
            std::io::Result::Ok(stream)
        });
        if start.elapsed() > OPEN_WITHIN {
            break;
        }
    }
    let mut open = Vec::with_capacity(n);
    let (mut errors, mut first_error) = (0, None);
    let collect = async {
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(stream)) => open.push(stream),
                Ok(Err(e)) => {
                    errors += 1;
                    first_error.get_or_insert(e.to_string());
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
    };
    let _ = timeout(OPEN_WITHIN, collect).await;
    let open_seconds = start.elapsed().as_secs_f64();
    let after = settled_rss(target).await.ok_or("cannot read VmRSS")?;
    let opened = open.len();
    // Close them all and give the proxy time to tear them down before the next figure.
    drop(open);
    tasks.abort_all();
    sleep(Duration::from_secs(1)).await;
    if opened == 0 {
        return Err(format!(
            "no tunnel opened: {}",
            first_error.unwrap_or_default()
        ));
    }
    Ok(Idle {
        requested: n,
        echoed_bytes: echo,
        opened,
        errors,
        first_error,
        rss_before_kb: before,
        rss_after_kb: after,
        kb_per_tunnel: (after as f64 - before as f64) / opened as f64,
        open_seconds,
        background_cores: None,
    })
}
