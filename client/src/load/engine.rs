//! The drivers: engine threads (one monoio runtime each) running sender and
//! receiver tasks over connections of any target protocol, and the monitor
//! that samples progress and cuts stalled receivers loose.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, Splitable};
use monoio::net::TcpStream;

use super::link::{self, LinkConfig, Rx, Tx};
use super::ringrouter::Acker;
use super::{nats, resp, ringrouter, LoadConfig, LoadError, Progress, Protocol};

/// Smallest payload that carries a send timestamp and a sequence number.
pub(super) const STAMP: usize = 16;
/// How long a sender waits, after its end marker, for its own copy of room
/// messages (the router delivers them to the sender's session too) so that it
/// can ack them before it logs out.
const ECHO_GRACE: Duration = Duration::from_secs(2);
/// Frames written per write call, at most (ringrouter).
const MAX_BATCH: usize = 512;
/// NATS and Redis: bytes per write call, about (whole messages; at least one):
/// PUBs / PUBLISHes batched into ~64 KiB writes, the way their fastest
/// clients pipeline them.
const BATCH_BYTES: usize = 64 * 1024;

/// Counters shared between a sender and its receivers (possibly other threads).
pub(super) struct Flow {
    /// Messages sent (per recipient).
    pub(super) sent: AtomicU64,
    /// Deliveries, summed over the flow's receivers.
    delivered: AtomicU64,
    /// Recipients per message.
    pub(super) fan: u64,
    sender_done: AtomicBool,
    sender: AtomicWaker,
    /// Receivers that finished (end marker seen, or gave up).
    receivers_done: AtomicU64,
}

impl Flow {
    pub(super) fn new(fan: u64) -> Self {
        Flow {
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            fan,
            sender_done: AtomicBool::new(false),
            sender: AtomicWaker::new(),
            receivers_done: AtomicU64::new(0),
        }
    }
}

/// What every engine thread shares.
pub(super) struct Shared {
    pub(super) cfg: LoadConfig,
    pub(super) addr: SocketAddr,
    pub(super) epoch: Instant,
    pub(super) delivered: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) failed: Mutex<Option<String>>,
    pub(super) senders_left: AtomicU64,
    /// Receiver sockets, cut by the watchdog when deliveries stop coming.
    pub(super) receiver_fds: Mutex<Vec<i32>>,
    /// The senders' sockets (the stall watchdog shuts them down).
    pub(super) sender_fds: Mutex<Vec<i32>>,
    /// Set by the stall watchdog: senders stop, however much their quota has left.
    stop: AtomicBool,
    /// The transport of ringrouter connections.
    pub(super) link: LinkConfig,
}

impl Shared {
    pub(super) fn new(
        cfg: &LoadConfig,
        addr: SocketAddr,
        senders: usize,
        link: LinkConfig,
    ) -> Self {
        Shared {
            cfg: cfg.clone(),
            link,
            addr,
            epoch: Instant::now(),
            delivered: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: Mutex::new(None),
            senders_left: AtomicU64::new(senders as u64),
            receiver_fds: Mutex::new(Vec::new()),
            sender_fds: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        }
    }

    /// Records the run's first failure.
    fn fail(&self, why: String) {
        if let Ok(mut fl) = self.failed.lock() {
            fl.get_or_insert(why);
        }
    }

    /// Ends the run now: a receiver's stream ended before its end marker (the server
    /// closed it, or it sent bytes that are not the protocol) while senders may still
    /// be sending, and nothing would free their windows. Every socket is shut down
    /// (the same as the stall watchdog does, without waiting for it); the run then
    /// reports what was lost and its failure.
    fn abort(&self) {
        if !self.stop.swap(true, Ordering::AcqRel) {
            cut_all(&self.sender_fds);
            cut_all(&self.receiver_fds);
        }
    }

    /// The first failure, if any.
    pub(super) fn failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }
}

/// What one receiver measured.
pub(super) struct RecvResult {
    pub(super) delivered: u64,
    pub(super) out_of_order: u64,
    pub(super) last: Option<Instant>,
}

/// Where a sender sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Dest {
    /// A user (ringrouter), a subject (NATS) or a channel (Redis).
    User(String),
    /// A room (ringrouter fan-out), or the channel all of a sender's receivers
    /// subscribe to (Redis fan-out).
    Room(String),
}

/// A sender's work.
pub(super) struct SenderJob {
    pub(super) flow: Arc<Flow>,
    pub(super) user: String,
    pub(super) to: Vec<Dest>,
    pub(super) quota: Option<u64>,
}

