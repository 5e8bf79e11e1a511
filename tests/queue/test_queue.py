"""BroadcastQueue and Reader: API, errors, processes (fork/spawn/forkserver), signals."""

from __future__ import annotations

import os
import pickle
import queue
import signal
import threading
import time

import pytest

import ringcast
from ringcast import BroadcastQueue, errors

METHODS = ["fork", "spawn", "forkserver"]


def test_send_recv_roundtrip_and_message_fields(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=1 << 16, sender="cam") as q:
        with q.reader() as r:
            seq = q.send(b"frame-0", "image")
            q.send(bytearray(b"frame-1"))
            q.send(memoryview(b"xxframe-2")[2:])
            m = r.recv(timeout=1)
            assert (m.seq, m.sender, m.type, m.body) == (seq, "cam", "image", b"frame-0")
            assert r.recv_bytes(timeout=1) == b"frame-1"
            assert r.recv_nowait().body == b"frame-2"
            assert "seq=0" in repr(m)
            with pytest.raises(queue.Empty):
                r.recv_nowait()
    assert not os.path.exists(f"/dev/shm/{shm_name}")


def test_messages_pickle_and_compare_by_value(shm_name):
    with BroadcastQueue(shm_name, create=True, sender="cam") as q, q.reader() as r:
        q.send(b"frame", "image")
        q.send(b"frame", "image")
        m, m2 = r.recv(timeout=1), r.recv(timeout=1)
        back = pickle.loads(pickle.dumps(m))
        assert back == m and hash(back) == hash(m) and back is not m
        assert (back.sender, back.type, back.seq, back.body) == ("cam", "image", 0, b"frame")
        assert m != m2 and m != "frame"


def test_numpy_arrays_are_sent_as_bytes(shm_name):
    np = pytest.importorskip("numpy")
    a = np.arange(1000, dtype=np.float64).reshape(10, 100)
    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        q.send(a)
        got = np.frombuffer(r.recv(timeout=1).body, dtype=np.float64).reshape(10, 100)
        assert (got == a).all()
        with pytest.raises(TypeError, match="contiguous"):
            q.send(a[:, ::2])
        with pytest.raises(TypeError, match="bytes-like"):
            q.send("a str is not bytes")  # type: ignore[arg-type]


def test_every_reader_gets_every_message_and_joins_at_the_tail(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=1 << 14) as q:
        r1 = q.reader()
        q.send(b"before r2")
        r2 = q.reader()
        for i in range(500):
            q.send(str(i).encode(), timeout=5) if i % 50 else None
            if i % 50 == 0:
                q.send(str(i).encode())
            assert r1.recv(timeout=1).body == (b"before r2" if i == 0 else str(i - 1).encode())
        for i in range(499):
            assert r2.recv(timeout=1).body == str(i).encode()
        assert r1.lag == 1 and r2.lag == 1
        r1.close()
        r2.close()


def test_screening_by_sender_and_type_in_rust(shm_name):
    with BroadcastQueue(shm_name, create=True) as q:
        r_type = q.reader(types=["a", b"b"])
        r_excl = q.reader(exclude_senders="x")
        r_send = q.reader(senders=["y"], exclude_types=["b"])
        for s, t in [("x", "a"), ("y", "b"), ("y", "c"), ("z", "a")]:
            q.send(f"{s}{t}".encode(), t, sender=s)
        assert [m.body for m in r_type.recv_many(10)] == [b"xa", b"yb", b"za"]
        assert [m.body for m in r_excl.recv_many(10)] == [b"yb", b"yc", b"za"]
        assert [m.body for m in r_send.recv_many(10)] == [b"yc"]
        assert r_send.position[1] == 4, "screened messages are consumed"
        for r in (r_type, r_excl, r_send):
            r.close()
        with pytest.raises(TypeError, match="str or bytes"):
            q.reader(types=[1])  # type: ignore[list-item]


