//! In-process DNS server (hickory-server 0.26) answering `origin.test` and `origin2.test`
//! with 127.0.0.1 only (adapted from tests/e2e/support/dns.rs).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

/// The names the DNS server knows; everything else is NXDOMAIN.
pub const NAMES: [&str; 2] = ["origin.test", "origin2.test"];

/// TTL of the A answers (long enough that a caching resolver asks once per run).
const TTL: u32 = 300;

/// Binds UDP and TCP on the same 127.0.0.1 port and serves in the background for the rest of
/// the process. Returns the address to give portcullis as `--nameserver`.
pub async fn start() -> Result<SocketAddr, String> {
    let (udp, tcp) = bind_same_port().await?;
    let addr = udp.local_addr().map_err(|e| e.to_string())?;
    let mut server = Server::new(Handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 32);
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    Ok(addr)
}

/// Binds UDP on an OS-chosen port, then TCP on the same port; retries if TCP's is taken.
async fn bind_same_port() -> Result<(UdpSocket, TcpListener), String> {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("DNS: bind udp: {e}"))?;
        let port = udp.local_addr().map_err(|e| e.to_string())?.port();
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(format!(
        "DNS: no port free for both UDP and TCP: {last_err:?}"
    ))
}

struct Handler;

/// Picks the answer for one question: (rcode, answers, authority SOA).
fn answer(qname: &Name, qtype: RecordType) -> (ResponseCode, Vec<Record>, Vec<Record>) {
    let key = qname.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    if !NAMES.contains(&key.as_str()) {
        return (ResponseCode::NXDomain, Vec::new(), vec![negative_soa()]);
    }
    if qtype != RecordType::A {
        // NODATA: only A records exist, so AAAA lookups end quickly.
        return (ResponseCode::NoError, Vec::new(), vec![negative_soa()]);
    }
    // Owner name = the query's own spelling, so 0x20-randomising resolvers accept it.
    let a = RData::A(A(Ipv4Addr::LOCALHOST));
    let record = Record::from_rdata(qname.clone(), TTL, a);
    (ResponseCode::NoError, vec![record], Vec::new())
}

/// The SOA of the (pretend) root zone that gives negative answers their cache TTL.
fn negative_soa() -> Record {
    let name = |s: &str| Name::from_ascii(s).expect("valid name");
    let soa = SOA::new(
        name("ns.test."),
        name("hostmaster.test."),
        1,
        3600,
        600,
        86400,
        TTL,
    );
    Record::from_rdata(Name::root(), TTL, RData::SOA(soa))
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
                        answer(query.name(), query.query_type());
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
