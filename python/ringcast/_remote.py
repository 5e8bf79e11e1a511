"""An exception raised in another process (or a Rust thread), carried with its traceback.

One record format serves every place an exception crosses to another process: the h5
workers (Python processes and the native Rust readers) and the pipeline's process steps.
A record is :data:`MAGIC`, then four fields, each a ``u32`` little-endian length and its
bytes:

1. the exception type's qualified name (UTF-8, e.g. ``ringcast.h5.ReadError``);
2. its message, ``str(exc)`` (UTF-8);
3. its formatted traceback (UTF-8, may be empty);
4. the pickled exception (may be empty: Rust writes none).

Rust writes records too (``error_record`` in the native HDF5 reader), so the format
needs no pickle to be read. :func:`unpack` turns a record back into the exception to raise.
"""

from __future__ import annotations

import pickle
import struct
import sys
import traceback
from typing import Callable, Optional

from .errors import RingcastError

__all__ = ["MAGIC", "RemoteError", "RemoteTraceback", "pack", "unpack"]

#: First bytes of every record (the format's version is its last byte).
MAGIC = b"RCX1"
_LEN = struct.Struct("<I")
#: Characters of a cut-short record's text kept in the exception's message.
CUT_SHORT_TEXT = 500


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker process.

    Attached as ``__cause__`` of the exception re-raised in the parent (as
    ``concurrent.futures`` does), so the worker's traceback is printed with it.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class RemoteError(RingcastError):
    """Stands for a worker's exception that could not be pickled or unpickled.

    Its message is ``"<module>.<type>: <message>"``; the traceback is in ``__cause__``.
    """


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__: its repr, or nothing
        try:
            return repr(exc)
        except Exception:  # noqa: BLE001
            return ""


def pack(exc: BaseException, tb: Optional[str] = None) -> bytes:
    """The record of ``exc``: its type's name, message, traceback (``tb``, or the one of
    ``exc``) and pickle (empty if it does not pickle)."""
    if tb is None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps(exc, protocol=5)
    except Exception:  # noqa: BLE001 - sent as text only
        blob = b""
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    parts = [MAGIC]
    for field in (name.encode(), _message(exc).encode("utf-8", "replace"), tb.encode(), blob):
        parts.append(_LEN.pack(len(field)))
        parts.append(field)
    return b"".join(parts)


def _fields(data: bytes) -> tuple[list[bytes], bool]:
    """The fields of a record and whether all four are complete (False: cut short)."""
    fields: list[bytes] = []
    if data[: len(MAGIC)] != MAGIC:
        return fields, False
    at = len(MAGIC)
    while len(fields) < 4:
        if at + _LEN.size > len(data):
            return fields, False
        (n,) = _LEN.unpack_from(data, at)
        at += _LEN.size
        fields.append(data[at : at + n])
        if at + n > len(data):
            return fields, False
        at += n
    return fields, True


def _named_class(name: str) -> Optional[type]:
    """The ringcast exception class called ``name``, if its module is loaded (never imports)."""
    if not name.startswith("ringcast."):
        return None
    module, _, attr = name.rpartition(".")
    while module:
        mod = sys.modules.get(module)
        if mod is not None:
            obj: object = mod
            for part in attr.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, type) and issubclass(obj, RingcastError):
                return obj
            return None
        module, _, head = module.rpartition(".")
        attr = f"{head}.{attr}"
    return None


def _rebuild(name: str, message: str, blob: bytes) -> BaseException:
    if blob:
        try:
            exc = pickle.loads(blob)
        except Exception:  # noqa: BLE001 - e.g. an exception class whose __init__ differs
            exc = None
        if isinstance(exc, BaseException):
            return exc
    cls = _named_class(name)
    if cls is not None:
        try:
            made = cls(message)
        except Exception:  # noqa: BLE001 - a class that takes other arguments
            made = None
        if isinstance(made, BaseException):
            return made
    return RemoteError(f"{name}: {message}")


def unpack(
    data: bytes,
    origin: Optional[str] = None,
    cut_short: Callable[[str], BaseException] = RemoteError,
) -> BaseException:
    """The exception a record stands for, to be raised.

    That is the unpickled exception if the record has one that loads; else the named class
    if it is a ringcast exception taking a message; else a :class:`RemoteError`
    ``"<type>: <message>"``. A non-empty traceback is attached as ``__cause__`` (a
    :class:`RemoteTraceback`), and ``origin``, if given, as a note ``(raised in <origin>)``.
    A record cut short (or not a record) gives ``cut_short(text)`` instead, ``text`` being
    what could be read of it.
    """
    fields, whole = _fields(bytes(data))
    text = [f.decode("utf-8", "replace") for f in fields[:3]]
    if not whole:
        if not fields:
            readable = bytes(data).decode("utf-8", "replace")
        else:
            readable = ": ".join(t for t in text[:2] if t)
            if len(text) > 2 and text[2]:
                readable += "\n" + text[2]
        cut = cut_short(readable[:CUT_SHORT_TEXT])
        cut.__suppress_context__ = True  # nothing local led to it
        return cut
    name, message, tb = text
    exc = _rebuild(name, message, fields[3])
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    if origin is not None and hasattr(exc, "add_note"):
        exc.add_note(f"(raised in {origin})")
    return exc
