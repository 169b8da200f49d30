//! `--listen-tls`: the explicit proxy inside TLS, with a client certificate
//! required and verified against `--tls-client-ca`. The certificate's names
//! are the connection's credentials; the protocol inside is `http1`'s.
//!
//! The certificate, key and CA files are read again when they change
//! (checked at most once a second, on a handshake): rotation needs no
//! restart, and a bad new file keeps the old configuration and is logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;

use super::Peer;
use tokio_rustls::TlsAcceptor;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::http1;
use crate::policy::{CertName, Credential};
use crate::state::{ConnSlot, Shared};
use crate::telemetry::diag::RateLimit;

/// How often, at most, the files are checked for a change.
const RECHECK: Duration = Duration::from_secs(1);

/// The PEM files `--tls-cert`, `--tls-key` and `--tls-client-ca` name.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// The CA (one or more certificates) client certificates must chain to.
    pub client_ca: PathBuf,
}

/// Why the TLS files do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{}: {why}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, ...).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The server configuration in force and what it was built from.
pub(crate) struct TlsServer {
    files: TlsFiles,
    current: ArcSwap<rustls::ServerConfig>,
    /// When the files were last looked at, and what they looked like then.
    checked: Mutex<(Instant, Stamp)>,
}

/// Modification time and length of each file: cheap to take, and changed by
/// every rewrite and rename-replace (Kubernetes secret swaps included).
type Stamp = [Option<(SystemTime, u64)>; 3];

impl TlsServer {
    /// Builds the configuration from `files`; an error stops the start.
    pub(crate) fn load(files: TlsFiles) -> Result<TlsServer, TlsError> {
        let stamp = stamp(&files);
        let config = build(&files)?;
        Ok(TlsServer {
            files,
            current: ArcSwap::from_pointee(config),
            checked: Mutex::new((Instant::now(), stamp)),
        })
    }

    /// The configuration for a new handshake, after reloading the files if
    /// they changed since the last look (at most once per [`RECHECK`]).
    fn config(&self) -> Arc<rustls::ServerConfig> {
        self.maybe_reload();
        self.current.load_full()
    }

    fn maybe_reload(&self) {
        let mut checked = match self.checked.try_lock() {
            Ok(c) => c,
            // Another handshake is looking: use what is in force.
            Err(_) => return,
        };
        if checked.0.elapsed() < RECHECK {
            return;
        }
        checked.0 = Instant::now();
        let now = stamp(&self.files);
        if now == checked.1 {
            return;
        }
        checked.1 = now;
        match build(&self.files) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate, key or client CA reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS files changed but do not load; the previous ones stay in force")
            }
        }
    }
}

fn stamp(files: &TlsFiles) -> Stamp {
    [&files.cert, &files.key, &files.client_ca].map(|p| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    })
}

fn build(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::File {
        path: files.key.clone(),
        why: format!("no private key: {e}"),
    })?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.client_ca)? {
        roots.add(ca).map_err(|e| TlsError::File {
            path: files.client_ca.clone(),
            why: format!("not a CA certificate: {e}"),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Required: a client without a certificate chained to the CA, within
    // its validity and allowed for client authentication, is refused.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // Resumption skips the signature and both certificate verifications.
    // Tickets carry the session (the verified client chain included),
    // encrypted under keys that live in this configuration only: every
    // worker can resume any ticket without a shared cache, and a reload of
    // the files (a new CA, say) makes every earlier ticket useless.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(config)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |why: String| TlsError::File {
        path: path.to_path_buf(),
        why,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The names of a verified leaf certificate: its URI SANs, DNS SANs and
/// subject CN. A certificate x509-parser cannot read yields none (the
/// handshake already verified it; it then matches no certificate selector).
pub(crate) fn names(leaf: &[u8]) -> Vec<CertName> {
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => out.push(CertName::Uri(u.to_string())),
                GeneralName::DNSName(d) => {
                    out.push(CertName::Dns(d.trim_end_matches('.').to_ascii_lowercase()))
                }
                _ => {}
            }
        }
    }
    let cns = cert.subject().iter_common_name();
    out.extend(cns.filter_map(|cn| Some(CertName::Cn(cn.as_str().ok()?.to_string()))));
    out
}

/// Serves one connection of the TLS listener: the handshake within the
/// header timeout, then the explicit proxy protocol with the certificate's
/// names as credentials. A failed handshake is counted and logged (debug,
/// without the certificate), and the connection closed.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    tls: Arc<TlsServer>,
    stream: TcpStream,
    client: Peer,
    slot: ConnSlot,
) {
    let peer = client.addr;
    let acceptor = TlsAcceptor::from(tls.config());
    let handshake = tokio::time::timeout(shared.limits.header_timeout, acceptor.accept(stream));
    let outcome = tokio::select! {
        outcome = handshake => outcome,
        () = shared.lifecycle.draining.cancelled() => return,
    };
    let metrics = &shared.telemetry.metrics;
    let stream = match outcome {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            metrics.client_auth(Credential::Certificate, false);
            handshake_failed(peer, &e.to_string());
            return;
        }
        Err(_) => {
            metrics.client_auth(Credential::Certificate, false);
            handshake_failed(peer, "no complete handshake within the header timeout");
            return;
        }
    };
    let certificate: Arc<[CertName]> = match stream.get_ref().1.peer_certificates() {
        Some([leaf, ..]) => names(leaf).into(),
        _ => Arc::from([]),
    };
    http1::serve_tls(shared, stream, client, slot, certificate).await
}

/// Per-connection lines are debug level, and warnings rate-limited: a
/// scanner must not flood the log. rustls's messages name what failed
/// (`invalid peer certificate: Expired`), never key material.
fn handshake_failed(peer: SocketAddr, why: &str) {
    static LIMIT: RateLimit = RateLimit::new();
    tracing::debug!(%peer, error = why, "client TLS handshake failed");
    if let Some(suppressed) = LIMIT.allow() {
        tracing::warn!(%peer, error = why, suppressed, "client TLS handshake failed");
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use super::*;

    #[test]
    fn a_certificate_is_named_by_its_uri_and_dns_sans_and_its_cn() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "payments");
        params.subject_alt_names = vec![
            SanType::URI(
                "spiffe://acme.internal/ns/payments/sa/api"
                    .try_into()
                    .unwrap(),
            ),
            SanType::DnsName("Payments.Internal".try_into().unwrap()),
            SanType::IpAddress("10.0.0.1".parse().unwrap()),
        ];
        let cert = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        assert_eq!(
            names(cert.der()),
            [
                CertName::Uri("spiffe://acme.internal/ns/payments/sa/api".into()),
                CertName::Dns("payments.internal".into()),
                CertName::Cn("payments".into()),
            ]
        );
        assert_eq!(names(b"not DER"), []);
    }
}
