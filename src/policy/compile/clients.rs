//! The `clients` list: names, selectors, modes and each client's own rules.

use std::collections::HashMap;
use std::sync::Arc;

use serde_saphyr::{Location, Spanned};

use super::super::identity::{self, CertName, Selectors, TokenDigest};
use super::super::lint::{At, ClientSpans};
use super::super::pattern::Ports;
use super::super::raw::{RawClient, Text};
use super::super::ruleset::RuleSet;
use super::super::{Client, Mode};
use super::{Code, Compiler, List, mode_of};

impl Compiler {
    /// One file's `clients`; `seen` holds where each name was defined, in
    /// this file and the files before it.
    pub(super) fn clients(
        &mut self,
        raw: Vec<Spanned<RawClient>>,
        (default_ports, top_mode, top_message): (&Ports, Mode, Option<&Arc<str>>),
        seen: &mut HashMap<String, At>,
    ) -> Vec<Client> {
        let mut out = Vec::with_capacity(raw.len());
        for entry in raw {
            let at = entry.referenced;
            let c = entry.value;
            let name = c.name.as_ref().map_or("", |n| n.value.trim()).to_string();
            let name_at = c.name.as_ref().map_or(at, |n| n.referenced);
            if name.is_empty() {
                self.error(
                    Code::EmptyClientName,
                    name_at,
                    "client has no name",
                    Some("name each client, e.g. `name: payments`".into()),
                );
            } else if let Some(first) = seen.get(&name) {
                let message = format!(
                    "client `{name}` is defined twice: first at {}",
                    first.place()
                );
                self.error(
                    Code::DuplicateClient,
                    name_at,
                    message,
                    Some("merge the two entries, or give one a new name".into()),
                );
            } else {
                seen.insert(name.clone(), self.at(name_at));
            }
            let selectors = self.selectors(&c, &name, name_at);
            self.spans.clients.push(ClientSpans {
                at: self.at(name_at),
                mode: c.mode.as_ref().map(|m| self.at(m.referenced)),
            });
            let allow = self.rules(c.allow.unwrap_or_default(), default_ports, List::Allow);
            out.push(Client {
                name: Arc::from(name),
                selectors,
                mode: c.mode.as_ref().map_or(top_mode, mode_of),
                allow: RuleSet::new(allow),
                deny_message: self
                    .deny_message(c.deny_message)
                    .or_else(|| top_message.cloned()),
            });
        }
        out
    }

    /// How a caller is recognised as client `name`: every kind it lists must match.
    pub(super) fn selectors(&mut self, c: &RawClient, name: &str, name_at: Location) -> Selectors {
        let kinds = [
            ("sources", &c.sources, "`sources: [10.0.1.0/24]`"),
            (
                "certificates",
                &c.certificates,
                "`certificates: [\"spiffe://acme.internal/ns/payments/sa/api\"]`",
            ),
            (
                "tokens",
                &c.tokens,
                "`tokens: [\"sha256:…\"]` (`portcullis token` makes one)",
            ),
            (
                "vpc_endpoints",
                &c.vpc_endpoints,
                "`vpc_endpoints: [vpce-0a1b2c3d4e5f67890]`",
            ),
        ];
        for (key, list, example) in &kinds {
            if let Some(list) = list
                && list.value.is_empty()
            {
                self.error(
                    Code::NoSelector,
                    list.referenced,
                    format!("client `{name}` has no {key}: an empty list matches nobody"),
                    Some(format!("list values, e.g. {example}, or remove the key")),
                );
            }
        }
        if kinds.iter().all(|(_, list, _)| list.is_none()) {
            self.error(
                Code::NoSelector,
                name_at,
                format!("client `{name}` has no selector: nothing says which callers it is"),
                Some("give it `sources`, `certificates`, `tokens` or `vpc_endpoints` (all listed kinds must match)".into()),
            );
        }
        let items = |list: &Option<Spanned<Vec<Text>>>| {
            list.as_ref().map_or(&[][..], |l| &l.value[..]).to_vec()
        };
        Selectors {
            sources: self.nets(items(&c.sources)),
            certificates: self.parsed(items(&c.certificates), CertName::parse_selector),
            tokens: self.parsed(items(&c.tokens), TokenDigest::parse_selector),
            vpc_endpoints: self.parsed(items(&c.vpc_endpoints), identity::parse_vpc_endpoint),
        }
    }

    /// Each item parsed by `parse`, or a `bad-selector` error at its place.
    pub(super) fn parsed<T>(
        &mut self,
        list: Vec<Text>,
        parse: fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(list.len());
        for item in list {
            match parse(&item.value) {
                Ok(v) => out.push(v),
                Err(e) => self.error(Code::BadSelector, item.referenced, e, None),
            }
        }
        out
    }
}
