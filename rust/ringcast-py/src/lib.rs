//! Thin PyO3 bindings of ringcast-core: type conversion, buffer protocol, error mapping and
//! GIL release. No queue logic lives here.

mod error;

use std::collections::{BTreeMap, HashSet};
use std::ffi::c_void;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pyo3::exceptions::{PyBufferError, PyTypeError, PyUnicodeDecodeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use ringcast_core::queue::{KIND_GROUP, KIND_GROUP_MEMBER, KIND_HANDLE, KIND_READER};
use ringcast_core::slots::{Claim, SlotOptions, SlotRing, TakeResult, KIND_CONSUMER, KIND_WORKER};
use ringcast_core::wait::deadline_from_secs;
use ringcast_core::{
    proc, segment, Deadline, Error, Filter, MemberId, Queue, QueueOptions, WaitSpec,
};
use ringcast_h5 as native;

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
        Ok(Membership::register(q, id, name))
    }
    /// Join with a custom join call (a lossy reader, a group member).
    fn join_as(
        q: &Arc<Queue>,
        name: &[u8],
        how: impl FnOnce(&Queue, &[u8]) -> ringcast_core::Result<MemberId>,
    ) -> ringcast_core::Result<Arc<Membership>> {
        let id = how(q, name)?;
        Ok(Membership::register(q, id, name))
    }
    fn register(q: &Arc<Queue>, id: MemberId, name: &[u8]) -> Arc<Membership> {
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
        m
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
    /// Messages a lossy reader missed (lapped by writers) just before this one.
    #[pyo3(get)]
    missed: u64,
    /// Whether a consumer group delivers this message again (its first member died).
    #[pyo3(get)]
    redelivered: bool,
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
    /// The thread (see ``thread_tag``) holding a reservation on this queue, or 0.
    reserving: Arc<AtomicU64>,
}

