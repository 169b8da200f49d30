//! The Fluent Bit pipeline FireLens runs, modelled for the configuration in
//! deploy/ecs/firelens/firelens.conf: the classic config format, and the
//! filters and output it uses (multiline in partial_message mode, parser,
//! rewrite_tag, cloudwatch_logs). Fluent Bit cannot be installed here (it is
//! in no package registry this project reaches), so the model is strict
//! instead: a section, plugin or key it does not know fails the test, so the
//! configuration cannot grow behaviour the test silently ignores.
//!
//! What FireLens adds around the file (from the ECS agent's generated
//! configuration): inputs that turn each line a container writes into a
//! record `{"log": line, "source": "stdout"|"stderr", "container_name": ...}`
//! tagged `<container>-firelens-<task id>`, then a filter that adds `ecs_*`
//! keys to every record, then this file.

use std::collections::{BTreeSet, HashMap};

use regex::Regex;
use serde_json::{Map, Value};

/// One `[SECTION]` of a classic-format file: its entries, keys lowercased
/// (Fluent Bit's keys are case-insensitive), values with `${VAR}` expanded.
#[derive(Debug)]
struct Section {
    name: String,
    entries: Vec<(String, String)>,
}

impl Section {
    fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn require(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("[{}] has no {key}", self.name))
    }

    fn only(&self, allowed: &[&str]) {
        for (k, _) in &self.entries {
            assert!(
                allowed.contains(&k.as_str()),
                "[{}] {k}: not modelled (known: {allowed:?})",
                self.name
            );
        }
    }
}

/// The `${VAR}`s a configuration reads (outside comments).
pub(crate) fn env_vars(text: &str) -> BTreeSet<String> {
    let var = Regex::new(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}").unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| {
            var.captures_iter(l)
                .map(|c| c[1].to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn sections(text: &str, env: &HashMap<String, String>) -> Vec<Section> {
    let var = Regex::new(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}").unwrap();
    let mut out: Vec<Section> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        assert!(!line.starts_with('\t'), "line {n}: indent with spaces");
        assert!(
            !trimmed.starts_with('@'),
            "line {n}: {trimmed}: @INCLUDE and @SET are not modelled"
        );
        if !line.starts_with(' ') {
            let name = trimmed
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or_else(|| {
                    panic!("line {n}: `{trimmed}` is neither a section nor indented")
                });
            out.push(Section {
                name: name.to_ascii_uppercase(),
                entries: Vec::new(),
            });
            continue;
        }
        let section = out
            .last_mut()
            .unwrap_or_else(|| panic!("line {n}: an entry before any section"));
        let (key, value) = trimmed
            .split_once(char::is_whitespace)
            .unwrap_or_else(|| panic!("line {n}: `{trimmed}` has no value"));
        let value = var.replace_all(value.trim(), |c: &regex::Captures<'_>| {
            env.get(&c[1])
                .unwrap_or_else(|| panic!("line {n}: ${{{}}} is not set", &c[1]))
                .clone()
        });
        section
            .entries
            .push((key.to_ascii_lowercase(), value.into_owned()));
    }
    out
}

#[derive(Debug)]
enum Filter {
    /// Joins Docker's partial lines (over 16 KiB); a whole line passes as is.
    PartialMessages { matching: String },
    /// Parses `key` as JSON into the record.
    ParseJson {
        matching: String,
        key: String,
        reserve_data: bool,
        preserve_key: bool,
    },
    /// Re-emits a record whose `key` matches `regex` under `new_tag`.
    RewriteTag {
        matching: String,
        key: String,
        regex: Regex,
        new_tag: String,
        keep: bool,
    },
}

/// A `cloudwatch_logs` output.
#[derive(Debug)]
pub(crate) struct Output {
    matching: String,
    pub(crate) log_group: String,
    stream_prefix: String,
    log_key: Option<String>,
    pub(crate) retry_limit: String,
    pub(crate) auto_create_group: bool,
}

