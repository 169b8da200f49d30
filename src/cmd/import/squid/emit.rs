//! Writing the walk out: the draft's header, its deny list, and its allow
//! lists and clients in the order Squid would have matched them.

use ipnet::IpNet;

use super::super::dom::Dom;
use super::super::draft::{Client, Draft, Entry};
use super::super::ports::PortSet;
use super::{Allowed, Walk, intersect_nets};

impl Walk<'_> {
    pub(super) fn finish(mut self) -> Draft {
        self.header();
        self.emit_denies();
        self.emit_allows();
        self.draft
    }

    fn header(&mut self) {
        let h = &mut self.draft.header;
        h.push("Imported from a Squid configuration by `portcullis import squid`.".into());
        h.push(
            "Review every comment before use; `portcullis check` and `portcullis test` this file."
                .into(),
        );
        match self.cfg.rules.last() {
            None => h.push("The configuration has no `http_access` line: Squid denies every request, and so does this policy.".into()),
            Some(last) if !last.allow && self.stopped.is_none() => h.push(format!(
                "WARNING: the last `http_access` line (line {}) denies, so Squid allowed every request no line matched; portcullis denies what no rule allows.",
                last.line
            )),
            Some(_) => {}
        }
        if let Some((line, g)) = &self.connect_guard
            && !g.covers(&self.guard)
        {
            h.push(format!(
                "Squid allowed CONNECT only to ports {} (line {line}) and plain HTTP to ports {}; portcullis does not tell them apart, so the CONNECT ports apply to both (add `:80` where plain HTTP is needed).",
                g.render(),
                self.guard.render()
            ));
        }
    }

    /// A Squid deny line only matters to the allow lines after it (the ones
    /// before it win). What it takes from them is taken out of them; a
    /// top-level `deny` entry is written only where that cannot be exact.
    fn emit_denies(&mut self) {
        let denies = std::mem::take(&mut self.denies);
        for d in &denies {
            let deny_ports = d.ports.clone().unwrap_or_else(PortSet::all);
            for (dom, origin) in &d.doms {
                let what = dom.describe();
                let mut needs_entry = false;
                for a in self.allows.iter_mut().filter(|a| a.line >= d.line) {
                    let scoped = d.src.is_none() || d.src == a.src;
                    for (ad, aorigin, ports) in a.doms.iter_mut() {
                        if scoped && dom.covers(ad) {
                            *ports = ports.minus(&deny_ports);
                            if ports.is_empty() {
                                self.draft.skip(aorigin, &format!("allow `{}` on line {}: the deny of `{what}` on line {} comes first, so Squid never let it through; left out", ad.describe(), a.line, d.line));
                            }
                        } else if dom.overlaps(ad) {
                            needs_entry = true;
                        }
                    }
                    a.doms.retain(|(_, _, p)| !p.is_empty());
                }
                if !needs_entry {
                    let why = if matches!(dom, Dom::Net(_)) {
                        "refused only what no later line allows, and portcullis denies that anyway (names resolving there are Squid's `dst` matches: portcullis's ip_guard keeps loopback and private ranges out; add others to `ip_guard.blocked`)"
                    } else {
                        "refused only what no later line allows, and portcullis denies that anyway"
                    };
                    self.draft
                        .skip(origin, &format!("deny `{what}` (line {}): {why}", d.line));
                    continue;
                }
                let mut notes = Vec::new();
                for a in self.allows.iter().filter(|a| a.line < d.line) {
                    for (ad, _, _) in a.doms.iter().filter(|(ad, _, _)| ad.overlaps(dom)) {
                        notes.push(format!("Squid's allow of `{}` on line {} comes first; here a deny always wins, so it is denied now", ad.describe(), a.line));
                    }
                }
                if let Some(src) = &d.src {
                    notes.push(format!("Squid applied this deny to acl `{src}` only; here it applies to every client"));
                }
                notes.extend(d.note.clone());
                for dest in dom.dests(d.ports.as_ref()) {
                    let index = self.draft.deny.len();
                    if self.draft.deny.iter().any(|e| e.dest == dest) {
                        continue;
                    }
                    self.draft.deny.push(Entry {
                        dest,
                        origin: origin.clone(),
                    });
                    self.draft
                        .deny_notes
                        .extend(notes.iter().map(|n| (index, n.clone())));
                }
            }
        }
    }

    fn emit_allows(&mut self) {
        let needs_clients = self
            .allows
            .iter()
            .any(|a| a.src.is_some() || a.universe.is_some())
            || self
                .blocked
                .iter()
                .any(|(line, _)| self.allows.iter().any(|a| a.line > *line));
        let mut allows = std::mem::take(&mut self.allows);
        allows.retain(|a| !a.doms.is_empty());
        if !needs_clients {
            for a in &allows {
                push_entries(&mut self.draft.allow, a);
            }
            return;
        }
        // One client per source ACL, in the order Squid first meets them.
        let mut names: Vec<(usize, String)> = allows
            .iter()
            .filter_map(|a| a.src.clone().map(|s| (a.line, s)))
            .chain(self.blocked.iter().cloned())
            .collect();
        names.sort();
        let mut classes: Vec<(String, Vec<IpNet>)> = Vec::new();
        for (_, name) in names {
            if classes.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let nets = self.nets(&name);
            let universe = allows
                .iter()
                .find(|a| a.src.as_deref() == Some(&name))
                .and_then(|a| a.universe.clone());
            let nets = match universe {
                Some(u) => intersect_nets(&nets, &u),
                None => nets,
            };
            classes.push((name, nets));
        }
        // Narrower classes first: a source in both gets the narrower client,
        // which also carries every line of the classes that contain it.
        classes.sort_by(|a, b| size(&a.1).total_cmp(&size(&b.1)));
        let covers = |outer: &[IpNet], inner: &[IpNet]| {
            inner.iter().all(|i| outer.iter().any(|o| o.contains(i)))
        };
        let mut clients: Vec<Client> = Vec::new();
        let mut blocked_at_of = Vec::new();
        for (name, nets) in &classes {
            let mut client = Client {
                name: name.clone(),
                ..Client::default()
            };
            let blocked_at = self
                .blocked
                .iter()
                .filter(|(_, b)| covers(&self.nets(b), nets))
                .map(|(l, _)| *l)
                .min();
            if let Some(line) = blocked_at {
                client.notes.push(format!(
                    "Squid refused these sources everything from line {line} on"
                ));
            }
            for earlier in &clients {
                let theirs: Vec<IpNet> = earlier
                    .sources
                    .iter()
                    .filter_map(|s| s.parse().ok())
                    .collect();
                let partial = nets
                    .iter()
                    .any(|n| theirs.iter().any(|t| t.contains(n) || n.contains(t)))
                    && !covers(nets, &theirs);
                if partial {
                    client.notes.push(format!("its sources overlap client `{}` above: a connection gets the first matching client only, where Squid tried every line", earlier.name));
                }
            }
            client.sources = nets.iter().map(|n| n.to_string()).collect();
            for a in allows
                .iter()
                .filter(|a| blocked_at.is_none_or(|b| a.line < b))
            {
                let applies = a.src.as_ref().is_some_and(|s| covers(&self.nets(s), nets));
                if applies {
                    push_entries(&mut client.allow, a);
                }
            }
            blocked_at_of.push((name.clone(), blocked_at));
            clients.push(client);
        }
        let everyone: Vec<&Allowed> = allows.iter().filter(|a| a.src.is_none()).collect();
        if !everyone.is_empty() {
            let universe = everyone.iter().find_map(|a| a.universe.clone());
            let mut others = Client {
                name: unique_name(&clients, "everyone-else"),
                ..Client::default()
            };
            others
                .notes
                .push("sources the lines without a `src` ACL let through".into());
            others.sources = universe
                .unwrap_or_else(|| {
                    vec![
                        "0.0.0.0/0".parse().expect("valid"),
                        "::/0".parse().expect("valid"),
                    ]
                })
                .iter()
                .map(|n| n.to_string())
                .collect();
            for a in &everyone {
                let reaches = |c: &Client| {
                    !blocked_at_of
                        .iter()
                        .any(|(n, b)| *n == c.name && b.is_some_and(|b| b < a.line))
                };
                if clients.iter().all(reaches) {
                    push_entries(&mut self.draft.allow, a);
                } else {
                    for c in clients.iter_mut().filter(|c| reaches(c)) {
                        push_entries(&mut c.allow, a);
                    }
                    push_entries(&mut others.allow, a);
                }
            }
            clients.push(others);
        }
        self.draft.clients = Some(clients);
    }
}

fn push_entries(list: &mut Vec<Entry>, a: &Allowed) {
    for (dom, origin, ports) in &a.doms {
        for dest in dom.dests(Some(ports)) {
            Draft::push_unique(
                list,
                Entry {
                    dest,
                    origin: format!("{origin}, http_access line {}", a.line),
                },
            );
        }
    }
}

fn unique_name(clients: &[Client], base: &str) -> String {
    let mut name = base.to_string();
    let mut n = 2;
    while clients.iter().any(|c| c.name == name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// How many addresses a list covers (roughly: only to order classes).
fn size(nets: &[IpNet]) -> f64 {
    nets.iter()
        .map(|n| 2f64.powi(i32::from(n.max_prefix_len() - n.prefix_len())))
        .sum()
}
