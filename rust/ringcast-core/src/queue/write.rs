//! Writing: making room at the tail (the oldest position any member still needs, reaping
//! dead readers that hold writers back, moving the oldest-intact mark for lossy readers),
//! appending a record and reserving room to fill in place (publishing is in `publish.rs`).

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lock::{LockGuard, SEND_LOCK_GRACE};
use super::Queue;
use crate::error::{Error, Result};
use crate::fault::{self, Point};
use crate::segment::{
    FLAG_LOSSY, KIND_GROUP, KIND_GROUP_MEMBER, KIND_READER, M_ACTIVE, M_ORPHAN, NO_PIN,
};
use crate::wait::{block_on, WaitSpec};

/// A write position above this is damage: 2^63 bytes would take centuries to write.
pub(super) const MAX_POSITION: u64 = u64::MAX / 2;

/// How often a writer waiting for room looks for dead readers holding it back.
const REAP_EVERY: Duration = Duration::from_millis(10);

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
        // SAFETY: the reserved record lies in free ring space, contiguous in the mirror, and
        // its body starts `body_off` bytes in (inside the record, whose cost was checked
        // against the capacity at reserve).
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
        let seq = q.log().write_seq.load(Ordering::Relaxed);
        q.write_head(self.pos, seq, &self.sender, &self.typ, self.body_len);
        q.publish(self.pos + self.n, seq);
        self.done = true;
        q.unlock();
        q.header().data_wait.pair().notify();
        seq
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            self.q.unlock();
        }
    }
}

impl Queue {
    /// The oldest position any member still needs: cursors of non-lossy readers and of
    /// groups, and every pin (leases, group claims, orphans). Cursors are read before pins:
    /// a reader pins a position before its cursor moves past it, so no position is missed.
    pub(super) fn scan_head(&self, tail: u64, strict: bool) -> Result<u64> {
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
        self.log().head_hint.store(head, Ordering::Relaxed);
        Ok(head)
    }

    /// Move the oldest-intact mark past every record the writer is about to reuse when it
    /// writes up to `end`, before it writes anything (call with the lock held).
    fn advance_oldest(&self, tail: u64, end: u64) -> Result<()> {
        let w = self.log();
        let cap = self.capacity();
        let target = end.saturating_sub(cap);
        let mut o = w.oldest.load(Ordering::Relaxed);
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
        w.oldest.store(o, Ordering::Relaxed);
        // Readers that see any byte written after this point also see the new mark.
        fence(Ordering::SeqCst);
        fault::point(Point::OldestMoved);
        Ok(())
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
                let tail = self.log().tail.load(Ordering::Acquire);
                if tail > MAX_POSITION {
                    // Only damage puts the tail there (see MAX_POSITION).
                    return Err(Error::corrupt(
                        self.name(),
                        format!("write position {tail} is impossible"),
                    ));
                }
                let mut head = self.log().head_hint.load(Ordering::Relaxed);
                if head > tail || tail - head > cap {
                    head = self.recompute_head(tail)?;
                }
                if tail - head + n > cap {
                    head = self.recompute_head(tail)?;
                    if tail - head + n > cap && last_reap.is_none_or(|t| t.elapsed() >= REAP_EVERY)
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
                    &h.space_wait.pair(),
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
        let seq = self.log().write_seq.load(Ordering::Relaxed);
        self.write_record(tail, seq, sender, typ, body, body_len);
        self.seg.check_intact()?; // the copy ran into a shrunk segment: publish nothing
        self.publish(tail + n, seq);
        drop(g);
        self.header().data_wait.pair().notify();
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
        // The reservation holds the lock until it is committed or dropped.
        std::mem::forget(g);
        Ok(Reservation {
            q: Arc::clone(self),
            pos: tail,
            n,
            body_off: self.body_offset(sender.len(), typ.len()),
            body_len,
            sender: sender.to_vec(),
            typ: typ.to_vec(),
            done: false,
        })
    }

    /// Write a whole record at `pos` (the caller holds the lock and made room for it).
    fn write_record(
        &self,
        pos: u64,
        seq: u64,
        sender: &[u8],
        typ: &[u8],
        body: &[&[u8]],
        body_len: usize,
    ) {
        self.write_head(pos, seq, sender, typ, body_len);
        fault::point(Point::HeadWritten);
        let p = self.seg.ring_at(pos);
        let mut off = self.body_offset(sender.len(), typ.len());
        for part in body {
            // SAFETY: as in `write_head`: the record's `record_len` bytes from `pos`, room
            // the caller made past the tail, are mapped and contiguous; the parts add up to
            // `body_len`, which the record's cost includes after the body offset.
            unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), p.add(off), part.len()) };
            off += part.len();
        }
    }
}
