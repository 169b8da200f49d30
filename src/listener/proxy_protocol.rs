//! PROXY protocol v1/v2 headers (`--proxy-protocol`): who the client behind a
//! load balancer is, read before anything else and never a byte further.
//!
//! The header is parsed by the `ppp` crate; this module reads exactly its
//! bytes off the connection (what follows is the client's own HTTP or TLS
//! stream) and turns it into the connection's [`Peer`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use ppp::{v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::Peer;
use crate::telemetry::label_enum;

/// How a v2 header starts.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// How a v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 header, CRLF included: the protocol's own limit.
const V1_MAX: usize = 107;
/// The fixed part of a v2 header: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// Most bytes of addresses and TLVs a v2 header may announce. An AWS NLB
/// sends under 100; the protocol's 16-bit length would allow 64 KiB per
/// connection before a single request byte.
pub(crate) const V2_MAX_PAYLOAD: usize = 4096;
/// The AWS TLV type, and its subtype carrying the VPC endpoint id.
const PP2_TYPE_AWS: u8 = 0xEA;
const PP2_SUBTYPE_AWS_VPCE_ID: u8 = 0x01;
/// Longest VPC endpoint id accepted (`vpce-` and 17 hex digits today).
const VPCE_MAX: usize = 64;

label_enum! {
    /// Why a connection's PROXY protocol header was refused, for
    /// `proxy_protocol_errors_total`.
    HeaderProblem {
        /// The peer is outside `--proxy-protocol-from`.
        Untrusted => "untrusted",
        /// The connection starts with something else than a PROXY header.
        Missing => "missing",
        /// A header that breaks the protocol's rules.
        Malformed => "malformed",
        /// A header longer than the protocol (v1) or the proxy (v2) allows.
        Oversized => "oversized",
        /// The connection ended in the middle of the header.
        Truncated => "truncated",
        /// No complete header within `--header-timeout`.
        Timeout => "timeout",
    }
}

/// A connection that did not start with a header the proxy accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    /// Closed before sending a single byte (a port check): nothing to refuse.
    #[error("connection closed before sending anything")]
    Empty,
    #[error("peer {0} may not send a PROXY protocol header: it is outside --proxy-protocol-from")]
    Untrusted(IpAddr),
    #[error("no PROXY protocol header: the connection starts with other bytes")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error(
        "PROXY protocol v2 header announces {0} bytes of addresses and TLVs, over the {V2_MAX_PAYLOAD} allowed"
    )]
    OversizedV2(usize),
    #[error("PROXY protocol v1 header without its CRLF within {V1_MAX} bytes")]
    OversizedV1,
    #[error("connection closed after {0} bytes of a PROXY protocol header")]
    Truncated(usize),
    #[error("no complete PROXY protocol header within the header timeout ({})", humantime::format_duration(*.0))]
    Timeout(Duration),
}

impl HeaderProblem {
    /// Every value, for counters that start at zero.
    pub(crate) const ALL: [HeaderProblem; 6] = [
        HeaderProblem::Untrusted,
        HeaderProblem::Missing,
        HeaderProblem::Malformed,
        HeaderProblem::Oversized,
        HeaderProblem::Truncated,
        HeaderProblem::Timeout,
    ];
}

impl HeaderError {
    /// The metric label; `None` for a connection that sent nothing.
    pub(crate) fn problem(&self) -> Option<HeaderProblem> {
        Some(match self {
            HeaderError::Empty => return None,
            HeaderError::Untrusted(_) => HeaderProblem::Untrusted,
            HeaderError::Missing => HeaderProblem::Missing,
            HeaderError::Malformed(_) => HeaderProblem::Malformed,
            HeaderError::OversizedV1 | HeaderError::OversizedV2(_) => HeaderProblem::Oversized,
            HeaderError::Truncated(_) => HeaderProblem::Truncated,
            HeaderError::Timeout(_) => HeaderProblem::Timeout,
        })
    }
}

/// `--proxy-protocol`: every connection starts with a header, from these peers.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProxyProtocol {
    /// `--proxy-protocol-from`; empty: any peer.
    from: Vec<IpNet>,
}

impl ProxyProtocol {
    pub(crate) fn new(from: Vec<IpNet>) -> ProxyProtocol {
        ProxyProtocol { from }
    }

