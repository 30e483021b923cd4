//! Counters: plain integers on the hot path, published to atomics on every tick
//! so other threads (tests, the process at exit) can read them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use ringrouter_proto::Status;

/// Status codes counted per code (the values of [`Status`], 0 to 13).
pub const STATUS_CODES: usize = 14;

/// Upper bounds (µs, inclusive) of the delivery latency histogram's buckets; one more
/// bucket counts what is above the last.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// Buckets of [`LatencyHist`]: one per bound, and `+Inf`.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// Accept-to-write delivery latency: from the Send frame read to the writev that wrote
/// the Deliver, recorded once per writev batch (the batch's oldest live delivery).
/// Shard-local fixed buckets, published on the tick.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LatencyHist {
    /// Count per bucket (not cumulative); the last is above every bound.
    pub buckets: [u64; LATENCY_BUCKETS],
    /// Sum of the recorded values, µs.
    pub sum_us: u64,
    /// Values recorded.
    pub count: u64,
}

impl LatencyHist {
    /// Records one value.
    #[inline]
    pub fn record(&mut self, us: u64) {
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i] += 1;
        self.sum_us += us;
        self.count += 1;
    }
}

/// The index of a status code in the per-status counters.
#[inline]
fn status_index(s: Status) -> usize {
    (s as usize).min(STATUS_CODES - 1)
}

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
    /// Sessions closed past `--max-input-bytes` (their big frame began first).
    pub input_budget_closes: u64,
    /// Sessions closed over `--max-memory` (they held the most).
    pub memory_closes: u64,
    /// JoinRooms whose room password was not checked: their session had ended.
    pub room_password_checks_dropped: u64,
    /// Payload bytes written by reference (zero copy).
    pub payload_zero_copy_bytes: u64,
    /// Payload bytes copied into a write buffer.
    pub payload_copied_bytes: u64,
    /// writev calls.
    pub writes: u64,
    /// Writes cancelled after waiting on a peer past `retention::PIN_MAX_US` while they
    /// held small payloads by reference; their batches were compacted.
    pub writes_compacted: u64,
    /// Messages appended to an offline queue because the recipient had no session.
    pub offline_stored: u64,
    /// Messages appended to the store before delivery (sync durability).
    pub journaled: u64,
    /// Messages delivered from an offline queue at login.
    pub offline_delivered: u64,
    /// Unacked messages moved to the offline queue when their session ended.
    pub requeued: u64,
    /// Unacked messages of ended sessions dropped before the store, past the requeue
    /// ceiling (the queue would have dropped them).
    pub requeue_dropped: u64,
    /// Room messages accepted (each fans out to the members' sessions).
    pub room_msgs: u64,
    /// Bytes read from sessions' sockets.
    pub bytes_in: u64,
    /// Messages published through the HTTP API (`POST /api/v1/publish`).
    pub api_publishes: u64,
    /// Sessions resumed with a resume token.
    pub resumes: u64,
    /// Sends dropped as copies of ones already taken (resume, by client_seq).
    pub duplicate_sends: u64,
    /// Peers read from the store to learn whether they block a user whose blockers are
    /// not all loaded (`--max-loaded-blockers`, `shard::blocks`).
    pub blocker_lookups: u64,
    /// Typing indicators and read receipts to a user, and copies of a user's direct
    /// messages and receipts for its other devices, dropped: their sender's direct live
    /// deliveries were spent (`--direct-live-per-user-per-second`).
    pub direct_live_refused: u64,
    /// Refused logins, per status code (successful ones are `logins`).
    pub login_failures: [u64; STATUS_CODES],
    /// Error answers and refusals (the frames counted in `frames_rejected`), per status code.
    pub errors: [u64; STATUS_CODES],
    /// Accept-to-write delivery latency.
    pub latency: LatencyHist,
}

impl Counters {
    /// Counts a refused frame (an Error or a refusal answer) with its status.
    #[inline]
    pub fn reject(&mut self, status: Status) {
        self.frames_rejected += 1;
        self.errors[status_index(status)] += 1;
    }

    /// Counts a refused login with its status.
    pub fn login_failed(&mut self, status: Status) {
        self.login_failures[status_index(status)] += 1;
    }
}

