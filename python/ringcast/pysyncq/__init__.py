"""Drop-in replacement for pysyncq 0.0.1 on ringcast's shared-memory core.

Change ``from pysyncq import pysyncq as pq`` to ``from ringcast import pysyncq as pq`` (or
``from ringcast import PySyncQ``). Behaviour follows pysyncq except its defects, which are
fixed; ``docs/migrating-from-pysyncq.md`` lists every difference.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from typing import Any, Optional, Union

from .._ringcast import _open_queue
from ..errors import (
    Full,
    HandleClosed,
    InvalidArgument,
    MessageTooLarge,
    RingcastError,
)
from . import header
from .header import defsize, maxshmemory, qset

__all__ = ["PySyncQ", "qset", "header", "QueueMemoryError", "NotOpenError"]

Msg = tuple[Union[str, bytes], Union[str, bytes], Union[str, bytes]]


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
        self._pushed: Optional[tuple[int, int, int, int]] = None
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
            return 0
        cap = self.size - header.queue_header_bytes
        return self._reader.position[0] % cap if cap else 0

    @property
    def slno(self) -> int:
        """Serial number of the next message this instance reads (mod 2**64)."""
        if not self._opened():
            return 0
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
        self._reader = self._q.reader(name=self.sender)
        self._pid = os.getpid()
        self._pushed = None

    def close(self) -> None:
        """Leave the queue. Unread messages stop being held for this process; the last
        process to close removes the shared memory. Calling it again does nothing."""
        if self.shm is None:
            return
        if self._opened():
            self._reader.close()
        self._reader = None
        if self._q is not None:
            self._q.close()
        self._q = None
        self.shm = None

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
        if self._q is None:
            raise HandleClosed("a closed PySyncQ cannot be sent to another process")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ---------------------------------------------------------------- traffic

    def _need_open(self, what: str) -> None:
        self._live(what)
        if not self._opened():
            raise NotOpenError(
                f"{what} before open(): call q.open(sender) in this process first"
            )

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
        A message larger than the whole queue raises at once.
        """
        t = _encode(msgtype)
        b = _encode(msg)
        self._need_open("append()")
        if not block:
            timeout: Optional[float] = 0.0
        else:
            timeout = None if timer is None else max(float(timer), 0.0)
        try:
            self._q.send(b, t, timeout=timeout, sender=self.sender)
        except Full as e:
            raise QueueMemoryError(f"{e.needed} byte message > {e.free} free bytes.") from None
        except MessageTooLarge as e:
            raise QueueMemoryError(
                f"{e.needed} byte message > {self._q.free_bytes} free bytes."
            ) from None

    def _sync_screens(self) -> None:
        s, t = self._scrnsend, self._scrntype
        key = (id(s), getattr(s, "_version", 0), id(t), getattr(t, "_version", 0))
        if key != self._pushed:
            self._reader._set_screens(s, t)
            self._pushed = key

    def pop(
        self, block: bool = False, timer: Optional[float] = 0.5, decode: bool = True
    ) -> Optional[Msg]:
        """Pop the next unscreened message as ``(sender, type, body)``, or ``None``.

        ``block=True`` waits up to ``timer`` seconds in total (``None``: for ever, ``0``: not
        at all). With ``decode`` the parts are ``str``; a body that is not valid UTF-8 raises
        ``UnicodeDecodeError`` and stays in the queue (``pop(decode=False)`` reads it).
        """
        self._need_open("pop()")
        if not block:
            timeout: Optional[float] = 0.0
        else:
            timeout = None if timer is None else max(float(timer), 0.0)
        self._sync_screens()
        return self._reader._pop(timeout, decode)

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
