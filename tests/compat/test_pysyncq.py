"""ringcast's pysyncq compatibility layer against the behaviour of pysyncq 0.0.1.

The reference is ``/work/shared/reference/pysyncq.md``: everything it describes is reproduced
here with ``from ringcast import pysyncq as pq``, except its defects D1-D15, for which the
tests check that ringcast does the right thing instead. Real processes, real shared memory.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import multiprocessing as mp
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ringcast
from ringcast import PySyncQ
from ringcast import pysyncq as pq

QHDR = 40  # queue header bytes included in ``size``
MHDR = 16  # message header bytes
JOIN_S = 15.0  # bound on every wait for a child process


# ------------------------------------------------------------------------------ helpers


def _enc(x):
    return x if type(x) is bytes else str(x).encode()


def _cost(sender, typ="", body=""):
    """pysyncq's cost of one message: 16 + the UTF-8 byte lengths of the three strings."""
    return MHDR + len(_enc(sender)) + len(_enc(typ)) + len(_enc(body))


def _shm_path(name):
    return f"/dev/shm/{name}"


def _fill(q, typ="f", body="x" * 20, limit=100_000):
    """Append until the queue is full; return how many messages went in."""
    for n in range(limit):
        try:
            q.append(typ, body)
        except MemoryError:
            return n
    raise AssertionError("the queue never filled up")


def _join(p, timeout=JOIN_S):
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join(5)
        pytest.fail(f"child process {p.name} did not exit within {timeout} s")
    return p.exitcode


def _get(out, timeout=JOIN_S):
    item = out.get(timeout=timeout)
    if isinstance(item, tuple) and item and item[0] == "error":
        pytest.fail(f"child process failed: {item[1:]}")
    return item


class _Res:
    """Queues and processes of one test, cleaned up whatever happens."""

    def __init__(self):
        self.queues = []
        self.procs = []

    def q(self, *args, **kwargs):
        q = pq.PySyncQ(*args, **kwargs)
        self.queues.append(q)
        return q

    def start(self, ctx, target, *args):
        p = ctx.Process(target=target, args=args, daemon=True)
        self.procs.append(p)
        p.start()
        return p


@pytest.fixture
def res():
    r = _Res()
    yield r
    for p in r.procs:
        if p.is_alive():
            p.kill()
        p.join(5)
    for q in reversed(r.queues):
        q.close()


FORK = mp.get_context("fork")
SPAWN = mp.get_context("spawn")


# ------------------------------------------------------------------------------ child targets
# Module level, so that spawn and forkserver children can import them.


def _child_exchange(q, idx, out, go):
    """Open, say hello, read until the parent's 'bye', report, close."""
    try:
        q.open(f"c{idx}")
        out.put(("ready", idx))
        if not go.wait(JOIN_S):
            raise RuntimeError("no go from the parent")
        q.append("hello", f"from c{idx}")
        got = []
        deadline = time.monotonic() + JOIN_S
        while time.monotonic() < deadline:
            m = q.pop(block=True, timer=0.5)
            if m is not None:
                got.append(m)
                if m[1] == "bye":
                    break
        out.put(("got", idx, got, q.start))
    except BaseException as e:
        out.put(("error", idx, repr(e)))
        raise
    finally:
        q.close()


def _child_open_and_wait(q, sender, out, release, delay):
    """Open, report the pid, wait for ``release``, sleep ``delay``, close without reading."""
    try:
        q.open(sender)
        out.put(("ready", os.getpid()))
        release.wait(JOIN_S)
        time.sleep(delay)
    finally:
        q.close()


def _child_drain_later(q, out, go, done):
    """Open; on ``go`` wait a little, then read everything; close only on ``done``."""
    try:
        q.open("reader")
        out.put(("ready", os.getpid()))
        if not go.wait(JOIN_S):
            raise RuntimeError("no go")
        time.sleep(0.3)
        n = len(list(q))
        out.put(("drained", n))
        done.wait(JOIN_S)
    except BaseException as e:
        out.put(("error", repr(e)))
        raise
    finally:
        q.close()


def _child_block_in_pop(q, sender, out):
    """Open and block in pop (this child is SIGKILLed while waiting)."""
    try:
        q.open(sender)
        out.put(("ready", os.getpid()))
        q.pop(block=True, timer=30)
    finally:
        q.close()


def _child_wait_for_type(q, sender, typ, out):
    """Open and read until a message of type ``typ`` arrives; report it."""
    try:
        q.open(sender)
        out.put(("ready", os.getpid()))
        got = None
        deadline = time.monotonic() + JOIN_S
        while got is None and time.monotonic() < deadline:
            m = q.pop(block=True, timer=0.5)
            if m is not None and m[1] == typ:
                got = m
        out.put(("got", got))
    except BaseException as e:
        out.put(("error", repr(e)))
        raise
    finally:
        q.close()


