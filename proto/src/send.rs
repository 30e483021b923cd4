//! The one encoder of the `Send` frame (client → router), used by the blocking
//! client, the threaded client, the load engine and the benchmarks.
//!
//! [`put_send_header`] writes a length-delimited `ClientFrame{send}` up to (and
//! including) the payload's tag and length; the caller appends the payload bytes
//! from wherever they are, so a payload is never copied into a `Bytes` first. The
//! payload field is written last, so the bytes that follow the header are it.

use crate::codec::{put_varint, varint_len};
use bytes::BufMut;

/// Where a `Send` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Every session of a user (`Send.to_user`).
    User(&'a str),
    /// Every member of a room (`Send.to_room`).
    Room(&'a str),
}

impl<'a> Target<'a> {
    /// The Send field number and the name it carries.
    #[inline(always)]
    fn field(self) -> (u64, &'a str) {
        match self {
            Target::User(u) => (SEND_TO_USER, u),
            Target::Room(r) => (SEND_TO_ROOM, r),
        }
    }
}

/// The fields of a `Send` other than the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendHeader<'a> {
    /// The recipient (`to_user` or `to_room`).
    pub to: Target<'a>,
    /// Echoed by the SendResult; 0: none.
    pub request_id: u64,
    /// Ask the router for a SendResult.
    pub want_result: bool,
    /// Client-chosen message id; 0: the router assigns one.
    pub msg_id: u64,
    /// Live sessions only, never stored or acked (`Send.ephemeral`).
    pub ephemeral: bool,
    /// The client's sequence number of this Send (`Send.client_seq`; 0: not numbered).
    pub client_seq: u64,
}

impl<'a> SendHeader<'a> {
    /// A fire-and-forget Send to `to`.
    #[inline]
    pub fn to(to: Target<'a>) -> Self {
        SendHeader {
            to,
            request_id: 0,
            want_result: false,
            msg_id: 0,
            ephemeral: false,
            client_seq: 0,
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
const SEND_EPHEMERAL: u64 = 7;
const SEND_CLIENT_SEQ: u64 = 8;

#[inline(always)]
fn len_field_size(field: u64, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        varint_len((field << 3) | WT_LEN) + varint_len(len as u64) + len
    }
}

#[inline(always)]
fn varint_field_size(field: u64, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        varint_len((field << 3) | WT_VARINT) + varint_len(v)
    }
}

#[inline(always)]
fn put_varint_field(out: &mut impl BufMut, field: u64, v: u64) {
    if v != 0 {
        put_varint(out, (field << 3) | WT_VARINT);
        put_varint(out, v);
    }
}

/// (length of the Send message, length of the ClientFrame message).
#[inline(always)]
fn sizes(h: &SendHeader<'_>, payload_len: usize) -> (usize, usize) {
    let (field, name) = h.to.field();
    let inner = varint_field_size(SEND_REQUEST_ID, h.request_id)
        + len_field_size(field, name.len())
        + varint_field_size(SEND_WANT_RESULT, u64::from(h.want_result))
        + varint_field_size(SEND_MSG_ID, h.msg_id)
        + varint_field_size(SEND_EPHEMERAL, u64::from(h.ephemeral))
        + varint_field_size(SEND_CLIENT_SEQ, h.client_seq)
        + len_field_size(SEND_PAYLOAD, payload_len);
    let outer = varint_len((CLIENT_FRAME_SEND << 3) | WT_LEN) + varint_len(inner as u64) + inner;
    (inner, outer)
}

/// Length of the whole frame, payload included.
#[inline(always)]
pub fn send_frame_len(h: &SendHeader<'_>, payload_len: usize) -> usize {
    let (_, outer) = sizes(h, payload_len);
    varint_len(outer as u64) + outer
}

/// Writes the frame up to the payload bytes, which the caller appends
/// (`payload_len` of them).
#[inline(always)]
pub fn put_send_header(out: &mut impl BufMut, h: &SendHeader<'_>, payload_len: usize) {
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
    put_varint_field(out, SEND_EPHEMERAL, u64::from(h.ephemeral));
    put_varint_field(out, SEND_CLIENT_SEQ, h.client_seq);
    if payload_len != 0 {
        put_varint(out, (SEND_PAYLOAD << 3) | WT_LEN);
        put_varint(out, payload_len as u64);
    }
}

/// Appends a whole Send frame.
#[inline]
pub fn put_send(out: &mut impl BufMut, h: &SendHeader<'_>, payload: &[u8]) {
    put_send_header(out, h, payload.len());
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_client, next_frame};
    use crate::fast::{parse_client, Inbound};
    use crate::v1::{client_frame, Send};
    use bytes::BytesMut;

