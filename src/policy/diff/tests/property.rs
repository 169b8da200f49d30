//! The property behind `diff`: for random pairs of small policies, when it
//! reports no change in reach, `Policy::decide` agrees on a grid of
//! sources, destinations and ports, and so do the guard and the TLS checks.

use std::net::IpAddr;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::super::diff;
use super::p;
use crate::policy::Policy;

const MODES: &[Option<&str>] = &[None, Some("enforce"), Some("report")];
const SOURCES: &[&str] = &[
    "10.0.0.0/8",
    "10.0.1.0/24",
    "10.0.1.0/25",
    "10.0.1.128/25",
    "10.0.2.0/24",
    "0.0.0.0/0",
    "192.168.0.0/16",
    "fd00::/8",
];
const ALLOW: &[&str] = &[
    "a.example.com",
    "a.example.com:80",
    "a.example.com:443,80",
    "*.example.com",
    "*.a.example.com:*",
    "api-*.example.com",
    "example.org:8000-8100",
    "example.org",
    "*.org",
    "203.0.113.0/24:443",
    "203.0.113.0/25",
    "10.1.0.0/16",
    "[2001:db8::/32]:443",
    "b.example.com:*",
];
const DENY: &[&str] = &[
    "a.example.com",
    "b.example.com:80",
    "*.a.example.com",
    "203.0.113.128/25",
    "api-x.example.com:443",
];
const DEFAULT_PORTS: &[Option<&str>] = &[None, Some("[443]"), Some("[443, 80]"), Some("[80]")];
const GUARDS: &[Option<&str>] = &[
    None,
    Some("{blocked: []}"),
    Some("{allowed: [10.1.0.0/16]}"),
    Some("{blocked: [default, 203.0.113.0/25]}"),
    Some("{blocked: default, allowed: [\"::ffff:10.1.0.0/112\"]}"),
    Some("{blocked: [default, \"::ffff:0:0/96\"], allowed: [203.0.113.0/24]}"),
];
const TLS: &[Option<&str>] = &[None, Some("{sni_must_match: false}"), Some("{ech: allow}")];
const NAMES: &[&str] = &["a", "b", "c", "d"];

#[derive(Clone, Debug)]
struct ClientSpec {
    name: &'static str,
    sources: Vec<&'static str>,
    mode: Option<&'static str>,
    allow: Vec<&'static str>,
}

#[derive(Clone, Debug)]
struct Spec {
    mode: Option<&'static str>,
    default_ports: Option<&'static str>,
    allow: Vec<&'static str>,
    deny: Vec<&'static str>,
    clients: Option<Vec<ClientSpec>>,
    guard: Option<&'static str>,
    tls: Option<&'static str>,
}

fn quoted(list: &[&str]) -> String {
    let items: Vec<String> = list.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", items.join(", "))
}

impl Spec {
    fn yaml(&self) -> String {
        let mut y = String::from("version: 1\n");
        if let Some(m) = self.mode {
            y += &format!("mode: {m}\n");
        }
        if let Some(d) = self.default_ports {
            y += &format!("default_ports: {d}\n");
        }
        y += &format!(
            "allow: {}\ndeny: {}\n",
            quoted(&self.allow),
            quoted(&self.deny)
        );
        if let Some(clients) = &self.clients {
            y += "clients:\n";
            if clients.is_empty() {
                y.truncate(y.len() - 1);
                y += " []\n";
            }
            for c in clients {
                y += &format!(
                    "  - name: {}\n    sources: {}\n",
                    c.name,
                    quoted(&c.sources)
                );
                if let Some(m) = c.mode {
                    y += &format!("    mode: {m}\n");
                }
                y += &format!("    allow: {}\n", quoted(&c.allow));
            }
        }
        if let Some(g) = self.guard {
            y += &format!("ip_guard: {g}\n");
        }
        if let Some(t) = self.tls {
            y += &format!("tls: {t}\n");
        }
        y
    }

