"""The runtime of a pipeline's run with threads: one :class:`Run`, the :class:`StepRuntime`
of each threaded step (its worker threads, channels and counters), and the feeder thread
filling the first channel (:class:`IterableFeeder`, :class:`QueueFeeder`).

A process step has a runtime of its own with the same contract
(:mod:`.process_runtime`): take from ``inbox``, put to ``outbox``, end/abort, busy marks.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

from ..errors import PipelineStateError
from ._channel import Channel
from .steps import (
    IDLE_HOOK_INTERVAL,
    AbstractStep,
    NopTracker,
    SiblingInfo,
    StepFailure,
    StepRuntimeBase,
    StepStats,
    WorkerStats,
)

_perf = time.perf_counter

#: How often a feeder reading a user's ``in_queue`` checks whether the pipeline was stopped.
IN_QUEUE_POLL = 0.05


class Discard:
    """Output of the last step: items are counted by the workers and dropped."""

    __slots__ = ()
    capacity = None

    def put(self, item: Any) -> bool:
        return True

    def end(self) -> None:
        pass

    def abort(self) -> int:
        return 0

    def __len__(self) -> int:
        return 0


class StepRuntime(StepRuntimeBase):
    """One step of one run: its workers, channels and counters."""

    run: Run
    inbox: Channel

    def __post_init__(self) -> None:
        super().__post_init__()
        tracker = self.pipeline_options.get("tracker")
        self.tracker = None if tracker is None or type(tracker) is NopTracker else tracker
        self.idle_timeout: Optional[float] = None
        self.lock = threading.Lock()
        self.live = 0
        self.instances: list = []
        self.storage: dict = {}

    def build(self) -> None:
        """Construct the workers and call step_initialize/initialize (caller's thread)."""
        for index in range(self.workers):
            inst = self.cls(
                self.inbox,
                self.outbox,
                sibling=SiblingInfo(index, self.storage, self.instances),
                counter=None,
                **self.pipeline_options,
            )
            inst._rc_runtime = self
            if not hasattr(inst, "_rc_stats"):
                raise PipelineStateError(
                    f"{self.name}.__init__ did not call AbstractStep.__init__ (super().__init__)"
                )
            if index == 0:
                inst.step_initialize()
            inst.initialize(**self.step_options)
            self.instances.append(inst)
        if type(self.instances[0]).in_queue_empty is not AbstractStep.in_queue_empty:
            self.idle_timeout = IDLE_HOOK_INTERVAL
        self.live = self.workers

    def fail(self, exc: BaseException, where: str, item: Any = None, attempts: int = 0) -> None:
        self.run.record(StepFailure(self.name, where, exc, item, attempts))

    def abort_input(self) -> None:
        """This step cannot go on: discard its input and stop every producer upstream."""
        self.run.abort_upto(self.inbox)

    def worker_exited(self, worker: AbstractStep) -> None:
        with self.lock:
            self.live -= 1
            last = self.live == 0
        try:
            if last:
                if not self.inbox.exhausted:
                    # The step stopped before its input ended (every worker failed, or a
                    # generator stopped early): stop the producers upstream.
                    self.abort_input()
                try:
                    worker.step_shutdown()
                except BaseException as exc:  # noqa: BLE001
                    self.fail(exc, "step_shutdown")
                self.outbox.end()
        finally:
            self.run.thread_exited()

    def discard(self) -> None:
        """The run did not start: release what build() acquired (nothing for threads)."""

    def snapshot(self) -> StepStats:
        return self.summed_stats(
            [inst._rc_stats for inst in self.instances],
            alive=self.live,
            queue_depth=len(self.inbox),
            discarded=self.inbox.discarded,
        )


class Feeder:
    """A thread filling the first channel: from iterables (put_iterable) or a user's queue."""

    def __init__(self, run: Run, name: str, out: Channel, daemon: bool) -> None:
        self.run = run
        self.name = name
        self.out = out
        self.stats = WorkerStats()
        self.alive = 1
        self.thread = threading.Thread(
            target=self._main, name=f"ringcast-pipeline-{name.strip('<>')}", daemon=daemon
        )

    def _main(self) -> None:
        try:
            self.feed()
        except BaseException as exc:  # noqa: BLE001 - recorded, raised by run()/stop()
            self.stats.failed += 1
            self.run.record(StepFailure(self.name, self.name.strip("<>"), exc))
        finally:
            self.alive = 0
            self.out.end()
            self.run.thread_exited()

    def feed(self) -> None:
        raise NotImplementedError

    def snapshot(self) -> StepStats:
        s = self.stats
        return StepStats(self.name, 1, self.alive, 0, s.n_out, s.failed, 0, 0, s.busy, 0, 0, 0)


class IterableFeeder(Feeder):
    def __init__(self, run: Run, out: Channel, iterators: list, daemon: bool) -> None:
        super().__init__(run, "<source>", out, daemon)
        self.iterators = iterators

    def feed(self) -> None:
        st = self.stats
        put = self.out.put
        perf = _perf
        for it in self.iterators:
            t0 = perf()
            for value in it:
                st.busy += perf() - t0
                if not put(value):
                    return
                st.n_out += 1
                t0 = perf()
            st.busy += perf() - t0


class QueueFeeder(Feeder):
    """Moves items from a user's queue into the pipeline until the pipeline is finished."""

    def __init__(self, run: Run, out: Channel, user_queue: Any, daemon: bool) -> None:
        super().__init__(run, "<in_queue>", out, daemon)
        self.user_queue = user_queue

    def _forward(self, item: Any) -> bool:
        """Pass ``item`` on; if the pipeline was aborted, give it back to the user's queue."""
        if self.out.put(item):
            self.stats.n_out += 1
            return True
        try:
            self.user_queue.put(item, block=False)
        except Exception:  # a full (bounded) user queue: the item is counted as discarded
            return False
        self.out.discarded -= 1  # not lost: back in the user's queue
        return False

    def feed(self) -> None:
        import queue as _queue

        q = self.user_queue
        out = self.out
        finish = self.run.input_finished
        while not out.aborted:
            if finish.is_set():
                # Drain what was put before finish()/stop(), then end.
                while not out.aborted:
                    try:
                        item = q.get(timeout=0)  # paipa's contract: get(timeout=) only
                    except _queue.Empty:
                        return
                    if not self._forward(item):
                        return
                return
            try:
                item = q.get(timeout=IN_QUEUE_POLL)
            except _queue.Empty:
                continue
            if not self._forward(item):
                return


class Run:
    """State of one run of a pipeline."""

    def __init__(self, background: bool) -> None:
        self.background = background
        self.lock = threading.Lock()
        self.failures: list = []
        self.live = 0
        self.done = threading.Event()  # every thread of the run has exited
        self.finished = threading.Event()  # counted, callbacks called: run() may return
        self.input_finished = threading.Event()  # for in_queue feeding
        self.steps: list = []
        self.feeder: Optional[Feeder] = None
        self.channels: list = []
        self.threads: list = []
        self.supervisor: Optional[threading.Thread] = None
        self.started = _perf()
        self.ended: Optional[float] = None
        self.reported = False
        self.stopped = False  # stop() returned (a background run's input is released)
        self.counted = 0

    def record(self, failure: StepFailure) -> None:
        with self.lock:
            self.failures.append(failure)

    def thread_exited(self) -> None:
        with self.lock:
            self.live -= 1
            if self.live == 0:
                self.done.set()

    def abort(self) -> None:
        """Stop everything: discard queued items, make every thread finish its current item."""
        self.input_finished.set()
        for ch in self.channels:
            ch.abort()

    def abort_upto(self, channel: Channel) -> None:
        """Abort ``channel`` and every channel before it (the steps feeding it stop)."""
        for ch in self.channels:
            ch.abort()
            if ch is channel:
                return

    def count(self) -> int:
        if not self.steps:
            return 0
        return sum(inst._rc_stats.n_out for inst in self.steps[-1].instances)
