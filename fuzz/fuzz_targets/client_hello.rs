//! The client-side TLS inspector must never panic, must decide the same
//! way however the bytes are split into reads, and must never clear a byte
//! it has not judged (the ready bytes are always a prefix of the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::Host;
use portcullis::tls_peek::{ClientFlight, Expect};

fn run(mut flight: ClientFlight, data: &[u8], chunk: usize) -> (bool, Vec<u8>) {
    let mut ready = Vec::new();
    for part in data.chunks(chunk) {
        flight.buffer().extend_from_slice(part);
        if flight.inspect().is_err() {
            return (false, ready);
        }
        ready.extend_from_slice(flight.ready());
        flight.advance();
    }
    (flight.closed().is_ok(), ready)
}

fuzz_target!(|data: &[u8]| {
    let expects = [
        Expect::Any,
        Expect::Host(Host::parse("api.stripe.com").unwrap()),
    ];
    for expect in expects {
        let (whole_ok, whole_ready) = run(ClientFlight::new(expect.clone(), false), data, data.len().max(1));
        assert!(data.starts_with(&whole_ready));
        for chunk in [1, data.len() % 61 + 1] {
            let (split_ok, split_ready) = run(ClientFlight::new(expect.clone(), false), data, chunk);
            assert_eq!(whole_ok, split_ok);
            assert_eq!(whole_ready, split_ready);
        }
    }
});
