//! New mTLS proxy connections per second, against plain CONNECT on the same process:
//! workers loop connect, (full TLS handshake with a client certificate,) CONNECT,
//! 1-byte echo, close. ECDSA P-256 certificates, client-side session resumption off, so
//! every connection pays a full handshake; then the same with resumption on (each worker
//! resumes a session from an earlier connection). The proxy's CPU per connection is read
//! from /proc over each measured window; the ratios compare windows of one run. With
//! `--mtls-proxy-workers 1,2` the whole figure is repeated on a proxy started with each
//! `--workers` count, in the same run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
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
    /// Proxy CPU over the window / the window: how many cores the proxy kept busy.
    pub proxy_cores: Option<f64>,
    /// Over TLS: the share of handshakes that resumed a session.
    pub resumed_share: Option<f64>,
}

/// The figure: plain and mTLS, and how they compare.
#[derive(Debug, Clone, Serialize)]
pub struct Mtls {
    /// Client workers (closed loop).
    pub workers: usize,
    /// The proxy's `--workers` (None: its default, one per CPU).
    pub proxy_workers: Option<usize>,
    pub plain: Rate,
    pub mtls: Rate,
    /// mTLS with client-side session resumption on.
    pub resumed: Rate,
    /// mTLS CPU per connection / plain CPU per connection.
    pub cpu_ratio: Option<f64>,
    /// mTLS connections per second / plain connections per second.
    pub rate_ratio: f64,
    /// Resumed mTLS CPU per connection / plain CPU per connection.
    pub resumed_cpu_ratio: Option<f64>,
}

/// Certificates for the run, in a scratch directory removed when dropped.
struct Pki {
    dir: PathBuf,
    /// Every connection a full handshake.
    client: Arc<ClientConfig>,
    /// Resumes sessions (rustls's in-memory client cache, shared by the workers).
    resuming: Arc<ClientConfig>,
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
    let client = client_config(&dir, false)?;
    let resuming = client_config(&dir, true)?;
    Ok(Pki {
        dir,
        client,
        resuming,
    })
}

