"""Parallel HDF5 streaming through a shared-memory slot ring, with the multitables API.

``Streamer(filename, **kw)`` reads a dataset in blocks of rows with a pool of worker
processes. Each worker opens the file itself (with ``h5py.File(filename, "r", **kw)``) and
reads each block with ``read_direct`` straight into a slot of a shared-memory ring; the
consumer takes blocks as read-only numpy views of their slot::

    stream = Streamer("data.h5")
    q = stream.get_queue("/entry/data", n_procs=2)
    for guard in q.iter():
        with guard as block:          # a (block_size, *row_shape) view, zero-copy
            total += block.sum()
    last = stream.get_remainder("/entry/data", q.block_size)

Compared with multitables 2.0.1 (``docs/migrating-from-multitables.md``): two queues of one
Streamer are independent; a queue keeps its Streamer alive; a forgotten ``close()`` does not
hang interpreter exit; workers die with their parent; nothing is left in ``/dev/shm``; read
errors reach the consumer in every mode; ``field=`` works everywhere; a view kept after its
guard keeps its slot (it never shows another block's rows).

The package's modules: :mod:`.plan` (rows per task; the native path's extents and codecs),
:mod:`.pool` (the h5py worker processes), :mod:`.streamer` (``Streamer``, ``Queue``,
``Guard``) and :mod:`.errors` (``ReadError``).
"""

from __future__ import annotations

from .errors import ReadError
from .plan import DEFAULT_BLOCK_BYTES
from .plan import FILTER_BITSHUFFLE as FILTER_BITSHUFFLE
from .plan import FILTER_LZ4 as FILTER_LZ4
from .streamer import Guard as Guard
from .streamer import Queue as Queue
from .streamer import QueueClosed, Streamer

__all__ = ["Streamer", "QueueClosed", "ReadError", "DEFAULT_BLOCK_BYTES"]

# The public classes keep the module name they had when ringcast.h5 was one file (reprs,
# tracebacks and pickles name ``ringcast.h5.Streamer`` whichever module defines it).
for _cls in (Streamer, type(QueueClosed), ReadError, Guard, Queue):
    _cls.__module__ = __name__
del _cls
