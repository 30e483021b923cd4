//! `ringrouter._native`: the Python binding of the ringrouter client.
//!
//! Thin wrappers only. The Python package `ringrouter` (python_client/) re-exports
//! these classes and adds the typed load driver; see its `_native.pyi` for the
//! Python-side documentation of every name here.
//!
//! - [`PyClient`] wraps [`ThreadedClient`]: `send` queues the encoded frame and a
//!   writer thread batches the writes, so a Python loop is not limited by one
//!   syscall per message. Calls that can block release the GIL (`py.detach`); `recv`
//!   and `flush` wait in slices of [`SLICE`], checking for signals (Ctrl-C) in between.
//!   Requests (`wait=True`, rooms, contacts, history) and `close` wait up to the
//!   client's timeout without the GIL, checking for signals every [`SLICE`] too (the
//!   client's interrupt check, [`interrupt_check`]); the login (`Client()`,
//!   `Client.register`) runs on a thread of its own while the caller waits in slices.
//! - Errors map to `RouterError` (attributes `code`, `status`, `reason`) and its subclasses
//!   `AuthError` (a refused login, and any UNAUTHORIZED answer) and
//!   `ConnectionClosed`; timeouts to the builtin `TimeoutError`, socket errors to
//!   the builtin `OSError` subclasses.
//! - `recv()` returns a [`PyMessage`] or, for a room event, a [`PyEvent`]; the social
//!   layer's objects (receipts in `social`, contact events and presence in `contacts`).
//! - [`load_run`] runs the Rust load engine with the GIL released.
//! - `Status` ([`status`]) is the protocol's status enum as an `enum.IntEnum`;
//!   `__version__` is this crate's version, the one version of the package.

mod contacts;
mod history;
mod social;
mod status;
mod transport;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::{
    PyConnectionError, PyException, PyRuntimeError, PyTimeoutError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyString, PyTuple};

use ringrouter_client::load::{self, LoadConfig, LoadError, Progress, Protocol};
use ringrouter_client::threaded::ThreadedClient;
use ringrouter_client::{
    Client, ClientConfig, ClientError, Event, Message, RoomEventKind, Status, Target,
};

create_exception!(
    ringrouter,
    RouterError,
    PyException,
    "The router refused a request or reported an error.\n\n\
     Attributes: `code`, the status name (e.g. \"NOT_FOUND\"); `status`, the same as a \
     `Status` member (None for ConnectionClosed and protocol errors); and `reason`, the \
     router's text."
);
create_exception!(
    ringrouter,
    AuthError,
    RouterError,
    "The router refused the login (bad credentials, invalid token, ...)."
);
create_exception!(
    ringrouter,
    ConnectionClosed,
    RouterError,
    "The connection is closed: by `close()`, by the router, or by the network. `code` is \"CLOSED\"."
);

/// Longest time a blocking call waits without the GIL before checking for signals.
const SLICE: Duration = Duration::from_millis(100);

thread_local! {
    /// The exception of a signal handler (Ctrl-C's KeyboardInterrupt) that the
    /// interrupt check of a request waiting without the GIL got ([`interrupt_check`]):
    /// raised instead of whatever the request returns.
    static INTERRUPTED: std::cell::RefCell<Option<PyErr>> = const { std::cell::RefCell::new(None) };
}

/// The clients' interrupt check ([`ThreadedClient::set_interrupt`]), called every
/// 100 ms by a request or `close` waiting without the GIL: runs the signal handlers
/// (main thread only); true if one raised (kept for [`take_interrupt`]).
fn interrupt_check() -> bool {
    Python::try_attach(|py| match py.check_signals() {
        Ok(()) => false,
        Err(e) => {
            INTERRUPTED.with(|i| *i.borrow_mut() = Some(e));
            true
        }
    })
    .unwrap_or(false)
}

/// The exception [`interrupt_check`] got on this thread, if any.
fn take_interrupt() -> Option<PyErr> {
    INTERRUPTED.with(|i| i.borrow_mut().take())
}

/// Runs `f` on a thread of its own and waits for it without the GIL in slices of
/// [`SLICE`], checking for signals in between: a Ctrl-C is raised at once (the thread
/// finishes on its own, and what it returns is dropped: a client is closed).
fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    f: impl FnOnce() -> T + Send + 'static,
) -> PyResult<T> {
    use std::sync::mpsc::RecvTimeoutError;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ringrouter-login".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start a thread: {e}")))?;
    let mut rx = Some(rx);
    loop {
        // (A Receiver is not Sync: it goes into the closure and back.)
        let (r, back) = py.detach(|| {
            let rx = rx.take();
            let r = rx.as_ref().map(|rx| rx.recv_timeout(SLICE));
            (r, rx)
        });
        rx = back;
        let Some(r) = r else {
            return Err(PyRuntimeError::new_err("the login thread is gone"));
        };
        match r {
            Ok(v) => return Ok(v),
            Err(RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err("the login thread panicked"))
            }
        }
    }
}

/// A `T` (RouterError or a subclass) with `code`, `status` and `reason` set. `code`
/// is the status name, or "CLOSED" / "PROTOCOL" (then `status` is None).
fn router_error<T: pyo3::PyTypeInfo>(
    py: Python<'_>,
    code: &str,
    status: Option<Status>,
    reason: &str,
) -> PyErr {
    let err = PyErr::new::<T, _>(format!("{code}: {reason}"));
    let value = err.value(py);
    let status = match status.map(|s| status::member(py, s)) {
        Some(Ok(member)) => member,
        Some(Err(e)) => return e,
        None => py.None().into_bound(py),
    };
    // Exception instances have a __dict__: these cannot fail short of memory errors.
    let _ = value.setattr("code", code);
    let _ = value.setattr("status", status);
    let _ = value.setattr("reason", reason);
    err
}

