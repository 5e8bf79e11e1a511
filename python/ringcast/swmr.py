"""Following HDF5 files written live (SWMR), with the swmr_tools API.

A SWMR writer extends datasets and flushes them; a reader opened with ``swmr=True`` sees new
data after ``refresh()``. Because an extended region reads as the fill value until it is
flushed, writers also keep *key* datasets (integers, fill value 0, one element per scan point)
written non-zero *after* the point's data. A point is ready when every key is non-zero there.

* :class:`KeyFollower` iterates over ready scan-point indices (flat, row-major).
* :class:`FrameReader` reads the frame of one scan point from a dataset.
* :class:`DataSource` combines them: a dict of frames per ready point.

Compared with swmr_tools 0.9.0 (see ``docs/migrating-from-swmr-tools.md``): frames are never
stale fill values; empty keys and scalar finished datasets work; data lagging its keys is
waited for (bounded by the timeout); polling starts at 1 ms and backs off to a cap, so latency
does not grow with the timeout; each poll reads only the new part of each key; each HDF5
object is refreshed and read through one handle; no dependency beyond h5py and numpy.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional

import numpy as np

from .errors import FrameNotReady, SWMRError

__all__ = [
    "KeyFollower",
    "RowKeyFollower",
    "FrameReader",
    "DataSource",
    "SliceDict",
    "FanOutStats",
    "fan_out",
    "frame_info",
]

log = logging.getLogger("ringcast.swmr")

#: First poll interval (seconds) after a wait starts or after progress.
POLL_MIN = 0.001
#: Longest poll interval (seconds): polling backs off by doubling up to this.
POLL_MAX = 0.01
#: Elements of a key read per window when scanning for its first zero.
_WINDOW = 4096
#: The window grows fourfold per step while no zero is found, up to this many elements.
_WINDOW_MAX = 1 << 16


_names: dict[int, tuple[Any, str]] = {}


def _remembered_name(ds: Any) -> str:
    """The dataset's name, remembered while the object lives (a handle whose refresh failed
    can no longer tell its name)."""
    hit = _names.get(id(ds))
    if hit is not None and hit[0]() is ds:
        return hit[1]
    name = _name(ds)
    try:
        _names[id(ds)] = (weakref.ref(ds), name)
    except TypeError:
        pass
    return name


def _refresh(ds: Any) -> None:
    refresh = getattr(ds, "refresh", None)
    if refresh is None:
        return
    # Read what the message needs first: after a failed refresh the handle is unusable (the
    # name is remembered, so a second failure still names the dataset).
    name = _remembered_name(ds)
    try:
        contiguous = getattr(ds, "chunks", 0) is None
    except Exception:
        contiguous = False
    try:
        refresh()
    except (RuntimeError, KeyError, OSError, ValueError) as e:
        layout = ""
        if contiguous:
            layout = (
                " It is a contiguous dataset: HDF5 (1.14.4 and later) cannot refresh those in a"
                " file written with SWMR; the writer must make it chunked (e.g. maxshape=(None,))"
                " or, for a scalar, compact."
            )
        raise SWMRError(f"cannot refresh {name}: {e}.{layout}") from e


def _name(ds: Any) -> str:
    return str(getattr(ds, "name", None) or type(ds).__name__)


def _check_dataset(ds: Any, what: str) -> None:
    if not hasattr(ds, "shape") or not hasattr(ds, "__getitem__"):
        raise TypeError(f"{what} must be an h5py Dataset (or an array), not {type(ds).__name__}")


class _Handles:
    """One handle per HDF5 object: the same dataset passed twice (e.g. as a key and as data)
    is refreshed and read through a single handle (refreshing one of two handles of the same
    dataset can return wrong data with h5py 3.16 / HDF5 2.0, swmr_tools D7)."""

    def __init__(self) -> None:
        self._by_id: dict[Any, Any] = {}

    def canonical(self, ds: Any) -> Any:
        oid = getattr(ds, "id", None)
        if oid is None or not hasattr(oid, "fileno"):
            return ds
        return self._by_id.setdefault(oid, ds)


class _KeyScan:
    """The confirmed non-zero prefix of one key dataset, extended incrementally."""

    __slots__ = ("ds", "prefix", "inner")

    def __init__(self, ds: Any) -> None:
        self.ds = ds
        self.prefix = 0  # flat elements known non-zero from the start
        self.inner: tuple[int, ...] = ()

    def _read_flat(self, start: int, stop: int) -> np.ndarray:
        """Flat row-major elements [start, stop) over the current shape."""
        shape = self.ds.shape
        if len(shape) <= 1:
            return np.asarray(self.ds[start:stop]).ravel()
        row = int(np.prod(shape[1:]))
        r0, r1 = start // row, -(-stop // row)
        block = np.asarray(self.ds[r0:r1]).ravel()
        return block[start - r0 * row : stop - r0 * row]

    def update(self) -> int:
        """Refresh and extend the prefix; return it."""
        _refresh(self.ds)
        shape = tuple(self.ds.shape)
        if len(shape) == 0:
            raise ValueError(
                f"key dataset {_name(self.ds)} is a scalar; keys need one element per point"
            )
        inner = shape[1:]
        if inner != self.inner:
            # Inner scan dimensions changed size: flat positions changed meaning, start over.
            self.inner = inner
            self.prefix = 0
        size = int(np.prod(shape)) if shape else 0
        window = _WINDOW
        while self.prefix < size:
            stop = min(size, self.prefix + window)
            chunk = self._read_flat(self.prefix, stop)
            zeros = np.flatnonzero(chunk == 0)
            if zeros.size:
                self.prefix += int(zeros[0])
                break
            self.prefix = stop
            window = min(window * 4, _WINDOW_MAX)
        return self.prefix

    def nonzero_at(self, start: int, stop: int) -> np.ndarray:
        size = int(np.prod(self.ds.shape))
        stop = min(stop, size)
        if stop <= start:
            return np.zeros(0, dtype=bool)
        return self._read_flat(start, stop) != 0


class KeyFollower(Iterator[int]):
    """Iterate over the flat indices of scan points whose keys are all non-zero.

    ``timeout`` is an idle timeout: iteration stops when no new point became ready for that
    many seconds while the caller waited (``timed_out`` is then true). With a
    ``finished_dataset`` (one element, or a scalar), iteration stops as soon as the writer has
    set it non-zero and every ready point has been returned.

    Readiness is swmr_tools': the contiguous prefix of points that are non-zero in every key.
    With ``skip_missing_after=S``, a point whose key stays zero for ``S`` seconds while later
    points are ready is skipped (recorded in ``skipped``) instead of stalling the follower.
    """

    def __init__(
        self,
        key_datasets: Sequence[Any],
        timeout: Optional[float] = 10,
        finished_dataset: Optional[Any] = None,
        *,
        poll_min: float = POLL_MIN,
        poll_max: float = POLL_MAX,
        skip_missing_after: Optional[float] = None,
    ) -> None:
        keys = list(key_datasets)
        if not keys:
            raise ValueError("KeyFollower needs at least one key dataset")
        for k in keys:
            _check_dataset(k, "a key dataset")
        if finished_dataset is not None:
            _check_dataset(finished_dataset, "finished_dataset")
        if timeout is None:
            timeout = math.inf
        if not isinstance(timeout, (int, float, np.integer, np.floating)) or not timeout >= 0:
            raise ValueError(
                f"timeout must be a number of seconds >= 0 (None or inf: never), got {timeout!r}"
            )
        if not (0 < poll_min <= poll_max):
            raise ValueError("need 0 < poll_min <= poll_max")
        self.key_datasets = keys
        self.timeout = timeout
        self.finished_dataset = finished_dataset
        self.poll_min = poll_min
        self.poll_max = poll_max
        self.skip_missing_after = skip_missing_after
        self.current_key = -1
        self.current_max = -1
        self.timed_out = False
        self.end_time: Optional[float] = None
        self.finished_set = False
        self.scan_rank = -1
        self.maxshape: Optional[tuple[Optional[int], ...]] = None
        #: Indices skipped with ``skip_missing_after`` (never returned).
        self.skipped: list[int] = []
        self._scans = [_KeyScan(k) for k in keys]
        self._skipped_set: set[int] = set()
        self._hole: Optional[tuple[int, float]] = None

    # ------------------------------------------------------------------ readiness

    def _ready_prefix(self, writer_done: bool = False) -> int:
        while True:
            n = min(s.update() for s in self._scans)
            if self.skip_missing_after is None or not self._skip_hole(n, writer_done):
                return n

    def _skip_hole(self, hole: int, writer_done: bool) -> bool:
        """Skip the point at ``hole`` if it stayed missing long enough (or the writer has
        finished, so it never will come) while later points are ready in every key. Returns
        True if it skipped."""
        later = None
        for s in self._scans:
            nz = s.nonzero_at(hole + 1, hole + 1 + _WINDOW)
            later = nz if later is None else later[: nz.size] & nz[: later.size]
        if later is None or not later.any():
            self._hole = None  # nothing after it is ready yet: the point is not late
            return False
        # The clock starts when a later point is first seen ready while this one is missing.
        now = time.monotonic()
        if self._hole is None or self._hole[0] != hole:
            self._hole = (hole, now)
        if not writer_done and now - self._hole[1] < float(self.skip_missing_after or 0):
            return False
        for s in self._scans:
            if s.prefix == hole:
                s.prefix = hole + 1
        self.skipped.append(hole)
        self._skipped_set.add(hole)
        self._hole = None
        log.warning(
            "skipping scan point %d: its key stayed zero while later points are ready", hole
        )
        return True

    def _is_next(self, writer_done: bool = False) -> bool:
        new_max = self._ready_prefix(writer_done) - 1
        if new_max > self.current_max:
            self.current_max = new_max
            return True
        return False

    def refresh(self) -> bool:
        """Re-read the keys; True if more points are ready than before."""
        return self._is_next()

    def get_current_max(self) -> int:
        """The highest ready index seen so far (-1 if none)."""
        return self.current_max

    def _flag(self) -> bool:
        fd = self.finished_dataset
        if fd is None:
            return False
        _refresh(fd)
        shape = tuple(fd.shape)
        if shape == ():
            return bool(np.asarray(fd[()]))
        if int(np.prod(shape)) != 1:
            log.warning(
                "finished dataset %s has %d elements, not 1: ignored",
                _name(fd),
                int(np.prod(shape)),
            )
            return False
        return bool(np.asarray(fd[...]).ravel()[0])

    def is_finished(self) -> bool:
        """swmr_tools' check: the first call that sees the flag set records it and still says
        "not finished" (one more key poll follows); the next says finished."""
        if self._flag():
            if self.finished_set:
                return True
            self.finished_set = True
        return False

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> KeyFollower:
        return self

    def __next__(self) -> int:
        if self.current_key < self.current_max:
            return self._advance()
        self.end_time = time.monotonic() + self.timeout
        interval = self.poll_min
        while True:
            if self._is_next():
                return self._advance()
            try:
                flag = self._flag()
            except SWMRError:
                # The flag is written after the last keys: deliver what is ready first.
                if self._is_next():
                    return self._advance()
                raise
            if flag:
                self.finished_set = True
                # The flag is written after the last keys: one more look at the keys (a hole
                # now never fills: skip it if asked to), then stop.
                if self._is_next(writer_done=True):
                    return self._advance()
                raise StopIteration
            now = time.monotonic()
            if now >= self.end_time:
                self.timed_out = True
                raise StopIteration
            time.sleep(min(interval, self.end_time - now))
            interval = min(interval * 2, self.poll_max)

    def _advance(self) -> int:
        self.current_key += 1
        while self.current_key in self._skipped_set and self.current_key < self.current_max:
            self.current_key += 1
        return self.current_key

    # ------------------------------------------------------------------ shape and state

    def check_datasets(self) -> None:
        """Work out the scan rank and maxshape from the keys' maxshape (trailing dimensions
        of size 1 are frame dimensions). Raises ``RuntimeError`` if the ranks differ."""
        ranks = []
        shapes = []
        for k in self.key_datasets:
            ms = tuple(getattr(k, "maxshape", None) or k.shape)
            rank = len(ms)
            while rank > 1 and ms[rank - 1] == 1:
                rank -= 1
            ranks.append(rank)
            shapes.append(ms[:rank])
        if len(set(ranks)) > 1:
            raise RuntimeError("Key datasets must have the same rank!")
        if len(set(shapes)) > 1:
            log.warning("key datasets have different maxshapes: %s", shapes)
        self.scan_rank = ranks[0]
        self.maxshape = shapes[0]

    def reset(self) -> None:
        """Start again from index 0 (``finished_set`` is kept, as in swmr_tools)."""
        self.current_key = -1
        self.current_max = -1
        self.timed_out = False

    def are_keys_complete(self) -> bool:
        """Whether every point of the scan's maxshape is ready (False if it is unlimited)."""
        if self.maxshape is None:
            self.check_datasets()
        assert self.maxshape is not None
        dims = [m for m in self.maxshape if m is not None]
        if len(dims) != len(self.maxshape):
            return False
        return self.current_max == math.prod(dims) - 1


