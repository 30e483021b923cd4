//! Rooms: create (owner, join code), join by name or code (password checked), leave,
//! owner-only add / remove / delete, list; room messages reach every member's every
//! session (the sender's other devices too, not the sending one), non-members are
//! refused; events tell members what happened; limits are enforced.

use std::time::Duration;

use ringrouter_client::Status;
use ringrouter_proto::v1::{
    client_frame::Kind as C, server_frame::Kind as S, AddMember, CreateRoom, DeleteRoom, JoinRoom,
    LeaveRoom, ListRooms, RemoveMember, RoomEvent, RoomEventKind, RoomInfo, RoomResult,
};
use ringrouter_tests::{
    assert_survivors, client_frame_bytes, pseudo_random, room_result, room_send_frame_bytes,
    users_on_shards, wait_until, ConfirmedSender, Raw, RouterProc, T,
};

fn op(c: &mut Raw, k: C) -> (RoomResult, Vec<S>) {
    let (r, others) = c.call(k, 0);
    (room_result(r), others)
}

fn next_event(c: &mut Raw) -> RoomEvent {
    match c.next_non_ping(T) {
        S::RoomEvent(e) => e,
        other => panic!("expected a RoomEvent, got {other:?}"),
    }
}

/// Panics if `frames` (seen by the sending device) hold a Deliver.
fn assert_no_deliver(frames: &[S], context: &str) {
    let echoes: Vec<&S> = frames
        .iter()
        .filter(|k| matches!(k, S::Deliver(_)))
        .collect();
    assert!(
        echoes.is_empty(),
        "{context}: got its own message back: {echoes:?}"
    );
}

fn room_message_reaches_every_member_device(shards: &str) {
    let r = RouterProc::start(&["--shards", shards]);
    let n: usize = shards.parse().unwrap();
    let u = users_on_shards(&format!("rm{n}-"), n.max(3));
    let (owner, ann, bob) = (&u[0], &u[1], &u[2]);
    let mut o1 = r.raw_login(owner);
    let mut o2 = r.raw_login(owner);
    let mut a = r.raw_login(ann);
    let mut b = r.raw_login(bob);
    let created = o1.create_room("lobby", "");
    assert_eq!(created.status, Status::Ok as i32, "{created:?}");
    assert!(created.join_code.starts_with('#'), "{created:?}");
    assert_eq!(created.room, "lobby");
    // Join by name and by code.
    let j = a.join_room("lobby", "");
    assert_eq!((j.status, j.room.as_str()), (Status::Ok as i32, "lobby"));
    let j = b.join_room(&created.join_code, "");
    assert_eq!((j.status, j.room.as_str()), (Status::Ok as i32, "lobby"));
    // Everyone in the room hears about the joins.
    for c in [&mut o1, &mut o2] {
        let e1 = next_event(c);
        let e2 = next_event(c);
        assert_eq!(
            (e1.kind, e1.user.as_str(), e2.kind, e2.user.as_str()),
            (
                RoomEventKind::RoomEventJoined as i32,
                ann.as_str(),
                RoomEventKind::RoomEventJoined as i32,
                bob.as_str()
            )
        );
    }
    let e = next_event(&mut a);
    assert_eq!(
        (e.kind, e.room.as_str()),
        (RoomEventKind::RoomEventJoined as i32, "lobby")
    );
    let e = next_event(&mut a);
    assert_eq!(e.user, *bob);
    assert_eq!(next_event(&mut b).user, *bob);
    // A message from the owner's first device: the second device and every member get
    // it once, with the room set; the sending device does not.
    let (st, seen) = o1.send_room_seen("lobby", b"hello room", 5);
    assert_eq!(st, Status::Ok as i32);
    assert_no_deliver(&seen, "the sending device, before its SendResult");
    for c in [&mut o2, &mut a, &mut b] {
        let d = c.delivers(1, T).remove(0);
        assert_eq!(
            (d.from_user.as_str(), d.to_room.as_str(), &d.payload[..]),
            (owner.as_str(), "lobby", &b"hello room"[..])
        );
    }
    // Members send too. Room messages reach a member in the room's order, so the
    // sending device's next Deliver being ann's shows no echo came after its
    // SendResult either.
    assert_eq!(a.send_room("lobby", b"from ann", 6), Status::Ok as i32);
    for c in [&mut o1, &mut o2, &mut b] {
        let d = c.delivers(1, T).remove(0);
        assert_eq!(
            (d.from_user.as_str(), &d.payload[..]),
            (ann.as_str(), &b"from ann"[..])
        );
    }
    // A non-member is refused; nothing is delivered.
    let mut x = r.raw_login(&format!("{owner}-outsider"));
    assert_eq!(
        x.send_room("lobby", b"let me in", 7),
        Status::Forbidden as i32
    );
    assert_eq!(
        x.send_room("no-such-room", b"?", 8),
        Status::NotFound as i32
    );
    // Leave: the others are told; the leaver no longer gets messages.
    let (res, _) = op(
        &mut b,
        C::LeaveRoom(LeaveRoom {
            request_id: 0,
            room: "lobby".into(),
        }),
    );
    assert_eq!(res.status, Status::Ok as i32);
    let e = next_event(&mut a);
    assert_eq!(
        (e.kind, e.user.as_str()),
        (RoomEventKind::RoomEventLeft as i32, bob.as_str())
    );
    assert_eq!(
        next_event(&mut o1).kind,
        RoomEventKind::RoomEventLeft as i32
    );
    assert_eq!(a.send_room("lobby", b"bob left", 9), Status::Ok as i32);
    assert_eq!(&o1.delivers(1, T)[0].payload[..], b"bob left");
    assert_eq!(
        b.send_room("lobby", b"still here?", 10),
        Status::Forbidden as i32
    );
    // Listing: ann is in lobby.
    let (res, _) = op(&mut a, C::ListRooms(ListRooms { request_id: 0 }));
    assert_eq!(res.rooms, ["lobby"]);
}

#[test]
fn room_message_reaches_every_member_device_one_shard() {
    room_message_reaches_every_member_device("1");
}

#[test]
fn room_message_reaches_every_member_device_across_shards() {
    room_message_reaches_every_member_device("2");
}

#[test]
fn owner_only_operations_are_refused_to_others() {
    let r = RouterProc::start(&["--shards", "2"]);
    let mut o = r.raw_login("olga");
    let mut m = r.raw_login("mel");
    let _ = r.raw_login("nina");
    assert_eq!(o.create_room("club", "").status, Status::Ok as i32);
    assert_eq!(m.join_room("club", "").status, Status::Ok as i32);
    let refused = [
        C::AddMember(AddMember {
            request_id: 0,
            room: "club".into(),
            user: "nina".into(),
        }),
        C::RemoveMember(RemoveMember {
            request_id: 0,
            room: "club".into(),
            user: "olga".into(),
        }),
        C::DeleteRoom(DeleteRoom {
            request_id: 0,
            room: "club".into(),
        }),
    ];
    for k in refused {
        let (res, _) = op(&mut m, k);
        assert_eq!(res.status, Status::Forbidden as i32, "{res:?}");
        assert!(!res.reason.is_empty());
    }
    // The owner may: add, remove, delete; members hear each step.
    let (res, _) = op(
        &mut o,
        C::AddMember(AddMember {
            request_id: 0,
            room: "club".into(),
            user: "nina".into(),
        }),
    );
    assert_eq!(res.status, Status::Ok as i32);
    let (res, _) = op(
        &mut o,
        C::AddMember(AddMember {
            request_id: 0,
            room: "club".into(),
            user: "ghost-who-never-logged-in".into(),
        }),
    );
    assert_eq!(res.status, Status::NotFound as i32, "{res:?}");
    let (res, _) = op(
        &mut o,
        C::RemoveMember(RemoveMember {
            request_id: 0,
            room: "club".into(),
            user: "mel".into(),
        }),
    );
    assert_eq!(res.status, Status::Ok as i32);
    let mut kinds = Vec::new();
    loop {
        let e = next_event(&mut m);
        kinds.push((e.kind, e.user.clone()));
        if e.kind == RoomEventKind::RoomEventRemoved as i32 {
            break;
        }
    }
    assert_eq!(
        kinds,
        [
            (RoomEventKind::RoomEventJoined as i32, "nina".to_string()),
            (RoomEventKind::RoomEventRemoved as i32, "mel".to_string())
        ]
    );
    assert_eq!(m.send_room("club", b"x", 3), Status::Forbidden as i32);
    let (res, _) = op(
        &mut o,
        C::DeleteRoom(DeleteRoom {
            request_id: 0,
            room: "club".into(),
        }),
    );
    assert_eq!(res.status, Status::Ok as i32);
    assert_eq!(o.send_room("club", b"x", 4), Status::NotFound as i32);
    // The name is free again.
    assert_eq!(m.create_room("club", "").status, Status::Ok as i32);
    assert_eq!(o.create_room("club", "").status, Status::Conflict as i32);
}

#[test]
fn join_with_wrong_password_or_code_is_refused() {
    let r = RouterProc::start(&["--shards", "2"]);
    let mut o = r.raw_login("pam");
    let mut q = r.raw_login("quinn");
    let c = o.create_room("vault", "s3cret");
    assert_eq!(c.status, Status::Ok as i32);
    assert_eq!(q.join_room("vault", "").status, Status::Forbidden as i32);
    assert_eq!(
        q.join_room("vault", "guess").status,
        Status::Forbidden as i32
    );
    assert_eq!(
        q.join_room(&c.join_code, "guess").status,
        Status::Forbidden as i32
    );
    assert_eq!(
        q.join_room("#nosuchcode", "s3cret").status,
        Status::NotFound as i32
    );
    assert_eq!(
        q.join_room(&c.join_code, "s3cret").status,
        Status::Ok as i32
    );
    // Bad names are refused before anything happens.
    assert_eq!(o.create_room("", "").status, Status::BadRequest as i32);
    assert_eq!(
        o.create_room("#looks-like-a-code", "").status,
        Status::BadRequest as i32
    );
    assert_eq!(
        o.create_room(&"x".repeat(65), "").status,
        Status::BadRequest as i32
    );
}

