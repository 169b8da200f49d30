//! Serde mirror of the policy YAML (version 1): structure and locations only, no logic.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_saphyr::Spanned;

pub type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub version: Spanned<i64>,
    pub mode: Option<Spanned<RawMode>>,
    pub default_ports: Option<Vec<Spanned<i64>>>,
    pub allow: Option<Vec<Text>>,
    pub deny: Option<Vec<Text>>,
    pub clients: Option<Vec<RawClient>>,
    pub ip_guard: Option<RawIpGuard>,
    pub tls: Option<RawTls>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawMode {
    Enforce,
    Report,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub name: Text,
    pub sources: Spanned<Vec<Text>>,
    pub mode: Option<Spanned<RawMode>>,
    pub allow: Option<Vec<Text>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpGuard {
    pub blocked: Option<Spanned<OneOrMany>>,
    pub allowed: Option<Vec<Text>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub sni_must_match: Option<bool>,
    pub ech: Option<RawEch>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawEch {
    Deny,
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