def _child_fill_then_block(q, out, go):
    """Fill the queue with own messages, then block in append (SIGKILLed there)."""
    try:
        q.open("c")
        out.put(("ready", os.getpid()))
        if not go.wait(JOIN_S):
            raise RuntimeError("no go")
        n = 0
        while True:
            try:
                q.append("fill", f"{n:06d}")
            except MemoryError:
                break
            n += 1
            for _ in q:  # consume the own (screened) copy
                pass
        out.put(("full", n))
        q.append("fill", "never", block=True, timer=30)
    finally:
        q.close()


def _child_oversize_forever(q, out):
    """append(block=True, timer=None) of a message larger than the ring (D6)."""
    try:
        q.open("big")
        t0 = time.monotonic()
        try:
            q.append("t", "x" * (q.size * 2), block=True, timer=None)
            out.put(("appended", time.monotonic() - t0))
        except MemoryError as e:
            out.put(("MemoryError", time.monotonic() - t0, str(e)))
    finally:
        q.close()


def _child_late_opener(name, size, out):
    """An unrelated process: attach by name after messages were appended (D1, D8)."""
    q = pq.PySyncQ(name, create=False, size=size)
    try:
        q.open("late")
        first = q.pop()
        c0, t0 = time.process_time(), time.monotonic()
        waited = q.pop(block=True, timer=0.3)
        cpu, wall = time.process_time() - c0, time.monotonic() - t0
        out.put(("ready", first, waited, cpu, wall, q.i, q.slno))
        got = q.pop(block=True, timer=JOIN_S)
        after = q.pop()
        out.put(("got", got, after))
    except BaseException as e:
        out.put(("error", repr(e)))
        raise
    finally:
        q.close()


def _mw_bodies(idx, nmsg, seed):
    rnd = random.Random(seed)
    out = []
    for k in range(nmsg):
        n = rnd.randint(0, 180)
        pad = "".join(chr(97 + (idx * 7 + k + j) % 26) for j in range(n))
        out.append(f"w{idx}-{k:04d}-{pad}")
    return out


def _child_multi_writer(q, idx, nmsg, seed, total, out, go):
    """Append ``nmsg`` messages while reading everything (own messages included)."""
    try:
        q.open(f"w{idx}", filtself=False)
        out.put(("ready", idx))
        if not go.wait(JOIN_S):
            raise RuntimeError("no go")
        bodies = _mw_bodies(idx, nmsg, seed)
        got = []
        sent = 0
        deadline = time.monotonic() + 40
        while len(got) < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"writer {idx}: sent {sent}, got {len(got)} of {total}")
            progressed = False
            if sent < nmsg:
                try:
                    q.append("m", bodies[sent])
                    sent += 1
                    progressed = True
                except MemoryError:
                    pass
            for m in q:
                got.append(m)
                progressed = True
            if not progressed:
                if sent < nmsg:
                    try:
                        q.append("m", bodies[sent], block=True, timer=0.02)
                        sent += 1
                    except MemoryError:
                        pass
                else:
                    m = q.pop(block=True, timer=0.05)
                    if m is not None:
                        got.append(m)
        out.put(("got", idx, got))
    except BaseException as e:
        out.put(("error", idx, repr(e)))
        raise
    finally:
        q.close()


# ------------------------------------------------------------------------------ module surface


def test_import_surface():
    assert ringcast.PySyncQ is pq.PySyncQ
    assert PySyncQ is pq.PySyncQ
    assert pq.qset is pq.header.qset
    assert issubclass(pq.qset, set)
    assert pq.header.defsize == resource.getpagesize()
    assert pq.header.maxshmemory == 40 + (2**64 - 1) * 16 == 295147905179352825880
    assert issubclass(pq.QueueMemoryError, MemoryError)
    assert issubclass(pq.NotOpenError, TypeError)


def test_signatures_and_defaults():
    def defaults(f):
        return {
            k: v.default
            for k, v in inspect.signature(f).parameters.items()
            if v.default is not inspect.Parameter.empty
        }

    assert list(inspect.signature(pq.PySyncQ).parameters) == ["name", "create", "size", "start"]
    assert defaults(pq.PySyncQ) == {
        "name": None,
        "create": True,
        "size": pq.header.defsize,
        "start": None,
    }
    assert defaults(pq.PySyncQ.open) == {"sender": None, "filtself": True}
    assert defaults(pq.PySyncQ.append) == {"msgtype": "", "msg": "", "block": False, "timer": 0.5}
    assert defaults(pq.PySyncQ.pop) == {"block": False, "timer": 0.5, "decode": True}


# ------------------------------------------------------------------------------ constructor


def test_size_above_maxshmemory_raises_memoryerror(shm_name):
    with pytest.raises(MemoryError) as ei:
        pq.PySyncQ(shm_name, size=pq.header.maxshmemory + 1)
    assert str(ei.value) == "Queue size can't exceed 295147905179352825880"
    assert not os.path.exists(_shm_path(shm_name))


