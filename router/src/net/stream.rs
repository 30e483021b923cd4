//! A connection's byte stream as the pre-login driver and the HTTP server see it:
//! plain TCP, or with [`Layers`] (TLS with `--tls-cert`, WebSocket after an
//! upgrade): reads give the decrypted, unframed bytes, writes take them. Owned
//! buffers, monoio style. A session on its home shard does not use it (it reads and
//! writes the socket itself, see `net::session`).

use std::io;
use std::net::IpAddr;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use std::sync::Arc;

use super::CLOSE_FLUSH;
use crate::shared::Shared;
use crate::transport::tls::{Admit, Handshakes};
use crate::transport::{ws, Ingested, Layers};

/// Raw bytes read at a time through layers.
const RAW_READ: usize = 16 * 1024;

/// A connection: the socket and the layers its bytes pass through.
pub(crate) struct Conn {
    pub(crate) tcp: TcpStream,
    pub(crate) layers: Option<Box<Layers>>,
    /// Where TLS handshake steps run (a TLS connection; see [`Handshakes`]).
    handshakes: Option<Arc<Handshakes>>,
    /// The bound its next handshake step is held to (its first, on which port; then
    /// none).
    admit: Admit,
    /// The peer's address as per-address bounds count it (`address_key`).
    from: IpAddr,
}

impl Conn {
    /// A plain TCP connection (refusals over `--max-connections`).
    pub(crate) fn plain(tcp: TcpStream) -> Self {
        Conn {
            tcp,
            layers: None,
            handshakes: None,
            admit: Admit::Started,
            from: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }
    }

    /// A connection with its layers (a session's, to close it; TLS is past its
    /// handshake).
    pub(crate) fn with_layers(tcp: TcpStream, layers: Option<Box<Layers>>) -> Self {
        Conn {
            tcp,
            layers,
            handshakes: None,
            admit: Admit::Started,
            from: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }
    }

