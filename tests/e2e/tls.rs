//! TLS awareness with real TLS on loopback: the ClientHello check inside
//! CONNECT tunnels, handcrafted and split ClientHellos, and the transparent
//! TLS and HTTP listeners.

use std::net::Ipv4Addr;
use std::time::Duration;

use portcullis::tls_peek::synth::{hello_message, records};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_rustls::TlsConnector;

use crate::support::client::{curl, echo_roundtrip, expect_closed, open_tunnel, send};
use crate::support::dns::TestDns;
use crate::support::origin::TcpEcho;
use crate::support::proxy::{Proxy, loopback_policy};
use crate::support::root;
use crate::support::tls::TlsOrigin;

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;
const WAIT: Duration = Duration::from_secs(10);
/// A fatal `access_denied` alert record: what a refused TLS client gets.
const ACCESS_DENIED_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49];

async fn dns(names: &[&str]) -> TestDns {
    let dns = TestDns::start().await;
    for n in names {
        dns.set_a(n, &[LOCAL], 60);
    }
    dns
}

fn seed(name: &str) -> Vec<u8> {
    std::fs::read(root().join("fuzz/seeds/client_hello").join(name)).unwrap()
}

/// Connects through a CONNECT tunnel and runs a rustls handshake with `sni`.
async fn tls_through(
    proxy: &Proxy,
    target: &str,
    origin: &TlsOrigin,
    sni: &str,
) -> std::io::Result<()> {
    let tunnel = open_tunnel(proxy.addr(), target).await;
    let connector = TlsConnector::from(origin.client_config());
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = tokio::time::timeout(WAIT, connector.connect(name, tunnel)).await??;
    tls.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    tls.read_to_end(&mut body).await?;
    assert!(
        body.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_sni_completes_and_a_mismatch_is_refused() {
    let dns = dns(&["origin.test"]).await;
    let origin = TlsOrigin::start(&["origin.test", "other.test"]).await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), dns.addr(), &[]).await;
    let target = format!("origin.test:{}", origin.addr().port());

    tls_through(&proxy, &target, &origin, "origin.test")
        .await
        .expect("matching SNI");
    let rec = proxy.wait_audit(|r| r["sni"] == "origin.test", WAIT).await;
    assert_eq!(
        (rec["decision"].as_str(), rec["reason"].as_str()),
        (Some("allow"), Some("allowed"))
    );

    // The certificate is valid for other.test too: only the proxy can stop this.
    assert!(
        tls_through(&proxy, &target, &origin, "other.test")
            .await
            .is_err()
    );
    let rec = proxy.wait_audit(|r| r["sni"] == "other.test", WAIT).await;
    assert_eq!(
        (rec["decision"].as_str(), rec["reason"].as_str()),
        (Some("deny"), Some("sni_mismatch"))
    );
    assert_eq!(
        origin
            .snis()
            .iter()
            .filter(|s| s.as_deref() == Some("other.test"))
            .count(),
        0
    );
}

async fn s_client(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("openssl timed out")
        .expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        text.contains("Verification: OK") || text.contains("Verify return code: 0"),
        text,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_through_the_proxy() {
    let dns = dns(&["origin.test"]).await;
    let origin = TlsOrigin::start(&["origin.test"]).await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), dns.addr(), &[]).await;
    let proxy_addr = proxy.addr().to_string();
    let target = format!("origin.test:{}", origin.addr().port());
    let ca = origin.ca_file();
    let ca = ca.to_str().unwrap();
    let base = [
        "-brief",
        "-proxy",
        &proxy_addr,
        "-connect",
        &target,
        "-CAfile",
        ca,
    ];

    let (ok, text) = s_client(&[&base[..], &["-servername", "origin.test"]].concat()).await;
    assert!(ok, "matching SNI:\n{text}");
    let (ok, text) = s_client(&[&base[..], &["-servername", "evil.test"]].concat()).await;
    assert!(!ok, "mismatching SNI got through:\n{text}");
    // A refusal, not a network fault: OpenSSL names the alert.
    assert!(text.contains("alert access denied"), "{text}");
    proxy
        .wait_audit(
            |r| r["sni"] == "evil.test" && r["reason"] == "sni_mismatch",
            WAIT,
        )
        .await;
    // No SNI names no other destination: documented to pass.
    let (_, text) = s_client(&[&base[..], &["-noservername"]].concat()).await;
    assert!(text.contains("CONNECTION ESTABLISHED"), "no SNI:\n{text}");
}

