//! Transports under the clients: plain TCP, TLS (rustls), and WebSocket
//! (binary subprotocol `ringrouter.v1`) over either.
//!
//! The clients above ([`crate::Client`], [`crate::threaded::ThreadedClient`],
//! the load engine) always speak varint-delimited frames. A [`Wire`] sits
//! between those frames and the socket, without doing I/O itself:
//!
//! - [`WireTx::output`] turns frames into the bytes to write (each frame one
//!   masked WebSocket message; then TLS records);
//! - [`WireRx::input`] turns bytes read into frames (TLS records decrypted;
//!   WebSocket messages reassembled, each given its varint length back).
//!
//! The two halves can live on two threads (the threaded client's reader and
//! writer): they share the rustls connection (locked only to encrypt or
//! decrypt, never across socket I/O) and the queue of control frames the
//! reader owes the server (WebSocket pong and close answers), which the
//! writer sends ahead of its next frames; [`WireRx::input`] says when that
//! queue needs a write. Plain TCP has no `Wire`: the clients write and read
//! frames as they are.

#[cfg(test)]
mod loopback;
pub(crate) mod tls;
pub(crate) mod ws;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::ClientConnection;

use crate::ClientError;
use ws::{Control, Decoder, Masker};

pub use tls::client_config as tls_client_config;

/// Which transport carries the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// Length-delimited frames on a TCP (or TLS) stream: the router's TCP port.
    #[default]
    Tcp,
    /// WebSocket, subprotocol `ringrouter.v1` (one frame per binary message):
    /// the router's HTTP port, path [`Transport::ws_path`].
    WebSocket,
}

impl TransportKind {
    /// "tcp" or "ws".
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::WebSocket => "ws",
        }
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(TransportKind::Tcp),
            "ws" | "websocket" => Ok(TransportKind::WebSocket),
            other => Err(format!("unknown transport {other:?} (tcp or ws)")),
        }
    }
}

/// How a client reaches the router.
#[derive(Debug, Clone)]
pub struct Transport {
    /// TCP framing or WebSocket.
    pub kind: TransportKind,
    /// TLS on top of TCP (for WebSocket: `wss`).
    pub tls: bool,
    /// With `tls`: trust the certificates of this PEM file instead of the
    /// webpki roots.
    pub ca_file: Option<PathBuf>,
    /// With `tls`: the name the certificate must be valid for (also the
    /// WebSocket `Host`). None: the IP address connected to.
    pub server_name: Option<String>,
    /// WebSocket: the path of the upgrade request.
    pub ws_path: String,
}

impl Default for Transport {
    /// Plain TCP.
    fn default() -> Self {
        Transport {
            kind: TransportKind::Tcp,
            tls: false,
            ca_file: None,
            server_name: None,
            ws_path: "/ws".into(),
        }
    }
}

impl Transport {
    /// Plain TCP (the default).
    pub fn tcp() -> Self {
        Transport::default()
    }

    /// WebSocket to the router's HTTP port.
    pub fn websocket() -> Self {
        Transport {
            kind: TransportKind::WebSocket,
            ..Transport::default()
        }
    }

    /// The same with TLS, trusting `ca_file` (None: the webpki roots).
    pub fn with_tls(mut self, ca_file: Option<PathBuf>) -> Self {
        self.tls = true;
        self.ca_file = ca_file;
        self
    }

    /// The same with `name` as the TLS server name and WebSocket host.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Whether frames go on the socket as they are (plain TCP).
    pub fn is_plain(&self) -> bool {
        self.kind == TransportKind::Tcp && !self.tls
    }

    /// "tcp", "tls", "ws" or "wss".
    pub fn name(&self) -> &'static str {
        match (self.kind, self.tls) {
            (TransportKind::Tcp, false) => "tcp",
            (TransportKind::Tcp, true) => "tls",
            (TransportKind::WebSocket, false) => "ws",
            (TransportKind::WebSocket, true) => "wss",
        }
    }
}

