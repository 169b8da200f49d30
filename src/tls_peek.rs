//! ClientHello reading without terminating TLS: reassemble the handshake
//! across records and reads, then take the SNI and spot Encrypted ClientHello.
//!
//! The record layer is reassembled here (a few lines of framing); the
//! ClientHello and its extensions are parsed by `tls-parser`. The bytes read
//! are kept as they came and replayed upstream unchanged.

use std::time::Duration;

use tls_parser::{
    SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_client_hello_extensions,
    parse_tls_message_handshake,
};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::policy::{Host, Reason, TlsPolicy};

/// Largest ClientHello (handshake message, all records) we wait for.
pub const MAX_HELLO: usize = 16 * 1024;

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
/// `encrypted_client_hello` (RFC 9460 / draft-ietf-tls-esni).
const EXT_ECH: u16 = 0xfe0d;

/// What the first bytes of a stream turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirstFlight {
    /// Not a TLS handshake record: some other protocol.
    NotTls,
    Hello(ClientHello),
    /// A TLS handshake that is not a well-formed ClientHello.
    Malformed(&'static str),
    /// The ClientHello did not fit in [`MAX_HELLO`].
    TooLarge,
}

/// The parts of a ClientHello the policy looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// Every `host_name` entry of the server_name extension (normally one).
    pub server_names: Vec<String>,
    /// The ClientHello carries `encrypted_client_hello` (real or GREASE).
    pub ech: bool,
}

impl ClientHello {
    /// The single server name, if there is exactly one.
    pub fn sni(&self) -> Option<&str> {
        match self.server_names.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// Judges the bytes read so far: `None` means more are needed.
pub fn classify(buf: &[u8]) -> Option<FirstFlight> {
    let first = *buf.first()?;
    if first != RECORD_HANDSHAKE {
        return Some(FirstFlight::NotTls);
    }
    // Concatenate handshake record payloads until one whole handshake message is present.
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            break;
        }
        if rest[0] != RECORD_HANDSHAKE {
            return Some(FirstFlight::Malformed(
                "non-handshake record inside the ClientHello",
            ));
        }
        if rest[1] != 0x03 {
            return Some(FirstFlight::Malformed("unknown record version"));
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 {
            return Some(FirstFlight::Malformed("empty handshake record"));
        }
        if len > MAX_HELLO {
            return Some(FirstFlight::TooLarge);
        }
        let Some(payload) = rest.get(5..5 + len) else {
            break;
        };
        handshake.extend_from_slice(payload);
        rest = &rest[5 + len..];
        match message_len(&handshake) {
            Some(total) if total > MAX_HELLO => return Some(FirstFlight::TooLarge),
            Some(total) if handshake.len() >= total => {
                return Some(parse_hello(&handshake[..total]));
            }
            _ => {}
        }
    }
    match message_len(&handshake) {
        Some(total) if total > MAX_HELLO => Some(FirstFlight::TooLarge),
        _ if buf.len() > MAX_HELLO + 5 * 8 => Some(FirstFlight::TooLarge),
        _ => None,
    }
}

/// Length of the first handshake message (header included), once its header is in.
fn message_len(handshake: &[u8]) -> Option<usize> {
    let h = handshake.get(..4)?;
    Some(4 + (usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3])))
}

fn parse_hello(message: &[u8]) -> FirstFlight {
    if message[0] != HANDSHAKE_CLIENT_HELLO {
        return FirstFlight::Malformed("first handshake message is not a ClientHello");
    }
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) =
        parse_tls_message_handshake(message)
    else {
        return FirstFlight::Malformed("unparseable ClientHello");
    };
    let mut out = ClientHello::default();
    let Some(ext) = hello.ext else {
        return FirstFlight::Hello(out);
    };
    let Ok((rest, extensions)) = parse_tls_client_hello_extensions(ext) else {
        return FirstFlight::Malformed("unparseable ClientHello extensions");
    };
    if !rest.is_empty() {
        return FirstFlight::Malformed("trailing bytes after ClientHello extensions");
    }
    let mut sni_extensions = 0;
    for e in &extensions {
        match e {
            TlsExtension::SNI(names) => {
                sni_extensions += 1;
                for (kind, name) in names {
                    if *kind != SNIType::HostName {
                        continue;
                    }
                    match std::str::from_utf8(name) {
                        Ok(n) => out.server_names.push(n.to_string()),
                        Err(_) => return FirstFlight::Malformed("server name is not text"),
                    }
                }
            }
            TlsExtension::EncryptedServerName { .. } => out.ech = true,
            TlsExtension::Unknown(t, _) if t.0 == EXT_ECH => out.ech = true,
            _ => {}
        }
    }
    if sni_extensions > 1 {
        return FirstFlight::Malformed("two server_name extensions");
    }
    FirstFlight::Hello(out)
}

