use std::time::Duration;

use super::synth::{
    change_cipher_spec, hello_message, hello_with_extensions, record, records, sni_extension,
    tls13_hello, warning_alert,
};
use super::*;
use crate::policy::Host;

fn host(name: &str) -> Host {
    Host::parse(name).unwrap()
}

/// Feeds `bytes` in `chunk`-sized reads; returns the verdict and every byte
/// that became ready, in order.
fn run(flight: &mut ClientFlight, bytes: &[u8], chunk: usize) -> (Result<(), Violation>, Vec<u8>) {
    let mut out = Vec::new();
    for part in bytes.chunks(chunk.max(1)) {
        flight.buffer().extend_from_slice(part);
        if let Err(v) = flight.inspect() {
            return (Err(v), out);
        }
        out.extend_from_slice(flight.ready());
        flight.advance();
    }
    (Ok(()), out)
}

fn any() -> ClientFlight {
    ClientFlight::new(Expect::Any, false)
}

fn expect(name: &str) -> ClientFlight {
    ClientFlight::new(Expect::Host(host(name)), false)
}

fn violation(cause_part: &str, got: Result<(), Violation>) {
    match got {
        Err(v) => assert!(
            v.reason == Reason::TlsViolation && v.cause.contains(cause_part),
            "expected tls_violation ({cause_part}), got {v:?}"
        ),
        Ok(()) => panic!("expected tls_violation ({cause_part}), got a pass"),
    }
}

#[test]
fn one_record_hello_gives_the_normalised_sni_and_is_ready_whole() {
    let bytes = records(&hello_message(&["API.Stripe.com."], false, 0), 16384);
    let mut flight = expect("api.stripe.com");
    let (res, ready) = run(&mut flight, &bytes, 16384);
    assert_eq!(res, Ok(()));
    assert_eq!(ready, bytes);
    assert_eq!(
        flight.first_hello().unwrap().sni,
        Some(host("api.stripe.com"))
    );
}

#[test]
fn nothing_is_ready_until_the_hello_is_whole() {
    let bytes = records(&hello_message(&["api.stripe.com"], false, 3000), 700);
    let mut flight = any();
    for (i, b) in bytes.iter().enumerate() {
        flight.buffer().push(*b);
        assert_eq!(flight.inspect(), Ok(()));
        if i + 1 < bytes.len() {
            assert!(flight.ready().is_empty(), "ready after {} bytes", i + 1);
            assert!(flight.first_hello().is_none());
        }
    }
    assert_eq!(flight.ready(), &bytes[..]);
}

#[test]
fn every_ech_codepoint_is_refused_unless_allowed() {
    for code in [0xfe08u16, 0xfe09, 0xfe0a, 0xfe0b, 0xfe0c, 0xfe0d, 0xffce] {
        let mut exts = sni_extension(&["a.example"]);
        exts.extend_from_slice(&code.to_be_bytes());
        exts.extend_from_slice(&[0, 1, 0]);
        let bytes = records(&hello_with_extensions(&exts), 16384);
        let (res, ready) = run(&mut any(), &bytes, 16384);
        assert_eq!(
            res.map_err(|v| v.reason),
            Err(Reason::EchRefused),
            "{code:#x}"
        );
        assert!(ready.is_empty());
        let mut allowed = ClientFlight::new(Expect::Any, true);
        assert_eq!(
            run(&mut allowed, &bytes, 16384).0,
            Ok(()),
            "{code:#x} allowed"
        );
    }
}

#[test]
fn server_name_extension_must_be_well_formed() {
    let good = sni_extension(&["a.example"]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("two names", sni_extension(&["a.example", "b.example"])),
        ("empty name", sni_extension(&[""])),
        ("IP literal", sni_extension(&["127.0.0.1"])),
        ("invalid name", sni_extension(&["a..example"])),
        ("list shorter than the extension", {
            let mut e = good.clone();
            e.push(0);
            let len = (e.len() - 4) as u16;
            e[2..4].copy_from_slice(&len.to_be_bytes());
            e
        }),
        ("list longer than the extension", {
            let mut e = good.clone();
            let len = u16::from_be_bytes([e[4], e[5]]) + 1;
            e[4..6].copy_from_slice(&len.to_be_bytes());
            e
        }),
        ("name longer than the list", {
            let mut e = good.clone();
            e[8] += 1;
            e
        }),
        ("empty extension", vec![0, 0, 0, 0]),
        ("not a host_name", {
            let mut e = good.clone();
            e[6] = 1;
            e
        }),
        ("server_name twice", [good.clone(), good.clone()].concat()),
    ];
    for (what, exts) in cases {
        let bytes = records(&hello_with_extensions(&exts), 16384);
        let (res, ready) = run(&mut any(), &bytes, 16384);
        assert_eq!(
            res.map_err(|v| v.reason),
            Err(Reason::TlsViolation),
            "{what}"
        );
        assert!(ready.is_empty(), "{what}");
    }
}

