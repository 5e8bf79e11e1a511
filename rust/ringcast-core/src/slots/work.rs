//! The worker side: claim a free slot, then the next task; publish the slot filled (or
//! holding an error record); stop.

use std::sync::atomic::Ordering;

use super::{Claim, SlotRing, SLOT_ERROR, SLOT_FILLING, SLOT_FREE, SLOT_READY};
use crate::error::{Error, Result};
use crate::proc;
use crate::segment::MemberId;
use crate::wait::{block_on, WaitSpec};

impl SlotRing {
    /// Stop: workers get [`Error::ShutDown`] from [`SlotRing::claim`]; consumers see the
    /// end once the blocks already published are taken.
    pub fn stop(&self) {
        let h = self.header();
        h.shutdown.store(1, Ordering::Release);
        h.space_wait.pair().notify_always();
        h.data_wait.pair().notify_always();
    }

    /// Whether the ring was stopped.
    pub fn stopped(&self) -> bool {
        self.header().shutdown.load(Ordering::Acquire) != 0
    }

    fn creator_alive(&self) -> bool {
        let h = self.header();
        proc::alive(
            h.creator_pid.load(Ordering::Relaxed),
            h.creator_start.load(Ordering::Relaxed),
            u64::MAX,
            h.creator_ns.load(Ordering::Relaxed),
        )
    }

    /// For worker `id`: claim a free slot, then the next task. [`Error::ShutDown`] when the
    /// ring was stopped or its creator died.
    pub fn claim(
        &self,
        id: MemberId,
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Claim> {
        let h = self.header();
        let got = block_on(
            &h.space_wait.pair(),
            spec,
            || self.seg.probe().and_then(|()| self.try_claim(id)), // probe: a shrink
            || {
                if !self.creator_alive() {
                    return Err(Error::ShutDown(self.name().to_owned()));
                }
                on_slice()
            },
        )?;
        Ok(got.unwrap_or(Claim::TimedOut))
    }

    /// [`SlotRing::claim`] without waiting: `None` when no slot is free.
    pub fn try_claim(&self, id: MemberId) -> Result<Option<Claim>> {
        if self.stopped() {
            return Err(Error::ShutDown(self.name().to_owned()));
        }
        let limit = self.tasks();
        if limit.is_some_and(|l| self.next_task().load(Ordering::Acquire) >= l) {
            return Ok(Some(Claim::NoMoreTasks));
        }
        for slot in 0..self.n_slots() {
            let m = self.meta(slot)?;
            // Look before the compare-exchange: a failed one still takes the line exclusive.
            if m.state.load(Ordering::Relaxed) != SLOT_FREE
                || m.state
                    .compare_exchange(SLOT_FREE, SLOT_FILLING, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            m.owner.store(id.slot, Ordering::Relaxed);
            m.flags.store(0, Ordering::Relaxed);
            let t = self.next_task().fetch_add(1, Ordering::AcqRel);
            if limit.is_some_and(|l| t >= l) {
                m.state.store(SLOT_FREE, Ordering::Release);
                self.header().space_wait.pair().notify();
                return Ok(Some(Claim::NoMoreTasks));
            }
            m.task.store(t, Ordering::Relaxed);
            return Ok(Some(Claim::Slot(slot, t)));
        }
        Ok(None)
    }

    /// Publish slot `slot` (claimed by this worker) holding `len` bytes; `error` marks an
    /// error record.
    pub fn publish(&self, slot: u32, len: u64, error: bool) -> Result<()> {
        let m = self.meta(slot)?;
        if m.state.load(Ordering::Acquire) != SLOT_FILLING {
            return Err(Error::InvalidArgument(format!(
                "slot {slot} is not being filled"
            )));
        }
        if len > self.slot_bytes() {
            return Err(Error::InvalidArgument(format!(
                "{len} bytes do not fit a slot of {}",
                self.slot_bytes()
            )));
        }
        m.len.store(len, Ordering::Relaxed);
        m.flags
            .store(if error { SLOT_ERROR } else { 0 }, Ordering::Relaxed);
        m.state.store(SLOT_READY, Ordering::Release);
        self.header().data_wait.pair().notify();
        Ok(())
    }
}
