//! One file's YAML into the serde mirror, and its parser errors as diagnostics.

use serde_saphyr::Location;

use super::super::raw::RawPolicy;
use super::super::{keys, skipped};
use super::{Code, Diagnostic};

/// One file's text as the serde mirror, with the place of its first
/// content; `None` when its structure cannot be read (the reasons are in `errors`).
pub(super) fn parse(text: &str, errors: &mut Vec<Diagnostic>) -> Option<(RawPolicy, (u64, u64))> {
    let Some(top) = keys::first_content(text) else {
        errors.push(Diagnostic::at(
            Code::EmptyFile,
            1,
            1,
            "the policy file holds no YAML document, only comments or blank lines",
            Some("start with `version: 1` and an `allow:` list".to_string()),
        ));
        return None;
    };
    // One parse when all is well: unknown keys are only noticed here, and
    // located by a second reading when there are some.
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        skipped::deserialize::<_, RawPolicy>(de)
    });
    let (raw, unknown) = match parsed {
        Ok(read) => read,
        Err(e) => {
            match keys::unknown_keys(text) {
                // Not YAML at all: the plain tree does not parse either.
                Err(syntax) => errors.push(yaml_error(&syntax, Code::YamlSyntax)),
                // A value of the wrong type: the shape past it is unknown,
                // but every unknown key is still worth reporting.
                Ok(found) => {
                    errors.extend(found);
                    errors.push(yaml_error(&e, Code::InvalidValue));
                }
            }
            return None;
        }
    };
    if unknown {
        match keys::unknown_keys(text) {
            Ok(found) if !found.is_empty() => errors.extend(found),
            // The schema and serde disagree: never load a file with a key
            // serde ignored.
            _ => errors.push(Diagnostic::at(
                Code::UnknownKey,
                top.0,
                top.1,
                "the policy has a key this portcullis does not read",
                None,
            )),
        }
    }
    Some((raw, top))
}

/// Where the top-level `key` is written in `text` (its first content when
/// it cannot be found). Only asked when two files set the same key.
pub(super) fn key_at(text: &str, key: &str) -> (u64, u64) {
    let found = match serde_saphyr::from_str::<keys::Node>(text) {
        Ok(keys::Node::Map(entries)) => (entries.into_iter())
            .find(|(k, _)| k.value == key)
            .map(|(k, _)| (k.referenced.line(), k.referenced.column())),
        _ => None,
    };
    found
        .or_else(|| keys::first_content(text))
        .unwrap_or((1, 1))
}

/// A parser or type error. `fallback` is the code when the message is not
/// one of the kinds recognised here.
pub(super) fn yaml_error(e: &serde_saphyr::Error, fallback: Code) -> Diagnostic {
    let at = e.location().unwrap_or(Location::UNKNOWN);
    let message = yaml_message(e);
    let (code, hint) = if message.contains("duplicate") {
        (
            Code::DuplicateKey,
            Some("merge the two entries into one key".to_string()),
        )
    } else if message.contains("missing field") {
        (Code::MissingKey, None)
    } else if fallback == Code::InvalidValue {
        (
            Code::InvalidValue,
            Some("see docs/reference/policy.md for each key's type and values".to_string()),
        )
    } else {
        (fallback, None)
    };
    Diagnostic::new(code, at, message, hint)
}

/// A YAML parser or type error's message without the position, which
/// callers print themselves.
pub(crate) fn yaml_message(e: &serde_saphyr::Error) -> String {
    // saphyr's text is "error: line L column C: message"; we print the position ourselves.
    let full = e.without_snippet().to_string();
    let mut message = full.trim().strip_prefix("error: ").unwrap_or(full.trim());
    if message.starts_with("line ")
        && let Some((_, rest)) = message.split_once(": ")
    {
        message = rest;
    }
    if let Some((head, _)) = message.rsplit_once(" at line ") {
        message = head;
    }
    // saphyr's advice on its own options means nothing to a policy author.
    if let Some((head, _)) = message.split_once(", set DuplicateKeyPolicy") {
        message = head;
    }
    message.to_string()
}