    /// Whether `peer` may send a header (an IPv4 peer of a `[::]` socket as IPv4).
    fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.from.is_empty() || self.from.iter().any(|net| net.contains(&peer))
    }

    /// Reads the header of a connection from `peer`, within `timeout`, and
    /// not a byte past it. A peer outside `--proxy-protocol-from` is refused
    /// before anything is read.
    pub(crate) async fn read<R: AsyncRead + Unpin>(
        &self,
        stream: &mut R,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Result<Peer, HeaderError> {
        if !self.trusts(peer.ip()) {
            return Err(HeaderError::Untrusted(peer.ip()));
        }
        tokio::time::timeout(timeout, read_header(stream, peer))
            .await
            .unwrap_or(Err(HeaderError::Timeout(timeout)))
    }
}

/// Reads a v1 or v2 header. The first 12 bytes tell which (shorter than
/// either header can be, so reading them never reads past one).
async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
    peer: SocketAddr,
) -> Result<Peer, HeaderError> {
    let mut start = [0u8; V2_SIGNATURE.len()];
    let mut got = 0;
    while got < start.len() {
        match stream.read(&mut start[got..]).await {
            Ok(0) if got == 0 => return Err(HeaderError::Empty),
            Ok(0) | Err(_) => return Err(HeaderError::Truncated(got)),
            Ok(n) => got += n,
        }
        // Refuse as soon as the bytes cannot be a header: a client that
        // sent a short request and waits is not kept to the timeout.
        let seen = &start[..got];
        let v1 = seen.starts_with(V1_PREFIX) || V1_PREFIX.starts_with(seen);
        if !v1 && !V2_SIGNATURE.starts_with(seen) {
            return Err(HeaderError::Missing);
        }
    }
    if &start == V2_SIGNATURE {
        read_v2(stream, peer).await
    } else {
        read_v1(stream, &start, peer).await
    }
}

/// Fills `buf` from `stream`; `before`: header bytes already read, for the error.
async fn fill<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut [u8],
    before: usize,
) -> Result<(), HeaderError> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => return Err(HeaderError::Truncated(before + got)),
            Ok(n) => got += n,
        }
    }
    Ok(())
}

/// The rest of a v2 header: the fixed part's last 4 bytes, then exactly the
/// length they announce.
async fn read_v2<R: AsyncRead + Unpin>(
    stream: &mut R,
    peer: SocketAddr,
) -> Result<Peer, HeaderError> {
    let mut header = Vec::with_capacity(V2_FIXED + 64);
    header.extend_from_slice(V2_SIGNATURE);
    header.resize(V2_FIXED, 0);
    fill(
        stream,
        &mut header[V2_SIGNATURE.len()..],
        V2_SIGNATURE.len(),
    )
    .await?;
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if len > V2_MAX_PAYLOAD {
        return Err(HeaderError::OversizedV2(len));
    }
    header.resize(V2_FIXED + len, 0);
    fill(stream, &mut header[V2_FIXED..], V2_FIXED).await?;
    parse_v2(&header, peer)
}

fn parse_v2(bytes: &[u8], peer: SocketAddr) -> Result<Peer, HeaderError> {
    let malformed = |e: &dyn std::fmt::Display| HeaderError::Malformed(format!("v2: {e}"));
    let header = v2::Header::try_from(bytes).map_err(|e| malformed(&e))?;
    if header.command == v2::Command::Local {
        // The sender's own connection (a load balancer's health check): the
        // protocol says to use the real endpoints and ignore the rest.
        return Ok(Peer::at(peer));
    }
    if header.protocol != v2::Protocol::Stream {
        return Err(malformed(&"the connection it describes is not TCP"));
    }
    let addr = match header.addresses {
        v2::Addresses::IPv4(a) => SocketAddr::from((a.source_address, a.source_port)),
        v2::Addresses::IPv6(a) => SocketAddr::from((a.source_address, a.source_port)),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => {
            return Err(malformed(&"a PROXY command without an IP source address"));
        }
    };
    let mut vpc_endpoint = None;
    for tlv in header.tlvs() {
        let tlv = tlv.map_err(|e| malformed(&e))?;
        if tlv.kind != PP2_TYPE_AWS || tlv.value.first() != Some(&PP2_SUBTYPE_AWS_VPCE_ID) {
            continue;
        }
        if vpc_endpoint.is_some() {
            return Err(malformed(&"two AWS VPC endpoint TLVs"));
        }
        vpc_endpoint =
            Some(vpc_endpoint_id(&tlv.value[1..]).ok_or_else(|| {
                malformed(&"the AWS VPC endpoint TLV does not hold an endpoint id")
            })?);
    }
    Ok(Peer { addr, vpc_endpoint })
}

