//! The suggestion as a policy file: schema comment, header, one commented rule a line.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use ipnet::IpNet;

use super::{Collapse, Group, Options, Suggester, Suggestion, UNLISTED, collapse};
use crate::policy::Policy;

/// First line of the file, as in `config/portcullis.yaml`: editors validate
/// against the schema kept beside the policy.
pub(super) const SCHEMA_COMMENT: &str = "# yaml-language-server: $schema=./portcullis.schema.json";

/// How many names a collapsed wildcard's comment lists before "and N more".
const NAMES_LISTED: usize = 8;

/// One `clients` entry (or the top-level list) ready to print.
struct List {
    group: Group,
    rules: Vec<Suggestion>,
}

pub(super) fn render(s: &Suggester<'_>, opts: &Options) -> String {
    let mut lists = Vec::new();
    let mut rare = 0;
    for (group, data) in &s.groups {
        let mut rules: Vec<Suggestion> = data.dests.values().cloned().collect();
        let before = rules.len();
        rules.retain(|r| r.seen.count >= opts.min_count);
        rare += before - rules.len();
        if opts.collapse == Collapse::Auto {
            rules = collapse(rules);
        }
        rules.sort_by_cached_key(|r| r.dest.sort_key());
        lists.push(List {
            group: group.clone(),
            rules,
        });
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

    let mut out = String::new();
    out.push_str(SCHEMA_COMMENT);
    out.push('\n');
    header(s, opts, rare, &mut out);
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
    if let Some(current) = s.current {
        refused(s, &mut out);
        unused(s, current, opts, &mut out);
    }
    out
}

fn header(s: &Suggester<'_>, opts: &Options, rare: usize, out: &mut String) {
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
            t.allowed, t.kept, t.refused
        ),
        None => format!("# {} used", t.kept),
    };
    if !t.skipped.is_empty() {
        let skipped: Vec<String> = t
            .skipped
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        let _ = write!(used, "; skipped: {}", skipped.join(", "));
    }
    let _ = writeln!(out, "{used}.");
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

fn client(s: &Suggester<'_>, list: &List, unlisted: &str, out: &mut String) {
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
fn unlisted_name(s: &Suggester<'_>) -> String {
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

fn rules(list: &[Suggestion], indent: &str, out: &mut String) {
    for rule in list {
        let _ = writeln!(out, "{indent}# {}", seen(&rule.seen));
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
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// Text safe inside a `#` comment: no line breaks or other control characters.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}
