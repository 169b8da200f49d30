//! `# portcullis: ignore[CODE, ...]` comments: a reviewed warning, silenced on its own line.

use std::collections::HashMap;

use super::diagnostic::{Code, Diagnostic, Severity};

/// What a comment must say, after `#`, for `check` to read it.
const MARKER: &str = "portcullis:";

/// The ignore comments of one policy file, by line.
#[derive(Clone, Debug, Default)]
pub struct Ignores {
    by_line: HashMap<u64, Vec<Code>>,
    /// Comments naming codes that do not exist: silencing nothing by a typo
    /// would look like a reviewed exception that is not one.
    unknown: Vec<Diagnostic>,
}

impl Ignores {
    /// Finds every ignore comment in `text`.
    pub fn scan(text: &str) -> Ignores {
        let mut out = Ignores::default();
        // Most files have none: one substring search instead of reading every line's comment.
        if !text.contains(MARKER) {
            return out;
        }
        for (i, line) in text.lines().enumerate() {
            let line_no = i as u64 + 1;
            let Some(start) = comment_start(line) else {
                continue;
            };
            let comment = &line[start..];
            let Some(at) = comment.find(MARKER) else {
                continue;
            };
            let rest = &comment[at + MARKER.len()..];
            let Some(list) = rest.trim_start().strip_prefix("ignore[") else {
                continue;
            };
            let Some(end) = list.find(']') else {
                continue;
            };
            let list_offset = start + at + MARKER.len() + (rest.len() - rest.trim_start().len());
            let list_offset = list_offset + "ignore[".len();
            let mut offset = 0;
            for item in list[..end].split(',') {
                let name = item.trim();
                let lead = item.len() - item.trim_start().len();
                let column = line[..list_offset + offset + lead].chars().count() as u64 + 1;
                offset += item.len() + 1;
                if name.is_empty() {
                    continue;
                }
                match Code::parse(name) {
                    Some(code) => out.by_line.entry(line_no).or_default().push(code),
                    None => out.unknown.push(Diagnostic::at(
                        Code::UnknownIgnore,
                        line_no,
                        column,
                        format!("`{name}` in an ignore comment is not a check code, so it silences nothing"),
                        suggest_code(name),
                    )),
                }
            }
        }
        out
    }

    /// Whether a comment on the warning's own line names its code. Errors are never silenced.
    pub fn silences(&self, d: &Diagnostic) -> bool {
        d.severity == Severity::Warning
            && d.code != Code::UnknownIgnore
            && self
                .by_line
                .get(&d.line)
                .is_some_and(|codes| codes.contains(&d.code))
    }

    /// `diags` without the silenced warnings, plus the comments that name no code.
    pub fn apply(&self, diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = diags.into_iter().filter(|d| !self.silences(d)).collect();
        out.extend(self.unknown.iter().cloned());
        out
    }
}

/// The byte offset of a YAML comment's `#`: outside quotes, and at the start
/// of the line or after whitespace (`a#b` is a plain scalar).
fn comment_start(line: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some('"') if c == '\\' => {
                chars.next();
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return Some(i),
            None => {}
        }
        prev = c;
    }
    None
}

fn suggest_code(name: &str) -> Option<String> {
    let names = Code::ALL
        .iter()
        .filter(|c| c.severity() == Severity::Warning)
        .map(|c| c.as_str());
    super::keys::closest(name, names).map(|c| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warning(code: Code, line: u64) -> Diagnostic {
        Diagnostic::at(code, line, 5, "m", None)
    }

    #[test]
    fn a_comment_silences_the_codes_it_names_on_its_line_only() {
        let text = "version: 1\nallow:\n  - \"0.0.0.0/0:443\"  # portcullis: ignore[match-all-range, report-mode]\n  - 10.0.0.0/8:443\n";
        let ignores = Ignores::scan(text);
        assert!(ignores.silences(&warning(Code::MatchAllRange, 3)));
        assert!(ignores.silences(&warning(Code::ReportMode, 3)));
        assert!(!ignores.silences(&warning(Code::ShadowedRule, 3)));
        assert!(!ignores.silences(&warning(Code::MatchAllRange, 4)));
        assert!(!ignores.silences(&Diagnostic::at(Code::BadPort, 3, 5, "m", None)));
    }

    #[test]
    fn hashes_inside_quotes_or_words_are_not_comments() {
        assert_eq!(
            comment_start("  - \"a # portcullis: ignore[report-mode]\""),
            None
        );
        assert_eq!(comment_start("  - 'it''s # no'"), None);
        assert_eq!(comment_start("a#b"), None);
        assert_eq!(comment_start("# x"), Some(0));
        assert_eq!(comment_start("  - \"x\\\"\" # y"), Some(10));
        let ignores = Ignores::scan("allow: [\"a # portcullis: ignore[report-mode]\"]\n");
        assert!(!ignores.silences(&warning(Code::ReportMode, 1)));
    }

    #[test]
    fn an_unknown_code_is_a_warning_with_a_suggestion() {
        let text = "mode: report  # portcullis: ignore[report-mod]\n";
        let out = Ignores::scan(text).apply(vec![warning(Code::ReportMode, 1)]);
        assert_eq!(out.len(), 2, "{out:?}");
        let unknown = &out[1];
        assert_eq!(unknown.code, Code::UnknownIgnore);
        assert_eq!((unknown.line, unknown.column), (1, 36));
        assert_eq!(unknown.hint.as_deref(), Some("did you mean `report-mode`?"));
    }
}
