//! `portcullis diff OLD NEW`: every change in reach, one per kind, and
//! nothing for the edits that leave reach alone; exit 0, 1 and 2.

use serde_json::Value;

use crate::support::{TempPolicy, portcullis, root, stderr, stdout};

const BASE: &str = "\
version: 1
allow:
  - api.stripe.com
  - registry.npmjs.org
  - \"*.githubusercontent.com\"
deny:
  - uploads.githubusercontent.com
clients:
  - name: payments
    sources: [10.0.1.0/24]
    allow: [api.paypal.com]
  - name: batch
    sources: [10.0.2.0/24]
";

/// `BASE` with `from` replaced by `to` (which must be there).
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    BASE.replacen(from, to, 1)
}

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

/// Runs `diff` in both formats; returns (exit code, text, JSON document).
fn run_diff(old: &str, new: &str) -> (Option<i32>, String, Value) {
    let (old, new) = (TempPolicy::new(old), TempPolicy::new(new));
    let text = portcullis(&["diff", old.path_str(), new.path_str()]);
    let json = portcullis(&["diff", "--format", "json", old.path_str(), new.path_str()]);
    assert_eq!(
        text.status.code(),
        json.status.code(),
        "text and JSON disagree on the exit code"
    );
    let doc = serde_json::from_slice(&json.stdout)
        .unwrap_or_else(|e| panic!("JSON output: {e}\n{}", stdout(&json)));
    (text.status.code(), stdout(&text), doc)
}

/// `(name, old, new, kind, client, line)`: one thing changed in reach, so
/// `diff` must report exactly one change of `kind` for `client` (`None`: the
/// top level), print `line`, and exit 1.
type Row = (
    &'static str,
    String,
    String,
    &'static str,
    Option<&'static str>,
    &'static str,
);

