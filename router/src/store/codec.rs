//! On-disk layout of the store: record encodings, key layouts, name checks and the glob matcher.
//! Pure functions, no I/O.
//!
//! Every value starts with a one-byte format tag (1) followed by a protobuf
//! encoding, so a value written by something else (or damaged) is refused with an error
//! instead of being misread. Keys:
//! - `offline`: `user bytes, 0x00, seq u64 big-endian`: a prefix scan of `user 0x00` is one
//!   user's queue in seq order (user names never contain NUL).
//! - `accounts`: `user bytes` → an account record (the Argon2id PHC string).
//! - `rooms`: `"room:" name` → [`RoomRecord`], `"code:" join_code` → room name (UTF-8), and
//!   `"mem:" user 0x00 room` → empty (the rooms a user owns or is a member of), and
//!   `"ctc:" user` → the user's [`ContactRecord`](super::contacts::ContactRecord), and
//!   `"del:" user` → the direct conversations only memory named when it began (see
//!   [`DELETING_PREFIX`]) while the account's deletion is under way.

use bytes::Bytes;
use prost::Message;

use super::StoreError;

/// Format tag of every value written by this version.
pub(crate) const FORMAT_V1: u8 = 1;

/// Longest glob pattern the store accepts, in bytes (names follow
/// [`ringrouter_proto::names`]: at most 64 bytes).
pub const MAX_NAME_BYTES: usize = 256;

/// Longest password the store hashes, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Key prefix of room records in the `rooms` keyspace.
pub(crate) const ROOM_PREFIX: &[u8] = b"room:";
/// Key prefix of the join-code index in the `rooms` keyspace.
pub(crate) const CODE_PREFIX: &[u8] = b"code:";
/// Key prefix of the membership index in the `rooms` keyspace (`mem:` user 0x00 room).
pub(crate) const MEMBER_PREFIX: &[u8] = b"mem:";
/// Key prefix of room member lists in the `rooms` keyspace (`rmem:` room 0x00 user): a
/// member joins or leaves with one key, not a rewrite of the room's record.
pub(crate) const ROOM_MEMBER_PREFIX: &[u8] = b"rmem:";

/// Key prefix of contact lists in the `rooms` keyspace (`ctc:` user).
pub(crate) const CONTACTS_PREFIX: &[u8] = b"ctc:";
/// Key prefix of contact list entries (`cte:` user 0x00 peer): a change writes its entry,
/// not the whole list.
pub(crate) const CONTACT_ENTRY_PREFIX: &[u8] = b"cte:";
/// Key prefix of a contact list's blockers (`ctb:` user 0x00 blocker → empty): a block
/// writes one key, not the blocked user's whole list of blockers.
pub(crate) const CONTACT_BLOCKER_PREFIX: &[u8] = b"ctb:";
/// Key prefix of the marks of account deletions under way (`del:` user → the ids of
/// the direct conversations whose entries were only in memory when it began; see
/// `Worker::delete_account`): written with the deletion's first batch when it takes more
/// than one, removed with its last, and read when the store opens to finish the ones a
/// restart cut short. In the `rooms` keyspace, which ListUsers does not read (it scans
/// `accounts`), under a prefix no other scan of that keyspace covers.
pub(crate) const DELETING_PREFIX: &[u8] = b"del:";

/// One queued message for an offline user.
///
/// The field tags are those of the wire `Deliver` (from_user 2, to_room 3, payload 4,
/// server_ts_us 5, msg_id 6), so the encoded record is a `Deliver` without its per-session `seq`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoredMsg {
    /// The authenticated sender.
    #[prost(string, tag = "2")]
    pub from_user: String,
    /// The room the message was sent to; empty for a direct message.
    #[prost(string, tag = "3")]
    pub to_room: String,
    /// The opaque payload.
    #[prost(bytes = "bytes", tag = "4")]
    pub payload: Bytes,
    /// Router clock when the message was accepted, microseconds since the Unix epoch.
    #[prost(uint64, tag = "5")]
    pub server_ts_us: u64,
    /// The router-unique message id (clients dedupe by it).
    #[prost(uint64, tag = "6")]
    pub msg_id: u64,
    /// Not 0: a stored room event (`RoomEventKind`), not a message: `from_user` is the
    /// user it names, `to_room` the room (delivered as a RoomEvent with a seq).
    #[prost(int32, tag = "10")]
    pub room_event: i32,
    /// Not 0: a stored contact event (`ContactEventKind`), not a message: `from_user` is
    /// the peer, `msg_id` the list version (delivered as a ContactEvent with a seq).
    #[prost(int32, tag = "11")]
    pub contact_event: i32,
}

