use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use hickory_resolver::proto::op::Message;
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::*;

const LOCAL_V4: Ipv4Addr = Ipv4Addr::LOCALHOST;
const LOCAL_V4_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The zone every test server serves. Answers are loopback addresses only.
fn zone(name: &str, record_type: RecordType) -> (ResponseCode, Vec<RData>, u32) {
    let v4 = |ip| vec![RData::A(A(ip))];
    let v6 = vec![RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))];
    match (name, record_type) {
        ("v4.test.", RecordType::A) => (ResponseCode::NoError, v4(LOCAL_V4), 300),
        ("v6.test.", RecordType::AAAA) => (ResponseCode::NoError, v6, 300),
        ("both.test.", RecordType::A) => (ResponseCode::NoError, v4(LOCAL_V4_B), 300),
        ("both.test.", RecordType::AAAA) => (ResponseCode::NoError, v6, 300),
        ("zero-ttl.test.", RecordType::A) => (ResponseCode::NoError, v4(LOCAL_V4), 0),
        ("v4.test." | "v6.test." | "zero-ttl.test." | "empty.test.", _) => {
            (ResponseCode::NoError, vec![], 0)
        }
        ("servfail.test.", _) => (ResponseCode::ServFail, vec![], 0),
        ("half.test.", RecordType::A) => (ResponseCode::ServFail, vec![], 0),
        ("half.test.", RecordType::AAAA) => (ResponseCode::NoError, v6, 300),
        _ => (ResponseCode::NXDomain, vec![], 0),
    }
}

/// A UDP DNS server on 127.0.0.1:0 answering from [`zone`] and counting queries by name.
struct TestDns {
    addr: SocketAddr,
    queries: Arc<Mutex<HashMap<String, usize>>>,
    task: JoinHandle<()>,
}

impl TestDns {
    async fn start() -> Self {
        let socket = UdpSocket::bind((LOCAL_V4, 0)).await.expect("bind test DNS");
        let addr = socket.local_addr().expect("test DNS address");
        let queries = Arc::new(Mutex::new(HashMap::new()));
        let counted = Arc::clone(&queries);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
                let Ok(request) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let Some(query) = request.queries.first().cloned() else {
                    continue;
                };
                let name = query.name().to_ascii().to_ascii_lowercase();
                *counted
                    .lock()
                    .expect("counter")
                    .entry(name.clone())
                    .or_insert(0) += 1;
                let (code, rdatas, ttl) = zone(&name, query.query_type());
                let mut response = Message::response(request.metadata.id, request.metadata.op_code);
                response.metadata.recursion_desired = request.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                response.metadata.response_code = code;
                response.add_query(query.clone());
                for rdata in rdatas {
                    response.add_answer(Record::from_rdata(query.name().clone(), ttl, rdata));
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Self {
            addr,
            queries,
            task,
        }
    }

    fn queries(&self, name: &str) -> usize {
        self.queries
            .lock()
            .expect("counter")
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    fn resolver(&self) -> Resolver {
        Resolver::new(&[self.addr]).expect("resolver")
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_only_aaaa_only_and_both() {
    let dns = TestDns::start().await;
    let resolver = dns.resolver();
    assert_eq!(
        resolver.lookup("v4.test").await.map(|a| a.addrs),
        Ok(vec![IpAddr::V4(LOCAL_V4)])
    );
    assert_eq!(
        resolver.lookup("v6.test.").await.map(|a| a.addrs),
        Ok(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)])
    );
    assert_eq!(
        resolver.lookup("both.test").await.map(|a| a.addrs),
        Ok(vec![
            IpAddr::V4(LOCAL_V4_B),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        ]),
        "IPv4 first"
    );
}

#[tokio::test]
async fn negative_answers() {
    let dns = TestDns::start().await;
    let resolver = dns.resolver();
    assert_eq!(resolver.lookup("nx.test").await, Err(DnsError::NxDomain));
    assert_eq!(
        resolver.lookup("empty.test").await,
        Err(DnsError::NoAddresses)
    );
    let servfail = resolver.lookup("servfail.test").await;
    assert_eq!(
        servfail,
        Err(DnsError::Failed(LookupFailure::Code(
            ResponseCode::ServFail
        )))
    );
    // The audit `error` spells each the way dig does.
    let causes = [
        resolver.lookup("nx.test").await,
        resolver.lookup("empty.test").await,
        servfail,
    ]
    .map(|r| r.map_err(|e| e.cause()).err());
    assert_eq!(
        causes.each_ref().map(Option::as_deref),
        [Some("NXDOMAIN"), Some("no addresses"), Some("SERVFAIL")]
    );
}

#[tokio::test]
async fn bad_names_and_literals_never_reach_the_server() {
    let dns = TestDns::start().await;
    let resolver = dns.resolver();
    assert!(matches!(
        resolver.lookup("").await,
        Err(DnsError::InvalidName(_))
    ));
    assert!(matches!(
        resolver.lookup("a..b").await,
        Err(DnsError::InvalidName(_))
    ));
    for numeric in ["2130706433", "0x7f.1", "0177.0.0.1", "1.2.3.4.", "a.0X1F"] {
        assert_eq!(
            resolver.lookup(numeric).await,
            Err(DnsError::InvalidName(numeric.into()))
        );
    }
    // IP literals never reach the server.
    assert_eq!(
        resolver.lookup("::1").await.map(|a| a.addrs),
        Ok(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)])
    );
    assert_eq!(dns.queries.lock().expect("counter").len(), 0);
}

