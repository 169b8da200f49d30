//! `portcullis explain`: how the policy decides one destination, and why.

use std::io::Write;
use std::net::IpAddr;

use crate::cli::{ExplainArgs, OutputFormat};
use crate::cmd::exit;
use crate::policy::explain::{Explanation, Placed, parse_target};
use crate::policy::{
    Caller, CertName, Client, Credentials, Host, Identity, Policy, PresentedToken, TokenDigest,
    Verdict, identity::parse_vpc_endpoint,
};
use crate::policy_file::{load_policy, render};

/// Who asks: a client picked by name, or a source address (and the
/// credentials of `--identity`) matched as the proxy would, with the
/// credential that named the client.
enum Asker<'p> {
    Named(&'p Client),
    Source(Credentials, Option<(&'p Client, Option<Identity>)>),
}

/// `portcullis explain`: prints the decision, client, rule and why; returns the exit code.
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
    let policy = &compiled.policy;
    let (host, port) = match parse_target(&args.target) {
        Ok(t) => t,
        Err(e) => {
            writeln!(err, "portcullis explain: {e}")?;
            return Ok(exit::USAGE);
        }
    };
    let asker = match pick_client(policy, &args.client, &args.identity) {
        Ok(a) => a,
        Err(e) => {
            writeln!(err, "portcullis explain: {e}")?;
            return Ok(exit::USAGE);
        }
    };
    let client = match &asker {
        Asker::Named(c) => Some(*c),
        Asker::Source(_, c) => c.as_ref().map(|(c, _)| *c),
    };
    let mut e = policy.explain(client, &host, port);
    if let Asker::Source(creds, _) = &asker {
        e.caller = Some(Caller::from(creds).describe());
    }
    match args.format {
        OutputFormat::Text => write_text(out, policy, &asker, &e, &host, port)?,
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json(&asker, &e, &host, port))
                .expect("JSON values serialise")
        )?,
    }
    Ok(match e.decision.verdict {
        Verdict::Allow | Verdict::Report => exit::OK,
        Verdict::Deny => exit::DENY,
    })
}

fn pick_client<'p>(
    policy: &'p Policy,
    arg: &str,
    identity: &[String],
) -> Result<Asker<'p>, String> {
    let arg = arg.trim();
    if let Ok(ip) = arg.parse::<IpAddr>() {
        let creds = credentials(ip, identity)?;
        let matched = policy.matched(&creds);
        return Ok(Asker::Source(creds, matched));
    }
    if !identity.is_empty() {
        return Err(format!(
            "--identity is matched as the proxy would, from a source address: give --client an IP, not `{arg}`"
        ));
    }
    let Some(clients) = &policy.clients else {
        return Err(format!(
            "--client `{arg}`: the policy has no `clients`; give a source address, or leave --client out"
        ));
    };
    if let Some(c) = policy.client_named(arg) {
        return Ok(Asker::Named(c));
    }
    let names: Vec<&str> = clients.iter().map(|c| &*c.name).collect();
    Err(
        match crate::policy::keys::closest(arg, names.iter().copied()) {
            Some(near) => format!("--client `{arg}`: no such client; did you mean `{near}`?"),
            None => format!(
                "--client `{arg}` is neither an IP address nor a client (clients: {})",
                names.join(", ")
            ),
        },
    )
}

/// The credentials a caller at `addr` presents with `--identity`: a
/// certificate's names, a token (by its digest) and a VPC endpoint.
fn credentials(addr: IpAddr, identity: &[String]) -> Result<Credentials, String> {
    let mut creds = Credentials::from(addr);
    let mut names = Vec::new();
    for text in identity.iter().map(|t| t.trim()) {
        if text.starts_with("sha256:") {
            let digest =
                TokenDigest::parse_selector(text).map_err(|e| format!("--identity {e}"))?;
            creds.token = Some(PresentedToken {
                user: String::new(),
                digest,
            });
        } else if text.starts_with("vpce-") {
            let id = parse_vpc_endpoint(text).map_err(|e| format!("--identity {e}"))?;
            creds.vpc_endpoint = Some(id.into());
        } else {
            names.push(CertName::parse_selector(text).map_err(|e| {
                format!("--identity {e}; or a token's `sha256:` digest, or a `vpce-` id")
            })?);
        }
    }
    creds.certificate = names.into();
    Ok(creds)
}

