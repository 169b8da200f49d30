//! Where the shared egress service's policy comes from: the bucket the
//! template creates with `CreatePolicyBucket` (versioned, private, encrypted,
//! TLS only, written by the publisher role alone), judged by evaluating its
//! bucket policy for the principals that matter; the existing-bucket path
//! left as it was; the publishing step that stores the commit in the object's
//! metadata, and the sync containers that log it back.

use serde_json::{Value, json};

use crate::cfn::{self, reference};
use crate::iam::{Request, Verdict, judge, request, strings};
use crate::privatelink::{VPC_CIDR, required, resource, stack};
use crate::stack::refusals;
use crate::{SIDECAR, read, sidecar, template};

const WORKFLOW: &str = "deploy/github-actions/policy-check.yml";
const BUCKET: &str = "acme-egress-policy";
const OBJECT: &str = "arn:aws:s3:::acme-egress-policy/egress/portcullis.yaml";
const PUBLISHER: &str = "arn:aws:iam::123456789012:role/egress-policy-publisher";
const KMS_KEY: &str = "arn:aws:kms:eu-west-1:123456789012:key/0a1b2c3d-0000-4000-8000-000000000001";

/// Principals that must not write the policy.
const OTHERS: [&str; 5] = [
    // The tasks' own role.
    "arn:aws:iam::123456789012:role/egress-TaskRole-1A2B3C4D5E6F",
    // The account's root and an administrator.
    "arn:aws:iam::123456789012:root",
    "arn:aws:iam::123456789012:role/Admin",
    // The publisher's name in another account, or under another path.
    "arn:aws:iam::999999999999:role/egress-policy-publisher",
    "arn:aws:iam::123456789012:role/ci/egress-policy-publisher",
];

/// Why CloudFormation would refuse shared-egress.yaml with `more` parameters.
fn refused(more: &[(&str, &str)]) -> Vec<String> {
    let required = required(VPC_CIDR);
    let mut given: Vec<(&str, &str)> = required.iter().map(|(k, v)| (*k, v.as_str())).collect();
    given.extend_from_slice(more);
    refusals(&template(), &given)
}

/// The stack that creates its policy bucket, with `more` parameters.
fn creating(more: &[(&str, &str)]) -> Value {
    let mut given = vec![
        ("CreatePolicyBucket", "true"),
        ("PolicyPublisherRoleArn", PUBLISHER),
    ];
    given.extend_from_slice(more);
    stack(VPC_CIDR, &given)
}

// ------------------------------------------------------------ the tests ---

#[test]
fn a_created_policy_bucket_is_versioned_private_encrypted_and_kept() {
    let t = template();
    assert_eq!(t["Parameters"]["CreatePolicyBucket"]["Default"], "false");
    assert_eq!(
        t["Parameters"]["CreatePolicyBucket"]["AllowedValues"],
        json!(["false", "true"])
    );

    for (kms, algorithm) in [(None, "AES256"), (Some(KMS_KEY), "aws:kms")] {
        let what = format!("KmsKeyArn={kms:?}");
        let more: Vec<(&str, &str)> = kms.map(|k| ("KmsKeyArn", k)).into_iter().collect();
        let s = creating(&more);
        let buckets = cfn::resources(&s, "AWS::S3::Bucket");
        let [(id, bucket)] = buckets.as_slice() else {
            panic!("{what}: one bucket: {buckets:?}")
        };
        let props = &bucket["Properties"];
        assert_eq!(props["BucketName"], BUCKET, "{what}: named PolicyBucket");
        assert_eq!(
            props["VersioningConfiguration"]["Status"], "Enabled",
            "{what}"
        );
        let block = &props["PublicAccessBlockConfiguration"];
        for setting in [
            "BlockPublicAcls",
            "BlockPublicPolicy",
            "IgnorePublicAcls",
            "RestrictPublicBuckets",
        ] {
            assert_eq!(block[setting], true, "{what}: {setting}");
        }
        assert_eq!(
            props["OwnershipControls"]["Rules"],
            json!([{ "ObjectOwnership": "BucketOwnerEnforced" }]),
            "{what}: no ACLs"
        );
        let rules = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            .as_array()
            .unwrap();
        let [rule] = rules.as_slice() else {
            panic!("{what}: {rules:?}")
        };
        let default = &rule["ServerSideEncryptionByDefault"];
        assert_eq!(default["SSEAlgorithm"], algorithm, "{what}");
        assert_eq!(
            default["KMSMasterKeyID"],
            kms.map_or(Value::Null, Value::from),
            "{what}: encrypted with KmsKeyArn exactly when it is given"
        );
        // The versions are the evidence of which policy ran when.
        assert_eq!(bucket["DeletionPolicy"], "Retain", "{what}");
        assert_eq!(bucket["UpdateReplacePolicy"], "Retain", "{what}");

        let policies = cfn::resources(&s, "AWS::S3::BucketPolicy");
        let [(_, policy)] = policies.as_slice() else {
            panic!("{what}: one bucket policy: {policies:?}")
        };
        assert_eq!(policy["Properties"]["Bucket"], reference(id), "{what}");
    }
}