/// `router_error` for a status the router sent.
fn status_error<T: pyo3::PyTypeInfo>(py: Python<'_>, status: Status, reason: &str) -> PyErr {
    router_error::<T>(py, status.short_name(), Some(status), reason)
}

fn to_pyerr(py: Python<'_>, e: ClientError) -> PyErr {
    // A request the interrupt check ended: the signal's exception.
    if let Some(interrupt) = take_interrupt() {
        return interrupt;
    }
    match e {
        ClientError::Auth { code, reason }
        | ClientError::Router {
            code: code @ Status::Unauthorized,
            reason,
            ..
        } => status_error::<AuthError>(py, code, &reason),
        ClientError::Router { code, reason, .. } => status_error::<RouterError>(py, code, &reason),
        ClientError::Closed(why) => router_error::<ConnectionClosed>(py, "CLOSED", None, &why),
        ClientError::Timeout => PyTimeoutError::new_err("timed out waiting for the router"),
        ClientError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            PyTimeoutError::new_err(format!("timed out connecting to the router: {e}"))
        }
        ClientError::Io(e) => e.into(),
        ClientError::Protocol(why) => router_error::<RouterError>(py, "PROTOCOL", None, &why),
        ClientError::Tls(why) => transport::tls_error(py, &why),
    }
}

/// The longest duration an argument may give, in seconds (about 31 years): deadlines
/// further away than that would overflow the clock.
const MAX_SECS: f64 = 1e9;

/// `secs` (the argument `what`) as a Duration: ValueError for a negative number, NaN,
/// or more than [`MAX_SECS`].
fn duration(what: &str, secs: f64) -> PyResult<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{what} must be a non-negative number of seconds, got {secs}"
        )));
    }
    if secs > MAX_SECS {
        return Err(PyValueError::new_err(format!(
            "{what} is too large: at most {MAX_SECS:.0} seconds, got {secs}"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A wait limit (`recv`, `flush`): None, or more than [`MAX_SECS`] (`float("inf")`),
/// waits as long as it takes.
fn wait_limit(what: &str, secs: Option<f64>) -> PyResult<Option<Duration>> {
    match secs {
        Some(s) if s > MAX_SECS => Ok(None),
        Some(s) => duration(what, s).map(Some),
        None => Ok(None),
    }
}

/// The connect / request timeout of a Client (or `register`): more than zero, for
/// every wait has a limit.
fn client_timeout(secs: f64) -> PyResult<Duration> {
    let d = duration("timeout", secs)?;
    if d.is_zero() {
        return Err(PyValueError::new_err(format!(
            "timeout must be more than 0 seconds (the limit of every wait for the router), got {secs}"
        )));
    }
    Ok(d)
}

/// ValueError for an empty `name` (the argument `what`: a user or a room name).
fn non_empty(what: &str, name: &Bound<'_, PyString>) -> PyResult<()> {
    if name.len()? == 0 {
        return Err(PyValueError::new_err(format!(
            "{what} must not be empty (a {} name)",
            if what == "room" { "room" } else { "user" }
        )));
    }
    Ok(())
}

/// The user names of the iterable `names` (the argument `what`): any iterable of
/// str but a str itself (whose characters would be taken for names).
fn user_names(what: &str, names: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if names.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be an iterable of user names (str), not a str: [{}]?",
            names.repr()?
        )));
    }
    let it = names.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be an iterable of user names (str), not {}",
            names
                .get_type()
                .name()
                .map_or_else(|_| "that".into(), |n| n.to_string())
        ))
    })?;
    it.map(|name| {
        let name = name?;
        name.extract::<String>().map_err(|_| {
            PyTypeError::new_err(format!(
                "{what} must hold user names (str), not {}",
                name.get_type()
                    .name()
                    .map_or_else(|_| "that".into(), |n| n.to_string())
            ))
        })
    })
    .collect()
}

/// A message delivered to this session.
#[pyclass(frozen, module = "ringrouter", name = "Message")]
struct PyMessage {
    m: Message,
}

#[pymethods]
impl PyMessage {
    /// The authenticated sender (stamped by the router, never chosen by a client).
    #[getter]
    fn sender(&self) -> &str {
        &self.m.sender
    }

    /// The room, or None for a direct message.
    #[getter]
    fn room(&self) -> Option<&str> {
        self.m.room.as_deref()
    }

