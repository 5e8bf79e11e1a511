//! `Lease`: a received message leased in place, a read-only zero-copy view of its body in
//! shared memory. The bookkeeping (pins, views, a closed reader leaving with its last
//! lease) is the core's [`LeaseTicket`].

use std::os::raw::c_int;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use ringcast_core::handle::{LeaseTicket, Views};
use ringcast_core::RecordRef;

use crate::buffer::{get_buffer, release_buffer, Export};
use crate::convert::array_helper;
use crate::error::BResult;

/// A leased message: a read-only zero-copy view of its body in shared memory.
#[pyclass(module = "ringcast", name = "Lease", frozen)]
pub(crate) struct Lease {
    ticket: LeaseTicket,
    ptr: usize,
    len: isize,
    /// The message's sequence number.
    #[pyo3(get)]
    seq: u64,
    sender: Vec<u8>,
    typ: Vec<u8>,
    /// Messages missed just before this one (always 0: lossy readers cannot lease).
    #[pyo3(get)]
    missed: u64,
    /// Whether a consumer group delivers this message again (its first member died).
    #[pyo3(get)]
    redelivered: bool,
}

impl Lease {
    /// The lease `ticket` of record `r`.
    pub(crate) fn new(ticket: LeaseTicket, r: &RecordRef<'_>, missed: u64) -> Self {
        Lease {
            ticket,
            ptr: r.body.as_ptr() as usize,
            len: r.body.len() as isize,
            seq: r.seq,
            sender: r.sender.to_vec(),
            typ: r.typ.to_vec(),
            missed,
            redelivered: r.redelivered,
        }
    }
}

impl Export for Lease {
    const READONLY: bool = true;
    fn region(&self) -> BResult<(usize, &isize)> {
        self.ticket.check()?;
        Ok((self.ptr, &self.len))
    }
    fn views(&self) -> &Views {
        self.ticket.views()
    }
    fn view_gone(&self) {
        self.ticket.view_gone();
    }
}

#[pymethods]
impl Lease {
    /// The sender's name.
    #[getter]
    fn sender(&self) -> String {
        String::from_utf8_lossy(&self.sender).into_owned()
    }
    /// The message type.
    #[getter]
    fn r#type(&self) -> String {
        String::from_utf8_lossy(&self.typ).into_owned()
    }
    /// Body length in bytes.
    fn __len__(&self) -> usize {
        self.len as usize
    }
    /// A read-only memoryview of the body (zero-copy; keeps the lease while it lives).
    #[getter]
    fn body<'py>(slf: &Bound<'py, Self>) -> BResult<Bound<'py, PyAny>> {
        slf.get().ticket.check()?;
        // SAFETY: PyMemoryView_FromObject takes a buffer export of this live object.
        let mv = unsafe {
            Bound::from_owned_ptr_or_err(slf.py(), ffi::PyMemoryView_FromObject(slf.as_ptr()))
        }?;
        Ok(mv)
    }
    /// The body as a read-only numpy array, zero-copy (keeps the lease while it lives): an
    /// array message gives its own dtype and shape, otherwise pass ``dtype`` (and ``shape``).
    #[pyo3(signature = (dtype=None, shape=None))]
    fn array<'py>(
        slf: &Bound<'py, Self>,
        dtype: Option<&Bound<'py, PyAny>>,
        shape: Option<&Bound<'py, PyAny>>,
    ) -> BResult<Bound<'py, PyAny>> {
        slf.get().ticket.check()?;
        Ok(array_helper(slf.py(), "view")?.call1((slf, dtype, shape))?)
    }
    /// A copy of the body as bytes.
    fn tobytes<'py>(&self, py: Python<'py>) -> BResult<Bound<'py, PyBytes>> {
        self.ticket.check()?;
        // SAFETY: the lease pins the record; len bytes at ptr are mapped.
        let data = unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len as usize) };
        Ok(PyBytes::new(py, data))
    }
    /// Whether the lease was released (by ``release()`` or the end of its ``with`` block).
    #[getter]
    fn released(&self) -> bool {
        self.ticket.views().released()
    }
    /// Views of the body still alive (each keeps the lease).
    #[getter]
    fn views(&self) -> usize {
        self.ticket.views().count()
    }
    /// Give the lease back. New views can no longer be made; views still alive keep the
    /// memory until they are gone.
    fn release(&self) {
        self.ticket.release();
    }
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __exit__(
        &self,
        _t: Option<&Bound<'_, PyAny>>,
        _v: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.release();
        false
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
        Err(PyTypeError::new_err(
            "a Lease cannot be pickled: it is a view of this process's shared memory (send tobytes())",
        ))
    }
    fn __repr__(&self) -> String {
        format!(
            "Lease(seq={}, sender={:?}, type={:?}, body=<{} bytes>{})",
            self.seq,
            self.sender(),
            self.r#type(),
            self.len,
            if self.released() { ", released" } else { "" }
        )
    }
}
