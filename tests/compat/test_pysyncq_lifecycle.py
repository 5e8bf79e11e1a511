"""ringcast's pysyncq compatibility layer against pysyncq 0.0.1 (see ``test_pysyncq.py``):
misuse, late openers, close, dead processes, start methods, many writers."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

import ringcast
from tests.compat.pysyncq_support import (
    FORK,
    JOIN_S,
    QHDR,
    SPAWN,
    child_block_in_pop,
    child_exchange,
    child_fill_then_block,
    child_late_opener,
    child_multi_writer,
    child_open_and_wait,
    child_wait_for_type,
    cost,
    fill,
    get_result,
    join_child,
    mw_bodies,
    shm_path,
)

# ------------------------------------------------------------------------------ misuse (D9)


def test_use_before_open(res, shm_name):
    q = res.q(shm_name, size=256)
    other = res.q(shm_name, create=False, size=256)
    other.open("other", filtself=False)
    with pytest.raises(TypeError, match=r"open\(\)"):
        q.append("t", "b")
    with pytest.raises(TypeError, match=r"open\(\)"):
        q.pop()
    with pytest.raises(TypeError):
        list(q)
    assert str(q) == f"PySyncQ(name={shm_name},size=256,sender=None,pos=0,sn=0)"
    assert other.pop() is None  # nothing was appended
    other.append("t", "x")
    assert other.pop() == ("other", "t", "x")  # and q stole no read count


def test_second_open_raises(res, shm_name):
    q = res.q(shm_name, size=256)
    q.open("a")
    with pytest.raises(ValueError, match=r"open\(\)"):
        q.open("b")
    assert q.sender == b"a"
    q.append("t", "x")
    assert q.pop() is None
    q.close()
    assert not os.path.exists(shm_path(shm_name))  # one close still unlinks


def test_use_after_close(res, shm_name):
    q = res.q(shm_name, size=256)
    q.open("a")
    q.append("t", "body")
    assert q.pop() is None
    q.close()
    for call in (lambda: q.append("t", "b"), q.pop, lambda: list(q), q.open):
        with pytest.raises(ValueError):
            call()
    assert str(q) == f"PySyncQ(name={shm_name},size=256,sender=a,pos=22,sn=1)"
    q.close()
    q.close()
    assert q.shm is None


def test_close_without_open_disturbs_nobody(res, shm_name):
    a = res.q(shm_name, size=256)
    a.open("a", filtself=False)
    b = res.q(shm_name, create=False, size=256)
    b.close()
    assert os.path.exists(shm_path(shm_name))
    a.append("t", "x")
    assert a.pop() == ("a", "t", "x")
    a.close()
    assert not os.path.exists(shm_path(shm_name))


def test_unlink_at_the_last_close(res, shm_name):
    a = res.q(shm_name, size=256)
    b = res.q(shm_name, create=False, size=256)
    a.open("a")
    b.open("b")
    path = shm_path(shm_name)
    assert os.path.exists(path)
    a.close()
    assert os.path.exists(path)
    b.append("t", "x")
    assert b.pop() is None
    b.close()
    assert not os.path.exists(path)


# ------------------------------------------------------------------------------ late open (D1, D8)


def test_late_opener_in_the_same_process(res, shm_name):
    """D1: pysyncq desynchronised (garbage, crash or busy-spin) a reader opened late."""
    w = res.q(shm_name, size=1000)
    w.open("w")
    for k in range(3):
        w.append("t", f"early{k}")  # unread by w: the ring is not empty
    r = res.q(shm_name, create=False, size=1000)
    r.open("r")
    c = cost("w", "t", "early0")
    assert (r.i, r.slno) == (3 * c, 3)
    assert r.pop() is None
    c0, t0 = time.process_time(), time.monotonic()
    assert r.pop(block=True, timer=0.3) is None
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    assert wall >= 0.28
    assert cpu < 0.15, f"pop spun: {cpu:.3f} s of CPU in {wall:.3f} s"
    w.append("t", "fresh")
    assert r.pop() == ("w", "t", "fresh")
    assert r.pop() is None
    assert list(w) == []
    assert w.slno == 4


def test_attach_does_not_reset_the_queue(res, shm_name):
    """D8: pysyncq zeroed a live queue on create=False."""
    w = res.q(shm_name, size=512)
    w.open("w", filtself=False)
    w.append("t", "m1")
    w.append("t", "m2")
    r = res.q(shm_name, create=False, size=512)
    assert w.pop() == ("w", "t", "m1")
    r.open("r")
    w.append("t", "m3")
    assert w.pop() == ("w", "t", "m2")
    assert w.pop() == ("w", "t", "m3")
    assert r.pop() == ("w", "t", "m3")
    assert (w.slno, r.slno) == (3, 3)
    # Accounting is shared: after everyone read, the whole ring is free.
    w.append("", "x" * (512 - QHDR - cost("w")))


def test_late_opener_in_an_unrelated_process(res, shm_name):
    """D1 + D8 across processes: a spawned process attaches by name after traffic began."""
    size = 1000
    w = res.q(shm_name, size=size)
    w.open("p", filtself=False)
    for k in range(3):
        w.append("t", f"early{k}")
    out = SPAWN.Queue()
    p = res.start(SPAWN, child_late_opener, shm_name, size, out)
    tag, first, waited, cpu, wall, i, slno = get_result(out, timeout=30)
    assert tag == "ready"
    assert first is None and waited is None
    assert wall >= 0.28 and cpu < 0.15
    assert (i, slno) == (3 * cost("p", "t", "early0"), 3)
    w.append("t", "fresh")
    assert get_result(out) == ("got", ("p", "t", "fresh"), None)
    assert join_child(p) == 0
    assert list(w) == [("p", "t", f"early{k}") for k in range(3)] + [("p", "t", "fresh")]


# ------------------------------------------------------------------------------ close frees (D4)


def test_close_frees_what_only_the_closer_held(res, shm_name):
    w = res.q(shm_name, size=400)
    r = res.q(shm_name, create=False, size=400)
    w.open("w")
    r.open("r")
    n = fill(w)
    assert n == (400 - QHDR) // cost("w", "f", "x" * 20)
    assert list(w) == []
    with pytest.raises(MemoryError):
        w.append("f", "x" * 20)
    r.close()
    assert fill(w) == n  # pysyncq: 0 of n


def test_close_in_another_process_wakes_a_blocked_writer(res, shm_name):
    q = res.q(shm_name, size=400)
    out, release = FORK.Queue(), FORK.Event()
    p = res.start(FORK, child_open_and_wait, q, "r", out, release, 0.3)
    assert get_result(out)[0] == "ready"
    q.open("w")
    n = fill(q)
    list(q)
    release.set()
    t0 = time.monotonic()
    q.append("f", "x" * 20, block=True, timer=5)
    elapsed = time.monotonic() - t0
    assert join_child(p) == 0
    assert 0.2 <= elapsed < 3.0
    list(q)
    assert fill(q) == n


# ------------------------------------------------------------------------------ dead processes


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_dead_process_stops_pinning(res, shm_name, reaped):
    """D2: a process SIGKILLed without close() pinned pysyncq's queue for ever."""
    q = res.q(shm_name, size=400)
    out, release = FORK.Queue(), FORK.Event()
    p = res.start(FORK, child_open_and_wait, q, "doomed", out, release, 0)
    assert get_result(out)[0] == "ready"
    q.open("w")
    n = fill(q)
    list(q)
    with pytest.raises(MemoryError):
        q.append("f", "x" * 20)
    os.kill(p.pid, signal.SIGKILL)
    if reaped:
        p.join(JOIN_S)
        assert p.exitcode == -signal.SIGKILL
    t0 = time.monotonic()
    q.append("f", "x" * 20, block=True, timer=5)
    assert time.monotonic() - t0 < 3.0
    list(q)
    assert fill(q) == n
    list(q)
    join_child(p)
    assert p.exitcode == -signal.SIGKILL
    q.close()
    assert not os.path.exists(shm_path(shm_name))  # the survivor unlinks


