"""The examples of pysyncq's "Get started" page, run on ringcast with only the import changed.

The page is ``/work/shared/seeds/pysyncq-get-started.rst``. Each test follows one of its
sections; the code inside is the page's, with the placeholders ("**Handle message m**")
filled in with assertions, and every wait bounded.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

import pytest

from ringcast.pysyncq import PySyncQ  # was: from pysyncq.pysyncq import PySyncQ

JOIN_S = 15.0


def _join_all(P, timeout=JOIN_S):
    deadline = time.monotonic() + timeout
    for p in P:
        p.join(max(0.1, deadline - time.monotonic()))
    hung = [p for p in P if p.is_alive()]
    for p in hung:
        p.kill()
        p.join(5)
    assert not hung, f"children did not exit: {hung}"
    return [p.exitcode for p in P]


@pytest.fixture
def cleanup():
    """Queues and processes to clean up whatever happens."""
    queues: list[PySyncQ] = []
    procs: list[mp.process.BaseProcess] = []
    yield queues, procs
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(5)
    for q in queues:
        q.close()


# ------------------------------------------------------------------------------ initialisation


def child_target_function(q, i, report):
    """The page's child: open, read the parent's message, answer, read until 'stop', close."""
    try:
        q.open(f"child{i}")
        report.put(("open", i))

        # The parent sends right after every child reported 'open' (and the test kills
        # this process if it does not), so the page's untimed wait is safe here.
        (sender, mtype, mbody) = q.pop(block=True, timer=None)

        try:
            q.append("reply", f"child{i} got {mbody}")
        except MemoryError:
            q.append("reply", f"child{i} got {mbody}", block=True, timer=3.14)

        seen = []
        deadline = time.monotonic() + JOIN_S
        stop = False
        while not stop and time.monotonic() < deadline:
            for m in q(block=True, timer=0.123):
                seen.append(m)
                if m[1] == "stop":
                    stop = True
                    break
            else:
                pass  # No more messages (for now)

        for m in q:  # noqa: B007 (the page's own line)
            pass

        report.put(("done", i, (sender, mtype, mbody), seen, stop))
    except BaseException as e:
        report.put(("error", i, repr(e)))
        raise
    finally:
        q.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_initialisation_and_exchange(shm_name, cleanup, method):
    queues, procs = cleanup
    ctx = mp.get_context(method)

    q = PySyncQ(shm_name)
    queues.append(q)
    report = ctx.Queue()

    P = [
        ctx.Process(target=child_target_function, args=(q, i, report))
        for i in range(max(2, min(mp.cpu_count(), 3)))
    ]
    procs.extend(P)
    for p in P:
        p.start()

    opened = set()
    for _ in P:
        item = report.get(timeout=60)
        assert item[0] == "open", item
        opened.add(item[1])
    assert opened == set(range(len(P)))

    q.open("parent")
    time.sleep(0.1)

    q.append("type_of_message", "The body of the message.")

    replies: list[tuple] = []
    deadline = time.monotonic() + JOIN_S
    while len(replies) < len(P) and time.monotonic() < deadline:
        for m in q(block=True, timer=0.123):
            replies.append(m)
        else:
            pass  # No more messages
    assert sorted(replies) == [
        (f"child{i}", "reply", f"child{i} got The body of the message.") for i in range(len(P))
    ]

    q.append("stop")

    done = {}
    for _ in P:
        item = report.get(timeout=JOIN_S)
        assert item[0] == "done", item
        done[item[1]] = item[2:]
    assert _join_all(P) == [0] * len(P)

    for i, (first, seen, stopped) in done.items():
        assert first == ("parent", "type_of_message", "The body of the message.")
        assert stopped
        assert seen[-1] == ("parent", "stop", "")
        others = sorted(seen[:-1])
        assert others == sorted(r for r in replies if r[0] != f"child{i}")

    for m in q:  # noqa: B007 (the page's own line)
        pass
    assert q.pop() is None

    assert q.shm is not None
    path = f"/dev/shm/{q.shm.name}"
    assert os.path.exists(path)
    q.close()
    assert not os.path.exists(path)


# ------------------------------------------------------------------------------ sending messages


def _drain_later(reader, delay, drained, give_up):
    """A second process's part, played by a thread: read everything after ``delay``."""
    time.sleep(delay)
    for m in reader:
        drained.append(m)
    # Guarantee the writer wakes up even if it blocks again: leaving frees everything.
    give_up.wait(5)
    reader.close()


def test_sending_messages(shm_name, cleanup):
    queues, _ = cleanup
    q = PySyncQ(shm_name, size=400)
    other = PySyncQ(shm_name, create=False, size=400)
    queues.extend([q, other])
    q.open("sender_name")
    other.open("other")

    q.append("type_of_message", "The body of the message.")
    q.append()  # type and body default to empty strings
    q.append(b"bytes type", 3.14)  # str or bytes, or anything str() accepts
    assert list(other) == [
        ("sender_name", "type_of_message", "The body of the message."),
        ("sender_name", "", ""),
        ("sender_name", "bytes type", "3.14"),
    ]
    for _m in q:
        pass

    responded = 0
    for _ in range(1000):
        try:
            q.append("mtype", "message body")
        except MemoryError:
            responded += 1  # Respond to lack of memory in queue
            break
    assert responded == 1
    for _m in q:
        pass

    # Blocking with a timer that expires: MemoryError.
    t0 = time.monotonic()
    with pytest.raises(MemoryError):
        q.append("mtype", "message body", block=True, timer=0.2)
    assert 0.19 <= time.monotonic() - t0 < 2.0

    # Blocking with timer=None: waits until a reader frees enough space.
    drained: list[tuple] = []
    give_up = threading.Event()
    th = threading.Thread(target=_drain_later, args=(other, 0.2, drained, give_up))
    th.start()
    try:
        t0 = time.monotonic()
        q.append("mtype", "message body", block=True, timer=None)
        elapsed = time.monotonic() - t0
    finally:
        give_up.set()
        th.join(10)
    assert not th.is_alive()
    assert 0.15 <= elapsed < 3.0
    assert drained and all(m == ("sender_name", "mtype", "message body") for m in drained)

    # Blocking with timer=3.14: returns as soon as there is room (other has left).
    for _m in q:
        pass
    t0 = time.monotonic()
    q.append("mtype", "message body", block=True, timer=3.14)
    assert time.monotonic() - t0 < 1.0


