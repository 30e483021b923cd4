//! Offline delivery and at-least-once: messages for a user without a session are
//! stored and delivered, in order, at the next login (also after a restart); what a
//! session did not ack comes back at the next login, and nothing else does; the
//! offline queue is bounded and says so; in sync mode a `kill -9` loses nothing
//! that was confirmed.

use std::time::Duration;

use ringrouter_client::Status;
use ringrouter_proto::v1::server_frame;
use ringrouter_proto::v1::server_frame::Kind as S;
use ringrouter_tests::{
    assert_survivors, pseudo_random, send_frame_bytes, users_on_shards, wait_until,
    ConfirmedSender, Driver, Raw, RouterProc, T,
};

fn send_result(k: server_frame::Kind) -> (u64, i32) {
    match k {
        server_frame::Kind::SendResult(s) => (s.request_id, s.status),
        other => panic!("expected a SendResult, got {other:?}"),
    }
}

fn offline_message_is_delivered_at_next_login(shards: &str) {
    let r = RouterProc::start(&["--shards", shards]);
    let n: usize = shards.parse().unwrap();
    let u = users_on_shards(&format!("off{n}-"), n.max(2));
    let (alice, bob) = (&u[0], &u[1]);
    r.visit(bob);
    let mut a = r.client(alice);
    for i in 0..5u8 {
        a.send_wait(bob, &[i]).expect("stored: OK");
    }
    // A user that never logged in does not exist: NOT_FOUND, nothing stored.
    let err = a.send_wait("never-seen", b"x").unwrap_err();
    assert_eq!(err.code(), Some(Status::NotFound), "{err}");
    let mut b = r.raw_login(bob);
    let got = b.delivers(5, T);
    for (i, d) in got.iter().enumerate() {
        assert_eq!(
            (d.seq, d.from_user.as_str(), &d.payload[..]),
            (i as u64 + 1, alice.as_str(), &[i as u8][..])
        );
        assert_ne!(d.msg_id, 0);
    }
    // Then live messages follow the backlog.
    a.send_wait(bob, b"live").unwrap();
    let live = b.delivers(1, T);
    assert_eq!((live[0].seq, &live[0].payload[..]), (6, &b"live"[..]));
}

#[test]
fn offline_message_is_delivered_at_next_login_one_shard() {
    offline_message_is_delivered_at_next_login("1");
}

#[test]
fn offline_message_is_delivered_at_next_login_across_shards() {
    offline_message_is_delivered_at_next_login("2");
}

#[test]
fn ten_thousand_queued_messages_arrive_in_order() {
    let r = RouterProc::start(&["--shards", "2"]);
    let u = users_on_shards("order10k-", 2);
    r.visit(&u[1]);
    let mut a = r.client(&u[0]);
    const N: u32 = 10_000;
    let payloads: Vec<[u8; 4]> = (0..N).map(u32::to_be_bytes).collect();
    a.send_many(&u[1], payloads.iter().map(|p| &p[..]))
        .expect("send");
    a.send_wait(&u[1], b"last").expect("all stored");
    let mut b = r.raw_login(&u[1]);
    let mut next = 0u32;
    let mut acked = 0;
    while next < N {
        let batch = b.delivers(1000.min((N - next) as usize), T);
        for d in &batch {
            assert_eq!(d.payload[..], next.to_be_bytes(), "in order");
            next += 1;
            acked = d.seq;
        }
        b.ack(acked);
    }
    let last = b.delivers(1, T);
    assert_eq!(&last[0].payload[..], b"last");
}

