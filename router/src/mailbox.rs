//! Cross-shard mailboxes: one bounded lock-free SPSC ring (rtrb) per ordered pair
//! of shards, carrying batches, plus a doorbell per consumer.
//!
//! Doorbell protocol (as Seastar and Glommio do it): the consumer drains every
//! inbound ring, registers its waker, sets `parked`, fences, and re-checks the
//! rings before it sleeps. A producer pushes, fences, and wakes the consumer only
//! if `parked.swap(false)` was true. While the consumer is busy no producer makes
//! a wake-up call at all.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;

use atomic_waker::AtomicWaker;

/// The wake-up side of one consumer shard.
#[derive(Default, Debug)]
pub struct Doorbell {
    parked: AtomicBool,
    waker: AtomicWaker,
    rings: std::sync::atomic::AtomicU64,
}

impl Doorbell {
    /// Wakes the consumer if it is parked. Call after pushing.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
            self.rings.fetch_add(1, Ordering::Relaxed);
            self.waker.wake();
        }
    }

    /// [`Doorbell::ring`], or, inside [`with_rings_held`] on this thread, noted to be
    /// rung once at the scope's end.
    pub fn ring_or_hold(self: &Arc<Self>) {
        let held = HELD.with(|h| match h.borrow_mut().as_mut() {
            Some(bells) => {
                if !bells.iter().any(|b| Arc::ptr_eq(b, self)) {
                    bells.push(self.clone());
                }
                true
            }
            None => false,
        });
        if !held {
            self.ring();
        }
    }

    /// Wakes the consumer unconditionally (shutdown, control messages).
    pub fn force(&self) {
        self.parked.store(false, Ordering::SeqCst);
        self.waker.wake();
    }

    /// How many wake-ups producers have made (a busy system makes few).
    pub fn wakeups(&self) -> u64 {
        self.rings.load(Ordering::Relaxed)
    }
}

thread_local! {
    /// The bells [`Doorbell::ring_or_hold`] held back on this thread, inside
    /// [`with_rings_held`].
    static HELD: std::cell::RefCell<Option<Vec<Arc<Doorbell>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with the wake-ups [`Doorbell::ring_or_hold`] makes on this thread held back,
/// then rings each bell once (also if `f` panics). The storage thread answers a round's
/// requests inside one: rung at each answer, a parked shard woke for it and took the
/// core from the storage thread (2 cores), 5 000 times a second under a storm of offline
/// messages; now a shard wakes once a round and takes the round's answers at once.
pub fn with_rings_held<R>(f: impl FnOnce() -> R) -> R {
    struct Release(Option<Vec<Arc<Doorbell>>>);
    impl Drop for Release {
        fn drop(&mut self) {
            let outer = self.0.take();
            // (A nested scope hands its bells to the outer one's list.)
            let bells = HELD.with(|h| std::mem::replace(&mut *h.borrow_mut(), outer));
            for b in bells.into_iter().flatten() {
                b.ring_or_hold();
            }
        }
    }
    let outer = HELD.with(|h| h.borrow_mut().replace(Vec::new()));
    let _release = Release(outer);
    f()
}

/// Rung while its consumer was parked (see `turns::watch`: a busy shard's runtime does
/// not take the wake-up in until it parks). Also true while the consumer runs (after a
/// ring, `force`, or its own `unpark`): a watched entry left then costs one spurious poll.
impl crate::turns::Fired for Doorbell {
    fn fired(&self) -> bool {
        !self.parked.load(Ordering::Acquire)
    }
}

/// Producer side held by shard `from`: one ring to every other shard.
pub struct Outboxes<T> {
    rings: Vec<Option<rtrb::Producer<T>>>,
    /// Emptied batches coming back from each consumer, for reuse.
    returns: Vec<Option<rtrb::Consumer<T>>>,
    bells: Vec<Arc<Doorbell>>,
}

/// Consumer side held by one shard: one ring from every other shard.
pub struct Inbox<T> {
    rings: Vec<(usize, rtrb::Consumer<T>)>,
    /// Per inbound ring: where its emptied batches go back to the producer.
    returns: Vec<rtrb::Producer<T>>,
    bell: Arc<Doorbell>,
}

/// Builds the full mesh for `n` shards with `capacity` batches per ring.
/// Returns, per shard, its outboxes and its inbox.
pub fn mesh<T>(n: usize, capacity: usize) -> Vec<(Outboxes<T>, Inbox<T>)> {
    let bells: Vec<Arc<Doorbell>> = (0..n).map(|_| Arc::new(Doorbell::default())).collect();
    let mut outs: Vec<Vec<Option<rtrb::Producer<T>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut backs: Vec<Vec<Option<rtrb::Consumer<T>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut ins: Vec<Vec<(usize, rtrb::Consumer<T>)>> = (0..n).map(|_| Vec::new()).collect();
    let mut in_returns: Vec<Vec<rtrb::Producer<T>>> = (0..n).map(|_| Vec::new()).collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (p, c) = rtrb::RingBuffer::new(capacity);
                outs[from][to] = Some(p);
                ins[to].push((from, c));
                let (rp, rc) = rtrb::RingBuffer::new(capacity);
                backs[from][to] = Some(rc);
                in_returns[to].push(rp);
            }
        }
    }
    outs.into_iter()
        .zip(backs)
        .zip(ins.into_iter().zip(in_returns))
        .enumerate()
        .map(|(i, ((rings, returns), (inrings, inreturns)))| {
            (
                Outboxes {
                    rings,
                    returns,
                    bells: bells.clone(),
                },
                Inbox {
                    rings: inrings,
                    returns: inreturns,
                    bell: bells[i].clone(),
                },
            )
        })
        .collect()
}

