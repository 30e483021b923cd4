//! History through a real store (fjall in a temporary directory).

use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::store::{
    Callback, Durability, RoomRecord, Store, StoreHandle, StoreOptions, StoreResult,
};

/// A store keeping `keep` messages per conversation, whose history stays in memory (up
/// to 1 MiB, written every hour): queries read the tail in memory, written at shutdown.
fn open(dir: &std::path::Path, keep: u64, max_age: Option<Duration>) -> StoreHandle {
    open_with(dir, keep, max_age, 1 << 20, Duration::from_secs(3600))
}

fn open_with(
    dir: &std::path::Path,
    keep: u64,
    max_age: Option<Duration>,
    memory_bytes: usize,
    flush_every: Duration,
) -> StoreHandle {
    open_history(dir, history_opts(keep, max_age, memory_bytes, flush_every))
}

/// History options keeping `keep` messages per conversation, `memory_bytes` of them in
/// memory, written every `flush_every`.
fn history_opts(
    keep: u64,
    max_age: Option<Duration>,
    memory_bytes: usize,
    flush_every: Duration,
) -> HistoryOptions {
    HistoryOptions {
        per_conversation: keep,
        max_age,
        memory_bytes,
        flush_every,
        ..HistoryOptions::default()
    }
}

/// A store (memory durability, cheap hashes) with these history options.
fn open_history(dir: &std::path::Path, history: HistoryOptions) -> StoreHandle {
    let opts = StoreOptions {
        argon2_cheap: true,
        history,
        ..StoreOptions::default()
    };
    Store::open_with(dir, Durability::Memory, opts).unwrap()
}

fn call<T: Send + 'static>(f: impl FnOnce(Callback<T>) -> StoreResult<()>) -> StoreResult<T> {
    let (tx, rx) = mpsc::channel();
    f(Box::new(move |r| {
        let _ = tx.send(r);
    }))
    .unwrap();
    rx.recv_timeout(Duration::from_secs(30)).unwrap()
}

fn now() -> u64 {
    crate::shard::now_us()
}

/// Appends messages `ids` from `from` to `to` as chunks of `per_chunk`.
fn dm(h: &StoreHandle, from: &str, to: &str, ids: std::ops::Range<u64>, per_chunk: usize) {
    let ids: Vec<u64> = ids.collect();
    call(|cb| h.ensure_user(from, cb)).unwrap();
    call(|cb| h.ensure_user(to, cb)).unwrap();
    for part in ids.chunks(per_chunk) {
        let mut c = HistChunk {
            conv: dm_conv(from.as_bytes(), to.as_bytes()),
            ..Default::default()
        };
        for &id in part {
            c.push(from.as_bytes(), id, now(), format!("m{id}").as_bytes());
        }
        call(|cb| h.history_append(vec![c], cb)).unwrap();
    }
}

fn page(h: &StoreHandle, user: &str, peer: &str, before: u64, limit: usize) -> HistPage {
    let q = HistQuery {
        user: user.into(),
        peer: Some(peer.into()),
        room: None,
        before,
        limit,
        max_bytes: usize::MAX,
    };
    call(|cb| h.history_query(q, cb)).unwrap()
}

fn ids(p: HistPage) -> Vec<u64> {
    match p {
        HistPage::Messages(m) => m.iter().map(|m| m.msg_id).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn history_pages_backwards_both_directions_one_conversation() {
    // All in memory; all written at once (as in sync mode); part written (past a 1 KiB
    // budget), part in memory.
    for budget in [1 << 20, 0, 1024] {
        let dir = tempfile::tempdir().unwrap();
        let h = open_with(dir.path(), 10_000, None, budget, Duration::from_secs(3600));
        pages_backwards(&h);
        let writes = h.stats().history_writes;
        match budget {
            0 => assert!(writes >= 10, "{writes}"),
            1024 => assert!((1..10).contains(&writes), "{writes}"),
            _ => assert_eq!(writes, 0),
        }
        drop(h);
        // Written at shutdown: the same pages after a restart.
        let h = open(dir.path(), 10_000, None);
        pages_backwards(&h);
    }
}

fn pages_backwards(h: &StoreHandle) {
    if ids(page(h, "alice", "bob", 0, 1)).is_empty() {
        dm(h, "alice", "bob", 1..51, 7);
        dm(h, "bob", "alice", 51..61, 3);
    }
    assert_eq!(
        ids(page(h, "alice", "bob", 0, 5)),
        (56..61).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(page(h, "bob", "alice", 56, 10)),
        (46..56).collect::<Vec<_>>()
    );
    // A `before` no page ended at (found by scanning) and one that did (the cursor).
    assert_eq!(ids(page(h, "alice", "bob", 30, 3)), vec![27, 28, 29]);
    assert_eq!(ids(page(h, "alice", "bob", 27, 2)), vec![25, 26]);
    assert_eq!(ids(page(h, "alice", "bob", 2, 5)), vec![1]);
    assert_eq!(ids(page(h, "alice", "bob", 1, 5)), Vec::<u64>::new());
    // Walking back page by page sees every message once, in order.
    let mut all = Vec::new();
    let mut before = 0;
    loop {
        let p = ids(page(h, "alice", "bob", before, 9));
        if p.is_empty() {
            break;
        }
        before = p[0];
        all.splice(0..0, p);
    }
    assert_eq!(all, (1..61).collect::<Vec<_>>());
    assert_eq!(page(h, "alice", "bob", 999, 5), HistPage::BeforeNotFound);
    // Another pair sees nothing of it.
    assert_eq!(ids(page(h, "alice", "carol", 0, 5)), Vec::<u64>::new());
}

/// A History `before` or a MarkRead that no recent page ended at reads only the chunks
/// whose msg_id ranges hold it (before: every chunk from the newest, up to the bytes
/// bound, 64 MiB a request).
#[test]
fn a_before_or_a_mark_reads_only_the_chunks_that_may_hold_it() {
    let dir = tempfile::tempdir().unwrap();
    // Written at once: a stored chunk per append.
    let h = open_with(dir.path(), 10_000, None, 0, Duration::from_secs(3600));
    // Two senders homed on two shards, alternating chunks of 10.
    let (a, b) = (1u64 << 54, 2u64 << 54);
    for i in 0..50 {
        dm(&h, "alice", "bob", a + i * 10..a + i * 10 + 10, 10);
        dm(&h, "bob", "alice", b + i * 10..b + i * 10 + 10, 10);
    }
    let reads = || h.stats().history_chunk_reads;
    let r0 = reads();
    // In the oldest chunk: found in it, then the page reads it alone.
    assert_eq!(
        ids(page(&h, "alice", "bob", a + 5, 3)),
        vec![a + 2, a + 3, a + 4]
    );
    assert!(reads() - r0 <= 2, "{} chunks read", reads() - r0);
    // An id no chunk holds (in no range, or from a shard with none): nothing read.
    let r1 = reads();
    for missing in [a + 9999, b - 1, (3 << 54) + 5] {
        assert_eq!(
            page(&h, "alice", "bob", missing, 3),
            HistPage::BeforeNotFound
        );
    }
    assert_eq!(reads(), r1);
    // MarkRead of an old message: its chunk alone.
    let r2 = reads();
    call(|cb| h.history_mark("bob", Some("alice".into()), None, b + 15, cb)).unwrap();
    assert!(reads() - r2 <= 1, "{} chunks read", reads() - r2);
    // The whole conversation still pages back in order.
    let mut all = Vec::new();
    let mut before = 0;
    loop {
        let p = ids(page(&h, "bob", "alice", before, 37));
        if p.is_empty() {
            break;
        }
        before = p[0];
        all.splice(0..0, p);
    }
    assert_eq!(all.len(), 1000);
    assert_eq!(all[0], a);
    assert_eq!(all[999], b + 499);
}

#[test]
fn history_keeps_the_last_n_and_trims_lazily() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), 100, None);
    dm(&h, "a", "b", 1..1001, 10);
    let p = ids(page(&h, "a", "b", 0, 500));
    assert_eq!(p, (901..1001).collect::<Vec<_>>());
    drop(h);
    // Trimmed on disk too: at most the bound plus the slack (256) remains.
    let h = open(dir.path(), 100, None);
    let p = ids(page(&h, "a", "b", 0, 500));
    assert_eq!(p, (901..1001).collect::<Vec<_>>());
    let _ = page(&h, "a", "b", 0, 1);
}

