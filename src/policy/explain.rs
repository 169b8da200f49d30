//! Why a decision came out as it did: the rule that decided and the list it
//! sits in, the allow rule a deny rule overrode, and the ports a host is
//! allowed on when not on the one asked for. Shared by `explain` and `test`.

use std::fmt;

use super::host::{Host, HostError, split_host_port};
use super::ruleset::{Rule, Target};
use super::{Client, Decision, Policy, Reason, Verdict};

/// Where a rule is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    /// The top-level `deny`.
    Deny,
    /// The top-level `allow`.
    Allow,
    /// The matched client's own `allow`.
    ClientAllow,
}

impl List {
    /// `deny`, `allow` or `client_allow`.
    pub fn as_str(self) -> &'static str {
        match self {
            List::Deny => "deny",
            List::Allow => "allow",
            List::ClientAllow => "client_allow",
        }
    }
}

/// A rule and the list it is written in.
#[derive(Clone, Copy, Debug)]
pub struct Placed<'p> {
    /// The rule.
    pub rule: &'p Rule,
    /// Its list.
    pub list: List,
}

impl Placed<'_> {
    /// `deny rule`, `allow rule` or `client allow rule`.
    pub fn kind(&self) -> &'static str {
        match self.list {
            List::Deny => "deny rule",
            List::Allow => "allow rule",
            List::ClientAllow => "client allow rule",
        }
    }
}

impl fmt::Display for Placed<'_> {
    /// ``allow rule `api.stripe.com` (line 4)``, or
    /// ``(20-payments.yaml line 4)`` when the policy is a directory.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} `{}` ({})",
            self.kind(),
            self.rule.text,
            self.rule.place()
        )
    }
}

/// A decision with what it rests on.
#[derive(Clone, Debug)]
pub struct Explanation<'p> {
    /// The decision, as the proxy would make it.
    pub decision: Decision,
    /// The host, or why it is not one.
    pub host: Result<Host, HostError>,
    /// The `clients` entry that applies (`None` without `clients`, or when none matched).
    pub client: Option<&'p Client>,
    /// The rule that decided.
    pub rule: Option<Placed<'p>>,
    /// When a deny rule decided: the allow rule it overrode.
    pub overridden: Option<Placed<'p>>,
    /// When no rule matched this port: the rules that allow the host on other ports.
    pub other_ports: Vec<Placed<'p>>,
    /// Who asked, in words (`source 10.0.0.5, certificate cn:api`), for a
    /// caller no client matches; `None`: "the caller".
    pub caller: Option<String>,
}

impl Explanation<'_> {
    /// Whether a deny rule decided.
    pub fn denied_by_rule(&self) -> bool {
        self.rule.is_some_and(|r| r.list == List::Deny)
    }

    /// One sentence on why: the [cause](Self::cause), then what a reviewer
    /// needs besides (the allow rule a deny rule overrides, which rule
    /// allows which ports, report mode).
    pub fn summary(&self, port: u16) -> String {
        let mut s = self.cause(port);
        if let Some(a) = &self.overridden {
            s.push_str(&format!("; it overrides the {a}"));
        }
        if self.rule.is_none() && !self.other_ports.is_empty() {
            let by: Vec<String> = (self.other_ports.iter())
                .map(|p| format!("{} by `{}` ({})", p.rule.ports, p.rule.text, p.rule.place()))
                .collect();
            s.push_str(&format!(" ({})", by.join("; ")));
        }
        if self.decision.reason == Reason::BlockedIp {
            s.push_str("; the proxy never dials guarded addresses, whichever rule allows them");
        }
        if self.decision.verdict == Verdict::Report {
            s.push_str("; report mode lets it through and records it");
        }
        s
    }

    /// The cause in the words a refusal uses (its body and the audit
    /// `detail`): `no allow rule for HOST:PORT`, ``deny rule `R` (line N)``,
    /// `HOST is allowed only on ports P`, `source ADDR matches no client`,
    /// `ADDR is a guarded address`.
    pub fn cause(&self, port: u16) -> String {
        let host = match &self.host {
            Ok(h) => h.to_string(),
            Err(e) => return format!("the destination is not a valid host: {e}"),
        };
        match (self.decision.reason, &self.rule) {
            (Reason::ClientNotAllowed | Reason::ProxyAuthRequired, _) => format!(
                "{} matches no client",
                self.caller.as_deref().unwrap_or("the caller")
            ),
            (_, Some(r)) if r.list == List::Deny => format!("{r}"),
            (Reason::BlockedIp, _) => format!("{host} is a guarded address"),
            (_, Some(r)) => format!("allowed by the {r}"),
            (_, None) if !self.other_ports.is_empty() => {
                let mut ports: Vec<String> = Vec::new();
                for p in &self.other_ports {
                    let text = p.rule.ports.to_string();
                    if !ports.contains(&text) {
                        ports.push(text);
                    }
                }
                format!("{host} is allowed only on ports {}", ports.join(","))
            }
            (_, None) => format!("no allow rule for {host}:{port}"),
        }
    }
}

