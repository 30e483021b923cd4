//! The blocking client: an I/O driver around the session core ([`crate::core`]).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringrouter_proto::codec::next_frame;
use ringrouter_proto::send::{put_send, SendHeader, Target};
use ringrouter_proto::v1::{client_frame, Login};
use ringrouter_proto::Status;

use crate::core::request::{self as req, PingRequest, Register, SendWait};
use crate::core::{self, AckPolicy, Acks, Frame, Inbound, Pending, Request, RequestIds};
use crate::transport::{self, RxState, Transport, Wire};
use crate::{ClientError, Event, Message};

/// How a client logs in and behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// User name (under jwt it may be empty: the token's subject is used).
    pub user: String,
    /// Password (accounts mode).
    pub password: Option<String>,
    /// JWT (jwt mode).
    pub token: Option<String>,
    /// Device name.
    pub device: String,
    /// Connect / login / request timeout.
    pub timeout: Duration,
    /// Ack automatically after this many received messages (0: never by count).
    pub ack_every: u64,
    /// Ack automatically when this much time passed since the last ack.
    pub ack_interval: Duration,
    /// Largest frame accepted from the router.
    pub max_frame_bytes: usize,
    /// TCP, TLS or WebSocket (default: plain TCP).
    pub transport: Transport,
    /// Resume (issue 12): ask the router for a resume token at login. A
    /// [`crate::threaded::ThreadedClient`] then numbers its Sends, keeps those the router
    /// has not acknowledged, and when the connection drops reconnects on its own (with
    /// backoff) and resumes: nothing sent is lost, nothing received is handed out twice.
    pub reconnect: bool,
    /// Resume: the token of the previous connection's login (empty: none).
    pub resume_token: Vec<u8>,
    /// Resume: how long a [`crate::threaded::ThreadedClient`] keeps trying to reconnect
    /// before it reports the connection closed.
    pub reconnect_for: Duration,
    /// Resume: how many recent (sender, msg_id) a [`crate::threaded::ThreadedClient`]
    /// remembers to drop messages it already handed out.
    pub dedupe_window: usize,
}

impl ClientConfig {
    /// Defaults for `user`: device "rust", 5 s timeout, ack every 256 messages or 100 ms.
    pub fn new(user: impl Into<String>) -> Self {
        ClientConfig {
            user: user.into(),
            password: None,
            token: None,
            device: "rust".into(),
            timeout: Duration::from_secs(5),
            ack_every: 256,
            ack_interval: Duration::from_millis(100),
            max_frame_bytes: 64 << 20,
            transport: Transport::default(),
            reconnect: false,
            resume_token: Vec::new(),
            reconnect_for: Duration::from_secs(60),
            dedupe_window: 100_000,
        }
    }
}

/// The resume part of a LoginResult (see [`ClientConfig::reconnect`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeInfo {
    /// The token for the next connection's login (empty: resume not asked for).
    pub token: Vec<u8>,
    /// The login's token was taken: the client_seq numbering goes on.
    pub resumed: bool,
    /// The highest client_seq the router took.
    pub client_seq_acked: u64,
}

impl ClientConfig {
    /// The ack policy this configuration asks for.
    pub(crate) fn ack_policy(&self) -> AckPolicy {
        AckPolicy {
            every: self.ack_every,
            interval: self.ack_interval,
        }
    }
}

/// A blocking connection to the router, logged in as one user.
pub struct Client {
    stream: TcpStream,
    /// TLS / WebSocket between the frames and the socket (None: plain TCP).
    wire: Option<Wire>,
    /// What `wire` made of the frames, for the socket.
    enc: BytesMut,
    rbuf: BytesMut,
    scratch: Vec<u8>,
    wbuf: BytesMut,
    /// Events for the application, in arrival order.
    events: VecDeque<Event>,
    cfg: ClientConfig,
    user: String,
    session_id: u64,
    shard: u32,
    ids: RequestIds,
    pending: Pending,
    acks: Acks,
    closed: Option<String>,
    resume: ResumeInfo,
    /// Largest frame the router accepts (its LoginResult's; 0: not said).
    router_max_frame_bytes: usize,
    /// Set by [`Client::open`] until the first request (see [`Client::next_deadline`]).
    open_deadline: Option<Instant>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.user)
            .field("session_id", &self.session_id)
            .finish()
    }
}

impl Client {
    /// Connects to `addr` and logs in with `cfg`.
    pub fn connect(addr: impl ToSocketAddrs, cfg: ClientConfig) -> Result<Client, ClientError> {
        let mut c = Client::open(addr, cfg)?;
        c.login()?;
        Ok(c)
    }

