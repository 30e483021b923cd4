//! Rooms: create (owner, join code), join by name or code (password checked), leave,
//! owner-only add / remove / delete, list; room messages reach every member's every
//! session (the sender's other devices too, not the sending one), non-members are
//! refused; events tell members what happened; limits are enforced.

use ringrouter_client::Status;
use ringrouter_proto::v1::{
    client_frame::Kind as C, server_frame::Kind as S, AddMember, CreateRoom, DeleteRoom, JoinRoom,
    LeaveRoom, ListRooms, RemoveMember, RoomEvent, RoomEventKind, RoomResult, Send,
};
use ringrouter_tests::{users_on_shards, Raw, RouterProc, T};

fn result(k: S) -> RoomResult {
    match k {
        S::RoomResult(r) => r,
        other => panic!("expected a RoomResult, got {other:?}"),
    }
}

fn create(c: &mut Raw, name: &str, password: &str) -> RoomResult {
    let k = C::CreateRoom(CreateRoom {
        request_id: 11,
        name: name.into(),
        password: password.into(),
    });
    result(c.call(k, 11).0)
}

fn join(c: &mut Raw, room: &str, password: &str) -> RoomResult {
    let k = C::JoinRoom(JoinRoom {
        request_id: 12,
        room: room.into(),
        password: password.into(),
    });
    result(c.call(k, 12).0)
}

fn op(c: &mut Raw, k: C) -> (RoomResult, Vec<S>) {
    let (r, others) = c.call(k, 0);
    (result(r), others)
}

