//! ringcast-core: shared-memory segments, process-shared waits, member liveness, the
//! broadcast log and the slot ring. Pure Rust; the Python bindings live in `ringcast-py`.
//!
//! - [`segment`]: named shared-memory segments, their validated header, the member table
//!   every kind shares, listing and garbage collection.
//! - [`queue`]: the broadcast log (records, writer lock, members, writing, reading, consumer
//!   groups, stats).
//! - [`slots`]: the slot ring filled by workers and leased by consumers.
//! - [`wait`]: the one blocking-wait helper; [`proc`]: process identity and liveness.
//! - [`handle`]: what a handle means to its process (memberships and the process registry,
//!   fork tags, leases and views, reservations, re-entrancy guards), so the bindings only
//!   convert.
//!
//! The native HDF5 read path (extents, codecs, filler) is the crate `ringcast-h5`.

pub mod error;
#[doc(hidden)]
pub mod fault;
pub mod handle;
pub mod proc;
pub mod queue;
pub mod segment;
pub mod slots;
pub mod wait;

pub use error::{Error, Result};
pub use queue::{Filter, Queue, QueueOptions, RecordRef, Stats};
pub use segment::MemberId;
pub use wait::{Deadline, WaitSpec};