    /// Connects over `cfg.transport` (handshakes done), not logged in. Connecting,
    /// the handshakes and the first request (the login, a Register) share one
    /// deadline, `cfg.timeout` from now.
    fn open(addr: impl ToSocketAddrs, cfg: ClientConfig) -> Result<Client, ClientError> {
        let deadline = Instant::now() + cfg.timeout;
        let t = &cfg.transport;
        let conn = transport::connect(addr, t, deadline, cfg.max_frame_bytes)?;
        let mut c = Client::from_stream(conn.stream, cfg);
        c.open_deadline = Some(deadline);
        c.wire = conn.wire;
        c.rbuf.extend_from_slice(&conn.frames);
        Ok(c)
    }

    /// Creates the account `user` with `password` (routers with `--auth accounts`)
    /// on a fresh connection, which is closed again; log in with
    /// [`ClientConfig::password`] afterwards. Returns the user name as registered.
    ///
    /// A refusal is [`ClientError::Router`]: CONFLICT if the user exists,
    /// BAD_REQUEST for a name or password the router does not accept.
    pub fn register(
        addr: impl ToSocketAddrs,
        user: &str,
        password: &str,
    ) -> Result<String, ClientError> {
        Self::register_timeout(addr, user, password, ClientConfig::new(user).timeout)
    }

    /// [`Client::register`] with a connect / request timeout.
    pub fn register_timeout(
        addr: impl ToSocketAddrs,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<String, ClientError> {
        let mut cfg = ClientConfig::new(user);
        cfg.timeout = timeout;
        Self::register_with(addr, user, password, cfg)
    }

    /// [`Client::register`] with the timeout and transport of `cfg` (its user,
    /// password and token are not used).
    pub fn register_with(
        addr: impl ToSocketAddrs,
        user: &str,
        password: &str,
        cfg: ClientConfig,
    ) -> Result<String, ClientError> {
        let mut c = Client::open(addr, cfg)?;
        let res = c.call(Register { user, password });
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        res
    }

    /// Wraps a connected stream without logging in (see [`Client::login`]).
    pub fn from_stream(stream: TcpStream, cfg: ClientConfig) -> Client {
        Client {
            stream,
            wire: None,
            enc: BytesMut::new(),
            rbuf: BytesMut::with_capacity(64 * 1024),
            scratch: vec![0; 64 * 1024],
            wbuf: BytesMut::with_capacity(64 * 1024),
            events: VecDeque::new(),
            user: cfg.user.clone(),
            acks: Acks::new(cfg.ack_policy(), Instant::now()),
            cfg,
            session_id: 0,
            shard: 0,
            ids: RequestIds::starting_at(1),
            pending: Pending::default(),
            closed: None,
            resume: ResumeInfo::default(),
            router_max_frame_bytes: 0,
            open_deadline: None,
        }
    }

    /// The deadline of a wait for the router: the connection's (see [`Client::open`])
    /// for its first request, else the configured timeout from now.
    fn next_deadline(&mut self) -> Instant {
        self.open_deadline
            .take()
            .unwrap_or_else(|| Instant::now() + self.cfg.timeout)
    }

    /// Sends Login and waits for LoginResult.
    pub fn login(&mut self) -> Result<(), ClientError> {
        let request_id = self.ids.next();
        let login = Login {
            request_id,
            user: self.cfg.user.clone(),
            password: self.cfg.password.clone().unwrap_or_default(),
            token: self.cfg.token.clone().unwrap_or_default(),
            device: self.cfg.device.clone(),
            resume: self.cfg.reconnect,
            resume_token: self.cfg.resume_token.clone().into(),
        };
        let deadline = self.next_deadline();
        Frame::of(client_frame::Kind::Login(login)).put(&mut self.wbuf);
        self.flush()?;
        loop {
            let r = match self.read_inbound(Some(deadline))? {
                Inbound::Login(r) => core::login_outcome(r)?,
                Inbound::Event(Event::Error { code, reason, .. }) => {
                    return Err(ClientError::Auth { code, reason })
                }
                _ => continue,
            };
            self.user = r.user;
            self.session_id = r.session_id;
            self.shard = r.shard;
            self.router_max_frame_bytes = r.max_frame_bytes as usize;
            self.resume = ResumeInfo {
                token: r.resume_token.to_vec(),
                resumed: r.resumed,
                client_seq_acked: r.client_seq_acked,
            };
            return Ok(());
        }
    }

    /// The authenticated user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The router's id for this session.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The user's home shard.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The largest frame the router accepts, as its LoginResult said (0: not said):
    /// a bigger one makes it close the connection.
    pub fn router_max_frame_bytes(&self) -> usize {
        self.router_max_frame_bytes
    }

    /// The resume part of the login's answer.
    pub fn resume(&self) -> &ResumeInfo {
        &self.resume
    }

    /// The underlying socket (for tests that need raw access; under TLS or
    /// WebSocket it carries records / WebSocket frames, not frames).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Queues a Send without writing it (see [`Client::flush`]). Returns the request id.
    pub fn queue_send(&mut self, to: &str, payload: &[u8], want_result: bool, msg_id: u64) -> u64 {
        self.queue_send_to(Target::User(to), payload, want_result, msg_id)
    }

    /// Queues a Send to every member of `room` without writing it (see
    /// [`Client::flush`]). Returns the request id.
    pub fn queue_send_room(
        &mut self,
        room: &str,
        payload: &[u8],
        want_result: bool,
        msg_id: u64,
    ) -> u64 {
        self.queue_send_to(Target::Room(room), payload, want_result, msg_id)
    }

    fn queue_send_to(
        &mut self,
        to: Target<'_>,
        payload: &[u8],
        want_result: bool,
        msg_id: u64,
    ) -> u64 {
        self.queue_send_with(to, payload, want_result, msg_id, false)
    }

    /// [`Client::queue_send`] to a user or a room, ephemeral or not.
    pub(crate) fn queue_send_with(
        &mut self,
        to: Target<'_>,
        payload: &[u8],
        want_result: bool,
        msg_id: u64,
        ephemeral: bool,
    ) -> u64 {
        let request_id = if want_result { self.ids.next() } else { 0 };
        let h = SendHeader {
            to,
            request_id,
            want_result,
            msg_id,
            ephemeral,
            client_seq: 0,
        };
        put_send(&mut self.wbuf, &h, payload);
        request_id
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.wbuf.is_empty() && !self.wire.as_ref().is_some_and(|w| w.rx.wants_write()) {
            return Ok(());
        }
        let r = match self.wire.as_mut() {
            None => self.stream.write_all(&self.wbuf),
            Some(w) => {
                self.enc.clear();
                let r = w.tx.output(&self.wbuf, &mut self.enc);
                self.wbuf.clear();
                r?;
                self.stream.write_all(&self.enc)
            }
        };
        self.wbuf.clear();
        r.map_err(|e| self.io_closed(e))
    }

    fn io_closed(&mut self, e: std::io::Error) -> ClientError {
        match e.kind() {
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                let why = self.closed.get_or_insert_with(|| e.to_string()).clone();
                ClientError::Closed(why)
            }
            _ => ClientError::Io(e),
        }
    }

