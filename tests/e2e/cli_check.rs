//! `portcullis check`: every error and warning in one run, each with its
//! place and stable code, in text and JSON; `--strict`; ignore comments.

use std::collections::BTreeSet;
use std::path::Path;

use portcullis::policy::{Code, Severity};
use serde_json::Value;

use crate::support::{TempPolicy, portcullis, root, stdout};

/// `check --format json` of `paths`: the exit code and the document.
fn check_json(extra: &[&str], paths: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["check", "--format", "json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(paths);
    let out = portcullis(&args);
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&out)));
    (out.status.code(), doc)
}

fn problems(doc: &Value) -> &Vec<Value> {
    doc["problems"].as_array().expect("problems is a list")
}

/// `(line:column, code)` of every problem, in output order.
fn places(doc: &Value) -> Vec<(String, String)> {
    problems(doc)
        .iter()
        .map(|p| {
            (
                format!("{}:{}", p["line"], p["column"]),
                p["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The fixtures of a directory, as paths relative to the repository root.
fn fixtures(dir: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name();
            format!("{dir}/{}", name.to_str().unwrap())
        })
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    out.sort();
    out
}

/// A fixture's first line: `# expect: REST`.
fn expect_line(rel: &str) -> String {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{rel} starts with `# expect: ...`"))
        .to_string()
}

#[test]
fn example_policy_passes_strict() {
    let out = portcullis(&["check", "--strict", "config/portcullis.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "config/portcullis.yaml: ok (0 warnings)\n");
}

/// Every fixture in tests/policies/invalid names its expected error on its
/// first line: `# expect: LINE:COLUMN CODE message`.
#[test]
fn each_invalid_fixture_reports_its_place_and_code() {
    let mut codes = BTreeSet::new();
    for rel in fixtures("tests/policies/invalid") {
        let expect = expect_line(&rel);
        let mut parts = expect.splitn(3, ' ');
        let (loc, code, msg) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap_or(""),
        );
        let out = portcullis(&["check", &rel]);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{rel} should fail:\n{text}");
        let prefix = format!("{rel}:{loc}: error[{code}]: ");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(msg)),
            "{rel}: want `{prefix}...{msg}`, got:\n{text}"
        );
        codes.insert(code.to_string());
    }
    // Every error code but the unreadable file (below) has its fixture.
    for code in Code::ALL {
        if code.severity() == Severity::Error && *code != Code::Unreadable {
            assert!(codes.contains(code.as_str()), "no fixture for {code}");
        }
    }
}

#[test]
fn every_problem_is_reported_in_one_run_with_did_you_mean() {
    let rel = "tests/policies/every_problem.yaml";
    let (code, doc) = check_json(&[], &[rel]);
    assert_eq!(code, Some(1));
    let want = [
        ("4:7", "report-mode"),
        ("5:1", "unknown-key"),
        ("7:5", "bad-port"),
        ("8:5", "shadowed-rule"),
        ("10:5", "match-all-range"),
        ("12:11", "no-selector"),
        ("13:5", "unknown-key"),
        ("14:11", "duplicate-client"),
        ("15:15", "bad-cidr"),
        ("17:13", "guard-opened"),
        ("19:3", "unknown-key"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(l, c)| (l.to_string(), c.to_string()))
        .collect();
    assert_eq!(places(&doc), want);
    let hints: Vec<&str> = problems(&doc)
        .iter()
        .filter(|p| p["code"] == "unknown-key")
        .map(|p| p["hint"].as_str().unwrap())
        .collect();
    assert_eq!(
        hints,
        [
            "did you mean `allow`?",
            "did you mean `sources`?",
            "did you mean `sni_must_match`?"
        ]
    );
    assert_eq!(doc["files"][0]["errors"], 7);
    assert_eq!(doc["files"][0]["warnings"], 4);
}

#[test]
fn the_older_multiple_errors_fixture_reports_all_five() {
    let (code, doc) = check_json(&[], &["tests/policies/multiple_errors.yaml"]);
    assert_eq!(code, Some(1));
    let locs: Vec<String> = places(&doc).into_iter().map(|(l, _)| l).collect();
    assert_eq!(locs, ["2:10", "4:5", "5:5", "6:5", "9:15"]);
}

/// tests/policies/warnings/CODE.yaml draws CODE, and only CODE, at the
/// places its first line lists (`# expect: L:C, L:C`); clean.yaml is the
/// control that draws none.
#[test]
fn each_warning_fixture_draws_exactly_its_code() {
    let mut covered = std::collections::HashSet::new();
    for rel in fixtures("tests/policies/warnings") {
        let name = Path::new(&rel).file_stem().unwrap().to_str().unwrap();
        if name == "all" || name == "clean" {
            continue;
        }
        let code = Code::parse(name).unwrap_or_else(|| panic!("{rel}: not a code"));
        let want: Vec<(String, String)> = expect_line(&rel)
            .split(", ")
            .map(|l| (l.to_string(), name.to_string()))
            .collect();
        let (exit, doc) = check_json(&[], &[&rel]);
        assert_eq!(exit, Some(0), "warnings alone pass without --strict: {doc}");
        assert_eq!(places(&doc), want, "{rel}");
        for p in problems(&doc) {
            assert_eq!(p["severity"], "warning");
        }
        let (exit, doc) = check_json(&["--strict"], &[&rel]);
        assert_eq!(exit, Some(1), "{rel} fails --strict");
        assert_eq!(doc["passed"], false);
        covered.insert(code);
    }
    for code in Code::ALL {
        if code.severity() == Severity::Warning {
            assert!(covered.contains(code), "no fixture for {code}");
        }
    }
}

#[test]
fn the_clean_control_draws_no_warning() {
    let (exit, doc) = check_json(&["--strict"], &["tests/policies/warnings/clean.yaml"]);
    assert_eq!(exit, Some(0), "{doc}");
    assert_eq!(problems(&doc).len(), 0, "{doc}");
    assert_eq!(doc["passed"], true);
}

#[test]
fn a_shadow_blames_the_broader_rule_and_names_the_narrower() {
    let (_, doc) = check_json(&[], &["tests/policies/warnings/shadowed-rule.yaml"]);
    let first = &problems(&doc)[0];
    assert_eq!(
        (first["line"].as_u64(), first["column"].as_u64()),
        (Some(5), Some(5))
    );
    let message = first["message"].as_str().unwrap();
    assert!(
        message.starts_with("`*.example.com` shadows `files.example.com` (line 6)"),
        "{message}"
    );
    let hint = first["hint"].as_str().unwrap();
    assert!(
        hint.starts_with("remove `files.example.com` (line 6)"),
        "{hint}"
    );
}

#[test]
fn the_shared_tenant_hint_fits_the_domain() {
    let (_, doc) = check_json(
        &[],
        &["tests/policies/warnings/shared-tenant-wildcard.yaml"],
    );
    let hints: Vec<&str> = problems(&doc)
        .iter()
        .map(|p| p["hint"].as_str().unwrap())
        .collect();
    assert_eq!(
        hints,
        [
            "list the exact names you use, e.g. `my-tunnel.ngrok.io`",
            "list the exact names you use, e.g. `my-bucket.s3.amazonaws.com`"
        ]
    );
}

/// Each warning below is silenced by the comment on its line; the test
/// then removes the comments and sees the warnings come back.
const IGNORED: &str = r#"version: 1
mode: report                        # portcullis: ignore[report-mode]
allow:
  - "*.example.com"                 # portcullis: ignore[shadowed-rule, public-suffix-wildcard]
  - files.example.com
  - "0.0.0.0/0:443"                 # portcullis: ignore[report-mode]
  - "[::/0]:443"                    # a plain comment
"#;

#[test]
fn an_ignore_comment_silences_its_codes_on_its_own_line_only() {
    let p = TempPolicy::new(IGNORED);
    let (exit, doc) = check_json(&["--strict"], &[p.path_str()]);
    assert_eq!(exit, Some(1), "{doc}");
    // Line 6's comment names another code: its own warning stays.
    assert_eq!(
        places(&doc),
        [
            ("6:5".to_string(), "match-all-range".to_string()),
            ("7:5".to_string(), "match-all-range".to_string()),
        ]
    );
    let bare: String = IGNORED
        .lines()
        .map(|l| l.split("# portcullis").next().unwrap().trim_end())
        .collect::<Vec<_>>()
        .join("\n");
    let p = TempPolicy::new(&bare);
    let (_, doc) = check_json(&[], &[p.path_str()]);
    let codes: Vec<String> = places(&doc).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        codes,
        [
            "report-mode",
            "shadowed-rule",
            "match-all-range",
            "match-all-range"
        ]
    );
}

#[test]
fn strict_fails_on_warnings_and_says_so() {
    let rel = "tests/policies/warnings/report-mode.yaml";
    let out = portcullis(&["check", rel]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).ends_with(&format!("{rel}: ok (2 warnings)\n")));
    let out = portcullis(&["check", "--strict", rel]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).ends_with(&format!("{rel}: fails --strict (2 warnings)\n")));
}

