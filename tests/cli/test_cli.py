"""The ringcast command: ls, stats, gc, demo."""

from __future__ import annotations

import json
import subprocess
import sys

import ringcast
from ringcast import BroadcastQueue


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ringcast", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_ls_shows_segments_with_members(shm_name):
    with ringcast.BroadcastQueue(shm_name, create=True) as q, q.reader():
        out = run("ls")
        assert out.returncode == 0, out.stderr
        (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith(shm_name)]
        assert line.split()[1:] == ["broadcast", "1.0", "MiB", "2", "0", "no"]


def test_gc_removes_only_dead_segments(shm_name):
    code = (
        f"import os, ringcast; q = ringcast.BroadcastQueue({shm_name + '-dead'!r}, create=True); "
        "r = q.reader(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with ringcast.BroadcastQueue(shm_name, create=True):
        out = run("gc")
        assert out.returncode == 0, out.stderr
        assert f"removed {shm_name}-dead" in out.stdout
        assert f"removed {shm_name}\n" not in out.stdout
        assert [s["name"] for s in ringcast.segments() if s["name"].startswith(shm_name)] == [
            shm_name
        ]


def test_demo_runs_and_checks_every_message():
    out = run(
        "demo",
        "--only",
        "queue",
        "--readers",
        "2",
        "--messages",
        "20000",
        "--start-method",
        "forkserver",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every reader got every message, in order, intact" in out.stdout
    assert out.stdout.count(": ok") == 2


def test_beamline_demo_follows_a_live_file_and_fans_out():
    out = run("demo", "--only", "beamline", "--frames", "60", "--frame-rate", "300")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "fanned 60 frames out to 3 processes" in out.stdout
    assert out.stdout.count("60 frames, every one, in order (zero-copy leases)") == 2
    assert "live-view:" in out.stdout and out.stdout.count(": ok") == 3


def test_usage_error_exit_code():
    out = run("nonsense")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_stats_shows_readers_groups_and_rates(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=1 << 16, sender="cam") as q:
        r = q.reader(name="viewer", lossy=True)
        g = q.reader(name="worker", group="work")
        for _ in range(100):
            q.send(b"x" * 64, timeout=5)
        for _ in range(2000):  # lap the lossy reader
            q.send(b"y" * 8, timeout=0)
            g.recv(timeout=1)
        r.recv()
        out = run("stats", shm_name, "--count", "2", "--interval", "0.05")
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert f"queue {shm_name}: 2,100 messages sent" in text
        assert "0 msgs/s" in text  # the second snapshot has a rate
        assert "group work: 1 member(s), lag 100 msgs" in text
        assert "viewer" in text and "lossy" in text and "group=work" in text
        missed = q.stats()["overruns"]
        assert missed > 0 and f"overruns {missed:,}" in text
        js = run("stats", shm_name, "--count", "1", "--json")
        st = json.loads(js.stdout)
        assert st["write_seq"] == 2100 and st["groups"]["work"]["lag_messages"] == 100
        g.close()
        r.close()


def test_stats_of_a_missing_queue_says_so(shm_name):
    out = run("stats", shm_name)
    assert out.returncode == 1 and shm_name in out.stderr and "no ringcast segment" in out.stderr