#[test]
fn only_the_publisher_role_writes_the_created_bucket_and_only_over_tls() {
    let s = creating(&[]);
    let policies = cfn::resources(&s, "AWS::S3::BucketPolicy");
    let [(_, policy)] = policies.as_slice() else {
        panic!("one bucket policy: {policies:?}")
    };
    let policy = &policy["Properties"]["PolicyDocument"];
    let other_key = "arn:aws:s3:::acme-egress-policy/another.yaml";

    // The publisher writes (the bucket policy itself allows it the key) and
    // may delete the current object (versioning keeps it).
    assert_eq!(
        judge(policy, &request(PUBLISHER, "s3:PutObject", OBJECT)),
        Verdict::Allowed
    );
    assert_ne!(
        judge(policy, &request(PUBLISHER, "s3:DeleteObject", OBJECT)),
        Verdict::Denied
    );
    // Nobody else writes or deletes, whatever their IAM policies say.
    for who in OTHERS {
        for action in ["s3:PutObject", "s3:DeleteObject"] {
            for object in [OBJECT, other_key] {
                assert_eq!(
                    judge(policy, &request(who, action, object)),
                    Verdict::Denied,
                    "{who} {action} {object}"
                );
            }
        }
    }
    // Nobody, the publisher included, deletes a version.
    for who in OTHERS.iter().chain([&PUBLISHER]) {
        assert_eq!(
            judge(policy, &request(who, "s3:DeleteObjectVersion", OBJECT)),
            Verdict::Denied,
            "{who}"
        );
    }
    // Reading is left to IAM (the task role's s3:GetObject)...
    assert_eq!(
        judge(policy, &request(OTHERS[0], "s3:GetObject", OBJECT)),
        Verdict::Silent
    );
    // ... and nothing at all goes over plain HTTP.
    for (who, action) in [(PUBLISHER, "s3:PutObject"), (OTHERS[0], "s3:GetObject")] {
        let plain = Request {
            tls: false,
            ..request(who, action, OBJECT)
        };
        assert_eq!(judge(policy, &plain), Verdict::Denied, "{who} {action}");
    }
    // The publisher is PolicyPublisherRoleArn's value, matched on the
    // principal's ARN: the only principal any statement allows.
    let allowed: Vec<&Value> = (policy["Statement"].as_array().unwrap().iter())
        .filter(|s| s["Effect"] == "Allow")
        .collect();
    for s in &allowed {
        assert_eq!(s["Principal"], json!({ "AWS": PUBLISHER }));
    }

    // Without a publisher the stack is refused rather than made unwritable.
    let why = refused(&[("CreatePolicyBucket", "true")]);
    assert!(
        why.iter().any(|r| r.contains("PolicyPublisherRoleArn")),
        "{why:?}"
    );
}

/// The sync container's `POLICY_BUCKET`.
fn synced_bucket(stack: &Value) -> Value {
    let containers = resource(stack, "TaskDefinition")["Properties"]["ContainerDefinitions"]
        .as_array()
        .unwrap();
    let sync = containers
        .iter()
        .find(|c| c["Name"] == "policy-sync")
        .expect("a policy-sync container");
    let env = sync["Environment"].as_array().unwrap();
    env.iter()
        .find(|e| e["Name"] == "POLICY_BUCKET")
        .expect("POLICY_BUCKET")["Value"]
        .clone()
}

/// The task role's statements, every policy together.
fn task_role_statements(stack: &Value) -> Vec<Value> {
    (resource(stack, "TaskRole")["Properties"]["Policies"]
        .as_array()
        .unwrap()
        .iter())
    .flat_map(|p| p["PolicyDocument"]["Statement"].as_array().unwrap().clone())
    .collect()
}

fn allows(statements: &[Value], action: &str) -> Vec<Value> {
    statements
        .iter()
        .filter(|s| s["Effect"] == "Allow" && strings(&s["Action"]).contains(&action))
        .cloned()
        .collect()
}

