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

This module holds :class:`Pipeline` (feeding, running, stopping, stats) and the validation
of step definitions; it also re-exports the names of ``paipa.threaded``. The other modules
of the package, each importing only those before it:

* :mod:`.steps` - the step classes and their statistics;
* :mod:`.runtime` - a run, the runtime of a threaded step, the feeder threads;
* :mod:`.wire` - the messages of a process step's queues;
* :mod:`.process` - process steps and the body of their worker processes;
* :mod:`.process_runtime` - the parent side of a process step in a run.

Process steps plug in here: their runtime keeps the same channel contract (take from
``inbox``, put to ``outbox``, end/abort, busy marks), see :func:`_make_runtime`.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

from ..errors import InvalidArgument, PipelineStateError, Timeout
from ._channel import Channel
from ._progress import make_progress
from .process_runtime import ProcStepRuntime
from .runtime import Discard, IterableFeeder, QueueFeeder, Run, StepRuntime
from .steps import DEFAULT_MAX_RETRIES as DEFAULT_MAX_RETRIES
from .steps import (
    DEFAULT_THRESHOLD,
    AbstractIterStep,
    AbstractStep,
    Meta,
    NopTracker,
    PipelineStats,
    SiblingInfo,
    SkipEntry,
    StepFailure,
    StepStats,
    TimedChunk,
    funcstep,
    is_step,
    iterstep,
)

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

#: How often the progress display is refreshed.
PROGRESS_INTERVAL = 0.2
#: Items that ``put_all`` moves into the input at a time.
PUT_ALL_BATCH = 4096


def _make_runtime(
    run: Run,
    cls: type,
    workers: int,
    opts: Mapping,
    inbox: Channel,
    outbox: Any,
    pipeline_options: dict,
) -> Any:
    """The runtime of one step definition: worker threads, or worker processes."""
    runtime = ProcStepRuntime if getattr(cls, "_rc_process_step", False) else StepRuntime
    return runtime(run, cls.__name__, cls, workers, opts, inbox, outbox, pipeline_options)


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
        self._run: Optional[Run] = None
        self._last_run: Optional[Run] = None
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
            block = list(itertools.islice(it, PUT_ALL_BATCH))
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
        self._push([Meta(element)])
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

    def _start(self, background: bool) -> Run:
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
            run = Run(background)
            if self._sources:
                first = Channel(threshold, "source")
                run.feeder = IterableFeeder(run, first, self._sources, self.daemon)
            elif self._user_queue is not None:
                first = Channel(threshold, "in_queue")
                run.feeder = QueueFeeder(run, first, self._user_queue, self.daemon)
                if self._finish_requested:
                    run.input_finished.set()
            else:
                first = self._input
            run.channels.append(first)
            inbox: Any = first
            for i, (cls, workers, sopts) in enumerate(parsed):
                is_last = i == len(parsed) - 1
                outbox: Any = Discard() if is_last else Channel(threshold, f"after {cls.__name__}")
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

    def _postfix(self, run: Run) -> str:
        return " ".join(f"{rt.name}:{len(rt.inbox)}" for rt in run.steps)

    def _supervise(self, run: Run) -> None:
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

    def _conclude(self, run: Run, bar: Any) -> None:
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

    def _raise_failure(self, run: Run) -> None:
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
