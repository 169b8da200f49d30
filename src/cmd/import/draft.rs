//! The policy an importer builds, and its YAML text with comments (serde
//! would drop them, and the comments are the point: they say what was not
//! carried over and why).

use std::fmt::Write as _;

/// One `allow` or `deny` entry, with the source line it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The destination as portcullis writes it (`example.com`, `"*.example.com:80"`).
    pub(crate) dest: String,
    /// Where it came from, e.g. `line 12` or `services[2]`.
    pub(crate) origin: String,
}

/// A `clients` entry.
#[derive(Clone, Debug, Default)]
pub(crate) struct Client {
    pub(crate) name: String,
    /// Comment lines written above the entry.
    pub(crate) notes: Vec<String>,
    pub(crate) sources: Vec<String>,
    pub(crate) certificates: Vec<String>,
    /// `mode: report` (with a reviewed `ignore[report-mode]`).
    pub(crate) report: bool,
    pub(crate) allow: Vec<Entry>,
}

/// The whole imported policy.
#[derive(Clone, Debug, Default)]
pub(crate) struct Draft {
    /// Comment lines at the top of the file: what was read, and how.
    pub(crate) header: Vec<String>,
    /// What could not be carried over, one comment line each, naming its source.
    pub(crate) not_carried: Vec<String>,
    pub(crate) allow: Vec<Entry>,
    pub(crate) deny: Vec<Entry>,
    /// Notes per `deny` entry index (written above it).
    pub(crate) deny_notes: Vec<(usize, String)>,
    /// `None`: no `clients` section (every source gets the top-level rules).
    pub(crate) clients: Option<Vec<Client>>,
}

impl Draft {
    /// Adds an entry unless the same destination is already listed.
    pub(crate) fn push_unique(list: &mut Vec<Entry>, entry: Entry) {
        if !list.iter().any(|e| e.dest == entry.dest) {
            list.push(entry);
        }
    }

    /// Records a construct that was not carried over.
    pub(crate) fn skip(&mut self, origin: &str, what: &str) {
        self.not_carried.push(format!("{origin}: {what}"));
    }

    /// The policy file: `version: 1`, the rules, the comments.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            comment(&mut out, "", line);
        }
        out.push_str("version: 1\nmode: enforce\ndefault_ports: [443]\n");
        if !self.not_carried.is_empty() {
            out.push('\n');
            comment(&mut out, "", "Not carried over (each names its source):");
            for line in &self.not_carried {
                comment(&mut out, "", &format!("  {line}"));
            }
        }
        out.push('\n');
        entries(&mut out, "", "allow", &self.allow, &[]);
        if !self.deny.is_empty() {
            entries(&mut out, "", "deny", &self.deny, &self.deny_notes);
        }
        if let Some(clients) = &self.clients {
            out.push_str(if clients.is_empty() {
                "clients: []\n"
            } else {
                "clients:\n"
            });
            for c in clients {
                for note in &c.notes {
                    comment(&mut out, "  ", note);
                }
                let _ = writeln!(out, "  - name: {}", quote(&c.name));
                if c.report {
                    out.push_str(
                        "    mode: report  # portcullis: ignore[report-mode] imported as it was\n",
                    );
                }
                list(&mut out, "sources", &c.sources);
                list(&mut out, "certificates", &c.certificates);
                if !c.allow.is_empty() {
                    entries(&mut out, "    ", "allow", &c.allow, &[]);
                }
            }
        }
        out
    }
}

fn entries(out: &mut String, indent: &str, key: &str, list: &[Entry], notes: &[(usize, String)]) {
    if list.is_empty() {
        let _ = writeln!(out, "{indent}{key}: []");
        return;
    }
    let _ = writeln!(out, "{indent}{key}:");
    for (i, e) in list.iter().enumerate() {
        for (_, note) in notes.iter().filter(|(n, _)| *n == i) {
            comment(out, &format!("{indent}  "), note);
        }
        let _ = writeln!(
            out,
            "{indent}  - {}  # {}",
            quote(&e.dest),
            clean(&e.origin)
        );
    }
}

fn list(out: &mut String, key: &str, values: &[String]) {
    if values.is_empty() {
        return;
    }
    let quoted: Vec<String> = values.iter().map(|v| quote(v)).collect();
    let _ = writeln!(out, "    {key}: [{}]", quoted.join(", "));
}

/// Comment lines, wrapped near 100 columns; text from the source file is cleaned first.
fn comment(out: &mut String, indent: &str, text: &str) {
    const WIDTH: usize = 100;
    let text = clean(text);
    let lead = text.len() - text.trim_start().len();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + word.len() > WIDTH {
            let _ = writeln!(out, "{indent}# {line}");
            line = " ".repeat(lead + 2);
        } else if !line.trim().is_empty() {
            line.push(' ');
        } else if line.is_empty() {
            line = " ".repeat(lead);
        }
        line.push_str(word);
    }
    if line.trim().is_empty() {
        let _ = writeln!(out, "{indent}#");
    } else {
        let _ = writeln!(out, "{indent}# {line}");
    }
}

/// Echoed source text stays one printable line, and can never become a
/// `portcullis: ignore[...]` directive that silences a warning.
pub(crate) fn clean(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s = s.replace("portcullis:", "portcullis -");
    s.trim_end().to_string()
}

/// Source text echoed in a comment, cut to a readable length.
pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 100;
    let s = clean(text);
    if s.chars().count() > MAX {
        s.chars().take(MAX).collect::<String>() + "…"
    } else {
        s
    }
}

/// A YAML double-quoted scalar.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
