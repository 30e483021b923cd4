//! The `ringrouter` command line: flags (clap) over [`Config`], then run until
//! SIGTERM / Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{
    parse_bytes, parse_duration, AuthMode, Config, DurabilityMode, OfflineOverflow,
};

/// ringrouter: a thread-per-core io_uring message router for chat / IM.
#[derive(Debug, Parser)]
#[command(name = "ringrouter", version)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// Number of shards (threads, one per core); 0 = one per available core.
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// Largest frame accepted (bytes; 64k, 1MiB, ...).
    #[arg(long, value_parser = parse_bytes, default_value = "1MiB")]
    pub max_frame_bytes: usize,
    /// Largest message payload accepted (default: max-frame-bytes minus 1 KiB).
    #[arg(long, value_parser = parse_bytes)]
    pub max_payload_bytes: Option<usize>,
    /// Bound on one session's outbound queue: past it, local senders pause (TCP backpressure);
    /// at twice it, or after --slow-consumer-timeout over it, the session is closed as a slow consumer.
    #[arg(long, value_parser = parse_bytes, default_value = "8MiB")]
    pub max_pending_bytes: usize,
    /// How long a session may stay over --max-pending-bytes before it is closed as a slow consumer.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub slow_consumer_timeout: Duration,
    /// Idle sessions are pinged this often.
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    pub heartbeat_interval: Duration,
    /// A pinged session silent this long is closed (default: 2 x heartbeat interval).
    #[arg(long, value_parser = parse_duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// A connection must log in within this time.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub login_timeout: Duration,
    /// Graceful shutdown waits at most this long for queues to flush.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub shutdown_timeout: Duration,
    /// Most open connections.
    #[arg(long, default_value_t = 100_000)]
    pub max_connections: usize,
    /// Most sessions (devices) per user.
    #[arg(long, default_value_t = 64)]
    pub max_sessions_per_user: usize,
    /// Payloads up to this size are copied into the recipient's write buffer;
    /// larger ones are written straight from the sender's read buffer (writev).
    #[arg(long, value_parser = parse_bytes, default_value = "0")]
    pub inline_payload_max: usize,
    /// Authentication: open (any user name; loopback only), jwt, or accounts (Register + password).
    #[arg(long, value_enum, default_value_t = AuthMode::Open)]
    pub auth: AuthMode,
    /// File holding the HS256 secret for --auth jwt.
    #[arg(long)]
    pub jwt_secret_file: Option<PathBuf>,
    /// Allow --auth open on a non-loopback address.
    #[arg(long)]
    pub allow_open_auth_on_public: bool,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Directory of the embedded store (accounts, rooms, offline queues); created if missing.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// memory: unacked deliveries in memory, offline queues written without fsync;
    /// sync: every message group-committed with fsync before SendResult OK.
    #[arg(long, value_enum, default_value_t = DurabilityMode::Memory)]
    pub durability: DurabilityMode,
    /// Most messages queued for one offline user.
    #[arg(long, default_value_t = 100_000)]
    pub max_offline_per_user: u64,
    /// A full offline queue rejects new messages (the sender gets RATE_LIMITED) or drops its oldest.
    #[arg(long, value_enum, default_value_t = OfflineOverflow::Reject)]
    pub offline_overflow: OfflineOverflow,
    /// Most delivered-but-unacked messages per session; past it the session is closed as a
    /// slow consumer and its unacked messages are queued for its next login.
    #[arg(long, default_value_t = 262_144)]
    pub max_unacked_per_session: usize,
    /// Most rooms one user may be a member of.
    #[arg(long, default_value_t = 1_000)]
    pub max_rooms_per_user: usize,
    /// Most members in one room.
    #[arg(long, default_value_t = 10_000)]
    pub max_members_per_room: usize,
    /// Most names one ListUsers answers.
    #[arg(long, default_value_t = 1_000)]
    pub list_users_page: usize,
    /// Leave transparent huge pages on for the router's memory (default: off, see
    /// BENCHMARKS.md: THP page zeroing cost 10-40% of CPU with many sessions).
    #[arg(long, hide = true)]
    pub allow_thp: bool,
    /// Cheapest Argon2id parameters (for tests and benchmarks; never in production).
    #[arg(long, hide = true)]
    pub argon2_cheap: bool,
    /// Most password hashes (Register, password Login, room passwords) queued or running;
    /// past it those requests are refused with RATE_LIMITED.
    #[arg(long, default_value_t = 256)]
    pub max_password_jobs: u64,
    /// Most payload bytes one session may hold delivered and not acked; past it the session
    /// is closed as a slow consumer and what it holds is queued for its next login.
    #[arg(long, value_parser = parse_bytes, default_value = "64MiB")]
    pub max_unacked_bytes_per_session: usize,
    /// Most bytes of store requests one shard may have queued for the storage thread;
    /// past it the readers feeding it pause (TCP backpressure).
    #[arg(long, value_parser = parse_bytes, default_value = "64MiB")]
    pub max_store_queue_bytes: usize,
    /// Most payload bytes queued for one offline user (--offline-overflow applies).
    #[arg(long, value_parser = parse_bytes, default_value = "256MiB")]
    pub max_offline_bytes_per_user: usize,
    /// Open/jwt auth: a user with nothing queued and no rooms, not seen this long, is forgotten.
    #[arg(long, value_parser = parse_duration, default_value = "30d")]
    pub forget_idle_users_after: Duration,
    /// Largest frame accepted before Login; a larger one gets TOO_LARGE and the connection closes.
    #[arg(long, value_parser = parse_bytes, default_value = "16KiB")]
    pub max_prelogin_frame_bytes: usize,
    /// Most failed logins on one connection: the last one is answered, then the connection
    /// gets Error UNAUTHORIZED and is closed.
    #[arg(long, default_value_t = 3)]
    pub max_failed_logins: u32,
    /// Clock skew allowed when checking a JWT's exp, nbf and iat.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub jwt_leeway: Duration,
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
            max_sessions_per_user: self.max_sessions_per_user,
            inline_payload_max: self.inline_payload_max,
            auth: self.auth,
            jwt_secret_file: self.jwt_secret_file,
            allow_open_auth_on_public: self.allow_open_auth_on_public,
            pin_threads: !self.no_pin,
            data_dir: self.data_dir,
            durability: self.durability,
            max_offline_per_user: self.max_offline_per_user,
            offline_overflow: self.offline_overflow,
            max_unacked_per_session: self.max_unacked_per_session,
            max_rooms_per_user: self.max_rooms_per_user,
            max_members_per_room: self.max_members_per_room,
            list_users_page: self.list_users_page,
            argon2_cheap: self.argon2_cheap,
            max_password_jobs: self.max_password_jobs,
            max_unacked_bytes_per_session: self.max_unacked_bytes_per_session,
            max_store_queue_bytes: self.max_store_queue_bytes,
            max_offline_bytes_per_user: self.max_offline_bytes_per_user as u64,
            forget_idle_users_after: self.forget_idle_users_after,
            max_prelogin_frame_bytes: self.max_prelogin_frame_bytes,
            max_failed_logins: self.max_failed_logins,
            jwt_leeway: self.jwt_leeway,
        }
    }
}

/// Runs the router from the command line; returns the process exit code.
pub fn main() -> i32 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args = Args::parse();
    if !args.allow_thp {
        crate::alloc::tune_mimalloc();
    }
    let cfg = args.into_config();
    let handle = match crate::Router::start(cfg) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ringrouter: {e}");
            return 2;
        }
    };
    println!(
        "ringrouter listening on {} ({} shards, {})",
        handle.local_addr(),
        handle.shards(),
        handle.driver()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringrouter: cannot install signal handlers: {e}");
            return 1;
        }
    };
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    let stats = handle.stats();
    let clean = handle.shutdown();
    tracing::info!(?stats, clean, "stopped");
    0
}
