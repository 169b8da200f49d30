//! The IP guard on literals, client matching and report mode.

use super::super::*;
use super::{A, ip, policy};
use Reason::*;
use Verdict::{Allow, Deny, Report};

#[test]
fn guard_applies_to_every_default_range_for_literals() {
    let p = policy("version: 1\nallow:\n  - 0.0.0.0/0:*\n  - \"[::/0]:*\"\n");
    for blocked in [
        "169.254.169.254",
        "169.254.170.2",
        "10.0.0.1",
        "127.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "100.64.0.1",
        "0.0.0.0",
        "192.0.0.1",
        "198.18.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "[::1]",
        "[::]",
        "[fc00::1]",
        "[fe80::1]",
        "[ff02::1]",
        "[2001::1]",
        "[::ffff:169.254.169.254]",
        "[::ffff:a9fe:a9fe]",
        "[64:ff9b::169.254.169.254]",
        "[64:ff9b::a00:1]",
        "[2002:a9fe:a9fe::]",
        "[2002:c0a8:1::1]",
        "[::ffff:127.0.0.1]",
    ] {
        let d = p.decide_str(ip(A), blocked, 443);
        assert_eq!((d.verdict, d.reason), (Deny, BlockedIp), "{blocked}");
    }
    for open in [
        "8.8.8.8",
        "[2606:4700::1111]",
        "[::ffff:8.8.8.8]",
        "[64:ff9b::808:808]",
    ] {
        let d = p.decide_str(ip(A), open, 443);
        assert_eq!(d.verdict, Allow, "{open}");
    }
}

#[test]
fn guard_lists_extend_replace_and_carve_out() {
    let p = policy(
        "version: 1\nallow: [\"0.0.0.0/0:*\"]\nip_guard:\n  blocked: [default, 192.0.2.0/24]\n  allowed: [127.0.0.0/8, 169.254.170.2]\n",
    );
    assert_eq!(p.decide_str(ip(A), "192.0.2.1", 443).reason, BlockedIp);
    assert_eq!(p.decide_str(ip(A), "127.0.0.1", 443).reason, Allowed);
    assert_eq!(p.decide_str(ip(A), "169.254.170.2", 443).reason, Allowed);
    assert_eq!(
        p.decide_str(ip(A), "169.254.169.254", 443).reason,
        BlockedIp
    );
    let replaced =
        policy("version: 1\nallow: [\"0.0.0.0/0:*\"]\nip_guard:\n  blocked: [192.0.2.0/24]\n");
    assert_eq!(
        replaced.decide_str(ip(A), "192.0.2.1", 443).reason,
        BlockedIp
    );
    assert_eq!(replaced.decide_str(ip(A), "10.0.0.1", 443).reason, Allowed);
    assert!(replaced.guard.is_dialable(ip("10.0.0.1")));
    assert!(
        !policy("version: 1\n")
            .guard
            .is_dialable(ip("169.254.169.254"))
    );
}

const CLIENTS: &str = r#"
version: 1
allow: [common.example.com]
deny: [denied.example.com]
clients:
  - name: payments
    sources: [127.0.0.2/32, "fd00:1::/64"]
    allow: [api.paypal.com]
  - name: overlap
    sources: [127.0.0.0/24]
  - name: learner
    sources: [127.0.1.0/24]
    mode: report
"#;

#[test]
fn clients_first_match_extra_allow_and_refusal() {
    let p = policy(CLIENTS);
    let rows: &[(&str, &str, Verdict, Reason, Option<&str>)] = &[
        (
            "127.0.0.2",
            "api.paypal.com",
            Allow,
            Allowed,
            Some("payments"),
        ),
        (
            "127.0.0.2",
            "common.example.com",
            Allow,
            Allowed,
            Some("payments"),
        ),
        (
            "fd00:1::5",
            "api.paypal.com",
            Allow,
            Allowed,
            Some("payments"),
        ),
        (
            "::ffff:127.0.0.2",
            "api.paypal.com",
            Allow,
            Allowed,
            Some("payments"),
        ),
        (
            "127.0.0.3",
            "api.paypal.com",
            Deny,
            NotAllowed,
            Some("overlap"),
        ),
        (
            "127.0.0.3",
            "common.example.com",
            Allow,
            Allowed,
            Some("overlap"),
        ),
        (
            "127.0.0.2",
            "denied.example.com",
            Deny,
            NotAllowed,
            Some("payments"),
        ),
        (
            "192.0.2.1",
            "common.example.com",
            Deny,
            ClientNotAllowed,
            None,
        ),
        (
            "127.0.1.9",
            "nothing.example.com",
            Report,
            NotAllowed,
            Some("learner"),
        ),
        (
            "127.0.1.9",
            "denied.example.com",
            Report,
            NotAllowed,
            Some("learner"),
        ),
        (
            "127.0.1.9",
            "common.example.com",
            Allow,
            Allowed,
            Some("learner"),
        ),
    ];
    for (client, host, verdict, reason, name) in rows {
        let d = p.decide_str(ip(client), host, 443);
        assert_eq!(
            (d.verdict, d.reason, d.client.as_deref()),
            (*verdict, *reason, *name),
            "{client} -> {host}"
        );
    }
}

#[test]
fn report_mode_reports_what_enforce_would_deny_but_not_bad_requests_or_guarded_ips() {
    let p = policy(
        "version: 1\nmode: report\nallow: [ok.example.com, \"10.0.0.0/8:443\"]\nclients:\n  - name: strict\n    sources: [127.0.0.5]\n    mode: enforce\n  - name: inherits\n    sources: [127.0.0.6]\n",
    );
    let d = p.decide_str(ip("127.0.0.6"), "other.example.com", 443);
    assert_eq!((d.verdict, d.reason), (Report, NotAllowed));
    assert_eq!(p.decide_str(ip("127.0.0.6"), "10.0.0.1", 443).verdict, Deny);
    assert_eq!(
        p.decide_str(ip("127.0.0.6"), "10.0.0.1", 443).reason,
        BlockedIp
    );
    assert_eq!(
        p.decide_str(ip("127.0.0.5"), "other.example.com", 443)
            .verdict,
        Deny
    );
    assert_eq!(
        p.decide_str(ip("192.0.2.1"), "ok.example.com", 443).verdict,
        Report
    );
    assert_eq!(
        p.decide_str(ip("192.0.2.1"), "ok.example.com", 443).reason,
        ClientNotAllowed
    );
    let bad = p.decide_str(ip("127.0.0.6"), "0x7f.1", 443);
    assert_eq!((bad.verdict, bad.reason), (Deny, BadRequest));
}
