"""ringcast.pipeline's steps in threaded pipelines: funcstep, iterstep, SkipEntry, meta items,
reenqueue, in_queue_empty and TimedChunk. Real threads; no thread may be left running.
"""

from __future__ import annotations

import itertools
import queue
import time

import pytest

import ringcast
from ringcast import pipeline as pp
from ringcast.pipeline import (
    AbstractStep,
    Pipeline,
    SkipEntry,
    funcstep,
    iterstep,
)
from tests.pipeline.support import (
    Collect,
    bounded,
    ident,
    no_leaked_threads,  # noqa: F401  (autouse fixture)
    wait_for,
)

# ------------------------------------------------------------------------------------------------
# funcstep, iterstep, SkipEntry


def test_funcstep_names_the_class_and_skipentry_drops():
    def even_only(x):
        if x % 2:
            raise SkipEntry()
        return x

    Step = funcstep(even_only)
    assert Step.__name__ == "even_only" and issubclass(Step, AbstractStep)
    assert funcstep(lambda x: x).__name__ == "<lambda>"
    out = Collect()
    p = Pipeline([(Step, 2), (out.step(), 1)])
    p.put_all(range(10))
    p.finish()
    bounded(p.run)
    assert sorted(out.items) == [0, 2, 4, 6, 8]
    assert p.stats().steps[0].skipped == 5
    assert p.ok


def test_funcstep_result_none_and_lists_are_single_items():
    out = Collect()
    p = Pipeline([(funcstep(lambda x: None if x == 0 else [x, x]), 1), (out.step(), 1)])
    p.put_all([0, 1])
    p.finish()
    bounded(p.run)
    assert out.items == [None, [1, 1]]


def test_iterstep_filters_expands_and_ends_cleanly():
    @iterstep
    def expand(items):
        for x in items:
            if x % 3 == 0:
                continue
            yield x
            yield -x

    out = Collect()
    p = Pipeline([(expand, 1), (out.step(), 1)])
    p.put_iterable(range(9))
    bounded(p.run)  # paipa: RuntimeError('generator raised StopIteration') here
    assert out.items == [1, -1, 2, -2, 4, -4, 5, -5, 7, -7, 8, -8]
    assert p.ok
    s = p.stats().steps[1]
    assert (s.items_in, s.items_out) == (9, 12)


def test_iterstep_keeps_state_per_worker_and_multiple_workers_share_input():
    @iterstep
    def batch(items):
        buf = []
        for x in items:
            buf.append(x)
            if len(buf) == 4:
                yield buf
                buf = []
        if buf:
            yield buf

    out = Collect()
    p = Pipeline([(batch, 3), (out.step(), 1)])
    p.put_iterable(range(100))
    bounded(p.run)
    assert sorted(itertools.chain.from_iterable(out.items)) == list(range(100))


def test_iterstep_latency_is_not_a_polling_interval():
    arrived: queue.Queue = queue.Queue()

    @iterstep
    def passthrough(items):
        yield from items

    p = Pipeline([(passthrough, 1), (funcstep(arrived.put), 1)])
    p.run_forever(background=True)
    try:
        lat = []
        for i in range(5):
            t0 = time.perf_counter()
            p.put(i)
            arrived.get(timeout=2)
            lat.append(time.perf_counter() - t0)
    finally:
        bounded(p.stop)
    assert sorted(lat)[2] < 0.02, lat  # paipa: up to 100 ms (sleep-polled)


def test_iterstep_generator_stopping_early_is_not_an_error_and_stops_the_source():
    @iterstep
    def first_three(items):
        for i, x in enumerate(items):
            yield x
            if i == 2:
                return

    out = Collect()
    p = Pipeline([(funcstep(ident), 1), (first_three, 1), (out.step(), 1)])
    p.put_iterable(itertools.count())  # infinite: must stop being pulled
    bounded(p.run)
    assert out.items == [0, 1, 2]
    assert p.ok
    assert p.stats().steps[0].alive == 0


