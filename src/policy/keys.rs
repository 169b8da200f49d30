//! Unknown keys at every level, each with a "did you mean" hint. `compile`
//! learns that there are some during its one parse (`skipped.rs`); then
//! the YAML is read again as a plain tree and walked alongside the policy's
//! JSON Schema, for each key's place and hint. The keys checked are always
//! the keys the serde mirror in `raw.rs` declares.

use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize;
use serde::de::{self, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::diagnostic::{Code, Diagnostic};

/// A YAML document reduced to what key checking needs: mappings with their
/// keys' locations, sequences, and scalars.
#[derive(Debug)]
pub(crate) enum Node {
    /// No value: an empty document, `~` or `null`.
    Null,
    Scalar,
    Seq(Vec<Node>),
    /// Only keys carry their location: a span per value would double the
    /// cost of this pass, which every load and reload makes.
    Map(Vec<(Spanned<String>, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Node, A::Error> {
        // A tagged value (`!Tag value`): its content is what the keys sit in.
        let (_, variant): (de::IgnoredAny, _) = data.variant()?;
        variant.newtype_variant::<Node>()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

/// The policy schema as JSON, built once.
fn policy_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| crate::schema::policy_schema().to_value())
}

/// Every unknown key of `text`, with its location and a hint, found by
/// reading the text again as a plain tree and walking it alongside the
/// schema. Only called when a parse has already seen unknown keys, or has
/// failed, so that a policy without them is parsed once. `Err` when the text
/// is not YAML at all.
pub(crate) fn unknown_keys(text: &str) -> Result<Vec<Diagnostic>, serde_saphyr::Error> {
    let root = policy_schema();
    let tree: Node = serde_saphyr::from_str(text)?;
    let mut out = Vec::new();
    walk(&tree, &[root], root, "", &mut out);
    Ok(out)
}

/// Where the first line that is neither blank nor a comment starts; `None`
/// when the text holds no YAML content at all.
pub(crate) fn first_content(text: &str) -> Option<(u64, u64)> {
    text.lines().enumerate().find_map(|(i, l)| {
        let t = l.trim_start();
        (!t.is_empty() && !t.starts_with('#') && t != "---")
            .then(|| (i as u64 + 1, (l.len() - t.len()) as u64 + 1))
    })
}

/// Checks `node` against the schemas it may match (the branches of an
/// `anyOf`, after `$ref`s are followed).
fn walk(node: &Node, schemas: &[&Value], root: &Value, path: &str, out: &mut Vec<Diagnostic>) {
    let alternatives: Vec<&Value> = schemas.iter().flat_map(|s| resolve(s, root)).collect();
    match node {
        Node::Null | Node::Scalar => {}
        Node::Seq(items) => {
            let item_schemas: Vec<&Value> =
                alternatives.iter().filter_map(|s| s.get("items")).collect();
            if item_schemas.is_empty() {
                return;
            }
            for (i, item) in items.iter().enumerate() {
                walk(item, &item_schemas, root, &format!("{path}[{i}]"), out);
            }
        }
        Node::Map(entries) => {
            let Some(objects) = closed_objects(&alternatives) else {
                return;
            };
            let known: Vec<&str> = objects
                .iter()
                .filter_map(|s| s["properties"].as_object())
                .flat_map(|p| p.keys().map(String::as_str))
                .collect();
            for (key, value) in entries {
                let sub: Vec<&Value> = objects
                    .iter()
                    .filter_map(|s| s["properties"].get(&key.value))
                    .collect();
                if sub.is_empty() {
                    out.push(unknown_key(key, path, &known, root));
                    continue;
                }
                let child = if path.is_empty() {
                    key.value.clone()
                } else {
                    format!("{path}.{}", key.value)
                };
                walk(value, &sub, root, &child, out);
            }
        }
    }
}

/// The object schemas among `alternatives` when every one of them refuses
/// keys it does not declare; `None` when a mapping is not expected here (a
/// type error serde reports) or any key would do.
fn closed_objects<'a>(alternatives: &[&'a Value]) -> Option<Vec<&'a Value>> {
    let objects: Vec<&Value> = alternatives
        .iter()
        .copied()
        .filter(|s| s.get("properties").is_some())
        .collect();
    let closed = !objects.is_empty()
        && objects
            .iter()
            .all(|s| s.get("additionalProperties") == Some(&Value::Bool(false)));
    closed.then_some(objects)
}

fn unknown_key(key: &Spanned<String>, path: &str, known: &[&str], root: &Value) -> Diagnostic {
    let place = if path.is_empty() {
        "at the top level".to_string()
    } else {
        format!("in `{path}`")
    };
    let hint = match closest(&key.value, known.iter().copied()) {
        Some(k) => format!("did you mean `{k}`?"),
        None => match elsewhere(&key.value, root) {
            Some(other) => format!("`{}` is a key of {other}; check the indentation", key.value),
            None => format!("the keys here are {}", list(known)),
        },
    };
    Diagnostic::new(
        Code::UnknownKey,
        key.referenced,
        format!("unknown key `{}` {place}", key.value),
        hint,
    )
}

