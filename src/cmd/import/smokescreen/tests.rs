//! The Smokescreen importer against Smokescreen's decision order (the
//! service's domains, then the global deny list, then the global allow
//! list, then the service's action), on a table of probes.

use crate::policy::{CertName, Verdict};

const FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/import/smokescreen/services.yaml"
);

/// A reference Smokescreen: `allow`, `report` (allowed and reported) or `deny`.
fn smokescreen(acl: &serde_json::Value, service: &str, host: &str) -> &'static str {
    let matches = |globs: &serde_json::Value| {
        globs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str())
            .any(|g| match g.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => g == host,
            })
    };
    let rule = acl["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap_or(&acl["default"]);
    if rule.is_null() {
        return "deny";
    }
    if matches(&rule["allowed_domains"]) {
        return "allow";
    }
    if matches(&acl["global_deny_list"]) {
        return "deny";
    }
    if matches(&acl["global_allow_list"]) {
        return "allow";
    }
    match rule["action"].as_str().unwrap() {
        "report" => "report",
        "open" => "allow",
        _ => "deny",
    }
}

#[test]
fn services_decide_like_smokescreen() {
    let text = std::fs::read_to_string(FILE).unwrap();
    let acl: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let out = super::import(&text).unwrap().render();
    let checked =
        crate::policy::compile::check(&out, crate::policy::date::Date::from_unix_seconds(0));
    let compiled = checked
        .compiled
        .unwrap_or_else(|| panic!("{out}\n{:?}", checked.problems));
    // (what it pins, service (None: no certificate), host, why they differ)
    let rows: &[(&str, Option<&str>, &str, Option<&str>)] = &[
        ("own domain", Some("checkout"), "api.stripe.com", None),
        (
            "own glob, any depth",
            Some("checkout"),
            "a.b.braintreegateway.com",
            None,
        ),
        (
            "glob is not the apex",
            Some("checkout"),
            "braintreegateway.com",
            None,
        ),
        (
            "own domain beats the global deny list",
            Some("checkout"),
            "hooks.slack.com",
            None,
        ),
        (
            "global deny list for the others",
            Some("crawler"),
            "hooks.slack.com",
            None,
        ),
        (
            "global allow list",
            Some("crawler"),
            "time.cloudflare.com",
            None,
        ),
        (
            "deny beats global allow",
            Some("crawler"),
            "pastebin.com",
            None,
        ),
        ("not listed, enforce", Some("crawler"), "evil.example", None),
        (
            "report mode lets it through",
            Some("reporting"),
            "evil.example",
            None,
        ),
        (
            "report mode and the global deny list",
            Some("reporting"),
            "pastebin.com",
            Some(
                "portcullis's report mode reports a deny rule instead of enforcing it (WARNING on the client)",
            ),
        ),
        (
            "unknown service: default rule",
            Some("unknown-svc"),
            "status.example.org",
            None,
        ),
        (
            "unknown service: default enforces",
            Some("unknown-svc"),
            "api.stripe.com",
            None,
        ),
        (
            "no certificate: default rule",
            None,
            "status.example.org",
            None,
        ),
        (
            "open service",
            Some("legacy-batch"),
            "anything.example",
            Some("stricter: `action: open` is imported as enforce (comment on the client)"),
        ),
    ];
    for (name, service, host, differs) in rows {
        let cert = service
            .map(|s| vec![CertName::Cn(s.to_string())])
            .unwrap_or_default();
        let caller = crate::policy::Caller {
            addr: "10.0.0.1".parse().unwrap(),
            certificate: &cert,
            token: None,
            vpc_endpoint: None,
        };
        let got = match compiled.policy.decide_str(caller, host, 443).verdict {
            Verdict::Allow => "allow",
            Verdict::Report => "report",
            Verdict::Deny => "deny",
        };
        let want = smokescreen(&acl, service.unwrap_or(""), host);
        match differs {
            None => assert_eq!(got, want, "{name}\n{out}"),
            Some(why) => assert_ne!(got, want, "{name}: expected to differ ({why})\n{out}"),
        }
    }
}

#[test]
fn what_smokescreen_refuses_is_an_error_with_its_line() {
    for (text, line, says) in [
        (
            "version: v1\nservices:\n  - name: a\n    action: allow\n",
            4,
            "unknown action `allow`",
        ),
        ("version: v2\nservices: []\n", 1, "`version` must be `v1`"),
        ("version: v1\n", 1, "no `services`"),
        (
            "version: v1\nservices:\n  - {name: a, action: enforce}\n  - {name: a, action: report}\n",
            4,
            "defined twice",
        ),
        ("version: v1\nservices: [\n", 2, "not valid YAML"),
    ] {
        let e = super::import(text).unwrap_err();
        assert_eq!(e.line, line, "{text}: {}", e.message);
        assert!(e.message.contains(says), "{}", e.message);
    }
}

#[test]
fn unknown_keys_and_bad_globs_become_comments() {
    let text = "version: v1\nservices:\n  - name: a\n    action: enforce\n    colour: blue\n    allowed_domains: [\"ok.test\", \"*bad.test\"]\nextra: 1\n";
    let out = super::import(text).unwrap().render();
    assert!(out.contains("line 5: key `colour`"), "{out}");
    assert!(out.contains("line 7: key `extra`"), "{out}");
    assert!(
        out.contains("`*bad.test` is not a domain portcullis can write"),
        "{out}"
    );
}
