//! The subcommands other than `run`: each reads files or the admin
//! listener, drives the policy core and prints; `main` maps their exit codes.

pub mod check;
pub mod diff;
pub mod explain;
pub mod health;
pub mod import;
pub mod policy;
pub mod suggest;
pub mod test;
pub mod token;

pub use check::check;
pub use diff::diff;
pub use explain::explain;
pub use policy::exit;