/// A number identifying the calling thread (never 0).
fn thread_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TAG: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TAG.with(|t| *t)
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
    /// ``HandleBusy`` if this thread holds a reservation on this queue (it would wait for
    /// itself).
    fn not_reserving(&self, py: Python<'_>) -> PyResult<()> {
        if self.reserving.load(Ordering::Acquire) == thread_tag() {
            return Err(to_pyerr(
                py,
                Error::Held(
                    "this thread holds a reservation on this queue: commit or abort it first"
                        .into(),
                ),
            ));
        }
        Ok(())
    }

    fn reserve_inner(
        &self,
        py: Python<'_>,
        nbytes: usize,
        r#type: Option<&Bound<'_, PyAny>>,
        timeout: Option<f64>,
        array: Option<(Vec<u8>, Py<PyAny>, Py<PyAny>)>,
    ) -> PyResult<PyReservation> {
        let m = self.alive()?;
        self.not_reserving(py)?;
        let typ: Vec<u8> = match r#type {
            Some(t) if !t.is_none() => text_or_bytes(t, "type")?,
            _ => Vec::new(),
        };
        let head_len = array.as_ref().map_or(0, |a| a.0.len());
        let total = nbytes.checked_add(head_len).ok_or_else(|| {
            to_pyerr(
                py,
                Error::InvalidArgument(format!("{nbytes} bytes is too large")),
            )
        })?;
        let q = Arc::clone(&self.q);
        let spec = self.spec(deadline(timeout)?);
        let sender = m.name.clone();
        let res = blocking(py, move |chk| q.reserve(&sender, &typ, total, spec, chk))?;
        let base = res.body_ptr() as usize;
        let (dtype, shape) = match array {
            Some((head, dt, shp)) => {
                // SAFETY: the reservation's body has room for the header and the data.
                unsafe {
                    std::ptr::copy_nonoverlapping(head.as_ptr(), base as *mut u8, head.len())
                };
                (Some(dt), Some(shp))
            }
            None => (None, None),
        };
        self.reserving.store(thread_tag(), Ordering::Release);
        Ok(PyReservation {
            inner: Mutex::new(Some(res)),
            reserving: Arc::clone(&self.reserving),
            member: m,
            ptr: base + head_len,
            len: nbytes as isize,
            dtype,
            shape,
            exports: AtomicUsize::new(0),
            seq: Mutex::new(None),
        })
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
            reserving: Arc::new(AtomicU64::new(0)),
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
        self.not_reserving(py)?;
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
    ///
    /// ``lossy=True``: the reader never holds back writers; when writers lap it, its next
    /// receive continues from the oldest message still there and reports how many it
    /// missed (``Message.missed``, ``Reader.missed``). ``group="name"``: the reader joins
    /// that consumer group; the group's members share one cursor, so each message goes to
    /// one of them, and a message whose member dies before finishing it is redelivered.
    #[pyo3(signature = (*, name=None, senders=None, types=None, exclude_senders=None, exclude_types=None, lossy=false, group=None))]
    #[allow(clippy::too_many_arguments)] // one per Python keyword argument
    fn reader(
        &self,
        py: Python<'_>,
        name: Option<&Bound<'_, PyAny>>,
        senders: Option<&Bound<'_, PyAny>>,
        types: Option<&Bound<'_, PyAny>>,
        exclude_senders: Option<&Bound<'_, PyAny>>,
        exclude_types: Option<&Bound<'_, PyAny>>,
        lossy: bool,
        group: Option<String>,
    ) -> PyResult<PyReader> {
        let me = self.alive()?;
        let filter = Filter {
            senders: byte_set(senders, "senders")?,
            types: byte_set(types, "types")?,
            exclude_senders: byte_set(exclude_senders, "exclude_senders")?.unwrap_or_default(),
            exclude_types: byte_set(exclude_types, "exclude_types")?.unwrap_or_default(),
        };
        if group.is_some() {
            let screened = filter.senders.is_some()
                || filter.types.is_some()
                || !filter.exclude_senders.is_empty()
                || !filter.exclude_types.is_empty();
            if screened || lossy {
                return Err(to_pyerr(
                    py,
                    Error::InvalidArgument(
                        "a consumer-group reader takes every message of its group: it cannot screen senders or types, nor be lossy".into(),
                    ),
                ));
            }
        }
        let name = match name {
            Some(n) if !n.is_none() => text_or_bytes(n, "name")?,
            _ => me.name.clone(),
        };
        let q = Arc::clone(&self.q);
        let gname = group.clone();
        let m = py
            .detach(move || match gname {
                Some(g) => Membership::join_as(&q, &name, |q, n| q.join_group(n, g.as_bytes())),
                None => Membership::join_as(&q, &name, |q, n| q.join_reader(n, lossy)),
            })
            .map_err(to_pyerr_now)?;
        Ok(PyReader {
            m,
            filter: Mutex::new(Arc::new(filter)),
            busy: AtomicBool::new(false),
            spin_ns: AtomicU64::new(self.spin_ns.load(Ordering::Relaxed)),
            closed: AtomicBool::new(false),
            lossy,
            group,
            missed: AtomicU64::new(0),
            book: Arc::new(LeaseBook::default()),
        })
    }

    /// Send a numpy array (any dtype without Python objects, any shape) as an array
    /// message: its dtype and shape travel with it; ``Reader.recv_array`` and
    /// ``Lease.array()`` give it back. Non-contiguous arrays are copied to C order first.
    /// ``meta`` (any JSON-serialisable value, e.g. a scan index) travels with the array;
    /// ``ringcast.array_meta(msg)`` reads it back.
    #[pyo3(signature = (array, r#type=None, *, timeout=None, meta=None))]
    fn send_array(
        &self,
        py: Python<'_>,
        array: &Bound<'_, PyAny>,
        r#type: Option<&Bound<'_, PyAny>>,
        timeout: Option<f64>,
        meta: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let m = self.alive()?;
        self.not_reserving(py)?;
        let enc = array_helper(py, "encode")?.call1((array, meta))?;
        let (head, data): (Bound<'_, PyBytes>, Bound<'_, PyAny>) = enc.extract()?;
        let typ: &[u8] = match r#type {
            Some(t) if !t.is_none() => borrow_text_or_bytes(t, "type")?,
            _ => &[],
        };
        let buf = Buf::get(&data)?;
        let (s, t, h, b) = (
            SendSlice::of(&m.name),
            SendSlice::of(typ),
            SendSlice::of(head.as_bytes()),
            SendSlice::of(buf.as_slice()),
        );
        let q = Arc::clone(&self.q);
        let spec = self.spec(deadline(timeout)?);
        // SAFETY: every slice is owned by this frame for the whole call.
        let seq = blocking(py, move |chk| unsafe {
            q.send(s.get(), t.get(), &[h.get(), b.get()], spec, chk)
        })?;
        self.q.count_sent(m.id);
        Ok(seq)
    }

    /// Reserve room for a ``nbytes`` message and fill it in place (zero-copy), e.g.
    /// ``with q.reserve(n) as r: f.readinto(r)``. The message is published when the
    /// ``with`` block ends normally (or ``r.commit()``), and not at all if it raises (or
    /// ``r.abort()``). Other writers wait meanwhile. Views of ``r`` must be gone by then:
    /// committing with a view still alive raises ``HandleBusy`` and sends nothing.
    #[pyo3(signature = (nbytes, r#type=None, *, timeout=None))]
    fn reserve(
        &self,
        py: Python<'_>,
        nbytes: usize,
        r#type: Option<&Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<PyReservation> {
        self.reserve_inner(py, nbytes, r#type, timeout, None)
    }

    /// ``reserve`` for an array of ``shape`` and ``dtype`` sent as an array message:
    /// ``with q.reserve_array((512, 512), "u2") as r: detector.read_into(r.array())``.
    #[pyo3(signature = (shape, dtype, r#type=None, *, timeout=None))]
    fn reserve_array(
        &self,
        py: Python<'_>,
        shape: &Bound<'_, PyAny>,
        dtype: &Bound<'_, PyAny>,
        r#type: Option<&Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<PyReservation> {
        let spec = array_helper(py, "header_for")?.call1((shape, dtype))?;
        let (head, nbytes, dt, shp): (Vec<u8>, usize, Py<PyAny>, Py<PyAny>) = spec.extract()?;
        self.reserve_inner(py, nbytes, r#type, timeout, Some((head, dt, shp)))
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
#[pyo3(signature = (sender, r#type, seq, body, missed=0, redelivered=false))]
fn _message(
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

/// A function of ``ringcast._array``.
fn array_helper<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("ringcast._array")?.getattr(name)
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
    d.set_item("overruns", s.overruns)?;
    d.set_item("redelivered", s.redelivered)?;
    d.set_item("claims_lost", s.claims_lost)?;
    let members = PyList::empty(py);
    let groups = PyDict::new(py);
    let (mut live, mut dead, mut readers) = (0, 0, 0);
    let (mut waits, mut blocked) = (0u64, 0u64);
    for m in &s.members {
        let md = PyDict::new(py);
        md.set_item("slot", m.slot)?;
        md.set_item(
            "kind",
            match m.kind {
                KIND_READER => "reader",
                KIND_GROUP => "group",
                KIND_GROUP_MEMBER => "group_member",
                _ => "handle",
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
        md.set_item("lossy", m.lossy)?;
        md.set_item("pinned", m.pin)?;
        md.set_item("missed", m.missed)?;
        md.set_item("redelivered", m.redelivered)?;
        md.set_item("leases", m.leases)?;
        md.set_item(
            "group",
            m.group
                .as_ref()
                .map(|g| String::from_utf8_lossy(g).into_owned()),
        )?;
        md.set_item("orphan", m.orphan)?;
        waits += m.waits;
        blocked += m.blocked_ns;
        if m.kind == KIND_GROUP {
            let gd = PyDict::new(py);
            gd.set_item("lag_messages", m.lag_messages)?;
            gd.set_item("lag_bytes", m.lag_bytes)?;
            gd.set_item("orphaned_claims", m.redelivered)?;
            let n = s
                .members
                .iter()
                .filter(|x| {
                    x.kind == KIND_GROUP_MEMBER && x.group.as_ref() == Some(&m.name) && !x.orphan
                })
                .count();
            gd.set_item("members", n)?;
            groups.set_item(String::from_utf8_lossy(&m.name), gd)?;
            members.append(md)?;
            continue;
        }
        members.append(md)?;
        if m.alive && !m.orphan {
            live += 1;
            if m.kind == KIND_READER || m.kind == KIND_GROUP_MEMBER {
                readers += 1;
            }
        } else {
            dead += 1;
        }
    }
    d.set_item("groups", groups)?;
    d.set_item("recv_waits", waits)?;
    d.set_item("recv_blocked_s", blocked as f64 / 1e9)?;
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

/// The leases a reader has handed out and not yet had back, by record position.
#[derive(Default)]
struct LeaseBook {
    open: Mutex<BTreeMap<u64, u32>>,
    /// The reader was closed while leases were out: leave when the last one ends.
    leave_when_done: AtomicBool,
}

impl LeaseBook {
    fn add(&self, pos: u64) -> u64 {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *open.entry(pos).or_insert(0) += 1;
        open.keys().next().copied().unwrap_or(segment::NO_PIN)
    }
    /// Remove one lease at `pos`; returns the new lowest pin and whether none is left.
    fn remove(&self, pos: u64) -> (u64, bool) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&pos) {
            *n -= 1;
            if *n == 0 {
                open.remove(&pos);
            }
        }
        let low = open.keys().next().copied();
        (low.unwrap_or(segment::NO_PIN), low.is_none())
    }
    fn count(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.values().map(|&n| n as usize).sum()
    }
}

/// Marks a reader in use by one receive; a second concurrent one gets ``HandleBusy``.
struct InUse<'a>(&'a AtomicBool);

impl<'a> InUse<'a> {
    fn take(flag: &'a AtomicBool) -> Result<Self, Error> {
        if flag.swap(true, Ordering::Acquire) {
            return Err(Error::Busy("Reader"));
        }
        Ok(InUse(flag))
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A reader of a BroadcastQueue: its own cursor, holding back writers until it has read.
#[pyclass(module = "ringcast", name = "Reader", frozen)]
struct PyReader {
    m: Arc<Membership>,
    filter: Mutex<Arc<Filter>>,
    busy: AtomicBool,
    spin_ns: AtomicU64,
    closed: AtomicBool,
    lossy: bool,
    group: Option<String>,
    /// Messages missed (lossy) reported on messages so far.
    missed: AtomicU64,
    book: Arc<LeaseBook>,
}

type Build<'a, 'py, R> =
    dyn FnMut(Python<'py>, &ringcast_core::RecordRef<'_>, u64) -> PyResult<R> + 'a;

impl PyReader {
    fn check_usable(&self) -> BResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("Reader").into());
        }
        if !self.m.mine() {
            return Err(Error::Forked("Reader").into());
        }
        Ok(())
    }

    fn current_filter(&self) -> Arc<Filter> {
        let f = self.filter.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&f)
    }

    /// One receive attempt without waiting. `build` makes the result before the record is
    /// consumed (so a failing build loses nothing); `missed` is what a lossy reader missed
    /// before this record.
    fn take_one<'py, R>(
        &self,
        py: Python<'py>,
        filter: &Filter,
        build: &mut Build<'_, 'py, R>,
    ) -> PyResult<Option<R>> {
        let q = &self.m.q;
        let id = self.m.id;
        if self.group.is_some() {
            if self.book.count() > 0 {
                return Err(to_pyerr(
                    py,
                    Error::Held(
                        "a lease of this consumer-group reader is still held: release it before receiving again".into(),
                    ),
                ));
            }
            return match q.group_next(id).map_err(|e| to_pyerr(py, e))? {
                Some(rec) => build(py, &rec, 0).map(Some),
                None => Ok(None),
            };
        }
        loop {
            let Some(rec) = q.next_for(id, filter).map_err(|e| to_pyerr(py, e))? else {
                return Ok(None);
            };
            // Misses are counted in shared memory wherever they were noticed (also while
            // waiting); the message reports those not reported yet.
            let total = if self.lossy { q.missed_total(id) } else { 0 };
            let missed = total.saturating_sub(self.missed.load(Ordering::Relaxed));
            let out = build(py, &rec, missed)?;
            if self.lossy && !q.intact(rec.start) {
                continue; // overwritten while copied: drop the copy, resync
            }
            q.consume(id, rec.end, rec.seq)
                .map_err(|e| to_pyerr(py, e))?;
            self.missed.store(total, Ordering::Relaxed);
            return Ok(Some(out));
        }
    }

    /// Receive one message, waiting up to `timeout`.
    fn recv_with<'py, R>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        build: &mut Build<'_, 'py, R>,
    ) -> PyResult<Recv<R>> {
        self.check_usable()?;
        let _busy = InUse::take(&self.busy).map_err(|e| to_pyerr(py, e))?;
        let d = deadline(timeout)?;
        let filter = self.current_filter();
        let q = &self.m.q;
        loop {
            if let Some(out) = self.take_one(py, &filter, build)? {
                return Ok(Recv::Got(out));
            }
            if q.is_shutdown() {
                if self.group.is_none() {
                    return Ok(Recv::ShutDown);
                }
                match q.group_wait(
                    self.m.id,
                    WaitSpec::nowait(),
                    &mut ringcast_core::wait::no_check,
                ) {
                    Ok(true) => continue,
                    Ok(false) | Err(Error::ShutDown(_)) => return Ok(Recv::ShutDown),
                    Err(e) => return Err(to_pyerr(py, e)),
                }
            }
            if d.expired() {
                return Ok(Recv::TimedOut);
            }
            match self.wait(py, &filter, d) {
                Ok(true) => {}
                Ok(false) => return Ok(Recv::TimedOut),
                Err(BindError::Core(Error::ShutDown(_))) => return Ok(Recv::ShutDown),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Wait (GIL released) until something may be readable, or the deadline.
    fn wait(&self, py: Python<'_>, filter: &Filter, d: Deadline) -> BResult<bool> {
        let spec = WaitSpec {
            deadline: d,
            spin: Duration::from_nanos(self.spin_ns.load(Ordering::Relaxed)),
        };
        let q = &self.m.q;
        let id = self.m.id;
        if self.group.is_some() {
            blocking(py, move |chk| q.group_wait(id, spec, chk))
        } else {
            blocking(py, move |chk| q.wait_readable(id, filter, spec, chk))
        }
    }

    fn message(py: Python<'_>, r: &ringcast_core::RecordRef<'_>, missed: u64) -> PyResult<Message> {
        Ok(Message {
            sender: r.sender.to_vec(),
            typ: r.typ.to_vec(),
            seq: r.seq,
            body: PyBytes::new(py, r.body).unbind(),
            missed,
            redelivered: r.redelivered,
        })
    }

    /// Make a Lease of `r` (pinning it first; the caller consumes the record after).
    fn make_lease(&self, r: &ringcast_core::RecordRef<'_>, missed: u64) -> BResult<Lease> {
        let q = &self.m.q;
        let low = self.book.add(r.start);
        if self.group.is_none() {
            q.set_pin(self.m.id, low)?;
        }
        q.count_lease(self.m.id);
        Ok(Lease {
            m: Arc::clone(&self.m),
            book: Arc::clone(&self.book),
            group: self.group.is_some(),
            start: r.start,
            ptr: r.body.as_ptr() as usize,
            len: r.body.len() as isize,
            seq: r.seq,
            sender: r.sender.to_vec(),
            typ: r.typ.to_vec(),
            missed,
            redelivered: r.redelivered,
            exports: AtomicUsize::new(0),
            released: AtomicBool::new(false),
            done: AtomicBool::new(false),
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

    fn aio<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        py.import("ringcast._aio")?.getattr(name)
    }
}

#[pymethods]
impl PyReader {
    /// Receive the next message (``timeout=None`` waits for ever; raises ``Empty``, a
    /// ``queue.Empty``, on timeout, and ``QueueShutDown`` once a shut-down queue is drained).
    #[pyo3(signature = (timeout=None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Message> {
        self.recv_with(py, timeout, &mut Self::message)?
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
        self.recv_with(py, timeout, &mut |py, r, _| Ok(PyBytes::new(py, r.body)))?
            .or_raise(py, &self.m.q, timeout)
    }

    /// Receive an array message (``BroadcastQueue.send_array``) as a new writable numpy
    /// array (one copy, straight from shared memory). With ``dtype`` (and ``shape``), any
    /// message's body is read as raw data of that type.
    #[pyo3(signature = (timeout=None, *, dtype=None, shape=None))]
    fn recv_array<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        dtype: Option<&Bound<'py, PyAny>>,
        shape: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let copy = array_helper(py, "copy")?;
        self.recv_with(py, timeout, &mut |py, r, _| {
            // A read-only memoryview of the record, alive only during this call: the
            // helper copies out of it.
            let mv = unsafe { readonly_memoryview(py, r.body) }?;
            let out = copy.call1((&mv, dtype, shape));
            mv.call_method0("release")?;
            out
        })?
        .or_raise(py, &self.m.q, timeout)
    }

    /// Lease the next message: a zero-copy, read-only view of its body in shared memory.
    ///
    /// Use as ``with reader.lease() as m:`` — ``m`` supports the buffer protocol
    /// (``memoryview(m)``, ``numpy.frombuffer(m)``) and ``m.array()``. The message's memory
    /// is not reused while the lease is held: the lease ends when the ``with`` block ends
    /// (or ``m.release()``) *and* the last view of it is gone, so a view kept after the
    /// block keeps its bytes. The reader itself moves on at once; every lease held keeps
    /// writers from reusing memory from its message on, so release leases promptly.
    /// Raises ``Empty`` on timeout and ``QueueShutDown`` once drained; a lossy reader
    /// cannot lease (``InvalidArgument``).
    #[pyo3(signature = (timeout=None))]
    fn lease(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Lease> {
        if self.lossy {
            return Err(to_pyerr(
                py,
                Error::InvalidArgument(
                    "a lossy reader cannot lease: writers may overwrite what it reads; use recv() (a copy)"
                        .into(),
                ),
            ));
        }
        self.recv_with(py, timeout, &mut |_, r, missed| {
            self.make_lease(r, missed).map_err(PyErr::from)
        })?
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
            match self.recv_with(py, t, &mut Self::message)? {
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
        let got = self.recv_with(py, timeout, &mut |py, r, _| {
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
        let mut f = self.filter.lock().unwrap_or_else(|e| e.into_inner());
        let mut nf = Filter::clone(&f);
        nf.exclude_senders = es;
        nf.exclude_types = et;
        *f = Arc::new(nf);
        Ok(())
    }

    /// Wait up to ``timeout`` s (GIL released) until a message may be readable, without
    /// receiving it: ``True`` if one may be, ``False`` on timeout. Raises ``QueueShutDown``
    /// once the queue is shut down and drained. Used by the asyncio methods.
    #[pyo3(signature = (timeout))]
    fn _wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        self.check_usable()?;
        let filter = self.current_filter();
        let d = deadline(timeout)?;
        match self.wait(py, &filter, d) {
            Ok(b) => Ok(b),
            Err(e) => Err(e.into()),
        }
    }

    /// For a consumer-group reader: finish the message received last, so a crash from now
    /// on does not redeliver it (the next receive does this too).
    fn ack(&self, py: Python<'_>) -> PyResult<()> {
        self.check_usable()?;
        if self.group.is_none() {
            return Ok(());
        }
        if self.book.count() > 0 {
            return Err(to_pyerr(
                py,
                Error::InvalidArgument("release the lease to finish a leased message".into()),
            ));
        }
        self.m.q.group_ack(self.m.id).map_err(|e| to_pyerr(py, e))
    }

    /// ``await reader.recv_async(timeout)``: like ``recv`` without blocking the event loop;
    /// cancelling it never loses a message.
    #[pyo3(signature = (timeout=None))]
    fn recv_async<'py>(
        slf: &Bound<'py, Self>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::aio(slf.py(), "recv_async")?.call1((slf, timeout))
    }

    /// ``async with reader.lease_async(timeout) as m:``: ``lease`` for asyncio.
    #[pyo3(signature = (timeout=None))]
    fn lease_async<'py>(
        slf: &Bound<'py, Self>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::aio(slf.py(), "AsyncLease")?.call1((slf, timeout))
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// ``async for msg in reader``: until the queue is shut down and drained.
    fn __anext__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::aio(slf.py(), "anext")?.call1((slf,))
    }

    /// ``(cursor, next_seq)``: byte position and sequence number of the next message.
    #[getter]
    fn position(&self) -> PyResult<(u64, u64)> {
        self.m.q.position(self.m.id).map_err(to_pyerr_now)
    }

    /// Messages sent but not yet read by this reader (its group, for a group reader).
    #[getter]
    fn lag(&self) -> PyResult<u64> {
        if self.group.is_some() {
            return self.m.q.group_lag(self.m.id).map_err(to_pyerr_now);
        }
        let (_, seq) = self.position()?;
        Ok(self.m.q.write_seq().saturating_sub(seq))
    }

    /// Whether this reader is lossy (never holds back writers).
    #[getter]
    fn lossy(&self) -> bool {
        self.lossy
    }

    /// The consumer group this reader belongs to, if any.
    #[getter]
    fn group(&self) -> Option<String> {
        self.group.clone()
    }

    /// Messages this (lossy) reader missed because writers lapped it, in total.
    #[getter]
    fn missed(&self) -> u64 {
        self.m.q.missed_total(self.m.id)
    }

    /// Leases handed out and not yet ended.
    #[getter]
    fn leases_held(&self) -> usize {
        self.book.count()
    }

    /// Spin window (microseconds) before a blocking receive sleeps; 0 sleeps at once.
    #[getter]
    fn get_spin_us(&self) -> f64 {
        self.spin_ns.load(Ordering::Relaxed) as f64 / 1000.0
    }
    #[setter]
    fn set_spin_us(&self, v: f64) -> PyResult<()> {
        self.spin_ns.store(spin_from_us(v)?, Ordering::Relaxed);
        Ok(())
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Leave: this reader no longer holds back writers. With leases still held, it leaves
    /// when the last one ends (their memory stays valid until then).
    fn close(&self, py: Python<'_>) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if self.book.count() > 0 {
                self.book.leave_when_done.store(true, Ordering::Release);
                if self.book.count() > 0 {
                    return;
                }
            }
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
        match self.recv_with(py, None, &mut Self::message)? {
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
        let mut extra = String::new();
        if self.lossy {
            extra.push_str(", lossy");
        }
        if let Some(g) = &self.group {
            extra.push_str(&format!(", group={g:?}"));
        }
        if self.closed() {
            extra.push_str(", closed");
        }
        format!(
            "Reader(queue={:?}, slot={}{extra})",
            self.m.q.name(),
            self.m.id.slot,
        )
    }
}

/// A temporary read-only memoryview over `data` (the caller releases it before `data` may
/// change).
unsafe fn readonly_memoryview<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let p = ffi::PyMemoryView_FromMemory(
        data.as_ptr() as *mut std::os::raw::c_char,
        data.len() as ffi::Py_ssize_t,
        ffi::PyBUF_READ,
    );
    Bound::from_owned_ptr_or_err(py, p)
}

static ONE: isize = 1;
static FORMAT_B: &[u8] = b"B\0";

/// Fill a one-dimensional byte buffer export of `owner`.
unsafe fn fill_view(
    view: *mut ffi::Py_buffer,
    flags: c_int,
    owner: Bound<'_, PyAny>,
    ptr: usize,
    len: *const isize,
    readonly: bool,
) -> PyResult<()> {
    if view.is_null() {
        return Err(PyBufferError::new_err("no view to fill"));
    }
    if readonly && (flags & ffi::PyBUF_WRITABLE) == ffi::PyBUF_WRITABLE {
        return Err(PyBufferError::new_err(
            "a leased message is read-only (copy it to change it)",
        ));
    }
    let v = &mut *view;
    v.obj = owner.into_ptr();
    v.buf = ptr as *mut c_void;
    v.len = *len;
    v.readonly = c_int::from(readonly);
    v.itemsize = 1;
    v.format = if (flags & ffi::PyBUF_FORMAT) == ffi::PyBUF_FORMAT {
        FORMAT_B.as_ptr() as *mut std::os::raw::c_char
    } else {
        std::ptr::null_mut()
    };
    v.ndim = 1;
    v.shape = if (flags & ffi::PyBUF_ND) == ffi::PyBUF_ND {
        len as *mut isize
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
    Ok(())
}

// ------------------------------------------------------------------------------- Reservation

/// Room for one message in the ring, filled in place; see ``BroadcastQueue.reserve``.
#[pyclass(module = "ringcast", name = "Reservation", frozen)]
struct PyReservation {
    inner: Mutex<Option<ringcast_core::queue::Reservation>>,
    reserving: Arc<AtomicU64>,
    member: Arc<Membership>,
    ptr: usize,
    len: isize,
    dtype: Option<Py<PyAny>>,
    shape: Option<Py<PyAny>>,
    exports: AtomicUsize,
    seq: Mutex<Option<u64>>,
}

impl PyReservation {
    fn open(&self) -> PyResult<()> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.is_none() {
            return Err(to_pyerr_now(Error::Closed(
                "Reservation (it was committed or aborted)",
            )));
        }
        if !self.member.mine() {
            return Err(to_pyerr_now(Error::Forked("Reservation")));
        }
        Ok(())
    }
    fn end(&self) -> Option<ringcast_core::queue::Reservation> {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        if r.is_some() {
            self.reserving.store(0, Ordering::Release);
        }
        r
    }
}

impl Drop for PyReservation {
    fn drop(&mut self) {
        if self.member.mine() {
            self.end();
        } else if let Some(r) = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // Inherited through fork: the lock belongs to the parent; never release it here.
            std::mem::forget(r);
        }
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
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let me = slf.get();
        me.open()?;
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
        match shp {
            Some(s) if !s.is_none() => a.call_method1("reshape", (s,)),
            _ => Ok(a),
        }
    }
    /// Views of the reserved space still alive.
    #[getter]
    fn views(&self) -> usize {
        self.exports.load(Ordering::Acquire)
    }
    /// The sequence number, once committed.
    #[getter]
    fn seq(&self) -> Option<u64> {
        *self.seq.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Publish the message; returns its sequence number. Raises ``HandleBusy`` (and sends
    /// nothing) if a view of the reserved space is still alive.
    fn commit(&self, py: Python<'_>) -> PyResult<u64> {
        self.open()?;
        let views = self.exports.load(Ordering::Acquire);
        if views > 0 {
            self.end();
            return Err(to_pyerr(
                py,
                Error::Held(format!(
                    "{views} view(s) of the reserved space are still alive (del them before the reservation ends): the message was not sent"
                )),
            ));
        }
        let res = self
            .end()
            .ok_or_else(|| to_pyerr(py, Error::Closed("Reservation")))?;
        let seq = res.commit();
        self.member.q.count_sent(self.member.id);
        *self.seq.lock().unwrap_or_else(|e| e.into_inner()) = Some(seq);
        Ok(seq)
    }
    /// Drop the reservation: nothing is published.
    fn abort(&self) {
        self.end();
    }
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __exit__(
        &self,
        py: Python<'_>,
        t: Option<&Bound<'_, PyAny>>,
        _v: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let ok = t.is_none_or(|t| t.is_none());
        let open = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if ok && open {
            self.commit(py)?;
        } else {
            self.abort();
        }
        Ok(false)
    }
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let me = slf.get();
        me.open()?;
        let (ptr, len) = (me.ptr, &me.len as *const isize);
        let owner = slf.clone().into_any();
        fill_view(view, flags, owner, ptr, len, false)?;
        me.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
    }
    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err("a Reservation cannot be pickled"))
    }
    fn __repr__(&self) -> String {
        let open = self.inner.lock().map(|i| i.is_some()).unwrap_or(false);
        format!(
            "Reservation(<{} bytes>{})",
            self.len,
            if open { "" } else { ", ended" }
        )
    }
}

// ------------------------------------------------------------------------------- Lease

/// A leased message: a read-only zero-copy view of its body in shared memory.
#[pyclass(module = "ringcast", name = "Lease", frozen)]
struct Lease {
    m: Arc<Membership>,
    book: Arc<LeaseBook>,
    group: bool,
    start: u64,
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
    exports: AtomicUsize,
    released: AtomicBool,
    done: AtomicBool,
}

impl Lease {
    /// End the lease: its memory may be reused.
    fn finish(&self) {
        if self.done.swap(true, Ordering::AcqRel) || !self.m.mine() {
            return;
        }
        let q = &self.m.q;
        let (low, none_left) = self.book.remove(self.start);
        let _ = if self.group {
            q.group_ack(self.m.id)
        } else {
            q.set_pin(self.m.id, low)
        };
        if none_left && self.book.leave_when_done.load(Ordering::Acquire) {
            self.m.leave();
        }
    }
    fn live(&self) -> PyResult<()> {
        if self.done.load(Ordering::Acquire) || self.released.load(Ordering::Acquire) {
            return Err(to_pyerr_now(Error::Closed("Lease (it was released)")));
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.finish();
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
    fn body<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.get().live()?;
        // SAFETY: PyMemoryView_FromObject takes a buffer export of this lease.
        unsafe {
            Bound::from_owned_ptr_or_err(slf.py(), ffi::PyMemoryView_FromObject(slf.as_ptr()))
        }
    }
    /// The body as a read-only numpy array, zero-copy (keeps the lease while it lives): an
    /// array message gives its own dtype and shape, otherwise pass ``dtype`` (and ``shape``).
    #[pyo3(signature = (dtype=None, shape=None))]
    fn array<'py>(
        slf: &Bound<'py, Self>,
        dtype: Option<&Bound<'py, PyAny>>,
        shape: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.get().live()?;
        array_helper(slf.py(), "view")?.call1((slf, dtype, shape))
    }
    /// A copy of the body as bytes.
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.live()?;
        // SAFETY: the lease pins the record; len bytes at ptr are mapped.
        let data = unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len as usize) };
        Ok(PyBytes::new(py, data))
    }
    /// Whether the lease was released (by ``release()`` or the end of its ``with`` block).
    #[getter]
    fn released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }
    /// Views of the body still alive (each keeps the lease).
    #[getter]
    fn views(&self) -> usize {
        self.exports.load(Ordering::Acquire)
    }
    /// Give the lease back. New views can no longer be made; views still alive keep the
    /// memory until they are gone.
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) && self.exports.load(Ordering::Acquire) == 0
        {
            self.finish();
        }
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
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let me = slf.get();
        me.live()?;
        let (ptr, len) = (me.ptr, &me.len as *const isize);
        let owner = slf.clone().into_any();
        fill_view(view, flags, owner, ptr, len, true)?;
        me.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        if self.exports.fetch_sub(1, Ordering::AcqRel) == 1 && self.released.load(Ordering::Acquire)
        {
            self.finish();
        }
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