#[test]
fn history_max_age_hides_old_messages() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), 100, Some(Duration::from_secs(60)));
    dm(&h, "a", "b", 0..0, 1);
    let mut c = HistChunk {
        conv: dm_conv(b"a", b"b"),
        ..Default::default()
    };
    c.push(b"a", 1, now() - 120_000_000, b"old");
    call(|cb| h.history_append(vec![c], cb)).unwrap();
    dm(&h, "a", "b", 2..4, 5);
    assert_eq!(ids(page(&h, "a", "b", 0, 10)), vec![2, 3]);
}

#[test]
fn history_of_a_room_is_for_members_and_conversations_list_it() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), 1000, None);
    let rec = RoomRecord {
        name: "r".into(),
        owner: "alice".into(),
        password_hash: None,
        join_code: "#abcdefgh".into(),
        members: vec!["alice".into(), "bob".into()],
        created_us: 1,
    };
    call(|cb| h.create_room(rec, cb)).unwrap();
    let mut c = HistChunk {
        conv: room_conv(b"r"),
        ..Default::default()
    };
    c.push(b"alice", 1, now(), b"hi room");
    c.push(b"bob", 2, now(), b"yo");
    call(|cb| h.history_append(vec![c], cb)).unwrap();
    dm(&h, "carol", "alice", 10..13, 2);
    let q = |user: &str| HistQuery {
        user: user.into(),
        peer: None,
        room: Some("r".into()),
        before: 0,
        limit: 10,
        max_bytes: usize::MAX,
    };
    assert_eq!(
        ids(call(|cb| h.history_query(q("bob"), cb)).unwrap()),
        vec![1, 2]
    );
    assert_eq!(
        call(|cb| h.history_query(q("carol"), cb)).unwrap(),
        HistPage::Forbidden
    );
    let cs = call(|cb| h.conversations("alice", 10, 0, usize::MAX, cb)).unwrap();
    assert_eq!(cs.len(), 2, "{cs:?}");
    // Newest first: the DM with carol came last.
    assert_eq!(cs[0].peer.as_deref(), Some("carol"));
    assert_eq!(cs[0].last.msg_id, 12);
    assert_eq!(cs[0].unread, 3);
    assert_eq!(cs[1].room.as_deref(), Some("r"));
    // alice sent seq 1, bob's seq 2 is after it.
    assert_eq!(cs[1].unread, 1);
    // Listed from the tails in memory: nothing was written for it.
    assert_eq!(h.stats().history_writes, 0);
    let older = call(|cb| h.conversations("alice", 10, cs[0].last.ts_us, usize::MAX, cb)).unwrap();
    assert!(older.iter().all(|c| c.peer.is_none()), "{older:?}");
    // Deleting carol removes the direct conversation for alice too.
    call(|cb| h.delete_account("carol", cb)).unwrap();
    assert_eq!(ids(page(&h, "alice", "carol", 0, 10)), Vec::<u64>::new());
    let cs = call(|cb| h.conversations("alice", 10, 0, usize::MAX, cb)).unwrap();
    assert_eq!(cs.len(), 1, "{cs:?}");
}

#[test]
fn history_of_a_user_without_account_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), 100, None);
    call(|cb| h.ensure_user("a", cb)).unwrap();
    let mut c = HistChunk {
        conv: dm_conv(b"a", b"ghost"),
        ..Default::default()
    };
    c.push(b"a", 1, now(), b"x");
    call(|cb| h.history_append(vec![c], cb)).unwrap();
    assert_eq!(ids(page(&h, "a", "ghost", 0, 10)), Vec::<u64>::new());
    assert!(call(|cb| h.conversations("a", 10, 0, usize::MAX, cb))
        .unwrap()
        .is_empty());
}

#[test]
fn history_off_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), 0, None);
    dm(&h, "a", "b", 1..10, 3);
    assert_eq!(ids(page(&h, "a", "b", 0, 10)), Vec::<u64>::new());
}

#[test]
fn history_in_memory_is_written_when_its_budget_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let h = open_with(
        dir.path(),
        10_000,
        None,
        8 * 1024,
        Duration::from_secs(3600),
    );
    let payload = vec![7u8; 100];
    call(|cb| h.ensure_user("a", cb)).unwrap();
    call(|cb| h.ensure_user("b", cb)).unwrap();
    let mut sent = 0u64;
    let append = |h: &StoreHandle, n: u64, sent: &mut u64| {
        let mut c = HistChunk {
            conv: dm_conv(b"a", b"b"),
            ..Default::default()
        };
        for _ in 0..n {
            *sent += 1;
            c.push(b"a", *sent, now(), &payload);
        }
        call(|cb| h.history_append(vec![c], cb)).unwrap();
    };
    // 20 × ~125 B: under the budget, held in memory, yet visible.
    append(&h, 20, &mut sent);
    assert_eq!(h.stats().history_writes, 0);
    assert_eq!(ids(page(&h, "a", "b", 0, 500)), (1..21).collect::<Vec<_>>());
    // Past it: written at once, and the tail starts again.
    let mut writes = 0;
    for _ in 0..20 {
        append(&h, 10, &mut sent);
        let w = h.stats().history_writes;
        assert!(w <= writes + 1);
        writes = w;
    }
    // 220 × 125 B = 27 KiB: at least 2 writes of about 8 KiB each, not one per append.
    assert!((2..=6).contains(&writes), "{writes}");
    assert_eq!(
        ids(page(&h, "a", "b", 0, 500)),
        (1..221).collect::<Vec<_>>()
    );
}

#[test]
fn history_in_memory_is_written_every_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let h = open_with(dir.path(), 100, None, 1 << 20, Duration::from_millis(50));
    dm(&h, "a", "b", 1..4, 3);
    let t = std::time::Instant::now();
    while h.stats().history_writes == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "never written");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(ids(page(&h, "a", "b", 0, 10)), vec![1, 2, 3]);
}