#[test]
fn offline_members_get_room_messages_at_next_login() {
    let r = RouterProc::start(&["--shards", "2"]);
    let mut o = r.raw_login("ruth");
    let mut s = r.raw_login("sam");
    assert_eq!(o.create_room("news", "").status, Status::Ok as i32);
    assert_eq!(s.join_room("news", "").status, Status::Ok as i32);
    drop(s);
    for i in 0..3u8 {
        assert_eq!(
            o.send_room("news", &[i], u64::from(i) + 20),
            Status::Ok as i32
        );
    }
    let mut s = r.raw_login("sam");
    let got: Vec<(String, u8)> = s
        .delivers(3, T)
        .into_iter()
        .map(|d| (d.to_room, d.payload[0]))
        .collect();
    assert_eq!(
        got,
        [("news".into(), 0), ("news".into(), 1), ("news".into(), 2)]
    );
}

#[test]
fn room_limits_are_enforced() {
    let r = RouterProc::start(&[
        "--shards",
        "2",
        "--max-members-per-room",
        "3",
        "--max-rooms-per-user",
        "2",
    ]);
    let mut o = r.raw_login("tom");
    assert_eq!(o.create_room("r1", "").status, Status::Ok as i32);
    assert_eq!(o.create_room("r2", "").status, Status::Ok as i32);
    let c = o.create_room("r3", "");
    assert_eq!(c.status, Status::RateLimited as i32, "{c:?}");
    let mut users: Vec<Raw> = (0..3).map(|i| r.raw_login(&format!("u{i}"))).collect();
    assert_eq!(users[0].join_room("r1", "").status, Status::Ok as i32);
    assert_eq!(users[1].join_room("r1", "").status, Status::Ok as i32);
    let full = users[2].join_room("r1", "");
    assert_eq!(full.status, Status::RateLimited as i32, "{full:?}");
    // u0 is in r1; r2 makes two; a third room is refused.
    assert_eq!(users[0].join_room("r2", "").status, Status::Ok as i32);
    let mut v = r.raw_login("vic");
    assert_eq!(v.create_room("r4", "").status, Status::Ok as i32);
    let over = users[0].join_room("r4", "");
    assert_eq!(over.status, Status::RateLimited as i32, "{over:?}");
}

/// The next frame (pings aside) is a room message with this payload: no RoomEvent came
/// before it.
fn next_is_room_message(c: &mut Raw, payload: &[u8], who: &str) {
    match c.next_non_ping(T) {
        S::Deliver(d) => assert_eq!(&d.payload[..], payload, "{who}"),
        other => panic!("{who}: expected the room message, got {other:?}"),
    }
}

#[test]
fn over_the_event_bound_member_changes_reach_only_the_member_and_the_owner() {
    let r = RouterProc::start(&["--shards", "2", "--room-events-max-members", "2"]);
    let mut o = r.raw_login("evo");
    let mut a = r.raw_login("eva");
    assert_eq!(o.create_room("hall", "").status, Status::Ok as i32);
    // Two members: at the bound, everyone hears.
    assert_eq!(a.join_room("hall", "").status, Status::Ok as i32);
    let joined = RoomEventKind::RoomEventJoined as i32;
    let e = next_event(&mut o);
    assert_eq!((e.kind, e.user.as_str()), (joined, "eva"));
    assert_eq!(next_event(&mut a).user, "eva");
    // An offline member, then a third and a fourth join: over the bound.
    let mut c = r.raw_login("evc");
    assert_eq!(c.join_room("hall", "").status, Status::Ok as i32);
    assert_eq!(next_event(&mut c).user, "evc");
    drop(c);
    let mut d = r.raw_login("evd");
    assert_eq!(d.join_room("hall", "").status, Status::Ok as i32);
    // The joiner and the owner are told; eva (a member) is not, nor evc's queue.
    assert_eq!(next_event(&mut d).user, "evd");
    for (who, kind) in [("evc", joined), ("evd", joined)] {
        let e = next_event(&mut o);
        assert_eq!((e.kind, e.user.as_str()), (kind, who));
    }
    // A leave over the bound: the leaver and the owner.
    let left = RoomEventKind::RoomEventLeft as i32;
    let mut f = r.raw_login("evf");
    assert_eq!(f.join_room("hall", "").status, Status::Ok as i32);
    assert_eq!(next_event(&mut f).user, "evf");
    assert_eq!(next_event(&mut o).user, "evf");
    let (res, _) = op(
        &mut f,
        C::LeaveRoom(LeaveRoom {
            request_id: 0,
            room: "hall".into(),
        }),
    );
    assert_eq!(res.status, Status::Ok as i32);
    let e = next_event(&mut f);
    assert_eq!((e.kind, e.user.as_str()), (left, "evf"));
    let e = next_event(&mut o);
    assert_eq!((e.kind, e.user.as_str()), (left, "evf"));
    // A room message as a fence: eva's and d's next frame is it, and so is evc's first
    // at its next login (its offline queue holds no event).
    assert_eq!(o.send_room("hall", b"fence", 30), Status::Ok as i32);
    next_is_room_message(&mut a, b"fence", "eva");
    next_is_room_message(&mut d, b"fence", "evd");
    let mut c = r.raw_login("evc");
    next_is_room_message(&mut c, b"fence", "evc at its next login");
    // Every member is still listed.
    let (info, _) = op(
        &mut a,
        C::RoomInfo(RoomInfo {
            request_id: 0,
            room: "hall".into(),
        }),
    );
    assert_eq!(info.members, ["eva", "evc", "evd", "evo"], "{info:?}");
}

#[test]
fn rooms_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let r = RouterProc::start(&["--shards", "2", "--data-dir", d]);
    let mut o = r.raw_login("uma");
    let mut w = r.raw_login("walt");
    let c = o.create_room("persist", "pw");
    assert_eq!(w.join_room("persist", "pw").status, Status::Ok as i32);
    drop((o, w));
    let (code, _) = r.terminate(std::time::Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let r = RouterProc::start(&["--shards", "2", "--data-dir", d]);
    let mut o = r.raw_login("uma");
    let mut w = r.raw_login("walt");
    let (res, _) = op(&mut w, C::ListRooms(ListRooms { request_id: 0 }));
    assert_eq!(res.rooms, ["persist"]);
    assert_eq!(o.send_room("persist", b"still here", 1), Status::Ok as i32);
    assert_eq!(&w.delivers(1, T)[0].payload[..], b"still here");
    let mut x = r.raw_login("xena");
    assert_eq!(x.join_room(&c.join_code, "pw").status, Status::Ok as i32);
}

/// Members are keys of their own in the store: joins (by name and by code) and leaves
/// before a restart are what the room lists, delivers to and answers after it.
#[test]
fn member_changes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let r = RouterProc::start(&["--shards", "2", "--data-dir", d]);
    let mut o = r.raw_login("rosa");
    let mut w = r.raw_login("rolf");
    let mut x = r.raw_login("rita");
    let c = o.create_room("roster", "");
    assert_eq!(w.join_room("roster", "").status, Status::Ok as i32);
    assert_eq!(x.join_room(&c.join_code, "").status, Status::Ok as i32);
    let (res, _) = op(
        &mut w,
        C::LeaveRoom(LeaveRoom {
            request_id: 0,
            room: "roster".into(),
        }),
    );
    assert_eq!(res.status, Status::Ok as i32);
    drop((o, w, x));
    let (code, _) = r.terminate(std::time::Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let r = RouterProc::start(&["--shards", "2", "--data-dir", d]);
    let mut o = r.raw_login("rosa");
    let mut w = r.raw_login("rolf");
    let mut x = r.raw_login("rita");
    let (info, _) = op(
        &mut o,
        C::RoomInfo(RoomInfo {
            request_id: 0,
            room: "roster".into(),
        }),
    );
    assert_eq!(info.members, ["rita", "rosa"], "{info:?}");
    let (res, _) = op(&mut w, C::ListRooms(ListRooms { request_id: 0 }));
    assert!(res.rooms.is_empty(), "{res:?}");
    let (res, _) = op(&mut x, C::ListRooms(ListRooms { request_id: 0 }));
    assert_eq!(res.rooms, ["roster"]);
    // rolf is out: his message is refused; rita's arrives.
    assert_eq!(
        w.send_room("roster", b"not a member", 1),
        Status::Forbidden as i32
    );
    assert_eq!(x.send_room("roster", b"still in", 2), Status::Ok as i32);
    assert_eq!(&o.delivers(1, T)[0].payload[..], b"still in");
    // And rolf can come back (by code).
    assert_eq!(w.join_room(&c.join_code, "").status, Status::Ok as i32);
    assert_eq!(next_event(&mut o).user, "rolf");
    assert_eq!(w.send_room("roster", b"back", 3), Status::Ok as i32);
    assert_eq!(&o.delivers(1, T)[0].payload[..], b"back");
}

#[test]
fn room_send_result_waits_for_offline_members_and_reports_a_full_queue() {
    let r = RouterProc::start(&["--shards", "2", "--max-offline-per-user", "2"]);
    let mut o = r.raw_login("yara");
    let mut z = r.raw_login("zed");
    assert_eq!(o.create_room("small", "").status, Status::Ok as i32);
    assert_eq!(z.join_room("small", "").status, Status::Ok as i32);
    drop(z);
    assert_eq!(o.send_room("small", b"1", 1), Status::Ok as i32);
    assert_eq!(o.send_room("small", b"2", 2), Status::Ok as i32);
    // zed's queue is full: not a silent loss, the sender is told.
    assert_eq!(o.send_room("small", b"3", 3), Status::RateLimited as i32);
    let mut z = r.raw_login("zed");
    let got: Vec<Vec<u8>> = z
        .delivers(2, T)
        .into_iter()
        .map(|d| d.payload.to_vec())
        .collect();
    assert_eq!(got, [b"1".to_vec(), b"2".to_vec()]);
}

