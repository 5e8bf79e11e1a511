//! The consumer side: take a ready block (in task order or any), notice the end, a dead
//! worker or slots all held by views, release or retain a block, and recycle a finished
//! ring for another run.

use std::sync::atomic::Ordering;

use super::{
    SlotRing, TakeResult, Taken, KIND_WORKER, NO_LIMIT, SLOT_ERROR, SLOT_FILLING, SLOT_FREE,
    SLOT_LEASED, SLOT_READY, SLOT_RETAINED,
};
use crate::error::{Error, Result};
use crate::segment::{MemberId, M_ACTIVE, M_FREE, STATE_OPEN};
use crate::wait::{block_on, WaitSpec};

impl SlotRing {
    /// Take a ready block: the one of task `want` if given (ordered delivery), else any
    /// (lowest task first). [`TakeResult::End`] once every task has been taken (finite
    /// rings), or the ring was stopped and nothing is in flight. Fails with
    /// [`Error::WorkerDied`] when a worker died holding a slot, or work remains and no
    /// worker is alive.
    pub fn take(
        &self,
        want: Option<u64>,
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<TakeResult> {
        self.take_helping(want, spec, on_slice, &mut || Ok(false))
    }

    /// [`SlotRing::take`], where the consumer, instead of waiting while nothing is ready,
    /// may fill a slot itself: `help` is called then and returns whether it published one.
    pub fn take_helping(
        &self,
        want: Option<u64>,
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
        help: &mut dyn FnMut() -> Result<bool>,
    ) -> Result<TakeResult> {
        let h = self.header();
        let r = block_on(
            &h.data_wait.pair(),
            spec,
            || {
                self.seg.probe()?; // a shrink of the segment: an error, not a SIGBUS later
                if let Some(t) = self.try_take(want)? {
                    return Ok(Some(TakeResult::Block(t)));
                }
                if self.finished(want) {
                    return Ok(Some(TakeResult::End));
                }
                if help()? {
                    if let Some(t) = self.try_take(want)? {
                        return Ok(Some(TakeResult::Block(t)));
                    }
                }
                if self.all_retained() {
                    return Err(Error::Held(format!(
                        "all {} slots are held by views of earlier blocks that are still alive \
                         (views kept after their guard keep their slot): copy what you keep, \
                         or raise read_ahead",
                        self.n_slots()
                    )));
                }
                Ok(None)
            },
            || {
                self.check_workers(want)?;
                on_slice()
            },
        )?;
        Ok(r.unwrap_or(TakeResult::TimedOut))
    }

    fn try_take(&self, want: Option<u64>) -> Result<Option<Taken>> {
        let mut best: Option<(u32, u64)> = None;
        for slot in 0..self.n_slots() {
            let m = self.meta(slot)?;
            if m.state.load(Ordering::Acquire) != SLOT_READY {
                continue;
            }
            let t = m.task.load(Ordering::Relaxed);
            match want {
                Some(w) if t != w => continue,
                _ => {}
            }
            if best.is_none_or(|(_, bt)| t < bt) {
                best = Some((slot, t));
            }
        }
        let Some((slot, _)) = best else {
            return Ok(None);
        };
        let m = self.meta(slot)?;
        if m.state
            .compare_exchange(SLOT_READY, SLOT_LEASED, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Ok(None); // another consumer thread took it; the caller looks again
        }
        self.taken().fetch_add(1, Ordering::AcqRel);
        let len = m.len.load(Ordering::Relaxed).min(self.slot_bytes());
        Ok(Some(Taken {
            slot,
            task: m.task.load(Ordering::Relaxed),
            len,
            error: m.flags.load(Ordering::Relaxed) & SLOT_ERROR != 0,
        }))
    }

    /// Whether nothing more will come: every task taken, or stopped with nothing ready.
    fn finished(&self, want: Option<u64>) -> bool {
        if let Some(l) = self.tasks() {
            let done = match want {
                Some(w) => w >= l,
                None => self.taken().load(Ordering::Acquire) >= l,
            };
            if done {
                return true;
            }
        }
        self.stopped() && !self.any_in_flight()
    }

    fn any_in_flight(&self) -> bool {
        (0..self.n_slots()).any(|s| {
            self.meta(s)
                .is_ok_and(|m| matches!(m.state.load(Ordering::Acquire), SLOT_FILLING | SLOT_READY))
        })
    }

    /// Fail if a worker died holding a slot, or if work remains and no worker is alive.
    fn check_workers(&self, want: Option<u64>) -> Result<()> {
        for slot in 0..self.n_slots() {
            let m = self.meta(slot)?;
            if m.state.load(Ordering::Acquire) != SLOT_FILLING {
                continue;
            }
            let Some(w) = self.seg.member(m.owner.load(Ordering::Relaxed)) else {
                continue;
            };
            if w.kind.load(Ordering::Relaxed) == KIND_WORKER && !w.alive() {
                return Err(Error::WorkerDied {
                    pid: w.pid.load(Ordering::Relaxed),
                    task: Some(m.task.load(Ordering::Relaxed)),
                });
            }
        }
        // Work that only a worker can do: tasks not handed out yet.
        let unstarted = self.tasks().is_none_or(|l| self.tasks_started() < l);
        if unstarted && !self.finished(want) && !self.stopped() && self.live_workers() == 0 {
            let dead = self
                .seg
                .members()
                .find(|(_, m)| {
                    m.state.load(Ordering::Acquire) == M_ACTIVE
                        && m.kind.load(Ordering::Relaxed) == KIND_WORKER
                })
                .map_or(0, |(_, m)| m.pid.load(Ordering::Relaxed));
            if dead != 0 || self.tasks_started() > 0 {
                return Err(Error::WorkerDied {
                    pid: dead,
                    task: None,
                });
            }
        }
        Ok(())
    }

    fn all_retained(&self) -> bool {
        (0..self.n_slots()).all(|s| {
            self.meta(s).is_ok_and(|m| {
                m.state.load(Ordering::Acquire) == SLOT_LEASED
                    && m.flags.load(Ordering::Acquire) & SLOT_RETAINED != 0
            })
        })
    }

    /// Mark a taken slot as released by the consumer but still viewed (see
    /// [`SLOT_RETAINED`]).
    pub fn retain(&self, slot: u32) -> Result<()> {
        let m = self.meta(slot)?;
        if m.state.load(Ordering::Acquire) != SLOT_LEASED {
            return Err(Error::InvalidArgument(format!("slot {slot} is not leased")));
        }
        m.flags.fetch_or(SLOT_RETAINED, Ordering::AcqRel);
        Ok(())
    }

    /// Give a taken slot back (its memory is reused from now on).
    pub fn release(&self, slot: u32) -> Result<()> {
        let m = self.meta(slot)?;
        if m.state.load(Ordering::Acquire) != SLOT_LEASED {
            return Err(Error::InvalidArgument(format!("slot {slot} is not leased")));
        }
        m.flags.store(0, Ordering::Relaxed);
        if m.state
            .compare_exchange(SLOT_LEASED, SLOT_FREE, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Err(Error::InvalidArgument(format!("slot {slot} is not leased")));
        }
        self.header().space_wait.pair().notify();
        Ok(())
    }

    /// Live members other than `me` (dead ones are reaped first).
    pub fn others(&self, me: MemberId) -> usize {
        self.reap_dead();
        self.seg
            .members()
            .filter(|(slot, m)| *slot != me.slot && m.state.load(Ordering::Acquire) != M_FREE)
            .count()
    }

    /// Make a finished ring new again for another run of `tasks` tasks (`None`: cyclic), so
    /// its memory, already faulted in, is reused. Only member `me` may be left (workers
    /// must have left), and no slot may be filled or leased (a view of a block still
    /// alive): else [`Error::Held`] and nothing changes. The caller makes sure that none of
    /// its own threads uses the ring's previous run any more.
    pub fn recycle(&self, me: MemberId, tasks: Option<u64>) -> Result<()> {
        if self.others(me) > 0 {
            return Err(Error::Held(format!(
                "slot ring '{}' still has other members",
                self.name()
            )));
        }
        let h = self.header();
        if h.state.load(Ordering::Acquire) != STATE_OPEN {
            return Err(Error::Removed(self.name().to_owned()));
        }
        for slot in 0..self.n_slots() {
            if matches!(
                self.meta(slot)?.state.load(Ordering::Acquire),
                SLOT_LEASED | SLOT_FILLING
            ) {
                return Err(Error::Held(format!(
                    "slot {slot} of ring '{}' is still being filled or leased",
                    self.name()
                )));
            }
        }
        for slot in 0..self.n_slots() {
            let m = self.meta(slot)?;
            m.flags.store(0, Ordering::Relaxed);
            m.len.store(0, Ordering::Relaxed);
            m.task.store(0, Ordering::Relaxed);
            m.state.store(SLOT_FREE, Ordering::Release);
        }
        self.words()
            .task_limit
            .store(tasks.unwrap_or(NO_LIMIT), Ordering::Release);
        self.next_task().store(0, Ordering::Release);
        self.taken().store(0, Ordering::Release);
        h.shutdown.store(0, Ordering::Release);
        Ok(())
    }

    /// Overwrite a member's pid (fault-injection tests: make it look dead).
    #[doc(hidden)]
    pub fn segment_member_pid(&self, slot: u32, pid: u32) {
        if let Some(m) = self.seg.member(slot) {
            m.pid.store(pid, Ordering::Relaxed);
        }
    }

    /// State of each slot (for tests and stats).
    pub fn slot_states(&self) -> Vec<u32> {
        (0..self.n_slots())
            .filter_map(|s| self.meta(s).ok())
            .map(|m| m.state.load(Ordering::Acquire))
            .collect()
    }
}
