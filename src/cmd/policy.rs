//! `portcullis explain` and `diff`: the policy core, driven from files
//! (`check` lives in its own file).

use std::io::Write;
use std::net::IpAddr;

use crate::cli::{DiffArgs, ExplainArgs, OutputFormat};
use crate::policy::host::split_host_port;
use crate::policy::{Host, Policy, Verdict};
use crate::policy_file::{load_policy, render};

/// Exit codes shared by the subcommands.
pub mod exit {
    /// Success: valid policy, or allowed.
    pub const OK: i32 = 0;
    /// A policy file does not load, or a check failed.
    pub const INVALID: i32 = 1;
    /// Bad arguments or an unreadable input.
    pub const USAGE: i32 = 2;
    /// `explain`: the policy denies the destination.
    pub const DENY: i32 = 3;
}

/// Splits `HOST`, `HOST:PORT` or `[V6]:PORT`; the port defaults to 443.
pub fn split_target(target: &str) -> Result<(&str, u16), String> {
    split_host_port(target)
        .map(|(host, port)| (host, port.unwrap_or(443)))
        .map_err(|e| format!("`{target}`: {e}"))
}

/// `portcullis explain`: prints the decision, client, rule and target; returns the exit code.
pub fn explain(
    args: &ExplainArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> std::io::Result<i32> {
    let compiled = match load_policy(&args.policy) {
        Ok(c) => c,
        Err(errors) => {
            for d in &errors {
                writeln!(err, "{}", render(&args.policy, d))?;
            }
            return Ok(exit::USAGE);
        }
    };
    let (host, port) = match split_target(&args.target) {
        Ok(t) => t,
        Err(e) => {
            writeln!(err, "portcullis explain: {e}")?;
            return Ok(exit::USAGE);
        }
    };
    let policy = &compiled.policy;
    let parsed = Host::parse(host);
    let decision = match &parsed {
        Ok(h) => policy.decide(args.client, h, port),
        Err(_) => policy.bad_request(args.client),
    };
    writeln!(out, "decision: {}", decision.verdict.as_str())?;
    writeln!(out, "reason:   {}", decision.reason.as_str())?;
    writeln!(
        out,
        "client:   {}",
        client_line(policy, args.client, decision.client.as_deref())
    )?;
    match &decision.rule {
        Some(text) => writeln!(out, "rule:     {}", rule_line(policy, text))?,
        None => writeln!(out, "rule:     (none)")?,
    }
    match &parsed {
        Ok(h) => writeln!(out, "target:   {h} port {port}")?,
        Err(e) => writeln!(out, "target:   `{host}` is not a valid destination: {e}")?,
    }
    if let Ok(Host::Name(_)) = parsed
        && decision.verdict.permits()
    {
        writeln!(
            out,
            "note:     at connect time the addresses `{host}` resolves to must also pass ip_guard"
        )?;
    }
    Ok(match decision.verdict {
        Verdict::Allow | Verdict::Report => exit::OK,
        Verdict::Deny => exit::DENY,
    })
}

fn client_line(policy: &Policy, addr: IpAddr, name: Option<&str>) -> String {
    match (&policy.clients, name) {
        (None, _) => {
            format!("{addr} (the policy has no `clients`: every source gets the top-level rules)")
        }
        (Some(_), Some(name)) => format!("{name} ({addr})"),
        (Some(_), None) => format!("{addr} matches no `clients` entry"),
    }
}

fn rule_line(policy: &Policy, text: &str) -> String {
    let lists = std::iter::once(&policy.deny)
        .chain(std::iter::once(&policy.allow))
        .chain(policy.clients.iter().flatten().map(|c| &c.allow));
    lists
        .flat_map(|l| l.rules())
        .find(|r| &*r.text == text)
        .map_or_else(
            || text.to_string(),
            |r| format!("{text} (line {}, column {})", r.line, r.column),
        )
}

/// `portcullis diff OLD NEW`: exit 0 with the changes, 2 when either file does not load.
pub fn diff(args: &DiffArgs, out: &mut impl Write, err: &mut impl Write) -> std::io::Result<i32> {
    let (old, new) = match (load_policy(&args.old), load_policy(&args.new)) {
        (Ok(o), Ok(n)) => (o.policy, n.policy),
        (o, n) => {
            for (path, r) in [(&args.old, o), (&args.new, n)] {
                if let Err(problems) = r {
                    for d in &problems {
                        writeln!(err, "{}", render(path, d))?;
                    }
                }
            }
            return Ok(exit::USAGE);
        }
    };
    let changes = crate::policy::diff::diff(&old, &new);
    match args.format {
        OutputFormat::Text => write!(out, "{}", crate::policy::diff::render(&changes))?,
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&changes).expect("JSON values serialise")
        )?,
    }
    Ok(exit::OK)
}
