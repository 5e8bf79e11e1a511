"""Pipeline steps and their statistics: the step classes users subclass or make
(:class:`AbstractStep`, :class:`AbstractIterStep`, :class:`TimedChunk`, :func:`funcstep`,
:func:`iterstep`), what they know of each other (:class:`SiblingInfo`), what a run records
(:class:`StepFailure`, :class:`StepStats`, :class:`PipelineStats`), and the wrappers of the
items that are not plain user items (a retry, a meta item).

A step instance works through its runtime (``step._rc_runtime``: the runtime of its step
in the current run, :mod:`.runtime` or :mod:`.process_runtime`), which gives it its input
and output channels and records its failures.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

from ..errors import InvalidArgument, PipelineStateError, RingcastError
from ._channel import END, Marker

logger = logging.getLogger("ringcast.pipeline")

_perf = time.perf_counter

#: Default of the ``max_retries`` keyword (as paipa): an item is tried at most 1 + 10 times.
DEFAULT_MAX_RETRIES = 10
#: Default of the ``threshold`` keyword (as paipa): room in each queue between steps.
DEFAULT_THRESHOLD = 64
#: Seconds of idle input after which :meth:`AbstractStep.in_queue_empty` is called (as paipa).
IDLE_HOOK_INTERVAL = 0.5


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


class Retry:
    __slots__ = ("payload", "attempts")

    def __init__(self, payload: Any, attempts: int) -> None:
        self.payload = payload
        self.attempts = attempts


class Meta:
    __slots__ = ("payload",)

    def __init__(self, payload: Any) -> None:
        self.payload = payload


SPECIAL = frozenset({Marker, Retry, Meta})


class WorkerStats:
    __slots__ = ("n_in", "n_out", "failed", "retried", "skipped", "meta", "busy")

    def __init__(self) -> None:
        self.n_in = self.n_out = self.failed = self.retried = self.skipped = self.meta = 0
        self.busy = 0.0


# ------------------------------------------------------------------------------------------------
# Steps


@dataclass(eq=False, repr=False)
class StepRuntimeBase:
    """What the runtime of one step in one run holds, whether its workers are threads
    (:class:`.runtime.StepRuntime`) or processes (:class:`.process_runtime.ProcStepRuntime`):
    the run, the step's name, class, worker count and options, its input and output, and the
    pipeline's options. A subclass sets up the rest in ``__post_init__``."""

    run: Any
    name: str
    cls: Any
    workers: int
    step_options: Mapping
    inbox: Any
    outbox: Any
    pipeline_options: dict

    def __post_init__(self) -> None:
        self.step_options = dict(self.step_options)
        self.max_retries = self.pipeline_options.get("max_retries", DEFAULT_MAX_RETRIES)

    def summed_stats(
        self, stats: list[WorkerStats], alive: int, queue_depth: int, discarded: int
    ) -> StepStats:
        """This step's counters: its workers' ``stats`` summed, with the figures only the
        runtime knows (workers alive, items waiting, items thrown away)."""
        return StepStats(
            name=self.name,
            workers=self.workers,
            alive=alive,
            items_in=sum(s.n_in for s in stats),
            items_out=sum(s.n_out for s in stats),
            failed=sum(s.failed for s in stats),
            retried=sum(s.retried for s in stats),
            skipped=sum(s.skipped for s in stats),
            busy_seconds=sum(s.busy for s in stats),
            queue_depth=queue_depth,
            queue_capacity=self.inbox.capacity,
            discarded=discarded,
        )


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
        self._rc_stats = WorkerStats()

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
        return put(Meta(result))

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
        special = SPECIAL
        perf = _perf
        done = False
        try:
            while True:
                item = get(done, timeout)
                done = True
                if type(item) in special:
                    cls = type(item)
                    if cls is Marker:
                        done = False
                        if item is END:
                            return
                        self.in_queue_empty()
                        continue
                    if cls is Meta:
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
                        inbox.requeue(Retry(item, attempt + 1))
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
                if cls in SPECIAL:
                    if item is END:
                        held[0] = False
                        return
                    if cls is Meta:  # forwarded, not shown to the generator (as paipa)
                        t0 = perf()
                        ok = put(item)
                        waited[0] += perf() - t0
                        if not ok:
                            rt.abort_input()
                            return
                        continue
                    item = item.payload  # a Retry: iter steps do not retry, but reenqueue
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
                if cls is Marker or cls is Meta or len(chunk) + 1 >= size:
                    if cls not in SPECIAL:
                        st.n_in += 1
                        chunk.append(item)
                    if chunk:
                        ok = put(chunk)
                        st.n_out += 1
                        chunk = []
                        if not ok:
                            rt.abort_input()
                            return
                    if cls is Marker:
                        done = False
                        if item is END:
                            return
                        continue
                    if cls is Meta and not self._rc_meta(item.payload, put):
                        rt.abort_input()
                        return
                    continue
                if cls is Retry:
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


def step_class_name(func: Any) -> str:
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
    name = step_class_name(func)
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
