//! The server-side handshake watch must never panic, and must reach the same
//! state however the server's bytes are split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::tls_peek::ServerWatch;

fuzz_target!(|data: &[u8]| {
    let mut whole = ServerWatch::new();
    whole.feed(data);
    for chunk in [1, data.len() % 61 + 1] {
        let mut split = ServerWatch::new();
        for part in data.chunks(chunk) {
            split.feed(part);
        }
        assert_eq!(whole.state(), split.state());
    }
});