impl<T> Outboxes<T> {
    /// Pushes one batch to shard `to` without ringing its doorbell (see [`Outboxes::ring`]).
    /// Gives the batch back when the ring is full: backpressure, never a drop.
    pub fn push(&mut self, to: usize, batch: T) -> Result<(), T> {
        match self.rings.get_mut(to).and_then(Option::as_mut) {
            Some(p) => p.push(batch).map_err(|rtrb::PushError::Full(b)| b),
            None => Err(batch),
        }
    }

    /// An emptied batch that shard `to` gave back, to fill again (saves an allocation).
    pub fn reuse(&mut self, to: usize) -> Option<T> {
        self.returns
            .get_mut(to)
            .and_then(Option::as_mut)
            .and_then(|c| c.pop().ok())
    }

    /// Rings shard `to`'s doorbell (wakes it only if parked).
    pub fn ring(&self, to: usize) {
        self.bells[to].ring();
    }

    /// Every shard's doorbell, for shutdown.
    pub fn bells(&self) -> &[Arc<Doorbell>] {
        &self.bells
    }
}

impl<T> Inbox<T> {
    /// Number of inbound rings (one per other shard).
    pub fn len(&self) -> usize {
        self.rings.len()
    }

    /// True when there are no other shards.
    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    /// Pops the next batch from inbound ring `idx` (an index, not a shard id).
    pub fn pop(&mut self, idx: usize) -> Option<T> {
        self.rings.get_mut(idx).and_then(|(_, c)| c.pop().ok())
    }

    /// Hands an emptied batch back to the producer of ring `idx` for reuse
    /// (dropped if the return ring is full).
    pub fn give_back(&mut self, idx: usize, batch: T) {
        if let Some(p) = self.returns.get_mut(idx) {
            let _ = p.push(batch);
        }
    }

    /// The shard that feeds inbound ring `idx`.
    pub fn source(&self, idx: usize) -> usize {
        self.rings[idx].0
    }

    /// Batches waiting in ring `idx`.
    pub fn queued(&self, idx: usize) -> usize {
        self.rings.get(idx).map_or(0, |(_, c)| c.slots())
    }

    /// Prepares to sleep: registers `waker`, sets `parked`, fences, and returns
    /// true if the consumer may sleep, i.e. no ring accepted by `watch` has
    /// anything. When it returns false, `parked` is cleared again and the caller
    /// drains once more.
    pub fn park(&self, waker: &Waker, mut watch: impl FnMut(usize) -> bool) -> bool {
        self.bell.waker.register(waker);
        self.bell.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let pending = self
            .rings
            .iter()
            .enumerate()
            .any(|(i, (_, c))| watch(i) && !c.is_empty());
        if pending {
            self.bell.parked.store(false, Ordering::SeqCst);
        }
        !pending
    }

    /// Clears `parked` after a wake-up.
    pub fn unpark(&self) {
        self.bell.parked.store(false, Ordering::Relaxed);
    }

    /// This consumer's doorbell.
    pub fn bell(&self) -> &Arc<Doorbell> {
        &self.bell
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Wake};

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn full_ring_hands_the_batch_back() {
        let mut m = mesh::<Vec<u32>>(2, 2);
        let (mut out0, _) = m.remove(0);
        assert_eq!(out0.reuse(1), None);
        assert!(out0.push(1, vec![1]).is_ok());
        assert!(out0.push(1, vec![2]).is_ok());
        assert_eq!(out0.push(1, vec![3]), Err(vec![3]));
        // no ring to self
        assert_eq!(out0.push(0, vec![4]), Err(vec![4]));
    }

