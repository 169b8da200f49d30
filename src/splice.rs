//! Zero-copy relaying for tunnels on Linux: `splice(2)` moves bytes from the
//! source socket into a pipe and from the pipe into the destination socket,
//! without copying them through user space.
//!
//! The pipe exists only while bytes are moving: an idle tunnel holds none,
//! so it costs no extra file descriptors.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Bytes moved per splice call (the pipe's default capacity is 64 KiB).
const CHUNK: usize = 64 * 1024;

/// Relays until EOF (then shuts the write side down), like the copying
/// loop in `tunnel.rs`. Errors other than "would block" end the relay.
pub async fn one_way(
    r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    count: &AtomicU64,
    touch: &impl Fn(),
) -> io::Result<()> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    loop {
        r.readable().await?;
        let pipe = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK);
        let Ok((pipe_r, pipe_w)) = pipe else {
            // No descriptor for a pipe (EMFILE): copy this burst instead.
            if crate::tunnel::copy_burst(&r, &mut w, count, touch).await? {
                return w.shutdown().await;
            }
            continue;
        };
        let (pipe_r, pipe_w): (OwnedFd, OwnedFd) = (pipe_r, pipe_w);
        loop {
            let src = r.as_ref();
            let moved = src.try_io(Interest::READABLE, || {
                Ok(splice(src.as_fd(), None, &pipe_w, None, CHUNK, flags)?)
            });
            let mut in_pipe = match moved {
                Ok(0) => return w.shutdown().await,
                Ok(n) => n,
                // Drained for now: give the pipe back and wait for more.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            while in_pipe > 0 {
                let dst = w.as_ref();
                dst.writable().await?;
                match dst.try_io(Interest::WRITABLE, || {
                    Ok(splice(&pipe_r, None, dst.as_fd(), None, in_pipe, flags)?)
                }) {
                    Ok(n) => {
                        in_pipe -= n;
                        count.fetch_add(n as u64, Ordering::Relaxed);
                        touch();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}