// ------------------------------------------------------------------------------- slot ring

/// A slot ring (the HDF5 layer's read-ahead buffers); internal to ``ringcast.h5``.
#[pyclass(module = "ringcast", name = "_SlotRing", frozen)]
struct PySlotRing {
    ring: Arc<SlotRing>,
    me: Mutex<Option<(MemberId, u64)>>,
    /// The native read path filling this ring, which a waiting consumer helps.
    filler: Mutex<Option<Arc<native::Filler>>>,
}

impl PySlotRing {
    fn member(&self) -> BResult<MemberId> {
        let me = self.me.lock().unwrap_or_else(|e| e.into_inner());
        match *me {
            Some((id, gen)) if gen == proc::fork_generation() => Ok(id),
            Some(_) => Err(Error::Forked("_SlotRing").into()),
            None => Err(Error::Closed("_SlotRing (not joined)").into()),
        }
    }
}

impl Drop for PySlotRing {
    fn drop(&mut self) {
        if let Some((id, gen)) = self.me.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if gen == proc::fork_generation() {
                self.ring.leave(id);
            }
        }
    }
}

#[pymethods]
impl PySlotRing {
    /// Create (``create=True``) or attach to a slot ring; ``tasks=None`` is cyclic.
    #[new]
    #[pyo3(signature = (name, *, create, n_slots=0, slot_bytes=0, tasks=None, max_members=64, mode=0o600))]
    #[allow(clippy::too_many_arguments)] // one per Python keyword argument
    fn new(
        py: Python<'_>,
        name: String,
        create: bool,
        n_slots: u32,
        slot_bytes: u64,
        tasks: Option<u64>,
        max_members: u32,
        mode: u32,
    ) -> PyResult<Self> {
        let ring = py
            .detach(move || {
                if create {
                    SlotRing::create(
                        &name,
                        SlotOptions {
                            n_slots,
                            slot_bytes,
                            tasks,
                            max_members,
                            mode,
                        },
                    )
                } else {
                    SlotRing::attach(&name)
                }
            })
            .map_err(to_pyerr_now)?;
        Ok(PySlotRing {
            ring,
            me: Mutex::new(None),
            filler: Mutex::new(None),
        })
    }
    /// Register this process as a worker (``"worker"``) or consumer (``"consumer"``).
    fn join(&self, py: Python<'_>, role: &str) -> PyResult<()> {
        let kind = match role {
            "worker" => KIND_WORKER,
            "consumer" => KIND_CONSUMER,
            _ => {
                return Err(to_pyerr(
                    py,
                    Error::InvalidArgument(format!(
                        "role must be worker or consumer, not {role:?}"
                    )),
                ))
            }
        };
        let id = self
            .ring
            .join(kind, role.as_bytes())
            .map_err(|e| to_pyerr(py, e))?;
        *self.me.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, proc::fork_generation()));
        Ok(())
    }
    #[getter]
    fn name(&self) -> &str {
        self.ring.name()
    }
    #[getter]
    fn n_slots(&self) -> u32 {
        self.ring.n_slots()
    }
    #[getter]
    fn slot_bytes(&self) -> u64 {
        self.ring.slot_bytes()
    }
    /// Worker: a free slot and the next task, as ``(slot, task, writable memoryview)``;
    /// ``None`` when every task is handed out. ``Timeout`` after ``timeout`` s,
    /// ``QueueShutDown`` once stopped (or the ring's creator died).
    #[pyo3(signature = (timeout=None))]
    fn claim<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<(u32, u64, Bound<'py, PyAny>)>> {
        let id = self.member()?;
        let d = deadline(timeout)?;
        let ring = Arc::clone(&self.ring);
        let spec = WaitSpec {
            deadline: d,
            spin: Duration::from_micros(20),
        };
        match blocking(py, move |chk| ring.claim(id, spec, chk))? {
            Claim::Slot(slot, task) => {
                let p = self.ring.slot_ptr(slot).map_err(|e| to_pyerr(py, e))?;
                let n = self.ring.slot_bytes() as ffi::Py_ssize_t;
                // SAFETY: the claimed slot is this worker's until it publishes it.
                let mv = unsafe {
                    Bound::from_owned_ptr_or_err(
                        py,
                        ffi::PyMemoryView_FromMemory(
                            p as *mut std::os::raw::c_char,
                            n,
                            ffi::PyBUF_WRITE,
                        ),
                    )
                }?;
                Ok(Some((slot, task, mv)))
            }
            Claim::NoMoreTasks => Ok(None),
            Claim::TimedOut => Err(to_pyerr(
                py,
                Error::Timeout(
                    Duration::from_secs_f64(timeout.unwrap_or(0.0).max(0.0)),
                    "a free slot",
                ),
            )),
        }
    }
    /// Worker: publish a claimed slot holding ``nbytes`` (an error record if ``error``).
    #[pyo3(signature = (slot, nbytes, error=false))]
    fn publish(&self, py: Python<'_>, slot: u32, nbytes: u64, error: bool) -> PyResult<()> {
        self.ring
            .publish(slot, nbytes, error)
            .map_err(|e| to_pyerr(py, e))
    }
    /// Consumer: the next ready block (task ``want`` only, if given), or ``None`` at the end.
    /// ``Timeout`` after ``timeout`` s; ``WorkerDied`` if a worker died.
    #[pyo3(signature = (want=None, timeout=None))]
    fn take(
        slf: &Bound<'_, Self>,
        want: Option<u64>,
        timeout: Option<f64>,
    ) -> PyResult<Option<SlotBlock>> {
        let py = slf.py();
        let d = deadline(timeout)?;
        let ring = Arc::clone(&slf.get().ring);
        let spec = WaitSpec {
            deadline: d,
            spin: Duration::from_micros(20),
        };
        // With the native path, a consumer with nothing ready reads a block itself.
        let filler = slf
            .get()
            .filler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let helper = match filler {
            Some(f) => Some((f, slf.get().member()?)),
            None => None,
        };
        let got = blocking(py, move |chk| match helper {
            Some((f, id)) => ring.take_helping(want, spec, chk, &mut || f.help(id)),
            None => ring.take(want, spec, chk),
        })?;
        match got {
            TakeResult::Block(t) => {
                let p = slf
                    .get()
                    .ring
                    .slot_ptr(t.slot)
                    .map_err(|e| to_pyerr(py, e))?;
                Ok(Some(SlotBlock {
                    ring: Arc::clone(&slf.get().ring),
                    slot: t.slot,
                    task: t.task,
                    error: t.error,
                    ptr: p as usize,
                    len: t.len as isize,
                    exports: AtomicUsize::new(0),
                    released: AtomicBool::new(false),
                    done: AtomicBool::new(false),
                    fork_gen: proc::fork_generation(),
                }))
            }
            TakeResult::End => Ok(None),
            TakeResult::TimedOut => Err(to_pyerr(
                py,
                Error::Timeout(
                    Duration::from_secs_f64(timeout.unwrap_or(0.0).max(0.0)),
                    "a block",
                ),
            )),
        }
    }
    /// Stop: workers end, consumers get what is ready, then the end.
    fn stop(&self) {
        self.ring.stop();
    }
    /// Stop, and wait up to ``timeout`` s for the reading threads (native path) or the
    /// worker processes to leave. Returns whether they did (then ``recycle`` may reuse the
    /// ring).
    fn retire(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let d = Duration::try_from_secs_f64(timeout).map_err(|_| {
            to_pyerr(
                py,
                Error::InvalidArgument(format!("timeout must be >= 0, got {timeout}")),
            )
        })?;
        let me = self.member()?;
        self.ring.stop();
        let deadline = std::time::Instant::now() + d;
        let ring = Arc::clone(&self.ring);
        // Reading threads and worker processes are members until they are done with the
        // ring, so "no other member" covers both.
        let left = blocking(py, move |chk| {
            let mut slice = std::time::Instant::now();
            loop {
                if ring.others(me) == 0 {
                    return Ok(true);
                }
                if std::time::Instant::now() >= deadline {
                    return Ok(false);
                }
                if slice.elapsed() >= ringcast_core::wait::SLICE {
                    slice = std::time::Instant::now();
                    chk()?;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })?;
        if left {
            *self.filler.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        Ok(left)
    }
    /// Make a retired ring new for ``tasks`` more tasks (``None``: cyclic). ``HandleBusy``
    /// if a view of an earlier block is still alive or a worker is still attached.
    #[pyo3(signature = (tasks))]
    fn recycle(&self, py: Python<'_>, tasks: Option<u64>) -> PyResult<()> {
        let id = self.member()?;
        if self
            .filler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Err(to_pyerr(
                py,
                Error::Held("the ring's reading threads are still running".into()),
            ));
        }
        self.ring.recycle(id, tasks).map_err(|e| to_pyerr(py, e))
    }
    /// State of each slot: 0 free, 1 filling, 2 ready, 3 leased.
    fn states(&self) -> Vec<u32> {
        self.ring.slot_states()
    }
    /// Tasks handed to workers so far.
    #[getter]
    fn tasks_started(&self) -> u64 {
        self.ring.tasks_started()
    }
    /// Leave (the last member out removes the segment).
    fn close(&self, py: Python<'_>) {
        let me = self.me.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((id, gen)) = me {
            if gen == proc::fork_generation() {
                let ring = Arc::clone(&self.ring);
                py.detach(move || ring.leave(id));
            }
        }
    }
}

/// A block taken from a slot ring: a read-only view of its slot, which is reused only
/// once the block is released and its last view is gone.
#[pyclass(module = "ringcast", name = "_SlotBlock", frozen)]
struct SlotBlock {
    ring: Arc<SlotRing>,
    slot: u32,
    /// The task number of the block.
    #[pyo3(get)]
    task: u64,
    /// Whether the block is a worker's error record.
    #[pyo3(get)]
    error: bool,
    ptr: usize,
    len: isize,
    exports: AtomicUsize,
    released: AtomicBool,
    done: AtomicBool,
    fork_gen: u64,
}

impl SlotBlock {
    fn finish(&self) {
        if !self.done.swap(true, Ordering::AcqRel) && self.fork_gen == proc::fork_generation() {
            let _ = self.ring.release(self.slot);
        }
    }
}

impl Drop for SlotBlock {
    fn drop(&mut self) {
        self.finish();
    }
}

#[pymethods]
impl SlotBlock {
    fn __len__(&self) -> usize {
        self.len as usize
    }
    /// Give the slot back; views still alive keep it until they are gone.
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            if self.exports.load(Ordering::Acquire) == 0 {
                self.finish();
            } else if self.fork_gen == proc::fork_generation() {
                let _ = self.ring.retain(self.slot);
            }
        }
    }
    /// Whether ``release()`` was called.
    #[getter]
    fn released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }
    /// Views alive.
    #[getter]
    fn views(&self) -> usize {
        self.exports.load(Ordering::Acquire)
    }
    /// A copy of the bytes.
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        if self.done.load(Ordering::Acquire) {
            return Err(to_pyerr(py, Error::Closed("block (it was released)")));
        }
        // SAFETY: the slot is leased to this block; len bytes are mapped.
        let data = unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len as usize) };
        Ok(PyBytes::new(py, data))
    }
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let me = slf.get();
        if me.released.load(Ordering::Acquire) || me.done.load(Ordering::Acquire) {
            return Err(to_pyerr_now(Error::Closed("block (it was released)")));
        }
        let (ptr, len) = (me.ptr, &me.len as *const isize);
        let owner = slf.clone().into_any();
        fill_view(view, flags, owner, ptr, len, true)?;
        me.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        if self.exports.fetch_sub(1, Ordering::AcqRel) == 1 && self.released.load(Ordering::Acquire)
        {
            self.finish();
        }
    }
}