#[test]
fn a_record_before_the_hello_is_a_violation() {
    let hello = records(&hello_message(&["a.example"], false, 0), 16384);
    let mut odd_version = warning_alert();
    odd_version[2] = 0x09; // OpenSSL takes any minor version on a first record
    let cases = [
        ("alert", warning_alert()),
        ("alert", odd_version),
        ("ChangeCipherSpec", change_cipher_spec()),
        ("application data", record(23, b"data")),
    ];
    for (cause, first) in cases {
        let bytes = [first, hello.clone()].concat();
        for chunk in [1, 3, 4096] {
            let (res, ready) = run(&mut any(), &bytes, chunk);
            violation(cause, res);
            assert!(ready.is_empty(), "{cause}: bytes were cleared");
        }
    }
    let mut server_hello_first = hello.clone();
    server_hello_first[5] = 2;
    violation(
        "not a ClientHello",
        run(&mut any(), &server_hello_first, 4096).0,
    );
    violation(
        "record version",
        run(&mut any(), &[0x16, 0x04, 0x01, 0, 1, 1], 4096).0,
    );
}

#[test]
fn other_protocols_pass_untouched() {
    for bytes in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"SSH-2.0-OpenSSH",
        b"\x17",
        b"\x15\x02abc",
    ] {
        let mut flight = any();
        let (res, ready) = run(&mut flight, bytes, 1);
        assert_eq!(res, Ok(()));
        if bytes.len() > 1 || bytes[0] < 20 || bytes[0] > 23 {
            assert_eq!(ready, bytes, "{bytes:?}");
            assert_eq!(flight.is_tls(), Some(false));
        }
    }
}

#[test]
fn oversized_and_truncated_hellos() {
    let big = records(&hello_message(&["a.example"], false, 17_000), 16384);
    violation("too large", run(&mut any(), &big, 16384).0);
    let hello = records(&hello_message(&["a.example"], false, 0), 16384);
    let mut flight = any();
    assert_eq!(run(&mut flight, &hello[..hello.len() / 2], 4096).0, Ok(()));
    violation("closed inside", flight.closed());
    let many = records(&hello_message(&["a.example"], false, 200), 2);
    violation("too many records", run(&mut any(), &many, 4096).0);
}

/// Client flight of a TLS 1.3 handshake with a HelloRetryRequest.
fn retry_flight(second: &[u8]) -> Vec<u8> {
    let first = records(&tls13_hello(Some("a.example"), None), 16384);
    [first, change_cipher_spec(), records(second, 16384)].concat()
}

#[test]
fn every_hello_after_a_retry_is_checked() {
    let same = tls13_hello(Some("a.example"), Some([5; 32]));
    let other = tls13_hello(Some("b.example"), Some([5; 32]));
    let none = tls13_hello(None, Some([5; 32]));
    let mut ech = sni_extension(&["a.example"]);
    ech.extend_from_slice(&[0xfe, 0x0d, 0, 1, 0]);
    for chunk in [1, 7, 16384] {
        let (res, ready) = run(&mut any(), &retry_flight(&same), chunk);
        assert_eq!(res, Ok(()));
        assert_eq!(ready, retry_flight(&same));
        let cases = [
            ("another name", &other, Reason::SniMismatch),
            ("no name", &none, Reason::SniMismatch),
            ("ECH", &hello_with_extensions(&ech), Reason::EchRefused),
        ];
        for (what, second, reason) in cases {
            let bytes = retry_flight(second);
            let (res, ready) = run(&mut any(), &bytes, chunk);
            assert_eq!(res.map_err(|v| v.reason), Err(reason), "{what}");
            let first_len = bytes.len() - records(second, 16384).len();
            assert!(
                ready.len() <= first_len,
                "{what}: part of the second hello was cleared"
            );
        }
    }
    // With the CONNECT host expected, the first hello must name it too.
    let (res, _) = run(&mut expect("b.example"), &retry_flight(&other), 16384);
    assert_eq!(res.map_err(|v| v.reason), Err(Reason::SniMismatch));
}

#[test]
fn a_later_hello_is_held_until_whole_and_records_may_not_interleave() {
    let second = records(&tls13_hello(Some("b.example"), Some([5; 32])), 40);
    let mut flight = any();
    let first = records(&tls13_hello(Some("a.example"), None), 16384);
    let (res, ready) = run(&mut flight, &first, 16384);
    assert_eq!((res, ready.len()), (Ok(()), first.len()));
    // All but the last record of the second hello: nothing of it is cleared.
    let last = second.len() - (second.len() - 5) % 45;
    let (res, ready) = run(&mut flight, &second[..last.min(second.len() - 1)], 16384);
    assert_eq!((res, ready.len()), (Ok(()), 0));
    let mut interleaved = any();
    let (res, _) = run(&mut interleaved, &first, 16384);
    assert_eq!(res, Ok(()));
    let split = [&second[..45], &change_cipher_spec(), &second[45..]].concat();
    violation("inside a split", run(&mut interleaved, &split, 16384).0);
}

