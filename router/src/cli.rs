//! The `ringrouter` command line: flags (clap) and a `--config` TOML file over
//! [`Config`], then run until SIGTERM / Ctrl-C.
//!
//! Only with the `cli` feature (on by default): a library user who turns default
//! features off builds neither clap nor tracing-subscriber, toml, humantime or parse-size.
//!
//! # One list of settings
//! The flags of [`Args`] are the only list of settings. A `--config` file's keys are
//! the long flag names (kebab-case, without the dashes), checked against that list;
//! each value is handed to the flag's own parser, placed on the command line *before*
//! the real flags, and the last occurrence of a flag wins (`args_override_self`): so
//! a file means exactly what the same flags mean, and the command line overrides it.
//! `--print-config` walks the same list.
//!
//! # Exit codes
//! [`EXIT_OK`] (0), [`EXIT_FAILURE`] (1), [`EXIT_USAGE`] (2): see [`main`].
#![cfg(feature = "cli")]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};

use crate::config::{AuthMode, Config, DmPolicy, DurabilityMode, OfflineOverflow, RoomAddPolicy};

/// Exit code of a clean stop (SIGTERM / Ctrl-C, every shard finished within the
/// shutdown timeout), and of `--help`, `--version` and `--print-config`.
pub const EXIT_OK: i32 = 0;
/// Exit code of a failure at run time (the address cannot be bound, the store cannot
/// be opened, a shard does not start) or of an unclean shutdown.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code of bad usage or configuration: a bad flag or value, a bad `--config`
/// file (unreadable, not TOML, unknown key, bad value), a configuration the router
/// refuses ([`crate::StartError::Config`]).
pub const EXIT_USAGE: i32 = 2;

/// The default of `--log-filter`.
pub const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

const NETWORK: &str = "Network";
const AUTH: &str = "Auth";
const LIMITS: &str = "Limits";
const TIMEOUTS: &str = "Timeouts";
const STORAGE: &str = "Storage";
const LOGGING: &str = "Logging";

