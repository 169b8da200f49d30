//! Serde mirror of the policy YAML (version 1): structure and locations only, no logic.
//!
//! Unknown keys are not serde errors here: `keys.rs` reports every one of
//! them (with a "did you mean") and the rest of the file is still checked.
//! The schema keeps `additionalProperties: false` through
//! `#[schemars(deny_unknown_fields)]`. Keys the format requires are
//! `Option`s for the same reason: `compile` reports them missing.

use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A YAML string with its location, for diagnostics.
pub type Text = Spanned<String>;

// The `schemars` attributes describe the YAML a person writes (`Spanned` is
// transparent there): `portcullis schema` and config/portcullis.schema.json.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
#[schemars(
    title = "portcullis policy",
    description = "portcullis egress policy, version 1: every destination not allowed here is denied."
)]
/// The whole policy file.
pub struct RawPolicy {
    /// Policy format version: always `1`.
    #[schemars(with = "crate::schema::Version")]
    pub version: Option<Spanned<i64>>,
    /// `enforce` denies what no rule allows; `report` allows everything but logs and counts what enforce would deny.
    #[schemars(with = "Option<RawMode>")]
    pub mode: Option<Spanned<RawMode>>,
    /// Ports a destination allows when it names none (default `[443]`).
    #[schemars(with = "Option<Vec<crate::schema::Port>>")]
    pub default_ports: Option<Spanned<Vec<Spanned<i64>>>>,
    /// Destinations every client may reach.
    #[schemars(with = "Option<Vec<RawRule>>")]
    pub allow: Option<Vec<Spanned<RawRule>>>,
    /// Destinations nobody reaches, whatever allows them (deny wins); without ports: every port.
    #[schemars(with = "Option<Vec<RawRule>>")]
    pub deny: Option<Vec<Spanned<RawRule>>>,
    /// Per-client policies by source address, certificate, token or VPC endpoint (first match wins); when present, a caller no client matches is refused.
    #[schemars(with = "Option<Vec<RawClient>>")]
    pub clients: Option<Vec<Spanned<RawClient>>>,
    /// Addresses never dialed, even when an allowed name resolves to them.
    pub ip_guard: Option<RawIpGuard>,
    /// Checks on TLS ClientHellos inside CONNECT tunnels.
    pub tls: Option<RawTls>,
    /// One line (at most 200 printable characters) added to every refusal the proxy answers, e.g. where to ask for access.
    #[schemars(with = "Option<crate::schema::DenyMessage>")]
    pub deny_message: Option<Text>,
}

/// How traffic no rule allows is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "Mode")]
pub enum RawMode {
    /// Deny what no rule allows.
    Enforce,
    /// Allow everything, but log and count what enforce would deny.
    Report,
}

/// A client: how it is recognised (every selector kind it lists must match) and the destinations it may reach.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Client")]
pub struct RawClient {
    /// Unique name: the `client` label in metrics and the audit log.
    #[schemars(with = "String", length(min = 1))]
    pub name: Option<Text>,
    /// Source addresses (CIDRs) of this client's connections.
    #[schemars(with = "Option<Vec<crate::schema::Cidr>>", length(min = 1))]
    pub sources: Option<Spanned<Vec<Text>>>,
    /// Names of the client certificate (on `--listen-tls`): a URI SAN such as `spiffe://…`, `dns:NAME` (DNS SAN) or `cn:NAME` (subject CN).
    #[schemars(
        with = "Option<Vec<crate::schema::CertificateSelector>>",
        length(min = 1)
    )]
    pub certificates: Option<Spanned<Vec<Text>>>,
    /// SHA-256 digests of proxy tokens (`sha256:` and 64 hex digits; `portcullis token` makes one), sent as the password of `Proxy-Authorization: Basic` or as `Bearer`.
    #[schemars(with = "Option<Vec<crate::schema::TokenDigest>>", length(min = 1))]
    pub tokens: Option<Spanned<Vec<Text>>>,
    /// AWS VPC endpoint ids (`vpce-…`) the connection came through (PROXY protocol v2).
    #[schemars(with = "Option<Vec<crate::schema::VpcEndpoint>>", length(min = 1))]
    pub vpc_endpoints: Option<Spanned<Vec<Text>>>,
    /// Overrides the top-level `mode` for this client.
    #[schemars(with = "Option<RawMode>")]
    pub mode: Option<Spanned<RawMode>>,
    /// Destinations this client may reach, in addition to the top-level `allow`.
    #[schemars(with = "Option<Vec<RawRule>>")]
    pub allow: Option<Vec<Spanned<RawRule>>>,
    /// Replaces the top-level `deny_message` in this client's refusals.
    #[schemars(with = "Option<crate::schema::DenyMessage>")]
    pub deny_message: Option<Text>,
}

