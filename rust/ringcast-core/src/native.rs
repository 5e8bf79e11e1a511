//! The native HDF5 read path: Rust threads read a dataset's bytes with `pread` straight into
//! slot-ring slots, and decode deflate (and shuffle) outside any HDF5 or Python lock.
//!
//! The caller (the Python layer, which asks h5py's low-level API where the data is) describes
//! the dataset as *extents*: runs of whole rows stored at a file offset, either raw (a
//! contiguous dataset, or an unfiltered chunk) or deflated (a chunk, possibly shuffled). Only
//! layouts where every chunk spans whole rows are described this way; anything else is read
//! through h5py instead.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::slots::{Claim, SlotRing, KIND_WORKER};
use crate::wait::{Deadline, WaitSpec};

/// How an extent is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// The rows' bytes as they are in memory.
    Raw,
    /// A zlib stream (HDF5's deflate filter), after a byte shuffle of elements of
    /// `shuffle` bytes when it is not 0.
    Deflate { shuffle: usize },
    /// The HDF5 LZ4 filter (id 32004), after a byte shuffle when `shuffle` is not 0.
    Lz4 { shuffle: usize },
    /// The bitshuffle filter (id 32008) with LZ4 compression, on elements of `elem` bytes.
    BitshuffleLz4 { elem: usize },
}

impl Codec {
    /// The byte shuffle to undo after decoding (0: none).
    fn shuffle(self) -> usize {
        match self {
            Codec::Deflate { shuffle } | Codec::Lz4 { shuffle } => shuffle,
            Codec::Raw | Codec::BitshuffleLz4 { .. } => 0,
        }
    }
}

/// A run of rows in the file.
#[derive(Clone, Copy, Debug)]
pub struct Extent {
    /// First row.
    pub row0: u64,
    /// Rows of the dataset in this extent (a last chunk may store more rows than exist).
    pub rows: u64,
    /// Rows stored (the chunk length; `rows` for raw data).
    pub stored_rows: u64,
    /// File offset and stored size in bytes.
    pub offset: u64,
    pub size: u64,
    pub codec: Codec,
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
                    let shuffle = codec.shuffle();
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
                            return decode(codec, &packed, out, &mut scratch.block).map_err(at);
                        }
                        let mut plain = std::mem::take(&mut scratch.plain);
                        plain.resize(full, 0);
                        let r = decode(codec, &packed, &mut plain, &mut scratch.block).map_err(at);
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

/// Decode a whole chunk stored with `codec` (not `Raw`) into `dst`, which must come out
/// exactly full. The byte shuffle, if any, is left to the caller. Errors say what is wrong
/// with the chunk.
fn decode(
    codec: Codec,
    src: &[u8],
    dst: &mut [u8],
    block: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    match codec {
        Codec::Raw => {
            if src.len() != dst.len() {
                return Err(format!("stores {} bytes, not {}", src.len(), dst.len()));
            }
            dst.copy_from_slice(src);
            Ok(())
        }
        Codec::Deflate { .. } => inflate(src, dst),
        Codec::Lz4 { .. } => lz4_chunk(src, dst),
        Codec::BitshuffleLz4 { elem } => bitshuffle_lz4_chunk(src, dst, elem, block),
    }
}

fn inflate(src: &[u8], dst: &mut [u8]) -> std::result::Result<(), String> {
    let mut d = flate2::Decompress::new(true);
    let status = d
        .decompress(src, dst, flate2::FlushDecompress::Finish)
        .map_err(|e| format!("does not inflate: {e}"))?;
    if status != flate2::Status::StreamEnd || d.total_out() != dst.len() as u64 {
        return Err(format!(
            "inflates to {} bytes, not {}",
            d.total_out(),
            dst.len()
        ));
    }
    Ok(())
}

