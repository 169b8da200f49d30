//! The transparent TLS listener behind a real iptables `REDIRECT` rule, in a
//! private network namespace so that the rule and every address stay inside
//! the test: the outer test re-runs this binary under `unshare --net`, where
//! only a fresh loopback interface exists.

use std::path::Path;
use std::process::{Command as StdCommand, Output};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::support::client::curl;
use crate::support::dns::TestDns;
use crate::support::netns;
use crate::support::proxy::{Proxy, loopback_policy};
use crate::support::tls::TlsOrigin;

const WAIT: Duration = Duration::from_secs(10);
/// Clients bind this source address; only their connections are redirected,
/// so the proxy's own connection to the origin is not.
const CLIENT_SRC: &str = "127.0.0.5";

#[test]
fn iptables_redirect_reaches_the_transparent_tls_listener() {
    let tools = ["iptables", "ip", "curl"];
    let filter = ["--exact", "redirect::inner_redirect_in_private_netns"];
    let Some(text) = netns::run_inside("iptables REDIRECT", &tools, &filter) else {
        return;
    };
    if text.contains("NO-IPTABLES-NAT") {
        eprintln!("SKIPPED iptables REDIRECT: no iptables NAT here:\n{text}");
        return;
    }
    assert!(text.contains("1 passed"), "inner test did not run:\n{text}");
}

/// curl from [`CLIENT_SRC`] to `https://host:port/echo`, the name resolving to
/// 127.0.0.1: the connection the REDIRECT rule takes.
async fn curl_redirected(ca: &Path, host: &str, port: u16) -> Output {
    let ca = ca.to_str().expect("CA path");
    let url = format!("https://{host}:{port}/echo");
    let resolve = format!("{host}:{port}:127.0.0.1");
    let args = [
        "-sS",
        "--interface",
        CLIENT_SRC,
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        &url,
    ];
    curl(&args, &[]).await
}

fn run(cmd: &str, args: &[&str]) {
    let out = StdCommand::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs only inside the namespace the outer test made (it refuses to touch
/// a network with more than a loopback interface).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by iptables_redirect_reaches_the_transparent_tls_listener inside unshare --net"]
async fn inner_redirect_in_private_netns() {
    assert!(netns::inside(), "only inside unshare --net");
    let links = StdCommand::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    assert_eq!(links.lines().count(), 1, "not a fresh namespace:\n{links}");
    run("ip", &["link", "set", "lo", "up"]);

    // Origins on the addresses the clients believe they reach.
    let names = ["origin.test", "denied.test"];
    let on_443 = TcpListener::bind("127.0.0.1:443").await.expect("bind 443");
    let origin = TlsOrigin::start_on(on_443, &names).await;
    let on_9443 = TcpListener::bind("127.0.0.1:9443")
        .await
        .expect("bind 9443");
    let origin_9443 = TlsOrigin::start_on(on_9443, &names).await;
    let dns = TestDns::start().await;
    for n in names {
        dns.set_a(n, &[std::net::Ipv4Addr::LOCALHOST], 60);
    }
    let policy = loopback_policy(&["origin.test:*"], "");
    let proxy = Proxy::start(&policy, dns.addr(), &["--transparent-tls", "127.0.0.1:0"]).await;
    let tls = proxy.listening_addr("transparent_tls").expect("listening");
    // Where the kernel has no NAT for iptables, say so and skip (the outer test reports it).
    let probe = StdCommand::new("iptables")
        .args(["-t", "nat", "-L", "OUTPUT", "-n"])
        .output()
        .expect("iptables");
    if !probe.status.success() {
        println!(
            "NO-IPTABLES-NAT: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        return;
    }
    for port in [443, 9443] {
        let rule = format!(
            "-t nat -A OUTPUT -p tcp -s {CLIENT_SRC} -d 127.0.0.1 --dport {port} -j REDIRECT --to-ports {}",
            tls.port()
        );
        run("iptables", &rule.split(' ').collect::<Vec<_>>());
    }
    let (ca, ca_9443) = (origin.ca_file(), origin_9443.ca_file());

    // The client dials the origin itself; the kernel hands the connection to
    // the proxy, which reads the original destination and the SNI.
    for (port, ca) in [(443u16, &ca), (9443, &ca_9443)] {
        let out = curl_redirected(ca, "origin.test", port).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rec = proxy
            .wait_audit(
                |r| r["listener"] == "transparent_tls" && r["port"] == port,
                WAIT,
            )
            .await;
        assert_eq!(
            (rec["sni"].as_str(), rec["decision"].as_str()),
            (Some("origin.test"), Some("allow")),
            "{rec}"
        );
        assert_eq!(
            rec["upstream_addr"].as_str(),
            Some(format!("127.0.0.1:{port}").as_str()),
            "{rec}"
        );
    }

    // A name outside the policy, redirected the same way, is refused.
    let out = curl_redirected(&ca, "denied.test", 443).await;
    assert!(!out.status.success());
    proxy
        .wait_audit(
            |r| r["listener"] == "transparent_tls" && r["reason"] == "not_allowed",
            WAIT,
        )
        .await;
}
