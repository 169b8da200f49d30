//! Warnings about single rules: duplicates, shadowed and overridden rules,
//! and destinations broader than they look.

use ipnet::IpNet;

use super::super::Policy;
use super::super::diagnostic::{Code, Diagnostic};
use super::super::pattern::Pattern;
use super::super::ruleset::{Rule, RuleSet};
use super::{Breadth, too_broad, warn};

/// An allowed IP range with a prefix this short or shorter is "everything".
const MATCH_ALL_PREFIX: u8 = 8;

pub(super) fn lint(policy: &Policy, out: &mut Vec<Diagnostic>) {
    let top = &policy.allow;
    lint_list(top, None, "allow", out);
    lint_list(&policy.deny, None, "deny", out);
    for client in policy.clients.iter().flatten() {
        lint_list(&client.allow, Some(top), "allow", out);
    }
    let all_allows = std::iter::once(top).chain(policy.clients.iter().flatten().map(|c| &c.allow));
    for list in all_allows {
        for rule in list.rules() {
            denied(rule, &policy.deny, out);
            wildcard_breadth(rule, out);
            match_all_range(rule, out);
            private_wildcard(rule, out);
        }
    }
}

/// Duplicates and rules another rule of the same list (or of the top-level
/// `allow`, for a client's list) already covers. A shadow is reported at the
/// broader rule, which is what makes the narrower one dead.
fn lint_list(list: &RuleSet, outer: Option<&RuleSet>, key: &str, out: &mut Vec<Diagnostic>) {
    for (i, rule) in list.rules().iter().enumerate() {
        let same = |other: &Rule| other.pattern == rule.pattern && other.ports == rule.ports;
        let earlier = |other: &Rule| list.rules()[..i].iter().any(|r| std::ptr::eq(r, other));
        let coverer = list.covering(&rule.pattern).into_iter().find(|o| {
            // Of two identical rules, only the later one is the duplicate.
            !std::ptr::eq(*o, rule)
                && o.ports.covers(&rule.ports)
                && (!same(o) || earlier(o))
                && covers_private(o, rule)
        });
        if let Some(other) = coverer {
            out.push(if same(other) {
                warn(
                    Code::DuplicateRule,
                    rule,
                    format!(
                        "`{}` duplicates `{}` (line {}) in `{key}`",
                        rule.text, other.text, other.line
                    ),
                    format!("remove one of the two (line {} or {})", other.line, rule.line),
                )
            } else {
                warn(
                    Code::ShadowedRule,
                    other,
                    format!(
                        "`{}` shadows `{}` (line {}): every destination that rule allows, this one already allows",
                        other.text, rule.text, rule.line
                    ),
                    format!(
                        "remove `{}` (line {}), or narrow `{}` if it allows more than intended",
                        rule.text, rule.line, other.text
                    ),
                )
            });
            continue;
        }
        if let Some(other) = outer
            .map(|o| o.covering(&rule.pattern))
            .into_iter()
            .flatten()
            .find(|o| o.ports.covers(&rule.ports))
        {
            out.push(warn(
                Code::RedundantRule,
                rule,
                format!(
                    "`{}` is already allowed for every client by `{}` (line {})",
                    rule.text, other.text, other.line
                ),
                format!(
                    "remove `{}` from the client's list; the top-level rule applies to it",
                    rule.text
                ),
            ));
        }
    }
}

/// Whether `broader` dials every private range `rule` does: the more
/// specific rule decides its names, so one that opens more is not dead.
fn covers_private(broader: &Rule, rule: &Rule) -> bool {
    (rule.allow_private().iter()).all(|net| broader.allow_private().iter().any(|b| b.contains(net)))
}

/// `private-wildcard`: `allow_private` on a wildcard or glob rule lets
/// every name it matches, some perhaps not the endpoint's, dial those
/// private ranges.
fn private_wildcard(rule: &Rule, out: &mut Vec<Diagnostic>) {
    if rule.allow_private().is_empty() || rule.pattern.wildcard_tail().is_none() {
        return;
    }
    let ranges = (rule.allow_private().iter())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    out.push(warn(
        Code::PrivateWildcard,
        rule,
        format!(
            "`{}` carries `allow_private` ({ranges}): every name the wildcard matches may dial those private addresses",
            rule.text
        ),
        "give `allow_private` to exact names only, e.g. `dest: sts.eu-west-1.amazonaws.com`".into(),
    ));
}

