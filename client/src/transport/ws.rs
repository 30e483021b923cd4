//! A client-side WebSocket codec (RFC 6455), without I/O: the upgrade request
//! and the check of its answer (`Sec-WebSocket-Accept`, subprotocol), frames
//! out (masked, as a client must), frames in (unmasked; fragmented messages
//! reassembled up to a bound; pings, pongs and close reported to the caller).
//!
//! ringrouter's binary subprotocol `ringrouter.v1` carries one ClientFrame /
//! ServerFrame per binary message, without the varint length of the TCP
//! framing. The clients above keep speaking varint-delimited frames:
//! [`put_delimited`] turns each of them into one message, and [`Decoder`] puts
//! the length back in front of each message it completes.

use bytes::{Buf, BufMut, BytesMut};
use ringrouter_proto::codec::{peek_varint, put_varint};

/// The binary subprotocol.
pub(crate) const SUBPROTOCOL: &str = "ringrouter.v1";
/// RFC 6455 §1.3: appended to the key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest upgrade answer head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Opcodes.
pub(crate) mod op {
    pub(crate) const CONTINUATION: u8 = 0x0;
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xA;
}

/// Close codes (RFC 6455 §7.4.1).
pub(crate) mod close {
    pub(crate) const NORMAL: u16 = 1000;
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    pub(crate) const UNSUPPORTED_DATA: u16 = 1003;
    pub(crate) const TOO_BIG: u16 = 1009;
}

/// A violation of the protocol by the server: the close code to answer with
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WsError {
    pub(crate) code: u16,
    pub(crate) reason: String,
}

impl WsError {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        WsError {
            code,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebSocket error {}: {}", self.code, self.reason)
    }
}

// ------------------------------------------------------------------ handshake

/// Standard base64 with padding (RFC 4648).
pub(crate) fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
pub(crate) fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID.as_bytes());
    base64(ctx.finish().as_ref())
}

/// Random bytes from the OS.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    // The OS random source does not fail on Linux once booted; a fixed seed
    // would still be a valid (if predictable) key.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub(crate) fn new_key() -> String {
    base64(&random::<16>())
}

/// The upgrade request for `path` on `host` (the `Host` header: `name:port`).
pub(crate) fn handshake_request(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    )
    .into_bytes()
}

/// Checks the server's answer to the upgrade request sent with `key`:
/// `Ok(None)` while its head is incomplete, `Ok(Some(n))` once the `n` bytes of
/// its head accept the upgrade (what follows is WebSocket frames).
pub(crate) fn check_handshake_response(buf: &[u8], key: &str) -> Result<Option<usize>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(format!(
                "WebSocket upgrade: answer head over {MAX_HEAD} bytes"
            ));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| "WebSocket upgrade: the answer head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code != "101" {
        return Err(format!("WebSocket upgrade refused: {status:?}"));
    }
    let (mut upgrade, mut connection, mut accept, mut protocol) = (false, false, None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("WebSocket upgrade: bad header line {line:?}"));
        };
        let value = value.trim();
        let has_token = |t: &str| value.split(',').any(|v| v.trim().eq_ignore_ascii_case(t));
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade |= has_token("websocket"),
            "connection" => connection |= has_token("upgrade"),
            "sec-websocket-accept" => accept = Some(value.to_owned()),
            "sec-websocket-protocol" => protocol = Some(value.to_owned()),
            _ => {}
        }
    }
    if !upgrade || !connection {
        return Err(
            "WebSocket upgrade: the answer lacks Upgrade: websocket / Connection: upgrade".into(),
        );
    }
    let want = accept_key(key);
    match accept {
        Some(a) if a == want => {}
        Some(a) => {
            return Err(format!(
            "WebSocket upgrade: Sec-WebSocket-Accept {a:?} does not match the key (want {want:?})"
        ))
        }
        None => return Err("WebSocket upgrade: no Sec-WebSocket-Accept".into()),
    }
    match protocol.as_deref() {
        Some(SUBPROTOCOL) => {}
        other => {
            return Err(format!(
                "WebSocket upgrade: the server chose subprotocol {other:?}, not {SUBPROTOCOL:?}"
            ))
        }
    }
    Ok(Some(end + 4))
}

// --------------------------------------------------------------- frames out

/// Masking keys: xorshift64* seeded from the OS (a key per frame, as RFC
/// 6455 §5.3 asks, without a system call per frame).
pub(crate) struct Masker {
    state: u64,
}

impl Masker {
    pub(crate) fn new() -> Self {
        Masker {
            state: u64::from_ne_bytes(random::<8>()) | 1,
        }
    }

