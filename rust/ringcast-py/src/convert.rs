//! Conversions between Python objects and the core's types: byte buffers, names, sets of
//! names, timeouts and spin windows.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use ringcast_core::segment::Access;
use ringcast_core::wait::deadline_from_secs;
use ringcast_core::{Deadline, Error, WaitSpec};

use crate::error::BResult;

/// A deadline `timeout` seconds from now (`None`: never).
pub(crate) fn deadline(timeout: Option<f64>) -> BResult<Deadline> {
    Ok(deadline_from_secs(timeout)?)
}

/// A spin window in nanoseconds from microseconds (0 to 1e6).
fn spin_from_us(spin_us: f64) -> BResult<u64> {
    if !spin_us.is_finite() || !(0.0..=1e6).contains(&spin_us) {
        return Err(Error::InvalidArgument(format!(
            "spin_us must be between 0 and 1e6, got {spin_us}"
        ))
        .into());
    }
    Ok((spin_us * 1000.0) as u64)
}

/// A handle's spin window (how long a blocking call spins before it sleeps), which Python
/// reads and sets in microseconds (`spin_us`).
pub(crate) struct Spin(AtomicU64);

impl Spin {
    /// A window of `spin_us` microseconds (0 to 1e6).
    pub(crate) fn from_us(spin_us: f64) -> BResult<Spin> {
        Ok(Spin::from_ns(spin_from_us(spin_us)?))
    }
    /// A window of `ns` nanoseconds (already checked).
    pub(crate) fn from_ns(ns: u64) -> Spin {
        Spin(AtomicU64::new(ns))
    }
    /// The window in nanoseconds.
    pub(crate) fn ns(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// The window in microseconds.
    pub(crate) fn us(&self) -> f64 {
        self.ns() as f64 / 1000.0
    }
    /// Set the window to `spin_us` microseconds (0 to 1e6).
    pub(crate) fn set_us(&self, spin_us: f64) -> BResult<()> {
        self.0.store(spin_from_us(spin_us)?, Ordering::Relaxed);
        Ok(())
    }
    /// A wait until `deadline`, spinning for this window first.
    pub(crate) fn wait_spec(&self, deadline: Deadline) -> WaitSpec {
        WaitSpec {
            deadline,
            spin: Duration::from_nanos(self.ns()),
        }
    }
}

/// What attaching accepts: the group/other write bits `mode` grants, and the owners in
/// `allow_users` (uids, or user names looked up with `pwd`).
pub(crate) fn access(mode: u32, allow_users: Option<&Bound<'_, PyAny>>) -> BResult<Access> {
    let mut access = Access::for_mode(mode)?;
    let Some(users) = allow_users.filter(|u| !u.is_none()) else {
        return Ok(access);
    };
    if users.is_instance_of::<PyString>() || users.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "allow_users must be an iterable of uids or user names, not a single string",
        )
        .into());
    }
    for item in users.try_iter()? {
        let item = item?;
        let uid = if let Ok(name) = item.cast::<PyString>() {
            let pwd = item.py().import("pwd")?;
            match pwd.call_method1("getpwnam", (name,)) {
                Ok(entry) => entry.getattr("pw_uid")?.extract::<u32>()?,
                Err(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "allow_users: no user named {name}"
                    ))
                    .into())
                }
            }
        } else {
            item.extract::<u32>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "allow_users items must be uids (int) or user names (str), got {}",
                    item.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?
        };
        access = access.allow_user(uid);
    }
    Ok(access)
}

/// A contiguous byte view of any object with the buffer protocol (bytes, bytearray,
/// memoryview, numpy arrays...). Released on drop.
pub(crate) struct Buf {
    view: Box<ffi::Py_buffer>,
}

impl Buf {
    /// Export `obj`'s bytes (a `TypeError` if it has no C-contiguous buffer).
    pub(crate) fn get(obj: &Bound<'_, PyAny>) -> PyResult<Buf> {
        // SAFETY: a zeroed Py_buffer is a valid out-parameter (all pointers null, all
        // numbers zero).
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `obj` is a live object (we hold the GIL) and `view` a writable Py_buffer;
        // on success we own the export, released in `drop`.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_SIMPLE) };
        if rc != 0 {
            let err = PyErr::take(obj.py()).unwrap_or_else(|| PyTypeError::new_err("no buffer"));
            return Err(PyTypeError::new_err(format!(
                "expected a bytes-like object (a C-contiguous buffer), got {}: {err}",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            )));
        }
        Ok(Buf { view })
    }
    /// The exported bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.view.len <= 0 || self.view.buf.is_null() {
            return &[];
        }
        // SAFETY: the exporter guarantees `len` readable bytes while the export is held,
        // and `self` holds it for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.view.len as usize) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: releasing the export taken in `get`; Buf is only dropped with the GIL held.
        unsafe { ffi::PyBuffer_Release(&mut *self.view) }
    }
}

