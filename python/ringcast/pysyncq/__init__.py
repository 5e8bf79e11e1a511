"""Drop-in replacement for pysyncq 0.0.1 on ringcast's shared-memory core.

Change ``from pysyncq import pysyncq as pq`` to ``from ringcast import pysyncq as pq`` (or
``from ringcast import PySyncQ``). Behaviour follows pysyncq except its defects, which are
fixed; ``docs/migrating-from-pysyncq.md`` lists every difference.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional, Union

from .._ringcast import _open_queue
from ..errors import (
    Full,
    HandleClosed,
    InvalidArgument,
    MessageTooLarge,
    RingcastError,
    Timeout,
)
from . import header
from ._backlog import Backlog, default_limit
from .header import defsize, maxshmemory, qset

_getpid = os.getpid

__all__ = ["PySyncQ", "qset", "header", "QueueMemoryError", "NotOpenError"]

Msg = tuple[Union[str, bytes], Union[str, bytes], Union[str, bytes]]

#: A blocking pop waits in slices of at most this many seconds, releasing the instance's
#: lock between slices: pysyncq's condition lock is released while a pop waits, so other
#: threads sharing the object can pop (or change the screens) meanwhile.
_POP_SLICE = 0.05
#: How long ``close`` waits for a pop in another thread to finish its slice.
_CLOSE_WAIT = 1.0
#: A blocking append waits for room in slices of at most this many seconds; between two
#: slices it moves this instance's oldest unread message out of the ring (see ``_backlog``),
#: so it never waits for space that only its own unread messages hold.
_APPEND_SLICE = 0.01
#: The first slice after a move that freed nothing (another reader holds the same room):
#: doubled at each such move in a row, up to ``_APPEND_SLICE``.
_APPEND_RETRY = 0.0005
_MESSAGE_HEADER = header.message_header_bytes
_QUEUE_HEADER = header.queue_header_bytes


class QueueMemoryError(RingcastError, MemoryError):
    """pysyncq's ``MemoryError``: ``"{n} byte message > {free} free bytes."``"""


class NotOpenError(RingcastError, TypeError):
    """``append``/``pop`` before ``open()`` (pysyncq raised ``TypeError`` or misbehaved)."""


class _Shm:
    """What remains of pysyncq's ``SharedMemory`` attribute: its ``name`` and ``size``."""

    __slots__ = ("name", "size")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size

    def __repr__(self) -> str:
        return f"SharedMemory({self.name!r}, size={self.size})"


def _encode(x: Any) -> bytes:
    return x if type(x) is bytes else str(x).encode()


