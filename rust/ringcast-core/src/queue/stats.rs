//! Figures: a lock-free snapshot of a queue and of each member ([`Queue::stats`]).

use std::sync::atomic::Ordering;

use super::Queue;
use crate::segment::{
    Member, MemberId, FLAG_LOSSY, KIND_GROUP, KIND_GROUP_MEMBER, KIND_READER, M_ACTIVE, M_ORPHAN,
    NO_PIN,
};

/// Per-member figures for [`Stats`].
#[derive(Clone, Debug)]
pub struct MemberStats {
    pub slot: u32,
    pub kind: u32,
    pub pid: u32,
    pub name: Vec<u8>,
    pub alive: bool,
    pub cursor: u64,
    pub next_seq: u64,
    pub lag_messages: u64,
    pub lag_bytes: u64,
    pub received: u64,
    pub sent: u64,
    pub waits: u64,
    pub blocked_ns: u64,
    /// A lossy reader.
    pub lossy: bool,
    /// Oldest pinned position (leases, group claims), if any.
    pub pin: Option<u64>,
    /// Messages missed by a lapped lossy reader.
    pub missed: u64,
    /// Claims this member got as redeliveries (for a group: orphaned claims waiting).
    pub redelivered: u64,
    pub leases: u64,
    /// For a group member: its group's name.
    pub group: Option<Vec<u8>>,
    /// A dead group member whose claim waits for redelivery.
    pub orphan: bool,
}

/// A snapshot of a queue, read without any lock.
#[derive(Clone, Debug)]
pub struct Stats {
    pub name: String,
    pub capacity: u64,
    pub used_bytes: u64,
    pub write_seq: u64,
    pub tail: u64,
    pub shutdown: bool,
    pub lock_recoveries: u64,
    pub reaped: u64,
    pub full_events: u64,
    pub send_blocked_ns: u64,
    pub overruns: u64,
    pub redelivered: u64,
    pub claims_lost: u64,
    pub members: Vec<MemberStats>,
}

impl Queue {
    /// Add to a member's sent counter.
    pub fn count_sent(&self, id: MemberId) {
        if let Some(m) = self.seg.member(id.slot) {
            m.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Free bytes right now (as a writer would compute it).
    pub fn free_bytes(&self) -> u64 {
        let tail = self.log().tail.load(Ordering::Acquire);
        let head = self.scan_head(tail, false).unwrap_or(tail);
        self.capacity().saturating_sub(tail.saturating_sub(head))
    }

    /// A lock-free snapshot.
    pub fn stats(&self) -> Stats {
        let h = self.header();
        let tail = self.log().tail.load(Ordering::Acquire);
        let wseq = self.log().write_seq.load(Ordering::Acquire);
        let members = self
            .seg
            .members()
            .filter(|(_, m)| matches!(m.state.load(Ordering::Acquire), M_ACTIVE | M_ORPHAN))
            .map(|(slot, m)| {
                let cursor = m.cursor.load(Ordering::Acquire);
                let next_seq = m.seq.load(Ordering::Relaxed);
                let kind = m.kind.load(Ordering::Relaxed);
                let orphan = m.state.load(Ordering::Acquire) == M_ORPHAN;
                let group = (kind == KIND_GROUP_MEMBER)
                    .then(|| self.group_of(m).map(Member::name))
                    .flatten();
                let reads = matches!(kind, KIND_READER | KIND_GROUP);
                let pin = m.pin.load(Ordering::Acquire);
                MemberStats {
                    slot,
                    kind,
                    pid: m.pid.load(Ordering::Relaxed),
                    name: m.name(),
                    alive: kind == KIND_GROUP || m.alive(),
                    cursor,
                    next_seq,
                    lag_messages: if reads {
                        wseq.saturating_sub(next_seq)
                    } else {
                        0
                    },
                    lag_bytes: if reads {
                        tail.saturating_sub(cursor)
                    } else {
                        0
                    },
                    received: m.received.load(Ordering::Relaxed),
                    sent: m.sent.load(Ordering::Relaxed),
                    waits: m.waits.load(Ordering::Relaxed),
                    blocked_ns: m.blocked_ns.load(Ordering::Relaxed),
                    lossy: m.flags.load(Ordering::Relaxed) & FLAG_LOSSY != 0,
                    pin: (pin != NO_PIN).then_some(pin),
                    missed: m.missed.load(Ordering::Relaxed),
                    redelivered: if kind == KIND_GROUP {
                        m.orphans.load(Ordering::Relaxed)
                    } else {
                        m.redelivered.load(Ordering::Relaxed)
                    },
                    leases: m.leases.load(Ordering::Relaxed),
                    group,
                    orphan,
                }
            })
            .collect();
        let head = self.scan_head(tail, false).unwrap_or(tail);
        Stats {
            name: self.name().to_owned(),
            capacity: self.capacity(),
            used_bytes: tail.saturating_sub(head),
            write_seq: wseq,
            tail,
            shutdown: h.shutdown.load(Ordering::Acquire) != 0,
            lock_recoveries: h.lock_recoveries.load(Ordering::Relaxed),
            reaped: h.reaped.load(Ordering::Relaxed),
            full_events: h.space_wait.events.load(Ordering::Relaxed),
            send_blocked_ns: h.space_wait.blocked_ns.load(Ordering::Relaxed),
            overruns: h.overruns.load(Ordering::Relaxed),
            redelivered: h.redelivered.load(Ordering::Relaxed),
            claims_lost: h.claims_lost.load(Ordering::Relaxed),
            members,
        }
    }
}
