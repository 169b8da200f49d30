use std::io::Write;

use serde_json::{Value, json};

use super::*;

/// An audit record as the proxy writes it (SPEC 8), in report mode.
fn rec(client: Option<&str>, addr: &str, host: &str, port: u16, ts: &str) -> Value {
    json!({
        "ts": ts, "event": "connection", "listener": "explicit", "client": client,
        "client_addr": addr, "method": "CONNECT", "host": host, "port": port, "sni": null,
        "decision": "report", "reason": "not_allowed", "rule": null,
        "upstream_addr": "203.0.113.10:443", "status": 200, "bytes_egress": 10,
        "bytes_ingress": 20, "duration_ms": 5, "policy_generation": 1
    })
}

fn lines(records: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        writeln!(out, "{r}").unwrap();
    }
    out
}

fn suggest(records: &[Value], current: Option<&Policy>, opts: &Options) -> String {
    let mut s = Suggester::new(current, opts.client.clone());
    s.read(&lines(records)[..]).unwrap();
    s.render(opts)
}

/// Compiles the suggestion and asserts `check` has nothing to say.
fn assert_clean(yaml: &str) -> Policy {
    let compiled = Policy::from_yaml(yaml).unwrap_or_else(|e| panic!("{e:?}\n{yaml}"));
    assert_eq!(
        compiled.warnings(crate::policy_file::today()),
        vec![],
        "{yaml}"
    );
    compiled.policy
}

fn rule_lines(yaml: &str) -> Vec<&str> {
    yaml.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("- \"") && !l.contains("/"))
        .collect()
}

const T1: &str = "2026-11-01T10:00:00.000Z";
const T2: &str = "2026-11-02T10:00:00.000Z";
const T3: &str = "2026-11-03T10:00:00.000Z";

#[test]
fn report_records_become_a_commented_policy_that_allows_them() {
    let records = [
        rec(None, "10.0.0.5:40000", "api.stripe.com", 443, T2),
        rec(None, "10.0.0.5:40001", "API.Stripe.com.", 443, T1),
        rec(None, "10.0.0.5:40002", "api.stripe.com", 443, T3),
        rec(None, "10.0.0.5:40003", "registry.npmjs.org", 80, T1),
        rec(None, "10.0.0.5:40004", "registry.npmjs.org", 443, T2),
        rec(None, "10.0.0.5:40005", "203.0.113.7", 443, T1),
        rec(None, "10.0.0.5:40006", "[2001:db8::1]", 8443, T1),
    ];
    let yaml = suggest(&records, None, &Options::default());
    assert!(
        yaml.starts_with("# yaml-language-server: $schema=./portcullis.schema.json\n"),
        "{yaml}"
    );
    assert!(yaml.contains("\nmode: enforce\n"), "{yaml}");
    assert_eq!(
        rule_lines(&yaml),
        [
            "- \"api.stripe.com:443\"",
            "- \"registry.npmjs.org:80,443\"",
            "- \"203.0.113.7:443\"",
            "- \"[2001:db8::1]:8443\"",
        ]
    );
    assert!(
        yaml.contains(&format!(
            "  # seen 3 times, first {T1}, last {T3}\n  - \"api.stripe.com:443\"\n"
        )),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("  # seen once, {T1}\n  - \"203.0.113.7:443\"")),
        "{yaml}"
    );
    assert!(yaml.contains("from 7 audit records"), "{yaml}");
    let policy = assert_clean(&yaml);
    let ip: std::net::IpAddr = "10.0.0.5".parse().unwrap();
    for (host, port) in [
        ("api.stripe.com", 443),
        ("registry.npmjs.org", 80),
        ("registry.npmjs.org", 443),
        ("203.0.113.7", 443),
        ("[2001:db8::1]", 8443),
    ] {
        assert_eq!(
            policy.decide_str(ip, host, port).verdict,
            Verdict::Allow,
            "{host}:{port}"
        );
    }
    assert_eq!(
        policy.decide_str(ip, "api.stripe.com", 80).verdict,
        Verdict::Deny
    );
    assert_eq!(
        policy.decide_str(ip, "evil.example", 443).verdict,
        Verdict::Deny
    );
}

