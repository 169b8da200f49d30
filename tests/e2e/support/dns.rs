//! In-process DNS server (hickory-server 0.26) whose loopback-only A/AAAA records change at run time.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Records of one name. Empty A (or AAAA) set means NODATA for that type.
#[derive(Debug, Default)]
struct Entry {
    a: Vec<Ipv4Addr>,
    a_ttl: u32,
    aaaa: Vec<Ipv6Addr>,
    aaaa_ttl: u32,
    servfail: bool,
    /// Only queries of this type answer SERVFAIL.
    servfail_of: Option<RecordType>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    queries: HashMap<String, HashMap<RecordType, usize>>,
    negative_ttl: u32,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    // A panicking test must not cascade into every other use of the fixture.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Canonical lookup key: ASCII-lowercased, without the trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A running DNS server on 127.0.0.1 (UDP and TCP on the same port).
/// The server stops when this is dropped or [`TestDns::shutdown`] is awaited.
#[derive(Debug)]
pub struct TestDns {
    addr: SocketAddr,
    state: Shared,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestDns {
    /// Binds UDP and TCP on the same 127.0.0.1 port and starts serving.
    /// The sockets are bound before this returns, so no waiting is needed.
    pub async fn start() -> TestDns {
        let (udp, tcp) = bind_same_port().await;
        let addr = udp.local_addr().expect("udp local_addr");
        let state = Shared::default();
        let mut server = Server::new(Handler {
            state: state.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 32);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = server.block_until_done() => {}
                _ = stopped => {}
            }
            let _ = server.shutdown_gracefully().await;
        });
        TestDns {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The address (UDP and TCP) to give the proxy as `--nameserver`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the A records of `name` (replacing earlier ones, clearing SERVFAIL).
    /// An empty slice makes A queries answer NODATA.
    ///
    /// # Panics
    /// If any address is outside 127.0.0.0/8: test DNS must never point at a real host.
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr], ttl: u32) {
        for ip in ips {
            assert!(ip.is_loopback(), "TestDns refuses non-loopback A {ip}");
        }
        let mut state = lock(&self.state);
        let entry = state.entries.entry(key(name)).or_default();
        entry.servfail = false;
        entry.servfail_of.take_if(|t| *t == RecordType::A);
        entry.a = ips.to_vec();
        entry.a_ttl = ttl;
    }

    /// Sets the AAAA records of `name` (replacing earlier ones, clearing SERVFAIL).
    /// An empty slice makes AAAA queries answer NODATA.
    ///
    /// # Panics
    /// If any address is not `::1`: test DNS must never point at a real host.
    pub fn set_aaaa(&self, name: &str, ips: &[Ipv6Addr], ttl: u32) {
        for ip in ips {
            assert!(ip.is_loopback(), "TestDns refuses non-loopback AAAA {ip}");
        }
        let mut state = lock(&self.state);
        let entry = state.entries.entry(key(name)).or_default();
        entry.servfail = false;
        entry.servfail_of.take_if(|t| *t == RecordType::AAAA);
        entry.aaaa = ips.to_vec();
        entry.aaaa_ttl = ttl;
    }

    /// Sets AAAA records that embed a loopback IPv4 address (IPv4-mapped `::ffff:127.x.y.z`,
    /// NAT64 `64:ff9b::127.x.y.z`), to check the proxy reduces them to what they embed.
    ///
    /// # Panics
    /// If any address is not one of those forms: test DNS must never point at a real host.
    pub fn set_aaaa_embedding_loopback(&self, name: &str, ips: &[Ipv6Addr], ttl: u32) {
        for ip in ips {
            let s = ip.segments();
            let embedded = Ipv4Addr::from(u128::from(*ip) as u32);
            let form = s[..6] == [0, 0, 0, 0, 0, 0xffff] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            assert!(
                form && embedded.is_loopback(),
                "TestDns refuses AAAA {ip}: not a mapped or NAT64 form of 127.0.0.0/8"
            );
        }
        let mut state = lock(&self.state);
        let entry = state.entries.entry(key(name)).or_default();
        entry.servfail = false;
        entry.servfail_of.take_if(|t| *t == RecordType::AAAA);
        entry.aaaa = ips.to_vec();
        entry.aaaa_ttl = ttl;
    }

    /// Sets A records in private space (10.0.0.0/8), for a test that runs in
    /// a fresh network namespace of its own, where such an address can only
    /// be one the test put on the namespace's loopback.
    ///
    /// # Panics
    /// If an address is outside 10.0.0.0/8, or the namespace holds any
    /// interface but loopback: test DNS must never point at a real host.
    pub fn set_a_in_private_netns(&self, name: &str, ips: &[Ipv4Addr], ttl: u32) {
        let links = std::process::Command::new("ip")
            .args(["-o", "link"])
            .output()
            .expect("ip -o link");
        let links = String::from_utf8_lossy(&links.stdout).to_string();
        assert!(
            links.lines().count() == 1 && links.contains(": lo:"),
            "TestDns refuses private A records outside a fresh namespace:\n{links}"
        );
        for ip in ips {
            assert_eq!(
                ip.octets()[0],
                10,
                "TestDns refuses A {ip}: not in 10.0.0.0/8"
            );
        }
        let mut state = lock(&self.state);
        let entry = state.entries.entry(key(name)).or_default();
        entry.servfail = false;
        entry.servfail_of.take_if(|t| *t == RecordType::A);
        entry.a = ips.to_vec();
        entry.a_ttl = ttl;
    }

