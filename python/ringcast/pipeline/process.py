"""Process steps: a pipeline step whose workers are processes, fed through shared memory.

``(procstep(func), 2)`` in a :class:`~ringcast.pipeline.Pipeline`'s steps runs ``func`` in two
worker processes, so CPU-bound Python work scales with the cores. See ``docs/pipeline.md``.

Structure of one process step in one run::

    inbox ─▶ dispatcher thread ─▶ work queue (BroadcastQueue, consumer group "workers") ─▶ N
    worker processes ─▶ result queue (BroadcastQueue) ─▶ collector thread ─▶ outbox

* The dispatcher takes items from the step's input channel, pickles them (protocol 5; the
  buffers of numpy arrays and other out-of-band buffers are copied into the ring as they are,
  without being pickled) and sends them, each tagged with a sequence number. It keeps at most
  ``workers × (1 + prefetch)`` items in flight. It holds one busy mark of the input channel
  per item in flight, so the end of input cannot overtake an item that is still being
  processed or retried (the same contract as the threaded workers).
* The workers are the members of one consumer group of the work queue: each item goes to
  exactly one worker. A worker holds the item (a lease: its claim) until its result is sent, so
  the claim of a worker that dies is redelivered to another worker by the group.
* The collector matches results to items by sequence number, passes results on, retries
  failed items (at the end of the step's input, as threaded steps do), records failures with
  the remote traceback, and watches the worker processes: a worker that exits without saying
  goodbye is reported as :class:`WorkerDied` (its pid and exit code), never waited for.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import time
from typing import Any, Callable, Optional

from .. import _remote
from .._remote import RemoteError, RemoteTraceback
from ..errors import Empty, InvalidArgument, MessageTooLarge, PipelineStateError, QueueShutDown
from ..errors import WorkerDied as _AnyWorkerDied
from . import wire
from .steps import AbstractStep, SiblingInfo, SkipEntry, step_class_name

__all__ = ["ProcessStep", "procstep", "WorkerDied", "RemoteTraceback", "RemoteError"]

_perf = time.perf_counter

#: Start method of the worker processes unless a step sets its own.
DEFAULT_START_METHOD = "spawn"
#: Ring bytes of each of a process step's two queues (work and results), unless set.
DEFAULT_CAPACITY = 16 << 20
#: The smallest ``capacity`` a process step may set.
MIN_CAPACITY = 4096
#: Items sent to each worker ahead of the one it is processing, unless set.
DEFAULT_PREFETCH = 2
#: Name of the consumer group of a step's workers on its work queue.
GROUP = "workers"
#: How long a worker waits for an item before it checks that its parent is alive.
WORKER_IDLE = 0.5
#: Exit status of a worker whose parent is gone (nobody reads its results any more).
ORPHAN_EXIT = 3


class WorkerDied(_AnyWorkerDied):
    """A worker process of a process step exited without finishing (killed, crashed, exited).

    A subclass of ``ringcast.WorkerDied`` (a ``RuntimeError``). Attributes: ``step`` (the
    step's name), ``index`` (the worker's number), ``pid`` and ``exitcode`` (negative: the
    number of the signal that killed it).
    """

    def __init__(
        self,
        message: str,
        step: str = "",
        index: int = -1,
        pid: int = 0,
        exitcode: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.index = index
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.step, self.index, self.pid, self.exitcode))


# ------------------------------------------------------------------------------------------------
# Steps


class ProcessStep(AbstractStep):
    """Base class of process steps: each worker is a process; implement :meth:`process`.

    List it as ``(Step, workers)`` or ``(Step, workers, options)``. The class must be
    importable by name in the worker processes (defined at module level), and the items, the
    results and the options must pickle. Hooks and where they run:

    * :meth:`step_initialize` - once, in the parent, in the thread that starts the run;
    * :meth:`initialize` ``(**options)`` - in each worker process, on its own instance;
    * :meth:`thread_initialize` - in each worker process, before its first item;
    * :meth:`process` / :meth:`process_meta` - in the worker processes;
    * :meth:`thread_shutdown` - in each worker process, after its last item;
    * :meth:`step_shutdown` - once, in the parent, after every worker process has ended.

    Class attributes: ``start_method`` (None: ``"spawn"``; or ``"forkserver"``, ``"fork"``),
    ``capacity`` (bytes of each of the step's two shared-memory queues; an item or a result
    must fit), ``prefetch`` (items queued for each worker ahead of its current one).
    """

    _rc_process_step = True
    start_method: Optional[str] = None
    capacity: int = DEFAULT_CAPACITY
    prefetch: int = DEFAULT_PREFETCH

    def reenqueue(self, item: Any) -> None:
        """Put ``item`` at the end of this step's input as a new item (from a worker)."""
        worker = getattr(self, "_rc_worker", None)
        if worker is None:
            raise PipelineStateError("reenqueue() is only available in a worker process")
        worker.send(wire.REQUEUE, 0, item)

    @classmethod
    def _rc_validate(cls, where: str) -> None:
        """Check the class attributes and that the step can be sent to its workers."""
        method = start_method_of(cls)
        if method not in multiprocessing.get_all_start_methods():
            raise InvalidArgument(
                f"process step {cls.__name__} ({where}): start_method must be one of "
                f"{multiprocessing.get_all_start_methods()}, got {method!r}"
            )
        cap = cls.capacity
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < MIN_CAPACITY:
            raise InvalidArgument(
                f"process step {cls.__name__} ({where}): capacity must be an int >= "
                f"{MIN_CAPACITY}, got {cap!r}"
            )
        pre = cls.prefetch
        if isinstance(pre, bool) or not isinstance(pre, int) or pre < 0:
            raise InvalidArgument(
                f"process step {cls.__name__} ({where}): prefetch must be an int >= 0, got {pre!r}"
            )
        if method != "fork":
            transport_spec(cls)


