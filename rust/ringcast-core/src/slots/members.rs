//! Slot ring members: workers and consumers register for liveness checks; the last one out
//! unlinks the segment.

use std::sync::atomic::Ordering;

use super::{SlotRing, KIND_WORKER};
use crate::error::{Error, Result};
use crate::segment::{MemberId, M_ACTIVE, STATE_CLOSED, STATE_OPEN};

impl SlotRing {
    /// Register this process as a worker or consumer (for liveness checks).
    pub fn join(&self, kind: u32, name: &[u8]) -> Result<MemberId> {
        if self.header().state.load(Ordering::Acquire) != STATE_OPEN {
            return Err(Error::Removed(self.name().to_owned()));
        }
        let id = self
            .seg
            .claim_member(kind, name, 0)
            .ok_or_else(|| Error::NoMemberSlot {
                name: self.name().to_owned(),
                max: self.seg.geometry().max_members,
            })?;
        if let Some(m) = self.seg.member(id.slot) {
            m.state.store(M_ACTIVE, Ordering::Release);
        }
        Ok(id)
    }

    /// Leave; the last member out unlinks the segment. Returns whether it did.
    pub fn leave(&self, id: MemberId) -> bool {
        if let Some(m) = self.seg.owned(id) {
            m.free_owned();
        }
        self.reap_dead();
        let h = self.header();
        if self.seg.members_in_use() == 0
            && h.state
                .compare_exchange(
                    STATE_OPEN,
                    STATE_CLOSED,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return self.seg.unlink().is_ok();
        }
        false
    }

    /// Free the member slots of dead processes. Returns how many.
    pub fn reap_dead(&self) -> u32 {
        let mut n = 0;
        for (_, m) in self.seg.members() {
            let st = m.state.load(Ordering::Acquire);
            // Only positive evidence of death frees a slot (see `proc::liveness`).
            if st == M_ACTIVE && m.liveness().is_dead() && m.free_from(M_ACTIVE) {
                n += 1;
            }
        }
        n
    }

    /// Live workers right now.
    pub fn live_workers(&self) -> u32 {
        self.seg
            .members()
            .filter(|(_, m)| {
                m.state.load(Ordering::Acquire) == M_ACTIVE
                    && m.kind.load(Ordering::Relaxed) == KIND_WORKER
                    && m.alive()
            })
            .count() as u32
    }
}
