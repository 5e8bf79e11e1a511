//! `Reader`: receive from a BroadcastQueue (a copy, bytes, an array, or a zero-copy lease),
//! with screens, consumer groups, lossy reading and asyncio support.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyTypeError, PyUnicodeDecodeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use ringcast_core::handle::ReaderHandle;
use ringcast_core::{Deadline, Error, Filter, MemberId, Queue, WaitSpec};

use crate::convert::{array_helper, byte_set, deadline, readonly_memoryview, Spin};
use crate::error::{empty, BResult, BindError};
use crate::gil::{blocking, leave};
use crate::lease::Lease;
use crate::message::Message;

/// How a receive ended (shutdown is an outcome here, an exception only where the API says so).
enum Recv<R> {
    Got(R),
    TimedOut,
    ShutDown,
}

impl<R> Recv<R> {
    /// ``Empty`` on timeout, ``QueueShutDown`` on shutdown.
    fn or_raise(self, q: &Queue, timeout: Option<f64>) -> BResult<R> {
        match self {
            Recv::Got(r) => Ok(r),
            Recv::TimedOut => Err(empty(timeout)),
            Recv::ShutDown => Err(Error::ShutDown(q.name().to_owned()).into()),
        }
    }
}

/// A reader of a BroadcastQueue: its own cursor, holding back writers until it has read.
#[pyclass(module = "ringcast", name = "Reader", frozen)]
pub(crate) struct PyReader {
    h: ReaderHandle,
    filter: Mutex<Arc<Filter>>,
    spin: Spin,
    lossy: bool,
    group: Option<String>,
    /// Messages missed (lossy) reported on messages so far.
    missed: AtomicU64,
}

type Build<'a, 'py, R> =
    dyn FnMut(Python<'py>, &ringcast_core::RecordRef<'_>, u64) -> PyResult<R> + 'a;