/// A receiver's work.
pub(super) struct RecvJob {
    pub(super) flow: Arc<Flow>,
    pub(super) user: String,
    /// Join this room (by its join code) after logging in.
    pub(super) join: Option<String>,
    /// NATS subject or Redis channel to subscribe to.
    pub(super) channel: String,
}

/// The jobs of one engine thread.
#[derive(Default)]
pub(super) struct ThreadJobs {
    pub(super) senders: Vec<SenderJob>,
    pub(super) receivers: Vec<RecvJob>,
}

/// A logged-in connection and the frames read past its handshake.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) buf: BytesMut,
    /// The transport's halves (plain TCP: pass-through).
    pub(super) rx: Rx,
    pub(super) tx: Tx,
}

impl Conn {
    /// A plain TCP connection.
    pub(super) fn plain(stream: TcpStream, buf: BytesMut) -> Conn {
        let (rx, tx) = link::plain();
        Conn {
            stream,
            buf,
            rx,
            tx,
        }
    }
}

/// One item scanned from a receiver's buffer.
pub(super) enum Item<'a> {
    /// A delivered payload (empty: the sender's end marker), with the router's
    /// seq (0 for NATS and Redis).
    Msg(&'a [u8], u64),
    /// Redis' answer to a PUBLISH (how many subscribers got the message: not
    /// needed, the receivers count what they get).
    Published,
    /// Anything else (already answered if it needed an answer).
    Control,
}

// ----------------------------------------------------------- protocol dispatch

/// Connects as `user` (ringrouter: logs in, joins the room of join code
/// `join`) and, for a receiver, subscribes to `subscribe` (NATS subject or
/// Redis channel), waiting until the server confirmed the subscription.
async fn connect(
    shared: &Shared,
    user: &str,
    subscribe: Option<&str>,
    join: Option<&str>,
    reply_off: bool,
) -> Result<Conn, String> {
    let addr = shared.addr;
    match shared.cfg.protocol {
        Protocol::Ringrouter => ringrouter::connect(addr, &shared.link, user, join).await,
        Protocol::Nats => nats::connect(addr, subscribe).await,
        Protocol::Redis => resp::connect(addr, subscribe, reply_off).await,
    }
}

/// Scans the next item at `*pos`; `Ok(None)` when it is not complete yet.
/// Whatever must be answered (pings) is answered into `out`.
pub(super) fn next_item<'a>(
    protocol: Protocol,
    buf: &'a [u8],
    pos: &mut usize,
    out: &mut BytesMut,
) -> Result<Option<Item<'a>>, String> {
    match protocol {
        Protocol::Ringrouter => ringrouter::next_item(buf, pos, out),
        Protocol::Nats => nats::next_item(buf, pos, out),
        Protocol::Redis => resp::next_item(buf, pos),
    }
}

/// Appends one message for `to` to `out` in the protocol's framing, header first;
/// the caller appends `len` payload bytes, then calls [`end_message`].
pub(super) fn begin_message(protocol: Protocol, out: &mut BytesMut, to: &Dest, len: usize) {
    match (protocol, to) {
        (Protocol::Ringrouter, _) => ringrouter::begin_message(out, to, len, 0),
        (Protocol::Nats, Dest::User(subject) | Dest::Room(subject)) => {
            nats::begin_message(out, subject, len)
        }
        (Protocol::Redis, Dest::User(channel) | Dest::Room(channel)) => {
            resp::put_publish_header(out, channel.as_bytes(), len)
        }
    }
}

#[inline]
pub(super) fn end_message(protocol: Protocol, out: &mut BytesMut) {
    match protocol {
        Protocol::Ringrouter => {}
        Protocol::Nats => out.extend_from_slice(nats::END),
        Protocol::Redis => out.extend_from_slice(resp::END),
    }
}

// ------------------------------------------------------------------------ I/O

