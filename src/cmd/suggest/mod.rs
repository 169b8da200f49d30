//! `portcullis suggest`: from the traffic `mode: report` saw to an allowlist to review.
//!
//! Reads audit records (SPEC section 8; files or stdin, plain or gzip),
//! keeps what the proxy let through (`allow` and `report`), and prints a
//! policy file that would allow it: one rule per destination with the ports
//! seen, grouped per client, each commented with how often and when it was
//! seen. With `--policy CURRENT`, every record is decided again by CURRENT
//! and only what it would not allow is printed, followed by CURRENT's allow
//! rules that no record used. The output is deterministic: the same records
//! give the same bytes, whatever their order.

mod collapse;
mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

pub use collapse::{COLLAPSE_MIN_NAMES, Dest, Seen, Suggestion, collapse};

use crate::cli::SuggestArgs;
use crate::cmd::exit;
use crate::policy::ruleset::Target;
use crate::policy::{Host, Policy, Reason, Verdict};
use crate::policy_file::{load_policy, render as render_diagnostic};

/// `--client` value that selects the top-level `allow` (as in `portcullis diff`).
pub const EVERYONE: &str = crate::policy::diff::EVERYONE;
/// Name given to sources no `clients` entry listed (made unique if taken).
pub const UNLISTED: &str = "unlisted";

/// Whether sibling names may become one wildcard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Collapse {
    /// 3 or more names below one parent (at or below their registrable
    /// domain) become `*.parent`, never over a public suffix or a
    /// shared-tenant domain.
    #[default]
    Auto,
    /// Exact names only.
    None,
}

/// What to print.
#[derive(Clone, Debug)]
pub struct Options {
    /// How names are merged into wildcards.
    pub collapse: Collapse,
    /// Destinations seen fewer times are left out.
    pub min_count: u64,
    /// Only this client's list (`default`: the top-level list; `unlisted`).
    pub client: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            collapse: Collapse::Auto,
            min_count: 1,
            client: None,
        }
    }
}

/// Whose list a destination goes into. The order is the output's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// The top-level `allow`.
    Everyone,
    /// A `clients` entry; `rank` is its position in `--policy` (0 without
    /// one, so that clients sort by name).
    Client {
        /// Position in `--policy`.
        rank: usize,
        /// The entry's name.
        name: String,
    },
    /// Sources that no `clients` entry listed (`client_not_allowed`).
    Unlisted,
}

impl Group {
    /// The name `--client` selects it by.
    fn selector(&self) -> &str {
        match self {
            Group::Everyone => EVERYONE,
            Group::Client { name, .. } => name,
            Group::Unlisted => UNLISTED,
        }
    }
}

/// What was seen for one group.
#[derive(Debug, Default)]
struct GroupData {
    dests: HashMap<Dest, Suggestion>,
    /// Client addresses seen (canonical: IPv4-mapped IPv6 as IPv4).
    sources: BTreeSet<IpAddr>,
}

/// A destination the current policy refuses in a way an allow rule cannot fix.
#[derive(Debug)]
struct Refused {
    /// Why, one entry per distinct reason (ports may differ in why).
    why: BTreeSet<String>,
    ports: BTreeSet<u16>,
    seen: Seen,
}

/// How the records read were used, for the output's header.
#[derive(Debug, Default)]
pub struct Tally {
    /// Audit records read (JSON objects).
    pub records: u64,
    /// Records that went into a suggestion.
    pub kept: u64,
    /// `--policy`: records CURRENT already allows.
    pub allowed: u64,
    /// `--policy`: records CURRENT refuses by `deny` or `ip_guard`.
    pub refused: u64,
    /// Span of the records considered (neither skipped nor filtered out).
    pub seen: Seen,
    /// Records left out, by why.
    pub skipped: BTreeMap<&'static str, u64>,
}

/// Accumulates audit records; [`Suggester::render`] prints the policy.
pub struct Suggester<'p> {
    current: Option<&'p Policy>,
    client: Option<String>,
    groups: BTreeMap<Group, GroupData>,
    /// `(line, column)` of every CURRENT allow rule that decided a record.
    used: HashSet<(u64, u64)>,
    refused: BTreeMap<(Group, Dest), Refused>,
    tally: Tally,
}