/// The host part of `host:port` (`[v6]:port` too), for TLS server names.
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return &rest[..end];
        }
    }
    match addr.rsplit_once(':') {
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

// ------------------------------------------------------------------ the wire

/// What both halves share.
struct Shared {
    tls: Option<Mutex<ClientConnection>>,
    /// Control frames owed to the server (WebSocket): (opcode, payload).
    control: Mutex<Vec<(u8, Vec<u8>)>>,
    /// `control` is not empty, or TLS has records to send.
    wants_write: AtomicBool,
    /// A WebSocket Close went out (or is queued): nothing follows it.
    close_sent: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The layers between frames and the socket; split into halves with [`Wire::split`].
pub(crate) struct Wire {
    pub(crate) rx: WireRx,
    pub(crate) tx: WireTx,
}

/// Bytes read → frames.
pub(crate) struct WireRx {
    shared: Arc<Shared>,
    ws: Option<Decoder>,
    /// WebSocket: bytes (decrypted) not yet decoded; before the upgrade, its answer.
    ws_in: BytesMut,
    ws_open: bool,
    control: Vec<Control>,
}

/// Frames → bytes to write.
pub(crate) struct WireTx {
    shared: Arc<Shared>,
    ws: Option<Masker>,
    /// TLS under WebSocket: the messages before encryption.
    plain: BytesMut,
}

/// Why a wire failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireError {
    /// TLS: the handshake or a record.
    Tls(String),
    /// WebSocket: a violation of the protocol (or frames to send that are not whole).
    Ws(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Tls(e) | WireError::Ws(e) => f.write_str(e),
        }
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Tls(e) => ClientError::Tls(e),
            WireError::Ws(e) => ClientError::Protocol(e),
        }
    }
}

/// What [`WireRx::input`] found besides frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RxState {
    /// Still open.
    Open,
    /// The server ended the session (WebSocket close, TLS close_notify): why.
    Closed(String),
}

impl Wire {
    /// A wire for `t` (not plain TCP), before its handshakes.
    pub(crate) fn new(
        t: &Transport,
        tls_cfg: Option<Arc<rustls::ClientConfig>>,
        server_name: &str,
        max_message: usize,
    ) -> Result<Wire, String> {
        let tls = match (t.tls, tls_cfg) {
            (false, _) => None,
            (true, Some(cfg)) => Some(Mutex::new(tls::connection(cfg, server_name)?)),
            (true, None) => {
                let cfg = tls::client_config(t.ca_file.as_deref())?;
                Some(Mutex::new(tls::connection(cfg, server_name)?))
            }
        };
        let ws = t.kind == TransportKind::WebSocket;
        let shared = Arc::new(Shared {
            tls,
            control: Mutex::new(Vec::new()),
            wants_write: AtomicBool::new(false),
            close_sent: AtomicBool::new(false),
        });
        Ok(Wire {
            rx: WireRx {
                shared: shared.clone(),
                ws: ws.then(|| Decoder::new(max_message)),
                ws_in: BytesMut::new(),
                ws_open: false,
                control: Vec::new(),
            },
            tx: WireTx {
                shared,
                ws: ws.then(Masker::new),
                plain: BytesMut::new(),
            },
        })
    }

    /// Whether the TLS handshake is still going on.
    pub(crate) fn tls_handshaking(&self) -> bool {
        self.rx
            .shared
            .tls
            .as_ref()
            .is_some_and(|c| lock(c).is_handshaking())
    }

    pub(crate) fn is_ws(&self) -> bool {
        self.tx.ws.is_some()
    }

    /// Starts the WebSocket upgrade: the request to write (into `out`) for
    /// `host`, and the key to check the answer with.
    pub(crate) fn ws_request(
        &mut self,
        host: &str,
        path: &str,
        out: &mut BytesMut,
    ) -> Result<String, WireError> {
        let key = ws::new_key();
        let req = ws::handshake_request(host, path, &key);
        self.tx.seal_plain(&req, out)?;
        Ok(key)
    }

    /// Checks the upgrade answer read so far: true once accepted (frames that
    /// followed it are decoded into `frames`), false while incomplete.
    pub(crate) fn ws_accepted(
        &mut self,
        key: &str,
        frames: &mut BytesMut,
    ) -> Result<bool, WireError> {
        let rx = &mut self.rx;
        match ws::check_handshake_response(&rx.ws_in, key).map_err(WireError::Ws)? {
            None => Ok(false),
            Some(n) => {
                let _ = rx.ws_in.split_to(n);
                rx.ws_open = true;
                rx.decode_ws(frames)?;
                Ok(true)
            }
        }
    }

