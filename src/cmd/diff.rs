//! `portcullis diff OLD NEW`: every change in reach between two policies,
//! for a reviewer (text) or a machine (JSON).

use std::io::Write;

use crate::cli::{DiffArgs, OutputFormat};
use crate::policy::diff;
use crate::policy_file::{load_policy, render};

/// `diff`'s exit codes.
pub mod exit {
    /// Nothing changes in reach.
    pub const SAME: i32 = 0;
    /// Something changes in reach: a change to review.
    pub const CHANGED: i32 = 1;
    /// A policy file cannot be read or does not load.
    pub const ERROR: i32 = 2;
}

/// Prints the changes from `args.old` to `args.new` and returns the exit
/// code. Text prints nothing when nothing changes; JSON always prints one
/// document. A file that does not load prints its problems on `err`.
pub fn diff(args: &DiffArgs, out: &mut impl Write, err: &mut impl Write) -> std::io::Result<i32> {
    let (old, new) = match (load_policy(&args.old), load_policy(&args.new)) {
        (Ok(o), Ok(n)) => (o.policy, n.policy),
        (o, n) => {
            for (path, loaded) in [(&args.old, o), (&args.new, n)] {
                if let Err(problems) = loaded {
                    for d in &problems {
                        writeln!(err, "{}", render(path, d))?;
                    }
                }
            }
            writeln!(
                err,
                "portcullis diff: a policy does not load; nothing compared"
            )?;
            return Ok(exit::ERROR);
        }
    };
    let changes = diff::diff(&old, &new);
    match args.format {
        OutputFormat::Text => write!(out, "{}", diff::render(&changes))?,
        OutputFormat::Json => {
            let doc = serde_json::json!({
                "old": args.old.display().to_string(),
                "new": args.new.display().to_string(),
                "changed": !changes.is_empty(),
                "changes": changes,
            });
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&doc).expect("JSON values serialise")
            )?;
        }
    }
    Ok(if changes.is_empty() {
        exit::SAME
    } else {
        exit::CHANGED
    })
}