    /// The payload.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.m.payload)
    }

    /// Per-session sequence number (1, 2, 3, ... in delivery order).
    #[getter]
    fn seq(&self) -> u64 {
        self.m.seq
    }

    /// Message id: the same for every recipient and every redelivery (dedupe key).
    #[getter]
    fn msg_id(&self) -> u64 {
        self.m.msg_id
    }

    /// Router clock when it accepted the message, microseconds since the Unix epoch.
    #[getter]
    fn timestamp_us(&self) -> u64 {
        self.m.timestamp_us
    }

    /// True for an ephemeral message (send(..., ephemeral=True): typing indicators
    /// and the like): live sessions only, never stored; its seq is 0.
    #[getter]
    fn ephemeral(&self) -> bool {
        self.m.ephemeral
    }

    /// True for a copy of a direct message this user sent from another device
    /// (`sender` is this user, `to_user` the recipient; seq 0).
    #[getter]
    fn outgoing(&self) -> bool {
        self.m.outgoing
    }

    /// The recipient of an outgoing copy (see `outgoing`); None otherwise.
    #[getter]
    fn to_user(&self) -> Option<&str> {
        self.m.to_user.as_deref()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let shown = &self.m.payload[..self.m.payload.len().min(32)];
        let mut payload = PyBytes::new(py, shown).repr()?.to_string();
        if shown.len() < self.m.payload.len() {
            payload.push_str(&format!("... ({} bytes)", self.m.payload.len()));
        }
        let room = match &self.m.room {
            Some(r) => PyString::new(py, r).repr()?.to_string(),
            None => "None".into(),
        };
        let mut extra = String::new();
        if self.m.ephemeral {
            extra.push_str(", ephemeral=True");
        }
        if self.m.outgoing {
            extra.push_str(", outgoing=True");
        }
        if let Some(to) = &self.m.to_user {
            extra.push_str(&format!(", to_user={}", PyString::new(py, to).repr()?));
        }
        Ok(format!(
            "Message(sender={}, room={}, payload={}, seq={}, msg_id={}, timestamp_us={}{extra})",
            PyString::new(py, &self.m.sender).repr()?,
            room,
            payload,
            self.m.seq,
            self.m.msg_id,
            self.m.timestamp_us
        ))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyMessage>()
            .map(|o| o.get().m == self.m)
            .unwrap_or(false)
    }

    fn __hash__(&self) -> u64 {
        self.m.msg_id ^ self.m.seq.rotate_left(32)
    }
}

/// Something happened to a room this user is (or was) a member of.
#[pyclass(frozen, module = "ringrouter", name = "Event")]
struct PyEvent {
    kind: RoomEventKind,
    room: String,
    user: String,
}

#[pymethods]
impl PyEvent {
    /// "joined", "left", "removed" or "deleted" ("unknown" for a kind this client
    /// does not know).
    #[getter]
    fn kind(&self) -> &'static str {
        self.kind.name()
    }

    /// The room.
    #[getter]
    fn room(&self) -> &str {
        &self.room
    }

    /// The user who joined, left or was removed; the owner for "deleted".
    #[getter]
    fn user(&self) -> &str {
        &self.user
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Event(kind={}, room={}, user={})",
            PyString::new(py, self.kind.name()).repr()?,
            PyString::new(py, &self.room).repr()?,
            PyString::new(py, &self.user).repr()?,
        ))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyEvent>()
            .map(|o| {
                let o = o.get();
                (o.kind, &o.room, &o.user) == (self.kind, &self.room, &self.user)
            })
            .unwrap_or(false)
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.kind, &self.room, &self.user).hash(&mut h);
        h.finish()
    }
}

/// A message or a room event, as Python objects.
fn incoming(py: Python<'_>, ev: Event) -> PyResult<Option<Py<PyAny>>> {
    Ok(match ev {
        Event::Message(m) => Some(Py::new(py, PyMessage { m })?.into_any()),
        Event::Room {
            kind, room, user, ..
        } => Some(Py::new(py, PyEvent { kind, room, user })?.into_any()),
        Event::Receipt(r) => Some(Py::new(py, social::PyReceipt::from(r))?.into_any()),
        Event::Contact(e) => Some(Py::new(py, contacts::PyContactEvent::from(e))?.into_any()),
        Event::Presence(p) => Some(Py::new(py, contacts::PyPresence::from(p))?.into_any()),
        // recv_event hands out nothing else.
        _ => None,
    })
}

/// A connection to the router, logged in as one user.
///
/// Client(addr, user, *, password=None, token=None, device="python", timeout=5.0,
///        tls=False, ca_file=None, transport="tcp", reconnect=False)
/// connects to addr ("host:port") and logs in. Raises AuthError if the login is
/// refused, TimeoutError if connecting or logging in takes longer than timeout
/// seconds, OSError (e.g. ConnectionRefusedError) if the router cannot be reached.
///
/// tls=True: TLS, the certificate verified against ca_file (PEM) or the built-in
/// roots, for the host of addr (ssl.SSLCertVerificationError if it does not
/// verify). transport="ws": WebSocket (subprotocol ringrouter.v1) to the router's
/// HTTP port, which addr then names (over TLS too with tls=True).
///
/// Thread-safe: one thread may block in recv() while others send(). A context
/// manager; close() when done. send() queues the message for a writer thread
/// that batches writes; a reader thread receives, acks and answers heartbeats.
///
/// timeout: seconds, more than 0 (at most 1e9); it also bounds every request waiting
/// for the router's answer.
///
/// reconnect=True: a dropped connection is resumed transparently (send() and recv()
/// keep working, the router's Error announcing the end resumed from is not raised; sends are kept until the router acknowledges them and sent again
/// if it had not taken them; recv() never returns the same (sender, msg_id) twice);
/// the reconnects property counts the reconnections.
#[pyclass(frozen, module = "ringrouter", name = "Client")]
struct PyClient {
    c: ThreadedClient,
    /// The last `to` string object and its UTF-8 text: a send loop passes the same
    /// object every time, and abi3 on Python 3.9 cannot borrow a str's UTF-8.
    to_cache: Mutex<Option<(Py<PyString>, String)>>,
}

