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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::proc;
use crate::segment::{
    self, Geometry, Header, Member, Segment, KIND_BROADCAST, M_ACTIVE, M_CLAIMING, M_FREE,
    STATE_CLOSED, STATE_OPEN,
};
use crate::wait::{block_on, Deadline, WaitPair, WaitSpec};

/// Bytes of the fixed record header.
pub const RECORD_HEADER: u64 = 16;

/// Member kinds.
pub const KIND_HANDLE: u32 = 1;
/// A reader: its cursor holds back writers.
pub const KIND_READER: u32 = 2;

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
    /// Position just past this record.
    pub end: u64,
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
    pub members: Vec<MemberStats>,
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
        let me = proc::current();
        let mut id = self.claim_slot(kind, name, me);
        if id.is_none() {
            let g = self.lock(WaitSpec::nowait(), &mut crate::wait::no_check)?;
            self.reap_dead(None);
            drop(g);
            id = self.claim_slot(kind, name, me);
        }
        let id = id.ok_or_else(|| Error::NoMemberSlot {
            name: self.name().to_owned(),
            max: self.geometry().max_members,
        })?;
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
        m.cursor
            .store(h.tail.load(Ordering::Acquire), Ordering::Relaxed);
        m.seq
            .store(h.write_seq.load(Ordering::Acquire), Ordering::Relaxed);
        m.state.store(M_ACTIVE, Ordering::Release);
        drop(g);
        pair(&h.member_wait).notify();
        Ok(id)
    }

    fn claim_slot(&self, kind: u32, name: &[u8], me: proc::Ident) -> Option<MemberId> {
        for (slot, m) in self.seg.members() {
            if m.state
                .compare_exchange(M_FREE, M_CLAIMING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                m.pid.store(me.pid, Ordering::Relaxed);
                m.start.store(me.start, Ordering::Relaxed);
                let gen = m.gen.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                m.kind.store(kind, Ordering::Relaxed);
                m.set_name(name);
                for c in [&m.received, &m.sent, &m.waits, &m.blocked_ns] {
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

    /// Free the slots of members whose process is gone. Call with the lock held.
    /// With `below`, only readers whose cursor is below that position are checked.
    fn reap_dead(&self, below: Option<u64>) -> u32 {
        let mut n = 0;
        for (_, m) in self.seg.members() {
            let st = m.state.load(Ordering::Acquire);
            if st == M_FREE {
                continue;
            }
            let pid = m.pid.load(Ordering::Relaxed);
            if st == M_CLAIMING && pid == 0 {
                continue; // being claimed right now
            }
            if let Some(b) = below {
                if st != M_ACTIVE
                    || m.kind.load(Ordering::Relaxed) != KIND_READER
                    || m.cursor.load(Ordering::Acquire) >= b
                {
                    continue;
                }
            }
            if !proc::alive(pid, m.start.load(Ordering::Relaxed), u64::MAX)
                && m.state
                    .compare_exchange(st, M_FREE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                n += 1;
            }
        }
        if n > 0 {
            self.header()
                .reaped
                .fetch_add(u64::from(n), Ordering::Relaxed);
        }
        n
    }

    /// Number of live reader members.
    pub fn live_readers(&self) -> u32 {
        self.seg
            .members()
            .filter(|(_, m)| {
                m.state.load(Ordering::Acquire) == M_ACTIVE
                    && m.kind.load(Ordering::Relaxed) == KIND_READER
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

    /// The oldest position any live reader still needs (call with the lock held).
    fn recompute_head(&self, tail: u64) -> Result<u64> {
        let cap = self.capacity();
        let mut head = tail;
        for (_, m) in self.seg.members() {
            if m.state.load(Ordering::Acquire) != M_ACTIVE
                || m.kind.load(Ordering::Relaxed) != KIND_READER
            {
                continue;
            }
            let c = m.cursor.load(Ordering::Acquire);
            if c > tail || tail - c > cap {
                return Err(Error::corrupt(
                    self.name(),
                    format!("reader cursor {c} is outside the log (tail {tail})"),
                ));
            }
            head = head.min(c);
        }
        self.header().head_hint.store(head, Ordering::Relaxed);
        Ok(head)
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

    fn send_inner(
        &self,
        sender: &[u8],
        typ: &[u8],
        body: &[&[u8]],
        spec: WaitSpec,
        grace: Option<Duration>,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<u64> {
        if sender.len() > u16::MAX as usize || typ.len() > u16::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "sender and type are limited to {} bytes each (got {} and {})",
                u16::MAX,
                sender.len(),
                typ.len()
            )));
        }
        let body_len: usize = body.iter().map(|b| b.len()).sum();
        if body_len > u32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "a message body is limited to {} bytes",
                u32::MAX
            )));
        }
        let n = self.record_len(sender.len(), typ.len(), body_len);
        let cap = self.capacity();
        if n > cap {
            return Err(Error::TooLarge {
                needed: n,
                capacity: cap,
            });
        }
        let h = self.header();
        if h.shutdown.load(Ordering::Acquire) != 0 {
            return Err(Error::ShutDown(self.name().to_owned()));
        }
        let mut free_seen = 0;
        let mut last_reap: Option<Instant> = None;
        let mut full_counted = false;
        let lock_spec = spec;
        let mut attempt = |on_slice: &mut dyn FnMut() -> Result<()>| -> Result<Option<u64>> {
            let _g = self.lock_with(lock_spec, grace, on_slice)?;
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
            let seq = h.write_seq.load(Ordering::Relaxed);
            self.write_record(tail, seq, sender, typ, body, body_len);
            h.write_seq.store(seq.wrapping_add(1), Ordering::Release);
            h.tail.store(tail + n, Ordering::Release);
            Ok(Some(seq))
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
        match got {
            Some(seq) => {
                pair(&h.data_wait).notify();
                Ok(seq)
            }
            None => Err(Error::Full {
                needed: n,
                free: free_seen,
            }),
        }
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

    /// The next record `filter` accepts for reader `id`, skipping (and consuming) screened
    /// ones. The returned record is not consumed; call [`Queue::consume`] after use.
    pub fn next_for(&self, id: MemberId, filter: &Filter) -> Result<Option<RecordRef<'_>>> {
        let h = self.header();
        let m = self.member(id.slot)?;
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
            let p = self.seg.ring_at(cur);
            let mut hdr = [0u8; 16];
            // SAFETY: cur < tail and tail - cur <= cap <= ring_size; 16 bytes from any ring
            // index are inside the mirrored mapping.
            unsafe { std::ptr::copy_nonoverlapping(p, hdr.as_mut_ptr(), 16) };
            let blen = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
            let slen = u16::from_ne_bytes([hdr[4], hdr[5]]) as usize;
            let tlen = u16::from_ne_bytes([hdr[6], hdr[7]]) as usize;
            let rseq = u64::from_ne_bytes(hdr[8..16].try_into().unwrap_or([0; 8]));
            let total = self.record_len(slen, tlen, blen);
            if total > tail - cur || rseq != seq {
                return Err(Error::corrupt(
                    self.name(),
                    format!(
                        "record at {cur} is damaged (len {total}, seq {rseq}, expected seq {seq})"
                    ),
                ));
            }
            let body_off = segment::round_up(
                RECORD_HEADER + (slen + tlen) as u64,
                u64::from(self.geometry().align),
            ) as usize;
            // SAFETY: total <= tail - cur <= ring_size, so the whole record is mapped and
            // contiguous; this reader's cursor pins it until consumed.
            let (sender, typ, body) = unsafe {
                (
                    std::slice::from_raw_parts(p.add(16), slen),
                    std::slice::from_raw_parts(p.add(16 + slen), tlen),
                    std::slice::from_raw_parts(p.add(body_off), blen),
                )
            };
            if filter.accepts(sender, typ) {
                break Some(RecordRef {
                    seq,
                    sender,
                    typ,
                    body,
                    end: cur + total,
                });
            }
            cur += total;
            seq = seq.wrapping_add(1);
        };
        if cur != start {
            m.seq.store(seq, Ordering::Relaxed);
            m.cursor.store(cur, Ordering::Release);
            pair(&h.space_wait).notify();
        }
        Ok(result)
    }

    /// Mark `rec` read by `id`: advances the cursor and frees space for writers.
    pub fn consume(&self, id: MemberId, end: u64, seq: u64) -> Result<()> {
        let m = self.member(id.slot)?;
        m.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
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
        let h = self.header();
        let tail = h.tail.load(Ordering::Acquire);
        let cap = self.capacity();
        let head = self.min_cursor(tail);
        cap.saturating_sub(tail.saturating_sub(head))
    }

    fn min_cursor(&self, tail: u64) -> u64 {
        self.seg
            .members()
            .filter(|(_, m)| {
                m.state.load(Ordering::Acquire) == M_ACTIVE
                    && m.kind.load(Ordering::Relaxed) == KIND_READER
            })
            .map(|(_, m)| m.cursor.load(Ordering::Acquire).min(tail))
            .min()
            .unwrap_or(tail)
    }

    /// A lock-free snapshot.
    pub fn stats(&self) -> Stats {
        let h = self.header();
        let tail = h.tail.load(Ordering::Acquire);
        let wseq = h.write_seq.load(Ordering::Acquire);
        let members = self
            .seg
            .members()
            .filter(|(_, m)| m.state.load(Ordering::Acquire) == M_ACTIVE)
            .map(|(slot, m)| {
                let cursor = m.cursor.load(Ordering::Acquire);
                let next_seq = m.seq.load(Ordering::Relaxed);
                let kind = m.kind.load(Ordering::Relaxed);
                let reader = kind == KIND_READER;
                MemberStats {
                    slot,
                    kind,
                    pid: m.pid.load(Ordering::Relaxed),
                    name: m.name(),
                    alive: proc::alive(
                        m.pid.load(Ordering::Relaxed),
                        m.start.load(Ordering::Relaxed),
                        u64::MAX,
                    ),
                    cursor,
                    next_seq,
                    lag_messages: if reader {
                        wseq.saturating_sub(next_seq)
                    } else {
                        0
                    },
                    lag_bytes: if reader {
                        tail.saturating_sub(cursor)
                    } else {
                        0
                    },
                    received: m.received.load(Ordering::Relaxed),
                    sent: m.sent.load(Ordering::Relaxed),
                    waits: m.waits.load(Ordering::Relaxed),
                    blocked_ns: m.blocked_ns.load(Ordering::Relaxed),
                }
            })
            .collect();
        Stats {
            name: self.name().to_owned(),
            capacity: self.capacity(),
            used_bytes: tail - self.min_cursor(tail).min(tail),
            write_seq: wseq,
            tail,
            shutdown: h.shutdown.load(Ordering::Acquire) != 0,
            lock_recoveries: h.lock_recoveries.load(Ordering::Relaxed),
            reaped: h.reaped.load(Ordering::Relaxed),
            full_events: h.space_wait.events.load(Ordering::Relaxed),
            send_blocked_ns: h.space_wait.blocked_ns.load(Ordering::Relaxed),
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
