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
use std::thread::JoinHandle;
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
    fn ranges(&self, task: u64) -> Vec<(u64, u64)> {
        if !self.cyclic {
            let a = task * self.block_rows;
            return vec![(a, (a + self.block_rows).min(self.n_rows))];
        }
        let a = (task * self.block_rows) % self.n_rows;
        let b = a + self.block_rows;
        if b <= self.n_rows {
            vec![(a, b)]
        } else {
            vec![(a, self.n_rows), (0, b - self.n_rows)]
        }
    }

    /// Fill `dst` with the rows of `task`; returns the bytes written.
    pub fn fill(&self, task: u64, dst: &mut [u8], scratch: &mut Scratch) -> Result<u64> {
        let mut at = 0usize;
        for (a, b) in self.ranges(task) {
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
                Codec::Deflate { shuffle } => {
                    let full = (e.stored_rows * rb) as usize;
                    let whole = lo == 0 && hi == e.stored_rows && shuffle == 0;
                    scratch.packed.resize(e.size as usize, 0);
                    let mut packed = std::mem::take(&mut scratch.packed);
                    let r = self.pread(&mut packed, e.offset).and_then(|()| {
                        if whole {
                            inflate(&packed, out, &self.path, e.row0)
                        } else {
                            scratch.plain.resize(full, 0);
                            inflate(&packed, &mut scratch.plain, &self.path, e.row0)?;
                            let src = if shuffle > 1 {
                                scratch.unshuffled.resize(full, 0);
                                unshuffle(&scratch.plain, &mut scratch.unshuffled, shuffle);
                                &scratch.unshuffled
                            } else {
                                &scratch.plain
                            };
                            out.copy_from_slice(&src[(lo * rb) as usize..(hi * rb) as usize]);
                            Ok(())
                        }
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
                Error::corrupt(
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
}

fn inflate(src: &[u8], dst: &mut [u8], path: &str, row0: u64) -> Result<()> {
    let mut d = flate2::Decompress::new(true);
    let status = d
        .decompress(src, dst, flate2::FlushDecompress::Finish)
        .map_err(|e| {
            Error::corrupt(
                path,
                format!("the chunk at row {row0} does not inflate: {e}"),
            )
        })?;
    if status != flate2::Status::StreamEnd || d.total_out() != dst.len() as u64 {
        return Err(Error::corrupt(
            path,
            format!(
                "the chunk at row {row0} inflates to {} bytes, not {}",
                d.total_out(),
                dst.len()
            ),
        ));
    }
    Ok(())
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

    /// Start `threads` more reading threads.
    pub fn spawn(&self, threads: usize) -> Result<Vec<JoinHandle<()>>> {
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
pub fn start(ring: Arc<SlotRing>, plan: Arc<Plan>, threads: usize) -> Result<Vec<JoinHandle<()>>> {
    let mut out = Vec::with_capacity(threads);
    for _ in 0..threads {
        let id = ring.join(KIND_WORKER, b"native reader")?;
        let (ring, plan) = (Arc::clone(&ring), Arc::clone(&plan));
        out.push(std::thread::spawn(move || {
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
        }));
    }
    Ok(out)
}
