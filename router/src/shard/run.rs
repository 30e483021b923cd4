//! A shard's run loop: one monoio runtime per shard thread, running the accept loop and
//! connection tasks (`crate::net`), the mailbox consumer (the one place mail is
//! handled: rings, local mail, store answers), the flusher (outgoing batches into the
//! rings), a ticker (heartbeats, slow consumers, counters), and the shutdown drain.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::mail::{Mail, MailQueue};
use super::pause::PauseTables;
use super::store_link::StoreLink;
use super::Shard;
use crate::mailbox::{Inbox, Outboxes};
use crate::shared::{LocalSignal, Shared};
use crate::stats::ShardStats;

/// What a shard thread starts with.
pub(crate) struct ShardThread {
    /// This shard's index.
    pub(crate) id: usize,
    /// Number of shards.
    pub(crate) n: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<ShardStats>,
    pub(crate) listener: std::net::TcpListener,
    pub(crate) outs: Outboxes<Vec<Mail>>,
    pub(crate) inbox: Inbox<Vec<Mail>>,
    /// `flights[from][to]`: weight in the pipeline from shard `from` to shard `to`.
    pub(crate) flights: Arc<Vec<Vec<Arc<AtomicUsize>>>>,
    pub(crate) pause: PauseTables,
    /// Where the storage thread posts this shard's store answers.
    pub(crate) store_answers: Arc<MailQueue>,
    /// Every shard's `store_answers` (see `Shard::answer_queues`).
    pub(crate) answer_queues: Vec<Arc<MailQueue>>,
    /// This shard's HTTP listener and what the HTTP servers share (`--http-listen`).
    pub(crate) http: Option<(std::net::TcpListener, Arc<crate::http::HttpCtx>)>,
}

/// Runs one shard on the calling thread until it has shut down; reports `Ok(id)` on
/// `ready` once it accepts connections.
pub(crate) fn run_shard(
    t: ShardThread,
    ready: &std::sync::mpsc::Sender<Result<usize, (usize, String)>>,
) -> Result<(), String> {
    let ShardThread {
        id,
        n,
        shared,
        stats,
        listener,
        outs,
        inbox,
        flights,
        pause,
        store_answers,
        answer_queues,
        http,
    } = t;
    // flights[from][to]: weight in the pipeline from shard `from` to shard `to`.
    let flight_out: Vec<Arc<AtomicUsize>> = (0..n).map(|to| flights[id][to].clone()).collect();
    let flight_in: Vec<Arc<AtomicUsize>> = (0..inbox.len())
        .map(|i| flights[inbox.source(i)][id].clone())
        .collect();
    // COOP_TASKRUN: the kernel runs a completion's work when the shard next enters the
    // ring (every round while it is busy, or its park) instead of interrupting it;
    // SINGLE_ISSUER: only this thread submits. Alternating, 16 x 64 B +1-4% msgs/s (three
    // sets, at the edge of their spread), 256 x 64 B +2%, 16 x 1 KiB and 1 pair the same.
    // A kernel without them (before 5.19 / 6.0) gets a ring without them.
    let builder = || {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .with_entries(4096)
    };
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun().setup_single_issuer();
    let mut rt = match builder().uring_builder(urb).build() {
        Ok(rt) => rt,
        Err(_) => builder().build().map_err(|e| format!("runtime: {e}"))?,
    };
    rt.block_on(async move {
        let listener =
            monoio::net::TcpListener::from_std(listener).map_err(|e| format!("listener: {e}"))?;
        let http = match http {
            Some((l, ctx)) => Some((
                monoio::net::TcpListener::from_std(l).map_err(|e| format!("http listener: {e}"))?,
                ctx,
            )),
            None => None,
        };
        let mut sh = Shard::with_pipeline(
            id,
            n,
            shared.cfg.clone(),
            stats,
            flight_out,
            flight_in,
            pause,
        );
        sh.store = Some(StoreLink {
            handle: shared.store.clone(),
            done: store_answers.clone(),
        });
        sh.bell = Some(inbox.bell().clone());
        sh.answer_queues = answer_queues;
        sh.memory.gate = shared.memory.clone();
        sh.room_passwords = shared.room_passwords.clone();
        let shard = Rc::new(RefCell::new(sh));
        let local = Rc::new(LocalSignal::default());
        monoio::spawn(crate::turns::yield_pump());
        monoio::spawn(crate::turns::busy_poll(shared.cfg.busy_poll));
        monoio::spawn(flusher(shard.clone(), outs));
        monoio::spawn(consumer(
            shard.clone(),
            shared.clone(),
            inbox,
            store_answers,
            local.clone(),
        ));
        monoio::spawn(ticker(shard.clone(), local.clone()));
        monoio::spawn(crate::net::accept::accept_loop(
            shard.clone(),
            shared.clone(),
            listener,
            local.clone(),
        ));
        if let Some((listener, ctx)) = http {
            monoio::spawn(crate::http::accept_loop(
                shard.clone(),
                shared.clone(),
                ctx,
                listener,
                local.clone(),
            ));
        }
        let _ = ready.send(Ok(id));
        local.wait().await;
        let timeout = shared.cfg.shutdown_timeout;
        // Sessions that cannot be flushed are cut before the timeout (the ticker). What
        // they leave (their unacked messages, mail in flight) is then stored for as long
        // as that makes progress: cut at the timeout, a shutdown with 100 members of a
        // room holding 40 000 unacked messages each lost all of them for 20 members (the
        // store takes ~2 µs a record). A drain that stops moving for the timeout (at least
        // 5 s: a failed store) is cut: this shard stopped with work possibly unpersisted.
        // (The ticker shuts the sockets of sessions still open 200 ms before the timeout;
        // they end soon after.)
        let ended = monoio::time::timeout(timeout + SESSIONS_END_GRACE, wait_idle(&shard, &shared))
            .await
            .is_ok();
        let drained = drain_in_flight(&shard, &shared, n, drain_stall(&shared.cfg)).await;
        if !ended || !drained {
            tracing::error!(shard = id, "shutdown drain cut by --shutdown-timeout");
            shared.drain_cut.store(true, Ordering::SeqCst);
        }
        shard.borrow_mut().publish();
        tracing::debug!(shard = id, "shard stopped");
        Ok::<(), String>(())
    })
}

