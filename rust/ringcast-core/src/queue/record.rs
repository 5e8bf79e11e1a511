//! The record format, in exactly one place: how a record lies in the ring, what it costs,
//! and the only code that writes or reads a record header.
//!
//! ```text
//! u32 body_len | u16 sender_len | u16 type_len | u64 seq | sender | type | pad | body | pad
//! ```
//!
//! Fields are in native byte order. The padding rounds the body start and the record end up
//! to the queue's alignment (1 for the pysyncq-compatible layout, 8 by default).

use super::Queue;
use crate::error::{Error, Result};
use crate::segment;

/// Bytes of the fixed record header.
pub const RECORD_HEADER: u64 = 16;

/// Byte offsets of the header fields.
const BODY_LEN_AT: usize = 0;
const SENDER_LEN_AT: usize = 4;
const TYPE_LEN_AT: usize = 6;
const SEQ_AT: usize = 8;
const HEAD: usize = RECORD_HEADER as usize;

/// Offset of the body from the start of a record.
fn body_offset(align: u32, sender: usize, typ: usize) -> u64 {
    segment::round_up(RECORD_HEADER + sender as u64 + typ as u64, u64::from(align))
}

/// The capacity cost of one record.
pub fn record_len(align: u32, sender: usize, typ: usize, body: usize) -> u64 {
    segment::round_up(
        body_offset(align, sender, typ) + body as u64,
        u64::from(align),
    )
}

/// A record header as it lies in the ring (read without validation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RecordHead {
    pub body_len: usize,
    pub sender_len: usize,
    pub type_len: usize,
    pub seq: u64,
}

impl RecordHead {
    fn encode(&self) -> [u8; HEAD] {
        let mut b = [0u8; HEAD];
        b[BODY_LEN_AT..SENDER_LEN_AT].copy_from_slice(&(self.body_len as u32).to_ne_bytes());
        b[SENDER_LEN_AT..TYPE_LEN_AT].copy_from_slice(&(self.sender_len as u16).to_ne_bytes());
        b[TYPE_LEN_AT..SEQ_AT].copy_from_slice(&(self.type_len as u16).to_ne_bytes());
        b[SEQ_AT..HEAD].copy_from_slice(&self.seq.to_ne_bytes());
        b
    }

    fn decode(b: &[u8; HEAD]) -> Self {
        let u16_at = |at: usize| usize::from(u16::from_ne_bytes([b[at], b[at + 1]]));
        let mut body_len = [0u8; 4];
        body_len.copy_from_slice(&b[BODY_LEN_AT..SENDER_LEN_AT]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[SEQ_AT..HEAD]);
        RecordHead {
            body_len: u32::from_ne_bytes(body_len) as usize,
            sender_len: u16_at(SENDER_LEN_AT),
            type_len: u16_at(TYPE_LEN_AT),
            seq: u64::from_ne_bytes(seq),
        }
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

impl Queue {
    /// The cost of a record in this queue.
    pub fn record_len(&self, sender: usize, typ: usize, body: usize) -> u64 {
        record_len(self.geometry().align, sender, typ, body)
    }

    /// Offset of the body from the start of a record in this queue.
    pub(super) fn body_offset(&self, sender: usize, typ: usize) -> usize {
        body_offset(self.geometry().align, sender, typ) as usize
    }

    /// The record header at `pos` (not validated).
    pub(super) fn read_head(&self, pos: u64) -> RecordHead {
        let mut b = [0u8; HEAD];
        // SAFETY: HEAD bytes from any ring index are inside the mirrored mapping (the ring is
        // at least a page), and `b` is a separate local buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.seg.ring_at(pos), b.as_mut_ptr(), HEAD) };
        RecordHead::decode(&b)
    }

    /// Length and sequence number of the record header at `pos` (not validated).
    pub(super) fn header_at(&self, pos: u64) -> (u64, u64) {
        let h = self.read_head(pos);
        (self.record_len(h.sender_len, h.type_len, h.body_len), h.seq)
    }

    /// Write a record's header, sender and type at `pos`; the body goes at
    /// [`Queue::body_offset`] from there.
    ///
    /// The caller holds the writer lock and has made room for the whole record
    /// ([`Queue::record_len`] bytes, checked against the capacity) at `pos`, past the
    /// published tail, where no reader reads.
    pub(super) fn write_head(
        &self,
        pos: u64,
        seq: u64,
        sender: &[u8],
        typ: &[u8],
        body_len: usize,
    ) {
        let head = RecordHead {
            body_len,
            sender_len: sender.len(),
            type_len: typ.len(),
            seq,
        }
        .encode();
        let p = self.seg.ring_at(pos);
        // SAFETY: the caller made room for the record at `pos`, whose cost (at most the
        // capacity, itself at most the ring size) covers these bytes; the mirrored mapping
        // keeps up to a ring size contiguous from any ring index; the sources are separate
        // buffers of the given lengths.
        unsafe {
            std::ptr::copy_nonoverlapping(head.as_ptr(), p, HEAD);
            std::ptr::copy_nonoverlapping(sender.as_ptr(), p.add(HEAD), sender.len());
            std::ptr::copy_nonoverlapping(typ.as_ptr(), p.add(HEAD + sender.len()), typ.len());
        }
    }

    /// The record at `pos` whose header (read from the ring by [`Queue::read_head`]) is
    /// `head`, checked: it must fit in the `avail` bytes up to the tail and, if `expect` is
    /// given, carry that sequence number. Anything else is a damaged segment.
    pub(super) fn record_from(
        &self,
        pos: u64,
        head: RecordHead,
        avail: u64,
        expect: Option<u64>,
    ) -> Result<RecordRef<'_>> {
        let RecordHead {
            body_len: blen,
            sender_len: slen,
            type_len: tlen,
            seq: rseq,
        } = head;
        let total = self.record_len(slen, tlen, blen);
        if total > avail || total > self.capacity() || expect.is_some_and(|s| s != rseq) {
            self.seg.check_intact()?; // zeros where a shrunk segment's pages were
            let expected = expect.map_or(String::new(), |s| format!(", expected seq {s}"));
            return Err(Error::corrupt(
                self.name(),
                format!("record at {pos} is damaged (body {blen}, seq {rseq}{expected})"),
            ));
        }
        let body_off = self.body_offset(slen, tlen);
        let p = self.seg.ring_at(pos);
        // SAFETY: total <= capacity <= ring_size, so the whole record is mapped and
        // contiguous in the mirrored ring; the slices are read-only views of shared memory
        // that the caller's cursor or pin keeps from being reused while they are borrowed.
        let (sender, typ, body) = unsafe {
            (
                std::slice::from_raw_parts(p.add(HEAD), slen),
                std::slice::from_raw_parts(p.add(HEAD + slen), tlen),
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
}