def test_killed_while_blocked_in_pop(res, shm_name):
    """D3: a process killed inside pysyncq's pop(block=True) deadlocked everyone else."""
    q = res.q(shm_name, size=1024)
    out_a, out_b = FORK.Queue(), FORK.Queue()
    a = res.start(FORK, child_block_in_pop, q, "a", out_a)
    b = res.start(FORK, child_wait_for_type, q, "b", "after-kill", out_b)
    assert get_result(out_a)[0] == "ready"
    assert get_result(out_b)[0] == "ready"
    q.open("p")
    time.sleep(0.2)  # both children are asleep in pop
    os.kill(a.pid, signal.SIGKILL)
    a.join(JOIN_S)
    assert a.exitcode == -signal.SIGKILL
    t0 = time.monotonic()
    q.append("after-kill", "x")
    assert time.monotonic() - t0 < 1.0
    assert get_result(out_b) == ("got", ("p", "after-kill", "x"))
    assert join_child(b) == 0
    assert q.pop(block=True, timer=0.1) is None
    assert q.slno == 1
    n = fill(q)  # the dead reader pins nothing
    assert n == (1024 - QHDR) // cost("p", "f", "x" * 20)


def test_killed_while_blocked_in_append(res, shm_name):
    """D3: a process killed inside pysyncq's append(block=True) deadlocked everyone else."""
    q = res.q(shm_name, size=400)
    out, go = FORK.Queue(), FORK.Event()
    p = res.start(FORK, child_fill_then_block, q, out, go)
    assert get_result(out)[0] == "ready"
    q.open("p")
    go.set()
    tag, n = get_result(out)
    assert tag == "full" and n > 0
    time.sleep(0.2)  # the child is asleep in append
    os.kill(p.pid, signal.SIGKILL)
    p.join(JOIN_S)
    assert p.exitcode == -signal.SIGKILL
    t0 = time.monotonic()
    got = list(q)
    assert got == [("c", "fill", f"{k:06d}") for k in range(n)]
    q.append("t", "mine", block=True, timer=5)
    assert q.pop(block=True, timer=0.1) is None  # own copy consumed
    assert time.monotonic() - t0 < 3.0
    assert fill(q) == (400 - QHDR) // cost("p", "f", "x" * 20)


