//! Telemetry on the side of the data path: Prometheus metrics and the JSON-lines audit log.
//!
//! The label vocabulary shared by both (which listener; how the core's verdicts and reasons
//! are spelt) lives here so a metric label and an audit field can never spell the same thing two ways.

pub(crate) mod audit;
pub(crate) mod destination;
pub mod diag;
pub(crate) mod exchange;
pub(crate) mod metrics;

use std::sync::Arc;

use audit::AuditLog;
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
}

impl Telemetry {
    /// Counts a finished exchange and writes its audit record.
    pub fn record(&self, finished: Finished) {
        finished.record(&self.metrics, &self.audit);
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
    }
}
