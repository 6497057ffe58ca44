//! TLS for both sides of rolegate's connections, with rustls: the server's certificate and
//! optional client CA for the gRPC and HTTP ports, reloaded when the files change
//! ([`server`]); and the one place where every client (the CLI, the bench, the follower) builds
//! its gRPC channel, so that an `https://` address is always dialled over TLS ([`client`]).

pub mod client;
pub mod server;

use std::{
    io::Read,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// A PEM file larger than this is refused rather than read (a certificate chain or a key is a
/// few kilobytes; a CA bundle a few hundred).
const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
    #[error("the address {url:?}: {message}")]
    Address { url: String, message: String },
}

impl TlsError {
    fn file(path: &Path, message: impl Into<String>) -> Self {
        TlsError::File {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// The crypto provider of every TLS config rolegate builds (named rather than taken from the
/// process default, which is ambiguous when more than one provider is compiled in).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file, bounded in size.
pub(crate) fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let file = std::fs::File::open(path).map_err(|e| TlsError::file(path, e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TlsError::file(path, e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::file(
            path,
            format!("larger than {MAX_PEM_BYTES} bytes: not a PEM certificate or key"),
        ));
    }
    Ok(bytes)
}

/// Every certificate of a PEM file (at least one).
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    parse_certificates(path, &pem)
}

fn parse_certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::file(
            path,
            "holds no certificate (expected PEM blocks \"BEGIN CERTIFICATE\")",
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        // The error names what was wrong with the file, never the key's bytes.
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (expected a PEM block \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")".to_owned()
            }
            other => format!("not a PEM private key file: {other}"),
        };
        TlsError::file(path, why)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_empty_and_garbage_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = certificates(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = certificates(&empty).unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        let err = private_key(&empty).unwrap_err().to_string();
        assert!(err.contains("holds no private key"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = certificates(&garbage).unwrap_err().to_string();
        assert!(err.contains("not a PEM certificate file"), "{err}");

        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_PEM_BYTES as usize + 1]).unwrap();
        let err = certificates(&big).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }
}
