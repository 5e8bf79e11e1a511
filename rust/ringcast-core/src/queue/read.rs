//! Reading: screening records by sender and type, the next record for a reader (lossy
//! readers resync past what writers overwrote and count what they missed), consuming it,
//! waiting for one, and pinning a record while a lease holds it.

use std::collections::HashSet;
use std::sync::atomic::{fence, Ordering};
use std::time::Instant;

use super::{Queue, RecordRef};
use crate::error::{Error, Result};
use crate::segment::{Member, MemberId, FLAG_LOSSY};
use crate::wait::{block_on, WaitSpec};

/// How many times a lossy reader tries to resync in one call before it calls the log damaged
/// (writers lapping it that often in one call means its view of the log is nonsense).
const RESYNC_LIMIT: u32 = 1_000_000;

/// A sequence number further than this behind the reader's is one from the past, not one
/// it missed (sequence numbers wrap, so "behind" is "more than half the range ahead").
const MAX_SKIP: u64 = u64::MAX / 2;

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

impl Queue {
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
        self.log().oldest.load(Ordering::SeqCst) <= start
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
        let tail = self.log().tail.load(Ordering::Acquire);
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
            let rec = self.record_from(cur, self.read_head(cur), tail - cur, Some(seq))?;
            if filter.accepts(rec.sender, rec.typ) {
                break Some(rec);
            }
            cur = rec.end;
            seq = seq.wrapping_add(1);
        };
        if cur != start {
            m.seq.store(seq, Ordering::Relaxed);
            m.cursor.store(cur, Ordering::Release);
            h.space_wait.pair().notify();
        }
        self.seg.check_intact()?; // zeros where a shrunk segment's pages were
        Ok(result)
    }

    fn next_lossy<'a>(&'a self, m: &Member, filter: &Filter) -> Result<Option<RecordRef<'a>>> {
        let h = self.header();
        let cap = self.capacity();
        let mut cur = m.cursor.load(Ordering::Relaxed);
        let mut seq = m.seq.load(Ordering::Relaxed);
        let (start, start_seq) = (cur, seq);
        let mut missed = 0u64;
        let mut tail = self.log().tail.load(Ordering::Acquire);
        let mut spins = 0u32;
        let result = loop {
            spins += 1;
            if spins > RESYNC_LIMIT {
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
            let oldest = self.log().oldest.load(Ordering::SeqCst);
            if oldest > tail {
                tail = self.log().tail.load(Ordering::Acquire);
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
                tail = self.log().tail.load(Ordering::Acquire);
                if oldest >= tail {
                    break None; // nothing intact to read yet: resync on a later call
                }
                let (_, rseq) = self.header_at(oldest);
                if !self.intact(oldest) {
                    continue;
                }
                let skipped = rseq.wrapping_sub(seq);
                if skipped > MAX_SKIP {
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
            let head = self.read_head(cur);
            if !self.intact(cur) {
                continue; // the header was being overwritten: resync
            }
            let rec = self.record_from(cur, head, tail - cur, Some(seq))?;
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
        self.seg.check_intact()?; // zeros where a shrunk segment's pages were
        Ok(result.map(|rec| RecordRef {
            missed: pending,
            ..rec
        }))
    }

    /// Pin `pos` for member `id` (a lease): writers do not reuse memory from there on.
    /// [`NO_PIN`](crate::segment::NO_PIN) releases it. Pin before moving the cursor past `pos`.
    pub fn set_pin(&self, id: MemberId, pos: u64) -> Result<()> {
        let m = self.member(id.slot)?;
        let old = m.pin.swap(pos, Ordering::SeqCst);
        if pos > old {
            self.header().space_wait.pair().notify();
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

    /// Mark `rec` read by `id`: advances the cursor and frees space for writers.
    pub fn consume(&self, id: MemberId, end: u64, seq: u64) -> Result<()> {
        self.seg.check_intact()?; // the record was copied from a shrunk segment
        let m = self.member(id.slot)?;
        m.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        m.missed_pending.store(0, Ordering::Relaxed);
        m.cursor.store(end, Ordering::Release);
        m.received.fetch_add(1, Ordering::Relaxed);
        self.header().space_wait.pair().notify();
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
            &h.data_wait.pair(),
            spec,
            || {
                self.seg.probe()?; // a shrink no access of ours ran into
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

    /// Cursor position and next sequence number of a member.
    pub fn position(&self, id: MemberId) -> Result<(u64, u64)> {
        let m = self.member(id.slot)?;
        Ok((
            m.cursor.load(Ordering::Relaxed),
            m.seq.load(Ordering::Relaxed),
        ))
    }
}