def test_abstract_step_without_process_is_rejected_at_construction():
    class NoProcess(AbstractStep):
        pass

    with pytest.raises(ringcast.InvalidArgument, match="does not implement process"):
        Pipeline([(NoProcess, 1)])


# ------------------------------------------------------------------------------------------------
# meta items, reenqueue, in_queue_empty, TimedChunk


def test_meta_items_go_through_process_meta_and_are_not_counted():
    seen = []

    class Step(AbstractStep):
        def process(self, item):
            return item

        def process_meta(self, payload):
            seen.append((self.sibling.index, payload))
            if payload == "drop":
                raise SkipEntry()
            return payload + "!"

    class Last(Step):
        pass

    p = Pipeline([(Step, 1), (Last, 1)])
    p.put(1)
    p.put_meta("flush")
    p.put_meta("drop")
    p.put(2)
    p.finish()
    bounded(p.run)
    assert [s[1] for s in seen] == ["flush", "drop", "flush!"]
    assert p.count == 2


def test_reenqueue_processes_the_item_again():
    out = Collect()

    class Step(AbstractStep):
        def process(self, item):
            if item < 0:
                self.reenqueue(-item)
                raise SkipEntry()
            return item

    p = Pipeline([(Step, 1), (out.step(), 1)])
    p.put_all([1, -2, 3])
    p.finish()
    bounded(p.run)
    assert sorted(out.items) == [1, 2, 3]


def test_in_queue_empty_is_called_when_idle():
    calls = []

    class Step(AbstractStep):
        def process(self, item):
            return item

        def in_queue_empty(self):
            calls.append(time.monotonic())

    p = Pipeline([(Step, 1)])
    p.run_forever(background=True)
    t0 = time.monotonic()
    wait_for(lambda: calls, timeout=2, what="in_queue_empty")
    bounded(p.stop)
    assert calls[0] - t0 >= 0.4


def test_timed_chunk_groups_and_flushes_on_timeout_and_at_the_end():
    out = Collect()
    p = Pipeline([(pp.TimedChunk, 1, {"size": 3, "timeout": 0.05}), (out.step(), 1)])
    p.put_all(range(7))
    p.finish()
    bounded(p.run)
    assert out.items == [[0, 1, 2], [3, 4, 5], [6]]

    out2 = Collect()
    q = Pipeline([(pp.TimedChunk, 1, {"size": 100, "timeout": 0.05}), (out2.step(), 1)])
    q.run_forever(background=True)
    q.put(1)
    q.put(2)
    wait_for(lambda: out2.items, timeout=2, what="the timed flush")
    assert out2.items == [[1, 2]]
    q.put(3)
    bounded(q.stop)
    assert out2.items == [[1, 2], [3]]


def test_timed_chunk_doctest_scenario_alive_turns_false_after_iterstep_crash():
    # paipa's TimedChunk doctest, with shorter waits.
    result: list[list[int]] = []

    @iterstep
    def crash_when_17(iterator):
        for chunk in iterator:
            if chunk == [17]:
                raise RuntimeError("Argh!")
            yield chunk

    steps = [
        (pp.TimedChunk, 1, dict(timeout=0.05, size=5)),
        (crash_when_17, 1),
        (funcstep(result.append), 1),
    ]
    p = Pipeline(steps)
    p.put_all(range(10))
    p.finish()
    bounded(p.run)
    assert result == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]

    result.clear()
    p = Pipeline(steps)
    p.run_forever(background=True)
    p.put(1)
    wait_for(lambda: result == [[1]], what="[1]")
    p.put(2)
    wait_for(lambda: result == [[1], [2]], what="[2]")
    assert p.alive
    p.put(17)
    wait_for(lambda: not p.alive, what="alive to turn False")
    with pytest.raises(RuntimeError, match="Argh!"):
        bounded(p.stop)
    assert result == [[1], [2]]
