"""The ``ringcast`` command: ``ls``, ``stats``, ``follow``, ``gc`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import struct
import sys
import time
from collections.abc import Mapping
from typing import Any, Optional

from . import BroadcastQueue, QueueShutDown, RingcastError, gc, segments

#: How long the demos wait for their processes to start, and a demo consumer for a frame.
DEMO_START_TIMEOUT = 60.0
#: How long the beamline demo's follower waits for the detector's next frame.
DEMO_FRAME_TIMEOUT = 10.0
#: How long the demos wait for each process's results once the queue is shut down.
DEMO_RESULT_TIMEOUT = 120.0
#: How long the demos wait for each process to exit.
DEMO_JOIN_TIMEOUT = 30.0
#: The beamline demo's live view takes this long to show a frame (so it lags and skips).
DEMO_DISPLAY_SECONDS = 0.02


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_ls(args: argparse.Namespace) -> int:
    """List ringcast segments with kind, size and members alive/dead."""
    rows = segments()
    if not rows:
        print("no ringcast segments")
        return 0
    print(f"{'NAME':<32} {'KIND':<10} {'SIZE':>10} {'ALIVE':>6} {'DEAD':>5}  STALE")
    for r in rows:
        print(
            f"{r['name']:<32} {r['kind']:<10} {_fmt_bytes(r['size']):>10} "
            f"{r['members_alive']:>6} {r['members_dead']:>5}  {'yes' if r['stale'] else 'no'}"
        )
    return 0


def render_stats(st: Mapping[str, Any], prev: Optional[Mapping[str, Any]], dt: float) -> str:
    """A text view of ``BroadcastQueue.stats()``; rates from the previous snapshot."""
    rate = ""
    if prev is not None and dt > 0:
        rate = f"  {(st['write_seq'] - prev['write_seq']) / dt:,.0f} msgs/s"
    lines = [
        f"queue {st['name']}: {st['write_seq']:,} messages sent{rate}; "
        f"{_fmt_bytes(st['used_bytes'])} of {_fmt_bytes(st['capacity'])} in use"
        + ("; SHUT DOWN" if st["shutdown"] else ""),
        f"  overruns {st['overruns']:,}  full {st['full_events']:,} "
        f"(writers blocked {st['send_blocked_s']:.3f} s)  receive waits {st['recv_waits']:,} "
        f"({st['recv_blocked_s']:.3f} s)  redelivered {st['redelivered']:,}  "
        f"claims lost {st['claims_lost']:,}  reaped {st['reaped']:,}  "
        f"lock recoveries {st['lock_recoveries']:,}",
    ]
    for g, gs in sorted(st["groups"].items()):
        lines.append(
            f"  group {g}: {gs['members']} member(s), lag {gs['lag_messages']:,} msgs "
            f"({_fmt_bytes(gs['lag_bytes'])}), orphaned claims {gs['orphaned_claims']}"
        )
    lines.append(
        f"  {'SLOT':>4} {'KIND':<12} {'PID':>7} {'NAME':<20} {'LAG':>9} {'RECEIVED':>11} "
        f"{'SENT':>11} {'MISSED':>9} {'WAITS':>8} {'BLOCKED':>8}  NOTES"
    )
    for m in st["members"]:
        if m["kind"] == "group":
            continue
        notes = []
        if m["lossy"]:
            notes.append("lossy")
        if m["group"]:
            notes.append(f"group={m['group']}")
        if m["pinned"] is not None:
            notes.append("holds a lease/claim")
        if m["orphan"]:
            notes.append("dead, claim to redeliver")
        elif not m["alive"]:
            notes.append("DEAD")
        lag = f"{m['lag_messages']:,}" if m["kind"] == "reader" else "-"
        lines.append(
            f"  {m['slot']:>4} {m['kind']:<12} {m['pid']:>7} {m['name'][:20]:<20} {lag:>9} "
            f"{m['received']:>11,} {m['sent']:>11,} {m['missed']:>9,} {m['waits']:>8,} "
            f"{m['blocked_s']:>7.2f}s  {' '.join(notes)}"
        )
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace) -> int:
    """Show a queue's figures, refreshing live until Ctrl-C (or ``--count`` times)."""
    try:
        q = BroadcastQueue(args.name, create=False, sender="ringcast-stats")
    except RingcastError as e:
        print(f"ringcast stats: {e}", file=sys.stderr)
        return 1
    live = sys.stdout.isatty() and not args.json and args.count != 1
    prev: Optional[Mapping[str, Any]] = None
    t_prev = time.monotonic()
    n = 0
    try:
        with q:
            while True:
                st = q.stats()
                now = time.monotonic()
                if args.json:
                    print(json.dumps(st), flush=True)
                else:
                    text = render_stats(st, prev, now - t_prev)
                    print(("\x1b[H\x1b[2J" if live else "") + text, flush=True)
                prev, t_prev = st, now
                n += 1
                if args.count and n >= args.count:
                    return 0
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _split_data(specs: list[str]) -> dict[str, str]:
    """``--data`` values: ``PATH`` (named by its last component) or ``NAME=PATH``."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = spec.rstrip("/").rsplit("/", 1)[-1], spec
        if name in out:
            raise ValueError(f"two --data datasets are named {name!r}: use NAME=PATH")
        out[name] = path
    return out


def cmd_follow(args: argparse.Namespace) -> int:
    """Follow a live SWMR file and fan its frames out into a BroadcastQueue."""
    import h5py

    from .swmr import DataSource, FanOutStats, fan_out

    try:
        data = _split_data(args.data)
        f = h5py.File(args.file, "r", libver="latest", swmr=True)
    except (OSError, ValueError) as e:
        print(f"ringcast follow: cannot open {args.file}: {e}", file=sys.stderr)
        return 1
    with f:
        try:
            keys = [f[k] for k in args.key]
            datasets = {name: f[path] for name, path in data.items()}
            finished = f[args.finished] if args.finished else None
        except KeyError as e:
            print(f"ringcast follow: {args.file}: no dataset {e}", file=sys.stderr)
            return 1
        name = args.queue or "follow-" + os.path.basename(args.file).replace(".", "-")
        q = BroadcastQueue(name, capacity=args.capacity, sender="ringcast-follow")
        source = DataSource(keys, datasets, timeout=args.timeout, finished_dataset=finished)
        last_print = 0.0

        def progress(st: FanOutStats) -> None:
            nonlocal last_print
            now = time.monotonic()
            if args.quiet or now - last_print < 0.5:
                return
            last_print = now
            qs = q.stats()
            lags = [m["lag_messages"] for m in qs["members"] if m["kind"] == "reader"]
            lags += [g["lag_messages"] for g in qs["groups"].values()]
            print(
                f"\rfollow {args.file}: {st.points} points, {st.frames} frames "
                f"({_fmt_bytes(st.bytes)}), {st.rate:,.1f} points/s, "
                f"{st.behind} point(s) behind the keys; queue {name}: "
                f"{qs['readers_alive']} reader(s), slowest lag {max(lags, default=0)} msgs, "
                f"overruns {qs['overruns']}",
                end="",
                file=sys.stderr,
                flush=True,
            )

        with q:
            if args.wait_readers:
                q.wait_for_readers(args.wait_readers, timeout=args.timeout)
            try:
                st = fan_out(source, q, on_point=progress)
            except KeyboardInterrupt:
                print("\ninterrupted", file=sys.stderr)
                return 130
            finally:
                if not args.keep_open:
                    q.shutdown()
        end = "finished flag set" if st.finished else "timed out" if st.timed_out else "stopped"
        if not args.quiet:
            print(file=sys.stderr)
        print(
            f"{args.file}: {st.points} points, {st.frames} frames ({_fmt_bytes(st.bytes)}) "
            f"published to {name} in {st.elapsed:.2f} s ({st.rate:,.1f} points/s); {end}"
        )
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove segments whose members are all dead."""
    removed = gc()
    for name in removed:
        print(f"removed {name}")
    print(f"{len(removed)} stale segment(s) removed")
    # gc never removes another user's segment, not even as root (docs/security.md).
    others = [s for s in segments() if s["stale"] and s["owner"] != os.geteuid()]
    for s in others:
        print(f"left {s['name']}: stale, but owned by uid {s['owner']} (its owner's gc removes it)")
    return 0


