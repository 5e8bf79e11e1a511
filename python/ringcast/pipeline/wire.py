"""The messages of a process step's two queues: a header, the in-band pickle, then each
out-of-band buffer (a numpy array's data, not pickled), each 64-byte aligned.

Header (:data:`HEADER`): kind (byte 0, one of the kinds below), 0, the number of out-of-band
buffers, the worker's index, the sequence number, busy seconds, the in-band length; then one
``u64`` length per out-of-band buffer.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, Callable

from ..errors import Full

#: How long a sender waiting for room, or a waiting worker or collector, sleeps before it
#: checks on its peers.
POLL = 0.05
#: Messages up to this size are assembled in memory and sent; larger ones are written in place.
SMALL = 1 << 16

# Message kinds (byte 0 of every message).
ITEM, META = 1, 2  # parent -> worker
OK, OK_META, SKIP, ERR, ERR_META, REQUEUE, READY, INIT_FAIL, BYE = range(10, 19)

#: kind, 0, number of out-of-band buffers, worker index, seq, busy seconds, in-band length
HEADER = struct.Struct("<BBHIqdQ")
#: Alignment of the in-band pickle and of each out-of-band buffer in a message.
ALIGN = 64


def _align(n: int) -> int:
    return n + (-n % ALIGN)


def encode(kind: int, seq: int, worker: int, busy: float, obj: Any) -> tuple[int, list]:
    """The size of the message and its parts ``[(offset, bytes-like)]``."""
    bufs: list = []
    inband = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    try:
        raws = [b.raw() for b in bufs]
    except BufferError:  # a non-contiguous buffer: pickle everything in-band
        raws = []
        inband = pickle.dumps(obj, protocol=5)
    lens = [r.nbytes for r in raws]
    head = HEADER.pack(kind, 0, len(raws), worker, seq, busy, len(inband))
    if raws:
        head += struct.pack(f"<{len(raws)}Q", *lens)
    off = _align(len(head))
    parts: list = [(0, head), (off, inband)]
    off += len(inband)
    for r in raws:
        off = _align(off)
        parts.append((off, r))
        off += r.nbytes
    return off, parts


def _assemble(total: int, parts: list) -> Any:
    if len(parts) == 2:
        head, inband = parts[0][1], parts[1][1]
        return b"".join((head, b"\0" * (parts[1][0] - len(head)), inband))
    data = bytearray(total)
    for off, p in parts:
        data[off : off + len(p)] = p
    return data


def header(buf: Any) -> tuple:
    """The header fields of a message (see :data:`HEADER`)."""
    return HEADER.unpack_from(buf)


def decode(buf: Any) -> tuple[int, int, int, float, Any]:
    """kind, seq, worker, busy seconds and the object of a message (copied out of ``buf``).

    Out-of-band buffers are copied once into new ``bytearray`` objects, so numpy arrays come out
    writable and nothing refers to the shared memory afterwards.
    """
    mv = memoryview(buf)
    try:
        kind, _, nbufs, worker, seq, busy, inlen = HEADER.unpack_from(mv)
        lens = struct.unpack_from(f"<{nbufs}Q", mv, HEADER.size) if nbufs else ()
        off = _align(HEADER.size + 8 * nbufs)
        inband = mv[off : off + inlen]
        off += inlen
        buffers = []
        for n in lens:
            off = _align(off)
            buffers.append(bytearray(mv[off : off + n]))
            off += n
        try:
            obj = pickle.loads(inband, buffers=buffers)
        finally:
            inband.release()
    finally:
        mv.release()
    return kind, seq, worker, busy, obj


def send(q: Any, total: int, parts: list, keep_going: Callable[[], bool]) -> bool:
    """Send one message, waiting for room in bounded slices; False if ``keep_going()`` says stop.

    Raises ``MessageTooLarge`` if the message can never fit.
    """
    if total <= SMALL:
        data = _assemble(total, parts)
        while True:
            try:
                q.send(data, timeout=POLL)
                return True
            except Full:
                if not keep_going():
                    return False
    while True:
        try:
            res = q.reserve(total, timeout=POLL)
        except Full:
            if not keep_going():
                return False
            continue
        with res:
            mv = memoryview(res)
            try:
                for off, p in parts:
                    n = p.nbytes if isinstance(p, memoryview) else len(p)
                    mv[off : off + n] = p
            finally:
                mv.release()
        return True
