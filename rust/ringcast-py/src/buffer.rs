//! The one buffer-protocol export behind `Lease`, `Reservation` and `_SlotBlock`: a
//! one-dimensional byte view of shared memory whose exports are counted by the core's
//! [`Views`], so the memory is not reused while a view is alive.

use std::ffi::c_void;
use std::os::raw::{c_char, c_int};

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::PyClass;
use ringcast_core::handle::Views;

use crate::error::BResult;

/// A frozen pyclass exporting a region of memory through the buffer protocol.
pub(crate) trait Export: PyClass<Frozen = True> + Sync {
    /// Whether views are read-only (a writable request is refused).
    const READONLY: bool;
    /// The region (address, and its length inside `self`, which the view's shape points
    /// to), or the error that forbids a new view now.
    fn region(&self) -> BResult<(usize, &isize)>;
    /// The exports of the region.
    fn views(&self) -> &Views;
    /// A view was released (the last view of a released lease ends it).
    fn view_gone(&self) {
        self.views().remove();
    }
}

static ONE: isize = 1;
static FORMAT_B: &[u8] = b"B\0";

/// `__getbuffer__` of an [`Export`]: fill `view` and count the export.
///
/// # Safety
///
/// `view` must be the `Py_buffer` CPython passed to `__getbuffer__` (null or writable).
pub(crate) unsafe fn get_buffer<T: Export>(
    slf: Bound<'_, T>,
    view: *mut ffi::Py_buffer,
    flags: c_int,
) -> PyResult<()> {
    let me = slf.get();
    let (ptr, len) = me.region()?;
    if view.is_null() {
        return Err(PyBufferError::new_err("no view to fill"));
    }
    if T::READONLY && (flags & ffi::PyBUF_WRITABLE) == ffi::PyBUF_WRITABLE {
        return Err(PyBufferError::new_err(
            "a leased message is read-only (copy it to change it)",
        ));
    }
    // SAFETY: `view` is non-null and CPython's to fill (the caller's contract).
    let v = unsafe { &mut *view };
    // The view owns a reference to `slf`, so `ptr` and `len` (inside `slf`) outlive it.
    v.obj = slf.clone().into_any().into_ptr();
    v.buf = ptr as *mut c_void;
    v.len = *len;
    v.readonly = c_int::from(T::READONLY);
    v.itemsize = 1;
    v.format = if (flags & ffi::PyBUF_FORMAT) == ffi::PyBUF_FORMAT {
        FORMAT_B.as_ptr() as *mut c_char
    } else {
        std::ptr::null_mut()
    };
    v.ndim = 1;
    v.shape = if (flags & ffi::PyBUF_ND) == ffi::PyBUF_ND {
        len as *const isize as *mut isize
    } else {
        std::ptr::null_mut()
    };
    v.strides = if (flags & ffi::PyBUF_STRIDES) == ffi::PyBUF_STRIDES {
        &ONE as *const isize as *mut isize
    } else {
        std::ptr::null_mut()
    };
    v.suboffsets = std::ptr::null_mut();
    v.internal = std::ptr::null_mut();
    me.views().add();
    Ok(())
}

/// `__releasebuffer__` of an [`Export`].
pub(crate) fn release_buffer<T: Export>(me: &T) {
    me.view_gone();
}
