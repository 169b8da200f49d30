//! The PCI logging recipe for ECS (deploy/ecs, docs/pci.md), checked against
//! what portcullis really writes: the CloudFormation log groups keep a year
//! and take the KMS key, the FireLens configuration sends audit records and
//! diagnostics to different log groups, and the metric filters behind the
//! alarms count the lines portcullis writes for each failure. The same
//! template's client identity (PROXY protocol, PrivateLink) is checked in
//! `privatelink`, the policy bucket and its publishing in `policy_bucket`,
//! the CPU architecture in `architecture`. `.ci/run` also runs cfn-lint on
//! the templates and hadolint on the log router's Dockerfile.

mod architecture;
mod cfn;
mod cloudwatch;
mod firelens;
mod iam;
mod policy_bucket;
mod privatelink;
mod proxy;
mod stack;

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use cfn::reference;
use cloudwatch::Pattern;
use firelens::{Delivery, Pipeline};

const TEMPLATE: &str = "deploy/ecs/shared-egress.yaml";
const SIDECAR: &str = "deploy/ecs/sidecar-task-definition.json";
const FIRELENS_CONF: &str = "deploy/ecs/firelens/firelens.conf";
const FIRELENS_DOCKERFILE: &str = "deploy/ecs/firelens/Dockerfile";
const TASK_ID: &str = "0123456789abcdef0123456789abcdef";

