"""Constants and screening sets of the pysyncq compatibility layer (``pysyncq.header``)."""

from __future__ import annotations

import resource
from collections.abc import Iterable
from typing import Any

#: Default queue size in bytes: one page, as in pysyncq.
defsize: int = resource.getpagesize()

#: Bytes of the queue header that ``size`` includes (the ring holds ``size - 40``).
queue_header_bytes: int = 40

#: Bytes of the per-message header: a message costs ``16 + len(sender) + len(type) + len(body)``.
message_header_bytes: int = 16

#: The largest ``size`` pysyncq accepts.
maxshmemory: int = queue_header_bytes + (2**64 - 1) * message_header_bytes


def _norm(x: Any) -> bytes:
    return x if type(x) is bytes else str(x).encode()


class qset(set):
    """A ``set`` of bytes used for screening senders and types.

    Like pysyncq's, ``add`` stores ``bytes`` unchanged and anything else as
    ``str(x).encode()``. Unlike pysyncq's, every other method normalises too, so
    ``'me' in s``, ``s.discard('me')``, ``s.update(['x'])`` and ``s |= {'x'}`` work as expected.
    """

    __slots__ = ("_version",)

    def __init__(self, iterable: Iterable[Any] = ()) -> None:
        super().__init__(_norm(x) for x in iterable)
        self._version = 0

    def _bump(self) -> None:
        self._version = getattr(self, "_version", 0) + 1

    def add(self, x: Any) -> None:
        super().add(_norm(x))
        self._bump()

    def discard(self, x: Any) -> None:
        super().discard(_norm(x))
        self._bump()

    def remove(self, x: Any) -> None:
        super().remove(_norm(x))
        self._bump()

    def pop(self) -> bytes:
        v = super().pop()
        self._bump()
        return v

    def clear(self) -> None:
        super().clear()
        self._bump()

    def update(self, *others: Iterable[Any]) -> None:
        for o in others:
            super().update(_norm(x) for x in o)
        self._bump()

    def difference_update(self, *others: Iterable[Any]) -> None:
        for o in others:
            super().difference_update(_norm(x) for x in o)
        self._bump()

    def intersection_update(self, *others: Iterable[Any]) -> None:
        for o in others:
            super().intersection_update({_norm(x) for x in o})
        self._bump()

    def symmetric_difference_update(self, other: Iterable[Any]) -> None:
        super().symmetric_difference_update({_norm(x) for x in other})
        self._bump()

    def __contains__(self, x: object) -> bool:
        return super().__contains__(_norm(x))

    def __ior__(self, other: Any) -> qset:  # type: ignore[misc]
        self.update(other)
        return self

    def __isub__(self, other: Any) -> qset:  # type: ignore[misc]
        self.difference_update(other)
        return self

    def __iand__(self, other: Any) -> qset:  # type: ignore[misc]
        self.intersection_update(other)
        return self

    def __ixor__(self, other: Any) -> qset:  # type: ignore[misc]
        self.symmetric_difference_update(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (qset, (list(self),))
