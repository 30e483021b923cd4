//! Checks run by the fuzz targets (`fuzz/fuzz_targets/`), and by the tests that replay
//! the committed corpora (`fuzz/corpus/`) with the stable toolchain.
//!
//! Compiled for tests and with the `fuzzing` feature (which the fuzz crate enables);
//! every function panics when the code under test misbehaves, which is what libFuzzer
//! reports as a crash.

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::codec::{frame_bytes_needed, frames, next_frame, split_frames, FrameError};
use crate::fast::{
    deliver_seq_payload, parse_client, parse_client_at, parse_server, put_deliver_header,
    put_deliver_header_bytes, DeliverStamp, Inbound, ServerView,
};
use crate::v1::{client_frame, server_frame, ClientFrame, ServerFrame};

/// The `frame_decode` target: `data` is checked three ways.
///
/// 1. As one client frame body: the fast parser ([`parse_client`], and [`parse_client_at`]
///    on the same body inside a bigger chunk) and prost (`ClientFrame::decode`) agree:
///    both refuse it, or both accept it with the same content. [`parse_server`] does not
///    panic and agrees with prost on every Deliver prost accepts; [`deliver_seq_payload`]
///    answers only where [`parse_server`] reads a Deliver, with its seq and payload.
/// 2. As a byte stream (after a two-byte header choosing the frame size limit and where
///    the stream is cut): [`next_frame`] and [`split_frames`]/[`frames`] fed the stream in
///    pieces find the same frames, and stop at the same error, as one [`next_frame`] pass
///    over the whole stream; nothing panics; [`frame_bytes_needed`] is exact.
/// 3. Every frame found in the stream is checked as in 1, in place in its chunk.
pub fn check_frame(data: &[u8]) {
    check_body(data);
    check_stream(data);
}

/// Part 1 of [`check_frame`]: the fast parser and prost agree on one frame body.
pub fn check_body(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    let fast = parse_client(body.clone());
    assert_agree(&fast, &body, &body);
    // The same body inside a chunk, between other bytes (as `split_frames` hands it out):
    // nothing outside the range is read, and the result is the same.
    let mut chunk = Vec::with_capacity(data.len() + 8);
    chunk.extend_from_slice(&[0x12, 0xff, 0xff, 0x0a]);
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(&[0x12, 0x7f, 0x08, 0x80]);
    let chunk = Bytes::from(chunk);
    let at = parse_client_at(&chunk, 4..4 + data.len());
    assert_same_result(&fast, &at, data);
    assert_agree(&at, &body, &chunk);
    check_server_body(data);
}

/// The fast server-frame parser never panics, and reads every Deliver prost accepts as
/// prost does (it may take other frames for Delivers: it is the client's parser of the
/// router's own output, which validates nothing it does not use).
fn check_server_body(data: &[u8]) {
    let fast = parse_server(data);
    if let Some((seq, payload)) = deliver_seq_payload(data) {
        match fast {
            Ok(ServerView::Deliver {
                seq: s, payload: p, ..
            }) => assert!(
                (s, p) == (seq, payload),
                "deliver_seq_payload and parse_server disagree on {data:02x?}"
            ),
            _ => panic!("deliver_seq_payload reads what parse_server does not: {data:02x?}"),
        }
    }
    let Ok(ServerFrame {
        kind: Some(server_frame::Kind::Deliver(d)),
    }) = ServerFrame::decode(data)
    else {
        return;
    };
    // The two header writers agree on whatever a Deliver holds.
    let stamp = DeliverStamp {
        seq: d.seq,
        from_user: d.from_user.as_bytes(),
        to_room: d.to_room.as_bytes(),
        server_ts_us: d.server_ts_us,
        msg_id: d.msg_id,
    };
    let (mut generic, mut in_place) = (BytesMut::new(), BytesMut::new());
    put_deliver_header(&mut generic, &stamp, d.payload.len());
    put_deliver_header_bytes(&mut in_place, &stamp, d.payload.len());
    assert_eq!(
        generic, in_place,
        "the header writers disagree on {stamp:?}"
    );
    match fast {
        Ok(ServerView::Deliver {
            seq,
            from_user,
            to_room,
            payload,
            server_ts_us,
            msg_id,
        }) => {
            assert_eq!(
                (seq, from_user, to_room, payload, server_ts_us, msg_id),
                (
                    d.seq,
                    d.from_user.as_bytes(),
                    d.to_room.as_bytes(),
                    &d.payload[..],
                    d.server_ts_us,
                    d.msg_id
                ),
                "parse_server and prost disagree on {data:02x?}"
            );
        }
        Ok(ServerView::Other) => {}
        Err(e) => panic!("parse_server refuses a Deliver prost accepts ({e}): {data:02x?}"),
    }
}

