//! Regression tests from the review of offline delivery, rooms and accounts: offline backlog, held messages, sync-mode journal.
//!
//! Each test's comment describes the bug it was written against; all of them are fixed.

use std::time::Duration;

use ringrouter_client::Status;
use ringrouter_proto::v1::{client_frame::Kind as C, server_frame::Kind as S};
use ringrouter_tests::{client_frame_bytes, send_frame_bytes, Raw, RouterProc, T};

/// Queues messages numbered `0..n` (4-byte big-endian payloads) for `to` in one write,
/// then a fence asking for a SendResult; returns once the fence is confirmed, so every
/// one of them is delivered or stored.
fn queue_numbered(c: &mut Raw, to: &str, n: u32) {
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend(send_frame_bytes(to, &i.to_be_bytes(), false, 0));
    }
    bytes.extend(send_frame_bytes(to, b"fence", true, 99));
    c.write(&bytes).unwrap();
    assert_eq!(c.wait_send_result(99), Status::Ok as i32);
}

/// A login backlog longer than one page (1024) pauses after the first page until the
/// client acks (unacked > max_unacked/2). Live messages that arrive meanwhile are held.
/// Once held payload bytes pass max_pending_bytes/2, `continue_loading` never loads the
/// next page again (`pending()` counts `held_bytes`, which only `finish_backlog` clears):
/// the rest of the backlog and every held message are stuck for good.
fn backlog_then_held(live_msgs: usize) -> (usize, usize) {
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--max-unacked-per-session",
        "1500",
        "--max-pending-bytes",
        "64k",
    ]);
    r.visit_and_wait("bob", Duration::from_millis(200));
    let mut a = r.raw_login("alice");
    const BACKLOG: usize = 1100;
    queue_numbered(&mut a, "bob", BACKLOG as u32);

    let mut b = r.raw_login("bob");
    let first = b.collect_delivers(1024, T);
    assert_eq!(first.len(), 1024, "first backlog page");
    // bob does not ack yet: live messages are held behind the backlog.
    for i in 0..live_msgs {
        let mut p = vec![0xEE; 1000];
        p[..4].copy_from_slice(&(i as u32).to_be_bytes());
        a.send_to("bob", &p, 1000 + i as u64);
        assert_eq!(a.wait_send_result(1000 + i as u64), Status::Ok as i32);
    }
    b.ack(first.last().unwrap().seq);
    let want = BACKLOG + 1 - 1024 + live_msgs;
    let rest = b.collect_delivers(want, Duration::from_secs(4));
    (rest.len(), want)
}

#[test]
fn review_backlog_resumes_after_ack_with_few_held_bytes() {
    // Control: 20 KB held (< 32 KiB = max_pending/2) — works.
    let (got, want) = backlog_then_held(20);
    assert_eq!(got, want);
}

#[test]
fn review_backlog_resumes_after_ack_with_many_held_bytes() {
    // 40 KB held (> 32 KiB, < 64 KiB): the backlog never resumes.
    let (got, want) = backlog_then_held(40);
    assert_eq!(
        got, want,
        "rest of the backlog + held live messages never delivered after the ack"
    );
}

fn setup_room(r: &RouterProc) -> (Raw, Raw) {
    let mut a = r.raw_login("alice");
    let mut b = r.raw_login("bob");
    let c = a.create_room("syncroom", "");
    assert_eq!(c.status, Status::Ok as i32, "{c:?}");
    let j = b.join_room("syncroom", "");
    assert_eq!(j.status, Status::Ok as i32, "{j:?}");
    (a, b)
}

/// Sync mode: a room message is journaled for every member, the sender's own user
/// included (`on_room_fan` -> `journal(user, .., skip = sender)`); the sending device is
/// skipped for live delivery, so that entry is never delivered/acked. It fills the
/// sender's own offline queue: after max_offline_per_user room messages, the sender's
/// own sends are RATE_LIMITED even though every real recipient acked.
#[test]
fn review_sync_room_sender_fills_own_offline_queue() {
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--durability",
        "sync",
        "--max-offline-per-user",
        "3",
    ]);
    let (mut a, mut b) = setup_room(&r);
    let mut statuses = Vec::new();
    for i in 0..6u8 {
        let st = a.send_room("syncroom", &[i], 10 + u64::from(i));
        statuses.push(st);
        if st == Status::Ok as i32 {
            let d = b.collect_delivers(1, T);
            assert_eq!(d.len(), 1);
            b.ack(d[0].seq);
        }
    }
    assert!(
        statuses.iter().all(|&s| s == Status::Ok as i32),
        "room sends: {statuses:?} (1 = OK, 9 = RATE_LIMITED: the sender's own offline queue filled up)"
    );
}