const AFTER_HELP: &str = "\
Configuration file:
  --config FILE reads TOML whose keys are the long flag names above without the dashes
  (kebab-case: max-frame-bytes = \"1MiB\", no-pin = true); a flag given on the command line
  overrides the file. --print-config prints the effective configuration (defaults, then the
  file, then the flags) as TOML that --config reads back.

Sizes (<SIZE>):
  1048576 (bytes), 64KiB, 8MiB, 1GiB (powers of 1024), 64KB, 1MB, 1GB (powers of 1000);
  a bare 64k, 8M, 1G means KiB, MiB, GiB (as in GNU coreutils); case does not matter.

Durations (<DURATION>):
  250ms, 2s, 5min, 1h 30m, 30days (humantime); a plain number is seconds (1.5).

Environment:
  RUST_LOG                      log filter (tracing EnvFilter syntax, e.g. debug or
                                info,ringrouter::conn=trace); when set it replaces
                                --log-filter
  MONOIO_FORCE_LEGACY_DRIVER=1  use epoll instead of io_uring (the router also falls back
                                to epoll by itself where io_uring is unavailable)
  MIMALLOC_ALLOW_THP            leave transparent huge pages as the system sets them

Exit status:
  0  clean stop after SIGTERM or Ctrl-C; --help, --version, --print-config
  1  failure at run time (address in use, store cannot be opened, a shard fails to
     start) or an unclean shutdown (shards still busy after --shutdown-timeout)
  2  bad usage or configuration: a bad flag or value, a --config file that cannot be
     read or parsed or has an unknown key, a refused setting (e.g. --auth jwt without
     --jwt-secret-file)";

/// ringrouter: a thread-per-core io_uring message router for chat / IM.
#[derive(Debug, Clone, Parser)]
#[command(name = "ringrouter", version, after_help = AFTER_HELP, args_override_self = true)]
pub struct Args {
    /// Read settings from this TOML file (keys: the long flag names); flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (defaults, then --config, then flags) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7878", help_heading = NETWORK)]
    pub listen: SocketAddr,
    /// Number of shards (threads, one per core); 0 = one per available core. At most 256.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = parse_shards, help_heading = NETWORK)]
    pub shards: usize,
    /// Do not pin shard threads to cores.
    #[arg(long, help_heading = NETWORK)]
    pub no_pin: bool,
    /// After its last read or mail a shard keeps polling for new work this long before
    /// it sleeps (yielding its core to other threads between polls): a quiet connection's
    /// latency without a sleeping thread's wake-up, for CPU. 0: off. At most 100ms.
    #[arg(long, value_name = "DURATION", value_parser = parse_busy_poll, default_value = "0", help_heading = NETWORK)]
    pub busy_poll: Duration,
    /// Payloads up to this size are copied into the recipient's write buffer (cheaper
    /// than a reference and an iovec of their own); larger ones are written straight
    /// from the sender's read buffer (writev). 0: every payload by reference.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256", help_heading = NETWORK)]
    pub inline_payload_max: usize,
    /// Address of the HTTP port: /healthz, /readyz, /metrics, /ws, the browser page and
    /// the backend API (port 0 picks a free port); `off`: no HTTP port.
    #[arg(long, value_name = "ADDR", value_parser = parse_http_listen, default_value = "127.0.0.1:7880", help_heading = NETWORK)]
    pub http_listen: HttpListen,
    /// Leave transparent huge pages as the system sets them, as MIMALLOC_ALLOW_THP does
    /// (default: the router turns them off for itself; see BENCHMARKS.md: THP page
    /// zeroing cost 10-40% of CPU with many sessions).
    #[arg(long, help_heading = NETWORK)]
    pub allow_thp: bool,
    /// TLS certificate chain (PEM): with --tls-key, TLS on the TCP listener and the HTTP port.
    #[arg(long, value_name = "FILE", help_heading = NETWORK)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, value_name = "FILE", help_heading = NETWORK)]
    pub tls_key: Option<PathBuf>,
    /// Threads TLS handshakes run on, at a lower priority than the shards, so a flood of
    /// new connections slows the sessions already in little (0: one per two cores, at least one).
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = NETWORK)]
    pub tls_handshake_threads: usize,

    /// Authentication: open (any user name; loopback only), jwt, or accounts (Register + password).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = AuthMode::Open, help_heading = AUTH)]
    pub auth: AuthMode,
    /// File holding the HS256 secret for --auth jwt.
    #[arg(long, value_name = "FILE", help_heading = AUTH)]
    pub jwt_secret_file: Option<PathBuf>,
    /// File holding the bearer key of the HTTP backend API (/api/v1/...); without it the API is off.
    #[arg(long, value_name = "FILE", help_heading = AUTH)]
    pub api_key_file: Option<PathBuf>,
    /// Clock skew allowed when checking a JWT's exp, nbf and iat.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s", help_heading = AUTH)]
    pub jwt_leeway: Duration,
    /// Allow --auth open on a non-loopback address.
    #[arg(long, help_heading = AUTH)]
    pub allow_open_auth_on_public: bool,
    /// Most failed logins on one connection: the last one is answered, then the connection
    /// gets Error UNAUTHORIZED and is closed.
    #[arg(long, value_name = "N", default_value_t = 3, help_heading = AUTH)]
    pub max_failed_logins: u32,
    /// Most refused password Logins per user name a minute (--auth accounts), from any
    /// connection or address: this many at once, then one every 60 s / N. Past it a Login
    /// for the name is refused RATE_LIMITED before its password is checked, so reconnecting
    /// does not buy more guesses; while someone keeps guessing, the name's own password
    /// Logins are refused too. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 10, help_heading = AUTH)]
    pub max_failed_logins_per_user: u32,
    /// Most wrong room passwords (JoinRoom) of one user a minute, in all rooms together:
    /// this many at once, then one every 60 s / N. Past it the user's joins of rooms with a
    /// password are refused RATE_LIMITED before the password is checked (each check is an
    /// Argon2id hash, ~35 ms of a hashing thread). 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 10, help_heading = AUTH)]
    pub max_failed_room_joins_per_user: u32,
    /// Most wrong passwords for one room a minute, from all users together (many accounts
    /// cannot grind one room's password): this many at once, then one every 60 s / N. Past
    /// it joins of the room with a password are refused RATE_LIMITED before the password
    /// is checked, right ones too. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 60, help_heading = AUTH)]
    pub max_failed_room_joins_per_room: u32,
    /// Most Registers one connection may send before it logs in: past it each is
    /// answered RATE_LIMITED (an account creator cannot script thousands per connection).
    #[arg(long, value_name = "N", default_value_t = 3, help_heading = AUTH)]
    pub max_registrations_per_connection: u32,
    /// Most Registers from one address (IPv4, or an IPv6 /64) per --registration-window:
    /// this many at once, then one every window / N; past it RATE_LIMITED. Behind a proxy
    /// every client has the proxy's address. 0: no Register is taken.
    #[arg(long, value_name = "N", default_value_t = 30, help_heading = AUTH)]
    pub max_registrations_per_ip: u32,
    /// The window of --max-registrations-per-ip (0 turns that limit off).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10min", help_heading = AUTH)]
    pub registration_window: Duration,
    /// Most Registers a second from all addresses together; past it RATE_LIMITED. 0: no
    /// Register is taken (registration closed).
    #[arg(long, value_name = "N", default_value_t = 20, help_heading = AUTH)]
    pub max_registrations_per_second: u32,
    /// Most password hashes (Register, password Login, room passwords) queued or running;
    /// past it those requests are refused with RATE_LIMITED. Registers get at most a
    /// quarter, room passwords another quarter, and password Logins are served before
    /// them: a login waits for at most N checks (64 x ~35 ms = 2.3 s on one thread), keep
    /// it well under --login-timeout.
    #[arg(long, value_name = "N", default_value_t = 64, help_heading = AUTH)]
    pub max_password_jobs: u64,
    /// For tests and benchmarks only, never in production: the cheapest Argon2id
    /// parameters, so password hashes are fast to compute and to crack.
    #[arg(long, help_heading = AUTH)]
    pub argon2_cheap: bool,

    /// Largest frame accepted.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1MiB", help_heading = LIMITS)]
    pub max_frame_bytes: usize,
    /// Largest message payload accepted (default: max-frame-bytes minus 1 KiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = LIMITS)]
    pub max_payload_bytes: Option<usize>,
    /// Largest frame accepted before Login; a larger one gets TOO_LARGE and the connection closes.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16KiB", help_heading = LIMITS)]
    pub max_prelogin_frame_bytes: usize,
    /// Bound on one session's outbound queue: past it, local senders pause (TCP backpressure);
    /// at twice it (and at least it plus 32 MiB), or after --slow-consumer-timeout over it, the
    /// session is closed as a slow consumer.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "8MiB", help_heading = LIMITS)]
    pub max_pending_bytes: usize,
    /// Most open connections.
    #[arg(long, value_name = "N", default_value_t = 100_000, help_heading = LIMITS)]
    pub max_connections: usize,
    /// Most open connections from one address (IPv4, or an IPv6 /64; TCP, HTTP and
    /// WebSocket together); past it refused like past --max-connections. Behind a proxy
    /// every client has the proxy's address. 0: no per-address limit.
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = LIMITS)]
    pub max_connections_per_ip: usize,
    /// Most TLS handshake steps queued or running (on --tls-handshake-threads); past it a
    /// new connection's handshake is refused and the connection closed.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..), help_heading = LIMITS)]
    pub max_tls_handshakes: u64,
    /// Most of those steps one address (IPv4, or an IPv6 /64) may hold, so one client
    /// replaying ClientHellos cannot fill them all; past it a new connection's handshake
    /// from that address is refused and the connection closed. Behind a TCP proxy every
    /// client has the proxy's address. 0: no per-address bound.
    #[arg(long, value_name = "N", default_value_t = 32, help_heading = LIMITS)]
    pub max_tls_handshakes_per_ip: usize,
    /// Most bytes a TLS client may send before its handshake is done (a ClientHello is a
    /// few KiB); past it the connection is closed. Each connection's TLS state holds a
    /// handshake message arriving whole (up to 64 KiB) until its login deadline.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16KiB", help_heading = LIMITS)]
    pub max_tls_handshake_bytes: usize,
    /// Most sessions (devices) per user.
    #[arg(long, value_name = "N", default_value_t = 64, help_heading = LIMITS)]
    pub max_sessions_per_user: usize,
    /// Resume: how long after a session ends a client may take it back with its resume token
    /// (same client_seq numbering, duplicates dropped); later it is a normal login.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s", help_heading = LIMITS)]
    pub resume_window: Duration,
    /// Resume: most ended sessions one shard keeps resumable; past it the one that ended
    /// first is forgotten (its resume becomes a normal login).
    #[arg(long, value_name = "N", default_value_t = 100_000, help_heading = LIMITS)]
    pub max_resumable_sessions: usize,
    /// How long the messages an ended session gave back to its user's offline queue are
    /// remembered (per shard, at most 262 144 of them): the same messages other devices
    /// of the user leave unacked in that time are not queued again (0: every copy is).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s", help_heading = LIMITS)]
    pub requeue_dedup_window: Duration,
    /// Most delivered-but-unacked messages per session; past it the session is closed as a
    /// slow consumer and its unacked messages are queued for its next login.
    #[arg(long, value_name = "N", default_value_t = 262_144, help_heading = LIMITS)]
    pub max_unacked_per_session: usize,
    /// Most payload bytes one session may hold delivered and not acked; past it the session
    /// is closed as a slow consumer and what it holds is queued for its next login.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64MiB", help_heading = LIMITS)]
    pub max_unacked_bytes_per_session: usize,
    /// Most requests one session may have waiting on the store or another shard (History,
    /// ListRooms, room requests, contact list reads and writes, ...); at it the router
    /// reads nothing more from
    /// the session until one is answered, so one client's pipeline cannot fill the shard's
    /// store queue or mailboxes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), default_value_t = 16, help_heading = LIMITS)]
    pub max_requests_in_flight: u32,
    /// Most rooms one user may have created or joined, and apart from them, most rooms
    /// others may have added it to (N each).
    #[arg(long, value_name = "N", default_value_t = 1_000, help_heading = LIMITS)]
    pub max_rooms_per_user: usize,
    /// Most members in one room.
    #[arg(long, value_name = "N", default_value_t = 10_000, help_heading = LIMITS)]
    pub max_members_per_room: usize,
    /// Members of the rooms one shard keeps loaded, summed (each costs about 270 B with
    /// a 64-byte name: the name, its entries in the member set, its shard group and the
    /// group as sent; 32 B more in a room RoomInfo listed since its last change):
    /// past it, idle rooms are dropped from memory (least recently used first; their
    /// records are in the store and load again when asked for). Before, only the count
    /// of rooms (100 000) was bounded: 100 000 rooms of 10 000 members.
    #[arg(long, value_name = "N", default_value_t = 1_000_000, help_heading = LIMITS)]
    pub max_loaded_room_members: usize,
    /// In a room of more members than this (counting the member concerned), a member
    /// joining, leaving or being removed is told to that member and the owner only, not
    /// to everyone (as Twitch chat does above 1 000 users): filling a room of n members
    /// then costs about 2n events, not n²/2, and only the owner's offline queue gets them.
    /// RoomInfo still lists everyone.
    #[arg(long, value_name = "N", default_value_t = 1_000, help_heading = LIMITS)]
    pub room_events_max_members: usize,
    /// Live-only deliveries (typing indicators, read receipts) one room makes per second
    /// (one per member for each such frame, up to a second's worth at once); past it the
    /// frame is refused RATE_LIMITED (a receipt's read mark is still kept).
    #[arg(long, value_name = "N", default_value_t = 200_000, help_heading = LIMITS)]
    pub room_live_per_second: u64,
    /// Live-only deliveries one user's frames may make per second in the rooms of one
    /// shard (each shard counts its own), with ten seconds' worth saved up (typing
    /// indicators and read receipts in bursts: 200 receipts into a room of 1 000 at
    /// once); past it the frame is refused RATE_LIMITED as past a room's budget. 0: no
    /// limit but the room's. Without it one user's devices typing in a loop into a room
    /// of 1 000 spent the room's whole budget (200 000 deliveries a second); the frames
    /// it refuses still cost the router about as much CPU as those deliveries did.
    #[arg(long, value_name = "N", default_value_t = 20_000, help_heading = LIMITS)]
    pub room_live_per_user_per_second: u64,
    /// Live-only deliveries one user's typing indicators and read receipts to other
    /// users may make per second on the recipients' shard (each shard counts its own),
    /// one per session of the recipient reached, and the copies of its direct messages
    /// and receipts for its own other devices, with ten seconds' worth saved up; past
    /// it the frame reaches no one (its sender was told OK already: it is best-effort,
    /// as for a recipient without a session; `ringrouter_direct_live_refused_total`). 0:
    /// no limit. Without it one client's loop of typing indicators to a user with 63
    /// devices made ~150 M deliveries a second of work for that user's shard and held
    /// everyone else there 1-2.7 s.
    #[arg(long, value_name = "N", default_value_t = 20_000, help_heading = LIMITS)]
    pub direct_live_per_user_per_second: u64,
    /// Who may add members to a room: the owner only, or any member.
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = RoomAddPolicy::Owner, help_heading = LIMITS)]
    pub room_add_policy: RoomAddPolicy,
    /// Most users one user may add to rooms a minute (each initial member of a
    /// CreateRoom, each AddMember), with a burst of as many; past it RATE_LIMITED. A
    /// CreateRoom with more initial members goes through once the allowance is whole,
    /// and the next adds wait for it to pay back. Each add can store events in an
    /// offline member's queue (joined, then removed or deleted): a create-and-delete
    /// loop stored 7 763 events per listed user in 25 s.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), default_value_t = 600, help_heading = LIMITS)]
    pub max_member_adds_per_minute: u32,
    /// Most contact ops (request, accept, decline, remove, block, unblock) one user may
    /// make a minute, with a burst of as many (a whole list at once, at the default);
    /// past it RATE_LIMITED. Each op is a store write and may store an event in an
    /// offline peer's queue: a request/remove loop made 20 000 a second.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), default_value_t = 5_000, help_heading = LIMITS)]
    pub max_contact_ops_per_minute: u32,
    /// Who may send a user direct messages: anyone (open), or its accepted contacts
    /// only (contacts; others get FORBIDDEN). Users a recipient blocked are refused
    /// either way.
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = DmPolicy::Open, help_heading = LIMITS)]
    pub dm_policy: DmPolicy,
    /// Most entries (accepted, pending either way, blocked) in one contact list; a
    /// request or block past it is RATE_LIMITED.
    #[arg(long, value_name = "N", default_value_t = 5_000, help_heading = LIMITS)]
    pub max_contacts_per_user: usize,
    /// Most contact requests waiting for one user's answer; a request past it is
    /// RATE_LIMITED.
    #[arg(long, value_name = "N", default_value_t = 500, help_heading = LIMITS)]
    pub max_contact_requests: usize,
    /// Removed entries one contact list remembers for ListContacts "changed since";
    /// a device behind the oldest gets the whole list.
    #[arg(long, value_name = "N", default_value_t = 1_000, help_heading = LIMITS)]
    pub max_contact_tombstones: usize,
    /// Most of the users that block one user kept in memory with its contact list, the
    /// first by name; past them, whether another peer blocks it is read from the store
    /// when it writes to that peer (once: the last 256 answers are kept with the list).
    /// Blocks past it hold all the same.
    #[arg(long, value_name = "N", default_value_t = 1_024, help_heading = LIMITS)]
    pub max_loaded_blockers: usize,
    /// Longest presence text (SetPresence.text), in bytes; longer is BAD_REQUEST.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256", help_heading = LIMITS)]
    pub max_presence_text_bytes: usize,
    /// Most names one ListUsers answers.
    #[arg(long, value_name = "N", default_value_t = 1_000, help_heading = LIMITS)]
    pub list_users_page: usize,
    /// Most messages one History answer holds and conversations one ListConversations
    /// answers; a request asking for more is BAD_REQUEST.
    #[arg(long, value_name = "N", default_value_t = 500, help_heading = LIMITS)]
    pub history_page_max: u32,
    /// History, ListConversations, MarkRead, ListRooms and ListUsers requests one shard
    /// has at the store at once (their work grows with what they look at: up to 500
    /// messages or conversations, --history-lookup-chunks chunks of a MarkRead's lookup,
    /// a user's rooms, 64 account names per name asked for); more wait in the shard,
    /// taking turns by user, each counted in its session's --max-requests-in-flight. The
    /// one storage thread answers every shard's requests in order: without this, a
    /// thousand sessions each asking for a page kept every other user's login and room
    /// request waiting seconds behind theirs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), default_value_t = 4, help_heading = LIMITS)]
    pub max_page_reads_in_flight: u32,
    /// Most history chunks (up to 64 KiB each) one lookup of a msg_id reads: a History
    /// `before` that is not the oldest msg_id of a recent page, or a MarkRead: newest
    /// first, chunks whose msg_id ranges cannot hold it are skipped by their pointers;
    /// past it the id counts as not found (History: NOT_FOUND). Paging back from each
    /// page's oldest msg_id never looks.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..), help_heading = LIMITS)]
    pub history_lookup_chunks: u32,
    /// Largest HTTP request head (request line and headers); past it: 431 and close.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16KiB", help_heading = LIMITS)]
    pub http_max_head_bytes: usize,
    /// Largest HTTP request body; past it: 413 and close.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1MiB", help_heading = LIMITS)]
    pub http_max_body_bytes: usize,
    /// Most bytes of HTTP answers one shard holds not yet written (peers that do not
    /// read their answers); past it a request is answered 503 and its connection closed,
    /// and past half of it an answer must be written within a second.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16MiB", help_heading = LIMITS)]
    pub http_max_unsent_bytes: usize,

    /// How long a session may stay over --max-pending-bytes before it is closed as a slow consumer.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s", help_heading = TIMEOUTS)]
    pub slow_consumer_timeout: Duration,
    /// Idle sessions are pinged this often.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "15s", help_heading = TIMEOUTS)]
    pub heartbeat_interval: Duration,
    /// A pinged session silent this long is closed (default: 2 x heartbeat interval).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = TIMEOUTS)]
    pub heartbeat_timeout: Option<Duration>,
    /// A connection must log in within this time.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s", help_heading = TIMEOUTS)]
    pub login_timeout: Duration,
    /// An HTTP connection waiting for a request must send all of it within this time:
    /// an idle keep-alive connection is closed, a partial request gets 408.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "15s", help_heading = TIMEOUTS)]
    pub http_idle_timeout: Duration,
    /// Longest an HTTP API request waits for the shards and the store (503 past it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s", help_heading = TIMEOUTS)]
    pub http_api_timeout: Duration,
    /// Graceful shutdown waits at most this long for sessions to take what is queued for
    /// them (one that does not is cut); what they leave unacked is then stored for as
    /// long as the store makes progress (cut after this long without any, at least 5 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s", help_heading = TIMEOUTS)]
    pub shutdown_timeout: Duration,

    /// Directory of the embedded store (accounts, rooms, offline queues); created if missing.
    #[arg(long, value_name = "DIR", default_value = "./data", help_heading = STORAGE)]
    pub data_dir: PathBuf,
    /// memory: unacked deliveries in memory, offline queues written without fsync;
    /// sync: every message group-committed with fsync before SendResult OK.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = DurabilityMode::Memory, help_heading = STORAGE)]
    pub durability: DurabilityMode,
    /// Most messages queued for one offline user.
    #[arg(long, value_name = "N", default_value_t = 100_000, help_heading = STORAGE)]
    pub max_offline_per_user: u64,
    /// Most payload bytes queued for one offline user (--offline-overflow applies).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256MiB", help_heading = STORAGE)]
    pub max_offline_bytes_per_user: usize,
    /// Free space the data directory's filesystem must keep. Under it the store is full
    /// until an eighth more is free again: Sends to offline users (and to sessions
    /// holding over 1 MiB unacked) are refused UNAVAILABLE, history is not written; with
    /// --durability sync every Send is refused. 0: no floor.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256MiB", help_heading = STORAGE)]
    pub min_free_disk_bytes: usize,
    /// A full offline queue rejects new messages (the sender gets RATE_LIMITED) or drops its oldest.
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = OfflineOverflow::Reject, help_heading = STORAGE)]
    pub offline_overflow: OfflineOverflow,
    /// Most bytes of store requests one shard may have queued for the storage thread;
    /// past it the readers feeding it pause (TCP backpressure).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64MiB", help_heading = STORAGE)]
    pub max_store_queue_bytes: usize,
    /// Most bytes one shard may hold of what ended sessions left unacked while it waits
    /// to go to the store (their entries and a share of the payloads they hold); past it
    /// the shard's readers pause until the store has taken some.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256MiB", help_heading = STORAGE)]
    pub max_requeue_bytes: usize,
    /// Most bytes one shard's connections may hold of client frames still arriving (each
    /// counted from 16 KiB); past it the connections whose frame began first are closed
    /// with an Error UNAVAILABLE. At least twice --max-frame-bytes (default: 256 MiB, or
    /// twice --max-frame-bytes if that is more).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = LIMITS)]
    pub max_input_bytes: Option<usize>,
    /// Resident memory past which each shard closes the sessions holding the most (queued
    /// for their sockets plus delivered and not acked; at least 1 MiB each) as slow
    /// consumers until they make its share of the excess; if they do not hold it, new
    /// logins are refused UNAVAILABLE until it is under. auto: 80% of the machine's memory
    /// or of the cgroup's limit; 0: none.
    #[arg(long, value_name = "SIZE|auto", value_parser = parse_memory, default_value = "auto", help_heading = LIMITS)]
    pub max_memory: usize,
    /// Open/jwt auth: a user with nothing queued, no rooms and no contacts, not seen this long,
    /// is forgotten.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30d", help_heading = STORAGE)]
    pub forget_idle_users_after: Duration,
    /// Messages kept per conversation (a pair of users, or a room) for History; 0: no
    /// history.
    #[arg(long, value_name = "N", default_value_t = 10_000, help_heading = STORAGE)]
    pub history_per_conversation: u64,
    /// History older than this is dropped (default: kept whatever its age).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = STORAGE)]
    pub history_max_age: Option<Duration>,
    /// Most bytes of history kept per conversation on disk; past it the oldest messages
    /// go (with large messages this bound comes before --history-per-conversation). 0: no
    /// byte bound.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64MiB", help_heading = STORAGE)]
    pub history_max_bytes_per_conversation: usize,
    /// Durability memory: bytes of history the storage thread holds in memory before it
    /// writes them to the store (sooner than --history-flush-every); a crash loses what is
    /// held. 0: written at once, as under durability sync.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "32MiB", help_heading = STORAGE)]
    pub history_memory_bytes: usize,
    /// Durability memory: history held in memory is written at least this often.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s", help_heading = STORAGE)]
    pub history_flush_every: Duration,
    /// Durability memory: bytes the history of hot conversations (through their
    /// --history-per-conversation twice within --history-flush-every) may hold in memory past
    /// --history-memory-bytes, so that what each drops meanwhile is never written. 0: none.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256MiB", help_heading = STORAGE)]
    pub history_hot_memory_bytes: usize,

    /// Log filter (tracing EnvFilter directives, e.g. debug or info,ringrouter=trace);
    /// the RUST_LOG environment variable, when set, replaces it.
    #[arg(long, value_name = "FILTER", value_parser = parse_log_filter, default_value = DEFAULT_LOG_FILTER, help_heading = LOGGING)]
    pub log_filter: String,
}