#[test]
fn text_lines_carry_severity_code_and_a_hint_line() {
    let rel = "tests/policies/warnings/denied-rule.yaml";
    let out = portcullis(&["check", rel]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "{rel}:5:5: warning[denied-rule]: `uploads.example.com` never takes effect"
        )),
        "{text}"
    );
    assert!(
        lines[1].starts_with("  hint: remove `uploads.example.com`"),
        "{text}"
    );
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
    assert!(
        stdout(&out).contains(
            "does/not/exist.yaml:1:1: error[unreadable-file]: cannot read the policy file"
        )
    );
}

#[test]
fn json_problems_carry_exactly_what_annotations_need() {
    let (exit, doc) = check_json(
        &[],
        &[
            "tests/policies/invalid/port_zero.yaml",
            "tests/policies/warnings/all.yaml",
        ],
    );
    assert_eq!(exit, Some(1));
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["strict"], false);
    assert_eq!(doc["passed"], false);
    let keys: BTreeSet<&str> = [
        "code", "severity", "file", "line", "column", "message", "hint",
    ]
    .into();
    for p in problems(&doc) {
        let got: BTreeSet<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(got, keys, "{p}");
        assert!(Code::parse(p["code"].as_str().unwrap()).is_some(), "{p}");
    }
    let err = &problems(&doc)[0];
    assert_eq!(err["file"], "tests/policies/invalid/port_zero.yaml");
    assert_eq!(
        (err["code"].as_str(), err["severity"].as_str()),
        (Some("bad-port"), Some("error"))
    );
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
    assert!(err["hint"].as_str().unwrap().contains("1-65535"));
    assert_eq!(doc["files"].as_array().unwrap().len(), 2);
}

