//! The one place where a gRPC channel to a rolegate server is built: `rolegate check`,
//! `watch`, the Admin commands, `bench` and the follower all come through [`endpoint`].
//!
//! An `https://` address is always dialled over TLS, verified against `--ca` when given, else
//! against the system's root certificates; an `http://` address with TLS options is refused
//! rather than dialled in plaintext with the options ignored.

use std::path::PathBuf;

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::{TlsError, certificates, private_key, read_pem};

/// The TLS a client uses towards an `https://` server.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// PEM file of the CA certificate(s) the server's certificate must be signed by; `None`:
    /// the system's root certificates.
    pub ca: Option<PathBuf>,
    /// PEM files of the client certificate and its key, presented to a server that asks for
    /// one (mutual TLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// Whether no TLS option was given.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// Client flags of the commands that call a server (`check`, `watch`, the Admin commands,
/// `bench`).
#[derive(Clone, Debug, Default, Args)]
pub struct ClientTlsArgs {
    /// With an https:// --addr: PEM file of the CA certificate(s) that signed the server's
    /// certificate. Without it, the system's root certificates are used.
    #[arg(long, env = "ROLEGATE_CA")]
    pub(crate) ca: Option<PathBuf>,

    /// With an https:// --addr: PEM file of the client certificate to present (for a server
    /// that requires mutual TLS).
    #[arg(long, env = "ROLEGATE_CLIENT_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "ROLEGATE_CLIENT_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
}

impl From<ClientTlsArgs> for ClientTls {
    fn from(args: ClientTlsArgs) -> Self {
        ClientTls {
            ca: args.ca,
            cert: args.tls_cert,
            key: args.tls_key,
        }
    }
}

/// Follow-mode flags: the TLS the follower uses towards an `https://` hub.
#[derive(Clone, Debug, Default, Args)]
pub struct UpstreamTlsArgs {
    /// Follow mode with an https:// --upstream: PEM file of the CA certificate(s) that signed
    /// the hub's certificate. Without it, the system's root certificates are used.
    #[arg(long, env = "ROLEGATE_UPSTREAM_CA", requires = "upstream")]
    pub upstream_ca: Option<PathBuf>,

    /// Follow mode with an https:// --upstream: PEM file of the client certificate presented
    /// to the hub (mutual TLS). Read again at every connection to the hub.
    #[arg(long, env = "ROLEGATE_UPSTREAM_TLS_CERT", requires_all = ["upstream", "upstream_tls_key"])]
    pub upstream_tls_cert: Option<PathBuf>,

    /// The private key of --upstream-tls-cert (PEM).
    #[arg(long, env = "ROLEGATE_UPSTREAM_TLS_KEY", requires_all = ["upstream", "upstream_tls_cert"])]
    pub upstream_tls_key: Option<PathBuf>,
}

impl From<&UpstreamTlsArgs> for ClientTls {
    fn from(args: &UpstreamTlsArgs) -> Self {
        ClientTls {
            ca: args.upstream_ca.clone(),
            cert: args.upstream_tls_cert.clone(),
            key: args.upstream_tls_key.clone(),
        }
    }
}

/// The endpoint of the server at `url` (`http://HOST:PORT` or `https://HOST:PORT`), with TLS
/// for `https://`. The files are read now: a missing or malformed file is an error here, not
/// at the first call.
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<Endpoint, TlsError> {
    let bad = |message: String| TlsError::Address {
        url: url.to_owned(),
        message,
    };
    let secure = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(bad("it must start with http:// or https://".into()));
    };
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| bad(e.to_string()))?;
    if !secure {
        if !tls.is_empty() {
            return Err(bad(
                "TLS options (a CA or a client certificate) were given for an http:// address, which is plaintext: use https://".into(),
            ));
        }
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca {
        Some(ca) => {
            // Parsed here so that a file without a certificate is an error naming it (tonic
            // skips what it cannot parse).
            certificates(ca)?;
            config.ca_certificate(Certificate::from_pem(read_pem(ca)?))
        }
        None => config.with_native_roots(),
    };
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            certificates(cert)?;
            private_key(key)?;
            config = config.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(TlsError::Config(
                "a client certificate needs both its certificate and its key file".into(),
            ));
        }
    }
    endpoint
        .tls_config(config)
        .map_err(|e| bad(format!("cannot set up TLS: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_options_that_would_not_be_what_they_say_are_refused() {
        let none = ClientTls::default();
        assert!(endpoint("http://127.0.0.1:1", &none).is_ok());
        assert!(endpoint("https://127.0.0.1:1", &none).is_ok());
        let err = endpoint("127.0.0.1:1", &none).unwrap_err().to_string();
        assert!(err.contains("http:// or https://"), "{err}");

        let with_ca = ClientTls {
            ca: Some("/nonexistent/ca.pem".into()),
            ..ClientTls::default()
        };
        let err = endpoint("http://127.0.0.1:1", &with_ca)
            .unwrap_err()
            .to_string();
        assert!(err.contains("use https://"), "{err}");
        let err = endpoint("https://127.0.0.1:1", &with_ca)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");

        let half = ClientTls {
            cert: Some("/nonexistent/cert.pem".into()),
            ..ClientTls::default()
        };
        let err = endpoint("https://127.0.0.1:1", &half)
            .unwrap_err()
            .to_string();
        assert!(err.contains("both"), "{err}");
    }
}
