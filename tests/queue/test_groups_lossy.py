"""Consumer groups and lossy readers (issue 3, items 2, 3 and 6)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import struct
import time
import zlib

import pytest

import ringcast
from ringcast import BroadcastQueue


def body_for(i: int) -> bytes:
    payload = bytes([i % 251]) * (8 + (i % 40) * 24)
    return struct.pack("<QI", i, zlib.crc32(payload)) + payload


def check(body: bytes) -> int:
    i, crc = struct.unpack_from("<QI", body)
    assert zlib.crc32(body[12:]) == crc, f"torn message {i}"
    return i


# ------------------------------------------------------------------ lossy readers


def test_a_lossy_reader_never_holds_writers_back(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=8192) as q, q.reader(lossy=True) as r:
        assert r.lossy
        for i in range(2000):
            q.send(body_for(i), timeout=0)  # never Full
        m = r.recv(timeout=1)
        assert m.missed == m.seq > 1500
        assert check(m.body) == m.seq
        assert r.missed == m.missed
        nxt = r.recv(timeout=1)
        assert (nxt.seq, nxt.missed) == (m.seq + 1, 0)
        st = q.stats()
        assert st["overruns"] == m.missed
        (me,) = [x for x in st["members"] if x["kind"] == "reader"]
        assert me["lossy"] and me["missed"] == m.missed


def _lossy_consumer(name: str, n: int, ready, out) -> None:
    q = BroadcastQueue(name, create=False)
    r = q.reader(lossy=True)
    ready.put(1)
    got = missed = 0
    last = -1
    ok = True
    while True:
        try:
            m = r.recv(timeout=5)
        except ringcast.QueueShutDown:
            break
        i = check(m.body)
        if i != m.seq or m.seq != last + 1 + m.missed:
            ok = False
        last = m.seq
        got += 1
        missed += m.missed
        if got % 500 == 0:
            time.sleep(0.002)  # a slow live view
    out.put((ok, got, missed, last, r.missed))
    r.close()
    q.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_slow_lossy_process_sees_only_intact_messages_and_counts_gaps(shm_name, method):
    c = mp.get_context(method)
    n = 100_000
    with BroadcastQueue(shm_name, create=True, capacity=1 << 16) as q:
        ready, out = c.Queue(), c.Queue()
        p = c.Process(target=_lossy_consumer, args=(shm_name, n, ready, out))
        p.start()
        try:
            ready.get(timeout=30)
            for i in range(n):
                q.send(body_for(i), timeout=0)
            q.shutdown()
            ok, got, missed, last, total = out.get(timeout=60)
            p.join(30)
        finally:
            if p.is_alive():
                p.kill()
                p.join()
        assert ok, "a gap not reported as missed, or a torn message"
        assert last == n - 1
        assert got + missed == n and total == missed


# ------------------------------------------------------------------ consumer groups


def test_group_arguments(shm_name):
    with BroadcastQueue(shm_name, create=True) as q:
        with pytest.raises(ringcast.InvalidArgument, match="screen"):
            q.reader(group="g", types=["a"])
        with pytest.raises(ringcast.InvalidArgument, match="lossy"):
            q.reader(group="g", lossy=True)
        with pytest.raises(ringcast.InvalidArgument, match="group name"):
            q.reader(group="x" * 41)
        with pytest.raises(ringcast.InvalidArgument, match="group name"):
            q.reader(group="")


def test_a_group_shares_work_and_ungrouped_readers_get_everything(shm_name):
    with BroadcastQueue(shm_name, create=True) as q:
        a, b = q.reader(group="work"), q.reader(group="work")
        other = q.reader(group="audit")
        solo = q.reader()
        assert a.group == "work"
        for i in range(100):
            q.send(body_for(i))
        seen: list[int] = []
        for k in range(100):
            seen.append(check((a if k % 3 else b).recv(timeout=1).body))
        assert sorted(seen) == list(range(100))
        with pytest.raises(ringcast.Empty):
            a.recv(timeout=0)
        assert [check(other.recv(timeout=1).body) for _ in range(100)] == list(range(100))
        assert [check(m.body) for m in solo.recv_many(200)] == list(range(100))
        groups = q.stats()["groups"]
        assert groups["work"]["members"] == 2 and groups["work"]["lag_messages"] == 0
        assert groups["audit"]["members"] == 1
        for r in (a, b, other, solo):
            r.close()
        assert q.stats()["groups"] == {}


def test_a_group_claim_is_held_until_the_next_receive_or_ack(shm_name):
    with BroadcastQueue(shm_name, create=True) as q, q.reader(group="g") as r:
        q.send(b"one")
        q.send(b"two")
        r.recv()
        pinned = [x["pinned"] for x in q.stats()["members"] if x["kind"] == "group_member"]
        assert pinned[0] is not None
        r.ack()
        pinned = [x["pinned"] for x in q.stats()["members"] if x["kind"] == "group_member"]
        assert pinned == [None]
        with r.lease() as m:
            assert bytes(m.body) == b"two"
            with pytest.raises(ringcast.HandleBusy, match="lease"):
                r.recv(timeout=0)
        q.send(b"three")
        assert r.recv(timeout=0).body == b"three"


def _group_worker(name: str, group: str, ready, out) -> None:
    q = BroadcastQueue(name, create=False)
    r = q.reader(group=group)
    ready.put(os.getpid())
    got = [check(m.body) for m in r]  # until shut down
    out.put(got)
    r.close()
    q.close()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_worker_processes_in_a_group_get_each_message_once(shm_name, method):
    c = mp.get_context(method)
    n = 5000
    with BroadcastQueue(shm_name, create=True, capacity=1 << 16) as q:
        ready, out = c.Queue(), c.Queue()
        procs = [
            c.Process(target=_group_worker, args=(shm_name, "g", ready, out)) for _ in range(3)
        ]
        for p in procs:
            p.start()
        try:
            for _ in procs:
                ready.get(timeout=30)
            with q.reader() as solo:
                for i in range(n):
                    q.send(body_for(i), timeout=10)
                    if i % 64 == 0:
                        solo.recv_many(1000)
                solo.recv_many(100_000)
                q.shutdown()
                parts = [out.get(timeout=60) for _ in procs]
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join()
        allseen = sorted(i for part in parts for i in part)
        assert allseen == list(range(n)), "every message exactly once across the group"
        for part in parts:
            assert part == sorted(part), "each worker sees its share in order"


def _claim_and_hang(name: str, out) -> None:
    q = BroadcastQueue(name, create=False)
    r = q.reader(group="g")
    out.put(("joined", -1))
    m = r.recv(timeout=30)
    out.put(("claimed", check(m.body)))
    time.sleep(60)


def test_a_claim_of_a_killed_member_is_redelivered(shm_name):
    ctx = mp.get_context("fork")
    with BroadcastQueue(shm_name, create=True, capacity=1 << 16) as q:
        out = ctx.Queue()
        p = ctx.Process(target=_claim_and_hang, args=(shm_name, out))
        p.start()
        try:
            assert out.get(timeout=30)[0] == "joined"
            with q.reader(group="g") as mine:
                q.send(body_for(0))
                kind, claimed = out.get(timeout=30)
                assert (kind, claimed) == ("claimed", 0)
                for i in range(1, 20):
                    q.send(body_for(i))
                got = [check(mine.recv(timeout=1).body) for _ in range(19)]
                assert got == list(range(1, 20))
                os.kill(p.pid or 0, signal.SIGKILL)
                p.join(10)
                m = mine.recv(timeout=5)  # found by the next wait slice
                assert m.redelivered and check(m.body) == 0
                st = q.stats()
                assert st["redelivered"] == 1 and st["claims_lost"] == 0
                with pytest.raises(ringcast.Empty):
                    mine.recv(timeout=0.2)
        finally:
            if p.is_alive():
                p.kill()
                p.join()


def test_a_group_whose_members_all_died_is_reported(shm_name):
    ctx = mp.get_context("fork")
    with BroadcastQueue(shm_name, create=True, capacity=4096) as q:
        out = ctx.Queue()
        p = ctx.Process(target=_claim_and_hang, args=(shm_name, out))
        p.start()
        try:
            out.get(timeout=30)
            q.send(body_for(0))
            assert out.get(timeout=30)[1] == 0
            os.kill(p.pid or 0, signal.SIGKILL)
            p.join(10)
            for i in range(200):  # 50x the ring: the dead group no longer holds writers back
                q.send(body_for(i), timeout=2)
            st = q.stats()
            assert st["claims_lost"] == 1 and st["groups"] == {}
        finally:
            if p.is_alive():
                p.kill()
                p.join()


def test_shutdown_ends_group_iteration_after_the_group_drained(shm_name):
    with BroadcastQueue(shm_name, create=True) as q, q.reader(group="g") as r:
        for i in range(3):
            q.send(body_for(i))
        q.shutdown()
        assert [check(m.body) for m in r] == [0, 1, 2]
        with pytest.raises(ringcast.QueueShutDown):
            r.recv(timeout=1)


# ------------------------------------------------------------------ waiting costs


def _idle_reader(name: str, spin_us: float, out) -> None:
    q = BroadcastQueue(name, create=False)
    r = q.reader()
    r.spin_us = spin_us
    t0 = time.process_time()
    with pytest.raises(ringcast.Empty):
        r.recv(timeout=1.0)
    out.put(time.process_time() - t0)
    r.close()
    q.close()


@pytest.mark.parametrize("spin_us", [0.0, 20.0, 5000.0])
def test_an_idle_reader_costs_almost_no_cpu_after_its_spin_window(shm_name, spin_us):
    ctx = mp.get_context("fork")
    with BroadcastQueue(shm_name, create=True) as q:
        out = ctx.Queue()
        p = ctx.Process(target=_idle_reader, args=(shm_name, spin_us, out))
        p.start()
        cpu = out.get(timeout=30)
        p.join(10)
        assert q.spin_us == 20.0
        # 1 s blocked: the spin window plus a wake-up every 50 ms slice.
        assert cpu < spin_us / 1e6 + 0.03, f"{cpu * 1000:.1f} ms of CPU while idle"
        with pytest.raises(ringcast.InvalidArgument):
            q.spin_us = -1
