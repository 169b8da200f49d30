//! The index agrees with the naive matcher over random hosts and patterns.

use proptest::prelude::*;

use super::super::pattern::parse_destination;
use super::super::*;
use super::{A, ip, policy};
use Verdict::Allow;

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("api".to_string()),
        Just("api-1".to_string()),
        Just("com".to_string()),
        "[a-c]{1,3}",
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5).prop_map(|l| l.join("."))
}

fn pattern_text() -> impl Strategy<Value = String> {
    let port = prop_oneof![
        Just(""),
        Just(":443"),
        Just(":80"),
        Just(":80-443"),
        Just(":*")
    ];
    let host = prop_oneof![
        name(),
        name().prop_map(|n| format!("*.{n}")),
        (
            name(),
            prop_oneof![Just("api-*"), Just("*-1"), Just("a*"), Just("*")]
        )
            .prop_map(|(n, g)| format!("{g}.{n}")),
        (name(), name()).prop_map(|(a, b)| format!("*.{a}-*.{b}")),
        prop_oneof![
            Just("127.0.0.0/8"),
            Just("0.0.0.0/0"),
            Just("127.0.0.1"),
            Just("[::1/128]")
        ]
        .prop_map(String::from),
    ];
    (host, port).prop_map(|(h, p)| format!("{h}{p}"))
}

fn host_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => name(),
        1 => Just("127.0.0.1".to_string()),
        1 => Just("[::1]".to_string()),
        1 => Just("8.8.8.8".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn index_agrees_with_naive_matcher(
        allow in prop::collection::vec(pattern_text(), 0..12),
        deny in prop::collection::vec(pattern_text(), 0..4),
        hosts in prop::collection::vec((host_text(), prop_oneof![Just(443u16), Just(80), Just(8080)]), 1..16),
    ) {
        let quote = |l: &[String]| l.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        let yaml = format!(
            "version: 1\nallow: [{}]\ndeny: [{}]\nip_guard:\n  blocked: []\n",
            quote(&allow), quote(&deny)
        );
        let p = policy(&yaml);
        let naive = |list: &[String], default_any: bool, host: &Host, port: u16| {
            list.iter().any(|t| {
                let (pat, ports) = parse_destination(t).unwrap();
                let ports = ports.unwrap_or(if default_any { pattern::Ports::Any } else { pattern::Ports::Ranges(vec![443..=443]) });
                ports.contains(port) && pat.matches(host)
            })
        };
        for (h, port) in hosts {
            let host = Host::parse(&h).unwrap();
            // "allowed only on other ports": every rule for the host, whatever its ports
            let indexed: Vec<&str> = p.allow.matching_host(&host).iter().map(|r| &*r.text).collect();
            let all: Vec<&str> = p.allow.rules().iter().filter(|r| r.pattern.matches(&host)).map(|r| &*r.text).collect();
            prop_assert_eq!(indexed, all, "{} in\n{}", h, yaml);
            let d = p.decide(ip(A), &host, port);
            let want = !naive(&deny, true, &host, port) && naive(&allow, false, &host, port);
            prop_assert_eq!(d.verdict == Allow, want, "{}:{} in\n{}", h, port, yaml);
            // whichever rule the index names must itself match
            if let Some(rule) = &d.rule {
                let (pat, _) = parse_destination(rule).unwrap();
                prop_assert!(pat.matches(&host), "rule {} does not match {}", rule, h);
            }
        }
    }

    #[test]
    fn normalisation_is_idempotent(raw in "[a-zA-Z0-9ÀßéüÜ.-]{1,40}\\.?") {
        if let Ok(once) = Host::parse(&raw) {
            let twice = Host::parse(&once.to_string()).expect("a normalised host parses again");
            prop_assert_eq!(once, twice);
        }
    }

    #[test]
    fn parsing_never_panics(raw in "\\PC{0,80}") {
        let _ = Host::parse(&raw);
        let _ = parse_destination(&raw);
    }
}
