//! The suggestion as a policy file: schema comment, header, one commented rule a line.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use super::flagged::flagged;
use super::input::{NOT_JSON, OTHER_JSON};
use super::{
    Collapse, Dest, Failure, Group, Options, Seen, Suggester, Suggestion, UNLISTED, collapse,
};
use crate::policy::Policy;

/// First line of the file, as in `config/portcullis.yaml`: editors validate
/// against the schema kept beside the policy.
pub(super) const SCHEMA_COMMENT: &str = "# yaml-language-server: $schema=./portcullis.schema.json";

/// How many names a collapsed wildcard's comment lists before "and N more".
const NAMES_LISTED: usize = 8;

/// One `clients` entry (or the top-level list) ready to print.
pub(super) struct List {
    pub(super) group: Group,
    pub(super) rules: Vec<Suggestion>,
}

/// What to print, worked out from what was read.
pub(super) struct Plan<'s> {
    /// The lists to print, the top level first when present.
    pub(super) lists: Vec<List>,
    /// Destinations left out by `--min-count`.
    rare: usize,
    /// Records that went into a rule, failed attempts at a destination reached otherwise included.
    used: u64,
    /// Destinations (per port) that never resolved or connected, to list.
    failed: Vec<(&'s (Group, Dest, u16), &'s Failure)>,
    /// Records behind `failed`.
    failed_records: u64,
    /// Without `--policy`: guarded addresses the rules printed connected to, with their hosts.
    carve_outs: Vec<(IpAddr, Vec<String>)>,
}

/// Ports seen per destination, per group.
type Seens = BTreeMap<Group, HashMap<Dest, BTreeMap<u16, Seen>>>;

pub(super) fn plan<'s>(s: &'s Suggester<'_>, opts: &Options) -> Plan<'s> {
    let mut seens: Seens = (s.groups.iter())
        .map(|(g, d)| (g.clone(), d.dests.clone()))
        .collect();
    let mut used = s.tally.kept;
    let mut failed = Vec::new();
    let mut failed_records = 0;
    for (key, failure) in &s.failed {
        let (group, dest, port) = key;
        let reached = (seens.get(group))
            .and_then(|d| d.get(dest))
            .is_some_and(|ports| ports.contains_key(port));
        if reached {
            used += failure.seen.count;
        } else {
            failed_records += failure.seen.count;
            failed.push((key, failure));
        }
    }
    let lifted = lift(s, &mut seens);
    let mut lists = Vec::new();
    let mut rare = 0;
    for (group, dests) in seens {
        let mut rules: Vec<Suggestion> = (dests.into_iter())
            .filter(|(_, ports)| !ports.is_empty())
            .map(|(dest, ports)| {
                let mut rule = Suggestion::new(dest);
                for (port, seen) in ports {
                    rule.ports.insert(port);
                    rule.seen.merge(&seen);
                }
                if group == Group::Everyone {
                    rule.lifted_from = lifted.get(&rule.dest).copied().unwrap_or(0);
                }
                rule
            })
            .collect();
        let before = rules.len();
        rules.retain(|r| r.seen.count >= opts.min_count);
        rare += before - rules.len();
        if opts.collapse == Collapse::Auto {
            rules = collapse(rules);
        }
        rules.sort_by_cached_key(|r| r.dest.sort_key());
        lists.push(List { group, rules });
    }
    // A client's rule that the top-level list already covers would only
    // draw a `check` warning (logs that span a policy change can hold both).
    let top: Vec<Suggestion> = lists
        .iter()
        .find(|l| l.group == Group::Everyone)
        .map(|l| l.rules.clone())
        .unwrap_or_default();
    for list in lists.iter_mut().filter(|l| l.group != Group::Everyone) {
        list.rules.retain(|r| !top.iter().any(|t| t.covers(r)));
    }
    if s.current.is_some() {
        lists.retain(|l| !l.rules.is_empty());
    }
    let carve_outs = (s.carve_outs.iter())
        .filter_map(|(ip, users)| {
            let hosts: BTreeSet<String> = (users.iter())
                .filter(|(g, d)| {
                    lists.iter().any(|l| {
                        (l.group == *g || l.group == Group::Everyone)
                            && l.rules.iter().any(|r| r.dest.covers(d))
                    })
                })
                .map(|(_, d)| d.to_string())
                .collect();
            (!hosts.is_empty()).then(|| (*ip, hosts.into_iter().collect()))
        })
        .collect();
    Plan {
        lists,
        rare,
        used,
        failed,
        failed_records,
        carve_outs,
    }
}