impl PyReader {
    /// A reader owning `h`, screening with `filter`.
    pub(crate) fn new(
        h: ReaderHandle,
        filter: Filter,
        spin_ns: u64,
        lossy: bool,
        group: Option<String>,
    ) -> Self {
        PyReader {
            h,
            filter: Mutex::new(Arc::new(filter)),
            spin: Spin::from_ns(spin_ns),
            lossy,
            group,
            missed: AtomicU64::new(0),
        }
    }
    fn q(&self) -> &Arc<Queue> {
        self.h.member().queue()
    }
    fn id(&self) -> MemberId {
        self.h.member().id()
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
    ) -> BResult<Option<R>> {
        let q = self.q();
        let id = self.id();
        if self.group.is_some() {
            self.h.check_group_recv()?;
            return match q.group_next(id)? {
                Some(rec) => Ok(Some(build(py, &rec, 0)?)),
                None => Ok(None),
            };
        }
        loop {
            let Some(rec) = q.next_for(id, filter)? else {
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
            q.consume(id, rec.end, rec.seq)?;
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
    ) -> BResult<Recv<R>> {
        let _busy = self.h.begin()?;
        let d = deadline(timeout)?;
        let filter = self.current_filter();
        let q = self.q();
        loop {
            if let Some(out) = self.take_one(py, &filter, build)? {
                return Ok(Recv::Got(out));
            }
            if q.is_shutdown() {
                if self.group.is_none() {
                    return Ok(Recv::ShutDown);
                }
                match q.group_wait(
                    self.id(),
                    WaitSpec::nowait(),
                    &mut ringcast_core::wait::no_check,
                ) {
                    Ok(true) => continue,
                    Ok(false) | Err(Error::ShutDown(_)) => return Ok(Recv::ShutDown),
                    Err(e) => return Err(e.into()),
                }
            }
            if d.expired() {
                return Ok(Recv::TimedOut);
            }
            match self.wait(py, &filter, d) {
                Ok(true) => {}
                Ok(false) => return Ok(Recv::TimedOut),
                Err(BindError::Core(Error::ShutDown(_))) => return Ok(Recv::ShutDown),
                Err(e) => return Err(e),
            }
        }
    }

    /// Wait (GIL released) until something may be readable, or the deadline.
    fn wait(&self, py: Python<'_>, filter: &Filter, d: Deadline) -> BResult<bool> {
        let spec = self.spin.wait_spec(d);
        let q = self.q();
        let id = self.id();
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
        let ticket = self.h.lease(r.start)?;
        Ok(Lease::new(ticket, r, missed))
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
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> BResult<Message> {
        self.recv_with(py, timeout, &mut Self::message)?
            .or_raise(self.q(), timeout)
    }

    /// ``recv(timeout=0)``.
    fn recv_nowait(&self, py: Python<'_>) -> BResult<Message> {
        self.recv(py, Some(0.0))
    }

    /// Like ``recv`` but return only the body, as bytes.
    #[pyo3(signature = (timeout=None))]
    fn recv_bytes<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> BResult<Bound<'py, PyBytes>> {
        self.recv_with(py, timeout, &mut |py, r, _| Ok(PyBytes::new(py, r.body)))?
            .or_raise(self.q(), timeout)
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
    ) -> BResult<Bound<'py, PyAny>> {
        let copy = array_helper(py, "copy")?;
        self.recv_with(py, timeout, &mut |py, r, _| {
            // SAFETY: a read-only memoryview of the record, alive only during this call
            // (released below): the helper copies out of it.
            let mv = unsafe { readonly_memoryview(py, r.body) }?;
            let out = copy.call1((&mv, dtype, shape));
            mv.call_method0("release")?;
            out
        })?
        .or_raise(self.q(), timeout)
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
    fn lease(&self, py: Python<'_>, timeout: Option<f64>) -> BResult<Lease> {
        if self.lossy {
            return Err(Error::InvalidArgument(
                "a lossy reader cannot lease: writers may overwrite what it reads; use recv() (a copy)"
                    .into(),
            )
            .into());
        }
        self.recv_with(py, timeout, &mut |_, r, missed| {
            self.make_lease(r, missed).map_err(PyErr::from)
        })?
        .or_raise(self.q(), timeout)
    }

    /// Up to ``max_messages`` messages: waits up to ``timeout`` for the first, then takes
    /// what is already there. Returns a possibly empty list.
    #[pyo3(signature = (max_messages=1024, timeout=0.0))]
    fn recv_many<'py>(
        &self,
        py: Python<'py>,
        max_messages: usize,
        timeout: Option<f64>,
    ) -> BResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let mut t = timeout;
        while out.len() < max_messages {
            match self.recv_with(py, t, &mut Self::message)? {
                Recv::Got(m) => out.append(m)?,
                Recv::TimedOut => break,
                Recv::ShutDown if !out.is_empty() => break,
                r @ Recv::ShutDown => {
                    r.or_raise(self.q(), t)?;
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
    ) -> BResult<Option<Bound<'py, PyTuple>>> {
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
            r @ Recv::ShutDown => r.or_raise(self.q(), timeout).map(Some),
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
    fn _wait(&self, py: Python<'_>, timeout: Option<f64>) -> BResult<bool> {
        self.h.check()?;
        let filter = self.current_filter();
        let d = deadline(timeout)?;
        self.wait(py, &filter, d)
    }

    /// For a consumer-group reader: finish the message received last, so a crash from now
    /// on does not redeliver it (the next receive does this too).
    fn ack(&self) -> BResult<()> {
        self.h.check()?;
        if self.group.is_none() {
            return Ok(());
        }
        self.h.check_ack()?;
        Ok(self.q().group_ack(self.id())?)
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
    fn position(&self) -> BResult<(u64, u64)> {
        Ok(self.q().position(self.id())?)
    }

    /// Messages sent but not yet read by this reader (its group, for a group reader).
    #[getter]
    fn lag(&self) -> BResult<u64> {
        if self.group.is_some() {
            return Ok(self.q().group_lag(self.id())?);
        }
        let (_, seq) = self.position()?;
        Ok(self.q().write_seq().saturating_sub(seq))
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
        self.q().missed_total(self.id())
    }

    /// Leases handed out and not yet ended.
    #[getter]
    fn leases_held(&self) -> usize {
        self.h.leases()
    }

    /// Spin window (microseconds) before a blocking receive sleeps; 0 sleeps at once.
    #[getter]
    fn get_spin_us(&self) -> f64 {
        self.spin.us()
    }
    #[setter]
    fn set_spin_us(&self, v: f64) -> BResult<()> {
        self.spin.set_us(v)
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.h.closed()
    }

    /// Leave: this reader no longer holds back writers. With leases still held, it leaves
    /// when the last one ends (their memory stays valid until then). A signal's exception
    /// (Ctrl-C) while it waits for the writer lock to leave is raised; the reader is closed
    /// all the same.
    fn close(&self, py: Python<'_>) -> BResult<()> {
        leave(py, self.h.close())
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
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    /// Iteration blocks for the next message and stops when the queue is shut down.
    fn __next__(&self, py: Python<'_>) -> BResult<Option<Message>> {
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
            self.q().name(),
            self.id().slot,
        )
    }
}