# ------------------------------------------------------------------------------ reading messages


def _send_later(q, delay, stop):
    if not stop.wait(delay):
        q.append("late", "arrived")


def test_reading_messages(shm_name, cleanup):
    queues, _ = cleanup
    q = PySyncQ(shm_name)
    w = PySyncQ(shm_name, create=False)
    queues.extend([q, w])
    q.open("reader")
    w.open("writer")

    assert q.pop() is None  # no unread messages

    w.append("mtype", "mbody")
    (sender, mtype, mbody) = q.pop()  # type: ignore[misc]  # the page's own line (a message is waiting)
    assert (sender, mtype, mbody) == ("writer", "mtype", "mbody")

    # Screening by sender and by type.
    q.scrntype.add("noise")
    w.append("noise", "dropped")
    w.append("data", "kept")
    assert q.pop() == ("writer", "data", "kept")
    q.scrnsend.add("writer")
    w.append("data", "dropped too")
    assert q.pop() is None
    q.scrnsend.discard("writer")
    q.scrntype.discard("noise")

    # Own messages: screened by default; the own name can be removed from .scrnsend.
    q.append("own", "x")
    assert q.pop() is None
    q.scrnsend.remove(q.sender)
    q.append("own", "y")
    assert q.pop() == ("reader", "own", "y")

    # Blocking pop: an untimed wait, woken by a message (the thread guarantees one, and
    # nothing screens it).
    assert set(q.scrnsend) == set() and set(q.scrntype) == set()
    stop = threading.Event()
    th = threading.Thread(target=_send_later, args=(w, 0.1, stop))
    th.start()
    try:
        msgtuple = q.pop(block=True, timer=None)
    finally:
        stop.set()
        th.join(10)
    assert msgtuple == ("writer", "late", "arrived")

    # An expired wait returns None.
    t0 = time.monotonic()
    assert q.pop(block=True, timer=0.2) is None
    assert time.monotonic() - t0 >= 0.19

    # Raw bytes.
    w.append("raw", "bytes")
    msgbytestuple = q.pop(decode=False)
    assert msgbytestuple == (b"writer", b"raw", b"bytes")

    # Iteration.
    for k in range(3):
        w.append("it", k)
    handled, none_left = [], False
    for m in q:
        handled.append(m)  # Handle message m
    else:
        none_left = True  # No more messages
    assert none_left and handled == [("writer", "it", str(k)) for k in range(3)]

    # Blocking iteration, and the decode argument.
    stop = threading.Event()
    th = threading.Thread(target=_send_later, args=(w, 0.05, stop))
    th.start()
    try:
        handled, none_left = [], False
        t0 = time.monotonic()
        for m in q(block=True, timer=0.123):
            handled.append(m)
        else:
            none_left = True
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        th.join(10)
    assert none_left and handled == [("writer", "late", "arrived")]
    assert 0.12 <= elapsed < 2.0
    w.append("it", "raw")
    assert list(q(decode=False)) == [(b"writer", b"it", b"raw")]


# ------------------------------------------------------------------------------ general behaviour


def test_general_queue_behaviour(shm_name, cleanup):
    queues, _ = cleanup
    size = 400
    w = PySyncQ(shm_name, size=size)
    fast = PySyncQ(shm_name, create=False, size=size)
    slow = PySyncQ(shm_name, create=False, size=size)
    queues.extend([w, fast, slow])
    w.open("w")
    fast.open("fast")
    slow.open("slow")

    sent = 0
    while True:
        try:
            w.append("m", f"{sent:04d}")
        except MemoryError:
            break
        sent += 1
        for _m in w:
            pass
    assert sent > 0

    # Processes read at their own rate; the message is removed only once all have read it.
    assert len(list(fast)) == sent
    with pytest.raises(MemoryError):
        w.append("m", "more")
    assert slow.pop() == ("w", "m", "0000")
    w.append("m", "more")  # the message everyone has read was removed

    # "At the very least, a process can mark all queued messages as read."
    for m in slow:  # noqa: B007 (the page's own line)
        pass
    for _m in fast:
        pass
    for _m in w:
        pass
    assert _fill_count(w) == sent


def _fill_count(q):
    n = 0
    while True:
        try:
            q.append("m", f"{n:04d}")
        except MemoryError:
            return n
        n += 1
        for _m in q:
            pass


# ------------------------------------------------------------------------------ closing


def test_closing_and_unlinking(shm_name, cleanup):
    queues, _ = cleanup
    q = PySyncQ(shm_name)
    other = PySyncQ(shm_name, create=False)
    queues.extend([q, other])
    q.open("a")
    other.open("b")
    path = f"/dev/shm/{shm_name}"
    q.close()
    assert os.path.exists(path)  # still one process connected
    other.append("t", "x")
    assert other.pop() is None
    other.close()
    assert not os.path.exists(path)  # the last one out unlinked it
    q.close()  # harmless