impl<'p> Suggester<'p> {
    /// `current` is `--policy`; `client` is `--client`.
    pub fn new(current: Option<&'p Policy>, client: Option<String>) -> Suggester<'p> {
        Suggester {
            current,
            client,
            groups: BTreeMap::new(),
            used: HashSet::new(),
            refused: BTreeMap::new(),
            tally: Tally::default(),
        }
    }

    /// Counts of the records read so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Reads JSON lines from `reader`, gunzipping when it starts with the
    /// gzip magic bytes (concatenated members, as `cat a.gz b.gz` makes, are read).
    pub fn read(&mut self, mut reader: impl Read) -> io::Result<()> {
        let mut magic = [0u8; 2];
        let mut n = 0;
        while n < magic.len() {
            match reader.read(&mut magic[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let whole = io::Cursor::new(magic[..n].to_vec()).chain(reader);
        if magic[..n] == [0x1f, 0x8b] {
            self.read_lines(BufReader::new(flate2::read::MultiGzDecoder::new(whole)))
        } else {
            self.read_lines(BufReader::new(whole))
        }
    }

    fn read_lines(&mut self, mut reader: impl BufRead) -> io::Result<()> {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                return Ok(());
            }
            self.line(&buf);
        }
    }

    fn skip(&mut self, why: &'static str) {
        *self.tally.skipped.entry(why).or_default() += 1;
    }

    /// Takes one line of an audit log.
    pub fn line(&mut self, line: &[u8]) {
        if line.trim_ascii().is_empty() {
            return;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v @ Value::Object(_)) => {
                self.tally.records += 1;
                self.record(&v);
            }
            _ => self.skip("not a JSON audit record"),
        }
    }

    /// Takes one parsed audit record.
    pub fn record(&mut self, v: &Value) {
        let field = |k: &str| v.get(k).and_then(Value::as_str);
        if field("event") == Some("policy_reload") {
            return self.skip("policy_reload");
        }
        if field("reason") == Some("bad_request") {
            return self.skip("bad_request");
        }
        if !matches!(field("decision"), Some("allow" | "report")) {
            return self.skip("denied");
        }
        let port = v
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let (Some(host), Some(port)) = (field("host"), port) else {
            return self.skip("no host or port");
        };
        let Ok(host) = Host::parse(host) else {
            return self.skip("host not a valid name or IP");
        };
        let ts = field("ts").filter(|t| plausible_timestamp(t));
        let source = field("client_addr").and_then(parse_source);
        let group = match self.current {
            None => match (field("client").map(str::trim), field("reason")) {
                (Some(name), _) if !name.is_empty() => Group::Client {
                    rank: 0,
                    name: name.to_string(),
                },
                (_, Some("client_not_allowed")) => Group::Unlisted,
                _ => Group::Everyone,
            },
            Some(current) => {
                let Some(ip) = source else {
                    return self.skip("no client_addr to decide with --policy");
                };
                match self.decide_again(current, ip, &host, port, ts) {
                    Some(group) => group,
                    None => return,
                }
            }
        };
        if group != Group::Everyone && source.is_none() {
            return self.skip("no client_addr");
        }
        if self
            .client
            .as_deref()
            .is_some_and(|c| c != group.selector())
        {
            return self.skip("other clients (--client)");
        }
        self.tally.kept += 1;
        self.tally.seen.add(ts);
        let data = self.groups.entry(group).or_default();
        data.sources.extend(source);
        let dest = match host {
            Host::Name(n) => Dest::Name(n.into()),
            Host::Ip(ip) => Dest::Ip(ip.to_canonical()),
        };
        let s = data
            .dests
            .entry(dest.clone())
            .or_insert_with(|| Suggestion::new(dest));
        s.ports.insert(port);
        s.seen.add(ts);
    }

    /// Decides a record with CURRENT: `Some(group)` when an allow rule would
    /// let it through; `None` when it is allowed already (the rule is marked
    /// used) or refused by `deny` / `ip_guard` (noted).
    fn decide_again(
        &mut self,
        current: &Policy,
        ip: IpAddr,
        host: &Host,
        port: u16,
        ts: Option<&str>,
    ) -> Option<Group> {
        let decision = current.decide(ip, host, port);
        let group = match (&decision.client, &current.clients) {
            (Some(name), Some(clients)) => Group::Client {
                rank: clients
                    .iter()
                    .position(|c| c.name == *name)
                    .unwrap_or(usize::MAX),
                name: name.to_string(),
            },
            (None, Some(_)) => Group::Unlisted,
            _ => Group::Everyone,
        };
        if decision.verdict == Verdict::Allow {
            let target = Target::new(host, port);
            let rule = current
                .allow
                .find(&target)
                .or_else(|| current.client_for(ip).and_then(|c| c.allow.find(&target)));
            if let Some(rule) = rule {
                self.used.insert((rule.line, rule.column));
            }
            if self.wanted(&group) {
                self.tally.allowed += 1;
                self.tally.seen.add(ts);
            } else {
                self.skip("other clients (--client)");
            }
            return None;
        }
        let why = match (decision.reason, &decision.rule) {
            (Reason::NotAllowed, Some(rule)) => {
                format!("denied by `{rule}` in `deny` (deny wins over allow)")
            }
            (Reason::BlockedIp, Some(rule)) => {
                format!("allowed by `{rule}`, but the address is in `ip_guard.blocked`")
            }
            _ => return Some(group),
        };
        if self.wanted(&group) {
            self.tally.refused += 1;
            self.tally.seen.add(ts);
            let dest = match host {
                Host::Name(n) => Dest::Name(n.to_string()),
                Host::Ip(ip) => Dest::Ip(ip.to_canonical()),
            };
            let entry = self.refused.entry((group, dest)).or_insert(Refused {
                why: BTreeSet::new(),
                ports: BTreeSet::new(),
                seen: Seen::default(),
            });
            entry.why.insert(why);
            entry.ports.insert(port);
            entry.seen.add(ts);
        } else {
            self.skip("other clients (--client)");
        }
        None
    }

    fn wanted(&self, group: &Group) -> bool {
        self.client.as_deref().is_none_or(|c| c == group.selector())
    }

    /// The suggested policy file.
    pub fn render(&self, opts: &Options) -> String {
        render::render(self, opts)
    }
}

/// The proxy writes `2026-11-29T17:11:43.908Z`; anything else (which might
/// carry a newline into a comment) is ignored.
fn plausible_timestamp(ts: &str) -> bool {
    ts.len() <= 40
        && !ts.is_empty()
        && ts
            .bytes()
            .all(|b| b.is_ascii_digit() || b"-:.TZ+".contains(&b))
}

/// `client_addr` is `IP:PORT` (`[v6]:PORT`); a bare IP is accepted too.
fn parse_source(text: &str) -> Option<IpAddr> {
    text.parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| text.parse::<IpAddr>())
        .ok()
        .map(|ip| ip.to_canonical())
}

