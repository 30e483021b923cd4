//! The social layer (issue 11): ephemeral messages, copies of a user's direct messages
//! for its other devices, ... Behaviour that runs through the shard loop is checked on
//! both I/O drivers.

use std::time::Duration;

use ringrouter_client::{Client, Event, Message, Receipt, Status, Target};
use ringrouter_proto::v1::server_frame;
use ringrouter_tests::{connect_small_rcvbuf, users_on_shards, Driver, Raw, RouterProc, T};

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

/// Two members on different shards of a room `room` on a router started with `flags`:
/// the router and both clients (the creator first).
fn room_of_two(flags: &[&str], room: &str) -> (RouterProc, Client, Client) {
    let r = RouterProc::start(flags);
    let u = users_on_shards(room, 2);
    let mut ca = r.client(&u[0]);
    let mut cb = r.client(&u[1]);
    ca.create_room(room, None).unwrap();
    cb.join_room(room, None).unwrap();
    while ca.next_event(Some(SHORT)).unwrap().is_some() {}
    (r, ca, cb)
}

/// Sends `n` ephemeral frames into `room` one at a time: how many were taken, and the
/// whole seconds that took (every other answer must be RATE_LIMITED).
fn live_frames(c: &mut Client, room: &str, n: u8) -> (u64, u64) {
    let t = std::time::Instant::now();
    let mut ok = 0u64;
    for i in 0..n {
        match c.send_ephemeral_wait(Target::Room(room), &[i]) {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Some(Status::RateLimited) => {}
            Err(e) => panic!("{e}"),
        }
    }
    (ok, t.elapsed().as_secs())
}

/// A room's live-only frames (typing indicators, read receipts) spend a budget of
/// deliveries a second (each frame one per member): past it they are refused
/// RATE_LIMITED and reach no one; ordinary messages are not counted. Unpaced, one
/// client's loop of them into a room of 500 held other users' messages 0.5–5.7 s.
#[test]
fn a_rooms_live_frames_are_refused_past_its_budget() {
    // Two members: each frame costs 2 of the 2 a second, one frame a second.
    let (_r, mut ca, mut cb) =
        room_of_two(&["--shards", "2", "--room-live-per-second", "2"], "rl-room");
    let (ok, secs) = live_frames(&mut ca, "rl-room", 8);
    assert!(ok >= 1 && ok <= 1 + secs, "{ok} OK in {secs} s");
    for _ in 0..ok {
        assert!(next(&mut cb, "bob").ephemeral);
    }
    nothing(&mut cb, "bob: a refused frame reached no one");
    // Ordinary messages are not counted against it.
    for _ in 0..3 {
        ca.send_room_wait("rl-room", b"kept").unwrap();
        assert_eq!(&next(&mut cb, "bob").payload[..], b"kept");
    }
}

/// A user's live-only frames have their own share besides the room's budget
/// (`--room-live-per-user-per-second`, ten seconds' worth saved up): one user looping
/// typing indicators is refused while the other members still reach the room.
#[test]
fn a_users_live_frames_are_refused_past_its_own_share() {
    // Two members: each frame costs 2 of a's 10 saved up (1 a second): 5 frames, then
    // one every 2 s; the room's budget (the default) is far from spent.
    let (_r, mut ca, mut cb) = room_of_two(
        &["--shards", "2", "--room-live-per-user-per-second", "1"],
        "ul-room",
    );
    let (ok, secs) = live_frames(&mut ca, "ul-room", 12);
    assert!(ok >= 5 && ok <= 5 + secs.div_ceil(2), "{ok} OK in {secs} s");
    for _ in 0..ok {
        assert!(next(&mut cb, "b").ephemeral);
    }
    nothing(&mut cb, "b: a refused frame reached no one");
    // The other member's share is its own, and the room's budget is not spent.
    for i in 0..5u8 {
        cb.send_ephemeral_wait(Target::Room("ul-room"), &[i])
            .unwrap_or_else(|e| panic!("b's frame {i}: {e}"));
        assert!(next(&mut ca, "a").ephemeral);
    }
    // Ordinary messages are not counted against it.
    ca.send_room_wait("ul-room", b"kept").unwrap();
    assert_eq!(&next(&mut cb, "b").payload[..], b"kept");
}

