"""ringcast's pysyncq compatibility layer against pysyncq 0.0.1 (see ``test_pysyncq.py``):
iteration, blocking pops and appends, timers, threads sharing an instance, decode errors."""

from __future__ import annotations

import collections
import os
import threading
import time

import pytest

from ringcast import pysyncq as pq
from tests.compat.pysyncq_support import (
    FORK,
    QHDR,
    child_drain_later,
    child_oversize_forever,
    cost,
    fill,
    get_result,
    join_child,
    shm_path,
)

# ------------------------------------------------------------------------------ iteration


def test_iteration_drains_without_blocking(res, shm_name):
    w = res.q(shm_name, size=512)
    r = res.q(shm_name, create=False, size=512)
    w.open("w")
    r.open("r")
    for k in range(3):
        w.append("t", k)
    got: list[tuple] = []
    exhausted: bool | str = False
    t0 = time.monotonic()
    for m in r:
        got.append(m)
    else:
        exhausted = True
    assert time.monotonic() - t0 < 0.3
    assert exhausted and got == [("w", "t", str(k)) for k in range(3)]
    for _m in r:
        pytest.fail("nothing left")
    else:
        exhausted = "again"
    assert exhausted == "again"
    w.append("t", "x")
    assert list(r(False, 0.5, False)) == [(b"w", b"t", b"x")]


def _append_at_intervals(q, n, gap, stop):
    for k in range(n):
        if stop.wait(gap):
            return
        q.append("t", str(k))


def test_call_blocking_iteration(res, shm_name):
    w = res.q(shm_name, size=512)
    r = res.q(shm_name, create=False, size=512)
    w.open("w")
    r.open("r")
    stop = threading.Event()
    th = threading.Thread(target=_append_at_intervals, args=(w, 4, 0.05, stop))
    t0 = time.monotonic()
    th.start()
    try:
        got = list(r(block=True, timer=0.2))
    finally:
        stop.set()
        th.join(5)
    elapsed = time.monotonic() - t0
    assert got == [("w", "t", str(k)) for k in range(4)]
    # Each pop has its own timer: the loop ends about 0.2 s after the last message.
    assert 0.38 <= elapsed < 2.5


def test_pop_timer_bounds_the_whole_call(res, shm_name):
    """Wake-ups by screened messages do not restart the timer."""
    w = res.q(shm_name, size=4096)
    r = res.q(shm_name, create=False, size=4096)
    w.open("w")
    r.open("r")
    r.scrnsend.add("w")
    stop = threading.Event()
    th = threading.Thread(target=_append_at_intervals, args=(w, 40, 0.03, stop))
    th.start()
    try:
        t0 = time.monotonic()
        assert r.pop(block=True, timer=0.3) is None
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        th.join(5)
    assert 0.28 <= elapsed < 0.9
    assert r.slno > 0  # it did consume the screened messages meanwhile


def test_pop_is_woken_promptly_and_times_out(res, shm_name):
    w = res.q(shm_name, size=512)
    r = res.q(shm_name, create=False, size=512)
    w.open("w")
    r.open("r")
    t0 = time.monotonic()
    assert r.pop(block=True, timer=0.25) is None
    assert 0.24 <= time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    assert r.pop(block=True, timer=-1) is None
    assert time.monotonic() - t0 < 0.1
    stop = threading.Event()
    th = threading.Thread(target=_append_at_intervals, args=(w, 1, 0.1, stop))
    th.start()
    try:
        t0 = time.monotonic()
        m = r.pop(block=True, timer=5)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        th.join(5)
    assert m == ("w", "t", "0")
    assert elapsed < 1.0


def test_pop_block_with_timer_zero_returns_at_once(res, shm_name):
    """D5: pysyncq treated timer=0 as 'wait for ever'."""
    w = res.q(shm_name, size=512)
    r = res.q(shm_name, create=False, size=512)
    w.open("w")
    r.open("r")
    stop = threading.Event()
    # Guarantees a wake-up should pop(timer=0) wrongly wait: it would then return this message.
    th = threading.Thread(target=_append_at_intervals, args=(w, 1, 2.0, stop))
    th.start()
    try:
        t0 = time.monotonic()
        m = r.pop(block=True, timer=0)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        th.join(10)
    assert m is None and elapsed < 0.5


def _child_iterate_timer_zero(q, out):
    try:
        q.open("it")
        t0 = time.monotonic()
        got = list(q(block=True, timer=0))
        out.put(("iterated", got, time.monotonic() - t0))
    finally:
        q.close()


