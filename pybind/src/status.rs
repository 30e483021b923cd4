//! `ringrouter.Status`: the protocol's `Status` enum (proto/router.proto) as a Python
//! `enum.IntEnum`, built from the Rust enum that prost generates from the .proto, so
//! the Python names and values cannot drift from the wire.
//!
//! Member names are the protobuf names without their `STATUS_` prefix (what
//! `Status::short_name` gives, the same strings as `RouterError.code`), values the
//! wire values: `Status.NOT_FOUND == 6`.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use ringrouter_client::Status;

/// Wire values scanned for members. The proto's values are small and dense; a test
/// (python_client/tests) compares the enum with proto/router.proto, so a value past
/// this bound would be noticed.
const MAX_WIRE_VALUE: i32 = 255;

const DOC: &str = "A protocol status (proto/router.proto, enum Status) as an IntEnum.\n\n\
Member names are the protobuf names without the STATUS_ prefix, values the wire \
values: Status.NOT_FOUND == 6. RouterError.status is one of these (None for \
ConnectionClosed and protocol errors); Status.NOT_FOUND.name is the string in \
RouterError.code.";

static STATUS_ENUM: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Every `Status` of the protocol, in wire-value order: `(short name, wire value)`.
pub(crate) fn table() -> Vec<(&'static str, i32)> {
    (0..=MAX_WIRE_VALUE)
        .filter_map(|v| Status::try_from(v).ok())
        .map(|s| (s.short_name(), s as i32))
        .collect()
}

/// The `ringrouter.Status` class (created once per interpreter).
pub(crate) fn enum_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    STATUS_ENUM
        .get_or_try_init(py, || -> PyResult<Py<PyType>> {
            let int_enum = py.import("enum")?.getattr("IntEnum")?;
            let kwargs = PyDict::new(py);
            kwargs.set_item("module", "ringrouter")?;
            let cls = int_enum.call(("Status", table()), Some(&kwargs))?;
            cls.setattr("__doc__", DOC)?;
            Ok(cls.cast_into::<PyType>()?.unbind())
        })
        .map(|t| t.bind(py))
}

/// The `ringrouter.Status` member for `status`.
pub(crate) fn member(py: Python<'_>, status: Status) -> PyResult<Bound<'_, PyAny>> {
    enum_type(py)?.call1((status as i32,))
}
