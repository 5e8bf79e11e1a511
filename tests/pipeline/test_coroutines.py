"""ringcast.pipeline coroutine helpers: combine_pipeline, chunk, consume, the debugger."""

from __future__ import annotations

import itertools
import logging

import pytest

import ringcast
from ringcast.pipeline import (
    LoggingReporter,
    PipelineRuntimeDebugger,
    PipelineStep,
    chunk,
    combine_pipeline,
    consume,
    defer_call,
    entry_counter,
    flatten,
    identity_step,
    is_iterable,
    recursive_flatten,
)


def step(iterator):
    yield from iterator


def remover(iterator):
    for count, entry in enumerate(iterator):
        if count % 2 == 0:
            yield entry


class Identity(PipelineStep):
    def process(self, iterator):
        yield from iterator


def test_combine_pipeline_flattens_nested_steps():
    # paipa's combine_pipeline doctest
    pipeline = [step, [remover, Identity()], step]
    gen = combine_pipeline(range(1000), pipeline)
    assert list(gen) == list(range(0, 1000, 2))


def test_combine_pipeline_with_a_callable_source_returns_a_callable():
    pipeline = [step, [remover, Identity()], step]
    gen = combine_pipeline(range, pipeline)
    assert callable(gen)
    assert len(list(gen(1000))) == 500
    assert list(gen(5, 10)) == [5, 7, 9]  # arguments are passed on, and it can be reused


def test_combine_pipeline_is_lazy():
    pulled = []

    def source():
        for i in itertools.count():
            pulled.append(i)
            yield i

    gen = combine_pipeline(source(), [identity_step, step])
    assert next(gen) == 0 and next(gen) == 1
    assert pulled == [0, 1]


def test_combine_pipeline_rejects_bad_arguments():
    with pytest.raises(ringcast.InvalidArgument, match="must be callable"):
        combine_pipeline(range(3), [step, 42])
    with pytest.raises(ringcast.InvalidArgument, match="source must be"):
        combine_pipeline(3, [step])
    with pytest.raises(ringcast.InvalidArgument, match="list of steps"):
        combine_pipeline(range(3), 42)  # type: ignore[arg-type]  # wrong on purpose


def test_pipeline_step_base_is_callable_identity():
    assert list(PipelineStep()(iter([1, 2]))) == [1, 2]
    assert identity_step(x for x in [3]) is not None


def test_chunk():
    assert len(list(chunk(32)(range(64)))) == 2
    assert list(chunk(3)([1, 2, 3, 4, 5, 6, 7, 8])) == [[1, 2, 3], [4, 5, 6], [7, 8]]
    assert list(chunk()([])) == []
    with pytest.raises(ringcast.InvalidArgument, match="can not be less than 1"):
        chunk(0)
    with pytest.raises(ringcast.InvalidArgument, match="must be an int"):
        chunk("3")  # type: ignore[arg-type]  # wrong on purpose


def test_consume():
    it = iter(range(10))
    consume(it, 3)
    assert next(it) == 3
    consume(it)
    assert list(it) == []
    with pytest.raises(ringcast.InvalidArgument, match="n must be None or an int"):
        consume(iter([]), -1)


def test_flatten_helpers():
    assert list(flatten([(1, 2, 3), [4, 5, 6], range(7, 10)])) == list(range(1, 10))
    f = list(recursive_flatten([1, [2, [3, ["ab", b"cd", step]]]]))
    assert f == [1, 2, 3, "ab", b"cd", step]
    assert is_iterable([]) and is_iterable("x") and not is_iterable(False)


def test_defer_call():
    def double(it):
        return (2 * x for x in it)

    factory = defer_call(double)(range)
    assert list(factory(3)) == [0, 2, 4]
    assert factory.__name__ == "range"


def test_entry_counter_passes_items_and_logs(caplog):
    with caplog.at_level(logging.DEBUG, logger="ringcast.pipeline"):
        assert list(entry_counter(iter(range(5)))) == list(range(5))
    assert "entry_counter: 5 items" in caplog.text


class ListReporter:
    def __init__(self):
        self.reports = []

    def show(self, info):
        self.reports.append(info)


def test_debugger_counts_exactly_and_reports_every_step():
    rep = ListReporter()
    dbg = PipelineRuntimeDebugger(reporters=[rep])
    gen = combine_pipeline(range(100), [step, remover, chunk(10)], debugger=dbg)
    assert len(list(gen)) == 5
    stats = dict(dbg.stats())
    assert list(stats) == ["range", "step", "remover", "chunker"]
    # paipa counted one item too many for each step (101 for 100)
    assert stats["range"]["count"] == 100
    assert stats["step"]["count"] == 100
    assert stats["remover"]["count"] == 50
    assert stats["chunker"]["count"] == 50  # lists count their length, as in paipa
    assert all(s["runtime"] >= 0 for s in stats.values())
    assert len(rep.reports) == 1  # the final report (the run was shorter than the interval)


def test_debugger_with_callable_source_and_call_counter():
    class Calls:
        def __init__(self):
            self.n = 0

        def pop(self):
            n, self.n = self.n, 0
            return n

    calls = Calls()

    def querying(it):
        for x in it:
            calls.n += 2
            yield x

    rep = ListReporter()
    dbg = PipelineRuntimeDebugger(reporters=[rep], call_counter=calls)
    run = combine_pipeline(range, [querying], debugger=dbg)
    assert list(run(10)) == list(range(10))
    stats = dict(dbg.stats())
    assert stats["querying"]["queries"] == 20
    assert stats["querying"]["queries_per_entry"] == 2


def test_logging_reporter(caplog):
    dbg = PipelineRuntimeDebugger(reporters=[LoggingReporter(logging.getLogger("dbgtest"))])
    with caplog.at_level(logging.INFO, logger="dbgtest"):
        list(combine_pipeline(range(10), [step], debugger=dbg))
    assert "> step" in caplog.text and "count: 10" in caplog.text
