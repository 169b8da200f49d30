//! The exit codes every policy subcommand shares (`check`, `explain`,
//! `diff` and `test` live in their own files).

/// Exit codes shared by the subcommands.
pub mod exit {
    /// Success: valid policy, allowed, or every case held.
    pub const OK: i32 = 0;
    /// A policy file does not load, a check failed, or a case did not hold.
    pub const INVALID: i32 = 1;
    /// Bad arguments or an unreadable input.
    pub const USAGE: i32 = 2;
    /// `explain`: the policy denies the destination.
    pub const DENY: i32 = 3;
}