/// A live-only frame counts once a session or member per KiB of its payload: big
/// ephemeral payloads spend a budget as fast as they cost to write. (One sender's loop of
/// 1 MB ephemeral messages to 32 devices of a user was 3 GB a second for the shard.)
#[test]
fn big_live_frames_spend_the_budgets_by_the_kib() {
    const KIB: usize = 1024;
    // a's share: 100 a second, 1 000 saved up. A 100-KiB frame to b's one session costs
    // 100: 10 of them, then one a second; one of 1 KiB would have cost 1.
    let r = RouterProc::start(&["--shards", "2", "--direct-live-per-user-per-second", "100"]);
    let u = users_on_shards("lk", 2);
    let (a, b) = (&u[0], &u[1]);
    let mut cb = r.client(b);
    let mut ca = r.client(a);
    let big = vec![5u8; 100 * KIB];
    let t = std::time::Instant::now();
    for i in 0..16 {
        ca.send_ephemeral_wait(Target::User(b), &big)
            .unwrap_or_else(|e| panic!("frame {i}: {e}"));
    }
    let most = 10 + t.elapsed().as_secs() + 1;
    let mut got = 0;
    while let Some(m) = cb.recv(Some(SHORT)).unwrap() {
        assert!(m.ephemeral && m.payload.len() == big.len());
        got += 1;
    }
    assert!((10..=most).contains(&got), "{got} of 16 100-KiB frames");
    // The copies of a's 100-KiB direct messages for its other device cost 100 each too,
    // from its own budget on its home shard: 10, then one a second; the messages all go.
    let mut a2 = r.device(a, "two");
    let t = std::time::Instant::now();
    for _ in 0..14 {
        ca.send_wait(b, &big).unwrap();
    }
    let most = 10 + t.elapsed().as_secs() + 1;
    let mut copies = 0;
    while let Some(m) = a2.recv(Some(SHORT)).unwrap() {
        assert!(m.outgoing, "{m:?}");
        copies += 1;
    }
    assert!((10..=most).contains(&copies), "{copies} copies of 14");
    for _ in 0..14 {
        assert_eq!(next(&mut cb, "b").payload.len(), big.len());
    }
    // In a room of two: 2 x 100 a frame from a's 1 000 saved up (the room's budget, the
    // default, is far from spent).
    let (_r, mut ca, mut cb) = room_of_two(
        &["--shards", "2", "--room-live-per-user-per-second", "100"],
        "lk-room",
    );
    let t = std::time::Instant::now();
    let mut ok = 0u64;
    for _ in 0..10 {
        match ca.send_ephemeral_wait(Target::Room("lk-room"), &big) {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Some(Status::RateLimited) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let secs = t.elapsed().as_secs();
    assert!(ok >= 5 && ok <= 5 + secs.div_ceil(2), "{ok} OK in {secs} s");
    for _ in 0..ok {
        assert!(next(&mut cb, "b").ephemeral);
    }
    nothing(&mut cb, "b: a refused frame reached no one");
}

/// A user's typing indicators and read receipts to another user spend its direct live
/// deliveries on the recipient's shard (`--direct-live-per-user-per-second`, ten
/// seconds' worth saved up), one per session reached: past them a frame reaches no one
/// (its sender was told OK: best-effort). Unpaced, one client's loop to a user with 63
/// devices held everyone on that user's shard 1-2.7 s. Others' budgets are their own,
/// and direct messages are not counted.
#[test]
fn a_users_direct_live_frames_stop_past_its_share() {
    let r = RouterProc::start(&["--shards", "2", "--direct-live-per-user-per-second", "1"]);
    let u = users_on_shards("dl", 2);
    let (a, b) = (&u[0], &u[1]);
    let mut devices = [r.device(b, "one"), r.device(b, "two")];
    let mut ca = r.client(a);
    // Two sessions: each frame costs 2 of a's 10 saved up (1 a second).
    let t = std::time::Instant::now();
    for i in 0..12u8 {
        ca.send_ephemeral_wait(Target::User(b), &[i])
            .unwrap_or_else(|e| panic!("frame {i}: {e}"));
    }
    let most = 5 + t.elapsed().as_secs().div_ceil(2);
    for (i, d) in devices.iter_mut().enumerate() {
        let mut got = 0;
        while let Some(m) = d.recv(Some(SHORT)).unwrap() {
            assert!(m.ephemeral, "{m:?}");
            got += 1;
        }
        assert!((5..=most).contains(&got), "device {i}: {got} of 12");
    }
    std::thread::sleep(SHORT);
    let refused = crate::bounds::metric_sum(&r.metrics(), "ringrouter_direct_live_refused_total");
    assert!(refused >= 12.0 - most as f64, "{refused} refused");
    // Another user's frames, and a's direct messages, still reach both devices.
    let mut cc = r.client("dl-other");
    cc.send_ephemeral_wait(Target::User(b), b"c").unwrap();
    ca.send_wait(b, b"kept").unwrap();
    for d in devices.iter_mut() {
        assert_eq!(&next(d, "b").payload[..], b"c");
        assert_eq!(&next(d, "b").payload[..], b"kept");
    }
    // The copies of a's direct messages for its other devices come from its own budget
    // on its home shard (10 there, 1 a second): the messages all go, the copies stop.
    let mut a2 = r.device(a, "two");
    let t = std::time::Instant::now();
    for i in 0..14u8 {
        ca.send_wait(b, &[i]).unwrap();
    }
    let most = 10 + t.elapsed().as_secs();
    let mut copies = 0;
    while let Some(m) = a2.recv(Some(SHORT)).unwrap() {
        assert!(m.outgoing, "{m:?}");
        copies += 1;
    }
    assert!((10..=most).contains(&copies), "{copies} copies of 14");
    for d in devices.iter_mut() {
        for i in 0..14u8 {
            assert_eq!(&next(d, "b").payload[..], &[i]);
        }
    }
}

#[test]
fn ephemeral_never_grows_a_queue_past_its_bound() {
    // bob reads nothing (a small receive buffer): once his outbound queue is over
    // --max-pending-bytes, ephemeral messages for him are dropped, not queued, and
    // their sender is never paused: every send is answered at once.
    const PENDING: usize = 256 * 1024;
    const SIZE: usize = 16 * 1024;
    const N: usize = 400; // 6.4 MiB
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--max-pending-bytes",
        "256KiB",
        "--slow-consumer-timeout",
        "60s",
    ]);
    let mut bob = Raw::from_stream(connect_small_rcvbuf(r.connect_addr(), 8 * 1024));
    assert_eq!(bob.login("eb-bob").status, Status::Ok as i32);
    let mut carol = r.client("eb-carol");
    let payload = vec![7u8; SIZE];
    for i in 0..N {
        carol
            .send_ephemeral_wait(Target::User("eb-bob"), &payload)
            .unwrap_or_else(|e| panic!("ephemeral {i}: {e}"));
    }
    // What reached bob: at most the bound plus what the kernel buffers held.
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20);
    let mut got = 0;
    while let Ok(f) = bob.next(Duration::from_secs(1)) {
        if let Some(server_frame::Kind::Deliver(d)) = f.kind {
            assert!(d.ephemeral && d.seq == 0);
            got += 1;
        }
    }
    let bound = PENDING + wmem_max + 64 * 1024;
    assert!(
        got * SIZE <= bound && got < N,
        "bob got {got} of {N} ephemeral messages ({} bytes; bound {bound})",
        got * SIZE
    );
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

