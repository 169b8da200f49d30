//! The deployment artifacts under `deploy/` and the policy schema: checked
//! here so they cannot rot. `.ci/run` also runs the external validators
//! (hadolint, cfn-lint, kubernetes-validate, check-jsonschema) on them.
//!
//! Regenerate the committed schema after changing `src/policy/raw.rs` with
//! `cargo run -- schema > config/portcullis.schema.json`.

#[path = "served/mod.rs"]
mod served;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use served::Served;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// `--drain-timeout`'s default: stop timeouts and grace periods must exceed it.
const DRAIN_TIMEOUT_SECS: u64 = 25;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(text: &str, what: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{what}: not YAML: {e}"))
}

fn portcullis(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PORTCULLIS_ADMIN")
        .output()
        .expect("spawn portcullis")
}

// ---------------------------------------------------------------- schema ---

#[test]
fn committed_schema_is_what_portcullis_schema_prints() {
    let out = portcullis(&["schema"]);
    assert!(out.status.success(), "portcullis schema failed: {out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed = read("config/portcullis.schema.json");
    assert!(
        printed == committed,
        "config/portcullis.schema.json is stale: run `cargo run -- schema > config/portcullis.schema.json`"
    );
    let schema: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["required"], serde_json::json!(["version"]));
    // The YAML shape, not serde-saphyr's `Spanned` wrapper.
    assert!(!printed.contains("Spanned") && !printed.contains("referenced"));
}

#[test]
fn example_policy_points_editors_at_the_schema() {
    let first = read("config/portcullis.yaml")
        .lines()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        first,
        "# yaml-language-server: $schema=./portcullis.schema.json"
    );
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&read("config/portcullis.schema.json")).unwrap();
    jsonschema::draft7::new(&schema).expect("the schema is a valid draft-07 schema")
}

fn schema_errors(v: &jsonschema::Validator, policy: &Value) -> Vec<String> {
    v.iter_errors(policy)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {dir}");
    files
}