/// A big-endian integer of `N` bytes at `at`, or an error naming `what`.
fn be<const N: usize>(src: &[u8], at: usize, what: &str) -> std::result::Result<u64, String> {
    let b = src
        .get(at..at + N)
        .ok_or_else(|| format!("ends inside its {what} (byte {at} of {})", src.len()))?;
    Ok(b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
}

/// One LZ4 block of `src` into all of `dst`.
fn lz4_block(src: &[u8], dst: &mut [u8]) -> std::result::Result<(), String> {
    match lz4_flex::block::decompress_into(src, dst) {
        Ok(n) if n == dst.len() => Ok(()),
        Ok(n) => Err(format!(
            "has an LZ4 block that decodes to {n} bytes, not {}",
            dst.len()
        )),
        Err(e) => Err(format!("has an LZ4 block that does not decode: {e}")),
    }
}

/// The HDF5 LZ4 filter's chunk: the decoded size (u64, big-endian), the block size (u32),
/// then for each block its stored size (u32) and its bytes, LZ4-compressed, or as they are
/// when the stored size equals the block's.
fn lz4_chunk(src: &[u8], dst: &mut [u8]) -> std::result::Result<(), String> {
    let total = be::<8>(src, 0, "header")?;
    let bsize = be::<4>(src, 8, "header")?;
    if total != dst.len() as u64 {
        return Err(format!(
            "has a header that says {total} bytes, not {}",
            dst.len()
        ));
    }
    if bsize == 0 {
        return Err("has a header with a block size of 0".into());
    }
    let (mut pos, mut out) = (12usize, 0usize);
    while out < dst.len() {
        let n = (bsize as usize).min(dst.len() - out);
        let c = be::<4>(src, pos, "block sizes")? as usize;
        pos += 4;
        let body = src.get(pos..pos.saturating_add(c)).ok_or_else(|| {
            format!("has a block of {c} bytes at byte {pos} that runs past its end")
        })?;
        if c == n {
            dst[out..out + n].copy_from_slice(body);
        } else {
            lz4_block(body, &mut dst[out..out + n])?;
        }
        pos += c;
        out += n;
    }
    Ok(())
}

/// Elements per bitshuffle block are a multiple of this; a last partial block is cut to
/// one, and the elements left over are stored as they are.
const BSHUF_MULT: usize = 8;

/// The bitshuffle filter's chunk (LZ4): the decoded size (u64, big-endian), the block size
/// in bytes (u32), then per block its compressed size (u32) and an LZ4 block holding the
/// block's bit planes; the last `n % 8` elements follow as they are.
fn bitshuffle_lz4_chunk(
    src: &[u8],
    dst: &mut [u8],
    elem: usize,
    block: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let total = be::<8>(src, 0, "header")?;
    let bbytes = be::<4>(src, 8, "header")? as usize;
    if total != dst.len() as u64 {
        return Err(format!(
            "has a header that says {total} bytes, not {}",
            dst.len()
        ));
    }
    if elem == 0 || !dst.len().is_multiple_of(elem) {
        return Err(format!(
            "holds {} bytes, not whole elements of {elem}",
            dst.len()
        ));
    }
    let belems = bbytes / elem;
    if !bbytes.is_multiple_of(elem) || belems == 0 || !belems.is_multiple_of(BSHUF_MULT) {
        return Err(format!(
            "has a block size of {bbytes} bytes, not a multiple of 8 elements"
        ));
    }
    let n = dst.len() / elem;
    let (mut pos, mut done) = (12usize, 0usize);
    while n - done >= BSHUF_MULT {
        let k = belems.min((n - done) / BSHUF_MULT * BSHUF_MULT);
        let c = be::<4>(src, pos, "block sizes")? as usize;
        pos += 4;
        let body = src.get(pos..pos.saturating_add(c)).ok_or_else(|| {
            format!("has a block of {c} bytes at byte {pos} that runs past its end")
        })?;
        block.resize(k * elem, 0);
        lz4_block(body, block)?;
        bitunshuffle(block, &mut dst[done * elem..(done + k) * elem], elem);
        pos += c;
        done += k;
    }
    let rest = &mut dst[done * elem..];
    let tail = src
        .get(pos..pos + rest.len())
        .ok_or_else(|| format!("ends before its last {} bytes", rest.len()))?;
    rest.copy_from_slice(tail);
    Ok(())
}

/// Transpose an 8x8 bit matrix held in a `u64` (row `r` in byte `r`, column `c` in bit `c`).
fn transpose8(mut x: u64) -> u64 {
    let mut t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^= t ^ (t << 28);
    x
}

/// Undo bitshuffle on one block of `dst.len() / elem` elements (a multiple of 8): `src`
/// holds, for byte `j` of the element and bit `b`, a row of one bit per element (row
/// `8 * j + b`, element `i` at bit `i % 8` of byte `i / 8`).
fn bitunshuffle(src: &[u8], dst: &mut [u8], elem: usize) {
    let row = dst.len() / elem / 8;
    for j in 0..elem {
        let planes = &src[8 * j * row..8 * (j + 1) * row];
        for g in 0..row {
            let mut x = 0u64;
            for b in 0..8 {
                x |= u64::from(planes[b * row + g]) << (8 * b);
            }
            let t = transpose8(x).to_le_bytes();
            for (i, &v) in t.iter().enumerate() {
                dst[(8 * g + i) * elem + j] = v;
            }
        }
    }
}

/// Undo HDF5's shuffle filter: byte `j` of every element was stored together.
fn unshuffle(src: &[u8], dst: &mut [u8], elem: usize) {
    let n = src.len() / elem;
    for j in 0..elem {
        let plane = &src[j * n..(j + 1) * n];
        for (i, &b) in plane.iter().enumerate() {
            dst[i * elem + j] = b;
        }
    }
    let tail = n * elem;
    dst[tail..].copy_from_slice(&src[tail..]);
}

/// Fill claimed slot `slot` with the rows of `task` and publish it; a read that fails
/// publishes an error record instead: `RCERR:` and the message.
fn fill_slot(
    ring: &SlotRing,
    plan: &Plan,
    slot: u32,
    task: u64,
    scratch: &mut Scratch,
) -> Result<()> {
    let n = ring.slot_bytes() as usize;
    let p = ring.slot_ptr(slot)?;
    // SAFETY: the claimed slot is this thread's until it publishes it.
    let dst = unsafe { std::slice::from_raw_parts_mut(p, n) };
    match plan.fill(task, dst, scratch) {
        Ok(len) => ring.publish(slot, len, false),
        Err(e) => {
            let msg = format!("RCERR:{e}");
            let len = msg.len().min(n);
            dst[..len].copy_from_slice(&msg.as_bytes()[..len]);
            ring.publish(slot, len as u64, true)
        }
    }
}

/// A ring being filled from a plan: its reading threads, and [`Filler::help`] for a consumer
/// that would otherwise wait.
pub struct Filler {
    ring: Arc<SlotRing>,
    plan: Arc<Plan>,
    spare: std::sync::Mutex<Vec<Scratch>>,
    helped: std::sync::atomic::AtomicU64,
}

impl Filler {
    /// A filler with no reading thread yet (see [`Filler::spawn`]).
    pub fn new(ring: Arc<SlotRing>, plan: Plan) -> Arc<Filler> {
        Arc::new(Filler {
            ring,
            plan: Arc::new(plan),
            spare: std::sync::Mutex::new(Vec::new()),
            helped: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Start `threads` reading threads (at least one: a consumer that waits for a slot
    /// relies on a live worker to report a dead one) that fill the ring until its tasks
    /// run out or it is stopped.
    pub fn start(ring: Arc<SlotRing>, plan: Plan, threads: usize) -> Result<Arc<Filler>> {
        let f = Filler::new(ring, plan);
        f.spawn(threads.max(1))?;
        Ok(f)
    }

    /// Start `threads` more reading threads. Each is a member of the ring until it is
    /// done with it.
    pub fn spawn(&self, threads: usize) -> Result<()> {
        start(Arc::clone(&self.ring), Arc::clone(&self.plan), threads)
    }

    /// Blocks the consumers read themselves (through [`Filler::help`]).
    pub fn helped(&self) -> u64 {
        self.helped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// For a consumer (member `id`) with nothing ready to take: claim a free slot, fill it
    /// in this thread and publish it. Returns whether it did (false: no free slot, no task
    /// left, or the ring stopped).
    pub fn help(&self, id: crate::queue::MemberId) -> Result<bool> {
        let Ok(Some(Claim::Slot(slot, task))) = self.ring.try_claim(id) else {
            return Ok(false);
        };
        let mut scratch = self
            .spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        let r = fill_slot(&self.ring, &self.plan, slot, task, &mut scratch);
        self.spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(scratch);
        self.helped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        r.map(|()| true)
    }
}

/// Start `threads` reading threads that fill `ring` from `plan` until its tasks run out or
/// it is stopped. A read that fails publishes an error record: `RCERR:` and the message.
fn start(ring: Arc<SlotRing>, plan: Arc<Plan>, threads: usize) -> Result<()> {
    for _ in 0..threads {
        let id = ring.join(KIND_WORKER, b"native reader")?;
        let (ring, plan) = (Arc::clone(&ring), Arc::clone(&plan));
        std::thread::spawn(move || {
            let mut scratch = Scratch::default();
            let spec = || WaitSpec {
                deadline: Deadline::after(Some(Duration::from_secs(3600))),
                spin: Duration::from_micros(20),
            };
            loop {
                match ring.claim(id, spec(), &mut crate::wait::no_check) {
                    Ok(Claim::Slot(slot, task)) => {
                        if fill_slot(&ring, &plan, slot, task, &mut scratch).is_err() {
                            break;
                        }
                    }
                    Ok(Claim::TimedOut) => continue,
                    Ok(Claim::NoMoreTasks) | Err(_) => break,
                }
            }
            ring.leave(id);
        });
    }
    Ok(())
}
