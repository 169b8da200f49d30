//! `portcullis suggest`: from the traffic report mode saw to an enforced allowlist.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::client::{
    LOCAL, connect_refused, echo_roundtrip, eventually, finish, open_tunnel,
};
use crate::support::dns::TestDns;
use crate::support::origin::TcpEcho;
use crate::support::proxy::{Proxy, loopback_policy};
use crate::support::{TempPolicy, bin, portcullis, root, stderr, stdout};

const AUDIT_WAIT: Duration = Duration::from_secs(10);

/// The carve-out the test origins on loopback need; the suggestion has no `ip_guard`.
const LOOPBACK_GUARD: &str = "ip_guard:\n  allowed: [127.0.0.0/8]\n";

/// Names the workload reaches in report mode. The three `cdn.beta.test`
/// siblings collapse into `*.cdn.beta.test`; the three buckets under the
/// shared-tenant `s3.amazonaws.com` must stay exact names.
const SEEN: [&str; 7] = [
    "api.alpha.test",
    "a.cdn.beta.test",
    "b.cdn.beta.test",
    "c.cdn.beta.test",
    "logs-bucket.s3.amazonaws.com",
    "data-bucket.s3.amazonaws.com",
    "tmp-bucket.s3.amazonaws.com",
];

async fn tunnel_through(proxy: &Proxy, target: &str) {
    let mut tunnel = open_tunnel(proxy.addr(), target).await;
    echo_roundtrip(&mut tunnel, target.as_bytes()).await;
    finish(&mut tunnel).await;
}

/// The proxy's audit records as a JSON-lines file, the way `suggest` reads a log.
fn audit_file(proxy: &Proxy) -> TempPolicy {
    let text: String = proxy
        .audit_records()
        .iter()
        .map(|r| format!("{r}\n"))
        .collect();
    TempPolicy::new(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_traffic_becomes_an_enforced_allowlist() {
    let dns = TestDns::start().await;
    for name in SEEN
        .iter()
        .chain(&["d.cdn.beta.test", "evil.test", "attacker.s3.amazonaws.com"])
    {
        dns.set_a(name, &[LOCAL], 60);
    }
    let echo = TcpEcho::start().await;
    let other = TcpEcho::start().await;
    let port = echo.addr().port();

    // 1. Observe: report mode with nothing allowed lets everything through and logs it.
    let report = loopback_policy(&[], "mode: report\n");
    let observed = Proxy::start(&report, dns.addr(), &[]).await;
    for name in SEEN {
        tunnel_through(&observed, &format!("{name}:{port}")).await;
    }
    tunnel_through(&observed, &format!("api.alpha.test:{port}")).await;
    tunnel_through(&observed, &format!("127.0.0.1:{port}")).await;
    // Malformed requests are refused in every mode and never suggested.
    connect_refused(observed.addr(), "0x7f.1:443", 400, "bad_request").await;
    // Written before the 400 goes out, but the audit writer batches: wait for it too.
    observed
        .wait_audit(|r| r["reason"] == "bad_request", AUDIT_WAIT)
        .await;
    for host in SEEN.iter().copied().chain(["127.0.0.1"]) {
        observed
            .wait_audit(
                |r| r["host"] == host && r["decision"] == "report",
                AUDIT_WAIT,
            )
            .await;
    }
    eventually(AUDIT_WAIT, "both api.alpha.test records", || {
        let api = (observed.audit_records().iter())
            .filter(|r| r["host"] == "api.alpha.test")
            .count();
        async move { api == 2 }
    })
    .await;
    let log = audit_file(&observed);

    // 2. Suggest.
    let out = portcullis(&["suggest", "--audit", log.path_str()]);
    let suggested = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}\n{suggested}", stderr(&out));
    assert_eq!(stderr(&out), "", "{suggested}");
    assert!(
        suggested.starts_with("# yaml-language-server: $schema=./portcullis.schema.json\n"),
        "{suggested}"
    );
    for rule in [
        format!("  - \"api.alpha.test:{port}\"\n"),
        format!("  - \"*.cdn.beta.test:{port}\"\n"),
        format!("  - \"logs-bucket.s3.amazonaws.com:{port}\"\n"),
        format!("  - \"data-bucket.s3.amazonaws.com:{port}\"\n"),
        format!("  - \"tmp-bucket.s3.amazonaws.com:{port}\"\n"),
        format!("  - \"127.0.0.1:{port}\"\n"),
    ] {
        assert!(suggested.contains(&rule), "no {rule:?} in\n{suggested}");
    }
    assert!(!suggested.contains("*.s3.amazonaws.com"), "{suggested}");
    assert!(!suggested.contains("0x7f"), "{suggested}");
    assert!(
        suggested.contains("\n  # seen 2 times, first "),
        "{suggested}"
    );
    assert!(suggested.contains("skipped: 1 bad_request"), "{suggested}");
    let file = TempPolicy::new(&suggested);
    let check = portcullis(&["check", file.path_str()]);
    assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
    assert!(
        stdout(&check).ends_with("ok (0 warnings)\n"),
        "{}",
        stdout(&check)
    );

    // 3. Enforce the suggestion: the traffic seen passes, nothing else does.
    assert!(suggested.contains("\nmode: enforce\n"), "{suggested}");
    let enforced = Proxy::start(&format!("{suggested}{LOOPBACK_GUARD}"), dns.addr(), &[]).await;
    for name in SEEN.iter().copied().chain(["127.0.0.1"]) {
        tunnel_through(&enforced, &format!("{name}:{port}")).await;
    }
    // The wildcard was asked for (--collapse auto, the default) and says so.
    tunnel_through(&enforced, &format!("d.cdn.beta.test:{port}")).await;
    for target in [
        format!("evil.test:{port}"),
        format!("attacker.s3.amazonaws.com:{port}"),
        format!("api.alpha.test:{}", other.addr().port()),
        format!("alpha.test:{port}"),
    ] {
        connect_refused(enforced.addr(), &target, 403, "not_allowed").await;
    }

    // --collapse none keeps exactly the names seen.
    let out = portcullis(&["suggest", "--collapse", "none", "--audit", log.path_str()]);
    let exact = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!exact.contains('*'), "{exact}");
    for name in SEEN {
        assert!(
            exact.contains(&format!("  - \"{name}:{port}\"\n")),
            "{exact}"
        );
    }
}