#[tokio::test]
async fn names_are_queried_fully_qualified_once() {
    let dns = TestDns::start().await;
    let resolver = dns.resolver();
    let _ = resolver.lookup("nx.test").await;
    // One A and one AAAA query for the name itself, no search-domain variants.
    assert_eq!(dns.queries("nx.test."), 2);
    assert_eq!(dns.queries.lock().expect("counter").len(), 1);
}

#[tokio::test]
async fn answers_are_cached_by_ttl() {
    let dns = TestDns::start().await;
    let resolver = dns.resolver();
    for _ in 0..3 {
        assert_eq!(
            resolver.lookup("both.test").await.map(|a| a.addrs.len()),
            Ok(2)
        );
    }
    assert_eq!(
        dns.queries("both.test."),
        2,
        "one A and one AAAA query in all"
    );

    assert!(resolver.lookup("zero-ttl.test").await.is_ok());
    let after_first = dns.queries("zero-ttl.test.");
    assert!(resolver.lookup("zero-ttl.test").await.is_ok());
    assert!(
        dns.queries("zero-ttl.test.") > after_first,
        "TTL 0 is not cached"
    );
}

#[tokio::test]
async fn a_dead_server_fails_within_bounded_time() {
    // Bound but never answering: every query times out.
    let silent = UdpSocket::bind((LOCAL_V4, 0))
        .await
        .expect("bind silent socket");
    let resolver = Resolver::new(&[silent.local_addr().expect("addr")]).expect("resolver");
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(15), resolver.lookup("v4.test"))
        .await
        .expect("lookup gave up by itself");
    assert_eq!(result, Err(DnsError::Failed(LookupFailure::Timeout)));
    assert_eq!(
        result.map_err(|e| e.cause()).err().as_deref(),
        Some("timeout")
    );
    let elapsed = started.elapsed();
    assert!(elapsed < TIMEOUT * 4, "took {elapsed:?}");
}

