"""ringcast: fast, safe shared-memory data movement between processes on one machine.

The broadcast queue (:class:`BroadcastQueue`) gives every reader every message, each reader
with its own cursor in shared memory. :class:`PySyncQ` is a drop-in replacement for
``pysyncq.pysyncq.PySyncQ``.
"""

from __future__ import annotations

import atexit as _atexit
import multiprocessing.util as _mp_util

from . import errors
from ._ringcast import (
    BroadcastQueue,
    Lease,
    Message,
    Reader,
    Reservation,
    gc,
    inspect,
    record_size,
    segments,
    unlink,
)
from ._ringcast import __version__ as __version__  # the Cargo package's version
from ._ringcast import _close_all as _close_all
from .errors import *  # noqa: F403  (every exception, listed in errors.__all__)
from .pysyncq import PySyncQ


def array_meta(msg: object) -> object:
    """The metadata sent with an array message (``send_array(..., meta=...)``), or ``None``.

    ``msg`` is a ``Message``, a ``Lease`` or a message body. Raises ``ValueError`` if it is
    not an array message.
    """
    from ._array import array_meta as _array_meta  # numpy is imported only when needed

    return _array_meta(msg)


__all__ = [
    "BroadcastQueue",
    "Reader",
    "Message",
    "Lease",
    "Reservation",
    "PySyncQ",
    "segments",
    "inspect",
    "gc",
    "unlink",
    "record_size",
    "array_meta",
    "errors",
]
__all__ += errors.__all__


# Leave every queue still held when the interpreter exits, so the last one out removes the
# segment. atexit covers normal exits. multiprocessing children end with os._exit after running
# multiprocessing's finalizers; a fork or forkserver child starts with that registry cleared,
# so the finalizer is registered again after every fork.
class _ExitHook:
    def install(self) -> None:
        _mp_util.Finalize(None, _close_all, exitpriority=-100)


_exit_hook = _ExitHook()
_atexit.register(_close_all)
_exit_hook.install()
_mp_util.register_after_fork(_exit_hook, _ExitHook.install)