def test_invalid_start_method(shm_name):
    with pytest.raises(ValueError) as ei:
        pq.PySyncQ(shm_name, start="bogus")
    assert str(ei.value) == "Not a valid start method, start='bogus'"
    # Checked before the size (pysyncq's order), and before any shared memory exists.
    with pytest.raises(ValueError) as ei:
        pq.PySyncQ(shm_name, size=0, start="bogus")
    assert str(ei.value) == "Not a valid start method, start='bogus'"
    assert not os.path.exists(_shm_path(shm_name))


@pytest.mark.parametrize(
    "size,text",
    [
        (0, "'size' must be a positive number different from zero"),
        (-1, "'size' must be a positive integer"),
        (-4096, "'size' must be a positive integer"),
    ],
)
def test_size_zero_or_negative(shm_name, size, text):
    with pytest.raises(ValueError) as ei:
        pq.PySyncQ(shm_name, size=size)
    assert str(ei.value) == text
    assert not os.path.exists(_shm_path(shm_name))


@pytest.mark.parametrize("size", [1, 10, 16, 24, 32, 39])
def test_size_below_header_is_a_clear_valueerror_and_leaks_nothing(res, shm_name, size):
    """D10: pysyncq raised TypeError/IndexError and left /dev/shm/<name> behind."""
    with pytest.raises(ValueError) as ei:
        pq.PySyncQ(shm_name, size=size)
    assert "40" in str(ei.value) and str(size) in str(ei.value)
    assert not os.path.exists(_shm_path(shm_name))
    q = res.q(shm_name, size=64)  # the name is free again
    assert os.path.exists(_shm_path(shm_name))
    q.close()


def test_size_40_holds_nothing(res, shm_name):
    q = res.q(shm_name, size=40)
    q.open("me")
    with pytest.raises(MemoryError) as ei:
        q.append()
    assert str(ei.value) == "18 byte message > 0 free bytes."
    with pytest.raises(MemoryError):
        q.append("t", "b", block=True, timer=0.05)
    assert q.pop() is None
    assert q.pop(block=True, timer=0.05) is None
    assert str(q) == f"PySyncQ(name={shm_name},size=40,sender=me,pos=0,sn=0)"


def test_create_over_a_live_name_raises_fileexistserror(res, shm_name):
    q = res.q(shm_name, size=256)
    q.open("a", filtself=False)
    with pytest.raises(FileExistsError):
        pq.PySyncQ(shm_name, size=256)
    with pytest.raises(FileExistsError):
        pq.PySyncQ(shm_name, create=True, size=512)
    q.append("t", "still here")
    assert q.pop() == ("a", "t", "still here")


def test_attach_to_a_missing_name_raises_filenotfounderror(shm_name):
    with pytest.raises(FileNotFoundError):
        pq.PySyncQ(shm_name, create=False, size=256)
    assert not os.path.exists(_shm_path(shm_name))


def test_attach_with_another_size_raises_valueerror_and_disturbs_nothing(res, shm_name):
    q = res.q(shm_name, size=1000)
    q.open("a", filtself=False)
    q.append("t", "before")
    with pytest.raises(ValueError):
        pq.PySyncQ(shm_name, create=False, size=2000)
    assert q.pop() == ("a", "t", "before")
    q.append("t", "after")
    assert q.pop() == ("a", "t", "after")


def test_automatic_name(res):
    q = res.q(size=256)
    q2 = res.q(size=256)
    assert q.name is None
    assert isinstance(q.shm.name, str) and q.shm.name
    assert q.shm.name != q2.shm.name
    path = _shm_path(q.shm.name)
    assert os.path.exists(path)
    assert str(q).startswith("PySyncQ(name=None,size=256,")
    # Another instance can attach by the automatic name.
    other = res.q(q.shm.name, create=False, size=256)
    q.open("a")
    other.open("b")
    q.append("t", "hi")
    assert other.pop() == ("a", "t", "hi")
    other.close()
    q.close()
    q2.close()
    assert not os.path.exists(path)


def test_attributes_as_given(res, shm_name):
    q = res.q(shm_name, True, 512, "spawn")
    assert (q.name, q.create, q.size, q.start) == (shm_name, True, 512, "spawn")
    assert q.sender is None
    assert q.shm.name == shm_name
    a = res.q(shm_name, create=False, size=512)
    assert (a.name, a.create, a.size) == (shm_name, False, 512)
    default = mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0]
    assert a.start == default
    d = res.q(shm_name + "-d")
    assert d.size == pq.header.defsize


def test_sender_is_bytes_and_defaults_to_the_pid(res, shm_name):
    q = res.q(shm_name, size=512)
    r = res.q(shm_name, create=False, size=512)
    assert q.sender is None
    q.open()
    assert q.sender == str(os.getpid()).encode()
    assert type(q.sender) is bytes
    r.open("parent")
    assert r.sender == b"parent"
    q.append("t", "x")
    assert r.pop() == (str(os.getpid()), "t", "x")


@pytest.mark.parametrize("bad", [b"bytes", 5])
def test_open_requires_a_str_sender(res, shm_name, bad):
    q = res.q(shm_name, size=256)
    with pytest.raises(AttributeError):
        q.open(bad)
    q.open("ok")  # nothing was half-done
    assert q.sender == b"ok"


