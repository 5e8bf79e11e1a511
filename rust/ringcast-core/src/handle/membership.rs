//! Queue member slots owned by this process, and the process-wide registry that leaves them
//! all at interpreter exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::ForkTag;
use crate::error::{Error, Result};
use crate::queue::{MemberId, Queue};
use crate::wait::no_check;

/// A member slot of a queue owned by this process; leaves on [`leave`](Self::leave), on
/// drop, or through [`close_all`], whichever comes first, and only in the process that
/// joined (a forked child never leaves for its parent).
pub struct Membership {
    q: Arc<Queue>,
    id: MemberId,
    /// The member's name (for a queue handle: the sender stamped on its messages).
    name: Vec<u8>,
    born: ForkTag,
    left: AtomicBool,
}

/// Every membership of this process still alive (weakly: the handles own them).
static REGISTRY: Mutex<Vec<Weak<Membership>>> = Mutex::new(Vec::new());

impl Membership {
    /// Join `q` as a member of `kind` named `name`.
    pub fn join(q: &Arc<Queue>, kind: u32, name: &[u8]) -> Result<Arc<Membership>> {
        Membership::join_checked(q, kind, name, &mut no_check)
    }
    /// [`Membership::join`], running `on_slice` between the slices of a wait for the writer
    /// lock (the bindings check for signals there).
    pub fn join_checked(
        q: &Arc<Queue>,
        kind: u32,
        name: &[u8],
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Arc<Membership>> {
        let id = q.join_checked(kind, name, on_slice)?;
        Ok(Membership::register(q, id, name))
    }
    /// Join with a custom join call (a lossy reader, a group member).
    pub fn join_as(
        q: &Arc<Queue>,
        name: &[u8],
        how: impl FnOnce(&Queue, &[u8]) -> Result<MemberId>,
    ) -> Result<Arc<Membership>> {
        let id = how(q, name)?;
        Ok(Membership::register(q, id, name))
    }
    fn register(q: &Arc<Queue>, id: MemberId, name: &[u8]) -> Arc<Membership> {
        let m = Arc::new(Membership {
            q: Arc::clone(q),
            id,
            name: name.to_vec(),
            born: ForkTag::now(),
            left: AtomicBool::new(false),
        });
        if let Ok(mut reg) = REGISTRY.lock() {
            reg.retain(|w| w.strong_count() > 0);
            reg.push(Arc::downgrade(&m));
        }
        m
    }
    /// The queue.
    pub fn queue(&self) -> &Arc<Queue> {
        &self.q
    }
    /// The member slot.
    pub fn id(&self) -> MemberId {
        self.id
    }
    /// The member's name.
    pub fn name(&self) -> &[u8] {
        &self.name
    }
    /// Whether this process joined (not a forked child of the process that did).
    pub fn mine(&self) -> bool {
        self.born.mine()
    }
    /// [`Error::Forked`] (naming the handle `what`) in a forked child.
    pub fn check(&self, what: &'static str) -> Result<()> {
        self.born.check(what)
    }
    /// Whether the member has left.
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }
    /// Leave the queue, once (never in a forked child, never twice); returns whether this
    /// call unlinked the segment (it was the last member out).
    pub fn leave(&self) -> bool {
        self.leave_checked(&mut no_check).unwrap_or(false)
    }
    /// [`Membership::leave`], running `on_slice` between the slices of its wait for the
    /// writer lock; its error (a signal) ends the wait and is returned. The member has left
    /// all the same (its slot is free), only the segment is not unlinked then.
    pub fn leave_checked(&self, on_slice: &mut dyn FnMut() -> Result<()>) -> Result<bool> {
        if !self.mine() || self.left.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        self.q.leave_checked(self.id, on_slice)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Leave every membership of this process still alive (run at interpreter exit); returns how
/// many segments this unlinked (their last member left). Each membership leaves at most
/// once, so a later drop or close does nothing.
pub fn close_all() -> usize {
    let list: Vec<_> = REGISTRY
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    list.iter()
        .filter_map(Weak::upgrade)
        .filter(|m| m.leave())
        .count()
}

/// A queue handle's membership: usable from any thread until closed, and, unlike a reader,
/// usable in a forked child, which joins anew on first use.
pub struct QueueMember {
    member: Mutex<Option<Arc<Membership>>>,
    closed: AtomicBool,
}

impl QueueMember {
    /// A handle owning `m`.
    pub fn new(m: Arc<Membership>) -> Self {
        QueueMember {
            member: Mutex::new(Some(m)),
            closed: AtomicBool::new(false),
        }
    }
    /// This process's membership if it has one (`None` in a forked child before first use:
    /// [`alive`](Self::alive) joins then); [`Error::Closed`] once closed. `what` names the
    /// handle.
    pub fn ready(&self, what: &'static str) -> Result<Option<Arc<Membership>>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed(what));
        }
        let m = self.member.lock().map_err(|_| Error::Busy(what))?;
        Ok(m.as_ref().filter(|m| m.mine()).cloned())
    }
    /// This process's membership (joining `q` as `kind` with the name `name()` on first use
    /// in a forked child); [`Error::Closed`] once closed. `what` names the handle.
    pub fn alive(
        &self,
        q: &Arc<Queue>,
        kind: u32,
        name: impl FnOnce() -> Vec<u8>,
        what: &'static str,
    ) -> Result<Arc<Membership>> {
        self.alive_checked(q, kind, name, what, &mut no_check)
    }
    /// [`alive`](Self::alive), running `on_slice` between the slices of a wait for the
    /// writer lock when it joins.
    pub fn alive_checked(
        &self,
        q: &Arc<Queue>,
        kind: u32,
        name: impl FnOnce() -> Vec<u8>,
        what: &'static str,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Arc<Membership>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed(what));
        }
        let mut m = self.member.lock().map_err(|_| Error::Busy(what))?;
        match m.as_ref() {
            Some(m) if m.mine() => Ok(Arc::clone(m)),
            _ => {
                let joined = Membership::join_checked(q, kind, &name(), on_slice)?;
                *m = Some(Arc::clone(&joined));
                Ok(joined)
            }
        }
    }
    /// This process's membership, if it has one (none in a forked child before first use).
    pub fn current(&self) -> Option<Arc<Membership>> {
        let m = self.member.lock().ok().and_then(|m| m.clone());
        m.filter(|m| m.mine())
    }
    /// Whether [`close`](Self::close) was called.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
    /// Close the handle, once: returns the membership to leave (the caller leaves it, e.g.
    /// with the GIL released), or `None` if closed already.
    pub fn close(&self) -> Option<Arc<Membership>> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.member.lock().ok().and_then(|mut m| m.take())
    }
}
