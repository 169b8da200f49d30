//! `portcullis import squid|smokescreen FILE`: another proxy's allowlist as a
//! policy on stdout, with a comment on everything that could not be carried
//! over. The result is compiled before it is printed: an importer never hands
//! out a policy that does not load.

mod dom;
mod draft;
mod ports;
mod smokescreen;
mod squid;

use std::io::Write;
use std::path::Path;

use crate::cli::{ImportArgs, ImportSource};
use crate::cmd::exit;
use crate::policy::Severity;

/// A source file the importer cannot read as what it claims to be.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub(crate) struct ImportError {
    /// 1-based; 0 when the problem is the whole file.
    pub(crate) line: usize,
    pub(crate) message: String,
}

impl ImportError {
    pub(crate) fn at(line: usize, message: impl Into<String>) -> ImportError {
        ImportError {
            line,
            message: message.into(),
        }
    }
}

/// Largest source file read: allowlists are text, far below this.
const MAX_BYTES: u64 = 16 << 20;

/// Runs `portcullis import`: the policy on `out`, a summary or the error on `err`.
pub fn run(args: &ImportArgs, out: &mut impl Write, err: &mut impl Write) -> std::io::Result<i32> {
    let path = &args.file;
    let shown = path.display();
    let text = match read(path) {
        Ok(t) => t,
        Err(Read::Io(e)) => {
            writeln!(err, "portcullis: cannot read {shown}: {e}")?;
            return Ok(exit::USAGE);
        }
        Err(Read::NotText(why)) => {
            writeln!(err, "{shown}: {why}; not a {} file", args.source.name())?;
            return Ok(exit::INVALID);
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let imported = match args.source {
        ImportSource::Squid => squid::import(&text, dir),
        ImportSource::Smokescreen => smokescreen::import(&text),
    };
    let draft = match imported {
        Ok(d) => d,
        Err(e) => {
            writeln!(err, "{shown}:{}: {}", e.line, e.message)?;
            writeln!(err, "{shown}: not imported")?;
            return Ok(exit::INVALID);
        }
    };
    let policy = draft.render();
    let checked = crate::policy::compile::check(&policy, crate::policy_file::today());
    let errors: Vec<_> = checked
        .problems
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    if !errors.is_empty() {
        // A bug of the importer, never the user's: say so rather than print a broken policy.
        for d in errors {
            writeln!(
                err,
                "portcullis: the imported policy does not load ({}:{}: {}); please report this with the source file",
                d.line, d.column, d.message
            )?;
        }
        return Ok(exit::INVALID);
    }
    out.write_all(policy.as_bytes())?;
    let warnings = checked.problems.len();
    writeln!(
        err,
        "{shown}: imported; {} construct(s) not carried over (see the comments), {warnings} warning(s) from `portcullis check`",
        draft.not_carried.len()
    )?;
    Ok(exit::OK)
}

enum Read {
    Io(std::io::Error),
    NotText(String),
}

fn read(path: &Path) -> Result<String, Read> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(Read::Io)?;
    if file.metadata().map_err(Read::Io)?.is_dir() {
        return Err(Read::Io(std::io::Error::other("is a directory")));
    }
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Read::Io)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(Read::NotText(format!(
            "larger than {} MiB",
            MAX_BYTES >> 20
        )));
    }
    if let Some(at) = bytes.iter().position(|b| *b == 0) {
        return Err(Read::NotText(format!(
            "binary content (a NUL byte at offset {at})"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        Read::NotText(format!(
            "binary content (not UTF-8 at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}