/// A due flush of more tails than one slice writes them a slice at a time (the requests
/// that came meanwhile answered between slices), the conversation entries with the last.
#[test]
fn a_due_flush_of_many_tails_is_written_in_slices() {
    let dir = tempfile::tempdir().unwrap();
    let h = open_with(dir.path(), 100, None, 64 << 20, Duration::from_millis(50));
    let n = 2 * crate::store::worker::FLUSH_SLICE_FOR_TESTS + 100;
    call(|cb| h.ensure_user("s", cb)).unwrap();
    for i in 0..n {
        call(|cb| h.ensure_user(&format!("p{i}"), cb)).unwrap();
    }
    let chunks: Vec<HistChunk> = (0..n)
        .map(|i| {
            let peer = format!("p{i}");
            let mut c = HistChunk {
                conv: dm_conv(b"s", peer.as_bytes()),
                ..Default::default()
            };
            c.push(b"s", i as u64 + 1, now(), b"hi");
            c
        })
        .collect();
    call(|cb| h.history_append(chunks, cb)).unwrap();
    let t = std::time::Instant::now();
    while h.stats().history_writes < 3 {
        assert!(t.elapsed() < Duration::from_secs(10), "never written");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(h.stats().history_writes, 3, "two slices, then the rest");
    // The conversation entries (two a conversation) go after the last, a slice of 256 a
    // step (in tests), with nothing else asked meanwhile.
    wait_entry_slices(&h, 2 * n);
    for i in [0, n / 2, n - 1] {
        assert_eq!(
            ids(page(&h, "s", &format!("p{i}"), 0, 10)),
            vec![i as u64 + 1]
        );
    }
    let cs = call(|cb| h.conversations("s", n, 0, usize::MAX, cb)).unwrap();
    assert_eq!(cs.len(), n);
    let cs = call(|cb| h.conversations("p7", 10, 0, usize::MAX, cb)).unwrap();
    assert_eq!(cs.len(), 1);
}

/// Waits (up to 10 s) until the storage thread has written `entries` conversation entries
/// and read marks a slice of 256 at a time (in tests one slice a step: see `NOTED_BUDGET`).
fn wait_entry_slices(h: &StoreHandle, entries: usize) {
    let t = std::time::Instant::now();
    while h.stats().history_entry_slices < entries.div_ceil(256) as u64 {
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", h.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Conversation entries that need a read of the stored one (of conversations stored
/// before the store was opened) are written by the storage thread's ticks, a slice at a
/// time, with no request asking for them.
#[test]
fn entries_that_need_a_read_are_written_by_the_ticks() {
    let dir = tempfile::tempdir().unwrap();
    const N: usize = 3_000;
    let chunks = |first: u64| -> Vec<HistChunk> {
        (0..N)
            .map(|i| {
                let peer = format!("p{i}");
                let mut c = HistChunk {
                    conv: dm_conv(b"s", peer.as_bytes()),
                    ..Default::default()
                };
                c.push(b"s", first + i as u64, now(), b"hi");
                c
            })
            .collect()
    };
    {
        let h = open_with(dir.path(), 100, None, 64 << 20, Duration::from_secs(3600));
        call(|cb| h.ensure_user("s", cb)).unwrap();
        for i in 0..N {
            call(|cb| h.ensure_user(&format!("p{i}"), cb)).unwrap();
        }
        call(|cb| h.history_append(chunks(1), cb)).unwrap();
        h.shutdown().unwrap();
    }
    let h = open_with(dir.path(), 100, None, 64 << 20, Duration::from_millis(50));
    call(|cb| h.history_append(chunks(10_000), cb)).unwrap();
    // Each peer's entry (it sent nothing) needs a read: 3 000 in slices of 256, one a step.
    wait_entry_slices(&h, N);
    let cs = call(|cb| h.conversations("p7", 10, 0, usize::MAX, cb)).unwrap();
    assert_eq!(cs.len(), 1);
}

/// An entry of a conversation with nothing stored is written without reading the stored
/// one; one of a conversation with messages stored keeps the stored seq (the user's last
/// sent message: unread counts from it).
#[test]
fn an_entry_written_without_a_read_is_only_of_a_new_conversation() {
    let dir = tempfile::tempdir().unwrap();
    {
        let h = open(dir.path(), 1000, None);
        dm(&h, "alice", "bob", 1..4, 3);
        dm(&h, "bob", "alice", 4..6, 2);
        dm(&h, "alice", "bob", 6..8, 2);
        h.shutdown().unwrap();
    }
    let h = open(dir.path(), 1000, None);
    dm(&h, "alice", "bob", 8..9, 1);
    let cs = call(|cb| h.conversations("bob", 10, 0, usize::MAX, cb)).unwrap();
    assert_eq!(cs[0].unread, 3, "after bob's last, 5");
}

#[test]
fn history_keeps_only_the_last_n_in_memory_too() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), 1000, None);
    // 20 000 messages of ~30 B: whole segments past the last 1000 are dropped in memory.
    dm(&h, "a", "b", 1..20_001, 100);
    assert_eq!(h.stats().history_writes, 0);
    let p = ids(page(&h, "a", "b", 0, 500));
    assert_eq!(p, (19_501..20_001).collect::<Vec<_>>());
    let p = ids(page(&h, "a", "b", 19_501, 500));
    assert_eq!(p, (19_001..19_501).collect::<Vec<_>>());
    assert_eq!(ids(page(&h, "a", "b", 19_001, 500)), Vec::<u64>::new());
}

#[test]
fn unread_counts_from_the_read_mark_else_from_the_last_own_message() {
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), 1000, None);
    dm(&h, "alice", "bob", 1..4, 3);
    dm(&h, "bob", "alice", 4..11, 7);
    let unread = |user: &str| {
        let cs = call(|cb| h.conversations(user, 10, 0, usize::MAX, cb)).unwrap();
        assert_eq!(cs.len(), 1, "{cs:?}");
        cs[0].unread
    };
    // No marks: after the last own message (alice sent 1..3; bob 4..10).
    assert_eq!((unread("alice"), unread("bob")), (7, 0));
    // alice read up to 6: 4 left; a mark of an unknown message, or an older one, changes
    // nothing.
    let mark = |user: &str, peer: &str, msg_id: u64| {
        call(|cb| h.history_mark(user, Some(peer.into()), None, msg_id, cb)).unwrap()
    };
    mark("alice", "bob", 6);
    assert_eq!(unread("alice"), 4);
    mark("alice", "bob", 999);
    mark("alice", "bob", 5);
    assert_eq!(unread("alice"), 4);
    // bob's mark at 2 counts even though bob wrote after it: 8 after it.
    mark("bob", "alice", 2);
    assert_eq!(unread("bob"), 8);
    // Kept across a restart; the mark is the user's own.
    drop(h);
    let h = open(dir.path(), 1000, None);
    let cs = call(|cb| h.conversations("alice", 10, 0, usize::MAX, cb)).unwrap();
    assert_eq!(cs[0].unread, 4);
    // Deleting bob removes alice's mark with the conversation.
    call(|cb| h.delete_account("bob", cb)).unwrap();
    call(|cb| h.ensure_user("bob", cb)).unwrap();
    let mut c = HistChunk {
        conv: dm_conv(b"alice", b"bob"),
        ..Default::default()
    };
    c.push(b"bob", 1, now(), b"again");
    call(|cb| h.history_append(vec![c], cb)).unwrap();
    let cs = call(|cb| h.conversations("alice", 10, 0, usize::MAX, cb)).unwrap();
    assert_eq!(cs[0].unread, 1);
}

