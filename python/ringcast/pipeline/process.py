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

import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

from .. import _remote, _ringcast
from .._remote import RemoteError, RemoteTraceback
from ..errors import Empty, Full, InvalidArgument, MessageTooLarge, QueueShutDown
from ..errors import WorkerDied as _AnyWorkerDied
from ._channel import END
from .threaded import (
    AbstractStep,
    PipelineStateError,
    SiblingInfo,
    SkipEntry,
    StepFailure,
    StepStats,
    _Meta,
    _Retry,
    _step_class_name,
    _WorkerStats,
)

__all__ = ["ProcessStep", "procstep", "WorkerDied", "RemoteTraceback", "RemoteError"]

logger = logging.getLogger("ringcast.pipeline")

_perf = time.perf_counter

#: Start method of the worker processes unless a step sets its own.
DEFAULT_START_METHOD = "spawn"
#: Ring bytes of each of a process step's two queues (work and results), unless set.
DEFAULT_CAPACITY = 64 << 20
#: Items sent to each worker ahead of the one it is processing, unless set.
DEFAULT_PREFETCH = 2
#: Name of the consumer group of a step's workers on its work queue.
GROUP = "workers"
#: How long a waiting worker or collector sleeps before it checks on its peers.
_POLL = 0.05
#: How often the collector checks the worker processes while results flow.
_CHECK_INTERVAL = 0.1
#: How long a worker waits for an item before it checks that its parent is alive.
_WORKER_IDLE = 0.5
#: How long a worker that said goodbye gets to exit before it is terminated, then killed.
_JOIN_TIMEOUT = 10.0
#: Messages up to this size are assembled in memory and sent; larger ones are written in place.
_SMALL = 1 << 16

# Message kinds (byte 0 of every message).
_ITEM, _META = 1, 2  # parent -> worker
_OK, _OK_META, _SKIP, _ERR, _ERR_META, _REQUEUE, _READY, _INIT_FAIL, _BYE = range(10, 19)

# kind, 0, number of out-of-band buffers, worker index, seq, busy seconds, in-band length
_HDR = struct.Struct("<BBHIqdQ")
_ALIGN = 64


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
        worker.send(_REQUEUE, 0, item)

    @classmethod
    def _rc_validate(cls, where: str) -> None:
        """Check the class attributes and that the step can be sent to its workers."""
        method = _start_method(cls)
        if method not in multiprocessing.get_all_start_methods():
            raise InvalidArgument(
                f"process step {cls.__name__} ({where}): start_method must be one of "
                f"{multiprocessing.get_all_start_methods()}, got {method!r}"
            )
        cap = cls.capacity
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 4096:
            raise InvalidArgument(
                f"process step {cls.__name__} ({where}): capacity must be an int >= 4096, "
                f"got {cap!r}"
            )
        pre = cls.prefetch
        if isinstance(pre, bool) or not isinstance(pre, int) or pre < 0:
            raise InvalidArgument(
                f"process step {cls.__name__} ({where}): prefetch must be an int >= 0, got {pre!r}"
            )
        if method != "fork":
            _transport_spec(cls)


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
    name = _step_class_name(func)
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
    method = _start_method(cls)
    if method not in multiprocessing.get_all_start_methods():
        raise InvalidArgument(
            f"procstep(): start_method must be one of {multiprocessing.get_all_start_methods()}, "
            f"got {method!r}"
        )
    return cls


def _start_method(cls: type) -> str:
    method = getattr(cls, "start_method", None)
    return DEFAULT_START_METHOD if method is None else method


def _pickles(obj: Any) -> Optional[Exception]:
    try:
        pickle.dumps(obj, protocol=5)
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        return exc
    return None


