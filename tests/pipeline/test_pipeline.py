"""ringcast.pipeline: threaded pipelines (paipa's semantics without its defects).

Real threads, no mocks. Every blocking call is bounded (``bounded()`` runs it in a helper
thread and fails the test if it does not return in time), and every test checks that it left
no thread running.
"""

from __future__ import annotations

import collections
import itertools
import queue
import sys
import threading
import time
import traceback

import pytest

import ringcast
from ringcast import pipeline as pp
from ringcast.pipeline import (
    AbstractStep,
    Pipeline,
    PipelineStateError,
    SkipEntry,
    funcstep,
    iterstep,
)

# ------------------------------------------------------------------------------------------------
# helpers


def _abort_runs_of(threads):
    """Abort the pipeline runs that own ``threads`` (so a failed test cannot hang the suite)."""
    for t in threads:
        rt = getattr(t, "_rc_runtime", None)
        owner = getattr(getattr(t, "_target", None), "__self__", None)
        for run in (getattr(rt, "run", None), getattr(owner, "run", None)):
            if run is not None and hasattr(run, "abort"):
                run.abort()


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a thread running (after a bounded grace period)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if extra:
        _abort_runs_of(extra)
        for t in extra:
            t.join(5)
    assert not extra, f"test left threads running: {extra}"


