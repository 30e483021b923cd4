//! Router configuration: every limit the router enforces has a value here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum AuthMode {
    /// Any user name logs in (loopback only unless explicitly allowed).
    Open,
    /// An HS256 JWT whose `sub` is the user, checked against `--jwt-secret-file`.
    Jwt,
    /// Registered accounts with passwords (Argon2id hashes in the store).
    Accounts,
}

/// When a SendResult OK may be sent (`--durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum DurabilityMode {
    /// Live deliveries stay in memory until acked; offline messages are written to the
    /// store without fsync. Survives disconnects and restarts, not a crash of the machine.
    #[default]
    Memory,
    /// Every message is in the store, group-committed with fsync, before SendResult OK
    /// (survives `kill -9`); removed once the recipient acks it.
    Sync,
}

/// What happens when an offline queue is full (`--offline-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum OfflineOverflow {
    /// The sender gets RATE_LIMITED; nothing is stored.
    #[default]
    Reject,
    /// The oldest queued messages are dropped to make room.
    DropOldest,
}

/// Who may add members to a room (`--room-add-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum RoomAddPolicy {
    /// The owner only.
    #[default]
    Owner,
    /// Any member.
    Members,
}

/// Who may send a user direct messages (`--dm-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum DmPolicy {
    /// Anyone (but users the recipient blocked).
    #[default]
    Open,
    /// Accepted contacts only; anyone else gets FORBIDDEN.
    Contacts,
}

/// Most shards. A message id could name 1022 (its shard + 1 in its top 10 bits,
/// `shard::MSG_ID_SHARD_SHIFT`); every shard has a mailbox to every other, so the
/// router stops at 256 (65 280 mailboxes), and `--shards 0` on a bigger machine too.
pub const MAX_SHARDS: usize = 256;

/// Longest `--busy-poll`: a shard that polls longer than this after each read is one that
/// never sleeps.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(100);