class PySyncQ:
    """A shared-memory broadcast queue with pysyncq's interface.

    Every process that ``open()``s reads every message appended after it opened; a message
    is freed once every such process has popped it (screened or not) or closed, or has died.
    """

    def __init__(
        self,
        name: Optional[str] = None,
        create: bool = True,
        size: int = defsize,
        start: Optional[str] = None,
    ) -> None:
        if size > maxshmemory:
            raise QueueMemoryError(f"Queue size can't exceed {maxshmemory}")
        self.name = name
        self.create = create
        self.size = size
        # Resolve the start method without fixing the global default (pysyncq froze it).
        if start is None:
            start = mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0]
        self.start = start
        if start not in mp.get_all_start_methods():
            raise ValueError(f"Not a valid start method, {start=}")
        self.sender: Optional[bytes] = None
        self._scrnsend = qset()
        self._scrntype = qset()
        self._reader: Any = None
        self._pid = 0
        # The screening sets last pushed to the reader, with their versions. The objects
        # themselves are kept (not their ids): a freed set's id can be reused by a new one.
        self._pushed: Optional[tuple[qset, int, qset, int]] = None
        # (i, slno) when the queue was closed, so str(q) keeps showing them afterwards.
        self._last_pos = (0, 0)
        # Own unread messages moved out of the ring by a blocking append; pop reads them
        # first (see _backlog).
        self._backlog = Backlog()
        #: Bytes the backlog may hold; beyond, a blocking append raises instead of moving
        #: more of its own unread messages out of the ring.
        self.backlog_limit = default_limit(max(size - header.queue_header_bytes, 0))
        # Serialises this object's reader between threads (the core's reader refuses
        # concurrent use with HandleBusy); see _POP_SLICE.
        self._lock = threading.RLock()
        if not isinstance(size, int):
            raise TypeError(f"'size' must be an integer, not {type(size).__name__}")
        if size == 0:
            raise ValueError("'size' must be a positive number different from zero")
        if size < 0:
            raise ValueError("'size' must be a positive integer")
        if size < header.queue_header_bytes:
            raise ValueError(
                f"'size' must be at least {header.queue_header_bytes} bytes "
                f"(the queue header), got {size}"
            )
        capacity = size - header.queue_header_bytes
        self._q: Any = _open_queue(name, bool(create), capacity, 1)
        if self._q.capacity != capacity:
            actual = self._q.capacity + header.queue_header_bytes
            self._q.close()
            raise ValueError(
                f"queue {name!r} has size {actual}, not {size}: pass size={actual} to attach"
            )
        self.shm: Optional[_Shm] = _Shm(self._q.name, size)

    # ---------------------------------------------------------------- screening sets

    @property
    def scrnsend(self) -> qset:
        """Senders whose messages are screened (consumed without being returned)."""
        return self._scrnsend

    @scrnsend.setter
    def scrnsend(self, value: Any) -> None:
        self._scrnsend = value if isinstance(value, qset) else qset(value)

    @property
    def scrntype(self) -> qset:
        """Message types that are screened."""
        return self._scrntype

    @scrntype.setter
    def scrntype(self, value: Any) -> None:
        self._scrntype = value if isinstance(value, qset) else qset(value)

    @property
    def scrns(self) -> tuple[qset, qset]:
        """``(scrnsend, scrntype)``."""
        return (self._scrnsend, self._scrntype)

    # ---------------------------------------------------------------- read position

    @property
    def i(self) -> int:
        """Read position: byte offset of the next message inside the ring."""
        if not self._opened():
            return self._last_pos[0]
        if self._backlog:
            return self._backlog.entries[0][3]
        cap = self.size - header.queue_header_bytes
        return self._reader.position[0] % cap if cap else 0

    @property
    def slno(self) -> int:
        """Serial number of the next message this instance reads (mod 2**64)."""
        if not self._opened():
            return self._last_pos[1]
        if self._backlog:
            return self._backlog.entries[0][4]
        return self._reader.position[1] % 2**64

    # ---------------------------------------------------------------- lifecycle

    def _opened(self) -> bool:
        return self._reader is not None and self._pid == os.getpid()

    def _live(self, what: str) -> None:
        if self._q is None:
            raise HandleClosed(f"PySyncQ {self._shm_name()!r} is closed; {what} is not allowed")

    def _shm_name(self) -> Optional[str]:
        return self.shm.name if self.shm is not None else self.name

    def open(self, sender: Optional[str] = None, filtself: bool = True) -> None:
        """Register this process as a reader and writer of the queue.

        Messages appended from now on are delivered to it. ``sender`` defaults to the pid.
        With ``filtself`` the own sender name is screened: own messages are consumed without
        being returned.
        """
        self._live("open()")
        if self._opened():
            raise InvalidArgument(
                "open() was already called on this PySyncQ in this process; close() it first"
            )
        if sender is None:
            sender = str(mp.current_process().pid)
        self.sender = sender.encode()
        if filtself:
            self._scrnsend.add(self.sender)
        self._lock = threading.RLock()  # a fresh one per process (fork copies the state)
        self._reader = self._q.reader(name=self.sender)
        self._pid = os.getpid()
        self._pushed = None
        self._backlog = Backlog()

    def close(self) -> None:
        """Leave the queue. Unread messages stop being held for this process; the last
        process to close removes the shared memory. Calling it again does nothing."""
        if self.shm is None:
            return
        # Let a pop in another thread finish its slice (bounded: never hang in close). An
        # object not opened in this process has no reader to protect (and a forked copy of
        # the lock may be held by a thread that does not exist here).
        locked = self._lock.acquire(timeout=_CLOSE_WAIT) if self._opened() else False
        try:
            if self.shm is None:
                return
            if self._opened():
                try:
                    self._last_pos = (self.i, self.slno)
                except Exception:
                    pass
                self._reader.close()
            self._reader = None
            self._backlog = Backlog()
            if self._q is not None:
                self._q.close()
            self._q = None
            self.shm = None
        finally:
            if locked:
                self._lock.release()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = None
        state["_pid"] = 0
        state["_pushed"] = None
        state["_backlog"] = Backlog()
        del state["_lock"]
        if self._q is None:
            raise HandleClosed("a closed PySyncQ cannot be sent to another process")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- traffic

    def _need_open(self, what: str) -> None:
        self._live(what)
        if not self._opened():
            raise NotOpenError(f"{what} before open(): call q.open(sender) in this process first")

    def append(
        self,
        msgtype: Any = "",
        msg: Any = "",
        block: bool = False,
        timer: Optional[float] = 0.5,
    ) -> None:
        """Append a message. ``str(x)`` of non-bytes arguments is sent, UTF-8 encoded.

        When the queue lacks room: ``block=False`` raises ``MemoryError`` at once;
        ``block=True`` waits up to ``timer`` seconds (``None``: for ever) and then raises.
        A message larger than the whole queue raises at once. A blocking append never waits
        for room that only this instance's own unread messages hold: it first moves them
        into a process-local backlog that later pops deliver first, in order.
        """
        t = _encode(msgtype)
        b = _encode(msg)
        if self._reader is None or self._pid != _getpid() or self._q is None:
            self._need_open("append()")
        if not block:
            timeout: Optional[float] = 0.0
        else:
            timeout = None if timer is None else max(float(timer), 0.0)
        n = _MESSAGE_HEADER + len(self.sender or b"") + len(t) + len(b)
        if n > self.size - _QUEUE_HEADER:
            # Can never fit: fail at once (pysyncq waited; D6), and before the core's own
            # field-size checks, so an oversized type still raises MemoryError as in pysyncq.
            raise QueueMemoryError(f"{n} byte message > {self._q.free_bytes} free bytes.")
        # A non-blocking append (timeout 0) never reads the clock: it fails at the first try.
        end = None if timeout is None else (time.monotonic() + timeout if timeout else 0.0)
        wait = 0.0  # the first attempt never waits: room held by our own backlog comes first
        retry = _APPEND_RETRY
        while True:
            try:
                self._q.send(b, t, timeout=wait, sender=self.sender)
                return
            except Full as e:
                err = f"{e.needed} byte message > {e.free} free bytes."
            except MessageTooLarge as e:
                raise QueueMemoryError(
                    f"{e.needed} byte message > {self._q.free_bytes} free bytes."
                ) from None
            except Timeout:
                # The slice ran out while waiting for another writer's lock: in pysyncq's
                # terms the message did not get room (yet).
                err = f"{n} byte message > {self._q.free_bytes} free bytes."
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise QueueMemoryError(err) from None
            moved = self._move_one(err)
            if moved > 0:
                wait, retry = 0.0, _APPEND_RETRY  # it made room: try again at once
            elif moved == 0:
                # Another reader holds that room too: give it a moment, then look again
                # (it may be waiting in append itself, for room we hold with it).
                wait, retry = retry, min(2 * retry, _APPEND_SLICE)
            else:
                wait = _APPEND_SLICE  # nothing of ours holds room: wait for the others
            if left is not None:
                wait = min(wait, left)

    def _move_one(self, err: str) -> int:
        """For a blocking append that found no room: move this instance's oldest unread
        message out of the ring into its backlog (D13: its unread messages hold room).
        Return the bytes that freed in the ring (0: another reader holds them too), or -1 if
        there was nothing to move. One at a time, so that the ring keeps holding back the
        other writers as it should: only the room this append needs is taken out of it.
        Raise ``err`` at once if the backlog is already at ``backlog_limit``."""
        reader = self._reader
        if reader is None or not reader.lag:
            return -1
        # A pop in another thread holds the lock: it is reading the ring meanwhile, which
        # frees the same room. Never wait for it here.
        if not self._lock.acquire(blocking=False):
            return -1
        try:
            if self._reader is not reader:  # closed meanwhile
                return -1
            if self._backlog.nbytes >= self.backlog_limit:
                raise QueueMemoryError(
                    f"{err} This process's own unread messages hold the room, and "
                    f"{self._backlog.nbytes} bytes of them are already kept in its backlog "
                    f"(backlog_limit={self.backlog_limit}): pop them"
                )
            free = self._q.free_bytes
            self._pushed = None  # take_one clears the reader's screens
            if not self._backlog.take_one(reader, self.size - _QUEUE_HEADER):
                return -1
            return max(self._q.free_bytes - free, 0)
        finally:
            self._lock.release()

    def _sync_screens(self) -> None:
        s, t = self._scrnsend, self._scrntype
        sv, tv = getattr(s, "_version", 0), getattr(t, "_version", 0)
        p = self._pushed
        if p is None or p[0] is not s or p[1] != sv or p[2] is not t or p[3] != tv:
            self._reader._set_screens(s, t)
            self._pushed = (s, sv, t, tv)

    def pop(
        self, block: bool = False, timer: Optional[float] = 0.5, decode: bool = True
    ) -> Optional[Msg]:
        """Pop the next unscreened message as ``(sender, type, body)``, or ``None``.

        ``block=True`` waits up to ``timer`` seconds in total (``None``: for ever, ``0``: not
        at all). With ``decode`` the parts are ``str``; a body that is not valid UTF-8 raises
        ``UnicodeDecodeError`` and stays in the queue (``pop(decode=False)`` reads it).
        """
        if self._reader is None or self._pid != _getpid() or self._q is None:
            self._need_open("pop()")
        if not block:
            with self._lock:
                reader = self._reader
                if reader is None:  # closed by another thread meanwhile
                    self._need_open("pop()")
                if self._backlog:
                    m = self._backlog.pop(self._scrnsend, self._scrntype, decode)
                    if m is not None:
                        return m
                self._sync_screens()
                return reader._pop(0.0, decode)
        end: Optional[float] = None
        if timer is not None:
            t = float(timer)
            if math.isnan(t):
                raise InvalidArgument("timer must not be NaN")
            end = time.monotonic() + t
        while True:
            if end is None:
                timeout = _POP_SLICE
            else:
                timeout = min(_POP_SLICE, max(end - time.monotonic(), 0.0))
            with self._lock:
                self._need_open("pop()")  # another thread may have closed it meanwhile
                if self._backlog:
                    m = self._backlog.pop(self._scrnsend, self._scrntype, decode)
                    if m is not None:
                        return m
                self._sync_screens()
                m = self._reader._pop(timeout, decode)
            if m is not None or timeout < _POP_SLICE:
                return m

    def __call__(self, *args: Any, **kwargs: Any) -> Iterator[Msg]:
        """Iterate with ``pop(*args, **kwargs)`` until it returns ``None``."""
        while m := self.pop(*args, **kwargs):
            yield m

    def __iter__(self) -> Iterator[Msg]:
        return self()

    def __str__(self) -> str:
        sender = self.sender.decode() if self.sender is not None else None
        return (
            f"PySyncQ(name={self.name},size={self.size},sender={sender},"
            f"pos={self.i},sn={self.slno})"
        )
