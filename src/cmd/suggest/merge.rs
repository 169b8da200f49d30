//! `suggest --policy CURRENT --merge`: CURRENT's own text with the suggested
//! rules added at the end of the list each belongs to (and a client for
//! unlisted sources appended to `clients`).
//!
//! Editing the text, not re-rendering the compiled policy, keeps everything
//! a reviewer wrote: comments, rule metadata, `ip_guard` carve-outs, key
//! order, quoting. The review diff is the added lines only. The edit is then
//! checked: the result must load, and every list must hold exactly its
//! rules before plus the ones added, with clients, `deny`, `ip_guard` and
//! `mode` unchanged. A file laid out in a way this does not edit safely
//! (a client written as a flow mapping, say) is an error, never a guess.

use std::cmp::Reverse;

use super::render::{self, List, Plan, quote};
use super::{Group, Options, Suggester, Suggestion};
use crate::policy::raw::RawPolicy;
use crate::policy::{Client, Policy};

/// Lines to insert before line index `at`, after replacing one line.
struct Edit {
    at: usize,
    /// Order among edits at the same `at`, lowest applied first (so it ends
    /// up last): an appended top-level `allow` after a new client, a new
    /// client after the rules added to the last client.
    order: u8,
    replace: Option<(usize, String)>,
    lines: Vec<String>,
}

/// CURRENT's `text` with the plan's rules added; `Err` says why it cannot be.
pub(super) fn merge(s: &Suggester<'_>, text: &str, opts: &Options) -> Result<String, String> {
    let current = s.current.ok_or("--merge needs --policy")?;
    let raw: RawPolicy =
        serde_saphyr::from_str(text).map_err(|e| format!("cannot parse it again: {e}"))?;
    let lines: Vec<&str> = text.lines().collect();
    let plan = render::plan(s, opts);
    let mut edits = Vec::new();
    for list in plan.lists.iter().filter(|l| !l.rules.is_empty()) {
        let edit = match &list.group {
            Group::Everyone => add_to_list(&lines, top_level_allow(&lines), 0, &list.rules)?,
            Group::Client { name, .. } => {
                let (line, indent) = client_at(&raw, &lines, name)?;
                let end = block_end(&lines, line, indent);
                match key_in(&lines, line, end, indent, "allow") {
                    Some(key) => add_to_list(&lines, Some(key), indent, &list.rules)?,
                    None => Edit {
                        at: end + 1,
                        order: 2,
                        replace: None,
                        lines: std::iter::once(format!("{}allow:", " ".repeat(indent)))
                            .chain(items(&list.rules, indent + 2))
                            .collect(),
                    },
                }
            }
            Group::Unlisted => new_client(s, &raw, &lines, list)?,
        };
        edits.push(edit);
    }
    edits.sort_by_key(|e| (Reverse(e.at), e.order));
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    for edit in edits {
        if let Some((i, line)) = edit.replace {
            out[i] = line;
        }
        out.splice(edit.at..edit.at, edit.lines);
    }
    let mut merged = out.join("\n");
    merged.push('\n');
    verify(current, &merged, &plan)?;
    Ok(merged)
}

/// The rules as block sequence items at `indent`, each with its comments.
fn items(rules: &[Suggestion], indent: usize) -> Vec<String> {
    let mut text = String::new();
    render::rules(rules, &" ".repeat(indent), &mut text);
    text.lines().map(str::to_string).collect()
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

/// Line index of the top-level `allow:` key.
fn top_level_allow(lines: &[&str]) -> Option<usize> {
    lines.iter().position(|l| is_key(l, 0, "allow"))
}

/// Whether `line` has `key:` starting at column `indent` (after a `- ` on
/// the line of a sequence item's first key).
fn is_key(line: &str, indent: usize, key: &str) -> bool {
    let (Some(head), Some(rest)) = (line.get(..indent), line.get(indent..)) else {
        return false;
    };
    let head = head.trim_end_matches(' ');
    (head.is_empty() || head.trim_start() == "-")
        && rest
            .strip_prefix(key)
            .is_some_and(|r| r.trim_start_matches(' ').starts_with(':'))
}

/// Index of the last content line of the block whose keys start at column
/// `indent` on line `start` (everything indented deeper, comments between).
fn block_end(lines: &[&str], start: usize, indent: usize) -> usize {
    let mut end = start;
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        if !is_content(line) {
            continue;
        }
        if indent_of(line) < indent {
            break;
        }
        end = i;
    }
    end
}

