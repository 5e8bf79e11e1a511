"""ringcast.pipeline's threaded Pipeline: feeding it, running it, stopping it, its queues and
stats (paipa's semantics without its defects). Real threads, no mocks; every blocking call
is bounded and every test checks that it left no thread running (``tests.pipeline.support``).
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
import time

import pytest

import ringcast
from ringcast.pipeline import (
    AbstractStep,
    Pipeline,
    SkipEntry,
    funcstep,
)
from tests.pipeline.support import (
    Collect,
    bounded,
    ident,
    inc,
    no_leaked_threads,  # noqa: F401  (autouse fixture)
    wait_for,
)

# ------------------------------------------------------------------------------------------------
# feeding and running


def test_put_all_finish_run_processes_every_item_exactly_once():
    out = Collect()
    p = Pipeline([(funcstep(inc), 1), (funcstep(inc), 1), (out.step(), 1)])
    p.put(-2)
    p.put_all(range(1000))
    p.finish()
    bounded(p.run)
    assert sorted(out.items) == sorted([0] + [x + 2 for x in range(1000)])
    assert p.count == 1001
    assert p.ok is True


def test_many_workers_every_item_exactly_once_and_counts_balance():
    out = Collect()
    p = Pipeline([(funcstep(inc), 4), (funcstep(ident), 3), (out.step(), 4)], threshold=8)
    p.put_iterable(range(5000))
    bounded(p.run)
    assert collections.Counter(out.items) == collections.Counter(range(1, 5001))
    st = p.stats()
    assert [s.name for s in st.steps] == ["<source>", "inc", "ident", "collect"]
    for s in st.steps[1:]:
        assert s.items_in == s.items_out == 5000
        assert s.failed == s.skipped == s.retried == s.discarded == 0
    assert st.steps[0].items_out == 5000
    assert st.count == p.count == 5000


def test_single_worker_steps_keep_order():
    out = Collect()
    p = Pipeline([(funcstep(ident), 1), (out.step(), 1)])
    p.put_iterable(range(2000))
    bounded(p.run)
    assert out.items == list(range(2000))


def test_put_iterable_is_lazy_with_bounded_lookahead():
    pulled = [0]
    release = threading.Event()

    def gen():
        for i in range(500):
            pulled[0] += 1
            yield i

    def gate(x):
        assert release.wait(5), "never released"
        return x

    threshold = 8
    p = Pipeline([(funcstep(ident), 1), (funcstep(gate), 1)], threshold=threshold)
    p.put_iterable(gen())
    p.run_forever(background=True)
    try:
        # wait until the source stops pulling (the queues are full)
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 3
        while time.monotonic() - stable_since < 0.1:
            assert time.monotonic() < deadline, "source never stopped pulling"
            if pulled[0] != last:
                last, stable_since = pulled[0], time.monotonic()
            time.sleep(0.005)
        # 2 queues of `threshold`, one item held by each worker, one in the source's hand
        assert threshold < pulled[0] <= 2 * threshold + 2 + 1
        depths = [s.queue_depth for s in p.stats().steps[1:]]
        assert all(d <= threshold for d in depths), depths
    finally:
        release.set()
        bounded(p.stop)
    assert pulled[0] == 500
    assert p.count == 500


def test_put_iterable_does_not_mutate_steps_and_accepts_a_tuple():
    steps = [(funcstep(ident), 1)]
    p = Pipeline(steps)
    p.put_iterable(range(10))
    assert steps == [steps[0]] and len(steps) == 1
    bounded(p.run)
    t = Pipeline(((funcstep(ident), 2),))
    t.put_iterable([1, 2, 3])
    bounded(t.run)
    assert t.count == 3


def test_put_iterable_takes_no_keywords_and_needs_an_iterable():
    p = Pipeline([(funcstep(ident), 1)])
    with pytest.raises(TypeError, match="unexpected keyword"):
        p.put_iterable(range(3), foo=1)  # type: ignore[call-arg]  # wrong on purpose
    with pytest.raises(ringcast.InvalidArgument, match="needs an iterable"):
        p.put_iterable(5)  # type: ignore[arg-type]  # wrong on purpose


def test_put_iterable_twice_chains_the_iterables():
    out = Collect()
    p = Pipeline([(out.step(), 1)])
    p.put_iterable(range(3))
    p.put_iterable(iter([10, 11]))
    bounded(p.run)
    assert out.items == [0, 1, 2, 10, 11]


def test_rerun_accumulates_count():
    p = Pipeline([(funcstep(ident), 2)])
    p.put_all(range(10))
    p.finish()
    bounded(p.run)
    p.put_all(range(5))
    p.finish()
    bounded(p.run)
    assert p.count == 15


def test_context_manager_drains_on_exit():
    out = Collect()

    def slow(x):
        time.sleep(0.0005)
        return x

    p = Pipeline([(funcstep(slow), 2), (out.step(), 1)])

    def body():
        with p:
            p.put_all(range(300))
        return p.count

    assert bounded(body) == 300
    assert sorted(out.items) == list(range(300))
    assert not p.running


def test_run_forever_background_and_stop():
    out = Collect()
    p = Pipeline([(funcstep(inc), 3), (out.step(), 1)])
    p.run_forever(background=True)
    assert p.running and p.alive
    for i in range(200):
        p.put(i)
    bounded(p.stop)
    assert sorted(out.items) == list(range(1, 201))
    assert not p.running and not p.alive
    bounded(p.stop)  # idempotent


def test_run_forever_in_foreground_ends_with_finish_from_another_thread():
    p = Pipeline([(funcstep(ident), 1)])
    p.put_all(range(7))
    threading.Timer(0.05, p.finish).start()
    bounded(p.run_forever)
    assert p.count == 7


def test_stop_from_another_thread_ends_a_foreground_run_without_raising_there():
    p = Pipeline([(funcstep(ident), 1)])
    p.put_all(range(7))
    t = threading.Thread(target=p.run_forever)  # foreground, in another thread
    t.start()
    wait_for(lambda: p.running, what="run start")
    bounded(p.stop)
    t.join(5)
    assert not t.is_alive()
    assert p.count == 7


def test_with_put_iterable_waits_for_the_iterable():
    p = Pipeline([(funcstep(ident), 2)])
    p.put_iterable(range(1000))

    def body():
        with p:
            pass

    bounded(body)
    assert p.count == 1000


def test_steps_can_be_class_based_with_options_and_extra_keywords():
    class Scale(AbstractStep):
        def initialize(self, factor=1):  # type: ignore[override]  # the step's options, by keyword
            self.factor = factor

        def process(self, item):
            return item * self.factor + self.options["offset"]

    out = Collect()
    p = Pipeline([(Scale, 2, {"factor": 10}), (out.step(), 1)], offset=1)
    p.put_all(range(5))
    p.finish()
    bounded(p.run)
    assert sorted(out.items) == [1, 11, 21, 31, 41]
    assert p.options == {"offset": 1}


def test_hooks_are_called_in_order_in_the_right_threads():
    events = []
    lock = threading.Lock()
    main = threading.current_thread()

    def log(name, step):
        with lock:
            cur = threading.current_thread()
            events.append((name, step.sibling.index, cur is step, cur is main))

    class Step(AbstractStep):
        def step_initialize(self):
            log("step_initialize", self)

        def initialize(self, foo):  # type: ignore[override]  # the step's options, by keyword
            assert foo == 1
            log("initialize", self)

        def thread_initialize(self):
            log("thread_initialize", self)

        def process(self, item):
            return item

        def thread_shutdown(self):
            log("thread_shutdown", self)

        def step_shutdown(self):
            log("step_shutdown", self)

    p = Pipeline([(Step, 2, {"foo": 1})])
    p.put_all(range(4))
    p.finish()
    p.run()  # in this thread: initialize hooks run here
    names = [e[0] for e in events]
    assert names[:3] == ["step_initialize", "initialize", "initialize"]
    assert events[0][1] == 0 and events[0][3]  # sibling 0, caller's thread
    assert all(e[3] for e in events[:3])
    assert sorted(n for n in names[3:] if n == "thread_initialize") == ["thread_initialize"] * 2
    assert all(e[2] for e in events if e[0] in ("thread_initialize", "thread_shutdown"))
    assert names[-1] == "step_shutdown" and names.count("step_shutdown") == 1
    assert names.count("thread_shutdown") == 2
    for i in (0, 1):
        mine = [n for n, idx, *_ in events if idx == i and n.startswith("thread")]
        assert mine == ["thread_initialize", "thread_shutdown"]


def test_step_shutdown_exactly_once_with_many_siblings():
    calls: list[int] = []
    for _ in range(5):
        calls.clear()

        class Step(AbstractStep):
            def process(self, item):
                return item

            def step_shutdown(self):
                calls.append(self.sibling.index)

        p = Pipeline([(Step, 8)])
        p.put_all(range(50))
        p.finish()
        bounded(p.run)
        assert len(calls) == 1


def test_siblings_stay_until_a_retried_item_is_done():
    # A worker whose item fails puts it back; its siblings must not quit meanwhile (they may
    # have to take the retry), so no sibling shuts down before the last attempt ended.
    log = []
    lock = threading.Lock()

    class Step(AbstractStep):
        def process(self, item):
            with lock:
                log.append(("start", item))
            time.sleep(0.02)
            with lock:
                log.append(("end", item))
            if item == "bad":
                raise ConnectionError("retry me")
            return item

        def thread_shutdown(self):
            with lock:
                log.append(("shutdown", self.sibling.index))

    p = Pipeline([(Step, 3)], max_retries=3)
    p.put_all(["bad", "ok"])
    p.finish()
    with pytest.raises(ConnectionError):
        bounded(p.run)
    kinds = [k for k, _ in log]
    assert kinds.count("start") == 5  # 4 attempts of "bad" + 1 of "ok"
    last_end = max(i for i, (k, _) in enumerate(log) if k == "end")
    first_shutdown = kinds.index("shutdown")
    assert first_shutdown > last_end, log


def test_siblings_share_storage_and_see_each_other():
    seen = []

    class Step(AbstractStep):
        def initialize(self):  # type: ignore[override]  # the step's options, by keyword
            self.sibling.storage.setdefault("ids", []).append(self.sibling.index)

        def thread_initialize(self):
            seen.append((len(self.sibling.threads), self in self.sibling.threads))

        def process(self, item):
            return item

    p = Pipeline([(Step, 3)])
    p.put(1)
    p.finish()
    bounded(p.run)
    assert seen == [(3, True)] * 3


def test_daemon_flag_is_set_on_every_thread():
    for daemon in (False, True):
        flags: list[bool] = []

        def rec(x, flags=flags):
            flags.append(threading.current_thread().daemon)
            return x

        p = Pipeline([(funcstep(rec), 2)], daemon=daemon)
        p.put_iterable(range(20))
        bounded(p.run)
        assert set(flags) == {daemon}


# ------------------------------------------------------------------------------------------------
# in_queue


def test_in_queue_stop_processes_what_was_queued_and_leaves_later_items_in_the_queue():
    q: queue.Queue = queue.Queue()
    out = Collect()
    p = Pipeline([(funcstep(inc), 3), (out.step(), 1)], in_queue=q)
    p.run_forever(background=True)
    for i in range(100):
        q.put(i)
    p.put(100)  # put() goes through the user's queue
    bounded(p.stop)
    assert sorted(out.items) == list(range(1, 102))
    q.put("later")
    assert q.qsize() == 1  # not consumed by a stopped pipeline


def test_in_queue_run_after_finish_drains_and_returns():
    q: queue.Queue = queue.Queue()
    for i in range(20):
        q.put(i)
    p = Pipeline([(funcstep(ident), 2)], in_queue=q)
    p.finish()
    bounded(p.run)
    assert p.count == 20 and q.qsize() == 0


def test_in_queue_back_pressure_reaches_the_user_queue():
    q: queue.Queue = queue.Queue()
    gate = threading.Event()
    p = Pipeline([(funcstep(lambda x: gate.wait(5)), 1)], in_queue=q, threshold=4)
    p.run_forever(background=True)
    try:
        for i in range(50):
            q.put(i)
        wait_for(lambda: q.qsize() <= 50 - 4, what="the feeder to start")
        time.sleep(0.05)
        # 4 queued + 1 in the worker + 1 in the feeder's hand; the rest stays in q
        assert 50 - 4 - 2 <= q.qsize() <= 50 - 4
    finally:
        gate.set()
        bounded(p.stop)
    assert p.count == 50


# ------------------------------------------------------------------------------------------------
# observability and speed


def test_stats_report_counts_depth_and_busy_time():
    gate = threading.Event()

    def slow(x):
        time.sleep(0.002)
        return x

    def gated(x):
        assert gate.wait(5)
        if x == 0:
            raise SkipEntry()
        return x

    p = Pipeline([(funcstep(slow), 2), (funcstep(gated), 1)], threshold=5)
    p.put_all(range(30))
    p.finish()
    p.run_forever(background=True)
    wait_for(lambda: p.stats().steps[1].queue_depth == 5, what="a full queue")
    st = p.stats()
    assert st.running and st.steps[1].queue_capacity == 5
    assert st.steps[0].queue_capacity is None
    gate.set()
    bounded(p.stop)
    st = p.stats()
    a, b = st.steps
    assert (a.items_in, a.items_out, b.items_in, b.items_out, b.skipped) == (30, 30, 30, 29, 1)
    assert a.busy_seconds >= 30 * 0.002 * 0.9
    assert b.busy_seconds < a.busy_seconds
    assert st.count == 29 and not st.running and st.elapsed > 0 and st.items_per_s > 0


def test_throughput_is_not_capped_by_polling():
    # paipa: ~6000 items/s at most (10 ms result polling with threshold 64).
    n = 20_000
    p = Pipeline([(funcstep(ident), 1), (funcstep(ident), 1), (funcstep(ident), 1)])
    p.put_all(range(n))
    p.finish()
    t0 = time.perf_counter()
    bounded(p.run)
    rate = n / (time.perf_counter() - t0)
    assert p.count == n
    assert rate > 20_000, f"{rate:.0f} items/s"


def test_progress_with_tqdm(capsys):
    pytest.importorskip("tqdm")
    p = Pipeline([(funcstep(ident), 1)], progress=True)
    p.put_all(range(50))
    p.finish()
    bounded(p.run)
    err = capsys.readouterr().err
    assert "50/50" in err and "item" in err


def test_progress_without_tqdm(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    p = Pipeline([(funcstep(ident), 1)], progress=True)
    p.put_iterable(iter(range(40)))
    bounded(p.run)
    err = capsys.readouterr().err
    assert "pipeline: 40 items" in err and err.endswith("\n")


def test_repr_names_the_steps():
    p = Pipeline([(funcstep(ident), 2)])
    assert "identx2" in repr(p) and "idle" in repr(p)
