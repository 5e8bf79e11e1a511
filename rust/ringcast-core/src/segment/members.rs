//! Members: the table of member slots every segment kind keeps after its header page, and
//! what all kinds share about them: claiming a slot, ownership by this process, liveness
//! (pid plus process start time, judged only from the member's own pid namespace) and
//! counting who is left.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::layout::MEMBER_BYTES;
use super::Segment;
use crate::proc;

/// A member slot owned by this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberId {
    pub slot: u32,
    pub gen: u32,
}

/// Member kind: a queue handle (writes, holds no cursor).
pub const KIND_HANDLE: u32 = 1;
/// A reader: its cursor holds back writers (unless it is lossy).
pub const KIND_READER: u32 = 2;
/// A consumer group: not a process, the cursor its members share.
pub const KIND_GROUP: u32 = 3;
/// A member of a consumer group.
pub const KIND_GROUP_MEMBER: u32 = 4;

/// Value of [`Member::pin`] when nothing is pinned.
pub const NO_PIN: u64 = u64::MAX;

/// [`Member::flags`] bit: a lossy reader (never holds back writers).
pub const FLAG_LOSSY: u32 = 1;

/// One member slot (a queue handle, a reader, a consumer group or a group member).
#[repr(C, align(256))]
pub struct Member {
    pub state: AtomicU32,
    pub kind: AtomicU32,
    pub pid: AtomicU32,
    pub gen: AtomicU32,
    pub start: AtomicU64,
    pub cursor: AtomicU64,
    pub seq: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub waits: AtomicU64,
    pub blocked_ns: AtomicU64,
    pub name_len: AtomicU32,
    pub flags: AtomicU32,
    pub name: [AtomicU64; MEMBER_NAME_BYTES / 8],
    /// The oldest position this member still reads from (a lease or a group claim), or
    /// [`NO_PIN`]. Writers never reuse memory at or after it.
    pub pin: AtomicU64,
    /// For a group member: the group's slot and that slot's generation.
    pub group: AtomicU32,
    pub group_gen: AtomicU32,
    /// Messages this (lossy) reader missed.
    pub missed: AtomicU64,
    /// For a group: claims of its dead members waiting to be redelivered.
    pub orphans: AtomicU64,
    /// Messages this member got as redeliveries.
    pub redelivered: AtomicU64,
    /// Leases taken by this reader.
    pub leases: AtomicU64,
    /// Messages this (lossy) reader missed since the last record it consumed: every record
    /// handed out reports them until one is consumed.
    pub missed_pending: AtomicU64,
    /// The pid namespace of the process holding the slot ([`proc::pid_ns`]): its pid and
    /// start time are judged only by processes of the same namespace.
    pub ns: AtomicU64,
    _pad: [AtomicU64; 9],
}

const _: () = assert!(std::mem::size_of::<Member>() == MEMBER_BYTES);

/// Member slot state: free for the taking.
pub const M_FREE: u32 = 0;
/// Member slot state: being filled in by a joining member.
pub const M_CLAIMING: u32 = 1;
/// Member slot state: in use.
pub const M_ACTIVE: u32 = 2;
/// A dead group member whose claim waits for another member of its group.
pub const M_ORPHAN: u32 = 3;
/// Member slot state: being freed (its pid is being cleared); see [`Member::free_from`].
pub const M_FREEING: u32 = 4;

/// Longest member name kept in the table (longer names are cut for display only).
pub const MEMBER_NAME_BYTES: usize = 40;