impl Args {
    /// The configuration these flags describe.
    pub fn into_config(self) -> Config {
        Config {
            listen: self.listen,
            shards: self.shards,
            max_frame_bytes: self.max_frame_bytes,
            max_payload_bytes: self
                .max_payload_bytes
                .unwrap_or(self.max_frame_bytes.saturating_sub(1024)),
            max_pending_bytes: self.max_pending_bytes,
            slow_consumer_timeout: self.slow_consumer_timeout,
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self
                .heartbeat_timeout
                .unwrap_or(self.heartbeat_interval * 2),
            login_timeout: self.login_timeout,
            shutdown_timeout: self.shutdown_timeout,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_sessions_per_user: self.max_sessions_per_user,
            resume_window: self.resume_window,
            requeue_dedup_window: self.requeue_dedup_window,
            max_resumable_sessions: self.max_resumable_sessions,
            inline_payload_max: self.inline_payload_max,
            auth: self.auth,
            jwt_secret_file: self.jwt_secret_file,
            allow_open_auth_on_public: self.allow_open_auth_on_public,
            pin_threads: !self.no_pin,
            busy_poll: self.busy_poll,
            data_dir: self.data_dir,
            durability: self.durability,
            max_offline_per_user: self.max_offline_per_user,
            offline_overflow: self.offline_overflow,
            max_unacked_per_session: self.max_unacked_per_session,
            max_requests_in_flight: self.max_requests_in_flight,
            max_rooms_per_user: self.max_rooms_per_user,
            max_member_adds_per_minute: self.max_member_adds_per_minute,
            max_contact_ops_per_minute: self.max_contact_ops_per_minute,
            max_members_per_room: self.max_members_per_room,
            max_loaded_room_members: self.max_loaded_room_members,
            room_events_max_members: self.room_events_max_members,
            room_live_per_second: self.room_live_per_second,
            room_live_per_user_per_second: self.room_live_per_user_per_second,
            direct_live_per_user_per_second: self.direct_live_per_user_per_second,
            room_add_policy: self.room_add_policy,
            dm_policy: self.dm_policy,
            max_contacts_per_user: self.max_contacts_per_user,
            max_contact_requests: self.max_contact_requests,
            max_contact_tombstones: self.max_contact_tombstones,
            max_loaded_blockers: self.max_loaded_blockers,
            max_presence_text_bytes: self.max_presence_text_bytes,
            list_users_page: self.list_users_page,
            argon2_cheap: self.argon2_cheap,
            max_password_jobs: self.max_password_jobs,
            max_unacked_bytes_per_session: self.max_unacked_bytes_per_session,
            max_store_queue_bytes: self.max_store_queue_bytes,
            max_requeue_bytes: self.max_requeue_bytes,
            min_free_disk_bytes: self.min_free_disk_bytes as u64,
            max_input_bytes: self.max_input_bytes.unwrap_or(
                crate::config::DEFAULT_MAX_INPUT_BYTES.max(self.max_frame_bytes.saturating_mul(2)),
            ),
            max_memory: self.max_memory,
            max_offline_bytes_per_user: self.max_offline_bytes_per_user as u64,
            forget_idle_users_after: self.forget_idle_users_after,
            max_prelogin_frame_bytes: self.max_prelogin_frame_bytes,
            max_failed_logins: self.max_failed_logins,
            max_failed_logins_per_user: self.max_failed_logins_per_user,
            max_failed_room_joins_per_user: self.max_failed_room_joins_per_user,
            max_failed_room_joins_per_room: self.max_failed_room_joins_per_room,
            max_registrations_per_connection: self.max_registrations_per_connection,
            max_registrations_per_ip: self.max_registrations_per_ip,
            registration_window: self.registration_window,
            max_registrations_per_second: self.max_registrations_per_second,
            jwt_leeway: self.jwt_leeway,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_handshake_threads: self.tls_handshake_threads,
            max_tls_handshakes: usize::try_from(self.max_tls_handshakes).unwrap_or(usize::MAX),
            max_tls_handshakes_per_ip: self.max_tls_handshakes_per_ip,
            max_tls_handshake_bytes: self.max_tls_handshake_bytes,
            http_listen: self.http_listen.0,
            api_key_file: self.api_key_file,
            http_max_head_bytes: self.http_max_head_bytes,
            http_max_body_bytes: self.http_max_body_bytes,
            http_idle_timeout: self.http_idle_timeout,
            http_max_unsent_bytes: self.http_max_unsent_bytes,
            http_api_timeout: self.http_api_timeout,
            history_per_conversation: self.history_per_conversation,
            history_max_age: self.history_max_age,
            history_memory_bytes: self.history_memory_bytes,
            history_max_bytes_per_conversation: self.history_max_bytes_per_conversation as u64,
            history_flush_every: self.history_flush_every,
            history_hot_memory_bytes: self.history_hot_memory_bytes,
            history_page_max: self.history_page_max,
            max_page_reads_in_flight: self.max_page_reads_in_flight,
            history_lookup_chunks: self.history_lookup_chunks as usize,
        }
    }
}

