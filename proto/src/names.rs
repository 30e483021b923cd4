//! The one rule every name on the wire follows: user names, device names, room names.
//!
//! A name is UTF-8 (a `&str`; the decoders refuse other bytes as a bad frame), 1 to
//! [`MAX_NAME_BYTES`] bytes, with no character of the Unicode general categories Cc
//! (controls, NUL included), Cf (format: U+00AD soft hyphen, U+200B zero width space,
//! U+202E right-to-left override, U+FEFF, ...), Zl (U+2028) or Zp (U+2029), and no
//! whitespace (`char::is_whitespace`) at either end, where it would make two names look
//! alike ("ann" and "ann "). Spaces inside a name are fine ("Ann's phone", "team room").
//! Room names also may not start with [`CODE_MARK`] (that is how join codes start).
//!
//! [`check_name`] is the rule; [`check_inbound`] applies it to every name field of a
//! decoded client frame, where the router decodes it, so a bad name is refused with
//! BAD_REQUEST naming the field before anything else looks at it.

use crate::fast::{Inbound, SendView};
use crate::v1::client_frame::Kind;
use unicode_general_category::{get_general_category, GeneralCategory};

/// Longest name, in bytes (UTF-8).
pub const MAX_NAME_BYTES: usize = 64;

/// Join codes start with this character; room names may not.
pub const CODE_MARK: char = '#';

/// Why a name is refused. Its text starts with the field's name, e.g.
/// `to_user: contains U+202E (format character)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// No bytes at all.
    #[error("{field}: is empty")]
    Empty {
        /// The frame field.
        field: &'static str,
    },
    /// Over [`MAX_NAME_BYTES`].
    #[error("{field}: is {len} bytes, longer than {MAX_NAME_BYTES}")]
    TooLong {
        /// The frame field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A character no name may hold.
    #[error("{field}: contains U+{:04X} ({kind})", u32::from(*.ch))]
    BadChar {
        /// The frame field.
        field: &'static str,
        /// The first refused character.
        ch: char,
        /// What it is: "control character", "format character", "line separator",
        /// "paragraph separator" or "whitespace at an end".
        kind: &'static str,
    },
    /// A room name that starts like a join code.
    #[error("{field}: room names may not start with '{CODE_MARK}'")]
    CodeMark {
        /// The frame field.
        field: &'static str,
    },
}

impl NameError {
    /// The field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            NameError::Empty { field }
            | NameError::TooLong { field, .. }
            | NameError::BadChar { field, .. }
            | NameError::CodeMark { field } => field,
        }
    }
}

/// Why `c` may not be part of a name, if it may not.
#[inline]
fn refused(c: char) -> Option<&'static str> {
    if c.is_ascii() {
        // Fast path: ASCII controls are Cc; ASCII has no Cf, Zl or Zp.
        return if c.is_ascii_control() {
            Some("control character")
        } else {
            None
        };
    }
    match get_general_category(c) {
        GeneralCategory::Control => Some("control character"),
        GeneralCategory::Format => Some("format character"),
        GeneralCategory::LineSeparator => Some("line separator"),
        GeneralCategory::ParagraphSeparator => Some("paragraph separator"),
        _ => None,
    }
}

/// Checks `value`, the content of the name field `field` (named in the error).
pub fn check_name(field: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { field });
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong {
            field,
            len: value.len(),
        });
    }
    if let Some((ch, kind)) = value.chars().find_map(|c| refused(c).map(|kind| (c, kind))) {
        return Err(NameError::BadChar { field, ch, kind });
    }
    let ends = [value.chars().next(), value.chars().next_back()];
    match ends.into_iter().flatten().find(|c| c.is_whitespace()) {
        Some(ch) => Err(NameError::BadChar {
            field,
            ch,
            kind: "whitespace at an end",
        }),
        None => Ok(()),
    }
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Whether all eight bytes of `w` are printable ASCII (0x20..=0x7E): no byte with the
/// high bit, none below 0x20, none equal to 0x7F.
#[inline(always)]
fn word_printable(w: u64) -> bool {
    // Some byte < 0x20 (exact as a whole-word test for bounds up to 0x80).
    let below = w.wrapping_sub(LO * 0x20) & !w & HI;
    // Some byte == 0x7F.
    let x = w ^ (LO * 0x7F);
    let del = x.wrapping_sub(LO) & !x & HI;
    (w & HI) | below | del == 0
}

