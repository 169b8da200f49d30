//! Warnings about settings that open the control itself: report mode, an
//! `ip_guard` that lets the proxy dial metadata or private space, and a
//! client that can never be matched.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

use super::super::diagnostic::{Code, Diagnostic};
use super::super::ip_guard::{IpGuard, METADATA, default_blocked};
use super::super::{Client, Credential, Mode, Policy};
use super::{At, Spans, warn_at};

/// An `ip_guard.allowed` range with a prefix shorter than this opens "most" of the space.
const WIDE_PREFIX: u8 = 8;

/// Work allowed to the range arithmetic of one check, so that a policy with
/// thousands of tiny ranges cannot stall `check` or a reload.
const SPLIT_BUDGET: usize = 100_000;

pub(super) fn lint(policy: &Policy, spans: &Spans, out: &mut Vec<Diagnostic>) {
    report_mode(policy, spans, out);
    guard_opened(policy, spans, out);
    unreachable_clients(policy, spans, out);
}

fn report_mode(policy: &Policy, spans: &Spans, out: &mut Vec<Diagnostic>) {
    let hint = || {
        "switch to `mode: enforce` once the audit log shows what is needed (`portcullis suggest` turns it into rules)".to_string()
    };
    if policy.mode == Mode::Report
        && let Some(at) = &spans.mode
    {
        out.push(warn_at(
            Code::ReportMode,
            at,
            "`mode: report` lets every destination through: the policy only records what enforce would deny".into(),
            hint(),
        ));
    }
    for (client, at) in policy.clients.iter().flatten().zip(&spans.clients) {
        if let (Mode::Report, Some(mode_at)) = (client.mode, &at.mode) {
            out.push(warn_at(
                Code::ReportMode,
                mode_at,
                format!(
                    "client `{}` is in report mode: it may reach every destination; the policy only records what enforce would deny",
                    client.name
                ),
                hint(),
            ));
        }
    }
}

/// The spellings of `ip` that reach it: itself and, for IPv4, the IPv6
/// forms the proxy judges by the embedded address (mapped, NAT64, 6to4).
fn spellings(ip: IpAddr) -> Vec<IpAddr> {
    let IpAddr::V4(v4) = ip else {
        return vec![ip];
    };
    let [a, b, c, d] = v4.octets();
    let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
    vec![
        ip,
        IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo)),
        IpAddr::V6(Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 0)),
    ]
}

fn metadata() -> impl Iterator<Item = (IpAddr, &'static str)> {
    METADATA
        .iter()
        .map(|(ip, what)| (ip.parse().expect("METADATA holds addresses"), *what))
}

fn guard_opened(policy: &Policy, spans: &Spans, out: &mut Vec<Diagnostic>) {
    let carve_hint = "carve out only the internal service's own range, e.g. `10.20.0.0/24`; metadata endpoints are never a destination";
    for (net, at) in &spans.guard_allowed {
        let opened: Vec<String> = metadata()
            .filter(|(ip, _)| spellings(*ip).iter().any(|s| net.contains(s)))
            .map(|(ip, what)| format!("{ip} ({what})"))
            .collect();
        if !opened.is_empty() {
            out.push(warn_at(
                Code::GuardOpened,
                at,
                format!(
                    "`ip_guard.allowed` entry `{net}` lets the proxy dial {}: a workload could read credentials through it",
                    opened.join(", ")
                ),
                carve_hint.into(),
            ));
        } else if net.prefix_len() < WIDE_PREFIX {
            out.push(warn_at(
                Code::GuardOpened,
                at,
                format!(
                    "`ip_guard.allowed` entry `{net}` is wider than /8: it makes most of the guarded space dialable"
                ),
                carve_hint.into(),
            ));
        }
    }
    if let Some((at, false)) = &spans.blocked {
        blocked_replaced(policy.guard.blocked(), at, out);
    }
}

/// A `blocked` list without `default` replaces the built-in ranges: say
/// which of them, and which metadata addresses, it leaves dialable.
fn blocked_replaced(blocked: &[IpNet], at: &At, out: &mut Vec<Diagnostic>) {
    let only_blocked = IpGuard::new(blocked.to_vec(), Vec::new());
    let mut opened: Vec<String> = metadata()
        .filter(|(ip, _)| only_blocked.is_dialable(*ip))
        .map(|(ip, what)| format!("{ip} ({what})"))
        .collect();
    opened.extend(
        default_blocked()
            .into_iter()
            .filter(|d| !matches!(uncovered(*d, blocked), Some(v) if v.is_empty()))
            .map(|d| d.to_string()),
    );
    if opened.is_empty() {
        return;
    }
    out.push(warn_at(
        Code::GuardOpened,
        at,
        format!(
            "`ip_guard.blocked` replaces the default ranges and leaves {} dialable",
            opened.join(", ")
        ),
        "write `blocked: [default, ...]` to add ranges to the default list instead of replacing it"
            .into(),
    ));
}

