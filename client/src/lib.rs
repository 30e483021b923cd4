//! Rust client for ringrouter.
//!
//! # Layout
//! - [`Client`]: a blocking client (connect + login, send, recv with timeout,
//!   automatic cumulative acks and heartbeat answers, close). Used by the tests,
//!   the benchmarks and the Python binding.
//! - [`ClientError`]: every way a call can fail, router answers included.
#![warn(missing_docs, unreachable_pub)]

mod client;
pub mod load;
pub mod threaded;

pub use client::{Client, ClientConfig, ClientError, Event, Message};
pub use ringrouter_proto::Status;