#[test]
fn after_the_first_hello_only_handshake_rules_apply() {
    // 0-RTT early data and alerts after the hello pass; an unknown record
    // type or a non-hello handshake message does not.
    let first = records(&hello_message(&["a.example"], false, 0), 16384);
    let early = [first.clone(), record(23, &[0xaa; 100]), warning_alert()].concat();
    assert_eq!(run(&mut any(), &early, 16384).0, Ok(()));
    violation(
        "unknown",
        run(
            &mut any(),
            &[first.clone(), record(24, &[1])].concat(),
            16384,
        )
        .0,
    );
    let key_exchange = record(22, &[16, 0, 0, 1, 0]);
    violation(
        "other than ClientHello",
        run(&mut any(), &[first, key_exchange].concat(), 16384).0,
    );
}

/// ClientHellos captured from real clients (openssl, curl): the fuzz seeds.
#[test]
fn real_client_hellos() {
    let seed = |name: &str| {
        std::fs::read(format!(
            "{}/fuzz/seeds/client_hello/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    for (name, sni) in [
        ("openssl_sni", Some("api.stripe.com")),
        ("two_records", Some("api.stripe.com")),
        ("openssl_tls12", Some("registry.npmjs.org")),
        ("openssl_no_sni", None),
        ("curl", Some("origin.test")),
    ] {
        let bytes = seed(name);
        for chunk in [1, 100, 20000] {
            let mut flight = any();
            let (res, ready) = run(&mut flight, &bytes, chunk);
            assert_eq!(res, Ok(()), "{name}");
            assert_eq!(ready, bytes, "{name}");
            assert_eq!(flight.first_hello().unwrap().sni, sni.map(host), "{name}");
        }
    }
    let mut flight = any();
    assert_eq!(run(&mut flight, &seed("not_tls"), 3).0, Ok(()));
    assert_eq!(flight.is_tls(), Some(false));
}

#[tokio::test]
async fn reads_one_byte_at_a_time() {
    let bytes = records(&hello_message(&["api.stripe.com"], false, 500), 100);
    let (mut tx, mut rx) = tokio::io::duplex(1);
    let writer = tokio::spawn(async move {
        for b in bytes {
            tokio::io::AsyncWriteExt::write_all(&mut tx, &[b])
                .await
                .unwrap();
        }
        tx
    });
    let mut flight = any();
    let got = read_first_flight(&mut rx, &mut flight, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got, Ok(()));
    assert_eq!(
        flight.first_hello().unwrap().sni,
        Some(host("api.stripe.com"))
    );
    drop(writer.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_stalled_hello_times_out_but_silence_does_not_start_the_clock() {
    let (mut tx, mut rx) = tokio::io::duplex(64);
    tokio::io::AsyncWriteExt::write_all(&mut tx, &[0x16, 0x03])
        .await
        .unwrap();
    let mut flight = any();
    let got = read_first_flight(&mut rx, &mut flight, Duration::from_secs(3))
        .await
        .unwrap();
    violation("timeout", got);

    // A client that says nothing for longer than the timeout is left alone.
    let (mut tx, mut rx) = tokio::io::duplex(64);
    let mut flight = any();
    let reading = read_first_flight(&mut rx, &mut flight, Duration::from_secs(3));
    let speaking = async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        tokio::io::AsyncWriteExt::write_all(&mut tx, b"EHLO")
            .await
            .unwrap();
    };
    let (got, ()) = tokio::join!(reading, speaking);
    assert_eq!(got.unwrap(), Ok(()));
    assert_eq!(flight.is_tls(), Some(false));
}

proptest::proptest! {
    #[test]
    fn never_panics_and_splitting_never_changes_the_verdict(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
        chunk in 1usize..64,
    ) {
        let mut tls = vec![0x16, 0x03, 0x01];
        tls.extend_from_slice(&bytes);
        for input in [&bytes, &tls] {
            let (whole, whole_ready) = run(&mut any(), input, usize::MAX);
            let (split, split_ready) = run(&mut any(), input, chunk);
            proptest::prop_assert_eq!(whole, split);
            // What was cleared before a refusal depends on the reads; it is
            // always a prefix of the input, and all of it when nothing was refused.
            proptest::prop_assert!(input.starts_with(&split_ready));
            if whole.is_ok() {
                proptest::prop_assert_eq!(whole_ready, split_ready);
            }
            let mut watch = ServerWatch::new();
            for part in input.chunks(chunk) {
                watch.feed(part);
            }
        }
    }
}

mod server;