/// True when every byte of `v` is printable ASCII (0x20..=0x7E), tested eight bytes at a
/// time.
#[inline]
pub(crate) fn printable_ascii(v: &[u8]) -> bool {
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        if !word_printable(u64::from_le_bytes(b)) {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| (0x20..0x7F).contains(&b))
}

/// [`printable_ascii`] of `buf[r]` (`r` within `buf`), loading whole words of `buf`
/// where they fit, the bytes past `r.end` masked: a name followed by more of its frame
/// takes one load per eight bytes and no loop per byte (the tail loop cost a Send ~80
/// instructions).
#[inline]
pub(crate) fn printable_ascii_at(buf: &[u8], r: std::ops::Range<usize>) -> bool {
    let mut p = r.start;
    while p < r.end {
        let Some(&w) = buf.get(p..).and_then(|s| s.first_chunk::<8>()) else {
            return printable_ascii(buf.get(p..r.end).unwrap_or_default());
        };
        let mut w = u64::from_le_bytes(w);
        let valid = r.end - p;
        if valid < 8 {
            let keep = (1u64 << (8 * valid)) - 1;
            w = (w & keep) | ((LO * u64::from(b'A')) & !keep);
        }
        if !word_printable(w) {
            return false;
        }
        p += 8;
    }
    true
}

/// Byte equality of two names, inline: names are short, and a call to `memcmp` cost
/// more than the compare (~18 instructions a call on the Send path).
#[inline(always)]
pub fn name_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        if n >= 4 {
            let w = |s: &[u8], i: usize| s.get(i..).and_then(|t| t.first_chunk::<4>()).copied();
            return w(a, 0) == w(b, 0) && w(a, n - 4) == w(b, n - 4);
        }
        return a == b;
    }
    let w = |s: &[u8], i: usize| s.get(i..).and_then(|t| t.first_chunk::<8>()).copied();
    let mut i = 0;
    while i + 8 < n {
        if w(a, i) != w(b, i) {
            return false;
        }
        i += 8;
    }
    w(a, n - 8) == w(b, n - 8)
}

/// [`check_name`] for a name given as bytes (a field of a Send parsed in place). The
/// common name, printable ASCII without a space at either end, is accepted after one
/// pass of word-wide tests; anything else gets the full check (and its exact reason).
#[inline]
pub fn check_name_bytes(field: &'static str, value: &[u8]) -> Result<(), NameError> {
    let n = value.len();
    if (1..=MAX_NAME_BYTES).contains(&n)
        && value[0] != b' '
        && value[n - 1] != b' '
        && printable_ascii(value)
    {
        return Ok(());
    }
    // Text the parser already validated as UTF-8; bytes that are not text are no name.
    check_name(field, std::str::from_utf8(value).unwrap_or("\0"))
}

/// Checks a room name: [`check_name`], and no leading [`CODE_MARK`].
pub fn check_room_name(field: &'static str, value: &str) -> Result<(), NameError> {
    check_name(field, value)?;
    if value.starts_with(CODE_MARK) {
        return Err(NameError::CodeMark { field });
    }
    Ok(())
}

/// Checks the names of a Send (given as bytes: the hot path parses a Send in place):
/// its room if it names one, else its user (so a Send naming neither is `to_user: is
/// empty`). A Send naming both is left to the caller.
pub fn check_send(to_user: &[u8], to_room: &[u8]) -> Result<(), NameError> {
    if to_room.is_empty() {
        check_name_bytes("to_user", to_user)
    } else if to_user.is_empty() {
        check_name_bytes("to_room", to_room)?;
        if to_room.starts_with(&[CODE_MARK as u8]) {
            return Err(NameError::CodeMark { field: "to_room" });
        }
        Ok(())
    } else {
        Ok(())
    }
}

