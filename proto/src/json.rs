//! The frames in the protobuf JSON mapping (proto3 JSON), for the WebSocket subprotocol
//! `ringrouter.v1.json`: one `ClientFrame` / `ServerFrame` per text message.
//!
//! The mapping is the standard one, generated from `router.proto` by pbjson-build (the
//! serde impls of every message, in [`crate::v1`]):
//! - field names in lowerCamelCase (`toUser`, `upToSeq`); parsers accept the original
//!   snake_case names too (`to_user`);
//! - fields holding their default value (0, `""`, false, empty bytes or list, the 0 enum
//!   value) are left out;
//! - enums as their names (`"STATUS_OK"`, `"ROOM_EVENT_JOINED"`); parsers accept the
//!   number too;
//! - 64-bit integers as decimal strings (`"seq":"17"`); parsers accept JSON numbers too;
//! - bytes as standard base64 with padding; parsers accept URL-safe base64 and
//!   missing padding too;
//! - the frame kind (the `kind` oneof) as one member named after it:
//!   `{"send":{"toUser":"bob","payload":"aGk="}}`;
//! - `null` for a member means its default, as if it were absent (a member the frame
//!   does not have is then ignored too: the one leniency).
//!
//! Anything else is an error, never a panic: text that is not JSON (or not UTF-8), an
//! unknown member, a member given twice, two frame kinds in one frame, a value of the
//! wrong type or out of range, bad base64, an unknown enum name. The [`JsonError`] says
//! what and where. An empty object is a frame with no kind, as an empty binary frame is
//! (the router answers it as it answers that one).
//!
//! The binary protocol does not come through here.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::v1::{ClientFrame, ServerFrame};

/// Why a text is not a frame in the protobuf JSON mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON at all (a syntax error, not UTF-8, cut short, trailing characters).
    #[error("not JSON: {0}")]
    Syntax(String),
    /// JSON, but not a frame of this kind: `frame` is `ClientFrame` or `ServerFrame`,
    /// `reason` names the member or value at fault and where it is.
    #[error("not a {frame} in the protobuf JSON mapping: {reason}")]
    Mapping {
        /// `"ClientFrame"` or `"ServerFrame"`.
        frame: &'static str,
        /// What is wrong, and the line and column.
        reason: String,
    },
}

/// Parses one client frame from its protobuf JSON text.
pub fn client_frame_from_json(text: &[u8]) -> Result<ClientFrame, JsonError> {
    from_json(text, "ClientFrame")
}

/// The protobuf JSON text of one server frame.
pub fn server_frame_to_json(frame: &ServerFrame) -> String {
    to_json(frame)
}

/// The protobuf JSON text of one client frame (for clients and tests).
pub fn client_frame_to_json(frame: &ClientFrame) -> String {
    to_json(frame)
}

/// Parses one server frame from its protobuf JSON text (for clients and tests).
pub fn server_frame_from_json(text: &[u8]) -> Result<ServerFrame, JsonError> {
    from_json(text, "ServerFrame")
}

fn to_json<T: Serialize>(frame: &T) -> String {
    // The generated impls write only strings, numbers, bools, lists and objects with
    // string keys: serializing them into memory cannot fail.
    serde_json::to_string(frame).expect("a frame always serializes to JSON")
}

/// Texts up to this size that fail to parse as a frame are parsed again, to take proto3
/// JSON's `null` members and to say where the fault is.
const FALLBACK_MAX_BYTES: usize = 64 * 1024;