#[test]
fn the_older_all_warnings_fixture_still_draws_each() {
    let (exit, doc) = check_json(&[], &["tests/policies/warnings/all.yaml"]);
    assert_eq!(exit, Some(0));
    let got = places(&doc);
    for (loc, code) in [
        ("5:5", "duplicate-rule"),
        ("6:5", "shadowed-rule"),
        ("8:5", "public-suffix-wildcard"),
        ("9:5", "public-suffix-wildcard"),
        ("10:5", "shared-tenant-wildcard"),
        ("11:5", "shared-tenant-wildcard"),
        ("12:5", "shared-tenant-wildcard"),
        ("13:5", "shared-tenant-wildcard"),
        ("14:5", "denied-rule"),
        ("20:13", "redundant-rule"),
    ] {
        assert!(
            got.contains(&(loc.to_string(), code.to_string())),
            "want {loc} {code} in {got:?}"
        );
    }
}

/// The yaml blocks of the docs whose first key is a policy key. A fragment
/// without `version` is checked with `version: 1` in front. A block right
/// after `<!-- check: CODE, ... -->` is a deliberate bad example (whatever
/// its first key) and must draw exactly those codes; every other one must
/// pass `check --strict`.
#[test]
fn every_policy_in_the_docs_passes_check_strict() {
    let mut docs = vec![root().join("README.md")];
    for dir in ["docs", "docs/reference"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "md") {
                docs.push(path);
            }
        }
    }
    docs.sort();
    let (mut clean, mut bad) = (0, BTreeSet::new());
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for (line, marker, block) in policy_blocks(&text) {
            let where_ = format!("{}:{line}", doc.strip_prefix(root()).unwrap().display());
            let shows_missing_version = marker
                .as_ref()
                .is_some_and(|m: &BTreeSet<String>| m.contains("missing-key"));
            let yaml = if block.lines().any(|l| l.starts_with("version:")) || shows_missing_version
            {
                block.clone()
            } else {
                format!("version: 1\n{block}")
            };
            let p = TempPolicy::new(&yaml);
            let (exit, out) = check_json(&["--strict"], &[p.path_str()]);
            let codes: BTreeSet<String> = places(&out).into_iter().map(|(_, c)| c).collect();
            match marker {
                None => {
                    assert_eq!(
                        exit,
                        Some(0),
                        "{where_} fails check --strict:\n{yaml}\n{out}"
                    );
                    clean += 1;
                }
                Some(want) => {
                    assert_eq!(
                        codes, want,
                        "{where_}: the example draws other codes:\n{yaml}"
                    );
                    bad.extend(want);
                }
            }
        }
    }
    assert!(clean >= 5, "only {clean} policies found in the docs");
    // docs/reference/check-codes.md shows every code a policy text can draw.
    for code in Code::ALL {
        if ![Code::Unreadable, Code::EmptyFile, Code::YamlSyntax].contains(code) {
            assert!(
                bad.contains(code.as_str()),
                "no documented example of {code}"
            );
        }
    }
}

const POLICY_KEYS: &[&str] = &[
    "version",
    "mode",
    "default_ports",
    "allow",
    "deny",
    "clients",
    "ip_guard",
    "tls",
    "deny_message",
];

/// `(line, codes the block must draw, block)` for each policy block of a markdown text.
fn policy_blocks(text: &str) -> Vec<(usize, Option<BTreeSet<String>>, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```yaml" {
            i += 1;
            continue;
        }
        let start = i + 1;
        let end = (start..lines.len())
            .find(|&j| lines[j].trim() == "```")
            .expect("closed yaml block");
        let block = lines[start..end].join("\n") + "\n";
        let first_key = block
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .and_then(|l| l.split(':').next())
            .unwrap_or("");
        let marker: Option<BTreeSet<String>> = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix("<!-- check: "))
            .and_then(|l| l.strip_suffix(" -->"))
            .map(|codes| codes.split(", ").map(str::to_string).collect());
        if marker.is_some() || POLICY_KEYS.contains(&first_key) {
            out.push((start, marker, block));
        }
        i = end + 1;
    }
    out
}
