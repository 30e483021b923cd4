//! The load engine's side of the transports ([`crate::transport`]): the TLS and
//! WebSocket handshakes on a monoio socket, and the two halves every engine
//! task reads and writes through. Plain TCP goes straight to the socket (no
//! copy); TLS and WebSocket go through the connection's [`Wire`]: a sender's
//! batch of frames is encoded (masked, encrypted) into one buffer and written
//! with one write, as on TCP; what is read is decoded into the frames the
//! scanners expect.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::transport::{host_of, RxState, Transport, Wire, WireRx, WireTx};

/// How the engine's ringrouter connections reach the router.
#[derive(Clone)]
pub(super) struct LinkConfig {
    pub(super) transport: Transport,
    /// Loaded once per run (TLS only).
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    /// TLS server name and WebSocket host name.
    pub(super) server_name: String,
}

impl LinkConfig {
    /// For `transport` to the router at `addr` (`host:port`): the TLS
    /// configuration loaded (its CA file read) once.
    pub(super) fn new(transport: &Transport, addr: &str) -> Result<LinkConfig, String> {
        let tls = if transport.tls {
            Some(crate::transport::tls_client_config(
                transport.ca_file.as_deref(),
            )?)
        } else {
            None
        };
        let server_name = transport
            .server_name
            .clone()
            .unwrap_or_else(|| host_of(addr).to_owned());
        Ok(LinkConfig {
            transport: transport.clone(),
            tls,
            server_name,
        })
    }
}

impl LinkConfig {
    /// The transport for the blocking clients of the run (the fan-out rooms' setup).
    pub(super) fn room_transport(&self) -> Transport {
        self.transport
            .clone()
            .with_server_name(self.server_name.clone())
    }
}

/// The write half: frames → socket.
pub(super) struct Tx {
    wire: Option<WireTx>,
    /// What the wire made of a batch.
    enc: BytesMut,
}

/// The read half: socket → frames.
pub(super) struct Rx {
    wire: Option<WireRx>,
    /// Bytes read, before the wire decodes them.
    raw: BytesMut,
    /// The router closed (WebSocket close, TLS close_notify).
    closed: bool,
}

/// The halves of a plain TCP connection.
pub(super) fn plain() -> (Rx, Tx) {
    (
        Rx {
            wire: None,
            raw: BytesMut::new(),
            closed: false,
        },
        Tx {
            wire: None,
            enc: BytesMut::new(),
        },
    )
}

/// The halves of a connection over `wire` (None: plain TCP).
pub(super) fn halves(wire: Option<Wire>) -> (Rx, Tx) {
    match wire {
        None => plain(),
        Some(w) => {
            let (rx, tx) = w.split();
            (
                Rx {
                    wire: Some(rx),
                    raw: BytesMut::with_capacity(64 * 1024),
                    closed: false,
                },
                Tx {
                    wire: Some(tx),
                    enc: BytesMut::with_capacity(64 * 1024),
                },
            )
        }
    }
}

impl Tx {
    /// Writes the frames of `buf` (all of them) and gives the buffer back.
    pub(super) async fn write_all<W: AsyncWriteRent>(
        &mut self,
        wr: &mut W,
        buf: BytesMut,
    ) -> (Result<(), String>, BytesMut) {
        let Some(w) = self.wire.as_mut() else {
            let (r, b) = wr.write_all(buf).await;
            return (r.map(|_| ()).map_err(|e| e.to_string()), b);
        };
        let mut enc = std::mem::take(&mut self.enc);
        enc.clear();
        if let Err(e) = w.output(&buf, &mut enc) {
            self.enc = enc;
            return (Err(e.to_string()), buf);
        }
        let (r, enc) = wr.write_all(enc).await;
        self.enc = enc;
        (r.map(|_| ()).map_err(|e| e.to_string()), buf)
    }

    /// Writes the end of the session: WebSocket Close, TLS close_notify.
    pub(super) async fn finish<W: AsyncWriteRent>(&mut self, wr: &mut W) {
        let Some(w) = self.wire.as_mut() else { return };
        let mut enc = std::mem::take(&mut self.enc);
        enc.clear();
        if w.finish(&mut enc).is_ok() {
            let (_, e) = wr.write_all(enc).await;
            enc = e;
        }
        self.enc = enc;
    }
}

