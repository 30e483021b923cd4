//! The little of RESP2 the load engine needs to drive Redis pub/sub: commands
//! out (arrays of binary-safe bulk strings), replies and pushes in, parsed
//! incrementally from a buffer that may end anywhere (a partial frame is
//! "not yet", never an error). Also the load engine's Redis driver (pub/sub,
//! RESP2 over plain TCP): its handshake and what it reads.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::engine::{read_more, Conn, Item};

/// Longest bulk string accepted (Redis' own `proto-max-bulk-len` default).
const MAX_BULK: i64 = 512 * 1024 * 1024;
/// Most elements of an array accepted (pub/sub pushes have 3 or 4).
const MAX_ARRAY: i64 = 1 << 20;

/// One reply or push, as the load engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resp<'a> {
    /// A `message` push: a payload published to a subscribed channel.
    Message {
        /// The channel.
        channel: &'a [u8],
        /// The payload (empty: the sender's end marker).
        payload: &'a [u8],
    },
    /// A `subscribe` confirmation: the channel, and how many channels the
    /// connection is subscribed to now.
    Subscribed {
        /// The channel.
        channel: &'a [u8],
        /// Subscriptions of the connection.
        count: i64,
    },
    /// An integer reply (PUBLISH: how many subscribers got the message).
    Int(i64),
    /// A simple string (`+PONG`, `+OK`).
    Simple(&'a [u8]),
    /// An error reply, without its `-`.
    Error(&'a [u8]),
    /// Anything else (other pushes, bulk replies, nulls).
    Other,
}

/// One element of an array (RESP2 pub/sub never nests arrays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    /// `None`: the null bulk string.
    Bulk(Option<&'a [u8]>),
}

/// Parses the reply or push at the start of `buf`: `Ok(None)` if it is not
/// complete yet, otherwise it and how many bytes it took.
pub(super) fn next(buf: &[u8]) -> Result<Option<(Resp<'_>, usize)>, String> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != b'*' {
        return Ok(scalar(buf, 0)?.map(|(s, n)| {
            let r = match s {
                Scalar::Simple(v) => Resp::Simple(v),
                Scalar::Error(e) => Resp::Error(e),
                Scalar::Int(i) => Resp::Int(i),
                Scalar::Bulk(_) => Resp::Other,
            };
            (r, n)
        }));
    }
    let Some((head, mut pos)) = line(buf, 0) else {
        return Ok(None);
    };
    let count = int(&head[1..])?;
    if count == -1 {
        return Ok(Some((Resp::Other, pos)));
    }
    if !(0..=MAX_ARRAY).contains(&count) {
        return Err(format!("bad RESP array length {count}"));
    }
    let mut items = [None; 3];
    for k in 0..count as usize {
        if buf.get(pos) == Some(&b'*') {
            return Err("unexpected nested RESP array".into());
        }
        let Some((s, n)) = scalar(buf, pos)? else {
            return Ok(None);
        };
        if let Some(slot) = items.get_mut(k) {
            *slot = Some(s);
        }
        pos = n;
    }
    let r = match (count, items) {
        (
            3,
            [Some(Scalar::Bulk(Some(b"message"))), Some(Scalar::Bulk(Some(channel))), Some(Scalar::Bulk(Some(payload)))],
        ) => Resp::Message { channel, payload },
        (
            3,
            [Some(Scalar::Bulk(Some(b"subscribe"))), Some(Scalar::Bulk(Some(channel))), Some(Scalar::Int(count))],
        ) => Resp::Subscribed { channel, count },
        _ => Resp::Other,
    };
    Ok(Some((r, pos)))
}

