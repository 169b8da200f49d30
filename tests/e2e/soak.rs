//! A bounded soak: allowed and denied CONNECTs, forwarded requests, client
//! and upstream resets and policy reloads, mixed for `PORTCULLIS_SOAK_SECS`
//! (default 60). Then: no allowed connection failed, descriptors are back to
//! the baseline, RSS stayed flat after warm-up, and every connection or
//! request was audited exactly once.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::support::client::{
    connect, echo_roundtrip, finish, open_tunnel, read_body, read_head, send, send_connect,
};
use crate::support::dns::TestDns;
use crate::support::origin::{HttpOrigin, TcpEcho};
use crate::support::proxy::{Launch, Proxy, loopback_policy};

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    exchanges: AtomicUsize,
    failed_allowed: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_and_reloads() {
    let secs: u64 = std::env::var("PORTCULLIS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dns = TestDns::start().await;
    for n in ["ok.test", "reset.test", "denied.test"] {
        dns.set_a(n, &[LOCAL], 300);
    }
    let echo = TcpEcho::start().await;
    let http = HttpOrigin::start().await;
    let resetter = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let reset_port = resetter.local_addr().unwrap().port();
    let resets = tokio::spawn(async move {
        while let Ok((s, _)) = resetter.accept().await {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    });
    let dir = std::env::temp_dir().join(format!("portcullis-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy_path = dir.join("policy.yaml");
    let policy = |extra: usize| {
        loopback_policy(
            &[
                "ok.test:*",
                "reset.test:*",
                &format!("extra{extra}.test:443"),
            ],
            "",
        )
    };
    std::fs::write(&policy_path, policy(0)).unwrap();
    let launch = Launch {
        policy_path: Some(&policy_path),
        ..Launch::default()
    };
    let proxy = Proxy::launch("", dns.addr(), launch).await;
    let (addr, pid) = (proxy.addr(), proxy.pid());
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let (echo_port, http_port) = (echo.addr().port(), http.addr().port());

    let mut workers = Vec::new();
    for w in 0..4usize {
        let tally = tally.clone();
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < end {
                i += 4;
                match i % 5 {
                    0 => {
                        let mut t = open_tunnel(addr, &format!("ok.test:{echo_port}")).await;
                        echo_roundtrip(&mut t, b"soak").await;
                        finish(&mut t).await;
                    }
                    1 => {
                        let mut s = connect(addr).await;
                        send_connect(&mut s, &format!("denied.test:{echo_port}")).await;
                        assert_eq!(read_head(&mut s).await.status, 403);
                    }
                    2 => {
                        let mut s = connect(addr).await;
                        for _ in 0..3 {
                            let req = format!("GET http://ok.test:{http_port}/bytes/512 HTTP/1.1\r\nHost: ok.test:{http_port}\r\n\r\n");
                            send(&mut s, req.as_bytes()).await;
                            let head = read_head(&mut s).await;
                            if head.status != 200 {
                                tally.failed_allowed.fetch_add(1, Ordering::Relaxed);
                            }
                            assert_eq!(read_body(&mut s, &head).await.len(), 512);
                        }
                        tally.exchanges.fetch_add(2, Ordering::Relaxed);
                    }
                    3 => {
                        // The client resets mid-tunnel.
                        let t = open_tunnel(addr, &format!("ok.test:{echo_port}")).await;
                        let _ = socket2::SockRef::from(&t).set_linger(Some(Duration::ZERO));
                    }
                    _ => {
                        // The upstream resets: 502, or a tunnel that closes.
                        let mut s = connect(addr).await;
                        send_connect(&mut s, &format!("reset.test:{reset_port}")).await;
                        let status = read_head(&mut s).await.status;
                        assert!(status == 200 || status == 502, "{status}");
                    }
                }
                tally.exchanges.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Reloads while the traffic runs; baseline descriptors and RSS after warm-up.
    let mut generation = 1;
    let mut baseline = None;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        generation += 1;
        let tmp = dir.join("policy.yaml.tmp");
        std::fs::write(&tmp, policy(generation)).unwrap();
        std::fs::rename(&tmp, &policy_path).unwrap();
        if baseline.is_none() && start.elapsed() > Duration::from_secs(secs / 4) {
            baseline = Some(rss_kb(pid));
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    resets.abort();
    let exchanges = tally.exchanges.load(Ordering::Relaxed);
    assert_eq!(tally.failed_allowed.load(Ordering::Relaxed), 0);
    assert!(exchanges > 100, "only {exchanges} exchanges in {secs} s");

    // Every connection and request audited exactly once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = proxy.audit_records();
        let audited = records
            .iter()
            .filter(|r| r["event"] != "policy_reload")
            .count();
        if audited == exchanges {
            break;
        }
        assert!(
            audited < exchanges,
            "{audited} records for {exchanges} exchanges"
        );
        assert!(
            Instant::now() < deadline,
            "{audited} records for {exchanges} exchanges"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Descriptors back to where an idle proxy sits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fds(pid) > 40 {
        assert!(
            Instant::now() < deadline,
            "{} descriptors still open",
            fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (base, now) = (baseline.unwrap_or(0), rss_kb(pid));
    assert!(
        now < base + base / 2 + 16 * 1024,
        "RSS grew from {base} kB to {now} kB"
    );
    eprintln!(
        "soak: {exchanges} exchanges in {secs} s, RSS {base} -> {now} kB, reloads {}",
        generation - 1
    );
    let _ = std::fs::remove_dir_all(&dir);
}