/// A room: its owner, optional password hash (PHC string), join code and members.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RoomRecord {
    /// Unique room name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The user who created it; only the owner may add/remove members or delete it.
    #[prost(string, tag = "2")]
    pub owner: String,
    /// Argon2id PHC string of the room password, if the room has one
    /// (see [`StoreHandle::hash_password`](super::StoreHandle::hash_password)).
    #[prost(string, optional, tag = "3")]
    pub password_hash: Option<String>,
    /// Short code that also finds the room; unique across rooms.
    #[prost(string, tag = "4")]
    pub join_code: String,
    /// Member user names (the owner included when the owner is a member). Stored as keys
    /// of their own (`rmem:`), not in the record (records written before that are moved
    /// when the store opens); filled in when a record is read.
    #[prost(string, repeated, tag = "5")]
    pub members: Vec<String>,
    /// When it was created, microseconds since the Unix epoch (0: before this field).
    #[prost(uint64, tag = "6")]
    pub created_us: u64,
}

/// An account: the Argon2id PHC string of its password.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(crate) struct AccountRecord {
    /// `$argon2id$v=19$m=..,t=..,p=..$salt$hash`.
    #[prost(string, tag = "1")]
    pub phc: String,
    /// When the account was created, microseconds since the Unix epoch.
    #[prost(uint64, tag = "2")]
    pub created_us: u64,
    /// Last login of a passwordless (open/jwt) user, µs since the epoch (0: `created_us`);
    /// refreshed while the user has sessions. Such a user with nothing queued and no
    /// rooms is forgotten once this is older than `forget_idle_after`.
    #[prost(uint64, tag = "3")]
    pub seen_us: u64,
}

/// Encodes `msg` as a tagged value.
pub(crate) fn encode<M: Message>(msg: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + msg.encoded_len());
    out.push(FORMAT_V1);
    // Encoding into a Vec cannot run out of space.
    let _ = msg.encode(&mut out);
    out
}

/// Encodes `msg` as [`encode`] does into `out`, which is emptied first (a buffer kept for
/// many records).
pub(crate) fn encode_into<M: Message>(msg: &M, out: &mut Vec<u8>) {
    out.clear();
    out.push(FORMAT_V1);
    // Encoding into a Vec cannot run out of space.
    let _ = msg.encode(out);
}

/// The length of `msg`'s [`encode`]d value, without encoding it.
pub(crate) fn record_len<M: Message>(msg: &M) -> u64 {
    1 + msg.encoded_len() as u64
}

/// Decodes a tagged value; `what` names the record in the error.
pub(crate) fn decode<M: Message + Default>(value: &[u8], what: &str) -> Result<M, StoreError> {
    match value.split_first() {
        Some((&FORMAT_V1, rest)) => {
            M::decode(rest).map_err(|e| StoreError::Io(format!("corrupt {what} record: {e}")))
        }
        Some((tag, _)) => Err(StoreError::Io(format!(
            "corrupt {what} record: unknown format tag {tag}"
        ))),
        None => Err(StoreError::Io(format!(
            "corrupt {what} record: empty value"
        ))),
    }
}