#[test]
fn valid_policies_satisfy_the_schema() {
    let v = validator();
    let mut policies = vec![
        (
            "config/portcullis.yaml".to_owned(),
            read("config/portcullis.yaml"),
        ),
        (
            "deploy/kubernetes/configmap.yaml".to_owned(),
            configmap_policy(),
        ),
    ];
    for path in yaml_files("tests/policies/warnings") {
        policies.push((
            path.display().to_string(),
            std::fs::read_to_string(&path).unwrap(),
        ));
    }
    for (name, text) in policies {
        let errors = schema_errors(&v, &yaml(&text, &name));
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
}

#[test]
fn structural_mistakes_fail_the_schema() {
    let v = validator();
    // The mistakes a schema can see; the rest (pattern syntax, CIDRs, ports
    // inside strings) are `portcullis check`'s.
    for name in [
        "unknown_key",
        "unknown_client_key",
        "bad_mode",
        "bad_ech",
        "wrong_version",
        "missing_version",
        "default_port_bad",
        "allow_not_a_list",
        "empty_pattern",
        "client_no_sources",
    ] {
        let rel = format!("tests/policies/invalid/{name}.yaml");
        let errors = schema_errors(&v, &yaml(&read(&rel), &rel));
        assert!(!errors.is_empty(), "{rel} passed the schema");
    }
}

// --------------------------------------------------------------- Docker ---

#[test]
fn dockerfile_builds_a_non_root_image_with_a_health_check() {
    let df = read("deploy/Dockerfile");
    let lines: Vec<&str> = df
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(
        lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    let last_from = lines.iter().rev().find(|l| l.starts_with("FROM ")).unwrap();
    assert!(last_from.contains("distroless"), "{last_from}");
    assert!(has("USER 65532"), "numeric non-root USER");
    assert!(has("EXPOSE 3128 9090"));
    assert!(df.contains("PORTCULLIS_LISTEN=0.0.0.0:3128"));
    assert!(df.contains(r#"CMD ["/usr/local/bin/portcullis", "health"]"#));
    assert!(has("HEALTHCHECK "));
    assert!(has(r#"ENTRYPOINT ["/usr/local/bin/portcullis"]"#));
    // Every path the build copies survives .dockerignore.
    let ignore = read(".dockerignore");
    for kept in [
        "!Cargo.toml",
        "!Cargo.lock",
        "!src/",
        "!benches/",
        "!config/portcullis.yaml",
    ] {
        assert!(ignore.lines().any(|l| l == kept), ".dockerignore: {kept}");
    }
}

// ------------------------------------------------------------------ ECS ---

fn container<'a>(task: &'a Value, name: &str) -> &'a Value {
    task["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["environment"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

#[test]
fn ecs_sidecar_task_definition() {
    let task: Value =
        serde_json::from_str(&read("deploy/ecs/sidecar-task-definition.json")).unwrap();
    assert_eq!(task["networkMode"], "awsvpc");
    assert_eq!(
        task["requiresCompatibilities"],
        serde_json::json!(["FARGATE"])
    );

    let proxy = container(&task, "portcullis");
    assert_eq!(proxy["essential"], true);
    assert_eq!(proxy["readonlyRootFilesystem"], true);
    let user = proxy["user"].as_str().expect("a user");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric uid");
    assert_ne!(uid, 0, "non-root user");
    let health = proxy["healthCheck"]["command"].as_array().unwrap();
    assert_eq!(health[0], "CMD");
    assert!(health[1].as_str().unwrap().ends_with("portcullis"));
    assert_eq!(health[2], "health");
    let stop = proxy["stopTimeout"].as_u64().expect("stopTimeout");
    assert!(
        stop > DRAIN_TIMEOUT_SECS,
        "stopTimeout {stop} s must exceed the {DRAIN_TIMEOUT_SECS} s drain"
    );
    assert!(stop <= 120, "Fargate caps stopTimeout at 120 s");
    let drain = env(proxy, "PORTCULLIS_DRAIN_TIMEOUT").unwrap_or("25s");
    let drain = humantime::parse_duration(drain).unwrap();
    assert!(Duration::from_secs(stop) > drain);
    // In a sidecar the proxy listens on the task's loopback only.
    let listen = env(proxy, "PORTCULLIS_LISTEN").expect("PORTCULLIS_LISTEN");
    let listen: SocketAddr = listen.parse().unwrap();
    assert!(listen.ip().is_loopback(), "{listen}");
    // Through the FireLens log router (tests/deploy_pci checks its routing).
    assert_eq!(proxy["logConfiguration"]["logDriver"], "awsfirelens");

    // The policy arrives through a shared volume, written by the sync container.
    let policy = env(proxy, "PORTCULLIS_POLICY").expect("PORTCULLIS_POLICY");
    let mount = &proxy["mountPoints"][0];
    assert!(policy.starts_with(mount["containerPath"].as_str().unwrap()));
    assert_eq!(mount["readOnly"], true);
    let sync = container(&task, "policy-sync");
    assert_eq!(sync["essential"], false);
    assert_eq!(
        sync["mountPoints"][0]["sourceVolume"],
        mount["sourceVolume"]
    );
    assert!(
        proxy["dependsOn"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["containerName"] == "policy-sync" && d["condition"] == "HEALTHY"),
        "portcullis must wait for the first policy"
    );

    let app = container(&task, "app");
    let proxy_url = format!("http://{listen}");
    assert_eq!(env(app, "HTTPS_PROXY"), Some(proxy_url.as_str()));
    assert_eq!(env(app, "HTTP_PROXY"), Some(proxy_url.as_str()));
    let no_proxy: Vec<&str> = env(app, "NO_PROXY").unwrap().split(',').collect();
    for host in ["localhost", "169.254.169.254", "169.254.170.2"] {
        assert!(no_proxy.contains(&host), "NO_PROXY lacks {host}");
    }
    assert!(
        app["dependsOn"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["containerName"] == "portcullis" && d["condition"] == "HEALTHY"),
        "the app must start after the proxy is healthy"
    );
    for c in task["containerDefinitions"].as_array().unwrap() {
        if c["name"] != "portcullis" {
            assert_eq!(
                c["logConfiguration"]["logDriver"], "awslogs",
                "{}",
                c["name"]
            );
        }
    }
}

// ----------------------------------------------------------- Kubernetes ---

fn configmap_policy() -> String {
    let cm = yaml(
        &read("deploy/kubernetes/configmap.yaml"),
        "deploy/kubernetes/configmap.yaml",
    );
    cm["data"]["portcullis.yaml"]
        .as_str()
        .expect("data.portcullis.yaml")
        .to_owned()
}

#[test]
fn kubernetes_configmap_policy_passes_check() {
    let dir = tempdir();
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, configmap_policy()).unwrap();
    let out = portcullis(&["check", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn kubernetes_deployments_drain_safely() {
    for rel in [
        "deploy/kubernetes/deployment.yaml",
        "deploy/kubernetes/git-sync/deployment.yaml",
    ] {
        let d = yaml(&read(rel), rel);
        assert_eq!(d["kind"], "Deployment", "{rel}");
        assert!(d["spec"]["replicas"].as_u64().unwrap() >= 2, "{rel}");
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{rel}");
        let c = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "portcullis")
            .unwrap();
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{rel}"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{rel}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{rel}");
        let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0);
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace > pre_stop + DRAIN_TIMEOUT_SECS,
            "{rel}: grace {grace} s <= preStop {pre_stop} s + drain {DRAIN_TIMEOUT_SECS} s"
        );
    }
    let pdb = yaml(
        &read("deploy/kubernetes/poddisruptionbudget.yaml"),
        "poddisruptionbudget.yaml",
    );
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
}

// --------------------------------------------------------------- health ---

fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("portcullis-deploy-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn health(admin: SocketAddr) -> Output {
    portcullis(&["health", "--admin", &admin.to_string(), "--timeout", "1s"])
}

#[test]
fn health_exits_0_when_the_proxy_is_ready() {
    let dir = tempdir();
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, "version: 1\nallow: [api.stripe.com]\n").unwrap();
    let proxy = Served::start(Path::new(BIN), &policy, &["admin"]);
    // Ready follows the listeners' bind closely: allow a short wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = health(proxy.addr("admin"));
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("200"));

    // The env var works like the flag (what the image's HEALTHCHECK relies on).
    let out = Command::new(BIN)
        .arg("health")
        .env("PORTCULLIS_ADMIN", proxy.addr("admin").to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // So does an unspecified bind address, as the image sets it.
    let any = SocketAddr::from(([0, 0, 0, 0], proxy.addr("admin").port()));
    assert_eq!(health(any).status.code(), Some(0));
}

#[test]
fn health_exits_1_when_nothing_listens() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = health(closed);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
}

#[test]
fn health_exits_1_on_a_non_200_answer() {
    // A listener that answers like a draining proxy.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\ndraining\n",
            );
        }
    });
    let out = health(addr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

// ------------------------------------------------------------- releases ---

/// Every `uses:` of a workflow, as written.
fn workflow_uses(rel: &str) -> Vec<String> {
    read(rel)
        .lines()
        .map(str::trim)
        .map(|l| l.trim_start_matches("- "))
        .filter_map(|l| l.strip_prefix("uses: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn release_workflow_pins_every_action_by_commit() {
    let uses = workflow_uses("deploy/github-actions/release.yml");
    assert!(uses.len() >= 8, "{uses:#?}");
    for u in &uses {
        let (action, rest) = u.split_once('@').unwrap_or_else(|| panic!("{u}"));
        let (sha, comment) = rest.split_once(" # ").unwrap_or((rest, ""));
        assert!(
            sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
            "{action} is not pinned by a full commit SHA: {u}"
        );
        assert!(
            comment.starts_with('v'),
            "{action}: say which release the SHA is (`# vX.Y.Z`): {u}"
        );
    }
    // The same release pinned once: one SHA per action.
    let mut by_action = std::collections::BTreeMap::new();
    for u in &uses {
        let (action, rest) = u.split_once('@').unwrap();
        let previous = by_action.insert(action, &rest[..40]);
        assert!(
            previous.is_none_or(|p| p == &rest[..40]),
            "{action} pinned twice"
        );
    }
}

#[test]
fn release_workflow_builds_what_tests_release_rs_builds() {
    let wf = read("deploy/github-actions/release.yml");
    let test = read("tests/release.rs");
    // One command for both: the profile, the lock file, zigbuild.
    assert!(
        wf.contains(
            r#"cargo zigbuild --profile dist --locked --target "$TARGET" --bin portcullis"#
        )
    );
    for arg in [
        r#""zigbuild""#,
        r#""--profile""#,
        r#""dist""#,
        r#""--locked""#,
    ] {
        assert!(test.contains(arg), "tests/release.rs lacks {arg}");
    }
    for target in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"] {
        assert!(wf.contains(&format!("target: {target}")), "{target}");
    }
    assert!(
        !wf.contains("setup-qemu"),
        "the Rust build must not run under QEMU"
    );
    for step in [
        "sha256sum",
        "cosign sign-blob",
        "cosign sign --yes",
        "cosign attest",
        "cyclonedx",
        "actions/attest-build-provenance@",
        "file: deploy/Dockerfile.release",
        "platforms: linux/amd64,linux/arm64",
    ] {
        assert!(wf.contains(step), "release.yml lacks {step}");
    }
    let cargo = read("Cargo.toml");
    let dist = cargo
        .split("[profile.dist]")
        .nth(1)
        .expect("a [profile.dist] in Cargo.toml");
    assert!(dist.contains("inherits = \"release\""));
    assert!(dist.contains("strip = true"));
}

#[test]
fn release_dockerfile_copies_the_prebuilt_binary_onto_a_pinned_static_base() {
    let df = read("deploy/Dockerfile.release");
    let lines: Vec<&str> = df
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 1, "one stage: nothing is compiled here");
    let (image, digest) = froms[0]["FROM ".len()..]
        .split_once("@sha256:")
        .expect("base pinned by digest");
    assert!(image.starts_with("gcr.io/distroless/static"), "{image}");
    assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(lines.contains(&"ARG TARGETARCH"));
    assert!(lines.contains(&"COPY linux/${TARGETARCH}/portcullis /usr/local/bin/portcullis"));
    assert!(
        !lines.iter().any(|l| l.starts_with("RUN ")),
        "no RUN: no shell"
    );
    // The same run-time contract as the source build's image.
    let source = read("deploy/Dockerfile");
    for line in source.lines().map(str::trim) {
        if line.starts_with("PORTCULLIS_")
            || line.starts_with("USER ")
            || line.starts_with("EXPOSE ")
            || line.starts_with("ENTRYPOINT ")
            || line.starts_with("CMD ")
            || line.starts_with("HEALTHCHECK ")
        {
            assert!(
                lines.contains(&line),
                "deploy/Dockerfile.release lacks `{line}`"
            );
        }
    }
}

#[test]
fn kubernetes_namespace_enforces_the_restricted_pod_security_standard() {
    let ns = yaml(
        &read("deploy/kubernetes/namespace.yaml"),
        "deploy/kubernetes/namespace.yaml",
    );
    let labels = &ns["metadata"]["labels"];
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            labels[format!("pod-security.kubernetes.io/{mode}")],
            "restricted",
            "{mode}"
        );
    }
}

