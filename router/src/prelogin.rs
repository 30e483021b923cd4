//! A connection before it logs in, as a sans-IO state machine: bytes in, actions out.
//! `net::accept::serve` drives it with a socket, the login deadline and the shard's shutdown
//! signal; the tests here drive it with byte strings.
//!
//! What it may hold is bounded:
//! - a frame over `max_prelogin_frame_bytes` is answered TOO_LARGE and ends the
//!   connection, as soon as its length prefix is in; each read asks for at most what the
//!   frame being read still needs (at least [`MIN_READ`]), so the read buffer never holds
//!   more than one frame's bound plus one read;
//! - answers (Pongs, refusals) are written before anything more is read, and frames stop
//!   being parsed while more than [`MAX_QUEUED_BYTES`] of them wait: a client that sends
//!   and never reads stops being read (TCP backpressure), and the driver's login deadline,
//!   which covers writes as well as reads, then closes it;
//! - after `max_failed_logins` refused Logins the last LoginResult is followed by Error
//!   UNAUTHORIZED "too many failed logins" and the connection is closed.
//!
//! Every name field of a Login or Register follows the name rule
//! ([`ringrouter_proto::names`]): a bad one is refused BAD_REQUEST (for a Login, that is
//! a failed login too) before any credential is looked at.

use crate::shard::resume::ResumeAsk;
use bytes::BytesMut;

use ringrouter_proto::codec::{encode_frame, frame_bytes_needed, next_frame, FrameError};
use ringrouter_proto::fast::{parse_client, Inbound};
use ringrouter_proto::names::check_inbound;
use ringrouter_proto::v1::{client_frame::Kind, AccountResult, Login, Register};
use ringrouter_proto::{reply, Status};

use crate::auth::AuthError;
use crate::config::Config;

/// Smallest read worth a read call.
pub(crate) const MIN_READ: usize = 4 * 1024;

/// Answers queued before login past which no more frames are parsed until they are
/// written. A client before login has a Login, a Register or a few Pings to send: 64 KiB
/// here made 10 000 connections that pipelined Registers and never read hold ~42 KiB
/// each (427 MiB) until the login timeout.
pub(crate) const MAX_QUEUED_BYTES: usize = 8 * 1024;

/// Reason of the TIMEOUT error sent at the login deadline.
pub(crate) const LOGIN_TIMEOUT: &str = "no login within the login timeout";

/// Reason of the UNAUTHORIZED error after the last allowed failed login.
pub(crate) const TOO_MANY_FAILED_LOGINS: &str = "too many failed logins";

/// Reason of the RATE_LIMITED answer to a Register past the connection's limit.
pub(crate) const TOO_MANY_REGISTRATIONS: &str =
    "too many registrations on one connection (--max-registrations-per-connection)";

/// The bounds of a connection before login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Largest frame body accepted.
    pub max_frame_bytes: usize,
    /// Refused Logins after which the connection is closed (0 counts as 1).
    pub max_failed_logins: u32,
    /// Registers answered on one connection; past it each is refused RATE_LIMITED.
    pub max_registrations: u32,
    /// See [`MAX_QUEUED_BYTES`].
    pub max_queued_bytes: usize,
}

impl Limits {
    /// The limits `cfg` sets.
    pub(crate) fn from_config(cfg: &Config) -> Self {
        Limits {
            max_frame_bytes: cfg.prelogin_frame_bytes(),
            max_failed_logins: cfg.max_failed_logins,
            max_registrations: cfg.max_registrations_per_connection,
            max_queued_bytes: MAX_QUEUED_BYTES,
        }
    }
}

/// A logged-in connection, ready to become a session.
#[derive(Debug, PartialEq)]
pub(crate) struct Start {
    /// The authenticated user.
    pub user: String,
    /// The Login's device name.
    pub device: String,
    /// The Login's request id (the session's LoginResult echoes it).
    pub request_id: u64,
    /// What the Login asks about resuming.
    pub resume: ResumeAsk,
    /// Bytes read after the Login frame: frames for the session.
    pub leftover: BytesMut,
}

