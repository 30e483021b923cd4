//! A client cannot choose `from_user` (or any other router-owned field): whatever
//! it smuggles into a Send, the recipient sees the authenticated sender, and the
//! smuggled bytes never reach the recipient at all.

use prost::Message as _;
use ringrouter_client::Status;
use ringrouter_proto::v1::{server_frame, Deliver, ServerFrame};
use ringrouter_tests::wire::{fixed32_field, len_field, varint_field};
use ringrouter_tests::{users_on_shards, RouterProc, T};

const FORGED: &[u8] = b"mallory";

/// A Deliver as the router would send it, from "mallory": what a forger would
/// like the recipient to see.
fn forged_deliver() -> Vec<u8> {
    Deliver {
        seq: 99,
        from_user: String::from_utf8(FORGED.to_vec()).expect("ascii"),
        payload: bytes::Bytes::from_static(b"forged payload"),
        server_ts_us: 1,
        msg_id: 4242,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Send fields to `to` carrying `payload`, surrounded by unknown fields that
/// hold the forged name in every shape: a bare string (field 9), a whole forged
/// Deliver (field 17), a forged ServerFrame (field 13), plus varint and fixed32 junk.
fn send_with_junk(to: &str, payload: &[u8], request_id: u64) -> Vec<u8> {
    let mut s = Vec::new();
    len_field(&mut s, 9, FORGED);
    varint_field(&mut s, 1, request_id);
    len_field(&mut s, 2, to.as_bytes());
    len_field(&mut s, 17, &forged_deliver());
    len_field(&mut s, 4, payload);
    varint_field(&mut s, 5, 1); // want_result
    len_field(&mut s, 9, FORGED);
    let server = ServerFrame {
        kind: Some(server_frame::Kind::Deliver(Deliver {
            from_user: "mallory".into(),
            ..Default::default()
        })),
    }
    .encode_to_vec();
    len_field(&mut s, 13, &server);
    varint_field(&mut s, 15, 7);
    fixed32_field(&mut s, 12, [1, 2, 3, 4]);
    len_field(&mut s, 1000, FORGED);
    s
}

/// The ways to wrap Send bytes into a ClientFrame body.
fn bodies(to: &str, n: u64) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();

    // 1. ClientFrame{send} alone: the router's allocation-free parser.
    let p = format!("fast path {n}").into_bytes();
    let mut b = Vec::new();
    len_field(&mut b, 2, &send_with_junk(to, &p, 1));
    out.push(("send with unknown fields", b, p));

    // 2. An unknown ClientFrame field after the send holding a forged
    //    ServerFrame{deliver}: the generic (prost) path.
    let p = format!("prost path {n}").into_bytes();
    let mut b = Vec::new();
    len_field(&mut b, 2, &send_with_junk(to, &p, 2));
    let server = ServerFrame {
        kind: Some(server_frame::Kind::Deliver(
            Deliver::decode(&forged_deliver()[..]).expect("deliver"),
        )),
    }
    .encode_to_vec();
    len_field(&mut b, 50, &server);
    len_field(&mut b, 9, FORGED);
    out.push(("send plus unknown frame-level fields", b, p));

    // 3. The Send split in two occurrences of the field, which protobuf merges:
    //    the forged fields come in the second half.
    let p = format!("merged {n}").into_bytes();
    let mut first = Vec::new();
    len_field(&mut first, 2, to.as_bytes());
    varint_field(&mut first, 1, 3);
    let mut second = Vec::new();
    len_field(&mut second, 9, FORGED);
    len_field(&mut second, 4, &p);
    len_field(&mut second, 17, &forged_deliver());
    varint_field(&mut second, 5, 1);
    let mut b = Vec::new();
    len_field(&mut b, 2, &first);
    len_field(&mut b, 2, &second);
    out.push(("send merged from two parts", b, p));
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn forged_sender_never_reaches_the_recipient() {
    let r = RouterProc::start(&["--shards", "2"]);
    let home = users_on_shards("spoof", 2);
    let (remote_sender, bob) = (&home[0], &home[1]);
    // A second sender homed on bob's shard: the same-shard path.
    let local_sender = &users_on_shards("spoofer", 2)[1];
    let mut rx = r.raw_login(bob);
    let mut seq = 0u64;
    for sender in [remote_sender, local_sender] {
        let mut tx = r.raw_login(sender);
        for (case, body, payload) in bodies(bob, seq) {
            tx.send_body(&body);
            // The sender gets an OK SendResult: the router took the frame as a Send.
            match tx.next_kind(T) {
                server_frame::Kind::SendResult(res) => {
                    assert_eq!(res.status, Status::Ok as i32, "{case}: {res:?}");
                    assert_ne!(
                        res.msg_id, 4242,
                        "{case}: msg_id taken from a forged Deliver"
                    );
                }
                other => panic!("{case}: expected a SendResult, got {other:?}"),
            }
            seq += 1;
            let raw = rx
                .next_body(T)
                .unwrap_or_else(|e| panic!("{case}: bob got no Deliver: {e:?}"));
            assert!(
                !contains(&raw, FORGED),
                "{case}: the forged name reached the recipient's bytes: {raw:?}"
            );
            let frame = ServerFrame::decode(raw).expect("a ServerFrame");
            let Some(server_frame::Kind::Deliver(d)) = frame.kind else {
                panic!("{case}: expected a Deliver, got {frame:?}");
            };
            assert_eq!(
                d.from_user, *sender,
                "{case}: from_user is the authenticated sender"
            );
            assert_eq!(&d.payload[..], &payload[..], "{case}: payload");
            assert_eq!(d.seq, seq, "{case}: router-assigned seq");
            assert_ne!(d.msg_id, 4242, "{case}: forged msg_id");
            assert!(d.server_ts_us > 1, "{case}: router timestamp");
            assert!(d.to_room.is_empty(), "{case}: to_room");
        }
    }
}

#[test]
fn login_user_field_cannot_be_changed_after_login() {
    // A second Login with another name on a logged-in connection is refused and
    // the session keeps its first identity.
    let r = RouterProc::start(&["--shards", "2"]);
    let u = users_on_shards("ident", 2);
    let (alice, bob) = (&u[0], &u[1]);
    let mut rx = r.raw_login(bob);
    let mut tx = r.raw_login(alice);
    tx.send(ringrouter_proto::v1::client_frame::Kind::Login(
        ringrouter_proto::v1::Login {
            request_id: 7,
            user: "mallory".into(),
            ..Default::default()
        },
    ));
    let e = tx.expect_error(T);
    ringrouter_tests::assert_error(&e, Status::BadRequest);
    assert_eq!(e.request_id, 7);
    let mut body = Vec::new();
    let mut send = Vec::new();
    len_field(&mut send, 2, bob.as_bytes());
    len_field(&mut send, 4, b"who am i");
    len_field(&mut body, 2, &send);
    tx.send_body(&body);
    match rx.next_kind(T) {
        server_frame::Kind::Deliver(d) => {
            assert_eq!(d.from_user, *alice);
            assert_eq!(&d.payload[..], b"who am i");
        }
        other => panic!("expected a Deliver, got {other:?}"),
    }
}
