//! Contacts and presence as Python objects (`Contacts`, `ContactEvent`, `Presence`);
//! the `Client` methods behind them are one-line wrappers in `lib.rs`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;
use ringrouter_client::{ContactEvent, Contacts, Presence, PresenceStatus};

/// A contact list (Client.contacts()).
#[pyclass(frozen, module = "ringrouter", name = "Contacts")]
pub(crate) struct PyContacts {
    c: Contacts,
}

impl From<Contacts> for PyContacts {
    fn from(c: Contacts) -> Self {
        PyContacts { c }
    }
}

#[pymethods]
impl PyContacts {
    /// The list's version: it grows with every change.
    #[getter]
    fn version(&self) -> u64 {
        self.c.version
    }

    /// Accepted contacts (names, in byte order).
    #[getter]
    fn accepted(&self) -> Vec<String> {
        self.c.accepted.clone()
    }

    /// Users whose requests wait for this user's answer.
    #[getter]
    fn incoming(&self) -> Vec<String> {
        self.c.incoming.clone()
    }

    /// Users this user asked, waiting for their answer.
    #[getter]
    fn outgoing(&self) -> Vec<String> {
        self.c.outgoing.clone()
    }

    /// Users this user blocked.
    #[getter]
    fn blocked(&self) -> Vec<String> {
        self.c.blocked.clone()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let list = |v: &Vec<String>| -> PyResult<String> {
            Ok(pyo3::types::PyList::new(py, v)?.repr()?.to_string())
        };
        Ok(format!(
            "Contacts(version={}, accepted={}, incoming={}, outgoing={}, blocked={})",
            self.c.version,
            list(&self.c.accepted)?,
            list(&self.c.incoming)?,
            list(&self.c.outgoing)?,
            list(&self.c.blocked)?
        ))
    }
}

/// A change to this user's contact list, returned by Client.recv().
#[pyclass(frozen, module = "ringrouter", name = "ContactEvent")]
pub(crate) struct PyContactEvent {
    e: ContactEvent,
}

impl From<ContactEvent> for PyContactEvent {
    fn from(e: ContactEvent) -> Self {
        PyContactEvent { e }
    }
}

#[pymethods]
impl PyContactEvent {
    /// "request", "accepted", "declined", "removed" (and, on this user's other
    /// devices, "blocked", "unblocked").
    #[getter]
    fn kind(&self) -> &'static str {
        self.e.kind.name()
    }

    /// The other user.
    #[getter]
    fn user(&self) -> &str {
        &self.e.user
    }

    /// This user's list version after the change.
    #[getter]
    fn version(&self) -> u64 {
        self.e.version
    }

    /// Where `user` stands now: "accepted", "incoming", "outgoing", "blocked" or "none".
    #[getter]
    fn state(&self) -> &'static str {
        self.e.state.name()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "ContactEvent(kind='{}', user={}, version={}, state='{}')",
            self.e.kind.name(),
            PyString::new(py, &self.e.user).repr()?,
            self.e.version,
            self.e.state.name()
        ))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyContactEvent>()
            .map(|o| {
                let o = &o.get().e;
                (o.kind, &o.user, o.version, o.state)
                    == (self.e.kind, &self.e.user, self.e.version, self.e.state)
            })
            .unwrap_or(false)
    }
}

/// A user's presence: Client.presence(user), or pushed to recv() when an accepted
/// contact's presence changes.
#[pyclass(frozen, module = "ringrouter", name = "Presence")]
pub(crate) struct PyPresence {
    p: Presence,
}

impl From<Presence> for PyPresence {
    fn from(p: Presence) -> Self {
        PyPresence { p }
    }
}

#[pymethods]
impl PyPresence {
    /// The user.
    #[getter]
    fn user(&self) -> &str {
        &self.p.user
    }

    /// "online", "away", "dnd" or "offline".
    #[getter]
    fn status(&self) -> &'static str {
        self.p.status.name()
    }

    /// The status text.
    #[getter]
    fn text(&self) -> &str {
        &self.p.text
    }

    /// When the user's last device went away, microseconds since the Unix epoch (0
    /// while online, or never seen).
    #[getter]
    fn last_seen_us(&self) -> u64 {
        self.p.last_seen_us
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Presence(user={}, status='{}', text={}, last_seen_us={})",
            PyString::new(py, &self.p.user).repr()?,
            self.p.status.name(),
            PyString::new(py, &self.p.text).repr()?,
            self.p.last_seen_us
        ))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyPresence>()
            .map(|o| o.get().p == self.p)
            .unwrap_or(false)
    }
}

/// A status name from Python ("online", "away", "dnd", "offline").
pub(crate) fn status(s: &str) -> PyResult<PresenceStatus> {
    PresenceStatus::parse(s).ok_or_else(|| {
        PyValueError::new_err(format!(
            "status must be 'online', 'away', 'dnd' or 'offline', not {s:?}"
        ))
    })
}

/// Adds the classes to the module.
pub(crate) fn add_classes(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyContacts>()?;
    m.add_class::<PyContactEvent>()?;
    m.add_class::<PyPresence>()?;
    Ok(())
}