    #[test]
    fn doorbell_wakes_only_a_parked_consumer() {
        let mut m = mesh::<u32>(2, 8);
        let (_, mut in1) = m.remove(1);
        let (mut out0, _) = m.remove(0);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        // busy consumer: pushes make no wake-up
        out0.push(1, 1).unwrap();
        out0.ring(1);
        assert_eq!(in1.bell().wakeups(), 0);
        // park refuses while a ring has data
        assert!(!in1.park(&waker, |_| true));
        assert_eq!(in1.pop(0), Some(1));
        assert!(in1.park(&waker, |_| true));
        out0.push(1, 2).unwrap();
        out0.ring(1);
        assert!(flag.0.load(Ordering::SeqCst));
        assert_eq!(in1.bell().wakeups(), 1);
        // second ring while still flagged unparked: no second wake
        out0.push(1, 3).unwrap();
        out0.ring(1);
        assert_eq!(in1.bell().wakeups(), 1);
        let _ = Context::from_waker(&waker);
        assert_eq!(in1.pop(0), Some(2));
        assert_eq!(in1.pop(0), Some(3));
        assert_eq!(in1.source(0), 0);
        // emptied batches travel back for reuse
        in1.give_back(0, 9);
        assert_eq!(out0.reuse(1), Some(9));
        assert_eq!(out0.reuse(1), None);
    }

    #[test]
    fn held_rings_wake_each_parked_consumer_once_at_the_scope_end() {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let bell = Arc::new(Doorbell::default());
        bell.waker.register(&Waker::from(flag.clone()));
        bell.parked.store(true, Ordering::SeqCst);
        let other = Arc::new(Doorbell::default());
        with_rings_held(|| {
            bell.ring_or_hold();
            other.ring_or_hold();
            // A nested scope's bells go to the outer one.
            with_rings_held(|| bell.ring_or_hold());
            bell.ring_or_hold();
            assert!(!flag.0.load(Ordering::SeqCst), "held until the scope ends");
        });
        assert!(flag.0.load(Ordering::SeqCst));
        assert_eq!(bell.wakeups(), 1);
        // Outside a scope a ring is made at once; a panic ends the scope too.
        bell.parked.store(true, Ordering::SeqCst);
        let r = std::panic::catch_unwind(|| with_rings_held(|| -> () { panic!("in scope") }));
        assert!(r.is_err());
        bell.ring_or_hold();
        assert_eq!(bell.wakeups(), 2);
    }

    /// A consumer parked on its doorbell (as the shard's is, watched) gets mail from
    /// another thread while its shard's runtime never parks.
    #[test]
    fn a_busy_shard_takes_in_its_doorbell() {
        let mut m = mesh::<u32>(2, 8);
        let (_, mut inbox) = m.remove(1);
        let (mut out, _) = m.remove(0);
        let producer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            out.push(1, 5).expect("an empty ring");
            out.ring(1);
        });
        let got = crate::turns::finishes_while_busy(async move {
            let bell: Arc<dyn crate::turns::Fired> = inbox.bell().clone();
            let mail = std::future::poll_fn(|cx| {
                if let Some(v) = inbox.pop(0) {
                    inbox.unpark();
                    return std::task::Poll::Ready(v);
                }
                if inbox.park(cx.waker(), |_| true) {
                    crate::turns::watch(&bell, cx.waker());
                    std::task::Poll::Pending
                } else {
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
            })
            .await;
            assert_eq!(mail, 5);
        });
        producer.join().expect("producer thread");
        assert_ne!(got, Some(false), "the mail waited for the busy task to end");
    }

    #[test]
    fn batches_cross_threads_in_order_without_loss() {
        const N: u64 = 200_000;
        let mut m = mesh::<Vec<u64>>(2, 64);
        let (_, mut inbox) = m.remove(1);
        let (mut out, _) = m.remove(0);
        let producer = std::thread::spawn(move || {
            let mut next = 0u64;
            while next < N {
                let batch: Vec<u64> = (next..(next + 100).min(N)).collect();
                let mut b = batch;
                loop {
                    match out.push(1, b) {
                        Ok(()) => break,
                        Err(back) => {
                            b = back;
                            std::thread::yield_now();
                        }
                    }
                }
                out.ring(1);
                next = (next + 100).min(N);
            }
        });
        let mut expect = 0u64;
        while expect < N {
            match inbox.pop(0) {
                Some(batch) => {
                    for v in batch {
                        assert_eq!(v, expect);
                        expect += 1;
                    }
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(inbox.queued(0), 0);
    }
}
