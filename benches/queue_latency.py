"""Round-trip latency: ping-pong between two processes, side by side.

A "ping" process sends a message carrying a sequence number, a "pong" process receives it
and sends the same bytes back; each direction has its own queue, socket pair or channel.
The round-trip time is taken around send + receive in the ping process (perf_counter_ns);
p50 and p99 over N round trips after a warm-up. Ping and pong are pinned to two different
CPUs (--no-pin: wherever the scheduler puts them): on a 2-core VM the scheduler sometimes
puts both on one core, where a blocking wake-up is a cheap local switch and a spin wastes the
peer's time slice, sometimes on two, where waking an idle core costs tens of microseconds;
unpinned figures jump between the two from one run to the next. Both sides check every
sequence number, in order; a lost, duplicated or reordered message fails the run loudly.

* ringcast-spin    BroadcastQueue(spin_us=50): a waiting receive spins 50 us before it sleeps
* ringcast-nospin  BroadcastQueue(spin_us=0): a waiting receive sleeps on the futex at once
* pysyncq          pysyncq 0.0.1 append / pop(block=True) (each side also drains its own
                   copies, as pysyncq requires; outside the timed section on the ping side)
* mp.Queue         multiprocessing.Queue put / get (blocking)
* faster-fifo      faster_fifo.Queue put / get of raw bytes (blocking)
* zmq              pyzmq PUSH -> PULL pair per direction over ipc:// (blocking recv)
* iceoryx2         iceoryx2 publish-subscribe per direction, busy polling
* bare-ring        a single-producer single-consumer shared-memory ring per direction
                   (multiprocessing.shared_memory + numpy), pure spin

    python benches/queue_latency.py            # 64 B, 4 KiB, 64 KiB, 20k round trips
    python benches/queue_latency.py --quick    # 64 B, 5k round trips
    python benches/queue_latency.py --json     # only a JSON list of records on stdout
    python benches/queue_latency.py --quick --neighbour --impl ringcast-spin --impl pysyncq
                                               # beside one CPU-bound (busy-looping) process

With --neighbour one busy-looping process runs, unpinned, for the whole measurement: on a
2-core machine it shares a core with ping or pong, where a waiter that spins only delays the
peer it waits for. ringcast's spin is adaptive (it stops while more threads are runnable
than there are CPUs, and where spins rarely succeed), so it should not lose to pysyncq there.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from queue_throughput import (  # noqa: E402  (the shared harness lives beside this file)
    HEAD,
    OP_TIMEOUT,
    TAIL,
    BenchError,
    KiB,
    ShmJanitor,
    ctx,
    fmt_payload,
    iox_publisher,
    iox_service,
    ps_teardown,
    ring_setup,
    ring_teardown,
    ring_views,
    seq_error,
    supervise,
    unavailable,
    unique_name,
    zmq_addr,
    zmq_teardown,
)
from queue_throughput import neighbour as cpu_neighbour  # noqa: E402

IMPL_ORDER = [
    "ringcast-spin",
    "ringcast-nospin",
    "pysyncq",
    "mp.Queue",
    "faster-fifo",
    "zmq",
    "iceoryx2",
    "bare-ring",
]
# what queue_throughput.unavailable() probes for each
PROBE = {
    "pysyncq": "pysyncq",
    "faster-fifo": "faster-fifo",
    "zmq": "zmq-push",
    "iceoryx2": "iceoryx2",
}
BLOCKING_PEERS = ["faster-fifo", "mp.Queue", "zmq"]
SPIN_US = 50.0
QUEUE_BYTES = 4 << 20
unpack = struct.unpack_from
pack = struct.pack_into


def spin_wait_error(who, i):
    raise BenchError(f"{who}: no message {i} within {OP_TIMEOUT} s")


# ---------------------------------------------------------------- ringcast


def rc_setup(payload, spin_us):
    import ringcast

    st = {"spin": spin_us, "names": [unique_name("lat"), unique_name("lat")]}
    st["qs"] = [ringcast.BroadcastQueue(n, create=True, capacity=QUEUE_BYTES) for n in st["names"]]
    return st


def rc_teardown(st):
    import ringcast

    for q, name in zip(st["qs"], st["names"]):
        q.close()
        if os.path.exists(f"/dev/shm/{name}"):
            ringcast.unlink(name)


def rc_ping(st, payload, n, warm, h):
    import ringcast

    qa, qb = (ringcast.BroadcastQueue(x, create=False, spin_us=st["spin"]) for x in st["names"])
    rb = qb.reader()
    send, recv = qa.send, rb.recv_bytes
    body = bytearray(payload)
    rtt = [0] * n
    clock = time.perf_counter_ns
    h.ready()
    h.wait_go()
    for i in range(warm + n):
        pack("<Q", body, 0, i)
        t0 = clock()
        send(body)
        b = recv(OP_TIMEOUT)
        t1 = clock()
        if unpack("<Q", b)[0] != i:
            seq_error("ping", i, unpack("<Q", b)[0])
        if i >= warm:
            rtt[i - warm] = t1 - t0
    rb.close()
    qa.close()
    qb.close()
    return rtt


def rc_pong(st, payload, n, warm, h):
    import ringcast

    qa, qb = (ringcast.BroadcastQueue(x, create=False, spin_us=st["spin"]) for x in st["names"])
    ra = qa.reader()
    send, recv = qb.send, ra.recv_bytes
    h.ready()
    for i in range(warm + n):
        b = recv(OP_TIMEOUT)
        if unpack("<Q", b)[0] != i:
            seq_error("pong", i, unpack("<Q", b)[0])
        send(b)
    ra.close()
    qa.close()
    qb.close()
    return None


# ---------------------------------------------------------------- pysyncq


def ps_setup(payload, _):
    from pysyncq import pysyncq as pq

    out = []
    for _ in range(2):
        name = unique_name("lat")
        out.append({"name": name, "q": pq.PySyncQ(name, size=QUEUE_BYTES)})
    return out


def ps_teardown2(st):
    for s in st:
        ps_teardown(s)


def ps_ping(st, payload, n, warm, h):
    qa, qb = st[0]["q"], st[1]["q"]
    qa.open("ping")
    qb.open("ping")
    body = bytearray(payload)
    rtt = [0] * n
    clock = time.perf_counter_ns
    h.ready()
    h.wait_go()
    for i in range(warm + n):
        pack("<Q", body, 0, i)
        b = bytes(body)
        t0 = clock()
        qa.append("", b)
        m = qb.pop(block=True, timer=OP_TIMEOUT, decode=False)
        t1 = clock()
        if m is None:
            spin_wait_error("ping", i)
        if unpack("<Q", m[2])[0] != i:
            seq_error("ping", i, unpack("<Q", m[2])[0])
        if i >= warm:
            rtt[i - warm] = t1 - t0
        for _ in qa:  # drain the own (screened) copy, untimed
            pass
    qa.close()
    qb.close()
    return rtt


def ps_pong(st, payload, n, warm, h):
    qa, qb = st[0]["q"], st[1]["q"]
    qa.open("pong")
    qb.open("pong")
    h.ready()
    for i in range(warm + n):
        m = qa.pop(block=True, timer=OP_TIMEOUT, decode=False)
        if m is None:
            spin_wait_error("pong", i)
        if unpack("<Q", m[2])[0] != i:
            seq_error("pong", i, unpack("<Q", m[2])[0])
        qb.append("", m[2])
        for _ in qb:  # drain the own (screened) copy
            pass
    h.wait_end()
    qa.close()
    qb.close()
    return None


# ---------------------------------------------------------------- mp.Queue, faster-fifo


def mq_setup(payload, _):
    return [ctx.Queue(), ctx.Queue()]


def mq_teardown(qs):
    for q in qs:
        q.close()
        q.cancel_join_thread()


def _identity(x):
    return x


def ff_setup(payload, _):
    import faster_fifo

    size = max(1 << 20, 4 * (payload + 64))
    return [faster_fifo.Queue(max_size_bytes=size, loads=bytes, dumps=_identity) for _ in "ab"]


def ff_teardown(qs):
    for q in qs:
        q.close()


def q_ping(qs, payload, n, warm, h):
    """multiprocessing.Queue and faster_fifo.Queue share put(x, block, timeout) / get."""
    put, get = qs[0].put, qs[1].get
    body = bytearray(payload)
    rtt = [0] * n
    clock = time.perf_counter_ns
    h.ready()
    h.wait_go()
    for i in range(warm + n):
        pack("<Q", body, 0, i)
        b = bytes(body)
        t0 = clock()
        put(b, True, OP_TIMEOUT)
        r = get(True, OP_TIMEOUT)
        t1 = clock()
        if unpack("<Q", r)[0] != i:
            seq_error("ping", i, unpack("<Q", r)[0])
        if i >= warm:
            rtt[i - warm] = t1 - t0
    return rtt


def q_pong(qs, payload, n, warm, h):
    get, put = qs[0].get, qs[1].put
    h.ready()
    for i in range(warm + n):
        b = get(True, OP_TIMEOUT)
        if unpack("<Q", b)[0] != i:
            seq_error("pong", i, unpack("<Q", b)[0])
        put(b, True, OP_TIMEOUT)
    h.wait_end()
    return None


# ---------------------------------------------------------------- pyzmq


def zmq_setup(payload, _):
    unique_name("zmq")
    return {"addrs": [zmq_addr("lat", 0), zmq_addr("lat", 1)]}


def _zmq_pair(st, recv_idx):
    """(context, PUSH to the other side, PULL bound for this side)."""
    import zmq

    zctx = zmq.Context()
    push = zctx.socket(zmq.PUSH)
    pull = zctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, int(OP_TIMEOUT * 1000))
    push.setsockopt(zmq.SNDTIMEO, int(OP_TIMEOUT * 1000))
    push.setsockopt(zmq.RECONNECT_IVL, 10)
    pull.bind(st["addrs"][recv_idx])
    push.connect(st["addrs"][1 - recv_idx])
    return zctx, push, pull


def zmq_ping(st, payload, n, warm, h):
    zctx, push, pull = _zmq_pair(st, 1)
    send, recv = push.send, pull.recv
    body = bytearray(payload)
    rtt = [0] * n
    clock = time.perf_counter_ns
    h.ready()
    h.wait_go()
    for i in range(warm + n):
        pack("<Q", body, 0, i)
        t0 = clock()
        send(body)
        b = recv()
        t1 = clock()
        if unpack("<Q", b)[0] != i:
            seq_error("ping", i, unpack("<Q", b)[0])
        if i >= warm:
            rtt[i - warm] = t1 - t0
    push.close(linger=0)
    pull.close(linger=0)
    zctx.term()
    return rtt


def zmq_pong(st, payload, n, warm, h):
    zctx, push, pull = _zmq_pair(st, 0)
    send, recv = push.send, pull.recv
    h.ready()
    for i in range(warm + n):
        b = recv()
        if unpack("<Q", b)[0] != i:
            seq_error("pong", i, unpack("<Q", b)[0])
        send(b)
    h.wait_end()
    push.close(linger=0)
    pull.close(linger=0)
    zctx.term()
    return None


# ---------------------------------------------------------------- iceoryx2


def iox_setup(payload, _):
    return {"names": [unique_name("lat"), unique_name("lat")]}


def _iox_ends(st, payload, recv_idx):
    import iceoryx2 as iox

    iox.set_log_level(iox.LogLevel.Error)
    node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
    svcs = [iox_service(node, name, 1, payload) for name in st["names"]]
    sub = svcs[recv_idx].subscriber_builder().create()
    pub = iox_publisher(svcs[1 - recv_idx], payload)
    return node, svcs, pub, sub


def iox_ping(st, payload, n, warm, h):
    node, svcs, pub, sub = _iox_ends(st, payload, 1)
    body = bytearray(payload)
    cbody = (ctypes.c_char * payload).from_buffer(body)
    loan, recv = pub.loan_slice_uninit, sub.receive
    memmove, string_at = ctypes.memmove, ctypes.string_at
    rtt = [0] * n
    clock = time.perf_counter_ns
    h.ready()
    h.wait_go()
    pub.update_connections()
    for i in range(warm + n):
        pack("<Q", body, 0, i)
        t0 = clock()
        s = loan(payload)
        memmove(s.payload_ptr, cbody, payload)
        s.assume_init().send()
        spins = 0
        while (r := recv()) is None:
            spins += 1
            if not spins & 0x3FF and clock() - t0 > OP_TIMEOUT * 1e9:
                spin_wait_error("ping", i)
        b = string_at(r.payload_ptr, payload)
        r.delete()
        t1 = clock()
        if unpack("<Q", b)[0] != i:
            seq_error("ping", i, unpack("<Q", b)[0])
        if i >= warm:
            rtt[i - warm] = t1 - t0
    del cbody
    return rtt


def iox_pong(st, payload, n, warm, h):
    node, svcs, pub, sub = _iox_ends(st, payload, 0)
    loan, recv = pub.loan_slice_uninit, sub.receive
    memmove = ctypes.memmove
    clock = time.perf_counter
    h.ready()
    h.wait_go()
    pub.update_connections()
    for i in range(warm + n):
        deadline = clock() + OP_TIMEOUT
        spins = 0
        while (r := recv()) is None:
            spins += 1
            if not spins & 0x3FF and clock() > deadline:
                spin_wait_error("pong", i)
        src = r.payload_ptr
        if ctypes.c_uint64.from_address(src).value != i:
            seq_error("pong", i, ctypes.c_uint64.from_address(src).value)
        s = loan(payload)
        memmove(s.payload_ptr, src, payload)  # shared memory to shared memory, one copy
        r.delete()
        s.assume_init().send()
    h.wait_end()
    return None


# ---------------------------------------------------------------- bare shared-memory ring


def ring2_setup(payload, _):
    return [ring_setup(payload, 1), ring_setup(payload, 1)]


def ring2_teardown(st):
    for s in st:
        ring_teardown(s)


def _ring_end(s, payload):
    ctr, slots = ring_views(s["shms"][0], s["slot"], s["nslots"], payload)
    return ctr, slots, s["nslots"] - 1


def ring_ping(st, payload, n, warm, h):
    import numpy as np

    ca, sa, mask = _ring_end(st[0], payload)  # ping -> pong
    cb, sb, _ = _ring_end(st[1], payload)  # pong -> ping
    body = np.zeros(payload, dtype=np.uint8)
    body64 = body[:8].view(np.int64)
    out = np.empty(payload, dtype=np.uint8)
    out64 = out[:8].view(np.int64)
    copyto = np.copyto
    rtt = [0] * n
    clock = time.perf_counter_ns
    h.ready()
    h.wait_go()
    for i in range(warm + n):
        body64[0] = i
        t0 = clock()
        # send: ping-pong never has more than one message in flight, so there is room
        copyto(sa[i & mask], body)
        ca[HEAD] = i + 1
        # receive
        spins = 0
        while int(cb[HEAD]) <= i:
            spins += 1
            if not spins & 0xFFFF and clock() - t0 > OP_TIMEOUT * 1e9:
                spin_wait_error("ping", i)
        copyto(out, sb[i & mask])
        cb[TAIL] = i + 1
        t1 = clock()
        if out64[0] != i:
            seq_error("ping", i, int(out64[0]))
        if i >= warm:
            rtt[i - warm] = t1 - t0
    return rtt


def ring_pong(st, payload, n, warm, h):
    import numpy as np

    ca, sa, mask = _ring_end(st[0], payload)
    cb, sb, _ = _ring_end(st[1], payload)
    out = np.empty(payload, dtype=np.uint8)
    out64 = out[:8].view(np.int64)
    copyto = np.copyto
    clock = time.perf_counter
    h.ready()
    for i in range(warm + n):
        spins = 0
        deadline = None
        while int(ca[HEAD]) <= i:
            spins += 1
            if not spins & 0xFFFF:
                if deadline is None:
                    deadline = clock() + OP_TIMEOUT
                elif clock() > deadline:
                    spin_wait_error("pong", i)
        copyto(out, sa[i & mask])  # copy out
        ca[TAIL] = i + 1
        if out64[0] != i:
            seq_error("pong", i, int(out64[0]))
        copyto(sb[i & mask], out)  # copy in
        cb[HEAD] = i + 1
    return None


# ---------------------------------------------------------------- table of implementations

# impl: (setup(payload, arg), arg, ping, pong, teardown)
IMPLS = {
    "ringcast-spin": (rc_setup, SPIN_US, rc_ping, rc_pong, rc_teardown),
    "ringcast-nospin": (rc_setup, 0.0, rc_ping, rc_pong, rc_teardown),
    "pysyncq": (ps_setup, None, ps_ping, ps_pong, ps_teardown2),
    "mp.Queue": (mq_setup, None, q_ping, q_pong, mq_teardown),
    "faster-fifo": (ff_setup, None, q_ping, q_pong, ff_teardown),
    "zmq": (zmq_setup, None, zmq_ping, zmq_pong, zmq_teardown),
    "iceoryx2": (iox_setup, None, iox_ping, iox_pong, lambda st: None),
    "bare-ring": (ring2_setup, None, ring_ping, ring_pong, ring2_teardown),
}


def _pinned(target, cpu):
    """``target`` run on CPU ``cpu`` only (None: wherever the scheduler puts it)."""
    if cpu is None:
        return target

    def run(*args):
        os.sched_setaffinity(0, {cpu})
        return target(*args)

    return run


def pin_cpus():
    """Two distinct CPUs for ping and pong, or (None, None) with fewer than two."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