fn from_json<T: DeserializeOwned>(text: &[u8], frame: &'static str) -> Result<T, JsonError> {
    match serde_json::from_slice::<T>(text) {
        Ok(v) => return Ok(v),
        Err(e) if !e.is_data() => return Err(JsonError::Syntax(e.to_string())),
        // A big text that is not a frame is refused on the first parse's word: the two
        // parses below cost a 2 MiB one 18 ms of its shard and a hundred MiB of values.
        Err(e) if text.len() > FALLBACK_MAX_BYTES => {
            return Err(JsonError::Mapping {
                frame,
                reason: e.to_string(),
            })
        }
        Err(_) => {}
    }
    // Off the fast path from here: only texts that failed get here.
    // The generated parsers take `null` only for message fields; proto3 JSON allows it
    // for every field (it means the default). So once more without the members whose
    // value is null.
    let mut kinds = Vec::new();
    if let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(text) {
        if let serde_json::Value::Object(m) = &value {
            // A frame's only members are its kinds (the oneof): two distinct ones are
            // two kinds, which the generated parser calls a duplicate field.
            // (`mark_read` and `markRead` are one kind, given twice.)
            let mut seen: Vec<String> = m
                .keys()
                .map(|k| k.replace('_', "").to_lowercase())
                .collect();
            seen.sort_unstable();
            seen.dedup();
            if seen.len() == m.len() {
                kinds = m.keys().map(|k| format!("`{k}`")).collect();
            }
        }
        if strip_nulls(&mut value) {
            if let Ok(v) = serde_json::from_value::<T>(value) {
                return Ok(v);
            }
        }
    }
    // Once more to say where: the path of the member at fault.
    let mut de = serde_json::Deserializer::from_slice(text);
    let reason = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(_) => "refused".to_owned(),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string().replace(
                "data did not match any variant of untagged enum Content",
                "expected an integer in range, as a JSON number or a decimal string",
            );
            if path == "." || path.is_empty() {
                if kinds.len() > 1 && inner.starts_with("duplicate field") {
                    format!(
                        "a frame has one kind, this one has {}: {}",
                        kinds.len(),
                        kinds.join(", ")
                    )
                } else {
                    inner
                }
            } else {
                format!("{path}: {inner}")
            }
        }
    };
    Err(JsonError::Mapping { frame, reason })
}