#[test]
fn unacked_messages_come_back_and_nothing_else() {
    let r = RouterProc::start(&["--shards", "2"]);
    let u = users_on_shards("unacked-", 2);
    let mut a = r.client(&u[0]);
    let mut b = r.raw_login(&u[1]);
    for i in 1..=10u8 {
        a.send_wait(&u[1], &[i]).unwrap();
    }
    let got = b.delivers(10, T);
    assert_eq!(got.last().map(|d| d.seq), Some(10));
    b.ack(4);
    // A ping round trip makes sure the ack was read before the disconnect.
    b.send(ringrouter_proto::v1::client_frame::Kind::Ping(
        ringrouter_proto::v1::Ping { nonce: 9 },
    ));
    assert!(matches!(b.next_non_ping(T), server_frame::Kind::Pong(_)));
    drop(b);
    let mut again = r.raw_login(&u[1]);
    let back = again.delivers(6, T);
    let payloads: Vec<u8> = back.iter().map(|d| d.payload[0]).collect();
    assert_eq!(payloads, [5, 6, 7, 8, 9, 10]);
    // Their msg_ids are the ones of the first delivery (clients dedupe by them).
    for (d, first) in back.iter().zip(&got[4..]) {
        assert_eq!(d.msg_id, first.msg_id);
    }
    // Nothing else: the next frame is a fresh live message.
    a.send_wait(&u[1], b"new").unwrap();
    match again.next_non_ping(T) {
        server_frame::Kind::Deliver(d) => assert_eq!((d.seq, &d.payload[..]), (7, &b"new"[..])),
        other => panic!("{other:?}"),
    }
}

