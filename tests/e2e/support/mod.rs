//! Shared fixtures: the binary under test, a programmable DNS server, plain and TLS origins.
// Each test binary uses only some fixtures; unused ones must not warn.
#![allow(dead_code)]

pub mod client;
pub mod dns;
pub mod log_line;
pub mod metrics;
pub mod netns;
pub mod origin;
pub mod proxy;
pub mod tls;
pub mod websocket;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A background task that is aborted (closing its sockets) when this guard is dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds a TCP listener on 127.0.0.1 with an OS-chosen port.
pub async fn bind_loopback() -> TcpListener {
    TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind 127.0.0.1:0")
}

/// Accepts connections forever, counting each one in `accepted` before spawning `serve`
/// for it. Connection tasks live in a `JoinSet` owned by the accept task, so aborting
/// the returned guard also closes every open connection.
pub fn spawn_accept_loop<F, Fut>(
    listener: TcpListener,
    accepted: Arc<AtomicUsize>,
    serve: F,
) -> AbortOnDrop
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    AbortOnDrop(tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _peer)) = listener.accept().await else {
                // e.g. EMFILE: don't spin, let other tasks (and connection closes) run.
                tokio::task::yield_now().await;
                continue;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            conns.spawn(serve(stream));
            while conns.try_join_next().is_some() {}
        }
    }))
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `portcullis` binary cargo built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portcullis"))
}

/// The repository root, where `config/` and `tests/policies/` live.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `portcullis ARGS...` from the repository root and waits for it.
pub fn portcullis(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(root())
        .output()
        .expect("run portcullis")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A policy written to a fresh temporary file, removed on drop.
pub struct TempPolicy {
    pub path: PathBuf,
}

impl TempPolicy {
    pub fn new(yaml: &str) -> TempPolicy {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-test-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, yaml).expect("write temp policy");
        TempPolicy { path }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempPolicy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
