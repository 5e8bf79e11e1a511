"""Exceptions raised by ringcast.

Every exception derives from :class:`RingcastError` and, where the meaning matches, also from
the standard-library type, so existing ``except`` clauses keep working (``queue.Empty``,
``queue.Full``, ``TimeoutError``, ``FileNotFoundError``, ``FileExistsError``,
``PermissionError``, ``ValueError``).
"""

from __future__ import annotations

import errno as _errno
import queue as _queue

__all__ = [
    "RingcastError",
    "Empty",
    "Full",
    "MessageTooLarge",
    "Timeout",
    "QueueShutDown",
    "SegmentNotFound",
    "SegmentExists",
    "CorruptSegment",
    "SegmentPermissionError",
    "InvalidArgument",
    "HandleClosed",
    "NoMemberSlot",
    "ForkedHandle",
    "HandleBusy",
    "WorkerDied",
    "RingcastOSError",
    "NoShmSpace",
    "FrameNotReady",
    "SWMRError",
    "PipelineStateError",
]


class RingcastError(Exception):
    """Base class of every ringcast exception."""


class Empty(RingcastError, _queue.Empty):
    """No message arrived before the timeout (also a :class:`queue.Empty`)."""


class Full(RingcastError, _queue.Full):
    """The queue had no room before the timeout (also a :class:`queue.Full`).

    ``needed`` is the record's cost in bytes, ``free`` the free bytes last seen.
    """

    def __init__(self, message: str = "", needed: int = 0, free: int = 0) -> None:
        super().__init__(message)
        self.needed = needed
        self.free = free


class MessageTooLarge(RingcastError, ValueError):
    """The message can never fit in the queue, however long one waits."""

    def __init__(self, message: str = "", needed: int = 0, capacity: int = 0) -> None:
        super().__init__(message)
        self.needed = needed
        self.capacity = capacity


class Timeout(RingcastError, TimeoutError):
    """A wait other than send/receive (a lock, readers joining) ran out of time."""


class QueueShutDown(RingcastError):
    """The queue was shut down and this reader has read every message."""


class SegmentNotFound(RingcastError, FileNotFoundError):
    """No ringcast segment of that name exists."""


class SegmentExists(RingcastError, FileExistsError):
    """A live segment of that name already exists."""


class CorruptSegment(RingcastError, ValueError):
    """The object is not a ringcast segment, or its contents are damaged."""


class SegmentPermissionError(RingcastError, PermissionError):
    """The segment object may not be used: another user owns it, users the caller did not
    accept may write to it, it is a symbolic link or not a regular file, or this user may not
    open it (also a :class:`PermissionError`). See docs/security.md.
    """


class InvalidArgument(RingcastError, ValueError):
    """An argument is out of range or of the wrong form."""


class HandleClosed(RingcastError, ValueError):
    """The handle was closed."""


class NoMemberSlot(RingcastError):
    """Every member slot of the segment is in use."""


class ForkedHandle(RingcastError, RuntimeError):
    """A handle that belongs to another process (inherited across fork) was used."""


class HandleBusy(RingcastError, RuntimeError):
    """Another thread is using the same reader right now."""


class WorkerDied(RingcastError, RuntimeError):
    """A worker process died (killed, crashed) while the consumer waited for its work."""


class RingcastOSError(RingcastError, OSError):
    """An operating-system call failed."""


class NoShmSpace(RingcastOSError):
    """``/dev/shm`` has no room for a new segment, or is smaller than the segment.

    Raised when the queue or ring is created (its memory is reserved then, so a full
    ``/dev/shm`` never kills a process later with ``SIGBUS``). An :class:`OSError` with
    ``errno`` ``ENOSPC``, like any write to a full filesystem; not a :class:`MemoryError`,
    which means the process itself ran out of memory. ``asked`` is the size of the segment in
    bytes, ``free`` and ``total`` the free and total bytes of ``/dev/shm`` (``total`` is 0
    when unknown).
    """

    def __init__(self, message: str = "", asked: int = 0, free: int = 0, total: int = 0) -> None:
        super().__init__(_errno.ENOSPC, message)
        self.asked = asked
        self.free = free
        self.total = total

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[type, tuple[str, int, int, int]]:
        return (type(self), (str(self.strerror), self.asked, self.free, self.total))


class FrameNotReady(RingcastError, ValueError):
    """A frame's data did not appear in the file within the timeout (its key was ready)."""


class SWMRError(RingcastError, RuntimeError):
    """HDF5 could not refresh or read a dataset of a file being written (SWMR)."""


class PipelineStateError(RingcastError, ValueError):
    """The pipeline is not in a state that allows the call (not fed, already running, ...).

    A :class:`ValueError`, as paipa raised for the same situations.
    """
