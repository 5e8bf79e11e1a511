"""Helpers of the threaded-pipeline tests (and of the paipa page's, in tests/compat).

Real threads, no mocks. Every blocking call is bounded (``bounded()`` runs it in a helper
thread and fails the test if it does not return in time), and every test module that imports
the autouse fixture ``no_leaked_threads`` checks that each of its tests left no thread running.
"""

from __future__ import annotations

import threading
import time
import traceback

import pytest

from ringcast.pipeline import funcstep


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
