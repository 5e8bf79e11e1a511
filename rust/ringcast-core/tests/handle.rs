//! Handle semantics (`ringcast_core::handle`): memberships leave once, a forked child never
//! acts for its parent, leases and views keep memory pinned until the last one ends, and the
//! re-entrancy guards refuse a nested use. `close_all` is tested in `handle_registry.rs`,
//! a test binary of its own, because it leaves every membership of the process.

use std::sync::Arc;

mod common;
use common::{in_child, opts, slot_opts, uniq, wait, Cleanup};
use ringcast_core::handle::{
    thread_tag, BlockTicket, Exclusive, ForkTag, Membership, QueueMember, ReaderHandle, Release,
    Reserved, ReservingThread, SlotRingMember, Views,
};
use ringcast_core::queue::{KIND_HANDLE, KIND_READER};
use ringcast_core::segment::NO_PIN;
use ringcast_core::slots::{Claim, SlotOptions, SlotRing, TakeResult, KIND_CONSUMER, KIND_WORKER};
use ringcast_core::wait::no_check;
use ringcast_core::{Error, Filter, MemberId, Queue, WaitSpec};

/// A queue with a keeper member (so the segment outlives the memberships under test).
fn queue(tag: &str) -> (Arc<Queue>, MemberId, Cleanup) {
    let name = uniq(tag);
    let c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let keeper = q.join(KIND_HANDLE, b"keeper").unwrap();
    (q, keeper, c)
}

fn is_member(q: &Queue, id: MemberId) -> bool {
    q.stats().members.iter().any(|m| m.slot == id.slot)
}

fn pin_of(q: &Queue, id: MemberId) -> Option<u64> {
    let s = q.stats();
    s.members
        .iter()
        .find(|m| m.slot == id.slot)
        .and_then(|m| m.pin)
}

fn send(q: &Queue, body: &[u8]) -> u64 {
    common::send(q, body).unwrap()
}

#[test]
fn membership_leaves_on_leave_exactly_once() {
    let (q, _keeper, _c) = queue("leave");
    let m = Membership::join(&q, KIND_READER, b"r").unwrap();
    assert_eq!(m.name(), b"r");
    assert!(Arc::ptr_eq(m.queue(), &q));
    assert!(is_member(&q, m.id()));
    assert!(m.mine() && m.check("Reader").is_ok());
    assert!(!m.has_left());
    assert!(!m.leave(), "not the last member: the segment stays");
    assert!(m.has_left());
    assert!(!is_member(&q, m.id()));
    // Its slot is taken by someone else: a second leave (or the drop) must not free it.
    let other = q.join(KIND_READER, b"other").unwrap();
    assert_eq!(other.slot, m.id().slot);
    assert!(!m.leave());
    drop(m);
    assert!(is_member(&q, other));
}

#[test]
fn membership_leaves_on_drop() {
    let (q, _keeper, _c) = queue("drop");
    let m = Membership::join_as(&q, b"lossy", |q, n| q.join_reader(n, true)).unwrap();
    let id = m.id();
    assert!(is_member(&q, id));
    let again = Arc::clone(&m);
    drop(m);
    assert!(is_member(&q, id), "a clone still holds the membership");
    drop(again);
    assert!(!is_member(&q, id));
}

#[test]
fn queue_member_closes_once_and_then_refuses() {
    let (q, _keeper, _c) = queue("qm");
    let h = QueueMember::new(Membership::join(&q, KIND_HANDLE, b"me").unwrap());
    let m = h
        .alive(&q, KIND_HANDLE, || b"me".to_vec(), "BroadcastQueue")
        .unwrap();
    assert_eq!(h.current().unwrap().id(), m.id());
    drop(m);
    let left = h.close().expect("the first close hands out the membership");
    assert!(h.closed());
    assert!(h.close().is_none());
    assert!(matches!(
        h.alive(&q, KIND_HANDLE, || b"me".to_vec(), "BroadcastQueue"),
        Err(Error::Closed("BroadcastQueue"))
    ));
    assert!(!left.leave());
    assert!(left.has_left() && !is_member(&q, left.id()));
}

#[test]
fn a_handle_used_after_fork_reports_forked_and_never_leaves_for_its_parent() {
    let (q, _keeper, _c) = queue("fork");
    let reader = ReaderHandle::new(Membership::join(&q, KIND_READER, b"r").unwrap(), false);
    let handle = QueueMember::new(Membership::join(&q, KIND_HANDLE, b"h").unwrap());
    let tag = ForkTag::now();
    let (rid, hid) = (reader.member().id(), handle.current().unwrap().id());
    let code = in_child(|| {
        if tag.mine() || !matches!(tag.check("X"), Err(Error::Forked("X"))) {
            return 1;
        }
        if !matches!(reader.check(), Err(Error::Forked("Reader"))) {
            return 2;
        }
        if !matches!(reader.begin(), Err(Error::Forked("Reader"))) {
            return 3;
        }
        if reader.member().leave() {
            return 4;
        }
        // A queue handle joins anew in the child.
        if handle.current().is_some() {
            return 5;
        }
        match handle.alive(&q, KIND_HANDLE, || b"child".to_vec(), "BroadcastQueue") {
            Ok(m) if m.id() != hid && m.mine() => 0,
            _ => 6,
        }
    });
    assert_eq!(code, 0, "the child's check {code} failed");
    assert!(is_member(&q, rid) && is_member(&q, hid));
    assert!(reader.check().is_ok());
    assert!(!reader.member().has_left());
}