/// Panics unless two parses of the same body gave the same outcome.
fn assert_same_result(
    a: &Result<Inbound, FrameError>,
    b: &Result<Inbound, FrameError>,
    data: &[u8],
) {
    match (a, b) {
        (Ok(x), Ok(y)) => assert_eq!(
            x, y,
            "parse_client and parse_client_at differ on {data:02x?}"
        ),
        (Err(_), Err(_)) => {}
        _ => panic!("parse_client {a:?} but parse_client_at {b:?} on {data:02x?}"),
    }
}

/// Panics unless the fast parse `fast` of `body` agrees with prost's decode of it. A
/// Send's payload must be a slice of `chunk` (the buffer the fast parser was given): no copy.
pub fn assert_agree(fast: &Result<Inbound, FrameError>, body: &Bytes, chunk: &Bytes) {
    let prost = ClientFrame::decode(body.clone());
    match (fast, &prost) {
        (Err(_), Err(_)) => {}
        (Ok(Inbound::Empty), Ok(ClientFrame { kind: None })) => {}
        (
            Ok(Inbound::Send(v)),
            Ok(ClientFrame {
                kind: Some(client_frame::Kind::Send(s)),
            }),
        ) => {
            assert_eq!(
                (
                    v.request_id,
                    &v.to_user[..],
                    &v.to_room[..],
                    &v.payload[..],
                    v.want_result,
                    v.msg_id
                ),
                (
                    s.request_id,
                    s.to_user.as_bytes(),
                    s.to_room.as_bytes(),
                    &s.payload[..],
                    s.want_result,
                    s.msg_id
                ),
                "fast parser and prost disagree on {:02x?}",
                &body[..]
            );
            assert_eq!(v.to_user_str().as_bytes(), &v.to_user[..]);
            assert_eq!(v.to_room_str().as_bytes(), &v.to_room[..]);
            if !v.payload.is_empty() {
                let (p, c) = (v.payload.as_ptr() as usize, chunk.as_ptr() as usize);
                assert!(
                    p >= c && p + v.payload.len() <= c + chunk.len(),
                    "the payload was copied out of the read buffer"
                );
            }
        }
        (Ok(Inbound::Other(k)), Ok(ClientFrame { kind: Some(k2) })) => {
            assert!(
                !matches!(k, client_frame::Kind::Send(_)),
                "a Send came back as Inbound::Other"
            );
            assert_eq!(
                k,
                k2,
                "fast parser and prost disagree on {:02x?}",
                &body[..]
            );
        }
        _ => panic!(
            "fast parser {fast:?} but prost {prost:?} on {:02x?}",
            &body[..]
        ),
    }
}

/// The frame size limits the stream check picks from (by the first byte of the input).
const MAX_FRAMES: [usize; 6] = [0, 1, 5, 300, crate::DEFAULT_MAX_FRAME_BYTES, usize::MAX];

/// What a pass over a stream found: the frame bodies, then the error that ended it, if
/// any (bytes of an incomplete frame left over are not an error).
#[derive(Debug, PartialEq, Eq)]
struct Found {
    bodies: Vec<Bytes>,
    error: Option<FrameError>,
}

/// Part 2 and 3 of [`check_frame`]: `data[0]` picks the frame size limit, `data[1]`
/// seeds the cut points, the rest is the stream.
pub fn check_stream(data: &[u8]) {
    let [sel, seed, stream @ ..] = data else {
        return;
    };
    let max = MAX_FRAMES[usize::from(*sel) % MAX_FRAMES.len()];
    let whole = one_shot(stream, max);
    let cuts = cut_points(stream.len(), *seed, sel / 8);
    assert_eq!(
        by_next_frame(stream, &cuts, max),
        whole,
        "next_frame fed in pieces (cut at {cuts:?}, max {max}) differs from one pass"
    );
    assert_eq!(
        by_split_frames(stream, &cuts, max),
        whole,
        "split_frames fed in pieces (cut at {cuts:?}, max {max}) differs from next_frame"
    );
    // One split_frames call over everything: the frames as one chunk, each checked in place.
    let mut buf = BytesMut::from(stream);
    let (chunk, _) = split_frames(&mut buf, max);
    for range in frames(&chunk) {
        let body = chunk.slice(range.clone());
        let fast = parse_client_at(&chunk, range);
        assert_same_result(&parse_client(body.clone()), &fast, &body);
        assert_agree(&fast, &body, &chunk);
    }
}

/// Cut points for feeding `len` bytes in pieces: a few small pieces (0 to 15 bytes,
/// empty pieces included) chosen by `seed`, then the rest in pieces of `stride`.
fn cut_points(len: usize, seed: u8, stride: u8) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut x = u32::from(seed) | 0x100;
    let mut at = 0usize;
    while at < len && cuts.len() < 16 {
        // xorshift: small, deterministic, no dependency.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        at = (at + (x % 16) as usize).min(len);
        cuts.push(at);
    }
    let stride = usize::from(stride).max(1);
    while at < len {
        at = (at + stride).min(len);
        cuts.push(at);
    }
    cuts
}

