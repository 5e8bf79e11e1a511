//! Thin PyO3 bindings of ringcast-core: type conversion, buffer protocol, error mapping and
//! GIL release. No queue logic lives here.

mod error;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyUnicodeDecodeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use ringcast_core::queue::{KIND_HANDLE, KIND_READER};
use ringcast_core::wait::deadline_from_secs;
use ringcast_core::{
    proc, segment, Deadline, Error, Filter, MemberId, Queue, QueueOptions, WaitSpec,
};

use error::{to_pyerr, BResult, BindError};

// ------------------------------------------------------------------------------- helpers

/// The one bridge from a blocking core call to Python: release the GIL, let the core wait in
/// slices, and check for signals (Ctrl-C) between slices.
fn blocking<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&mut dyn FnMut() -> ringcast_core::Result<()>) -> ringcast_core::Result<T> + Send,
) -> BResult<T> {
    let mut pending: Option<PyErr> = None;
    let r = py.detach(|| {
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

fn deadline(timeout: Option<f64>) -> BResult<Deadline> {
    Ok(deadline_from_secs(timeout)?)
}

/// A contiguous byte view of any object with the buffer protocol (bytes, bytearray,
/// memoryview, numpy arrays...). Released on drop.
struct Buf {
    view: Box<ffi::Py_buffer>,
}

impl Buf {
    fn get(obj: &Bound<'_, PyAny>) -> PyResult<Buf> {
        // SAFETY: a zeroed Py_buffer is a valid out-parameter; on success we own the export.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
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
    fn as_slice(&self) -> &[u8] {
        if self.view.len <= 0 || self.view.buf.is_null() {
            return &[];
        }
        // SAFETY: the exporter guarantees `len` readable bytes while the export is held.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.view.len as usize) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: releasing the export taken in `get`; Buf is only dropped with the GIL held.
        unsafe { ffi::PyBuffer_Release(&mut *self.view) }
    }
}

/// A raw slice that may cross `detach` (the owner is kept alive by the caller).
#[derive(Clone, Copy)]
struct SendSlice(*const u8, usize);
// SAFETY: the memory is owned by a buffer export the caller holds across the call.
unsafe impl Send for SendSlice {}
impl SendSlice {
    fn of(s: &[u8]) -> Self {
        SendSlice(s.as_ptr(), s.len())
    }
    // SAFETY: see the type.
    unsafe fn get<'a>(self) -> &'a [u8] {
        if self.1 == 0 {
            return &[];
        }
        std::slice::from_raw_parts(self.0, self.1)
    }
}

/// Bytes of a str (UTF-8) or bytes argument.
fn text_or_bytes(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    borrow_text_or_bytes(obj, what).map(<[u8]>::to_vec)
}

/// Bytes of a str (UTF-8) or bytes argument, borrowed from the object (no copy).
fn borrow_text_or_bytes<'a>(obj: &'a Bound<'_, PyAny>, what: &str) -> PyResult<&'a [u8]> {
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

fn byte_set(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<HashSet<Vec<u8>>>> {
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

fn spin_from_us(spin_us: f64) -> PyResult<u64> {
    if !spin_us.is_finite() || !(0.0..=1e6).contains(&spin_us) {
        return Err(to_pyerr_now(Error::InvalidArgument(format!(
            "spin_us must be between 0 and 1e6, got {spin_us}"
        ))));
    }
    Ok((spin_us * 1000.0) as u64)
}

fn to_pyerr_now(e: Error) -> PyErr {
    Python::attach(|py| to_pyerr(py, e))
}

// ------------------------------------------------------------------------------- membership

/// A member slot owned by this process; leaves on close, on drop, or at interpreter exit.
struct Membership {
    q: Arc<Queue>,
    id: MemberId,
    /// The member's name (for a queue handle: the sender stamped on its messages).
    name: Vec<u8>,
    fork_gen: u64,
    left: AtomicBool,
}

static REGISTRY: Mutex<Vec<Weak<Membership>>> = Mutex::new(Vec::new());

impl Membership {
    fn join(q: &Arc<Queue>, kind: u32, name: &[u8]) -> ringcast_core::Result<Arc<Membership>> {
        let id = q.join(kind, name)?;
        let m = Arc::new(Membership {
            q: Arc::clone(q),
            id,
            name: name.to_vec(),
            fork_gen: proc::fork_generation(),
            left: AtomicBool::new(false),
        });
        if let Ok(mut reg) = REGISTRY.lock() {
            reg.retain(|w| w.strong_count() > 0);
            reg.push(Arc::downgrade(&m));
        }
        Ok(m)
    }
    fn mine(&self) -> bool {
        self.fork_gen == proc::fork_generation()
    }
    fn leave(&self) -> bool {
        if !self.mine() || self.left.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.q.leave(self.id).unwrap_or(false)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.leave();
    }
}

// ------------------------------------------------------------------------------- Message

/// One received message: sender, type, sequence number and body.
#[pyclass(module = "ringcast", name = "Message", frozen)]
struct Message {
    sender: Vec<u8>,
    typ: Vec<u8>,
    #[pyo3(get)]
    seq: u64,
    #[pyo3(get)]
    body: Py<PyBytes>,
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

// ------------------------------------------------------------------------------- BroadcastQueue

/// A shared-memory broadcast queue: every reader gets every message.
#[pyclass(module = "ringcast", name = "BroadcastQueue", frozen, weakref)]
struct PyQueue {
    q: Arc<Queue>,
    member: Mutex<Option<Arc<Membership>>>,
    /// The sender given by the user; without one, each process sends as its pid.
    explicit_sender: Option<Vec<u8>>,
    spin_ns: AtomicU64,
    closed: AtomicBool,
}

fn random_name() -> String {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    format!(
        "rc_{:016x}",
        u64::from_ne_bytes(b) ^ u64::from(std::process::id())
    )
}

impl PyQueue {
    /// This process's membership (joined on first use in a forked child), or an error if
    /// the handle is closed.
    fn alive(&self) -> BResult<Arc<Membership>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("BroadcastQueue").into());
        }
        let mut m = self
            .member
            .lock()
            .map_err(|_| Error::Busy("BroadcastQueue"))?;
        match m.as_ref() {
            Some(m) if m.mine() => Ok(Arc::clone(m)),
            _ => {
                let joined = Membership::join(&self.q, KIND_HANDLE, &self.default_sender())?;
                *m = Some(Arc::clone(&joined));
                Ok(joined)
            }
        }
    }
    fn default_sender(&self) -> Vec<u8> {
        self.explicit_sender
            .clone()
            .unwrap_or_else(|| proc::current().pid.to_string().into_bytes())
    }
    fn spec(&self, d: Deadline) -> WaitSpec {
        WaitSpec {
            deadline: d,
            spin: Duration::from_nanos(self.spin_ns.load(Ordering::Relaxed)),
        }
    }
    fn build(
        py: Python<'_>,
        name: Option<String>,
        create: Option<bool>,
        opts: QueueOptions,
        sender: Option<&Bound<'_, PyAny>>,
        spin_us: f64,
    ) -> PyResult<PyQueue> {
        let spin_ns = spin_from_us(spin_us)?;
        let explicit_sender = match sender {
            Some(s) if !s.is_none() => Some(text_or_bytes(s, "sender")?),
            _ => None,
        };
        if name.is_none() && create == Some(false) {
            return Err(to_pyerr(
                py,
                Error::InvalidArgument("a name is needed to attach (create=False)".into()),
            ));
        }
        let sender = explicit_sender
            .clone()
            .unwrap_or_else(|| proc::current().pid.to_string().into_bytes());
        // Opening may wait briefly (a segment still being initialised, the writer lock to
        // join): never with the GIL held.
        let (q, member) = py
            .detach(move || {
                let q = match (name, create) {
                    (Some(n), Some(true)) => Queue::create(&n, opts),
                    (Some(n), Some(false)) => Queue::attach(&n),
                    (Some(n), None) => Queue::open(&n, opts),
                    (None, _) => Queue::create(&random_name(), opts),
                }?;
                let member = Membership::join(&q, KIND_HANDLE, &sender)?;
                Ok((q, member))
            })
            .map_err(|e| to_pyerr(py, e))?;
        Ok(PyQueue {
            q,
            member: Mutex::new(Some(member)),
            explicit_sender,
            spin_ns: AtomicU64::new(spin_ns),
            closed: AtomicBool::new(false),
        })
    }
}

#[pymethods]
impl PyQueue {
    /// Create or attach to a queue.
    ///
    /// ``create=None`` attaches if ``name`` exists and creates it otherwise; ``True`` creates
    /// (replacing a stale segment whose members are all dead, else ``SegmentExists``);
    /// ``False`` attaches (``SegmentNotFound`` if missing). ``capacity`` is the byte budget
    /// of the ring (see ``record_size`` for the cost of one message).
    #[new]
    #[pyo3(signature = (name=None, *, create=None, capacity=1048576, max_members=64, sender=None, mode=0o600, spin_us=20.0))]
    #[allow(clippy::too_many_arguments)] // one per Python keyword argument
    fn new(
        py: Python<'_>,
        name: Option<String>,
        create: Option<bool>,
        capacity: u64,
        max_members: u32,
        sender: Option<&Bound<'_, PyAny>>,
        mode: u32,
        spin_us: f64,
    ) -> PyResult<Self> {
        let opts = QueueOptions {
            capacity,
            max_members,
            align: 8,
            mode,
        };
        PyQueue::build(py, name, create, opts, sender, spin_us)
    }

    /// The segment name (``/dev/shm/<name>``).
    #[getter]
    fn name(&self) -> &str {
        self.q.name()
    }
    /// Byte budget of the ring.
    #[getter]
    fn capacity(&self) -> u64 {
        self.q.capacity()
    }
    /// The sender name stamped on messages sent through this handle.
    #[getter]
    fn sender(&self) -> String {
        let m = self.member.lock().ok().and_then(|m| m.clone());
        let name = match m {
            Some(m) if m.mine() => m.name.clone(),
            _ => self.default_sender(),
        };
        String::from_utf8_lossy(&name).into_owned()
    }
    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
    /// Free bytes right now.
    #[getter]
    fn free_bytes(&self) -> PyResult<u64> {
        self.alive()?;
        Ok(self.q.free_bytes())
    }
    /// Spin window (microseconds) before a blocking call sleeps.
    #[getter]
    fn get_spin_us(&self) -> f64 {
        self.spin_ns.load(Ordering::Relaxed) as f64 / 1000.0
    }
    #[setter]
    fn set_spin_us(&self, v: f64) -> PyResult<()> {
        self.spin_ns.store(spin_from_us(v)?, Ordering::Relaxed);
        Ok(())
    }

    /// The capacity cost in bytes of a message with these lengths (the sender defaults to
    /// this handle's).
    #[pyo3(signature = (body_len, type_len=0, sender_len=None))]
    fn record_size(&self, body_len: usize, type_len: usize, sender_len: Option<usize>) -> u64 {
        self.q.record_len(
            sender_len.unwrap_or_else(|| self.sender().len()),
            type_len,
            body_len,
        )
    }

    /// Send ``data`` (any C-contiguous bytes-like object) with an optional ``type``.
    ///
    /// ``timeout=None`` waits for room as long as needed, ``0`` never waits; on timeout
    /// raises ``Full`` (a ``queue.Full``). Returns the message's sequence number.
    #[pyo3(signature = (data, r#type=None, *, timeout=None, sender=None))]
    fn send(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        r#type: Option<&Bound<'_, PyAny>>,
        timeout: Option<f64>,
        sender: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let m = self.alive()?;
        let typ: &[u8] = match r#type {
            Some(t) if !t.is_none() => borrow_text_or_bytes(t, "type")?,
            _ => &[],
        };
        let own_sender;
        let sender: &[u8] = match sender {
            Some(s) if !s.is_none() => {
                own_sender = text_or_bytes(s, "sender")?;
                &own_sender
            }
            _ => &m.name,
        };
        let buf;
        let body: &[u8] = if let Ok(b) = data.cast::<PyBytes>() {
            b.as_bytes()
        } else {
            buf = Buf::get(data)?;
            buf.as_slice()
        };
        let d = deadline(timeout)?;
        // Fast path with the GIL held: small message, room available, lock free. Anything
        // that would wait (a full ring, a busy lock) goes to the path that releases the GIL.
        if body.len() <= 64 * 1024 {
            match self.q.try_send(sender, typ, &[body]) {
                Ok(seq) => {
                    self.q.count_sent(m.id);
                    return Ok(seq);
                }
                Err(Error::Full { .. } | Error::Busy(_)) => {}
                Err(e) => return Err(to_pyerr(py, e)),
            }
        }
        let (s, t, b) = (
            SendSlice::of(sender),
            SendSlice::of(typ),
            SendSlice::of(body),
        );
        let q = Arc::clone(&self.q);
        let spec = self.spec(d);
        // SAFETY: sender, typ and body outlive the call (held by this frame).
        let seq = blocking(py, move |chk| unsafe {
            q.send(s.get(), t.get(), &[b.get()], spec, chk)
        })?;
        self.q.count_sent(m.id);
        Ok(seq)
    }

    /// ``send(data, type, timeout=0)``: raise ``Full`` at once if there is no room.
    #[pyo3(signature = (data, r#type=None))]
    fn send_nowait(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        r#type: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        self.send(py, data, r#type, Some(0.0), None)
    }

    /// A new reader that receives every message sent from now on (screened by the
    /// optional ``senders``/``types`` to accept and ``exclude_senders``/``exclude_types``).
    #[pyo3(signature = (*, name=None, senders=None, types=None, exclude_senders=None, exclude_types=None))]
    fn reader(
        &self,
        py: Python<'_>,
        name: Option<&Bound<'_, PyAny>>,
        senders: Option<&Bound<'_, PyAny>>,
        types: Option<&Bound<'_, PyAny>>,
        exclude_senders: Option<&Bound<'_, PyAny>>,
        exclude_types: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyReader> {
        let me = self.alive()?;
        let filter = Filter {
            senders: byte_set(senders, "senders")?,
            types: byte_set(types, "types")?,
            exclude_senders: byte_set(exclude_senders, "exclude_senders")?.unwrap_or_default(),
            exclude_types: byte_set(exclude_types, "exclude_types")?.unwrap_or_default(),
        };
        let name = match name {
            Some(n) if !n.is_none() => text_or_bytes(n, "name")?,
            _ => me.name.clone(),
        };
        let q = Arc::clone(&self.q);
        let m = py
            .detach(move || Membership::join(&q, KIND_READER, &name))
            .map_err(to_pyerr_now)?;
        Ok(PyReader {
            m,
            state: Mutex::new(filter),
            spin_ns: AtomicU64::new(self.spin_ns.load(Ordering::Relaxed)),
            closed: AtomicBool::new(false),
        })
    }

    /// Block until at least ``n`` live readers have joined (``Timeout`` after ``timeout`` s).
    #[pyo3(signature = (n, timeout=None))]
    fn wait_for_readers(&self, py: Python<'_>, n: u32, timeout: Option<f64>) -> PyResult<()> {
        self.alive()?;
        let d = deadline(timeout)?;
        let q = Arc::clone(&self.q);
        let spec = self.spec(d);
        if blocking(py, move |chk| q.wait_for_readers(n, spec, chk))? {
            Ok(())
        } else {
            Err(to_pyerr(
                py,
                Error::Timeout(
                    Duration::from_secs_f64(timeout.unwrap_or(0.0).max(0.0)),
                    "readers to join",
                ),
            ))
        }
    }

    /// Shut the queue down: sends fail from now on, and readers raise ``QueueShutDown``
    /// (iteration stops) once they have read every message.
    fn shutdown(&self) -> PyResult<()> {
        self.alive()?;
        self.q.shutdown();
        Ok(())
    }

    /// A lock-free snapshot: write sequence, used bytes, each member's cursor and lag, dead
    /// and live members, lock recoveries, full events and time writers spent blocked.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.alive()?;
        stats_dict(py, &self.q)
    }

    /// Leave the queue. The segment is removed when its last member leaves.
    fn close(&self, py: Python<'_>) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let m = self.member.lock().ok().and_then(|mut m| m.take());
        if let Some(m) = m {
            py.detach(move || m.leave());
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __exit__(
        &self,
        py: Python<'_>,
        _t: Option<&Bound<'_, PyAny>>,
        _v: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close(py);
        false
    }
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let f = py.import("ringcast._ringcast")?.getattr("_attach_queue")?;
        let sender = self.explicit_sender.as_ref().map(|s| PyBytes::new(py, s));
        let args = (self.q.name().to_owned(), sender, self.get_spin_us());
        (f, args).into_pyobject(py)
    }
    fn __repr__(&self) -> String {
        format!(
            "BroadcastQueue(name={:?}, capacity={}, sender={:?}{})",
            self.q.name(),
            self.q.capacity(),
            self.sender(),
            if self.closed() { ", closed" } else { "" }
        )
    }
}

/// Rebuild a Message (what unpickling one does).
#[pyfunction]
fn _message(sender: Vec<u8>, r#type: Vec<u8>, seq: u64, body: Py<PyBytes>) -> Message {
    Message {
        sender,
        typ: r#type,
        seq,
        body,
    }
}

/// Attach to a queue by name (what unpickling a BroadcastQueue does).
#[pyfunction]
#[pyo3(signature = (name, sender=None, spin_us=20.0))]
fn _attach_queue(
    py: Python<'_>,
    name: String,
    sender: Option<&Bound<'_, PyAny>>,
    spin_us: f64,
) -> PyResult<PyQueue> {
    PyQueue::build(
        py,
        Some(name),
        Some(false),
        QueueOptions::default(),
        sender,
        spin_us,
    )
}

/// Create or attach a queue with an explicit record alignment (used by the pysyncq layer,
/// which needs byte-exact accounting: ``align=1``).
#[pyfunction]
#[pyo3(signature = (name, create, capacity, align, sender=None, max_members=512))]
fn _open_queue(
    py: Python<'_>,
    name: Option<String>,
    create: Option<bool>,
    capacity: u64,
    align: u32,
    sender: Option<&Bound<'_, PyAny>>,
    max_members: u32,
) -> PyResult<PyQueue> {
    let opts = QueueOptions {
        capacity,
        max_members,
        align,
        mode: 0o600,
    };
    PyQueue::build(py, name, create, opts, sender, 20.0)
}

fn stats_dict<'py>(py: Python<'py>, q: &Queue) -> PyResult<Bound<'py, PyDict>> {
    let s = q.stats();
    let d = PyDict::new(py);
    d.set_item("name", &s.name)?;
    d.set_item("capacity", s.capacity)?;
    d.set_item("used_bytes", s.used_bytes)?;
    d.set_item("write_seq", s.write_seq)?;
    d.set_item("shutdown", s.shutdown)?;
    d.set_item("lock_recoveries", s.lock_recoveries)?;
    d.set_item("reaped", s.reaped)?;
    d.set_item("full_events", s.full_events)?;
    d.set_item("send_blocked_s", s.send_blocked_ns as f64 / 1e9)?;
    let members = PyList::empty(py);
    let (mut live, mut dead, mut readers) = (0, 0, 0);
    for m in &s.members {
        let md = PyDict::new(py);
        md.set_item("slot", m.slot)?;
        md.set_item(
            "kind",
            if m.kind == KIND_READER {
                "reader"
            } else {
                "handle"
            },
        )?;
        md.set_item("pid", m.pid)?;
        md.set_item("name", String::from_utf8_lossy(&m.name))?;
        md.set_item("alive", m.alive)?;
        md.set_item("cursor", m.cursor)?;
        md.set_item("next_seq", m.next_seq)?;
        md.set_item("lag_messages", m.lag_messages)?;
        md.set_item("lag_bytes", m.lag_bytes)?;
        md.set_item("received", m.received)?;
        md.set_item("sent", m.sent)?;
        md.set_item("waits", m.waits)?;
        md.set_item("blocked_s", m.blocked_ns as f64 / 1e9)?;
        members.append(md)?;
        if m.alive {
            live += 1;
            if m.kind == KIND_READER {
                readers += 1;
            }
        } else {
            dead += 1;
        }
    }
    d.set_item("members", members)?;
    d.set_item("members_alive", live)?;
    d.set_item("members_dead", dead)?;
    d.set_item("readers_alive", readers)?;
    Ok(d)
}

// ------------------------------------------------------------------------------- Reader

/// How a receive ended (shutdown is an outcome here, an exception only where the API says so).
enum Recv<R> {
    Got(R),
    TimedOut,
    ShutDown,
}

impl<R> Recv<R> {
    /// ``Empty`` on timeout, ``QueueShutDown`` on shutdown.
    fn or_raise(self, py: Python<'_>, q: &Queue, timeout: Option<f64>) -> PyResult<R> {
        match self {
            Recv::Got(r) => Ok(r),
            Recv::TimedOut => Err(PyReader::empty(py, timeout)),
            Recv::ShutDown => Err(to_pyerr(py, Error::ShutDown(q.name().to_owned()))),
        }
    }
}

/// A reader of a BroadcastQueue: its own cursor, holding back writers until it has read.
#[pyclass(module = "ringcast", name = "Reader", frozen)]
struct PyReader {
    m: Arc<Membership>,
    state: Mutex<Filter>,
    spin_ns: AtomicU64,
    closed: AtomicBool,
}

impl PyReader {
    /// Receive one message, building the result with `build` before the record is consumed
    /// (so a failing build — e.g. a decode error — loses nothing). `Ok(None)` on timeout.
    fn recv_with<'py, R>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        build: impl Fn(Python<'py>, &ringcast_core::RecordRef<'_>) -> PyResult<R>,
    ) -> PyResult<Recv<R>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(to_pyerr(py, Error::Closed("Reader")));
        }
        if !self.m.mine() {
            return Err(to_pyerr(py, Error::Forked("Reader")));
        }
        let filter = self
            .state
            .try_lock()
            .map_err(|_| to_pyerr(py, Error::Busy("Reader")))?;
        let d = deadline(timeout)?;
        let q = &self.m.q;
        let id = self.m.id;
        loop {
            if let Some(rec) = q.next_for(id, &filter).map_err(|e| to_pyerr(py, e))? {
                let out = build(py, &rec)?;
                q.consume(id, rec.end, rec.seq)
                    .map_err(|e| to_pyerr(py, e))?;
                return Ok(Recv::Got(out));
            }
            if q.is_shutdown() {
                return Ok(Recv::ShutDown);
            }
            if d.expired() {
                return Ok(Recv::TimedOut);
            }
            let spec = WaitSpec {
                deadline: d,
                spin: Duration::from_nanos(self.spin_ns.load(Ordering::Relaxed)),
            };
            let f: &Filter = &filter;
            match blocking(py, move |chk| q.wait_readable(id, f, spec, chk)) {
                Ok(true) => {}
                Ok(false) => return Ok(Recv::TimedOut),
                Err(BindError::Core(Error::ShutDown(_))) => return Ok(Recv::ShutDown),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn message(py: Python<'_>, r: &ringcast_core::RecordRef<'_>) -> PyResult<Message> {
        Ok(Message {
            sender: r.sender.to_vec(),
            typ: r.typ.to_vec(),
            seq: r.seq,
            body: PyBytes::new(py, r.body).unbind(),
        })
    }

    fn empty(py: Python<'_>, timeout: Option<f64>) -> PyErr {
        let msg = match timeout {
            Some(t) if t > 0.0 => format!("no message within {t} s"),
            _ => "no message available".to_owned(),
        };
        match py
            .import("ringcast.errors")
            .and_then(|m| m.getattr("Empty"))
            .and_then(|c| c.call1((msg,)))
        {
            Ok(e) => PyErr::from_value(e),
            Err(e) => e,
        }
    }
}

#[pymethods]
impl PyReader {
    /// Receive the next message (``timeout=None`` waits for ever; raises ``Empty``, a
    /// ``queue.Empty``, on timeout, and ``QueueShutDown`` once a shut-down queue is drained).
    #[pyo3(signature = (timeout=None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Message> {
        self.recv_with(py, timeout, Self::message)?
            .or_raise(py, &self.m.q, timeout)
    }

    /// ``recv(timeout=0)``.
    fn recv_nowait(&self, py: Python<'_>) -> PyResult<Message> {
        self.recv(py, Some(0.0))
    }

    /// Like ``recv`` but return only the body, as bytes.
    #[pyo3(signature = (timeout=None))]
    fn recv_bytes<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.recv_with(py, timeout, |py, r| Ok(PyBytes::new(py, r.body)))?
            .or_raise(py, &self.m.q, timeout)
    }

    /// Up to ``max_messages`` messages: waits up to ``timeout`` for the first, then takes
    /// what is already there. Returns a possibly empty list.
    #[pyo3(signature = (max_messages=1024, timeout=0.0))]
    fn recv_many<'py>(
        &self,
        py: Python<'py>,
        max_messages: usize,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let mut t = timeout;
        while out.len() < max_messages {
            match self.recv_with(py, t, Self::message)? {
                Recv::Got(m) => out.append(m)?,
                Recv::TimedOut => break,
                Recv::ShutDown if !out.is_empty() => break,
                r @ Recv::ShutDown => {
                    r.or_raise(py, &self.m.q, t)?;
                }
            }
            t = Some(0.0);
        }
        Ok(out)
    }

    /// pysyncq-style pop: ``(sender, type, body)`` as str (strict UTF-8, checked before the
    /// message is consumed) or bytes, or ``None`` on timeout.
    #[pyo3(signature = (timeout, decode))]
    fn _pop<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        decode: bool,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let got = self.recv_with(py, timeout, |py, r| {
            if decode {
                let parts = [r.sender, r.typ, r.body];
                let mut strs = Vec::with_capacity(3);
                for p in parts {
                    match std::str::from_utf8(p) {
                        Ok(s) => strs.push(PyString::new(py, s)),
                        Err(e) => {
                            return Err(PyUnicodeDecodeError::new_err((
                                "utf-8",
                                PyBytes::new(py, p).unbind(),
                                e.valid_up_to(),
                                e.valid_up_to() + e.error_len().unwrap_or(1),
                                "invalid utf-8 (the message was not consumed; pop(decode=False) reads it)",
                            )))
                        }
                    }
                }
                PyTuple::new(py, strs)
            } else {
                PyTuple::new(py, [PyBytes::new(py, r.sender), PyBytes::new(py, r.typ), PyBytes::new(py, r.body)])
            }
        })?;
        match got {
            Recv::Got(t) => Ok(Some(t)),
            Recv::TimedOut => Ok(None),
            r @ Recv::ShutDown => r.or_raise(py, &self.m.q, timeout).map(Some),
        }
    }

    /// Replace the screens: messages whose sender or type is in these sets are skipped.
    fn _set_screens(
        &self,
        exclude_senders: &Bound<'_, PyAny>,
        exclude_types: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let es = byte_set(Some(exclude_senders), "exclude_senders")?.unwrap_or_default();
        let et = byte_set(Some(exclude_types), "exclude_types")?.unwrap_or_default();
        let mut f = self
            .state
            .try_lock()
            .map_err(|_| to_pyerr_now(Error::Busy("Reader")))?;
        f.exclude_senders = es;
        f.exclude_types = et;
        Ok(())
    }

    /// ``(cursor, next_seq)``: byte position and sequence number of the next message.
    #[getter]
    fn position(&self) -> PyResult<(u64, u64)> {
        self.m.q.position(self.m.id).map_err(to_pyerr_now)
    }

    /// Messages sent but not yet read by this reader.
    #[getter]
    fn lag(&self) -> PyResult<u64> {
        let (_, seq) = self.position()?;
        Ok(self.m.q.write_seq().saturating_sub(seq))
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Leave: this reader no longer holds back writers.
    fn close(&self, py: Python<'_>) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let m = Arc::clone(&self.m);
            py.detach(move || m.leave());
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __exit__(
        &self,
        py: Python<'_>,
        _t: Option<&Bound<'_, PyAny>>,
        _v: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close(py);
        false
    }
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    /// Iteration blocks for the next message and stops when the queue is shut down.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Message>> {
        match self.recv_with(py, None, Self::message)? {
            Recv::Got(m) => Ok(Some(m)),
            Recv::TimedOut | Recv::ShutDown => Ok(None),
        }
    }
    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "a Reader cannot be pickled: pass the BroadcastQueue and call .reader() in the other process",
        ))
    }
    fn __repr__(&self) -> String {
        format!(
            "Reader(queue={:?}, slot={}{})",
            self.m.q.name(),
            self.m.id.slot,
            if self.closed() { ", closed" } else { "" }
        )
    }
}

