//! Zero-copy relaying for tunnels on Linux: `splice(2)` moves bytes from the
//! source socket into a pipe and from the pipe into the destination socket,
//! without copying them through user space.
//!
//! A pipe is held only while a tunnel is busy: it is taken when bytes arrive
//! and given back once a burst moved less than a pipe's worth, so an idle
//! tunnel costs no extra file descriptors. Given-back pipes wait in a small
//! per-thread pool for the next burst.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::tunnel::{Copied, copy_step};

/// Pipe capacity asked for; the kernel may grant less (`/proc/sys/fs/pipe-max-size`).
const PIPE: usize = 1024 * 1024;

/// Empty pipes kept per worker thread for the next burst, so that a short
/// exchange (a request, an echo, an EOF) does not pay for `pipe2`, resizing
/// and two `close` calls. At most this many pipes (twice as many
/// descriptors) per thread sit unused.
pub(crate) const POOL_MAX: usize = 4;

/// A pipe between two splices. It goes back to the pool only through
/// [`Pipe::give_back`], and only when empty; a pipe dropped with bytes in
/// it (an error mid-burst, a cancelled tunnel) is closed.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: usize,
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    /// A pooled pipe, or a new one; `None` when no descriptor is left.
    fn take() -> Option<Pipe> {
        if let Some(pipe) = POOL.with_borrow_mut(Vec::pop) {
            return Some(pipe);
        }
        let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
        let size = fcntl_setpipe_size(&w, PIPE).unwrap_or(64 * 1024);
        Some(Pipe { r, w, size })
    }

    /// Returns an empty pipe to this thread's pool (or closes it when the pool is full).
    fn give_back(self) {
        POOL.with_borrow_mut(|pool| {
            if pool.len() < POOL_MAX {
                pool.push(self);
            }
        });
    }
}

/// Relays until EOF (then shuts the write side down), like the copying
/// loop in `tunnel.rs`. Errors other than "would block" end the relay.
///
/// Small exchanges (a request, an echo, a handshake) are copied: for a few
/// bytes `recvfrom` + `sendto` cost less than two splices through a pipe and
/// a third that finds the socket drained. Once a read fills the copy buffer
/// the direction carries bulk data, and it is spliced from then on
/// (switching back and forth would copy the first buffer of every burst).
pub(crate) async fn one_way(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    count: &AtomicU64,
    touch: &impl Fn(),
) -> io::Result<()> {
    loop {
        match copy_step(&mut r, &mut w, count, touch).await? {
            Copied::Eof => return w.shutdown().await,
            Copied::Bytes { full: false } => {}
            Copied::Bytes { full: true } => {
                if splice_while_busy(&r, &w, count, touch).await? == Copied::Eof {
                    return w.shutdown().await;
                }
            }
        }
    }
}

/// Splices from `r` to `w` until EOF. Returns `Bytes` early only when no
/// pipe could be had (no descriptor left): the caller copies from there.
async fn splice_while_busy(
    r: &OwnedReadHalf,
    w: &OwnedWriteHalf,
    count: &AtomicU64,
    touch: &impl Fn(),
) -> io::Result<Copied> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let mut pipe: Option<Pipe> = None;
    loop {
        r.readable().await?;
        if pipe.is_none() {
            pipe = Pipe::take();
        }
        let Some(Pipe {
            r: pipe_r,
            w: pipe_w,
            size,
        }) = &pipe
        else {
            return Ok(Copied::Bytes { full: false });
        };
        let size = *size;
        let mut burst = 0;
        let mut next_yield = size;
        loop {
            let src = r.as_ref();
            let moved = src.try_io(Interest::READABLE, || {
                Ok(splice(src.as_fd(), None, pipe_w, None, size, flags)?)
            });
            let mut in_pipe = match moved {
                Ok(0) => {
                    // The pipe is empty: every splice in was spliced out.
                    if let Some(pipe) = pipe.take() {
                        pipe.give_back();
                    }
                    return Ok(Copied::Eof);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            burst += in_pipe;
            while in_pipe > 0 {
                let dst = w.as_ref();
                match dst.try_io(Interest::WRITABLE, || {
                    Ok(splice(pipe_r, None, dst.as_fd(), None, in_pipe, flags)?)
                }) {
                    Ok(n) => {
                        in_pipe -= n;
                        count.fetch_add(n as u64, Ordering::Relaxed);
                        touch();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
                    Err(e) => return Err(e),
                }
            }
            // `try_io` spends no scheduling budget: a source that never runs dry
            // would keep this thread's other connections (and, on the main
            // thread, signals and the admin listener) waiting. Yield after each
            // pipe's worth; the pipe is empty here.
            if burst >= next_yield {
                next_yield = burst + size;
                tokio::task::yield_now().await;
            }
        }
        // A quiet tunnel gives its (empty) pipe back; a busy one keeps it for the next burst.
        if burst < size
            && let Some(pipe) = pipe.take()
        {
            pipe.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// (read half to relay from, write half to relay into, the test's two ends).
    async fn relay_ends() -> (OwnedReadHalf, OwnedWriteHalf, TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let src_peer = TcpStream::connect(addr).await.unwrap();
        let (src, _) = l.accept().await.unwrap();
        let dst_peer = TcpStream::connect(addr).await.unwrap();
        let (dst, _) = l.accept().await.unwrap();
        (src.into_split().0, dst.into_split().1, src_peer, dst_peer)
    }

    fn pooled() -> usize {
        POOL.with_borrow(Vec::len)
    }

    /// Relays `payload` through `one_way` on fresh sockets; returns what arrived.
    async fn relay_once(payload: &[u8]) -> Vec<u8> {
        let (r, w, mut src_peer, mut dst_peer) = relay_ends().await;
        let count = AtomicU64::new(0);
        let relaying = one_way(r, w, &count, &|| {});
        let driving = async {
            src_peer.write_all(payload).await.unwrap();
            src_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            dst_peer.read_to_end(&mut got).await.unwrap();
            got
        };
        let (res, got) = tokio::join!(relaying, driving);
        res.unwrap();
        assert_eq!(count.load(Ordering::Relaxed), payload.len() as u64);
        got
    }

    /// Two bulk relays one after the other on one thread: the second reuses
    /// the first one's pipe, and carries its own bytes only.
    #[tokio::test]
    async fn an_emptied_pipe_is_reused_and_carries_nothing_over() {
        POOL.with_borrow_mut(Vec::clear);
        for fill in [1u8, 2] {
            let payload = vec![fill; 4 * crate::tunnel::BUF + 17];
            assert!(relay_once(&payload).await == payload);
            assert_eq!(pooled(), 1, "the emptied pipe went back to the pool");
        }
    }

    /// A small exchange is copied: it takes no pipe (none is made, none pooled).
    #[tokio::test]
    async fn small_exchanges_take_no_pipe() {
        POOL.with_borrow_mut(Vec::clear);
        for payload in [b"x".as_slice(), b"GET / HTTP/1.1\r\n\r\n".as_slice()] {
            assert_eq!(relay_once(payload).await, payload);
        }
        assert_eq!(pooled(), 0, "no pipe was made for a few bytes");
    }
}
