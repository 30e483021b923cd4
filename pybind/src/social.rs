//! The social layer's Python objects and the calls behind the social methods of
//! `Client` (which are one-line wrappers in `lib.rs`): ephemeral sends, ...

use pyo3::prelude::*;

use pyo3::exceptions::PyValueError;
use pyo3::types::PyString;
use ringrouter_client::threaded::ThreadedClient;
use ringrouter_client::{Receipt, RoomInfo, Target};

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

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let join_code = match &self.i.join_code {
            Some(c) => PyString::new(py, c).repr()?.to_string(),
            None => "None".to_owned(),
        };
        Ok(format!(
            "RoomInfo(name={}, owner={}, members={}, created_us={}, join_code={})",
            PyString::new(py, &self.i.name).repr()?,
            PyString::new(py, &self.i.owner).repr()?,
            pyo3::types::PyList::new(py, &self.i.members)?.repr()?,
            self.i.created_us,
            join_code
        ))
    }
}

/// Client.mark_read: exactly one of `user` and `room`.
pub(crate) fn mark_read(
    py: Python<'_>,
    c: &ThreadedClient,
    user: Option<String>,
    room: Option<String>,
    msg_id: u64,
) -> PyResult<()> {
    let to = match (&user, &room) {
        (Some(u), None) => Target::User(u),
        (None, Some(r)) => Target::Room(r),
        _ => return Err(PyValueError::new_err("give exactly one of user and room")),
    };
    py.detach(|| c.mark_read(to, msg_id))
        .map_err(|e| to_pyerr(py, e))
}

/// A read receipt, returned by Client.recv().
#[pyclass(frozen, module = "ringrouter", name = "Receipt")]
pub(crate) struct PyReceipt {
    r: Receipt,
}

impl From<Receipt> for PyReceipt {
    fn from(r: Receipt) -> Self {
        PyReceipt { r }
    }
}

#[pymethods]
impl PyReceipt {
    /// Who read.
    #[getter]
    fn user(&self) -> &str {
        &self.r.user
    }

    /// The room read, or None for a direct conversation.
    #[getter]
    fn room(&self) -> Option<&str> {
        self.r.room.as_deref()
    }

    /// The other side of a direct conversation (this user, or, on the reader's
    /// other devices, the peer); None for a room.
    #[getter]
    fn to_user(&self) -> Option<&str> {
        self.r.to_user.as_deref()
    }

    /// The message read up to.
    #[getter]
    fn msg_id(&self) -> u64 {
        self.r.msg_id
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let opt = |v: &Option<String>| -> PyResult<String> {
            Ok(match v {
                Some(s) => PyString::new(py, s).repr()?.to_string(),
                None => "None".into(),
            })
        };
        Ok(format!(
            "Receipt(user={}, room={}, to_user={}, msg_id={})",
            PyString::new(py, &self.r.user).repr()?,
            opt(&self.r.room)?,
            opt(&self.r.to_user)?,
            self.r.msg_id
        ))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyReceipt>()
            .map(|o| o.get().r == self.r)
            .unwrap_or(false)
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.r.hash(&mut h);
        h.finish()
    }
}

/// Adds the social layer's classes to the module.
pub(crate) fn add_classes(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRoomInfo>()?;
    m.add_class::<PyReceipt>()?;
    Ok(())
}
