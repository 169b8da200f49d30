//! The client-side TLS inspector must never panic, must decide the same
//! way however the bytes are split into reads, and must never clear a byte
//! it has not judged (the ready bytes are always a prefix of the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::Host;
use portcullis::tls_peek::{ClientFlight, Expect, Violation};

fn run(mut flight: ClientFlight, data: &[u8], chunk: usize) -> (Result<(), Violation>, Vec<u8>) {
    let mut ready = Vec::new();
    for part in data.chunks(chunk) {
        flight.buffer().extend_from_slice(part);
        if let Err(v) = flight.inspect() {
            return (Err(v), ready);
        }
        ready.extend_from_slice(flight.ready());
        flight.advance();
    }
    (flight.closed(), ready)
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
            // The verdict (reason and cause) never depends on how the bytes were read.
            assert_eq!(whole_ok, split_ok);
            // What was cleared before a refusal depends on the reads; it is always
            // a prefix of the input, and all of it when nothing was refused.
            assert!(data.starts_with(&split_ready));
            if whole_ok.is_ok() {
                assert_eq!(whole_ready, split_ready);
            }
        }
    }
});