    #[inline]
    pub(crate) fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32).to_ne_bytes()
    }
}

/// XORs `data` with `key` (repeated from its first byte), eight bytes at a time.
#[inline]
pub(crate) fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let k = [
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ];
    let k64 = u64::from_ne_bytes(k);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // The whole chunks covered a multiple of 4 bytes: the key starts over.
    for (b, m) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *b ^= m;
    }
}

/// Appends a frame header (FIN set unless `more`), masked with `key` if any.
#[inline]
pub(crate) fn put_header(
    out: &mut BytesMut,
    opcode: u8,
    more: bool,
    len: usize,
    key: Option<[u8; 4]>,
) {
    let fin = if more { 0 } else { 0x80 };
    out.put_u8(fin | opcode);
    let mask_bit = if key.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.put_u8(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.put_u8(mask_bit | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(mask_bit | 127);
        out.put_u64(len as u64);
    }
    if let Some(k) = key {
        out.put_slice(&k);
    }
}

/// Appends one masked frame (FIN) carrying `payload`.
#[inline]
pub(crate) fn put_message(out: &mut BytesMut, masker: &mut Masker, opcode: u8, payload: &[u8]) {
    let key = masker.next_key();
    put_header(out, opcode, false, payload.len(), Some(key));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key);
}

/// The body of a Close frame: `code`, then `reason` cut to fit 125 bytes.
pub(crate) fn close_body(code: u16, reason: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + reason.len().min(123));
    body.extend_from_slice(&code.to_be_bytes());
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    body.extend_from_slice(&reason.as_bytes()[..cut]);
    body
}

/// Appends each varint-delimited frame of `frames` as one masked binary
/// message. `frames` must hold whole frames (what the clients encode).
pub(crate) fn put_delimited(
    out: &mut BytesMut,
    masker: &mut Masker,
    frames: &[u8],
) -> Result<(), String> {
    // Header (at most 14 bytes) per frame, a little less than the varint it replaces... or more.
    out.reserve(frames.len() + frames.len() / 4 + 16);
    let mut rest = frames;
    while !rest.is_empty() {
        let (len, n) = match peek_varint(rest) {
            Ok(Some(v)) => v,
            Ok(None) | Err(_) => return Err("a frame to send has a bad length prefix".into()),
        };
        let end = n + len as usize;
        if end > rest.len() {
            return Err("a frame to send is cut short".into());
        }
        put_message(out, masker, op::BINARY, &rest[n..end]);
        rest = &rest[end..];
    }
    Ok(())
}

// ---------------------------------------------------------------- frames in

/// A control frame, or the end, reported by [`Decoder::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// Answer with a Pong carrying the same payload.
    Ping(Vec<u8>),
    /// The server closes: its code (None: none given) and reason.
    Close(Option<u16>, String),
}

/// Decodes frames from the server into varint-delimited message bodies.
pub(crate) struct Decoder {
    /// Largest message (after reassembly).
    max_message: usize,
    /// The message being reassembled from fragments.
    partial: Option<Vec<u8>>,
    /// A Close arrived: nothing after it is decoded.
    closed: bool,
}