    /// Sends `payload` to every session of user `to` (fire and forget).
    pub fn send(&mut self, to: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.queue_send(to, payload, false, 0);
        self.flush()
    }

    /// Sends many payloads to `to` in one write.
    pub fn send_many<'a>(
        &mut self,
        to: &str,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<usize, ClientError> {
        let mut n = 0;
        for p in payloads {
            self.queue_send(to, p, false, 0);
            n += 1;
            if self.wbuf.len() >= 256 * 1024 {
                self.flush()?;
            }
        }
        self.flush()?;
        Ok(n)
    }

    /// Sends and waits for the SendResult; a non-OK status is an error.
    /// Messages that arrive meanwhile are kept for [`Client::recv`].
    pub fn send_wait(&mut self, to: &str, payload: &[u8]) -> Result<u64, ClientError> {
        self.call(SendWait {
            to: Target::User(to),
            payload,
            ephemeral: false,
        })
    }

    /// Sends `req` with a fresh request id and waits (up to the configured
    /// timeout) for its answer: the OK result's value, or the refusal as
    /// [`ClientError::Router`]. Everything else that arrives meanwhile is kept,
    /// in order, for [`Client::recv`] / [`Client::next_event`].
    pub(crate) fn call<R: Request>(&mut self, req: R) -> Result<R::Output, ClientError> {
        let request_id = self.ids.next();
        self.pending.insert(request_id, R::ANY_ERROR);
        req.frame(request_id).put(&mut self.wbuf);
        let answer = self.flush().and_then(|()| self.wait_answer(request_id));
        self.pending.remove(request_id);
        core::finish(req, request_id, answer?)
    }

    fn wait_answer(&mut self, request_id: u64) -> Result<core::Answer, ClientError> {
        let deadline = self.next_deadline();
        loop {
            if let Some(answer) = self.pending.take(request_id) {
                return Ok(answer);
            }
            if let Some(ev) = self.read_one(Some(deadline))? {
                self.events.push_back(ev);
            }
        }
    }

    // -------------------------------------------------------------------- rooms

