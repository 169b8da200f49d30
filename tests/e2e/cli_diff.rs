//! `portcullis diff OLD NEW`: what each client gains and loses.

use crate::support::{TempPolicy, portcullis, stdout};

#[test]
fn diff_shows_added_removed_and_narrowed_rules_per_client() {
    let old = TempPolicy::new(
        "version: 1\nallow: [a.example.com, \"*.wide.example.com\"]\nclients:\n  - name: pay\n    sources: [10.0.0.0/8]\n    allow: [api.paypal.com]\n",
    );
    let new = TempPolicy::new(
        "version: 1\nallow: [a.example.com, narrow.wide.example.com, \"b.example.com:443,80\"]\ndeny: [x.example.com]\nclients:\n  - name: pay\n    sources: [10.0.0.0/8]\n",
    );
    let out = portcullis(&["diff", old.path_str(), new.path_str()]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for line in [
        "every client (top-level rules):",
        "  + allow b.example.com:443,80",
        "  + allow narrow.wide.example.com:443",
        "  - allow *.wide.example.com:443",
        "  + deny  x.example.com:*",
        "client `pay`:",
        "  - allow api.paypal.com:443",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let out = portcullis(&["diff", "--format", "json", old.path_str(), new.path_str()]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pay = doc
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client"] == "pay")
        .unwrap();
    assert!(
        pay["allow_removed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "api.paypal.com:443")
    );
}

#[test]
fn diff_of_identical_policies_says_so_and_a_broken_file_exits_two() {
    let p = TempPolicy::new("version: 1\nallow: [a.example.com]\n");
    let out = portcullis(&["diff", p.path_str(), p.path_str()]);
    assert_eq!(
        (out.status.code(), stdout(&out).trim()),
        (Some(0), "no destination changes")
    );
    let broken = TempPolicy::new("version: 1\nallow: [\"*\"]\n");
    assert_eq!(
        portcullis(&["diff", p.path_str(), broken.path_str()])
            .status
            .code(),
        Some(2)
    );
}