def test_full_queue_timeouts_and_too_large(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=4096) as q, q.reader() as r:
        size = q.record_size(1000)
        n = 0
        with pytest.raises(ringcast.Full) as ei:
            while True:
                q.send_nowait(b"x" * 1000)
                n += 1
        assert n == 4096 // size
        assert isinstance(ei.value, queue.Full) and ei.value.needed == size
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.send(b"x" * 1000, timeout=0.2)
        assert 0.18 < time.monotonic() - t0 < 2
        with pytest.raises(ringcast.MessageTooLarge):
            q.send(b"x" * 5000, timeout=None)  # never fits: raises at once, no wait
        # a reader freeing space wakes a blocked writer promptly
        threading.Timer(0.1, lambda: r.recv(timeout=1)).start()
        t0 = time.monotonic()
        q.send(b"y" * 1000, timeout=5)
        assert time.monotonic() - t0 < 1.0
        st = q.stats()
        assert st["full_events"] >= 2 and st["readers_alive"] == 1


def test_timeouts_on_recv(shm_name):
    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        for t in (0, -1, 0.0):
            t0 = time.monotonic()
            with pytest.raises(ringcast.Empty):
                r.recv(timeout=t)
            assert time.monotonic() - t0 < 0.05
        t0 = time.monotonic()
        with pytest.raises(queue.Empty, match="0.15"):
            r.recv(timeout=0.15)
        assert 0.14 < time.monotonic() - t0 < 1
        with pytest.raises(ValueError):
            r.recv(timeout=float("nan"))


def test_shutdown_ends_iteration_after_draining(shm_name):
    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        for i in range(5):
            q.send(bytes([i]))
        q.shutdown()
        assert [m.body[0] for m in r] == list(range(5))
        with pytest.raises(ringcast.QueueShutDown):
            r.recv(timeout=1)
        with pytest.raises(ringcast.QueueShutDown):
            q.send(b"late")


def test_create_attach_open_semantics(shm_name):
    with pytest.raises(FileNotFoundError):
        BroadcastQueue(shm_name, create=False)
    with BroadcastQueue(shm_name) as a:  # create=None creates
        with BroadcastQueue(shm_name) as b:  # ... and attaches
            assert b.capacity == a.capacity
            with pytest.raises(FileExistsError):
                BroadcastQueue(shm_name, create=True)
            with pytest.raises(ringcast.SegmentExists):
                BroadcastQueue(shm_name, create=True)
        assert os.path.exists(f"/dev/shm/{shm_name}")
    assert not os.path.exists(f"/dev/shm/{shm_name}")
    anon = BroadcastQueue(capacity=100)
    assert anon.name.startswith("rc_") and os.path.exists(f"/dev/shm/{anon.name}")
    anon.close()
    assert not os.path.exists(f"/dev/shm/{anon.name}")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"capacity": 1 << 41}, "capacity"),
        ({"max_members": 0}, "max_members"),
        ({"spin_us": -1}, "spin_us"),
    ],
)
def test_bad_arguments(shm_name, kwargs, match):
    with pytest.raises(ringcast.InvalidArgument, match=match):
        BroadcastQueue(shm_name, create=True, **kwargs)
    with pytest.raises(ValueError):
        BroadcastQueue("bad/name", create=True)
    with pytest.raises(ValueError):
        BroadcastQueue(None, create=False)


def test_closed_handles_raise(shm_name):
    q = BroadcastQueue(shm_name, create=True)
    r = q.reader()
    r.close()
    r.close()
    with pytest.raises(ringcast.HandleClosed):
        r.recv_nowait()
    q.close()
    q.close()
    assert q.closed
    with pytest.raises(ringcast.HandleClosed):
        q.send(b"x")
    with pytest.raises(ValueError):
        q.reader()


def test_member_table_full(shm_name):
    with BroadcastQueue(shm_name, create=True, max_members=3) as q:
        r1, r2 = q.reader(), q.reader()
        with pytest.raises(ringcast.NoMemberSlot):
            q.reader()
        r1.close()
        q.reader().close()
        r2.close()


