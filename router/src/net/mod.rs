//! Connection I/O: accepting, the pre-login driver and handing a connection to its
//! user's home shard ([`accept`]), and a session's reader and writer ([`session`]).
//! The decisions are elsewhere: `crate::prelogin` (before login, sans-IO) and
//! `crate::shard` / `crate::frames` (after).

use std::time::Duration;

use bytes::BytesMut;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

pub(crate) mod accept;
pub(crate) mod session;
pub(crate) mod signup;
pub(crate) mod stream;
pub(crate) mod ws;

/// Longest wait for a closing frame to be written: the peer may not be reading.
const CLOSE_FLUSH: Duration = Duration::from_millis(100);

/// Connections past `--max-connections` (or per IP) a shard thread is telling so at
/// once, on both ports; past it, one more is closed without an answer. Each refusal
/// holds no connection slot while it writes its answer (and on the HTTP port reads what
/// the client still sends, for up to 350 ms): a flood of connections over the limit
/// held 9 500 sockets and 222 MiB at `--max-connections 10` (a hostile review).
const MAX_REFUSING: usize = 256;

thread_local! {
    static REFUSING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One of this thread's [`MAX_REFUSING`] refusals in progress.
pub(crate) struct Refusing(());

impl Refusing {
    /// Runs `refusal` (the answer to a connection past a limit) as a task of its own if
    /// fewer than [`MAX_REFUSING`] are under way on this thread; else drops it (and with
    /// it the connection, closed unanswered).
    pub(crate) fn spawn(refusal: impl std::future::Future<Output = ()> + 'static) {
        if let Some(slot) = Refusing::try_new() {
            monoio::spawn(async move {
                refusal.await;
                drop(slot);
            });
        }
    }

    /// A refusal may start, or `None`: [`MAX_REFUSING`] are under way on this thread.
    pub(crate) fn try_new() -> Option<Refusing> {
        REFUSING.with(|n| {
            (n.get() < MAX_REFUSING).then(|| {
                n.set(n.get() + 1);
                Refusing(())
            })
        })
    }

    /// Refusals under way on this thread.
    #[cfg(test)]
    pub(crate) fn count() -> usize {
        REFUSING.with(std::cell::Cell::get)
    }
}

impl Drop for Refusing {
    fn drop(&mut self) {
        REFUSING.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Writes `out` (usually ending in an Error frame) with a bounded wait, then shuts the
/// socket down.
async fn close_bounded(stream: &mut TcpStream, out: BytesMut) {
    if !out.is_empty() {
        let _ = monoio::time::timeout(CLOSE_FLUSH, stream.write_all(out)).await;
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_bounded_per_thread() {
        let held: Vec<Refusing> = std::iter::from_fn(Refusing::try_new).take(1000).collect();
        assert_eq!(held.len(), MAX_REFUSING);
        assert_eq!(Refusing::count(), MAX_REFUSING);
        assert!(Refusing::try_new().is_none());
        drop(held);
        assert_eq!(Refusing::count(), 0);
        assert!(Refusing::try_new().is_some());
    }
}
