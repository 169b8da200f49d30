//! The TLS bypasses an outside review found (docs/security.md), against the real
//! binary: a second ClientHello after a HelloRetryRequest from a real
//! OpenSSL server, records sent before the ClientHello, malformed
//! server_name extensions and draft ECH codepoints, on CONNECT tunnels and
//! on the transparent TLS listener.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis::tls_peek::synth::{
    change_cipher_spec, hello_with_extensions, record, records, sni_extension, tls13_hello,
    warning_alert,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::support::client::{expect_closed, open_tunnel, send};
use crate::support::dns::TestDns;
use crate::support::proxy::{Proxy, loopback_policy};
use crate::support::{AbortOnDrop, TempPolicy};

const WAIT: Duration = Duration::from_secs(10);
/// A fatal `access_denied` alert record.
const ACCESS_DENIED_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49];

/// `openssl s_server` on `ip` (one connection at a time: each test
/// connection is dropped before the next), serving `origin.test` by default and
/// `other.test` (its own certificate) when the SNI names it, X25519 only:
/// a ClientHello without an X25519 key share gets a HelloRetryRequest.
struct OpensslServer {
    addr: SocketAddr,
    _child: Child,
    _files: Vec<TempPolicy>,
}

impl OpensslServer {
    async fn start(ip: Ipv4Addr, port: u16) -> OpensslServer {
        let cert = |name: &str| {
            let (cert, key) = (TempPolicy::new(""), TempPolicy::new(""));
            let made = std::process::Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-days", "1", "-subj", &format!("/CN={name}")])
                .args(["-keyout", key.path_str(), "-out", cert.path_str()])
                .stderr(Stdio::null())
                .status()
                .expect("run openssl req");
            assert!(made.success(), "openssl req for {name}");
            (cert, key)
        };
        let (cert1, key1) = cert("origin.test");
        let (cert2, key2) = cert("other.test");
        let accept = format!("{ip}:{port}");
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", &accept, "-groups", "X25519"])
            .args(["-cert", cert1.path_str(), "-key", key1.path_str()])
            .args(["-servername", "other.test"])
            .args(["-cert2", cert2.path_str(), "-key2", key2.path_str()])
            // s_server quits when its stdin ends: keep it open.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run openssl s_server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // "ACCEPT ADDR" for port 0; a bare "ACCEPT" for a given port.
                match line.strip_prefix("ACCEPT") {
                    Some("") => return SocketAddr::from((ip, port)),
                    Some(addr) => return addr.trim().parse::<SocketAddr>().unwrap(),
                    None => {}
                }
            }
            panic!("s_server exited before it listened");
        })
        .await
        .expect("s_server listening");
        // Keep reading what it prints so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        OpensslServer {
            addr,
            _child: child,
            _files: vec![cert1, key1, cert2, key2],
        }
    }
}

/// Reads one TLS record; `None` at EOF.
async fn read_record(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut header = [0u8; 5];
    let read = tokio::time::timeout(WAIT, stream.read_exact(&mut header)).await;
    read.expect("a record within the wait").ok()?;
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some([&header[..], &payload].concat())
}

/// Waits until `n` audit records match `pred`; returns them in order.
async fn wait_records(
    proxy: &Proxy,
    pred: impl Fn(&serde_json::Value) -> bool,
    n: usize,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got: Vec<_> = proxy
            .audit_records()
            .into_iter()
            .filter(|r| pred(r))
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} audit records after {WAIT:?}: {got:#?}",
            got.len()
        );
        // Polled: the audit lines arrive on the proxy's stdout as they are written.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// HelloRetryRequest's `random` (RFC 8446 4.1.3).
const HRR_RANDOM_START: [u8; 4] = [0xcf, 0x21, 0xad, 0x74];

/// Is `rec` a handshake record with a ServerHello; `Some(true)` for a HelloRetryRequest.
fn server_hello(rec: &[u8]) -> Option<bool> {
    (rec.len() > 15 && rec[0] == 0x16 && rec[5] == 2).then(|| rec[11..15] == HRR_RANDOM_START)
}