def procstep(
    func: Callable[[Any], Any],
    *,
    start_method: Optional[str] = None,
    capacity: Optional[int] = None,
    prefetch: Optional[int] = None,
) -> type:
    """Make a process step whose :meth:`~ProcessStep.process` is ``func`` (one item in, one out).

    ``(procstep(func), 4)`` runs ``func`` in 4 worker processes. With the default start
    method (spawn) ``func`` must be importable by name: a module-level function, not a lambda
    or a nested function. Items and results travel pickled through shared memory; numpy
    arrays (and other pickle-5 out-of-band buffers) travel as raw bytes. See
    :class:`ProcessStep` for ``start_method``, ``capacity`` and ``prefetch``.
    """
    if not callable(func):
        raise InvalidArgument(f"procstep() needs a callable, got {func!r}")
    name = step_class_name(func)
    ns: dict = {
        "process": staticmethod(func),
        "_rc_func": staticmethod(func),
        "__doc__": getattr(func, "__doc__", None),
        "__module__": getattr(func, "__module__", __name__),
        "__qualname__": getattr(func, "__qualname__", name),
    }
    if start_method is not None:
        ns["start_method"] = start_method
    if capacity is not None:
        ns["capacity"] = capacity
    if prefetch is not None:
        ns["prefetch"] = prefetch
    cls = type(name, (ProcessStep,), ns)
    # Attributes are checked now (not whether func pickles: a decorated function is bound to
    # its name only after this returns); Pipeline() checks the rest.
    method = start_method_of(cls)
    if method not in multiprocessing.get_all_start_methods():
        raise InvalidArgument(
            f"procstep(): start_method must be one of {multiprocessing.get_all_start_methods()}, "
            f"got {method!r}"
        )
    return cls


def start_method_of(cls: type) -> str:
    method = getattr(cls, "start_method", None)
    return DEFAULT_START_METHOD if method is None else method


def _pickles(obj: Any) -> Optional[Exception]:
    try:
        pickle.dumps(obj, protocol=5)
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        return exc
    return None


def transport_spec(cls: type) -> Any:
    """What is sent to the workers to rebuild the step: the class, or procstep's function.

    A class pickles by reference (its module and name). A ``procstep`` class is found under
    that name when ``procstep`` was used as a decorator; otherwise its function is sent.
    """
    err = _pickles(cls)
    if err is None:
        return cls
    func = getattr(cls, "_rc_func", None)
    if func is not None:
        err2 = _pickles(func)
        if err2 is None:
            return func
        raise InvalidArgument(
            f"process step {cls.__name__}: its function {func!r} cannot be sent to the worker "
            f"processes ({type(err2).__name__}: {err2}). With the {start_method_of(cls)!r} start "
            "method the function must be importable by name: define it at module level (not "
            "a lambda, a nested function or a local class's method), or use "
            "procstep(func, start_method='fork')"
        )
    raise InvalidArgument(
        f"process step {cls.__name__}: the class cannot be sent to the worker processes "
        f"({type(err).__name__}: {err}). With the {start_method_of(cls)!r} start method it must be "
        "importable by name: define it at module level"
    )


# ------------------------------------------------------------------------------------------------
# Worker process