/// The same device reconnecting before the router saw its old connection end: the new
/// session's backlog is over by then, and what the old one left unacked still reaches
/// it (not only the login after it). The user's other sessions, older or of another
/// device, do not get it again.
#[test]
fn unacked_messages_reach_a_login_that_came_before_the_old_connection_ended() {
    for driver in [Driver::Default, Driver::Legacy] {
        let r = RouterProc::start_with(&["--shards", "2"], driver);
        let u = users_on_shards("early-", 2);
        let mut a = r.client(&u[0]);
        let mut older = r.raw_login(&u[1]);
        let mut b = r.raw_login(&u[1]);
        // Another device, logged in after `b`: it gets its own copies.
        let mut laptop = r.raw_login_password(&u[1], "", "laptop");
        for i in 1..=10u8 {
            a.send_wait(&u[1], &[i]).unwrap();
        }
        let got = b.delivers(10, T);
        let older_last = older.delivers(10, T)[9].seq;
        older.ack(older_last);
        let laptop_last = laptop.delivers(10, T)[9].seq;
        laptop.ack(laptop_last);
        b.ack(4);
        b.send(ringrouter_proto::v1::client_frame::Kind::Ping(
            ringrouter_proto::v1::Ping { nonce: 9 },
        ));
        assert!(matches!(b.next_non_ping(T), server_frame::Kind::Pong(_)));
        // Logged in and past its (empty) backlog while `b` is still connected.
        let mut again = r.raw_login(&u[1]);
        again.send(ringrouter_proto::v1::client_frame::Kind::Ping(
            ringrouter_proto::v1::Ping { nonce: 10 },
        ));
        assert!(matches!(
            again.next_non_ping(T),
            server_frame::Kind::Pong(_)
        ));
        drop(b);
        let back = again.delivers(6, T);
        let payloads: Vec<u8> = back.iter().map(|d| d.payload[0]).collect();
        assert_eq!(payloads, [5, 6, 7, 8, 9, 10], "{driver:?}");
        for (d, first) in back.iter().zip(&got[4..]) {
            assert_eq!(d.msg_id, first.msg_id);
        }
        again.ack(back[5].seq);
        // Then live traffic, to both; the older session got nothing twice.
        a.send_wait(&u[1], b"new").unwrap();
        for s in [&mut again, &mut older, &mut laptop] {
            match s.next_non_ping(T) {
                server_frame::Kind::Deliver(d) => assert_eq!(&d.payload[..], b"new"),
                other => panic!("{driver:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn queued_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let r = RouterProc::start(&["--shards", "2", "--data-dir", d]);
    r.visit("carol");
    let mut a = r.client("dave");
    for i in 0..3u8 {
        a.send_wait("carol", &[i]).unwrap();
    }
    drop(a);
    let (code, _) = r.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let r = RouterProc::start(&["--shards", "2", "--data-dir", d]);
    let mut c = r.raw_login("carol");
    let got: Vec<u8> = c.delivers(3, T).iter().map(|d| d.payload[0]).collect();
    assert_eq!(got, [0, 1, 2]);
}

#[test]
fn sessions_cut_by_shutdown_get_their_unacked_messages_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let r = RouterProc::start(&["--shards", "2", "--data-dir", d]);
    let mut b = r.raw_login("erin");
    let mut a = r.client("frank");
    for i in 0..4u8 {
        a.send_wait("erin", &[i]).unwrap();
    }
    assert_eq!(b.delivers(4, T).len(), 4);
    drop(a);
    let (code, _) = r.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let r = RouterProc::start(&["--shards", "2", "--data-dir", d]);
    let mut b = r.raw_login("erin");
    let got: Vec<u8> = b.delivers(4, T).iter().map(|d| d.payload[0]).collect();
    assert_eq!(got, [0, 1, 2, 3]);
}

#[test]
fn full_offline_queue_rejects_and_drop_oldest_keeps_the_newest() {
    for (mode, expect_reject) in [("reject", true), ("drop-oldest", false)] {
        let r = RouterProc::start(&["--max-offline-per-user", "5", "--offline-overflow", mode]);
        r.visit("gina");
        let mut a = r.raw_login("hal");
        for i in 1..=6u8 {
            a.send_to("gina", &[i], u64::from(i));
        }
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(send_result(a.next_non_ping(T)));
        }
        let rate_limited = statuses
            .iter()
            .filter(|(_, s)| *s == Status::RateLimited as i32)
            .count();
        // The metric counts the messages stored, not the one refused (published by the
        // shard's ticker: looked at until it has them, then once more a while later).
        let want = if expect_reject { 5.0 } else { 6.0 };
        let stored = r.metric_settled("ringrouter_offline_stored_total", want, T);
        assert_eq!(stored, want, "{mode}: messages stored");
        if expect_reject {
            assert_eq!(statuses[5], (6, Status::RateLimited as i32), "{mode}");
            assert_eq!(rate_limited, 1, "{mode}: {statuses:?}");
        } else {
            assert_eq!(rate_limited, 0, "{mode}: {statuses:?}");
        }
        let mut g = r.raw_login("gina");
        let got: Vec<u8> = g.delivers(5, T).iter().map(|d| d.payload[0]).collect();
        let want: Vec<u8> = if expect_reject {
            vec![1, 2, 3, 4, 5]
        } else {
            vec![2, 3, 4, 5, 6]
        };
        assert_eq!(got, want, "{mode}");
    }
}

/// Under drop-oldest, a message bigger than the offline queue's byte bound by itself is
/// refused RATE_LIMITED (the store keeps nothing of it), not answered OK and counted
/// stored; the queue and the next messages are untouched.
#[test]
fn a_message_over_the_offline_byte_bound_by_itself_is_refused_under_drop_oldest() {
    let r = RouterProc::start(&[
        "--max-offline-bytes-per-user",
        "64KiB",
        "--offline-overflow",
        "drop-oldest",
    ]);
    r.visit("ola");
    let mut a = r.raw_login("pim");
    a.send_to("ola", b"first", 1);
    a.send_to("ola", &vec![9u8; 100 << 10], 2);
    a.send_to("ola", b"third", 3);
    let statuses: Vec<_> = (0..3).map(|_| send_result(a.next_non_ping(T))).collect();
    assert_eq!(
        statuses,
        [
            (1, Status::Ok as i32),
            (2, Status::RateLimited as i32),
            (3, Status::Ok as i32)
        ]
    );
    let stored = r.metric_settled("ringrouter_offline_stored_total", 2.0, T);
    assert_eq!(stored, 2.0);
    let mut o = r.raw_login("ola");
    let got: Vec<Vec<u8>> = o
        .delivers(2, T)
        .iter()
        .map(|d| d.payload.to_vec())
        .collect();
    assert_eq!(got, [b"first".to_vec(), b"third".to_vec()]);
}

#[test]
fn a_session_that_never_acks_is_cut_at_its_unacked_limit_and_loses_nothing() {
    let r = RouterProc::start(&["--max-unacked-per-session", "20"]);
    let mut b = r.raw_login("ivy");
    let mut a = r.client("jack");
    for i in 0..30u8 {
        a.send_wait("ivy", &[i]).unwrap();
    }
    // The session got the first messages, then was closed as a slow consumer.
    let (frames, _) = b.read_until_end(T);
    let mut seen = 0;
    let mut cut = false;
    for f in frames {
        match f.kind {
            Some(server_frame::Kind::Deliver(_)) => seen += 1,
            Some(server_frame::Kind::Error(e)) => {
                assert_eq!(e.code, Status::SlowConsumer as i32);
                cut = true;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(cut, "closed as a slow consumer");
    assert!(seen <= 21, "{seen} delivered");
    // Every message, once, in order, at the next login: the backlog comes in pages of
    // half the unacked limit, each after the client acked the previous one.
    let mut b = r.raw_login("ivy");
    let mut got = Vec::new();
    while got.len() < 30 {
        let page = b.delivers(10, T);
        got.extend(page.iter().map(|d| d.payload[0]));
        b.ack(page[page.len() - 1].seq);
    }
    assert_eq!(got, (0..30).collect::<Vec<u8>>());
}

/// A kill -9 while confirmed sends are in flight: a sender pipelines messages under
/// `--durability sync` to one user who is offline and one who is online and never acks,
/// and the router is killed at a point that differs from run to run. After the restart
/// each gets every message whose SendResult OK arrived before the kill, in send order,
/// once (at least once: messages not yet confirmed may be there too).
#[test]
fn sync_mode_kill_9_loses_nothing_that_was_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let args = ["--shards", "2", "--durability", "sync", "--data-dir", d];
    let mut r = RouterProc::start(&args);
    r.visit("kim");
    let to = |i: u64| if i.is_multiple_of(2) { "kim" } else { "lee" };
    let online = r.raw_login("lee");
    let sender = ConfirmedSender::start(r.raw_login("max"), 32, move |i| {
        send_frame_bytes(to(i), &i.to_be_bytes(), true, i + 1)
    });
    let kill_after = pseudo_random(200, 1200) as usize;
    assert!(
        wait_until(Duration::from_secs(30), || sender.confirmed() >= kill_after),
        "only {} sends confirmed",
        sender.confirmed()
    );
    r.kill9();
    let (confirmed, sent) = sender.join();
    eprintln!("killed after {} confirmed of {sent} sent", confirmed.len());
    drop(online);
    let r = RouterProc::start(&args);
    let mut s = r.raw_login("max");
    for (user, parity) in [("kim", 0), ("lee", 1)] {
        let mut c = r.raw_login(user);
        // A fence sent after the login: everything before it is the backlog.
        s.send_to(user, b"fence", 1);
        assert_eq!(s.wait_send_result(1), Status::Ok as i32);
        let got = crate::rooms::numbers_until_fence(&mut c);
        assert_survivors(user, &got, &confirmed, sent, |i| i % 2 == parity);
    }
}

#[test]
fn sync_mode_acked_messages_are_removed() {
    let r = RouterProc::start(&["--durability", "sync"]);
    let mut b = r.raw_login("nan");
    let mut a = r.client("oz");
    for i in 0..5u8 {
        a.send_wait("nan", &[i]).unwrap();
    }
    let got = b.delivers(5, T);
    b.ack(got[2].seq);
    b.send(ringrouter_proto::v1::client_frame::Kind::Ping(
        ringrouter_proto::v1::Ping { nonce: 1 },
    ));
    assert!(matches!(b.next_non_ping(T), server_frame::Kind::Pong(_)));
    drop(b);
    let mut b = r.raw_login("nan");
    let back: Vec<u8> = b.delivers(2, T).iter().map(|d| d.payload[0]).collect();
    assert_eq!(back, [3, 4]);
}

/// Queues messages numbered `0..n` (4-byte big-endian payloads) for `to` in one write,
/// then a fence asking for a SendResult; returns once the fence is confirmed, so every
/// one of them is delivered or stored.
pub(crate) fn queue_numbered(c: &mut Raw, to: &str, n: u32) {
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend(send_frame_bytes(to, &i.to_be_bytes(), false, 0));
    }
    bytes.extend(send_frame_bytes(to, b"fence", true, 99));
    c.write(&bytes).unwrap();
    assert_eq!(c.wait_send_result(99), Status::Ok as i32);
}

/// The payloads [`queue_numbered`] sends, `range` of them.
fn numbered(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|i| i.to_be_bytes().to_vec()).collect()
}

/// A 1000-byte live message numbered `i`.
fn live(i: usize) -> Vec<u8> {
    let mut p = vec![0xEE; 1000];
    p[..4].copy_from_slice(&(i as u32).to_be_bytes());
    p
}

/// A login backlog longer than one page (1024) pauses after the first page until the
/// client acks (unacked > max_unacked/2). Live messages that arrive meanwhile are held.
/// Once held payload bytes passed max_pending_bytes/2, `continue_loading` never loaded
/// the next page again (`pending()` counted `held_bytes`, which only `finish_backlog`
/// cleared): the rest of the backlog and every held message were stuck for good.
///
/// Checks the exact sequence bob gets: the first page, then after the ack the rest of
/// the backlog and its fence, then the held live messages, then nothing else.
fn backlog_then_held(live_msgs: usize) {
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--max-unacked-per-session",
        "1500",
        "--max-pending-bytes",
        "64k",
    ]);
    r.visit("bob");
    let mut a = r.raw_login("alice");
    const BACKLOG: u32 = 1100;
    queue_numbered(&mut a, "bob", BACKLOG);

    let mut b = r.raw_login("bob");
    let first: Vec<_> = b.delivers(1024, T);
    let payloads: Vec<Vec<u8>> = first.iter().map(|d| d.payload.to_vec()).collect();
    assert_eq!(payloads, numbered(0..1024), "first backlog page");
    // bob does not ack yet: live messages are held behind the backlog.
    for i in 0..live_msgs {
        a.send_to("bob", &live(i), 1000 + i as u64);
        assert_eq!(a.wait_send_result(1000 + i as u64), Status::Ok as i32);
    }
    b.ack(first.last().unwrap().seq);
    let mut want = numbered(1024..BACKLOG);
    want.push(b"fence".to_vec());
    want.extend((0..live_msgs).map(live));
    let rest: Vec<Vec<u8>> = b
        .delivers(want.len(), Duration::from_secs(4))
        .iter()
        .map(|d| d.payload.to_vec())
        .collect();
    assert!(
        rest == want,
        "after the ack: {} messages, want {} (rest of the backlog, fence, {live_msgs} held)",
        rest.len(),
        want.len()
    );
    let extra = b.ping_pong(1);
    assert!(extra.is_empty(), "more than was sent: {extra:?}");
}

