//! A policy made of several files: lists concatenate, settings are set once, problems name their file.

use super::super::compile::{Source, check_sources, compile, compile_sources};
use super::super::date::Date;

fn sources<'a>(files: &[(&'a str, &'a str)]) -> Vec<Source<'a>> {
    (files.iter())
        .map(|&(name, text)| Source {
            name: Some(name),
            text,
        })
        .collect()
}

fn problems(files: &[(&str, &str)]) -> Vec<String> {
    let checked = check_sources(&sources(files), Date::from_days(0));
    (checked.problems.iter())
        .map(|d| format!("{}:{d}", d.file.as_deref().unwrap_or("-")))
        .collect()
}

const BASE: &str = "version: 1\nmode: enforce\ndefault_ports: [443, 8443]\nallow:\n  - a.example\ndeny:\n  - evil.example\n";

#[test]
fn lists_concatenate_in_file_order_and_settings_apply_to_every_file() {
    let team = "version: 1\nallow:\n  - b.example\nclients:\n  - name: payments\n    sources: [10.0.1.0/24]\n    allow: [pay.example]\n";
    let compiled =
        compile_sources(&sources(&[("00-base.yaml", BASE), ("10-pay.yaml", team)])).expect("valid");
    let policy = &compiled.policy;
    let texts: Vec<&str> = policy.allow.rules().iter().map(|r| &*r.text).collect();
    assert_eq!(texts, ["a.example", "b.example"]);
    let b = &policy.allow.rules()[1];
    assert_eq!(b.place(), "10-pay.yaml line 3");
    assert_eq!(policy.allow.rules()[0].place(), "00-base.yaml line 5");
    let clients = policy.clients.as_ref().expect("clients from the team file");
    assert_eq!(&*clients[0].name, "payments");
    let ip = std::net::IpAddr::from([10, 0, 1, 7]);
    // The base file's default_ports reach the team file's rules.
    assert!(policy.decide_str(ip, "pay.example", 8443).verdict.permits());
    assert!(policy.decide_str(ip, "b.example", 8443).verdict.permits());
    assert!(!policy.decide_str(ip, "evil.example", 443).verdict.permits());
}

#[test]
fn a_setting_in_two_files_is_an_error_naming_both() {
    let other = "version: 1\nallow: [b.example]\nmode: report\n";
    assert_eq!(
        problems(&[("00-base.yaml", BASE), ("20-x.yaml", other)]),
        [
            "20-x.yaml:3:1: error[duplicate-key]: `mode` is set in 00-base.yaml line 2 and again here; each file of a policy directory may add rules and clients, but `mode` is set in one file only (hint: keep `mode` in one file (the platform's base file) and remove it here)"
        ]
    );
    let guard = "version: 1\nip_guard:\n  blocked: default\n";
    let errors = compile_sources(&sources(&[("a.yaml", guard), ("b.yaml", guard)]))
        .expect_err("two ip_guard");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file.as_deref(), Some("b.yaml"));
    assert_eq!((errors[0].line, errors[0].column), (2, 1));
    assert!(
        errors[0].message.contains("a.yaml line 2"),
        "{}",
        errors[0].message
    );
}

#[test]
fn a_client_defined_in_two_files_is_an_error_naming_both() {
    let a = "version: 1\nclients:\n  - name: payments\n    sources: [10.0.1.0/24]\n";
    let b = "version: 1\n\nclients:\n  - name: payments\n    sources: [10.0.2.0/24]\n";
    let got = problems(&[("10-a.yaml", a), ("20-b.yaml", b)]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("20-b.yaml:4:11: error[duplicate-client]: client `payments` is defined twice: first at 10-a.yaml line 3"),
        "{got:?}"
    );
}

#[test]
fn every_file_is_checked_and_problems_name_their_file() {
    let broken = "version: 1\nallow: [a.example\n";
    let no_version = "allow: [b.example:0]\n";
    let got = problems(&[
        ("a.yaml", broken),
        ("b.yaml", no_version),
        ("c.yaml", "# x\n"),
    ]);

    assert_eq!(got.len(), 4, "{got:?}");
    assert!(
        got[0].starts_with("a.yaml:2:8: error[yaml-syntax]"),
        "{got:?}"
    );
    assert!(
        got[1].starts_with("b.yaml:1:1: error[missing-key]"),
        "{got:?}"
    );
    assert!(got[2].starts_with("b.yaml:1:9: error[bad-port]"), "{got:?}");
    assert!(
        got[3].starts_with("c.yaml:1:1: error[empty-file]"),
        "{got:?}"
    );
    assert!(compile_sources(&[]).is_err(), "no file is no policy");
}

#[test]
fn warnings_and_ignore_comments_stay_in_their_file() {
    let a = "version: 1\nallow:\n  - \"*.co.uk\"  # portcullis: ignore[public-suffix-wildcard]\n";
    let b = "version: 1\nallow:\n  - \"*.co.uk\"\n";
    let got = problems(&[("a.yaml", a), ("b.yaml", b)]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("b.yaml:3:5: warning[duplicate-rule]"),
        "{got:?}"
    );
    assert!(
        got[1].starts_with("b.yaml:3:5: warning[public-suffix-wildcard]"),
        "{got:?}"
    );
}

#[test]
fn a_single_file_keeps_its_plain_positions() {
    let compiled = compile(BASE).expect("valid");
    let rule = &compiled.policy.allow.rules()[0];
    assert_eq!(
        (rule.file.as_deref(), rule.place()),
        (None, "line 5".to_string())
    );
}
