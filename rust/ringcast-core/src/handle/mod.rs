//! Handle semantics shared by every binding: which process owns a member slot and when it
//! leaves, which leases and views keep shared memory pinned, and which process and thread
//! may use a handle. Pure Rust; the Python bindings (`ringcast-py`) only convert.
//!
//! - [`ForkTag`]: the fork generation a handle was made in; a handle inherited through
//!   `fork` reports [`Error::Forked`](crate::Error::Forked) instead of acting for its parent.
//! - [`Membership`]: a queue member slot owned by this process; it leaves exactly once, on
//!   [`Membership::leave`], on drop, or through [`close_all`] (at interpreter exit).
//!   [`QueueMember`] is a queue handle's membership, re-joined in a forked child.
//! - [`ReaderHandle`], [`LeaseBook`], [`LeaseTicket`]: a reader's leases; a reader closed
//!   while leases are out leaves when the last one ends.
//! - [`Views`]: the buffer exports of a leased region (a lease ends when it is released and
//!   its last view is gone). [`BlockTicket`] and [`SlotRingMember`] do the same for the
//!   slot ring.
//! - [`Exclusive`] and [`ReservingThread`]: re-entrancy guards (`HandleBusy` in Python).

mod guard;
mod lease;
mod membership;
mod slots;

pub use guard::{thread_tag, Exclusive, ForkTag, InUse, ReservingThread};
pub use lease::{LeaseBook, LeaseTicket, ReaderHandle, Release, Reserved, Views};
pub use membership::{close_all, Membership, QueueMember};
pub use slots::{BlockTicket, SlotRingMember};
