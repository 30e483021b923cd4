//! Turns on a shard's thread: how a task lets the shard's other tasks run. monoio queues
//! a task that wakes itself while it runs *first* (it runs again before anything else),
//! so a plain self-wake never yields; these go behind the others, or wait for the
//! runtime's park. A leaf module: the readers (`net::session`) and the shard's loop
//! (`shard::run`) both use it.
//!
//! It also takes in what other threads woke on this one while the shard is busy
//! ([`watch`]): monoio's io_uring driver hands a wake from another thread (a cross-shard
//! mail's doorbell, a store's answer) to its task only at the runtime's park, and a
//! shard whose readers always find bytes never parks. Its epoll driver looks every round.
//! Timers fire only at a park on both drivers: the pump makes a busy shard park every
//! [`PARK_EVERY`] ([`yield_pump`]).

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// This thread's tasks waiting behind its other ready tasks, and its pump.
struct Behind {
    /// Tasks waiting for the pump ([`let_the_shard_run`]).
    waiting: Vec<std::task::Waker>,
    /// The waker of this thread's [`yield_pump`] (`None` while it is woken, or before it
    /// first runs).
    pump: Option<std::task::Waker>,
    /// The pump runs on this thread.
    pumping: bool,
    /// Tasks the pump let go on in its last run (see [`taking_turns`]).
    last_turns: usize,
    /// The pump holds the tasks waiting behind the others until the runtime parks
    /// ([`park_due`]).
    holding: bool,
    /// Tasks of this thread waiting on another thread, with what tells that it woke them
    /// (see [`watch`]).
    watched: Vec<(Arc<dyn Fired>, Waker)>,
}

/// Something another thread does that wakes a task of this one: true once it did (a
/// doorbell rung, an answer sent). Read on this thread by the pump (a relaxed load is not
/// enough for what follows; implementations use Acquire or stronger).
pub(crate) trait Fired: Send + Sync {
    fn fired(&self) -> bool;
}

/// Registers a task (`waker`, of this thread) that waits on `what` another thread does:
/// while the shard is busy (its tasks call [`let_the_shard_run`]) the pump wakes it here
/// once `what` fired, without the runtime's park. The other thread still wakes it its
/// own way (the wake-up the park takes in later finds it done: a spurious poll). One
/// entry per `what`: a newer waker replaces the older.
pub(crate) fn watch(what: &Arc<dyn Fired>, waker: &Waker) {
    BEHIND.with(|b| {
        let mut b = b.borrow_mut();
        let key = Arc::as_ptr(what).cast::<()>();
        match b
            .watched
            .iter_mut()
            .find(|(w, _)| Arc::as_ptr(w).cast::<()>() == key)
        {
            Some(entry) => entry.1.clone_from(waker),
            None => b.watched.push((what.clone(), waker.clone())),
        }
    });
}

/// Wakes the watched tasks whose event fired, and forgets them.
fn wake_fired(watched: &mut Vec<(Arc<dyn Fired>, Waker)>) {
    watched.retain(|(what, waker)| {
        if what.fired() {
            waker.wake_by_ref();
            false
        } else {
            true
        }
    });
}

/// Set by another thread once it sent its answer ([`answer`]).
#[derive(Default)]
struct Sent(AtomicBool);

impl Fired for Sent {
    fn fired(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A one-shot answer another thread sends to a task of a shard, taken in while the shard
/// is busy too ([`watch`]): a login's password check, an API call run on another shard.
pub(crate) fn answer<T>() -> (AnswerTx<T>, AnswerRx<T>) {
    let (tx, rx) = oneshot::channel();
    let sent: Arc<Sent> = Arc::default();
    (
        AnswerTx {
            tx: Some(tx),
            sent: sent.clone(),
        },
        AnswerRx { rx, sent },
    )
}

/// The sending half of [`answer`]. Dropped unsent, it wakes the receiver too (which
/// then reads `Err`).
pub(crate) struct AnswerTx<T> {
    tx: Option<oneshot::Sender<T>>,
    sent: Arc<Sent>,
}

impl<T> AnswerTx<T> {
    /// True once the receiver is gone (nobody waits for the answer).
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.as_ref().is_none_or(oneshot::Sender::is_closed)
    }

    /// Sends the answer; false when the receiver is gone.
    pub(crate) fn send(mut self, v: T) -> bool {
        self.tx.take().is_some_and(|tx| tx.send(v).is_ok())
        // Dropped here: the flag is set after the value is in.
    }
}

impl<T> Drop for AnswerTx<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.sent.0.store(true, Ordering::Release);
    }
}