/// How long the shutdown drain may go without progress before it is cut: the shutdown
/// timeout, but at least 5 s (one store request of 4 096 requeued records takes over
/// 100 ms on a debug build; cut at a 100 ms timeout, it lost them).
pub(crate) fn drain_stall(cfg: &crate::config::Config) -> Duration {
    cfg.shutdown_timeout.max(Duration::from_secs(5))
}

/// The longest a shutdown drain goes on however it progresses: twelve times
/// [`drain_stall`] (a minute at the defaults), so that nothing that keeps moving (work
/// the shard makes for itself) holds a shutdown without end.
pub(crate) fn drain_max(cfg: &crate::config::Config) -> Duration {
    drain_stall(cfg) * 12
}

/// How long past `--shutdown-timeout` the sessions whose sockets were shut at it may take
/// to end (their close: what they had not acked handed to the requeues).
const SESSIONS_END_GRACE: Duration = Duration::from_secs(1);

/// Waits until this shard has no session left; each one that ends counts as the
/// shutdown's progress (`Shared::drain_progress`).
async fn wait_idle(shard: &Rc<RefCell<Shard>>, shared: &Shared) {
    let mut left = usize::MAX;
    poll_fn(|cx| {
        let mut sh = shard.borrow_mut();
        if sh.sessions.len() != left {
            left = sh.sessions.len();
            shared.drain_progress.fetch_add(1, Ordering::SeqCst);
        }
        if sh.idle() {
            Poll::Ready(())
        } else {
            sh.idle_waiters.push(cx.waker().clone());
            Poll::Pending
        }
    })
    .await
}