/// What the driver does next.
#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    /// Write all of these bytes (within the login deadline), then call
    /// [`PreLogin::written`] (or [`PreLogin::write_failed`]).
    Write(BytesMut),
    /// Read into `buf[buf.len()..buf.len() + max]` (capacity is reserved), then give the
    /// buffer back with [`PreLogin::read`] or [`PreLogin::eof`] (or call
    /// [`PreLogin::read_failed`], [`PreLogin::timed_out`], [`PreLogin::shutting_down`]).
    Read {
        /// The read buffer, lent to the driver.
        buf: BytesMut,
        /// Most bytes to read into it.
        max: usize,
    },
    /// Check these credentials, then call [`PreLogin::authenticated`].
    Authenticate(Login),
    /// Create this account, then call [`PreLogin::registered`].
    Register(Register),
    /// Logged in, and every answer before it is written: run the session (which sends
    /// the LoginResult). The machine is done.
    Start(Start),
    /// Write these bytes with a short bounded wait (the peer may not be reading; empty:
    /// the socket is not in a state to write), shut the socket down. The machine is done.
    Close(BytesMut),
}

/// What the machine waits for from the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wait {
    /// Nothing: the next action decides.
    Nothing,
    /// A Read: the buffer is lent out.
    Read,
    /// A Write.
    Write,
    /// An Authenticate of the Login with this request id and device.
    Auth {
        request_id: u64,
        device: String,
        resume: ResumeAsk,
    },
    /// A Register.
    Register,
    /// Nothing ever again: Start or Close was handed out.
    Done,
}

/// A connection before login (see the module doc).
#[derive(Debug)]
pub(crate) struct PreLogin {
    limits: Limits,
    /// Bytes read and not parsed yet (`None` while lent to a Read).
    inbuf: Option<BytesMut>,
    /// Answers not handed to a Write yet.
    out: BytesMut,
    /// Refused Logins so far.
    failed: u32,
    /// Registers taken so far.
    registrations: u32,
    /// The Authenticate, Register or Start to hand out once `out` is written.
    next: Option<Action>,
    /// Set when the connection is to be closed: whether `out` may still be written.
    closing: Option<bool>,
    wait: Wait,
    /// Statuses of the Error frames queued since the driver last took them (for the
    /// shard's `errors_total`; [`PreLogin::take_rejected`]).
    rejected: Vec<Status>,
    /// The status the conversation was closed with (its closing Error's).
    closed_with: Option<Status>,
}

/// The reason of the BAD_FRAME error for a connection closed inside a frame.
pub(crate) fn truncated_reason(buffered: usize) -> String {
    format!("connection closed inside a frame ({buffered} bytes of an incomplete frame)")
}

impl PreLogin {
    /// A fresh connection.
    pub(crate) fn new(limits: Limits) -> Self {
        PreLogin {
            limits,
            inbuf: Some(BytesMut::new()),
            out: BytesMut::new(),
            failed: 0,
            registrations: 0,
            next: None,
            closing: None,
            wait: Wait::Nothing,
            rejected: Vec::new(),
            closed_with: None,
        }
    }

    /// The status the router closed the conversation with, if it did (a WebSocket's
    /// close code says it too).
    pub(crate) fn closed_with(&self) -> Option<Status> {
        self.closed_with
    }

    /// The statuses of the Error frames queued since the last call, to be counted.
    pub(crate) fn take_rejected(&mut self) -> Vec<Status> {
        std::mem::take(&mut self.rejected)
    }

    /// What to do next. Call it again after reporting how the last action went.
    pub(crate) fn next_action(&mut self) -> Action {
        if self.wait == Wait::Done {
            return Action::Close(BytesMut::new());
        }
        if let Some(write) = self.closing {
            self.wait = Wait::Done;
            let bytes = if write {
                std::mem::take(&mut self.out)
            } else {
                BytesMut::new()
            };
            return Action::Close(bytes);
        }
        if !self.out.is_empty() {
            self.wait = Wait::Write;
            return Action::Write(std::mem::take(&mut self.out));
        }
        if let Some(next) = self.next.take() {
            self.wait = match &next {
                Action::Authenticate(l) => Wait::Auth {
                    request_id: l.request_id,
                    device: l.device.clone(),
                    resume: ResumeAsk::of(l),
                },
                Action::Register(_) => Wait::Register,
                _ => Wait::Done,
            };
            return next;
        }
        let mut buf = self.inbuf.take().unwrap_or_default();
        // The rest of the frame being read (its length is at most the bound: a longer
        // one was refused as soon as its prefix was in), or one small read.
        let max = frame_bytes_needed(&buf).unwrap_or(0).max(MIN_READ);
        buf.reserve(max);
        self.wait = Wait::Read;
        Action::Read { buf, max }
    }

