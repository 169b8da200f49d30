//! Real clients as users run them: curl (`-x`, `--proxytunnel`, `HTTPS_PROXY`) and reqwest with a proxy.

use serde_json::Value;

use crate::support::client::{LOCAL, curl};
use crate::support::dns::TestDns;
use crate::support::origin::HttpOrigin;
use crate::support::proxy::{Proxy, loopback_policy};
use crate::support::tls::TlsOrigin;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn echo_json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "curl failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not echo JSON ({e}): {}", text(&out.stdout)))
}

/// DNS with `origin.test` and `denied.test` on loopback, and a proxy allowing only `origin.test`.
async fn setup() -> (TestDns, Proxy) {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    dns.set_a("denied.test", &[LOCAL], 60);
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), dns.addr(), &[]).await;
    (dns, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_an_allowed_https_origin_through_connect() {
    let (_dns, proxy) = setup().await;
    let origin = TlsOrigin::start(&["origin.test"]).await;
    let ca = origin.ca_file();
    let url = format!("https://origin.test:{}/echo", origin.addr().port());
    let proxy_url = format!("http://{}", proxy.addr());

    let out = curl(
        &[
            "-sS",
            "-x",
            &proxy_url,
            "--cacert",
            ca.to_str().unwrap(),
            &url,
        ],
        &[],
    )
    .await;
    assert_eq!(echo_json(&out)["method"], "GET");
    assert_eq!(origin.last_sni().as_deref(), Some("origin.test"));

    // The way an app is usually pointed at the proxy: the environment.
    let out = curl(
        &["-sS", "--cacert", ca.to_str().unwrap(), &url],
        &[("HTTPS_PROXY", &proxy_url)],
    )
    .await;
    assert_eq!(echo_json(&out)["method"], "GET");
    assert_eq!(origin.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_an_allowed_http_origin_in_both_forms() {
    let (_dns, proxy) = setup().await;
    let origin = HttpOrigin::start().await;
    let url = format!("http://origin.test:{}/echo", origin.addr().port());
    let proxy_url = format!("http://{}", proxy.addr());

    // Absolute-form through `-x`, and through HTTP_PROXY.
    let out = curl(&["-sS", "-x", &proxy_url, &url], &[]).await;
    assert_eq!(echo_json(&out)["path"], "/echo");
    let out = curl(
        &["-sS", &url],
        &[("HTTP_PROXY", &proxy_url), ("http_proxy", &proxy_url)],
    )
    .await;
    assert_eq!(echo_json(&out)["path"], "/echo");
    // CONNECT for plain HTTP with --proxytunnel.
    let out = curl(&["-sS", "--proxytunnel", "-x", &proxy_url, &url], &[]).await;
    assert_eq!(echo_json(&out)["path"], "/echo");
    assert_eq!(origin.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_shows_403_and_the_reason_for_a_denied_name() {
    let (_dns, proxy) = setup().await;
    let origin = TlsOrigin::start(&["denied.test"]).await;
    let ca = origin.ca_file();
    let url = format!("https://denied.test:{}/", origin.addr().port());
    let proxy_url = format!("http://{}", proxy.addr());

    let out = curl(
        &[
            "-sS",
            "-v",
            "-x",
            &proxy_url,
            "--cacert",
            ca.to_str().unwrap(),
            &url,
        ],
        &[],
    )
    .await;
    assert!(!out.status.success(), "curl reached a denied origin");
    let verbose = text(&out.stderr);
    assert!(verbose.contains("HTTP/1.1 403"), "{verbose}");
    assert!(
        verbose
            .to_ascii_lowercase()
            .contains("x-portcullis-reason: not_allowed"),
        "{verbose}"
    );
    assert_eq!(origin.connections(), 0);

    // Plain HTTP: the 403 comes back as the response itself.
    let url = format!("http://denied.test:{}/", origin.addr().port());
    let out = curl(&["-sS", "-i", "-x", &proxy_url, &url], &[]).await;
    let response = text(&out.stdout);
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-portcullis-reason: not_allowed"),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_with_a_proxy_fetches_an_allowed_https_origin() {
    let (_dns, proxy) = setup().await;
    let origin = TlsOrigin::start(&["origin.test", "denied.test"]).await;
    let tls = (*origin.client_config()).clone();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .proxy(reqwest::Proxy::all(format!("http://{}", proxy.addr())).expect("proxy URL"))
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("reqwest client");

    let url = format!("https://origin.test:{}/echo", origin.addr().port());
    let response = client
        .get(&url)
        .send()
        .await
        .expect("GET through the proxy");
    assert_eq!(response.status(), 200);
    let echo: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON");
    assert_eq!(echo["method"], "GET");

    let denied = format!("https://denied.test:{}/echo", origin.addr().port());
    let result = client.get(&denied).send().await;
    assert!(
        result.is_err(),
        "reqwest reached a denied origin: {result:?}"
    );
    assert_eq!(origin.requests(), 1);
}