/// Removes every object member whose value is `null`, at any depth; whether any was.
fn strip_nulls(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            let before = map.len();
            map.retain(|_, v| !v.is_null());
            let mut stripped = map.len() != before;
            for v in map.values_mut() {
                stripped |= strip_nulls(v);
            }
            stripped
        }
        serde_json::Value::Array(items) => {
            let mut stripped = false;
            for v in items {
                stripped |= strip_nulls(v);
            }
            stripped
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;

    use super::*;
    use crate::v1::*;
    use crate::Status;

    fn client(kind: client_frame::Kind) -> ClientFrame {
        ClientFrame { kind: Some(kind) }
    }

    fn server(kind: server_frame::Kind) -> ServerFrame {
        ServerFrame { kind: Some(kind) }
    }

    /// One frame of every client kind, every field set (64-bit values past 2^53).
    fn every_client_frame() -> Vec<ClientFrame> {
        use client_frame::Kind as K;
        let big = u64::MAX - 1;
        vec![
            client(K::Login(Login {
                request_id: big,
                user: "alice".into(),
                password: "pw \"quoted\" \\ é".into(),
                token: "a.b.c".into(),
                device: "Ann's phone".into(),
                resume: true,
                resume_token: Bytes::from_static(b"\x01\x02 token \xfe"),
            })),
            client(K::Send(Send {
                request_id: 1,
                to_user: "bob".into(),
                to_room: "team room".into(),
                payload: Bytes::from_static(b"\x00\xff hello \xfe"),
                want_result: true,
                msg_id: 1 << 60,
                ephemeral: true,
                client_seq: big,
            })),
            client(K::Ack(Ack { up_to_seq: big })),
            client(K::Ping(Ping {
                nonce: 9_007_199_254_740_993,
            })),
            client(K::Pong(Pong { nonce: 3 })),
            client(K::Logout(Logout {})),
            client(K::CreateRoom(CreateRoom {
                request_id: 4,
                name: "room".into(),
                password: "secret".into(),
                members: vec!["bob".into(), "carol".into()],
            })),
            client(K::RoomInfo(RoomInfo {
                request_id: 14,
                room: "room".into(),
            })),
            client(K::MarkRead(MarkRead {
                request_id: 15,
                to_user: "bob".into(),
                room: String::new(),
                msg_id: big - 1,
            })),
            client(K::JoinRoom(JoinRoom {
                request_id: 5,
                room: "#abcdefgh".into(),
                password: "secret".into(),
            })),
            client(K::LeaveRoom(LeaveRoom {
                request_id: 6,
                room: "room".into(),
            })),
            client(K::AddMember(AddMember {
                request_id: 7,
                room: "room".into(),
                user: "carol".into(),
            })),
            client(K::RemoveMember(RemoveMember {
                request_id: 8,
                room: "room".into(),
                user: "carol".into(),
            })),
            client(K::DeleteRoom(DeleteRoom {
                request_id: 9,
                room: "room".into(),
            })),
            client(K::ListRooms(ListRooms { request_id: 10 })),
            client(K::Register(Register {
                request_id: 11,
                user: "dave".into(),
                password: "pw".into(),
            })),
            client(K::DeleteAccount(DeleteAccount { request_id: 12 })),
            client(K::ListUsers(ListUsers {
                request_id: 13,
                pattern: "a*".into(),
                limit: u32::MAX,
            })),
            ClientFrame { kind: None },
            // Kinds with every field at its default.
            client(K::Send(Send::default())),
            client(K::Ack(Ack::default())),
        ]
    }

    /// One frame of every server kind, every field set.
    fn every_server_frame() -> Vec<ServerFrame> {
        use server_frame::Kind as K;
        let big = u64::MAX;
        vec![
            server(K::LoginResult(LoginResult {
                request_id: big,
                status: Status::Ok as i32,
                reason: "welcome".into(),
                session_id: big - 7,
                user: "alice".into(),
                shard: 3,
                device: "web".into(),
                heartbeat_ms: 15_000,
                max_frame_bytes: 1 << 20,
                resume_token: Bytes::from_static(b"\x00\xff resume"),
                resumed: true,
                client_seq_acked: big - 1,
                resume_window_ms: 60_000,
            })),
            server(K::SendAck(crate::v1::SendAck {
                up_to_client_seq: big,
            })),
            server(K::SendResult(SendResult {
                request_id: 1,
                status: Status::NotFound as i32,
                reason: "no such user".into(),
                msg_id: 1 << 62,
            })),
            server(K::Deliver(Deliver {
                seq: 1 << 55,
                from_user: "alice".into(),
                to_room: "room".into(),
                payload: Bytes::from((0..=255u8).collect::<Vec<u8>>()),
                server_ts_us: 1_764_585_600_000_000,
                msg_id: 77,
                ephemeral: true,
                outgoing: true,
                to_user: "bob".into(),
            })),
            server(K::Pong(Pong { nonce: big })),
            server(K::Error(Error {
                code: Status::SlowConsumer as i32,
                reason: "slow consumer".into(),
                request_id: 4,
            })),
            server(K::Ping(Ping { nonce: 5 })),
            server(K::RoomResult(RoomResult {
                request_id: 6,
                status: Status::Ok as i32,
                reason: String::new(),
                room: "room".into(),
                join_code: "#abcdefgh".into(),
                rooms: vec!["a".into(), "b".into(), "".into()],
                owner: "alice".into(),
                members: vec!["alice".into(), "bob".into()],
                created_us: 1_764_585_600_000_001,
            })),
            server(K::RoomEvent(RoomEvent {
                kind: RoomEventKind::RoomEventDeleted as i32,
                room: "room".into(),
                user: "alice".into(),
                seq: 12,
            })),
            server(K::Receipt(Receipt {
                user: "bob".into(),
                room: "room".into(),
                to_user: String::new(),
                msg_id: 99,
            })),
            server(K::AccountResult(AccountResult {
                request_id: 7,
                status: Status::Conflict as i32,
                reason: "taken".into(),
                user: "dave".into(),
                users: vec!["x".into(), "y".into()],
            })),
            ServerFrame { kind: None },
            server(K::Deliver(Deliver::default())),
        ]
    }

    /// Each frame goes to JSON and back to the same frame, and so to the same bytes on
    /// the binary protocol.
    fn round_trip<F>(frames: Vec<F>, to: fn(&F) -> String, from: fn(&[u8]) -> Result<F, JsonError>)
    where
        F: Message + PartialEq + std::fmt::Debug,
    {
        for f in frames {
            let text = to(&f);
            let back = from(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(back, f, "{text}");
            assert_eq!(back.encode_to_vec(), f.encode_to_vec(), "{text}");
        }
    }

    /// A big text that is not a frame is refused on the first parse (no second and third
    /// parse of megabytes); a small one still says where the fault is.
    #[test]
    fn a_big_text_that_is_no_frame_is_refused_on_the_first_parse() {
        let big = format!(r#"{{"zz":[{}0]}}"#, "0,".repeat(FALLBACK_MAX_BYTES));
        match client_frame_from_json(big.as_bytes()) {
            Err(JsonError::Mapping { frame, .. }) => assert_eq!(frame, "ClientFrame"),
            other => panic!("{other:?}"),
        }
        let small = br#"{"send":{"requestId":"x"}}"#;
        match client_frame_from_json(small) {
            Err(JsonError::Mapping { reason, .. }) => assert!(reason.contains("send"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_frame_kind_round_trips() {
        round_trip(
            every_client_frame(),
            client_frame_to_json,
            client_frame_from_json,
        );
        round_trip(
            every_server_frame(),
            server_frame_to_json,
            server_frame_from_json,
        );
    }

    #[test]
    fn canonical_output() {
        let send = client(client_frame::Kind::Send(Send {
            request_id: 1,
            to_user: "bob".into(),
            payload: Bytes::from_static(b"hi!"),
            want_result: true,
            ..Send::default()
        }));
        assert_eq!(
            client_frame_to_json(&send),
            r#"{"send":{"requestId":"1","toUser":"bob","payload":"aGkh","wantResult":true}}"#
        );
        let deliver = server(server_frame::Kind::Deliver(Deliver {
            seq: 2,
            from_user: "alice".into(),
            payload: Bytes::from_static(b"\xfb\xff"),
            server_ts_us: 1_764_585_600_000_001,
            msg_id: u64::MAX,
            ..Deliver::default()
        }));
        assert_eq!(
            server_frame_to_json(&deliver),
            r#"{"deliver":{"seq":"2","fromUser":"alice","payload":"+/8=","serverTsUs":"1764585600000001","msgId":"18446744073709551615"}}"#
        );
        let result = server(server_frame::Kind::LoginResult(LoginResult {
            status: Status::Ok as i32,
            user: "alice".into(),
            heartbeat_ms: 15_000,
            ..LoginResult::default()
        }));
        assert_eq!(
            server_frame_to_json(&result),
            r#"{"loginResult":{"status":"STATUS_OK","user":"alice","heartbeatMs":15000}}"#
        );
        let event = server(server_frame::Kind::RoomEvent(RoomEvent {
            kind: RoomEventKind::RoomEventJoined as i32,
            room: "r".into(),
            user: "u".into(),
            seq: 0,
        }));
        assert_eq!(
            server_frame_to_json(&event),
            r#"{"roomEvent":{"kind":"ROOM_EVENT_JOINED","room":"r","user":"u"}}"#
        );
        assert_eq!(
            client_frame_to_json(&client(client_frame::Kind::Logout(Logout {}))),
            r#"{"logout":{}}"#
        );
        assert_eq!(client_frame_to_json(&ClientFrame { kind: None }), "{}");
    }

    #[test]
    fn parsers_accept_every_spelling_proto3_json_allows() {
        let want = client(client_frame::Kind::Send(Send {
            request_id: 12,
            to_user: "bob".into(),
            payload: Bytes::from_static(b"\xfb\xff"),
            want_result: true,
            msg_id: u64::MAX,
            ..Send::default()
        }));
        for text in [
            // canonical
            r#"{"send":{"requestId":"12","toUser":"bob","payload":"+/8=","wantResult":true,"msgId":"18446744073709551615"}}"#,
            // snake_case names, numbers for 64-bit integers, URL-safe base64 without padding
            r#"{"send":{"request_id":12,"to_user":"bob","payload":"-_8","want_result":true,"msg_id":18446744073709551615}}"#,
            // null means the default; whitespace anywhere; members in any order
            " {\n \"send\" : { \"toRoom\": null, \"msgId\": \"18446744073709551615\", \"payload\": \"+/8\",\n \"toUser\": \"bob\", \"wantResult\": true, \"requestId\": 12 } } \n",
            r#"{"login":null,"send":{"requestId":"12","toUser":"bob","payload":"+/8=","wantResult":true,"msgId":"18446744073709551615","toRoom":null}}"#,
        ] {
            let got = client_frame_from_json(text.as_bytes());
            assert_eq!(got.unwrap_or_else(|e| panic!("{text}: {e}")), want, "{text}");
        }
        // Enums by number as well as by name.
        let by_number = server_frame_from_json(br#"{"error":{"code":6,"reason":"x"}}"#).unwrap();
        let by_name =
            server_frame_from_json(br#"{"error":{"code":"STATUS_NOT_FOUND","reason":"x"}}"#)
                .unwrap();
        assert_eq!(by_number, by_name);
        // An empty Logout, and a frame without a kind.
        assert_eq!(
            client_frame_from_json(br#"{"logout":{}}"#).unwrap(),
            client(client_frame::Kind::Logout(Logout {}))
        );
        assert_eq!(
            client_frame_from_json(b"{}").unwrap(),
            ClientFrame { kind: None }
        );
    }

    fn mapping_error(text: &str) -> String {
        match client_frame_from_json(text.as_bytes()) {
            Err(e @ JsonError::Mapping { .. }) => e.to_string(),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (text, says) in [
            (r#"{"sned":{}}"#, "unknown field `sned`"),
            (r#"{"send":{"toUsr":"bob"}}"#, "unknown field `toUsr`"),
            (
                r#"{"send":{},"ack":{}}"#,
                "a frame has one kind, this one has 2: `ack`, `send`",
            ),
            (r#"{"ack":{},"ack":{}}"#, "duplicate field `ack`"),
            (r#"{"markRead":{},"mark_read":{}}"#, "duplicate field"),
            (
                r#"{"send":{"toUser":"a","to_user":"b"}}"#,
                "duplicate field `toUser`",
            ),
            (r#"{"send":{"payload":"%%%"}}"#, "Invalid"),
            (
                r#"{"send":{"toUser":7}}"#,
                "send.toUser: invalid type: integer `7`, expected a string",
            ),
            (
                r#"{"send":{"wantResult":"yes"}}"#,
                "send.wantResult: invalid type: string \"yes\", expected a boolean",
            ),
            (
                r#"{"ack":{"upToSeq":-1}}"#,
                "ack.upToSeq: expected an integer in range",
            ),
            (
                r#"{"ack":{"upToSeq":"18446744073709551616"}}"#,
                "number too large",
            ),
            (
                r#"{"listUsers":{"limit":4294967296}}"#,
                "listUsers.limit: expected an integer",
            ),
            (r#"{"ack":{"upToSeq":"12abc"}}"#, "invalid digit"),
            (r#"[]"#, "expected struct"),
            (r#""send""#, "expected struct"),
        ] {
            let msg = mapping_error(text);
            assert!(msg.contains(says), "{text}: {msg}");
            assert!(
                msg.starts_with("not a ClientFrame in the protobuf JSON mapping: "),
                "{msg}"
            );
        }
        let e = server_frame_from_json(br#"{"error":{"code":"STATUS_NOPE"}}"#).unwrap_err();
        assert!(e.to_string().contains("STATUS_NOPE"), "{e}");
        assert!(e.to_string().contains("ServerFrame"), "{e}");
        for text in [
            &b""[..],
            b"{",
            b"{\"send\":{}} x",
            b"{\"send\":\xff}",
            b"\xef\xbb\xbf{}",
            b"nul",
        ] {
            match client_frame_from_json(text) {
                Err(JsonError::Syntax(m)) => assert!(!m.is_empty()),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(text)),
            }
        }
        // Invalid UTF-8 inside a string.
        assert!(client_frame_from_json(b"{\"send\":{\"toUser\":\"\xff\"}}").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(client_frame_from_json(deep.as_bytes()).is_err());
        let deep = format!("{{\"send\":{}}}", "{\"a\":".repeat(50_000));
        assert!(client_frame_from_json(deep.as_bytes()).is_err());
    }

    /// xorshift64*: a fixed sequence, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Fuzz-style: arbitrary bytes, and valid frames mutated (bytes flipped, cut,
    /// spliced, JSON tokens inserted), pass the checks of the `frame_json` fuzz target:
    /// never a panic; whatever parses re-encodes to a text that parses to the same frame.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut seeds: Vec<Vec<u8>> = every_client_frame()
            .iter()
            .map(|f| client_frame_to_json(f).into_bytes())
            .chain(
                every_server_frame()
                    .iter()
                    .map(|f| server_frame_to_json(f).into_bytes()),
            )
            .collect();
        seeds.push(br#"{"send":{"request_id":12,"to_user":null,"payload":"-_8"}}"#.to_vec());
        const TOKENS: &[&[u8]] = &[
            b"null",
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"\"",
            b"\\u0000",
            b"\\ud800",
            b"1e999",
            b"-0",
            b"18446744073709551616",
            b"\"send\"",
            b"\"login\":{}",
            b"true",
            b"\xff",
            b"\"payload\":\"",
            b"==",
            b" ",
        ];
        let mut parsed = 0;
        for i in 0..40_000 {
            let input: Vec<u8> = if i % 8 == 0 {
                let n = rng.below(64);
                (0..n).map(|_| rng.next() as u8).collect()
            } else {
                let mut v = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(v.len() + 1);
                    match rng.below(5) {
                        0 if !v.is_empty() => {
                            let j = rng.below(v.len());
                            v[j] = rng.next() as u8;
                        }
                        1 => v.truncate(at),
                        2 => {
                            let t = TOKENS[rng.below(TOKENS.len())];
                            v.splice(at..at, t.iter().copied());
                        }
                        3 if at < v.len() => {
                            let end = at + rng.below(v.len() - at);
                            v.drain(at..end);
                        }
                        _ => {
                            let other = &seeds[rng.below(seeds.len())];
                            let from = rng.below(other.len());
                            v.splice(at..at, other[from..].iter().copied());
                        }
                    }
                }
                v
            };
            crate::fuzzing::check_json(&input);
            parsed += usize::from(client_frame_from_json(&input).is_ok());
        }
        // The mutations are mild enough that some inputs stay frames.
        assert!(parsed > 100, "only {parsed} inputs parsed");
    }
}
