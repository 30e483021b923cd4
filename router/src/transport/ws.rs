//! RFC 6455 on the server side, sans-IO: the opening handshake (headers in, the
//! `101` answer or a refusal out) and the frame codec (bytes in, messages and
//! control events out). Every bound is checked before bytes are buffered: a frame
//! header announcing more than the message bound closes with 1009 at once, and a
//! message split into more than [`MAX_FRAGMENTS`] frames closes with 1008.

use base64::Engine as _;
use bytes::{Buf, BufMut, BytesMut};
use sha1::{Digest, Sha1};

/// The subprotocol carrying one binary protobuf frame per message.
pub const PROTOCOL_BINARY: &str = "ringrouter.v1";
/// The subprotocol carrying one frame per text message, in the protobuf JSON mapping.
pub const PROTOCOL_JSON: &str = "ringrouter.v1.json";

/// Frames one message may be split into.
pub const MAX_FRAGMENTS: usize = 1024;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Which encoding of the frames a WebSocket session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `ringrouter.v1`: binary messages.
    Binary,
    /// `ringrouter.v1.json`: text messages, protobuf JSON mapping.
    Json,
}

impl Protocol {
    /// The subprotocol name.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Binary => PROTOCOL_BINARY,
            Protocol::Json => PROTOCOL_JSON,
        }
    }
}