def run_case(impl, payload, n, warm, cpus=(None, None)):
    import numpy as np

    setup, arg, ping, pong, teardown = IMPLS[impl]
    st = setup(payload, arg)
    try:
        args = (st, payload, n, warm)
        roles = [("pong", _pinned(pong, cpus[1]), args), ("ping", _pinned(ping, cpus[0]), args)]
        res = supervise(roles, end_after=["ping"])
    finally:
        teardown(st)
    rtt_us = np.asarray(res["ping"], dtype=np.float64) / 1e3
    if len(rtt_us) != n:
        raise BenchError(f"{impl}: got {len(rtt_us)} round-trip times, expected {n}")
    return float(np.percentile(rtt_us, 50)), float(np.percentile(rtt_us, 99))


# ---------------------------------------------------------------- report


def print_table(records, impls):
    by = {(r["impl"], r["payload"]): r for r in records}
    payloads = sorted({r["payload"] for r in records})
    w = 22
    print("\nround trip, us: p50 / p99")
    print(f"{'impl':<16}" + "".join(f"{fmt_payload(p):>{w}}" for p in payloads))
    for impl in impls:
        cells = []
        for p in payloads:
            r = by.get((impl, p))
            cells.append(f"{r['rtt_us_p50']:.1f} / {r['rtt_us_p99']:.1f}" if r else "-")
        print(f"{impl:<16}" + "".join(f"{c:>{w}}" for c in cells))

    for mine in ("ringcast-spin", "ringcast-nospin"):
        if mine not in impls:
            continue
        print(f"\nratios peer p50 / {mine} p50 (> 1: ringcast is faster)")
        print(f"{'peer':<16}" + "".join(f"{fmt_payload(p):>{w}}" for p in payloads))
        for impl in impls:
            if impl.startswith("ringcast"):
                continue
            cells = []
            for p in payloads:
                m, r = by.get((mine, p)), by.get((impl, p))
                cells.append(f"{r['rtt_us_p50'] / m['rtt_us_p50']:.2f}x" if m and r else "-")
            print(f"{impl:<16}" + "".join(f"{c:>{w}}" for c in cells))

    print("\ntargets (64 B):")
    spin = by.get(("ringcast-spin", 64))
    if spin:
        v = spin["rtt_us_p50"]
        print(
            f"  ringcast spinning p50 {v:.2f} us (target <= 3 us: {'met' if v <= 3 else 'MISSED'})"
        )
    nospin = by.get(("ringcast-nospin", 64))
    blocking = [(by[(i, 64)]["rtt_us_p50"], i) for i in BLOCKING_PEERS if (i, 64) in by]
    if nospin and blocking:
        best, name = min(blocking)
        v = nospin["rtt_us_p50"]
        verdict = "met" if v <= best else "MISSED"
        print(
            f"  ringcast without spin p50 {v:.1f} us vs best blocking peer ({name}) "
            f"{best:.1f} us (target <=: {verdict})"
        )


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="64 B only, 5k round trips")
    ap.add_argument("--json", action="store_true", help="print only a JSON list of records")
    ap.add_argument("--impl", action="append", choices=IMPL_ORDER, help="only these")
    ap.add_argument("--payload", action="append", type=int, choices=[64, 4 * KiB, 64 * KiB])
    ap.add_argument("-n", type=int, help="round trips measured (default 20000, quick 5000)")
    ap.add_argument(
        "--no-pin", action="store_true", help="let the scheduler place ping and pong (noisier)"
    )
    ap.add_argument(
        "--neighbour",
        action="store_true",
        help="run beside one CPU-bound (busy-looping) process",
    )
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    note_out = sys.stderr if args.json else sys.stdout
    n = args.n or (5_000 if args.quick else 20_000)
    warm = max(200, n // 10)
    payloads = args.payload or ([64] if args.quick else [64, 4 * KiB, 64 * KiB])
    cpus = (None, None) if args.no_pin else pin_cpus()
    if not args.json:
        where = (
            f"ping on CPU {cpus[0]}, pong on CPU {cpus[1]}" if cpus[0] is not None else "unpinned"
        )
        with_n = "; beside one CPU-bound neighbour" if args.neighbour else ""
        print(f"{n:,} round trips after {warm:,} warm-up ones; {where}{with_n}")
    janitor = ShmJanitor()
    impls = []
    for impl in args.impl or IMPL_ORDER:
        why = unavailable(PROBE[impl]) if impl in PROBE else None
        if why:
            print(f"skip {why}", file=note_out, flush=True)
        else:
            impls.append(impl)
    records = []
    try:
        with cpu_neighbour(args.neighbour):
            _run_all(args, impls, payloads, n, warm, cpus, records)
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


def _run_all(args, impls, payloads, n, warm, cpus, records):
    """Every case of ``main``, appended to ``records``."""
    for payload in payloads:
        for impl in impls:
            t = time.perf_counter()
            try:
                p50, p99 = run_case(impl, payload, n, warm, cpus)
            except BenchError as e:
                raise SystemExit(f"FAILED {impl} {fmt_payload(payload)}: {e}") from None
            rec = {
                "impl": impl,
                "payload": payload,
                "rtt_us_p50": round(p50, 2),
                "rtt_us_p99": round(p99, 2),
                "neighbour": args.neighbour,
            }
            records.append(rec)
            if not args.json:
                print(
                    f"{impl:>16} {fmt_payload(payload):>7}: p50 {p50:9.2f} us  "
                    f"p99 {p99:9.2f} us  ({n:,} round trips, {time.perf_counter() - t:.1f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    sys.exit(main())