/// The first line in `start..=end` with `key:` at column `indent`.
fn key_in(lines: &[&str], start: usize, end: usize, indent: usize, key: &str) -> Option<usize> {
    (start..=end).find(|&i| is_key(lines[i], indent, key))
}

/// Line index and key column of client `name`'s mapping.
fn client_at(raw: &RawPolicy, lines: &[&str], name: &str) -> Result<(usize, usize), String> {
    let client = (raw.clients.iter().flatten())
        .find(|c| {
            c.value
                .name
                .as_ref()
                .is_some_and(|n| n.value.trim() == name)
        })
        .ok_or_else(|| format!("client `{}` is not in the file", render::clean(name)))?;
    locate(lines, client.referenced.line(), client.referenced.column())
}

/// A mapping's position as the parser gives it, moved past a `- ` to its first key.
fn locate(lines: &[&str], line: u64, column: u64) -> Result<(usize, usize), String> {
    let i = usize::try_from(line)
        .unwrap_or(usize::MAX)
        .saturating_sub(1);
    let text = lines.get(i).ok_or("a client's position is past the end")?;
    let mut col = usize::try_from(column)
        .unwrap_or(usize::MAX)
        .saturating_sub(1);
    let bytes = text.as_bytes();
    while col < bytes.len() && (bytes[col] == b'-' || bytes[col] == b' ') {
        col += 1;
    }
    match bytes.get(col) {
        Some(b) if b.is_ascii_alphabetic() => Ok((i, col)),
        _ => Err(format!(
            "the client on line {} is not a block mapping (`- name: ...` on its own lines)",
            i + 1
        )),
    }
}

/// Adds `rules` to the list whose key is on line `key` (`None`: no
/// top-level `allow`, so one is appended) with the key at column `indent`.
fn add_to_list(
    lines: &[&str],
    key: Option<usize>,
    indent: usize,
    rules: &[Suggestion],
) -> Result<Edit, String> {
    let Some(k) = key else {
        return Ok(Edit {
            at: lines.len(),
            order: 0,
            replace: None,
            lines: std::iter::once("allow:".to_string())
                .chain(items(rules, 2))
                .collect(),
        });
    };
    let line = lines[k];
    let colon = indent + line[indent..].find(':').expect("is_key found a colon");
    let value = &line[colon + 1..];
    let bare = match value.find(" #") {
        Some(i) => &value[..i],
        None => value,
    }
    .trim();
    if bare.is_empty() {
        // A block sequence: append after its last item.
        let first = (k + 1..lines.len())
            .find(|&i| is_content(lines[i]))
            .filter(|&i| lines[i].trim_start().starts_with("- ") || lines[i].trim() == "-")
            .ok_or_else(|| format!("the list on line {} is not a block sequence", k + 1))?;
        let item = indent_of(lines[first]);
        let mut end = first;
        for (i, l) in lines.iter().enumerate().skip(first + 1) {
            if !is_content(l) {
                continue;
            }
            let ind = indent_of(l);
            if ind > item || (ind == item && l.trim_start().starts_with('-')) {
                end = i;
            } else {
                break;
            }
        }
        return Ok(Edit {
            at: end + 1,
            order: 2,
            replace: None,
            lines: items(rules, item),
        });
    }
    let open = colon
        + 1
        + value
            .find('[')
            .filter(|_| bare.starts_with('['))
            .ok_or_else(|| {
                format!(
                    "the list on line {} is written in a form --merge does not edit",
                    k + 1
                )
            })?;
    if bare == "[]" {
        // `allow: []` becomes a block sequence below the key.
        let close = line[open..].find(']').expect("`[]` closes") + open;
        let rewritten = format!("{}{}", line[..open].trim_end(), &line[close + 1..]);
        return Ok(Edit {
            at: k + 1,
            order: 2,
            replace: Some((k, rewritten)),
            lines: items(rules, indent + 2),
        });
    }
    // A flow sequence: the new rules go first inside the brackets (no room
    // for their comments there).
    let added: Vec<String> = rules.iter().map(|r| quote(&r.rule_text())).collect();
    let rewritten = format!(
        "{} {}, {}",
        &line[..=open],
        added.join(", "),
        line[open + 1..].trim_start()
    );
    Ok(Edit {
        at: k + 1,
        order: 2,
        replace: Some((k, rewritten)),
        lines: Vec::new(),
    })
}

