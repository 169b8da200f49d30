//! WebSocket fixtures: an echo origin (tokio-tungstenite's server handshake, or a raw
//! `101` of the test's choosing), and a client that opens a WebSocket through the proxy
//! with an absolute-form request and then speaks real (masked) frames.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::Role;

use super::client::{Head, IO, read_head, send};
use super::{AbortOnDrop, bind_loopback, spawn_accept_loop};

/// A WebSocket over a plain TCP stream.
pub type Ws = WebSocketStream<TcpStream>;

/// How the origin answers a handshake: the standard server handshake, or these bytes
/// (given the `Sec-WebSocket-Accept` value) written in one go.
#[derive(Clone, Copy)]
enum Answer {
    Standard,
    Raw(fn(&str) -> Vec<u8>),
}

/// A WebSocket echo origin on 127.0.0.1: every text or binary message comes back.
pub struct WsOrigin {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    _task: AbortOnDrop,
}

impl WsOrigin {
    /// An origin that accepts with tokio-tungstenite's server handshake.
    pub async fn start() -> WsOrigin {
        WsOrigin::answering(Answer::Standard).await
    }

    /// An origin that answers each handshake with `reply(accept)` written at once (a
    /// `101` head and maybe frames after it), then echoes frames as a server would.
    pub async fn raw(reply: fn(&str) -> Vec<u8>) -> WsOrigin {
        WsOrigin::answering(Answer::Raw(reply)).await
    }

    async fn answering(answer: Answer) -> WsOrigin {
        let listener = bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let (done, seen) = (ended.clone(), heads.clone());
        let task = spawn_accept_loop(listener, accepted.clone(), move |stream| {
            let (done, seen) = (done.clone(), seen.clone());
            async move {
                if let Some(ws) = handshake(stream, answer, &seen).await {
                    echo(ws).await;
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
        WsOrigin {
            addr,
            accepted,
            ended,
            heads,
            _task: task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections that have ended (closed by either side).
    pub fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }

    /// The request heads received, header names lowercased (`name: value` lines).
    pub fn heads(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Runs the server side of the handshake, noting the request head in `seen`.
async fn handshake(mut stream: TcpStream, answer: Answer, seen: &Mutex<Vec<String>>) -> Option<Ws> {
    match answer {
        Answer::Standard => {
            // The signature is tungstenite's `Callback`.
            #[allow(clippy::result_large_err)]
            let note = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                let mut head = format!("{} {}\r\n", req.method(), req.uri());
                for (name, value) in req.headers() {
                    let value = String::from_utf8_lossy(value.as_bytes());
                    head.push_str(&format!("{}: {value}\r\n", name.as_str()));
                }
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(head);
                Ok(resp)
            };
            tokio_tungstenite::accept_hdr_async(stream, note).await.ok()
        }
        Answer::Raw(reply) => {
            let head = read_request_head(&mut stream).await?;
            let key = (head.lines())
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-key"))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default();
            seen.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(head);
            stream
                .write_all(&reply(&derive_accept_key(key.as_bytes())))
                .await
                .ok()?;
            Some(WebSocketStream::from_raw_socket(stream, Role::Server, None).await)
        }
    }
}

/// Reads a request head byte by byte, so that no frame after it is consumed.
async fn read_request_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    while !buf.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.ok()? == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

async fn echo(mut ws: Ws) {
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

/// A standard `101` accepting the handshake, with `after` written right behind it.
pub fn switching_protocols(accept: &str, after: &[u8]) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    [head.as_bytes(), after].concat()
}

/// An unmasked (server-to-client) text frame.
pub fn text_frame(text: &str) -> Vec<u8> {
    assert!(text.len() < 126, "short frames only");
    [&[0x81, text.len() as u8][..], text.as_bytes()].concat()
}

/// Sends a WebSocket handshake as a proxy client does: `GET http://authority/path` with
/// `Host`, `Connection: Upgrade`, `Upgrade: websocket`, a fresh key and the `extra` header
/// lines. Returns the key.
pub async fn send_handshake(
    stream: &mut TcpStream,
    authority: &str,
    path: &str,
    extra: &str,
) -> String {
    let key = generate_key();
    let req = format!(
        "GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: {key}\r\n{extra}\r\n"
    );
    send(stream, req.as_bytes()).await;
    key
}

/// Reads the answer to a handshake with `key`: asserts a `101` that switches to
/// `websocket` and proves the origin saw the key (RFC 6455 4.2.2).
pub async fn expect_switch(stream: &mut TcpStream, key: &str) -> Head {
    let head = read_head(stream).await;
    assert_eq!(head.status, 101, "{}", head.raw);
    assert!(
        (head.header("upgrade")).is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
        "{}",
        head.raw
    );
    assert!(
        (head.header("connection")).is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{}",
        head.raw
    );
    let accept = derive_accept_key(key.as_bytes());
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some(accept.as_str()),
        "{}",
        head.raw
    );
    head
}

/// Opens a WebSocket to `http://authority/path` through the proxy at `proxy`.
pub async fn open_ws(proxy: SocketAddr, authority: &str, path: &str) -> (Ws, Head) {
    let mut stream = super::client::connect(proxy).await;
    let key = send_handshake(&mut stream, authority, path, "").await;
    let head = expect_switch(&mut stream, &key).await;
    (
        WebSocketStream::from_raw_socket(stream, Role::Client, None).await,
        head,
    )
}

/// A WebSocket client on a stream whose `101` was just read.
pub async fn ws_client(stream: TcpStream) -> Ws {
    WebSocketStream::from_raw_socket(stream, Role::Client, None).await
}

/// The next message, failing the test if none comes within [`IO`]. `None`: the stream
/// ended (closed or failed).
pub async fn next_message(ws: &mut Ws) -> Option<Message> {
    match timeout(IO, ws.next()).await {
        Ok(Some(Ok(msg))) => Some(msg),
        Ok(Some(Err(_)) | None) => None,
        Err(_) => panic!("no WebSocket message within {IO:?}"),
    }
}

/// Sends `text` and asserts the echo comes back.
pub async fn echo_text(ws: &mut Ws, text: &str) {
    timeout(IO, ws.send(Message::text(text)))
        .await
        .expect("send timed out")
        .expect("send");
    match next_message(ws).await {
        Some(Message::Text(back)) => assert_eq!(back.as_str(), text),
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

/// Closes as a client does (RFC 6455 7.1.1): sends a close frame, waits for the peer's and
/// for the server to end the connection, then drops its own side.
pub async fn close(mut ws: Ws) {
    timeout(IO, ws.close(None))
        .await
        .expect("close timed out")
        .expect("close");
    while let Some(msg) = next_message(&mut ws).await {
        assert!(msg.is_close(), "after close: {msg:?}");
    }
}