macro_rules! shard_stats {
    (counters: $($f:ident),* $(,)?; gauges: $($(#[$gdoc:meta])* $g:ident),* $(,)?) => {
        /// Levels of a shard's queues, published with its counters.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Gauges {
            $($(#[$gdoc])* pub $g: u64,)*
        }

        /// Published counters of one shard (see [`Counters`] for the meaning of each).
        #[derive(Debug, Default)]
        #[allow(missing_docs)]
        pub struct ShardStats {
            $(pub $f: AtomicU64,)*
            $(pub $g: AtomicU64,)*
            pub login_failures: [AtomicU64; STATUS_CODES],
            pub errors: [AtomicU64; STATUS_CODES],
            pub latency_buckets: [AtomicU64; LATENCY_BUCKETS],
            pub latency_sum_us: AtomicU64,
            pub latency_count: AtomicU64,
        }

        /// A snapshot summed over shards.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub struct StatsSnapshot {
            $(pub $f: u64,)*
            $(pub $g: u64,)*
            pub login_failures: [u64; STATUS_CODES],
            pub errors: [u64; STATUS_CODES],
            pub latency: LatencyHist,
        }

        impl ShardStats {
            /// Copies `c` and `g` in.
            pub fn publish(&self, c: &Counters, g: Gauges) {
                $(self.$f.store(c.$f, Relaxed);)*
                $(self.$g.store(g.$g, Relaxed);)*
                store_all(&self.login_failures, &c.login_failures);
                store_all(&self.errors, &c.errors);
                store_all(&self.latency_buckets, &c.latency.buckets);
                self.latency_sum_us.store(c.latency.sum_us, Relaxed);
                self.latency_count.store(c.latency.count, Relaxed);
            }

            /// Adds this shard's figures to `s`.
            pub fn add_to(&self, s: &mut StatsSnapshot) {
                $(s.$f += self.$f.load(Relaxed);)*
                $(s.$g += self.$g.load(Relaxed);)*
                add_all(&mut s.login_failures, &self.login_failures);
                add_all(&mut s.errors, &self.errors);
                add_all(&mut s.latency.buckets, &self.latency_buckets);
                s.latency.sum_us += self.latency_sum_us.load(Relaxed);
                s.latency.count += self.latency_count.load(Relaxed);
            }

            /// This shard's figures alone.
            pub fn snapshot(&self) -> StatsSnapshot {
                let mut s = StatsSnapshot::default();
                self.add_to(&mut s);
                s
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

fn store_all(to: &[AtomicU64], from: &[u64]) {
    for (a, v) in to.iter().zip(from) {
        a.store(*v, Relaxed);
    }
}

fn add_all(to: &mut [u64], from: &[AtomicU64]) {
    for (v, a) in to.iter_mut().zip(from) {
        *v += a.load(Relaxed);
    }
}

shard_stats!(
    counters:
    msgs_in,
    delivered,
    bytes_out,
    logins,
    handovers_in,
    frames_rejected,
    slow_consumer_closes,
    heartbeat_closes,
    input_budget_closes,
    memory_closes,
    room_password_checks_dropped,
    payload_zero_copy_bytes,
    payload_copied_bytes,
    writes,
    writes_compacted,
    offline_stored,
    journaled,
    offline_delivered,
    requeued,
    requeue_dropped,
    room_msgs,
    bytes_in,
    api_publishes,
    resumes,
    duplicate_sends,
    blocker_lookups,
    direct_live_refused;
    gauges:
    /// Live sessions.
    sessions,
    /// Mail weight (≈ bytes) in flight to this shard from the others plus its own
    /// local mail: its mailbox depth.
    mailbox_depth,
    /// Store requests made and not answered.
    store_queue_requests,
    /// The most store requests made and not answered at once since the start (the queue's
    /// bound, `STORE_HIGH_WATER`, plus the reserve kept for sessions with nothing in it).
    store_queue_requests_peak,
    /// What they count for in bytes (see `max_store_queue_bytes`).
    store_queue_bytes,
    /// Page reads (History, ListConversations, MarkRead, ListRooms, ListUsers) waiting
    /// in the shard for their turn at the store (see `max_page_reads_in_flight`).
    page_reads_waiting,
    /// What ended sessions left unacked, waiting for the store (see `max_requeue_bytes`).
    requeue_bytes,
    /// Rooms loaded (homed here).
    rooms_loaded,
    /// Their members, summed (see `max_loaded_room_members`).
    room_members_loaded,
    /// Bytes queued for the sessions' sockets and not written yet (see
    /// `max_pending_bytes`), as of the last tick.
    pending_bytes,
    /// Deliveries the sessions keep until their clients ack them, as of the last tick.
    unacked_messages,
    /// Their payload bytes kept in memory (see `max_unacked_bytes_per_session`), as of
    /// the last tick.
    unacked_bytes,
    /// Bytes the readers hold of frames still arriving (from 16 KiB) (see
    /// `max_input_bytes`).
    input_bytes,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_inclusive_upper_bounds() {
        let mut h = LatencyHist::default();
        for us in [0, 50, 51, 5_000_000, 5_000_001, u64::MAX / 4] {
            h.record(us);
        }
        assert_eq!(h.buckets[0], 2, "0 and 50 are <= 50");
        assert_eq!(h.buckets[1], 1);
        assert_eq!(
            h.buckets[LATENCY_BUCKETS - 2],
            1,
            "5 s is in the last bound"
        );
        assert_eq!(h.buckets[LATENCY_BUCKETS - 1], 2, "above every bound");
        assert_eq!(h.count, 6);
    }

    #[test]
    fn published_figures_add_up() {
        let a = ShardStats::default();
        let b = ShardStats::default();
        let mut c = Counters::default();
        c.reject(Status::BadRequest);
        c.login_failed(Status::Unauthorized);
        c.latency.record(70);
        c.msgs_in = 3;
        a.publish(
            &c,
            Gauges {
                sessions: 2,
                ..Gauges::default()
            },
        );
        b.publish(
            &c,
            Gauges {
                mailbox_depth: 5,
                ..Gauges::default()
            },
        );
        let mut s = a.snapshot();
        b.add_to(&mut s);
        assert_eq!(s.msgs_in, 6);
        assert_eq!(s.frames_rejected, 2);
        assert_eq!(s.errors[Status::BadRequest as usize], 2);
        assert_eq!(s.login_failures[Status::Unauthorized as usize], 2);
        assert_eq!(s.latency.buckets[1], 2);
        assert_eq!(s.latency.sum_us, 140);
        assert_eq!((s.sessions, s.mailbox_depth), (2, 5));
    }
}