/// Everything the router needs to start. `Config::default()` is the embedded
/// default the bare `ringrouter` command runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address every shard listens on (SO_REUSEPORT); port 0 picks a free port.
    pub listen: SocketAddr,
    /// Number of shards (threads); 0 means one per available core.
    pub shards: usize,
    /// Largest frame body accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Largest message payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Bound on a session's outbound queue, in bytes.
    pub max_pending_bytes: usize,
    /// How long a session may stay over `max_pending_bytes` before it is closed as a slow consumer.
    pub slow_consumer_timeout: Duration,
    /// A session idle this long is pinged.
    pub heartbeat_interval: Duration,
    /// A pinged session that stays silent this long is closed.
    pub heartbeat_timeout: Duration,
    /// A connection must log in within this time.
    pub login_timeout: Duration,
    /// Longest a graceful shutdown waits for queues to flush.
    pub shutdown_timeout: Duration,
    /// Most connections open at once (logged in or not), over all shards.
    pub max_connections: usize,
    /// Most connections open at once from one address (IPv4, or an IPv6 /64); 0: no
    /// per-address limit. Behind a proxy every client has the proxy's address.
    pub max_connections_per_ip: usize,
    /// Most sessions (devices) one user may have at once.
    pub max_sessions_per_user: usize,
    /// Payloads up to this size are copied into the session's contiguous write
    /// buffer; larger ones are written from the sender's read buffer (writev). Default
    /// 256: copying a small payload costs less than a reference to it and two iovecs per
    /// message (BENCHMARKS.md, issue 13); 0 writes every payload by reference.
    pub inline_payload_max: usize,
    /// Authentication mode.
    pub auth: AuthMode,
    /// HS256 secret file for `AuthMode::Jwt`.
    pub jwt_secret_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); with `tls_key`, TLS on every listener.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Threads TLS handshakes run on, below the shards' priority (0: one per two
    /// cores, at least one).
    pub tls_handshake_threads: usize,
    /// Most TLS handshake steps queued or running; past it a new connection's
    /// handshake is refused (the connection closed).
    pub max_tls_handshakes: usize,
    /// Most of those steps one address (IPv4, or an IPv6 /64) may hold; past it a new
    /// connection's handshake from that address is refused like past
    /// `max_tls_handshakes`. 0: no per-address bound.
    pub max_tls_handshakes_per_ip: usize,
    /// Most bytes a TLS client may send before its handshake is done.
    pub max_tls_handshake_bytes: usize,
    /// Allow open auth on a non-loopback address.
    pub allow_open_auth_on_public: bool,
    /// Pin each shard thread to a core.
    pub pin_threads: bool,
    /// How long a shard keeps polling for work after its last before it sleeps
    /// (`--busy-poll`; zero: off).
    pub busy_poll: Duration,
    /// Directory of the embedded store (accounts, rooms, offline queues).
    pub data_dir: PathBuf,
    /// When SendResult OK is sent: see [`DurabilityMode`].
    pub durability: DurabilityMode,
    /// Most messages in one user's offline queue.
    pub max_offline_per_user: u64,
    /// What a full offline queue does.
    pub offline_overflow: OfflineOverflow,
    /// How long after a session ends its resume token stays valid.
    pub resume_window: Duration,
    /// Most ended sessions one shard keeps resumable (the one that ended first goes first).
    pub max_resumable_sessions: usize,
    /// How long what an ended session gave back to its user's offline queue is
    /// remembered, so that other devices' copies of it are not queued again (0: off).
    pub requeue_dedup_window: Duration,
    /// Most delivered-but-unacked messages one session may hold; past it the session is
    /// closed as a slow consumer (its unacked messages go to the offline queue).
    pub max_unacked_per_session: usize,
    /// Most requests one session may have waiting on the store; past it its reader waits.
    pub max_requests_in_flight: u32,
    /// Most rooms one user may be a member of.
    pub max_rooms_per_user: usize,
    /// Most members in one room.
    pub max_members_per_room: usize,
    /// Members of the rooms one shard keeps loaded, summed (about 270 B each): past it,
    /// the idle rooms are dropped from memory, the least recently used first.
    pub max_loaded_room_members: usize,
    /// Above this many members, a room's joined / left / removed events go to the
    /// member concerned and the owner only.
    pub room_events_max_members: usize,
    /// Live-only deliveries (typing indicators, read receipts) one room makes per second,
    /// each frame costing its member count; past it such a frame is refused RATE_LIMITED.
    pub room_live_per_second: u64,
    /// Live-only deliveries one user's frames make per second in the rooms of one shard
    /// (ten seconds' worth saved up); 0: no limit but the room's.
    pub room_live_per_user_per_second: u64,
    /// Live-only deliveries (sessions reached) one user's typing indicators and read
    /// receipts to users homed on one shard, and the copies of its direct messages and
    /// receipts for its own other devices, may make per second (ten seconds' worth saved
    /// up); 0: no limit.
    pub direct_live_per_user_per_second: u64,
    /// Who may add members to a room.
    pub room_add_policy: RoomAddPolicy,
    /// Most users one user may add to rooms a minute (initial members and AddMember),
    /// a burst of as many; past it RATE_LIMITED (see `shard::adds`).
    pub max_member_adds_per_minute: u32,
    /// Most contact ops (request, accept, decline, remove, block, unblock) one user may
    /// make a minute, a burst of as many; past it RATE_LIMITED (see `shard::adds`).
    pub max_contact_ops_per_minute: u32,
    /// Who may send a user direct messages.
    pub dm_policy: DmPolicy,
    /// Most entries (accepted, pending either way, blocked) in one contact list.
    pub max_contacts_per_user: usize,
    /// Most contact requests waiting for one user's answer.
    pub max_contact_requests: usize,
    /// Removed entries one contact list remembers for "changed since" (older ones make
    /// a device fetch the whole list).
    pub max_contact_tombstones: usize,
    /// Most of the users that block one user kept in memory with its list (the first
    /// by name); past them a DM, receipt or room add to another peer reads the store
    /// for that peer once (`shard::blocks`).
    pub max_loaded_blockers: usize,
    /// Longest presence text, in bytes.
    pub max_presence_text_bytes: usize,
    /// Most names one ListUsers answers.
    pub list_users_page: usize,
    /// Messages kept per conversation (DM pair or room); 0: history off.
    pub history_per_conversation: u64,
    /// History older than this is dropped; `None`: kept whatever its age.
    pub history_max_age: Option<Duration>,
    /// Most bytes of history kept per conversation on disk (0: no byte bound): with
    /// large messages this bound comes before `history_per_conversation`.
    pub history_max_bytes_per_conversation: u64,
    /// Durability memory: bytes of history the storage thread holds before writing it
    /// (0: written in the round that appended it).
    pub history_memory_bytes: usize,
    /// Durability memory: history held in memory is written at least this often.
    pub history_flush_every: Duration,
    /// Bytes the history tails of hot conversations (through their
    /// `history_per_conversation` twice within `history_flush_every`) may hold past
    /// `history_memory_bytes`: what their window drops meanwhile is never written.
    pub history_hot_memory_bytes: usize,
    /// Most messages in one History answer (and conversations in one ListConversations
    /// answer); a larger `limit` is BAD_REQUEST.
    pub history_page_max: u32,
    /// History, ListConversations, MarkRead, ListRooms and ListUsers requests one shard
    /// has at the store at once; more wait in the shard, taking turns by user
    /// (`shard::store_link::PageReads`).
    pub max_page_reads_in_flight: u32,
    /// Most history chunks one lookup of a msg_id reads (a History `before` that no
    /// recent page ended at, a MarkRead) among those whose msg_id ranges may hold it.
    /// Past it the id counts as not found.
    pub history_lookup_chunks: usize,
    /// Cheapest legal Argon2id parameters (tests and benchmarks only).
    pub argon2_cheap: bool,
    /// Most password hashes (Register, password Login, room passwords) queued or running;
    /// past it such requests get RATE_LIMITED instead of queueing. Registers get at most a
    /// quarter of it (rounded up), and the pool checks passwords before it hashes new ones,
    /// so a login waits for at most this many checks ahead of it and one hash per hashing
    /// thread: at the default 64 and ≈ 35 ms a hash, ≈ 2.3 s on one thread, well under
    /// `login_timeout` (10 s). Keep it below `login_timeout` / the hash time / 2.
    pub max_password_jobs: u64,
    /// Most payload bytes one session may hold delivered and not yet acked; past it the
    /// session is closed as a slow consumer (what it holds goes to its offline queue).
    pub max_unacked_bytes_per_session: usize,
    /// Most bytes of store requests (payloads included) one shard may have queued for the
    /// storage thread; past it the shard's readers pause.
    pub max_store_queue_bytes: usize,
    /// Most bytes one shard may hold of what ended sessions left unacked, waiting for
    /// the store (`shard::requeue`); past it the shard's readers pause.
    pub max_requeue_bytes: usize,
    /// Free bytes the data directory's filesystem must keep; under it the store is full
    /// (`store::disk`): new offline messages are refused, history is not written.
    /// 0: no floor.
    pub min_free_disk_bytes: u64,
    /// Most bytes one shard's connections may hold of client frames still arriving (each
    /// counted from 16 KiB); past it the connections whose frame began first are closed
    /// (`shard::input`).
    pub max_input_bytes: usize,
    /// Resident memory past which each shard closes the sessions holding the most
    /// (`shard::memory`); 0: none.
    pub max_memory: usize,
    /// Most payload bytes in one user's offline queue (same overflow policy as the count).
    pub max_offline_bytes_per_user: u64,
    /// A user record of open/jwt auth with nothing queued, no rooms and no contacts, not
    /// seen for this long, is forgotten.
    pub forget_idle_users_after: Duration,
    /// Largest frame accepted before Login (Login, Register, Ping), in bytes; a larger
    /// one is answered TOO_LARGE and closes the connection.
    pub max_prelogin_frame_bytes: usize,
    /// Most failed logins on one connection: the last one's LoginResult is followed by
    /// Error UNAUTHORIZED and the connection is closed.
    pub max_failed_logins: u32,
    /// Most refused password Logins per user name a minute, from any connection or
    /// address (a token bucket: this many at once); past it a Login for the name is
    /// refused RATE_LIMITED before its password is checked. 0: no limit.
    pub max_failed_logins_per_user: u32,
    /// Most wrong room passwords (JoinRoom) of one user a minute, in every room
    /// (a token bucket: this many at once); past it the user's password joins are
    /// refused RATE_LIMITED before the password is checked. 0: no limit.
    pub max_failed_room_joins_per_user: u32,
    /// Most wrong passwords for one room a minute, from every user together; past it
    /// joins of the room with a password are refused RATE_LIMITED before the password is
    /// checked. 0: no limit.
    pub max_failed_room_joins_per_room: u32,
    /// Most Registers one connection may send before its Login: past it each is answered
    /// RATE_LIMITED (one connection created accounts as fast as passwords hashed).
    pub max_registrations_per_connection: u32,
    /// Most Registers from one address (IPv4, or an IPv6 /64) per `registration_window`
    /// (a token bucket: this many at once, then one every window / this many); past it
    /// RATE_LIMITED. Behind a proxy every client has the proxy's address.
    pub max_registrations_per_ip: u32,
    /// The window of `max_registrations_per_ip`; zero turns that limit off.
    pub registration_window: Duration,
    /// Most Registers a second from everyone together (a token bucket of this many);
    /// past it RATE_LIMITED.
    pub max_registrations_per_second: u32,
    /// Clock skew allowed when checking a JWT's `exp`, `nbf` and `iat`.
    pub jwt_leeway: Duration,
    /// Address of the HTTP port (health, metrics, WebSocket, the browser page, the
    /// backend API), one SO_REUSEPORT listener per shard; `None`: no HTTP port.
    pub http_listen: Option<SocketAddr>,
    /// File holding the bearer key of the backend API (`/api/v1/...`); `None`: the API
    /// is off (its paths answer 404).
    pub api_key_file: Option<PathBuf>,
    /// Largest HTTP request head (request line and headers); a larger one is answered
    /// 431 and the connection is closed.
    pub http_max_head_bytes: usize,
    /// Largest HTTP request body; a larger one is answered 413 and the connection is
    /// closed.
    pub http_max_body_bytes: usize,
    /// An HTTP connection must send a whole request (head and body) within this time
    /// once it is waiting for one: an idle keep-alive connection is closed, a partial
    /// request (slowloris) is answered 408 and closed. Also bounds writing an answer.
    pub http_idle_timeout: Duration,
    /// Most bytes of HTTP answers one shard holds not yet written (peers that do not read
    /// their answers); past it a request is answered 503 and its connection closed, and
    /// past half of it an answer must be written within a second.
    pub http_max_unsent_bytes: usize,
    /// Longest an API request waits for the shards and the store to answer (503 past it).
    pub http_api_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            shards: 0,
            max_frame_bytes: ringrouter_proto::DEFAULT_MAX_FRAME_BYTES,
            max_payload_bytes: ringrouter_proto::DEFAULT_MAX_FRAME_BYTES - 1024,
            max_pending_bytes: 8 << 20,
            slow_consumer_timeout: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
            max_connections: 100_000,
            max_connections_per_ip: 0,
            max_sessions_per_user: 64,
            inline_payload_max: 256,
            auth: AuthMode::Open,
            jwt_secret_file: None,
            tls_cert: None,
            tls_key: None,
            tls_handshake_threads: 0,
            max_tls_handshakes: 256,
            max_tls_handshakes_per_ip: 32,
            max_tls_handshake_bytes: 16 << 10,
            allow_open_auth_on_public: false,
            pin_threads: true,
            busy_poll: Duration::ZERO,
            data_dir: PathBuf::from("./data"),
            durability: DurabilityMode::Memory,
            max_offline_per_user: 100_000,
            offline_overflow: OfflineOverflow::Reject,
            max_unacked_per_session: 262_144,
            max_requests_in_flight: 16,
            resume_window: Duration::from_secs(60),
            requeue_dedup_window: Duration::from_secs(30),
            max_resumable_sessions: 100_000,
            max_rooms_per_user: 1_000,
            max_members_per_room: 10_000,
            max_loaded_room_members: 1_000_000,
            room_events_max_members: 1_000,
            room_live_per_second: 200_000,
            room_live_per_user_per_second: 20_000,
            direct_live_per_user_per_second: 20_000,
            room_add_policy: RoomAddPolicy::Owner,
            max_member_adds_per_minute: 600,
            max_contact_ops_per_minute: 5_000,
            dm_policy: DmPolicy::Open,
            max_contacts_per_user: 5_000,
            max_contact_requests: 500,
            max_contact_tombstones: 1_000,
            max_loaded_blockers: 1_024,
            max_presence_text_bytes: 256,
            list_users_page: 1_000,
            history_per_conversation: 10_000,
            history_max_age: None,
            history_max_bytes_per_conversation: 64 << 20,
            history_memory_bytes: 32 << 20,
            history_flush_every: Duration::from_secs(1),
            history_hot_memory_bytes: 256 << 20,
            history_page_max: 500,
            max_page_reads_in_flight: 4,
            history_lookup_chunks: crate::store::LOOKUP_CHUNKS_DEFAULT,
            argon2_cheap: false,
            max_password_jobs: 64,
            max_unacked_bytes_per_session: 64 << 20,
            max_store_queue_bytes: 64 << 20,
            max_requeue_bytes: 256 << 20,
            min_free_disk_bytes: 256 << 20,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            max_memory: auto_max_memory().unwrap_or(0),
            max_offline_bytes_per_user: 256 << 20,
            forget_idle_users_after: Duration::from_secs(30 * 24 * 3600),
            max_prelogin_frame_bytes: 16 << 10,
            max_failed_logins: 3,
            max_failed_logins_per_user: 10,
            max_failed_room_joins_per_user: 10,
            max_failed_room_joins_per_room: 60,
            max_registrations_per_connection: 3,
            max_registrations_per_ip: 30,
            registration_window: Duration::from_secs(600),
            max_registrations_per_second: 20,
            jwt_leeway: Duration::from_secs(30),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7880))),
            api_key_file: None,
            http_max_head_bytes: 16 << 10,
            http_max_body_bytes: 1 << 20,
            http_idle_timeout: Duration::from_secs(15),
            http_max_unsent_bytes: 16 << 20,
            http_api_timeout: Duration::from_secs(5),
        }
    }
}

