//! Connection tasks: accept, the pre-login loop, handing a connection to its
//! user's home shard, and a session's reader and writer.
//!
//! A session's reader follows the nats-server rhythm: read a buffer, decode every
//! frame in it, route each one (queue Delivers on local sessions, append to the
//! outgoing batch of other shards), and only then await: the woken writers and
//! the flusher run after it, so each dirty session is flushed by one writev per
//! loop turn and each target shard gets one batch.

use std::cell::RefCell;
use std::future::poll_fn;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};

use ringrouter_proto::codec::{encode_frame, frame_bytes_needed, frames, split_frames};
use ringrouter_proto::fast::parse_client_at;
use ringrouter_proto::v1::{
    server_frame, AccountResult, Error as ErrorFrame, Login, LoginResult, Register, ServerFrame,
};
use ringrouter_proto::Status;

use crate::auth::AuthError;
use crate::config::AuthMode;
use crate::oneshot;
use crate::prelogin::{truncated_reason, Action, Limits, PreLogin};
use crate::server::{ConnGuard, LocalSignal, Shared};
use crate::shard::{now_us, CloseReason, Flow, Handover, Mail, SessionKey, Shard};
use crate::store::StoreError;

/// Size of a fresh read buffer.
const READ_BUF: usize = 64 * 1024;
/// Smallest free space worth a read call.
const MIN_READ: usize = 4 * 1024;

