"""How a dataset is read: its rows per task (:class:`Layout`) and, for the native path,
where its rows are in the file and how they are compressed (:func:`native_extents`)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .._ringcast import _Codec

#: Default block for a contiguous dataset: this many bytes (at least one row).
DEFAULT_BLOCK_BYTES = 128 * 1024


class Layout:
    """How the rows of one dataset map onto tasks and slots."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any], block_size: int) -> None:
        self.n = shape[0]
        self.row_shape = shape[1:]
        self.dtype = dtype
        self.bs = block_size
        self.row_elems = _elems(self.row_shape)
        self.row_bytes = dtype.itemsize * self.row_elems

    def rows(self, task: int, cyclic: bool) -> list[tuple[int, int]]:
        """Source row ranges of ``task`` (two ranges for a block that wraps)."""
        if not cyclic:
            a = task * self.bs
            return [(a, min(a + self.bs, self.n))]
        a = (task * self.bs) % self.n
        b = a + self.bs
        if b <= self.n:
            return [(a, b)]
        return [(a, self.n), (0, b - self.n)]


def _elems(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def default_block_size(ds: Any) -> int:
    """Rows per block of ``ds`` unless asked: a chunk's rows, else about
    :data:`DEFAULT_BLOCK_BYTES`."""
    if ds.shape[0] == 0:
        raise RuntimeError("Cannot read from empty dataset.")
    if ds.chunks is not None and ds.chunks[0] > 0:
        return int(ds.chunks[0])
    row_bytes = ds.dtype.itemsize * _elems(ds.shape[1:])
    return max(1, min(ds.shape[0], DEFAULT_BLOCK_BYTES // max(1, row_bytes)))


def field_dtype(ds: Any, field: Optional[str]) -> np.dtype[Any]:
    """The dtype of the values read: the dataset's, or that of its ``field``."""
    if field is None:
        return np.dtype(ds.dtype)
    if ds.dtype.names is None or field not in ds.dtype.names:
        raise ValueError(f"dataset {ds.name} has no field {field!r} (fields: {ds.dtype.names})")
    return np.dtype(ds.dtype.fields[field][0])


# ----------------------------------------------------------------------------- native path


#: Filter ids of the HDF5 plugins the native path decodes (hdf5plugin's LZ4 and bitshuffle).
FILTER_LZ4 = 32004
FILTER_BITSHUFFLE = 32008


def _native_codec(dcpl: Any, itemsize: int) -> tuple[Optional[tuple[_Codec, int]], str]:
    """``(codec, elem)`` of a chunked dataset's filter pipeline, or ``(None, why not)``."""
    import h5py

    filters = [dcpl.get_filter(i) for i in range(dcpl.get_nfilters())]
    codes = [f[0] for f in filters]
    shuffle = 0
    if codes[:1] == [h5py.h5z.FILTER_SHUFFLE] and len(codes) == 2:
        shuffle, codes = itemsize, codes[1:]
    if codes == []:
        return (_Codec.RAW, 0), ""
    if codes == [h5py.h5z.FILTER_DEFLATE]:
        return (_Codec.DEFLATE, shuffle), ""
    if codes == [FILTER_LZ4]:
        return (_Codec.LZ4, shuffle), ""
    if codes == [FILTER_BITSHUFFLE] and not shuffle:
        cd = tuple(filters[0][2])
        # cd_values: major, minor, element size, block size, compression (2: LZ4)
        if len(cd) >= 5 and cd[4] == 2 and cd[2] in (0, itemsize):
            return (_Codec.BITSHUFFLE_LZ4, itemsize), ""
        return None, f"its bitshuffle filter {cd} does not use LZ4 on elements of {itemsize} bytes"
    names = [
        f[3].decode("ascii", "replace") if isinstance(f[3], bytes) else str(f[3]) for f in filters
    ]
    return None, (
        f"its filters {names} ({[f[0] for f in filters]}) are not raw, deflate, LZ4 or "
        "bitshuffle+LZ4 (with an optional shuffle before deflate or LZ4)"
    )


def native_extents(ds: Any, kw: dict[str, Any], field: Optional[str]) -> tuple[Any, str]:
    """Where the rows of ``ds`` are in its file, for the native read path, or ``(None,
    why not)``. Only plain numeric data stored contiguously, or in chunks that span whole
    rows, raw or compressed with a filter the native path decodes, qualifies."""
    import h5py

    if field is not None:
        return None, "a field is selected"
    if kw.get("swmr") or kw.get("driver") not in (None, "sec2"):
        return None, "the file is opened in SWMR mode or with a non-default driver"
    dt = ds.dtype
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        return None, f"its dtype {dt} is not a plain number"
    if ds.is_virtual or ds.external or ds.id.get_type().get_size() != dt.itemsize:
        return None, "it is virtual, external, or stored with another element size"
    n = ds.shape[0]
    row_bytes = dt.itemsize * _elems(ds.shape[1:])
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        off = ds.id.get_offset()
        if off is None:
            return None, "its storage is not allocated"
        return [(0, n, n, off, n * row_bytes, _Codec.RAW, 0)], ""
    if layout != h5py.h5d.CHUNKED:
        return None, "it is a compact dataset"
    c0 = ds.chunks[0]
    if tuple(ds.chunks[1:]) != tuple(ds.shape[1:]):
        return None, f"its chunks {ds.chunks} do not span whole rows"
    codec, why = _native_codec(dcpl, dt.itemsize)
    if codec is None:
        return None, why
    nchunks = ds.id.get_num_chunks()
    if nchunks != -(-n // c0):
        return None, "some chunks are not written (fill values)"
    found: list[Any] = []
    try:  # one pass over the chunk index (get_chunk_info(i) walks it for every i)
        ds.id.chunk_iter(found.append)
    except (AttributeError, NotImplementedError):
        found = [ds.id.get_chunk_info(i) for i in range(nchunks)]
    infos = sorted(found, key=lambda c: c.chunk_offset)
    out = []
    for ci in infos:
        if ci.filter_mask != 0:
            return None, "a chunk skipped a filter"
        row0 = ci.chunk_offset[0]
        rows = min(c0, n - row0)
        if codec[0] == _Codec.RAW:
            out.append((row0, rows, rows, ci.byte_offset, rows * row_bytes, _Codec.RAW, 0))
        else:
            out.append((row0, rows, c0, ci.byte_offset, ci.size, *codec))
    return out, ""