impl PyClient {
    /// `f` with the UTF-8 text of `to` (cached by object identity).
    fn with_to<R>(&self, to: &Bound<'_, PyString>, f: impl FnOnce(&str) -> R) -> PyResult<R> {
        let mut cache = self.to_cache.lock().unwrap_or_else(|e| e.into_inner());
        match &*cache {
            Some((obj, text)) if to.is(obj) => Ok(f(text)),
            _ => {
                let text = to.to_cow()?.into_owned();
                let r = f(&text);
                *cache = Some((to.clone().unbind(), text));
                Ok(r)
            }
        }
    }

    fn to_text(&self, to: &Bound<'_, PyString>) -> PyResult<String> {
        self.with_to(to, |t| t.to_owned())
    }

    /// Waits for the next message or room event without the GIL, in slices,
    /// checking signals.
    fn recv_blocking(
        &self,
        py: Python<'_>,
        timeout: Option<Duration>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
                None => SLICE,
            };
            match py.detach(|| self.c.recv_event(Some(slice))) {
                Ok(Some(ev)) => {
                    if let Some(obj) = incoming(py, ev)? {
                        return Ok(Some(obj));
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(to_pyerr(py, e)),
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// Queues a fire-and-forget Send to `to` (a user or a room): at once if the
    /// buffer has room (GIL held), else waiting for room without the GIL.
    fn send_queued(
        &self,
        py: Python<'_>,
        to: &Bound<'_, PyString>,
        payload: &[u8],
        room: bool,
    ) -> PyResult<()> {
        let try_send = |t: &str| {
            if room {
                self.c.try_send_room(t, payload)
            } else {
                self.c.try_send(t, payload)
            }
        };
        match self.with_to(to, try_send)? {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(to_pyerr(py, e)),
        }
        // The buffer is full: the router (or the network) is behind. Wait for room.
        let to = self.to_text(to)?;
        loop {
            let r = py.detach(|| {
                if room {
                    self.c.send_room_timeout(&to, payload, Some(SLICE))
                } else {
                    self.c.send_timeout(&to, payload, Some(SLICE))
                }
            });
            match r {
                Ok(true) => return Ok(()),
                Ok(false) => py.check_signals()?,
                Err(e) => return Err(to_pyerr(py, e)),
            }
        }
    }

    /// Runs a request without the GIL and maps its error.
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&ThreadedClient) -> Result<T, ClientError> + Send,
    ) -> PyResult<T> {
        let r = py.detach(|| f(&self.c));
        if let Some(interrupt) = take_interrupt() {
            return Err(interrupt);
        }
        r.map_err(|e| to_pyerr(py, e))
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        // An unclosed client is closed (queued sends written, Logout) when collected;
        // that may wait for the router, so not with the GIL held.
        if !self.c.is_closed() {
            let c = &self.c;
            Python::attach(|py| py.detach(|| c.close())).ok();
            if take_interrupt().is_some() {
                // Ctrl-C during the close: nothing here can raise it; raised again
                // at the next signal check.
                // SAFETY: sets a flag; callable from any thread.
                unsafe { pyo3::ffi::PyErr_SetInterrupt() };
            }
        }
    }
}

#[pymethods]
impl PyClient {
    #[new]
    #[pyo3(
        signature = (addr, user, *, password=None, token=None, device=String::from("python"), timeout=5.0, tls=false, ca_file=None, transport=String::from("tcp"), reconnect=false),
        text_signature = "(addr, user, *, password=None, token=None, device='python', timeout=5.0, tls=False, ca_file=None, transport='tcp', reconnect=False)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        addr: String,
        user: String,
        password: Option<String>,
        token: Option<String>,
        device: String,
        timeout: f64,
        tls: bool,
        ca_file: Option<std::path::PathBuf>,
        transport: String,
        reconnect: bool,
    ) -> PyResult<Self> {
        let mut cfg = ClientConfig::new(user);
        cfg.reconnect = reconnect;
        cfg.transport = transport::transport(&addr, tls, ca_file, &transport)?;
        cfg.password = password;
        cfg.token = token;
        cfg.device = device;
        cfg.timeout = client_timeout(timeout)?;
        let c = interruptible(py, move || ThreadedClient::connect(addr.as_str(), cfg))?
            .map_err(|e| to_pyerr(py, e))?;
        c.set_interrupt(interrupt_check);
        Ok(PyClient {
            c,
            to_cache: Mutex::new(None),
        })
    }

    /// The authenticated user name (for jwt logins: the token's subject).
    #[getter]
    fn user(&self) -> &str {
        self.c.user()
    }

    /// The router's id for this session.
    #[getter]
    fn session_id(&self) -> u64 {
        self.c.session_id()
    }

    /// Whether the connection is closed.
    #[getter]
    fn closed(&self) -> bool {
        self.c.is_closed()
    }

    /// How many times a dropped connection was re-established (reconnect=True).
    #[getter]
    fn reconnects(&self) -> u64 {
        self.c.reconnects()
    }

    /// Sends payload (bytes) to every session of user `to`.
    ///
    /// Without wait the message is queued and written shortly after by the writer
    /// thread; the call blocks only while the 4 MiB send buffer is full. With
    /// wait=True it waits for the router's answer: RouterError if it is not OK
    /// (e.g. code "NOT_FOUND": `to` is not a known user; a known user who is
    /// offline has the message stored, and the answer is OK), TimeoutError if none comes
    /// within the client's timeout. ConnectionClosed once the connection is closed.
    /// ValueError for an empty `to`; RouterError "TOO_LARGE", nothing sent, for a
    /// frame larger than the router takes (its login answer's max_frame_bytes).
    ///
    /// With ephemeral=True (typing indicators and the like) the message reaches
    /// the live sessions of `to` only: never stored, never redelivered, and it
    /// arrives as a Message with ephemeral=True and seq 0.
    #[pyo3(signature = (to, payload, *, wait=false, ephemeral=false))]
    fn send(
        &self,
        py: Python<'_>,
        to: &Bound<'_, PyString>,
        payload: &[u8],
        wait: bool,
        ephemeral: bool,
    ) -> PyResult<()> {
        non_empty("to", to)?;
        if ephemeral {
            let to = self.to_text(to)?;
            return social::send_ephemeral(py, &self.c, Target::User(&to), payload, wait);
        }
        if wait {
            let to = self.to_text(to)?;
            return self.call(py, |c| c.send_wait(&to, payload)).map(drop);
        }
        self.send_queued(py, to, payload, false)
    }

