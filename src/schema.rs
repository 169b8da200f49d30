//! `portcullis schema`: the JSON Schemas of the policy file, generated from the
//! serde mirror in [`crate::policy::raw`], and of the `portcullis test` cases
//! file, generated from [`crate::policy::cases`].
//!
//! The schema describes the YAML a person writes, so editors (VS Code with the
//! YAML extension, JetBrains, Neovim with yaml-language-server) can complete
//! keys and flag mistakes as one types. It checks structure only: the syntax of
//! destinations and CIDRs, shadowed rules and the like are `portcullis check`'s
//! job. The committed `config/portcullis.schema.json` and
//! `config/portcullis.test.schema.json` are this output (tests keep them
//! equal). Draft-07, which every editor integration understands.

use std::borrow::Cow;
use std::io::Write;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::cli::SchemaKind;
use crate::policy::cases::RawCase;
use crate::policy::raw::{OneOrMany, RawPolicy, RawRule, RawRuleMeta};

/// Where the published schema lives in the repository.
pub const SCHEMA_PATH: &str = "config/portcullis.schema.json";
/// Where the published schema of `portcullis test` cases files lives.
pub const CASES_SCHEMA_PATH: &str = "config/portcullis.test.schema.json";

/// The policy schema as a JSON value.
pub fn policy_schema() -> Schema {
    SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<RawPolicy>()
}

/// The schema of a `portcullis test` cases file: a list of cases.
pub fn cases_schema() -> Schema {
    let mut schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<Vec<RawCase>>();
    schema.insert("title".into(), "portcullis test cases".into());
    schema.insert(
        "description".into(),
        "Expected decisions of a portcullis policy, for `portcullis test --policy POLICY CASES`: every case must come out as it says.".into(),
    );
    schema.insert("minItems".into(), 1.into());
    schema
}

/// The policy schema as `portcullis schema` prints it: pretty JSON and a final newline.
pub fn policy_schema_json() -> String {
    pretty(&policy_schema())
}

/// The cases schema as `portcullis schema cases` prints it.
pub fn cases_schema_json() -> String {
    pretty(&cases_schema())
}

fn pretty(schema: &Schema) -> String {
    let mut text =
        serde_json::to_string_pretty(schema).expect("a schema is plain JSON and always serialises");
    text.push('\n');
    text
}

/// `portcullis schema [policy|cases]`: print the schema on `out`.
pub fn print(kind: SchemaKind, out: &mut impl Write) -> std::io::Result<i32> {
    let text = match kind {
        SchemaKind::Policy => policy_schema_json(),
        SchemaKind::Cases => cases_schema_json(),
    };
    out.write_all(text.as_bytes())?;
    Ok(crate::cmd::exit::OK)
}

/// `version: 1`.
pub struct Version;

impl JsonSchema for Version {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Version".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "integer", "const": 1 })
    }
}

/// A TCP port, 1-65535.
pub struct Port;

impl JsonSchema for Port {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Port".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "integer", "minimum": 1, "maximum": 65535 })
    }
}

/// A destination pattern: `check` validates its syntax, with line and column.
pub struct Destination;

impl JsonSchema for Destination {
    fn schema_name() -> Cow<'static, str> {
        "Destination".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "A destination: `HOST` (on default_ports), `HOST:443,80`, `HOST:8000-8100` or `HOST:*`. HOST is an exact name (`api.stripe.com`), `*.example.com` (any name below it, not the apex), a glob with `*` inside one label (`api-*.example.com`), an IPv4 range (`203.0.113.0/24`) or an IPv6 range or literal in brackets (`[2001:db8::/32]`). Quote values that start with `*` or `[`.",
            "examples": ["api.stripe.com", "*.githubusercontent.com", "registry.npmjs.org:443,80", "203.0.113.0/24:443"]
        })
    }
}

/// A calendar day, `YYYY-MM-DD`.
pub struct Day;

impl JsonSchema for Day {
    fn schema_name() -> Cow<'static, str> {
        "Day".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
            "description": "A day, YYYY-MM-DD (UTC).",
            "examples": ["2027-01-31"]
        })
    }
}

/// A rule: a destination, or a mapping with the destination and its metadata.
impl JsonSchema for RawRule {
    fn schema_name() -> Cow<'static, str> {
        "RuleEntry".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let plain = g.subschema_for::<Destination>();
        let meta = g.subschema_for::<RawRuleMeta>();
        json_schema!({ "anyOf": [plain, meta] })
    }
}

/// An IPv4 or IPv6 CIDR (or a single address).
pub struct Cidr;

impl JsonSchema for Cidr {
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "An IPv4 or IPv6 CIDR without host bits, such as `10.0.1.0/24` or `fd00:1::/64`, or a single address.",
            "examples": ["10.0.1.0/24", "fd00:1::/64"]
        })
    }
}

/// A `certificates:` selector.
pub struct CertificateSelector;

impl JsonSchema for CertificateSelector {
    fn schema_name() -> Cow<'static, str> {
        "CertificateSelector".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(dns:.+|cn:.+|[A-Za-z][A-Za-z0-9+.-]*://.+)$",
            "description": "A name of the client certificate: a URI SAN as written (`spiffe://…`), `dns:NAME` for a DNS SAN, or `cn:NAME` for the subject common name.",
            "examples": ["spiffe://acme.internal/ns/payments/sa/api", "dns:payments.internal", "cn:payments"]
        })
    }
}

/// A `tokens:` selector.
pub struct TokenDigest;

impl JsonSchema for TokenDigest {
    fn schema_name() -> Cow<'static, str> {
        "TokenDigest".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^sha256:[0-9a-fA-F]{64}$",
            "description": "`sha256:` and the hex SHA-256 of a proxy token (`portcullis token` prints one); the token itself is never written in the policy."
        })
    }
}

/// A `deny_message`: one printable line.
pub struct DenyMessage;

impl JsonSchema for DenyMessage {
    fn schema_name() -> Cow<'static, str> {
        "DenyMessage".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$",
            "description": "One line of at most 200 printable characters added to refusals, e.g. `ask for access in #egress-requests`.",
        })
    }
}

/// A `vpc_endpoints:` selector.
pub struct VpcEndpoint;

impl JsonSchema for VpcEndpoint {
    fn schema_name() -> Cow<'static, str> {
        "VpcEndpoint".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^vpce-([0-9a-fA-F]{8}|[0-9a-fA-F]{17})$",
            "description": "An AWS VPC endpoint id, from the PROXY protocol v2 header an AWS NLB sends.",
            "examples": ["vpce-0a1b2c3d4e5f67890"]
        })
    }
}

/// `blocked: default`, `blocked: 192.0.2.0/24` or a list of those.
impl JsonSchema for OneOrMany {
    fn schema_name() -> Cow<'static, str> {
        "Blocked".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let item = json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "`default` (the built-in ranges) or a CIDR such as `192.0.2.0/24`.",
            "examples": ["default", "192.0.2.0/24"]
        });
        json_schema!({
            "anyOf": [item, { "type": "array", "items": item }],
            "examples": ["default", ["default", "192.0.2.0/24"]]
        })
    }
}
