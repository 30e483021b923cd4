//! Turns on a shard's thread: how a task lets the shard's other tasks run. monoio queues
//! a task that wakes itself while it runs *first* (it runs again before anything else),
//! so a plain self-wake never yields; these go behind the others, or wait for the
//! runtime's park. A leaf module: the readers (`net::session`) and the shard's loop
//! (`shard::run`) both use it.

use std::cell::RefCell;
use std::future::poll_fn;
use std::task::Poll;
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
}

thread_local! {
    static BEHIND: RefCell<Behind> = const {
        RefCell::new(Behind {
            waiting: Vec::new(),
            pump: None,
            pumping: false,
        })
    };
}

/// Wakes the tasks that asked to go behind the others: woken from this task, not from
/// their own poll, monoio queues them last (a task that wakes itself while it runs is
/// queued first, and runs again before anything else). One per shard thread.
pub(crate) async fn yield_pump() {
    BEHIND.with(|b| b.borrow_mut().pumping = true);
    poll_fn(|cx| {
        BEHIND.with(|b| {
            let mut b = b.borrow_mut();
            b.pump = Some(cx.waker().clone());
            // A wake only queues the task (it runs later): the list keeps its capacity.
            for w in b.waiting.drain(..) {
                w.wake();
            }
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

/// Waits for the runtime's next park (a zero timer fires there, rounded up to the next
/// millisecond): what other threads woke on this one (mail handed over, a login moved
/// here) is taken in only at a park, which comes only once no task is ready. For a reader
/// that decodes bytes already read (TLS, WebSocket: no I/O to wait on) and would
/// otherwise always be ready; not for the plain readers' hot path (a millisecond each
/// time: +300 µs at p99 of 1 pair at 10k/s).
pub(crate) async fn let_the_runtime_park() {
    // Boxed: a timer entry is big, and every session's reader future would carry it.
    Box::pin(monoio::time::sleep(Duration::ZERO)).await;
}