/// Checks every name field of a decoded client frame kind:
/// Login.user and Login.device (when non-empty: a JWT login may leave the user to the
/// token, and the device is optional), Register.user, Send.to_user / to_room, the room
/// of every room request (JoinRoom's only when it is not a join code, which has its
/// own rule where codes are looked up) and the member of AddMember / RemoveMember.
/// ListUsers' pattern is a glob with its own rule.
pub fn check_frame(kind: &Kind) -> Result<(), NameError> {
    match kind {
        Kind::Login(l) => {
            if !l.user.is_empty() {
                check_name("user", &l.user)?;
            }
            if !l.device.is_empty() {
                check_name("device", &l.device)?;
            }
            Ok(())
        }
        Kind::Register(r) => check_name("user", &r.user),
        Kind::Send(s) => check_send(s.to_user.as_bytes(), s.to_room.as_bytes()),
        Kind::CreateRoom(c) => {
            check_room_name("name", &c.name)?;
            c.members.iter().try_for_each(|m| check_name("members", m))
        }
        Kind::RoomInfo(i) => check_room_name("room", &i.room),
        Kind::MarkRead(m) => check_send(m.to_user.as_bytes(), m.room.as_bytes()),
        Kind::JoinRoom(j) if j.room.starts_with(CODE_MARK) => Ok(()),
        Kind::JoinRoom(j) => check_room_name("room", &j.room),
        Kind::LeaveRoom(l) => check_room_name("room", &l.room),
        Kind::DeleteRoom(d) => check_room_name("room", &d.room),
        Kind::AddMember(a) => {
            check_room_name("room", &a.room)?;
            check_name("user", &a.user)
        }
        Kind::RemoveMember(r) => {
            check_room_name("room", &r.room)?;
            check_name("user", &r.user)
        }
        Kind::History(h) => {
            if !h.user.is_empty() {
                check_name("user", &h.user)?;
            }
            if !h.room.is_empty() {
                check_room_name("room", &h.room)?;
            }
            Ok(())
        }
        Kind::ContactOp(c) => check_name("user", &c.user),
        Kind::GetPresence(g) => check_name("user", &g.user),
        Kind::ListConversations(_)
        | Kind::ListContacts(_)
        | Kind::SetPresence(_)
        | Kind::Ack(_)
        | Kind::Ping(_)
        | Kind::Pong(_)
        | Kind::Logout(_)
        | Kind::ListRooms(_)
        | Kind::DeleteAccount(_)
        | Kind::ListUsers(_) => Ok(()),
    }
}

