//! A new connection until it is a session: the accept loop, the driver of the
//! pre-login state machine (`crate::prelogin`: bytes in, actions out) with the socket,
//! the store round trips it asks for (password checks, Register), and handing a
//! logged-in connection to its user's home shard.

use crate::shard::resume::ResumeAsk;
use std::cell::RefCell;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::net::{TcpListener, TcpStream};

use ringrouter_proto::codec::encode_frame;
use ringrouter_proto::v1::{AccountResult, Login, Register};
use ringrouter_proto::{reply, Status};

use super::close_bounded;
use super::session::start_session;
use super::stream::Conn;
use crate::auth::AuthError;
use crate::config::AuthMode;
use crate::prelogin::{Action, Limits, PreLogin};
use crate::shard::{Handover, Mail, Shard};
use crate::shared::{ConnGuard, LocalSignal, Shared};
use crate::store::StoreError;
use crate::transport::Layers;

/// Accepts connections until the shard shuts down.
pub(crate) async fn accept_loop(
    shard: Rc<RefCell<Shard>>,
    shared: Arc<Shared>,
    listener: TcpListener,
    local: Rc<LocalSignal>,
) {
    // Accept failures since the last one logged (out of descriptors, they come every
    // 10 ms a shard: 1 775 warnings in 5 s): one line a second with the count.
    let mut failed: u64 = 0;
    let mut logged: Option<std::time::Instant> = None;
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = local.wait() => None,
        };
        let Some(res) = accepted else { break };
        match res {
            Ok((stream, peer)) => {
                // TLS handshakes at their bound (or its address at its share): its
                // ClientHello would be refused; the connection goes now, before its
                // task, its TLS state and its read.
                let from = crate::address::address_key(peer.ip());
                if shared
                    .handshakes
                    .as_ref()
                    .is_some_and(|h| h.refuse_new(from))
                {
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                match ConnGuard::try_new(&shared.conns, peer.ip()) {
                    Ok(guard) => {
                        monoio::spawn(serve(
                            shard.clone(),
                            shared.clone(),
                            stream,
                            guard,
                            local.clone(),
                        ));
                    }
                    // Over TLS the refusal would need a handshake: just close.
                    Err(_) if shared.tls.is_some() => drop(stream),
                    Err(full) => {
                        // At most MAX_REFUSING at a time; past it, closed unanswered.
                        super::Refusing::spawn(refuse(stream, Status::Unavailable, full.reason()));
                    }
                }
            }
            Err(e) => {
                failed += 1;
                let now = std::time::Instant::now();
                if logged.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1))
                {
                    tracing::warn!(error = %e, failures = failed, "accept failed");
                    failed = 0;
                    logged = Some(now);
                }
                // EMFILE and friends: do not spin.
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn refuse(mut stream: TcpStream, code: Status, reason: &str) {
    let mut out = BytesMut::new();
    encode_frame(&reply::error(code, reason, 0), &mut out);
    close_bounded(&mut stream, out).await;
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
    stream: TcpStream,
    guard: ConnGuard,
    local: Rc<LocalSignal>,
) {
    match Conn::accepted(stream, &shared, false) {
        Ok(conn) => prelogin(shard, shared, conn, guard, local).await,
        Err(e) => tracing::warn!(error = %e, "cannot start TLS on a connection"),
    }
}

/// The pre-login conversation over `conn` (plain TCP, TLS or WebSocket), then the
/// session on its home shard.
pub(crate) async fn prelogin(
    shard: Rc<RefCell<Shard>>,
    shared: Arc<Shared>,
    mut conn: Conn,
    guard: ConnGuard,
    local: Rc<LocalSignal>,
) {
    let _counted = Counted::new(&shard);
    let deadline = Instant::now() + shared.cfg.login_timeout;
    // Registers are counted by address; unknown (no address) counts as one address.
    let peer = conn.tcp.peer_addr().ok().map(|a| a.ip());
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
        let action = pl.next_action();
        // The Error frames queued since the last turn (a refusal, a timeout, a close).
        for status in pl.take_rejected() {
            shard.borrow_mut().counters.reject(status);
        }
        match action {
            Action::Write(out) => {
                let w = bounded(left, &local, conn.write_all(out)).await;
                w.then(&mut pl, |pl, r| match r {
                    Ok(_) => pl.written(),
                    Err(_) => pl.write_failed(),
                });
            }
            Action::Read { buf, max } => {
                let r = bounded(left, &local, conn.read(buf, max)).await;
                r.then(&mut pl, |pl, (r, b)| match r {
                    Ok(0) => pl.eof(b),
                    Ok(_) => pl.read(b),
                    Err(_) => pl.read_failed(),
                });
            }
            Action::Authenticate(l) => {
                let a = bounded(left, &local, authenticate(&shared, &l)).await;
                if let Bounded::Done(Err(e)) = &a {
                    shard.borrow_mut().counters.login_failed(e.status);
                }
                a.then(&mut pl, PreLogin::authenticated);
            }
            Action::Register(r) => {
                let a = bounded(left, &local, register_account(&shared, &r, peer)).await;
                a.then(&mut pl, PreLogin::registered);
            }
            Action::Start(s) => {
                // Nothing of the pre-login conversation outlives it: this task ends
                // here, and the session runs in tasks of its own.
                drop(pl);
                let Conn {
                    tcp: stream,
                    layers,
                    ..
                } = conn;
                let home = shard.borrow().home(s.user.as_bytes());
                let me = shard.borrow().id;
                if home == me {
                    start_session(
                        &shard,
                        stream,
                        s.user,
                        s.device,
                        s.request_id,
                        s.resume,
                        s.leftover,
                        layers,
                        guard,
                    );
                } else {
                    hand_over(
                        &shard,
                        home,
                        stream,
                        s.user,
                        s.device,
                        s.request_id,
                        s.resume,
                        s.leftover,
                        layers,
                        guard,
                    );
                }
                return;
            }
            Action::Close(out) => {
                let (code, reason) = prelogin_ws_close(pl.closed_with());
                conn.close_bounded_with(out, code, reason).await;
                return;
            }
        }
    }
}

