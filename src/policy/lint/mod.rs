//! Warnings for `check`: rules that do nothing or allow more than they seem
//! to (`rules.rs`), and settings that open the control itself (`reach.rs`).

mod reach;
mod rules;

use ipnet::IpNet;

use super::Policy;
use super::date::Date;
use super::diagnostic::{Code, Diagnostic};
use super::ruleset::Rule;

/// Domains where anyone can own a name or bucket below the domain: a
/// wildcard over one of them lets a compromised workload send data to an
/// attacker's own bucket, app or distribution. Each entry: the domain, who
/// owns names there, and an exact name of the kind to list instead. This is
/// the one place the list lives; docs/reference/check-codes.md documents it.
pub const SHARED_TENANT_DOMAINS: &[(&str, &str, &str)] = &[
    (
        "amazonaws.com",
        "AWS service endpoints, including anyone's S3 buckets",
        "sts.eu-west-1.amazonaws.com",
    ),
    (
        "s3.amazonaws.com",
        "anyone's S3 buckets",
        "my-bucket.s3.amazonaws.com",
    ),
    (
        "cloudfront.net",
        "anyone's CloudFront distributions",
        "d111111abcdef8.cloudfront.net",
    ),
    (
        "elasticbeanstalk.com",
        "anyone's Elastic Beanstalk apps",
        "my-app.eu-west-1.elasticbeanstalk.com",
    ),
    (
        "awsapps.com",
        "anyone's AWS-hosted apps",
        "my-org.awsapps.com",
    ),
    (
        "amplifyapp.com",
        "anyone's AWS Amplify apps",
        "main.d1a2b3c4.amplifyapp.com",
    ),
    (
        "on.aws",
        "anyone's AWS Lambda function URLs",
        "abc123.lambda-url.eu-west-1.on.aws",
    ),
    (
        "blob.core.windows.net",
        "anyone's Azure storage accounts",
        "myaccount.blob.core.windows.net",
    ),
    (
        "core.windows.net",
        "anyone's Azure storage accounts",
        "myaccount.blob.core.windows.net",
    ),
    (
        "azurewebsites.net",
        "anyone's Azure web apps",
        "my-app.azurewebsites.net",
    ),
    (
        "azureedge.net",
        "anyone's Azure CDN endpoints",
        "my-endpoint.azureedge.net",
    ),
    (
        "cloudapp.azure.com",
        "anyone's Azure VMs",
        "my-vm.westeurope.cloudapp.azure.com",
    ),
    (
        "storage.googleapis.com",
        "anyone's Google Cloud Storage buckets",
        "my-bucket.storage.googleapis.com",
    ),
    (
        "appspot.com",
        "anyone's App Engine apps",
        "my-project.appspot.com",
    ),
    (
        "run.app",
        "anyone's Cloud Run services",
        "my-service-abc123-ew.a.run.app",
    ),
    (
        "cloudfunctions.net",
        "anyone's Cloud Functions",
        "europe-west1-my-project.cloudfunctions.net",
    ),
    ("web.app", "anyone's Firebase sites", "my-site.web.app"),
    (
        "firebaseapp.com",
        "anyone's Firebase apps",
        "my-project.firebaseapp.com",
    ),
    (
        "firebaseio.com",
        "anyone's Firebase databases",
        "my-project.firebaseio.com",
    ),
    (
        "herokuapp.com",
        "anyone's Heroku apps",
        "my-app.herokuapp.com",
    ),
    ("github.io", "anyone's GitHub Pages", "my-org.github.io"),
    ("gitlab.io", "anyone's GitLab Pages", "my-group.gitlab.io"),
    (
        "netlify.app",
        "anyone's Netlify sites",
        "my-site.netlify.app",
    ),
    (
        "vercel.app",
        "anyone's Vercel deployments",
        "my-app.vercel.app",
    ),
    (
        "pages.dev",
        "anyone's Cloudflare Pages",
        "my-site.pages.dev",
    ),
    (
        "workers.dev",
        "anyone's Cloudflare Workers",
        "my-worker.my-account.workers.dev",
    ),
    (
        "r2.cloudflarestorage.com",
        "anyone's Cloudflare R2 buckets",
        "0123456789abcdef.r2.cloudflarestorage.com",
    ),
    (
        "digitaloceanspaces.com",
        "anyone's DigitalOcean Spaces",
        "my-space.ams3.digitaloceanspaces.com",
    ),
    ("ngrok.io", "anyone's ngrok tunnels", "my-tunnel.ngrok.io"),
    (
        "ngrok-free.app",
        "anyone's ngrok tunnels",
        "my-tunnel.ngrok-free.app",
    ),
    (
        "trycloudflare.com",
        "anyone's Cloudflare quick tunnels",
        "my-tunnel.trycloudflare.com",
    ),
];

