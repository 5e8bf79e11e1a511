"""Pipeline throughput: items/s through a 3-step pipeline of trivial steps.

Implementations: ringcast.pipeline, paipa 0.3.3 (run with ``Thread.isAlive`` aliased to
``is_alive``, which it needs on Python >= 3.9), mpipe (one process per stage), and pypeln
(``pypeln.thread``, and ``pypeln.process``). Each step returns its item; the last one records
it, and every run checks that every item came out exactly once.

Cases:
  3x1 put_all       3 steps x 1 worker, fed with put_all()+finish() (peers: their usual feed)
  3x1 put_iterable  3 steps x 1 worker, fed lazily from a generator (ringcast, paipa)
  3x4 put_all       3 steps x 4 workers (ringcast, paipa)
  3x1 procstep      3 steps x 1 worker, the middle one a process step (ringcast; the cost
                    of the hand-over to a worker process and back)

CPU-bound cases: a pure-Python loop of about 2 ms per item (``cpu_work``) as one step of a
2-step pipeline, with ``procstep`` and 1 worker process, with 2 worker processes, and as a
thread step (``funcstep``) with 2 threads (no gain: the GIL). For reference, the same items
through ``multiprocessing.Pool(1)`` and ``Pool(2)`` (``imap_unordered``, spawn): what the
machine gives two processes at that moment. The runs alternate; a speed-up is the best
1-worker time over the best 2-worker time: for the whole run, the start of the worker
processes included ("cpu x2 vs x1"), and from the first result to the last ("cpu x2 vs x1
steady"). ``--json`` adds these as ``{"impl", "case", "speedup"}`` records.

    pip install paipa mpipe pypeln   # the peers; any that is missing or fails is skipped
    python benches/pipeline.py           # about 100 s
    python benches/pipeline.py --quick   # about 15 s (too short for steady figures)
    python benches/pipeline.py --cpu-only  # only the CPU-bound cases, about 60 s
    python benches/pipeline.py --json    # [{"impl", "case", "items_per_s"}, ...]

Run it as a script (process steps start their workers with "spawn", which imports this file
again in each worker as ``__mp_main__``).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time


def trivial(x):
    return x


#: Loop length of cpu_work: about 2 ms per item on the 2-core test machine.
CPU_LOOP = 40_000


def cpu_work(n):
    """CPU-bound pure Python: holds the GIL all along."""
    s = 0
    for i in range(n):
        s += i * i % 7
    return s


class Failed(Exception):
    """A run delivered the wrong items."""


def check(impl, case, out, n):
    if len(out) != n or collections.Counter(out) != collections.Counter(range(n)):
        missing = n - len(set(out))
        raise Failed(f"{impl} {case}: {len(out)} items out of {n} ({missing} missing)")


# -- ringcast and paipa (same API) ----------------------------------------------------------------


def run_paipa_like(mod, case, n):
    out = []

    def record(x):
        out.append(x)
        return x

    workers = 4 if case.startswith("3x4") else 1
    middle = mod.procstep(trivial) if "procstep" in case else mod.funcstep(trivial)
    steps = [
        (mod.funcstep(trivial), workers),
        (middle, workers),
        (mod.funcstep(record), workers),
    ]
    p = mod.Pipeline(steps, quiet=True)
    t0 = time.perf_counter()
    if "put_iterable" in case:
        p.put_iterable(iter(range(n)))
    else:
        p.put_all(range(n))
        p.finish()
    p.run()
    dt = time.perf_counter() - t0
    check(mod.__name__, case, out, n)
    if p.count != n:
        raise Failed(f"{mod.__name__} {case}: count {p.count} != {n}")
    return dt


def ringcast_impl():
    from ringcast import pipeline

    return lambda case, n: run_paipa_like(pipeline, case, n)


def paipa_impl():
    if not hasattr(threading.Thread, "isAlive"):
        threading.Thread.isAlive = threading.Thread.is_alive  # paipa needs it (removed in 3.9)
    import paipa

    return lambda case, n: run_paipa_like(paipa, case, n)


# -- mpipe ----------------------------------------------------------------------------------------


def mpipe_impl():
    import mpipe

    def run(case, n):
        s1, s2, s3 = (mpipe.OrderedStage(trivial, 1) for _ in range(3))
        s1.link(s2)
        s2.link(s3)
        p = mpipe.Pipeline(s1)

        def feed():
            for i in range(n):
                p.put(i)
            p.put(None)

        t0 = time.perf_counter()
        # Results must be read while feeding: mpipe deadlocks when its pipes fill up.
        feeder = threading.Thread(target=feed)
        feeder.start()
        out = list(p.results())
        feeder.join()
        dt = time.perf_counter() - t0
        check("mpipe", case, out, n)
        return dt

    return run


# -- pypeln ---------------------------------------------------------------------------------------


def pypeln_impl(kind):
    def make():
        import pypeln

        mod = getattr(pypeln, kind)

        def run(case, n):
            t0 = time.perf_counter()
            stage = mod.map(trivial, range(n), workers=1, maxsize=64)
            stage = mod.map(trivial, stage, workers=1, maxsize=64)
            stage = mod.map(trivial, stage, workers=1, maxsize=64)
            out = list(stage)
            dt = time.perf_counter() - t0
            check(f"pypeln.{kind}", case, out, n)
            return dt

        return run

    return make


# (impl, factory, {case: items}); processes first, before any thread of this process exists.
IMPLS = [
    ("mpipe", mpipe_impl, {"3x1 put_all": 50_000}),
    ("pypeln.process", pypeln_impl("process"), {"3x1 put_all": 5_000}),
    ("pypeln.thread", pypeln_impl("thread"), {"3x1 put_all": 50_000}),
    (
        "paipa",
        paipa_impl,
        {"3x1 put_all": 8_000, "3x1 put_iterable": 8_000, "3x4 put_all": 8_000},
    ),
    (
        "ringcast",
        ringcast_impl,
        {
            "3x1 put_all": 200_000,
            "3x1 put_iterable": 200_000,
            "3x4 put_all": 200_000,
            "3x1 procstep": 50_000,
        },
    ),
]


# -- CPU-bound step: process workers vs one worker ------------------------------------------------


def run_cpu(kind, workers, n):
    """Seconds for the whole run, and from the first result to the last."""
    from ringcast import pipeline

    out = []
    perf = time.perf_counter

    def record(r):
        out.append((perf(), r))

    make = pipeline.procstep if kind == "procstep" else pipeline.funcstep
    p = pipeline.Pipeline([(make(cpu_work), workers), (pipeline.funcstep(record), 1)])
    t0 = perf()
    p.put_all([CPU_LOOP] * n)
    p.finish()
    p.run()
    dt = perf() - t0
    if len(out) != n or {r for _, r in out} != {cpu_work(CPU_LOOP)}:
        raise Failed(f"ringcast cpu {kind} x{workers}: {len(out)} results out of {n}")
    return dt, out[-1][0] - out[0][0]


def run_pool(workers, n):
    import multiprocessing

    perf = time.perf_counter
    t0 = perf()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        stamps = [perf() for _ in pool.imap_unordered(cpu_work, [CPU_LOOP] * n)]
    dt = perf() - t0
    if len(stamps) != n:
        raise Failed(f"Pool({workers}): {len(stamps)} results out of {n}")
    return dt, stamps[-1] - stamps[0]


def cpu_records(repeat, n, log):
    t0 = time.perf_counter()
    cpu_work(CPU_LOOP)
    per_item = time.perf_counter() - t0
    print(f"cpu_work: {per_item * 1000:.2f} ms per item in this process", file=log)
    runs = [
        ("ringcast", "procstep", 1, lambda: run_cpu("procstep", 1, n)),
        ("ringcast", "procstep", 2, lambda: run_cpu("procstep", 2, n)),
        ("multiprocessing.Pool", "pool", 1, lambda: run_pool(1, n)),
        ("multiprocessing.Pool", "pool", 2, lambda: run_pool(2, n)),
    ]
    best = {}  # (impl, kind, workers) -> [whole run, first to last result], best of each
    for _ in range(repeat):  # alternate, so that a slow spell of the machine hits all
        for impl, kind, workers, run in runs:
            dt, steady = run()
            print(f"  {impl} cpu {kind} x{workers}: {dt:.2f} s ({steady:.2f} s)", file=log)
            b = best.setdefault((impl, kind, workers), [dt, steady])
            b[0], b[1] = min(b[0], dt), min(b[1], steady)
    best[("ringcast", "funcstep", 2)] = list(run_cpu("funcstep", 2, n))  # once: no gain
    records = [
        {"impl": impl, "case": f"cpu {kind} x{workers}", "items_per_s": round(n / dt, 1)}
        for (impl, kind, workers), (dt, _) in best.items()
    ]
    for impl, kind in (("ringcast", "procstep"), ("multiprocessing.Pool", "pool")):
        one, two = best[(impl, kind, 1)], best[(impl, kind, 2)]
        records.append({"impl": impl, "case": "cpu x2 vs x1", "speedup": round(one[0] / two[0], 2)})
        records.append(
            {"impl": impl, "case": "cpu x2 vs x1 steady", "speedup": round(one[1] / two[1], 2)}
        )
    return records


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", action="store_true", help="print the records as JSON")
    ap.add_argument("--quick", action="store_true", help="fewer items, one repetition")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (best is kept)")
    ap.add_argument("--cpu-only", action="store_true", help="only the CPU-bound cases")
    args = ap.parse_args(argv)
    repeat = 1 if args.quick else max(1, args.repeat)
    scale = 0.25 if args.quick else 1.0
    log = sys.stderr if args.json else sys.stdout

    records = []
    for impl, factory, cases in [] if args.cpu_only else IMPLS:
        try:
            run = factory()
        except Exception as exc:  # not installed, or does not import on this Python
            print(f"skipping {impl}: {type(exc).__name__}: {exc}", file=log)
            continue
        for case, n in cases.items():
            n = max(1000, int(n * scale))
            try:
                best = min(run(case, n) for _ in range(repeat))
            except Failed:
                raise
            except Exception as exc:
                print(f"skipping {impl} {case}: {type(exc).__name__}: {exc}", file=log)
                continue
            records.append({"impl": impl, "case": case, "items_per_s": round(n / best)})
    records += cpu_records(max(repeat, 2), 500 if args.quick else 2000, log)

    if args.json:
        print(json.dumps(records, indent=1))
        return
    paipa = {r["case"]: r["items_per_s"] for r in records if r["impl"] == "paipa"}
    rates = [r for r in records if "items_per_s" in r]
    print(f"\n{'case':<20} {'impl':<20} {'items/s':>12} {'vs paipa':>9}")
    for r in sorted(rates, key=lambda r: (r["case"], -r["items_per_s"])):
        ratio = f"{r['items_per_s'] / paipa[r['case']]:.1f}x" if r["case"] in paipa else "-"
        print(f"{r['case']:<20} {r['impl']:<20} {r['items_per_s']:>12,} {ratio:>9}")
    for r in records:
        if "speedup" in r:
            print(f"{r['case']:<20} {r['impl']:<20} {'speed-up':>12} {r['speedup']:>8.2f}x")
    print("every run: every item came out exactly once")


if __name__ == "__main__":
    main()