/// The VPC endpoint id an AWS TLV holds: letters, digits and `-` only, so
/// that it is safe in audit records, logs and policy comparisons.
fn vpc_endpoint_id(value: &[u8]) -> Option<Arc<str>> {
    let ok = !value.is_empty()
        && value.len() <= VPCE_MAX
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
    let id = std::str::from_utf8(value).ok().filter(|_| ok)?;
    Some(Arc::from(id))
}

/// The rest of a v1 header, one byte at a time up to its LF: the line has
/// no length field, and a byte more would be the client's. (Load balancers
/// send v2; v1 costs at most 95 one-byte reads.)
async fn read_v1<R: AsyncRead + Unpin>(
    stream: &mut R,
    start: &[u8],
    peer: SocketAddr,
) -> Result<Peer, HeaderError> {
    if start.contains(&b'\n') {
        // Shorter than any valid header.
        return Err(HeaderError::Malformed("v1: line too short".into()));
    }
    let mut line = Vec::with_capacity(V1_MAX);
    line.extend_from_slice(start);
    while line.last() != Some(&b'\n') {
        if line.len() >= V1_MAX {
            return Err(HeaderError::OversizedV1);
        }
        let mut byte = [0u8];
        fill(stream, &mut byte, line.len()).await?;
        line.push(byte[0]);
    }
    parse_v1(&line, peer)
}

