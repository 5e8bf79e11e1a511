//! A read plan: where the rows of one dataset are in its file (its [`Extent`]s), and how the
//! rows of one task (a block of `block_rows` rows, wrapping around for a cyclic plan) are
//! read into a slot, decoding compressed chunks on the way.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::codec::{decode, Codec};
use crate::error::{Error, Result};
use crate::shuffle::unshuffle;

/// A run of rows in the file.
#[derive(Clone, Copy, Debug)]
pub struct Extent {
    /// First row.
    pub row0: u64,
    /// Rows of the dataset in this extent (a last chunk may store more rows than exist).
    pub rows: u64,
    /// Rows stored (the chunk length; `rows` for raw data).
    pub stored_rows: u64,
    /// File offset in bytes.
    pub offset: u64,
    /// Stored size in bytes.
    pub size: u64,
    /// How the rows are stored.
    pub codec: Codec,
    /// The element size in bytes: of the byte shuffle to undo after `Deflate` or `Lz4` (0 or
    /// 1: none), of the elements of `BitshuffleLz4`; unused for `Raw`.
    pub elem: usize,
}

/// Where the rows of one dataset are.
#[derive(Debug)]
pub struct Plan {
    file: File,
    path: String,
    row_bytes: u64,
    n_rows: u64,
    block_rows: u64,
    cyclic: bool,
    extents: Vec<Extent>,
}

impl Plan {
    /// Check and keep a description. `extents` must cover rows `0..n_rows` in order.
    pub fn new(
        path: &str,
        row_bytes: u64,
        n_rows: u64,
        block_rows: u64,
        cyclic: bool,
        extents: Vec<Extent>,
    ) -> Result<Plan> {
        let bad = |why: String| Err(Error::InvalidArgument(format!("native read plan: {why}")));
        if row_bytes == 0 || n_rows == 0 || block_rows == 0 || block_rows > n_rows {
            return bad(format!(
                "{n_rows} rows of {row_bytes} bytes in blocks of {block_rows} rows"
            ));
        }
        let mut next = 0;
        for e in &extents {
            if e.row0 != next || e.rows == 0 || e.stored_rows < e.rows {
                return bad(format!(
                    "extent at row {} does not follow row {next}",
                    e.row0
                ));
            }
            if e.codec == Codec::Raw && e.size != e.rows * row_bytes {
                return bad(format!("raw extent at row {} has {} bytes", e.row0, e.size));
            }
            next += e.rows;
        }
        if next != n_rows {
            return bad(format!("extents cover {next} of {n_rows} rows"));
        }
        let file = File::open(path).map_err(|e| Error::os("open", path, e))?;
        Ok(Plan {
            file,
            path: path.to_owned(),
            row_bytes,
            n_rows,
            block_rows,
            cyclic,
            extents,
        })
    }

    /// Row ranges of `task` (two for a cyclic block that wraps).
    fn ranges(&self, task: u64) -> Result<Vec<(u64, u64)>> {
        // The task number comes from shared memory: a block past the end is an error, and the
        // cyclic arithmetic cannot overflow.
        let a = (u128::from(task) * u128::from(self.block_rows)) % u128::from(self.n_rows);
        let a = a as u64;
        if !self.cyclic {
            if task
                .checked_mul(self.block_rows)
                .is_none_or(|r| r >= self.n_rows)
            {
                return Err(Error::InvalidArgument(format!(
                    "task {task} starts past the {} rows",
                    self.n_rows
                )));
            }
            return Ok(vec![(a, (a + self.block_rows).min(self.n_rows))]);
        }
        let b = a + self.block_rows;
        Ok(if b <= self.n_rows {
            vec![(a, b)]
        } else {
            vec![(a, self.n_rows), (0, b - self.n_rows)]
        })
    }

    /// Fill `dst` with the rows of `task`; returns the bytes written.
    pub fn fill(&self, task: u64, dst: &mut [u8], scratch: &mut Scratch) -> Result<u64> {
        let mut at = 0usize;
        for (a, b) in self.ranges(task)? {
            let need = ((b - a) * self.row_bytes) as usize;
            if at + need > dst.len() {
                return Err(Error::InvalidArgument(format!(
                    "a block of {} rows does not fit a slot of {} bytes",
                    b - a,
                    dst.len()
                )));
            }
            self.read_rows(a, b, &mut dst[at..at + need], scratch)?;
            at += need;
        }
        Ok(at as u64)
    }

    fn read_rows(&self, a: u64, b: u64, dst: &mut [u8], scratch: &mut Scratch) -> Result<()> {
        let first = self.extents.partition_point(|e| e.row0 + e.rows <= a);
        let rb = self.row_bytes;
        let mut row = a;
        for e in &self.extents[first..] {
            if row >= b {
                break;
            }
            let lo = row - e.row0;
            let hi = (b.min(e.row0 + e.rows)) - e.row0;
            let out = &mut dst[((row - a) * rb) as usize..((row - a + hi - lo) * rb) as usize];
            match e.codec {
                Codec::Raw => self.pread(out, e.offset + lo * rb)?,
                codec => {
                    let full = (e.stored_rows * rb) as usize;
                    let shuffle = codec.shuffle(e.elem);
                    let whole = lo == 0 && hi == e.stored_rows && shuffle <= 1;
                    scratch.packed.resize(e.size as usize, 0);
                    let mut packed = std::mem::take(&mut scratch.packed);
                    let r = self.pread(&mut packed, e.offset).and_then(|()| {
                        let at = |why: String| {
                            Error::bad_data(
                                &self.path,
                                format!("the chunk at row {} {why}", e.row0),
                            )
                        };
                        if whole {
                            return decode(codec, e.elem, &packed, out, &mut scratch.block)
                                .map_err(at);
                        }
                        let mut plain = std::mem::take(&mut scratch.plain);
                        plain.resize(full, 0);
                        let r = decode(codec, e.elem, &packed, &mut plain, &mut scratch.block)
                            .map_err(at);
                        let src = if shuffle > 1 {
                            scratch.unshuffled.resize(full, 0);
                            unshuffle(&plain, &mut scratch.unshuffled, shuffle);
                            &scratch.unshuffled
                        } else {
                            &plain
                        };
                        if r.is_ok() {
                            out.copy_from_slice(&src[(lo * rb) as usize..(hi * rb) as usize]);
                        }
                        scratch.plain = plain;
                        r
                    });
                    scratch.packed = packed;
                    r?;
                }
            }
            row = e.row0 + hi;
        }
        Ok(())
    }

    fn pread(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.file.read_exact_at(buf, off).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::bad_data(
                    &self.path,
                    format!("the file ends before byte {}", off + buf.len() as u64),
                )
            } else {
                Error::os("read", &self.path, e)
            }
        })
    }
}

/// Buffers a reading thread reuses.
#[derive(Default)]
pub struct Scratch {
    packed: Vec<u8>,
    plain: Vec<u8>,
    unshuffled: Vec<u8>,
    /// One decompressed bitshuffle block.
    block: Vec<u8>,
}
