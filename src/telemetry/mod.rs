//! Telemetry on the side of the data path: Prometheus metrics and the JSON-lines audit log.
//!
//! The label vocabulary shared by both (which listener; how the core's verdicts and reasons
//! are spelt) lives here so a metric label and an audit field can never spell the same thing two ways.

pub(crate) mod audit;
pub(crate) mod destination;
pub mod diag;
pub(crate) mod exchange;
pub(crate) mod instance;
pub(crate) mod metrics;

use std::fmt;
use std::sync::Arc;

use audit::{AuditLog, AuditRecord};
use exchange::Finished;
use metrics::Metrics;

use crate::policy::{Reason, Verdict};

/// Where every exchange is reported: the metrics registry and the audit log.
#[derive(Clone)]
pub struct Telemetry {
    /// The Prometheus registry.
    pub metrics: Arc<Metrics>,
    /// The audit log writer.
    pub audit: Arc<AuditLog>,
    /// Which proxy this is, stamped in every audit record (see [`instance`]).
    pub instance: Arc<str>,
}

impl Telemetry {
    /// Counts a finished exchange and writes its audit record.
    pub fn record(&self, finished: Finished) {
        finished.record(&self.metrics, &self.audit);
    }

    /// Writes a record that is not an exchange's (`policy_reload`), stamped with the instance.
    pub fn write_audit(&self, mut record: AuditRecord) {
        record.instance = Some(self.instance.clone());
        self.audit.write(&record);
    }
}

/// The unique id of one exchange: a UUID v7, so ids sort by creation time
/// (to the millisecond, and in creation order within one process) and stay
/// unique across replicas without coordination. Sent to the client as
/// `X-Portcullis-Request-Id` and written as the audit `request_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(uuid::Uuid);

impl RequestId {
    /// A fresh id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = uuid::Uuid::encode_buffer();
        serializer.serialize_str(self.0.hyphenated().encode_lower(&mut buf))
    }
}

/// Declares a closed set of label values with one spelling, used by metrics and the audit log.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(unreachable_pub)] // public where the module declaring it is
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        #[allow(unreachable_pub)]
        impl $name {
            /// The value as it appears in metric labels and audit records.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        $crate::telemetry::label_value!($name);
    };
}
pub(crate) use label_enum;

label_enum! {
    /// Which listener accepted the connection.
    Listener {
        /// `--listen`: CONNECT and absolute-form HTTP.
        Explicit => "explicit",
        /// `--listen-tls`: the same protocol inside TLS, with a client certificate.
        ExplicitTls => "explicit_tls",
        /// `--transparent-tls`: destination taken from the ClientHello's SNI.
        TransparentTls => "transparent_tls",
        /// `--transparent-http`: destination taken from the `Host` header.
        TransparentHttp => "transparent_http",
    }
}

/// Lets a type of the pure core (which depends on no telemetry crate) be a
/// metric label value and an audit field, spelt by its `as_str()`.
macro_rules! label_value {
    ($($name:ty),+) => {$(
        impl ::prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut ::prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> ::std::fmt::Result {
                ::std::fmt::Write::write_str(encoder, self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    )+};
}

// The `decision` and `reason` of metrics and audit records.
pub(crate) use label_value;

label_value!(Verdict, Reason);

/// The `client` of a source no `clients` entry lists, when the policy has `clients`.
pub const UNKNOWN_CLIENT: &str = "_unknown";

/// The `client` when the policy has no `clients`: the pseudo-client of the top-level rules.
pub const DEFAULT_CLIENT: &str = crate::policy::diff::EVERYONE;

label_enum! {
    /// How an admitted exchange ended (the audit `end`).
    Ending {
        /// The client stopped sending first (or went away before a response was relayed).
        ClientClosed => "client_closed",
        /// The upstream stopped sending first; for a forwarded request, its response was relayed whole.
        UpstreamClosed => "upstream_closed",
        /// No bytes either way for `--idle-timeout`.
        IdleTimeout => "idle_timeout",
        /// Cut when the drain timeout expired at shutdown.
        Drain => "drain",
        /// Cut because a reload denied its destination (`--revalidate-on-reload`).
        PolicyRevoked => "policy_revoked",
        /// A socket or the upstream failed (a reset, a response cut short).
        Error => "error",
    }
}

label_enum! {
    /// Outcome of a policy reload.
    ReloadResult {
        /// The new policy was swapped in.
        Ok => "ok",
        /// The file was invalid or gone; the last good policy stays.
        Error => "error",
        /// The content equals the policy in force; the generation stays.
        Unchanged => "unchanged",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_match_the_spec_spelling() {
        assert_eq!(Listener::TransparentTls.as_str(), "transparent_tls");
        assert_eq!(
            serde_json::to_string(&Verdict::Report).ok().as_deref(),
            Some("\"report\"")
        );
        assert_eq!(
            serde_json::to_string(&Reason::BlockedIp).ok().as_deref(),
            Some("\"blocked_ip\"")
        );
        assert_eq!(
            serde_json::to_string(&Listener::Explicit).ok().as_deref(),
            Some("\"explicit\"")
        );
        assert_eq!(Ending::ClientClosed.as_str(), "client_closed");
    }

    #[test]
    fn request_ids_are_v7_uuids_in_creation_order() {
        let ids: Vec<RequestId> = (0..1000).map(|_| RequestId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing");
        let text = ids[0].to_string();
        assert_eq!(text.len(), 36, "{text}");
        assert_eq!(&text[14..15], "7", "version nibble: {text}");
        assert_eq!(
            serde_json::to_string(&ids[0]).ok(),
            Some(format!("\"{text}\""))
        );
    }
}
