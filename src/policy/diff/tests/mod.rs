//! What `diff` reports for each kind of change; `property.rs`: when it
//! reports nothing, both policies decide alike.

mod property;

use std::net::IpAddr;

use super::*;

fn p(yaml: &str) -> Policy {
    match Policy::from_yaml(yaml) {
        Ok(c) => c.policy,
        Err(e) => panic!("test policy does not compile: {e:?}\n{yaml}"),
    }
}

/// `(client, kind)` of each change, `-` for the top level.
fn kinds(changes: &[Change]) -> Vec<(String, String)> {
    changes
        .iter()
        .map(|c| {
            let json = serde_json::to_value(c).unwrap();
            (
                c.client.clone().unwrap_or_else(|| "-".into()),
                json["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_widened_wildcard_shows_as_the_wildcard_and_ports_print_on_one_line() {
    let old = p("version: 1\nallow: [a.example.com, registry.npmjs.org]\n");
    let new = p(
        "version: 1\nallow: [\"*.example.com\", \"registry.npmjs.org:443,80\", y.x.example.com]\n",
    );
    let text = render(&diff(&old, &new));
    assert_eq!(
        text,
        "top level (every client):\n  + allow *.example.com:443\n  ~ allow registry.npmjs.org: 443 → 443,80\n"
    );
}

#[test]
fn a_client_keeps_what_moves_to_the_top_level_and_top_level_changes_print_once() {
    let old = p(
        "version: 1\nallow: [a.example.com]\nclients:\n  - name: pay\n    sources: [10.0.1.0/24]\n    allow: [b.example.com]\n  - name: ops\n    sources: [10.0.2.0/24]\n",
    );
    let new = p(
        "version: 1\nallow: [a.example.com, b.example.com, c.example.com]\nclients:\n  - name: pay\n    sources: [10.0.1.0/24]\n  - name: ops\n    sources: [10.0.2.0/24]\n",
    );
    let changes = diff(&old, &new);
    assert_eq!(
        kinds(&changes),
        [
            ("-".into(), "destination".into()),
            ("-".into(), "destination".into())
        ],
        "{}",
        render(&changes)
    );
    assert_eq!(
        render(&changes),
        "top level (every client):\n  + allow b.example.com:443\n  + allow c.example.com:443\n"
    );
}

#[test]
fn moves_between_clients_are_named() {
    let old = p(
        "version: 1\nclients:\n  - name: pay\n    sources: [10.0.1.0/24]\n  - name: batch\n    sources: [10.0.0.0/16]\n  - name: old\n    sources: [10.9.0.0/16]\n",
    );
    let new = p(
        "version: 1\nclients:\n  - name: batch\n    sources: [10.0.0.0/16]\n  - name: pay\n    sources: [10.0.1.0/24]\n  - name: ops\n    sources: [10.9.0.0/24]\n",
    );
    let text = render(&diff(&old, &new));
    for line in [
        "  ~ client order: `pay`, `batch`, `old` → `batch`, `pay`, `ops`",
        "      10.0.1.0/24 now matched by `batch` instead of `pay`",
        "+ client `ops` (new, position 3)",
        "    sources: 10.9.0.0/24",
        "    takes 10.9.0.0/24 from `old`",
        "- client `old` (removed, was position 3)",
        "    10.9.0.0/24 now matched by `ops`",
        "    10.9.1.0/24, 10.9.2.0/23, 10.9.4.0/22, 10.9.8.0/21, 10.9.16.0/20, 10.9.32.0/19, 10.9.64.0/18, 10.9.128.0/17 now refused: no client lists it (client_not_allowed)",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[test]
fn a_source_widened_over_another_client_says_what_it_takes() {
    let old = p(
        "version: 1\nclients:\n  - name: pay\n    sources: [10.0.1.0/24]\n  - name: batch\n    sources: [10.0.2.0/24]\n",
    );
    let new = p(
        "version: 1\nclients:\n  - name: pay\n    sources: [0.0.0.0/0]\n  - name: batch\n    sources: [10.0.2.0/24]\n",
    );
    let changes = diff(&old, &new);
    assert_eq!(kinds(&changes), [("pay".into(), "selector".into())]);
    assert_eq!(
        changes[0].text,
        "~ sources widened: 10.0.1.0/24 → 0.0.0.0/0 (every IPv4 address)\n    takes 10.0.2.0/24 from `batch`"
    );
}

#[test]
fn a_top_level_mode_change_names_the_clients_it_does_not_reach() {
    let old = p(
        "version: 1\nclients:\n  - name: pay\n    sources: [10.0.1.0/24]\n  - name: strict\n    sources: [10.0.2.0/24]\n    mode: enforce\n",
    );
    let new = p(
        "version: 1\nmode: report\nclients:\n  - name: pay\n    sources: [10.0.1.0/24]\n  - name: strict\n    sources: [10.0.2.0/24]\n    mode: enforce\n",
    );
    let changes = diff(&old, &new);
    assert_eq!(kinds(&changes), [("-".into(), "mode".into())]);
    assert!(
        changes[0]
            .text
            .starts_with("~ mode: enforce → report (unrestricted")
    );
    assert!(
        changes[0]
            .text
            .ends_with("clients that keep their own mode: `strict`"),
        "{}",
        changes[0].text
    );
    // A client that sets report on its own while the top level stays enforce.
    let own = p(
        "version: 1\nclients:\n  - name: pay\n    sources: [10.0.1.0/24]\n    mode: report\n  - name: strict\n    sources: [10.0.2.0/24]\n    mode: enforce\n",
    );
    assert_eq!(kinds(&diff(&old, &own)), [("pay".into(), "mode".into())]);
}

#[test]
fn the_clients_section_appearing_is_one_change_plus_each_client() {
    let old = p("version: 1\nallow: [a.example.com]\n");
    let new = p(
        "version: 1\nallow: [a.example.com]\nclients:\n  - name: pay\n    sources: [10.0.1.0/24]\n",
    );
    assert_eq!(
        kinds(&diff(&old, &new)),
        [
            ("-".into(), "clients_section".into()),
            ("pay".into(), "client_added".into())
        ]
    );
    let back = diff(&new, &old);
    assert_eq!(back.len(), 2);
    assert!(
        back[1]
            .text
            .contains("10.0.1.0/24 now gets the top-level rules"),
        "{}",
        back[1].text
    );
}

#[test]
fn guard_changes_name_the_ranges_and_the_metadata_address() {
    let old = p("version: 1\n");
    let opened = p("version: 1\nip_guard:\n  allowed: [169.254.0.0/16]\n");
    let changes = diff(&old, &opened);
    assert_eq!(
        changes[0].text,
        "~ ip_guard: the proxy may now dial 1 range it refused before, cloud metadata (169.254.169.254) among them\n    now dialable: 169.254.0.0/16 (link-local: cloud metadata 169.254.169.254, ECS task metadata 169.254.170.2)"
    );
    let closed = p("version: 1\nip_guard:\n  blocked: [default, 203.0.113.0/24]\n");
    let changes = diff(&old, &closed);
    assert_eq!(
        changes[0].text,
        "~ ip_guard: the proxy now refuses to dial 1 range\n    now blocked: 203.0.113.0/24"
    );
    // Spelled differently, same addresses: nothing.
    let spelled = p("version: 1\nip_guard:\n  blocked: [default, 10.1.0.0/16]\n  allowed: []\n");
    assert!(diff(&old, &spelled).is_empty());
}

#[test]
fn a_guard_change_only_embedded_ipv6_forms_see_is_still_reported() {
    // Blocking the mapped range, then carving 8.8.8.0/24 out: 8.8.8.8 was
    // dialable either way, but ::ffff:8.8.8.8 only becomes dialable with the
    // carve-out.
    let old = p("version: 1\nip_guard:\n  blocked: [default, \"::ffff:0:0/96\"]\n");
    let new = p(
        "version: 1\nip_guard:\n  blocked: [default, \"::ffff:0:0/96\"]\n  allowed: [8.8.8.0/24]\n",
    );
    let mapped: IpAddr = "::ffff:8.8.8.8".parse().unwrap();
    assert_ne!(old.guard.is_dialable(mapped), new.guard.is_dialable(mapped));
    let changes = diff(&old, &new);
    assert_eq!(kinds(&changes), [("-".into(), "ip_guard".into())]);
    assert!(
        changes[0].text.contains("allowed + 8.8.8.0/24"),
        "{}",
        changes[0].text
    );
    // Without a list naming an embedding range, the same carve-out changes nothing.
    let plain = p("version: 1\nip_guard:\n  allowed: [8.8.8.0/24]\n");
    assert!(diff(&p("version: 1\n"), &plain).is_empty());
}

#[test]
fn default_ports_is_one_change_naming_the_destinations_that_take_it() {
    let old = p(
        "version: 1\nallow: [a.example.com, \"b.example.com:8443\"]\nclients:\n  - name: pay\n    sources: [10.0.1.0/24]\n    allow: [c.example.com]\n",
    );
    let new = p(
        "version: 1\ndefault_ports: [443, 80]\nallow: [a.example.com, \"b.example.com:8443\"]\nclients:\n  - name: pay\n    sources: [10.0.1.0/24]\n    allow: [c.example.com]\n",
    );
    let changes = diff(&old, &new);
    assert_eq!(kinds(&changes), [("-".into(), "default_ports".into())]);
    assert_eq!(
        changes[0].text,
        "~ default_ports: 443 → 443,80, for the destinations that name no ports:\n    a.example.com, c.example.com"
    );
    // Nothing takes the default: not a change in reach.
    let explicit = |ports: &str| {
        p(&format!(
            "version: 1\ndefault_ports: [{ports}]\nallow: [\"a.example.com:443\"]\n"
        ))
    };
    assert!(diff(&explicit("443"), &explicit("80")).is_empty());
}

#[test]
fn json_has_the_kind_the_client_and_the_text() {
    let old = p("version: 1\nallow: [registry.npmjs.org]\n");
    let new = p("version: 1\nallow: [\"registry.npmjs.org:443,80\"]\n");
    let json = serde_json::to_value(diff(&old, &new)).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{
            "client": null,
            "kind": "destination",
            "list": "allow",
            "destination": "registry.npmjs.org",
            "old_ports": "443",
            "new_ports": "443,80",
            "owner": null,
            "ticket": null,
            "text": "~ allow registry.npmjs.org: 443 → 443,80",
        }])
    );
}

#[test]
fn allow_private_added_widened_and_removed_is_a_change_in_reach() {
    let plain = "version: 1\nallow:\n  - sts.example.test\n  - api.example.test\n";
    let private = |ranges: &str| {
        format!(
            "version: 1\nallow:\n  - {{dest: sts.example.test, allow_private: [{ranges}]}}\n  - api.example.test\n"
        )
    };
    let cases = [
        (
            "added",
            plain.to_string(),
            private("10.20.0.0/16"),
            "top level (every client):\n  ~ allow sts.example.test: allow_private changed\n      now dialable by this rule: 10.20.0.0/16\n",
        ),
        (
            "widened",
            private("10.20.0.0/16"),
            private("10.20.0.0/16, 10.30.0.0/16"),
            "top level (every client):\n  ~ allow sts.example.test: allow_private changed\n      now dialable by this rule: 10.30.0.0/16\n",
        ),
        (
            "removed",
            private("10.20.0.0/16"),
            plain.to_string(),
            "top level (every client):\n  ~ allow sts.example.test: allow_private changed\n      no longer dialable by this rule: 10.20.0.0/16\n",
        ),
        (
            "split differently, same addresses",
            private("10.20.0.0/16"),
            private("10.20.128.0/17, 10.20.0.0/17"),
            "",
        ),
    ];
    for (name, old, new, want) in cases {
        let changes = diff(&p(&old), &p(&new));
        assert_eq!(render(&changes), want, "{name}");
        if !want.is_empty() {
            assert_eq!(
                kinds(&changes),
                [("-".into(), "allow_private".into())],
                "{name}"
            );
        }
    }
}

#[test]
fn a_clients_allow_private_is_reported_under_the_client() {
    let old = p(
        "version: 1\nclients:\n  - name: pay\n    sources: [10.0.1.0/24]\n    allow: [sts.example.test]\n",
    );
    let new = p(
        "version: 1\nclients:\n  - name: pay\n    sources: [10.0.1.0/24]\n    allow: [{dest: sts.example.test, allow_private: [\"fd00:1::/64\"]}]\n  - name: ops\n    sources: [10.0.2.0/24]\n    allow: [{dest: kms.example.test, allow_private: [10.9.0.0/16]}]\n",
    );
    let changes = diff(&old, &new);
    let json = serde_json::to_value(&changes).unwrap();
    assert_eq!(json[0]["client"], "pay");
    assert_eq!(json[0]["kind"], "allow_private");
    assert_eq!(json[0]["now_dialable"], serde_json::json!(["fd00:1::/64"]));
    let ops: Vec<_> = changes
        .iter()
        .filter(|c| c.client.as_deref() == Some("ops"))
        .map(|c| serde_json::to_value(c).unwrap()["kind"].clone())
        .collect();
    assert_eq!(
        ops,
        ["client_added", "allow_private"],
        "{}",
        render(&changes)
    );
}

#[test]
fn a_changed_destination_names_its_rules_owner_and_ticket() {
    let old = p(
        "version: 1\nallow:\n  - {dest: api.paypal.com, owner: payments-team, ticket: PAY-12}\n  - old.example.com\n",
    );
    let new = p(
        "version: 1\nallow:\n  - {dest: \"api.paypal.com:443,8443\", owner: payments-team, ticket: PAY-40}\n  - {dest: new.example.com, owner: growth}\n",
    );
    assert_eq!(
        render(&diff(&old, &new)),
        "top level (every client):\n  ~ allow api.paypal.com: 443 → 443,8443  (owner payments-team, ticket PAY-40)\n  + allow new.example.com:443  (owner growth)\n  - allow old.example.com:443\n"
    );
    // Removed: the old rule's metadata.
    let text = render(&diff(&new, &old));
    assert!(
        text.contains("- allow new.example.com:443  (owner growth)"),
        "{text}"
    );
}
