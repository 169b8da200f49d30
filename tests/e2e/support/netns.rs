//! Tests that need an address other than loopback, or an iptables rule,
//! re-run this test binary inside a private network namespace
//! (`unshare --net`): the addresses and rules exist only there, every party
//! runs there, and no packet can leave the machine.

use std::process::Command;

/// Set for the inner run, inside the namespace.
pub const INNER: &str = "PORTCULLIS_TEST_IN_NETNS";

/// True inside the namespace (the inner run).
pub fn inside() -> bool {
    std::env::var_os(INNER).is_some()
}

/// Runs this binary's ignored tests selected by `filter` (test-harness
/// arguments such as `--exact NAME`) inside a new network namespace and
/// returns their output. Where that cannot be done here (not root, one of
/// `tools` missing, no namespaces) it says why, naming the test as `what`,
/// and returns `None`. A failed inner run fails the calling test.
pub fn run_inside(what: &str, tools: &[&str], filter: &[&str]) -> Option<String> {
    let missing: Vec<&str> = ["unshare"]
        .iter()
        .chain(tools)
        .copied()
        .filter(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .collect();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !missing.is_empty() || !root {
        eprintln!("SKIPPED {what}: needs root and {missing:?}");
        return None;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("unshare")
        .arg("--net")
        .arg(exe)
        .args(filter)
        .args(["--ignored", "--nocapture"])
        .env(INNER, "1")
        .output()
        .expect("run unshare");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() && text.contains("unshare failed") {
        eprintln!("SKIPPED {what}: no network namespaces here:\n{text}");
        return None;
    }
    assert!(out.status.success(), "inner run failed:\n{text}");
    Some(text)
}
