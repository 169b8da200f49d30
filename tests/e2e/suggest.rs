//! `portcullis suggest`: from the traffic report mode saw to an enforced allowlist.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use std::net::Ipv4Addr;

use serde_json::json;

use crate::support::client::{
    LOCAL, closed_port, connect_from, connect_refused, echo_roundtrip, eventually, expect_refusal,
    finish, open_tunnel, send_connect, tunnel_on,
};
use crate::support::dns::TestDns;
use crate::support::origin::TcpEcho;
use crate::support::proxy::{Proxy, loopback_policy};
use crate::support::{TempPolicy, bin, portcullis, root, stderr, stdout};

const AUDIT_WAIT: Duration = Duration::from_secs(10);

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
    // No carve-out added by hand: the suggestion keeps the one the traffic needed.
    assert!(
        suggested.contains("    - \"127.0.0.1/32\"\n"),
        "{suggested}"
    );
    let enforced = Proxy::start(&suggested, dns.addr(), &[]).await;
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

/// Two clients of the shared service, told apart by their loopback source address.
const WEB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const WORKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// The policy in force while the workload is observed. Its comments, its
/// `ip_guard` carve-out and its clients' ranges must survive `--merge`.
fn observed_policy(port: u16) -> String {
    format!(
        "# The shared egress policy: report mode while we learn what the jobs need.\n\
         version: 1\n\
         mode: report\n\
         allow:\n  \
           # known before the observation started\n  \
           - \"api.alpha.test:{port}\"\n\
         ip_guard:\n  \
           # the test origins listen on loopback\n  \
           allowed: [127.0.0.0/8]\n\
         clients:\n  \
           - name: web\n    \
             sources: [127.0.0.2/32]\n  \
           - name: worker\n    \
             sources: [127.0.0.3/32]\n    \
             allow: []\n"
    )
}

async fn tunnel_from(src: Ipv4Addr, proxy: &Proxy, target: &str) {
    let mut stream = connect_from(src, proxy.addr()).await;
    tunnel_on(&mut stream, target).await;
    echo_roundtrip(&mut stream, target.as_bytes()).await;
    finish(&mut stream).await;
}

async fn refused_from(src: Ipv4Addr, proxy: &Proxy, target: &str, reason: &str) {
    let mut stream = connect_from(src, proxy.addr()).await;
    send_connect(&mut stream, target).await;
    expect_refusal(&mut stream, 502, reason).await;
}