fn list(keys: &[&str]) -> String {
    let mut keys: Vec<&str> = keys.to_vec();
    keys.sort_unstable();
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where else in the format `key` is a key ("the top level", "`clients[]`"),
/// for a key written at the wrong indentation.
fn elsewhere(key: &str, root: &Value) -> Option<String> {
    fn search(schema: &Value, root: &Value, path: &str, key: &str, depth: u8) -> Option<String> {
        if depth > 8 {
            return None;
        }
        for s in resolve(schema, root) {
            if let Some(items) = s.get("items")
                && let Some(found) = search(items, root, &format!("{path}[]"), key, depth + 1)
            {
                return Some(found);
            }
            let Some(props) = s.get("properties").and_then(Value::as_object) else {
                continue;
            };
            if !path.is_empty() && props.contains_key(key) {
                return Some(format!("`{path}`"));
            }
            for (name, sub) in props {
                let child = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                if let Some(found) = search(sub, root, &child, key, depth + 1) {
                    return Some(found);
                }
            }
        }
        None
    }
    if root["properties"].get(key).is_some() {
        return Some("the top level".to_string());
    }
    search(root, root, "", key, 0)
}

/// `schema` with `$ref`s followed and `anyOf`/`oneOf`/`allOf` flattened into
/// its alternatives.
fn resolve<'a>(schema: &'a Value, root: &'a Value) -> Vec<&'a Value> {
    fn go<'a>(s: &'a Value, root: &'a Value, out: &mut Vec<&'a Value>, depth: u8) {
        if depth > 8 {
            return;
        }
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            if let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p)) {
                go(target, root, out, depth + 1);
            }
            return;
        }
        let mut branched = false;
        for key in ["anyOf", "oneOf", "allOf"] {
            for branch in s.get(key).and_then(Value::as_array).into_iter().flatten() {
                branched = true;
                go(branch, root, out, depth + 1);
            }
        }
        if !branched {
            out.push(s);
        }
    }
    let mut out = Vec::new();
    go(schema, root, &mut out, 0);
    out
}

/// The candidate closest to `word`, if one is close enough to be a likely
/// misspelling: case, `-` for `_`, a few edits, or a prefix of four or more letters.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let word_n = norm(word);
    let mut best: Option<(usize, &'a str)> = None;
    for cand in candidates {
        let cand_n = norm(cand);
        let shorter = word_n.len().min(cand_n.len());
        let budget = match shorter {
            0..=4 => 1,
            5..=8 => 2,
            _ => 3,
        };
        let prefix = shorter >= 4 && (cand_n.starts_with(&word_n) || word_n.starts_with(&cand_n));
        let distance = strsim::damerau_levenshtein(&word_n, &cand_n);
        let score = if distance <= budget {
            distance
        } else if prefix {
            budget + 1
        } else {
            continue;
        };
        if best.is_none_or(|(s, _)| score < s) {
            best = Some((score, cand));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<(u64, u64, String, Option<String>)> {
        unknown_keys(text)
            .unwrap()
            .into_iter()
            .map(|d| (d.line, d.column, d.message, d.hint))
            .collect()
    }

    #[test]
    fn every_unknown_key_at_every_level_with_its_suggestion() {
        let found = keys(
            "version: 1\nalow: [a.example]\nclients:\n  - name: a\n    sourcs: [10.0.0.0/8]\nip_guard:\n  allow: []\ntls:\n  sni-must-match: true\n",
        );
        let want = [
            (2, 1, "`alow` at the top level", "`allow`"),
            (5, 5, "`sourcs` in `clients[0]`", "`sources`"),
            (7, 3, "`allow` in `ip_guard`", "`allowed`"),
            (9, 3, "`sni-must-match` in `tls`", "`sni_must_match`"),
        ];
        assert_eq!(found.len(), want.len(), "{found:?}");
        for ((line, col, msg, hint), (wl, wc, wmsg, whint)) in found.iter().zip(want) {
            assert_eq!((*line, *col), (wl, wc), "{msg}");
            assert!(msg.contains(wmsg), "{msg}");
            assert!(hint.as_deref().unwrap().contains(whint), "{hint:?}");
        }
    }

    #[test]
    fn a_key_at_the_wrong_level_says_where_it_belongs() {
        let found = keys("version: 1\nsources: [10.0.0.0/8]\n");
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].3.as_deref(),
            Some("`sources` is a key of `clients[]`; check the indentation")
        );
        let found = keys("version: 1\nzzz: 1\n");
        assert!(
            found[0]
                .3
                .as_deref()
                .unwrap()
                .starts_with("the keys here are `allow`, ")
        );
    }

    #[test]
    fn known_keys_and_values_of_the_wrong_type_are_left_alone() {
        assert!(
            keys("version: 1\nallow: {a: 1}\nclients: oops\nip_guard: {blocked: default}\n")
                .is_empty()
        );
    }

    #[test]
    fn closest_takes_typos_not_unrelated_words() {
        let c = ["allow", "deny", "default_ports", "clients"];
        assert_eq!(closest("alow", c), Some("allow"));
        assert_eq!(closest("DENY", c), Some("deny"));
        assert_eq!(closest("default-ports", c), Some("default_ports"));
        assert_eq!(closest("default", c), Some("default_ports"));
        assert_eq!(closest("client", c), Some("clients"));
        assert_eq!(closest("owner", c), None);
        assert_eq!(closest("x", c), None);
    }
}