    /// Makes queries of type `qtype` for `name` answer SERVFAIL; other types keep their
    /// records. Setting records of that type again ends it.
    pub fn set_servfail_of(&self, name: &str, qtype: RecordType) {
        let mut state = lock(&self.state);
        state.entries.entry(key(name)).or_default().servfail_of = Some(qtype);
    }

    /// Makes every query for `name` answer SERVFAIL (drops its records).
    pub fn set_servfail(&self, name: &str) {
        let entry = Entry {
            servfail: true,
            ..Entry::default()
        };
        lock(&self.state).entries.insert(key(name), entry);
    }

    /// Forgets `name`: it answers NXDOMAIN again. Query counts are kept.
    pub fn remove(&self, name: &str) {
        lock(&self.state).entries.remove(&key(name));
    }

    /// TTL of the root SOA sent with NXDOMAIN/NODATA answers; resolvers cache negative
    /// answers for this long (RFC 2308). Default 0: negative answers are not cached, so a
    /// name added later is seen at once.
    pub fn set_negative_ttl(&self, ttl: u32) {
        lock(&self.state).negative_ttl = ttl;
    }

    /// How many queries (any type, any transport) arrived for `name` so far.
    /// A query is counted before its answer is sent.
    pub fn queries(&self, name: &str) -> usize {
        let state = lock(&self.state);
        state
            .queries
            .get(&key(name))
            .map_or(0, |n| n.values().sum())
    }

    /// How many queries of type `qtype` arrived for `name` so far. Useful because a
    /// resolver asking A and AAAA re-asks an uncached negative AAAA on every lookup.
    pub fn queries_of(&self, name: &str, qtype: RecordType) -> usize {
        let state = lock(&self.state);
        let counts = state.queries.get(&key(name));
        counts.and_then(|n| n.get(&qtype)).copied().unwrap_or(0)
    }

    /// Stops the server and waits until its sockets are closed.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Dropping the hickory Server drops its JoinSet, which aborts the socket tasks.
            task.abort();
        }
    }
}

/// Binds UDP on an OS-chosen port, then TCP on the same port; retries if TCP's is taken.
async fn bind_same_port() -> (UdpSocket, TcpListener) {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(("127.0.0.1", 0)).await.expect("bind udp");
        let port = udp.local_addr().expect("udp local_addr").port();
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(tcp) => return (udp, tcp),
            Err(e) => last_err = Some(e),
        }
    }
    panic!("no port free for both UDP and TCP: {last_err:?}");
}

struct Handler {
    state: Shared,
}

impl Handler {
    /// Counts the query and picks the answer for it: (rcode, answers, authority SOA).
    fn answer(&self, qname: &Name, qtype: RecordType) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        let k = key(&qname.to_ascii());
        let mut state = lock(&self.state);
        let counts = state.queries.entry(k.clone()).or_default();
        *counts.entry(qtype).or_default() += 1;
        let soa = vec![negative_soa(state.negative_ttl)];
        let Some(entry) = state.entries.get(&k) else {
            return (ResponseCode::NXDomain, Vec::new(), soa);
        };
        if entry.servfail || entry.servfail_of == Some(qtype) {
            return (ResponseCode::ServFail, Vec::new(), Vec::new());
        }
        // Owner name = the query's own spelling, so 0x20-randomising resolvers accept it.
        let records = match qtype {
            RecordType::A => (entry.a.iter())
                .map(|ip| Record::from_rdata(qname.clone(), entry.a_ttl, RData::A(A(*ip))))
                .collect(),
            RecordType::AAAA => (entry.aaaa.iter())
                .map(|ip| Record::from_rdata(qname.clone(), entry.aaaa_ttl, RData::AAAA(AAAA(*ip))))
                .collect(),
            _ => Vec::new(),
        };
        let soa = if records.is_empty() { soa } else { Vec::new() };
        (ResponseCode::NoError, records, soa)
    }
}

/// The SOA of the (pretend) root zone that gives negative answers their cache TTL.
fn negative_soa(ttl: u32) -> Record {
    let name = |s: &str| Name::from_ascii(s).expect("valid name");
    let soa = SOA::new(
        name("ns.test."),
        name("hostmaster.test."),
        1,
        3600,
        600,
        86400,
        ttl,
    );
    Record::from_rdata(Name::root(), ttl, RData::SOA(soa))
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = true;

        let (mut records, mut soa) = (Vec::new(), Vec::new());
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            metadata.response_code = ResponseCode::NotImp;
        } else {
            match request.request_info() {
                Ok(info) => {
                    let query = info.query.original();
                    (metadata.response_code, records, soa) =
                        self.answer(query.name(), query.query_type());
                }
                Err(_) => metadata.response_code = ResponseCode::FormErr,
            }
        }

        // A request carrying EDNS must get an OPT record back (RFC 6891).
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns.set_version(0);
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let response = builder.build(metadata, records.iter(), [], soa.iter(), []);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => {
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