#[test]
fn history_past_its_byte_bound_loses_its_oldest_chunks() {
    // 4 KiB messages, 10 000 kept by count, at most 64 KiB of chunks by bytes; every
    // append written at once (budget 0), so each message is a chunk of its own.
    let dir = tempfile::tempdir().unwrap();
    let h = open_each_append_written(dir.path(), 64 << 10, 0);
    call(|cb| h.ensure_user("big-a", cb)).unwrap();
    call(|cb| h.ensure_user("big-b", cb)).unwrap();
    let payload = vec![b'p'; 4096];
    for id in 1..=200u64 {
        let mut c = HistChunk {
            conv: dm_conv(b"big-a", b"big-b"),
            ..Default::default()
        };
        c.push(b"big-a", id, now(), &payload);
        call(|cb| h.history_append(vec![c], cb)).unwrap();
    }
    let kept = all_ids(&h, "big-b", "big-a");
    // The newest, in order, and no more than the bound (plus the chunk that crossed it).
    let n = kept.len() as u64;
    assert_eq!(kept, (201 - n..=200).collect::<Vec<u64>>());
    assert!((14..=16).contains(&n), "{n} messages of 4 KiB kept");
}

/// A store keeping `keep` messages per conversation, every append written at once, with
/// history log files of `file_bytes`.
fn open_log(dir: &std::path::Path, keep: u64, file_bytes: u64, d: Durability) -> StoreHandle {
    let opts = StoreOptions {
        argon2_cheap: true,
        history: HistoryOptions {
            per_conversation: keep,
            max_age: None,
            memory_bytes: 0,
            flush_every: Duration::from_secs(3600),
            hot_bytes: 0,
            max_bytes: 0,
            log_file_bytes: file_bytes,
            lookup_chunks: 0,
        },
        ..StoreOptions::default()
    };
    Store::open_with(dir, d, opts).unwrap()
}

/// Bytes of the history log's files on disk (dead ones kept for reuse left out: at
/// most `FREE_MAX`, 8, checked here).
fn log_disk_bytes(dir: &std::path::Path) -> u64 {
    let (mut live, mut free) = (0, 0);
    for e in std::fs::read_dir(dir.join("history")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("free-") {
            free += 1;
        } else {
            live += e.metadata().unwrap().len();
        }
    }
    assert!(free <= 8, "{free} dead files kept");
    live
}

fn all_ids(h: &StoreHandle, user: &str, peer: &str) -> Vec<u64> {
    let mut kept = Vec::new();
    let mut before = 0;
    loop {
        let got = ids(page(h, user, peer, before, 100));
        let Some(&first) = got.first() else { break };
        before = first;
        kept.splice(0..0, got);
    }
    kept
}

#[test]
fn history_log_space_stays_bounded_while_a_quiet_conversation_pins_old_files() {
    // A busy conversation (1 KiB messages, 50 per append) and a quiet one (one small
    // message per append, so one chunk in nearly every file): without compaction, every
    // file would stay for the quiet conversation's sake.
    let dir = tempfile::tempdir().unwrap();
    let file = 64 << 10;
    let h = open_log(dir.path(), 300, file, Durability::Memory);
    for u in ["busy-a", "busy-b", "quiet-a", "quiet-b"] {
        call(|cb| h.ensure_user(u, cb)).unwrap();
    }
    let payload = vec![b'x'; 1024];
    let mut quiet = 0u64;
    for round in 0..400u64 {
        let mut busy = HistChunk {
            conv: dm_conv(b"busy-a", b"busy-b"),
            ..Default::default()
        };
        for i in 0..50 {
            busy.push(b"busy-a", round * 50 + i + 1, now(), &payload);
        }
        let mut q = HistChunk {
            conv: dm_conv(b"quiet-a", b"quiet-b"),
            ..Default::default()
        };
        if round % 4 == 0 {
            quiet += 1;
            q.push(b"quiet-a", quiet, now(), b"hi");
        }
        call(|cb| h.history_append(vec![busy, q], cb)).unwrap();
    }
    // 20 MB written; what the bounds keep is ~300 KiB live (busy, up to bound + slack)
    // plus the quiet one's 100 messages.
    let s = h.stats();
    assert!(s.history_compactions > 0, "{s:?}");
    let bound = 2 * s.history_log_live_bytes + 2 * file + 2 * file;
    assert!(s.history_log_bytes <= bound, "{s:?}");
    assert!(log_disk_bytes(dir.path()) <= bound + 2 * file, "{s:?}");
    assert!(s.history_log_bytes < 2 << 20, "20 MB written, {s:?}");
    let busy = all_ids(&h, "busy-b", "busy-a");
    assert_eq!(busy, (20_001 - 300..=20_000).collect::<Vec<u64>>());
    assert_eq!(
        all_ids(&h, "quiet-b", "quiet-a"),
        (1..=100).collect::<Vec<u64>>()
    );
    // Each conversation's last message, as the list reads it (its newest chunk's last
    // record only, where the chunk's value says it starts, compacted or not).
    let last = |h: &StoreHandle, u: &str| -> Vec<(u64, usize)> {
        let cs = call(|cb| h.conversations(u, 10, 0, usize::MAX, cb)).unwrap();
        cs.iter()
            .map(|c| (c.last.msg_id, c.last.payload.len()))
            .collect()
    };
    let lasts = [(20_000, 1024)];
    assert_eq!(
        (last(&h, "busy-b"), last(&h, "quiet-b")),
        (lasts.to_vec(), vec![(100, 2)])
    );
    drop(h);
    // After a restart, from the log files and the pointers alone.
    let h = open_log(dir.path(), 300, file, Durability::Memory);
    assert_eq!(
        (last(&h, "busy-a"), last(&h, "quiet-a")),
        (lasts.to_vec(), vec![(100, 2)])
    );
    assert_eq!(all_ids(&h, "busy-a", "busy-b"), busy);
    assert_eq!(
        all_ids(&h, "quiet-a", "quiet-b"),
        (1..=100).collect::<Vec<u64>>()
    );
}

#[test]
fn history_in_the_log_survives_a_restart_in_sync_mode_and_a_deleted_account_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let h = open_log(dir.path(), 10_000, 16 << 10, Durability::Sync);
    dm(&h, "s-a", "s-b", 1..2001, 100);
    drop(h);
    let h = open_log(dir.path(), 10_000, 16 << 10, Durability::Sync);
    assert_eq!(all_ids(&h, "s-b", "s-a"), (1..2001).collect::<Vec<u64>>());
    let before = log_disk_bytes(dir.path());
    assert!(before > 20_000, "{before}");
    call(|cb| h.delete_account("s-a", cb)).unwrap();
    // The conversation's chunks are gone, and with them every file but the active one.
    dm(&h, "s-c", "s-d", 1..2, 1);
    // (The active file may be a dead one reused: up to a file plus a chunk.)
    let after = log_disk_bytes(dir.path());
    assert!(after < (16 << 10) + 4096, "{before} → {after}");
    drop(h);
    let h = open_log(dir.path(), 10_000, 16 << 10, Durability::Sync);
    assert_eq!(all_ids(&h, "s-d", "s-c"), vec![1]);
}