fn unreachable_clients(policy: &Policy, spans: &Spans, out: &mut Vec<Diagnostic>) {
    let Some(clients) = &policy.clients else {
        return;
    };
    for (i, (client, at)) in clients.iter().zip(&spans.clients).enumerate() {
        if client.selectors.sources.is_empty() {
            continue; // no sources: matched by credentials, never taken by address
        }
        // Only a client recognised by address alone takes every connection from its sources.
        let by_address = |c: &&Client| {
            [
                Credential::Certificate,
                Credential::Token,
                Credential::VpcEndpoint,
            ]
            .iter()
            .all(|k| !c.selectors.uses(*k))
        };
        let earlier: Vec<IpNet> = clients[..i]
            .iter()
            .filter(by_address)
            .flat_map(|c| c.selectors.sources.iter().copied())
            .collect();
        let taken = client
            .selectors
            .sources
            .iter()
            .all(|s| matches!(uncovered(*s, &earlier), Some(rest) if rest.is_empty()));
        if !taken {
            continue;
        }
        let takers: Vec<String> = clients[..i]
            .iter()
            .zip(&spans.clients)
            .filter(|(c, _)| by_address(c))
            .filter(|(c, _)| {
                (c.selectors.sources.iter())
                    .any(|e| client.selectors.sources.iter().any(|s| overlap(e, s)))
            })
            .map(|(c, at)| format!("client `{}` ({})", c.name, at.at.place()))
            .collect();
        out.push(warn_at(
            Code::UnreachableClient,
            &at.at,
            format!(
                "client `{}` is never matched: clients are tried in order, and every source it lists is taken by {}",
                client.name,
                takers.join(", ")
            ),
            format!(
                "move `{}` above the clients that take its sources if its rules are meant for them, or remove it",
                client.name
            ),
        ));
    }
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// The parts of `net` that no range of `by` covers; `None` when working
/// that out would take more than [`SPLIT_BUDGET`] steps.
fn uncovered(net: IpNet, by: &[IpNet]) -> Option<Vec<IpNet>> {
    let mut todo = vec![net];
    let mut out = Vec::new();
    let mut steps = 0;
    while let Some(n) = todo.pop() {
        steps += 1;
        if steps > SPLIT_BUDGET {
            return None;
        }
        if by.iter().any(|b| b.contains(&n)) {
            continue;
        }
        if by.iter().any(|b| n.contains(b)) {
            // Partly covered: look at each half.
            todo.extend(n.subnets(n.prefix_len() + 1).into_iter().flatten());
        } else {
            out.push(n);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn uncovered_splits_only_what_is_partly_covered() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert_eq!(uncovered(net, &nets(&["0.0.0.0/0"])), Some(vec![]));
        assert_eq!(
            uncovered(net, &nets(&["10.0.0.0/9", "10.128.0.0/9"])),
            Some(vec![])
        );
        let rest = uncovered(net, &nets(&["10.0.0.0/9"])).unwrap();
        assert_eq!(rest, nets(&["10.128.0.0/9"]));
        assert_eq!(uncovered(net, &nets(&["::/0"])), Some(vec![net]));
        let many: Vec<IpNet> = (0..=255u8)
            .map(|i| IpNet::from(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))))
            .collect();
        let net24: IpNet = "10.0.0.0/24".parse().unwrap();
        assert_eq!(uncovered(net24, &many), Some(vec![]));
    }

    #[test]
    fn metadata_is_reached_through_its_ipv6_spellings() {
        let s = spellings("169.254.169.254".parse().unwrap());
        let g = IpGuard::default();
        for ip in &s {
            assert!(!g.is_dialable(*ip), "{ip}");
        }
        assert!(s.contains(&"::ffff:169.254.169.254".parse().unwrap()));
        assert!(s.contains(&"64:ff9b::a9fe:a9fe".parse().unwrap()));
        assert!(s.contains(&"2002:a9fe:a9fe::".parse().unwrap()));
    }
}
