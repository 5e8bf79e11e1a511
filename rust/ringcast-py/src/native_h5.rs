//! `_native_start`: the native HDF5 read path (`ringcast_core::native`), reading file bytes
//! with `pread` from Rust threads and decoding them straight into a slot ring's slots.

use std::sync::Arc;

use pyo3::prelude::*;
use ringcast_core::native;
use ringcast_core::Error;

use crate::error::BResult;
use crate::gil::enter;
use crate::slots::PySlotRing;

/// The native read path filling a slot ring (a consumer waiting for a block helps it).
pub(crate) type Filler = native::Filler;

/// Start ``threads`` native reading threads filling ``ring`` from ``path``: ``extents`` is a
/// list of ``(row0, rows, stored_rows, offset, size, codec, elem)``; ``codec`` is 0 for raw
/// bytes, 1 deflate, 2 the LZ4 filter, 3 bitshuffle with LZ4; ``elem`` is the element size
/// of a byte shuffle to undo after deflate or LZ4 (0: none), or bitshuffle's element size.
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
    extents: Vec<(u64, u64, u64, u64, u64, u8, usize)>,
    threads: usize,
) -> BResult<()> {
    let mut ext = Vec::with_capacity(extents.len());
    for (row0, rows, stored_rows, offset, size, codec, elem) in extents {
        let codec = match codec {
            0 => native::Codec::Raw,
            1 => native::Codec::Deflate { shuffle: elem },
            2 => native::Codec::Lz4 { shuffle: elem },
            3 => native::Codec::BitshuffleLz4 { elem },
            c => {
                return Err(
                    Error::InvalidArgument(format!("native read plan: unknown codec {c}")).into(),
                )
            }
        };
        ext.push(native::Extent {
            row0,
            rows,
            stored_rows,
            offset,
            size,
            codec,
        });
    }
    let r = Arc::clone(ring.get().ring());
    let filler = enter(py, move || {
        let plan = native::Plan::new(&path, row_bytes, n_rows, block_rows, cyclic, ext)?;
        native::Filler::start(r, plan, threads)
    })?;
    ring.get().set_filler(filler)
}
