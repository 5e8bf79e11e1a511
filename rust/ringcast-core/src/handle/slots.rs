//! Handles of a slot ring: this process's member slot, and a block taken from the ring.

use std::sync::{Arc, Mutex};

use super::{ForkTag, Release, Views};
use crate::error::{Error, Result};
use crate::queue::MemberId;
use crate::slots::SlotRing;

/// A slot ring and this process's member slot in it (a worker or a consumer), left on close
/// or drop, and only by the process that joined.
pub struct SlotRingMember {
    ring: Arc<SlotRing>,
    me: Mutex<Option<(MemberId, ForkTag)>>,
}

impl SlotRingMember {
    /// A handle of `ring`, not joined yet.
    pub fn new(ring: Arc<SlotRing>) -> Self {
        SlotRingMember {
            ring,
            me: Mutex::new(None),
        }
    }
    /// The ring.
    pub fn ring(&self) -> &Arc<SlotRing> {
        &self.ring
    }
    /// Join the ring as a member of `kind` named `name`.
    pub fn join(&self, kind: u32, name: &[u8]) -> Result<()> {
        let id = self.ring.join(kind, name)?;
        *self.me.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, ForkTag::now()));
        Ok(())
    }
    /// The member slot: [`Error::Forked`] in a forked child, [`Error::Closed`] if not joined
    /// (or closed).
    pub fn id(&self) -> Result<MemberId> {
        let me = self.me.lock().unwrap_or_else(|e| e.into_inner());
        match *me {
            Some((id, born)) if born.mine() => Ok(id),
            Some(_) => Err(Error::Forked("_SlotRing")),
            None => Err(Error::Closed("_SlotRing (not joined)")),
        }
    }
    /// Close: returns the member slot this process must leave (the caller leaves it with
    /// [`SlotRing::leave`], e.g. with the GIL released), if any.
    pub fn close(&self) -> Option<MemberId> {
        let me = self.me.lock().unwrap_or_else(|e| e.into_inner()).take();
        me.filter(|(_, born)| born.mine()).map(|(id, _)| id)
    }
}

impl Drop for SlotRingMember {
    fn drop(&mut self) {
        if let Some(id) = self.close() {
            self.ring.leave(id);
        }
    }
}

/// A block taken from a slot ring: its slot is reused only once the block is released and
/// its last view is gone (or it is dropped).
pub struct BlockTicket {
    ring: Arc<SlotRing>,
    slot: u32,
    born: ForkTag,
    views: Views,
}

impl BlockTicket {
    /// The block in `slot` of `ring`, taken by this process.
    pub fn new(ring: Arc<SlotRing>, slot: u32) -> Self {
        BlockTicket {
            ring,
            slot,
            born: ForkTag::now(),
            views: Views::new(),
        }
    }
    /// The views of the block.
    pub fn views(&self) -> &Views {
        &self.views
    }
    /// [`Error::Closed`] once released or ended (no new view may be made).
    pub fn check(&self) -> Result<()> {
        self.views.check_live("block (it was released)")
    }
    /// [`Error::Closed`] once ended (its slot may be reused).
    pub fn check_not_ended(&self) -> Result<()> {
        self.views.check_not_ended("block (it was released)")
    }
    /// Give the slot back; views still alive keep it (the slot is marked retained) until
    /// they are gone.
    pub fn release(&self) {
        match self.views.release() {
            Release::Now => self.end(),
            Release::Deferred if self.born.mine() => {
                let _ = self.ring.retain(self.slot);
            }
            Release::Deferred | Release::Again => {}
        }
    }
    /// A view is gone (ends a released block with its last view).
    pub fn view_gone(&self) {
        if self.views.remove() {
            self.end();
        }
    }
    /// End the block now: its slot is free again (once; nothing in a forked child).
    pub fn end(&self) {
        if self.views.end() && self.born.mine() {
            let _ = self.ring.release(self.slot);
        }
    }
}

impl Drop for BlockTicket {
    fn drop(&mut self) {
        self.end();
    }
}