fn send_room(c: &mut Raw, room: &str, payload: &[u8], request_id: u64) -> i32 {
    let k = C::Send(Send {
        request_id,
        to_room: room.into(),
        payload: payload.to_vec().into(),
        want_result: true,
        ..Default::default()
    });
    match c.call(k, request_id).0 {
        S::SendResult(r) => r.status,
        other => panic!("expected a SendResult, got {other:?}"),
    }
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
    let created = create(&mut o1, "lobby", "");
    assert_eq!(created.status, Status::Ok as i32, "{created:?}");
    assert!(created.join_code.starts_with('#'), "{created:?}");
    assert_eq!(created.room, "lobby");
    // Join by name and by code.
    let j = join(&mut a, "lobby", "");
    assert_eq!((j.status, j.room.as_str()), (Status::Ok as i32, "lobby"));
    let j = join(&mut b, &created.join_code, "");
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
    assert_eq!(
        send_room(&mut o1, "lobby", b"hello room", 5),
        Status::Ok as i32
    );
    for c in [&mut o2, &mut a, &mut b] {
        let d = c.delivers(1, T).remove(0);
        assert_eq!(
            (d.from_user.as_str(), d.to_room.as_str(), &d.payload[..]),
            (owner.as_str(), "lobby", &b"hello room"[..])
        );
    }
    // Members send too.
    assert_eq!(
        send_room(&mut a, "lobby", b"from ann", 6),
        Status::Ok as i32
    );
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
        send_room(&mut x, "lobby", b"let me in", 7),
        Status::Forbidden as i32
    );
    assert_eq!(
        send_room(&mut x, "no-such-room", b"?", 8),
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
    assert_eq!(
        send_room(&mut a, "lobby", b"bob left", 9),
        Status::Ok as i32
    );
    assert_eq!(&o1.delivers(1, T)[0].payload[..], b"bob left");
    assert_eq!(
        send_room(&mut b, "lobby", b"still here?", 10),
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
    assert_eq!(create(&mut o, "club", "").status, Status::Ok as i32);
    assert_eq!(join(&mut m, "club", "").status, Status::Ok as i32);
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
    assert_eq!(send_room(&mut m, "club", b"x", 3), Status::Forbidden as i32);
    let (res, _) = op(
        &mut o,
        C::DeleteRoom(DeleteRoom {
            request_id: 0,
            room: "club".into(),
        }),
    );
    assert_eq!(res.status, Status::Ok as i32);
    assert_eq!(send_room(&mut o, "club", b"x", 4), Status::NotFound as i32);
    // The name is free again.
    assert_eq!(create(&mut m, "club", "").status, Status::Ok as i32);
    assert_eq!(create(&mut o, "club", "").status, Status::Conflict as i32);
}

#[test]
fn join_with_wrong_password_or_code_is_refused() {
    let r = RouterProc::start(&["--shards", "2"]);
    let mut o = r.raw_login("pam");
    let mut q = r.raw_login("quinn");
    let c = create(&mut o, "vault", "s3cret");
    assert_eq!(c.status, Status::Ok as i32);
    assert_eq!(join(&mut q, "vault", "").status, Status::Forbidden as i32);
    assert_eq!(
        join(&mut q, "vault", "guess").status,
        Status::Forbidden as i32
    );
    assert_eq!(
        join(&mut q, &c.join_code, "guess").status,
        Status::Forbidden as i32
    );
    assert_eq!(
        join(&mut q, "#nosuchcode", "s3cret").status,
        Status::NotFound as i32
    );
    assert_eq!(
        join(&mut q, &c.join_code, "s3cret").status,
        Status::Ok as i32
    );
    // Bad names are refused before anything happens.
    assert_eq!(create(&mut o, "", "").status, Status::BadRequest as i32);
    assert_eq!(
        create(&mut o, "#looks-like-a-code", "").status,
        Status::BadRequest as i32
    );
    assert_eq!(
        create(&mut o, &"x".repeat(65), "").status,
        Status::BadRequest as i32
    );
}

#[test]
fn offline_members_get_room_messages_at_next_login() {
    let r = RouterProc::start(&["--shards", "2"]);
    let mut o = r.raw_login("ruth");
    let mut s = r.raw_login("sam");
    assert_eq!(create(&mut o, "news", "").status, Status::Ok as i32);
    assert_eq!(join(&mut s, "news", "").status, Status::Ok as i32);
    drop(s);
    for i in 0..3u8 {
        assert_eq!(
            send_room(&mut o, "news", &[i], u64::from(i) + 20),
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
    assert_eq!(create(&mut o, "r1", "").status, Status::Ok as i32);
    assert_eq!(create(&mut o, "r2", "").status, Status::Ok as i32);
    let c = create(&mut o, "r3", "");
    assert_eq!(c.status, Status::RateLimited as i32, "{c:?}");
    let mut users: Vec<Raw> = (0..3).map(|i| r.raw_login(&format!("u{i}"))).collect();
    assert_eq!(join(&mut users[0], "r1", "").status, Status::Ok as i32);
    assert_eq!(join(&mut users[1], "r1", "").status, Status::Ok as i32);
    let full = join(&mut users[2], "r1", "");
    assert_eq!(full.status, Status::RateLimited as i32, "{full:?}");
    // u0 is in r1; r2 makes two; a third room is refused.
    assert_eq!(join(&mut users[0], "r2", "").status, Status::Ok as i32);
    let mut v = r.raw_login("vic");
    assert_eq!(create(&mut v, "r4", "").status, Status::Ok as i32);
    let over = join(&mut users[0], "r4", "");
    assert_eq!(over.status, Status::RateLimited as i32, "{over:?}");
}

#[test]
fn rooms_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let r = RouterProc::start(&["--shards", "2", "--data-dir", d]);
    let mut o = r.raw_login("uma");
    let mut w = r.raw_login("walt");
    let c = create(&mut o, "persist", "pw");
    assert_eq!(join(&mut w, "persist", "pw").status, Status::Ok as i32);
    drop((o, w));
    let (code, _) = r.terminate(std::time::Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let r = RouterProc::start(&["--shards", "2", "--data-dir", d]);
    let mut o = r.raw_login("uma");
    let mut w = r.raw_login("walt");
    let (res, _) = op(&mut w, C::ListRooms(ListRooms { request_id: 0 }));
    assert_eq!(res.rooms, ["persist"]);
    assert_eq!(
        send_room(&mut o, "persist", b"still here", 1),
        Status::Ok as i32
    );
    assert_eq!(&w.delivers(1, T)[0].payload[..], b"still here");
    let mut x = r.raw_login("xena");
    assert_eq!(join(&mut x, &c.join_code, "pw").status, Status::Ok as i32);
}

#[test]
fn room_send_result_waits_for_offline_members_and_reports_a_full_queue() {
    let r = RouterProc::start(&["--shards", "2", "--max-offline-per-user", "2"]);
    let mut o = r.raw_login("yara");
    let mut z = r.raw_login("zed");
    assert_eq!(create(&mut o, "small", "").status, Status::Ok as i32);
    assert_eq!(join(&mut z, "small", "").status, Status::Ok as i32);
    drop(z);
    assert_eq!(send_room(&mut o, "small", b"1", 1), Status::Ok as i32);
    assert_eq!(send_room(&mut o, "small", b"2", 2), Status::Ok as i32);
    // zed's queue is full: not a silent loss, the sender is told.
    assert_eq!(
        send_room(&mut o, "small", b"3", 3),
        Status::RateLimited as i32
    );
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
    assert_eq!(create(&mut o, "journal", "").status, Status::Ok as i32);
    assert_eq!(join(&mut on, "journal", "").status, Status::Ok as i32);
    assert_eq!(join(&mut off, "journal", "").status, Status::Ok as i32);
    drop(off);
    for i in 0..20u8 {
        assert_eq!(
            send_room(&mut o, "journal", &[i], 100 + u64::from(i)),
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
