"""ringcast.pipeline's threaded pipelines when steps fail: retries, propagation with
tracebacks, hooks, Ctrl-C. Real threads; no thread may be left running.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time

import pytest

from ringcast.pipeline import (
    AbstractStep,
    Pipeline,
    PipelineStateError,
    SkipEntry,
    funcstep,
    iterstep,
)
from tests.pipeline.support import (
    Collect,
    bounded,
    ident,
    no_leaked_threads,  # noqa: F401  (autouse fixture)
    tb_names,
    wait_for,
)

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
    attempts: dict[int, int] = {}
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
    attempts: dict[int, int] = {}
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
    attempts: dict[int, int] = {}
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

    q: queue.Queue = queue.Queue()
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
