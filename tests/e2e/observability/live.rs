//! The kit against a real Prometheus scraping the real proxy: the shipped rules load and
//! evaluate, every dashboard query parses and the traffic panels show data, and the reload
//! alert fires while a bad policy file is in place.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::prometheus::{JOB, Prometheus};
use super::{
    alert_rules, dashboard, panel_exprs, query_panels, rules_text, rules_with_short_for, substitute,
};
use crate::reload::{PolicyDir, write_renamed};
use crate::support::client::{
    LOCAL, closed_port, connect, connect_from, connect_refused, echo_roundtrip, expect_refusal,
    finish, open_tunnel, send_connect, tunnel_on,
};
use crate::support::dns::TestDns;
use crate::support::origin::TcpEcho;
use crate::support::proxy::{Launch, Proxy, loopback_policy};

/// Scrapes, rule evaluations and rates every second: data within a few of them.
const WAIT: Duration = Duration::from_secs(30);

/// Panels every query of which must return data after [`traffic`].
const WITH_DATA: &[&str] = &[
    "Allowed / s",
    "Denied / s",
    "Would deny (report mode) / s",
    "Active connections",
    "Requests by decision",
    "Allowed by client and destination",
    "Denials by client and reason",
    "Top denied clients",
    "Report mode: would deny, by client and destination",
    "Tunnel bytes by client and direction",
    "Upstream connect latency by result",
    "Upstream connects by result",
    "DNS lookups by result",
    "DNS error ratio",
    "DNS lookup latency p99",
    "Policy reloads by result",
    "Rules in force by client",
    "Policy generation",
    "Audit queue",
    "Audit records dropped",
    "Diagnostic log lines dropped",
    "Active connections by listener",
    "Refused as overloaded",
    "Last reload",
    "Replicas by version",
    "Policy per instance",
    "Distinct policies per job",
    "Time since last successful reload",
    "Connections / --max-connections",
    "CPU",
    "Resident memory",
    "Open file descriptors / limit",
];

/// The second client, in report mode.
const BATCH: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Two clients (`app` enforcing, `batch` in report mode) of a proxy that allows
/// `origin.test` on any port and names below `nx.test`, with room for two connections.
async fn start_proxy(dns: &TestDns) -> Proxy {
    let clients = "clients:\n  - name: app\n    sources: [127.0.0.1/32]\n  \
                   - name: batch\n    sources: [127.0.0.2/32]\n    mode: report\n";
    let policy = loopback_policy(&["origin.test:*", "*.nx.test"], clients);
    Proxy::start(&policy, dns.addr(), &["--max-connections", "2"]).await
}

/// Every kind of outcome the dashboard shows: an allowed tunnel, a denial, NXDOMAIN and
/// SERVFAIL, a refused upstream, report-mode traffic and a refusal at the connection limit.
async fn traffic(proxy: &Proxy, dns: &TestDns, echo: &TcpEcho) {
    let port = echo.addr().port();
    dns.set_a("origin.test", &[LOCAL], 60);
    dns.set_a("unlisted.test", &[LOCAL], 60);
    dns.set_servfail("broken.nx.test");

    let mut tunnel = open_tunnel(proxy.addr(), &format!("origin.test:{port}")).await;
    echo_roundtrip(&mut tunnel, &[1u8; 500]).await;
    finish(&mut tunnel).await;
    connect_refused(proxy.addr(), "denied.test:443", 403, "not_allowed").await;
    connect_refused(proxy.addr(), "missing.nx.test:443", 502, "dns_error").await;
    connect_refused(proxy.addr(), "broken.nx.test:443", 502, "dns_error").await;
    let closed = closed_port().await;
    connect_refused(
        proxy.addr(),
        &format!("origin.test:{closed}"),
        502,
        "connect_error",
    )
    .await;

    let mut report = connect_from(BATCH, proxy.addr()).await;
    tunnel_on(&mut report, &format!("unlisted.test:{port}")).await;
    echo_roundtrip(&mut report, b"reported").await;
    finish(&mut report).await;

    // --max-connections 2: two open tunnels, and the third connection is refused.
    let target = format!("origin.test:{port}");
    let mut first = open_tunnel(proxy.addr(), &target).await;
    let mut second = open_tunnel(proxy.addr(), &target).await;
    echo_roundtrip(&mut first, b"1").await;
    echo_roundtrip(&mut second, b"2").await;
    let mut third = connect(proxy.addr()).await;
    send_connect(&mut third, &target).await;
    expect_refusal(&mut third, 503, "overloaded").await;
    finish(&mut first).await;
    finish(&mut second).await;
}

