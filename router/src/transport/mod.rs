//! What a connection's bytes pass through between the socket and the frame codec,
//! sans-IO: TLS ([`tls`], rustls) and WebSocket ([`ws`]). Plain TCP has no layers
//! (the session's fast path reads and writes the socket directly); a TLS, WebSocket
//! or WebSocket-over-TLS connection has one [`Layers`], which turns the bytes read
//! into varint-framed client frames (what a plain connection would have sent) and
//! the varint-framed server frames to write into bytes for the socket. The
//! `Layers` move with the connection when it is handed to its home shard.

use std::io::{Read, Write};

use bytes::{Buf, BytesMut};
use prost::Message;
use ringrouter_proto::codec::{encode_frame, peek_varint, put_varint};
use ringrouter_proto::v1::ServerFrame;

mod json;
pub mod tls;
pub mod ws;

use ws::{code, Event, Protocol, Violation};

/// Bytes of control answers (pongs) that may wait to be written; see [`Layers::ingest`].
const MAX_PENDING_PONGS: usize = 16 * 1024;

/// Capacity of the WebSocket input past which it is reallocated to what it holds (see
/// [`Layers::ingest`]).
const INPUT_KEEP: usize = 256 * 1024;

/// The layers of one connection.
pub(crate) struct Layers {
    /// Bytes read from the socket and not yet taken by TLS.
    pub(crate) raw: BytesMut,
    /// The close code a violation of the peer's asks for (sent when the session ends).
    violation: Option<(u16, String)>,
    tls: Option<Box<rustls::ServerConnection>>,
    ws: Option<WsLayer>,
    /// Bytes for the socket produced while reading (TLS handshake records, pongs,
    /// a close answer): written before anything else.
    pending: BytesMut,
    /// A WebSocket close frame was sent: nothing more goes out.
    closed: bool,
    /// The peer ended the stream (a WebSocket close frame, TLS close_notify): nothing
    /// it sent after that is decoded, and every later [`Layers::ingest`] says `End`.
    /// Bytes decoded in the same read as the close are still handed on (the reader
    /// returns them first; its next read sees the end).
    ended: bool,
    /// Bytes the TLS client may still send before its handshake is done
    /// (`--max-tls-handshake-bytes`): rustls holds a handshake message arriving whole
    /// (up to 64 KiB) until the connection's deadline, and 10 000 connections stalled
    /// in one held 700 MiB, counted by no budget (a hostile review).
    handshake_left: usize,
}

struct WsLayer {
    protocol: Protocol,
    decoder: ws::Decoder,
    /// Decrypted bytes not yet decoded into frames.
    input: BytesMut,
    max_frame: usize,
    /// Before Login: one message decoded per [`Layers::ingest`], the rest left in
    /// `input` (as a TCP connection's pre-login parse stops at its Login), so that what
    /// a client pipelines behind its Login meets the session's bounds, not the
    /// pre-login one. Cleared by [`Layers::set_max_frame`].
    one_at_a_time: bool,
    /// The last decode stopped after one message (`one_at_a_time`): whole messages may
    /// wait in `input`. (What is left otherwise is part of a frame, which only new
    /// bytes complete.)
    stopped: bool,
}

/// How reading went: bytes were added (maybe none yet), or the peer ended the stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ingested {
    /// Go on reading.
    More,
    /// The peer closed (TLS close_notify or a WebSocket close frame).
    End,
}

/// How far [`Layers::ws_decode`] went.
enum Decoded {
    /// Every whole message of the input (what is left is part of one, or nothing).
    Drained,
    /// One message, before Login: more may wait whole in the input.
    Stopped,
    /// The peer's close frame (the input after it dropped).
    Closed,
}

impl Layers {
    /// TLS on a new connection (the handshake runs as bytes arrive).
    pub(crate) fn tls(
        config: &std::sync::Arc<rustls::ServerConfig>,
        max_handshake_bytes: usize,
    ) -> Result<Self, String> {
        let mut conn =
            rustls::ServerConnection::new(config.clone()).map_err(|e| format!("tls: {e}"))?;
        // The session's own bound (pending bytes) limits what is queued.
        conn.set_buffer_limit(None);
        Ok(Layers {
            raw: BytesMut::new(),
            violation: None,
            tls: Some(Box::new(conn)),
            ws: None,
            pending: BytesMut::new(),
            closed: false,
            ended: false,
            handshake_left: max_handshake_bytes,
        })
    }

    /// No layers yet (plain TCP that becomes a WebSocket).
    pub(crate) fn none() -> Self {
        Layers {
            raw: BytesMut::new(),
            violation: None,
            tls: None,
            ws: None,
            pending: BytesMut::new(),
            closed: false,
            ended: false,
            handshake_left: 0,
        }
    }