/// Checks a user name, room name or join code by the one name rule
/// ([`ringrouter_proto::names::check_name`]): a defensive check, the router refuses bad
/// names where it decodes them.
pub(crate) fn validate_name(kind: &'static str, name: &str) -> Result<(), StoreError> {
    ringrouter_proto::names::check_name(kind, name).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// Checks a password: at most [`MAX_PASSWORD_BYTES`] bytes.
pub(crate) fn validate_password(password: &str) -> Result<(), StoreError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(StoreError::Invalid(format!(
            "password is longer than {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// `user 0x00`: the prefix of every key of `user`'s offline queue.
pub(crate) fn queue_prefix(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 9);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

/// `user 0x00 seq(BE)`.
pub(crate) fn queue_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Makes `key`, a [`queue_key`], the key of `seq` in the same queue.
pub(crate) fn set_queue_key_seq(key: &mut [u8], seq: u64) {
    let at = key.len() - 8;
    key[at..].copy_from_slice(&seq.to_be_bytes());
}

/// The seq of an offline key that starts with `prefix`.
pub(crate) fn parse_queue_key(prefix: &[u8], key: &[u8]) -> Result<u64, StoreError> {
    let tail = key
        .strip_prefix(prefix)
        .ok_or_else(|| StoreError::Io("offline key outside its queue".into()))?;
    let seq: [u8; 8] = tail
        .try_into()
        .map_err(|_| StoreError::Io(format!("corrupt offline key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(seq))
}

/// `prefix name`.
pub(crate) fn prefixed(prefix: &[u8], name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + name.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The literal part of a glob before its first wildcard (for a prefix scan).
pub(crate) fn glob_literal_prefix(pattern: &str) -> &str {
    match pattern.find(['*', '?']) {
        Some(i) => &pattern[..i],
        None => pattern,
    }
}

/// Glob match over characters (`wildmatch`): `*` matches any run (empty included), `?`
/// exactly one character, everything else itself. No escapes. Case-sensitive.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    Glob::new(pattern).matches(name)
}

/// A compiled [`glob_match`] pattern, for matching many names.
pub(crate) type Glob = wildmatch::WildMatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "alice"));
        assert!(glob_match("al*", "alice"));
        assert!(glob_match("al*", "al"));
        assert!(!glob_match("al*", "bob"));
        assert!(glob_match("a?ice", "alice"));
        assert!(!glob_match("a?ice", "aice"));
        assert!(glob_match("*ce", "alice"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c*f", "abcde"));
        assert!(glob_match("??", "éé"));
        assert!(!glob_match("alice", "alic"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert_eq!(glob_literal_prefix("al*x"), "al");
        assert_eq!(glob_literal_prefix("a?"), "a");
        assert_eq!(glob_literal_prefix("bob"), "bob");
    }

    #[test]
    fn keys_sort_by_user_then_seq() {
        let a = queue_prefix("al");
        let b = queue_prefix("al\u{1}");
        assert!(queue_key(&a, u64::MAX) < queue_key(&b, 0));
        assert!(queue_key(&a, 255) < queue_key(&a, 256));
        assert_eq!(parse_queue_key(&a, &queue_key(&a, 77)).ok(), Some(77));
        assert!(parse_queue_key(&a, b"al\0abc").is_err());
    }

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let m = StoredMsg {
            from_user: "a".into(),
            to_room: String::new(),
            payload: Bytes::from_static(b"hi"),
            server_ts_us: 5,
            msg_id: 9,
            room_event: 0,
            contact_event: 0,
        };
        let v = encode(&m);
        assert_eq!(decode::<StoredMsg>(&v, "x").ok(), Some(m));
        assert!(decode::<StoredMsg>(&[], "x").is_err());
        assert!(decode::<StoredMsg>(&[7, 1, 2], "x").is_err());
        assert!(decode::<StoredMsg>(&[FORMAT_V1, 0xff, 0xff, 0xff], "x").is_err());
    }

    #[test]
    fn reused_key_and_buffer_encode_as_fresh_ones() {
        let prefix = queue_prefix("bob");
        let mut key = queue_key(&prefix, 0);
        let mut buf = Vec::new();
        let big = StoredMsg {
            from_user: "someone".into(),
            to_room: "room".into(),
            payload: Bytes::from(vec![7u8; 300]),
            server_ts_us: u64::MAX,
            msg_id: 1 << 40,
            room_event: 2,
            contact_event: 0,
        };
        // A short record after a long one: the buffer holds only the short one.
        let small = StoredMsg {
            from_user: "a".into(),
            ..StoredMsg::default()
        };
        for (seq, m) in [
            (1u64, &big),
            (256, &small),
            (u64::MAX, &StoredMsg::default()),
        ] {
            set_queue_key_seq(&mut key, seq);
            assert_eq!(key, queue_key(&prefix, seq));
            encode_into(m, &mut buf);
            assert_eq!(buf, encode(m));
            assert_eq!(record_len(m), buf.len() as u64);
        }
    }
}
