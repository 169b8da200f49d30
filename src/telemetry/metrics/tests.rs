use crate::policy::Policy;
use crate::telemetry::destination::OTHER_DESTINATION;
use std::collections::HashSet;

use super::*;

const PAYMENTS: &str = "version: 1
allow: [a.example, b.example]
deny: [c.example]
clients:
  - name: payments
    sources: [10.0.1.0/24]
    allow: [d.example]
";

fn snapshot(yaml: &str, generation: u64, sha256: &str) -> Snapshot {
    let compiled = Policy::from_yaml(yaml).expect("a valid policy");
    Snapshot {
        policy: compiled.policy,
        generation,
        sha256: sha256.into(),
    }
}

/// The value of the one sample line that starts with `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    let lines = text.lines().filter_map(|l| l.strip_prefix(series));
    let values: Vec<f64> = lines.filter_map(|rest| rest.trim().parse().ok()).collect();
    match values[..] {
        [v] => Some(v),
        _ => None,
    }
}

fn metric_lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn encodes_the_spec_names_and_labels() {
    let m = Metrics::new(10);
    m.request(
        Listener::Explicit,
        "payments",
        Verdict::Allow,
        Reason::Allowed,
        "api.stripe.com",
    );
    m.request(
        Listener::Explicit,
        "payments",
        Verdict::Allow,
        Reason::Allowed,
        "api.stripe.com",
    );
    m.request(
        Listener::TransparentTls,
        "default",
        Verdict::Deny,
        Reason::NotAllowed,
        "evil\"host",
    );
    m.tunnel_bytes("payments", "api.stripe.com", 100, 2048);
    m.upstream_connect(
        "api.stripe.com",
        ConnectResult::Ok,
        Duration::from_millis(3),
    );
    m.upstream_connect(
        "api.stripe.com",
        ConnectResult::Refused,
        Duration::from_millis(1),
    );
    m.upstream_connect(
        "slow.example",
        ConnectResult::Timeout,
        Duration::from_secs(10),
    );
    m.dns_lookup(DnsResult::NxDomain, Duration::from_millis(2));
    m.policy_reload(ReloadResult::Ok, None);
    m.policy_reload(ReloadResult::Error, Some("bad"));
    m.policy_loaded(&snapshot(PAYMENTS, 7, "aa"), 0);
    let guard = m.connection_opened(Listener::TransparentHttp);

    let text = m.encode();
    let lines = metric_lines(&text);
    for expected in [
        r#"portcullis_requests_total{listener="explicit",client="payments",decision="allow",reason="allowed",destination="api.stripe.com"} 2"#,
        r#"portcullis_requests_total{listener="transparent_tls",client="default",decision="deny",reason="not_allowed",destination="evil\"host"} 1"#,
        r#"portcullis_tunnel_bytes_total{client="payments",destination="api.stripe.com",direction="egress"} 100"#,
        r#"portcullis_tunnel_bytes_total{client="payments",destination="api.stripe.com",direction="ingress"} 2048"#,
        r#"portcullis_active_connections{listener="transparent_http"} 1"#,
        r#"portcullis_upstream_connect_seconds_count{destination="api.stripe.com",result="ok"} 1"#,
        r#"portcullis_upstream_connect_seconds_bucket{le="0.005",destination="api.stripe.com",result="ok"} 1"#,
        r#"portcullis_upstream_connect_seconds_count{destination="api.stripe.com",result="refused"} 1"#,
        r#"portcullis_upstream_connect_seconds_bucket{le="10.0",destination="slow.example",result="timeout"} 1"#,
        r#"portcullis_dns_lookup_seconds_count{result="nxdomain"} 1"#,
        r#"portcullis_policy_reloads_total{result="ok"} 1"#,
        r#"portcullis_policy_reloads_total{result="error"} 1"#,
        "portcullis_policy_generation 7",
        r#"portcullis_policy_rules{client="payments"} 4"#,
        r#"portcullis_policy_rules{client="default"} 3"#,
        "# TYPE portcullis_upstream_connect_seconds histogram",
        "portcullis_audit_records_dropped_total 0",
        "portcullis_audit_queue_records 0",
        "# EOF",
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
    }

    drop(guard);
    m.policy_loaded(&snapshot("version: 1\nallow: [a.example]\n", 8, "bb"), 0);
    let text = m.encode();
    let lines = metric_lines(&text);
    assert!(lines.contains(&r#"portcullis_active_connections{listener="transparent_http"} 0"#));
    assert!(lines.contains(&r#"portcullis_policy_rules{client="default"} 1"#));
    assert!(!text.contains(r#"portcullis_policy_rules{client="payments"}"#));
    assert!(lines.contains(&"portcullis_policy_generation 8"));
}

#[test]
fn log_and_audit_losses_are_exported() {
    let diagnostics = super::super::diag::Diagnostics::stderr().expect("stderr writer");
    let m = Metrics::new(10).with_diagnostics(diagnostics.stats());
    let audit = m.audit_counters();
    audit.dropped.inc_by(3);
    audit.queued.set(7);
    let text = m.encode();
    let lines = metric_lines(&text);
    for expected in [
        "# TYPE portcullis_log_lines_dropped counter",
        "portcullis_log_lines_dropped_total 0",
        "portcullis_audit_records_dropped_total 3",
        "# TYPE portcullis_audit_queue_records gauge",
        "portcullis_audit_queue_records 7",
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn destination_cardinality_stays_bounded() {
    let m = Metrics::new(1000);
    for i in 0..5000 {
        let host = format!("h{i}.attacker.example");
        m.request(
            Listener::Explicit,
            "c",
            Verdict::Deny,
            Reason::NotAllowed,
            &host,
        );
    }
    m.request(
        Listener::Explicit,
        "c",
        Verdict::Deny,
        Reason::BadRequest,
        &"x".repeat(10_000),
    );
    let text = m.encode();
    let destinations: HashSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("portcullis_requests_total{"))
        .filter_map(|l| l.split("destination=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(destinations.len() <= 1001, "{} values", destinations.len());
    assert!(destinations.contains(OTHER_DESTINATION));
    assert!(destinations.contains("h0.attacker.example"));
    assert!(!destinations.contains("h1000.attacker.example"));
}

#[test]
fn build_limit_and_process_metrics_are_encoded() {
    let m = Metrics::new(10);
    m.set_max_connections(123);
    let text = m.encode();
    let lines = metric_lines(&text);
    let build = format!(
        r#"portcullis_build_info{{version="{}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    );
    for expected in [
        build.as_str(),
        "# TYPE portcullis_build_info gauge",
        "portcullis_max_connections 123",
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
    }
    assert_eq!(lines.last(), Some(&"# EOF"), "one EOF, at the end");
    assert_eq!(lines.iter().filter(|l| **l == "# EOF").count(), 1);
    let text_format = m.encode_as(Format::Text);
    let text_lines = metric_lines(&text_format);
    assert!(text_lines.contains(&"# TYPE portcullis_policy_reloads_total counter"));
    assert!(!text_lines.contains(&"# EOF"), "{text_format}");

    if !cfg!(target_os = "linux") {
        return; // process metrics are read from /proc
    }
    for expected in [
        "# TYPE process_cpu_seconds counter",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_open_fds gauge",
        "# TYPE process_max_fds gauge",
        "# TYPE process_start_time_seconds gauge",
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
    }
    assert!(text_lines.contains(&"# TYPE process_cpu_seconds_total counter"));
    let sample = |name: &str| lines.iter().any(|l| l.starts_with(&format!("{name} ")));
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(sample(name), "no sample {name} in\n{text}");
    }
}

#[test]
fn policy_info_and_last_reload_follow_the_policy_in_force() {
    let m = Metrics::new(10);
    let text = m.encode();
    assert!(
        !text.contains("portcullis_policy_info"),
        "before any load:\n{text}"
    );
    assert!(!text.contains("portcullis_policy_last_reload"), "{text}");

    m.policy_loaded(&snapshot("version: 1\nallow: [a.example]\n", 1, "aa"), 0);
    let text = m.encode();
    let info = |sha: &str, mode: &str| {
        format!(r#"portcullis_policy_info{{sha256="{sha}",mode="{mode}"}}"#)
    };
    let successful = "portcullis_policy_last_reload_successful";
    let at = "portcullis_policy_last_reload_success_timestamp_seconds";
    assert_eq!(value(&text, &info("aa", "enforce")), Some(1.0), "{text}");
    assert_eq!(
        value(&text, successful),
        Some(1.0),
        "the load at start counts:\n{text}"
    );
    let started = value(&text, at).expect("a timestamp");
    assert!(started > 1.0e9, "{text}");
    assert!(
        text.contains("# TYPE portcullis_policy_info gauge"),
        "{text}"
    );
    assert!(text.contains(&format!("# TYPE {at} gauge")), "{text}");

    m.policy_reload(ReloadResult::Error, Some("policy.yaml:3:1: unknown key"));
    let text = m.encode();
    assert_eq!(value(&text, successful), Some(0.0), "{text}");
    assert_eq!(
        value(&text, at),
        Some(started),
        "a failure keeps the last success"
    );
    assert_eq!(
        value(&text, &info("aa", "enforce")),
        Some(1.0),
        "still in force"
    );
    let last = m.policy_status().last_reload().expect("an attempt");
    assert_eq!(last.error.as_deref(), Some("policy.yaml:3:1: unknown key"));

    m.policy_reload(ReloadResult::Unchanged, None);
    let text = m.encode();
    assert_eq!(
        value(&text, successful),
        Some(1.0),
        "unchanged is a success:\n{text}"
    );
    assert!(value(&text, at).is_some_and(|t| t >= started), "{text}");

    let report = PAYMENTS.replace("version: 1", "version: 1\nmode: report");
    m.policy_reload(ReloadResult::Ok, None);
    m.policy_loaded(&snapshot(&report, 2, "bb"), 0);
    let text = m.encode();
    assert_eq!(value(&text, &info("bb", "report")), Some(1.0), "{text}");
    assert!(
        !text.contains(r#"sha256="aa""#),
        "the old series is gone:\n{text}"
    );
    let live = m.policy_status().live().expect("a policy");
    assert_eq!(live.generation, 2);
    let clients: Vec<(&str, &str, usize)> = (live.clients.iter())
        .map(|c| (c.name.as_str(), c.mode.as_str(), c.rules))
        .collect();
    assert_eq!(
        clients,
        [("default", "report", 3), ("payments", "report", 4)]
    );
}