/// A command line parsed and merged with its `--config` file.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The flags, file settings merged in.
    pub args: Args,
    /// What clap saw (the raw value of every setting, for `--print-config`).
    pub matches: ArgMatches,
}

impl Parsed {
    /// The router configuration.
    pub fn config(&self) -> Config {
        self.args.clone().into_config()
    }

    /// The effective configuration as TOML (what `--print-config` prints): every
    /// setting under its help heading, with the value it was given (or its default);
    /// sizes and durations also in bytes / normalised. `--config` reads it back into the
    /// same configuration.
    pub fn to_toml(&self) -> String {
        let cfg = self.config();
        let mut out = String::from(
            "# ringrouter configuration: defaults, then --config, then flags.\n\
             # Keys are the long flag names; ringrouter --config FILE reads this back.\n",
        );
        let mut heading = None;
        for arg in Args::command().get_arguments().filter(|a| is_setting(a)) {
            if arg.get_help_heading() != heading {
                heading = arg.get_help_heading();
                out.push_str(&format!("\n# {}\n", heading.unwrap_or("Other")));
            }
            out.push_str(&setting_line(arg, &self.matches, &cfg));
            out.push('\n');
        }
        out
    }
}

/// Why the command line or its config file was refused.
#[derive(Debug)]
pub enum CliError {
    /// clap's own outcome: a usage error, or `--help` / `--version` (exit code 0).
    Clap(clap::Error),
    /// A bad `--config` file (unreadable, not TOML, unknown key, bad value).
    Config(String),
}

