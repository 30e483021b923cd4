//! ringrouter: a thread-per-core chat / IM message router on io_uring (monoio).
//!
//! # Layout
//! Modules are layered: each one imports only from the layers below it (checked by
//! `scripts/check-module-cycles.py`, run by the `module_graph` test).
//!
//! 1. Base, no router state: [`config`], [`auth`] (`open`, `jwt`, `accounts` login),
//!    [`maps`], `bufpool` (per-shard read buffers), [`mailbox`] (lock-free SPSC rings between shards, with a doorbell),
//!    [`outbuf`] (a session's outbound queue and its writev batches), [`stats`],
//!    [`store`] (the embedded store and its thread), `prelogin` (the sans-IO pre-login
//!    state machine), `shared` (what the shard threads share), [`alloc`].
//! 2. [`shard`]: a shard's state and decisions (sessions, mail, pause, retention,
//!    resume, delivery, rooms, contacts, presence, store round trips); `shard::run` is its run loop.
//! 3. [`frames`]: one module per client frame kind, dispatched from one match.
//! 4. `net`: connection I/O (accept, pre-login driver, handover, reader, writer);
//!    `http`: the HTTP port (health, metrics, WebSocket upgrade, the page, the API).
//! 5. [`server`]: [`Router::start`]: listeners, shard threads, shutdown.
//!
//! Also: [`cli`] (the `ringrouter` command line) and `fuzzing` (tests and the
//! `fuzzing` feature: the checks the fuzz targets run). Frames the router answers
//! with are built by `ringrouter_proto::reply`.
#![warn(missing_docs, unreachable_pub)]

mod address;
pub mod alloc;
pub mod auth;
mod bufpool;
pub mod cli;
pub mod config;
pub mod frames;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod http;
pub mod mailbox;
pub mod maps;
mod net;
pub mod outbuf;
mod prelogin;
mod rate;
pub mod server;
pub mod shard;
mod shared;
pub mod stats;
pub mod store;
pub mod transport;
mod turns;
mod web;

pub use config::{AuthMode, Config};
pub use server::{driver_name, Router, RouterHandle, StartError};
pub use stats::StatsSnapshot;
