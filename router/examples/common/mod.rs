//! What the store examples share.

use std::sync::mpsc;
use std::time::Duration;

use ringrouter::store::StoreResult;

/// Waits (up to 10 minutes) for the store's answer to the request `f` makes.
pub fn call<T: Send + 'static>(
    f: impl FnOnce(Box<dyn FnOnce(StoreResult<T>) + Send>) -> StoreResult<()>,
) -> T {
    let (tx, rx) = mpsc::channel();
    f(Box::new(move |r| {
        let _ = tx.send(r);
    }))
    .expect("queued");
    rx.recv_timeout(Duration::from_secs(600))
        .expect("no answer from the store")
        .expect("the store refused the request")
}
