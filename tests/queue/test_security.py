"""Attaching by name checks the object: no symbolic link, a regular file, owned by this user
(or root, or a user the caller allows), not writable by others unless the caller's ``mode``
grants it; ``ls``/``inspect`` never follow links and ``gc`` never removes another user's
segment (docs/security.md).

These tests need root: they make objects owned by another uid (``os.chown``) and run real
child processes as that uid (``os.setuid`` after ``os.fork``).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import stat
import tempfile
import time
from typing import Callable

import pytest

import ringcast
from ringcast import BroadcastQueue, SegmentPermissionError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")

NOBODY = 65534
SHM = "/dev/shm"


def _path(name: str) -> str:
    return f"{SHM}/{name}"


#: Output read from a child past the line returned, by descriptor.
_pending: dict[int, bytes] = {}


def _fork_as(uid: int, body: Callable[[int, int], None]) -> tuple[int, int, int]:
    """Run ``body(read_fd, write_fd)`` in a child process running as ``uid`` (groups dropped,
    umask 0). Returns (pid, fd to read the child's output, fd to write to the child)."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(to_child_w)
            os.close(from_child_r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.umask(0)
            body(to_child_r, from_child_w)
            code = 0
        except BaseException as e:  # report, never return into pytest
            try:
                os.write(from_child_w, f"error {type(e).__name__}: {e}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(to_child_r)
    os.close(from_child_w)
    _pending.pop(from_child_r, None)  # a reused descriptor number starts clean
    return pid, from_child_r, to_child_w


def _read_line(fd: int, timeout: float = 10.0) -> str:
    """The child's next line (bounded wait)."""
    deadline = time.monotonic() + timeout
    buf = _pending.pop(fd, b"")
    os.set_blocking(fd, False)
    while b"\n" not in buf:
        if time.monotonic() > deadline:
            raise AssertionError(f"child said nothing within {timeout} s (so far {buf!r})")
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.005)
            continue
        if not chunk:
            raise AssertionError(f"child closed its pipe (so far {buf!r})")
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    if rest:
        _pending[fd] = rest
    return line.decode().strip()


def _reap(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not finish within {timeout} s")


class _Inotify:
    """Every open, read, write or close of one file, seen through inotify."""

    IN_ACCESS, IN_MODIFY, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE, IN_OPEN = 0x1, 0x2, 0x8, 0x10, 0x20

    def __init__(self, path: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        mask = (
            self.IN_ACCESS
            | self.IN_MODIFY
            | self.IN_CLOSE_WRITE
            | self.IN_CLOSE_NOWRITE
            | self.IN_OPEN
        )
        wd = libc.inotify_add_watch(self.fd, path.encode(), mask)
        assert wd >= 0, os.strerror(ctypes.get_errno())

    def events(self) -> list[int]:
        out: list[int] = []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return out
        off = 0
        while off + 16 <= len(data):
            mask = int.from_bytes(data[off + 4 : off + 8], "little")
            length = int.from_bytes(data[off + 12 : off + 16], "little")
            out.append(mask)
            off += 16 + length
        return out

    def close(self) -> None:
        os.close(self.fd)


# ----------------------------------------------------------------------------- symlinks


def test_symlink_to_a_file_is_refused_without_opening_the_target(shm_name):
    with tempfile.NamedTemporaryFile(prefix="rc-victim-", delete=False) as f:
        f.write(b"root:secret-hash:19000:0:99999:7:::\n" * 200)  # bigger than a header page
        target = f.name
    try:
        os.chmod(target, 0o600)
        before = os.stat(target)
        with open(target, "rb") as f:
            content = f.read()
        os.symlink(target, _path(shm_name))
        os.lchown(_path(shm_name), NOBODY, NOBODY)  # another user's link, in /dev/shm
        watch = _Inotify(target)
        try:
            for create in (False, None):
                with pytest.raises(SegmentPermissionError, match="symbolic link") as ei:
                    BroadcastQueue(shm_name, create=create)
                assert isinstance(ei.value, PermissionError)
                assert shm_name in str(ei.value)
            with pytest.raises(SegmentPermissionError, match="symbolic link"):
                ringcast.inspect(shm_name)
            assert shm_name not in [s["name"] for s in ringcast.segments()]
            assert shm_name not in ringcast.gc()
            assert watch.events() == [], "the link's target was opened"
        finally:
            watch.close()
        after = os.stat(target)
        assert (after.st_mtime_ns, after.st_size, after.st_mode) == (
            before.st_mtime_ns,
            before.st_size,
            before.st_mode,
        )
        with open(target, "rb") as f:
            assert f.read() == content
        assert os.path.islink(_path(shm_name)), "the link was removed"
    finally:
        if os.path.islink(_path(shm_name)):
            os.unlink(_path(shm_name))
        os.unlink(target)


def test_symlink_to_a_live_queue_is_refused(shm_name):
    alias = f"{shm_name}-alias"
    with BroadcastQueue(shm_name, create=True, capacity=4096) as q:
        os.symlink(_path(shm_name), _path(alias))
        try:
            with pytest.raises(SegmentPermissionError, match="symbolic link"):
                BroadcastQueue(alias, create=False)
            with pytest.raises(SegmentPermissionError, match="symbolic link"):
                ringcast.inspect(alias)
            names = [s["name"] for s in ringcast.segments()]
            assert shm_name in names and alias not in names
            assert q.stats()["members_alive"] == 1  # nobody joined through the link
        finally:
            os.unlink(_path(alias))


# ----------------------------------------------------------------------------- squatters


def _squatter(name: str) -> Callable[[int, int], None]:
    """A process of another user that creates a world-writable queue and reads it."""

    def body(rfd: int, wfd: int) -> None:
        with BroadcastQueue(name, create=True, capacity=4096, mode=0o666) as q:
            with q.reader() as r:
                os.write(wfd, b"ready\n")
                try:
                    m = r.recv(timeout=float(_read_line(rfd)))
                    os.write(wfd, f"got {m.body.decode()}\n".encode())
                except ringcast.Empty:
                    os.write(wfd, b"nothing\n")

    return body


@pytest.mark.parametrize("create", [None, False])
def test_root_refuses_a_world_writable_queue_squatted_by_another_user(shm_name, create):
    pid, rfd, wfd = _fork_as(NOBODY, _squatter(shm_name))
    try:
        assert _read_line(rfd) == "ready"
        st = os.stat(_path(shm_name))
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o666)
        with pytest.raises(SegmentPermissionError) as ei:
            BroadcastQueue(shm_name, create=create)
        msg = str(ei.value)
        assert f"owned by uid {NOBODY}" in msg and f"allow_users=[{NOBODY}]" in msg, msg
        # Allowing the owner is not enough: the object is also writable by every user.
        with pytest.raises(SegmentPermissionError, match="every other user"):
            BroadcastQueue(shm_name, create=create, allow_users=[NOBODY])
        os.write(wfd, b"0.3\n")
        assert _read_line(rfd) == "nothing"  # no message of root's reached the squatter
    finally:
        os.close(wfd)
        assert _reap(pid) == 0
        os.close(rfd)
    assert not os.path.exists(_path(shm_name))


def test_the_same_queue_is_accepted_with_explicit_allowance(shm_name):
    pid, rfd, wfd = _fork_as(NOBODY, _squatter(shm_name))
    try:
        assert _read_line(rfd) == "ready"
        for users in ([NOBODY], ["nobody"]):
            with BroadcastQueue(shm_name, create=False, mode=0o666, allow_users=users) as q:
                assert q.capacity == 4096
        with BroadcastQueue(shm_name, mode=0o666, allow_users=[NOBODY]) as q:
            # A copy sent to another process accepts what this handle accepted.
            with pickle.loads(pickle.dumps(q)) as copy:
                assert copy.name == shm_name
            os.write(wfd, b"5\n")
            q.send(b"hello")
            assert _read_line(rfd) == "got hello"
    finally:
        os.close(wfd)
        assert _reap(pid) == 0
        os.close(rfd)
    assert not os.path.exists(_path(shm_name))


def test_another_user_attaches_a_shared_queue_only_with_its_mode(shm_name):
    """Root creates a queue every user may write; a user attaches with mode=0o666 only."""

    def user(rfd: int, wfd: int) -> None:
        try:
            BroadcastQueue(shm_name, create=False)
        except SegmentPermissionError as e:
            os.write(wfd, f"refused {e}\n".encode())
        with BroadcastQueue(shm_name, create=False, mode=0o666) as q:
            q.send(b"from nobody")
            os.write(wfd, b"sent\n")

    with BroadcastQueue(shm_name, create=True, capacity=4096, mode=0o666) as q, q.reader() as r:
        pid, rfd, wfd = _fork_as(NOBODY, user)
        try:
            line = _read_line(rfd)
            assert line.startswith("refused") and "mode=0o666" in line, line
            assert _read_line(rfd) == "sent"
            assert r.recv(timeout=5).body == b"from nobody"
        finally:
            os.close(wfd)
            assert _reap(pid) == 0
            os.close(rfd)


def test_an_unreadable_queue_raises_the_permission_error(shm_name):
    def user(rfd: int, wfd: int) -> None:
        try:
            BroadcastQueue(shm_name, create=False)
        except SegmentPermissionError as e:
            os.write(wfd, f"refused {type(e).__mro__[1:3]} {e}\n".encode())

    with BroadcastQueue(shm_name, create=True, capacity=4096):
        pid, rfd, wfd = _fork_as(NOBODY, user)
        try:
            line = _read_line(rfd)
            assert line.startswith("refused") and "may not open it" in line, line
            assert "PermissionError" in line
        finally:
            os.close(wfd)
            assert _reap(pid) == 0
            os.close(rfd)


# ----------------------------------------------------------------------------- modes


def test_group_or_other_writable_own_queue_needs_the_shared_mode(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=4096) as q:
        assert stat.S_IMODE(os.stat(_path(shm_name)).st_mode) == 0o600
        with BroadcastQueue(shm_name, create=False) as again:  # our own 0600 object: as before
            assert again.capacity == q.capacity
        for perm, ok_modes, bad_modes in (
            (0o620, (0o660, 0o666), (0o600, 0o606)),
            (0o660, (0o660, 0o666), (0o600, 0o606)),
            (0o606, (0o606, 0o666), (0o600, 0o660)),
            (0o666, (0o666,), (0o600, 0o660, 0o606)),
        ):
            os.chmod(_path(shm_name), perm)
            for mode in bad_modes:
                with pytest.raises(SegmentPermissionError, match=f"mode={perm:#o}"):
                    BroadcastQueue(shm_name, create=False, mode=mode)
                with pytest.raises(SegmentPermissionError, match=f"mode={perm:#o}"):
                    BroadcastQueue(shm_name, mode=mode)
            for mode in ok_modes:
                with BroadcastQueue(shm_name, create=False, mode=mode) as h:
                    assert h.capacity == q.capacity
        # Read permission for others is the owner's choice, not a way in.
        os.chmod(_path(shm_name), 0o644)
        BroadcastQueue(shm_name, create=False).close()


def test_mode_is_applied_exactly_despite_the_umask(shm_name):
    old = os.umask(0o077)
    try:
        with BroadcastQueue(shm_name, create=True, capacity=4096, mode=0o660):
            assert stat.S_IMODE(os.stat(_path(shm_name)).st_mode) == 0o660
    finally:
        os.umask(old)


@pytest.mark.parametrize("mode", [0o1600, 0o400, 0o066])
def test_bad_modes_are_refused(shm_name, mode):
    with pytest.raises(ringcast.InvalidArgument, match="mode"):
        BroadcastQueue(shm_name, create=True, capacity=4096, mode=mode)
    assert not os.path.exists(_path(shm_name))


def test_allow_users_rejects_bad_values(shm_name):
    with pytest.raises(TypeError):
        BroadcastQueue(shm_name, allow_users="nobody")
    with pytest.raises(ringcast.InvalidArgument, match="no user named"):
        BroadcastQueue(shm_name, allow_users=["no-such-user-here"])
    with pytest.raises(TypeError):
        BroadcastQueue(shm_name, allow_users=[1.5])  # type: ignore[list-item]
    assert not os.path.exists(_path(shm_name))


def test_pysyncq_attaches_only_its_users_queues(shm_name):
    with BroadcastQueue(shm_name, create=True, capacity=4096):
        os.chown(_path(shm_name), NOBODY, NOBODY)
        with pytest.raises(PermissionError, match=f"owned by uid {NOBODY}"):
            ringcast.PySyncQ(shm_name, create=False, size=4096 + 40)


# ----------------------------------------------------------------------------- ls and gc


def _stale_queue(name: str) -> None:
    """A queue whose only member (a child process) was killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            q = BroadcastQueue(name, create=True, capacity=4096)
            os.kill(os.getpid(), signal.SIGKILL)
            q.close()  # never reached
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)


def test_gc_never_removes_another_users_segment(shm_name):
    _stale_queue(shm_name)
    os.chown(_path(shm_name), NOBODY, NOBODY)
    try:
        assert ringcast.inspect(shm_name)["stale"]
        assert shm_name not in ringcast.gc()
        assert os.path.exists(_path(shm_name)), "root's gc removed another user's segment"
        assert ringcast.inspect(shm_name)["owner"] == NOBODY
        # root's create=True does not replace it either
        with pytest.raises(ringcast.SegmentExists):
            BroadcastQueue(shm_name, create=True, capacity=4096)

        # Its owner's gc removes it.
        def user_gc(rfd: int, wfd: int) -> None:
            os.write(wfd, f"{' '.join(ringcast.gc())}\n".encode())

        pid, rfd, wfd = _fork_as(NOBODY, user_gc)
        try:
            assert shm_name in _read_line(rfd).split()
        finally:
            os.close(wfd)
            assert _reap(pid) == 0
            os.close(rfd)
        assert not os.path.exists(_path(shm_name))
    finally:
        if os.path.exists(_path(shm_name)):
            os.unlink(_path(shm_name))


def test_gc_removes_our_own_stale_segment(shm_name):
    _stale_queue(shm_name)
    assert ringcast.inspect(shm_name)["owner"] == os.geteuid()
    assert shm_name in ringcast.gc()
    assert not os.path.exists(_path(shm_name))


def test_inspect_and_attach_refuse_a_fifo_without_blocking(shm_name):
    """In a child process: opening a FIFO for reading would block it (with the GIL held)."""

    def look(rfd: int, wfd: int) -> None:
        names = [s["name"] for s in ringcast.segments()]
        os.write(wfd, f"listed {shm_name in names}\n".encode())
        for call in (ringcast.inspect, lambda n: BroadcastQueue(n, create=False)):
            try:
                call(shm_name)
                os.write(wfd, b"opened\n")
            except SegmentPermissionError as e:
                os.write(wfd, f"refused {e}\n".encode())

    os.mkfifo(_path(shm_name), 0o600)
    try:
        pid, rfd, wfd = _fork_as(os.geteuid(), look)
        try:
            assert _read_line(rfd, 5) == "listed False"
            for _ in range(2):
                line = _read_line(rfd, 5)
                assert line.startswith("refused") and "FIFO" in line, line
        finally:
            os.close(wfd)
            try:
                assert _reap(pid, 5) == 0
            finally:
                os.close(rfd)
    finally:
        os.unlink(_path(shm_name))