#[test]
fn the_tasks_read_the_policy_from_the_bucket_either_way() {
    for create in ["false", "true"] {
        for kms in [None, Some(KMS_KEY)] {
            let what = format!("CreatePolicyBucket={create} KmsKeyArn={kms:?}");
            let mut more = vec![("CreatePolicyBucket", create)];
            if create == "true" {
                more.push(("PolicyPublisherRoleArn", PUBLISHER));
            }
            more.extend(kms.map(|k| ("KmsKeyArn", k)));
            let s = stack(VPC_CIDR, &more);

            // The sync container reads the bucket: the one made here (so the
            // tasks start after it), else the one named.
            let bucket = synced_bucket(&s);
            if create == "true" {
                assert_eq!(bucket, reference("PolicyStore"), "{what}");
                assert_eq!(
                    resource(&s, "PolicyStore")["Properties"]["BucketName"],
                    BUCKET
                );
            } else {
                assert_eq!(bucket, BUCKET, "{what}");
                assert!(cfn::resources(&s, "AWS::S3::Bucket").is_empty(), "{what}");
                assert!(
                    cfn::resources(&s, "AWS::S3::BucketPolicy").is_empty(),
                    "{what}"
                );
            }

            // Read-only: GetObject on the policy's key, no write of any kind.
            let statements = task_role_statements(&s);
            let reads = allows(&statements, "s3:GetObject");
            let [read] = reads.as_slice() else {
                panic!("{what}: {reads:?}")
            };
            assert_eq!(read["Resource"], OBJECT, "{what}");
            for st in &statements {
                for action in strings(&st["Action"]) {
                    assert!(
                        !action.starts_with("s3:") || action == "s3:GetObject",
                        "{what}: the tasks may {action}"
                    );
                }
            }
            // A bucket this stack encrypts with the key: the tasks decrypt
            // through S3, and only then.
            let decrypts = allows(&statements, "kms:Decrypt");
            if create == "true" && kms.is_some() {
                let [d] = decrypts.as_slice() else {
                    panic!("{what}: {decrypts:?}")
                };
                assert_eq!(d["Resource"], KMS_KEY, "{what}");
                assert_eq!(
                    d["Condition"],
                    json!({ "StringEquals": { "kms:ViaService": "s3.eu-west-1.amazonaws.com" } }),
                    "{what}"
                );
            } else {
                assert!(decrypts.is_empty(), "{what}: {decrypts:?}");
            }

            assert_eq!(
                s["Outputs"]["PolicyS3Uri"]["Value"],
                "s3://acme-egress-policy/egress/portcullis.yaml",
                "{what}"
            );
        }
    }
    // Existing stacks need no new parameter.
    assert_eq!(
        template()["Parameters"]["PolicyPublisherRoleArn"]["Default"],
        ""
    );
    assert_eq!(refused(&[]), Vec::<String>::new());
}

// -------------------------------------------- publishing and syncing ---

/// The sync container's script in the template and in the sidecar task.
fn sync_scripts() -> [String; 2] {
    let t = template();
    let containers = t["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
        .as_array()
        .unwrap();
    let cfn_sync = containers
        .iter()
        .find(|c| c["Name"] == "policy-sync")
        .unwrap();
    let task = sidecar();
    let sidecar_sync = (task["containerDefinitions"].as_array().unwrap().iter())
        .find(|c| c["name"] == "policy-sync")
        .unwrap_or_else(|| panic!("{SIDECAR}: no policy-sync"));
    [
        cfn_sync["Command"][0].as_str().unwrap().to_owned(),
        sidecar_sync["command"][0].as_str().unwrap().to_owned(),
    ]
}

#[test]
fn publishing_stores_the_commit_and_the_sync_containers_log_it() {
    let workflow = cfn::parse(&read(WORKFLOW), WORKFLOW);
    let steps = workflow["jobs"]["publish"]["steps"]
        .as_array()
        .expect("a publish job");
    let uploads: Vec<&str> = steps
        .iter()
        .filter_map(|s| s["run"].as_str())
        .filter(|run| run.contains("s3 cp") || run.contains("put-object"))
        .collect();
    let [upload] = uploads.as_slice() else {
        panic!("one upload step: {uploads:?}")
    };
    // Every upload command (a file: `s3 cp`; a directory: `s3 sync`) carries
    // the metadata, and the metadata names the commit.
    let commands: Vec<&str> = (upload.lines())
        .filter(|l| l.contains("aws s3 cp") || l.contains("aws s3 sync"))
        .collect();
    assert!(!commands.is_empty(), "{upload}");
    for command in commands {
        assert!(command.contains("--metadata"), "no --metadata: {command}");
    }
    assert!(
        upload.contains("\"git-commit=$GITHUB_SHA,") || upload.contains(",git-commit=$GITHUB_SHA"),
        "{upload}"
    );

    // The sync containers read the same key back and log it with the
    // version they fetched; both run one script.
    let [cfn_script, sidecar_script] = sync_scripts();
    assert_eq!(
        cfn_script.replace("sleep 30", "sleep \"$POLICY_REFRESH_SECONDS\""),
        sidecar_script,
        "the template and the sidecar sync alike"
    );
    for fetched in ["ETag", "VersionId", "Metadata.\"git-commit\""] {
        assert!(
            cfn_script.contains(fetched),
            "the sync does not log {fetched}"
        );
    }
    assert!(cfn_script.contains("git-commit ${3:-None}"), "{cfn_script}");
}