    pub(crate) fn split(self) -> (WireRx, WireTx) {
        (self.rx, self.tx)
    }
}

impl WireRx {
    /// Takes bytes read from the socket; appends the frames they complete to
    /// `frames`. An error is fatal (a TLS failure, a WebSocket protocol
    /// violation: the Close to answer it is queued for the writer).
    pub(crate) fn input(
        &mut self,
        raw: &[u8],
        frames: &mut BytesMut,
    ) -> Result<RxState, WireError> {
        let mut tls_eof = false;
        match (&self.shared.tls, self.ws.is_some()) {
            (None, false) => frames.extend_from_slice(raw),
            (None, true) => self.ws_in.extend_from_slice(raw),
            (Some(conn), ws) => {
                let mut conn = lock(conn);
                let into = if ws { &mut self.ws_in } else { &mut *frames };
                tls_eof = tls::open(&mut conn, raw, into).map_err(WireError::Tls)?;
                if conn.wants_write() {
                    self.shared.wants_write.store(true, Ordering::Release);
                }
            }
        }
        let mut state = RxState::Open;
        if self.ws.is_some() && self.ws_open {
            if let Some(why) = self.decode_ws(frames)? {
                state = RxState::Closed(why);
            }
        }
        if tls_eof && state == RxState::Open {
            state = RxState::Closed("closed by the router".into());
        }
        Ok(state)
    }

    /// Decodes what `ws_in` holds; Some(reason) once the server closed.
    fn decode_ws(&mut self, frames: &mut BytesMut) -> Result<Option<String>, WireError> {
        let Some(dec) = self.ws.as_mut() else {
            return Ok(None);
        };
        let r = dec.decode(&mut self.ws_in, frames, &mut self.control);
        let mut closed = None;
        for c in self.control.drain(..) {
            match c {
                Control::Ping(p) => queue_control(&self.shared, ws::op::PONG, p),
                Control::Close(code, reason) => {
                    // Answer with the same code (RFC 6455 §5.5.1), once.
                    if !self.shared.close_sent.swap(true, Ordering::AcqRel) {
                        let body = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                        queue_control(&self.shared, ws::op::CLOSE, body);
                    }
                    closed = Some(match code {
                        Some(c) if reason.is_empty() => {
                            format!("closed by the router (WebSocket close {c})")
                        }
                        Some(c) => format!("closed by the router (WebSocket close {c}: {reason})"),
                        None => "closed by the router (WebSocket close)".into(),
                    });
                }
            }
        }
        match r {
            Ok(()) => Ok(closed),
            Err(e) => {
                if !self.shared.close_sent.swap(true, Ordering::AcqRel) {
                    queue_control(
                        &self.shared,
                        ws::op::CLOSE,
                        ws::close_body(e.code, &e.reason),
                    );
                }
                Err(WireError::Ws(e.to_string()))
            }
        }
    }

    /// Whether something must be written for the server (a pong or close
    /// answer, TLS records): the writer should call [`WireTx::output`].
    pub(crate) fn wants_write(&self) -> bool {
        self.shared.wants_write.load(Ordering::Acquire)
    }
}

/// Queues a control frame for the writer. A Pong replaces one still waiting (a
/// Pong may answer the latest Ping only, RFC 6455 §5.5.3): a server that sends Pings
/// and does not read grows nothing here.
fn queue_control(shared: &Shared, opcode: u8, payload: Vec<u8>) {
    let mut q = lock(&shared.control);
    match q
        .iter_mut()
        .find(|(op, _)| opcode == ws::op::PONG && *op == opcode)
    {
        Some(waiting) => waiting.1 = payload,
        None => q.push((opcode, payload)),
    }
    drop(q);
    shared.wants_write.store(true, Ordering::Release);
}

impl WireTx {
    /// Appends to `out` the bytes that carry `frames` (varint-delimited, whole),
    /// after whatever control frames and TLS records are owed.
    pub(crate) fn output(&mut self, frames: &[u8], out: &mut BytesMut) -> Result<(), WireError> {
        self.encode(out, |ws, m| ws::put_delimited(m, ws, frames), frames)
    }