#[test]
fn shared_and_copied_payloads_read_back_in_order_across_segments() {
    // Big payloads are shared (their records in the chunk carry no payload bytes),
    // small ones copied; mixed in one chunk, spanning several segments (64 KiB each),
    // in memory and written.
    for budget in [1 << 30, 0] {
        let dir = tempfile::tempdir().unwrap();
        let h = open_with(dir.path(), 10_000, None, budget, Duration::from_secs(3600));
        call(|cb| h.ensure_user("alice", cb)).unwrap();
        call(|cb| h.ensure_user("bob", cb)).unwrap();
        let body = |id: u64| {
            let n = if id.is_multiple_of(3) {
                5_000 + id as usize
            } else {
                id as usize % 200
            };
            bytes::Bytes::from(vec![id as u8; n])
        };
        let mut c = HistChunk {
            conv: dm_conv(b"alice", b"bob"),
            ..Default::default()
        };
        for id in 1..=120u64 {
            let from: &[u8] = if id.is_multiple_of(2) {
                b"alice"
            } else {
                b"bob"
            };
            c.push_shared(from, id, now(), &body(id));
        }
        assert_eq!(c.shared.len(), 40);
        call(|cb| h.history_append(vec![c], cb)).unwrap();
        let HistPage::Messages(m) = page(&h, "alice", "bob", 0, 500) else {
            panic!("no page");
        };
        assert_eq!(m.len(), 120);
        for (i, m) in m.iter().enumerate() {
            let id = i as u64 + 1;
            assert_eq!(m.msg_id, id);
            assert_eq!(m.payload, body(id), "message {id}");
            assert_eq!(
                m.from_user,
                if id.is_multiple_of(2) { "alice" } else { "bob" }
            );
        }
    }
}

/// A store keeping 10 000 messages per conversation, every append written at once (a
/// stored chunk per append), whose lookups of a msg_id read at most `lookup_chunks`.
fn open_lookup(dir: &std::path::Path, lookup_chunks: usize) -> StoreHandle {
    open_each_append_written(dir, 0, lookup_chunks)
}

/// A store keeping 10 000 messages per conversation (and at most `max_bytes` of
/// chunks, 0: unbounded), every append written at once.
fn open_each_append_written(
    dir: &std::path::Path,
    max_bytes: u64,
    lookup_chunks: usize,
) -> StoreHandle {
    let opts = StoreOptions {
        argon2_cheap: true,
        history: HistoryOptions {
            per_conversation: 10_000,
            max_age: None,
            memory_bytes: 0,
            flush_every: Duration::from_secs(3600),
            hot_bytes: 0,
            max_bytes,
            log_file_bytes: 0,
            lookup_chunks,
        },
        ..StoreOptions::default()
    };
    Store::open_with(dir, Durability::Memory, opts).unwrap()
}

/// Client-chosen msg_ids that alternate low and high in one shard make every chunk's
/// ranges hold any id of it: a `before` or a MarkRead of an id that is not there reads
/// at most `lookup_chunks` chunks (History: NOT_FOUND), not the whole conversation;
/// paging back from each page's oldest msg_id still walks the whole history.
#[test]
fn a_lookup_of_an_absent_id_reads_at_most_its_bound_of_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let h = open_lookup(dir.path(), 4);
    let high = (1u64 << 54) - 1;
    // 100 chunks of 10, ids 1, high-1, 3, high-3, ...
    let id = |i: u64| if i % 2 == 1 { i } else { high - i + 1 };
    call(|cb| h.ensure_user("a", cb)).unwrap();
    call(|cb| h.ensure_user("b", cb)).unwrap();
    for c in 0..100u64 {
        let mut chunk = HistChunk {
            conv: dm_conv(b"a", b"b"),
            ..Default::default()
        };
        for i in c * 10 + 1..=c * 10 + 10 {
            chunk.push(b"a", id(i), now(), b"x");
        }
        call(|cb| h.history_append(vec![chunk], cb)).unwrap();
    }
    let st = || h.stats();
    let s0 = st();
    let absent = 1 << 40;
    for _ in 0..10 {
        assert_eq!(page(&h, "b", "a", absent, 5), HistPage::BeforeBeyondLookup);
        call(|cb| h.history_mark("b", Some("a".into()), None, absent, cb)).unwrap();
    }
    let s1 = st();
    assert_eq!(s1.history_lookups_cut - s0.history_lookups_cut, 20);
    assert!(
        s1.history_chunk_reads - s0.history_chunk_reads <= 20 * 4,
        "{} chunks read",
        s1.history_chunk_reads - s0.history_chunk_reads
    );
    // An id of the newest 4 chunks is found (and its page read).
    assert_eq!(ids(page(&h, "b", "a", id(975), 2)), vec![id(973), id(974)]);
    // Paging back page by page never looks: every `before` is a page's cursor.
    let all = all_ids(&h, "b", "a");
    assert_eq!(all, (1..=1000).map(id).collect::<Vec<_>>());
    assert_eq!(st().history_lookups_cut, s1.history_lookups_cut);
}

/// With the router's own msg_ids (narrow ranges per shard) a lookup skips the chunks by
/// their pointers: an old message is found however far back, reading its chunk alone; an
/// absent one looks at every pointer and reads nothing.
#[test]
fn a_lookup_looks_at_a_bounded_number_of_chunk_pointers() {
    let dir = tempfile::tempdir().unwrap();
    let h = open_lookup(dir.path(), 1);
    let a = 1u64 << 54;
    dm(&h, "a", "b", a..a + 1000, 5); // 200 chunks
    let s0 = h.stats();
    // 41 chunks back (fewer than 64): found, one chunk read for it.
    let found = ids(page(&h, "b", "a", a + 800, 2));
    assert_eq!(found, vec![a + 798, a + 799]);
    let s1 = h.stats();
    assert_eq!(s1.history_lookups_cut, s0.history_lookups_cut);
    // Absent (in no range): every pointer looked at (200), no chunk read, NOT_FOUND.
    assert_eq!(page(&h, "b", "a", a + 5000, 2), HistPage::BeforeNotFound);
    let s2 = h.stats();
    assert_eq!(s2.history_lookup_pointers - s1.history_lookup_pointers, 200);
    assert_eq!(s2.history_chunk_reads, s1.history_chunk_reads);
    assert_eq!(s2.history_lookups_cut, s1.history_lookups_cut);
    // 199 chunks back (past 64 pointers per chunk read): found all the same, its chunk
    // alone read for the lookup (a conversation's chunks are at most its message bound,
    // 10 000 here), then the page's.
    assert_eq!(ids(page(&h, "b", "a", a + 10, 2)), vec![a + 8, a + 9]);
    let s3 = h.stats();
    assert!(s3.history_chunk_reads - s2.history_chunk_reads <= 3);
    assert_eq!(s3.history_lookups_cut, s2.history_lookups_cut);
}

/// ListConversations sorts by each conversation's newest timestamp from its state (its
/// newest chunk's header after a restart): it reads the newest chunk of the `limit`
/// conversations it answers, not of every conversation; and pages by `before_ts`.
#[test]
fn conversations_read_only_the_chunks_of_those_answered() {
    let dir = tempfile::tempdir().unwrap();
    let h = open_lookup(dir.path(), 0);
    let peers: Vec<String> = (0..50).map(|i| format!("p{i:02}")).collect();
    for (i, p) in peers.iter().enumerate() {
        dm(&h, p, "me", i as u64 * 10 + 1..i as u64 * 10 + 4, 3);
        std::thread::sleep(Duration::from_millis(1));
    }
    let check = |h: &StoreHandle| {
        let r0 = h.stats().history_chunk_reads;
        let cs = call(|cb| h.conversations("me", 3, 0, usize::MAX, cb)).unwrap();
        assert!(h.stats().history_chunk_reads - r0 <= 3);
        let got: Vec<_> = cs.iter().map(|c| c.peer.clone().unwrap()).collect();
        assert_eq!(got, ["p49", "p48", "p47"]);
        assert_eq!(cs[0].last.msg_id, 493);
        assert_eq!(cs[0].last.payload, &b"m493"[..]);
        assert_eq!(cs[0].unread, 3);
        // Paging by the last one's timestamp lists every conversation once.
        let mut seen = Vec::new();
        let mut before = 0;
        loop {
            let cs = call(|cb| h.conversations("me", 7, before, usize::MAX, cb)).unwrap();
            let Some(last) = cs.last() else { break };
            before = last.last.ts_us;
            seen.extend(cs.iter().map(|c| c.peer.clone().unwrap()));
        }
        let mut want = peers.clone();
        want.reverse();
        assert_eq!(seen, want);
    };
    check(&h);
    // After a restart: the states are read again (the chunks' headers).
    drop(h);
    let h = open_lookup(dir.path(), 0);
    check(&h);
}

