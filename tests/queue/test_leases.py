"""Zero-copy leases, array messages and in-place reservations (issue 3, items 1 and 5)."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

import ringcast
from ringcast import BroadcastQueue

ctx = mp.get_context("fork")


def test_lease_is_a_read_only_zero_copy_view(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=1 << 16) as q, q.reader() as r:
        q.send(b"hello leases", type="greeting")
        with r.lease(timeout=1) as m:
            assert (m.seq, m.type, m.sender, len(m)) == (0, "greeting", q.sender, 12)
            v = memoryview(m)
            assert v.readonly and bytes(v) == b"hello leases"
            with pytest.raises(TypeError):
                v[0] = 0
            assert m.tobytes() == b"hello leases"
            assert bytes(m.body) == b"hello leases"
            assert m.views == 1
            del v
            assert m.views == 0
            assert r.leases_held == 1
        assert m.released and r.leases_held == 0
        with pytest.raises(ringcast.HandleClosed):
            memoryview(m)
        with pytest.raises(ringcast.HandleClosed):
            m.tobytes()
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(m)
        with pytest.raises(ringcast.Empty):
            r.lease(timeout=0)
        # Without a with block: release() ends it; dropping it does too.
        q.send(b"a")
        q.send(b"b")
        m1 = r.lease(0)
        m2 = r.lease(0)
        assert r.leases_held == 2 and (m1.seq, m2.seq) == (1, 2)
        m1.release()
        del m2
        gc.collect()
        assert r.leases_held == 0


def _fill_and_drain(
    q: BroadcastQueue, r: ringcast.Reader, frozen: np.ndarray, snapshot: bytes, rounds: int
):
    """Send as much as the ring takes (reading it back), checking the kept view each time;
    returns (messages sent, sends refused as Full)."""
    sent = full = 0
    for i in range(rounds):
        try:
            q.send(i.to_bytes(8, "little") * 64, timeout=0)
            sent += 1
            r.recv(timeout=1)
        except ringcast.Full:
            full += 1
        assert frozen.tobytes() == snapshot, f"the kept view changed after {sent} sends"
    return sent, full


def test_a_view_kept_after_the_block_keeps_its_bytes_while_writers_try_to_wrap(shm_name):
    cap = 1 << 14
    with BroadcastQueue(shm_name, create=True, capacity=cap) as q, q.reader() as r:
        q.send_array(np.arange(256, dtype=np.uint32))
        with r.lease() as m:
            kept = m.array()
        assert m.released and m.views >= 1, "the array still holds the lease"
        assert not kept.flags.writeable
        snapshot = kept.tobytes()
        # Writers keep going round the ring; the pinned message stops them before they
        # reach it, never lets them overwrite it.
        sent, full = _fill_and_drain(q, r, kept, snapshot, 400)
        assert full > 0 and sent < cap // (8 * 64)
        assert q.stats()["members"][1]["pinned"] is not None
        del kept
        gc.collect()
        assert r.leases_held == 0
        # Released: the ring now wraps freely, many times over.
        witness = np.zeros(1)
        sent, full = _fill_and_drain(q, r, witness, witness.tobytes(), 10 * cap // 512)
        assert full == 0 and sent * 512 > 8 * cap


def _lease_and_keep(name: str, ready, release, out) -> None:
    q = BroadcastQueue(name, create=False)
    r = q.reader()
    ready.put(1)
    with r.lease(timeout=10) as m:
        view = np.asarray(memoryview(m))
    first = view.tobytes()
    ready.put(2)
    release.wait(20)
    out.put(view.tobytes() == first)
    del view
    r.close()
    q.close()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_view_in_another_process_pins_the_ring(shm_name, method):
    c = mp.get_context(method)
    cap = 1 << 14
    with BroadcastQueue(shm_name, create=True, capacity=cap) as q:
        ready, out = c.Queue(), c.Queue()
        release = c.Event()
        p = c.Process(target=_lease_and_keep, args=(shm_name, ready, release, out))
        p.start()
        try:
            assert ready.get(timeout=30) == 1
            q.send(b"\x5a" * 1000)
            assert ready.get(timeout=30) == 2
            with pytest.raises(ringcast.Full):
                for _ in range(4 * cap // 1000):
                    q.send(b"\x00" * 1000, timeout=0.01)
            release.set()
            assert out.get(timeout=30) is True
            p.join(30)
            assert p.exitcode == 0
            for _ in range(4 * cap // 1000):
                q.send(b"\x00" * 1000, timeout=5)
        finally:
            if p.is_alive():
                p.kill()
                p.join()


def test_closing_a_reader_with_leases_out_waits_for_them(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=1 << 14) as q:
        r = q.reader()
        q.send(b"x" * 100)
        m = r.lease()
        v = memoryview(m)
        r.close()
        assert r.closed
        assert len([x for x in q.stats()["members"] if x["kind"] == "reader"]) == 1
        with pytest.raises(ringcast.HandleClosed):
            r.recv(timeout=0)
        assert bytes(v) == b"x" * 100
        del v, m
        gc.collect()
        assert not [x for x in q.stats()["members"] if x["kind"] == "reader"]


def test_a_lossy_reader_cannot_lease(shm_name):
    with BroadcastQueue(shm_name, create=True) as q, q.reader(lossy=True) as r:
        q.send(b"x")
        with pytest.raises(ringcast.InvalidArgument, match="lossy"):
            r.lease(0)
        assert r.recv(0).body == b"x"


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(60, dtype=np.uint16).reshape(3, 4, 5),
        np.array([1 + 2j, 3 - 4j]),
        np.array([(1, 2.5), (3, 4.5)], dtype=[("i", "<i4"), ("x", "<f8")]),
        np.array([True, False, True]),
        np.array(7.0),
        np.zeros((0, 3), dtype=np.int64),
        np.arange(20, dtype=">i4"),
        np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2],
        np.array(["ab", "cde"]),
    ],
    ids=[
        "f4-2d",
        "u2-3d",
        "c16",
        "structured",
        "bool",
        "0-d",
        "empty",
        "big-endian",
        "strided",
        "str",
    ],
)
def test_array_messages_round_trip(shm_name, arr):
    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        q.send_array(arr, type="frame")
        q.send_array(arr)
        q.send_array(arr)
        got = r.recv_array(timeout=1)
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
        assert got.flags.writeable and got.flags.c_contiguous
        with r.lease() as m:
            view = m.array()
            np.testing.assert_array_equal(view, arr)
            assert not view.flags.writeable
            del view
        msg = r.recv()
        np.testing.assert_array_equal(msg.array(), arr)


def test_array_errors_and_raw_dtype(shm_name):
    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        q.send(np.arange(4, dtype=np.int16))  # type: ignore[arg-type]  # numpy declares __buffer__ for 3.12+
        with pytest.raises(ValueError, match="not an array message"):
            r.recv_array(timeout=1)
        # The failed decode consumed nothing.
        np.testing.assert_array_equal(r.recv_array(dtype=np.int16, shape=(2, 2)), [[0, 1], [2, 3]])
        with pytest.raises(TypeError, match="objects"):
            q.send_array(np.array([object()]))
        with pytest.raises(ValueError, match="negative"):
            q.reserve_array((-1, 2), "u1")


def test_reserve_fills_in_place_and_publishes_on_commit(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=1 << 16) as q, q.reader() as r:
        with q.reserve(8, type="raw") as res:
            memoryview(res)[:] = b"in place"
            assert len(res) == 8
            with pytest.raises(ringcast.Empty):
                r.recv(timeout=0)
        assert res.seq == 0
        m = r.recv(0)
        assert (m.body, m.type) == (b"in place", "raw")
        with pytest.raises(ringcast.HandleClosed):
            memoryview(res)
        # An exception in the block publishes nothing.
        with pytest.raises(RuntimeError), q.reserve(8) as res:
            raise RuntimeError("detector error")
        with pytest.raises(ringcast.Empty):
            r.recv(timeout=0)
        # Array reservations.
        frame = np.arange(512 * 4, dtype=np.uint16).reshape(512, 4)
        with q.reserve_array(frame.shape, frame.dtype, "frame") as res:
            res.array()[:] = frame
        np.testing.assert_array_equal(r.recv_array(0), frame)
        # A view still alive when the reservation ends: nothing is sent, and it says why.
        with pytest.raises(ringcast.HandleBusy, match="still alive"):
            with q.reserve(16) as res:
                keep = res.array()
        del keep
        with pytest.raises(ringcast.Empty):
            r.recv(timeout=0)
        res = q.reserve(3)
        res.abort()
        with pytest.raises(ringcast.HandleClosed):
            res.commit()


def test_reserve_blocks_other_writers_not_itself(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=1 << 16) as q, q.reader() as r:
        res = q.reserve(4)
        with pytest.raises(ringcast.HandleBusy, match="reservation"):
            q.send(b"same thread")
        with pytest.raises(ringcast.HandleBusy, match="reservation"):
            q.reserve(4)
        done = []
        t = threading.Thread(target=lambda: done.append(q.send(b"other thread", timeout=10)))
        t.start()
        time.sleep(0.1)
        assert not done, "another thread's send waits for the reservation"
        memoryview(res)[:] = b"1st!"
        res.commit()
        t.join(10)
        assert done == [1]
        assert [m.body for m in r.recv_many(10)] == [b"1st!", b"other thread"]


def test_reserve_waits_for_room_and_times_out(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=4096) as q, q.reader() as r:
        q.send(b"x" * 3000)
        with pytest.raises(ringcast.Full):
            q.reserve(3000, timeout=0.05)
        with pytest.raises(ringcast.MessageTooLarge):
            q.reserve(5000)
        r.recv()
        with q.reserve(3000, timeout=1) as res:
            memoryview(res)[:] = b"y" * 3000
        assert r.recv().body == b"y" * 3000


def _reserve_and_hang(name: str, ready) -> None:
    q = BroadcastQueue(name, create=False)
    res = q.reserve(100_000)
    memoryview(res)[:50_000] = b"\xee" * 50_000
    ready.put(1)
    time.sleep(60)


def test_sigkill_mid_reservation_publishes_nothing_and_frees_the_lock(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=1 << 20) as q, q.reader() as r:
        ready = ctx.Queue()
        p = ctx.Process(target=_reserve_and_hang, args=(shm_name, ready))
        p.start()
        ready.get(timeout=30)
        os.kill(p.pid or 0, signal.SIGKILL)
        p.join(10)
        t0 = time.monotonic()
        q.send(b"after the kill", timeout=5)
        assert time.monotonic() - t0 < 2
        assert r.recv(timeout=1).body == b"after the kill"
        with pytest.raises(ringcast.Empty):
            r.recv(timeout=0)
        assert q.stats()["lock_recoveries"] == 1


def _lease_and_hang(name: str, ready) -> None:
    q = BroadcastQueue(name, create=False)
    r = q.reader()
    m = r.lease(timeout=10)
    ready.put(len(memoryview(m)))
    time.sleep(60)


def test_a_process_killed_holding_a_lease_stops_holding_writers_back(shm_name):
    cap = 1 << 14
    with BroadcastQueue(shm_name, create=True, capacity=cap) as q:
        ready = ctx.Queue()
        p = ctx.Process(target=_lease_and_hang, args=(shm_name, ready))
        p.start()
        try:
            q.wait_for_readers(1, timeout=30)
            q.send(b"\x01" * 1000)
            assert ready.get(timeout=30) == 1000
            with pytest.raises(ringcast.Full):
                for _ in range(2 * cap // 1000):
                    q.send(b"\x00" * 1000, timeout=0.01)
            os.kill(p.pid or 0, signal.SIGKILL)
            p.join(10)
            for _ in range(10 * cap // 1000):
                q.send(b"\x00" * 1000, timeout=2)  # the dead reader's pin is reaped
            assert q.stats()["reaped"] >= 1
        finally:
            if p.is_alive():
                p.kill()
                p.join()