#[test]
fn leases_pin_and_a_closed_reader_leaves_with_its_last_lease() {
    let (q, _keeper, _c) = queue("lease");
    let reader = ReaderHandle::new(Membership::join(&q, KIND_READER, b"r").unwrap(), false);
    let id = reader.member().id();
    send(&q, b"one");
    send(&q, b"two");
    let f = Filter::default();
    let mut tickets = Vec::new();
    for _ in 0..2 {
        let _busy = reader.begin().unwrap();
        let rec = q.next_for(id, &f).unwrap().unwrap();
        tickets.push((rec.start, reader.lease(rec.start).unwrap()));
        q.consume(id, rec.end, rec.seq).unwrap();
    }
    assert_eq!(reader.leases(), 2);
    assert_eq!(
        pin_of(&q, id),
        Some(tickets[0].0),
        "pinned at the oldest lease"
    );
    assert!(q
        .stats()
        .members
        .iter()
        .any(|m| m.slot == id.slot && m.leases == 2));

    // Closing with leases out: the reader refuses new use but stays a member.
    assert!(reader.close().is_none());
    assert!(reader.closed() && reader.close().is_none());
    assert!(matches!(reader.check(), Err(Error::Closed("Reader"))));
    assert!(is_member(&q, id));

    // The older lease ends: the pin moves to the younger one.
    let (_, first) = tickets.remove(0);
    first.release();
    assert!(first.views().ended());
    assert!(matches!(first.check(), Err(Error::Closed(_))));
    assert_eq!(reader.leases(), 1);
    assert_eq!(pin_of(&q, id), Some(tickets[0].0));
    assert!(is_member(&q, id));

    // The last lease, released with a view alive, ends with its view: the member leaves.
    let (_, last) = tickets.remove(0);
    last.check().unwrap();
    last.views().add();
    last.release();
    assert!(!last.views().ended() && is_member(&q, id));
    last.view_gone();
    assert!(last.views().ended());
    assert_eq!(reader.leases(), 0);
    assert!(
        !is_member(&q, id),
        "the closed reader left with its last lease"
    );
    assert!(reader.member().has_left());
    drop(last);
}

#[test]
fn a_reader_without_leases_leaves_on_close_and_a_dropped_lease_unpins() {
    let (q, _keeper, _c) = queue("close");
    let reader = ReaderHandle::new(Membership::join(&q, KIND_READER, b"r").unwrap(), false);
    let id = reader.member().id();
    send(&q, b"x");
    let rec = q.next_for(id, &Filter::default()).unwrap().unwrap();
    let t = reader.lease(rec.start).unwrap();
    assert_eq!(pin_of(&q, id), Some(rec.start));
    drop(t);
    assert_eq!(pin_of(&q, id), None);
    assert_eq!(reader.leases(), 0);
    let m = reader.close().expect("no lease out: leave now");
    m.leave();
    assert!(m.has_left() && !is_member(&q, id));
    assert_eq!(NO_PIN, u64::MAX);
}

#[test]
fn a_group_reader_refuses_receive_and_ack_while_a_lease_is_held() {
    let (q, _keeper, _c) = queue("group");
    let m = Membership::join_as(&q, b"g1", |q, n| q.join_group(n, b"grp")).unwrap();
    let reader = ReaderHandle::new(m, true);
    send(&q, b"x");
    reader.check_group_recv().unwrap();
    reader.check_ack().unwrap();
    let rec = q.group_next(reader.member().id()).unwrap().unwrap();
    let t = reader.lease(rec.start).unwrap();
    assert!(matches!(reader.check_group_recv(), Err(Error::Held(_))));
    assert!(matches!(reader.check_ack(), Err(Error::InvalidArgument(_))));
    t.release();
    reader.check_group_recv().unwrap();
    reader.check_ack().unwrap();
}

#[test]
fn views_end_a_released_lease_exactly_once() {
    let v = Views::new();
    assert!(v.live() && v.count() == 0);
    v.add();
    v.add();
    assert!(!v.remove(), "not released: the lease goes on");
    assert_eq!(v.release(), Release::Deferred);
    assert_eq!(v.release(), Release::Again);
    assert!(!v.live() && v.released() && !v.ended());
    assert!(v.remove(), "the last view of a released lease ends it");
    assert!(v.end());
    assert!(!v.end(), "ends once");
    let w = Views::new();
    assert_eq!(w.release(), Release::Now);
}

#[test]
fn the_in_use_guard_refuses_a_nested_use_and_frees_on_drop() {
    let g = Exclusive::new();
    let held = g.take("Reader").unwrap();
    assert!(g.in_use());
    assert!(matches!(g.take("Reader"), Err(Error::Busy("Reader"))));
    std::thread::scope(|s| {
        s.spawn(|| assert!(matches!(g.take("Reader"), Err(Error::Busy("Reader")))));
    });
    drop(held);
    assert!(!g.in_use());
    drop(g.take("Reader").unwrap());
}