/// A room record for `name` owned by `owner` with `members` (the owner among them).
fn room_rec(name: &str, owner: &str, members: &[&str], code: &str) -> RoomRecord {
    RoomRecord {
        name: name.into(),
        owner: owner.into(),
        password_hash: None,
        join_code: code.into(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        created_us: now(),
    }
}

/// `n` messages to room `room` from `from` (msg_ids from `first`), `per_chunk` an append.
fn room_msgs(h: &StoreHandle, room: &str, from: &str, first: u64, n: u64, per_chunk: u64) {
    let mut id = first;
    while id < first + n {
        let mut c = HistChunk {
            conv: room_conv(room.as_bytes()),
            ..Default::default()
        };
        for _ in 0..per_chunk.min(first + n - id) {
            c.push(
                from.as_bytes(),
                id,
                now(),
                format!("{room}-{id}").as_bytes(),
            );
            id += 1;
        }
        call(|cb| h.history_append(vec![c], cb)).unwrap();
    }
}

fn room_page(h: &StoreHandle, user: &str, room: &str) -> HistPage {
    let q = HistQuery {
        user: user.into(),
        peer: None,
        room: Some(room.into()),
        before: 0,
        limit: 500,
        max_bytes: usize::MAX,
    };
    call(|cb| h.history_query(q, cb)).unwrap()
}

/// Keys of the `history` keyspace of a closed store that start with `prefix`.
fn raw_history_keys(dir: &std::path::Path, prefix: &[u8]) -> Vec<Vec<u8>> {
    let db = fjall::Database::builder(dir).open().unwrap();
    let ks = db
        .keyspace("history", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    ks.prefix(prefix)
        .map(|g| g.key().unwrap().to_vec())
        .collect()
}

#[test]
fn deleting_a_room_removes_its_history_and_a_room_made_with_its_name_starts_empty() {
    // Sync (every append written to the log at once) and memory (held in memory: the
    // deletion drops the tail, and nothing of it is written at shutdown).
    for d in [Durability::Sync, Durability::Memory] {
        let dir = tempfile::tempdir().unwrap();
        let file = 16 << 10;
        let h = match d {
            Durability::Sync => open_log(dir.path(), 10_000, file, d),
            Durability::Memory => open(dir.path(), 10_000, None),
        };
        for u in ["alice", "bob", "mallory", "s-c", "s-d"] {
            call(|cb| h.ensure_user(u, cb)).unwrap();
        }
        call(|cb| h.create_room(room_rec("r", "alice", &["alice", "bob"], "#code0001"), cb))
            .unwrap();
        room_msgs(&h, "r", "alice", 1, 1000, 100);
        room_msgs(&h, "r", "bob", 1001, 500, 50);
        // A name that is no member (the HTTP API publishes as any name).
        room_msgs(&h, "r", "system", 1501, 3, 3);
        call(|cb| h.history_mark("bob", None, Some("r".into()), 1200, cb)).unwrap();
        assert_eq!(ids(room_page(&h, "bob", "r")).len(), 500);
        assert_eq!(
            call(|cb| h.conversations("bob", 10, 0, usize::MAX, cb))
                .unwrap()
                .len(),
            1
        );
        // A page cached a `before` cursor: it goes too.
        assert_eq!(
            ids(call(|cb| h.history_query(
                HistQuery {
                    user: "alice".into(),
                    peer: None,
                    room: Some("r".into()),
                    before: 1400,
                    limit: 2,
                    max_bytes: usize::MAX,
                },
                cb
            ))
            .unwrap()),
            vec![1398, 1399]
        );
        let before = log_disk_bytes(dir.path());
        call(|cb| h.delete_room("r", cb)).unwrap();
        // mallory makes a room of that name, with a password: it has no history.
        let mut rec = room_rec("r", "mallory", &["mallory"], "#code0002");
        rec.password_hash = Some("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into());
        call(|cb| h.create_room(rec, cb)).unwrap();
        assert_eq!(ids(room_page(&h, "mallory", "r")), Vec::<u64>::new());
        // Not through a cursor of the old room either.
        let q = HistQuery {
            user: "mallory".into(),
            peer: None,
            room: Some("r".into()),
            before: 1398,
            limit: 10,
            max_bytes: usize::MAX,
        };
        assert_eq!(
            call(|cb| h.history_query(q, cb)).unwrap(),
            HistPage::BeforeNotFound
        );
        for u in ["alice", "bob", "system", "mallory"] {
            let cs = call(|cb| h.conversations(u, 10, 0, usize::MAX, cb)).unwrap();
            assert!(cs.is_empty(), "{u}: {cs:?}");
        }
        // The new room's own history is kept as usual, from seq 1.
        room_msgs(&h, "r", "mallory", 5000, 2, 2);
        assert_eq!(ids(room_page(&h, "mallory", "r")), vec![5000, 5001]);
        call(|cb| h.delete_room("r", cb)).unwrap();
        assert_eq!(h.stats().history_log_live_bytes, 0, "{:?}", h.stats());
        // An append that was on its way when the room went keeps nothing.
        room_msgs(&h, "r", "bob", 6000, 3, 3);
        let cs = call(|cb| h.conversations("bob", 10, 0, usize::MAX, cb)).unwrap();
        assert!(cs.is_empty(), "{cs:?}");
        if d == Durability::Sync {
            // The log's records were released: every file but the active one goes.
            dm(&h, "s-c", "s-d", 1..2, 1);
            let after = log_disk_bytes(dir.path());
            assert!(before > 40_000, "{before}");
            assert!(after < file + 4096, "{before} → {after}");
        }
        drop(h);
        // Nothing of the room is left on disk: chunks, entries, read marks.
        let conv = room_conv(b"r");
        let mut chunks = vec![CHUNK_TAG];
        chunks.extend_from_slice(&conv);
        assert!(raw_history_keys(dir.path(), &chunks).is_empty());
        for tag in [USER_TAG, MARK_TAG] {
            let left: Vec<_> = raw_history_keys(dir.path(), &[tag])
                .into_iter()
                .filter(|k| entry_conv(k) == Some(&conv[..]))
                .collect();
            assert!(left.is_empty(), "{d:?} {left:?}");
        }
        // And after a restart the name is still free of it.
        let h = open(dir.path(), 10_000, None);
        call(|cb| h.create_room(room_rec("r", "mallory", &["mallory"], "#code0003"), cb)).unwrap();
        assert_eq!(ids(room_page(&h, "mallory", "r")), Vec::<u64>::new());
    }
}

#[test]
fn create_fill_delete_rounds_keep_no_history() {
    // The attack on disk: a room made, filled to its bound, deleted, again and again.
    let dir = tempfile::tempdir().unwrap();
    let file = 64 << 10;
    let h = open_log(dir.path(), 300, file, Durability::Sync);
    call(|cb| h.ensure_user("m", cb)).unwrap();
    let payload = vec![b'x'; 1000];
    for round in 0..30u64 {
        let name = format!("r{}", round % 3);
        let code = format!("#round{round:03}");
        call(|cb| h.create_room(room_rec(&name, "m", &["m"], &code), cb)).unwrap();
        for part in 0..4u64 {
            let mut c = HistChunk {
                conv: room_conv(name.as_bytes()),
                ..Default::default()
            };
            for i in 0..100 {
                c.push(b"m", round * 1000 + part * 100 + i + 1, now(), &payload);
            }
            call(|cb| h.history_append(vec![c], cb)).unwrap();
        }
        call(|cb| h.delete_room(&name, cb)).unwrap();
    }
    // 12 MB written; nothing of it live, and the log is back to about a file.
    call(|cb| h.flush(cb)).unwrap();
    let s = h.stats();
    assert_eq!(s.history_log_live_bytes, 0, "{s:?}");
    assert!(log_disk_bytes(dir.path()) <= 2 * file, "{s:?}");
}

#[test]
fn history_left_by_rooms_deleted_by_older_versions_is_never_shown_and_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let file = 16 << 10;
    {
        let h = open_log(dir.path(), 10_000, file, Durability::Sync);
        call(|cb| h.ensure_user("alice", cb)).unwrap();
        for (r, code) in [
            ("old1", "#oldcode1"),
            ("old2", "#oldcode2"),
            ("live", "#livecode"),
        ] {
            call(|cb| h.create_room(room_rec(r, "alice", &["alice"], code), cb)).unwrap();
            room_msgs(&h, r, "alice", 1, 300, 100);
        }
        h.shutdown().unwrap();
    }
    // Deleted the old way: the room's keys only (its history left behind). The sweep's
    // mark is taken away too, as a store of an older version never had it.
    let orphan = |names: &[&str], unmark: bool| {
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        let rooms = db
            .keyspace("rooms", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let history = db
            .keyspace("history", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        for n in names {
            let keys: Vec<Vec<u8>> = rooms
                .iter()
                .map(|g| g.key().unwrap().to_vec())
                .filter(|k| {
                    let s = String::from_utf8_lossy(k);
                    s == format!("room:{n}") || s.contains(&format!(":{n}")) || s.ends_with(n)
                })
                .collect();
            for k in keys {
                rooms.remove(k).unwrap();
            }
        }
        if unmark {
            history.remove([ROOMS_SWEPT_TAG]).unwrap();
        }
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    };
    // 1. With the sweep done (marked), a room made with the name starts empty anyway.
    orphan(&["old1"], false);
    {
        let h = open_log(dir.path(), 10_000, file, Durability::Sync);
        call(|cb| h.ensure_user("mallory", cb)).unwrap();
        call(|cb| h.create_room(room_rec("old1", "mallory", &["mallory"], "#newcode1"), cb))
            .unwrap();
        assert_eq!(ids(room_page(&h, "mallory", "old1")), Vec::<u64>::new());
        assert_eq!(ids(room_page(&h, "alice", "live")).len(), 300);
        h.shutdown().unwrap();
    }
    // 2. A store of an older version (no mark): the open sweeps what no room owns.
    orphan(&["old2"], true);
    let mut old2 = vec![CHUNK_TAG];
    old2.extend_from_slice(&room_conv(b"old2"));
    assert!(!raw_history_keys(dir.path(), &old2).is_empty());
    {
        let h = open_log(dir.path(), 10_000, file, Durability::Sync);
        assert_eq!(ids(room_page(&h, "alice", "live")).len(), 300);
        assert_eq!(ids(room_page(&h, "mallory", "old1")), Vec::<u64>::new());
        h.shutdown().unwrap();
    }
    assert!(raw_history_keys(dir.path(), &old2).is_empty());
    let entries: Vec<_> = raw_history_keys(dir.path(), &[USER_TAG])
        .into_iter()
        .filter_map(|k| entry_conv(&k).map(<[u8]>::to_vec))
        .collect();
    assert_eq!(entries, vec![room_conv(b"live")], "alice's entries");
    assert_eq!(raw_history_keys(dir.path(), &[ROOMS_SWEPT_TAG]).len(), 1);
}

/// History appends that come closer together than the nap leave the storage thread
/// napping (an append then waits for the nap's end), and any other request ends the
/// nap at once, answered after the appends queued before it.
#[test]
fn dense_appends_let_the_thread_nap_and_any_other_request_wakes_it() {
    let d = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        argon2_cheap: true,
        history: HistoryOptions {
            per_conversation: 100,
            memory_bytes: 1 << 20,
            flush_every: Duration::from_secs(3600),
            ..HistoryOptions::default()
        },
        nap: Duration::from_secs(20),
        ..StoreOptions::default()
    };
    let h = Store::open_with(d.path(), Durability::Memory, opts).unwrap();
    // Two appends in a row: the thread naps after the second (once it has found
    // nothing more queued: give it that moment).
    dm(&h, "ann", "bob", 1..3, 1);
    let t = std::time::Instant::now();
    while !h
        .inner
        .nap
        .napping
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        assert!(t.elapsed() < Duration::from_secs(10), "no nap");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut c = HistChunk {
        conv: dm_conv(b"ann", b"bob"),
        ..Default::default()
    };
    c.push(b"ann", 3, now(), b"m3");
    let (tx, rx) = mpsc::channel();
    h.history_append(vec![c], move |r| {
        let _ = tx.send(r);
    })
    .unwrap();
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "an append does not end the nap"
    );
    let t = std::time::Instant::now();
    let p = page(&h, "bob", "ann", 0, 10);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(
        ids(p),
        [1, 2, 3],
        "the append queued before the query is in it"
    );
    assert!(
        rx.try_recv().unwrap().is_ok(),
        "answered with the query's round"
    );
}

/// A payload a shard shared is kept by reference only briefly: it is a slice of the read
/// buffer it came in, which it keeps alive whole. Past `PIN_MAX` the tail copies it (and
/// the message reads back the same), long before the tail is written.
#[test]
fn a_tail_lets_go_of_a_shared_payloads_read_buffer_soon() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let d = tempfile::tempdir().unwrap();
    let h = open(d.path(), 100, None);
    call(|cb| h.ensure_user("ann", cb)).unwrap();
    call(|cb| h.ensure_user("bob", cb)).unwrap();
    let freed = Arc::new(AtomicBool::new(false));
    let payload = {
        let buf = Bytes::from_owner(ReadBuf(vec![7u8; 1 << 20], freed.clone()));
        buf.slice(0..HistChunk::INLINE_MAX + 1)
    };
    let mut c = HistChunk {
        conv: dm_conv(b"ann", b"bob"),
        ..Default::default()
    };
    c.push_shared(b"ann", 1, now(), &payload);
    drop(payload);
    call(|cb| h.history_append(vec![c], cb)).unwrap();
    let t = std::time::Instant::now();
    while !freed.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the read buffer is kept"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let HistPage::Messages(m) = page(&h, "bob", "ann", 0, 10) else {
        panic!("no page")
    };
    assert_eq!(m.len(), 1);
    assert_eq!(&m[0].payload[..], &[7u8; HistChunk::INLINE_MAX + 1][..]);
}

