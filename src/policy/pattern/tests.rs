use super::*;

fn pat(s: &str) -> Pattern {
    parse_destination(s).unwrap().0
}

#[test]
fn destinations_parse() {
    let exact = |s: &str| Pattern::Exact(s.into());
    assert_eq!(
        parse_destination("api.stripe.com").unwrap(),
        (exact("api.stripe.com"), None)
    );
    assert_eq!(
        parse_destination("API.Stripe.com.:443").unwrap(),
        (
            exact("api.stripe.com"),
            Some(Ports::Ranges(vec![443..=443]))
        )
    );
    assert_eq!(
        parse_destination("registry.npmjs.org:443,80").unwrap().1,
        Some(Ports::Ranges(vec![443..=443, 80..=80]))
    );
    assert_eq!(
        parse_destination("h.example.com:8000-8100").unwrap().1,
        Some(Ports::Ranges(vec![8000..=8100]))
    );
    assert_eq!(
        parse_destination("h.example.com:*").unwrap().1,
        Some(Ports::Any)
    );
    assert_eq!(
        pat("*.githubusercontent.com"),
        Pattern::Suffix("githubusercontent.com".into())
    );
    assert_eq!(
        pat("api-*.Example.com"),
        Pattern::Glob {
            any_depth: false,
            labels: "api-*.example.com".into()
        }
    );
    assert_eq!(
        pat("203.0.113.0/24"),
        Pattern::Net("203.0.113.0/24".parse().unwrap())
    );
    assert_eq!(
        pat("203.0.113.7:443"),
        Pattern::Net("203.0.113.7/32".parse().unwrap())
    );
    assert_eq!(
        pat("[2001:db8::/32]:443"),
        Pattern::Net("2001:db8::/32".parse().unwrap())
    );
    assert_eq!(
        pat("[2001:db8::1]"),
        Pattern::Net("2001:db8::1/128".parse().unwrap())
    );
    assert_eq!(pat("bücher.de"), exact("xn--bcher-kva.de"));
    assert_eq!(
        pat("*.bücher.de"),
        Pattern::Suffix("xn--bcher-kva.de".into())
    );
}

#[test]
fn bad_destinations_are_errors() {
    for bad in [
        "",
        "*",
        "*.",
        "**.example.com",
        "*.*",
        "example.*",
        "api.example.c*",
        "a**b.example.com",
        "example.com:0",
        "example.com:65536",
        "example.com:-1",
        "example.com:+443",
        "example.com:0443",
        "example.com:",
        "example.com:http",
        "example.com:90-80",
        "203.0.113.5/24",
        "10.0.0.0/33",
        "2001:db8::1",
        "[2001:db8::1",
        "[203.0.113.0/24]",
        "[2001:db8::1]x",
        "0x7f.1",
        "2130706433",
        "exa mple.com",
        "example..com",
        "foo_*bar!.example.com",
    ] {
        assert!(
            parse_destination(bad).is_err(),
            "{bad:?} should be an error"
        );
    }
}

#[test]
fn naive_matching_is_anchored_on_labels() {
    let host = |s: &str| Host::parse(s).unwrap();
    let suffix = pat("*.example.com");
    assert!(suffix.matches(&host("a.example.com")));
    assert!(suffix.matches(&host("a.b.c.example.com")));
    assert!(!suffix.matches(&host("example.com")));
    assert!(!suffix.matches(&host("xexample.com")));
    assert!(!suffix.matches(&host("example.com.evil.net")));
    let glob = pat("api-*.example.com");
    assert!(glob.matches(&host("api-1.example.com")));
    assert!(glob.matches(&host("api-.example.com")));
    assert!(!glob.matches(&host("api-1.x.example.com")));
    assert!(!glob.matches(&host("x.api-1.example.com")));
    assert!(!glob.matches(&host("api.example.com")));
    let deep = pat("*.api-*.example.com");
    assert!(deep.matches(&host("a.api-1.example.com")));
    assert!(deep.matches(&host("a.b.api-1.example.com")));
    assert!(!deep.matches(&host("api-1.example.com")));
    let mid = pat("api.*.example.com");
    assert!(mid.matches(&host("api.eu.example.com")));
    assert!(!mid.matches(&host("api.a.b.example.com")));
}

#[test]
fn wildcard_tail_is_the_anchor() {
    assert_eq!(
        pat("*.s3.amazonaws.com").wildcard_tail(),
        Some("s3.amazonaws.com")
    );
    assert_eq!(
        pat("bucket-*.s3.amazonaws.com").wildcard_tail(),
        Some("s3.amazonaws.com")
    );
    assert_eq!(pat("api.example.com").wildcard_tail(), None);
}

#[test]
fn ports_cover() {
    let p = |s: &str| parse_ports(s).unwrap();
    assert!(Ports::Any.covers(&p("443")));
    assert!(p("1-1000").covers(&p("443,80")));
    assert!(!p("443").covers(&p("443,80")));
    assert!(!p("443").covers(&Ports::Any));
}

#[test]
fn names_ports_agrees_with_the_parse() {
    for text in [
        "api.example.com",
        "api.example.com:443",
        " *.example.com:8000-8100 ",
        "10.0.0.0/8:*",
        "[2001:db8::/32]",
        "[2001:db8::1]:443",
        "api-*.example.com:443,8443",
    ] {
        let (_, ports) = parse_destination(text).unwrap();
        assert_eq!(names_ports(text), ports.is_some(), "{text}");
    }
}