fn client_config(dir: &Path, resume: bool) -> Result<Arc<ClientConfig>, String> {
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
    if !resume {
        // Every connection a full handshake.
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// Starts portcullis with `--listen-tls` (once per entry of `proxy_workers`, with that
/// `--workers`; once with `extra` as given when it is empty) and measures plain, full mTLS
/// and resumed mTLS connections on each.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    bin: &Path,
    dns: SocketAddr,
    origin: SocketAddr,
    extra: &[String],
    workers: usize,
    proxy_workers: &[usize],
    warmup: Duration,
    measure: Duration,
) -> Result<Vec<Mtls>, String> {
    let pki = pki()?;
    let counts: Vec<Option<usize>> = if proxy_workers.is_empty() {
        vec![None]
    } else {
        proxy_workers.iter().copied().map(Some).collect()
    };
    let mut figures = Vec::new();
    for count in counts {
        let mut args: Vec<String> = extra.to_vec();
        if let Some(n) = count {
            args.push(format!("--workers={n}"));
        }
        eprintln!(
            "e2e: mTLS figure, proxy --workers {}",
            count.map_or("default".into(), |n| n.to_string())
        );
        figures.push(
            run_one(
                &pki, bin, dns, origin, &args, workers, count, warmup, measure,
            )
            .await?,
        );
    }
    Ok(figures)
}

#[allow(clippy::too_many_arguments)]
async fn run_one(
    pki: &Pki,
    bin: &Path,
    dns: SocketAddr,
    origin: SocketAddr,
    extra: &[String],
    workers: usize,
    proxy_workers: Option<usize>,
    warmup: Duration,
    measure: Duration,
) -> Result<Mtls, String> {
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
        let plain = measure_rate(&target, workers, warmup, measure, move || async move {
            let mut s = connect(plain).await?;
            connect_and_echo(&mut s, origin).await
        })
        .await;
        // Counts handshakes, and those that resumed a session.
        let over_tls = |config: Arc<ClientConfig>, seen: Arc<[AtomicU64; 2]>| {
            let connector = TlsConnector::from(config);
            move || {
                let (connector, seen) = (connector.clone(), seen.clone());
                async move {
                    let tcp = connect(tls).await?;
                    let name = ServerName::try_from("localhost").expect("valid name");
                    let mut s = timeout(STEP, connector.connect(name, tcp))
                        .await
                        .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
                    seen[0].fetch_add(1, Ordering::Relaxed);
                    if s.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
                        seen[1].fetch_add(1, Ordering::Relaxed);
                    }
                    connect_and_echo(&mut s, origin).await
                }
            }
        };
        let measure_tls = async |config: &Arc<ClientConfig>| {
            let seen: Arc<[AtomicU64; 2]> = Arc::new(Default::default());
            let mut rate = measure_rate(
                &target,
                workers,
                warmup,
                measure,
                over_tls(config.clone(), seen.clone()),
            )
            .await;
            let [all, resumed] = &*seen;
            let all = all.load(Ordering::Relaxed);
            rate.resumed_share =
                (all > 0).then(|| resumed.load(Ordering::Relaxed) as f64 / all as f64);
            rate
        };
        let mtls = measure_tls(&pki.client).await;
        let resumed = measure_tls(&pki.resuming).await;
        let cpu_ratio = |r: &Rate| match (
            plain.proxy_cpu_us_per_connection,
            r.proxy_cpu_us_per_connection,
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
            proxy_workers,
            cpu_ratio: cpu_ratio(&mtls),
            resumed_cpu_ratio: cpu_ratio(&resumed),
            rate_ratio,
            plain,
            mtls,
            resumed,
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
    let busy = match (cpu_from, cpu_to) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let cpu = busy
        .filter(|_| total.done > 0)
        .map(|s| s * 1e6 / total.done as f64);
    Rate {
        per_second: total.done as f64 / window.seconds(),
        completed: total.done,
        errors: total.errors,
        first_error: total.first_error,
        proxy_cpu_us_per_connection: cpu,
        proxy_cores: busy.map(|s| s / window.seconds()),
        resumed_share: None,
    }
}

/// The figures as table lines.
pub fn table(figures: &[Mtls]) -> String {
    let cpu = |r: &Rate| {
        r.proxy_cpu_us_per_connection
            .map_or("-".into(), |c| format!("{c:.0}"))
    };
    let cores = |r: &Rate| r.proxy_cores.map_or("-".into(), |c| format!("{c:.2}"));
    let share = |r: &Rate| r.resumed_share.map_or("-".into(), |c| format!("{c:.2}"));
    let ratio = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}"));
    let mut out = String::new();
    for m in figures {
        let proxy = m.proxy_workers.map_or("default".into(), |n| n.to_string());
        out.push_str(&format!(
            "new connections ({} client workers, proxy --workers {proxy})\n\
             {:<28} {:>8} {:>10} {:>12} {:>8}\n",
            m.workers, "", "conn/s", "proxy us/conn", "proxy cores", "resumed",
        ));
        for (name, r) in [
            ("plain CONNECT", &m.plain),
            ("mTLS full + CONNECT", &m.mtls),
            ("mTLS resumed + CONNECT", &m.resumed),
        ] {
            out.push_str(&format!(
                "{name:<28} {:>8.0} {:>10} {:>12} {:>8}\n",
                r.per_second,
                cpu(r),
                cores(r),
                share(r)
            ));
        }
        out.push_str(&format!(
            "{:<28} {:>8.2} {:>10}\n{:<28} {:>8} {:>10}\n",
            "mTLS full / plain",
            m.rate_ratio,
            ratio(m.cpu_ratio),
            "mTLS resumed / plain",
            "",
            ratio(m.resumed_cpu_ratio),
        ));
    }
    if let [one, two, ..] = figures
        && one.mtls.per_second > 0.0
    {
        out.push_str(&format!(
            "mTLS full rate, proxy --workers {} / {}: {:.2}\n",
            two.proxy_workers
                .map_or("default".into(), |n| n.to_string()),
            one.proxy_workers
                .map_or("default".into(), |n| n.to_string()),
            two.mtls.per_second / one.mtls.per_second,
        ));
    }
    out
}