class _WorkerLink:
    """A worker's side of the result queue."""

    def __init__(self, q: Any, index: int) -> None:
        self.q = q
        self.index = index
        parent = multiprocessing.parent_process()
        self._parent_alive: Callable[[], bool] = (
            parent.is_alive if parent is not None else (lambda: True)
        )

    def parent_alive(self) -> bool:
        return self._parent_alive()

    def send(self, kind: int, seq: int, obj: Any, busy: float = 0.0) -> None:
        total, parts = wire.encode(kind, seq, self.index, busy, obj)
        if not wire.send(self.q, total, parts, self.parent_alive):
            raise SystemExit(ORPHAN_EXIT)  # the parent is gone: nobody reads the results any more

    def reply(self, kind: int, seq: int, obj: Any, busy: float) -> None:
        """Send a result; a result that cannot be sent becomes an error for the item."""
        try:
            self.send(kind, seq, obj, busy)
        except (SystemExit, QueueShutDown):
            raise
        except Exception as exc:  # noqa: BLE001 - unpicklable or too large: the item fails
            err_kind = wire.ERR_META if kind == wire.OK_META else wire.ERR
            if isinstance(exc, MessageTooLarge):
                exc = InvalidArgument(
                    f"the result does not fit the step's result queue ({self.q.capacity} bytes): "
                    "raise the step's capacity"
                )
            else:
                msg = f"the result could not be sent to the parent: {exc}"
                try:
                    exc = type(exc)(msg)
                except Exception:  # noqa: BLE001 - a type that takes other arguments
                    exc = RemoteError(f"{type(exc).__name__}: {msg}")
            self.send(err_kind, seq, _remote.pack(exc), busy)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def worker_main(
    blob: Optional[bytes],
    spec: Any,
    index: int,
    work_q: Any,
    result_q: Any,
    cancel: Any,
) -> None:
    """Body of a worker process (``blob`` pickles ``(spec, options, step_options)``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, _on_sigterm)  # terminate(): leave the queues cleanly
    link = _WorkerLink(result_q, index)
    reader = None
    try:
        try:
            if blob is not None:
                spec, options, step_options = pickle.loads(blob)
            else:
                spec, options, step_options = spec
            cls = spec if isinstance(spec, type) else procstep(spec)
            inst = cls(None, None, sibling=SiblingInfo(index, {}, []), **options)
            inst._rc_worker = link
            inst.initialize(**step_options)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            link.send(wire.INIT_FAIL, 0, ("initialize", _remote.pack(exc)))
            return
        try:
            inst.thread_initialize()
        except Exception as exc:  # noqa: BLE001
            link.send(wire.INIT_FAIL, 0, ("thread_initialize", _remote.pack(exc)))
            return
        reader = work_q.reader(group=GROUP, name=f"worker-{index}")
        link.send(wire.READY, os.getpid(), None)
        _work_loop(inst, reader, link, cancel)
        reader.close()
        err = None
        try:
            inst.thread_shutdown()
        except Exception as exc:  # noqa: BLE001
            err = _remote.pack(exc)
        link.send(wire.BYE, 0, err)
    finally:
        if reader is not None:
            reader.close()
        work_q.close()
        result_q.close()


def _work_loop(inst: Any, reader: Any, link: _WorkerLink, cancel: Any) -> None:
    idle_hook = type(inst).in_queue_empty is not AbstractStep.in_queue_empty
    process = inst.process
    perf = _perf
    while True:
        try:
            lease = reader.lease(timeout=WORKER_IDLE)
        except Empty:
            if not link.parent_alive():
                raise SystemExit(ORPHAN_EXIT) from None
            if idle_hook:
                inst.in_queue_empty()
            continue
        except QueueShutDown:
            return
        try:
            if cancel.value:
                continue  # the run was aborted: drop what is still queued
            kind, seq, _, _, obj = wire.decode(lease)
            t0 = perf()
            if kind == wire.ITEM:
                try:
                    result = process(obj)
                except SkipEntry:
                    link.send(wire.SKIP, seq, None, perf() - t0)
                    continue
                except Exception as exc:  # noqa: BLE001 - sent back, retried by the parent
                    link.send(wire.ERR, seq, _remote.pack(exc), perf() - t0)
                    continue
                link.reply(wire.OK, seq, result, perf() - t0)
            else:
                try:
                    result = inst.process_meta(obj)
                except SkipEntry:
                    link.send(wire.SKIP, seq, None, perf() - t0)
                    continue
                except Exception as exc:  # noqa: BLE001
                    link.send(wire.ERR_META, seq, _remote.pack(exc), perf() - t0)
                    continue
                link.reply(wire.OK_META, seq, result, perf() - t0)
        except Exception as exc:  # noqa: BLE001 - e.g. the item did not unpickle here
            kind, seq = wire.header(lease)[0], wire.header(lease)[4]
            link.send(wire.ERR_META if kind == wire.META else wire.ERR, seq, _remote.pack(exc))
        finally:
            lease.release()  # ends the claim: the item is done
