"""The parent side of a process step in one run: its worker processes, its two queues,
its dispatcher and collector threads, and its counters (see :mod:`.process` for the
structure, :mod:`.wire` for the messages)."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import pickle
import signal
import threading
import time
from typing import Any, Callable, Optional

from .. import _remote
from .._remote import RemoteError
from .._ringcast import BroadcastQueue
from ..errors import Empty, InvalidArgument, MessageTooLarge, PipelineStateError
from . import wire
from ._channel import END
from .process import GROUP, WorkerDied, start_method_of, transport_spec, worker_main
from .steps import (
    AbstractStep,
    Meta,
    Retry,
    SiblingInfo,
    StepFailure,
    StepRuntimeBase,
    StepStats,
    WorkerStats,
)

logger = logging.getLogger("ringcast.pipeline")

_perf = time.perf_counter

#: How often the collector checks the worker processes while results flow.
CHECK_INTERVAL = 0.1
#: How long a worker that said goodbye gets to exit before it is terminated, then killed.
JOIN_TIMEOUT = 10.0
#: How long a terminated worker gets to exit before it is killed.
TERMINATE_TIMEOUT = 2.0
#: Member slots of each of a step's queues: at least this many (and two per worker, plus 8).
MIN_MEMBERS = 64


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
        self._rc_stats = WorkerStats()


class ProcStepRuntime(StepRuntimeBase):
    """One process step of one run: its worker processes, queues, threads and counters."""

    def __post_init__(self) -> None:
        super().__post_init__()
        workers = self.workers
        self.limit = workers * (1 + self.cls.prefetch)
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
        method = start_method_of(cls)
        options = {k: v for k, v in self.pipeline_options.items() if k != "tracker"}
        payload = (None if method == "fork" else transport_spec(cls), options, self.step_options)
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
        members = max(MIN_MEMBERS, 2 * self.workers + 8)
        try:
            self.work_q = BroadcastQueue(create=True, capacity=capacity, max_members=members)
            # The parent's member of the group creates the group before any item is sent (a
            # worker that joins later still gets them); it never takes an item itself.
            self.anchor = self.work_q.reader(group=GROUP, name="anchor")
            self.result_q = BroadcastQueue(create=True, capacity=capacity, max_members=members)
            self.results = self.result_q.reader(name="collector")
            self.results.spin_us = 0.0  # results come ms apart: sleep at once, do not spin
            self.cancel = ctx.RawValue("b", 0)
            fork_spec = (cls, options, self.step_options) if method == "fork" else None
            for index in range(self.workers):
                proc = ctx.Process(
                    target=worker_main,
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
                        cond.wait(CHECK_INTERVAL)
                    if not self._keep_going():
                        return
                item = inbox.get(False)  # one busy mark per item in flight
                if item is END:
                    return
                cls = type(item)
                if cls is Retry:
                    payload, attempts, kind = item.payload, item.attempts, wire.ITEM
                elif cls is Meta:
                    payload, attempts, kind = item.payload, 0, wire.META
                else:
                    payload, attempts, kind = item, 0, wire.ITEM
                    st.n_in += 1
                seq = next(self.seq)
                try:
                    total, parts = wire.encode(kind, seq, 0, 0.0, payload)
                except Exception as exc:
                    if hasattr(exc, "add_note"):
                        exc.add_note(
                            f"(the item could not be pickled for process step {self.name})"
                        )
                    self._send_failed(st, exc, payload, attempts, kind)
                    continue
                with cond:
                    self.inflight[seq] = (payload, attempts, kind == wire.META)
                try:
                    sent = wire.send(self.work_q, total, parts, self._keep_going)
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
        self, st: WorkerStats, exc: BaseException, payload: Any, attempts: int, kind: int
    ) -> None:
        """An item that cannot be sent (it does not pickle, or it is too large) fails at once."""
        if kind == wire.META:
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
                    lease = reader.lease(timeout=wire.POLL)
                except Empty:
                    self._check_workers()
                    last_check = _perf()
                    continue
                self._take(lease)
                if _perf() - last_check > CHECK_INTERVAL:
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
                kind, seq, widx, busy, obj = wire.decode(lease)
            except Exception as exc:
                kind, _, _, widx, seq, busy, _ = wire.header(lease)
                if kind not in (wire.OK, wire.OK_META):
                    raise
                # A result that does not unpickle here (say its class is not importable in
                # this process): its item fails, without a retry.
                self._result_failed(seq, exc, kind == wire.OK_META)
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
        if kind == wire.READY:
            w = self.procs[widx]
            w.pid = seq
            if w.state == "starting":
                w.state = "ready"
            return
        if kind == wire.INIT_FAIL:
            where, data = obj
            self.fail(_remote.unpack(data, self._origin(widx)), where)
            self.procs[widx].died = True  # it takes no item
            self._worker_done(widx)
            return
        if kind == wire.BYE:
            if obj is not None:
                self.fail(_remote.unpack(obj, self._origin(widx)), "thread_shutdown")
            self._worker_done(widx)
            return
        if kind == wire.REQUEUE:
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
            if kind == wire.OK:
                if self.outbox.put(obj):
                    st.n_out += 1
                else:
                    self.abort_input()  # the next step gave up: make upstream stop
            elif kind == wire.OK_META:
                st.meta += 1
                if not self.outbox.put(Meta(obj)):
                    self.abort_input()
            elif kind == wire.SKIP:
                if not is_meta:
                    st.skipped += 1
            elif kind == wire.ERR_META:
                self.fail(_remote.unpack(obj, self._origin(widx)), "process_meta", payload, 1)
            elif kind == wire.ERR:
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
                    if not self.inbox.requeue(Retry(payload, attempts + 1)):
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
        deadline = time.monotonic() + JOIN_TIMEOUT
        for w in self.procs:
            w.proc.join(max(0.0, deadline - time.monotonic()))
        for w in self.procs:
            if w.proc.exitcode is None:
                logger.error("%s: worker pid %s did not exit: terminated", self.name, w.proc.pid)
                w.proc.terminate()
                w.proc.join(TERMINATE_TIMEOUT)
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
        return self.summed_stats(
            [t._rc_stats for t in self.instances],
            alive=max(0, self.live),
            queue_depth=len(self.inbox) + len(self.inflight),
            discarded=self.inbox.discarded + self.discarded,
        )
