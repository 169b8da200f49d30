//! squid.conf as far as access control goes: `acl` lines, `http_access`
//! rules in order, and every other directive kept with its line for a comment.

use std::collections::HashMap;
use std::path::Path;

use ipnet::IpNet;

use super::super::ImportError;

/// What an `acl` tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `dstdomain`: the requested host name.
    DstDomain,
    /// `src`: the client address.
    Src,
    /// `dst`: the destination address.
    Dst,
    /// `port`: the destination port.
    Port,
    /// `method`: the request method.
    Method,
    /// Anything else (`dstdom_regex`, `time`, `proxy_auth`, …): kept by name.
    Other(String),
}

/// One named ACL, with every value its lines gave it.
#[derive(Clone, Debug)]
pub(crate) struct Acl {
    pub(crate) kind: Kind,
    /// Where it was first defined (0 for Squid's built-in ACLs).
    pub(crate) line: usize,
    /// Values, each with where it came from.
    pub(crate) values: Vec<(String, String)>,
    /// Why its values cannot be used, when they cannot (a file not readable).
    pub(crate) unusable: Option<String>,
}

/// One `http_access` line.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub(crate) line: usize,
    pub(crate) allow: bool,
    /// ACL names, each with whether it is negated (`!name`).
    pub(crate) terms: Vec<(bool, String)>,
    /// The line as written, for comments.
    pub(crate) text: String,
}

/// The parts of a squid.conf that decide access.
#[derive(Debug, Default)]
pub(crate) struct Config {
    pub(crate) acls: HashMap<String, Acl>,
    pub(crate) rules: Vec<Rule>,
    /// Directives not carried over: (line, text, why).
    pub(crate) other: Vec<(usize, String, &'static str)>,
}

/// Squid's own settings: nothing in them decides which destination a client may reach.
const SETTINGS: &[&str] = &[
    "http_port",
    "https_port",
    "visible_hostname",
    "pid_filename",
    "cache_log",
    "access_log",
    "logfile_rotate",
    "coredump_dir",
    "cache_dir",
    "cache_mem",
    "cache",
    "hosts_file",
    "dns_nameservers",
    "pinger_enable",
    "shutdown_lifetime",
    "max_filedescriptors",
    "refresh_pattern",
    "cache_effective_user",
    "workers",
    "maximum_object_size",
    "logformat",
    "forwarded_for",
    "via",
    "dns_v4_first",
    "connect_timeout",
    "read_timeout",
    "request_timeout",
    "client_lifetime",
    "cache_store_log",
    "strip_query_terms",
    "httpd_suppress_version_string",
    "error_directory",
    "sslcrtd_program",
    "sslcrtd_children",
    "tls_outgoing_options",
    "sslproxy_cert_error",
    "memory_replacement_policy",
    "cache_replacement_policy",
    "debug_options",
    "icp_port",
    "htcp_port",
    "snmp_port",
    "cache_mgr",
];

/// Squid directives that control access in ways a portcullis policy cannot.
const ACCESS: &[&str] = &[
    "http_reply_access",
    "ssl_bump",
    "always_direct",
    "never_direct",
    "cache_peer",
    "cache_peer_access",
    "adapted_http_access",
    "deny_info",
    "url_rewrite_program",
    "url_rewrite_access",
    "auth_param",
    "external_acl_type",
    "http_access2",
    "icp_access",
    "htcp_access",
    "snmp_access",
    "miss_access",
    "request_header_access",
    "reply_header_access",
    "delay_pools",
    "delay_access",
    "tcp_outgoing_address",
    "on_unsupported_protocol",
    "acl_uses_indirect_client",
    "follow_x_forwarded_for",
];

/// Reads the configuration text. `dir` resolves relative ACL files.
pub(crate) fn parse(text: &str, dir: &Path) -> Result<Config, ImportError> {
    let mut cfg = Config::default();
    builtins(&mut cfg);
    let mut user_defined: Vec<String> = Vec::new();
    for (line_no, line) in logical_lines(text) {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some((&directive, args)) = tokens.split_first() else {
            continue;
        };
        match directive {
            "acl" => acl(&mut cfg, &mut user_defined, line_no, args, dir)?,
            "http_access" => cfg.rules.push(rule(&cfg, line_no, args, &line)?),
            "include" => cfg.other.push((
                line_no,
                line.clone(),
                "an included file is not read: import it on its own and merge the result",
            )),
            d if SETTINGS.contains(&d) => cfg.other.push((
                line_no,
                line.clone(),
                "a setting of Squid itself, no access rule",
            )),
            d if ACCESS.contains(&d) => cfg.other.push((
                line_no,
                line.clone(),
                "access control portcullis has no equivalent for",
            )),
            _ => cfg.other.push((
                line_no,
                line.clone(),
                "a directive this importer does not know",
            )),
        }
    }
    Ok(cfg)
}

/// Lines without comments, joined across trailing `\`, with the number of
/// the line each starts on.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let stripped = strip_comment(raw);
        let (body, continues) = match stripped.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (stripped, false),
        };
        let entry = pending.get_or_insert_with(|| (i + 1, String::new()));
        entry.1.push(' ');
        entry.1.push_str(body);
        if !continues {
            let (n, l) = pending.take().expect("set above");
            if !l.trim().is_empty() {
                out.push((n, l.trim().to_string()));
            }
        }
    }
    if let Some((n, l)) = pending.filter(|(_, l)| !l.trim().is_empty()) {
        out.push((n, l.trim().to_string()));
    }
    out
}