/// An allow rule that a deny rule overrides on every port it names.
fn denied(rule: &Rule, deny: &RuleSet, out: &mut Vec<Diagnostic>) {
    if let Some(d) = deny
        .covering(&rule.pattern)
        .into_iter()
        .find(|d| d.ports.covers(&rule.ports))
    {
        out.push(warn(
            Code::DeniedRule,
            rule,
            format!(
                "`{}` never takes effect: the deny rule `{}` (line {}) covers it, and deny wins",
                rule.text, d.text, d.line
            ),
            format!(
                "remove `{}`, or narrow the deny rule `{}` if this destination should be reachable",
                rule.text, d.text
            ),
        ));
    }
}

fn wildcard_breadth(rule: &Rule, out: &mut Vec<Diagnostic>) {
    let Some(tail) = rule.pattern.wildcard_tail() else {
        return;
    };
    match too_broad(tail) {
        Some(Breadth::SharedTenant {
            domain,
            what,
            example,
        }) => out.push(warn(
            Code::SharedTenantWildcard,
            rule,
            format!(
                "`{}` is a wildcard over the shared-tenant domain `{domain}` ({what}): data can leave to a name an attacker owns",
                rule.text
            ),
            format!(
                "list the exact names you use, e.g. `{}`",
                example_below(example, domain, tail)
            ),
        )),
        Some(Breadth::PublicSuffix) => out.push(warn(
            Code::PublicSuffixWildcard,
            rule,
            format!(
                "`{}` is broader than a registrable domain: `{tail}` is a public suffix, so anyone can register a name below it",
                rule.text
            ),
            format!("allow the registrable domains you need, e.g. `*.example.{tail}`"),
        )),
        None => {}
    }
}

/// The example name of `domain`'s entry, moved below `tail` when the
/// wildcard sits deeper than the domain (`*.eu-west-1.amazonaws.com` ->
/// `sts.eu-west-1.amazonaws.com`), so the hint always fits the rule.
fn example_below(example: &str, domain: &str, tail: &str) -> String {
    if tail == domain {
        return example.to_string();
    }
    let first = example.split('.').next().unwrap_or("my-name");
    format!("{first}.{tail}")
}

/// An allowed range of /8 or wider: every host in it, anyone's, is a destination.
fn match_all_range(rule: &Rule, out: &mut Vec<Diagnostic>) {
    let Pattern::Net(net) = &rule.pattern else {
        return;
    };
    if net.prefix_len() > MATCH_ALL_PREFIX {
        return;
    }
    let (what, example) = match net {
        IpNet::V4(_) if net.prefix_len() == 0 => ("every IPv4 address", "203.0.113.0/24:443"),
        IpNet::V6(_) if net.prefix_len() == 0 => ("every IPv6 address", "[2001:db8::/48]:443"),
        IpNet::V4(_) => ("a /8 or wider IPv4 range", "203.0.113.0/24:443"),
        IpNet::V6(_) => ("a /8 or wider IPv6 range", "[2001:db8::/48]:443"),
    };
    out.push(warn(
        Code::MatchAllRange,
        rule,
        format!(
            "`{}` allows {what} on its ports: any host there, whoever runs it, can receive data",
            rule.text
        ),
        format!("list the ranges the service dials, e.g. `{example}`"),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_tenant_example_fits_the_rule() {
        assert_eq!(
            example_below("my-tunnel.ngrok.io", "ngrok.io", "ngrok.io"),
            "my-tunnel.ngrok.io"
        );
        assert_eq!(
            example_below(
                "sts.eu-west-1.amazonaws.com",
                "amazonaws.com",
                "eu-west-1.amazonaws.com"
            ),
            "sts.eu-west-1.amazonaws.com"
        );
        for (domain, _, example) in super::super::SHARED_TENANT_DOMAINS {
            assert!(
                crate::policy::pattern::is_strictly_below(example, domain),
                "{example} is not below {domain}"
            );
        }
    }
}
