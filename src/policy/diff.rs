//! What each client gains and loses between two policies: for `portcullis diff`
//! and for the `changes` of a `policy_reload` audit record.

use std::collections::BTreeSet;
use std::fmt;

use ipnet::IpNet;
use serde::Serialize;

use super::Policy;
use super::pattern::{Pattern, Ports};

/// The pseudo-client whose rules apply to every source.
pub const EVERYONE: &str = "default";

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(n) => f.write_str(n),
            Pattern::Suffix(s) => write!(f, "*.{s}"),
            Pattern::Glob {
                any_depth: true,
                labels,
            } => write!(f, "*.{labels}"),
            Pattern::Glob {
                any_depth: false,
                labels,
            } => f.write_str(labels),
            Pattern::Net(IpNet::V6(net)) => write!(f, "[{net}]"),
            Pattern::Net(net) => write!(f, "{net}"),
        }
    }
}

/// One client's changes, as canonical `pattern:ports` destinations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientChanges {
    /// The `clients` entry name, or `default` for the top-level lists.
    pub client: String,
    /// Destinations newly allowed.
    pub allow_added: Vec<String>,
    /// Destinations no longer allowed.
    pub allow_removed: Vec<String>,
    /// Destinations newly denied.
    pub deny_added: Vec<String>,
    /// Destinations no longer denied.
    pub deny_removed: Vec<String>,
}

impl ClientChanges {
    /// Whether nothing changed for this client.
    pub fn is_empty(&self) -> bool {
        self.allow_added.is_empty()
            && self.allow_removed.is_empty()
            && self.deny_added.is_empty()
            && self.deny_removed.is_empty()
    }
}

/// Every client present in either policy with what changed for it; clients
/// with no change are left out. `default` is the top-level lists.
pub fn diff(old: &Policy, new: &Policy) -> Vec<ClientChanges> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    names.insert(EVERYONE.to_string());
    for p in [old, new] {
        names.extend(p.clients.iter().flatten().map(|c| c.name.to_string()));
    }
    let mut out = Vec::new();
    for name in names {
        let (old_allow, old_deny) = effective(old, &name);
        let (new_allow, new_deny) = effective(new, &name);
        let changes = ClientChanges {
            allow_added: new_allow.difference(&old_allow).cloned().collect(),
            allow_removed: old_allow.difference(&new_allow).cloned().collect(),
            deny_added: new_deny.difference(&old_deny).cloned().collect(),
            deny_removed: old_deny.difference(&new_deny).cloned().collect(),
            client: name,
        };
        if !changes.is_empty() {
            out.push(changes);
        }
    }
    out
}

/// The allow and deny destinations a client gets: the top-level lists plus
/// its own `allow`. A client a policy does not list gets nothing there, unless
/// the policy has no `clients` at all (then everyone gets the top level).
fn effective(p: &Policy, client: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let canonical = |rules: &super::ruleset::RuleSet| -> BTreeSet<String> {
        rules
            .rules()
            .iter()
            .map(|r| destination(&r.pattern, &r.ports))
            .collect()
    };
    let own = p.clients.iter().flatten().find(|c| &*c.name == client);
    let listed = client == EVERYONE || own.is_some();
    if !listed {
        return Default::default();
    }
    let mut allow = canonical(&p.allow);
    if let Some(c) = own {
        allow.extend(canonical(&c.allow));
    }
    (allow, canonical(&p.deny))
}

/// The canonical `pattern:ports` text of a destination.
pub fn destination(pattern: &Pattern, ports: &Ports) -> String {
    format!("{pattern}:{ports}")
}

/// A reviewer's view of the changes, one destination a line.
pub fn render(changes: &[ClientChanges]) -> String {
    if changes.is_empty() {
        return "no destination changes\n".to_string();
    }
    let mut out = String::new();
    for c in changes {
        let who = if c.client == EVERYONE {
            "every client (top-level rules)".to_string()
        } else {
            format!("client `{}`", c.client)
        };
        out.push_str(&format!("{who}:\n"));
        for (sign, what, list) in [
            ("+", "allow", &c.allow_added),
            ("-", "allow", &c.allow_removed),
            ("+", "deny ", &c.deny_added),
            ("-", "deny ", &c.deny_removed),
        ] {
            for d in list {
                out.push_str(&format!("  {sign} {what} {d}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(yaml: &str) -> Policy {
        Policy::from_yaml(yaml).unwrap().policy
    }

    #[test]
    fn adds_removes_and_narrows_per_client() {
        let old = p(
            "version: 1\nallow: [a.example.com, \"*.wide.example.com\", \"[2001:db8::/32]:443\"]\nclients:\n  - name: pay\n    sources: [10.0.0.0/8]\n    allow: [api.paypal.com]\n  - name: gone\n    sources: [10.1.0.0/16]\n",
        );
        let new = p(
            "version: 1\nallow: [a.example.com, narrow.wide.example.com, \"b.example.com:443,80\", \"[2001:db8::/32]:443\"]\ndeny: [x.example.com]\nclients:\n  - name: pay\n    sources: [10.0.0.0/8]\n  - name: fresh\n    sources: [10.2.0.0/16]\n    allow: [new.example.com]\n",
        );
        let d = diff(&old, &new);
        let by = |name: &str| {
            d.iter()
                .find(|c| c.client == name)
                .cloned()
                .unwrap_or_default()
        };
        let everyone = by(EVERYONE);
        assert_eq!(
            everyone.allow_added,
            ["b.example.com:443,80", "narrow.wide.example.com:443"]
        );
        assert_eq!(everyone.allow_removed, ["*.wide.example.com:443"]);
        assert_eq!(everyone.deny_added, ["x.example.com:*"]);
        let pay = by("pay");
        assert!(
            pay.allow_removed
                .contains(&"api.paypal.com:443".to_string())
        );
        assert!(
            pay.allow_removed
                .contains(&"*.wide.example.com:443".to_string())
        );
        let gone = by("gone");
        assert!(
            gone.allow_removed
                .contains(&"a.example.com:443".to_string())
        );
        assert!(gone.allow_added.is_empty());
        let fresh = by("fresh");
        assert!(
            fresh
                .allow_added
                .contains(&"new.example.com:443".to_string())
        );
        assert!(
            fresh
                .allow_added
                .contains(&"[2001:db8::/32]:443".to_string())
        );
        assert!(diff(&old, &old).is_empty());
        assert!(render(&d).contains("  - allow *.wide.example.com:443\n"));
    }
}
