"""Parallel HDF5 streaming through a shared-memory slot ring, with the multitables API.

``Streamer(filename, **kw)`` reads a dataset in blocks of rows with a pool of worker
processes. Each worker opens the file itself (with ``h5py.File(filename, "r", **kw)``) and
reads each block with ``read_direct`` straight into a slot of a shared-memory ring; the
consumer takes blocks as read-only numpy views of their slot::

    stream = Streamer("data.h5")
    q = stream.get_queue("/entry/data", n_procs=2)
    for guard in q.iter():
        with guard as block:          # a (block_size, *row_shape) view, zero-copy
            total += block.sum()
    last = stream.get_remainder("/entry/data", q.block_size)

Compared with multitables 2.0.1 (``docs/migrating-from-multitables.md``): two queues of one
Streamer are independent; a queue keeps its Streamer alive; a forgotten ``close()`` does not
hang interpreter exit; workers die with their parent; nothing is left in ``/dev/shm``; read
errors reach the consumer in every mode; ``field=`` works everywhere; a view kept after its
guard keeps its slot (it never shows another block's rows).
"""

from __future__ import annotations

import atexit
import itertools
import os
import pickle
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

from . import BroadcastQueue, QueueShutDown, RingcastError, Timeout, WorkerDied
from ._ringcast import _Codec, _native_start, _SlotRing, unlink

__all__ = ["Streamer", "QueueClosed", "ReadError", "DEFAULT_BLOCK_BYTES"]

#: Default block for a contiguous dataset: this many bytes (at least one row).
DEFAULT_BLOCK_BYTES = 128 * 1024


class _QueueClosedType:
    """The sentinel ``get()`` returns once a queue has ended (compare with ``is``)."""

    _instance: Optional[_QueueClosedType] = None

    def __new__(cls) -> _QueueClosedType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "QueueClosed"

    def __reduce__(self) -> str:
        return "QueueClosed"

    def __bool__(self) -> bool:
        return False


#: Returned by ``Queue.get()`` once the stream has ended (for every later call too).
QueueClosed = _QueueClosedType()


class ReadError(RingcastError, RuntimeError):
    """A worker failed to read a block; the worker's traceback is in the message."""


class _RemoteTraceback(Exception):
    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


# ----------------------------------------------------------------------------- layout


class _Layout:
    """How the rows of one dataset map onto tasks and slots."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any], block_size: int) -> None:
        self.n = shape[0]
        self.row_shape = shape[1:]
        self.dtype = dtype
        self.bs = block_size
        self.row_elems = _elems(self.row_shape)
        self.row_bytes = dtype.itemsize * self.row_elems

    def rows(self, task: int, cyclic: bool) -> list[tuple[int, int]]:
        """Source row ranges of ``task`` (two ranges for a block that wraps)."""
        if not cyclic:
            a = task * self.bs
            return [(a, min(a + self.bs, self.n))]
        a = (task * self.bs) % self.n
        b = a + self.bs
        if b <= self.n:
            return [(a, b)]
        return [(a, self.n), (0, b - self.n)]


def _default_block_size(ds: Any) -> int:
    if ds.shape[0] == 0:
        raise RuntimeError("Cannot read from empty dataset.")
    if ds.chunks is not None and ds.chunks[0] > 0:
        return int(ds.chunks[0])
    row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
    return max(1, min(ds.shape[0], DEFAULT_BLOCK_BYTES // max(1, row_bytes)))


def _field_dtype(ds: Any, field: Optional[str]) -> np.dtype[Any]:
    if field is None:
        return np.dtype(ds.dtype)
    if ds.dtype.names is None or field not in ds.dtype.names:
        raise ValueError(f"dataset {ds.name} has no field {field!r} (fields: {ds.dtype.names})")
    return np.dtype(ds.dtype.fields[field][0])


# ----------------------------------------------------------------------------- native path


#: Filter ids of the HDF5 plugins the native path decodes (hdf5plugin's LZ4 and bitshuffle).
FILTER_LZ4 = 32004
FILTER_BITSHUFFLE = 32008


def _native_codec(dcpl: Any, itemsize: int) -> tuple[Optional[tuple[_Codec, int]], str]:
    """``(codec, elem)`` of a chunked dataset's filter pipeline, or ``(None, why not)``."""
    import h5py

    filters = [dcpl.get_filter(i) for i in range(dcpl.get_nfilters())]
    codes = [f[0] for f in filters]
    shuffle = 0
    if codes[:1] == [h5py.h5z.FILTER_SHUFFLE] and len(codes) == 2:
        shuffle, codes = itemsize, codes[1:]
    if codes == []:
        return (_Codec.RAW, 0), ""
    if codes == [h5py.h5z.FILTER_DEFLATE]:
        return (_Codec.DEFLATE, shuffle), ""
    if codes == [FILTER_LZ4]:
        return (_Codec.LZ4, shuffle), ""
    if codes == [FILTER_BITSHUFFLE] and not shuffle:
        cd = tuple(filters[0][2])
        # cd_values: major, minor, element size, block size, compression (2: LZ4)
        if len(cd) >= 5 and cd[4] == 2 and cd[2] in (0, itemsize):
            return (_Codec.BITSHUFFLE_LZ4, itemsize), ""
        return None, f"its bitshuffle filter {cd} does not use LZ4 on elements of {itemsize} bytes"
    names = [
        f[3].decode("ascii", "replace") if isinstance(f[3], bytes) else str(f[3]) for f in filters
    ]
    return None, (
        f"its filters {names} ({[f[0] for f in filters]}) are not raw, deflate, LZ4 or "
        "bitshuffle+LZ4 (with an optional shuffle before deflate or LZ4)"
    )


