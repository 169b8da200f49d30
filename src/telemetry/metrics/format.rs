//! The two exposition formats `/metrics` speaks: OpenMetrics, which Prometheus asks for,
//! and the Prometheus text format 0.0.4 for every other caller (curl, `promtool check
//! metrics`, older scrapers), chosen by the `Accept` header as the official clients do.

/// An exposition format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// The Prometheus text format, version 0.0.4.
    Text,
}

impl Format {
    /// OpenMetrics when the caller's `Accept` header names it, the text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    /// The `Content-Type` of an exposition in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites OpenMetrics text (as prometheus-client encodes it) into the text format: a
/// counter's `HELP` and `TYPE` name its samples (`x_total`, not `x`), `info` is a gauge
/// named `x_info`, `unknown` is `untyped`, and the `# UNIT` and `# EOF` lines go. Samples
/// are the same in both formats (no timestamps or exemplars are exported).
pub(super) fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP comes before its TYPE, which decides the name it must carry.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some((name, text)) = line.strip_prefix("# HELP ").and_then(|l| l.split_once(' ')) {
            flush_help(&mut out, help.replace((name, text)), None);
            continue;
        }
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|l| l.split_once(' ')) {
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "unknown" => ("", "untyped"),
                other => ("", other),
            };
            let renamed = format!("{name}{suffix}");
            flush_help(&mut out, help.take(), Some((name, &renamed)));
            out.push_str(&format!("# TYPE {renamed} {kind}\n"));
            continue;
        }
        flush_help(&mut out, help.take(), None);
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    flush_help(&mut out, help, None);
    out
}

/// Writes a held `HELP` line, under the family's new name when `rename` is for it.
fn flush_help(out: &mut String, help: Option<(&str, &str)>, rename: Option<(&str, &str)>) {
    let Some((name, text)) = help else { return };
    let name = match rename {
        Some((from, to)) if from == name => to,
        _ => name,
    };
    out.push_str(&format!("# HELP {name} {text}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_picks_the_format() {
        let cases = [
            ("no header", None, Format::Text),
            ("curl", Some("*/*"), Format::Text),
            (
                "Prometheus",
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Format::OpenMetrics,
            ),
            ("text only", Some("text/plain;version=0.0.4"), Format::Text),
        ];
        for (name, accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "{name}");
        }
    }

    #[test]
    fn openmetrics_becomes_the_text_format() {
        let openmetrics = "\
# HELP app_requests Requests.
# TYPE app_requests counter
app_requests_total{a=\"b\"} 3
# HELP app_up Up.
# TYPE app_up gauge
app_up 1
# HELP app_wait_seconds Waits.
# TYPE app_wait_seconds histogram
# UNIT app_wait_seconds seconds
app_wait_seconds_sum 0.5
app_wait_seconds_count 1
app_wait_seconds_bucket{le=\"+Inf\"} 1
# HELP app_build Build.
# TYPE app_build info
app_build_info{version=\"1\"} 1
# EOF
";
        let want = "\
# HELP app_requests_total Requests.
# TYPE app_requests_total counter
app_requests_total{a=\"b\"} 3
# HELP app_up Up.
# TYPE app_up gauge
app_up 1
# HELP app_wait_seconds Waits.
# TYPE app_wait_seconds histogram
app_wait_seconds_sum 0.5
app_wait_seconds_count 1
app_wait_seconds_bucket{le=\"+Inf\"} 1
# HELP app_build_info Build.
# TYPE app_build_info gauge
app_build_info{version=\"1\"} 1
";
        assert_eq!(to_text(openmetrics), want);
    }
}
