//! ringrouter: a thread-per-core chat / IM message router on io_uring (monoio).
//!
//! # Layout
//! - [`alloc`]: mimalloc options the binary sets (measured).
//! - [`config`]: every setting and limit, with the embedded defaults.
//! - [`auth`]: `open`, `jwt` and `accounts` login (passwords are checked
//!   against the store in `conn`).
//! - [`server`]: [`Router::start`]: listeners, shard threads, shutdown.
//! - `conn`: per-connection tasks: accept, pre-login, handover, reader, writer.
//! - `prelogin`: the pre-login state machine `conn` drives (bytes in, actions out).
//! - [`refusal`]: the result frame that refuses a request (bad name, not logged in).
//! - [`delivery`]: store round trips, offline queues, unacked retention, login backlog.
//! - [`rooms`]: rooms on their home shard: owners, members, join codes, events, fan-out.
//! - [`accounts`]: DeleteAccount and ListUsers.
//! - [`shard`]: a shard's state and routing decisions (no I/O, no await).
//! - [`mailbox`]: lock-free SPSC rings between shards, with a doorbell.
//! - [`outbuf`]: a session's outbound queue and its writev batches.
//! - [`stats`]: counters published by the shards.
//! - [`cli`]: the `ringrouter` command line.
//! - `fuzzing` (tests and the `fuzzing` feature): the checks the fuzz targets run.
#![warn(missing_docs)]

pub mod accounts;
pub mod alloc;
pub mod auth;
pub mod cli;
pub mod config;
mod conn;
pub mod delivery;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod mailbox;
mod oneshot;
pub mod outbuf;
mod prelogin;
pub mod refusal;
pub mod rooms;
pub mod server;
pub mod shard;
pub mod stats;
pub mod store;

pub use config::{AuthMode, Config};
pub use server::{driver_name, Router, RouterHandle, StartError};
pub use stats::StatsSnapshot;