/// A read buffer that tells when it is freed.
struct ReadBuf(Vec<u8>, std::sync::Arc<std::sync::atomic::AtomicBool>);

impl AsRef<[u8]> for ReadBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A hot tail keeps its shared payloads by reference past `PIN_MAX` (no copy: its
/// conversation's window mostly drops them first), but not past `HOT_PIN_MAX`: then it
/// copies them, and lets their read buffer go. The messages read back the same.
#[test]
fn a_hot_tail_keeps_shared_payloads_longer_but_not_for_ever() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let h = open_hot(dir.path(), 100, 16 << 10, 1 << 20);
    // Hot: 4 000 records of 100 B stamped 500 a second, through a window of 100.
    dm_stamped(&h, 4_000, 100);
    // And a conversation that is not hot, c–d, in the same request.
    call(|cb| h.ensure_user("c", cb)).unwrap();
    call(|cb| h.ensure_user("d", cb)).unwrap();
    let freed = Arc::new(AtomicBool::new(false));
    let cold_freed = Arc::new(AtomicBool::new(false));
    let size = HistChunk::INLINE_MAX + 1;
    let mut c = HistChunk {
        conv: dm_conv(b"a", b"b"),
        ..Default::default()
    };
    let mut cold = HistChunk {
        conv: dm_conv(b"c", b"d"),
        ..Default::default()
    };
    {
        let buf = Bytes::from_owner(ReadBuf(vec![9u8; 1 << 20], freed.clone()));
        let t0 = now();
        for id in 4_001..=4_010u64 {
            let at = (id as usize - 4_001) * size;
            c.push_shared(b"a", id, t0 + id, &buf.slice(at..at + size));
        }
        let buf = Bytes::from_owner(ReadBuf(vec![8u8; 1 << 20], cold_freed.clone()));
        cold.push_shared(b"c", 1, t0, &buf.slice(0..size));
    }
    let t = std::time::Instant::now();
    call(|cb| h.history_append(vec![c, cold], cb)).unwrap();
    // The tail that is not hot copies its payload at PIN_MAX; the hot one keeps its own
    // (in the same pass, they went together).
    while !cold_freed.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a cold tail kept its payload"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let hot_freed = freed.load(Ordering::SeqCst);
    if t.elapsed() < Duration::from_millis(200) {
        assert!(!hot_freed, "the hot tail copied its payloads at PIN_MAX");
    }
    while !freed.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the read buffer is kept"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(h.stats().history_writes, 0);
    let HistPage::Messages(m) = page(&h, "b", "a", 0, 100) else {
        panic!("no page")
    };
    assert_eq!(m.len(), 100);
    assert!(m[90..]
        .iter()
        .all(|m| m.payload[..] == [9u8; HistChunk::INLINE_MAX + 1][..]));
}

