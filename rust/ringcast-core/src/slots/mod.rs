//! The slot ring: `n` fixed-size slots filled by workers and leased by consumers.
//!
//! A slot goes `free -> filling (worker w, task t) -> ready (task t) -> leased -> free`.
//! Workers claim a free slot *before* they take the next task number, so every task that
//! has been handed out already owns a slot: a consumer waiting for tasks in order can never
//! deadlock with workers waiting for slots. Task numbers come from one shared counter; with
//! a task limit the ring is finite (the consumer sees the end once it has taken every task),
//! without one it is cyclic (the caller maps task numbers onto its data).
//!
//! A worker that fails writes an error record (any bytes, e.g. a pickled traceback) into its
//! slot and publishes it with the error flag; the consumer gets it like a block. A worker
//! that dies while it fills a slot, or while tasks remain and no worker is left, makes the
//! consumer's wait fail with [`Error::WorkerDied`] instead of hanging. Workers stop when the
//! ring is stopped or when the ring's creator dies.
//!
//! Layout of the ring area: a page-aligned table of [`SLOT_META_BYTES`]-byte [`SlotMeta`]
//! records, then the slots, each `stride` bytes (a multiple of [`SLOT_ALIGN`]). The number
//! of slots is a static header field (checked at attach); the task counters are the slot
//! ring's own words in the header's kind area ([`SlotWords`]).
//!
//! Joining and leaving are in `members.rs`, what workers do in `work.rs`, what consumers do in
//! `take.rs`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::segment::{
    self, Access, Geometry, Header, KindWords, Segment, KIND_SLOTS, SLOT_META_BYTES,
};

#[cfg(doc)]
use crate::segment::SLOT_ALIGN;

mod members;
mod take;
mod work;

pub use crate::segment::MemberId;

/// Member kind: a worker filling slots.
pub const KIND_WORKER: u32 = 5;
/// Member kind: a consumer taking blocks.
pub const KIND_CONSUMER: u32 = 6;

/// Slot state: free for a worker to claim.
pub const SLOT_FREE: u32 = 0;
/// Slot state: a worker fills it with its task.
pub const SLOT_FILLING: u32 = 1;
/// Slot state: filled, waiting for a consumer.
pub const SLOT_READY: u32 = 2;
/// Slot state: taken by a consumer until released.
pub const SLOT_LEASED: u32 = 3;

/// [`SlotMeta::flags`] bit: the slot holds an error record, not data.
pub const SLOT_ERROR: u32 = 1;
/// [`SlotMeta::flags`] bit: the consumer released the block but views of it are alive, so
/// the slot stays leased until they are gone.
pub const SLOT_RETAINED: u32 = 2;

/// Metadata of one slot.
#[repr(C, align(64))]
pub struct SlotMeta {
    pub state: AtomicU32,
    /// Member slot of the worker filling it (or of the consumer leasing it).
    pub owner: AtomicU32,
    pub flags: AtomicU32,
    _pad0: AtomicU32,
    pub task: AtomicU64,
    /// Bytes of data (or of the error record) in the slot.
    pub len: AtomicU64,
    _pad: [AtomicU64; 4],
}

const _: () = assert!(std::mem::size_of::<SlotMeta>() as u64 == SLOT_META_BYTES);

/// A block taken by a consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    pub slot: u32,
    pub task: u64,
    pub len: u64,
    pub error: bool,
}

/// Options of a new slot ring.
#[derive(Clone, Copy, Debug)]
pub struct SlotOptions {
    pub n_slots: u32,
    pub slot_bytes: u64,
    /// Number of tasks (`None`: cyclic, unlimited).
    pub tasks: Option<u64>,
    pub max_members: u32,
    pub mode: u32,
}

/// `SlotWords::task_limit` of a cyclic ring (no limit).
const NO_LIMIT: u64 = u64::MAX;

/// The slot ring's words in the segment header's kind area. Their order keeps the layout
/// slot rings have always had (same offsets, so no layout version change).
#[repr(C)]
pub struct SlotWords {
    /// Blocks taken by consumers so far.
    pub taken: AtomicU64,
    /// The next task number to hand out.
    pub next_task: AtomicU64,
    /// The number of tasks, or `u64::MAX` for a cyclic ring.
    pub task_limit: AtomicU64,
}

