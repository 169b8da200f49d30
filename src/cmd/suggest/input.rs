//! Which lines of a log are audit records: unwrapping FireLens and timestamp
//! prefixes, and telling records from diagnostics and other programs' JSON.
//!
//! Accepted, one record a line:
//! - the record as the proxy writes it;
//! - a FireLens (Fluent Bit) record `{"log": "<the line>", "source": ...}`,
//!   with or without the keys Fluent Bit's JSON parser adds next to `log`:
//!   the `log` text is what the proxy wrote, so it is the one read;
//! - the record behind a timestamp (a CloudWatch Logs export to S3:
//!   `2026-11-29T17:11:43.908Z {...}`) or a timestamp and a log stream name
//!   (`aws logs tail`: `2026-11-29T17:11:43.908000+00:00 audit/... {...}`).
//!
//! A record is a JSON object whose `event` is `connection` or `request` with
//! a `decision` of `allow`, `deny` or `report`, or a `policy_reload`.
//! Anything else (text or JSON diagnostics, a panic message, another
//! program's JSON, a truncated line) is not an audit record.

use serde_json::Value;

/// Why a line is not an audit record (the header's wording).
pub(super) const NOT_JSON: &str = "not JSON";
/// A JSON value that is not an audit record.
pub(super) const OTHER_JSON: &str = "JSON but not an audit record";

/// What one non-blank line holds.
#[derive(Debug)]
pub(super) struct Line {
    /// The audit record, or why the line is none.
    pub(super) record: Result<Value, &'static str>,
    /// The line was a FireLens `{"log": ...}` record.
    pub(super) firelens: bool,
    /// The record came after a timestamp (and maybe a log stream name).
    pub(super) prefixed: bool,
}

/// Reads one line; `None` when it is blank.
pub(super) fn classify(line: &[u8]) -> Option<Line> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return None;
    }
    let (value, prefixed) = match serde_json::from_slice::<Value>(line) {
        Ok(v) => (v, false),
        Err(_) => match behind_prefix(line).and_then(|j| serde_json::from_slice(j).ok()) {
            Some(v) => (v, true),
            None => {
                return Some(Line {
                    record: Err(NOT_JSON),
                    firelens: false,
                    prefixed: false,
                });
            }
        },
    };
    let (value, firelens) = match value.get("log") {
        Some(Value::String(inner)) => match serde_json::from_str::<Value>(inner.trim()) {
            Ok(v) => (v, true),
            Err(_) => {
                return Some(Line {
                    record: Err(NOT_JSON),
                    firelens: true,
                    prefixed,
                });
            }
        },
        _ => (value, false),
    };
    let record = if is_audit_record(&value) {
        Ok(value)
    } else {
        Err(OTHER_JSON)
    };
    Some(Line {
        record,
        firelens,
        prefixed,
    })
}

fn is_audit_record(v: &Value) -> bool {
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    match field("event") {
        Some("connection" | "request") => {
            matches!(field("decision"), Some("allow" | "deny" | "report"))
        }
        Some("policy_reload") => true,
        _ => false,
    }
}

/// The JSON after `TIMESTAMP ` or `TIMESTAMP STREAM `, when the line is so.
fn behind_prefix(line: &[u8]) -> Option<&[u8]> {
    let (stamp, rest) = split_token(line)?;
    if !is_timestamp(stamp) {
        return None;
    }
    if rest.first() == Some(&b'{') {
        return Some(rest);
    }
    let (stream, rest) = split_token(rest)?;
    (!stream.contains(&b'{') && rest.first() == Some(&b'{')).then_some(rest)
}

/// The first whitespace-separated token and what follows it, trimmed.
fn split_token(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = text.iter().position(u8::is_ascii_whitespace)?;
    Some((&text[..end], text[end..].trim_ascii_start()))
}

/// `2026-11-29T17:11:43.908Z`, `2026-11-29T17:11:43.908000+00:00` and the like.
fn is_timestamp(token: &[u8]) -> bool {
    (10..=40).contains(&token.len())
        && token[..4].iter().all(u8::is_ascii_digit)
        && token[4] == b'-'
        && token
            .iter()
            .all(|b| b.is_ascii_digit() || b"-:.TZ+".contains(b))
}
