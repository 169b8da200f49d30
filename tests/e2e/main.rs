//! End-to-end tests: the real `portcullis` binary, driven the way users drive it.

// Cargo.toml's [lints] turn `unreachable_pub` on for every target; this harness's
// shared fixtures are `pub` for its own modules on purpose.
#![allow(unreachable_pub)]

mod audit_evidence;
mod cli_check;
mod cli_diff;
mod cli_explain;
mod cli_test;
mod denials;
mod edges;
mod exposition;
mod hostile;
mod identity;
mod observability;
mod policy_dir;
mod private_endpoint;
mod proxy_clients;
mod proxy_connect;
mod proxy_dns;
mod proxy_errors;
mod proxy_forward;
mod proxy_limits;
mod proxy_protocol;
mod proxy_telemetry;
mod redirect;
mod reload;
mod reload_watch;
mod sinks;
mod soak;
mod status;
mod suggest;
mod support;
mod tls;
mod tls_bypass;
mod websocket;
