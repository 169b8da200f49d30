//! Policy files: reading, compiling and hashing them, and rendering their
//! problems as `PATH:LINE:COLUMN: ...`. Shared by `run`, hot reload and the
//! subcommands; the pure core in [`crate::policy`] never touches files.
//!
//! A policy is one file, or a directory: every `*.yaml` and `*.yml` file
//! directly in it (symlinks followed; hidden names, subdirectories and
//! other names skipped), in byte order of their names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::policy::compile::{Source, check_sources, compile_sources};
use crate::policy::date::Date;
use crate::policy::{Checked, Code, Compiled, Diagnostic};

/// Reads and compiles a policy file or directory; `Err` holds every problem found.
pub fn load_policy(path: &Path) -> Result<Compiled, Vec<Diagnostic>> {
    load_policy_with_hash(path).map(|(c, _)| c)
}

/// Like [`load_policy`], with the policy's SHA-256 ([`PolicyFiles::sha256`]).
pub fn load_policy_with_hash(path: &Path) -> Result<(Compiled, String), Vec<Diagnostic>> {
    let files = read_policy(path);
    files.compile().map(|c| (c, files.sha256()))
}

/// Today (UTC), by the system clock: rules whose `expires` day is before
/// it have expired.
pub fn today() -> Date {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    Date::from_unix_seconds(now)
}

/// Reads a policy file or directory and reports every error and warning
/// (`check`), as of `today`.
pub fn check_policy(path: &Path, today: Date) -> Checked {
    read_policy(path).check(today)
}

/// One file of a policy, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    /// Its name inside the policy directory; `None` when the policy is this one file.
    pub name: Option<Arc<str>>,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A policy's files as read, and what could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFiles {
    /// The files that were read, in the order they compile in.
    pub files: Vec<PolicyFile>,
    /// Why some file, or the directory, could not be read: each of these
    /// makes the policy fail to load.
    pub problems: Vec<Diagnostic>,
    /// Whether the policy is a directory.
    pub is_dir: bool,
    /// Whether the policy's path does not exist.
    pub missing: bool,
}

impl PolicyFiles {
    /// The policy's digest, recorded with each generation. One file: the
    /// SHA-256 of its bytes. A directory: the SHA-256 of, for each file in
    /// order, its name, a NUL byte, its length in decimal, a NUL byte and its
    /// bytes, so that renaming, adding or removing a file changes it too.
    pub fn sha256(&self) -> String {
        let mut hash = Sha256::new();
        for f in &self.files {
            if let Some(name) = &f.name {
                hash.update(name.as_bytes());
                hash.update([0]);
                hash.update(f.bytes.len().to_string().as_bytes());
                hash.update([0]);
            }
            hash.update(&f.bytes);
        }
        hex(&hash.finalize())
    }

    /// Compiles the files; `Err` holds every problem, reading ones first.
    pub fn compile(&self) -> Result<Compiled, Vec<Diagnostic>> {
        let (sources, mut problems) = self.sources();
        match compile_sources(&sources) {
            Ok(c) if problems.is_empty() => Ok(c),
            Ok(_) => Err(problems),
            Err(errors) => {
                problems.extend(errors);
                Err(problems)
            }
        }
    }

    /// Every error and warning of the files (`check`), as of `today`.
    pub fn check(&self, today: Date) -> Checked {
        let (sources, mut problems) = self.sources();
        if sources.is_empty() && !problems.is_empty() {
            return Checked {
                compiled: None,
                problems,
            };
        }
        let checked = check_sources(&sources, today);
        if problems.is_empty() {
            return checked;
        }
        problems.extend(checked.problems);
        Checked {
            compiled: None,
            problems,
        }
    }