impl CliError {
    /// The exit code: 0 for `--help` / `--version`, [`EXIT_USAGE`] otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Clap(e) => e.exit_code(),
            CliError::Config(_) => EXIT_USAGE,
        }
    }

    /// Prints it the way the command line does (help and version on stdout, errors on stderr).
    pub fn print(&self) {
        match self {
            CliError::Clap(e) => {
                let _ = e.print();
            }
            CliError::Config(msg) => eprintln!("ringrouter: {msg}"),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Clap(e) => write!(f, "{}", clap_message(e)),
            CliError::Config(msg) => f.write_str(msg),
        }
    }
}

/// Parses a command line (`argv[0]` first) and the `--config` file it names.
pub fn parse<I, T>(argv: I) -> Result<Parsed, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let first = Args::command()
        .try_get_matches_from(&argv)
        .map_err(CliError::Clap)?;
    let file_args = match first.get_one::<PathBuf>("config") {
        Some(path) => config_file_args(path)?,
        None => Vec::new(),
    };
    // The file's settings go before the real flags: the last occurrence wins.
    let merged: Vec<OsString> = argv
        .iter()
        .take(1)
        .cloned()
        .chain(file_args)
        .chain(argv.iter().skip(1).cloned())
        .collect();
    let matches = Args::command()
        .try_get_matches_from(merged)
        .map_err(CliError::Clap)?;
    let args = Args::from_arg_matches(&matches).map_err(CliError::Clap)?;
    Ok(Parsed { args, matches })
}

/// Settings are the arguments a config file may set: every flag but `--config`,
/// `--print-config`, `--help` and `--version`.
fn is_setting(arg: &Arg) -> bool {
    !matches!(
        arg.get_id().as_str(),
        "config" | "print_config" | "help" | "version"
    ) && arg.get_long().is_some()
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue)
}

/// Reads a config file and turns it into flags (`--key=value`), each one checked
/// by the flag's own parser so that an error names the file and the key.
fn config_file_args(path: &Path) -> Result<Vec<OsString>, CliError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Config(format!("cannot read config file {shown}: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| CliError::Config(format!("config file {shown}: {e}")))?;
    let cmd = Args::command();
    let mut out = Vec::new();
    for (key, value) in &table {
        let bad = |why: String| CliError::Config(format!("config file {shown}: {why}"));
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| is_setting(a) && a.get_long() == Some(key.as_str()))
        else {
            return Err(bad(unknown_key(&cmd, key)));
        };
        let flag = match value {
            toml::Value::Boolean(b) if is_switch(arg) => {
                if !*b {
                    continue; // every switch is off unless set
                }
                format!("--{key}")
            }
            _ if is_switch(arg) => {
                return Err(bad(format!("key `{key}` must be true or false")));
            }
            toml::Value::String(s) => format!("--{key}={s}"),
            toml::Value::Integer(i) => format!("--{key}={i}"),
            toml::Value::Float(f) => format!("--{key}={f}"),
            other => {
                return Err(bad(format!(
                    "key `{key}` must be a string or a number, not {}",
                    other.type_str()
                )));
            }
        };
        if let Err(e) = Args::command().try_get_matches_from(["ringrouter", flag.as_str()]) {
            return Err(bad(format!("key `{key}`: {}", clap_message(&e))));
        }
        out.push(flag.into());
    }
    Ok(out)
}

fn unknown_key(cmd: &clap::Command, key: &str) -> String {
    let kebab = key.replace('_', "-");
    let known = |k: &str| {
        cmd.get_arguments()
            .any(|a| is_setting(a) && a.get_long() == Some(k))
    };
    if kebab != key && known(&kebab) {
        format!("unknown key `{key}` (keys are spelled like the long flags: `{kebab}`)")
    } else if matches!(key, "config" | "print-config") {
        format!("unknown key `{key}` (a command-line flag only)")
    } else {
        format!("unknown key `{key}` (the keys are the long flags of ringrouter --help, e.g. `max-frame-bytes`)")
    }
}

/// A clap error's message without the `error: ` prefix and the `--help` hint.
fn clap_message(e: &clap::Error) -> String {
    let s = e.render().to_string();
    let s = s.split("\n\nFor more information").next().unwrap_or(&s);
    let s = s.strip_prefix("error: ").unwrap_or(s);
    s.trim_end().to_string()
}

