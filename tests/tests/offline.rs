//! Offline delivery and at-least-once: messages for a user without a session are
//! stored and delivered, in order, at the next login (also after a restart); what a
//! session did not ack comes back at the next login, and nothing else does; the
//! offline queue is bounded and says so; in sync mode a `kill -9` loses nothing
//! that was confirmed.

use std::time::Duration;

use ringrouter_client::Status;
use ringrouter_proto::v1::server_frame;
use ringrouter_tests::{users_on_shards, RouterProc, T};

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

#[test]
fn sync_mode_kill_9_loses_nothing_that_was_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let args = ["--shards", "2", "--durability", "sync", "--data-dir", d];
    let r = RouterProc::start(&args);
    r.visit("kim");
    // One recipient offline, one online that never acks.
    let mut online = r.raw_login("lee");
    let mut s = r.raw_login("max");
    const N: u64 = 2000;
    for i in 0..N {
        let to = if i % 2 == 0 { "kim" } else { "lee" };
        s.send_to(to, &i.to_be_bytes(), i + 1);
    }
    let mut confirmed = Vec::new();
    while confirmed.len() < N as usize {
        let (id, st) = send_result(s.next_non_ping(T));
        assert_eq!(st, Status::Ok as i32);
        confirmed.push(id - 1);
    }
    assert_eq!(online.delivers((N / 2) as usize, T).len(), (N / 2) as usize);
    // kill -9 (RouterProc's drop), then the same store again.
    drop(r);
    let r = RouterProc::start(&args);
    for (user, parity) in [("kim", 0), ("lee", 1)] {
        let mut c = r.raw_login(user);
        let got: Vec<u64> = c
            .delivers((N / 2) as usize, T)
            .iter()
            .map(|d| u64::from_be_bytes(d.payload[..8].try_into().unwrap()))
            .collect();
        let want: Vec<u64> = (0..N).filter(|i| i % 2 == parity).collect();
        assert_eq!(got, want, "{user}");
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
