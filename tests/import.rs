//! `portcullis import squid|smokescreen FILE` through the real binary: the
//! printed policy passes `check`, decides the pinned cases the way the
//! source proxy did, and bad input gets a clear error and exit code.

use std::path::PathBuf;
use std::process::Output;

fn portcullis(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run portcullis")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A file in the temporary directory, removed on drop.
struct Temp(PathBuf);

impl Temp {
    fn new(name: &str, bytes: &[u8]) -> Temp {
        let path =
            std::env::temp_dir().join(format!("portcullis-import-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).expect("write temp file");
        Temp(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Imports `file`, then runs `check` and `test` on the result.
fn import_check_test(kind: &str, file: &str, cases: &str) {
    let out = portcullis(&["import", kind, file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("imported"),
        "{}",
        text(&out.stderr)
    );
    let policy = Temp::new(&format!("{kind}.yaml"), &out.stdout);
    let check = portcullis(&["check", policy.path()]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}\n{}",
        text(&check.stdout),
        text(&out.stdout)
    );
    assert!(
        text(&check.stdout).contains(": ok ("),
        "{}",
        text(&check.stdout)
    );
    let test = portcullis(&["test", "--policy", policy.path(), cases]);
    assert_eq!(
        test.status.code(),
        Some(0),
        "{}\n{}",
        text(&test.stdout),
        text(&out.stdout)
    );
}

#[test]
fn a_squid_config_imports_checks_and_keeps_its_decisions() {
    import_check_test(
        "squid",
        "tests/import/squid/corporate.conf",
        "tests/import/squid/corporate.cases.yaml",
    );
}

#[test]
fn a_smokescreen_acl_imports_checks_and_keeps_its_decisions() {
    import_check_test(
        "smokescreen",
        "tests/import/smokescreen/services.yaml",
        "tests/import/smokescreen/services.cases.yaml",
    );
}

#[test]
fn an_empty_squid_config_is_a_valid_deny_all_policy() {
    let out = portcullis(&["import", "squid", "tests/import/squid/empty.conf"]);
    assert_eq!(out.status.code(), Some(0));
    let policy = text(&out.stdout);
    assert!(
        policy.contains("no `http_access` line: Squid denies every request"),
        "{policy}"
    );
    assert!(policy.contains("allow: []"), "{policy}");
    let file = Temp::new("empty.yaml", &out.stdout);
    let explain = portcullis(&["explain", "--policy", file.path(), "example.com"]);
    assert_eq!(explain.status.code(), Some(3), "{}", text(&explain.stdout));
}

#[test]
fn a_missing_file_is_a_usage_error() {
    let out = portcullis(&["import", "squid", "tests/import/squid/no-such.conf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read tests/import/squid/no-such.conf"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn binary_garbage_is_refused_with_a_clear_error() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = Temp::new("garbage.conf", &garbage);
    for kind in ["squid", "smokescreen"] {
        let out = portcullis(&["import", kind, file.path()]);
        assert_eq!(out.status.code(), Some(1), "{kind}");
        assert!(
            text(&out.stderr).contains("binary content"),
            "{}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn unknown_directives_and_regexes_are_comments_not_failures() {
    let conf = b"frobnicate on\nacl ads dstdom_regex ^ads\\.\nacl ok dstdomain .ok.test\nhttp_access deny ads\nhttp_access allow ok\n";
    let file = Temp::new("odd.conf", conf);
    let out = portcullis(&["import", "squid", file.path()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let policy = text(&out.stdout);
    assert!(
        policy.contains("line 1: `frobnicate on`: a directive this importer does not know"),
        "{policy}"
    );
    assert!(
        policy.contains("line 4: `http_access deny ads`: WARNING: acl `ads` is `dstdom_regex`"),
        "{policy}"
    );
    let imported = Temp::new("odd.yaml", &out.stdout);
    assert_eq!(
        portcullis(&["check", imported.path()]).status.code(),
        Some(0)
    );
}

#[test]
fn a_smokescreen_acl_with_an_unknown_action_is_not_imported() {
    let out = portcullis(&[
        "import",
        "smokescreen",
        "tests/import/smokescreen/unknown-action.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("tests/import/smokescreen/unknown-action.yaml:9: unknown action `allow`"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "nothing half-imported");
}
