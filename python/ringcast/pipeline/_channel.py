"""The queue between two pipeline steps: bounded, blocking, closable, with worker accounting.

A channel has one consumer *step* (one or more worker threads) and one or more producers. It is
a ``deque`` guarded by one lock; a thread that has to wait parks on a lock of its own that is
released by whoever makes progress possible (no polling, no timed retries). What it adds to
``queue.Queue``:

* **end of input** (:meth:`Channel.end`): no producer will put again. A consumer gets
  :data:`END` once the channel is ended, empty, and *no worker of the consuming step still
  holds an item*. The last condition is what makes retries safe: a worker that fails on an item
  puts it back (:meth:`Channel.requeue`) before it asks for the next one, so the end of input
  can never overtake a retried item.
* **abort** (:meth:`Channel.abort`): the consumer gave up. Queued items are discarded and
  counted, producers' ``put`` returns ``False`` at once (also when blocked on a full channel),
  and consumers get :data:`END`. A failure propagates upstream this way.
* ``capacity=None`` makes the channel unbounded (the pipeline's own input, as in paipa);
  :meth:`Channel.requeue` always bypasses the capacity, so a worker never waits for room in its
  own input.
"""

from __future__ import annotations

from collections import deque
from threading import Lock
from typing import Any, Optional

__all__ = ["Channel", "END", "TIMEOUT"]


class Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


END = Marker("END")
"""Returned by :meth:`Channel.get` when no item will ever come."""

TIMEOUT = Marker("TIMEOUT")
"""Returned by :meth:`Channel.get` when its timeout passed without an item."""


class Channel:
    """A bounded FIFO between pipeline steps (see the module docstring)."""

    __slots__ = (
        "name",
        "capacity",
        "discarded",
        "_items",
        "_lock",
        "_getters",
        "_putters",
        "_ended",
        "_aborted",
        "_busy",
    )

    def __init__(self, capacity: Optional[int] = None, name: str = "") -> None:
        self.name = name
        self.capacity = capacity
        self.discarded = 0
        self._items: deque = deque()
        self._lock = Lock()
        self._getters: deque = deque()  # parked consumers (their locks)
        self._putters: deque = deque()  # parked producers
        self._ended = False
        self._aborted = False
        self._busy = 0  # consumer workers holding an item taken from this channel

    # -- state ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        state = "aborted" if self._aborted else "ended" if self._ended else "open"
        return f"<Channel {self.name!r} {state} depth={len(self._items)} cap={self.capacity}>"

    @property
    def ended(self) -> bool:
        """True once :meth:`end` was called."""
        return self._ended

    @property
    def aborted(self) -> bool:
        """True once :meth:`abort` was called."""
        return self._aborted

    @property
    def exhausted(self) -> bool:
        """True when no item is queued and none will come (ended and empty, or aborted)."""
        with self._lock:
            return self._aborted or (self._ended and not self._items)

    # -- waiting -------------------------------------------------------------------------------

    def _park(self, waiters: deque, timeout: Optional[float]) -> bool:
        """Wait until woken (True) or the timeout passed (False). Called with the lock held."""
        me = Lock()
        me.acquire()
        waiters.append(me)
        self._lock.release()
        woken = False
        try:
            woken = me.acquire(True, -1 if timeout is None else timeout)
        finally:
            self._lock.acquire()
            if not woken:
                try:
                    waiters.remove(me)
                except ValueError:  # woken at the same moment the timeout passed
                    woken = True
        return woken

    @staticmethod
    def _wake_all(waiters: deque) -> None:
        while waiters:
            waiters.popleft().release()

    # -- producer side -------------------------------------------------------------------------

    def put(self, item: Any) -> bool:
        """Append ``item``, waiting while the channel is full.

        Returns False (and counts the item as discarded) if the channel was aborted.
        """
        with self._lock:
            cap = self.capacity
            if cap is not None:
                items = self._items
                while len(items) >= cap and not self._aborted:
                    self._park(self._putters, None)
            if self._aborted:
                self.discarded += 1
                return False
            self._items.append(item)
            if self._getters:
                self._getters.popleft().release()
            return True

    def put_unbounded(self, items: Any) -> bool:
        """Append every item of ``items`` without regard to the capacity (one lock round).

        Returns False if the channel was aborted or ended (nothing is appended then).
        """
        with self._lock:
            if self._aborted or self._ended:
                return False
            self._items.extend(items)
            self._wake_all(self._getters)
            return True

    def requeue(self, item: Any) -> bool:
        """Put back an item taken by a worker that still holds its busy mark (a retry).

        Bypasses the capacity. Returns False if the channel was aborted.
        """
        with self._lock:
            if self._aborted:
                self.discarded += 1
                return False
            self._items.append(item)
            if self._getters:
                self._getters.popleft().release()
            return True

    def end(self) -> None:
        """No producer will put any more (idempotent)."""
        with self._lock:
            self._ended = True
            self._wake_all(self._getters)

    # -- consumer side -------------------------------------------------------------------------

    def get(self, done: bool, timeout: Optional[float] = None) -> Any:
        """Take the next item, waiting for one; the caller then holds a busy mark.

        ``done`` says the caller finished the item it took last (its busy mark is dropped).
        Returns :data:`END` when the channel is aborted, or ended, empty and no other worker
        holds an item; :data:`TIMEOUT` if ``timeout`` passed first (no busy mark then).
        """
        with self._lock:
            if done:
                self._busy -= 1
            items = self._items
            while True:
                if items:
                    item = items.popleft()
                    self._busy += 1
                    if self._putters:
                        self._putters.popleft().release()
                    return item
                if self._aborted or (self._ended and self._busy == 0):
                    self._wake_all(self._getters)
                    return END
                if not self._park(self._getters, timeout):
                    return TIMEOUT

    def leave(self, done: bool) -> None:
        """A consumer worker stops taking items; ``done`` as for :meth:`get`."""
        with self._lock:
            if done:
                self._busy -= 1
            if self._busy == 0 and (self._ended or self._aborted):
                self._wake_all(self._getters)

    def abort(self) -> int:
        """Give up on this channel: discard what is queued and wake everybody.

        Returns the number of items discarded by this call.
        """
        with self._lock:
            n = len(self._items)
            self.discarded += n
            self._items.clear()
            self._aborted = True
            self._wake_all(self._getters)
            self._wake_all(self._putters)
            return n