def _demo_reader(q: BroadcastQueue, size: int, results: Any) -> None:
    r = q.reader(name=f"reader-{mp.current_process().name}")
    expected = 0
    ok = True
    t0 = None
    try:
        for msg in r:
            body = msg.body
            if t0 is None:
                t0 = time.perf_counter()
            (n,) = struct.unpack_from("<Q", body)
            if n != expected or len(body) != size or body[8:] != bytes([n & 0xFF]) * (size - 8):
                ok = False
            expected += 1
    except QueueShutDown:
        pass
    elapsed = time.perf_counter() - (t0 or time.perf_counter())
    r.close()
    q.close()
    results.put((expected, ok, elapsed))


def _beamline_consumer(
    qname: str, role: str, shape: tuple[int, ...], ready: Any, results: Any
) -> None:
    import numpy as np

    from ._detector import expected_frame
    from .swmr import frame_info

    q = BroadcastQueue(qname, create=False)
    r = q.reader(name=role, lossy=role == "live-view")
    ready.put(role)
    indices: list[int] = []
    ok = True
    total = 0
    try:
        while True:
            if role == "live-view":
                msg = r.recv(timeout=DEMO_START_TIMEOUT)  # a copy: lossy readers cannot lease
                info, frame = frame_info(msg), msg.array()
                ok &= bool(
                    np.array_equal(frame.reshape(shape), expected_frame(info["index"], shape))
                )
                indices.append(info["index"])
                time.sleep(DEMO_DISPLAY_SECONDS)  # a slow display
            else:
                with r.lease(timeout=DEMO_START_TIMEOUT) as m:  # zero-copy
                    info, frame = frame_info(m), m.array()
                    want = expected_frame(info["index"], shape)
                    ok &= bool(np.array_equal(frame.reshape(shape), want))
                    total += int(frame.sum(dtype=np.uint64))
                    indices.append(info["index"])
                    del frame
    except QueueShutDown:
        pass
    results.put((role, indices, r.missed, ok))
    r.close()
    q.close()


