"""ringcast.h5: the multitables API on a shared-memory slot ring, with real worker processes
and real HDF5 files written by h5py (issue 4, items 1-5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest

import ringcast
import ringcast.h5
from ringcast.h5 import DEFAULT_BLOCK_BYTES, QueueClosed, Streamer


@pytest.fixture(scope="module")
def h5file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("h5") / "data.h5")
    rows = np.arange(1003 * 16, dtype=np.float32).reshape(1003, 16)
    comp = np.zeros(500, dtype=[("id", "<i8"), ("xy", "<f4", (3,)), ("name", "S4")])
    comp["id"] = np.arange(500)
    comp["xy"] = np.arange(1500, dtype=np.float32).reshape(500, 3)
    comp["name"] = [b"r%03d" % (i % 1000) for i in range(500)]
    with h5py.File(path, "w") as f:
        f.create_dataset("contig", data=rows)
        f.create_dataset("chunked", data=rows, chunks=(64, 16))
        f.create_dataset("gzip", data=rows, chunks=(100, 16), compression="gzip")
        f.create_dataset("shuffled", data=rows, chunks=(64, 16), compression="gzip", shuffle=True)
        f.create_dataset("bigend", data=rows.astype(">f8"), chunks=(50, 16))
        f.create_dataset(
            "cube_gz",
            data=np.arange(203 * 4 * 5, dtype=np.int32).reshape(203, 4, 5),
            chunks=(16, 4, 5),
            compression="gzip",
            compression_opts=1,
        )
        f.create_dataset("part_chunks", data=rows, chunks=(64, 8))
        f.create_dataset("lzf", data=rows, chunks=(64, 16), compression="lzf")
        f.create_dataset("cube", data=np.arange(200 * 4 * 5, dtype=np.int16).reshape(200, 4, 5))
        f.create_dataset("big_rows", data=np.ones((5, 40000), dtype=np.float64))
        f.create_dataset("comp", data=comp, chunks=(50,))
        f.create_dataset("empty", shape=(0, 3), dtype="f4")
        f.create_dataset("scalar", data=1.0)
        f.create_group("grp")
    return path, rows, comp


@pytest.fixture
def streamer(h5file):
    s = Streamer(h5file[0])
    yield s
    s.close()


def drain(q, ordered=True):
    out = []
    for g in q.iter():
        with g as block:
            out.append(block.copy())
    return out


def test_block_size_defaults(streamer, h5file):
    _, rows, _ = h5file
    assert streamer.get_queue("/chunked", n_procs=1).block_size == 64
    assert streamer.get_queue("/contig", n_procs=1).block_size == min(
        1003, DEFAULT_BLOCK_BYTES // 64
    )
    assert streamer.get_queue("/cube", n_procs=1).block_size == 200
    # a row larger than the default block: one row, never 0
    assert streamer.get_queue("/big_rows", n_procs=1).block_size == 1
    # an explicit block larger than the dataset is clamped
    assert streamer.get_queue("/contig", n_procs=1, block_size=5000).block_size == 1003
    with pytest.raises(RuntimeError, match="empty dataset"):
        streamer.get_queue("/empty")
    with pytest.raises(RuntimeError, match="read_ahead"):
        streamer.get_queue("/contig", read_ahead=0)
    with pytest.raises(RuntimeError, match="not an array"):
        streamer.get_queue("/grp")
    with pytest.raises(ValueError, match="scalar"):
        streamer.get_queue("/scalar")
    with pytest.raises(KeyError):
        streamer.get_queue("/missing")
    with pytest.raises(ValueError, match="field"):
        streamer.get_queue("/contig", field="x")


@pytest.mark.parametrize("path", ["/contig", "/chunked", "/gzip"])
def test_ordered_stream_is_the_dataset_in_order(streamer, h5file, path):
    _, rows, _ = h5file
    q = streamer.get_queue(path, n_procs=2, block_size=100, ordered=True)
    got = drain(q)
    assert q.get() is QueueClosed and q.get() is QueueClosed
    np.testing.assert_array_equal(np.concatenate(got), rows[:1000])
    np.testing.assert_array_equal(streamer.get_remainder(path, q.block_size), rows[1000:])


def test_unordered_stream_delivers_each_block_once(streamer, h5file):
    _, rows, _ = h5file
    q = streamer.get_queue("/chunked", n_procs=3)
    got = drain(q)
    assert len(got) == 1003 // 64
    starts = sorted(int(b[0, 0]) // 16 for b in got)
    assert starts == [64 * k for k in range(1003 // 64)]
    for b in got:
        k = int(b[0, 0]) // 16
        np.testing.assert_array_equal(b, rows[k : k + 64])


def test_remainder_block_and_generator(streamer, h5file):
    _, rows, _ = h5file
    q = streamer.get_queue("/contig", n_procs=2, block_size=300, ordered=True, remainder=True)
    got = drain(q)
    assert [len(b) for b in got] == [300, 300, 300, 103]
    np.testing.assert_array_equal(np.concatenate(got), rows)
    # the documented positional call: unordered (the default), so the full blocks come in the
    # order the workers finish them, each block whole and each once; the remainder comes last
    gen = streamer.get_generator("/contig", 2, None, False, 300)
    out = np.array(list(gen))
    assert out.shape == rows.shape
    starts = sorted(int(out[k, 0]) // 16 for k in range(0, 900, 300))
    assert starts == [0, 300, 600]
    for k in range(0, 900, 300):
        first = int(out[k, 0]) // 16
        np.testing.assert_array_equal(out[k : k + 300], rows[first : first + 300])
    np.testing.assert_array_equal(out[900:], rows[900:])
    # asked for in order, the rows are the dataset's, in order
    gen = streamer.get_generator("/contig", 2, None, False, 300, ordered=True)
    np.testing.assert_array_equal(np.array(list(gen)), rows)
    assert streamer.get_remainder("/contig", 1003).shape == (0, 16)


def test_cyclic_wraps_seamlessly(streamer, h5file):
    _, rows, _ = h5file
    q = streamer.get_queue("/contig", n_procs=2, block_size=300, cyclic=True, ordered=True)
    seq = []
    for _ in range(8):
        with q.get() as block:
            seq.append(block[:, 0].copy())
    q.close()
    np.testing.assert_array_equal(np.concatenate(seq), rows[np.arange(2400) % 1003, 0])
    # unordered cyclic: each window once, each a contiguous wrapping window
    q = streamer.get_queue("/contig", n_procs=2, block_size=300, cyclic=True)
    starts = set()
    for _ in range(10):
        with q.get() as block:
            first = int(block[0, 0]) // 16
            np.testing.assert_array_equal(block, rows[(first + np.arange(300)) % 1003])
            starts.add(first)
    q.close()
    assert len(starts) == 10


def test_multidimensional_rows_and_compound_fields(streamer, h5file):
    _, _, comp = h5file
    with h5py.File(h5file[0]) as f:
        cube = f["cube"][()]
    q = streamer.get_queue("/cube", n_procs=2, block_size=50, ordered=True)
    got = drain(q)
    assert got[0].shape == (50, 4, 5) and got[0].dtype == np.int16
    np.testing.assert_array_equal(np.concatenate(got), cube)
    q = streamer.get_queue("/comp", n_procs=2, ordered=True)
    got = np.concatenate(drain(q))
    assert got.dtype.names == ("id", "xy", "name")
    np.testing.assert_array_equal(got, comp)
    for field in ("xy", "id", "name"):
        q = streamer.get_queue("/comp", n_procs=2, ordered=True, field=field)
        np.testing.assert_array_equal(np.concatenate(drain(q)), comp[field])
        # also in wrapped cyclic blocks
        q = streamer.get_queue(
            "/comp", n_procs=1, block_size=300, cyclic=True, ordered=True, field=field
        )
        with q.get():
            pass
        with q.get() as wrapped:
            np.testing.assert_array_equal(wrapped, comp[field][np.arange(300, 600) % 500])
        q.close()


def test_two_queues_of_one_streamer_read_in_step(streamer, h5file):
    _, rows, _ = h5file
    a = streamer.get_queue("/contig", n_procs=2, block_size=50, ordered=True)
    b = streamer.get_queue("/chunked", n_procs=2, block_size=50, ordered=True)
    n = 0
    for ga, gb in zip(a.iter(), b.iter()):
        with ga as x, gb as y:
            np.testing.assert_array_equal(x, y)
            n += 1
    assert n == 20
    assert a.get() is QueueClosed and b.get() is QueueClosed


def test_a_queue_keeps_its_streamer_alive(h5file):
    _, rows, _ = h5file
    q = Streamer(h5file[0]).get_queue("/chunked", n_procs=2, ordered=True)
    import gc

    gc.collect()
    got = drain(q)
    np.testing.assert_array_equal(np.concatenate(got), rows[: 64 * (1003 // 64)])
    q._streamer.close()


def test_several_consumer_threads_share_a_queue(streamer, h5file):
    for ordered in (False, True):
        q = streamer.get_queue("/chunked", n_procs=2, block_size=10, ordered=ordered)
        seen: list[int] = []
        lock = threading.Lock()

        def consume(q=q, lock=lock, seen=seen):
            for g in q.iter():
                with g as block:
                    with lock:
                        seen.append(int(block[0, 0]) // 16)

        threads = [threading.Thread(target=consume) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(seen) == [10 * k for k in range(100)]


def test_a_view_kept_after_its_guard_never_shows_another_block(streamer, h5file):
    _, rows, _ = h5file
    q = streamer.get_queue("/contig", n_procs=2, block_size=10, read_ahead=2, ordered=True)
    with q.get() as block:
        kept = block[:3]  # a derived view: keeps the slot
    snapshot = kept.copy()
    n = 1
    for g in q.iter():  # the other slot keeps the stream going
        with g as block:
            np.testing.assert_array_equal(block, rows[10 * n : 10 * n + 10])
        n += 1
        np.testing.assert_array_equal(kept, snapshot)
    assert n == 100
    np.testing.assert_array_equal(kept, rows[:3])
    with pytest.raises(ValueError):
        kept[0, 0] = 1  # read-only


@pytest.mark.parametrize("native", [True, False])
def test_a_queue_reuses_a_finished_queues_ring_safely(streamer, h5file, native):
    _, rows, _ = h5file

    def run(path, **kw):
        q = streamer.get_queue(path, n_procs=2, block_size=10, ordered=True, native=native, **kw)
        assert q.native == native
        return q, q._ring.name

    q, first = run("/contig")
    with q.get(timeout=30) as block:
        np.testing.assert_array_equal(block, rows[:10])
    del q, block  # dropped early: its reading threads stop, its ring is kept warm
    q, again = run("/chunked")  # another dataset, same geometry: the same ring, new data
    assert again == first
    np.testing.assert_array_equal(np.concatenate(drain(q)), rows[:1000])
    del q
    # A view of a block kept past its queue pins that ring: the next queue gets a new one,
    # and the view still shows its rows while the new queue runs over other memory.
    q, name = run("/gzip")
    assert name == first
    with q.get(timeout=30) as block:
        kept = block[2:4]
    q.close()
    del q, block
    q, other = run("/contig", cyclic=True)
    assert other != name
    for _ in range(300):
        with q.get(timeout=30) as block:
            pass
    np.testing.assert_array_equal(kept, rows[2:4])
    del q, block, kept
    # The generator gives its ring back too; Streamer.close() removes the warm rings
    # (the per-test check finds nothing left in /dev/shm).
    n = sum(1 for _ in streamer.get_generator("/contig", block_size=10, native=native))
    assert n == len(rows)
    assert 1 <= len(streamer._warm) <= Streamer.WARM_RINGS


@pytest.mark.parametrize("native", [True, False])
def test_a_forked_copy_of_a_queue_dropped_in_the_child_does_not_stop_it(streamer, h5file, native):
    _, rows, _ = h5file
    q = streamer.get_queue("/contig", n_procs=1, block_size=10, ordered=True, native=native)
    with q.get(timeout=30) as block:
        np.testing.assert_array_equal(block, rows[:10])
    del block
    pid = os.fork()
    if pid == 0:  # the child drops its copy of the queue, runs its finalizer, and exits
        code = 0
        try:
            del q
            import gc

            gc.collect()
        except BaseException:
            code = 1
        os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0
    got = np.concatenate(drain(q))  # every remaining block, as if the child never existed
    np.testing.assert_array_equal(got, rows[10:1000])


def test_keeping_a_view_of_every_block_raises_instead_of_hanging(streamer):
    q = streamer.get_queue("/contig", n_procs=1, block_size=10, read_ahead=2, ordered=True)
    kept = []
    with pytest.raises(ringcast.HandleBusy, match="views of earlier blocks"):
        for g in q.iter():
            with g as block:
                kept.append(block)
    assert len(kept) == 3  # read_ahead + the one spare slot
    del kept, block
    q.close()


@pytest.mark.parametrize(
    "path", ["/contig", "/chunked", "/gzip", "/shuffled", "/bigend", "/cube_gz"]
)
@pytest.mark.parametrize("cyclic", [False, True])
def test_native_path_is_byte_identical_to_h5py(streamer, h5file, path, cyclic):
    with h5py.File(h5file[0]) as f:
        want = f[path][()]
    n = len(want)
    for bs in (1, 7, 64, 100, n):
        q = streamer.get_queue(
            path, n_procs=2, block_size=bs, ordered=True, cyclic=cyclic, remainder=True, native=True
        )
        assert q.native
        if cyclic:
            blocks = []
            for _ in range(-(-2 * n // bs)):
                with q.get(timeout=30) as block:
                    blocks.append(block.copy())
            q.close()
            assert {b.dtype for b in blocks} == {want.dtype}
            got = np.concatenate(blocks).astype(want.dtype)
            idx = np.arange(len(got)) % n
            assert got.tobytes() == want[idx].tobytes()
        else:
            blocks = drain(q)
            assert {b.dtype for b in blocks} == {want.dtype}
            got = np.concatenate(blocks).astype(want.dtype)  # concatenate makes it native-endian
            assert got.tobytes() == want.tobytes()


PLUGIN_FILTERS: dict[str, Callable[[], Mapping[str, Any]]] = {
    "lz4": lambda: hdf5plugin.LZ4(),
    "lz4-small-blocks": lambda: hdf5plugin.LZ4(nbytes=1000),  # several blocks per chunk
    "shuffle+lz4": lambda: {"shuffle": True, **hdf5plugin.LZ4()},
    "bitshuffle-lz4": lambda: hdf5plugin.Bitshuffle(cname="lz4"),
    "bitshuffle-lz4-24": lambda: hdf5plugin.Bitshuffle(nelems=24, cname="lz4"),
}


@pytest.mark.parametrize("filt", sorted(PLUGIN_FILTERS))
@pytest.mark.parametrize("dtype", ["<f4", ">i2", "u1", "<c16"])
def test_native_path_decodes_lz4_and_bitshuffle_like_h5py(tmp_path, filt, dtype):
    path = str(tmp_path / "plugin.h5")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((403, 37)) * 50).astype(dtype)
    x[::7] = 0  # compressible rows next to incompressible ones
    with h5py.File(path, "w") as f:  # chunks of 13 x 37 elements: not a multiple of 8
        f.create_dataset("x", data=x, chunks=(13, 37), **PLUGIN_FILTERS[filt]())
    with h5py.File(path) as f:
        want = f["x"][()]
    assert want.tobytes() == x.tobytes()
    with Streamer(path) as s:
        for bs in (1, 5, 13, 50, len(x)):
            q = s.get_queue("x", n_procs=2, block_size=bs, ordered=True, remainder=True)
            assert q.native, "chosen automatically"
            got = np.concatenate(drain(q)).astype(want.dtype)
            assert got.tobytes() == want.tobytes(), f"block size {bs}"
        q = s.get_queue("x", n_procs=1, block_size=50, ordered=True, remainder=True, native=False)
        got = np.concatenate(drain(q)).astype(want.dtype)  # h5py workers load the plugin too
        assert got.tobytes() == want.tobytes()


def _with_a_damaged_chunk(tmp_path, chunk: int, keep: int, **filters) -> str:
    """A file with dataset /z, (400, 10) float64 in chunks of 100 rows stored with
    ``filters``, whose chunk number ``chunk`` is overwritten with 0xff after its first
    ``keep`` bytes."""
    path = str(tmp_path / "bad.h5")
    with h5py.File(path, "w") as f:
        data = np.arange(4000, dtype="f8").reshape(400, 10)
        ds = f.create_dataset("z", data=data, chunks=(100, 10), **filters)
        info = ds.id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + keep)
        fh.write(b"\xff" * (info.size - keep))
    return path


@pytest.mark.parametrize("filt", ["lz4", "bitshuffle-lz4"])
def test_a_damaged_lz4_chunk_is_a_read_error_naming_its_row(tmp_path, filt):
    # chunk 1 (row 100): keep its 12-byte header, damage its blocks
    path = _with_a_damaged_chunk(tmp_path, 1, 12, **PLUGIN_FILTERS[filt]())
    with Streamer(path) as s:
        q = s.get_queue("/z", n_procs=2, ordered=True, native=True)
        with q.get(timeout=30) as block:
            assert block[0, 0] == 0
        with pytest.raises(ringcast.h5.ReadError, match="chunk at row 100 has .*block"):
            with q.get(timeout=30):
                pass
        q.close()


def test_native_path_falls_back_or_says_why(streamer, h5file):
    for path, why in [
        ("/part_chunks", "do not span whole rows"),
        ("/lzf", "filters"),
        ("/comp", "not a plain number"),
    ]:
        q = streamer.get_queue(path, n_procs=1)
        assert not q.native, path
        drain(q)
        with pytest.raises(ValueError, match=why):
            streamer.get_queue(path, native=True)
    with pytest.raises(ValueError, match="field"):
        streamer.get_queue("/comp", field="id", native=True)
    assert streamer.get_queue("/contig", native=False).native is False
    with Streamer(h5file[0], swmr=True, libver="latest") as s:
        assert not s.get_queue("/contig", n_procs=1).native


@pytest.mark.parametrize("native", [False, True])
def test_read_errors_reach_the_consumer_in_every_mode(tmp_path, native):
    path = _with_a_damaged_chunk(tmp_path, 2, 0, compression="gzip")  # the third chunk
    with Streamer(path) as s:
        for ordered in (True, False):
            q = s.get_queue("/z", n_procs=2, ordered=ordered, native=native)
            assert q.native == native
            ok, errors = 0, []
            for g in q.iter():
                try:
                    with g:
                        ok += 1
                except (OSError, ringcast.h5.ReadError) as e:
                    errors.append(e)
            assert ok == 3 and len(errors) == 1
            if native:
                assert isinstance(errors[0], ringcast.h5.ReadError)
                assert "row 200 does not inflate" in str(errors[0])
            else:
                assert isinstance(errors[0], OSError)
                assert "Traceback" in str(errors[0].__cause__)


def test_a_killed_worker_makes_the_consumer_raise(streamer, h5file):
    q = streamer.get_queue(
        "/contig", n_procs=2, block_size=10, cyclic=True, read_ahead=3, native=False
    )
    with q.get():
        pass
    pool = streamer._pool
    for p in pool.procs:
        os.kill(p.pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(ringcast.WorkerDied):
        for _ in range(1000):
            with q.get(timeout=30):
                pass
    assert time.monotonic() - t0 < 10
    q.close()


SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from ringcast.h5 import Streamer
    s = Streamer(sys.argv[1])
    q = s.get_queue("/contig", n_procs=2, block_size=10, cyclic=True, native=False)
    with q.get() as b:
        pass
    print(" ".join(str(p.pid) for p in s._pool.procs), flush=True)
    if sys.argv[2] == "hang":
        time.sleep(60)
    # else: exit without close()
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def _mine() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("rc_h5")}


def test_exit_without_close_does_not_hang_and_leaves_nothing(h5file):
    before = _mine()
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, h5file[0], "exit"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
    assert _mine() - before == set()


def _reap(p: subprocess.Popen) -> None:
    """Kill ``p`` if it still runs, wait for it and close its stdout."""
    if p.poll() is None:
        p.kill()
        p.wait(10)
    if p.stdout is not None:
        p.stdout.close()


def test_workers_die_with_their_parent(h5file):
    before = _mine()
    p = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, h5file[0], "hang"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None
        pids = [int(x) for x in p.stdout.readline().split()]
        assert pids and all(_alive(x) for x in pids)
        p.kill()
        p.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(x) for x in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(x) for x in pids), "workers outlived their parent"
        deadline = time.monotonic() + 5
        while _mine() - before and time.monotonic() < deadline:
            time.sleep(0.05)
        if _mine() - before:
            ringcast.gc()  # segments whose members are all dead
        assert not _mine() - before
    finally:
        _reap(p)


def test_a_killed_consumer_of_a_native_queue_leaves_nothing_in_dev_shm(h5file):
    script = textwrap.dedent(
        """
        import sys, time
        from ringcast.h5 import Streamer
        s = Streamer(sys.argv[1])
        q = s.get_queue("/contig", n_procs=2, block_size=10, cyclic=True, native=True)
        with q.get() as b:
            pass
        print("reading", flush=True)
        time.sleep(60)
        """
    )
    before = _mine()
    p = subprocess.Popen(
        [sys.executable, "-c", script, h5file[0]], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "reading"
        p.kill()  # mid-stream: its reading threads are filling slots
        p.wait(10)
        assert _mine() - before == set(), "the ring's name outlived a SIGKILL (no gc needed)"
    finally:
        _reap(p)