#[test]
fn output_is_the_same_whatever_the_record_order() {
    let mut records: Vec<Value> = (0..40)
        .map(|i| {
            let host = format!("h{}.example{}.com", i % 7, i % 3);
            let ts = format!("2026-11-{:02}T10:00:00.000Z", 1 + i % 28);
            rec(None, "10.0.0.5:1", &host, 443 + (i % 2) as u16, &ts)
        })
        .collect();
    let a = suggest(&records, None, &Options::default());
    records.reverse();
    records.swap(3, 17);
    let b = suggest(&records, None, &Options::default());
    assert_eq!(a, b);
    assert_clean(&a);
}

#[test]
fn what_is_not_traffic_to_allow_is_skipped() {
    let mut reload = rec(None, "10.0.0.5:1", "x.example.com", 443, T1);
    reload["event"] = "policy_reload".into();
    let mut bad = rec(None, "10.0.0.5:1", "0x7f.1", 443, T1);
    bad["decision"] = "deny".into();
    bad["reason"] = "bad_request".into();
    let mut denied = rec(None, "10.0.0.5:1", "pastebin.com", 443, T1);
    denied["decision"] = "deny".into();
    let mut guarded = rec(None, "10.0.0.5:1", "internal.example.com", 443, T1);
    guarded["decision"] = "deny".into();
    guarded["reason"] = "blocked_ip".into();
    let garbage_host = rec(None, "10.0.0.5:1", "exa mple.com", 443, T1);
    let mut no_host = rec(None, "10.0.0.5:1", "x", 443, T1);
    no_host["host"] = Value::Null;
    let kept = rec(None, "10.0.0.5:1", "ok.example.com", 443, T1);
    let mut input = lines(&[reload, bad, denied, guarded, garbage_host, no_host, kept]);
    input.extend_from_slice(b"not json at all\n\n{\"truncated\": \n");
    let mut s = Suggester::new(None, None);
    s.read(&input[..]).unwrap();
    let yaml = s.render(&Options::default());
    assert_eq!(rule_lines(&yaml), ["- \"ok.example.com:443\""]);
    let t = s.tally();
    assert_eq!((t.records, t.kept), (7, 1));
    assert_eq!(t.skipped["not a JSON audit record"], 2);
    assert_eq!(t.skipped["denied"], 2);
    assert_eq!(t.skipped["bad_request"], 1);
    assert_eq!(t.skipped["policy_reload"], 1);
    assert_eq!(t.skipped["host not a valid name or IP"], 1);
    assert!(yaml.contains("skipped: 1 bad_request, 2 denied"), "{yaml}");
    assert_clean(&yaml);
}

#[test]
fn allowed_records_count_too_without_a_current_policy() {
    let mut allowed = rec(None, "10.0.0.5:1", "api.stripe.com", 443, T1);
    allowed["decision"] = "allow".into();
    allowed["reason"] = "allowed".into();
    allowed["rule"] = "api.stripe.com".into();
    let mut dns = rec(None, "10.0.0.5:1", "gone.example.com", 443, T1);
    dns["decision"] = "allow".into();
    dns["reason"] = "dns_error".into();
    let yaml = suggest(&[allowed, dns], None, &Options::default());
    assert_eq!(
        rule_lines(&yaml),
        ["- \"gone.example.com:443\"", "- \"api.stripe.com:443\""]
    );
}

