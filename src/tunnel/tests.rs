use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::*;
use crate::policy::{Host, Reason};
use crate::tls_peek::Expect;
use crate::tls_peek::synth::{hello_message, records, server_hello, tls13_hello};

/// Two connected loopback socket pairs: (proxy side, test side) for the
/// client and for the upstream.
async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let out = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (inn, _) = l.accept().await.unwrap();
        (inn, out)
    }
    (pair().await, pair().await)
}

fn client(stream: TcpStream, prefix: &'static [u8]) -> ClientSide {
    ClientSide {
        stream: ClientStream::Tcp(stream),
        prefix: Bytes::from_static(prefix),
    }
}

#[tokio::test]
async fn relays_both_ways_counts_prefix_and_passes_half_close() {
    let ((c, mut client_peer), (u, mut upstream_peer)) = pairs().await;
    let counters = Counters::default();
    let abort = CancellationToken::new();
    let pumping = pump(
        client(c, b">"),
        u,
        Duration::from_secs(5),
        &abort,
        &counters,
        None,
    );
    let driving = async {
        client_peer.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 6];
        upstream_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b">hello");
        client_peer.shutdown().await.unwrap();
        // upstream sees EOF, yet can still answer
        let mut rest = Vec::new();
        upstream_peer.read_to_end(&mut rest).await.unwrap();
        upstream_peer.write_all(b"world!").await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
    };
    let (end, ()) = tokio::join!(pumping, driving);
    assert_eq!(
        end,
        End::Closed(Side::Client),
        "the client half-closed first"
    );
    assert_eq!((counters.egress(), counters.ingress()), (6, 6));
}

#[tokio::test]
async fn the_side_that_closes_first_is_noted() {
    let ((c, mut client_peer), (u, mut upstream_peer)) = pairs().await;
    let counters = Counters::default();
    let abort = CancellationToken::new();
    let pumping = pump(
        client(c, b""),
        u,
        Duration::from_secs(5),
        &abort,
        &counters,
        None,
    );
    let driving = async {
        upstream_peer.write_all(b"bye").await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"bye");
        client_peer.shutdown().await.unwrap();
        let mut rest = Vec::new();
        upstream_peer.read_to_end(&mut rest).await.unwrap();
    };
    let (end, ()) = tokio::join!(pumping, driving);
    assert_eq!(end, End::Closed(Side::Upstream));
}

#[tokio::test]
async fn a_reset_before_any_close_is_a_failure() {
    let ((c, _client_peer), (u, upstream_peer)) = pairs().await;
    let abort = CancellationToken::new();
    // SO_LINGER 0: closing sends a reset instead of a FIN.
    socket2::SockRef::from(&upstream_peer)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(upstream_peer);
    let end = pump(
        client(c, b""),
        u,
        Duration::from_secs(5),
        &abort,
        &Counters::default(),
        None,
    )
    .await;
    assert_eq!(end, End::Failed(std::io::ErrorKind::ConnectionReset));
}

fn inspect(expect: Expect) -> Option<Inspect> {
    Some(Inspect {
        flight: ClientFlight::new(expect, false),
        header_timeout: Duration::from_secs(5),
    })
}

#[tokio::test]
async fn server_first_bytes_flow_while_the_first_flight_is_awaited() {
    let ((c, mut client_peer), (u, mut upstream_peer)) = pairs().await;
    let counters = Counters::default();
    let abort = CancellationToken::new();
    let pumping = pump(
        client(c, b""),
        u,
        Duration::from_secs(5),
        &abort,
        &counters,
        inspect(Expect::Any),
    );
    let driving = async {
        upstream_peer
            .write_all(b"220 smtp ready\r\n")
            .await
            .unwrap();
        let mut greeting = [0u8; 16];
        client_peer.read_exact(&mut greeting).await.unwrap();
        client_peer.write_all(b"EHLO x\r\n").await.unwrap();
        let mut got = [0u8; 8];
        upstream_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"EHLO x\r\n");
        drop((client_peer, upstream_peer));
    };
    let (end, ()) = tokio::join!(pumping, driving);
    assert!(matches!(end, End::Closed(_)), "{end:?}");
}

