//! Leases of a reader, views of a leased region, and a reservation being filled.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{Exclusive, InUse, Membership, ReservingThread};
use crate::error::{Error, Result};
use crate::queue::Reservation;
use crate::segment::NO_PIN;

/// The leases a reader has handed out and not yet had back, by record position.
#[derive(Debug, Default)]
pub struct LeaseBook {
    open: Mutex<BTreeMap<u64, u32>>,
    /// The reader was closed while leases were out: leave when the last one ends.
    leave_when_done: AtomicBool,
}

impl LeaseBook {
    /// Add a lease of the record at `pos`; returns the lowest position still leased.
    pub fn add(&self, pos: u64) -> u64 {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *open.entry(pos).or_insert(0) += 1;
        open.keys().next().copied().unwrap_or(NO_PIN)
    }
    /// Remove one lease at `pos`; returns the new lowest position leased ([`NO_PIN`] if
    /// none) and whether none is left.
    pub fn remove(&self, pos: u64) -> (u64, bool) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&pos) {
            *n -= 1;
            if *n == 0 {
                open.remove(&pos);
            }
        }
        let low = open.keys().next().copied();
        (low.unwrap_or(NO_PIN), low.is_none())
    }
    /// Leases out.
    pub fn count(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.values().map(|&n| n as usize).sum()
    }
    /// The reader closes: returns whether its member may leave now; if leases are out, it
    /// leaves when the last one ends instead.
    pub fn close(&self) -> bool {
        if self.count() > 0 {
            self.leave_when_done.store(true, Ordering::Release);
            if self.count() > 0 {
                return false;
            }
        }
        true
    }
    /// Whether the member leaves when the last lease ends.
    pub fn leave_when_done(&self) -> bool {
        self.leave_when_done.load(Ordering::Acquire)
    }
}

/// A reader's handle state: its membership, its leases, and who may use it now.
pub struct ReaderHandle {
    m: Arc<Membership>,
    book: Arc<LeaseBook>,
    group: bool,
    busy: Exclusive,
    closed: AtomicBool,
}

impl ReaderHandle {
    /// A reader owning `m`; `group` if it is a consumer-group member.
    pub fn new(m: Arc<Membership>, group: bool) -> Self {
        ReaderHandle {
            m,
            book: Arc::new(LeaseBook::default()),
            group,
            busy: Exclusive::new(),
            closed: AtomicBool::new(false),
        }
    }
    /// The membership.
    pub fn member(&self) -> &Arc<Membership> {
        &self.m
    }
    /// [`Error::Closed`] once closed, [`Error::Forked`] in a forked child.
    pub fn check(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("Reader"));
        }
        self.m.check("Reader")
    }
    /// Start a receive: [`check`](Self::check), then hold the reader until the guard drops
    /// ([`Error::Busy`] if another receive holds it).
    pub fn begin(&self) -> Result<InUse<'_>> {
        self.check()?;
        self.busy.take("Reader")
    }
    /// Leases handed out and not yet ended.
    pub fn leases(&self) -> usize {
        self.book.count()
    }
    /// A consumer-group reader receives only with no lease held ([`Error::Held`]).
    pub fn check_group_recv(&self) -> Result<()> {
        if self.book.count() > 0 {
            return Err(Error::Held(
                "a lease of this consumer-group reader is still held: release it before receiving again".into(),
            ));
        }
        Ok(())
    }
    /// A leased message is finished by releasing the lease, not by `ack`
    /// ([`Error::InvalidArgument`] while a lease is held).
    pub fn check_ack(&self) -> Result<()> {
        if self.book.count() > 0 {
            return Err(Error::InvalidArgument(
                "release the lease to finish a leased message".into(),
            ));
        }
        Ok(())
    }
    /// Lease the record at `start`: pin it (a plain reader) and count the lease. The caller
    /// consumes the record after.
    pub fn lease(&self, start: u64) -> Result<LeaseTicket> {
        let (q, id) = (self.m.queue(), self.m.id());
        let low = self.book.add(start);
        if !self.group {
            q.set_pin(id, low)?;
        }
        q.count_lease(id);
        Ok(LeaseTicket {
            m: Arc::clone(&self.m),
            book: Arc::clone(&self.book),
            group: self.group,
            start,
            views: Views::new(),
        })
    }
    /// Whether [`close`](Self::close) was called.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
    /// Close, once: returns the membership to leave now (the caller leaves it, e.g. with the
    /// GIL released), or `None` if closed already or leases are out (the member then leaves
    /// when the last one ends).
    pub fn close(&self) -> Option<Arc<Membership>> {
        if self.closed.swap(true, Ordering::AcqRel) || !self.book.close() {
            return None;
        }
        Some(Arc::clone(&self.m))
    }
}