/// Sync mode: the sender gets its own room message back at its next login.
#[test]
fn review_sync_room_message_echoed_to_sender_at_next_login() {
    let r = RouterProc::start(&["--shards", "1", "--durability", "sync"]);
    let (mut a, mut b) = setup_room(&r);
    assert_eq!(a.send_room("syncroom", b"hello", 10), Status::Ok as i32);
    let d = b.collect_delivers(1, T);
    b.ack(d[0].seq);
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    let mut a = r.raw_login("alice");
    let echoed = a.collect_delivers(1, Duration::from_secs(1));
    assert!(
        echoed.is_empty(),
        "alice got her own room message back: {echoed:?}"
    );
}

/// Sync mode, two devices of bob. S1 is live (1100 journaled messages, not acked yet);
/// S2 logs in and pauses after its first backlog page (1024 > max_unacked/2). A new
/// message m is journaled: S1 gets it live, S2 is `loading` so it is skipped ("already in
/// the queue behind it"). S1 acks everything -> `remove_up_to(top)` deletes m from the
/// queue. S2 acks its page, loads the next one from 1025: m is gone. S2 was connected
/// when m was sent and never receives it (in memory mode it would be held and delivered).
#[test]
fn review_sync_loading_device_misses_live_message_acked_by_other_device() {
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--durability",
        "sync",
        "--max-unacked-per-session",
        "1500",
    ]);
    let mut s1 = r.raw_login("bob");
    let mut a = r.raw_login("alice");
    queue_numbered(&mut a, "bob", 1100);
    let got1 = s1.collect_delivers(1101, T);
    assert_eq!(got1.len(), 1101);
    let mut s2 = r.raw_login("bob");
    let page = s2.collect_delivers(1024, T);
    assert_eq!(page.len(), 1024);
    a.send_to("bob", b"MMMM", 100);
    assert_eq!(a.wait_send_result(100), Status::Ok as i32);
    let m1 = s1.collect_delivers(1, T);
    assert_eq!(&m1[0].payload[..], b"MMMM");
    s1.ack(m1[0].seq);
    // Let the removal reach the store before S2 asks for its next page.
    s1.send(C::Ping(ringrouter_proto::v1::Ping { nonce: 1 }));
    loop {
        if let S::Pong(_) = s1.next_non_ping(T) {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    s2.ack(page.last().unwrap().seq);
    let rest = s2.collect_delivers(200, Duration::from_secs(2));
    assert!(
        rest.iter().any(|d| &d.payload[..] == b"MMMM"),
        "S2 never got the message sent while it was logged in ({} others after its first page)",
        rest.len()
    );
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// While a session is `loading`, live messages go to `held` with no count bound and no
/// backpressure; only `held_bytes` (payload bytes) is counted, so empty payloads cost
/// ~100 B of router memory each and never trip the slow-consumer check.
#[test]
fn review_held_messages_grow_without_bound() {
    let r = RouterProc::start(&["--shards", "1", "--max-unacked-per-session", "1500"]);
    r.visit_and_wait("bob", Duration::from_millis(200));
    let mut a = r.raw_login("alice");
    queue_numbered(&mut a, "bob", 1100);
    let mut b = r.raw_login("bob");
    assert_eq!(b.collect_delivers(1024, T).len(), 1024);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kb(r.pid());
    let one = send_frame_bytes("bob", b"", false, 0);
    for fence in 1000..1010 {
        let mut chunk = Vec::with_capacity(one.len() * 50_000);
        for _ in 0..50_000 {
            chunk.extend_from_slice(&one);
        }
        chunk.extend(send_frame_bytes("bob", b"", true, fence));
        a.write(&chunk).unwrap();
        // OK while held; RATE_LIMITED once bob is cut and his offline queue is full.
        let _ = a.wait_send_result_any(fence);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kb(r.pid());
    // bob's session is still open (never closed as a slow consumer).
    let _ = b.write(&client_frame_bytes(C::Ping(ringrouter_proto::v1::Ping {
        nonce: 1,
    })));
    let mut open = false;
    while let Ok(f) = b.next(Duration::from_secs(2)) {
        if let Some(S::Pong(_)) = f.kind {
            open = true;
            break;
        }
    }
    assert!(
        !open || after.saturating_sub(before) < 16 * 1024,
        "router RSS grew {} MiB holding 500k empty messages for one session (still open: {open})",
        (after - before) / 1024
    );
}

/// With --max-unacked-per-session below a backlog page, a backlog longer than the limit
/// (but shorter than a page) goes out in one page and `finish_backlog` then closes the
/// session at once (unacked > max): the client cannot ack in time, the stored messages
/// stay, and every later login is cut the same way. The user can never get a session.
#[test]
fn review_small_unacked_limit_and_short_backlog_kick_every_login() {
    let r = RouterProc::start(&["--shards", "1", "--max-unacked-per-session", "20"]);
    r.visit_and_wait("ivy", Duration::from_millis(200));
    let mut a = r.raw_login("jack");
    let mut bytes = Vec::new();
    for i in 0..30u8 {
        bytes.extend(send_frame_bytes("ivy", &[i], false, 0));
    }
    bytes.extend(send_frame_bytes("ivy", b"fence", true, 99));
    a.write(&bytes).unwrap();
    assert_eq!(a.wait_send_result(99), Status::Ok as i32);
    let mut cut = Vec::new();
    for attempt in 0..3 {
        let mut b = r.raw_login("ivy");
        let got = b.collect_delivers(31, Duration::from_millis(500));
        let mut out = Vec::new();
        if let Some(last) = got.last() {
            out.extend(client_frame_bytes(C::Ack(ringrouter_proto::v1::Ack {
                up_to_seq: last.seq,
            })));
        }
        out.extend(client_frame_bytes(C::Ping(ringrouter_proto::v1::Ping {
            nonce: 1,
        })));
        let _ = b.write(&out);
        let mut closed = false;
        loop {
            match b.next(Duration::from_secs(2)) {
                Ok(f) => match f.kind {
                    Some(S::Pong(_)) => break,
                    Some(S::Error(e)) => {
                        cut.push((attempt, got.len(), e.code, e.reason));
                    }
                    _ => {}
                },
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if !closed {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        cut.is_empty(),
        "logins cut right after their backlog: {cut:?}"
    );
}

/// `Retained::ack` (HEAD 4764937) only looks at the first LOAD_PAGE+1 entries for the
/// oldest name still referenced. With more backlog entries than that still unacked at
/// the front, it drops every name but the last, so the live messages behind the backlog
/// lose their (sender, room); `take_unstored` then maps them (saturating_sub -> index 0)
/// to the wrong sender. At the next login alice's message arrives as sent by carol.
#[test]
fn review_requeued_messages_keep_their_sender_after_a_partial_ack() {
    let r = RouterProc::start(&["--shards", "1"]);
    r.visit_and_wait("bob", Duration::from_millis(200));
    let mut d = r.raw_login("dave");
    queue_numbered(&mut d, "bob", 1100);

    let mut b = r.raw_login("bob");
    let backlog = b.collect_delivers(1101, T);
    assert_eq!(backlog.len(), 1101);
    let mut alice = r.raw_login("alice");
    let mut carol = r.raw_login("carol");
    alice.send_to("bob", b"from-alice", 1);
    assert_eq!(alice.wait_send_result(1), Status::Ok as i32);
    carol.send_to("bob", b"from-carol", 1);
    assert_eq!(carol.wait_send_result(1), Status::Ok as i32);
    let live = b.collect_delivers(2, T);
    assert_eq!(live[0].from_user, "alice");
    assert_eq!(live[1].from_user, "carol");
    // Ack only the first backlog message, then go away.
    b.ack(backlog[0].seq);
    b.send(C::Ping(ringrouter_proto::v1::Ping { nonce: 1 }));
    while !matches!(b.next_non_ping(T), S::Pong(_)) {}
    drop(b);
    std::thread::sleep(Duration::from_millis(300));

    let mut b = r.raw_login("bob");
    let again = b.collect_delivers(1102, T);
    let requeued: Vec<(String, String)> = again
        .iter()
        .filter(|d| d.payload.starts_with(b"from-"))
        .map(|d| {
            (
                d.from_user.clone(),
                String::from_utf8_lossy(&d.payload).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        requeued,
        vec![
            ("alice".to_owned(), "from-alice".to_owned()),
            ("carol".to_owned(), "from-carol".to_owned())
        ],
        "requeued live messages must keep their authenticated sender"
    );
}