// ------------------------------------------------------------------------------- module functions

fn info_dict<'py>(py: Python<'py>, i: &segment::SegmentInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &i.name)?;
    d.set_item(
        "kind",
        match i.raw.geo.kind {
            segment::KIND_BROADCAST => "broadcast",
            segment::KIND_SLOTS => "slots",
            _ => "unknown",
        },
    )?;
    d.set_item("size", i.size)?;
    d.set_item("capacity", i.raw.geo.capacity)?;
    d.set_item("members_alive", i.members_alive)?;
    d.set_item("members_dead", i.members_dead)?;
    d.set_item("creator_pid", i.raw.creator_pid)?;
    d.set_item("stale", i.is_stale())?;
    Ok(d)
}

/// Every ringcast segment in ``/dev/shm`` with its kind, size and members alive/dead.
#[pyfunction]
fn segments(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let out = PyList::empty(py);
    for name in segment::list_names() {
        if let Ok(info) = segment::inspect(&name) {
            out.append(info_dict(py, &info)?)?;
        }
    }
    Ok(out)
}

/// Details of one segment (read-only; raises for a missing or foreign object).
#[pyfunction]
fn inspect<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
    let info = segment::inspect(name).map_err(|e| to_pyerr(py, e))?;
    info_dict(py, &info)
}