/// How FireLens (AWS for Fluent Bit) ships a line a container wrote.
fn firelens(line: &str, source: &str) -> String {
    json!({
        "log": line, "container_id": "4f6e0c2a9b8d", "container_name": "portcullis",
        "source": source, "ecs_cluster": "egress",
        "ecs_task_arn": "arn:aws:ecs:eu-west-1:123456789012:task/egress/4f6e0c2a9b8d",
        "ecs_task_definition": "portcullis:7"
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firelens_wrapped_mixed_logs_suggest_only_what_worked_and_merge_into_the_policy() {
    let dns = TestDns::start().await;
    for name in [
        "api.alpha.test",
        "shared.beta.test",
        "jobs.gamma.test",
        "pastebin.com",
        "closed.delta.test",
    ] {
        dns.set_a(name, &[LOCAL], 60);
    }
    let echo = TcpEcho::start().await;
    let port = echo.addr().port();
    let closed = closed_port().await;
    let current = TempPolicy::new(&observed_policy(port));
    let observed = Proxy::start(&observed_policy(port), dns.addr(), &[]).await;

    // 1. The workload's traffic, seen in report mode.
    tunnel_from(WEB, &observed, &format!("api.alpha.test:{port}")).await;
    tunnel_from(WEB, &observed, &format!("shared.beta.test:{port}")).await;
    tunnel_from(WEB, &observed, &format!("pastebin.com:{port}")).await;
    tunnel_from(WORKER, &observed, &format!("shared.beta.test:{port}")).await;
    tunnel_from(WORKER, &observed, &format!("jobs.gamma.test:{port}")).await;
    // Never resolved, never connected: nothing an allow rule would fix.
    refused_from(WEB, &observed, "gone.epsilon.test:443", "dns_error").await;
    refused_from(
        WORKER,
        &observed,
        &format!("closed.delta.test:{closed}"),
        "connect_error",
    )
    .await;
    for host in [
        "api.alpha.test",
        "pastebin.com",
        "jobs.gamma.test",
        "gone.epsilon.test",
        "closed.delta.test",
    ] {
        observed.wait_audit(|r| r["host"] == host, AUDIT_WAIT).await;
    }
    eventually(AUDIT_WAIT, "both shared.beta.test records", || {
        let n = (observed.audit_records().iter())
            .filter(|r| r["host"] == "shared.beta.test")
            .count();
        async move { n == 2 }
    })
    .await;

    // 2. The log as FireLens ships it: every stdout and stderr line wrapped in
    // {"log": ...}, the proxy's own diagnostics among the records, plus a
    // CloudWatch export line, garbage and JSON of another program.
    let diagnostics: Vec<String> = (observed.stderr_text().lines())
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    assert!(!diagnostics.is_empty(), "report mode warns at start");
    let records = observed.audit_records();
    assert!(records.iter().any(|r| r["event"] == "policy_reload"));
    let mut log = Vec::new();
    let mut wrapped_diagnostics = diagnostics.iter().map(|d| firelens(d, "stderr"));
    for record in &records {
        if record["host"] == "jobs.gamma.test" {
            log.push(format!("2026-11-29T17:11:43.908Z {record}"));
        } else {
            log.push(firelens(&record.to_string(), "stdout"));
        }
        log.extend(wrapped_diagnostics.next());
    }
    log.extend(wrapped_diagnostics);
    log.extend(diagnostics.iter().cloned());
    log.push("thread 'main' panicked at src/main.rs:1:1".to_owned());
    log.push(r#"{"level":"info","msg":"unrelated app","decision":"deny"}"#.to_owned());
    log.push(r#"{"log": "{\"truncated\": "}"#.to_owned());
    let not_records = 2 * diagnostics.len() + 3;
    let file = TempPolicy::new(&(log.join("\n") + "\n"));

    // 3. Suggest from scratch.
    let out = portcullis(&["suggest", "--audit", file.path_str()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}\n{text}", stderr(&out));
    assert!(
        text.contains(&format!("from {} audit records", records.len())),
        "{text}"
    );
    assert!(!text.contains(" denied"), "nothing was denied:\n{text}");
    // Every record but the exported one, every diagnostic, and the truncated line.
    let firelens_lines = records.len() - 1 + diagnostics.len() + 1;
    assert!(
        text.contains(&format!(
            "# Unwrapped: {firelens_lines} FireLens lines, 1 line behind a timestamp prefix.\n"
        )),
        "{text}"
    );
    assert!(
        stderr(&out).contains(&format!(
            "portcullis suggest: skipped {not_records} lines that are not audit records"
        )),
        "{}",
        stderr(&out)
    );
    for want in [
        // Used by both clients: one top-level rule.
        "allow:\n  # seen 2 times, first".to_owned(),
        format!("; used by every client (2)\n  - \"shared.beta.test:{port}\"\n"),
        "  - name: \"web\"\n".to_owned(),
        format!("      - \"api.alpha.test:{port}\"\n"),
        format!(
            "      # FLAGGED: pastebin.com is a paste site, a known way to move data out: keep it only if you mean it\n      - \"pastebin.com:{port}\"\n"
        ),
        "  - name: \"worker\"\n".to_owned(),
        format!("      - \"jobs.gamma.test:{port}\"\n"),
        "ip_guard:\n".to_owned(),
        "    - \"127.0.0.1/32\"\n".to_owned(),
        "#   client `web`: gone.epsilon.test:443 dns_error (NXDOMAIN)".to_owned(),
        format!(
            "#   client `worker`: closed.delta.test:{closed} connect_error (connection refused"
        ),
    ] {
        assert!(text.contains(&want), "no {want:?} in\n{text}");
    }
    assert!(!text.contains("- \"gone.epsilon.test"), "{text}");
    assert!(!text.contains("- \"closed.delta.test"), "{text}");
    let suggested = TempPolicy::new(&text);
    let check = portcullis(&["check", suggested.path_str()]);
    assert_eq!(check.status.code(), Some(0), "{}\n{text}", stdout(&check));

    // 4. --merge: CURRENT with the suggestions added, comments and carve-out kept.
    let out = portcullis(&[
        "suggest",
        "--policy",
        current.path_str(),
        "--merge",
        "--audit",
        file.path_str(),
    ]);
    let merged = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}\n{merged}", stderr(&out));
    for want in [
        "# The shared egress policy: report mode while we learn what the jobs need.\n",
        "  # known before the observation started\n",
        "  # the test origins listen on loopback\n  allowed: [127.0.0.0/8]\n",
        "    sources: [127.0.0.3/32]\n",
    ] {
        assert!(merged.contains(want), "no {want:?} in\n{merged}");
    }
    let merged_file = TempPolicy::new(&merged);
    let check = portcullis(&["check", merged_file.path_str()]);
    assert_eq!(check.status.code(), Some(0), "{}\n{merged}", stdout(&check));
    // Nothing left to add once merged.
    let out = portcullis(&[
        "suggest",
        "--policy",
        merged_file.path_str(),
        "--audit",
        file.path_str(),
    ]);
    let rest = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        rest.contains("\nallow: []\n") && !rest.contains("clients:"),
        "{rest}"
    );

    // 5. Enforce the merged policy: what worked passes, per client.
    let enforced = Proxy::start(
        &merged.replace("\nmode: report\n", "\nmode: enforce\n"),
        dns.addr(),
        &[],
    )
    .await;
    tunnel_from(WEB, &enforced, &format!("shared.beta.test:{port}")).await;
    tunnel_from(WORKER, &enforced, &format!("shared.beta.test:{port}")).await;
    tunnel_from(WORKER, &enforced, &format!("jobs.gamma.test:{port}")).await;
    tunnel_from(WEB, &enforced, &format!("pastebin.com:{port}")).await;
    let mut stream = connect_from(WEB, enforced.addr()).await;
    send_connect(&mut stream, &format!("jobs.gamma.test:{port}")).await;
    expect_refusal(&mut stream, 403, "not_allowed").await;
}

#[test]
fn a_client_that_matches_nothing_is_an_error() {
    let out = portcullis(&["suggest", "--audit", AUDIT, "--client", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("--client `nope` matches no audit record (clients seen: checkout, payments; `default` is the top-level list)"),
        "{}",
        stderr(&out)
    );
    let out = portcullis(&[
        "suggest", "--audit", AUDIT, "--policy", CURRENT, "--client", "nope",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("--client `nope` is no client of"),
        "{}",
        stderr(&out)
    );
    // The names that exist still work.
    for name in ["payments", "default"] {
        let out = portcullis(&["suggest", "--audit", AUDIT, "--client", name]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
    }
    // --merge needs the policy to merge into.
    let out = portcullis(&["suggest", "--audit", AUDIT, "--merge"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
