//! Consumer groups: members sharing one cursor, so that each message goes to one of them.
//! A member's claim pins its record until acknowledged; a member that dies holding a claim
//! becomes an orphan whose claim the group redelivers; a group whose members all died is
//! reaped and its claims are counted lost.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Queue, RecordRef};
use crate::error::{Error, Result};
use crate::segment::{
    Member, MemberId, KIND_GROUP, KIND_GROUP_MEMBER, M_ACTIVE, M_CLAIMING, M_ORPHAN, NO_PIN,
};
use crate::wait::{block_on, WaitSpec};

impl Queue {
    /// The live group of that name (call with the lock held).
    pub(super) fn find_group(&self, name: &[u8]) -> Option<MemberId> {
        self.seg.members().find_map(|(slot, m)| {
            (m.state.load(Ordering::Acquire) == M_ACTIVE
                && m.kind.load(Ordering::Relaxed) == KIND_GROUP
                && m.name() == name)
                .then(|| MemberId {
                    slot,
                    gen: m.gen.load(Ordering::Relaxed),
                })
        })
    }

    /// The group slot of a group member (if it is still that group).
    pub(super) fn group_of(&self, m: &Member) -> Option<&Member> {
        let g = self.seg.member(m.group.load(Ordering::Relaxed))?;
        (g.state.load(Ordering::Acquire) == M_ACTIVE
            && g.kind.load(Ordering::Relaxed) == KIND_GROUP
            && g.gen.load(Ordering::Relaxed) == m.group_gen.load(Ordering::Relaxed))
        .then_some(g)
    }

    fn in_group(m: &Member, gslot: u32, ggen: u32) -> bool {
        m.kind.load(Ordering::Relaxed) == KIND_GROUP_MEMBER
            && m.group.load(Ordering::Relaxed) == gslot
            && m.group_gen.load(Ordering::Relaxed) == ggen
    }

