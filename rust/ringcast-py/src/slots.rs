//! `_SlotRing` and `_SlotBlock`: the slot ring of the HDF5 layer's read-ahead buffers,
//! internal to ``ringcast.h5``. Membership and block lifetimes are the core's
//! [`SlotRingMember`] and [`BlockTicket`].

use std::os::raw::c_int;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use ringcast_core::handle::{BlockTicket, SlotRingMember, Views};
use ringcast_core::slots::{Claim, SlotOptions, SlotRing, TakeResult, KIND_CONSUMER, KIND_WORKER};
use ringcast_core::{Error, WaitSpec};

use crate::buffer::{get_buffer, release_buffer, Export};
use crate::convert::deadline;
use crate::error::{timed_out, BResult};
use crate::gil::{blocking, enter};
use crate::native_h5::Filler;

/// A slot ring (the HDF5 layer's read-ahead buffers); internal to ``ringcast.h5``.
#[pyclass(module = "ringcast", name = "_SlotRing", frozen)]
pub(crate) struct PySlotRing {
    h: SlotRingMember,
    /// The native read path filling this ring, which a waiting consumer helps.
    filler: Mutex<Option<Arc<Filler>>>,
}

/// How long a worker or consumer of a slot ring spins before it sleeps.
const SPIN: Duration = Duration::from_micros(20);

/// A wait of up to `timeout` seconds (`None`: no end), spinning [`SPIN`] first.
fn wait_spec(timeout: Option<f64>) -> BResult<WaitSpec> {
    Ok(WaitSpec {
        deadline: deadline(timeout)?,
        spin: SPIN,
    })
}

