"""A PySyncQ instance's process-local backlog: its own unread messages, moved out of the ring.

pysyncq's writer is also a reader (D13): its unread messages (its own, screened or not, and
everyone else's) hold ring space until it pops them. A blocking ``append`` that waited for
space only its own unread messages held could never succeed (pysyncq's own benchmark
deadlocked this way with three or more processes). So before it waits, ``append`` moves this
instance's unread messages, exactly as they are in the ring, into this backlog; ``pop``
delivers the backlog first, in ring order, screening it when it is popped, as the ring would
have been. What an instance receives is unchanged; only where it waits differs.
"""

from __future__ import annotations

import collections
from typing import Any, Optional, Union

from .header import message_header_bytes, qset

#: ``(sender, type, body, i, slno)`` of one message taken out of the ring.
Entry = tuple[bytes, bytes, bytes, int, int]
Msg = tuple[Union[str, bytes], Union[str, bytes], Union[str, bytes]]

_NO_SCREENS: tuple[()] = ()

#: The smallest default limit of a backlog, in bytes (see :func:`default_limit`).
MIN_LIMIT = 64 << 20


def default_limit(ring_bytes: int) -> int:
    """Bytes a backlog may hold before ``append`` raises instead of moving more into it:
    four rings' worth, and at least 64 MiB."""
    return max(MIN_LIMIT, 4 * ring_bytes)


class Backlog:
    """Messages taken out of the ring for one instance, oldest first."""

    __slots__ = ("entries", "nbytes")

    def __init__(self) -> None:
        self.entries: collections.deque[Entry] = collections.deque()
        self.nbytes = 0

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0

    def head(self) -> Optional[tuple[int, int]]:
        """``(i, slno)`` of the oldest message, or ``None`` when empty."""
        return self.entries[0][3:] if self.entries else None

    def take_one(self, reader: Any, ring_bytes: int) -> bool:
        """Move the next message ``reader`` has not read yet into the backlog, unscreened
        (the screens apply when it is popped). Return whether there was one. The caller
        must push its screens to the reader again before its next receive."""
        reader._set_screens(_NO_SCREENS, _NO_SCREENS)
        pos, seq = reader.position
        m = reader._pop(0.0, False)
        if m is None:
            return False
        s, t, b = m
        self.entries.append((s, t, b, pos % ring_bytes if ring_bytes else 0, seq % 2**64))
        self.nbytes += message_header_bytes + len(s) + len(t) + len(b)
        return True

    def pop(self, scrnsend: qset, scrntype: qset, decode: bool) -> Optional[Msg]:
        """The oldest unscreened message, or ``None`` once the backlog is empty. Screened
        messages are dropped on the way, as ``pop`` consumes them in the ring. A message that
        is not valid UTF-8 raises ``UnicodeDecodeError`` with ``decode`` and stays first."""
        entries = self.entries
        while entries:
            s, t, b, _, _ = entries[0]
            out: Optional[Msg] = None
            if not (s in scrnsend or t in scrntype):
                out = (s.decode(), t.decode(), b.decode()) if decode else (s, t, b)
            entries.popleft()
            self.nbytes -= message_header_bytes + len(s) + len(t) + len(b)
            if out is not None:
                return out
        return None
