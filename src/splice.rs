//! Zero-copy relaying for tunnels on Linux: `splice(2)` moves bytes from the
//! source socket into a pipe and from the pipe into the destination socket,
//! without copying them through user space.
//!
//! A pipe is held only while a tunnel is busy: it is made when bytes arrive
//! and given back once a burst moved less than a pipe's worth, so an idle
//! tunnel costs no extra file descriptors.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Pipe capacity asked for; the kernel may grant less (`/proc/sys/fs/pipe-max-size`).
const PIPE: usize = 1024 * 1024;

/// Relays until EOF (then shuts the write side down), like the copying
/// loop in `tunnel.rs`. Errors other than "would block" end the relay.
pub async fn one_way(
    r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    count: &AtomicU64,
    touch: &impl Fn(),
) -> io::Result<()> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let mut pipe: Option<(OwnedFd, OwnedFd, usize)> = None;
    loop {
        r.readable().await?;
        if pipe.is_none() {
            pipe = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)
                .ok()
                .map(|(pr, pw)| {
                    let size = fcntl_setpipe_size(&pw, PIPE).unwrap_or(64 * 1024);
                    (pr, pw, size)
                });
        }
        let Some((pipe_r, pipe_w, size)) = &pipe else {
            // No descriptor for a pipe (EMFILE): copy this burst instead.
            if crate::tunnel::copy_burst(&r, &mut w, count, touch).await? {
                return w.shutdown().await;
            }
            continue;
        };
        let mut burst = 0;
        loop {
            let src = r.as_ref();
            let moved = src.try_io(Interest::READABLE, || {
                Ok(splice(src.as_fd(), None, pipe_w, None, *size, flags)?)
            });
            let mut in_pipe = match moved {
                Ok(0) => return w.shutdown().await,
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
        }
        // A quiet tunnel gives its pipe back; a busy one keeps it for the next burst.
        if burst < *size {
            pipe = None;
        }
    }
}