    /// Creates room `name`, owned by this user (who becomes its first member),
    /// optionally protected by `password`. Returns its join code.
    /// CONFLICT if the name is taken.
    pub fn create_room(
        &mut self,
        name: &str,
        password: Option<&str>,
    ) -> Result<String, ClientError> {
        self.call(req::CreateRoom {
            name,
            password,
            members: &[],
        })
    }

    /// Joins a room by its name or its join code (and its password, if it has
    /// one). Returns the room's name. NOT_FOUND for an unknown room or code,
    /// FORBIDDEN for a wrong password.
    pub fn join_room(
        &mut self,
        name_or_code: &str,
        password: Option<&str>,
    ) -> Result<String, ClientError> {
        self.call(req::JoinRoom {
            name_or_code,
            password,
        })
    }

    /// Leaves `room`.
    pub fn leave_room(&mut self, room: &str) -> Result<(), ClientError> {
        self.call(req::LeaveRoom { room })
    }

    /// Adds `user` to `room` (owner only, else FORBIDDEN).
    pub fn add_member(&mut self, room: &str, user: &str) -> Result<(), ClientError> {
        self.call(req::AddMember { room, user })
    }

    /// Removes `user` from `room` (owner only, else FORBIDDEN).
    pub fn remove_member(&mut self, room: &str, user: &str) -> Result<(), ClientError> {
        self.call(req::RemoveMember { room, user })
    }

    /// Deletes `room` (owner only, else FORBIDDEN); its members get
    /// [`crate::RoomEventKind::Deleted`].
    pub fn delete_room(&mut self, room: &str) -> Result<(), ClientError> {
        self.call(req::DeleteRoom { room })
    }

    /// The rooms this user is a member of.
    pub fn rooms(&mut self) -> Result<Vec<String>, ClientError> {
        self.call(req::ListRooms)
    }

    /// Sends `payload` to every member of `room` (fire and forget).
    pub fn send_room(&mut self, room: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.queue_send_room(room, payload, false, 0);
        self.flush()
    }

    /// Sends to `room` and waits for the SendResult; a non-OK status is an
    /// error. Returns the message id. Messages that arrive meanwhile are kept
    /// for [`Client::recv`].
    pub fn send_room_wait(&mut self, room: &str, payload: &[u8]) -> Result<u64, ClientError> {
        self.call(SendWait {
            to: Target::Room(room),
            payload,
            ephemeral: false,
        })
    }

    // ----------------------------------------------------------------- accounts

    /// User names matching the glob `pattern` (`*` any run, `?` one character),
    /// in byte order, at most the router's page size of them.
    pub fn list_users(&mut self, pattern: &str) -> Result<Vec<String>, ClientError> {
        self.list_users_limit(pattern, 0)
    }

    /// [`Client::list_users`], at most `limit` names (0: the router's page size).
    pub fn list_users_limit(
        &mut self,
        pattern: &str,
        limit: u32,
    ) -> Result<Vec<String>, ClientError> {
        self.call(req::ListUsers { pattern, limit })
    }

    /// Deletes this user's account, offline queue and room memberships (rooms it
    /// owns are deleted). The router then ends every session of the user, this
    /// one included.
    pub fn delete_account(&mut self) -> Result<(), ClientError> {
        self.call(req::DeleteAccount)
    }

