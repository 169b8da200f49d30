//! Reading portcullis's JSON diagnostics (stderr). Shared with the e2e bench
//! (`benches/e2e/target.rs` includes this file).

use std::net::SocketAddr;

use serde_json::Value;

/// The `addr` of a JSON `listening` line for `listener` (`explicit`, `admin`,
/// `transparent_tls`, `transparent_http`); `None` for any other line.
pub fn listening_addr(line: &str, listener: &str) -> Option<SocketAddr> {
    let v: Value = serde_json::from_str(line).ok()?;
    let field = |k: &str| {
        (v.get(k).or_else(|| v.get("fields")?.get(k)))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if field("message")? != "listening" || field("listener")? != listener {
        return None;
    }
    field("addr")?.parse().ok()
}
