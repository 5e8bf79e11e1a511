"""A segment shrunk under live processes (another process of the same user runs
``ftruncate`` on it) makes their calls raise ``CorruptSegment`` naming the shrink; no process
dies of SIGBUS and nothing hangs (issue 12, item 9).

Real processes: a writer sending without pause, a reader receiving without pause, and a third
process that shrinks the object to 0 or to half its size. Before the fix the writer died of
SIGBUS every time and the reader about half the time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ringcast import BroadcastQueue, CorruptSegment, Full

WRITER = textwrap.dedent(
    """
    import sys
    from ringcast import BroadcastQueue, CorruptSegment, Full
    q = BroadcastQueue(sys.argv[1], create=False)
    print("ready", flush=True)
    try:
        while True:
            try:
                q.send(b"w" * 3000, timeout=0.05)
            except Full:
                pass
    except CorruptSegment as e:
        print("ERROR", e, flush=True)
        sys.exit(0 if "shrank the object" in str(e) else 2)
    """
)

READER = textwrap.dedent(
    """
    import sys
    from ringcast import BroadcastQueue, CorruptSegment, Empty
    q = BroadcastQueue(sys.argv[1], create=False)
    r = q.reader()
    print("ready", flush=True)
    try:
        while True:
            try:
                r.recv_bytes(timeout=0.5)
            except Empty:
                pass
    except CorruptSegment as e:
        print("ERROR", e, flush=True)
        sys.exit(0 if "shrank the object" in str(e) else 2)
    """
)

SHRINK = "import os, sys; os.truncate(sys.argv[1], int(sys.argv[2]))"


def _start(code: str, name: str) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", code, name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stderr is not None
    line = p.stdout.readline()
    assert line.strip() == "ready", (line, p.stderr.read() if p.poll() is not None else "")
    return p


@pytest.mark.parametrize("fraction", [0, 0.5])
@pytest.mark.parametrize("rounds", range(3))
def test_a_shrink_under_a_writer_and_a_reader_is_an_exception_in_both(shm_name, fraction, rounds):
    path = f"/dev/shm/{shm_name}"
    owner = BroadcastQueue(shm_name, create=True, capacity=1 << 20)
    procs = []
    try:
        reader = _start(READER, shm_name)
        procs.append(reader)
        writer = _start(WRITER, shm_name)
        procs.append(writer)
        time.sleep(0.2)  # both are running: the writer has lapped the ring many times
        size = os.path.getsize(path)
        subprocess.run(
            [sys.executable, "-c", SHRINK, path, str(int(size * fraction) // 4096 * 4096)],
            check=True,
            timeout=30,
        )
        outcome = {}
        for what, p in (("writer", writer), ("reader", reader)):
            try:
                out, err = p.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                pytest.fail(f"the {what} hung after the shrink: {out} {err[-2000:]}")
            assert p.returncode != -signal.SIGBUS, f"the {what} died of SIGBUS: {err[-2000:]}"
            assert p.returncode == 0, f"the {what} exited with {p.returncode}: {out} {err[-2000:]}"
            outcome[what] = out
        assert all("ERROR" in o for o in outcome.values()), outcome
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        # The owner's handle survives too: its next call raises instead of crashing.
        with pytest.raises(CorruptSegment, match="shrank the object"):
            for _ in range(1000):
                try:
                    owner.send(b"o" * 3000, timeout=0)
                except Full:
                    time.sleep(0.01)
        owner.close()
        if os.path.exists(path):
            os.unlink(path)  # a shrunk object is not a usable segment: nobody unlinks it
