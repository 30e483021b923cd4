//! The blocking client.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message as _;
use ringrouter_proto::codec::{decode_server, encode_frame, next_frame};
use ringrouter_proto::v1::{
    client_frame, server_frame, Ack, ClientFrame, Login, Logout, Ping, Pong, Send,
};
use ringrouter_proto::Status;

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
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The router refused the login.
    #[error("login refused ({}): {reason}", code.short_name())]
    Auth {
        /// Status code.
        code: Status,
        /// Router's reason.
        reason: String,
    },
    /// The router answered with an error.
    #[error("router error {}: {reason}", code.short_name())]
    Router {
        /// Status code.
        code: Status,
        /// Router's reason.
        reason: String,
        /// Request id the error answers (0 if none).
        request_id: u64,
    },
    /// The connection is closed (by the router or the network).
    #[error("connection closed: {0}")]
    Closed(String),
    /// No answer in time.
    #[error("timed out waiting for the router")]
    Timeout,
    /// The router sent bytes that are not a valid frame.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The router's status code, for `Auth` and `Router` errors.
    pub fn code(&self) -> Option<Status> {
        match self {
            ClientError::Auth { code, .. } | ClientError::Router { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A message delivered to this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Authenticated sender (stamped by the router).
    pub sender: String,
    /// Room, or None for a direct message.
    pub room: Option<String>,
    /// The payload.
    pub payload: Bytes,
    /// Per-session sequence number.
    pub seq: u64,
    /// Message id (dedupe key).
    pub msg_id: u64,
    /// Router clock at acceptance, µs since the Unix epoch.
    pub timestamp_us: u64,
}

/// Anything the router sends that a caller may want to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message.
    Message(Message),
    /// The answer to a Send that asked for one.
    SendResult {
        /// Request id.
        request_id: u64,
        /// Status.
        status: Status,
        /// Reason when not OK.
        reason: String,
        /// Message id.
        msg_id: u64,
    },
    /// An error frame.
    Error {
        /// Status code.
        code: Status,
        /// Reason.
        reason: String,
        /// Request id (0 if none).
        request_id: u64,
    },
    /// A Pong (answer to [`Client::ping`]).
    Pong(u64),
}

fn status(v: i32) -> Status {
    Status::try_from(v).unwrap_or(Status::Unspecified)
}

/// A blocking connection to the router, logged in as one user.
pub struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    scratch: Vec<u8>,
    wbuf: BytesMut,
    events: VecDeque<Event>,
    cfg: ClientConfig,
    user: String,
    session_id: u64,
    shard: u32,
    next_request_id: u64,
    last_seq: u64,
    acked_seq: u64,
    last_ack: Instant,
    closed: Option<String>,
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
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        let mut last = None;
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, cfg.timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match stream {
            Some(s) => s,
            None => {
                return Err(last.map_or(
                    ClientError::Closed("no address to connect to".into()),
                    ClientError::Io,
                ))
            }
        };
        stream.set_nodelay(true)?;
        let mut c = Client::from_stream(stream, cfg);
        c.login()?;
        Ok(c)
    }

    /// Wraps a connected stream without logging in (see [`Client::login`]).
    pub fn from_stream(stream: TcpStream, cfg: ClientConfig) -> Client {
        Client {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            scratch: vec![0; 64 * 1024],
            wbuf: BytesMut::with_capacity(64 * 1024),
            events: VecDeque::new(),
            user: cfg.user.clone(),
            cfg,
            session_id: 0,
            shard: 0,
            next_request_id: 1,
            last_seq: 0,
            acked_seq: 0,
            last_ack: Instant::now(),
            closed: None,
        }
    }

    /// Sends Login and waits for LoginResult.
    pub fn login(&mut self) -> Result<(), ClientError> {
        let request_id = self.request_id();
        let login = Login {
            request_id,
            user: self.cfg.user.clone(),
            password: self.cfg.password.clone().unwrap_or_default(),
            token: self.cfg.token.clone().unwrap_or_default(),
            device: self.cfg.device.clone(),
        };
        self.queue(client_frame::Kind::Login(login));
        self.flush()?;
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            let f = self.read_frame(Some(deadline))?;
            match f.kind {
                Some(server_frame::Kind::LoginResult(r)) => {
                    let st = status(r.status);
                    if st != Status::Ok {
                        return Err(ClientError::Auth {
                            code: st,
                            reason: r.reason,
                        });
                    }
                    self.user = r.user;
                    self.session_id = r.session_id;
                    self.shard = r.shard;
                    return Ok(());
                }
                Some(server_frame::Kind::Error(e)) => {
                    return Err(ClientError::Auth {
                        code: status(e.code),
                        reason: e.reason,
                    });
                }
                _ => continue,
            }
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

    /// The underlying socket (for tests that need raw access).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    fn queue(&mut self, kind: client_frame::Kind) {
        encode_frame(&ClientFrame { kind: Some(kind) }, &mut self.wbuf);
    }

    /// Queues a Send without writing it (see [`Client::flush`]). Returns the request id.
    pub fn queue_send(&mut self, to: &str, payload: &[u8], want_result: bool, msg_id: u64) -> u64 {
        let request_id = if want_result { self.request_id() } else { 0 };
        // Encode by hand to avoid copying the payload into a Bytes first.
        let send = Send {
            request_id,
            to_user: to.to_owned(),
            to_room: String::new(),
            payload: Bytes::new(),
            want_result,
            msg_id,
        };
        let inner_len = send.encoded_len() + 1 + varint_len(payload.len() as u64) + payload.len();
        let outer = 1 + varint_len(inner_len as u64) + inner_len;
        ringrouter_proto::codec::put_varint(&mut self.wbuf, outer as u64);
        self.wbuf.extend_from_slice(&[(2 << 3) | 2]);
        ringrouter_proto::codec::put_varint(&mut self.wbuf, inner_len as u64);
        send.encode_raw(&mut self.wbuf);
        self.wbuf.extend_from_slice(&[(4 << 3) | 2]);
        ringrouter_proto::codec::put_varint(&mut self.wbuf, payload.len() as u64);
        self.wbuf.extend_from_slice(payload);
        request_id
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = self.stream.write_all(&self.wbuf);
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
        let request_id = self.queue_send(to, payload, true, 0);
        self.flush()?;
        self.wait_result(request_id)
    }

    fn wait_result(&mut self, request_id: u64) -> Result<u64, ClientError> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut stash = Vec::new();
        let res = loop {
            let ev = match self.read_event(Some(deadline)) {
                Ok(ev) => ev,
                Err(e) => break Err(e),
            };
            match ev {
                Event::SendResult {
                    request_id: r,
                    status,
                    reason,
                    msg_id,
                } if r == request_id => {
                    break if status == Status::Ok {
                        Ok(msg_id)
                    } else {
                        Err(ClientError::Router {
                            code: status,
                            reason,
                            request_id,
                        })
                    };
                }
                Event::Error {
                    code,
                    reason,
                    request_id: r,
                } if r == request_id => {
                    break Err(ClientError::Router {
                        code,
                        reason,
                        request_id,
                    });
                }
                other => stash.push(other),
            }
        };
        for ev in stash.into_iter().rev() {
            self.events.push_front(ev);
        }
        res
    }

    /// Writes raw bytes to the socket (tests use it to send malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).map_err(|e| self.io_closed(e))
    }

    /// Sends a cumulative Ack for everything received so far.
    pub fn ack_all(&mut self) -> Result<(), ClientError> {
        if self.last_seq > self.acked_seq {
            self.acked_seq = self.last_seq;
            self.last_ack = Instant::now();
            self.queue(client_frame::Kind::Ack(Ack {
                up_to_seq: self.last_seq,
            }));
            self.flush()?;
        }
        Ok(())
    }

    /// Pings the router and waits for the Pong; returns the round trip time.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        let nonce = self.request_id();
        let start = Instant::now();
        self.queue(client_frame::Kind::Ping(Ping { nonce }));
        self.flush()?;
        let deadline = start + self.cfg.timeout;
        let mut stash = Vec::new();
        let res = loop {
            match self.read_event(Some(deadline)) {
                Ok(Event::Pong(n)) if n == nonce => break Ok(start.elapsed()),
                Ok(other) => stash.push(other),
                Err(e) => break Err(e),
            }
        };
        for ev in stash.into_iter().rev() {
            self.events.push_front(ev);
        }
        res
    }

    /// Next message, waiting up to `timeout` (None: forever). `Ok(None)` on timeout.
    /// Error frames from the router come back as `Err(ClientError::Router)`;
    /// stray SendResults and Pongs are skipped.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.next_event_until(deadline) {
                Ok(Some(Event::Message(m))) => return Ok(Some(m)),
                Ok(Some(Event::Error {
                    code,
                    reason,
                    request_id,
                })) => {
                    return Err(ClientError::Router {
                        code,
                        reason,
                        request_id,
                    })
                }
                Ok(Some(Event::SendResult {
                    status,
                    reason,
                    request_id,
                    ..
                })) if status != Status::Ok => {
                    return Err(ClientError::Router {
                        code: status,
                        reason,
                        request_id,
                    })
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(None),
                Err(e) => return Err(e),
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
        match self.read_event(deadline) {
            Ok(ev) => Ok(Some(ev)),
            Err(ClientError::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_event(&mut self, deadline: Option<Instant>) -> Result<Event, ClientError> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(ev);
        }
        loop {
            let f = self.read_frame(deadline)?;
            let ev = match f.kind {
                Some(server_frame::Kind::Deliver(d)) => {
                    self.last_seq = self.last_seq.max(d.seq);
                    self.maybe_ack()?;
                    Event::Message(Message {
                        sender: d.from_user,
                        room: if d.to_room.is_empty() {
                            None
                        } else {
                            Some(d.to_room)
                        },
                        payload: d.payload,
                        seq: d.seq,
                        msg_id: d.msg_id,
                        timestamp_us: d.server_ts_us,
                    })
                }
                Some(server_frame::Kind::SendResult(r)) => Event::SendResult {
                    request_id: r.request_id,
                    status: status(r.status),
                    reason: r.reason,
                    msg_id: r.msg_id,
                },
                Some(server_frame::Kind::Error(e)) => Event::Error {
                    code: status(e.code),
                    reason: e.reason,
                    request_id: e.request_id,
                },
                Some(server_frame::Kind::Pong(p)) => Event::Pong(p.nonce),
                Some(server_frame::Kind::Ping(p)) => {
                    self.queue(client_frame::Kind::Pong(Pong { nonce: p.nonce }));
                    self.flush()?;
                    continue;
                }
                Some(server_frame::Kind::LoginResult(_))
                | Some(server_frame::Kind::RoomResult(_))
                | Some(server_frame::Kind::RoomEvent(_))
                | Some(server_frame::Kind::AccountResult(_))
                | None => continue,
            };
            return Ok(ev);
        }
    }

    fn maybe_ack(&mut self) -> Result<(), ClientError> {
        let unacked = self.last_seq - self.acked_seq;
        if unacked > 0
            && ((self.cfg.ack_every > 0 && unacked >= self.cfg.ack_every)
                || self.last_ack.elapsed() >= self.cfg.ack_interval)
        {
            self.ack_all()?;
        }
        Ok(())
    }

    /// Reads until one whole frame is buffered (or the deadline passes).
    fn read_frame(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<ringrouter_proto::v1::ServerFrame, ClientError> {
        loop {
            match next_frame(&mut self.rbuf, self.cfg.max_frame_bytes) {
                Ok(Some(body)) => {
                    return decode_server(body).map_err(|e| ClientError::Protocol(e.to_string()))
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
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
            let r = self.stream.read(&mut self.scratch);
            let n = match r {
                Ok(n) => n,
                Err(e) => {
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                        return Err(ClientError::Timeout);
                    }
                    if e.kind() == ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(self.io_closed(e));
                }
            };
            self.rbuf.extend_from_slice(&self.scratch[..n]);
            if n == 0 {
                self.closed = Some("closed by the router".into());
                // Frames still buffered are returned first on the next turn.
                if self.rbuf.is_empty() {
                    return Err(ClientError::Closed("closed by the router".into()));
                }
            }
        }
    }

    /// Takes the logged-in client apart: its socket, and the bytes already read
    /// from it but not yet decoded (frames that arrived right behind the
    /// LoginResult). [`crate::threaded::ThreadedClient`] logs in through
    /// [`Client::connect`] and then reads and writes the socket itself.
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.rbuf)
    }

    /// Sends Logout and closes the connection.
    pub fn close(mut self) -> Result<(), ClientError> {
        let _ = self.ack_all();
        self.queue(client_frame::Kind::Logout(Logout {}));
        let r = self.flush();
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        match r {
            Ok(()) | Err(ClientError::Closed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn varint_len(v: u64) -> usize {
    ringrouter_proto::codec::varint_len(v)
}