class RowKeyFollower(Iterator[int]):
    """Like :class:`KeyFollower`, but each step returns the index of the last point of the
    next complete row (``row_size`` points; by default the last scan dimension)."""

    def __init__(
        self,
        key_datasets: Sequence[Any],
        timeout: Optional[float] = 10,
        finished_dataset: Optional[Any] = None,
        row_size: Optional[int] = None,
        **kw: Any,
    ) -> None:
        self.inner_key_follower = KeyFollower(key_datasets, timeout, finished_dataset, **kw)
        self.row_size = row_size

    @property
    def kf(self) -> KeyFollower:
        """The :class:`KeyFollower` whose rows this follows."""
        return self.inner_key_follower

    @property
    def scan_rank(self) -> int:
        """The keys' scan rank (after ``check_datasets()``)."""
        return self.kf.scan_rank

    @property
    def maxshape(self) -> Optional[tuple[Optional[int], ...]]:
        """The scan's maxshape (after ``check_datasets()``)."""
        return self.kf.maxshape

    def check_datasets(self) -> None:
        """As :meth:`KeyFollower.check_datasets`; also sets ``row_size`` if it was not given."""
        self.kf.check_datasets()
        if self.row_size is None:
            assert self.kf.maxshape is not None
            last = self.kf.maxshape[-1]
            if last is None:
                raise RuntimeError("the last scan dimension is unlimited: pass row_size")
            self.row_size = int(last)

    def reset(self) -> None:
        """Start again from the first row."""
        self.kf.reset()

    def __iter__(self) -> RowKeyFollower:
        return self

    def __next__(self) -> int:
        if self.row_size is None:
            self.check_datasets()
        assert self.row_size is not None
        i = -1
        for _ in range(self.row_size):
            i = next(self.kf)
        return i