#[tokio::test]
async fn lookups_are_timed_by_result() {
    let dns = TestDns::start().await;
    let metrics = Arc::new(Metrics::default());
    let resolver = dns.resolver().with_metrics(Arc::clone(&metrics));
    let _ = resolver.lookup("v4.test").await;
    let _ = resolver.lookup("nx.test").await;
    let text = metrics.encode();
    assert!(
        text.contains(r#"portcullis_dns_lookup_seconds_count{result="ok"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"portcullis_dns_lookup_seconds_count{result="nxdomain"} 1"#));
}

#[tokio::test]
async fn a_failed_family_is_noted_next_to_the_other_familys_answers() {
    let dns = TestDns::start().await;
    let resolver = dns.resolver();
    let answers = resolver.lookup("half.test").await.expect("AAAA answered");
    assert_eq!(answers.addrs, [IpAddr::V6(Ipv6Addr::LOCALHOST)]);
    assert_eq!(
        answers.failed,
        Some(LookupFailure::Code(ResponseCode::ServFail)),
        "{answers:?}"
    );
    let answers = resolver.lookup("both.test").await.expect("answered");
    assert_eq!(answers.failed, None, "{answers:?}");
}

#[tokio::test]
async fn lookups_in_flight_are_bounded() {
    // Never answers: a lookup holds its slot until it gives up.
    let silent = UdpSocket::bind((LOCAL_V4, 0))
        .await
        .expect("bind silent socket");
    let mut resolver = Resolver::new(&[silent.local_addr().expect("addr")])
        .expect("resolver")
        .with_max_lookups(1);
    resolver.queue_wait = Duration::from_millis(100);
    let first = tokio::spawn({
        let resolver = resolver.clone();
        async move { resolver.lookup("v4.test").await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while resolver.slots.available_permits() > 0 {
        assert!(Instant::now() < deadline, "first lookup never started");
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    assert_eq!(resolver.lookup("v6.test").await, Err(DnsError::Busy));
    assert!(
        started.elapsed() < TIMEOUT,
        "waited {:?}",
        started.elapsed()
    );
    // An IP literal needs no slot.
    assert!(resolver.lookup("127.0.0.1").await.is_ok());
    first.abort();
}

#[test]
fn builds_outside_a_runtime() {
    // main builds the resolver before (or beside) the runtime; nothing is spawned yet.
    assert!(Resolver::new(&[SocketAddr::from((LOCAL_V4, 53))]).is_ok());
}

#[test]
fn filter_splits_and_keeps_order() {
    let a = IpAddr::V4(LOCAL_V4);
    let b = IpAddr::V4(LOCAL_V4_B);
    let c = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let split = filter([a, b, c], |ip| ip != a);
    assert_eq!(split.dialable, [b, c]);
    assert_eq!(split.blocked, [a]);
    assert!(!split.all_blocked());
    assert!(filter([a], |_| false).all_blocked());
    assert!(!filter([], |_| false).all_blocked());
}

/// Only whole answers are kept for the next lookup, and only while valid:
/// both families answered (a failed family or a NODATA without the SOA that
/// gives its TTL is asked again next time), and a zero TTL is not kept.
#[tokio::test]
async fn only_whole_valid_answers_are_kept_for_the_next_lookup() {
    let dns = TestDns::start().await;
    let resolver = dns.resolver();
    for name in ["both.test", "half.test", "v4.test", "zero-ttl.test"] {
        let _ = resolver.lookup(name).await;
    }
    let now = Instant::now();
    let kept = |name| resolver.recent.get(name, now);
    assert_eq!(
        kept("both.test"),
        Some(vec![
            IpAddr::V4(LOCAL_V4_B),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        ])
    );
    assert_eq!(kept("half.test"), None, "the A lookup failed");
    assert_eq!(kept("v4.test"), None, "NODATA for AAAA without an SOA");
    assert_eq!(kept("zero-ttl.test"), None);
    let again = resolver.lookup("both.test").await.expect("kept answer");
    assert_eq!(again.addrs.len(), 2);
    assert_eq!(again.failed, None);
    assert_eq!(
        dns.queries("both.test."),
        2,
        "one A and one AAAA query in all"
    );
}
