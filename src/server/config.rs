//! The command line turned into what `run` starts from: the worker count, the open-files budget, the limits.

use crate::cli::RunArgs;
use crate::limits::{self, Limits, fd_budget, open_files_limit};
use crate::listener::proxy_protocol::ProxyProtocol;

/// Counts and limits computed once from the arguments and the process's open-files limit.
#[derive(Debug)]
pub(super) struct Config {
    /// Threads accepting and serving connections (the caller's included).
    pub workers: usize,
    /// DNS lookups in flight at once.
    pub dns_lookups: usize,
    pub limits: Limits,
}

impl Config {
    /// `data_listeners`: how many data listeners are bound (each costs descriptors per worker).
    pub(super) fn from_args(args: &RunArgs, data_listeners: usize) -> Config {
        let workers = limits::workers(args.workers);
        let budget = fd_budget(
            open_files_limit(),
            args.max_connections,
            workers,
            data_listeners,
        );
        Config {
            workers,
            dns_lookups: budget.dns_lookups,
            limits: Limits {
                connect_timeout: args.connect_timeout,
                idle_timeout: args.idle_timeout,
                header_timeout: args.header_timeout,
                max_connections: budget.max_connections,
                max_connections_per_client: args.max_connections_per_client,
                proxy_protocol: (args.proxy_protocol)
                    .then(|| ProxyProtocol::new(args.proxy_protocol_from.clone())),
            },
        }
    }
}
