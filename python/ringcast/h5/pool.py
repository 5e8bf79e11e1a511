"""The worker processes of the h5py read path: a pool shared by a Streamer's queues.

The pool's processes listen on a control queue for jobs (one per queue); each job is
served by a thread that reads the blocks of its dataset with ``read_direct`` straight into
the queue's slot ring. A block that cannot be read is published as an error record (see
:mod:`ringcast._remote`) in its slot.
"""

from __future__ import annotations

import itertools
import os
import pickle
import threading
import traceback
from typing import Any, Optional

import numpy as np

from .. import _remote
from .._ringcast import BroadcastQueue, _SlotRing
from ..errors import QueueShutDown, RingcastError
from .errors import ReadError
from .plan import Layout

#: How often an idle worker process checks that the process that started the pool lives.
PARENT_CHECK_INTERVAL = 1.0
#: How long a worker process waits for its serving threads, and the pool for each process,
#: when the pool stops (then the process is killed).
JOIN_TIMEOUT = 5.0
#: How long the pool waits for new worker processes to listen on the control queue.
START_TIMEOUT = 60.0
#: Ring bytes of the control queue carrying the jobs.
CONTROL_CAPACITY = 1 << 20

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
            lay = Layout(tuple(job["shape"]), job["dtype"], job["block_size"])
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


def _error_record(e: BaseException) -> bytes:
    """The record of a failed read: ``e`` if it comes back from a pickle, else a
    :class:`ReadError` naming it; with the traceback of ``e`` either way."""
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        e = ReadError(f"{type(e).__name__}: {e}")
    return _remote.pack(e, tb)


def worker_main(control: str, index: int, parent: int) -> None:
    """A pool process: serve every job addressed to it, until the pool stops."""
    _die_with_parent()
    q = BroadcastQueue(control, create=False)
    r = q.reader()
    threads: list[threading.Thread] = []
    try:
        while True:
            try:
                msg = r.recv(timeout=PARENT_CHECK_INTERVAL)
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
            t.join(JOIN_TIMEOUT)


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


#: prctl option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except Exception:
        pass


class Pool:
    """Worker processes shared by the queues of one Streamer (started once, kept warm)."""

    _ids = itertools.count()

    def __init__(self) -> None:
        import multiprocessing as mp

        self.ctx = mp.get_context("forkserver")
        self.control = BroadcastQueue(
            f"rc_h5_{os.getpid()}_{next(self._ids)}_{id(self):x}",
            create=True,
            capacity=CONTROL_CAPACITY,
        )
        self.procs: list[Any] = []
        self.lock = threading.Lock()

    def ensure(self, n: int) -> list[int]:
        """Start processes until there are ``n``; the indexes of the first ``n``."""
        with self.lock:
            while len(self.procs) < n:
                p = self.ctx.Process(
                    target=worker_main,
                    args=(self.control.name, len(self.procs), os.getpid()),
                    daemon=True,
                )
                p.start()
                self.procs.append(p)
            self.control.wait_for_readers(n, timeout=START_TIMEOUT)
            return list(range(n))

    def submit(self, job: dict[str, Any]) -> None:
        """Send a job to the processes it names."""
        self.control.send(pickle.dumps(job))

    def close(self) -> None:
        """Stop the processes (killing those that do not stop) and drop the control queue."""
        with self.lock:
            try:
                self.control.shutdown()
            except RingcastError:
                pass
            for p in self.procs:
                p.join(JOIN_TIMEOUT)
                if p.is_alive():
                    p.kill()
                    p.join(JOIN_TIMEOUT)
            self.procs.clear()
            self.control.close()