    /// A Read brought bytes (appended to `buf`).
    pub(crate) fn read(&mut self, buf: BytesMut) {
        if self.wait == Wait::Read {
            self.wait = Wait::Nothing;
            self.inbuf = Some(buf);
            self.parse();
        }
    }

    /// A Read found the end of the stream; `buf` holds what was left unparsed.
    pub(crate) fn eof(&mut self, buf: BytesMut) {
        if self.wait != Wait::Read {
            return;
        }
        self.wait = Wait::Nothing;
        if buf.is_empty() {
            // A clean close: nobody to tell anything.
            self.closing = Some(false);
        } else {
            // Inside a frame: the client may still read why nothing happened.
            self.close_with(Status::BadFrame, &truncated_reason(buf.len()));
        }
    }

    /// A Read failed (the connection is gone).
    pub(crate) fn read_failed(&mut self) {
        self.abort();
    }

    /// A Write finished.
    pub(crate) fn written(&mut self) {
        if self.wait == Wait::Write {
            self.wait = Wait::Nothing;
            self.parse();
        }
    }

    /// A Write failed or did not finish (deadline, shutdown): the stream may end inside
    /// a frame, so nothing more is written.
    pub(crate) fn write_failed(&mut self) {
        self.abort();
    }

    /// The answer to an Authenticate: the user, or why not.
    pub(crate) fn authenticated(&mut self, result: Result<String, AuthError>) {
        let Wait::Auth {
            request_id,
            device,
            resume,
        } = std::mem::replace(&mut self.wait, Wait::Nothing)
        else {
            return;
        };
        match result {
            Ok(user) => {
                self.next = Some(Action::Start(Start {
                    user,
                    device,
                    request_id,
                    resume,
                    leftover: self.inbuf.take().unwrap_or_default(),
                }));
            }
            Err(e) => {
                // A busy router (RATE_LIMITED, UNAVAILABLE) is not a failed login: the
                // client may try again on this connection, within its login deadline.
                let failed = !matches!(e.status, Status::RateLimited | Status::Unavailable);
                let f = reply::login_result_frame(request_id, e.status, e.reason);
                encode_frame(&f, &mut self.out);
                if failed {
                    self.login_failed();
                }
                // The client may retry on the same connection: look at what else it sent.
                self.parse();
            }
        }
    }

    /// The answer to a Register.
    pub(crate) fn registered(&mut self, result: AccountResult) {
        if self.wait != Wait::Register {
            return;
        }
        self.wait = Wait::Nothing;
        encode_frame(&reply::account_frame(result), &mut self.out);
        // Frames pipelined after the Register are already buffered.
        self.parse();
    }

    /// The login deadline passed (whatever the driver was waiting for).
    pub(crate) fn timed_out(&mut self) {
        self.close_with(Status::Timeout, LOGIN_TIMEOUT);
    }

    /// The router is shutting down.
    pub(crate) fn shutting_down(&mut self) {
        self.close_with(Status::Unavailable, "shutting down");
    }

    /// Ends the connection without writing anything more.
    fn abort(&mut self) {
        if self.wait != Wait::Done {
            self.closing = Some(false);
        }
    }

    /// Ends the connection with a closing Error frame after what is queued (unless a
    /// Write did not finish: then nothing more can be written).
    fn close_with(&mut self, code: Status, reason: &str) {
        if self.closing.is_some() || self.wait == Wait::Done {
            return;
        }
        if self.wait == Wait::Write {
            self.closing = Some(false);
            return;
        }
        encode_frame(&reply::error(code, reason, 0), &mut self.out);
        self.rejected.push(code);
        self.closed_with = Some(code);
        self.closing = Some(true);
    }

