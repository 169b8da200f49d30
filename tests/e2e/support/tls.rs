//! TLS origin (tokio-rustls, ring) with its own rcgen test CA, serving the HTTP/1.1 echo handler.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::LazyConfigAcceptor;

use super::origin::serve_http1;
use super::{AbortOnDrop, bind_loopback, spawn_accept_loop};

/// A TLS + HTTP/1.1 origin on 127.0.0.1 whose certificate (for the given names) is signed
/// by a fresh test CA. Stops, and deletes its CA file, when dropped.
#[derive(Debug)]
pub struct TlsOrigin {
    addr: SocketAddr,
    ca_pem: String,
    ca_file: PathBuf,
    client_config: Arc<ClientConfig>,
    snis: Arc<Mutex<Vec<Option<String>>>>,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

/// The ring provider, named explicitly so no process-wide default provider is needed.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsOrigin {
    /// Generates a CA and a leaf certificate for `names` (DNS names or IP literals), binds
    /// 127.0.0.1:0 and starts serving; bound before this returns.
    pub async fn start(names: &[&str]) -> TlsOrigin {
        TlsOrigin::start_on(bind_loopback().await, names).await
    }

    /// [`TlsOrigin::start`] on a listener the caller bound (e.g. 127.0.0.1:443).
    pub async fn start_on(listener: tokio::net::TcpListener, names: &[&str]) -> TlsOrigin {
        assert!(!names.is_empty(), "TlsOrigin needs at least one name");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        (ca_params.distinguished_name).push(DnType::CommonName, "portcullis test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-sign ca");

        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut leaf_params = CertificateParams::new(names.clone()).expect("leaf params");
        (leaf_params.distinguished_name).push(DnType::CommonName, names[0].as_str());
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("sign leaf");

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut server_config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .expect("server cert");
        server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_config = Arc::new(server_config);

        let ca_pem = ca.pem();
        let ca_file = write_ca_file(&ca_pem);
        let client_config = client_config_trusting(ca.der().clone());

        let addr = listener.local_addr().expect("local_addr");
        let snis = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (seen, reqs) = (snis.clone(), requests.clone());
        let task = spawn_accept_loop(listener, connections.clone(), move |stream| {
            let (config, seen, reqs) = (server_config.clone(), seen.clone(), reqs.clone());
            async move {
                let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
                let Ok(start) = acceptor.await else { return };
                // Recorded from the ClientHello, so it is seen even if the handshake fails.
                let sni = start.client_hello().server_name().map(str::to_owned);
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(sni);
                if let Ok(tls) = start.into_stream(config).await {
                    serve_http1(tls, reqs).await;
                }
            }
        });
        TlsOrigin {
            addr,
            ca_pem,
            ca_file,
            client_config,
            snis,
            connections,
            requests,
            _task: task,
        }
    }

    /// Where the origin listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The test CA certificate, PEM-encoded.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// A temp file holding [`Self::ca_pem`] (e.g. for `curl --cacert`); removed on drop.
    pub fn ca_file(&self) -> PathBuf {
        self.ca_file.clone()
    }

    /// A rustls client config (ring provider) trusting only the test CA.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config.clone()
    }

    /// The SNI of the most recent ClientHello (`None` if it carried none, or no connection yet).
    pub fn last_sni(&self) -> Option<String> {
        self.snis().pop().flatten()
    }

    /// The SNI of every ClientHello received so far, in order.
    pub fn snis(&self) -> Vec<Option<String>> {
        self.snis
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// HTTP requests served so far (after successful handshakes).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

fn client_config_trusting(ca: CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).expect("add test CA");
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Writes the CA to a uniquely named file in the temp dir.
fn write_ca_file(pem: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let name = format!("portcullis-test-ca-{}-{n}.pem", std::process::id());
    let path = std::env::temp_dir().join(name);
    std::fs::write(&path, pem).expect("write CA file");
    path
}