#[test]
fn a_paused_backlog_resumes_after_an_ack_with_few_live_messages_held() {
    // 20 KB held (< 32 KiB = max_pending/2): the control case.
    backlog_then_held(20);
}

#[test]
fn a_paused_backlog_resumes_after_an_ack_with_many_live_messages_held() {
    // 40 KB held (> 32 KiB, < 64 KiB): the backlog never resumed.
    backlog_then_held(40);
}

/// With --max-unacked-per-session below a backlog page, a backlog longer than the limit
/// (but shorter than a page) went out in one page and `finish_backlog` then closed the
/// session at once (unacked > max): the client could not ack in time, the stored
/// messages stayed, and every later login was cut the same way. The user could never
/// get a session.
///
/// A client that acks every message as it comes gets the whole backlog, in order, with
/// no Error and no close, and its session stays usable.
#[test]
fn a_backlog_over_a_small_unacked_limit_is_received_by_a_client_that_acks() {
    let r = RouterProc::start(&["--shards", "1", "--max-unacked-per-session", "20"]);
    r.visit("ivy");
    let mut a = r.raw_login("jack");
    queue_numbered(&mut a, "ivy", 30);
    let mut b = r.raw_login("ivy");
    let mut want = numbered(0..30);
    want.push(b"fence".to_vec());
    let mut got = Vec::new();
    while got.len() < want.len() {
        match b.next(T) {
            Ok(f) => match f.kind {
                Some(S::Deliver(d)) => {
                    b.ack(d.seq);
                    got.push(d.payload.to_vec());
                }
                Some(S::Ping(_)) => {}
                other => panic!("after {} of the backlog: {other:?}", got.len()),
            },
            Err(e) => panic!(
                "after {} of the backlog the session ended: {e:?}",
                got.len()
            ),
        }
    }
    assert_eq!(got, want);
    assert!(b.ping_pong(2).is_empty(), "the session is still usable");
}