/// The reference: the whole stream in one buffer, [`next_frame`] until it stops.
fn one_shot(stream: &[u8], max: usize) -> Found {
    let mut buf = BytesMut::from(stream);
    let mut bodies = Vec::new();
    loop {
        match next_frame(&mut buf, max) {
            Ok(Some(b)) => bodies.push(b),
            Ok(None) => {
                check_needed(&buf, max);
                return Found {
                    bodies,
                    error: None,
                };
            }
            Err(e) => {
                return Found {
                    bodies,
                    error: Some(e),
                }
            }
        }
    }
}

/// `buf` holds no complete frame: [`frame_bytes_needed`] says how far the next one is.
fn check_needed(buf: &BytesMut, max: usize) {
    let Some(need) = frame_bytes_needed(buf) else {
        return;
    };
    assert!(need > 0, "a complete frame was left in the buffer");
    // Adding exactly `need` bytes completes the frame (when it is under the limit).
    if need <= 1 << 16 {
        let mut more = buf.clone();
        more.resize(buf.len() + need, 0);
        match next_frame(&mut more, max) {
            Ok(Some(_)) => assert!(more.is_empty(), "frame_bytes_needed was too small"),
            Ok(None) => panic!("frame_bytes_needed said {need} bytes but they were not enough"),
            Err(_) => {}
        }
    }
}

/// The stream fed to a `BytesMut` in pieces, [`next_frame`] after each piece.
fn by_next_frame(stream: &[u8], cuts: &[usize], max: usize) -> Found {
    let mut buf = BytesMut::new();
    let mut bodies = Vec::new();
    let mut from = 0;
    for &to in cuts {
        buf.extend_from_slice(&stream[from..to]);
        from = to;
        loop {
            let before = buf.len();
            match next_frame(&mut buf, max) {
                Ok(Some(b)) => bodies.push(b),
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                    break;
                }
                Err(e) => {
                    return Found {
                        bodies,
                        error: Some(e),
                    }
                }
            }
        }
    }
    Found {
        bodies,
        error: None,
    }
}

/// The stream fed in pieces, [`split_frames`] after each piece and [`frames`] over each chunk.
fn by_split_frames(stream: &[u8], cuts: &[usize], max: usize) -> Found {
    let mut buf = BytesMut::new();
    let mut bodies = Vec::new();
    let mut from = 0;
    for &to in cuts {
        buf.extend_from_slice(&stream[from..to]);
        from = to;
        let (chunk, err) = split_frames(&mut buf, max);
        let mut end = 0;
        for range in frames(&chunk) {
            end = range.end;
            bodies.push(chunk.slice(range));
        }
        assert_eq!(end, chunk.len(), "frames() did not cover its chunk");
        if err.is_some() {
            return Found { bodies, error: err };
        }
    }
    Found {
        bodies,
        error: None,
    }
}

/// The `frame_json` target: `data` as the protobuf JSON text of a client frame and of a
/// server frame ([`crate::json`]). Nothing panics; a text that parses goes back to JSON
/// and parses to the same frame, and through the binary encoding to the same frame too.
pub fn check_json(data: &[u8]) {
    use crate::json::*;
    check_json_as(data, client_frame_from_json, client_frame_to_json);
    check_json_as(data, server_frame_from_json, server_frame_to_json);
}

fn check_json_as<F>(
    data: &[u8],
    from: fn(&[u8]) -> Result<F, crate::json::JsonError>,
    to: fn(&F) -> String,
) where
    F: Message + Default + PartialEq + std::fmt::Debug,
{
    if let Ok(f) = from(data) {
        let text = to(&f);
        assert_eq!(from(text.as_bytes()).as_ref(), Ok(&f), "{text}");
        assert_eq!(F::decode(f.encode_to_vec().as_slice()).as_ref(), Ok(&f));
    }
}

/// Runs `check` on every file of the corpus directory `dir` (if there is one); returns
/// how many files it checked. For the tests that replay the committed corpora.
pub fn replay_dir(dir: &std::path::Path, check: fn(&[u8])) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut n = 0;
    for path in paths {
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("reading corpus file {}: {e}", path.display()));
        if let Err(p) = std::panic::catch_unwind(|| check(&data)) {
            eprintln!("corpus file {} fails", path.display());
            std::panic::resume_unwind(p);
        }
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_corpora_pass() {
        let frame_decode: fn(&[u8]) = check_frame;
        for (target, check) in [("frame_decode", frame_decode), ("frame_json", check_json)] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/corpus")
                .join(target);
            let n = replay_dir(&dir, check);
            assert!(n > 0, "no committed {target} corpus");
        }
    }

    #[test]
    fn pseudo_random_inputs_pass_the_checks() {
        for seed in 0..500u32 {
            let data: Vec<u8> = (0..(seed % 97))
                .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97) >> 13) as u8)
                .collect();
            check_frame(&data);
        }
    }
}