def _child_open_and_return(q, sender):
    """Open, append, and end without close()."""
    q.open(sender)
    q.append("t", "bye")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_child_ending_without_close_pins_nothing(res, shm_name, method):
    ctx = mp.get_context(method)
    q = res.q(shm_name, size=400)
    q.open("p")
    p = res.start(ctx, _child_open_and_return, q, "kid")
    assert join_child(p, timeout=60) == 0
    assert list(q) == [("kid", "t", "bye")]
    assert fill(q) == (400 - QHDR) // cost("p", "f", "x" * 20)
    q.close()
    assert not os.path.exists(shm_path(shm_name))


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_child_ending_without_close_leaves_the_queue(res, shm_name, method):
    ctx = mp.get_context(method)
    q = res.q(shm_name, size=400)
    q.open("p")
    p = res.start(ctx, _child_open_and_return, q, "kid")
    assert join_child(p, timeout=60) == 0
    info = ringcast.inspect(shm_name)
    assert info["members_dead"] == 0, info


# ------------------------------------------------------------------------------ start methods (D7)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_start_methods(res, shm_name, method):
    ctx = mp.get_context(method)
    q = res.q(shm_name, size=4096, start=method)
    out, go = ctx.Queue(), ctx.Event()
    kids = [res.start(ctx, child_exchange, q, i, out, go) for i in range(2)]
    assert {get_result(out, timeout=60)[1] for _ in kids} == {0, 1}
    q.open("parent")
    go.set()
    q.append("hello", "from parent")
    got: list[tuple] = []
    deadline = time.monotonic() + JOIN_S
    while len(got) < 2 and time.monotonic() < deadline:
        m = q.pop(block=True, timer=0.5)
        if m is not None:
            got.append(m)
    assert sorted(got) == [("c0", "hello", "from c0"), ("c1", "hello", "from c1")]
    q.append("bye", "")
    reports = sorted(get_result(out)[1:] for _ in kids)
    for p in kids:
        assert join_child(p) == 0
    for idx, kid_got, kid_start in reports:
        sib = 1 - idx
        assert kid_start == method
        assert kid_got[-1] == ("parent", "bye", "")
        assert sorted(kid_got[:-1]) == sorted(
            [("parent", "hello", "from parent"), (f"c{sib}", "hello", f"from c{sib}")]
        )
    assert list(q) == []
    q.close()
    assert not os.path.exists(shm_path(shm_name))


