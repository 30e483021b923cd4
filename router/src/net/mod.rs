//! Connection I/O: accepting, the pre-login driver and handing a connection to its
//! user's home shard ([`accept`]), and a session's reader and writer ([`session`]).
//! The decisions are elsewhere: `crate::prelogin` (before login, sans-IO) and
//! `crate::shard` / `crate::frames` (after).

use std::time::Duration;

use bytes::BytesMut;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

pub(crate) mod accept;
pub(crate) mod session;
pub(crate) mod signup;
pub(crate) mod stream;
pub(crate) mod ws;

/// Longest wait for a closing frame to be written: the peer may not be reading.
const CLOSE_FLUSH: Duration = Duration::from_millis(100);

/// Writes `out` (usually ending in an Error frame) with a bounded wait, then shuts the
/// socket down.
async fn close_bounded(stream: &mut TcpStream, out: BytesMut) {
    if !out.is_empty() {
        let _ = monoio::time::timeout(CLOSE_FLUSH, stream.write_all(out)).await;
    }
    let _ = stream.shutdown().await;
}