    /// Writes raw bytes to the socket (tests use it to send malformed input).
    /// Under TLS they are encrypted; under WebSocket they go as one binary message.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let r = match self.wire.as_mut() {
            None => self.stream.write_all(bytes),
            Some(w) => {
                self.enc.clear();
                w.tx.output_raw(bytes, &mut self.enc)?;
                self.stream.write_all(&self.enc)
            }
        };
        r.map_err(|e| self.io_closed(e))
    }

    /// Sends a cumulative Ack for everything received so far.
    pub fn ack_all(&mut self) -> Result<(), ClientError> {
        self.ack(true)
    }

    /// Sends an Ack if one is due (or, with `force`, if anything is unacked).
    fn ack(&mut self, force: bool) -> Result<(), ClientError> {
        if let Some(seq) = self.acks.poll(Instant::now(), force) {
            core::put_ack(&mut self.wbuf, seq);
            self.flush()?;
        }
        Ok(())
    }

    /// Pings the router and waits for the Pong; returns the round trip time.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        self.call(PingRequest)?;
        Ok(start.elapsed())
    }

    /// Next message, waiting up to `timeout` (None: forever). `Ok(None)` on timeout.
    /// Error frames from the router come back as `Err(ClientError::Router)`;
    /// stray SendResults and Pongs are skipped.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.next_event_until(deadline)? {
                Some(Event::Message(m)) => return Ok(Some(m)),
                Some(Event::Error {
                    code,
                    reason,
                    request_id,
                }) => {
                    return Err(ClientError::Router {
                        code,
                        reason,
                        request_id,
                    })
                }
                Some(Event::SendResult {
                    status,
                    reason,
                    request_id,
                    ..
                }) if status != Status::Ok => {
                    return Err(ClientError::Router {
                        code: status,
                        reason,
                        request_id,
                    })
                }
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    /// Next event of any kind, waiting up to `timeout` (None: forever). `Ok(None)` on timeout.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.next_event_until(deadline)
    }

    fn next_event_until(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Event>, ClientError> {
        let ev = match self.events.pop_front() {
            Some(ev) => ev,
            None => match self.read_event(deadline) {
                Ok(ev) => ev,
                Err(ClientError::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        // Acked once handed to the application, not when read: a message read
        // while a request waited for its answer is kept for recv, and must come
        // back at the next login if this client is dropped before that.
        let seq = match &ev {
            Event::Message(m) => m.seq,
            // A room or contact event from the offline queue is acked like a message.
            Event::Room { seq, .. } => *seq,
            Event::Contact(c) => c.seq,
            _ => 0,
        };
        if seq != 0 {
            self.acks.handed(seq);
            self.ack(false)?;
        }
        Ok(Some(ev))
    }

    /// Reads until an event for the application arrives (answering pings).
    fn read_event(&mut self, deadline: Option<Instant>) -> Result<Event, ClientError> {
        loop {
            if let Some(ev) = self.read_one(deadline)? {
                return Ok(ev);
            }
        }
    }

    /// Reads one frame: an event for the application, or None when it was
    /// something else (the answer to a waiting request, kept in `pending`; a
    /// ping, answered; a stray LoginResult).
    fn read_one(&mut self, deadline: Option<Instant>) -> Result<Option<Event>, ClientError> {
        match self.read_inbound(deadline)? {
            Inbound::Event(ev) => Ok(self.pending.offer(ev)),
            Inbound::Ping(nonce) => {
                core::put_pong(&mut self.wbuf, nonce);
                self.flush()?;
                Ok(None)
            }
            Inbound::Login(_) | Inbound::SendAck(_) | Inbound::Nothing => Ok(None),
        }
    }

    /// Reads and decodes one frame.
    fn read_inbound(&mut self, deadline: Option<Instant>) -> Result<Inbound, ClientError> {
        loop {
            match next_frame(&mut self.rbuf, self.cfg.max_frame_bytes) {
                Ok(Some(body)) => return core::decode(body),
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            self.read_more(deadline)?;
        }
    }

    /// One read from the socket onto `rbuf` (or the deadline passes).
    fn read_more(&mut self, deadline: Option<Instant>) -> Result<(), ClientError> {
        if let Some(why) = &self.closed {
            return Err(ClientError::Closed(why.clone()));
        }
        let timeout = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Err(ClientError::Timeout);
                }
                Some((d - now).max(Duration::from_millis(1)))
            }
            None => None,
        };
        self.stream.set_read_timeout(timeout)?;
        let n = match self.stream.read(&mut self.scratch) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(ClientError::Timeout)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(self.io_closed(e)),
        };
        match self.wire.as_mut() {
            None => self.rbuf.extend_from_slice(&self.scratch[..n]),
            Some(w) => {
                let state = w.rx.input(&self.scratch[..n], &mut self.rbuf);
                if w.rx.wants_write() {
                    // A pong or close answer: best effort.
                    let _ = self.flush();
                }
                if let RxState::Closed(why) = state? {
                    self.closed = Some(why.clone());
                    if self.rbuf.is_empty() {
                        return Err(ClientError::Closed(why));
                    }
                }
            }
        }
        if n == 0 {
            self.closed = Some("closed by the router".into());
            // Frames still buffered are returned first on the next turn.
            if self.rbuf.is_empty() {
                return Err(ClientError::Closed("closed by the router".into()));
            }
        }
        Ok(())
    }

    /// Takes the logged-in client apart: its socket, and the bytes already read
    /// from it but not yet decoded (frames that arrived right behind the
    /// LoginResult). [`crate::threaded::ThreadedClient`] logs in through
    /// [`Client::connect`] and then reads and writes the socket itself.
    /// Plain TCP only: under TLS or WebSocket the socket does not carry frames
    /// as they are (the threaded client takes the wire along).
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.rbuf)
    }

    /// [`Client::into_parts`] with the wire (None: plain TCP).
    pub(crate) fn into_wire_parts(self) -> (TcpStream, Option<Wire>, BytesMut) {
        (self.stream, self.wire, self.rbuf)
    }

    /// Sends Logout and closes the connection.
    pub fn close(mut self) -> Result<(), ClientError> {
        let _ = self.ack_all();
        core::put_logout(&mut self.wbuf);
        let mut r = self.flush();
        if let (Ok(()), Some(w)) = (&r, self.wire.as_mut()) {
            self.enc.clear();
            r = w.tx.finish(&mut self.enc).map_err(ClientError::from);
            if r.is_ok() {
                r = self
                    .stream
                    .write_all(&self.enc)
                    .map_err(|e| self.io_closed(e));
            }
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        match r {
            Ok(()) | Err(ClientError::Closed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The blocking client against a scripted fake router.

    use super::*;
    use crate::testing::{
        account, deliver, error, room_deliver, room_event, room_list, room_ok, room_refused, serve,
        serve_logged_in, Fake, T,
    };
    use crate::RoomEventKind;
    use ringrouter_proto::v1::RoomEventKind as K;
    use ringrouter_proto::v1::{server_frame, Pong};

    fn alice(addr: std::net::SocketAddr) -> Client {
        let mut cfg = ClientConfig::new("alice");
        cfg.timeout = T;
        Client::connect(addr, cfg).expect("connect")
    }

    fn expect_code<T: std::fmt::Debug>(r: Result<T, ClientError>, want: Status) -> String {
        match r {
            Err(ClientError::Router { code, reason, .. }) if code == want => reason,
            other => panic!("expected a router error {want:?}, got {other:?}"),
        }
    }

    #[test]
    fn room_event_kinds_from_the_wire() {
        assert_eq!(
            RoomEventKind::from_wire(K::RoomEventJoined as i32),
            RoomEventKind::Joined
        );
        assert_eq!(
            RoomEventKind::from_wire(K::RoomEventLeft as i32),
            RoomEventKind::Left
        );
        assert_eq!(
            RoomEventKind::from_wire(K::RoomEventRemoved as i32),
            RoomEventKind::Removed
        );
        assert_eq!(
            RoomEventKind::from_wire(K::RoomEventDeleted as i32),
            RoomEventKind::Deleted
        );
        assert_eq!(RoomEventKind::from_wire(0), RoomEventKind::Other(0));
        assert_eq!(RoomEventKind::from_wire(99), RoomEventKind::Other(99));
        let names: Vec<&str> = [
            RoomEventKind::Joined,
            RoomEventKind::Left,
            RoomEventKind::Removed,
            RoomEventKind::Deleted,
            RoomEventKind::Other(7),
        ]
        .iter()
        .map(|k| k.name())
        .collect();
        assert_eq!(names, ["joined", "left", "removed", "deleted", "unknown"]);
    }

    #[test]
    fn messages_set_aside_during_a_request_are_acked_only_once_handed_out() {
        let (addr, server) = serve_logged_in("alice", vec![], |f: &mut Fake| {
            let nonce = match f.frame().and_then(|f| f.kind) {
                Some(client_frame::Kind::Ping(p)) => p.nonce,
                other => panic!("expected Ping, got {other:?}"),
            };
            // Arrives while the ping waits: set aside for recv, not acked yet.
            f.write(&[
                deliver(1, b"kept"),
                server_frame::Kind::Pong(Pong { nonce }),
            ]);
            // The client leaves without calling recv: nothing may have been acked.
            while let Some(fr) = f.frame() {
                if let Some(client_frame::Kind::Ack(a)) = fr.kind {
                    panic!("acked {} before handing it out", a.up_to_seq);
                }
            }
        });
        let cfg = ClientConfig {
            ack_every: 1,
            ..ClientConfig::new("alice")
        };
        let mut c = Client::connect(addr, cfg).expect("login");
        c.ping().expect("pong");
        c.close().expect("close");
        server.join().expect("fake router");
    }

    #[test]
    fn room_requests_send_their_fields_and_return_the_answers() {
        let (addr, server) = serve_logged_in("alice", vec![], |f: &mut Fake| {
            match f.request() {
                client_frame::Kind::CreateRoom(c) => {
                    assert_eq!((c.name.as_str(), c.password.as_str()), ("lobby", "pw"));
                    // Things that arrive before the answer must not be lost.
                    f.write(&[
                        deliver(1, b"before"),
                        room_event(K::RoomEventJoined, "lobby", "alice"),
                        room_ok(c.request_id, "lobby", "AB12CD"),
                    ]);
                }
                other => panic!("expected CreateRoom, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::JoinRoom(j) => {
                    assert_eq!((j.room.as_str(), j.password.as_str()), ("XY34ZW", ""));
                    f.write(&[room_ok(j.request_id, "other", "XY34ZW")]);
                }
                other => panic!("expected JoinRoom, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::ListRooms(l) => {
                    f.write(&[room_list(l.request_id, &["lobby", "other"])])
                }
                other => panic!("expected ListRooms, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::AddMember(a) => {
                    assert_eq!((a.room.as_str(), a.user.as_str()), ("lobby", "carol"));
                    f.write(&[room_ok(a.request_id, "lobby", "")]);
                }
                other => panic!("expected AddMember, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::RemoveMember(r) => {
                    assert_eq!((r.room.as_str(), r.user.as_str()), ("lobby", "carol"));
                    f.write(&[room_ok(r.request_id, "lobby", "")]);
                }
                other => panic!("expected RemoveMember, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::LeaveRoom(l) => {
                    assert_eq!(l.room, "other");
                    f.write(&[room_ok(l.request_id, "other", "")]);
                }
                other => panic!("expected LeaveRoom, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::Send(s) => {
                    assert_eq!((s.to_room.as_str(), s.to_user.as_str()), ("lobby", ""));
                    assert_eq!(&s.payload[..], b"hello room");
                    assert!(!s.want_result);
                }
                other => panic!("expected Send, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::Send(s) => {
                    assert_eq!(s.to_room, "lobby");
                    assert!(s.want_result);
                    f.write(&[
                        room_deliver(2, "lobby", b"echo"),
                        server_frame::Kind::SendResult(ringrouter_proto::v1::SendResult {
                            request_id: s.request_id,
                            status: Status::Ok as i32,
                            reason: String::new(),
                            msg_id: 77,
                        }),
                    ]);
                }
                other => panic!("expected Send, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::DeleteRoom(d) => {
                    assert_eq!(d.room, "lobby");
                    f.write(&[room_ok(d.request_id, "lobby", "")]);
                }
                other => panic!("expected DeleteRoom, got {other:?}"),
            }
            f.drain();
        });
        let mut c = alice(addr);
        assert_eq!(
            c.create_room("lobby", Some("pw")).expect("create"),
            "AB12CD"
        );
        assert_eq!(c.join_room("XY34ZW", None).expect("join"), "other");
        assert_eq!(c.rooms().expect("rooms"), ["lobby", "other"]);
        c.add_member("lobby", "carol").expect("add");
        c.remove_member("lobby", "carol").expect("remove");
        c.leave_room("other").expect("leave");
        c.send_room("lobby", b"hello room").expect("send_room");
        assert_eq!(c.send_room_wait("lobby", b"x").expect("send_room_wait"), 77);
        c.delete_room("lobby").expect("delete");
        // What arrived while waiting, in order: a message, the event, a room message.
        match c.next_event(Some(T)).expect("event") {
            Some(Event::Message(m)) => assert_eq!(&m.payload[..], b"before"),
            other => panic!("expected the first message, got {other:?}"),
        }
        assert_eq!(
            c.next_event(Some(T)).expect("event"),
            Some(Event::Room {
                kind: RoomEventKind::Joined,
                room: "lobby".into(),
                user: "alice".into(),
                seq: 0,
            })
        );
        // recv skips room events and returns messages only.
        let m = c.recv(Some(T)).expect("recv").expect("room message");
        assert_eq!(
            (m.room.as_deref(), &m.payload[..]),
            (Some("lobby"), &b"echo"[..])
        );
        c.close().expect("close");
        server.join().expect("server");
    }

    #[test]
    fn refusals_are_router_errors_with_their_status() {
        let (addr, server) = serve_logged_in("alice", vec![], |f: &mut Fake| {
            let id = |k: &client_frame::Kind| match k {
                client_frame::Kind::CreateRoom(r) => r.request_id,
                client_frame::Kind::JoinRoom(r) => r.request_id,
                client_frame::Kind::DeleteRoom(r) => r.request_id,
                client_frame::Kind::ListUsers(r) => r.request_id,
                other => panic!("unexpected {other:?}"),
            };
            let k = f.request();
            f.write(&[room_refused(id(&k), Status::Conflict, "room exists")]);
            let k = f.request();
            f.write(&[room_refused(id(&k), Status::Forbidden, "wrong password")]);
            // An Error frame for the request, and one for another request first.
            let k = f.request();
            f.write(&[
                error(Status::NotFound, "not this one", 9999),
                error(Status::NotFound, "no such room", id(&k)),
            ]);
            let k = f.request();
            f.write(&[account(id(&k), Status::Unauthorized, "", &[])]);
            f.drain();
        });
        let mut c = alice(addr);
        assert_eq!(
            expect_code(c.create_room("taken", None), Status::Conflict),
            "room exists"
        );
        expect_code(c.join_room("lobby", Some("bad")), Status::Forbidden);
        assert_eq!(
            expect_code(c.delete_room("nope"), Status::NotFound),
            "no such room"
        );
        expect_code(c.list_users("*"), Status::Unauthorized);
        // The unrelated Error frame is still there for recv.
        match c.recv(Some(T)) {
            Err(ClientError::Router {
                code: Status::NotFound,
                request_id: 9999,
                ..
            }) => {}
            other => panic!("expected the stray error, got {other:?}"),
        }
        c.close().expect("close");
        server.join().expect("server");
    }

    #[test]
    fn register_is_the_first_frame_of_a_fresh_connection() {
        let (addr, server) = serve(|f: &mut Fake| match f.request() {
            client_frame::Kind::Register(r) => {
                assert_eq!((r.user.as_str(), r.password.as_str()), ("dora", "s3cret"));
                f.write(&[account(r.request_id, Status::Ok, "dora", &[])]);
                assert!(
                    f.frame().is_none(),
                    "the connection is closed after Register"
                );
            }
            other => panic!("expected Register, got {other:?}"),
        });
        assert_eq!(
            Client::register(addr, "dora", "s3cret").expect("register"),
            "dora"
        );
        server.join().expect("server");

        let (addr, server) = serve(|f: &mut Fake| match f.request() {
            client_frame::Kind::Register(r) => {
                f.write(&[account(r.request_id, Status::Conflict, "", &[])])
            }
            other => panic!("expected Register, got {other:?}"),
        });
        expect_code(Client::register(addr, "dora", "x"), Status::Conflict);
        server.join().expect("server");

        // Before Login the router may answer with an Error frame without a request id.
        let (addr, server) = serve(|f: &mut Fake| {
            let _ = f.request();
            f.write(&[error(Status::Unauthorized, "accounts are off", 0)]);
        });
        expect_code(Client::register(addr, "dora", "x"), Status::Unauthorized);
        server.join().expect("server");
    }

    #[test]
    fn list_users_and_delete_account() {
        let (addr, server) = serve_logged_in("alice", vec![], |f: &mut Fake| {
            match f.request() {
                client_frame::Kind::ListUsers(l) => {
                    assert_eq!((l.pattern.as_str(), l.limit), ("a*", 0));
                    f.write(&[account(l.request_id, Status::Ok, "", &["alice", "anna"])]);
                }
                other => panic!("expected ListUsers, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::ListUsers(l) => {
                    assert_eq!((l.pattern.as_str(), l.limit), ("*", 1));
                    f.write(&[account(l.request_id, Status::Ok, "", &["alice"])]);
                }
                other => panic!("expected ListUsers, got {other:?}"),
            }
            match f.request() {
                client_frame::Kind::DeleteAccount(d) => {
                    f.write(&[
                        account(d.request_id, Status::Ok, "alice", &[]),
                        error(Status::Unauthorized, "account deleted", 0),
                    ]);
                    let _ = f.stream.shutdown(std::net::Shutdown::Both);
                }
                other => panic!("expected DeleteAccount, got {other:?}"),
            }
        });
        let mut c = alice(addr);
        assert_eq!(c.list_users("a*").expect("list"), ["alice", "anna"]);
        assert_eq!(c.list_users_limit("*", 1).expect("list"), ["alice"]);
        c.delete_account().expect("delete_account");
        server.join().expect("server");
        // The router ends the session: its Error, then the close.
        assert!(matches!(
            c.recv(Some(T)),
            Err(ClientError::Router {
                code: Status::Unauthorized,
                ..
            })
        ));
        assert!(matches!(c.recv(Some(T)), Err(ClientError::Closed(_))));
    }

    #[test]
    fn an_unanswered_request_times_out_and_a_late_answer_is_ignored() {
        let (addr, server) = serve_logged_in("alice", vec![], |f: &mut Fake| {
            let k = f.request();
            let client_frame::Kind::ListRooms(l) = k else {
                panic!("expected ListRooms, got {k:?}")
            };
            match f.request() {
                client_frame::Kind::ListRooms(l2) => f.write(&[
                    room_list(l.request_id, &["stale"]),
                    room_list(l2.request_id, &["fresh"]),
                ]),
                other => panic!("expected ListRooms, got {other:?}"),
            }
            f.drain();
        });
        let mut cfg = ClientConfig::new("alice");
        cfg.timeout = Duration::from_millis(200);
        let mut c = Client::connect(addr, cfg).expect("connect");
        assert!(matches!(c.rooms(), Err(ClientError::Timeout)));
        assert_eq!(c.rooms().expect("rooms"), ["fresh"]);
        c.close().expect("close");
        server.join().expect("server");
    }
}
