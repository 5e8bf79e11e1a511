"""Coroutine (generator) pipelines (paipa's ``paipa.coroutines``).

A step is any callable ``iterator -> iterable``; :func:`combine_pipeline` nests them into one
lazy generator that runs in the caller's thread, with no queues and no threads.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional

from ..errors import InvalidArgument
from .iterables import recursive_flatten

__all__ = [
    "PipelineStep",
    "identity_step",
    "entry_counter",
    "defer_call",
    "combine_pipeline",
]

logger = logging.getLogger("ringcast.pipeline")


class PipelineStep:
    """Optional base class of coroutine steps: override :meth:`process`; instances are callable."""

    def process(self, iterator: Iterable[Any]) -> Iterable[Any]:
        """Return an iterable of results for ``iterator`` (identity by default)."""
        return iterator

    def __call__(self, iterator: Iterable[Any]) -> Iterable[Any]:
        """Same as :meth:`process`."""
        return self.process(iterator)


def identity_step(iterator: Iterable[Any]) -> Iterable[Any]:
    """A step that does nothing: returns ``iterator``."""
    return iterator


def entry_counter(iterator: Iterable[Any]) -> Iterator[Any]:
    """A step passing items through and logging their count (DEBUG, logger ringcast.pipeline)."""
    n = 0
    start = time.monotonic()
    for entry in iterator:
        n += 1
        yield entry
    elapsed = max(time.monotonic() - start, 1e-9)
    logger.debug("entry_counter: %d items, %.0f items/s", n, n / elapsed)


def defer_call(step_function: Callable[[Any], Any]) -> Callable[[Callable[..., Any]], Any]:
    """Turn a step into a wrapper of iterator *factories*: ``defer_call(step)(factory)`` is a
    callable that, called with arguments, returns ``step(factory(*args, **kw))``."""

    def wrapper(iterator_factory: Callable[..., Any]) -> Callable[..., Any]:
        def wrap(*args: Any, **kw: Any) -> Any:
            return step_function(iterator_factory(*args, **kw))

        try:
            functools.update_wrapper(wrap, iterator_factory)
        except (AttributeError, TypeError):  # a factory without a __name__ (e.g. a partial)
            pass
        return wrap

    return wrapper


def _identity(x: Any) -> Any:
    return x


def combine_pipeline(source: Any, pipeline: Iterable[Any], debugger: Optional[Any] = None) -> Any:
    """Chain coroutine steps: ``step_n(... step_1(source))``, lazily.

    ``pipeline`` is a list of steps, which may be nested (it is flattened). If ``source`` is
    callable, a callable is returned: calling it with arguments calls ``source(*args, **kw)``
    and runs the chain over the result. ``debugger`` (e.g. a
    :class:`~ringcast.pipeline.PipelineRuntimeDebugger`) wraps every step to measure it.
    """
    if not _is_step_list(pipeline):
        raise InvalidArgument(f"pipeline must be a list of steps, got {pipeline!r}")
    steps = list(recursive_flatten(pipeline))
    for step in steps:
        if not callable(step):
            raise InvalidArgument(f"every coroutine step must be callable, got {step!r}")
    if debugger is not None:
        head, tail, track, report = debugger.head, debugger.tail, debugger.track, debugger.report
    else:
        head = tail = track = report = _identity
    defer = defer_call if callable(source) else _identity
    if not callable(source) and not _iterable(source):
        raise InvalidArgument(f"source must be an iterable or a callable, got {source!r}")
    track = defer(track)
    gen = defer(head)(source)
    for step in steps:
        gen = defer(step)(track(gen))
    return defer(report)(defer(tail)(track(gen)))


def _iterable(x: Any) -> bool:
    try:
        iter(x)
    except TypeError:
        return False
    return True


def _is_step_list(pipeline: Any) -> bool:
    return _iterable(pipeline) and not isinstance(pipeline, (str, bytes))
