"""Type stub of the compiled module ``ringcast._ringcast`` (rust/ringcast-py/src/lib.rs).

The public names are re-exported by ``ringcast``; names starting with ``_`` are internal
(used by ``ringcast.pysyncq`` and by pickling). The ``TypedDict`` classes below exist only
for type checkers: they cannot be imported at run time.
"""

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Final, Literal, NoReturn, Optional, TypedDict, Union, final

from typing_extensions import Buffer, Self

__all__ = [
    "BroadcastQueue",
    "Reader",
    "Message",
    "_attach_queue",
    "_message",
    "_open_queue",
    "segments",
    "inspect",
    "gc",
    "unlink",
    "record_size",
    "_close_all",
    "RECORD_HEADER_BYTES",
]

_Name = Union[str, bytes]
_Names = Union[str, bytes, Iterable[Union[str, bytes]]]

#: Bytes of the fixed header of every record (``u32 body_len, u16 sender_len,
#: u16 type_len, u64 seq``).
RECORD_HEADER_BYTES: Final = 16

class _MemberStats(TypedDict):
    """One active member slot, as reported by ``BroadcastQueue.stats()``."""

    slot: int
    kind: Literal["reader", "handle"]
    pid: int
    name: str
    alive: bool
    cursor: int
    next_seq: int
    lag_messages: int
    lag_bytes: int
    received: int
    sent: int
    waits: int
    blocked_s: float

class _QueueStats(TypedDict):
    """The dict returned by ``BroadcastQueue.stats()``."""

    name: str
    capacity: int
    used_bytes: int
    write_seq: int
    shutdown: bool
    lock_recoveries: int
    reaped: int
    full_events: int
    send_blocked_s: float
    members: list[_MemberStats]
    members_alive: int
    members_dead: int
    readers_alive: int

class _SegmentInfo(TypedDict):
    """The dict returned by ``inspect()`` and by each item of ``segments()``."""

    name: str
    kind: Literal["broadcast", "slots", "unknown"]
    size: int
    capacity: int
    members_alive: int
    members_dead: int
    creator_pid: int
    stale: bool

@final
class Message:
    """One received message: sender, type, sequence number and body."""

    @property
    def seq(self) -> int:
        """Sequence number of the message in its queue (0 for the first message sent)."""
    @property
    def body(self) -> bytes:
        """The message body (a copy)."""
    @property
    def sender(self) -> str:
        """The sender's name (bytes that are not UTF-8 are replaced with U+FFFD)."""
    @property
    def type(self) -> str:
        """The message type (bytes that are not UTF-8 are replaced with U+FFFD)."""
    def __reduce__(self) -> tuple[Any, ...]:
        """Messages pickle by value (to pass them on to another process)."""
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __repr__(self) -> str: ...