    /// Frames are WebSocket messages from now on; `early` are decrypted bytes that
    /// came after the upgrade request.
    pub(crate) fn start_ws(&mut self, protocol: Protocol, max_frame: usize, early: BytesMut) {
        self.ws = Some(WsLayer {
            protocol,
            decoder: ws::Decoder::new(max_message(protocol, max_frame)),
            input: early,
            max_frame,
            one_at_a_time: true,
            stopped: false,
        });
    }

    /// What an [`Layers::ingest`] with no new bytes would still give: messages the
    /// pre-login decode left whole in the input (see `WsLayer::one_at_a_time`), or the
    /// peer's end (reached in a read that also gave frames, which the reader took
    /// first). Part of a frame left in the input is not: only new bytes complete it.
    pub(crate) fn has_unread(&self) -> bool {
        self.ended || self.ws.as_ref().is_some_and(|w| w.stopped)
    }

    /// The frame bound from now on (the pre-login bound is smaller).
    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        if let Some(w) = self.ws.as_mut() {
            w.max_frame = max_frame;
            w.one_at_a_time = false;
            w.decoder
                .set_max_message(max_message(w.protocol, max_frame));
        }
    }

    /// TLS is still handshaking (its steps cost the server its key exchange and
    /// signature: see [`tls::Handshakes`]).
    pub(crate) fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Lets go of the read buffers that hold nothing, before the reader waits for the
    /// socket: an idle TLS or WebSocket session keeps none (it kept 230 KiB after one
    /// big message: its raw and WebSocket input buffers as they had grown). Raw read
    /// buffers go to the shard's pool, for the next read of any session.
    pub(crate) fn release_idle_buffers(&mut self) {
        if self.raw.is_empty() {
            let raw = std::mem::take(&mut self.raw);
            // (One grown past a read, by the WebSocket input it traded places with, is
            // let go: the pool keeps read-sized buffers.)
            if raw.capacity() <= 2 * crate::bufpool::READ_BUF {
                crate::bufpool::give_read(raw);
            }
        }
        if let Some(w) = self.ws.as_mut().filter(|w| w.input.is_empty()) {
            w.input = BytesMut::new();
        }
    }

    /// Bytes held of a WebSocket message still arriving (its frames so far).
    pub(crate) fn message_held(&self) -> usize {
        self.ws.as_ref().map_or(0, |w| w.decoder.buffered())
    }

    /// Bytes waiting to be written.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Moves the bytes waiting to be written to the end of `wire`.
    pub(crate) fn take_pending(&mut self, wire: &mut BytesMut) {
        if wire.is_empty() {
            std::mem::swap(wire, &mut self.pending);
        } else {
            wire.extend_from_slice(&self.pending);
            self.pending.clear();
        }
    }

    /// Takes bytes read from the socket (`raw`, consumed as far as possible) and
    /// appends the client frames they carry to `app`, varint-framed. An error is a
    /// violation of TLS (its alert is pending) or of WebSocket (its close code is kept for
    /// [`Layers::end`]).
    pub(crate) fn ingest(
        &mut self,
        raw: &mut BytesMut,
        app: &mut BytesMut,
    ) -> Result<Ingested, String> {
        if self.ended {
            // After the peer's close nothing of its is acted on.
            raw.clear();
            return Ok(Ingested::End);
        }
        let mut end = false;
        if let Some(tls) = self.tls.as_deref_mut() {
            let plain = match self.ws.as_mut() {
                Some(w) => &mut w.input,
                None => &mut *app,
            };
            let (handshaking, offered) = (tls.is_handshaking(), raw.len());
            let mut r = tls_read(tls, raw, plain);
            if handshaking && r.is_ok() {
                // What it took while the handshake went on; over the bound only while
                // it still goes on (a Finished with data behind it is not).
                let took = offered - raw.len();
                match self.handshake_left.checked_sub(took) {
                    Some(left) => self.handshake_left = left,
                    None if tls.is_handshaking() => {
                        r = Err("tls: handshake over --max-tls-handshake-bytes".into());
                    }
                    None => self.handshake_left = 0,
                }
            }
            flush_tls(tls, &mut self.pending);
            end = match r {
                Ok(end) => end,
                Err(e) => {
                    // Its fatal alert is pending: nothing goes out after it (no
                    // WebSocket close sealed behind the alert, no close_notify).
                    self.closed = true;
                    return Err(e);
                }
            };
        } else if let Some(w) = self.ws.as_mut() {
            if w.input.is_empty() {
                std::mem::swap(&mut w.input, raw);
            } else {
                w.input.extend_from_slice(raw);
                raw.clear();
            }
        } else {
            app.extend_from_slice(raw);
            raw.clear();
        }
        let mut stopped = false;
        if self.ws.is_some() {
            match self.ws_decode(app) {
                Ok(Decoded::Closed) => end = true,
                Ok(Decoded::Stopped) => stopped = true,
                Ok(Decoded::Drained) => {}
                Err(v) => {
                    let reason = v.reason.clone();
                    self.violation = Some((v.code, v.reason));
                    return Err(reason);
                }
            }
            if let Some(w) = self.ws.as_mut() {
                w.stopped = stopped;
                // What decoding leaves is part of a frame; the buffer it sits in is let
                // go once grown far past it. Appending a read to a buffer whose front was
                // split off (a fragment's bytes) grows it by the split-off front too:
                // 1-byte fragments between pings took it to 32 MiB per session, each
                // growth a copy.
                if w.input.capacity() > INPUT_KEEP && w.input.len() <= INPUT_KEEP / 4 {
                    w.input = BytesMut::from(&w.input[..]);
                }
            }
        }
        // Before Login one message is decoded per call: a TLS close_notify read with
        // several messages ends the stream after the last of them, not after the first.
        // What is left once no whole message is (a frame cut short by the peer's end)
        // never completes: the end counts then.
        let end = end && !stopped;
        self.ended = end;
        Ok(if end { Ingested::End } else { Ingested::More })
    }

    fn ws_decode(&mut self, app: &mut BytesMut) -> Result<Decoded, Violation> {
        let Some(w) = self.ws.as_mut() else {
            return Ok(Decoded::Drained);
        };
        loop {
            match w.decoder.decode(&mut w.input)? {
                None => return Ok(Decoded::Drained),
                Some(Event::Message { text, data }) => match (w.protocol, text) {
                    (Protocol::Binary, false) => {
                        if data.len() > w.max_frame {
                            return Err(Violation {
                                code: code::TOO_BIG,
                                reason: format!("frame over {} bytes", w.max_frame),
                            });
                        }
                        put_varint(app, data.len() as u64);
                        app.extend_from_slice(&data);
                        if w.one_at_a_time {
                            return Ok(Decoded::Stopped);
                        }
                    }
                    (Protocol::Json, true) => {
                        let frame = json::client_frame_from_json(&data).map_err(|e| Violation {
                            code: code::INVALID,
                            reason: e.to_string(),
                        })?;
                        // As over the binary subprotocol: a frame over the bound
                        // closes 1009 (it went through as TOO_LARGE, then a close 1000).
                        let len = prost::Message::encoded_len(&frame);
                        if len > w.max_frame {
                            return Err(Violation {
                                code: code::TOO_BIG,
                                reason: format!("frame over {} bytes", w.max_frame),
                            });
                        }
                        encode_frame(&frame, app);
                        if w.one_at_a_time {
                            return Ok(Decoded::Stopped);
                        }
                    }
                    (p, _) => {
                        return Err(Violation {
                            code: code::UNSUPPORTED,
                            reason: format!(
                                "{} takes {} messages",
                                p.name(),
                                if p == Protocol::Binary {
                                    "binary"
                                } else {
                                    "text"
                                }
                            ),
                        });
                    }
                },
                Some(Event::Ping(data)) => {
                    // A client that pings and never reads would grow the pongs waiting
                    // to be written without end: past MAX_PENDING_PONGS bytes, pings go
                    // unanswered (RFC 6455 5.5.3 allows answering only the latest).
                    if !self.closed && self.pending.len() < MAX_PENDING_PONGS {
                        let mut f = BytesMut::new();
                        ws::put_frame(ws::op::PONG, &data, &mut f);
                        let pending = &mut self.pending;
                        seal(self.tls.as_deref_mut(), &f, pending);
                    }
                }
                Some(Event::Pong) => {}
                Some(Event::Close(c, _)) => {
                    // Echo the peer's code (none given: a normal closure).
                    let c = if c == 1005 { code::NORMAL } else { c };
                    self.close(c, "");
                    // What follows a close is not part of the connection (RFC 6455
                    // 5.5.1): dropped, never decoded.
                    if let Some(w) = self.ws.as_mut() {
                        w.input.clear();
                    }
                    return Ok(Decoded::Closed);
                }
            }
        }
    }

    /// Encodes `app`, whole varint-framed server frames, for the socket, after the
    /// pending bytes, into `wire`.
    ///
    /// Returns the bytes of `app` used: all of them without a WebSocket layer, else its
    /// whole frames (a frame cut at the end waits for the rest: the caller keeps it).
    pub(crate) fn egress(&mut self, app: &[u8], wire: &mut BytesMut) -> usize {
        self.take_pending(wire);
        if self.closed {
            return app.len();
        }
        match self.ws.as_ref() {
            // Plain WebSocket: framed straight onto the wire.
            Some(w) if self.tls.is_none() => ws_frames(w.protocol, app, wire),
            Some(w) => {
                let mut framed = BytesMut::new();
                let used = ws_frames(w.protocol, app, &mut framed);
                seal(self.tls.as_deref_mut(), &framed, wire);
                used
            }
            None => {
                seal(self.tls.as_deref_mut(), app, wire);
                app.len()
            }
        }
    }

    /// Encodes bytes outside the WebSocket framing (the upgrade's HTTP answer).
    pub(crate) fn egress_raw(&mut self, data: &[u8], wire: &mut BytesMut) {
        self.take_pending(wire);
        seal(self.tls.as_deref_mut(), data, wire);
    }

    /// Queues the end of the conversation with the close code a violation asked for,
    /// else `code` and `reason`.
    pub(crate) fn end(&mut self, code: u16, reason: &str) {
        match self.violation.take() {
            Some((c, why)) => self.close(c, &why),
            None => self.close(code, reason),
        }
    }

    /// Queues the end of the conversation: a WebSocket close frame (once) and the TLS
    /// close_notify.
    pub(crate) fn close(&mut self, code: u16, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        if self.ws.is_some() {
            let mut f = BytesMut::new();
            ws::put_close(code, reason, &mut f);
            seal(self.tls.as_deref_mut(), &f, &mut self.pending);
        }
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
            flush_tls(tls, &mut self.pending);
        }
    }
}

