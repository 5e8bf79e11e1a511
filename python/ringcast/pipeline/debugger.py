"""Per-step statistics of coroutine pipelines (paipa's ``PipelineRuntimeDebugger``)."""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Iterable, Iterator
from typing import Any, Optional

__all__ = ["Debugger", "PipelineRuntimeDebugger", "DebugReporter", "LoggingReporter"]

logger = logging.getLogger("ringcast.pipeline.debugger")

#: Keys of the per-step statistics, in the order the reporter shows them.
STAT_KEYS = (
    "count",
    "runtime",
    "throughput",
    "runtime_per_entry",
    "utime",
    "stime",
    "queries",
    "queries_per_entry",
    "rss",
)


class DebugReporter:
    """Receives the statistics: ``show(info)`` with ``info = [(step name, stats dict), ...]``."""

    def show(self, info: list) -> None:
        """Report ``info`` (override)."""
        raise NotImplementedError


class LoggingReporter(DebugReporter):
    """Logs one aligned line per step at INFO on the given logger."""

    def __init__(self, logger_: logging.Logger) -> None:
        self._logger = logger_

    def show(self, info: list) -> None:
        """Log a separator line and one line per step."""
        rows = [(name, stats) for name, stats in info if stats]
        if not rows:
            return
        width = max(len(name) for name, _ in rows)
        self._logger.info("-" * 20)
        for name, s in rows:
            self._logger.info(
                "> %-*s: count: %d runtime: %.2f %.2f/s utime: %.2f stime: %.2f q: %d "
                "q/e: %.2f rss: %.2f",
                width,
                name,
                int(s["count"]),
                s["runtime"],
                s["throughput"],
                s["utime"],
                s["stime"],
                int(s["queries"]),
                s["queries_per_entry"],
                s["rss"],
            )


class Debugger:
    """Base of coroutine-pipeline debuggers: ``head``, ``tail``, ``track``, ``report``."""

    def head(self, iterator: Any) -> Any:
        """Wraps the source."""
        return iterator

    def tail(self, iterator: Any) -> Any:
        """Wraps the whole chain."""
        return iterator

    def report(self, iterator: Any) -> Any:
        """Wraps the whole chain once more (after ``tail``)."""
        return iterator

    def do_track(self, iterator: Any) -> Any:
        """Wraps one step's output (override)."""
        return iterator

    def track(self, iterator: Any) -> Any:
        """Wraps one step's output once (do not override; override :meth:`do_track`)."""
        if getattr(iterator, "_rc_tracked", False):
            return iterator
        return self.do_track(iterator)


def _name(thing: Any) -> str:
    name = getattr(thing, "__name__", None)
    return name if isinstance(name, str) else type(thing).__name__


class _Tracked:
    """Iterator wrapper that attributes the time until each item to its step."""

    _rc_tracked = True

    def __init__(self, dbg: PipelineRuntimeDebugger, iterator: Iterable[Any]) -> None:
        self._dbg = dbg
        self._it = iter(iterator)
        self._key: Optional[int] = None
        self.__name__ = _name(iterator)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        dbg = self._dbg
        if self._key is None:
            self._key = dbg._register(self.__name__)
        dbg._enter(self._key)
        try:
            entry = next(self._it)
        except BaseException:
            dbg._leave(0)
            raise
        dbg._leave(len(entry) if type(entry) is list else 1)
        return entry


class PipelineRuntimeDebugger(Debugger):
    """Measures each step of a coroutine pipeline: items, wall time (exclusive of the steps
    before it), CPU user/system time, max-RSS growth, and optionally a query count.

    Pass it as ``combine_pipeline(source, steps, debugger=dbg)``. The statistics are reported
    (by default logged at INFO on ``ringcast.pipeline.debugger``) every ``interval`` seconds
    while the pipeline runs and once at its end. ``call_counter`` is an object whose ``pop()``
    returns the number of calls (e.g. database queries) since its last ``pop()``.
    Unlike paipa's, the item count is exact (paipa counted one item too many per step).
    """

    def __init__(
        self,
        reporters: Optional[list] = None,
        call_counter: Any = None,
        interval: float = 5.0,
    ) -> None:
        self._reporters = reporters if reporters is not None else [LoggingReporter(logger)]
        self._call_counter = call_counter
        self._interval = interval
        self._names: list = []
        self._stats: list = []
        self._stack: list = []
        self._mark = 0.0
        self._cpu = (0.0, 0.0)
        self._rss = 0
        self._last_shown = time.monotonic()

    def _register(self, name: str) -> int:
        self._names.insert(0, name)
        self._stats.insert(0, dict.fromkeys(STAT_KEYS, 0.0))
        return id(self._stats[0])

    def _current(self) -> Optional[dict]:
        if not self._stack:
            return None
        key = self._stack[-1]
        for s in self._stats:
            if id(s) == key:
                return s
        return None

    def _charge(self) -> None:
        """Charge the time since the last transition to the step on top of the stack."""
        now = time.perf_counter()
        t = os.times()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        s = self._current()
        if s is not None:
            s["runtime"] += now - self._mark
            s["utime"] += t.user - self._cpu[0]
            s["stime"] += t.system - self._cpu[1]
            s["rss"] += rss - self._rss
            if self._call_counter is not None:
                s["queries"] += self._call_counter.pop()
        self._mark, self._cpu, self._rss = now, (t.user, t.system), rss

    def _enter(self, key: int) -> None:
        self._charge()
        self._stack.append(key)

    def _leave(self, count: int) -> None:
        self._charge()
        s = self._current()
        self._stack.pop()
        if s is not None and count:
            s["count"] += count

    def stats(self) -> list:
        """``[(step name, stats dict), ...]`` from the source to the last step."""
        out = []
        for name, s in zip(self._names, self._stats):
            d = dict(s)
            n, rt = d["count"], d["runtime"]
            d["throughput"] = n / rt if rt else 0.0
            d["runtime_per_entry"] = rt / n if n else 0.0
            d["queries_per_entry"] = d["queries"] / n if n else 0.0
            out.append((name, d))
        return out

    def show(self, force: bool = False) -> None:
        """Report now if ``force`` or if ``interval`` seconds passed since the last report."""
        if not force and time.monotonic() - self._last_shown <= self._interval:
            return
        info = self.stats()
        for reporter in self._reporters:
            reporter.show(info)
        self._last_shown = time.monotonic()

    def do_track(self, iterator: Any) -> Any:
        """Wrap one step's output to measure it."""
        return _Tracked(self, iterator)

    def tail(self, iterator: Any) -> Iterator[Any]:
        """Report periodically while items flow, and once at the end."""
        for entry in iterator:
            self.show()
            yield entry
        self.show(force=True)
