//! New mTLS proxy connections per second, against plain CONNECT on the same process:
//! workers loop connect, (full TLS handshake with a client certificate,) CONNECT,
//! 1-byte echo, close. ECDSA P-256 certificates, session resumption off, so every
//! connection pays a full handshake. The proxy's CPU per connection is read from
//! /proc over each measured window; the ratio compares two windows of one run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use tokio_rustls::TlsConnector;

use crate::client::{ORIGIN_HOST, STEP, connect, find, status_of};
use crate::origin::MODE_ECHO;
use crate::target::Target;
use crate::tunnels::{Tally, Window};

/// One kind of connection, measured.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub per_second: f64,
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Proxy CPU (user + system) per completed connection, microseconds.
    pub proxy_cpu_us_per_connection: Option<f64>,
}

/// The figure: plain and mTLS, and how they compare.
#[derive(Debug, Clone, Serialize)]
pub struct Mtls {
    pub workers: usize,
    pub plain: Rate,
    pub mtls: Rate,
    /// mTLS CPU per connection / plain CPU per connection.
    pub cpu_ratio: Option<f64>,
    /// mTLS connections per second / plain connections per second.
    pub rate_ratio: f64,
}

/// Certificates for the run, in a scratch directory removed when dropped.
struct Pki {
    dir: PathBuf,
    client: Arc<ClientConfig>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn pki() -> Result<Pki, String> {
    let dir = std::env::temp_dir().join(format!("portcullis-e2e-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // rcgen's default key is ECDSA P-256.
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    write("ca.pem", &ca.pem())?;
    let leaf =
        |names: Vec<String>, san: Option<SanType>, eku| -> Result<(String, String), String> {
            let mut p = CertificateParams::new(names).map_err(|e| e.to_string())?;
            p.subject_alt_names.extend(san);
            p.extended_key_usages = vec![eku];
            p.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().map_err(|e| e.to_string())?;
            let cert = p.signed_by(&key, &ca).map_err(|e| e.to_string())?;
            Ok((cert.pem(), key.serialize_pem()))
        };
    let (cert, key) = leaf(
        vec!["localhost".into()],
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    write("server.pem", &cert)?;
    write("server.key", &key)?;
    let spiffe = SanType::URI("spiffe://bench/client".try_into().map_err(|_| "uri")?);
    let (cert, key) = leaf(vec![], Some(spiffe), ExtendedKeyUsagePurpose::ClientAuth)?;
    write("client.pem", &cert)?;
    write("client.key", &key)?;
    let client = client_config(&dir)?;
    Ok(Pki { dir, client })
}

fn client_config(dir: &Path) -> Result<Arc<ClientConfig>, String> {
    let certs = |name: &str| -> Result<Vec<CertificateDer<'static>>, String> {
        CertificateDer::pem_file_iter(dir.join(name))
            .map_err(|e| e.to_string())?
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())
    };
    let mut roots = RootCertStore::empty();
    for ca in certs("ca.pem")? {
        roots.add(ca).map_err(|e| e.to_string())?;
    }
    let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs("client.pem")?, key)
        .map_err(|e| e.to_string())?;
    // Every connection a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Starts portcullis with `--listen-tls` and measures plain then mTLS connections.
pub async fn run(
    bin: &Path,
    dns: SocketAddr,
    origin: SocketAddr,
    extra: &[String],
    workers: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<Mtls, String> {
    let pki = pki()?;
    let mut args: Vec<String> = extra.to_vec();
    args.extend(
        [
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
            "--tls-client-ca",
            &pki.path("ca.pem"),
        ]
        .map(String::from),
    );
    let target = Target::portcullis(bin, dns, &args).await?;
    let result = async {
        let plain = target.proxy.ok_or("no explicit listener")?;
        let tls = (target.listening("explicit_tls")).ok_or("no explicit_tls listener announced")?;
        let connector = TlsConnector::from(pki.client.clone());
        let plain = measure_rate(&target, workers, warmup, measure, move || async move {
            let mut s = connect(plain).await?;
            connect_and_echo(&mut s, origin).await
        })
        .await;
        let mtls = measure_rate(&target, workers, warmup, measure, move || {
            let connector = connector.clone();
            async move {
                let tcp = connect(tls).await?;
                let name = ServerName::try_from("localhost").expect("valid name");
                let mut s = timeout(STEP, connector.connect(name, tcp))
                    .await
                    .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
                connect_and_echo(&mut s, origin).await
            }
        })
        .await;
        let cpu_ratio = match (
            plain.proxy_cpu_us_per_connection,
            mtls.proxy_cpu_us_per_connection,
        ) {
            (Some(p), Some(m)) if p > 0.0 => Some(m / p),
            _ => None,
        };
        let rate_ratio = if plain.per_second > 0.0 {
            mtls.per_second / plain.per_second
        } else {
            0.0
        };
        Ok(Mtls {
            workers,
            plain,
            mtls,
            cpu_ratio,
            rate_ratio,
        })
    }
    .await;
    target.stop().await;
    result
}

/// `CONNECT origin.test:PORT`, the 200, one echoed byte; then the stream is dropped.
async fn connect_and_echo<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    origin: SocketAddr,
) -> std::io::Result<()> {
    let port = origin.port();
    let req =
        format!("CONNECT {ORIGIN_HOST}:{port} HTTP/1.1\r\nHost: {ORIGIN_HOST}:{port}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    loop {
        let n = timeout(STEP, s.read(&mut buf[len..]))
            .await
            .map_err(|_| std::io::Error::other("no CONNECT response"))??;
        if n == 0 {
            return Err(std::io::Error::other("closed after CONNECT"));
        }
        len += n;
        if find(&buf[..len], b"\r\n\r\n").is_some() {
            break;
        }
        if len == buf.len() {
            return Err(std::io::Error::other("CONNECT response head over 1 KiB"));
        }
    }
    if status_of(&buf[..len]) != Some(200) {
        return Err(std::io::Error::other("CONNECT refused"));
    }
    s.write_all(&[MODE_ECHO]).await?;
    s.flush().await?;
    let mut got = [0u8; 1];
    timeout(STEP, s.read_exact(&mut got))
        .await
        .map_err(|_| std::io::Error::other("no echo"))??;
    Ok(())
}

/// Closed-loop `workers` running `attempt` for `warmup + measure`; the proxy's CPU is read at
/// the window's edges.
async fn measure_rate<F, Fut>(
    target: &Target,
    workers: usize,
    warmup: Duration,
    measure: Duration,
    attempt: F,
) -> Rate
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send,
{
    let window = Window::after(warmup, measure);
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let attempt = attempt.clone();
        tasks.spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < window.to {
                match attempt().await {
                    Ok(()) if window.contains(Instant::now()) => tally.done += 1,
                    Ok(()) => {}
                    Err(e) => {
                        tally.error(e);
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        });
    }
    tokio::time::sleep_until(window.from).await;
    let cpu_from = target.cpu_seconds();
    tokio::time::sleep_until(window.to).await;
    let cpu_to = target.cpu_seconds();
    let mut total = Tally::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(tally) = done {
            total.merge(tally);
        }
    }
    sleep(Duration::from_millis(500)).await;
    let cpu = match (cpu_from, cpu_to) {
        (Some(a), Some(b)) if total.done > 0 => Some((b - a) * 1e6 / total.done as f64),
        _ => None,
    };
    Rate {
        per_second: total.done as f64 / window.seconds(),
        completed: total.done,
        errors: total.errors,
        first_error: total.first_error,
        proxy_cpu_us_per_connection: cpu,
    }
}

/// The figure as table lines.
pub fn table(m: &Mtls) -> String {
    let cpu = |r: &Rate| {
        r.proxy_cpu_us_per_connection
            .map_or("-".into(), |c| format!("{c:.0}"))
    };
    format!(
        "new connections ({} workers)   conn/s   proxy CPU us/conn\n\
         plain CONNECT                 {:>7.0}   {:>7}\n\
         mTLS + CONNECT                {:>7.0}   {:>7}\n\
         mTLS / plain                  {:>7.2}   {:>7}\n",
        m.workers,
        m.plain.per_second,
        cpu(&m.plain),
        m.mtls.per_second,
        cpu(&m.mtls),
        m.rate_ratio,
        m.cpu_ratio.map_or("-".into(), |r| format!("{r:.2}")),
    )
}
