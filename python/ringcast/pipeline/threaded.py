"""Threaded pipelines: a chain of steps, each run by one or more worker threads.

This module reproduces the API and behaviour of ``paipa.threaded`` (paipa 0.3.3) without its
defects; see ``docs/pipeline.md`` and ``docs/migrating-from-paipa.md``.

Structure of a run::

    feeder ──ch0──▶ step 1 (N₁ workers) ──ch1──▶ step 2 (N₂ workers) ──▶ … ──▶ last step ──▶ count

* ``ch0`` is the pipeline's own input (unbounded, filled by ``put``/``put_all``), or a bounded
  channel filled by a feeder thread (``put_iterable``, or ``in_queue=``).
* Channels between steps hold at most ``threshold`` items and block (no polling).
* End of input travels as a state of the channel, not as an in-band marker: a step ends when
  its input is ended, empty, and none of its workers holds an item, so a retried item is never
  overtaken by the end of input.
* A failure that makes a step unable to go on (its generator raised, every worker died) aborts
  its input channel; the producers upstream then stop in turn, down to the feeder.

Process steps (:mod:`ringcast.pipeline.process`) plug in here: their runtime keeps the same
channel contract (take from ``inbox``, put to ``outbox``, end/abort, busy marks), see
:func:`_make_runtime`.
"""

from __future__ import annotations

import abc
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

from ..errors import InvalidArgument, PipelineStateError, RingcastError, Timeout
from ._channel import END, Channel, _Marker
from ._progress import make_progress

__all__ = [
    "AbstractStep",
    "AbstractIterStep",
    "TimedChunk",
    "Pipeline",
    "SkipEntry",
    "PipelineStateError",
    "StepFailure",
    "StepStats",
    "PipelineStats",
    "SiblingInfo",
    "NopTracker",
    "funcstep",
    "iterstep",
    "is_step",
]

logger = logging.getLogger("ringcast.pipeline")

_perf = time.perf_counter

#: Default of the ``max_retries`` keyword (as paipa): an item is tried at most 1 + 10 times.
DEFAULT_MAX_RETRIES = 10
#: Default of the ``threshold`` keyword (as paipa): room in each queue between steps.
DEFAULT_THRESHOLD = 64
#: Seconds of idle input after which :meth:`AbstractStep.in_queue_empty` is called (as paipa).
IDLE_HOOK_INTERVAL = 0.5
#: How often a feeder reading a user's ``in_queue`` checks whether the pipeline was stopped.
IN_QUEUE_POLL = 0.05
#: How often the progress display is refreshed.
PROGRESS_INTERVAL = 0.2


# ------------------------------------------------------------------------------------------------
# Exceptions and small public types


class SkipEntry(RingcastError):
    """Raise in :meth:`AbstractStep.process` (or a :func:`funcstep` function) to drop the item.

    Raised out of an :func:`iterstep` generator it ends that generator, which is a failure of
    the step (as in paipa).
    """


class SiblingInfo(NamedTuple):
    """What a step instance knows about its siblings (the other workers of the same step)."""

    index: int  # type: ignore[assignment]  # paipa's field name (shadows tuple.index)
    """Index of this worker among its siblings, from 0."""
    storage: dict
    """One dict shared by all siblings of the step."""
    threads: list
    """The sibling step instances (including this one)."""


class NopTracker:
    """A tracker that does nothing: the interface of the ``tracker=`` keyword.

    ``before_process(step)`` and ``after_process(step)`` are called around every
    :meth:`AbstractStep.process` call; an exception they raise is logged and ignored.
    """

    def before_process(self, step: Any) -> None:
        """Called before ``step.process(item)``."""

    def after_process(self, step: Any) -> None:
        """Called after ``step.process(item)`` returned."""


@dataclass(frozen=True)
class StepFailure:
    """One failure recorded during a run (``Pipeline.failures``)."""

    step: str
    """Name of the step (its class name; ``<source>``/``<in_queue>`` for the feeder)."""
    where: str
    """What failed: ``process``, ``process_meta``, ``iterate`` (a generator step), ``source``,
    ``in_queue``, or the name of a hook (``thread_initialize``, ``thread_shutdown``, ...)."""
    exception: BaseException
    """The exception, with its original traceback (``exception.__traceback__``)."""
    item: Any = None
    """The item whose processing failed, when there is one."""
    attempts: int = 0
    """How many times the item was tried (1 + retries); 0 when not about an item."""


