//! The client's side of the handshake: records are reassembled and judged
//! before any byte of them goes upstream.

use super::hello::{self, ClientHello};
use super::{
    CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_CHANGE_CIPHER_SPEC, CONTENT_HANDSHAKE,
    HANDSHAKE_CLIENT_HELLO, MAX_HELLO, MAX_RECORD, Violation, starts_tls,
};
use crate::policy::{Host, Reason};

/// Records one ClientHello may be split over; real clients use one or two.
const MAX_FRAGMENTS: usize = 64;

/// What every ClientHello's server name must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The CONNECT host (`tls.sni_must_match`); a hello without SNI passes.
    Host(Host),
    /// Any name; later hellos must still name the same as the first.
    Any,
}

/// The client's bytes of one stream, judged as they arrive. Bytes are read
/// into [`ClientFlight::buffer`], judged by [`ClientFlight::inspect`], and
/// only [`ClientFlight::ready`] bytes may be forwarded: a ClientHello is
/// held until it is whole and has passed.
#[derive(Debug)]
pub struct ClientFlight {
    /// Bytes read and not yet forwarded.
    buf: Vec<u8>,
    /// `None` until the first bytes tell.
    tls: Option<bool>,
    /// `buf[..scanned]` is whole records, already judged.
    scanned: usize,
    /// Start of the first record of a handshake message not yet whole.
    held_from: Option<usize>,
    /// Handshake payload not yet a whole message.
    handshake: Vec<u8>,
    /// Records the message in `handshake` spans so far.
    fragments: usize,
    /// Records judged so far.
    records: usize,
    first: Option<ClientHello>,
    /// The server name of the last ClientHello parsed, passed or not.
    last_sni: Option<Host>,
    hellos: usize,
    expect: Expect,
    ech_allowed: bool,
    failed: Option<Violation>,
}

impl ClientFlight {
    /// A flight checked against `expect`; `ech_allowed` lets encrypted_client_hello through.
    pub fn new(expect: Expect, ech_allowed: bool) -> ClientFlight {
        ClientFlight {
            buf: Vec::new(),
            tls: None,
            scanned: 0,
            held_from: None,
            handshake: Vec::new(),
            fragments: 0,
            records: 0,
            first: None,
            last_sni: None,
            hellos: 0,
            expect,
            ech_allowed,
            failed: None,
        }
    }

    /// Where the caller appends bytes read from the client; call
    /// [`ClientFlight::inspect`] after.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// `Some(true)` once the stream starts like TLS, `Some(false)` when it
    /// does not (then every byte is ready and nothing is judged).
    pub fn is_tls(&self) -> Option<bool> {
        self.tls
    }

    /// The first ClientHello, once it is whole and has passed.
    pub fn first_hello(&self) -> Option<&ClientHello> {
        self.first.as_ref()
    }

    /// The server name of the last ClientHello parsed, also when it was
    /// refused: what the audit record shows.
    pub fn last_sni(&self) -> Option<&Host> {
        self.last_sni.as_ref()
    }

    /// ClientHellos judged so far.
    pub fn hellos(&self) -> usize {
        self.hellos
    }

    /// The bytes that may be forwarded now.
    pub fn ready(&self) -> &[u8] {
        match self.tls {
            Some(false) => &self.buf,
            None => &[],
            Some(true) => &self.buf[..self.held_from.unwrap_or(self.scanned)],
        }
    }

    /// The [`ClientFlight::ready`] bytes were forwarded.
    pub fn advance(&mut self) {
        let n = self.ready().len();
        self.buf.drain(..n);
        self.scanned = self.scanned.saturating_sub(n);
        self.held_from = self.held_from.map(|h| h - n);
        if self.buf.is_empty() {
            // An idle tunnel keeps no buffer.
            self.buf = Vec::new();
        }
    }

    /// The client closed: fine unless it left part of a record or a
    /// ClientHello behind.
    pub fn closed(&self) -> Result<(), Violation> {
        if self.buf.len() > self.ready().len() {
            return Err(Violation::tls("the client closed inside a TLS record"));
        }
        Ok(())
    }

    /// Judges the bytes appended since the last call. A refusal is final:
    /// every later call returns it again.
    pub fn inspect(&mut self) -> Result<(), Violation> {
        if let Some(v) = self.failed {
            return Err(v);
        }
        let judged = self.judge();
        if let Err(v) = judged {
            self.failed = Some(v);
        }
        judged
    }

