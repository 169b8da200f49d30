//! Client identity behind the shared-egress NLB: PROXY protocol v2 switched
//! on for both the target group and portcullis by one parameter, the
//! PrivateLink endpoint-service variant (which forces it on), the consumer
//! template, and the example policy that names consumers by VPC endpoint,
//! run through the real binary with the arguments the template gives it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde_json::{Value, json};

use crate::cfn::{self, reference};
use crate::proxy::Run;
use crate::stack::deploy;
use crate::{TEMPLATE, read, template};

const CONSUMER: &str = "deploy/ecs/egress-endpoint-consumer.yaml";
const POLICY: &str = "deploy/ecs/privatelink-policy.yaml";
const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
pub(crate) const VPC_CIDR: &str = "10.0.0.0/16";
/// The example policy's first consumer and its endpoint.
const TEAM_A: (&str, &str) = ("team-a", "vpce-0a1b2c3d4e5f67890");

/// The parameters without a default, and the VPC CIDR the tests look for.
pub(crate) fn required(vpc_cidr: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Image", "portcullis:test".into()),
        ("LogRouterImage", "portcullis-firelens:test".into()),
        ("VpcId", "vpc-0abc".into()),
        ("VpcCidr", vpc_cidr.into()),
        ("SubnetIds", "subnet-0a,subnet-0b".into()),
        ("ClientCidr1", "10.0.1.0/24".into()),
        ("ClientCidr2", "10.0.2.0/24".into()),
        ("PolicyBucket", "acme-egress-policy".into()),
    ]
}

/// shared-egress.yaml deployed with `required(vpc_cidr)` and `more`.
pub(crate) fn stack(vpc_cidr: &str, more: &[(&str, &str)]) -> Value {
    let mut given = required(vpc_cidr);
    given.extend(more.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let given: Vec<(&str, &str)> = given.iter().map(|(k, v)| (*k, v.as_str())).collect();
    deploy(&template(), &given)
}

pub(crate) fn resource<'a>(stack: &'a Value, id: &str) -> &'a Value {
    let r = &stack["Resources"][id];
    assert!(!r.is_null(), "no resource {id}");
    r
}

fn target_group_attribute(stack: &Value, key: &str) -> String {
    let attrs = resource(stack, "TargetGroup")["Properties"]["TargetGroupAttributes"]
        .as_array()
        .unwrap();
    let found: Vec<&Value> = attrs.iter().filter(|a| a["Key"] == key).collect();
    let [a] = found.as_slice() else {
        panic!("{key}: {found:?}")
    };
    a["Value"].as_str().unwrap().to_owned()
}

/// The portcullis container's command: `run` and its flags.
fn command(stack: &Value) -> Vec<String> {
    let containers = resource(stack, "TaskDefinition")["Properties"]["ContainerDefinitions"]
        .as_array()
        .unwrap();
    let proxy = containers
        .iter()
        .find(|c| c["Name"] == "portcullis")
        .unwrap();
    let env = proxy["Environment"].to_string();
    assert!(
        !env.contains("PORTCULLIS_PROXY_PROTOCOL"),
        "the flags are on the command line only: {env}"
    );
    (proxy["Command"].as_array().expect("Command").iter())
        .map(|a| a.as_str().expect("a plain argument").to_owned())
        .collect()
}

/// Every rule admitting the proxy port to the tasks, inline or standalone.
fn task_ingress_3128(stack: &Value) -> Vec<Value> {
    let mut rules: Vec<Value> =
        resource(stack, "TaskSecurityGroup")["Properties"]["SecurityGroupIngress"]
            .as_array()
            .unwrap()
            .clone();
    for (_, r) in cfn::resources(stack, "AWS::EC2::SecurityGroupIngress") {
        if r["Properties"]["GroupId"] == reference("TaskSecurityGroup") {
            rules.push(r["Properties"].clone());
        }
    }
    rules.retain(|r| r["FromPort"] == 3128);
    rules
}