/// Reads more bytes onto the end of `buf` during a handshake (10 s limit; the
/// connection is dropped on failure, so cancelling the read is harmless).
pub(super) async fn read_more(
    s: &mut TcpStream,
    mut buf: BytesMut,
    what: &str,
) -> Result<BytesMut, String> {
    buf.reserve(4096);
    let (len, cap) = (buf.len(), buf.capacity());
    let (r, b) = monoio::time::timeout(
        Duration::from_secs(10),
        s.read(monoio::buf::IoBufMut::slice_mut(buf, len..cap)),
    )
    .await
    .map_err(|_| format!("{what}: timed out"))?;
    match r {
        Ok(0) => Err(format!("{what}: connection closed")),
        Ok(_) => Ok(b.into_inner()),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Reads onto the end of `buf` through `rx`, first growing it by `grow` when
/// less than `min_free` is free. Returns the buffer and whether bytes arrived
/// (false: closed or failed; a transport failure fails the run).
async fn read_into<R: AsyncReadRent>(
    shared: &Shared,
    rx: &mut Rx,
    rd: &mut R,
    buf: BytesMut,
    min_free: usize,
    grow: usize,
) -> (BytesMut, bool) {
    let (buf, r) = rx.read_into(rd, buf, min_free, grow).await;
    match r {
        Ok(more) => (buf, more),
        Err(e) => {
            shared.fail(e);
            (buf, false)
        }
    }
}

fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

// --------------------------------------------------------------- engine threads

/// What an engine thread returns: its receivers' results and latencies.
pub(super) type ThreadResult = Result<(Vec<RecvResult>, Histogram<u64>), String>;

/// A latency histogram: 1 ns .. 100 s at 3 significant figures.
pub(super) fn new_hist() -> Histogram<u64> {
    // The bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("constant histogram bounds are valid")
}

thread_local! {
    /// This engine thread runs one paced sender and no receiver: it may sleep blocking,
    /// on the fine timer (other tasks on the thread: the sender's reader only, which it
    /// lets run after every write).
    static FINE_PACING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Waits shorter than this are slept blocking on a thread of paced senders.
const FINE_PACING_UNDER: Duration = Duration::from_millis(5);

/// Makes this thread's sleeps fine: a timer slack of 1 µs instead of the default
/// 50 µs, and blocking sleeps for the paced senders it runs.
fn fine_pacing() {
    FINE_PACING.set(true);
    // Safety: PR_SET_TIMERSLACK takes an integer and changes only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
}

/// Lets the thread's other ready tasks run once.
async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Starts engine thread `t`. It connects its jobs, meets the caller at the
/// barrier twice (connected; start), then runs them.
pub(super) fn spawn_thread(
    t: usize,
    jobs: ThreadJobs,
    shared: Arc<Shared>,
    barrier: Arc<Barrier>,
) -> Result<JoinHandle<ThreadResult>, LoadError> {
    std::thread::Builder::new()
        .name(format!("load-{t}"))
        .spawn(move || -> ThreadResult {
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
                .map_err(|e| e.to_string())?;
            // One sender only: with several, one's blocking sleep would hold up the
            // others (and with the epoll driver, whose writes complete without
            // yielding, each would run to its end before the next began).
            if shared.cfg.rate.is_some() && jobs.receivers.is_empty() && jobs.senders.len() == 1 {
                fine_pacing();
            }
            rt.block_on(async move {
                let conns = connect_all(&shared, &jobs).await;
                if let Err(e) = &conns {
                    shared.fail(e.clone());
                }
                barrier.wait();
                // second barrier: the caller checked for failures and set the start
                barrier.wait();
                let (receivers, senders) = conns?;
                if shared.failure().is_some() {
                    return Err("another engine thread failed".into());
                }
                Ok(run_tasks(shared, jobs, receivers, senders).await)
            })
        })
        .map_err(|e| LoadError::Engine(e.to_string()))
}

/// Connects (and logs in) everyone first: receivers, then senders.
async fn connect_all(shared: &Shared, jobs: &ThreadJobs) -> Result<(Vec<Conn>, Vec<Conn>), String> {
    let mut receivers = Vec::new();
    for j in &jobs.receivers {
        let sub = Some(j.channel.as_str());
        let join = j.join.as_deref();
        receivers.push(connect(shared, &j.user, sub, join, false).await?);
    }
    let mut senders = Vec::new();
    for j in &jobs.senders {
        let off = shared.cfg.redis_reply_off;
        senders.push(connect(shared, &j.user, None, None, off).await?);
    }
    Ok((receivers, senders))
}

/// Runs one thread's receivers and senders until all are done.
async fn run_tasks(
    shared: Arc<Shared>,
    jobs: ThreadJobs,
    receivers: Vec<Conn>,
    senders: Vec<Conn>,
) -> (Vec<RecvResult>, Histogram<u64>) {
    let hist = Rc::new(RefCell::new(new_hist()));
    if let Ok(mut fds) = shared.receiver_fds.lock() {
        fds.extend(
            receivers
                .iter()
                .map(|c| std::os::fd::AsRawFd::as_raw_fd(&c.stream)),
        );
    }
    if let Ok(mut fds) = shared.sender_fds.lock() {
        fds.extend(
            senders
                .iter()
                .map(|c| std::os::fd::AsRawFd::as_raw_fd(&c.stream)),
        );
    }
    let mut tasks = Vec::new();
    for (job, conn) in jobs.receivers.into_iter().zip(receivers) {
        tasks.push(monoio::spawn(receiver(
            shared.clone(),
            job.flow,
            conn,
            hist.clone(),
        )));
    }
    let mut send_tasks = Vec::new();
    for (job, conn) in jobs.senders.into_iter().zip(senders) {
        send_tasks.push(monoio::spawn(sender(shared.clone(), job, conn)));
    }
    for s in send_tasks {
        s.await;
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await);
    }
    let h = hist.borrow().clone();
    (results, h)
}

/// Samples progress every 100 ms (and calls `progress` every `every`) until
/// the engine threads finish. Watchdog: once every sender is done, receivers
/// that get nothing for the drain timeout are cut loose (what they miss is
/// lost). Returns the (seconds, deliveries) timeline and the CPU reading taken when
/// every sender was done and everything sent was delivered (or, failing that, when
/// the threads finished).
pub(super) fn monitor(
    handles: &[JoinHandle<ThreadResult>],
    shared: &Shared,
    start: Instant,
    every: Duration,
    mut progress: impl FnMut(&Progress),
) -> (Vec<(f64, u64)>, super::report::Cpu) {
    let mut timeline = Vec::new();
    let mut next_progress = start + every;
    let sample = Duration::from_millis(100);
    let mut next_sample = start + sample;
    let mut last_progress = (0u64, Instant::now());
    let mut cut = false;
    let mut stalled = false;
    let mut end_cpu = None;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        let d = shared.delivered.load(Ordering::Relaxed);
        if end_cpu.is_none()
            && shared.senders_left.load(Ordering::Acquire) == 0
            && d >= shared.sent.load(Ordering::Acquire)
        {
            end_cpu = Some(super::report::Cpu::now(shared.cfg.server_pid));
        }
        if d != last_progress.0 {
            last_progress = (d, now);
        } else if !stalled
            && shared.senders_left.load(Ordering::Acquire) > 0
            && now.duration_since(last_progress.1) >= STALL_FACTOR * shared.cfg.drain_timeout
        {
            // Nothing delivered for that long while senders still send: the server is
            // stuck (or cut senders it no longer reads). Every socket is shut, so the
            // run ends and reports what was lost instead of waiting forever.
            stalled = true;
            shared.stop.store(true, Ordering::Release);
            eprintln!(
                "ringrouter-load: nothing delivered for {:?} ({d} delivered of {} sent, senders still \
                 sending): cutting every connection",
                now.duration_since(last_progress.1),
                shared.sent.load(Ordering::Relaxed),
            );
            cut_all(&shared.sender_fds);
            cut_all(&shared.receiver_fds);
        } else if !cut
            && shared.senders_left.load(Ordering::Acquire) == 0
            && now.duration_since(last_progress.1) >= shared.cfg.drain_timeout
        {
            cut = true;
            cut_all(&shared.receiver_fds);
        }
        if now >= next_sample {
            next_sample += sample;
            timeline.push((
                now.duration_since(start).as_secs_f64(),
                shared.delivered.load(Ordering::Relaxed),
            ));
        }
        if now >= next_progress {
            next_progress += every;
            progress(&Progress {
                elapsed: now.duration_since(start).as_secs_f64(),
                sent: shared.sent.load(Ordering::Relaxed),
                delivered: shared.delivered.load(Ordering::Relaxed),
            });
        }
    }
    let end_cpu = end_cpu.unwrap_or_else(|| super::report::Cpu::now(shared.cfg.server_pid));
    (timeline, end_cpu)
}

/// No delivery for this many drain timeouts, senders or not: the run is cut.
const STALL_FACTOR: u32 = 4;

/// Shuts the sockets of `fds` down (wakes their readers, fails their writes).
fn cut_all(fds: &Mutex<Vec<i32>>) {
    if let Ok(fds) = fds.lock() {
        for &fd in fds.iter() {
            // Safety: shutdown(2) on a socket the engine still owns.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }
}

// -------------------------------------------------------------------- senders

/// What a sender's connection receives, shared between its reader task and
/// the sending loop (one thread).
#[derive(Default)]
struct Echo {
    /// Highest seq delivered to the sender (its own room messages).
    last_seq: Cell<u64>,
    /// The sender's own end marker came back.
    saw_end: Cell<bool>,
    /// The read side ended.
    closed: Cell<bool>,
    /// Redis: PUBLISH replies read (one per message and destination).
    published: Cell<u64>,
    /// Frames to send back (pongs).
    control: RefCell<BytesMut>,
}

/// Reads everything the router sends a sender: answers pings, tracks the
/// deliveries of its own room messages (to ack them), reports router errors.
async fn sender_reader(
    shared: Arc<Shared>,
    flow: Arc<Flow>,
    mut rd: monoio::net::tcp::TcpOwnedReadHalf,
    mut rx: Rx,
    mut buf: BytesMut,
    echo: Rc<Echo>,
) {
    let protocol = shared.cfg.protocol;
    let mut out = BytesMut::new();
    loop {
        let mut pos = 0usize;
        let published = echo.published.get();
        loop {
            match next_item(protocol, &buf, &mut pos, &mut out) {
                Ok(Some(Item::Msg(payload, seq))) => {
                    echo.last_seq.set(echo.last_seq.get().max(seq));
                    if payload.is_empty() {
                        echo.saw_end.set(true);
                    }
                }
                Ok(Some(Item::Published)) => echo.published.set(echo.published.get() + 1),
                Ok(Some(Item::Control)) => {}
                Ok(None) => break,
                Err(e) => {
                    shared.fail(format!("sender: {e}"));
                    echo.closed.set(true);
                    return;
                }
            }
        }
        buf.advance(pos);
        if echo.published.get() != published {
            // The sending loop's window counts these too.
            flow.sender.wake();
        }
        if !out.is_empty() {
            echo.control.borrow_mut().extend_from_slice(&out);
            out.clear();
        }
        let (b, more) = read_into(&shared, &mut rx, &mut rd, buf, 16 * 1024, 64 * 1024).await;
        buf = b;
        if !more {
            break;
        }
    }
    echo.closed.set(true);
}

/// One sender: its messages (paced and windowed), then its end marker, then
/// (ringrouter) the acks of its own room messages and a Logout.
async fn sender(shared: Arc<Shared>, job: SenderJob, conn: Conn) {
    let (rd, wr) = conn.stream.into_split();
    let (rx, tx) = (conn.rx, conn.tx);
    // Read whatever the router sends the sender (pings, errors, its own room
    // messages) so that its socket never fills.
    let echo = Rc::new(Echo::default());
    monoio::spawn(sender_reader(
        shared.clone(),
        job.flow.clone(),
        rd,
        rx,
        conn.buf,
        echo.clone(),
    ));
    let mut s = Sending {
        shared: &shared,
        flow: &job.flow,
        to: &job.to,
        echo: &echo,
        acker: Acker::new(),
        sent: 0,
    };
    let mut wr = Writer { wr, tx };
    let t = Template::new(&shared.cfg, &job.to);
    let buf = BytesMut::with_capacity(t.max_batch as usize * t.bytes_per_message + 4096);
    let (buf, write_failed) = s.send_all(&mut wr, buf, job.quota, &t).await;
    s.finish(&mut wr, buf, write_failed).await;
}

/// What a sender writes per message, prepared once: every destination's
/// header for the run's payload size (it does not change from one message to
/// the next), what follows a payload, and how the messages are batched.
struct Template {
    /// Per destination: the protocol's header for a payload of the run's size.
    heads: Vec<Vec<u8>>,
    /// What follows each payload.
    end: Vec<u8>,
    /// The payload after its stamp (or all of it, below [`STAMP`] bytes).
    filler: Vec<u8>,
    /// Bytes of one message to every destination.
    bytes_per_message: usize,
    /// Numbered Sends: where each head's 5 client_seq bytes are.
    client_seq_at: Option<usize>,
    /// Messages per write, at most.
    max_batch: u64,
    /// The sender waits (its window full) until at least this many messages
    /// may go: 1 for ringrouter; a whole batch (or half the window) for NATS
    /// and Redis, so that each write carries ~[`BATCH_BYTES`].
    min_free: u64,
}

impl Template {
    fn new(cfg: &LoadConfig, to: &[Dest]) -> Self {
        let protocol = cfg.protocol;
        let size = cfg.size;
        let numbered = cfg.client_seq && protocol == Protocol::Ringrouter && size > 0;
        let heads: Vec<Vec<u8>> = to
            .iter()
            .map(|d| {
                let mut h = BytesMut::new();
                if numbered {
                    ringrouter::begin_message(&mut h, d, size, ringrouter::CLIENT_SEQ_BASE);
                } else {
                    begin_message(protocol, &mut h, d, size);
                }
                h.to_vec()
            })
            .collect();
        // Every head has the same tail (client_seq, payload tag and length).
        let client_seq_at = numbered
            .then(|| {
                heads
                    .first()
                    .map(|h| ringrouter::client_seq_at(h.len(), size))
            })
            .flatten();
        let mut end = BytesMut::new();
        end_message(protocol, &mut end);
        let filler = vec![0x5Au8; if size >= STAMP { size - STAMP } else { size }];
        let bytes_per_message: usize = heads.iter().map(|h| h.len() + size + end.len()).sum();
        let window = cfg.window as u64;
        let (max_batch, min_free) = match protocol {
            Protocol::Ringrouter => (MAX_BATCH as u64, 1),
            Protocol::Nats | Protocol::Redis => {
                let b = (BATCH_BYTES / bytes_per_message.max(1)).max(1) as u64;
                (b, b.min(window / 2).max(1))
            }
        };
        Template {
            heads,
            end: end.to_vec(),
            filler,
            bytes_per_message,
            client_seq_at,
            max_batch,
            min_free,
        }
    }
}

/// A sender's state while it runs.
struct Sending<'a> {
    shared: &'a Shared,
    flow: &'a Flow,
    to: &'a [Dest],
    echo: &'a Echo,
    acker: Acker,
    /// Messages sent (per destination).
    sent: u64,
}

impl Sending<'_> {
    /// Messages sent but not yet delivered to every recipient (and, with
    /// Redis, not yet answered: its PUBLISH replies count too).
    fn in_flight(&self) -> u64 {
        let f = self.flow;
        let mut done = f.delivered.load(Ordering::Acquire) / f.fan;
        if self.shared.cfg.protocol == Protocol::Redis && !self.shared.cfg.redis_reply_off {
            done = done.min(self.echo.published.get() / self.to.len() as u64);
        }
        self.sent.saturating_sub(done)
    }

    /// Sends until the quota or the duration is reached. Returns the buffer
    /// and whether a write failed.
    async fn send_all(
        &mut self,
        wr: &mut Writer,
        mut buf: BytesMut,
        quota: Option<u64>,
        t: &Template,
    ) -> (BytesMut, bool) {
        let cfg = &self.shared.cfg;
        let window = cfg.window as u64;
        let started = Instant::now();
        let deadline = cfg.duration.map(|d| started + d);
        let per_sender_rate = cfg.rate.map(|r| r / shared_senders(cfg) as f64);
        // Room for at least `min_free` messages before the next write (ringrouter: 1).
        let min_free = t.min_free.min(window);
        let full = |s: &Self| s.in_flight() + min_free > window;
        let stop = |s: &Self| s.shared.stop.load(Ordering::Acquire);
        loop {
            if stop(self) {
                return (buf, true);
            }
            if quota.is_some_and(|q| self.sent >= q)
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                return (buf, false);
            }
            if full(self) {
                poll_fn(|cx| {
                    self.flow.sender.register(cx.waker());
                    if !full(self) || stop(self) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
                continue;
            }
            let mut n = (window - self.in_flight()).min(t.max_batch);
            if let Some(q) = quota {
                n = n.min(q - self.sent);
            }
            if let Some(rate) = per_sender_rate {
                let allowed = (started.elapsed().as_secs_f64() * rate) as u64 + 1;
                if allowed <= self.sent {
                    let wait = Duration::from_secs_f64(
                        ((self.sent + 1) as f64 / rate - started.elapsed().as_secs_f64()).max(0.0),
                    );
                    if FINE_PACING.get() && wait < FINE_PACING_UNDER {
                        // This thread runs this sender only (and its reader): a
                        // blocking sleep on the fine timer. monoio's timer ticks in milliseconds, which sends 10k/s
                        // in bursts of ten or twenty stamped at once.
                        std::thread::sleep(wait);
                    } else {
                        monoio::time::sleep(wait.max(Duration::from_micros(20))).await;
                    }
                    continue;
                }
                n = n.min(allowed - self.sent);
            }
            buf.clear();
            put_control(self.echo, &mut self.acker, false, &mut buf);
            self.put_batch(&mut buf, n, t);
            let (r, b) = wr.write_all(buf).await;
            buf = b;
            if r.is_err() {
                return (buf, true);
            }
            if FINE_PACING.get() {
                // The sender's reader (pings, replies) runs between paced writes even
                // when the write completed without yielding (the epoll driver).
                yield_once().await;
            }
        }
    }

    /// Appends the next `n` messages to every destination and counts them sent.
    fn put_batch(&mut self, buf: &mut BytesMut, n: u64, t: &Template) {
        let size = self.shared.cfg.size;
        let ts = nanos_since(self.shared.epoch);
        buf.reserve(n as usize * t.bytes_per_message);
        for k in 0..n {
            let seq = self.sent + k + 1;
            for (j, head) in t.heads.iter().enumerate() {
                buf.extend_from_slice(head);
                if let Some(at) = t.client_seq_at {
                    let at = buf.len() - head.len() + at;
                    let v = (seq - 1) * t.heads.len() as u64 + j as u64 + 1;
                    let end = at + ringrouter::CLIENT_SEQ_WIDTH;
                    ringrouter::patch_client_seq(&mut buf[at..end], v);
                }
                if size >= STAMP {
                    buf.extend_from_slice(&ts.to_le_bytes());
                    buf.extend_from_slice(&seq.to_le_bytes());
                }
                buf.extend_from_slice(&t.filler);
                buf.extend_from_slice(&t.end);
            }
        }
        self.sent += n;
        self.flow.sent.store(self.sent, Ordering::Release);
        self.shared
            .sent
            .fetch_add(n * self.flow.fan, Ordering::Relaxed);
    }

    /// The end marker (an empty payload to every recipient, after everything
    /// else), then what the protocol needs before the connection goes away.
    async fn finish(&mut self, wr: &mut Writer, mut buf: BytesMut, mut write_failed: bool) {
        let cfg = &self.shared.cfg;
        let protocol = cfg.protocol;
        buf.clear();
        for dest in self.to {
            begin_message(protocol, &mut buf, dest, 0);
            end_message(protocol, &mut buf);
        }
        let (r, b) = wr.write_all(buf).await;
        buf = b;
        write_failed |= r.is_err();
        self.flow.sender_done.store(true, Ordering::Release);
        self.shared.senders_left.fetch_sub(1, Ordering::AcqRel);
        if protocol == Protocol::Redis && cfg.redis_reply_off {
            // Nothing comes back; closing is clean.
            return;
        }
        if protocol == Protocol::Redis && !write_failed {
            // Every PUBLISH, end markers included, is answered before the
            // connection goes away (unread replies would make closing it a reset).
            let expect = (self.sent + 1) * self.to.len() as u64;
            let since = Instant::now();
            while self.echo.published.get() < expect
                && !self.echo.closed.get()
                && since.elapsed() < cfg.drain_timeout
            {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            return;
        }
        if protocol != Protocol::Ringrouter || write_failed {
            return;
        }
        // The router delivers room messages to the sender's own session too: ack
        // them all before logging out, or the router would keep them for the
        // sender's next login.
        if self.to.iter().any(|d| matches!(d, Dest::Room(_))) {
            self.wait_for_echo().await;
        }
        buf.clear();
        put_control(self.echo, &mut self.acker, true, &mut buf);
        crate::core::put_logout(&mut buf);
        let _ = wr.write_all(buf).await;
        wr.tx.finish(&mut wr.wr).await;
    }

    /// Waits for the sender's end marker to come back (if anything came back
    /// at all) once the receivers have theirs.
    async fn wait_for_echo(&self) {
        let mut receivers_finished_at = None;
        while !self.echo.saw_end.get() && !self.echo.closed.get() {
            if self.flow.receivers_done.load(Ordering::Acquire) >= self.flow.fan {
                let since = *receivers_finished_at.get_or_insert_with(Instant::now);
                if self.echo.last_seq.get() == 0 || since.elapsed() >= ECHO_GRACE {
                    break;
                }
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A sender's write half and its transport.
struct Writer {
    wr: monoio::net::tcp::TcpOwnedWriteHalf,
    tx: Tx,
}

impl Writer {
    /// Writes the frames of `buf` and gives the buffer back.
    async fn write_all(&mut self, buf: BytesMut) -> (Result<(), String>, BytesMut) {
        self.tx.write_all(&mut self.wr, buf).await
    }
}

/// Appends the sender's pending pongs and a due ack to `out`.
fn put_control(echo: &Echo, acker: &mut Acker, force: bool, out: &mut BytesMut) {
    {
        let mut control = echo.control.borrow_mut();
        if !control.is_empty() {
            out.extend_from_slice(&control);
            control.clear();
        }
    }
    acker.maybe_ack(echo.last_seq.get(), Instant::now(), force, out);
}

fn shared_senders(cfg: &LoadConfig) -> usize {
    if cfg.fanout.is_some() {
        1
    } else {
        cfg.pairs.max(1)
    }
}

// ------------------------------------------------------------------ receivers

async fn receiver(
    shared: Arc<Shared>,
    flow: Arc<Flow>,
    conn: Conn,
    hist: Rc<RefCell<Histogram<u64>>>,
) -> RecvResult {
    let (res, ended) = receive(&shared, &flow, conn, &hist).await;
    if !ended {
        if !shared.stop.load(Ordering::Acquire) && shared.senders_left.load(Ordering::Acquire) > 0 {
            shared.fail(format!(
                "a receiver's connection ended after {} messages, before its end marker, \
                 while senders were still sending",
                res.delivered
            ));
        }
        shared.abort();
    }
    flow.receivers_done.fetch_add(1, Ordering::AcqRel);
    // A sender waiting for window room learns that nothing more will free it (the
    // stall watchdog cut the run).
    flow.sender.wake();
    res
}

/// A receiver's view of the stream it reads.
struct Receiving {
    res: RecvResult,
    expect_seq: u64,
    /// Highest router seq received (what the acks cover).
    last_seq: u64,
    /// The end marker came (or the stream failed).
    done: bool,
    /// The stream failed: the server sent an error or bytes that are not the protocol.
    failed: bool,
}

async fn receive(
    shared: &Shared,
    flow: &Flow,
    conn: Conn,
    hist: &RefCell<Histogram<u64>>,
) -> (RecvResult, bool) {
    let Conn {
        mut stream,
        mut buf,
        mut rx,
        mut tx,
    } = conn;
    let mut out = BytesMut::new();
    let mut r = Receiving {
        res: RecvResult {
            delivered: 0,
            out_of_order: 0,
            last: None,
        },
        expect_seq: 1,
        last_seq: 0,
        done: false,
        failed: false,
    };
    let mut acker = Acker::new();
    let protocol = shared.cfg.protocol;
    // Bytes that arrived behind the handshake are scanned before the first read.
    let mut read_first = buf.is_empty();
    while !r.done {
        if read_first {
            let (b, more) =
                read_into(shared, &mut rx, &mut stream, buf, 64 * 1024, 256 * 1024).await;
            buf = b;
            if !more {
                break;
            }
        }
        read_first = true;
        let (pos, got) = r.scan(shared, &buf, &mut out, &mut hist.borrow_mut());
        buf.advance(pos);
        if got > 0 {
            r.res.delivered += got;
            r.res.last = Some(Instant::now());
            flow.delivered.fetch_add(got, Ordering::AcqRel);
            shared.delivered.fetch_add(got, Ordering::Relaxed);
            flow.sender.wake();
        }
        if protocol == Protocol::Ringrouter {
            // Everything received is acked before this connection goes away, so
            // the router keeps nothing of the run for the receiver's next login.
            acker.maybe_ack(r.last_seq, Instant::now(), r.done, &mut out);
            if r.done {
                crate::core::put_logout(&mut out);
            }
        }
        if !out.is_empty() || rx.wants_write() {
            let (w, b) = tx.write_all(&mut stream, std::mem::take(&mut out)).await;
            out = b;
            out.clear();
            if w.is_err() {
                break;
            }
        }
    }
    let ended = r.done && !r.failed;
    if ended {
        tx.finish(&mut stream).await;
    }
    (r.res, ended)
}

impl Receiving {
    /// Scans every complete item of `buf`, recording latencies and order.
    /// Returns the bytes scanned and the messages among them.
    fn scan(
        &mut self,
        shared: &Shared,
        buf: &[u8],
        out: &mut BytesMut,
        h: &mut Histogram<u64>,
    ) -> (usize, u64) {
        let protocol = shared.cfg.protocol;
        let now_ns = nanos_since(shared.epoch);
        let mut pos = 0usize;
        let mut got = 0u64;
        loop {
            match next_item(protocol, buf, &mut pos, out) {
                Ok(Some(Item::Msg([], seq))) => {
                    // The sender's end marker: everything it sent before has arrived.
                    self.last_seq = self.last_seq.max(seq);
                    self.done = true;
                }
                Ok(Some(Item::Msg(payload, seq))) => {
                    got += 1;
                    self.last_seq = self.last_seq.max(seq);
                    if payload.len() >= STAMP {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&payload[..8]);
                        let mut sq = [0u8; 8];
                        sq.copy_from_slice(&payload[8..16]);
                        let (ts, sq) = (u64::from_le_bytes(ts), u64::from_le_bytes(sq));
                        if sq != self.expect_seq {
                            self.res.out_of_order += 1;
                        }
                        self.expect_seq = sq + 1;
                        let _ = h.record(now_ns.saturating_sub(ts).max(1));
                    }
                }
                Ok(Some(Item::Control | Item::Published)) => {}
                Ok(None) => break,
                Err(e) => {
                    shared.fail(e);
                    self.done = true;
                    self.failed = true;
                    break;
                }
            }
        }
        (pos, got)
    }
}
