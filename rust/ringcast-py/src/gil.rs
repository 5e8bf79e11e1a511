//! The one place the bindings release the GIL: [`enter`] for calls that return promptly
//! (opening a segment, leaving, starting threads), and [`blocking`] for waits, built on it,
//! which wake in slices to check for signals. No other code calls `Python::detach`.

use std::sync::Arc;

use pyo3::prelude::*;
use ringcast_core::handle::Membership;
use ringcast_core::Error;

use crate::error::{BResult, BindError};

/// Run `f` with the GIL released, so other Python threads run meanwhile. For a call that
/// may wait without end, use [`blocking`] instead.
pub(crate) fn enter<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    py.detach(f)
}

/// Leave `member` (if a handle's `close` gave one) with the GIL released, waiting for the
/// writer lock interruptibly (the last member out also removes the segment). A signal's
/// exception ends the wait and is raised; the member slot is freed all the same.
pub(crate) fn leave(py: Python<'_>, member: Option<Arc<Membership>>) -> BResult<()> {
    if let Some(m) = member {
        blocking(py, move |chk| m.leave_checked(chk))?;
    }
    Ok(())
}

/// The one bridge from a blocking core call to Python: release the GIL (through
/// [`enter`]), let the core wait in slices, and check for signals (Ctrl-C) between slices.
/// A signal handler's exception ends the wait and is raised as is.
pub(crate) fn blocking<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&mut dyn FnMut() -> ringcast_core::Result<()>) -> ringcast_core::Result<T> + Send,
) -> BResult<T> {
    wait_in_slices(py, |py| py.check_signals(), f)
}

/// [`blocking`] with the signal check given: `check` runs (with the GIL) between slices;
/// its error stops the wait (the core sees `Interrupted`) and is returned as is.
fn wait_in_slices<T: Send>(
    py: Python<'_>,
    check: impl Fn(Python<'_>) -> PyResult<()> + Sync,
    f: impl FnOnce(&mut dyn FnMut() -> ringcast_core::Result<()>) -> ringcast_core::Result<T> + Send,
) -> BResult<T> {
    let mut pending: Option<PyErr> = None;
    let r = enter(py, || {
        let mut chk = || {
            Python::attach(&check).map_err(|e| {
                pending = Some(e);
                Error::Interrupted
            })
        };
        f(&mut chk)
    });
    match (r, pending) {
        (Err(Error::Interrupted), Some(e)) => Err(BindError::Py(e)),
        (r, _) => r.map_err(BindError::Core),
    }
}

#[cfg(test)]
mod tests {
    use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};

    use super::*;

    /// A signal handler that raised (as Python's SIGINT handler raises KeyboardInterrupt)
    /// stops the wait at its next slice, and its exception is what the call raises. (A real
    /// signal cannot be used here: CPython runs handlers in the main thread only, and tests
    /// run in other threads.)
    #[test]
    fn a_raising_signal_check_interrupts_the_wait_with_its_exception() {
        Python::initialize();
        Python::attach(|py| {
            let raising = |_: Python<'_>| Err(PyKeyboardInterrupt::new_err("from a handler"));
            let mut slices = 0;
            let r: BResult<()> = wait_in_slices(py, raising, |chk| loop {
                slices += 1;
                chk()?;
            });
            assert_eq!(slices, 1, "the first failed check ends the wait");
            match r {
                Err(BindError::Py(e)) => {
                    assert!(e.is_instance_of::<PyKeyboardInterrupt>(py));
                    assert_eq!(e.value(py).to_string(), "from a handler");
                }
                _ => panic!("expected the handler's exception"),
            }

            // A wait that ends by itself returns its value; checks that pass change nothing.
            let r = wait_in_slices(
                py,
                |_| Ok(()),
                |chk| {
                    chk()?;
                    chk()?;
                    Ok(7)
                },
            );
            assert!(matches!(r, Ok(7)));

            // A core error from the wait is a core error, whatever the check did.
            let r: BResult<()> = wait_in_slices(
                py,
                |_| Err(PyValueError::new_err("unused")),
                |_| Err(Error::Busy("Reader")),
            );
            assert!(matches!(r, Err(BindError::Core(Error::Busy("Reader")))));

            // `Interrupted` with no exception pending (a core wait stopped on its own) maps to
            // KeyboardInterrupt.
            let r: BResult<()> = wait_in_slices(py, |_| Ok(()), |_| Err(Error::Interrupted));
            let e = PyErr::from(r.expect_err("an error"));
            assert!(e.is_instance_of::<PyKeyboardInterrupt>(py));
        });
    }
}
