//! `portcullis suggest`: from the traffic `mode: report` saw to an allowlist to review.
//!
//! Reads audit records (files or stdin, plain or gzip, FireLens-wrapped or
//! behind a timestamp: see `input`), keeps what the proxy let through
//! (`allow` and `report`) and reached, and prints a policy file that would
//! allow it: one rule per destination with the ports seen, grouped per
//! client (what every client used goes to the top level), each commented
//! with how often and when it was seen. Lines that are not audit records,
//! and destinations that never resolved or connected, are counted and
//! listed, never suggested. With `--policy CURRENT`, every record is decided
//! again by CURRENT and only what it would not allow is printed, followed by
//! CURRENT's allow rules that no record used; `--merge` writes CURRENT with
//! the suggestions added instead. The output is deterministic: the same
//! records give the same bytes, whatever their order.

mod collapse;
mod flagged;
mod input;
mod merge;
mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

pub use collapse::{COLLAPSE_MIN_NAMES, Dest, Seen, Suggestion, collapse};
pub use flagged::{FLAGGED, Flagged, flagged};

use crate::cli::SuggestArgs;
use crate::cmd::exit;
use crate::policy::ip_guard::{IpGuard, default_blocked};
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
    /// Per destination and port, how often and when it was reached.
    dests: HashMap<Dest, BTreeMap<u16, Seen>>,
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

/// A destination (on one port) that never resolved or connected.
#[derive(Debug, Default)]
struct Failure {
    /// `reason` -> the distinct `error`s it came with.
    reasons: BTreeMap<String, BTreeSet<String>>,
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
    /// Lines that are not audit records, by why (`not JSON`, ...).
    pub not_records: BTreeMap<&'static str, u64>,
    /// Lines unwrapped from a FireLens `{"log": ...}` record.
    pub firelens: u64,
    /// Lines read behind a timestamp (and log stream) prefix.
    pub prefixed: u64,
}

