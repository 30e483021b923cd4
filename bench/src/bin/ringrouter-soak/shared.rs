//! State shared by every thread of the driver: the options, the stop flag,
//! running totals, event counters and the list of anomalies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::check::SentMap;
use crate::payload::Names;
use crate::Args;

/// Anomalies kept verbatim (the rest are only counted).
const MAX_NOTES: usize = 200;

macro_rules! events {
    ($($(#[$doc:meta])* $f:ident),* $(,)?) => {
        /// Counters of what happened, for the summary.
        #[derive(Debug, Default)]
        pub struct Events {
            $($(#[$doc])* pub $f: AtomicU64,)*
        }

        impl Events {
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($f), self.$f.load(Relaxed)),)*]
            }
        }
    };
}

events! {
    /// Well-behaved logins (every device, every session).
    logins,
    /// Clean logouts (Logout frame).
    logouts,
    /// Sessions dropped without Logout by a well-behaved user (after a ping).
    drops,
    /// Offline periods of the DM users.
    offline_periods,
    /// Second-device sessions.
    second_devices,
    /// Visits to a long-lived room (join, send, leave).
    room_visits,
    /// Temporary rooms created (and joined by a buddy, and deleted).
    temp_rooms,
    /// Slow readers' stalls.
    slow_stalls,
    /// Well-behaved sessions closed by the router (or failing) unexpectedly.
    unexpected_closes,
    /// Never-reading sessions started.
    nonreader_sessions,
    /// ... closed by the router within their life.
    nonreader_closed_by_router,
    /// ... still open at the end of their life (dropped by the driver).
    nonreader_outlived,
    /// ... whose writes blocked (the router stopped reading them).
    nonreader_paused,
    /// Self-sends a never-reader wrote; how many came back at the next login.
    nonreader_self_sent,
    nonreader_self_recovered,
    /// Pings written by never-readers.
    nonreader_pings,
    /// Garbage connections opened.
    garbage_conns,
    /// ... closed by the router within their bound.
    garbage_closed_in_time,
    /// ... still open (and within their bound) when the run ended.
    garbage_open_at_end,
    /// Error frames the garbage connections got.
    garbage_error_frames,
    /// Connect + login + drop without Logout.
    churn_login_drops,
    /// Connections that never log in.
    churn_prelogin,
    /// ... closed by the router (login timeout) while the driver held them.
    churn_prelogin_closed_by_router,
    /// ... pinging without reading.
    churn_prelogin_pingers,
}

/// Anomalies: counted per category, the first few kept in full.
#[derive(Debug, Default)]
pub struct Notes {
    inner: Mutex<NotesInner>,
}

#[derive(Debug, Default)]
struct NotesInner {
    counts: BTreeMap<&'static str, u64>,
    list: Vec<String>,
}

impl Notes {
    pub fn note(&self, category: &'static str, what: String) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *g.counts.entry(category).or_default() += 1;
        if g.list.len() < MAX_NOTES {
            g.list.push(format!("[{category}] {what}"));
        }
    }

    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts
            .clone()
    }

    pub fn list(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .clone()
    }
}

/// Everything the threads share.
#[derive(Debug)]
pub struct Shared {
    pub args: Args,
    pub addr: SocketAddr,
    pub names: Names,
    /// Members of each long-lived room (user indices) and its join code.
    pub room_members: Vec<Vec<u32>>,
    pub room_codes: Vec<String>,
    pub t0: Instant,
    /// The traffic phase is over.
    pub stop: AtomicBool,
    /// Messages written by well-behaved clients.
    pub sent: AtomicU64,
    /// Deliveries received by well-behaved clients (redeliveries included).
    pub delivered: AtomicU64,
    /// DM users online (they share the DM rate).
    pub dm_online: AtomicUsize,
    pub ev: Events,
    pub notes: Notes,
    /// What every sender sent, published when it stops sending.
    pub final_sent: Mutex<SentMap>,
    /// Threads that publish and wait for each other before the final drain.
    barrier_total: usize,
    barrier_arrived: AtomicUsize,
}

impl Shared {
    pub fn new(
        args: Args,
        addr: SocketAddr,
        names: Names,
        room_members: Vec<Vec<u32>>,
        room_codes: Vec<String>,
        barrier_total: usize,
        t0: Instant,
    ) -> Shared {
        Shared {
            args,
            addr,
            names,
            room_members,
            room_codes,
            t0,
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dm_online: AtomicUsize::new(0),
            ev: Events::default(),
            notes: Notes::default(),
            final_sent: Mutex::new(SentMap::new()),
            barrier_total,
            barrier_arrived: AtomicUsize::new(0),
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    pub fn count(&self, c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Publishes what a sender sent, then waits until every participant did
    /// (at most `timeout`: a stuck thread must not hang the run).
    pub fn publish_and_wait(&self, sent: &SentMap, timeout: Duration) {
        {
            let mut g = self.final_sent.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in sent {
                let e = g.entry(*k).or_default();
                e.max = e.max.max(v.max);
                e.uncertain.extend(v.uncertain.iter().copied());
            }
        }
        self.barrier_arrived.fetch_add(1, Relaxed);
        let deadline = Instant::now() + timeout;
        while self.barrier_arrived.load(Relaxed) < self.barrier_total {
            if Instant::now() >= deadline {
                self.notes.note(
                    "driver",
                    format!(
                        "stop barrier timed out: {} of {} threads arrived",
                        self.barrier_arrived.load(Relaxed),
                        self.barrier_total
                    ),
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Seconds since the start of the run.
    pub fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
}
