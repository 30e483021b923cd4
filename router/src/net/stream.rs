//! A connection's byte stream as the pre-login driver and the HTTP server see it:
//! plain TCP, or TLS over it (`--tls-cert`). Owned buffers, monoio style.
//! A session on its home shard does not use it on the plain path (it reads and
//! writes the socket directly); see `net::session`.

use std::io;

use super::CLOSE_FLUSH;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// A connection: the socket and the layers its bytes pass through.
pub(crate) struct Conn {
    pub(crate) tcp: TcpStream,
}

impl Conn {
    /// A plain TCP connection.
    pub(crate) fn plain(tcp: TcpStream) -> Self {
        Conn { tcp }
    }

    /// Reads at most `max` bytes, appended to `buf`; `Ok(0)` is the end of the stream.
    pub(crate) async fn read(
        &mut self,
        mut buf: BytesMut,
        max: usize,
    ) -> (io::Result<usize>, BytesMut) {
        buf.reserve(max);
        let len = buf.len();
        let slice = monoio::buf::IoBufMut::slice_mut(buf, len..len + max);
        let (r, b) = self.tcp.read(slice).await;
        (r, b.into_inner())
    }

    /// Writes all of `data`.
    pub(crate) async fn write_all(&mut self, data: BytesMut) -> io::Result<()> {
        let (r, _) = self.tcp.write_all(data).await;
        r.map(|_| ())
    }

    /// Shuts the sending side down (TLS: after a close_notify).
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.tcp.shutdown().await;
    }

    /// Writes `out` (usually ending in an Error frame) with a bounded wait, then shuts
    /// the connection down.
    pub(crate) async fn close_bounded(&mut self, out: BytesMut) {
        if !out.is_empty() {
            let _ = monoio::time::timeout(CLOSE_FLUSH, self.write_all(out)).await;
        }
        self.shutdown().await;
    }
}