impl PySlotRing {
    /// The ring.
    pub(crate) fn ring(&self) -> &Arc<SlotRing> {
        self.h.ring()
    }
    /// Attach the native read path filling this ring (once).
    pub(crate) fn set_filler(&self, filler: Arc<Filler>) -> BResult<()> {
        let mut slot = self.filler.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Err(Error::InvalidArgument(
                "this ring is already filled by the native path".into(),
            )
            .into());
        }
        *slot = Some(filler);
        Ok(())
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
    ) -> BResult<Self> {
        let ring = enter(py, move || {
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
        })?;
        Ok(PySlotRing {
            h: SlotRingMember::new(ring),
            filler: Mutex::new(None),
        })
    }
    /// Register this process as a worker (``"worker"``) or consumer (``"consumer"``).
    fn join(&self, role: &str) -> BResult<()> {
        let kind = match role {
            "worker" => KIND_WORKER,
            "consumer" => KIND_CONSUMER,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "role must be worker or consumer, not {role:?}"
                ))
                .into())
            }
        };
        Ok(self.h.join(kind, role.as_bytes())?)
    }
    #[getter]
    fn name(&self) -> &str {
        self.ring().name()
    }
    #[getter]
    fn n_slots(&self) -> u32 {
        self.ring().n_slots()
    }
    #[getter]
    fn slot_bytes(&self) -> u64 {
        self.ring().slot_bytes()
    }
    /// Worker: a free slot and the next task, as ``(slot, task, writable memoryview)``;
    /// ``None`` when every task is handed out. ``Timeout`` after ``timeout`` s,
    /// ``QueueShutDown`` once stopped (or the ring's creator died).
    #[pyo3(signature = (timeout=None))]
    fn claim<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> BResult<Option<(u32, u64, Bound<'py, PyAny>)>> {
        let id = self.h.id()?;
        let spec = wait_spec(timeout)?;
        let ring = Arc::clone(self.ring());
        match blocking(py, move |chk| ring.claim(id, spec, chk))? {
            Claim::Slot(slot, task) => {
                let p = self.ring().slot_ptr(slot)?;
                let n = self.ring().slot_bytes() as ffi::Py_ssize_t;
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
            Claim::TimedOut => Err(timed_out(timeout, "a free slot")),
        }
    }
    /// Worker: publish a claimed slot holding ``nbytes`` (an error record if ``error``).
    #[pyo3(signature = (slot, nbytes, error=false))]
    fn publish(&self, slot: u32, nbytes: u64, error: bool) -> BResult<()> {
        Ok(self.ring().publish(slot, nbytes, error)?)
    }
    /// Consumer: the next ready block (task ``want`` only, if given), or ``None`` at the end.
    /// ``Timeout`` after ``timeout`` s; ``WorkerDied`` if a worker died.
    #[pyo3(signature = (want=None, timeout=None))]
    fn take(
        slf: &Bound<'_, Self>,
        want: Option<u64>,
        timeout: Option<f64>,
    ) -> BResult<Option<SlotBlock>> {
        let py = slf.py();
        let spec = wait_spec(timeout)?;
        let ring = Arc::clone(slf.get().ring());
        // With the native path, a consumer with nothing ready reads a block itself.
        let filler = slf
            .get()
            .filler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let helper = match filler {
            Some(f) => Some((f, slf.get().h.id()?)),
            None => None,
        };
        let got = blocking(py, move |chk| match helper {
            Some((f, id)) => ring.take_helping(want, spec, chk, &mut || f.help(id)),
            None => ring.take(want, spec, chk),
        })?;
        match got {
            TakeResult::Block(t) => {
                let ring = slf.get().ring();
                let p = ring.slot_ptr(t.slot)?;
                Ok(Some(SlotBlock {
                    ticket: BlockTicket::new(Arc::clone(ring), t.slot),
                    task: t.task,
                    error: t.error,
                    ptr: p as usize,
                    len: t.len as isize,
                }))
            }
            TakeResult::End => Ok(None),
            TakeResult::TimedOut => Err(timed_out(timeout, "a block")),
        }
    }
    /// Stop: workers end, consumers get what is ready, then the end.
    fn stop(&self) {
        self.ring().stop();
    }
    /// Stop, and wait up to ``timeout`` s for the reading threads (native path) or the
    /// worker processes to leave. Returns whether they did (then ``recycle`` may reuse the
    /// ring).
    fn retire(&self, py: Python<'_>, timeout: f64) -> BResult<bool> {
        let d = Duration::try_from_secs_f64(timeout)
            .map_err(|_| Error::InvalidArgument(format!("timeout must be >= 0, got {timeout}")))?;
        let me = self.h.id()?;
        self.ring().stop();
        let deadline = std::time::Instant::now() + d;
        let ring = Arc::clone(self.ring());
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
    fn recycle(&self, tasks: Option<u64>) -> BResult<()> {
        let id = self.h.id()?;
        if self
            .filler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Err(Error::Held("the ring's reading threads are still running".into()).into());
        }
        Ok(self.ring().recycle(id, tasks)?)
    }
    /// State of each slot: 0 free, 1 filling, 2 ready, 3 leased.
    fn states(&self) -> Vec<u32> {
        self.ring().slot_states()
    }
    /// Tasks handed to workers so far.
    #[getter]
    fn tasks_started(&self) -> u64 {
        self.ring().tasks_started()
    }
    /// Leave (the last member out removes the segment).
    fn close(&self, py: Python<'_>) {
        if let Some(id) = self.h.close() {
            let ring = Arc::clone(self.ring());
            enter(py, move || ring.leave(id));
        }
    }
}

/// A block taken from a slot ring: a read-only view of its slot, which is reused only
/// once the block is released and its last view is gone.
#[pyclass(module = "ringcast", name = "_SlotBlock", frozen)]
pub(crate) struct SlotBlock {
    ticket: BlockTicket,
    /// The task number of the block.
    #[pyo3(get)]
    task: u64,
    /// Whether the block is a worker's error record.
    #[pyo3(get)]
    error: bool,
    ptr: usize,
    len: isize,
}

impl Export for SlotBlock {
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
impl SlotBlock {
    fn __len__(&self) -> usize {
        self.len as usize
    }
    /// Give the slot back; views still alive keep it until they are gone.
    fn release(&self) {
        self.ticket.release();
    }
    /// Whether ``release()`` was called.
    #[getter]
    fn released(&self) -> bool {
        self.ticket.views().released()
    }
    /// Views alive.
    #[getter]
    fn views(&self) -> usize {
        self.ticket.views().count()
    }
    /// A copy of the bytes.
    fn tobytes<'py>(&self, py: Python<'py>) -> BResult<Bound<'py, PyBytes>> {
        self.ticket.check_not_ended()?;
        // SAFETY: the slot is leased to this block (not ended); len bytes are mapped.
        let data = unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len as usize) };
        Ok(PyBytes::new(py, data))
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
}
