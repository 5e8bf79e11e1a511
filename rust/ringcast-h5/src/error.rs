//! The one error type of ringcast-h5: what a read plan, a file's bytes or a chunk's encoding
//! can get wrong, and the core's errors (the slot ring) passed through.

use std::io;

/// Everything that can go wrong on the native read path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the slot ring or another core primitive.
    #[error(transparent)]
    Core(#[from] ringcast_core::Error),
    /// A read plan, or a task asked of it, that does not fit the dataset or the slot.
    #[error("{0}")]
    InvalidArgument(String),
    /// A file's data cannot be read as described (a damaged chunk, a file that ends early).
    #[error("'{path}': {why}")]
    BadData { path: String, why: String },
    /// Opening or reading the file failed.
    #[error("{op} '{path}': {source}")]
    Os {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn os(op: &'static str, path: &str, source: io::Error) -> Self {
        Error::Os {
            op,
            path: path.to_owned(),
            source,
        }
    }
    pub(crate) fn bad_data(path: &str, why: impl Into<String>) -> Self {
        Error::BadData {
            path: path.to_owned(),
            why: why.into(),
        }
    }
}