/// One `key = value` line of `--print-config`.
fn setting_line(arg: &Arg, m: &ArgMatches, cfg: &Config) -> String {
    let key = arg.get_long().expect("settings have a long flag");
    let value_name = arg
        .get_value_names()
        .and_then(|v| v.first())
        .map(|s| s.as_str());
    let raw = m
        .get_raw(arg.get_id().as_str())
        .and_then(|mut v| v.next_back())
        .map(|v| v.to_string_lossy().into_owned());
    let Some(raw) = raw else {
        // No default: derived from other settings, or unset.
        return match key {
            "max-payload-bytes" => format!(
                "# {key} = {}  # unset: max-frame-bytes minus 1 KiB",
                cfg.max_payload_bytes
            ),
            "max-input-bytes" => format!(
                "# {key} = {}  # unset: 256 MiB, or twice max-frame-bytes if more",
                cfg.max_input_bytes
            ),
            "heartbeat-timeout" => format!(
                "# {key} = {}  # unset: twice heartbeat-interval",
                toml_str(&humantime::format_duration(cfg.heartbeat_timeout).to_string())
            ),
            _ => format!("# {key} =  # unset"),
        };
    };
    if is_switch(arg) {
        return format!("{key} = {}", raw == "true");
    }
    let is_int = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    match value_name {
        Some("N") if is_int => format!("{key} = {raw}"),
        Some("SIZE") if is_int => format!("{key} = {raw}"),
        Some("SIZE") => match parse_size(&raw) {
            Ok(n) => format!("{key} = {}  # {n} bytes", toml_str(&raw)),
            Err(_) => format!("{key} = {}", toml_str(&raw)),
        },
        Some("SIZE|auto") => match parse_memory(&raw) {
            Ok(0) => format!("{key} = {}  # none", toml_str(&raw)),
            Ok(n) => format!("{key} = {}  # {n} bytes", toml_str(&raw)),
            Err(_) => format!("{key} = {}", toml_str(&raw)),
        },
        Some("DURATION") => match parse_duration(&raw) {
            Ok(d) => {
                let norm = humantime::format_duration(d).to_string();
                if norm == raw {
                    format!("{key} = {}", toml_str(&raw))
                } else {
                    format!("{key} = {}  # {norm}", toml_str(&raw))
                }
            }
            Err(_) => format!("{key} = {}", toml_str(&raw)),
        },
        _ => format!("{key} = {}", toml_str(&raw)),
    }
}

/// `s` as a TOML string (quoted and escaped).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The value of `--http-listen`: an address, or `off` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpListen(pub Option<SocketAddr>);

/// Parses `--http-listen`: `ADDR` or `off`.
pub fn parse_http_listen(s: &str) -> Result<HttpListen, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(HttpListen(None));
    }
    t.parse()
        .map(|a| HttpListen(Some(a)))
        .map_err(|e| format!("invalid address {s:?}: {e} (e.g. 127.0.0.1:7880, or off)"))
}

/// Parses a duration with humantime (`250ms`, `2s`, `5min`, `1h 30m`, `30d`,
/// `30days`); a plain number (`1.5`, `30`) is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return t
            .parse::<f64>()
            .ok()
            .and_then(|v| Duration::try_from_secs_f64(v).ok())
            .ok_or_else(|| format!("invalid duration {s:?}"));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration {s:?}: {e} (examples: 250ms, 2s, 5min, 1h 30m, 30days, 1.5 for seconds)")
    })
}

/// `--busy-poll`: a duration up to [`crate::config::MAX_BUSY_POLL`].
fn parse_busy_poll(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > crate::config::MAX_BUSY_POLL {
        return Err(format!(
            "at most {:?} (a shard polls this long after each read)",
            crate::config::MAX_BUSY_POLL
        ));
    }
    Ok(d)
}

/// `--shards`: 0 (one per core) to [`crate::config::MAX_SHARDS`].
fn parse_shards(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid shard count {s:?}"))?;
    if n > crate::config::MAX_SHARDS {
        return Err(format!(
            "at most {} shards (each has a mailbox to every other)",
            crate::config::MAX_SHARDS
        ));
    }
    Ok(n)
}

/// `--max-memory`: a size, or `auto` (see [`crate::config::auto_max_memory`]; 0 where
/// it cannot be read).
fn parse_memory(s: &str) -> Result<usize, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        Ok(crate::config::auto_max_memory().unwrap_or(0))
    } else {
        parse_size(s)
    }
}

/// Parses a size in bytes with parse-size: `1048576`; `64KiB`, `8MiB`, `1GiB` (powers
/// of 1024); `64KB`, `1MB` (powers of 1000); a bare prefix, `64k` `8M` `1G`, means
/// KiB / MiB / GiB as in GNU coreutils (and as this flag always did). Case does not
/// matter; anything else after the number (`8ib`, `3 bytes`) is refused.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let unit_at = t
        .char_indices()
        .rev()
        .find(|(_, c)| !c.is_ascii_alphabetic())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let unit = t[unit_at..].to_ascii_lowercase();
    let binary = parse_size::Config::new().with_binary();
    let decimal = parse_size::Config::new().with_decimal();
    let parser = match unit.as_bytes() {
        [] | [b'b'] => decimal,
        [p] if b"kmgtpe".contains(p) => binary,
        [p, b'b'] if b"kmgtpe".contains(p) => decimal,
        [p, b'i'] | [p, b'i', b'b'] if b"kmgtpe".contains(p) => decimal, // `i`: binary anyway
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {:?} (examples: 1048576, 64KiB, 8MiB, 1MB, 64k)",
                &t[unit_at..]
            ))
        }
    };
    let n = parser.parse_size(t).map_err(|e| {
        format!("invalid size {s:?}: {e} (examples: 1048576, 64KiB, 8MiB, 1MB, 64k)")
    })?;
    usize::try_from(n).map_err(|_| format!("size {s:?} is too large"))
}

/// `--log-filter`: tracing `EnvFilter` directives, refused (exit 2) when they do not parse.
fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| {
            format!("invalid log filter {s:?}: {e} (examples: info, debug, info,ringrouter=trace)")
        })
}