/// Shutdown, after this shard's sessions ended: other shards may still be handing it
/// mail (messages in flight, room fan-outs, their sessions' last sends). It keeps
/// running its consumer, flusher and store completions until every shard is idle and
/// nothing is in flight to or from it, so those messages are stored, not dropped. False
/// if nothing moved for `stall` (then it stops with work possibly unpersisted).
async fn drain_in_flight(
    shard: &Rc<RefCell<Shard>>,
    shared: &Shared,
    n: usize,
    stall: Duration,
) -> bool {
    shared.quiesced.fetch_add(1, Ordering::SeqCst);
    let mut calm = 0;
    let mut seen = None;
    let mut moved = Instant::now();
    let began = moved;
    let most = drain_max(&shared.cfg);
    while calm < 3 {
        monoio::time::sleep(Duration::from_millis(2)).await;
        let sh = shard.borrow();
        let flight: usize = sh
            .flight_in
            .iter()
            .chain(&sh.flight_out)
            .map(|f| f.load(Ordering::Acquire))
            .sum();
        let quiesced = shared.quiesced.load(Ordering::SeqCst);
        let quiet = quiesced == n
            && sh.outbox_len == 0
            && sh.local_mail.is_empty()
            && sh.store_inflight == 0
            && sh.requeues.is_empty()
            && flight == 0;
        calm = if quiet { calm + 1 } else { 0 };
        let now = (
            sh.store_answers,
            sh.requeues.is_empty(),
            sh.outbox_len,
            sh.local_mail.len(),
            flight,
            quiesced,
        );
        if seen != Some(now) {
            seen = Some(now);
            moved = Instant::now();
            shared.drain_progress.fetch_add(1, Ordering::SeqCst);
        } else if moved.elapsed() >= stall {
            return false;
        }
        if began.elapsed() >= most {
            return false;
        }
    }
    true
}

