//! `allow_private` against the proxy's own addresses: a check only the
//! running proxy can make, since only it knows where it listens.

use std::net::IpAddr;

use super::diagnostic::{Code, Diagnostic};
use super::ip_guard::canonical;
use super::{Policy, ruleset::Rule};

impl Policy {
    /// A `private-range-forbidden` error for every allow rule whose
    /// `allow_private` covers one of `own`, the specific addresses the
    /// proxy listens on (a wildcard listener's address is no range to
    /// check). The proxy refuses such a policy at start and at reload; its
    /// own listeners stay undialable at connect time either way.
    pub fn own_address_problems(&self, own: &[IpAddr]) -> Vec<Diagnostic> {
        let own: Vec<IpAddr> = (own.iter().map(|ip| canonical(*ip)))
            .filter(|ip| !ip.is_unspecified())
            .collect();
        let clients = self.clients.iter().flatten().map(|c| &c.allow);
        let rules = std::iter::once(&self.allow).chain(clients);
        let mut out: Vec<Diagnostic> = (rules.flat_map(|set| set.rules()))
            .filter_map(|rule| covered(rule, &own))
            .collect();
        out.sort_by_key(|d| (d.line, d.column));
        out.dedup();
        out
    }
}

fn covered(rule: &Rule, own: &[IpAddr]) -> Option<Diagnostic> {
    let (net, ip) = (rule.allow_private().iter())
        .find_map(|net| own.iter().find(|ip| net.contains(*ip)).map(|ip| (net, ip)))?;
    Some(Diagnostic::at(
        Code::PrivateRangeForbidden,
        rule.line,
        rule.column,
        format!(
            "`allow_private` range `{net}` of `{}` covers {ip}, where this proxy listens: the rule could reach the proxy itself",
            rule.text
        ),
        Some(format!(
            "narrow the range so that it leaves out {ip}, or listen on another address"
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_over_a_specific_listener_address_is_refused() {
        let text = "version: 1\nallow:\n  - {dest: sts.example.test, allow_private: [10.20.0.0/16]}\n  - api.example.test\n";
        let policy = Policy::from_yaml(text).expect("valid").policy;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            ("listener inside the range", vec![ip("10.20.0.7")], 1),
            ("IPv4-mapped listener", vec![ip("::ffff:10.20.0.7")], 1),
            ("listener outside the range", vec![ip("10.21.0.7")], 0),
            ("wildcard listeners", vec![ip("0.0.0.0"), ip("::")], 0),
            ("loopback listener", vec![ip("127.0.0.1")], 0),
        ];
        for (name, own, want) in cases {
            let problems = policy.own_address_problems(&own);
            assert_eq!(problems.len(), want, "{name}: {problems:?}");
            if let Some(p) = problems.first() {
                assert_eq!(p.code, Code::PrivateRangeForbidden, "{name}");
                assert_eq!((p.line, p.column), (3, 12), "{name}");
                assert!(p.message.contains("10.20.0.7"), "{name}: {}", p.message);
            }
        }
    }

    /// Line, column and code of each problem.
    type Found = Vec<(u64, u64, &'static str)>;

    fn codes(text: &str) -> Found {
        let checked = super::super::compile::check(text, super::super::date::Date::from_days(0));
        (checked.problems.iter())
            .map(|d| (d.line, d.column, d.code.as_str()))
            .collect()
    }

    #[test]
    fn check_codes_for_allow_private() {
        let cases: [(&str, &str, Found); 9] = [
            (
                "an exact name with a VPC range is clean",
                "version: 1\nallow:\n  - {dest: sts.example.test, allow_private: [10.0.0.0/16, \"fd00:1::/64\"]}\n",
                vec![],
            ),
            (
                "a per-client rule may carry it too",
                "version: 1\nclients:\n  - name: a\n    sources: [10.0.1.0/24]\n    allow: [{dest: sts.example.test, allow_private: [10.0.0.0/16]}]\n",
                vec![],
            ),
            (
                "link-local, loopback and metadata, each at its place",
                "version: 1\nallow:\n  - dest: sts.example.test\n    allow_private: [169.254.170.0/24, 127.0.0.0/8, \"fd00:ec2::/64\", 100.64.0.0/10]\n",
                vec![
                    (4, 21, "private-range-forbidden"),
                    (4, 39, "private-range-forbidden"),
                    (4, 52, "private-range-forbidden"),
                    (4, 69, "private-range-forbidden"),
                ],
            ),
            (
                "everything: overlaps loopback, unspecified and link-local",
                "version: 1\nallow:\n  - {dest: sts.example.test, allow_private: [0.0.0.0/0]}\n",
                vec![(3, 46, "private-range-forbidden")],
            ),
            (
                "a malformed range",
                "version: 1\nallow:\n  - {dest: sts.example.test, allow_private: [10.0.0/33]}\n",
                vec![(3, 46, "bad-cidr")],
            ),
            (
                "on a deny rule",
                "version: 1\ndeny:\n  - {dest: sts.example.test, allow_private: [10.0.0.0/16]}\n",
                vec![(3, 45, "invalid-value")],
            ),
            (
                "a misspelt key is an unknown key with its suggestion",
                "version: 1\nallow:\n  - {dest: sts.example.test, allow_privat: [10.0.0.0/16]}\n",
                vec![(3, 30, "unknown-key")],
            ),
            (
                "an exact name that opens more than the wildcard over it is not shadowed",
                "version: 1\nallow:\n  - \"*.example.test\"\n  - {dest: sts.example.test, allow_private: [10.0.0.0/16]}\n",
                vec![],
            ),
            (
                "on a wildcard: a warning",
                "version: 1\nallow:\n  - {dest: \"*.example.test\", allow_private: [10.0.0.0/16]}\n",
                vec![(3, 12, "private-wildcard")],
            ),
        ];
        let wrong: Vec<_> = (cases.iter())
            .filter(|(_, text, want)| codes(text) != *want)
            .map(|(name, text, _)| (name, codes(text)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:?}");
    }

    #[test]
    fn only_the_rule_that_carries_allow_private_opens_its_private_addresses() {
        let text = "version: 1\nallow:\n  - {dest: sts.example.test, allow_private: [10.20.0.0/16]}\n  - other.example.test\n  - {dest: kms.example.test, allow_private: [10.99.0.0/16]}\n  - {dest: 10.20.0.0/24, allow_private: [10.20.0.0/16]}\n  - 10.30.0.0/24\n";
        let policy = Policy::from_yaml(text).expect("valid").policy;
        let caller = IpAddr::from([192, 0, 2, 1]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let dialable = |host: &str, addr: &str| {
            let d = policy.decide_str(caller, host, 443);
            assert!(d.verdict.permits(), "{host}");
            policy.guard.is_dialable_with(ip(addr), d.allow_private())
        };
        let cases = [
            (
                "the rule's own range",
                "sts.example.test",
                "10.20.0.5",
                true,
            ),
            (
                "an embedded spelling of it",
                "sts.example.test",
                "::ffff:10.20.0.5",
                true,
            ),
            ("outside its range", "sts.example.test", "10.21.0.5", false),
            ("a plain rule", "other.example.test", "10.20.0.5", false),
            (
                "a range that does not cover",
                "kms.example.test",
                "10.20.0.5",
                false,
            ),
            (
                "public addresses stay dialable",
                "other.example.test",
                "203.0.113.7",
                true,
            ),
        ];
        for (name, host, addr, want) in cases {
            assert_eq!(dialable(host, addr), want, "{name}: {host} -> {addr}");
        }
        // IP literals: decided with the rule's ranges.
        let literal = |host: &str| policy.decide_str(caller, host, 443).reason;
        assert_eq!(literal("10.20.0.5"), super::super::Reason::Allowed);
        assert_eq!(literal("10.30.0.5"), super::super::Reason::BlockedIp);
        // A refusal carries no ranges.
        let refused = policy.decide_str(caller, "nope.example.test", 443);
        assert!(refused.allow_private().is_empty());
    }
}
