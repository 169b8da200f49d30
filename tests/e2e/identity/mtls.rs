//! `--listen-tls`: an HTTPS proxy that requires a client certificate chained
//! to `--tls-client-ca`, driven by curl (`--proxy https://… --proxy-cert`)
//! and `openssl s_client`; certificates made here with rcgen.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::support::client::{LOCAL, connect, curl, eventually, expect_closed};
use crate::support::dns::TestDns;
use crate::support::origin::HttpOrigin;
use crate::support::proxy::{Proxy, loopback_policy};
use crate::support::tls::TlsOrigin;

const WAIT: Duration = Duration::from_secs(10);
const SPIFFE: &str = "spiffe://acme.internal/ns/payments/sa/api";

/// A directory of PEM files, removed when dropped.
struct Pems(PathBuf);

impl Pems {
    fn new() -> Pems {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("portcullis-mtls-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Pems(dir)
    }

    fn write(&self, name: &str, pem: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Pems {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// How a client certificate is made.
#[derive(Clone, Copy)]
enum Client {
    Good,
    Expired,
    NotYetValid,
    ServerAuthOnly,
}

/// Writes `NAME.pem` and `NAME.key` for a client certificate signed by `issuer`.
fn client_cert(pems: &Pems, name: &str, issuer: &CertifiedIssuer<'static, KeyPair>, kind: Client) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "payments");
    params.subject_alt_names = vec![
        SanType::URI(SPIFFE.try_into().unwrap()),
        SanType::DnsName("payments.internal".try_into().unwrap()),
    ];
    params.use_authority_key_identifier_extension = true;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    match kind {
        Client::Good => {}
        Client::Expired => {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        Client::NotYetValid => {
            params.not_before = rcgen::date_time_ymd(2090, 1, 1);
            params.not_after = rcgen::date_time_ymd(2091, 1, 1);
        }
        Client::ServerAuthOnly => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    pems.write(&format!("{name}.pem"), &cert.pem());
    pems.write(&format!("{name}.key"), &key.serialize_pem());
}

/// Server certificate (ECDSA P-256) for `localhost` signed by `issuer`: `server.pem`, `server.key`.
fn server_cert(pems: &Pems, issuer: &CertifiedIssuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "portcullis");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    pems.write("server.pem", &cert.pem());
    pems.write("server.key", &key.serialize_pem());
}

struct Setup {
    _dns: TestDns,
    proxy: Proxy,
    pems: Pems,
    /// The TLS listener's address.
    tls: std::net::SocketAddr,
}

/// A CA for both sides, the client certificates, and a proxy whose `payments`
/// client is the SPIFFE ID.
async fn setup(extra_args: &[&str]) -> Setup {
    let pems = Pems::new();
    let ca = make_ca("portcullis test client CA");
    pems.write("ca.pem", &ca.pem());
    // What clients trust the proxy's certificate by: the same CA, in a file the tests never replace.
    pems.write("server-ca.pem", &ca.pem());
    server_cert(&pems, &ca);
    client_cert(&pems, "good", &ca, Client::Good);
    client_cert(&pems, "expired", &ca, Client::Expired);
    client_cert(&pems, "future", &ca, Client::NotYetValid);
    client_cert(&pems, "server-only", &ca, Client::ServerAuthOnly);
    let other = make_ca("some other CA");
    client_cert(&pems, "wrong-ca", &other, Client::Good);

    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let clients = format!("clients:\n  - name: payments\n    certificates: [\"{SPIFFE}\"]\n");
    let policy = loopback_policy(&["origin.test:*"], &clients);
    let (cert, key, ca_path) = (
        pems.path("server.pem"),
        pems.path("server.key"),
        pems.path("ca.pem"),
    );
    let mut args = vec![
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca_path,
    ];
    args.extend_from_slice(extra_args);
    let proxy = Proxy::start(&policy, dns.addr(), &args).await;
    let tls = proxy
        .listening_addr("explicit_tls")
        .expect("the TLS listener is announced");
    Setup {
        _dns: dns,
        proxy,
        pems,
        tls,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Setup {
    /// curl through the TLS listener with the client certificate `who` (none: `None`).
    async fn curl(&self, who: Option<&str>, extra: &[&str], url: &str) -> std::process::Output {
        let proxy = format!("https://localhost:{}", self.tls.port());
        let ca = self.pems.path("server-ca.pem");
        let (cert, key) = who.map_or((String::new(), String::new()), |w| {
            (
                self.pems.path(&format!("{w}.pem")),
                self.pems.path(&format!("{w}.key")),
            )
        });
        let mut args = vec!["-sS", "--proxy", &proxy, "--proxy-cacert", &ca];
        if who.is_some() {
            args.extend(["--proxy-cert", &cert, "--proxy-key", &key]);
        }
        args.extend_from_slice(extra);
        args.push(url);
        curl(&args, &[]).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_client_certificate_is_the_client_its_spiffe_id_names() {
    let s = setup(&[]).await;
    let origin = HttpOrigin::start().await;
    let url = format!("http://origin.test:{}/echo", origin.addr().port());
    let out = s.curl(Some("good"), &[], &url).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        s.proxy.stderr_text()
    );
    let echo: Value = serde_json::from_slice(&out.stdout).expect("echo JSON");
    assert_eq!(echo["path"], "/echo");
    let record = s
        .proxy
        .wait_audit(|r| r["event"] == "request" && r["status"] == 200, WAIT)
        .await;
    assert_eq!(record["listener"], "explicit_tls", "{record}");
    assert_eq!(record["client"], "payments", "{record}");
    assert_eq!(record["identity"], SPIFFE, "{record}");

    // CONNECT inside the TLS connection, to a TLS origin (TLS in TLS), both TLS versions.
    let tls_origin = TlsOrigin::start(&["origin.test"]).await;
    let origin_ca = tls_origin.ca_file();
    let url = format!("https://origin.test:{}/echo", tls_origin.addr().port());
    let out = s
        .curl(
            Some("good"),
            &["--cacert", origin_ca.to_str().unwrap()],
            &url,
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(tls_origin.requests(), 1);
    let record = s
        .proxy
        .wait_audit(
            |r| {
                r["event"] == "connection"
                    && r["end"].is_string()
                    && r["listener"] == "explicit_tls"
            },
            WAIT,
        )
        .await;
    assert_eq!(record["identity"], SPIFFE, "{record}");
    assert!(record["bytes_ingress"].as_u64().unwrap() > 0, "{record}");
    s.proxy
        .wait_metric(
            "portcullis_client_auth_total",
            &[("method", "certificate"), ("result", "ok")],
            |v| v == 2.0,
            WAIT,
        )
        .await;
}

/// Expired, not yet valid, from another CA, for server authentication only,
/// or no certificate at all: the handshake fails, nothing is forwarded, each
/// is counted; the proxy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_fail_the_handshake_and_are_counted() {
    let s = setup(&[]).await;
    let origin = HttpOrigin::start().await;
    let url = format!("http://origin.test:{}/echo", origin.addr().port());
    for who in [
        Some("expired"),
        Some("future"),
        Some("wrong-ca"),
        Some("server-only"),
        None,
    ] {
        let out = s.curl(who, &[], &url).await;
        assert!(
            !out.status.success(),
            "{who:?} got through: {}",
            text(&out.stdout)
        );
    }
    assert_eq!(origin.requests(), 0);
    s.proxy
        .wait_metric(
            "portcullis_client_auth_total",
            &[("method", "certificate"), ("result", "failed")],
            |v| v == 5.0,
            WAIT,
        )
        .await;
    let out = s.curl(Some("good"), &[], &url).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Nothing secret in the log: no key material.
    assert!(!s.proxy.stderr_text().contains("PRIVATE KEY"));
}

/// A client that connects and never finishes its handshake is closed at
/// the header timeout; another client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_at_the_header_timeout() {
    let s = setup(&["--header-timeout", "2s"]).await;
    let origin = HttpOrigin::start().await;
    let url = format!("http://origin.test:{}/", origin.addr().port());
    let mut stalled = connect(s.tls).await;
    // The start of a TLS record, and then nothing.
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let out = s.curl(Some("good"), &[], &url).await;
    assert_eq!(text(&out.stdout), "ok", "{}", text(&out.stderr));
    expect_closed(&mut stalled, Duration::from_secs(10)).await;
    s.proxy
        .wait_metric(
            "portcullis_client_auth_total",
            &[("method", "certificate"), ("result", "failed")],
            |v| v == 1.0,
            WAIT,
        )
        .await;
}

/// `openssl s_client` with the client certificate, over TLS 1.2 and over
/// TLS 1.3, speaks CONNECT and a request through the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_opens_a_tunnel() {
    let s = setup(&[]).await;
    let origin = HttpOrigin::start().await;
    for version in ["-tls1_2", "-tls1_3"] {
        s_client_tunnel(&s, &origin, version).await;
    }
    // Each tunnel's record (and its count) is written when it ends.
    s.proxy
        .wait_metric(
            "portcullis_client_auth_total",
            &[("method", "certificate"), ("result", "ok")],
            |v| v == 2.0,
            WAIT,
        )
        .await;
}

/// One CONNECT and `GET /` through `openssl s_client VERSION`.
async fn s_client_tunnel(s: &Setup, origin: &HttpOrigin, version: &str) {
    let connect_to = format!("127.0.0.1:{}", s.tls.port());
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &connect_to,
            "-servername",
            "localhost",
            version,
        ])
        .args([
            "-CAfile",
            &s.pems.path("server-ca.pem"),
            "-verify_return_error",
        ])
        .args([
            "-cert",
            &s.pems.path("good.pem"),
            "-key",
            &s.pems.path("good.key"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run openssl");
    let mut stdin = child.stdin.take().unwrap();
    let target = format!("origin.test:{}", origin.addr().port());
    let req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nGET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    );
    stdin.write_all(req.as_bytes()).await.unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !text(&seen).ends_with("ok") {
            let n = stdout.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("s_client answered");
    let seen = text(&seen);
    assert!(
        seen.starts_with("HTTP/1.1 200 Connection Established"),
        "{seen}"
    );
    assert!(seen.ends_with("ok"), "{seen}");
    drop(stdin);
    let record = s
        .proxy
        .wait_audit(|r| r["event"] == "connection" && r["end"].is_string(), WAIT)
        .await;
    assert_eq!(record["identity"], SPIFFE, "{record}");
}

/// Rotation without a restart: a client CA file replaced (rename, as
/// Kubernetes and editors do) is taken on a later handshake; a broken
/// replacement keeps the last good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_client_ca_is_taken_without_a_restart_and_a_broken_one_is_not() {
    let s = setup(&[]).await;
    let origin = HttpOrigin::start().await;
    let url = format!("http://origin.test:{}/", origin.addr().port());
    let next = make_ca("next client CA");
    client_cert(&s.pems, "next", &next, Client::Good);
    let out = s.curl(Some("next"), &[], &url).await;
    assert!(
        !out.status.success(),
        "a certificate of a CA not yet trusted got through"
    );

    let replace = |pem: &str| {
        let tmp = s.pems.write("ca.pem.new", pem);
        std::fs::rename(tmp, s.pems.path("ca.pem")).unwrap();
    };
    replace(&next.pem());
    eventually(WAIT, "the new CA is taken", || async {
        s.curl(Some("next"), &[], &url).await.stdout == b"ok"
    })
    .await;
    let out = s.curl(Some("good"), &[], &url).await;
    assert!(!out.status.success(), "the old CA is still trusted");

    replace("not a certificate\n");
    eventually(WAIT, "the broken CA file is reported", || async {
        let _ = s.curl(Some("next"), &[], &url).await;
        s.proxy.stderr_text().contains("do not load")
    })
    .await;
    let out = s.curl(Some("next"), &[], &url).await;
    assert_eq!(
        text(&out.stdout),
        "ok",
        "the last good CA stays: {}",
        text(&out.stderr)
    );
}

/// Python's `ssl` module as an HTTPS-proxy client (its `urllib` cannot
/// speak TLS to a proxy): a client certificate, then an absolute-form GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ssl_with_a_client_certificate_fetches_through_the_tls_listener() {
    let s = setup(&[]).await;
    let origin = HttpOrigin::start().await;
    let script = "import socket, ssl, sys\n\
        ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])\n\
        raw = socket.create_connection(('127.0.0.1', int(sys.argv[4])), timeout=20)\n\
        conn = ctx.wrap_socket(raw, server_hostname='localhost')\n\
        t = sys.argv[5]\n\
        conn.sendall(('GET http://%s/ HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n' % (t, t)).encode())\n\
        data = b''\n\
        while True:\n\
        \x20   chunk = conn.recv(4096)\n\
        \x20   if not chunk: break\n\
        \x20   data += chunk\n\
        print(data.split(b'\\r\\n')[0].decode(), data.endswith(b'ok'))\n";
    let target = format!("origin.test:{}", origin.addr().port());
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &s.pems.path("server-ca.pem")])
        .args([&s.pems.path("good.pem"), &s.pems.path("good.key")])
        .args([&s.tls.port().to_string(), &target])
        .output()
        .await
        .expect("run python3");
    assert_eq!(
        text(&out.stdout).trim(),
        "HTTP/1.1 200 OK True",
        "{}",
        text(&out.stderr)
    );
    let record = s.proxy.wait_audit(|r| r["status"] == 200, WAIT).await;
    assert_eq!(record["identity"], SPIFFE, "{record}");
}

/// Beyond `--max-connections`, a TLS client is closed without a plain-text
/// answer it could not read (the overload is audited and counted as usual).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_tls_listener_closes_without_writing_plain_text() {
    let s = setup(&["--max-connections", "1"]).await;
    let mut held = connect(s.tls).await;
    held.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut refused = connect(s.tls).await;
    let answer = expect_closed(&mut refused, WAIT).await;
    assert!(
        answer.is_empty(),
        "plain text sent to a TLS client: {}",
        text(&answer)
    );
    let record = s
        .proxy
        .wait_audit(|r| r["reason"] == "overloaded", WAIT)
        .await;
    assert_eq!(record["listener"], "explicit_tls", "{record}");
}

/// Session resumption (Python's `ssl`, i.e. OpenSSL, reusing its session):
/// a resumed connection is the same client as the full handshake that made
/// the ticket; once a new client CA is in force, a ticket issued under the
/// old one resumes nothing and the old certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_keeps_its_identity_until_the_client_ca_changes() {
    let s = setup(&[]).await;
    let origin = HttpOrigin::start().await;
    let script = "import socket, ssl, sys, time\n\
        ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])\n\
        port, t = int(sys.argv[4]), sys.argv[5]\n\
        def get(session):\n\
        \x20   raw = socket.create_connection(('127.0.0.1', port), timeout=20)\n\
        \x20   try:\n\
        \x20       conn = ctx.wrap_socket(raw, server_hostname='localhost', session=session)\n\
        \x20       conn.sendall(('GET http://%s/ HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n' % (t, t)).encode())\n\
        \x20       data = b''\n\
        \x20       while True:\n\
        \x20           chunk = conn.recv(4096)\n\
        \x20           if not chunk: break\n\
        \x20           data += chunk\n\
        \x20       ok = data.startswith(b'HTTP/1.1 200')\n\
        \x20       return (conn.session if ok else session), conn.session_reused, ok\n\
        \x20   except (ssl.SSLError, OSError):\n\
        \x20       return session, False, False\n\
        session, reused, ok = get(None)\n\
        print('first', reused, ok, flush=True)\n\
        session, reused, ok = get(session)\n\
        print('second', reused, ok, flush=True)\n\
        sys.stdin.readline()\n\
        deadline = time.monotonic() + 10\n\
        while ok and time.monotonic() < deadline:\n\
        \x20   session, reused, ok = get(session)\n\
        \x20   time.sleep(0.05)\n\
        session, reused, ok = get(session)\n\
        print('after', reused, ok, flush=True)\n";
    let target = format!("origin.test:{}", origin.addr().port());
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script, &s.pems.path("server-ca.pem")])
        .args([&s.pems.path("good.pem"), &s.pems.path("good.key")])
        .args([&s.tls.port().to_string(), &target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python3");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("python3 answers")
            .unwrap()
            .unwrap_or_default()
    };
    assert_eq!(next_line().await, "first False True");
    assert_eq!(
        next_line().await,
        "second True True",
        "the second connection did not resume"
    );
    eventually(WAIT, "both connections audited", || async {
        let records: Vec<Value> = s.proxy.audit_records();
        let ok: Vec<&Value> = records.iter().filter(|r| r["status"] == 200).collect();
        ok.len() == 2 && ok.iter().all(|r| r["identity"] == SPIFFE)
    })
    .await;

    let next = make_ca("next client CA");
    let tmp = s.pems.write("ca.pem.new", &next.pem());
    std::fs::rename(tmp, s.pems.path("ca.pem")).unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    assert_eq!(
        next_line().await,
        "after False False",
        "a ticket from before the new CA still got through"
    );
}