/// `suggest` with stdin and gzip inputs, as a CI job would pipe rotated logs.
fn suggest_with_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(bin())
        .arg("suggest")
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis suggest");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .expect("wait for portcullis suggest");
    writer.join().expect("stdin writer");
    out
}

const AUDIT: &str = "tests/policies/suggest/audit.jsonl";
const CURRENT: &str = "tests/policies/suggest/current.yaml";

#[test]
fn current_policy_turns_the_output_into_what_to_add_and_what_to_remove() {
    let out = portcullis(&["suggest", "--audit", AUDIT, "--policy", CURRENT]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}\n{text}", stderr(&out));
    let expect = [
        "  - name: \"payments\"\n    sources:\n      - \"10.0.1.0/24\"\n    allow:\n",
        "      - \"hooks.paypal.com:443\"\n",
        "      - \"*.cdn.shop.example:443\"\n",
        "      - \"one.s3.amazonaws.com:443\"\n",
        "      - \"registry.npmjs.org:80\"\n",
        "  - name: \"unlisted\"\n",
        "#   client `checkout`: uploads.example.com:443 denied by `uploads.example.com` in `deny`",
        "#   top-level `allow`, line 8: status.example.com\n",
        "#   client `payments` `allow`, line 16: legacy.paypal.com\n",
        "2 already allowed by CURRENT, 10 it would deny (below), 1 it refuses by deny or ip_guard",
    ];
    for want in expect {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // Already allowed: not suggested again.
    assert!(!text.contains("\"api.paypal.com"), "{text}");
    assert!(!text.contains("- \"uploads.example.com"), "{text}");
    let file = TempPolicy::new(&text);
    let check = portcullis(&["check", file.path_str()]);
    assert!(
        stdout(&check).ends_with("ok (0 warnings)\n"),
        "{}\n{text}",
        stdout(&check)
    );

    // One client only, and only what was seen at least twice.
    let out = portcullis(&[
        "suggest",
        "--audit",
        AUDIT,
        "--policy",
        CURRENT,
        "--client",
        "payments",
        "--min-count",
        "2",
    ]);
    let text = stdout(&out);
    assert!(
        text.contains("      - \"hooks.paypal.com:443\"\n"),
        "{text}"
    );
    assert!(!text.contains("checkout"), "{text}");
    assert!(!text.contains("status.example.com"), "{text}");
}

#[test]
fn logs_are_read_from_several_files_stdin_and_gzip_with_the_same_result() {
    use flate2::Compression;
    use flate2::write::GzEncoder;

    let full = std::fs::read(root().join(AUDIT)).expect("read the audit fixture");
    let once = portcullis(&["suggest", "--audit", AUDIT]);
    assert_eq!(once.status.code(), Some(0), "{}", stderr(&once));

    // Split the log in two: the first half gzipped in a file, the rest on stdin.
    let cut = full
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(6)
        .map(|(i, _)| i + 1)
        .unwrap();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&full[..cut]).unwrap();
    let gz_path = std::env::temp_dir().join(format!(
        "portcullis-suggest-{}.jsonl.gz",
        std::process::id()
    ));
    std::fs::write(&gz_path, gz.finish().unwrap()).unwrap();
    let split = suggest_with_stdin(
        &["--audit", gz_path.to_str().unwrap(), "--audit", "-"],
        &full[cut..],
    );
    let _ = std::fs::remove_file(&gz_path);
    assert_eq!(split.status.code(), Some(0), "{}", stderr(&split));
    assert_eq!(stdout(&split), stdout(&once));

    // No --audit at all reads stdin.
    let piped = suggest_with_stdin(&[], &full);
    assert_eq!(stdout(&piped), stdout(&once));
}

#[test]
fn unreadable_inputs_are_usage_errors() {
    let out = portcullis(&["suggest", "--audit", "tests/policies/suggest/missing.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.jsonl"), "{}", stderr(&out));
    let out = portcullis(&[
        "suggest",
        "--audit",
        AUDIT,
        "--policy",
        "tests/policies/invalid/port_zero.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("port_zero.yaml:"), "{}", stderr(&out));
}
