//! The subcommands other than `run`: each reads files or the admin
//! listener, drives the policy core and prints; `main` maps their exit codes.

pub mod health;
pub mod policy;
pub mod suggest;
pub mod token;

pub use policy::{check, diff, exit, explain, split_target};