class FrameReader:
    """Read the frame of scan point ``index`` from ``dataset`` (scan dimensions first).

    ``read_frame`` returns ``(frame, slice_metadata)``: the frame keeps its singleton scan
    dimensions (shape ``(1,)*scan_rank + frame_shape``) and ``slice_metadata`` is the tuple of
    scan-dimension slices. The dataset is refreshed before any index beyond the last one read
    after a refresh, so a frame is never read from stale metadata (fill values); an index
    beyond the dataset's extent is waited for, up to ``timeout`` seconds, then
    :class:`~ringcast.errors.FrameNotReady` (a ``ValueError``) is raised.
    """

    def __init__(
        self,
        dataset: Any,
        scan_rank: int,
        use_direct_chunk: bool = False,
        *,
        timeout: Optional[float] = 10,
        poll_max: float = POLL_MAX,
    ) -> None:
        _check_dataset(dataset, "dataset")
        if not isinstance(scan_rank, (int, np.integer)) or scan_rank < 1:
            raise ValueError(f"scan_rank must be a positive integer, got {scan_rank!r}")
        if scan_rank > len(dataset.shape):
            raise ValueError(
                f"scan_rank {scan_rank} exceeds the rank {len(dataset.shape)} of {_name(dataset)}"
            )
        self.dataset = dataset
        self.scan_rank = int(scan_rank)
        # Accepted for compatibility; frames are read through h5py, which decodes any filter
        # it has a plugin for (blosc via hdf5plugin, for example).
        self.use_direct_chunk = use_direct_chunk
        self.timeout = math.inf if timeout is None else timeout
        self.poll_max = poll_max
        self._fresh_upto = -1

    def refresh(self, upto: Optional[int] = None) -> None:
        """Refresh the dataset now; points up to ``upto`` (known ready before this call) are
        then read without another refresh."""
        _refresh(self.dataset)
        if upto is not None:
            self._fresh_upto = max(self._fresh_upto, int(upto))

    def read_frame(self, index: int, force_refresh: bool = False) -> tuple[np.ndarray, tuple]:
        """Return ``(frame, slice_metadata)`` for scan point ``index``."""
        index = int(index)
        if index < 0:
            raise IndexError(f"scan point index must be >= 0, got {index}")
        if force_refresh or index > self._fresh_upto:
            self.refresh(upto=index)
        shape = self.dataset.shape[: self.scan_rank]
        deadline = None
        interval = POLL_MIN
        while index >= int(np.prod(shape)):
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.timeout
            if now >= deadline:
                raise FrameNotReady(
                    f"scan point {index} is beyond the extent {tuple(shape)} of "
                    f"{_name(self.dataset)} after waiting {self.timeout} s"
                )
            time.sleep(min(interval, deadline - now))
            interval = min(interval * 2, self.poll_max)
            self.refresh(upto=index)
            shape = self.dataset.shape[: self.scan_rank]
        pos = np.unravel_index(index, shape)
        slices = tuple(slice(p, p + 1) for p in pos)
        return np.asarray(self.dataset[slices]), slices