/// Accepts connections until the shard shuts down.
pub(crate) async fn accept_loop(
    shard: Rc<RefCell<Shard>>,
    shared: Arc<Shared>,
    listener: TcpListener,
    local: Rc<LocalSignal>,
) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = local.wait() => None,
        };
        let Some(res) = accepted else { break };
        match res {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                match ConnGuard::try_new(&shared) {
                    Some(guard) => {
                        monoio::spawn(serve(
                            shard.clone(),
                            shared.clone(),
                            stream,
                            guard,
                            local.clone(),
                        ));
                    }
                    None => {
                        monoio::spawn(refuse(stream, Status::Unavailable, "too many connections"));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // EMFILE and friends: do not spin.
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn error_frame(code: Status, reason: &str, request_id: u64) -> ServerFrame {
    ServerFrame {
        kind: Some(server_frame::Kind::Error(ErrorFrame {
            code: code as i32,
            reason: reason.to_owned(),
            request_id,
        })),
    }
}

async fn refuse(mut stream: TcpStream, code: Status, reason: &str) {
    let mut out = BytesMut::new();
    encode_frame(&error_frame(code, reason, 0), &mut out);
    close_bounded(&mut stream, out).await;
}

/// Longest wait for a closing frame to be written: the peer may not be reading.
const CLOSE_FLUSH: Duration = Duration::from_millis(100);

/// Writes `out` (usually ending in an Error frame) with a bounded wait, then shuts the
/// socket down.
async fn close_bounded(stream: &mut TcpStream, out: BytesMut) {
    if !out.is_empty() {
        let _ = monoio::time::timeout(CLOSE_FLUSH, stream.write_all(out)).await;
    }
    let _ = stream.shutdown().await;
}

fn login_result(request_id: u64, status: Status, reason: &str) -> LoginResult {
    LoginResult {
        request_id,
        status: status as i32,
        reason: reason.to_owned(),
        ..Default::default()
    }
}

/// Counts a connection that is not a session yet, so a shutting-down shard
/// waits for it to be told UNAVAILABLE.
struct Counted(Rc<RefCell<Shard>>);

impl Counted {
    fn new(shard: &Rc<RefCell<Shard>>) -> Self {
        shard.borrow_mut().prelogin += 1;
        Counted(shard.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut sh = self.0.borrow_mut();
        sh.prelogin -= 1;
        sh.wake_if_idle();
    }
}

/// Serves a new connection until it logs in (then hands it to its home shard or
/// runs the session here), or until it fails to within the login timeout: drives the
/// [`PreLogin`] state machine with the socket. The login deadline bounds every wait
/// (reads, writes of answers, password checks), so a client that sends and never reads
/// cannot hold a connection slot past it.
pub(crate) async fn serve(
    shard: Rc<RefCell<Shard>>,
    shared: Arc<Shared>,
    mut stream: TcpStream,
    guard: ConnGuard,
    local: Rc<LocalSignal>,
) {
    let _counted = Counted::new(&shard);
    let deadline = Instant::now() + shared.cfg.login_timeout;
    let mut pl = PreLogin::new(Limits::from_config(&shared.cfg));
    loop {
        if shared.shutdown.load(std::sync::atomic::Ordering::Acquire) || local.fired() {
            pl.shutting_down();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            pl.timed_out();
        }
        // Dropping a read, a write or a password check on timeout or shutdown is fine:
        // the connection is closed right after (after a dropped write, without writing).
        match pl.next_action() {
            Action::Write(out) => {
                let w = bounded(left, &local, stream.write_all(out)).await;
                w.then(&mut pl, |pl, (r, _)| match r {
                    Ok(_) => pl.written(),
                    Err(_) => pl.write_failed(),
                });
            }
            Action::Read { buf, max } => {
                let len = buf.len();
                let slice = monoio::buf::IoBufMut::slice_mut(buf, len..len + max);
                let r = bounded(left, &local, stream.read(slice)).await;
                r.then(&mut pl, |pl, (r, b)| match r {
                    Ok(0) => pl.eof(b.into_inner()),
                    Ok(_) => pl.read(b.into_inner()),
                    Err(_) => pl.read_failed(),
                });
            }
            Action::Authenticate(l) => {
                let a = bounded(left, &local, authenticate(&shared, &l)).await;
                a.then(&mut pl, PreLogin::authenticated);
            }
            Action::Register(r) => {
                let a = bounded(left, &local, register_account(&shared, &r)).await;
                a.then(&mut pl, PreLogin::registered);
            }
            Action::Start(s) => {
                let home = shard.borrow().home(s.user.as_bytes());
                let me = shard.borrow().id;
                if home == me {
                    run_session(
                        shard,
                        stream,
                        s.user,
                        s.device,
                        s.request_id,
                        s.leftover,
                        guard,
                    )
                    .await;
                } else {
                    hand_over(
                        &shard,
                        home,
                        stream,
                        s.user,
                        s.device,
                        s.request_id,
                        s.leftover,
                        guard,
                    );
                }
                return;
            }
            Action::Close(out) => {
                close_bounded(&mut stream, out).await;
                return;
            }
        }
    }
}

/// How a wait of the pre-login driver ended: within the login deadline, past it, or
/// cut by shutdown.
enum Bounded<T> {
    Done(T),
    TimedOut,
    ShuttingDown,
}

impl<T> Bounded<T> {
    /// Reports the outcome to the machine: `done` with the value, else the deadline or
    /// the shutdown.
    fn then(self, pl: &mut PreLogin, done: impl FnOnce(&mut PreLogin, T)) {
        match self {
            Bounded::Done(v) => done(pl, v),
            Bounded::TimedOut => pl.timed_out(),
            Bounded::ShuttingDown => pl.shutting_down(),
        }
    }
}

/// Runs `fut` for at most `left`, or until the shard shuts down.
async fn bounded<T>(
    left: Duration,
    local: &LocalSignal,
    fut: impl std::future::Future<Output = T>,
) -> Bounded<T> {
    monoio::select! {
        r = monoio::time::timeout(left, fut) => match r {
            Ok(v) => Bounded::Done(v),
            Err(_) => Bounded::TimedOut,
        },
        _ = local.wait() => Bounded::ShuttingDown,
    }
}

/// Checks a Login's credentials (the name rule, the token, the password); returns the
/// user the session will carry.
async fn authenticate(shared: &Shared, l: &Login) -> Result<String, AuthError> {
    let user = shared.auth.login(&l.user, &l.token)?;
    if shared.cfg.auth == AuthMode::Accounts {
        check_password(shared, &user, &l.password).await?;
    }
    Ok(user)
}

/// Register (accounts mode): hashes the password off the shard threads and stores the
/// account.
async fn register_account(shared: &Shared, r: &Register) -> AccountResult {
    let answer = |status: Status, reason: &str| AccountResult {
        request_id: r.request_id,
        status: status as i32,
        reason: reason.to_owned(),
        user: if status == Status::Ok {
            r.user.clone()
        } else {
            String::new()
        },
        users: Vec::new(),
    };
    if shared.cfg.auth != AuthMode::Accounts {
        return answer(
            Status::BadRequest,
            "registration needs --auth accounts (this router runs another auth mode)",
        );
    }
    // The name was checked where the frame was decoded (`prelogin`).
    if r.password.is_empty() {
        return answer(Status::BadRequest, "password is empty");
    }
    if shared.store.stats().hash_jobs >= shared.cfg.max_password_jobs {
        return answer(
            Status::RateLimited,
            "too many password operations in progress",
        );
    }
    let (tx, rx) = oneshot::channel();
    if shared
        .store
        .register(&r.user, &r.password, move |res| tx.send(res))
        .is_err()
    {
        return answer(Status::Unavailable, "the store is shut down");
    }
    match rx.await {
        Some(Ok(())) => answer(Status::Ok, ""),
        Some(Err(StoreError::Conflict)) => answer(Status::Conflict, "user already exists"),
        Some(Err(StoreError::Invalid(why))) => answer(Status::BadRequest, &why),
        Some(Err(StoreError::Closed)) | None => {
            answer(Status::Unavailable, "the store is shut down")
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "register failed");
            answer(Status::Internal, "storage error")
        }
    }
}

/// Login in accounts mode: the password must match the stored Argon2id hash.
async fn check_password(shared: &Shared, user: &str, password: &str) -> Result<(), AuthError> {
    let refused = || AuthError {
        status: Status::Unauthorized,
        reason: "wrong user name or password".into(),
    };
    if password.is_empty() {
        return Err(AuthError {
            status: Status::Unauthorized,
            reason: "a password is required (--auth accounts)".into(),
        });
    }
    if shared.store.stats().hash_jobs >= shared.cfg.max_password_jobs {
        return Err(AuthError {
            status: Status::RateLimited,
            reason: "too many password operations in progress".into(),
        });
    }
    let (tx, rx) = oneshot::channel();
    if shared
        .store
        .verify(user, password, move |res| tx.send(res))
        .is_err()
    {
        return Err(AuthError {
            status: Status::Unavailable,
            reason: "the store is shut down".into(),
        });
    }
    match rx.await {
        Some(Ok(true)) => Ok(()),
        Some(Ok(false)) | Some(Err(StoreError::NotFound)) => Err(refused()),
        Some(Err(StoreError::Invalid(_))) => Err(refused()),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "password check failed");
            Err(AuthError {
                status: Status::Unavailable,
                reason: "cannot check the password now".into(),
            })
        }
        None => Err(AuthError {
            status: Status::Unavailable,
            reason: "the store is shut down".into(),
        }),
    }
}

/// Moves a logged-in connection to its user's home shard. The fd is duplicated
/// and the original closed here, so no in-flight op of this runtime keeps it.
#[allow(clippy::too_many_arguments)]
fn hand_over(
    shard: &Rc<RefCell<Shard>>,
    home: usize,
    stream: TcpStream,
    user: String,
    device: String,
    request_id: u64,
    leftover: BytesMut,
    guard: ConnGuard,
) {
    // Safety: dup of an fd we own; the result is owned by the OwnedFd below.
    let dup = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    drop(stream);
    if dup < 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot hand a connection over");
        return;
    }
    // Safety: `dup` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(dup) };
    let h = Handover {
        fd,
        user,
        device,
        request_id,
        leftover,
        guard,
    };
    shard.borrow_mut().post(home, Mail::Handover(Box::new(h)));
}

