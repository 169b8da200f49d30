//! Every limit and timeout in one place: the command line's, the admin listener's,
//! the drain's, and how the open-files limit is shared out.

use std::time::Duration;

use crate::listener::proxy_protocol::ProxyProtocol;
use crate::resolve;

/// Timeouts and limits from the command line, as `run` applies them.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// Open connections one source address may hold; 0 for no limit.
    pub max_connections_per_client: usize,
    /// `--proxy-protocol`: every connection on the proxy listeners starts
    /// with a PROXY protocol header, from these peers.
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// Largest request head (request line and headers) the explicit listener reads.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Admin connections open at once. Counted in the open-files budget; when
/// all are taken, the one idle longest is closed for a newcomer, so that a
/// new `/healthz` or `/metrics` caller is always served.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Idle keep-alive upstream connections one client connection keeps.
pub(crate) const UPSTREAMS_PER_CONNECTION: usize = 4;

/// How long answering `503 overloaded` (and reading what the client sent) may take.
pub(crate) const OVERLOADED_ANSWER: Duration = Duration::from_secs(2);

/// Pause after a failed accept (still out of descriptors, or a transient
/// error), and the admin listener's, instead of spinning.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Out of descriptors: how long an accept loop waits for the waiting client
/// once it gave up its reserve descriptor, and again before taking it back.
pub(crate) const RESERVE_WAIT: Duration = Duration::from_millis(10);

/// How far past `--drain-timeout` the process may run after SIGTERM (docs/security.md).
pub(crate) const EXIT_MARGIN: Duration = Duration::from_secs(5);

/// Kept out of the audit flush's share of [`EXIT_MARGIN`]: the last log lines and exit.
pub(crate) const LAST_WORDS: Duration = Duration::from_millis(1500);

/// After the drain timeout cut them, how long tunnels get to write their audit records;
/// and how long worker threads get to end their event loops.
pub(crate) const CUT_GRACE: Duration = Duration::from_secs(2);

/// `--workers`: 0 means one per available CPU.
pub(crate) fn workers(asked: usize) -> usize {
    match asked {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    }
}

/// Descriptors kept out of the connection budget besides those counted below:
/// listeners, the audit log, the file watcher, and headroom.
const FD_HEADROOM: usize = 64;

/// Descriptors of a worker thread, besides its connections: idle splice
/// pipes (`splice::POOL_MAX` of them), its event loop's epoll and waker and
/// signal pipe, and per data listener a duplicate and a reserve descriptor.
fn fds_per_worker(listeners: usize) -> usize {
    #[cfg(all(feature = "splice", target_os = "linux"))]
    let pooled_pipes = crate::splice::POOL_MAX;
    #[cfg(not(all(feature = "splice", target_os = "linux")))]
    let pooled_pipes = 0;
    2 * pooled_pipes + 3 + 2 * listeners
}

/// How the open-files limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdBudget {
    /// The effective `--max-connections`.
    pub max_connections: usize,
    /// DNS lookups in flight at once.
    pub dns_lookups: usize,
}

/// The soft open-files limit of this process, where the platform says.
pub(crate) fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse::<usize>().ok()
}

/// Shares the open-files limit `soft` out so that running out of descriptors
/// shows up as `503 overloaded` (or a `dns_error`), never as failed accepts.
/// Fixed first: headroom, the worker threads, and the admin listener's
/// connections (one more while the oldest idle one is being closed). Of the
/// rest, a sixteenth goes to pending DNS lookups ([`resolve::FDS_PER_LOOKUP`]
/// each): they last milliseconds, connections last minutes. Each client
/// connection may then hold two descriptors (client and upstream).
pub(crate) fn fd_budget(
    soft: Option<usize>,
    max_connections: usize,
    workers: usize,
    listeners: usize,
) -> FdBudget {
    let Some(soft) = soft else {
        return FdBudget {
            max_connections,
            dns_lookups: resolve::DEFAULT_MAX_LOOKUPS,
        };
    };
    let fixed = FD_HEADROOM + fds_per_worker(listeners) * workers + ADMIN_MAX_CONNECTIONS + 1;
    let rest = soft.saturating_sub(fixed);
    let dns_lookups = (rest / 16 / resolve::FDS_PER_LOOKUP).clamp(1, resolve::DEFAULT_MAX_LOOKUPS);
    let fit = rest
        .saturating_sub(dns_lookups * resolve::FDS_PER_LOOKUP)
        .max(2)
        / 2;
    if fit < max_connections {
        // Expected on common limits (a `nofile` of 20000 fits 9,9xx of the
        // default 10000): fitting is the intended behaviour, not a fault.
        tracing::info!(
            max_connections,
            open_files_limit = soft,
            using = fit,
            "--max-connections lowered to fit the open-files limit; raise `ulimit -n` for more"
        );
    }
    FdBudget {
        max_connections: fit.min(max_connections),
        dns_lookups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_shared_out() {
        let fixed = FD_HEADROOM + fds_per_worker(1) * 2 + ADMIN_MAX_CONNECTIONS + 1;
        let cases = [
            (
                "no limit known",
                None,
                10_000,
                10_000,
                resolve::DEFAULT_MAX_LOOKUPS,
            ),
            // 1600 left: 100 for lookups (25 of them), 1500 for 750 connections.
            ("tight limit", Some(fixed + 1600), 10_000, 750, 25),
            (
                "roomy limit",
                Some(1_048_576),
                10_000,
                10_000,
                resolve::DEFAULT_MAX_LOOKUPS,
            ),
            ("below what is fixed", Some(fixed / 2), 10_000, 1, 1),
        ];
        for (name, soft, asked, connections, lookups) in cases {
            let budget = fd_budget(soft, asked, 2, 1);
            assert_eq!(
                budget,
                FdBudget {
                    max_connections: connections,
                    dns_lookups: lookups
                },
                "{name}"
            );
        }
    }
}