/// A refused upgrade: the HTTP status, a reason for the body, and extra headers.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status code.
    pub status: u16,
    /// Why (the answer's JSON `reason`).
    pub reason: String,
    /// Extra response headers (name, value).
    pub headers: Vec<(&'static str, String)>,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
        headers: Vec::new(),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Checks an upgrade request's headers (names compared case-insensitively) and
/// returns the `101 Switching Protocols` answer and the subprotocol chosen. A client
/// that names no subprotocol gets `ringrouter.v1`; one that names only others is
/// refused (400), as is a request that is not a version-13 WebSocket upgrade
/// (426 for another version).
pub fn handshake(headers: &[(String, String)]) -> Result<(Vec<u8>, Protocol), Refusal> {
    if !has_token(header(headers, "upgrade"), "websocket") {
        return Err(refuse(400, "not a WebSocket upgrade (Upgrade: websocket)"));
    }
    if !has_token(header(headers, "connection"), "upgrade") {
        return Err(refuse(400, "not a WebSocket upgrade (Connection: Upgrade)"));
    }
    if header(headers, "sec-websocket-version").map(str::trim) != Some("13") {
        let mut r = refuse(426, "WebSocket version 13 is required");
        r.headers.push(("sec-websocket-version", "13".into()));
        return Err(r);
    }
    let key = header(headers, "sec-websocket-key")
        .map(str::trim)
        .unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !matches!(decoded, Ok(ref k) if k.len() == 16) {
        return Err(refuse(400, "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    let offered = header(headers, "sec-websocket-protocol");
    let protocol = match offered {
        None => None,
        Some(list) => {
            let names: Vec<&str> = list.split(',').map(str::trim).collect();
            if names.contains(&PROTOCOL_BINARY) {
                Some(Protocol::Binary)
            } else if names.contains(&PROTOCOL_JSON) {
                Some(Protocol::Json)
            } else {
                return Err(refuse(
                    400,
                    format!("unknown subprotocol; this router speaks {PROTOCOL_BINARY} and {PROTOCOL_JSON}"),
                ));
            }
        }
    };
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        out.push_str("sec-websocket-protocol: ");
        out.push_str(p.name());
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    Ok((out.into_bytes(), protocol.unwrap_or(Protocol::Binary)))
}

/// Opcodes.
pub mod op {
    /// Continuation frame.
    pub const CONT: u8 = 0x0;
    /// Text message.
    pub const TEXT: u8 = 0x1;
    /// Binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Close status codes used here.
pub mod code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// A data type this endpoint does not accept.
    pub const UNSUPPORTED: u16 = 1003;
    /// Text that is not UTF-8, or a frame that does not decode.
    pub const INVALID: u16 = 1007;
    /// A policy violation.
    pub const POLICY: u16 = 1008;
    /// A message over the size bound.
    pub const TOO_BIG: u16 = 1009;
    /// The server cannot take it now (RFC 6455 registry: Try Again Later).
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// What the decoder found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole data message.
    Message {
        /// Text (else binary).
        text: bool,
        /// Its bytes, unmasked.
        data: BytesMut,
    },
    /// A ping; the answer is a pong with the same bytes.
    Ping(BytesMut),
    /// A pong (ignored).
    Pong,
    /// The peer's close frame: its code (1005 when none) and reason.
    Close(u16, String),
}

/// A violation: the close code to answer with and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Close status code.
    pub code: u16,
    /// Why (goes into the close frame, truncated to fit).
    pub reason: String,
}

fn violation(code: u16, reason: impl Into<String>) -> Violation {
    Violation {
        code,
        reason: reason.into(),
    }
}

/// Decodes client frames (which must be masked).
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The message being reassembled from its frames.
    partial: Option<Partial>,
}

/// A message in progress.
#[derive(Debug)]
struct Partial {
    text: bool,
    /// Its bytes so far, unmasked.
    held: BytesMut,
    /// Its frames so far (the one arriving included).
    frames: usize,
    /// A data frame of it whose payload is still arriving: its bytes are unmasked into
    /// `held` as they come, so the input never holds more than a read of them (a frame
    /// kept whole in the input until it completed held the message twice, once in the
    /// frames so far and once in the frame on its way).
    arriving: Option<Arriving>,
}

/// A data frame being received (see [`Partial::arriving`]).
#[derive(Debug, Clone, Copy)]
struct Arriving {
    /// Payload bytes still to come.
    left: usize,
    /// Its mask, turned so that `mask[0]` applies to the next byte.
    mask: [u8; 4],
    /// The last frame of its message.
    fin: bool,
}

impl Decoder {
    /// A decoder refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            partial: None,
        }
    }

    /// Changes the message bound.
    pub fn set_max_message(&mut self, max_message: usize) {
        self.max_message = max_message;
    }

    /// Bytes held for a message in progress.
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.held.len())
    }

    /// A data frame (TEXT, BINARY or CONT) starts: the message it belongs to, taken out
    /// of `partial` (a CONT: its frame counted) or new (TEXT, BINARY: empty, `first`
    /// bytes reserved).
    fn data_frame(&mut self, opcode: u8, first: usize) -> Result<Partial, Violation> {
        match (opcode, self.partial.take()) {
            (op::TEXT | op::BINARY, None) => Ok(Partial {
                text: opcode == op::TEXT,
                held: BytesMut::with_capacity(first),
                frames: 1,
                arriving: None,
            }),
            (op::CONT, Some(mut p)) => {
                p.frames += 1;
                if p.frames > MAX_FRAGMENTS {
                    return Err(violation(
                        code::POLICY,
                        format!("a message in more than {MAX_FRAGMENTS} frames"),
                    ));
                }
                Ok(p)
            }
            (op::CONT, None) => Err(violation(code::PROTOCOL, "continuation without a message")),
            (op::TEXT | op::BINARY, Some(_)) => Err(violation(
                code::PROTOCOL,
                "a new message started inside a fragmented one",
            )),
            (other, _) => Err(violation(
                code::PROTOCOL,
                format!("unknown opcode {other:#x}"),
            )),
        }
    }

    /// Takes the next event out of `input`, `Ok(None)` when it holds no whole frame.
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Event>, Violation> {
        loop {
            if let Some(mut p) = self.partial.take() {
                match p.arriving.take() {
                    // Between frames: the next one's header follows.
                    None => self.partial = Some(p),
                    Some(mut a) => {
                        let n = a.left.min(input.len());
                        let mut data = input.split_to(n);
                        unmask(&mut data, a.mask);
                        p.held.extend_from_slice(&data);
                        a.mask.rotate_left(n % 4);
                        a.left -= n;
                        if a.left > 0 {
                            p.arriving = Some(a);
                            self.partial = Some(p);
                            return Ok(None);
                        }
                        if a.fin {
                            return finish(p.text, p.held).map(Some);
                        }
                        self.partial = Some(p);
                        continue;
                    }
                }
            }
            if input.len() < 2 {
                return Ok(None);
            }
            let b0 = input[0];
            let b1 = input[1];
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0F;
            if b0 & 0x70 != 0 {
                return Err(violation(code::PROTOCOL, "reserved bits set"));
            }
            if b1 & 0x80 == 0 {
                return Err(violation(code::PROTOCOL, "client frames must be masked"));
            }
            let (len, at) = match b1 & 0x7F {
                126 => {
                    if input.len() < 4 {
                        return Ok(None);
                    }
                    (u64::from(u16::from_be_bytes([input[2], input[3]])), 4)
                }
                127 => {
                    if input.len() < 10 {
                        return Ok(None);
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&input[2..10]);
                    let l = u64::from_be_bytes(b);
                    if l >> 63 != 0 {
                        return Err(violation(
                            code::PROTOCOL,
                            "frame length has its top bit set",
                        ));
                    }
                    (l, 10)
                }
                l => (u64::from(l), 2),
            };
            let control = opcode & 0x8 != 0;
            if control {
                if !fin || len > 125 {
                    return Err(violation(
                        code::PROTOCOL,
                        "control frames must be whole and at most 125 bytes",
                    ));
                }
            } else {
                let held = self.buffered() as u64;
                if held.saturating_add(len) > self.max_message as u64 {
                    return Err(violation(
                        code::TOO_BIG,
                        format!("message over {} bytes", self.max_message),
                    ));
                }
            }
            let whole = at + 4 + len as usize;
            if input.len() < whole && !control && input.len() >= at + 4 {
                // A data frame not whole yet: its payload is taken as it comes.
                // (Reserved for a new message: bounded, `len` passed the bound above.)
                let mut p = self.data_frame(opcode, len as usize)?;
                let mask = [input[at], input[at + 1], input[at + 2], input[at + 3]];
                input.advance(at + 4);
                p.arriving = Some(Arriving {
                    left: len as usize,
                    mask,
                    fin,
                });
                self.partial = Some(p);
                continue;
            }
            if input.len() < whole {
                // Room for what is missing of a control frame, or of a data frame's header
                // (its payload is taken as it comes, above).
                let want = if control { whole } else { at + 4 };
                input.reserve(want.saturating_sub(input.len()));
                return Ok(None);
            }
            let mask = [input[at], input[at + 1], input[at + 2], input[at + 3]];
            input.advance(at + 4);
            let mut data = input.split_to(len as usize);
            unmask(&mut data, mask);
            match opcode {
                op::TEXT | op::BINARY | op::CONT => {
                    let mut p = self.data_frame(opcode, 0)?;
                    if p.held.is_empty() {
                        // A whole first frame: the message is its bytes, not a copy.
                        p.held = data;
                    } else {
                        p.held.extend_from_slice(&data);
                    }
                    if fin {
                        return finish(p.text, p.held).map(Some);
                    }
                    self.partial = Some(p);
                }
                op::PING => return Ok(Some(Event::Ping(data))),
                op::PONG => return Ok(Some(Event::Pong)),
                op::CLOSE => {
                    return match data.len() {
                        0 => Ok(Some(Event::Close(1005, String::new()))),
                        1 => Err(violation(code::PROTOCOL, "a close frame of one byte")),
                        _ => {
                            let c = u16::from_be_bytes([data[0], data[1]]);
                            // RFC 6455 7.4: codes a peer may send (1004-1006 and 1015 are
                            // never on the wire; below 1000 and 1016-2999 unassigned).
                            if !matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                                return Err(violation(
                                    code::PROTOCOL,
                                    format!("close code {c} is not one a peer may send"),
                                ));
                            }
                            let reason = std::str::from_utf8(&data[2..]).map_err(|_| {
                                violation(code::INVALID, "close reason is not UTF-8")
                            })?;
                            Ok(Some(Event::Close(c, reason.to_string())))
                        }
                    };
                }
                other => {
                    return Err(violation(
                        code::PROTOCOL,
                        format!("unknown opcode {other:#x}"),
                    ));
                }
            }
        }
    }
}