impl Policy {
    /// Decides `host:port` for `client` (see [`Policy::decide_for`]) and says why.
    pub fn explain<'p>(
        &'p self,
        client: Option<&'p Client>,
        host: &str,
        port: u16,
    ) -> Explanation<'p> {
        self.explain_host(client, Host::parse(host), port)
    }

    /// [`Policy::explain`] for a host already parsed (or refused).
    pub fn explain_host<'p>(
        &'p self,
        client: Option<&'p Client>,
        parsed: Result<Host, HostError>,
        port: u16,
    ) -> Explanation<'p> {
        let mut out = Explanation {
            decision: Decision {
                verdict: Verdict::Deny,
                reason: Reason::BadRequest,
                rule: None,
                allow_private: None,
                client: client.map(|c| c.name.clone()),
                identity: None,
                used: [false; 3],
            },
            host: parsed.clone(),
            client,
            rule: None,
            overridden: None,
            other_ports: Vec::new(),
            caller: None,
        };
        let Ok(host) = parsed else {
            return out;
        };
        out.decision = self.decide_for(client, &host, port);
        if self.clients.is_some() && client.is_none() {
            return out;
        }
        let target = Target::new(&host, port);
        let deny = self.deny.find(&target).map(|rule| Placed {
            rule,
            list: List::Deny,
        });
        let allow = self
            .allow
            .find(&target)
            .map(|rule| Placed {
                rule,
                list: List::Allow,
            })
            .or_else(|| {
                client
                    .and_then(|c| c.allow.find(&target))
                    .map(|rule| Placed {
                        rule,
                        list: List::ClientAllow,
                    })
            });
        out.rule = deny.or(allow);
        if deny.is_some() {
            out.overridden = allow;
        }
        if out.rule.is_none() {
            let top = self
                .allow
                .matching_host(&host)
                .into_iter()
                .map(|rule| Placed {
                    rule,
                    list: List::Allow,
                });
            let own = client
                .map(|c| c.allow.matching_host(&host))
                .unwrap_or_default()
                .into_iter()
                .map(|rule| Placed {
                    rule,
                    list: List::ClientAllow,
                });
            out.other_ports = top.chain(own).collect();
        }
        out
    }
}