impl Member {
    /// Store a (possibly cut) display name.
    pub fn set_name(&self, name: &[u8]) {
        let n = name.len().min(MEMBER_NAME_BYTES);
        let mut buf = [0u8; MEMBER_NAME_BYTES];
        buf[..n].copy_from_slice(&name[..n]);
        for (i, w) in self.name.iter().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[i * 8..i * 8 + 8]);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        self.name_len.store(n as u32, Ordering::Release);
    }
    /// The display name (bounded by the slot size whatever shared memory says).
    pub fn name(&self) -> Vec<u8> {
        let n = (self.name_len.load(Ordering::Acquire) as usize).min(MEMBER_NAME_BYTES);
        let mut buf = Vec::with_capacity(MEMBER_NAME_BYTES);
        for w in &self.name {
            buf.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        buf.truncate(n);
        buf
    }

    /// Free the slot if it is in state `from` (one freer wins). The pid is cleared before
    /// the slot is free, so a slot being claimed is never judged by the pid of the process
    /// that held it before (a reaper skips a claiming slot whose pid is still 0).
    pub fn free_from(&self, from: u32) -> bool {
        if self
            .state
            .compare_exchange(from, M_FREEING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.pid.store(0, Ordering::Relaxed);
        self.state.store(M_FREE, Ordering::Release);
        true
    }

    /// Free a slot this process owns, whatever its state.
    pub fn free_owned(&self) {
        loop {
            let st = self.state.load(Ordering::Acquire);
            if st == M_FREE || st == M_FREEING || self.free_from(st) {
                return;
            }
        }
    }

    /// What this process can tell about the process holding this slot (a recycled pid
    /// is dead; a process of another pid namespace is [`proc::Liveness::Unknown`]).
    pub fn liveness(&self) -> proc::Liveness {
        proc::liveness(
            self.pid.load(Ordering::Relaxed),
            self.start.load(Ordering::Relaxed),
            u64::MAX,
            self.ns.load(Ordering::Relaxed),
        )
    }

    /// Whether the process holding this slot may still run: anything but positive evidence
    /// of its death (see [`proc::liveness`]). Only a member for which this is false may be
    /// reaped.
    pub fn alive(&self) -> bool {
        !self.liveness().is_dead()
    }
}

impl Segment {
    /// Claim a free member slot for this process as a member of `kind`: the slot is left
    /// [`M_CLAIMING`] with every counter zeroed, for the caller to finish and activate.
    /// `None` when every slot is taken.
    pub fn claim_member(&self, kind: u32, name: &[u8], flags: u32) -> Option<MemberId> {
        let me = proc::current();
        for (slot, m) in self.members() {
            if m.state
                .compare_exchange(M_FREE, M_CLAIMING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // The pid goes last: a reaper that reads it (not 0) reads this start and
                // namespace with it, never the previous holder's.
                m.start.store(me.start, Ordering::Relaxed);
                m.ns.store(proc::pid_ns(), Ordering::Relaxed);
                m.pid.store(me.pid, Ordering::Release);
                let gen = m.gen.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                m.kind.store(kind, Ordering::Relaxed);
                m.flags.store(flags, Ordering::Relaxed);
                m.set_name(name);
                m.pin.store(NO_PIN, Ordering::SeqCst);
                m.group.store(0, Ordering::Relaxed);
                m.group_gen.store(0, Ordering::Relaxed);
                for c in [
                    &m.received,
                    &m.sent,
                    &m.waits,
                    &m.blocked_ns,
                    &m.missed,
                    &m.missed_pending,
                    &m.orphans,
                    &m.redelivered,
                    &m.leases,
                ] {
                    c.store(0, Ordering::Relaxed);
                }
                return Some(MemberId { slot, gen });
            }
        }
        None
    }

    /// The slot of `id` if this process still holds it.
    pub fn owned(&self, id: MemberId) -> Option<&Member> {
        let m = self.member(id.slot)?;
        (m.gen.load(Ordering::Relaxed) == id.gen
            && m.pid.load(Ordering::Relaxed) == proc::current().pid
            && m.state.load(Ordering::Acquire) != M_FREE)
            .then_some(m)
    }

    /// Member slots in use (whatever their state other than free).
    pub fn members_in_use(&self) -> usize {
        self.members()
            .filter(|(_, m)| m.state.load(Ordering::Acquire) != M_FREE)
            .count()
    }
}
