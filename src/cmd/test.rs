//! `portcullis test --policy P CASES`: expected decisions, checked; every mismatch printed.

use std::io::Write;
use std::path::Path;

use crate::cli::{OutputFormat, TestArgs};
use crate::cmd::exit;
use crate::policy::cases::{self, CaseError, Outcome};
use crate::policy_file::{load_policy, render};

/// Runs the cases; exit 0 when every case holds, 1 on any mismatch, 2 when
/// the policy or the cases file cannot be used.
pub fn run(args: &TestArgs, out: &mut impl Write, err: &mut impl Write) -> std::io::Result<i32> {
    let compiled = match load_policy(&args.policy) {
        Ok(c) => c,
        Err(errors) => {
            for d in &errors {
                writeln!(err, "{}", render(&args.policy, d))?;
            }
            writeln!(
                err,
                "portcullis test: {} does not load; no case was run",
                args.policy.display()
            )?;
            return Ok(exit::USAGE);
        }
    };
    let text = match std::fs::read_to_string(&args.cases) {
        Ok(t) => t,
        Err(e) => {
            writeln!(
                err,
                "portcullis test: cannot read {}: {e}",
                args.cases.display()
            )?;
            return Ok(exit::USAGE);
        }
    };
    let outcomes = cases::parse(&text).map_err(|e| vec![e]).and_then(|parsed| {
        cases::run(&compiled.policy, &parsed).map(|o| o.into_iter().map(Owned::from).collect())
    });
    let outcomes: Vec<Owned> = match outcomes {
        Ok(o) => o,
        Err(errors) => {
            for e in &errors {
                write_error(err, &args.cases, e)?;
            }
            return Ok(exit::USAGE);
        }
    };
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    match args.format {
        OutputFormat::Text => {
            for o in outcomes.iter().filter(|o| !o.ok) {
                writeln!(
                    out,
                    "{}:{}:{}: FAIL {}: expected {}, got {}",
                    args.cases.display(),
                    o.line,
                    o.column,
                    o.label,
                    o.expected,
                    o.got
                )?;
                writeln!(out, "  {}: {}", args.policy.display(), o.why)?;
            }
            writeln!(
                out,
                "{}: {} cases, {} passed, {failed} failed",
                args.cases.display(),
                outcomes.len(),
                outcomes.len() - failed
            )?;
        }
        OutputFormat::Json => {
            let doc = serde_json::json!({
                "passed": failed == 0,
                "total": outcomes.len(),
                "failed": failed,
                "cases": outcomes.iter().map(Owned::json).collect::<Vec<_>>(),
            });
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&doc).expect("JSON values serialise")
            )?;
        }
    }
    Ok(if failed == 0 { exit::OK } else { exit::INVALID })
}

fn write_error(err: &mut impl Write, path: &Path, e: &CaseError) -> std::io::Result<()> {
    writeln!(
        err,
        "{}:{}:{}: error: {}",
        path.display(),
        e.line,
        e.column,
        e.message
    )
}

/// What is printed about one case.
struct Owned {
    line: u64,
    column: u64,
    label: String,
    dest: String,
    expected: String,
    got: String,
    rule: Option<String>,
    why: String,
    ok: bool,
}

impl From<Outcome<'_>> for Owned {
    fn from(o: Outcome<'_>) -> Owned {
        let d = &o.got.decision;
        let (expected, got) = match o.expect_reason {
            Some(r) => (
                format!("{} ({})", o.expect.as_str(), r.as_str()),
                format!("{} ({})", d.verdict.as_str(), d.reason.as_str()),
            ),
            None => (
                o.expect.as_str().to_string(),
                d.verdict.as_str().to_string(),
            ),
        };
        Owned {
            line: o.line,
            column: o.column,
            dest: format!("{}:{}", o.dest.0, o.dest.1),
            why: o.got.summary(o.dest.1),
            rule: o.got.rule.map(|r| r.to_string()),
            ok: o.passed(),
            label: o.label,
            expected,
            got,
        }
    }
}

impl Owned {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "line": self.line,
            "column": self.column,
            "case": self.label,
            "dest": self.dest,
            "expected": self.expected,
            "got": self.got,
            "rule": self.rule,
            "why": self.why,
            "ok": self.ok,
        })
    }
}
