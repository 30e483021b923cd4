//! Hand-written protobuf, for the frames the prost types cannot express: unknown
//! fields, a message field split over several occurrences (merged by the decoder),
//! wrong wire types, bodies or length prefixes that are not valid at all. Every
//! well-formed frame the tests send is built from the generated types instead
//! (`crate::client_frame_bytes`, `Raw::send`, which use
//! `ringrouter_proto::codec::encode_frame`).

use ringrouter_proto::codec::put_varint;

/// Wire type 0: varint.
pub const VARINT: u64 = 0;
/// Wire type 1: 64-bit.
pub const I64: u64 = 1;
/// Wire type 2: length-delimited.
pub const LEN: u64 = 2;
/// Wire type 5: 32-bit.
pub const I32: u64 = 5;

/// The `ClientFrame` field that holds a `Send`.
pub const CLIENT_FRAME_SEND: u64 = 2;
/// The `ClientFrame` field that holds a `Ping`.
pub const CLIENT_FRAME_PING: u64 = 4;
/// `Send.request_id`.
pub const SEND_REQUEST_ID: u64 = 1;
/// `Send.to_user`.
pub const SEND_TO_USER: u64 = 2;
/// `Send.payload`.
pub const SEND_PAYLOAD: u64 = 4;
/// `Send.want_result`.
pub const SEND_WANT_RESULT: u64 = 5;

/// The key of `field` with `wire_type`, on its own.
pub fn key(field: u64, wire_type: u64) -> Vec<u8> {
    let mut k = Vec::new();
    tag(&mut k, field, wire_type);
    k
}

/// Appends the key of `field` with `wire_type`.
pub fn tag(out: &mut Vec<u8>, field: u64, wire_type: u64) {
    put_varint(out, (field << 3) | wire_type);
}

/// Appends a length-delimited `field` holding `data`.
pub fn len_field(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    tag(out, field, LEN);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Appends a varint `field` holding `v`.
pub fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    tag(out, field, VARINT);
    put_varint(out, v);
}

/// Appends a fixed32 `field` holding `v` (little-endian, as protobuf has it).
pub fn fixed32_field(out: &mut Vec<u8>, field: u64, v: [u8; 4]) {
    tag(out, field, I32);
    out.extend_from_slice(&v);
}

/// A length prefix announcing `len` bytes, with no body after it.
pub fn length_prefix(len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, len);
    out
}

/// `body` (any bytes) behind a correct length prefix: one frame on the wire.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = length_prefix(body.len() as u64);
    out.extend_from_slice(body);
    out
}