class SliceDict(dict):
    """A dict of frames (name -> array) with ``index``, ``slice_metadata`` and ``maxshape``."""

    index: int
    slice_metadata: tuple
    maxshape: Optional[tuple]


class DataSource(Iterator[SliceDict]):
    """Follow keys and yield, for each ready scan point, a :class:`SliceDict` of frames.

    ``datasets`` maps names to datasets read with the keys' scan rank;
    ``interleaved_datasets`` maps a name to a list of datasets written in turn (point ``i`` is
    frame ``i // n`` of dataset ``i % n``).
    """

    def __init__(
        self,
        key_datasets: Sequence[Any],
        datasets: Optional[Mapping[str, Any]] = None,
        timeout: float = 10,
        finished_dataset: Optional[Any] = None,
        use_direct_chunk: bool = False,
        interleaved_datasets: Optional[Mapping[str, Iterable[Any]]] = None,
        **follower_options: Any,
    ) -> None:
        if datasets is None and interleaved_datasets is None:
            raise RuntimeError("No data specified to follow!")
        handles = _Handles()
        keys = [handles.canonical(k) for k in key_datasets]
        finished = handles.canonical(finished_dataset) if finished_dataset is not None else None
        self.kf = KeyFollower(keys, timeout, finished, **follower_options)
        self.kf.check_datasets()
        rank = self.kf.scan_rank
        opts = {"timeout": self.kf.timeout, "poll_max": self.kf.poll_max}
        self.frame_readers = {
            name: FrameReader(handles.canonical(ds), rank, use_direct_chunk, **opts)
            for name, ds in (datasets or {}).items()
        }
        self.interleaved = {
            name: [FrameReader(handles.canonical(d), 1, use_direct_chunk, **opts) for d in dss]
            for name, dss in (interleaved_datasets or {}).items()
        }
        for name, readers in self.interleaved.items():
            if not readers:
                raise ValueError(f"interleaved dataset {name!r} has no datasets")
        self.max_index = -1

    def __iter__(self) -> DataSource:
        return self

    def __next__(self) -> SliceDict:
        i = next(self.kf)
        if i > self.max_index:
            self.max_index = self.kf.current_max
            for r in self.frame_readers.values():
                r.refresh(upto=self.max_index)
            for readers in self.interleaved.values():
                for r in readers:
                    r.refresh(upto=self.max_index // len(readers))
        out = SliceDict()
        out.index = i
        out.maxshape = self.kf.maxshape
        meta = None
        try:
            for name, r in self.frame_readers.items():
                frame, sl = r.read_frame(i)
                out[name] = frame
                meta = sl if meta is None else meta
            for name, readers in self.interleaved.items():
                n = len(readers)
                frame, _ = readers[i % n].read_frame(i // n)
                out[name] = frame
                if meta is None:
                    meta = (slice(i, i + 1),)
        except FrameNotReady:
            self.kf.current_key = i - 1  # the next call tries this point again
            raise
        out.slice_metadata = meta if meta is not None else ()
        return out

    def reset(self) -> None:
        """Start again from scan point 0."""
        self.kf.reset()
        self.max_index = -1

    def is_scan_finished(self) -> bool:
        """Whether the finished dataset was seen set."""
        return self.kf.finished_set

    def has_timed_out(self) -> bool:
        """Whether iteration stopped on the timeout."""
        return self.kf.timed_out

    def create_dataset(
        self, data: np.ndarray, fh: Any, path: str, slice_metadata: Optional[tuple] = None
    ) -> Any:
        """Create an output dataset at ``path`` shaped like the scan (``maxshape``) times
        ``data``'s shape, and write ``data`` as its point 0 (as swmr_tools does), or at
        ``slice_metadata`` if given."""
        data = np.asarray(data)
        assert self.kf.maxshape is not None
        rank = len(self.kf.maxshape)
        shape = (1,) * rank + data.shape
        maxshape = tuple(self.kf.maxshape) + data.shape
        out = fh.create_dataset(path, shape=shape, maxshape=maxshape, dtype=data.dtype, chunks=True)
        self.append_data(data, slice_metadata or (slice(0, 1),) * rank, out)
        return out

    @staticmethod
    def append_data(data: np.ndarray, slice_metadata: tuple, dataset: Any) -> None:
        """Write ``data`` at ``slice_metadata`` in ``dataset``, growing it if needed."""
        data = np.asarray(data)
        needed = [max(cur, int(s.stop)) for cur, s in zip(dataset.shape, slice_metadata)]
        if any(n > c for n, c in zip(needed, dataset.shape)):
            dataset.resize(tuple(needed) + tuple(dataset.shape[len(slice_metadata) :]))
        target = tuple(int(s.stop) - int(s.start) for s in slice_metadata) + tuple(
            dataset.shape[len(slice_metadata) :]
        )
        dataset[tuple(slice_metadata)] = data.reshape(target)


# ---------------------------------------------------------------------------------- fan-out


class FanOutStats:
    """Figures of a :func:`fan_out` run (also passed to its ``on_point`` callback)."""

    def __init__(self) -> None:
        self.points = 0
        self.frames = 0
        self.bytes = 0
        self.last_index = -1
        #: Scan points the keys showed ready but not yet published, at the last point.
        self.behind = 0
        self.started = time.monotonic()
        self.elapsed = 0.0
        self.finished = False
        self.timed_out = False

    @property
    def rate(self) -> float:
        """Scan points published per second so far."""
        return self.points / self.elapsed if self.elapsed > 0 else 0.0

    def __repr__(self) -> str:
        return (
            f"FanOutStats(points={self.points}, frames={self.frames}, bytes={self.bytes}, "
            f"elapsed={self.elapsed:.3f}, finished={self.finished}, timed_out={self.timed_out})"
        )


def fan_out(
    source: DataSource,
    queue: Any,
    *,
    on_point: Optional[Any] = None,
    send_timeout: Optional[float] = None,
) -> FanOutStats:
    """Publish every frame ``source`` yields into ``queue`` (a ``ringcast.BroadcastQueue``).

    Each frame becomes one array message whose type is the dataset's name (so readers can
    screen by dataset) and whose metadata (:func:`frame_info`) holds the scan ``index``, the
    ``slice`` (``[start, stop]`` per scan dimension) and the ``dataset`` name. Any number of
    processes then read the live frames from shared memory without opening the file;
    ``queue.reader(lossy=True)`` gives live views that never stall the follower.

    Returns when the source stops (finished flag or timeout); ``on_point(stats)`` is called
    after each scan point. ``send_timeout`` bounds how long a full queue may hold the follower
    (``Full`` after that); ``None`` waits for the slowest non-lossy reader.
    """
    st = FanOutStats()
    for point in source:
        meta_slice = [[int(sl.start), int(sl.stop)] for sl in point.slice_metadata]
        for name, frame in point.items():
            queue.send_array(
                frame,
                type=name,
                timeout=send_timeout,
                meta={"index": int(point.index), "slice": meta_slice, "dataset": name},
            )
            st.frames += 1
            st.bytes += int(np.asarray(frame).nbytes)
        st.points += 1
        st.last_index = int(point.index)
        st.behind = max(0, int(source.kf.current_max) - st.last_index)
        st.elapsed = time.monotonic() - st.started
        if on_point is not None:
            on_point(st)
    st.elapsed = time.monotonic() - st.started
    st.finished = source.is_scan_finished()
    st.timed_out = source.has_timed_out()
    return st


def frame_info(msg: Any) -> dict[str, Any]:
    """``{"index", "slice", "dataset"}`` of a frame published by :func:`fan_out` (a
    ``Message``, a ``Lease`` or a body)."""
    from ._array import array_meta

    info = array_meta(msg)
    if not isinstance(info, dict) or "index" not in info:
        raise ValueError("not a frame published by ringcast.swmr.fan_out")
    return info
