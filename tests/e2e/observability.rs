//! The observability kit in `deploy/observability/`: the Prometheus Operator manifests match
//! the rules file and the Deployment, the Grafana dashboard is well formed, every alert is
//! documented; `live` runs the rules and every dashboard query in a real Prometheus that
//! scrapes the real proxy.

mod live;
mod prometheus;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::support::root;

const KIT: &str = "deploy/observability";

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"))
}

/// The shipped rules file's text.
fn rules_text() -> String {
    read(&format!("{KIT}/alerts.yml"))
}

/// Every alerting rule of the shipped rules file.
fn alert_rules() -> Vec<Value> {
    let rules = yaml(&format!("{KIT}/alerts.yml"));
    let groups = rules["groups"].as_array().expect("alerts.yml: groups");
    (groups.iter())
        .flat_map(|g| g["rules"].as_array().expect("a group's rules").clone())
        .collect()
}

/// The dashboard JSON.
fn dashboard() -> Value {
    let rel = format!("{KIT}/grafana-dashboard.json");
    serde_json::from_str(&read(&rel)).unwrap_or_else(|e| panic!("{rel}: not JSON: {e}"))
}

/// Every panel that queries (rows excluded), in order.
fn query_panels(dashboard: &Value) -> Vec<&Value> {
    (dashboard["panels"].as_array().expect("panels").iter())
        .filter(|p| p["type"] != "row")
        .collect()
}

/// A panel's PromQL expressions, by refId.
fn panel_exprs(panel: &Value) -> Vec<(String, String)> {
    (panel["targets"].as_array().expect("targets").iter())
        .map(|t| {
            let expr = t["expr"].as_str().expect("a target's expr").to_owned();
            (t["refId"].as_str().expect("refId").to_owned(), expr)
        })
        .collect()
}

#[test]
fn prometheus_rule_is_what_generate_sh_makes_of_the_rules_file() {
    // Run the generator on a copy, so a stale committed file fails here, not silently.
    let scratch =
        Scratch(std::env::temp_dir().join(format!("portcullis-kit-{}", std::process::id())));
    let scratch = &scratch.0;
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch.join("operator")).unwrap();
    for file in ["generate.sh", "alerts.yml"] {
        std::fs::copy(root().join(KIT).join(file), scratch.join(file)).unwrap();
    }
    let out = Command::new("sh")
        .arg(scratch.join("generate.sh"))
        .output()
        .expect("run sh");
    assert!(out.status.success(), "generate.sh failed: {out:?}");
    let generated = std::fs::read_to_string(scratch.join("operator/prometheusrule.yaml")).unwrap();
    let committed = read(&format!("{KIT}/operator/prometheusrule.yaml"));
    assert!(
        generated == committed,
        "{KIT}/operator/prometheusrule.yaml is stale: run `sh {KIT}/generate.sh`"
    );

    // And the generator does what it claims: the object's spec is the rules file.
    let object = yaml(&format!("{KIT}/operator/prometheusrule.yaml"));
    assert_eq!(object["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(object["kind"], "PrometheusRule");
    assert_eq!(object["spec"], yaml(&format!("{KIT}/alerts.yml")));
}

#[test]
fn pod_monitor_scrapes_the_deployments_admin_port_as_job_portcullis() {
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let monitor = yaml(&format!("{KIT}/operator/podmonitor.yaml"));
    assert_eq!(monitor["kind"], "PodMonitor");
    assert_eq!(
        monitor["metadata"]["namespace"], deployment["metadata"]["namespace"],
        "a PodMonitor selects pods in its own namespace"
    );
    let template = &deployment["spec"]["template"];
    let pod_labels = template["metadata"]["labels"].as_object().expect("labels");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(pod_labels.get(key), Some(value), "pod label {key}");
    }
    // The job label names the scrape job; the dashboard and the drift alert group by it.
    let job_label = monitor["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(
        pod_labels.get(job_label).and_then(Value::as_str),
        Some(prometheus::JOB)
    );

    let container = &template["spec"]["containers"][0];
    let admin_addr = (container["env"].as_array().expect("env").iter())
        .find(|e| e["name"] == "PORTCULLIS_ADMIN")
        .and_then(|e| e["value"].as_str())
        .expect("PORTCULLIS_ADMIN");
    let admin_port: u64 = admin_addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let endpoints = monitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1);
    let port_name = endpoints[0]["port"].as_str().expect("port");
    let port = (container["ports"].as_array().expect("ports").iter())
        .find(|p| p["name"] == port_name)
        .unwrap_or_else(|| panic!("the container has no port named {port_name}"));
    assert_eq!(
        port["containerPort"], admin_port,
        "{port_name} is the admin listener"
    );
    assert_eq!(endpoints[0]["path"], "/metrics");
    assert_eq!(
        endpoints[0]["path"], template["metadata"]["annotations"]["prometheus.io/path"],
        "the same path as the scrape annotations"
    );
}

