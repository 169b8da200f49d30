//! Proxy tokens with real clients (curl `--proxy http://user:TOKEN@…`,
//! `HTTPS_PROXY`, Python `urllib`): `407` with a challenge when no client
//! matches, the header never forwarded, logged or audited.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::support::client::{LOCAL, connect, curl, read_body, read_head};
use crate::support::dns::TestDns;
use crate::support::metrics::metric_sum;
use crate::support::origin::HttpOrigin;
use crate::support::proxy::{Proxy, loopback_policy};
use crate::support::tls::TlsOrigin;

const WAIT: Duration = Duration::from_secs(10);

/// The token `payments` presents; `OTHER` is listed by a client of another source.
const TOKEN: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const OTHER: &str = "other-token-of-a-client-elsewhere";

fn digest(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// `payments` needs its token from loopback; `elsewhere` has a token but a source no test uses.
async fn setup() -> (TestDns, Proxy) {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let clients = format!(
        "clients:\n  - name: payments\n    sources: [127.0.0.0/8]\n    tokens: [\"{}\"]\n  - name: elsewhere\n    sources: [10.0.0.0/8]\n    tokens: [\"{}\"]\n",
        digest(TOKEN),
        digest(OTHER)
    );
    let policy = loopback_policy(&["origin.test:*"], &clients);
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;
    (dns, proxy)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Neither the diagnostic log nor the audit log ever holds the token.
fn assert_token_never_logged(proxy: &Proxy) {
    let audit: Vec<String> = proxy.audit_records().iter().map(Value::to_string).collect();
    for (what, log) in [("stderr", proxy.stderr_text()), ("audit", audit.join("\n"))] {
        assert!(!log.contains(TOKEN), "{what} holds the token:\n{log}");
        assert!(
            !log.to_ascii_lowercase()
                .contains("proxy-authorization: basic"),
            "{what}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_the_token_in_the_proxy_url_is_the_client_and_the_header_stays_here() {
    let (_dns, proxy) = setup().await;
    let origin = HttpOrigin::start().await;
    let url = format!("http://origin.test:{}/echo", origin.addr().port());
    let proxy_url = format!("http://payments:{TOKEN}@{}", proxy.addr());

    let out = curl(&["-sS", "-x", &proxy_url, &url], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let echo: Value = serde_json::from_slice(&out.stdout).expect("echo JSON");
    let forwarded = echo["headers"].to_string().to_ascii_lowercase();
    assert!(
        !forwarded.contains("proxy-authorization"),
        "forwarded: {forwarded}"
    );
    assert!(!forwarded.contains(TOKEN), "forwarded: {forwarded}");

    let record = proxy
        .wait_audit(|r| r["event"] == "request" && r["status"] == 200, WAIT)
        .await;
    assert_eq!(record["client"], "payments", "{record}");
    assert_eq!(record["identity"], "token:payments", "{record}");
    proxy
        .wait_metric(
            "portcullis_client_auth_total",
            &[("method", "token"), ("result", "ok")],
            |v| v == 1.0,
            WAIT,
        )
        .await;
    assert_token_never_logged(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_with_the_token_opens_a_connect_tunnel() {
    let (_dns, proxy) = setup().await;
    let origin = TlsOrigin::start(&["origin.test"]).await;
    let ca = origin.ca_file();
    let url = format!("https://origin.test:{}/echo", origin.addr().port());
    let proxy_url = format!("http://any-user:{TOKEN}@{}", proxy.addr());

    let out = curl(
        &["-sS", "--cacert", ca.to_str().unwrap(), &url],
        &[("HTTPS_PROXY", &proxy_url)],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(origin.requests(), 1);
    let record = proxy
        .wait_audit(|r| r["event"] == "connection" && r["end"].is_string(), WAIT)
        .await;
    assert_eq!(
        (&record["client"], &record["identity"]),
        (&Value::from("payments"), &Value::from("token:any-user")),
        "{record}"
    );
    assert_token_never_logged(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_urllib_through_a_proxy_handler_sends_the_token() {
    let (_dns, proxy) = setup().await;
    let origin = HttpOrigin::start().await;
    let url = format!("http://origin.test:{}/echo", origin.addr().port());
    let proxy_url = format!("http://payments:{TOKEN}@{}", proxy.addr());
    let script = "import sys, urllib.request\n\
        h = urllib.request.ProxyHandler({'http': sys.argv[1]})\n\
        r = urllib.request.build_opener(h).open(sys.argv[2], timeout=20)\n\
        print(r.status)\n";
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &proxy_url, &url])
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .output()
        .await
        .expect("run python3");
    assert_eq!(text(&out.stdout).trim(), "200", "{}", text(&out.stderr));
    let record = proxy.wait_audit(|r| r["status"] == 200, WAIT).await;
    assert_eq!(record["identity"], "token:payments", "{record}");
}

/// Without a token, with a wrong one, or with the token of a client whose
/// source does not match (AND across selector kinds): `407`, a challenge,
/// nothing forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_matching_token_are_asked_to_authenticate() {
    let (_dns, proxy) = setup().await;
    let origin = HttpOrigin::start().await;
    let url = format!("http://origin.test:{}/echo", origin.addr().port());
    let rows = [
        ("no token", format!("http://{}", proxy.addr())),
        (
            "a wrong token",
            format!("http://payments:guess@{}", proxy.addr()),
        ),
        (
            "the token of a client whose source does not match",
            format!("http://elsewhere:{OTHER}@{}", proxy.addr()),
        ),
    ];
    for (what, proxy_url) in &rows {
        let out = curl(&["-sS", "-i", "-x", proxy_url, &url], &[]).await;
        let response = text(&out.stdout).to_ascii_lowercase();
        assert!(response.starts_with("http/1.1 407"), "{what}: {response}");
        assert!(
            response.contains("proxy-authenticate: basic realm=\"portcullis\""),
            "{what}: {response}"
        );
        assert!(
            response.contains("x-portcullis-reason: proxy_auth_required"),
            "{what}: {response}"
        );
    }
    // CONNECT too (curl reports the 407 of the CONNECT it sent).
    let out = curl(
        &["-sS", "-v", "-x", &rows[0].1, "https://origin.test:443/"],
        &[],
    )
    .await;
    assert!(text(&out.stderr).contains("407"), "{}", text(&out.stderr));
    assert_eq!(origin.requests(), 0, "nothing reached the origin");
    let text = proxy
        .wait_metric(
            "portcullis_requests_total",
            &[("reason", "proxy_auth_required")],
            |v| v == 4.0,
            WAIT,
        )
        .await;
    // The wrong token and the other client's token failed; no token is not counted.
    assert_eq!(
        metric_sum(
            &text,
            "portcullis_client_auth_total",
            &[("method", "token"), ("result", "failed")]
        ),
        Some(2.0),
        "{text}"
    );
    let record = proxy
        .wait_audit(
            |r| {
                r["reason"] == "proxy_auth_required"
                    && r["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("elsewhere"))
            },
            WAIT,
        )
        .await;
    assert_eq!(
        (&record["client"], &record["identity"]),
        (&Value::Null, &Value::Null),
        "{record}"
    );
}

/// Malformed `Proxy-Authorization` headers: `407`, counted as failed
/// tokens, never quoted back; the proxy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_proxy_authorization_is_407_and_counted() {
    let (_dns, proxy) = setup().await;
    let origin = HttpOrigin::start().await;
    let target = format!("origin.test:{}", origin.addr().port());
    let huge = format!("Basic {}", "QUFB".repeat(1100));
    let values = [
        "Basic !!!not-base64!!!".to_string(),
        huge,
        "Negotiate abc".to_string(),
        "Basic cGF5bWVudHM=".to_string(), // "payments": no colon, no password
    ];
    for value in &values {
        let mut stream = connect(proxy.addr()).await;
        let req = format!(
            "GET http://{target}/echo HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {value}\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, 407, "{value:.40}: {}", head.raw);
        assert_eq!(
            head.header("proxy-authenticate"),
            Some("Basic realm=\"portcullis\"")
        );
        let body = text(&read_body(&mut stream, &head).await);
        assert!(!body.contains("QUFB") && !body.contains("abc"), "{body}");
    }
    let text = proxy
        .wait_metric(
            "portcullis_client_auth_total",
            &[("method", "token"), ("result", "failed")],
            |v| v == 4.0,
            WAIT,
        )
        .await;
    assert_eq!(
        metric_sum(&text, "portcullis_client_auth_total", &[("result", "ok")]),
        Some(0.0)
    );
    assert_eq!(origin.requests(), 0);
    // Still serving: the real token goes through.
    let out = curl(
        &[
            "-sS",
            "-x",
            &format!("http://p:{TOKEN}@{}", proxy.addr()),
            &format!("http://{target}/"),
        ],
        &[],
    )
    .await;
    assert_eq!(text_of(&out.stdout), "ok");
}

fn text_of(bytes: &[u8]) -> String {
    text(bytes)
}

/// `portcullis token`: a new token and the digest a policy lists for it.
#[test]
fn the_token_command_prints_a_token_and_its_digest() {
    let out = crate::support::portcullis(&["token"]);
    assert!(out.status.success());
    let stdout = crate::support::stdout(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[1], digest(lines[0]));
    assert_ne!(
        crate::support::stdout(&crate::support::portcullis(&["token"])),
        stdout
    );
}
