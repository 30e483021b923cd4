//! `Client.history` and `Client.conversations`, and the `Conversation` class.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use ringrouter_client::Conversation;

use crate::{PyClient, PyMessage};

/// One conversation of `Client.conversations()`: a direct one (`user`) or a room.
#[pyclass(frozen, module = "ringrouter", name = "Conversation")]
pub(crate) struct PyConversation {
    c: Conversation,
    last: Py<PyMessage>,
}

#[pymethods]
impl PyConversation {
    /// The other user of a direct conversation (None for a room).
    #[getter]
    fn user(&self) -> Option<&str> {
        self.c.user.as_deref()
    }

    /// The room (None for a direct conversation).
    #[getter]
    fn room(&self) -> Option<&str> {
        self.c.room.as_deref()
    }

    /// Its newest message kept (a Message with seq 0).
    #[getter]
    fn last(&self, py: Python<'_>) -> Py<PyMessage> {
        self.last.clone_ref(py)
    }

    /// Messages after this user's read mark in it (MarkRead); without one, after the last
    /// one it sent there (all kept ones if it never did).
    #[getter]
    fn unread(&self) -> u64 {
        self.c.unread
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let opt = |s: &Option<String>| -> PyResult<String> {
            Ok(match s {
                Some(s) => PyString::new(py, s).repr()?.to_string(),
                None => "None".into(),
            })
        };
        Ok(format!(
            "Conversation(user={}, room={}, unread={}, last={})",
            opt(&self.c.user)?,
            opt(&self.c.room)?,
            self.c.unread,
            self.last.bind(py).repr()?
        ))
    }
}

/// `before` as a msg_id: an int, a Message (its msg_id) or None (0: the newest).
fn before_id(before: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
    let Some(b) = before else {
        return Ok(0);
    };
    if b.is_none() {
        return Ok(0);
    }
    if let Ok(m) = b.cast::<PyMessage>() {
        return Ok(m.get().m.msg_id);
    }
    b.extract::<u64>()
        .map_err(|_| PyValueError::new_err("before: a msg_id (int) or a Message"))
}

pub(crate) fn history(
    c: &PyClient,
    py: Python<'_>,
    user: Option<String>,
    room: Option<String>,
    before: Option<&Bound<'_, PyAny>>,
    limit: u32,
) -> PyResult<Vec<Py<PyMessage>>> {
    let before = before_id(before)?;
    let msgs = match (user, room) {
        (Some(u), None) => c.call(py, |t| t.history_with(&u, before, limit))?,
        (None, Some(r)) => c.call(py, |t| t.room_history(&r, before, limit))?,
        _ => return Err(PyValueError::new_err("give user= or room=, not both")),
    };
    msgs.into_iter()
        .map(|m| Py::new(py, PyMessage { m }))
        .collect()
}

pub(crate) fn conversations(
    c: &PyClient,
    py: Python<'_>,
    limit: u32,
    before_ts_us: u64,
) -> PyResult<Vec<Py<PyConversation>>> {
    let cs = c.call(py, |t| t.conversations(limit, before_ts_us))?;
    cs.into_iter()
        .map(|c| {
            let last = Py::new(py, PyMessage { m: c.last.clone() })?;
            Py::new(py, PyConversation { c, last })
        })
        .collect()
}
