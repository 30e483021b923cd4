//! The `tls`, `ca_file` and `transport` arguments of `Client` and `load_run`,
//! and TLS failures as Python's own `ssl` exceptions.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use ringrouter_client::transport::{host_of, Transport, TransportKind};

/// The transport for `addr` ("host:port"): `kind` "tcp" or "ws", TLS if `tls`
/// (verified against `ca_file`, else the built-in roots, for the host of `addr`).
pub(crate) fn transport(
    addr: &str,
    tls: bool,
    ca_file: Option<PathBuf>,
    kind: &str,
) -> PyResult<Transport> {
    let kind: TransportKind = kind.parse().map_err(PyValueError::new_err)?;
    if ca_file.is_some() && !tls {
        return Err(PyValueError::new_err("ca_file is for tls=True"));
    }
    let t = Transport {
        kind,
        ..Transport::default()
    };
    Ok(if tls {
        t.with_tls(ca_file).with_server_name(host_of(addr))
    } else {
        t
    })
}

/// A TLS failure as `ssl.SSLCertVerificationError` (the router's certificate was not
/// trusted or not valid for the host: rustls's "invalid peer certificate") or
/// `ssl.SSLError` (anything else, a CA file that cannot be used included): both are
/// `OSError`s, as for Python's own `ssl` module.
///
/// Built as `ssl` builds them, from `(errno, message)` (errno `ssl.SSL_ERROR_SSL`):
/// `str(err)` is then the message (`err.strerror`), not the tuple of the arguments.
pub(crate) fn tls_error(py: Python<'_>, why: &str) -> PyErr {
    let name = if why.contains("invalid peer certificate") {
        "SSLCertVerificationError"
    } else {
        "SSLError"
    };
    let msg = format!("TLS error: {why}");
    match py.import("ssl").and_then(|m| {
        let errno = m.getattr("SSL_ERROR_SSL")?;
        m.getattr(name)?.call1((errno, msg.clone()))
    }) {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) => pyo3::exceptions::PyOSError::new_err(msg),
    }
}