    /// The files as text, and a problem for each that is not UTF-8.
    fn sources(&self) -> (Vec<Source<'_>>, Vec<Diagnostic>) {
        let mut problems = self.problems.clone();
        let mut sources = Vec::with_capacity(self.files.len());
        for f in &self.files {
            match std::str::from_utf8(&f.bytes) {
                Ok(text) => sources.push(Source {
                    name: f.name.as_deref(),
                    text,
                }),
                Err(e) => problems.push(
                    unreadable(format!("the policy file is not UTF-8 text: {e}"))
                        .in_file(f.name.clone()),
                ),
            }
        }
        (sources, problems)
    }
}

/// Reads the policy at `path`: the file, or every policy file directly in
/// the directory. Blocking.
pub fn read_policy(path: &Path) -> PolicyFiles {
    let mut out = PolicyFiles {
        files: Vec::new(),
        problems: Vec::new(),
        is_dir: false,
        missing: false,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            out.is_dir = true;
            read_dir(path, &mut out);
        }
        Ok(m) if !m.is_file() => out.problems.push(unreadable(
            "the policy is neither a file nor a directory".to_string(),
        )),
        Ok(_) => match std::fs::read(path) {
            Ok(bytes) => out.files.push(PolicyFile { name: None, bytes }),
            Err(e) => out.problems.push(cannot_read(&e)),
        },
        Err(e) => {
            out.missing = e.kind() == std::io::ErrorKind::NotFound;
            out.problems.push(cannot_read(&e));
        }
    }
    out
}

/// Whether a directory entry named `name` is one of the policy's files:
/// `*.yaml` or `*.yml`, and not hidden (a ConfigMap's `..data` and
/// `..2026_…` entries, an editor's `.x.yaml.swp`).
pub fn is_policy_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

fn read_dir(dir: &Path, out: &mut PolicyFiles) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return out.problems.push(cannot_read(&e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => return out.problems.push(cannot_read(&e)),
        };
        let name = entry.file_name();
        match name.to_str() {
            Some(name) if is_policy_name(name) => names.push(name.to_string()),
            Some(_) => {}
            // Such a name can be no one's policy file by mistake: say so.
            None if is_policy_name(&name.to_string_lossy()) => {
                out.problems.push(unreadable(format!(
                    "`{}`: a policy file's name must be UTF-8",
                    name.to_string_lossy()
                )))
            }
            None => {}
        }
    }
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let name: Arc<str> = Arc::from(name);
        let problem = match std::fs::metadata(&path) {
            // `x.yaml/` is not a file of the policy; nor is what is in it.
            Ok(m) if m.is_dir() => continue,
            // A FIFO or a device would block or never end.
            Ok(m) if !m.is_file() => unreadable("not a regular file".to_string()),
            Ok(_) => match std::fs::read(&path) {
                Ok(bytes) => {
                    out.files.push(PolicyFile {
                        name: Some(name),
                        bytes,
                    });
                    continue;
                }
                Err(e) => cannot_read(&e),
            },
            Err(e) => cannot_read(&e),
        };
        out.problems.push(problem.in_file(Some(name)));
    }
    if out.files.is_empty() && out.problems.is_empty() {
        out.problems.push(Diagnostic::at(
            Code::EmptyFile,
            1,
            1,
            "the policy directory holds no `*.yaml` or `*.yml` file: there is no policy",
            Some("add a file that starts with `version: 1`; subdirectories and hidden files are not read".to_string()),
        ));
    }
}

fn cannot_read(e: &std::io::Error) -> Diagnostic {
    // ELOOP: the error's own text ("too many levels of symbolic links") hides the cause.
    let what = match e.raw_os_error() {
        Some(40) => " (a symlink loop?)",
        _ => "",
    };
    unreadable(format!("cannot read the policy file: {e}{what}"))
}

fn unreadable(message: String) -> Diagnostic {
    Diagnostic::at(Code::Unreadable, 1, 1, message, None)
}

/// `PATH:LINE:COLUMN: severity[CODE]: message (hint: ...)`, on one line;
/// in a policy directory, PATH is the file's.
pub fn render(path: &Path, d: &Diagnostic) -> String {
    format!("{}:{d}", display_path(path, d).display())
}

