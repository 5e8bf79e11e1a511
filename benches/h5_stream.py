"""HDF5 streaming throughput: ringcast.h5 against multitables, h5py, PyTables and raw reads.

Every implementation reads the whole of one float32 (N, 1024) dataset, in blocks of 256 KiB
(64 rows) and 4 MiB (1024 rows), in the same invocation on the same machine, with the page
cache warm. Three files (made once, kept in a cache directory, reused while valid):

* contiguous  1 GiB, contiguous storage                      (--quick: 256 MiB)
* chunked     1 GiB, chunks of (64, 1024), no filter          (--quick: 256 MiB)
* gzip        256 MiB, chunks of (64, 1024), gzip level 4     (--quick: 64 MiB)

The data are smooth values plus noise, in steps of 1/8 (gzip halves them, and decoding
costs real time); columns 0, 512 and 1023 are functions of the row number. Every block of
every run is checked on those three columns of every row (which rows it holds, that it is
one of the blocks of the partition, that no block comes twice and none is missing): a
wrong, repeated or missing block fails the run instead of printing a figure.

Implementations:

* ringcast-native  ringcast.h5 Streamer.get_queue(native=True): Rust threads, pread and
                   deflate outside the HDF5 lock (skipped where the build or the layout
                   does not allow it)
* ringcast-h5py    ringcast.h5 Streamer.get_queue(native=False): h5py worker processes
                   reading with read_direct into shared-memory slots
* multitables      multitables 2.0.1 Streamer.get_queue (PyTables worker processes), run in
                   a child process with np.unicode_ = np.str_ (it does not import on
                   NumPy 2 otherwise) and, under wrapt >= 2, ReleasedResource.__getattr__
                   raising AttributeError for __wrapped* names; the shared memory it leaks
                   is removed by the bench
* h5py             one process, Dataset.read_direct into a reused buffer
* pytables         one process, Array.read(start, stop, out=) into a reused buffer
* readinto         the limit: one process, FileIO.readinto of the raw bytes of the
                   contiguous dataset into a reused buffer (contiguous layout only)

The queues use n_procs=2 (2 cores), ordered=False and the default read_ahead. GB/s is the
dataset's bytes over the time from get_queue (for the single-process readers: from opening
the file) until the last block was checked. first_block_ms is the time from get_queue (or
the open) to the first block in hand; for ringcast the Streamer's pool is warm (a first
queue of the same dataset ran before the timed one). Each case runs 3 times (1 with
--quick) in rounds that interleave the implementations; the best GB/s and the median first
block are kept. The printed report also gives the rate once streaming (from the first block
in hand to the last), which leaves out what get_queue costs before the first block.

    python benches/h5_stream.py            # full run, about 70 s (+20 s to make the files once)
    python benches/h5_stream.py --quick    # about 10 s (+10 s to make its files once)
    python benches/h5_stream.py --json     # only a JSON list of records on stdout
    python benches/h5_stream.py --impl ringcast-native --layout gzip --block 4194304 --repeat 5
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback

import numpy as np

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
ROW = 1024  # float32 per row
ROW_BYTES = 4 * ROW
CHUNK_ROWS = 64
GZIP_LEVEL = 4
BLOCKS = [256 * KiB, 4 * MiB]
LAYOUTS = ["contiguous", "chunked", "gzip"]
DATASET = "/data"
FORMAT = 1  # bump when the content of the files changes
CACHE_DIR = os.environ.get("RINGCAST_H5BENCH_DIR", "/tmp/ringcast-h5bench")
N_PROCS = 2
OP_TIMEOUT = 30.0  # s, every single wait for a block
CHILD_TIMEOUT = 300.0  # s, a whole multitables run in its child process

IMPL_ORDER = ["ringcast-native", "ringcast-h5py", "multitables", "h5py", "pytables", "readinto"]
RINGCAST = ["ringcast-native", "ringcast-h5py"]

#: columns that are functions of the row number, checked in every row of every block
DET_COLS = np.array([0, 512, 1023])


class BenchError(RuntimeError):
    """A run failed: a wrong, repeated or missing block, a dead child or a timeout."""


class NotAvailable(Exception):
    """This implementation cannot run this case here (the reason is the message)."""


# ---------------------------------------------------------------- data and checks


def det_columns(i):
    """The checked columns of rows ``i`` (int64 array): shape (len(i), 3), float32."""
    return np.stack([i, (i * 13) % 4093, (i * 7) % 1021], axis=1).astype(np.float32)


def make_rows(a, b):
    """Rows a..b of every file: smooth values plus noise in steps of 1/8, float32."""
    i = np.arange(a, b, dtype=np.int64)
    rng = np.random.default_rng(a)
    j = np.arange(ROW, dtype=np.float32)
    x = np.sin(j[None, :] / np.float32(37) + (i[:, None] / 301.0).astype(np.float32))
    x *= np.float32(100)
    x += rng.standard_normal((b - a, ROW), dtype=np.float32)
    x *= np.float32(8)
    np.round(x, out=x)
    x /= np.float32(8)
    x[:, DET_COLS] = det_columns(i)
    return x


class Checker:
    """Checks every block of one pass over an N-row dataset read in blocks of ``rows``."""

    def __init__(self, n, rows, expected):
        self.rows = rows
        self.exp = expected  # det_columns(arange(n)), computed once per file
        self.seen = np.zeros(n // rows, dtype=bool)

    def block(self, block, start=None):
        """Check one block; ``start``: the row it must begin at (None: any block)."""
        rows = self.rows
        if tuple(block.shape) != (rows, ROW):
            raise BenchError(f"block of shape {tuple(block.shape)}, expected {(rows, ROW)}")
        got = block[:, DET_COLS]  # reads 3 cache lines of every row
        a0 = float(got[0, 0])
        if not (0 <= a0 < len(self.exp)) or a0 % rows:
            raise BenchError(f"a block starts with row number {a0!r}, not a block boundary")
        a = int(a0)
        if start is not None and a != start:
            raise BenchError(f"expected the block at row {start}, got the one at row {a}")
        if not np.array_equal(got, self.exp[a : a + rows]):
            bad = np.argwhere(got != self.exp[a : a + rows])[0]
            raise BenchError(
                f"block at row {a}: row {a + bad[0]} column {DET_COLS[bad[1]]} holds "
                f"{got[tuple(bad)]!r}, expected {self.exp[a + bad[0], bad[1]]!r}"
            )
        k = a // rows
        if self.seen[k]:
            raise BenchError(f"the block at row {a} came twice")
        self.seen[k] = True

    def done(self):
        if not self.seen.all():
            missing = np.flatnonzero(~self.seen)
            raise BenchError(
                f"{len(missing)} of {len(self.seen)} blocks missing "
                f"(first at row {missing[0] * self.rows})"
            )


_expected = {}


def expected(n):
    if n not in _expected:
        _expected[n] = det_columns(np.arange(n, dtype=np.int64))
    return _expected[n]


# ---------------------------------------------------------------- files


def sizes(quick):
    """Rows of the uncompressed files and of the gzip file."""
    if quick:
        return 256 * MiB // ROW_BYTES, 64 * MiB // ROW_BYTES
    return 1 * GiB // ROW_BYTES, 256 * MiB // ROW_BYTES


def file_path(layout, n):
    return os.path.join(CACHE_DIR, f"{layout}-{n}.h5")


def _create_args(layout):
    if layout == "contiguous":
        return {}
    if layout == "chunked":
        return {"chunks": (CHUNK_ROWS, ROW)}
    return {"chunks": (CHUNK_ROWS, ROW), "compression": "gzip", "compression_opts": GZIP_LEVEL}


def file_valid(layout, path, n):
    """None if ``path`` is a complete bench file of this layout, else why not."""
    import h5py

    if not os.path.exists(path):
        return "missing"
    try:
        with h5py.File(path, "r") as f:
            ds = f[DATASET]
            if f.attrs.get("ringcast_bench_format") != FORMAT or not f.attrs.get("complete"):
                return "incomplete or of another format"
            if ds.shape != (n, ROW) or ds.dtype != np.float32:
                return f"dataset of shape {ds.shape} {ds.dtype}"
            if layout == "contiguous":
                if ds.chunks is not None or ds.id.get_offset() is None:
                    return "not contiguous (or not allocated)"
            elif ds.chunks != (CHUNK_ROWS, ROW) or ds.compression != (
                "gzip" if layout == "gzip" else None
            ):
                return f"chunks {ds.chunks}, compression {ds.compression}"
            for a in (0, n - CHUNK_ROWS):
                got = ds[a : a + CHUNK_ROWS][:, DET_COLS]
                if not np.array_equal(got, det_columns(np.arange(a, a + CHUNK_ROWS))):
                    return f"wrong content at row {a}"
    except Exception as e:  # unreadable: make it again
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def ensure_files(layouts, n, n_gz, note):
    """{layout: (path, rows)}; makes the missing or invalid files (all needed in one pass)."""
    import h5py

    want = {
        lay: (file_path(lay, n_gz if lay == "gzip" else n), n_gz if lay == "gzip" else n)
        for lay in layouts
    }
    todo = {}
    for lay, (path, rows) in want.items():
        why = file_valid(lay, path, rows)
        if why is not None:
            todo[lay] = (path, rows, why)
    if not todo:
        return want
    os.makedirs(CACHE_DIR, exist_ok=True)
    t0 = time.perf_counter()
    for lay, (path, rows, why) in todo.items():
        print(f"making {path} ({rows * ROW_BYTES // MiB} MiB, {lay}; {why})", file=note, flush=True)
    files = {}
    try:
        for lay, (path, rows, _) in todo.items():
            f = h5py.File(path + ".tmp", "w")
            f.create_dataset(DATASET, shape=(rows, ROW), dtype=np.float32, **_create_args(lay))
            files[lay] = f
        top = max(rows for _, rows, _ in todo.values())
        slab = 4096  # rows (16 MiB) made at a time, written to every file that has them
        for a in range(0, top, slab):
            b = min(a + slab, top)
            x = make_rows(a, b)
            for lay, f in files.items():
                rows = todo[lay][1]
                if a < rows:
                    f[DATASET][a : min(b, rows)] = x[: min(b, rows) - a]
        for lay, f in files.items():
            f.attrs["ringcast_bench_format"] = FORMAT
            f.attrs["complete"] = 1
            f.close()
            os.replace(todo[lay][0] + ".tmp", todo[lay][0])
    finally:
        for f in files.values():
            if f.id.valid:
                f.close()
        for path, _, _ in todo.values():
            if os.path.exists(path + ".tmp"):
                os.unlink(path + ".tmp")
    for lay, (path, rows, _) in todo.items():
        why = file_valid(lay, path, rows)
        if why is not None:
            raise BenchError(f"{path} is not valid right after making it: {why}")
    print(f"made in {time.perf_counter() - t0:.0f} s", file=note, flush=True)
    return want


def warm_page_cache(paths):
    """Read every file once, so that every run reads from the page cache."""
    buf = bytearray(16 * MiB)
    mv = memoryview(buf)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(mv):
                pass


# ---------------------------------------------------------------- single-process readers


def run_h5py(path, n, rows):
    import h5py

    buf = np.empty((rows, ROW), dtype=np.float32)
    chk = Checker(n, rows, expected(n))
    t0 = time.perf_counter()
    first = None
    with h5py.File(path, "r") as f:
        ds = f[DATASET]
        for a in range(0, n, rows):
            ds.read_direct(buf, np.s_[a : a + rows])
            if first is None:
                first = time.perf_counter()
            chk.block(buf, a)
    t1 = time.perf_counter()
    chk.done()
    return t1 - t0, first - t0


def run_pytables(path, n, rows):
    import tables

    buf = np.empty((rows, ROW), dtype=np.float32)
    chk = Checker(n, rows, expected(n))
    t0 = time.perf_counter()
    first = None
    with tables.open_file(path, "r") as f:
        node = f.get_node(DATASET)
        for a in range(0, n, rows):
            node.read(a, a + rows, out=buf)
            if first is None:
                first = time.perf_counter()
            chk.block(buf, a)
    t1 = time.perf_counter()
    chk.done()
    return t1 - t0, first - t0


def run_readinto(path, n, rows):
    import h5py

    with h5py.File(path, "r") as f:
        offset = f[DATASET].id.get_offset()
    buf = np.empty((rows, ROW), dtype=np.float32)
    mv = memoryview(buf).cast("B")
    want = rows * ROW_BYTES
    chk = Checker(n, rows, expected(n))
    t0 = time.perf_counter()
    first = None
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        for a in range(0, n, rows):
            got = fh.readinto(mv)
            if got != want:
                raise BenchError(f"readinto returned {got} bytes at row {a}, expected {want}")
            if first is None:
                first = time.perf_counter()
            chk.block(buf, a)
    t1 = time.perf_counter()
    chk.done()
    return t1 - t0, first - t0


# ---------------------------------------------------------------- ringcast


def native_supported():
    from ringcast.h5 import Streamer

    return "native" in inspect.signature(Streamer.get_queue).parameters


def run_ringcast(path, n, rows, native):
    """One pass through ringcast.h5 with a warm pool; ``native`` True or False."""
    from ringcast.h5 import QueueClosed, Streamer

    if not native_supported():
        if native:
            raise NotAvailable("this build's get_queue has no native parameter")
        kw = {}  # the h5py worker path is the only one
    else:
        kw = {"native": native}
    chk = Checker(n, rows, expected(n))
    s = Streamer(path)
    try:
        # warm up: a first queue of the same dataset starts the pool and opens the file in
        # the workers; a few blocks, then closed and drained
        try:
            q = s.get_queue(DATASET, n_procs=N_PROCS, block_size=rows, ordered=False, **kw)
        except Exception as e:
            if native:
                raise NotAvailable(f"get_queue(native=True): {type(e).__name__}: {e}") from None
            raise
        if getattr(q, "native", bool(native)) != bool(native):
            raise BenchError(f"get_queue(native={native}) made a queue with .native={q.native}")
        for k in range(4 * N_PROCS + 8):
            g = q.get(timeout=OP_TIMEOUT)
            if g is QueueClosed:
                break
            with g as block:
                block[0, 0]
            if k == 2 * N_PROCS:
                q.close()
        else:
            raise BenchError("the warm-up queue did not end after close()")
        q = g = block = None

        t0 = time.perf_counter()
        q = s.get_queue(DATASET, n_procs=N_PROCS, block_size=rows, ordered=False, **kw)
        first = None
        get = q.get
        while True:
            g = get(timeout=OP_TIMEOUT)
            if g is QueueClosed:
                break
            with g as block:
                if first is None:
                    first = time.perf_counter()
                chk.block(block)
        t1 = time.perf_counter()
        q = g = block = None
        chk.done()
        return t1 - t0, first - t0
    finally:
        s.close()


# ---------------------------------------------------------------- multitables (child process)

#: names multitables gives its shared memory: urlsafe base64 of 8 random bytes
MT_SHM = re.compile(r"^[A-Za-z0-9_-]{11}=$")


def _patch_for_multitables():
    """Make multitables 2.0.1 run on NumPy 2 (and on wrapt >= 2), in this process only."""
    if not hasattr(np, "unicode_"):
        np.unicode_ = np.str_  # msgpack_ext registers np.unicode_ at import
    import wrapt

    if int(wrapt.__version__.split(".")[0]) >= 2:
        # wrapt 2 reads __wrapped_setattr_fixups__ (and others) from the object that
        # replaces the released block; ReleasedResource raises for every name, so every
        # guard exit would fail: answer AttributeError for wrapt's own names
        from multitables import resource_wrapper as rw

        orig = rw.ReleasedResource.__getattr__

        def __getattr__(self, name):
            if name.startswith("__wrapped"):
                raise AttributeError(name)
            return orig(self, name)

        rw.ReleasedResource.__getattr__ = __getattr__


def child_multitables(path, n, rows):
    """Run in a child process: one multitables pass, result as one JSON line on stdout."""
    _patch_for_multitables()
    import multitables
    from multitables import shared_mem

    # multitables 2.0.1 never unlinks its shared memory (its close() drops the descriptor
    # before it unlinks): note every segment this process creates, and remove them after
    created = []
    init = shared_mem.SharedBuffer.__init__

    def recording_init(self, map_id, size_nbytes):
        init(self, map_id, size_nbytes)
        if map_id is None:
            created.append(self.name.decode().lstrip("/"))

    shared_mem.SharedBuffer.__init__ = recording_init
    chk = Checker(n, rows, expected(n))
    try:
        s = multitables.Streamer(path)
        t0 = time.perf_counter()
        q = s.get_queue(DATASET, n_procs=N_PROCS, block_size=rows, ordered=False)
        first = None
        while True:
            g = q.get()  # no timeout in multitables: the parent bounds the whole child
            if g is multitables.QueueClosed:
                break
            with g as block:
                if first is None:
                    first = time.perf_counter()
                chk.block(block)
        t1 = time.perf_counter()
        q.close()
        chk.done()
        del q, s, g, block
    finally:
        for name in created:
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except FileNotFoundError:
                pass
    print(json.dumps({"seconds": t1 - t0, "first_s": first - t0}), flush=True)


def _group_members(pgid):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            pids.append(int(d))
    return pids


def run_multitables(path, n, rows):
    cmd = [sys.executable, os.path.abspath(__file__), "--_child-multitables", path, str(n)]
    cmd.append(str(rows))
    before = set(os.listdir("/dev/shm"))
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        try:
            out, err = p.communicate(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate(timeout=10)
            raise BenchError(
                f"the multitables run did not end within {CHILD_TIMEOUT:.0f} s"
            ) from None
    finally:
        # its worker processes are in the child's session: none may outlive it
        if _group_members(p.pid):
            os.killpg(p.pid, signal.SIGKILL)
        if p.returncode != 0:
            # a failed child could not remove its segments: do it here (new names of
            # multitables' form that appeared while it ran)
            for name in set(os.listdir("/dev/shm")) - before:
                if MT_SHM.match(name):
                    try:
                        os.unlink(os.path.join("/dev/shm", name))
                    except FileNotFoundError:
                        pass
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if p.returncode != 0 or not lines:
        tail = "\n".join(err.strip().splitlines()[-6:])
        raise BenchError(f"the multitables child failed (exit code {p.returncode}):\n{tail}")
    res = json.loads(lines[-1])
    return res["seconds"], res["first_s"]


# ---------------------------------------------------------------- cases


def unavailable(impl):
    """None if ``impl`` can run here at all, else the reason it cannot."""
    if impl == "multitables":
        for mod in ("multitables", "tables", "wrapt", "msgpack"):
            if importlib.util.find_spec(mod) is None:
                return f"multitables: {mod} is not installed; pip install '.[bench]'"
    if impl == "pytables" and importlib.util.find_spec("tables") is None:
        return "pytables: not installed; pip install '.[bench]'"
    if impl == "ringcast-native" and not native_supported():
        return "ringcast-native: not available in this build (get_queue has no native parameter)"
    return None


def applies(impl, layout):
    return impl != "readinto" or layout == "contiguous"


def run_one(impl, path, n, rows):
    if impl == "ringcast-native":
        return run_ringcast(path, n, rows, True)
    if impl == "ringcast-h5py":
        return run_ringcast(path, n, rows, False)
    if impl == "multitables":
        return run_multitables(path, n, rows)
    if impl == "h5py":
        return run_h5py(path, n, rows)
    if impl == "pytables":
        return run_pytables(path, n, rows)
    if impl == "readinto":
        return run_readinto(path, n, rows)
    raise ValueError(impl)


class ShmJanitor:
    """Check that the run left nothing in /dev/shm: ringcast's segments (``rc_``, with this
    process's pid in the name) are removed and reported."""

    def __init__(self):
        self.before = set(os.listdir("/dev/shm"))

    def clean(self):
        left = []
        pid = f"_{os.getpid()}_"
        for name in set(os.listdir("/dev/shm")) - self.before:
            if name.startswith("rc_") and pid in name:
                left.append(name)
                try:
                    os.unlink(os.path.join("/dev/shm", name))
                except FileNotFoundError:
                    pass
        return left