#[test]
fn proxy_protocol_is_on_for_the_nlb_and_portcullis_together_or_for_neither() {
    let t = template();
    let p = &t["Parameters"]["ProxyProtocol"];
    assert_eq!(p["Default"], "false", "off unless asked for");
    assert_eq!(p["AllowedValues"], json!(["false", "true"]));

    for (pp, es) in [
        ("false", "false"),
        ("true", "false"),
        ("false", "true"),
        ("true", "true"),
    ] {
        let what = format!("ProxyProtocol={pp} EndpointService={es}");
        let s = stack(VPC_CIDR, &[("ProxyProtocol", pp), ("EndpointService", es)]);
        let header = pp == "true" || es == "true";
        assert_eq!(
            target_group_attribute(&s, "proxy_protocol_v2.enabled"),
            header.to_string(),
            "{what}: the NLB sends the header"
        );
        let args = command(&s);
        if header {
            // Every connection must carry the header, from the NLB's addresses only.
            assert_eq!(
                args,
                ["run", "--proxy-protocol", "--proxy-protocol-from", VPC_CIDR],
                "{what}"
            );
        } else {
            assert_eq!(args, ["run"], "{what}");
        }

        // The header carries the client: the tasks see only the NLB, and
        // admit the proxy port from it alone, so nobody else can write one.
        assert_eq!(
            target_group_attribute(&s, "preserve_client_ip.enabled"),
            (!header).to_string(),
            "{what}"
        );
        let ingress = task_ingress_3128(&s);
        let from_nlb = json!({ "Fn::GetAtt": ["LoadBalancerSecurityGroup", "GroupId"] });
        if header {
            assert_eq!(ingress.len(), 1, "{what}: {ingress:#?}");
            assert_eq!(ingress[0]["SourceSecurityGroupId"], from_nlb, "{what}");
        } else {
            let cidrs: Vec<&Value> = ingress.iter().map(|r| &r["CidrIp"]).collect();
            assert_eq!(
                cidrs,
                [&json!("10.0.1.0/24"), &json!("10.0.2.0/24")],
                "{what}"
            );
        }

        // Health checks: /readyz on the admin port, which reads no header;
        // with the header on, a TCP connect to the proxy port, which does.
        let tg = &resource(&s, "TargetGroup")["Properties"];
        let check = (
            &tg["HealthCheckProtocol"],
            &tg["HealthCheckPort"],
            &tg["HealthCheckPath"],
        );
        if header {
            assert_eq!(
                check,
                (&json!("TCP"), &json!("traffic-port"), &Value::Null),
                "{what}"
            );
        } else {
            assert_eq!(
                check,
                (&json!("HTTP"), &json!("9090"), &json!("/readyz")),
                "{what}"
            );
        }
    }
}

#[test]
fn the_endpoint_service_variant_forces_proxy_protocol_and_admits_the_given_accounts() {
    let principals = "arn:aws:iam::111122223333:root,arn:aws:iam::444455556666:root";
    let s = stack(
        VPC_CIDR,
        &[
            ("EndpointService", "true"),
            ("AllowedPrincipals", principals),
        ],
    );
    assert_eq!(
        target_group_attribute(&s, "proxy_protocol_v2.enabled"),
        "true"
    );
    assert!(command(&s).contains(&"--proxy-protocol".to_owned()));

    let service = &resource(&s, "PrivateLinkService")["Properties"];
    assert_eq!(
        service["NetworkLoadBalancerArns"],
        json!([reference("LoadBalancer")])
    );
    assert_eq!(
        service["AcceptanceRequired"], "true",
        "each consumer's endpoint waits for acceptance by default"
    );
    let permissions = &resource(&s, "PrivateLinkServicePermissions")["Properties"];
    assert_eq!(permissions["ServiceId"], reference("PrivateLinkService"));
    assert_eq!(
        permissions["AllowedPrincipals"],
        json!([
            "arn:aws:iam::111122223333:root",
            "arn:aws:iam::444455556666:root"
        ])
    );
    // Consumers reuse CIDRs: PrivateLink traffic is admitted by the service's
    // permissions, not by this VPC's client subnets.
    assert_eq!(
        resource(&s, "LoadBalancer")["Properties"]["EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic"],
        "off"
    );
    let name = &s["Outputs"]["EndpointServiceName"]["Value"];
    assert_eq!(
        *name,
        json!({ "Fn::Sub": "com.amazonaws.vpce.${AWS::Region}.${PrivateLinkService}" })
    );

    // What that output becomes is what the consumer template asks for.
    let consumer = cfn::parse(&read(CONSUMER), CONSUMER);
    let pattern = consumer["Parameters"]["ServiceName"]["AllowedPattern"]
        .as_str()
        .unwrap();
    let example = "com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0";
    assert!(Regex::new(pattern).unwrap().is_match(example), "{pattern}");

    // No principals yet: the service exists, nobody may connect.
    let s = stack(VPC_CIDR, &[("EndpointService", "true")]);
    resource(&s, "PrivateLinkService");
    assert!(s["Resources"]["PrivateLinkServicePermissions"].is_null());

    // Without the variant, nothing of it.
    let s = stack(VPC_CIDR, &[("AllowedPrincipals", principals)]);
    for id in ["PrivateLinkService", "PrivateLinkServicePermissions"] {
        assert!(s["Resources"][id].is_null(), "{id}");
    }
    assert!(s["Outputs"]["EndpointServiceName"].is_null());
    assert!(
        resource(&s, "LoadBalancer")["Properties"]
            .get("EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic")
            .is_none()
    );
}

