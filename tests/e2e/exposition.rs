//! `/metrics` as Prometheus and its tools read it: the two formats, `promtool check
//! metrics` on a scrape after traffic, and the build, limit and process metrics.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::support::client::{
    LOCAL, closed_port, connect, connect_refused, curl, echo_roundtrip, finish, open_tunnel,
    read_body, read_head, send,
};
use crate::support::dns::TestDns;
use crate::support::metrics::metric_sum;
use crate::support::origin::{HttpOrigin, TcpEcho};
use crate::support::proxy::{Launch, Proxy, loopback_policy};

const WAIT: Duration = Duration::from_secs(10);

/// Runs `promtool check metrics` on `text`: (success, what it printed).
async fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run promtool (Debian: apt-get install prometheus)");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("promtool timed out")
        .expect("promtool output");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// A scrape after allowed, denied, failed and forwarded traffic passes Prometheus's own
/// linter without a complaint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_traffic_passes_promtool() {
    let dns = TestDns::start().await;
    for name in ["origin.test", "down.test"] {
        dns.set_a(name, &[LOCAL], 60);
    }
    let echo = TcpEcho::start().await;
    let origin = HttpOrigin::start().await;
    let policy = loopback_policy(&["origin.test:*", "down.test:*", "*.gone.test"], "");
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;

    let mut tunnel =
        open_tunnel(proxy.addr(), &format!("origin.test:{}", echo.addr().port())).await;
    echo_roundtrip(&mut tunnel, b"lint me").await;
    finish(&mut tunnel).await;
    let port = origin.addr().port();
    let mut stream = connect(proxy.addr()).await;
    let req =
        format!("GET http://origin.test:{port}/echo HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n");
    send(&mut stream, req.as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200, "{}", head.raw);
    read_body(&mut stream, &head).await;
    drop(stream);
    connect_refused(proxy.addr(), "denied.test:443", 403, "not_allowed").await;
    connect_refused(proxy.addr(), "x.gone.test:443", 502, "dns_error").await;
    let down = format!("down.test:{}", closed_port().await);
    connect_refused(proxy.addr(), &down, 502, "connect_error").await;

    let text = proxy
        .wait_metric("portcullis_requests_total", &[], |n| n >= 5.0, WAIT)
        .await;
    for family in [
        "portcullis_requests_total",
        "portcullis_tunnel_bytes_total",
        "portcullis_upstream_connect_seconds_bucket",
        "portcullis_dns_lookup_seconds_bucket",
        "portcullis_build_info",
        "process_cpu_seconds_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "no {family}:\n{text}"
        );
    }
    let (ok, printed) = promtool_check(&text).await;
    assert!(
        ok && printed.trim().is_empty(),
        "promtool: {printed}\n{text}"
    );
}

/// Prometheus asks for OpenMetrics and gets it; any other caller gets the text format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_format_follows_the_accept_header() {
    let dns = TestDns::start().await;
    let proxy = Proxy::start(&loopback_policy(&["a.test"], ""), dns.addr(), &[]).await;
    let url = format!("http://{}/metrics", proxy.admin());
    let prometheus = "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    let cases = [
        (
            "Prometheus",
            vec!["-H", prometheus],
            "application/openmetrics-text; version=1.0.0",
            "# TYPE portcullis_policy_reloads counter",
        ),
        (
            "curl's default",
            vec![],
            "text/plain; version=0.0.4",
            "# TYPE portcullis_policy_reloads_total counter",
        ),
    ];
    for (name, headers, content_type, type_line) in cases {
        let mut args = vec!["-s", "-i"];
        args.extend(headers);
        args.push(&url);
        let out = curl(&args, &[]).await;
        let response = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
        let (head, body) = response.split_once("\n\n").expect("head and body");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-type: {content_type}")),
            "{name}: {head}"
        );
        assert!(body.lines().any(|l| l == type_line), "{name}: {body}");
        let eof = body.lines().last() == Some("# EOF");
        assert_eq!(
            eof,
            name == "Prometheus",
            "{name}: ends with # EOF?\n{body}"
        );
    }
}

/// `build_info`, `max_connections` and the standard `process_*` metrics (no prefix) say
/// what runs and within which limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_limit_and_process_metrics() {
    let dns = TestDns::start().await;
    let launch = Launch {
        args: &["--max-connections", "77"],
        fd_limit: Some(4096),
        ..Launch::default()
    };
    let proxy = Proxy::launch(&loopback_policy(&["a.test"], ""), dns.addr(), launch).await;
    let text = proxy.metrics().await;
    let value = |name: &str, labels: &[(&str, &str)]| {
        metric_sum(&text, name, labels).unwrap_or_else(|| panic!("no {name}:\n{text}"))
    };

    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(value("portcullis_build_info", &version), 1.0);
    assert_eq!(value("portcullis_max_connections", &[]), 77.0);
    assert_eq!(value("process_max_fds", &[]), 4096.0);
    let open = value("process_open_fds", &[]);
    assert!((1.0..4096.0).contains(&open), "open fds {open}");
    assert!(value("process_resident_memory_bytes", &[]) > 1e6, "{text}");
    assert!(value("process_cpu_seconds_total", &[]) >= 0.0, "{text}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    let started = value("process_start_time_seconds", &[]);
    // It started before this scrape, and after this test began (within its start-up bound).
    assert!(
        started <= now.as_secs_f64() + 1.0,
        "start {started}, now {now:?}"
    );
    assert!(
        started >= now.as_secs_f64() - 120.0,
        "start {started}, now {now:?}"
    );
}
