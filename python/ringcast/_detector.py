"""A simulated detector for ``ringcast demo``: writes frames to an HDF5 file in SWMR mode.

Frames are flushed before their key, and a finished flag is set at the end, as detector
writers do. Frame ``i`` is :func:`expected_frame` ``(i, shape)`` so consumers can check it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def expected_frame(i: int, shape: tuple[int, ...]) -> np.ndarray:
    """The frame the simulated detector writes at scan point ``i``."""
    base = np.arange(int(np.prod(shape)), dtype=np.uint32).reshape(shape)
    return ((base + i * 7) % 65521).astype(np.uint16)


def run(path: str, n: int, shape: tuple[int, ...], rate_hz: float, ready: Any) -> None:
    """Write ``n`` frames of ``shape`` at ``rate_hz`` to ``path`` (datasets ``/entry/data``,
    ``/entry/key``, ``/entry/finished``)."""
    import h5py

    with h5py.File(path, "w", libver="latest") as f:
        g = f.create_group("entry")
        data = g.create_dataset(
            "data",
            shape=(0, *shape),
            maxshape=(None, *shape),
            dtype="u2",
            chunks=(1, *shape),
        )
        key = g.create_dataset(
            "key", shape=(0,), maxshape=(None,), dtype="i4", fillvalue=0, chunks=(1024,)
        )
        fin = g.create_dataset("finished", shape=(1,), maxshape=(None,), dtype="i4", fillvalue=0)
        f.swmr_mode = True
        ready.set()
        period = 1.0 / rate_hz
        t_next = time.monotonic()
        for i in range(n):
            data.resize(i + 1, axis=0)
            data[i] = expected_frame(i, shape)
            data.flush()
            key.resize(i + 1, axis=0)
            key[i] = 1
            key.flush()
            t_next += period
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        fin[0] = 1
        fin.flush()
