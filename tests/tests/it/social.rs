//! The social layer (issue 11): ephemeral messages, copies of a user's direct messages
//! for its other devices, ... Behaviour that runs through the shard loop is checked on
//! both I/O drivers.

use std::time::Duration;

use ringrouter_client::{Client, Message, Status, Target};
use ringrouter_tests::{users_on_shards, Driver, RouterProc, T};

const SHORT: Duration = Duration::from_millis(300);

fn next(c: &mut Client, who: &str) -> Message {
    c.recv(Some(T))
        .unwrap_or_else(|e| panic!("{who}: {e}"))
        .unwrap_or_else(|| panic!("{who}: no message"))
}

fn nothing(c: &mut Client, who: &str) {
    if let Some(m) = c.recv(Some(SHORT)).unwrap_or_else(|e| panic!("{who}: {e}")) {
        panic!("{who}: unexpected {m:?}");
    }
}

// ------------------------------------------------------------------ ephemeral

fn ephemeral_is_live_only(driver: Driver) {
    let r = RouterProc::start_with(&["--shards", "2"], driver);
    let u = users_on_shards("eph", 2);
    let (a, b) = (&u[0], &u[1]);
    let mut ca = r.client(a);
    let mut cb = r.client(b);
    let id = ca
        .send_ephemeral_wait(Target::User(b), b"typing")
        .expect("ephemeral send");
    let m = next(&mut cb, "bob");
    assert!(m.ephemeral, "{m:?}");
    assert_eq!(
        (m.sender.as_str(), &m.payload[..], m.seq, m.msg_id),
        (a.as_str(), &b"typing"[..], 0, id)
    );
    assert!(!m.outgoing && m.to_user.is_none() && m.room.is_none());
    // Not sequenced: the next ordinary message is seq 1.
    ca.send_wait(b, b"hello").unwrap();
    let m = next(&mut cb, "bob");
    assert_eq!(
        (m.seq, m.ephemeral, &m.payload[..]),
        (1, false, &b"hello"[..])
    );
    cb.ack_all().unwrap();
    drop(cb);
    // bob is offline: an ephemeral message is routed (OK) and dropped, never stored.
    std::thread::sleep(SHORT);
    ca.send_ephemeral_wait(Target::User(b), b"typing again")
        .expect("ephemeral to an offline user is OK");
    ca.send_ephemeral(b, b"and again").unwrap();
    ca.send_wait(b, b"stored").unwrap();
    let mut cb = r.client(b);
    let m = next(&mut cb, "bob back");
    assert_eq!((&m.payload[..], m.ephemeral), (&b"stored"[..], false));
    nothing(&mut cb, "bob back");
}

#[test]
fn ephemeral_is_live_only_io_uring() {
    ephemeral_is_live_only(Driver::Default);
}

#[test]
fn ephemeral_is_live_only_epoll() {
    ephemeral_is_live_only(Driver::Legacy);
}

fn ephemeral_in_a_room(driver: Driver) {
    let r = RouterProc::start_with(&["--shards", "2"], driver);
    let u = users_on_shards("ephr", 2);
    let (a, b) = (&u[0], &u[1]);
    let mut ca = r.client(a);
    let mut cb = r.client(b);
    let mut stranger = r.client("ephr-stranger");
    ca.create_room("typing-room", None).unwrap();
    cb.join_room("typing-room", None).unwrap();
    // The join event first.
    while let Some(ev) = ca.next_event(Some(SHORT)).unwrap() {
        let _ = ev;
    }
    ca.send_ephemeral_wait(Target::Room("typing-room"), b"...")
        .expect("member");
    let m = next(&mut cb, "bob");
    assert!(m.ephemeral);
    assert_eq!(
        (m.room.as_deref(), m.sender.as_str(), m.seq),
        (Some("typing-room"), a.as_str(), 0)
    );
    nothing(&mut ca, "alice (the sending device)");
    ca.send_room_ephemeral("typing-room", b"fire and forget")
        .unwrap();
    assert_eq!(&next(&mut cb, "bob").payload[..], b"fire and forget");
    let e = stranger
        .send_ephemeral_wait(Target::Room("typing-room"), b"x")
        .unwrap_err();
    assert_eq!(e.code(), Some(Status::Forbidden));
    let e = stranger
        .send_ephemeral_wait(Target::Room("no-such-room"), b"x")
        .unwrap_err();
    assert_eq!(e.code(), Some(Status::NotFound));
    // Offline members get nothing at their next login.
    drop(cb);
    std::thread::sleep(SHORT);
    ca.send_ephemeral_wait(Target::Room("typing-room"), b"gone")
        .unwrap();
    ca.send_room_wait("typing-room", b"kept").unwrap();
    let mut cb = r.client(b);
    let m = next(&mut cb, "bob back");
    assert_eq!((&m.payload[..], m.ephemeral), (&b"kept"[..], false));
    nothing(&mut cb, "bob back");
}

#[test]
fn ephemeral_in_a_room_io_uring() {
    ephemeral_in_a_room(Driver::Default);
}

#[test]
fn ephemeral_in_a_room_epoll() {
    ephemeral_in_a_room(Driver::Legacy);
}

// ------------------------------------------------------- copies to own devices

fn copies_to_own_devices(driver: Driver) {
    let r = RouterProc::start_with(&["--shards", "2"], driver);
    let u = users_on_shards("cp", 2);
    let (a, b) = (&u[0], &u[1]);
    let mut phone = r.device(a, "phone");
    let mut laptop = r.device(a, "laptop");
    let mut cb = r.client(b);
    let id = phone.send_wait(b, b"hi bob").unwrap();
    let m = next(&mut cb, "bob");
    assert_eq!((m.seq, m.outgoing, m.msg_id), (1, false, id));
    let c = next(&mut laptop, "alice's laptop");
    assert!(c.outgoing, "{c:?}");
    assert_eq!(
        (
            c.sender.as_str(),
            c.to_user.as_deref(),
            &c.payload[..],
            c.msg_id,
            c.seq
        ),
        (a.as_str(), Some(b.as_str()), &b"hi bob"[..], id, 0)
    );
    nothing(&mut phone, "alice's phone (the sending device)");
    // A message to oneself reaches every device once, as before: no copy.
    phone.send_wait(a, b"note to self").unwrap();
    for (d, who) in [(&mut phone, "phone"), (&mut laptop, "laptop")] {
        let m = next(d, who);
        assert_eq!((&m.payload[..], m.outgoing), (&b"note to self"[..], false));
        nothing(d, who);
    }
    // Room messages are not copied (members' devices get them already).
    phone.create_room("cp-room", None).unwrap();
    phone.send_room_wait("cp-room", b"room").unwrap();
    let m = next(&mut laptop, "laptop");
    assert_eq!((m.room.as_deref(), m.outgoing), (Some("cp-room"), false));
    nothing(&mut laptop, "laptop");
    // Ephemeral messages are not copied either.
    phone.send_ephemeral(b, b"typing").unwrap();
    assert!(next(&mut cb, "bob").ephemeral);
    nothing(&mut laptop, "laptop");
    // One device: no copy anywhere.
    drop(laptop);
    std::thread::sleep(SHORT);
    phone.send_wait(b, b"alone").unwrap();
    assert_eq!(&next(&mut cb, "bob").payload[..], b"alone");
    nothing(&mut phone, "phone");
}

#[test]
fn copies_to_own_devices_io_uring() {
    copies_to_own_devices(Driver::Default);
}

#[test]
fn copies_to_own_devices_epoll() {
    copies_to_own_devices(Driver::Legacy);
}