/// The retention periods CloudWatch Logs accepts (PutRetentionPolicy).
const CLOUDWATCH_RETENTION_DAYS: [u64; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

fn read(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn template() -> Value {
    cfn::parse(&read(TEMPLATE), TEMPLATE)
}

fn number(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("{v} is not a number"))
}

/// `Fn::If [condition, then, AWS::NoValue]`.
fn only_if(condition: &str, then: Value) -> Value {
    json!({ "Fn::If": [condition, then, reference("AWS::NoValue")] })
}

/// `Not Equals [Ref parameter, ""]`: the parameter was given.
fn given(parameter: &str) -> Value {
    json!({ "Fn::Not": [{ "Fn::Equals": [reference(parameter), ""] }] })
}

// ---------------------------------------------------------- log groups ---

#[test]
fn log_groups_keep_a_year_and_are_encrypted_with_the_kms_key_when_given() {
    let t = template();
    let retention = &t["Parameters"]["LogRetentionDays"];
    let default = number(&retention["Default"]);
    assert!(
        default >= 365,
        "LogRetentionDays defaults to {default} days"
    );
    let allowed: Vec<u64> = (retention["AllowedValues"].as_array())
        .expect("AllowedValues")
        .iter()
        .map(number)
        .collect();
    assert!(allowed.contains(&default));
    for days in &allowed {
        assert!(
            CLOUDWATCH_RETENTION_DAYS.contains(days),
            "CloudWatch Logs has no {days}-day retention"
        );
        assert!(
            *days >= 365,
            "PCI DSS 10.5.1 asks for a year, not {days} days"
        );
    }
    assert_eq!(
        t["Parameters"]["KmsKeyArn"]["Default"], "",
        "the key is optional"
    );
    assert_eq!(t["Conditions"]["HasKmsKey"], given("KmsKeyArn"));

    let groups = cfn::resources(&t, "AWS::Logs::LogGroup");
    let ids: Vec<&str> = groups.iter().map(|(id, _)| *id).collect();
    assert!(
        ids.contains(&"AuditLogGroup") && ids.contains(&"LogGroup"),
        "{ids:?}"
    );
    for (id, group) in groups {
        let props = &group["Properties"];
        assert_eq!(
            props["RetentionInDays"],
            reference("LogRetentionDays"),
            "{id}"
        );
        assert_eq!(
            props["KmsKeyId"],
            only_if("HasKmsKey", reference("KmsKeyArn")),
            "{id}: encrypted with KmsKeyArn exactly when it is given"
        );
        // Deleting the stack (or replacing the group) must not delete the evidence.
        assert_eq!(group["DeletionPolicy"], "Retain", "{id}");
        assert_eq!(group["UpdateReplacePolicy"], "Retain", "{id}");
    }

    // Every container logs into one of these groups, directly or through the router.
    let containers = t["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
        .as_array()
        .unwrap();
    for c in containers {
        let log = &c["LogConfiguration"];
        match log["LogDriver"].as_str() {
            Some("awsfirelens") => {}
            Some("awslogs") => {
                let group = &log["Options"]["awslogs-group"];
                assert!(
                    ids.iter().any(|id| *group == reference(id)),
                    "{}: {group}",
                    c["Name"]
                );
            }
            other => panic!("{}: log driver {other:?}", c["Name"]),
        }
    }
}

// ------------------------------------------------------------ FireLens ---

/// A container's environment, from the list under `key_env` (CloudFormation
/// and ECS JSON spell the keys differently); an intrinsic such as
/// `{"Ref": ...}` is kept as its JSON text.
fn environment(
    container: &Value,
    key_env: &str,
    key_name: &str,
    key_value: &str,
) -> HashMap<String, String> {
    container[key_env]
        .as_array()
        .map(|env| {
            env.iter()
                .map(|e| {
                    let value = match &e[key_value] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (e[key_name].as_str().unwrap().to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn cfn_containers(t: &Value) -> Vec<Value> {
    t["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
        .as_array()
        .unwrap()
        .clone()
}

/// The log router container of the CloudFormation task and its environment.
fn cfn_router(t: &Value) -> (Value, HashMap<String, String>) {
    let routers: Vec<Value> = cfn_containers(t)
        .into_iter()
        .filter(|c| !c["FirelensConfiguration"].is_null())
        .collect();
    assert_eq!(routers.len(), 1, "one FireLens log router");
    let env = environment(&routers[0], "Environment", "Name", "Value");
    (routers[0].clone(), env)
}

fn sidecar() -> Value {
    serde_json::from_str(&read(SIDECAR)).unwrap()
}

fn sidecar_router(task: &Value) -> (Value, HashMap<String, String>) {
    let routers: Vec<&Value> = task["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["firelensConfiguration"].is_null())
        .collect();
    assert_eq!(routers.len(), 1, "one FireLens log router");
    let env = environment(routers[0], "environment", "name", "value");
    (routers[0].clone(), env)
}

/// Where the Dockerfile puts firelens.conf in the image.
fn config_path_in_image() -> String {
    let dockerfile = read(FIRELENS_DOCKERFILE);
    let copy = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("COPY firelens.conf "))
        .expect("the Dockerfile copies firelens.conf");
    copy.trim().to_owned()
}

fn deliveries(pipeline: &Pipeline, source: &str, line: &str) -> Vec<Delivery> {
    pipeline.route("portcullis", TASK_ID, source, line)
}

#[test]
fn firelens_sends_audit_records_and_diagnostics_to_their_own_log_groups() {
    let conf = read(FIRELENS_CONF);
    let out = proxy::output();
    assert!(out.stdout.len() >= 3 && !out.stderr.is_empty(), "{out:?}");
    // Lines that are not JSON: a panic, or someone switching to --log-format text.
    let mut diagnostics = out.stderr.clone();
    diagnostics.push("thread 'main' panicked at src/main.rs:1:1:".into());
    diagnostics.push("2026-11-30T16:06:46Z  INFO portcullis: ready generation=1".into());

    for (what, env) in [
        ("shared-egress.yaml", cfn_router(&template()).1),
        ("sidecar-task-definition.json", sidecar_router(&sidecar()).1),
    ] {
        let pipeline = Pipeline::load(&conf, &env);
        let audit_group = &env["AUDIT_LOG_GROUP"];
        let diagnostic_group = &env["DIAGNOSTIC_LOG_GROUP"];
        assert_ne!(audit_group, diagnostic_group, "{what}");
        for line in &out.stdout {
            assert!(serde_json::from_str::<Value>(line).unwrap()["event"].is_string());
            assert_eq!(
                deliveries(&pipeline, "stdout", line),
                [Delivery {
                    log_group: audit_group.clone(),
                    log_stream: format!("audit/audit.portcullis-firelens-{TASK_ID}"),
                    message: line.clone(),
                }],
                "{what}: an audit record goes to the audit group only, as written"
            );
        }
        for line in &diagnostics {
            assert_eq!(
                deliveries(&pipeline, "stderr", line),
                [Delivery {
                    log_group: diagnostic_group.clone(),
                    log_stream: format!("diagnostics/portcullis-firelens-{TASK_ID}"),
                    message: line.clone(),
                }],
                "{what}: a diagnostic goes to the diagnostic group only, as written"
            );
        }
        // What the routing rests on: audit records have `event`, diagnostics never do.
        for line in &out.stderr {
            let v: Value = serde_json::from_str(line).unwrap_or_default();
            assert!(
                v.get("event").is_none(),
                "a diagnostic with `event`: {line}"
            );
        }

        // Nothing is given up on, and nothing creates the groups behind the template's back.
        for o in &pipeline.outputs {
            assert_eq!(o.retry_limit, "no_limits", "{}", o.log_group);
            assert!(!o.auto_create_group, "{}", o.log_group);
        }
        assert!(
            pipeline.service.iter().any(|(k, _)| k == "storage.path"),
            "the rewritten audit records are buffered on disk: [SERVICE] storage.path"
        );
    }
}

#[test]
fn task_definitions_hand_portcullis_output_to_the_log_router() {
    let conf = read(FIRELENS_CONF);
    let wanted = firelens::env_vars(&conf);
    let in_image = config_path_in_image();
    assert!(
        !in_image.starts_with("/fluent-bit/etc/"),
        "FireLens mounts its own configuration over /fluent-bit/etc"
    );
    let dockerfile = read(FIRELENS_DOCKERFILE);
    let version = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG AWS_FOR_FLUENT_BIT_VERSION="))
        .expect("the base image version is pinned in an ARG");
    assert!(
        version.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "a version, not a moving tag: {version}"
    );
    assert!(dockerfile.contains(
        "FROM public.ecr.aws/aws-observability/aws-for-fluent-bit:${AWS_FOR_FLUENT_BIT_VERSION}"
    ));

    // CloudFormation.
    let t = template();
    let (router, env) = cfn_router(&t);
    assert_eq!(router["Essential"], true);
    let firelens = &router["FirelensConfiguration"];
    assert_eq!(firelens["Type"], "fluentbit");
    assert_eq!(
        firelens["Options"]["config-file-type"], "file",
        "Fargate reads only files"
    );
    assert_eq!(firelens["Options"]["config-file-value"], in_image.as_str());
    for var in &wanted {
        assert!(env.contains_key(var), "the log router does not set {var}");
    }
    assert_eq!(
        env["AUDIT_LOG_GROUP"],
        reference("AuditLogGroup").to_string()
    );
    assert_eq!(
        env["DIAGNOSTIC_LOG_GROUP"],
        reference("LogGroup").to_string()
    );
    let containers = cfn_containers(&t);
    let proxy = containers
        .iter()
        .find(|c| c["Name"] == "portcullis")
        .unwrap();
    assert_eq!(proxy["LogConfiguration"]["LogDriver"], "awsfirelens");
    // Blocking: a stalled router holds portcullis back instead of dropping lines unseen.
    assert!(proxy["LogConfiguration"]["Options"]["mode"].is_null());
    let proxy_env = environment(proxy, "Environment", "Name", "Value");
    assert_eq!(
        proxy_env
            .get("PORTCULLIS_AUDIT_OVERFLOW")
            .map(String::as_str),
        Some("refuse")
    );
    assert_ne!(
        proxy_env.get("PORTCULLIS_LOG_FORMAT").map(String::as_str),
        Some("text")
    );
    // The router writes with the task role: append to both groups, delete nothing.
    let statements: Vec<&Value> = t["Resources"]["TaskRole"]["Properties"]["Policies"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["PolicyDocument"]["Statement"].as_array().unwrap())
        .collect();
    let writes = statements
        .iter()
        .find(|s| {
            s["Action"]
                .as_array()
                .is_some_and(|a| a.contains(&json!("logs:PutLogEvents")))
        })
        .expect("the task role may put log events");
    for group in ["AuditLogGroup", "LogGroup"] {
        let arn = json!({ "Fn::GetAtt": [group, "Arn"] });
        assert!(
            writes["Resource"].as_array().unwrap().contains(&arn),
            "{group}"
        );
    }
    for s in &statements {
        let actions = s["Action"].to_string();
        assert!(
            !actions.contains("logs:Delete") && !actions.contains("logs:*"),
            "{actions}"
        );
    }

    // The sidecar task definition.
    let task = sidecar();
    let (router, env) = sidecar_router(&task);
    assert_eq!(router["essential"], true);
    let firelens = &router["firelensConfiguration"];
    assert_eq!(firelens["type"], "fluentbit");
    assert_eq!(firelens["options"]["config-file-type"], "file");
    assert_eq!(firelens["options"]["config-file-value"], in_image.as_str());
    for var in &wanted {
        assert!(
            env.contains_key(var),
            "the sidecar's log router does not set {var}"
        );
    }
    let proxy = task["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "portcullis")
        .unwrap();
    assert_eq!(proxy["logConfiguration"]["logDriver"], "awsfirelens");
    assert!(proxy["logConfiguration"]["options"]["mode"].is_null());
    let proxy_env = environment(proxy, "environment", "name", "value");
    assert_eq!(
        proxy_env
            .get("PORTCULLIS_AUDIT_OVERFLOW")
            .map(String::as_str),
        Some("refuse")
    );
}

// ------------------------------------------------------ metric filters ---

/// The events each log group of the template receives from portcullis's
/// lines, routed by the FireLens configuration with the template's environment.
fn log_group_events() -> HashMap<String, Vec<String>> {
    let t = template();
    let (_, env) = cfn_router(&t);
    let pipeline = Pipeline::load(&read(FIRELENS_CONF), &env);
    let out = proxy::output();
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    let lines =
        (out.stdout.iter().map(|l| ("stdout", l))).chain(out.stderr.iter().map(|l| ("stderr", l)));
    for (source, line) in lines {
        for d in deliveries(&pipeline, source, line) {
            // `{"Ref":"AuditLogGroup"}` -> AuditLogGroup
            let group: Value = serde_json::from_str(&d.log_group).expect("a Ref");
            let id = group["Ref"].as_str().expect("a Ref").to_owned();
            groups.entry(id).or_default().push(d.message);
        }
    }
    groups
}

fn field(line: &str, key: &str) -> Value {
    serde_json::from_str::<Value>(line).unwrap_or_default()[key].clone()
}

#[test]
fn metric_filters_count_what_portcullis_writes_for_each_failure() {
    let t = template();
    let out = proxy::output();
    let groups = log_group_events();

    // metric name -> (matched events, sum of the metric's values)
    let mut metrics: HashMap<String, (Vec<String>, f64)> = HashMap::new();
    let filters = cfn::resources(&t, "AWS::Logs::MetricFilter");
    assert!(!filters.is_empty());
    for (id, filter) in &filters {
        let props = &filter["Properties"];
        let text = props["FilterPattern"].as_str().expect("FilterPattern");
        let pattern = Pattern::parse(text).unwrap_or_else(|e| panic!("{id}: {text}: {e}"));
        let group = props["LogGroupName"]["Ref"]
            .as_str()
            .expect("a log group of the stack");
        let events = groups.get(group).map(Vec::as_slice).unwrap_or_default();
        // Each key the pattern reads is one portcullis writes to that group.
        for key in pattern.selectors() {
            assert!(
                events.iter().any(|e| !field(e, &key).is_null()),
                "{id}: no event in {group} has `{key}`"
            );
        }
        let [transformation] = props["MetricTransformations"]
            .as_array()
            .unwrap()
            .as_slice()
        else {
            panic!("{id}: one metric per filter");
        };
        assert_eq!(
            transformation["MetricNamespace"],
            json!({ "Fn::Sub": "portcullis/${AWS::StackName}" }),
            "{id}"
        );
        let name = transformation["MetricName"].as_str().unwrap().to_owned();
        let value = transformation["MetricValue"].as_str().expect("MetricValue");
        let entry = metrics.entry(name).or_default();
        for e in events.iter().filter(|e| pattern.matches(e)) {
            entry.0.push(e.clone());
            entry.1 += cloudwatch::metric_value(value, &pattern, e);
        }
    }

    let (matched, _) = &metrics["PolicyReloadErrors"];
    let rejected: Vec<&String> = (out.stdout.iter())
        .filter(|l| field(l, "event") == "policy_reload" && field(l, "result") == "error")
        .collect();
    assert!(!rejected.is_empty());
    assert_eq!(
        matched.iter().collect::<Vec<_>>(),
        rejected,
        "rejected reloads, and only those"
    );

    // Summed as CloudWatch would, the refusals add up to the 503s the run got.
    let (matched, refused) = &metrics["AuditUnavailableRefusals"];
    assert!(out.refused > 0);
    assert_eq!(*refused, out.refused as f64, "{matched:#?}");
    assert!(matched.iter().all(|l| field(l, "level") == "WARN"));

    // Summed as CloudWatch would, the lost records add up to portcullis's own count.
    let (matched, lost) = &metrics["AuditRecordsLost"];
    assert!(out.lost > 0);
    assert_eq!(*lost, out.lost as f64, "{matched:#?}");
    assert!(
        matched
            .iter()
            .all(|l| field(l, "level") == "WARN" || field(l, "level") == "ERROR")
    );
}

#[test]
fn every_alarm_watches_a_filtered_metric_and_notifies_the_optional_topic() {
    let t = template();
    assert_eq!(t["Parameters"]["AlarmTopicArn"]["Default"], "");
    assert_eq!(t["Conditions"]["HasAlarmTopic"], given("AlarmTopicArn"));
    let published: Vec<(Value, Value)> = cfn::resources(&t, "AWS::Logs::MetricFilter")
        .iter()
        .flat_map(|(_, f)| f["Properties"]["MetricTransformations"].as_array().unwrap())
        .map(|m| (m["MetricNamespace"].clone(), m["MetricName"].clone()))
        .collect();
    let alarms = cfn::resources(&t, "AWS::CloudWatch::Alarm");
    let mut watched = Vec::new();
    for (id, alarm) in &alarms {
        let p = &alarm["Properties"];
        let metric = (p["Namespace"].clone(), p["MetricName"].clone());
        assert!(
            published.contains(&metric),
            "{id}: no filter publishes {metric:?}"
        );
        // Any occurrence fires: one lost record is a gap in the evidence.
        assert_eq!(p["Statistic"], "Sum", "{id}");
        assert_eq!(p["ComparisonOperator"], "GreaterThanThreshold", "{id}");
        assert_eq!(number(&p["Threshold"]), 0, "{id}");
        assert_eq!(p["TreatMissingData"], "notBreaching", "{id}");
        let topic = only_if("HasAlarmTopic", json!([reference("AlarmTopicArn")]));
        assert_eq!(p["AlarmActions"], topic, "{id}");
        assert_eq!(p["OKActions"], topic, "{id}");
        watched.push(p["MetricName"].as_str().unwrap().to_owned());
    }
    watched.sort();
    assert_eq!(
        watched,
        [
            "AuditRecordsLost",
            "AuditUnavailableRefusals",
            "PolicyReloadErrors"
        ]
    );
}
