//! Counters: plain integers on the hot path, published to atomics on every tick
//! so other threads (tests, the process at exit) can read them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A shard's counters, owned by the shard thread.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Send frames received.
    pub msgs_in: u64,
    /// Deliver frames queued (one per recipient session).
    pub delivered: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// Sessions registered.
    pub logins: u64,
    /// Connections moved in from another shard.
    pub handovers_in: u64,
    /// Frames refused with an error.
    pub frames_rejected: u64,
    /// Sessions closed as slow consumers.
    pub slow_consumer_closes: u64,
    /// Sessions closed for heartbeat timeout.
    pub heartbeat_closes: u64,
    /// Payload bytes written by reference (zero copy).
    pub payload_zero_copy_bytes: u64,
    /// Payload bytes copied into a write buffer.
    pub payload_copied_bytes: u64,
    /// writev calls.
    pub writes: u64,
    /// Messages appended to an offline queue because the recipient had no session.
    pub offline_stored: u64,
    /// Messages appended to the store before delivery (sync durability).
    pub journaled: u64,
    /// Messages delivered from an offline queue at login.
    pub offline_delivered: u64,
    /// Unacked messages moved to the offline queue when their session ended.
    pub requeued: u64,
    /// Room messages accepted (each fans out to the members' sessions).
    pub room_msgs: u64,
}

macro_rules! shard_stats {
    ($($f:ident),* $(,)?) => {
        /// Published counters of one shard (see [`Counters`] for the meaning of each).
        #[derive(Debug, Default)]
        #[allow(missing_docs)]
        pub struct ShardStats {
            $(pub $f: AtomicU64,)*
            pub sessions: AtomicU64,
        }

        /// A snapshot summed over shards.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub struct StatsSnapshot {
            $(pub $f: u64,)*
            pub sessions: u64,
        }

        impl ShardStats {
            /// Copies `c` in.
            pub fn publish(&self, c: &Counters, sessions: usize) {
                $(self.$f.store(c.$f, Relaxed);)*
                self.sessions.store(sessions as u64, Relaxed);
            }

            /// Adds this shard's figures to `s`.
            pub fn add_to(&self, s: &mut StatsSnapshot) {
                $(s.$f += self.$f.load(Relaxed);)*
                s.sessions += self.sessions.load(Relaxed);
            }
        }

        impl StatsSnapshot {
            /// Logs every counter as a field of one `stopped` line (at exit).
            pub fn log_stopped(&self, clean: bool) {
                tracing::info!(clean, $($f = self.$f,)* sessions = self.sessions, "stopped");
            }
        }
    };
}

shard_stats!(
    msgs_in,
    delivered,
    bytes_out,
    logins,
    handovers_in,
    frames_rejected,
    slow_consumer_closes,
    heartbeat_closes,
    payload_zero_copy_bytes,
    payload_copied_bytes,
    writes,
    offline_stored,
    journaled,
    offline_delivered,
    requeued,
    room_msgs,
);
