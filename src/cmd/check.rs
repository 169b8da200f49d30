//! `portcullis check`: every error and warning of each policy file or directory, with its code.

use std::io::Write;
use std::path::Path;

use crate::cli::{CheckArgs, OutputFormat};
use crate::cmd::exit;
use crate::policy::{Diagnostic, Severity};
use crate::policy_file::{check_policy, display_path};

/// `portcullis check`: prints each file's problems; returns the exit code.
pub fn check(args: &CheckArgs, out: &mut impl Write) -> std::io::Result<i32> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut valid = true;
    let mut warned = false;
    for path in &args.paths {
        let checked = check_policy(path, crate::policy_file::today());
        let errors = count(&checked.problems, Severity::Error);
        let warnings = count(&checked.problems, Severity::Warning);
        valid &= errors == 0;
        warned |= warnings > 0;
        files.push(serde_json::json!({
            "path": path.display().to_string(),
            "valid": errors == 0,
            "errors": errors,
            "warnings": warnings,
        }));
        match args.format {
            OutputFormat::Text => {
                for d in &checked.problems {
                    write_problem(out, path, d)?;
                }
                let (e, w) = (plural(errors, "error"), plural(warnings, "warning"));
                let summary = if errors > 0 {
                    format!("invalid ({e}, {w})")
                } else if args.strict && warnings > 0 {
                    format!("fails --strict ({w})")
                } else {
                    format!("ok ({w})")
                };
                writeln!(out, "{}: {summary}", path.display())?;
            }
            OutputFormat::Json => problems.extend(checked.problems.iter().map(|d| {
                serde_json::json!({
                    "code": d.code,
                    "severity": d.severity,
                    "file": display_path(path, d).display().to_string(),
                    "line": d.line,
                    "column": d.column,
                    "message": d.message,
                    "hint": d.hint,
                })
            })),
        }
    }
    let passed = valid && !(args.strict && warned);
    if args.format == OutputFormat::Json {
        let doc = serde_json::json!({
            "valid": valid,
            "strict": args.strict,
            "passed": passed,
            "files": files,
            "problems": problems,
        });
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON values serialise")
        )?;
    }
    Ok(if passed { exit::OK } else { exit::INVALID })
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn count(problems: &[Diagnostic], severity: Severity) -> usize {
    problems.iter().filter(|d| d.severity == severity).count()
}

/// `PATH:LINE:COLUMN: severity[CODE]: message`, then `  hint: ...` on its
/// own line; in a policy directory, PATH is the problem's file.
fn write_problem(out: &mut impl Write, path: &Path, d: &Diagnostic) -> std::io::Result<()> {
    writeln!(
        out,
        "{}:{}:{}: {}[{}]: {}",
        display_path(path, d).display(),
        d.line,
        d.column,
        d.severity.as_str(),
        d.code,
        d.message
    )?;
    if let Some(hint) = &d.hint {
        writeln!(out, "  hint: {hint}")?;
    }
    Ok(())
}
