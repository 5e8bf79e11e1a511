//! `BroadcastQueue`: create or attach a queue, send (copied, as an array, or reserved and
//! filled in place), make readers, stats; and the module functions that unpickling and the
//! pysyncq layer call (`_attach_queue`, `_open_queue`).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use ringcast_core::handle::{Membership, QueueMember, ReaderHandle, Reserved, ReservingThread};
use ringcast_core::queue::{KIND_GROUP, KIND_GROUP_MEMBER, KIND_HANDLE, KIND_READER};
use ringcast_core::segment::Access;
use ringcast_core::{proc, Deadline, Error, Filter, Queue, QueueOptions};

use crate::convert::{
    access, array_helper, borrow_opt_text_or_bytes, byte_set, deadline, opt_text_or_bytes, Buf,
    SendSlice, Spin,
};
use crate::error::{timed_out, BResult};
use crate::gil::{blocking, leave};
use crate::reader::PyReader;
use crate::reservation::PyReservation;

/// A shared-memory broadcast queue: every reader gets every message.
#[pyclass(module = "ringcast", name = "BroadcastQueue", frozen, weakref)]
pub(crate) struct PyQueue {
    q: Arc<Queue>,
    member: QueueMember,
    /// The sender given by the user; without one, each process sends as its pid.
    explicit_sender: Option<Vec<u8>>,
    spin: Spin,
    /// The thread holding a reservation on this queue, if any.
    reserving: Arc<ReservingThread>,
    /// What attaching accepted (kept so that a pickled copy attaches the same way).
    access: Access,
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
    /// This process's membership (joined on first use in a forked child, waiting for the
    /// writer lock without the GIL and interruptible by signals), or an error if the handle
    /// is closed.
    fn alive(&self, py: Python<'_>) -> BResult<Arc<Membership>> {
        const WHAT: &str = "BroadcastQueue";
        if let Some(m) = self.member.ready(WHAT)? {
            return Ok(m);
        }
        let name = self.default_sender();
        let (member, q) = (&self.member, &self.q);
        blocking(py, move |chk| {
            member.alive_checked(q, KIND_HANDLE, || name, WHAT, chk)
        })
    }

    /// This process's membership, for a sender: refused while this thread holds a
    /// reservation on the queue (it would wait for itself).
    fn writer(&self, py: Python<'_>) -> BResult<Arc<Membership>> {
        let m = self.alive(py)?;
        self.reserving.check()?;
        Ok(m)
    }

    /// Send one message made of `parts` as `sender` with type `typ`, waiting (GIL released)
    /// for room until `d`.
    fn send_parts<const N: usize>(
        &self,
        py: Python<'_>,
        m: &Membership,
        sender: &[u8],
        typ: &[u8],
        parts: [&[u8]; N],
        d: Deadline,
    ) -> BResult<u64> {
        let (s, t, p) = (
            SendSlice::of(sender),
            SendSlice::of(typ),
            parts.map(SendSlice::of),
        );
        let q = Arc::clone(&self.q);
        let spec = self.spin.wait_spec(d);
        // SAFETY: sender, typ and every part are borrowed by this frame for the whole call.
        let seq = blocking(py, move |chk| unsafe {
            q.send(s.get(), t.get(), &p.map(|b| b.get()), spec, chk)
        })?;
        self.q.count_sent(m.id());
        Ok(seq)
    }

