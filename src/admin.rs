//! The admin listener: `/metrics`, `/status`, `/healthz`, `/readyz`, with a bounded number
//! of connections ([`ADMIN_MAX_CONNECTIONS`]).

mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::limits::{ACCEPT_BACKOFF, ADMIN_MAX_CONNECTIONS};
use crate::listener::{Body, full};
use crate::state::Lifecycle;
use crate::telemetry::metrics::{Format, Metrics};

/// What the admin listener reads. All of it is snapshots and atomics: no request waits
/// on the data path, a reload, or a log sink.
pub(crate) struct Admin {
    pub metrics: Arc<Metrics>,
    pub lifecycle: Lifecycle,
    /// `--policy`, as given.
    pub policy_path: PathBuf,
    /// Every bound listener by kind, this one included.
    pub listeners: Vec<(&'static str, SocketAddr)>,
    /// Which proxy this is (the audit records' `instance`).
    pub instance: Arc<str>,
}

/// Serves admin requests until the process exits (it stays up while draining,
/// so orchestrators can watch `/readyz` turn 503).
pub(crate) async fn serve(admin: Arc<Admin>, header_timeout: Duration, listener: TcpListener) {
    // Owned here: aborting this task closes every admin connection too.
    let mut conns = tokio::task::JoinSet::new();
    let slots = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let open = Arc::new(Open::default());
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                open.evict();
                // The evicted connection's task gives its slot back as it ends.
                match slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return, // never closed
                }
            }
        };
        let admin = admin.clone();
        let (id, close) = open.add();
        let open = open.clone();
        conns.spawn(async move {
            let _slot = slot;
            let svc = service_fn({
                let open = open.clone();
                move |req| {
                    let busy = open.busy(id);
                    let resp = route(&admin, &req);
                    async move {
                        // Idle again once the response is written (or abandoned).
                        Ok::<_, Infallible>(resp.map(|body| {
                            body.map_frame(move |frame| {
                                let _ = &busy;
                                frame
                            })
                            .boxed_unsync()
                        }))
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                () = close.cancelled() => {}
            }
            open.remove(id);
        });
    }
}

/// The admin connections open, and which of them are idle since when.
#[derive(Default)]
struct Open {
    conns: Mutex<Conns>,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    list: Vec<Tracked>,
}

struct Tracked {
    id: u64,
    /// Requests in progress (HTTP/1: zero or one).
    busy: usize,
    /// When it last became idle (or busy).
    since: Instant,
    close: CancellationToken,
}

/// Marks a connection busy while it lives.
struct Busy {
    open: Arc<Open>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.open
            .update(self.id, |t| t.busy = t.busy.saturating_sub(1));
    }
}

impl Open {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new (idle) connection; cancelling the token closes it.
    fn add(&self) -> (u64, CancellationToken) {
        let mut conns = self.lock();
        let id = conns.next_id;
        conns.next_id += 1;
        let close = CancellationToken::new();
        conns.list.push(Tracked {
            id,
            busy: 0,
            since: Instant::now(),
            close: close.clone(),
        });
        (id, close)
    }

    fn busy(self: &Arc<Self>, id: u64) -> Busy {
        self.update(id, |t| t.busy += 1);
        Busy {
            open: self.clone(),
            id,
        }
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut Tracked)) {
        if let Some(t) = self.lock().list.iter_mut().find(|t| t.id == id) {
            change(t);
            t.since = Instant::now();
        }
    }

    fn remove(&self, id: u64) {
        self.lock().list.retain(|t| t.id != id);
    }

    /// Closes the connection idle longest or, when every one is in the middle
    /// of a request, the one busy longest (a reader that stalls a response).
    fn evict(&self) {
        let mut conns = self.lock();
        let victim = (conns.list.iter().enumerate())
            .min_by_key(|(_, t)| (t.busy > 0, t.since, t.id))
            .map(|(i, _)| i);
        if let Some(i) = victim {
            let t = conns.list.swap_remove(i);
            t.close.cancel();
        }
    }
}

fn route(admin: &Admin, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let lifecycle = &admin.lifecycle;
    match req.uri().path() {
        "/metrics" => {
            let accept = req.headers().get(header::ACCEPT);
            let format = Format::negotiate(accept.and_then(|a| a.to_str().ok()));
            let mut resp = Response::new(full(admin.metrics.encode_as(format)));
            let content_type = HeaderValue::from_static(format.content_type());
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
            resp
        }
        "/status" => {
            let mut resp = Response::new(full(status::render(admin)));
            let content_type = HeaderValue::from_static("application/json");
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if lifecycle.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" if lifecycle.draining.is_cancelled() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /status, /healthz or /readyz\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_takes_the_longest_idle_then_the_longest_busy() {
        let open = Arc::new(Open::default());
        let (a, close_a) = open.add();
        let (b, close_b) = open.add();
        let (c, close_c) = open.add();
        let (d, close_d) = open.add();
        let busy_a = open.busy(a);
        // b was used since and is idle again, more recently than c and d.
        drop(open.busy(b));
        let closed = |tokens: [&CancellationToken; 4]| tokens.map(|t| t.is_cancelled());
        let all = [&close_a, &close_b, &close_c, &close_d];
        let steps = [
            ("idle since accept, oldest", [false, false, true, false]),
            ("idle since accept, next", [false, false, true, true]),
            ("idle again after a request", [false, true, true, true]),
            ("only a busy one left", [true, true, true, true]),
        ];
        for (name, want) in steps {
            open.evict();
            assert_eq!(closed(all), want, "{name}");
        }
        drop(busy_a);
        let _ = (c, d);
        assert!(open.lock().list.is_empty());
    }
}
