//! Bad input: each case gets a clear Error (code and reason), only the offending
//! connection is affected, and an unrelated pair keeps exchanging messages after
//! every case.
//!
//! Frame-level errors (the bytes are not frames: BAD_FRAME) close the connection;
//! request-level errors (a well-formed frame with bad content) leave it usable.

use ringrouter_client::{ClientError, Status};
use ringrouter_proto::v1::{client_frame, server_frame, Ack, History, Login, Ping, Register};
use ringrouter_tests::{assert_error, cfg, send_frame_bytes, wire, Pair, Raw, RouterProc, T};

const MAX_FRAME: usize = 64 * 1024;
const MAX_PAYLOAD: usize = 1024;

fn setup(name: &str) -> (RouterProc, Pair) {
    let r = RouterProc::start(&[
        "--shards",
        "2",
        "--max-frame-bytes",
        "64k",
        "--max-payload-bytes",
        "1k",
    ]);
    let mut pair = Pair::new(&r, &format!("{name}-pair"), 2);
    pair.exchange("before");
    (r, pair)
}

/// A connection in the state a case starts from.
fn conn(r: &RouterProc, logged_in: bool, user: &str) -> Raw {
    if logged_in {
        r.raw_login(user)
    } else {
        r.raw()
    }
}

/// The router answers BAD_FRAME, then closes the connection.
fn expect_bad_frame_and_close(c: &mut Raw, case: &str) {
    expect_error_and_close(c, Status::BadFrame, case);
}

/// The router answers an Error with `code`, then closes the connection.
fn expect_error_and_close(c: &mut Raw, code: Status, case: &str) {
    let e = c.expect_error(T);
    assert_error(&e, code);
    eprintln!("{case}: {:?}", e.reason);
    let rest = c.read_until_closed(T);
    assert!(
        rest.is_empty(),
        "{case}: frames after the {} error: {rest:?}",
        code.short_name()
    );
}

/// The connection still works: a Ping is answered.
fn expect_usable(c: &mut Raw, case: &str) {
    c.send(client_frame::Kind::Ping(Ping { nonce: 4711 }));
    match c.next_kind(T) {
        server_frame::Kind::Pong(p) => assert_eq!(p.nonce, 4711, "{case}"),
        other => panic!("{case}: expected Pong, got {other:?}"),
    }
}

#[test]
fn oversized_length_prefix_is_too_large_and_closes() {
    let (r, mut pair) = setup("big");
    for logged_in in [false, true] {
        let case = format!("oversized prefix, logged in: {logged_in}");
        let mut c = conn(&r, logged_in, "big-victim");
        let bytes = wire::length_prefix(MAX_FRAME as u64 + 1);
        // The body never comes: the prefix alone must be refused, as too large (before
        // login the bound is --max-prelogin-frame-bytes, 16 KiB; after, --max-frame-bytes).
        c.write(&bytes).expect("write");
        expect_error_and_close(&mut c, Status::TooLarge, &case);
        pair.exchange(&case);

        // A length prefix that is not even a valid varint (11 bytes of 0xFF).
        let case = format!("overlong varint, logged in: {logged_in}");
        let mut c = conn(&r, logged_in, "big-victim");
        c.write(&[0xFF; 11]).expect("write");
        expect_bad_frame_and_close(&mut c, &case);
        pair.exchange(&case);
    }
    // The user whose connection was cut can log in again.
    let mut again = r.raw_login("big-victim");
    expect_usable(&mut again, "after the cut");
}

#[test]
fn truncated_frame_then_close_is_bad_frame() {
    let (r, mut pair) = setup("trunc");
    for logged_in in [false, true] {
        // A frame announcing 100 bytes, 10 sent, then the client half-closes.
        let case = format!("truncated body, logged in: {logged_in}");
        let mut c = conn(&r, logged_in, "trunc-victim");
        let mut bytes = vec![100u8];
        bytes.extend_from_slice(&[0x12; 10]);
        c.write(&bytes).expect("write");
        c.shutdown_write();
        expect_bad_frame_and_close(&mut c, &case);
        pair.exchange(&case);

        // A length prefix cut in the middle of its varint.
        let case = format!("truncated length prefix, logged in: {logged_in}");
        let mut c = conn(&r, logged_in, "trunc-victim");
        c.write(&[0x80, 0x80]).expect("write");
        c.shutdown_write();
        expect_bad_frame_and_close(&mut c, &case);
        pair.exchange(&case);
    }
    // A clean half-close between frames is not an error.
    let mut c = r.raw_login("trunc-clean");
    c.shutdown_write();
    let frames = c.read_until_closed(T);
    assert!(frames.is_empty(), "clean close answered with {frames:?}");
    pair.exchange("clean close");
}