/// Sends `bytes` through a tunnel to the echo origin, `chunk` bytes per write.
async fn send_hello(
    proxy: &Proxy,
    host: &str,
    echo: &TcpEcho,
    bytes: &[u8],
    chunk: usize,
) -> tokio::net::TcpStream {
    let mut tunnel = open_tunnel(proxy.addr(), &format!("{host}:{}", echo.addr().port())).await;
    for part in bytes.chunks(chunk) {
        send(&mut tunnel, part).await;
    }
    tunnel
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handcrafted_client_hellos_are_decided_right() {
    let dns = dns(&["api.stripe.com"]).await;
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(&loopback_policy(&["api.stripe.com:*"], ""), dns.addr(), &[]).await;

    // A real ClientHello one byte at a time, then split over two records:
    // the origin receives exactly the bytes sent.
    for (name, chunk) in [("openssl_sni", 1), ("two_records", 7), ("curl_like", 4096)] {
        let bytes = match name {
            "curl_like" => records(&hello_message(&["api.stripe.com"], false, 3000), 1000),
            other => seed(other),
        };
        let mut tunnel = send_hello(&proxy, "api.stripe.com", &echo, &bytes, chunk).await;
        let mut back = vec![0u8; bytes.len()];
        tokio::time::timeout(WAIT, tunnel.read_exact(&mut back))
            .await
            .expect(name)
            .expect(name);
        assert_eq!(back, bytes, "{name}: replayed bytes differ");
    }

    let refused: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "ech",
            records(&hello_message(&["api.stripe.com"], true, 0), 16384),
            "ech_refused",
        ),
        (
            "two names",
            records(
                &hello_message(&["api.stripe.com", "evil.test"], false, 0),
                16384,
            ),
            "tls_violation",
        ),
        (
            "oversized",
            records(&hello_message(&["api.stripe.com"], false, 17_000), 16384),
            "tls_violation",
        ),
    ];
    for (what, bytes, reason) in refused {
        let mut tunnel = send_hello(&proxy, "api.stripe.com", &echo, &bytes, 4096).await;
        let seen = expect_closed(&mut tunnel, WAIT).await;
        assert_eq!(
            seen, ACCESS_DENIED_ALERT,
            "{what}: not just the alert came back"
        );
        proxy
            .wait_audit(
                |r| r["reason"] == reason && r["event"] == "connection",
                WAIT,
            )
            .await;
    }

    // Truncated: half a ClientHello, then the client stops sending.
    let hello = seed("openssl_sni");
    let mut tunnel = send_hello(
        &proxy,
        "api.stripe.com",
        &echo,
        &hello[..hello.len() / 2],
        4096,
    )
    .await;
    tunnel.shutdown().await.unwrap();
    // The echo origin would return anything forwarded: only the alert comes back.
    assert_eq!(expect_closed(&mut tunnel, WAIT).await, ACCESS_DENIED_ALERT);

    // Not TLS at all: passes untouched.
    let mut tunnel = open_tunnel(
        proxy.addr(),
        &format!("api.stripe.com:{}", echo.addr().port()),
    )
    .await;
    echo_roundtrip(&mut tunnel, b"SSH-2.0-OpenSSH_9.2\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ech_allow_lets_ech_through_but_still_checks_sni() {
    let dns = dns(&["api.stripe.com"]).await;
    let echo = TcpEcho::start().await;
    let policy = loopback_policy(&["api.stripe.com:*"], "tls:\n  ech: allow\n");
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;
    let ech = records(&hello_message(&["api.stripe.com"], true, 0), 16384);
    let mut tunnel = send_hello(&proxy, "api.stripe.com", &echo, &ech, 4096).await;
    let mut back = vec![0u8; ech.len()];
    tokio::time::timeout(WAIT, tunnel.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    let other = records(&hello_message(&["evil.test"], true, 0), 16384);
    let mut tunnel = send_hello(&proxy, "api.stripe.com", &echo, &other, 4096).await;
    assert_eq!(expect_closed(&mut tunnel, WAIT).await, ACCESS_DENIED_ALERT);
}

/// The transparent listeners, in one test: only one origin can own 127.0.0.1:443.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_listeners_decide_on_sni_and_host() {
    let listener = match TcpListener::bind("127.0.0.1:443").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("SKIPPED transparent TLS: cannot bind 127.0.0.1:443 ({e}); run as root");
            return;
        }
    };
    let origin = TlsOrigin::start_on(listener, &["origin.test", "denied.test"]).await;
    let http_origin = crate::support::origin::HttpOrigin::start().await;
    let dns = dns(&["origin.test", "denied.test"]).await;
    let policy = loopback_policy(&["origin.test:*"], "");
    let args = [
        "--transparent-tls",
        "127.0.0.1:0",
        "--transparent-http",
        "127.0.0.1:0",
    ];
    let proxy = Proxy::start(&policy, dns.addr(), &args).await;
    let tls_addr = proxy
        .listening_addr("transparent_tls")
        .expect("transparent_tls listening");
    let http_addr = proxy
        .listening_addr("transparent_http")
        .expect("transparent_http listening");
    let ca = origin.ca_file();
    let ca = ca.to_str().unwrap();

    // curl believes it talks to origin.test; the SNI decides, port 443 (no redirect).
    let url = format!("https://origin.test:{}/echo", tls_addr.port());
    let resolve = format!("origin.test:{}:127.0.0.1", tls_addr.port());
    let out = curl(&["-sS", "--cacert", ca, "--resolve", &resolve, &url], &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = proxy
        .wait_audit(
            |r| r["listener"] == "transparent_tls" && r["sni"] == "origin.test",
            WAIT,
        )
        .await;
    assert_eq!(
        (rec["port"].as_u64(), rec["upstream_addr"].as_str()),
        (Some(443), Some("127.0.0.1:443"))
    );

    let url = format!("https://denied.test:{}/echo", tls_addr.port());
    let resolve = format!("denied.test:{}:127.0.0.1", tls_addr.port());
    let out = curl(&["-sS", "--cacert", ca, "--resolve", &resolve, &url], &[]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("access denied") || err.contains("alert"),
        "{err}"
    );
    proxy
        .wait_audit(
            |r| r["listener"] == "transparent_tls" && r["reason"] == "not_allowed",
            WAIT,
        )
        .await;

    let connect = format!("127.0.0.1:{}", tls_addr.port());
    let (_, text) = s_client(&["-brief", "-connect", &connect, "-noservername"]).await;
    assert!(!text.contains("CONNECTION ESTABLISHED"), "{text}");
    proxy
        .wait_audit(
            |r| r["listener"] == "transparent_tls" && r["reason"] == "no_sni",
            WAIT,
        )
        .await;

    // Transparent HTTP: the Host header is the destination.
    let url = format!("http://127.0.0.1:{}/echo", http_addr.port());
    let host = format!("Host: origin.test:{}", http_origin.addr().port());
    let out = curl(&["-sS", "-i", "-H", &host, &url], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let out = curl(&["-sS", "-i", "-H", "Host: denied.test", &url], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        text.starts_with("http/1.1 403") && text.contains("x-portcullis-reason: not_allowed"),
        "{text}"
    );
}
