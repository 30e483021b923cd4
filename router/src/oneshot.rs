//! A one-value channel from any thread to a task of a shard's runtime (monoio's `sync`
//! feature lets a waker cross threads). Used where a connection task awaits the store
//! (password checks at login, Register) before it has a session.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// The sender was dropped without sending.
    dropped: bool,
}

/// Sends the value once.
pub struct Sender<T>(Arc<Mutex<Slot<T>>>);

/// Resolves to `Some(value)`, or `None` if the sender was dropped unsent.
pub struct Receiver<T>(Arc<Mutex<Slot<T>>>);

/// A connected pair.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
        dropped: false,
    }));
    (Sender(slot.clone()), Receiver(slot))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> Sender<T> {
    /// Hands the value over and wakes the receiver.
    pub fn send(self, value: T) {
        let waker = {
            let mut g = lock(&self.0);
            g.value = Some(value);
            g.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut g = lock(&self.0);
            g.dropped = true;
            g.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut g = lock(&self.0);
        if let Some(v) = g.value.take() {
            return Poll::Ready(Some(v));
        }
        if g.dropped {
            return Poll::Ready(None);
        }
        g.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_crosses_threads_and_a_dropped_sender_resolves_none() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("a legacy runtime builds anywhere");
        rt.block_on(async {
            let (tx, rx) = channel::<u32>();
            let t = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                tx.send(7);
            });
            assert_eq!(rx.await, Some(7));
            t.join().unwrap();
            let (tx, rx) = channel::<u32>();
            std::thread::spawn(move || drop(tx));
            assert_eq!(rx.await, None);
        });
    }
}