#[test]
fn clients_get_their_own_lists_with_the_sources_seen() {
    let mut unlisted = rec(None, "10.9.9.9:1", "odd.example.net", 443, T1);
    unlisted["reason"] = "client_not_allowed".into();
    let records = [
        rec(Some("payments"), "10.0.1.7:1", "api.paypal.com", 443, T1),
        rec(Some("payments"), "10.0.1.9:1", "api.paypal.com", 443, T2),
        rec(Some("payments"), "[fd00:1::5]:1", "api.stripe.com", 443, T2),
        rec(Some("checkout"), "10.0.2.7:1", "api.stripe.com", 443, T1),
        unlisted,
    ];
    let yaml = suggest(&records, None, &Options::default());
    let policy = assert_clean(&yaml);
    let names: Vec<&str> = policy.clients.iter().flatten().map(|c| &*c.name).collect();
    assert_eq!(names, ["checkout", "payments", "unlisted"]);
    assert!(
        yaml.contains(
            "  - name: \"payments\"\n    # The audit log does not record a client's CIDRs"
        ),
        "{yaml}"
    );
    assert!(
        yaml.contains(
            "    sources:\n      - \"10.0.1.7/32\"\n      - \"10.0.1.9/32\"\n      - \"fd00:1::5/128\"\n"
        ),
        "{yaml}"
    );
    assert!(yaml.contains("allow: []\nclients:\n"), "{yaml}");
    let decide = |ip: &str, host: &str| {
        policy
            .decide_str(ip.parse::<std::net::IpAddr>().unwrap(), host, 443)
            .verdict
    };
    assert_eq!(decide("10.0.1.7", "api.paypal.com"), Verdict::Allow);
    assert_eq!(decide("fd00:1::5", "api.stripe.com"), Verdict::Allow);
    assert_eq!(decide("10.0.2.7", "api.paypal.com"), Verdict::Deny);
    assert_eq!(decide("10.9.9.9", "odd.example.net"), Verdict::Allow);

    let only = Options {
        client: Some("checkout".into()),
        ..Options::default()
    };
    let yaml = suggest(&records, None, &only);
    assert_eq!(rule_lines(&yaml), ["- \"api.stripe.com:443\""]);
    assert!(yaml.contains("- name: \"checkout\""), "{yaml}");
    assert!(!yaml.contains("payments"), "{yaml}");
    assert_clean(&yaml);
}

#[test]
fn collapse_auto_and_none_and_min_count() {
    let mut records = Vec::new();
    for name in ["a", "b", "c"] {
        records.push(rec(
            None,
            "10.0.0.5:1",
            &format!("{name}.example.com"),
            443,
            T1,
        ));
        records.push(rec(
            None,
            "10.0.0.5:1",
            &format!("{name}-bucket.s3.amazonaws.com"),
            443,
            T2,
        ));
        records.push(rec(
            None,
            "10.0.0.5:1",
            &format!("{name}.amazonaws.com"),
            443,
            T2,
        ));
    }
    records.push(rec(None, "10.0.0.5:1", "rare.example.org", 443, T3));
    records.push(rec(None, "10.0.0.5:1", "b.example.com", 443, T3));

    let yaml = suggest(&records, None, &Options::default());
    let rules = rule_lines(&yaml);
    assert!(rules.contains(&"- \"*.example.com:443\""), "{yaml}");
    assert!(
        yaml.contains(
            "  # seen 4 times, first 2026-11-01T10:00:00.000Z, last 2026-11-03T10:00:00.000Z\n  \
             # replaces 3 names seen: a.example.com, b.example.com, c.example.com\n  \
             - \"*.example.com:443\"\n"
        ),
        "{yaml}"
    );
    assert!(
        rules.contains(&"- \"b-bucket.s3.amazonaws.com:443\""),
        "{yaml}"
    );
    assert!(rules.contains(&"- \"c.amazonaws.com:443\""), "{yaml}");
    assert_eq!(
        rules.iter().filter(|r| r.contains('*')).count(),
        1,
        "{yaml}"
    );
    assert_eq!(rules.len(), 8, "{yaml}");
    assert_clean(&yaml);

    let none = Options {
        collapse: Collapse::None,
        ..Options::default()
    };
    let yaml = suggest(&records, None, &none);
    assert_eq!(rule_lines(&yaml).len(), 10, "{yaml}");
    assert!(!yaml.contains('*'), "{yaml}");
    assert_clean(&yaml);

    let frequent = Options {
        min_count: 2,
        collapse: Collapse::None,
        ..Options::default()
    };
    let yaml = suggest(&records, None, &frequent);
    assert_eq!(rule_lines(&yaml), ["- \"b.example.com:443\""], "{yaml}");
    assert!(
        yaml.contains("# Left out: 9 destinations seen fewer than 2 times (--min-count)."),
        "{yaml}"
    );
}

const CURRENT: &str = r#"version: 1
allow:
  - api.stripe.com
  - unused.example.com
deny:
  - "uploads.example.com"
clients:
  - name: payments
    sources: [10.0.1.0/24]
    allow: [api.paypal.com, old.paypal.com]
  - name: checkout
    sources: [10.0.2.0/24, "fd00:2::/64"]
"#;

