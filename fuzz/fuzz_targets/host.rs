//! Host and authority parsing: never panics; a parsed host normalises to a
//! fixed point; a destination pattern parses without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::Host;
use portcullis::policy::host::split_host_port;
use portcullis::policy::pattern::parse_destination;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(host) = Host::parse(text) {
        assert_eq!(Host::parse(&host.to_string()), Ok(host));
    }
    if let Ok((h, _)) = split_host_port(text) {
        let _ = Host::parse(h);
    }
    let _ = parse_destination(text);
});