#[test]
fn the_consumer_template_makes_an_interface_endpoint_reachable_on_the_proxy_port_only() {
    let t = cfn::parse(&read(CONSUMER), CONSUMER);
    let endpoints = cfn::resources(&t, "AWS::EC2::VPCEndpoint");
    let [(endpoint_id, endpoint)] = endpoints.as_slice() else {
        panic!("one endpoint")
    };
    let props = &endpoint["Properties"];
    assert_eq!(props["VpcEndpointType"], "Interface");
    assert_eq!(props["ServiceName"], reference("ServiceName"));
    let [sg] = props["SecurityGroupIds"].as_array().unwrap().as_slice() else {
        panic!("one security group")
    };
    let sg_id = sg["Ref"].as_str().expect("the template's own group");
    let ingress = t["Resources"][sg_id]["Properties"]["SecurityGroupIngress"]
        .as_array()
        .unwrap();
    for rule in ingress {
        assert_eq!(
            (&rule["FromPort"], &rule["ToPort"]),
            (&json!(3128), &json!(3128))
        );
        assert_eq!(rule["CidrIp"], reference("ClientCidr"));
    }
    // The id the egress team lists in `vpc_endpoints`.
    assert_eq!(t["Outputs"]["EndpointId"]["Value"], reference(endpoint_id));
}

#[test]
fn every_template_is_linted_in_ci() {
    let ci = read(".ci/run");
    let mut templates = Vec::new();
    for entry in
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/ecs")).unwrap()
    {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.starts_with("AWSTemplateFormatVersion") {
            templates.push(format!(
                "deploy/ecs/{}",
                path.file_name().unwrap().to_str().unwrap()
            ));
        }
    }
    assert!(templates.contains(&TEMPLATE.to_owned()) && templates.contains(&CONSUMER.to_owned()));
    for t in &templates {
        assert!(
            ci.lines()
                .any(|l| l.contains("/cfn-lint") && l.contains(t.as_str())),
            "{t} is not in .ci/run's cfn-lint step"
        );
    }
}

#[test]
fn the_privatelink_policy_passes_check() {
    let out = std::process::Command::new(BIN)
        .args(["check", "--strict", POLICY])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("spawn portcullis check");
    assert!(out.status.success(), "{out:?}");
}

