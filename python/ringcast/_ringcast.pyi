"""Type stub of the compiled module ``ringcast._ringcast`` (rust/ringcast-py/src/lib.rs).

The public names are re-exported by ``ringcast``; names starting with ``_`` are internal
(used by ``ringcast.pysyncq`` and by pickling). The ``TypedDict`` classes below exist only
for type checkers: they cannot be imported at run time.
"""

import builtins
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, NoReturn, Optional, TypedDict, Union, final

import numpy as np
from typing_extensions import Buffer, Self

__all__ = [
    "BroadcastQueue",
    "Reader",
    "Message",
    "Lease",
    "Reservation",
    "_SlotRing",
    "_SlotBlock",
    "_Codec",
    "_native_start",
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
    "__version__",
]

_Name = Union[str, bytes]
_Names = Union[str, bytes, Iterable[Union[str, bytes]]]
_Users = Iterable[Union[int, str]]

#: The package's version: the Cargo package version the module was built from.
__version__: str

#: Bytes of the fixed header of every record (``u32 body_len, u16 sender_len,
#: u16 type_len, u64 seq``).
RECORD_HEADER_BYTES: Final = 16

class _MemberStats(TypedDict):
    """One active member slot, as reported by ``BroadcastQueue.stats()``."""

    slot: int
    kind: Literal["reader", "handle", "group", "group_member"]
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
    lossy: bool
    pinned: Optional[int]
    missed: int
    redelivered: int
    leases: int
    group: Optional[str]
    orphan: bool

class _GroupStats(TypedDict):
    """Figures of one consumer group in ``BroadcastQueue.stats()["groups"]``."""

    lag_messages: int
    lag_bytes: int
    orphaned_claims: int
    members: int

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
    overruns: int
    redelivered: int
    claims_lost: int
    groups: dict[str, _GroupStats]
    recv_waits: int
    recv_blocked_s: float
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
    owner: int
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
    @property
    def missed(self) -> int:
        """Messages a lossy reader missed (lapped by writers) just before this one."""
    @property
    def redelivered(self) -> bool:
        """Whether a consumer group delivers this message again (its first member died)."""
    def array(self, dtype: Any = None, shape: Any = None) -> np.ndarray[Any, Any]:
        """The body as a read-only numpy array (an array message, or raw data of ``dtype``)."""
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
        allow_users: Optional[_Users] = None,
    ) -> Self:
        """Create (``create=True``), attach (``False``) or either (``None``) a queue by name.

        ``mode`` is the exact mode of a created segment; attaching accepts a segment that its
        group or other users may write only if ``mode`` grants the same. ``allow_users``
        (uids or user names) are owners accepted besides this user and root.
        """
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
        lossy: bool = False,
        group: Optional[str] = None,
    ) -> Reader:
        """A new reader that receives every message sent from now on, optionally screened.

        ``lossy=True`` never holds back writers (missed messages are counted);
        ``group="name"`` joins a consumer group (each message to one of its members).
        """
    def send_array(
        self,
        array: Any,
        type: Optional[_Name] = None,
        *,
        timeout: Optional[float] = None,
        meta: Any = None,
    ) -> int:
        """Send a numpy array with its dtype, shape and optional JSON ``meta``."""
    def reserve(
        self, nbytes: int, type: Optional[_Name] = None, *, timeout: Optional[float] = None
    ) -> Reservation:
        """Reserve room for a ``nbytes`` message to fill in place; publish on commit."""
    def reserve_array(
        self,
        shape: Union[int, tuple[int, ...]],
        dtype: Any,
        type: Optional[_Name] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Reservation:
        """``reserve`` for an array message of ``shape`` and ``dtype``."""
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
    @property
    def lossy(self) -> bool:
        """Whether this reader is lossy (never holds back writers)."""
    @property
    def group(self) -> Optional[str]:
        """The consumer group this reader belongs to, if any."""
    @property
    def missed(self) -> int:
        """Messages this lossy reader missed because writers lapped it, in total."""
    @property
    def leases_held(self) -> int:
        """Leases handed out and not yet ended."""
    @property
    def spin_us(self) -> float:
        """Spin window (microseconds) before a blocking receive sleeps."""
    @spin_us.setter
    def spin_us(self, v: float) -> None: ...
    def recv_array(
        self, timeout: Optional[float] = None, *, dtype: Any = None, shape: Any = None
    ) -> np.ndarray[Any, Any]:
        """Receive an array message as a new writable numpy array (one copy)."""
    def lease(self, timeout: Optional[float] = None) -> Lease:
        """Lease the next message: a zero-copy read-only view of its body."""
    def ack(self) -> None:
        """For a consumer-group reader: finish the message received last."""
    def _wait(self, timeout: Optional[float]) -> bool:
        """Wait until a message may be readable, without receiving it."""
    def recv_async(self, timeout: Optional[float] = None) -> Coroutine[Any, Any, Message]:
        """``await``-able ``recv`` that never blocks the event loop."""
    def lease_async(self, timeout: Optional[float] = None) -> _AsyncLease:
        """``async with reader.lease_async() as m:``."""
    def __aiter__(self) -> Self:
        """Return the reader itself."""
    def __anext__(self) -> Coroutine[Any, Any, Message]:
        """The next message; stops once the queue is shut down and drained."""
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

class _AsyncLease:
    async def __aenter__(self) -> Lease: ...
    async def __aexit__(self, *exc: object) -> None: ...
    def __await__(self) -> Any: ...

@final
class Lease:
    """A leased message: a read-only zero-copy view of its body in shared memory."""

    @property
    def seq(self) -> int:
        """The message's sequence number."""
    @property
    def sender(self) -> str:
        """The sender's name."""
    @property
    def type(self) -> str:
        """The message type."""
    @property
    def missed(self) -> int:
        """Messages missed just before this one (0: lossy readers cannot lease)."""
    @property
    def redelivered(self) -> bool:
        """Whether a consumer group delivers this message again."""
    @property
    def body(self) -> memoryview:
        """A read-only memoryview of the body (keeps the lease while it lives)."""
    @property
    def released(self) -> bool:
        """Whether the lease was released."""
    @property
    def views(self) -> int:
        """Views of the body still alive."""
    def array(self, dtype: Any = None, shape: Any = None) -> np.ndarray[Any, Any]:
        """The body as a read-only numpy array, zero-copy (keeps the lease while it lives)."""
    def tobytes(self) -> bytes:
        """A copy of the body."""
    def release(self) -> None:
        """Give the lease back; views still alive keep the memory until they are gone."""
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        _t: Optional[builtins.type[BaseException]],
        _v: Optional[BaseException],
        _tb: Optional[TracebackType],
    ) -> Literal[False]: ...
    def __reduce__(self) -> NoReturn: ...
    def __repr__(self) -> str: ...

