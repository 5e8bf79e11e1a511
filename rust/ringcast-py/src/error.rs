//! The one mapping from `ringcast_core::Error` and `ringcast_h5::Error` to Python exceptions
//! (`ringcast.errors`).

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use ringcast_core::Error;

/// Errors of the bindings: a core error, an error of the native HDF5 read path, or a Python
/// error that interrupted a wait.
pub enum BindError {
    Core(Error),
    H5(ringcast_h5::Error),
    Py(PyErr),
}

impl From<Error> for BindError {
    fn from(e: Error) -> Self {
        BindError::Core(e)
    }
}

impl From<ringcast_h5::Error> for BindError {
    fn from(e: ringcast_h5::Error) -> Self {
        match e {
            ringcast_h5::Error::Core(e) => BindError::Core(e),
            e => BindError::H5(e),
        }
    }
}

impl From<PyErr> for BindError {
    fn from(e: PyErr) -> Self {
        BindError::Py(e)
    }
}

impl From<BindError> for PyErr {
    fn from(e: BindError) -> PyErr {
        match e {
            BindError::Py(e) => e,
            BindError::Core(e) => Python::attach(|py| to_pyerr(py, e)),
            BindError::H5(e) => Python::attach(|py| h5_to_pyerr(py, e)),
        }
    }
}

fn raise(py: Python<'_>, class: &str, args: Bound<'_, PyTuple>) -> PyErr {
    let made = py
        .import("ringcast.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call1(args));
    match made {
        Ok(obj) => PyErr::from_value(obj),
        Err(e) => e,
    }
}

/// Convert a core error to the matching `ringcast.errors` exception.
pub fn to_pyerr(py: Python<'_>, e: Error) -> PyErr {
    let msg = e.to_string();
    let t1 = |m: String| PyTuple::new(py, [m]).expect("tuple of one str");
    match e {
        Error::NotFound(_) | Error::Removed(_) => raise(py, "SegmentNotFound", t1(msg)),
        Error::Exists(_) => raise(py, "SegmentExists", t1(msg)),
        Error::Corrupt { .. } => raise(py, "CorruptSegment", t1(msg)),
        Error::InvalidArgument(_) => raise(py, "InvalidArgument", t1(msg)),
        Error::Full { needed, free } => {
            let args = (msg, needed, free).into_pyobject(py).expect("tuple");
            raise(py, "Full", args)
        }
        Error::TooLarge { needed, capacity } => {
            let args = (msg, needed, capacity).into_pyobject(py).expect("tuple");
            raise(py, "MessageTooLarge", args)
        }
        Error::Timeout(..) => raise(py, "Timeout", t1(msg)),
        Error::ShutDown(_) => raise(py, "QueueShutDown", t1(msg)),
        Error::Closed(_) => raise(py, "HandleClosed", t1(msg)),
        Error::NoMemberSlot { .. } => raise(py, "NoMemberSlot", t1(msg)),
        Error::Forked(_) => raise(py, "ForkedHandle", t1(msg)),
        Error::Busy(_) | Error::Held(_) => raise(py, "HandleBusy", t1(msg)),
        Error::WorkerDied { .. } => raise(py, "WorkerDied", t1(msg)),
        Error::Interrupted => pyo3::exceptions::PyKeyboardInterrupt::new_err("interrupted"),
        Error::Os { ref source, .. } => {
            let errno = source.raw_os_error().unwrap_or(0);
            let args = (errno, msg).into_pyobject(py).expect("tuple");
            raise(py, "RingcastOSError", args)
        }
    }
}

/// Convert an error of the native HDF5 read path: a bad plan is an `InvalidArgument`, a file's
/// damaged data a `RingcastError`, a failed open or read a `RingcastOSError`.
pub fn h5_to_pyerr(py: Python<'_>, e: ringcast_h5::Error) -> PyErr {
    use ringcast_h5::Error as H5;
    let msg = e.to_string();
    let t1 = |m: String| PyTuple::new(py, [m]).expect("tuple of one str");
    match e {
        H5::Core(e) => to_pyerr(py, e),
        H5::InvalidArgument(_) => raise(py, "InvalidArgument", t1(msg)),
        H5::BadData { .. } => raise(py, "RingcastError", t1(msg)),
        H5::Os { ref source, .. } => {
            let errno = source.raw_os_error().unwrap_or(0);
            let args = (errno, msg).into_pyobject(py).expect("tuple");
            raise(py, "RingcastOSError", args)
        }
    }
}

/// Result type of binding internals.
pub type BResult<T> = Result<T, BindError>;