/// `Retained::ack` (HEAD 4764937) only looked at the first LOAD_PAGE+1 entries for the
/// oldest name still referenced. With more backlog entries than that still unacked at
/// the front, it dropped every name but the last, so the live messages behind the
/// backlog lost their (sender, room); `take_unstored` then mapped them (saturating_sub
/// -> index 0) to the wrong sender. At the next login alice's message arrived as sent by
/// carol.
#[test]
fn requeued_messages_keep_their_sender_after_a_partial_ack() {
    let r = RouterProc::start(&["--shards", "1"]);
    r.visit("bob");
    let mut d = r.raw_login("dave");
    queue_numbered(&mut d, "bob", 1100);

    let mut b = r.raw_login("bob");
    let backlog = b.delivers(1101, T);
    let mut alice = r.raw_login("alice");
    let mut carol = r.raw_login("carol");
    alice.send_to("bob", b"from-alice", 1);
    assert_eq!(alice.wait_send_result(1), Status::Ok as i32);
    carol.send_to("bob", b"from-carol", 1);
    assert_eq!(carol.wait_send_result(1), Status::Ok as i32);
    let live = b.delivers(2, T);
    assert_eq!(live[0].from_user, "alice");
    assert_eq!(live[1].from_user, "carol");
    // Ack only the first backlog message, then go away.
    b.ack(backlog[0].seq);
    b.ping_pong(1);
    b.logout();
    let mut b = r.raw_login("bob");
    let again = b.delivers(1102, T);
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

/// Message ids never repeat across a restart. Clients dedupe by (sender, msg_id), and a
/// counter that started at 1 at every start gave the first messages after a restart the
/// ids of the first ones before it: a reconnecting client dropped them as copies.
#[test]
fn message_ids_never_repeat_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let ids = |r: &RouterProc| -> Vec<u64> {
        let mut b = r.raw_login("erin");
        let mut a = r.client("frank");
        for i in 0..3u8 {
            a.send_wait("erin", &[i]).unwrap();
        }
        let got = b.delivers(3, T);
        b.ack(got.last().unwrap().seq);
        b.ping_pong(7);
        got.iter().map(|m| m.msg_id).collect()
    };
    let r = RouterProc::start(&["--shards", "2", "--data-dir", d]);
    let before = ids(&r);
    let (code, _) = r.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let r = RouterProc::start(&["--shards", "2", "--data-dir", d]);
    let after = ids(&r);
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "before {before:x?}, after {after:x?}"
    );
}