/// A store whose tails may hold `hot` bytes of hot conversations past `memory_bytes`.
fn open_hot(dir: &std::path::Path, keep: u64, memory_bytes: usize, hot: usize) -> StoreHandle {
    open_hot_every(dir, keep, memory_bytes, hot, Duration::from_secs(3600))
}

fn open_hot_every(
    dir: &std::path::Path,
    keep: u64,
    memory_bytes: usize,
    hot: usize,
    flush_every: Duration,
) -> StoreHandle {
    let opts = history_opts(keep, None, memory_bytes, flush_every);
    open_history(
        dir,
        HistoryOptions {
            hot_bytes: hot,
            ..opts
        },
    )
}

/// Appends messages 1..=n from a to b, 10 a chunk, of `size` bytes, stamped 2 ms apart
/// (500 a second as the shards saw them, however fast this runs: the rate is known from
/// the first budget on).
fn dm_stamped(h: &StoreHandle, n: u64, size: usize) {
    dm_stamped_in(h, n, size, 10, 2_000);
}

/// [`dm_stamped`], `per_chunk` a chunk, stamped `gap_us` apart.
fn dm_stamped_in(h: &StoreHandle, n: u64, size: usize, per_chunk: u64, gap_us: u64) {
    call(|cb| h.ensure_user("a", cb)).unwrap();
    call(|cb| h.ensure_user("b", cb)).unwrap();
    let t0 = now();
    let payload = vec![7u8; size];
    for part in 0..n.div_ceil(per_chunk) {
        let mut c = HistChunk {
            conv: dm_conv(b"a", b"b"),
            ..Default::default()
        };
        for id in (part * per_chunk + 1)..=(part * per_chunk + per_chunk).min(n) {
            c.push(b"a", id, t0 + id * gap_us, &payload);
        }
        call(|cb| h.history_append(vec![c], cb)).unwrap();
    }
}

/// A conversation that goes through its window many times over (here within the hour
/// of the flush interval) keeps its tail in memory past the memory budget: whole
/// segments past the window are dropped there, and only the window is ever written.
/// With no room for hot tails, the budget writes everything that came.
#[test]
fn a_hot_conversations_history_past_its_window_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let h = open_hot(dir.path(), 100, 16 << 10, 1 << 20);
    dm_stamped(&h, 20_000, 100);
    // 20 000 records of ~125 B (2.5 MB) against a 16 KiB budget: nothing written yet.
    assert_eq!(h.stats().history_writes, 0);
    assert_eq!(
        ids(page(&h, "a", "b", 0, 500)),
        (19_901..20_001).collect::<Vec<_>>()
    );
    call(|cb| h.flush(cb)).unwrap();
    let hot = h.stats();
    assert_eq!(hot.history_writes, 1);
    // The window's segments at most (two of 512 records).
    assert!(hot.history_log_bytes < 200_000, "{hot:?}");
    assert_eq!(
        ids(page(&h, "a", "b", 0, 500)),
        (19_901..20_001).collect::<Vec<_>>()
    );
    drop(h);

    let dir = tempfile::tempdir().unwrap();
    let h = open_hot(dir.path(), 100, 16 << 10, 0);
    dm_stamped(&h, 20_000, 100);
    call(|cb| h.flush(cb)).unwrap();
    let cold = h.stats();
    assert!(cold.history_writes > 100, "{cold:?}");
    assert_eq!(
        ids(page(&h, "a", "b", 0, 500)),
        (19_901..20_001).collect::<Vec<_>>()
    );
}

/// Hot tails are bounded too: past the hot bytes every tail is written.
#[test]
fn hot_tails_past_their_bound_are_written() {
    // A window of 1 000 records of ~30 B (~30 KB, in whole segments of 512) fits in
    // 1 MiB of hot tails, not in 16 KiB.
    for (hot, writes) in [(1 << 20, 0..=0), (16 << 10, 5..=1_000)] {
        let dir = tempfile::tempdir().unwrap();
        let h = open_hot(dir.path(), 1_000, 4 << 10, hot);
        dm_stamped(&h, 5_000, 4);
        let s = h.stats();
        assert!(writes.contains(&s.history_writes), "{hot}: {s:?}");
        assert_eq!(ids(page(&h, "a", "b", 0, 3)), vec![4_998, 4_999, 5_000]);
    }
}

/// A write of the cold tails that leaves hot ones schedules the flush that writes them,
/// even when it comes first after a flush (nothing due yet): a hot tail is written
/// within `flush_every` like any, with no other request to wake the thread.
#[test]
fn hot_tails_are_written_within_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let h = open_hot_every(
        dir.path(),
        100,
        16 << 10,
        1 << 20,
        Duration::from_millis(100),
    );
    // 4 000 a second as stamped: twice the window of 100 within 0.1 s; in one request,
    // the first after the store opened, past the budget at once.
    dm_stamped_in(&h, 3_000, 100, 3_000, 250);
    let t = std::time::Instant::now();
    while h.stats().history_writes == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "never written");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(ids(page(&h, "a", "b", 0, 3)), vec![2_998, 2_999, 3_000]);
}