@dataclass(frozen=True)
class StepStats:
    """Counters of one step (or of the feeder), summed over its workers."""

    name: str
    workers: int
    """Configured number of worker threads."""
    alive: int
    """Worker threads still running."""
    items_in: int
    """Items taken from the input (retries of an item are not counted again)."""
    items_out: int
    """Items passed on (for the last step: items that left the pipeline)."""
    failed: int
    """Items given up on after their last attempt (or 1 for a failed generator)."""
    retried: int
    """Attempts that failed and were retried."""
    skipped: int
    """Items dropped with :class:`SkipEntry`."""
    busy_seconds: float
    """Time spent in the user's code (``process``, the generator, the source iterable)."""
    queue_depth: int
    """Items waiting in the step's input right now."""
    queue_capacity: Optional[int]
    """Room of the step's input (None: unbounded)."""
    discarded: int
    """Items thrown away because the step's input was aborted after a failure or ``stop``."""


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot of a pipeline's counters (``Pipeline.stats()``)."""

    steps: tuple
    """One :class:`StepStats` per step, preceded by the feeder's when there is one."""
    count: int
    """Items that left the last step, over all runs (``Pipeline.count``)."""
    running: bool
    elapsed: float
    """Seconds since the current (or last) run started, until it ended."""
    failures: int
    """Failures recorded in the current (or last) run."""

    @property
    def items_per_s(self) -> float:
        """Items that left the last step per second in the current (or last) run."""
        last = self.steps[-1] if self.steps else None
        return (last.items_out / self.elapsed) if last and self.elapsed > 0 else 0.0


# ------------------------------------------------------------------------------------------------
# Internal item wrappers (user items travel unwrapped)


class _Retry:
    __slots__ = ("payload", "attempts")

    def __init__(self, payload: Any, attempts: int) -> None:
        self.payload = payload
        self.attempts = attempts


class _Meta:
    __slots__ = ("payload",)

    def __init__(self, payload: Any) -> None:
        self.payload = payload


_SPECIAL = frozenset({_Marker, _Retry, _Meta})


class _Discard:
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


class _WorkerStats:
    __slots__ = ("n_in", "n_out", "failed", "retried", "skipped", "meta", "busy")

    def __init__(self) -> None:
        self.n_in = self.n_out = self.failed = self.retried = self.skipped = self.meta = 0
        self.busy = 0.0


# ------------------------------------------------------------------------------------------------
# Steps


class AbstractStep(threading.Thread, metaclass=abc.ABCMeta):
    """Base class of threaded pipeline steps: each instance is one worker thread.

    Subclass it and implement :meth:`process`; list it in a pipeline as ``(Step, workers)`` or
    ``(Step, workers, options)``. The pipeline builds the instances, so do not construct them
    yourself. Hooks, in the order they are called:

    1. :meth:`step_initialize` - once per step, on sibling 0, in the thread that starts the run;
    2. :meth:`initialize` ``(**options)`` - on every sibling, in the same thread;
    3. :meth:`thread_initialize` - in the worker thread, before its first item;
    4. :meth:`process` for each item (:meth:`process_meta` for meta items);
    5. :meth:`thread_shutdown` - in the worker thread, after its last item;
    6. :meth:`step_shutdown` - once, in the last sibling to finish.

    An exception in any hook is recorded as a failure and raised by ``run()``/``stop()``.

    Attributes: ``options`` (the pipeline's extra keywords), ``sibling`` (:class:`SiblingInfo`),
    ``done`` (True once this worker finished).
    """

    def __init__(
        self,
        in_queue: Any,
        out_queue: Any,
        sibling: SiblingInfo,
        counter: Any = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        threshold: int = DEFAULT_THRESHOLD,
        tracker: Any = None,
        **kw: Any,
    ) -> None:
        super().__init__(name=f"ringcast-step-{type(self).__name__}-{sibling.index}")
        self._in_queue = in_queue
        self._out_queue = out_queue
        self.sibling = sibling
        self._counter = counter
        self._max_retries = max_retries
        self._threshold = threshold
        self._tracker = tracker
        self.options = kw
        self.done = False
        self._rc_runtime: Any = None
        self._rc_stats = _WorkerStats()

    # -- hooks (override as needed) -----------------------------------------------------------

    def step_initialize(self) -> None:
        """Called once per step, on sibling 0, before any :meth:`initialize`."""

    def initialize(self, **options: Any) -> None:
        """Called on every sibling with the step definition's options dict as keywords."""
        if options:
            raise TypeError(
                f"{type(self).__name__}.initialize() got options {sorted(options)} but does not "
                "take any: override initialize(self, **options) to use step options"
            )

    def thread_initialize(self) -> None:
        """Called in the worker thread before it takes its first item."""

    def thread_shutdown(self) -> None:
        """Called in the worker thread after its last item."""

    def step_shutdown(self) -> None:
        """Called once per step, by the last sibling to finish, after its thread_shutdown."""

    def in_queue_empty(self) -> None:
        """Called each time the input stayed empty for 0.5 s (only if overridden)."""

    @abc.abstractmethod
    def process(self, item: Any) -> Any:
        """Process one item and return one result (raise :class:`SkipEntry` to drop it)."""
        raise NotImplementedError

    def process_meta(self, payload: Any) -> Any:
        """Process a meta item (see :meth:`Pipeline.put_meta`); identity by default."""
        return payload

    def reenqueue(self, item: Any) -> None:
        """Put ``item`` back on this step's input as a new item (it is processed again)."""
        if not self._in_queue.requeue(item):
            raise PipelineStateError("reenqueue(): the step's input was aborted")

    # -- machinery -----------------------------------------------------------------------------

    def run(self) -> None:
        """Thread body (do not override): hooks around the work loop, failures recorded."""
        rt = self._rc_runtime
        try:
            started = False
            try:
                self.thread_initialize()
                started = True
            except BaseException as exc:  # noqa: BLE001 - recorded, raised by run()/stop()
                rt.fail(exc, "thread_initialize")
            if started:
                try:
                    self._rc_loop()
                except BaseException as exc:  # noqa: BLE001
                    self._rc_stats.failed += 1
                    rt.fail(exc, "process")
                    rt.abort_input()
                try:
                    self.thread_shutdown()
                except BaseException as exc:  # noqa: BLE001
                    rt.fail(exc, "thread_shutdown")
        finally:
            self.done = True
            rt.worker_exited(self)

    def _rc_call_tracked(self, item: Any) -> Any:
        tracker = self._rc_runtime.tracker
        try:
            tracker.before_process(self)
        except Exception:
            logger.error("tracker.before_process failed (ignored)", exc_info=True)
        result = self.process(item)
        try:
            tracker.after_process(self)
        except Exception:
            logger.error("tracker.after_process failed (ignored)", exc_info=True)
        return result

    def _rc_meta(self, payload: Any, put: Callable[[Any], bool]) -> bool:
        st = self._rc_stats
        try:
            result = self.process_meta(payload)
        except SkipEntry:
            return True
        except Exception as exc:
            self._rc_runtime.fail(exc, "process_meta", payload, 1)
            return True
        st.meta += 1
        return put(_Meta(result))

    def _rc_loop(self) -> None:
        """Take items one by one, process them, pass the results on."""
        rt = self._rc_runtime
        st = self._rc_stats
        inbox = rt.inbox
        get = inbox.get
        put = rt.outbox.put
        process = self.process if rt.tracker is None else self._rc_call_tracked
        timeout = rt.idle_timeout
        max_retries = rt.max_retries
        special = _SPECIAL
        perf = _perf
        done = False
        try:
            while True:
                item = get(done, timeout)
                done = True
                if type(item) in special:
                    cls = type(item)
                    if cls is _Marker:
                        done = False
                        if item is END:
                            return
                        self.in_queue_empty()
                        continue
                    if cls is _Meta:
                        if not self._rc_meta(item.payload, put):
                            rt.abort_input()
                            return
                        continue
                    attempt = item.attempts
                    item = item.payload
                else:
                    attempt = 0
                    st.n_in += 1
                t0 = perf()
                try:
                    result = process(item)
                except SkipEntry:
                    st.busy += perf() - t0
                    st.skipped += 1
                    continue
                except Exception as exc:
                    st.busy += perf() - t0
                    if attempt < max_retries:
                        st.retried += 1
                        logger.warning(
                            "%s failed on an item (attempt %d of %d), retrying",
                            rt.name,
                            attempt + 1,
                            max_retries + 1,
                            exc_info=True,
                        )
                        inbox.requeue(_Retry(item, attempt + 1))
                    else:
                        st.failed += 1
                        rt.fail(exc, "process", item, attempt + 1)
                    continue
                st.busy += perf() - t0
                if not put(result):
                    # The next step gave up (it failed): stop taking items, make upstream stop.
                    rt.abort_input()
                    return
                st.n_out += 1
        finally:
            inbox.leave(done)


