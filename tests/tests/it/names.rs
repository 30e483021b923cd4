//! One name rule for every name field (README "Names"): 1 to 64 bytes of UTF-8, no
//! control, format, line or paragraph separator characters, no whitespace at either
//! end (inside is fine: "Ann's phone"). A bad name
//! is BAD_REQUEST whose reason names the field, in the answer the request would get.
//!
//! Before: each place had its own rule. A Send to a user with a trailing space was
//! queued, one with a NUL "BAD_REQUEST: storage error"; U+200B, U+202E, U+00AD
//! passed everywhere; room names took spaces at either end.

use ringrouter_client::Status;
use ringrouter_proto::v1::{
    client_frame::Kind as C, server_frame::Kind as S, AddMember, CreateRoom, Login,
};
use ringrouter_tests::{send_frame_bytes, Raw, RouterProc, T};

/// Each bad name, with what its refusal's reason must say after "<field>: ".
fn bad_names() -> Vec<(String, &'static str)> {
    vec![
        ("nul\0name".into(), "contains U+0000 (control character)"),
        (
            "zero\u{200b}width".into(),
            "contains U+200B (format character)",
        ),
        (
            "evil\u{202e}txt".into(),
            "contains U+202E (format character)",
        ),
        (
            "soft\u{ad}hyphen".into(),
            "contains U+00AD (format character)",
        ),
        (" leading".into(), "contains U+0020 (whitespace at an end)"),
        ("trailing ".into(), "contains U+0020 (whitespace at an end)"),
        (
            "nbsp\u{a0}".into(),
            "contains U+00A0 (whitespace at an end)",
        ),
        ("tab\t".into(), "contains U+0009 (control character)"),
        ("x".repeat(65), "is 65 bytes, longer than 64"),
        (String::new(), "is empty"),
    ]
}

#[track_caller]
fn assert_refused(status: i32, reason: &str, field: &str, want: &str, case: &str) {
    assert_eq!(status, Status::BadRequest as i32, "{case}: {reason}");
    assert_eq!(reason, format!("{field}: {want}"), "{case}");
}

#[test]
fn bad_user_and_device_names_in_login_are_bad_request() {
    let r = RouterProc::start(&["--shards", "2"]);
    for (name, want) in bad_names() {
        let mut c = r.raw();
        let lr = c.login_with(Login {
            request_id: 1,
            user: name.clone(),
            ..Default::default()
        });
        assert_refused(
            lr.status,
            &lr.reason,
            "user",
            want,
            &format!("user {name:?}"),
        );
        if name.is_empty() {
            continue; // an empty device is no device
        }
        let mut c = r.raw();
        let lr = c.login_with(Login {
            request_id: 1,
            user: "someone".into(),
            device: name.clone(),
            ..Default::default()
        });
        assert_refused(
            lr.status,
            &lr.reason,
            "device",
            want,
            &format!("device {name:?}"),
        );
    }
    // The edges of the rule are fine.
    for ok in ["x".repeat(64), "é".repeat(32), "zoë".into(), "東京".into()] {
        assert_eq!(
            r.raw().login(&ok).status,
            Status::Ok as i32,
            "{ok:?} refused"
        );
    }
}

#[test]
fn bad_recipient_names_in_send_are_bad_request() {
    let r = RouterProc::start(&["--shards", "2"]);
    let mut c = r.raw_login("sender");
    let mut other = r.raw_login("receiver");
    for (i, (name, want)) in bad_names().into_iter().enumerate() {
        let id = 100 + i as u64;
        // A good Send first: the session remembers "receiver" as its last destination
        // (checked once); a bad name after it is still checked.
        c.send_to("receiver", b"ok", id + 2000);
        assert_eq!(c.wait_send_result(id + 2000), Status::Ok as i32);
        // With a SendResult asked for.
        c.send_to(&name, b"x", id);
        match c.next_non_ping(T) {
            S::SendResult(s) => {
                assert_eq!(s.request_id, id);
                assert_refused(s.status, &s.reason, "to_user", want, &format!("{name:?}"));
            }
            other => panic!("{name:?}: expected a SendResult, got {other:?}"),
        }
        // Fire and forget: an Error frame.
        c.write(&send_frame_bytes(&name, b"x", false, id + 1000))
            .expect("write");
        let e = c.expect_error(T);
        assert_eq!(e.request_id, id + 1000);
        assert_refused(e.code, &e.reason, "to_user", want, &format!("{name:?}"));
    }
    // The connection is still a working session.
    c.send_to("receiver", b"fine", 1);
    assert_eq!(c.wait_send_result(1), Status::Ok as i32);
    let n = bad_names().len();
    let got = other.delivers(n + 1, T);
    assert!(got[..n].iter().all(|d| d.payload == b"ok"[..]));
    assert_eq!(got[n].payload, &b"fine"[..]);
}

fn room_call(c: &mut Raw, k: C, request_id: u64) -> (i32, String) {
    match c.call(k, request_id).0 {
        S::RoomResult(r) => (r.status, r.reason),
        other => panic!("expected a RoomResult, got {other:?}"),
    }
}

#[test]
fn bad_room_and_member_names_are_bad_request() {
    let r = RouterProc::start(&["--shards", "2"]);
    let mut owner = r.raw_login("owner");
    assert_eq!(owner.create_room("club", "").status, Status::Ok as i32);
    for (i, (name, want)) in bad_names().into_iter().enumerate() {
        let id = 10 + 3 * i as u64;
        let case = format!("{name:?}");
        let create = C::CreateRoom(CreateRoom {
            request_id: id,
            name: name.clone(),
            password: String::new(),
            members: Vec::new(),
        });
        let (status, reason) = room_call(&mut owner, create, id);
        assert_refused(status, &reason, "name", want, &case);
        let add = C::AddMember(AddMember {
            request_id: id + 1,
            room: "club".into(),
            user: name.clone(),
        });
        let (status, reason) = room_call(&mut owner, add, id + 1);
        assert_refused(status, &reason, "user", want, &case);
        let add = C::AddMember(AddMember {
            request_id: id + 2,
            room: name.clone(),
            user: "someone".into(),
        });
        let (status, reason) = room_call(&mut owner, add, id + 2);
        assert_refused(status, &reason, "room", want, &case);
    }
    // A room name may not look like a join code.
    let (status, reason) = room_call(
        &mut owner,
        C::CreateRoom(CreateRoom {
            request_id: 1,
            name: "#abcdefgh".into(),
            password: String::new(),
            members: Vec::new(),
        }),
        1,
    );
    assert_eq!(status, Status::BadRequest as i32);
    assert!(reason.starts_with("name: "), "{reason}");
    // Good names still work.
    let _zoe = r.raw_login("zoë");
    let add = C::AddMember(AddMember {
        request_id: 2,
        room: "club".into(),
        user: "zoë".into(),
    });
    assert_eq!(room_call(&mut owner, add, 2).0, Status::Ok as i32);
}
