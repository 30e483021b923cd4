//! The black-box tests, one binary (it links once): every module starts its own
//! router processes (`ringrouter_tests::RouterProc`, a free port and a temporary
//! data directory each), so the modules run side by side on the default test
//! thread pool. Helpers live in the `ringrouter_tests` library (`tests/src/`).
//!
//! | module | what it covers |
//! |---|---|
//! | `accounts` | Register, password login, ListUsers, DeleteAccount (data, queue, rooms, sessions) |
//! | `auth` | open auth on public addresses, JWT logins |
//! | `backpressure` | slow consumers: pause of their senders, cut after the timeout, nothing lost |
//! | `bad_input` | malformed frames: the right Status, closed or still usable |
//! | `bounds` | every memory bound a client can push: answers, unacked, offline, held, idle users |
//! | `config` | `--config` (TOML), `--print-config` round trip, `--help`, exit codes 0/1/2 |
//! | `contacts` | contact requests, answers, blocks, `--dm-policy`, list limits, across shards, both drivers |
//! | `devices` | several sessions of one user: each gets every message, acks per device |
//! | `dm` | direct messages across shards, both drivers |
//! | `http` | the HTTP port: health, readiness, metrics, the backend API, the HTTP server's bounds |
//! | `history` | History and ListConversations: paging, rooms for members, retention, restarts |
//! | `heartbeat` | silent sessions are closed, live ones stay |
//! | `limits` | connections, sessions per user, name length, login deadline |
//! | `names` | the one name rule, in every field that holds a name |
//! | `offline` | offline queue, backlog paging, at-least-once, restarts, kill -9 |
//! | `order` | per-sender order under load, both drivers |
//! | `presence` | presence: online/offline with last seen, away/dnd/text, contacts only, coalescing, both drivers |
//! | `prelogin` | what a connection may do before Login, pipelined Register / Login |
//! | `resume` | numbered Sends, SendAck, resume tokens, random connection cuts under load (both drivers, memory and sync) |
//! | `rooms` | rooms: membership, fan-out (no echo to the sending device), limits, order, kill -9 |
//! | `social` | ephemeral messages, copies to the sender's devices (issue 11), both drivers |
//! | `shutdown` | SIGTERM: queued messages flushed or kept for the next login, `--shutdown-timeout` |
//! | `spoofing` | identity: a client cannot choose `from_user` or other router-owned fields |
//! | `transports` | the clients over TLS, WebSocket (HTTP port) and both, a certificate not trusted |
//! | `zero_copy` | payloads are written from the sender's read buffer |

mod accounts;
mod auth;
mod backpressure;
mod bad_input;
mod bounds;
mod config;
mod contacts;
mod devices;
mod dm;
mod heartbeat;
mod history;
mod http;
mod limits;
mod names;
mod offline;
mod order;
mod prelogin;
mod presence;
mod resume;
mod rooms;
mod shutdown;
mod social;
mod spoofing;
mod tls;
mod transports;
mod websocket;
mod zero_copy;