    /// Sends payload (bytes) to every member of `room` (every session of each
    /// member, the sender's other devices included).
    ///
    /// Like send(): queued without wait; with wait=True it waits for the
    /// router's answer and raises RouterError if it is not OK (e.g. "NOT_FOUND":
    /// no such room, "FORBIDDEN": not a member). ValueError for an empty `room`;
    /// RouterError "TOO_LARGE" for a frame larger than the router takes.
    ///
    /// With ephemeral=True the message reaches the members' live sessions only
    /// (see send()).
    #[pyo3(signature = (room, payload, *, wait=false, ephemeral=false))]
    fn send_room(
        &self,
        py: Python<'_>,
        room: &Bound<'_, PyString>,
        payload: &[u8],
        wait: bool,
        ephemeral: bool,
    ) -> PyResult<()> {
        non_empty("room", room)?;
        if ephemeral {
            let room = self.to_text(room)?;
            return social::send_ephemeral(py, &self.c, Target::Room(&room), payload, wait);
        }
        if wait {
            let room = self.to_text(room)?;
            return self
                .call(py, |c| c.send_room_wait(&room, payload))
                .map(drop);
        }
        self.send_queued(py, room, payload, true)
    }

    /// Creates the account `user` with `password` on a router started with
    /// `--auth accounts`, over a connection of its own (closed again). Log in
    /// afterwards with Client(addr, user, password=password).
    ///
    /// RouterError "CONFLICT" if the user exists, "BAD_REQUEST" for a name or
    /// password the router refuses.
    ///
    /// timeout, tls, ca_file and transport as for Client(): TimeoutError if
    /// connecting or the router's answer takes longer than timeout seconds.
    #[staticmethod]
    #[pyo3(
        signature = (addr, user, password, *, timeout=5.0, tls=false, ca_file=None, transport=String::from("tcp")),
        text_signature = "(addr, user, password, *, timeout=5.0, tls=False, ca_file=None, transport='tcp')"
    )]
    #[allow(clippy::too_many_arguments)]
    fn register(
        py: Python<'_>,
        addr: String,
        user: String,
        password: String,
        timeout: f64,
        tls: bool,
        ca_file: Option<std::path::PathBuf>,
        transport: String,
    ) -> PyResult<()> {
        let mut cfg = ClientConfig::new(user.as_str());
        cfg.timeout = client_timeout(timeout)?;
        cfg.transport = transport::transport(&addr, tls, ca_file, &transport)?;
        interruptible(py, move || {
            Client::register_with(addr.as_str(), &user, &password, cfg)
        })?
        .map(drop)
        .map_err(|e| to_pyerr(py, e))
    }

    /// Creates room `name` owned by this user (its first member), protected by
    /// `password` if given (positional or keyword), with `members` (user names,
    /// keyword only) as members from the start.
    /// `members`: any iterable of str (a str itself is a TypeError).
    /// Returns the room's join code. RouterError "CONFLICT" if the name is taken,
    /// "NOT_FOUND" if a member does not exist, "BAD_REQUEST" for more members than
    /// the router's --max-members-per-room. Each member gets an Event "joined".
    #[pyo3(
        signature = (name, password=None, *, members=None),
        text_signature = "($self, name, password=None, *, members=())"
    )]
    fn create_room(
        &self,
        py: Python<'_>,
        name: String,
        password: Option<String>,
        members: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let members = match members {
            Some(m) => user_names("members", m)?,
            None => Vec::new(),
        };
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        self.call(py, |c| {
            c.create_room_with(&name, password.as_deref(), &members)
        })
    }

    /// Marks a conversation read up to message `msg_id`: the direct one with
    /// `user`, or the room `room` (exactly one). The peer's live devices (every
    /// member's, for a room) and this user's other live devices get a Receipt from
    /// recv(). Waits for the router: RouterError "FORBIDDEN" for a room this user
    /// is not in; ValueError for neither or both of user and room.
    #[pyo3(signature = (*, user=None, room=None, msg_id))]
    fn mark_read(
        &self,
        py: Python<'_>,
        user: Option<String>,
        room: Option<String>,
        msg_id: u64,
    ) -> PyResult<()> {
        social::mark_read(py, &self.c, user, room, msg_id)
    }

    /// Asks `user` to become a contact (or accepts `user`'s pending request). `user`
    /// gets a ContactEvent "request" (at its next login if it is offline). RouterError
    /// "FORBIDDEN" if `user` blocked this user, "NOT_FOUND" for an unknown user,
    /// "RATE_LIMITED" past the router's --max-contacts-per-user (either list) or
    /// --max-contact-requests (requests waiting for `user`).
    fn contact_request(&self, py: Python<'_>, user: String) -> PyResult<()> {
        self.call(py, |c| c.contact_request(&user)).map(drop)
    }

    /// Accepts `user`'s request (RouterError "NOT_FOUND" without one); `user` gets a
    /// ContactEvent "accepted".
    fn contact_accept(&self, py: Python<'_>, user: String) -> PyResult<()> {
        self.call(py, |c| c.contact_accept(&user)).map(drop)
    }

    /// Declines `user`'s request (RouterError "NOT_FOUND" without one); `user` gets a
    /// ContactEvent "declined".
    fn contact_decline(&self, py: Python<'_>, user: String) -> PyResult<()> {
        self.call(py, |c| c.contact_decline(&user)).map(drop)
    }

    /// Removes the contact `user` or withdraws this user's request to it (RouterError
    /// "NOT_FOUND" otherwise); `user` gets a ContactEvent "removed".
    fn contact_remove(&self, py: Python<'_>, user: String) -> PyResult<()> {
        self.call(py, |c| c.contact_remove(&user)).map(drop)
    }

    /// Blocks `user`: its direct messages and contact requests to this user get
    /// RouterError "FORBIDDEN"; it is told nothing else.
    fn block(&self, py: Python<'_>, user: String) -> PyResult<()> {
        self.call(py, |c| c.block(&user)).map(drop)
    }

    /// Unblocks `user` (RouterError "NOT_FOUND" if it was not blocked).
    fn unblock(&self, py: Python<'_>, user: String) -> PyResult<()> {
        self.call(py, |c| c.unblock(&user)).map(drop)
    }

    /// This user's contact list as Contacts (.version, .accepted, .incoming,
    /// .outgoing, .blocked).
    fn contacts(&self, py: Python<'_>) -> PyResult<contacts::PyContacts> {
        self.call(py, |c| c.contacts())
            .map(contacts::PyContacts::from)
    }

    /// Sets this device's presence: status "online", "away", "dnd" or "offline" and a
    /// short text (RouterError "BAD_REQUEST" past the router's
    /// --max-presence-text-bytes). The user's accepted contacts see the most present
    /// status of its devices.
    #[pyo3(signature = (status="online", text=""))]
    fn set_presence(&self, py: Python<'_>, status: &str, text: &str) -> PyResult<()> {
        let status = contacts::status(status)?;
        let text = text.to_owned();
        self.call(py, |c| c.set_presence(status, &text))
    }

    /// The Presence of `user`, an accepted contact (RouterError "FORBIDDEN"
    /// otherwise).
    fn presence(&self, py: Python<'_>, user: String) -> PyResult<contacts::PyPresence> {
        self.call(py, |c| c.presence(&user))
            .map(contacts::PyPresence::from)
    }

    /// The room's details as a RoomInfo: owner, members, creation time, and the
    /// join code when this user owns the room. RouterError "FORBIDDEN" for a
    /// room this user is not a member of, "NOT_FOUND" for no such room.
    fn room_info(&self, py: Python<'_>, room: String) -> PyResult<social::PyRoomInfo> {
        self.call(py, |c| c.room_info(&room))
            .map(social::PyRoomInfo::from)
    }

    /// Joins a room by its name or its join code; returns the room's name.
    /// RouterError "NOT_FOUND" for an unknown room or code, "FORBIDDEN" for a
    /// wrong (or missing) password.
    #[pyo3(signature = (name_or_code, password=None))]
    fn join_room(
        &self,
        py: Python<'_>,
        name_or_code: String,
        password: Option<String>,
    ) -> PyResult<String> {
        self.call(py, |c| c.join_room(&name_or_code, password.as_deref()))
    }

    /// Leaves `room`.
    fn leave_room(&self, py: Python<'_>, room: String) -> PyResult<()> {
        self.call(py, |c| c.leave_room(&room))
    }

    /// Adds `user` to `room` (owner only: else RouterError "FORBIDDEN").
    fn add_member(&self, py: Python<'_>, room: String, user: String) -> PyResult<()> {
        self.call(py, |c| c.add_member(&room, &user))
    }

    /// Removes `user` from `room` (owner only: else RouterError "FORBIDDEN").
    fn remove_member(&self, py: Python<'_>, room: String, user: String) -> PyResult<()> {
        self.call(py, |c| c.remove_member(&room, &user))
    }

    /// Deletes `room` (owner only: else RouterError "FORBIDDEN"); its members
    /// get an Event "deleted".
    fn delete_room(&self, py: Python<'_>, room: String) -> PyResult<()> {
        self.call(py, |c| c.delete_room(&room))
    }

    /// Messages of a conversation, oldest first: the direct one with `user`, or a
    /// `room` this user is a member of (else RouterError "FORBIDDEN"); at most `limit`
    /// (0: 50; up to the router's --history-page-max; negative: ValueError), just before the message `before` (a msg_id or a Message; None:
    /// the newest). Page back with `before=msgs[0]` until a page is empty. Each is a
    /// Message with seq 0.
    #[pyo3(signature = (*, user=None, room=None, before=None, limit=50))]
    fn history(
        &self,
        py: Python<'_>,
        user: Option<String>,
        room: Option<String>,
        before: Option<&Bound<'_, PyAny>>,
        limit: i64,
    ) -> PyResult<Vec<Py<PyMessage>>> {
        history::history(self, py, user, room, before, limit)
    }

    /// This user's conversations with a message kept (direct ones and rooms it is a
    /// member of), newest last message first, at most `limit` (1 to the router's
    /// --history-page-max; less than 1: ValueError); `before_us`
    /// pages on: only those whose last message is older (`last.timestamp_us`).
    #[pyo3(
        signature = (limit=50, *, before_us=None),
        text_signature = "($self, limit=50, *, before_us=0)"
    )]
    fn conversations(
        &self,
        py: Python<'_>,
        limit: i64,
        before_us: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<Py<history::PyConversation>>> {
        history::conversations(self, py, limit, before_us)
    }

    /// The names of the rooms this user is a member of.
    fn rooms(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.call(py, |c| c.rooms())
    }

    /// User names matching the glob `pattern` ("*" any run, "?" one
    /// character), in byte order, at most the router's page size of them.
    #[pyo3(signature = (pattern=String::from("*")), text_signature = "($self, pattern='*')")]
    fn list_users(&self, py: Python<'_>, pattern: String) -> PyResult<Vec<String>> {
        self.call(py, |c| c.list_users(&pattern))
    }

    /// Deletes this user's account, offline messages and room memberships
    /// (rooms it owns are deleted). The router then ends every session of the
    /// user, this one included.
    fn delete_account(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |c| c.delete_account())
    }

    /// Sends every payload (bytes) of the iterable `payloads` to `to`, in order
    /// (fire and forget); faster than a send() loop. Returns how many were queued.
    /// An item that is not bytes is a TypeError (an exception of the iterable is
    /// raised as is) once every item before it is queued; none after it is.
    /// Waits for room in the send buffer without the GIL in slices, checking for
    /// signals (Ctrl-C) in between; errors as for send().
    fn send_many(
        &self,
        py: Python<'_>,
        to: &Bound<'_, PyString>,
        payloads: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        const CHUNK: usize = 4096;
        non_empty("to", to)?;
        let to = self.to_text(to)?;
        let mut chunk: Vec<PyBackedBytes> = Vec::with_capacity(CHUNK);
        let mut n = 0;
        // Queues the chunk, waiting for room without the GIL in slices, checking
        // for signals (Ctrl-C) in between.
        let mut flush = |chunk: &mut Vec<PyBackedBytes>| -> PyResult<()> {
            let mut it = chunk.iter().map(|b| &b[..]).peekable();
            loop {
                let r = py.detach(|| self.c.send_many_timeout(&to, &mut it, Some(SLICE)));
                n += r.map_err(|e| to_pyerr(py, e))?;
                py.check_signals()?;
                if it.peek().is_none() {
                    break;
                }
            }
            chunk.clear();
            Ok(())
        };
        // An item that is not bytes (or the iterable raising) ends it: the items
        // before it are all queued (the chunk converted so far too), none after.
        for (index, p) in payloads.try_iter()?.enumerate() {
            let item = p.and_then(|p| {
                p.extract::<PyBackedBytes>().map_err(|e| {
                    PyTypeError::new_err(format!(
                        "send_many: payloads[{index}] is not bytes ({}); the {index} before it were queued",
                        PyErr::from(e).value(py)
                    ))
                })
            });
            match item {
                Ok(b) => chunk.push(b),
                Err(e) => {
                    flush(&mut chunk)?;
                    return Err(e);
                }
            }
            if chunk.len() == CHUNK {
                flush(&mut chunk)?;
            }
        }
        if !chunk.is_empty() {
            flush(&mut chunk)?;
        }
        Ok(n)
    }

    /// Waits until everything sent so far is written to the socket; False if
    /// `timeout` seconds passed first (None: no limit).
    #[pyo3(signature = (timeout=None))]
    fn flush(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = wait_limit("timeout", timeout)?.map(|t| Instant::now() + t);
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
                None => SLICE,
            };
            match py.detach(|| self.c.flush(Some(slice))) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => return Err(to_pyerr(py, e)),
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// The next Message, or Event for a room event, Receipt, ContactEvent or
    /// Presence, waiting up to `timeout` seconds (None: forever; 0: poll).
    ///
    /// Returns None on timeout. Raises RouterError when the router reports an
    /// error about this session, ConnectionClosed once the connection is closed
    /// and every message received before it was returned.
    #[pyo3(signature = (timeout=None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let timeout = wait_limit("timeout", timeout)?;
        // Fast path, GIL held: something already received.
        loop {
            match self.c.try_recv_event() {
                Ok(Some(ev)) => {
                    if let Some(obj) = incoming(py, ev)? {
                        return Ok(Some(obj));
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(to_pyerr(py, e)),
            }
        }
        if timeout == Some(Duration::ZERO) {
            return Ok(None);
        }
        self.recv_blocking(py, timeout)
    }

    /// Sends what is queued and a Logout, and closes the connection. Messages
    /// received but not yet returned by recv() are dropped (and, unacknowledged,
    /// redelivered by the router at the next login). Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let r = py.detach(|| self.c.close());
        if let Some(interrupt) = take_interrupt() {
            // Closed all the same (without waiting for the router any longer).
            return Err(interrupt);
        }
        r.map_err(|e| to_pyerr(py, e))
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next message or room event; iteration stops when the connection closes.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let r = match self.c.try_recv_event() {
            Ok(Some(ev)) => match incoming(py, ev)? {
                Some(obj) => return Ok(Some(obj)),
                None => self.recv_blocking(py, None),
            },
            Ok(None) => self.recv_blocking(py, None),
            Err(e) => Err(to_pyerr(py, e)),
        };
        match r {
            Err(e) if e.is_instance_of::<ConnectionClosed>(py) => Ok(None),
            other => other,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<ringrouter.Client user={:?} session_id={}{}>",
            self.c.user(),
            self.c.session_id(),
            if self.c.is_closed() { " closed" } else { "" }
        )
    }
}

