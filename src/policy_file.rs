//! Policy files: reading, compiling and hashing them, and rendering their
//! problems as `PATH:LINE:COLUMN: ...`. Shared by `run`, hot reload and the
//! subcommands; the pure core in [`crate::policy`] never touches files.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::policy::{Compiled, Diagnostic, Policy, Severity};

/// Reads and compiles a policy file; `Err` holds every problem found.
pub fn load_policy(path: &Path) -> Result<Compiled, Vec<Diagnostic>> {
    load_policy_with_hash(path).map(|(c, _)| c)
}

/// Like [`load_policy`], with the SHA-256 of the file's bytes.
pub fn load_policy_with_hash(path: &Path) -> Result<(Compiled, String), Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            severity: Severity::Error,
            line: 1,
            column: 1,
            message: format!("cannot read the policy file: {e}"),
            hint: None,
        }]
    })?;
    let sha = sha256_hex(text.as_bytes());
    Policy::from_yaml(&text).map(|c| (c, sha))
}

/// `PATH:LINE:COLUMN: severity: message (hint: ...)`.
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
