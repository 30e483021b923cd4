//! Regression tests from the review of offline delivery, rooms and accounts: room limits under pipelining, ordering by join code vs name.
//!
//! Each test's comment describes the bug it was written against; all of them are fixed.

use std::time::Duration;

use ringrouter_client::Status;
use ringrouter_proto::v1::{
    client_frame::Kind as C, server_frame::Kind as S, CreateRoom, JoinRoom, ListRooms, RoomResult,
};
use ringrouter_tests::{
    client_frame_bytes, room_result, room_send_frame_bytes, Raw, RouterProc, T,
};

/// Reads RoomResults (skipping events and pings) until `n` arrived.
fn room_results(c: &mut Raw, n: usize) -> Vec<RoomResult> {
    let mut out = Vec::new();
    while out.len() < n {
        match c.next_non_ping(T) {
            S::RoomResult(r) => out.push(r),
            S::RoomEvent(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn list_rooms(c: &mut Raw) -> Vec<String> {
    room_result(c.call(C::ListRooms(ListRooms { request_id: 77 }), 77).0).rooms
}

/// `check_room_limit` reads `rooms_of(user)` and only writes in the completion: CreateRoom
/// frames for different rooms pipelined in one write all see the old count, so
/// --max-rooms-per-user is not enforced.
#[test]
fn review_pipelined_creates_pass_max_rooms_per_user() {
    let r = RouterProc::start(&["--shards", "1", "--max-rooms-per-user", "2"]);
    let mut a = r.raw_login("alice");
    let mut bytes = Vec::new();
    for i in 0..8u64 {
        bytes.extend(client_frame_bytes(C::CreateRoom(CreateRoom {
            request_id: 100 + i,
            name: format!("lim{i}"),
            password: String::new(),
        })));
    }
    a.write(&bytes).unwrap();
    let res = room_results(&mut a, 8);
    let ok = res.iter().filter(|r| r.status == Status::Ok as i32).count();
    let rooms = list_rooms(&mut a);
    assert!(
        ok <= 2 && rooms.len() <= 2,
        "max-rooms-per-user 2, but {ok} creates succeeded; alice is in {rooms:?}"
    );
}

/// Same for JoinRoom: pipelined joins of different rooms all pass the limit check.
#[test]
fn review_pipelined_joins_pass_max_rooms_per_user() {
    let r = RouterProc::start(&["--shards", "1", "--max-rooms-per-user", "2"]);
    let mut owner = r.raw_login("owner");
    // The owner makes 2 rooms (its limit), another owner 2 more, a third 2 more.
    let mut owners = vec![];
    for (k, o) in ["o1", "o2", "o3"].iter().enumerate() {
        let mut c = r.raw_login(o);
        for j in 0..2 {
            let res = c.create_room(&format!("j{k}{j}"), "");
            assert_eq!(res.status, Status::Ok as i32, "{res:?}");
        }
        owners.push(c);
    }
    let _ = &mut owner;
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
    let res = room_results(&mut b, 6);
    let ok = res.iter().filter(|r| r.status == Status::Ok as i32).count();
    let rooms = list_rooms(&mut b);
    assert!(
        ok <= 2 && rooms.len() <= 2,
        "max-rooms-per-user 2, but {ok} joins succeeded; bob is in {rooms:?}"
    );
}

/// A room message addressed by join code takes a detour (a store lookup on the code's
/// home shard, then a forward by name); one addressed by name goes straight to the room.
/// Messages from one sender to one room then arrive out of send order.
#[test]
fn review_room_messages_by_code_and_name_keep_send_order() {
    let r = RouterProc::start(&["--shards", "1"]);
    let mut a = r.raw_login("alice");
    let mut b = r.raw_login("bob");
    let created = a.create_room("ord", "");
    assert_eq!(created.status, Status::Ok as i32);
    let j = b.join_room("ord", "");
    assert_eq!(j.status, Status::Ok as i32);
    let mut bytes = Vec::new();
    bytes.extend(room_send_frame_bytes(&created.join_code, b"1", true, 1));
    bytes.extend(room_send_frame_bytes("ord", b"2", true, 2));
    bytes.extend(room_send_frame_bytes(&created.join_code, b"3", true, 3));
    bytes.extend(room_send_frame_bytes("ord", b"4", true, 4));
    a.write(&bytes).unwrap();
    // Which sends the router took (a router may refuse sends by code outright).
    let mut accepted = Vec::new();
    let mut answered = 0;
    while answered < 4 {
        match a.next_non_ping(T) {
            S::SendResult(r) => {
                answered += 1;
                if r.status == Status::Ok as i32 {
                    accepted.push(b'0' + r.request_id as u8);
                }
            }
            S::Error(e) if e.request_id != 0 => answered += 1,
            S::RoomEvent(_) => {}
            other => panic!("{other:?}"),
        }
    }
    accepted.sort();
    let mut got = Vec::new();
    while got.len() < accepted.len() {
        match b.next_non_ping(T) {
            S::Deliver(d) => got.push(d.payload[0]),
            S::RoomEvent(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        got, accepted,
        "order of alice's accepted room messages as bob saw them"
    );
    let _ = Duration::ZERO;
}

/// On the room's home shard a room request is posted to `local_mail` (handled on the
/// consumer's next turn), but a room message is handled at once (`send_to_room` calls
/// `on_room_work` directly). A Send pipelined after a JoinRoom is checked before the
/// Join: FORBIDDEN, although the module doc promises "a message sent after a Join is
/// checked against the new member list".
#[test]
fn review_send_pipelined_after_join_is_checked_after_the_join() {
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
}

/// Same with CreateRoom then Send by the owner.
#[test]
fn review_send_pipelined_after_create_reaches_the_room() {
    let r = RouterProc::start(&["--shards", "1"]);
    let mut o = r.raw_login("owner");
    let mut bytes = client_frame_bytes(C::CreateRoom(CreateRoom {
        request_id: 1,
        name: "pc".into(),
        password: String::new(),
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

/// Starts the router binary with real Argon2id parameters (RouterProc always adds
/// --argon2-cheap). Returns the child, the address, and the data dir guard.
fn start_real_argon(
    args: &[&str],
) -> (std::process::Child, std::net::SocketAddr, tempfile::TempDir) {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(ringrouter_tests::router_bin())
        .args(["--listen", "127.0.0.1:0", "--no-pin", "--data-dir"])
        .arg(data.path())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    let line = lines.next().unwrap().unwrap();
    std::thread::spawn(move || for _ in lines {});
    let addr = line["ringrouter listening on ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (child, addr, data)
}

fn raw_login_at(addr: std::net::SocketAddr, user: &str) -> Raw {
    let mut c = Raw::connect(addr);
    let lr = c.login(user);
    assert_eq!(lr.status, Status::Ok as i32);
    c
}

/// A room with a password is `busy` for a whole Argon2id verification (~35 ms) per Join
/// attempt, and everything for the room (members' messages too) queues behind it. Any
/// logged-in non-member can pipeline wrong-password Joins and stall the room's traffic
/// for as long as they like; `hashing_busy` never trips because the room submits one
/// hash at a time.
#[test]
fn review_wrong_password_joins_stall_room_messages() {
    let (mut child, addr, _data) = start_real_argon(&["--shards", "1"]);
    let mut o = raw_login_at(addr, "owner");
    let c = o.create_room("locked", "right");
    assert_eq!(c.status, Status::Ok as i32, "{c:?}");
    let mut eve = raw_login_at(addr, "eve");
    let mut bytes = Vec::new();
    for i in 0..100 {
        bytes.extend(client_frame_bytes(C::JoinRoom(JoinRoom {
            request_id: 1000 + i,
            room: "locked".into(),
            password: "wrong".into(),
        })));
    }
    eve.write(&bytes).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t0 = std::time::Instant::now();
    o.write(&room_send_frame_bytes("locked", b"x", true, 7))
        .unwrap();
    let status = loop {
        match o.next_non_ping(Duration::from_secs(30)) {
            S::SendResult(s) if s.request_id == 7 => break s.status,
            _ => {}
        }
    };
    let took = t0.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, Status::Ok as i32);
    assert!(
        took < Duration::from_secs(1),
        "the owner's room message waited {took:?} behind a non-member's wrong-password joins"
    );
}

/// The LoginResult waits for the first backlog page (`start_backlog` keeps it in
/// `login_frame`), but the session is in the user's session list from `register` on, so
/// a RoomEvent for the user (`on_room_notice` -> `push_frame`) is written before it: the
/// first frame a client gets after Login is not the LoginResult.
#[test]
fn review_room_event_can_precede_login_result() {
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
                bytes.extend(client_frame_bytes(C::LeaveRoom(
                    ringrouter_proto::v1::LeaveRoom {
                        request_id: id + 1,
                        room: "busy".into(),
                    },
                )));
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
