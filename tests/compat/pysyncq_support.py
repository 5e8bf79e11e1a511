"""What the pysyncq compatibility tests share: pysyncq's byte accounting, bounded waits for
child processes, and the child processes' targets (module level, so that spawn and
forkserver children can import them by name)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import random
import time
from collections.abc import Iterator

import pytest

from ringcast import pysyncq as pq

QHDR = 40  # queue header bytes included in ``size``
MHDR = 16  # message header bytes
JOIN_S = 15.0  # bound on every wait for a child process


# ------------------------------------------------------------------------------ helpers


def enc(x):
    return x if type(x) is bytes else str(x).encode()


def cost(sender, typ="", body=""):
    """pysyncq's cost of one message: 16 + the UTF-8 byte lengths of the three strings."""
    return MHDR + len(enc(sender)) + len(enc(typ)) + len(enc(body))


def shm_path(name):
    return f"/dev/shm/{name}"


def fill(q, typ="f", body="x" * 20, limit=100_000):
    """Append until the queue is full; return how many messages went in."""
    for n in range(limit):
        try:
            q.append(typ, body)
        except MemoryError:
            return n
    raise AssertionError("the queue never filled up")


def join_child(p, timeout=JOIN_S):
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join(5)
        pytest.fail(f"child process {p.name} did not exit within {timeout} s")
    return p.exitcode


def get_result(out, timeout=JOIN_S):
    item = out.get(timeout=timeout)
    if isinstance(item, tuple) and item and item[0] == "error":
        pytest.fail(f"child process failed: {item[1:]}")
    return item


FORK = mp.get_context("fork")
SPAWN = mp.get_context("spawn")


# ------------------------------------------------------------------------------ child targets
# Module level, so that spawn and forkserver children can import them.


@contextlib.contextmanager
def reported(q, out, *tag) -> Iterator[None]:
    """A child's body: an exception is reported to the parent as ``("error", *tag, repr)``
    and raised again; ``q`` is closed whatever happens."""
    try:
        yield
    except BaseException as e:
        out.put(("error", *tag, repr(e)))
        raise
    finally:
        q.close()


def child_exchange(q, idx, out, go):
    """Open, say hello, read until the parent's 'bye', report, close."""
    with reported(q, out, idx):
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


def child_open_and_wait(q, sender, out, release, delay):
    """Open, report the pid, wait for ``release``, sleep ``delay``, close without reading."""
    try:
        q.open(sender)
        out.put(("ready", os.getpid()))
        release.wait(JOIN_S)
        time.sleep(delay)
    finally:
        q.close()


def child_drain_later(q, out, go, done):
    """Open; on ``go`` wait a little, then read everything; close only on ``done``."""
    with reported(q, out):
        q.open("reader")
        out.put(("ready", os.getpid()))
        if not go.wait(JOIN_S):
            raise RuntimeError("no go")
        time.sleep(0.3)
        n = len(list(q))
        out.put(("drained", n))
        done.wait(JOIN_S)


def child_block_in_pop(q, sender, out):
    """Open and block in pop (this child is SIGKILLed while waiting)."""
    try:
        q.open(sender)
        out.put(("ready", os.getpid()))
        q.pop(block=True, timer=30)
    finally:
        q.close()


def child_wait_for_type(q, sender, typ, out):
    """Open and read until a message of type ``typ`` arrives; report it."""
    with reported(q, out):
        q.open(sender)
        out.put(("ready", os.getpid()))
        got = None
        deadline = time.monotonic() + JOIN_S
        while got is None and time.monotonic() < deadline:
            m = q.pop(block=True, timer=0.5)
            if m is not None and m[1] == typ:
                got = m
        out.put(("got", got))


def child_fill_then_block(q, out, go):
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


def child_oversize_forever(q, out):
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


def child_late_opener(name, size, out):
    """An unrelated process: attach by name after messages were appended (D1, D8)."""
    q = pq.PySyncQ(name, create=False, size=size)
    with reported(q, out):
        q.open("late")
        first = q.pop()
        c0, t0 = time.process_time(), time.monotonic()
        waited = q.pop(block=True, timer=0.3)
        cpu, wall = time.process_time() - c0, time.monotonic() - t0
        out.put(("ready", first, waited, cpu, wall, q.i, q.slno))
        got = q.pop(block=True, timer=JOIN_S)
        after = q.pop()
        out.put(("got", got, after))


def mw_bodies(idx, nmsg, seed):
    rnd = random.Random(seed)
    out = []
    for k in range(nmsg):
        n = rnd.randint(0, 180)
        pad = "".join(chr(97 + (idx * 7 + k + j) % 26) for j in range(n))
        out.append(f"w{idx}-{k:04d}-{pad}")
    return out


def child_multi_writer(q, idx, nmsg, seed, total, out, go):
    """Append ``nmsg`` messages while reading everything (own messages included)."""
    with reported(q, out, idx):
        q.open(f"w{idx}", filtself=False)
        out.put(("ready", idx))
        if not go.wait(JOIN_S):
            raise RuntimeError("no go")
        bodies = mw_bodies(idx, nmsg, seed)
        got: list[tuple] = []
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
