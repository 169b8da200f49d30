//! portcullis: an egress forward proxy that lets a workload reach only the
//! hostnames its team allowed.
//!
//! The path of a connection, and the module that owns each step:
//!
//! - [`server`]: [`run`] turns the arguments into a configuration, starts
//!   the listeners and worker threads, and drains on shutdown.
//! - [`listener`]: accept (with `--max-connections`), parse the request
//!   ([`listener::http1`]: CONNECT and absolute-form HTTP; [`listener::tls`]:
//!   the ClientHello's SNI), record the exchange.
//! - [`policy`]: the pure decision core (YAML -> compiled `Policy` -> `decide`).
//! - [`resolve`] and [`dial`]: resolve the name ourselves, drop guarded
//!   addresses, connect within `--connect-timeout`.
//! - [`tunnel`]: relay bytes with counting and an idle timeout;
//!   [`tls_peek`] checks the TLS handshake it carries; `splice` is the
//!   zero-copy relay on Linux.
//! - [`telemetry`]: Prometheus metrics and the JSON audit log, on the side.
//!
//! Around the path:
//!
//! - [`state`]: what connections share, split by concern.
//! - [`limits`]: every limit and timeout, and the open-files budget.
//! - [`reload`]: file watch and SIGHUP -> a new policy snapshot.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`cli`]: flags; [`cmd`]: the subcommands (`check`, `explain`, `test`,
//!   `diff`, `health`, `suggest`); [`schema`]: the JSON Schemas of the
//!   policy and of test cases; [`policy_file`]: reading and hashing policy files.

#![forbid(unsafe_code)]
// The module map above is for contributors: its links to internal modules
// resolve with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod admin;
pub mod cli;
pub mod cmd;
pub(crate) mod dial;
pub(crate) mod limits;
pub(crate) mod listener;
pub mod policy;
pub mod policy_file;
pub(crate) mod reload;
pub(crate) mod resolve;
pub mod schema;
pub(crate) mod server;
#[cfg(all(feature = "splice", target_os = "linux"))]
mod splice;
pub(crate) mod state;
pub mod telemetry;
pub mod tls_peek;
pub(crate) mod tunnel;

pub use server::{RunError, run};
