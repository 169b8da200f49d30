//! The ClientHello reader must never panic, and must decide the same way
//! whether the bytes arrive at once or in two pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::tls_peek::classify;

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    for cut in [1, data.len() / 2] {
        if cut < data.len() && classify(&data[..cut]).is_some() {
            // A prefix that decided must agree with the whole.
            assert_eq!(classify(&data[..cut]), whole);
        }
    }
    let mut tls = vec![0x16, 0x03, 0x01];
    tls.extend_from_slice(data);
    let _ = classify(&tls);
});