// SAFETY: repr(C), three AtomicU64 (24 bytes, 8-aligned): fits the kind area and any bytes
// are a valid value.
unsafe impl KindWords for SlotWords {}

/// A slot ring mapped in this process.
pub struct SlotRing {
    seg: Segment,
}

impl SlotRing {
    /// Create a slot ring (a stale one of the same name is replaced).
    pub fn create(name: &str, o: SlotOptions) -> Result<Arc<SlotRing>> {
        let geo = Geometry::slots(o.n_slots, o.slot_bytes, o.max_members)?;
        // The task limit is set before the name appears: an attacher never reads it unset.
        let limit = o.tasks.unwrap_or(NO_LIMIT);
        let init = |seg: &Segment| {
            let words: &SlotWords = seg.header().kind_words();
            words.task_limit.store(limit, Ordering::Release);
        };
        let seg = match Segment::create_with(name, geo, o.mode, init) {
            Err(Error::Exists(n)) => {
                if !segment::remove_if_stale(name) {
                    return Err(Error::Exists(n));
                }
                Segment::create_with(name, geo, o.mode, init)?
            }
            r => r?,
        };
        Ok(Arc::new(SlotRing { seg }))
    }

    /// Attach to an existing slot ring.
    pub fn attach(name: &str) -> Result<Arc<SlotRing>> {
        Ok(Arc::new(SlotRing {
            seg: Segment::attach(name, KIND_SLOTS, &Access::private())?,
        }))
    }

    /// The segment name.
    pub fn name(&self) -> &str {
        self.seg.name()
    }
    fn header(&self) -> &Header {
        self.seg.header()
    }
    /// The slot ring's own header words.
    fn words(&self) -> &SlotWords {
        self.seg.header().kind_words()
    }
    /// The number of slots.
    pub fn n_slots(&self) -> u32 {
        self.seg.geometry().n_slots
    }
    /// Usable bytes of one slot.
    pub fn slot_bytes(&self) -> u64 {
        self.seg.geometry().slot_layout().1
    }
    /// The task limit (`None`: cyclic).
    pub fn tasks(&self) -> Option<u64> {
        let t = self.words().task_limit.load(Ordering::Acquire);
        (t != NO_LIMIT).then_some(t)
    }
    fn next_task(&self) -> &AtomicU64 {
        &self.words().next_task
    }
    fn taken(&self) -> &AtomicU64 {
        &self.words().taken
    }
    /// Tasks handed to workers so far (may exceed the limit by the number of workers).
    pub fn tasks_started(&self) -> u64 {
        self.next_task().load(Ordering::Acquire)
    }
    /// Blocks taken by consumers so far.
    pub fn blocks_taken(&self) -> u64 {
        self.taken().load(Ordering::Acquire)
    }

    fn meta(&self, slot: u32) -> Result<&SlotMeta> {
        if slot >= self.n_slots() {
            return Err(Error::InvalidArgument(format!(
                "slot {slot} out of range (the ring has {})",
                self.n_slots()
            )));
        }
        let p = self.seg.ring_at(u64::from(slot) * segment::SLOT_META_BYTES);
        // SAFETY: the metadata table lies at the start of the ring area, inside the mapping;
        // every field is atomic.
        Ok(unsafe { &*(p as *const SlotMeta) })
    }

    /// Start of slot `slot`'s data (`slot_bytes()` bytes).
    pub fn slot_ptr(&self, slot: u32) -> Result<*mut u8> {
        self.meta(slot)?;
        let (meta, stride) = self.seg.geometry().slot_layout();
        Ok(self.seg.ring_at(meta + u64::from(slot) * stride))
    }
}

/// What [`SlotRing::claim`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A slot to fill with this task.
    Slot(u32, u64),
    /// Every task has been handed out.
    NoMoreTasks,
    /// The deadline passed with no free slot.
    TimedOut,
}

/// What [`SlotRing::take`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeResult {
    Block(Taken),
    /// Every task was taken (or the ring was stopped and drained).
    End,
    /// The deadline passed.
    TimedOut,
}
