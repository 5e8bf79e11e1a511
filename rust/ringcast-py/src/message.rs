//! `Message`: one received message (a copy), and `_message`, which unpickling calls.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::convert::array_helper;

/// One received message: sender, type, sequence number and body.
#[pyclass(module = "ringcast", name = "Message", frozen)]
pub(crate) struct Message {
    pub(crate) sender: Vec<u8>,
    pub(crate) typ: Vec<u8>,
    #[pyo3(get)]
    pub(crate) seq: u64,
    #[pyo3(get)]
    pub(crate) body: Py<PyBytes>,
    /// Messages a lossy reader missed (lapped by writers) just before this one.
    #[pyo3(get)]
    pub(crate) missed: u64,
    /// Whether a consumer group delivers this message again (its first member died).
    #[pyo3(get)]
    pub(crate) redelivered: bool,
}

#[pymethods]
impl Message {
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
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let f = py.import("ringcast._ringcast")?.getattr("_message")?;
        let args = (
            PyBytes::new(py, &self.sender),
            PyBytes::new(py, &self.typ),
            self.seq,
            self.body.clone_ref(py),
            self.missed,
            self.redelivered,
        );
        (f, args).into_pyobject(py)
    }
    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<Message>() {
            Ok(o) => {
                let o = o.get();
                self.seq == o.seq
                    && self.sender == o.sender
                    && self.typ == o.typ
                    && self.body.bind(py).as_bytes() == o.body.bind(py).as_bytes()
            }
            Err(_) => false,
        }
    }
    fn __hash__(&self, py: Python<'_>) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            self.seq,
            &self.sender,
            &self.typ,
            self.body.bind(py).as_bytes(),
        )
            .hash(&mut h);
        h.finish()
    }
    /// The body as a numpy array: an array message (``send_array``) gives its own dtype and
    /// shape; otherwise pass ``dtype`` (and optionally ``shape``). A read-only view of
    /// ``body``, no copy.
    #[pyo3(signature = (dtype=None, shape=None))]
    fn array<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&Bound<'py, PyAny>>,
        shape: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        array_helper(py, "view")?.call1((self.body.bind(py), dtype, shape))
    }
    fn __repr__(&self, py: Python<'_>) -> String {
        let n = self.body.bind(py).as_bytes().len();
        format!(
            "Message(seq={}, sender={:?}, type={:?}, body=<{} bytes>)",
            self.seq,
            self.sender(),
            self.r#type(),
            n
        )
    }
}

/// Rebuild a Message (what unpickling one does).
#[pyfunction]
#[pyo3(signature = (sender, r#type, seq, body, missed=0, redelivered=false))]
pub(crate) fn _message(
    sender: Vec<u8>,
    r#type: Vec<u8>,
    seq: u64,
    body: Py<PyBytes>,
    missed: u64,
    redelivered: bool,
) -> Message {
    Message {
        sender,
        typ: r#type,
        seq,
        body,
        missed,
        redelivered,
    }
}