@final
class Reservation:
    """Room for one message in the ring, filled in place (``BroadcastQueue.reserve``)."""

    @property
    def views(self) -> int:
        """Views of the reserved space still alive."""
    @property
    def seq(self) -> Optional[int]:
        """The sequence number, once committed."""
    def array(self, dtype: Any = None, shape: Any = None) -> np.ndarray[Any, Any]:
        """A writable numpy view of the reserved space."""
    def commit(self) -> int:
        """Publish the message; returns its sequence number."""
    def abort(self) -> None:
        """Drop the reservation: nothing is published."""
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        t: Optional[type[BaseException]],
        _v: Optional[BaseException],
        _tb: Optional[TracebackType],
    ) -> Literal[False]: ...
    def __reduce__(self) -> NoReturn: ...
    def __repr__(self) -> str: ...

@final
class _SlotRing:
    """A slot ring (internal to ``ringcast.h5``)."""

    def __new__(
        cls,
        name: str,
        *,
        create: bool,
        n_slots: int = 0,
        slot_bytes: int = 0,
        tasks: Optional[int] = None,
        max_members: int = 64,
        mode: int = 0o600,
    ) -> Self: ...
    def join(self, role: str) -> None:
        """Register this process as a ``"worker"`` or ``"consumer"``."""
    @property
    def name(self) -> str: ...
    @property
    def n_slots(self) -> int: ...
    @property
    def slot_bytes(self) -> int: ...
    @property
    def tasks_started(self) -> int:
        """Tasks handed to workers so far."""
    def claim(self, timeout: Optional[float] = None) -> Optional[tuple[int, int, memoryview]]:
        """Worker: ``(slot, task, writable view)``, or ``None`` when the tasks ran out."""
    def publish(self, slot: int, nbytes: int, error: bool = False) -> None:
        """Worker: publish a claimed slot."""
    def take(
        self, want: Optional[int] = None, timeout: Optional[float] = None
    ) -> Optional[_SlotBlock]:
        """Consumer: the next ready block, or ``None`` at the end."""
    def stop(self) -> None:
        """Stop the workers."""
    def retire(self, timeout: float) -> bool:
        """Stop, and wait up to ``timeout`` s for the readers to leave; whether they did."""
    def recycle(self, tasks: Optional[int]) -> None:
        """Make a retired ring new for ``tasks`` tasks (``None``: cyclic)."""
    def states(self) -> list[int]:
        """State of each slot."""
    def close(self) -> None:
        """Leave the ring."""

@final
class _SlotBlock:
    """A block taken from a slot ring: a read-only view of its slot."""

    @property
    def task(self) -> int: ...
    @property
    def error(self) -> bool: ...
    @property
    def released(self) -> bool: ...
    @property
    def views(self) -> int: ...
    def release(self) -> None:
        """Give the slot back (views alive keep it)."""
    def tobytes(self) -> bytes: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...

@final
class _Codec:
    """How an extent of the native read path is stored (internal to ``ringcast.h5``; the
    values of ``ringcast_h5::Codec``)."""

    RAW: ClassVar[_Codec]
    DEFLATE: ClassVar[_Codec]
    LZ4: ClassVar[_Codec]
    BITSHUFFLE_LZ4: ClassVar[_Codec]
    def __int__(self) -> int: ...
    def __eq__(self, other: object, /) -> bool: ...

def _native_start(
    ring: _SlotRing,
    path: str,
    row_bytes: int,
    n_rows: int,
    block_rows: int,
    cyclic: bool,
    extents: list[tuple[int, int, int, int, int, _Codec, int]],
    threads: int,
) -> None:
    """Start native reading threads filling ``ring`` (internal to ``ringcast.h5``); a
    consumer taking from ``ring`` with nothing ready reads a block itself."""

def _message(
    sender: bytes,
    type: bytes,
    seq: int,
    body: bytes,
    missed: int = 0,
    redelivered: bool = False,
) -> Message:
    """Rebuild a Message (what unpickling one does)."""

def _attach_queue(
    name: str,
    sender: Optional[_Name] = None,
    spin_us: float = 20.0,
    mode: int = 0o600,
    allow_users: Optional[_Users] = None,
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
    """Remove every segment of this user whose members are all dead; return their names."""

def unlink(name: str) -> None:
    """Remove a segment name now (processes that have it mapped keep using it)."""

def record_size(body_len: int, type_len: int = 0, sender_len: int = 0, align: int = 8) -> int:
    """Capacity cost in bytes of a message (``align`` 8 for BroadcastQueue, 1 for PySyncQ)."""

def _close_all() -> int:
    """Leave every queue and reader this process holds; return how many segments it unlinked."""
