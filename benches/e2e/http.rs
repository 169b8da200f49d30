//! Plain-HTTP forwarding: keep-alive clients sending absolute-form `GET /bytes/N` through the
//! proxy (origin-form straight to the origin for the direct baseline), as fast as possible.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use crate::client::{ORIGIN_HOST, ResponseReader, connect};
use crate::target::Target;
use crate::tunnels::{Latency, Tally, Window};

/// The forwarding figure.
#[derive(Debug, Clone, Serialize)]
pub struct Forwarding {
    pub clients: usize,
    pub body_bytes: usize,
    pub requests_per_second: f64,
    pub completed: u64,
    pub errors: u64,
    /// Connections the server closed (each is reopened).
    pub reconnects: u64,
    pub first_error: Option<String>,
    /// Request written -> whole response read.
    pub latency: Option<Latency>,
    /// Proxy CPU (user + system) in the measured window per request completed in it.
    pub proxy_cpu_us_per_request: Option<f64>,
    /// Time the proxy's threads waited, runnable, for a core in the window, per request
    /// completed: the share of the latency that is the scheduler's, not the proxy's work.
    pub proxy_wait_us_per_request: Option<f64>,
    /// Cores the proxy used on average over the run (warm-up included).
    pub proxy_cores: Option<f64>,
    /// Cores busy with other work meanwhile.
    pub background_cores: Option<f64>,
}

/// The request bytes: absolute-form through a proxy, origin-form direct.
fn request(proxy: bool, origin: SocketAddr, body: usize) -> Vec<u8> {
    let port = origin.port();
    let target = match proxy {
        true => format!("http://{ORIGIN_HOST}:{port}/bytes/{body}"),
        false => format!("/bytes/{body}"),
    };
    format!(
        "GET {target} HTTP/1.1\r\nHost: {ORIGIN_HOST}:{port}\r\nUser-Agent: portcullis-e2e\r\n\r\n"
    )
    .into_bytes()
}

/// One request/response on `stream`; returns whether the server will close.
async fn exchange(
    stream: &mut TcpStream,
    reader: &mut ResponseReader,
    req: &[u8],
    body: usize,
) -> std::io::Result<bool> {
    stream.write_all(req).await?;
    let resp = reader.read(stream).await?;
    if resp.status != 200 || resp.body_len != body {
        return Err(std::io::Error::other(format!(
            "got status {} with {} body bytes (want 200, {body})",
            resp.status, resp.body_len
        )));
    }
    Ok(resp.close)
}

/// Runs `clients` keep-alive clients for `warmup + measure`.
pub async fn run(
    target: &Target,
    origin: SocketAddr,
    clients: usize,
    body: usize,
    warmup: Duration,
    measure: Duration,
) -> Forwarding {
    let window = Window::after(warmup, measure);
    let cpu = crate::sysstat::cpu_in_window(target.pid, window);
    let dial = target.proxy.unwrap_or(origin);
    let req = request(target.proxy.is_some(), origin, body);
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let req = req.clone();
        tasks.spawn(async move {
            let (mut tally, mut reconnects) = (Tally::new(), 0u64);
            let mut conn: Option<(TcpStream, ResponseReader)> = None;
            while Instant::now() < window.to {
                let (stream, reader) = match &mut conn {
                    Some(c) => (&mut c.0, &mut c.1),
                    None => match connect(dial).await {
                        Ok(s) => {
                            let c = conn.insert((s, ResponseReader::new()));
                            (&mut c.0, &mut c.1)
                        }
                        Err(e) => {
                            tally.error(e);
                            sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let start = Instant::now();
                match exchange(stream, reader, &req, body).await {
                    Ok(close) => {
                        let now = Instant::now();
                        if window.contains(now) {
                            tally.done += 1;
                            let us = (now - start).as_micros().max(1) as u64;
                            tally.hist.saturating_record(us);
                        }
                        if close {
                            reconnects += 1;
                            conn = None;
                        }
                    }
                    Err(e) => {
                        tally.error(e);
                        conn = None;
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (tally, reconnects)
        });
    }
    let (mut total, mut reconnects) = (Tally::new(), 0);
    while let Some(done) = tasks.join_next().await {
        if let Ok((tally, r)) = done {
            total.merge(tally);
            reconnects += r;
        }
    }
    let cpu = cpu.await.ok().flatten();
    sleep(Duration::from_millis(300)).await;
    Forwarding {
        clients,
        body_bytes: body,
        requests_per_second: total.done as f64 / window.seconds(),
        completed: total.done,
        errors: total.errors,
        reconnects,
        first_error: total.first_error,
        latency: Latency::of(&total.hist),
        proxy_cpu_us_per_request: crate::sysstat::us_per(cpu.map(|u| u.cpu), total.done),
        proxy_wait_us_per_request: crate::sysstat::us_per(cpu.and_then(|u| u.run_wait), total.done),
        proxy_cores: None,
        background_cores: None,
    }
}