def test_str_format(res, shm_name):
    q = res.q(shm_name, size=256)
    assert "name=" + shm_name in str(q)  # works before open (D9)
    q.open("me", filtself=False)
    assert str(q) == f"PySyncQ(name={shm_name},size=256,sender=me,pos=0,sn=0)"
    q.append("t", "body")
    assert _cost("me", "t", "body") == 23
    assert q.pop() == ("me", "t", "body")
    assert str(q) == f"PySyncQ(name={shm_name},size=256,sender=me,pos=23,sn=1)"
    assert (q.i, q.slno) == (23, 1)
    q.close()
    assert str(q) == f"PySyncQ(name={shm_name},size=256,sender=me,pos=23,sn=1)"
    assert "PySyncQ object at" in repr(q)


def test_str_counts_screened_own_messages(res, shm_name):
    q = res.q(shm_name, size=256)
    q.open("ab")
    q.append("t", "body")
    assert q.pop() is None  # own message, screened but consumed
    assert str(q) == f"PySyncQ(name={shm_name},size=256,sender=ab,pos=23,sn=1)"


def test_str_name_none(res):
    q = res.q(size=128)
    q.open("s")
    assert str(q) == "PySyncQ(name=None,size=128,sender=s,pos=0,sn=0)"


# ------------------------------------------------------------------------------ byte accounting


def test_memoryerror_text_has_the_right_numbers(res, shm_name):
    q = res.q(shm_name, size=256)  # L = 216
    q.open("me")
    q.append("t", "body")  # 23 bytes, unread by q itself
    n = _cost("me", "", "x" * 180)
    with pytest.raises(MemoryError) as ei:
        q.append("", "x" * 180)
    assert str(ei.value) == f"{n} byte message > {216 - 23} free bytes."
    # UTF-8 byte lengths: 'é' costs 2 in every field.
    q.append("é", "é" * 10)  # 16 + 2 + 2 + 20 = 40
    with pytest.raises(MemoryError) as ei:
        q.append("", "x" * 180)
    assert str(ei.value) == f"{n} byte message > {216 - 23 - 40} free bytes."
    # A failed append changed nothing.
    with pytest.raises(MemoryError) as ei:
        q.append("", "x" * 180)
    assert str(ei.value) == f"{n} byte message > {153} free bytes."
    assert q.pop() is None  # consume the two own copies
    assert q.pop() is None
    assert q.slno == 2 and q.i == 63


def test_exact_ring_fit(res, shm_name):
    q = res.q(shm_name)  # default size: L = defsize - 40
    L = pq.header.defsize - QHDR
    q.open("me")
    q.append("", "x" * (L - 18))  # costs exactly L
    with pytest.raises(MemoryError) as ei:
        q.append()
    assert str(ei.value) == "18 byte message > 0 free bytes."
    assert q.pop() is None  # consumed (screened): the ring is empty again
    t0 = time.monotonic()
    with pytest.raises(MemoryError) as ei:
        q.append("", "x" * (L - 17), block=True, timer=2)  # L + 1 never fits
    assert time.monotonic() - t0 < 1.0
    assert str(ei.value) == f"{L + 1} byte message > {L} free bytes."
    q.append("", "y" * (L - 18))  # still fits: the failure changed nothing


_texts = st.text(st.characters(codec="utf-8"), max_size=24)
_parts = st.one_of(_texts, st.binary(max_size=24))
_names = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    sender=st.text(st.characters(codec="utf-8"), min_size=1, max_size=8),
    typ=_parts,
    body=_parts,
)
def test_cost_property(shm_name, sender, typ, body):
    """A message of cost c fits a ring of exactly c bytes and not one of c - 1 bytes."""
    c = _cost(sender, typ, body)
    base = f"{shm_name}-{next(_names)}"
    q = pq.PySyncQ(base + "a", size=QHDR + c)
    try:
        q.open(sender, filtself=False)
        q.append(typ, body)
        with pytest.raises(MemoryError) as ei:
            q.append()
        assert str(ei.value) == f"{_cost(sender)} byte message > 0 free bytes."
        assert q.pop(decode=False) == (_enc(sender), _enc(typ), _enc(body))
        assert q.i == 0 and q.slno == 1
    finally:
        q.close()
    q = pq.PySyncQ(base + "b", size=QHDR + c - 1)
    try:
        q.open(sender)
        with pytest.raises(MemoryError) as ei:
            q.append(typ, body, block=True, timer=1)
        assert str(ei.value) == f"{c} byte message > {c - 1} free bytes."
    finally:
        q.close()


