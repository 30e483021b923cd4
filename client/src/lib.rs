//! Rust client for ringrouter.
//!
//! # Layout
//! - [`Client`]: a blocking client (connect + login, send, recv with timeout,
//!   automatic cumulative acks and heartbeat answers, close; rooms, accounts).
//!   Used by the tests and the benchmarks.
//! - [`threaded::ThreadedClient`]: the same operations, thread-safe, with a
//!   background reader and writer; used by the Python binding.
//! - `load` (feature `load`): the load engine (`ringrouter-load`,
//!   `python -m ringrouter.load`); it brings monoio, hdrhistogram and serde_json,
//!   which the clients do not need.
//! - [`transport`]: what carries the frames: TCP, TLS, WebSocket (over
//!   either); chosen with [`ClientConfig::transport`].
//! - [`ClientError`]: every way a call can fail, router answers included.
#![warn(missing_docs, unreachable_pub)]

mod client;
mod contacts;
mod core;
mod error;
mod event;
mod history;
#[cfg(feature = "load")]
pub mod load;
mod social;
#[cfg(test)]
mod testing;
pub mod threaded;
pub mod transport;

pub use client::{Client, ClientConfig, ResumeInfo};
pub use contacts::{
    ContactChanges, ContactEntry, ContactEvent, ContactEventKind, ContactState, Contacts, Presence,
    PresenceStatus,
};
pub use error::ClientError;
pub use event::{Event, Message, Receipt, RoomEventKind, RoomInfo};
pub use history::Conversation;
pub use ringrouter_proto::send::Target;
pub use ringrouter_proto::Status;
pub use transport::{Transport, TransportKind};
