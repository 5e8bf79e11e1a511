//! The broadcast log: variable-length records in a ring, several writers, one cursor per
//! reader, space reclaimed only once every live reader has passed it.
//!
//! Records (positions are monotonically increasing u64 byte offsets; the ring index is
//! `pos % ring_size`):
//!
//! ```text
//! u32 body_len | u16 sender_len | u16 type_len | u64 seq | sender | type | pad | body | pad
//! ```
//!
//! The padding rounds the body start and the record end up to the queue's alignment (1 for
//! the pysyncq-compatible layout, 8 by default). A record costs
//! [`record_len`] bytes of the queue's capacity.
//!
//! Writers serialise on a lock whose owner is identified by pid and process start time; a
//! waiter that finds the owner dead takes the lock over. A writer copies the record past the
//! published tail and then publishes it with one release store of the new tail, so a writer
//! killed at any instant never exposes a torn record: the bytes it was writing stay
//! invisible and are overwritten by the next writer. Readers take no lock.

use std::collections::HashSet;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::proc;
use crate::segment::{
    self, Geometry, Header, Member, Segment, FLAG_LOSSY, KIND_BROADCAST, MEMBER_NAME_BYTES,
    M_ACTIVE, M_CLAIMING, M_FREE, M_ORPHAN, NO_PIN, STATE_CLOSED, STATE_OPEN,
};
use crate::wait::{block_on, Deadline, WaitPair, WaitSpec};

/// Bytes of the fixed record header.
pub const RECORD_HEADER: u64 = 16;

pub use crate::segment::{KIND_GROUP, KIND_GROUP_MEMBER, KIND_HANDLE, KIND_READER};

/// The capacity cost of one record.
pub fn record_len(align: u32, sender: usize, typ: usize, body: usize) -> u64 {
    let a = u64::from(align);
    let body_off = segment::round_up(RECORD_HEADER + sender as u64 + typ as u64, a);
    segment::round_up(body_off + body as u64, a)
}

/// Options for a new queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueOptions {
    pub capacity: u64,
    pub max_members: u32,
    pub align: u32,
    pub mode: u32,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            capacity: 1 << 20,
            max_members: 64,
            align: 8,
            mode: 0o600,
        }
    }
}

/// Screening of records by sender and type, done while scanning.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub senders: Option<HashSet<Vec<u8>>>,
    pub types: Option<HashSet<Vec<u8>>>,
    pub exclude_senders: HashSet<Vec<u8>>,
    pub exclude_types: HashSet<Vec<u8>>,
}

impl Filter {
    /// Whether a record with this sender and type is delivered.
    #[inline]
    pub fn accepts(&self, sender: &[u8], typ: &[u8]) -> bool {
        self.senders.as_ref().is_none_or(|s| s.contains(sender))
            && self.types.as_ref().is_none_or(|t| t.contains(typ))
            && (self.exclude_senders.is_empty() || !self.exclude_senders.contains(sender))
            && (self.exclude_types.is_empty() || !self.exclude_types.contains(typ))
    }
}

/// A record in the ring, borrowed while the reader's cursor pins it.
#[derive(Debug)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub sender: &'a [u8],
    pub typ: &'a [u8],
    pub body: &'a [u8],
    /// Position of this record.
    pub start: u64,
    /// Position just past this record.
    pub end: u64,
    /// Messages a lossy reader missed (lapped by writers) between the last record it
    /// consumed and this one, however they were noticed (while waiting, screening or
    /// reading).
    pub missed: u64,
    /// A group claim of a dead member, delivered again.
    pub redelivered: bool,
}

/// A member slot owned by this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberId {
    pub slot: u32,
    pub gen: u32,
}

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

/// Room for one message at the tail, with the writer lock held: fill the body in place,
/// then [`Reservation::commit`]. Dropping it publishes nothing and releases the lock.
pub struct Reservation {
    q: Arc<Queue>,
    pos: u64,
    n: u64,
    body_off: usize,
    body_len: usize,
    sender: Vec<u8>,
    typ: Vec<u8>,
    done: bool,
}

impl Reservation {
    /// Start of the body (writable, `len()` bytes, contiguous).
    pub fn body_ptr(&self) -> *mut u8 {
        // SAFETY: the reserved record lies in free ring space, contiguous in the mirror.
        unsafe { self.q.seg.ring_at(self.pos).add(self.body_off) }
    }
    /// Body length in bytes.
    pub fn len(&self) -> usize {
        self.body_len
    }
    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.body_len == 0
    }
    /// The queue.
    pub fn queue(&self) -> &Arc<Queue> {
        &self.q
    }
    /// Publish the message; returns its sequence number.
    pub fn commit(mut self) -> u64 {
        let q = Arc::clone(&self.q);
        let h = q.header();
        let seq = h.write_seq.load(Ordering::Relaxed);
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&(self.body_len as u32).to_ne_bytes());
        hdr[4..6].copy_from_slice(&(self.sender.len() as u16).to_ne_bytes());
        hdr[6..8].copy_from_slice(&(self.typ.len() as u16).to_ne_bytes());
        hdr[8..16].copy_from_slice(&seq.to_ne_bytes());
        let p = q.seg.ring_at(self.pos);
        let sl = self.sender.len();
        // SAFETY: inside the reserved record (checked against the capacity at reserve).
        unsafe {
            std::ptr::copy_nonoverlapping(hdr.as_ptr(), p, 16);
            std::ptr::copy_nonoverlapping(self.sender.as_ptr(), p.add(16), sl);
            std::ptr::copy_nonoverlapping(self.typ.as_ptr(), p.add(16 + sl), self.typ.len());
        }
        h.write_seq.store(seq.wrapping_add(1), Ordering::Release);
        h.tail.store(self.pos + self.n, Ordering::Release);
        self.done = true;
        h.lock.store(0, Ordering::Release);
        pair(&h.lock_wait).notify();
        pair(&h.data_wait).notify();
        seq
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            let h = self.q.header();
            h.lock.store(0, Ordering::Release);
            pair(&h.lock_wait).notify();
        }
    }
}