/// The path a problem is in: `path` itself, or its file in the directory.
pub fn display_path(path: &Path, d: &Diagnostic) -> PathBuf {
    match &d.file {
        Some(file) => path.join(&**file),
        None => path.to_path_buf(),
    }
}

/// Hex SHA-256 of a policy file's bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-policy-file-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(files: &PolicyFiles) -> Vec<&str> {
        files
            .files
            .iter()
            .filter_map(|f| f.name.as_deref())
            .collect()
    }

    #[test]
    fn a_directory_reads_its_policy_files_in_name_order_and_skips_the_rest() {
        let dir = scratch("layout");
        for (name, text) in [
            ("20-b.yml", "version: 1\nallow: [b.example]\n"),
            ("00-base.yaml", "version: 1\nallow: [a.example]\n"),
            (".hidden.yaml", "not: read\n"),
            ("10-a.yaml.swp", "\0\0"),
            ("10-a.yaml~", "junk"),
            ("README.md", "# not policy"),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        std::fs::create_dir_all(dir.join("sub.yaml")).unwrap();
        std::fs::write(dir.join("sub.yaml/x.yaml"), "junk").unwrap();
        // A ConfigMap mount: hidden data directory, `..data` link, a link per key.
        std::fs::create_dir(dir.join("..2026_11_30_x")).unwrap();
        std::fs::write(dir.join("..2026_11_30_x/15-cm.yaml"), "version: 1\n").unwrap();
        symlink("..2026_11_30_x", dir.join("..data")).unwrap();
        symlink("..data/15-cm.yaml", dir.join("15-cm.yaml")).unwrap();
        let files = read_policy(&dir);
        assert!(files.is_dir && files.problems.is_empty(), "{files:?}");
        assert_eq!(names(&files), ["00-base.yaml", "15-cm.yaml", "20-b.yml"]);
        assert!(files.compile().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_digest_covers_names_and_contents_and_a_lone_file_keeps_its_own() {
        let dir = scratch("digest");
        std::fs::write(dir.join("a.yaml"), "version: 1\n").unwrap();
        let one = read_policy(&dir.join("a.yaml"));
        assert_eq!(one.sha256(), sha256_hex(b"version: 1\n"));
        let before = read_policy(&dir).sha256();
        let mut expected = Sha256::new();
        expected.update(b"a.yaml\x0011\x00version: 1\n");
        assert_eq!(before, hex(&expected.finalize()));
        std::fs::rename(dir.join("a.yaml"), dir.join("b.yaml")).unwrap();
        assert_ne!(read_policy(&dir).sha256(), before, "a rename changes it");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_entries_are_problems_in_their_file_and_nothing_loads() {
        let dir = scratch("bad");
        std::fs::write(dir.join("00-ok.yaml"), "version: 1\nallow: [a.example]\n").unwrap();
        symlink("30-loop.yaml", dir.join("30-loop.yaml")).unwrap();
        symlink("missing.yaml", dir.join("40-dangling.yaml")).unwrap();
        std::fs::write(dir.join("50-binary.yaml"), b"version: 1\n\xff\xfe").unwrap();
        let errors = load_policy(&dir).expect_err("nothing half-loaded");
        let got: Vec<String> = errors.iter().map(|d| render(&dir, d)).collect();
        assert_eq!(got.len(), 3, "{got:#?}");
        let at = |file: &str| format!("{}:1:1: error[unreadable-file]", dir.join(file).display());
        assert!(
            got[0].starts_with(&at("30-loop.yaml")) && got[0].contains("symlink loop"),
            "{got:#?}"
        );
        assert!(got[1].starts_with(&at("40-dangling.yaml")), "{got:#?}");
        assert!(
            got[2].starts_with(&at("50-binary.yaml")) && got[2].contains("UTF-8"),
            "{got:#?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_directory_is_no_policy() {
        let dir = scratch("empty");
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        let errors = load_policy(&dir).expect_err("fail closed");
        assert_eq!(errors[0].code, Code::EmptyFile);
        assert!(
            errors[0].message.contains("holds no `*.yaml`"),
            "{errors:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
