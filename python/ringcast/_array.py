"""Array messages: a small header (dtype and shape) followed by the array's bytes.

Layout of an array message body (little-endian)::

    b"RCNDARR1" | u32 ndim | u32 len(dtype text) | u64 shape[ndim] | dtype text | pad
    | data (C order), starting at a multiple of 64 bytes from the body start

With metadata (``send_array(..., meta={...})``) the magic is ``b"RCNDARR2"``, a ``u32
len(meta)`` follows the dtype length, and the metadata (UTF-8 JSON) follows the dtype text.

The dtype text is numpy's ``dtype.str`` for plain dtypes, or the repr of
``numpy.lib.format.dtype_to_descr`` for structured ones (prefixed by ``"descr:"``). Only the
bindings call these helpers.
"""

from __future__ import annotations

import ast
import functools
import json
import struct
from typing import Any

import numpy as np

MAGIC = b"RCNDARR1"
MAGIC_META = b"RCNDARR2"
_ALIGN = 64
_FIXED = struct.Struct("<8sII")
_FIXED_META = struct.Struct("<8sIII")


@functools.lru_cache(maxsize=256)
def _dtype_text(dtype: np.dtype[Any]) -> bytes:
    if dtype.fields is None and dtype.subdtype is None and not dtype.hasobject:
        return dtype.str.encode()
    if dtype.hasobject:
        raise TypeError("arrays of Python objects cannot be sent as array messages")
    return b"descr:" + repr(np.lib.format.dtype_to_descr(dtype)).encode()


@functools.lru_cache(maxsize=256)
def _dtype_from_text(text: bytes) -> np.dtype[Any]:
    if text.startswith(b"descr:"):
        return np.lib.format.descr_to_dtype(ast.literal_eval(text[6:].decode()))
    return np.dtype(text.decode())


@functools.lru_cache(maxsize=256)
def _header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    text = _dtype_text(dtype)
    raw = _FIXED.pack(MAGIC, len(shape), len(text)) + struct.pack(f"<{len(shape)}Q", *shape) + text
    return raw + b"\0" * (-len(raw) % _ALIGN)


def header_for(shape: Any, dtype: Any) -> tuple[bytes, int, np.dtype[Any], tuple[int, ...]]:
    """Header bytes, data size, dtype and shape of an array message."""
    dt = np.dtype(dtype)
    if isinstance(shape, int):
        shape = (shape,)
    shp = tuple(int(s) for s in shape)
    if any(s < 0 for s in shp):
        raise ValueError(f"array shape must not be negative, got {shp}")
    head = _header(dt, shp)
    nbytes = dt.itemsize
    for s in shp:
        nbytes *= s
    return head, nbytes, dt, shp


def _meta_header(dtype: np.dtype[Any], shape: tuple[int, ...], meta: bytes) -> bytes:
    text = _dtype_text(dtype)
    raw = (
        _FIXED_META.pack(MAGIC_META, len(shape), len(text), len(meta))
        + struct.pack(f"<{len(shape)}Q", *shape)
        + text
        + meta
    )
    return raw + b"\0" * (-len(raw) % _ALIGN)


def encode(arr: Any, meta: Any = None) -> tuple[bytes, Any]:
    """Header and C-contiguous data of ``arr`` (no copy if it is already contiguous);
    ``meta`` (JSON-serialisable) travels in the header."""
    a = np.asarray(arr)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    if meta is None:
        head, _, _, _ = header_for(a.shape, a.dtype)
    else:
        blob = json.dumps(meta, separators=(",", ":")).encode()
        head = _meta_header(a.dtype, tuple(int(s) for s in a.shape), blob)
    return head, a


def _parse_full(buf: Any) -> tuple[np.dtype[Any], tuple[int, ...], int, bytes]:
    mv = memoryview(buf).cast("B")
    if mv.nbytes >= _FIXED_META.size and mv[:8] == MAGIC_META:
        _, ndim, tlen, mlen = _FIXED_META.unpack_from(mv)
        fixed = _FIXED_META.size
    elif mv.nbytes >= _FIXED.size and mv[:8] == MAGIC:
        _, ndim, tlen = _FIXED.unpack_from(mv)
        mlen, fixed = 0, _FIXED.size
    else:
        raise ValueError(
            "not an array message (send it with BroadcastQueue.send_array, or pass dtype=)"
        )
    tstart = fixed + 8 * ndim
    end = tstart + tlen + mlen
    if ndim > 64 or end > mv.nbytes:
        raise ValueError("damaged array message header")
    shape = struct.unpack_from(f"<{ndim}Q", mv, fixed)
    dt = _dtype_from_text(bytes(mv[tstart : tstart + tlen]))
    meta = bytes(mv[tstart + tlen : end])
    off = end + (-end % _ALIGN)
    n = dt.itemsize
    for s in shape:
        n *= s
    if off + n != mv.nbytes:
        raise ValueError(f"array message of {mv.nbytes} bytes does not hold {shape} {dt}")
    return dt, tuple(shape), off, meta


def parse(buf: Any) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """dtype, shape and data offset of an array message body; ValueError if it is not one."""
    dt, shape, off, _ = _parse_full(buf)
    return dt, shape, off


def array_meta(buf: Any) -> Any:
    """The metadata sent with an array message (``send_array(..., meta=...)``), or ``None``.

    ``buf`` is a message body, a ``Message`` or a ``Lease``.
    """
    body = getattr(buf, "body", buf)
    _, _, _, meta = _parse_full(body)
    return json.loads(meta) if meta else None


def view(buf: Any, dtype: Any = None, shape: Any = None) -> np.ndarray[Any, Any]:
    """A zero-copy array over ``buf``: an array message, or raw bytes of ``dtype``."""
    if dtype is None:
        if shape is not None:
            raise ValueError("shape= needs dtype= (array messages carry their own shape)")
        dt, shp, off = parse(buf)
        return np.frombuffer(buf, dtype=dt, count=_count(shp), offset=off).reshape(shp)
    a = np.frombuffer(buf, dtype=np.dtype(dtype))
    return a if shape is None else a.reshape(shape)


def copy(buf: Any, dtype: Any = None, shape: Any = None) -> np.ndarray[Any, Any]:
    """A writable copy (one copy) of what :func:`view` would show."""
    return view(buf, dtype, shape).copy()


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
