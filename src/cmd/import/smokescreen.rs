//! `portcullis import smokescreen`: a Smokescreen ACL (YAML, `version: v1`)
//! to a policy.
//!
//! Smokescreen decides for a service (named from its client certificate):
//! the service's `allowed_domains` first, then `global_deny_list`, then
//! `global_allow_list`, then the service's `action`. Services become
//! clients recognised by certificate CN; the `default` rule, a client every
//! other caller matches; the global lists, the top-level `allow` and `deny`.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::ImportError;
use super::dom::{Dom, parse_dom};
use super::draft::{Client, Draft, Entry, clean};

/// A YAML value with the location of every part, so each comment can name its line.
#[derive(Debug)]
enum Y {
    Null,
    Scalar(String),
    Seq(Vec<Spanned<Y>>),
    Map(Vec<(Spanned<String>, Spanned<Y>)>),
}

impl<'de> Deserialize<'de> for Y {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(YVisitor)
    }
}

struct YVisitor;

impl<'de> Visitor<'de> for YVisitor {
    type Value = Y;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Y, E> {
        Ok(Y::Scalar(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Y, E> {
        Ok(Y::Scalar(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Y, E> {
        Ok(Y::Scalar(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Y, E> {
        Ok(Y::Scalar(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Y, E> {
        Ok(Y::Scalar(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Y, E> {
        Ok(Y::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Y, E> {
        Ok(Y::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Y, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Y::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Y, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = map.next_key::<Spanned<String>>()? {
            out.push((k, map.next_value()?));
        }
        Ok(Y::Map(out))
    }
}

fn line(s: &Spanned<impl Sized>) -> usize {
    s.referenced.line() as usize
}

/// A service rule (or the `default` one).
struct Service {
    name: String,
    is_default: bool,
    line: usize,
    project: Option<String>,
    action: Action,
    domains: Vec<Spanned<Y>>,
}

impl Service {
    /// Whether one of its own domains overlaps `dom`.
    fn allows(&self, dom: &Dom) -> bool {
        self.domains.iter().any(|d| match &d.value {
            Y::Scalar(v) => parse_dom(v, false).is_ok_and(|d| d.overlaps(dom)),
            _ => false,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Enforce,
    Report,
    Open,
}

/// Converts the text of a Smokescreen ACL file.
pub(crate) fn import(text: &str) -> Result<Draft, ImportError> {
    let doc: Spanned<Y> = serde_saphyr::from_str(text).map_err(|e| {
        let at = e.location().map(|l| l.line() as usize).unwrap_or(0);
        ImportError::at(
            at,
            format!(
                "not valid YAML: {}",
                crate::policy::compile::yaml_message(&e)
            ),
        )
    })?;
    let Y::Map(top) = doc.value else {
        return Err(ImportError::at(
            line(&doc),
            "a Smokescreen ACL is a mapping with `version: v1` and `services`",
        ));
    };
    let mut draft = Draft::default();
    let (mut version, mut services, mut default, mut allow, mut deny) =
        (None, None, None, None, None);
    for (k, v) in top {
        match k.value.as_str() {
            "version" => version = Some(v),
            "services" => services = Some(v),
            "default" => default = Some(v),
            "global_allow_list" => allow = Some(v),
            "global_deny_list" => deny = Some(v),
            other => draft.skip(
                &format!("line {}", line(&k)),
                &format!(
                    "key `{}`: not part of Smokescreen's ACL v1; ignored",
                    clean(other)
                ),
            ),
        }
    }
    match &version {
        Some(v) if matches!(&v.value, Y::Scalar(s) if s == "v1") => {}
        Some(v) => {
            return Err(ImportError::at(
                line(v),
                "`version` must be `v1`, the only ACL version Smokescreen reads",
            ));
        }
        None => {
            return Err(ImportError::at(
                1,
                "no `version: v1`: Smokescreen refuses such a file",
            ));
        }
    }
    let Some(services) = services else {
        return Err(ImportError::at(
            1,
            "no `services` list: Smokescreen refuses such a file",
        ));
    };
    let Y::Seq(items) = services.value else {
        return Err(ImportError::at(
            line(&services),
            "`services` must be a list",
        ));
    };
    let mut parsed = Vec::new();
    for item in items {
        let s = service(item, false, &mut draft)?;
        if let Some(first) = parsed.iter().find(|p: &&Service| p.name == s.name) {
            return Err(ImportError::at(
                s.line,
                format!(
                    "service `{}` is defined twice (first on line {}); Smokescreen refuses this too",
                    s.name, first.line
                ),
            ));
        }
        parsed.push(s);
    }
    let default = default
        .filter(|d| !matches!(d.value, Y::Null))
        .map(|d| service(d, true, &mut draft))
        .transpose()?;

    header(&mut draft);
    let deny_list = globs(deny, "global_deny_list", &mut draft)?;
    let allow_list = globs(allow, "global_allow_list", &mut draft)?;
    let mut clients = Vec::new();
    for s in parsed.iter().chain(default.iter()) {
        let mut c = client(s, &deny_list, &mut draft)?;
        if s.is_default {
            // A service may be called `default` too.
            while clients.iter().any(|o: &Client| o.name == c.name) {
                c.name.push_str("-rule");
            }
        }
        clients.push(c);
    }
    for (dom, origin) in &deny_list {
        // A service's own domains win over the deny list in Smokescreen: an
        // entry only the services allow, and nothing global, is left out.
        let global = allow_list.iter().any(|(a, _)| a.overlaps(dom));
        let owned = parsed.iter().chain(default.iter()).any(|s| s.allows(dom));
        if owned && !global {
            draft.skip(origin, &format!("deny `{}`: only services that list it themselves reach it, and in Smokescreen their own list wins; left out", dom.describe()));
            continue;
        }
        for dest in dom.dests(None) {
            Draft::push_unique(
                &mut draft.deny,
                Entry {
                    dest,
                    origin: origin.clone(),
                },
            );
        }
    }
    for (dom, origin) in &allow_list {
        for dest in dom.dests(None) {
            Draft::push_unique(
                &mut draft.allow,
                Entry {
                    dest,
                    origin: origin.clone(),
                },
            );
        }
    }
    if default.is_none() {
        draft.header.push("No `default` rule: a caller that is none of the services is refused, as in Smokescreen.".into());
    }
    draft.clients = Some(clients);
    Ok(draft)
}

fn header(draft: &mut Draft) {
    let h = &mut draft.header;
    h.push("Imported from a Smokescreen ACL by `portcullis import smokescreen`.".into());
    h.push(
        "Review every comment before use; `portcullis check` and `portcullis test` this file."
            .into(),
    );
    h.push(
        "Smokescreen names a service from its client certificate: each service is a client".into(),
    );
    h.push("recognised by the certificate's common name (`cn:NAME`) on `--listen-tls`.".into());
    h.push(
        "Smokescreen's ACL names no ports; this policy allows port 443 (add `:80` where needed)."
            .into(),
    );
}

fn service(item: Spanned<Y>, is_default: bool, draft: &mut Draft) -> Result<Service, ImportError> {
    let at = line(&item);
    let Y::Map(fields) = item.value else {
        return Err(ImportError::at(
            at,
            "a service rule must be a mapping with `name`, `action` and `allowed_domains`",
        ));
    };
    let (mut name, mut project, mut action, mut domains) = (None, None, None, Vec::new());
    for (k, v) in fields {
        let scalar = |v: &Spanned<Y>| match &v.value {
            Y::Scalar(s) => Ok(s.clone()),
            _ => Err(ImportError::at(
                line(v),
                format!("`{}` must be a string", k.value),
            )),
        };
        match k.value.as_str() {
            "name" => name = Some(scalar(&v)?),
            "project" => project = Some(scalar(&v)?),
            "action" => {
                action = Some(match scalar(&v)?.as_str() {
                    "enforce" => Action::Enforce,
                    "report" => Action::Report,
                    "open" => Action::Open,
                    other => {
                        return Err(ImportError::at(
                            line(&v),
                            format!(
                                "unknown action `{}`: Smokescreen knows `enforce`, `report` and `open`, and refuses the file",
                                clean(other)
                            ),
                        ));
                    }
                })
            }
            "allowed_domains" => match v.value {
                Y::Seq(list) => domains = list,
                Y::Null => {}
                _ => {
                    return Err(ImportError::at(
                        line(&v),
                        "`allowed_domains` must be a list",
                    ));
                }
            },
            "allowed_external_proxies" => draft.skip(
                &format!("line {}", line(&k)),
                "`allowed_external_proxies`: portcullis does not chain to other proxies; ignored",
            ),
            other => draft.skip(
                &format!("line {}", line(&k)),
                &format!(
                    "key `{}`: not part of a Smokescreen rule; ignored",
                    clean(other)
                ),
            ),
        }
    }
    let name = match (name, is_default) {
        (_, true) => "default".to_string(),
        (Some(n), false) if !n.trim().is_empty() => n,
        _ => return Err(ImportError::at(at, "a service without a `name`")),
    };
    let Some(action) = action else {
        return Err(ImportError::at(
            at,
            format!(
                "service `{}` has no `action` (enforce, report or open)",
                clean(&name)
            ),
        ));
    };
    Ok(Service {
        name,
        is_default,
        line: at,
        project,
        action,
        domains,
    })
}

/// Domain globs of a list; those portcullis cannot write become comments.
fn globs(
    list: Option<Spanned<Y>>,
    what: &str,
    draft: &mut Draft,
) -> Result<Vec<(Dom, String)>, ImportError> {
    let items = match list.map(|l| (line(&l), l.value)) {
        None | Some((_, Y::Null)) => return Ok(Vec::new()),
        Some((_, Y::Seq(items))) => items,
        Some((at, _)) => return Err(ImportError::at(at, format!("`{what}` must be a list"))),
    };
    let mut out = Vec::new();
    for item in items {
        let at = line(&item);
        let origin = format!("line {at} ({what})");
        match &item.value {
            Y::Scalar(s) => match parse_dom(s, false) {
                Ok(d) => out.push((d, origin)),
                Err(e) => draft.skip(&origin, &format!("{e}; left out")),
            },
            _ => {
                return Err(ImportError::at(
                    at,
                    format!("an entry of `{what}` must be a string"),
                ));
            }
        }
    }
    Ok(out)
}

fn client(
    s: &Service,
    deny_list: &[(Dom, String)],
    draft: &mut Draft,
) -> Result<Client, ImportError> {
    let what = if s.is_default {
        "the `default` rule".to_string()
    } else {
        format!("service `{}`", clean(&s.name))
    };
    let mut c = Client {
        name: s.name.clone(),
        ..Client::default()
    };
    let mut doms = Vec::new();
    for item in &s.domains {
        let at = line(item);
        let origin = format!("line {at} ({what})");
        match &item.value {
            Y::Scalar(v) => match parse_dom(v, false) {
                Ok(d) => doms.push((d, origin)),
                Err(e) => draft.skip(&origin, &format!("{e}; left out")),
            },
            _ => {
                return Err(ImportError::at(
                    at,
                    "an entry of `allowed_domains` must be a string",
                ));
            }
        }
    }
    if let Some(p) = &s.project {
        c.notes
            .push(format!("{what} (line {}), project {}", s.line, clean(p)));
    } else {
        c.notes.push(format!("{what} (line {})", s.line));
    }
    if s.is_default {
        c.notes.push(
            "Smokescreen's `default` rule: every caller that is none of the services above".into(),
        );
        c.sources = vec!["0.0.0.0/0".into(), "::/0".into()];
    } else {
        c.certificates = vec![format!("cn:{}", s.name)];
    }
    match s.action {
        Action::Enforce => {}
        Action::Report => {
            c.report = true;
            if !deny_list.is_empty() {
                c.notes.push("WARNING: Smokescreen refused this report-mode service the `global_deny_list`; portcullis's report mode lets it through and records it".into());
            }
        }
        Action::Open => {
            c.notes.push("`action: open` (anything goes, unrecorded) has no portcullis equivalent: imported as enforce with its allowed_domains.".into());
            c.notes.push("To keep it unrestricted while you learn its destinations, set `mode: report` and use `portcullis suggest`.".into());
            draft.skip(
                &format!("line {}", s.line),
                &format!("{what}: `action: open` imported as enforce (see the client)"),
            );
        }
    }
    for (dom, origin) in &doms {
        for (d, _) in deny_list.iter().filter(|(d, _)| d.overlaps(dom)) {
            c.notes.push(format!("Smokescreen let it reach `{}` although the global_deny_list has `{}`; where that entry stays (it is in the global allow list too), the deny wins here", dom.describe(), d.describe()));
        }
        for dest in dom.dests(None) {
            Draft::push_unique(
                &mut c.allow,
                Entry {
                    dest,
                    origin: origin.clone(),
                },
            );
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests;