def _native_extents(ds: Any, kw: dict[str, Any], field: Optional[str]) -> tuple[Any, str]:
    """Where the rows of ``ds`` are in its file, for the native read path, or ``(None,
    why not)``. Only plain numeric data stored contiguously, or in chunks that span whole
    rows, raw or compressed with a filter the native path decodes, qualifies."""
    import h5py

    if field is not None:
        return None, "a field is selected"
    if kw.get("swmr") or kw.get("driver") not in (None, "sec2"):
        return None, "the file is opened in SWMR mode or with a non-default driver"
    dt = ds.dtype
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        return None, f"its dtype {dt} is not a plain number"
    if ds.is_virtual or ds.external or ds.id.get_type().get_size() != dt.itemsize:
        return None, "it is virtual, external, or stored with another element size"
    n = ds.shape[0]
    row_bytes = dt.itemsize * _elems(ds.shape[1:])
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        off = ds.id.get_offset()
        if off is None:
            return None, "its storage is not allocated"
        return [(0, n, n, off, n * row_bytes, _Codec.RAW, 0)], ""
    if layout != h5py.h5d.CHUNKED:
        return None, "it is a compact dataset"
    c0 = ds.chunks[0]
    if tuple(ds.chunks[1:]) != tuple(ds.shape[1:]):
        return None, f"its chunks {ds.chunks} do not span whole rows"
    codec, why = _native_codec(dcpl, dt.itemsize)
    if codec is None:
        return None, why
    nchunks = ds.id.get_num_chunks()
    if nchunks != -(-n // c0):
        return None, "some chunks are not written (fill values)"
    found: list[Any] = []
    try:  # one pass over the chunk index (get_chunk_info(i) walks it for every i)
        ds.id.chunk_iter(found.append)
    except (AttributeError, NotImplementedError):
        found = [ds.id.get_chunk_info(i) for i in range(nchunks)]
    infos = sorted(found, key=lambda c: c.chunk_offset)
    out = []
    for ci in infos:
        if ci.filter_mask != 0:
            return None, "a chunk skipped a filter"
        row0 = ci.chunk_offset[0]
        rows = min(c0, n - row0)
        if codec[0] == _Codec.RAW:
            out.append((row0, rows, rows, ci.byte_offset, rows * row_bytes, _Codec.RAW, 0))
        else:
            out.append((row0, rows, c0, ci.byte_offset, ci.size, *codec))
    return out, ""


# ----------------------------------------------------------------------------- workers

_files: dict[tuple[str, str], Any] = {}


def _open(filename: str, kw: dict[str, Any]) -> Any:
    import h5py

    key = (filename, repr(sorted(kw.items())))
    f = _files.get(key)
    if f is None or not f.id.valid:
        f = _files[key] = h5py.File(filename, "r", **kw)
    return f


def _serve(job: dict[str, Any]) -> None:
    """One worker's part of one queue: fill slots until the tasks run out or a stop."""
    try:
        ring = _SlotRing(job["ring"], create=False)
        ring.join("worker")
    except RingcastError:
        return  # the queue already ended (the other workers did all of it) or was dropped
    if job.get("hdf5plugin"):
        try:  # the consumer's process loaded hdf5plugin's filters: so do we
            import hdf5plugin  # noqa: F401
        except ImportError:
            pass
    try:
        ds: Any = None
        lay: Any = None
        err: Optional[BaseException] = None
        try:
            ds = _open(job["filename"], job["kw"])[job["path"]]
            lay = _Layout(tuple(job["shape"]), job["dtype"], job["block_size"])
        except BaseException as e:  # reported in every slot this worker claims
            err = e
        field = job["field"]
        while True:
            try:
                got = ring.claim(timeout=None)
            except QueueShutDown:
                return
            if got is None:
                return
            slot, task, mv = got
            try:
                if err is not None:
                    raise err
                out = np.frombuffer(mv, dtype=lay.dtype, count=lay.bs * lay.row_elems)
                out = out.reshape((lay.bs, *lay.row_shape))
                at = 0
                for a, b in lay.rows(task, job["cyclic"]):
                    if field is None:
                        ds.read_direct(out, source_sel=np.s_[a:b], dest_sel=np.s_[at : at + b - a])
                    else:
                        out[at : at + b - a] = ds.fields(field)[a:b]
                    at += b - a
                del out
                ring.publish(slot, at * lay.row_bytes)
            except BaseException as e:
                blob = _error_record(e)
                n = min(len(blob), len(mv))
                mv[:n] = blob[:n]
                ring.publish(slot, n, error=True)
            finally:
                mv.release()
    finally:
        ring.close()


def _elems(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _error_record(e: BaseException) -> bytes:
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        exc = pickle.dumps(e)
        pickle.loads(exc)
    except Exception:
        exc = pickle.dumps(ReadError(f"{type(e).__name__}: {e}"))
    return pickle.dumps((exc, tb))


def _worker_main(control: str, index: int, parent: int) -> None:
    """A pool process: serve every job addressed to it, until the pool stops."""
    _die_with_parent()
    q = BroadcastQueue(control, create=False)
    r = q.reader()
    threads: list[threading.Thread] = []
    try:
        while True:
            try:
                msg = r.recv(timeout=1.0)
            except QueueShutDown:
                break
            except Exception:
                if not _pid_alive(parent):
                    break  # the process that started the pool is gone: so are we
                continue
            job = pickle.loads(msg.body)
            if index not in job["workers"]:
                continue
            t = threading.Thread(target=_serve, args=(job,), daemon=True)
            t.start()
            threads.append(t)
            threads = [t for t in threads if t.is_alive()]
    finally:
        r.close()
        q.close()
        for t in threads:
            t.join(5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] not in ("Z", "X")
    except OSError:
        return False


def _die_with_parent() -> None:
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:
        pass


class _Pool:
    """Worker processes shared by the queues of one Streamer (started once, kept warm)."""

    _ids = itertools.count()

    def __init__(self) -> None:
        import multiprocessing as mp

        self.ctx = mp.get_context("forkserver")
        self.control = BroadcastQueue(
            f"rc_h5_{os.getpid()}_{next(self._ids)}_{id(self):x}",
            create=True,
            capacity=1 << 20,
        )
        self.procs: list[Any] = []
        self.lock = threading.Lock()

    def ensure(self, n: int) -> list[int]:
        with self.lock:
            while len(self.procs) < n:
                p = self.ctx.Process(
                    target=_worker_main,
                    args=(self.control.name, len(self.procs), os.getpid()),
                    daemon=True,
                )
                p.start()
                self.procs.append(p)
            self.control.wait_for_readers(n, timeout=60)
            return list(range(n))

    def submit(self, job: dict[str, Any]) -> None:
        self.control.send(pickle.dumps(job))

    def close(self) -> None:
        with self.lock:
            try:
                self.control.shutdown()
            except RingcastError:
                pass
            for p in self.procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
            self.procs.clear()
            self.control.close()


_live_streamers: weakref.WeakSet[Streamer] = weakref.WeakSet()
#: Ring names are never reused in a process: a native ring's name is unlinked early, and the
#: last member of a ring unlinks its name when it leaves.
_ring_ids = itertools.count()


@atexit.register
def _close_everything() -> None:
    for s in list(_live_streamers):
        s.close()


# ----------------------------------------------------------------------------- consumer side


class Guard:
    """``with guard as block``: a read-only view of one block, valid while the view lives."""

    def __init__(self, queue: Queue, block: Any) -> None:
        self._queue = queue
        self._block = block

    def __enter__(self) -> np.ndarray[Any, Any]:
        b = self._block
        if b.error:
            blob = b.tobytes()
            b.release()
            if blob.startswith(b"RCERR:"):  # from the native read path
                raise ReadError(blob[6:].decode("utf-8", "replace"))
            try:
                exc_blob, tb = pickle.loads(blob)
                exc = pickle.loads(exc_blob)
            except Exception:  # a record cut to the slot size
                raise ReadError(
                    "a worker failed to read this block (its report did not fit the slot): "
                    + blob.decode("utf-8", "replace")[-500:]
                ) from None
            raise exc from _RemoteTraceback(f'\n"""\n{tb}"""')
        lay = self._queue._layout
        rows = len(b) // lay.row_bytes if lay.row_bytes else 0
        arr = np.frombuffer(b, dtype=lay.dtype, count=rows * lay.row_elems)
        return arr.reshape((rows, *lay.row_shape))

    def __exit__(self, *exc: Any) -> None:
        self._block.release()


class Queue:
    """A stream of blocks of one dataset (``Streamer.get_queue``)."""

    def __init__(
        self,
        streamer: Streamer,
        layout: _Layout,
        ring: Any,
        ordered: bool,
        cyclic: bool,
    ) -> None:
        self._streamer = streamer  # keeps the Streamer (and its pool) alive
        self._layout = layout
        self._ring = ring
        self._ordered = ordered
        self._cyclic = cyclic
        self._next = 0
        self._lock = threading.Lock()
        self._closed_seen = False
        self._released = False
        self._pid = os.getpid()
        self.block_size = layout.bs
        self.stop = threading.Event()
        #: Whether Rust threads read this queue (the native path) rather than h5py workers.
        self.native = False

    def get(self, timeout: Optional[float] = None) -> Any:
        """The guard of the next block, or ``QueueClosed`` once the stream has ended.

        Waits up to ``timeout`` s (``None``: as long as it takes; ``Timeout`` after that).
        Raises ``WorkerDied`` if the workers died.
        """
        if self._closed_seen:
            return QueueClosed
        want = None
        if self._ordered:
            with self._lock:
                want = self._next
                self._next += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            try:
                block = self._ring.take(want, step)
                break
            except Timeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                if not self.native:  # native threads are watched by the ring itself
                    self._streamer._check_pool()
        if block is None:
            self._closed_seen = True  # the ring is kept for reuse until the queue dies
            return QueueClosed
        return Guard(self, block)

    def iter(self) -> Iterator[Guard]:
        """Guards until ``QueueClosed``."""
        while True:
            g = self.get()
            if g is QueueClosed:
                return
            yield g

    def close(self) -> None:
        """Stop reading ahead; blocks already read can still be taken, then ``QueueClosed``."""
        if not self.stop.is_set():
            self.stop.set()
            self._ring.stop()

    def _release(self, reuse: bool = False) -> None:
        """Stop and give the ring up; with ``reuse`` (only once no other thread can use this
        queue) the ring goes to the Streamer's warm rings for its next queue."""
        if self._released:
            return
        self._released = True
        if os.getpid() != self._pid:
            return  # a copy inherited through fork: the queue is its creator's to stop
        self.close()
        self._closed_seen = True  # get() answers QueueClosed without the ring from now on
        if reuse:
            self._streamer._retire(self._ring, self.native)
        else:
            self._ring.close()

    def __del__(self) -> None:
        try:
            self._release(reuse=True)  # no thread can be in a method of a dying queue
        except Exception:
            pass


class Streamer:
    """Streams datasets of one HDF5 file through worker processes (multitables API)."""

    def __init__(self, filename: str, **kw_args: Any) -> None:
        self.filename = os.fspath(filename)
        self.kw_args = kw_args
        self._pool: Optional[_Pool] = None
        self._lock = threading.Lock()
        self._queues: weakref.WeakSet[Queue] = weakref.WeakSet()
        self._plans: dict[tuple[str, Optional[str]], Any] = {}
        #: Rings of finished queues, their memory faulted in, for the next queues.
        self._warm: list[Any] = []
        self._closed = False
        _live_streamers.add(self)

    def _file(self) -> Any:
        import h5py

        return h5py.File(self.filename, "r", **self.kw_args)

    def _native_plan(self, path: str, ds: Any, field: Optional[str]) -> tuple[Any, str]:
        """The native path's extents of ``ds``, remembered while the file is unchanged."""
        st = os.stat(self.filename)
        key = (path, field)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        hit = self._plans.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1], hit[2]
        extents, why = _native_extents(ds, self.kw_args, field)
        self._plans[key] = (stamp, extents, why)
        return extents, why

    #: Warm rings a Streamer keeps (two queues read in step need two).
    WARM_RINGS = 2

    def _retire(self, ring: Any, native: bool) -> None:
        """Keep a finished queue's ring for reuse once its readers have left it."""
        if not ring.retire(1.0):
            ring.close()
            return
        with self._lock:
            if self._closed:
                ring.close()
                return
            self._warm.append((ring, native))
            drop = self._warm[: -self.WARM_RINGS]
            del self._warm[: -self.WARM_RINGS]
        for r, _ in drop:
            r.close()

    def _warm_ring(self, n_slots: int, slot_bytes: int, tasks: Optional[int], native: bool) -> Any:
        """A warm ring of this geometry and path made new for ``tasks`` tasks, or ``None``
        (a native queue's ring has no name any more: worker processes cannot attach it)."""
        with self._lock:
            for i, (r, nat) in enumerate(self._warm):
                if (
                    nat == native
                    and r.n_slots == n_slots
                    and slot_bytes <= r.slot_bytes <= 2 * slot_bytes
                ):
                    del self._warm[i]
                    break
            else:
                return None
        try:
            r.recycle(tasks)
        except RingcastError:  # a view of one of its blocks is still alive
            r.close()
            return None
        return r

    def _check_pool(self) -> None:
        pool = self._pool
        if pool is None:
            raise WorkerDied("the Streamer was closed: its worker processes are gone")
        dead = [p for p in pool.procs if not p.is_alive()]
        if dead and len(dead) == len(pool.procs):
            p = dead[0]
            raise WorkerDied(f"every worker process has died (pid {p.pid}, exit code {p.exitcode})")

    def _pool_of(self, n: int) -> tuple[_Pool, list[int]]:
        with self._lock:
            if self._pool is None:
                self._pool = _Pool()
            return self._pool, self._pool.ensure(n)

    def get_queue(
        self,
        path: str,
        n_procs: Optional[int] = 4,
        read_ahead: Optional[int] = None,
        cyclic: bool = False,
        block_size: Optional[int] = None,
        ordered: bool = False,
        field: Optional[str] = None,
        remainder: bool = False,
        native: Optional[bool] = None,
    ) -> Queue:
        """A queue of ``block_size``-row blocks of dataset ``path``, read by ``n_procs``
        workers into ``read_ahead`` (``2 * n_procs + 1``) shared-memory slots.

        ``native=None`` reads with Rust threads (``pread``, deflate decoded outside any lock)
        when the dataset's layout allows it, else with h5py worker processes; ``True``
        requires the native path (``ValueError`` saying why not); ``False`` uses h5py."""
        n_procs = 4 if n_procs is None else int(n_procs)
        if n_procs < 1:
            raise ValueError(f"n_procs must be at least 1, got {n_procs}")
        if read_ahead is None:
            read_ahead = 2 * n_procs + 1
        if read_ahead < 1:
            raise RuntimeError(
                "The read_ahead parameter should be a strictly positive number or None."
            )
        with self._file() as f:
            ds = f[path]
            if not hasattr(ds, "shape") or not hasattr(ds, "dtype"):
                raise RuntimeError("Selected dataset is not an array or table.")
            if ds.shape == ():
                raise ValueError(f"dataset {path} is scalar: there are no rows to stream")
            bs = _default_block_size(ds) if block_size is None else int(block_size)
            if bs < 1:
                raise ValueError(f"block_size must be at least 1, got {bs}")
            bs = min(bs, ds.shape[0])
            dtype = _field_dtype(ds, field)
            shape = tuple(ds.shape)
            extents, why = (None, "not asked for")
            if native is not False:
                extents, why = self._native_plan(path, ds, field)
                if extents is None and native:
                    raise ValueError(f"the native read path cannot read {path}: {why}")
            if dtype.subdtype is not None:  # a sub-array field: its shape joins the row's
                dtype, sub = dtype.subdtype
                shape = shape + tuple(sub)
        lay = _Layout(shape, dtype, bs)
        if cyclic:
            tasks = None
        else:
            tasks = lay.n // bs + (1 if remainder and lay.n % bs else 0)
        # One spare slot: the `block` of the previous `with guard as block` is still alive
        # while the loop asks for the next one, and keeps its slot.
        n_slots, slot_bytes = read_ahead + 1, max(1, bs * lay.row_bytes)
        ring = self._warm_ring(n_slots, slot_bytes, tasks, extents is not None)
        if ring is None:
            ring = _SlotRing(
                f"rc_h5q_{os.getpid()}_{next(_ring_ids)}",
                create=True,
                n_slots=n_slots,
                slot_bytes=slot_bytes,
                tasks=tasks,
            )
            ring.join("consumer")
        if extents is not None:
            _native_start(ring, self.filename, lay.row_bytes, lay.n, bs, cyclic, extents, n_procs)
            try:  # only this process's threads use it: its name can go now (even a SIGKILL
                unlink(ring.name)  # then leaves nothing in /dev/shm)
            except RingcastError:
                pass  # a recycled ring's name is gone already
            q = Queue(self, lay, ring, ordered, cyclic)
            q.native = True
            self._queues.add(q)
            return q
        pool, workers = self._pool_of(n_procs)
        pool.submit(
            {
                "ring": ring.name,
                "filename": self.filename,
                "kw": self.kw_args,
                "path": path,
                "shape": shape,
                "dtype": dtype,
                "block_size": bs,
                "cyclic": cyclic,
                "field": field,
                "workers": workers,
                "hdf5plugin": "hdf5plugin" in sys.modules,
            }
        )
        q = Queue(self, lay, ring, ordered, cyclic)
        self._queues.add(q)
        return q

    def get_remainder(self, path: str, block_size: Optional[int] = None) -> np.ndarray[Any, Any]:
        """A copy of the last ``N % block_size`` rows (shape ``(0, ...)`` if none)."""
        with self._file() as f:
            ds = f[path]
            bs = _default_block_size(ds) if block_size is None else int(block_size)
            bs = max(1, min(bs, ds.shape[0]))
            return np.asarray(ds[bs * (ds.shape[0] // bs) :])

    def get_generator(
        self,
        path: str,
        n_procs: Optional[int] = 4,
        read_ahead: Optional[int] = None,
        cyclic: bool = False,
        block_size: Optional[int] = None,
        ordered: bool = False,
        field: Optional[str] = None,
        remainder: bool = True,
        native: Optional[bool] = None,
    ) -> Iterator[Any]:
        """Rows one at a time, from copies (safe to keep); with ``remainder`` (the default) the
        last ``N % block_size`` rows come at the end, read in this process. ``native`` as in
        ``get_queue``."""
        q = self.get_queue(
            path, n_procs, read_ahead, cyclic, block_size, ordered, field, False, native
        )
        try:
            for guard in q.iter():
                with guard as block:
                    rows = block.copy()
                    del block
                yield from rows
        finally:
            q._release(reuse=True)  # this queue is the generator's own
        if remainder and not cyclic:
            rest = self.get_remainder(path, q.block_size)
            yield from (rest if field is None else rest[field])

    def close(self) -> None:
        """Close every queue of this Streamer and stop its worker pool."""
        for q in list(self._queues):
            q._release()
        with self._lock:
            self._closed = True
            warm, self._warm = self._warm, []
            pool, self._pool = self._pool, None
        for r, _ in warm:
            r.close()
        if pool is not None:
            pool.close()

    def __enter__(self) -> Streamer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