/// A kill -9 while confirmed room sends are in flight: a sender pipelines room messages
/// under `--durability sync` and the router is killed at a point that differs from run
/// to run. Every message whose SendResult OK arrived before the kill reaches both
/// members after the restart (one never acked, one was offline), in order, once.
#[test]
fn sync_mode_room_messages_confirmed_before_a_kill_9_survive_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let args = ["--shards", "2", "--durability", "sync", "--data-dir", d];
    let mut r = RouterProc::start(&args);
    let mut o = r.raw_login("abe");
    let mut on = r.raw_login("bea");
    let mut off = r.raw_login("cy");
    assert_eq!(o.create_room("journal", "").status, Status::Ok as i32);
    assert_eq!(on.join_room("journal", "").status, Status::Ok as i32);
    assert_eq!(off.join_room("journal", "").status, Status::Ok as i32);
    drop(off);
    // Sends in flight at the kill: the sender always has 32 unanswered.
    let sender = ConfirmedSender::start(o, 32, |i| {
        room_send_frame_bytes("journal", &i.to_be_bytes(), true, i + 1)
    });
    let kill_after = pseudo_random(100, 600) as usize;
    assert!(
        wait_until(Duration::from_secs(30), || sender.confirmed() >= kill_after
            || sender.finished()),
        "only {} room sends confirmed",
        sender.confirmed()
    );
    r.kill9(); // bea never acked, cy was offline
    let (confirmed, sent) = sender.join();
    eprintln!("killed after {} confirmed of {sent} sent", confirmed.len());
    drop(on);
    let r = RouterProc::start(&args);
    let mut o = r.raw_login("abe");
    for user in ["bea", "cy"] {
        let mut c = r.raw_login(user);
        // A fence sent after the login: everything before it is the backlog.
        assert_eq!(o.send_room("journal", b"fence", 1), Status::Ok as i32);
        let got = numbers_until_fence(&mut c);
        assert_survivors(user, &got, &confirmed, sent, |_| true);
    }
}

/// Reads Delivers up to one whose payload is `fence`, acking as it goes; returns the
/// 8-byte big-endian numbers of the ones before it.
pub(crate) fn numbers_until_fence(c: &mut Raw) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        let d = c.room_delivers(1, T).remove(0);
        c.ack(d.seq);
        if &d.payload[..] == b"fence" {
            return got;
        }
        got.push(u64::from_be_bytes(
            d.payload[..].try_into().expect("8-byte number"),
        ));
    }
}

/// README, Wire protocol 2: a room message goes to every session of every member
/// "except the sending device". The sending device sees its SendResult and no Deliver
/// of its own message (neither before the SendResult nor after it: the next Deliver it
/// gets is a later message of another member); the sender's second device gets it.
#[test]
fn the_sending_device_gets_no_echo_but_the_senders_other_device_does() {
    for shards in ["1", "2"] {
        let r = RouterProc::start(&["--shards", shards]);
        let u = users_on_shards(&format!("echo{shards}-"), 2);
        let (owner, member) = (&u[0], &u[1]);
        let mut o1 = r.raw_login(owner);
        let mut o2 = r.raw_login(owner);
        let mut m = r.raw_login(member);
        assert_eq!(o1.create_room("echo", "").status, Status::Ok as i32);
        assert_eq!(m.join_room("echo", "").status, Status::Ok as i32);
        assert_eq!(
            next_event(&mut o1).kind,
            RoomEventKind::RoomEventJoined as i32
        );
        assert_eq!(
            next_event(&mut o2).kind,
            RoomEventKind::RoomEventJoined as i32
        );
        let (st, seen) = o1.send_room_seen("echo", b"mine", 1);
        assert_eq!(st, Status::Ok as i32, "{shards} shard(s)");
        assert_no_deliver(&seen, "the sending device, before its SendResult");
        assert_eq!(m.send_room("echo", b"theirs", 2), Status::Ok as i32);
        match o1.next_non_ping(T) {
            S::Deliver(d) => assert_eq!(
                (d.from_user.as_str(), &d.payload[..]),
                (member.as_str(), &b"theirs"[..]),
                "{shards} shard(s): the sending device's next Deliver"
            ),
            other => panic!("{shards} shard(s): expected a Deliver, got {other:?}"),
        }
        let got: Vec<(String, Vec<u8>)> = o2
            .delivers(2, T)
            .into_iter()
            .map(|d| (d.from_user, d.payload.to_vec()))
            .collect();
        assert_eq!(
            got,
            [
                (owner.clone(), b"mine".to_vec()),
                (member.clone(), b"theirs".to_vec())
            ],
            "{shards} shard(s): the sender's other device"
        );
    }
}

