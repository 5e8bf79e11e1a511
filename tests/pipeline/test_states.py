"""ringcast.pipeline's threaded Pipeline as a state machine: alive, refused calls in the wrong
state, bad arguments. Real threads; no thread may be left running.
"""

from __future__ import annotations

import queue
import threading

import pytest

import ringcast
from ringcast import pipeline as pp
from ringcast.pipeline import (
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
    wait_for,
)

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
    # A put() racing stop() either raises or its item is processed by the run. A put() made
    # once the run is over is not "during stop": it fills the input of the next run
    # (docs/pipeline.md, Feeding). Under load this thread can miss the whole window in which
    # put() raises (the timer can even fire before the loop starts), so the loop also ends at
    # the first put made after the run was seen to be over, and the next run must process
    # what such puts accepted: nothing accepted is ever dropped.
    out = Collect()
    p = Pipeline([(out.step(), 1)])
    p.run_forever(background=True)
    accepted = []
    stopper = threading.Timer(0.02, p.stop)
    stopper.start()
    try:
        for i in range(10**6):
            over = not p.running
            try:
                p.put(i)
            except PipelineStateError:
                break
            accepted.append(i)
            if over:
                break
        else:
            pytest.fail("stop() never took effect")
    finally:
        stopper.join(5)
    assert not stopper.is_alive()
    wait_for(lambda: not p.running, what="the run to end")
    # the stopped run processed exactly the items put before its input ended (a prefix) ...
    n = len(out.items)
    assert sorted(out.items) == accepted[:n]
    # ... and the only items left for the next run are those of puts that took effect after
    # stop() had returned: at most the one begun as the run ended and the one after it
    assert len(accepted) - n <= 2
    p.finish()
    bounded(p.run)
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
    holder: dict[str, Pipeline] = {}

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
        funcstep(3)  # type: ignore[arg-type]  # wrong on purpose
    with pytest.raises(ringcast.InvalidArgument, match="needs a callable"):
        iterstep(None)  # type: ignore[arg-type]  # wrong on purpose
    with pytest.raises(ringcast.InvalidArgument, match="base must be a subclass"):
        funcstep(ident, base=object)
    p = Pipeline([(funcstep(ident), 1)])
    with pytest.raises(ringcast.InvalidArgument, match="put_all\\(\\) needs an iterable"):
        p.put_all(3)  # type: ignore[arg-type]  # wrong on purpose
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