def _transport_spec(cls: type) -> Any:
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
            f"processes ({type(err2).__name__}: {err2}). With the {_start_method(cls)!r} start "
            "method the function must be importable by name: define it at module level (not "
            "a lambda, a nested function or a local class's method), or use "
            "procstep(func, start_method='fork')"
        )
    raise InvalidArgument(
        f"process step {cls.__name__}: the class cannot be sent to the worker processes "
        f"({type(err).__name__}: {err}). With the {_start_method(cls)!r} start method it must be "
        "importable by name: define it at module level"
    )


# ------------------------------------------------------------------------------------------------
# Messages: a header, the in-band pickle, then each out-of-band buffer (64-byte aligned)


def _align(n: int) -> int:
    return n + (-n % _ALIGN)


def _encode(kind: int, seq: int, worker: int, busy: float, obj: Any) -> tuple[int, list]:
    """The size of the message and its parts ``[(offset, bytes-like)]``."""
    bufs: list = []
    inband = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    try:
        raws = [b.raw() for b in bufs]
    except BufferError:  # a non-contiguous buffer: pickle everything in-band
        raws = []
        inband = pickle.dumps(obj, protocol=5)
    lens = [r.nbytes for r in raws]
    head = _HDR.pack(kind, 0, len(raws), worker, seq, busy, len(inband))
    if raws:
        head += struct.pack(f"<{len(raws)}Q", *lens)
    off = _align(len(head))
    parts: list = [(0, head), (off, inband)]
    off += len(inband)
    for r in raws:
        off = _align(off)
        parts.append((off, r))
        off += r.nbytes
    return off, parts


def _assemble(total: int, parts: list) -> Any:
    if len(parts) == 2:
        head, inband = parts[0][1], parts[1][1]
        return b"".join((head, b"\0" * (parts[1][0] - len(head)), inband))
    data = bytearray(total)
    for off, p in parts:
        data[off : off + len(p)] = p
    return data


def _header(buf: Any) -> tuple:
    return _HDR.unpack_from(buf)


def _decode(buf: Any) -> tuple[int, int, int, float, Any]:
    """kind, seq, worker, busy seconds and the object of a message (copied out of ``buf``).

    Out-of-band buffers are copied once into new ``bytearray`` objects, so numpy arrays come out
    writable and nothing refers to the shared memory afterwards.
    """
    mv = memoryview(buf)
    try:
        kind, _, nbufs, worker, seq, busy, inlen = _HDR.unpack_from(mv)
        lens = struct.unpack_from(f"<{nbufs}Q", mv, _HDR.size) if nbufs else ()
        off = _align(_HDR.size + 8 * nbufs)
        inband = mv[off : off + inlen]
        off += inlen
        buffers = []
        for n in lens:
            off = _align(off)
            buffers.append(bytearray(mv[off : off + n]))
            off += n
        try:
            obj = pickle.loads(inband, buffers=buffers)
        finally:
            inband.release()
    finally:
        mv.release()
    return kind, seq, worker, busy, obj


def _send(q: Any, total: int, parts: list, keep_going: Callable[[], bool]) -> bool:
    """Send one message, waiting for room in bounded slices; False if ``keep_going()`` says stop.

    Raises ``MessageTooLarge`` if the message can never fit.
    """
    if total <= _SMALL:
        data = _assemble(total, parts)
        while True:
            try:
                q.send(data, timeout=_POLL)
                return True
            except Full:
                if not keep_going():
                    return False
    while True:
        try:
            res = q.reserve(total, timeout=_POLL)
        except Full:
            if not keep_going():
                return False
            continue
        with res:
            mv = memoryview(res)
            try:
                for off, p in parts:
                    n = p.nbytes if isinstance(p, memoryview) else len(p)
                    mv[off : off + n] = p
            finally:
                mv.release()
        return True


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        return f"was killed by {_signal_name(code)} (exit code {code})"
    return f"exited with code {code}"


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
        total, parts = _encode(kind, seq, self.index, busy, obj)
        if not _send(self.q, total, parts, self.parent_alive):
            raise SystemExit(3)  # the parent is gone: nobody reads the results any more

    def reply(self, kind: int, seq: int, obj: Any, busy: float) -> None:
        """Send a result; a result that cannot be sent becomes an error for the item."""
        try:
            self.send(kind, seq, obj, busy)
        except (SystemExit, QueueShutDown):
            raise
        except Exception as exc:  # noqa: BLE001 - unpicklable or too large: the item fails
            err_kind = _ERR_META if kind == _OK_META else _ERR
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


