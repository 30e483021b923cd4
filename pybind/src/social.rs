//! The social layer's Python objects and the calls behind the social methods of
//! `Client` (which are one-line wrappers in `lib.rs`): ephemeral sends, ...

use pyo3::prelude::*;

use ringrouter_client::threaded::ThreadedClient;
use ringrouter_client::Target;

use crate::to_pyerr;

/// An ephemeral send (live sessions only), queued or (`wait`) answered.
pub(crate) fn send_ephemeral(
    py: Python<'_>,
    c: &ThreadedClient,
    to: Target<'_>,
    payload: &[u8],
    wait: bool,
) -> PyResult<()> {
    let r = py.detach(|| {
        if wait {
            c.send_ephemeral_wait(to, payload).map(drop)
        } else {
            c.send_ephemeral(to, payload)
        }
    });
    r.map_err(|e| to_pyerr(py, e))
}
