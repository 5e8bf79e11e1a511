"""Creation races with real processes: attaching while another process creates, a creator
killed (or stopped) half-way through creating, and replacing a stale queue while other
processes attach to it. Each loop is bounded so the tests stay fast."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from typing import Any

import ringcast
from ringcast import BroadcastQueue

ctx = mp.get_context("fork")

#: Rounds of the attach-while-creating and replace-while-attaching races.
ROUNDS = 300
#: Processes attaching in those races.
ATTACHERS = 3
#: Most time one race may take (a round that hangs fails the test instead).
RACE_SECONDS = 30.0


def _entries(prefix: str) -> set[str]:
    return {n for n in os.listdir("/dev/shm") if prefix in n}


def _attach_until_found(name: str, deadline: float) -> tuple[str, Any]:
    """Attach to `name` as soon as it exists; ("ok", q), or ("error", repr of the error)."""
    while True:
        try:
            return "ok", BroadcastQueue(name, create=False)
        except ringcast.SegmentNotFound:
            if time.monotonic() > deadline:
                return "error", "not found before the deadline"
        except ringcast.RingcastError as e:
            return "error", f"{type(e).__name__}: {e}"


def _attacher(base: str, barrier: Any, conn: Any) -> None:
    bad = []
    for r in range(ROUNDS):
        barrier.wait(RACE_SECONDS)
        what, q = _attach_until_found(f"{base}-{r}", time.monotonic() + 10)
        if what != "ok":
            bad.append((r, q))
        barrier.wait(RACE_SECONDS)
        if what == "ok":
            # Closed only once the creator has joined: the last member out removes a queue.
            q.close()
    conn.send(bad)
    conn.close()


def _join_all(procs: list) -> None:
    """Wait for the attacher processes (10 s each), killing any still running."""
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()


def test_attach_while_another_process_creates_waits_for_it(shm_name):
    """Item 12.4: attachers spinning on a name while another process creates it get the
    queue (or not-found, which they retry), never CorruptSegment."""
    barrier = ctx.Barrier(ATTACHERS + 1)
    pipes = [ctx.Pipe(duplex=False) for _ in range(ATTACHERS)]
    procs = [
        ctx.Process(target=_attacher, args=(shm_name, barrier, w), daemon=True) for _, w in pipes
    ]
    for p in procs:
        p.start()
    rng = random.Random(4)
    try:
        for r in range(ROUNDS):
            barrier.wait(RACE_SECONDS)
            time.sleep(rng.uniform(0, 0.0005))
            q = BroadcastQueue(f"{shm_name}-{r}", create=True, capacity=1 << 16)
            barrier.wait(RACE_SECONDS)
            q.close()
        bad = [b for rd, _ in pipes for b in rd.recv()]
    finally:
        _join_all(procs)
    assert bad == [], f"{len(bad)} of {ROUNDS * ATTACHERS} attaches failed, e.g. {bad[:3]}"


def _create_forever(name: str) -> None:
    while True:
        try:
            BroadcastQueue(name, create=True, capacity=1 << 22).close()
        except ringcast.SegmentExists:
            pass


def _half_made(name: str, before: set[str]) -> list[str]:
    """Entries a creator left that are not finished segments of `name` (a half-made object
    under the name itself, or any other new entry such as a creation's scratch object)."""
    out = []
    for n in _entries("") - before:
        if n == name:
            try:
                ringcast.inspect(n)
                continue
            except ringcast.RingcastError:
                pass
        out.append(n)
    return out


def test_creator_killed_during_creation_never_blocks_the_name(shm_name):
    """Item 12.5: stop a creating process at random points of its creations. Whatever it
    has made so far is never a half-made object under the name: anything visible is listed
    as being created, and neither gc nor anyone else removes it while the creator lives.
    Once the creator is SIGKILLed, ls lists any leftover as abandoned, gc removes it, and
    create=True takes the name at once."""
    before = _entries("")
    rng = random.Random(5)
    stops = 0
    deadline = time.monotonic() + 6
    for _ in range(12):
        if time.monotonic() > deadline:
            break
        p = ctx.Process(target=_create_forever, args=(shm_name,), daemon=True)
        p.start()
        time.sleep(0.01)
        for _ in range(30):
            os.kill(p.pid or 0, signal.SIGSTOP)
            stops += 1
            left = _half_made(shm_name, before)
            if left:
                listed = {s["name"]: s for s in ringcast.segments()}
                for n in left:
                    assert n in listed, f"ls does not show the half-made {n}: {listed}"
                    assert listed[n]["kind"] == "creating" and not listed[n]["stale"], listed[n]
                removed = ringcast.gc()
                assert not set(removed) & set(left), f"gc removed a live creation: {removed}"
                assert set(left) <= _entries(""), "a live creator's object disappeared"
            os.kill(p.pid or 0, signal.SIGCONT)
            time.sleep(rng.uniform(0, 0.0003))
        os.kill(p.pid or 0, signal.SIGKILL)
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
        left = _half_made(shm_name, before)
        listed = {s["name"]: s for s in ringcast.segments()}
        for n in left:
            assert n in listed, f"ls does not show the abandoned creation {n}: {listed}"
            assert listed[n]["stale"] and listed[n]["kind"] == "abandoned", listed[n]
        # create=True replaces whatever the dead creator left, at once.
        with BroadcastQueue(shm_name, create=True, capacity=1 << 16) as q, q.reader() as r:
            q.send(b"fresh")
            assert r.recv(timeout=1).body == b"fresh"
        collected = set(ringcast.gc())
        assert set(left) - {shm_name} <= collected, (left, collected)
        assert _entries("") - before == set(), "leftovers after gc"
    assert stops > 0


def _make_stale(base: str, n: int) -> None:
    for r in range(n):
        q = BroadcastQueue(f"{base}-{r}", create=True, capacity=1 << 16)
        q.reader()
    os._exit(0)  # leave every queue behind with a dead creator and dead members


def _stale_attacher(base: str, barrier: Any, conn: Any) -> None:
    bad = []
    for r in range(ROUNDS):
        barrier.wait(RACE_SECONDS)
        what, q = _attach_until_found(f"{base}-{r}", time.monotonic() + 10)
        reader = q.reader() if what == "ok" else None
        barrier.wait(RACE_SECONDS)  # the owner sends once every attacher has its reader
        if reader is not None:
            try:
                m = reader.recv(timeout=2)
                if m.body != f"round {r}".encode():
                    bad.append((r, f"received {m.body!r}"))
            except ringcast.Empty:
                bad.append((r, "attached to a queue that was replaced: received nothing"))
            reader.close()
            q.close()
        elif "NotFound" not in q and "not found" not in q:
            bad.append((r, q))
        barrier.wait(RACE_SECONDS)
    conn.send(bad)
    conn.close()


def test_replacing_a_stale_queue_while_others_attach_never_splits_it(shm_name):
    """Item 12.6: create=True replacing a stale queue races processes attaching to the same
    name. Every attacher ends up on the queue the name refers to (it receives what the owner
    sends there), or gets a clear error; none is left on an unlinked copy or sees a corrupt
    one."""
    maker = ctx.Process(target=_make_stale, args=(shm_name, ROUNDS))
    maker.start()
    maker.join(30)
    assert maker.exitcode == 0
    barrier = ctx.Barrier(ATTACHERS + 1)
    pipes = [ctx.Pipe(duplex=False) for _ in range(ATTACHERS)]
    procs = [
        ctx.Process(target=_stale_attacher, args=(shm_name, barrier, w), daemon=True)
        for _, w in pipes
    ]
    for p in procs:
        p.start()
    replaced = 0
    rng = random.Random(6)
    try:
        for r in range(ROUNDS):
            name = f"{shm_name}-{r}"
            barrier.wait(RACE_SECONDS)
            time.sleep(rng.uniform(0, 0.0005))
            try:
                q = BroadcastQueue(name, create=True, capacity=1 << 16)
                replaced += 1
            except ringcast.SegmentExists:
                # An attacher took the stale queue first: it is in use, so it stays.
                q = BroadcastQueue(name, create=False)
            barrier.wait(RACE_SECONDS)
            q.send(f"round {r}".encode())
            barrier.wait(RACE_SECONDS)
            q.close()
            ringcast.gc()
        bad = [b for rd, _ in pipes for b in rd.recv()]
    finally:
        _join_all(procs)
        for r in range(ROUNDS):
            try:
                ringcast.unlink(f"{shm_name}-{r}")
            except ringcast.SegmentNotFound:
                pass
    split = [b for b in bad if "received nothing" in b[1]]
    assert bad == [], (
        f"{len(bad)} of {ROUNDS * ATTACHERS} attaches failed, {len(split)} of them left on a "
        f"replaced copy: {(split or bad)[:3]}"
    )
    assert replaced > 0