/// The receiving half of [`answer`]: `Err` when the sender was dropped unsent.
pub(crate) struct AnswerRx<T> {
    rx: oneshot::Receiver<T>,
    sent: Arc<Sent>,
}

impl<T> Future for AnswerRx<T> {
    type Output = Result<T, oneshot::RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.rx).poll(cx) {
            Poll::Pending => {
                let sent: Arc<dyn Fired> = this.sent.clone();
                watch(&sent, cx.waker());
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl<T> AnswerRx<T> {
    /// The answer if it is there (`Err` also when the sender is gone unsent).
    #[cfg(test)]
    pub(crate) fn try_recv(&self) -> Result<T, oneshot::TryRecvError> {
        self.rx.try_recv()
    }
}

impl<T> Drop for AnswerRx<T> {
    fn drop(&mut self) {
        // A receiver given up on (a timeout) leaves no entry behind.
        let key = Arc::as_ptr(&self.sent).cast::<()>();
        let _ = BEHIND.try_with(|b| {
            if let Ok(mut b) = b.try_borrow_mut() {
                b.watched
                    .retain(|(w, _)| Arc::as_ptr(w).cast::<()>() != key);
            }
        });
    }
}

thread_local! {
    static BEHIND: RefCell<Behind> = const {
        RefCell::new(Behind {
            waiting: Vec::new(),
            pump: None,
            pumping: false,
            last_turns: 0,
            holding: false,
            watched: Vec::new(),
        })
    };
}

/// How often a busy shard parks at least (see [`yield_pump`]): timers (heartbeats, the
/// slow-consumer cut, timeouts) fire only at a park, and a shard whose readers always find
/// bytes would otherwise never park. A park that does not wait costs one system call, but
/// the tasks held for it wait for the shard's other work. Alternating at 16 x 64 B (sets
/// of 3, medians): every 1 ms held at the deadline, which the wheel rounds up (the park
/// waited) 6.57M, every 1 ms 6.73-6.81M, 10 ms 6.92M, 100 ms 7.05M, never (timers starved)
/// 7.13-7.30M. A timer is up to 11 ms late on a busy shard.
const PARK_EVERY: Duration = Duration::from_millis(10);

/// The resolution of monoio's timer wheel.
const TICK: Duration = Duration::from_millis(1);

/// Wakes the tasks that asked to go behind the others: woken from this task, not from
/// their own poll, monoio queues them last (a task that wakes itself while it runs is
/// queued first, and runs again before anything else). One per shard thread.
/// The thread has its pump from the call on (tasks that go behind the others before the
/// pump first runs wait for it), until the future is dropped.
pub(crate) fn yield_pump() -> impl Future<Output = ()> {
    /// Clears the thread's pump when it ends (a later runtime on the thread has none).
    struct Pumping;
    impl Drop for Pumping {
        fn drop(&mut self) {
            let _ = BEHIND.try_with(|b| {
                if let Ok(mut b) = b.try_borrow_mut() {
                    b.pumping = false;
                    b.pump = None;
                }
            });
        }
    }
    BEHIND.with(|b| b.borrow_mut().pumping = true);
    let pumping = Pumping;
    async move {
        let _pumping = pumping;
        pump().await
    }
}

async fn pump() {
    // Fires at the runtime's park, which is also where timers fire (monoio processes
    // them nowhere else): once it is overdue, the tasks waiting behind the others are
    // held back until it fired, so that a shard whose readers are always ready still
    // parks (a park that does not wait: its timer is due) once every PARK_EVERY.
    let mut park = Box::pin(monoio::time::sleep(PARK_EVERY));
    // Registered while its deadline is ahead, so that only a park fires it (one polled
    // past its deadline would fire at once).
    let mut armed = false;
    poll_fn(|cx| {
        // Armed only while tasks go behind the others: an idle shard is not woken by it.
        let busy = BEHIND.with(|b| !b.borrow().waiting.is_empty());
        if park.is_elapsed() {
            armed = false;
            if busy {
                park.as_mut()
                    .reset(monoio::time::Instant::now() + PARK_EVERY);
            }
        }
        if !armed && busy {
            armed = park.as_mut().poll(cx).is_pending();
        }
        // Held once the timer wheel's tick for the deadline has passed too (it rounds up
        // to the millisecond): the park then does not wait (held at the deadline itself,
        // it waited up to a millisecond: 1 pair x 64 B -48%).
        let hold = armed && park.deadline() + TICK <= monoio::time::Instant::now();
        BEHIND.with(|b| {
            let mut b = b.borrow_mut();
            b.pump = Some(cx.waker().clone());
            b.holding = hold;
            if !hold {
                b.last_turns = b.waiting.len();
                // A wake only queues the task (it runs later): the list keeps its
                // capacity.
                for w in b.waiting.drain(..) {
                    w.wake();
                }
            }
            wake_fired(&mut b.watched);
        });
        Poll::<()>::Pending
    })
    .await
}

/// Lets the shard's other ready tasks run (sessions, accept loops, mail, the I/O
/// completions the runtime reaps between rounds) before this one goes on: queued last,
/// through the shard's [`yield_pump`]. A reader that always has bytes (its client keeps
/// its socket full) or a chunk of big fan-outs otherwise runs again first, and stalled
/// the rest of its shard for as long as it sent. Without a pump (a runtime that has
/// none) a zero timer: up to a millisecond, at the runtime's next park.
pub(crate) async fn let_the_shard_run() {
    if !BEHIND.with(|b| b.borrow().pumping) {
        let_the_runtime_park().await;
        return;
    }
    let mut queued = false;
    poll_fn(|cx| {
        if queued {
            return Poll::Ready(());
        }
        BEHIND.with(|b| {
            let mut b = b.borrow_mut();
            b.waiting.push(cx.waker().clone());
            if let Some(p) = b.pump.take() {
                p.wake();
            }
        });
        queued = true;
        Poll::Pending
    })
    .await
}

/// How many tasks went behind the others in the pump's last run: about how many of the
/// shard's tasks are always ready (readers whose clients keep their sockets full).
/// `usize::MAX` on a thread without a pump (where going behind costs a park).
pub(crate) fn taking_turns() -> usize {
    BEHIND.with(|b| {
        let b = b.borrow();
        if b.pumping {
            b.last_turns
        } else {
            usize::MAX
        }
    })
}

/// The runtime is due to park ([`yield_pump`]): a task that stays ready on its own (the
/// mail consumer while mail keeps coming) goes behind the others now, and is held with
/// them until the park; the park comes once no task is ready.
pub(crate) fn park_due() -> bool {
    BEHIND.with(|b| b.borrow().holding)
}

/// Runs `f`, setting `waited` when it did not finish at once (the task waited: the
/// shard's other ready tasks ran meanwhile).
pub(crate) fn noting_wait<F: Future>(f: F, waited: &mut bool) -> NotingWait<'_, F> {
    NotingWait { f, waited }
}

/// [`noting_wait`]'s future: `f` and a flag, no more. (An `async fn` kept `f` twice, as
/// passed and pinned in its body: a read op's 376 bytes in every session's reader.)
pub(crate) struct NotingWait<'a, F> {
    f: F,
    waited: &'a mut bool,
}

