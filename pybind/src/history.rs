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

/// A page size: `min` (0 or 1) to the router's `--history-page-max` (the router
/// answers BAD_REQUEST past it); ValueError otherwise, naming `limit` and the range.
fn page_limit(limit: i64, min: i64) -> PyResult<u32> {
    match u32::try_from(limit) {
        Ok(l) if limit >= min => Ok(l),
        _ => Err(PyValueError::new_err(format!(
            "limit must be {} to the router's --history-page-max (500 by default){}, got {limit}",
            min,
            if min == 0 { "; 0 means 50" } else { "" }
        ))),
    }
}

/// `before_us` of `conversations`: microseconds since the Unix epoch, 0 or more.
fn timestamp_us(b: &Bound<'_, PyAny>) -> PyResult<u64> {
    b.extract::<u64>().map_err(|_| {
        PyValueError::new_err(format!(
            "before_us must be a timestamp in microseconds since the Unix epoch (an int, 0 or more), got {}",
            b.repr().map_or_else(|_| "that".into(), |r| r.to_string())
        ))
    })
}

pub(crate) fn history(
    c: &PyClient,
    py: Python<'_>,
    user: Option<String>,
    room: Option<String>,
    before: Option<&Bound<'_, PyAny>>,
    limit: i64,
) -> PyResult<Vec<Py<PyMessage>>> {
    let limit = page_limit(limit, 0)?;
    let before = before_id(before)?;
    let msgs = match (user, room) {
        (Some(u), None) => c.call(py, |t| t.history_with(&u, before, limit))?,
        (None, Some(r)) => c.call(py, |t| t.room_history(&r, before, limit))?,
        (None, None) => {
            return Err(PyValueError::new_err(
                "give user= (a direct conversation) or room=: neither was given",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(PyValueError::new_err(
                "give user= (a direct conversation) or room=, not both",
            ))
        }
    };
    msgs.into_iter()
        .map(|m| Py::new(py, PyMessage { m }))
        .collect()
}

pub(crate) fn conversations(
    c: &PyClient,
    py: Python<'_>,
    limit: i64,
    before_us: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<Py<PyConversation>>> {
    let limit = page_limit(limit, 1)?;
    let before_ts_us = match before_us {
        Some(b) if !b.is_none() => timestamp_us(b)?,
        _ => 0,
    };
    let cs = c.call(py, |t| t.conversations(limit, before_ts_us))?;
    cs.into_iter()
        .map(|c| {
            let last = Py::new(py, PyMessage { m: c.last.clone() })?;
            Py::new(py, PyConversation { c, last })
        })
        .collect()
}
