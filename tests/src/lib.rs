//! Harness for the black-box tests: starts the real router binary on a free
//! port, waits for its `listening on` line, and kills it when dropped.
//!
//! Besides [`RouterProc`] it offers [`Raw`], a bare socket speaking the wire
//! protocol frame by frame (for malformed input and for looking at the exact
//! bytes the router sends), [`Pair`], two clients that prove the router still
//! routes, and small helpers (JWT minting, temporary files).
//!
//! Every read here has a deadline: a test never blocks forever.

pub mod tls;
pub mod wire;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringrouter_client::{Client, ClientConfig, Status};
use ringrouter_proto::codec::{decode_server, encode_frame, frame_to_vec, next_frame};
use ringrouter_proto::v1::{
    client_frame, server_frame, AccountResult, ClientFrame, CreateRoom, Deliver,
    Error as ErrorFrame, JoinRoom, Login, LoginResult, Register, RoomResult, Send, ServerFrame,
};

/// Default bound on any single wait for the router in these tests.
pub const T: Duration = Duration::from_secs(5);

/// Longest wait for the router to print its banner (or exit).
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How a router process ended when it did not start listening.
#[derive(Debug, Clone)]
pub struct Exited {
    /// Exit code (None: killed by a signal, or killed by the harness after [`START_TIMEOUT`]).
    pub code: Option<i32>,
    /// First stdout line, if any.
    pub first_line: Option<String>,
    /// Everything written to stderr.
    pub stderr: String,
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}, first line {:?}, stderr: {}",
            self.code, self.first_line, self.stderr
        )
    }
}

/// Path of the router binary built for these tests: `ringrouter-blackbox`, a
/// build of `router/src/main.rs` that cargo places beside the test executables
/// (`target/<profile>/`, one level above `deps/`).
pub fn router_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("CARGO_BIN_EXE_ringrouter-blackbox") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps/<test>");
    dir.join("ringrouter-blackbox")
}

/// Which I/O driver to force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Whatever the machine supports (io_uring here).
    Default,
    /// `MONOIO_FORCE_LEGACY_DRIVER=1`: epoll.
    Legacy,
}

/// A running router process.
pub struct RouterProc {
    child: Option<Child>,
    /// Address it listens on.
    pub addr: SocketAddr,
    /// The whole `listening on` line.
    pub banner: String,
    /// The HTTP port, from the second ready line (`ringrouter http on ADDR`); `None`
    /// with `--http-listen off`.
    pub http: Option<SocketAddr>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// The store directory made for this router when the args named none.
    _data: Option<tempfile::TempDir>,
}

impl RouterProc {
    /// Starts the router with `args` (plus `--listen 127.0.0.1:0` and
    /// `--http-listen 127.0.0.1:0` unless given).
    pub fn start(args: &[&str]) -> RouterProc {
        Self::start_with(args, Driver::Default)
    }

    /// Starts the router with `args` on the given driver.
    pub fn start_with(args: &[&str], driver: Driver) -> RouterProc {
        Self::try_start(args, driver).unwrap_or_else(|e| panic!("router did not start: {e}"))
    }

    /// Starts the router; returns its exit status and stderr if it exits before listening.
    pub fn try_start(args: &[&str], driver: Driver) -> Result<RouterProc, String> {
        Self::launch(args, driver).map_err(|e| e.to_string())
    }

    /// Starts the router. If it exits (or prints something else) instead of
    /// listening, returns how it ended. Never waits more than [`START_TIMEOUT`].
    pub fn launch(args: &[&str], driver: Driver) -> Result<RouterProc, Exited> {
        Self::launch_with(args, driver, true)
    }

    /// Starts the router with the real Argon2id parameters (≈35 ms a hash) instead of
    /// `--argon2-cheap`: for tests about the cost of password checks.
    pub fn start_real_argon2(args: &[&str]) -> RouterProc {
        Self::launch_with(args, Driver::Default, false)
            .unwrap_or_else(|e| panic!("router did not start: {e}"))
    }

