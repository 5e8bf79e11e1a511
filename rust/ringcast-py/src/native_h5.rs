//! The native HDF5 read path (`ringcast_h5`): `_Codec`, how an extent is stored, and
//! `_native_start`, which starts Rust threads reading file bytes with `pread` and decoding
//! them straight into a slot ring's slots.

use std::sync::Arc;

use pyo3::prelude::*;
use ringcast_h5 as native;

use crate::error::BResult;
use crate::gil::enter;
use crate::slots::PySlotRing;

/// The native read path filling a slot ring (a consumer waiting for a block helps it).
pub(crate) type Filler = native::Filler;

/// How an extent of the native read path is stored (``ringcast_h5::Codec``, whose values it
/// takes): raw bytes, deflate, the HDF5 LZ4 filter, or bitshuffle with LZ4.
#[pyclass(
    module = "ringcast",
    name = "_Codec",
    eq,
    eq_int,
    frozen,
    from_py_object
)]
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum PyCodec {
    #[pyo3(name = "RAW")]
    Raw = native::Codec::Raw as isize,
    #[pyo3(name = "DEFLATE")]
    Deflate = native::Codec::Deflate as isize,
    #[pyo3(name = "LZ4")]
    Lz4 = native::Codec::Lz4 as isize,
    #[pyo3(name = "BITSHUFFLE_LZ4")]
    BitshuffleLz4 = native::Codec::BitshuffleLz4 as isize,
}

impl From<PyCodec> for native::Codec {
    fn from(c: PyCodec) -> Self {
        match c {
            PyCodec::Raw => native::Codec::Raw,
            PyCodec::Deflate => native::Codec::Deflate,
            PyCodec::Lz4 => native::Codec::Lz4,
            PyCodec::BitshuffleLz4 => native::Codec::BitshuffleLz4,
        }
    }
}

/// Start ``threads`` native reading threads filling ``ring`` from ``path``: ``extents`` is a
/// list of ``(row0, rows, stored_rows, offset, size, codec, elem)``; ``codec`` is a
/// ``_Codec``; ``elem`` is the element size of a byte shuffle to undo after deflate or LZ4
/// (0: none), or bitshuffle's element size.
#[pyfunction]
#[pyo3(signature = (ring, path, row_bytes, n_rows, block_rows, cyclic, extents, threads))]
#[allow(clippy::too_many_arguments)] // one per Python argument
pub(crate) fn _native_start(
    py: Python<'_>,
    ring: &Bound<'_, PySlotRing>,
    path: String,
    row_bytes: u64,
    n_rows: u64,
    block_rows: u64,
    cyclic: bool,
    extents: Vec<(u64, u64, u64, u64, u64, PyCodec, usize)>,
    threads: usize,
) -> BResult<()> {
    let ext = extents
        .into_iter()
        .map(
            |(row0, rows, stored_rows, offset, size, codec, elem)| native::Extent {
                row0,
                rows,
                stored_rows,
                offset,
                size,
                codec: codec.into(),
                elem,
            },
        )
        .collect();
    let r = Arc::clone(ring.get().ring());
    let filler = enter(py, move || -> native::Result<_> {
        let plan = native::Plan::new(&path, row_bytes, n_rows, block_rows, cyclic, ext)?;
        Ok(native::Filler::start(r, plan, threads)?)
    })?;
    ring.get().set_filler(filler)
}