fn parse_v1(line: &[u8], peer: SocketAddr) -> Result<Peer, HeaderError> {
    let header =
        v1::Header::try_from(line).map_err(|e| HeaderError::Malformed(format!("v1: {e}")))?;
    // The parser stops at the first CR: the header must be the whole line.
    if header.header.len() != line.len() {
        return Err(HeaderError::Malformed("v1: bytes after the CRLF".into()));
    }
    Ok(match header.addresses {
        v1::Addresses::Tcp4(a) => Peer::at(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Peer::at(SocketAddr::from((a.source_address, a.source_port))),
        // The protocol says: use the real endpoints.
        v1::Addresses::Unknown => Peer::at(peer),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP_PEER: &str = "127.0.0.1:40000";
    const VPCE: &[u8] = b"vpce-0a1b2c3d4e5f67890";

    /// A v2 header: `command` (0x20 LOCAL, 0x21 PROXY), `family` byte, the
    /// address block and TLVs, with `len` as announced (`None`: their length).
    fn v2(command: u8, family: u8, body: &[u8], len: Option<u16>) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(command);
        h.push(family);
        let len = len.unwrap_or(u16::try_from(body.len()).unwrap());
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    /// 192.0.2.7:5555 -> 10.0.0.1:3128, then `tlvs`.
    fn v4_body(tlvs: &[u8]) -> Vec<u8> {
        let mut b = vec![192, 0, 2, 7, 10, 0, 0, 1];
        b.extend_from_slice(&5555u16.to_be_bytes());
        b.extend_from_slice(&3128u16.to_be_bytes());
        b.extend_from_slice(tlvs);
        b
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut t = vec![kind];
        t.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        t.extend_from_slice(value);
        t
    }

    fn aws_vpce(id: &[u8]) -> Vec<u8> {
        let mut value = vec![PP2_SUBTYPE_AWS_VPCE_ID];
        value.extend_from_slice(id);
        tlv(PP2_TYPE_AWS, &value)
    }

    /// Reads a header off `input` followed by `rest`; returns the outcome and
    /// what was left unread.
    async fn read(from: &[&str], input: &[u8]) -> (Result<Peer, HeaderError>, Vec<u8>) {
        let pp = ProxyProtocol::new(from.iter().map(|c| c.parse().unwrap()).collect());
        let mut stream = input;
        let got = pp
            .read(
                &mut stream,
                TCP_PEER.parse().unwrap(),
                Duration::from_secs(5),
            )
            .await;
        (got, stream.to_vec())
    }

    fn at(addr: &str, vpce: Option<&[u8]>) -> Peer {
        Peer {
            addr: addr.parse().unwrap(),
            vpc_endpoint: vpce.map(|v| Arc::from(std::str::from_utf8(v).unwrap())),
        }
    }

    #[tokio::test]
    async fn headers_and_what_they_make_of_the_client() {
        let proxy = 0x21;
        let local = 0x20;
        let tcp4 = 0x11;
        let mut v6 = Vec::new();
        v6.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6.extend_from_slice(&[0; 16]);
        v6.extend_from_slice(&[0x15, 0xb3, 0x0c, 0x38]);
        let other_tlvs = [tlv(0x04, b""), tlv(0xEA, &[0x02, 1, 2])].concat();
        let cases: Vec<(&str, Vec<u8>, Result<Peer, HeaderError>)> = vec![
            (
                "v1 TCP4: the source is the client",
                b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 3128\r\n".to_vec(),
                Ok(at("192.0.2.7:5555", None)),
            ),
            (
                "v1 TCP6",
                b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 3128\r\n".to_vec(),
                Ok(at("[2001:db8::7]:5555", None)),
            ),
            (
                "v1 UNKNOWN: the peer itself",
                b"PROXY UNKNOWN\r\n".to_vec(),
                Ok(at(TCP_PEER, None)),
            ),
            (
                "v2 PROXY over IPv4 without TLVs",
                v2(proxy, tcp4, &v4_body(&[]), None),
                Ok(at("192.0.2.7:5555", None)),
            ),
            (
                "v2 with the AWS VPC endpoint TLV",
                v2(proxy, tcp4, &v4_body(&aws_vpce(VPCE)), None),
                Ok(at("192.0.2.7:5555", Some(VPCE))),
            ),
            (
                "v2 with other TLVs, AWS subtype 2 included, is no endpoint",
                v2(proxy, tcp4, &v4_body(&other_tlvs), None),
                Ok(at("192.0.2.7:5555", None)),
            ),
            (
                "v2 PROXY over IPv6",
                v2(proxy, 0x21, &v6, None),
                Ok(at("[2001:db8::7]:5555", None)),
            ),
            (
                "v2 LOCAL (a health check): the peer itself",
                v2(local, 0x00, &[], None),
                Ok(at(TCP_PEER, None)),
            ),
            (
                "a plain CONNECT is no header",
                b"CONNECT example.com:443 HTTP/1.1\r\n\r\n".to_vec(),
                Err(HeaderError::Missing),
            ),
            (
                "refused at the first byte that cannot start a header",
                b"G".to_vec(),
                Err(HeaderError::Missing),
            ),
            ("nothing at all", Vec::new(), Err(HeaderError::Empty)),
            (
                "v1 cut short",
                b"PROXY TCP4 192.0.2.7".to_vec(),
                Err(HeaderError::Truncated(20)),
            ),
            (
                "v2 signature cut short",
                V2_SIGNATURE[..7].to_vec(),
                Err(HeaderError::Truncated(7)),
            ),
            (
                "v2 addresses cut short",
                v2(proxy, tcp4, &v4_body(&[])[..6], Some(12)),
                Err(HeaderError::Truncated(22)),
            ),
            (
                "v2 over the size cap is refused before it is read",
                v2(proxy, tcp4, &[], Some(5000)),
                Err(HeaderError::OversizedV2(5000)),
            ),
            (
                "v1 without its CRLF",
                [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat(),
                Err(HeaderError::OversizedV1),
            ),
        ];
        for (name, input, want) in cases {
            let (got, _) = read(&[], &input).await;
            assert_eq!(got, want, "{name}");
        }
    }

    #[tokio::test]
    async fn malformed_headers_are_refused() {
        let proxy = 0x21;
        let tcp4 = 0x11;
        let mut past_end = v4_body(&[]);
        // A TLV announcing 200 bytes, with 3 there.
        past_end.extend_from_slice(&[0xEA, 0, 200, 1, b'v', b'p']);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("v1 garbage", b"PROXY garbage here\r\n".to_vec()),
            (
                "v1 bad address",
                b"PROXY TCP4 192.0.2.777 10.0.0.1 1 2\r\n".to_vec(),
            ),
            (
                "v1 LF without CR",
                b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 3128\n".to_vec(),
            ),
            (
                "v1 too short for a header",
                b"PROXY \r\nGET / HTTP".to_vec(),
            ),
            (
                "v2 TLV length past its end",
                v2(proxy, tcp4, &past_end, None),
            ),
            ("v2 version 3", v2(0x31, tcp4, &v4_body(&[]), None)),
            ("v2 unknown command", v2(0x2F, tcp4, &v4_body(&[]), None)),
            ("v2 UDP", v2(proxy, 0x12, &v4_body(&[]), None)),
            ("v2 PROXY without an address", v2(proxy, 0x00, &[], None)),
            (
                "v2 length shorter than the addresses",
                v2(proxy, tcp4, &[1, 2, 3], None),
            ),
            (
                "v2 VPC endpoint id with a quote",
                v2(proxy, tcp4, &v4_body(&aws_vpce(b"vpce-\"x")), None),
            ),
            (
                "v2 empty VPC endpoint id",
                v2(proxy, tcp4, &v4_body(&aws_vpce(b"")), None),
            ),
            (
                "v2 two VPC endpoint TLVs",
                v2(
                    proxy,
                    tcp4,
                    &v4_body(&[aws_vpce(VPCE), aws_vpce(b"vpce-1")].concat()),
                    None,
                ),
            ),
        ];
        for (name, input) in cases {
            let (got, _) = read(&[], &input).await;
            assert!(
                matches!(got, Err(HeaderError::Malformed(_))),
                "{name}: {got:?}"
            );
        }
    }

    /// The bytes after the header are the client's: none of them is consumed.
    #[tokio::test]
    async fn nothing_past_the_header_is_read() {
        let request = b"CONNECT example.com:443 HTTP/1.1\r\n\r\n";
        let headers = [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 3128\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(0x21, 0x11, &v4_body(&aws_vpce(VPCE)), None),
            v2(0x20, 0x00, &[], None),
        ];
        for header in headers {
            let (got, rest) = read(&[], &[header.as_slice(), request].concat()).await;
            assert!(got.is_ok(), "{got:?}");
            assert_eq!(rest, request, "{:?}", String::from_utf8_lossy(&header));
        }
    }

    #[tokio::test]
    async fn only_listed_peers_may_send_a_header() {
        let header = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 3128\r\n";
        let (got, rest) = read(&["10.0.0.0/8"], header).await;
        assert_eq!(
            got,
            Err(HeaderError::Untrusted("127.0.0.1".parse().unwrap()))
        );
        assert_eq!(rest, header, "nothing is read from an untrusted peer");
        let (got, _) = read(&["10.0.0.0/8", "127.0.0.0/8"], header).await;
        assert_eq!(got, Ok(at("192.0.2.7:5555", None)));
        let pp = ProxyProtocol::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(
            pp.trusts("::ffff:127.0.0.1".parse().unwrap()),
            "mapped IPv4"
        );
    }

    /// On a paused clock: the timeout passes as soon as the read waits.
    #[tokio::test(start_paused = true)]
    async fn a_header_that_never_completes_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4 192.0.2.7")
            .await
            .unwrap();
        let pp = ProxyProtocol::default();
        let timeout = Duration::from_secs(10);
        let read = pp.read(&mut server, TCP_PEER.parse().unwrap(), timeout);
        // The header timeout, not this later one, ends the read.
        let got = tokio::time::timeout(timeout * 2, read).await;
        assert_eq!(got, Ok(Err(HeaderError::Timeout(timeout))));
        drop(client);
    }

    proptest::proptest! {
        /// Any bytes after either signature: no panic, and an accepted header
        /// leaves the rest of the input unread (it is never longer than what
        /// the parser accepted as the header).
        #[test]
        fn arbitrary_bytes_never_panic_or_overread(
            v2_start in proptest::bool::ANY,
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let start: &[u8] = if v2_start { V2_SIGNATURE } else { b"PROXY TCP4 " };
            let input = [start, &body].concat();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let (got, rest) = runtime.block_on(read(&[], &input));
            if got.is_ok() {
                let used = input.len() - rest.len();
                let header = &input[..used];
                let whole = if v2_start {
                    v2::Header::try_from(header).is_ok_and(|h| h.len() == used)
                } else {
                    v1::Header::try_from(header).is_ok_and(|h| h.header.len() == used)
                };
                proptest::prop_assert!(whole, "{:?}", header);
            }
        }
    }
}