/// The WebSocket message bound for a frame bound: a JSON message is longer than its
/// frame (field names, base64).
fn max_message(protocol: Protocol, max_frame: usize) -> usize {
    match protocol {
        Protocol::Binary => max_frame,
        Protocol::Json => max_frame.saturating_mul(2).saturating_add(4096),
    }
}

/// Wraps each varint-framed frame of `app` in a WebSocket message, onto `out`.
fn ws_frames(protocol: Protocol, mut app: &[u8], out: &mut BytesMut) -> usize {
    out.reserve(app.len() + app.len() / 8 + 16);
    let whole = app.len();
    // The router wrote these frames itself: whole, and within bounds; the last may be
    // cut where the caller's slice of its batch ends (the rest comes with the next).
    while let Ok(Some((len, used))) = peek_varint(app) {
        let end = used + len as usize;
        let Some(body) = app.get(used..end) else {
            break;
        };
        match protocol {
            Protocol::Binary => ws::put_frame(ws::op::BINARY, body, out),
            Protocol::Json => match ServerFrame::decode(body) {
                Ok(f) => put_json(f, out),
                Err(e) => tracing::error!(error = %e, "a server frame does not decode"),
            },
        }
        app = &app[end..];
    }
    whole - app.len()
}

/// Payloads from this size on are written into a Deliver's JSON text as base64 directly
/// (see [`put_json`]).
const JSON_SPLICE_MIN: usize = 16 << 10;