class AbstractIterStep(AbstractStep):
    """Base of generator steps (see :func:`iterstep`): ``process(iterator)`` returns an iterable.

    The iterator yields this worker's share of the step's input and ends at the end of input;
    every value of the returned iterable is passed on. An exception out of the generator
    (including :class:`SkipEntry`) is a failure: the step's input is aborted, so the steps
    before it stop, and ``run()``/``stop()`` raise it.
    """

    @abc.abstractmethod
    def process(self, iterator: Any) -> Any:
        """Return an iterable of results computed from ``iterator`` (usually a generator)."""
        raise NotImplementedError

    def _rc_loop(self) -> None:
        rt = self._rc_runtime
        st = self._rc_stats
        inbox = rt.inbox
        put = rt.outbox.put
        perf = _perf
        held = [False]  # whether this worker holds an item taken from the inbox
        waited = [0.0]  # time spent waiting for input or for room downstream

        def pull() -> Any:
            get = inbox.get
            while True:
                t0 = perf()
                item = get(held[0])
                waited[0] += perf() - t0
                held[0] = True
                cls = type(item)
                if cls in _SPECIAL:
                    if item is END:
                        held[0] = False
                        return
                    if cls is _Meta:  # forwarded, not shown to the generator (as paipa)
                        t0 = perf()
                        ok = put(item)
                        waited[0] += perf() - t0
                        if not ok:
                            rt.abort_input()
                            return
                        continue
                    item = item.payload  # a _Retry: iter steps do not retry, but reenqueue
                st.n_in += 1
                yield item

        source = pull()
        start = perf()
        results: Any = None
        try:
            results = self.process(source)
            if results is not None:
                results = iter(results)
                for value in results:
                    t0 = perf()
                    ok = put(value)
                    waited[0] += perf() - t0
                    if not ok:
                        rt.abort_input()
                        break
                    st.n_out += 1
                close = getattr(results, "close", None)
                if close is not None:
                    close()  # a generator left early: run its cleanup now, in this thread
        except Exception as exc:
            st.failed += 1
            rt.fail(exc, "iterate")
            rt.abort_input()
        finally:
            st.busy += max(0.0, perf() - start - waited[0])
            source.close()
            inbox.leave(held[0])


