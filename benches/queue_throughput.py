"""Broadcast throughput: one writer process to 1 and 2 reader processes, side by side.

Every implementation runs in the same invocation on the same machine; every reader checks
that it received every message, in order. Peers: pysyncq 0.0.1 (broadcast) and
multiprocessing.Queue (point to point: one queue per reader, the writer puts each message
into each).

    python benches/queue_throughput.py            # full run
    python benches/queue_throughput.py --quick    # under a minute
    python benches/queue_throughput.py --json     # list of records
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import struct
import sys
import time

ctx = mp.get_context("fork")


# ---------------------------------------------------------------- ringcast


def rc_reader(name, n, ready, out):
    import ringcast

    q = ringcast.BroadcastQueue(name, create=False)
    r = q.reader()
    ready.put(1)
    ok = True
    recv = r.recv_bytes
    for i in range(n):
        b = recv(timeout=60)
        if struct.unpack_from("<Q", b)[0] != i:
            ok = False
    r.close()
    q.close()
    out.put(ok)


def run_ringcast(payload, readers, n):
    import ringcast

    name = f"rc-bench-{os.getpid()}"
    q = ringcast.BroadcastQueue(name, create=True, capacity=16 << 20)
    ready, out = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=rc_reader, args=(name, n, ready, out)) for _ in range(readers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    body = bytearray(payload)
    send = q.send
    pack = struct.pack_into
    t0 = time.perf_counter()
    for i in range(n):
        pack("<Q", body, 0, i)
        send(body)
    oks = [out.get(timeout=300) for _ in procs]
    dt = time.perf_counter() - t0
    for p in procs:
        p.join(30)
    q.close()
    return dt, all(oks)


# ---------------------------------------------------------------- pysyncq


def ps_reader(q, n, ready, out):
    q.open(f"r{os.getpid()}")
    ready.put(1)
    ok = True
    got = 0
    while got < n:
        m = q.pop(block=True, timer=60, decode=False)
        if m is None:
            break
        if struct.unpack_from("<Q", m[2])[0] != got:
            ok = False
        got += 1
    q.close()
    out.put(ok and got == n)


def run_pysyncq(payload, readers, n):
    from pysyncq import pysyncq as pq

    q = pq.PySyncQ(f"ps-bench-{os.getpid()}", size=16 << 20)
    ready, out = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=ps_reader, args=(q, n, ready, out)) for _ in range(readers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    q.open("writer")  # pysyncq: every process opens before traffic; the writer reads too
    body = bytearray(payload)
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
        if i % 64 == 0:
            for _ in q:
                pass
    oks = [out.get(timeout=600) for _ in procs]
    dt = time.perf_counter() - t0
    for p in procs:
        p.join(30)
    for _ in q:
        pass
    q.close()
    return dt, all(oks)


# ---------------------------------------------------------------- multiprocessing.Queue


def mq_reader(q, n, out):
    ok = True
    for i in range(n):
        if struct.unpack_from("<Q", q.get(timeout=60))[0] != i:
            ok = False
    out.put(ok)


def run_mpqueue(payload, readers, n):
    qs = [ctx.Queue(maxsize=10000) for _ in range(readers)]
    out = ctx.Queue()
    procs = [ctx.Process(target=mq_reader, args=(q, n, out)) for q in qs]
    for p in procs:
        p.start()
    body = bytearray(payload)
    t0 = time.perf_counter()
    for i in range(n):
        struct.pack_into("<Q", body, 0, i)
        b = bytes(body)
        for q in qs:
            q.put(b)
    oks = [out.get(timeout=600) for _ in procs]
    dt = time.perf_counter() - t0
    for p in procs:
        p.join(30)
    return dt, all(oks)


IMPLS = {"ringcast": run_ringcast, "pysyncq": run_pysyncq, "mp.Queue": run_mpqueue}


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small counts, 64 B and 4 KiB only")
    ap.add_argument("--json", action="store_true", help="print a JSON list of records")
    ap.add_argument("--impl", action="append", choices=list(IMPLS), help="only these")
    args = ap.parse_args(argv)
    payloads = [64, 4096] if args.quick else [64, 4096, 65536]
    impls = args.impl or list(IMPLS)
    records = []
    for payload in payloads:
        for readers in (1, 2):
            for impl in impls:
                # fewer messages for the slow peers, enough for ~1 s each
                n = {"ringcast": 400_000, "pysyncq": 60_000, "mp.Queue": 100_000}[impl]
                if payload >= 65536:
                    n //= 8
                if args.quick:
                    n //= 4
                try:
                    dt, ok = IMPLS[impl](max(payload, 8), readers, n)
                except ImportError as e:
                    print(f"skip {impl}: {e}", file=sys.stderr)
                    continue
                if not ok:
                    raise SystemExit(f"{impl}: a reader did not receive every message in order")
                rate = n / dt
                records.append(
                    {
                        "impl": impl,
                        "payload": payload,
                        "readers": readers,
                        "msgs_per_s": round(rate),
                        "gb_per_s": round(rate * payload * readers / 1e9, 4),
                    }
                )
                if not args.json:
                    print(
                        f"{impl:>9} {payload:>6} B  1->{readers}: {rate:>12,.0f} msgs/s "
                        f"{rate * payload * readers / 1e9:8.3f} GB/s",
                        flush=True,
                    )
    if args.json:
        print(json.dumps(records, indent=1))
    else:
        print("\nratios (ringcast / peer, msgs/s):")
        by = {(r["impl"], r["payload"], r["readers"]): r["msgs_per_s"] for r in records}
        for (impl, payload, readers), rate in sorted(by.items()):
            if impl == "ringcast":
                continue
            mine = by.get(("ringcast", payload, readers))
            if mine:
                print(f"  {payload:>6} B 1->{readers}: ringcast / {impl} = {mine / rate:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