impl Rx {
    /// Reads once onto the end of `buf` (frames), first growing it by `grow`
    /// when less than `min_free` is free. Returns the buffer and whether the
    /// stream goes on (false: closed or failed; a failure is in the error).
    pub(super) async fn read_into<R: AsyncReadRent>(
        &mut self,
        rd: &mut R,
        mut buf: BytesMut,
        min_free: usize,
        grow: usize,
    ) -> (BytesMut, Result<bool, String>) {
        let Some(w) = self.wire.as_mut() else {
            if buf.capacity() - buf.len() < min_free {
                buf.reserve(grow);
            }
            let (len, cap) = (buf.len(), buf.capacity());
            let (r, b) = rd
                .read(monoio::buf::IoBufMut::slice_mut(buf, len..cap))
                .await;
            return (b.into_inner(), Ok(matches!(r, Ok(n) if n > 0)));
        };
        if self.closed {
            return (buf, Ok(false));
        }
        let mut raw = std::mem::take(&mut self.raw);
        raw.clear();
        // Reads as large as the plain path's (which grows `buf` by `grow`).
        if raw.capacity() < grow {
            raw.reserve(grow);
        }
        let cap = raw.capacity();
        let (r, b) = rd.read(monoio::buf::IoBufMut::slice_mut(raw, 0..cap)).await;
        raw = b.into_inner();
        let before = buf.len();
        let state = match r {
            Ok(n) if n > 0 => w.input(&raw, &mut buf),
            _ => {
                self.raw = raw;
                return (buf, Ok(false));
            }
        };
        self.raw = raw;
        match state {
            Ok(RxState::Open) => (buf, Ok(true)),
            Ok(RxState::Closed(_)) => {
                // Frames that came with the close are read first.
                self.closed = true;
                let more = buf.len() > before;
                (buf, Ok(more))
            }
            Err(e) => (buf, Err(e.to_string())),
        }
    }

    /// [`Rx::read_into`] during a handshake: 10 s limit, closing is an error.
    pub(super) async fn read_more(
        &mut self,
        s: &mut TcpStream,
        buf: BytesMut,
        what: &str,
    ) -> Result<BytesMut, String> {
        let (buf, r) = monoio::time::timeout(
            Duration::from_secs(10),
            self.read_into(s, buf, 4096, 16 * 1024),
        )
        .await
        .map_err(|_| format!("{what}: timed out"))?;
        match r {
            Ok(true) => Ok(buf),
            Ok(false) => Err(format!("{what}: connection closed")),
            Err(e) => Err(format!("{what}: {e}")),
        }
    }

    /// Whether the wire owes the router a write (a WebSocket pong or close).
    pub(super) fn wants_write(&self) -> bool {
        self.wire.as_ref().is_some_and(WireRx::wants_write)
    }
}

/// Runs the handshakes of `cfg` on `s` (TLS, then the WebSocket upgrade).
/// Returns the wire (None: plain TCP) and the frames that came behind them.
pub(super) async fn handshake(
    s: &mut TcpStream,
    cfg: &LinkConfig,
) -> Result<(Option<Wire>, BytesMut), String> {
    let t = &cfg.transport;
    let mut frames = BytesMut::new();
    if t.is_plain() {
        return Ok((None, frames));
    }
    let mut wire =
        Wire::new(t, cfg.tls.clone(), &cfg.server_name, 64 << 20).map_err(|e| e.to_string())?;
    let mut raw = vec![0u8; 16 * 1024];
    let mut out = BytesMut::new();
    while wire.tls_handshaking() {
        out = flush(s, &mut wire, out, "TLS handshake").await?;
        raw = read_input(s, &mut wire, raw, &mut frames, "TLS handshake").await?;
    }
    if !wire.is_ws() {
        flush(s, &mut wire, out, "TLS handshake").await?;
        return Ok((Some(wire), frames));
    }
    out.clear();
    let port = s.peer_addr().map(|a| a.port()).unwrap_or(0);
    let host = if cfg.server_name.contains(':') {
        format!("[{}]:{port}", cfg.server_name)
    } else {
        format!("{}:{port}", cfg.server_name)
    };
    let key = wire
        .ws_request(&host, &t.ws_path, &mut out)
        .map_err(|e| e.to_string())?;
    let (r, _) = s.write_all(out).await;
    r.map_err(|e| format!("WebSocket upgrade: {e}"))?;
    loop {
        raw = read_input(s, &mut wire, raw, &mut frames, "WebSocket upgrade").await?;
        if wire
            .ws_accepted(&key, &mut frames)
            .map_err(|e| e.to_string())?
        {
            return Ok((Some(wire), frames));
        }
    }
}

/// Reads once (10 s limit) and feeds what came to the wire.
async fn read_input(
    s: &mut TcpStream,
    wire: &mut Wire,
    raw: Vec<u8>,
    frames: &mut BytesMut,
    what: &str,
) -> Result<Vec<u8>, String> {
    let (r, raw) = monoio::time::timeout(Duration::from_secs(10), s.read(raw))
        .await
        .map_err(|_| format!("{what}: timed out"))?;
    match r {
        Ok(n) if n > 0 => {
            wire.rx
                .input(&raw[..n], frames)
                .map_err(|e| format!("{what}: {e}"))?;
            Ok(raw)
        }
        Ok(_) => Err(format!("{what}: connection closed")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Writes whatever the wire owes (TLS handshake records).
async fn flush(
    s: &mut TcpStream,
    wire: &mut Wire,
    mut out: BytesMut,
    what: &str,
) -> Result<BytesMut, String> {
    out.clear();
    wire.tx
        .output(&[], &mut out)
        .map_err(|e| format!("{what}: {e}"))?;
    if out.is_empty() {
        return Ok(out);
    }
    let (r, b) = s.write_all(out).await;
    r.map_err(|e| format!("{what}: {e}"))?;
    Ok(b)
}