impl Decoder {
    pub(crate) fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            partial: None,
            closed: false,
        }
    }

    /// Decodes every complete frame at the front of `input` and removes it:
    /// each complete binary message goes to `frames` behind its varint length;
    /// pings and a close go to `control`. A partial frame stays in `input`.
    pub(crate) fn decode(
        &mut self,
        input: &mut BytesMut,
        frames: &mut BytesMut,
        control: &mut Vec<Control>,
    ) -> Result<(), WsError> {
        let mut pos = 0;
        let r = self.decode_at(input, &mut pos, frames, control);
        input.advance(pos);
        if r.is_err() {
            self.partial = None;
        }
        r
    }

    fn decode_at(
        &mut self,
        input: &[u8],
        pos: &mut usize,
        frames: &mut BytesMut,
        control: &mut Vec<Control>,
    ) -> Result<(), WsError> {
        use close::{PROTOCOL_ERROR, TOO_BIG, UNSUPPORTED_DATA};
        while !self.closed {
            let buf = &input[*pos..];
            let [b0, b1, ..] = *buf else { return Ok(()) };
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0F;
            if b0 & 0x70 != 0 {
                return Err(WsError::new(
                    PROTOCOL_ERROR,
                    "reserved bits set (no extension was agreed)",
                ));
            }
            if b1 & 0x80 != 0 {
                return Err(WsError::new(
                    PROTOCOL_ERROR,
                    "a frame from the server is masked",
                ));
            }
            let (len, head) = match b1 & 0x7F {
                126 => match buf.get(2..4) {
                    Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                    None => return Ok(()),
                },
                127 => match buf.get(2..10) {
                    Some(b) => {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        (u64::from_be_bytes(a), 10)
                    }
                    None => return Ok(()),
                },
                n => (u64::from(n), 2),
            };
            if opcode >= 8 {
                if !fin {
                    return Err(WsError::new(PROTOCOL_ERROR, "fragmented control frame"));
                }
                if len > 125 {
                    return Err(WsError::new(PROTOCOL_ERROR, "control frame over 125 bytes"));
                }
            } else {
                let so_far = self.partial.as_ref().map_or(0, Vec::len) as u64;
                if so_far + len > self.max_message as u64 {
                    return Err(WsError::new(
                        TOO_BIG,
                        format!("message over {} bytes", self.max_message),
                    ));
                }
            }
            let len = len as usize;
            if buf.len() < head + len {
                return Ok(());
            }
            let payload = &buf[head..head + len];
            *pos += head + len;
            match opcode {
                op::BINARY => {
                    if self.partial.is_some() {
                        return Err(WsError::new(
                            PROTOCOL_ERROR,
                            "a new message began inside a fragmented one",
                        ));
                    }
                    if fin {
                        put_varint(frames, len as u64);
                        frames.extend_from_slice(payload);
                    } else {
                        self.partial = Some(payload.to_vec());
                    }
                }
                op::CONTINUATION => {
                    let Some(p) = self.partial.as_mut() else {
                        return Err(WsError::new(
                            PROTOCOL_ERROR,
                            "continuation frame outside a message",
                        ));
                    };
                    p.extend_from_slice(payload);
                    if fin {
                        let p = self.partial.take().unwrap_or_default();
                        put_varint(frames, p.len() as u64);
                        frames.extend_from_slice(&p);
                    }
                }
                op::TEXT => {
                    return Err(WsError::new(
                        UNSUPPORTED_DATA,
                        format!("text message on the binary subprotocol {SUBPROTOCOL}"),
                    ))
                }
                op::PING => control.push(Control::Ping(payload.to_vec())),
                op::PONG => {}
                op::CLOSE => {
                    let (code, reason) = match payload {
                        [] => (None, String::new()),
                        [_] => return Err(WsError::new(PROTOCOL_ERROR, "close frame of 1 byte")),
                        [a, b, rest @ ..] => (
                            Some(u16::from_be_bytes([*a, *b])),
                            String::from_utf8_lossy(rest).into_owned(),
                        ),
                    };
                    self.closed = true;
                    control.push(Control::Close(code, reason));
                }
                other => {
                    return Err(WsError::new(
                        PROTOCOL_ERROR,
                        format!("unknown opcode {other:#x}"),
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unmasked server frame.
    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_header(&mut out, opcode, !fin, payload.len(), None);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<(Vec<Vec<u8>>, Vec<Control>), WsError> {
        let mut input = BytesMut::from(bytes);
        let mut frames = BytesMut::new();
        let mut control = Vec::new();
        d.decode(&mut input, &mut frames, &mut control)?;
        assert!(input.is_empty(), "left {} bytes", input.len());
        Ok((bodies(&frames), control))
    }

    fn bodies(mut frames: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !frames.is_empty() {
            let (len, n) = peek_varint(frames).unwrap().unwrap();
            out.push(frames[n..n + len as usize].to_vec());
            frames = &frames[n + len as usize..];
        }
        out
    }

    fn unmask(frame: &[u8]) -> (u8, bool, Vec<u8>, usize) {
        let fin = frame[0] & 0x80 != 0;
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        let (len, mut at) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let key = [frame[at], frame[at + 1], frame[at + 2], frame[at + 3]];
        at += 4;
        let body: Vec<u8> = frame[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        (frame[0] & 0x0F, fin, body, at + len)
    }

    #[test]
    fn accept_key_of_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(new_key().len(), 24);
    }

    #[test]
    fn handshake_answers_are_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let good = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: ringrouter.v1\r\n\r\n";
        let mut with_frame = good.as_bytes().to_vec();
        with_frame.extend_from_slice(&[0x82, 0x00]);
        assert_eq!(
            check_handshake_response(&with_frame, key),
            Ok(Some(good.len()))
        );
        assert_eq!(
            check_handshake_response(&good.as_bytes()[..40], key),
            Ok(None)
        );
        // Header names and tokens are case-insensitive.
        let lower = good
            .replace("Upgrade: websocket", "upgrade: WebSocket")
            .replace("Connection: Upgrade", "connection: keep-alive, upgrade");
        assert!(check_handshake_response(lower.as_bytes(), key)
            .unwrap()
            .is_some());
        let wrong_accept = good.replace(
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        );
        assert!(check_handshake_response(wrong_accept.as_bytes(), key)
            .unwrap_err()
            .contains("does not match"));
        let no_proto = good.replace("Sec-WebSocket-Protocol: ringrouter.v1\r\n", "");
        assert!(check_handshake_response(no_proto.as_bytes(), key)
            .unwrap_err()
            .contains("subprotocol"));
        let json = good.replace("ringrouter.v1", "ringrouter.v1.json");
        assert!(check_handshake_response(json.as_bytes(), key).is_err());
        let refused = "HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\n\r\n";
        assert!(check_handshake_response(refused.as_bytes(), key)
            .unwrap_err()
            .contains("501"));
        let no_upgrade = good.replace("Upgrade: websocket\r\n", "");
        assert!(check_handshake_response(no_upgrade.as_bytes(), key).is_err());
        assert!(check_handshake_response(&vec![b'a'; MAX_HEAD + 1], key).is_err());
        let req = String::from_utf8(handshake_request("localhost:7880", "/ws", key)).unwrap();
        assert!(req.starts_with("GET /ws HTTP/1.1\r\nHost: localhost:7880\r\n"));
        assert!(req.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(req.contains("Sec-WebSocket-Protocol: ringrouter.v1\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn masking_word_at_a_time_matches_bytewise() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(31)).collect();
            let mut masked = data.clone();
            apply_mask(&mut masked, key);
            let want: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(masked, want, "len {len}");
            apply_mask(&mut masked, key);
            assert_eq!(masked, data);
        }
        // RFC 6455 §5.7: a masked "Hello".
        let mut out = BytesMut::new();
        put_header(&mut out, op::TEXT, false, 5, Some(key));
        let at = out.len();
        out.extend_from_slice(b"Hello");
        apply_mask(&mut out[at..], key);
        assert_eq!(
            &out[..],
            &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn masks_differ_from_frame_to_frame() {
        let mut m = Masker::new();
        let keys: std::collections::HashSet<[u8; 4]> = (0..1000).map(|_| m.next_key()).collect();
        assert!(keys.len() > 990);
    }

    #[test]
    fn delimited_frames_become_one_masked_message_each() {
        let mut frames = BytesMut::new();
        let sizes = [0usize, 1, 125, 126, 300, 65535, 65536, 70000];
        for (i, &n) in sizes.iter().enumerate() {
            put_varint(&mut frames, n as u64);
            frames.extend(std::iter::repeat_n(i as u8, n));
        }
        let mut out = BytesMut::new();
        put_delimited(&mut out, &mut Masker::new(), &frames).unwrap();
        let mut rest = &out[..];
        for (i, &n) in sizes.iter().enumerate() {
            let (opcode, fin, body, used) = unmask(rest);
            assert_eq!((opcode, fin, body.len()), (op::BINARY, true, n));
            assert!(body.iter().all(|&b| b == i as u8));
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        // Not whole frames: refused.
        assert!(put_delimited(&mut out, &mut Masker::new(), &[5, 1, 2]).is_err());
        assert!(put_delimited(&mut out, &mut Masker::new(), &[0x80]).is_err());
    }

    #[test]
    fn close_frames_carry_code_and_a_cut_reason() {
        let mut out = BytesMut::new();
        let body = close_body(1000, &"é".repeat(100));
        put_message(&mut out, &mut Masker::new(), op::CLOSE, &body);
        let (opcode, _, body, _) = unmask(&out);
        assert_eq!(opcode, op::CLOSE);
        assert!(body.len() <= 125);
        assert_eq!(&body[..2], &1000u16.to_be_bytes());
        assert!(std::str::from_utf8(&body[2..]).is_ok());
    }

    #[test]
    fn messages_in_any_split_are_decoded_once() {
        let mut wire = Vec::new();
        wire.extend(server_frame(op::BINARY, true, b"one"));
        wire.extend(server_frame(op::PING, true, b"hb"));
        wire.extend(server_frame(op::BINARY, true, &vec![7u8; 300]));
        wire.extend(server_frame(op::BINARY, true, &vec![9u8; 70_000]));
        wire.extend(server_frame(op::BINARY, true, b""));
        let want_bodies = vec![b"one".to_vec(), vec![7u8; 300], vec![9u8; 70_000], vec![]];
        for step in [1usize, 2, 3, 7, 64, 1000, wire.len()] {
            let mut d = Decoder::new(1 << 20);
            let mut input = BytesMut::new();
            let mut frames = BytesMut::new();
            let mut control = Vec::new();
            for chunk in wire.chunks(step) {
                input.extend_from_slice(chunk);
                d.decode(&mut input, &mut frames, &mut control).unwrap();
            }
            assert!(input.is_empty());
            assert_eq!(bodies(&frames), want_bodies, "step {step}");
            assert_eq!(control, vec![Control::Ping(b"hb".to_vec())]);
        }
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut wire = Vec::new();
        wire.extend(server_frame(op::BINARY, false, b"ab"));
        wire.extend(server_frame(op::PING, true, b"x"));
        wire.extend(server_frame(op::CONTINUATION, false, b"cd"));
        wire.extend(server_frame(op::CONTINUATION, true, b"e"));
        let (b, c) = decode_all(&mut Decoder::new(100), &wire).unwrap();
        assert_eq!(b, vec![b"abcde".to_vec()]);
        assert_eq!(c, vec![Control::Ping(b"x".to_vec())]);
    }

    #[test]
    fn reassembly_is_bounded() {
        let mut d = Decoder::new(10);
        // One frame over the bound is refused from its header alone.
        let mut big = BytesMut::new();
        put_header(&mut big, op::BINARY, false, 1 << 40, None);
        let err = decode_all(&mut d, &big).unwrap_err();
        assert_eq!(err.code, close::TOO_BIG);
        // Fragments that never end are refused once they pass it.
        let mut d = Decoder::new(10);
        let mut wire = server_frame(op::BINARY, false, b"123456");
        wire.extend(server_frame(op::CONTINUATION, false, b"7890"));
        wire.extend(server_frame(op::CONTINUATION, false, b"x"));
        assert_eq!(decode_all(&mut d, &wire).unwrap_err().code, close::TOO_BIG);
        // Exactly at the bound is fine.
        let mut d = Decoder::new(10);
        let mut wire = server_frame(op::BINARY, false, b"123456");
        wire.extend(server_frame(op::CONTINUATION, true, b"7890"));
        assert_eq!(
            decode_all(&mut d, &wire).unwrap().0,
            vec![b"1234567890".to_vec()]
        );
    }

    #[test]
    fn protocol_violations_have_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x82 | 0x40, 0], close::PROTOCOL_ERROR), // RSV1
            (vec![0x82, 0x81, 1, 2, 3, 4, 0], close::PROTOCOL_ERROR), // masked
            (server_frame(op::PING, false, b""), close::PROTOCOL_ERROR), // fragmented ping
            (
                server_frame(op::PING, true, &[0; 126]),
                close::PROTOCOL_ERROR,
            ),
            (
                server_frame(op::CONTINUATION, true, b"x"),
                close::PROTOCOL_ERROR,
            ),
            (server_frame(op::TEXT, true, b"{}"), close::UNSUPPORTED_DATA),
            (server_frame(0x3, true, b""), close::PROTOCOL_ERROR),
            (server_frame(op::CLOSE, true, b"x"), close::PROTOCOL_ERROR),
            (
                [
                    server_frame(op::BINARY, false, b"a"),
                    server_frame(op::BINARY, true, b"b"),
                ]
                .concat(),
                close::PROTOCOL_ERROR,
            ),
        ];
        for (wire, code) in cases {
            let err = decode_all(&mut Decoder::new(100), &wire).unwrap_err();
            assert_eq!(err.code, code, "{wire:?}: {err}");
        }
    }

    #[test]
    fn close_is_reported_and_ends_decoding() {
        let mut wire = server_frame(op::BINARY, true, b"last");
        let mut body = 1001u16.to_be_bytes().to_vec();
        body.extend_from_slice(b"going away");
        wire.extend(server_frame(op::CLOSE, true, &body));
        wire.extend(server_frame(op::BINARY, true, b"after"));
        let mut d = Decoder::new(100);
        let mut input = BytesMut::from(&wire[..]);
        let mut frames = BytesMut::new();
        let mut control = Vec::new();
        d.decode(&mut input, &mut frames, &mut control).unwrap();
        assert_eq!(bodies(&frames), vec![b"last".to_vec()]);
        assert_eq!(
            control,
            vec![Control::Close(Some(1001), "going away".into())]
        );
        let (_, c) =
            decode_all(&mut Decoder::new(100), &server_frame(op::CLOSE, true, b"")).unwrap();
        assert_eq!(c, vec![Control::Close(None, String::new())]);
    }
}