/// Appends frame `f` as a WebSocket text message of its protobuf JSON. A Deliver with a
/// big payload is written without it first, then its base64 in place: serde's string
/// writer looked at every byte of the 1.4 MB of base64 of a 1 MB payload for escapes,
/// and the text was copied again into the message (~1.6 ms of the shard a delivery:
/// 32 WebSocket JSON devices getting 1 MB messages held others' pings p50 82-134 ms).
fn put_json(mut f: ServerFrame, out: &mut BytesMut) {
    use base64::Engine;
    use ringrouter_proto::v1::server_frame::Kind;
    let whole = |f: &ServerFrame, out: &mut BytesMut| {
        let text = json::server_frame_to_json(f);
        ws::put_frame(ws::op::TEXT, text.as_bytes(), out);
    };
    let (payload, len) = match &mut f.kind {
        Some(Kind::Deliver(d)) if d.payload.len() >= JSON_SPLICE_MIN => {
            match base64::encoded_len(d.payload.len(), true) {
                Some(len) => (std::mem::take(&mut d.payload), len),
                None => return whole(&f, out),
            }
        }
        _ => return whole(&f, out),
    };
    // `{"deliver":{...}}`: the payload member goes last in the inner object.
    let text = json::server_frame_to_json(&f);
    let Some(head) = text.strip_suffix("}}") else {
        // (Not the text a Deliver makes: written whole.)
        if let Some(Kind::Deliver(d)) = &mut f.kind {
            d.payload = payload;
        }
        return whole(&f, out);
    };
    let comma = if head.ends_with('{') { "" } else { "," };
    const KEY: &str = "\"payload\":\"";
    let b64 = base64::engine::general_purpose::STANDARD;
    let total = head.len() + comma.len() + KEY.len() + len + "\"}}".len();
    out.reserve(total + 16);
    ws::put_header(ws::op::TEXT, total, out);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(comma.as_bytes());
    out.extend_from_slice(KEY.as_bytes());
    match base64_kept(&payload) {
        Some(text) => out.extend_from_slice(&text),
        None => {
            let at = out.len();
            out.resize(at + len, 0);
            // (The length was computed for this encoding: it fits.)
            let _ = b64.encode_slice(&payload, &mut out[at..]);
            keep_base64(payload, &out[at..]);
        }
    }
    out.extend_from_slice(b"\"}}");
}