fn write_text(
    out: &mut impl Write,
    policy: &Policy,
    asker: &Asker<'_>,
    e: &Explanation<'_>,
    host: &str,
    port: u16,
) -> std::io::Result<()> {
    writeln!(out, "decision: {}", e.decision.verdict.as_str())?;
    writeln!(out, "reason:   {}", e.decision.reason.as_str())?;
    writeln!(out, "client:   {}", client_line(policy, asker))?;
    match &e.rule {
        Some(r) => {
            writeln!(out, "rule:     {}", rule_line(r))?;
            if let Some(owner) = r.rule.owner() {
                writeln!(out, "owner:    {owner}")?;
            }
            if let Some(ticket) = r.rule.ticket() {
                writeln!(out, "ticket:   {ticket}")?;
            }
            if let Some(day) = r.rule.expires() {
                writeln!(out, "expires:  {day}")?;
            }
            if !r.rule.allow_private().is_empty() {
                writeln!(
                    out,
                    "private:  {} (guarded private addresses this rule may dial)",
                    ranges(r.rule.allow_private()).join(", ")
                )?;
            }
        }
        None => writeln!(out, "rule:     (none)")?,
    }
    match &e.host {
        Ok(h) => writeln!(out, "target:   {h} port {port}")?,
        Err(err) => writeln!(out, "target:   `{host}` is not a valid destination: {err}")?,
    }
    writeln!(out, "why:      {}", e.summary(port))?;
    if let Ok(Host::Name(_)) = &e.host
        && e.decision.verdict.permits()
    {
        writeln!(
            out,
            "note:     at connect time the addresses `{host}` resolves to must also pass ip_guard"
        )?;
    }
    Ok(())
}

fn client_line(policy: &Policy, asker: &Asker<'_>) -> String {
    match (asker, &policy.clients) {
        (Asker::Named(c), _) => format!("{} (by name)", c.name),
        (Asker::Source(creds, _), None) => format!(
            "{} (the policy has no `clients`: every source gets the top-level rules)",
            creds.addr
        ),
        (Asker::Source(creds, Some((c, identity))), Some(_)) => {
            let by = match identity {
                Some(i) => format!("{}, identity {}", creds.addr, i.name),
                None => creds.addr.to_string(),
            };
            format!("{} ({by})", c.name)
        }
        (Asker::Source(creds, None), Some(_)) => {
            format!(
                "{} matches no `clients` entry",
                Caller::from(creds).describe()
            )
        }
    }
}

/// `TEXT (deny rule, line L, column C)`; in a policy directory
/// `TEXT (deny rule, FILE line L, column C)`.
fn rule_line(r: &Placed<'_>) -> String {
    format!(
        "{} ({}, {}, column {})",
        r.rule.text,
        r.kind(),
        r.rule.place(),
        r.rule.column
    )
}

fn placed_json(r: &Placed<'_>) -> serde_json::Value {
    serde_json::json!({
        "text": &*r.rule.text,
        "list": r.list.as_str(),
        "ports": r.rule.ports.to_string(),
        "file": r.rule.file.as_deref(),
        "line": r.rule.line,
        "column": r.rule.column,
        "owner": r.rule.owner(),
        "ticket": r.rule.ticket(),
        "expires": r.rule.expires().map(|d| d.to_string()),
        "allow_private": ranges(r.rule.allow_private()),
    })
}

/// `allow_private` ranges as CIDR strings.
fn ranges(nets: &[ipnet::IpNet]) -> Vec<String> {
    nets.iter().map(ToString::to_string).collect()
}

fn json(asker: &Asker<'_>, e: &Explanation<'_>, host: &str, port: u16) -> serde_json::Value {
    let (name, source) = match asker {
        Asker::Named(c) => (Some(c.name.to_string()), None),
        Asker::Source(creds, c) => (
            c.as_ref().map(|(c, _)| c.name.to_string()),
            Some(creds.addr.to_string()),
        ),
    };
    let identity = match asker {
        Asker::Source(_, Some((_, Some(i)))) => Some(i.name.clone()),
        _ => None,
    };
    serde_json::json!({
        "decision": e.decision.verdict.as_str(),
        "reason": e.decision.reason.as_str(),
        "client": { "name": name, "source": source, "identity": identity },
        "rule": e.rule.as_ref().map(placed_json),
        "denied_by_rule": e.denied_by_rule(),
        "overridden": e.overridden.as_ref().map(placed_json),
        "other_ports": e.other_ports.iter().map(placed_json).collect::<Vec<_>>(),
        "target": {
            "host": e.host.as_ref().map_or_else(|_| host.to_string(), ToString::to_string),
            "port": port,
            "valid": e.host.is_ok(),
        },
        "summary": e.summary(port),
    })
}