def test_stats_fields(shm_name):
    with BroadcastQueue(shm_name, create=True, sender="w") as q, q.reader(name="slow") as r:
        for _ in range(3):
            q.send(b"12345678")
        r.recv(timeout=1)
        st = q.stats()
        assert st["write_seq"] == 3 and st["used_bytes"] == 2 * q.record_size(8)
        (rm,) = [m for m in st["members"] if m["kind"] == "reader"]
        assert (rm["name"], rm["lag_messages"], rm["received"], rm["alive"]) == ("slow", 2, 1, True)
        (hm,) = [m for m in st["members"] if m["kind"] == "handle"]
        assert hm["sent"] == 3 and hm["pid"] == os.getpid()


def test_blocking_recv_releases_the_gil(shm_name):
    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        ticks = []
        stop = threading.Event()

        def spin():
            while not stop.is_set():
                ticks.append(1)
                time.sleep(0.001)

        t = threading.Thread(target=spin)
        t.start()
        with pytest.raises(ringcast.Empty):
            r.recv(timeout=0.3)
        stop.set()
        t.join(5)
        assert len(ticks) > 50


def test_ctrl_c_interrupts_a_blocking_recv(shm_name):
    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            r.recv(timeout=None)
        assert time.monotonic() - t0 < 2
        timer.join()


def test_ctrl_c_interrupts_a_blocked_send(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=64) as q, q.reader():
        q.send(b"x" * 40)
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            q.send(b"x" * 40, timeout=None)
        timer.join()


LOCK_OFFSET = 216  # LogWords.lock: kind area 192 + 24 (rust/ringcast-core/src/queue/mod.rs)


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def _hold_lock(shm_name: str, owner: int) -> None:
    """Make the writer lock of queue ``shm_name`` look held by the live process ``owner``."""
    import mmap
    import struct

    with open(f"/dev/shm/{shm_name}", "r+b") as f, mmap.mmap(f.fileno(), 4096) as m:
        token = ((_start_time(owner) & 0xFFFFFFFF) << 32) | owner
        struct.pack_into("<Q", m, LOCK_OFFSET, token)


def _interrupted_within(call, limit: float = 0.2) -> None:
    """Send SIGINT 0.1 s into ``call``: it raises KeyboardInterrupt within ``limit`` s."""
    sent: list[float] = []

    def interrupt() -> None:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(0.1, interrupt)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            call()
        took = time.monotonic() - sent[0]
    finally:
        timer.cancel()
        timer.join()
    assert took < limit, f"KeyboardInterrupt came {took:.3f} s after SIGINT"


def test_ctrl_c_interrupts_join_and_close_waiting_for_the_writer_lock(shm_name):
    import subprocess

    owner = subprocess.Popen(["sleep", "30"])
    try:
        with BroadcastQueue(shm_name, create=True) as q:
            r = q.reader()
            _hold_lock(shm_name, owner.pid)
            # Joining (a reader, a group member, a handle attaching) and leaving wait for the
            # writer lock; Ctrl-C ends each wait at once.
            _interrupted_within(lambda: q.reader())
            _interrupted_within(lambda: q.reader(group="g"))
            _interrupted_within(lambda: BroadcastQueue(shm_name, create=False))
            _interrupted_within(r.close)
            assert r.closed
            owner.kill()
            owner.wait(10)
            # The owner died: the lock is recovered, and the queue works on.
            with q.reader() as r2:
                q.send(b"after", timeout=5)
                assert r2.recv(timeout=1).body == b"after"
    finally:
        owner.kill()
        owner.wait(10)


def test_ctrl_c_interrupts_close_of_a_queue_waiting_for_the_writer_lock(shm_name):
    import subprocess

    owner = subprocess.Popen(["sleep", "30"])
    try:
        keeper = BroadcastQueue(shm_name, create=True)
        q = BroadcastQueue(shm_name, create=False)
        _hold_lock(shm_name, owner.pid)
        _interrupted_within(q.close)
        assert q.closed
        q.close()  # closed once: nothing left to wait for
        owner.kill()
        owner.wait(10)
        keeper.close()  # recovers the lock of the dead owner; the last member unlinks
    finally:
        owner.kill()
        owner.wait(10)