fn finish(text: bool, data: BytesMut) -> Result<Event, Violation> {
    if text && std::str::from_utf8(&data).is_err() {
        return Err(violation(code::INVALID, "text message is not UTF-8"));
    }
    Ok(Event::Message { text, data })
}

/// XORs `data` with the 4-byte mask, a word at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let m8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ m8).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends a server frame header (FIN, unmasked) for `len` payload bytes.
pub fn put_header(opcode: u8, len: usize, out: &mut BytesMut) {
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Appends a whole server frame.
pub fn put_frame(opcode: u8, payload: &[u8], out: &mut BytesMut) {
    put_header(opcode, payload.len(), out);
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and as much of `reason` as fits (123 bytes,
/// cut on a character boundary).
pub fn put_close(code: u16, reason: &str, out: &mut BytesMut) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    put_header(op::CLOSE, 2 + end, out);
    out.put_u16(code);
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
        let n = payload.len();
        if n < 126 {
            v.push(0x80 | n as u8);
        } else if n <= 65535 {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    fn hdrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn handshake_answers_the_rfc_example_key() {
        let h = hdrs(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "chat, ringrouter.v1.json"),
        ]);
        let (out, p) = handshake(&h).expect("valid upgrade");
        let s = String::from_utf8(out).expect("ascii");
        assert!(
            s.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{s}"
        );
        assert!(s.contains("sec-websocket-protocol: ringrouter.v1.json\r\n"));
        assert_eq!(p, Protocol::Json);
    }

    #[test]
    fn handshake_refusals() {
        let base = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(handshake(&hdrs(&base)).expect("ok").1, Protocol::Binary);
        let mut v8 = base;
        v8[2].1 = "8";
        let r = handshake(&hdrs(&v8)).expect_err("old version");
        assert_eq!(r.status, 426);
        assert_eq!(r.headers, vec![("sec-websocket-version", "13".to_string())]);
        let mut badkey = base;
        badkey[3].1 = "short";
        assert_eq!(handshake(&hdrs(&badkey)).expect_err("key").status, 400);
        let mut other = hdrs(&base);
        other.push(("sec-websocket-protocol".into(), "mqtt".into()));
        assert_eq!(handshake(&other).expect_err("subprotocol").status, 400);
        assert_eq!(
            handshake(&hdrs(&base[1..])).expect_err("no upgrade").status,
            400
        );
    }

    /// Feeds `wire` to `d` `cut` bytes at a time; the events, checking that the input
    /// never keeps more than `held_max` bytes after a decode.
    fn feed(d: &mut Decoder, wire: &[u8], cut: usize, held_max: usize) -> Vec<Event> {
        let mut input = BytesMut::new();
        let mut events = Vec::new();
        for chunk in wire.chunks(cut) {
            input.extend_from_slice(chunk);
            while let Some(e) = d.decode(&mut input).expect("valid") {
                events.push(e);
            }
            assert!(
                input.len() <= held_max,
                "cut {cut}: {} bytes held",
                input.len()
            );
        }
        assert!(input.is_empty());
        events
    }

    #[test]
    fn a_frame_on_its_way_is_unmasked_into_its_message_not_held_in_the_input() {
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut wire = masked(op::BINARY, false, &payload[..100_001]);
        wire.extend(masked(op::PING, true, b"between"));
        wire.extend(masked(op::CONT, true, &payload[100_001..]));
        for cut in [1 << 16, 4093, 5] {
            let mut d = Decoder::new(300_000);
            // What is left is at most a header: the payload went to the message.
            let events = feed(&mut d, &wire, cut, 13);
            assert_eq!(events.len(), 2, "cut {cut}");
            assert_eq!(events[0], Event::Ping(BytesMut::from(&b"between"[..])));
            assert!(
                matches!(&events[1], Event::Message { text: false, data } if data[..] == payload[..]),
                "cut {cut}"
            );
            assert_eq!(d.buffered(), 0);
        }
        // The bound still holds for a frame that streams.
        let mut d = Decoder::new(1000);
        let mut input = BytesMut::from(&masked(op::BINARY, false, &payload[..600])[..600]);
        assert_eq!(d.decode(&mut input), Ok(None));
        input.extend_from_slice(&masked(op::BINARY, false, &payload[..600])[600..]);
        assert_eq!(d.decode(&mut input), Ok(None));
        let mut more = BytesMut::from(&masked(op::CONT, true, &payload[..600])[..]);
        let e = d.decode(&mut more).expect_err("over the bound");
        assert_eq!(e.code, code::TOO_BIG);
        // A new message inside a streaming one is refused as before.
        let mut d = Decoder::new(10_000);
        let mut input = BytesMut::from(&masked(op::TEXT, false, b"abc")[..]);
        assert_eq!(d.decode(&mut input), Ok(None));
        let mut next = BytesMut::from(&masked(op::BINARY, true, &payload[..5000])[..100]);
        let e = d.decode(&mut next).expect_err("a new message");
        assert_eq!(e.code, code::PROTOCOL);
    }

    #[test]
    fn decodes_messages_split_anywhere() {
        let mut wire = masked(op::BINARY, true, b"hello");
        wire.extend(masked(op::PING, true, b"p"));
        wire.extend(masked(op::TEXT, false, "hé".as_bytes()));
        wire.extend(masked(op::CONT, true, b"llo"));
        let big = vec![9u8; 70_000];
        wire.extend(masked(op::BINARY, true, &big));
        for cut in [1, 2, 3, 7, 11, 100] {
            let mut d = Decoder::new(100_000);
            let events = feed(&mut d, &wire, cut, 13);
            assert_eq!(events.len(), 4, "cut {cut}");
            assert_eq!(
                events[0],
                Event::Message {
                    text: false,
                    data: BytesMut::from(&b"hello"[..])
                }
            );
            assert_eq!(events[1], Event::Ping(BytesMut::from(&b"p"[..])));
            assert_eq!(
                events[2],
                Event::Message {
                    text: true,
                    data: BytesMut::from("héllo".as_bytes())
                }
            );
            assert!(matches!(&events[3], Event::Message { data, .. } if data[..] == big[..]));
        }
    }

    #[test]
    fn violations_have_their_close_codes() {
        let check = |wire: Vec<u8>, max: usize| {
            let mut d = Decoder::new(max);
            let mut input = BytesMut::from(&wire[..]);
            loop {
                match d.decode(&mut input) {
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(v) => return Some(v.code),
                }
            }
        };
        // Unmasked.
        assert_eq!(check(vec![0x82, 0x01, 0x00], 100), Some(code::PROTOCOL));
        // Over the bound: refused from the header alone, before the payload arrives.
        let mut hdr = masked(op::BINARY, true, &[0u8; 200]);
        hdr.truncate(8);
        assert_eq!(check(hdr, 100), Some(code::TOO_BIG));
        // Fragments adding up past the bound.
        let mut w = masked(op::BINARY, false, &[1u8; 60]);
        w.extend(masked(op::CONT, false, &[1u8; 60]));
        assert_eq!(check(w, 100), Some(code::TOO_BIG));
        // Fragmented forever with empty frames.
        let mut w = masked(op::BINARY, false, b"x");
        for _ in 0..MAX_FRAGMENTS {
            w.extend(masked(op::CONT, false, b""));
        }
        assert_eq!(check(w, 100), Some(code::POLICY));
        // Bad UTF-8, long ping, orphan continuation, reserved bits, unknown opcode.
        assert_eq!(
            check(masked(op::TEXT, true, &[0xff]), 100),
            Some(code::INVALID)
        );
        assert_eq!(
            check(masked(op::PING, true, &[0u8; 126]), 200),
            Some(code::PROTOCOL)
        );
        assert_eq!(
            check(masked(op::CONT, true, b"x"), 100),
            Some(code::PROTOCOL)
        );
        let mut rsv = masked(op::BINARY, true, b"x");
        rsv[0] |= 0x40;
        assert_eq!(check(rsv, 100), Some(code::PROTOCOL));
        assert_eq!(check(masked(0x3, true, b""), 100), Some(code::PROTOCOL));
        let mut close = masked(op::CLOSE, true, &[0x03, 0xe8, b'b', b'y']);
        let mut d = Decoder::new(100);
        let mut input = BytesMut::from(&close[..]);
        assert_eq!(
            d.decode(&mut input).expect("close"),
            Some(Event::Close(1000, "by".into()))
        );
        close = masked(op::CLOSE, true, &[0x03]);
        assert_eq!(check(close, 100), Some(code::PROTOCOL));
        // Codes a peer may not send (they were echoed back).
        for c in [999u16, 1005, 1006, 1015, 2999, 5000] {
            let close = masked(op::CLOSE, true, &c.to_be_bytes());
            assert_eq!(check(close, 100), Some(code::PROTOCOL), "{c}");
        }
        for c in [1000u16, 1001, 1011, 3000, 4999] {
            let close = masked(op::CLOSE, true, &c.to_be_bytes());
            let mut d = Decoder::new(100);
            let mut input = BytesMut::from(&close[..]);
            assert_eq!(
                d.decode(&mut input).expect("close"),
                Some(Event::Close(c, String::new())),
                "{c}"
            );
        }
    }

    #[test]
    fn server_frames_and_close_reason_cut() {
        let mut out = BytesMut::new();
        put_frame(op::BINARY, &[1; 300], &mut out);
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
        let mut out = BytesMut::new();
        put_close(code::POLICY, &"é".repeat(100), &mut out);
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= 125);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
