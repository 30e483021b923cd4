//! Hand-encoded `Send` frames, shared by the blocking client, the threaded client
//! and the load engine.
//!
//! [`put_send_header`] writes a length-delimited `ClientFrame{send}` up to (and
//! including) the payload's tag and length; the caller appends the payload bytes
//! from wherever they are, so a payload is never copied into a `Bytes` first. The
//! payload field is written last, so the bytes that follow the header are it.

use bytes::BufMut;
use ringrouter_proto::codec::{put_varint, varint_len};

/// Where a `Send` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// Every session of a user (`Send.to_user`).
    User(&'a str),
    /// Every member of a room (`Send.to_room`).
    Room(&'a str),
}

impl<'a> Target<'a> {
    /// The Send field number and the name it carries.
    fn field(self) -> (u64, &'a str) {
        match self {
            Target::User(u) => (SEND_TO_USER, u),
            Target::Room(r) => (SEND_TO_ROOM, r),
        }
    }
}

/// The fields of a `Send` other than the payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendHeader<'a> {
    pub(crate) to: Target<'a>,
    /// 0: none.
    pub(crate) request_id: u64,
    pub(crate) want_result: bool,
    /// 0: the router assigns one.
    pub(crate) msg_id: u64,
}

impl<'a> SendHeader<'a> {
    /// A fire-and-forget Send to `to`.
    pub(crate) fn to(to: Target<'a>) -> Self {
        SendHeader {
            to,
            request_id: 0,
            want_result: false,
            msg_id: 0,
        }
    }
}

const WT_VARINT: u64 = 0;
const WT_LEN: u64 = 2;
/// ClientFrame field number of `send`.
const CLIENT_FRAME_SEND: u64 = 2;
const SEND_REQUEST_ID: u64 = 1;
const SEND_TO_USER: u64 = 2;
const SEND_TO_ROOM: u64 = 3;
const SEND_PAYLOAD: u64 = 4;
const SEND_WANT_RESULT: u64 = 5;
const SEND_MSG_ID: u64 = 6;

fn len_field_size(field: u64, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        varint_len((field << 3) | WT_LEN) + varint_len(len as u64) + len
    }
}

fn varint_field_size(field: u64, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        varint_len((field << 3) | WT_VARINT) + varint_len(v)
    }
}

fn put_varint_field(out: &mut impl BufMut, field: u64, v: u64) {
    if v != 0 {
        put_varint(out, (field << 3) | WT_VARINT);
        put_varint(out, v);
    }
}

/// (length of the Send message, length of the ClientFrame message).
fn sizes(h: &SendHeader<'_>, payload_len: usize) -> (usize, usize) {
    let (field, name) = h.to.field();
    let inner = varint_field_size(SEND_REQUEST_ID, h.request_id)
        + len_field_size(field, name.len())
        + varint_field_size(SEND_WANT_RESULT, u64::from(h.want_result))
        + varint_field_size(SEND_MSG_ID, h.msg_id)
        + len_field_size(SEND_PAYLOAD, payload_len);
    let outer = varint_len((CLIENT_FRAME_SEND << 3) | WT_LEN) + varint_len(inner as u64) + inner;
    (inner, outer)
}

/// Length of the whole frame, payload included.
pub(crate) fn send_frame_len(h: &SendHeader<'_>, payload_len: usize) -> usize {
    let (_, outer) = sizes(h, payload_len);
    varint_len(outer as u64) + outer
}

/// Writes the frame up to the payload bytes, which the caller appends
/// (`payload_len` of them).
pub(crate) fn put_send_header(out: &mut impl BufMut, h: &SendHeader<'_>, payload_len: usize) {
    let (inner, outer) = sizes(h, payload_len);
    put_varint(out, outer as u64);
    put_varint(out, (CLIENT_FRAME_SEND << 3) | WT_LEN);
    put_varint(out, inner as u64);
    put_varint_field(out, SEND_REQUEST_ID, h.request_id);
    let (field, name) = h.to.field();
    if !name.is_empty() {
        put_varint(out, (field << 3) | WT_LEN);
        put_varint(out, name.len() as u64);
        out.put_slice(name.as_bytes());
    }
    put_varint_field(out, SEND_WANT_RESULT, u64::from(h.want_result));
    put_varint_field(out, SEND_MSG_ID, h.msg_id);
    if payload_len != 0 {
        put_varint(out, (SEND_PAYLOAD << 3) | WT_LEN);
        put_varint(out, payload_len as u64);
    }
}

/// Appends a whole Send frame.
pub(crate) fn put_send(out: &mut impl BufMut, h: &SendHeader<'_>, payload: &[u8]) {
    put_send_header(out, h, payload.len());
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use ringrouter_proto::codec::{decode_client, next_frame};
    use ringrouter_proto::v1::{client_frame, Send};

    fn roundtrip(h: SendHeader<'_>, payload: &[u8]) -> Send {
        let mut b = BytesMut::new();
        put_send(&mut b, &h, payload);
        assert_eq!(b.len(), send_frame_len(&h, payload.len()), "{h:?}");
        let body = next_frame(&mut b, 1 << 30)
            .expect("framing")
            .expect("one whole frame");
        assert!(b.is_empty(), "bytes left after the frame");
        match decode_client(body).expect("decodes").kind {
            Some(client_frame::Kind::Send(s)) => s,
            other => panic!("expected a Send, got {other:?}"),
        }
    }

    #[test]
    fn every_field_combination_decodes_as_encoded() {
        let long_name = "r".repeat(300);
        let big = vec![7u8; 70_000];
        for to in [
            Target::User("bob"),
            Target::Room("lobby"),
            Target::Room(&long_name),
            Target::User(""),
        ] {
            for (request_id, want_result) in [(0, false), (1, true), (u64::MAX, true)] {
                for msg_id in [0, 5, 1 << 40] {
                    for payload in [&b""[..], &b"hi"[..], &big[..]] {
                        let h = SendHeader {
                            to,
                            request_id,
                            want_result,
                            msg_id,
                        };
                        let s = roundtrip(h, payload);
                        let (user, room) = match to {
                            Target::User(u) => (u, ""),
                            Target::Room(r) => ("", r),
                        };
                        assert_eq!(s.to_user, user);
                        assert_eq!(s.to_room, room);
                        assert_eq!(s.request_id, request_id);
                        assert_eq!(s.want_result, want_result);
                        assert_eq!(s.msg_id, msg_id);
                        assert_eq!(&s.payload[..], payload);
                    }
                }
            }
        }
    }

    #[test]
    fn a_user_send_is_byte_for_byte_the_proto_fast_path() {
        // The threaded client's hot path uses ringrouter_proto::fast; both must agree.
        for payload_len in [0usize, 1, 127, 128, 70_000] {
            let mut a = BytesMut::new();
            put_send_header(&mut a, &SendHeader::to(Target::User("bob")), payload_len);
            let mut b = BytesMut::new();
            ringrouter_proto::fast::put_send_header(&mut b, b"bob", payload_len, 0);
            assert_eq!(a, b, "payload_len {payload_len}");
        }
    }
}
