//! The subcommands other than `run`: each reads files or the admin
//! listener, drives the policy core and prints; `main` maps their exit codes.

pub mod diff;
pub mod health;
pub mod policy;
pub mod suggest;

pub use diff::diff;
pub use policy::{check, exit, explain, split_target};
