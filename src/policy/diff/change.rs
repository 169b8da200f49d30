//! The changes `diff` reports: what a reviewer reads and what JSON carries.

use serde::Serialize;

/// One change in reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The client it concerns; `None` for the top level, which applies to
    /// every client (and to every source when the policy has no `clients`).
    pub client: Option<String>,
    /// What changed (`kind` and its fields in JSON).
    #[serde(flatten)]
    pub kind: Kind,
    /// The change as `diff` prints it: a `+`, `-` or `~` line, then indented
    /// detail lines.
    pub text: String,
}

/// What changed. Lists of addresses are CIDRs in canonical form (the
/// fewest ranges that cover the same addresses).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// `clients` appeared (sources no client lists are now refused) or went
    /// away (every source gets the top-level rules).
    ClientsSection {
        /// `absent` or `present`.
        old: &'static str,
        /// `absent` or `present`.
        new: &'static str,
    },
    /// The mode, top level or of one client: `report` lets through what no
    /// rule allows (unrestricted but for the `ip_guard`).
    Mode {
        /// `enforce` or `report`.
        old: &'static str,
        /// `enforce` or `report`.
        new: &'static str,
        /// Top level: the clients a top-level change does not reach,
        /// because they keep a mode of their own.
        keep_own_mode: Vec<String>,
    },
    /// Addresses the proxy may dial.
    IpGuard {
        /// Ranges that were refused and are now dialable.
        now_dialable: Vec<String>,
        /// Ranges that were dialable and are now refused.
        now_blocked: Vec<String>,
        /// Addresses added to `ip_guard.blocked`.
        blocked_added: Vec<String>,
        /// Addresses no longer in `ip_guard.blocked`.
        blocked_removed: Vec<String>,
        /// Addresses added to `ip_guard.allowed`.
        allowed_added: Vec<String>,
        /// Addresses no longer in `ip_guard.allowed`.
        allowed_removed: Vec<String>,
    },
    /// A check on TLS ClientHellos in CONNECT tunnels.
    Tls {
        /// `sni_must_match` or `ech`.
        setting: &'static str,
        /// As written in the policy: `true`/`false`, `deny`/`allow`.
        old: &'static str,
        /// As written in the policy.
        new: &'static str,
    },
    /// The ports of destinations that name none.
    DefaultPorts {
        /// Ports before, e.g. `443`.
        old: String,
        /// Ports after, e.g. `443,80`.
        new: String,
        /// The destinations (top level and clients) that take them.
        destinations: Vec<String>,
    },
    /// A client only the new policy lists.
    ClientAdded {
        /// 1-based position in the new `clients` list.
        position: usize,
        /// Its source ranges.
        sources: Vec<String>,
        /// Its mode.
        mode: &'static str,
        /// Its own `allow` rules (`pattern:ports`), on top of the top level.
        allow: Vec<String>,
        /// Addresses an old client matched that this one now matches first.
        takes: Vec<Handover>,
        /// Earlier clients take every address it lists: it matches nothing.
        unreachable: bool,
    },
    /// A client only the old policy lists.
    ClientRemoved {
        /// 1-based position in the old `clients` list.
        position: usize,
        /// Its source ranges.
        sources: Vec<String>,
        /// Its mode.
        mode: &'static str,
        /// Its own `allow` rules.
        allow: Vec<String>,
        /// Where the addresses it matched go (`to: null`: refused, or the
        /// top-level rules when the new policy has no `clients`).
        gives: Vec<Handover>,
    },
    /// A selector of one client: which connections are that client.
    Selector {
        /// `sources`, `certificates`, `tokens` or `vpc_endpoints`.
        selector: &'static str,
        /// `widened` (covers more, nothing less), `narrowed`, or `changed`.
        direction: &'static str,
        /// Before.
        old: Vec<String>,
        /// After.
        new: Vec<String>,
        /// Entries of `new` not in `old`.
        added: Vec<String>,
        /// Entries of `old` not in `new`.
        removed: Vec<String>,
        /// The client now matches every IPv4 address (it did not before).
        every_v4: bool,
        /// The client now matches every IPv6 address (it did not before).
        every_v6: bool,
        /// Addresses another client matched that this one now matches first.
        takes: Vec<Handover>,
        /// Addresses this client matched that another now matches, or none
        /// (`to: null`).
        gives: Vec<Handover>,
    },
    /// A reorder of clients that changes which client matches some address.
    ClientOrder {
        /// Client names in old order.
        old: Vec<String>,
        /// Client names in new order.
        new: Vec<String>,
        /// The addresses now matched by another client.
        moved: Vec<Handover>,
    },
    /// A destination reachable on other ports, newly, or no longer.
    Destination {
        /// `allow` or `deny`.
        list: &'static str,
        /// The pattern, canonical (`*.example.com`, `203.0.113.0/24`, `[2001:db8::/32]`).
        destination: String,
        /// Ports before (`443,80`, `8000-8100`, `*`); `null` when not listed.
        old_ports: Option<String>,
        /// Ports after; `null` when no longer listed.
        new_ports: Option<String>,
        /// The `owner` of the rule that names it (the new one, else the old
        /// one), when written as a mapping with one.
        owner: Option<String>,
        /// That rule's `ticket`.
        ticket: Option<String>,
    },
    /// The guarded private ranges one allow destination may dial
    /// (`allow_private`) grew or shrank.
    AllowPrivate {
        /// The pattern, canonical, as for [`Kind::Destination`].
        destination: String,
        /// Ranges the destination may now dial that it could not before.
        now_dialable: Vec<String>,
        /// Ranges it could dial before and no longer may.
        now_blocked: Vec<String>,
    },
}

/// Addresses that move from one client to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Handover {
    /// The addresses, as CIDRs.
    pub ranges: Vec<String>,
    /// The client that matched them before; `null` when none did.
    pub from: Option<String>,
    /// The client that matches them now; `null` when none does.
    pub to: Option<String>,
}