/// A PROXY protocol v2 header as an AWS NLB writes it for a connection
/// through a VPC endpoint: PROXY, TCP over IPv4, then the AWS TLV (type
/// 0xEA, subtype 0x01) with the endpoint id.
fn nlb_header(src: [u8; 4], port: u16, vpce: &str) -> Vec<u8> {
    let mut body = src.to_vec();
    body.extend_from_slice(&[10, 0, 0, 10]);
    body.extend_from_slice(&port.to_be_bytes());
    body.extend_from_slice(&3128u16.to_be_bytes());
    body.push(0xEA);
    body.extend_from_slice(&u16::try_from(vpce.len() + 1).unwrap().to_be_bytes());
    body.push(0x01);
    body.extend_from_slice(vpce.as_bytes());
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// Sends `header` then `CONNECT host:443`; the response head, empty when
/// the proxy closed the connection without one.
fn connect_through(run: &Run, header: &[u8], host: &str) -> String {
    let mut s = TcpStream::connect(run.addr()).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n");
    // A peer the proxy will not hear is closed before it has read a byte.
    if s.write_all(header)
        .and_then(|()| s.write_all(request.as_bytes()))
        .is_err()
    {
        return String::new();
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The arguments the endpoint-service stack gives portcullis, after `run`.
fn endpoint_service_args(vpc_cidr: &str) -> Vec<String> {
    let s = stack(vpc_cidr, &[("EndpointService", "true")]);
    let args = command(&s);
    assert_eq!(args[0], "run");
    args[1..].to_vec()
}

#[test]
fn portcullis_run_as_the_endpoint_service_stack_configures_it_knows_consumers_by_endpoint() {
    let policy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(POLICY);

    // The NLB's addresses are the VPC's; here the "VPC" is loopback, where
    // the test's connections come from.
    let args = endpoint_service_args("127.0.0.0/8");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = Run::start(&policy, "-", false, &args);

    // Through team-a's endpoint: team-a, recognised by the endpoint id,
    // whatever its (reused) address; pastebin.com is not on its list.
    let head = connect_through(
        &run,
        &nlb_header([10, 0, 1, 5], 40001, TEAM_A.1),
        "pastebin.com",
    );
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let rec = run.wait_stdout("the record through team-a's endpoint", |v| {
        v["client_addr"] == "10.0.1.5:40001"
    });
    let rec: Value = serde_json::from_str(&rec).unwrap();
    assert_eq!(
        (&rec["client"], &rec["identity"]),
        (&json!(TEAM_A.0), &json!(TEAM_A.1)),
        "{rec}"
    );

    // The same address through an endpoint the policy does not list: nobody.
    let head = connect_through(
        &run,
        &nlb_header([10, 0, 1, 5], 40002, "vpce-0123456789abcdef0"),
        "pastebin.com",
    );
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let rec = run.wait_stdout("the record through an unknown endpoint", |v| {
        v["client_addr"] == "10.0.1.5:40002"
    });
    let rec: Value = serde_json::from_str(&rec).unwrap();
    assert_eq!(rec["reason"], "client_not_allowed", "{rec}");
    assert!(rec["client"].is_null(), "{rec}");

    // No header: closed unanswered.
    let head = connect_through(&run, b"", "pastebin.com");
    assert!(head.is_empty(), "answered without a header: {head}");
    drop(run);

    // With the stack's real VPC CIDR, a peer outside it (loopback) may not
    // send headers at all, however well formed.
    let args = endpoint_service_args(VPC_CIDR);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = Run::start(&policy, "-", false, &args);
    let head = connect_through(
        &run,
        &nlb_header([10, 0, 1, 5], 40003, TEAM_A.1),
        "pastebin.com",
    );
    assert!(
        head.is_empty(),
        "a peer outside {VPC_CIDR} was answered: {head}"
    );
}

/// The code blocks of a Markdown page: (line, language, text), indented
/// blocks (inside list items) with their indentation removed.
fn code_blocks(doc: &str) -> Vec<(usize, String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, usize, String)> = None;
    for (n, line) in doc.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(lang)) => open = Some((n + 1, lang.to_owned(), indent, String::new())),
            (Some((_, _, i, _)), Some("")) if *i == indent => {
                let (start, lang, _, text) = open.take().unwrap();
                blocks.push((start, lang, text));
            }
            (Some((_, _, i, text)), _) => {
                text.push_str(line.get(*i..).unwrap_or_default());
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block");
    blocks
}

#[test]
fn every_yaml_and_json_snippet_of_the_identity_recipes_parses() {
    let rel = "docs/identity-recipes.md";
    let blocks = code_blocks(&read(rel));
    let mut checked = 0;
    for (line, lang, text) in &blocks {
        let parsed = match lang.as_str() {
            "yaml" => serde_saphyr::from_multiple::<Value>(text)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            "json" => serde_json::from_str::<Value>(text)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => continue,
        };
        if let Err(e) = parsed {
            panic!("{rel}:{line}: not {lang}: {e}\n{text}");
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} snippets found in {rel}");
}