/// Moves what every client reached (on the same port) to the top level, and
/// returns those destinations with how many clients' lists they came from.
/// Not with `--client` (one list asked for stays whole), and with
/// `--policy` only when every client of CURRENT needs it.
fn lift(s: &Suggester<'_>, seens: &mut Seens) -> HashMap<Dest, usize> {
    let mut lifted = HashMap::new();
    let clients: Vec<Group> = (seens.keys())
        .filter(|g| **g != Group::Everyone)
        .cloned()
        .collect();
    let required = match s.current {
        Some(current) => {
            current.clients.as_ref().map_or(0, Vec::len)
                + usize::from(clients.contains(&Group::Unlisted))
        }
        None => clients.len(),
    };
    if s.client.is_some() || clients.len() < 2 || clients.len() != required {
        return lifted;
    }
    let Some(first) = seens.get(&clients[0]) else {
        return lifted;
    };
    let mut common: Vec<(Dest, u16)> = Vec::new();
    for (dest, ports) in first {
        for port in ports.keys() {
            let everywhere = clients[1..].iter().all(|g| {
                (seens.get(g).and_then(|d| d.get(dest))).is_some_and(|p| p.contains_key(port))
            });
            if everywhere {
                common.push((dest.clone(), *port));
            }
        }
    }
    for (dest, port) in common {
        let mut seen = Seen::default();
        for g in &clients {
            let ports = (seens.get_mut(g).and_then(|d| d.get_mut(&dest)))
                .expect("a common destination is in every list");
            if let Some(s) = ports.remove(&port) {
                seen.merge(&s);
            }
        }
        let top = seens.entry(Group::Everyone).or_default();
        top.entry(dest.clone())
            .or_default()
            .entry(port)
            .or_default()
            .merge(&seen);
        lifted.insert(dest, clients.len());
    }
    lifted
}

/// The rules a plan suggests that flagged services, as written.
pub(super) fn flagged_rules(s: &Suggester<'_>, opts: &Options) -> Vec<String> {
    (plan(s, opts).lists.iter())
        .flat_map(|l| &l.rules)
        .filter(|r| flagged(&r.dest).is_some())
        .map(Suggestion::rule_text)
        .collect()
}

pub(super) fn render(s: &Suggester<'_>, opts: &Options) -> String {
    let plan = plan(s, opts);
    let lists = &plan.lists;
    let mut out = String::new();
    out.push_str(SCHEMA_COMMENT);
    out.push('\n');
    header(s, opts, &plan, &mut out);
    out.push_str("version: 1\n");
    if s.current.is_none() {
        out.push_str("mode: enforce\n");
    }
    match lists.iter().find(|l| l.group == Group::Everyone) {
        Some(list) if !list.rules.is_empty() => {
            out.push_str("allow:\n");
            rules(&list.rules, "  ", &mut out);
        }
        _ => out.push_str("allow: []\n"),
    }
    let clients: Vec<&List> = lists
        .iter()
        .filter(|l| l.group != Group::Everyone)
        .collect();
    if !clients.is_empty() {
        out.push_str("clients:\n");
        let unlisted = unlisted_name(s);
        for list in clients {
            client(s, list, &unlisted, &mut out);
        }
    }
    carve_outs(&plan, &mut out);
    failed(&plan, &mut out);
    if let Some(current) = s.current {
        refused(s, &mut out);
        unused(s, current, opts, &mut out);
    }
    out
}

fn carve_outs(plan: &Plan<'_>, out: &mut String) {
    if plan.carve_outs.is_empty() {
        return;
    }
    out.push_str(
        "ip_guard:\n  \
         # Addresses allowed names connected to that the default ip_guard blocks: the\n  \
         # policy in force carved them out. Widen them to the ranges it carved out.\n  \
         allowed:\n",
    );
    for (ip, hosts) in &plan.carve_outs {
        let _ = writeln!(out, "    # {}", clean(&names(hosts)));
        let _ = writeln!(out, "    - {}", quote(&IpNet::from(*ip).to_string()));
    }
}

