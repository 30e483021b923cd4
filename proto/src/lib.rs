//! The ringrouter wire protocol, without I/O.
//!
//! # Layout
//! - [`v1`]: the prost types generated from `router.proto` (package `ringrouter.v1`).
//! - [`codec`]: length-delimited framing: incremental decoding from a `BytesMut` and encoding.
//! - [`fast`]: allocation-free paths for the two hot frames: parsing a client `Send`
//!   (payload and names stay slices of the read buffer) and writing a `Deliver` header
//!   so the payload can follow from its own buffer (writev, no copy).
//! - [`send`]: the one encoder of the `Send` frame (header first, so the payload
//!   can be appended from wherever it is), used by every client.
//! - [`names`]: the one rule for user, device and room names, applied to every name
//!   field of a decoded frame.
//! - [`reply`]: every frame the router answers with (results, errors, refusals).
//! - [`json`]: the frames in the protobuf JSON mapping (WebSocket subprotocol
//!   `ringrouter.v1.json`).
//!
//! - `fuzzing` (tests and the `fuzzing` feature): the checks the fuzz targets run.
//!
//! Nothing here touches a socket; every function is tested byte for byte.
#![warn(missing_docs, unreachable_pub)]

pub mod codec;
pub mod fast;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod json;
pub mod names;
pub mod reply;
pub mod send;

/// The home shard of a user or room name among `shards`: FNV-1a with a fixed seed and
/// a final avalanche, so it never changes while the shard count does not. The router
/// places sessions and rooms by it; clients use it to choose names on given shards.
pub fn home_shard(name: &[u8], shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ 0x9e37_79b9_7f4a_7c15;
    for &b in name {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // final avalanche so that similar names spread over shards
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h % shards.max(1) as u64) as usize
}

/// Types generated from `router.proto` (package `ringrouter.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/ringrouter.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/ringrouter.v1.serde.rs"));
}

pub use codec::{FrameError, DEFAULT_MAX_FRAME_BYTES};
pub use v1::Status;

impl Status {
    /// The protobuf name without its `STATUS_` prefix, e.g. `"NOT_FOUND"`.
    pub fn short_name(self) -> &'static str {
        self.as_str_name().trim_start_matches("STATUS_")
    }
}
