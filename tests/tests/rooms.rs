//! Rooms: create (owner, join code), join by name or code (password checked), leave,
//! owner-only add / remove / delete, list; room messages reach every member's every
//! session (the sender's other devices too, not the sending one), non-members are
//! refused; events tell members what happened; limits are enforced.

use ringrouter_client::Status;
use ringrouter_proto::v1::{
    client_frame::Kind as C, server_frame::Kind as S, AddMember, DeleteRoom, LeaveRoom, ListRooms,
    RemoveMember, RoomEvent, RoomEventKind, RoomResult,
};
use ringrouter_tests::{room_result, users_on_shards, Raw, RouterProc, T};

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
    assert_eq!(o1.send_room("lobby", b"hello room", 5), Status::Ok as i32);
    for c in [&mut o2, &mut a, &mut b] {
        let d = c.delivers(1, T).remove(0);
        assert_eq!(
            (d.from_user.as_str(), d.to_room.as_str(), &d.payload[..]),
            (owner.as_str(), "lobby", &b"hello room"[..])
        );
    }
    // Members send too.
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

#[test]
fn sync_mode_room_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let args = ["--shards", "2", "--durability", "sync", "--data-dir", d];
    let r = RouterProc::start(&args);
    let mut o = r.raw_login("abe");
    let mut on = r.raw_login("bea");
    let mut off = r.raw_login("cy");
    assert_eq!(o.create_room("journal", "").status, Status::Ok as i32);
    assert_eq!(on.join_room("journal", "").status, Status::Ok as i32);
    assert_eq!(off.join_room("journal", "").status, Status::Ok as i32);
    drop(off);
    for i in 0..20u8 {
        assert_eq!(
            o.send_room("journal", &[i], 100 + u64::from(i)),
            Status::Ok as i32
        );
    }
    drop(r); // kill -9: bea never acked, cy was offline
    let r = RouterProc::start(&args);
    for user in ["bea", "cy"] {
        let mut c = r.raw_login(user);
        let got: Vec<u8> = c.delivers(20, T).iter().map(|d| d.payload[0]).collect();
        assert_eq!(got, (0..20).collect::<Vec<u8>>(), "{user}");
    }
}