/// The WebSocket close code and reason of a conversation the router ends before login:
/// the closing Error's status, as a browser sees it (`ws_close` after login).
fn prelogin_ws_close(status: Option<Status>) -> (u16, &'static str) {
    use crate::transport::ws::code;
    match status {
        Some(Status::BadFrame) => (code::INVALID, "bad frame"),
        Some(Status::TooLarge) => (code::TOO_BIG, "frame too large"),
        Some(Status::Unavailable) => (code::GOING_AWAY, "shutting down"),
        Some(Status::Timeout) => (code::POLICY, "login timeout"),
        Some(Status::Unauthorized) => (code::POLICY, "too many failed logins"),
        Some(_) => (code::POLICY, "refused"),
        None => (code::NORMAL, ""),
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

/// The reason of a Login refused while resident memory is over `--max-memory`.
pub(crate) const MEMORY_FULL: &str =
    "the router's memory is over --max-memory: no new session now, try again later";

/// Checks a Login's credentials (the name rule, the token, the password); returns the
/// user the session will carry. Refused first while memory is over the ceiling.
async fn authenticate(shared: &Shared, l: &Login) -> Result<String, AuthError> {
    if shared.memory.refuses() {
        return Err(AuthError {
            status: Status::Unavailable,
            reason: MEMORY_FULL.into(),
        });
    }
    let user = shared.auth.login(&l.user, &l.token)?;
    if shared.cfg.auth == AuthMode::Accounts {
        check_password(shared, &user, &l.password).await?;
    }
    Ok(user)
}

/// Register (accounts mode) from `peer`: admitted by [`super::signup::SignupGate`]
/// (RATE_LIMITED past its bounds, before any store work), hashes the password off the
/// shard threads and stores the account.
async fn register_account(shared: &Shared, r: &Register, peer: Option<IpAddr>) -> AccountResult {
    let answer = |status: Status, reason: &str| {
        let user = if status == Status::Ok {
            r.user.clone()
        } else {
            String::new()
        };
        reply::account_result(r.request_id, status, reason, user, Vec::new())
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
    // Held until the answer (or until the connection gives up on it).
    let _admitted = match shared.signup.admit(peer, Instant::now()) {
        Ok(a) => a,
        Err(why) => return answer(Status::RateLimited, why.reason()),
    };
    let (tx, rx) = crate::turns::answer();
    if shared
        .store
        .register(&r.user, &r.password, move |res| {
            // The receiver is gone only when the connection task was dropped.
            let _ = tx.send(res);
        })
        .is_err()
    {
        return answer(Status::Unavailable, "the store is shut down");
    }
    // A dropped sender (the store lost the request) reads as `None`.
    match rx.await.ok() {
        Some(Ok(())) => answer(Status::Ok, ""),
        Some(Err(StoreError::Conflict)) => answer(Status::Conflict, "user already exists"),
        Some(Err(StoreError::Invalid(why))) => answer(Status::BadRequest, &why),
        Some(Err(StoreError::Closed)) | None => {
            answer(Status::Unavailable, "the store is shut down")
        }
        Some(Err(StoreError::DiskFull)) => answer(Status::Unavailable, "the store's disk is full"),
        Some(Err(StoreError::Deleting)) => answer(
            Status::Unavailable,
            "the name is being deleted, try again shortly",
        ),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "register failed");
            answer(Status::Internal, "storage error")
        }
    }
}

/// Login in accounts mode: the password must match the stored Argon2id hash.
async fn check_password(shared: &Shared, user: &str, password: &str) -> Result<(), AuthError> {
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
    if !shared.failed_logins.allowed(user, Instant::now()) {
        return Err(AuthError {
            status: Status::RateLimited,
            reason: super::signup::TOO_MANY_FAILED_LOGINS.into(),
        });
    }
    // A wrong password (or an unknown name) takes one of the name's tokens.
    let refused = || {
        shared.failed_logins.failed(user, Instant::now());
        AuthError {
            status: Status::Unauthorized,
            reason: "wrong user name or password".into(),
        }
    };
    let (tx, rx) = crate::turns::answer();
    if shared
        .store
        .verify(user, password, move |res| {
            // The receiver is gone only when the connection task was dropped.
            let _ = tx.send(res);
        })
        .is_err()
    {
        return Err(AuthError {
            status: Status::Unavailable,
            reason: "the store is shut down".into(),
        });
    }
    // A dropped sender (the store lost the request) reads as `None`.
    match rx.await.ok() {
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
    resume: ResumeAsk,
    leftover: BytesMut,
    layers: Option<Box<Layers>>,
    guard: ConnGuard,
) {
    // Safety: the fd is the open socket `stream` owns, borrowed only for the dup.
    let dup = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned();
    drop(stream);
    let fd = match dup {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand a connection over");
            return;
        }
    };
    let h = Handover {
        fd,
        user,
        device,
        request_id,
        resume,
        leftover,
        layers,
        guard,
    };
    // Not through the rings: those wait while the home shard's store requests are over
    // their mark, and a burst of room messages to offline members kept them there for
    // seconds, with every login homed there behind it (`worker::lanes`).
    let queue = {
        let sh = shard.borrow();
        // (Shutting down: through the rings, whose drain waits for what is in flight.)
        sh.answer_queues
            .get(home)
            .filter(|_| home != sh.id && !sh.shutting_down)
            .cloned()
    };
    match queue {
        Some(q) => q.push(Mail::Handover(Box::new(h))),
        None => shard.borrow_mut().post(home, Mail::Handover(Box::new(h))),
    }
}

#[cfg(test)]
mod tests {
    /// The `oneshot` crate under monoio: a task of a shard's runtime awaits a value sent
    /// from another thread (the storage thread), and a sender dropped unsent resolves.
    #[test]
    fn oneshot_wakes_a_shard_task_from_another_thread() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("a legacy runtime builds anywhere");
        rt.block_on(async {
            let (tx, rx) = oneshot::channel::<u32>();
            let t = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let _ = tx.send(7);
            });
            assert_eq!(rx.await.ok(), Some(7));
            t.join().expect("sender thread");
            let (tx, rx) = oneshot::channel::<u32>();
            std::thread::spawn(move || drop(tx));
            assert_eq!(rx.await.ok(), None);
        });
    }
}
