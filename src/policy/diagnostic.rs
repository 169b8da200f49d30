//! What `check` reports: a problem's stable code, its severity, where it is and how to fix it.

use std::fmt;
use std::sync::Arc;

use serde_saphyr::Location;

/// How serious a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy does not load.
    Error,
    /// The policy loads, but probably does not say what was meant.
    Warning,
}

impl Severity {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal, $severity:ident;)*) => {
        /// A problem's stable name: what `check` prints in `error[CODE]`, its
        /// JSON `code`, and what `# portcullis: ignore[CODE]` names. Never
        /// renamed: scripts and ignore comments depend on the spelling.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// Every code, errors first, in the order docs/reference/check-codes.md lists them.
            pub const ALL: &[Code] = &[$(Code::$variant,)*];

            /// The kebab-case name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)*
                }
            }

            /// Whether the problem stops the policy from loading.
            pub fn severity(self) -> Severity {
                match self {
                    $(Code::$variant => Severity::$severity,)*
                }
            }
        }
    };
}

codes! {
    /// The policy file cannot be read.
    Unreadable = "unreadable-file", Error;
    /// The policy file holds nothing.
    EmptyFile = "empty-file", Error;
    /// The text is not YAML.
    YamlSyntax = "yaml-syntax", Error;
    /// A mapping names the same key twice.
    DuplicateKey = "duplicate-key", Error;
    /// A key the policy format does not have (often a misspelling).
    UnknownKey = "unknown-key", Error;
    /// A required key is absent.
    MissingKey = "missing-key", Error;
    /// A value of the wrong type or outside its allowed set (`mode: fast`).
    InvalidValue = "invalid-value", Error;
    /// `version` is not one this build reads.
    BadVersion = "bad-version", Error;
    /// A port outside 1-65535, or a backwards range.
    BadPort = "bad-port", Error;
    /// `default_ports: []`.
    EmptyDefaultPorts = "empty-default-ports", Error;
    /// A destination that is not a valid host name, address or range.
    BadDestination = "bad-destination", Error;
    /// A wildcard in a place or form the matcher does not support.
    BadWildcard = "bad-wildcard", Error;
    /// A CIDR that does not parse or has host bits set.
    BadCidr = "bad-cidr", Error;
    /// An `allow_private` range that touches link-local, loopback,
    /// unspecified or metadata addresses, or one of the proxy's own.
    PrivateRangeForbidden = "private-range-forbidden", Error;
    /// A client without a name.
    EmptyClientName = "empty-client-name", Error;
    /// Two clients with the same name.
    DuplicateClient = "duplicate-client", Error;
    /// A client with no selector, or an empty selector list: it matches nobody.
    NoSelector = "no-selector", Error;
    /// A certificate name, token digest or VPC endpoint id that does not parse.
    BadSelector = "bad-selector", Error;
    /// A `deny_message` that is not one printable line of at most 200 characters.
    BadDenyMessage = "bad-deny-message", Error;
    /// The same destination twice in one list.
    DuplicateRule = "duplicate-rule", Warning;
    /// A rule that makes another rule of its list unnecessary.
    ShadowedRule = "shadowed-rule", Warning;
    /// A client's rule the top-level `allow` already grants to everyone.
    RedundantRule = "redundant-rule", Warning;
    /// An allow rule a deny rule overrides entirely.
    DeniedRule = "denied-rule", Warning;
    /// A wildcard over a public suffix (`*.com`).
    PublicSuffixWildcard = "public-suffix-wildcard", Warning;
    /// A wildcard over a domain where anyone can own names (`*.s3.amazonaws.com`).
    SharedTenantWildcard = "shared-tenant-wildcard", Warning;
    /// An allowed IP range of /8 or wider.
    MatchAllRange = "match-all-range", Warning;
    /// An `ip_guard` that lets the proxy dial metadata or most private space.
    GuardOpened = "guard-opened", Warning;
    /// `allow_private` on a wildcard rule: every name it matches may dial those ranges.
    PrivateWildcard = "private-wildcard", Warning;
    /// `mode: report`, which lets every destination through.
    ReportMode = "report-mode", Warning;
    /// A client whose every source an earlier client takes.
    UnreachableClient = "unreachable-client", Warning;
    /// A rule whose `expires` day has passed (it is still enforced).
    ExpiredRule = "expired-rule", Warning;
    /// An ignore comment naming a code that does not exist.
    UnknownIgnore = "unknown-ignore", Warning;
}

impl Code {
    /// The code spelled `text`, if there is one.
    pub fn parse(text: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == text)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One problem found in a policy file, at a 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// The stable name of the problem.
    pub code: Code,
    /// The file it is in, by its name inside the policy directory; `None`
    /// for a policy that is one file (the caller knows its path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<Arc<str>>,
    /// Error or warning (follows from the code).
    pub severity: Severity,
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// What is wrong.
    pub message: String,
    /// What to write instead, when there is an obvious fix.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem at a parsed location.
    pub fn new(
        code: Code,
        at: Location,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) -> Self {
        Diagnostic::at(code, at.line(), at.column(), message, hint)
    }

    /// A problem at a 1-based `line` and `column` (0 when unknown).
    pub fn at(
        code: Code,
        line: u64,
        column: u64,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) -> Self {
        Diagnostic {
            code,
            file: None,
            severity: code.severity(),
            line,
            column,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl Diagnostic {
    /// The same problem, placed in `file` (a name inside the policy directory).
    pub fn in_file(mut self, file: Option<Arc<str>>) -> Self {
        self.file = file;
        self
    }

    /// The order problems are listed in: by file (directory order), then position.
    pub fn sort_key(&self) -> (Option<&str>, u64, u64) {
        (self.file.as_deref(), self.line, self.column)
    }
}

/// `LINE:COLUMN: error[CODE]: message (hint: ...)` on one line, for logs;
/// callers prefix the path.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}[{}]: {}",
            self.line,
            self.column,
            self.severity.as_str(),
            self.code,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_kebab_case_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for &code in Code::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(
                text.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{text}"
            );
            assert_eq!(Code::parse(text), Some(code));
        }
        assert_eq!(Code::parse("shadowed"), None);
    }

    #[test]
    fn display_names_severity_and_code() {
        let d = Diagnostic::at(Code::BadPort, 4, 5, "`0` is not a port", None);
        assert_eq!(d.to_string(), "4:5: error[bad-port]: `0` is not a port");
        let d = Diagnostic::at(Code::ReportMode, 3, 7, "m", Some("h".to_string()));
        assert_eq!(d.to_string(), "3:7: warning[report-mode]: m (hint: h)");
    }
}