/// The same messages delivered to several devices of a user that all end without acking
/// them go to the user's offline queue once, not once per device: the device that comes
/// back gets each once (it got every device's copy, 4 × 20).
#[test]
fn what_several_devices_leave_unacked_is_queued_once() {
    use ringrouter_proto::v1::Login;
    let r = RouterProc::start(&["--shards", "1"]);
    let login = |device: &str| {
        let mut c = r.raw();
        let lr = c.login_with(Login {
            request_id: 1,
            user: "dup-u".into(),
            device: device.into(),
            ..Default::default()
        });
        assert_eq!(lr.status, Status::Ok as i32, "{lr:?}");
        c
    };
    let mut devices: Vec<Raw> = (0..4).map(|i| login(&format!("d{i}"))).collect();
    let mut sender = r.raw_login("dup-sender");
    for i in 0..20u64 {
        sender.send_to("dup-u", format!("m{i}").as_bytes(), 100 + i);
    }
    for d in &mut devices {
        assert_eq!(d.delivers(20, T).len(), 20);
    }
    drop(devices);
    std::thread::sleep(Duration::from_millis(500));
    let mut back = login("d0");
    let got: Vec<Vec<u8>> = back
        .delivers(20, T)
        .into_iter()
        .map(|d| d.payload.to_vec())
        .collect();
    let want: Vec<Vec<u8>> = (0..20).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(got, want, "each message once, in order");
    loop {
        match back.next(Duration::from_millis(800)) {
            Err(ringrouter_tests::ReadEnd::Timeout) => break,
            Ok(f) => assert!(
                !matches!(f.kind, Some(S::Deliver(_))),
                "a copy came again: {f:?}"
            ),
            Err(e) => panic!("{e:?}"),
        }
    }
}