def test_no_header_skip_rule(res, shm_name):
    """pysyncq never split a 16-byte message header at the ring's end: it skipped the last
    < 16 bytes, so with a 200-byte ring a 101-byte message no longer fitted after a 98-byte
    one ending at offset 198. ringcast's ring is mapped twice back to back, every record is
    contiguous and nothing is skipped: the thresholds are those of the plain byte count (the
    documented difference in docs/migrating-from-pysyncq.md)."""
    q = res.q(shm_name, size=240)  # L = 200
    q.open("s")
    q.append("", "a" * 83)  # 100 bytes at [0, 100)
    assert q.pop() is None  # own copy consumed: freed
    q.append("", "b" * 81)  # 98 bytes at [100, 198); pysyncq would skip 2 bytes here
    q.append("", "c" * 84)  # 101 bytes: pysyncq refused it ("101 byte message > 100 free")
    with pytest.raises(MemoryError) as ei:
        q.append("", "d")  # 18 bytes > 200 - 199 = 1
    assert str(ei.value) == "18 byte message > 1 free bytes."
    assert q.pop() is None and q.pop() is None
    assert q.i == 299 % 200 and q.slno == 3


# ------------------------------------------------------------------------------ append / pop


class _Custom:
    def __str__(self):
        return "custom!"


@pytest.mark.parametrize(
    "value,stored",
    [
        (b"raw\x00bytes", b"raw\x00bytes"),
        ("text", b"text"),
        ("é", "é".encode()),
        (bytearray(b"ba"), b"bytearray(b'ba')"),
        (None, b"None"),
        (5, b"5"),
        (2.5, b"2.5"),
        ([1, "a"], b"[1, 'a']"),
        (_Custom(), b"custom!"),
    ],
)
def test_append_conversion_rules(res, shm_name, value, stored):
    q = res.q(shm_name, size=512)
    q.open("s", filtself=False)
    q.append(value, value)
    assert q.pop(decode=False) == (b"s", stored, stored)
    q.append(value, value)
    assert q.pop() == ("s", stored.decode(), stored.decode())


def test_pop_results(res, shm_name):
    q = res.q(shm_name, size=512)
    q.open("s", filtself=False)
    assert q.pop() is None
    assert q.pop(decode=False) is None
    q.append()
    assert q.pop() == ("s", "", "")
    q.append("type", "body")
    m = q.pop(decode=False)
    assert m == (b"s", b"type", b"body") and all(type(x) is bytes for x in m)
    q.append("type", "body")
    m = q.pop()
    assert m == ("s", "type", "body") and all(type(x) is str for x in m)
    assert q.pop() is None


def test_messages_are_delivered_to_every_instance_in_order(res, shm_name):
    a = res.q(shm_name, size=1024)
    b = res.q(shm_name, create=False, size=1024)
    c = res.q(shm_name, create=False, size=1024)
    a.open("a")
    b.open("b")
    c.open("c")
    for k in range(5):
        a.append("t", f"a{k}")
        b.append("t", f"b{k}")
    want = [(s, "t", f"{s}{k}") for k in range(5) for s in "ab"]
    assert list(c) == want
    assert list(a) == [m for m in want if m[0] != "a"]
    assert list(b) == [m for m in want if m[0] != "b"]


def test_the_writer_must_pop_its_own_copies(res, shm_name):
    """D13 is kept for compatibility: a writer's own unread messages fill the queue."""
    q = res.q(shm_name, size=200)
    q.open("w")
    n = _fill(q)
    assert n > 0
    with pytest.raises(MemoryError):
        q.append("f", "x" * 20)
    assert list(q) == []  # own messages are screened, but consumed
    assert _fill(q) == n


# ------------------------------------------------------------------------------ screening


def test_screen_by_sender_consumes_and_counts_as_read(res, shm_name):
    size = 300
    a = res.q(shm_name, size=size)
    b = res.q(shm_name, create=False, size=size)
    r = res.q(shm_name, create=False, size=size)
    a.open("a")
    b.open("b")
    r.open("r")
    r.scrnsend.add("a")
    a.append("t", "1")
    b.append("t", "2")
    a.append("t", "3")
    assert r.pop() == ("b", "t", "2")
    assert r.slno == 2  # the screened message was consumed too
    assert r.pop() is None
    assert (r.i, r.slno) == (3 * _cost("a", "t", "1"), 3)
    assert list(a) == [("b", "t", "2")]
    assert list(b) == [("a", "t", "1"), ("a", "t", "3")]
    # Everyone has consumed everything, screened or not: the whole ring is free again.
    a.append("", "x" * (size - QHDR - _cost("a")))


def test_screen_by_type(res, shm_name):
    w = res.q(shm_name, size=512)
    r = res.q(shm_name, create=False, size=512)
    w.open("w")
    r.open("r")
    r.scrntype.add("noise")
    r.scrntype.add(b"raw")
    for t in ["noise", "data", "raw", "noise", "data2"]:
        w.append(t, t)
    assert list(r) == [("w", "data", "data"), ("w", "data2", "data2")]
    assert r.slno == 5


def test_filtself(res, shm_name):
    q = res.q(shm_name, size=256)
    q.open("me")
    assert b"me" in set(q.scrnsend)
    q.append("t", "own")
    assert q.pop() is None
    assert q.slno == 1
    q2 = res.q(shm_name + "-2", size=256)
    q2.open("me", filtself=False)
    assert set(q2.scrnsend) == set()
    q2.append("t", "own")
    assert q2.pop() == ("me", "t", "own")


