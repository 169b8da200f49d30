//! Clients recognised by certificate, token and VPC endpoint as well as by
//! source: AND across selector kinds, first match wins, `407` when tokens are in use.

use std::sync::Arc;

use super::super::*;
use super::policy;
use Reason::*;
use Verdict::{Allow, Deny};

fn digest(token: &str) -> String {
    TokenDigest::of(token.as_bytes()).to_selector()
}

fn shared_service() -> Policy {
    policy(&format!(
        r#"
version: 1
allow: [api.stripe.com]
clients:
  - name: payments
    sources: [10.0.1.0/24]
    tokens: ["{pay}"]
    allow: [api.paypal.com]
  - name: mesh
    certificates: ["spiffe://acme.internal/ns/mesh/sa/api", "dns:mesh.internal"]
  - name: partner
    vpc_endpoints: [vpce-0a1b2c3d4e5f67890]
  - name: office
    sources: [192.0.2.0/24]
"#,
        pay = digest("pay-token")
    ))
}

fn creds(addr: &str) -> Credentials {
    Credentials::from(addr.parse::<std::net::IpAddr>().unwrap())
}

fn with_token(mut c: Credentials, user: &str, token: &str) -> Credentials {
    c.token = Some(PresentedToken {
        user: user.into(),
        digest: TokenDigest::of(token.as_bytes()),
    });
    c
}

/// (what, caller) -> (verdict, reason, client, identity).
type Row = (
    &'static str,
    Credentials,
    Verdict,
    Reason,
    Option<&'static str>,
    Option<&'static str>,
);

/// Named rows.
#[test]
fn callers_match_the_first_client_all_of_whose_selectors_match() {
    let p = shared_service();
    let mut mesh = creds("10.9.9.9");
    mesh.certificate = Arc::from([CertName::Dns("mesh.internal".into())]);
    let mut partner = creds("10.9.9.9");
    partner.vpc_endpoint = Some("vpce-0a1b2c3d4e5f67890".into());
    let rows: Vec<Row> = vec![
        (
            "token and source of payments",
            with_token(creds("10.0.1.5"), "svc", "pay-token"),
            Allow,
            Allowed,
            Some("payments"),
            Some("token:svc"),
        ),
        (
            "payments' source without its token asks for a token",
            creds("10.0.1.5"),
            Deny,
            ProxyAuthRequired,
            None,
            None,
        ),
        (
            "payments' token from the office's source: AND, so the office (source only)",
            with_token(creds("192.0.2.7"), "svc", "pay-token"),
            Allow,
            Allowed,
            Some("office"),
            None,
        ),
        (
            "payments' token from an unknown source",
            with_token(creds("10.0.2.5"), "svc", "pay-token"),
            Deny,
            ProxyAuthRequired,
            None,
            None,
        ),
        (
            "a wrong token from payments' source",
            with_token(creds("10.0.1.5"), "svc", "guess"),
            Deny,
            ProxyAuthRequired,
            None,
            None,
        ),
        (
            "a certificate DNS name",
            mesh,
            Allow,
            Allowed,
            Some("mesh"),
            Some("dns:mesh.internal"),
        ),
        (
            "a VPC endpoint",
            partner,
            Allow,
            Allowed,
            Some("partner"),
            Some("vpce-0a1b2c3d4e5f67890"),
        ),
    ];
    for (what, caller, verdict, reason, client, identity) in rows {
        let d = p.decide_str(&caller, "api.stripe.com", 443);
        assert_eq!(
            (
                d.verdict,
                d.reason,
                d.client.as_deref(),
                d.identity.as_ref().map(|i| i.name.as_str())
            ),
            (verdict, reason, client, identity),
            "{what}"
        );
    }
    let d = p.decide_str(
        &with_token(creds("10.0.1.5"), "svc", "pay-token"),
        "api.paypal.com",
        443,
    );
    assert_eq!((d.verdict, d.used), (Allow, [false, true, false]));
}

#[test]
fn without_tokens_an_unmatched_caller_is_client_not_allowed() {
    let p = policy(
        "version: 1\nallow: [a.example]\nclients:\n  - name: mesh\n    certificates: [\"cn:mesh\"]\n",
    );
    assert!(!p.uses_tokens);
    let d = p.decide_str(&creds("10.0.0.1"), "a.example", 443);
    assert_eq!((d.verdict, d.reason), (Deny, ClientNotAllowed));
    let host = Host::parse("a.example").unwrap();
    let detail = p.refusal_detail(&creds("10.0.0.1"), &host, 443, &d);
    assert_eq!(detail, "source 10.0.0.1 matches no client");
}

#[test]
fn refusals_say_what_was_presented_but_never_the_token() {
    let p = shared_service();
    let host = Host::parse("api.stripe.com").unwrap();
    let caller = with_token(creds("10.0.2.5"), "svc", "pay-token");
    let d = p.decide(&caller, &host, 443);
    let detail = p.refusal_detail(&caller, &host, 443, &d);
    assert_eq!(
        detail,
        "source 10.0.2.5, token of user `svc` matches no client"
    );
    assert!(!detail.contains("pay-token"));
    let bare = creds("10.0.2.5");
    let d = p.decide(&bare, &host, 443);
    let detail = p.refusal_detail(&bare, &host, 443, &d);
    assert!(
        detail.ends_with("send a token (Proxy-Authorization)"),
        "{detail}"
    );
}

/// Every malformed selector is an error at its own line and column, all in one run.
#[test]
fn malformed_selectors_are_errors_with_line_and_column() {
    let yaml = r#"version: 1
clients:
  - name: a
    tokens: ["sha256:abcd"]
  - name: b
    certificates: ["ou:payments"]
  - name: c
    vpc_endpoints: [vpce-123]
  - name: d
    allow: [a.example]
  - name: e
    sources: []
"#;
    let errors = Policy::from_yaml(yaml).unwrap_err();
    let at: Vec<(u64, u64)> = errors.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(
        at,
        [(4, 14), (6, 20), (8, 21), (9, 11), (12, 14)],
        "{errors:#?}"
    );
    assert!(
        errors[0].message.contains("64 hex digits"),
        "{}",
        errors[0].message
    );
    assert!(errors[1].message.contains("certificate selector"));
    assert!(errors[2].message.contains("VPC endpoint id"));
    assert!(errors[3].message.contains("no selector"));
    assert!(errors[4].message.contains("has no sources"));
}