/// Sets up logging on stderr: `RUST_LOG` if set, else `filter` (checked when parsed);
/// colour only when stderr is a terminal.
fn init_logging(filter: &str) {
    use std::io::IsTerminal;
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let parsed = env.as_deref().map(|v| {
        tracing_subscriber::EnvFilter::try_new(v).map_err(|e| {
            // The environment is not the command line: said, not refused.
            eprintln!("ringrouter: RUST_LOG {v:?} is not a log filter ({e}); using --log-filter");
        })
    });
    let filter = match parsed {
        Some(Ok(f)) => f,
        _ => tracing_subscriber::EnvFilter::try_new(filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Runs the router from the command line; returns the process exit code:
/// [`EXIT_OK`] (0) after a clean stop on SIGTERM / Ctrl-C, and for `--help`,
/// `--version`, `--print-config`; [`EXIT_FAILURE`] (1) when the router fails at run
/// time (cannot bind, cannot open its store, a shard does not start) or its shutdown
/// is unclean (see [`RouterHandle::join`](crate::RouterHandle::join)); [`EXIT_USAGE`] (2) for bad usage or configuration.
pub fn main() -> i32 {
    let parsed = match parse(std::env::args_os()) {
        Ok(p) => p,
        Err(e) => {
            e.print();
            return e.exit_code();
        }
    };
    if parsed.args.print_config {
        use std::io::Write;
        // A configuration the router would refuse is refused here too (exit 2), not
        // printed as if it were good.
        if let Err(e) = parsed.config().check() {
            eprintln!("ringrouter: {e}");
            return EXIT_USAGE;
        }
        let mut out = std::io::stdout().lock();
        return match out
            .write_all(parsed.to_toml().as_bytes())
            .and_then(|()| out.flush())
        {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("ringrouter: cannot write the configuration: {e}");
                EXIT_FAILURE
            }
        };
    }
    init_logging(&parsed.args.log_filter);
    if !parsed.args.allow_thp {
        crate::alloc::tune_mimalloc();
    }
    // Handlers before the ready line: a SIGTERM sent as soon as it is printed must
    // stop the router cleanly, not kill it with the default action.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringrouter: cannot install signal handlers: {e}");
            return EXIT_FAILURE;
        }
    };
    let handle = match crate::Router::start(parsed.config()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ringrouter: {e}");
            return match e {
                crate::StartError::Config(_) => EXIT_USAGE,
                _ => EXIT_FAILURE,
            };
        }
    };
    println!(
        "ringrouter listening on {} ({} shards, {})",
        handle.local_addr(),
        handle.shards(),
        handle.driver()
    );
    if let Some(http) = handle.http_addr() {
        println!("ringrouter http on {http}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    let stats = handle.stats();
    let clean = handle.shutdown();
    stats.log_stopped(clean);
    if clean {
        EXIT_OK
    } else {
        tracing::error!(
            "unclean shutdown: not finished within --shutdown-timeout, or the store failed"
        );
        EXIT_FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> Parsed {
        let argv = std::iter::once("ringrouter").chain(args.iter().copied());
        parse(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn parse_err(args: &[&str]) -> CliError {
        let argv = std::iter::once("ringrouter").chain(args.iter().copied());
        match parse(argv) {
            Ok(p) => panic!("{args:?} accepted: {:?}", p.args),
            Err(e) => e,
        }
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        std::io::Write::write_all(&mut f, text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn busy_poll_is_off_by_default_and_at_most_100ms() {
        assert_eq!(parse_ok(&[]).config().busy_poll, Duration::ZERO);
        assert_eq!(
            parse_ok(&["--busy-poll", "250us"]).config().busy_poll,
            Duration::from_micros(250)
        );
        assert_eq!(
            parse_ok(&["--busy-poll", "100ms"]).config().busy_poll,
            Duration::from_millis(100)
        );
        for bad in ["101ms", "1s", "1.5", "soon"] {
            let e = parse_err(&["--busy-poll", bad]);
            assert_eq!(e.exit_code(), EXIT_USAGE, "{bad}");
            assert!(e.to_string().contains("--busy-poll"), "{bad}: {e}");
        }
        let f = file("busy-poll = \"2s\"\n");
        let e = parse_err(&["--config", f.path().to_str().unwrap()]);
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().contains("at most 100ms"), "{e}");
    }

    #[test]
    fn page_reads_in_flight_are_at_least_one() {
        let c = parse_ok(&["--max-page-reads-in-flight", "1"]).config();
        assert_eq!(c.max_page_reads_in_flight, 1);
        assert_eq!(Config::default().max_page_reads_in_flight, 4);
        let e = parse_err(&["--max-page-reads-in-flight", "0"]);
        assert_eq!(e.exit_code(), EXIT_USAGE);
        let f = file("max-page-reads-in-flight = 0\n");
        let e = parse_err(&["--config", f.path().to_str().unwrap()]);
        assert_eq!(e.exit_code(), EXIT_USAGE, "{e}");
    }

    #[test]
    fn shards_are_at_most_max_shards() {
        assert_eq!(parse_ok(&["--shards", "256"]).config().shards, 256);
        let e = parse_err(&["--shards", "257"]);
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().contains("at most 256 shards"), "{e}");
        let c = Config {
            shards: 5000,
            ..Config::default()
        };
        assert_eq!(c.effective_shards(), 5000, "refused at start, not cut down");
        let auto = Config {
            shards: 0,
            ..Config::default()
        };
        assert!((1..=crate::config::MAX_SHARDS).contains(&auto.effective_shards()));
    }

    #[test]
    fn http_listen_takes_an_address_or_off() {
        assert_eq!(
            Config::default().http_listen,
            Some("127.0.0.1:7880".parse().unwrap())
        );
        assert_eq!(
            parse_ok(&["--http-listen", "off"]).config().http_listen,
            None
        );
        assert_eq!(
            parse_ok(&["--http-listen", "OFF"]).config().http_listen,
            None
        );
        let c = parse_ok(&["--http-listen", "127.0.0.1:0"]).config();
        assert_eq!(c.http_listen, Some("127.0.0.1:0".parse().unwrap()));
        let e = parse_err(&["--http-listen", "nowhere"]);
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().contains("off"), "{e}");
        let f = file("http-listen = \"off\"\n");
        let c = parse_ok(&["--config", f.path().to_str().unwrap()]).config();
        assert_eq!(c.http_listen, None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("5min").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        let month = Duration::from_secs(30 * 86400);
        assert_eq!(parse_duration("30d").unwrap(), month);
        assert_eq!(parse_duration("30days").unwrap(), month);
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert_eq!(parse_size("1mb").unwrap(), 1_000_000);
        assert_eq!(parse_size("64KB").unwrap(), 64_000);
        assert_eq!(parse_size("1MiB").unwrap(), 1_048_576);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("16KiB").unwrap(), 16 << 10);
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5MiB").unwrap(), 3 << 19);
        assert_eq!(parse_size("2 KiB").unwrap(), 2048);
        assert_eq!(parse_size("512B").unwrap(), 512);
        // A bare prefix is binary, as it always was here (and in GNU coreutils).
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("1k").unwrap(), 1 << 10);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        for bad in [
            "8ib", "8i", "lots", "", "1 bytes", "3x", "1MBB", "-1", "1KiBB",
        ] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.contains("invalid size"), "{bad}: {e}");
        }
        assert!(parse_size("99999999999999999999g").is_err());
        assert!(parse_size("20EiB").is_err());
    }

    #[test]
    fn a_bad_log_filter_and_configurations_the_router_refuses_are_refused_at_once() {
        let e = parse_err(&["--log-filter", "==="]);
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().contains("log filter"), "{e}");
        assert!(parse_ok(&["--log-filter", "debug,ringrouter=trace"])
            .config()
            .check()
            .is_ok());
        // What `Router::start` refuses, `--print-config` refuses too (`Config::check`):
        // a frame limit that leaves no payload, a payload limit over the frame limit, jwt
        // without a secret; the message names the flags.
        for (args, says) in [
            (
                &["--max-frame-bytes", "1000"][..],
                "--max-payload-bytes is 0",
            ),
            (&["--max-frame-bytes", "0"][..], "--max-payload-bytes"),
            (
                &["--max-frame-bytes", "64KiB", "--max-payload-bytes", "64KiB"][..],
                "--max-frame-bytes",
            ),
            (&["--auth", "jwt"][..], "--jwt-secret-file"),
            (
                &["--max-tls-handshake-bytes", "1KiB"][..],
                "--max-tls-handshake-bytes",
            ),
        ] {
            match parse_ok(args).config().check() {
                Err(e) => assert!(e.contains(says), "{args:?}: {e}"),
                Ok(()) => panic!("{args:?} passed the check"),
            }
        }
    }

    #[test]
    fn defaults_are_the_embedded_config() {
        let p = parse_ok(&[]);
        assert_eq!(p.config(), Config::default());
        assert_eq!(p.args.log_filter, DEFAULT_LOG_FILTER);
    }

    #[test]
    fn size_flags_keep_their_meaning() {
        // What the black-box tests pass.
        let c = parse_ok(&[
            "--max-pending-bytes",
            "64k",
            "--max-payload-bytes",
            "1k",
            "--max-offline-bytes-per-user",
            "64KiB",
            "--max-frame-bytes",
            "1MB",
        ])
        .config();
        assert_eq!(c.max_pending_bytes, 64 << 10);
        assert_eq!(c.max_payload_bytes, 1024);
        assert_eq!(c.max_offline_bytes_per_user, 64 << 10);
        assert_eq!(c.max_frame_bytes, 1_000_000);
        let e = parse_err(&["--max-frame-bytes", "8ib"]);
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().contains("--max-frame-bytes"), "{e}");
    }

    #[test]
    fn file_then_flags() {
        let f = file(
            "listen = \"127.0.0.1:9000\"\nshards = 3\nmax-frame-bytes = \"64KiB\"\n\
             max-pending-bytes = 65536\nheartbeat-interval = \"1s\"\nlogin-timeout = 2.5\n\
             no-pin = true\nallow-open-auth-on-public = false\nauth = \"accounts\"\n\
             durability = \"sync\"\nforget-idle-users-after = \"7days\"\n",
        );
        let path = f.path().to_str().unwrap();
        let c = parse_ok(&["--config", path]).config();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.shards, 3);
        assert_eq!(c.max_frame_bytes, 64 << 10);
        assert_eq!(c.max_payload_bytes, (64 << 10) - 1024);
        assert_eq!(c.max_pending_bytes, 65536);
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(2));
        assert_eq!(c.login_timeout, Duration::from_millis(2500));
        assert!(!c.pin_threads);
        assert!(!c.allow_open_auth_on_public);
        assert_eq!(c.auth, AuthMode::Accounts);
        assert_eq!(c.durability, DurabilityMode::Sync);
        assert_eq!(c.forget_idle_users_after, Duration::from_secs(7 * 86400));
        // Flags override the file, wherever they stand.
        let c = parse_ok(&["--shards", "5", "--config", path, "--auth", "open"]).config();
        assert_eq!(c.shards, 5);
        assert_eq!(c.auth, AuthMode::Open);
        assert_eq!(c.max_frame_bytes, 64 << 10);
    }

    #[test]
    fn bad_files_name_the_file_and_the_key() {
        let cases = [
            ("max-frame-bytes = \"8ib\"\n", "max-frame-bytes"),
            ("frame-bytes = 5\n", "`frame-bytes`"),
            ("max_frame_bytes = 5\n", "`max-frame-bytes`"),
            ("no-pin = \"yes\"\n", "no-pin"),
            ("shards = [1]\n", "shards"),
            ("auth = \"ldap\"\n", "auth"),
            ("config = \"other.toml\"\n", "`config`"),
            ("listen = \n", "line 1"),
        ];
        for (text, needle) in cases {
            let f = file(text);
            let path = f.path().to_str().unwrap();
            let e = parse_err(&["--config", path]);
            assert_eq!(e.exit_code(), EXIT_USAGE, "{text}");
            let msg = e.to_string();
            assert!(msg.contains(path), "{text}: {msg}");
            assert!(msg.contains(needle), "{text}: {msg}");
        }
        let e = parse_err(&["--config", "/nonexistent/ringrouter.toml"]);
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().contains("/nonexistent/ringrouter.toml"));
    }

    #[test]
    fn print_config_roundtrips() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let secret = f.path().to_str().unwrap();
        let every = [
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "3",
            "--no-pin",
            "--busy-poll",
            "300us",
            "--max-tls-handshake-bytes",
            "20KiB",
            "--inline-payload-max",
            "256",
            "--allow-thp",
            "--auth",
            "jwt",
            "--jwt-secret-file",
            secret,
            "--jwt-leeway",
            "1m",
            "--allow-open-auth-on-public",
            "--max-failed-logins",
            "5",
            "--max-password-jobs",
            "7",
            "--argon2-cheap",
            "--max-frame-bytes",
            "64k",
            "--max-payload-bytes",
            "1KB",
            "--max-prelogin-frame-bytes",
            "4KiB",
            "--max-pending-bytes",
            "2MB",
            "--max-connections",
            "9",
            "--max-connections-per-ip",
            "4",
            "--max-sessions-per-user",
            "2",
            "--max-unacked-per-session",
            "100",
            "--max-requests-in-flight",
            "7",
            "--max-unacked-bytes-per-session",
            "3MiB",
            "--max-rooms-per-user",
            "4",
            "--max-member-adds-per-minute",
            "7",
            "--max-members-per-room",
            "5",
            "--list-users-page",
            "6",
            "--slow-consumer-timeout",
            "300ms",
            "--heartbeat-interval",
            "1.5",
            "--heartbeat-timeout",
            "1h 2m",
            "--login-timeout",
            "4s",
            "--shutdown-timeout",
            "2s",
            "--data-dir",
            "/tmp/some \"dir\"",
            "--durability",
            "sync",
            "--max-offline-per-user",
            "11",
            "--max-offline-bytes-per-user",
            "12MiB",
            "--offline-overflow",
            "drop-oldest",
            "--max-store-queue-bytes",
            "13MiB",
            "--max-requeue-bytes",
            "17MiB",
            "--forget-idle-users-after",
            "30d",
            "--history-per-conversation",
            "77",
            "--history-max-age",
            "2days",
            "--history-max-bytes-per-conversation",
            "5MiB",
            "--history-hot-memory-bytes",
            "9MiB",
            "--history-page-max",
            "33",
            "--max-page-reads-in-flight",
            "3",
            "--log-filter",
            "debug,fjall=warn",
            "--http-listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/etc/ringrouter/cert.pem",
            "--tls-key",
            "/etc/ringrouter/key.pem",
            "--tls-handshake-threads",
            "3",
            "--max-tls-handshakes",
            "9",
            "--max-tls-handshakes-per-ip",
            "3",
            "--api-key-file",
            secret,
            "--http-max-head-bytes",
            "8KiB",
            "--http-max-body-bytes",
            "64KiB",
            "--http-idle-timeout",
            "2s",
            "--http-api-timeout",
            "1s",
            "--max-input-bytes",
            "3MiB",
            "--max-memory",
            "1GiB",
            "--min-free-disk-bytes",
            "1GiB",
        ];
        let p = parse_ok(&every);
        // Every setting was given: none is at its default.
        let d = Config::default();
        let c = p.config();
        assert_ne!(c, d);
        // Every setting has its line.
        let text = p.to_toml();
        for a in Args::command().get_arguments().filter(|a| is_setting(a)) {
            let key = a.get_long().unwrap();
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "{key} missing from\n{text}"
            );
        }
        let toml_file = file(&text);
        let back = parse_ok(&["--config", toml_file.path().to_str().unwrap()]);
        assert_eq!(back.config(), c, "\n{text}");
        assert_eq!(back.args.log_filter, p.args.log_filter);
        assert_eq!(back.args.allow_thp, p.args.allow_thp);
        assert_eq!(back.to_toml(), text);

        // Defaults too (derived and unset values stay derived and unset).
        let p = parse_ok(&[]);
        let text = p.to_toml();
        let toml_file = file(&text);
        let back = parse_ok(&["--config", toml_file.path().to_str().unwrap()]);
        assert_eq!(back.config(), Config::default(), "\n{text}");
        assert_eq!(back.to_toml(), text);
        assert!(back.args.max_payload_bytes.is_none());
        // A byte count prints like the other sizes: a plain integer, unquoted.
        assert!(
            text.lines().any(|l| l == "max-presence-text-bytes = 256"),
            "\n{text}"
        );
    }

    #[test]
    fn help_is_grouped_and_names_the_environment() {
        let mut cmd = Args::command();
        let help = cmd.render_long_help().to_string();
        for h in [NETWORK, AUTH, LIMITS, TIMEOUTS, STORAGE, LOGGING] {
            assert!(help.contains(&format!("{h}:")), "heading {h}:\n{help}");
        }
        for needle in [
            "<SIZE>",
            "<DURATION>",
            "<ADDR>",
            "<FILE>",
            "<N>",
            "RUST_LOG",
            "MONOIO_FORCE_LEGACY_DRIVER=1",
            "Exit status",
        ] {
            assert!(help.contains(needle), "{needle}:\n{help}");
        }
        // Every setting has a heading and (unless a switch) a value name, and --help
        // shows it (the README says it lists every flag).
        for a in cmd.get_arguments().filter(|a| is_setting(a)) {
            assert!(a.get_help_heading().is_some(), "{:?}", a.get_id());
            assert!(!a.is_hide_set(), "{:?} is hidden from --help", a.get_id());
            let long = format!("--{}", a.get_long().unwrap());
            assert!(help.contains(&long), "{long} missing from --help:\n{help}");
            assert!(
                is_switch(a) || a.get_value_names().is_some(),
                "{:?}",
                a.get_id()
            );
        }
        cmd.debug_assert();
    }
}