def _child_report_screens(q, out, sent):
    try:
        inherited = sorted(q.scrnsend)
        q.open("kid")
        out.put(("ready", inherited))
        if not sent.wait(JOIN_S):
            raise RuntimeError("the parent did not send")
        m = q.pop()
        out.put(("popped", m, q.slno))
    except BaseException as e:
        out.put(("error", repr(e)))
        raise
    finally:
        q.close()


def test_fork_after_open_inherits_the_screens(res, shm_name):
    """pysyncq: a child forked after the parent's open() inherits b'parent' in scrnsend and
    silently drops the parent's messages (hence the documented order: children open first)."""
    q = res.q(shm_name, size=512)
    q.open("parent")
    out, sent = FORK.Queue(), FORK.Event()
    p = res.start(FORK, _child_report_screens, q, out, sent)
    assert get_result(out) == ("ready", [b"parent"])
    q.append("t", "to the kid")
    sent.set()
    assert get_result(out) == ("popped", None, 1)
    assert join_child(p) == 0


def test_constructor_does_not_fix_the_global_start_method(shm_name):
    code = "\n".join(
        [
            "import multiprocessing as mp, sys",
            "from ringcast import pysyncq as pq",
            "assert mp.get_start_method(allow_none=True) is None",
            "q = pq.PySyncQ(sys.argv[1], size=256)",
            "print(q.start)",
            "print(mp.get_start_method(allow_none=True))",
            "mp.set_start_method('spawn')",
            "print(mp.get_start_method())",
            "q.close()",
        ]
    )
    r = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, shm_name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [mp.get_all_start_methods()[0], "None", "spawn"]


# ------------------------------------------------------------------------------ many writers


def test_multi_writer_total_order(res, shm_name):
    nw, nmsg = 3, 60
    total = nw * nmsg
    q = res.q(shm_name, size=QHDR + 700)
    out, go = FORK.Queue(), FORK.Event()
    kids = [
        res.start(FORK, child_multi_writer, q, i, nmsg, 1000 + i, total, out, go) for i in range(nw)
    ]
    assert {get_result(out)[1] for _ in kids} == set(range(nw))
    q.open("reader")
    go.set()
    got: list[tuple] = []
    deadline = time.monotonic() + 40
    while len(got) < total and time.monotonic() < deadline:
        m = q.pop(block=True, timer=0.2)
        if m is not None:
            got.append(m)
    reports = {}
    for _ in kids:
        item = get_result(out, timeout=45)
        reports[item[1]] = item[2]
    for p in kids:
        assert join_child(p) == 0
    expected = {i: mw_bodies(i, nmsg, 1000 + i) for i in range(nw)}
    assert len(got) == total
    for i in range(nw):
        mine = [m for m in got if m[0] == f"w{i}"]
        assert mine == [(f"w{i}", "m", b) for b in expected[i]]  # intact and in order
    for i in range(nw):
        assert reports[i] == got, f"writer {i} saw another order"
