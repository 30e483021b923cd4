//! The load engine against NATS (core protocol, for comparisons): one subject
//! per receiver, PUB / SUB over plain TCP.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::engine::{read_more, Conn, Item};

/// NATS handshake: INFO, CONNECT, optional SUB, then PING until PONG (which
/// proves the subscription is registered).
pub(super) async fn connect(addr: SocketAddr, subscribe: Option<&str>) -> Result<Conn, String> {
    let mut s = TcpStream::connect_addr(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let mut hello =
        String::from("CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":true}\r\n");
    if let Some(subj) = subscribe {
        hello.push_str(&format!("SUB {subj} 1\r\n"));
    }
    hello.push_str("PING\r\n");
    let (r, _) = s.write_all(hello.into_bytes()).await;
    r.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        if let Some(i) = buf.windows(6).position(|w| w == b"PONG\r\n") {
            buf.advance(i + 6);
            return Ok(Conn::plain(s, buf));
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"-ERR") {
            return Err(String::from_utf8_lossy(&buf[i..]).into_owned());
        }
        buf = read_more(&mut s, buf, "NATS handshake").await?;
    }
}

/// Appends `PUB <subject> <len>`; `len` payload bytes and [`END`] follow.
#[inline]
pub(super) fn begin_message(out: &mut BytesMut, subject: &str, len: usize) {
    use std::fmt::Write as _;
    let _ = write!(NatsLine(out), "PUB {subject} {len}\r\n");
}

/// What follows a payload.
pub(super) const END: &[u8] = b"\r\n";

struct NatsLine<'a>(&'a mut BytesMut);

impl std::fmt::Write for NatsLine<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Scans the line (and payload) at `*pos` (and moves past it): `Ok(None)` if
/// it is not complete. PINGs are answered into `out`; `-ERR` fails the run.
#[inline]
pub(super) fn next_item<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    out: &mut BytesMut,
) -> Result<Option<Item<'a>>, String> {
    let rest = &buf[*pos..];
    let Some(eol) = super::resp::crlf(rest) else {
        return Ok(None);
    };
    let line = &rest[..eol];
    if let Some(hdr) = line.strip_prefix(b"MSG ") {
        let len = msg_len(hdr)
            .ok_or_else(|| format!("bad MSG line {:?}", String::from_utf8_lossy(line)))?;
        let total = eol + 2 + len + 2;
        if rest.len() < total {
            return Ok(None);
        }
        *pos += total;
        return Ok(Some(Item::Msg(&rest[eol + 2..eol + 2 + len], 0)));
    }
    *pos += eol + 2;
    if line == b"PING" {
        out.extend_from_slice(b"PONG\r\n");
    } else if line.starts_with(b"-ERR") {
        return Err(String::from_utf8_lossy(line).into_owned());
    }
    Ok(Some(Item::Control))
}

/// The payload length of a MSG line (its last token), without allocating.
#[inline]
fn msg_len(hdr: &[u8]) -> Option<usize> {
    let digits = &hdr[memchr::memrchr(b' ', hdr)? + 1..];
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    let mut n = 0usize;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + usize::from(d - b'0');
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_frames_parse_split_anywhere_and_pings_are_answered() {
        let mut b = Vec::new();
        b.extend_from_slice(b"MSG load1-r0-0 1 5\r\nhe\r\no\r\n");
        b.extend_from_slice(b"PING\r\n");
        b.extend_from_slice(b"MSG s 1 reply.to 0\r\n\r\n");
        b.extend_from_slice(b"+OK\r\n");
        for split in 0..=b.len() {
            let mut out = BytesMut::new();
            let mut got = Vec::new();
            let mut buf = b[..split].to_vec();
            let mut pos = 0;
            loop {
                match next_item(&buf, &mut pos, &mut out).expect("parses") {
                    Some(Item::Msg(p, _)) => got.push(String::from_utf8_lossy(p).into_owned()),
                    Some(_) => got.push("-".into()),
                    None => break,
                }
            }
            buf.drain(..pos);
            buf.extend_from_slice(&b[split..]);
            let mut pos = 0;
            while let Some(i) = next_item(&buf, &mut pos, &mut out).expect("parses") {
                got.push(match i {
                    Item::Msg(p, _) => String::from_utf8_lossy(p).into_owned(),
                    _ => "-".into(),
                });
            }
            assert_eq!(pos, buf.len(), "split at {split}");
            assert_eq!(got, ["he\r\no", "-", "", "-"], "split at {split}");
            assert_eq!(&out[..], b"PONG\r\n");
        }
        let mut pos = 0;
        let mut out = BytesMut::new();
        assert!(next_item(b"MSG a 1 x\r\n", &mut pos, &mut out).is_err());
        assert!(next_item(b"-ERR 'Slow Consumer'\r\n", &mut 0, &mut out).is_err());
    }
}