#[test]
fn with_the_current_policy_only_what_it_denies_is_suggested() {
    let current = Policy::from_yaml(CURRENT).unwrap().policy;
    let mut outsider = rec(None, "10.7.0.1:1", "odd.example.net", 443, T1);
    outsider["reason"] = "client_not_allowed".into();
    let records = [
        rec(Some("payments"), "10.0.1.7:1", "api.paypal.com", 443, T1),
        rec(Some("payments"), "10.0.1.7:1", "api.stripe.com", 443, T1),
        rec(Some("payments"), "10.0.1.7:1", "hooks.paypal.com", 443, T2),
        rec(Some("checkout"), "10.0.2.7:1", "api.adyen.com", 443, T2),
        rec(Some("checkout"), "10.0.2.7:1", "api.stripe.com", 8443, T3),
        rec(
            Some("checkout"),
            "10.0.2.7:1",
            "uploads.example.com",
            443,
            T3,
        ),
        // The log's client name is stale: CURRENT decides by address.
        rec(Some("renamed"), "10.0.2.8:1", "cdn.adyen.com", 443, T3),
        outsider,
    ];
    let yaml = suggest(&records, Some(&current), &Options::default());
    let policy = assert_clean(&yaml);
    assert!(!yaml.contains("\nmode:"), "{yaml}");
    assert_eq!(
        rule_lines(&yaml),
        [
            "- \"hooks.paypal.com:443\"",
            "- \"api.adyen.com:443\"",
            "- \"cdn.adyen.com:443\"",
            "- \"api.stripe.com:8443\"",
            "- \"odd.example.net:443\"",
        ],
        "{yaml}"
    );
    let names: Vec<&str> = policy.clients.iter().flatten().map(|c| &*c.name).collect();
    assert_eq!(names, ["payments", "checkout", "unlisted"], "{yaml}");
    assert!(
        yaml.contains("  - name: \"checkout\"\n    sources:\n      - \"10.0.2.0/24\"\n      - \"fd00:2::/64\"\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains("2 already allowed by CURRENT, 5 it would deny (below), 1 it refuses by deny or ip_guard"),
        "{yaml}"
    );
    assert!(
        yaml.contains("#   client `checkout`: uploads.example.com:443 denied by `uploads.example.com` in `deny`"),
        "{yaml}"
    );
    assert!(
        yaml.contains("#   top-level `allow`, line 4: unused.example.com\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains("#   client `payments` `allow`, line 10: old.paypal.com\n"),
        "{yaml}"
    );
    assert!(!yaml.contains("line 3: api.stripe.com"), "{yaml}");
    assert!(!yaml.contains("line 10: api.paypal.com"), "{yaml}");

    // Nothing to add.
    let yaml = suggest(&records[..2], Some(&current), &Options::default());
    assert!(yaml.contains("\nallow: []\n"), "{yaml}");
    assert!(!yaml.contains("clients:"), "{yaml}");
    assert_clean(&yaml);
}

#[test]
fn gzip_input_is_read_including_concatenated_members() {
    use flate2::Compression;
    use flate2::write::GzEncoder;
    let gz = |records: &[Value]| {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&lines(records)).unwrap();
        enc.finish().unwrap()
    };
    let mut input = gz(&[rec(None, "10.0.0.5:1", "one.example.com", 443, T1)]);
    input.extend(gz(&[rec(None, "10.0.0.5:1", "two.example.com", 443, T2)]));
    let mut s = Suggester::new(None, None);
    s.read(&input[..]).unwrap();
    let yaml = s.render(&Options::default());
    assert_eq!(
        rule_lines(&yaml),
        ["- \"one.example.com:443\"", "- \"two.example.com:443\""]
    );
    let mut s = Suggester::new(None, None);
    // A member cut short (a log still being written) is an error, not silence.
    let one = gz(&[rec(None, "10.0.0.5:1", "one.example.com", 443, T1)]);
    assert!(s.read(&one[..one.len() - 4]).is_err());
}

#[test]
fn odd_timestamps_and_client_names_do_not_break_the_file() {
    let mut r = rec(Some("we\nird"), "10.0.0.5:1", "a.example.com", 443, T1);
    r["ts"] = "2026\n- \"*.evil.com\"".into();
    let yaml = suggest(&[r], None, &Options::default());
    assert!(!yaml.contains("evil"), "{yaml}");
    let policy = assert_clean(&yaml);
    assert_eq!(&*policy.clients.unwrap()[0].name, "we\nird");
}