/// How [`Views::release`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// No view is alive: end the lease now.
    Now,
    /// Views are alive: the last one to go ends the lease.
    Deferred,
    /// Released before.
    Again,
}

/// The buffer exports (views) of a leased region. The lease ends once it is released and
/// its last view is gone, exactly once.
#[derive(Debug, Default)]
pub struct Views {
    exports: AtomicUsize,
    released: AtomicBool,
    done: AtomicBool,
}

impl Views {
    /// No view, not released.
    pub const fn new() -> Self {
        Views {
            exports: AtomicUsize::new(0),
            released: AtomicBool::new(false),
            done: AtomicBool::new(false),
        }
    }
    /// Views alive.
    pub fn count(&self) -> usize {
        self.exports.load(Ordering::Acquire)
    }
    /// Whether [`release`](Self::release) was called.
    pub fn released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }
    /// Whether the lease ended.
    pub fn ended(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
    /// Whether new views may be made (neither released nor ended).
    pub fn live(&self) -> bool {
        !self.ended() && !self.released()
    }
    /// [`Error::Closed`] (naming `what`) once released or ended: no new view may be made.
    pub fn check_live(&self, what: &'static str) -> Result<()> {
        if self.live() {
            Ok(())
        } else {
            Err(Error::Closed(what))
        }
    }
    /// [`Error::Closed`] (naming `what`) once ended: the memory may be reused.
    pub fn check_not_ended(&self, what: &'static str) -> Result<()> {
        if self.ended() {
            Err(Error::Closed(what))
        } else {
            Ok(())
        }
    }
    /// A view was made.
    pub fn add(&self) {
        self.exports.fetch_add(1, Ordering::AcqRel);
    }
    /// A view is gone; returns whether it was the last of a released lease (end it now).
    pub fn remove(&self) -> bool {
        self.exports.fetch_sub(1, Ordering::AcqRel) == 1 && self.released()
    }
    /// Release the lease (views alive keep it).
    pub fn release(&self) -> Release {
        if self.released.swap(true, Ordering::AcqRel) {
            Release::Again
        } else if self.count() == 0 {
            Release::Now
        } else {
            Release::Deferred
        }
    }
    /// Mark the lease ended; true the first time only (the caller then frees the memory).
    pub fn end(&self) -> bool {
        !self.done.swap(true, Ordering::AcqRel)
    }
}

/// One lease of a reader: keeps its record pinned until released with no view alive, or
/// dropped. Ending it unpins the record (acknowledges it, for a consumer group) and, if the
/// reader was closed meanwhile and this was its last lease, leaves.
pub struct LeaseTicket {
    m: Arc<Membership>,
    book: Arc<LeaseBook>,
    group: bool,
    start: u64,
    views: Views,
}

