//! Denials a developer can act on: the reason code in the status line (what
//! Python, git and curl print for a failed CONNECT), the cause in the body
//! and the audit `detail` (word for word what `explain` says), the policy's
//! `deny_message`, and the report-mode warning. Real clients, real binary.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};

use crate::support::client::{Head, LOCAL, read_body, read_head, send_connect};
use crate::support::dns::TestDns;
use crate::support::proxy::Proxy;
use crate::support::{TempPolicy, portcullis, stdout};

const WAIT: Duration = Duration::from_secs(10);

const POLICY: &str = r#"version: 1
deny_message: "ask for access in #egress-requests"
allow:
  - "*.example.test"
  - "npm.test:8443"
  - guarded.test
deny:
  - blocked.example.test
"#;

/// `CONNECT target` from `from` (any loopback address): the head and body.
async fn refused(proxy: SocketAddr, from: Ipv4Addr, target: &str) -> (Head, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    let mut stream: TcpStream = tokio::time::timeout(WAIT, socket.connect(proxy))
        .await
        .expect("connect timed out")
        .unwrap();
    send_connect(&mut stream, target).await;
    let head = read_head(&mut stream).await;
    let body = String::from_utf8(read_body(&mut stream, &head).await).unwrap();
    (head, body)
}

fn status_line(head: &Head) -> &str {
    head.raw.lines().next().unwrap_or_default()
}

async fn detail_of(proxy: &Proxy, head: &Head) -> Value {
    let id = head.header("x-portcullis-request-id").expect("request id");
    let record = proxy.wait_audit(|r| r["request_id"] == id, WAIT).await;
    record["detail"].clone()
}

fn explain_why(policy: &TempPolicy, target: &str) -> String {
    let out = portcullis(&["explain", "--policy", policy.path_str(), target]);
    let text = stdout(&out);
    (text.lines())
        .find_map(|l| l.strip_prefix("why:"))
        .unwrap_or_else(|| panic!("no why:\n{text}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_names_its_cause_as_explain_does_and_carries_the_deny_message() {
    let dns = TestDns::start().await;
    dns.set_a("guarded.test", &[LOCAL], 60);
    let proxy = Proxy::start(POLICY, dns.addr(), &[]).await;
    let file = TempPolicy::new(POLICY);
    let rows = [
        (
            "nowhere.test:443",
            403,
            "not_allowed",
            "no allow rule for nowhere.test:443",
        ),
        (
            "blocked.example.test:443",
            403,
            "not_allowed",
            "deny rule `blocked.example.test` (line 8)",
        ),
        (
            "npm.test:443",
            403,
            "not_allowed",
            "npm.test is allowed only on ports 8443",
        ),
        (
            "guarded.test:443",
            403,
            "blocked_ip",
            "every address of guarded.test is guarded (127.0.0.1)",
        ),
    ];
    for (target, status, reason, cause) in rows {
        let (head, body) = refused(proxy.addr(), Ipv4Addr::LOCALHOST, target).await;
        assert_eq!(head.status, status, "{target}: {}", head.raw);
        let phrase = if status == 403 { "Forbidden" } else { "" };
        assert_eq!(
            status_line(&head),
            format!("HTTP/1.1 {status} {phrase} (portcullis: {reason})"),
            "{target}"
        );
        assert_eq!(
            body,
            format!("portcullis: {reason}: {cause}\nask for access in #egress-requests\n"),
            "{target}"
        );
        assert_eq!(detail_of(&proxy, &head).await, cause, "{target}");
        // The policy alone decides all but the guard (a resolution at
        // connect time): there `explain` gives the refusal's words.
        if reason == "not_allowed" {
            assert!(
                explain_why(&file, target).starts_with(cause),
                "{target}: explain says `{}`",
                explain_why(&file, target)
            );
        }
    }
}

const CLIENTS: &str = r#"version: 1
deny_message: "ask for access in #egress-requests"
allow: [api.example.test]
clients:
  - name: ci
    sources: [127.0.0.2/32]
    deny_message: "CI egress: open a ticket in CIOPS"
  - name: apps
    sources: [127.0.0.0/8]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_deny_message_replaces_the_top_level_one() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(CLIENTS, dns.addr(), &[]).await;
    let (head, body) = refused(proxy.addr(), Ipv4Addr::new(127, 0, 0, 2), "x.test:443").await;
    assert_eq!(head.status, 403, "{}", head.raw);
    assert_eq!(
        body,
        "portcullis: not_allowed: no allow rule for x.test:443\nCI egress: open a ticket in CIOPS\n"
    );
    let (_, body) = refused(proxy.addr(), Ipv4Addr::new(127, 0, 0, 3), "x.test:443").await;
    assert!(
        body.ends_with("\nask for access in #egress-requests\n"),
        "{body}"
    );
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// What people actually see: Python's urllib and http.client put the status
/// line in the exception, git and curl print it with their verbose switches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_git_and_curl_show_the_reason_code() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(POLICY, dns.addr(), &[]).await;
    let proxy_url = format!("http://{}", proxy.addr());
    let want = "403 Forbidden (portcullis: not_allowed)";

    let script = r#"
import http.client, sys, urllib.request
proxy = sys.argv[1]
host, port = proxy.removeprefix("http://").rsplit(":", 1)
try:
    c = http.client.HTTPSConnection(host, int(port), timeout=10)
    c.set_tunnel("nowhere.test", 443)
    c.request("GET", "/")
except OSError as e:
    print("http.client:", e)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": proxy}))
try:
    opener.open("https://nowhere.test/", timeout=10)
except Exception as e:
    print("urllib:", e)
"#;
    let out = tokio::task::spawn_blocking({
        let proxy_url = proxy_url.clone();
        move || run(Command::new("python3").args(["-c", script, &proxy_url]))
    })
    .await
    .unwrap();
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            format!("http.client: Tunnel connection failed: {want}"),
            format!("urllib: <urlopen error Tunnel connection failed: {want}>"),
        ],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An empty HOME: no user git configuration takes part.
    let home = std::env::temp_dir().join(format!("portcullis-git-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let out = tokio::task::spawn_blocking({
        let (proxy_url, home) = (proxy_url.clone(), home.clone());
        move || {
            run(Command::new("git")
                .args(["-c", &format!("http.proxy={proxy_url}")])
                .args(["ls-remote", "https://nowhere.test/acme/repo.git"])
                .env("HOME", &home)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_TERMINAL_PROMPT", "0")
                .env("GIT_CURL_VERBOSE", "1"))
        }
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("HTTP/1.1 {want}")), "{err}");

    let out = tokio::task::spawn_blocking(move || {
        run(Command::new("curl")
            .args(["-sv", "--max-time", "10", "--proxy", &proxy_url])
            .arg("https://nowhere.test/"))
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("< HTTP/1.1 {want}")), "{err}");
}

