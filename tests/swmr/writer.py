"""A real SWMR writer for the tests, run in its own (spawned) process with h5py.

Data is flushed before its key, keys are flushed before the finished flag, as detector
writers do. Options shape the scenario: grid scans, pre-allocated datasets, keys ahead of the
data, a lagging second key, stalls, a scalar finished flag, a missing key."""

from __future__ import annotations

import time

import h5py
import numpy as np


def frame_value(i: int, frame_shape: tuple) -> np.ndarray:
    return np.arange(int(np.prod(frame_shape)), dtype="f4").reshape(frame_shape) + (i + 1) * 1000


def write(path: str, ready, events, **o) -> None:
    n = o.get("n", 20)
    width = o.get("width")  # grid scans: (rows, width), written row by row
    frame = tuple(o.get("frame", (3, 4)))
    delay = o.get("delay", 0.002)
    prealloc = o.get("prealloc", False)
    keys_ahead = o.get("keys_ahead", 0.0)  # data written this long after its key
    second_key_lag = o.get("second_key_lag")  # a second key written this many points behind
    stall = o.get("stall")  # (after_index, seconds)
    skip_key = o.get("skip_key")  # this point's key is never written
    finish = o.get("finish", True)
    scalar_finished = o.get("scalar_finished", False)
    start_delay = o.get("start_delay", 0.0)
    key_chunk = o.get("key_chunk", 64)
    scan = (n // width, width) if width else (n,)
    with h5py.File(path, "w", libver="latest") as f:
        kshape = scan + ((1, 1) if width else ())
        if prealloc:
            data = f.create_dataset(
                "data", shape=scan + frame, dtype="f4", chunks=(1,) * len(scan) + frame, fillvalue=0
            )
            key = f.create_dataset("key", shape=kshape, dtype="i4", fillvalue=0, chunks=True)
        else:
            data = f.create_dataset(
                "data",
                shape=(0,) + scan[1:] + frame,
                maxshape=(None,) + scan[1:] + frame,
                dtype="f4",
                chunks=(1,) * len(scan) + frame,
                fillvalue=0,
            )
            kchunks = (key_chunk,) if not width else (1,) + kshape[1:]
            key = f.create_dataset(
                "key",
                shape=(0,) + kshape[1:],
                maxshape=(None,) + kshape[1:],
                dtype="i4",
                fillvalue=0,
                chunks=kchunks,
            )
        key2 = None
        if second_key_lag is not None:
            key2 = f.create_dataset(
                "key2", shape=(0,), maxshape=(None,), dtype="i4", fillvalue=0, chunks=(64,)
            )
        if scalar_finished:
            # Under SWMR, HDF5 (>= 1.14.4, 2.0) cannot refresh a contiguous dataset once written;
            # a scalar dataset cannot be chunked, so it must be compact.
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_layout(h5py.h5d.COMPACT)
            sid = h5py.h5s.create(h5py.h5s.SCALAR)
            h5py.h5d.create(f.id, b"finished", h5py.h5t.STD_I32LE, sid, dcpl=dcpl)
            fin = f["finished"]
        elif o.get("contiguous_finished"):
            fin = f.create_dataset("finished", shape=(1,), dtype="i4", fillvalue=0)
        else:
            fin = f.create_dataset(
                "finished", shape=(1,), maxshape=(None,), dtype="i4", fillvalue=0
            )
        f.swmr_mode = True
        ready.set()
        time.sleep(start_delay)
        for i in range(n):
            pos = np.unravel_index(i, scan)
            row_needed = pos[0] + 1
            if not prealloc and key.shape[0] < row_needed and not keys_ahead:
                data.resize(row_needed, axis=0)
            if not keys_ahead:
                data[pos] = frame_value(i, frame)
                data.flush()
            if not prealloc and key.shape[0] < row_needed:
                key.resize(row_needed, axis=0)
            if i != skip_key:
                key[pos] = i + 1
            key.flush()
            if keys_ahead:
                time.sleep(keys_ahead)
                if not prealloc and data.shape[0] < row_needed:
                    data.resize(row_needed, axis=0)
                data[pos] = frame_value(i, frame)
                data.flush()
            if key2 is not None and second_key_lag is not None and i >= second_key_lag:
                j = i - second_key_lag
                key2.resize(j + 1, axis=0)
                key2[j] = 1
                key2.flush()
            events.put(("key", i, time.time()))
            if stall and i == stall[0]:
                time.sleep(stall[1])
            time.sleep(delay)
        if key2 is not None:
            for j in range(key2.shape[0], n):
                key2.resize(j + 1, axis=0)
                key2[j] = 1
                key2.flush()
        if finish:
            if scalar_finished:
                fin[()] = 1
            else:
                fin[0] = 1
            fin.flush()
            events.put(("finished", n, time.time()))