    /// Free groups with no member left, and their orphaned claims (counted as lost).
    /// Call with the lock held.
    pub(super) fn reap_groups(&self) -> u32 {
        let mut n = 0;
        for (gslot, g) in self.seg.members() {
            if g.state.load(Ordering::Acquire) != M_ACTIVE
                || g.kind.load(Ordering::Relaxed) != KIND_GROUP
            {
                continue;
            }
            let ggen = g.gen.load(Ordering::Relaxed);
            let has_member = self.seg.members().any(|(_, m)| {
                matches!(m.state.load(Ordering::Acquire), M_ACTIVE | M_CLAIMING)
                    && Self::in_group(m, gslot, ggen)
            });
            if has_member {
                continue;
            }
            for (_, o) in self.seg.members() {
                if o.state.load(Ordering::Acquire) == M_ORPHAN
                    && Self::in_group(o, gslot, ggen)
                    && o.free_from(M_ORPHAN)
                {
                    self.header().claims_lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            if g.free_from(M_ACTIVE) {
                n += 1;
            }
        }
        n
    }

    fn my_group(&self, m: &Member) -> Result<&Member> {
        self.group_of(m)
            .ok_or_else(|| Error::corrupt(self.name(), "the consumer group's slot is gone"))
    }

    /// Turn dead members of `id`'s group that hold a claim into orphans (their claims are
    /// then redelivered). Returns how many.
    pub fn reap_group_peers(&self, id: MemberId) -> Result<u32> {
        let me = self.member(id.slot)?;
        let (gslot, ggen) = (
            me.group.load(Ordering::Relaxed),
            me.group_gen.load(Ordering::Relaxed),
        );
        let mut n = 0;
        for (slot, m) in self.seg.members() {
            if slot == id.slot
                || m.state.load(Ordering::Acquire) != M_ACTIVE
                || !Self::in_group(m, gslot, ggen)
                || m.pin.load(Ordering::SeqCst) == NO_PIN
            {
                continue;
            }
            if !m.alive() && self.retire(m, M_ACTIVE) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Claim the next message for group member `id` (finishing its previous claim): an
    /// orphaned claim of a dead member first, else the record at the group's cursor. The
    /// claim pins the record until [`Queue::group_ack`] or the next claim.
    pub fn group_next(&self, id: MemberId) -> Result<Option<RecordRef<'_>>> {
        let h = self.header();
        let cap = self.capacity();
        let m = self.member(id.slot)?;
        let g = self.my_group(m)?;
        let (gslot, ggen) = (
            m.group.load(Ordering::Relaxed),
            m.group_gen.load(Ordering::Relaxed),
        );
        if m.pin.load(Ordering::Relaxed) != NO_PIN {
            self.group_ack(id)?;
        }
        if g.orphans.load(Ordering::Acquire) > 0 {
            for (_, o) in self.seg.members() {
                if o.state.load(Ordering::Acquire) != M_ORPHAN || !Self::in_group(o, gslot, ggen) {
                    continue;
                }
                let p = o.pin.load(Ordering::SeqCst);
                m.pin.store(p, Ordering::SeqCst);
                if !o.free_from(M_ORPHAN) {
                    m.pin.store(NO_PIN, Ordering::SeqCst);
                    continue;
                }
                g.orphans.fetch_sub(1, Ordering::AcqRel);
                let tail = self.log().tail.load(Ordering::Acquire);
                if p == NO_PIN || p > tail || tail - p > cap {
                    m.pin.store(NO_PIN, Ordering::SeqCst);
                    return Err(Error::corrupt(
                        self.name(),
                        format!("orphaned claim at {p} is outside the log (tail {tail})"),
                    ));
                }
                let rec = self
                    .record_from(p, self.read_head(p), tail - p, None)
                    .inspect_err(|_| m.pin.store(NO_PIN, Ordering::SeqCst))?;
                m.redelivered.fetch_add(1, Ordering::Relaxed);
                h.redelivered.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(RecordRef {
                    redelivered: true,
                    ..rec
                }));
            }
        }
        loop {
            let c = g.cursor.load(Ordering::SeqCst);
            let tail = self.log().tail.load(Ordering::Acquire);
            if c == tail {
                m.pin.store(NO_PIN, Ordering::SeqCst);
                return Ok(None);
            }
            if c > tail || tail - c > cap {
                return Err(Error::corrupt(
                    self.name(),
                    format!("group cursor {c} is outside the log (tail {tail})"),
                ));
            }
            m.pin.store(c, Ordering::SeqCst);
            if g.cursor.load(Ordering::SeqCst) != c {
                continue;
            }
            let rec = self
                .record_from(c, self.read_head(c), tail - c, None)
                .inspect_err(|_| m.pin.store(NO_PIN, Ordering::SeqCst))?;
            if g.cursor
                .compare_exchange(c, rec.end, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                g.seq.fetch_max(rec.seq.wrapping_add(1), Ordering::Relaxed);
                h.space_wait.pair().notify();
                return Ok(Some(rec));
            }
        }
    }

    /// Finish group member `id`'s claim: its memory may be reused.
    pub fn group_ack(&self, id: MemberId) -> Result<()> {
        let m = self.member(id.slot)?;
        if m.pin.swap(NO_PIN, Ordering::SeqCst) != NO_PIN {
            m.received.fetch_add(1, Ordering::Relaxed);
            self.header().space_wait.pair().notify();
        }
        Ok(())
    }

    /// Whether group member `id` has something to claim (without claiming it).
    fn group_has_work(&self, id: MemberId) -> Result<bool> {
        let m = self.member(id.slot)?;
        let g = self.my_group(m)?;
        Ok(g.orphans.load(Ordering::Acquire) > 0
            || g.cursor.load(Ordering::Acquire) != self.log().tail.load(Ordering::Acquire))
    }

    /// Wait until group member `id` has something to claim (true) or the deadline passes.
    /// Dead peers' claims are looked for between wait slices. Fails with
    /// [`Error::ShutDown`] once the queue is shut down and the group has nothing left.
    pub fn group_wait(
        &self,
        id: MemberId,
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<bool> {
        let h = self.header();
        let t0 = Instant::now();
        let r = block_on(
            &h.data_wait.pair(),
            spec,
            || {
                self.seg.probe()?; // a shrink no access of ours ran into
                if self.group_has_work(id)? {
                    return Ok(Some(()));
                }
                if h.shutdown.load(Ordering::Acquire) != 0 {
                    if self.reap_group_peers(id)? > 0 {
                        return Ok(Some(()));
                    }
                    return Err(Error::ShutDown(self.name().to_owned()));
                }
                Ok(None)
            },
            || {
                self.reap_group_peers(id)?;
                on_slice()
            },
        );
        if let Ok(m) = self.member(id.slot) {
            m.waits.fetch_add(1, Ordering::Relaxed);
            m.blocked_ns
                .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        Ok(r?.is_some())
    }

    /// Messages sent but not yet handed out to group member `id`'s group.
    pub fn group_lag(&self, id: MemberId) -> Result<u64> {
        let g = self.my_group(self.member(id.slot)?)?;
        Ok(self
            .write_seq()
            .saturating_sub(g.seq.load(Ordering::Relaxed)))
    }
}
