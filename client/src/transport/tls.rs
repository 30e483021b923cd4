//! TLS with rustls: the client configuration (a CA file, or the webpki roots)
//! and the byte pumps between a [`ClientConnection`] and the socket, without I/O.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// A rustls client configuration trusting the certificates of `ca_file` (PEM),
/// or, without one, the webpki roots (Mozilla's list).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("bad CA file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("no certificate in CA file {}", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM first (as browsers order it): the server follows the client's
    // order, and it costs both ends less than AES-256-GCM per byte. Every
    // default suite stays offered.
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A client connection to `server_name` (a DNS name or an IP address).
pub(crate) fn connection(
    cfg: Arc<ClientConfig>,
    server_name: &str,
) -> Result<ClientConnection, String> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("bad TLS server name {server_name:?}: {e}"))?;
    let mut c = ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    // Encrypted records wait in rustls until [`seal`] moves them out; the
    // callers bound what they hand over.
    c.set_buffer_limit(None);
    Ok(c)
}

/// Feeds bytes read from the socket to `conn` and appends the plaintext they
/// complete to `plain`. Returns whether the peer closed the TLS session
/// (close_notify).
pub(crate) fn open(
    conn: &mut ClientConnection,
    mut raw: &[u8],
    plain: &mut BytesMut,
) -> Result<bool, String> {
    let mut eof = false;
    while !raw.is_empty() {
        conn.read_tls(&mut raw).map_err(|e| format!("TLS: {e}"))?;
        let state = conn
            .process_new_packets()
            .map_err(|e| format!("TLS: {e}"))?;
        let mut avail = state.plaintext_bytes_to_read();
        // Chunk by chunk, copied once (no zero-filled buffer to read into).
        let mut reader = conn.reader();
        while avail > 0 {
            let chunk = reader.fill_buf().map_err(|e| format!("TLS: {e}"))?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            plain.extend_from_slice(chunk);
            reader.consume(n);
            avail = avail.saturating_sub(n);
        }
        eof |= state.peer_has_closed();
    }
    Ok(eof)
}

/// Encrypts `plain` and appends every record `conn` has to send (handshake and
/// alerts included) to `out`.
pub(crate) fn seal(
    conn: &mut ClientConnection,
    plain: &[u8],
    out: &mut BytesMut,
) -> Result<(), String> {
    if !plain.is_empty() {
        conn.writer()
            .write_all(plain)
            .map_err(|e| format!("TLS: {e}"))?;
    }
    let mut w = out.writer();
    while conn.wants_write() {
        conn.write_tls(&mut w).map_err(|e| format!("TLS: {e}"))?;
    }
    Ok(())
}