def test_lock_held_by_a_live_process_times_out_without_holding_the_gil(shm_name):
    import mmap
    import struct
    import subprocess

    owner = subprocess.Popen(["sleep", "30"])
    try:
        with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
            with open(f"/dev/shm/{shm_name}", "r+b") as f, mmap.mmap(f.fileno(), 4096) as m:
                token = ((_start_time(owner.pid) & 0xFFFFFFFF) << 32) | owner.pid
                struct.pack_into("<Q", m, LOCK_OFFSET, token)
                ticks: list = []
                stop = threading.Event()

                def tick() -> None:
                    while not stop.is_set():
                        ticks.append(1)
                        time.sleep(0.001)

                t = threading.Thread(target=tick)
                t.start()
                t0 = time.monotonic()
                with pytest.raises(ringcast.Timeout, match="writer lock"):
                    q.send(b"x", timeout=0.3)
                took = time.monotonic() - t0
                stop.set()
                t.join(5)
                assert 0.25 < took < 1.5 and len(ticks) > 50
                owner.kill()
                owner.wait(10)
                q.send(b"after the owner died", timeout=5)
                assert r.recv(timeout=1).body == b"after the owner died"
                assert q.stats()["lock_recoveries"] == 1
    finally:
        owner.kill()
        owner.wait(10)


def test_reader_used_from_two_threads_raises_busy(shm_name):
    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        t = threading.Thread(target=lambda: pytest.raises(ringcast.Empty, r.recv, timeout=0.5))
        t.start()
        time.sleep(0.1)
        with pytest.raises(ringcast.HandleBusy):
            r.recv(timeout=0)
        t.join(5)


def test_reader_is_not_picklable_and_queue_pickles_by_name(shm_name):
    with BroadcastQueue(shm_name, create=True, sender="s1") as q, q.reader() as r:
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(r)
        q2 = pickle.loads(pickle.dumps(q))
        assert (q2.name, q2.sender) == (q.name, "s1")
        q2.send(b"via copy")
        assert r.recv(timeout=1).body == b"via copy"
        q2.close()


# ---------------------------------------------------------------- processes


def _child_reader(q, n, results):
    with q.reader() as r:
        results.put("ready")
        got = [r.recv(timeout=10).body for _ in range(n)]
    q.close()
    results.put(got)


def _child_writer(q, n, tag):
    for i in range(n):
        q.send(f"{tag}:{i}".encode(), timeout=10)
    q.close()


@pytest.mark.parametrize("method", METHODS)
def test_broadcast_to_child_processes(shm_name, method):
    import multiprocessing as mp

    ctx = mp.get_context(method)
    results = ctx.Queue()
    n = 2000
    with BroadcastQueue(shm_name, create=True, capacity=1 << 12) as q:
        procs = [ctx.Process(target=_child_reader, args=(q, n, results)) for _ in range(2)]
        for p in procs:
            p.start()
        q.wait_for_readers(2, timeout=30)
        for i in range(n):
            q.send(f"m{i}".encode(), timeout=10)
        outs = [results.get(timeout=30) for _ in range(4)]
        for p in procs:
            p.join(10)
            assert p.exitcode == 0
    lists = [o for o in outs if o != "ready"]
    assert lists == [[f"m{i}".encode() for i in range(n)]] * 2


@pytest.mark.parametrize("method", METHODS)
def test_several_writer_processes_one_total_order(shm_name, method):
    import multiprocessing as mp

    ctx = mp.get_context(method)
    n = 1500
    with BroadcastQueue(shm_name, create=True, capacity=1 << 12) as q, q.reader() as r:
        procs = [ctx.Process(target=_child_writer, args=(q, n, t)) for t in "abc"]
        for p in procs:
            p.start()
        got = [r.recv(timeout=30).body.decode() for _ in range(3 * n)]
        for p in procs:
            p.join(10)
            assert p.exitcode == 0
    for t in "abc":
        assert [g for g in got if g[0] == t] == [f"{t}:{i}" for i in range(n)]