/// Sends a ClientHello for origin.test that forces a HelloRetryRequest,
/// reads it, then sends `second_sni`'s ClientHello; returns what came back.
async fn retry_then(stream: &mut TcpStream, second_sni: &str) -> Vec<u8> {
    send(
        stream,
        &records(&tls13_hello(Some("origin.test"), None), 16384),
    )
    .await;
    let retry = read_record(stream).await.expect("the server answers");
    assert_eq!(
        server_hello(&retry),
        Some(true),
        "not a HelloRetryRequest: {retry:02x?}"
    );
    let second = records(&tls13_hello(Some(second_sni), Some([0x42; 32])), 16384);
    send(stream, &[change_cipher_spec(), second].concat()).await;
    expect_closed_or_hello(stream).await
}

/// What comes back after the second hello: a ServerHello (the server went
/// on) or everything up to the close.
async fn expect_closed_or_hello(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    while let Some(rec) = read_record(stream).await {
        if server_hello(&rec) == Some(false) {
            return rec;
        }
        if rec[0] == 0x14 {
            continue; // the server's ChangeCipherSpec after its HelloRetryRequest
        }
        seen.extend_from_slice(&rec);
        if rec[0] == 0x15 {
            break;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_hello_after_a_retry_must_name_the_same_server() {
    let server = OpensslServer::start(Ipv4Addr::LOCALHOST, 0).await;
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[Ipv4Addr::LOCALHOST], 60);
    let policy = loopback_policy(&["origin.test:*"], "");
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;
    let target = format!("origin.test:{}", server.addr.port());

    // Without the proxy, the server switches to other.test's context.
    let mut direct = TcpStream::connect(server.addr).await.unwrap();
    let back = retry_then(&mut direct, "other.test").await;
    assert_eq!(server_hello(&back), Some(false), "{back:02x?}");
    drop(direct);

    // Control: the same name twice completes (a real ServerHello comes back).
    let mut tunnel = open_tunnel(proxy.addr(), &target).await;
    let back = retry_then(&mut tunnel, "origin.test").await;
    assert_eq!(server_hello(&back), Some(false), "{back:02x?}");
    drop(tunnel);

    // The attack: the server would switch to other.test's context.
    let mut tunnel = open_tunnel(proxy.addr(), &target).await;
    let back = retry_then(&mut tunnel, "other.test").await;
    assert_eq!(
        back, ACCESS_DENIED_ALERT,
        "the server answered the second hello"
    );
    let rec = proxy
        .wait_audit(|r| r["reason"] == "sni_mismatch", WAIT)
        .await;
    assert_eq!(
        (rec["decision"].as_str(), rec["sni"].as_str()),
        (Some("deny"), Some("other.test"))
    );
}

/// An origin that records every byte it receives and answers nothing.
struct Recorder {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<u8>>>,
    _task: AbortOnDrop,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Recorder {
            addr,
            got,
            _task: AbortOnDrop(task),
        }
    }

    fn received(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

/// Streams that must be refused as `tls_violation` (or `ech_refused`)
/// before any byte of them reaches the origin.
fn refused_streams() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let hello = records(
        &hello_with_extensions(&sni_extension(&["origin.test"])),
        16384,
    );
    let mut odd_alert = warning_alert();
    odd_alert[2] = 0x07;
    let mut bad_list = sni_extension(&["origin.test"]);
    bad_list[5] += 3; // the name list claims more than the extension holds
    let mut draft_ech = sni_extension(&["origin.test"]);
    draft_ech.extend_from_slice(&[0xfe, 0x0a, 0, 1, 0]);
    vec![
        (
            "alert first",
            [warning_alert(), hello.clone()].concat(),
            "tls_violation",
        ),
        (
            "alert, odd version",
            [odd_alert, hello.clone()].concat(),
            "tls_violation",
        ),
        (
            "ChangeCipherSpec first",
            [change_cipher_spec(), hello.clone()].concat(),
            "tls_violation",
        ),
        (
            "data first",
            [record(23, b"x"), hello].concat(),
            "tls_violation",
        ),
        (
            "server_name lengths",
            records(&hello_with_extensions(&bad_list), 16384),
            "tls_violation",
        ),
        (
            "IP as server name",
            records(
                &hello_with_extensions(&sni_extension(&["127.0.0.1"])),
                16384,
            ),
            "tls_violation",
        ),
        (
            "draft ECH 0xfe0a",
            records(&hello_with_extensions(&draft_ech), 16384),
            "ech_refused",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_before_the_hello_and_malformed_hellos_forward_nothing() {
    let origin = Recorder::start().await;
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[Ipv4Addr::LOCALHOST], 60);
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), dns.addr(), &[]).await;
    let target = format!("origin.test:{}", origin.addr.port());
    for (n, (what, bytes, reason)) in refused_streams().into_iter().enumerate() {
        let mut tunnel = open_tunnel(proxy.addr(), &target).await;
        send(&mut tunnel, &bytes).await;
        let back = expect_closed(&mut tunnel, WAIT).await;
        assert_eq!(back, ACCESS_DENIED_ALERT, "{what}");
        let records = wait_records(&proxy, |r| r["event"] == "connection", n + 1).await;
        assert_eq!(records[n]["reason"], reason, "{what}");
        assert_eq!(origin.received(), 0, "{what}: bytes reached the origin");
    }
}

/// The transparent listener dials the SNI's address at port 443: the
/// server listens on 127.0.0.2:443 so that this test shares no port with
/// the other transparent tests (all of loopback is 127.0.0.0/8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transparent_listener_checks_every_hello_and_refuses_early_records() {
    let ip = Ipv4Addr::new(127, 0, 0, 2);
    if let Err(e) = TcpListener::bind((ip, 443)).await {
        eprintln!("SKIPPED transparent TLS bypasses: cannot bind {ip}:443 ({e}); run as root");
        return;
    }
    let server = OpensslServer::start(ip, 443).await;
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[ip], 60);
    dns.set_a("other.test", &[ip], 60);
    let policy = loopback_policy(&["origin.test:443"], "");
    let proxy = Proxy::start(&policy, dns.addr(), &["--transparent-tls", "127.0.0.1:0"]).await;
    let listener = proxy.listening_addr("transparent_tls").unwrap();
    assert_eq!(server.addr.port(), 443);

    let mut conn = TcpStream::connect(listener).await.unwrap();
    let back = retry_then(&mut conn, "origin.test").await;
    assert_eq!(server_hello(&back), Some(false), "{back:02x?}");
    drop(conn);

    let mut conn = TcpStream::connect(listener).await.unwrap();
    assert_eq!(
        retry_then(&mut conn, "other.test").await,
        ACCESS_DENIED_ALERT
    );
    proxy
        .wait_audit(
            |r| r["listener"] == "transparent_tls" && r["reason"] == "sni_mismatch",
            WAIT,
        )
        .await;

    for (what, bytes, reason) in refused_streams() {
        let mut conn = TcpStream::connect(listener).await.unwrap();
        conn.write_all(&bytes).await.unwrap();
        assert_eq!(
            expect_closed(&mut conn, WAIT).await,
            ACCESS_DENIED_ALERT,
            "{what} ({reason})"
        );
    }
    let refused =
        |r: &serde_json::Value| r["listener"] == "transparent_tls" && r["reason"] != "allowed";
    let records = wait_records(&proxy, refused, 1 + refused_streams().len()).await;
    for (rec, (what, _, reason)) in records[1..].iter().zip(refused_streams()) {
        assert_eq!(rec["reason"], reason, "{what}");
    }
}

/// A ClientHello that starts and stalls on the transparent listener is
/// refused with an alert at `--header-timeout`, as inside a CONNECT tunnel.
/// The client is slow to start (0.6 s, the scenario, not a wait for the
/// proxy), so the connection's header timeout ends before the timeout that
/// began with the hello's first byte: that path used to close silently as
/// `bad_request`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_hello_on_the_transparent_listener_is_a_violation() {
    let dns = TestDns::start().await;
    let args = ["--transparent-tls", "127.0.0.1:0", "--header-timeout", "1s"];
    let proxy = Proxy::start(
        &loopback_policy(&["origin.test:443"], ""),
        dns.addr(),
        &args,
    )
    .await;
    let listener = proxy.listening_addr("transparent_tls").unwrap();
    let hello = records(&tls13_hello(Some("origin.test"), None), 16384);
    let mut conn = TcpStream::connect(listener).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    conn.write_all(&hello[..hello.len() / 2]).await.unwrap();
    assert_eq!(expect_closed(&mut conn, WAIT).await, ACCESS_DENIED_ALERT);
    proxy
        .wait_audit(
            |r| r["listener"] == "transparent_tls" && r["reason"] == "tls_violation",
            WAIT,
        )
        .await;
}
