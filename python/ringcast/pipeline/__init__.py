"""Processing pipelines of steps: threaded pipelines and coroutine (generator) pipelines.

Replaces paipa 0.3.3 (``import paipa`` becomes ``from ringcast import pipeline as paipa``),
without its defects. See ``docs/pipeline.md`` and ``docs/migrating-from-paipa.md``.

Threaded::

    from ringcast.pipeline import Pipeline, funcstep

    p = Pipeline([(funcstep(fetch), 8), (funcstep(store), 1)])
    p.put_iterable(urls)
    p.run()            # blocks; raises the first step exception

Process steps (CPU-bound Python work in worker processes, items through shared memory)::

    p = Pipeline([(funcstep(load), 1), (procstep(analyse), 4), (funcstep(store), 1)])

Coroutine::

    from ringcast.pipeline import combine_pipeline, chunk

    for block in combine_pipeline(range(100), [chunk(10)]):
        ...
"""

# ruff: noqa: F405
from __future__ import annotations

from .coroutines import (
    PipelineStep,
    combine_pipeline,
    defer_call,
    entry_counter,
    identity_step,
)
from .debugger import LoggingReporter, PipelineRuntimeDebugger
from .iterables import chunk, consume, flatten, is_iterable, recursive_flatten
from .process import ProcessStep, RemoteError, RemoteTraceback, WorkerDied, procstep

# threaded's public names (its __all__) are the package's too: imported as its list, not
# written again; ruff cannot see through the star import for the __all__ below (F405).
from .threaded import *  # noqa: F403

__version__ = "0.3.3"  # the paipa version whose behaviour this module reproduces

__all__ = [
    # paipa's own exports
    "AbstractStep",
    "Pipeline",
    "SkipEntry",
    "iterstep",
    "funcstep",
    "combine_pipeline",
    "identity_step",
    "consume",
    "chunk",
    "PipelineRuntimeDebugger",
    # paipa's public-but-unexported names
    "AbstractIterStep",
    "TimedChunk",
    "NopTracker",
    "SiblingInfo",
    "is_step",
    "PipelineStep",
    "entry_counter",
    "defer_call",
    "flatten",
    "recursive_flatten",
    "is_iterable",
    "LoggingReporter",
    # ringcast additions
    "PipelineStateError",
    "StepFailure",
    "StepStats",
    "PipelineStats",
    # process steps
    "procstep",
    "ProcessStep",
    "WorkerDied",
    "RemoteTraceback",
    "RemoteError",
]
