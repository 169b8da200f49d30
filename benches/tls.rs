//! Micro-benchmarks of rustls alone: what one full mTLS handshake costs the
//! server, in memory (no sockets, no proxy), and the cryptographic steps it
//! cannot skip, for the `ring` crypto provider the listener uses.
//!
//! Certificates as on `--listen-tls` in the e2e bench: ECDSA P-256 server and
//! client certificates from one CA, the client's with a SPIFFE URI SAN.
//! Only the server's calls are timed (`iter_custom`): the client's half of
//! each handshake runs between them, untimed.
//!
//! Run: `cargo bench --bench tls`. Compare within one run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig, ServerConnection,
    SignatureScheme,
};

/// The CA, the server's and the client's certificate and key.
struct Pki {
    ca: CertificateDer<'static>,
    server: (CertificateDer<'static>, KeyPair),
    client: (CertificateDer<'static>, KeyPair),
}

fn pki() -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // rcgen's default key is ECDSA P-256.
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, san: Option<SanType>, eku| {
        let mut p = CertificateParams::new(names).unwrap();
        p.subject_alt_names.extend(san);
        p.extended_key_usages = vec![eku];
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        (cert.der().clone(), key)
    };
    let server = leaf(
        vec!["localhost".into()],
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let spiffe = SanType::URI("spiffe://bench/client".try_into().unwrap());
    let client = leaf(vec![], Some(spiffe), ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: ca.der().clone(),
        server,
        client,
    }
}

fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::try_from(key.serialize_der()).unwrap()
}

fn roots(pki: &Pki) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    Arc::new(roots)
}

/// The server configuration `--listen-tls` builds, with `tickets` TLS 1.3 tickets per handshake.
fn server_config(pki: &Pki, provider: &Arc<CryptoProvider>, tickets: usize) -> Arc<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(pki), provider.clone())
        .build()
        .unwrap();
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server.0.clone()], key_der(&pki.server.1))
        .unwrap();
    config.send_tls13_tickets = tickets;
    Arc::new(config)
}

fn client_config(pki: &Pki, provider: &Arc<CryptoProvider>, resume: bool) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(pki))
        .with_client_auth_cert(vec![pki.client.0.clone()], key_der(&pki.client.1))
        .unwrap();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// One handshake in memory; returns the time spent in the server's calls.
fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    kind: HandshakeKind,
) -> Duration {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let start = Instant::now();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut spent = start.elapsed();
    let mut wire = Vec::with_capacity(8192);
    for _ in 0..8 {
        wire.clear();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let start = Instant::now();
        let mut rd = &wire[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        let mut out = Vec::with_capacity(8192);
        while s.wants_write() {
            s.write_tls(&mut out).unwrap();
        }
        black_box(s.peer_certificates());
        spent += start.elapsed();
        let mut rd = &out[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        if !s.is_handshaking() && !c.is_handshaking() && !c.wants_write() && !s.wants_write() {
            assert_eq!(s.handshake_kind(), Some(kind));
            assert!(s.peer_certificates().is_some());
            return spent;
        }
    }
    panic!("handshake did not finish in 8 flights");
}

/// The provider the TLS listener uses. (aws-lc-rs was measured too and
/// not adopted: docs/performance.md.)
fn providers() -> [(&'static str, Arc<CryptoProvider>); 1] {
    [("ring", Arc::new(rustls::crypto::ring::default_provider()))]
}

/// The server's side of whole handshakes: full (with 0 or 2 tickets) and resumed.
fn bench_handshake(c: &mut Criterion) {
    let pki = pki();
    let mut group = c.benchmark_group("server_handshake");
    for (name, provider) in providers() {
        let no_resume = client_config(&pki, &provider, false);
        for tickets in [0usize, 2] {
            let server = server_config(&pki, &provider, tickets);
            group.bench_function(
                BenchmarkId::new(name, format!("full_tickets_{tickets}")),
                |b| {
                    b.iter_custom(|n| {
                        (0..n)
                            .map(|_| handshake(&server, &no_resume, HandshakeKind::Full))
                            .sum()
                    })
                },
            );
        }
        let server = server_config(&pki, &provider, 2);
        let resuming = client_config(&pki, &provider, true);
        handshake(&server, &resuming, HandshakeKind::Full);
        group.bench_function(BenchmarkId::new(name, "resumed"), |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| handshake(&server, &resuming, HandshakeKind::Resumed))
                    .sum()
            })
        });
    }
    group.finish();
}

/// The steps a full mTLS handshake cannot skip on the server: one key
/// exchange, one signature, the client chain (parse, path, the CA's
/// signature) and the client's CertificateVerify signature.
fn bench_steps(c: &mut Criterion) {
    let pki = pki();
    let msg = [7u8; 130];
    let mut group = c.benchmark_group("handshake_steps");
    for (name, provider) in providers() {
        let kx = provider.kx_groups[0];
        let peer = kx.start().unwrap();
        group.bench_function(BenchmarkId::new(name, format!("{:?}", kx.name())), |b| {
            b.iter(|| {
                let mine = kx.start().unwrap();
                black_box(mine.pub_key());
                black_box(mine.complete(peer.pub_key()).unwrap())
            })
        });
        let key = provider
            .key_provider
            .load_private_key(key_der(&pki.server.1))
            .unwrap();
        let signer = key
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .unwrap();
        group.bench_function(BenchmarkId::new(name, "ecdsa_p256_sign"), |b| {
            b.iter(|| black_box(signer.sign(black_box(&msg)).unwrap()))
        });
        let signature = signer.sign(&msg).unwrap();
        let public = pki.server.1.public_key_raw();
        let algs = provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == SignatureScheme::ECDSA_NISTP256_SHA256)
            .unwrap()
            .1;
        let alg = algs
            .iter()
            .find(|a| a.verify_signature(public, &msg, &signature).is_ok())
            .expect("a P-256 verifier accepts its own signature");
        group.bench_function(BenchmarkId::new(name, "ecdsa_p256_verify"), |b| {
            b.iter(|| {
                alg.verify_signature(black_box(public), &msg, &signature)
                    .unwrap()
            })
        });
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(&pki), provider.clone())
            .build()
            .unwrap();
        let now = UnixTime::now();
        group.bench_function(BenchmarkId::new(name, "client_chain_verify"), |b| {
            b.iter(|| {
                verifier
                    .verify_client_cert(black_box(&pki.client.0), &[], now)
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_handshake, bench_steps);
criterion_main!(benches);