#[test]
fn each_kind_of_change_is_exactly_one_change_and_exits_one() {
    let overlapping = edit("sources: [10.0.2.0/24]", "sources: [10.0.0.0/16]");
    let swapped = |policy: &str| {
        let (head, clients) = policy.split_at(policy.find("  - name: payments").unwrap());
        let (payments, batch) = clients.split_at(clients.find("  - name: batch").unwrap());
        format!("{head}{batch}{payments}")
    };
    let rows: Vec<Row> = vec![
        (
            "top-level mode switched to report",
            BASE.into(),
            edit("version: 1\n", "version: 1\nmode: report\n"),
            "mode",
            None,
            "  ~ mode: enforce → report (unrestricted: what the rules would refuse is let through and only logged)",
        ),
        (
            "one client switched to report",
            BASE.into(),
            edit(
                "    allow: [api.paypal.com]\n",
                "    mode: report\n    allow: [api.paypal.com]\n",
            ),
            "mode",
            Some("payments"),
            "  ~ mode: enforce → report (unrestricted: what the rules would refuse is let through and only logged)",
        ),
        (
            "ip_guard blocked emptied",
            BASE.into(),
            with("ip_guard: {blocked: []}\n"),
            "ip_guard",
            None,
            "      now dialable: 169.254.0.0/16 (link-local: cloud metadata 169.254.169.254, ECS task metadata 169.254.170.2)",
        ),
        (
            "ip_guard allowed widened",
            BASE.into(),
            with("ip_guard:\n  allowed: [10.0.0.0/8]\n"),
            "ip_guard",
            None,
            "      now dialable: 10.0.0.0/8 (private)",
        ),
        (
            "tls sni_must_match turned off",
            BASE.into(),
            with("tls:\n  sni_must_match: false\n"),
            "tls",
            None,
            "  ~ tls.sni_must_match: true → false: a tunnel's TLS server name no longer has to match its CONNECT host",
        ),
        (
            "tls ech allowed",
            BASE.into(),
            with("tls:\n  ech: allow\n"),
            "tls",
            None,
            "  ~ tls.ech: deny → allow: ClientHellos with encrypted_client_hello pass, hiding the real server name from the proxy",
        ),
        (
            "default_ports widened",
            BASE.into(),
            edit("version: 1\n", "version: 1\ndefault_ports: [443, 80]\n"),
            "default_ports",
            None,
            "  ~ default_ports: 443 → 443,80, for the destinations that name no ports:",
        ),
        (
            "sources widened to 0.0.0.0/0",
            BASE.into(),
            edit("sources: [10.0.2.0/24]", "sources: [0.0.0.0/0]"),
            "selector",
            Some("batch"),
            "  ~ sources widened: 10.0.2.0/24 → 0.0.0.0/0 (every IPv4 address)",
        ),
        (
            "a certificate selector added (the client narrowed)",
            BASE.into(),
            edit(
                "sources: [10.0.2.0/24]",
                "sources: [10.0.2.0/24]\n    certificates: [\"spiffe://acme.internal/batch\"]",
            ),
            "selector",
            Some("batch"),
            "  ~ certificates narrowed: (none) → spiffe://acme.internal/batch",
        ),
        (
            "a second VPC endpoint accepted (the client widened)",
            edit(
                "sources: [10.0.2.0/24]",
                "sources: [10.0.2.0/24]\n    vpc_endpoints: [vpce-0a1b2c3d4e5f67890]",
            ),
            edit(
                "sources: [10.0.2.0/24]",
                "sources: [10.0.2.0/24]\n    vpc_endpoints: [vpce-0a1b2c3d4e5f67890, vpce-0123456789abcdef0]",
            ),
            "selector",
            Some("batch"),
            "  ~ vpc_endpoints widened: vpce-0a1b2c3d4e5f67890 → vpce-0a1b2c3d4e5f67890, vpce-0123456789abcdef0",
        ),
        (
            "sources narrowed",
            BASE.into(),
            edit("sources: [10.0.1.0/24]", "sources: [10.0.1.0/25]"),
            "selector",
            Some("payments"),
            "  ~ sources narrowed: 10.0.1.0/24 → 10.0.1.0/25",
        ),
        (
            "client added",
            BASE.into(),
            with("  - name: ops\n    sources: [10.0.3.0/24]\n"),
            "client_added",
            Some("ops"),
            "+ client `ops` (new, position 3)",
        ),
        (
            "client removed",
            BASE.into(),
            edit("  - name: batch\n    sources: [10.0.2.0/24]\n", ""),
            "client_removed",
            Some("batch"),
            "    10.0.2.0/24 now refused: no client lists it (client_not_allowed)",
        ),
        (
            "clients reordered so that another client matches",
            overlapping.clone(),
            swapped(&overlapping),
            "client_order",
            None,
            "      10.0.1.0/24 now matched by `batch` instead of `payments`",
        ),
        (
            "destination added",
            BASE.into(),
            edit(
                "  - api.stripe.com\n",
                "  - api.stripe.com\n  - api.github.com\n",
            ),
            "destination",
            None,
            "  + allow api.github.com:443",
        ),
        (
            "destination removed",
            BASE.into(),
            edit("  - api.stripe.com\n", ""),
            "destination",
            None,
            "  - allow api.stripe.com:443",
        ),
        (
            "ports of one destination changed",
            BASE.into(),
            edit(
                "  - registry.npmjs.org\n",
                "  - \"registry.npmjs.org:443,80\"\n",
            ),
            "destination",
            None,
            "  ~ allow registry.npmjs.org: 443 → 443,80",
        ),
        (
            "deny rule removed",
            BASE.into(),
            edit("deny:\n  - uploads.githubusercontent.com\n", ""),
            "destination",
            None,
            "  - deny uploads.githubusercontent.com:*",
        ),
        (
            "a client's own destination added",
            BASE.into(),
            edit(
                "allow: [api.paypal.com]",
                "allow: [api.paypal.com, api.braintreegateway.com]",
            ),
            "destination",
            Some("payments"),
            "  + allow api.braintreegateway.com:443",
        ),
        (
            "a name widened to a wildcard shows the wildcard only",
            BASE.into(),
            edit("  - api.stripe.com\n", "  - \"*.stripe.com\"\n"),
            "destination",
            None,
            "  + allow *.stripe.com:443",
        ),
    ];
    let mut failures = Vec::new();
    for (name, old, new, kind, client, line) in rows {
        let (code, text, doc) = run_diff(&old, &new);
        let changes = doc["changes"].as_array().cloned().unwrap_or_default();
        let got: Vec<(&Value, Option<&str>)> = changes
            .iter()
            .map(|c| (&c["kind"], c["client"].as_str()))
            .collect();
        if code != Some(1)
            || got != [(&Value::from(kind), client)]
            || !text.lines().any(|l| l == line)
        {
            failures.push(format!(
                "{name}: exit {code:?}, changes {got:?}; want exit 1, one `{kind}` for {client:?} and the line {line:?} in\n{text}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Edits that leave reach as it was: exit 0, no text, an empty JSON list.
#[test]
fn reach_preserving_edits_exit_zero_with_no_output() {
    let swapped_clients = {
        let (head, clients) = BASE.split_at(BASE.find("  - name: payments").unwrap());
        let (payments, batch) = clients.split_at(clients.find("  - name: batch").unwrap());
        format!("{head}{batch}{payments}")
    };
    let rows: Vec<(&str, String)> = vec![
        (
            "rules reordered",
            edit(
                "  - api.stripe.com\n  - registry.npmjs.org\n",
                "  - registry.npmjs.org\n  - api.stripe.com\n",
            ),
        ),
        (
            "comments",
            edit(
                "allow:\n",
                "# reviewed by the platform team\nallow:  # every client\n",
            ),
        ),
        (
            "a duplicate rule",
            edit(
                "  - api.stripe.com\n",
                "  - api.stripe.com\n  - API.Stripe.com.\n",
            ),
        ),
        (
            "clients whose sources do not overlap, reordered",
            swapped_clients,
        ),
        (
            "a rule a wildcard already covers",
            edit(
                "  - \"*.githubusercontent.com\"\n",
                "  - \"*.githubusercontent.com\"\n  - raw.githubusercontent.com\n",
            ),
        ),
        (
            "defaults written out",
            edit(
                "version: 1\n",
                "version: 1\nmode: enforce\ndefault_ports: [443]\nip_guard: {blocked: default, allowed: []}\ntls: {sni_must_match: true, ech: deny}\n",
            ),
        ),
        (
            "the default port written on a rule",
            edit("  - api.stripe.com\n", "  - api.stripe.com:443\n"),
        ),
        (
            "sources split into halves",
            edit(
                "sources: [10.0.1.0/24]",
                "sources: [10.0.1.0/25, 10.0.1.128/25]",
            ),
        ),
    ];
    let mut failures = Vec::new();
    for (name, new) in rows {
        let (code, text, doc) = run_diff(BASE, &new);
        if code != Some(0) || !text.is_empty() || doc["changes"] != serde_json::json!([]) {
            failures.push(format!(
                "{name}: exit {code:?}, JSON changes {}; want exit 0 and no output, got\n{text}",
                doc["changes"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_file_that_does_not_load_exits_two_and_says_why() {
    let good = TempPolicy::new(BASE);
    let broken = TempPolicy::new("version: 1\nallow: [\"*\"]\n");
    let out = portcullis(&["diff", good.path_str(), broken.path_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:2:", broken.path_str())) && err.contains("`*` alone"),
        "{err}"
    );
    let out = portcullis(&[
        "diff",
        "--format",
        "json",
        "/nonexistent/portcullis.yaml",
        good.path_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read the policy file"),
        "{}",
        stderr(&out)
    );
}

/// README's review example is what `diff` prints for that change to the
/// example policy.
#[test]
fn the_readme_review_example_is_what_diff_prints() {
    let base = std::fs::read_to_string(root().join("config/portcullis.yaml")).unwrap();
    let mut head = base.clone();
    for (from, to) in [
        ("  - api.stripe.com\n", "  - \"*.stripe.com\"\n"),
        (
            "    sources: [10.0.2.0/24]\n",
            "    sources: [10.0.0.0/16]\n    mode: report                    # debugging a partner timeout\n",
        ),
        (
            "      - \"api-*.adyen.com\"           # glob: `*` stays inside one label\n",
            "      - \"api-*.adyen.com\"           # glob: `*` stays inside one label\n      - \"*.adyen.com:443,8443\"\n",
        ),
    ] {
        assert!(
            head.contains(from),
            "config/portcullis.yaml has no {from:?}"
        );
        head = head.replacen(from, to, 1);
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let command = "$ portcullis diff base/portcullis.yaml config/portcullis.yaml\n";
    let shown = readme
        .split_once(command)
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("README shows the review example");
    let (code, text, _) = run_diff(&base, &head);
    assert_eq!(code, Some(1));
    assert_eq!(text, shown, "README's review example is stale");
}

/// A scratch directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("portcullis-diff-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `docker run --rm -v SRC:DST[:ro]... -w DIR IMAGE ARGS...`, standing in for
/// the real image: runs the portcullis under test with each DST path in
/// ARGS mapped back to its SRC.
const DOCKER_SHIM: &str = r#"#!/usr/bin/env bash
set -euo pipefail
[ "$1" = run ] || { echo "shim: only docker run" >&2; exit 125; }
shift
maps=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rm) shift ;;
    -v) maps+=("$2"); shift 2 ;;
    -w) shift 2 ;;
    *) break ;;
  esac
done
shift # the image
args=()
for arg in "$@"; do
  for m in "${maps[@]}"; do
    src=${m%%:*}; rest=${m#*:}; dst=${rest%%:*}
    case "$arg" in "$dst"/*) arg="$src${arg#"$dst"}" ;; esac
  done
  args+=("$arg")
done
exec "$PORTCULLIS_BIN" "${args[@]}"
"#;

/// The shipped workflow's diff step, run as GitHub would (bash -eo pipefail)
/// against a real Git checkout, with `docker` standing in for the image:
/// exit 1 from `diff` is a change to review (the step passes and the summary
/// has the diff), exit 2 fails the step.
#[test]
fn the_workflow_posts_changes_for_review_and_fails_on_a_broken_policy() {
    let workflow =
        std::fs::read_to_string(root().join("deploy/github-actions/policy-check.yml")).unwrap();
    let doc: Value = serde_saphyr::from_str(&workflow).unwrap();
    let script = doc["jobs"]["review"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "diff")
        .and_then(|s| s["run"].as_str())
        .expect("the review job has a step with `id: diff`")
        .to_string();
    let rows = [
        (
            "nothing in reach",
            "# a comment\n".to_string(),
            Some(0),
            "0",
            "nothing changes in reach",
        ),
        (
            "a change to review",
            "mode: report\n".to_string(),
            Some(0),
            "1",
            "  ~ mode: enforce → report (unrestricted",
        ),
        (
            "a broken policy",
            "allow: [\"*\"]\n".to_string(),
            Some(2),
            "2",
            "failed (exit 2)",
        ),
    ];
    for (name, extra, step_exit, status, summary_has) in rows {
        let dir = Scratch::new(&name.replace(' ', "-"));
        let (repo, tmp, bin) = (dir.0.join("repo"), dir.0.join("runner"), dir.0.join("bin"));
        for d in [&repo, &tmp, &bin] {
            std::fs::create_dir_all(d).unwrap();
        }
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(["-c", "user.name=ci", "-c", "user.email=ci@example.com"])
                .args(args)
                .current_dir(&repo)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
            stdout(&out)
        };
        git(&["init", "-q"]);
        std::fs::write(repo.join("portcullis.yaml"), BASE).unwrap();
        git(&["add", "portcullis.yaml"]);
        git(&["commit", "-q", "-m", "base"]);
        let base_sha = git(&["rev-parse", "HEAD"]).trim().to_string();
        std::fs::write(repo.join("portcullis.yaml"), with(&extra)).unwrap();
        let shim = bin.join("docker");
        std::fs::write(&shim, DOCKER_SHIM).unwrap();
        std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let step = dir.0.join("step.sh");
        std::fs::write(&step, &script).unwrap();
        let (summary, output) = (dir.0.join("summary.md"), dir.0.join("output"));
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new("bash")
            .args(["--noprofile", "--norc", "-eo", "pipefail"])
            .arg(&step)
            .current_dir(&repo)
            .env("PATH", path)
            .env("PORTCULLIS_BIN", crate::support::bin())
            .env("PORTCULLIS_IMAGE", "portcullis:test")
            .env("POLICY", "portcullis.yaml")
            .env("BASE_SHA", &base_sha)
            .env("RUNNER_TEMP", &tmp)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .env("GITHUB_OUTPUT", &output)
            .output()
            .unwrap();
        let summary = std::fs::read_to_string(&summary).unwrap_or_default();
        assert_eq!(
            out.status.code(),
            step_exit,
            "{name}: step exit\n{}{}\n{summary}",
            stdout(&out),
            stderr(&out)
        );
        assert!(summary.contains(summary_has), "{name}: summary\n{summary}");
        let output = std::fs::read_to_string(&output).unwrap_or_default();
        assert_eq!(output.trim(), format!("status={status}"), "{name}");
    }
}