#[test]
fn garbage_bytes_are_bad_frame_and_close() {
    let (r, mut pair) = setup("garbage");
    let bodies: [(&str, Vec<u8>); 4] = [
        // field 1 (login), LEN 200, but only 2 bytes follow.
        ("field longer than the frame", vec![0x0A, 0xC8, 0x01, 1, 2]),
        ("unterminated varint key", vec![0xFF; 8]),
        ("wire type 7", vec![(1 << 3) | 7, 0]),
        (
            // A Send whose to_user is not UTF-8.
            "send with invalid UTF-8",
            {
                let mut inner = vec![(2 << 3) | 2, 2, 0xFF, 0xFE, (4 << 3) | 2, 1, b'x'];
                let mut b = vec![(2 << 3) | 2, inner.len() as u8];
                b.append(&mut inner);
                b
            },
        ),
    ];
    for logged_in in [false, true] {
        for (what, body) in &bodies {
            let case = format!("{what}, logged in: {logged_in}");
            let mut c = conn(&r, logged_in, "garbage-victim");
            c.send_body(body);
            expect_bad_frame_and_close(&mut c, &case);
            pair.exchange(&case);
        }
    }
}

#[test]
fn unknown_frame_kind_is_bad_request_and_connection_stays_usable() {
    let (r, mut pair) = setup("unknown");
    let mut c = r.raw_login("unknown-user");
    use wire::{key, I32, LEN, VARINT};
    let cases: [(&str, Vec<u8>); 5] = [
        (
            "field 50, LEN",
            [key(50, LEN), vec![3, b'a', b'b', b'c']].concat(),
        ),
        ("field 50, varint", [key(50, VARINT), vec![1]].concat()),
        (
            "field 1000, fixed32",
            [key(1000, I32), vec![1, 2, 3, 4]].concat(),
        ),
        ("reserved field 39", [key(39, LEN), vec![0]].concat()),
        ("empty frame", vec![]),
    ];
    for (case, body) in cases {
        c.send_body(&body);
        let e = c.expect_error(T);
        assert_error(&e, Status::BadRequest);
        expect_usable(&mut c, case);
        pair.exchange(case);
    }
    // Still a working session: it can send to the pair.
    sends_to_pair(&mut c, &mut pair, b"still here", 1, "unknown-user");
}

#[test]
fn second_login_is_bad_request_and_connection_stays_usable() {
    let (r, mut pair) = setup("relogin");
    let mut c = r.client_with(cfg("relogin-user")).expect("login");
    let err = c.login().expect_err("a second Login must be refused");
    assert_eq!(err.code(), Some(Status::BadRequest), "{err}");
    pair.exchange("second login");
    // Same identity, same session.
    let to = pair.a.user().to_owned();
    c.send_wait(&to, b"after relogin")
        .expect("send after the refused relogin");
    let m = pair.a.recv(Some(T)).expect("recv").expect("message");
    assert_eq!(m.sender, "relogin-user");
}

#[test]
fn send_to_empty_user_is_bad_request() {
    let (r, mut pair) = setup("empty");
    let mut c = r.client_with(cfg("empty-sender")).expect("login");
    // With a SendResult requested.
    let err = c.send_wait("", b"to nobody").expect_err("empty to_user");
    assert_eq!(err.code(), Some(Status::BadRequest), "{err}");
    pair.exchange("empty user, send_wait");
    // Fire and forget: an Error frame echoing the request id.
    let mut raw = r.raw_login("empty-raw");
    raw.write(&send_frame_bytes("", b"to nobody", false, 31))
        .expect("write");
    let e = raw.expect_error(T);
    assert_error(&e, Status::BadRequest);
    assert_eq!(e.request_id, 31);
    expect_usable(&mut raw, "empty user, fire and forget");
    pair.exchange("empty user, fire and forget");
    let to = pair.b.user().to_owned();
    c.send_wait(&to, b"ok").expect("usable after the refusal");
    assert!(pair.b.recv(Some(T)).expect("recv").is_some());
}

