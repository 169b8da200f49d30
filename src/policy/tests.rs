//! Table-driven tests of `Policy::decide`, one row per SPEC section 2 rule,
//! and a differential test of the index against the naive matcher.

use std::net::IpAddr;

use proptest::prelude::*;

use super::pattern::parse_destination;
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
use Verdict::{Allow, Deny, Report};

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
fn guard_applies_to_every_default_range_for_literals() {
    let p = policy("version: 1\nallow:\n  - 0.0.0.0/0:*\n  - \"[::/0]:*\"\n");
    for blocked in [
        "169.254.169.254",
        "169.254.170.2",
        "10.0.0.1",
        "127.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "100.64.0.1",
        "0.0.0.0",
        "192.0.0.1",
        "198.18.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "[::1]",
        "[::]",
        "[fc00::1]",
        "[fe80::1]",
        "[ff02::1]",
        "[2001::1]",
        "[::ffff:169.254.169.254]",
        "[::ffff:a9fe:a9fe]",
        "[64:ff9b::169.254.169.254]",
        "[64:ff9b::a00:1]",
        "[2002:a9fe:a9fe::]",
        "[2002:c0a8:1::1]",
        "[::ffff:127.0.0.1]",
    ] {
        let d = p.decide_str(ip(A), blocked, 443);
        assert_eq!((d.verdict, d.reason), (Deny, BlockedIp), "{blocked}");
    }
    for open in [
        "8.8.8.8",
        "[2606:4700::1111]",
        "[::ffff:8.8.8.8]",
        "[64:ff9b::808:808]",
    ] {
        let d = p.decide_str(ip(A), open, 443);
        assert_eq!(d.verdict, Allow, "{open}");
    }
}

#[test]
fn guard_lists_extend_replace_and_carve_out() {
    let p = policy(
        "version: 1\nallow: [\"0.0.0.0/0:*\"]\nip_guard:\n  blocked: [default, 192.0.2.0/24]\n  allowed: [127.0.0.0/8, 169.254.170.2]\n",
    );
    assert_eq!(p.decide_str(ip(A), "192.0.2.1", 443).reason, BlockedIp);
    assert_eq!(p.decide_str(ip(A), "127.0.0.1", 443).reason, Allowed);
    assert_eq!(p.decide_str(ip(A), "169.254.170.2", 443).reason, Allowed);
    assert_eq!(
        p.decide_str(ip(A), "169.254.169.254", 443).reason,
        BlockedIp
    );
    let replaced =
        policy("version: 1\nallow: [\"0.0.0.0/0:*\"]\nip_guard:\n  blocked: [192.0.2.0/24]\n");
    assert_eq!(
        replaced.decide_str(ip(A), "192.0.2.1", 443).reason,
        BlockedIp
    );
    assert_eq!(replaced.decide_str(ip(A), "10.0.0.1", 443).reason, Allowed);
    assert!(replaced.guard.is_dialable(ip("10.0.0.1")));
    assert!(
        !policy("version: 1\n")
            .guard
            .is_dialable(ip("169.254.169.254"))
    );
}

const CLIENTS: &str = r#"
version: 1
allow: [common.example.com]
deny: [denied.example.com]
clients:
  - name: payments
    sources: [127.0.0.2/32, "fd00:1::/64"]
    allow: [api.paypal.com]
  - name: overlap
    sources: [127.0.0.0/24]
  - name: learner
    sources: [127.0.1.0/24]
    mode: report
"#;

#[test]
fn clients_first_match_extra_allow_and_refusal() {
    let p = policy(CLIENTS);
    let rows: &[(&str, &str, Verdict, Reason, Option<&str>)] = &[
        (
            "127.0.0.2",
            "api.paypal.com",
            Allow,
            Allowed,
            Some("payments"),
        ),
        (
            "127.0.0.2",
            "common.example.com",
            Allow,
            Allowed,
            Some("payments"),
        ),
        (
            "fd00:1::5",
            "api.paypal.com",
            Allow,
            Allowed,
            Some("payments"),
        ),
        (
            "::ffff:127.0.0.2",
            "api.paypal.com",
            Allow,
            Allowed,
            Some("payments"),
        ),
        (
            "127.0.0.3",
            "api.paypal.com",
            Deny,
            NotAllowed,
            Some("overlap"),
        ),
        (
            "127.0.0.3",
            "common.example.com",
            Allow,
            Allowed,
            Some("overlap"),
        ),
        (
            "127.0.0.2",
            "denied.example.com",
            Deny,
            NotAllowed,
            Some("payments"),
        ),
        (
            "192.0.2.1",
            "common.example.com",
            Deny,
            ClientNotAllowed,
            None,
        ),
        (
            "127.0.1.9",
            "nothing.example.com",
            Report,
            NotAllowed,
            Some("learner"),
        ),
        (
            "127.0.1.9",
            "denied.example.com",
            Report,
            NotAllowed,
            Some("learner"),
        ),
        (
            "127.0.1.9",
            "common.example.com",
            Allow,
            Allowed,
            Some("learner"),
        ),
    ];
    for (client, host, verdict, reason, name) in rows {
        let d = p.decide_str(ip(client), host, 443);
        assert_eq!(
            (d.verdict, d.reason, d.client.as_deref()),
            (*verdict, *reason, *name),
            "{client} -> {host}"
        );
    }
}