/// The scalar at `buf[pos..]`, and the position just past it.
fn scalar(buf: &[u8], pos: usize) -> Result<Option<(Scalar<'_>, usize)>, String> {
    let Some((l, next)) = line(buf, pos) else {
        return Ok(None);
    };
    let (kind, rest) = match l.split_first() {
        Some((&k, rest)) => (k, rest),
        None => return Err("empty RESP line".into()),
    };
    let s = match kind {
        b'+' => Scalar::Simple(rest),
        b'-' => Scalar::Error(rest),
        b':' => Scalar::Int(int(rest)?),
        b'$' => {
            let len = int(rest)?;
            if len == -1 {
                return Ok(Some((Scalar::Bulk(None), next)));
            }
            if !(0..=MAX_BULK).contains(&len) {
                return Err(format!("bad RESP bulk length {len}"));
            }
            let end = next + len as usize;
            let Some(tail) = buf.get(end..end + 2) else {
                return Ok(None);
            };
            if tail != b"\r\n" {
                return Err("RESP bulk string not followed by CRLF".into());
            }
            return Ok(Some((Scalar::Bulk(Some(&buf[next..end])), end + 2)));
        }
        other => {
            return Err(format!(
                "not a RESP2 reply (starts with {:?}): is this a Redis server?",
                char::from(other)
            ))
        }
    };
    Ok(Some((s, next)))
}

/// The line at `buf[pos..]` without its CRLF, and the position past the CRLF.
fn line(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let i = crlf(rest)?;
    Some((&rest[..i], pos + i + 2))
}

/// Where the first CRLF of `b` starts.
#[inline]
pub(super) fn crlf(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\r', &b[from..]) {
        let i = from + i;
        match b.get(i + 1) {
            Some(b'\n') => return Some(i),
            Some(_) => from = i + 1,
            None => return None,
        }
    }
    None
}

/// A RESP integer (`-?[0-9]+`).
fn int(digits: &[u8]) -> Result<i64, String> {
    let bad = || format!("bad RESP integer {:?}", String::from_utf8_lossy(digits));
    let (neg, ds) = match digits.split_first() {
        Some((b'-', ds)) => (true, ds),
        _ => (false, digits),
    };
    if ds.is_empty() {
        return Err(bad());
    }
    let mut v: i64 = 0;
    for &d in ds {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(d - b'0')))
            .ok_or_else(bad)?;
    }
    Ok(if neg { -v } else { v })
}