// ------------------------------------------------------------------- rooms

/// The next event or message of `c`, as a short string ("joined room user",
/// "msg payload").
fn next_item(c: &mut Client, who: &str) -> String {
    match c.next_event(Some(T)) {
        Ok(Some(Event::Room {
            kind, room, user, ..
        })) => format!("{kind} {room} {user}"),
        Ok(Some(Event::Message(m))) => format!("msg {}", String::from_utf8_lossy(&m.payload)),
        other => panic!("{who}: expected an event or a message, got {other:?}"),
    }
}

#[test]
fn room_info_and_create_with_members() {
    let r = RouterProc::start(&["--shards", "2", "--max-members-per-room", "4"]);
    for u in ["ri-bob", "ri-carol", "ri-dave", "ri-erin"] {
        r.visit(u);
    }
    let mut a = r.client("ri-alice");
    let mut b = r.client("ri-bob");
    let code = a
        .create_room_with(
            "ri-room",
            None,
            &["ri-bob", "ri-carol", "ri-bob", "ri-alice"],
        )
        .expect("create with members");
    assert_eq!(next_item(&mut b, "bob"), "joined ri-room ri-bob");
    let info = a.room_info("ri-room").expect("info");
    assert_eq!(info.name, "ri-room");
    assert_eq!(info.owner, "ri-alice");
    assert_eq!(info.members, ["ri-alice", "ri-bob", "ri-carol"]);
    let now = ringrouter::shard::now_us();
    assert!(info.created_us > now - 60_000_000 && info.created_us <= now);
    assert_eq!(
        info.join_code.as_deref(),
        Some(code.as_str()),
        "the owner gets the code"
    );
    let info_b = b.room_info("ri-room").expect("info as a member");
    assert_eq!(info_b.join_code, None, "a member does not get the code");
    assert_eq!(info_b.members, info.members);
    let mut stranger = r.client("ri-stranger");
    let e = stranger.room_info("ri-room").unwrap_err();
    assert_eq!(e.code(), Some(Status::Forbidden));
    let e = a.room_info("ri-nothing").unwrap_err();
    assert_eq!(e.code(), Some(Status::NotFound));
    // Unknown initial member: NOT_FOUND, nothing created.
    let e = a
        .create_room_with("ri-room2", None, &["ri-bob", "nobody-ever"])
        .unwrap_err();
    assert_eq!(e.code(), Some(Status::NotFound));
    assert_eq!(
        a.room_info("ri-room2").unwrap_err().code(),
        Some(Status::NotFound)
    );
    // Past --max-members-per-room (4, the owner included): refused.
    let e = a
        .create_room_with(
            "ri-room3",
            None,
            &["ri-bob", "ri-carol", "ri-dave", "ri-erin"],
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(Status::BadRequest), "{e}");
    // More names listed than a room holds, even the same one: refused as listed (not
    // sorted and deduplicated first: a frame may carry 500 000 names).
    let e = a
        .create_room_with("ri-room3", None, &["ri-bob"; 5])
        .unwrap_err();
    assert_eq!(e.code(), Some(Status::BadRequest), "{e}");
    a.create_room_with("ri-room3", None, &["ri-bob", "ri-carol", "ri-dave"])
        .expect("at the limit");
}