/// A `#` that starts the line or follows white space begins a comment.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return line[..i].trim_end();
        }
    }
    line.trim_end()
}

fn builtins(cfg: &mut Config) {
    let mut add = |name: &str, kind: Kind, values: &[&str]| {
        let values = values
            .iter()
            .map(|v| (v.to_string(), "built in".to_string()))
            .collect();
        cfg.acls.insert(
            name.to_string(),
            Acl {
                kind,
                line: 0,
                values,
                unusable: None,
            },
        );
    };
    add("all", Kind::Src, &["0.0.0.0/0", "::/0"]);
    add("localhost", Kind::Src, &["127.0.0.1/32", "::1/128"]);
    add(
        "to_localhost",
        Kind::Dst,
        &["127.0.0.0/8", "0.0.0.0/32", "::1/128", "::/128"],
    );
    add(
        "manager",
        Kind::Other("manager (cache manager URLs)".into()),
        &[],
    );
}

fn acl(
    cfg: &mut Config,
    user_defined: &mut Vec<String>,
    line: usize,
    args: &[&str],
    dir: &Path,
) -> Result<(), ImportError> {
    let [name, kind, rest @ ..] = args else {
        return Err(ImportError::at(
            line,
            "`acl` needs a name and a type: `acl NAME TYPE VALUE...`",
        ));
    };
    let kind = match *kind {
        "dstdomain" => Kind::DstDomain,
        "src" => Kind::Src,
        "dst" => Kind::Dst,
        "port" => Kind::Port,
        "method" => Kind::Method,
        other => Kind::Other(other.to_string()),
    };
    // Squid's flags (`-i`, `-n`, ...) come first; `--` ends them.
    let mut values = rest;
    while let Some((first, tail)) = values.split_first() {
        if *first == "--" {
            values = tail;
            break;
        }
        if first.starts_with('-')
            && first.len() > 1
            && !first[1..].starts_with(|c: char| c.is_ascii_digit())
        {
            values = tail;
        } else {
            break;
        }
    }
    let fresh = !user_defined.iter().any(|n| n == name);
    if fresh {
        // A user definition replaces a built-in of the same name.
        user_defined.push(name.to_string());
        cfg.acls.insert(
            name.to_string(),
            Acl {
                kind: kind.clone(),
                line,
                values: Vec::new(),
                unusable: None,
            },
        );
    }
    let acl = cfg.acls.get_mut(*name).expect("inserted above");
    if acl.kind != kind {
        return Err(ImportError::at(
            line,
            format!(
                "acl `{name}` was defined with another type on line {}; Squid refuses this too",
                acl.line
            ),
        ));
    }
    for v in values {
        if let Some(file) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            match read_values(dir, file) {
                Ok(vals) => acl.values.extend(vals),
                Err(e) => acl.unusable = Some(e),
            }
        } else {
            acl.values.push((v.to_string(), format!("line {line}")));
        }
    }
    Ok(())
}

/// Values from an ACL file (`acl NAME TYPE "/etc/squid/allowed.txt"`): one
/// per line, `#` comments.
fn read_values(dir: &Path, file: &str) -> Result<Vec<(String, String)>, String> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("its values are in {file}, which cannot be read here ({e})"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("its values are in {file}, which is not text"))?;
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        for v in strip_comment(l).split_whitespace() {
            out.push((v.to_string(), format!("{file} line {}", i + 1)));
        }
    }
    Ok(out)
}

fn rule(cfg: &Config, line: usize, args: &[&str], text: &str) -> Result<Rule, ImportError> {
    let allow = match args.first() {
        Some(&"allow") => true,
        Some(&"deny") => false,
        _ => {
            return Err(ImportError::at(
                line,
                "`http_access` must be followed by `allow` or `deny`",
            ));
        }
    };
    let mut terms = Vec::new();
    for t in &args[1..] {
        let (neg, name) = match t.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, *t),
        };
        if !cfg.acls.contains_key(name) {
            return Err(ImportError::at(
                line,
                format!(
                    "`http_access` names acl `{name}`, which no `acl` line above defines; Squid refuses this too"
                ),
            ));
        }
        terms.push((neg, name.to_string()));
    }
    Ok(Rule {
        line,
        allow,
        terms,
        text: text.to_string(),
    })
}

impl Acl {
    /// The addresses of a `src` or `dst` ACL; `Err` names a value that is not one.
    pub(crate) fn nets(&self) -> Result<Vec<IpNet>, String> {
        self.values
            .iter()
            .map(|(v, _)| {
                parse_net(v)
                    .ok_or_else(|| format!("`{v}` is not an address or CIDR this importer reads"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|mut v| {
                if self.values.iter().any(|(v, _)| v == "all") {
                    v.push("::/0".parse().expect("valid"));
                }
                v
            })
    }
}

/// `10.0.0.0/8`, `10.1.2.3`, `10.0.0.0/255.0.0.0`, `all`.
fn parse_net(v: &str) -> Option<IpNet> {
    if v == "all" {
        return "0.0.0.0/0".parse().ok();
    }
    if let Ok(n) = v.parse::<IpNet>() {
        return Some(n.trunc());
    }
    if let Ok(ip) = v.parse::<std::net::IpAddr>() {
        return Some(IpNet::from(ip));
    }
    let (addr, mask) = v.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let mask: std::net::Ipv4Addr = mask.parse().ok()?;
    let prefix = ipnet::ipv4_mask_to_prefix(mask).ok()?;
    ipnet::Ipv4Net::new(addr, prefix)
        .ok()
        .map(|n| IpNet::V4(n.trunc()))
}
