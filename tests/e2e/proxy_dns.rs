//! Resolution by the proxy itself: AAAA-only names, answers tried in turn or dropped by the guard, TTLs.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_server::proto::rr::RecordType;
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

use crate::support::client::{
    EchoV6, LOCAL, connect, echo_roundtrip, finish, open_tunnel, read_head, send_connect,
};
use crate::support::dns::TestDns;
use crate::support::origin::TcpEcho;
use crate::support::proxy::{Proxy, allow_list, loopback_policy};
use crate::support::spawn_accept_loop;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_with_only_an_aaaa_record_is_reached_over_ipv6() {
    let dns = TestDns::start().await;
    dns.set_aaaa("v6.test", &[Ipv6Addr::LOCALHOST], 60);
    let echo = EchoV6::start().await;
    let proxy = Proxy::start(&loopback_policy(&["v6.test:*"], ""), dns.addr(), &[]).await;

    let mut tunnel = open_tunnel(proxy.addr(), &format!("v6.test:{}", echo.addr.port())).await;
    echo_roundtrip(&mut tunnel, b"aaaa only").await;
    finish(&mut tunnel).await;
    let record = proxy.wait_audit(|r| r["host"] == "v6.test", WAIT).await;
    assert_eq!(
        record["upstream_addr"],
        format!("[::1]:{}", echo.addr.port()),
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_resolved_address_is_tried_in_turn() {
    let dns = TestDns::start().await;
    let echo = TcpEcho::start().await;
    // Nothing listens on 127.0.0.2 / 127.0.0.3 at the echo's port: those dials are refused.
    let answers = [
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
        LOCAL,
    ];
    dns.set_a("multi.test", &answers, 60);
    let proxy = Proxy::start(&loopback_policy(&["multi.test:*"], ""), dns.addr(), &[]).await;

    let port = echo.addr().port();
    let mut tunnel = open_tunnel(proxy.addr(), &format!("multi.test:{port}")).await;
    echo_roundtrip(&mut tunnel, b"third time lucky").await;
    finish(&mut tunnel).await;
    let record = proxy.wait_audit(|r| r["host"] == "multi.test", WAIT).await;
    assert_eq!(
        record["upstream_addr"],
        format!("127.0.0.1:{port}"),
        "{record}"
    );
    assert_eq!(echo.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_inside_the_guard_are_dropped_and_never_dialed() {
    let dns = TestDns::start().await;
    let echo = TcpEcho::start().await;
    let port = echo.addr().port();
    // A trap on the blocked address, same port: any dial there is counted.
    let trap = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), port))
        .await
        .expect("bind 127.0.0.2");
    let trapped = Arc::new(AtomicUsize::new(0));
    let _trap = spawn_accept_loop(trap, trapped.clone(), |_stream| async {});
    dns.set_a("mixed.test", &[Ipv4Addr::new(127, 0, 0, 2), LOCAL], 60);
    // Only 127.0.0.1 is carved out of the default guard; 127.0.0.2 stays blocked.
    let policy = format!(
        "version: 1\n{}ip_guard:\n  allowed: [127.0.0.1/32]\n",
        allow_list(&["mixed.test:*"])
    );
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;

    for _ in 0..3 {
        let mut tunnel = open_tunnel(proxy.addr(), &format!("mixed.test:{port}")).await;
        echo_roundtrip(&mut tunnel, b"guarded").await;
    }
    assert_eq!(
        trapped.load(Ordering::SeqCst),
        0,
        "a blocked answer was dialed"
    );
    assert_eq!(echo.connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_for_their_ttl_and_refreshed_after() {
    let dns = TestDns::start().await;
    dns.set_a("cached.test", &[LOCAL], 300);
    dns.set_a("short.test", &[LOCAL], 1);
    let echo = TcpEcho::start().await;
    let policy = loopback_policy(&["cached.test:*", "short.test:*"], "");
    let proxy = Proxy::start(&policy, dns.addr(), &[]).await;
    let port = echo.addr().port();

    for _ in 0..3 {
        let mut tunnel = open_tunnel(proxy.addr(), &format!("cached.test:{port}")).await;
        echo_roundtrip(&mut tunnel, b"c").await;
    }
    assert_eq!(
        dns.queries_of("cached.test", RecordType::A),
        1,
        "a 300 s answer is asked for once"
    );

    // A 1 s answer is asked for again once it has expired.
    let short = format!("short.test:{port}");
    let mut tunnel = open_tunnel(proxy.addr(), &short).await;
    echo_roundtrip(&mut tunnel, b"s").await;
    assert_eq!(dns.queries_of("short.test", RecordType::A), 1);
    let deadline = Instant::now() + WAIT;
    while dns.queries_of("short.test", RecordType::A) < 2 {
        assert!(
            Instant::now() < deadline,
            "a 1 s answer was never refreshed"
        );
        sleep(Duration::from_millis(200)).await;
        let mut tunnel = open_tunnel(proxy.addr(), &short).await;
        echo_roundtrip(&mut tunnel, b"s").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_record_is_followed_after_its_ttl() {
    let dns = TestDns::start().await;
    let first = TcpEcho::start().await;
    let second = EchoV6::start().await;
    dns.set_a("moving.test", &[LOCAL], 1);
    let proxy = Proxy::start(&loopback_policy(&["moving.test:*"], ""), dns.addr(), &[]).await;

    let target = |port: u16| format!("moving.test:{port}");
    let mut tunnel = open_tunnel(proxy.addr(), &target(first.addr().port())).await;
    echo_roundtrip(&mut tunnel, b"v4").await;
    finish(&mut tunnel).await;

    // The name moves to ::1 only; until the 1 s answer expires, dials still go to 127.0.0.1
    // (where nothing listens on the v6 echo's port).
    dns.set_a("moving.test", &[], 1);
    dns.set_aaaa("moving.test", &[Ipv6Addr::LOCALHOST], 1);
    let deadline = Instant::now() + WAIT;
    let v6_target = target(second.addr.port());
    loop {
        let mut stream = connect(proxy.addr()).await;
        send_connect(&mut stream, &v6_target).await;
        let head = read_head(&mut stream).await;
        if head.status == 200 {
            echo_roundtrip(&mut stream, b"v6").await;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still not following the new record:\n{}",
            head.raw
        );
        sleep(Duration::from_millis(200)).await;
    }
}
