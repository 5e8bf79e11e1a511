//! ringcast-h5: the native HDF5 read path. Rust threads read a dataset's bytes with `pread`
//! straight into slot-ring slots (from ringcast-core), and decode compressed chunks outside
//! any HDF5 or Python lock.
//!
//! The caller (the Python layer, which asks h5py's low-level API where the data is) describes
//! the dataset as *extents*: runs of whole rows stored at a file offset, either raw (a
//! contiguous dataset, or an unfiltered chunk) or compressed (a chunk: deflate, the LZ4
//! filter or bitshuffle+LZ4, possibly after a byte shuffle). Only layouts where every chunk
//! spans whole rows are described this way; anything else is read through h5py instead.
//!
//! - [`plan`]: the extents of one dataset ([`Plan`]) and how a task's rows are read from them;
//! - [`codec`]: how an extent is stored ([`Codec`]) and the chunk decoders;
//! - `shuffle`: undoing HDF5's byte shuffle and bitshuffle's bit transpose;
//! - [`filler`]: the threads that fill a ring's slots from a plan ([`Filler`]), and
//!   [`Filler::help`] for a consumer that would otherwise wait.

pub mod codec;
mod error;
pub mod filler;
pub mod plan;
mod shuffle;

pub use codec::Codec;
pub use error::{Error, Result};
pub use filler::Filler;
pub use plan::{Extent, Plan, Scratch};