    fn judge(&mut self) -> Result<(), Violation> {
        if self.tls.is_none() {
            match self.buf.as_slice() {
                [] => return Ok(()),
                [first] if !starts_tls(*first, 3) => self.tls = Some(false),
                [_] => return Ok(()),
                [first, second, ..] => self.tls = Some(starts_tls(*first, *second)),
            }
        }
        if self.tls == Some(false) {
            return Ok(());
        }
        while let Some(header) = self.buf.get(self.scanned..self.scanned + 5) {
            let (kind, major) = (header[0], header[1]);
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if major != 3 {
                return Err(Violation::tls("record version is not TLS"));
            }
            if len > MAX_RECORD {
                return Err(Violation::tls("record too long"));
            }
            let start = self.scanned;
            let end = start + 5 + len;
            if self.buf.len() < end {
                break;
            }
            self.records += 1;
            let first_record = self.records == 1;
            match kind {
                CONTENT_HANDSHAKE => {
                    let payload = &self.buf[start + 5..end];
                    if payload.is_empty() {
                        return Err(Violation::tls("empty handshake record"));
                    }
                    if first_record && payload[0] != HANDSHAKE_CLIENT_HELLO {
                        return Err(Violation::tls("the first record is not a ClientHello"));
                    }
                    if self.handshake.is_empty() {
                        self.held_from = Some(start);
                        self.fragments = 0;
                    }
                    self.fragments += 1;
                    if self.fragments > MAX_FRAGMENTS {
                        return Err(Violation::tls("ClientHello split over too many records"));
                    }
                    self.handshake.extend_from_slice(payload);
                    self.scanned = end;
                    if self.messages()? {
                        // Whole messages went; what is left began in this record.
                        self.held_from = Some(start);
                    }
                    if self.handshake.is_empty() {
                        self.held_from = None;
                        self.handshake = Vec::new();
                    }
                }
                CONTENT_CHANGE_CIPHER_SPEC | CONTENT_ALERT | CONTENT_APPLICATION_DATA => {
                    if first_record {
                        return Err(Violation::tls(match kind {
                            CONTENT_ALERT => "an alert record before the ClientHello",
                            CONTENT_CHANGE_CIPHER_SPEC => {
                                "a ChangeCipherSpec record before the ClientHello"
                            }
                            _ => "application data before the ClientHello",
                        }));
                    }
                    if !self.handshake.is_empty() {
                        return Err(Violation::tls("a record inside a split handshake message"));
                    }
                    self.scanned = end;
                }
                _ => return Err(Violation::tls("unknown TLS record type")),
            }
        }
        Ok(())
    }

    /// Judges every whole message in `handshake`; `true` when one went.
    fn messages(&mut self) -> Result<bool, Violation> {
        let mut any = false;
        while let [kind, a, b, c, ..] = *self.handshake.as_slice() {
            let total = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
            if total > MAX_HELLO {
                return Err(Violation::tls("ClientHello too large"));
            }
            if self.handshake.len() < total {
                break;
            }
            if kind != HANDSHAKE_CLIENT_HELLO {
                return Err(Violation::tls(
                    "a handshake message other than ClientHello before the server's hello",
                ));
            }
            let hello = hello::parse(&self.handshake[..total])?;
            self.check(hello)?;
            self.handshake.drain(..total);
            any = true;
        }
        Ok(any)
    }

    /// The rules every ClientHello meets (docs/security.md).
    fn check(&mut self, hello: ClientHello) -> Result<(), Violation> {
        self.last_sni.clone_from(&hello.sni);
        if hello.ech && !self.ech_allowed {
            return Err(Violation {
                reason: Reason::EchRefused,
                cause: "the ClientHello carries encrypted_client_hello",
            });
        }
        if let (Expect::Host(host), Some(sni)) = (&self.expect, &hello.sni)
            && sni != host
        {
            return Err(Violation {
                reason: Reason::SniMismatch,
                cause: "the server name differs from the CONNECT host",
            });
        }
        self.hellos += 1;
        match &self.first {
            None => self.first = Some(hello),
            Some(first) if first.sni != hello.sni => {
                return Err(Violation {
                    reason: Reason::SniMismatch,
                    cause: "a later ClientHello names another server than the first",
                });
            }
            Some(_) => {}
        }
        Ok(())
    }
}