    /// Appends `bytes` as one binary message (WebSocket), or as they are:
    /// for tests that send malformed input.
    pub(crate) fn output_raw(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), WireError> {
        self.encode(
            out,
            |ws, m| {
                ws::put_message(m, ws, ws::op::BINARY, bytes);
                Ok(())
            },
            bytes,
        )
    }

    /// The end: a WebSocket Close (1000) unless one went out, and TLS close_notify.
    pub(crate) fn finish(&mut self, out: &mut BytesMut) -> Result<(), WireError> {
        if self.ws.is_some() && !self.shared.close_sent.swap(true, Ordering::AcqRel) {
            let code = ws::close::NORMAL.to_be_bytes().to_vec();
            queue_control(&self.shared, ws::op::CLOSE, code);
        }
        self.output(&[], out)?;
        if let Some(conn) = &self.shared.tls {
            let mut conn = lock(conn);
            conn.send_close_notify();
            tls::seal(&mut conn, &[], out).map_err(WireError::Tls)?;
        }
        Ok(())
    }

    /// WebSocket framing (`put` with the masker, owed control frames first),
    /// then TLS. Without WebSocket, `plain` is what TLS encrypts.
    fn encode(
        &mut self,
        out: &mut BytesMut,
        put: impl FnOnce(&mut Masker, &mut BytesMut) -> Result<(), String>,
        plain: &[u8],
    ) -> Result<(), WireError> {
        self.shared.wants_write.store(false, Ordering::Release);
        let tls = self.shared.tls.as_ref();
        match self.ws.as_mut() {
            Some(masker) => {
                let staged = if tls.is_some() {
                    &mut self.plain
                } else {
                    &mut *out
                };
                let control = std::mem::take(&mut *lock(&self.shared.control));
                for (opcode, payload) in control {
                    ws::put_message(staged, masker, opcode, &payload);
                }
                put(masker, staged).map_err(WireError::Ws)?;
                if let Some(conn) = tls {
                    let r = tls::seal(&mut lock(conn), &self.plain, out);
                    self.plain.clear();
                    r.map_err(WireError::Tls)?;
                }
            }
            None => match tls {
                Some(conn) => tls::seal(&mut lock(conn), plain, out).map_err(WireError::Tls)?,
                None => out.extend_from_slice(plain),
            },
        }
        Ok(())
    }

    /// Bytes before the WebSocket upgrade (the request): TLS only.
    fn seal_plain(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), WireError> {
        match &self.shared.tls {
            Some(conn) => tls::seal(&mut lock(conn), bytes, out).map_err(WireError::Tls),
            None => {
                out.extend_from_slice(bytes);
                Ok(())
            }
        }
    }
}

// ------------------------------------------------------- blocking connection

/// A connected socket, its wire (None: plain TCP) and the frames that arrived
/// behind the handshakes.
pub(crate) struct Connected {
    pub(crate) stream: TcpStream,
    pub(crate) wire: Option<Wire>,
    pub(crate) frames: BytesMut,
}

/// Connects to the first address of `addr` that answers by `deadline` (all the
/// addresses tried share it).
pub(crate) fn connect_stream(
    addr: impl ToSocketAddrs,
    deadline: Instant,
) -> Result<TcpStream, ClientError> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last = Some(std::io::Error::new(
                ErrorKind::TimedOut,
                "no address answered in time",
            ));
            break;
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or(
        ClientError::Closed("no address to connect to".into()),
        ClientError::Io,
    ))
}