/// A room created with hundreds of initial members (checked a batch of 256 per store
/// request): every member is checked, in order, and the first that cannot join (no
/// account; already added by others to `--max-rooms-per-user` rooms) refuses the whole
/// room, named.
#[test]
fn many_initial_members_are_each_checked() {
    let r = RouterProc::start(&[
        "--max-rooms-per-user",
        "2",
        "--max-member-adds-per-minute",
        "10000",
    ]);
    let names: Vec<String> = (0..600).map(|i| format!("im-{i:03}")).collect();
    for n in &names {
        r.visit(n);
    }
    let mut a = r.client("im-owner");
    r.visit("im-full");
    let mut adder = r.client("im-adder");
    adder.create_room_with("im-f1", None, &["im-full"]).unwrap();
    adder.create_room_with("im-f2", None, &["im-full"]).unwrap();
    let with = |extra: &'static str, at: usize| {
        let mut v: Vec<&str> = names.iter().map(String::as_str).collect();
        v.insert(at, extra);
        v
    };
    // An unknown name late in the list.
    let e = a
        .create_room_with("im-room", None, &with("im-nobody", 550))
        .unwrap_err();
    assert_eq!(e.code(), Some(Status::NotFound), "{e}");
    assert!(e.to_string().contains("im-nobody"), "{e}");
    // A member at its room limit.
    let e = a
        .create_room_with("im-room", None, &with("im-full", 300))
        .unwrap_err();
    assert_eq!(e.code(), Some(Status::RateLimited), "{e}");
    assert!(
        e.to_string().contains("im-full was added to 2 rooms"),
        "{e}"
    );
    assert_eq!(
        a.room_info("im-room").unwrap_err().code(),
        Some(Status::NotFound),
        "nothing created"
    );
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    a.create_room_with("im-room", None, &all).unwrap();
    assert_eq!(a.room_info("im-room").unwrap().members.len(), 601);
}

#[test]
fn room_add_policy() {
    for (policy, member_may_add) in [("owner", false), ("members", true)] {
        let r = RouterProc::start(&["--room-add-policy", policy]);
        r.visit("rp-carol");
        let mut a = r.client("rp-alice");
        let mut b = r.client("rp-bob");
        let mut s = r.client("rp-stranger");
        a.create_room_with("rp", None, &["rp-bob"]).unwrap();
        let got = b.add_member("rp", "rp-carol");
        if member_may_add {
            got.expect("a member adds under --room-add-policy members");
            let info = a.room_info("rp").unwrap();
            assert_eq!(info.members, ["rp-alice", "rp-bob", "rp-carol"]);
        } else {
            assert_eq!(got.unwrap_err().code(), Some(Status::Forbidden));
        }
        let e = s.add_member("rp", "rp-carol").unwrap_err();
        assert_eq!(e.code(), Some(Status::Forbidden), "{policy}: a stranger");
    }
}

