//! Policy files: reading, compiling and hashing them, and rendering their
//! problems as `PATH:LINE:COLUMN: ...`. Shared by `run`, hot reload and the
//! subcommands; the pure core in [`crate::policy`] never touches files.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::policy::date::Date;
use crate::policy::{Checked, Code, Compiled, Diagnostic, Policy};

/// Reads and compiles a policy file; `Err` holds every problem found.
pub fn load_policy(path: &Path) -> Result<Compiled, Vec<Diagnostic>> {
    load_policy_with_hash(path).map(|(c, _)| c)
}

/// Like [`load_policy`], with the SHA-256 of the file's bytes.
pub fn load_policy_with_hash(path: &Path) -> Result<(Compiled, String), Vec<Diagnostic>> {
    let text = read(path).map_err(|d| vec![d])?;
    let sha = sha256_hex(text.as_bytes());
    Policy::from_yaml(&text).map(|c| (c, sha))
}

/// Today (UTC), by the system clock: rules whose `expires` day is before
/// it have expired.
pub fn today() -> Date {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    Date::from_unix_seconds(now)
}

/// Reads a policy file and reports every error and warning (`check`), as of `today`.
pub fn check_policy(path: &Path, today: Date) -> Checked {
    match read(path) {
        Ok(text) => crate::policy::compile::check(&text, today),
        Err(d) => Checked {
            compiled: None,
            problems: vec![d],
        },
    }
}

fn read(path: &Path) -> Result<String, Diagnostic> {
    std::fs::read_to_string(path).map_err(|e| {
        Diagnostic::at(
            Code::Unreadable,
            1,
            1,
            format!("cannot read the policy file: {e}"),
            None,
        )
    })
}

/// `PATH:LINE:COLUMN: severity[CODE]: message (hint: ...)`, on one line.
pub fn render(path: &Path, d: &Diagnostic) -> String {
    format!("{}:{d}", path.display())
}

/// Hex SHA-256 of the policy file's bytes, recorded with each generation.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
