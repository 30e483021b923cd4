//! Regression tests from the review of offline delivery, rooms and accounts: the pre-login loop.
//!
//! Each test's comment describes the bug it was written against; all of them are fixed.

use ringrouter_client::Status;
use ringrouter_proto::v1::{
    client_frame::Kind as C, server_frame::Kind as S, Login, Ping, Register,
};
use ringrouter_tests::{client_frame_bytes, RouterProc};
use std::time::Duration;

/// Register followed by Login in one write: after handling Register, `serve` falls
/// through to a socket read instead of parsing what is already buffered, so the
/// pipelined Login sits there until more bytes come (or the login timeout fires).
#[test]
fn review_register_then_pipelined_login() {
    let r = RouterProc::start(&["--auth", "accounts", "--login-timeout", "4s"]);
    let mut c = r.raw();
    let mut bytes = client_frame_bytes(C::Register(Register {
        request_id: 1,
        user: "pipe".into(),
        password: "pw".into(),
    }));
    bytes.extend(client_frame_bytes(C::Login(Login {
        request_id: 2,
        user: "pipe".into(),
        password: "pw".into(),
        device: "d".into(),
        ..Default::default()
    })));
    c.write(&bytes).unwrap();
    match c.next_kind(Duration::from_secs(2)) {
        S::AccountResult(a) => assert_eq!(a.status, Status::Ok as i32, "{a:?}"),
        other => panic!("expected AccountResult, got {other:?}"),
    }
    match c.next(Duration::from_secs(2)) {
        Ok(f) => match f.kind {
            Some(S::LoginResult(l)) => assert_eq!(l.status, Status::Ok as i32, "{l:?}"),
            other => panic!("expected LoginResult, got {other:?}"),
        },
        Err(e) => panic!("no LoginResult for the pipelined Login within 2 s: {e:?}"),
    }
}

/// Same with a Ping after Register: no Pong until the client sends more.
#[test]
fn review_register_then_pipelined_ping() {
    let r = RouterProc::start(&["--auth", "accounts"]);
    let mut c = r.raw();
    let mut bytes = client_frame_bytes(C::Register(Register {
        request_id: 1,
        user: "pipe2".into(),
        password: "pw".into(),
    }));
    bytes.extend(client_frame_bytes(C::Ping(Ping { nonce: 5 })));
    c.write(&bytes).unwrap();
    assert!(matches!(
        c.next_kind(Duration::from_secs(2)),
        S::AccountResult(_)
    ));
    match c.next(Duration::from_secs(2)) {
        Ok(f) => assert!(matches!(f.kind, Some(S::Pong(_))), "{f:?}"),
        Err(e) => panic!("no Pong for the pipelined Ping within 2 s: {e:?}"),
    }
}
