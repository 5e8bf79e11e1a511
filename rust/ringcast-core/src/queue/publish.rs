//! Publishing: how a writer makes the records it wrote visible, and how the next writer
//! finishes the publish of a writer killed in the middle of it.
//!
//! A publish is three plain release stores, in this order:
//!
//! 1. `publishing = end`: the commit point. From here on the publish happens, even if the
//!    writer dies: the record is whole (written before), and the next owner of the lock
//!    finishes it ([`Queue::finish_publish`]).
//! 2. `write_seq = seq + 1`.
//! 3. `tail = end`: readers see the record.
//!
//! A writer killed before (1) published nothing: its bytes lie past the tail, where no
//! reader looks, and the next writer overwrites them. Killed between (1) and (3), it left
//! `publishing > tail`, which happens at no other time; the writer that takes the lock over
//! from it stores (2) and (3) again. `tail` and `write_seq` thus always describe the same
//! record when a writer takes the lock, so the next record carries the sequence number
//! readers expect.

use std::sync::atomic::Ordering;

use super::write::MAX_POSITION;
use super::Queue;
use crate::fault::{self, Point};

impl Queue {
    /// Publish the records written up to `end`, the last with sequence number `seq` (call
    /// with the lock held, after writing them whole).
    #[inline]
    pub(super) fn publish(&self, end: u64, seq: u64) {
        let w = self.log();
        fault::point(Point::RecordWritten);
        w.publishing.store(end, Ordering::Release);
        fault::point(Point::Committed);
        w.write_seq.store(seq.wrapping_add(1), Ordering::Release);
        fault::point(Point::SeqStored);
        w.tail.store(end, Ordering::Release);
        fault::point(Point::Published);
    }

    /// Finish the publish a dead owner of the writer lock committed but did not complete
    /// (call once the lock is taken over). Returns whether there was one.
    ///
    /// The committed end and the record at the tail are checked against each other (values
    /// in shared memory may be garbage): a record that does not end exactly there, or whose
    /// sequence number is not the one due, is not published, and the mark is dropped.
    pub(super) fn finish_publish(&self) -> bool {
        let w = self.log();
        let end = w.publishing.load(Ordering::Acquire);
        let tail = w.tail.load(Ordering::Acquire);
        if end <= tail {
            return false; // the usual case: nothing was left half published
        }
        let next = w.write_seq.load(Ordering::Acquire);
        let (len, seq) = self.header_at(tail);
        let whole = tail <= MAX_POSITION
            && end - tail <= self.capacity()
            && len == end - tail
            // write_seq is stored after the commit point: the dead writer stored it or not.
            && (seq == next || seq.wrapping_add(1) == next);
        if !whole {
            w.publishing.store(tail, Ordering::Release);
            return false;
        }
        w.write_seq.store(seq.wrapping_add(1), Ordering::Release);
        w.tail.store(end, Ordering::Release);
        self.header().data_wait.pair().notify();
        true
    }
}
