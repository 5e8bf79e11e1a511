"""Liveness is judged only on positive evidence of death: a process out of file descriptors
never takes a live writer's lock nor reaps live readers, and a member in another pid
namespace (another container sharing /dev/shm) is never reaped, nor its queue unlinked."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

import ringcast
from ringcast import BroadcastQueue

ctx = mp.get_context("fork")


def _send_without_fds(name: str, timeout: float, conn: Connection) -> None:
    """In a child: join the queue (sending b"joined"), wait for the parent's go, then lower
    RLIMIT_NOFILE so that no file can be opened, and send; report what happened through the
    (already open) pipe."""
    import resource

    try:
        q = BroadcastQueue(name)
        q.send(b"joined")
        conn.send("joined")
        conn.recv()
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
        try:
            open("/proc/self/stat").close()
            conn.send("could still open files")
            return
        except OSError:
            pass
        try:
            q.send(b"from the child without fds", timeout=timeout)
            conn.send("sent")
        except ringcast.Timeout:
            conn.send("timeout")
        except ringcast.Full:
            conn.send("full")
        except Exception as e:  # noqa: BLE001 - reported to the parent
            conn.send(f"{type(e).__name__}: {e}")
    finally:
        conn.close()
        os._exit(0)


class ChildWithoutFds:
    """A forked child that joins a queue, then (on `send`) runs out of file descriptors and
    sends on it."""

    def __init__(self, name: str, timeout: float) -> None:
        self.conn, there = ctx.Pipe()
        self.p = ctx.Process(target=_send_without_fds, args=(name, timeout, there))
        self.p.start()
        there.close()
        assert self.conn.poll(20) and self.conn.recv() == "joined"

    def send(self) -> str:
        try:
            self.conn.send("go")
            assert self.conn.poll(20), "the child did not report"
            return str(self.conn.recv())
        finally:
            self.p.join(20)
            self.conn.close()


def test_a_process_out_of_fds_never_takes_the_lock_of_a_live_writer(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=4096) as q, q.reader() as r:
        child = ChildWithoutFds(shm_name, 0.3)
        res = q.reserve(16)  # a live writer in the middle of a message holds the lock
        assert child.send() == "timeout"
        assert q.stats()["lock_recoveries"] == 0
        res.commit()
        q.send(b"after")
        assert [r.recv(timeout=1).body for _ in range(3)] == [b"joined", bytes(16), b"after"]


def test_a_process_out_of_fds_never_reaps_live_readers(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=4096) as q, q.reader() as r:
        child = ChildWithoutFds(shm_name, 0)
        assert r.recv(timeout=1).body == b"joined"
        sent = 0
        while True:
            try:
                q.send(sent.to_bytes(4, "little") * 25, timeout=0)
            except ringcast.Full:
                break
            sent += 1
        assert child.send() == "full"
        assert q.stats()["reaped"] == 0
        for i in range(sent):
            assert r.recv(timeout=1).body == i.to_bytes(4, "little") * 25


# --- pid namespaces: a peer started with `unshare --pid --fork --mount-proc` ---------------

PEER = textwrap.dedent(
    """
    import sys
    import ringcast
    from ringcast import BroadcastQueue

    role, name = sys.argv[1], sys.argv[2]
    q = BroadcastQueue(name)
    if role == "reader":
        r = q.reader()
        print("ready", flush=True)
        sys.stdin.readline()  # "drain": read everything sent meanwhile
        n = 0
        while True:
            try:
                r.recv(timeout=0)
            except ringcast.Empty:
                break
            n += 1
        print(n, flush=True)
        sys.stdin.readline()  # "leave"
        r.close()
        q.close()
    else:  # "writer": send into a full queue, then leave
        try:
            q.send(b"from the other namespace", timeout=0)
            print("sent", flush=True)
        except ringcast.Full:
            print("full", flush=True)
        print(q.stats()["reaped"], flush=True)
        q.close()
    print("done", flush=True)
    """
)


@pytest.fixture(scope="module")
def unshare_pid() -> list[str]:
    """The command prefix that runs a process in a new pid namespace (skip if refused)."""
    cmd = ["unshare", "--pid", "--fork", "--mount-proc"]
    try:
        p = subprocess.run([*cmd, "true"], capture_output=True, text=True, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot run unshare: {e}")
    if p.returncode != 0:
        pytest.skip(f"unshare --pid refused here (needs root or user namespaces): {p.stderr}")
    return cmd


def _peer(cmd: list[str], role: str, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*cmd, sys.executable, "-c", PEER, role, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _line(p: subprocess.Popen[str]) -> str:
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    assert line, f"the peer ended early (rc {p.poll()})"
    return line


@pytest.fixture
def peers() -> Iterator[list[subprocess.Popen[str]]]:
    made: list[subprocess.Popen[str]] = []
    yield made
    for p in made:
        if p.poll() is None:
            p.kill()
        p.wait(20)
        for f in (p.stdin, p.stdout):
            if f is not None:
                f.close()


def _fill(q: BroadcastQueue) -> int:
    for sent in range(1000):
        try:
            q.send(sent.to_bytes(4, "little") * 25, timeout=0)
        except ringcast.Full:
            return sent
    raise AssertionError("the ring never filled: its reader was reaped")


def test_a_reader_in_another_pid_namespace_is_neither_reaped_nor_unlinked(
    shm_name, unshare_pid, peers
):
    q = BroadcastQueue(shm_name, create=True, capacity=4096)
    peer = _peer(unshare_pid, "reader", shm_name)
    peers.append(peer)
    assert _line(peer) == "ready"
    sent = _fill(q)  # the other namespace's reader holds the ring
    assert q.stats()["reaped"] == 0
    assert ringcast.gc() == []  # nor does gc call it stale
    assert [s["members_dead"] for s in ringcast.segments() if s["name"] == shm_name] == [0]
    q.close()  # our last member leaves: the queue stays, the other namespace still uses it
    assert os.path.exists(f"/dev/shm/{shm_name}")
    assert peer.stdin is not None
    peer.stdin.write("drain\n")
    peer.stdin.flush()
    assert int(_line(peer)) == sent
    peer.stdin.write("leave\n")
    peer.stdin.flush()
    assert _line(peer) == "done"
    assert peer.wait(20) == 0
    assert not os.path.exists(f"/dev/shm/{shm_name}")  # its last member did unlink it


def test_a_writer_in_another_pid_namespace_never_reaps_our_readers(shm_name, unshare_pid, peers):
    with BroadcastQueue(shm_name, create=True, capacity=4096) as q, q.reader() as r:
        sent = _fill(q)
        peer = _peer(unshare_pid, "writer", shm_name)
        peers.append(peer)
        assert _line(peer) == "full"
        assert _line(peer) == "0"  # reaped nobody
        assert _line(peer) == "done"  # and left without unlinking the queue
        assert peer.wait(20) == 0
        assert os.path.exists(f"/dev/shm/{shm_name}")
        assert q.stats()["reaped"] == 0
        for i in range(sent):
            assert r.recv(timeout=1).body == i.to_bytes(4, "little") * 25