/// The alerting rules Prometheus has loaded, by name.
async fn loaded_rules(prom: &Prometheus) -> Vec<Value> {
    let data = (prom.api("rules", &[("type", "alert")]).await)
        .unwrap_or_else(|e| panic!("GET /api/v1/rules: {e}"));
    (data["groups"].as_array().expect("groups").iter())
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_rules_load_and_every_dashboard_query_runs_on_real_metrics() {
    let dns = TestDns::start().await;
    let echo = TcpEcho::start().await;
    let proxy = start_proxy(&dns).await;
    let prom = Prometheus::start(proxy.admin(), &rules_text()).await;
    traffic(&proxy, &dns, &echo).await;

    prom.wait_query(&format!("up{{job=\"{JOB}\"}} == 1"), WAIT)
        .await;

    // Every alert of the shipped file is loaded, and each has been evaluated without error.
    let shipped: BTreeSet<String> = (alert_rules().iter())
        .map(|r| r["alert"].as_str().unwrap().to_owned())
        .collect();
    let p = &prom;
    prom.wait_for(
        WAIT,
        "every rule evaluated with health ok",
        move || async move {
            let rules = loaded_rules(p).await;
            let errors: Vec<&Value> = rules.iter().filter(|r| r["health"] == "err").collect();
            assert!(errors.is_empty(), "rules failing to evaluate: {errors:?}");
            rules.iter().all(|r| r["health"] == "ok")
        },
    )
    .await;
    let loaded: BTreeSet<String> = (loaded_rules(&prom).await.iter())
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(loaded, shipped, "alerts Prometheus loaded");

    let dashboard = dashboard();
    check_variables(&prom, &dashboard, &proxy).await;

    let panels = query_panels(&dashboard);
    let titles: BTreeSet<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    let listed: BTreeSet<&str> = WITH_DATA.iter().copied().collect();
    assert_eq!(listed.len(), WITH_DATA.len(), "a panel is listed twice");
    assert_eq!(titles, listed, "every panel is in WITH_DATA");

    for panel in &panels {
        let exprs = panel_exprs(panel);
        // Every query parses and runs (an error fails inside `query`).
        for (_, expr) in &exprs {
            prom.query(&substitute(expr)).await;
        }
        for (_, expr) in &exprs {
            prom.wait_query(&substitute(expr), WAIT).await;
        }
    }
}

/// The `label_values(...)` variables return what the proxy exports: the job, the proxy's
/// admin address, both clients.
async fn check_variables(prom: &Prometheus, dashboard: &Value, proxy: &Proxy) {
    let admin = proxy.admin().to_string();
    let expected = [
        ("job", JOB),
        ("instance", admin.as_str()),
        ("client", "app"),
        ("client", "batch"),
    ];
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    for (name, wanted) in expected {
        let variable = variables.iter().find(|v| v["name"] == name).unwrap();
        let definition = variable["definition"].as_str().expect("definition");
        let inner = (definition.strip_prefix("label_values("))
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("${name}: {definition} is not label_values(...)"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(SELECTOR, LABEL)");
        let selector = substitute(selector.trim());
        let path = format!("label/{}/values", label.trim());
        let what = format!("${name} offers {wanted} ({definition})");
        let (path, selector) = (&path, &selector);
        prom.wait_for(WAIT, &what, move || async move {
            let values = (prom.api(path, &[("match[]", selector)]).await)
                .unwrap_or_else(|e| panic!("${name}: {e}"));
            values.as_array().unwrap().iter().any(|v| v == wanted)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_alert_fires_while_a_bad_policy_file_is_in_place() {
    const GAUGE: &str = "portcullis_policy_last_reload_successful";
    const ALERT: &str = "PortcullisPolicyReloadFailing";
    let dns = TestDns::start().await;
    let dir = PolicyDir::new("observability");
    let file = dir.file();
    std::fs::write(&file, loopback_policy(&["a.test"], "")).unwrap();
    let launch = Launch {
        policy_path: Some(&file),
        ..Launch::default()
    };
    let proxy = Proxy::launch("", dns.addr(), launch).await;
    // The shipped rules with every `for:` at 1s: the alert fires within seconds.
    let prom = Prometheus::start(proxy.admin(), &rules_with_short_for()).await;
    let bad = "version: 1\nallow: [a.test]\nunknown_key: true\n";

    // Loaded, scraped as 1, and the rule evaluated on that sample: not firing.
    let result = prom.wait_query(&format!("{GAUGE} == 1"), WAIT).await;
    let scraped_at = result[0]["value"][0].as_f64().expect("sample time");
    let p = &prom;
    prom.wait_for(
        WAIT,
        "the rule evaluated after that scrape",
        move || async move { evaluated_at(&alert_rule(p, ALERT).await) > scraped_at },
    )
    .await;
    let rule = alert_rule(&prom, ALERT).await;
    assert_eq!(rule["state"], "inactive", "{rule}");

    write_renamed(&file, bad);
    proxy.wait_metric(GAUGE, &[], |v| v == 0.0, WAIT).await;
    prom.wait_for(WAIT, "the reload alert firing", move || async move {
        firing(p, ALERT).await.is_some()
    })
    .await;
    let alert = firing(&prom, ALERT).await.unwrap();
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert_eq!(
        alert["labels"]["instance"],
        proxy.admin().to_string(),
        "{alert}"
    );

    // A fixed file ends it.
    write_renamed(&file, &loopback_policy(&["a.test", "b.test"], ""));
    proxy.wait_metric(GAUGE, &[], |v| v == 1.0, WAIT).await;
    prom.wait_for(WAIT, "the reload alert resolved", move || async move {
        firing(p, ALERT).await.is_none()
    })
    .await;
}

/// The loaded alerting rule `name`.
async fn alert_rule(prom: &Prometheus, name: &str) -> Value {
    let rules = loaded_rules(prom).await;
    (rules.into_iter())
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not loaded"))
}

/// When a rule was last evaluated, in Unix seconds.
fn evaluated_at(rule: &Value) -> f64 {
    let text = rule["lastEvaluation"].as_str().expect("lastEvaluation");
    let at = OffsetDateTime::parse(text, &Rfc3339)
        .unwrap_or_else(|e| panic!("lastEvaluation {text:?}: {e}"));
    at.unix_timestamp_nanos() as f64 / 1e9
}

/// The firing alert `name`, if any.
async fn firing(prom: &Prometheus, name: &str) -> Option<Value> {
    let data =
        (prom.api("alerts", &[]).await).unwrap_or_else(|e| panic!("GET /api/v1/alerts: {e}"));
    (data["alerts"].as_array().expect("alerts").iter())
        .find(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
        .cloned()
}
