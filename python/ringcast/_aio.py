"""asyncio support for readers: waiting happens in a helper thread, receiving in the loop.

A helper thread only *waits* (``Reader._wait``, GIL released, in short slices) until a
message may be there; the message itself is taken by ``recv_nowait``/``lease(timeout=0)`` on
the event loop's thread. Cancelling an ``await`` therefore never loses a message: at worst a
helper thread finishes a wait slice for nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import TYPE_CHECKING, Any

from .errors import Empty, QueueShutDown

if TYPE_CHECKING:
    from ._ringcast import Lease, Message, Reader

# Longest single wait in a helper thread; bounds how long a cancelled wait keeps its thread.
_SLICE = 0.25
#: Helper threads at most (waits beyond this many at once queue for a thread).
_MAX_THREADS = 64

_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid = 0


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    import os

    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=_MAX_THREADS, thread_name_prefix="ringcast-aio"
            )
            _pool_pid = os.getpid()
        return _pool


async def _wait_until_ready(reader: Reader, deadline: float | None) -> bool:
    """Wait without blocking the loop until ``reader`` may have a message; False on timeout."""
    loop = asyncio.get_running_loop()
    while True:
        if deadline is None:
            step = _SLICE
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            step = min(left, _SLICE)
        if await loop.run_in_executor(_executor(), reader._wait, step):
            return True


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    return time.monotonic() + max(0.0, timeout)


async def recv_async(reader: Reader, timeout: float | None = None) -> Message:
    """Receive the next message without blocking the event loop."""
    deadline = _deadline(timeout)
    while True:
        try:
            return reader.recv_nowait()
        except Empty:
            pass
        if not await _wait_until_ready(reader, deadline):
            raise Empty(f"no message within {timeout} s")


async def anext(reader: Reader) -> Message:
    """``async for`` step: the next message, StopAsyncIteration once shut down and drained."""
    try:
        return await recv_async(reader, None)
    except QueueShutDown:
        raise StopAsyncIteration from None


class AsyncLease:
    """``async with reader.lease_async() as m:`` — see ``Reader.lease``."""

    def __init__(self, reader: Reader, timeout: float | None = None) -> None:
        self._reader = reader
        self._timeout = timeout
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        deadline = _deadline(self._timeout)
        while True:
            try:
                self._lease = self._reader.lease(0)
                return self._lease
            except Empty:
                pass
            if not await _wait_until_ready(self._reader, deadline):
                raise Empty(f"no message within {self._timeout} s")

    async def __aexit__(self, *exc: Any) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def __await__(self) -> Any:
        # ``m = await reader.lease_async()``: the caller releases it.
        return self.__aenter__().__await__()