impl<F: Future> Future for NotingWait<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `f` is pinned with the struct (structural pinning): it is never moved
        // out or given out unpinned, and the struct has no Drop of its own.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: see above; `this.f` stays where it is until the struct is dropped.
        let r = unsafe { Pin::new_unchecked(&mut this.f) }.poll(cx);
        if r.is_pending() {
            *this.waited = true;
        }
        r
    }
}

thread_local! {
    /// Reads and mail this thread's shard took in (a counter: [`busy_poll`] looks for a
    /// change).
    static WORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Rounds [`busy_poll`] made on this thread (for tests).
    #[cfg(test)]
    static POLL_ROUNDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// [`busy_poll`]'s waker while it sleeps (no work in its window).
    static POLLER: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// The shard took in work (bytes read, mail): a [`busy_poll`] sleeping since its last
/// window polls again. A counter and a thread-local look when nothing polls.
#[inline]
pub(crate) fn note_work() {
    WORK.with(|w| w.set(w.get().wrapping_add(1)));
    if let Some(w) = POLLER.with(|p| p.borrow_mut().take()) {
        w.wake();
    }
}

/// `--busy-poll`: after the shard's last read or mail, keeps it polling for new work for
/// `window` instead of sleeping in the kernel, so that what arrives meanwhile is taken in
/// without the wake-up of a sleeping thread (tens of µs on a virtual machine, the most of
/// a quiet pair's latency; twice over for a pair split across shards). Each round of
/// polling goes behind the shard's other tasks (the pump: the runtime reaps completions,
/// and takes in other threads' wake-ups, between rounds) and offers the core to other
/// threads (`sched_yield`), and counts as a busy shard's for the parks (timers still fire
/// every [`PARK_EVERY`]). Past `window` without work it sleeps until the next. One per
/// shard thread with a pump; `window` zero: returns at once.
pub(crate) async fn busy_poll(window: Duration) {
    /// Forgets the sleeping poller's waker when it ends (a later runtime on the thread).
    struct Polling;
    impl Drop for Polling {
        fn drop(&mut self) {
            let _ = POLLER.try_with(|p| p.borrow_mut().take());
        }
    }
    if window.is_zero() {
        return;
    }
    let _polling = Polling;
    let mut seen = WORK.with(std::cell::Cell::get);
    let mut last = std::time::Instant::now();
    loop {
        let work = WORK.with(std::cell::Cell::get);
        let now = std::time::Instant::now();
        if work != seen {
            seen = work;
            last = now;
        }
        if now.duration_since(last) < window {
            // SAFETY: sched_yield takes no arguments and only reschedules this thread.
            unsafe { libc::sched_yield() };
            #[cfg(test)]
            POLL_ROUNDS.with(|n| n.set(n.get() + 1));
            let_the_shard_run().await;
            continue;
        }
        poll_fn(|cx| {
            if WORK.with(std::cell::Cell::get) != seen {
                return Poll::Ready(());
            }
            POLLER.with(|p| *p.borrow_mut() = Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
    }
}

/// Waits for the runtime's next park (a zero timer fires there, rounded up to the next
/// millisecond), for a thread without a pump. The readers of TLS and WebSocket sessions,
/// which may only decode bytes read already, waited here before the pump took in what
/// other threads wake ([`watch`]): a millisecond every 16 reads put 1 pair at 10k/s over
/// WebSocket at 1 ms p99 (183-334 µs through the pump).
async fn let_the_runtime_park() {
    // Boxed: a timer entry is big, and every session's reader future would carry it.
    Box::pin(monoio::time::sleep(Duration::ZERO)).await;
}

/// Runs `wait` on a runtime (io_uring, or epoll with `legacy`) beside a task that is
/// always ready (it lets the shard run and never waits, as a reader whose client keeps its
/// socket full), for at most 5 s. `Some(true)` when `wait` finished while that task still
/// ran; `None` where the runtime cannot be built (no io_uring here).
#[cfg(test)]
pub(crate) fn finishes_while_busy_on(
    legacy: bool,
    wait: impl Future<Output = ()> + 'static,
) -> Option<bool> {
    if legacy {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .ok()?;
        Some(rt.block_on(busy_beside(wait)))
    } else {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .ok()?;
        Some(rt.block_on(busy_beside(wait)))
    }
}

/// [`finishes_while_busy_on`] on io_uring, where wake-ups from other threads come in only
/// at a park (the epoll driver takes them every round).
#[cfg(test)]
pub(crate) fn finishes_while_busy(wait: impl Future<Output = ()> + 'static) -> Option<bool> {
    finishes_while_busy_on(false, wait)
}

#[cfg(test)]
async fn busy_beside(wait: impl Future<Output = ()> + 'static) -> bool {
    use std::cell::Cell;
    use std::rc::Rc;
    monoio::spawn(yield_pump());
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    monoio::spawn(async move {
        wait.await;
        d.set(true);
    });
    let busy = monoio::spawn(async move {
        let start = std::time::Instant::now();
        while !done.get() && start.elapsed() < Duration::from_secs(5) {
            let_the_shard_run().await;
        }
        done.get()
    });
    busy.await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer sent from another thread reaches a task of a shard whose runtime never
    /// parks (monoio's io_uring driver alone would hand it over only at a park).
    #[test]
    fn an_answer_from_another_thread_reaches_a_busy_shard() {
        let (tx, rx) = answer::<u32>();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(7)
        });
        let got = finishes_while_busy(async move {
            assert_eq!(rx.await.ok(), Some(7));
        });
        assert!(sender.join().expect("sender thread"));
        assert_ne!(
            got,
            Some(false),
            "the answer waited for the busy task to end"
        );
        // Dropped unsent: the receiver hears of it while the shard is busy too.
        let (tx, rx) = answer::<u32>();
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(tx);
        });
        let got = finishes_while_busy(async move {
            assert!(rx.await.is_err());
        });
        dropper.join().expect("dropping thread");
        assert_ne!(got, Some(false), "the drop waited for the busy task to end");
    }

    /// Timers fire on a shard whose tasks are always ready (monoio fires them only at a
    /// park, on both drivers: the pump makes the shard park every PARK_EVERY).
    #[test]
    fn a_timer_fires_on_a_busy_shard() {
        for legacy in [false, true] {
            let got = finishes_while_busy_on(legacy, async {
                monoio::time::sleep(Duration::from_millis(10)).await;
            });
            assert_ne!(got, Some(false), "legacy {legacy}: the timer waited 5 s");
        }
    }

    /// `--busy-poll`: after work the shard polls for its window, timers still fire
    /// meanwhile (it parks as a busy shard does), and past the window it sleeps until
    /// the next work. On both drivers. (Counted in rounds, not CPU time: a CI machine
    /// running other tests takes the core its `sched_yield` offers.)
    #[test]
    fn a_busy_poll_polls_for_its_window_then_sleeps() {
        let rounds = || POLL_ROUNDS.with(std::cell::Cell::get);
        for legacy in [true, false] {
            let run = async {
                monoio::spawn(yield_pump());
                monoio::spawn(busy_poll(Duration::from_secs(1)));
                // Work, then a timer inside the window: it fires while the shard polls
                // (without the parks it would wait for the window's end).
                note_work();
                let (wall, before) = (std::time::Instant::now(), rounds());
                monoio::time::sleep(Duration::from_millis(50)).await;
                let waited = wall.elapsed();
                assert!(
                    waited < Duration::from_millis(600),
                    "legacy {legacy}: a 50 ms timer took {waited:?} while polling"
                );
                assert!(rounds() > before, "legacy {legacy}: no polling after work");
                // Past the window: asleep.
                monoio::time::sleep(Duration::from_millis(1200)).await;
                let before = rounds();
                monoio::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(rounds(), before, "legacy {legacy}: polling without work");
                // New work: polling again.
                note_work();
                monoio::time::sleep(Duration::from_millis(50)).await;
                assert!(
                    rounds() > before,
                    "legacy {legacy}: no polling after new work"
                );
            };
            if legacy {
                let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("an epoll runtime builds everywhere");
                rt.block_on(run);
            } else if let Ok(mut rt) = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
            {
                rt.block_on(run);
            }
        }
    }

    /// A receiver given up on leaves no entry in the watch list.
    #[test]
    fn a_dropped_receiver_is_not_watched() {
        let (_tx, rx) = answer::<u32>();
        let mut rx = Box::pin(rx);
        let waker = Waker::noop();
        assert!(rx
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending());
        assert_eq!(BEHIND.with(|b| b.borrow().watched.len()), 1);
        drop(rx);
        assert_eq!(BEHIND.with(|b| b.borrow().watched.len()), 0);
    }
}
