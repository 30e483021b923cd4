//! [`ClientError`]: every way a client call can fail, router answers included.

use ringrouter_proto::Status;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The router refused the login.
    #[error("login refused ({}): {reason}", code.short_name())]
    Auth {
        /// Status code.
        code: Status,
        /// Router's reason.
        reason: String,
    },
    /// The router answered with an error.
    #[error("router error {}: {reason}", code.short_name())]
    Router {
        /// Status code.
        code: Status,
        /// Router's reason.
        reason: String,
        /// Request id the error answers (0 if none).
        request_id: u64,
    },
    /// The connection is closed (by the router or the network).
    #[error("connection closed: {0}")]
    Closed(String),
    /// No answer in time.
    #[error("timed out waiting for the router")]
    Timeout,
    /// TLS failed: the handshake (an untrusted or mismatched certificate, ...)
    /// or a record later; or the TLS configuration (an unreadable CA file).
    #[error("TLS error: {0}")]
    Tls(String),
    /// The router sent bytes that are not a valid frame.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The router's status code, for `Auth` and `Router` errors.
    pub fn code(&self) -> Option<Status> {
        match self {
            ClientError::Auth { code, .. } | ClientError::Router { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl ClientError {
    /// An answer of the wrong kind for a request id (a router bug).
    pub(crate) fn unexpected_answer(what: &str, request_id: u64) -> ClientError {
        ClientError::Protocol(format!(
            "request {request_id}: the router answered a {what} request with another kind of result"
        ))
    }
}