#[tokio::test]
async fn a_refused_first_flight_forwards_nothing_and_gets_an_alert() {
    let ((c, mut client_peer), (u, mut upstream_peer)) = pairs().await;
    let counters = Counters::default();
    let hello = records(&hello_message(&["evil.example"], false, 0), 16384);
    client_peer.write_all(&hello).await.unwrap();
    let end = pump(
        client(c, b""),
        u,
        Duration::from_secs(5),
        &CancellationToken::new(),
        &counters,
        inspect(Expect::Host(Host::parse("api.example").unwrap())),
    )
    .await;
    assert!(matches!(end, End::Refused(v) if v.reason == Reason::SniMismatch));
    let mut got = Vec::new();
    upstream_peer.read_to_end(&mut got).await.unwrap();
    assert!(got.is_empty());
    assert_eq!(counters.egress(), 0);
    let mut alert = Vec::new();
    client_peer.read_to_end(&mut alert).await.unwrap();
    assert_eq!(alert, tls_peek::alert(tls_peek::ACCESS_DENIED));
}

/// A HelloRetryRequest keeps the inspection on: the second ClientHello
/// is checked; after the real ServerHello the tunnel relays blind.
#[tokio::test]
async fn the_hello_after_a_retry_is_checked_then_the_tunnel_goes_blind() {
    for second_name in ["a.example", "b.example"] {
        let ((c, mut client_peer), (u, mut upstream_peer)) = pairs().await;
        let counters = Counters::default();
        let abort = CancellationToken::new();
        let pumping = pump(
            client(c, b""),
            u,
            Duration::from_secs(5),
            &abort,
            &counters,
            inspect(Expect::Any),
        );
        let first = records(&tls13_hello(Some("a.example"), None), 16384);
        let second = records(&tls13_hello(Some(second_name), Some([1; 32])), 16384);
        let driving = async {
            client_peer.write_all(&first).await.unwrap();
            let mut got = vec![0u8; first.len()];
            upstream_peer.read_exact(&mut got).await.unwrap();
            let retry = records(&server_hello(true), 16384);
            upstream_peer.write_all(&retry).await.unwrap();
            let mut got = vec![0u8; retry.len()];
            client_peer.read_exact(&mut got).await.unwrap();
            client_peer.write_all(&second).await.unwrap();
            if second_name != "a.example" {
                let mut rest = Vec::new();
                upstream_peer.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty(), "the second hello went upstream");
                return;
            }
            let mut got = vec![0u8; second.len()];
            upstream_peer.read_exact(&mut got).await.unwrap();
            upstream_peer
                .write_all(&records(&server_hello(false), 16384))
                .await
                .unwrap();
            let mut got = vec![0u8; records(&server_hello(false), 16384).len()];
            client_peer.read_exact(&mut got).await.unwrap();
            // Blind now: even a third "hello" naming another server passes.
            let third = records(&tls13_hello(Some("b.example"), Some([1; 32])), 16384);
            client_peer.write_all(&third).await.unwrap();
            let mut got = vec![0u8; third.len()];
            upstream_peer.read_exact(&mut got).await.unwrap();
            drop((client_peer, upstream_peer));
        };
        let (end, ()) = tokio::join!(pumping, driving);
        if second_name == "a.example" {
            assert!(matches!(end, End::Closed(_)), "{end:?}");
        } else {
            assert!(matches!(end, End::Refused(v) if v.reason == Reason::SniMismatch));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn idle_tunnels_end() {
    let ((c, _keep_client), (u, _keep_upstream)) = pairs().await;
    let end = pump(
        client(c, b""),
        u,
        Duration::from_secs(3),
        &CancellationToken::new(),
        &Counters::default(),
        None,
    )
    .await;
    assert_eq!(end, End::Idle);
}

/// The portable copy path, tested on its own whatever the build uses.
#[tokio::test]
async fn copy_path_relays_and_counts() {
    let ((c, mut client_peer), (u, mut upstream_peer)) = pairs().await;
    let (r, _w) = c.into_split();
    let (_r2, w2) = u.into_split();
    let count = AtomicU64::new(0);
    let relaying = copy_one_way(r, w2, &count, &|| {});
    let driving = async {
        let big = vec![7u8; 1 << 20];
        client_peer.write_all(&big).await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
    };
    let (res, ()) = tokio::join!(relaying, driving);
    res.unwrap();
    assert_eq!(count.load(Ordering::Relaxed), 1 << 20);
}

#[tokio::test]
async fn abort_ends_the_tunnel() {
    let ((c, _keep_client), (u, _keep_upstream)) = pairs().await;
    let abort = CancellationToken::new();
    abort.cancel();
    let end = pump(
        client(c, b""),
        u,
        Duration::from_secs(60),
        &abort,
        &Counters::default(),
        None,
    )
    .await;
    assert_eq!(end, End::Aborted);
}
