//! Routing decisions of one shard, without I/O.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use ringrouter_proto::fast::SendView;
use ringrouter_proto::v1::{client_frame, server_frame, ServerFrame};
use ringrouter_proto::Status;

use super::*;
use crate::config::Config;
use crate::stats::ShardStats;
use ringrouter_proto::codec::{decode_server, next_frame};
use ringrouter_proto::fast::Inbound;

fn shard(n: usize) -> Shard {
    shard_at(0, n)
}

/// Shard `id` of `n`, default config.
fn shard_at(id: usize, n: usize) -> Shard {
    Shard::new(
        id,
        n,
        Arc::new(Config::default()),
        Arc::new(ShardStats::default()),
    )
}

/// The one shard of one, with `cfg`.
fn shard_with(cfg: Config) -> Shard {
    Shard::new(0, 1, Arc::new(cfg), Arc::new(ShardStats::default()))
}

fn drain(s: &mut Shard, key: SessionKey) -> Vec<ServerFrame> {
    let sess = s.sessions.get_mut(key).unwrap();
    let batch = sess.out.take(None);
    let mut buf = BytesMut::new();
    for p in batch.parts() {
        buf.extend_from_slice(p);
    }
    let mut out = Vec::new();
    while let Some(f) = next_frame(&mut buf, 1 << 20).unwrap() {
        out.push(decode_server(f).unwrap());
    }
    out
}

