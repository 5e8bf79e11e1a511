//! The one mapping from the errors of `ringcast_core` and `ringcast_h5` to the exception
//! classes of `ringcast.errors`. The classes are looked up once per process (on the first
//! error) and cached.

use std::time::Duration;

use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use ringcast_core::Error;

/// Errors of the bindings: a core error, an error of the native HDF5 read path, a receive
/// that found no message, or a Python error (raised by a conversion, or by a signal handler
/// that interrupted a wait).
pub enum BindError {
    /// A core error, mapped to its `ringcast.errors` class.
    Core(Error),
    /// An error of the native HDF5 read path (other than a core error it passed through).
    H5(ringcast_h5::Error),
    /// No message before the timeout: `ringcast.errors.Empty` with this text.
    Empty(String),
    /// A Python exception, raised as is.
    Py(PyErr),
}

/// Result type of binding internals (and of the Python methods: `PyErr: From<BindError>`).
pub type BResult<T> = Result<T, BindError>;

/// `Empty` after a receive with `timeout` found no message.
pub fn empty(timeout: Option<f64>) -> BindError {
    BindError::Empty(match timeout {
        Some(t) if t > 0.0 => format!("no message within {t} s"),
        _ => "no message available".to_owned(),
    })
}

/// `Timeout` after waiting `timeout` seconds (`None` or negative: 0) for `what`.
pub fn timed_out(timeout: Option<f64>, what: &'static str) -> BindError {
    BindError::Core(Error::Timeout(
        Duration::from_secs_f64(timeout.unwrap_or(0.0).max(0.0)),
        what,
    ))
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
            BindError::H5(e) => Python::attach(|py| match classes(py) {
                Ok(c) => map_h5(py, c, e),
                Err(err) => err,
            }),
            BindError::Empty(msg) => Python::attach(|py| match classes(py) {
                Ok(c) => new(py, &c.empty, (msg,)),
                Err(e) => e,
            }),
        }
    }
}