fn room_events_wait_for_offline_members(driver: Driver) {
    let r = RouterProc::start_with(&["--shards", "2"], driver);
    let u = users_on_shards("rev", 2);
    let (owner, carol) = (&u[0], &u[1]);
    r.visit(carol);
    r.visit("rev-bob");
    let mut a = r.client(owner);
    let mut bob = r.client("rev-bob");
    a.create_room_with("rev-room", None, &[carol, "rev-bob"])
        .unwrap();
    a.send_room_wait("rev-room", b"m1").unwrap();
    bob.leave_room("rev-room").unwrap();
    a.delete_room("rev-room").unwrap();
    // carol was offline all along: what concerns her, in order, at her login (bob's
    // leave reached live members only).
    let mut c = r.client(carol);
    let want = [
        format!("joined rev-room {carol}"),
        "msg m1".to_owned(),
        format!("deleted rev-room {owner}"),
    ];
    for w in &want {
        assert_eq!(&next_item(&mut c, "carol"), w);
    }
    c.ack_all().unwrap();
    c.ping().unwrap();
    drop(c);
    // Acked: not delivered again.
    let mut c = r.client(carol);
    if let Some(ev) = c.next_event(Some(SHORT)).unwrap() {
        panic!("carol got {ev:?} again");
    }
}

#[test]
fn room_events_wait_for_offline_members_io_uring() {
    room_events_wait_for_offline_members(Driver::Default);
}

#[test]
fn room_events_wait_for_offline_members_epoll() {
    room_events_wait_for_offline_members(Driver::Legacy);
}

// ------------------------------------------------------------------ receipts

/// The next receipt of `c` (messages and room events on the way are skipped).
fn next_receipt(c: &mut Client, who: &str) -> Receipt {
    loop {
        match c.next_event(Some(T)) {
            Ok(Some(Event::Receipt(r))) => return r,
            Ok(Some(Event::Message(_) | Event::Room { .. })) => {}
            other => panic!("{who}: expected a receipt, got {other:?}"),
        }
    }
}

/// Nothing but messages and room events for a short while.
fn no_receipt(c: &mut Client, who: &str) {
    while let Some(ev) = c.next_event(Some(SHORT)).unwrap() {
        assert!(!matches!(ev, Event::Receipt(_)), "{who}: unexpected {ev:?}");
    }
}

/// The copies of a user's read receipts for its other devices come from its direct live
/// deliveries (`--direct-live-per-user-per-second`), one per device: past them the other
/// devices miss the receipt; the peer still gets each (from its own count on its shard).
#[test]
fn own_device_receipts_stop_past_the_users_share() {
    let r = RouterProc::start(&["--shards", "2", "--direct-live-per-user-per-second", "1"]);
    let u = users_on_shards("orr", 2);
    let (a, b) = (&u[0], &u[1]);
    let mut phone = r.device(a, "phone");
    let mut others = [r.device(a, "laptop"), r.device(a, "tablet")];
    let mut cb = r.client(b);
    let id = cb.send_wait(a, b"read me").unwrap();
    // Two other devices: each receipt's copies cost 2 of a's 10 saved up (1 a second).
    let t = std::time::Instant::now();
    for _ in 0..8 {
        phone.mark_read(Target::User(b), id).expect("mark_read");
    }
    let most = 5 + t.elapsed().as_secs().div_ceil(2) as usize;
    for (i, d) in others.iter_mut().enumerate() {
        let mut got = 0;
        while let Some(ev) = d.next_event(Some(SHORT)).unwrap() {
            if matches!(ev, Event::Receipt(_)) {
                got += 1;
            }
        }
        assert!((5..=most).contains(&got), "device {i}: {got} of 8");
    }
    // The peer's receipts are from a's count on the peer's shard, 10 there: 8 receipts
    // to one session all arrive.
    for _ in 0..8 {
        next_receipt(&mut cb, "b");
    }
}