/// Remove every segment whose members are all dead; returns their names.
#[pyfunction]
fn gc() -> Vec<String> {
    ringcast_core::queue::gc()
}

/// Remove a segment name now (processes that have it mapped keep using it).
#[pyfunction]
fn unlink(py: Python<'_>, name: &str) -> PyResult<()> {
    segment::unlink(name).map_err(|e| to_pyerr(py, e))
}

/// Capacity cost in bytes of a message (``align`` 8 for BroadcastQueue, 1 for PySyncQ).
#[pyfunction]
#[pyo3(signature = (body_len, type_len=0, sender_len=0, align=8))]
fn record_size(body_len: usize, type_len: usize, sender_len: usize, align: u32) -> PyResult<u64> {
    if !matches!(align, 1 | 8 | 64) {
        return Err(to_pyerr_now(Error::InvalidArgument(format!(
            "align must be 1, 8 or 64, got {align}"
        ))));
    }
    Ok(ringcast_core::queue::record_len(
        align, sender_len, type_len, body_len,
    ))
}

/// Leave every queue and reader this process still holds (run at interpreter exit).
#[pyfunction]
fn _close_all(py: Python<'_>) -> usize {
    let list: Vec<_> = REGISTRY
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    py.detach(move || {
        list.iter()
            .filter_map(Weak::upgrade)
            .filter(|m| m.leave())
            .count()
    })
}

#[pymodule]
fn _ringcast(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyQueue>()?;
    m.add_class::<PyReader>()?;
    m.add_class::<Message>()?;
    m.add_function(wrap_pyfunction!(_attach_queue, m)?)?;
    m.add_function(wrap_pyfunction!(_message, m)?)?;
    m.add_function(wrap_pyfunction!(_open_queue, m)?)?;
    m.add_function(wrap_pyfunction!(segments, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(gc, m)?)?;
    m.add_function(wrap_pyfunction!(unlink, m)?)?;
    m.add_function(wrap_pyfunction!(record_size, m)?)?;
    m.add_function(wrap_pyfunction!(_close_all, m)?)?;
    m.add("RECORD_HEADER_BYTES", ringcast_core::queue::RECORD_HEADER)?;
    Ok(())
}