    /// One edit, picked by `kind` with `a` and `b` as indices (taken modulo).
    fn edit(&mut self, kind: u8, a: usize, b: usize) {
        let pick = |pool: &[&'static str], i: usize| pool[i % pool.len()];
        match kind {
            // Reach-preserving, or meant to be.
            0 if !self.allow.is_empty() => {
                let n = a % self.allow.len();
                self.allow.rotate_left(n);
            }
            1 if !self.allow.is_empty() => {
                let dup = self.allow[a % self.allow.len()];
                self.allow.insert(b % (self.allow.len() + 1), dup);
            }
            2 => {
                if let Some(cs) = self.clients.as_mut().filter(|cs| cs.len() > 1) {
                    let (i, j) = (a % cs.len(), b % cs.len());
                    cs.swap(i, j);
                }
            }
            3 => {
                if let Some(cs) = self.clients.as_mut() {
                    cs.reverse();
                }
            }
            // Anything else.
            4 => self.mode = MODES[a % MODES.len()],
            5 => self.guard = GUARDS[a % GUARDS.len()],
            6 => self.tls = TLS[a % TLS.len()],
            7 => self.default_ports = DEFAULT_PORTS[a % DEFAULT_PORTS.len()],
            8 => self.allow.push(pick(ALLOW, a)),
            9 if !self.allow.is_empty() => {
                self.allow.remove(a % self.allow.len());
            }
            10 => {
                if b.is_multiple_of(2) || self.deny.is_empty() {
                    self.deny.push(pick(DENY, a));
                } else {
                    self.deny.remove(a % self.deny.len());
                }
            }
            11..=13 => {
                let Some(cs) = self.clients.as_mut().filter(|cs| !cs.is_empty()) else {
                    return;
                };
                let n = cs.len();
                let c = &mut cs[a % n];
                match kind {
                    11 if b.is_multiple_of(2) || c.sources.len() == 1 => {
                        c.sources.push(pick(SOURCES, b / 2))
                    }
                    11 => {
                        c.sources.remove(b / 2 % c.sources.len());
                    }
                    12 => c.mode = MODES[b % MODES.len()],
                    _ if b.is_multiple_of(2) || c.allow.is_empty() => {
                        c.allow.push(pick(ALLOW, b / 2))
                    }
                    _ => {
                        c.allow.remove(b / 2 % c.allow.len());
                    }
                }
            }
            14 => {
                let cs = self.clients.get_or_insert_with(Vec::new);
                if let Some(name) = NAMES.iter().find(|n| cs.iter().all(|c| c.name != **n)) {
                    cs.insert(
                        b % (cs.len() + 1),
                        ClientSpec {
                            name,
                            sources: vec![pick(SOURCES, a)],
                            mode: None,
                            allow: vec![],
                        },
                    );
                }
            }
            15 => {
                if let Some(cs) = self.clients.as_mut().filter(|cs| !cs.is_empty()) {
                    let n = cs.len();
                    cs.remove(a % n);
                }
            }
            16 => {
                self.clients = match self.clients.take() {
                    Some(_) => None,
                    None => Some(vec![]),
                }
            }
            _ => {}
        }
    }
}

fn client_spec(name: &'static str) -> impl Strategy<Value = ClientSpec> {
    (
        prop::collection::vec(prop::sample::select(SOURCES), 1..3),
        prop::sample::select(MODES),
        prop::collection::vec(prop::sample::select(ALLOW), 0..3),
    )
        .prop_map(move |(sources, mode, allow)| ClientSpec {
            name,
            sources,
            mode,
            allow,
        })
}

fn spec() -> impl Strategy<Value = Spec> {
    let clients = prop::option::weighted(
        0.8,
        (0..=3usize).prop_flat_map(|n| {
            NAMES[..n]
                .iter()
                .map(|name| client_spec(name))
                .collect::<Vec<_>>()
        }),
    );
    (
        prop::sample::select(MODES),
        prop::sample::select(DEFAULT_PORTS),
        prop::collection::vec(prop::sample::select(ALLOW), 0..5),
        prop::collection::vec(prop::sample::select(DENY), 0..2),
        clients,
        prop::sample::select(GUARDS),
        prop::sample::select(TLS),
    )
        .prop_map(
            |(mode, default_ports, allow, deny, clients, guard, tls)| Spec {
                mode,
                default_ports,
                allow,
                deny,
                clients,
                guard,
                tls,
            },
        )
}

/// Edits, mostly of the kinds that should leave reach alone.
fn edits() -> impl Strategy<Value = Vec<(u8, usize, usize)>> {
    let kind = prop_oneof![1 => 0..4u8, 1 => 4..17u8];
    prop::collection::vec((kind, any::<usize>(), any::<usize>()), 1..3)
}

const CLIENTS: &[&str] = &[
    "10.0.1.5",
    "10.0.1.200",
    "10.0.2.5",
    "10.9.9.9",
    "192.168.1.1",
    "8.8.8.8",
    "fd00::1",
    "2001:db8::1",
    "::ffff:10.0.1.5",
];
const HOSTS: &[&str] = &[
    "a.example.com",
    "b.example.com",
    "x.a.example.com",
    "api-v1.example.com",
    "api-x.example.com",
    "example.org",
    "example.com",
    "c.org",
    "203.0.113.7",
    "203.0.113.200",
    "10.1.2.3",
    "2001:db8::5",
];
const PORTS: &[u16] = &[443, 80, 8080, 8050];
const DIALED: &[&str] = &[
    "169.254.169.254",
    "10.1.2.3",
    "::ffff:10.1.2.3",
    "::ffff:203.0.113.9",
    "203.0.113.5",
    "8.8.8.8",
    "::1",
    "64:ff9b::a01:203",
    "fd00::1",
];

/// The first difference between two policies over the sample, if any.
fn disagreement(old: &Policy, new: &Policy) -> Option<String> {
    for client in CLIENTS {
        let addr: IpAddr = client.parse().unwrap();
        for host in HOSTS {
            for &port in PORTS {
                let (a, b) = (
                    old.decide_str(addr, host, port),
                    new.decide_str(addr, host, port),
                );
                if (a.verdict, a.reason, &a.client) != (b.verdict, b.reason, &b.client) {
                    return Some(format!("{client} -> {host}:{port}: {a:?} vs {b:?}"));
                }
            }
        }
    }
    for ip in DIALED {
        let ip: IpAddr = ip.parse().unwrap();
        if old.guard.is_dialable(ip) != new.guard.is_dialable(ip) {
            return Some(format!("ip_guard disagrees on {ip}"));
        }
    }
    (old.tls != new.tls).then(|| "tls differs".to_string())
}

#[test]
fn when_diff_reports_nothing_both_policies_decide_alike() {
    let mut runner = TestRunner::new(Config {
        cases: 500,
        failure_persistence: None,
        ..Config::default()
    });
    let unchanged = std::cell::Cell::new(0u32);
    let changed = std::cell::Cell::new(0u32);
    runner
        .run(&(spec(), edits()), |(spec, edits)| {
            let mut edited = spec.clone();
            for (kind, a, b) in edits {
                edited.edit(kind, a, b);
            }
            let (old_yaml, new_yaml) = (spec.yaml(), edited.yaml());
            let (old, new) = (p(&old_yaml), p(&new_yaml));
            let changes = diff(&old, &new);
            if changes.is_empty() {
                if old_yaml != new_yaml {
                    unchanged.set(unchanged.get() + 1);
                }
                if let Some(why) = disagreement(&old, &new) {
                    return Err(TestCaseError::fail(format!(
                        "diff reported nothing, but {why}\n--- old\n{old_yaml}--- new\n{new_yaml}"
                    )));
                }
            } else {
                changed.set(changed.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    // The property says something only if both outcomes are common: edited
    // policies that diff finds unchanged, and changed ones.
    assert!(
        unchanged.get() >= 50 && changed.get() >= 100,
        "unchanged {}, changed {}",
        unchanged.get(),
        changed.get()
    );
}