/// At most [`NAMES_LISTED`] names, then "and N more".
fn names(list: &[String]) -> String {
    let shown: Vec<&str> = list.iter().take(NAMES_LISTED).map(String::as_str).collect();
    match list.len().saturating_sub(NAMES_LISTED) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

fn failed(plan: &Plan<'_>, out: &mut String) {
    if plan.failed.is_empty() {
        return;
    }
    out.push_str(
        "\n# Seen, but never resolved or connected: not suggested (an allow rule does not make them work):\n",
    );
    for ((group, dest, port), failure) in &plan.failed {
        let reasons: Vec<String> = (failure.reasons.iter())
            .map(|(reason, errors)| {
                let errors: Vec<String> = errors.iter().cloned().collect();
                match errors.len() {
                    0 => reason.clone(),
                    _ => format!("{reason} ({})", names(&errors)),
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "#   {}: {dest}:{port} {}; {}",
            whose(group),
            clean(&reasons.join("; ")),
            seen(&failure.seen)
        );
    }
}

fn header(s: &Suggester<'_>, opts: &Options, plan: &Plan<'_>, out: &mut String) {
    let rare = plan.rare;
    let t = &s.tally;
    let span = match (&t.seen.first, &t.seen.last) {
        (Some(first), Some(last)) => format!(", {first} to {last}"),
        _ => String::new(),
    };
    let command = match s.current {
        Some(_) => "portcullis suggest --policy CURRENT",
        None => "portcullis suggest",
    };
    let _ = writeln!(
        out,
        "# Suggested by `{command}` from {} audit {}{span}.",
        t.records,
        plural(t.records, "record", "records")
    );
    let mut used = match s.current {
        Some(_) => format!(
            "# {} already allowed by CURRENT, {} it would deny (below), {} it refuses by deny or ip_guard",
            t.allowed, plan.used, t.refused
        ),
        None => format!("# {} used", plan.used),
    };
    if plan.failed_records > 0 {
        let _ = write!(
            used,
            "; {} never resolved or connected (listed at the end)",
            plan.failed_records
        );
    }
    if !t.skipped.is_empty() {
        let skipped: Vec<String> = t
            .skipped
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        let _ = write!(used, "; skipped: {}", skipped.join(", "));
    }
    let _ = writeln!(out, "{used}.");
    let not_records: Vec<String> = [NOT_JSON, OTHER_JSON]
        .iter()
        .filter_map(|why| t.not_records.get(why).map(|n| format!("{n} {why}")))
        .collect();
    if !not_records.is_empty() {
        let _ = writeln!(
            out,
            "# Lines that are not audit records, skipped: {}.",
            not_records.join(", ")
        );
    }
    let mut unwrapped = Vec::new();
    if t.firelens > 0 {
        let lines = plural(t.firelens, "line", "lines");
        unwrapped.push(format!("{} FireLens {lines}", t.firelens));
    }
    if t.prefixed > 0 {
        let lines = plural(t.prefixed, "line", "lines");
        unwrapped.push(format!("{} {lines} behind a timestamp prefix", t.prefixed));
    }
    if !unwrapped.is_empty() {
        let _ = writeln!(out, "# Unwrapped: {}.", unwrapped.join(", "));
    }
    let flagged_count = (plan.lists.iter())
        .flat_map(|l| &l.rules)
        .filter(|r| flagged(&r.dest).is_some())
        .count();
    match flagged_count {
        0 => {}
        1 => out.push_str(
            "# FLAGGED: 1 destination below is a known paste, file-sharing, request-capture or tunnel service.\n",
        ),
        n => {
            let _ = writeln!(
                out,
                "# FLAGGED: {n} destinations below are known paste, file-sharing, request-capture or tunnel services."
            );
        }
    }
    if let Some(client) = &opts.client {
        let _ = writeln!(out, "# Only client `{}` (--client).", clean(client));
    }
    if rare > 0 {
        let _ = writeln!(
            out,
            "# Left out: {rare} {} seen fewer than {} times (--min-count).",
            plural(rare as u64, "destination", "destinations"),
            opts.min_count
        );
    }
    match s.current {
        Some(_) => out.push_str(
            "# Add each rule below to the same list of CURRENT: the top-level `allow`,\n\
             # or the `allow` of the client with that name.\n",
        ),
        None => out.push_str(
            "# Every rule was seen in that traffic; its comment says how often and when.\n",
        ),
    }
    if opts.collapse == Collapse::Auto {
        out.push_str(
            "# A wildcard (--collapse auto) replaces the names listed above it and also\n\
             # allows names below it that were not seen: keep it only if you mean it.\n",
        );
    }
    out.push_str("# Review it in a pull request and run `portcullis check` before deploying.\n");
}

pub(super) fn client(s: &Suggester<'_>, list: &List, unlisted: &str, out: &mut String) {
    let (name, note, sources): (&str, &str, Vec<IpNet>) = match (&list.group, s.current) {
        (Group::Client { name, .. }, Some(current)) => (
            name,
            "",
            current
                .clients
                .iter()
                .flatten()
                .find(|c| &*c.name == name)
                .map(|c| c.selectors.sources.clone())
                .unwrap_or_default(),
        ),
        (Group::Client { name, .. }, None) => (
            name,
            "    # The audit log does not record a client's CIDRs: these are the addresses\n    \
             # seen. Replace them with the client's ranges, or run with --policy.\n",
            observed(s, &list.group),
        ),
        (Group::Unlisted, _) => (
            unlisted,
            "    # Sources no `clients` entry listed (their traffic was client_not_allowed):\n    \
             # name this client and replace the addresses seen with its ranges.\n",
            observed(s, &list.group),
        ),
        (Group::Everyone, _) => unreachable!("the top-level list is not a client"),
    };
    let _ = writeln!(out, "  - name: {}", quote(name));
    out.push_str(note);
    out.push_str("    sources:\n");
    for net in sources {
        let _ = writeln!(out, "      - {}", quote(&net.to_string()));
    }
    if list.rules.is_empty() {
        out.push_str("    allow: []\n");
    } else {
        out.push_str("    allow:\n");
        rules(&list.rules, "      ", out);
    }
}

fn observed(s: &Suggester<'_>, group: &Group) -> Vec<IpNet> {
    s.groups
        .get(group)
        .map(|d| d.sources.iter().map(|ip| IpNet::from(*ip)).collect())
        .unwrap_or_default()
}

/// A name for the unlisted sources that no client of CURRENT or of the log has.
pub(super) fn unlisted_name(s: &Suggester<'_>) -> String {
    let mut taken: BTreeSet<&str> = s
        .groups
        .keys()
        .filter_map(|g| match g {
            Group::Client { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if let Some(current) = s.current {
        taken.extend(current.clients.iter().flatten().map(|c| &*c.name));
    }
    (1..)
        .map(|i| match i {
            1 => UNLISTED.to_string(),
            i => format!("{UNLISTED}-{i}"),
        })
        .find(|n| !taken.contains(n.as_str()))
        .expect("some suffix is free")
}

pub(super) fn rules(list: &[Suggestion], indent: &str, out: &mut String) {
    for rule in list {
        let lifted = match rule.lifted_from {
            0 => String::new(),
            n => format!("; used by every client ({n})"),
        };
        let _ = writeln!(out, "{indent}# {}{lifted}", seen(&rule.seen));
        if !rule.names.is_empty() {
            let names: Vec<&str> = rule
                .names
                .iter()
                .take(NAMES_LISTED)
                .map(String::as_str)
                .collect();
            let more = rule.names.len().saturating_sub(NAMES_LISTED);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{indent}# replaces {} names seen: {}{more}",
                rule.names.len(),
                names.join(", ")
            );
        }
        if let Some(f) = flagged(&rule.dest) {
            let _ = writeln!(
                out,
                "{indent}# FLAGGED: {} is {}, a known way to move data out: keep it only if you mean it",
                f.domain, f.what
            );
        }
        let _ = writeln!(out, "{indent}- {}", quote(&rule.rule_text()));
    }
}

fn seen(seen: &super::Seen) -> String {
    let times = match seen.count {
        1 => "once".to_string(),
        n => format!("{n} times"),
    };
    match (&seen.first, &seen.last) {
        (Some(first), Some(last)) if seen.count == 1 || first == last => {
            format!("seen {times}, {first}")
        }
        (Some(first), Some(last)) => format!("seen {times}, first {first}, last {last}"),
        _ => format!("seen {times}"),
    }
}

fn refused(s: &Suggester<'_>, out: &mut String) {
    if s.refused.is_empty() {
        return;
    }
    out.push_str(
        "\n# Seen, but CURRENT refuses them for a reason an allow rule does not change:\n",
    );
    for ((group, dest), r) in &s.refused {
        let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
        let _ = writeln!(
            out,
            "#   {}: {dest}:{} {}; {}",
            whose(group),
            ports.join(","),
            clean(&r.why.iter().cloned().collect::<Vec<_>>().join("; ")),
            seen(&r.seen)
        );
    }
}

fn unused(s: &Suggester<'_>, current: &Policy, opts: &Options, out: &mut String) {
    let wanted = |g: &Group| opts.client.as_deref().is_none_or(|c| c == g.selector());
    let mut lines = Vec::new();
    let top = Group::Everyone;
    let owners = std::iter::once((top, &current.allow)).chain(
        current
            .clients
            .iter()
            .flatten()
            .enumerate()
            .map(|(rank, c)| {
                (
                    Group::Client {
                        rank,
                        name: c.name.to_string(),
                    },
                    &c.allow,
                )
            }),
    );
    for (group, list) in owners.filter(|(g, _)| wanted(g)) {
        for rule in list.rules() {
            if !s.used.contains(&(rule.line, rule.column)) {
                lines.push(format!(
                    "#   {} `allow`, line {}: {}",
                    whose(&group),
                    rule.line,
                    clean(&rule.text)
                ));
            }
        }
    }
    if lines.is_empty() {
        out.push_str("\n# Every allow rule of CURRENT was used by some record.\n");
        return;
    }
    out.push_str(
        "\n# Allow rules of CURRENT that no record used: candidates to remove, once the\n\
         # audit log covers all of the workload's traffic (monthly jobs too).\n",
    );
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
}

fn whose(group: &Group) -> String {
    match group {
        Group::Everyone => "top-level".to_string(),
        Group::Client { name, .. } => format!("client `{}`", clean(name)),
        Group::Unlisted => "unlisted sources".to_string(),
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
pub(super) fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// Text safe inside a `#` comment: no line breaks or other control characters.
pub(super) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}
