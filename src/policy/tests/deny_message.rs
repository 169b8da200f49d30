//! `deny_message`: one printable line per policy and per client, added to refusals.

use super::super::diagnostic::Code;
use super::super::*;
use super::policy;

#[test]
fn a_client_message_replaces_the_top_level_one_and_others_inherit_it() {
    let p = policy(
        r#"
version: 1
deny_message: "ask for access in #egress-requests"
allow: [api.stripe.com]
clients:
  - name: payments
    sources: [10.0.1.0/24]
    deny_message: "payments: file a PAY ticket"
  - name: batch
    sources: [10.0.2.0/24]
"#,
    );
    assert!(p.has_deny_messages);
    assert_eq!(
        p.deny_message_for(Some("payments")).as_deref(),
        Some("payments: file a PAY ticket")
    );
    assert_eq!(
        p.deny_message_for(Some("batch")).as_deref(),
        Some("ask for access in #egress-requests")
    );
    assert_eq!(
        p.deny_message_for(None).as_deref(),
        Some("ask for access in #egress-requests")
    );
}

#[test]
fn without_a_message_nothing_is_added() {
    let p = policy(
        "version: 1\nallow: [api.stripe.com]\nclients:\n  - name: a\n    sources: [10.0.0.0/8]\n",
    );
    assert!(!p.has_deny_messages);
    assert_eq!(p.deny_message_for(Some("a")), None);
    assert_eq!(p.deny_message_for(None), None);
}

#[test]
fn a_message_that_is_not_one_short_printable_line_is_an_error_where_it_is_written() {
    let long = "x".repeat(201);
    let cases = [
        ("\"two\\nlines\"", 2),
        ("\"tab\\there\"", 2),
        ("\"bell\\u0007\"", 2),
        ("\"\"", 2),
        (long.as_str(), 2),
    ];
    for (value, line) in cases {
        let yaml = format!(
            "version: 1\ndeny_message: {value}\nclients:\n  - name: a\n    sources: [10.0.0.0/8]\n    deny_message: {value}\n"
        );
        let errors = Policy::from_yaml(&yaml).unwrap_err();
        let found: Vec<(Code, u64)> = errors.iter().map(|d| (d.code, d.line)).collect();
        assert_eq!(
            found,
            [(Code::BadDenyMessage, line), (Code::BadDenyMessage, 6)],
            "{value}: {errors:?}"
        );
    }
    // 200 characters, non-ASCII included, is fine.
    let fits = format!("version: 1\ndeny_message: \"{}é\"\n", "x".repeat(199));
    assert!(Policy::from_yaml(&fits).is_ok());
}