    /// [`RouterProc::launch`], with `--argon2-cheap` or not.
    pub fn launch_with(
        args: &[&str],
        driver: Driver,
        cheap_argon2: bool,
    ) -> Result<RouterProc, Exited> {
        let mut cmd = Command::new(router_bin());
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        // Parallel tests must not share the default HTTP port either.
        let http_at = args.iter().position(|a| *a == "--http-listen");
        let http_off = http_at.is_some_and(|i| args.get(i + 1) == Some(&"off"));
        if http_at.is_none() {
            cmd.args(["--http-listen", "127.0.0.1:0"]);
        }
        // Every router gets its own store unless the test names one (restarts).
        let data = if args.contains(&"--data-dir") {
            None
        } else {
            let d = tempfile::tempdir().map_err(|e| Exited {
                code: None,
                first_line: None,
                stderr: format!("cannot make a data dir: {e}"),
            })?;
            cmd.arg("--data-dir").arg(d.path());
            Some(d)
        };
        // No free-space floor unless the test sets one: a CI disk with little room must
        // not make the store refuse offline messages (`store::disk`; tested on its own).
        if !args.contains(&"--min-free-disk-bytes") {
            cmd.args(["--min-free-disk-bytes", "0"]);
        }
        cmd.args(args).arg("--no-pin");
        if cheap_argon2 {
            cmd.arg("--argon2-cheap");
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        match driver {
            Driver::Legacy => {
                cmd.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
            }
            Driver::Default => {
                cmd.env_remove("MONOIO_FORCE_LEGACY_DRIVER");
            }
        }
        let mut child = cmd.spawn().map_err(|e| Exited {
            code: None,
            first_line: None,
            stderr: format!("cannot spawn {}: {e}", router_bin().display()),
        })?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                s.push_str(&line);
                s.push('\n');
            }
            s
        });
        // The first stdout line, read on a thread so a router that hangs at
        // start-up cannot hang the test; the rest is drained so the child never
        // blocks on a full pipe.
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            // The ready line, then the HTTP port's.
            let _ = line_tx.send(lines.next());
            let _ = line_tx.send(lines.next());
            for _ in lines {}
        });
        let first = line_rx.recv_timeout(START_TIMEOUT).ok().flatten();
        match first {
            Some(Ok(line)) if line.starts_with("ringrouter listening on ") => {
                let addr = line["ringrouter listening on ".len()..]
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .parse();
                let http = if http_off {
                    None
                } else {
                    match line_rx.recv_timeout(START_TIMEOUT).ok().flatten() {
                        Some(Ok(l)) => l
                            .strip_prefix("ringrouter http on ")
                            .and_then(|a| a.trim().parse().ok()),
                        _ => None,
                    }
                };
                match addr {
                    Ok(addr) => Ok(RouterProc {
                        child: Some(child),
                        addr,
                        http,
                        banner: line,
                        stderr: Some(err_thread),
                        _data: data,
                    }),
                    Err(e) => {
                        let _ = child.kill();
                        let code = child.wait().ok().and_then(|s| s.code());
                        Err(Exited {
                            code,
                            first_line: Some(line.clone()),
                            stderr: format!("bad banner {line:?}: {e}"),
                        })
                    }
                }
            }
            other => {
                // Not listening: wait (bounded) for the exit.
                let deadline = Instant::now() + START_TIMEOUT;
                let code = loop {
                    match child.try_wait() {
                        Ok(Some(st)) => break st.code(),
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break None;
                        }
                    }
                };
                let stderr = err_thread.join().unwrap_or_default();
                Err(Exited {
                    code,
                    first_line: other.and_then(Result::ok),
                    stderr,
                })
            }
        }
    }

    /// The HTTP port's address (panics with `--http-listen off`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .expect("the router has an HTTP port (--http-listen not off)")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The router's `/metrics` exposition (the HTTP answer, head included).
    pub fn metrics(&self) -> String {
        metrics_at(self.http_addr())
    }

    /// The value of the metrics line `name` (labels included, as in the text), 0 if none.
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The value of counter `name` once it reached `want` (or `within` passed), read again
    /// 300 ms later (the shards publish their counters on a tick): so a count past `want`
    /// shows too.
    pub fn metric_settled(&self, name: &str, want: f64, within: Duration) -> f64 {
        let deadline = Instant::now() + within;
        while self.metric(name) < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        self.metric(name)
    }

    /// The answer (head included) to `GET path` on the router's HTTP port.
    pub fn http_get(&self, path: &str) -> String {
        http_get_at(self.http_addr(), path)
    }

    /// The router's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// The listen address to connect to: the banner's, with an unspecified IP
    /// (`0.0.0.0`, `::`) replaced by loopback.
    pub fn connect_addr(&self) -> SocketAddr {
        let mut a = self.addr;
        if a.ip().is_unspecified() {
            a.set_ip(if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        a
    }

    /// A raw connection (not logged in).
    pub fn raw(&self) -> Raw {
        Raw::connect(self.connect_addr())
    }

    /// A raw connection logged in as `user` (its LoginResult already read).
    pub fn raw_login(&self, user: &str) -> Raw {
        let mut r = self.raw();
        let lr = r.login(user);
        assert_eq!(
            lr.status,
            Status::Ok as i32,
            "raw login of {user} refused: {lr:?}"
        );
        r
    }

    /// A raw connection logged in as `user` with `password` from `device`
    /// (`--auth accounts`); panics unless the LoginResult is OK.
    pub fn raw_login_password(&self, user: &str, password: &str, device: &str) -> Raw {
        let mut r = self.raw();
        let lr = r.login_password(user, password, device);
        assert_eq!(
            lr.status,
            Status::Ok as i32,
            "password login of {user} refused: {lr:?}"
        );
        r
    }

    /// Kills the router with SIGKILL (no shutdown of any kind) and reaps it. Its data
    /// directory stays while `self` lives.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Logs `user` in once on a raw connection and out again, so it exists (open
    /// auth: from the first login) and has no session: it sends Logout and reads up
    /// to the end of the connection. The router ends the session (drops it from the
    /// user's sessions, gives back what it had not acked) before its writer closes the
    /// socket, so once this returns, messages to `user` go to its offline queue.
    pub fn visit(&self, user: &str) {
        self.raw_login(user).logout();
    }

    /// Registers `user` with `password` (`--auth accounts`) on a fresh connection,
    /// request id [`REGISTER_REQUEST_ID`]; returns the AccountResult whatever its status.
    pub fn register(&self, user: &str, password: &str) -> AccountResult {
        let mut c = self.raw();
        let k = client_frame::Kind::Register(Register {
            request_id: REGISTER_REQUEST_ID,
            user: user.into(),
            password: password.into(),
        });
        match c.call(k, REGISTER_REQUEST_ID).0 {
            server_frame::Kind::AccountResult(a) => a,
            other => panic!("expected an AccountResult, got {other:?}"),
        }
    }

    /// A fresh connection that sent a password Login for `user` (no device name);
    /// returns it with its LoginResult, whatever the status (see [`Raw::login_password`]).
    pub fn login_password(&self, user: &str, password: &str) -> (Raw, LoginResult) {
        let mut c = self.raw();
        let lr = c.login_password(user, password, "");
        (c, lr)
    }

    /// Connects and logs in as `user`.
    pub fn client(&self, user: &str) -> Client {
        Client::connect(self.connect_addr(), ClientConfig::new(user))
            .unwrap_or_else(|e| panic!("login {user}: {e}"))
    }

    /// Connects and logs in as device `name` of `user` (timeout [`T`]).
    pub fn device(&self, user: &str, name: &str) -> Client {
        let mut cfg = ClientConfig::new(user);
        cfg.device = name.into();
        cfg.timeout = T;
        self.client_with(cfg)
            .unwrap_or_else(|e| panic!("login {user}/{name}: {e}"))
    }

    /// Connects with a custom config.
    pub fn client_with(&self, cfg: ClientConfig) -> Result<Client, ringrouter_client::ClientError> {
        Client::connect(self.connect_addr(), cfg)
    }

    /// Sends SIGTERM and returns at once (see [`RouterProc::wait_exit`]).
    pub fn sigterm(&self) {
        let pid = self.child.as_ref().expect("router still running").id();
        // Safety: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns the exit code and stderr.
    pub fn terminate(self, timeout: Duration) -> (Option<i32>, String) {
        self.sigterm();
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit (then kills it); returns the exit
    /// code (None: killed) and stderr.
    pub fn wait_exit(mut self, timeout: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("child present until it exits");
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break st.code();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let err = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (code, err)
    }
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Finds `n` user names whose home shards, for `shards` shards, are all different
/// from each other where possible (`prefix0`, ...), so tests cross shards for sure.
pub fn users_on_shards(prefix: &str, shards: usize) -> Vec<String> {
    (0..shards)
        .map(|target| {
            (0..)
                .map(|i| format!("{prefix}{i}"))
                .find(|u| ringrouter::shard::home_shard(u.as_bytes(), shards) == target)
                .expect("some name lands on every shard")
        })
        .collect()
}

/// How a [`Raw`] read ended without a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// Nothing complete arrived before the deadline.
    Timeout,
    /// The router closed the connection (EOF or reset) and every complete frame was read.
    Closed(String),
    /// The bytes from the router are not frames.
    Bad(String),
}

/// A bare connection speaking the wire protocol frame by frame.
pub struct Raw {
    /// The socket.
    pub stream: TcpStream,
    buf: BytesMut,
    scratch: Vec<u8>,
    closed: Option<String>,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raw")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

/// Largest frame [`Raw`] accepts from the router.
const RAW_MAX_FRAME: usize = 64 << 20;

/// Request id of the Register sent by [`RouterProc::register`].
pub const REGISTER_REQUEST_ID: u64 = 3;

/// Request id of the CreateRoom sent by [`Raw::create_room`].
pub const CREATE_ROOM_REQUEST_ID: u64 = 11;

/// Request id of the JoinRoom sent by [`Raw::join_room`].
pub const JOIN_ROOM_REQUEST_ID: u64 = 12;

impl Raw {
    /// Connects (no login).
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect_timeout(&addr, T)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        s.set_nodelay(true).expect("TCP_NODELAY");
        Raw::from_stream(s)
    }

    /// Wraps a connected socket.
    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            scratch: vec![0; 64 * 1024],
            closed: None,
        }
    }

    /// Writes raw bytes.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Encodes and writes one frame; panics if the write fails.
    pub fn send(&mut self, kind: client_frame::Kind) {
        let f = ClientFrame { kind: Some(kind) };
        let mut bytes = BytesMut::new();
        encode_frame(&f, &mut bytes);
        self.write(&bytes)
            .unwrap_or_else(|e| panic!("writing {f:?}: {e}"));
    }

    /// Writes one frame whose body is `body` (any bytes), with a correct length prefix.
    pub fn send_body(&mut self, body: &[u8]) {
        self.write(&wire::frame(body)).expect("writing a raw frame");
    }

    /// Sends Login{user} and reads up to the LoginResult (whatever its status).
    pub fn login(&mut self, user: &str) -> LoginResult {
        self.login_with(Login {
            request_id: 1,
            user: user.into(),
            device: "raw".into(),
            ..Default::default()
        })
    }

    /// Sends a password Login{user, password, device} (request id 1) and reads up to
    /// the LoginResult (whatever its status).
    pub fn login_password(&mut self, user: &str, password: &str, device: &str) -> LoginResult {
        self.login_with(Login {
            request_id: 1,
            user: user.into(),
            password: password.into(),
            device: device.into(),
            ..Default::default()
        })
    }

    /// Sends `login` and reads up to the LoginResult (whatever its status).
    /// An Error frame instead of a LoginResult panics.
    pub fn login_with(&mut self, login: Login) -> LoginResult {
        self.send(client_frame::Kind::Login(login));
        match self.next(T) {
            Ok(ServerFrame {
                kind: Some(server_frame::Kind::LoginResult(r)),
            }) => r,
            Ok(other) => panic!("waiting for LoginResult, got {other:?}"),
            Err(e) => panic!("waiting for LoginResult: {e:?}"),
        }
    }

    /// The next frame body as sent by the router (raw bytes, not decoded).
    pub fn next_body(&mut self, timeout: Duration) -> Result<Bytes, ReadEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            match next_frame(&mut self.buf, RAW_MAX_FRAME) {
                Ok(Some(body)) => return Ok(body),
                Ok(None) => {}
                Err(e) => return Err(ReadEnd::Bad(e.to_string())),
            }
            if let Some(why) = &self.closed {
                return Err(if self.buf.is_empty() {
                    ReadEnd::Closed(why.clone())
                } else {
                    ReadEnd::Bad(format!(
                        "connection closed ({why}) inside a frame, {} bytes buffered",
                        self.buf.len()
                    ))
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadEnd::Timeout);
            }
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .expect("set_read_timeout");
            match self.stream.read(&mut self.scratch) {
                Ok(0) => self.closed = Some("EOF".into()),
                Ok(n) => self.buf.extend_from_slice(&self.scratch[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ReadEnd::Timeout)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => self.closed = Some(e.to_string()),
            }
        }
    }

    /// The next frame, decoded.
    pub fn next(&mut self, timeout: Duration) -> Result<ServerFrame, ReadEnd> {
        let body = self.next_body(timeout)?;
        decode_server(body).map_err(|e| ReadEnd::Bad(e.to_string()))
    }

    /// The next frame's kind; panics on timeout, close, or an empty frame.
    pub fn next_kind(&mut self, timeout: Duration) -> server_frame::Kind {
        match self.next(timeout) {
            Ok(ServerFrame { kind: Some(k) }) => k,
            Ok(f) => panic!("frame without a kind: {f:?}"),
            Err(e) => panic!("expected a frame, got {e:?}"),
        }
    }

    /// The next frame, which must be an Error; skips heartbeat Pings.
    pub fn expect_error(&mut self, timeout: Duration) -> ErrorFrame {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_kind(deadline.saturating_duration_since(Instant::now())) {
                server_frame::Kind::Error(e) => return e,
                server_frame::Kind::Ping(_) => continue,
                other => panic!("expected an Error frame, got {other:?}"),
            }
        }
    }

    /// Reads until the router closes the connection; returns the frames seen on
    /// the way. Panics if it is still open after `timeout`.
    pub fn read_until_closed(&mut self, timeout: Duration) -> Vec<ServerFrame> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Ok(f) => frames.push(f),
                Err(ReadEnd::Closed(_)) => return frames,
                Err(ReadEnd::Timeout) => panic!(
                    "connection still open after {timeout:?} (frames seen: {})",
                    frames.len()
                ),
                Err(ReadEnd::Bad(e)) => panic!("bad bytes from the router: {e}"),
            }
        }
    }

    /// Reads until the connection ends; returns the frames seen and how it
    /// ended: `Closed`, or `Bad` when the router cut it inside a frame (a
    /// partially written frame before a hard close). Panics if it is still open
    /// after `timeout` or on bytes that are not frames.
    pub fn read_until_end(&mut self, timeout: Duration) -> (Vec<ServerFrame>, ReadEnd) {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Ok(f) => frames.push(f),
                Err(ReadEnd::Timeout) => panic!(
                    "connection still open after {timeout:?} (frames seen: {})",
                    frames.len()
                ),
                Err(e @ ReadEnd::Closed(_)) => return (frames, e),
                Err(ReadEnd::Bad(e)) if self.closed.is_some() => return (frames, ReadEnd::Bad(e)),
                Err(ReadEnd::Bad(e)) => panic!("bad bytes from the router: {e}"),
            }
        }
    }

    /// Reads the next `n` Delivers, skipping heartbeat Pings; panics on anything else.
    pub fn delivers(&mut self, n: usize, timeout: Duration) -> Vec<Deliver> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_kind(deadline.saturating_duration_since(Instant::now())) {
                server_frame::Kind::Deliver(d) => out.push(d),
                server_frame::Kind::Ping(_) => {}
                other => panic!(
                    "expected a Deliver ({} of {n} so far), got {other:?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Like [`Raw::delivers`], but RoomEvents (joins, leaves) are skipped too.
    pub fn room_delivers(&mut self, n: usize, timeout: Duration) -> Vec<Deliver> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_kind(deadline.saturating_duration_since(Instant::now())) {
                server_frame::Kind::Deliver(d) => out.push(d),
                server_frame::Kind::Ping(_) | server_frame::Kind::RoomEvent(_) => {}
                other => panic!(
                    "expected a Deliver ({} of {n} so far), got {other:?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Reads Delivers until `n` arrived or `timeout` passed, skipping Pings and
    /// RoomEvents; returns what arrived (fewer than `n` on timeout). Unlike
    /// [`Raw::delivers`], running out of time is not a failure; any other frame, a
    /// close or bad bytes panic.
    pub fn collect_delivers(&mut self, n: usize, timeout: Duration) -> Vec<Deliver> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Ok(f) => match f.kind {
                    Some(server_frame::Kind::Deliver(d)) => out.push(d),
                    Some(server_frame::Kind::Ping(_)) | Some(server_frame::Kind::RoomEvent(_)) => {}
                    other => panic!("unexpected {other:?}"),
                },
                Err(ReadEnd::Timeout) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        out
    }

    /// Acks every Deliver up to `seq`.
    pub fn ack(&mut self, seq: u64) {
        self.send(client_frame::Kind::Ack(ringrouter_proto::v1::Ack {
            up_to_seq: seq,
        }));
    }

    /// Sends a message to `to` asking for a SendResult with `request_id`.
    pub fn send_to(&mut self, to: &str, payload: &[u8], request_id: u64) {
        self.send(send_kind(to, "", payload, true, request_id));
    }

    /// Reads up to the SendResult for `request_id` (after pipelined Sends) and
    /// returns its status. Other frames are skipped, but an earlier SendResult
    /// that is not OK panics.
    pub fn wait_send_result(&mut self, request_id: u64) -> i32 {
        loop {
            match self.next_non_ping(T) {
                server_frame::Kind::SendResult(r) if r.request_id == request_id => return r.status,
                server_frame::Kind::SendResult(r) => {
                    assert_eq!(r.status, Status::Ok as i32, "{r:?}")
                }
                _ => {}
            }
        }
    }

    /// Like [`Raw::wait_send_result`], but earlier SendResults may have any status.
    pub fn wait_send_result_any(&mut self, request_id: u64) -> i32 {
        loop {
            if let server_frame::Kind::SendResult(r) = self.next_non_ping(T) {
                if r.request_id == request_id {
                    return r.status;
                }
            }
        }
    }

    /// Creates room `name` with `password` (empty: none), request id
    /// [`CREATE_ROOM_REQUEST_ID`]; returns the RoomResult whatever its status.
    pub fn create_room(&mut self, name: &str, password: &str) -> RoomResult {
        let k = client_frame::Kind::CreateRoom(CreateRoom {
            request_id: CREATE_ROOM_REQUEST_ID,
            name: name.into(),
            password: password.into(),
            members: Vec::new(),
        });
        room_result(self.call(k, CREATE_ROOM_REQUEST_ID).0)
    }

    /// Joins `room` (a name or a join code) with `password`, request id
    /// [`JOIN_ROOM_REQUEST_ID`]; returns the RoomResult whatever its status.
    pub fn join_room(&mut self, room: &str, password: &str) -> RoomResult {
        let k = client_frame::Kind::JoinRoom(JoinRoom {
            request_id: JOIN_ROOM_REQUEST_ID,
            room: room.into(),
            password: password.into(),
        });
        room_result(self.call(k, JOIN_ROOM_REQUEST_ID).0)
    }

    /// Sends a message to `room` asking for a SendResult with `request_id`; returns
    /// its status.
    pub fn send_room(&mut self, room: &str, payload: &[u8], request_id: u64) -> i32 {
        let k = send_kind("", room, payload, true, request_id);
        match self.call(k, request_id).0 {
            server_frame::Kind::SendResult(r) => r.status,
            other => panic!("expected a SendResult, got {other:?}"),
        }
    }

    /// The next frame that is not a Ping (Delivers included); panics on timeout or close.
    pub fn next_non_ping(&mut self, timeout: Duration) -> server_frame::Kind {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_kind(deadline.saturating_duration_since(Instant::now())) {
                server_frame::Kind::Ping(_) => {}
                other => return other,
            }
        }
    }

    /// Sends a request and reads up to the RoomResult, AccountResult, SendResult or
    /// Error that answers `request_id`; returns it and the other frames seen on the
    /// way (events, deliveries), Pings excepted.
    pub fn call(
        &mut self,
        kind: client_frame::Kind,
        request_id: u64,
    ) -> (server_frame::Kind, Vec<server_frame::Kind>) {
        self.send(kind);
        let mut others = Vec::new();
        loop {
            let k = self.next_non_ping(T);
            let id = match &k {
                server_frame::Kind::RoomResult(r) => Some(r.request_id),
                server_frame::Kind::AccountResult(r) => Some(r.request_id),
                server_frame::Kind::SendResult(r) => Some(r.request_id),
                server_frame::Kind::Error(e) => Some(e.request_id),
                _ => None,
            };
            if id == Some(request_id) {
                return (k, others);
            }
            others.push(k);
        }
    }

    /// Sends a Ping with `nonce` and reads up to its Pong; returns the frames that
    /// came before it (heartbeat Pings excepted). The router answers a connection's
    /// frames in order, so everything sent before the Ping has been handled by the
    /// session's shard once the Pong is back.
    pub fn ping_pong(&mut self, nonce: u64) -> Vec<server_frame::Kind> {
        self.send(client_frame::Kind::Ping(ringrouter_proto::v1::Ping {
            nonce,
        }));
        let mut before = Vec::new();
        loop {
            match self.next_non_ping(T) {
                server_frame::Kind::Pong(p) if p.nonce == nonce => return before,
                other => before.push(other),
            }
        }
    }

    /// Like [`Raw::send_room`], but also returns every other frame that arrived
    /// before the SendResult (Delivers, events), so the caller can check them.
    pub fn send_room_seen(
        &mut self,
        room: &str,
        payload: &[u8],
        request_id: u64,
    ) -> (i32, Vec<server_frame::Kind>) {
        let k = send_kind("", room, payload, true, request_id);
        match self.call(k, request_id) {
            (server_frame::Kind::SendResult(r), others) => (r.status, others),
            (other, _) => panic!("expected a SendResult, got {other:?}"),
        }
    }

    /// Sends Logout and reads up to the end of the connection; returns the frames that
    /// came before it. When it returns, the router has ended the session: it is no
    /// longer among the user's sessions and what it had not acked is queued again.
    pub fn logout(mut self) -> Vec<ServerFrame> {
        self.send(client_frame::Kind::Logout(ringrouter_proto::v1::Logout {}));
        let (frames, end) = self.read_until_end(T);
        assert!(
            matches!(end, ReadEnd::Closed(_)),
            "logout ended with {end:?} after {frames:?}"
        );
        frames
    }

    /// Half-closes the connection (no more writes; reads still work).
    pub fn shutdown_write(&self) {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown(SHUT_WR)");
    }
}

/// The bytes of one client frame, length prefix included (for pipelining several
/// frames in one write with [`Raw::write`]).
pub fn client_frame_bytes(kind: client_frame::Kind) -> Vec<u8> {
    frame_to_vec(&ClientFrame { kind: Some(kind) })
}

/// The bytes of a Send of `payload` to user `to` (see [`client_frame_bytes`]).
pub fn send_frame_bytes(to: &str, payload: &[u8], want_result: bool, request_id: u64) -> Vec<u8> {
    client_frame_bytes(send_kind(to, "", payload, want_result, request_id))
}

/// The bytes of a Send of `payload` to `room` (see [`client_frame_bytes`]).
pub fn room_send_frame_bytes(
    room: &str,
    payload: &[u8],
    want_result: bool,
    request_id: u64,
) -> Vec<u8> {
    client_frame_bytes(send_kind("", room, payload, want_result, request_id))
}

fn send_kind(
    to_user: &str,
    to_room: &str,
    payload: &[u8],
    want_result: bool,
    request_id: u64,
) -> client_frame::Kind {
    client_frame::Kind::Send(Send {
        request_id,
        to_user: to_user.into(),
        to_room: to_room.into(),
        payload: payload.to_vec().into(),
        want_result,
        ..Default::default()
    })
}

/// The RoomResult in `kind`; panics on any other frame.
pub fn room_result(kind: server_frame::Kind) -> RoomResult {
    match kind {
        server_frame::Kind::RoomResult(r) => r,
        other => panic!("expected a RoomResult, got {other:?}"),
    }
}

/// Panics unless `e` carries `code` and a non-empty reason.
pub fn assert_error(e: &ErrorFrame, code: Status) {
    assert_eq!(
        e.code,
        code as i32,
        "expected {}, got {:?}: {:?}",
        code.short_name(),
        Status::try_from(e.code),
        e.reason
    );
    assert!(!e.reason.is_empty(), "error {code:?} without a reason");
}

/// Resident memory (VmRSS) of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Two clients on different shards (when there are two), used to show that the
/// router keeps routing while a test abuses other connections.
pub struct Pair {
    /// First user.
    pub a: Client,
    /// Second user.
    pub b: Client,
    n: u64,
}

impl Pair {
    /// Logs in two users named after `prefix`, homed on shards 0 and 1 when `shards >= 2`.
    pub fn new(r: &RouterProc, prefix: &str, shards: usize) -> Pair {
        let (ua, ub) = if shards >= 2 {
            let u = users_on_shards(prefix, shards);
            (u[0].clone(), u[1].clone())
        } else {
            (format!("{prefix}-a"), format!("{prefix}-b"))
        };
        Pair {
            a: r.client(&ua),
            b: r.client(&ub),
            n: 0,
        }
    }

    /// One message each way, each confirmed by a SendResult and received with
    /// the right sender and payload. Panics (with `context`) otherwise.
    pub fn exchange(&mut self, context: &str) {
        self.n += 1;
        let n = self.n;
        one_way(&mut self.a, &mut self.b, n, context);
        one_way(&mut self.b, &mut self.a, n, context);
    }
}

fn one_way(from: &mut Client, to: &mut Client, n: u64, context: &str) {
    let payload = format!("pair message {n} from {}", from.user());
    let to_user = to.user().to_owned();
    from.send_wait(&to_user, payload.as_bytes())
        .unwrap_or_else(|e| panic!("[{context}] pair send {n}: {e}"));
    let m = to
        .recv(Some(T))
        .unwrap_or_else(|e| panic!("[{context}] pair recv {n}: {e}"))
        .unwrap_or_else(|| panic!("[{context}] pair message {n} not received"));
    assert_eq!(m.sender, from.user(), "[{context}]");
    assert_eq!(&m.payload[..], payload.as_bytes(), "[{context}]");
}

/// An HS256 JWT with `sub` and `exp = now + exp_in_secs` (negative: expired).
pub fn jwt(secret: &[u8], sub: &str, exp_in_secs: i64) -> String {
    jwt_with(jsonwebtoken::Algorithm::HS256, secret, sub, exp_in_secs)
}

/// Like [`jwt`], signed with another HMAC algorithm.
pub fn jwt_with(
    alg: jsonwebtoken::Algorithm,
    secret: &[u8],
    sub: &str,
    exp_in_secs: i64,
) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: i64,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &Claims {
            sub,
            exp: now + exp_in_secs,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("encoding a JWT")
}

/// A file in the temp directory, removed on drop.
#[derive(Debug)]
pub struct TempFile {
    /// Its path.
    pub path: std::path::PathBuf,
}

impl TempFile {
    /// Creates a uniquely named file holding `contents`.
    pub fn new(name: &str, contents: &[u8]) -> TempFile {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "ringrouter-test-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        TempFile { path }
    }

    /// The path as a &str (for command-line flags).
    pub fn as_str(&self) -> &str {
        self.path.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connects with a small receive buffer (set before connect, so the advertised
/// window stays small): a peer that does not read backs up quickly.
pub fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let s =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).expect("socket");
    s.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    s.connect_timeout(&addr.into(), T)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_nodelay(true).expect("TCP_NODELAY");
    s.into()
}

/// A client config for `user` with the usual test timeout.
pub fn cfg(user: &str) -> ClientConfig {
    let mut c = ClientConfig::new(user);
    c.timeout = T;
    c
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
/// For waiting on a state change the router makes asynchronously (a freed slot),
/// never as an assertion by itself.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the kernel holds for one IPv4 TCP socket of this machine, from
/// `/proc/net/tcp`: `(tx_queue, rx_queue)` of the socket bound to `local` and
/// connected to `peer`. tx_queue is what it sent and the peer has not acked (or
/// not sent yet), rx_queue what arrived and its owner has not read. It sees the
/// router's sockets too (same network namespace), which is how the tests tell
/// bytes inside the router from bytes in socket buffers.
pub fn tcp_queues(local: SocketAddr, peer: SocketAddr) -> Option<(u64, u64)> {
    tcp_entry(local, peer).map(|(_, tx, rx)| (tx, rx))
}

/// The state of the IPv4 TCP socket bound to `local` and connected to `peer`, as
/// `/proc/net/tcp` gives it (1 = ESTABLISHED; see [`TCP_ESTABLISHED`]); None when there
/// is no such socket. Lets a test see that the router closed a connection without
/// reading from it (reading would change what the router does).
pub fn tcp_state(local: SocketAddr, peer: SocketAddr) -> Option<u8> {
    tcp_entry(local, peer).map(|(st, _, _)| st)
}

/// `/proc/net/tcp`'s state of an established connection.
pub const TCP_ESTABLISHED: u8 = 1;

fn tcp_entry(local: SocketAddr, peer: SocketAddr) -> Option<(u8, u64, u64)> {
    fn hex(a: SocketAddr) -> Option<String> {
        match a {
            SocketAddr::V4(v4) => Some(format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(v4.ip().octets()),
                v4.port()
            )),
            SocketAddr::V6(_) => None,
        }
    }
    let (l, p) = (hex(local)?, hex(peer)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() > 4 && cols[1] == l && cols[2] == p {
            let (tx, rx) = cols[4].split_once(':')?;
            Some((
                u8::from_str_radix(cols[3], 16).ok()?,
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            ))
        } else {
            None
        }
    })
}

/// A thread that keeps up to `window` confirmed Sends in flight on one connection,
/// forever: frame `i` (from `frame(i)`, which must ask for a SendResult with request
/// id `i + 1`) is written, and `i` is recorded once its SendResult OK arrives. It
/// stops when the connection ends (the router was killed) or on [`ConfirmedSender::stop`].
/// For crash tests: kill the router while confirmed sends are in flight, then check
/// that every confirmed message survived.
pub struct ConfirmedSender {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    confirmed: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    thread: std::thread::JoinHandle<Result<u64, String>>,
}

impl ConfirmedSender {
    /// Starts sending on `c` (logged in).
    pub fn start(
        mut c: Raw,
        window: u64,
        frame: impl Fn(u64) -> Vec<u8> + std::marker::Send + 'static,
    ) -> ConfirmedSender {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let confirmed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let thread = {
            let (stop, confirmed) = (stop.clone(), confirmed.clone());
            std::thread::spawn(move || {
                let (mut sent, mut answered) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let mut bytes = Vec::new();
                    while sent - answered < window {
                        bytes.extend(frame(sent));
                        sent += 1;
                    }
                    if c.write(&bytes).is_err() {
                        return Ok(sent);
                    }
                    // One answer at least, then whatever else is already there.
                    let mut wait = T;
                    loop {
                        match c.next(wait) {
                            Ok(f) => match f.kind {
                                Some(server_frame::Kind::SendResult(r)) => {
                                    if r.status != Status::Ok as i32 {
                                        return Err(format!(
                                            "send {} refused: {r:?}",
                                            r.request_id
                                        ));
                                    }
                                    answered += 1;
                                    confirmed
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .push(r.request_id - 1);
                                }
                                Some(server_frame::Kind::Ping(_))
                                | Some(server_frame::Kind::RoomEvent(_)) => {}
                                other => return Err(format!("sender got {other:?}")),
                            },
                            Err(ReadEnd::Timeout) if wait.is_zero() => break,
                            Err(ReadEnd::Timeout) => {
                                return Err(format!("no SendResult within {T:?}"))
                            }
                            Err(_) => return Ok(sent),
                        }
                        wait = Duration::ZERO;
                    }
                }
                Ok(sent)
            })
        };
        ConfirmedSender {
            stop,
            confirmed,
            thread,
        }
    }

    /// How many sends were confirmed so far.
    pub fn confirmed(&self) -> usize {
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// True once the thread has stopped (the connection ended, or it failed).
    pub fn finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread (after the router died, or after [`ConfirmedSender::stop`]);
    /// returns the numbers of the confirmed sends and how many were written.
    pub fn join(self) -> (Vec<u64>, u64) {
        let sent = self
            .thread
            .join()
            .expect("sender thread")
            .unwrap_or_else(|e| panic!("{e}"));
        let confirmed =
            std::mem::take(&mut *self.confirmed.lock().unwrap_or_else(|e| e.into_inner()));
        (confirmed, sent)
    }

    /// Asks the thread to stop after its current round.
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A number in `lo..hi` that differs from run to run (clock nanoseconds; printed by
/// the callers, so a failing run can be told apart).
pub fn pseudo_random(lo: u64, hi: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    lo + u64::from(nanos) % (hi - lo).max(1)
}

/// Checks what a user received after a crash and restart against what the sender had
/// confirmed: `got` in strictly increasing order (send order, nothing twice), only
/// numbers that were sent (`< sent`, of the `wanted` kind), and every confirmed one.
pub fn assert_survivors(
    who: &str,
    got: &[u64],
    confirmed: &[u64],
    sent: u64,
    wanted: impl Fn(u64) -> bool,
) {
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "{who}: out of order or duplicated after the restart: {got:?}"
    );
    assert!(
        got.iter().all(|&i| i < sent && wanted(i)),
        "{who}: got messages that were never sent to it: {got:?}"
    );
    let have: std::collections::HashSet<u64> = got.iter().copied().collect();
    let lost: Vec<u64> = confirmed
        .iter()
        .copied()
        .filter(|&i| wanted(i) && !have.contains(&i))
        .collect();
    assert!(
        lost.is_empty(),
        "{who}: {} confirmed messages lost by the crash: {lost:?}",
        lost.len()
    );
}

/// The `/metrics` exposition of the router whose HTTP port is `http` (the HTTP answer,
/// head included): for a thread that samples it while the test drives the router.
pub fn metrics_at(http: SocketAddr) -> String {
    http_get_at(http, "/metrics")
}

/// The whole answer (head included) to `GET path` on the HTTP port `http` (the
/// connection is closed after it).
pub fn http_get_at(http: SocketAddr, path: &str) -> String {
    let t = Duration::from_secs(10);
    http_get_on(TcpStream::connect_timeout(&http, t).expect("http"), path)
}

/// [`http_get_at`] on a connection already made.
pub fn http_get_on(mut s: TcpStream, path: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("request");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Asserts that shard 0's store queue reached its bound (else the test showed nothing)
/// and never went past it and the reserve kept for sessions with nothing in flight
/// (16 384 + 2 048 requests; the gauge `ringrouter_shard_store_queue_requests_peak`).
pub fn assert_store_queue_filled_within_its_bound(r: &RouterProc) {
    let peak = r.metric("ringrouter_shard_store_queue_requests_peak{shard=\"0\"}");
    assert!(peak >= 12_000.0, "the queue never filled: {peak}");
    assert!(
        peak <= (16_384 + 2_048) as f64,
        "store queue past its bound and reserve: {peak}"
    );
}