/// Bytes of payloads and their base64 a shard keeps (see [`B64_KEPT`]).
const B64_KEPT_BYTES: usize = 8 << 20;

/// Encodings a shard keeps at most: a miss compares the payload with each kept one of
/// its length (a fan-out's devices come one after another).
const B64_KEPT_MAX: usize = 8;

/// How long an encoding is kept (dropped by the shard's ticker: [`trim_base64_kept`]).
const B64_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// A payload, its base64, and when it was made.
type Kept = (bytes::Bytes, bytes::Bytes, std::time::Instant);

thread_local! {
    /// The base64 of the last big payloads this thread (a shard) wrote as JSON, with the
    /// payloads, newest last: at most [`B64_KEPT_MAX`] of them and [`B64_KEPT_BYTES`] in
    /// all, for [`B64_KEPT_FOR`]. A message to many WebSocket JSON devices (or a room's
    /// members) is encoded once, not once a device.
    static B64_KEPT: std::cell::RefCell<std::collections::VecDeque<Kept>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

/// The base64 of `payload` if this thread wrote it lately.
fn base64_kept(payload: &[u8]) -> Option<bytes::Bytes> {
    B64_KEPT.with(|k| {
        k.borrow()
            .iter()
            .rev()
            .find(|(p, ..)| p.len() == payload.len() && p[..] == payload[..])
            .map(|(_, b, _)| b.clone())
    })
}

/// Keeps `text`, the base64 of `payload`, for the next devices it goes to (not for a
/// payload over ~1.8 MiB: with its base64 over half the bound).
fn keep_base64(payload: bytes::Bytes, text: &[u8]) {
    let size = payload.len() + text.len();
    if size > B64_KEPT_BYTES / 2 {
        return;
    }
    B64_KEPT.with(|k| {
        let mut k = k.borrow_mut();
        let mut held: usize = k.iter().map(|(p, b, _)| p.len() + b.len()).sum();
        while held + size > B64_KEPT_BYTES || k.len() >= B64_KEPT_MAX {
            match k.pop_front() {
                Some((p, b, _)) => held -= p.len() + b.len(),
                None => break,
            }
        }
        let now = std::time::Instant::now();
        k.push_back((payload, bytes::Bytes::copy_from_slice(text), now));
    });
}

/// Drops this thread's kept encodings made [`B64_KEPT_FOR`] ago, or with `all` every
/// one (the shard's ticker; resident memory over `--max-memory`).
pub(crate) fn trim_base64_kept(all: bool) {
    B64_KEPT.with(|k| {
        let mut k = k.borrow_mut();
        k.retain(|(.., at)| !all && at.elapsed() < B64_KEPT_FOR);
    });
}

/// Encrypts `plain` (no TLS: copies it) onto `wire`.
fn seal(tls: Option<&mut rustls::ServerConnection>, plain: &[u8], wire: &mut BytesMut) {
    match tls {
        None => wire.extend_from_slice(plain),
        Some(tls) => {
            // The buffer limit is off: the writer takes everything.
            let _ = tls.writer().write_all(plain);
            flush_tls(tls, wire);
        }
    }
}

/// Moves the TLS records rustls has ready onto `wire`.
fn flush_tls(tls: &mut rustls::ServerConnection, wire: &mut BytesMut) {
    let mut w = BufWriter(wire);
    while tls.wants_write() {
        match tls.write_tls(&mut w) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

struct BufWriter<'a>(&'a mut BytesMut);

impl Write for BufWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Feeds `raw` to rustls and appends the plaintext to `plain`; `Ok(true)` once the
/// peer sent close_notify.
fn tls_read(
    tls: &mut rustls::ServerConnection,
    raw: &mut BytesMut,
    plain: &mut BytesMut,
) -> Result<bool, String> {
    let mut end = false;
    loop {
        let mut src: &[u8] = raw;
        let n = match tls.read_tls(&mut src) {
            Ok(n) => n,
            Err(e) => return Err(format!("tls: {e}")),
        };
        raw.advance(n);
        let state = tls.process_new_packets().map_err(|e| format!("tls: {e}"))?;
        let mut avail = state.plaintext_bytes_to_read();
        while avail > 0 {
            let at = plain.len();
            plain.resize(at + avail, 0);
            match tls.reader().read(&mut plain[at..]) {
                Ok(k) => {
                    plain.truncate(at + k);
                    avail -= k.min(avail);
                    if k == 0 {
                        break;
                    }
                }
                Err(_) => {
                    plain.truncate(at);
                    break;
                }
            }
        }
        if state.peer_has_closed() {
            end = true;
        }
        if n == 0 || raw.is_empty() {
            return Ok(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Deliver with a big payload is written with its base64 spliced in: the same JSON
    /// value as the whole frame's text, whatever other fields are set; small ones and
    /// other frames as they were.
    #[test]
    fn a_big_delivers_json_is_the_frames_json() {
        use ringrouter_proto::v1::{server_frame::Kind, Deliver, Pong};
        let big: Vec<u8> = (0..JSON_SPLICE_MIN + 7).map(|i| (i * 7) as u8).collect();
        let frames = [
            Kind::Deliver(Deliver {
                seq: 9,
                from_user: "alice".into(),
                payload: big.clone().into(),
                msg_id: 3,
                ..Default::default()
            }),
            Kind::Deliver(Deliver {
                payload: big.clone().into(),
                ..Default::default()
            }),
            Kind::Deliver(Deliver {
                payload: bytes::Bytes::from_static(b"small"),
                ..Default::default()
            }),
            Kind::Pong(Pong::default()),
        ];
        for kind in frames {
            let f = ServerFrame { kind: Some(kind) };
            let mut out = BytesMut::new();
            put_json(f.clone(), &mut out);
            let mut text = BytesMut::new();
            ws::put_frame(
                ws::op::TEXT,
                json::server_frame_to_json(&f).as_bytes(),
                &mut text,
            );
            // Same header length (same text length), same value.
            let (a, b) = (&out[..], &text[..]);
            assert_eq!(a.len(), b.len());
            let skip = a.len() - json::server_frame_to_json(&f).len();
            assert_eq!(a[..skip], b[..skip], "the WebSocket header");
            let va: serde_json::Value = serde_json::from_slice(&a[skip..]).unwrap();
            let vb: serde_json::Value = serde_json::from_slice(&b[skip..]).unwrap();
            assert_eq!(va, vb);
            let back = ringrouter_proto::json::server_frame_from_json(&a[skip..]).unwrap();
            assert_eq!(back, f);
            // Written again (its base64 kept this time): the same bytes.
            let mut again = BytesMut::new();
            put_json(f.clone(), &mut again);
            assert_eq!(again, out);
        }
        // What is kept stays within its bound, newest kept.
        for i in 0..8u8 {
            let p = bytes::Bytes::from(vec![i; 1 << 20]);
            let text = vec![b'A'; 1_400_000];
            keep_base64(p, &text);
        }
        let held: usize =
            B64_KEPT.with(|k| k.borrow().iter().map(|(p, b, _)| p.len() + b.len()).sum());
        assert!(held <= B64_KEPT_BYTES, "{held}");
        assert!(base64_kept(&[7u8; 1 << 20]).is_some());
        assert!(base64_kept(&[0u8; 1 << 20]).is_none());
        for i in 0..20u8 {
            keep_base64(bytes::Bytes::from(vec![i; 16 << 10]), b"AAAA");
        }
        assert_eq!(B64_KEPT.with(|k| k.borrow().len()), B64_KEPT_MAX);
        trim_base64_kept(false);
        assert_eq!(
            B64_KEPT.with(|k| k.borrow().len()),
            B64_KEPT_MAX,
            "made just now"
        );
        trim_base64_kept(true);
        assert_eq!(B64_KEPT.with(|k| k.borrow().len()), 0);
    }

    /// Before Login one message is decoded per read (what follows it meets the
    /// session's bound once the Login is taken); a close ends the stream even in the
    /// read that gave frames before it, and nothing after it is decoded.
    #[test]
    fn before_login_one_message_at_a_time_and_nothing_after_a_close() {
        let mut l = Layers::none();
        l.start_ws(Protocol::Binary, 16, BytesMut::new());
        // A Login-sized message, one over the pre-login bound (20 bytes), a close and
        // another message, in one read.
        let mut raw = BytesMut::from(&[0x82, 0x81, 0, 0, 0, 0, 5][..]);
        raw.extend_from_slice(&[0x82, 0x94, 0, 0, 0, 0]);
        raw.extend_from_slice(&[9u8; 20]);
        raw.extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
        raw.extend_from_slice(&[0x82, 0x81, 0, 0, 0, 0, 6]);
        let mut app = BytesMut::new();
        assert_eq!(l.ingest(&mut raw, &mut app), Ok(Ingested::More));
        assert_eq!(&app[..], &[1, 5]);
        assert!(l.has_unread(), "the rest waits, undecoded");
        // The Login was taken: the session's bound from now on.
        l.set_max_frame(1024);
        assert_eq!(l.ingest(&mut BytesMut::new(), &mut app), Ok(Ingested::End));
        assert_eq!(
            app.len(),
            2 + 1 + 20,
            "the big message, and nothing after the close"
        );
        assert!(l.has_unread(), "the end, for the reader's next read");
        let mut raw = BytesMut::from(&[0x82, 0x81, 0, 0, 0, 0, 7][..]);
        assert_eq!(l.ingest(&mut raw, &mut app), Ok(Ingested::End));
        assert_eq!(app.len(), 23, "nothing read after the close is decoded");
        assert!(raw.is_empty());
    }

    #[test]
    fn plain_websocket_layers_frame_both_ways() {
        let mut l = Layers::none();
        l.start_ws(Protocol::Binary, 1024, BytesMut::new());
        l.set_max_frame(1024);
        // Client (logged in): one masked binary message with frame bytes [1,2,3] and a
        // ping.
        let mut raw =
            BytesMut::from(&[0x82, 0x83, 0, 0, 0, 0, 1, 2, 3, 0x89, 0x80, 0, 0, 0, 0][..]);
        let mut app = BytesMut::new();
        assert_eq!(l.ingest(&mut raw, &mut app), Ok(Ingested::More));
        assert_eq!(&app[..], &[3, 1, 2, 3]);
        assert!(l.has_pending(), "a pong");
        let mut wire = BytesMut::new();
        assert_eq!(l.egress(&[2, 9, 9, 1, 7], &mut wire), 5);
        assert_eq!(&wire[..], &[0x8A, 0, 0x82, 2, 9, 9, 0x82, 1, 7]);
        // A slice that ends inside a frame: the whole frames go, the cut one is left
        // (the caller sends it with the next slice).
        let mut wire = BytesMut::new();
        assert_eq!(l.egress(&[1, 4, 3, 8, 8], &mut wire), 2);
        assert_eq!(&wire[..], &[0x82, 1, 4]);
        let mut wire = BytesMut::new();
        assert_eq!(l.egress(&[3, 8, 8, 8], &mut wire), 4);
        assert_eq!(&wire[..], &[0x82, 3, 8, 8, 8]);
        // A close frame is echoed and ends the stream; nothing goes out after it.
        let mut raw = BytesMut::from(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe9][..]);
        assert_eq!(l.ingest(&mut raw, &mut app), Ok(Ingested::End));
        let mut wire = BytesMut::new();
        l.egress(&[1, 5], &mut wire);
        assert_eq!(&wire[..], &[0x88, 2, 0x03, 0xe9]);
    }

    fn masked_text(text: &str) -> BytesMut {
        let mut v = BytesMut::new();
        ws::put_frame(ws::op::TEXT, text.as_bytes(), &mut v);
        // A client frame: the mask bit and a zero mask (XOR with 0 keeps the bytes).
        let at = if text.len() < 126 { 2 } else { 4 };
        v[1] |= 0x80;
        let tail = v.split_off(at);
        v.extend_from_slice(&[0, 0, 0, 0]);
        v.unsplit(tail);
        v
    }

    #[test]
    fn json_messages_become_frames_and_frames_become_json() {
        use ringrouter_proto::codec::decode_client;
        use ringrouter_proto::v1::{client_frame, server_frame, Pong};
        let mut l = Layers::none();
        l.start_ws(Protocol::Json, 1024, BytesMut::new());
        let mut raw = masked_text(r#"{"login":{"requestId":"7","user":"ann"}}"#);
        let mut app = BytesMut::new();
        assert_eq!(l.ingest(&mut raw, &mut app), Ok(Ingested::More));
        let body = ringrouter_proto::codec::next_frame(&mut app, 1024)
            .expect("framed")
            .expect("whole");
        match decode_client(body).expect("decodes").kind {
            Some(client_frame::Kind::Login(login)) => {
                assert_eq!((login.request_id, login.user.as_str()), (7, "ann"));
            }
            other => panic!("{other:?}"),
        }
        let mut out = BytesMut::new();
        encode_frame(
            &ServerFrame {
                kind: Some(server_frame::Kind::Pong(Pong { nonce: 9 })),
            },
            &mut out,
        );
        let mut wire = BytesMut::new();
        l.egress(&out, &mut wire);
        assert_eq!(wire[0], 0x81, "one text message");
        let text = std::str::from_utf8(&wire[2..]).expect("utf-8");
        assert!(
            text.contains("\"pong\"") && text.contains("\"9\""),
            "{text}"
        );
        // JSON that is not a frame closes with 1007.
        let mut raw = masked_text(r#"{"login":{"requestId":true}}"#);
        assert!(l.ingest(&mut raw, &mut app).is_err());
        l.end(ws::code::NORMAL, "");
        let mut wire = BytesMut::new();
        l.take_pending(&mut wire);
        assert_eq!(&wire[2..4], &[0x03, 0xef]);
    }

    #[test]
    fn the_websocket_input_kept_between_reads_stays_small() {
        let mut l = Layers::none();
        l.start_ws(Protocol::Binary, 1 << 20, BytesMut::new());
        l.set_max_frame(1 << 20);
        // Pings, then a message in 1-byte fragments (each split off the input's front),
        // read in big pieces: the input was appended to with its front split off, and
        // grew to 32 MiB per session while holding a partial frame.
        let mut block = Vec::new();
        for _ in 0..50 {
            block.extend_from_slice(&[0x89u8, 0xfd, 0, 0, 0, 0]);
            block.extend_from_slice(&[7u8; 125]);
        }
        for i in 0..1000 {
            let op = if i == 0 { 0x02u8 } else { 0x00 };
            let fin = if i == 999 { 0x80u8 } else { 0 };
            block.extend_from_slice(&[op | fin, 0x81, 0, 0, 0, 0, 0x0a]);
        }
        let stream: Vec<u8> = block
            .iter()
            .copied()
            .cycle()
            .take(block.len() * 400)
            .collect();
        let mut app = BytesMut::new();
        let mut messages = 0;
        for piece in stream.chunks(700_001) {
            let mut raw = BytesMut::from(piece);
            assert_eq!(l.ingest(&mut raw, &mut app), Ok(Ingested::More));
            messages += ringrouter_proto::codec::frames(&app).count();
            app.clear();
            let input = &l.ws.as_ref().expect("a WebSocket layer").input;
            assert!(input.len() < 200, "{} bytes left", input.len());
            assert!(input.capacity() <= INPUT_KEEP, "{}", input.capacity());
        }
        assert_eq!(messages, 400);
    }

    #[test]
    fn pongs_waiting_for_a_client_that_does_not_read_are_bounded() {
        let mut l = Layers::none();
        l.start_ws(Protocol::Binary, 1024, BytesMut::new());
        let ping = [0x89u8, 0xfd, 0, 0, 0, 0];
        let mut app = BytesMut::new();
        for _ in 0..10_000 {
            let mut raw = BytesMut::from(&ping[..]);
            raw.extend_from_slice(&[7u8; 125]);
            assert_eq!(l.ingest(&mut raw, &mut app), Ok(Ingested::More));
        }
        // 10 000 pings of 125 bytes: the pongs stop at the bound (plus one pong).
        assert!(
            l.pending.len() < MAX_PENDING_PONGS + 128,
            "{}",
            l.pending.len()
        );
        assert!(l.pending.len() >= MAX_PENDING_PONGS);
        // Once written, pings are answered again.
        let mut wire = BytesMut::new();
        l.take_pending(&mut wire);
        let mut raw = BytesMut::from(&[0x89u8, 0x80, 0, 0, 0, 0][..]);
        assert_eq!(l.ingest(&mut raw, &mut app), Ok(Ingested::More));
        assert_eq!(&l.pending[..], &[0x8A, 0]);
        assert!(app.is_empty());
    }

    #[test]
    fn a_text_message_on_the_binary_protocol_closes_with_1003() {
        let mut l = Layers::none();
        l.start_ws(Protocol::Binary, 1024, BytesMut::new());
        let mut raw = BytesMut::from(&[0x81, 0x81, 0, 0, 0, 0, b'x'][..]);
        let mut app = BytesMut::new();
        assert!(l.ingest(&mut raw, &mut app).is_err());
        // The close code is sent when the conversation ends.
        l.end(ws::code::NORMAL, "");
        let mut wire = BytesMut::new();
        l.take_pending(&mut wire);
        assert_eq!(&wire[..4], &[0x88, wire[1], 0x03, 0xeb]);
    }
}
