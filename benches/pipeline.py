"""Pipeline throughput: items/s through a 3-step pipeline of trivial steps.

Implementations: ringcast.pipeline, paipa 0.3.3 (run with ``Thread.isAlive`` aliased to
``is_alive``, which it needs on Python >= 3.9), mpipe (one process per stage), and pypeln
(``pypeln.thread``, and ``pypeln.process``). Each step returns its item; the last one records
it, and every run checks that every item came out exactly once.

Cases:
  3x1 put_all       3 steps x 1 worker, fed with put_all()+finish() (peers: their usual feed)
  3x1 put_iterable  3 steps x 1 worker, fed lazily from a generator (ringcast, paipa)
  3x4 put_all       3 steps x 4 workers (ringcast, paipa)

    pip install paipa mpipe pypeln   # the peers; any that is missing or fails is skipped
    python benches/pipeline.py           # about 40 s
    python benches/pipeline.py --quick   # about 10 s
    python benches/pipeline.py --json    # [{"impl", "case", "items_per_s"}, ...]
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
    steps = [
        (mod.funcstep(trivial), workers),
        (mod.funcstep(trivial), workers),
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
        {"3x1 put_all": 200_000, "3x1 put_iterable": 200_000, "3x4 put_all": 200_000},
    ),
]


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", action="store_true", help="print the records as JSON")
    ap.add_argument("--quick", action="store_true", help="fewer items, one repetition")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (best is kept)")
    args = ap.parse_args(argv)
    repeat = 1 if args.quick else max(1, args.repeat)
    scale = 0.25 if args.quick else 1.0
    log = sys.stderr if args.json else sys.stdout

    records = []
    for impl, factory, cases in IMPLS:
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

    if args.json:
        print(json.dumps(records, indent=1))
        return
    paipa = {r["case"]: r["items_per_s"] for r in records if r["impl"] == "paipa"}
    print(f"\n{'case':<18} {'impl':<16} {'items/s':>12} {'vs paipa':>9}")
    for r in sorted(records, key=lambda r: (r["case"], -r["items_per_s"])):
        ratio = f"{r['items_per_s'] / paipa[r['case']]:.1f}x" if r["case"] in paipa else "-"
        print(f"{r['case']:<18} {r['impl']:<16} {r['items_per_s']:>12,} {ratio:>9}")
    print("every run: every item came out exactly once")


if __name__ == "__main__":
    main()