#[test]
fn payload_over_the_limit_is_too_large_and_connection_stays_usable() {
    let (r, mut pair) = setup("large");
    let to = pair.b.user().to_owned();
    let mut c = r.client_with(cfg("large-sender")).expect("login");
    let err = c
        .send_wait(&to, &vec![7u8; MAX_PAYLOAD + 1])
        .expect_err("payload over --max-payload-bytes");
    assert_eq!(err.code(), Some(Status::TooLarge), "{err}");
    pair.exchange("too large, send_wait");
    // Fire and forget: an Error frame.
    c.send(&to, &vec![7u8; 4 * MAX_PAYLOAD]).expect("write");
    match c.recv(Some(T)) {
        Err(ClientError::Router { code, reason, .. }) => {
            assert_eq!(code, Status::TooLarge, "{reason}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected TOO_LARGE, got {other:?}"),
    }
    pair.exchange("too large, fire and forget");
    // Exactly the limit is fine, and nothing of the refused ones was delivered.
    c.send_wait(&to, &vec![8u8; MAX_PAYLOAD])
        .expect("a payload at the limit");
    let m = pair.b.recv(Some(T)).expect("recv").expect("message");
    assert_eq!(m.sender, "large-sender");
    assert_eq!(&m.payload[..], &vec![8u8; MAX_PAYLOAD][..]);
}

#[test]
fn send_or_ack_before_login_is_unauthorized() {
    let (r, mut pair) = setup("early");
    let to = pair.b.user().to_owned();
    let mut c = r.raw();
    c.write(&send_frame_bytes(&to, b"before login", true, 9))
        .expect("write");
    let e = c.expect_error(T);
    assert_error(&e, Status::Unauthorized);
    assert_eq!(e.request_id, 9);
    c.send(client_frame::Kind::Ack(Ack { up_to_seq: 1 }));
    assert_error(&c.expect_error(T), Status::Unauthorized);
    // Nothing was delivered: the pair's next message is the pair's own.
    pair.exchange("send and ack before login");
    // The connection can still log in and then send.
    let lr = c.login("early-bird");
    assert_eq!(lr.status, Status::Ok as i32, "{lr:?}");
    sends_to_pair(&mut c, &mut pair, b"after login", 10, "early-bird");
}

/// `c` sends `payload` to the pair's receiver with a SendResult, gets OK, and
/// the receiver sees it from `sender`.
fn sends_to_pair(c: &mut Raw, pair: &mut Pair, payload: &[u8], request_id: u64, sender: &str) {
    let to = pair.b.user().to_owned();
    c.write(&send_frame_bytes(&to, payload, true, request_id))
        .expect("write");
    match c.next_kind(T) {
        server_frame::Kind::SendResult(res) => assert_eq!(res.status, Status::Ok as i32),
        other => panic!("expected a SendResult, got {other:?}"),
    }
    let m = pair.b.recv(Some(T)).expect("recv").expect("message");
    assert_eq!((&m.payload[..], m.sender.as_str()), (payload, sender));
}

#[test]
fn ping_before_login_is_answered() {
    let (r, mut pair) = setup("ping");
    let mut c = r.raw();
    c.send(client_frame::Kind::Ping(Ping { nonce: 99 }));
    match c.next_kind(T) {
        server_frame::Kind::Pong(p) => assert_eq!(p.nonce, 99),
        other => panic!("expected Pong, got {other:?}"),
    }
    pair.exchange("ping before login");
    let lr = c.login_with(Login {
        request_id: 5,
        user: "pinger".into(),
        ..Default::default()
    });
    assert_eq!((lr.status, lr.request_id), (Status::Ok as i32, 5), "{lr:?}");
}

#[test]
fn ack_beyond_last_delivered_seq_is_bad_request() {
    let (r, mut pair) = setup("ack");
    let mut c = r.raw_login("acker");
    for i in 0..2u8 {
        pair.a.send_wait("acker", &[i]).expect("send to acker");
    }
    for i in 1..=2u64 {
        match c.next_kind(T) {
            server_frame::Kind::Deliver(d) => assert_eq!(d.seq, i),
            other => panic!("expected a Deliver, got {other:?}"),
        }
    }
    // Acking what was delivered is fine (no answer: the Ping's Pong comes next).
    c.send(client_frame::Kind::Ack(Ack { up_to_seq: 2 }));
    expect_usable(&mut c, "ack of the last delivered seq");
    // Beyond it is refused, with a reason.
    c.send(client_frame::Kind::Ack(Ack { up_to_seq: 3 }));
    let e = c.expect_error(T);
    assert_error(&e, Status::BadRequest);
    expect_usable(&mut c, "ack beyond");
    pair.exchange("ack beyond");
    // The session still receives, with seq going on at 3.
    pair.a.send_wait("acker", b"more").expect("send to acker");
    match c.next_kind(T) {
        server_frame::Kind::Deliver(d) => assert_eq!((d.seq, &d.payload[..]), (3, &b"more"[..])),
        other => panic!("expected a Deliver, got {other:?}"),
    }
}

#[test]
fn register_after_login_and_history_without_a_conversation_say_why() {
    let (r, mut pair) = setup("reasons");
    let mut c = r.raw_login("reasons-user");
    // Register on a logged-in connection: an Error that says it is logged in.
    c.send(client_frame::Kind::Register(Register {
        request_id: 41,
        user: "reasons-other".into(),
        password: "correct horse".into(),
    }));
    let e = c.expect_error(T);
    assert_error(&e, Status::BadRequest);
    assert_eq!(e.request_id, 41);
    assert!(e.reason.contains("logged in already"), "{:?}", e.reason);
    expect_usable(&mut c, "register after login");
    // History naming neither a user nor a room, or both: each reason says which.
    for (case, user, room, want) in [
        ("neither", "", "", "set user or room"),
        ("both", "someone", "some-room", "set user or room, not both"),
    ] {
        c.send(client_frame::Kind::History(History {
            request_id: 42,
            user: user.into(),
            room: room.into(),
            ..Default::default()
        }));
        match c.next_kind(T) {
            server_frame::Kind::HistoryResult(h) => {
                assert_eq!(h.status, Status::BadRequest as i32, "{case}: {h:?}");
                assert_eq!(h.reason, want, "{case}");
            }
            other => panic!("{case}: expected a HistoryResult, got {other:?}"),
        }
        expect_usable(&mut c, case);
    }
    pair.exchange("reasons");
}
