//! A policy directory: `run`, hot reload, `check`, `explain`, `diff` and
//! `test` on a directory of team-owned files, and what a bad file in it does.

use std::net::Ipv4Addr;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::reload::{PolicyDir, WAIT, wait_generation, world, write_renamed};
use crate::support::client::{
    connect_from, echo_roundtrip, open_tunnel, read_body, read_head, send_connect,
};
use crate::support::dns::TestDns;
use crate::support::proxy::{Launch, Proxy};
use crate::support::{portcullis, stderr, stdout};

/// The platform's file: settings, everyone's rules, and the default client.
const BASE: &str = "\
version: 1
mode: enforce
deny_message: \"ask in #egress\"
ip_guard:
  allowed: [127.0.0.0/8]
allow:
  - \"a.test:*\"
deny:
  - \"x.test:*\"
clients:
  - name: everyone
    sources: [127.0.0.1/32]
";

/// A team's file: its client and what it may reach.
const PAYMENTS: &str = "\
version: 1
clients:
  - name: payments
    sources: [127.0.0.2/32]
    allow:
      - \"pay.test:*\"
";

/// Writes `files` into `dir` (each named relative to it).
fn write_all(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

async fn start_on(dir: &Path, dns: &TestDns) -> Proxy {
    let launch = Launch {
        policy_path: Some(dir),
        ..Launch::default()
    };
    Proxy::launch("", dns.addr(), launch).await
}

/// `CONNECT target` from `src`: the status, the body, and the request id.
async fn connect_as(proxy: &Proxy, src: Ipv4Addr, target: &str) -> (u16, String) {
    let mut s = connect_from(src, proxy.addr()).await;
    send_connect(&mut s, target).await;
    let head = read_head(&mut s).await;
    let body = match head.status {
        200 => String::new(),
        _ => String::from_utf8_lossy(&read_body(&mut s, &head).await).into_owned(),
    };
    (head.status, body)
}

/// The directory digest as documented: per file, name NUL length NUL bytes.
fn dir_sha256(files: &[(&str, &str)]) -> String {
    let mut files = files.to_vec();
    files.sort();
    let mut h = Sha256::new();
    for (name, text) in files {
        h.update(format!("{name}\0{}\0", text.len()).as_bytes());
        h.update(text.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits for the `count`th failed reload, and its audit record whose error says `needle`.
async fn wait_reload_error(proxy: &Proxy, count: f64, needle: &str) -> Value {
    proxy
        .wait_metric(
            "portcullis_policy_reloads_total",
            &[("result", "error")],
            |n| n == count,
            WAIT,
        )
        .await;
    let rec = proxy
        .wait_audit(
            |r| {
                r["event"] == "policy_reload"
                    && r["result"] == "error"
                    && r["error"].as_str().is_some_and(|e| e.contains(needle))
            },
            WAIT,
        )
        .await;
    assert_eq!(rec["policy_generation"], 1, "{rec}");
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_decisions_follow_every_file_of_the_directory() {
    let (dns, echo) = world(&["a.test", "pay.test", "x.test"]).await;
    let dir = PolicyDir::new("dir-run");
    write_all(
        &dir.0,
        &[("00-base.yaml", BASE), ("10-payments.yaml", PAYMENTS)],
    );
    // Never read: hidden, an editor's leftovers, a subdirectory.
    write_all(
        &dir.0,
        &[
            (".10-payments.yaml.swp", "\0garbage"),
            ("10-payments.yaml~", "version: 2\n"),
        ],
    );
    std::fs::create_dir(dir.0.join("old")).unwrap();
    std::fs::write(dir.0.join("old/99.yaml"), "mode: report\n").unwrap();
    let proxy = start_on(&dir.0, &dns).await;
    let port = echo.addr().port();
    let (everyone, payments) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));

    let mut t = open_tunnel(proxy.addr(), &format!("a.test:{port}")).await;
    echo_roundtrip(&mut t, b"base allow").await;
    let (status, body) = connect_as(&proxy, everyone, &format!("pay.test:{port}")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        connect_as(&proxy, payments, &format!("pay.test:{port}"))
            .await
            .0,
        200
    );
    assert_eq!(
        connect_as(&proxy, payments, &format!("a.test:{port}"))
            .await
            .0,
        200
    );
    // The base file's deny and deny_message reach the team's client, and
    // the refusal names the file the deny rule is in.
    let (status, body) = connect_as(&proxy, payments, &format!("x.test:{port}")).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "portcullis: not_allowed: deny rule `x.test:*` (00-base.yaml line 9)\nask in #egress\n"
    );

    let rec = proxy
        .wait_audit(|r| r["event"] == "policy_reload", WAIT)
        .await;
    let want = dir_sha256(&[("00-base.yaml", BASE), ("10-payments.yaml", PAYMENTS)]);
    assert_eq!(rec["sha256"], want, "{rec}");

    // `explain` on the same directory says the same, naming the file.
    let dir_arg = dir.0.to_str().unwrap();
    let out = portcullis(&[
        "explain",
        "--policy",
        dir_arg,
        "--client",
        "payments",
        "pay.test:443",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("pay.test:* (client allow rule, 10-payments.yaml line 6, column 9)"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_takes_a_file_added_changed_and_removed() {
    let (dns, echo) = world(&["a.test", "b.test", "c.test"]).await;
    let dir = PolicyDir::new("dir-reload");
    write_all(&dir.0, &[("00-base.yaml", BASE)]);
    let proxy = start_on(&dir.0, &dns).await;
    let port = echo.addr().port();
    let local = Ipv4Addr::LOCALHOST;
    let status = |host: &'static str| {
        let proxy = &proxy;
        async move { connect_as(proxy, local, &format!("{host}:{port}")).await.0 }
    };
    assert_eq!(status("b.test").await, 403);

    let team = "version: 1\nallow:\n  - \"b.test:*\"\n";
    write_renamed(&dir.0.join("20-team.yaml"), team);
    wait_generation(&proxy, 2.0).await;
    assert_eq!(status("b.test").await, 200, "a file added");

    let changed = "version: 1\nallow:\n  - \"c.test:*\"\n";
    std::fs::write(dir.0.join("20-team.yaml"), changed).unwrap();
    wait_generation(&proxy, 3.0).await;
    assert_eq!(
        (status("b.test").await, status("c.test").await),
        (403, 200),
        "a file changed in place"
    );
    let rec = proxy
        .wait_audit(
            |r| r["event"] == "policy_reload" && r["policy_generation"] == 3,
            WAIT,
        )
        .await;
    let want = dir_sha256(&[("00-base.yaml", BASE), ("20-team.yaml", changed)]);
    assert_eq!(rec["sha256"], want, "{rec}");

    std::fs::remove_file(dir.0.join("20-team.yaml")).unwrap();
    wait_generation(&proxy, 4.0).await;
    assert_eq!(status("c.test").await, 403, "a file removed");
    assert_eq!(status("a.test").await, 200);
}

/// A file written in place is not taken beside the others before its writer
/// closes it: the generation the next change makes holds the whole file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_being_written_is_not_taken_half_written() {
    use std::io::Write;
    let (dns, _echo) = world(&[]).await;
    let dir = PolicyDir::new("dir-half");
    write_all(&dir.0, &[("00-base.yaml", BASE)]);
    let proxy = start_on(&dir.0, &dns).await;

    let (head, tail) = (
        "version: 1\nallow:\n  - \"b.test:*\"\n",
        "  - \"c.test:*\"\n",
    );
    let mut writer = std::fs::File::create(dir.0.join("20-team.yaml")).unwrap();
    writer.write_all(head.as_bytes()).unwrap();
    writer.flush().unwrap();
    // Another team's change lands while the first file is half written.
    let other = "version: 1\nallow:\n  - \"d.test:*\"\n";
    write_renamed(&dir.0.join("30-other.yaml"), other);
    // The writer's pause: well under the 2 s after which a stalled writer's file is taken anyway.
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer.write_all(tail.as_bytes()).unwrap();
    drop(writer);

    wait_generation(&proxy, 2.0).await;
    let rec = proxy
        .wait_audit(
            |r| r["event"] == "policy_reload" && r["policy_generation"] == 2,
            WAIT,
        )
        .await;
    let whole = format!("{head}{tail}");
    let want = dir_sha256(&[
        ("00-base.yaml", BASE),
        ("20-team.yaml", &whole),
        ("30-other.yaml", other),
    ]);
    assert_eq!(
        rec["sha256"], want,
        "generation 2 is the whole directory: {rec}"
    );
}

/// The layout the kubelet makes for a ConfigMap with several keys, built by
/// hand: a hidden data directory, `..data` pointing at it, a link per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_data_swap_is_taken() {
    let (dns, echo) = world(&["a.test", "b.test"]).await;
    let dir = PolicyDir::new("dir-configmap");
    let root = &dir.0;
    let team_v1 = "version: 1\nallow: []\n";
    let team_v2 = "version: 1\nallow:\n  - \"b.test:*\"\n";
    let data = |name: &str, team: &str| {
        let d = root.join(name);
        std::fs::create_dir(&d).unwrap();
        write_all(&d, &[("00-base.yaml", BASE), ("10-team.yaml", team)]);
    };
    data("..2026_11_30_a", team_v1);
    symlink("..2026_11_30_a", root.join("..data")).unwrap();
    for key in ["00-base.yaml", "10-team.yaml"] {
        symlink(format!("..data/{key}"), root.join(key)).unwrap();
    }
    let proxy = start_on(root, &dns).await;
    let port = echo.addr().port();
    let local = Ipv4Addr::LOCALHOST;
    assert_eq!(
        connect_as(&proxy, local, &format!("b.test:{port}")).await.0,
        403
    );

    // The kubelet's update: a new data directory, then one atomic rename of `..data`.
    data("..2026_11_30_b", team_v2);
    symlink("..2026_11_30_b", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_11_30_a")).unwrap();

    wait_generation(&proxy, 2.0).await;
    assert_eq!(
        connect_as(&proxy, local, &format!("b.test:{port}")).await.0,
        200
    );
    let rec = proxy
        .wait_audit(
            |r| r["event"] == "policy_reload" && r["policy_generation"] == 2,
            WAIT,
        )
        .await;
    let want = dir_sha256(&[("00-base.yaml", BASE), ("10-team.yaml", team_v2)]);
    assert_eq!(rec["sha256"], want, "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_in_a_reload_keeps_the_previous_policy_whole() {
    let (dns, echo) = world(&["a.test", "b.test"]).await;
    let dir = PolicyDir::new("dir-bad");
    write_all(&dir.0, &[("00-base.yaml", BASE)]);
    let proxy = start_on(&dir.0, &dns).await;
    let port = echo.addr().port();
    let local = Ipv4Addr::LOCALHOST;

    // A second file that also sets `mode`, beside a rule that is fine: nothing of it loads.
    let sets_mode = "version: 1\nmode: report\nallow:\n  - \"b.test:*\"\n";
    write_renamed(&dir.0.join("20-team.yaml"), sets_mode);
    let team = dir.0.join("20-team.yaml");
    let needle = format!(
        "{}:2:1: error[duplicate-key]: `mode` is set in 00-base.yaml line 2",
        team.display()
    );
    wait_reload_error(&proxy, 1.0, &needle).await;
    assert_eq!(
        connect_as(&proxy, local, &format!("b.test:{port}")).await.0,
        403,
        "neither report mode nor the new rule is in force"
    );

    // Not YAML at all.
    write_renamed(&team, "version: 1\nallow: [b.test\n");
    let needle = format!("{}:2:8: error[yaml-syntax]", team.display());
    wait_reload_error(&proxy, 2.0, &needle).await;
    // A symlink loop.
    std::fs::remove_file(&team).unwrap();
    symlink("20-team.yaml", &team).unwrap();
    let needle = format!("{}:1:1: error[unreadable-file]", team.display());
    let rec = wait_reload_error(&proxy, 3.0, &needle).await;
    assert!(
        rec["error"].as_str().unwrap().contains("symlink loop"),
        "{rec}"
    );
    let text = proxy.metrics().await;
    assert!(text.contains("portcullis_policy_generation 1"), "{text}");
    let mut t = open_tunnel(proxy.addr(), &format!("a.test:{port}")).await;
    echo_roundtrip(&mut t, b"still the first policy").await;

    std::fs::remove_file(&team).unwrap();
    write_renamed(&team, "version: 1\nallow:\n  - \"b.test:*\"\n");
    wait_generation(&proxy, 2.0).await;
    assert_eq!(
        connect_as(&proxy, local, &format!("b.test:{port}")).await.0,
        200
    );
}

#[test]
fn run_refuses_an_empty_or_conflicting_directory_naming_the_files() {
    let dir = PolicyDir::new("dir-start");
    let dir_arg = dir.0.to_str().unwrap();
    let run = || {
        portcullis(&[
            "run",
            "--policy",
            dir_arg,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
    };
    std::fs::create_dir(dir.0.join("sub")).unwrap();
    std::fs::write(dir.0.join("sub/00.yaml"), BASE).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "{dir_arg}:1:1: error[empty-file]: the policy directory holds no `*.yaml` or `*.yml` file"
        )),
        "{}",
        stderr(&out)
    );

    write_all(
        &dir.0,
        &[
            ("00-base.yaml", BASE),
            (
                "10-b.yaml",
                "version: 1\ntls:\n  ech: allow\nmode: report\n",
            ),
        ],
    );
    let out = run();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let want = format!(
        "{dir_arg}/10-b.yaml:4:1: error[duplicate-key]: `mode` is set in 00-base.yaml line 2 and again here"
    );
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));
}

#[test]
fn check_names_both_files_of_a_conflict_in_text_and_json() {
    let dir = PolicyDir::new("dir-check");
    let dir_arg = dir.0.to_str().unwrap();
    write_all(
        &dir.0,
        &[("00-base.yaml", BASE), ("10-payments.yaml", PAYMENTS)],
    );
    let out = portcullis(&["check", dir_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), format!("{dir_arg}: ok (0 warnings)\n"));

    let again = "version: 1\n\nclients:\n  - name: payments\n    sources: [10.0.0.0/24]\n";
    write_all(&dir.0, &[("20-again.yaml", again)]);
    let out = portcullis(&["check", dir_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        format!(
            "{dir_arg}/20-again.yaml:4:11: error[duplicate-client]: client `payments` is defined twice: first at 10-payments.yaml line 3\n  hint: merge the two entries, or give one a new name\n{dir_arg}: invalid (1 error, 0 warnings)\n"
        )
    );
    let out = portcullis(&["check", "--format", "json", dir_arg]);
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let problem = &doc["problems"][0];
    assert_eq!(problem["code"], "duplicate-client");
    assert_eq!(problem["file"], format!("{dir_arg}/20-again.yaml"));
    assert_eq!(
        (problem["line"].as_u64(), problem["column"].as_u64()),
        (Some(4), Some(11))
    );
}

#[test]
fn explain_diff_and_test_take_directories() {
    let (old, new) = (
        PolicyDir::new("dir-diff-old"),
        PolicyDir::new("dir-diff-new"),
    );
    write_all(
        &old.0,
        &[("00-base.yaml", BASE), ("10-payments.yaml", PAYMENTS)],
    );
    let more = PAYMENTS.replace(
        "      - \"pay.test:*\"\n",
        "      - \"pay.test:*\"\n      - api.paypal.com\n",
    );
    write_all(
        &new.0,
        &[("00-base.yaml", BASE), ("10-payments.yaml", &more)],
    );
    let (a, b) = (old.0.to_str().unwrap(), new.0.to_str().unwrap());

    let out = portcullis(&["diff", a, b]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("client `payments`:\n  + allow api.paypal.com:443"),
        "{}",
        stdout(&out)
    );
    assert_eq!(portcullis(&["diff", a, a]).status.code(), Some(0));

    let out = portcullis(&[
        "explain",
        "--policy",
        a,
        "--client",
        "127.0.0.2",
        "x.test:443",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout(&out).contains("deny rule `x.test:*` (00-base.yaml line 9)"),
        "{}",
        stdout(&out)
    );

    let cases = new.0.join("cases");
    std::fs::create_dir(&cases).unwrap();
    let cases = cases.join("cases.yaml");
    std::fs::write(
        &cases,
        "- {client: payments, dest: \"api.paypal.com:443\", expect: allow}\n- {client: everyone, dest: \"api.paypal.com:443\", expect: allow}\n",
    )
    .unwrap();
    let out = portcullis(&["test", "--policy", b, cases.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("  {b}: no allow rule for api.paypal.com:443")),
        "{}",
        stdout(&out)
    );
}