#[test]
fn report_mode_reports_what_enforce_would_deny_but_not_bad_requests_or_guarded_ips() {
    let p = policy(
        "version: 1\nmode: report\nallow: [ok.example.com, \"10.0.0.0/8:443\"]\nclients:\n  - name: strict\n    sources: [127.0.0.5]\n    mode: enforce\n  - name: inherits\n    sources: [127.0.0.6]\n",
    );
    let d = p.decide_str(ip("127.0.0.6"), "other.example.com", 443);
    assert_eq!((d.verdict, d.reason), (Report, NotAllowed));
    assert_eq!(p.decide_str(ip("127.0.0.6"), "10.0.0.1", 443).verdict, Deny);
    assert_eq!(
        p.decide_str(ip("127.0.0.6"), "10.0.0.1", 443).reason,
        BlockedIp
    );
    assert_eq!(
        p.decide_str(ip("127.0.0.5"), "other.example.com", 443)
            .verdict,
        Deny
    );
    assert_eq!(
        p.decide_str(ip("192.0.2.1"), "ok.example.com", 443).verdict,
        Report
    );
    assert_eq!(
        p.decide_str(ip("192.0.2.1"), "ok.example.com", 443).reason,
        ClientNotAllowed
    );
    let bad = p.decide_str(ip("127.0.0.6"), "0x7f.1", 443);
    assert_eq!((bad.verdict, bad.reason), (Deny, BadRequest));
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

// ---- the index agrees with the naive matcher ----------------------------

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("api".to_string()),
        Just("api-1".to_string()),
        Just("com".to_string()),
        "[a-c]{1,3}",
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5).prop_map(|l| l.join("."))
}

fn pattern_text() -> impl Strategy<Value = String> {
    let port = prop_oneof![
        Just(""),
        Just(":443"),
        Just(":80"),
        Just(":80-443"),
        Just(":*")
    ];
    let host = prop_oneof![
        name(),
        name().prop_map(|n| format!("*.{n}")),
        (
            name(),
            prop_oneof![Just("api-*"), Just("*-1"), Just("a*"), Just("*")]
        )
            .prop_map(|(n, g)| format!("{g}.{n}")),
        (name(), name()).prop_map(|(a, b)| format!("*.{a}-*.{b}")),
        prop_oneof![
            Just("127.0.0.0/8"),
            Just("0.0.0.0/0"),
            Just("127.0.0.1"),
            Just("[::1/128]")
        ]
        .prop_map(String::from),
    ];
    (host, port).prop_map(|(h, p)| format!("{h}{p}"))
}

fn host_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => name(),
        1 => Just("127.0.0.1".to_string()),
        1 => Just("[::1]".to_string()),
        1 => Just("8.8.8.8".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn index_agrees_with_naive_matcher(
        allow in prop::collection::vec(pattern_text(), 0..12),
        deny in prop::collection::vec(pattern_text(), 0..4),
        hosts in prop::collection::vec((host_text(), prop_oneof![Just(443u16), Just(80), Just(8080)]), 1..16),
    ) {
        let quote = |l: &[String]| l.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        let yaml = format!(
            "version: 1\nallow: [{}]\ndeny: [{}]\nip_guard:\n  blocked: []\n",
            quote(&allow), quote(&deny)
        );
        let p = policy(&yaml);
        let naive = |list: &[String], default_any: bool, host: &Host, port: u16| {
            list.iter().any(|t| {
                let (pat, ports) = parse_destination(t).unwrap();
                let ports = ports.unwrap_or(if default_any { pattern::Ports::Any } else { pattern::Ports::Ranges(vec![443..=443]) });
                ports.contains(port) && pat.matches(host)
            })
        };
        for (h, port) in hosts {
            let host = Host::parse(&h).unwrap();
            let d = p.decide(ip(A), &host, port);
            let want = !naive(&deny, true, &host, port) && naive(&allow, false, &host, port);
            prop_assert_eq!(d.verdict == Allow, want, "{}:{} in\n{}", h, port, yaml);
            // whichever rule the index names must itself match
            if let Some(rule) = &d.rule {
                let (pat, _) = parse_destination(rule).unwrap();
                prop_assert!(pat.matches(&host), "rule {} does not match {}", rule, h);
            }
        }
    }

    #[test]
    fn normalisation_is_idempotent(raw in "[a-zA-Z0-9ÀßéüÜ.-]{1,40}\\.?") {
        if let Ok(once) = Host::parse(&raw) {
            let twice = Host::parse(&once.to_string()).expect("a normalised host parses again");
            prop_assert_eq!(once, twice);
        }
    }

    #[test]
    fn parsing_never_panics(raw in "\\PC{0,80}") {
        let _ = Host::parse(&raw);
        let _ = parse_destination(&raw);
    }
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