/// Where the parts of a policy that its rule lists do not carry are written,
/// recorded by `compile` for the warnings about them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Spans {
    /// The top-level `mode` value.
    pub(crate) mode: Option<At>,
    /// One entry per `clients` entry, in file order.
    pub(crate) clients: Vec<ClientSpans>,
    /// The `ip_guard.blocked` value, and whether it names `default`.
    pub(crate) blocked: Option<(At, bool)>,
    /// Each `ip_guard.allowed` range.
    pub(crate) guard_allowed: Vec<(IpNet, At)>,
}

/// Where one client is written.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClientSpans {
    /// The client's entry (its first key).
    pub(crate) at: At,
    /// Its own `mode` value, when it sets one.
    pub(crate) mode: Option<At>,
}

/// A 1-based line and column, and the file of a policy directory it is in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct At {
    pub(crate) line: u64,
    pub(crate) column: u64,
    pub(crate) file: Option<std::sync::Arc<str>>,
}

impl At {
    /// `line 4`, or `20-payments.yaml line 4` in a policy directory.
    pub(crate) fn place(&self) -> String {
        match &self.file {
            Some(file) => format!("{file} line {}", self.line),
            None => format!("line {}", self.line),
        }
    }
}

/// Every warning about `policy`, in file order.
pub(crate) fn lint(policy: &Policy, spans: &Spans, today: Date) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    rules::lint(policy, &mut out);
    reach::lint(policy, spans, &mut out);
    expired(policy, today, &mut out);
    out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    out
}

/// `expired-rule`: a rule whose `expires` day is before `today`. It is still
/// enforced; the warning asks its owner to renew or remove it.
fn expired(policy: &Policy, today: Date, out: &mut Vec<Diagnostic>) {
    for rule in policy.expired_rules(today) {
        let Some(day) = rule.expires() else { continue };
        let mut whose = Vec::new();
        if let Some(owner) = rule.owner() {
            whose.push(format!("owner {owner}"));
        }
        if let Some(ticket) = rule.ticket() {
            whose.push(format!("ticket {ticket}"));
        }
        let whose = match whose.is_empty() {
            true => String::new(),
            false => format!(" ({})", whose.join(", ")),
        };
        out.push(
            Diagnostic::at(
                Code::ExpiredRule,
                rule.line,
                rule.column,
                format!(
                    "`{}`{whose} expired on {day}; it is still enforced",
                    rule.text
                ),
                Some(
                    "remove the rule if it is no longer needed, or move `expires` to a later day"
                        .into(),
                ),
            )
            .in_file(rule.file.clone()),
        );
    }
}

/// Why a wildcard `*.tail` reaches names that no single owner controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breadth {
    /// `tail` is, or is below, a domain from [`SHARED_TENANT_DOMAINS`]: the
    /// matching entry (the most specific one) and who owns names there.
    SharedTenant {
        /// The matching entry of [`SHARED_TENANT_DOMAINS`].
        domain: &'static str,
        /// Who owns names there.
        what: &'static str,
        /// An exact name of the kind to list instead.
        example: &'static str,
    },
    /// `tail` is itself a public suffix (Public Suffix List, private section included).
    PublicSuffix,
}

/// Whether a wildcard over `tail` (`*.tail`, or a glob anchored on `tail`) is
/// broader than one owner's names. The one test behind `check`'s warnings and
/// `suggest`'s refusal to collapse names into a wildcard.
pub fn too_broad(tail: &str) -> Option<Breadth> {
    if let Some((domain, what, example)) = SHARED_TENANT_DOMAINS
        .iter()
        .filter(|(d, _, _)| tail == *d || super::pattern::is_strictly_below(tail, d))
        .max_by_key(|(d, _, _)| d.len())
    {
        return Some(Breadth::SharedTenant {
            domain,
            what,
            example,
        });
    }
    if let Some(suffix) = psl::suffix(tail.as_bytes())
        && suffix.is_known()
        && suffix.as_bytes() == tail.as_bytes()
    {
        return Some(Breadth::PublicSuffix);
    }
    None
}

/// A warning located at `rule`.
fn warn(code: Code, rule: &Rule, message: String, hint: String) -> Diagnostic {
    Diagnostic::at(code, rule.line, rule.column, message, Some(hint)).in_file(rule.file.clone())
}

/// A warning located at `at`.
fn warn_at(code: Code, at: &At, message: String, hint: String) -> Diagnostic {
    Diagnostic::at(code, at.line, at.column, message, Some(hint)).in_file(at.file.clone())
}
