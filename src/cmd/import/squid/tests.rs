//! The Squid importer against a small reference Squid (first matching
//! `http_access` line; an ACL's values OR, a line's ACLs AND; the implicit
//! last line), on a table of probes. A row whose decisions differ must say
//! why, and every such difference is one the output's comments announce.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use crate::policy::Policy;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/import/squid");

/// Reference Squid: the access decision for (source, host, port, CONNECT).
struct RefSquid {
    acls: HashMap<String, (String, Vec<String>)>,
    rules: Vec<(bool, Vec<(bool, String)>)>,
}

impl RefSquid {
    fn load(text: &str) -> RefSquid {
        let mut acls: HashMap<String, (String, Vec<String>)> = HashMap::new();
        for (n, k, v) in [
            ("all", "src", "0.0.0.0/0 ::/0"),
            ("localhost", "src", "127.0.0.1/32 ::1/128"),
            (
                "to_localhost",
                "dst",
                "127.0.0.0/8 0.0.0.0/32 ::1/128 ::/128",
            ),
            ("manager", "manager", ""),
        ] {
            acls.insert(
                n.into(),
                (k.into(), v.split_whitespace().map(String::from).collect()),
            );
        }
        let mut rules = Vec::new();
        let joined = text.replace("\\\n", " ");
        for line in joined.lines() {
            let line = line.split(" #").next().unwrap_or("");
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["acl", name, kind, values @ ..] => {
                    let mut vals = Vec::new();
                    for v in values.iter().filter(|v| !v.starts_with('-')) {
                        if let Some(f) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                            let t = std::fs::read_to_string(Path::new(DIR).join(f)).unwrap();
                            vals.extend(
                                t.lines().filter(|l| !l.starts_with('#')).map(String::from),
                            );
                        } else {
                            vals.push(v.to_string());
                        }
                    }
                    let e = acls
                        .entry(name.to_string())
                        .or_insert((kind.to_string(), Vec::new()));
                    e.1.extend(vals);
                }
                ["http_access", action, terms @ ..] => rules.push((
                    *action == "allow",
                    terms
                        .iter()
                        .map(|t| match t.strip_prefix('!') {
                            Some(n) => (true, n.to_string()),
                            None => (false, t.to_string()),
                        })
                        .collect(),
                )),
                _ => {}
            }
        }
        RefSquid { acls, rules }
    }

    fn matches(&self, name: &str, p: &Probe) -> bool {
        let (kind, values) = &self.acls[name];
        let ip = |v: &String| {
            v.parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
        };
        match kind.as_str() {
            "src" => values
                .iter()
                .any(|v| ip(v).is_ok_and(|n| n.contains(&p.src))),
            "dst" => p
                .host
                .parse::<IpAddr>()
                .is_ok_and(|h| values.iter().any(|v| ip(v).is_ok_and(|n| n.contains(&h)))),
            "dstdomain" => values.iter().any(|v| match v.strip_prefix('.') {
                Some(d) => p.host == d || p.host.ends_with(&format!(".{d}")),
                None => p.host == *v,
            }),
            "port" => values.iter().any(|v| {
                let (lo, hi) = v.split_once('-').unwrap_or((v, v));
                (lo.parse::<u16>().unwrap()..=hi.parse::<u16>().unwrap()).contains(&p.port)
            }),
            "method" => p.connect && values.iter().any(|v| v == "CONNECT"),
            // The probes are made at night, to hosts no regex matches,
            // never to the cache manager.
            _ => false,
        }
    }

    fn allows(&self, p: &Probe) -> bool {
        for (allow, terms) in &self.rules {
            if terms.iter().all(|(neg, n)| self.matches(n, p) != *neg) {
                return *allow;
            }
        }
        // The implicit last line is the opposite of the last one written.
        self.rules.last().is_some_and(|(allow, _)| !allow)
    }
}

struct Probe {
    src: IpAddr,
    host: String,
    port: u16,
    connect: bool,
}

/// (what it pins, source, host, port, CONNECT, why the decisions differ).
type Row = (
    &'static str,
    &'static str,
    &'static str,
    u16,
    bool,
    Option<&'static str>,
);

fn compare(file: &str, rows: &[Row]) {
    let text = std::fs::read_to_string(Path::new(DIR).join(file)).unwrap();
    let policy_text = super::import(&text, Path::new(DIR)).unwrap().render();
    let checked = crate::policy::compile::check(
        &policy_text,
        crate::policy::date::Date::from_unix_seconds(0),
    );
    let compiled = checked
        .compiled
        .unwrap_or_else(|| panic!("{policy_text}\n{:?}", checked.problems));
    let policy: &Policy = &compiled.policy;
    let squid = RefSquid::load(&text);
    for (name, src, host, port, connect, differs) in rows {
        let probe = Probe {
            src: src.parse().unwrap(),
            host: host.to_string(),
            port: *port,
            connect: *connect,
        };
        let want = squid.allows(&probe);
        let got = policy.decide_str(probe.src, host, *port).verdict.permits();
        match differs {
            None => assert_eq!(
                got, want,
                "{name}: squid {want}, portcullis {got}\n{policy_text}"
            ),
            Some(why) => assert_ne!(
                got, want,
                "{name}: expected to differ ({why})\n{policy_text}"
            ),
        }
    }
}

