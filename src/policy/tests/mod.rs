//! Table-driven tests of `Policy::decide`, one row per policy reference rule,
//! and a differential test of the index against the naive matcher.

use std::net::IpAddr;

use super::*;

const A: &str = "127.0.0.1";

fn policy(yaml: &str) -> Policy {
    match Policy::from_yaml(yaml) {
        Ok(c) => c.policy,
        Err(e) => panic!("test policy does not compile: {e:?}\n{yaml}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// (client, host, port) -> (verdict, reason, rule, client name).
type Row<'a> = (&'a str, &'a str, u16, Verdict, Reason, Option<&'a str>);

fn check_rows(p: &Policy, rows: &[Row<'_>]) {
    for (client, host, port, verdict, reason, rule) in rows {
        let d = p.decide_str(ip(client), host, *port);
        assert_eq!(
            (d.verdict, d.reason, d.rule.as_deref()),
            (*verdict, *reason, *rule),
            "client {client} -> {host}:{port}"
        );
    }
}

use Reason::*;
use Verdict::{Allow, Deny};

const BASIC: &str = r#"
version: 1
allow:
  - api.stripe.com
  - "*.githubusercontent.com"
  - "api-*.example.com:443"
  - "registry.npmjs.org:443,80"
  - "range.example.org:8000-8100"
  - "anyport.example.org:*"
  - 203.0.113.0/24:443
  - "[2001:db8::/32]:443"
  - bücher.de
  - 10.1.0.0/16:443
  - "*.svc.example.net"
deny:
  - uploads.example.com
  - "*.evil.svc.example.net"
  - "api-upload.example.com:443"
"#;

#[test]
fn names_exact_case_dots_and_idn() {
    let p = policy(BASIC);
    check_rows(
        &p,
        &[
            (
                A,
                "api.stripe.com",
                443,
                Allow,
                Allowed,
                Some("api.stripe.com"),
            ),
            (
                A,
                "API.STRIPE.COM",
                443,
                Allow,
                Allowed,
                Some("api.stripe.com"),
            ),
            (
                A,
                "api.stripe.com.",
                443,
                Allow,
                Allowed,
                Some("api.stripe.com"),
            ),
            (A, "api.stripe.com..", 443, Deny, BadRequest, None),
            (A, "api..stripe.com", 443, Deny, BadRequest, None),
            (A, "stripe.com", 443, Deny, NotAllowed, None),
            (A, "xapi.stripe.com", 443, Deny, NotAllowed, None),
            (A, "api.stripe.com.evil.net", 443, Deny, NotAllowed, None),
            (A, "api.stripe.com", 80, Deny, NotAllowed, None),
            (
                A,
                "xn--bcher-kva.de",
                443,
                Allow,
                Allowed,
                Some("bücher.de"),
            ),
            (A, "BÜCHER.de", 443, Allow, Allowed, Some("bücher.de")),
            (
                A,
                &format!("{}.com", "a".repeat(64)),
                443,
                Deny,
                BadRequest,
                None,
            ),
            (A, "", 443, Deny, BadRequest, None),
            (A, "under_score.example.com", 443, Deny, NotAllowed, None),
            (A, "bad host.example.com", 443, Deny, BadRequest, None),
        ],
    );
}

#[test]
fn wildcards_depth_apex_and_label_boundaries() {
    let p = policy(BASIC);
    let suffix = Some("*.githubusercontent.com");
    let glob = Some("api-*.example.com:443");
    check_rows(
        &p,
        &[
            (A, "raw.githubusercontent.com", 443, Allow, Allowed, suffix),
            (
                A,
                "a.b.c.githubusercontent.com",
                443,
                Allow,
                Allowed,
                suffix,
            ),
            (A, "githubusercontent.com", 443, Deny, NotAllowed, None),
            (A, "xgithubusercontent.com", 443, Deny, NotAllowed, None),
            (
                A,
                "githubusercontent.com.evil.net",
                443,
                Deny,
                NotAllowed,
                None,
            ),
            (A, "raw.githubusercontent.com", 80, Deny, NotAllowed, None),
            (A, "api-eu.example.com", 443, Allow, Allowed, glob),
            (A, "api-.example.com", 443, Allow, Allowed, glob),
            (A, "api-eu.x.example.com", 443, Deny, NotAllowed, None),
            (A, "x.api-eu.example.com", 443, Deny, NotAllowed, None),
            (A, "api.example.com", 443, Deny, NotAllowed, None),
            (
                A,
                "api-eu.example.com.evil.net",
                443,
                Deny,
                NotAllowed,
                None,
            ),
            (A, "api-eu.example.com", 80, Deny, NotAllowed, None),
        ],
    );
}

#[test]
fn ports_lists_ranges_and_any() {
    let p = policy(BASIC);
    check_rows(
        &p,
        &[
            (
                A,
                "registry.npmjs.org",
                443,
                Allow,
                Allowed,
                Some("registry.npmjs.org:443,80"),
            ),
            (
                A,
                "registry.npmjs.org",
                80,
                Allow,
                Allowed,
                Some("registry.npmjs.org:443,80"),
            ),
            (A, "registry.npmjs.org", 8080, Deny, NotAllowed, None),
            (
                A,
                "range.example.org",
                8000,
                Allow,
                Allowed,
                Some("range.example.org:8000-8100"),
            ),
            (
                A,
                "range.example.org",
                8100,
                Allow,
                Allowed,
                Some("range.example.org:8000-8100"),
            ),
            (A, "range.example.org", 8101, Deny, NotAllowed, None),
            (A, "range.example.org", 443, Deny, NotAllowed, None),
            (
                A,
                "anyport.example.org",
                1,
                Allow,
                Allowed,
                Some("anyport.example.org:*"),
            ),
            (
                A,
                "anyport.example.org",
                65535,
                Allow,
                Allowed,
                Some("anyport.example.org:*"),
            ),
        ],
    );
}

#[test]
fn deny_wins_and_covers_every_port_by_default() {
    let yaml = format!("{BASIC}  - \"*.example.com:*\"\n");
    let yaml = yaml.replace("deny:\n", "deny:\n  - nothing.invalid\n");
    let p = policy(&BASIC.replace(
        "allow:\n",
        "allow:\n  - uploads.example.com:*\n  - a.evil.svc.example.net\n",
    ));
    check_rows(
        &p,
        &[
            (
                A,
                "uploads.example.com",
                443,
                Deny,
                NotAllowed,
                Some("uploads.example.com"),
            ),
            (
                A,
                "uploads.example.com",
                8443,
                Deny,
                NotAllowed,
                Some("uploads.example.com"),
            ),
            (
                A,
                "a.evil.svc.example.net",
                443,
                Deny,
                NotAllowed,
                Some("*.evil.svc.example.net"),
            ),
            (
                A,
                "x.svc.example.net",
                443,
                Allow,
                Allowed,
                Some("*.svc.example.net"),
            ),
            (
                A,
                "api-upload.example.com",
                443,
                Deny,
                NotAllowed,
                Some("api-upload.example.com:443"),
            ),
        ],
    );
    // the deny of `*.example.com:*` appended to the deny list above
    let p = policy(&yaml);
    check_rows(
        &p,
        &[(
            A,
            "api-eu.example.com",
            443,
            Deny,
            NotAllowed,
            Some("*.example.com:*"),
        )],
    );
}

#[test]
fn ip_literals_need_ip_rules_and_pass_the_guard() {
    let p = policy(BASIC);
    check_rows(
        &p,
        &[
            (
                A,
                "203.0.113.7",
                443,
                Allow,
                Allowed,
                Some("203.0.113.0/24:443"),
            ),
            (A, "203.0.113.7", 80, Deny, NotAllowed, None),
            (A, "203.0.114.7", 443, Deny, NotAllowed, None),
            (
                A,
                "[2001:db8::1]",
                443,
                Allow,
                Allowed,
                Some("[2001:db8::/32]:443"),
            ),
            (A, "[2001:db9::1]", 443, Deny, NotAllowed, None),
            // allowed by a rule, but inside the default guard
            (A, "10.1.2.3", 443, Deny, BlockedIp, Some("10.1.0.0/16:443")),
            // a name never matches an IP rule and vice versa
            (A, "1.1.1.1", 443, Deny, NotAllowed, None),
        ],
    );
}

#[test]
fn non_canonical_ipv4_is_bad_request_even_when_the_range_is_allowed() {
    let p = policy(BASIC);
    for odd in [
        "3405803783",
        "0xcb.0.113.7",
        "0313.0.113.7",
        "203.0.113.07",
        "203.0.113.007",
        "203.113.7",
        "0x7f.1",
        "2130706433",
        "0177.0.0.1",
        "1.2.3.010",
    ] {
        let d = p.decide_str(ip(A), odd, 443);
        assert_eq!((d.verdict, d.reason), (Deny, BadRequest), "{odd}");
    }
}

#[test]
fn default_ports_apply_to_allow_lists_only() {
    let p = policy(
        "version: 1\ndefault_ports: [443, 8443]\nallow: [a.example.com]\nclients:\n  - name: c\n    sources: [127.0.0.0/8]\n    allow: [b.example.com]\n",
    );
    for (host, port, want) in [
        ("a.example.com", 8443, Allow),
        ("a.example.com", 80, Deny),
        ("b.example.com", 8443, Allow),
        ("b.example.com", 80, Deny),
    ] {
        assert_eq!(
            p.decide_str(ip(A), host, port).verdict,
            want,
            "{host}:{port}"
        );
    }
}

#[test]
fn tls_settings_default_to_strict() {
    let p = policy("version: 1\n");
    assert_eq!(
        p.tls,
        TlsPolicy {
            sni_must_match: true,
            ech_allowed: false
        }
    );
    let p = policy("version: 1\ntls:\n  sni_must_match: false\n  ech: allow\n");
    assert_eq!(
        p.tls,
        TlsPolicy {
            sni_must_match: false,
            ech_allowed: true
        }
    );
}

/// Top-level rules count once, not once per client (a 3-rule policy with
/// two clients used to report 7 or more).
#[test]
fn rule_count_counts_each_rule_once() {
    let p = policy(
        "version: 1\nallow: [a.example, b.example]\ndeny: [c.example]\nclients:\n  - name: one\n    sources: [10.0.0.0/8]\n  - name: two\n    sources: [192.168.0.0/16]\n    allow: [d.example]\n",
    );
    assert_eq!(p.rule_count(), 4);
    let top_only = policy("version: 1\nallow: [a.example, b.example]\ndeny: [c.example]\n");
    assert_eq!(top_only.rule_count(), 3);
}

/// The `detail` of each kind of refusal: what a developer reads in the body and the audit log.
#[test]
fn refusal_details_name_the_cause() {
    let p = policy(
        r#"
version: 1
allow:
  - "registry.npmjs.org:443,80"
  - "*.glob-*.example:8080"
  - 10.1.0.0/16:443
deny:
  - "uploads.example.com"
clients:
  - name: ci
    sources: [127.0.0.0/8]
    allow: ["ci-only.example:22"]
"#,
    );
    let rows = [
        (
            "no rule at all",
            A,
            "pastebin.com",
            443,
            "no allow rule for pastebin.com:443",
        ),
        (
            "a rule on other ports",
            A,
            "registry.npmjs.org",
            8443,
            "registry.npmjs.org is allowed only on ports 443,80",
        ),
        (
            "a glob on another port",
            A,
            "a.glob-1.example",
            443,
            "a.glob-1.example is allowed only on ports 8080",
        ),
        (
            "a client's own rule on another port",
            A,
            "ci-only.example",
            443,
            "ci-only.example is allowed only on ports 22",
        ),
        (
            "an IP range on another port",
            A,
            "10.1.2.3",
            80,
            "10.1.2.3 is allowed only on ports 443",
        ),
        (
            "a deny rule",
            A,
            "uploads.example.com",
            443,
            "deny rule `uploads.example.com` (line 8)",
        ),
        (
            "an unknown source",
            "192.0.2.7",
            "registry.npmjs.org",
            443,
            "source 192.0.2.7 matches no client",
        ),
        (
            "a guarded literal",
            A,
            "10.1.2.3",
            443,
            "10.1.2.3 is a guarded address",
        ),
    ];
    for (name, client, host, port, want) in rows {
        let host = Host::parse(host).unwrap();
        let d = p.decide(ip(client), &host, port);
        assert!(!d.verdict.permits(), "{name}: {d:?}");
        assert_eq!(
            p.refusal_detail(ip(client), &host, port, &d),
            want,
            "{name}"
        );
    }
}

#[test]
fn a_rule_expires_the_day_after_its_expires_day_while_in_force() {
    let p = policy(
        "version: 1\nallow:\n  - {dest: a.example, expires: 2026-11-29}\n  - {dest: b.example, expires: 2026-11-30}\n  - c.example\n",
    );
    let day = |s: &str| date::Date::parse(s).unwrap();
    let names = |rules: Vec<&Rule>| rules.iter().map(|r| r.text.to_string()).collect::<Vec<_>>();
    assert_eq!(names(p.expired_rules(day("2026-11-30"))), ["a.example"]);
    // Midnight passes with the same policy in force: b.example expires.
    assert_eq!(
        names(p.newly_expired(day("2026-11-30"), day("2026-12-01"))),
        ["b.example"]
    );
    assert!(
        p.newly_expired(day("2026-12-01"), day("2026-12-02"))
            .is_empty()
    );
}

mod deny_message;
mod directory;
mod guard_and_clients;
mod identity;
mod index;