    fn reserve_inner(
        &self,
        py: Python<'_>,
        nbytes: usize,
        r#type: Option<&Bound<'_, PyAny>>,
        timeout: Option<f64>,
        array: Option<(Vec<u8>, Py<PyAny>, Py<PyAny>)>,
    ) -> BResult<PyReservation> {
        let m = self.writer(py)?;
        let typ = opt_text_or_bytes(r#type, "type")?.unwrap_or_default();
        let head_len = array.as_ref().map_or(0, |a| a.0.len());
        let total = nbytes
            .checked_add(head_len)
            .ok_or_else(|| Error::InvalidArgument(format!("{nbytes} bytes is too large")))?;
        let q = Arc::clone(&self.q);
        let spec = self.spin.wait_spec(deadline(timeout)?);
        let sender = m.name().to_vec();
        let res = blocking(py, move |chk| q.reserve(&sender, &typ, total, spec, chk))?;
        let (head, dtype, shape) = match array {
            Some((head, dt, shp)) => (head, Some(dt), Some(shp)),
            None => (Vec::new(), None, None),
        };
        let inner = Reserved::new(res, &head, Arc::clone(&self.reserving), m);
        Ok(PyReservation::new(inner, dtype, shape))
    }

    fn default_sender(&self) -> Vec<u8> {
        self.explicit_sender
            .clone()
            .unwrap_or_else(|| proc::current().pid.to_string().into_bytes())
    }
    fn build(
        py: Python<'_>,
        name: Option<String>,
        create: Option<bool>,
        opts: QueueOptions,
        access: Access,
        sender: Option<&Bound<'_, PyAny>>,
        spin_us: f64,
    ) -> BResult<PyQueue> {
        let spin = Spin::from_us(spin_us)?;
        let explicit_sender = opt_text_or_bytes(sender, "sender")?;
        if name.is_none() && create == Some(false) {
            return Err(
                Error::InvalidArgument("a name is needed to attach (create=False)".into()).into(),
            );
        }
        let sender = explicit_sender
            .clone()
            .unwrap_or_else(|| proc::current().pid.to_string().into_bytes());
        // Opening may wait (a segment still being initialised, the writer lock to join):
        // never with the GIL held, and a signal ends the wait for the lock.
        let policy = access.clone();
        let (q, member) = blocking(py, move |chk| {
            let q = match (name, create) {
                (Some(n), Some(true)) => Queue::create(&n, opts),
                (Some(n), Some(false)) => Queue::attach_with(&n, &policy),
                (Some(n), None) => Queue::open_with(&n, opts, &policy),
                (None, _) => Queue::create(&random_name(), opts),
            }?;
            let member = Membership::join_checked(&q, KIND_HANDLE, &sender, chk)?;
            Ok((q, member))
        })?;
        Ok(PyQueue {
            q,
            member: QueueMember::new(member),
            explicit_sender,
            spin,
            reserving: Arc::new(ReservingThread::new()),
            access,
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
    /// of the ring (see ``record_size`` for the cost of one message). ``mode`` is the
    /// segment's exact mode when creating; attaching accepts an object that the group or
    /// other users may write only if ``mode`` grants the same. ``allow_users`` (uids or
    /// user names) are owners accepted besides this user and root.
    #[new]
    #[pyo3(signature = (name=None, *, create=None, capacity=1048576, max_members=64, sender=None, mode=0o600, spin_us=20.0, allow_users=None))]
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
        allow_users: Option<&Bound<'_, PyAny>>,
    ) -> BResult<Self> {
        let opts = QueueOptions {
            capacity,
            max_members,
            align: 8,
            mode,
        };
        opts.check_capacity()?;
        let access = access(mode, allow_users)?;
        PyQueue::build(py, name, create, opts, access, sender, spin_us)
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
        let name = match self.member.current() {
            Some(m) => m.name().to_vec(),
            None => self.default_sender(),
        };
        String::from_utf8_lossy(&name).into_owned()
    }
    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.member.closed()
    }
    /// Free bytes right now.
    #[getter]
    fn free_bytes(&self, py: Python<'_>) -> BResult<u64> {
        self.alive(py)?;
        Ok(self.q.free_bytes())
    }
    /// Spin window (microseconds) before a blocking call sleeps.
    #[getter]
    fn get_spin_us(&self) -> f64 {
        self.spin.us()
    }
    #[setter]
    fn set_spin_us(&self, v: f64) -> BResult<()> {
        self.spin.set_us(v)
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
    ) -> BResult<u64> {
        let m = self.writer(py)?;
        let typ = borrow_opt_text_or_bytes(r#type, "type")?.unwrap_or_default();
        let sender = borrow_opt_text_or_bytes(sender, "sender")?.unwrap_or(m.name());
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
                    self.q.count_sent(m.id());
                    return Ok(seq);
                }
                Err(Error::Full { .. } | Error::Busy(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.send_parts(py, &m, sender, typ, [body], d)
    }

    /// ``send(data, type, timeout=0)``: raise ``Full`` at once if there is no room.
    #[pyo3(signature = (data, r#type=None))]
    fn send_nowait(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        r#type: Option<&Bound<'_, PyAny>>,
    ) -> BResult<u64> {
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
    ) -> BResult<PyReader> {
        let me = self.alive(py)?;
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
                return Err(Error::InvalidArgument(
                    "a consumer-group reader takes every message of its group: it cannot screen senders or types, nor be lossy".into(),
                )
                .into());
            }
        }
        let name = opt_text_or_bytes(name, "name")?.unwrap_or_else(|| me.name().to_vec());
        let q = Arc::clone(&self.q);
        let gname = group.clone();
        let m = blocking(py, move |chk| match gname {
            Some(g) => {
                Membership::join_as(&q, &name, |q, n| q.join_group_checked(n, g.as_bytes(), chk))
            }
            None => Membership::join_as(&q, &name, |q, n| q.join_reader_checked(n, lossy, chk)),
        })?;
        let handle = ReaderHandle::new(m, group.is_some());
        Ok(PyReader::new(handle, filter, self.spin.ns(), lossy, group))
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
    ) -> BResult<u64> {
        let m = self.writer(py)?;
        let enc = array_helper(py, "encode")?.call1((array, meta))?;
        let (head, data): (Bound<'_, PyBytes>, Bound<'_, PyAny>) = enc.extract()?;
        let typ = borrow_opt_text_or_bytes(r#type, "type")?.unwrap_or_default();
        let buf = Buf::get(&data)?;
        let parts = [head.as_bytes(), buf.as_slice()];
        self.send_parts(py, &m, m.name(), typ, parts, deadline(timeout)?)
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
    ) -> BResult<PyReservation> {
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
    ) -> BResult<PyReservation> {
        let spec = array_helper(py, "header_for")?.call1((shape, dtype))?;
        let (head, nbytes, dt, shp): (Vec<u8>, usize, Py<PyAny>, Py<PyAny>) = spec.extract()?;
        self.reserve_inner(py, nbytes, r#type, timeout, Some((head, dt, shp)))
    }

    /// Block until at least ``n`` live readers have joined (``Timeout`` after ``timeout`` s).
    #[pyo3(signature = (n, timeout=None))]
    fn wait_for_readers(&self, py: Python<'_>, n: u32, timeout: Option<f64>) -> BResult<()> {
        self.alive(py)?;
        let q = Arc::clone(&self.q);
        let spec = self.spin.wait_spec(deadline(timeout)?);
        if blocking(py, move |chk| q.wait_for_readers(n, spec, chk))? {
            Ok(())
        } else {
            Err(timed_out(timeout, "readers to join"))
        }
    }

    /// Shut the queue down: sends fail from now on, and readers raise ``QueueShutDown``
    /// (iteration stops) once they have read every message.
    fn shutdown(&self, py: Python<'_>) -> BResult<()> {
        self.alive(py)?;
        self.q.shutdown();
        Ok(())
    }

    /// A lock-free snapshot: write sequence, used bytes, each member's cursor and lag, dead
    /// and live members, lock recoveries, full events and time writers spent blocked.
    fn stats<'py>(&self, py: Python<'py>) -> BResult<Bound<'py, PyDict>> {
        self.alive(py)?;
        Ok(stats_dict(py, &self.q)?)
    }

    /// Leave the queue. The segment is removed when its last member leaves. Waiting for the
    /// writer lock to leave, a signal's exception (Ctrl-C) is raised; the handle is closed
    /// all the same.
    fn close(&self, py: Python<'_>) -> BResult<()> {
        leave(py, self.member.close())
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
    ) -> BResult<bool> {
        self.close(py)?;
        Ok(false)
    }
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let f = py.import("ringcast._ringcast")?.getattr("_attach_queue")?;
        let sender = self.explicit_sender.as_ref().map(|s| PyBytes::new(py, s));
        let args = (
            self.q.name().to_owned(),
            sender,
            self.get_spin_us(),
            0o600 | self.access.shared_write(),
            self.access.allowed_users().to_vec(),
        );
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

/// Attach to a queue by name (what unpickling a BroadcastQueue does), accepting what the
/// pickled handle accepted (`mode`, `allow_users`).
#[pyfunction]
#[pyo3(signature = (name, sender=None, spin_us=20.0, mode=0o600, allow_users=None))]
pub(crate) fn _attach_queue(
    py: Python<'_>,
    name: String,
    sender: Option<&Bound<'_, PyAny>>,
    spin_us: f64,
    mode: u32,
    allow_users: Option<&Bound<'_, PyAny>>,
) -> BResult<PyQueue> {
    let access = access(mode, allow_users)?;
    PyQueue::build(
        py,
        Some(name),
        Some(false),
        QueueOptions::default(),
        access,
        sender,
        spin_us,
    )
}

/// Create or attach a queue with an explicit record alignment (used by the pysyncq layer,
/// which needs byte-exact accounting: ``align=1``). Private: mode 0o600, this user's
/// objects only, as pysyncq's ``SharedMemory`` segments are.
#[pyfunction]
#[pyo3(signature = (name, create, capacity, align, sender=None, max_members=512))]
pub(crate) fn _open_queue(
    py: Python<'_>,
    name: Option<String>,
    create: Option<bool>,
    capacity: u64,
    align: u32,
    sender: Option<&Bound<'_, PyAny>>,
    max_members: u32,
) -> BResult<PyQueue> {
    let opts = QueueOptions {
        capacity,
        max_members,
        align,
        mode: 0o600,
    };
    PyQueue::build(py, name, create, opts, Access::private(), sender, 20.0)
}

/// The `stats()` dict of a queue.
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
