//! `GET /metrics`: the Prometheus exposition (OpenMetrics text, `prometheus-client`) of
//! the counters every shard publishes on its tick (`crate::stats`) and of the store's.
//!
//! A scrape reads atomics only: it never waits for a shard. Each figure is given per
//! shard (`ringrouter_shard_<name>{shard="i"}`) and in total (`ringrouter_<name>`, the
//! sum over shards), so `sum()` over either never counts twice.

use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use ringrouter_proto::Status;

use bytes::Bytes;
use std::cell::RefCell;
use std::sync::Arc;

use crate::shared::ConnStats;
use crate::stats::{ShardStats, StatsSnapshot, LATENCY_BOUNDS_US, STATUS_CODES};
use crate::store::StoreStats;

/// The content type of [`render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Get = fn(&StatsSnapshot) -> u64;

/// Counters: (name, help, value). The exposition adds `_total`.
const COUNTERS: &[(&str, &str, Get)] = &[
    ("messages_in", "Send frames received.", |s| s.msgs_in),
    (
        "api_publishes",
        "Messages published through the HTTP API.",
        |s| s.api_publishes,
    ),
    ("resumes", "Sessions resumed with a resume token.", |s| {
        s.resumes
    }),
    (
        "duplicate_sends",
        "Sends dropped as copies of ones already taken (resume, by client_seq).",
        |s| s.duplicate_sends,
    ),
    (
        "blocker_lookups",
        "Peers read from the store to learn whether they block a user whose blockers are not all loaded (--max-loaded-blockers).",
        |s| s.blocker_lookups,
    ),
    (
        "direct_live_refused",
        "Typing indicators and read receipts to a user, and copies of a user's direct messages and receipts for its other devices, dropped: their sender's direct live deliveries were spent (--direct-live-per-user-per-second).",
        |s| s.direct_live_refused,
    ),
    (
        "room_messages",
        "Room messages accepted (before fan-out).",
        |s| s.room_msgs,
    ),
    (
        "deliveries",
        "Deliver frames queued, one per recipient session.",
        |s| s.delivered,
    ),
    ("bytes_in", "Bytes read from sessions' sockets.", |s| {
        s.bytes_in
    }),
    ("bytes_out", "Bytes written to sessions' sockets.", |s| {
        s.bytes_out
    }),
    ("writes", "writev calls of session writers.", |s| s.writes),
    (
        "writes_compacted",
        "Writes a peer did not take for 200 ms while they held small payloads by reference (their read buffers): cancelled, what was left copied.",
        |s| s.writes_compacted,
    ),
    (
        "handovers_in",
        "Connections moved in from another shard after Login.",
        |s| s.handovers_in,
    ),
    (
        "slow_consumer_closes",
        "Sessions closed as slow consumers.",
        |s| s.slow_consumer_closes,
    ),
    (
        "heartbeat_closes",
        "Sessions closed for not answering heartbeats.",
        |s| s.heartbeat_closes,
    ),
    (
        "input_budget_closes",
        "Sessions closed past --max-input-bytes: the shard held that much of frames still arriving, theirs begun first.",
        |s| s.input_budget_closes,
    ),
    (
        "memory_closes",
        "Sessions closed as slow consumers because resident memory was over --max-memory (they held the most).",
        |s| s.memory_closes,
    ),
    (
        "room_password_checks_dropped",
        "JoinRooms of a room with a password whose session had ended before the password was checked: answered without a hash.",
        |s| s.room_password_checks_dropped,
    ),
    (
        "offline_stored",
        "Messages stored for a recipient with no session.",
        |s| s.offline_stored,
    ),
    (
        "offline_delivered",
        "Messages delivered from offline queues at login.",
        |s| s.offline_delivered,
    ),
    (
        "requeued",
        "Unacked messages queued again when their session ended.",
        |s| s.requeued,
    ),
    (
        "requeue_dropped",
        "Unacked messages of ended sessions dropped past the requeue ceiling (never what the queue holds).",
        |s| s.requeue_dropped,
    ),
    (
        "journaled",
        "Messages written to the store before delivery (sync durability).",
        |s| s.journaled,
    ),
];