/// The CONNECT tunnel rule (SPEC 3): a ClientHello's server name must be the
/// CONNECT host (after normalisation) when `sni_must_match`, and an ECH
/// ClientHello is refused unless `ech: allow`. Bytes that are not TLS pass.
/// A ClientHello without SNI passes: it names no other destination, and the
/// tunnel still only reaches the CONNECT host's addresses.
pub fn check_tunnel(
    flight: &FirstFlight,
    connect_host: &Host,
    tls: &TlsPolicy,
) -> Result<(), Reason> {
    let hello = match flight {
        FirstFlight::NotTls => return Ok(()),
        FirstFlight::Malformed(_) | FirstFlight::TooLarge => return Err(Reason::BadRequest),
        FirstFlight::Hello(h) => h,
    };
    if hello.ech && !tls.ech_allowed {
        return Err(Reason::EchRefused);
    }
    if tls.sni_must_match {
        for name in &hello.server_names {
            if Host::parse(name).ok().as_ref() != Some(connect_host) {
                return Err(Reason::SniMismatch);
            }
        }
    }
    Ok(())
}

/// Reads from `r` into `buf` until the first flight is classified, the
/// peer closes, or `timeout` passes once a TLS record has started (a client
/// that has sent nothing yet is left alone: server-first protocols wait).
pub async fn read_first_flight<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> std::io::Result<FirstFlight> {
    let mut deadline = None;
    loop {
        if let Some(done) = classify(buf) {
            return Ok(done);
        }
        buf.reserve(4096);
        let n = if buf.is_empty() {
            // Nothing yet: a client may wait for the server to speak first.
            r.read_buf(buf).await?
        } else {
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
            match tokio::time::timeout_at(deadline, r.read_buf(buf)).await {
                Ok(read) => read?,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "ClientHello timeout",
                    ));
                }
            }
        };
        if n == 0 {
            return Ok(if buf.is_empty() {
                FirstFlight::NotTls
            } else {
                FirstFlight::Malformed("truncated ClientHello")
            });
        }
    }
}

/// Minimal ClientHellos for tests, fuzz seeds and benchmarks.
pub mod synth {
    use super::{EXT_ECH, HANDSHAKE_CLIENT_HELLO, RECORD_HANDSHAKE};

