//! `portcullis test --policy P CASES`: expected decisions pinned in a file;
//! exit 0 when all hold, 1 on any mismatch (each printed), 2 on error.

use serde_json::Value;

use crate::support::{TempPolicy, portcullis, root, stderr, stdout};

const POLICY: &str = "config/portcullis.yaml";
const CASES: &str = "config/portcullis.test.yaml";

fn test(policy: &str, cases: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["test", "--policy", policy];
    args.extend_from_slice(extra);
    args.push(cases);
    let out = portcullis(&args);
    (out.status.code(), stdout(&out), stderr(&out))
}

#[test]
fn the_example_cases_hold_for_the_example_policy() {
    let (code, out, err) = test(POLICY, CASES, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, format!("{CASES}: 14 cases, 14 passed, 0 failed\n"));
}

#[test]
fn every_mismatch_is_printed_with_the_deciding_rule() {
    let rel = "tests/policies/cases/failing.yaml";
    let (code, out, _) = test(POLICY, rel, &[]);
    assert_eq!(code, Some(1), "{out}");
    let want = [
        format!("{rel}:3:3: FAIL client checkout -> api.paypal.com: expected allow, got deny"),
        format!("  {POLICY}: no allow rule for api.paypal.com:443"),
        format!("{rel}:4:3: FAIL gist is open to checkout: expected allow, got deny"),
        format!("  {POLICY}: deny rule `gist.githubusercontent.com` (line 49)"),
        format!(
            "{rel}:8:3: FAIL client payouts -> registry.npmjs.org:8080: expected deny (blocked_ip), got deny (not_allowed)"
        ),
        format!(
            "  {POLICY}: registry.npmjs.org is allowed only on ports 443,80 (443,80 by `registry.npmjs.org:443,80` (line 45))"
        ),
        format!("{rel}: 4 cases, 1 passed, 3 failed"),
    ];
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, want);
}

#[test]
fn a_change_that_opens_reach_fails_the_pinned_cases() {
    // The review this command exists for: someone drops the deny rule on
    // gist.githubusercontent.com; the policy still checks, the cases catch it.
    let text = std::fs::read_to_string(root().join(POLICY)).unwrap();
    let opened = text.replace("  - gist.githubusercontent.com", "  - pastebin.example");
    assert_ne!(opened, text);
    let p = TempPolicy::new(&opened.replace(
        "  - objects.githubusercontent.com",
        "  - objects.githubusercontent.com\n  - gist.githubusercontent.com",
    ));
    let (code, out, _) = test(p.path_str(), CASES, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "FAIL no paste services, even below an allowed domain: expected deny, got allow"
        ),
        "{out}"
    );
    assert!(out.ends_with("14 cases, 13 passed, 1 failed\n"), "{out}");
}

#[test]
fn a_malformed_cases_file_is_an_error_with_line_and_column() {
    let rel = "tests/policies/cases/malformed.yaml";
    let (code, out, err) = test(POLICY, rel, &[]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.starts_with(&format!("{rel}:2:52: error: unknown variant `maybe`")),
        "{err}"
    );
    assert!(out.is_empty(), "no case runs: {out}");
}

#[test]
fn cases_that_cannot_run_are_errors_each_with_its_place() {
    let rel = "tests/policies/cases/cannot_run.yaml";
    let (code, _, err) = test(POLICY, rel, &[]);
    assert_eq!(code, Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert!(lines[0].starts_with(&format!("{rel}:1:12: error: no client `checkot`")));
    assert!(lines[0].ends_with("(did you mean `checkout`?)"), "{err}");
    assert!(lines[1].starts_with(&format!(
        "{rel}:2:12: error: `10.0.1.300` is not an IP address"
    )));
    assert!(lines[2].starts_with(&format!("{rel}:3:3: error: the policy has `clients`")));
    assert!(lines[3].starts_with(&format!("{rel}:4:28: error: `api.stripe.com:0`")));
}

#[test]
fn a_policy_that_does_not_load_or_a_missing_file_is_an_error() {
    let broken = TempPolicy::new("version: 1\nallow: [\"*\"]\n");
    let (code, _, err) = test(broken.path_str(), CASES, &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains(":2:9: error[bad-wildcard]:"), "{err}");
    let (code, _, err) = test(POLICY, "does/not/exist.yaml", &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot read does/not/exist.yaml"), "{err}");
}

#[test]
fn json_lists_every_case_with_its_outcome() {
    let (code, out, _) = test(
        POLICY,
        "tests/policies/cases/failing.yaml",
        &["--format", "json"],
    );
    assert_eq!(code, Some(1));
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (
            doc["passed"].as_bool(),
            doc["total"].as_u64(),
            doc["failed"].as_u64()
        ),
        (Some(false), Some(4), Some(3))
    );
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases[1]["case"], "gist is open to checkout");
    assert_eq!(cases[1]["ok"], false);
    assert_eq!(cases[1]["expected"], "allow");
    assert_eq!(cases[1]["got"], "deny");
    assert_eq!(
        cases[1]["rule"],
        "deny rule `gist.githubusercontent.com` (line 49)"
    );
    assert_eq!(cases[1]["dest"], "gist.githubusercontent.com:443");
    assert_eq!(cases[3]["ok"], true);
}

