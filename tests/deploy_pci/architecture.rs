//! Graviton: one parameter picks the Fargate tasks' CPU architecture, and
//! the sidecar task definition names its own.

use serde_json::json;

use crate::privatelink::{VPC_CIDR, required, resource, stack};
use crate::stack::refusals;
use crate::{sidecar, template};

const ARCHITECTURES: [&str; 2] = ["X86_64", "ARM64"];

#[test]
fn the_architecture_parameter_sets_the_tasks_cpu_architecture() {
    let t = template();
    let p = &t["Parameters"]["Architecture"];
    assert_eq!(p["Default"], "X86_64", "existing stacks stay on x86-64");
    assert_eq!(p["AllowedValues"], json!(ARCHITECTURES));
    let description = p["Description"].as_str().unwrap_or_default();
    assert!(
        description.contains("multi-arch") && description.contains("linux/arm64"),
        "the images must have an arm64 variant: {description}"
    );

    for (given, expected) in [
        (None, "X86_64"),
        (Some("X86_64"), "X86_64"),
        (Some("ARM64"), "ARM64"),
    ] {
        let more: Vec<(&str, &str)> = given.map(|a| ("Architecture", a)).into_iter().collect();
        let s = stack(VPC_CIDR, &more);
        let platform = &resource(&s, "TaskDefinition")["Properties"]["RuntimePlatform"];
        assert_eq!(
            platform,
            &json!({ "OperatingSystemFamily": "LINUX", "CpuArchitecture": expected }),
            "Architecture={given:?}"
        );
    }

    // CloudFormation spells them in capitals and refuses anything else.
    let mut given = required(VPC_CIDR);
    given.push(("Architecture", "arm64".into()));
    let given: Vec<(&str, &str)> = given.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let why = refusals(&t, &given);
    assert!(
        why.iter().any(|w| w.starts_with("Architecture:")),
        "{why:?}"
    );

    // The sidecar's task definition is edited by hand: a value ECS knows.
    let task = sidecar();
    let platform = &task["runtimePlatform"];
    assert_eq!(platform["operatingSystemFamily"], "LINUX");
    let arch = platform["cpuArchitecture"]
        .as_str()
        .expect("cpuArchitecture");
    assert!(ARCHITECTURES.contains(&arch), "{arch}");
}
