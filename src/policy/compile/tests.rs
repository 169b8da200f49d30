use super::*;

fn codes(text: &str) -> Vec<&'static str> {
    check(text, Date::from_days(0))
        .problems
        .iter()
        .map(|d| d.code.as_str())
        .collect()
}

#[test]
fn unknown_keys_are_reported_beside_a_type_error() {
    assert_eq!(
        codes("version: 1\nalow: [x.example]\nallow: oops\n"),
        ["unknown-key", "invalid-value"]
    );
}

#[test]
fn a_policy_with_an_unknown_key_never_loads() {
    let errors = compile("version: 1\nallow: [a.example]\ntls: {sni_must_mach: false}\n")
        .expect_err("an unknown key is an error");
    assert_eq!(errors[0].code, Code::UnknownKey);
    assert_eq!((errors[0].line, errors[0].column), (3, 7));
}

#[test]
fn warnings_come_with_errors_and_ignore_comments_apply() {
    let text = "version: 1\nmode: report  # portcullis: ignore[report-mode]\nallow:\n  - \"*.co.uk\"\n  - a.example:0\n";
    assert_eq!(codes(text), ["public-suffix-wildcard", "bad-port"]);
    let checked = check(text, Date::from_days(0));
    assert!(checked.compiled.is_none());
}

#[test]
fn an_empty_or_comment_only_file_is_empty() {
    assert_eq!(codes(""), ["empty-file"]);
    assert_eq!(codes("# nothing\n\n---\n"), ["empty-file"]);
    assert_eq!(codes("~\n"), ["invalid-value"]);
}

#[test]
fn rules_may_carry_metadata_and_expire_without_changing_decisions() {
    let text = "version: 1\nallow:\n  - a.example\n  - {dest: b.example, owner: o, ticket: T-1, expires: 2027-01-31, note: n}\ndeny:\n  - {dest: c.example, expires: 2020-01-01}\n";
    let compiled = compile(text).expect("valid");
    let policy = &compiled.policy;
    let b = &policy.allow.rules()[1];
    assert_eq!((b.owner(), b.ticket()), (Some("o"), Some("T-1")));
    assert_eq!((b.line, b.column), (4, 12));
    assert_eq!(policy.allow.rules()[0].meta, None);
    let day = |t| Date::parse(t).unwrap();
    assert_eq!(policy.expired_rules(day("2027-01-31")).len(), 1);
    assert_eq!(policy.expired_rules(day("2027-02-01")).len(), 2);
    // Expired or not, b.example is allowed and c.example denied.
    let ip = std::net::IpAddr::from([10, 0, 0, 1]);
    assert!(policy.decide_str(ip, "b.example", 443).verdict.permits());
    assert!(!policy.decide_str(ip, "c.example", 443).verdict.permits());
    let codes = |today| {
        compiled
            .warnings(day(today))
            .iter()
            .map(|d| (d.line, d.code.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(codes("2020-01-01"), vec![]);
    assert_eq!(
        codes("2027-02-01"),
        vec![(4, "expired-rule"), (6, "expired-rule")]
    );
}
