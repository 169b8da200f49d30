//! `GET /status`: what this process is and runs, as JSON, built from snapshots and
//! atomics only, so it answers while a reload, a drain or a stalled log sink is under way.

use std::net::SocketAddr;
use std::time::SystemTime;

use serde::Serialize;

use super::Admin;
use crate::telemetry::ReloadResult;
use crate::telemetry::metrics::{LastReload, LivePolicy, PolicyMode};

#[derive(Serialize)]
struct Status<'a> {
    version: &'static str,
    /// Which proxy this is: `--instance-id`, the ECS task ARN, or the host name.
    instance: &'a str,
    policy: Option<PolicyJson<'a>>,
    last_reload: Option<LastReloadJson<'a>>,
    listeners: Vec<ListenerJson>,
    draining: bool,
}

#[derive(Serialize)]
struct PolicyJson<'a> {
    path: String,
    sha256: &'a str,
    generation: u64,
    loaded_at: String,
    mode: PolicyMode,
    clients: Vec<ClientJson<'a>>,
}

#[derive(Serialize)]
struct ClientJson<'a> {
    name: &'a str,
    mode: &'static str,
    rules: usize,
}

#[derive(Serialize)]
struct LastReloadJson<'a> {
    result: ReloadResult,
    at: String,
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct ListenerJson {
    kind: &'static str,
    addr: SocketAddr,
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// The `/status` document, pretty-printed for people who `curl` it.
pub(super) fn render(admin: &Admin) -> String {
    let status = admin.metrics.policy_status();
    let (live, last) = (status.live(), status.last_reload());
    let doc = Status {
        version: env!("CARGO_PKG_VERSION"),
        instance: &admin.instance,
        policy: live.as_deref().map(|live| policy(admin, live)),
        last_reload: last.as_deref().map(last_reload),
        listeners: (admin.listeners.iter())
            .map(|&(kind, addr)| ListenerJson { kind, addr })
            .collect(),
        draining: admin.lifecycle.draining.is_cancelled(),
    };
    // Plain data with string keys: serialising cannot fail.
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

fn policy<'a>(admin: &Admin, live: &'a LivePolicy) -> PolicyJson<'a> {
    PolicyJson {
        path: admin.policy_path.display().to_string(),
        sha256: &live.sha256,
        generation: live.generation,
        loaded_at: rfc3339(live.loaded_at),
        mode: live.mode,
        clients: (live.clients.iter())
            .map(|c| ClientJson {
                name: &c.name,
                mode: c.mode.as_str(),
                rules: c.rules,
            })
            .collect(),
    }
}

fn last_reload(last: &LastReload) -> LastReloadJson<'_> {
    LastReloadJson {
        result: last.result,
        at: rfc3339(last.at),
        error: last.error.as_deref(),
    }
}
