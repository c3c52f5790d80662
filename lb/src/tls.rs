//! The HTTPS listener's TLS: rustls (on ring) under the relay, with the certificate chain
//! and key read once at start-up and ALPN offering `h2` then `http/1.1`.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::LbError;

/// The acceptor of the HTTPS listener; a missing, unreadable or malformed file, or a key
/// that is not the certificate's, is an error naming the file.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, LbError> {
    let fault = |path: &Path, reason: String| LbError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| fault(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fault(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(fault(cert, "no PEM certificate in it".to_owned()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| fault(key, e.to_string()))?;
    // rustls marks ring's provider deprecated for lacking post-quantum key exchange (only
    // its aws-lc-rs provider has it); ring is kept for its light build (no cmake, no C++).
    #[allow(deprecated)]
    let provider = Arc::new(ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fault(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| fault(key, format!("not usable with {}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_malformed_files_are_named() {
        let dir = std::env::temp_dir().join(format!("soundwave-lb-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let error = acceptor(&cert, &key).err().expect("no files").to_string();
        assert!(error.contains("cert.pem"), "{error}");
        std::fs::write(&cert, "not a certificate").unwrap();
        let error = acceptor(&cert, &key).err().expect("no PEM").to_string();
        assert!(
            error.contains("cert.pem") && error.contains("no PEM"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
