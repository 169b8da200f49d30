//! The policy in force and the last reload attempt, kept as values swapped whole: what
//! `policy_info`, the last-reload gauges and `/status` report, read without a lock.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::policy::{Mode, Policy};
use crate::state::Snapshot;
use crate::telemetry::{ReloadResult, label_enum};

label_enum! {
    /// The mode a whole policy runs in, for `policy_info` and `/status`.
    PolicyMode {
        /// Every source is enforced.
        Enforce => "enforce",
        /// Every source is reported, none refused by the rules.
        Report => "report",
        /// Some sources are enforced, others reported.
        Mixed => "mixed",
    }
}

impl PolicyMode {
    /// `mixed` when some client's mode differs from the others' or from the top-level
    /// mode (which a source no client lists gets).
    pub(crate) fn of(policy: &Policy) -> PolicyMode {
        let clients = policy.clients.iter().flatten().map(|c| c.mode);
        match (policy.mode, clients.into_iter().all(|m| m == policy.mode)) {
            (_, false) => PolicyMode::Mixed,
            (Mode::Enforce, true) => PolicyMode::Enforce,
            (Mode::Report, true) => PolicyMode::Report,
        }
    }
}

/// One client's share of the policy in force (`default`: the top-level rules and mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientStatus {
    pub name: String,
    pub mode: Mode,
    /// Rules that apply to it, as `policy_rules` counts them.
    pub rules: usize,
}

/// The policy in force, summed up once when it went live.
#[derive(Debug)]
pub(crate) struct LivePolicy {
    pub generation: u64,
    pub sha256: String,
    pub mode: PolicyMode,
    pub clients: Vec<ClientStatus>,
    pub loaded_at: SystemTime,
}

impl LivePolicy {
    fn of(snap: &Snapshot, loaded_at: SystemTime) -> LivePolicy {
        let policy = &snap.policy;
        let modes =
            std::iter::once(policy.mode).chain(policy.clients.iter().flatten().map(|c| c.mode));
        let clients = (policy.rule_counts().into_iter().zip(modes))
            .map(|((name, rules), mode)| ClientStatus { name, mode, rules })
            .collect();
        LivePolicy {
            generation: snap.generation,
            sha256: snap.sha256.to_string(),
            mode: PolicyMode::of(policy),
            clients,
            loaded_at,
        }
    }
}

/// How the last reload attempt ended. The load at start counts as a successful one.
#[derive(Debug, Clone)]
pub(crate) struct LastReload {
    pub result: ReloadResult,
    pub at: SystemTime,
    /// Why it failed, as logged; `None` unless `result` is `error`.
    pub error: Option<String>,
    /// When the last successful attempt ended: a load, or a check that found the
    /// content unchanged.
    pub succeeded_at: SystemTime,
}

/// The policy in force and the last reload, each swapped whole, so that a reader
/// (`/status`, a scrape) never waits for a reload nor sees half of one.
#[derive(Debug, Default)]
pub(crate) struct PolicyStatus {
    live: ArcSwapOption<LivePolicy>,
    last: ArcSwapOption<LastReload>,
}

impl PolicyStatus {
    /// The policy in force; `None` before the first load.
    pub(crate) fn live(&self) -> Option<Arc<LivePolicy>> {
        self.live.load_full()
    }

    /// The last reload attempt; `None` before the first load.
    pub(crate) fn last_reload(&self) -> Option<Arc<LastReload>> {
        self.last.load_full()
    }

    /// `snap` went live at `at`; the first one (at start) is also the first successful attempt.
    pub(super) fn went_live(&self, snap: &Snapshot, at: SystemTime) {
        self.live.store(Some(Arc::new(LivePolicy::of(snap, at))));
        if self.last.load().is_none() {
            self.attempted(ReloadResult::Ok, None, at);
        }
    }

    /// A reload attempt ended with `result` at `at`.
    pub(super) fn attempted(&self, result: ReloadResult, error: Option<String>, at: SystemTime) {
        let succeeded_at = match (result, self.last.load().as_deref()) {
            (ReloadResult::Error, Some(last)) => last.succeeded_at,
            // Never before the start's load, which always comes first.
            (ReloadResult::Error, None) => UNIX_EPOCH,
            (ReloadResult::Ok | ReloadResult::Unchanged, _) => at,
        };
        self.last.store(Some(Arc::new(LastReload {
            result,
            at,
            error,
            succeeded_at,
        })));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    sha256: String,
    mode: PolicyMode,
}

/// `policy_info` and the last-reload gauges, computed from [`PolicyStatus`] at scrape
/// time: a reload replaces the `policy_info` series whole, never leaving the old one.
#[derive(Debug)]
pub(super) struct PolicyCollector(pub(super) Arc<PolicyStatus>);

impl Collector for PolicyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        if let Some(live) = self.0.live() {
            let info = ConstGauge::new(1);
            let mut family = encoder.encode_descriptor(
                "policy_info",
                "The policy in force: its SHA-256 and mode, as labels (always 1)",
                None,
                info.metric_type(),
            )?;
            let labels = InfoLabels {
                sha256: live.sha256.clone(),
                mode: live.mode,
            };
            info.encode(family.encode_family(&labels)?)?;
        }
        if let Some(last) = self.0.last_reload() {
            let ok = ConstGauge::new(i64::from(last.result != ReloadResult::Error));
            ok.encode(encoder.encode_descriptor(
                "policy_last_reload_successful",
                "1 when the last reload attempt loaded the policy or found it unchanged, 0 when it failed",
                None,
                ok.metric_type(),
            )?)?;
            let secs = last.succeeded_at.duration_since(UNIX_EPOCH);
            let at = ConstGauge::new(secs.map_or(0.0, |d| d.as_secs_f64()));
            at.encode(encoder.encode_descriptor(
                "policy_last_reload_success_timestamp",
                "When the last successful reload attempt (or the load at start) ended, in seconds since the Unix epoch",
                Some(&Unit::Seconds),
                at.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_is_mixed_when_some_source_gets_another_mode() {
        let client = |mode: &str| {
            format!("  - name: c{mode}\n    sources: [10.0.0.0/8]\n    mode: {mode}\n")
        };
        let cases = [
            (
                "enforce, no clients",
                "enforce",
                String::new(),
                PolicyMode::Enforce,
            ),
            (
                "report, no clients",
                "report",
                String::new(),
                PolicyMode::Report,
            ),
            (
                "clients agree",
                "report",
                client("report"),
                PolicyMode::Report,
            ),
            (
                "a client reports",
                "enforce",
                client("report"),
                PolicyMode::Mixed,
            ),
            (
                "a client enforces",
                "report",
                client("enforce"),
                PolicyMode::Mixed,
            ),
        ];
        for (name, top, clients, want) in cases {
            let clients = match clients.is_empty() {
                true => String::new(),
                false => format!("clients:\n{clients}"),
            };
            let yaml = format!("version: 1\nmode: {top}\nallow: [a.example]\n{clients}");
            let compiled = Policy::from_yaml(&yaml).expect("a valid policy");
            assert_eq!(PolicyMode::of(&compiled.policy), want, "{name}");
        }
    }
}
