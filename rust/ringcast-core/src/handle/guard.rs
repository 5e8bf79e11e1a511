//! Which process and which thread may use a handle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::proc;

/// The fork generation a handle was made in (see [`proc::fork_generation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkTag(u64);

impl ForkTag {
    /// The calling process's generation.
    pub fn now() -> Self {
        ForkTag(proc::fork_generation())
    }
    /// Whether the calling process is the one the handle was made in (not a forked child).
    pub fn mine(self) -> bool {
        self.0 == proc::fork_generation()
    }
    /// [`Error::Forked`] (naming the handle `what`) in a forked child.
    pub fn check(self, what: &'static str) -> Result<()> {
        if self.mine() {
            Ok(())
        } else {
            Err(Error::Forked(what))
        }
    }
}

/// A number identifying the calling thread (never 0).
pub fn thread_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TAG: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TAG.with(|t| *t)
}

/// A handle used by one call at a time: a second concurrent use gets [`Error::Busy`].
#[derive(Debug, Default)]
pub struct Exclusive(AtomicBool);

impl Exclusive {
    /// A free guard.
    pub const fn new() -> Self {
        Exclusive(AtomicBool::new(false))
    }
    /// Mark the handle (named `what`) in use until the returned guard drops; [`Error::Busy`]
    /// if it is in use already (by another thread, or by this one re-entering).
    pub fn take(&self, what: &'static str) -> Result<InUse<'_>> {
        if self.0.swap(true, Ordering::Acquire) {
            return Err(Error::Busy(what));
        }
        Ok(InUse(&self.0))
    }
    /// Whether a call holds the handle now.
    pub fn in_use(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A handle in use; dropping it frees the handle.
#[derive(Debug)]
pub struct InUse<'a>(&'a AtomicBool);

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The thread (see [`thread_tag`]) holding a reservation on a queue, if any: that thread
/// must not send through the queue until it commits or aborts (it would wait for itself).
#[derive(Debug, Default)]
pub struct ReservingThread(AtomicU64);

impl ReservingThread {
    /// No thread reserving.
    pub const fn new() -> Self {
        ReservingThread(AtomicU64::new(0))
    }
    /// [`Error::Held`] if the calling thread holds a reservation.
    pub fn check(&self) -> Result<()> {
        if self.0.load(Ordering::Acquire) == thread_tag() {
            return Err(Error::Held(
                "this thread holds a reservation on this queue: commit or abort it first".into(),
            ));
        }
        Ok(())
    }
    /// The calling thread now holds a reservation.
    pub fn mark(&self) {
        self.0.store(thread_tag(), Ordering::Release);
    }
    /// The reservation ended.
    pub fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }
}