#[test]
fn the_reserving_thread_may_not_send_until_it_ends_the_reservation() {
    let t = ReservingThread::new();
    t.check().unwrap();
    t.mark();
    assert!(matches!(t.check(), Err(Error::Held(_))));
    let me = thread_tag();
    std::thread::scope(|s| {
        s.spawn(|| {
            assert_ne!(thread_tag(), me);
            t.check().unwrap();
        });
    });
    assert_eq!(thread_tag(), me);
    t.clear();
    t.check().unwrap();
}

#[test]
fn a_reservation_commits_once_and_never_with_a_view_alive() {
    let (q, _keeper, _c) = queue("reserve");
    let m = Membership::join(&q, KIND_HANDLE, b"w").unwrap();
    let reader = Membership::join(&q, KIND_READER, b"r").unwrap();
    let reserving = Arc::new(ReservingThread::new());
    let spec = WaitSpec::nowait();

    let res = q.reserve(b"w", b"", 2 + 3, spec, &mut no_check).unwrap();
    let r = Reserved::new(res, b"hd", Arc::clone(&reserving), Arc::clone(&m));
    assert!(reserving.check().is_err(), "the reserving thread is marked");
    let (p, n) = r.body();
    assert_eq!(n, 3);
    // SAFETY: the reservation's body has room for 3 bytes after the 2-byte head.
    unsafe { std::ptr::copy_nonoverlapping(b"abc".as_ptr(), p, 3) };
    r.check().unwrap();
    r.views().add();
    assert!(matches!(r.commit(), Err(Error::Held(_))));
    assert!(!r.is_open() && r.seq().is_none());
    assert!(matches!(r.check(), Err(Error::Closed(_))));
    reserving.check().unwrap();
    r.views().remove();

    let res = q.reserve(b"w", b"", 2 + 3, spec, &mut no_check).unwrap();
    let r = Reserved::new(res, b"hd", Arc::clone(&reserving), Arc::clone(&m));
    let (p, _) = r.body();
    // SAFETY: as above.
    unsafe { std::ptr::copy_nonoverlapping(b"xyz".as_ptr(), p, 3) };
    let seq = r.commit().unwrap();
    assert_eq!(r.seq(), Some(seq));
    assert!(matches!(r.commit(), Err(Error::Closed(_))));
    reserving.check().unwrap();
    let rec = q
        .next_for(reader.id(), &Filter::default())
        .unwrap()
        .unwrap();
    assert_eq!(rec.body, b"hdxyz", "only the committed message was sent");

    // Dropping an open reservation releases the writer lock.
    let res = q.reserve(b"w", b"", 1, spec, &mut no_check).unwrap();
    drop(Reserved::new(res, b"", Arc::clone(&reserving), m));
    reserving.check().unwrap();
    send(&q, b"after");
}

#[test]
fn a_slot_ring_member_leaves_once_and_a_block_frees_its_slot_after_its_last_view() {
    let name = uniq("ring");
    let _c = Cleanup(name.clone());
    let opts = SlotOptions {
        slot_bytes: 16,
        ..slot_opts(2, Some(1))
    };
    let ring = SlotRing::create(&name, opts).unwrap();
    let consumer = SlotRingMember::new(Arc::clone(&ring));
    assert!(matches!(consumer.id(), Err(Error::Closed(_))));
    consumer.join(KIND_CONSUMER, b"consumer").unwrap();
    let worker = SlotRingMember::new(Arc::clone(&ring));
    worker.join(KIND_WORKER, b"worker").unwrap();
    let wid = worker.id().unwrap();
    let spec = wait(5);
    let Claim::Slot(slot, 0) = ring.claim(wid, spec, &mut no_check).unwrap() else {
        panic!("no slot claimed")
    };
    ring.publish(slot, 4, false).unwrap();
    let TakeResult::Block(t) = ring.take(None, spec, &mut no_check).unwrap() else {
        panic!("no block")
    };
    let block = BlockTicket::new(Arc::clone(&ring), t.slot);
    block.check().unwrap();
    block.views().add();
    block.release();
    assert!(matches!(block.check(), Err(Error::Closed(_))));
    block.check_not_ended().unwrap();
    let free = ringcast_core::slots::SLOT_FREE;
    assert_ne!(
        ring.slot_states()[t.slot as usize],
        free,
        "a view keeps the slot"
    );
    block.view_gone();
    assert!(block.check_not_ended().is_err());
    assert_eq!(ring.slot_states()[t.slot as usize], free);
    drop(block);

    assert_eq!(ring.others(consumer.id().unwrap()), 1);
    assert_eq!(worker.close(), Some(wid));
    assert!(worker.close().is_none());
    assert!(!ring.leave(wid), "the consumer is still a member");
    drop(worker);
    assert_eq!(ring.others(consumer.id().unwrap()), 0);
}
