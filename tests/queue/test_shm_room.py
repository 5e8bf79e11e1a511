"""A small or full /dev/shm (Docker's and Kubernetes' default is 64 MiB) is an exception when
a queue or slot ring is created, naming the size asked, the room free and the fix; never a
SIGBUS that kills the process later (issue 12, item 8).

Each case runs in a child Python with a private 64 MiB tmpfs on /dev/shm (``unshare -m``), so
it sees exactly the room a container would and leaves the real /dev/shm alone. Before the
fix, creation succeeded on a sparse object and the child died of SIGBUS (exit 135, -7) at
the first page tmpfs could not supply.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import pytest

import ringcast
from ringcast import BroadcastQueue, InvalidArgument, NoShmSpace

MiB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRELUDE = textwrap.dedent(
    """
    import errno, json, os, sys
    import ringcast
    from ringcast import BroadcastQueue, NoShmSpace, Full
    from ringcast._ringcast import _SlotRing
    MiB = 1 << 20

    def report(**kw):
        print("RESULT " + json.dumps(kw), flush=True)

    def refused(make):
        try:
            obj = make()
        except NoShmSpace as e:
            return dict(refused=True, msg=str(e), errno=e.errno, asked=e.asked, free=e.free,
                        total=e.total, left=sorted(os.listdir("/dev/shm")))
        return dict(refused=False, obj=obj)

    def fill(q, body=MiB):
        # Send without a consumer until the queue is full: touches every page of the ring.
        r = q.reader()
        n = 0
        while True:
            try:
                q.send(b"x" * body, timeout=0)
            except Full:
                break
            n += 1
        r.close()
        return n
    """
)

CASES = {
    # A capacity larger than all of /dev/shm: refused at creation, with the message.
    "too_big": """
        out = refused(lambda: BroadcastQueue(None, create=True, capacity=128 * MiB))
        if not out["refused"]:
            fill(out.pop("obj"))  # what used to kill the process
        report(**out)
    """,
    # ringcast follow's default queue (64 MiB) cannot fit a 64 MiB /dev/shm with its header.
    "follow_default": """
        out = refused(lambda: BroadcastQueue("follow", create=True, capacity=64 * MiB))
        if not out["refused"]:
            fill(out.pop("obj"))
        report(**out)
    """,
    # A queue that fits is filled to the brim: no SIGBUS, the send ends with Full.
    "fits": """
        q = BroadcastQueue(None, create=True, capacity=48 * MiB)
        n = fill(q)
        q.close()
        report(refused=False, sent=n, left=sorted(os.listdir("/dev/shm")))
    """,
    # /dev/shm partly taken by another queue: one that does not fit in the rest is refused.
    "full": """
        a = BroadcastQueue(None, create=True, capacity=40 * MiB)
        fill(a)
        out = refused(lambda: BroadcastQueue(None, create=True, capacity=32 * MiB))
        if not out["refused"]:
            fill(out.pop("obj"))
        a.close()
        out["left"] = sorted(os.listdir("/dev/shm"))
        report(**out)
    """,
    # A slot ring (h5 streaming, pipeline blocks) too big for /dev/shm: refused too.
    "slot_ring": """
        out = refused(lambda: _SlotRing("ring", create=True, n_slots=8, slot_bytes=16 * MiB))
        if not out["refused"]:
            ring = out.pop("obj")
            ring.join("worker")
            for _ in range(8):
                slot, task, view = ring.claim(timeout=1)
                view[:] = b"x" * len(view)  # touches every page
                ring.publish(slot, len(view))
        report(**out)
    """,
}


SMALL_SHM = 'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$0" "$@"'


def run_in_small_shm(case: str) -> tuple[int, dict, str]:
    """Run CASES[case] in a child with a private 64 MiB /dev/shm; (exit status, result, err)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", SMALL_SHM, "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"a private /dev/shm needs unshare -m and mount: {probe.stderr.strip()}")
    code = PRELUDE + textwrap.dedent(CASES[case])
    p = subprocess.run(
        ["unshare", "-m", "sh", "-c", SMALL_SHM, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    result = {}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    return p.returncode, result, p.stderr


def check_refused(result: dict, asked_at_least: int) -> None:
    assert result["refused"], result
    assert result["errno"] == 28  # ENOSPC
    assert result["asked"] >= asked_at_least
    msg = result["msg"]
    assert "--shm-size" in msg and "smaller capacity" in msg, msg
    assert f"{result['asked'] / MiB:.1f} MiB" in msg, msg
    assert result["left"] == [], "a refused creation leaves nothing in /dev/shm"


def test_a_capacity_larger_than_dev_shm_is_refused_at_creation():
    rc, result, err = run_in_small_shm("too_big")
    assert rc == 0, f"child died (status {rc}): {err[-2000:]}"
    check_refused(result, 128 * MiB)
    assert "holds only 64.0 MiB in all" in result["msg"], result["msg"]
    assert result["total"] == 64 * MiB


def test_the_follow_default_queue_is_refused_in_a_64_mib_dev_shm():
    rc, result, err = run_in_small_shm("follow_default")
    assert rc == 0, f"child died (status {rc}): {err[-2000:]}"
    check_refused(result, 64 * MiB)


def test_filling_a_queue_that_fits_never_sigbuses():
    rc, result, err = run_in_small_shm("fits")
    assert rc == 0, f"child died (status {rc}): {err[-2000:]}"
    assert result["sent"] >= 40, result
    assert result["left"] == []


def test_a_queue_that_does_not_fit_in_the_free_room_is_refused():
    rc, result, err = run_in_small_shm("full")
    assert rc == 0, f"child died (status {rc}): {err[-2000:]}"
    check_refused(result, 32 * MiB)
    msg = result["msg"]
    assert "free (of 64.0 MiB)" in msg and "ringcast gc" in msg, msg
    assert result["free"] < 32 * MiB


def test_a_slot_ring_that_does_not_fit_is_refused():
    rc, result, err = run_in_small_shm("slot_ring")
    assert rc == 0, f"child died (status {rc}): {err[-2000:]}"
    check_refused(result, 128 * MiB)


def test_no_shm_space_is_an_oserror_enospc():
    assert issubclass(NoShmSpace, ringcast.RingcastOSError)
    assert issubclass(NoShmSpace, OSError) and not issubclass(NoShmSpace, MemoryError)
    e = NoShmSpace("no room", 10, 2, 8)
    assert e.errno == 28 and str(e) == "no room"
    assert (e.asked, e.free, e.total) == (10, 2, 8)
    f = pickle.loads(pickle.dumps(e))
    assert type(f) is NoShmSpace and str(f) == "no room"
    assert (f.asked, f.free, f.total) == (10, 2, 8)


@pytest.mark.parametrize("capacity", [0, 1, 15])
def test_a_capacity_too_small_for_any_message_is_refused_at_creation(shm_name, capacity):
    with pytest.raises(InvalidArgument, match="at least 16 bytes") as ei:
        BroadcastQueue(shm_name, create=True, capacity=capacity)
    assert f"got {capacity}" in str(ei.value)
    assert not os.path.exists(f"/dev/shm/{shm_name}")


def test_the_smallest_capacity_holds_one_empty_message(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=16, sender=b"") as q, q.reader() as r:
        q.send(b"", timeout=0)
        assert r.recv_bytes(timeout=0) == b""