/// [`check_frame`] for a frame as [`crate::fast::parse_client`] returns it.
pub fn check_inbound(frame: &Inbound) -> Result<(), NameError> {
    match frame {
        Inbound::Send(SendView {
            to_user, to_room, ..
        }) => check_send(to_user, to_room),
        Inbound::Other(kind) => check_frame(kind),
        Inbound::Empty => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{AddMember, CreateRoom, JoinRoom, Login, Ping, Register, Send};

    fn reason(field: &'static str, v: &str) -> String {
        check_name(field, v).unwrap_err().to_string()
    }

    #[test]
    fn good_names() {
        for n in [
            "alice",
            "zoë",
            "東京",
            "a-b_c.d@e",
            "x",
            &"y".repeat(64),
            &"é".repeat(32),
            "#starts-with-hash-is-fine-for-users",
            "emoji😀",
            "Ann's phone",
            "team room",
            "a\u{a0}b",
        ] {
            assert_eq!(check_name("user", n), Ok(()), "{n:?}");
        }
        assert_eq!(check_room_name("name", "lobby"), Ok(()));
    }

    #[test]
    fn bytes_and_text_agree() {
        let cases = [
            "alice",
            "",
            " a",
            "a ",
            "a b",
            "a\tb",
            "nul\0",
            "x\u{7f}",
            "zoë",
            "a\u{200b}",
            " ",
            "#code",
        ];
        let long = "y".repeat(65);
        let mid: String = (0u8..0x80).map(char::from).collect();
        let mut all: Vec<String> = cases.iter().map(|s| s.to_string()).collect();
        all.push(long);
        // Every ASCII byte, at every position of a 16-byte name (both word lanes).
        for b in 0u8..0x80 {
            for at in 0..16 {
                let mut v = vec![b'n'; 16];
                v[at] = b;
                all.push(String::from_utf8(v).expect("ASCII"));
            }
        }
        all.push(mid);
        for v in all.iter().map(String::as_str) {
            assert_eq!(
                check_name_bytes("f", v.as_bytes()),
                check_name("f", v),
                "{v:?}"
            );
        }
    }

    #[test]
    fn length() {
        assert_eq!(reason("user", ""), "user: is empty");
        assert_eq!(
            reason("to_user", &"x".repeat(65)),
            "to_user: is 65 bytes, longer than 64"
        );
        // Bytes, not characters.
        assert_eq!(
            check_name("user", &"é".repeat(33)),
            Err(NameError::TooLong {
                field: "user",
                len: 66
            })
        );
    }

    #[test]
    fn refused_characters_name_the_field_and_the_code_point() {
        let cases = [
            ("a\u{0}b", "U+0000 (control character)"),
            ("a\tb", "U+0009 (control character)"),
            ("a\u{7f}", "U+007F (control character)"),
            ("a\u{85}", "U+0085 (control character)"),
            ("a\u{ad}b", "U+00AD (format character)"),
            ("a\u{200b}b", "U+200B (format character)"),
            ("evil\u{202e}txt", "U+202E (format character)"),
            ("\u{feff}bom", "U+FEFF (format character)"),
            ("a\u{2028}b", "U+2028 (line separator)"),
            ("a\u{2029}b", "U+2029 (paragraph separator)"),
            (" lead", "U+0020 (whitespace at an end)"),
            ("trail ", "U+0020 (whitespace at an end)"),
            ("\u{a0}nbsp", "U+00A0 (whitespace at an end)"),
            ("ideo\u{3000}", "U+3000 (whitespace at an end)"),
            ("tab\tinside", "U+0009 (control character)"),
        ];
        for (v, want) in cases {
            assert_eq!(reason("to_user", v), format!("to_user: contains {want}"));
        }
    }

    #[test]
    fn room_names_may_not_look_like_codes() {
        assert_eq!(
            check_room_name("name", "#abc").unwrap_err().to_string(),
            "name: room names may not start with '#'"
        );
        assert_eq!(
            check_room_name("room", "").unwrap_err(),
            NameError::Empty { field: "room" }
        );
    }

    #[test]
    fn every_name_field_of_every_frame() {
        let login = |user: &str, device: &str| {
            Kind::Login(Login {
                user: user.into(),
                device: device.into(),
                ..Default::default()
            })
        };
        assert_eq!(check_frame(&login("alice", "")), Ok(()));
        // A JWT login may leave the user to the token.
        assert_eq!(check_frame(&login("", "phone")), Ok(()));
        assert_eq!(check_frame(&login("a b", "")), Ok(()));
        assert_eq!(check_frame(&login("ab ", "")).unwrap_err().field(), "user");
        assert_eq!(
            check_frame(&login("alice", "my\u{200b}phone"))
                .unwrap_err()
                .field(),
            "device"
        );
        let reg = Kind::Register(Register {
            user: String::new(),
            ..Default::default()
        });
        assert_eq!(check_frame(&reg).unwrap_err().field(), "user");
        let send = |to_user: &str, to_room: &str| {
            Kind::Send(Send {
                to_user: to_user.into(),
                to_room: to_room.into(),
                ..Default::default()
            })
        };
        assert_eq!(check_frame(&send("bob", "")), Ok(()));
        assert_eq!(check_frame(&send("", "lobby")), Ok(()));
        assert_eq!(
            check_frame(&send("", "")).unwrap_err(),
            NameError::Empty { field: "to_user" }
        );
        assert_eq!(
            check_frame(&send("b\0b", "")).unwrap_err().field(),
            "to_user"
        );
        assert_eq!(
            check_frame(&send("", "#code")).unwrap_err(),
            NameError::CodeMark { field: "to_room" }
        );
        let create = Kind::CreateRoom(CreateRoom {
            name: " lobby".into(),
            ..Default::default()
        });
        assert_eq!(check_frame(&create).unwrap_err().field(), "name");
        let add = |room: &str, user: &str| {
            Kind::AddMember(AddMember {
                room: room.into(),
                user: user.into(),
                ..Default::default()
            })
        };
        assert_eq!(check_frame(&add("lobby", "bob")), Ok(()));
        assert_eq!(
            check_frame(&add("lobby", "bob ")).unwrap_err().field(),
            "user"
        );
        assert_eq!(check_frame(&add("", "bob")).unwrap_err().field(), "room");
        // A join code is not a room name; codes have their own rule.
        let join = |room: &str| {
            Kind::JoinRoom(JoinRoom {
                room: room.into(),
                ..Default::default()
            })
        };
        assert_eq!(check_frame(&join("#abcd2345")), Ok(()));
        assert_eq!(
            check_frame(&join("lo\u{2029}bby")).unwrap_err().field(),
            "room"
        );
        assert_eq!(check_frame(&Kind::Ping(Ping { nonce: 1 })), Ok(()));
    }

    #[test]
    fn inbound_send_views_are_checked_like_sends() {
        let view = |to_user: &'static [u8]| {
            Inbound::Send(SendView {
                to_user: bytes::Bytes::from_static(to_user).into(),
                ..Default::default()
            })
        };
        assert_eq!(check_inbound(&view(b"bob")), Ok(()));
        assert_eq!(
            check_inbound(&view("bo\u{202e}b".as_bytes()))
                .unwrap_err()
                .to_string(),
            "to_user: contains U+202E (format character)"
        );
        assert_eq!(check_inbound(&Inbound::Empty), Ok(()));
    }

    #[test]
    fn word_tests_agree_with_the_plain_definitions() {
        let plain = |v: &[u8]| v.iter().all(|&b| (0x20..0x7F).contains(&b));
        // Every length and offset, each byte value at each position (the rest printable),
        // with printable and unprintable bytes after the range (they must not count).
        let special = [0x00u8, 0x1F, 0x20, 0x41, 0x7E, 0x7F, 0x80, 0xC3, 0xFF];
        for len in 0..20 {
            for start in 0..3 {
                for after in [b'x', 0x00, 0xFF] {
                    for pos in 0..len {
                        for &b in &special {
                            let mut buf = vec![after; start + len + 9];
                            buf[start..start + len].fill(b'k');
                            buf[start + pos] = b;
                            let r = start..start + len;
                            let want = plain(&buf[r.clone()]);
                            assert_eq!(printable_ascii(&buf[r.clone()]), want);
                            assert_eq!(printable_ascii_at(&buf, r.clone()), want, "{buf:?} {r:?}");
                            // The range at the very end of the buffer (no word past it).
                            let tail = &buf[..start + len];
                            assert_eq!(printable_ascii_at(tail, r.clone()), want);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn name_eq_is_byte_equality() {
        for len in 0..40usize {
            let a: Vec<u8> = (0..len as u8).map(|i| b'a' + i % 26).collect();
            assert!(name_eq(&a, &a.clone()));
            for pos in 0..len {
                let mut b = a.clone();
                b[pos] ^= 0x20;
                assert!(!name_eq(&a, &b), "{len} {pos}");
            }
            let mut longer = a.clone();
            longer.push(b'z');
            assert!(!name_eq(&a, &longer) && !name_eq(&longer, &a));
        }
    }
}
