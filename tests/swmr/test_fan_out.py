"""Fan-out of followed frames into a BroadcastQueue, and `ringcast follow`, with a real
concurrent SWMR writer (issue 5, item 3)."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys

import numpy as np
import pytest

import ringcast
from ringcast import BroadcastQueue
from ringcast.swmr import DataSource, fan_out, frame_info
from tests.swmr.writer import frame_value

fctx = mp.get_context("fork")


def _consume(name: str, lossy: bool, ready, out) -> None:
    q = BroadcastQueue(name, create=False)
    r = q.reader(lossy=lossy, types=["data"])
    ready.put(1)
    seen = []
    ok = True
    for msg in r:
        info = frame_info(msg)
        frame = msg.array()
        i = info["index"]
        ok &= info["dataset"] == "data" and info["slice"] == [[i, i + 1]]
        ok &= bool(np.array_equal(frame[0], frame_value(i, (3, 4))))
        seen.append(i)
    out.put((seen, ok, r.missed))
    r.close()
    q.close()


def test_fan_out_of_a_live_file_to_processes(live, shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=1 << 20) as q:
        ready, out = fctx.Queue(), fctx.Queue()
        procs = [
            fctx.Process(target=_consume, args=(shm_name, lossy, ready, out))
            for lossy in (False, True)
        ]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=30)
        lv = live(n=80, frame=(3, 4), delay=0.002)
        src = DataSource(
            [lv["key"]], {"data": lv["data"]}, timeout=10, finished_dataset=lv["finished"]
        )
        points = []
        st = fan_out(src, q, on_point=lambda s: points.append(s.last_index))
        q.shutdown()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
    assert st.points == st.frames == 80 and st.finished and not st.timed_out
    assert points == list(range(80))
    assert st.bytes == 80 * 12 * 4
    for seen, ok, missed in results:
        assert ok, "a frame differs from what the writer wrote"
        assert seen == list(range(80)) and missed == 0


def test_frame_info_rejects_other_messages(shm_name):
    with BroadcastQueue(shm_name, create=True) as q, q.reader() as r:
        q.send_array(np.zeros(3), meta={"x": 1})
        q.send(b"plain")
        with pytest.raises(ValueError, match="fan_out"):
            frame_info(r.recv())
        with pytest.raises(ValueError, match="not an array message"):
            frame_info(r.recv())


def run_follow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ringcast", "follow", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_follow_command_publishes_a_live_file(live, shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=1 << 20) as q, q.reader() as r:
        lv = live(n=50, frame=(3, 4), delay=0.005)
        out = run_follow(
            lv.path,
            "--key",
            "key",
            "--data",
            "frames=data",
            "--finished",
            "finished",
            "--queue",
            shm_name,
            "--timeout",
            "10",
        )
        assert out.returncode == 0, out.stderr
        assert f"50 points, 50 frames (2.3 KiB) published to {shm_name}" in out.stdout
        assert "finished flag set" in out.stdout
        assert "points/s" in out.stderr  # the progress line
        got = []
        for msg in r:
            assert msg.type == "frames"
            i = frame_info(msg)["index"]
            np.testing.assert_array_equal(msg.array()[0], frame_value(i, (3, 4)))
            got.append(i)
        assert got == list(range(50))


def test_follow_command_errors(tmp_path, live):
    out = run_follow(str(tmp_path / "missing.h5"), "--key", "k", "--data", "d")
    assert out.returncode == 1 and "cannot open" in out.stderr and "missing.h5" in out.stderr
    lv = live(n=3)
    out = run_follow(lv.path, "--key", "nokey", "--data", "data", "--quiet")
    assert out.returncode == 1 and "nokey" in out.stderr
    out = run_follow(lv.path, "--key", "key", "--data", "a=data", "--data", "a=key")
    assert out.returncode == 1 and "two --data datasets are named 'a'" in out.stderr
    assert not [s for s in ringcast.segments() if s["name"].startswith("follow-")]
