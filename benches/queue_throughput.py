"""Broadcast throughput: one writer process to 1 and 2 reader processes, side by side.

Every implementation runs in the same invocation on the same machine, and every reader
checks that it received every message, in order (sequence number in the first 8 bytes); a
run that loses, duplicates or reorders a message fails loudly instead of printing a figure.

Implementations (broadcast: one queue, every reader gets every message; point to point: one
queue per reader, the writer puts each message into each):

* ringcast        BroadcastQueue.send / Reader.recv_bytes (copy path), 16 MiB ring
* ringcast-lease  BroadcastQueue.send / Reader.lease (zero-copy view; if the build has it)
* pysyncq         pysyncq 0.0.1 append / pop(block=True), 16 MiB queue (broadcast)
* mp.Queue        multiprocessing.Queue put / get (point to point)
* faster-fifo     faster_fifo.Queue put / get of raw bytes, 16 MiB buffer (point to point)
* zmq-push        pyzmq PUSH -> PULL over ipc:// (point to point)
* zmq-pubsub      pyzmq XPUB (XPUB_NODROP: blocks instead of dropping) -> SUB over ipc://
* iceoryx2        iceoryx2 publish-subscribe, u8 slice, RetryUntilDelivered, busy polling
* bare-ring       the physical limit: a single-producer single-consumer ring of fixed-size
                  slots per reader in multiprocessing.shared_memory, copy in and copy out
                  with numpy, head/tail counters as aligned int64 stores, pure spin waits

The writer and the readers are forked child processes; the parent only supervises (every
wait is bounded, children are killed on failure, shared memory is removed). The rate is N
over the time from the writer's first send until the last reader verified the last message;
N is fixed per implementation and payload (about 0.4 s a run, 0.2 s with --quick); each case
runs 3 times in rounds that interleave the implementations and the best run is kept.
Copies: ringcast's copy path copies out once (a bytes object), so do the other copying peers;
the bare ring copies out once into a preallocated numpy buffer; the lease path copies nothing.

    python benches/queue_throughput.py            # full run, best of 3 (about 2 minutes)
    python benches/queue_throughput.py --quick    # under a minute
    python benches/queue_throughput.py --json     # only a JSON list of records on stdout
    python benches/queue_throughput.py --quick --neighbour --impl ringcast --impl pysyncq
                                                  # with one CPU-bound process beside it

--neighbour starts one busy-looping process (unpinned, as a CPU-bound job on a shared host
would be) for the whole measurement: on a 2-core machine it takes one core, so a waiter that
spins takes the core its peer needs. ringcast's adaptive spin stops spinning then.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import json
import multiprocessing as mp
import os
import queue
import shutil
import struct
import sys
import time
import traceback

ctx = mp.get_context("fork")

KiB = 1024
MiB = 1024 * 1024
PAYLOADS = [64, 4 * KiB, 64 * KiB, 1 * MiB]
RING_BYTES = 16 * MiB  # ring / buffer budget given to every implementation that has one
OP_TIMEOUT = 30.0  # seconds, every single blocking get / recv in a child
READY_TIMEOUT = 60.0  # seconds for all children to attach
RUN_TIMEOUT = 120.0  # seconds for one measured run, whatever happens

IMPL_ORDER = [
    "ringcast",
    "ringcast-lease",
    "pysyncq",
    "mp.Queue",
    "faster-fifo",
    "zmq-push",
    "zmq-pubsub",
    "iceoryx2",
    "bare-ring",
]
# peers: everything that is neither ringcast nor the physical-limit reference
PEERS = ["pysyncq", "mp.Queue", "faster-fifo", "zmq-push", "zmq-pubsub", "iceoryx2"]


class BenchError(RuntimeError):
    """A run failed: a message was lost or reordered, a child died or something timed out."""


_counter = [0]


def unique_name(tag):
    _counter[0] += 1
    return f"rcb-{tag}-{os.getpid()}-{_counter[0]}"


def seq_error(who, expected, got):
    raise BenchError(f"{who}: expected message {expected}, got sequence number {got}")


def deadline_passed(deadline, what):
    if time.perf_counter() > deadline:
        raise BenchError(f"timed out {what}")


# ---------------------------------------------------------------- supervision


class Hooks:
    """What a child role gets to synchronise with the supervisor."""

    def __init__(self, role, events, go, end):
        self.role, self._events, self._go, self._end = role, events, go, end

    def ready(self):
        """Attached and set up: the supervisor sets go once every role is ready."""
        self._events.put(("ready", self.role, None))

    def wait_go(self):
        """Wait for the common start."""
        if not self._go.wait(READY_TIMEOUT):
            raise BenchError(f"{self.role}: no go signal")

    def wait_end(self):
        """Wait until every role in ``end_after`` has finished (to keep resources alive)."""
        if not self._end.wait(RUN_TIMEOUT):
            raise BenchError(f"{self.role}: the others did not finish")


def _child_main(role, target, args, events, go, end):
    """Run ``target(*args, hooks)`` in a child; report ready / done / error."""
    try:
        result = target(*args, Hooks(role, events, go, end))
    except BaseException as e:  # report everything, including KeyboardInterrupt
        err = "".join(traceback.format_exception_only(type(e), e)).strip()
        if not isinstance(e, BenchError):
            err += "\n" + "".join(traceback.format_tb(e.__traceback__, limit=-3))
        events.put(("error", role, err))
        return
    events.put(("done", role, result))


def _stop(procs):
    for p in procs.values():
        if p.is_alive():
            p.terminate()
    for p in procs.values():
        p.join(3)
        if p.is_alive():
            p.kill()
            p.join(3)


def supervise(roles, end_after=(), run_timeout=None):
    """Start ``roles`` = [(name, target, args)] as forked children and collect their results.

    Every child calls ``h.ready()`` once it is attached; once all are ready the go event is
    set (children that need a common start call ``h.wait_go()``); once every role named in
    ``end_after`` is done the end event is set (``h.wait_end()``). Returns {name: result}.
    Any error, a child that dies without reporting, or a timeout kills every child and
    raises BenchError.
    """
    events = ctx.Queue()
    go, end = ctx.Event(), ctx.Event()
    procs = {}
    results = {}
    try:
        for name, target, args in roles:
            p = ctx.Process(target=_child_main, args=(name, target, args, events, go, end))
            p.daemon = True
            p.start()
            procs[name] = p
        _collect(events, procs, "ready", time.perf_counter() + READY_TIMEOUT, results, ())
        go.set()
        deadline = time.perf_counter() + (run_timeout or RUN_TIMEOUT)
        _collect(events, procs, "done", deadline, results, end_after, end)
        for p in procs.values():
            p.join(10)
        return results
    finally:
        _stop(procs)
        events.close()
        events.cancel_join_thread()


def _collect(events, procs, kind, deadline, results, end_after, end=None):
    """Wait for ``kind`` ("ready" or "done") from every child; a done counts as ready."""
    pending = set(procs) - set(results)
    missing_since = {}
    while pending:
        if end is not None and not end.is_set() and not set(end_after) - set(results):
            end.set()
        try:
            what, role, value = events.get(timeout=0.2)
        except queue.Empty:
            now = time.perf_counter()
            if now > deadline:
                raise BenchError(f"timed out waiting for {kind} from {sorted(pending)}") from None
            for name in pending:
                p = procs[name]
                if not p.is_alive():
                    # a child flushes its reports before it exits; allow them to arrive
                    first = missing_since.setdefault(name, now)
                    if now - first > 2.0:
                        raise BenchError(
                            f"{name} exited (code {p.exitcode}) without reporting {kind}"
                        ) from None
            continue
        if what == "error":
            raise BenchError(f"{role} failed: {value}")
        if what == "done":
            results[role] = value
        if what in (kind, "done"):
            pending.discard(role)


# ---------------------------------------------------------------- a CPU-bound neighbour


def _busy_loop():
    x = 0
    while True:
        x += 1


@contextlib.contextmanager
def neighbour(on=True):
    """One busy-looping process (a CPU-bound neighbour) while the block runs."""
    if not on:
        yield None
        return
    p = ctx.Process(target=_busy_loop, daemon=True)
    p.start()
    try:
        time.sleep(0.2)  # let it get going (and the scheduler notice it)
        yield p
    finally:
        p.kill()
        p.join(5)


# ---------------------------------------------------------------- availability


def lease_available():
    import ringcast

    return hasattr(ringcast.Reader, "lease")


def _iox_probe(h):
    import iceoryx2 as iox

    iox.set_log_level(iox.LogLevel.Error)
    node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
    svc = iox_service(node, unique_name("probe"), 1, 64)
    sub = svc.subscriber_builder().create()
    pub = iox_publisher(svc, 64)
    pub.update_connections()
    s = pub.loan_slice_uninit(64)
    ctypes.memmove(s.payload_ptr, b"\x07" * 64, 64)
    s.assume_init().send()
    deadline = time.perf_counter() + 5
    while (r := sub.receive()) is None:
        deadline_passed(deadline, "receiving the probe sample")
    if ctypes.string_at(r.payload_ptr, 64) != b"\x07" * 64:
        raise BenchError("probe sample corrupted")
    r.delete()
    h.ready()
    return True


def unavailable(impl):
    """None if ``impl`` can run here, else the reason it cannot."""
    try:
        if impl == "ringcast-lease":
            if not lease_available():
                return "lease path: not available in this build (ringcast.Reader has no lease)"
        elif impl == "pysyncq":
            import pysyncq  # noqa: F401
        elif impl == "faster-fifo":
            import faster_fifo  # noqa: F401
        elif impl in ("zmq-push", "zmq-pubsub"):
            import zmq  # noqa: F401
        elif impl == "iceoryx2":
            import iceoryx2  # noqa: F401

            supervise([("iceoryx2-probe", _iox_probe, ())], run_timeout=20)
    except ImportError as e:
        return f"{impl}: not installed ({e}); pip install '.[bench]'"
    except BenchError as e:
        return f"{impl}: does not work on this machine: {str(e).splitlines()[0]}"
    return None


class ShmJanitor:
    """Remove the /dev/shm entries and the iceoryx2 directory this run created."""

    def __init__(self):
        self.before = set(os.listdir("/dev/shm"))
        self.iox_dir = "/tmp/iceoryx2"
        self.iox_dir_existed = os.path.exists(self.iox_dir)

    def clean(self):
        left = []
        for name in set(os.listdir("/dev/shm")) - self.before:
            if name.startswith(("rcb-", "iox2_")):
                try:
                    os.unlink(os.path.join("/dev/shm", name))
                except FileNotFoundError:
                    pass
            else:
                left.append(name)
        if not self.iox_dir_existed and os.path.isdir(self.iox_dir):
            shutil.rmtree(self.iox_dir, ignore_errors=True)
        for path in glob.glob(f"/tmp/rcb-*-{os.getpid()}-*.sock"):
            os.unlink(path)
        return left


# ---------------------------------------------------------------- ringcast


def rc_setup(payload, readers):
    import ringcast

    name = unique_name("rc")
    q = ringcast.BroadcastQueue(name, create=True, capacity=RING_BYTES, spin_us=RC_SPIN_US)
    return {"name": name, "q": q}


def rc_teardown(st):
    import ringcast

    st["q"].close()
    if os.path.exists(f"/dev/shm/{st['name']}"):
        ringcast.unlink(st["name"])


def rc_writer(st, payload, n, h):
    import ringcast

    q = ringcast.BroadcastQueue(st["name"], create=False, spin_us=RC_SPIN_US)
    body = bytearray(payload)
    send = q.send
    pack = struct.pack_into
    h.ready()
    h.wait_go()
    t0 = time.perf_counter()
    for i in range(n):
        pack("<Q", body, 0, i)
        send(body)
    q.close()
    return t0


def rc_reader(st, idx, payload, n, h):
    import ringcast

    q = ringcast.BroadcastQueue(st["name"], create=False, spin_us=RC_SPIN_US)
    r = q.reader()
    h.ready()
    recv = r.recv_bytes
    unpack = struct.unpack_from
    for i in range(n):
        b = recv(OP_TIMEOUT)
        if unpack("<Q", b)[0] != i:
            seq_error(f"reader {idx}", i, unpack("<Q", b)[0])
    t = time.perf_counter()
    r.close()
    q.close()
    return t


def rc_lease_reader(st, idx, payload, n, h):
    """Zero-copy: read the sequence number straight from the leased view of the body."""
    import ringcast

    q = ringcast.BroadcastQueue(st["name"], create=False, spin_us=RC_SPIN_US)
    r = q.reader()
    h.ready()
    lease = r.lease
    unpack = struct.unpack_from
    for i in range(n):
        with lease(timeout=OP_TIMEOUT) as m:
            s = unpack("<Q", m)[0]  # struct reads 8 bytes through the buffer protocol
        if s != i:
            seq_error(f"reader {idx}", i, s)
    t = time.perf_counter()
    r.close()
    q.close()
    return t


# ---------------------------------------------------------------- pysyncq


def ps_setup(payload, readers):
    from pysyncq import pysyncq as pq

    name = unique_name("ps")
    return {"name": name, "q": pq.PySyncQ(name, size=RING_BYTES)}


def ps_teardown(st):
    q = st["q"]
    # the parent never opened the queue: drop its views and mapping, unlink if a child
    # did not get to (pysyncq unlinks on the last close of an opened member)
    q.h.release()
    q.b.release()
    q.shm.close()
    if os.path.exists(f"/dev/shm/{st['name']}"):
        q.shm.unlink()


def ps_writer(st, payload, n, h):
    q = st["q"]
    q.open("writer")  # pysyncq: every process opens before traffic; the writer reads too
    body = bytearray(payload)
    h.ready()
    h.wait_go()
    deadline = time.perf_counter() + RUN_TIMEOUT
    t0 = time.perf_counter()
    for i in range(n):
        struct.pack_into("<Q", body, 0, i)
        b = bytes(body)
        while True:
            try:
                q.append("", b)
                break
            except MemoryError:
                for _ in q:  # consume own copies (they are screened)
                    pass
                deadline_passed(deadline, "waiting for room in the pysyncq queue")
        if i % 64 == 0:
            for _ in q:
                pass
    q.close()  # releases the writer's own unread copies
    return t0


def ps_reader(st, idx, payload, n, h):
    q = st["q"]
    q.open(f"r{idx}")
    h.ready()
    unpack = struct.unpack_from
    for i in range(n):
        m = q.pop(block=True, timer=OP_TIMEOUT, decode=False)
        if m is None:
            raise BenchError(f"reader {idx}: no message {i} within {OP_TIMEOUT} s")
        if unpack("<Q", m[2])[0] != i:
            seq_error(f"reader {idx}", i, unpack("<Q", m[2])[0])
    t = time.perf_counter()
    q.close()
    return t


# ---------------------------------------------------------------- multiprocessing.Queue


def mq_setup(payload, readers):
    maxsize = max(4, min(10_000, RING_BYTES // payload))
    return {"qs": [ctx.Queue(maxsize=maxsize) for _ in range(readers)]}


def mq_teardown(st):
    for q in st["qs"]:
        q.close()
        q.cancel_join_thread()


def mq_writer(st, payload, n, h):
    qs = st["qs"]
    puts = [q.put for q in qs]
    body = bytearray(payload)
    h.ready()
    h.wait_go()
    t0 = time.perf_counter()
    for i in range(n):
        struct.pack_into("<Q", body, 0, i)
        b = bytes(body)
        for put in puts:
            put(b, True, OP_TIMEOUT)
    return t0


def mq_reader(st, idx, payload, n, h):
    get = st["qs"][idx].get
    unpack = struct.unpack_from
    h.ready()
    for i in range(n):
        b = get(True, OP_TIMEOUT)
        if unpack("<Q", b)[0] != i:
            seq_error(f"reader {idx}", i, unpack("<Q", b)[0])
    return time.perf_counter()


# ---------------------------------------------------------------- faster-fifo


def _identity(x):
    return x


def ff_setup(payload, readers):
    import faster_fifo

    size = max(RING_BYTES, 4 * (payload + 64))
    # raw bytes in and out (no pickling): the writer hands bytes, the reader copies the
    # message out of faster-fifo's buffer once (loads=bytes)
    qs = [
        faster_fifo.Queue(max_size_bytes=size, loads=bytes, dumps=_identity) for _ in range(readers)
    ]
    return {"qs": qs}


def ff_teardown(st):
    for q in st["qs"]:
        q.close()


def ff_writer(st, payload, n, h):
    puts = [q.put for q in st["qs"]]
    body = bytearray(payload)
    h.ready()
    h.wait_go()
    t0 = time.perf_counter()
    for i in range(n):
        struct.pack_into("<Q", body, 0, i)
        b = bytes(body)
        for put in puts:
            put(b, True, OP_TIMEOUT)
    return t0


def ff_reader(st, idx, payload, n, h):
    get = st["qs"][idx].get
    unpack = struct.unpack_from
    h.ready()
    for i in range(n):
        b = get(True, OP_TIMEOUT)
        if unpack("<Q", b)[0] != i:
            seq_error(f"reader {idx}", i, unpack("<Q", b)[0])
    return time.perf_counter()


# ---------------------------------------------------------------- pyzmq


def zmq_hwm(payload):
    """High-water mark in messages: the 16 MiB budget, at most pyzmq's default 1000."""
    return max(4, min(1000, RING_BYTES // payload))


def zmq_addr(tag, idx=0):
    return f"ipc:///tmp/rcb-{tag}-{os.getpid()}-{_counter[0]}-{idx}.sock"


def zp_setup(payload, readers):
    unique_name("zmq")
    return {"addrs": [zmq_addr("push", i) for i in range(readers)]}


def zmq_teardown(st):
    for a in st["addrs"]:
        path = a[len("ipc://") :]
        if os.path.exists(path):
            os.unlink(path)


def zp_writer(st, payload, n, h):
    import zmq

    zctx = zmq.Context()
    socks = []
    for a in st["addrs"]:
        s = zctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, zmq_hwm(payload))
        s.setsockopt(zmq.SNDTIMEO, int(OP_TIMEOUT * 1000))
        s.connect(a)
        socks.append(s)
    sends = [s.send for s in socks]
    body = bytearray(payload)
    h.ready()
    h.wait_go()
    t0 = time.perf_counter()
    for i in range(n):
        struct.pack_into("<Q", body, 0, i)
        for send in sends:
            send(body)  # copies the buffer into a zmq message
    h.wait_end()  # keep the sockets open until every reader has everything
    for s in socks:
        s.close(linger=0)
    zctx.term()
    return t0


def zp_reader(st, idx, payload, n, h):
    import zmq

    zctx = zmq.Context()
    s = zctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, zmq_hwm(payload))
    s.setsockopt(zmq.RCVTIMEO, int(OP_TIMEOUT * 1000))
    s.bind(st["addrs"][idx])
    recv = s.recv
    unpack = struct.unpack_from
    h.ready()
    for i in range(n):
        b = recv()  # raises zmq.Again after OP_TIMEOUT
        if unpack("<Q", b)[0] != i:
            seq_error(f"reader {idx}", i, unpack("<Q", b)[0])
    t = time.perf_counter()
    s.close(linger=0)
    zctx.term()
    return t


