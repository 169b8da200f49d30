//! The policy loader: any bytes give a policy or a list of located errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(compiled) = Policy::from_yaml(&text) {
        let _ = compiled
            .policy
            .decide_str("127.0.0.1".parse().unwrap(), "api.example.com", 443);
    }
});