/// A broadcast queue mapped in this process.
pub struct Queue {
    seg: Segment,
}

/// Holds the writer lock; releases it on drop.
struct LockGuard<'a> {
    h: &'a Header,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.h.lock.store(0, Ordering::Release);
        pair(&self.h.lock_wait).notify();
    }
}

fn pair(line: &segment::WaitLine) -> WaitPair<'_> {
    WaitPair {
        word: &line.word,
        waiters: &line.waiters,
    }
}

/// How long joining and leaving wait for the writer lock at least.
const MEMBER_LOCK_GRACE: Duration = Duration::from_secs(2);

/// How long a send waits for the writer lock at least, whatever its own deadline: lock holds
/// are short, and recovering the lock from a dead owner takes one wait slice. A send whose
/// deadline passes while a healthy writer holds the lock thus still gets its turn; a lock that
/// stays held longer by a live process raises [`Error::Timeout`].
const SEND_LOCK_GRACE: Duration = Duration::from_millis(200);

impl Queue {
    /// Create a queue; if a stale segment of that name exists (no live member), replace it.
    pub fn create(name: &str, opts: QueueOptions) -> Result<Arc<Queue>> {
        let geo = Geometry::new(KIND_BROADCAST, opts.capacity, opts.max_members, opts.align)?;
        for _ in 0..3 {
            match Segment::create(name, geo, opts.mode) {
                Ok(seg) => return Ok(Arc::new(Queue { seg })),
                Err(Error::Exists(n)) => {
                    if !remove_if_stale(name) {
                        return Err(Error::Exists(n));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Exists(segment::shm_path(name)?[1..].to_owned()))
    }

    /// Attach to an existing queue by name.
    pub fn attach(name: &str) -> Result<Arc<Queue>> {
        Ok(Arc::new(Queue {
            seg: Segment::attach(name, KIND_BROADCAST)?,
        }))
    }

    /// Attach if it exists, else create.
    pub fn open(name: &str, opts: QueueOptions) -> Result<Arc<Queue>> {
        for _ in 0..5 {
            match Queue::attach(name) {
                Ok(q) if q.header().state.load(Ordering::Acquire) == STATE_OPEN => return Ok(q),
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            match Queue::create(name, opts) {
                Err(Error::Exists(_)) => continue,
                r => return r,
            }
        }
        Err(Error::Exists(name.to_owned()))
    }

    /// The segment name.
    pub fn name(&self) -> &str {
        self.seg.name()
    }
    /// The geometry.
    pub fn geometry(&self) -> &Geometry {
        self.seg.geometry()
    }
    /// Logical capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.seg.geometry().capacity
    }
    fn header(&self) -> &Header {
        self.seg.header()
    }
    /// The underlying segment (for inspection and fault-injection tests).
    #[doc(hidden)]
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
    fn member(&self, slot: u32) -> Result<&Member> {
        self.seg
            .member(slot)
            .ok_or_else(|| Error::corrupt(self.name(), "member slot out of range"))
    }

    /// The cost of a record in this queue.
    pub fn record_len(&self, sender: usize, typ: usize, body: usize) -> u64 {
        record_len(self.geometry().align, sender, typ, body)
    }

    // ----------------------------------------------------------------- the writer lock

    fn lock(
        &self,
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<LockGuard<'_>> {
        self.lock_with(spec, Some(MEMBER_LOCK_GRACE), on_slice)
    }

    /// Take the writer lock, waiting until the later of the caller's deadline and `grace`
    /// from now. Without `grace`, a busy lock fails at once with [`Error::Busy`].
    fn lock_with(
        &self,
        spec: WaitSpec,
        grace: Option<Duration>,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<LockGuard<'_>> {
        let h = self.header();
        let me = proc::current().token();
        if h.lock
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Ok(LockGuard { h });
        }
        let started = Instant::now();
        let mut last_check = started;
        let Some(grace) = grace else {
            return Err(Error::Busy("writer lock"));
        };
        let deadline = Deadline(spec.deadline.0.map(|d| d.max(started + grace)));
        let spec = WaitSpec {
            deadline,
            spin: Duration::from_micros(20),
        };
        let got = block_on(
            &pair(&h.lock_wait),
            spec,
            || {
                let cur = h.lock.load(Ordering::Acquire);
                if cur == 0 {
                    return Ok(h
                        .lock
                        .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                        .then_some(()));
                }
                if last_check.elapsed() >= Duration::from_millis(5) {
                    last_check = Instant::now();
                    let (pid, start32) = proc::Ident::from_token(cur);
                    if !proc::alive(pid, u64::from(start32), u64::from(u32::MAX))
                        && h.lock
                            .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok()
                    {
                        h.lock_recoveries.fetch_add(1, Ordering::Relaxed);
                        return Ok(Some(()));
                    }
                }
                Ok(None)
            },
            &mut *on_slice,
        )?;
        match got {
            Some(()) => Ok(LockGuard { h }),
            None => Err(Error::Timeout(started.elapsed(), "the writer lock")),
        }
    }

    // ----------------------------------------------------------------- members

    /// Join as a member of `kind`. A reader starts at the current tail.
    pub fn join(&self, kind: u32, name: &[u8]) -> Result<MemberId> {
        self.join_with(kind, name, 0, None)
    }

    /// Join as a reader; a lossy one never holds back writers.
    pub fn join_reader(&self, name: &[u8], lossy: bool) -> Result<MemberId> {
        self.join_with(KIND_READER, name, if lossy { FLAG_LOSSY } else { 0 }, None)
    }

    /// Join consumer group `group` (created if it does not exist, starting at the current
    /// tail): its members share one cursor, so each message goes to one of them.
    pub fn join_group(&self, name: &[u8], group: &[u8]) -> Result<MemberId> {
        if group.is_empty() || group.len() > MEMBER_NAME_BYTES {
            return Err(Error::InvalidArgument(format!(
                "a group name must be 1 to {MEMBER_NAME_BYTES} bytes, got {}",
                group.len()
            )));
        }
        self.join_with(KIND_GROUP_MEMBER, name, 0, Some(group))
    }

    fn join_with(
        &self,
        kind: u32,
        name: &[u8],
        flags: u32,
        group: Option<&[u8]>,
    ) -> Result<MemberId> {
        let me = proc::current();
        let mut id = self.claim_slot(kind, name, flags, me);
        if id.is_none() {
            let g = self.lock(WaitSpec::nowait(), &mut crate::wait::no_check)?;
            self.reap_dead(None);
            drop(g);
            id = self.claim_slot(kind, name, flags, me);
        }
        let no_slot = || Error::NoMemberSlot {
            name: self.name().to_owned(),
            max: self.geometry().max_members,
        };
        let id = id.ok_or_else(no_slot)?;
        let m = self.member(id.slot)?;
        let h = self.header();
        let g = match self.lock(WaitSpec::nowait(), &mut crate::wait::no_check) {
            Ok(g) => g,
            Err(e) => {
                m.state.store(M_FREE, Ordering::Release);
                return Err(e);
            }
        };
        if h.state.load(Ordering::Acquire) != STATE_OPEN {
            m.state.store(M_FREE, Ordering::Release);
            return Err(Error::Removed(self.name().to_owned()));
        }
        if let Some(gname) = group {
            let gid = match self.find_group(gname) {
                Some(gid) => Some(gid),
                None => {
                    let made = self.claim_slot(KIND_GROUP, gname, 0, me);
                    if let Some(gid) = made {
                        let gm = self.member(gid.slot)?;
                        gm.cursor
                            .store(h.tail.load(Ordering::Acquire), Ordering::SeqCst);
                        gm.seq
                            .store(h.write_seq.load(Ordering::Acquire), Ordering::Relaxed);
                        gm.state.store(M_ACTIVE, Ordering::Release);
                    }
                    made
                }
            };
            let Some(gid) = gid else {
                m.state.store(M_FREE, Ordering::Release);
                return Err(no_slot());
            };
            m.group.store(gid.slot, Ordering::Relaxed);
            m.group_gen.store(gid.gen, Ordering::Relaxed);
        }
        m.cursor
            .store(h.tail.load(Ordering::Acquire), Ordering::Relaxed);
        m.seq
            .store(h.write_seq.load(Ordering::Acquire), Ordering::Relaxed);
        m.state.store(M_ACTIVE, Ordering::Release);
        drop(g);
        pair(&h.member_wait).notify();
        Ok(id)
    }

    /// The live group of that name (call with the lock held).
    fn find_group(&self, name: &[u8]) -> Option<MemberId> {
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

    fn claim_slot(&self, kind: u32, name: &[u8], flags: u32, me: proc::Ident) -> Option<MemberId> {
        for (slot, m) in self.seg.members() {
            if m.state
                .compare_exchange(M_FREE, M_CLAIMING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                m.pid.store(me.pid, Ordering::Relaxed);
                m.start.store(me.start, Ordering::Relaxed);
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

    fn owns(&self, id: MemberId) -> Option<&Member> {
        let m = self.seg.member(id.slot)?;
        (m.gen.load(Ordering::Relaxed) == id.gen
            && m.pid.load(Ordering::Relaxed) == proc::current().pid
            && m.state.load(Ordering::Acquire) != M_FREE)
            .then_some(m)
    }

    /// Leave. Returns true if this was the last member and the segment was unlinked.
    pub fn leave(&self, id: MemberId) -> Result<bool> {
        let h = self.header();
        let guard = self.lock(WaitSpec::nowait(), &mut crate::wait::no_check);
        if let Some(m) = self.owns(id) {
            m.pin.store(NO_PIN, Ordering::SeqCst);
            m.state.store(M_FREE, Ordering::Release);
        }
        let mut unlinked = false;
        if let Ok(g) = guard {
            self.reap_dead(None);
            let live = self
                .seg
                .members()
                .filter(|(_, m)| m.state.load(Ordering::Acquire) != M_FREE)
                .count();
            if live == 0 && h.state.load(Ordering::Acquire) == STATE_OPEN {
                h.state.store(STATE_CLOSED, Ordering::Release);
                unlinked = self.seg.unlink().is_ok();
            }
            drop(g);
        }
        pair(&h.space_wait).notify();
        pair(&h.member_wait).notify();
        Ok(unlinked)
    }

    /// Free the slots of members whose process is gone (a group member holding a claim
    /// becomes an orphan its group redelivers), then the groups left without members.
    /// Call with the lock held. With `below`, only members holding memory below that
    /// position are checked.
    fn reap_dead(&self, below: Option<u64>) -> u32 {
        let mut n = 0;
        for (_, m) in self.seg.members() {
            let st = m.state.load(Ordering::Acquire);
            if st != M_ACTIVE && st != M_CLAIMING {
                continue;
            }
            let pid = m.pid.load(Ordering::Relaxed);
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
            if !proc::alive(pid, m.start.load(Ordering::Relaxed), u64::MAX) && self.retire(m, st) {
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
    fn retire(&self, m: &Member, st: u32) -> bool {
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
            pair(&self.header().data_wait).notify();
            return true;
        }
        m.state
            .compare_exchange(st, M_FREE, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// The group slot of a group member (if it is still that group).
    fn group_of(&self, m: &Member) -> Option<&Member> {
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
    fn reap_groups(&self) -> u32 {
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
                    && o.state
                        .compare_exchange(M_ORPHAN, M_FREE, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    self.header().claims_lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            if g.state
                .compare_exchange(M_ACTIVE, M_FREE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                n += 1;
            }
        }
        n
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
                    && proc::alive(
                        m.pid.load(Ordering::Relaxed),
                        m.start.load(Ordering::Relaxed),
                        u64::MAX,
                    )
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
            &pair(&h.member_wait),
            spec,
            || Ok((self.live_readers() >= n).then_some(())),
            on_slice,
        )?
        .is_some())
    }

    // ----------------------------------------------------------------- writing

    /// The oldest position any member still needs: cursors of non-lossy readers and of
    /// groups, and every pin (leases, group claims, orphans). Cursors are read before pins:
    /// a reader pins a position before its cursor moves past it, so no position is missed.
    fn scan_head(&self, tail: u64, strict: bool) -> Result<u64> {
        let cap = self.capacity();
        let mut head = tail;
        let mut take = |c: u64, what: &str| -> Result<()> {
            if c > tail || tail - c > cap {
                if strict {
                    return Err(Error::corrupt(
                        self.name(),
                        format!("{what} {c} is outside the log (tail {tail})"),
                    ));
                }
                return Ok(());
            }
            head = head.min(c);
            Ok(())
        };
        for (_, m) in self.seg.members() {
            if m.state.load(Ordering::SeqCst) != M_ACTIVE {
                continue;
            }
            let kind = m.kind.load(Ordering::Relaxed);
            if (kind == KIND_READER && m.flags.load(Ordering::Relaxed) & FLAG_LOSSY == 0)
                || kind == KIND_GROUP
            {
                take(m.cursor.load(Ordering::SeqCst), "reader cursor")?;
            }
        }
        for (_, m) in self.seg.members() {
            if !matches!(m.state.load(Ordering::SeqCst), M_ACTIVE | M_ORPHAN) {
                continue;
            }
            if matches!(
                m.kind.load(Ordering::Relaxed),
                KIND_READER | KIND_GROUP_MEMBER
            ) {
                let p = m.pin.load(Ordering::SeqCst);
                if p != NO_PIN {
                    take(p, "pinned position")?;
                }
            }
        }
        Ok(head)
    }

    /// [`Queue::scan_head`], strict, remembered as the hint (call with the lock held).
    fn recompute_head(&self, tail: u64) -> Result<u64> {
        let head = self.scan_head(tail, true)?;
        self.header().head_hint.store(head, Ordering::Relaxed);
        Ok(head)
    }

    /// Move the oldest-intact mark past every record the writer is about to reuse when it
    /// writes up to `end`, before it writes anything (call with the lock held).
    fn advance_oldest(&self, tail: u64, end: u64) -> Result<()> {
        let h = self.header();
        let cap = self.capacity();
        let target = end.saturating_sub(cap);
        let mut o = h.oldest.load(Ordering::Relaxed);
        if o >= target {
            return Ok(());
        }
        let bad = |why: String| Err(Error::corrupt(self.name(), why));
        if o > tail || tail - o > cap {
            return bad(format!(
                "oldest record mark {o} is outside the log (tail {tail})"
            ));
        }
        while o < target {
            let (total, _) = self.header_at(o);
            if total == 0 || total > tail - o {
                return bad(format!("record at {o} has an impossible length {total}"));
            }
            o += total;
        }
        h.oldest.store(o, Ordering::Relaxed);
        // Readers that see any byte written after this point also see the new mark.
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Length and sequence number of the record header at `pos` (not validated).
    fn header_at(&self, pos: u64) -> (u64, u64) {
        let (blen, slen, tlen, seq) = self.raw_header(pos);
        (self.record_len(slen, tlen, blen), seq)
    }

    fn raw_header(&self, pos: u64) -> (usize, usize, usize, u64) {
        let p = self.seg.ring_at(pos);
        let mut hdr = [0u8; 16];
        // SAFETY: 16 bytes from any ring index are inside the mirrored mapping.
        unsafe { std::ptr::copy_nonoverlapping(p, hdr.as_mut_ptr(), 16) };
        let blen = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let slen = u16::from_ne_bytes([hdr[4], hdr[5]]) as usize;
        let tlen = u16::from_ne_bytes([hdr[6], hdr[7]]) as usize;
        let mut sq = [0u8; 8];
        sq.copy_from_slice(&hdr[8..16]);
        (blen, slen, tlen, u64::from_ne_bytes(sq))
    }

    /// Append one record. Returns its sequence number.
    ///
    /// When the queue is full, waits per `spec` (checking `on_slice` between slices); when
    /// the deadline passes, fails with [`Error::Full`].
    pub fn send(
        &self,
        sender: &[u8],
        typ: &[u8],
        body: &[&[u8]],
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<u64> {
        self.send_inner(sender, typ, body, spec, Some(SEND_LOCK_GRACE), on_slice)
    }

    /// Append without any waiting at all, not even for a busy writer lock: fails with
    /// [`Error::Full`] when there is no room and [`Error::Busy`] when another writer holds
    /// the lock (callers that hold an interpreter lock use this, then wait without it).
    pub fn try_send(&self, sender: &[u8], typ: &[u8], body: &[&[u8]]) -> Result<u64> {
        let spec = WaitSpec::nowait();
        self.send_inner(sender, typ, body, spec, None, &mut crate::wait::no_check)
    }

    fn check_lengths(&self, sender: usize, typ: usize, body_len: usize) -> Result<u64> {
        if sender > u16::MAX as usize || typ > u16::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "sender and type are limited to {} bytes each (got {sender} and {typ})",
                u16::MAX,
            )));
        }
        if body_len > u32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "a message body is limited to {} bytes",
                u32::MAX
            )));
        }
        let n = self.record_len(sender, typ, body_len);
        let cap = self.capacity();
        if n > cap {
            return Err(Error::TooLarge {
                needed: n,
                capacity: cap,
            });
        }
        if self.header().shutdown.load(Ordering::Acquire) != 0 {
            return Err(Error::ShutDown(self.name().to_owned()));
        }
        Ok(n)
    }

    /// Take the writer lock with room for `n` bytes at the tail, waiting per `spec` for
    /// room; returns the lock and the tail. The oldest-intact mark is already moved past
    /// what the record will overwrite.
    fn acquire_space(
        &self,
        n: u64,
        spec: WaitSpec,
        grace: Option<Duration>,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(LockGuard<'_>, u64)> {
        let h = self.header();
        let cap = self.capacity();
        let mut free_seen = 0;
        let mut last_reap: Option<Instant> = None;
        let mut full_counted = false;
        let lock_spec = spec;
        let mut attempt =
            |on_slice: &mut dyn FnMut() -> Result<()>| -> Result<Option<(LockGuard<'_>, u64)>> {
                let g = self.lock_with(lock_spec, grace, on_slice)?;
                let tail = h.tail.load(Ordering::Acquire);
                if tail > u64::MAX / 2 {
                    // 2^63 bytes would take centuries to write: only damage puts the tail there.
                    return Err(Error::corrupt(
                        self.name(),
                        format!("write position {tail} is impossible"),
                    ));
                }
                let mut head = h.head_hint.load(Ordering::Relaxed);
                if head > tail || tail - head > cap {
                    head = self.recompute_head(tail)?;
                }
                if tail - head + n > cap {
                    head = self.recompute_head(tail)?;
                    if tail - head + n > cap
                        && last_reap.is_none_or(|t| t.elapsed() >= Duration::from_millis(10))
                    {
                        last_reap = Some(Instant::now());
                        if self.reap_dead(Some(tail + n - cap)) > 0 {
                            head = self.recompute_head(tail)?;
                        }
                    }
                    if tail - head + n > cap {
                        free_seen = cap - (tail - head);
                        if grace.is_some() && !full_counted {
                            full_counted = true;
                            h.space_wait.events.fetch_add(1, Ordering::Relaxed);
                        }
                        return Ok(None);
                    }
                }
                self.advance_oldest(tail, tail + n)?;
                Ok(Some((g, tail)))
            };
        let mut on_slice2 = &mut *on_slice;
        let first = attempt(on_slice2)?;
        let got = match first {
            Some(s) => Some(s),
            None if spec.deadline.expired() => None,
            None => {
                let t0 = Instant::now();
                let (a, b) = (&mut attempt, &mut on_slice2);
                // The attempt needs the slice hook too (for the lock wait); share it.
                let hook = std::cell::RefCell::new(b);
                let r = block_on(
                    &pair(&h.space_wait),
                    spec,
                    || a(&mut **hook.borrow_mut()),
                    || (hook.borrow_mut())(),
                );
                h.space_wait
                    .blocked_ns
                    .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                r?
            }
        };
        got.ok_or(Error::Full {
            needed: n,
            free: free_seen,
        })
    }

    fn send_inner(
        &self,
        sender: &[u8],
        typ: &[u8],
        body: &[&[u8]],
        spec: WaitSpec,
        grace: Option<Duration>,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<u64> {
        let body_len: usize = body.iter().map(|b| b.len()).sum();
        let n = self.check_lengths(sender.len(), typ.len(), body_len)?;
        let (g, tail) = self.acquire_space(n, spec, grace, on_slice)?;
        let h = self.header();
        let seq = h.write_seq.load(Ordering::Relaxed);
        self.write_record(tail, seq, sender, typ, body, body_len);
        h.write_seq.store(seq.wrapping_add(1), Ordering::Release);
        h.tail.store(tail + n, Ordering::Release);
        drop(g);
        pair(&h.data_wait).notify();
        Ok(seq)
    }

    /// Reserve room for a message of `body_len` bytes and hold the writer lock until the
    /// reservation is committed (published whole) or dropped (nothing is published). The
    /// body is filled in place through [`Reservation::body_ptr`].
    pub fn reserve(
        self: &Arc<Self>,
        sender: &[u8],
        typ: &[u8],
        body_len: usize,
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Reservation> {
        let n = self.check_lengths(sender.len(), typ.len(), body_len)?;
        let (g, tail) = self.acquire_space(n, spec, Some(SEND_LOCK_GRACE), on_slice)?;
        std::mem::forget(g);
        let align = u64::from(self.geometry().align);
        let body_off = segment::round_up(
            RECORD_HEADER + sender.len() as u64 + typ.len() as u64,
            align,
        ) as usize;
        Ok(Reservation {
            q: Arc::clone(self),
            pos: tail,
            n,
            body_off,
            body_len,
            sender: sender.to_vec(),
            typ: typ.to_vec(),
            done: false,
        })
    }

    fn write_record(
        &self,
        pos: u64,
        seq: u64,
        sender: &[u8],
        typ: &[u8],
        body: &[&[u8]],
        body_len: usize,
    ) {
        let align = u64::from(self.geometry().align);
        let body_off = segment::round_up(
            RECORD_HEADER + sender.len() as u64 + typ.len() as u64,
            align,
        ) as usize;
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&(body_len as u32).to_ne_bytes());
        hdr[4..6].copy_from_slice(&(sender.len() as u16).to_ne_bytes());
        hdr[6..8].copy_from_slice(&(typ.len() as u16).to_ne_bytes());
        hdr[8..16].copy_from_slice(&seq.to_ne_bytes());
        let p = self.seg.ring_at(pos);
        // SAFETY: the caller checked the record fits in the free part of the ring, which no
        // reader reads; the mirrored mapping makes `record_len <= ring_size` bytes contiguous.
        unsafe {
            std::ptr::copy_nonoverlapping(hdr.as_ptr(), p, 16);
            std::ptr::copy_nonoverlapping(sender.as_ptr(), p.add(16), sender.len());
            std::ptr::copy_nonoverlapping(typ.as_ptr(), p.add(16 + sender.len()), typ.len());
            let mut off = body_off;
            for part in body {
                std::ptr::copy_nonoverlapping(part.as_ptr(), p.add(off), part.len());
                off += part.len();
            }
        }
    }

    /// Mark the queue shut down: readers get [`Error::ShutDown`] once they have read
    /// everything; sends fail.
    pub fn shutdown(&self) {
        let h = self.header();
        h.shutdown.store(1, Ordering::Release);
        pair(&h.data_wait).notify_always();
    }

    /// Whether the queue was shut down.
    pub fn is_shutdown(&self) -> bool {
        self.header().shutdown.load(Ordering::Acquire) != 0
    }

    // ----------------------------------------------------------------- reading

    /// The record at `pos` whose header (read from the ring by [`Queue::raw_header`]) says
    /// `hdr`, checked: it must fit in the `avail` bytes up to the tail and, if `expect` is
    /// given, carry that sequence number. Anything else is a damaged segment.
    fn record_from(
        &self,
        pos: u64,
        (blen, slen, tlen, rseq): (usize, usize, usize, u64),
        avail: u64,
        expect: Option<u64>,
    ) -> Result<RecordRef<'_>> {
        let total = self.record_len(slen, tlen, blen);
        if total > avail || total > self.capacity() || expect.is_some_and(|s| s != rseq) {
            let expected = expect.map_or(String::new(), |s| format!(", expected seq {s}"));
            return Err(Error::corrupt(
                self.name(),
                format!("record at {pos} is damaged (body {blen}, seq {rseq}{expected})"),
            ));
        }
        let body_off = segment::round_up(
            RECORD_HEADER + (slen + tlen) as u64,
            u64::from(self.geometry().align),
        ) as usize;
        let p = self.seg.ring_at(pos);
        // SAFETY: total <= capacity <= ring_size, so the whole record is mapped and
        // contiguous in the mirrored ring.
        let (sender, typ, body) = unsafe {
            (
                std::slice::from_raw_parts(p.add(16), slen),
                std::slice::from_raw_parts(p.add(16 + slen), tlen),
                std::slice::from_raw_parts(p.add(body_off), blen),
            )
        };
        Ok(RecordRef {
            seq: rseq,
            sender,
            typ,
            body,
            start: pos,
            end: pos + total,
            missed: 0,
            redelivered: false,
        })
    }

    /// Whether the member is a lossy reader.
    pub fn is_lossy(&self, id: MemberId) -> bool {
        self.seg
            .member(id.slot)
            .is_some_and(|m| m.flags.load(Ordering::Relaxed) & FLAG_LOSSY != 0)
    }

    /// For a lossy reader: whether the record at `start` was still intact after the caller
    /// copied it (no writer reused its memory meanwhile).
    pub fn intact(&self, start: u64) -> bool {
        fence(Ordering::SeqCst);
        self.header().oldest.load(Ordering::SeqCst) <= start
    }

    /// The next record `filter` accepts for reader `id`, skipping (and consuming) screened
    /// ones. The returned record is not consumed; call [`Queue::consume`] after use. For a
    /// lossy reader the record may be overwritten while it is read: copy it, then check
    /// [`Queue::intact`].
    pub fn next_for(&self, id: MemberId, filter: &Filter) -> Result<Option<RecordRef<'_>>> {
        let m = self.member(id.slot)?;
        if m.flags.load(Ordering::Relaxed) & FLAG_LOSSY != 0 {
            return self.next_lossy(m, filter);
        }
        let h = self.header();
        let cap = self.capacity();
        let mut cur = m.cursor.load(Ordering::Relaxed);
        let mut seq = m.seq.load(Ordering::Relaxed);
        let start = cur;
        let tail = h.tail.load(Ordering::Acquire);
        let result = loop {
            if cur == tail {
                break None;
            }
            if cur > tail || tail - cur > cap {
                return Err(Error::corrupt(
                    self.name(),
                    format!("cursor {cur} is outside the log (tail {tail})"),
                ));
            }
            let rec = self.record_from(cur, self.raw_header(cur), tail - cur, Some(seq))?;
            if filter.accepts(rec.sender, rec.typ) {
                break Some(rec);
            }
            cur = rec.end;
            seq = seq.wrapping_add(1);
        };
        if cur != start {
            m.seq.store(seq, Ordering::Relaxed);
            m.cursor.store(cur, Ordering::Release);
            pair(&h.space_wait).notify();
        }
        Ok(result)
    }

    fn next_lossy<'a>(&'a self, m: &Member, filter: &Filter) -> Result<Option<RecordRef<'a>>> {
        let h = self.header();
        let cap = self.capacity();
        let mut cur = m.cursor.load(Ordering::Relaxed);
        let mut seq = m.seq.load(Ordering::Relaxed);
        let (start, start_seq) = (cur, seq);
        let mut missed = 0u64;
        let mut tail = h.tail.load(Ordering::Acquire);
        let mut spins = 0u32;
        let result = loop {
            spins += 1;
            if spins > 1_000_000 {
                return Err(Error::corrupt(self.name(), "a lossy reader cannot resync"));
            }
            if cur == tail {
                break None;
            }
            if cur > tail {
                return Err(Error::corrupt(
                    self.name(),
                    format!("cursor {cur} is past the log's end {tail}"),
                ));
            }
            let oldest = h.oldest.load(Ordering::SeqCst);
            if oldest > tail {
                tail = h.tail.load(Ordering::Acquire);
                if oldest > tail {
                    return Err(Error::corrupt(
                        self.name(),
                        format!("oldest record mark {oldest} is past the log's end {tail}"),
                    ));
                }
                continue;
            }
            if cur < oldest || tail - cur > cap {
                // Lapped: continue from the oldest record still intact, once it is
                // published. A writer moves the mark before it publishes the record there,
                // and a record of more than half the capacity can move it onto the tail.
                tail = h.tail.load(Ordering::Acquire);
                if oldest >= tail {
                    break None; // nothing intact to read yet: resync on a later call
                }
                let (_, rseq) = self.header_at(oldest);
                if !self.intact(oldest) {
                    continue;
                }
                let skipped = rseq.wrapping_sub(seq);
                if skipped > u64::MAX / 2 {
                    return Err(Error::corrupt(
                        self.name(),
                        format!("record at {oldest} has sequence {rseq}, behind {seq}"),
                    ));
                }
                missed += skipped;
                cur = oldest;
                seq = rseq;
                continue;
            }
            let hdr = self.raw_header(cur);
            if !self.intact(cur) {
                continue; // the header was being overwritten: resync
            }
            let rec = self.record_from(cur, hdr, tail - cur, Some(seq))?;
            if filter.accepts(rec.sender, rec.typ) {
                break Some(rec);
            }
            cur = rec.end;
            seq = seq.wrapping_add(1);
        };
        if cur != start || seq != start_seq {
            m.seq.store(seq, Ordering::Relaxed);
            m.cursor.store(cur, Ordering::Release);
        }
        let mut pending = m.missed_pending.load(Ordering::Relaxed);
        if missed > 0 {
            m.missed.fetch_add(missed, Ordering::Relaxed);
            h.overruns.fetch_add(missed, Ordering::Relaxed);
            pending = pending.wrapping_add(missed);
            m.missed_pending.store(pending, Ordering::Relaxed);
        }
        Ok(result.map(|rec| RecordRef {
            missed: pending,
            ..rec
        }))
    }

    /// Pin `pos` for member `id` (a lease): writers do not reuse memory from there on.
    /// [`NO_PIN`] releases it. Pin before moving the cursor past `pos`.
    pub fn set_pin(&self, id: MemberId, pos: u64) -> Result<()> {
        let m = self.member(id.slot)?;
        let old = m.pin.swap(pos, Ordering::SeqCst);
        if pos > old {
            pair(&self.header().space_wait).notify();
        }
        Ok(())
    }

    /// Messages lossy reader `id` has missed in total (however they were noticed: while
    /// waiting, screening or receiving).
    pub fn missed_total(&self, id: MemberId) -> u64 {
        self.seg
            .member(id.slot)
            .map_or(0, |m| m.missed.load(Ordering::Relaxed))
    }

    /// Count a lease taken by `id`.
    pub fn count_lease(&self, id: MemberId) {
        if let Some(m) = self.seg.member(id.slot) {
            m.leases.fetch_add(1, Ordering::Relaxed);
        }
    }

    // ----------------------------------------------------------------- consumer groups

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
            if !proc::alive(
                m.pid.load(Ordering::Relaxed),
                m.start.load(Ordering::Relaxed),
                u64::MAX,
            ) && self.retire(m, M_ACTIVE)
            {
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
                if o.state
                    .compare_exchange(M_ORPHAN, M_FREE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    m.pin.store(NO_PIN, Ordering::SeqCst);
                    continue;
                }
                g.orphans.fetch_sub(1, Ordering::AcqRel);
                let tail = h.tail.load(Ordering::Acquire);
                if p == NO_PIN || p > tail || tail - p > cap {
                    m.pin.store(NO_PIN, Ordering::SeqCst);
                    return Err(Error::corrupt(
                        self.name(),
                        format!("orphaned claim at {p} is outside the log (tail {tail})"),
                    ));
                }
                let rec = self
                    .record_from(p, self.raw_header(p), tail - p, None)
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
            let tail = h.tail.load(Ordering::Acquire);
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
                .record_from(c, self.raw_header(c), tail - c, None)
                .inspect_err(|_| m.pin.store(NO_PIN, Ordering::SeqCst))?;
            if g.cursor
                .compare_exchange(c, rec.end, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                g.seq.fetch_max(rec.seq.wrapping_add(1), Ordering::Relaxed);
                pair(&h.space_wait).notify();
                return Ok(Some(rec));
            }
        }
    }