def test_call_block_with_timer_zero_returns_at_once(res, shm_name):
    """D5 for ``q(block=True, timer=0)``, in a child so that a regression cannot hang."""
    q = res.q(shm_name, size=512)
    out = FORK.Queue()
    p = res.start(FORK, _child_iterate_timer_zero, q, out)
    tag, got, elapsed = get_result(out, timeout=10)
    assert join_child(p) == 0
    assert tag == "iterated" and got == [] and elapsed < 0.5


def test_threads_can_share_one_instance(res, shm_name):
    """pysyncq's condition lock is released while a pop waits, so another thread of the
    process can use the same object meanwhile (a plain exception there would break it)."""
    w = res.q(shm_name, size=4096)
    r = res.q(shm_name, create=False, size=4096)
    w.open("w")
    r.open("r")
    got, errors = [], []

    def waiter():
        try:
            got.append(r.pop(block=True, timer=5))
        except BaseException as e:
            errors.append(e)

    th = threading.Thread(target=waiter)
    th.start()
    try:
        time.sleep(0.2)  # the thread is waiting in pop
        t0 = time.monotonic()
        assert r.pop() is None
        assert r.pop(block=True, timer=0.1) is None
        assert list(r) == []
        assert time.monotonic() - t0 < 0.6
        w.append("t", "for the thread")
    finally:
        th.join(10)
    assert not errors and got == [("w", "t", "for the thread")]


def test_close_from_another_thread_ends_a_waiting_pop(res, shm_name):
    q = res.q(shm_name, size=512)
    q.open("me")
    errors, t_end = [], []

    def waiter():
        try:
            q.pop(block=True, timer=5)
        except BaseException as e:
            errors.append(e)
        t_end.append(time.monotonic())

    th = threading.Thread(target=waiter)
    th.start()
    try:
        time.sleep(0.2)
        t0 = time.monotonic()
        q.close()
        assert time.monotonic() - t0 < 1.5
    finally:
        th.join(10)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)  # use after close
    assert t_end[0] - t0 < 2.0
    assert not os.path.exists(shm_path(shm_name))


def test_two_threads_popping_one_instance_share_the_messages(res, shm_name):
    w = res.q(shm_name, size=1024)
    r = res.q(shm_name, create=False, size=1024)
    w.open("w")
    r.open("r")
    n = 400
    outs: tuple[list[int], list[int]] = ([], [])
    errors: list[BaseException] = []
    stop = threading.Event()

    def popper(out):
        try:
            while not stop.is_set():
                m = r.pop(block=True, timer=0.05)
                if m is not None:
                    out.append(int(m[2]))
        except BaseException as e:
            errors.append(e)

    ths = [threading.Thread(target=popper, args=(o,)) for o in outs]
    for th in ths:
        th.start()
    try:
        for k in range(n):
            list(w)  # consume the own copies
            w.append("t", k, block=True, timer=5)
        deadline = time.monotonic() + 10
        while len(outs[0]) + len(outs[1]) < n and time.monotonic() < deadline and not errors:
            time.sleep(0.01)
    finally:
        stop.set()
        for th in ths:
            th.join(10)
    assert not errors, errors
    assert sorted(outs[0] + outs[1]) == list(range(n))  # each message exactly once
    assert all(o == sorted(o) for o in outs)


# ------------------------------------------------------------------------------ blocking append


def test_blocking_append_returns_when_a_reader_frees_space(res, shm_name):
    q = res.q(shm_name, size=300)
    out, go, done = FORK.Queue(), FORK.Event(), FORK.Event()
    p = res.start(FORK, child_drain_later, q, out, go, done)
    assert get_result(out)[0] == "ready"
    q.open("w")
    n = fill(q)
    assert list(q) == []  # own copies consumed; the reader still pins all n
    with pytest.raises(MemoryError):
        q.append("f", "x" * 20)
    go.set()
    t0 = time.monotonic()
    q.append("f", "x" * 20, block=True, timer=5)
    elapsed = time.monotonic() - t0
    tag, drained = get_result(out)
    done.set()
    assert tag == "drained"
    assert drained in (n, n + 1)  # n, plus the new one if it arrived during the drain
    assert join_child(p) == 0
    assert 0.2 <= elapsed < 3.0


def test_blocking_append_times_out(res, shm_name):
    w = res.q(shm_name, size=300)
    r = res.q(shm_name, create=False, size=300)
    w.open("w")
    r.open("r")
    fill(w, body="x" * 20)
    list(w)
    free = w.size - QHDR - (w.size - QHDR) // cost("w", "f", "x" * 20) * cost("w", "f", "x" * 20)
    n = cost("w", "f", "x" * 20)
    for timer, lo, hi in [(0.3, 0.29, 2.0), (0, 0, 0.2), (-1, 0, 0.2)]:
        t0 = time.monotonic()
        with pytest.raises(MemoryError) as ei:
            w.append("f", "x" * 20, block=True, timer=timer)
        assert lo <= time.monotonic() - t0 < hi
        assert str(ei.value) == f"{n} byte message > {free} free bytes."
    # The failed appends wrote nothing.
    assert len(list(r)) == (w.size - QHDR) // n


