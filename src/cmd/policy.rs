//! `portcullis diff` and the exit codes every policy subcommand shares
//! (`check`, `explain` and `test` live in their own files).

use std::io::Write;

use crate::cli::{DiffArgs, OutputFormat};
use crate::policy_file::{load_policy, render};

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

/// `portcullis diff OLD NEW`: exit 0 with the changes, 2 when either file does not load.
pub fn diff(args: &DiffArgs, out: &mut impl Write, err: &mut impl Write) -> std::io::Result<i32> {
    let (old, new) = match (load_policy(&args.old), load_policy(&args.new)) {
        (Ok(o), Ok(n)) => (o.policy, n.policy),
        (o, n) => {
            for (path, r) in [(&args.old, o), (&args.new, n)] {
                if let Err(problems) = r {
                    for d in &problems {
                        writeln!(err, "{}", render(path, d))?;
                    }
                }
            }
            return Ok(exit::USAGE);
        }
    };
    let changes = crate::policy::diff::diff(&old, &new);
    match args.format {
        OutputFormat::Text => write!(out, "{}", crate::policy::diff::render(&changes))?,
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&changes).expect("JSON values serialise")
        )?,
    }
    Ok(exit::OK)
}
