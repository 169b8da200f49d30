//! The server's side of the handshake, watched only until its first
//! ServerHello that is not a HelloRetryRequest: after that, a ClientHello
//! in the clear can no longer change which server the client talks to.

use super::{
    CONTENT_ALERT, CONTENT_CHANGE_CIPHER_SPEC, CONTENT_HANDSHAKE, HANDSHAKE_SERVER_HELLO,
    MAX_RECORD, starts_tls,
};

/// The `random` of a HelloRetryRequest: SHA-256("HelloRetryRequest") (RFC 8446 4.1.3).
pub(super) const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];
/// A server's handshake message larger than this is not a ServerHello we wait for.
const MAX_MESSAGE: usize = 64 * 1024;

/// How far the server's handshake has gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// No ServerHello yet (or only HelloRetryRequests).
    Watching,
    /// A ServerHello that is not a HelloRetryRequest: the client's hello is settled.
    Established,
    /// The server does not speak TLS as expected: the handshake never
    /// settles, so the client stays watched for the life of the tunnel.
    Opaque,
}

/// The server's records, until [`ServerState::Established`] or [`ServerState::Opaque`].
#[derive(Debug)]
pub struct ServerWatch {
    /// Bytes of a record not yet whole.
    tail: Vec<u8>,
    /// Handshake payload not yet a whole message.
    handshake: Vec<u8>,
    state: ServerState,
    retries: usize,
    /// Bytes seen so far (only whether the stream's first two are in matters).
    seen: usize,
}

impl Default for ServerWatch {
    fn default() -> Self {
        ServerWatch::new()
    }
}

impl ServerWatch {
    /// A watch at the stream's first byte.
    pub fn new() -> ServerWatch {
        ServerWatch {
            tail: Vec::new(),
            handshake: Vec::new(),
            state: ServerState::Watching,
            retries: 0,
            seen: 0,
        }
    }

    /// Where the server's side of the handshake has got to.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// HelloRetryRequests seen.
    pub fn retries(&self) -> usize {
        self.retries
    }

    /// The server spoke before the client's first ClientHello: no TLS
    /// server does, so nothing it sends can settle the handshake.
    pub fn spoke_first(&mut self) {
        self.settle(ServerState::Opaque);
    }

    /// Judges bytes from the server, before they are passed to the client.
    pub fn feed(&mut self, bytes: &[u8]) -> ServerState {
        if self.state != ServerState::Watching {
            return self.state;
        }
        self.tail.extend_from_slice(bytes);
        let state = self.records();
        self.seen += bytes.len();
        self.settle(state);
        self.state
    }

    fn settle(&mut self, state: ServerState) {
        self.state = state;
        if state != ServerState::Watching {
            self.tail = Vec::new();
            self.handshake = Vec::new();
        }
    }

    fn records(&mut self) -> ServerState {
        // The stream's first two bytes, however they were read.
        if self.seen < 2
            && let [first, second, ..] = *self.tail.as_slice()
            && !starts_tls(first, second)
        {
            return ServerState::Opaque;
        }
        let mut at = 0;
        while let Some(header) = self.tail.get(at..at + 5) {
            let (kind, major) = (header[0], header[1]);
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let known = matches!(
                kind,
                CONTENT_HANDSHAKE | CONTENT_ALERT | CONTENT_CHANGE_CIPHER_SPEC
            );
            if !known || major != 3 || len > MAX_RECORD {
                return ServerState::Opaque;
            }
            let Some(payload) = self.tail.get(at + 5..at + 5 + len) else {
                break;
            };
            // An alert or ChangeCipherSpec is still no ServerHello.
            if kind == CONTENT_HANDSHAKE {
                self.handshake.extend_from_slice(payload);
                let state = self.messages();
                if state != ServerState::Watching {
                    return state;
                }
            }
            at += 5 + len;
        }
        self.tail.drain(..at);
        ServerState::Watching
    }

    fn messages(&mut self) -> ServerState {
        while let [kind, a, b, c, ..] = *self.handshake.as_slice() {
            let total = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
            if kind != HANDSHAKE_SERVER_HELLO || !(4 + 2 + 32..=MAX_MESSAGE).contains(&total) {
                return ServerState::Opaque;
            }
            if self.handshake.len() < total {
                break;
            }
            if self.handshake[6..38] != HELLO_RETRY_RANDOM {
                return ServerState::Established;
            }
            self.retries += 1;
            self.handshake.drain(..total);
        }
        ServerState::Watching
    }
}
