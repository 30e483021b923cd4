//! The social layer's Python objects and the calls behind the social methods of
//! `Client` (which are one-line wrappers in `lib.rs`): ephemeral sends, ...

use pyo3::prelude::*;

use ringrouter_client::threaded::ThreadedClient;
use ringrouter_client::{RoomInfo, Target};

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

/// A room's details (Client.room_info).
#[pyclass(frozen, module = "ringrouter", name = "RoomInfo")]
pub(crate) struct PyRoomInfo {
    i: RoomInfo,
}

impl From<RoomInfo> for PyRoomInfo {
    fn from(i: RoomInfo) -> Self {
        PyRoomInfo { i }
    }
}

#[pymethods]
impl PyRoomInfo {
    /// The room's name.
    #[getter]
    fn name(&self) -> &str {
        &self.i.name
    }

    /// The room's owner.
    #[getter]
    fn owner(&self) -> &str {
        &self.i.owner
    }

    /// The members (the owner included), in byte order.
    #[getter]
    fn members(&self) -> Vec<String> {
        self.i.members.clone()
    }

    /// When the room was created, microseconds since the Unix epoch.
    #[getter]
    fn created_us(&self) -> u64 {
        self.i.created_us
    }

    /// The join code, for the owner only (None for other members).
    #[getter]
    fn join_code(&self) -> Option<&str> {
        self.i.join_code.as_deref()
    }

    fn __repr__(&self) -> String {
        format!(
            "RoomInfo(name={:?}, owner={:?}, members={:?}, created_us={}, join_code={:?})",
            self.i.name, self.i.owner, self.i.members, self.i.created_us, self.i.join_code
        )
    }
}

/// Adds the social layer's classes to the module.
pub(crate) fn add_classes(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRoomInfo>()?;
    Ok(())
}