    fn login_failed(&mut self) {
        self.failed += 1;
        if self.failed >= self.limits.max_failed_logins.max(1) {
            self.close_with(Status::Unauthorized, TOO_MANY_FAILED_LOGINS);
        }
    }

    /// Handles the buffered frames until one needs the driver (Login, Register), the
    /// answers pile up, the buffer runs out or the connection is to be closed.
    fn parse(&mut self) {
        while self.closing.is_none()
            && self.next.is_none()
            && self.wait == Wait::Nothing
            && self.out.len() < self.limits.max_queued_bytes
        {
            let Some(buf) = self.inbuf.as_mut() else {
                return;
            };
            match next_frame(buf, self.limits.max_frame_bytes) {
                Ok(Some(body)) => match parse_client(body) {
                    Ok(frame) => self.on_frame(frame),
                    Err(e) => self.close_with(Status::BadFrame, &e.to_string()),
                },
                Ok(None) => return,
                Err(FrameError::TooLarge { len, max }) => {
                    let reason = format!(
                        "frame of {len} bytes exceeds {max}, the bound before login \
                         (--max-prelogin-frame-bytes, at most --max-frame-bytes)"
                    );
                    self.close_with(Status::TooLarge, &reason);
                }
                Err(e) => self.close_with(Status::BadFrame, &e.to_string()),
            }
        }
    }