/// Two devices of a user log in to a backlog longer than a page (2 048) and ack
/// nothing: their paging stalls, and live messages that come meanwhile are held back
/// behind it on both (deferred). Both are cut; a third device drains the queue. Every
/// message answered OK arrives: the second device's copies of the held-back messages
/// are not given back again (requeue dedup), and a requeue never pushes the queue's
/// oldest (never delivered) out. Before, the second copy took the queue past the
/// requeue ceiling (offline cap + unacked cap) and the store dropped its oldest: here
/// #2049–#2400 (undelivered, counted nowhere).
#[test]
fn held_back_messages_of_cut_devices_never_push_undelivered_ones_out() {
    use ringrouter_proto::v1::Login;
    const Q: u64 = 2_100;
    const L: u64 = 1_500;
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--max-offline-per-user",
        "2100",
        "--max-unacked-per-session",
        "2600",
    ]);
    r.visit("rcv");
    let mut snd = r.raw_login("snd");
    let mut ok = std::collections::BTreeSet::new();
    let send =
        |snd: &mut Raw, ok: &mut std::collections::BTreeSet<u64>, nums: std::ops::Range<u64>| {
            let mut buf = Vec::new();
            for n in nums.clone() {
                buf.extend(send_frame_bytes("rcv", &n.to_be_bytes(), true, n));
            }
            snd.write(&buf).unwrap();
            let mut answered = 0;
            while answered < nums.end - nums.start {
                if let S::SendResult(s) = snd.next_non_ping(T) {
                    answered += 1;
                    if s.status == Status::Ok as i32 {
                        ok.insert(s.request_id);
                    }
                }
            }
        };
    send(&mut snd, &mut ok, 1..Q + 1);
    assert_eq!(ok.len() as u64, Q, "the offline queue holds them all");
    let mut devices: Vec<Raw> = (1..=2)
        .map(|i| {
            let mut d = r.raw();
            let lr = d.login_with(Login {
                request_id: 1,
                user: "rcv".into(),
                device: format!("d{i}"),
                ..Default::default()
            });
            assert_eq!(lr.status, Status::Ok as i32, "{lr:?}");
            d
        })
        .collect();
    for d in &mut devices {
        // The first page, not acked: the next one is not read.
        let got = d.collect_delivers(3_000, Duration::from_millis(500));
        assert!(!got.is_empty() && (got.len() as u64) < Q, "{}", got.len());
    }
    // Held back behind the backlog on both devices.
    send(&mut snd, &mut ok, Q + 1..Q + L + 1);
    for d in &mut devices {
        assert!(d.collect_delivers(1, Duration::from_millis(300)).is_empty());
    }
    for d in devices {
        let _ = socket2::SockRef::from(&d.stream).set_linger(Some(Duration::ZERO));
        drop(d);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut d9 = r.raw();
    let lr = d9.login_with(Login {
        request_id: 1,
        user: "rcv".into(),
        device: "d9".into(),
        ..Default::default()
    });
    assert_eq!(lr.status, Status::Ok as i32, "{lr:?}");
    let mut got = std::collections::BTreeSet::new();
    loop {
        let batch = d9.collect_delivers(1_000, Duration::from_millis(1_500));
        let Some(last) = batch.last() else {
            break;
        };
        d9.ack(last.seq);
        got.extend(
            batch
                .iter()
                .map(|d| u64::from_be_bytes(d.payload[..8].try_into().expect("8 bytes"))),
        );
    }
    let missing: Vec<u64> = ok.difference(&got).copied().collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered OK never delivered: {:?}..{:?}",
        missing.len(),
        ok.len(),
        missing.first(),
        missing.last()
    );
    assert_eq!(r.metric("ringrouter_requeue_dropped_total"), 0.0);
}