fn send(to: &str, payload: &'static [u8], want: bool) -> Inbound<'static> {
    Inbound::Send(SendView {
        request_id: 5,
        to_user: Bytes::copy_from_slice(to.as_bytes()).into(),
        payload: Bytes::from_static(payload),
        want_result: want,
        ..Default::default()
    })
}

#[test]
fn home_shard_is_stable_and_spreads() {
    assert_eq!(home_shard(b"alice", 4), home_shard(b"alice", 4));
    let mut seen = [0usize; 4];
    for i in 0..1000 {
        seen[home_shard(format!("user{i}").as_bytes(), 4)] += 1;
    }
    assert!(seen.iter().all(|&c| c > 150), "{seen:?}");
}

#[test]
fn local_dm_reaches_every_device_with_router_stamped_sender() {
    let mut s = shard(1);
    let a = s.register("alice", "phone".into(), -1).unwrap();
    let b1 = s.register("bob", "phone".into(), -1).unwrap();
    let b2 = s.register("bob", "laptop".into(), -1).unwrap();
    let mut blocked = Vec::new();
    s.on_frame(a, send("bob", b"hi", true), Instant::now(), 7, &mut blocked);
    s.on_frame(
        a,
        send("bob", b"again", false),
        Instant::now(),
        8,
        &mut blocked,
    );
    for b in [b1, b2] {
        let frames = drain(&mut s, b);
        assert_eq!(frames.len(), 2);
        for (i, f) in frames.iter().enumerate() {
            let Some(server_frame::Kind::Deliver(d)) = &f.kind else {
                panic!("{f:?}")
            };
            assert_eq!(d.from_user, "alice");
            assert_eq!(d.seq, i as u64 + 1);
            assert_ne!(d.msg_id, 0);
        }
    }
    let res = drain(&mut s, a);
    assert_eq!(res.len(), 1);
    let Some(server_frame::Kind::SendResult(r)) = &res[0].kind else {
        panic!()
    };
    assert_eq!((r.request_id, r.status), (5, Status::Ok as i32));
}

#[test]
fn a_remembered_recipient_session_is_looked_up_again_after_a_login_or_a_close() {
    // A sender's LastDest keeps the recipient's one session while the shard's user map
    // is unchanged: a login or a close on the shard makes the next message look again.
    let mut s = shard(1);
    let a = s.register("alice", "phone".into(), -1).unwrap();
    let b1 = s.register("bob", "phone".into(), -1).unwrap();
    let mut blocked = Vec::new();
    let mut ts = 0;
    let mut to_bob = |s: &mut Shard| {
        ts += 1;
        s.on_frame(
            a,
            send("bob", b"hi", false),
            Instant::now(),
            ts,
            &mut blocked,
        );
    };
    to_bob(&mut s);
    to_bob(&mut s);
    assert_eq!(drain(&mut s, b1).len(), 2);
    // A second device of the recipient.
    let b2 = s.register("bob", "laptop".into(), -1).unwrap();
    to_bob(&mut s);
    assert_eq!((drain(&mut s, b1).len(), drain(&mut s, b2).len()), (1, 1));
    // Both gone; a new one, in a freed slot.
    s.remove(b1);
    s.remove(b2);
    let b3 = s.register("bob", "tablet".into(), -1).unwrap();
    to_bob(&mut s);
    to_bob(&mut s);
    assert_eq!(drain(&mut s, b3).len(), 2);
    // The recipient gone, another user in its slot gets nothing of its messages.
    s.remove(b3);
    let c = s.register("carol", "phone".into(), -1).unwrap();
    assert_eq!(c, b3);
    to_bob(&mut s);
    assert!(drain(&mut s, c).is_empty());
}

#[test]
fn send_to_nobody_is_not_found_and_bad_sends_are_refused() {
    let mut s = shard(1);
    let a = s.register("alice", "d".into(), -1).unwrap();
    let mut blocked = Vec::new();
    s.on_frame(
        a,
        send("ghost", b"x", true),
        Instant::now(),
        1,
        &mut blocked,
    );
    s.on_frame(a, send("", b"x", false), Instant::now(), 1, &mut blocked);
    let f = drain(&mut s, a);
    let Some(server_frame::Kind::SendResult(r)) = &f[0].kind else {
        panic!()
    };
    assert_eq!(r.status, Status::NotFound as i32);
    let Some(server_frame::Kind::Error(e)) = &f[1].kind else {
        panic!()
    };
    assert_eq!(e.code, Status::BadRequest as i32);
}

#[test]
fn remote_recipient_goes_to_the_outbox_of_its_home() {
    let mut s = shard(4);
    let a = s.register("alice", "d".into(), -1).unwrap();
    let name = (0..)
        .map(|i| format!("u{i}"))
        .find(|u| home_shard(u.as_bytes(), 4) == 2)
        .unwrap();
    let mut blocked = Vec::new();
    s.on_frame(a, send(&name, b"x", true), Instant::now(), 1, &mut blocked);
    assert_eq!(s.outbox_len, 1);
    assert_eq!(s.outbox[2].len(), 1);
    let Mail::Deliver(r) = &s.outbox[2][0] else {
        panic!()
    };
    assert_eq!(r.from_user.as_deref(), Some(&b"alice"[..]));
    assert!(r.reply.is_some());
}

#[test]
fn repeated_names_are_elided_within_a_batch_and_restored() {
    let mut a = shard(2);
    let mut b = shard_at(1, 2);
    let remote = |i: usize| {
        (0..)
            .map(|k| format!("r{i}-{k}"))
            .find(|u| home_shard(u.as_bytes(), 2) == 1)
            .unwrap()
    };
    let (bob, dave) = (remote(0), remote(1));
    let alice = a.register("alice", "d".into(), -1).unwrap();
    let carol = a.register("carol", "d".into(), -1).unwrap();
    let rb = b.register(&bob, "d".into(), -1).unwrap();
    let rd = b.register(&dave, "d".into(), -1).unwrap();
    let mut blocked = Vec::new();
    for (from, to) in [
        (alice, &bob),
        (alice, &bob),
        (carol, &bob),
        (alice, &dave),
        (alice, &dave),
    ] {
        a.on_frame(from, send(to, b"x", false), Instant::now(), 1, &mut blocked);
    }
    let batch = std::mem::take(&mut a.outbox[1]);
    let shape: Vec<(bool, bool)> = batch
        .iter()
        .map(|m| match m {
            Mail::Deliver(r) => (r.to_user.is_some(), r.from_user.is_some()),
            _ => panic!("not a deliver"),
        })
        .collect();
    assert_eq!(
        shape,
        [
            (true, true),
            (false, false),
            (false, true),
            (true, true),
            (false, false)
        ]
    );
    b.begin_batch();
    for m in batch {
        b.on_mail(m, &mut blocked);
    }
    let senders = |b: &mut Shard, k| -> Vec<String> {
        drain(b, k)
            .into_iter()
            .map(|f| match f.kind {
                Some(server_frame::Kind::Deliver(d)) => d.from_user,
                other => panic!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(senders(&mut b, rb), ["alice", "alice", "carol"]);
    assert_eq!(senders(&mut b, rd), ["alice", "alice"]);
}

/// A turn's mail to another shard leaves in batches of at most [`BATCH_MAILS`], in
/// order, each naming its users in its first Deliver (elided names refer to the same
/// batch); batches given back are filled again.
#[test]
fn mail_to_a_shard_goes_in_batches_of_one_size_that_each_name_their_users() {
    let mut a = shard(2);
    let mut b = shard_at(1, 2);
    let bob = (0..)
        .map(|k| format!("r{k}"))
        .find(|u| home_shard(u.as_bytes(), 2) == 1)
        .unwrap();
    let alice = a.register("alice", "d".into(), -1).unwrap();
    let rb = b.register(&bob, "d".into(), -1).unwrap();
    let mut blocked = Vec::new();
    // `n` messages from alice to bob, each its own Send.
    let sends = |a: &mut Shard, n: usize, blocked: &mut Vec<_>| {
        for _ in 0..n {
            a.on_frame(alice, send(&bob, b"x", false), Instant::now(), 1, blocked);
        }
    };
    let n = BATCH_MAILS + 10;
    sends(&mut a, n, &mut blocked);
    assert_eq!(a.outbox_len, n);
    let total = a.outbox_bytes[1];
    let mut batches = Vec::new();
    while let Some((batch, weight)) = a.next_batch(1) {
        a.batch_sent(1, batch.len(), weight);
        batches.push(batch);
    }
    assert_eq!(
        batches.iter().map(Vec::len).collect::<Vec<_>>(),
        [BATCH_MAILS, 10]
    );
    assert_eq!((a.outbox_len, a.outbox_bytes[1]), (0, 0));
    assert_eq!(a.flight_out[1].load(Ordering::Acquire), total);
    for batch in &batches {
        let Some(Mail::Deliver(first)) = batch.first() else {
            panic!("not a deliver")
        };
        assert!(first.to_user.is_some() && first.from_user.is_some());
    }
    for mut batch in batches {
        b.begin_batch();
        for m in batch.drain(..) {
            b.on_mail(m, &mut blocked);
        }
        a.spare_batch(batch);
    }
    let got = drain(&mut b, rb);
    assert_eq!(got.len(), n);
    assert!(got.iter().all(|f| matches!(&f.kind,
        Some(server_frame::Kind::Deliver(d)) if d.from_user == "alice")));
    // The full one given back is kept for the next; the short one (a Vec of its own
    // size) is let go.
    assert_eq!(a.spare_batches.len(), 1);
    sends(&mut a, BATCH_MAILS, &mut blocked);
    assert!(
        a.spare_batches.is_empty(),
        "the sealed batch took the spare"
    );
    let (batch, _) = a.next_batch(1).unwrap();
    assert_eq!((batch.len(), batch.capacity()), (BATCH_MAILS, BATCH_MAILS));
    assert!(a.next_batch(1).is_none());
    a.on_frame(
        alice,
        send(&bob, b"x", false),
        Instant::now(),
        1,
        &mut blocked,
    );
    let (batch, _) = a.next_batch(1).unwrap();
    assert_eq!(batch.len(), 1);
    assert!(batch.capacity() < BATCH_MAILS);
}

/// Each tick publishes what the sessions hold: bytes queued for their sockets,
/// deliveries not acked and their payload bytes.
#[test]
fn a_tick_publishes_what_the_sessions_hold() {
    let mut s = shard(1);
    let a = s.register("alice", "phone".into(), -1).unwrap();
    let b = s.register("bob", "phone".into(), -1).unwrap();
    let mut blocked = Vec::new();
    for _ in 0..3 {
        s.on_frame(
            a,
            send("bob", b"hello", false),
            Instant::now(),
            7,
            &mut blocked,
        );
    }
    // (A shard without a store keeps nothing for acks: kept here by hand.)
    let (from, payload) = (Bytes::from_static(b"alice"), Bytes::from_static(b"hello"));
    for seq in 1..=3 {
        let m = retention::Outgoing {
            from_user: &from,
            to_room: &retention::NO_ROOM,
            payload: &payload,
            msg_id: seq,
            ts_us: seq,
            store_seq: 0,
            fanned: None,
        };
        s.sessions[b].unacked.push(seq, &m);
    }
    s.tick(Instant::now());
    let g = s.stats.snapshot();
    assert_eq!((g.unacked_messages, g.unacked_bytes), (3, 15));
    assert!(g.pending_bytes > 15, "{g:?}");
    drain(&mut s, b);
    s.sessions[b].unacked.ack(3);
    s.tick(Instant::now());
    let g = s.stats.snapshot();
    assert_eq!(
        (g.pending_bytes, g.unacked_messages, g.unacked_bytes),
        (0, 0, 0)
    );
}

#[test]
fn session_limit_per_user() {
    let mut s = shard_with(Config {
        max_sessions_per_user: 2,
        ..Config::default()
    });
    s.register("a", "1".into(), -1).unwrap();
    s.register("a", "2".into(), -1).unwrap();
    assert_eq!(
        s.register("a", "3".into(), -1).unwrap_err().status(),
        Status::RateLimited
    );
}

#[test]
fn ack_beyond_delivered_is_refused() {
    let mut s = shard(1);
    let a = s.register("a", "1".into(), -1).unwrap();
    let mut blocked = Vec::new();
    let ack = Inbound::Other(client_frame::Kind::Ack(ringrouter_proto::v1::Ack {
        up_to_seq: 3,
    }));
    s.on_frame(a, ack, Instant::now(), 0, &mut blocked);
    let f = drain(&mut s, a);
    let Some(server_frame::Kind::Error(e)) = &f[0].kind else {
        panic!()
    };
    assert_eq!(e.code, Status::BadRequest as i32);
}

/// Loads `rec` as `user`'s contact list, as the store's answer at login would.
fn load_contacts(s: &mut Shard, user: &str, rec: crate::store::contacts::ContactRecord) {
    let _ = s.contacts.wait(user, Box::new(|_| {}));
    for w in s.contacts.loaded(user, rec) {
        w(s);
    }
}

#[test]
fn blocked_senders_and_strangers_under_the_contacts_policy_are_forbidden() {
    use crate::store::contacts::ContactRecord;
    let mut s = shard(1);
    let a = s.register("a", "1".into(), -1).unwrap();
    let b = s.register("b", "1".into(), -1).unwrap();
    load_contacts(&mut s, "a", ContactRecord::default());
    load_contacts(&mut s, "b", ContactRecord::default());
    assert!(
        !s.dm_gate(),
        "nobody blocked, open policy: the DM path does not look"
    );
    s.contacts.set_blocked_by("a", "b", true, 8).unwrap();
    assert!(s.dm_gate());
    let mut blocked = Vec::new();
    s.on_frame(a, send("b", b"hi", true), Instant::now(), 0, &mut blocked);
    let f = drain(&mut s, a);
    let Some(server_frame::Kind::SendResult(r)) = &f[0].kind else {
        panic!("{f:?}")
    };
    assert_eq!(r.status, Status::Forbidden as i32);
    assert!(drain(&mut s, b).is_empty(), "nothing reached b");
    // The other way is not blocked.
    s.on_frame(b, send("a", b"yo", true), Instant::now(), 0, &mut blocked);
    assert!(matches!(
        &drain(&mut s, a)[0].kind,
        Some(server_frame::Kind::Deliver(d)) if d.payload == "yo"
    ));
    s.contacts.set_blocked_by("a", "b", false, 8).unwrap();
    assert!(!s.dm_gate());
    // --dm-policy contacts: only accepted contacts (and oneself).
    let mut s = shard_with(Config {
        dm_policy: crate::config::DmPolicy::Contacts,
        ..Config::default()
    });
    let a = s.register("a", "1".into(), -1).unwrap();
    load_contacts(&mut s, "a", ContactRecord::default());
    assert_eq!(
        s.dm_refusal(b"a", b"b").map(|r| r.0),
        Some(Status::Forbidden)
    );
    assert_eq!(s.dm_refusal(b"a", b"a"), None);
    let lim = s.contact_limits();
    s.contacts
        .apply("a", "b", crate::store::contacts::ContactOp::RequestIn, lim)
        .unwrap()
        .unwrap();
    s.contacts
        .apply("a", "b", crate::store::contacts::ContactOp::AcceptOut, lim)
        .unwrap()
        .unwrap();
    assert_eq!(s.dm_refusal(b"a", b"b"), None);
    let _ = a;
}

/// Past a full store queue, a session with nothing of its own in the store's queue is
/// still read, up to the reserve; one with a request or a Send's store work in flight
/// waits.
#[test]
fn a_session_with_nothing_in_the_store_queue_is_read_past_its_bound_up_to_the_reserve() {
    use super::store_link::{STORE_HIGH_WATER, STORE_RESERVE};
    let mut s = shard(1);
    let a = s.register("alice", "phone".into(), -1).unwrap();
    assert!(s.store_open_to(a) && !s.store_full());
    s.store_inflight = STORE_HIGH_WATER;
    assert!(s.store_full() && s.store_open_to(a));
    s.sessions.get_mut(a).unwrap().store_sends = 1;
    assert!(!s.store_open_to(a), "its Sends' store work is in flight");
    s.sessions.get_mut(a).unwrap().store_sends = 0;
    s.sessions.get_mut(a).unwrap().requests = 1;
    assert!(!s.store_open_to(a), "its request is in flight");
    s.sessions.get_mut(a).unwrap().requests = 0;
    s.store_inflight = STORE_HIGH_WATER + STORE_HIGH_WATER / STORE_RESERVE;
    assert!(!s.store_open_to(a), "past the reserve");
    s.store_inflight = 0;
    let max = s.cfg.max_requeue_bytes;
    s.requeue_bytes = max;
    assert!(s.store_full() && s.store_open_to(a));
    s.requeue_bytes = max + max / STORE_RESERVE;
    assert!(!s.store_open_to(a), "requeues past theirs");
    s.requeue_bytes = 0;
    let bytes = s.cfg.max_store_queue_bytes;
    s.store_bytes = bytes + bytes / STORE_RESERVE;
    assert!(!s.store_open_to(a), "bytes past the reserve");
}

/// Near the store queue's bound, a room message is taken when its members with no
/// session here fit under it: its members online here cost the store nothing.
#[test]
fn a_room_message_near_the_store_bound_counts_only_its_members_offline_here() {
    use super::mail::{Live, RoomFan};
    use super::store_link::STORE_HIGH_WATER;
    let mut s = shard(1);
    let users: Arc<[Bytes]> = (0..100)
        .map(|i| Bytes::from(format!("member{i}")))
        .collect();
    let keys: Vec<SessionKey> = (0..90)
        .map(|i| s.register(&format!("member{i}"), "d".into(), -1).unwrap())
        .collect();
    let sender = s.session_id(keys[0]).unwrap();
    let fan = |live| {
        Mail::RoomDeliver(RoomFan {
            room: Bytes::from_static(b"big"),
            from_user: Bytes::from_static(b"member0"),
            payload: Bytes::from_static(b"hi"),
            msg_id: 1,
            ts_us: 1,
            users: users.clone(),
            sender,
            ack: None,
            live,
        })
    };
    s.store_inflight = STORE_HIGH_WATER - 50;
    assert!(
        s.store_takes(&fan(Live::No)),
        "10 offline members fit in 50"
    );
    for &k in &keys[40..] {
        s.close(k, CloseReason::PeerClosed, None);
    }
    assert!(
        !s.store_takes(&fan(Live::No)),
        "60 offline members do not fit in 50"
    );
    assert!(
        s.store_takes(&fan(Live::Ephemeral)),
        "live-only: nothing stored"
    );
    s.store_inflight = STORE_HIGH_WATER / 4;
    assert!(
        s.store_takes(&fan(Live::No)),
        "under a quarter: not counted"
    );
}

/// A waker that counts its wake-ups.
struct Count(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A reader of a session with no store work that finds the queue past the reserve waits
/// for the queue to come back within it (the lane's own waiters), not for it to fall
/// under the bound; the other readers wait for that.
#[test]
fn lane_readers_are_woken_back_within_the_reserve_the_others_under_the_bound() {
    use super::store_link::{STORE_HIGH_WATER, STORE_RESERVE};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Poll, Waker};
    let mut s = shard(1);
    let a = s.register("alice", "phone".into(), -1).unwrap();
    let b = s.register("bob", "phone".into(), -1).unwrap();
    s.sessions.get_mut(b).unwrap().store_sends = 1;
    let (wa, wb) = (
        Arc::new(Count(AtomicUsize::new(0))),
        Arc::new(Count(AtomicUsize::new(0))),
    );
    s.store_inflight = STORE_HIGH_WATER + STORE_HIGH_WATER / STORE_RESERVE;
    assert!(s
        .poll_session_intake(a, &Waker::from(wa.clone()))
        .is_pending());
    assert!(s
        .poll_session_intake(b, &Waker::from(wb.clone()))
        .is_pending());
    assert_eq!((s.lane_waiters.len(), s.store_waiters.len()), (1, 1));
    // Back within the reserve, still past the bound: the lane's reader only.
    s.store_inflight = STORE_HIGH_WATER;
    s.wake_store_waiters(true, true);
    assert_eq!(
        (wa.0.load(Ordering::SeqCst), wb.0.load(Ordering::SeqCst)),
        (1, 0)
    );
    assert_eq!(
        s.poll_session_intake(a, &Waker::from(wa.clone())),
        Poll::Ready(())
    );
    // Under the bound: everyone.
    s.store_inflight = 0;
    s.wake_store_waiters(true, false);
    assert_eq!(wb.0.load(Ordering::SeqCst), 1);
}

/// While a held room message waits for room in the store's queue (`store_yield`), a
/// session with nothing in the queue is still read (a Ping needs no store), until the
/// requests made since the yield began reach `YIELD_LANE_BUDGET`: so bounded, they cannot
/// keep the queue too full for the held message. One with store work in flight waits.
#[test]
fn during_a_yield_sessions_with_nothing_in_the_store_queue_are_read_up_to_a_budget() {
    use super::store_link::{STORE_HIGH_WATER, YIELD_LANE_BUDGET};
    use std::sync::atomic::AtomicUsize;
    use std::task::{Poll, Waker};
    let mut s = shard(1);
    let a = s.register("alice", "phone".into(), -1).unwrap();
    let b = s.register("bob", "phone".into(), -1).unwrap();
    s.sessions.get_mut(b).unwrap().store_sends = 1;
    s.store_inflight = STORE_HIGH_WATER / 2;
    s.store_made = 7;
    s.begin_store_yield();
    let w = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
    assert!(s.store_full() && s.store_open_to(a));
    assert_eq!(s.poll_session_intake(a, &w), Poll::Ready(()));
    assert!(!s.store_open_to(b), "its Sends' store work is in flight");
    assert!(s.poll_session_intake(b, &w).is_pending());
    s.store_made += YIELD_LANE_BUDGET - 1;
    assert!(s.store_open_to(a));
    s.store_made += 1;
    assert!(!s.store_open_to(a), "the budget is spent");
    assert!(s.poll_session_intake(a, &w).is_pending());
}

/// A session whose room message waits for room in the store's queue
/// (`Shard::room_send_may_go`) is read again once store answers came in; past
/// `LOCAL_WAIT_MAX` the other readers yield to it, not its own (it would wait on itself),
/// and the yield ends when it stops waiting (here, it closes).
#[test]
fn a_waiting_room_message_is_tried_again_after_store_answers_and_past_the_yield_to_it() {
    use super::store_link::{STORE_HIGH_WATER, YIELD_LANE_BUDGET};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Poll, Waker};
    use std::time::Duration;
    let mut s = shard(1);
    let a = s.register("alice", "phone".into(), -1).unwrap();
    let b = s.register("bob", "phone".into(), -1).unwrap();
    let c = s.register("carol", "phone".into(), -1).unwrap();
    s.sessions.get_mut(a).unwrap().store_sends = 1;
    s.sessions.get_mut(b).unwrap().store_sends = 1;
    s.store_inflight = STORE_HIGH_WATER / 2;
    s.room_waits.push(RoomWait {
        id: s.session_id(a).unwrap(),
        since: Instant::now() - Duration::from_millis(200),
        retry: false,
    });
    let n = Arc::new(Count(AtomicUsize::new(0)));
    let w = Waker::from(n.clone());
    assert!(s.poll_session_intake(a, &w).is_pending(), "no answer yet");
    assert_eq!(s.poll_session_intake(b, &w), Poll::Ready(()));
    s.store_inflight = STORE_HIGH_WATER;
    s.room_waits_answered();
    assert_eq!(n.0.load(Ordering::SeqCst), 1, "woken by the answers");
    assert!(
        s.local_yield,
        "waited past LOCAL_WAIT_MAX: the readers yield"
    );
    assert!(
        s.poll_session_intake(a, &w).is_pending() && !s.store_open_to(a),
        "the queue is full: it waits for answers, its try kept"
    );
    s.store_inflight = STORE_HIGH_WATER / 2;
    assert_eq!(s.poll_session_intake(a, &w), Poll::Ready(()), "tried again");
    assert!(s.store_open_to(a), "past the yield to itself");
    assert!(!s.store_open_to(b) && s.poll_session_intake(b, &w).is_pending());
    assert!(
        s.store_open_to(c),
        "nothing in flight: read up to the budget"
    );
    s.store_made += YIELD_LANE_BUDGET;
    assert!(!s.store_open_to(c));
    s.close(a, CloseReason::PeerClosed, None);
    assert!(s.room_waits.is_empty() && !s.local_yield);
    assert_eq!(s.poll_session_intake(b, &w), Poll::Ready(()));
}

/// A non-member's message to a loaded room is refused without a store request: it does
/// not wait for room in the store's queue (nor start the readers' yield), a member's does.
#[test]
fn a_non_members_room_message_does_not_wait_for_the_store() {
    use super::rooms::RoomSlot;
    use super::store_link::STORE_HIGH_WATER;
    let mut s = shard(1);
    let a = s.register("alice", "phone".into(), -1).unwrap();
    let m = s.register("mallory", "phone".into(), -1).unwrap();
    let members: Vec<String> = std::iter::once("alice".to_string())
        .chain((0..2 * STORE_HIGH_WATER).map(|i| format!("u{i}")))
        .collect();
    let members: Vec<&str> = members.iter().map(|m| m.as_str()).collect();
    s.rooms.insert(
        Bytes::from_static(b"big"),
        RoomSlot::ready_with(&members, 1),
    );
    s.store_inflight = STORE_HIGH_WATER / 2;
    assert!(
        s.room_send_waits(a, b"big"),
        "a member's waits until it fits"
    );
    assert_eq!(s.room_waits.len(), 1);
    assert!(!s.room_send_waits(m, b"big"), "refused FORBIDDEN at once");
    assert_eq!(s.room_waits.len(), 1, "the non-member did not wait");
    // Nor does it wait in the room's queue: answered FORBIDDEN, nothing parked.
    drain(&mut s, m);
    let send = |s: &Shard, key| super::mail::RoomSend {
        room: Bytes::from_static(b"big"),
        from_user: s.sessions[key].user.clone(),
        payload: Bytes::from_static(b"hi"),
        msg_id: 1,
        ts_us: 1,
        reply: Some((s.session_id(key).unwrap(), 9)),
        sender: s.session_id(key).unwrap(),
        live: super::mail::Live::No,
    };
    let w = send(&s, m);
    s.on_room_work(super::rooms::RoomWork::Send(w));
    assert_eq!((s.parked_bytes, s.rooms_waiting.len()), (0, 0));
    let answer = drain(&mut s, m);
    assert!(
        answer.iter().any(|f| matches!(&f.kind,
            Some(server_frame::Kind::SendResult(r)) if r.status == Status::Forbidden as i32)),
        "{answer:?}"
    );
    // A member's waits there.
    let w = send(&s, a);
    s.on_room_work(super::rooms::RoomWork::Send(w));
    assert!(s.parked_bytes > 0 && s.rooms_waiting.len() == 1);
}

/// The HTTP API's message to a room homed here waits for room in the store's queue as a
/// session's does, holding a ticket: past `LOCAL_WAIT_MAX` the readers yield to it, and
/// the yield ends when it goes or gives its ticket back (a ticket older than
/// `--http-api-timeout` is dropped: a wait ends by then).
#[test]
fn an_api_room_message_waiting_past_its_bound_makes_the_readers_yield() {
    use super::rooms::RoomSlot;
    use super::store_link::{STORE_HIGH_WATER, STORE_RESERVE};
    use std::sync::atomic::AtomicUsize;
    use std::task::{Poll, Waker};
    use std::time::Duration;
    let mut s = shard(1);
    let members: Vec<String> = (0..2 * STORE_HIGH_WATER).map(|i| format!("u{i}")).collect();
    let members: Vec<&str> = members.iter().map(|m| m.as_str()).collect();
    s.rooms.insert(
        Bytes::from_static(b"big"),
        RoomSlot::ready_with(&members, 1),
    );
    s.store_inflight = STORE_HIGH_WATER / 2;
    let w = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
    let mut ticket = None;
    assert!(s.poll_api_room_send(b"big", &w, &mut ticket).is_pending());
    assert!(ticket.is_some() && s.api_room_waits.len() == 1);
    assert!(s.poll_api_room_send(b"big", &w, &mut ticket).is_pending());
    assert_eq!(s.api_room_waits.len(), 1, "one ticket a wait");
    s.room_waits_answered();
    assert!(!s.local_yield, "not waited long yet");
    s.api_room_waits[0].1 -= Duration::from_millis(200);
    s.room_waits_answered();
    assert!(
        s.local_yield && s.store_full(),
        "waited past LOCAL_WAIT_MAX"
    );
    s.store_inflight = 0;
    assert_eq!(
        s.poll_api_room_send(b"big", &w, &mut ticket),
        Poll::Ready(())
    );
    assert!(ticket.is_none() && s.api_room_waits.is_empty() && !s.local_yield);
    // Given back without going (its request timed out, its connection went).
    s.store_inflight = STORE_HIGH_WATER / 2;
    assert!(s.poll_api_room_send(b"big", &w, &mut ticket).is_pending());
    s.api_room_waits[0].1 -= Duration::from_millis(200);
    s.room_waits_answered();
    assert!(s.local_yield);
    s.api_room_wait_done(ticket.take().unwrap());
    assert!(s.api_room_waits.is_empty() && !s.local_yield);
    // Lost (never given back): dropped past --http-api-timeout, and the yield with it.
    assert!(s.poll_api_room_send(b"big", &w, &mut ticket).is_pending());
    s.api_room_waits[0].1 -= Duration::from_millis(200);
    s.room_waits_answered();
    assert!(s.local_yield);
    // Meanwhile another publish to the room waits for the yield to end before its own
    // wait for room (what the readers yield to goes first).
    assert!(s.poll_api_intake(b"big", &w).is_pending());
    s.api_room_waits[0].1 -= s.cfg.http_api_timeout + Duration::from_secs(2);
    s.room_waits_answered();
    assert!(s.api_room_waits.is_empty() && !s.local_yield);
    assert_eq!(s.poll_api_intake(b"big", &w), Poll::Ready(()));
    // Past a full queue, a publish to a user goes as a session with nothing in it does:
    // within the reserve; one to a room homed here waits for room above instead.
    s.store_inflight = STORE_HIGH_WATER;
    assert!(s.store_full());
    assert_eq!(s.poll_api_intake(b"", &w), Poll::Ready(()));
    assert_eq!(s.poll_api_intake(b"big", &w), Poll::Ready(()));
    s.store_inflight = STORE_HIGH_WATER + STORE_HIGH_WATER / STORE_RESERVE;
    assert!(s.poll_api_intake(b"", &w).is_pending(), "past the reserve");
    assert_eq!(s.lane_waiters.len(), 1);
}

/// A reader woken for its own reasons polls the intake again and registers again: over a
/// long stall the waiters' list stays bounded (woken whole past its bound).
#[test]
fn intake_waiters_stay_bounded_however_often_a_reader_polls_again() {
    use super::store_link::STORE_HIGH_WATER;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Waker;
    let mut s = shard(1);
    let a = s.register("alice", "phone".into(), -1).unwrap();
    s.sessions.get_mut(a).unwrap().store_sends = 1;
    s.store_inflight = STORE_HIGH_WATER;
    let c = Arc::new(Count(AtomicUsize::new(0)));
    let w = Waker::from(c.clone());
    for _ in 0..10_000 {
        assert!(s.poll_session_intake(a, &w).is_pending());
        assert!(s.store_waiters.len() <= 2 * s.sessions.len() + 64);
    }
    assert!(
        c.0.load(Ordering::SeqCst) > 0,
        "woken when the list was emptied"
    );
}

/// The HTTP API's reads and a creator's member checks wait at the page-read gate as one
/// more user each, taking turns with the users' page reads; past
/// `API_READS_WAITING_MAX` an API read is refused (nothing made).
#[test]
fn api_reads_and_member_checks_take_turns_at_the_page_read_gate() {
    use crate::shard::store_link::API_READS_WAITING_MAX;
    use std::sync::Mutex;
    let mut s = shard_with(Config {
        max_page_reads_in_flight: 1,
        ..Config::default()
    });
    let k = s.register("pager", "d".into(), -1).unwrap();
    let made = Arc::new(Mutex::new(Vec::new()));
    let note = |made: &Arc<Mutex<Vec<&'static str>>>, what: &'static str| {
        let made = made.clone();
        move |_: &mut Shard, _: crate::store::StoreResult<()>| made.lock().unwrap().push(what)
    };
    s.page_reads.in_store = 1;
    s.page_read(k, |_, _| Ok(()), note(&made, "page 1"));
    s.page_read(k, |_, _| Ok(()), note(&made, "page 2"));
    assert!(s.api_read(|_, _| Ok(()), note(&made, "api")));
    s.read_in_turn(
        Bytes::from_static(b"\0mowner"),
        |_, _| Ok(()),
        note(&made, "members"),
    );
    assert_eq!(s.page_reads.waiting(), 4);
    s.page_read_done();
    assert_eq!(
        *made.lock().unwrap(),
        ["page 1", "api", "members", "page 2"]
    );
    // A backend polling faster than its turns come: refused past the bound.
    s.page_reads.in_store = 1;
    for _ in 0..API_READS_WAITING_MAX {
        assert!(s.api_read(|_, _| Ok(()), note(&made, "api")));
    }
    assert!(!s.api_read(|_, _| Ok(()), note(&made, "refused")));
    s.page_read_done();
    assert_eq!(s.page_reads.waiting(), 0);
    assert!(!made.lock().unwrap().contains(&"refused"));
}

/// Past `max_page_reads_in_flight`, page reads and lookups wait in the shard, in order
/// (turns going round the users), and are made as those in the store are answered;
/// those of a session that ended meanwhile are dropped when it ends (kept, a client
/// reconnecting in a loop piled up MarkReads without bound).
#[test]
fn page_reads_past_their_bound_wait_in_order_and_skip_ended_sessions() {
    use std::sync::Mutex;
    let mut s = shard_with(Config {
        max_page_reads_in_flight: 2,
        ..Config::default()
    });
    let keys: Vec<SessionKey> = (0..5)
        .map(|i| s.register(&format!("pager{i}"), "d".into(), -1).unwrap())
        .collect();
    let made = Arc::new(Mutex::new(Vec::new()));
    let read = |s: &mut Shard, k: SessionKey, page: bool, made: &Arc<Mutex<Vec<SessionKey>>>| {
        let made = made.clone();
        let then = move |_: &mut Shard, r: crate::store::StoreResult<()>| {
            // (No store in a unit test: made is answered at once, Closed.)
            assert!(r.is_err());
            made.lock().unwrap().push(k);
        };
        match page {
            true => s.page_read(k, |_, _| Ok(()), then),
            false => s.lookup_req(k, |_, _| Ok(()), then),
        }
    };
    // Two in the store (as if unanswered): the next four wait.
    s.page_reads.in_store = 2;
    for &k in &keys[..3] {
        read(&mut s, k, true, &made);
    }
    read(&mut s, keys[3], false, &made);
    assert_eq!(s.page_reads.waiting(), 4);
    assert!(made.lock().unwrap().is_empty());
    assert!(
        s.answer_waits(keys[0]),
        "a waiting page read holds its reader"
    );
    // A waiting page read's session and the lookup's end before their turn: theirs go.
    s.close(keys[1], CloseReason::PeerClosed, None);
    s.close(keys[3], CloseReason::PeerClosed, None);
    assert_eq!(s.page_reads.waiting(), 2);
    // One answered: the waiting ones are made (each answered at once here), in order.
    s.page_read_done();
    assert_eq!(*made.lock().unwrap(), [keys[0], keys[2]]);
    assert_eq!(s.page_reads.waiting(), 0);
    // Below the bound, a read is made at once.
    read(&mut s, keys[4], true, &made);
    assert_eq!(made.lock().unwrap().last(), Some(&keys[4]));
    // Turns go round the users: three reads of one user's devices do not hold another
    // user's behind all of them.
    let hog: Vec<SessionKey> = (0..3)
        .map(|i| s.register("hog", format!("d{i}"), -1).unwrap())
        .collect();
    s.page_reads.in_store = 2;
    made.lock().unwrap().clear();
    for &k in &hog {
        read(&mut s, k, true, &made);
    }
    read(&mut s, keys[2], true, &made);
    s.page_read_done();
    assert_eq!(*made.lock().unwrap(), [hog[0], keys[2], hog[1], hog[2]]);
    // Deletions: one at a time, at their own gate, in turn by name.
    let deleted = Arc::new(Mutex::new(Vec::new()));
    let delete = |s: &mut Shard, name: &'static str| {
        let deleted = deleted.clone();
        s.deletion_req(
            Bytes::from_static(name.as_bytes()),
            |_, _| Ok(()),
            move |_, _: crate::store::StoreResult<()>| deleted.lock().unwrap().push(name),
        );
    };
    s.deletions.in_store = 1;
    delete(&mut s, "room-a");
    delete(&mut s, "user-b");
    assert_eq!(
        (s.deletions.waiting(), deleted.lock().unwrap().len()),
        (2, 0)
    );
    s.gate_done_deletion();
    assert_eq!(*deleted.lock().unwrap(), ["room-a", "user-b"]);
    assert_eq!(s.deletions.waiting(), 0);
}