/// Appends `n` in decimal.
fn put_decimal(out: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends a bulk string's header (`$<len>\r\n`); the string and a CRLF follow.
fn put_bulk_header(out: &mut BytesMut, len: usize) {
    out.extend_from_slice(b"$");
    put_decimal(out, len);
    out.extend_from_slice(b"\r\n");
}

/// Appends a command: an array of bulk strings.
pub(super) fn put_command(out: &mut BytesMut, args: &[&[u8]]) {
    out.extend_from_slice(b"*");
    put_decimal(out, args.len());
    out.extend_from_slice(b"\r\n");
    for a in args {
        put_bulk_header(out, a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `PUBLISH <channel> <payload>` up to the payload: the caller appends
/// `len` payload bytes, then [`END`].
pub(super) fn put_publish_header(out: &mut BytesMut, channel: &[u8], len: usize) {
    out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
    put_bulk_header(out, channel.len());
    out.extend_from_slice(channel);
    out.extend_from_slice(b"\r\n");
    put_bulk_header(out, len);
}

/// What follows the payload of [`put_publish_header`].
pub(super) const END: &[u8] = b"\r\n";

// ------------------------------------------------------------ the Redis driver

/// Redis handshake: a receiver SUBSCRIBEs and waits for the confirmation (only
/// then is it sure to get what is published next); a sender PINGs and waits for
/// the PONG (proving it talks to a Redis server). With `reply_off` a sender
/// then turns replies off (`CLIENT REPLY OFF`: nothing is answered from then on).
pub(super) async fn connect(
    addr: SocketAddr,
    subscribe: Option<&str>,
    reply_off: bool,
) -> Result<Conn, String> {
    let mut s = TcpStream::connect_addr(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let mut hello = BytesMut::new();
    match subscribe {
        Some(channel) => put_command(&mut hello, &[b"SUBSCRIBE", channel.as_bytes()]),
        None => {
            put_command(&mut hello, &[b"PING"]);
            if reply_off {
                put_command(&mut hello, &[b"CLIENT", b"REPLY", b"OFF"]);
            }
        }
    }
    let (r, _) = s.write_all(hello).await;
    r.map_err(|e| e.to_string())?;
    let what = match subscribe {
        Some(channel) => format!("Redis SUBSCRIBE {channel}"),
        None => "Redis PING".to_owned(),
    };
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        // (bytes used, whether it was the answer), or not complete yet.
        let step = match next(&buf).map_err(|e| format!("{what}: {e}"))? {
            None => None,
            Some((Resp::Error(e), _)) => {
                return Err(format!("{what}: {}", String::from_utf8_lossy(e)))
            }
            Some((Resp::Subscribed { channel, .. }, n)) => {
                Some((n, subscribe.is_some_and(|c| c.as_bytes() == channel)))
            }
            Some((Resp::Simple(b"PONG"), n)) => Some((n, subscribe.is_none())),
            Some((_, n)) => Some((n, false)),
        };
        match step {
            Some((n, answered)) => {
                buf.advance(n);
                if answered {
                    return Ok(Conn::plain(s, buf));
                }
            }
            None => buf = read_more(&mut s, buf, &what).await?,
        }
    }
}

/// Scans the reply or push at `*pos` (and moves past it): `Ok(None)` if it is
/// not complete. An error reply fails the run.
#[inline]
pub(super) fn next_item<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<Item<'a>>, String> {
    let rest = &buf[*pos..];
    if let Some(m) = rest.strip_prefix(MESSAGE) {
        // The hot path, a `message` push: `$<n>\r\n<channel>\r\n$<n>\r\n<payload>\r\n`.
        if let Some((payload, n)) = message_tail(m) {
            *pos += MESSAGE.len() + n;
            return Ok(Some(Item::Msg(payload, 0)));
        }
    }
    let Some((r, n)) = next(rest)? else {
        return Ok(None);
    };
    *pos += n;
    match r {
        Resp::Message { payload, .. } => Ok(Some(Item::Msg(payload, 0))),
        Resp::Int(_) => Ok(Some(Item::Published)),
        Resp::Error(e) => Err(format!("redis: {}", String::from_utf8_lossy(e))),
        _ => Ok(Some(Item::Control)),
    }
}

/// How a `message` push starts.
const MESSAGE: &[u8] = b"*3\r\n$7\r\nmessage\r\n";

/// The payload of a `message` push after [`MESSAGE`], and the bytes it took:
/// `None` if anything is unusual or incomplete (the general parser decides).
#[inline]
fn message_tail(b: &[u8]) -> Option<(&[u8], usize)> {
    let (clen, p) = bulk_len(b, 0)?;
    let p = p + clen;
    if b.get(p..p + 2)? != b"\r\n" {
        return None;
    }
    let (plen, q) = bulk_len(b, p + 2)?;
    let end = q + plen;
    if b.get(end..end + 2)? != b"\r\n" {
        return None;
    }
    Some((&b[q..end], end + 2))
}

/// A short bulk header `$<digits>\r\n` at `b[at..]`: its length and where the
/// string starts.
#[inline]
fn bulk_len(b: &[u8], at: usize) -> Option<(usize, usize)> {
    if *b.get(at)? != b'$' {
        return None;
    }
    let mut n = 0usize;
    let mut i = at + 1;
    loop {
        match *b.get(i)? {
            d @ b'0'..=b'9' if i - at <= 10 => n = n * 10 + usize::from(d - b'0'),
            b'\r' if i > at + 1 => break,
            _ => return None,
        }
        i += 1;
    }
    (*b.get(i + 1)? == b'\n').then_some((n, i + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owned copy of a parsed item, to compare across buffers.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Message(Vec<u8>, Vec<u8>),
        Subscribed(Vec<u8>, i64),
        Int(i64),
        Simple(Vec<u8>),
        Error(Vec<u8>),
        Other,
    }

    fn owned(r: Resp<'_>) -> Owned {
        match r {
            Resp::Message { channel, payload } => Owned::Message(channel.into(), payload.into()),
            Resp::Subscribed { channel, count } => Owned::Subscribed(channel.into(), count),
            Resp::Int(i) => Owned::Int(i),
            Resp::Simple(s) => Owned::Simple(s.into()),
            Resp::Error(e) => Owned::Error(e.into()),
            Resp::Other => Owned::Other,
        }
    }

    /// Parses every complete item of `buf`, returning them and the bytes used.
    fn parse_all(buf: &[u8]) -> Result<(Vec<Owned>, usize), String> {
        let mut pos = 0;
        let mut items = Vec::new();
        while let Some((r, n)) = next(&buf[pos..])? {
            assert!(n > 0, "an item takes bytes");
            items.push(owned(r));
            pos += n;
        }
        Ok((items, pos))
    }

    fn message(channel: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_command(&mut b, &[b"message", channel, payload]);
        b.to_vec()
    }

    /// A stream a subscriber (and a publisher) may see, with binary payloads
    /// holding CRLFs, RESP markers and an empty end marker.
    fn stream() -> (Vec<u8>, Vec<Owned>) {
        let payload: Vec<u8> = (0u8..=255).chain(*b"\r\n$3\r\n*1\r\n").collect();
        let mut b = Vec::new();
        let mut want = Vec::new();
        b.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$5\r\nroom0\r\n:1\r\n");
        want.push(Owned::Subscribed(b"room0".to_vec(), 1));
        b.extend(message(b"room0", &payload));
        want.push(Owned::Message(b"room0".to_vec(), payload.clone()));
        b.extend(message(b"room0", b"\r\n"));
        want.push(Owned::Message(b"room0".to_vec(), b"\r\n".to_vec()));
        b.extend_from_slice(b":64\r\n:0\r\n:-3\r\n+PONG\r\n");
        want.extend([
            Owned::Int(64),
            Owned::Int(0),
            Owned::Int(-3),
            Owned::Simple(b"PONG".to_vec()),
        ]);
        b.extend_from_slice(b"$-1\r\n*-1\r\n$3\r\nabc\r\n");
        want.extend([Owned::Other, Owned::Other, Owned::Other]);
        b.extend_from_slice(b"*3\r\n$11\r\nunsubscribe\r\n$5\r\nroom0\r\n:0\r\n");
        want.push(Owned::Other);
        b.extend_from_slice(b"*4\r\n$8\r\npmessage\r\n$2\r\nr*\r\n$2\r\nr1\r\n$1\r\nx\r\n");
        want.push(Owned::Other);
        b.extend_from_slice(b"-ERR unknown command\r\n");
        want.push(Owned::Error(b"ERR unknown command".to_vec()));
        b.extend(message(b"room0", b""));
        want.push(Owned::Message(b"room0".to_vec(), Vec::new()));
        (b, want)
    }

    #[test]
    fn a_whole_stream_parses_into_its_items() {
        let (b, want) = stream();
        let (items, used) = parse_all(&b).expect("parses");
        assert_eq!(items, want);
        assert_eq!(used, b.len());
    }

    #[test]
    fn a_frame_split_at_any_byte_waits_for_the_rest() {
        let (b, want) = stream();
        for split in 0..=b.len() {
            // First read: everything up to `split`; what is complete comes out,
            // a partial frame stays in the buffer untouched.
            let (mut items, used) = parse_all(&b[..split]).expect("a prefix never fails");
            assert!(used <= split);
            // Second read: the rest arrives behind the leftover.
            let mut buf = b[used..split].to_vec();
            buf.extend_from_slice(&b[split..]);
            let (more, used2) = parse_all(&buf).expect("parses");
            assert_eq!(used2, buf.len(), "split at {split}");
            items.extend(more);
            assert_eq!(items, want, "split at {split}");
        }
    }

    #[test]
    fn a_stream_fed_one_byte_at_a_time_parses_the_same() {
        let (b, want) = stream();
        let mut buf = Vec::new();
        let mut items = Vec::new();
        for &byte in &b {
            buf.push(byte);
            let (got, used) = parse_all(&buf).expect("a prefix never fails");
            items.extend(got);
            buf.drain(..used);
        }
        assert!(buf.is_empty());
        assert_eq!(items, want);
    }

    #[test]
    fn every_proper_prefix_of_a_message_is_incomplete() {
        let m = message(b"load1-r0-0", &[b'\r'; 40]);
        for k in 0..m.len() {
            assert_eq!(next(&m[..k]), Ok(None), "prefix of {k} bytes");
        }
        assert_eq!(
            next(&m),
            Ok(Some((
                Resp::Message {
                    channel: b"load1-r0-0",
                    payload: &[b'\r'; 40]
                },
                m.len()
            )))
        );
    }

    #[test]
    fn the_message_fast_path_agrees_with_the_parser() {
        use super::super::engine::Item;
        for payload in [&b""[..], b"x", b"\r\n$3\r\n", &[9u8; 1500]] {
            let mut m = message(b"load1-r0-0", payload);
            m.extend_from_slice(b":1\r\n");
            let one = m.len() - 4;
            for k in 0..one {
                assert!(matches!(next_item(&m[..k], &mut 0), Ok(None)), "prefix {k}");
            }
            let mut pos = 0;
            match next_item(&m, &mut pos) {
                Ok(Some(Item::Msg(p, 0))) => assert_eq!(p, payload),
                _ => panic!("a message"),
            }
            assert_eq!(pos, one);
            assert!(matches!(next_item(&m, &mut pos), Ok(Some(Item::Published))));
        }
        // Not a plain message push: the general parser's verdict stands.
        let bad = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhiXY";
        assert!(next_item(bad, &mut 0).is_err());
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            &b"*3\r\n$7\r\nmessage\r\n$2\r\nab\r\n$3\r\nxyzQQ"[..],
            b":12a\r\n",
            b":\r\n",
            b":99999999999999999999\r\n",
            b"$-2\r\n",
            b"$999999999999\r\n",
            b"*-5\r\n",
            b"*2\r\n*1\r\n:1\r\n",
            b"\r\n",
            b"INFO {\"server_id\":\"x\"}\r\n",
        ] {
            assert!(
                next(bad).is_err(),
                "{:?} should not parse",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut b = BytesMut::new();
        put_command(&mut b, &[b"SUBSCRIBE", b"load1-room0"]);
        assert_eq!(&b[..], b"*2\r\n$9\r\nSUBSCRIBE\r\n$11\r\nload1-room0\r\n");
        b.clear();
        put_command(&mut b, &[b"PING"]);
        assert_eq!(&b[..], b"*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn a_publish_header_payload_and_end_make_the_publish_command() {
        for payload in [&b""[..], b"x", &[0u8, 13, 10, b'$', 255], &[7u8; 1234]] {
            let mut b = BytesMut::new();
            put_publish_header(&mut b, b"load1-r3-0", payload.len());
            b.extend_from_slice(payload);
            b.extend_from_slice(END);
            let mut want = BytesMut::new();
            put_command(&mut want, &[b"PUBLISH", b"load1-r3-0", payload]);
            assert_eq!(b, want);
        }
        let mut b = BytesMut::new();
        put_publish_header(&mut b, b"c", 0);
        b.extend_from_slice(END);
        assert_eq!(&b[..], b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$0\r\n\r\n");
    }

    #[test]
    fn decimals_and_integers_round_trip() {
        for n in [0usize, 1, 9, 10, 64, 999, 1000, 123_456_789, usize::MAX] {
            let mut b = BytesMut::new();
            put_decimal(&mut b, n);
            assert_eq!(&b[..], n.to_string().as_bytes());
            if let Ok(i) = i64::try_from(n) {
                assert_eq!(int(&b), Ok(i));
            }
        }
        assert_eq!(int(b"-1"), Ok(-1));
        assert_eq!(int(b"-9223372036854775807"), Ok(-i64::MAX));
    }
}