/// A record as it leaves the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Delivery {
    pub(crate) log_group: String,
    pub(crate) log_stream: String,
    pub(crate) message: String,
}

/// A FireLens configuration file, loaded.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(crate) service: Vec<(String, String)>,
    filters: Vec<Filter>,
    pub(crate) outputs: Vec<Output>,
}

fn flag(section: &Section, key: &str) -> bool {
    match section.get(key).map(str::to_ascii_lowercase).as_deref() {
        None | Some("off" | "false") => false,
        Some("on" | "true") => true,
        Some(other) => panic!("[{}] {key} {other}: not a boolean", section.name),
    }
}

impl Pipeline {
    /// Loads `text` with `env` for its `${VAR}`s.
    pub(crate) fn load(text: &str, env: &HashMap<String, String>) -> Self {
        let mut pipeline = Pipeline {
            service: Vec::new(),
            filters: Vec::new(),
            outputs: Vec::new(),
        };
        for s in sections(text, env) {
            match s.name.as_str() {
                "SERVICE" => pipeline.service.extend(s.entries),
                "FILTER" => pipeline.filters.push(filter(&s)),
                "OUTPUT" => pipeline.outputs.push(output(&s)),
                // FireLens generates the inputs; parsers live in parsers files.
                other => panic!("[{other}] is not modelled"),
            }
        }
        pipeline
    }

    /// Where one line that `container` wrote on `source` ends up.
    pub(crate) fn route(
        &self,
        container: &str,
        task_id: &str,
        source: &str,
        line: &str,
    ) -> Vec<Delivery> {
        let mut record = Map::new();
        record.insert("log".into(), line.into());
        record.insert("source".into(), source.into());
        record.insert("container_name".into(), format!("/ecs-{container}").into());
        // FireLens's own filter, before this file.
        record.insert("ecs_cluster".into(), "egress".into());
        record.insert(
            "ecs_task_arn".into(),
            format!("arn:aws:ecs:eu-west-1:123456789012:task/egress/{task_id}").into(),
        );
        let tag = format!("{container}-firelens-{task_id}");
        let mut out = Vec::new();
        self.run(&tag, record, 0, &mut out);
        out
    }