class TimedChunk(AbstractStep):
    """Group items into lists of ``size``; flush a partial list after ``timeout`` seconds.

    Options (the step definition's dict): ``timeout`` (seconds, default 5) and ``size``
    (default 64). A partial list is also flushed before a meta item and at the end of input.
    Unlike paipa, the timeout is kept to the millisecond (paipa checked it every 0.5 s). Use
    one worker.
    """

    def initialize(self, timeout: float = 5, size: int = 64) -> None:  # type: ignore[override]
        """Take the ``timeout`` and ``size`` options."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidArgument(f"TimedChunk: size must be an int >= 1, got {size!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidArgument(f"TimedChunk: timeout must be a number > 0, got {timeout!r}")
        self._timeout = float(timeout)
        self._size = size

    def process(self, item: Any) -> Any:
        """Not used: TimedChunk groups items in its own loop."""
        return item

    def _rc_loop(self) -> None:
        rt = self._rc_runtime
        st = self._rc_stats
        inbox = rt.inbox
        put = rt.outbox.put
        size, timeout = self._size, self._timeout
        chunk: list = []
        first_at = 0.0
        done = False
        try:
            while True:
                wait = None if not chunk else max(0.0, first_at + timeout - time.monotonic())
                item = inbox.get(done, wait)
                done = True
                cls = type(item)
                if cls is _Marker or cls is _Meta or len(chunk) + 1 >= size:
                    if cls not in _SPECIAL:
                        st.n_in += 1
                        chunk.append(item)
                    if chunk:
                        ok = put(chunk)
                        st.n_out += 1
                        chunk = []
                        if not ok:
                            rt.abort_input()
                            return
                    if cls is _Marker:
                        done = False
                        if item is END:
                            return
                        continue
                    if cls is _Meta and not self._rc_meta(item.payload, put):
                        rt.abort_input()
                        return
                    continue
                if cls is _Retry:
                    item = item.payload
                else:
                    st.n_in += 1
                if not chunk:
                    first_at = time.monotonic()
                chunk.append(item)
        finally:
            inbox.leave(done)


def is_step(step: Any) -> bool:
    """True if ``step`` is a step class (a subclass of :class:`AbstractStep`)."""
    return isinstance(step, type) and issubclass(step, AbstractStep)


def _step_class_name(func: Any) -> str:
    name = getattr(func, "__name__", None)
    return name if isinstance(name, str) else type(func).__name__


def funcstep(func: Callable[[Any], Any], base: type = AbstractStep) -> type:
    """Make a step class whose :meth:`~AbstractStep.process` is ``func`` (one item in, one out).

    The class is named after the function. Raise :class:`SkipEntry` in ``func`` to drop an item.
    """
    if not callable(func):
        raise InvalidArgument(f"funcstep() needs a callable, got {func!r}")
    if not is_step(base):
        raise InvalidArgument(f"funcstep(): base must be a subclass of AbstractStep, got {base!r}")
    name = _step_class_name(func)
    ns = {
        "process": staticmethod(func),
        "__doc__": getattr(func, "__doc__", None),
        "__module__": getattr(func, "__module__", __name__),
        "__qualname__": getattr(func, "__qualname__", name),
    }
    return type(name, (base,), ns)


def iterstep(func: Callable[[Any], Any]) -> type:
    """Make a generator step: ``func(iterator)`` yields any number of results for its input.

    Use it to filter (do not yield), to expand (yield several), or to keep state across items.
    Each worker runs its own generator over its share of the input.
    """
    if not callable(func):
        raise InvalidArgument(f"iterstep() needs a callable, got {func!r}")
    return funcstep(func, base=AbstractIterStep)


# ------------------------------------------------------------------------------------------------
# Runtime of one run


class _StepRuntime:
    """One step of one run: its workers, channels and counters."""

    def __init__(
        self,
        run: _Run,
        name: str,
        cls: type,
        workers: int,
        step_options: Mapping,
        inbox: Channel,
        outbox: Any,
        pipeline_options: dict,
    ) -> None:
        self.run = run
        self.name = name
        self.cls = cls
        self.workers = workers
        self.step_options = dict(step_options)
        self.inbox = inbox
        self.outbox = outbox
        self.pipeline_options = pipeline_options
        tracker = pipeline_options.get("tracker")
        self.tracker = None if tracker is None or type(tracker) is NopTracker else tracker
        self.max_retries = pipeline_options.get("max_retries", DEFAULT_MAX_RETRIES)
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
        stats = [inst._rc_stats for inst in self.instances]
        return StepStats(
            name=self.name,
            workers=self.workers,
            alive=self.live,
            items_in=sum(s.n_in for s in stats),
            items_out=sum(s.n_out for s in stats),
            failed=sum(s.failed for s in stats),
            retried=sum(s.retried for s in stats),
            skipped=sum(s.skipped for s in stats),
            busy_seconds=sum(s.busy for s in stats),
            queue_depth=len(self.inbox),
            queue_capacity=self.inbox.capacity,
            discarded=self.inbox.discarded,
        )


class _Feeder:
    """A thread filling the first channel: from iterables (put_iterable) or a user's queue."""

    def __init__(self, run: _Run, name: str, out: Channel, daemon: bool) -> None:
        self.run = run
        self.name = name
        self.out = out
        self.stats = _WorkerStats()
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


