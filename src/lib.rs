//! portcullis: an egress forward proxy that lets a workload reach only the
//! hostnames its team allowed.
//!
//! - [`policy`]: the pure decision core (YAML -> compiled `Policy` -> `decide`).
//! - [`cli`]: command-line flags and their environment variables.
//! - [`commands`]: `check` and `explain`, built on the policy core.

#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod policy;
pub mod resolve;
pub mod telemetry;
