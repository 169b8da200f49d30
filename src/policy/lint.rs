//! Warnings for `check`: duplicates, shadowed rules, and wildcards broader than they look.

use super::Policy;
use super::compile::Diagnostic;
use super::ruleset::{Rule, RuleSet};

/// Domains where anyone can own a name or bucket below the domain: a
/// wildcard over one of them lets a compromised workload send data to an
/// attacker's own bucket, app or distribution. This is the one place the
/// list lives; README "Policy warnings" documents it.
pub const SHARED_TENANT_DOMAINS: &[(&str, &str)] = &[
    (
        "amazonaws.com",
        "AWS service endpoints, including anyone's S3 buckets",
    ),
    ("s3.amazonaws.com", "anyone's S3 buckets"),
    ("cloudfront.net", "anyone's CloudFront distributions"),
    ("elasticbeanstalk.com", "anyone's Elastic Beanstalk apps"),
    ("awsapps.com", "anyone's AWS-hosted apps"),
    ("amplifyapp.com", "anyone's AWS Amplify apps"),
    ("on.aws", "anyone's AWS Lambda function URLs"),
    ("blob.core.windows.net", "anyone's Azure storage accounts"),
    ("core.windows.net", "anyone's Azure storage accounts"),
    ("azurewebsites.net", "anyone's Azure web apps"),
    ("azureedge.net", "anyone's Azure CDN endpoints"),
    ("cloudapp.azure.com", "anyone's Azure VMs"),
    (
        "storage.googleapis.com",
        "anyone's Google Cloud Storage buckets",
    ),
    ("appspot.com", "anyone's App Engine apps"),
    ("run.app", "anyone's Cloud Run services"),
    ("cloudfunctions.net", "anyone's Cloud Functions"),
    ("web.app", "anyone's Firebase sites"),
    ("firebaseapp.com", "anyone's Firebase apps"),
    ("firebaseio.com", "anyone's Firebase databases"),
    ("herokuapp.com", "anyone's Heroku apps"),
    ("github.io", "anyone's GitHub Pages"),
    ("gitlab.io", "anyone's GitLab Pages"),
    ("netlify.app", "anyone's Netlify sites"),
    ("vercel.app", "anyone's Vercel deployments"),
    ("pages.dev", "anyone's Cloudflare Pages"),
    ("workers.dev", "anyone's Cloudflare Workers"),
    ("r2.cloudflarestorage.com", "anyone's Cloudflare R2 buckets"),
    ("digitaloceanspaces.com", "anyone's DigitalOcean Spaces"),
    ("ngrok.io", "anyone's ngrok tunnels"),
    ("ngrok-free.app", "anyone's ngrok tunnels"),
    ("trycloudflare.com", "anyone's Cloudflare quick tunnels"),
];

/// The policy's warnings: duplicates, shadowed rules, and wildcards broader than they look.
pub fn lint(policy: &Policy) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let top = &policy.allow;
    lint_list(top, None, "allow", &mut out);
    lint_list(&policy.deny, None, "deny", &mut out);
    for client in policy.clients.iter().flatten() {
        lint_list(&client.allow, Some(top), "allow", &mut out);
    }
    let all_allows = std::iter::once(top).chain(policy.clients.iter().flatten().map(|c| &c.allow));
    for list in all_allows {
        for rule in list.rules() {
            if let Some(deny) = policy
                .deny
                .covering(&rule.pattern)
                .into_iter()
                .find(|d| d.ports.covers(&rule.ports))
            {
                out.push(warn(
                    rule,
                    format!(
                        "`{}` never takes effect: it is denied by `{}` (line {})",
                        rule.text, deny.text, deny.line
                    ),
                    "remove one of the two",
                ));
            }
            wildcard_breadth(rule, &mut out);
        }
    }
    out.sort_by_key(|d| (d.line, d.column));
    out
}

/// Duplicates and rules another rule of the same list (or of the top-level
/// `allow`, for a client's list) already covers.
fn lint_list(list: &RuleSet, outer: Option<&RuleSet>, key: &str, out: &mut Vec<Diagnostic>) {
    for (i, rule) in list.rules().iter().enumerate() {
        let earlier_same =
            |other: &Rule| other.pattern == rule.pattern && other.ports == rule.ports;
        let mut coverers = list
            .covering(&rule.pattern)
            .into_iter()
            .filter(|o| !std::ptr::eq(*o, rule) && o.ports.covers(&rule.ports));
        let coverer = coverers.find(|o| {
            // Of two identical rules, only the later one is the duplicate.
            !earlier_same(o) || list.rules()[..i].iter().any(|r| std::ptr::eq(r, *o))
        });
        if let Some(other) = coverer {
            let message = if earlier_same(other) {
                format!("`{}` duplicates line {} in `{key}`", rule.text, other.line)
            } else {
                format!(
                    "`{}` is shadowed by `{}` (line {}), which already covers it",
                    rule.text, other.text, other.line
                )
            };
            let hint = if earlier_same(other) {
                "remove one of them"
            } else {
                "remove the narrower rule, or narrow the broader one"
            };
            out.push(warn(rule, message, hint));
            continue;
        }
        if let Some(other) = outer
            .map(|o| o.covering(&rule.pattern))
            .into_iter()
            .flatten()
            .find(|o| o.ports.covers(&rule.ports))
        {
            out.push(warn(
                rule,
                format!(
                    "`{}` is already allowed for every client by `{}` (line {})",
                    rule.text, other.text, other.line
                ),
                "remove it from the client's list",
            ));
        }
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
    },
    /// `tail` is itself a public suffix (Public Suffix List, private section included).
    PublicSuffix,
}

/// Whether a wildcard over `tail` (`*.tail`, or a glob anchored on `tail`) is
/// broader than one owner's names. The one test behind `check`'s warnings and
/// `suggest`'s refusal to collapse names into a wildcard.
pub fn too_broad(tail: &str) -> Option<Breadth> {
    if let Some((domain, what)) = SHARED_TENANT_DOMAINS
        .iter()
        .filter(|(d, _)| tail == *d || super::pattern::is_strictly_below(tail, d))
        .max_by_key(|(d, _)| d.len())
    {
        return Some(Breadth::SharedTenant { domain, what });
    }
    if let Some(suffix) = psl::suffix(tail.as_bytes())
        && suffix.is_known()
        && suffix.as_bytes() == tail.as_bytes()
    {
        return Some(Breadth::PublicSuffix);
    }
    None
}

fn wildcard_breadth(rule: &Rule, out: &mut Vec<Diagnostic>) {
    let Some(tail) = rule.pattern.wildcard_tail() else {
        return;
    };
    match too_broad(tail) {
        Some(Breadth::SharedTenant { domain, what }) => out.push(warn(
            rule,
            format!(
                "`{}` is a wildcard over the shared-tenant domain `{domain}` ({what}): data can leave to a name an attacker owns",
                rule.text
            ),
            "list the exact names you use, e.g. `my-bucket.s3.eu-west-1.amazonaws.com`",
        )),
        Some(Breadth::PublicSuffix) => out.push(warn(
            rule,
            format!(
                "`{}` is broader than a registrable domain: `{tail}` is a public suffix, so anyone can register a name below it",
                rule.text
            ),
            "allow the registrable domains you need, e.g. `*.example.co.uk`",
        )),
        None => {}
    }
}

fn warn(rule: &Rule, message: String, hint: &str) -> Diagnostic {
    Diagnostic {
        severity: super::compile::Severity::Warning,
        line: rule.line,
        column: rule.column,
        message,
        hint: Some(hint.to_string()),
    }
}
