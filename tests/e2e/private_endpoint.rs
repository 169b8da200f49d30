//! `allow_private`: a cloud private endpoint, played by an origin on a
//! private address, is reachable through the one rule that carries
//! `allow_private`, and through no other. Everything runs in a private
//! network namespace (the outer test re-runs this binary under
//! `unshare --net`), so 10.20.0.5 sits on the namespace's own loopback and
//! no packet leaves the machine.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command as StdCommand;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::time::timeout;

use crate::support::client::{connect_refused, echo_roundtrip, finish, open_tunnel};
use crate::support::dns::TestDns;
use crate::support::proxy::{Launch, Proxy};
use crate::support::{AbortOnDrop, bin, netns, spawn_accept_loop};

const WAIT: Duration = Duration::from_secs(10);
/// The private endpoint: an address the default `ip_guard` blocks (10.0.0.0/8).
const ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 5);
/// Where a listener of the proxy binds in the own-address tests.
const PROXY_SIDE: Ipv4Addr = Ipv4Addr::new(10, 20, 1, 7);

#[test]
fn private_endpoints_are_reached_only_through_allow_private() {
    let filter = ["private_endpoint::inner_"];
    let Some(text) = netns::run_inside("private endpoints", &["ip"], &filter) else {
        return;
    };
    assert!(
        text.contains("2 passed"),
        "inner tests did not run:\n{text}"
    );
}

/// Brings the namespace's loopback up with the private addresses on it.
/// Refuses to touch a network with more than a loopback interface; safe to
/// run from both inner tests (`replace` is idempotent).
fn private_network() {
    assert!(netns::inside(), "only inside unshare --net");
    let links = StdCommand::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    assert_eq!(links.lines().count(), 1, "not a fresh namespace:\n{links}");
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "replace", "10.20.0.5/32", "dev", "lo"],
        vec!["addr", "replace", "10.20.1.7/32", "dev", "lo"],
    ] {
        let out = StdCommand::new("ip").args(&args).output().expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A TCP echo server on the private endpoint's address.
async fn private_echo() -> (SocketAddr, AbortOnDrop) {
    let listener = TcpListener::bind((ENDPOINT, 0))
        .await
        .expect("bind 10.20.0.5");
    let addr = listener.local_addr().unwrap();
    let task = spawn_accept_loop(listener, Arc::new(AtomicUsize::new(0)), echo);
    (addr, task)
}

async fn echo(mut stream: TcpStream) {
    let (mut read, mut write) = stream.split();
    let _ = tokio::io::copy(&mut read, &mut write).await;
    let _ = write.shutdown().await;
}

/// Every name of the test resolves to the private endpoint.
async fn private_dns() -> TestDns {
    let dns = TestDns::start().await;
    for name in ["sts.example.test", "other.example.test", "kms.example.test"] {
        dns.set_a_in_private_netns(name, &[ENDPOINT], 60);
    }
    dns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by private_endpoints_are_reached_only_through_allow_private inside unshare --net"]
async fn inner_only_the_rule_with_allow_private_dials_the_endpoint() {
    private_network();
    let (endpoint, _echo) = private_echo().await;
    let dns = private_dns().await;
    // The default ip_guard: 10.0.0.0/8 is blocked for every other rule.
    let policy = "version: 1\nallow:\n  - dest: \"sts.example.test:*\"\n    allow_private: [10.20.0.0/16]\n  - \"other.example.test:*\"\n  - dest: \"kms.example.test:*\"\n    allow_private: [10.99.0.0/16]\n  - dest: \"10.20.0.0/24:*\"\n    allow_private: [10.20.0.0/24]\n";
    let proxy = Proxy::start(policy, dns.addr(), &[]).await;
    let port = endpoint.port();

    // The rule that carries allow_private reaches the endpoint and relays.
    let mut tunnel = open_tunnel(proxy.addr(), &format!("sts.example.test:{port}")).await;
    echo_roundtrip(&mut tunnel, b"through the VPC endpoint").await;
    finish(&mut tunnel).await;
    let rec = proxy
        .wait_audit(
            |r| r["host"] == "sts.example.test" && r["event"] == "connection",
            WAIT,
        )
        .await;
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["upstream_addr"], format!("{endpoint}"), "{rec}");

    // So does an IP literal its rule's ranges cover.
    let mut tunnel = open_tunnel(proxy.addr(), &format!("{ENDPOINT}:{port}")).await;
    echo_roundtrip(&mut tunnel, b"by address").await;
    finish(&mut tunnel).await;

    // A plain rule for a name that resolves to the same address: guarded.
    let other = format!("other.example.test:{port}");
    connect_refused(proxy.addr(), &other, 403, "blocked_ip").await;
    let rec = proxy
        .wait_audit(|r| r["host"] == "other.example.test", WAIT)
        .await;
    assert_eq!(rec["reason"], "blocked_ip", "{rec}");
    let detail = rec["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("every address of other.example.test is guarded (10.20.0.5)"),
        "{rec}"
    );

    // allow_private that does not cover the address opens nothing.
    let kms = format!("kms.example.test:{port}");
    connect_refused(proxy.addr(), &kms, 403, "blocked_ip").await;
}

/// Starts `portcullis run` with a listener on [`PROXY_SIDE`]; returns its
/// exit status and stderr, or `None` if it is still running after [`WAIT`].
async fn run_with_listener_on_proxy_side(
    policy: &std::path::Path,
    dns: SocketAddr,
) -> Option<(bool, String)> {
    let listen = format!("{PROXY_SIDE}:0");
    let run = Command::new(bin())
        .args(["run", "--policy", policy.to_str().unwrap()])
        .args(["--listen", &listen, "--admin", "127.0.0.1:0"])
        .args(["--nameserver", &dns.to_string(), "--audit-log", "-"])
        .kill_on_drop(true)
        .output();
    let out = timeout(WAIT, run).await.ok()?.expect("run portcullis");
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by private_endpoints_are_reached_only_through_allow_private inside unshare --net"]
async fn inner_allow_private_over_the_proxys_own_address_is_refused() {
    private_network();
    let dns = private_dns().await;
    let dir = std::env::temp_dir().join(format!("portcullis-private-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.yaml");
    let covering =
        "version: 1\nallow:\n  - dest: sts.example.test\n    allow_private: [10.20.0.0/16]\n";
    let narrow =
        "version: 1\nallow:\n  - dest: sts.example.test\n    allow_private: [10.20.0.0/24]\n";

    // Start-up: the range covers the address the explicit listener binds.
    std::fs::write(&path, covering).unwrap();
    let (ok, stderr) = run_with_listener_on_proxy_side(&path, dns.addr())
        .await
        .expect("the proxy started on a policy whose allow_private covers its own address");
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("private-range-forbidden") && stderr.contains("10.20.1.7"),
        "{stderr}"
    );

    // Reload: a proxy with a listener there keeps its policy.
    std::fs::write(&path, narrow).unwrap();
    let transparent = format!("{PROXY_SIDE}:0");
    let launch = Launch {
        args: &["--transparent-http", &transparent],
        policy_path: Some(&path),
        ..Launch::default()
    };
    let proxy = Proxy::launch("", dns.addr(), launch).await;
    std::fs::write(&path, covering).unwrap();
    proxy.signal("HUP").await;
    let rec = proxy
        .wait_audit(
            |r| r["event"] == "policy_reload" && r["result"] == "error",
            WAIT,
        )
        .await;
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("private-range-forbidden") && error.contains("10.20.1.7"),
        "{rec}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