/// Connects and runs the handshakes of `t` (TLS, WebSocket upgrade), all
/// by `deadline`.
pub(crate) fn connect(
    addr: impl ToSocketAddrs,
    t: &Transport,
    deadline: Instant,
    max_message: usize,
) -> Result<Connected, ClientError> {
    let mut stream = connect_stream(addr, deadline)?;
    let mut frames = BytesMut::new();
    if t.is_plain() {
        return Ok(Connected {
            stream,
            wire: None,
            frames,
        });
    }
    let peer = stream.peer_addr()?;
    let name = server_name(t, &peer);
    let mut wire = Wire::new(t, None, &name, max_message).map_err(ClientError::Tls)?;
    let mut out = BytesMut::new();
    let mut buf = vec![0u8; 16 * 1024];
    // TLS: until the handshake is done (its last flight goes out with the next write).
    while wire.tls_handshaking() {
        out.clear();
        wire.tx.output(&[], &mut out)?;
        write_by(&mut stream, &out, deadline)?;
        let n = read_by(&mut stream, &mut buf, deadline)?;
        if n == 0 {
            return Err(ClientError::Tls(
                "the server closed the connection during the TLS handshake".into(),
            ));
        }
        wire.rx.input(&buf[..n], &mut frames)?;
    }
    if wire.is_ws() {
        out.clear();
        let host = ws_host(t, &peer);
        let key = wire.ws_request(&host, &t.ws_path, &mut out)?;
        write_by(&mut stream, &out, deadline)?;
        loop {
            let n = read_by(&mut stream, &mut buf, deadline)?;
            if n == 0 {
                return Err(ClientError::Closed(
                    "closed by the server during the WebSocket upgrade".into(),
                ));
            }
            wire.rx.input(&buf[..n], &mut frames)?;
            if wire.ws_accepted(&key, &mut frames)? {
                break;
            }
        }
    } else {
        // The handshake's last flight.
        out.clear();
        wire.tx.output(&[], &mut out)?;
        write_by(&mut stream, &out, deadline)?;
    }
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(Connected {
        stream,
        wire: Some(wire),
        frames,
    })
}

/// The TLS server name: the configured one, else the IP connected to.
fn server_name(t: &Transport, peer: &SocketAddr) -> String {
    t.server_name
        .clone()
        .unwrap_or_else(|| peer.ip().to_string())
}

/// The WebSocket `Host` header.
fn ws_host(t: &Transport, peer: &SocketAddr) -> String {
    match &t.server_name {
        Some(n) if n.contains(':') => format!("[{n}]:{}", peer.port()),
        Some(n) => format!("{n}:{}", peer.port()),
        None => peer.to_string(),
    }
}

fn remaining(deadline: Instant) -> Result<Duration, ClientError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ClientError::Timeout);
    }
    Ok(left)
}

fn write_by(s: &mut TcpStream, bytes: &[u8], deadline: Instant) -> Result<(), ClientError> {
    if bytes.is_empty() {
        return Ok(());
    }
    s.set_write_timeout(Some(remaining(deadline)?))?;
    s.write_all(bytes).map_err(timeout_or_io)
}

fn read_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize, ClientError> {
    loop {
        s.set_read_timeout(Some(remaining(deadline)?))?;
        match s.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => return r.map_err(timeout_or_io),
        }
    }
}

fn timeout_or_io(e: std::io::Error) -> ClientError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout,
        _ => ClientError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pongs_owed_are_one_at_most() {
        let shared = Shared {
            tls: None,
            control: Mutex::new(Vec::new()),
            wants_write: AtomicBool::new(false),
            close_sent: AtomicBool::new(false),
        };
        for i in 0..1000u32 {
            queue_control(&shared, ws::op::PONG, i.to_be_bytes().to_vec());
        }
        queue_control(&shared, ws::op::CLOSE, vec![3, 232]);
        queue_control(&shared, ws::op::PONG, b"last".to_vec());
        assert_eq!(
            *lock(&shared.control),
            vec![
                (ws::op::PONG, b"last".to_vec()),
                (ws::op::CLOSE, vec![3, 232])
            ]
        );
        assert!(shared.wants_write.load(Ordering::Acquire));
    }

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("127.0.0.1:7878"), "127.0.0.1");
        assert_eq!(host_of("localhost:7880"), "localhost");
        assert_eq!(host_of("[::1]:7880"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("example.org"), "example.org");
    }

    #[test]
    fn transport_names() {
        assert_eq!(Transport::tcp().name(), "tcp");
        assert_eq!(Transport::tcp().with_tls(None).name(), "tls");
        assert_eq!(Transport::websocket().name(), "ws");
        assert_eq!(Transport::websocket().with_tls(None).name(), "wss");
        assert_eq!("ws".parse::<TransportKind>(), Ok(TransportKind::WebSocket));
        assert!("udp".parse::<TransportKind>().is_err());
    }
}