/// Gauges: (name, help, value).
const GAUGES: &[(&str, &str, Get)] = &[
    ("sessions", "Live sessions.", |s| s.sessions),
    (
        "mailbox_depth",
        "Mail weight (about bytes) in flight to the shard.",
        |s| s.mailbox_depth,
    ),
    (
        "store_queue_requests",
        "Store requests made and not answered yet.",
        |s| s.store_queue_requests,
    ),
    (
        "store_queue_requests_peak",
        "The most store requests in flight at once since the start (bounded at 16 384 a shard plus a reserve of 2 048 for sessions with nothing in flight).",
        |s| s.store_queue_requests_peak,
    ),
    (
        "store_queue_bytes",
        "Bytes those store requests count for.",
        |s| s.store_queue_bytes,
    ),
    (
        "page_reads_waiting",
        "Page reads (History, ListConversations, MarkRead, ListRooms, ListUsers) waiting for their turn at the store (--max-page-reads-in-flight per shard).",
        |s| s.page_reads_waiting,
    ),
    (
        "requeue_bytes",
        "What ended sessions left unacked, waiting for the store (bounded by --max-requeue-bytes).",
        |s| s.requeue_bytes,
    ),
    (
        "input_bytes",
        "Bytes held of client frames still arriving, each counted from 16 KiB (bounded by --max-input-bytes).",
        |s| s.input_bytes,
    ),
    (
        "pending_bytes",
        "Bytes queued for the sessions' sockets and not written yet.",
        |s| s.pending_bytes,
    ),
    (
        "unacked_messages",
        "Deliveries the sessions keep until their clients ack them.",
        |s| s.unacked_messages,
    ),
    (
        "unacked_bytes",
        "Payload bytes of those deliveries kept in memory.",
        |s| s.unacked_bytes,
    ),
    ("rooms_loaded", "Rooms kept in memory.", |s| s.rooms_loaded),
    (
        "room_members_loaded",
        "Members of the rooms kept in memory (bounded by --max-loaded-room-members).",
        |s| s.room_members_loaded,
    ),
];

/// The status name without its `STATUS_` prefix (`NOT_FOUND`), as the API spells it.
pub(crate) fn status_name(s: Status) -> &'static str {
    let n = s.as_str_name();
    n.strip_prefix("STATUS_").unwrap_or(n)
}

/// The statuses a per-status counter lists (every one but UNSPECIFIED and OK).
fn failure_statuses() -> impl Iterator<Item = (usize, &'static str)> {
    (0..STATUS_CODES as i32)
        .filter_map(|i| Status::try_from(i).ok())
        .filter(|s| !matches!(s, Status::Unspecified | Status::Ok))
        .map(|s| (s as usize, status_name(s)))
}

/// What one scrape shows: every shard's published figures and the store's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scrape {
    shards: Vec<StatsSnapshot>,
    total: StatsSnapshot,
    store: StoreStats,
    tls: Option<TlsStats>,
    conns: ConnStats,
}

/// The TLS handshake threads' figures (with `--tls-cert`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TlsStats {
    /// Handshake steps queued or running.
    pub in_progress: u64,
    /// Handshake steps refused at `--max-tls-handshakes`.
    pub refused: u64,
}

/// Per shard (`shard_<name>{shard}`) and in total (`<name>`): each series `emit` writes
/// for one snapshot.
fn both(
    enc: &mut DescriptorEncoder,
    scrape: &Scrape,
    name: &str,
    help: &str,
    kind: MetricType,
    emit: &dyn Fn(&mut MetricEncoder, &StatsSnapshot, Option<&str>) -> std::fmt::Result,
) -> std::fmt::Result {
    {
        let shard_name = format!("shard_{name}");
        let mut m =
            enc.encode_descriptor(&shard_name, &format!("{help} Per shard."), None, kind)?;
        for (i, s) in scrape.shards.iter().enumerate() {
            let id = i.to_string();
            emit(&mut m, s, Some(&id))?;
        }
    }
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    emit(&mut m, &scrape.total, None)
}

