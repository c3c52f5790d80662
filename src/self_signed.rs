//! A self-signed certificate for local HTTPS (`soundwave up --tls`, the tests): made once
//! for `localhost` and `127.0.0.1` with rcgen, its key written private (0600).

use std::path::{Path, PathBuf};

/// The PEM files of a certificate and its key.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SelfSignedError {
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The names the certificate is good for.
const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// `dir/cert.pem` and `dir/key.pem`: kept when both are there, made otherwise.
pub fn ensure_self_signed(dir: &Path) -> Result<CertificateFiles, SelfSignedError> {
    let files = CertificateFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if files.cert.is_file() && files.key.is_file() {
        return Ok(files);
    }
    let names: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
    let made = rcgen::generate_simple_self_signed(names)?;
    let write = |path: &Path, text: &str| {
        crate::private_files::write_private(path, text).map_err(|source| SelfSignedError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    // The key first: a certificate without its key would be kept and never usable.
    write(&files.key, &made.signing_key.serialize_pem())?;
    write(&files.cert, &made.cert.pem())?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_self_signed(dir.path()).unwrap();
        let cert = std::fs::read_to_string(&files.cert).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key mode {mode:o}");
        let again = ensure_self_signed(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&again.cert).unwrap(), cert);
    }
}
