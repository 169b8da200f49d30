//! One ClientHello: the fixed part is parsed by `tls-parser`, the extension
//! list here, strictly (a lenient reader would let a server see a name the
//! proxy did not).

use tls_parser::{TlsMessage, TlsMessageHandshake, parse_tls_message_handshake};

use super::Violation;
use crate::policy::Host;

const EXT_SERVER_NAME: u16 = 0;
/// `encrypted_client_hello`: the final codepoint (0xfe0d), the drafts'
/// (0xfe08-0xfe0c), and draft ESNI (0xffce).
fn is_ech(ext: u16) -> bool {
    matches!(ext, 0xfe08..=0xfe0d | 0xffce)
}
const SNI_HOST_NAME: u8 = 0;

/// The parts of a ClientHello the policy looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The server name, normalised; `None` when the hello carries no
    /// `server_name` extension.
    pub sni: Option<Host>,
    /// The hello carries `encrypted_client_hello` or ESNI (real or GREASE).
    pub ech: bool,
}

/// Parses one whole ClientHello handshake message (header included).
pub(super) fn parse(message: &[u8]) -> Result<ClientHello, Violation> {
    let Ok((rest, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) =
        parse_tls_message_handshake(message)
    else {
        return Err(Violation::tls("unparseable ClientHello"));
    };
    if !rest.is_empty() {
        return Err(Violation::tls("trailing bytes after the ClientHello"));
    }
    let mut out = ClientHello::default();
    let mut seen: Vec<u16> = Vec::new();
    let mut exts = hello.ext.unwrap_or_default();
    while !exts.is_empty() {
        let (kind, data, rest) = take_extension(exts)?;
        exts = rest;
        if seen.contains(&kind) {
            return Err(Violation::tls("an extension appears twice"));
        }
        seen.push(kind);
        if kind == EXT_SERVER_NAME {
            out.sni = Some(server_name(data)?);
        } else if is_ech(kind) {
            out.ech = true;
        }
    }
    Ok(out)
}

/// Splits `type (2) | length (2) | data` off the front of an extension list.
fn take_extension(list: &[u8]) -> Result<(u16, &[u8], &[u8]), Violation> {
    let bad = Violation::tls("extension lengths do not add up");
    let [a, b, c, d, rest @ ..] = list else {
        return Err(bad);
    };
    let len = usize::from(u16::from_be_bytes([*c, *d]));
    if rest.len() < len {
        return Err(bad);
    }
    let (data, rest) = rest.split_at(len);
    Ok((u16::from_be_bytes([*a, *b]), data, rest))
}

/// The `server_name` extension (RFC 6066 3): a list that fills the
/// extension exactly, holding exactly one `host_name`, which must be a valid
/// DNS name (not an IP literal).
fn server_name(data: &[u8]) -> Result<Host, Violation> {
    let bad = Violation::tls("malformed server_name extension");
    let [l0, l1, list @ ..] = data else {
        return Err(bad);
    };
    if usize::from(u16::from_be_bytes([*l0, *l1])) != list.len() {
        return Err(bad);
    }
    let mut name = None;
    let mut rest = list;
    while !rest.is_empty() {
        let [kind, n0, n1, tail @ ..] = rest else {
            return Err(bad);
        };
        let len = usize::from(u16::from_be_bytes([*n0, *n1]));
        if tail.len() < len {
            return Err(bad);
        }
        let (value, tail) = tail.split_at(len);
        rest = tail;
        if *kind != SNI_HOST_NAME || name.replace(value).is_some() {
            return Err(Violation::tls(
                "server_name must hold exactly one host name",
            ));
        }
    }
    let name = name.ok_or(Violation::tls("server_name holds no host name"))?;
    let name = std::str::from_utf8(name).map_err(|_| Violation::tls("server name is not text"))?;
    match Host::parse(name) {
        Ok(host @ Host::Name(_)) => Ok(host),
        Ok(Host::Ip(_)) => Err(Violation::tls("server name is an IP address")),
        Err(_) => Err(Violation::tls("server name is not a valid host name")),
    }
}

/// ClientHellos and server flights for tests, fuzz seeds and benchmarks.
pub mod synth {
    /// Extension type of the TLS 1.3 `key_share`.
    const EXT_KEY_SHARE: u16 = 51;

    fn ext(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn u16_list(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// The `server_name` extension naming each of `names`.
    pub fn sni_extension(names: &[&str]) -> Vec<u8> {
        let mut list = Vec::new();
        for n in names {
            list.push(0u8);
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n.as_bytes());
        }
        ext(0, &u16_list(&list))
    }

    /// A ClientHello handshake message with the given extensions, raw.
    pub fn hello_with_extensions(extensions: &[u8]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]); // random
        body.push(32); // legacy session id, as TLS 1.3 clients send one
        body.extend_from_slice(&[0x11; 32]);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(extensions);
        let mut msg = vec![super::super::HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// A minimal, valid ClientHello handshake message.
    pub fn hello_message(server_names: &[&str], ech: bool, padding: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        if !server_names.is_empty() {
            exts.extend_from_slice(&sni_extension(server_names));
        }
        if ech {
            exts.extend_from_slice(&ext(0xfe0d, &[0, 1, 2, 3]));
        }
        if padding > 0 {
            exts.extend_from_slice(&ext(21, &vec![0u8; padding]));
        }
        hello_with_extensions(&exts)
    }

    /// A TLS 1.3 ClientHello offering X25519 only, as a client that forces
    /// a HelloRetryRequest sends it (`key_share` empty: RFC 8446 4.2.8), or
    /// with a share (any 32 bytes are an X25519 public key).
    pub fn tls13_hello(server_name: Option<&str>, share: Option<[u8; 32]>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = server_name {
            exts.extend_from_slice(&sni_extension(&[name]));
        }
        exts.extend_from_slice(&ext(10, &u16_list(&[0x00, 0x1d]))); // x25519
        exts.extend_from_slice(&ext(13, &u16_list(&[0x04, 0x03, 0x08, 0x04, 0x08, 0x07])));
        exts.extend_from_slice(&ext(43, &[2, 0x03, 0x04])); // TLS 1.3 only
        let shares = match share {
            Some(key) => [&[0x00, 0x1d, 0x00, 0x20][..], &key].concat(),
            None => Vec::new(),
        };
        exts.extend_from_slice(&ext(EXT_KEY_SHARE, &u16_list(&shares)));
        hello_with_extensions(&exts)
    }

    /// A ServerHello handshake message; a HelloRetryRequest when `retry`.
    pub fn server_hello(retry: bool) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        if retry {
            body.extend_from_slice(&super::super::server::HELLO_RETRY_RANDOM);
        } else {
            body.extend_from_slice(&[9u8; 32]);
        }
        body.extend_from_slice(&[0, 0x13, 0x01, 0]); // no session id, suite, compression
        body.extend_from_slice(&[0, 6, 0, 43, 0, 2, 0x03, 0x04]); // supported_versions
        let mut msg = vec![super::super::HANDSHAKE_SERVER_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// Wraps a handshake message in handshake records of at most `max` payload bytes.
    pub fn records(message: &[u8], max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(max) {
            out.extend_from_slice(&record_header(super::super::CONTENT_HANDSHAKE, chunk.len()));
            out.extend_from_slice(chunk);
        }
        out
    }

    /// One record of `content_type` around `payload`.
    pub fn record(content_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = record_header(content_type, payload.len()).to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn record_header(content_type: u8, len: usize) -> [u8; 5] {
        let [hi, lo] = (len as u16).to_be_bytes();
        [content_type, 0x03, 0x01, hi, lo]
    }

    /// A warning-level alert (`close_notify`): what a client may try to
    /// send before its ClientHello.
    pub fn warning_alert() -> Vec<u8> {
        record(super::super::CONTENT_ALERT, &[1, 0])
    }

    /// The ChangeCipherSpec record TLS 1.3 clients send for middlebox compatibility.
    pub fn change_cipher_spec() -> Vec<u8> {
        record(super::super::CONTENT_CHANGE_CIPHER_SPEC, &[1])
    }
}