def test_qset_add_and_constructor_normalise():
    s = pq.qset([1, "x", b"y"])
    assert set(s) == {b"1", b"x", b"y"}
    s.add(7)
    s.add("c1")
    s.add(b"raw")
    s.add(bytearray(b"z"))
    assert set(s) == {b"1", b"x", b"y", b"7", b"c1", b"raw", b"bytearray(b'z')"}
    assert all(type(x) is bytes for x in s)


def test_qset_other_methods_normalise_too():
    """D11: pysyncq normalised only in add(); ringcast normalises everywhere."""
    s = pq.qset()
    s.add("me")
    assert "me" in s and b"me" in s
    s.discard("me")
    assert set(s) == set()
    s.update(["x"], [3])
    assert set(s) == {b"x", b"3"}
    s |= {"y"}
    assert set(s) == {b"x", b"3", b"y"}
    s.remove("x")
    assert set(s) == {b"3", b"y"}
    with pytest.raises(KeyError):
        s.remove("nope")
    s -= {"y"}
    assert set(s) == {b"3"}
    assert all(type(x) is bytes for x in s)


def test_screen_changes_through_str_methods_take_effect(res, shm_name):
    w = res.q(shm_name, size=1024)
    r = res.q(shm_name, create=False, size=1024)
    w.open("w")
    r.open("r", filtself=False)
    assert "w" in w.scrnsend
    w.scrnsend.discard("w")  # now w receives its own messages
    r.scrnsend.update(["w"])  # and r screens them
    w.append("t", "1")
    assert w.pop() == ("w", "t", "1")
    assert r.pop() is None
    r.scrnsend.remove("w")
    r.scrntype |= {"skip"}
    w.append("skip", "2")
    w.append("t", "3")
    assert r.pop() == ("w", "t", "3")
    assert r.slno == 3


def test_rebinding_the_screens_takes_effect(res, shm_name):
    w = res.q(shm_name, size=2048)
    x = res.q(shm_name, create=False, size=2048)
    r = res.q(shm_name, create=False, size=2048)
    w.open("w")
    x.open("x")
    r.open("r")
    r.scrnsend = pq.qset(["w"])
    assert r.scrns == (r.scrnsend, r.scrntype)
    w.append("t", "1")
    x.append("t", "2")
    assert r.pop() == ("x", "t", "2")
    r.scrnsend = {"x"}  # a plain set is accepted and normalised
    assert type(r.scrnsend) is pq.qset and set(r.scrnsend) == {b"x"}
    w.append("t", "3")
    x.append("t", "4")
    assert r.pop() == ("w", "t", "3")
    r.scrntype = pq.qset(["t"])
    w.append("t", "5")
    w.append("u", "6")
    assert r.pop() == ("w", "u", "6")
    assert r.pop() is None


def test_rebinding_the_screens_repeatedly(res, shm_name):
    """Regression: screens pushed to the core were keyed by id(), which a new set can reuse."""
    w = res.q(shm_name, size=2048)
    r = res.q(shm_name, create=False, size=2048)
    w.open("w")
    r.open("r")
    for k in range(20):
        r.scrnsend = pq.qset(["a"])
        assert r.pop() is None
        r.scrnsend = pq.qset(["b"])
        r.scrnsend = pq.qset(["w"])  # w screened: must not be returned
        w.append("t", str(k))
        assert r.pop() is None, f"round {k}"
        r.scrnsend = pq.qset()
        w.append("t", str(k))
        assert r.pop() == ("w", "t", str(k))
        list(w)


# ------------------------------------------------------------------------------ iteration


def test_iteration_drains_without_blocking(res, shm_name):
    w = res.q(shm_name, size=512)
    r = res.q(shm_name, create=False, size=512)
    w.open("w")
    r.open("r")
    for k in range(3):
        w.append("t", k)
    got, exhausted = [], False
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
    tag, got, elapsed = _get(out, timeout=10)
    assert _join(p) == 0
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
    assert not os.path.exists(_shm_path(shm_name))


def test_two_threads_popping_one_instance_share_the_messages(res, shm_name):
    w = res.q(shm_name, size=1024)
    r = res.q(shm_name, create=False, size=1024)
    w.open("w")
    r.open("r")
    n = 400
    outs, errors, stop = ([], []), [], threading.Event()

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
    p = res.start(FORK, _child_drain_later, q, out, go, done)
    assert _get(out)[0] == "ready"
    q.open("w")
    n = _fill(q)
    assert list(q) == []  # own copies consumed; the reader still pins all n
    with pytest.raises(MemoryError):
        q.append("f", "x" * 20)
    go.set()
    t0 = time.monotonic()
    q.append("f", "x" * 20, block=True, timer=5)
    elapsed = time.monotonic() - t0
    tag, drained = _get(out)
    done.set()
    assert tag == "drained"
    assert drained in (n, n + 1)  # n, plus the new one if it arrived during the drain
    assert _join(p) == 0
    assert 0.2 <= elapsed < 3.0