/// The client for unlisted sources, appended after the last client.
fn new_client(
    s: &Suggester<'_>,
    raw: &RawPolicy,
    lines: &[&str],
    list: &List,
) -> Result<Edit, String> {
    let last = (raw.clients.iter().flatten().last())
        .ok_or("unlisted sources, but the file has no `clients`")?;
    let (line, indent) = locate(lines, last.referenced.line(), last.referenced.column())?;
    let end = block_end(lines, line, indent);
    let dash = indent
        .checked_sub(2)
        .ok_or("a client's keys are not after `- `")?;
    let mut text = String::new();
    render::client(s, list, &render::unlisted_name(s), &mut text);
    let lines = text
        .lines()
        .map(|l| match dash {
            2 => l.to_string(),
            d if d > 2 => format!("{}{l}", " ".repeat(d - 2)),
            d => l[2 - d..].to_string(),
        })
        .collect();
    Ok(Edit {
        at: end + 1,
        order: 1,
        replace: None,
        lines,
    })
}

/// The merged text loads and differs from CURRENT by exactly the added rules.
fn verify(current: &Policy, merged: &str, plan: &Plan<'_>) -> Result<(), String> {
    let compiled = Policy::from_yaml(merged).map_err(|problems| {
        let first = problems.first().map(ToString::to_string);
        format!(
            "the merged file does not load ({})",
            first.unwrap_or_default()
        )
    })?;
    let new = compiled.policy;
    let added = |group: &Group| -> Vec<String> {
        (plan.lists.iter())
            .filter(|l| l.group == *group)
            .flat_map(|l| l.rules.iter().map(Suggestion::rule_text))
            .collect()
    };
    let texts = |rules: &crate::policy::ruleset::RuleSet| -> Vec<String> {
        let mut t: Vec<String> = rules.rules().iter().map(|r| r.text.to_string()).collect();
        t.sort();
        t
    };
    let expect = |before: &crate::policy::ruleset::RuleSet, group: &Group| {
        let mut t = texts(before);
        t.extend(added(group));
        t.sort();
        t
    };
    let mismatch = |what: &str| Err(format!("the edit changed {what} (a bug: please report it)"));
    if texts(&new.allow) != expect(&current.allow, &Group::Everyone) {
        return mismatch("the top-level `allow`");
    }
    if texts(&new.deny) != texts(&current.deny)
        || new.mode != current.mode
        || new.guard.allowed() != current.guard.allowed()
        || new.guard.blocked() != current.guard.blocked()
    {
        return mismatch("`deny`, `mode` or `ip_guard`");
    }
    let before: &[Client] = current.clients.as_deref().unwrap_or_default();
    let after: &[Client] = new.clients.as_deref().unwrap_or_default();
    let unlisted = plan.lists.iter().any(|l| l.group == Group::Unlisted);
    if after.len() != before.len() + usize::from(unlisted) {
        return mismatch("the number of clients");
    }
    for (rank, (b, a)) in before.iter().zip(after).enumerate() {
        let group = Group::Client {
            rank,
            name: b.name.to_string(),
        };
        if a.name != b.name
            || a.selectors.sources != b.selectors.sources
            || a.mode != b.mode
            || texts(&a.allow) != expect(&b.allow, &group)
        {
            return mismatch(&format!("client `{}`", render::clean(&b.name)));
        }
    }
    if unlisted {
        let a = after.last().expect("one client more");
        let mut want = added(&Group::Unlisted);
        want.sort();
        if texts(&a.allow) != want {
            return mismatch("the client for unlisted sources");
        }
    }
    Ok(())
}
