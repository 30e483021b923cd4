//! Self-signed certificates for routers started with `--tls-cert` / `--tls-key`.

use std::path::PathBuf;

/// A self-signed certificate and its key, as PEM files in a temporary
/// directory (removed when this is dropped). The certificate is its own CA:
/// clients trust it with `ca_file = cert`.
pub struct TestCert {
    _dir: tempfile::TempDir,
    /// The certificate (PEM), also the CA file to trust.
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TestCert {
    /// A certificate for `localhost` and `127.0.0.1`.
    pub fn new() -> TestCert {
        Self::for_names(&["localhost", "127.0.0.1"])
    }

    /// A certificate for these DNS names / IP addresses.
    pub fn for_names(names: &[&str]) -> TestCert {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names).expect("rcgen makes a certificate");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).expect("write cert.pem");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key.pem");
        TestCert {
            _dir: dir,
            cert,
            key,
        }
    }

    /// `--tls-cert CERT --tls-key KEY`, for [`crate::RouterProc::start`].
    pub fn args(&self) -> [&str; 4] {
        [
            "--tls-cert",
            self.cert.to_str().expect("a UTF-8 temp path"),
            "--tls-key",
            self.key.to_str().expect("a UTF-8 temp path"),
        ]
    }
}

impl Default for TestCert {
    fn default() -> Self {
        Self::new()
    }
}