impl LeaseTicket {
    /// The views of the leased body.
    pub fn views(&self) -> &Views {
        &self.views
    }
    /// [`Error::Closed`] once released or ended (no new view may be made).
    pub fn check(&self) -> Result<()> {
        self.views.check_live("Lease (it was released)")
    }
    /// Give the lease back; views alive keep it until they are gone.
    pub fn release(&self) {
        if self.views.release() == Release::Now {
            self.end();
        }
    }
    /// A view is gone (ends a released lease with its last view).
    pub fn view_gone(&self) {
        if self.views.remove() {
            self.end();
        }
    }
    /// End the lease now (once; nothing in a forked child).
    pub fn end(&self) {
        if !self.views.end() || !self.m.mine() {
            return;
        }
        let (q, id) = (self.m.queue(), self.m.id());
        let (low, none_left) = self.book.remove(self.start);
        let _ = if self.group {
            q.group_ack(id)
        } else {
            q.set_pin(id, low)
        };
        if none_left && self.book.leave_when_done() {
            self.m.leave();
        }
    }
}

impl Drop for LeaseTicket {
    fn drop(&mut self) {
        self.end();
    }
}

/// A reservation being filled in place: holds the queue's writer lock until committed,
/// aborted or dropped; meanwhile the reserving thread may not send through the queue.
pub struct Reserved {
    inner: Mutex<Option<Reservation>>,
    reserving: Arc<ReservingThread>,
    m: Arc<Membership>,
    head: usize,
    views: Views,
    seq: Mutex<Option<u64>>,
}

impl Reserved {
    /// Take over `res` (reserved by member `m`): write `head` (an array header) at the start
    /// of its body, and mark the calling thread as reserving.
    pub fn new(
        res: Reservation,
        head: &[u8],
        reserving: Arc<ReservingThread>,
        m: Arc<Membership>,
    ) -> Self {
        let head_len = head.len().min(res.len());
        // SAFETY: the reservation's body has `res.len()` writable bytes, this process owns
        // them until commit or abort, and `head` is memory of the caller (no overlap).
        unsafe { std::ptr::copy_nonoverlapping(head.as_ptr(), res.body_ptr(), head_len) };
        reserving.mark();
        Reserved {
            inner: Mutex::new(Some(res)),
            reserving,
            m,
            head: head_len,
            views: Views::new(),
            seq: Mutex::new(None),
        }
    }
    /// The space to fill: its start (after the header) and length.
    pub fn body(&self) -> (*mut u8, usize) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.as_ref() {
            // SAFETY: `head` <= the body's length (see `new`).
            Some(r) => (unsafe { r.body_ptr().add(self.head) }, r.len() - self.head),
            None => (std::ptr::null_mut(), 0),
        }
    }
    /// The views of the reserved space.
    pub fn views(&self) -> &Views {
        &self.views
    }
    /// Whether neither committed nor aborted.
    pub fn is_open(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
    /// [`Error::Closed`] once committed or aborted, [`Error::Forked`] in a forked child.
    pub fn check(&self) -> Result<()> {
        if !self.is_open() {
            return Err(Error::Closed("Reservation (it was committed or aborted)"));
        }
        self.m.check("Reservation")
    }
    /// The sequence number, once committed.
    pub fn seq(&self) -> Option<u64> {
        *self.seq.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Publish the message; returns its sequence number. With a view still alive, aborts
    /// and returns [`Error::Held`] (nothing is sent).
    pub fn commit(&self) -> Result<u64> {
        self.check()?;
        let views = self.views.count();
        if views > 0 {
            self.end();
            return Err(Error::Held(format!(
                "{views} view(s) of the reserved space are still alive (del them before the reservation ends): the message was not sent"
            )));
        }
        let res = self.end().ok_or(Error::Closed("Reservation"))?;
        let seq = res.commit();
        self.m.queue().count_sent(self.m.id());
        *self.seq.lock().unwrap_or_else(|e| e.into_inner()) = Some(seq);
        Ok(seq)
    }
    /// Drop the reservation: nothing is published.
    pub fn abort(&self) {
        self.end();
    }
    fn end(&self) -> Option<Reservation> {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        if r.is_some() {
            self.reserving.clear();
        }
        r
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if self.m.mine() {
            self.end();
        } else if let Some(r) = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // Inherited through fork: the lock belongs to the parent; never release it here.
            std::mem::forget(r);
        }
    }
}