#[test]
fn corporate_config_decides_like_squid() {
    let rows: &[Row] = &[
        (
            "office host to an allowed site",
            "10.1.2.3",
            "api.github.com",
            443,
            true,
            None,
        ),
        (
            "the apex of a dotted domain",
            "10.1.2.3",
            "github.com",
            443,
            true,
            None,
        ),
        (
            "a name from the ACL file",
            "192.168.1.9",
            "chat.slack.com",
            443,
            true,
            None,
        ),
        (
            "exact name only",
            "10.1.2.3",
            "x.api.stripe.com",
            443,
            true,
            None,
        ),
        (
            "CONNECT to a non-SSL port",
            "10.1.2.3",
            "api.github.com",
            8443,
            true,
            None,
        ),
        (
            "build runner: build sites",
            "10.20.0.5",
            "registry-1.docker.io",
            443,
            true,
            None,
        ),
        (
            "build runner keeps the office sites",
            "10.20.0.5",
            "api.stripe.com",
            443,
            true,
            None,
        ),
        (
            "office host: no build sites",
            "10.1.2.3",
            "registry-1.docker.io",
            443,
            true,
            None,
        ),
        (
            "quarantined machine",
            "10.99.0.7",
            "api.github.com",
            443,
            true,
            None,
        ),
        (
            "blocked paste site",
            "10.1.2.3",
            "pastebin.com",
            443,
            true,
            None,
        ),
        ("outsider", "203.0.113.9", "api.github.com", 443, true, None),
        ("unlisted name", "10.1.2.3", "evil.example", 443, true, None),
        (
            "localhost to the manager",
            "127.0.0.1",
            "localhost",
            443,
            true,
            None,
        ),
        (
            "plain HTTP on port 80",
            "10.1.2.3",
            "github.com",
            80,
            false,
            Some(
                "stricter: portcullis cannot tell plain HTTP from CONNECT, the CONNECT ports apply (header comment)",
            ),
        ),
    ];
    compare("corporate.conf", rows);
}

#[test]
fn order_tricks_keep_first_match() {
    let rows: &[Row] = &[
        (
            "allow before a broader deny wins",
            "198.51.100.1",
            "api.example.com",
            443,
            true,
            None,
        ),
        (
            "... on any port: no port rule came before it",
            "198.51.100.1",
            "api.example.com",
            25,
            true,
            None,
        ),
        (
            "the broader deny wins over a later allow",
            "198.51.100.1",
            "www.example.com",
            443,
            true,
            None,
        ),
        (
            "deny before allow wins",
            "192.0.2.5",
            "vault.partner.test",
            443,
            true,
            None,
        ),
        (
            "the rest of the partner domain",
            "192.0.2.5",
            "app.partner.test",
            443,
            true,
            None,
        ),
        (
            "denied port",
            "192.0.2.5",
            "app.partner.test",
            25,
            true,
            None,
        ),
        (
            "other port",
            "192.0.2.5",
            "app.partner.test",
            8080,
            true,
            None,
        ),
        (
            "partner is for the office only",
            "198.51.100.1",
            "app.partner.test",
            443,
            true,
            None,
        ),
        (
            "late.test for the office",
            "192.0.2.5",
            "a.late.test",
            443,
            true,
            None,
        ),
        (
            "not in only_known",
            "192.0.2.5",
            "other.test",
            443,
            true,
            None,
        ),
    ];
    compare("order.conf", rows);
}

#[test]
fn an_empty_config_denies_everything() {
    compare(
        "empty.conf",
        &[("anything", "10.0.0.1", "example.com", 443, true, None)],
    );
}

#[test]
fn comments_name_what_was_not_carried() {
    let text = std::fs::read_to_string(Path::new(DIR).join("corporate.conf")).unwrap();
    let out = super::import(&text, Path::new(DIR)).unwrap().render();
    for needle in [
        "line 6: `include /etc/squid/conf.d/*.conf`",
        "line 33: `http_access deny tracking`: WARNING: acl `tracking` is `dstdom_regex`",
        "line 36: `http_access allow localnet office_hours`",
        "the CONNECT ports apply to both",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
}

#[test]
fn unknown_directives_and_broken_acls_become_comments() {
    let text = "frobnicate yes\nacl a dstdomain .ok.test bad_label!.test\nacl b src not-an-ip\nhttp_access allow b a\nhttp_access allow a\n";
    let out = super::import(text, Path::new(".")).unwrap().render();
    assert!(
        out.contains("line 1: `frobnicate yes`: a directive this importer does not know"),
        "{out}"
    );
    assert!(out.contains("`bad_label!.test`"), "{out}");
    assert!(
        out.contains("line 4: `http_access allow b a`: acl `b`: `not-an-ip`"),
        "{out}"
    );
    assert!(out.contains("- \"*.ok.test:*\""), "{out}");
}

#[test]
fn what_squid_itself_refuses_is_an_error_with_its_line() {
    for (text, line, says) in [
        (
            "http_access allow nosuch\n",
            1,
            "no `acl` line above defines",
        ),
        ("acl a src 10.0.0.0/8\nacl a port 80\n", 2, "another type"),
        ("acl a\n", 1, "needs a name and a type"),
        ("http_access maybe all\n", 1, "`allow` or `deny`"),
    ] {
        let e = super::import(text, Path::new(".")).unwrap_err();
        assert_eq!(e.line, line, "{text}");
        assert!(e.message.contains(says), "{}", e.message);
    }
}