fn shard_label(shard: Option<&str>) -> Vec<(&'static str, String)> {
    shard.map(|s| ("shard", s.to_owned())).into_iter().collect()
}

/// Runs `f` on the encoder of one series: `labels` added, or none (the family's own
/// encoder: a series without labels is written without braces).
fn series(
    m: &mut MetricEncoder,
    labels: &[(&'static str, String)],
    f: impl FnOnce(&mut MetricEncoder) -> std::fmt::Result,
) -> std::fmt::Result {
    if labels.is_empty() {
        f(m)
    } else {
        f(&mut m.encode_family(&labels)?)
    }
}

fn counter(m: &mut MetricEncoder, labels: &[(&'static str, String)], v: u64) -> std::fmt::Result {
    series(m, labels, |e| {
        e.encode_counter::<NoLabelSet, u64, u64>(&v, None)
    })
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        for (name, help, get) in COUNTERS {
            both(
                &mut enc,
                self,
                name,
                help,
                MetricType::Counter,
                &|m, s, shard| counter(m, &shard_label(shard), get(s)),
            )?;
        }
        for (name, help, get) in GAUGES {
            both(
                &mut enc,
                self,
                name,
                help,
                MetricType::Gauge,
                &|m, s, shard| series(m, &shard_label(shard), |e| e.encode_gauge(&get(s))),
            )?;
        }
        both(
            &mut enc,
            self,
            "logins",
            "Logins by result (OK, or the status of the refusal).",
            MetricType::Counter,
            &|m, s, shard| {
                let mut labels = shard_label(shard);
                labels.push(("result", "OK".into()));
                counter(m, &labels, s.logins)?;
                for (i, name) in failure_statuses() {
                    labels.pop();
                    labels.push(("result", name.into()));
                    counter(m, &labels, s.login_failures[i])?;
                }
                Ok(())
            },
        )?;
        both(
            &mut enc,
            self,
            "errors",
            "Frames refused with an error, by status.",
            MetricType::Counter,
            &|m, s, shard| {
                let mut labels = shard_label(shard);
                labels.push(("status", String::new()));
                for (i, name) in failure_statuses() {
                    labels.pop();
                    labels.push(("status", name.into()));
                    counter(m, &labels, s.errors[i])?;
                }
                Ok(())
            },
        )?;
        both(
            &mut enc,
            self,
            "delivery_latency_seconds",
            "Accept-to-write latency of live deliveries: from the Send frame read to the \
             writev of the Deliver (one value per writev, its oldest delivery).",
            MetricType::Histogram,
            &|m, s, shard| {
                // Per bucket, not cumulative: the encoder adds them up; `f64::MAX` is
                // its `+Inf`.
                let bounds = LATENCY_BOUNDS_US
                    .iter()
                    .map(|b| *b as f64 / 1e6)
                    .chain([f64::MAX]);
                let buckets: Vec<(f64, u64)> = bounds.zip(s.latency.buckets).collect();
                series(m, &shard_label(shard), |e| {
                    e.encode_histogram::<NoLabelSet>(
                        s.latency.sum_us as f64 / 1e6,
                        s.latency.count,
                        &buckets,
                        None,
                    )
                })
            },
        )?;
        let st = &self.store;
        let store_counters: [(&str, &str, f64); 14] = [
            (
                "store_requests",
                "Requests handled by the storage thread.",
                st.requests as f64,
            ),
            (
                "store_commits",
                "Write batches committed by the storage thread.",
                st.commits as f64,
            ),
            (
                "store_commit_seconds",
                "Time spent committing batches (commit latency: divide by store_commits).",
                st.commit_us as f64 / 1e6,
            ),
            (
                "store_fsyncs",
                "fsyncs (sync durability).",
                st.fsyncs as f64,
            ),
            (
                "store_fsync_seconds",
                "Time spent in fsync.",
                st.fsync_us as f64 / 1e6,
            ),
            (
                "history_writes",
                "Times the history held in memory was written to the history log.",
                st.history_writes as f64,
            ),
            (
                "history_chunk_reads",
                "Stored history chunks read for History, MarkRead and ListConversations.",
                st.history_chunk_reads as f64,
            ),
            (
                "history_lookup_pointers",
                "History chunk pointers looked at by lookups of a msg_id (History before, MarkRead).",
                st.history_lookup_pointers as f64,
            ),
            (
                "history_lookups_cut",
                "Lookups of a msg_id stopped by --history-lookup-chunks (answered NOT_FOUND).",
                st.history_lookups_cut as f64,
            ),
            (
                "history_compactions",
                "History log files compacted (their live chunks moved, the file freed).",
                st.history_compactions as f64,
            ),
            (
                "history_dropped",
                "History messages not written because the store was full (--min-free-disk-bytes).",
                st.history_dropped as f64,
            ),
            (
                "store_deletion_slices",
                "Slices of account deletions run (a deletion goes a bounded slice at a time, other requests answered between).",
                st.deletion_slices as f64,
            ),
            (
                "history_entry_slices",
                "Steps that wrote conversation entries and read marks after a history write, a bounded slice at a time (other requests answered between).",
                st.history_entry_slices as f64,
            ),
            (
                "store_users_forgotten",
                "Idle passwordless users deleted by the sweep (--forget-idle-users-after).",
                st.forgotten as f64,
            ),
        ];
        for (name, help, v) in store_counters {
            enc.encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, f64, f64>(&v, None)?;
        }
        enc.encode_descriptor(
            "store_password_jobs",
            "Password hashes queued or running.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&st.hash_jobs)?;
        let gauges: [(&str, &str, u64); 8] = [
            (
                "store_disk_full",
                "1 while the store is full (free space under --min-free-disk-bytes): Sends to offline users are refused UNAVAILABLE, history is not written.",
                st.disk_full,
            ),
            (
                "store_disk_free_bytes",
                "Free bytes of the data directory's filesystem (as of the storage thread's last look).",
                st.disk_free_bytes,
            ),
            (
                "store_disk_bytes",
                "Bytes of the store's files: tables, journals and the history log (as of the last look).",
                st.disk_used_bytes,
            ),
            (
                "store_failed",
                "1 after a store commit failed (/readyz then says 503; the engine stays failed until a restart).",
                st.failed,
            ),
            (
                "history_log_bytes",
                "Bytes in the history log's files (at most about twice the live ones).",
                st.history_log_bytes,
            ),
            (
                "history_log_live_bytes",
                "Bytes of history chunks in the history log that a conversation still keeps.",
                st.history_log_live_bytes,
            ),
            (
                "store_deletions_pending",
                "Account deletions under way (their names refused until done).",
                st.deletions_pending,
            ),
            (
                "store_bulk_waiting",
                "Appends to offline queues waiting behind the storage thread's other requests.",
                st.bulk_waiting,
            ),
        ];
        for (name, help, v) in gauges {
            enc.encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&v)?;
        }
        let c = self.conns;
        enc.encode_descriptor(
            "connections_open",
            "Open connections (TCP, HTTP and WebSocket), as --max-connections counts them.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&c.open)?;
        {
            let mut m = enc.encode_descriptor(
                "connections_refused",
                "Connections refused at a bound: --max-connections (limit=\"total\") or \
                 --max-connections-per-ip (limit=\"per_ip\").",
                None,
                MetricType::Counter,
            )?;
            counter(&mut m, &[("limit", "total".into())], c.refused_all)?;
            counter(&mut m, &[("limit", "per_ip".into())], c.refused_address)?;
        }
        if let Some(t) = self.tls {
            enc.encode_descriptor(
                "tls_handshakes_in_progress",
                "TLS handshake steps queued or running on the handshake threads.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&t.in_progress)?;
            enc.encode_descriptor(
                "tls_handshakes_refused",
                "TLS handshakes refused at --max-tls-handshakes (their connections closed).",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, u64, u64>(&t.refused, None)?;
        }
        Ok(())
    }
}

/// The exposition of every shard's published figures and the store's.
pub(crate) fn render(
    stats: &[Arc<ShardStats>],
    store: StoreStats,
    tls: Option<TlsStats>,
    conns: ConnStats,
) -> Bytes {
    let mut total = StatsSnapshot::default();
    let shards = stats
        .iter()
        .map(|st| {
            st.add_to(&mut total);
            st.snapshot()
        })
        .collect();
    let scrape = Scrape {
        shards,
        total,
        store,
        tls,
        conns,
    };
    // The figures change once a ticker period (and with the store's and the
    // connections'): the text is made again only when they did. Made for every request,
    // a client pipelining thousands of `GET /metrics` on connection after connection
    // took 1.7 of 2 cores (an honest DM's p50 0.1 → 5–9 ms).
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((seen, text)) = &*last {
            if *seen == scrape {
                return text.clone();
            }
        }
        let mut reg = Registry::with_prefix("ringrouter");
        reg.register_collector(Box::new(scrape.clone()));
        let mut out = String::with_capacity(32 << 10);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        // Carried by the answers as it is, not copied.
        let text = Bytes::from(out);
        *last = Some((scrape, text.clone()));
        text
    })
}

thread_local! {
    /// This shard's last scrape and its text.
    static LAST: RefCell<Option<(Scrape, Bytes)>> = const { RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Counters, Gauges};

    #[test]
    fn the_text_is_made_again_only_when_the_figures_changed() {
        let stats: Vec<Arc<ShardStats>> = (0..2).map(|_| Arc::new(ShardStats::default())).collect();
        let scrape = || render(&stats, StoreStats::default(), None, ConnStats::default());
        let (a, b) = (scrape(), scrape());
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same figures, the same text");
        let c = Counters {
            msgs_in: 7,
            ..Counters::default()
        };
        stats[1].publish(&c, Gauges::default());
        let d = scrape();
        assert_ne!(a.as_ptr(), d.as_ptr());
        let d = String::from_utf8_lossy(&d);
        assert!(d.contains("ringrouter_messages_in_total 7"), "{d}");
    }

    #[test]
    fn exposition_has_shards_totals_and_a_cumulative_histogram() {
        let stats: Vec<Arc<ShardStats>> = (0..2).map(|_| Arc::new(ShardStats::default())).collect();
        let mut c = Counters {
            msgs_in: 5,
            ..Counters::default()
        };
        c.latency.record(70);
        c.latency.record(10_000_000);
        c.reject(Status::NotFound);
        for st in &stats {
            st.publish(&c, Gauges::default());
        }
        let conns = ConnStats {
            open: 3,
            refused_all: 1,
            refused_address: 7,
        };
        let tls = TlsStats {
            in_progress: 2,
            refused: 3,
        };
        let text = render(&stats, StoreStats::default(), Some(tls), conns);
        let text = String::from_utf8_lossy(&text);
        let has = |line: &str| text.lines().any(|l| l == line);
        for line in [
            "ringrouter_messages_in_total 10",
            "ringrouter_shard_messages_in_total{shard=\"1\"} 5",
            "ringrouter_errors_total{status=\"NOT_FOUND\"} 2",
            "ringrouter_delivery_latency_seconds_bucket{le=\"0.0001\"} 2",
            "ringrouter_delivery_latency_seconds_bucket{le=\"5.0\"} 2",
            "ringrouter_delivery_latency_seconds_bucket{le=\"+Inf\"} 4",
            "ringrouter_delivery_latency_seconds_count 4",
            "ringrouter_connections_open 3",
            "ringrouter_connections_refused_total{limit=\"per_ip\"} 7",
            "ringrouter_connections_refused_total{limit=\"total\"} 1",
            "ringrouter_tls_handshakes_in_progress 2",
            // A count, as an integer like the other counts (not "3.0").
            "ringrouter_tls_handshakes_refused_total 3",
        ] {
            assert!(has(line), "no line {line:?} in:\n{text}");
        }
        assert!(!text.contains("{}"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
