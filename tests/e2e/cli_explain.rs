//! `portcullis explain`: the decision, the client, the rule, why, and the exit code.
//! Guard ranges (metadata, private) are exercised here, never over the network.

use serde_json::Value;

use crate::support::{TempPolicy, portcullis, stderr, stdout};

const POLICY: &str = r#"version: 1
allow:
  - api.stripe.com
  - "*.githubusercontent.com"
  - "0.0.0.0/0:443"
  - "[::/0]:443"
deny:
  - gist.githubusercontent.com
clients:
  - name: payments
    sources: [10.0.1.0/24]
    allow: [api.paypal.com]
  - name: everyone-else
    sources: [0.0.0.0/0, "::/0"]
    mode: report
"#;

fn explain(p: &TempPolicy, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["explain", "--policy", p.path_str()];
    all.extend_from_slice(args);
    let out = portcullis(&all);
    (
        out.status.code(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no `{name}:` in\n{text}"))
}

#[test]
fn allow_prints_rule_and_client_and_exits_zero() {
    let p = TempPolicy::new(POLICY);
    let (code, out) = explain(&p, &["--client", "10.0.1.7", "api.paypal.com:443"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(field(&out, "decision"), "allow");
    assert_eq!(field(&out, "reason"), "allowed");
    assert_eq!(field(&out, "client"), "payments (10.0.1.7)");
    assert_eq!(
        field(&out, "rule"),
        "api.paypal.com (client allow rule, line 12, column 13)"
    );
    assert_eq!(
        field(&out, "why"),
        "allowed by the client allow rule `api.paypal.com` (line 12)"
    );
}

#[test]
fn deny_exits_three_and_names_the_deny_rule() {
    let p = TempPolicy::new(POLICY);
    let (code, out) = explain(&p, &["--client", "10.0.1.7", "gist.githubusercontent.com"]);
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(field(&out, "decision"), "deny");
    assert_eq!(field(&out, "reason"), "not_allowed");
    assert_eq!(
        field(&out, "rule"),
        "gist.githubusercontent.com (deny rule, line 8, column 5)"
    );
    assert_eq!(
        field(&out, "why"),
        "deny rule `gist.githubusercontent.com` (line 8); it overrides the allow rule `*.githubusercontent.com` (line 4)"
    );
}

#[test]
fn a_host_allowed_only_on_other_ports_says_which() {
    let p = TempPolicy::new(POLICY);
    let (code, out) = explain(&p, &["--client", "10.0.1.7", "api.paypal.com:80"]);
    assert_eq!((code, field(&out, "rule")), (Some(3), "(none)"));
    assert_eq!(
        field(&out, "why"),
        "api.paypal.com is allowed only on ports 443 (443 by `api.paypal.com` (line 12))"
    );
    let (code, out) = explain(&p, &["--client", "10.0.1.7", "nowhere.example:443"]);
    assert_eq!(code, Some(3));
    assert_eq!(field(&out, "why"), "no allow rule for nowhere.example:443");
}

#[test]
fn a_client_name_picks_that_clients_rules() {
    let p = TempPolicy::new(POLICY);
    let (code, out) = explain(&p, &["--client", "payments", "api.paypal.com"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(field(&out, "client"), "payments (by name)");
    // By name, even a client no source reaches first is explained on its own rules.
    let (code, out) = explain(&p, &["--client", "everyone-else", "api.paypal.com"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(field(&out, "decision"), "report");
    assert_eq!(field(&out, "client"), "everyone-else (by name)");
    assert!(field(&out, "why").ends_with("; report mode lets it through and records it"));
}

#[test]
fn an_unknown_client_name_is_an_error_with_a_suggestion() {
    let p = TempPolicy::new(POLICY);
    let (code, out) = explain(&p, &["--client", "payment", "api.paypal.com"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("no such client; did you mean `payments`?"),
        "{out}"
    );
    let open = TempPolicy::new("version: 1\nallow: [api.stripe.com]\n");
    let (code, out) = explain(&open, &["--client", "payments", "api.stripe.com"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("the policy has no `clients`"), "{out}");
}

#[test]
fn a_url_is_a_destination() {
    let p = TempPolicy::new(POLICY);
    let (code, out) = explain(
        &p,
        &[
            "--client",
            "payments",
            "https://api.paypal.com/v1/payments?x=1",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(field(&out, "target"), "api.paypal.com port 443");
    let (code, out) = explain(&p, &["--client", "payments", "http://api.paypal.com/"]);
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(field(&out, "target"), "api.paypal.com port 80");
    let (code, out) = explain(&p, &["--client", "payments", "http://api.paypal.com:443/"]);
    assert_eq!(
        (code, field(&out, "target")),
        (Some(0), "api.paypal.com port 443")
    );
    let (code, out) = explain(&p, &["--client", "payments", "ftp://api.paypal.com/"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("give the port"), "{out}");
}

#[test]
fn json_carries_the_decision_and_what_it_rests_on() {
    let p = TempPolicy::new(POLICY);
    let out = portcullis(&[
        "explain",
        "--policy",
        p.path_str(),
        "--format",
        "json",
        "--client",
        "10.0.1.7",
        "https://gist.githubusercontent.com/x",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["decision"], "deny");
    assert_eq!(doc["reason"], "not_allowed");
    assert_eq!(doc["denied_by_rule"], true);
    assert_eq!(doc["client"]["name"], "payments");
    assert_eq!(doc["client"]["source"], "10.0.1.7");
    assert_eq!(doc["rule"]["text"], "gist.githubusercontent.com");
    assert_eq!(doc["rule"]["list"], "deny");
    assert_eq!(
        (doc["rule"]["line"].as_u64(), doc["rule"]["column"].as_u64()),
        (Some(8), Some(5))
    );
    assert_eq!(doc["overridden"]["text"], "*.githubusercontent.com");
    assert_eq!(doc["target"]["host"], "gist.githubusercontent.com");
    assert_eq!(doc["target"]["port"], 443);
    assert!(
        doc["summary"]
            .as_str()
            .unwrap()
            .starts_with("deny rule `gist.githubusercontent.com` (line 8)")
    );
    let out = portcullis(&[
        "explain",
        "--policy",
        p.path_str(),
        "--format",
        "json",
        "--client",
        "payments",
        "api.paypal.com:8443",
    ]);
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["rule"], Value::Null);
    assert_eq!(doc["other_ports"][0]["text"], "api.paypal.com");
    assert_eq!(doc["other_ports"][0]["ports"], "443");
    assert_eq!(doc["other_ports"][0]["list"], "client_allow");
}

#[test]
fn report_mode_exits_zero_with_the_enforce_reason() {
    let p = TempPolicy::new(POLICY);
    let (code, out) = explain(&p, &["--client", "192.0.2.1", "evil.example.net"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(field(&out, "decision"), "report");
    assert_eq!(field(&out, "reason"), "not_allowed");
    assert_eq!(field(&out, "client"), "everyone-else (192.0.2.1)");
}

#[test]
fn metadata_and_private_literals_are_blocked_even_when_a_range_allows_them() {
    let p = TempPolicy::new(POLICY);
    for target in [
        "169.254.169.254:443",
        "169.254.170.2:443",
        "10.0.0.1:443",
        "[::ffff:169.254.169.254]:443",
        "[64:ff9b::a9fe:a9fe]:443",
        "[2002:a9fe:a9fe::1]:443",
        "[fd00:ec2::254]:443",
    ] {
        let (code, out) = explain(&p, &["--client", "10.0.1.7", target]);
        assert_eq!(code, Some(3), "{target}: {out}");
        assert_eq!(field(&out, "reason"), "blocked_ip", "{target}");
    }
    let (code, out) = explain(&p, &["--client", "10.0.1.7", "203.0.113.7:443"]);
    assert_eq!((code, field(&out, "reason")), (Some(0), "allowed"), "{out}");
}

#[test]
fn non_canonical_ipv4_is_a_bad_request() {
    let p = TempPolicy::new(POLICY);
    for target in [
        "2130706433:443",
        "0x7f.1:443",
        "0177.0.0.1:443",
        "1.2.3.010:443",
    ] {
        let (code, out) = explain(&p, &["--client", "10.0.1.7", target]);
        assert_eq!(code, Some(3), "{target}: {out}");
        assert_eq!(field(&out, "reason"), "bad_request", "{target}");
    }
}

#[test]
fn usage_errors_exit_two() {
    let p = TempPolicy::new(POLICY);
    assert_eq!(explain(&p, &["api.stripe.com:99999"]).0, Some(2));
    assert_eq!(explain(&p, &["2001:db8::1:443"]).0, Some(2));
    let broken = TempPolicy::new("version: 1\nallow: [\"*\"]\n");
    let (code, out) = explain(&broken, &["api.stripe.com"]);
    assert_eq!(code, Some(2));
    assert!(out.contains(":2:9: error[bad-wildcard]:"), "{out}");
}

#[test]
fn example_policy_explains_as_documented() {
    let out = portcullis(&[
        "explain",
        "--policy",
        "config/portcullis.yaml",
        "api.stripe.com:443",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let out = portcullis(&[
        "explain",
        "--policy",
        "config/portcullis.yaml",
        "pastebin.com:443",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
}

#[test]
fn the_deciding_rule_shows_its_owner_and_ticket() {
    let p = TempPolicy::new(
        "version: 1\nallow:\n  - api.github.com\n  - dest: api.stripe.com\n    owner: payments-team\n    ticket: SEC-123\n    expires: 2020-01-01\n",
    );
    let (code, out) = explain(&p, &["api.stripe.com:443"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        field(&out, "rule"),
        "api.stripe.com (allow rule, line 4, column 11)"
    );
    assert_eq!(field(&out, "owner"), "payments-team");
    assert_eq!(field(&out, "ticket"), "SEC-123");
    assert_eq!(field(&out, "expires"), "2020-01-01");
    let (_, json) = explain(&p, &["--format", "json", "api.stripe.com:443"]);
    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["rule"]["owner"], "payments-team");
    assert_eq!(doc["rule"]["ticket"], "SEC-123");
    assert_eq!(doc["rule"]["expires"], "2020-01-01");
    // A plain rule has none.
    let (_, out) = explain(&p, &["api.github.com:443"]);
    assert!(!out.contains("owner:"), "{out}");
    let (_, json) = explain(&p, &["--format", "json", "api.github.com:443"]);
    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["rule"]["owner"], Value::Null);
}

const SHARED: &str = r#"version: 1
allow: [api.stripe.com]
clients:
  - name: payments
    sources: [10.0.1.0/24]
    certificates: ["spiffe://acme.internal/ns/payments/sa/api"]
    allow: [api.paypal.com]
  - name: partner
    vpc_endpoints: [vpce-0a1b2c3d4e5f67890]
    allow: [partner.example]
  - name: batch
    tokens: ["sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"]
    allow: [batch.example]
"#;

/// `--identity` asks as a caller presenting a certificate, a token or a VPC
/// endpoint would: the selectors combine with the source (AND) as in the proxy.
#[test]
fn identity_is_matched_with_the_source_as_the_proxy_would() {
    let p = TempPolicy::new(SHARED);
    let spiffe = "spiffe://acme.internal/ns/payments/sa/api";
    let (code, out) = explain(
        &p,
        &[
            "--client",
            "10.0.1.9",
            "--identity",
            spiffe,
            "api.paypal.com",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        field(&out, "client"),
        format!("payments (10.0.1.9, identity {spiffe})")
    );
    // The certificate alone, from another source: no client (AND).
    let (code, out) = explain(
        &p,
        &[
            "--client",
            "10.9.9.9",
            "--identity",
            spiffe,
            "api.paypal.com",
        ],
    );
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(field(&out, "reason"), "proxy_auth_required");
    assert_eq!(
        field(&out, "why"),
        format!("source 10.9.9.9, certificate {spiffe} matches no client")
    );
    // A VPC endpoint id and a token digest, each with any source.
    let (code, out) = explain(
        &p,
        &["--identity", "vpce-0a1b2c3d4e5f67890", "partner.example"],
    );
    assert_eq!((code, field(&out, "decision")), (Some(0), "allow"), "{out}");
    let digest = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    let (code, out) = explain(
        &p,
        &["--format", "json", "--identity", digest, "batch.example"],
    );
    assert_eq!(code, Some(0), "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["client"]["name"], "batch");
    assert_eq!(doc["client"]["identity"], "token:sha256:2c26b46b68ff…");
}

#[test]
fn a_malformed_identity_or_one_with_a_client_name_is_a_usage_error() {
    let p = TempPolicy::new(SHARED);
    let (code, out) = explain(&p, &["--identity", "payments", "api.paypal.com"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("--identity `payments` is not a certificate selector"),
        "{out}"
    );
    let (code, out) = explain(
        &p,
        &[
            "--client",
            "payments",
            "--identity",
            "cn:payments",
            "api.paypal.com",
        ],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("give --client an IP"), "{out}");
}

#[test]
fn the_deciding_rule_shows_its_allow_private_ranges() {
    let p = TempPolicy::new(
        "version: 1\nallow:\n  - api.github.com\n  - dest: sts.eu-west-1.amazonaws.com\n    allow_private: [10.0.0.0/16, \"fd00:1::/64\"]\n",
    );
    let (code, out) = explain(&p, &["sts.eu-west-1.amazonaws.com:443"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        field(&out, "private"),
        "10.0.0.0/16, fd00:1::/64 (guarded private addresses this rule may dial)"
    );
    let args = ["--format", "json", "sts.eu-west-1.amazonaws.com:443"];
    let (_, json) = explain(&p, &args);
    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        doc["rule"]["allow_private"],
        serde_json::json!(["10.0.0.0/16", "fd00:1::/64"])
    );
    // A plain rule has none.
    let (_, out) = explain(&p, &["api.github.com:443"]);
    assert!(!out.contains("private:"), "{out}");
    let (_, json) = explain(&p, &["--format", "json", "api.github.com:443"]);
    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["rule"]["allow_private"], serde_json::json!([]));
}
