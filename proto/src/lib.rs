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
//!
//! - `fuzzing` (tests and the `fuzzing` feature): the checks the fuzz targets run.
//!
//! Nothing here touches a socket; every function is tested byte for byte.
#![warn(missing_docs, unreachable_pub)]

pub mod codec;
pub mod fast;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod names;
pub mod reply;
pub mod send;

/// Types generated from `router.proto` (package `ringrouter.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/ringrouter.v1.rs"));
}

pub use codec::{FrameError, DEFAULT_MAX_FRAME_BYTES};
pub use v1::Status;

impl Status {
    /// The protobuf name without its `STATUS_` prefix, e.g. `"NOT_FOUND"`.
    pub fn short_name(self) -> &'static str {
        self.as_str_name().trim_start_matches("STATUS_")
    }
}