def zs_setup(payload, readers):
    unique_name("zmq")
    return {"addrs": [zmq_addr("pub")], "readers": readers}


def zs_writer(st, payload, n, h):
    import zmq

    zctx = zmq.Context()
    x = zctx.socket(zmq.XPUB)
    x.setsockopt(zmq.XPUB_NODROP, 1)  # block at the high-water mark instead of dropping
    x.setsockopt(zmq.XPUB_VERBOSE, 1)  # pass every subscription up, to count the readers
    x.setsockopt(zmq.SNDHWM, zmq_hwm(payload))
    x.setsockopt(zmq.SNDTIMEO, int(OP_TIMEOUT * 1000))
    x.setsockopt(zmq.RCVTIMEO, int(READY_TIMEOUT * 1000))
    x.bind(st["addrs"][0])
    for _ in range(st["readers"]):  # every reader's subscription has arrived
        if x.recv() != b"\x01":
            raise BenchError("unexpected subscription message")
    send = x.send
    body = bytearray(payload)
    h.ready()
    h.wait_go()
    t0 = time.perf_counter()
    for i in range(n):
        struct.pack_into("<Q", body, 0, i)
        send(body)
    h.wait_end()  # closing at once (even with linger) can lose the last messages
    x.close(linger=0)
    zctx.term()
    return t0