fn yaml(rel: &str) -> Value {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn the_cases_schema_is_committed_and_accepts_the_examples() {
    let out = portcullis(&["schema", "cases"]);
    assert_eq!(out.status.code(), Some(0));
    let committed =
        std::fs::read_to_string(root().join("config/portcullis.test.schema.json")).unwrap();
    assert_eq!(
        stdout(&out),
        committed,
        "config/portcullis.test.schema.json is stale: run `cargo run -- schema cases > config/portcullis.test.schema.json`"
    );
    let schema: Value = serde_json::from_str(&committed).unwrap();
    let v = jsonschema::draft7::new(&schema).expect("a valid draft-07 schema");
    for rel in [CASES, "tests/policies/cases/failing.yaml"] {
        let errors: Vec<String> = v.iter_errors(&yaml(rel)).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{rel}: {errors:?}");
    }
    for bad in [
        "- {client: a, dest: x, expect: maybe}",
        "- {client: a, source: 10.0.0.1, dest: x, expect: allow}",
        "- {client: a, expect: allow}",
        "- {client: a, dest: x, expect: allow, extra: 1}",
        "- {client: a, dest: x, expect: deny, reason: dns_error}",
        "[]",
    ] {
        let doc: Value = serde_saphyr::from_str(bad).unwrap();
        assert!(!v.is_valid(&doc), "the schema accepts {bad}");
    }
    let text = std::fs::read_to_string(root().join(CASES)).unwrap();
    assert!(
        text.starts_with("# yaml-language-server: $schema=./portcullis.test.schema.json\n"),
        "the example points editors at its schema"
    );
}

/// The shipped GitHub workflow's last review step, run as GitHub would run
/// it (bash, in the checkout), with `docker run ... IMAGE ARGS` standing for
/// `portcullis ARGS`: it tests only when a cases file sits next to the policy.
#[test]
fn the_workflow_runs_the_cases_file_next_to_the_policy() {
    let workflow =
        std::fs::read_to_string(root().join("deploy/github-actions/policy-check.yml")).unwrap();
    let doc: Value = serde_saphyr::from_str(&workflow).unwrap();
    let steps = doc["jobs"]["review"]["steps"].as_array().unwrap();
    let last = steps.last().unwrap();
    assert_eq!(last["name"], "portcullis test (expected decisions)");
    let script = last["run"].as_str().unwrap();

    let dir = std::env::temp_dir().join(format!("portcullis-workflow-{}", std::process::id()));
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let docker = bin_dir.join("docker");
    std::fs::write(
        &docker,
        format!(
            "#!/bin/sh\n# docker run --rm -v X -w Y IMAGE ARGS... -> portcullis ARGS...\nwhile [ \"$1\" != \"$PORTCULLIS_IMAGE\" ]; do shift; done\nshift\nexec {} \"$@\"\n",
            crate::support::bin().display()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&docker).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&docker, perms).unwrap();
    std::fs::copy(root().join(POLICY), dir.join("portcullis.yaml")).unwrap();
    let run = || {
        let out = std::process::Command::new("bash")
            .args(["-e", "-c", script])
            .current_dir(&dir)
            .env("POLICY", "portcullis.yaml")
            .env("PORTCULLIS_IMAGE", "ghcr.io/example/portcullis:test")
            .env(
                "PATH",
                format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
            )
            .output()
            .unwrap();
        (out.status.code(), stdout(&out))
    };
    let (code, out) = run();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("no portcullis.test.yaml next to portcullis.yaml"),
        "{out}"
    );
    std::fs::copy(root().join(CASES), dir.join("portcullis.test.yaml")).unwrap();
    let (code, out) = run();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("14 cases, 14 passed, 0 failed"), "{out}");
    std::fs::copy(
        root().join("tests/policies/cases/failing.yaml"),
        dir.join("portcullis.test.yaml"),
    )
    .unwrap();
    let (code, out) = run();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL gist is open to checkout"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