/// Runs a connection handed over by another shard.
pub(crate) async fn adopt(shard: Rc<RefCell<Shard>>, h: Box<Handover>) {
    let Handover {
        fd,
        user,
        device,
        request_id,
        leftover,
        guard,
    } = *h;
    let std_stream = std::net::TcpStream::from(fd);
    if let Err(e) = std_stream.set_nonblocking(true) {
        tracing::warn!(error = %e, "adopting a connection failed");
        return;
    }
    let stream = match TcpStream::from_std(std_stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "adopting a connection failed");
            return;
        }
    };
    shard.borrow_mut().counters.handovers_in += 1;
    run_session(shard, stream, user, device, request_id, leftover, guard).await;
}

/// Registers the session on this (home) shard, answers the Login, and runs the
/// reader until the connection ends; then waits for the writer and forgets the session.
async fn run_session(
    shard: Rc<RefCell<Shard>>,
    mut stream: TcpStream,
    user: String,
    device: String,
    request_id: u64,
    buf: BytesMut,
    _guard: ConnGuard,
) {
    let fd = stream.as_raw_fd();
    let registered = shard.borrow_mut().register(&user, device.clone(), fd);
    let key = match registered {
        Ok(k) => k,
        Err((status, reason)) => {
            let f = ServerFrame {
                kind: Some(server_frame::Kind::LoginResult(login_result(
                    request_id, status, &reason,
                ))),
            };
            let mut out = BytesMut::new();
            encode_frame(&f, &mut out);
            close_bounded(&mut stream, out).await;
            return;
        }
    };
    {
        let mut sh = shard.borrow_mut();
        let session_id = sh.session_id(key).map_or(0, |id| id.to_u64());
        let lr = LoginResult {
            request_id,
            status: Status::Ok as i32,
            reason: String::new(),
            session_id,
            user,
            shard: sh.id as u32,
            device,
            heartbeat_ms: sh.cfg.heartbeat_interval.as_millis().min(u32::MAX as u128) as u32,
            max_frame_bytes: sh.cfg.max_frame_bytes.min(u32::MAX as usize) as u32,
        };
        // The LoginResult goes out with the first page of the offline backlog: once a
        // client holds it, what it missed is already on its way, ahead of anything new.
        sh.start_backlog(
            key,
            ServerFrame {
                kind: Some(server_frame::Kind::LoginResult(lr)),
            },
        );
    }
    let (reader, writer) = stream.into_split();
    let writer = monoio::spawn(write_loop(shard.clone(), key, writer));
    // Frames pipelined after the Login are answered after the LoginResult.
    poll_fn(|cx| {
        let mut sh = shard.borrow_mut();
        match sh.sessions.get_mut(key) {
            Some(s) if s.login_frame.is_some() && s.closing.is_none() => {
                s.drain_waiters.push(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    })
    .await;
    read_loop(&shard, key, reader, buf).await;
    shard.borrow_mut().close(key, CloseReason::PeerClosed, None);
    let _ = writer.await;
    shard.borrow_mut().remove(key);
}

async fn read_loop<R: AsyncReadRent>(
    shard: &Rc<RefCell<Shard>>,
    key: SessionKey,
    mut reader: R,
    mut buf: BytesMut,
) {
    let max_frame = shard.borrow().cfg.max_frame_bytes;
    let mut blocked: Vec<SessionKey> = Vec::new();
    loop {
        let flow = {
            let mut sh = shard.borrow_mut();
            let now = Instant::now();
            let ts = now_us();
            let mut flow = Flow::Continue;
            // Every complete frame in one chunk: one reference count for all of
            // them; payloads become slices of it.
            let (chunk, framing_error) = split_frames(&mut buf, max_frame);
            let mut bad = framing_error.map(|e| (e.status(), e.to_string()));
            for range in frames(&chunk) {
                match parse_client_at(&chunk, range) {
                    Ok(frame) => {
                        if sh.on_frame(key, frame, now, ts, &mut blocked) == Flow::Stop {
                            flow = Flow::Stop;
                            break;
                        }
                    }
                    Err(e) => {
                        bad = Some((Status::BadFrame, e.to_string()));
                        break;
                    }
                }
            }
            if let Some((code, reason)) = bad {
                if flow == Flow::Continue {
                    sh.counters.frames_rejected += 1;
                    sh.close(key, CloseReason::BadFrame, Some((code, &reason)));
                    flow = Flow::Stop;
                }
            }
            // The session's own answers (errors, Pongs, results) count against its
            // budget like deliveries do: over it, this client is not read until its
            // queue drains (or it is closed as a slow consumer).
            if !sh.drained(key) && !blocked.contains(&key) {
                blocked.push(key);
            }
            if sh.sessions.get(key).is_none_or(|s| s.closing.is_some()) {
                flow = Flow::Stop;
            }
            flow
        };
        if flow == Flow::Stop {
            return;
        }
        // Backpressure: stop reading while a local recipient is over its bound,
        // or while the outgoing batches to other shards are piling up.
        // Remote recipients pause this reader through Mail::Pause / Resume.
        if !blocked.is_empty() || shard.borrow().paused(key) {
            poll_fn(|cx| {
                let mut sh = shard.borrow_mut();
                blocked.retain(|&k| !sh.drained(k));
                match blocked.last() {
                    Some(&k) => {
                        sh.wait_drain(k, cx.waker());
                        Poll::Pending
                    }
                    None if sh.paused(key) => {
                        sh.wait_drain(key, cx.waker());
                        Poll::Pending
                    }
                    None => Poll::Ready(()),
                }
            })
            .await;
        }
        poll_fn(|cx| {
            let mut sh = shard.borrow_mut();
            if sh.sessions.get(key).is_none_or(|s| s.closing.is_some()) {
                Poll::Ready(())
            } else if sh.store_full() || sh.parked_full() {
                // Woken by the consumer once store completions bring it down.
                sh.store_waiters.push(cx.waker().clone());
                Poll::Pending
            } else if sh.pipeline_full() {
                sh.outbox_waiters.push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        let want = frame_bytes_needed(&buf).unwrap_or(0).max(MIN_READ);
        if buf.capacity() - buf.len() < want {
            buf.reserve(want.max(READ_BUF));
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = reader
            .read(monoio::buf::IoBufMut::slice_mut(buf, len..cap))
            .await;
        buf = slice.into_inner();
        match res {
            Ok(0) if !buf.is_empty() => {
                // The peer closed its sending side inside a frame: a truncated
                // frame is a BAD_FRAME like any other (it may still read it).
                let mut sh = shard.borrow_mut();
                sh.counters.frames_rejected += 1;
                let reason = truncated_reason(buf.len());
                sh.close(
                    key,
                    CloseReason::BadFrame,
                    Some((Status::BadFrame, &reason)),
                );
                return;
            }
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn write_loop<W: AsyncWriteRent>(shard: Rc<RefCell<Shard>>, key: SessionKey, mut writer: W) {
    loop {
        let next = poll_fn(|cx| {
            let mut sh = shard.borrow_mut();
            let sh = &mut *sh;
            let Some(s) = sh.sessions.get_mut(key) else {
                return Poll::Ready(None);
            };
            if !s.out.is_empty() {
                let spare = s.spare.take();
                let batch = s.out.take(spare);
                s.inflight += batch.total();
                sh.counters.payload_zero_copy_bytes += std::mem::take(&mut s.out.zero_copy_bytes);
                sh.counters.payload_copied_bytes += std::mem::take(&mut s.out.copied_bytes);
                Poll::Ready(Some(batch))
            } else if s.closing.is_some() {
                Poll::Ready(None)
            } else {
                s.writer = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let Some(mut batch) = next else { break };
        let total = batch.total();
        let mut ok = true;
        let mut writes = 0u64;
        while batch.remaining() > 0 {
            let (res, b) = writer.writev(batch).await;
            batch = b;
            writes += 1;
            match res {
                Ok(n) if n > 0 => batch.advance(n),
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        let mut sh = shard.borrow_mut();
        sh.counters.bytes_out += total as u64;
        sh.counters.writes += writes;
        let max = sh.cfg.max_pending_bytes;
        if let Some(s) = sh.sessions.get_mut(key) {
            s.inflight -= total;
            s.out.recycle(&mut batch);
            s.spare = Some(batch);
            if s.pending() <= max {
                s.over_since = None;
                s.wake_drain_waiters();
                sh.release_throttles(key);
                sh.continue_loading(key);
            }
        }
        if !ok {
            sh.close(key, CloseReason::PeerClosed, None);
            break;
        }
    }
    let sh = shard.borrow();
    if let Some(s) = sh.sessions.get(key) {
        // Wakes the reader if the peer is still connected.
        // Safety: the session's socket stays open until the session is removed.
        unsafe { libc::shutdown(s.fd, libc::SHUT_RDWR) };
    }
}
