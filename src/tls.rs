//! HTTPS: certificates from PEM files, swapped in place on SIGHUP, and self-signed
//! certificates for trying HTTPS out (`waybill init --self-signed`).
//!
//! The server config resolves its certificate through [`CertStore`] on every handshake, so
//! a reload changes what new connections get while open connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why certificates could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Reads a certificate chain and its private key.
pub fn load_key_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no certificate found in the file"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| file_error(key, format!("unsupported private key: {e}")))?;
    let pair = CertifiedKey::new(chain, signer);
    pair.keys_match()
        .map_err(|e| file_error(key, format!("does not match the certificate: {e}")))?;
    Ok(pair)
}

/// The certificate new handshakes get; replaced whole by [`CertStore::reload`].
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads the pair once; fails if it cannot be used.
    pub fn open(cert: &Path, key: &Path) -> Result<CertStore, TlsError> {
        let pair = load_key_pair(cert, key)?;
        Ok(CertStore {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(pair)),
        })
    }

    /// Reads the files again. On error the old certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = Arc::new(load_key_pair(&self.cert, &self.key)?);
        match self.current.write() {
            Ok(mut c) => *c = pair,
            Err(poisoned) => *poisoned.into_inner() = pair,
        }
        Ok(())
    }

    /// A rustls server configuration that asks this store on every handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.current.read() {
            Ok(c) => Some(Arc::clone(&c)),
            Err(poisoned) => Some(Arc::clone(&poisoned.into_inner())),
        }
    }
}

/// Writes a self-signed certificate for `hosts` (names or IP addresses) as `cert.pem` and
/// `key.pem` (mode 0600) in `dir`; returns their paths.
pub fn write_self_signed(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let generated = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, generated.cert.pem()).map_err(|e| file_error(&cert_path, e))?;
    let mut key_file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(|e| file_error(&key_path, e))?;
    key_file
        .write_all(generated.key_pair.serialize_pem().as_bytes())
        .map_err(|e| file_error(&key_path, e))?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pairs_load_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) =
            write_self_signed(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let store = CertStore::open(&cert, &key).unwrap();
        let first = store.current.read().unwrap().cert[0].clone();
        write_self_signed(dir.path(), &["localhost".into()]).unwrap();
        store.reload().unwrap();
        assert_ne!(
            store.current.read().unwrap().cert[0],
            first,
            "reload picks up the new certificate"
        );

        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(store.reload().is_err());
        assert!(
            store.current.read().is_ok(),
            "a failed reload keeps serving the old pair"
        );
    }

    #[test]
    fn mismatched_or_missing_files_are_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (cert_a, _) = write_self_signed(a.path(), &["a.example".into()]).unwrap();
        let (_, key_b) = write_self_signed(b.path(), &["b.example".into()]).unwrap();
        assert!(
            load_key_pair(&cert_a, &key_b).is_err(),
            "key must match the certificate"
        );
        assert!(load_key_pair(&a.path().join("nope.pem"), &key_b).is_err());
    }
}
