//! CloudFormation YAML read with its short-form intrinsics kept: `!Ref X`
//! becomes `{"Ref": "X"}`, `!GetAtt A.B` `{"Fn::GetAtt": ["A", "B"]}`,
//! `!Condition C` `{"Condition": "C"}` and any other `!Name v`
//! `{"Fn::Name": v}`, the long form CloudFormation itself uses.
//! (A plain YAML reader drops the tags, and `!Ref KmsKeyArn` would read as the
//! string "KmsKeyArn".)

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};
use serde_saphyr::Tagged;

/// The template as JSON, intrinsics in long form.
pub(crate) fn parse(text: &str, what: &str) -> Value {
    let Node(value) =
        serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{what}: not YAML: {e}"));
    value
}

/// `(logical id, resource)` for every resource of type `ty`.
pub(crate) fn resources<'a>(template: &'a Value, ty: &str) -> Vec<(&'a str, &'a Value)> {
    template["Resources"]
        .as_object()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"] == ty)
        .map(|(id, r)| (id.as_str(), r))
        .collect()
}

/// `{"Ref": name}`.
pub(crate) fn reference(name: &str) -> Value {
    json!({ "Ref": name })
}

/// A node, its tag turned into an intrinsic function.
struct Node(Value);

/// A node's value without its tag; its children are [`Node`]s again.
struct Bare(Value);

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Tagged(Bare(value), tag) = Tagged::<Bare>::deserialize(d)?;
        let Some(tag) = tag else {
            return Ok(Node(value));
        };
        let value = match tag.strip_prefix('!') {
            Some("Ref") => json!({ "Ref": value }),
            // Inside a condition, `!Condition Name` is `{"Condition": "Name"}`.
            Some("Condition") => json!({ "Condition": value }),
            Some("GetAtt") => {
                let attr = value.as_str().unwrap_or_default();
                let (resource, name) = attr
                    .split_once('.')
                    .ok_or_else(|| serde::de::Error::custom(format!("!GetAtt {attr}")))?;
                json!({ "Fn::GetAtt": [resource, name] })
            }
            Some(function) => json!({ format!("Fn::{function}"): value }),
            // A core schema tag (`!!str` and the like) says nothing CloudFormation reads.
            None => value,
        };
        Ok(Node(value))
    }
}

impl<'de> Deserialize<'de> for Bare {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BareVisitor)
    }
}

struct BareVisitor;

impl<'de> Visitor<'de> for BareVisitor {
    type Value = Bare;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML node")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Bare, E> {
        Ok(Bare(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Bare, E> {
        Ok(Bare(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Bare, E> {
        Ok(Bare(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Bare, E> {
        Ok(Bare(v.into()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Bare, E> {
        Ok(Bare(v.into()))
    }
    fn visit_string<E>(self, v: String) -> Result<Bare, E> {
        Ok(Bare(v.into()))
    }
    fn visit_unit<E>(self) -> Result<Bare, E> {
        Ok(Bare(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Bare, E> {
        Ok(Bare(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bare, A::Error> {
        let mut items = Vec::new();
        while let Some(Node(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Bare(Value::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Bare, A::Error> {
        let mut entries = Map::new();
        while let Some((key, Node(value))) = map.next_entry::<String, Node>()? {
            entries.insert(key, value);
        }
        Ok(Bare(Value::Object(entries)))
    }
}
