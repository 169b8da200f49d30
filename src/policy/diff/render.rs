//! The reviewer's text: one `+`/`-`/`~` line per change, grouped by client,
//! saying plainly when something becomes unrestricted.

use super::guard::{includes_metadata, label};
use super::{Change, Handover, Kind};

/// What the text of a change depends on besides the change.
pub(super) struct Context {
    /// Whether the new policy has a `clients` section.
    pub(super) listed: bool,
}

const UNRESTRICTED: &str =
    "unrestricted: what the rules would refuse is let through and only logged";
/// At most this many items of a list are printed; JSON has them all.
const SHOWN: usize = 12;

/// Where a change prints: under the top level, under its client, or on its
/// own (an added or removed client).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group<'a> {
    Top,
    Client(&'a str),
    Own,
}

/// The whole diff as text: top-level changes, then a group per client.
/// Empty when nothing changes in reach.
pub fn render(changes: &[Change]) -> String {
    let mut out = String::new();
    let mut current = None;
    for change in changes {
        let group = match (&change.kind, change.client.as_deref()) {
            (Kind::ClientAdded { .. } | Kind::ClientRemoved { .. }, _) => Group::Own,
            (_, Some(name)) => Group::Client(name),
            (_, None) => Group::Top,
        };
        if group == Group::Own || current != Some(group) {
            if current.is_some() {
                out.push('\n');
            }
            match group {
                Group::Top => out.push_str("top level (every client):\n"),
                Group::Client(name) => out.push_str(&format!("client `{name}`:\n")),
                Group::Own => {}
            }
            current = Some(group);
        }
        let indent = if group == Group::Own { "" } else { "  " };
        for line in change.text.lines() {
            out.push_str(indent);
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A change's own lines: the `+`/`-`/`~` line, then details indented by four.
pub(super) fn text(client: Option<&str>, kind: &Kind, cx: &Context) -> String {
    let name = client.unwrap_or("?");
    let mut lines = Vec::new();
    match kind {
        Kind::ClientsSection { new, .. } => lines.push(if *new == "present" {
            "~ clients: added; a source that no client lists is now refused (client_not_allowed)"
                .to_string()
        } else {
            "~ clients: removed; every source is admitted and gets the top-level rules".to_string()
        }),
        Kind::Mode {
            old,
            new,
            keep_own_mode,
        } => {
            lines.push(format!("~ mode: {old} → {}", mode(new)));
            if cx.listed && client.is_none() {
                lines.push(if *new == "report" {
                    "    applies to sources no client lists (let through, no longer refused) and to every client without a mode of its own".to_string()
                } else {
                    "    applies to sources no client lists (refused: client_not_allowed) and to every client without a mode of its own".to_string()
                });
                if !keep_own_mode.is_empty() {
                    lines.push(format!(
                        "    clients that keep their own mode: {}",
                        names(keep_own_mode)
                    ));
                }
            }
        }
        Kind::IpGuard {
            now_dialable,
            now_blocked,
            blocked_added,
            blocked_removed,
            allowed_added,
            allowed_removed,
        } => {
            lines.push(guard_headline(now_dialable, now_blocked));
            lines.extend(
                now_dialable
                    .iter()
                    .map(|c| format!("    now dialable: {}", label(c))),
            );
            lines.extend(
                now_blocked
                    .iter()
                    .map(|c| format!("    now blocked: {}", label(c))),
            );
            if now_dialable.is_empty() && now_blocked.is_empty() {
                for (what, sign, list) in [
                    ("blocked", "+", blocked_added),
                    ("blocked", "-", blocked_removed),
                    ("allowed", "+", allowed_added),
                    ("allowed", "-", allowed_removed),
                ] {
                    if !list.is_empty() {
                        lines.push(format!("    {what} {sign} {}", items(list)));
                    }
                }
            }
        }
        Kind::Tls { setting, old, new } => {
            let what = match (*setting, *new) {
                ("sni_must_match", "false") => {
                    "a tunnel's TLS server name no longer has to match its CONNECT host"
                }
                ("sni_must_match", _) => "a tunnel's TLS server name must match its CONNECT host",
                (_, "allow") => {
                    "ClientHellos with encrypted_client_hello pass, hiding the real server name from the proxy"
                }
                _ => "ClientHellos with encrypted_client_hello are refused",
            };
            lines.push(format!("~ tls.{setting}: {old} → {new}: {what}"));
        }
        Kind::DefaultPorts {
            old,
            new,
            destinations,
        } => {
            lines.push(format!(
                "~ default_ports: {old} → {new}, for the destinations that name no ports:"
            ));
            lines.push(format!("    {}", items(destinations)));
        }
        Kind::ClientAdded {
            position,
            sources,
            mode: m,
            allow,
            takes,
            unreachable,
        } => {
            lines.push(format!("+ client `{name}` (new, position {position})"));
            lines.push(format!("    sources: {}", items(sources)));
            lines.extend(takes.iter().map(taken));
            if *unreachable {
                lines.push(
                    "    matches no connection: earlier clients take every address it lists"
                        .to_string(),
                );
            }
            lines.push(format!("    mode: {}", mode(m)));
            if allow.is_empty() {
                lines.push("    allow: the top-level rules only".to_string());
            } else {
                lines.push(format!(
                    "    allow, besides the top level: {}",
                    items(allow)
                ));
            }
        }
        Kind::ClientRemoved {
            position,
            sources,
            gives,
            ..
        } => {
            lines.push(format!(
                "- client `{name}` (removed, was position {position})"
            ));
            lines.push(format!("    sources: {}", items(sources)));
            for h in gives {
                lines.push(gone(h, cx));
            }
        }
        Kind::Selector {
            selector,
            direction,
            old,
            new,
            every_v4,
            every_v6,
            takes,
            gives,
            ..
        } => {
            let every = match (every_v4, every_v6) {
                (true, true) => " (every address)",
                (true, false) => " (every IPv4 address)",
                (false, true) => " (every IPv6 address)",
                (false, false) => "",
            };
            lines.push(format!(
                "~ {selector} {direction}: {} → {}{every}",
                items(old),
                items(new)
            ));
            lines.extend(takes.iter().map(taken));
            lines.extend(gives.iter().map(|h| gone(h, cx)));
        }
        Kind::ClientOrder { old, new, moved } => {
            lines.push(format!("~ client order: {} → {}", names(old), names(new)));
            for h in moved {
                lines.push(format!(
                    "    {} now matched by `{}` instead of `{}`",
                    items(&h.ranges),
                    h.to.as_deref().unwrap_or("?"),
                    h.from.as_deref().unwrap_or("?")
                ));
            }
        }
        Kind::Destination {
            list,
            destination,
            old_ports,
            new_ports,
            owner,
            ticket,
        } => {
            let mut line = match (old_ports, new_ports) {
                (None, Some(new)) => format!("+ {list} {destination}:{new}"),
                (Some(old), None) => format!("- {list} {destination}:{old}"),
                (Some(old), Some(new)) => format!("~ {list} {destination}: {old} → {new}"),
                (None, None) => format!("~ {list} {destination}"),
            };
            let who: Vec<String> = [("owner", owner), ("ticket", ticket)]
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
                .collect();
            if !who.is_empty() {
                line.push_str(&format!("  ({})", who.join(", ")));
            }
            lines.push(line);
        }
        Kind::AllowPrivate {
            destination,
            now_dialable,
            now_blocked,
        } => {
            lines.push(format!("~ allow {destination}: allow_private changed"));
            lines.extend(
                now_dialable
                    .iter()
                    .map(|c| format!("    now dialable by this rule: {c}")),
            );
            lines.extend(
                now_blocked
                    .iter()
                    .map(|c| format!("    no longer dialable by this rule: {c}")),
            );
        }
    }
    lines.join("\n")
}

fn mode(m: &str) -> String {
    if m == "report" {
        format!("report ({UNRESTRICTED})")
    } else {
        m.to_string()
    }
}

fn guard_headline(now_dialable: &[String], now_blocked: &[String]) -> String {
    let ranges = |n: usize| {
        if n == 1 {
            "1 range".to_string()
        } else {
            format!("{n} ranges")
        }
    };
    match (now_dialable.len(), now_blocked.len()) {
        (0, 0) => "~ ip_guard: the lists changed; IPv6 addresses that embed an IPv4 address (::ffff:a.b.c.d, 64:ff9b::/96, 2002::/16) may be judged differently".to_string(),
        (d, 0) => {
            let metadata = if includes_metadata(now_dialable) {
                ", cloud metadata (169.254.169.254) among them"
            } else {
                ""
            };
            format!("~ ip_guard: the proxy may now dial {} it refused before{metadata}", ranges(d))
        }
        (0, b) => format!("~ ip_guard: the proxy now refuses to dial {}", ranges(b)),
        (d, b) => format!("~ ip_guard: {} now dialable, {} now blocked", ranges(d), ranges(b)),
    }
}

fn taken(h: &Handover) -> String {
    format!(
        "    takes {} from `{}`",
        items(&h.ranges),
        h.from.as_deref().unwrap_or("?")
    )
}

fn gone(h: &Handover, cx: &Context) -> String {
    match (&h.to, cx.listed) {
        (Some(to), _) => format!("    {} now matched by `{to}`", items(&h.ranges)),
        (None, true) => format!(
            "    {} now refused: no client lists it (client_not_allowed)",
            items(&h.ranges)
        ),
        (None, false) => format!("    {} now gets the top-level rules", items(&h.ranges)),
    }
}

fn names(list: &[String]) -> String {
    list.iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn items(list: &[String]) -> String {
    if list.is_empty() {
        return "(none)".to_string();
    }
    let mut out = list
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > SHOWN {
        out.push_str(&format!(" and {} more", list.len() - SHOWN));
    }
    out
}
