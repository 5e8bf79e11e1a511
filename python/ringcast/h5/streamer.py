"""The consumer side: :class:`Streamer` (one HDF5 file), its :class:`Queue` of blocks of
one dataset, and the :class:`Guard` of each block."""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

from .. import _remote
from .._ringcast import _native_start, _SlotRing, unlink
from ..errors import RingcastError, Timeout, WorkerDied
from .errors import ReadError
from .plan import Layout, default_block_size, field_dtype, native_extents
from .pool import Pool

#: How long ``Queue.get`` waits on the ring at a time before it checks the worker processes.
CHECK_INTERVAL = 1.0
#: How long a finished queue's ring waits for its readers to leave before it is reused.
RETIRE_TIMEOUT = 1.0


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


_live_streamers: weakref.WeakSet[Streamer] = weakref.WeakSet()
#: Ring names are never reused in a process: a native ring's name is unlinked early, and the
#: last member of a ring unlinks its name when it leaves.
_ring_ids = itertools.count()


@atexit.register
def _close_everything() -> None:
    for s in list(_live_streamers):
        s.close()


def _cut_short(text: str) -> ReadError:
    return ReadError(
        f"a worker failed to read this block (its report did not fit the slot): {text}"
    )


class Guard:
    """``with guard as block``: a read-only view of one block, valid while the view lives."""

    def __init__(self, queue: Queue, block: Any) -> None:
        self._queue = queue
        self._block = block

    def __enter__(self) -> np.ndarray[Any, Any]:
        b = self._block
        if b.error:
            record = b.tobytes()
            b.release()
            raise _remote.unpack(record, cut_short=_cut_short)
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
        layout: Layout,
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
            step = (
                CHECK_INTERVAL
                if deadline is None
                else min(CHECK_INTERVAL, max(0.0, deadline - time.monotonic()))
            )
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
        self._pool: Optional[Pool] = None
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
        extents, why = native_extents(ds, self.kw_args, field)
        self._plans[key] = (stamp, extents, why)
        return extents, why

    #: Warm rings a Streamer keeps (two queues read in step need two).
    WARM_RINGS = 2

    def _retire(self, ring: Any, native: bool) -> None:
        """Keep a finished queue's ring for reuse once its readers have left it."""
        if not ring.retire(RETIRE_TIMEOUT):
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

    def _pool_of(self, n: int) -> tuple[Pool, list[int]]:
        with self._lock:
            if self._pool is None:
                self._pool = Pool()
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
            bs = default_block_size(ds) if block_size is None else int(block_size)
            if bs < 1:
                raise ValueError(f"block_size must be at least 1, got {bs}")
            bs = min(bs, ds.shape[0])
            dtype = field_dtype(ds, field)
            shape = tuple(ds.shape)
            extents, why = (None, "not asked for")
            if native is not False:
                extents, why = self._native_plan(path, ds, field)
                if extents is None and native:
                    raise ValueError(f"the native read path cannot read {path}: {why}")
            if dtype.subdtype is not None:  # a sub-array field: its shape joins the row's
                dtype, sub = dtype.subdtype
                shape = shape + tuple(sub)
        lay = Layout(shape, dtype, bs)
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
            bs = default_block_size(ds) if block_size is None else int(block_size)
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