def _worker_main(
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
            link.send(_INIT_FAIL, 0, ("initialize", _remote.pack(exc)))
            return
        try:
            inst.thread_initialize()
        except Exception as exc:  # noqa: BLE001
            link.send(_INIT_FAIL, 0, ("thread_initialize", _remote.pack(exc)))
            return
        reader = work_q.reader(group=GROUP, name=f"worker-{index}")
        link.send(_READY, os.getpid(), None)
        _work_loop(inst, reader, link, cancel)
        reader.close()
        err = None
        try:
            inst.thread_shutdown()
        except Exception as exc:  # noqa: BLE001
            err = _remote.pack(exc)
        link.send(_BYE, 0, err)
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
            lease = reader.lease(timeout=_WORKER_IDLE)
        except Empty:
            if not link.parent_alive():
                raise SystemExit(3) from None
            if idle_hook:
                inst.in_queue_empty()
            continue
        except QueueShutDown:
            return
        try:
            if cancel.value:
                continue  # the run was aborted: drop what is still queued
            kind, seq, _, _, obj = _decode(lease)
            t0 = perf()
            if kind == _ITEM:
                try:
                    result = process(obj)
                except SkipEntry:
                    link.send(_SKIP, seq, None, perf() - t0)
                    continue
                except Exception as exc:  # noqa: BLE001 - sent back, retried by the parent
                    link.send(_ERR, seq, _remote.pack(exc), perf() - t0)
                    continue
                link.reply(_OK, seq, result, perf() - t0)
            else:
                try:
                    result = inst.process_meta(obj)
                except SkipEntry:
                    link.send(_SKIP, seq, None, perf() - t0)
                    continue
                except Exception as exc:  # noqa: BLE001
                    link.send(_ERR_META, seq, _remote.pack(exc), perf() - t0)
                    continue
                link.reply(_OK_META, seq, result, perf() - t0)
        except Exception as exc:  # noqa: BLE001 - e.g. the item did not unpickle here
            kind, seq = _header(lease)[0], _header(lease)[4]
            link.send(_ERR_META if kind == _META else _ERR, seq, _remote.pack(exc))
        finally:
            lease.release()  # ends the claim: the item is done


# ------------------------------------------------------------------------------------------------
# Runtime of a process step in one run (parent side)


class _Worker:
    __slots__ = ("index", "proc", "pid", "state", "died")

    def __init__(self, index: int, proc: Any) -> None:
        self.index = index
        self.proc = proc
        self.pid = 0
        self.state = "starting"  # -> "ready" -> "done"
        self.died = False  # done because its process ended without a goodbye


class _StepThread(threading.Thread):
    """The dispatcher or the collector thread of a process step."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(target=target, name=name)
        self._rc_stats = _WorkerStats()


class _ProcStepRuntime:
    """One process step of one run: its worker processes, queues, threads and counters."""

    def __init__(
        self,
        run: Any,
        cls: Any,
        workers: int,
        step_options: Mapping,
        inbox: Any,
        outbox: Any,
        pipeline_options: dict,
    ) -> None:
        self.run = run
        self.name = cls.__name__
        self.cls = cls
        self.workers = workers
        self.step_options = dict(step_options)
        self.inbox = inbox
        self.outbox = outbox
        self.pipeline_options = pipeline_options
        self.max_retries = pipeline_options.get("max_retries", 10)
        self.limit = workers * (1 + cls.prefetch)
        # The dispatcher, once the limit is reached, is woken when the items in flight fall to
        # this mark (still one queued ahead of the busy workers), then tops up several at once.
        self.low_water = max(min(self.limit - 1, workers + 1), self.limit // 2)
        self.cond = threading.Condition(threading.Lock())
        self.inflight: dict = {}  # seq -> (payload, attempts so far, is_meta)
        self.live = 0  # worker processes not yet done
        self.stopping = False  # no worker left: the dispatcher stops
        self.discarded = 0
        self.threads_left = 2
        self.procs: list = []
        self.instances: list = []
        self.proto: Any = None
        self.work_q: Any = None
        self.result_q: Any = None
        self.anchor: Any = None
        self.results: Any = None
        self.cancel: Any = None
        self.cleaned = False
        self.seq = itertools.count()

    # -- start ---------------------------------------------------------------------------------

    def build(self) -> None:
        """Create the queues, call step_initialize and start the workers (caller's thread)."""
        cls = self.cls
        self.proto = cls(
            self.inbox,
            self.outbox,
            sibling=SiblingInfo(0, {}, []),
            counter=None,
            **self.pipeline_options,
        )
        self.proto.sibling.threads.append(self.proto)
        if not hasattr(self.proto, "_rc_stats"):
            raise PipelineStateError(
                f"{self.name}.__init__ did not call AbstractStep.__init__ (super().__init__)"
            )
        if self.step_options and cls.initialize is AbstractStep.initialize:
            raise TypeError(
                f"{self.name}.initialize() got options {sorted(self.step_options)} but does not "
                "take any: override initialize(self, **options) to use step options"
            )
        method = _start_method(cls)
        options = {k: v for k, v in self.pipeline_options.items() if k != "tracker"}
        payload = (None if method == "fork" else _transport_spec(cls), options, self.step_options)
        blob: Optional[bytes] = None
        if method != "fork":
            try:
                blob = pickle.dumps(payload, protocol=5)
            except Exception as exc:
                raise InvalidArgument(
                    f"process step {self.name}: the step options or the pipeline's keyword "
                    f"arguments cannot be sent to the worker processes ({exc})"
                ) from exc
        self.proto.step_initialize()
        ctx: Any = multiprocessing.get_context(method)
        capacity = cls.capacity
        members = max(64, 2 * self.workers + 8)
        try:
            self.work_q = _ringcast.BroadcastQueue(
                create=True, capacity=capacity, max_members=members
            )
            # The parent's member of the group creates the group before any item is sent (a
            # worker that joins later still gets them); it never takes an item itself.
            self.anchor = self.work_q.reader(group=GROUP, name="anchor")
            self.result_q = _ringcast.BroadcastQueue(
                create=True, capacity=capacity, max_members=members
            )
            self.results = self.result_q.reader(name="collector")
            self.results.spin_us = 0.0  # results come ms apart: sleep at once, do not spin
            self.cancel = ctx.RawValue("b", 0)
            fork_spec = (cls, options, self.step_options) if method == "fork" else None
            for index in range(self.workers):
                proc = ctx.Process(
                    target=_worker_main,
                    args=(blob, fork_spec, index, self.work_q, self.result_q, self.cancel),
                    name=f"ringcast-proc-{self.name}-{index}",
                    daemon=True,
                )
                proc.start()
                self.procs.append(_Worker(index, proc))
        except BaseException:
            self.discard()
            raise
        self.live = self.workers
        self.instances = [
            _StepThread(self._dispatch, f"ringcast-proc-{self.name}-dispatch"),
            _StepThread(self._collect, f"ringcast-proc-{self.name}-collect"),
        ]

    # -- failures ------------------------------------------------------------------------------

    def fail(self, exc: BaseException, where: str, item: Any = None, attempts: int = 0) -> None:
        self.run.record(StepFailure(self.name, where, exc, item, attempts))

    def abort_input(self) -> None:
        """This step cannot go on: discard its input and stop every producer upstream."""
        self.run.abort_upto(self.inbox)

    def _keep_going(self) -> bool:
        return not (self.stopping or self.inbox.aborted)

    # -- dispatcher thread ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        st = self.instances[0]._rc_stats
        inbox = self.inbox
        cond = self.cond
        try:
            while True:
                with cond:
                    while len(self.inflight) >= self.limit and self._keep_going():
                        cond.wait(_CHECK_INTERVAL)
                    if not self._keep_going():
                        return
                item = inbox.get(False)  # one busy mark per item in flight
                if item is END:
                    return
                cls = type(item)
                if cls is _Retry:
                    payload, attempts, kind = item.payload, item.attempts, _ITEM
                elif cls is _Meta:
                    payload, attempts, kind = item.payload, 0, _META
                else:
                    payload, attempts, kind = item, 0, _ITEM
                    st.n_in += 1
                seq = next(self.seq)
                try:
                    total, parts = _encode(kind, seq, 0, 0.0, payload)
                except Exception as exc:
                    if hasattr(exc, "add_note"):
                        exc.add_note(
                            f"(the item could not be pickled for process step {self.name})"
                        )
                    self._send_failed(st, exc, payload, attempts, kind)
                    continue
                with cond:
                    self.inflight[seq] = (payload, attempts, kind == _META)
                try:
                    sent = _send(self.work_q, total, parts, self._keep_going)
                except MessageTooLarge as exc:
                    with cond:
                        self.inflight.pop(seq, None)
                    err = InvalidArgument(
                        f"process step {self.name}: an item of {total} bytes does not fit its "
                        f"work queue ({self.work_q.capacity} bytes): raise the step's capacity "
                        "(procstep(func, capacity=...))"
                    )
                    err.__cause__ = exc
                    self._send_failed(st, err, payload, attempts, kind)
                    continue
                del parts
                if not sent:
                    with cond:
                        if self.inflight.pop(seq, None) is not None:
                            self.discarded += 1
                            inbox.leave(True)
                    return
        except BaseException as exc:  # noqa: BLE001 - recorded, raised by run()/stop()
            self.fail(exc, "dispatch")
            self.abort_input()
        finally:
            if self.inbox.aborted or self.stopping:
                self.cancel.value = 1  # workers drop what is still queued
            try:
                self.work_q.shutdown()  # workers end once they have read what is queued
            except Exception:  # noqa: BLE001
                logger.debug("work queue shutdown failed", exc_info=True)
            self._thread_done()

    def _send_failed(
        self, st: _WorkerStats, exc: BaseException, payload: Any, attempts: int, kind: int
    ) -> None:
        """An item that cannot be sent (it does not pickle, or it is too large) fails at once."""
        if kind == _META:
            self.fail(exc, "process_meta", payload, 1)
        else:
            st.failed += 1
            self.fail(exc, "process", payload, attempts + 1)
        self.inbox.leave(True)

    # -- collector thread ----------------------------------------------------------------------

    def _collect(self) -> None:
        reader = self.results
        last_check = _perf()
        try:
            while self.live > 0:
                try:
                    lease = reader.lease(timeout=_POLL)
                except Empty:
                    self._check_workers()
                    last_check = _perf()
                    continue
                self._take(lease)
                if _perf() - last_check > _CHECK_INTERVAL:
                    self._check_workers()
                    last_check = _perf()
        except BaseException as exc:  # noqa: BLE001 - recorded, raised by run()/stop()
            self.fail(exc, "collect")
            self._all_gone()
            self.cancel.value = 1
            try:
                self.work_q.shutdown()
            except Exception:  # noqa: BLE001
                pass
        finally:
            self._thread_done()

    def _take(self, lease: Any) -> None:
        try:
            try:
                kind, seq, widx, busy, obj = _decode(lease)
            except Exception as exc:
                kind, _, _, widx, seq, busy, _ = _header(lease)
                if kind not in (_OK, _OK_META):
                    raise
                # A result that does not unpickle here (say its class is not importable in
                # this process): its item fails, without a retry.
                self._result_failed(seq, exc, kind == _OK_META)
                return
        finally:
            lease.release()
        self._handle(kind, seq, widx, busy, obj)

    def _result_failed(self, seq: int, exc: BaseException, meta: bool) -> None:
        with self.cond:
            entry = self.inflight.pop(seq, None)
            if len(self.inflight) <= self.low_water:
                self.cond.notify()
        if entry is None:
            return
        payload, attempts, _ = entry
        err = RemoteError(f"the result of an item could not be unpickled: {exc!r}")
        err.__cause__ = exc
        if meta:
            self.fail(err, "process_meta", payload, 1)
        else:
            self.instances[1]._rc_stats.failed += 1
            self.fail(err, "process", payload, attempts + 1)
        self.inbox.leave(True)

    def _drain_nowait(self) -> None:
        reader = self.results
        while True:
            try:
                lease = reader.lease(timeout=0)
            except Empty:
                return
            self._take(lease)

    def _origin(self, widx: int) -> str:
        if not 0 <= widx < len(self.procs):
            return f"a worker of process step {self.name}"
        w = self.procs[widx]
        return f"worker {widx} (pid {w.pid or w.proc.pid}) of process step {self.name}"

    def _handle(self, kind: int, seq: int, widx: int, busy: float, obj: Any) -> None:
        st = self.instances[1]._rc_stats
        if kind == _READY:
            w = self.procs[widx]
            w.pid = seq
            if w.state == "starting":
                w.state = "ready"
            return
        if kind == _INIT_FAIL:
            where, data = obj
            self.fail(_remote.unpack(data, self._origin(widx)), where)
            self.procs[widx].died = True  # it takes no item
            self._worker_done(widx)
            return
        if kind == _BYE:
            if obj is not None:
                self.fail(_remote.unpack(obj, self._origin(widx)), "thread_shutdown")
            self._worker_done(widx)
            return
        if kind == _REQUEUE:
            if not self.inbox.requeue(obj):
                logger.warning("%s: reenqueue() after the step's input was aborted", self.name)
            return
        with self.cond:
            entry = self.inflight.pop(seq, None)
            if len(self.inflight) <= self.low_water:
                self.cond.notify()
        if entry is None:
            # A result for an item already finished: a dead worker's item was redelivered
            # after its result had been sent. The first result counts.
            logger.debug("%s: duplicate result for item %d ignored", self.name, seq)
            return
        payload, attempts, is_meta = entry
        st.busy += busy
        try:
            if kind == _OK:
                if self.outbox.put(obj):
                    st.n_out += 1
                else:
                    self.abort_input()  # the next step gave up: make upstream stop
            elif kind == _OK_META:
                st.meta += 1
                if not self.outbox.put(_Meta(obj)):
                    self.abort_input()
            elif kind == _SKIP:
                if not is_meta:
                    st.skipped += 1
            elif kind == _ERR_META:
                self.fail(_remote.unpack(obj, self._origin(widx)), "process_meta", payload, 1)
            elif kind == _ERR:
                exc = _remote.unpack(obj, self._origin(widx))
                if attempts < self.max_retries and not self.inbox.aborted:
                    st.retried += 1
                    logger.warning(
                        "%s failed on an item (attempt %d of %d), retrying",
                        self.name,
                        attempts + 1,
                        self.max_retries + 1,
                        exc_info=exc,
                    )
                    # Back at the end of the input, before the busy mark is dropped: the end
                    # of input cannot overtake it.
                    if not self.inbox.requeue(_Retry(payload, attempts + 1)):
                        self.discarded += 1
                else:
                    st.failed += 1
                    self.fail(exc, "process", payload, attempts + 1)
        finally:
            self.inbox.leave(True)

    def _check_workers(self) -> None:
        """Report worker processes that ended without saying goodbye (never wait for them)."""
        for w in self.procs:
            if w.state == "done" or w.proc.exitcode is None:
                continue
            # It has exited: read what it sent before (its goodbye, results) first.
            self._drain_nowait()
            if w.state == "done":
                continue
            code = w.proc.exitcode
            pid = w.pid or w.proc.pid
            when = "before it started" if w.state == "starting" else "while the step was running"
            others = [o for o in self.procs if o is not w and not o.died]
            if w.state == "starting":
                hint = " (see its stderr: could its step be loaded in the new process?)"
            elif others:
                hint = "; the item it held, if any, is redelivered to another worker"
            else:
                hint = "; no worker of the step is left"
            exc = WorkerDied(
                f"worker {w.index} (pid {pid}) of process step {self.name} "
                f"{_describe_exit(code)} {when}{hint}",
                self.name,
                w.index,
                pid,
                code,
            )
            w.died = True
            self.fail(exc, "worker")
            self._worker_done(w.index)

    def _worker_done(self, widx: int) -> None:
        w = self.procs[widx]
        if w.state == "done":
            return
        w.state = "done"
        self.live -= 1
        if self.live == 0:
            self._all_gone()

    def _all_gone(self) -> None:
        """No worker is left: whatever the step still holds or receives is discarded."""
        with self.cond:
            self.stopping = True
            lost = len(self.inflight)
            self.inflight.clear()
            self.cond.notify_all()
        if lost or not self.inbox.exhausted:
            self.discarded += lost
            self.abort_input()
        for _ in range(lost):
            self.inbox.leave(True)

    # -- end -----------------------------------------------------------------------------------

    def _thread_done(self) -> None:
        with self.cond:
            self.threads_left -= 1
            last = self.threads_left == 0
        try:
            if last:
                self._finish()
        finally:
            self.run.thread_exited()

    def _finish(self) -> None:
        """After both threads: end the processes, close the queues, step_shutdown, end output."""
        with self.cond:
            lost = len(self.inflight)
            self.inflight.clear()
        self.discarded += lost
        self.discard()
        if not self.inbox.exhausted:
            self.abort_input()
        try:
            self.proto.step_shutdown()
        except BaseException as exc:  # noqa: BLE001
            self.fail(exc, "step_shutdown")
        self.outbox.end()

    def discard(self) -> None:
        """Stop the workers and remove the queues (idempotent; bounded waits only)."""
        if self.cleaned:
            return
        self.cleaned = True
        if self.cancel is not None and self.live > 0 and self.inbox.aborted:
            self.cancel.value = 1
        if self.work_q is not None:
            try:
                self.work_q.shutdown()
            except Exception:  # noqa: BLE001
                pass
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for w in self.procs:
            w.proc.join(max(0.0, deadline - time.monotonic()))
        for w in self.procs:
            if w.proc.exitcode is None:
                logger.error("%s: worker pid %s did not exit: terminated", self.name, w.proc.pid)
                w.proc.terminate()
                w.proc.join(2.0)
            if w.proc.exitcode is None:
                w.proc.kill()
                w.proc.join()
            w.proc.close()
        for h in (self.anchor, self.results, self.work_q, self.result_q):
            if h is not None:
                try:
                    h.close()
                except Exception:  # noqa: BLE001
                    logger.debug("closing a queue failed", exc_info=True)

    # -- observability -------------------------------------------------------------------------

    def snapshot(self) -> StepStats:
        stats = [t._rc_stats for t in self.instances]
        return StepStats(
            name=self.name,
            workers=self.workers,
            alive=max(0, self.live),
            items_in=sum(s.n_in for s in stats),
            items_out=sum(s.n_out for s in stats),
            failed=sum(s.failed for s in stats),
            retried=sum(s.retried for s in stats),
            skipped=sum(s.skipped for s in stats),
            busy_seconds=sum(s.busy for s in stats),
            queue_depth=len(self.inbox) + len(self.inflight),
            queue_capacity=self.inbox.capacity,
            discarded=self.inbox.discarded + self.discarded,
        )