/// The smallest `--http-max-head-bytes` the router starts with (a request line and a
/// few headers).
pub(crate) const MIN_HEAD_BYTES: usize = 256;

impl Config {
    /// The checks of this configuration that need neither a file nor a socket (what
    /// `Router::start` refuses before it reads or binds anything; `--print-config` too):
    /// the message names the flags.
    pub fn check(&self) -> Result<(), String> {
        // Both ports take logins (the HTTP port's `/ws`): neither may be public with
        // open auth unless that is asked for.
        let public = std::iter::once(self.listen)
            .chain(self.http_listen)
            .find(|a| !a.ip().is_loopback());
        if let Some(addr) =
            public.filter(|_| self.auth == AuthMode::Open && !self.allow_open_auth_on_public)
        {
            return Err(format!(
                "refusing to listen on non-loopback address {addr} with --auth open (anyone could log in as anyone); \
                 use --auth jwt, or pass --allow-open-auth-on-public"
            ));
        }
        if self.max_payload_bytes >= self.max_frame_bytes {
            return Err(format!(
                "--max-payload-bytes ({}) must be smaller than --max-frame-bytes ({}): a Send \
                 frame holds the payload and its header",
                self.max_payload_bytes, self.max_frame_bytes
            ));
        }
        if self.max_payload_bytes == 0 {
            return Err(format!(
                "--max-payload-bytes is 0: no message could be sent (unset, it is \
                 --max-frame-bytes minus 1 KiB; --max-frame-bytes is {})",
                self.max_frame_bytes
            ));
        }
        // A WebSocket message is held twice as it completes (in its decoder, then as
        // the frame it carries): a budget under two frames could close every sender of
        // a frame at the bound.
        if self.max_input_bytes < self.max_frame_bytes.saturating_mul(2) {
            return Err(format!(
                "--max-input-bytes ({}) must be at least twice --max-frame-bytes ({}): \
                 a frame being read must fit in it",
                self.max_input_bytes, self.max_frame_bytes
            ));
        }
        if self.max_memory != 0 && self.max_memory < MIN_MAX_MEMORY {
            return Err(format!(
                "--max-memory must be 0 (none), auto, or at least {} MiB: the router \
                 itself takes tens of MiB",
                MIN_MAX_MEMORY >> 20
            ));
        }
        if self.http_max_head_bytes < MIN_HEAD_BYTES {
            return Err(format!(
                "--http-max-head-bytes must be at least {} bytes",
                MIN_HEAD_BYTES
            ));
        }
        if self.max_tls_handshake_bytes < MIN_TLS_HANDSHAKE_BYTES {
            return Err(format!(
                "--max-tls-handshake-bytes must be at least {} KiB: a client's first \
                 handshake flight (its ClientHello) takes a few KiB",
                MIN_TLS_HANDSHAKE_BYTES >> 10
            ));
        }
        if self.busy_poll > MAX_BUSY_POLL {
            return Err(format!("--busy-poll is at most {MAX_BUSY_POLL:?}"));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key go together".into());
        }
        if self.auth == AuthMode::Jwt && self.jwt_secret_file.is_none() {
            return Err("--auth jwt needs --jwt-secret-file".into());
        }
        if self.effective_shards() > MAX_SHARDS {
            return Err(format!("at most {MAX_SHARDS} shards"));
        }
        if self.max_prelogin_frame_bytes == 0 {
            return Err(
                "--max-prelogin-frame-bytes is 0: no Login or Register could be read".into(),
            );
        }
        if self.history_page_max == 0 && self.history_per_conversation > 0 {
            return Err(
                "--history-page-max is 0: no History or ListConversations page could be answered \
                 (turn history off with --history-per-conversation 0)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The bound on a frame before login: `max_prelogin_frame_bytes`, and never more
    /// than `max_frame_bytes` (the bound on every frame; the pre-login one only lowers it).
    pub fn prelogin_frame_bytes(&self) -> usize {
        self.max_prelogin_frame_bytes.min(self.max_frame_bytes)
    }

    /// Hard cap on a session's outbound queue. Past `max_pending_bytes`, every
    /// sender feeding the session stops being read (same shard: at once; other
    /// shards: when their Pause arrives), while the rings between shards keep
    /// flowing for everyone else. What was already in flight still lands, up to
    /// this cap (twice the bound, and at least the bound plus 32 MiB: a Pause
    /// reaches a busy sender shard after a few milliseconds, and a loopback sender
    /// moves several MB in that time); past it the session is closed as a slow
    /// consumer.
    pub fn hard_pending_bytes(&self) -> usize {
        self.max_pending_bytes
            .saturating_mul(2)
            .max(self.max_pending_bytes.saturating_add(32 << 20))
    }

    /// The shard count to run: `shards`, or one per available core (at most
    /// [`MAX_SHARDS`]) when 0. `Router::start` refuses more than [`MAX_SHARDS`].
    pub fn effective_shards(&self) -> usize {
        if self.shards > 0 {
            // (Over the bound it is refused at start, not cut down unsaid.)
            return self.shards;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(MAX_SHARDS)
    }
}

/// `--max-input-bytes` unless set (or twice `--max-frame-bytes`, if more).
pub const DEFAULT_MAX_INPUT_BYTES: usize = 256 << 20;

/// The lowest `--max-tls-handshake-bytes` taken: under it, clients whose ClientHello
/// carries a post-quantum key share (~1.9 KB) and many extensions could not connect.
pub const MIN_TLS_HANDSHAKE_BYTES: usize = 4 << 10;

/// The lowest `--max-memory` taken (but 0: none).
pub const MIN_MAX_MEMORY: usize = 64 << 20;

/// The default ceiling: 80% of the memory the router may use (the machine's, or its
/// cgroup's limit if lower). `None` if neither can be read.
pub fn auto_max_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let total = meminfo.as_deref().and_then(|m| {
        let kib: usize = m
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib.saturating_mul(1024))
    });
    // cgroup v2, else v1 (whose "no limit" is a huge number: the machine's is lower).
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| {
        std::fs::read_to_string(p)
            .ok()?
            .trim()
            .parse::<usize>()
            .ok()
    });
    let limit = match (total, cgroup) {
        (Some(t), Some(c)) => t.min(c),
        (t, c) => t.or(c)?,
    };
    Some(limit / 5 * 4)
}
