//! The server's side: HelloRetryRequest vs the ServerHello that settles
//! the handshake, and the fuzz seeds of both state machines.

use super::super::synth::{
    change_cipher_spec, record, records, server_hello, tls13_hello, warning_alert,
};
use super::super::*;

#[test]
fn the_server_watch_settles_on_a_server_hello_that_is_not_a_retry() {
    let retry = records(&server_hello(true), 16384);
    let hello = records(&server_hello(false), 16384);
    for chunk in [1, 5, 16384] {
        let mut watch = ServerWatch::new();
        let flight = [retry.clone(), change_cipher_spec()].concat();
        for part in flight.chunks(chunk) {
            assert_eq!(watch.feed(part), ServerState::Watching);
        }
        assert_eq!(watch.retries(), 1);
        let mut last = ServerState::Watching;
        for part in hello.chunks(chunk) {
            last = watch.feed(part);
        }
        assert_eq!(last, ServerState::Established, "chunk {chunk}");
    }
    // Coalesced with later messages in one record, as TLS 1.2 servers do.
    let coalesced = records(&[server_hello(false), vec![11, 0, 0, 0]].concat(), 16384);
    assert_eq!(
        ServerWatch::new().feed(&coalesced),
        ServerState::Established
    );
    assert_eq!(
        ServerWatch::new().feed(&warning_alert()),
        ServerState::Watching
    );
    assert_eq!(
        ServerWatch::new().feed(b"HTTP/1.1 400 Bad Request\r\n"),
        ServerState::Opaque
    );
    assert_eq!(
        ServerWatch::new().feed(&record(23, b"x")),
        ServerState::Opaque
    );
    assert_eq!(
        ServerWatch::new().feed(&records(&[11, 0, 0, 0], 100)),
        ServerState::Opaque
    );
    let mut first = ServerWatch::new();
    first.spoke_first();
    assert_eq!(first.feed(&hello), ServerState::Opaque);
}

/// The fuzz seeds of the handshake state machines: two-hello client flights
/// and server flights with a HelloRetryRequest. `cargo test` keeps them
/// current; they are committed under `fuzz/seeds/`.
#[test]
fn fuzz_seeds_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let same = tls13_hello(Some("api.stripe.com"), Some([5; 32]));
    let other = tls13_hello(Some("evil.example"), Some([5; 32]));
    let first = records(&tls13_hello(Some("api.stripe.com"), None), 16384);
    let seeds = [
        (
            "client_hello/retry_same",
            [first.clone(), change_cipher_spec(), records(&same, 100)].concat(),
        ),
        (
            "client_hello/retry_other",
            [first.clone(), change_cipher_spec(), records(&other, 16384)].concat(),
        ),
        (
            "client_hello/alert_first",
            [warning_alert(), first].concat(),
        ),
        (
            "server_flight/retry_then_hello",
            [
                records(&server_hello(true), 16384),
                change_cipher_spec(),
                records(&server_hello(false), 30),
            ]
            .concat(),
        ),
        ("server_flight/hello", records(&server_hello(false), 16384)),
    ];
    for (name, bytes) in seeds {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            std::fs::write(&path, &bytes).unwrap();
        }
    }
}

/// Found by the `server_flight` fuzz target: a record header after a
/// partial ServerHello was judged only when a read happened to start there.
#[test]
fn the_server_watch_judges_every_record_header_however_it_was_read() {
    let mut bytes = records(&server_hello(false)[..18], 100);
    bytes.extend_from_slice(&[0x03, 0x03, 0xcf, 0x21, 0xad, 0x74]);
    let mut whole = ServerWatch::new();
    whole.feed(&bytes);
    for chunk in 1..bytes.len() {
        let mut split = ServerWatch::new();
        for part in bytes.chunks(chunk) {
            split.feed(part);
        }
        assert_eq!(split.state(), whole.state(), "chunk {chunk}");
    }
    assert_eq!(whole.state(), ServerState::Opaque);
}