/// Reads RoomResults (skipping events and pings) until `n` arrived; returns their
/// statuses by request id.
fn room_statuses(c: &mut Raw, n: usize) -> std::collections::BTreeMap<u64, i32> {
    let mut out = std::collections::BTreeMap::new();
    while out.len() < n {
        match c.next_non_ping(T) {
            S::RoomResult(r) => {
                out.insert(r.request_id, r.status);
            }
            S::RoomEvent(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn list_rooms(c: &mut Raw) -> Vec<String> {
    let mut rooms = room_result(c.call(C::ListRooms(ListRooms { request_id: 77 }), 77).0).rooms;
    rooms.sort();
    rooms
}

/// The statuses `--max-rooms-per-user 2` must give `n` pipelined requests with ids
/// `first..`: the first two OK, every later one RATE_LIMITED.
fn two_then_rate_limited(first: u64, n: u64) -> std::collections::BTreeMap<u64, i32> {
    (first..first + n)
        .map(|id| {
            let st = if id < first + 2 {
                Status::Ok
            } else {
                Status::RateLimited
            };
            (id, st as i32)
        })
        .collect()
}

/// `check_room_limit` read `rooms_of(user)` and only wrote in the completion: CreateRoom
/// frames for different rooms pipelined in one write all saw the old count, so
/// --max-rooms-per-user was not enforced.
#[test]
fn pipelined_creates_stop_exactly_at_max_rooms_per_user() {
    let r = RouterProc::start(&["--shards", "1", "--max-rooms-per-user", "2"]);
    let mut a = r.raw_login("alice");
    let mut bytes = Vec::new();
    for i in 0..8u64 {
        bytes.extend(client_frame_bytes(C::CreateRoom(CreateRoom {
            request_id: 100 + i,
            name: format!("lim{i}"),
            password: String::new(),
            members: Vec::new(),
        })));
    }
    a.write(&bytes).unwrap();
    assert_eq!(room_statuses(&mut a, 8), two_then_rate_limited(100, 8));
    assert_eq!(list_rooms(&mut a), ["lim0", "lim1"]);
}

/// Same for JoinRoom: pipelined joins of different rooms all passed the limit check.
#[test]
fn pipelined_joins_stop_exactly_at_max_rooms_per_user() {
    let r = RouterProc::start(&["--shards", "1", "--max-rooms-per-user", "2"]);
    // Three owners make two rooms each (their limit).
    let mut owners = vec![];
    for (k, o) in ["o1", "o2", "o3"].iter().enumerate() {
        let mut c = r.raw_login(o);
        for j in 0..2 {
            let res = c.create_room(&format!("j{k}{j}"), "");
            assert_eq!(res.status, Status::Ok as i32, "{res:?}");
        }
        owners.push(c);
    }
    let mut b = r.raw_login("bob");
    let mut bytes = Vec::new();
    let mut i = 0;
    for k in 0..3 {
        for j in 0..2 {
            bytes.extend(client_frame_bytes(C::JoinRoom(JoinRoom {
                request_id: 200 + i,
                room: format!("j{k}{j}"),
                password: String::new(),
            })));
            i += 1;
        }
    }
    b.write(&bytes).unwrap();
    assert_eq!(room_statuses(&mut b, 6), two_then_rate_limited(200, 6));
    assert_eq!(list_rooms(&mut b), ["j00", "j01"]);
}

/// A room message addressed by join code took a detour (a store lookup on the code's
/// home shard, then a forward by name); one addressed by name went straight to the
/// room. Messages from one sender to one room then arrived out of send order.
///
/// Since then a Send names its room by name only (README, Names: room names may not
/// start with `#`, join codes do): a Send to a join code is BAD_REQUEST and nothing
/// of it is delivered, so no detour can reorder anything. The ones by name arrive
/// in send order, and nothing else arrives.
#[test]
fn room_messages_to_a_join_code_are_refused_and_the_rest_keep_send_order() {
    let r = RouterProc::start(&["--shards", "1"]);
    let mut a = r.raw_login("alice");
    let mut b = r.raw_login("bob");
    let created = a.create_room("ord", "");
    assert_eq!(created.status, Status::Ok as i32);
    assert!(created.join_code.starts_with('#'), "{created:?}");
    let j = b.join_room("ord", "");
    assert_eq!(j.status, Status::Ok as i32);
    let mut bytes = Vec::new();
    bytes.extend(room_send_frame_bytes(&created.join_code, b"1", true, 1));
    bytes.extend(room_send_frame_bytes("ord", b"2", true, 2));
    bytes.extend(room_send_frame_bytes(&created.join_code, b"3", true, 3));
    bytes.extend(room_send_frame_bytes("ord", b"4", true, 4));
    bytes.extend(room_send_frame_bytes("ord", b"5", true, 5));
    a.write(&bytes).unwrap();
    let mut results = Vec::new();
    while results.len() < 5 {
        match a.next_non_ping(T) {
            S::SendResult(r) => results.push((r.request_id, r.status)),
            S::RoomEvent(_) => {}
            other => panic!("{other:?}"),
        }
    }
    results.sort();
    let (ok, bad) = (Status::Ok as i32, Status::BadRequest as i32);
    assert_eq!(results, [(1, bad), (2, ok), (3, bad), (4, ok), (5, ok)]);
    let got: Vec<Vec<u8>> = b
        .room_delivers(3, T)
        .into_iter()
        .map(|d| d.payload.to_vec())
        .collect();
    assert_eq!(
        got,
        [b"2".to_vec(), b"4".to_vec(), b"5".to_vec()],
        "alice's room messages as bob saw them"
    );
    let extra = b.ping_pong(1);
    assert!(
        !extra.iter().any(|k| matches!(k, S::Deliver(_))),
        "a message sent to the join code was delivered: {extra:?}"
    );
}

/// On the room's home shard a room request was posted to `local_mail` (handled on the
/// consumer's next turn), but a room message was handled at once (`send_to_room` called
/// `on_room_work` directly). A Send pipelined after a JoinRoom was checked before the
/// Join: FORBIDDEN, although the module doc promises "a message sent after a Join is
/// checked against the new member list".
#[test]
fn a_send_pipelined_after_a_join_is_checked_against_the_new_member_list() {
    let r = RouterProc::start(&["--shards", "1"]);
    let mut o = r.raw_login("owner");
    assert_eq!(o.create_room("pj", "").status, Status::Ok as i32);
    let mut b = r.raw_login("bob");
    let mut bytes = client_frame_bytes(C::JoinRoom(JoinRoom {
        request_id: 1,
        room: "pj".into(),
        password: String::new(),
    }));
    bytes.extend(room_send_frame_bytes("pj", b"hi", true, 2));
    b.write(&bytes).unwrap();
    let mut join = None;
    let mut send = None;
    while join.is_none() || send.is_none() {
        match b.next_non_ping(T) {
            S::RoomResult(r) if r.request_id == 1 => join = Some(r.status),
            S::SendResult(s) if s.request_id == 2 => send = Some(s.status),
            S::RoomEvent(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(join, Some(Status::Ok as i32));
    assert_eq!(
        send,
        Some(Status::Ok as i32),
        "Send pipelined after JoinRoom (5 = FORBIDDEN)"
    );
    let d = o.room_delivers(1, T).remove(0);
    assert_eq!((d.from_user.as_str(), &d.payload[..]), ("bob", &b"hi"[..]));
}

/// Same with CreateRoom then Send by the owner (it was NOT_FOUND).
#[test]
fn a_send_pipelined_after_a_create_reaches_the_room() {
    let r = RouterProc::start(&["--shards", "1"]);
    let mut o = r.raw_login("owner");
    let mut bytes = client_frame_bytes(C::CreateRoom(CreateRoom {
        request_id: 1,
        name: "pc".into(),
        password: String::new(),
        members: Vec::new(),
    }));
    bytes.extend(room_send_frame_bytes("pc", b"hi", true, 2));
    o.write(&bytes).unwrap();
    let mut create = None;
    let mut send = None;
    while create.is_none() || send.is_none() {
        match o.next_non_ping(T) {
            S::RoomResult(r) if r.request_id == 1 => create = Some(r.status),
            S::SendResult(s) if s.request_id == 2 => send = Some(s.status),
            S::RoomEvent(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(create, Some(Status::Ok as i32));
    assert_eq!(
        send,
        Some(Status::Ok as i32),
        "Send pipelined after CreateRoom (6 = NOT_FOUND)"
    );
}

/// A room with a password was `busy` for a whole Argon2id verification (~35 ms) per
/// Join attempt, and everything for the room (members' messages too) queued behind it.
/// Any logged-in non-member could pipeline wrong-password Joins and stall the room's
/// traffic for as long as they liked; `hashing_busy` never tripped because the room
/// submitted one hash at a time.
///
/// Checked by order, not by time: 100 wrong-password Joins cost 100 real hashes
/// (seconds), and the owner's message must be through while most of them are still
/// unanswered. A router that queues room messages behind the Joins answers the owner
/// only after all 100 (eve would hold 99 or 100 answers by then).
#[test]
fn wrong_password_joins_do_not_hold_up_room_messages() {
    const JOINS: u64 = 100;
    // (Each wrong guess counted but never refused here: this is about the room's queue.)
    let r = RouterProc::start_real_argon2(&[
        "--shards",
        "1",
        "--max-failed-room-joins-per-user",
        "0",
        "--max-failed-room-joins-per-room",
        "0",
    ]);
    let mut o = r.raw_login("owner");
    let c = o.create_room("locked", "right");
    assert_eq!(c.status, Status::Ok as i32, "{c:?}");
    let mut m = r.raw_login("member");
    assert_eq!(m.join_room("locked", "right").status, Status::Ok as i32);
    let mut eve = r.raw_login("eve");
    let mut bytes = Vec::new();
    for i in 0..JOINS {
        bytes.extend(client_frame_bytes(C::JoinRoom(JoinRoom {
            request_id: 1000 + i,
            room: "locked".into(),
            password: "wrong".into(),
        })));
    }
    eve.write(&bytes).unwrap();
    // The first refusal: the Joins are being worked on.
    let mut refused = 0;
    while refused == 0 {
        if let S::RoomResult(x) = eve.next_non_ping(Duration::from_secs(30)) {
            assert_eq!(x.status, Status::Forbidden as i32, "{x:?}");
            refused += 1;
        }
    }
    let (status, _) = o.send_room_seen("locked", b"x", 7);
    assert_eq!(status, Status::Ok as i32);
    let d = m.room_delivers(1, T).remove(0);
    assert_eq!(&d.payload[..], b"x");
    // What eve holds now is at most what was answered before the owner's message.
    while let Ok(f) = eve.next(Duration::from_millis(1)) {
        if let Some(S::RoomResult(_)) = f.kind {
            refused += 1;
        }
    }
    assert!(
        refused <= JOINS / 2,
        "the owner's room message waited behind {refused} of {JOINS} wrong-password joins"
    );
    // Every Join is still answered, FORBIDDEN.
    while refused < JOINS {
        if let S::RoomResult(x) = eve.next_non_ping(Duration::from_secs(30)) {
            assert_eq!(x.status, Status::Forbidden as i32, "{x:?}");
            refused += 1;
        }
    }
}

/// The LoginResult waited for the first backlog page (`start_backlog` kept it in
/// `login_frame`), but the session was in the user's session list from `register` on,
/// so a RoomEvent for the user (`on_room_notice` -> `push_frame`) was written before
/// it: the first frame a client got after Login was not the LoginResult.
#[test]
fn the_first_frame_after_login_is_the_login_result() {
    let r = RouterProc::start(&["--shards", "1"]);
    let mut o = r.raw_login("owner");
    assert_eq!(o.create_room("busy", "").status, Status::Ok as i32);
    let mut b = r.raw_login("bob");
    let j = b.join_room("busy", "");
    assert_eq!(j.status, Status::Ok as i32);
    drop(b);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = r.connect_addr();
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = Raw::connect(addr);
            assert_eq!(c.login("carol").status, Status::Ok as i32);
            let mut id = 10u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut bytes = client_frame_bytes(C::JoinRoom(JoinRoom {
                    request_id: id,
                    room: "busy".into(),
                    password: String::new(),
                }));
                bytes.extend(client_frame_bytes(C::LeaveRoom(LeaveRoom {
                    request_id: id + 1,
                    room: "busy".into(),
                })));
                c.write(&bytes).unwrap();
                // Read the two answers (and events) back.
                let mut answers = 0;
                while answers < 2 {
                    if let S::RoomResult(_) = c.next_non_ping(T) {
                        answers += 1;
                    }
                }
                id += 2;
            }
        })
    };
    let mut first_frames = Vec::new();
    for _ in 0..300 {
        let mut c = Raw::connect(addr);
        c.send(C::Login(ringrouter_proto::v1::Login {
            request_id: 1,
            user: "bob".into(),
            device: "d".into(),
            ..Default::default()
        }));
        let f = c.next_kind(T);
        if !matches!(f, S::LoginResult(_)) {
            first_frames.push(f);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    assert!(
        first_frames.is_empty(),
        "{} of 300 logins got another frame before their LoginResult, e.g. {:?}",
        first_frames.len(),
        first_frames.first()
    );
}

fn sync_room(r: &RouterProc) -> (Raw, Raw) {
    let mut a = r.raw_login("alice");
    let mut b = r.raw_login("bob");
    let c = a.create_room("syncroom", "");
    assert_eq!(c.status, Status::Ok as i32, "{c:?}");
    let j = b.join_room("syncroom", "");
    assert_eq!(j.status, Status::Ok as i32, "{j:?}");
    (a, b)
}

/// Sync mode: a room message was journaled for every member, the sender's own user
/// included (`on_room_fan` -> `journal(user, .., skip = sender)`); the sending device is
/// skipped for live delivery, so that entry was never delivered/acked. It filled the
/// sender's own offline queue: after max_offline_per_user room messages, the sender's
/// own sends were RATE_LIMITED even though every real recipient acked.
#[test]
fn sync_mode_room_sends_do_not_fill_the_senders_own_offline_queue() {
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--durability",
        "sync",
        "--max-offline-per-user",
        "3",
    ]);
    let (mut a, mut b) = sync_room(&r);
    let mut statuses = Vec::new();
    for i in 0..6u8 {
        let st = a.send_room("syncroom", &[i], 10 + u64::from(i));
        statuses.push(st);
        if st == Status::Ok as i32 {
            let d = b.room_delivers(1, T);
            assert_eq!(&d[0].payload[..], &[i]);
            b.ack(d[0].seq);
        }
    }
    assert_eq!(
        statuses,
        [Status::Ok as i32; 6],
        "room sends (9 = RATE_LIMITED: the sender's own offline queue filled up)"
    );
}

/// Sync mode: the sender got its own room message back at its next login.
#[test]
fn sync_mode_room_message_is_not_echoed_to_the_sender_at_next_login() {
    let r = RouterProc::start(&["--shards", "1", "--durability", "sync"]);
    let (mut a, mut b) = sync_room(&r);
    assert_eq!(a.send_room("syncroom", b"hello", 10), Status::Ok as i32);
    let d = b.room_delivers(1, T);
    b.ack(d[0].seq);
    b.ping_pong(1);
    drop(a);
    // Her backlog comes before anything sent after her login: a fence from bob
    // must be the first Deliver she gets.
    let mut a = r.raw_login("alice");
    assert_eq!(b.send_room("syncroom", b"fence", 11), Status::Ok as i32);
    let first = a.room_delivers(1, T).remove(0);
    assert_eq!(
        (first.from_user.as_str(), &first.payload[..]),
        ("bob", &b"fence"[..]),
        "alice's first Deliver after her next login"
    );
}

#[test]
fn room_messages_follow_member_sessions_that_come_and_go_between_messages() {
    // A shard resolves a room's members to their sessions once and reuses that until
    // a session registers or ends there: each step changes the sessions between two
    // messages of the same room, on both shards.
    let r = RouterProc::start(&["--shards", "2"]);
    let owner = &users_on_shards("fco-", 2)[0];
    let m = users_on_shards("fcm-", 2);
    let (a, b) = (&m[0], &m[1]);
    let mut o = r.raw_login(owner);
    assert_eq!(o.create_room("cache", "").status, Status::Ok as i32);
    let mut a1 = r.raw_login(a);
    let mut b1 = r.raw_login(b);
    assert_eq!(a1.join_room("cache", "").status, Status::Ok as i32);
    assert_eq!(b1.join_room("cache", "").status, Status::Ok as i32);
    let got = |c: &mut Raw, want: &[u8]| {
        let d = c.room_delivers(1, T).remove(0);
        assert_eq!(&d.payload[..], want);
        c.ack(d.seq);
    };
    assert_eq!(o.send_room("cache", b"m1", 1), Status::Ok as i32);
    got(&mut a1, b"m1");
    got(&mut b1, b"m1");
    // New devices get the next message.
    let mut a2 = r.raw_login(a);
    let mut b2 = r.raw_login(b);
    assert_eq!(o.send_room("cache", b"m2", 2), Status::Ok as i32);
    for c in [&mut a1, &mut a2, &mut b1, &mut b2] {
        got(c, b"m2");
    }
    // Devices that left do not hold the others up.
    drop(a1);
    drop(b1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(o.send_room("cache", b"m3", 3), Status::Ok as i32);
    got(&mut a2, b"m3");
    got(&mut b2, b"m3");
    // With no device left, the message waits in the members' queues; a session of
    // another user that took a slot of theirs gets nothing.
    drop(a2);
    drop(b2);
    std::thread::sleep(Duration::from_millis(200));
    let x = users_on_shards("fcx-", 2);
    let mut xs: Vec<Raw> = x.iter().map(|u| r.raw_login(u)).collect();
    assert_eq!(o.send_room("cache", b"m4", 4), Status::Ok as i32);
    for c in &mut xs {
        assert_eq!(c.collect_delivers(1, Duration::from_millis(300)), vec![]);
    }
    for user in [a, b] {
        let mut c = r.raw_login(user);
        got(&mut c, b"m4");
    }
}

/// A new room's initial members each learn they are in, and its deletion, whether live
/// or offline (then at their next login, first thing), on both shards. The offline
/// members of a shard get theirs in one store request (before, one each: a 10 000-member
/// room made 10 000 requests that no session was charged for).
#[test]
fn initial_and_deleted_room_events_reach_live_and_offline_members_on_both_shards() {
    let r = RouterProc::start(&["--shards", "2"]);
    let live = ringrouter_tests::users_on_shards("ie-live", 2);
    let offline = ringrouter_tests::users_on_shards("ie-off", 2);
    let many: Vec<String> = (0..300).map(|i| format!("ie-many{i}")).collect();
    for u in offline.iter().chain(&many) {
        r.visit(u);
    }
    let mut o = r.raw_login("ie-owner");
    let mut l: Vec<Raw> = live.iter().map(|u| r.raw_login(u)).collect();
    let members: Vec<String> = live.iter().chain(&offline).chain(&many).cloned().collect();
    let (res, _) = op(
        &mut o,
        C::CreateRoom(CreateRoom {
            request_id: 0,
            name: "ie-room".into(),
            password: String::new(),
            members: members.clone(),
        }),
    );
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    let joined = RoomEventKind::RoomEventJoined as i32;
    for (c, u) in l.iter_mut().zip(&live) {
        let e = next_event(c);
        assert_eq!(
            (e.kind, e.room.as_str(), e.user.as_str()),
            (joined, "ie-room", u.as_str())
        );
    }
    let (res, _) = op(
        &mut o,
        C::DeleteRoom(DeleteRoom {
            request_id: 0,
            room: "ie-room".into(),
        }),
    );
    assert_eq!(res.status, Status::Ok as i32);
    let deleted = RoomEventKind::RoomEventDeleted as i32;
    for c in l.iter_mut() {
        let e = next_event(c);
        assert_eq!((e.kind, e.user.as_str()), (deleted, "ie-owner"));
    }
    for u in offline.iter().chain(many.iter().step_by(37)) {
        let mut c = r.raw_login(u);
        let e = next_event(&mut c);
        assert_eq!(
            (e.kind, e.room.as_str(), e.user.as_str()),
            (joined, "ie-room", u.as_str()),
            "{u}"
        );
        let e = next_event(&mut c);
        assert_eq!((e.kind, e.user.as_str()), (deleted, "ie-owner"), "{u}");
    }
}

/// Room events for an offline user fill at most half of its offline queue: being added
/// to rooms (which anyone may do to anyone) cannot make the user's messages refused or
/// pushed out. With `--max-offline-per-user 10`, 12 rooms made with the user in them
/// store 5 events; 5 messages are then still accepted, and the login delivers all 10.
#[test]
fn room_events_take_at_most_half_an_offline_queue() {
    let r = RouterProc::start(&["--shards", "2", "--max-offline-per-user", "10"]);
    r.visit("hq-victim");
    let mut o = r.raw_login("hq-owner");
    for i in 0..12 {
        let (res, _) = op(
            &mut o,
            C::CreateRoom(CreateRoom {
                request_id: 0,
                name: format!("hq-room{i}"),
                password: String::new(),
                members: vec!["hq-victim".into()],
            }),
        );
        assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    }
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..5u64 {
        o.send_to("hq-victim", format!("dm{i}").as_bytes(), 100 + i);
        assert_eq!(
            o.wait_send_result(100 + i),
            Status::Ok as i32,
            "message {i}"
        );
    }
    let mut v = r.raw_login("hq-victim");
    let mut events = 0;
    let mut dms = Vec::new();
    while dms.len() < 5 {
        match v.next_non_ping(T) {
            S::RoomEvent(_) => events += 1,
            S::Deliver(d) => {
                v.ack(d.seq);
                dms.push(d.payload);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(events, 5);
    assert_eq!(
        dms,
        (0..5)
            .map(|i| format!("dm{i}").into_bytes())
            .collect::<Vec<_>>()
    );
}

/// Another member's joins and leaves reach live sessions only; what concerns the member
/// (added, removed) waits in its offline queue. Stored, each join and leave wrote a
/// record for every offline member: two accounts joining and leaving in a loop wrote
/// 8.2 M records (776 MiB) in 40 s into a room of 998 offline members.
#[test]
fn others_joins_and_leaves_are_not_stored_for_offline_members() {
    let r = RouterProc::start(&["--shards", "2"]);
    r.visit("ojl-away");
    let mut o = r.raw_login("ojl-owner");
    let (res, _) = op(
        &mut o,
        C::CreateRoom(CreateRoom {
            request_id: 0,
            name: "ojl".into(),
            password: String::new(),
            members: vec!["ojl-away".into()],
        }),
    );
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    let mut j = r.raw_login("ojl-joiner");
    for _ in 0..20 {
        assert_eq!(j.join_room("ojl", "").status, Status::Ok as i32);
        let (res, _) = op(
            &mut j,
            C::LeaveRoom(LeaveRoom {
                request_id: 0,
                room: "ojl".into(),
            }),
        );
        assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    }
    // The live owner heard every one of them.
    let owner_heard = (0..40).map(|_| next_event(&mut o).user).collect::<Vec<_>>();
    assert!(
        owner_heard.iter().all(|u| u == "ojl-joiner"),
        "{owner_heard:?}"
    );
    let (res, _) = op(
        &mut o,
        C::RemoveMember(RemoveMember {
            request_id: 0,
            room: "ojl".into(),
            user: "ojl-away".into(),
        }),
    );
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    let mut a = r.raw_login("ojl-away");
    let mut stored = Vec::new();
    while let Ok(f) = a.next(Duration::from_millis(700)) {
        if let Some(S::RoomEvent(e)) = f.kind {
            stored.push((e.kind, e.user));
        }
    }
    assert_eq!(
        stored,
        [
            (
                RoomEventKind::RoomEventJoined as i32,
                "ojl-away".to_string()
            ),
            (
                RoomEventKind::RoomEventRemoved as i32,
                "ojl-away".to_string()
            )
        ]
    );
}

fn create_with(c: &mut Raw, name: &str, members: &[&str]) -> RoomResult {
    op(
        c,
        C::CreateRoom(CreateRoom {
            request_id: 0,
            name: name.into(),
            password: String::new(),
            members: members.iter().map(|m| m.to_string()).collect(),
        }),
    )
    .0
}

fn add_member(c: &mut Raw, room: &str, user: &str) -> RoomResult {
    op(
        c,
        C::AddMember(AddMember {
            request_id: 0,
            room: room.into(),
            user: user.into(),
        }),
    )
    .0
}

/// The next room event, other frames (contact events of one's own list) skipped.
fn next_room_event(c: &mut Raw) -> RoomEvent {
    loop {
        if let S::RoomEvent(e) = c.next_non_ping(T) {
            return e;
        }
    }
}

/// Panics if `c` gets a room event or a message within half a second.
fn hears_nothing(c: &mut Raw, who: &str) {
    while let Ok(f) = c.next(Duration::from_millis(500)) {
        assert!(
            !matches!(f.kind, Some(S::RoomEvent(_)) | Some(S::Deliver(_))),
            "{who}: {f:?}"
        );
    }
}

/// A user who blocks the adder cannot be put into a room by it: as an initial member or
/// by AddMember (the owner's, or a member's under `--room-add-policy members`), FORBIDDEN
/// and named, as its direct messages are. Before, the blocked user created rooms with
/// its blocker in them (1 000 in 0.5 s, using up the blocker's room quota) and wrote
/// to it there.
#[test]
fn a_user_who_blocked_the_adder_cannot_be_added_to_its_rooms() {
    let r = RouterProc::start(&["--shards", "2", "--room-add-policy", "members"]);
    let u = users_on_shards("rbk", 2);
    let (m, v) = (u[0].as_str(), u[1].as_str());
    r.visit("rbk-friend");
    r.visit(m);
    let mut vc = r.client(v);
    vc.block(m).expect("block");
    let mut vr = r.raw_login(v);
    let mut mr = r.raw_login(m);
    let res = create_with(&mut mr, "rbk-1", &["rbk-friend", v]);
    assert_eq!(res.status, Status::Forbidden as i32, "{res:?}");
    assert!(res.reason.contains(v), "{res:?}");
    let res = create_with(&mut mr, "rbk-1", &["rbk-friend"]);
    assert_eq!(
        res.status,
        Status::Ok as i32,
        "nothing was created: {res:?}"
    );
    let res = add_member(&mut mr, "rbk-1", v);
    assert_eq!(res.status, Status::Forbidden as i32, "{res:?}");
    // A member of someone else's room (any member may add) cannot either.
    let mut o = r.raw_login("rbk-owner");
    let res = create_with(&mut o, "rbk-2", &[m]);
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    let res = add_member(&mut mr, "rbk-2", v);
    assert_eq!(res.status, Status::Forbidden as i32, "{res:?}");
    hears_nothing(&mut vr, v);
    // Others still can, and so can the blocked user once unblocked.
    let res = add_member(&mut o, "rbk-2", v);
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    assert_eq!(next_room_event(&mut vr).room, "rbk-2");
    vc.unblock(m).expect("unblock");
    let res = add_member(&mut mr, "rbk-1", v);
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    assert_eq!(next_room_event(&mut vr).room, "rbk-1");
}

/// A CreateRoom refused FORBIDDEN (a blocker among its members) takes its members from
/// the adder's allowance as one that goes through does: its checks cost the same, and a
/// client sending it again and again (10 000 members a frame, 25 ms of its shard each)
/// was never paced.
#[test]
fn adds_refused_for_a_blocker_are_paced_like_any() {
    let r = RouterProc::start(&["--shards", "2", "--max-member-adds-per-minute", "4"]);
    r.visit("rfp-x");
    r.visit("rfp-m");
    r.client("rfp-v").block("rfp-m").expect("block");
    let mut mr = r.raw_login("rfp-m");
    for attempt in 0..2 {
        let res = create_with(&mut mr, "rfp-1", &["rfp-x", "rfp-v"]);
        assert_eq!(res.status, Status::Forbidden as i32, "{attempt}: {res:?}");
    }
    // Four members taken: nothing is left for a fifth this minute.
    let res = create_with(&mut mr, "rfp-1", &["rfp-x"]);
    assert_eq!(res.status, Status::RateLimited as i32, "{res:?}");
}

/// Under `--dm-policy contacts` only an accepted contact may put a user into a room, as
/// only one may write to it.
#[test]
fn under_dm_policy_contacts_only_accepted_contacts_can_add_one_to_a_room() {
    let r = RouterProc::start(&["--shards", "2", "--dm-policy", "contacts"]);
    let u = users_on_shards("rcp", 2);
    let (a, b) = (u[0].as_str(), u[1].as_str());
    r.visit(b);
    let mut ar = r.raw_login(a);
    let res = create_with(&mut ar, "rcp-1", &[b]);
    assert_eq!(res.status, Status::Forbidden as i32, "{res:?}");
    assert!(res.reason.contains("contact"), "{res:?}");
    let res = create_with(&mut ar, "rcp-1", &[]);
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    let res = add_member(&mut ar, "rcp-1", b);
    assert_eq!(res.status, Status::Forbidden as i32, "{res:?}");
    let mut ac = r.client(a);
    let mut bc = r.client(b);
    ac.contact_request(b).unwrap();
    bc.contact_accept(a).unwrap();
    let res = add_member(&mut ar, "rcp-1", b);
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    let res = create_with(&mut ar, "rcp-2", &[b]);
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
}

/// Rooms others added a user to do not use up its own `--max-rooms-per-user`: they
/// count apart, against the same number (past it the adder gets RATE_LIMITED). Before,
/// a stranger put a user into 1 000 rooms in 0.5 s and the user's own CreateRoom and
/// JoinRoom were RATE_LIMITED.
#[test]
fn rooms_others_add_one_to_do_not_use_up_ones_own_quota() {
    let r = RouterProc::start(&["--shards", "2", "--max-rooms-per-user", "2"]);
    r.visit("rq-vic");
    for i in 1..=2 {
        let mut a = r.raw_login(&format!("rq-a{i}"));
        let res = create_with(&mut a, &format!("rq-{i}"), &["rq-vic"]);
        assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    }
    let mut a3 = r.raw_login("rq-a3");
    let res = create_with(&mut a3, "rq-3", &["rq-vic"]);
    assert_eq!(res.status, Status::RateLimited as i32, "{res:?}");
    assert!(
        res.reason.contains("rq-vic was added to 2 rooms"),
        "{res:?}"
    );
    assert_eq!(a3.create_room("rq-3", "").status, Status::Ok as i32);
    let res = add_member(&mut a3, "rq-3", "rq-vic");
    assert_eq!(res.status, Status::RateLimited as i32, "{res:?}");
    let mut v = r.raw_login("rq-vic");
    let own = v.create_room("rq-own", "");
    assert_eq!(own.status, Status::Ok as i32, "{own:?}");
    let joined = v.join_room("rq-3", "");
    assert_eq!(joined.status, Status::Ok as i32, "{joined:?}");
    let over = v.create_room("rq-own2", "");
    assert_eq!(over.status, Status::RateLimited as i32, "{over:?}");
    assert_eq!(
        list_rooms(&mut v),
        ["rq-1", "rq-2", "rq-3", "rq-own"].map(String::from)
    );
}

/// `--max-member-adds-per-minute`: one account adds at most so many users to rooms a
/// minute (initial members and AddMember); past it RATE_LIMITED, and a room of more
/// initial members goes through once the allowance is whole. Each add stores a joined
/// event in an offline member's queue, and a DeleteRoom a deleted one: CreateRoom with
/// members and DeleteRoom in a loop stored 7 763 events per listed user in 25 s.
#[test]
fn member_adds_past_the_rate_are_refused_and_bound_what_churn_stores() {
    let r = RouterProc::start(&["--shards", "2", "--max-member-adds-per-minute", "10"]);
    let victims: Vec<String> = (0..5).map(|i| format!("ra-v{i}")).collect();
    let many: Vec<String> = (0..12).map(|i| format!("ra-w{i}")).collect();
    for n in victims.iter().chain(&many) {
        r.visit(n);
    }
    let vs: Vec<&str> = victims.iter().map(String::as_str).collect();
    let mut m = r.raw_login("ra-mal");
    let mut created = 0;
    for i in 0..20 {
        let res = create_with(&mut m, &format!("ra-c{i}"), &vs);
        if res.status == Status::Ok as i32 {
            created += 1;
            let (d, _) = op(
                &mut m,
                C::DeleteRoom(DeleteRoom {
                    request_id: 0,
                    room: format!("ra-c{i}"),
                }),
            );
            assert_eq!(d.status, Status::Ok as i32, "{d:?}");
        } else {
            assert_eq!(res.status, Status::RateLimited as i32, "{res:?}");
            assert!(
                res.reason.contains("--max-member-adds-per-minute"),
                "{res:?}"
            );
        }
    }
    assert_eq!(created, 2, "10 adds a minute, 5 a room");
    // A room without members costs nothing; an AddMember does.
    assert_eq!(m.create_room("ra-x", "").status, Status::Ok as i32);
    let res = add_member(&mut m, "ra-x", "ra-v0");
    assert_eq!(res.status, Status::RateLimited as i32, "{res:?}");
    // Another account has its own allowance; 12 members when 10 fit: once, in debt.
    let mut b = r.raw_login("ra-big");
    let ws: Vec<&str> = many.iter().map(String::as_str).collect();
    let res = create_with(&mut b, "ra-big", &ws);
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    let res = add_member(&mut b, "ra-big", "ra-v0");
    assert_eq!(res.status, Status::RateLimited as i32, "{res:?}");
    // What the churn stored for one victim: two joined, two deleted.
    let mut v = r.raw_login("ra-v1");
    let mut stored = 0;
    while let Ok(f) = v.next(Duration::from_millis(700)) {
        if let Some(S::RoomEvent(_)) = f.kind {
            stored += 1;
        }
    }
    assert_eq!(stored, 4);
}

/// A Send to a room that does not exist says so, whichever shard the room's name is
/// homed on (the reason travels with the answer; it said "no such user or room").
#[test]
fn a_send_to_no_such_room_says_no_such_room() {
    let r = RouterProc::start(&[]);
    let mut a = r.raw_login("nr-sender");
    for (i, room) in users_on_shards("nr-room", 2).iter().enumerate() {
        let id = 10 + i as u64;
        let send = C::Send(ringrouter_proto::v1::Send {
            request_id: id,
            to_room: room.clone(),
            payload: b"x".to_vec().into(),
            want_result: true,
            ..Default::default()
        });
        match a.call(send, id).0 {
            S::SendResult(res) => {
                assert_eq!(res.status, Status::NotFound as i32, "{res:?}");
                assert_eq!(res.reason, "no such room", "{room}");
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A burst of room messages to many offline members is a store append per message
/// and member, which the storage thread handles behind other users' requests
/// (`store::worker::lanes`), and room mail waits in the rings for room in the store's
/// queue (`Shard::store_takes`). A member who logs in during the burst still gets
/// every message once, in order (its login's backlog load comes after the appends
/// queued for it), every offline member gets every message at its next login, and a
/// user outside the room logs in and is answered meanwhile.
#[test]
fn a_member_logging_in_during_a_burst_to_offline_members_gets_every_message_in_order() {
    // Enough appends (2 000 members x 100 messages, ~100 000 a shard) to take each
    // shard's store queue to its mark, where room mail waits in the rings: a second
    // batch's held rest once took the place of the first's, which was lost.
    const MEMBERS: usize = 2000;
    const MSGS: usize = 100;
    let r = RouterProc::start(&["--shards", "2", "--max-member-adds-per-minute", "100000"]);
    let members: Vec<String> = (0..MEMBERS).map(|i| format!("burst-m{i}")).collect();
    for m in &members {
        r.visit(m);
    }
    r.visit("burst-late");
    let mut o = r.raw_login("burst-owner");
    let mut all = members.clone();
    all.push("burst-late".into());
    let (res, _) = op(
        &mut o,
        C::CreateRoom(CreateRoom {
            request_id: 0,
            name: "burst".into(),
            password: String::new(),
            members: all,
        }),
    );
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    let mut bytes = Vec::new();
    for i in 0..MSGS as u64 {
        bytes.extend(room_send_frame_bytes(
            "burst",
            &i.to_be_bytes(),
            i + 1 == MSGS as u64,
            i + 1,
        ));
    }
    o.write(&bytes).unwrap();
    // Logged in while the appends are under way (the last send's result comes after).
    let mut late = r.raw_login("burst-late");
    let mut other = r.raw_login("burst-outsider");
    other.ping_pong(1);
    let got: Vec<u64> = late
        .room_delivers(MSGS, Duration::from_secs(60))
        .into_iter()
        .map(|d| {
            assert_eq!(d.to_room, "burst");
            u64::from_be_bytes(d.payload[..].try_into().expect("an 8-byte payload"))
        })
        .collect();
    assert_eq!(
        got,
        (0..MSGS as u64).collect::<Vec<_>>(),
        "every message, in order"
    );
    loop {
        match o.next_non_ping(Duration::from_secs(60)) {
            S::SendResult(res) => {
                assert_eq!(res.status, Status::Ok as i32, "{res:?}");
                break;
            }
            S::RoomEvent(_) => {}
            other => panic!("{other:?}"),
        }
    }
    // Nothing more for the late member: each message came once.
    late.ping_pong(2).iter().for_each(|k| {
        assert!(!matches!(k, S::Deliver(_)), "delivered twice: {k:?}");
    });
    // Offline members (homed on either shard) get all of them at their next login.
    for name in [
        "burst-m0",
        "burst-m1",
        "burst-m2",
        "burst-m7",
        "burst-m1999",
    ] {
        let mut m = r.raw_login(name);
        let got: Vec<Vec<u8>> = m
            .room_delivers(MSGS, Duration::from_secs(60))
            .into_iter()
            .map(|d| d.payload.to_vec())
            .collect();
        let want: Vec<Vec<u8>> = (0..MSGS as u64).map(|i| i.to_be_bytes().to_vec()).collect();
        assert_eq!(got, want, "{name}");
    }
}

/// Room messages from a session to a room homed on its shard wait, like those from other
/// shards, until their store requests fit in the store's queue: a pipelined loop of them
/// to a room of 6 000 offline members took the queue 6 000 requests past its bound (16 384),
/// past the reserve kept for sessions with nothing in flight (2 048), so that no other
/// session of the shard was read, Pings included, while the store was behind. Every
/// message still reaches every member, in order.
#[test]
fn a_loop_of_room_messages_to_offline_members_keeps_the_store_queue_within_its_bound() {
    const MEMBERS: usize = 6000;
    const MSGS: u64 = 30;
    let r = RouterProc::start(&["--shards", "1", "--max-member-adds-per-minute", "100000"]);
    let members: Vec<String> = (0..MEMBERS).map(|i| format!("qb-m{i}")).collect();
    for m in &members {
        r.visit(m);
    }
    let mut o = r.raw_login("qb-owner");
    let (res, _) = op(
        &mut o,
        C::CreateRoom(CreateRoom {
            request_id: 0,
            name: "qb".into(),
            password: String::new(),
            members: members.clone(),
        }),
    );
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    let mut bytes = Vec::new();
    for i in 0..MSGS {
        bytes.extend(room_send_frame_bytes(
            "qb",
            &i.to_be_bytes(),
            i + 1 == MSGS,
            i + 1,
        ));
    }
    o.write(&bytes).unwrap();
    loop {
        match o.next_non_ping(Duration::from_secs(120)) {
            S::SendResult(res) => {
                assert_eq!(res.status, Status::Ok as i32, "{res:?}");
                break;
            }
            S::RoomEvent(_) => {}
            other => panic!("{other:?}"),
        }
    }
    ringrouter_tests::assert_store_queue_filled_within_its_bound(&r);
    for name in ["qb-m0", "qb-m5999"] {
        let mut m = r.raw_login(name);
        let got: Vec<u64> = m
            .room_delivers(MSGS as usize, Duration::from_secs(60))
            .into_iter()
            .map(|d| u64::from_be_bytes(d.payload[..].try_into().expect("an 8-byte payload")))
            .collect();
        assert_eq!(got, (0..MSGS).collect::<Vec<_>>(), "{name}");
    }
}

/// A loop of room messages from a session on one shard to a room whose offline members
/// all live on the other: that shard keeps the messages in its rings while its store is
/// behind, and the pipeline between the two fills. Every reader of the sender's shard
/// waited for it to drain, and the sender refilled it first: another user's Pings there
/// went unanswered for as long as the loop lasted. Now a session that put nothing in the
/// pipeline since it filled is read past it (up to a reserve): its Pings are answered.
#[test]
fn pings_on_a_senders_shard_are_answered_while_its_pipeline_to_a_busy_shard_is_full() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const MEMBERS: usize = 2000;
    let r = RouterProc::start(&["--shards", "2", "--max-member-adds-per-minute", "100000"]);
    let on = |prefix: &'static str, shard: usize| {
        (0..)
            .map(move |i| format!("{prefix}{i}"))
            .filter(move |u| ringrouter::shard::home_shard(u.as_bytes(), 2) == shard)
    };
    let members: Vec<String> = on("pq-m", 0).take(MEMBERS).collect();
    for m in &members {
        r.visit(m);
    }
    let mut names = on("pq-x", 1);
    let (owner, pinger) = (names.next().unwrap(), names.next().unwrap());
    let mut o = r.raw_login(&owner);
    let (res, _) = op(
        &mut o,
        C::CreateRoom(CreateRoom {
            request_id: 0,
            name: "pq".into(),
            password: String::new(),
            members,
        }),
    );
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    let mut p = r.raw_login(&pinger);
    let block: Vec<u8> = (0..64)
        .flat_map(|i| room_send_frame_bytes("pq", b"hello", false, i))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = o.stream.try_clone().expect("clone");
    w.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let looping = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut at = 0;
            while !stop.load(Ordering::Relaxed) {
                match w.write(&block[at..]) {
                    Ok(n) => at = (at + n) % block.len(),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    let depth = "ringrouter_shard_mailbox_depth{shard=\"0\"}";
    let mut deepest = 0.0f64;
    let mut worst = Duration::ZERO;
    let started = std::time::Instant::now();
    let mut nonce = 0;
    while started.elapsed() < Duration::from_secs(6) {
        nonce += 1;
        let t0 = std::time::Instant::now();
        p.send(C::Ping(ringrouter_proto::v1::Ping { nonce }));
        loop {
            match p.next(Duration::from_secs(5)) {
                Ok(f) => {
                    if matches!(f.kind, Some(S::Pong(ref g)) if g.nonce == nonce) {
                        break;
                    }
                }
                Err(e) => panic!("ping {nonce} unanswered after 5 s: {e:?}"),
            }
        }
        worst = worst.max(t0.elapsed());
        deepest = deepest.max(r.metric(depth));
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    looping.join().expect("the loop");
    let _ = o.stream.flush();
    // (The pipeline did fill, to its 8 MiB mark: else this test shows nothing.)
    assert!(
        deepest >= (8 << 20) as f64,
        "pipeline never full: {deepest}"
    );
    assert!(worst < Duration::from_secs(3), "a Ping took {worst:?}");
}

/// Two members pipeline room messages to one room of 10 000 offline members homed on
/// their shard while a third session pings: each message waits for room in the store's
/// queue in turn, every one is answered, and so is every Ping. (A first version made the
/// shard's readers yield to a waiting message, and the waiting reader then waited on that
/// yield itself: the shard stopped for good, found by a review.)
#[test]
fn two_members_looping_room_messages_to_a_big_room_leave_their_shard_answering() {
    use std::io::Write;
    const MEMBERS: usize = 10_000;
    const MSGS: u64 = 40;
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--max-member-adds-per-minute",
        "100000",
        "--max-members-per-room",
        "20000",
    ]);
    let mut all: Vec<String> = (0..MEMBERS).map(|i| format!("tw-m{i}")).collect();
    for m in &all {
        r.visit(m);
    }
    r.visit("tw-t");
    all.push("tw-t".into());
    let mut s = r.raw_login("tw-s");
    let (res, _) = op(
        &mut s,
        C::CreateRoom(CreateRoom {
            request_id: 0,
            name: "tw".into(),
            password: String::new(),
            members: all,
        }),
    );
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    let t = r.raw_login("tw-t");
    let mut p = r.raw_login("tw-p");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let loops: Vec<_> = [(b's', s), (b't', t)]
        .into_iter()
        .map(|(tag, mut c)| {
            let done = done.clone();
            std::thread::spawn(move || {
                let bytes: Vec<u8> = (0..MSGS)
                    .flat_map(|i| {
                        let mut payload = vec![tag];
                        payload.extend(i.to_be_bytes());
                        room_send_frame_bytes("tw", &payload, i + 1 == MSGS, 1000 + i)
                    })
                    .collect();
                let mut w = c.stream.try_clone().expect("clone");
                w.write_all(&bytes).expect("write");
                loop {
                    if let S::SendResult(res) = c.next_non_ping(Duration::from_secs(60)) {
                        assert_eq!(res.status, Status::Ok as i32, "{res:?}");
                        break;
                    }
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    let mut nonce = 0;
    while done.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        nonce += 1;
        p.send(C::Ping(ringrouter_proto::v1::Ping { nonce }));
        loop {
            match p.next(Duration::from_secs(10)) {
                Ok(f) if matches!(f.kind, Some(S::Pong(ref g)) if g.nonce == nonce) => break,
                Ok(_) => {}
                Err(e) => panic!("ping {nonce} unanswered after 10 s: {e:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for l in loops {
        l.join().expect("a loop");
    }
}

/// Messages that wait behind a request (here the sender's own JoinRoom, which holds its
/// later room frames until answered) are released together, then one by one as their
/// store requests fit: released as they came, 20 of them to a room of 3 000 offline
/// members put 60 000 requests in a queue bounded at 16 384. Every member gets every
/// message, in order.
#[test]
fn room_messages_released_together_still_wait_for_room_in_the_store_queue() {
    const MEMBERS: usize = 3000;
    const MSGS: u64 = 20;
    let r = RouterProc::start(&["--shards", "1", "--max-member-adds-per-minute", "100000"]);
    let members: Vec<String> = (0..MEMBERS).map(|i| format!("rt-m{i}")).collect();
    for m in &members {
        r.visit(m);
    }
    let mut o = r.raw_login("rt-owner");
    let (res, _) = op(
        &mut o,
        C::CreateRoom(CreateRoom {
            request_id: 0,
            name: "rt".into(),
            password: String::new(),
            members,
        }),
    );
    assert_eq!(res.status, Status::Ok as i32, "{res:?}");
    let mut bytes = client_frame_bytes(C::JoinRoom(JoinRoom {
        request_id: 7,
        room: "rt".into(),
        password: String::new(),
    }));
    for i in 0..MSGS {
        bytes.extend(room_send_frame_bytes(
            "rt",
            &i.to_be_bytes(),
            i + 1 == MSGS,
            i + 100,
        ));
    }
    o.write(&bytes).unwrap();
    loop {
        match o.next_non_ping(Duration::from_secs(60)) {
            S::SendResult(res) => {
                assert_eq!(res.status, Status::Ok as i32, "{res:?}");
                break;
            }
            S::RoomResult(_) | S::RoomEvent(_) => {}
            other => panic!("{other:?}"),
        }
    }
    ringrouter_tests::assert_store_queue_filled_within_its_bound(&r);
    let mut m = r.raw_login("rt-m2999");
    let got: Vec<u64> = m
        .room_delivers(MSGS as usize, Duration::from_secs(60))
        .into_iter()
        .map(|d| u64::from_be_bytes(d.payload[..].try_into().expect("an 8-byte payload")))
        .collect();
    assert_eq!(got, (0..MSGS).collect::<Vec<_>>());
}

/// `n` JoinRooms of `room` with `password`, pipelined in one write; their answers, in order.
fn pipelined_joins(c: &mut Raw, room: &str, password: &str, n: u64) -> Vec<RoomResult> {
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend(client_frame_bytes(C::JoinRoom(JoinRoom {
            request_id: 5000 + i,
            room: room.into(),
            password: password.into(),
        })));
    }
    c.write(&bytes).unwrap();
    let mut out = Vec::new();
    while out.len() < n as usize {
        if let S::RoomResult(x) = c.next_non_ping(Duration::from_secs(30)) {
            out.push(x);
        }
    }
    out
}

const USER_GUESSES: &str = "too many wrong room passwords from this user, try again later";
const ROOM_GUESSES: &str = "too many wrong passwords for this room, try again later";

/// Before: nothing bounded the wrong room passwords of a user but the hashing pool
/// (each guess an Argon2id check): 80 accounts pipelining 16 wrong-password joins each
/// kept it full, honest password logins took p50 0.9 s and some were refused
/// (`bench/hostile/room_pw.py`). Now a user gets `--max-failed-room-joins-per-user` wrong
/// guesses a minute in all rooms of every shard, then RATE_LIMITED without a hash (the
/// right password too); other users are not affected.
#[test]
fn wrong_room_passwords_of_a_user_are_bounded_across_rooms_and_shards() {
    let r = RouterProc::start(&[
        "--shards",
        "2",
        "--max-failed-room-joins-per-user",
        "3",
        "--max-failed-room-joins-per-room",
        "0",
    ]);
    let rooms = users_on_shards("vault", 2);
    let mut o = r.raw_login("owner");
    for room in &rooms {
        assert_eq!(o.create_room(room, "right").status, Status::Ok as i32);
    }
    let mut eve = r.raw_login("eve");
    // Twenty guesses pipelined at the room of shard 0: three are checked.
    let got = pipelined_joins(&mut eve, &rooms[0], "wrong", 20);
    let forbidden = got
        .iter()
        .filter(|x| x.status == Status::Forbidden as i32)
        .count();
    assert_eq!(forbidden, 3, "{got:?}");
    for x in &got[3..] {
        assert_eq!(x.status, Status::RateLimited as i32, "{x:?}");
        assert_eq!(x.reason, USER_GUESSES);
    }
    // The bucket is the user's, whatever the room or its shard, and a reconnect does
    // not refill it; the right password is refused too (it is not checked).
    drop(eve);
    let mut eve = r.raw_login("eve");
    for room in &rooms {
        let x = eve.join_room(room, "right");
        assert_eq!(x.status, Status::RateLimited as i32, "{room}: {x:?}");
        assert_eq!(x.reason, USER_GUESSES);
    }
    // Another user joins both.
    let mut bob = r.raw_login("bob");
    for room in &rooms {
        assert_eq!(
            bob.join_room(room, "wrong").status,
            Status::Forbidden as i32
        );
        assert_eq!(bob.join_room(room, "right").status, Status::Ok as i32);
    }
}

/// Many users cannot grind one room's password: the room gets
/// `--max-failed-room-joins-per-room` wrong guesses a minute from all of them together;
/// past it every join of that room with a password is refused RATE_LIMITED without a hash
/// (the right one too: the price, as for a user's logins); other rooms are not affected.
#[test]
fn wrong_passwords_for_one_room_are_bounded_across_users() {
    let r = RouterProc::start(&[
        "--shards",
        "2",
        "--max-failed-room-joins-per-user",
        "0",
        "--max-failed-room-joins-per-room",
        "4",
    ]);
    let mut o = r.raw_login("owner");
    assert_eq!(o.create_room("target", "right").status, Status::Ok as i32);
    assert_eq!(o.create_room("other", "right").status, Status::Ok as i32);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let mut g = r.raw_login(&format!("guesser{i}"));
        let x = g.join_room("target", &format!("guess{i}"));
        statuses.push((x.status, x.reason));
    }
    let forbidden = statuses
        .iter()
        .filter(|(s, _)| *s == Status::Forbidden as i32)
        .count();
    assert_eq!(forbidden, 4, "{statuses:?}");
    for (s, why) in &statuses[4..] {
        assert_eq!(*s, Status::RateLimited as i32, "{statuses:?}");
        assert_eq!(why, ROOM_GUESSES);
    }
    let mut m = r.raw_login("member");
    let x = m.join_room("target", "right");
    assert_eq!(x.status, Status::RateLimited as i32, "{x:?}");
    assert_eq!(x.reason, ROOM_GUESSES);
    assert_eq!(m.join_room("other", "right").status, Status::Ok as i32);
}

/// Room passwords (JoinRoom checks, CreateRoom hashes) hold at most a quarter of
/// `--max-password-jobs`, so they cannot fill the pool's bound and have password logins
/// refused: with a bound of 4, four users keeping wrong-password joins in flight at
/// once (guess buckets off) used to take all 4 places; now one, and every honest login
/// meanwhile is OK.
#[test]
fn room_passwords_hold_at_most_a_quarter_of_the_hashing_pool() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let r = Arc::new(RouterProc::start_real_argon2(&[
        "--shards",
        "2",
        "--auth",
        "accounts",
        "--max-password-jobs",
        "4",
        "--max-failed-room-joins-per-user",
        "0",
        "--max-failed-room-joins-per-room",
        "0",
        "--max-failed-logins-per-user",
        "0",
    ]));
    let users = ["owner", "honest", "g0", "g1", "g2", "g3"];
    for u in users {
        assert_eq!(r.register(u, "pw").status, Status::Ok as i32, "{u}");
    }
    let mut o = r.raw_login_password("owner", "pw", "d");
    for i in 0..4 {
        let x = o.create_room(&format!("locked{i}"), "right");
        assert_eq!(x.status, Status::Ok as i32, "{x:?}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (checked, busy) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let guessers: Vec<_> = (0..4)
        .map(|i| {
            let (r, stop) = (r.clone(), stop.clone());
            let (checked, busy) = (checked.clone(), busy.clone());
            std::thread::spawn(move || {
                let mut g = r.raw_login_password(&format!("g{i}"), "pw", "d");
                while !stop.load(Ordering::Relaxed) {
                    for x in pipelined_joins(&mut g, &format!("locked{i}"), "wrong", 4) {
                        if x.status == Status::Forbidden as i32 {
                            checked.fetch_add(1, Ordering::Relaxed);
                        } else {
                            assert_eq!(x.status, Status::RateLimited as i32, "{x:?}");
                            assert!(x.reason.contains("in progress"), "{x:?}");
                            busy.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..10 {
        let (_c, lr) = r.login_password("honest", "pw");
        assert_eq!(lr.status, Status::Ok as i32, "{lr:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for g in guessers {
        g.join().expect("guesser");
    }
    let (checked, busy) = (
        checked.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed),
    );
    // The guesses were checked, and went past their share.
    assert!(
        checked > 4 && busy > 0,
        "checked {checked}, refused busy {busy}"
    );
}

/// Before: a client that reconnected in a loop, each connection pipelining 16
/// wrong-password JoinRooms and leaving at once, had them checked one after another
/// after it left (a user's joins run one at a time): the hashing pool stayed busy
/// 25-30 s after it stopped. Now a password join whose session ended while it waited
/// is answered (to nobody) without a hash.
#[test]
fn password_joins_of_an_ended_session_are_not_checked() {
    let r = RouterProc::start_real_argon2(&[
        "--shards",
        "1",
        "--max-failed-room-joins-per-user",
        "0",
        "--max-failed-room-joins-per-room",
        "0",
    ]);
    let mut o = r.raw_login("owner");
    assert_eq!(o.create_room("locked", "right").status, Status::Ok as i32);
    let mut eve = r.raw_login("eve");
    let mut bytes = Vec::new();
    for i in 0..16 {
        bytes.extend(client_frame_bytes(C::JoinRoom(JoinRoom {
            request_id: 100 + i,
            room: "locked".into(),
            password: "wrong".into(),
        })));
    }
    eve.write(&bytes).unwrap();
    drop(eve);
    let name = "ringrouter_room_password_checks_dropped_total";
    assert!(
        wait_until(Duration::from_secs(10), || {
            super::bounds::metric_sum(&r.metrics(), name) >= 12.0
        }),
        "{}",
        r.metrics()
            .lines()
            .filter(|l| l.contains("password"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The user's next session is served as before.
    let mut eve = r.raw_login("eve");
    assert_eq!(
        eve.join_room("locked", "wrong").status,
        Status::Forbidden as i32
    );
    assert_eq!(eve.join_room("locked", "right").status, Status::Ok as i32);
}