def stray_children():
    """Descendant processes still alive, except multiprocessing's forkserver and resource
    tracker (they end with this process)."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(") ", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append((int(d), cmd))
    out, todo = [], [os.getpid()]
    while todo:
        for pid, cmd in kids.get(todo.pop(), []):
            todo.append(pid)
            if "multiprocessing.forkserver" in cmd or "multiprocessing.resource_tracker" in cmd:
                continue
            out.append((pid, cmd))
    return out


# ---------------------------------------------------------------- report


def fmt_block(b):
    return f"{b // MiB} MiB" if b >= MiB else f"{b // KiB} KiB"


def print_report(records, steady, impls, skipped, not_here):
    """Tables, ratios and target verdicts. ``skipped``: impl -> why it did not run at all;
    ``not_here``: (impl, layout) -> why it could not read that layout."""
    by = {(r["impl"], r["layout"], r["block_bytes"]): r for r in records}
    cases = [
        (lay, b)
        for lay in LAYOUTS
        for b in BLOCKS
        if any(r["layout"] == lay and r["block_bytes"] == b for r in records)
    ]
    cols = [i for i in impls if any(r["impl"] == i for r in records)]
    w = 16

    def row(label, cells):
        print(f"{label:<20}" + "".join(f"{c:>{w}}" for c in cells))

    for title, key, fmt in (
        (
            "GB/s (dataset bytes / time from get_queue or open to the last block)",
            "gb_per_s",
            "{:.2f}",
        ),
        (
            "first block, ms (from get_queue or open; ringcast: warm pool)",
            "first_block_ms",
            "{:.1f}",
        ),
    ):
        print(f"\n{title}")
        row("layout     block", cols)
        for lay, b in cases:
            cells = []
            for i in cols:
                r = by.get((i, lay, b))
                cells.append(fmt.format(r[key]) if r else "-")
            row(f"{lay:<10} {fmt_block(b):>7}", cells)

    print("\nGB/s once streaming (from the first block in hand to the last; not in --json)")
    row("layout     block", cols)
    for lay, b in cases:
        row(
            f"{lay:<10} {fmt_block(b):>7}",
            [f"{steady[(i, lay, b)]:.2f}" if (i, lay, b) in steady else "-" for i in cols],
        )

    for mine in RINGCAST:
        others = [i for i in cols if i not in RINGCAST]
        if mine not in cols or not others:
            continue
        print(f"\nratios {mine} / peer (GB/s)")
        row("layout     block", others)
        for lay, b in cases:
            m = by.get((mine, lay, b))
            cells = []
            for i in others:
                r = by.get((i, lay, b))
                cells.append(f"{m['gb_per_s'] / r['gb_per_s']:.2f}x" if m and r else "-")
            row(f"{lay:<10} {fmt_block(b):>7}", cells)

    print("\ntargets:")

    def gbs(impl, lay, b):
        r = by.get((impl, lay, b))
        return r["gb_per_s"] if r else None

    def why(impl, lay=None):
        return not_here.get((impl, lay)) or skipped.get(impl) or "not measured"

    def target(label, num, den, goal, why):
        if num is None or den is None:
            print(f"  {label:<56} n/a ({why})")
            return
        v = num / den
        verdict = "met" if v >= goal else "MISSED"
        print(f"  {label:<56} {v:7.2f}x  (target >= {goal:g}: {verdict})")

    k256 = 256 * KiB
    for mine in RINGCAST:
        target(
            f"{mine}: contiguous 256 KiB / readinto",
            gbs(mine, "contiguous", k256),
            gbs("readinto", "contiguous", k256),
            0.9,
            why(mine, "contiguous"),
        )
        target(
            f"{mine}: contiguous 256 KiB / multitables",
            gbs(mine, "contiguous", k256),
            gbs("multitables", "contiguous", k256),
            10,
            why(mine, "contiguous"),
        )
        for b in BLOCKS:
            target(
                f"{mine}: chunked {fmt_block(b)} / pytables read(out=)",
                gbs(mine, "chunked", b),
                gbs("pytables", "chunked", b),
                1.5,
                why(mine, "chunked"),
            )
        for b in BLOCKS:
            target(
                f"{mine}: gzip {fmt_block(b)} / h5py (one process)",
                gbs(mine, "gzip", b),
                gbs("h5py", "gzip", b),
                1.8,
                why(mine, "gzip"),
            )
        firsts = [
            (r["first_block_ms"], r["layout"], r["block_bytes"])
            for r in records
            if r["impl"] == mine
        ]
        label = f"{mine}: first block <= 5 ms (warm pool)"
        if not firsts:
            print(f"  {label:<56} n/a ({why(mine)})")
        else:
            worst = max(firsts)
            over = [f"{lay} {fmt_block(b)} {ms:.1f} ms" for ms, lay, b in firsts if ms > 5]
            verdict = "met" if not over else "MISSED in: " + ", ".join(over)
            print(
                f"  {label:<56} worst {worst[0]:.1f} ms ({worst[1]} {fmt_block(worst[2])}): "
                f"{verdict}"
            )
    mt = [r["first_block_ms"] for r in records if r["impl"] == "multitables"]
    if mt:
        print(
            f"  {'multitables first block (for reference)':<56} {min(mt):.1f} to {max(mt):.1f} ms"
        )
    for (impl, lay), reason in sorted(not_here.items()):
        print(f"  ({impl} not available for {lay}: {reason})")


# ---------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller files, one run per case")
    ap.add_argument("--json", action="store_true", help="print only a JSON list of records")
    ap.add_argument("--impl", action="append", choices=IMPL_ORDER, help="only these")
    ap.add_argument("--layout", action="append", choices=LAYOUTS, help="only these")
    ap.add_argument("--block", action="append", type=int, choices=BLOCKS, help="only these (bytes)")
    ap.add_argument("--repeat", type=int, help="runs per case, best kept (default 3, quick 1)")
    ap.add_argument(
        "--_child-multitables", nargs=3, metavar=("PATH", "N", "ROWS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args._child_multitables:
        path, n, rows = args._child_multitables
        child_multitables(path, int(n), int(rows))
        return 0

    t_start = time.perf_counter()
    note = sys.stderr if args.json else sys.stdout
    repeat = args.repeat or (1 if args.quick else 3)
    layouts = args.layout or LAYOUTS
    blocks = args.block or BLOCKS
    impls, skipped = [], {}
    for impl in args.impl or IMPL_ORDER:
        why = unavailable(impl)
        if why:
            print(f"skip {why}", file=note, flush=True)
            skipped[impl] = why
        else:
            impls.append(impl)

    n, n_gz = sizes(args.quick)
    files = ensure_files(layouts, n, n_gz, note)
    janitor = ShmJanitor()
    records = []
    steady = {}  # (impl, layout, block_bytes) -> GB/s from the first block to the last
    not_here = {}  # (impl, layout) -> why this implementation cannot read this layout
    try:
        t = time.perf_counter()
        warm_page_cache([p for p, _ in files.values()])
        print(f"page cache warmed in {time.perf_counter() - t:.1f} s", file=note, flush=True)
        for lay in layouts:
            path, rows_n = files[lay]
            for b in blocks:
                rows = b // ROW_BYTES
                runs = {impl: [] for impl in impls if applies(impl, lay)}
                for _ in range(repeat):
                    for impl in runs:
                        if (impl, lay) in not_here:
                            continue
                        try:
                            runs[impl].append(run_one(impl, path, rows_n, rows))
                        except NotAvailable as e:
                            not_here[(impl, lay)] = str(e)
                            print(
                                f"skip {impl} on {lay}: not available for this layout ({e})",
                                file=note,
                                flush=True,
                            )
                        except Exception as e:
                            detail = ""
                            if not isinstance(e, BenchError):
                                tb = traceback.format_exception(type(e), e, e.__traceback__)
                                detail = "\n" + "".join(tb[-4:])
                            raise SystemExit(
                                f"FAILED {impl} {lay} {fmt_block(b)}: "
                                f"{type(e).__name__}: {e}{detail}"
                            ) from None
                for impl, rs in runs.items():
                    if not rs:
                        continue
                    best = min(s for s, _ in rs)
                    first = statistics.median(f for _, f in rs)
                    rec = {
                        "impl": impl,
                        "layout": lay,
                        "block_bytes": b,
                        "gb_per_s": round(rows_n * ROW_BYTES / best / 1e9, 3),
                        "first_block_ms": round(first * 1e3, 3),
                    }
                    records.append(rec)
                    # the rate once streaming: from the first block in hand to the last
                    steady[(impl, lay, b)] = max(
                        (rows_n - rows) * ROW_BYTES / max(t - f, 1e-9) / 1e9 for t, f in rs
                    )
                    if not args.json:
                        spread = ""
                        if len(rs) > 1:
                            spread = f", worst {best / max(s for s, _ in rs):.0%}"
                        print(
                            f"{impl:>16} {lay:>10} {fmt_block(b):>7}: {rec['gb_per_s']:7.2f} GB/s"
                            f"  first block {rec['first_block_ms']:7.2f} ms"
                            f"  (best of {len(rs)}{spread})",
                            flush=True,
                        )
    finally:
        left = janitor.clean()
        if left:
            print(f"warning: ringcast left in /dev/shm (removed): {sorted(left)}", file=sys.stderr)
        deadline = time.monotonic() + 5
        while (stray := stray_children()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid, cmd in stray:
            print(f"warning: stray process {pid} ({cmd[:80]}): killed", file=sys.stderr)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if args.json:
        print(json.dumps(records, indent=1))
    else:
        print_report(records, steady, impls, skipped, not_here)
        print(f"\ntotal time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