def demo_beamline(args: argparse.Namespace) -> int:
    """Simulated detector -> SWMR file -> ringcast follower -> consumer processes."""
    import tempfile

    import h5py

    from . import _detector
    from .swmr import DataSource, fan_out

    ctx = mp.get_context(args.start_method)
    n, shape, rate = args.frames, (256, 256), args.frame_rate
    roles = ["integrator-1", "integrator-2", "live-view"]
    with tempfile.TemporaryDirectory(prefix="ringcast-demo-") as tmp:
        path = os.path.join(tmp, "scan.h5")
        ready_file = ctx.Event()
        det = ctx.Process(target=_detector.run, args=(path, n, shape, rate, ready_file))
        with BroadcastQueue(None, create=True, capacity=4 << 20, sender="follower") as q:
            ready, results = ctx.Queue(), ctx.Queue()
            procs = [
                ctx.Process(target=_beamline_consumer, args=(q.name, role, shape, ready, results))
                for role in roles
            ]
            for p in procs:
                p.start()
            for _ in procs:
                ready.get(timeout=DEMO_START_TIMEOUT)
            det.start()
            if not ready_file.wait(DEMO_START_TIMEOUT):
                print("FAILED: the simulated detector did not start", file=sys.stderr)
                return 1
            with h5py.File(path, "r", libver="latest", swmr=True) as f:
                src = DataSource(
                    [f["entry/key"]],
                    {"data": f["entry/data"]},
                    timeout=DEMO_FRAME_TIMEOUT,
                    finished_dataset=f["entry/finished"],
                )
                st = fan_out(src, q)
            q.shutdown()
            got = [results.get(timeout=DEMO_RESULT_TIMEOUT) for _ in procs]
            for p in [*procs, det]:
                p.join(timeout=DEMO_JOIN_TIMEOUT)
    print(
        f"ringcast demo (beamline): a simulated detector wrote {n} frames of {shape[0]}x"
        f"{shape[1]} uint16 at {rate:g} Hz to an HDF5 file in SWMR mode;"
    )
    print(
        f"  ringcast followed the live file and fanned {st.points} frames out to "
        f"{len(procs)} processes through shared memory ({st.rate:,.0f} frames/s, "
        f"finished flag {'seen' if st.finished else 'NOT seen'})"
    )
    bad = int(st.points != n or not st.finished)
    for role, indices, missed, ok in sorted(got):
        if role == "live-view":
            good = ok and indices == sorted(indices) and len(indices) + missed == n
            what = f"{len(indices)} frames shown, {missed} skipped while it was busy (lossy)"
        else:
            good = ok and indices == list(range(n))
            what = f"{len(indices)} frames, every one, in order (zero-copy leases)"
        bad += not good
        print(f"  {role}: {what}, frames equal to what was written: {'ok' if good else 'MISMATCH'}")
    if bad:
        sys.stdout.flush()
        print("FAILED: the beamline demo lost or damaged frames", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The queue demo, then the beamline demo (``--only`` picks one)."""
    code = 0
    if args.only in (None, "queue"):
        code |= demo_queue(args)
    if args.only in (None, "beamline"):
        if args.only is None:
            print()
        code |= demo_beamline(args)
    return code


def demo_queue(args: argparse.Namespace) -> int:
    """One writer process broadcasting to several reader processes."""
    size = max(args.size, 8)
    ctx = mp.get_context(args.start_method)
    results = ctx.Queue()
    with BroadcastQueue(None, create=True, capacity=args.capacity, sender="writer") as q:
        procs = [
            ctx.Process(target=_demo_reader, args=(q, size, results), name=str(i))
            for i in range(args.readers)
        ]
        for p in procs:
            p.start()
        q.wait_for_readers(args.readers, timeout=DEMO_START_TIMEOUT)
        bodies = [bytearray(bytes([i]) * size) for i in range(256)]
        send = q.send
        t0 = time.perf_counter()
        for n in range(args.messages):
            body = bodies[n & 0xFF]
            struct.pack_into("<Q", body, 0, n)
            send(body)
        sent_s = time.perf_counter() - t0
        q.shutdown()
        got = [results.get(timeout=DEMO_RESULT_TIMEOUT) for _ in procs]
        for p in procs:
            p.join(timeout=DEMO_JOIN_TIMEOUT)
        total_s = time.perf_counter() - t0
    rate = args.messages / total_s
    print(
        f"ringcast demo: 1 writer -> {args.readers} reader processes ({args.start_method}), "
        f"{args.messages} messages of {size} B"
    )
    delivered = rate * size * args.readers / 1e6
    print(
        f"  writer sent {args.messages / sent_s:,.0f} msgs/s; "
        f"all readers done at {rate:,.0f} msgs/s ({delivered:,.1f} MB/s delivered)"
    )
    bad = 0
    for i, (count, ok, _elapsed) in enumerate(got):
        status = "ok" if ok and count == args.messages else "MISMATCH"
        bad += status != "ok"
        print(f"  reader {i}: {count} messages, in order and intact: {status}")
    if bad:
        print(f"FAILED: {bad} reader(s) did not get every message", file=sys.stderr)
        return 1
    print("every reader got every message, in order, intact")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``ringcast`` command."""
    p = argparse.ArgumentParser(prog="ringcast", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ls", help="list ringcast segments").set_defaults(func=cmd_ls)
    st = sub.add_parser("stats", help="a queue's figures, refreshing live")
    st.add_argument("name", help="the queue's segment name (see ringcast ls)")
    st.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    st.add_argument("--count", type=int, default=0, help="stop after N snapshots (0: never)")
    st.add_argument("--json", action="store_true", help="one JSON object per snapshot")
    st.set_defaults(func=cmd_stats)
    fo = sub.add_parser(
        "follow", help="follow a live SWMR HDF5 file and fan its frames out to a queue"
    )
    fo.add_argument("file", help="the HDF5 file (being written in SWMR mode)")
    fo.add_argument("--key", action="append", required=True, help="a key dataset (repeatable)")
    fo.add_argument(
        "--data", action="append", required=True, help="a data dataset, PATH or NAME=PATH"
    )
    fo.add_argument("--finished", help="the finished-flag dataset")
    fo.add_argument("--timeout", type=float, default=10.0, help="seconds without progress")
    fo.add_argument("--queue", help="queue name (default follow-<file name>)")
    fo.add_argument("--capacity", type=int, default=64 << 20, help="queue capacity in bytes")
    fo.add_argument("--wait-readers", type=int, default=0, help="wait for N readers first")
    fo.add_argument("--keep-open", action="store_true", help="do not shut the queue down")
    fo.add_argument("--quiet", action="store_true", help="no progress line")
    fo.set_defaults(func=cmd_follow)
    sub.add_parser("gc", help="remove segments whose members are all dead").set_defaults(
        func=cmd_gc
    )
    d = sub.add_parser(
        "demo",
        help="a writer broadcasting to reader processes; a live SWMR file fanned out to them",
    )
    d.add_argument("--readers", type=int, default=3)
    d.add_argument("--messages", type=int, default=300_000)
    d.add_argument("--size", type=int, default=64, help="message size in bytes (>= 8)")
    d.add_argument("--capacity", type=int, default=4 << 20)
    d.add_argument("--start-method", default="spawn", choices=mp.get_all_start_methods())
    d.add_argument("--only", choices=["queue", "beamline"], help="run one part only")
    d.add_argument("--frames", type=int, default=400, help="beamline: frames to write")
    d.add_argument("--frame-rate", type=float, default=200.0, help="beamline: frames/s")
    d.set_defaults(func=cmd_demo)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