    fn on_frame(&mut self, frame: Inbound) {
        let request_id = match &frame {
            Inbound::Other(Kind::Ping(p)) => {
                encode_frame(&reply::pong(p.nonce), &mut self.out);
                return;
            }
            Inbound::Other(Kind::Login(_) | Kind::Register(_)) => {
                if let Err(e) = check_inbound(&frame) {
                    let f = reply::refusal(&frame, Status::BadRequest, &e.to_string());
                    encode_frame(&f, &mut self.out);
                    self.rejected.push(Status::BadRequest);
                    if matches!(frame, Inbound::Other(Kind::Login(_))) {
                        self.login_failed();
                    }
                    return;
                }
                if matches!(frame, Inbound::Other(Kind::Register(_))) {
                    if self.registrations >= self.limits.max_registrations {
                        let f = reply::refusal(&frame, Status::RateLimited, TOO_MANY_REGISTRATIONS);
                        encode_frame(&f, &mut self.out);
                        self.rejected.push(Status::RateLimited);
                        return;
                    }
                    self.registrations += 1;
                }
                match frame {
                    Inbound::Other(Kind::Login(l)) => self.next = Some(Action::Authenticate(l)),
                    Inbound::Other(Kind::Register(r)) => self.next = Some(Action::Register(r)),
                    _ => {}
                }
                return;
            }
            Inbound::Send(s) => s.request_id,
            Inbound::Other(kind) => reply::request_id_of(kind),
            Inbound::Empty => 0,
        };
        encode_frame(
            &reply::error(Status::Unauthorized, "log in first", request_id),
            &mut self.out,
        );
        self.rejected.push(Status::Unauthorized);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringrouter_proto::codec::{decode_server, put_varint};
    use ringrouter_proto::v1::{client_frame, server_frame, ClientFrame, Ping, Send};

    const LIMITS: Limits = Limits {
        max_frame_bytes: 1024,
        max_failed_logins: 3,
        max_registrations: 2,
        max_queued_bytes: 4096,
    };

    fn frame(kind: client_frame::Kind) -> Vec<u8> {
        prost::Message::encode_length_delimited_to_vec(&ClientFrame { kind: Some(kind) })
    }

    fn ping(nonce: u64) -> Vec<u8> {
        frame(client_frame::Kind::Ping(Ping { nonce }))
    }

    fn login(user: &str, device: &str, request_id: u64) -> Vec<u8> {
        frame(client_frame::Kind::Login(Login {
            request_id,
            user: user.into(),
            device: device.into(),
            ..Default::default()
        }))
    }

    fn decode_all(mut bytes: BytesMut) -> Vec<server_frame::Kind> {
        let mut out = Vec::new();
        while let Some(body) = next_frame(&mut bytes, usize::MAX).unwrap() {
            out.push(decode_server(body).unwrap().kind.unwrap());
        }
        assert!(bytes.is_empty(), "a partial frame in the output");
        out
    }

    /// Asserts the next action is a Read and fills it with `bytes` (at most `max`;
    /// returns how many were taken).
    fn feed(pl: &mut PreLogin, bytes: &[u8]) -> usize {
        match pl.next_action() {
            Action::Read { mut buf, max } => {
                assert!(buf.capacity() - buf.len() >= max);
                let n = bytes.len().min(max);
                buf.extend_from_slice(&bytes[..n]);
                pl.read(buf);
                n
            }
            other => panic!("expected a Read, got {other:?}"),
        }
    }

    /// Asserts the next action writes frames, completes the write, returns them.
    fn expect_write(pl: &mut PreLogin) -> Vec<server_frame::Kind> {
        match pl.next_action() {
            Action::Write(b) => {
                pl.written();
                decode_all(b)
            }
            other => panic!("expected a Write, got {other:?}"),
        }
    }

    fn expect_close(pl: &mut PreLogin) -> Vec<server_frame::Kind> {
        match pl.next_action() {
            Action::Close(b) => decode_all(b),
            other => panic!("expected a Close, got {other:?}"),
        }
    }

    fn error_of(k: &server_frame::Kind) -> (Status, String) {
        match k {
            server_frame::Kind::Error(e) => (Status::try_from(e.code).unwrap(), e.reason.clone()),
            other => panic!("expected an Error, got {other:?}"),
        }
    }

    #[test]
    fn ping_then_login_starts_with_the_leftover() {
        let mut pl = PreLogin::new(LIMITS);
        let mut bytes = ping(7);
        bytes.extend(login("alice", "phone", 3));
        bytes.extend(ping(8)); // for the session
        feed(&mut pl, &bytes);
        assert!(
            matches!(&expect_write(&mut pl)[..], [server_frame::Kind::Pong(p)] if p.nonce == 7)
        );
        let Action::Authenticate(l) = pl.next_action() else {
            panic!()
        };
        assert_eq!((l.user.as_str(), l.request_id), ("alice", 3));
        pl.authenticated(Ok("alice".into()));
        match pl.next_action() {
            Action::Start(s) => {
                assert_eq!(
                    (s.user.as_str(), s.device.as_str(), s.request_id),
                    ("alice", "phone", 3)
                );
                assert_eq!(&s.leftover[..], &ping(8)[..]);
            }
            other => panic!("expected Start, got {other:?}"),
        }
    }

    #[test]
    fn frames_before_login_are_refused_and_register_is_answered() {
        let mut pl = PreLogin::new(LIMITS);
        let mut bytes = frame(client_frame::Kind::Send(Send {
            request_id: 9,
            to_user: "bob".into(),
            want_result: true,
            ..Default::default()
        }));
        bytes.extend(frame(client_frame::Kind::Register(Register {
            request_id: 4,
            user: "carol".into(),
            password: "pw".into(),
        })));
        bytes.extend(ping(1));
        feed(&mut pl, &bytes);
        let w = expect_write(&mut pl);
        assert_eq!(error_of(&w[0]).0, Status::Unauthorized);
        let Action::Register(r) = pl.next_action() else {
            panic!()
        };
        pl.registered(AccountResult {
            request_id: r.request_id,
            status: Status::Ok as i32,
            ..Default::default()
        });
        // The pipelined Ping is answered after the AccountResult, without another read.
        let w = expect_write(&mut pl);
        assert!(
            matches!(&w[..], [server_frame::Kind::AccountResult(a), server_frame::Kind::Pong(_)] if a.request_id == 4)
        );
        assert!(matches!(pl.next_action(), Action::Read { .. }));
    }

    #[test]
    fn registers_past_the_connections_limit_are_rate_limited_without_the_store() {
        let mut pl = PreLogin::new(LIMITS);
        let register = |id: u64| {
            frame(client_frame::Kind::Register(Register {
                request_id: id,
                user: format!("reg{id}"),
                password: "pw".into(),
            }))
        };
        let mut bytes = register(1);
        bytes.extend(register(2));
        bytes.extend(register(3));
        bytes.extend(login("reg1", "d", 4));
        feed(&mut pl, &bytes);
        let mut w = Vec::new();
        for id in [1, 2] {
            let Action::Register(r) = pl.next_action() else {
                panic!("register {id} goes to the store")
            };
            assert_eq!(r.request_id, id);
            pl.registered(AccountResult {
                request_id: id,
                status: Status::Ok as i32,
                ..Default::default()
            });
            w.extend(expect_write(&mut pl));
        }
        // The third is refused here; the Login after it still goes through.
        let refused = w.iter().find_map(|k| match k {
            server_frame::Kind::AccountResult(a) if a.request_id == 3 => Some(a.clone()),
            _ => None,
        });
        let refused = refused.expect("an answer to the third");
        assert_eq!(refused.status, Status::RateLimited as i32);
        assert!(refused
            .reason
            .contains("--max-registrations-per-connection"));
        assert!(matches!(pl.next_action(), Action::Authenticate(l) if l.request_id == 4));
    }

    #[test]
    fn oversized_frame_is_too_large_and_closes_before_its_body() {
        let mut pl = PreLogin::new(LIMITS);
        let mut prefix = Vec::new();
        put_varint(&mut prefix, 1025);
        feed(&mut pl, &prefix);
        let c = expect_close(&mut pl);
        let (code, reason) = error_of(&c[0]);
        assert_eq!(code, Status::TooLarge);
        assert!(
            reason.contains("1025") && reason.contains("1024"),
            "{reason}"
        );
        // At the bound is fine (a frame of 1024 bytes that does not decode is BAD_FRAME).
        let mut pl = PreLogin::new(LIMITS);
        let mut b = Vec::new();
        put_varint(&mut b, 1024);
        b.extend(std::iter::repeat_n(0xFFu8, 1024));
        let mut at = 0;
        while at < b.len() {
            at += feed(&mut pl, &b[at..]);
        }
        assert_eq!(error_of(&expect_close(&mut pl)[0]).0, Status::BadFrame);
    }

    #[test]
    fn reads_never_ask_past_the_frame_bound() {
        let mut pl = PreLogin::new(LIMITS);
        let mut b = Vec::new();
        put_varint(&mut b, 1000);
        b.extend(vec![0u8; 10]);
        feed(&mut pl, &b);
        match pl.next_action() {
            Action::Read { buf, max } => {
                // 1000 + 2 bytes of prefix - 12 buffered: the rest of the frame, or one
                // minimal read, whichever is larger.
                assert_eq!(buf.len(), 12);
                assert_eq!(max, MIN_READ.max(1002 - 12));
                assert!(buf.len() + max <= LIMITS.max_frame_bytes + 10 + MIN_READ);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_pile_up_to_the_bound_then_parsing_stops_until_written() {
        let mut pl = PreLogin::new(LIMITS);
        let mut b = Vec::new();
        let n = 2000;
        for i in 0..n {
            b.extend(ping(u64::MAX - i));
        }
        let mut at = 0;
        let mut pongs = 0;
        loop {
            match pl.next_action() {
                Action::Read { mut buf, max } => {
                    if at == b.len() {
                        break;
                    }
                    let k = (b.len() - at).min(max);
                    buf.extend_from_slice(&b[at..at + k]);
                    at += k;
                    pl.read(buf);
                }
                Action::Write(out) => {
                    // Bounded: the bound plus one answer.
                    assert!(out.len() < LIMITS.max_queued_bytes + 32, "{}", out.len());
                    pongs += decode_all(out).len();
                    pl.written();
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pongs, n as usize);
    }

    #[test]
    fn the_last_allowed_failed_login_closes_with_unauthorized() {
        let mut pl = PreLogin::new(LIMITS);
        for i in 1..=3u64 {
            feed(&mut pl, &login("alice", "", i));
            let Action::Authenticate(_) = pl.next_action() else {
                panic!()
            };
            pl.authenticated(Err(AuthError {
                status: Status::Unauthorized,
                reason: "wrong user name or password".into(),
            }));
            let frames = if i < 3 {
                expect_write(&mut pl)
            } else {
                expect_close(&mut pl)
            };
            let server_frame::Kind::LoginResult(lr) = &frames[0] else {
                panic!("{frames:?}")
            };
            assert_eq!((lr.request_id, lr.status), (i, Status::Unauthorized as i32));
            if i == 3 {
                assert_eq!(
                    error_of(&frames[1]),
                    (Status::Unauthorized, TOO_MANY_FAILED_LOGINS.to_owned())
                );
            } else {
                assert_eq!(frames.len(), 1);
            }
        }
    }

    #[test]
    fn bad_names_are_refused_before_authentication_and_count_as_failures() {
        let mut pl = PreLogin::new(LIMITS);
        let mut b = login("a b ", "", 1);
        b.extend(login("alice", "my\u{202e}phone", 2));
        // An empty user is left to the authenticator (jwt takes the token's subject).
        b.extend(login("", "", 3));
        b.extend(login("never", "", 4));
        feed(&mut pl, &b);
        let reasons: Vec<_> = expect_write(&mut pl)
            .into_iter()
            .map(|k| match k {
                server_frame::Kind::LoginResult(l) => {
                    assert_eq!(l.status, Status::BadRequest as i32);
                    (l.request_id, l.reason)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            reasons,
            [
                (1, "user: contains U+0020 (whitespace at an end)".to_owned()),
                (2, "device: contains U+202E (format character)".to_owned())
            ]
        );
        let Action::Authenticate(l) = pl.next_action() else {
            panic!()
        };
        assert_eq!(l.request_id, 3);
        pl.authenticated(Err(AuthError {
            status: Status::BadRequest,
            reason: "user: is empty".into(),
        }));
        // The third failure closes: the fourth Login is never looked at.
        let frames = expect_close(&mut pl);
        assert!(matches!(&frames[0], server_frame::Kind::LoginResult(l) if l.request_id == 3));
        assert_eq!(error_of(&frames[1]).1, TOO_MANY_FAILED_LOGINS);
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn deadline_while_writing_closes_without_writing_more() {
        let mut pl = PreLogin::new(LIMITS);
        feed(&mut pl, &ping(1));
        let Action::Write(_) = pl.next_action() else {
            panic!()
        };
        pl.write_failed();
        assert_eq!(pl.next_action(), Action::Close(BytesMut::new()));
        // Done for good.
        assert_eq!(pl.next_action(), Action::Close(BytesMut::new()));
    }

    #[test]
    fn deadline_while_reading_or_authenticating_is_a_timeout_error() {
        let mut pl = PreLogin::new(LIMITS);
        let Action::Read { .. } = pl.next_action() else {
            panic!()
        };
        pl.timed_out();
        assert_eq!(
            error_of(&expect_close(&mut pl)[0]),
            (Status::Timeout, LOGIN_TIMEOUT.to_owned())
        );
        let mut pl = PreLogin::new(LIMITS);
        feed(&mut pl, &login("alice", "", 1));
        let Action::Authenticate(_) = pl.next_action() else {
            panic!()
        };
        pl.shutting_down();
        assert_eq!(error_of(&expect_close(&mut pl)[0]).0, Status::Unavailable);
    }

    #[test]
    fn eof_inside_a_frame_is_bad_frame_and_between_frames_is_quiet() {
        let mut pl = PreLogin::new(LIMITS);
        let Action::Read { mut buf, .. } = pl.next_action() else {
            panic!()
        };
        buf.extend_from_slice(&[100, 1, 2]);
        pl.read(buf);
        let Action::Read { buf, .. } = pl.next_action() else {
            panic!()
        };
        pl.eof(buf);
        assert_eq!(error_of(&expect_close(&mut pl)[0]).0, Status::BadFrame);
        let mut pl = PreLogin::new(LIMITS);
        let Action::Read { buf, .. } = pl.next_action() else {
            panic!()
        };
        pl.eof(buf);
        assert_eq!(pl.next_action(), Action::Close(BytesMut::new()));
    }

    #[test]
    fn undecodable_frame_is_bad_frame() {
        let mut pl = PreLogin::new(LIMITS);
        feed(&mut pl, &[2, 0xFF, 0xFF]);
        assert_eq!(error_of(&expect_close(&mut pl)[0]).0, Status::BadFrame);
    }
}