/// A raw slice that may cross a GIL release (the owner is kept alive by the caller).
#[derive(Clone, Copy)]
pub(crate) struct SendSlice(*const u8, usize);

// SAFETY: a SendSlice is only made from memory owned by the frame that sends it to the
// thread running with the GIL released, and that frame outlives the call.
unsafe impl Send for SendSlice {}

impl SendSlice {
    /// The address and length of `s`.
    pub(crate) fn of(s: &[u8]) -> Self {
        SendSlice(s.as_ptr(), s.len())
    }
    /// The slice again.
    ///
    /// # Safety
    ///
    /// The memory the slice was made from must still be alive and unchanged for `'a`.
    pub(crate) unsafe fn get<'a>(self) -> &'a [u8] {
        if self.1 == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees the original slice is still alive.
        unsafe { std::slice::from_raw_parts(self.0, self.1) }
    }
}

/// Bytes of an optional str (UTF-8) or bytes argument (`None`, given or by default: none).
pub(crate) fn opt_text_or_bytes(
    obj: Option<&Bound<'_, PyAny>>,
    what: &str,
) -> PyResult<Option<Vec<u8>>> {
    Ok(borrow_opt_text_or_bytes(obj, what)?.map(<[u8]>::to_vec))
}

/// [`opt_text_or_bytes`] borrowed from the object (no copy).
pub(crate) fn borrow_opt_text_or_bytes<'a>(
    obj: Option<&'a Bound<'_, PyAny>>,
    what: &str,
) -> PyResult<Option<&'a [u8]>> {
    match obj {
        Some(o) if !o.is_none() => borrow_text_or_bytes(o, what).map(Some),
        _ => Ok(None),
    }
}

/// Bytes of a str (UTF-8) or bytes argument.
pub(crate) fn text_or_bytes(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    borrow_text_or_bytes(obj, what).map(<[u8]>::to_vec)
}

/// Bytes of a str (UTF-8) or bytes argument, borrowed from the object (no copy).
pub(crate) fn borrow_text_or_bytes<'a>(
    obj: &'a Bound<'_, PyAny>,
    what: &str,
) -> PyResult<&'a [u8]> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes());
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.as_bytes());
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be str or bytes, not {}",
        obj.get_type().name()?
    )))
}

/// A set of names from one str/bytes or an iterable of them (`None`: no set).
pub(crate) fn byte_set(
    obj: Option<&Bound<'_, PyAny>>,
    what: &str,
) -> PyResult<Option<HashSet<Vec<u8>>>> {
    let Some(obj) = obj else { return Ok(None) };
    if obj.is_none() {
        return Ok(None);
    }
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Ok(Some([text_or_bytes(obj, what)?].into_iter().collect()));
    }
    let mut out = HashSet::new();
    for item in obj.try_iter()? {
        out.insert(text_or_bytes(&item?, what)?);
    }
    Ok(Some(out))
}

/// A temporary read-only memoryview over `data`.
///
/// # Safety
///
/// `data` must stay alive and unchanged until the caller releases the memoryview
/// (`.release()`), and the memoryview must not be handed out.
pub(crate) unsafe fn readonly_memoryview<'py>(
    py: Python<'py>,
    data: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `data` is valid for its length (the caller keeps it so while the view lives);
    // PyBUF_READ makes the view read-only.
    unsafe {
        let p = ffi::PyMemoryView_FromMemory(
            data.as_ptr() as *mut std::os::raw::c_char,
            data.len() as ffi::Py_ssize_t,
            ffi::PyBUF_READ,
        );
        Bound::from_owned_ptr_or_err(py, p)
    }
}

/// A function of ``ringcast._array``.
pub(crate) fn array_helper<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("ringcast._array")?.getattr(name)
}
