"""ringcast's pysyncq compatibility layer against the behaviour of pysyncq 0.0.1.

The reference is ``/work/shared/reference/pysyncq.md``: everything it describes is reproduced
here with ``from ringcast import pysyncq as pq``, except its defects D1-D15, for which the
tests check that ringcast does the right thing instead. Real processes, real shared memory.

This file: the module surface, the constructor, byte accounting, append/pop and screening;
``test_pysyncq_waits.py``: blocking and iteration; ``test_pysyncq_lifecycle.py``: misuse,
late openers, close, dead processes, start methods, many writers. What they share (and
the child processes' targets) is in ``pysyncq_support.py``; the ``res`` fixture in
``conftest.py``.
"""

from __future__ import annotations

import inspect
import itertools
import multiprocessing as mp
import os
import resource
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ringcast
from ringcast import PySyncQ
from ringcast import pysyncq as pq
from tests.compat.pysyncq_support import (
    QHDR,
    cost,
    enc,
    fill,
    shm_path,
)

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
    assert not os.path.exists(shm_path(shm_name))


def test_invalid_start_method(shm_name):
    with pytest.raises(ValueError) as ei:
        pq.PySyncQ(shm_name, start="bogus")
    assert str(ei.value) == "Not a valid start method, start='bogus'"
    # Checked before the size (pysyncq's order), and before any shared memory exists.
    with pytest.raises(ValueError) as ei:
        pq.PySyncQ(shm_name, size=0, start="bogus")
    assert str(ei.value) == "Not a valid start method, start='bogus'"
    assert not os.path.exists(shm_path(shm_name))


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
    assert not os.path.exists(shm_path(shm_name))


@pytest.mark.parametrize("size", [1, 10, 16, 24, 32, 39])
def test_size_below_header_is_a_clear_valueerror_and_leaks_nothing(res, shm_name, size):
    """D10: pysyncq raised TypeError/IndexError and left /dev/shm/<name> behind."""
    with pytest.raises(ValueError) as ei:
        pq.PySyncQ(shm_name, size=size)
    assert "40" in str(ei.value) and str(size) in str(ei.value)
    assert not os.path.exists(shm_path(shm_name))
    q = res.q(shm_name, size=64)  # the name is free again
    assert os.path.exists(shm_path(shm_name))
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
    assert not os.path.exists(shm_path(shm_name))


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
    path = shm_path(q.shm.name)
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
    assert cost("me", "t", "body") == 23
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
    n = cost("me", "", "x" * 180)
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
    c = cost(sender, typ, body)
    base = f"{shm_name}-{next(_names)}"
    q = pq.PySyncQ(base + "a", size=QHDR + c)
    try:
        q.open(sender, filtself=False)
        q.append(typ, body)
        with pytest.raises(MemoryError) as ei:
            q.append()
        assert str(ei.value) == f"{cost(sender)} byte message > 0 free bytes."
        assert q.pop(decode=False) == (enc(sender), enc(typ), enc(body))
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
    n = fill(q)
    assert n > 0
    with pytest.raises(MemoryError):
        q.append("f", "x" * 20)
    assert list(q) == []  # own messages are screened, but consumed
    assert fill(q) == n


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
    assert (r.i, r.slno) == (3 * cost("a", "t", "1"), 3)
    assert list(a) == [("b", "t", "2")]
    assert list(b) == [("a", "t", "1"), ("a", "t", "3")]
    # Everyone has consumed everything, screened or not: the whole ring is free again.
    a.append("", "x" * (size - QHDR - cost("a")))


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
