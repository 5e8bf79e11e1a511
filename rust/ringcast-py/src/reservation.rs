//! `Reservation`: room for one message in the ring, filled in place (zero-copy) and then
//! committed or aborted. The state (writer lock, reserving thread, views) is the core's
//! [`Reserved`].

use std::os::raw::c_int;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;
use ringcast_core::handle::{Reserved, Views};

use crate::buffer::{get_buffer, release_buffer, Export};
use crate::error::BResult;

/// Room for one message in the ring, filled in place; see ``BroadcastQueue.reserve``.
#[pyclass(module = "ringcast", name = "Reservation", frozen)]
pub(crate) struct PyReservation {
    inner: Reserved,
    ptr: usize,
    len: isize,
    dtype: Option<Py<PyAny>>,
    shape: Option<Py<PyAny>>,
}

impl PyReservation {
    /// The reservation `inner`; `dtype` and `shape` for an array message.
    pub(crate) fn new(inner: Reserved, dtype: Option<Py<PyAny>>, shape: Option<Py<PyAny>>) -> Self {
        let (ptr, len) = inner.body();
        PyReservation {
            inner,
            ptr: ptr as usize,
            len: len as isize,
            dtype,
            shape,
        }
    }
}

impl Export for PyReservation {
    const READONLY: bool = false;
    fn region(&self) -> BResult<(usize, &isize)> {
        self.inner.check()?;
        Ok((self.ptr, &self.len))
    }
    fn views(&self) -> &Views {
        self.inner.views()
    }
}

#[pymethods]
impl PyReservation {
    /// Bytes to fill.
    fn __len__(&self) -> usize {
        self.len as usize
    }
    /// A writable numpy view of the reserved space: for ``reserve_array`` the array itself;
    /// otherwise pass ``dtype`` (and ``shape``). Let it go before the reservation ends.
    #[pyo3(signature = (dtype=None, shape=None))]
    fn array<'py>(
        slf: &Bound<'py, Self>,
        dtype: Option<&Bound<'py, PyAny>>,
        shape: Option<&Bound<'py, PyAny>>,
    ) -> BResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let me = slf.get();
        me.inner.check()?;
        let np = py.import("numpy")?;
        let (dt, shp) = match (dtype, &me.dtype) {
            (Some(d), _) => (d.clone(), shape.cloned()),
            (None, Some(d)) => (
                d.bind(py).clone(),
                me.shape.as_ref().map(|s| s.bind(py).clone()),
            ),
            (None, None) => (PyString::new(py, "u1").into_any(), shape.cloned()),
        };
        let a = np.call_method1("frombuffer", (slf, dt))?;
        Ok(match shp {
            Some(s) if !s.is_none() => a.call_method1("reshape", (s,))?,
            _ => a,
        })
    }
    /// Views of the reserved space still alive.
    #[getter]
    fn views(&self) -> usize {
        self.inner.views().count()
    }
    /// The sequence number, once committed.
    #[getter]
    fn seq(&self) -> Option<u64> {
        self.inner.seq()
    }
    /// Publish the message; returns its sequence number. Raises ``HandleBusy`` (and sends
    /// nothing) if a view of the reserved space is still alive.
    fn commit(&self) -> BResult<u64> {
        Ok(self.inner.commit()?)
    }
    /// Drop the reservation: nothing is published.
    fn abort(&self) {
        self.inner.abort();
    }
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __exit__(
        &self,
        t: Option<&Bound<'_, PyAny>>,
        _v: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> BResult<bool> {
        let ok = t.is_none_or(|t| t.is_none());
        if ok && self.inner.is_open() {
            self.commit()?;
        } else {
            self.abort();
        }
        Ok(false)
    }
    /// # Safety
    ///
    /// Called by CPython with the `Py_buffer` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        // SAFETY: `view` comes from CPython's buffer protocol, as `get_buffer` requires.
        unsafe { get_buffer(slf, view, flags) }
    }
    /// # Safety
    ///
    /// Called by CPython when a view made by `__getbuffer__` is released.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        release_buffer(self);
    }
    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err("a Reservation cannot be pickled"))
    }
    fn __repr__(&self) -> String {
        format!(
            "Reservation(<{} bytes>{})",
            self.len,
            if self.inner.is_open() { "" } else { ", ended" }
        )
    }
}