def bounded(fn, *args, timeout=5.0, **kw):
    """Call ``fn`` in a helper thread; return its result or raise its exception; a call that
    has not returned after ``timeout`` seconds fails the test (a hang)."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["exc"] = exc

    t = threading.Thread(target=target, name="bounded-call")
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {timeout} s (hang)")
    if "exc" in box:
        raise box["exc"]
    return box.get("result")


def wait_for(cond, timeout=3.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def ident(x):
    return x


def inc(x):
    return x + 1


class Collect:
    """A last step target that records what reaches it (thread-safe list.append)."""

    def __init__(self):
        self.items = []

    def step(self):
        items = self.items

        def collect(x):
            items.append(x)
            return x

        return funcstep(collect)


def tb_names(exc):
    return [f.name for f in traceback.extract_tb(exc.__traceback__)]


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
        p.put_iterable(range(3), foo=1)
    with pytest.raises(ringcast.InvalidArgument, match="needs an iterable"):
        p.put_iterable(5)


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
        def initialize(self, factor=1):
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

        def initialize(self, foo):
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
    calls = []
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
        def initialize(self):
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
        flags = []

        def rec(x, flags=flags):
            flags.append(threading.current_thread().daemon)
            return x

        p = Pipeline([(funcstep(rec), 2)], daemon=daemon)
        p.put_iterable(range(20))
        bounded(p.run)
        assert set(flags) == {daemon}


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
    arrived = queue.Queue()

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
# errors: retries, propagation, hooks


def make_flaky(fail_times, attempts):
    """A step failing the first ``fail_times`` attempts on each item."""
    lock = threading.Lock()

    def flaky(x):
        with lock:
            attempts[x] = attempts.get(x, 0) + 1
            n = attempts[x]
        if n <= fail_times:
            raise ConnectionError(f"transient failure {n} on {x}")
        return x

    return funcstep(flaky)


@pytest.mark.parametrize("feed", ["put_all", "put_iterable"])
def test_transient_failures_are_retried_and_never_lost(feed):
    # paipa, 1 worker: retries queued behind the end marker, 0 of 40 delivered.
    attempts = {}
    out = Collect()
    p = Pipeline([(make_flaky(1, attempts), 1), (out.step(), 1)])
    if feed == "put_all":
        p.put_all(range(40))
        p.finish()
    else:
        p.put_iterable(range(40))
    bounded(p.run)
    assert sorted(out.items) == list(range(40))
    assert set(attempts.values()) == {2}
    s = p.stats().steps[-2]
    assert (s.items_in, s.items_out, s.retried, s.failed) == (40, 40, 40, 0)
    assert p.ok and not p.failures


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_retries_are_counted_exactly_then_the_exception_is_raised(max_retries):
    attempts = {}
    out = Collect()
    p = Pipeline(
        [(make_flaky(100, attempts), 1), (out.step(), 1)],
        max_retries=max_retries,
    )
    p.put_all(range(3))
    p.finish()
    with pytest.raises(ConnectionError, match="transient failure") as ei:
        bounded(p.run)
    assert attempts == {0: max_retries + 1, 1: max_retries + 1, 2: max_retries + 1}
    assert "flaky" in tb_names(ei.value)  # the original traceback
    assert out.items == []
    assert len(p.failures) == 3
    assert {f.attempts for f in p.failures} == {max_retries + 1}
    assert p.ok is False
    s = p.stats().steps[0]
    assert (s.failed, s.retried) == (3, 3 * max_retries)


def test_default_max_retries_is_ten():
    attempts = {}
    p = Pipeline([(make_flaky(100, attempts), 1)])
    p.put(0)
    p.finish()
    with pytest.raises(ConnectionError):
        bounded(p.run)
    assert attempts == {0: 11}  # paipa: 12 (off by one)


def test_failure_does_not_stop_other_items_and_first_exception_is_raised():
    def picky(x):
        if x in (3, 7):
            raise ValueError(f"bad {x}")
        return x

    out = Collect()
    calls = []
    p = Pipeline(
        [(funcstep(picky), 1), (out.step(), 1)],
        max_retries=0,
        fail_callback=lambda: calls.append(1),
    )
    p.put_all(range(10))
    p.finish()
    with pytest.raises(ValueError, match="bad 3"):
        bounded(p.run)
    assert sorted(out.items) == [0, 1, 2, 4, 5, 6, 8, 9]
    assert [f.item for f in p.failures] == [3, 7]
    assert p.failures[0].step == "picky" and p.failures[0].where == "process"
    assert calls == [1]
    assert p.count == 8
    assert isinstance(p.error, ValueError)


def test_fail_callback_exception_is_logged_not_raised(caplog):
    def bad_callback():
        raise RuntimeError("callback broke")

    p = Pipeline([(funcstep(lambda x: 1 / 0), 1)], max_retries=0, fail_callback=bad_callback)
    p.put(1)
    p.finish()
    with pytest.raises(ZeroDivisionError):
        bounded(p.run)
    assert "fail_callback raised" in caplog.text


def test_stop_raises_the_step_exception_once_with_its_traceback():
    def explode(x):
        raise KeyError(f"no {x}")

    p = Pipeline([(funcstep(explode), 2)], max_retries=0)
    p.run_forever(background=True)
    p.put("key")
    with pytest.raises(KeyError, match="no key") as ei:
        bounded(p.stop)
    assert "explode" in tb_names(ei.value)
    bounded(p.stop)  # already reported: no second raise


def test_leaving_with_raises_the_step_exception():
    def explode(x):
        raise OSError("disk on fire")

    p = Pipeline([(funcstep(explode), 1)], max_retries=1)

    def body():
        with p:
            p.put(1)

    with pytest.raises(OSError, match="disk on fire") as ei:
        bounded(body)
    assert "explode" in tb_names(ei.value)
    assert p.ok is False


def test_body_exception_wins_over_step_exception_but_pipeline_is_drained():
    out = Collect()

    def fail_one(x):
        if x == 0:
            raise ValueError("step failed")
        return x

    p = Pipeline([(funcstep(fail_one), 1), (out.step(), 1)], max_retries=0)

    def body():
        with p:
            p.put_all(range(20))
            raise LookupError("body failed")

    with pytest.raises(LookupError, match="body failed") as ei:
        bounded(body)
    assert sorted(out.items) == list(range(1, 20))  # drained
    if sys.version_info >= (3, 11):
        assert any("step failed" in n for n in ei.value.__notes__)
    assert isinstance(p.error, ValueError)


def test_keyboard_interrupt_in_with_body_aborts_instead_of_draining():
    started = threading.Event()

    def slow(x):
        started.set()
        time.sleep(0.01)
        return x

    p = Pipeline([(funcstep(slow), 1)])

    def body():
        with p:
            p.put_all(range(1000))
            assert started.wait(2)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bounded(body, timeout=3)  # draining 1000 x 10 ms would take 10 s
    assert not p.running
    s = p.stats().steps[0]
    assert s.discarded > 0 and s.items_in + s.discarded == 1000


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="needs the main thread"
)
def test_ctrl_c_during_a_foreground_run_stops_without_draining():
    import signal

    gate = threading.Event()

    def gated(x):
        gate.wait(0.02)
        return x

    p = Pipeline([(funcstep(gated), 1)])
    p.put_all(range(1000))  # 1000 x 20 ms: draining would take 20 s
    p.finish()
    main = threading.main_thread().ident
    timer = threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            p.run()
    finally:
        timer.join(5)
        gate.set()
    assert time.monotonic() - t0 < 2
    assert not p.running
    s = p.stats().steps[0]
    assert s.discarded > 0 and s.items_in + s.discarded == 1000


def test_iterstep_failure_aborts_upstream_even_with_an_infinite_source():
    @iterstep
    def crash_at_17(items):
        for x in items:
            if x == 17:
                raise RuntimeError("Argh!")
            yield x

    out = Collect()
    p = Pipeline([(funcstep(ident), 2), (crash_at_17, 1), (out.step(), 1)])
    p.put_iterable(itertools.count())
    with pytest.raises(RuntimeError, match="Argh!") as ei:
        bounded(p.run)
    assert "crash_at_17" in tb_names(ei.value)
    assert out.items == list(range(17))
    assert p.failures[0].where == "iterate"


def test_skipentry_out_of_an_iterstep_is_a_failure():
    @iterstep
    def skipper(items):
        for x in items:
            raise SkipEntry()
            yield x

    p = Pipeline([(skipper, 1)])
    p.put_iterable(range(5))
    with pytest.raises(SkipEntry):
        bounded(p.run)


def test_source_iterable_exception_is_raised_after_draining():
    def source():
        yield from range(5)
        raise OSError("source broke")

    out = Collect()
    p = Pipeline([(out.step(), 1)])
    p.put_iterable(source())
    with pytest.raises(OSError, match="source broke") as ei:
        bounded(p.run)
    assert "source" in tb_names(ei.value)
    assert out.items == [0, 1, 2, 3, 4]
    assert p.failures[0].step == "<source>"


def test_thread_initialize_failure_is_reported_not_silent():
    class Broken(AbstractStep):
        def thread_initialize(self):
            raise ConnectionRefusedError("no database")

        def process(self, item):
            return item

    p = Pipeline([(funcstep(ident), 1), (Broken, 2)])
    p.put_iterable(itertools.count())  # every worker of Broken dies: the source must stop
    with pytest.raises(ConnectionRefusedError):
        bounded(p.run)
    assert p.count == 0
    assert p.ok is False
    assert {f.where for f in p.failures} == {"thread_initialize"}
    assert len(p.failures) == 2


def test_thread_initialize_failure_of_one_worker_others_go_on():
    class HalfBroken(AbstractStep):
        def thread_initialize(self):
            if self.sibling.index == 0:
                raise RuntimeError("worker 0 broken")

        def process(self, item):
            return item

    out = Collect()
    p = Pipeline([(HalfBroken, 2), (out.step(), 1)])
    p.put_all(range(50))
    p.finish()
    with pytest.raises(RuntimeError, match="worker 0 broken"):
        bounded(p.run)
    assert sorted(out.items) == list(range(50))


@pytest.mark.parametrize("hook", ["thread_shutdown", "step_shutdown"])
def test_shutdown_hook_failures_are_reported(hook):
    def boom(self):
        raise RuntimeError(hook)

    Step = type("Step", (AbstractStep,), {"process": lambda self, x: x, hook: boom})
    p = Pipeline([(Step, 2)])
    p.put_all(range(3))
    p.finish()
    with pytest.raises(RuntimeError, match=hook):
        bounded(p.run)
    assert p.count == 3
    assert p.failures[0].where == hook


@pytest.mark.parametrize("hook", ["step_initialize", "initialize"])
def test_initialize_failures_raise_from_run_and_from_enter(hook):
    def boom(self, **kw):
        raise RuntimeError(hook)

    Step = type("Step", (AbstractStep,), {"process": lambda self, x: x, hook: boom})
    p = Pipeline([(Step, 2)])
    p.put(1)
    p.finish()
    with pytest.raises(RuntimeError, match=hook):
        p.run()
    assert not p.running
    q = Pipeline([(Step, 1)])
    with pytest.raises(RuntimeError, match=hook):
        with q:
            pytest.fail("the body must not run")
    assert not q.running


def test_initialize_rejects_unknown_options_clearly():
    p = Pipeline([(funcstep(ident), 1, {"colour": "red"})])
    p.put(1)
    p.finish()
    with pytest.raises(TypeError, match=r"ident.initialize\(\) got options \['colour'\]"):
        p.run()


def test_downstream_failure_with_in_queue_then_stop_never_hangs():
    # paipa P7: after an iterstep crash with in_queue=, stop() never returns.
    @iterstep
    def crash(items):
        for x in items:
            raise RuntimeError(f"crash on {x}")
            yield x

    q = queue.Queue()
    p = Pipeline([(funcstep(ident), 1), (crash, 1)], in_queue=q)
    p.run_forever(background=True)
    q.put(1)
    wait_for(lambda: not p.alive, what="the failure")
    # A fatal failure ends the whole run by itself (every thread exits); stop() reports it.
    wait_for(lambda: not p.running, what="the run to end after the failure")
    q.put(2)
    with pytest.raises(RuntimeError, match="crash on 1"):
        bounded(p.stop, timeout=3)
    # The failure stopped every step at once: item 2 was not taken from the user's queue.
    assert q.qsize() == 1 and q.get_nowait() == 2


def test_put_after_a_failure_that_aborted_the_input_raises_with_the_cause():
    @iterstep
    def crash(items):
        for _ in items:
            raise RuntimeError("dead step")
        yield

    p = Pipeline([(crash, 1)])
    p.run_forever(background=True)
    p.put(1)
    wait_for(lambda: p.stats().steps[0].alive == 0, what="the step to end")
    with pytest.raises(PipelineStateError, match="stopped taking items") as ei:
        p.put(2)
    assert isinstance(ei.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError, match="dead step"):
        bounded(p.stop)


def test_tracker_is_called_around_process_and_its_errors_ignored(caplog):
    calls = []

    class Tracker:
        def before_process(self, step):
            calls.append(("before", type(step).__name__))
            raise RuntimeError("tracker hiccup")

        def after_process(self, step):
            calls.append(("after", type(step).__name__))

    p = Pipeline([(funcstep(ident), 1)], tracker=Tracker())
    p.put_all([1, 2])
    p.finish()
    bounded(p.run)
    assert calls == [("before", "ident"), ("after", "ident")] * 2
    assert p.count == 2
    assert "tracker.before_process failed" in caplog.text


# ------------------------------------------------------------------------------------------------
# alive, state errors, bad arguments


def test_alive_follows_running_and_health():
    gate = threading.Event()

    def gated(x):
        assert gate.wait(5)
        if x == "bad":
            raise ValueError("bad")
        return x

    p = Pipeline([(funcstep(gated), 1)], max_retries=0)
    assert not p.alive  # not running yet
    p.run_forever(background=True)
    assert p.alive
    p.put("bad")
    p.put("good")
    gate.set()
    wait_for(lambda: not p.alive, what="alive to turn False after a failure")
    assert p.running  # still running (draining), but not healthy
    with pytest.raises(ValueError):
        bounded(p.stop)
    assert not p.alive

    q = Pipeline([(funcstep(ident), 1)])
    q.put_iterable(range(3))
    bounded(q.run)
    assert not q.alive  # finished


def test_run_needs_feeding():
    p = Pipeline([(funcstep(ident), 1)])
    p.put(1)
    with pytest.raises(PipelineStateError, match="must be filled with entries") as ei:
        p.run()
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, ringcast.RingcastError)


def test_put_after_finish_raises_instead_of_dropping():
    p = Pipeline([(funcstep(ident), 1)])
    p.put(1)
    p.finish()
    p.finish()  # idempotent
    with pytest.raises(PipelineStateError, match="after finish"):
        p.put(2)
    bounded(p.run)
    assert p.count == 1
    p.put(3)  # accepted for the next run
    p.finish()
    bounded(p.run)
    assert p.count == 2


def test_put_during_stop_either_is_processed_or_raises():
    out = Collect()
    p = Pipeline([(out.step(), 1)])
    p.run_forever(background=True)
    accepted = []
    stopper = threading.Timer(0.02, p.stop)
    stopper.start()
    try:
        for i in range(10**6):
            try:
                p.put(i)
            except PipelineStateError:
                break
            accepted.append(i)
        else:
            pytest.fail("stop() never took effect")
    finally:
        stopper.join(5)
    wait_for(lambda: not p.running, what="the run to end")
    assert sorted(out.items) == accepted


def test_mixing_feeds_is_refused():
    p = Pipeline([(funcstep(ident), 1)])
    p.put_iterable(range(3))
    with pytest.raises(PipelineStateError, match="cannot be combined"):
        p.put(1)
    q = Pipeline([(funcstep(ident), 1)])
    q.put(1)
    with pytest.raises(PipelineStateError, match="cannot be combined"):
        q.put_iterable(range(3))
    r = Pipeline([(funcstep(ident), 1)], in_queue=queue.Queue())
    with pytest.raises(PipelineStateError, match="in_queue"):
        r.put_iterable(range(3))


def test_running_twice_and_stop_without_run_are_refused():
    p = Pipeline([(funcstep(ident), 1)])
    with pytest.raises(PipelineStateError, match="No background thread running"):
        p.stop()
    p.run_forever(background=True)
    try:
        with pytest.raises(PipelineStateError, match="already running"):
            p.run_forever(background=True)
        with pytest.raises(PipelineStateError, match="already running"):
            p.run()
        with pytest.raises(PipelineStateError, match="while the pipeline is running"):
            p.put_iterable([1])
    finally:
        bounded(p.stop)


def test_a_background_run_must_be_stopped_before_the_next_run():
    p = Pipeline([(funcstep(ident), 1)])
    p.put_iterable(range(5))
    p.run_forever(background=True)
    wait_for(lambda: not p.running, what="the run to end by itself")
    with pytest.raises(PipelineStateError, match="previous background run was not stopped"):
        p.run_forever(background=True)
    with pytest.raises(PipelineStateError, match="call stop"):
        p.put(1)
    bounded(p.stop)
    p.put(1)
    p.finish()
    bounded(p.run)
    assert p.count == 6


def test_stop_from_inside_a_step_is_refused():
    errors = []
    holder = {}

    def stopper(x):
        try:
            holder["p"].stop()
        except PipelineStateError as exc:
            errors.append(exc)
        return x

    p = holder["p"] = Pipeline([(funcstep(stopper), 1)])
    p.put(1)
    p.finish()
    bounded(p.run)
    assert len(errors) == 1 and "from a step" in str(errors[0])


def test_stop_timeout_raises_timeout_then_stop_again_finishes():
    gate = threading.Event()
    p = Pipeline([(funcstep(lambda x: gate.wait(5)), 1)])
    p.run_forever(background=True)
    p.put(1)
    with pytest.raises(ringcast.Timeout) as ei:
        p.stop(timeout=0.1)
    assert isinstance(ei.value, TimeoutError)
    assert p.running
    gate.set()
    bounded(p.stop)
    assert p.count == 1


def test_stop_without_drain_discards_queued_items():
    gate = threading.Event()

    def gated(x):
        gate.wait(5)
        return x

    p = Pipeline([(funcstep(gated), 1)])
    p.run_forever(background=True)
    p.put_all(range(100))
    wait_for(lambda: p.stats().steps[0].items_in == 1, what="the first item")
    t = threading.Timer(0.05, gate.set)
    t.start()
    bounded(p.stop, drain=False)
    t.join(5)
    s = p.stats().steps[0]
    assert s.items_in == 1 and s.discarded == 99 and p.count == 1


BAD_PIPELINES = [
    (dict(steps="abc"), "steps must be a list"),
    (dict(steps=[]), "steps is empty"),
    (dict(steps=[(ident, 1)]), "wrap a function with funcstep"),
    (dict(steps=[(int, 1)]), "must be a subclass of AbstractStep"),
    (dict(steps=[(funcstep(ident),)]), "Invalid step definition"),
    (dict(steps=[(funcstep(ident), 1, {}, 4)]), "Invalid step definition"),
    (dict(steps=[funcstep(ident)]), "Invalid step definition"),
    (dict(steps=[(funcstep(ident), 0)]), "workers of step ident .* must be >= 1"),
    (dict(steps=[(funcstep(ident), 2.0)]), "workers of step ident .* must be an int"),
    (dict(steps=[(funcstep(ident), True)]), "must be an int"),
    (dict(steps=[(funcstep(ident), 1, [1])]), "options of step ident .* must be a dict"),
    (dict(steps=[(funcstep(ident), 1)], in_queue=[1]), "in_queue must be a queue"),
    (dict(steps=[(funcstep(ident), 1)], fail_callback=3), "fail_callback must be callable"),
    (dict(steps=[(funcstep(ident), 1)], max_retries=-1), "max_retries must be >= 0"),
    (dict(steps=[(funcstep(ident), 1)], max_retries="3"), "max_retries must be an int"),
    (dict(steps=[(funcstep(ident), 1)], threshold=0), "threshold must be >= 1"),
    (dict(steps=[(funcstep(ident), 1)], tracker=object()), "tracker must have"),
]


@pytest.mark.parametrize("kw,message", BAD_PIPELINES)
def test_bad_arguments_are_refused_with_a_clear_message(kw, message):
    with pytest.raises(ringcast.InvalidArgument, match=message) as ei:
        Pipeline(**kw)
    assert isinstance(ei.value, ValueError)


def test_bad_helper_arguments():
    with pytest.raises(ringcast.InvalidArgument, match="needs a callable"):
        funcstep(3)
    with pytest.raises(ringcast.InvalidArgument, match="needs a callable"):
        iterstep(None)
    with pytest.raises(ringcast.InvalidArgument, match="base must be a subclass"):
        funcstep(ident, base=object)
    p = Pipeline([(funcstep(ident), 1)])
    with pytest.raises(ringcast.InvalidArgument, match="put_all\\(\\) needs an iterable"):
        p.put_all(3)
    with pytest.raises(ringcast.InvalidArgument, match="timeout must be None or a number"):
        p.stop(timeout=-1)
    with pytest.raises(ringcast.InvalidArgument, match="size must be an int"):
        tc = Pipeline([(pp.TimedChunk, 1, {"size": 0})])
        tc.put(1)
        tc.finish()
        tc.run()


def test_exceptions_derive_from_ringcast_error():
    assert issubclass(SkipEntry, ringcast.RingcastError)
    assert issubclass(PipelineStateError, ringcast.RingcastError)
    assert issubclass(PipelineStateError, ValueError)


# ------------------------------------------------------------------------------------------------
# in_queue


def test_in_queue_stop_processes_what_was_queued_and_leaves_later_items_in_the_queue():
    q = queue.Queue()
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
    q = queue.Queue()
    for i in range(20):
        q.put(i)
    p = Pipeline([(funcstep(ident), 2)], in_queue=q)
    p.finish()
    bounded(p.run)
    assert p.count == 20 and q.qsize() == 0


def test_in_queue_back_pressure_reaches_the_user_queue():
    q = queue.Queue()
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
    result = []

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