/// Accumulates audit records; [`Suggester::render`] prints the policy.
pub struct Suggester<'p> {
    current: Option<&'p Policy>,
    client: Option<String>,
    groups: BTreeMap<Group, GroupData>,
    /// `(line, column)` of every CURRENT allow rule that decided a record.
    used: HashSet<(u64, u64)>,
    refused: BTreeMap<(Group, Dest), Refused>,
    /// Destinations (per port) that never resolved or connected.
    failed: BTreeMap<(Group, Dest, u16), Failure>,
    /// Without `--policy`: addresses the default `ip_guard` blocks that an
    /// allowed destination connected to, with those destinations.
    carve_outs: BTreeMap<IpAddr, BTreeSet<(Group, Dest)>>,
    /// Client names the records carry, for `--client`.
    clients_seen: BTreeSet<String>,
    /// Some record was `client_not_allowed`.
    unlisted_seen: bool,
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
            failed: BTreeMap::new(),
            carve_outs: BTreeMap::new(),
            clients_seen: BTreeSet::new(),
            unlisted_seen: false,
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

    /// Takes one line of a log: an audit record, plain, FireLens-wrapped or
    /// behind a timestamp; any other line is counted in [`Tally::not_records`].
    pub fn line(&mut self, line: &[u8]) {
        let Some(line) = input::classify(line) else {
            return;
        };
        self.tally.firelens += u64::from(line.firelens);
        self.tally.prefixed += u64::from(line.prefixed);
        match line.record {
            Ok(v) => {
                self.tally.records += 1;
                self.record(&v);
            }
            Err(why) => *self.tally.not_records.entry(why).or_default() += 1,
        }
    }

    /// Takes one audit record (one [`Suggester::line`] recognised as such).
    pub fn record(&mut self, v: &Value) {
        let field = |k: &str| v.get(k).and_then(Value::as_str);
        if field("event") == Some("policy_reload") {
            return self.skip("policy_reload");
        }
        if let Some(name) = field("client").filter(|n| !n.trim().is_empty())
            && !self.clients_seen.contains(name)
        {
            self.clients_seen.insert(name.to_string());
        }
        if field("reason") == Some("client_not_allowed") {
            self.unlisted_seen = true;
        }
        if field("reason") == Some("bad_request") {
            return self.skip("bad_request");
        }
        if !matches!(field("decision"), Some("allow" | "report")) {
            return self.skip("denied");
        }
        // Let through, but never reached: no allow rule makes it work.
        let failed = matches!(
            field("reason"),
            Some("dns_error" | "connect_error" | "connect_timeout")
        );
        let upstream = field("upstream_addr").and_then(parse_source);
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
                match self.decide_again(current, ip, &host, port, ts, upstream) {
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
        self.tally.seen.add(ts);
        let dest = dest_of(&host);
        if failed {
            let failure = self.failed.entry((group, dest, port)).or_default();
            let error = field("error").map(short).unwrap_or_default();
            let reason = field("reason").unwrap_or_default().to_string();
            let errors = failure.reasons.entry(reason).or_default();
            if !error.is_empty() {
                errors.insert(error);
            }
            failure.seen.add(ts);
            return;
        }
        self.tally.kept += 1;
        if self.current.is_none()
            && let Some(ip) = upstream.filter(|ip| !default_guard().is_dialable(*ip))
        {
            let used = self.carve_outs.entry(ip).or_default();
            used.insert((group.clone(), dest.clone()));
        }
        let data = self.groups.entry(group).or_default();
        data.sources.extend(source);
        data.dests
            .entry(dest)
            .or_default()
            .entry(port)
            .or_default()
            .add(ts);
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
        upstream: Option<IpAddr>,
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
        // An allow rule is not enough when the address it connected to is
        // one CURRENT's ip_guard blocks (the log's policy carved it out).
        let guarded = upstream
            .filter(|u| !current.guard.is_dialable(*u))
            .map(|u| {
                format!(
                    "connected to {u}, which `ip_guard` blocks: add a carve-out to `ip_guard.allowed` if that is meant"
                )
            });
        if decision.verdict == Verdict::Allow {
            let target = Target::new(host, port);
            let rule = current
                .allow
                .find(&target)
                .or_else(|| current.client_for(ip).and_then(|c| c.allow.find(&target)));
            if let Some(rule) = rule {
                self.used.insert((rule.line, rule.column));
            }
        }
        if decision.verdict == Verdict::Allow && guarded.is_none() {
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
            _ => match guarded {
                Some(why) => why,
                None => return Some(group),
            },
        };
        if self.wanted(&group) {
            self.tally.refused += 1;
            self.tally.seen.add(ts);
            let entry = self
                .refused
                .entry((group, dest_of(host)))
                .or_insert(Refused {
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

    /// Whether `--client NAME` selects anything these records hold.
    fn names_client(&self, name: &str) -> bool {
        name == EVERYONE
            || self.clients_seen.contains(name)
            || (name == UNLISTED && self.unlisted_seen)
    }

    /// CURRENT (the text of `--policy`) with the suggested rules added.
    pub fn merge(&self, current: &str, opts: &Options) -> Result<String, String> {
        merge::merge(self, current, opts)
    }

    fn wanted(&self, group: &Group) -> bool {
        self.client.as_deref().is_none_or(|c| c == group.selector())
    }

    /// The suggested policy file.
    pub fn render(&self, opts: &Options) -> String {
        render::render(self, opts)
    }
}

/// What a suggested rule for `host` matches.
fn dest_of(host: &Host) -> Dest {
    match host {
        Host::Name(n) => Dest::Name(n.to_string()),
        Host::Ip(ip) => Dest::Ip(ip.to_canonical()),
    }
}

/// The guard of a policy that does not set `ip_guard`.
fn default_guard() -> &'static IpGuard {
    static GUARD: std::sync::OnceLock<IpGuard> = std::sync::OnceLock::new();
    GUARD.get_or_init(|| IpGuard::new(default_blocked(), Vec::new()))
}

/// An `error` for a comment: one line, at most 120 characters.
fn short(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(120)
        .collect();
    if text.chars().count() > 120 {
        out.push_str("...");
    }
    out
}

/// `None` when `name` selects a list of `current`; else its clients, listed.
fn unknown_client(name: &str, current: &Policy) -> Option<String> {
    let clients = current.clients.iter().flatten();
    if name == EVERYONE
        || (name == UNLISTED && current.clients.is_some())
        || current.client_named(name).is_some()
    {
        return None;
    }
    Some(listed(clients.map(|c| &*c.name)))
}

/// Up to 20 names, comma-separated, for a message; `none` when there are none.
fn listed<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.map(render::clean).collect();
    match names.len() {
        0 => "none".to_string(),
        n if n > 20 => format!("{} and {} more", names[..20].join(", "), n - 20),
        _ => names.join(", "),
    }
}

/// What the reader must know even when only the policy is looked at: lines
/// that were no audit records, and flagged destinations.
fn notes(s: &Suggester<'_>, opts: &Options, err: &mut impl Write) -> io::Result<()> {
    let t = &s.tally;
    let not_records: u64 = t.not_records.values().sum();
    if not_records > 0 {
        let why: Vec<String> = (t.not_records.iter())
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        writeln!(
            err,
            "portcullis suggest: skipped {not_records} lines that are not audit records ({})",
            why.join(", ")
        )?;
    }
    let flagged = render::flagged_rules(s, opts);
    if !flagged.is_empty() {
        writeln!(
            err,
            "portcullis suggest: note: {} suggested {} known paste, file-sharing, request-capture or tunnel {}: {}",
            flagged.len(),
            if flagged.len() == 1 {
                "rule allows a"
            } else {
                "rules allow"
            },
            if flagged.len() == 1 {
                "service"
            } else {
                "services"
            },
            flagged.join(", ")
        )?;
    }
    Ok(())
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
    if let (Some(name), Some(path), Some(c)) = (&args.client, &args.policy, &current)
        && let Some(known) = unknown_client(name, &c.policy)
    {
        writeln!(
            err,
            "portcullis suggest: --client `{}` is no client of {} (its clients: {known}; `default` is the top-level list)",
            render::clean(name),
            path.display()
        )?;
        return Ok(exit::USAGE);
    }
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
    if let (Some(name), None) = (&args.client, &current)
        && !suggester.names_client(name)
    {
        writeln!(
            err,
            "portcullis suggest: --client `{}` matches no audit record (clients seen: {}; `default` is the top-level list)",
            render::clean(name),
            listed(suggester.clients_seen.iter().map(String::as_str))
        )?;
        return Ok(exit::USAGE);
    }
    notes(&suggester, &opts, err)?;
    let text = match (&args.policy, args.merge) {
        (Some(path), true) => {
            let merged = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| suggester.merge(&text, &opts));
            match merged {
                Ok(merged) => {
                    // What the fragment would say in comments goes to stderr.
                    let report = suggester.render(&opts);
                    for line in report.lines().filter(|l| l.starts_with('#')).skip(1) {
                        writeln!(err, "{line}")?;
                    }
                    merged
                }
                Err(why) => {
                    writeln!(
                        err,
                        "portcullis suggest: cannot merge into {}: {why}; run without --merge for the rules to add",
                        path.display()
                    )?;
                    return Ok(exit::INVALID);
                }
            }
        }
        _ => suggester.render(&opts),
    };
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