/// An `allow` or `deny` entry: a destination, or a mapping with the
/// destination and who owns it (`dest`, `owner`, `ticket`, `expires`, `note`;
/// on allow entries also `allow_private`).
#[derive(Debug)]
pub enum RawRule {
    /// `- api.stripe.com:443`
    Plain(String),
    /// `- {dest: api.stripe.com:443, owner: payments-team, ...}`
    Meta(Box<RawRuleMeta>),
}

/// The mapping form of a rule: the destination and its metadata.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Rule")]
pub struct RawRuleMeta {
    /// The destination, written as in the plain form.
    #[schemars(with = "crate::schema::Destination")]
    pub dest: Option<Text>,
    /// Who owns the rule: a team or a person.
    #[schemars(with = "Option<String>")]
    pub owner: Option<Text>,
    /// The change request or ticket that asked for it.
    #[schemars(with = "Option<String>")]
    pub ticket: Option<Text>,
    /// The day (YYYY-MM-DD, UTC) after which `check` warns the rule has expired; it stays enforced.
    #[schemars(with = "Option<crate::schema::Day>")]
    pub expires: Option<Text>,
    /// Free text: why the rule exists.
    #[schemars(with = "Option<String>")]
    pub note: Option<Text>,
    /// Allow rules only: guarded private addresses (CIDRs in 10/8, 172.16/12, 192.168/16, 100.64/10 or fc00::/7) that this rule, and no other, may dial, such as a cloud private endpoint; never link-local, loopback, unspecified or metadata addresses.
    #[schemars(with = "Option<Vec<crate::schema::Cidr>>")]
    pub allow_private: Option<Spanned<Vec<Text>>>,
}

impl<'de> Deserialize<'de> for RawRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a destination, or a mapping with `dest` and its owner, ticket, expires and note")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRule, E> {
                Ok(RawRule::Plain(v.to_string()))
            }
            // A bare number (`- 443`) is a destination `check` refuses, not a type error.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawRule, E> {
                Ok(RawRule::Plain(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawRule, E> {
                Ok(RawRule::Plain(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawRule, E> {
                Ok(RawRule::Plain(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawRule, E> {
                Ok(RawRule::Plain(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRule, A::Error> {
                RawRuleMeta::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|m| RawRule::Meta(Box::new(m)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Addresses never dialed, even when an allowed name resolves to them.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "IpGuard")]
pub struct RawIpGuard {
    /// Never dial these: `default` (private, loopback, link-local incl. cloud metadata, ...), a list that replaces it, or `[default, ...]` to extend it.
    #[schemars(with = "Option<OneOrMany>")]
    pub blocked: Option<Spanned<OneOrMany>>,
    /// CIDRs carved out of `blocked`, e.g. an internal API.
    #[schemars(with = "Option<Vec<crate::schema::Cidr>>")]
    pub allowed: Option<Vec<Text>>,
}

/// Checks on TLS ClientHellos inside CONNECT tunnels.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "Tls")]
pub struct RawTls {
    /// In CONNECT tunnels, a TLS ClientHello's SNI must equal the CONNECT host (default `true`).
    pub sni_must_match: Option<bool>,
    /// `deny` (default) refuses ClientHellos that carry encrypted_client_hello; `allow` lets them through.
    pub ech: Option<RawEch>,
}

/// What to do with ClientHellos that carry encrypted_client_hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "Ech")]
pub enum RawEch {
    /// Refuse them (the default).
    Deny,
    /// Let them through.
    Allow,
}

/// `blocked: default` or `blocked: [default, 192.0.2.0/24]`, keeping the
/// location of every item (an untagged enum would lose them).
#[derive(Debug)]
pub struct OneOrMany(pub Vec<Text>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`default` or a list of CIDRs (which may include `default`)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                // The location comes from the enclosing `Spanned<OneOrMany>`.
                let here = serde_saphyr::Location::UNKNOWN;
                Ok(OneOrMany(vec![Spanned::new(v.to_string(), here, here)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Text>()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }
        }
        d.deserialize_any(V)
    }
}
