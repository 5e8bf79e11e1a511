//! The one place the bindings release the GIL: [`enter`] for calls that return promptly
//! (opening a segment, leaving, starting threads), and [`blocking`] for waits, built on it,
//! which wake in slices to check for signals. No other code calls `Python::detach`.

use pyo3::prelude::*;
use ringcast_core::Error;

use crate::error::{BResult, BindError};

/// Run `f` with the GIL released, so other Python threads run meanwhile. For a call that
/// may wait without end, use [`blocking`] instead.
pub(crate) fn enter<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    py.detach(f)
}

/// The one bridge from a blocking core call to Python: release the GIL (through
/// [`enter`]), let the core wait in slices, and check for signals (Ctrl-C) between slices.
/// A signal handler's exception ends the wait and is raised as is.
pub(crate) fn blocking<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&mut dyn FnMut() -> ringcast_core::Result<()>) -> ringcast_core::Result<T> + Send,
) -> BResult<T> {
    let mut pending: Option<PyErr> = None;
    let r = enter(py, || {
        let mut check = || {
            Python::attach(|py| py.check_signals()).map_err(|e| {
                pending = Some(e);
                Error::Interrupted
            })
        };
        f(&mut check)
    });
    match (r, pending) {
        (Err(Error::Interrupted), Some(e)) => Err(BindError::Py(e)),
        (r, _) => r.map_err(BindError::Core),
    }
}