    /// A new accepted connection (on the HTTP port: `http`): TLS when the router has a
    /// certificate, else plain.
    pub(crate) fn accepted(tcp: TcpStream, shared: &Shared, http: bool) -> io::Result<Self> {
        let layers = match &shared.tls {
            Some(cfg) => Some(Box::new(
                Layers::tls(cfg, shared.cfg.max_tls_handshake_bytes).map_err(io::Error::other)?,
            )),
            None => None,
        };
        let from = tcp
            .peer_addr()
            .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| {
                crate::address::address_key(a.ip())
            });
        Ok(Conn {
            tcp,
            layers,
            handshakes: shared.handshakes.clone(),
            admit: if http { Admit::NewHttp } else { Admit::New },
            from,
        })
    }

    /// Frames are WebSocket messages from now on; `early` are bytes read past the
    /// upgrade request.
    pub(crate) fn start_ws(&mut self, protocol: ws::Protocol, max_frame: usize, early: BytesMut) {
        self.layers
            .get_or_insert_with(|| Box::new(Layers::none()))
            .start_ws(protocol, max_frame, early);
    }

    /// Reads at most about `max` bytes, appended to `buf`; `Ok(0)` is the end of the
    /// stream.
    pub(crate) async fn read(
        &mut self,
        mut buf: BytesMut,
        max: usize,
    ) -> (io::Result<usize>, BytesMut) {
        if self.lost() {
            return (Err(lost_error()), buf);
        }
        let Some(layers) = self.layers.as_deref_mut() else {
            buf.reserve(max);
            let len = buf.len();
            let slice = monoio::buf::IoBufMut::slice_mut(buf, len..len + max);
            let (r, b) = self.tcp.read(slice).await;
            return (r, b.into_inner());
        };
        let before = buf.len();
        let mut raw = std::mem::take(&mut layers.raw);
        // What is buffered already (bytes that came with the upgrade request).
        let early = layers.ingest(&mut raw, &mut buf);
        layers.raw = raw;
        match early {
            // A violation in what was buffered (before Login, messages behind the first
            // are decoded here): closed with its code now, as one found in a new read.
            Err(reason) => return self.refuse(reason, buf).await,
            Ok(_) if buf.len() > before => return (Ok(buf.len() - before), buf),
            Ok(Ingested::End) => return (Ok(0), buf),
            Ok(Ingested::More) => {}
        }
        loop {
            let Some(layers) = self.layers.as_deref_mut() else {
                return (Err(lost_error()), buf);
            };
            if layers.has_pending() {
                let mut wire = BytesMut::new();
                layers.take_pending(&mut wire);
                if let Err(e) = self.tcp.write_all(wire).await.0 {
                    return (Err(e), buf);
                }
            }
            let Some(layers) = self.layers.as_deref_mut() else {
                return (Err(lost_error()), buf);
            };
            let mut raw = std::mem::take(&mut layers.raw);
            let want = max.clamp(1, RAW_READ);
            raw.reserve(want);
            let len = raw.len();
            let slice = monoio::buf::IoBufMut::slice_mut(raw, len..len + want);
            let (r, b) = self.tcp.read(slice).await;
            let raw = b.into_inner();
            let eof = match r {
                Ok(n) => n == 0,
                Err(e) => return (Err(e), buf),
            };
            let (res, b) = self.ingest(raw, buf).await;
            buf = b;
            if self.layers.is_none() {
                return (Err(lost_error()), buf);
            }
            let got = buf.len() - before;
            match res {
                Err(reason) => return self.refuse(reason, buf).await,
                Ok(_) if got > 0 => return (Ok(got), buf),
                Ok(Ingested::End) => return (Ok(0), buf),
                Ok(Ingested::More) if eof => return (Ok(0), buf),
                Ok(Ingested::More) => {}
            }
        }
    }

    /// Ends the conversation over a violation of the peer's (its close code, or a TLS
    /// alert, is queued by the layers) and gives the read its error.
    async fn refuse(&mut self, reason: String, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        if let Some(layers) = self.layers.as_deref_mut() {
            layers.end(ws::code::NORMAL, "");
            let mut wire = BytesMut::new();
            layers.take_pending(&mut wire);
            let _ = monoio::time::timeout(CLOSE_FLUSH, self.tcp.write_all(wire)).await;
        }
        (Err(io::Error::new(io::ErrorKind::InvalidData, reason)), buf)
    }

    /// The layers (TLS) went to a handshake thread and did not come back (the read was
    /// dropped, or refused at the bound): nothing more is written or read.
    fn lost(&self) -> bool {
        self.handshakes.is_some() && self.layers.is_none()
    }

    /// Passes `raw` through the layers (which keep what they cannot use yet) onto
    /// `buf`. While TLS is handshaking this runs on a handshake thread: the layers go
    /// there and come back with the result. If they do not come back (refused at the
    /// bound, or this future dropped), the connection is lost.
    async fn ingest(
        &mut self,
        mut raw: BytesMut,
        mut buf: BytesMut,
    ) -> (Result<Ingested, String>, BytesMut) {
        let Some(mut layers) = self.layers.take() else {
            return (Err("connection lost".into()), buf);
        };
        // (An end of stream, nothing read, costs rustls nothing.)
        let hs = self
            .handshakes
            .as_ref()
            .filter(|_| layers.handshaking() && !raw.is_empty());
        let Some(hs) = hs else {
            let r = layers.ingest(&mut raw, &mut buf);
            layers.raw = raw;
            self.layers = Some(layers);
            return (r, buf);
        };
        let hs = Arc::clone(hs);
        let step = hs
            .run(self.admit, self.from, move || {
                let r = layers.ingest(&mut raw, &mut buf);
                layers.raw = raw;
                (layers, buf, r)
            })
            .await;
        match step {
            Some((layers, buf, r)) => {
                self.layers = Some(layers);
                self.admit = Admit::Started;
                (r, buf)
            }
            None => (
                Err("too many TLS handshakes in progress (--max-tls-handshakes)".into()),
                BytesMut::new(),
            ),
        }
    }

    /// Writes all of `data` (whole frames when a WebSocket layer is on).
    pub(crate) async fn write_all(&mut self, data: BytesMut) -> io::Result<()> {
        if self.lost() {
            return Err(lost_error());
        }
        let wire = match self.layers.as_deref_mut() {
            None => data,
            Some(l) => egressed(l, &data),
        };
        if wire.is_empty() {
            return Ok(());
        }
        let (r, _) = self.tcp.write_all(wire).await;
        r.map(|_| ())
    }

    /// [`Conn::write_all`] of shared bytes: written as they are on a plain connection.
    pub(crate) async fn write_bytes(&mut self, data: bytes::Bytes) -> io::Result<()> {
        if self.lost() {
            return Err(lost_error());
        }
        let (r, _) = match self.layers.as_deref_mut() {
            None => self.tcp.write_all(data).await,
            Some(l) => {
                let wire = egressed(l, &data);
                self.tcp.write_all(wire.freeze()).await
            }
        };
        r.map(|_| ())
    }

    /// Waits until the socket has bytes to read (or is closed), holding no buffer; at
    /// once when layers (TLS) may hold bytes already read.
    pub(crate) async fn readable(&mut self) -> io::Result<()> {
        if self.layers.is_some() {
            return Ok(());
        }
        self.tcp.readable(false).await
    }

    /// Writes raw bytes, outside the WebSocket framing (the HTTP answer to an
    /// upgrade); TLS still applies.
    pub(crate) async fn write_raw(&mut self, data: &[u8]) -> io::Result<()> {
        if self.lost() {
            return Err(lost_error());
        }
        let wire = match self.layers.as_deref_mut() {
            None => BytesMut::from(data),
            Some(l) => {
                let mut wire = BytesMut::new();
                l.egress_raw(data, &mut wire);
                wire
            }
        };
        let (r, _) = self.tcp.write_all(wire).await;
        r.map(|_| ())
    }

    /// Ends the conversation (WebSocket close frame, TLS close_notify) and shuts the
    /// sending side down.
    pub(crate) async fn shutdown(&mut self) {
        self.shutdown_with(ws::code::NORMAL, "").await;
    }

    /// [`Self::shutdown`], a WebSocket closing with `code` and `reason`.
    pub(crate) async fn shutdown_with(&mut self, code: u16, reason: &str) {
        if let Some(l) = self.layers.as_deref_mut() {
            l.end(code, reason);
            let mut wire = BytesMut::new();
            l.take_pending(&mut wire);
            if !wire.is_empty() {
                let _ = monoio::time::timeout(CLOSE_FLUSH, self.tcp.write_all(wire)).await;
            }
        }
        let _ = self.tcp.shutdown().await;
    }

    /// Writes `out` (usually ending in an Error frame) with a bounded wait, then shuts
    /// the connection down.
    pub(crate) async fn close_bounded(&mut self, out: BytesMut) {
        self.close_bounded_with(out, ws::code::NORMAL, "").await;
    }

    /// [`Self::close_bounded`], a WebSocket closing with `code` and `reason` (why the
    /// router ends the conversation, as the Error frame in `out` says).
    pub(crate) async fn close_bounded_with(&mut self, out: BytesMut, code: u16, reason: &str) {
        if !out.is_empty() {
            let _ = monoio::time::timeout(CLOSE_FLUSH, self.write_all(out)).await;
        }
        self.shutdown_with(code, reason).await;
    }
}

/// `data` as the layers put it on the wire (TLS records, WebSocket frames).
fn egressed(l: &mut Layers, data: &[u8]) -> BytesMut {
    let mut wire = BytesMut::new();
    l.egress(data, &mut wire);
    wire
}

/// The error of a connection whose layers were lost (see [`Conn::ingest`]).
fn lost_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "TLS handshake not completed",
    )
}