fn read_receipts(driver: Driver) {
    let r = RouterProc::start_with(&["--shards", "2"], driver);
    let u = users_on_shards("rr", 2);
    let (a, b) = (&u[0], &u[1]);
    let mut phone = r.device(a, "phone");
    let mut laptop = r.device(a, "laptop");
    let mut cb = r.client(b);
    let id = cb.send_wait(a, b"read me").unwrap();
    // Direct: alice's phone reads bob's message.
    phone.mark_read(Target::User(b), id).expect("mark_read");
    let rb = next_receipt(&mut cb, "bob");
    assert_eq!(
        rb,
        Receipt {
            user: a.clone(),
            room: None,
            to_user: Some(b.clone()),
            msg_id: id
        }
    );
    // The reader's other device learns it too, so unread counts agree.
    assert_eq!(next_receipt(&mut laptop, "laptop"), rb);
    no_receipt(&mut phone, "phone (the reading device)");
    // A room: every member's live sessions, the reading device excepted.
    cb.create_room_with("rr-room", None, &[a]).unwrap();
    let mid = cb.send_room_wait("rr-room", b"room msg").unwrap();
    laptop.mark_read(Target::Room("rr-room"), mid).unwrap();
    let want = Receipt {
        user: a.clone(),
        room: Some("rr-room".into()),
        to_user: None,
        msg_id: mid,
    };
    assert_eq!(next_receipt(&mut cb, "bob"), want);
    assert_eq!(next_receipt(&mut phone, "phone"), want);
    no_receipt(&mut laptop, "laptop (the reading device)");
    let mut s = r.client("rr-stranger");
    let e = s.mark_read(Target::Room("rr-room"), mid).unwrap_err();
    assert_eq!(e.code(), Some(Status::Forbidden));
    let e = s.mark_read(Target::User(b), 0).unwrap_err();
    assert_eq!(e.code(), Some(Status::BadRequest));
}

#[test]
fn read_receipts_io_uring() {
    read_receipts(Driver::Default);
}

#[test]
fn read_receipts_epoll() {
    read_receipts(Driver::Legacy);
}

// ---------------------------------------------------------------- benchmarks

/// CPU seconds (user + system) the process `pid` used so far.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// Benchmark row of issue 11: read receipts in a 1 000-member room. One member marks
/// the room read `K` times; every other member's session gets each receipt. Prints
/// receipts delivered per second and router CPU per receipt. Run against a release
/// router:
/// `CARGO_BIN_EXE_ringrouter-blackbox=target/release/ringrouter cargo test -p ringrouter-tests --test it social::bench_receipts -- --ignored --nocapture`
#[test]
#[ignore = "benchmark"]
fn bench_receipts_in_a_1000_member_room() {
    use ringrouter_proto::v1::{client_frame::Kind, CreateRoom, MarkRead};
    const MEMBERS: usize = 1000;
    const K: u64 = 200;
    let r = RouterProc::start(&["--shards", "2"]);
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("bm{i}")).collect();
    let mut conns: Vec<_> = names.iter().map(|n| r.raw_login(n)).collect();
    conns[0].send(Kind::CreateRoom(CreateRoom {
        request_id: 1,
        name: "bench-room".into(),
        members: names[1..].to_vec(),
        ..Default::default()
    }));
    let res = conns[0].next_non_ping(T);
    assert!(
        matches!(res, server_frame::Kind::RoomResult(ref x) if x.status == Status::Ok as i32),
        "{res:?}"
    );
    // Every member's joined event first.
    for c in conns.iter_mut().skip(1) {
        let _ = c.next_non_ping(T);
    }
    let cpu0 = cpu_s(r.pid());
    let t0 = std::time::Instant::now();
    for k in 1..=K {
        conns[1].send(Kind::MarkRead(MarkRead {
            room: "bench-room".into(),
            msg_id: k,
            ..Default::default()
        }));
    }
    let mut got = 0u64;
    for (i, c) in conns.iter_mut().enumerate() {
        if i == 1 {
            continue;
        }
        for _ in 0..K {
            match c.next_non_ping(T) {
                server_frame::Kind::Receipt(_) => got += 1,
                other => panic!("member {i}: {other:?}"),
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_s(r.pid()) - cpu0;
    println!(
        "receipts in a {MEMBERS}-member room: {got} receipts in {secs:.3} s = {:.0}/s; router CPU {cpu:.2} s = {:.2} µs/receipt (2 shards; load generator on the same 2 cores)",
        got as f64 / secs,
        cpu * 1e6 / got as f64
    );
}