    fn run(
        &self,
        tag: &str,
        mut record: Map<String, Value>,
        depth: usize,
        out: &mut Vec<Delivery>,
    ) {
        assert!(depth < 4, "records re-emitted in a loop: {tag}");
        let mut emitted = Vec::new();
        for f in &self.filters {
            match f {
                Filter::PartialMessages { matching } if tag_matches(matching, tag) => {}
                Filter::ParseJson {
                    matching,
                    key,
                    reserve_data,
                    preserve_key,
                } if tag_matches(matching, tag) => {
                    let parsed = record
                        .get(key)
                        .and_then(Value::as_str)
                        .and_then(|s| serde_json::from_str::<Value>(s).ok());
                    // Fluent Bit's json parser takes objects only; anything else passes unchanged.
                    if let Some(Value::Object(fields)) = parsed {
                        let original = record.remove(key);
                        if !reserve_data {
                            record.clear();
                        }
                        if *preserve_key {
                            record.insert(key.clone(), original.unwrap_or(Value::Null));
                        }
                        record.extend(fields);
                    }
                }
                Filter::RewriteTag {
                    matching,
                    key,
                    regex,
                    new_tag,
                    keep,
                } if tag_matches(matching, tag) => {
                    let hit = record
                        .get(key)
                        .and_then(Value::as_str)
                        .is_some_and(|v| regex.is_match(v));
                    if hit {
                        emitted.push((new_tag.replace("$TAG", tag), record.clone()));
                        if !keep {
                            record.clear();
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        if !record.is_empty() {
            for o in self
                .outputs
                .iter()
                .filter(|o| tag_matches(&o.matching, tag))
            {
                let message = match &o.log_key {
                    Some(k) => record
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_else(|| panic!("no string {k} in {record:?}"))
                        .to_owned(),
                    None => Value::Object(record.clone()).to_string(),
                };
                out.push(Delivery {
                    log_group: o.log_group.clone(),
                    log_stream: format!("{}{tag}", o.stream_prefix),
                    message,
                });
            }
        }
        // The emitter is an input: what it re-emits runs the pipeline from the start.
        for (tag, record) in emitted {
            self.run(&tag, record, depth + 1, out);
        }
    }
}

fn filter(s: &Section) -> Filter {
    let matching = s.require("match").to_owned();
    match s.require("name") {
        "multiline" => {
            s.only(&["name", "match", "multiline.key_content", "mode"]);
            assert_eq!(s.get("mode"), Some("partial_message"));
            assert_eq!(s.get("multiline.key_content"), Some("log"));
            Filter::PartialMessages { matching }
        }
        "parser" => {
            s.only(&[
                "name",
                "match",
                "key_name",
                "parser",
                "reserve_data",
                "preserve_key",
            ]);
            // `json` from the image's /fluent-bit/parsers/parsers.conf.
            assert_eq!(
                s.get("parser"),
                Some("json"),
                "only the json parser is modelled"
            );
            Filter::ParseJson {
                matching,
                key: s.require("key_name").to_owned(),
                reserve_data: flag(s, "reserve_data"),
                preserve_key: flag(s, "preserve_key"),
            }
        }
        "rewrite_tag" => {
            s.only(&[
                "name",
                "match",
                "rule",
                "emitter_name",
                "emitter_storage.type",
            ]);
            let rule: Vec<&str> = s.require("rule").split_whitespace().collect();
            let [key, regex, new_tag, keep] = rule[..] else {
                panic!("rule `{}`: $KEY REGEX NEW_TAG KEEP", s.require("rule"));
            };
            let key = key
                .strip_prefix('$')
                .filter(|k| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or_else(|| panic!("rule key {key}: only a top-level $key is modelled"));
            Filter::RewriteTag {
                matching,
                key: key.to_owned(),
                regex: Regex::new(regex).expect("rule regex"),
                new_tag: new_tag.to_owned(),
                keep: match keep {
                    "true" => true,
                    "false" => false,
                    other => panic!("KEEP {other}"),
                },
            }
        }
        other => panic!("filter {other} is not modelled"),
    }
}

fn output(s: &Section) -> Output {
    assert_eq!(
        s.require("name"),
        "cloudwatch_logs",
        "only cloudwatch_logs is modelled"
    );
    s.only(&[
        "name",
        "match",
        "region",
        "log_group_name",
        "log_stream_prefix",
        "log_key",
        "auto_create_group",
        "retry_limit",
    ]);
    Output {
        matching: s.require("match").to_owned(),
        log_group: s.require("log_group_name").to_owned(),
        stream_prefix: s.require("log_stream_prefix").to_owned(),
        log_key: s.get("log_key").map(str::to_owned),
        retry_limit: s.get("retry_limit").unwrap_or("1").to_owned(),
        auto_create_group: flag(s, "auto_create_group"),
    }
}

/// Fluent Bit's `Match`: `*` stands for any run of characters.
fn tag_matches(pattern: &str, tag: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == tag,
        Some((head, rest)) => {
            let Some(tail) = tag.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| tag_matches(rest, &tail[i..]))
        }
    }
}

#[test]
fn tags_match_as_in_fluent_bit() {
    assert!(tag_matches("*", "anything"));
    assert!(tag_matches(
        "portcullis-firelens-*",
        "portcullis-firelens-abc"
    ));
    assert!(!tag_matches(
        "portcullis-firelens-*",
        "audit.portcullis-firelens-abc"
    ));
    assert!(tag_matches(
        "audit.portcullis-firelens-*",
        "audit.portcullis-firelens-abc"
    ));
    assert!(tag_matches("a*c*e", "abcde"));
    assert!(!tag_matches("a*c*e", "abcd"));
    assert!(!tag_matches("app", "app-firelens-1"));
}
