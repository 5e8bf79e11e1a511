"""The ringcast command: ls, gc, demo."""

from __future__ import annotations

import subprocess
import sys

import ringcast


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
    out = run("demo", "--readers", "2", "--messages", "20000", "--start-method", "forkserver")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every reader got every message, in order, intact" in out.stdout
    assert out.stdout.count(": ok") == 2


def test_usage_error_exit_code():
    out = run("nonsense")
    assert out.returncode == 2 and "invalid choice" in out.stderr
