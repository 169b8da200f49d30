//! `portcullis check`: errors with line and column, warnings, exit codes, JSON.

use crate::support::{portcullis, root, stdout};

#[test]
fn example_policy_is_valid_and_clean() {
    let out = portcullis(&["check", "config/portcullis.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("config/portcullis.yaml: ok (0 warnings)"),
        "{}",
        stdout(&out)
    );
}

/// Every fixture in tests/policies/invalid names its expected error on its
/// first line: `# expect: LINE:COLUMN message`.
#[test]
fn each_invalid_fixture_reports_its_line_and_column() {
    let dir = root().join("tests/policies/invalid");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .expect("fixture starts with `# expect: L:C message`");
        let (loc, msg) = expect.split_once(' ').unwrap_or((expect, ""));
        let rel = format!(
            "tests/policies/invalid/{}",
            path.file_name().unwrap().to_str().unwrap()
        );
        let out = portcullis(&["check", &rel]);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{rel} should fail:\n{text}");
        let prefix = format!("{rel}:{loc}: error: ");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(msg.trim())),
            "{rel}: want `{prefix}...{msg}`, got:\n{text}"
        );
        seen += 1;
    }
    assert!(seen >= 20, "only {seen} fixtures");
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let out = portcullis(&["check", "tests/policies/multiple_errors.yaml"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1));
    for loc in ["2:10", "4:5", "5:5", "6:5", "9:15"] {
        assert!(
            text.contains(&format!("multiple_errors.yaml:{loc}: error:")),
            "missing {loc} in\n{text}"
        );
    }
}

#[test]
fn warnings_are_printed_and_exit_zero() {
    let out = portcullis(&["check", "tests/policies/warnings/all.yaml"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let f = "tests/policies/warnings/all.yaml";
    for (loc, what) in [
        ("5:5", "duplicates line 4"),
        ("7:5", "shadowed by `*.example.com`"),
        ("8:5", "public suffix"),
        ("9:5", "`co.uk` is a public suffix"),
        ("10:5", "shared-tenant domain `s3.amazonaws.com`"),
        ("11:5", "shared-tenant domain `amazonaws.com`"),
        ("12:5", "shared-tenant domain `blob.core.windows.net`"),
        ("13:5", "shared-tenant domain `storage.googleapis.com`"),
        ("14:5", "never takes effect"),
        ("20:13", "already allowed for every client"),
    ] {
        let prefix = format!("{f}:{loc}: warning: ");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(what)),
            "want {prefix}..{what} in\n{text}"
        );
    }
}

#[test]
fn several_files_exit_one_when_any_is_invalid() {
    let out = portcullis(&[
        "check",
        "config/portcullis.yaml",
        "tests/policies/invalid/port_zero.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let out = portcullis(&[
        "check",
        "config/portcullis.yaml",
        "tests/policies/warnings/all.yaml",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let out = portcullis(&["check", "does/not/exist.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("does/not/exist.yaml:1:1: error: cannot read the policy file"));
}

#[test]
fn json_format_carries_what_annotations_need() {
    let out = portcullis(&[
        "check",
        "--format",
        "json",
        "tests/policies/invalid/port_zero.yaml",
        "tests/policies/warnings/all.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(doc["valid"], false);
    let problems = doc["problems"].as_array().unwrap();
    let err = problems.iter().find(|p| p["severity"] == "error").unwrap();
    assert_eq!(err["file"], "tests/policies/invalid/port_zero.yaml");
    assert_eq!(
        (err["line"].as_u64(), err["column"].as_u64()),
        (Some(4), Some(5))
    );
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("`0` is not a port")
    );
    assert!(
        problems
            .iter()
            .any(|p| p["severity"] == "warning" && p["file"] == "tests/policies/warnings/all.yaml")
    );
    assert_eq!(doc["files"].as_array().unwrap().len(), 2);
}