def test_blocking_append_times_out(res, shm_name):
    w = res.q(shm_name, size=300)
    r = res.q(shm_name, create=False, size=300)
    w.open("w")
    r.open("r")
    _fill(w, body="x" * 20)
    list(w)
    free = w.size - QHDR - (w.size - QHDR) // _cost("w", "f", "x" * 20) * _cost("w", "f", "x" * 20)
    n = _cost("w", "f", "x" * 20)
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
        kinds = collections.Counter()
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
    merged = collections.Counter()
    for _ in kids:
        merged.update(_get(out)[2])
    for p in kids:
        assert _join(p) == 0
    assert merged["appended"] > 0 and merged["MemoryError"] > 0
    assert set(merged) == {"appended", "MemoryError"}, merged


def test_oversize_message_fails_at_once_even_when_blocking(res, shm_name):
    """D6: pysyncq waited the whole timer (or for ever) for a message that can never fit."""
    q = res.q(shm_name, size=256)
    q.open("me")
    n = _cost("me", "t", "x" * 300)
    t0 = time.monotonic()
    with pytest.raises(MemoryError) as ei:
        q.append("t", "x" * 300, block=True, timer=10)
    assert time.monotonic() - t0 < 1.0
    assert str(ei.value) == f"{n} byte message > 216 free bytes."
    # timer=None, in a child so that a regression cannot hang the suite.
    out = FORK.Queue()
    p = res.start(FORK, _child_oversize_forever, q, out)
    item = _get(out, timeout=10)
    assert _join(p) == 0
    assert item[0] == "MemoryError" and item[1] < 1.0
    assert item[2] == f"{_cost('big', 't', 'x' * 512)} byte message > 216 free bytes."


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
    assert not os.path.exists(_shm_path(shm_name))  # one close still unlinks


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
    assert os.path.exists(_shm_path(shm_name))
    a.append("t", "x")
    assert a.pop() == ("a", "t", "x")
    a.close()
    assert not os.path.exists(_shm_path(shm_name))


def test_unlink_at_the_last_close(res, shm_name):
    a = res.q(shm_name, size=256)
    b = res.q(shm_name, create=False, size=256)
    a.open("a")
    b.open("b")
    path = _shm_path(shm_name)
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
    c = _cost("w", "t", "early0")
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
    w.append("", "x" * (512 - QHDR - _cost("w")))


def test_late_opener_in_an_unrelated_process(res, shm_name):
    """D1 + D8 across processes: a spawned process attaches by name after traffic began."""
    size = 1000
    w = res.q(shm_name, size=size)
    w.open("p", filtself=False)
    for k in range(3):
        w.append("t", f"early{k}")
    out = SPAWN.Queue()
    p = res.start(SPAWN, _child_late_opener, shm_name, size, out)
    tag, first, waited, cpu, wall, i, slno = _get(out, timeout=30)
    assert tag == "ready"
    assert first is None and waited is None
    assert wall >= 0.28 and cpu < 0.15
    assert (i, slno) == (3 * _cost("p", "t", "early0"), 3)
    w.append("t", "fresh")
    assert _get(out) == ("got", ("p", "t", "fresh"), None)
    assert _join(p) == 0
    assert list(w) == [("p", "t", f"early{k}") for k in range(3)] + [("p", "t", "fresh")]


# ------------------------------------------------------------------------------ close frees (D4)


def test_close_frees_what_only_the_closer_held(res, shm_name):
    w = res.q(shm_name, size=400)
    r = res.q(shm_name, create=False, size=400)
    w.open("w")
    r.open("r")
    n = _fill(w)
    assert n == (400 - QHDR) // _cost("w", "f", "x" * 20)
    assert list(w) == []
    with pytest.raises(MemoryError):
        w.append("f", "x" * 20)
    r.close()
    assert _fill(w) == n  # pysyncq: 0 of n


def test_close_in_another_process_wakes_a_blocked_writer(res, shm_name):
    q = res.q(shm_name, size=400)
    out, release = FORK.Queue(), FORK.Event()
    p = res.start(FORK, _child_open_and_wait, q, "r", out, release, 0.3)
    assert _get(out)[0] == "ready"
    q.open("w")
    n = _fill(q)
    list(q)
    release.set()
    t0 = time.monotonic()
    q.append("f", "x" * 20, block=True, timer=5)
    elapsed = time.monotonic() - t0
    assert _join(p) == 0
    assert 0.2 <= elapsed < 3.0
    list(q)
    assert _fill(q) == n


# ------------------------------------------------------------------------------ dead processes


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_dead_process_stops_pinning(res, shm_name, reaped):
    """D2: a process SIGKILLed without close() pinned pysyncq's queue for ever."""
    q = res.q(shm_name, size=400)
    out, release = FORK.Queue(), FORK.Event()
    p = res.start(FORK, _child_open_and_wait, q, "doomed", out, release, 0)
    assert _get(out)[0] == "ready"
    q.open("w")
    n = _fill(q)
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
    assert _fill(q) == n
    list(q)
    _join(p)
    assert p.exitcode == -signal.SIGKILL
    q.close()
    assert not os.path.exists(_shm_path(shm_name))  # the survivor unlinks