/// The exception classes of `ringcast.errors` the mapping raises.
struct Classes {
    ringcast_error: Py<PyType>,
    empty: Py<PyType>,
    full: Py<PyType>,
    too_large: Py<PyType>,
    timeout: Py<PyType>,
    shut_down: Py<PyType>,
    not_found: Py<PyType>,
    exists: Py<PyType>,
    corrupt: Py<PyType>,
    permission: Py<PyType>,
    invalid: Py<PyType>,
    closed: Py<PyType>,
    no_slot: Py<PyType>,
    forked: Py<PyType>,
    busy: Py<PyType>,
    worker_died: Py<PyType>,
    os_error: Py<PyType>,
    no_space: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// The classes, imported from `ringcast.errors` on first use.
fn classes(py: Python<'_>) -> PyResult<&'static Classes> {
    CLASSES.get_or_try_init(py, || {
        let m = py.import("ringcast.errors")?;
        let get = |name: &str| -> PyResult<Py<PyType>> {
            Ok(m.getattr(name)?.cast_into::<PyType>()?.unbind())
        };
        Ok(Classes {
            ringcast_error: get("RingcastError")?,
            empty: get("Empty")?,
            full: get("Full")?,
            too_large: get("MessageTooLarge")?,
            timeout: get("Timeout")?,
            shut_down: get("QueueShutDown")?,
            not_found: get("SegmentNotFound")?,
            exists: get("SegmentExists")?,
            corrupt: get("CorruptSegment")?,
            permission: get("SegmentPermissionError")?,
            invalid: get("InvalidArgument")?,
            closed: get("HandleClosed")?,
            no_slot: get("NoMemberSlot")?,
            forked: get("ForkedHandle")?,
            busy: get("HandleBusy")?,
            worker_died: get("WorkerDied")?,
            os_error: get("RingcastOSError")?,
            no_space: get("NoShmSpace")?,
        })
    })
}

/// An exception of class `cls` made with `args` (when it is raised or inspected).
fn new<A>(py: Python<'_>, cls: &Py<PyType>, args: A) -> PyErr
where
    A: for<'py> IntoPyObject<'py> + Send + Sync + 'static,
{
    PyErr::from_type(cls.bind(py).clone(), args)
}

/// Convert a core error to the matching `ringcast.errors` exception (`Interrupted`, a wait
/// stopped with no Python exception pending, to `KeyboardInterrupt`).
fn to_pyerr(py: Python<'_>, e: Error) -> PyErr {
    match e {
        Error::Interrupted => PyKeyboardInterrupt::new_err("interrupted"),
        e => match classes(py) {
            Ok(c) => map(py, c, e),
            Err(err) => err,
        },
    }
}

fn map(py: Python<'_>, c: &Classes, e: Error) -> PyErr {
    let msg = e.to_string();
    let cls = match e {
        Error::NotFound(_) | Error::Removed(_) => &c.not_found,
        Error::Exists(_) => &c.exists,
        Error::Corrupt { .. } => &c.corrupt,
        Error::Permission { .. } => &c.permission,
        Error::InvalidArgument(_) => &c.invalid,
        Error::Full { needed, free } => return new(py, &c.full, (msg, needed, free)),
        Error::TooLarge { needed, capacity } => {
            return new(py, &c.too_large, (msg, needed, capacity))
        }
        Error::Timeout(..) => &c.timeout,
        Error::ShutDown(_) => &c.shut_down,
        Error::Closed(_) => &c.closed,
        Error::NoMemberSlot { .. } => &c.no_slot,
        Error::Forked(_) => &c.forked,
        Error::Busy(_) | Error::Held(_) => &c.busy,
        Error::WorkerDied { .. } => &c.worker_died,
        Error::Os { ref source, .. } => {
            let errno = source.raw_os_error().unwrap_or(0);
            return new(py, &c.os_error, (errno, msg));
        }
        Error::NoSpace {
            asked, free, total, ..
        } => return new(py, &c.no_space, (msg, asked, free, total)),
        Error::Interrupted => return PyKeyboardInterrupt::new_err("interrupted"),
    };
    new(py, cls, (msg,))
}

/// An error of the native HDF5 read path: a bad plan is an `InvalidArgument`, a file's
/// damaged data a `RingcastError`, a failed open or read a `RingcastOSError`.
fn map_h5(py: Python<'_>, c: &Classes, e: ringcast_h5::Error) -> PyErr {
    use ringcast_h5::Error as H5;
    let msg = e.to_string();
    match e {
        H5::Core(e) => map(py, c, e),
        H5::InvalidArgument(_) => new(py, &c.invalid, (msg,)),
        H5::BadData { .. } => new(py, &c.ringcast_error, (msg,)),
        H5::Os { ref source, .. } => {
            let errno = source.raw_os_error().unwrap_or(0);
            new(py, &c.os_error, (errno, msg))
        }
    }
}

#[cfg(test)]
mod tests {
    //! `cargo test` builds this crate without the `extension-module` feature, so pyo3 links
    //! libpython and these tests run an embedded interpreter. The exception classes come
    //! from this checkout's `python/ringcast/errors.py`, loaded by path and registered as
    //! `ringcast.errors` (under a stand-in `ringcast` package, since importing a dotted name
    //! imports its parent first) before the first lookup. errors.py imports only the
    //! standard library, so the tests need no installed ringcast (nor the compiled module),
    //! and they check the classes of the tree they build.

    use std::ffi::CString;
    use std::time::Duration;

    use pyo3::exceptions::PyKeyboardInterrupt;
    use pyo3::types::{PyList, PyModule};

    use super::*;

    static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

    /// `ringcast.errors` from the source tree, registered in `sys.modules`.
    fn errors(py: Python<'_>) -> &Bound<'_, PyModule> {
        ERRORS
            .get_or_init(py, || {
                let path = concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../python/ringcast/errors.py"
                );
                let code = std::fs::read_to_string(path).expect("python/ringcast/errors.py");
                let code = CString::new(code).expect("no NUL in errors.py");
                let file = CString::new(path).expect("path");
                // `from_code` registers the module in `sys.modules` under its name.
                let m = PyModule::from_code(py, &code, &file, c"ringcast.errors")
                    .expect("errors.py runs");
                let package = PyModule::new(py, "ringcast").expect("module");
                package.setattr("__path__", PyList::empty(py)).unwrap();
                package.setattr("errors", &m).unwrap();
                let modules = py.import("sys").unwrap().getattr("modules").unwrap();
                modules.set_item("ringcast", package).unwrap();
                m.unbind()
            })
            .bind(py)
    }

    /// Raise `e` through the mapping; check the class (by name in `ringcast.errors`) and
    /// the message; return the exception object.
    fn raised<'py>(py: Python<'py>, e: impl Into<BindError>, class: &str) -> Bound<'py, PyAny> {
        let e = e.into();
        let msg = match &e {
            BindError::Core(e) => e.to_string(),
            BindError::H5(e) => e.to_string(),
            BindError::Empty(m) => m.clone(),
            BindError::Py(e) => e.to_string(),
        };
        let err = PyErr::from(e);
        let cls = errors(py).getattr(class).expect("class");
        let value = err.value(py).clone().into_any();
        assert!(
            value.is_instance(&cls).expect("isinstance"),
            "{msg:?} raised {value:?}, not {class}"
        );
        assert!(value
            .is_instance(&errors(py).getattr("RingcastError").unwrap())
            .unwrap());
        assert_eq!(value.str().unwrap().to_string(), msg);
        value
    }

    fn attr<'py, T: for<'a> FromPyObject<'a, 'py>>(v: &Bound<'py, PyAny>, name: &str) -> T {
        match v.getattr(name).expect(name).extract() {
            Ok(x) => x,
            Err(_) => panic!("attribute {name} has the wrong type"),
        }
    }

    #[test]
    fn every_core_error_becomes_its_ringcast_errors_class() {
        Python::initialize();
        Python::attach(|py| {
            errors(py);
            let s = || "q".to_owned();
            raised(py, Error::NotFound(s()), "SegmentNotFound");
            raised(py, Error::Removed(s()), "SegmentNotFound");
            raised(py, Error::Exists(s()), "SegmentExists");
            let corrupt = Error::Corrupt {
                name: s(),
                why: "bad magic".into(),
            };
            raised(py, corrupt, "CorruptSegment");
            let perm = Error::Permission {
                name: s(),
                why: "it is a symbolic link".into(),
            };
            let v = raised(py, perm, "SegmentPermissionError");
            assert!(v.is_instance_of::<pyo3::exceptions::PyPermissionError>());
            raised(py, Error::InvalidArgument("no".into()), "InvalidArgument");
            let t = Error::Timeout(Duration::from_millis(5), "readers to join");
            raised(py, t, "Timeout");
            raised(py, Error::ShutDown(s()), "QueueShutDown");
            raised(py, Error::Closed("Reader"), "HandleClosed");
            let nm = Error::NoMemberSlot { name: s(), max: 4 };
            raised(py, nm, "NoMemberSlot");
            raised(py, Error::Forked("Reader"), "ForkedHandle");
            raised(py, Error::Busy("Reader"), "HandleBusy");
            raised(py, Error::Held("a lease".into()), "HandleBusy");
            let wd = Error::WorkerDied {
                pid: 12,
                task: Some(3),
            };
            raised(py, wd, "WorkerDied");

            let v = raised(
                py,
                Error::Full {
                    needed: 100,
                    free: 7,
                },
                "Full",
            );
            assert_eq!(attr::<u64>(&v, "needed"), 100);
            assert_eq!(attr::<u64>(&v, "free"), 7);
            let queue_full = py.import("queue").unwrap().getattr("Full").unwrap();
            assert!(v.is_instance(&queue_full).unwrap());

            let tl = Error::TooLarge {
                needed: 9000,
                capacity: 4096,
            };
            let v = raised(py, tl, "MessageTooLarge");
            assert_eq!(attr::<u64>(&v, "needed"), 9000);
            assert_eq!(attr::<u64>(&v, "capacity"), 4096);

            let os = Error::Os {
                op: "shm_open",
                name: s(),
                source: std::io::Error::from_raw_os_error(ENOENT),
            };
            let msg = os.to_string();
            let err = PyErr::from(BindError::from(os));
            let v = err.value(py).clone().into_any();
            let cls = errors(py).getattr("RingcastOSError").unwrap();
            assert!(v.is_instance(&cls).unwrap());
            assert_eq!(attr::<i32>(&v, "errno"), ENOENT);
            assert_eq!(attr::<String>(&v, "strerror"), msg);
            assert!(v.is_instance_of::<pyo3::exceptions::PyOSError>());
            assert_eq!(v.get_type().name().unwrap().to_string(), "RingcastOSError");

            let ns = Error::NoSpace {
                name: s(),
                asked: 128 << 20,
                free: 60 << 20,
                total: 64 << 20,
            };
            let v = raised(py, ns, "NoShmSpace");
            assert!(v.is_instance(&cls).unwrap()); // a RingcastOSError
            assert!(v.is_instance_of::<pyo3::exceptions::PyOSError>());
            assert_eq!(attr::<i32>(&v, "errno"), ENOSPC);
            assert_eq!(attr::<u64>(&v, "asked"), 128 << 20);
            assert_eq!(attr::<u64>(&v, "free"), 60 << 20);
            assert_eq!(attr::<u64>(&v, "total"), 64 << 20);
        });
    }

    #[test]
    fn every_native_read_error_becomes_its_ringcast_errors_class() {
        use ringcast_h5::Error as H5;
        Python::initialize();
        Python::attach(|py| {
            errors(py);
            let bad = H5::BadData {
                path: "f.h5".into(),
                why: "short chunk".into(),
            };
            let v = raised(py, bad, "RingcastError");
            assert_eq!(v.get_type().name().unwrap().to_string(), "RingcastError");
            raised(py, H5::InvalidArgument("plan".into()), "InvalidArgument");
            // A core error passed through keeps its own class.
            raised(py, H5::Core(Error::Forked("_SlotRing")), "ForkedHandle");
            assert!(matches!(
                BindError::from(H5::Core(Error::Closed("x"))),
                BindError::Core(_)
            ));
            let os = H5::Os {
                op: "open",
                path: "f.h5".into(),
                source: std::io::Error::from_raw_os_error(ENOENT),
            };
            let msg = os.to_string();
            let v = PyErr::from(BindError::from(os))
                .value(py)
                .clone()
                .into_any();
            assert!(v
                .is_instance(&errors(py).getattr("RingcastOSError").unwrap())
                .unwrap());
            assert_eq!(attr::<i32>(&v, "errno"), ENOENT);
            assert_eq!(attr::<String>(&v, "strerror"), msg);
        });
    }

    /// "No such file or directory" on Linux and macOS.
    const ENOENT: i32 = 2;
    /// "No space left on device" on Linux and macOS.
    const ENOSPC: i32 = 28;

    #[test]
    fn empty_and_interrupted() {
        Python::initialize();
        Python::attach(|py| {
            errors(py);
            let e = PyErr::from(empty(Some(0.5)));
            let v = e.value(py).clone().into_any();
            assert!(v
                .is_instance(&errors(py).getattr("Empty").unwrap())
                .unwrap());
            let queue_empty = py.import("queue").unwrap().getattr("Empty").unwrap();
            assert!(v.is_instance(&queue_empty).unwrap());
            assert_eq!(v.str().unwrap().to_string(), "no message within 0.5 s");
            let e = PyErr::from(empty(None));
            assert_eq!(
                e.value(py).str().unwrap().to_string(),
                "no message available"
            );

            let e = PyErr::from(BindError::from(Error::Interrupted));
            assert!(e.is_instance_of::<PyKeyboardInterrupt>(py));

            // A Python error passes through unchanged.
            let e = PyErr::from(BindError::from(PyKeyboardInterrupt::new_err("mine")));
            assert_eq!(e.value(py).str().unwrap().to_string(), "mine");
        });
    }
}