    /// A minimal, valid TLS 1.2-style ClientHello handshake message.
    pub fn hello_message(server_names: &[&str], ech: bool, padding: usize) -> Vec<u8> {
        let mut ext = Vec::new();
        if !server_names.is_empty() {
            let mut list = Vec::new();
            for n in server_names {
                list.push(0u8);
                list.extend_from_slice(&(n.len() as u16).to_be_bytes());
                list.extend_from_slice(n.as_bytes());
            }
            ext.extend_from_slice(&0u16.to_be_bytes());
            ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
            ext.extend_from_slice(&list);
        }
        if ech {
            ext.extend_from_slice(&EXT_ECH.to_be_bytes());
            ext.extend_from_slice(&4u16.to_be_bytes());
            ext.extend_from_slice(&[0, 1, 2, 3]);
        }
        if padding > 0 {
            ext.extend_from_slice(&21u16.to_be_bytes()); // padding extension
            ext.extend_from_slice(&(padding as u16).to_be_bytes());
            ext.extend(std::iter::repeat_n(0u8, padding));
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// Wraps a handshake message in records of at most `max` payload bytes.
    pub fn records(message: &[u8], max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(max) {
            out.extend_from_slice(&[RECORD_HANDSHAKE, 0x03, 0x01]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::synth::{hello_message, records};
    use super::*;

    fn hello(names: &[&str], ech: bool) -> FirstFlight {
        FirstFlight::Hello(ClientHello {
            server_names: names.iter().map(|s| s.to_string()).collect(),
            ech,
        })
    }

    #[test]
    fn one_record_hello_gives_sni() {
        let bytes = records(&hello_message(&["api.stripe.com"], false, 0), 16384);
        assert_eq!(classify(&bytes), Some(hello(&["api.stripe.com"], false)));
    }

    #[test]
    fn every_prefix_asks_for_more_then_the_whole_decides() {
        let bytes = records(&hello_message(&["api.stripe.com"], false, 3000), 700);
        for cut in 1..bytes.len() {
            assert_eq!(classify(&bytes[..cut]), None, "prefix of {cut} bytes");
        }
        assert_eq!(classify(&bytes), Some(hello(&["api.stripe.com"], false)));
    }

    #[test]
    fn ech_two_names_and_no_sni() {
        assert_eq!(
            classify(&records(&hello_message(&["a.example"], true, 0), 16384)),
            Some(hello(&["a.example"], true))
        );
        assert_eq!(
            classify(&records(&hello_message(&[], false, 0), 16384)),
            Some(hello(&[], false))
        );
        let two = classify(&records(
            &hello_message(&["a.example", "b.example"], false, 0),
            16384,
        ));
        assert_eq!(two, Some(hello(&["a.example", "b.example"], false)));
    }

    #[test]
    fn oversized_truncated_and_foreign_bytes() {
        let big = records(&hello_message(&["a.example"], false, 17_000), 16384);
        assert_eq!(classify(&big), Some(FirstFlight::TooLarge));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(FirstFlight::NotTls));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(FirstFlight::NotTls));
        let mut wrong = records(&hello_message(&["a.example"], false, 0), 16384);
        wrong[5] = 2; // ServerHello, not ClientHello
        assert!(matches!(classify(&wrong), Some(FirstFlight::Malformed(_))));
        let mut garbage = vec![0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04];
        garbage.extend_from_slice(&[0xff; 4]);
        assert!(matches!(
            classify(&garbage),
            Some(FirstFlight::Malformed(_))
        ));
    }

    /// ClientHellos captured from real clients (openssl, curl): the fuzz seeds.
    #[test]
    fn real_client_hellos() {
        let seed = |name: &str| {
            std::fs::read(format!(
                "{}/fuzz/seeds/client_hello/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        assert_eq!(
            classify(&seed("openssl_sni")),
            Some(hello(&["api.stripe.com"], false))
        );
        assert_eq!(
            classify(&seed("two_records")),
            Some(hello(&["api.stripe.com"], false))
        );
        assert_eq!(
            classify(&seed("openssl_tls12")),
            Some(hello(&["registry.npmjs.org"], false))
        );
        assert_eq!(classify(&seed("openssl_no_sni")), Some(hello(&[], false)));
        assert_eq!(
            classify(&seed("curl")),
            Some(hello(&["origin.test"], false))
        );
        assert_eq!(classify(&seed("not_tls")), Some(FirstFlight::NotTls));
        let whole = seed("openssl_sni");
        for cut in 1..whole.len() {
            assert_eq!(classify(&whole[..cut]), None, "prefix {cut}");
        }
    }

    #[tokio::test]
    async fn reads_one_byte_at_a_time() {
        let bytes = records(&hello_message(&["api.stripe.com"], false, 500), 100);
        let (mut tx, mut rx) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            for b in bytes {
                tokio::io::AsyncWriteExt::write_all(&mut tx, &[b])
                    .await
                    .unwrap();
            }
            tx
        });
        let mut buf = Vec::new();
        let got = read_first_flight(&mut rx, &mut buf, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, hello(&["api.stripe.com"], false));
        drop(writer.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_hello_times_out_but_silence_does_not_start_the_clock() {
        let (mut tx, mut rx) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut tx, &[0x16, 0x03])
            .await
            .unwrap();
        let mut buf = Vec::new();
        let err = read_first_flight(&mut rx, &mut buf, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);

        // A client that says nothing for longer than the timeout is left alone.
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let reading = async {
            let mut buf = Vec::new();
            read_first_flight(&mut rx, &mut buf, Duration::from_secs(3)).await
        };
        let speaking = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            tokio::io::AsyncWriteExt::write_all(&mut tx, b"EHLO")
                .await
                .unwrap();
        };
        let (got, ()) = tokio::join!(reading, speaking);
        assert_eq!(got.unwrap(), FirstFlight::NotTls);
    }

    #[test]
    fn tunnel_rule_matches_sni_and_refuses_ech() {
        let host = Host::parse("api.stripe.com").unwrap();
        let strict = TlsPolicy {
            sni_must_match: true,
            ech_allowed: false,
        };
        let loose = TlsPolicy {
            sni_must_match: false,
            ech_allowed: true,
        };
        let check = |names: &[&str], ech: bool, tls: &TlsPolicy| {
            check_tunnel(&hello(names, ech), &host, tls)
        };
        assert_eq!(check(&["api.stripe.com"], false, &strict), Ok(()));
        assert_eq!(check(&["API.Stripe.com."], false, &strict), Ok(()));
        assert_eq!(
            check(&["evil.example"], false, &strict),
            Err(Reason::SniMismatch)
        );
        assert_eq!(
            check(&["api.stripe.com", "evil.example"], false, &strict),
            Err(Reason::SniMismatch)
        );
        assert_eq!(
            check(&["api.stripe.com"], true, &strict),
            Err(Reason::EchRefused)
        );
        assert_eq!(check(&[], false, &strict), Ok(()));
        assert_eq!(check(&["evil.example"], true, &loose), Ok(()));
        assert_eq!(check_tunnel(&FirstFlight::NotTls, &host, &strict), Ok(()));
        assert_eq!(
            check_tunnel(&FirstFlight::TooLarge, &host, &strict),
            Err(Reason::BadRequest)
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = classify(&bytes);
            let mut tls = vec![0x16, 0x03, 0x01];
            tls.extend_from_slice(&bytes);
            let _ = classify(&tls);
        }
    }
}
