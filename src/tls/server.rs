//! TLS of the gRPC and HTTP ports: `serve --tls-cert --tls-key [--tls-client-ca]`.
//!
//! The files are loaded into one rustls `ServerConfig` per port (ALPN `h2` for gRPC, `http/1.1`
//! for HTTP). A poll compares the files' identity (device, inode, size, modification time, all
//! after following symlinks, so that a Kubernetes secret volume's `..data` swap counts) with the
//! last load; when it differs, all three files are read again and both configs are rebuilt and
//! swapped whole. New connections take the new configs; established ones keep the certificate
//! they were made with. Files that do not parse, or a key that does not match the certificate,
//! leave the last good configs in place and log an error (once per change of the files).

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use clap::Args;
use rustls::{
    RootCertStore, ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use tokio::{net::TcpStream, time::Instant};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{TlsError, certificates, private_key, provider};

/// `rolegate serve` flags for TLS on the gRPC and HTTP ports.
#[derive(Clone, Debug, Args)]
pub struct ServerTlsArgs {
    /// PEM file of the server's certificate chain (leaf first). With --tls-key, the gRPC and
    /// HTTP ports accept TLS only. Reloaded when the file changes.
    #[arg(long, env = "ROLEGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file of the private key of --tls-cert (PKCS#8, PKCS#1 or SEC1). Reloaded when the
    /// file changes; its contents never reach a log or an error message.
    #[arg(long, env = "ROLEGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM file of the CA certificate(s) client certificates must be signed by: mutual TLS,
    /// where a client without such a certificate cannot connect. Reloaded when it changes.
    #[arg(long, env = "ROLEGATE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS files are checked for changes.
    #[arg(long, env = "ROLEGATE_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,
}

impl Default for ServerTlsArgs {
    fn default() -> Self {
        ServerTlsArgs {
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_reload_interval: Duration::from_secs(10),
        }
    }
}

/// The TLS files of the server.
#[derive(Clone, Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl Files {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    /// The files' identities now; `None` for a file that cannot be examined.
    fn identity(&self) -> Vec<Option<FileId>> {
        self.paths().map(FileId::of).collect()
    }
}

/// What tells one version of a file from another without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

/// The rustls configs of the two ports, built from one reading of the files.
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// What a poll of the files did.
#[derive(Debug)]
pub enum Reload {
    /// The files are as they were at the last attempt.
    Unchanged,
    /// The files changed and the new ones are in use.
    Reloaded,
    /// The files changed but cannot be used; the previous ones stay in use.
    Failed(TlsError),
}

/// The server's TLS: the current configs of both ports, swapped when the files change.
pub struct ServerTls {
    files: Files,
    /// Read once per accepted connection; written only by a successful reload.
    configs: RwLock<Configs>,
    /// The files' identities at the last load attempt, successful or not: a broken file is
    /// reported once, and tried again as soon as it changes.
    seen: Mutex<Vec<Option<FileId>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the files named by `args`; `None` when TLS is not configured. An error names the
    /// file and what is wrong with it.
    pub fn load(args: &ServerTlsArgs) -> Result<Option<Arc<ServerTls>>, TlsError> {
        let (cert, key) = match (&args.tls_cert, &args.tls_key) {
            (None, None) if args.tls_client_ca.is_none() => return Ok(None),
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => {
                return Err(TlsError::Config(
                    "--tls-cert and --tls-key go together (and --tls-client-ca needs both)".into(),
                ));
            }
        };
        let files = Files {
            cert,
            key,
            client_ca: args.tls_client_ca.clone(),
        };
        let seen = files.identity();
        let configs = build(&files)?;
        Ok(Some(Arc::new(ServerTls {
            files,
            configs: RwLock::new(configs),
            seen: Mutex::new(seen),
        })))
    }

    /// Whether clients must present a certificate.
    pub(crate) fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The acceptor for a new gRPC connection (ALPN `h2`).
    pub fn grpc_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.read().grpc.clone())
    }

    /// The acceptor for a new HTTP connection (ALPN `http/1.1`).
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.read().http.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Configs> {
        // A panic while holding the lock cannot leave the configs half-written: they are
        // replaced whole.
        self.configs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Loads the files again if they changed since the last attempt.
    pub fn reload_if_changed(&self) -> Reload {
        let now = self.files.identity();
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == now {
                return Reload::Unchanged;
            }
            // Taken before reading: a file replaced while it is read shows a new identity at
            // the next poll and is read again.
            *seen = now;
        }
        match build(&self.files) {
            Ok(configs) => {
                *self
                    .configs
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = configs;
                Reload::Reloaded
            }
            Err(err) => Reload::Failed(err),
        }
    }

    /// Polls the files every `interval` until `stop` is raised, logging each reload.
    pub(crate) async fn watch(
        self: Arc<Self>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let interval = interval.max(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(interval) => {}
            }
            let this = self.clone();
            let reload = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
            match reload {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Reloaded) => tracing::info!(
                    cert = %self.files.cert.display(),
                    client_ca = self.files.client_ca.as_ref().map(|p| p.display().to_string()).as_deref(),
                    "TLS files changed: new connections use the new certificate"
                ),
                Ok(Reload::Failed(err)) => tracing::error!(
                    error = %err,
                    "TLS files changed but cannot be used: the previous certificate stays in use"
                ),
                Err(err) => tracing::error!(error = %err, "the TLS reload task failed"),
            }
        }
    }
}

/// Reads the files and builds both ports' configs.
fn build(files: &Files) -> Result<Configs, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let provider = provider();
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match &files.client_ca {
        None => None,
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(path)? {
                roots.add(ca).map_err(|e| TlsError::File {
                    path: path.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
                    .build()
                    .map_err(|e| TlsError::File {
                        path: path.clone(),
                        message: format!("cannot verify client certificates with it: {e}"),
                    })?;
            Some(verifier)
        }
    };
    let config = |alpn: &[u8]| -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                let why = match e {
                    rustls::Error::InconsistentKeys(_) => {
                        "the private key does not match the certificate".to_owned()
                    }
                    other => other.to_string(),
                };
                TlsError::Config(format!(
                    "{} with {}: {why}",
                    files.cert.display(),
                    files.key.display()
                ))
            })?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    };
    Ok(Configs {
        grpc: config(b"h2")?,
        http: config(b"http/1.1")?,
    })
}

/// Completes the server side of a TLS handshake on `tcp`, or fails once `deadline` passes.
pub(crate) async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    deadline: Instant,
) -> io::Result<TlsStream<TcpStream>> {
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(done) => done,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the TLS handshake did not complete within the handshake timeout",
        )),
    }
}
