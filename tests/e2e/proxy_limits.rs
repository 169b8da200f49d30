//! Timeouts, the connection limit and the SIGTERM drain, each observed from outside the process.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

use crate::support::client::{
    LOCAL, echo_roundtrip, expect_closed, expect_refusal, finish, http_get, open_tunnel,
    send_connect, try_read_head,
};
use crate::support::dns::TestDns;
use crate::support::origin::{HttpOrigin, TcpEcho};
use crate::support::proxy::{Proxy, loopback_policy};
use crate::support::{TempPolicy, bin};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(10);

/// DNS with `origin.test` on loopback and a TCP echo behind it.
async fn echo_setup(args: &[&str]) -> (TestDns, TcpEcho, Proxy, String) {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), dns.addr(), args).await;
    let target = format!("origin.test:{}", echo.addr().port());
    (dns, echo, proxy, target)
}

/// Whether the peer has closed: EOF or an error within `wait`. Response bytes are skipped.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    matches!(
        timeout(wait, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_closes_a_head_that_never_completes() {
    let (_dns, echo, proxy, target) = echo_setup(&["--header-timeout", "1s"]).await;

    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let started = Instant::now();
    // Half a head, then one more header line every 200 ms: the whole head has the deadline,
    // so trickling bytes must not keep the connection alive.
    let half = format!("CONNECT {target} HTTP/1.1\r\nHost: ");
    stream.write_all(half.as_bytes()).await.expect("write");
    let mut closed = false;
    while !closed && started.elapsed() < WAIT {
        if stream.write_all(b"x\r\nX-Pad: 1").await.is_err() {
            closed = true;
        } else {
            closed = closed_within(&mut stream, Duration::from_millis(200)).await;
        }
    }
    let waited = started.elapsed();
    assert!(
        closed,
        "connection with an unfinished head still open after {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "closed after only {waited:?}"
    );
    assert_eq!(echo.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_is_refused() {
    let dns = TestDns::start().await;
    dns.set_a("origin.test", &[LOCAL], 60);
    let origin = HttpOrigin::start().await;
    let proxy = Proxy::start(&loopback_policy(&["origin.test:*"], ""), dns.addr(), &[]).await;

    let authority = format!("origin.test:{}", origin.addr().port());
    let big = "a".repeat(20 * 1024);
    let req = format!(
        "GET http://{authority}/echo HTTP/1.1\r\nHost: {authority}\r\nX-Big: {big}\r\n\r\n"
    );
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    // The proxy may close before reading it all; a failed write is fine.
    let _ = stream.write_all(req.as_bytes()).await;
    match try_read_head(&mut stream).await {
        Ok(Some(head)) => assert!(
            head.status == 431 || head.status == 400,
            "a 20 KiB head got:\n{}",
            head.raw
        ),
        Ok(None) => {}
        Err(e) => assert!(
            e.kind() != std::io::ErrorKind::TimedOut,
            "no answer to a 20 KiB head: {e}"
        ),
    }
    assert_eq!(origin.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_quiet_tunnels_but_not_busy_ones() {
    let (_dns, _echo, proxy, target) = echo_setup(&["--idle-timeout", "1s"]).await;

    // Busy: a byte every 300 ms for 2.5 s, longer than the idle timeout.
    let mut busy = open_tunnel(proxy.addr(), &target).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        echo_roundtrip(&mut busy, b".").await;
        sleep(Duration::from_millis(300)).await;
    }

    let mut quiet = open_tunnel(proxy.addr(), &target).await;
    let quiet_addr = quiet.local_addr().expect("local_addr");
    echo_roundtrip(&mut quiet, b"once").await;
    let started = Instant::now();
    expect_closed(&mut quiet, WAIT).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "closed after only {waited:?}"
    );
    // The tunnel the proxy closed is audited like any other.
    let record = proxy
        .wait_audit(|r| r["client_addr"] == quiet_addr.to_string(), WAIT)
        .await;
    assert_eq!(
        (&record["bytes_egress"], &record["bytes_ingress"]),
        (&4.into(), &4.into()),
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_closes_a_client_that_sends_nothing() {
    let (_dns, _echo, proxy, _target) = echo_setup(&["--header-timeout", "1s"]).await;

    let mut silent = TcpStream::connect(proxy.addr()).await.expect("connect");
    let started = Instant::now();
    expect_closed(&mut silent, WAIT).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "closed after only {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_clients_get_503_overloaded() {
    let (_dns, _echo, proxy, target) = echo_setup(&["--max-connections", "2"]).await;

    let mut first = open_tunnel(proxy.addr(), &target).await;
    let mut second = open_tunnel(proxy.addr(), &target).await;
    echo_roundtrip(&mut first, b"1").await;
    echo_roundtrip(&mut second, b"2").await;

    let mut third = TcpStream::connect(proxy.addr()).await.expect("connect");
    send_connect(&mut third, &target).await;
    expect_refusal(&mut third, 503, "overloaded").await;

    finish(&mut first).await;
    // Once the proxy has seen the close, a new connection gets through.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        send_connect(&mut stream, &target).await;
        let head = try_read_head(&mut stream).await;
        if let Ok(Some(head)) = &head
            && head.status == 200
        {
            echo_roundtrip(&mut stream, b"3").await;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after a slot freed: {head:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }
    echo_roundtrip(&mut second, b"still open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_tunnels_then_exits_zero() {
    let args = ["--drain-timeout", "20s"];
    let (_dns, _echo, mut proxy, target) = echo_setup(&args).await;
    let mut tunnel = open_tunnel(proxy.addr(), &target).await;
    echo_roundtrip(&mut tunnel, b"before").await;
    assert_eq!(
        http_get(proxy.admin(), "/healthz").await.ok().map(|r| r.0),
        Some(200)
    );

    proxy.sigterm().await;
    let started = Instant::now();
    let deadline = started + WAIT;
    loop {
        match http_get(proxy.admin(), "/readyz").await {
            Ok((503, _)) | Err(_) => break,
            Ok(_) => {}
        }
        assert!(Instant::now() < deadline, "/readyz still 200 after SIGTERM");
        sleep(Duration::from_millis(25)).await;
    }

    // New connections are refused, or closed without a 200.
    if let Ok(Ok(mut late)) = timeout(WAIT, TcpStream::connect(proxy.addr())).await {
        let _ = late
            .write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
            .await;
        let head = timeout(Duration::from_secs(3), try_read_head(&mut late)).await;
        if let Ok(Ok(Some(head))) = head {
            assert_ne!(head.status, 200, "a new tunnel was opened while draining");
        }
    }

    // The open tunnel keeps working until we close it.
    echo_roundtrip(&mut tunnel, b"after sigterm").await;
    finish(&mut tunnel).await;
    proxy.wait_clean_exit(WAIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "did not exit well before the drain timeout"
    );
    assert_tunnel_audited(&proxy, 6 + 13);
}

/// The record of the one tunnel to `origin.test` is in the audit log after exit, with its bytes.
fn assert_tunnel_audited(proxy: &Proxy, bytes: u64) {
    let records = proxy.audit_records();
    let tunnel = records
        .iter()
        .find(|r| r["event"] == "connection" && r["host"] == "origin.test");
    let Some(tunnel) = tunnel else {
        panic!("tunnel record lost at shutdown; records: {records:?}");
    };
    assert_eq!(tunnel["bytes_egress"], bytes, "{tunnel}");
    assert_eq!(tunnel["bytes_ingress"], bytes, "{tunnel}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cuts_tunnels_that_stay_open() {
    let (_dns, _echo, mut proxy, target) = echo_setup(&["--drain-timeout", "1s"]).await;
    let mut tunnel = open_tunnel(proxy.addr(), &target).await;
    echo_roundtrip(&mut tunnel, b"stay").await;

    proxy.sigterm().await;
    let started = Instant::now();
    proxy.wait_clean_exit(WAIT).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "exited after {waited:?}, before the drain timeout"
    );
    assert!(waited < Duration::from_secs(6), "exited after {waited:?}");
    expect_closed(&mut tunnel, WAIT).await;
    assert_tunnel_audited(&proxy, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_shuts_down_cleanly() {
    let (_dns, _echo, mut proxy, _target) = echo_setup(&[]).await;
    proxy.signal("INT").await;
    proxy.wait_clean_exit(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_stops_start_up_instead_of_starting_open() {
    let dns = TestDns::start().await;
    let policy = TempPolicy::new("version: 1\nallow:\n  - \"*\"\nbogus_key: 1\n");
    let dns_addr = dns.addr().to_string();
    let run = Command::new(bin())
        .args(["run", "--policy", policy.path_str()])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--nameserver", &dns_addr, "--audit-log", "-"])
        .kill_on_drop(true)
        .output();
    let out = timeout(WAIT, run)
        .await
        .expect("portcullis kept running on an invalid policy")
        .expect("run portcullis");
    assert!(!out.status.success(), "exit status {}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(policy.path_str()) || stderr.contains(":3:"),
        "{stderr}"
    );
}

/// `--workers 4`: three more event-loop threads accept on the same listener; tunnels
/// opened at once all work whichever thread took them, and the drain waits for every
/// thread's tunnels and audits each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_share_the_listeners_and_drain_together() {
    let (_dns, _echo, mut proxy, target) = echo_setup(&["--workers", "4"]).await;
    let threads = worker_threads(&proxy);
    assert_eq!(threads.len(), 3, "worker threads: {threads:?}");
    let mut tunnels = open_echoed_tunnels(&proxy, &target).await;

    proxy.sigterm().await;
    for tunnel in &mut tunnels {
        echo_roundtrip(tunnel, b"draining").await;
        finish(tunnel).await;
    }
    proxy.wait_clean_exit(WAIT).await;
    assert_eq!(
        audited_tunnels(&proxy, 9 + 8),
        TUNNELS,
        "tunnel records after the drain"
    );
}

/// Tunnels that stay open past `--drain-timeout` are cut on every worker
/// thread, not only the main one; each is audited before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cuts_the_tunnels_of_every_worker_thread() {
    let args = ["--workers", "4", "--drain-timeout", "1s"];
    let (_dns, _echo, mut proxy, target) = echo_setup(&args).await;
    let mut tunnels = open_echoed_tunnels(&proxy, &target).await;

    proxy.sigterm().await;
    let started = Instant::now();
    proxy.wait_clean_exit(WAIT).await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(6), "exited after {waited:?}");
    for tunnel in &mut tunnels {
        expect_closed(tunnel, WAIT).await;
    }
    assert_eq!(
        audited_tunnels(&proxy, 9),
        TUNNELS,
        "records of the tunnels cut at the drain timeout"
    );
}

/// Tunnels the worker tests open at once, so that every thread gets some.
const TUNNELS: usize = 24;

/// Names of the proxy's extra event-loop threads.
fn worker_threads(proxy: &Proxy) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/task", proxy.pid()))
        .expect("proc task dir")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("portcullis-w"))
        .collect()
}

/// Opens [`TUNNELS`] tunnels concurrently, each echoing `tunnel NN` (9 bytes) once.
async fn open_echoed_tunnels(proxy: &Proxy, target: &str) -> Vec<TcpStream> {
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..TUNNELS {
        let (addr, target) = (proxy.addr(), target.to_string());
        opening.spawn(async move {
            let mut tunnel = open_tunnel(addr, &target).await;
            echo_roundtrip(&mut tunnel, format!("tunnel {i:02}").as_bytes()).await;
            tunnel
        });
    }
    let tunnels = opening.join_all().await;
    assert_eq!(tunnels.len(), TUNNELS);
    tunnels
}

/// Tunnel records in the audit log that carried `egress` bytes out.
fn audited_tunnels(proxy: &Proxy, egress: u64) -> usize {
    proxy
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "connection" && r["bytes_egress"] == egress)
        .count()
}

/// Connections with a loopback peer use Reno whatever the host's congestion
/// control is: the client's (the sidecar's application) and, here, the upstream
/// one (a loopback origin). Read off the proxy's sockets with `ss`. The client
/// socket gets it from the loopback listener (unit tests in `listener` cover
/// the per-connection path); on a host whose default is Reno this cannot fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_peers_are_served_with_reno() {
    let (_dns, echo, proxy, target) = echo_setup(&[]).await;
    let mut tunnel = open_tunnel(proxy.addr(), &target).await;
    echo_roundtrip(&mut tunnel, b"reno?").await;
    // The proxy's accepted client socket, then its socket towards the origin.
    let sides = [
        ("client", format!("sport = :{}", proxy.addr().port())),
        ("upstream", format!("dport = :{}", echo.addr().port())),
    ];
    for (side, filter) in sides {
        let out = match Command::new("ss")
            .args(["-tinH", "state", "established", &filter])
            .output()
            .await
        {
            Ok(out) if out.status.success() => out,
            other => {
                eprintln!("SKIPPED congestion control check: no usable `ss` ({other:?})");
                return;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.split_whitespace().any(|t| t == "reno"),
            "the proxy's {side} socket is not on Reno:\n{text}"
        );
    }
    finish(&mut tunnel).await;
}