class _IterableFeeder(_Feeder):
    def __init__(self, run: _Run, out: Channel, iterators: list, daemon: bool) -> None:
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


class _QueueFeeder(_Feeder):
    """Moves items from a user's queue into the pipeline until the pipeline is finished."""

    def __init__(self, run: _Run, out: Channel, user_queue: Any, daemon: bool) -> None:
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


class _Run:
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
        self.feeder: Optional[_Feeder] = None
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


def _make_runtime(
    run: _Run,
    cls: type,
    workers: int,
    opts: Mapping,
    inbox: Channel,
    outbox: Any,
    pipeline_options: dict,
) -> Any:
    """The runtime of one step definition: worker threads, or worker processes."""
    if getattr(cls, "_rc_process_step", False):
        from .process import _ProcStepRuntime

        return _ProcStepRuntime(run, cls, workers, opts, inbox, outbox, pipeline_options)
    return _StepRuntime(run, cls.__name__, cls, workers, opts, inbox, outbox, pipeline_options)


# ------------------------------------------------------------------------------------------------
# Validation


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise InvalidArgument(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _parse_steps(steps: Any) -> list:
    """Validate step definitions; return [(cls, workers, opts)]."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence):
        raise InvalidArgument(
            f"steps must be a list of (StepClass, workers[, options]) tuples, got {steps!r}"
        )
    if len(steps) == 0:
        raise InvalidArgument("steps is empty: a pipeline needs at least one step")
    parsed = []
    for i, d in enumerate(steps):
        if isinstance(d, (str, bytes)) or not isinstance(d, Sequence) or len(d) not in (2, 3):
            raise InvalidArgument(
                f"Invalid step definition: {d!r} (step {i}): expected (StepClass, workers) "
                "or (StepClass, workers, options)"
            )
        cls, workers = d[0], d[1]
        opts = d[2] if len(d) == 3 else {}
        if not is_step(cls):
            hint = (
                "; wrap a function with funcstep() or a generator function with iterstep()"
                if callable(cls)
                else ""
            )
            raise InvalidArgument(
                f"Unknown step {cls!r} (step {i}): must be a subclass of AbstractStep{hint}"
            )
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
            raise InvalidArgument(f"step {cls.__name__} (step {i}) does not implement {missing}")
        _check_int(f"workers of step {cls.__name__} (step {i})", workers, 1)
        validate = getattr(cls, "_rc_validate", None)
        if validate is not None:
            validate(f"step {i}")  # a process step: its settings, and that it pickles
        if not isinstance(opts, Mapping):
            raise InvalidArgument(
                f"options of step {cls.__name__} (step {i}) must be a dict, got {opts!r}"
            )
        bad = [k for k in opts if not isinstance(k, str)]
        if bad:
            raise InvalidArgument(
                f"options of step {cls.__name__} (step {i}) must have str keys, got {bad!r}"
            )
        parsed.append((cls, workers, opts))
    return parsed


# ------------------------------------------------------------------------------------------------
# Pipeline


class Pipeline:
    """A chain of threaded steps with flow control between them (paipa's ``Pipeline``).

    ``steps`` is a list of ``(StepClass, workers)`` or ``(StepClass, workers, options)``;
    ``options`` is passed to each instance's ``initialize(**options)``.

    Feed it with :meth:`put`/:meth:`put_all` + :meth:`finish`, with :meth:`put_iterable`
    (lazy), or through ``in_queue`` (a ``queue.Queue`` read while running). Run it with
    :meth:`run` (blocks), or in the background with :meth:`run_forever` ``(background=True)``
    or ``with pipeline:``, and :meth:`stop`. Every item is processed exactly once; a step
    exception (after ``max_retries`` retries) is raised, with its original traceback, by
    ``run()``, ``stop()`` and on leaving ``with``.

    :param in_queue: a queue (``get(timeout=)``/``put``) to read items from while running; the
        pipeline then runs until :meth:`stop` (or :meth:`finish`).
    :param daemon: daemon flag of every thread the pipeline starts.
    :param quiet: no summary log line (logger ``ringcast.pipeline``, DEBUG) after each run.
    :param fail_callback: called without arguments when a run ends with a failure.
    :param progress: show a progress display on stderr while running (tqdm if installed).
    :param kw: ``max_retries`` (default 10: an item is tried up to 11 times), ``threshold``
        (default 64: room in each queue between steps), ``tracker`` (see :class:`NopTracker`);
        every keyword is also passed to each step's constructor and lands in ``step.options``.
    """

    def __init__(
        self,
        steps: Sequence,
        in_queue: Any = None,
        daemon: bool = False,
        quiet: bool = False,
        fail_callback: Optional[Callable[[], Any]] = None,
        *,
        progress: bool = False,
        **kw: Any,
    ) -> None:
        _parse_steps(steps)
        if in_queue is not None and not (
            callable(getattr(in_queue, "get", None)) and callable(getattr(in_queue, "put", None))
        ):
            raise InvalidArgument(
                f"in_queue must be a queue with get(timeout=...) and put(), got {in_queue!r}"
            )
        if fail_callback is not None and not callable(fail_callback):
            raise InvalidArgument(f"fail_callback must be callable or None, got {fail_callback!r}")
        if "max_retries" in kw:
            _check_int("max_retries", kw["max_retries"], 0)
        if "threshold" in kw:
            _check_int("threshold", kw["threshold"], 1)
        tracker = kw.get("tracker")
        if tracker is not None and not (
            callable(getattr(tracker, "before_process", None))
            and callable(getattr(tracker, "after_process", None))
        ):
            raise InvalidArgument(
                f"tracker must have before_process(step) and after_process(step), got {tracker!r}"
            )
        self.steps = steps
        self.options = kw
        self.daemon = bool(daemon)
        self.quiet = bool(quiet)
        self.progress = bool(progress)
        self.ok = True
        self.count = 0
        self._fail_callback = fail_callback
        self._user_queue = in_queue
        self._lock = threading.RLock()
        self._input = Channel(None, "input")
        self._sources: list = []
        self._source_total: Optional[int] = 0
        self._n_put = 0
        self._fed = False
        self._finish_requested = False
        self._run: Optional[_Run] = None
        self._last_run: Optional[_Run] = None
        self._ever_started = False

    def __repr__(self) -> str:
        names = ", ".join(f"{c.__name__}x{w}" for c, w, _ in _parse_steps(self.steps))
        state = "running" if self._run is not None else "idle"
        return f"<ringcast.pipeline.Pipeline [{names}] {state} count={self.count}>"

    # -- feeding -------------------------------------------------------------------------------

    def _push(self, items: list) -> None:
        if self._user_queue is not None:
            if self._finish_requested:
                raise PipelineStateError("put() after finish()/stop(): the input is finished")
            for x in items:
                self._user_queue.put(x)
            return
        with self._lock:
            if self._sources:
                raise PipelineStateError(
                    "put()/put_all() cannot be combined with put_iterable() in the same run"
                )
            ch = self._input
            last = self._last_run
            if ch.aborted or (
                self._run is None and last is not None and last.background and not last.stopped
            ):
                run = self._run or last
                err = run.failures[0].exception if run is not None and run.failures else None
                raise PipelineStateError(
                    "put(): the pipeline stopped taking items (a step failed, it was aborted, "
                    "or its background run ended: call stop() before feeding a new run)"
                ) from err
            if not ch.put_unbounded(items):
                raise PipelineStateError(
                    "put() after finish()/stop(): the input is finished; the item would never "
                    "be processed (put it before finish(), or after run() has returned)"
                )
            self._n_put += len(items)

    def put(self, element: Any) -> None:
        """Add one item to the input (to ``in_queue`` if the pipeline has one).

        Raises :class:`PipelineStateError` after :meth:`finish`/:meth:`stop` (until the run
        ended) instead of dropping the item.
        """
        self._push([element])

    def put_all(self, iterable: Iterable) -> None:
        """Add every item of ``iterable`` now (eagerly: everything is held in memory)."""
        try:
            it = iter(iterable)
        except TypeError:
            raise InvalidArgument(f"put_all() needs an iterable, got {iterable!r}") from None
        while True:
            block = list(itertools.islice(it, 4096))
            if not block:
                return
            self._push(block)

    def put_iterable(self, iterable: Iterable) -> None:
        """Feed the items of ``iterable`` lazily, from a source thread, as the steps need them.

        The look-ahead is bounded: at most about ``threshold`` items per queue are pulled ahead
        of the last step. No :meth:`finish` is needed: the run ends when the iterable is
        exhausted. Calling it again chains another iterable after the first. An exception
        raised by the iterable is raised by ``run()``/``stop()``.
        """
        try:
            it = iter(iterable)
        except TypeError:
            raise InvalidArgument(f"put_iterable() needs an iterable, got {iterable!r}") from None
        with self._lock:
            if self._user_queue is not None:
                raise PipelineStateError(
                    "put_iterable() cannot be used with in_queue: put the items into the queue"
                )
            if self._run is not None:
                raise PipelineStateError("put_iterable() while the pipeline is running")
            if len(self._input):
                raise PipelineStateError(
                    "put_iterable() cannot be combined with put()/put_all() in the same run"
                )
            try:
                n: Optional[int] = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                n = None
            if self._source_total is not None:
                self._source_total = None if n is None else self._source_total + n
            self._sources.append(it)
            self._fed = True

    def put_meta(self, element: Any) -> None:
        """Add a meta item: it goes through each step's ``process_meta`` and is not counted."""
        if self._user_queue is not None:
            raise PipelineStateError("put_meta() is not available with in_queue")
        self._push([_Meta(element)])
        self._n_put -= 1

    def finish(self) -> None:
        """Declare the end of input: the run ends after everything put so far is processed.

        Idempotent. With ``put_iterable`` it is not needed (and does nothing else).
        """
        with self._lock:
            self._fed = True
            self._finish_requested = True
            if self._user_queue is not None:
                if self._run is not None:
                    self._run.input_finished.set()
            elif not self._sources:
                self._input.end()

    # -- running -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while a run is in progress (started and not yet ended)."""
        return self._run is not None

    @property
    def alive(self) -> bool:
        """True while a run is in progress and nothing has failed in it."""
        run = self._run
        return run is not None and not run.failures and not run.done.is_set()

    @property
    def failures(self) -> list:
        """The :class:`StepFailure` records of the current (or last) run, in order."""
        run = self._run or self._last_run
        return list(run.failures) if run is not None else []

    @property
    def error(self) -> Optional[BaseException]:
        """The first exception of the current (or last) run, or None."""
        f = self.failures
        return f[0].exception if f else None

    def _start(self, background: bool) -> _Run:
        with self._lock:
            if self._run is not None:
                raise PipelineStateError("the pipeline is already running")
            last = self._last_run
            if last is not None and last.background and not last.stopped:
                raise PipelineStateError(
                    "the previous background run was not stopped: call stop() first (it "
                    "reports that run's failure, if any)"
                )
            if not self._fed:
                raise PipelineStateError(
                    "Pipeline must be filled with entries: call finish() after put()/put_all(), "
                    "or use put_iterable(), run_forever() or `with pipeline:`"
                )
            parsed = _parse_steps(self.steps)
            opts = self.options
            threshold = opts.get("threshold", DEFAULT_THRESHOLD)
            run = _Run(background)
            if self._sources:
                first = Channel(threshold, "source")
                run.feeder = _IterableFeeder(run, first, self._sources, self.daemon)
            elif self._user_queue is not None:
                first = Channel(threshold, "in_queue")
                run.feeder = _QueueFeeder(run, first, self._user_queue, self.daemon)
                if self._finish_requested:
                    run.input_finished.set()
            else:
                first = self._input
            run.channels.append(first)
            inbox: Any = first
            for i, (cls, workers, sopts) in enumerate(parsed):
                is_last = i == len(parsed) - 1
                outbox: Any = _Discard() if is_last else Channel(threshold, f"after {cls.__name__}")
                if not is_last:
                    run.channels.append(outbox)
                run.steps.append(_make_runtime(run, cls, workers, sopts, inbox, outbox, opts))
                inbox = outbox
            # Hooks step_initialize/initialize run here, in the caller's thread; an exception
            # leaves the pipeline as it was (no thread started yet; process steps built so far
            # stop their worker processes).
            built: list = []
            try:
                for rt in run.steps:
                    built.append(rt)
                    rt.build()
            except BaseException:
                for rt in built:
                    rt.discard()
                raise
            for rt in run.steps:
                for inst in rt.instances:
                    inst.daemon = self.daemon
                    run.threads.append(inst)
            if run.feeder is not None:
                run.threads.insert(0, run.feeder.thread)
            run.live = len(run.threads)
            self._run = run
            self._ever_started = True
            started = 0
            try:
                for t in run.threads:
                    t.start()
                    started += 1
            except BaseException:
                run.abort()
                with run.lock:
                    run.live -= len(run.threads) - started
                    if run.live == 0:
                        run.done.set()
                for t in run.threads[:started]:
                    t.join()
                for rt in run.steps:
                    rt.discard()
                self._run = None
                self._reset_input()
                raise
            return run

    def _reset_input(self) -> None:
        """After a run: a fresh input for the next one (items put after it ended are kept)."""
        if self._input.ended or self._input.aborted:
            self._input = Channel(None, "input")
        self._sources = []
        self._source_total = 0
        self._n_put = len(self._input)
        self._fed = False
        self._finish_requested = False

    def _total(self) -> Optional[int]:
        """The number of items of the run, when it is known at its start."""
        if self._sources:
            return self._source_total
        if self._user_queue is None and self._input.ended:
            return self._n_put
        return None

    def _postfix(self, run: _Run) -> str:
        return " ".join(f"{rt.name}:{len(rt.inbox)}" for rt in run.steps)

    def _supervise(self, run: _Run) -> None:
        """Wait for the run to end (showing progress), then count and call back."""
        bar = make_progress(self._total(), "pipeline") if self.progress else None
        try:
            if bar is None:
                run.done.wait()
            else:
                while not run.done.wait(PROGRESS_INTERVAL):
                    bar.update(run.count(), self._postfix(run))
        except BaseException:
            # Interrupted (KeyboardInterrupt in a foreground run): stop at once, then re-raise.
            run.abort()
            run.done.wait()
            self._conclude(run, bar)
            raise
        self._conclude(run, bar)

    def _conclude(self, run: _Run, bar: Any) -> None:
        for t in run.threads:
            t.join()
        run.ended = _perf()
        counted = run.count()
        if bar is not None:
            bar.close(counted, self._postfix(run))
        with self._lock:
            run.counted = counted
            self.count += counted
            if run.failures:
                self.ok = False
            self._last_run = run
            self._run = None
            self._reset_input()
        if run.failures and self._fail_callback is not None:
            try:
                self._fail_callback()
            except Exception:
                logger.error("fail_callback raised (ignored)", exc_info=True)
        if not self.quiet:
            logger.debug(
                "pipeline run ended: %d items out in %.3f s, %d failures",
                counted,
                run.ended - run.started,
                len(run.failures),
            )
        run.finished.set()

    def _raise_failure(self, run: _Run) -> None:
        if run.failures and not run.reported:
            run.reported = True
            exc = run.failures[0].exception
            raise exc.with_traceback(exc.__traceback__)

    def run(self) -> None:
        """Run the pipeline in this thread until the input ends and everything is processed.

        Raises :class:`PipelineStateError` if the pipeline was not fed (see :meth:`finish`),
        and the first step exception, with its original traceback, if anything failed (after
        every other item was processed). May be called again for another batch; ``count``
        accumulates.
        """
        run = self._start(background=False)
        self._supervise(run)
        self._raise_failure(run)

    def run_forever(self, background: bool = False) -> None:
        """Run until :meth:`stop` (or :meth:`finish`) without needing a finish() first.

        ``background=True`` starts the run and returns at once; :meth:`stop` ends it.
        """
        with self._lock:
            if self._run is not None:
                raise PipelineStateError("the pipeline is already running")
            last = self._last_run
            if last is not None and last.background and not last.stopped:
                raise PipelineStateError(
                    "the previous background run was not stopped: call stop() first (it "
                    "reports that run's failure, if any)"
                )
            self._fed = True
        if not background:
            self.run()
            return
        run = self._start(background=True)
        run.supervisor = threading.Thread(
            target=self._supervise, args=(run,), name="ringcast-pipeline-supervisor"
        )
        run.supervisor.daemon = self.daemon
        run.supervisor.start()

    def stop(self, timeout: Optional[float] = None, drain: bool = True) -> None:
        """Finish the input, wait until everything put so far is processed, and raise failures.

        Raises the first step exception of a background run (once), with its original
        traceback. Calling it again, or after the run ended and was stopped, does nothing.
        With ``in_queue``, items still in the queue when stop() is called are processed;
        the pipeline stops reading the queue after that.

        :param timeout: raise :class:`ringcast.Timeout` if the run has not ended by then (it
            keeps running; call stop() again).
        :param drain: False discards whatever is still queued (each worker finishes its
            current item) instead of processing it.
        """
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise InvalidArgument(f"timeout must be None or a number >= 0, got {timeout!r}")
        with self._lock:
            run = self._run or self._last_run
            if run is not None and threading.current_thread() in run.threads:
                raise PipelineStateError("stop() called from a step of the same pipeline")
            if run is None:
                if self._ever_started:
                    return
                raise PipelineStateError(
                    "No background thread running: start the pipeline with "
                    "run_forever(background=True) or `with pipeline:` first"
                )
            if run.finished.is_set() and (run.stopped or not run.background):
                return
            if not run.done.is_set():
                if not drain:
                    run.abort()
                if self._user_queue is not None:
                    run.input_finished.set()
                elif run.feeder is None:
                    run.channels[0].end()
        if not run.finished.wait(timeout):
            raise Timeout(f"the pipeline did not finish within {timeout} s")
        if run.supervisor is not None and run.supervisor is not threading.current_thread():
            run.supervisor.join()
        run.stopped = True
        if run.background:
            self._raise_failure(run)

    def __enter__(self) -> Pipeline:
        """Start the pipeline in the background (``run_forever(background=True)``)."""
        self.run_forever(background=True)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Stop the pipeline: drain and raise a step exception (see :meth:`stop`).

        If the body raised, its exception propagates; the pipeline is drained first (aborted
        for KeyboardInterrupt/SystemExit) and a step failure is attached as a note.
        """
        if exc is None:
            self.stop()
            return
        interrupted = not isinstance(exc, Exception)
        try:
            self.stop(drain=not interrupted)
        except Exception as step_exc:
            if step_exc is not exc and hasattr(exc, "add_note"):
                exc.add_note(
                    f"ringcast.pipeline: a step also failed: {step_exc!r} (see Pipeline.failures)"
                )

    # -- observability -------------------------------------------------------------------------

    def stats(self) -> PipelineStats:
        """Counters of the current (or last) run: per step in/out/failed, queue depth, busy time."""
        run = self._run or self._last_run
        if run is None:
            return PipelineStats((), self.count, False, 0.0, 0)
        steps = [rt.snapshot() for rt in run.steps]
        if run.feeder is not None:
            steps.insert(0, run.feeder.snapshot())
        end = run.ended if run.ended is not None else _perf()
        running = self._run is run
        count = self.count + (run.count() if running else 0)
        return PipelineStats(tuple(steps), count, running, end - run.started, len(run.failures))