#[test]
fn kubernetes_deployments_name_the_priority_class_and_the_hpa_their_deployment() {
    let pc = yaml(
        &read("deploy/kubernetes/priorityclass.yaml"),
        "priorityclass.yaml",
    );
    assert_eq!(pc["kind"], "PriorityClass");
    assert_eq!(pc["globalDefault"], false);
    let value = pc["value"].as_i64().unwrap();
    assert!(
        value > 0 && value < 1_000_000_000,
        "below the system classes"
    );
    for rel in [
        "deploy/kubernetes/deployment.yaml",
        "deploy/kubernetes/git-sync/deployment.yaml",
    ] {
        let d = yaml(&read(rel), rel);
        assert_eq!(
            d["spec"]["template"]["spec"]["priorityClassName"], pc["metadata"]["name"],
            "{rel}"
        );
    }
    let base = read("deploy/kubernetes/kustomization.yaml");
    assert!(base.lines().any(|l| l.trim() == "- priorityclass.yaml"));

    let hpa = yaml(
        &read("deploy/kustomize/egress-service/hpa.yaml"),
        "hpa.yaml",
    );
    let deployment = yaml(
        &read("deploy/kubernetes/deployment.yaml"),
        "deployment.yaml",
    );
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert_eq!(
        hpa["metadata"]["namespace"],
        deployment["metadata"]["namespace"]
    );
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    // CPU utilisation is relative to the request: the container must have one.
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert!(container["resources"]["requests"]["cpu"].is_string());
}