def zs_reader(st, idx, payload, n, h):
    import zmq

    zctx = zmq.Context()
    s = zctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, zmq_hwm(payload))
    s.setsockopt(zmq.RCVTIMEO, int(OP_TIMEOUT * 1000))
    s.setsockopt(zmq.RECONNECT_IVL, 10)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(st["addrs"][0])
    recv = s.recv
    unpack = struct.unpack_from
    h.ready()
    for i in range(n):
        b = recv()
        if unpack("<Q", b)[0] != i:
            seq_error(f"reader {idx}", i, unpack("<Q", b)[0])
    t = time.perf_counter()
    s.close(linger=0)
    zctx.term()
    return t


# ---------------------------------------------------------------- iceoryx2


def iox_buffer(payload):
    """Subscriber buffer in samples: the 16 MiB budget, between 4 and 1024."""
    return max(4, min(1024, RING_BYTES // payload))


def iox_service(node, name, readers, payload):
    """The same service configuration on every side (open_or_create: whoever comes first)."""
    import iceoryx2 as iox

    return (
        node.service_builder(iox.ServiceName.new(name))
        .publish_subscribe(iox.Slice[ctypes.c_uint8])
        .max_publishers(1)
        .max_subscribers(readers)
        .subscriber_max_buffer_size(iox_buffer(payload))
        .history_size(0)
        .enable_safe_overflow(False)  # never overwrite an unread sample
        .open_or_create()
    )


def iox_publisher(svc, payload):
    import iceoryx2 as iox

    return (
        svc.publisher_builder()
        .initial_max_slice_len(payload)
        .backpressure_strategy(iox.BackpressureStrategy.RetryUntilDelivered)
        .create()
    )


def iox_setup(payload, readers):
    return {"name": unique_name("iox"), "readers": readers}


def iox_writer(st, payload, n, h):
    import iceoryx2 as iox

    iox.set_log_level(iox.LogLevel.Error)
    node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
    svc = iox_service(node, st["name"], st["readers"], payload)
    pub = iox_publisher(svc, payload)
    body = bytearray(payload)
    cbody = (ctypes.c_char * payload).from_buffer(body)
    loan = pub.loan_slice_uninit
    memmove = ctypes.memmove
    pack = struct.pack_into
    h.ready()
    h.wait_go()
    pub.update_connections()  # every subscriber exists now
    t0 = time.perf_counter()
    for i in range(n):
        pack("<Q", body, 0, i)
        s = loan(payload)
        memmove(s.payload_ptr, cbody, payload)
        s.assume_init().send()
    del cbody
    h.wait_end()  # keep the publisher (and its data segment) until every reader is done
    return t0


def iox_reader(st, idx, payload, n, h):
    import iceoryx2 as iox

    iox.set_log_level(iox.LogLevel.Error)
    node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
    svc = iox_service(node, st["name"], st["readers"], payload)
    sub = svc.subscriber_builder().buffer_size(iox_buffer(payload)).create()
    recv = sub.receive
    string_at = ctypes.string_at
    unpack = struct.unpack_from
    clock = time.perf_counter
    h.ready()
    for i in range(n):
        s = recv()
        if s is None:  # busy polling: iceoryx2 publish-subscribe has no blocking receive
            deadline = clock() + OP_TIMEOUT
            spins = 0
            while (s := recv()) is None:
                spins += 1
                if not spins & 0x3FF and clock() > deadline:
                    raise BenchError(f"reader {idx}: no message {i} within {OP_TIMEOUT} s")
        b = string_at(s.payload_ptr, payload)  # copy out once, like the copy path
        s.delete()
        if unpack("<Q", b)[0] != i:
            seq_error(f"reader {idx}", i, unpack("<Q", b)[0])
    return clock()


# ---------------------------------------------------------------- bare shared-memory ring


HEAD = 0  # int64 index of the head counter (messages published), own cache line
TAIL = 8  # int64 index of the tail counter (messages consumed), own cache line
RING_HDR = 128


def ring_geometry(payload):
    slot = (payload + 63) // 64 * 64
    nslots = max(8, min(4096, RING_BYTES // slot))  # a power of two for every payload here
    return slot, nslots


def ring_setup(payload, readers):
    from multiprocessing import shared_memory

    slot, nslots = ring_geometry(payload)
    shms = []
    for i in range(readers):
        shm = shared_memory.SharedMemory(
            name=f"{unique_name('ring')}-{i}", create=True, size=RING_HDR + slot * nslots
        )
        shms.append(shm)
    return {"shms": shms, "slot": slot, "nslots": nslots}


def ring_teardown(st):
    for shm in st["shms"]:
        shm.close()
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


def ring_views(shm, slot, nslots, payload):
    """(int64 counters, list of per-slot uint8 views) of one ring; children only."""
    import numpy as np

    ctr = np.ndarray((16,), dtype=np.int64, buffer=shm.buf)
    slots = np.ndarray((nslots, slot), dtype=np.uint8, buffer=shm.buf, offset=RING_HDR)
    return ctr, [slots[k, :payload] for k in range(nslots)]


def ring_writer(st, payload, n, h):
    import numpy as np

    nslots = st["nslots"]
    mask = nslots - 1
    rings = [ring_views(shm, st["slot"], nslots, payload) for shm in st["shms"]]
    ctrs = [c for c, _ in rings]
    slotss = [s for _, s in rings]
    tails = [0] * len(rings)  # cached tail of every ring
    body = np.zeros(payload, dtype=np.uint8)
    body64 = body[:8].view(np.int64)
    copyto = np.copyto
    clock = time.perf_counter
    nr = range(len(rings))
    h.ready()
    h.wait_go()
    deadline = clock() + RUN_TIMEOUT
    t0 = clock()
    for i in range(n):
        body64[0] = i
        k = i & mask
        for r in nr:
            if i - tails[r] >= nslots:  # looks full: read the reader's tail
                ctr = ctrs[r]
                spins = 0
                while i - int(ctr[TAIL]) >= nslots:
                    spins += 1
                    if not spins & 0xFFFF and clock() > deadline:
                        raise BenchError("bare ring writer: no room within the run timeout")
                tails[r] = int(ctr[TAIL])
            copyto(slotss[r][k], body)  # copy in
            ctrs[r][HEAD] = i + 1  # publish (x86-64: stores are not reordered)
    return t0


def ring_reader(st, idx, payload, n, h):
    import numpy as np

    nslots = st["nslots"]
    mask = nslots - 1
    ctr, slots = ring_views(st["shms"][idx], st["slot"], nslots, payload)
    out = np.empty(payload, dtype=np.uint8)  # preallocated: copy out once
    out64 = out[:8].view(np.int64)
    copyto = np.copyto
    clock = time.perf_counter
    head = 0  # cached head
    h.ready()
    for i in range(n):
        if i >= head:
            spins = 0
            deadline = None
            while (head := int(ctr[HEAD])) <= i:
                spins += 1
                if not spins & 0xFFFF:
                    if deadline is None:
                        deadline = clock() + OP_TIMEOUT
                    elif clock() > deadline:
                        raise BenchError(f"reader {idx}: no message {i} within {OP_TIMEOUT} s")
        copyto(out, slots[i & mask])  # copy out
        if out64[0] != i:
            seq_error(f"reader {idx}", i, int(out64[0]))
        ctr[TAIL] = i + 1  # release the slot
    return clock()


# ---------------------------------------------------------------- table of implementations

# impl: (setup, writer, reader, teardown)
IMPLS = {
    "ringcast": (rc_setup, rc_writer, rc_reader, rc_teardown),
    "ringcast-lease": (rc_setup, rc_writer, rc_lease_reader, rc_teardown),
    "pysyncq": (ps_setup, ps_writer, ps_reader, ps_teardown),
    "mp.Queue": (mq_setup, mq_writer, mq_reader, mq_teardown),
    "faster-fifo": (ff_setup, ff_writer, ff_reader, ff_teardown),
    "zmq-push": (zp_setup, zp_writer, zp_reader, zmq_teardown),
    "zmq-pubsub": (zs_setup, zs_writer, zs_reader, zmq_teardown),
    "iceoryx2": (iox_setup, iox_writer, iox_reader, lambda st: None),
    "bare-ring": (ring_setup, ring_writer, ring_reader, ring_teardown),
}

# Rough msgs/s (1->1, 1->2) on the 2-core reference machine, by payload: N = rate x seconds
# per run, so that every run lasts about as long (a fixed N per implementation and payload).
RATE = {
    "ringcast": {64: (2.3e6, 4.5e5), 4096: (1.7e6, 4e5), 65536: (3e5, 1.5e5), MiB: (1.8e4, 7e3)},
    "ringcast-lease": {
        64: (2e6, 6e5),
        4096: (2e6, 5e5),
        65536: (5e5, 3e5),
        MiB: (2.5e4, 2.5e4),
    },
    "pysyncq": {64: (5.5e4, 4e4), 4096: (5.5e4, 2.5e4), 65536: (3.8e4, 2.2e4), MiB: (4.6e3, 3.7e3)},
    "mp.Queue": {64: (8.5e4, 5.7e4), 4096: (5.5e4, 3.2e4), 65536: (6e3, 9e3), MiB: (500, 1.3e3)},
    "faster-fifo": {
        64: (2.5e5, 1.2e5),
        4096: (1.7e5, 9e4),
        65536: (4.6e4, 2.6e4),
        MiB: (3.5e3, 2.9e3),
    },
    "zmq-push": {64: (3e5, 1.5e5), 4096: (8e4, 5e4), 65536: (7.5e3, 5.7e3), MiB: (780, 360)},
    "zmq-pubsub": {
        64: (9.5e5, 8.5e5),
        4096: (1.5e5, 1e5),
        65536: (6.5e3, 1.1e4),
        MiB: (2.2e3, 1e3),
    },
    "iceoryx2": {
        64: (2.9e5, 2.6e5),
        4096: (3.5e5, 1.3e5),
        65536: (1.7e5, 4.5e4),
        MiB: (1.4e4, 3e3),
    },
    "bare-ring": {
        64: (1.3e6, 3.7e5),
        4096: (4.8e5, 2.3e5),
        65536: (2.7e5, 2.7e4),
        MiB: (2.2e4, 1.8e3),
    },
}


def message_count(impl, payload, readers, seconds):
    n = RATE[impl][payload][readers - 1] * seconds
    return int(max(200, min(3_000_000, n)))


def run_case(impl, payload, readers, n):
    setup, writer, reader, teardown = IMPLS[impl]
    st = setup(payload, readers)
    try:
        roles = [("writer", writer, (st, payload, n))]
        names = [f"reader {i}" for i in range(readers)]
        roles += [(name, reader, (st, i, payload, n)) for i, name in enumerate(names)]
        res = supervise(roles, end_after=names)
    finally:
        teardown(st)
    return max(res[f"reader {i}"] for i in range(readers)) - res["writer"]


# ---------------------------------------------------------------- report


def fmt_payload(p):
    if p >= MiB:
        return f"{p // MiB} MiB"
    if p >= KiB:
        return f"{p // KiB} KiB"
    return f"{p} B"


def print_table(records, impls):
    by = {(r["impl"], r["payload"], r["readers"]): r for r in records}
    cases = sorted({(r["payload"], r["readers"]) for r in records})
    cols = [i for i in impls if any(r["impl"] == i for r in records)]
    w = 16

    def row(label, cells):
        print(f"{label:<14}" + "".join(f"{c:>{w}}" for c in cells))

    print("\nmsgs/s (GB/s delivered = msgs/s x payload x readers)")
    row("payload  1->N", cols)
    for p, n in cases:
        cells = []
        for i in cols:
            r = by.get((i, p, n))
            cells.append(f"{r['msgs_per_s']:,}" if r else "-")
        row(f"{fmt_payload(p):>7}  1->{n}", cells)
        cells = []
        for i in cols:
            r = by.get((i, p, n))
            cells.append(f"({r['gb_per_s']:.2f} GB/s)" if r else "")
        row("", cells)

    for mine in ("ringcast", "ringcast-lease"):
        others = [i for i in cols if i != mine and i not in ("ringcast", "ringcast-lease")]
        if mine not in cols or not others:
            continue
        print(f"\nratios {mine} / peer (msgs/s)")
        row("payload  1->N", others)
        for p, n in cases:
            m = by.get((mine, p, n))
            cells = []
            for i in others:
                r = by.get((i, p, n))
                cells.append(f"{m['msgs_per_s'] / r['msgs_per_s']:.2f}x" if m and r else "-")
            row(f"{fmt_payload(p):>7}  1->{n}", cells)

    print("\ntargets (1->1):")

    def rate(impl, p):
        r = by.get((impl, p, 1))
        return r["msgs_per_s"] if r else None

    def target(label, num, den, goal, why="(not measured)"):
        if num is None or den is None:
            print(f"  {label:<48} n/a {why}")
            return
        v = num / den
        verdict = "met" if v >= goal else "MISSED"
        print(f"  {label:<48} {v:8.2f}x  (target >= {goal:g}: {verdict})")

    peers64 = [(rate(i, 64), i) for i in PEERS if rate(i, 64)]
    best = max(peers64) if peers64 else (None, "?")
    target(f"64 B: ringcast / best peer ({best[1]})", rate("ringcast", 64), best[0], 1.3)
    target("64 B: ringcast / pysyncq", rate("ringcast", 64), rate("pysyncq", 64), 25)
    target("4 KiB: ringcast / iceoryx2", rate("ringcast", 4096), rate("iceoryx2", 4096), 2)
    target("1 MiB: ringcast copy / bare ring", rate("ringcast", MiB), rate("bare-ring", MiB), 0.9)
    target(
        "1 MiB: ringcast lease / bare ring",
        rate("ringcast-lease", MiB),
        rate("bare-ring", MiB),
        1.0,
        "(lease path not measured)",
    )


#: ringcast's spin window (µs) for its writer and readers; 20 is the library's default.
RC_SPIN_US = 20.0


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short runs (under a minute in all)")
    ap.add_argument("--json", action="store_true", help="print only a JSON list of records")
    ap.add_argument("--impl", action="append", choices=IMPL_ORDER, help="only these")
    ap.add_argument("--payload", action="append", type=int, choices=PAYLOADS, help="only these")
    ap.add_argument("--repeat", type=int, help="runs per case, best kept (default 3, quick 1)")
    ap.add_argument(
        "--rc-spin-us",
        type=float,
        default=20.0,
        help="ringcast's spin window in µs (default 20, the library default)",
    )
    ap.add_argument(
        "--neighbour",
        action="store_true",
        help="run beside one CPU-bound (busy-looping) process",
    )
    args = ap.parse_args(argv)
    global RC_SPIN_US
    RC_SPIN_US = args.rc_spin_us
    t_start = time.perf_counter()
    note_out = sys.stderr if args.json else sys.stdout
    seconds = 0.2 if args.quick else 0.4
    repeat = args.repeat or (1 if args.quick else 3)
    payloads = args.payload or PAYLOADS
    janitor = ShmJanitor()
    impls = []
    for impl in args.impl or IMPL_ORDER:
        why = unavailable(impl)
        if why:
            print(f"skip {why}", file=note_out, flush=True)
        else:
            impls.append(impl)
    records = []
    if args.neighbour:
        print("with one CPU-bound neighbour process", file=note_out, flush=True)
    try:
        with neighbour(args.neighbour):
            _run_all(args, impls, payloads, repeat, seconds, records)
    finally:
        left = janitor.clean()
        if left:
            print(f"warning: left in /dev/shm: {left}", file=sys.stderr)
    if args.json:
        print(json.dumps(records, indent=1))
    else:
        print_table(records, impls)
        print(f"\ntotal time {time.perf_counter() - t_start:.0f} s")
    return 0


def _run_all(args, impls, payloads, repeat, seconds, records):
    """Every case of ``main``, appended to ``records``."""
    for payload in payloads:
        for readers in (1, 2):
            # rounds interleave the implementations, so that a passing disturbance on
            # this shared 2-core machine does not hit every run of one implementation
            runs = {impl: [] for impl in impls}
            for _ in range(repeat):
                for impl in impls:
                    n = message_count(impl, payload, readers, seconds)
                    try:
                        dt = run_case(impl, payload, readers, n)
                    except BenchError as e:
                        raise SystemExit(
                            f"FAILED {impl} {fmt_payload(payload)} 1->{readers} (N={n}): {e}"
                        ) from None
                    runs[impl].append(n / dt)
            for impl in impls:
                rate = max(runs[impl])
                rec = {
                    "impl": impl,
                    "payload": payload,
                    "readers": readers,
                    "msgs_per_s": round(rate),
                    "gb_per_s": round(rate * payload * readers / 1e9, 4),
                    "neighbour": args.neighbour,
                }
                records.append(rec)
                if not args.json:
                    spread = f", worst {min(runs[impl]) / rate:.0%}" if repeat > 1 else ""
                    print(
                        f"{impl:>15} {fmt_payload(payload):>7} 1->{readers}: "
                        f"{rate:>12,.0f} msgs/s {rec['gb_per_s']:8.3f} GB/s"
                        f"  (N={message_count(impl, payload, readers, seconds):,}, "
                        f"best of {repeat}{spread})",
                        flush=True,
                    )


if __name__ == "__main__":
    sys.exit(main())