def test_fork_child_inherits_queue_handle_but_not_reader(shm_name):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    results = ctx.Queue()

    def child(q, r):
        try:
            r.recv(timeout=0)
        except ringcast.ForkedHandle:
            results.put("forked reader refused")
        q.send(b"from child")
        results.put(q.sender)
        q.close()

    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        p = ctx.Process(target=child, args=(q, r))
        p.start()
        assert results.get(timeout=10) == "forked reader refused"
        m = r.recv(timeout=10)
        assert m.body == b"from child"
        # without an explicit sender, each process sends as its own pid
        assert m.sender == results.get(timeout=10) == str(p.pid) != q.sender
        p.join(10)
        assert p.exitcode == 0


def test_attach_from_unrelated_program(shm_name):
    import subprocess
    import sys

    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        code = (
            f"import ringcast; q = ringcast.BroadcastQueue({shm_name!r}, create=False, "
            "sender='other'); q.send(b'hello from another program', 'note'); q.close()"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        m = r.recv(timeout=5)
        assert (m.sender, m.type, m.body) == ("other", "note", b"hello from another program")


# ---------------------------------------------------------------- foreign and corrupt segments


@pytest.mark.parametrize(
    "content",
    [b"", b"abc", os.urandom(4096), os.urandom(70000), bytes(8192), b"RINGCAST" + bytes(5000)],
    ids=["empty", "short", "random-page", "random-large", "zeros", "magic-only"],
)
def test_attaching_to_garbage_raises(shm_name, content):
    path = f"/dev/shm/{shm_name}"
    with open(path, "wb") as f:
        f.write(content)
    try:
        with pytest.raises(ringcast.CorruptSegment):
            BroadcastQueue(shm_name, create=False)
        with pytest.raises(ringcast.SegmentExists):
            BroadcastQueue(shm_name, create=True)  # a foreign object is never replaced
    finally:
        os.unlink(path)


def test_truncated_and_bitflipped_real_segment_raise(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=8192):
        with open(f"/dev/shm/{shm_name}", "rb") as f:
            real = f.read()
    for i, data in enumerate(
        [real[:4096], real[:-1], real[:-4096]]
        + [real[:k] + bytes([real[k] ^ 0x5A]) + real[k + 1 :] for k in (8, 12, 17, 25, 33, 41, 48)]
    ):
        path = f"/dev/shm/{shm_name}-{i}"
        with open(path, "wb") as f:
            f.write(data)
        try:
            with pytest.raises(ringcast.CorruptSegment):
                BroadcastQueue(f"{shm_name}-{i}", create=False)
        finally:
            os.unlink(path)


def test_stale_segment_is_replaced_and_gc(shm_name):
    import subprocess
    import sys

    code = (
        f"import os, ringcast; q = ringcast.BroadcastQueue({shm_name!r}, create=True); "
        "r = q.reader(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    info = ringcast.inspect(shm_name)
    assert info["members_dead"] == 2 and info["stale"]
    with BroadcastQueue(shm_name, create=True) as q:  # recovers instead of failing
        assert q.stats()["write_seq"] == 0
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert shm_name in [s["name"] for s in ringcast.segments()]
    assert shm_name in ringcast.gc()
    assert not os.path.exists(f"/dev/shm/{shm_name}")


def test_record_size():
    assert ringcast.record_size(4, 3, 2, align=1) == 16 + 2 + 3 + 4
    assert ringcast.record_size(4, 3, 2) == 24 + 8
    assert ringcast.record_size(0) == 16
    for bad in (0, 3, 16):
        with pytest.raises(ringcast.InvalidArgument, match="align"):
            ringcast.record_size(1, align=bad)


def test_exception_hierarchy():
    assert issubclass(errors.Empty, queue.Empty) and issubclass(errors.Full, queue.Full)
    assert issubclass(errors.Timeout, TimeoutError)
    assert issubclass(errors.SegmentNotFound, FileNotFoundError)
    assert issubclass(errors.SegmentExists, FileExistsError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.RingcastError)