    /// Finish group member `id`'s claim: its memory may be reused.
    pub fn group_ack(&self, id: MemberId) -> Result<()> {
        let m = self.member(id.slot)?;
        if m.pin.swap(NO_PIN, Ordering::SeqCst) != NO_PIN {
            m.received.fetch_add(1, Ordering::Relaxed);
            pair(&self.header().space_wait).notify();
        }
        Ok(())
    }

    /// Whether group member `id` has something to claim (without claiming it).
    fn group_has_work(&self, id: MemberId) -> Result<bool> {
        let m = self.member(id.slot)?;
        let g = self.my_group(m)?;
        Ok(g.orphans.load(Ordering::Acquire) > 0
            || g.cursor.load(Ordering::Acquire) != self.header().tail.load(Ordering::Acquire))
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
            &pair(&h.data_wait),
            spec,
            || {
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

    /// Whether the member is in a consumer group.
    pub fn is_group_member(&self, id: MemberId) -> bool {
        self.seg
            .member(id.slot)
            .is_some_and(|m| m.kind.load(Ordering::Relaxed) == KIND_GROUP_MEMBER)
    }

    /// Mark `rec` read by `id`: advances the cursor and frees space for writers.
    pub fn consume(&self, id: MemberId, end: u64, seq: u64) -> Result<()> {
        let m = self.member(id.slot)?;
        m.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        m.missed_pending.store(0, Ordering::Relaxed);
        m.cursor.store(end, Ordering::Release);
        m.received.fetch_add(1, Ordering::Relaxed);
        pair(&self.header().space_wait).notify();
        Ok(())
    }

    /// Wait until reader `id` has a record `filter` accepts (true), or the deadline passes
    /// (false). Fails with [`Error::ShutDown`] once the queue is shut down and drained.
    pub fn wait_readable(
        &self,
        id: MemberId,
        filter: &Filter,
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<bool> {
        let h = self.header();
        let t0 = Instant::now();
        let r = block_on(
            &pair(&h.data_wait),
            spec,
            || {
                if self.next_for(id, filter)?.is_some() {
                    return Ok(Some(()));
                }
                if h.shutdown.load(Ordering::Acquire) != 0 {
                    return Err(Error::ShutDown(self.name().to_owned()));
                }
                Ok(None)
            },
            on_slice,
        );
        if let Ok(m) = self.member(id.slot) {
            m.waits.fetch_add(1, Ordering::Relaxed);
            m.blocked_ns
                .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        Ok(r?.is_some())
    }

    /// Add to a member's sent counter.
    pub fn count_sent(&self, id: MemberId) {
        if let Some(m) = self.seg.member(id.slot) {
            m.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Cursor position and next sequence number of a member.
    pub fn position(&self, id: MemberId) -> Result<(u64, u64)> {
        let m = self.member(id.slot)?;
        Ok((
            m.cursor.load(Ordering::Relaxed),
            m.seq.load(Ordering::Relaxed),
        ))
    }

    /// Number of messages ever written (the next message's sequence number).
    pub fn write_seq(&self) -> u64 {
        self.header().write_seq.load(Ordering::Acquire)
    }

    /// Free bytes right now (as a writer would compute it).
    pub fn free_bytes(&self) -> u64 {
        let tail = self.header().tail.load(Ordering::Acquire);
        let head = self.scan_head(tail, false).unwrap_or(tail);
        self.capacity().saturating_sub(tail.saturating_sub(head))
    }

    /// A lock-free snapshot.
    pub fn stats(&self) -> Stats {
        let h = self.header();
        let tail = h.tail.load(Ordering::Acquire);
        let wseq = h.write_seq.load(Ordering::Acquire);
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
                    alive: kind == KIND_GROUP
                        || proc::alive(
                            m.pid.load(Ordering::Relaxed),
                            m.start.load(Ordering::Relaxed),
                            u64::MAX,
                        ),
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

/// Remove `name` if it is a ringcast segment nobody alive uses (or a creation that died).
/// Returns true if it was removed.
pub fn remove_if_stale(name: &str) -> bool {
    match segment::inspect(name) {
        Ok(info) if info.is_stale() => segment::unlink(name).is_ok(),
        Ok(_) => false,
        Err(Error::Corrupt { .. }) if segment::is_abandoned_creation(name) => {
            segment::unlink(name).is_ok()
        }
        Err(Error::NotFound(_)) => true,
        Err(_) => false,
    }
}

/// Remove every ringcast segment whose members are all dead. Returns the names removed.
pub fn gc() -> Vec<String> {
    segment::list_names()
        .into_iter()
        .filter(|n| remove_if_stale(n))
        .collect()
}