@final
class BroadcastQueue:
    """A shared-memory broadcast queue: every reader gets every message."""

    def __new__(
        cls,
        name: Optional[str] = None,
        *,
        create: Optional[bool] = None,
        capacity: int = 1048576,
        max_members: int = 64,
        sender: Optional[_Name] = None,
        mode: int = 0o600,
        spin_us: float = 20.0,
    ) -> Self:
        """Create (``create=True``), attach (``False``) or either (``None``) a queue by name."""
    @property
    def name(self) -> str:
        """The segment name (``/dev/shm/<name>``)."""
    @property
    def capacity(self) -> int:
        """Byte budget of the ring."""
    @property
    def sender(self) -> str:
        """The sender name stamped on messages sent through this handle."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    @property
    def free_bytes(self) -> int:
        """Free bytes right now (raises ``HandleClosed`` after ``close()``)."""
    @property
    def spin_us(self) -> float:
        """Spin window (microseconds, 0 to 1e6) before a blocking call sleeps."""
    @spin_us.setter
    def spin_us(self, v: float) -> None: ...
    def record_size(
        self, body_len: int, type_len: int = 0, sender_len: Optional[int] = None
    ) -> int:
        """The capacity cost in bytes of a message (``sender_len=None``: this handle's sender)."""
    def send(
        self,
        data: Buffer,
        type: Optional[_Name] = None,
        *,
        timeout: Optional[float] = None,
        sender: Optional[_Name] = None,
    ) -> int:
        """Send bytes-like ``data``; wait for room up to ``timeout`` s (``None``: for ever).

        Raises ``Full`` on timeout; returns the sequence number.
        """
    def send_nowait(self, data: Buffer, type: Optional[_Name] = None) -> int:
        """``send(data, type, timeout=0)``: raise ``Full`` at once if there is no room."""
    def reader(
        self,
        *,
        name: Optional[_Name] = None,
        senders: Optional[_Names] = None,
        types: Optional[_Names] = None,
        exclude_senders: Optional[_Names] = None,
        exclude_types: Optional[_Names] = None,
    ) -> Reader:
        """A new reader that receives every message sent from now on, optionally screened."""
    def wait_for_readers(self, n: int, timeout: Optional[float] = None) -> None:
        """Block until at least ``n`` live readers have joined (``Timeout`` after ``timeout`` s)."""
    def shutdown(self) -> None:
        """Shut the queue down: sends fail, readers raise ``QueueShutDown`` once drained."""
    def stats(self) -> _QueueStats:
        """A lock-free snapshot of the queue and of every active member."""
    def close(self) -> None:
        """Leave the queue; the segment is removed when its last member leaves."""
    def __enter__(self) -> Self:
        """Return the queue itself."""
    def __exit__(
        self,
        _t: Optional[type[BaseException]],
        _v: Optional[BaseException],
        _tb: Optional[TracebackType],
    ) -> Literal[False]:
        """Close the queue; exceptions propagate."""
    def __reduce__(
        self,
    ) -> tuple[Callable[[str, bytes, float], BroadcastQueue], tuple[str, bytes, float]]:
        """Pickle by name: unpickling attaches to the queue (``create=False``)."""
    def __repr__(self) -> str: ...

@final
class Reader:
    """A reader of a BroadcastQueue: its own cursor, holding back writers until it has read."""

    @property
    def position(self) -> tuple[int, int]:
        """``(cursor, next_seq)``: byte position and sequence number of the next message."""
    @property
    def lag(self) -> int:
        """Messages sent but not yet read (or skipped) by this reader."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    def recv(self, timeout: Optional[float] = None) -> Message:
        """The next message; ``Empty`` after ``timeout`` s.

        ``QueueShutDown`` once the queue is shut down and drained.
        """
    def recv_nowait(self) -> Message:
        """``recv(timeout=0)``."""
    def recv_bytes(self, timeout: Optional[float] = None) -> bytes:
        """Like ``recv`` but return only the body."""
    def recv_many(self, max_messages: int = 1024, timeout: Optional[float] = 0.0) -> list[Message]:
        """Up to ``max_messages`` messages.

        Waits up to ``timeout`` for the first, then takes what is already there.
        """
    def _pop(
        self, timeout: Optional[float], decode: bool
    ) -> Union[tuple[str, str, str], tuple[bytes, bytes, bytes], None]:
        """pysyncq-style pop: ``(sender, type, body)`` as str or bytes, or ``None`` on timeout."""
    def _set_screens(
        self, exclude_senders: Optional[_Names], exclude_types: Optional[_Names]
    ) -> None:
        """Replace the exclusion screens (used by ``ringcast.pysyncq``)."""
    def close(self) -> None:
        """Leave: this reader no longer holds back writers."""
    def __enter__(self) -> Self:
        """Return the reader itself."""
    def __exit__(
        self,
        _t: Optional[type[BaseException]],
        _v: Optional[BaseException],
        _tb: Optional[TracebackType],
    ) -> Literal[False]:
        """Close the reader; exceptions propagate."""
    def __iter__(self) -> Self:
        """Return the reader itself."""
    def __next__(self) -> Message:
        """Block for the next message; stop iterating once the queue is shut down and drained."""
    def __reduce__(self) -> NoReturn:
        """Always raises ``TypeError``: a Reader cannot be pickled."""
    def __repr__(self) -> str: ...

def _message(sender: bytes, type: bytes, seq: int, body: bytes) -> Message:
    """Rebuild a Message (what unpickling one does)."""

def _attach_queue(
    name: str, sender: Optional[_Name] = None, spin_us: float = 20.0
) -> BroadcastQueue:
    """Attach to a queue by name (what unpickling a BroadcastQueue does)."""

def _open_queue(
    name: Optional[str],
    create: Optional[bool],
    capacity: int,
    align: int,
    sender: Optional[_Name] = None,
    max_members: int = 512,
) -> BroadcastQueue:
    """Create or attach a queue with an explicit record alignment (1, 8 or 64)."""

def segments() -> list[_SegmentInfo]:
    """Every ringcast segment in ``/dev/shm`` with its kind, size and members alive/dead."""

def inspect(name: str) -> _SegmentInfo:
    """Details of one segment (read-only; raises for a missing or foreign object)."""

def gc() -> list[str]:
    """Remove every segment whose members are all dead; return their names."""

def unlink(name: str) -> None:
    """Remove a segment name now (processes that have it mapped keep using it)."""

def record_size(body_len: int, type_len: int = 0, sender_len: int = 0, align: int = 8) -> int:
    """Capacity cost in bytes of a message (``align`` 8 for BroadcastQueue, 1 for PySyncQ)."""

def _close_all() -> int:
    """Leave every queue and reader this process holds; return how many segments it unlinked."""