def _child_hammer(q, idx, seconds, out):
    """Blocking appends with short timers on a crowded ring; count the outcomes."""
    try:
        q.open(f"h{idx}")
        kinds: collections.Counter[str] = collections.Counter()
        end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < end:
            try:
                q.append("t", "x" * 30, block=True, timer=0.002 * (k % 5))
                kinds["appended"] += 1
            except MemoryError:
                kinds["MemoryError"] += 1
            except Exception as e:
                kinds[f"{type(e).__name__}: {e}"] += 1
            k += 1
            if k % 7 == 0:
                for _ in q:
                    pass
        out.put(("kinds", idx, dict(kinds)))
    except BaseException as e:
        out.put(("error", idx, repr(e)))
        raise
    finally:
        q.close()


def test_contended_blocking_append_raises_only_memoryerror(res, shm_name):
    """When the timer runs out, append raises pysyncq's MemoryError and nothing else, even
    when it ran out while waiting for another writer (ringcast's core raised Timeout)."""
    q = res.q(shm_name, size=400)
    out = FORK.Queue()
    kids = [res.start(FORK, _child_hammer, q, i, 1.0, out) for i in range(4)]
    merged: collections.Counter[str] = collections.Counter()
    for _ in kids:
        merged.update(get_result(out)[2])
    for p in kids:
        assert join_child(p) == 0
    assert merged["appended"] > 0 and merged["MemoryError"] > 0
    assert set(merged) == {"appended", "MemoryError"}, merged


def test_oversize_message_fails_at_once_even_when_blocking(res, shm_name):
    """D6: pysyncq waited the whole timer (or for ever) for a message that can never fit."""
    q = res.q(shm_name, size=256)
    q.open("me")
    n = cost("me", "t", "x" * 300)
    t0 = time.monotonic()
    with pytest.raises(MemoryError) as ei:
        q.append("t", "x" * 300, block=True, timer=10)
    assert time.monotonic() - t0 < 1.0
    assert str(ei.value) == f"{n} byte message > 216 free bytes."
    # timer=None, in a child so that a regression cannot hang the suite.
    out = FORK.Queue()
    p = res.start(FORK, child_oversize_forever, q, out)
    item = get_result(out, timeout=10)
    assert join_child(p) == 0
    assert item[0] == "MemoryError" and item[1] < 1.0
    assert item[2] == f"{cost('big', 't', 'x' * 512)} byte message > 216 free bytes."


def test_oversize_type_raises_memoryerror(res, shm_name):
    """A type longer than ringcast's 65535-byte field limit that cannot fit anyway."""
    q = res.q(shm_name)
    q.open("me")
    with pytest.raises(MemoryError) as ei:
        q.append("t" * 70_000, "")
    assert str(ei.value) == f"{70_018} byte message > {pq.header.defsize - QHDR} free bytes."


def test_type_over_65535_bytes_is_refused_clearly(res, shm_name):
    """D15: sender and type are limited to 65535 bytes each (pysyncq: 2**32-1); a longer one
    in a queue large enough for it raises a ValueError naming the limit, and nothing is sent."""
    q = res.q(shm_name, size=QHDR + 70_100)
    q.open("me", filtself=False)
    with pytest.raises(ValueError, match="65535"):
        q.append("t" * 70_000, "body")
    assert q.pop() is None
    q.append("t" * 65_535, "body")
    assert q.pop() == ("me", "t" * 65_535, "body")


# ------------------------------------------------------------------------------ decode errors


def test_undecodable_message_is_not_lost(res, shm_name):
    """D12: pysyncq consumed the message before raising UnicodeDecodeError."""
    w = res.q(shm_name, size=512)
    r = res.q(shm_name, create=False, size=512)
    w.open("w")
    r.open("r")
    w.append("t", b"\xff\xfeok")
    w.append(b"\xc3", "body")
    w.append("t", "next")
    with pytest.raises(UnicodeDecodeError):
        r.pop()
    with pytest.raises(UnicodeDecodeError):
        r.pop()
    assert r.slno == 0
    assert r.pop(decode=False) == (b"w", b"t", b"\xff\xfeok")
    with pytest.raises(UnicodeDecodeError):
        r.pop()
    assert r.pop(decode=False) == (b"w", b"\xc3", b"body")
    assert r.pop() == ("w", "t", "next")
    assert r.pop() is None