#[test]
fn every_alert_has_severity_summary_description_and_a_runbook_section() {
    let docs = read("docs/observability.md");
    let headings: HashSet<&str> = (docs.lines())
        .filter_map(|l| l.strip_prefix("### "))
        .collect();
    let rules = alert_rules();
    assert!(rules.len() >= 8, "{} alerts", rules.len());
    for rule in &rules {
        let name = rule["alert"].as_str().expect("alerting rules only");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{name}: no {key}");
        }
        let runbook = rule["annotations"]["runbook_url"].as_str().unwrap();
        let anchor = format!("/docs/observability.md#{}", name.to_ascii_lowercase());
        assert!(runbook.ends_with(&anchor), "{name}: runbook_url {runbook}");
        assert!(
            headings.contains(name),
            "docs/observability.md has no `### {name}` section"
        );
    }
}

#[test]
fn dashboard_uses_the_datasource_variable_and_defines_what_it_references() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let names: BTreeSet<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for wanted in ["datasource", "job", "instance", "client"] {
        assert!(names.contains(wanted), "no `{wanted}` variable: {names:?}");
    }
    let datasource = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .unwrap();
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let uses_variable = |ds: &Value| ds["uid"] == "${datasource}" && ds["type"] == "prometheus";
    // A variable's query may use the variables defined before it.
    let mut defined = BTreeSet::new();
    for v in variables {
        let name = v["name"].as_str().unwrap();
        if v["type"] == "query" {
            assert!(uses_variable(&v["datasource"]), "variable {name}");
            let definition = v["definition"].as_str().expect("definition");
            assert_eq!(v["query"]["query"], definition, "variable {name}");
            for var in referenced_variables(definition) {
                assert!(
                    defined.contains(var.as_str()),
                    "${name} uses ${var} before it is defined"
                );
            }
        }
        defined.insert(name);
    }

    let panels = query_panels(&dashboard);
    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64(),
            g["y"].as_u64(),
            g["w"].as_u64(),
            g["h"].as_u64(),
        );
        let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else {
            panic!("{title}: gridPos {g}");
        };
        assert!(x + w <= 24, "{title}: wider than the grid");
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            assert!(cells.insert(cell), "{title} overlaps another panel");
        }
    }
    let mut titles = HashSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(titles.insert(title), "two panels titled {title}");
        assert!(uses_variable(&panel["datasource"]), "{title}: datasource");
        let exprs = panel_exprs(panel);
        assert!(!exprs.is_empty(), "{title}: no query");
        let refs: HashSet<&str> = exprs.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(refs.len(), exprs.len(), "{title}: duplicate refId");
        for target in panel["targets"].as_array().unwrap() {
            assert!(
                uses_variable(&target["datasource"]),
                "{title}: a target's datasource"
            );
        }
        for (_, expr) in &exprs {
            for var in referenced_variables(expr) {
                assert!(
                    names.contains(var.as_str()) || var.starts_with("__"),
                    "{title}: ${var} is not a dashboard variable"
                );
            }
        }
    }
}

/// The `$name` variables an expression uses.
fn referenced_variables(expr: &str) -> Vec<String> {
    expr.split('$')
        .skip(1)
        .map(|rest| {
            let rest = rest.trim_start_matches('{');
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The dashboard's expressions as Grafana would send them with every instance and client
/// selected: `$__rate_interval` 1m (at least four of the test's 1 s scrapes), `$__range` 10m.
fn substitute(expr: &str) -> String {
    [
        ("$__rate_interval", "1m"),
        ("$__range", "10m"),
        ("$job", prometheus::JOB),
        ("$instance", ".*"),
        ("$client", ".*"),
    ]
    .iter()
    .fold(expr.to_owned(), |e, (var, value)| e.replace(var, value))
}

/// The shipped rules with every `for:` shortened to 1s, so that the live test sees an alert
/// fire within seconds; nothing else changes.
fn rules_with_short_for() -> String {
    let mut out = String::new();
    for line in rules_text().lines() {
        match line.trim_start().strip_prefix("for:") {
            Some(_) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                out.push_str(&format!("{indent}for: 1s\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
