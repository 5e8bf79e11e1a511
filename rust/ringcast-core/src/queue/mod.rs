//! The broadcast log: variable-length records in a ring, several writers, one cursor per
//! reader, space reclaimed only once every live reader has passed it.
//!
//! Positions are monotonically increasing u64 byte offsets; the ring index is
//! `pos % ring_size`. How a record lies in the ring is in `record.rs`; a record costs
//! [`record_len`] bytes of the queue's capacity.
//!
//! Writers serialise on a lock whose owner is identified by pid and process start time; a
//! waiter that finds the owner dead takes the lock over (`lock.rs`). A writer copies the
//! record past the published tail, then commits it with one store and publishes it with a
//! release store of the new tail, so a writer killed at any instant never exposes a torn
//! record: the bytes it was writing stay invisible and are overwritten by the next writer
//! (`write.rs`), and a committed record is published by the writer that takes the lock over
//! (`publish.rs`). Readers take
//! no lock (`read.rs`); consumer groups share a cursor (`groups.rs`); joining, leaving and
//! reaping are in `members.rs`, figures in `stats.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::segment::{
    self, Access, Geometry, Header, KindWords, Member, Segment, KIND_BROADCAST, STATE_OPEN,
};

mod capacity;
mod groups;
mod lock;
mod members;
mod publish;
mod read;
mod record;
mod stats;
mod write;

pub use capacity::min_capacity;
pub use read::Filter;
pub use record::{record_len, RecordRef, RECORD_HEADER};
pub use stats::{MemberStats, Stats};
pub use write::Reservation;

pub use crate::segment::{
    gc, remove_if_stale, MemberId, KIND_GROUP, KIND_GROUP_MEMBER, KIND_HANDLE, KIND_READER,
};

/// How often creating replaces a stale segment of the same name before it gives up.
const CREATE_TRIES: u32 = 3;
/// How often opening goes between attaching and creating while other processes race it.
const OPEN_TRIES: u32 = 5;

/// The broadcast log's words in the segment header's kind area.
#[repr(C)]
pub struct LogWords {
    /// Position just past the last published record.
    pub tail: AtomicU64,
    /// Sequence number of the next record.
    pub write_seq: AtomicU64,
    /// The oldest position some member still needed when writers last looked (a hint,
    /// checked before use).
    pub head_hint: AtomicU64,
    /// The writer lock: 0, or the owner's [`crate::proc::Ident::token`].
    pub lock: AtomicU64,
    /// Start of the oldest record still intact: writers advance it (before they overwrite
    /// anything) past every record they are about to reuse. Lossy readers check it.
    pub oldest: AtomicU64,
    /// The pid namespace of the writer lock's owner ([`crate::proc::pid_ns`]), stored just
    /// after taking the lock and cleared just before releasing it (0: not recorded yet).
    pub lock_ns: AtomicU64,
    /// The end of the records being published: the commit point of a publish, past the
    /// tail only while a writer (or its dead remains) is between committing and storing the
    /// tail (`publish.rs`).
    pub publishing: AtomicU64,
}

// SAFETY: repr(C), seven AtomicU64 (56 bytes, 8-aligned): fits the kind area and any bytes
// are a valid value.
unsafe impl KindWords for LogWords {}

// The Python tests poke the lock word at kind area (192) + 24 of a live segment.
const _: () = assert!(std::mem::offset_of!(LogWords, lock) == 24);

/// Options for a new queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueOptions {
    pub capacity: u64,
    pub max_members: u32,
    pub align: u32,
    pub mode: u32,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            capacity: 1 << 20,
            max_members: 64,
            align: 8,
            mode: 0o600,
        }
    }
}

/// A broadcast queue mapped in this process.
pub struct Queue {
    seg: Segment,
}

impl Queue {
    /// Create a queue; if a stale segment of that name exists (no live member), replace it.
    pub fn create(name: &str, opts: QueueOptions) -> Result<Arc<Queue>> {
        let geo = Geometry::new(KIND_BROADCAST, opts.capacity, opts.max_members, opts.align)?;
        for _ in 0..CREATE_TRIES {
            match Segment::create(name, geo, opts.mode) {
                Ok(seg) => return Ok(Arc::new(Queue { seg })),
                Err(Error::Exists(n)) => {
                    if !remove_if_stale(name) {
                        return Err(Error::Exists(n));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Exists(segment::shm_path(name)?[1..].to_owned()))
    }

    /// Attach to an existing queue by name: a private one (see [`Access::private`]).
    pub fn attach(name: &str) -> Result<Arc<Queue>> {
        Queue::attach_with(name, &Access::private())
    }

    /// Attach to an existing queue by name if it passes `access` (its owner, its write
    /// permissions; never through a symbolic link).
    pub fn attach_with(name: &str, access: &Access) -> Result<Arc<Queue>> {
        Ok(Arc::new(Queue {
            seg: Segment::attach(name, KIND_BROADCAST, access)?,
        }))
    }

    /// Attach if it exists, else create. An existing queue must pass the access that
    /// `opts.mode` implies ([`Access::for_mode`]).
    pub fn open(name: &str, opts: QueueOptions) -> Result<Arc<Queue>> {
        Queue::open_with(name, opts, &Access::for_mode(opts.mode)?)
    }

    /// Attach if it exists and passes `access`, else create.
    pub fn open_with(name: &str, opts: QueueOptions, access: &Access) -> Result<Arc<Queue>> {
        for _ in 0..OPEN_TRIES {
            match Queue::attach_with(name, access) {
                Ok(q) if q.header().state.load(Ordering::Acquire) == STATE_OPEN => return Ok(q),
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            match Queue::create(name, opts) {
                Err(Error::Exists(_)) => continue,
                r => return r,
            }
        }
        Err(Error::Exists(name.to_owned()))
    }

    /// The segment name.
    pub fn name(&self) -> &str {
        self.seg.name()
    }
    /// The geometry.
    pub fn geometry(&self) -> &Geometry {
        self.seg.geometry()
    }
    /// Logical capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.seg.geometry().capacity
    }
    fn header(&self) -> &Header {
        self.seg.header()
    }
    /// The log's own header words.
    fn log(&self) -> &LogWords {
        self.seg.header().kind_words()
    }
    /// The log's header words (for inspection and fault-injection tests).
    #[doc(hidden)]
    pub fn log_words(&self) -> &LogWords {
        self.log()
    }
    /// The underlying segment (for inspection and fault-injection tests).
    #[doc(hidden)]
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
    fn member(&self, slot: u32) -> Result<&Member> {
        self.seg
            .member(slot)
            .ok_or_else(|| Error::corrupt(self.name(), "member slot out of range"))
    }

    /// Mark the queue shut down: readers get [`Error::ShutDown`] once they have read
    /// everything; sends fail.
    pub fn shutdown(&self) {
        let h = self.header();
        h.shutdown.store(1, Ordering::Release);
        h.data_wait.pair().notify_always();
    }

    /// Whether the queue was shut down.
    pub fn is_shutdown(&self) -> bool {
        self.header().shutdown.load(Ordering::Acquire) != 0
    }

    /// Number of messages ever written (the next message's sequence number).
    pub fn write_seq(&self) -> u64 {
        self.log().write_seq.load(Ordering::Acquire)
    }
}