/// How an extent of the native read path is stored (``ringcast_h5::Codec``, whose values it
/// takes): raw bytes, deflate, the HDF5 LZ4 filter, or bitshuffle with LZ4.
#[pyclass(
    module = "ringcast",
    name = "_Codec",
    eq,
    eq_int,
    frozen,
    from_py_object
)]
#[derive(Clone, Copy, PartialEq)]
enum PyCodec {
    #[pyo3(name = "RAW")]
    Raw = native::Codec::Raw as isize,
    #[pyo3(name = "DEFLATE")]
    Deflate = native::Codec::Deflate as isize,
    #[pyo3(name = "LZ4")]
    Lz4 = native::Codec::Lz4 as isize,
    #[pyo3(name = "BITSHUFFLE_LZ4")]
    BitshuffleLz4 = native::Codec::BitshuffleLz4 as isize,
}

impl From<PyCodec> for native::Codec {
    fn from(c: PyCodec) -> Self {
        match c {
            PyCodec::Raw => native::Codec::Raw,
            PyCodec::Deflate => native::Codec::Deflate,
            PyCodec::Lz4 => native::Codec::Lz4,
            PyCodec::BitshuffleLz4 => native::Codec::BitshuffleLz4,
        }
    }
}

/// Start ``threads`` native reading threads filling ``ring`` from ``path``: ``extents`` is a
/// list of ``(row0, rows, stored_rows, offset, size, codec, elem)``; ``codec`` is a
/// ``_Codec``; ``elem`` is the element size of a byte shuffle to undo after deflate or LZ4
/// (0: none), or bitshuffle's element size.
#[pyfunction]
#[pyo3(signature = (ring, path, row_bytes, n_rows, block_rows, cyclic, extents, threads))]
#[allow(clippy::too_many_arguments)] // one per Python argument
fn _native_start(
    py: Python<'_>,
    ring: &Bound<'_, PySlotRing>,
    path: String,
    row_bytes: u64,
    n_rows: u64,
    block_rows: u64,
    cyclic: bool,
    extents: Vec<(u64, u64, u64, u64, u64, PyCodec, usize)>,
    threads: usize,
) -> PyResult<()> {
    let ext = extents
        .into_iter()
        .map(
            |(row0, rows, stored_rows, offset, size, codec, elem)| native::Extent {
                row0,
                rows,
                stored_rows,
                offset,
                size,
                codec: codec.into(),
                elem,
            },
        )
        .collect();
    let r = Arc::clone(&ring.get().ring);
    let filler = py.detach(move || -> native::Result<_> {
        let plan = native::Plan::new(&path, row_bytes, n_rows, block_rows, cyclic, ext)?;
        Ok(native::Filler::start(r, plan, threads)?)
    });
    let filler = filler.map_err(BindError::from)?;
    let mut slot = ring.get().filler.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_some() {
        drop(slot);
        return Err(to_pyerr(
            py,
            Error::InvalidArgument("this ring is already filled by the native path".into()),
        ));
    }
    *slot = Some(filler);
    Ok(())
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
    m.add_class::<Lease>()?;
    m.add_class::<PyReservation>()?;
    m.add_class::<PySlotRing>()?;
    m.add_class::<SlotBlock>()?;
    m.add_function(wrap_pyfunction!(_attach_queue, m)?)?;
    m.add_function(wrap_pyfunction!(_message, m)?)?;
    m.add_function(wrap_pyfunction!(_open_queue, m)?)?;
    m.add_function(wrap_pyfunction!(segments, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(gc, m)?)?;
    m.add_function(wrap_pyfunction!(unlink, m)?)?;
    m.add_function(wrap_pyfunction!(record_size, m)?)?;
    m.add_function(wrap_pyfunction!(_close_all, m)?)?;
    m.add_function(wrap_pyfunction!(_native_start, m)?)?;
    m.add_class::<PyCodec>()?;
    m.add("RECORD_HEADER_BYTES", ringcast_core::queue::RECORD_HEADER)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