/// Report mode lets through what the policy would deny: a WARN at start
/// even when an ignore comment silences `check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_is_warned_at_start_whatever_the_file_ignores() {
    let dns = TestDns::start().await;
    let policy = "version: 1\nmode: report  # portcullis: ignore[report-mode]\nallow: [api.example.test]\nclients:\n  - name: legacy\n    sources: [10.0.0.0/8]\n    mode: report\n";
    let proxy = Proxy::start(policy, dns.addr(), &[]).await;
    crate::support::client::eventually(WAIT, "report-mode warning", || async {
        proxy.stderr_text().lines().any(|l| {
            l.contains("WARN")
                && l.contains("report mode:")
                && l.contains("legacy")
                && l.contains("top_level")
        })
    })
    .await;
}

/// A target that does not parse is refused with what is wrong, never the
/// client's own bytes (a body a browser or a log viewer might render).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_target_is_described_not_echoed() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(POLICY, dns.addr(), &[]).await;
    for (target, cause) in [
        (
            "evil..example.test:443",
            "the destination is not valid: host name has an empty label",
        ),
        (
            "0x7f.1:443",
            "the destination is not valid: IPv4 address not in canonical dotted-quad form",
        ),
        (
            "api.example.test",
            "the CONNECT target names no port (host:port)",
        ),
    ] {
        let (head, body) = refused(proxy.addr(), Ipv4Addr::LOCALHOST, target).await;
        assert_eq!(head.status, 400, "{target}: {}", head.raw);
        assert_eq!(
            body,
            format!("portcullis: bad_request: {cause}\nask for access in #egress-requests\n")
        );
        assert_eq!(detail_of(&proxy, &head).await, cause, "{target}");
    }
}