    /// Encodes, checks the announced length, and decodes with prost and with
    /// the router's fast parser; both must see the same Send.
    fn roundtrip(h: SendHeader<'_>, payload: &[u8]) -> Send {
        let mut b = BytesMut::new();
        put_send(&mut b, &h, payload);
        assert_eq!(b.len(), send_frame_len(&h, payload.len()), "{h:?}");
        let body = next_frame(&mut b, 1 << 30)
            .expect("framing")
            .expect("one whole frame");
        assert!(b.is_empty(), "bytes left after the frame");
        let s = match decode_client(body.clone()).expect("decodes").kind {
            Some(client_frame::Kind::Send(s)) => s,
            other => panic!("expected a Send, got {other:?}"),
        };
        match parse_client(body) {
            Ok(Inbound::Send(v)) => {
                assert_eq!(&v.to_user[..], s.to_user.as_bytes());
                assert_eq!(&v.to_room[..], s.to_room.as_bytes());
                assert_eq!(&v.payload[..], &s.payload[..]);
                assert_eq!(
                    (v.request_id, v.want_result, v.msg_id, v.client_seq),
                    (s.request_id, s.want_result, s.msg_id, s.client_seq)
                );
            }
            other => panic!("the fast parser disagrees: {other:?}"),
        }
        s
    }

    #[test]
    fn every_field_combination_decodes_as_encoded() {
        let long_name = "r".repeat(300);
        let big = vec![7u8; 70_000];
        for to in [
            Target::User("bob"),
            Target::Room("lobby"),
            Target::Room(&long_name),
            Target::User(&long_name),
            Target::User(""),
        ] {
            for (request_id, want_result) in [(0, false), (1, true), (u64::MAX, true), (9, false)] {
                for msg_id in [0, 5, 1 << 40, u64::MAX] {
                    for payload in [&b""[..], &b"hi"[..], &[0u8; 127][..], &big[..]] {
                        let h = SendHeader {
                            to,
                            request_id,
                            want_result,
                            msg_id,
                            ephemeral: msg_id == 5,
                            client_seq: request_id ^ msg_id,
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
                        assert_eq!(s.ephemeral, msg_id == 5);
                        assert_eq!(s.client_seq, request_id ^ msg_id);
                        assert_eq!(&s.payload[..], payload);
                    }
                }
            }
        }
    }

    #[test]
    fn the_header_then_the_payload_bytes_is_the_whole_frame() {
        for payload_len in [0usize, 1, 127, 128, 16_383, 16_384, 70_000] {
            let payload = vec![0xA5u8; payload_len];
            let h = SendHeader {
                msg_id: 77,
                ..SendHeader::to(Target::User("bob"))
            };
            let mut a = BytesMut::new();
            put_send_header(&mut a, &h, payload_len);
            a.extend_from_slice(&payload);
            let mut b = BytesMut::new();
            put_send(&mut b, &h, &payload);
            assert_eq!(a, b, "payload_len {payload_len}");
            let s = roundtrip(h, &payload);
            assert_eq!((s.to_user.as_str(), s.msg_id), ("bob", 77));
        }
    }

    #[test]
    fn a_fire_and_forget_send_is_minimal() {
        // ClientFrame{send(2): Send{to_user(2): "bob", payload(4): "xyz"}}
        let mut b = BytesMut::new();
        put_send(&mut b, &SendHeader::to(Target::User("bob")), b"xyz");
        assert_eq!(
            &b[..],
            &[12, 0x12, 10, 0x12, 3, b'b', b'o', b'b', 0x22, 3, b'x', b'y', b'z'][..]
        );
    }
}
