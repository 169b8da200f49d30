//! Worker threads: one single-threaded event loop each, accepting on its own listener descriptors.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::RunError;
use crate::listener::mtls::{self, TlsServer};
use crate::listener::{accept_loop, http1, tls};
use crate::state::Shared;
use crate::telemetry::Listener;

/// Starts `workers - 1` threads besides the caller's, each with a single-threaded event loop accepting on its
/// own descriptor of every data listener. The kernel hands each connection
/// to whichever thread accepts it first, and the connection stays there: no
/// task hops between threads, which keeps tail latency down on small
/// machines where the proxy shares its cores. The threads serve until the
/// drain is over (`shared.lifecycle.tracker` is closed and empty); each receiver
/// resolves when its thread has let go of `shared`.
pub(super) fn start_workers(
    workers: usize,
    shared: &Arc<Shared>,
    tls: &Option<Arc<TlsServer>>,
    accepting: &TaskTracker,
    stop: &CancellationToken,
    listeners: &[(Listener, TcpListener)],
) -> Result<Vec<tokio::sync::oneshot::Receiver<()>>, RunError> {
    let mut stopped = Vec::with_capacity(workers);
    for i in 1..workers {
        let mut own = Vec::with_capacity(listeners.len());
        for (kind, l) in listeners {
            let dup = socket2::SockRef::from(l)
                .try_clone()
                .map_err(RunError::Workers)?;
            own.push((*kind, std::net::TcpListener::from(dup)));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RunError::Workers)?;
        let shared = shared.clone();
        let tls = tls.clone();
        let accepting = accepting.clone();
        let stop = stop.clone();
        let (done, stopped_rx) = tokio::sync::oneshot::channel();
        stopped.push(stopped_rx);
        std::thread::Builder::new()
            .name(format!("portcullis-w{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut registered = Vec::with_capacity(own.len());
                    for (kind, l) in own {
                        match TcpListener::from_std(l) {
                            Ok(l) => registered.push((kind, l)),
                            Err(e) => tracing::error!(worker = i, error = %e, "cannot listen"),
                        }
                    }
                    spawn_accept_loops(&shared, &tls, &accepting, registered);
                    tokio::select! {
                        () = shared.lifecycle.tracker.wait() => {}
                        () = stop.cancelled() => {}
                    }
                });
                drop(runtime);
                let _ = done.send(());
            })
            .map_err(RunError::Workers)?;
    }
    tracing::info!(workers, "serving");
    Ok(stopped)
}

/// Accepts on `listeners` from the current thread's event loop; the
/// connections accepted are served there.
pub(super) fn spawn_accept_loops(
    shared: &Arc<Shared>,
    tls: &Option<Arc<TlsServer>>,
    accepting: &TaskTracker,
    listeners: Vec<(Listener, TcpListener)>,
) {
    for (kind, l) in listeners {
        let shared = shared.clone();
        match kind {
            Listener::Explicit => {
                accepting.spawn(accept_loop(shared, l, kind, http1::serve_explicit))
            }
            Listener::ExplicitTls => {
                let Some(tls) = tls.clone() else {
                    tracing::error!("the TLS listener is bound without its configuration");
                    continue;
                };
                accepting.spawn(accept_loop(
                    shared,
                    l,
                    kind,
                    move |sh, stream, peer, slot| mtls::serve(sh, tls.clone(), stream, peer, slot),
                ))
            }
            Listener::TransparentTls => accepting.spawn(accept_loop(shared, l, kind, tls::serve)),
            Listener::TransparentHttp => {
                accepting.spawn(accept_loop(shared, l, kind, http1::serve_transparent))
            }
        };
    }
}