/// The server protocol of a load run: "ringrouter", "nats" or "redis" (as
/// `ringrouter-load --protocol`), else ValueError.
fn load_protocol(name: &str) -> PyResult<Protocol> {
    match name {
        "ringrouter" => Ok(Protocol::Ringrouter),
        "nats" => Ok(Protocol::Nats),
        "redis" => Ok(Protocol::Redis),
        _ => Err(PyValueError::new_err(format!(
            "protocol must be 'ringrouter', 'nats' or 'redis', got {name:?}"
        ))),
    }
}

/// `redis_reply` of a load run: "on" or "off" (as `ringrouter-load --redis-reply`),
/// else ValueError; true for "off" (`LoadConfig::redis_reply_off`).
fn load_redis_reply_off(value: &str) -> PyResult<bool> {
    match value {
        "on" => Ok(false),
        "off" => Ok(true),
        _ => Err(PyValueError::new_err(format!(
            "redis_reply must be 'on' or 'off', got {value:?}"
        ))),
    }
}

/// Runs the Rust load engine; returns the report as a JSON string.
///
/// protocol, redis_reply, split_shards and client_seq as `ringrouter-load`'s
/// --protocol, --redis-reply, --split-shards and --client-seq (ValueError for a
/// protocol or redis_reply it does not take, or a negative split_shards).
#[pyfunction]
#[pyo3(signature = (addr, *, pairs, size, messages, duration, fanout, rate, window=None, threads=None, progress=None, every=1.0, transport=String::from("tcp"), tls=false, ca_file=None, server_pid=None, user_prefix=None, protocol=String::from("ringrouter"), redis_reply=String::from("on"), split_shards=0, client_seq=false))]
#[allow(clippy::too_many_arguments)]
fn load_run(
    py: Python<'_>,
    addr: String,
    pairs: usize,
    size: usize,
    messages: Option<u64>,
    duration: Option<f64>,
    fanout: Option<usize>,
    rate: Option<f64>,
    window: Option<usize>,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
    every: f64,
    transport: String,
    tls: bool,
    ca_file: Option<std::path::PathBuf>,
    server_pid: Option<u32>,
    user_prefix: Option<String>,
    protocol: String,
    redis_reply: String,
    split_shards: i64,
    client_seq: bool,
) -> PyResult<String> {
    let d = LoadConfig::default();
    let transport = transport::transport(&addr, tls, ca_file, &transport)?;
    let protocol = load_protocol(&protocol)?;
    let redis_reply_off = load_redis_reply_off(&redis_reply)?;
    let split_shards = usize::try_from(split_shards).map_err(|_| {
        PyValueError::new_err(format!(
            "split_shards must be 0 or more, got {split_shards}"
        ))
    })?;
    let cfg = LoadConfig {
        transport,
        addr,
        pairs,
        size,
        messages,
        duration: match duration {
            Some(s) => Some(self::duration("duration", s)?),
            None => None,
        },
        fanout,
        rate,
        window: window.unwrap_or(d.window),
        threads: threads.unwrap_or(d.threads),
        protocol,
        redis_reply_off,
        split_shards,
        client_seq,
        server_pid,
        user_prefix: user_prefix.unwrap_or_else(|| d.user_prefix.clone()),
        ..d
    };
    let every = self::duration("every", every)?;
    // The callback runs on this thread while the engine runs without the GIL; the
    // first exception it raises (Ctrl-C included) is raised once the run ends.
    let mut failed: Option<PyErr> = None;
    let report = py.detach(|| {
        load::run_with_progress(&cfg, every, |p: &Progress| {
            if failed.is_some() {
                return;
            }
            if let Some(cb) = &progress {
                Python::attach(|py| {
                    let r = py
                        .check_signals()
                        .and_then(|_| cb.call1(py, (p.elapsed, p.sent, p.delivered)));
                    if let Err(e) = r {
                        failed = Some(e);
                    }
                });
            }
        })
    });
    if let Some(e) = failed {
        return Err(e);
    }
    match report {
        Ok(r) => Ok(r.to_json()),
        Err(e @ LoadError::Config(_)) => Err(PyValueError::new_err(e.to_string())),
        Err(e @ LoadError::Connect { .. }) => Err(PyConnectionError::new_err(e.to_string())),
        // (message, the report up to the failure as JSON): `ringrouter.load.run` raises
        // a RuntimeError carrying it as `report`.
        Err(ref e @ LoadError::Failed { ref report, .. }) => {
            Err(PyRuntimeError::new_err((e.to_string(), report.to_json())))
        }
        Err(e) => Err(PyRuntimeError::new_err(e.to_string())),
    }
}

/// The native part of the `ringrouter` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyClient>()?;
    m.add_class::<PyMessage>()?;
    m.add_class::<PyEvent>()?;
    social::add_classes(m)?;
    contacts::add_classes(m)?;
    m.add_class::<history::PyConversation>()?;
    let router_error = py.get_type::<RouterError>();
    // Class-level defaults, so that instances raised from Python code have them too.
    router_error.setattr("code", "")?;
    router_error.setattr("status", py.None())?;
    router_error.setattr("reason", "")?;
    m.add("RouterError", router_error)?;
    m.add("AuthError", py.get_type::<AuthError>())?;
    m.add("ConnectionClosed", py.get_type::<ConnectionClosed>())?;
    m.add_function(wrap_pyfunction!(load_run, m)?)?;
    m.add("Status", status::enum_type(py)?)?;
    // The package's one version number: the workspace's (Cargo.toml
    // [workspace.package]), which maturin also gives the wheel.
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