/// `portcullis suggest`: exit 0 with the policy on `out`; 2 when an input
/// or `--policy` cannot be read; 1 if the suggestion itself does not load
/// (a bug: it is printed anyway, with the problems on `err`).
pub fn run(args: &SuggestArgs, out: &mut impl Write, err: &mut impl Write) -> io::Result<i32> {
    let current = match &args.policy {
        None => None,
        Some(path) => match load_policy(path) {
            Ok(c) => Some(c),
            Err(problems) => {
                for d in &problems {
                    writeln!(err, "{}", render_diagnostic(path, d))?;
                }
                return Ok(exit::USAGE);
            }
        },
    };
    let opts = Options {
        collapse: args.collapse,
        min_count: args.min_count,
        client: args.client.clone(),
    };
    let mut suggester = Suggester::new(current.as_ref().map(|c| &c.policy), opts.client.clone());
    let stdin = ["-".to_string()];
    let inputs = if args.audit.is_empty() {
        &stdin[..]
    } else {
        &args.audit[..]
    };
    for input in inputs {
        let read = if input == "-" {
            suggester.read(io::stdin().lock())
        } else {
            std::fs::File::open(input).and_then(|f| suggester.read(f))
        };
        if let Err(e) = read {
            writeln!(err, "portcullis suggest: cannot read `{input}`: {e}")?;
            return Ok(exit::USAGE);
        }
    }
    let text = suggester.render(&opts);
    let code = match Policy::from_yaml(&text) {
        Ok(compiled) => {
            for w in compiled.warnings(crate::policy_file::today()) {
                writeln!(
                    err,
                    "portcullis suggest: note: the suggestion has a warning: {w}"
                )?;
            }
            exit::OK
        }
        Err(problems) => {
            for d in &problems {
                writeln!(err, "portcullis suggest: the suggestion does not load: {d}")?;
            }
            exit::INVALID
        }
    };
    out.write_all(text.as_bytes())?;
    Ok(code)
}

#[cfg(test)]
mod tests;
