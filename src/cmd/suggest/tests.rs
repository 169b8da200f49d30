use std::io::Write;

use serde_json::{Value, json};

use super::*;

/// An audit record as the proxy writes it (docs/reference/audit.md), in report mode.
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
    assert_eq!(t.not_records["not JSON"], 2);
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
    assert_eq!(rule_lines(&yaml), ["- \"api.stripe.com:443\""], "{yaml}");
    assert!(
        yaml.contains("#   top-level: gone.example.com:443 dns_error; seen once"),
        "{yaml}"
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

/// `input` as the lines of one log, read by a suggester without `--policy`.
fn read_lines(input: &[String]) -> (String, Suggester<'static>) {
    let mut text = input.join("\n");
    text.push('\n');
    let mut s = Suggester::new(None, None);
    s.read(text.as_bytes()).unwrap();
    (s.render(&Options::default()), s)
}

/// How FireLens (Fluent Bit) wraps a line the container wrote.
fn firelens(line: &str, source: &str) -> String {
    json!({
        "log": line, "container_id": "0123456789ab", "container_name": "portcullis",
        "source": source, "ecs_cluster": "egress",
        "ecs_task_arn": "arn:aws:ecs:eu-west-1:123456789012:task/egress/4f6e0c2a9b8d",
        "ecs_task_definition": "portcullis:7"
    })
    .to_string()
}

#[test]
fn firelens_wrapped_and_timestamp_prefixed_records_are_read() {
    let plain = rec(None, "10.0.0.5:1", "plain.alpha.com", 443, T1);
    let wrapped = rec(None, "10.0.0.5:1", "wrapped.beta.com", 443, T2);
    // Fluent Bit's parser filter with Preserve_Key adds the parsed keys next to `log`.
    let mut preserved = rec(None, "10.0.0.5:1", "preserved.gamma.com", 443, T2);
    preserved["log"] = rec(None, "10.0.0.5:1", "preserved.gamma.com", 443, T2)
        .to_string()
        .into();
    let exported = rec(None, "10.0.0.5:1", "exported.delta.com", 443, T3);
    let tailed = rec(None, "10.0.0.5:1", "tailed.epsilon.com", 443, T3);
    let input = [
        plain.to_string(),
        firelens(&format!("{wrapped}\n"), "stdout"),
        preserved.to_string(),
        // A CloudWatch Logs export to S3: the event's timestamp, a space, the message.
        format!("{T3} {exported}"),
        // `aws logs tail`: timestamp, log stream, message.
        format!("2026-11-03T10:00:00.000000+00:00 audit/portcullis-firelens-4f6e {tailed}"),
    ];
    let (yaml, s) = read_lines(&input);
    assert_eq!(
        rule_lines(&yaml),
        [
            "- \"plain.alpha.com:443\"",
            "- \"wrapped.beta.com:443\"",
            "- \"exported.delta.com:443\"",
            "- \"tailed.epsilon.com:443\"",
            "- \"preserved.gamma.com:443\"",
        ],
        "{yaml}"
    );
    assert_eq!((s.tally().records, s.tally().kept), (5, 5), "{yaml}");
    assert!(yaml.contains("from 5 audit records"), "{yaml}");
    assert!(
        yaml.contains("# Unwrapped: 2 FireLens lines, 2 lines behind a timestamp prefix.\n"),
        "{yaml}"
    );
    assert!(!yaml.contains("skipped"), "{yaml}");
    assert_clean(&yaml);
}

#[test]
fn lines_that_are_not_audit_records_are_skipped_and_counted_never_denied() {
    let mut denied = rec(None, "10.0.0.5:1", "pastebin.com", 443, T1);
    denied["decision"] = "deny".into();
    let mut reload = rec(None, "10.0.0.5:1", "x.example.com", 443, T1);
    reload["event"] = "policy_reload".into();
    reload["decision"] = Value::Null;
    let kept = rec(None, "10.0.0.5:1", "ok.example.com", 443, T1);
    let text_diag = "2026-11-01T10:00:00.123Z  WARN portcullis::reload: policy rejected, the last good policy stays";
    let json_diag = json!({
        "timestamp": T1, "level": "WARN",
        "fields": {"message": "audit queue full: refusing new exchanges", "decision": "deny"},
        "target": "portcullis::telemetry::audit"
    })
    .to_string();
    let input = [
        text_diag.to_string(),
        json_diag.clone(),
        firelens(text_diag, "stderr"),
        firelens(&json_diag, "stderr"),
        json!({"hello": "world", "decision": "deny"}).to_string(),
        // Not one of ours: an event this version does not write.
        json!({"event": "login", "decision": "deny", "host": "a.example.com", "port": 443})
            .to_string(),
        "[1, 2, 3]".to_string(),
        "\u{1b}[31mpanic\u{1b}[0m at src/main.rs".to_string(),
        "{\"truncated\": ".to_string(),
        String::from_utf8_lossy(&[0xff, 0xfe, b'{']).into_owned(),
        denied.to_string(),
        reload.to_string(),
        kept.to_string(),
    ];
    let (yaml, s) = read_lines(&input);
    assert_eq!(rule_lines(&yaml), ["- \"ok.example.com:443\""], "{yaml}");
    let t = s.tally();
    assert_eq!((t.records, t.kept), (3, 1), "{yaml}");
    assert_eq!(t.skipped.get("denied"), Some(&1), "{yaml}");
    assert!(
        yaml.contains("; skipped: 1 denied, 1 policy_reload.\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains(
            "# Lines that are not audit records, skipped: 5 not JSON, 5 JSON but not an audit record.\n"
        ),
        "{yaml}"
    );
    assert!(yaml.contains("# Unwrapped: 2 FireLens lines.\n"), "{yaml}");
    assert_clean(&yaml);
}

fn failed(host: &str, port: u16, ts: &str, decision: &str, reason: &str, error: &str) -> Value {
    let mut r = rec(None, "10.0.0.5:1", host, port, ts);
    r["decision"] = decision.into();
    r["reason"] = reason.into();
    r["error"] = error.into();
    r["upstream_addr"] = Value::Null;
    r
}

#[test]
fn destinations_that_never_resolved_or_connected_are_listed_not_suggested() {
    let records = [
        failed(
            "gone.example.com",
            443,
            T1,
            "report",
            "dns_error",
            "NXDOMAIN",
        ),
        failed(
            "gone.example.com",
            443,
            T2,
            "report",
            "dns_error",
            "SERVFAIL",
        ),
        failed(
            "closed.example.com",
            8443,
            T1,
            "allow",
            "connect_error",
            "connection refused 203.0.113.9:8443",
        ),
        failed(
            "slow.example.com",
            443,
            T2,
            "report",
            "connect_timeout",
            "timeout after 10s 203.0.113.8:443",
        ),
        // Failed once, then worked: suggested, not listed.
        failed(
            "flaky.example.com",
            443,
            T1,
            "report",
            "connect_timeout",
            "timeout",
        ),
        rec(None, "10.0.0.5:1", "flaky.example.com", 443, T2),
        // Worked on 443, never on 8443: 443 is suggested, 8443 is listed.
        rec(None, "10.0.0.5:1", "api.example.org", 443, T1),
        failed(
            "api.example.org",
            8443,
            T3,
            "report",
            "connect_error",
            "connection refused\n- \"*.evil.com\"",
        ),
    ];
    let yaml = suggest(&records, None, &Options::default());
    assert_eq!(
        rule_lines(&yaml),
        ["- \"flaky.example.com:443\"", "- \"api.example.org:443\""],
        "{yaml}"
    );
    let listed = format!(
        "\n# Seen, but never resolved or connected: not suggested (an allow rule does not make them work):\n\
         #   top-level: api.example.org:8443 connect_error (connection refused?- \"*.evil.com\"); seen once, {T3}\n\
         #   top-level: closed.example.com:8443 connect_error (connection refused 203.0.113.9:8443); seen once, {T1}\n\
         #   top-level: gone.example.com:443 dns_error (NXDOMAIN, SERVFAIL); seen 2 times, first {T1}, last {T2}\n\
         #   top-level: slow.example.com:443 connect_timeout (timeout after 10s 203.0.113.8:443); seen once, {T2}\n"
    );
    assert!(yaml.contains(&listed), "{yaml}");
    assert!(
        yaml.contains("# 3 used; 5 never resolved or connected (listed at the end)."),
        "{yaml}"
    );
    assert_clean(&yaml);
}

#[test]
fn destinations_every_client_used_are_lifted_to_the_top_level() {
    let records = [
        rec(Some("a"), "10.0.1.7:1", "telemetry.example.com", 443, T1),
        rec(Some("b"), "10.0.2.7:1", "telemetry.example.com", 443, T2),
        rec(Some("c"), "10.0.3.7:1", "telemetry.example.com", 443, T3),
        rec(Some("a"), "10.0.1.7:1", "registry.npmjs.org", 443, T1),
        rec(Some("b"), "10.0.2.7:1", "registry.npmjs.org", 443, T1),
        rec(Some("c"), "10.0.3.7:1", "registry.npmjs.org", 443, T1),
        rec(Some("c"), "10.0.3.7:1", "registry.npmjs.org", 80, T1),
        rec(Some("a"), "10.0.1.7:1", "only-a.example.net", 443, T1),
        rec(Some("b"), "10.0.2.7:1", "only-b.example.net", 443, T1),
        rec(Some("a"), "10.0.1.7:1", "a-and-b.example.net", 443, T1),
        rec(Some("b"), "10.0.2.7:1", "a-and-b.example.net", 443, T1),
    ];
    let yaml = suggest(&records, None, &Options::default());
    let policy = assert_clean(&yaml);
    assert!(
        yaml.contains(&format!(
            "allow:\n  # seen 3 times, first {T1}, last {T3}; used by every client (3)\n  \
             - \"telemetry.example.com:443\"\n  \
             # seen 3 times, {T1}; used by every client (3)\n  - \"registry.npmjs.org:443\"\n"
        )),
        "{yaml}"
    );
    let top: Vec<&str> = policy.allow.rules().iter().map(|r| &*r.text).collect();
    assert_eq!(top, ["telemetry.example.com:443", "registry.npmjs.org:443"]);
    let own = |name: &str| -> Vec<String> {
        policy
            .client_named(name)
            .unwrap()
            .allow
            .rules()
            .iter()
            .map(|r| r.text.to_string())
            .collect()
    };
    assert_eq!(
        own("a"),
        ["a-and-b.example.net:443", "only-a.example.net:443"]
    );
    assert_eq!(
        own("b"),
        ["a-and-b.example.net:443", "only-b.example.net:443"]
    );
    assert_eq!(own("c"), ["registry.npmjs.org:80"]);

    // One client asked for: its list is complete, nothing is lifted away from it.
    let only = Options {
        client: Some("c".into()),
        ..Options::default()
    };
    let yaml = suggest(&records, None, &only);
    assert_eq!(
        rule_lines(&yaml),
        [
            "- \"telemetry.example.com:443\"",
            "- \"registry.npmjs.org:80,443\""
        ],
        "{yaml}"
    );
    assert!(yaml.contains("allow: []\nclients:\n"), "{yaml}");

    // With CURRENT, "every client" is every client it defines.
    let current = Policy::from_yaml(CURRENT).unwrap().policy;
    let both = [
        rec(Some("payments"), "10.0.1.7:1", "sentry.example.io", 443, T1),
        rec(Some("checkout"), "10.0.2.7:1", "sentry.example.io", 443, T2),
    ];
    let yaml = suggest(&both, Some(&current), &Options::default());
    assert_eq!(rule_lines(&yaml), ["- \"sentry.example.io:443\""], "{yaml}");
    assert!(yaml.contains("allow:\n  # seen 2 times, first"), "{yaml}");
    assert!(!yaml.contains("clients:"), "{yaml}");
    let yaml = suggest(&both[..1], Some(&current), &Options::default());
    assert!(yaml.contains("allow: []\nclients:\n"), "{yaml}");
}

#[test]
fn paste_and_exfiltration_services_are_flagged_and_never_hidden_in_a_wildcard() {
    let records: Vec<Value> = [
        "pastebin.com",
        "gist.github.com",
        "api.github.com",
        "codeload.github.com",
        "uploads.github.com",
        "abc123.ngrok-free.app",
        "webhook.site",
        "api.stripe.com",
    ]
    .iter()
    .map(|h| rec(None, "10.0.0.5:1", h, 443, T1))
    .collect();
    let yaml = suggest(&records, None, &Options::default());
    // *.github.com would also allow gist.github.com: the names stay exact.
    assert!(!yaml.contains("*.github.com"), "{yaml}");
    for (dest, what) in [
        ("pastebin.com", "pastebin.com is a paste site"),
        ("gist.github.com", "gist.github.com is a paste site"),
        (
            "abc123.ngrok-free.app",
            "ngrok-free.app is a tunnel to anyone's machine",
        ),
        ("webhook.site", "webhook.site is a request-capture service"),
    ] {
        let want = format!(
            "  # FLAGGED: {what}, a known way to move data out: keep it only if you mean it\n  - \"{dest}:443\"\n"
        );
        assert!(yaml.contains(&want), "no {want:?} in\n{yaml}");
    }
    assert_eq!(yaml.matches("# FLAGGED: ").count(), 5, "{yaml}");
    assert!(
        yaml.contains("# FLAGGED: 4 destinations below are known paste, file-sharing, request-capture or tunnel services.\n"),
        "{yaml}"
    );
    assert!(!yaml.contains("api.stripe.com is"), "{yaml}");
    assert_clean(&yaml);
}

#[test]
fn ip_guard_carve_outs_the_traffic_needed_are_kept() {
    let mut internal = rec(None, "10.0.0.5:1", "ledger.corp.example", 443, T1);
    internal["upstream_addr"] = "10.20.0.7:443".into();
    let mut again = rec(None, "10.0.0.5:1", "ledger.corp.example", 443, T2);
    again["upstream_addr"] = "10.20.0.8:443".into();
    let public = rec(None, "10.0.0.5:1", "api.stripe.com", 443, T1);
    let yaml = suggest(
        &[internal.clone(), again, public.clone()],
        None,
        &Options::default(),
    );
    assert!(
        yaml.contains(
            "ip_guard:\n  # Addresses allowed names connected to that the default ip_guard blocks: the\n  \
             # policy in force carved them out. Widen them to the ranges it carved out.\n  \
             allowed:\n    # ledger.corp.example\n    - \"10.20.0.7/32\"\n    # ledger.corp.example\n    - \"10.20.0.8/32\"\n"
        ),
        "{yaml}"
    );
    let policy = assert_clean(&yaml);
    assert!(policy.guard.is_dialable("10.20.0.7".parse().unwrap()));
    assert!(!policy.guard.is_dialable("10.20.0.9".parse().unwrap()));
    let yaml = suggest(std::slice::from_ref(&public), None, &Options::default());
    assert!(!yaml.contains("ip_guard"), "{yaml}");

    // CURRENT without that carve-out would refuse it even with an allow rule.
    let current = Policy::from_yaml("version: 1\nallow: [ledger.corp.example]\n")
        .unwrap()
        .policy;
    let yaml = suggest(
        &[internal.clone(), public.clone()],
        Some(&current),
        &Options::default(),
    );
    assert_eq!(rule_lines(&yaml), ["- \"api.stripe.com:443\""], "{yaml}");
    assert!(
        yaml.contains("#   top-level: ledger.corp.example:443 connected to 10.20.0.7, which `ip_guard` blocks: add a carve-out to `ip_guard.allowed` if that is meant"),
        "{yaml}"
    );
    let current = Policy::from_yaml(
        "version: 1\nallow: [ledger.corp.example]\nip_guard:\n  allowed: [10.20.0.0/16]\n",
    )
    .unwrap()
    .policy;
    let yaml = suggest(&[internal, public], Some(&current), &Options::default());
    assert_eq!(rule_lines(&yaml), ["- \"api.stripe.com:443\""], "{yaml}");
    assert!(yaml.contains("1 already allowed by CURRENT"), "{yaml}");
    assert!(!yaml.contains("blocks"), "{yaml}");
}

/// CURRENT as a reviewer wrote it: comments, metadata, a carve-out, and
/// every way a list can be written.
const WRITTEN: &str = r#"# yaml-language-server: $schema=./portcullis.schema.json
# Egress for the shop. Owners: platform team.
version: 1
mode: report
allow:
  # every service
  - api.stripe.com
  - dest: status.example.com
    owner: platform
    ticket: OPS-1
deny: [uploads.example.com]
ip_guard:
  allowed: [10.20.0.0/16]  # the ledger
clients:
  - name: payments
    sources: [10.0.1.0/24]
    allow: [api.paypal.com]   # flow style
  - name: checkout
    sources: [10.0.2.0/24]
  - name: batch
    sources: [10.0.3.0/24]
    allow: []
    mode: enforce
"#;

fn merged(records: &[Value], text: &str) -> Result<String, String> {
    let current = Policy::from_yaml(text).unwrap().policy;
    let mut s = Suggester::new(Some(&current), None);
    s.read(&lines(records)[..]).unwrap();
    s.merge(text, &Options::default())
}

#[test]
fn merge_adds_the_rules_to_the_current_text_and_keeps_everything_else() {
    let mut outsider = rec(None, "10.7.0.1:1", "odd.example.net", 443, T1);
    outsider["reason"] = "client_not_allowed".into();
    let mut outsider_too = rec(None, "10.7.0.1:1", "sentry.example.io", 443, T1);
    outsider_too["reason"] = "client_not_allowed".into();
    let records = [
        outsider_too,
        rec(Some("payments"), "10.0.1.7:1", "hooks.paypal.com", 443, T1),
        rec(Some("checkout"), "10.0.2.7:1", "api.adyen.com", 443, T2),
        rec(Some("batch"), "10.0.3.7:1", "registry.npmjs.org", 443, T2),
        rec(Some("payments"), "10.0.1.7:1", "sentry.example.io", 443, T1),
        rec(Some("checkout"), "10.0.2.7:1", "sentry.example.io", 443, T1),
        rec(Some("batch"), "10.0.3.7:1", "sentry.example.io", 443, T1),
        rec(Some("batch"), "10.0.3.7:1", "api.stripe.com", 443, T1),
        outsider,
    ];
    let text = merged(&records, WRITTEN).unwrap();
    let want = format!(
        r#"# yaml-language-server: $schema=./portcullis.schema.json
# Egress for the shop. Owners: platform team.
version: 1
mode: report
allow:
  # every service
  - api.stripe.com
  - dest: status.example.com
    owner: platform
    ticket: OPS-1
  # seen 4 times, {T1}; used by every client (4)
  - "sentry.example.io:443"
deny: [uploads.example.com]
ip_guard:
  allowed: [10.20.0.0/16]  # the ledger
clients:
  - name: payments
    sources: [10.0.1.0/24]
    allow: [ "hooks.paypal.com:443", api.paypal.com]   # flow style
  - name: checkout
    sources: [10.0.2.0/24]
    allow:
      # seen once, {T2}
      - "api.adyen.com:443"
  - name: batch
    sources: [10.0.3.0/24]
    allow:
      # seen once, {T2}
      - "registry.npmjs.org:443"
    mode: enforce
  - name: "unlisted"
"#
    );
    assert!(text.starts_with(&want), "{text}");
    assert!(text.ends_with("    allow:\n      # seen once, 2026-11-01T10:00:00.000Z\n      - \"odd.example.net:443\"\n"), "{text}");
    // CURRENT's own `report-mode` warning is all `check` has to say.
    let compiled = Policy::from_yaml(&text).unwrap();
    let warnings = compiled.warnings(crate::policy_file::today());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let policy = compiled.policy;
    let decide = |ip: &str, host: &str| {
        policy
            .decide_str(ip.parse::<std::net::IpAddr>().unwrap(), host, 443)
            .reason
    };
    assert_eq!(decide("10.0.1.7", "hooks.paypal.com"), Reason::Allowed);
    assert_eq!(decide("10.0.3.7", "sentry.example.io"), Reason::Allowed);
    assert_eq!(decide("10.7.0.1", "odd.example.net"), Reason::Allowed);
    assert_eq!(decide("10.0.2.7", "hooks.paypal.com"), Reason::NotAllowed);
    assert!(policy.guard.is_dialable("10.20.0.7".parse().unwrap()));

    // Nothing to add: CURRENT as it was.
    assert_eq!(merged(&records[7..8], WRITTEN).unwrap(), WRITTEN);
}

#[test]
fn merge_writes_a_missing_top_level_allow_and_refuses_what_it_cannot_edit() {
    let records = [rec(None, "10.0.0.5:1", "api.stripe.com", 443, T1)];
    let text = merged(&records, "version: 1\nmode: report\n").unwrap();
    assert_eq!(
        text,
        format!(
            "version: 1\nmode: report\nallow:\n  # seen once, {T1}\n  - \"api.stripe.com:443\"\n"
        )
    );
    let text = merged(&records, "version: 1\nallow: [] # none yet\n").unwrap();
    assert_eq!(
        text,
        format!("version: 1\nallow: # none yet\n  # seen once, {T1}\n  - \"api.stripe.com:443\"\n")
    );
    // The last client gets `allow:` and the unlisted sources' client comes after it.
    let mut outsider = rec(None, "10.7.0.1:1", "odd.example.net", 443, T1);
    outsider["reason"] = "client_not_allowed".into();
    let records = [
        rec(Some("a"), "10.0.1.7:1", "api.stripe.com", 443, T1),
        outsider,
    ];
    let text = merged(
        &records,
        "version: 1\nclients:\n- name: a\n  sources: [10.0.1.0/24]\n",
    )
    .unwrap();
    assert_eq!(
        text,
        format!(
            "version: 1\nclients:\n- name: a\n  sources: [10.0.1.0/24]\n  allow:\n    # seen once, {T1}\n    - \"api.stripe.com:443\"\n\
             - name: \"unlisted\"\n  # Sources no `clients` entry listed (their traffic was client_not_allowed):\n  \
             # name this client and replace the addresses seen with its ranges.\n  sources:\n    - \"10.7.0.1/32\"\n  \
             allow:\n    # seen once, {T1}\n    - \"odd.example.net:443\"\n"
        )
    );
    // A flow mapping is valid YAML that this does not edit: an error, not a guess.
    let flow = "{version: 1, allow: [a.example.com]}\n";
    assert!(merged(&records, flow).is_err());
}
