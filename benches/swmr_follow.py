"""Following a live SWMR file: latency and poll cost, ringcast.swmr vs swmr_tools.

Latency: a writer process appends frames at a fixed rate (data flushed, then the key, as
detectors do) and records when each key was flushed; the consumer (DataSource) records when
it got the frame. Reported: p50 and p99 of the difference, per follower timeout.
Poll cost: CPU time of one poll of two key datasets of 10^6 points (half written).

    python benches/swmr_follow.py            # about 40 s
    python benches/swmr_follow.py --quick    # about 15 s
    python benches/swmr_follow.py --json

swmr_tools imports blosc unconditionally; install it (``pip install swmr_tools blosc``) or
the bench stubs it (blosc is only used for direct chunk reads, which are not exercised).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import types

import h5py
import numpy as np

ctx = mp.get_context("spawn")


def writer(path, n, rate_hz, ready, out):
    with h5py.File(path, "w", libver="latest") as f:
        data = f.create_dataset(
            "data", shape=(0, 64, 64), maxshape=(None, 64, 64), chunks=(1, 64, 64), dtype="u2"
        )
        # Keys start with one (zero) element: swmr_tools crashes on empty keys (its D2).
        key = f.create_dataset("key", shape=(1,), maxshape=(None,), chunks=(64,), dtype="i4")
        fin = f.create_dataset("finished", shape=(1,), maxshape=(None,), dtype="i4")
        f.swmr_mode = True
        ready.set()
        time.sleep(0.3)
        frame = np.zeros((64, 64), dtype="u2")
        flushed = []
        t_next = time.monotonic()
        for i in range(n):
            frame[:] = i
            data.resize(i + 1, axis=0)
            data[i] = frame
            data.flush()
            key.resize(max(i + 1, 1), axis=0)
            key[i] = i + 1
            key.flush()
            flushed.append(time.time())
            t_next += 1.0 / rate_hz
            time.sleep(max(0.0, t_next - time.monotonic()))
        fin[0] = 1
        fin.flush()
        out.put(flushed)


def follow(impl, timeout, n, rate_hz):
    path = os.path.join(tempfile.mkdtemp(), "live.h5")
    ready, out = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=writer, args=(path, n, rate_hz, ready, out))
    p.start()
    assert ready.wait(60)
    seen = {}
    with h5py.File(path, "r", swmr=True) as f:
        if impl == "ringcast":
            from ringcast.swmr import DataSource
        else:
            from swmr_tools import DataSource
        ds = DataSource(
            [f["key"]], {"data": f["data"]}, timeout=timeout, finished_dataset=f["finished"]
        )
        for frames in ds:
            seen[int(frames.index)] = time.time()
            if int(np.asarray(frames["data"]).ravel()[0]) != int(frames.index):
                raise SystemExit(f"{impl}: frame {frames.index} has wrong data")
    flushed = out.get(timeout=120)
    p.join(60)
    os.unlink(path)
    if sorted(seen) != list(range(n)):
        raise SystemExit(f"{impl}: got {len(seen)} of {n} frames")
    lat = np.array([seen[i] - flushed[i] for i in range(n)]) * 1000
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def poll_cost(impl, points=1_000_000, polls=20):
    path = os.path.join(tempfile.mkdtemp(), "keys.h5")
    with h5py.File(path, "w", libver="latest") as f:
        for name in ("k1", "k2"):
            k = f.create_dataset(
                name, shape=(points,), maxshape=(None,), chunks=(16384,), dtype="i4"
            )
            k[: points // 2] = 1
    with h5py.File(path, "r", swmr=True) as f:
        keys = [f["k1"], f["k2"]]
        if impl == "ringcast":
            from ringcast.swmr import KeyFollower

            kf = KeyFollower(keys, timeout=0)
            kf.refresh()  # the first poll reads the written prefix once
            poll = kf.refresh
        else:
            from swmr_tools import KeyFollower

            kf = KeyFollower(keys, timeout=0)
            kf._is_next()
            poll = kf._is_next
        t0 = time.process_time()
        for _ in range(polls):
            poll()
        cpu = (time.process_time() - t0) / polls
        if kf.current_max != points // 2 - 1:
            raise SystemExit(f"{impl}: wrong readiness {kf.current_max}")
    os.unlink(path)
    return cpu * 1000


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        import blosc  # noqa: F401
    except ImportError:
        sys.modules["blosc"] = types.ModuleType("blosc")  # swmr_tools imports it unconditionally
    try:
        import swmr_tools  # noqa: F401

        impls = ["ringcast", "swmr_tools"]
    except ImportError as e:
        print(f"swmr_tools not installed ({e}): ringcast only", file=sys.stderr)
        impls = ["ringcast"]
    n, rate = (20, 20.0) if args.quick else (60, 20.0)
    records = []
    for impl in impls:
        cost = poll_cost(impl, polls=5 if args.quick else 20)
        for timeout in (10, 20):
            p50, p99 = follow(impl, timeout, n, rate)
            rec = {
                "impl": impl,
                "timeout_s": timeout,
                "latency_ms_p50": round(p50, 2),
                "latency_ms_p99": round(p99, 2),
                "poll_cpu_ms": round(cost, 3),
            }
            records.append(rec)
            if not args.json:
                print(
                    f"{impl:>10} timeout {timeout:>2} s: latency p50 {p50:8.1f} ms"
                    f"  p99 {p99:8.1f} ms;  poll of 2 x 10^6-point keys: {cost:7.3f} ms CPU",
                    flush=True,
                )
    if args.json:
        print(json.dumps(records, indent=1))
    elif len(impls) == 2:
        by = {(r["impl"], r["timeout_s"]): r for r in records}
        for t in (10, 20):
            a, b = by[("ringcast", t)], by[("swmr_tools", t)]
            print(
                f"timeout {t}: p50 swmr_tools/ringcast = "
                f"{b['latency_ms_p50'] / a['latency_ms_p50']:.0f}x, "
                f"poll cost ringcast/swmr_tools = {a['poll_cpu_ms'] / b['poll_cpu_ms']:.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