/// Wakes this task and returns to the runtime once. monoio queues a task woken while it
/// runs first, so this lets the runtime look at its I/O (after its round of tasks), not
/// the shard's other ready tasks run: for that, [`crate::turns::let_the_shard_run`].
pub(crate) async fn yield_now() {
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

/// Moves the shard's outgoing batches into the rings. Woken by `Shard::post`;
/// runs after the readers of the current loop turn, so one batch carries what
/// every reader produced in that turn.
async fn flusher(shard: Rc<RefCell<Shard>>, mut outs: Outboxes<Vec<Mail>>) {
    loop {
        poll_fn(|cx| {
            let mut sh = shard.borrow_mut();
            if sh.outbox_len > 0 || !sh.outbox_waiters.is_empty() || sh.hist.pending() {
                Poll::Ready(())
            } else {
                sh.flusher = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let stuck = {
            let mut sh = shard.borrow_mut();
            sh.flush_history();
            let mut stuck = false;
            for to in 0..sh.n {
                // Batches the target shard emptied and gave back are filled again: no
                // allocation (and no fresh pages) per batch.
                while let Some(b) = outs.reuse(to) {
                    sh.spare_batch(b);
                }
                let mut pushed = false;
                while let Some((batch, weight)) = sh.next_batch(to) {
                    let len = batch.len();
                    match outs.push(to, batch) {
                        Ok(()) => {
                            sh.batch_sent(to, len, weight);
                            pushed = true;
                        }
                        Err(back) => {
                            sh.batch_unsent(to, back, weight);
                            stuck = true;
                            break;
                        }
                    }
                }
                if pushed {
                    outs.ring(to);
                }
            }
            let full = sh.pipeline_full();
            if !full {
                sh.pipe_drained();
                for w in sh.outbox_waiters.drain(..) {
                    w.wake();
                }
            }
            // Readers wait on a full pipeline: look again shortly.
            stuck || (full && !sh.outbox_waiters.is_empty())
        };
        if stuck {
            // The target shard is behind (or stalled on a slow consumer): back off briefly.
            monoio::time::sleep(Duration::from_micros(100)).await;
        }
    }
}

/// What is left of a ring's batch when the store went over its mark in the middle of
/// it: handled, in order, before any other mail of the rings once the store is under
/// it again. Its weight stays in the ring's flight until then, so the sending shard's
/// pipeline stays full and its readers paused.
struct HeldMail {
    ring: usize,
    mails: VecDeque<Mail>,
    /// The batch's elided names at the point it was held (see `Shard::begin_batch`).
    to: Bytes,
    from: Bytes,
    /// Since when its first mail waits for room in the store's queue
    /// (`Shard::store_takes`): past [`HELD_MAX`] the shard's readers wait too
    /// (`Shard::store_yield`: those with nothing in the queue, up to a budget) until it
    /// goes, so that its own sessions, keeping the queue between a quarter and the bound,
    /// cannot hold it (and the rings behind it) for ever.
    since: std::time::Instant,
}

/// See [`HeldMail::since`] (and `Shard::store_yield`).
const HELD_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// Drains the inbound rings, delivers, adopts handed-over connections, and
/// sleeps on the doorbell when there is nothing to do.
async fn consumer(
    shard: Rc<RefCell<Shard>>,
    shared: Arc<Shared>,
    mut inbox: Inbox<Vec<Mail>>,
    store_answers: Arc<MailQueue>,
    local: Rc<LocalSignal>,
) {
    let rings = inbox.len();
    // Sessions pushed over their bound by cross-shard traffic are not waited for:
    // stalling a ring would hold up every other user behind one slow reader. The
    // session's hard cap and the slow-consumer timeout bound what it can pile up.
    let mut blocked = Vec::new();
    let mut handovers = Vec::new();
    let mut answers: Vec<Mail> = Vec::new();
    let mut local_mail = Vec::new();
    // The rest of a ring's batch, held back once the store went over its mark.
    let mut held: Option<HeldMail> = None;
    let bell: Arc<dyn crate::turns::Fired> = inbox.bell().clone();
    loop {
        if shared.shutdown.load(Ordering::Acquire) && !local.fired() {
            shard.borrow_mut().begin_shutdown();
            local.fire();
        }
        let mut got = 0usize;
        {
            let mut sh = shard.borrow_mut();
            // While this shard's store requests are over their mark, mail from other
            // shards waits in the rings: their pipeline fills and their readers pause,
            // so senders on any shard are held back by a store that cannot keep up.
            // Looked at after each mail that made store requests, too: a batch of room
            // messages for members offline here is a store request per message and
            // member. What is left of the batch then waits in `held`, first in line.
            if let Some(h) = held.as_mut() {
                if !sh.store_queue_full() {
                    sh.batch_to = std::mem::take(&mut h.to);
                    sh.batch_from = std::mem::take(&mut h.from);
                    let mut done = 0;
                    while let Some(front) = h.mails.front() {
                        if !sh.store_takes(front) {
                            if !sh.store_yield && h.since.elapsed() >= HELD_MAX {
                                sh.begin_store_yield();
                            }
                            break;
                        }
                        if std::mem::take(&mut sh.store_yield) {
                            sh.wake_store_waiters(true, true);
                        }
                        let Some(mail) = h.mails.pop_front() else {
                            break;
                        };
                        h.since = std::time::Instant::now();
                        done += mail.weight();
                        if let Some(h) = sh.on_mail(mail, &mut blocked) {
                            handovers.push(h);
                        }
                    }
                    if done > 0 {
                        got += 1;
                    }
                    sh.flight_in[h.ring].fetch_sub(done, Ordering::AcqRel);
                    blocked.clear();
                    h.to = sh.batch_to.clone();
                    h.from = sh.batch_from.clone();
                }
                if h.mails.is_empty() {
                    held = None;
                    if std::mem::take(&mut sh.store_yield) {
                        sh.wake_store_waiters(true, true);
                    }
                }
            }
            let rings = if sh.store_full() || held.is_some() {
                0
            } else {
                rings
            };
            'rings: for i in 0..rings {
                for _ in 0..64 {
                    let Some(mut batch) = inbox.pop(i) else { break };
                    got += 1;
                    let weight: usize = batch.iter().map(Mail::weight).sum();
                    sh.begin_batch();
                    let stored = sh.store_work();
                    let mut rest = VecDeque::new();
                    let mut mails = batch.drain(..);
                    while let Some(mail) = mails.next() {
                        if !matches!(mail, Mail::Deliver(_)) && !sh.store_takes(&mail) {
                            // (Too many offline members for what the queue has left.)
                            rest.push_back(mail);
                            rest.extend(mails.by_ref());
                            break;
                        }
                        if let Some(h) = sh.on_mail(mail, &mut blocked) {
                            handovers.push(h);
                        }
                        if sh.store_work() != stored && sh.store_full() {
                            rest.extend(mails.by_ref());
                            break;
                        }
                    }
                    drop(mails);
                    inbox.give_back(i, batch);
                    let left: usize = rest.iter().map(Mail::weight).sum();
                    sh.flight_in[i].fetch_sub(weight - left, Ordering::AcqRel);
                    blocked.clear();
                    if !rest.is_empty() {
                        held = Some(HeldMail {
                            ring: i,
                            mails: rest,
                            to: sh.batch_to.clone(),
                            from: sh.batch_from.clone(),
                            since: std::time::Instant::now(),
                        });
                    }
                    // (Held mail is first in line: no other batch before it goes, nor
                    // may another batch's rest take its place.)
                    if held.is_some() || sh.store_full() {
                        break 'rings;
                    }
                }
            }
            store_answers.take_into(&mut answers);
            if !answers.is_empty() {
                got += 1;
                let (was_full, was_over) = (sh.store_full(), sh.store_over_reserve());
                // Store answers (`Mail::Stored`) go through the same match as all mail.
                for mail in answers.drain(..) {
                    if let Some(h) = sh.on_mail(mail, &mut blocked) {
                        handovers.push(h);
                    }
                }
                blocked.clear();
                if !sh.room_waits.is_empty() || !sh.room_wakers.is_empty() {
                    sh.room_waits_answered();
                }
                if !sh.rooms_waiting.is_empty() {
                    sh.rooms_answered();
                }
                sh.wake_store_waiters(was_full, was_over);
            }
            std::mem::swap(&mut local_mail, &mut sh.local_mail);
            if !local_mail.is_empty() {
                got += 1;
                sh.begin_batch();
                for mail in local_mail.drain(..) {
                    if let Some(h) = sh.on_mail(mail, &mut blocked) {
                        handovers.push(h);
                    }
                }
                blocked.clear();
            }
            if got > 0 {
                sh.release_parked();
            }
        }
        for h in handovers.drain(..) {
            crate::net::session::adopt(&shard, *h);
        }
        if got > 0 {
            crate::turns::note_work();
            if crate::turns::park_due() {
                // Held behind the others until the runtime parked (timers fire there).
                crate::turns::let_the_shard_run().await;
            } else {
                yield_now().await;
            }
            continue;
        }
        poll_fn(|cx| {
            if shared.shutdown.load(Ordering::Acquire) && !local.fired() {
                return Poll::Ready(());
            }
            // Rings are not work while the store is over its mark (see above): the
            // completions ring the doorbell.
            // (Nor while mail is held: it goes once store answers make room, and they
            // ring the doorbell.)
            let store_full = shard.borrow().store_full() || held.is_some();
            if inbox.park(cx.waker(), |_| !store_full) {
                if (shared.shutdown.load(Ordering::Acquire) && !local.fired())
                    || !store_answers.is_empty()
                    || !shard.borrow().local_mail.is_empty()
                {
                    inbox.unpark();
                    return Poll::Ready(());
                }
                // Taken in while this shard is busy, too (see the function).
                crate::turns::watch(&bell, cx.waker());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        inbox.unpark();
    }
}

/// Once no thread of the process has done anything for this long, a shard returns the
/// memory freed (`alloc::collect_now`).
const IDLE_COLLECT_AFTER: Duration = Duration::from_secs(1);

/// Heartbeats, slow consumers, counters.
async fn ticker(shard: Rc<RefCell<Shard>>, local: Rc<LocalSignal>) {
    let period = {
        let sh = shard.borrow();
        let c = &sh.cfg;
        (c.heartbeat_interval.min(c.slow_consumer_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(100))
    };
    let mut shutdown_seen: Option<Instant> = None;
    let mut idle = crate::alloc::IdleCollect::new(IDLE_COLLECT_AFTER, Instant::now());
    loop {
        monoio::time::sleep(period).await;
        let now = Instant::now();
        let mut sh = shard.borrow_mut();
        sh.tick(now);
        let c = &sh.counters;
        if idle.due_after(c.msgs_in + c.writes + c.logins, now) {
            sh.drop_spare_batches();
            crate::alloc::collect_now();
        }
        if local.fired() {
            let since = *shutdown_seen.get_or_insert(now);
            // Sessions that cannot flush within the timeout are cut.
            if now.duration_since(since)
                >= sh
                    .cfg
                    .shutdown_timeout
                    .saturating_sub(Duration::from_millis(200))
            {
                for (_, s) in sh.sessions.iter() {
                    // Safety: fd belongs to a live session.
                    unsafe { libc::shutdown(s.fd, libc::SHUT_RDWR) };
                }
            }
        }
    }
}