def test_killed_while_blocked_in_pop(res, shm_name):
    """D3: a process killed inside pysyncq's pop(block=True) deadlocked everyone else."""
    q = res.q(shm_name, size=1024)
    out_a, out_b = FORK.Queue(), FORK.Queue()
    a = res.start(FORK, _child_block_in_pop, q, "a", out_a)
    b = res.start(FORK, _child_wait_for_type, q, "b", "after-kill", out_b)
    assert _get(out_a)[0] == "ready"
    assert _get(out_b)[0] == "ready"
    q.open("p")
    time.sleep(0.2)  # both children are asleep in pop
    os.kill(a.pid, signal.SIGKILL)
    a.join(JOIN_S)
    assert a.exitcode == -signal.SIGKILL
    t0 = time.monotonic()
    q.append("after-kill", "x")
    assert time.monotonic() - t0 < 1.0
    assert _get(out_b) == ("got", ("p", "after-kill", "x"))
    assert _join(b) == 0
    assert q.pop(block=True, timer=0.1) is None
    assert q.slno == 1
    n = _fill(q)  # the dead reader pins nothing
    assert n == (1024 - QHDR) // _cost("p", "f", "x" * 20)


def test_killed_while_blocked_in_append(res, shm_name):
    """D3: a process killed inside pysyncq's append(block=True) deadlocked everyone else."""
    q = res.q(shm_name, size=400)
    out, go = FORK.Queue(), FORK.Event()
    p = res.start(FORK, _child_fill_then_block, q, out, go)
    assert _get(out)[0] == "ready"
    q.open("p")
    go.set()
    tag, n = _get(out)
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
    assert _fill(q) == (400 - QHDR) // _cost("p", "f", "x" * 20)


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
    assert _join(p, timeout=60) == 0
    assert list(q) == [("kid", "t", "bye")]
    assert _fill(q) == (400 - QHDR) // _cost("p", "f", "x" * 20)
    q.close()
    assert not os.path.exists(_shm_path(shm_name))


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_child_ending_without_close_leaves_the_queue(res, shm_name, method):
    ctx = mp.get_context(method)
    q = res.q(shm_name, size=400)
    q.open("p")
    p = res.start(ctx, _child_open_and_return, q, "kid")
    assert _join(p, timeout=60) == 0
    info = ringcast.inspect(shm_name)
    assert info["members_dead"] == 0, info


# ------------------------------------------------------------------------------ start methods (D7)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_start_methods(res, shm_name, method):
    ctx = mp.get_context(method)
    q = res.q(shm_name, size=4096, start=method)
    out, go = ctx.Queue(), ctx.Event()
    kids = [res.start(ctx, _child_exchange, q, i, out, go) for i in range(2)]
    assert {_get(out, timeout=60)[1] for _ in kids} == {0, 1}
    q.open("parent")
    go.set()
    q.append("hello", "from parent")
    got = []
    deadline = time.monotonic() + JOIN_S
    while len(got) < 2 and time.monotonic() < deadline:
        m = q.pop(block=True, timer=0.5)
        if m is not None:
            got.append(m)
    assert sorted(got) == [("c0", "hello", "from c0"), ("c1", "hello", "from c1")]
    q.append("bye", "")
    reports = sorted(_get(out)[1:] for _ in kids)
    for p in kids:
        assert _join(p) == 0
    for idx, kid_got, kid_start in reports:
        sib = 1 - idx
        assert kid_start == method
        assert kid_got[-1] == ("parent", "bye", "")
        assert sorted(kid_got[:-1]) == sorted(
            [("parent", "hello", "from parent"), (f"c{sib}", "hello", f"from c{sib}")]
        )
    assert list(q) == []
    q.close()
    assert not os.path.exists(_shm_path(shm_name))


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
    assert _get(out) == ("ready", [b"parent"])
    q.append("t", "to the kid")
    sent.set()
    assert _get(out) == ("popped", None, 1)
    assert _join(p) == 0


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
        res.start(FORK, _child_multi_writer, q, i, nmsg, 1000 + i, total, out, go)
        for i in range(nw)
    ]
    assert {_get(out)[1] for _ in kids} == set(range(nw))
    q.open("reader")
    go.set()
    got = []
    deadline = time.monotonic() + 40
    while len(got) < total and time.monotonic() < deadline:
        m = q.pop(block=True, timer=0.2)
        if m is not None:
            got.append(m)
    reports = {}
    for _ in kids:
        item = _get(out, timeout=45)
        reports[item[1]] = item[2]
    for p in kids:
        assert _join(p) == 0
    expected = {i: _mw_bodies(i, nmsg, 1000 + i) for i in range(nw)}
    assert len(got) == total
    for i in range(nw):
        mine = [m for m in got if m[0] == f"w{i}"]
        assert mine == [(f"w{i}", "m", b) for b in expected[i]]  # intact and in order
    for i in range(nw):
        assert reports[i] == got, f"writer {i} saw another order"