/// A destination as a person types it: `HOST`, `HOST:PORT`, `[IPv6]:PORT`,
/// or a URL (`https://api.stripe.com/v1/charges` -> `api.stripe.com`, 443).
/// Without a port: the URL scheme's (http and ws 80, https and wss 443),
/// else 443.
pub fn parse_target(text: &str) -> Result<(String, u16), String> {
    let text = text.trim();
    let (authority, default_port) = match text.split_once("://") {
        Some((scheme, rest)) => {
            let port = match scheme.to_ascii_lowercase().as_str() {
                "http" | "ws" => Some(80),
                "https" | "wss" => Some(443),
                _ => None,
            };
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = &rest[..end];
            // user:password@ is not part of the destination.
            let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
            if authority.is_empty() {
                return Err(format!("`{text}` has no host"));
            }
            (authority, port)
        }
        None => (text, Some(443)),
    };
    let (host, port) = split_host_port(authority).map_err(|e| format!("`{text}`: {e}"))?;
    let port = match (port, default_port) {
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => {
            return Err(format!(
                "`{text}`: unknown URL scheme, so give the port (`scheme://host:PORT/`)"
            ));
        }
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_host_ports_become_host_and_port() {
        let ok = |s: &str| parse_target(s).unwrap();
        assert_eq!(
            ok("https://api.stripe.com/v1/charges"),
            ("api.stripe.com".into(), 443)
        );
        assert_eq!(ok("http://x.example/"), ("x.example".into(), 80));
        assert_eq!(ok("HTTP://x.example"), ("x.example".into(), 80));
        assert_eq!(
            ok("wss://x.example:8443/socket?a=b"),
            ("x.example".into(), 8443)
        );
        assert_eq!(
            ok("https://user:pw@x.example#frag"),
            ("x.example".into(), 443)
        );
        assert_eq!(
            ok("http://[2001:db8::1]:8080/"),
            ("[2001:db8::1]".into(), 8080)
        );
        assert_eq!(ok("api.stripe.com"), ("api.stripe.com".into(), 443));
        assert_eq!(
            ok("registry.npmjs.org:80"),
            ("registry.npmjs.org".into(), 80)
        );
        assert!(parse_target("ftp://x.example/").is_err());
        assert_eq!(ok("ftp://x.example:21/"), ("x.example".into(), 21));
        assert!(parse_target("https:///path").is_err());
        assert!(parse_target("x.example:99999").is_err());
        assert!(parse_target("2001:db8::1:443").is_err());
    }

    fn policy(yaml: &str) -> Policy {
        Policy::from_yaml(yaml).unwrap().policy
    }

    #[test]
    fn a_deny_rule_is_named_with_the_allow_rule_it_overrode() {
        let p = policy("version: 1\nallow: [\"*.example.com\"]\ndeny: [up.example.com]\n");
        let e = p.explain(None, "up.example.com", 443);
        assert!(e.denied_by_rule());
        assert_eq!(&*e.rule.unwrap().rule.text, "up.example.com");
        assert_eq!(&*e.overridden.unwrap().rule.text, "*.example.com");
        assert_eq!(e.cause(443), "deny rule `up.example.com` (line 3)");
        assert_eq!(
            e.summary(443),
            "deny rule `up.example.com` (line 3); it overrides the allow rule `*.example.com` (line 2)"
        );
    }

    #[test]
    fn a_host_allowed_on_other_ports_says_which() {
        let p = policy(
            "version: 1\nallow: [\"npm.example:443,80\"]\nclients:\n  - name: a\n    sources: [10.0.0.0/8]\n    allow: [\"npm.example:8080\"]\n",
        );
        let a = p.client_named("a");
        let e = p.explain(a, "npm.example", 22);
        assert_eq!(e.decision.verdict, Verdict::Deny);
        assert!(e.rule.is_none());
        let lists: Vec<_> = e.other_ports.iter().map(|p| p.list).collect();
        assert_eq!(lists, [List::Allow, List::ClientAllow]);
        assert_eq!(
            e.summary(22),
            "npm.example is allowed only on ports 443,80,8080 (443,80 by `npm.example:443,80` (line 2); 8080 by `npm.example:8080` (line 6))"
        );
        let e = p.explain(a, "other.example", 443);
        assert!(e.other_ports.is_empty());
        assert_eq!(e.summary(443), "no allow rule for other.example:443");
    }
}
