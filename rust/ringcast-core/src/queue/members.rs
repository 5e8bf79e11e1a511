//! Joining and leaving: claiming a member slot (creating a consumer group on first use),
//! leaving (the last member out unlinks the segment), reaping members whose process died,
//! and waiting for readers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Queue;
use crate::error::{Error, Result};
use crate::proc;
use crate::segment::{
    Member, MemberId, FLAG_LOSSY, KIND_GROUP, KIND_GROUP_MEMBER, KIND_READER, MEMBER_NAME_BYTES,
    M_ACTIVE, M_CLAIMING, M_ORPHAN, NO_PIN, STATE_CLOSED, STATE_OPEN,
};
use crate::wait::{block_on, no_check, WaitSpec};

impl Queue {
    /// Join as a member of `kind`. A reader starts at the current tail.
    pub fn join(&self, kind: u32, name: &[u8]) -> Result<MemberId> {
        self.join_checked(kind, name, &mut no_check)
    }

    /// [`Queue::join`], running `on_slice` between the slices of a wait for the writer lock
    /// (the bindings check for signals there); its error ends the wait.
    pub fn join_checked(
        &self,
        kind: u32,
        name: &[u8],
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<MemberId> {
        self.join_with(kind, name, 0, None, on_slice)
    }

    /// Join as a reader; a lossy one never holds back writers.
    pub fn join_reader(&self, name: &[u8], lossy: bool) -> Result<MemberId> {
        self.join_reader_checked(name, lossy, &mut no_check)
    }

    /// [`Queue::join_reader`] with a check between wait slices (see [`Queue::join_checked`]).
    pub fn join_reader_checked(
        &self,
        name: &[u8],
        lossy: bool,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<MemberId> {
        let flags = if lossy { FLAG_LOSSY } else { 0 };
        self.join_with(KIND_READER, name, flags, None, on_slice)
    }

    /// Join consumer group `group` (created if it does not exist, starting at the current
    /// tail): its members share one cursor, so each message goes to one of them.
    pub fn join_group(&self, name: &[u8], group: &[u8]) -> Result<MemberId> {
        self.join_group_checked(name, group, &mut no_check)
    }

    /// [`Queue::join_group`] with a check between wait slices (see [`Queue::join_checked`]).
    pub fn join_group_checked(
        &self,
        name: &[u8],
        group: &[u8],
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<MemberId> {
        if group.is_empty() || group.len() > MEMBER_NAME_BYTES {
            return Err(Error::InvalidArgument(format!(
                "a group name must be 1 to {MEMBER_NAME_BYTES} bytes, got {}",
                group.len()
            )));
        }
        self.join_with(KIND_GROUP_MEMBER, name, 0, Some(group), on_slice)
    }

    fn join_with(
        &self,
        kind: u32,
        name: &[u8],
        flags: u32,
        group: Option<&[u8]>,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<MemberId> {
        let mut id = self.seg.claim_member(kind, name, flags);
        if id.is_none() {
            let g = self.lock(WaitSpec::nowait(), &mut *on_slice)?;
            self.reap_dead(None);
            drop(g);
            id = self.seg.claim_member(kind, name, flags);
        }
        let no_slot = || Error::NoMemberSlot {
            name: self.name().to_owned(),
            max: self.geometry().max_members,
        };
        let id = id.ok_or_else(no_slot)?;
        let m = self.member(id.slot)?;
        let h = self.header();
        let g = match self.lock(WaitSpec::nowait(), on_slice) {
            Ok(g) => g,
            Err(e) => {
                m.free_owned();
                return Err(e);
            }
        };
        if h.state.load(Ordering::Acquire) != STATE_OPEN {
            m.free_owned();
            return Err(Error::Removed(self.name().to_owned()));
        }
        if let Some(gname) = group {
            let gid = match self.find_group(gname) {
                Some(gid) => Some(gid),
                None => {
                    let made = self.seg.claim_member(KIND_GROUP, gname, 0);
                    if let Some(gid) = made {
                        let gm = self.member(gid.slot)?;
                        gm.cursor
                            .store(self.log().tail.load(Ordering::Acquire), Ordering::SeqCst);
                        gm.seq.store(
                            self.log().write_seq.load(Ordering::Acquire),
                            Ordering::Relaxed,
                        );
                        gm.state.store(M_ACTIVE, Ordering::Release);
                    }
                    made
                }
            };
            let Some(gid) = gid else {
                m.free_owned();
                return Err(no_slot());
            };
            m.group.store(gid.slot, Ordering::Relaxed);
            m.group_gen.store(gid.gen, Ordering::Relaxed);
        }
        m.cursor
            .store(self.log().tail.load(Ordering::Acquire), Ordering::Relaxed);
        m.seq.store(
            self.log().write_seq.load(Ordering::Acquire),
            Ordering::Relaxed,
        );
        m.state.store(M_ACTIVE, Ordering::Release);
        drop(g);
        h.member_wait.pair().notify();
        Ok(id)
    }

    /// Leave. Returns true if this was the last member and the segment was unlinked.
    pub fn leave(&self, id: MemberId) -> Result<bool> {
        self.leave_checked(id, &mut no_check)
    }

    /// [`Queue::leave`], running `on_slice` between the slices of its wait for the writer
    /// lock. The member's slot is freed whatever happens; if `on_slice` fails (a signal),
    /// the wait ends and its error is returned, without reaping or unlinking (a live
    /// process holds the lock, and the last member out unlinks).
    pub fn leave_checked(
        &self,
        id: MemberId,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<bool> {
        let h = self.header();
        let guard = self.lock(WaitSpec::nowait(), on_slice);
        if let Some(m) = self.seg.owned(id) {
            m.pin.store(NO_PIN, Ordering::SeqCst);
            m.free_owned();
        }
        let mut unlinked = false;
        let mut interrupted = None;
        match guard {
            Ok(g) => {
                self.reap_dead(None);
                if self.seg.members_in_use() == 0 && h.state.load(Ordering::Acquire) == STATE_OPEN {
                    h.state.store(STATE_CLOSED, Ordering::Release);
                    unlinked = self.seg.unlink().is_ok();
                }
                drop(g);
            }
            // A lock held longer than the grace by a live process: left without reaping.
            Err(Error::Timeout(..)) => {}
            Err(e) => interrupted = Some(e),
        }
        h.space_wait.pair().notify();
        h.member_wait.pair().notify();
        match interrupted {
            Some(e) => Err(e),
            None => Ok(unlinked),
        }
    }

    /// Free the slots of members whose process is gone (a group member holding a claim
    /// becomes an orphan its group redelivers), then the groups left without members.
    /// Call with the lock held. With `below`, only members holding memory below that
    /// position are checked.
    pub(super) fn reap_dead(&self, below: Option<u64>) -> u32 {
        let mut n = 0;
        for (_, m) in self.seg.members() {
            let st = m.state.load(Ordering::Acquire);
            if st != M_ACTIVE && st != M_CLAIMING {
                continue;
            }
            // Acquire: a claimer stores its start time and namespace before its pid.
            let pid = m.pid.load(Ordering::Acquire);
            if st == M_CLAIMING && pid == 0 {
                continue; // being claimed right now
            }
            let kind = m.kind.load(Ordering::Relaxed);
            if kind == KIND_GROUP {
                continue; // not a process: reaped with its last member
            }
            if let Some(b) = below {
                if st != M_ACTIVE || !self.holds_below(m, kind, b) {
                    continue;
                }
            }
            // Only positive evidence of death reaps: a member this process cannot judge
            // (another pid namespace, or our own lack of file descriptors) is left alone.
            let life = proc::liveness(
                pid,
                m.start.load(Ordering::Relaxed),
                u64::MAX,
                m.ns.load(Ordering::Relaxed),
            );
            if life.is_dead() && self.retire(m, st) {
                n += 1;
            }
        }
        n += self.reap_groups();
        if n > 0 {
            self.header()
                .reaped
                .fetch_add(u64::from(n), Ordering::Relaxed);
        }
        n
    }

    /// Whether a member keeps writers from reusing memory below `b`.
    fn holds_below(&self, m: &Member, kind: u32, b: u64) -> bool {
        let pin = m.pin.load(Ordering::Acquire);
        match kind {
            KIND_READER => {
                m.flags.load(Ordering::Relaxed) & FLAG_LOSSY == 0
                    && (m.cursor.load(Ordering::Acquire) < b || pin < b)
            }
            KIND_GROUP_MEMBER => {
                pin < b
                    || self
                        .group_of(m)
                        .is_some_and(|g| g.cursor.load(Ordering::Acquire) < b)
            }
            _ => false,
        }
    }

    /// Free the slot of a dead member; a group member holding a claim becomes an orphan
    /// instead, keeping its claim for another member of the group.
    pub(super) fn retire(&self, m: &Member, st: u32) -> bool {
        if st == M_ACTIVE
            && m.kind.load(Ordering::Relaxed) == KIND_GROUP_MEMBER
            && m.pin.load(Ordering::SeqCst) != NO_PIN
        {
            if m.state
                .compare_exchange(M_ACTIVE, M_ORPHAN, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                return false;
            }
            if let Some(g) = self.group_of(m) {
                g.orphans.fetch_add(1, Ordering::AcqRel);
            }
            self.header().data_wait.pair().notify();
            return true;
        }
        m.free_from(st)
    }

    /// Number of live reader members.
    pub fn live_readers(&self) -> u32 {
        self.seg
            .members()
            .filter(|(_, m)| {
                m.state.load(Ordering::Acquire) == M_ACTIVE
                    && matches!(
                        m.kind.load(Ordering::Relaxed),
                        KIND_READER | KIND_GROUP_MEMBER
                    )
                    && m.alive()
            })
            .count() as u32
    }

    /// Wait until at least `n` live readers have joined.
    pub fn wait_for_readers(
        &self,
        n: u32,
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<bool> {
        let h = self.header();
        let spec = WaitSpec {
            spin: Duration::ZERO,
            ..spec
        };
        Ok(block_on(
            &h.member_wait.pair(),
            spec,
            || Ok((self.live_readers() >= n).then_some(())),
            on_slice,
        )?
        .is_some())
    }
}
