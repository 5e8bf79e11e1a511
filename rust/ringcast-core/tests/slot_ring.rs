//! The slot ring: claim-before-task, ordered and unordered delivery, errors, dead workers.

use std::sync::Arc;
use std::time::Duration;

use ringcast_core::slots::{Claim, SlotRing, TakeResult, KIND_CONSUMER, KIND_WORKER, SLOT_FREE};
use ringcast_core::wait::no_check;
use ringcast_core::{Error, Queue};

mod common;

use common::*;

/// A worker thread: fills each task's slot with the task number, sleeping a little (longer
/// for some tasks, so they complete out of order).
fn worker(ring: Arc<SlotRing>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let id = ring.join(KIND_WORKER, b"w").unwrap();
        let mut n = 0;
        loop {
            match ring.claim(id, wait(10), &mut no_check) {
                Ok(Claim::Slot(slot, task)) => {
                    if task % 3 == 0 {
                        std::thread::sleep(Duration::from_millis(3));
                    }
                    let p = ring.slot_ptr(slot).unwrap();
                    // SAFETY: the claimed slot has slot_bytes() >= 8 writable bytes.
                    unsafe { std::ptr::copy_nonoverlapping(task.to_le_bytes().as_ptr(), p, 8) };
                    ring.publish(slot, 8, false).unwrap();
                    n += 1;
                }
                Ok(Claim::NoMoreTasks) | Err(Error::ShutDown(_)) => break,
                Ok(Claim::TimedOut) => panic!("a worker waited 10 s for a slot"),
                Err(e) => panic!("{e}"),
            }
        }
        ring.leave(id);
        n
    })
}

fn read_task(ring: &SlotRing, slot: u32) -> u64 {
    let p = ring.slot_ptr(slot).unwrap();
    let mut b = [0u8; 8];
    // SAFETY: the leased slot holds the 8 bytes the worker wrote.
    unsafe { std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), 8) };
    u64::from_le_bytes(b)
}

#[test]
fn ordered_delivery_with_few_slots_never_deadlocks() {
    let name = uniq("ordered");
    let _c = Cleanup(name.clone());
    let ring = SlotRing::create(&name, slot_opts(2, Some(60))).unwrap();
    let me = ring.join(KIND_CONSUMER, b"c").unwrap();
    let workers: Vec<_> = (0..3).map(|_| worker(Arc::clone(&ring))).collect();
    for want in 0..60u64 {
        match ring.take(Some(want), wait(10), &mut no_check).unwrap() {
            TakeResult::Block(t) => {
                assert_eq!((t.task, t.len, t.error), (want, 8, false));
                assert_eq!(read_task(&ring, t.slot), want);
                ring.release(t.slot).unwrap();
            }
            other => panic!("task {want}: {other:?}"),
        }
    }
    assert_eq!(
        ring.take(Some(60), wait(1), &mut no_check).unwrap(),
        TakeResult::End
    );
    let done: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(done, 60);
    assert!(ring.slot_states().iter().all(|&s| s == SLOT_FREE));
    assert!(ring.leave(me), "the last member out unlinks");
}

#[test]
fn unordered_delivery_gives_every_task_once() {
    let name = uniq("unordered");
    let _c = Cleanup(name.clone());
    let ring = SlotRing::create(&name, slot_opts(3, Some(50))).unwrap();
    let workers: Vec<_> = (0..2).map(|_| worker(Arc::clone(&ring))).collect();
    let mut seen = vec![];
    loop {
        match ring.take(None, wait(10), &mut no_check).unwrap() {
            TakeResult::Block(t) => {
                assert_eq!(read_task(&ring, t.slot), t.task);
                seen.push(t.task);
                ring.release(t.slot).unwrap();
            }
            TakeResult::End => break,
            TakeResult::TimedOut => panic!("timed out"),
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn an_error_record_reaches_the_consumer() {
    let name = uniq("error");
    let _c = Cleanup(name.clone());
    let ring = SlotRing::create(&name, slot_opts(2, Some(1))).unwrap();
    let w = ring.join(KIND_WORKER, b"w").unwrap();
    let Claim::Slot(slot, 0) = ring.claim(w, wait(1), &mut no_check).unwrap() else {
        panic!("no slot");
    };
    let msg = b"Traceback: OSError: read failed";
    // SAFETY: the slot has room for the message.
    unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), ring.slot_ptr(slot).unwrap(), msg.len()) };
    ring.publish(slot, msg.len() as u64, true).unwrap();
    assert!(matches!(
        ring.publish(slot, 1, false),
        Err(Error::InvalidArgument(_))
    ));
    let TakeResult::Block(t) = ring.take(None, wait(1), &mut no_check).unwrap() else {
        panic!("no block");
    };
    assert!(t.error && t.len == msg.len() as u64);
    assert_eq!(
        ring.claim(w, wait(1), &mut no_check).unwrap(),
        Claim::NoMoreTasks
    );
}

#[test]
fn a_worker_that_died_holding_a_slot_fails_the_wait() {
    let name = uniq("dead");
    let _c = Cleanup(name.clone());
    let ring = SlotRing::create(&name, slot_opts(2, Some(5))).unwrap();
    let w = ring.join(KIND_WORKER, b"w").unwrap();
    let Claim::Slot(_, 0) = ring.claim(w, wait(1), &mut no_check).unwrap() else {
        panic!("no slot");
    };
    let pid = dead_pid();
    ring.segment_member_pid(w.slot, pid);
    let t0 = std::time::Instant::now();
    match ring.take(Some(0), wait(10), &mut no_check) {
        Err(Error::WorkerDied { pid: p, task }) => assert_eq!((p, task), (pid, Some(0))),
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(1));
}

#[test]
fn stop_ends_workers_and_drains_consumers() {
    let name = uniq("stop");
    let _c = Cleanup(name.clone());
    let ring = SlotRing::create(&name, slot_opts(2, None)).unwrap();
    assert_eq!(ring.tasks(), None);
    let workers: Vec<_> = (0..2).map(|_| worker(Arc::clone(&ring))).collect();
    let mut seen = 0;
    while seen < 100 {
        if let TakeResult::Block(t) = ring.take(None, wait(10), &mut no_check).unwrap() {
            ring.release(t.slot).unwrap();
            seen += 1;
        }
    }
    ring.stop();
    for w in workers {
        w.join().unwrap();
    }
    loop {
        match ring.take(None, wait(5), &mut no_check).unwrap() {
            TakeResult::Block(t) => ring.release(t.slot).unwrap(),
            TakeResult::End => break,
            TakeResult::TimedOut => panic!("timed out"),
        }
    }
}

#[test]
fn kinds_and_arguments_are_checked() {
    let name = uniq("kinds");
    let _c = Cleanup(name.clone());
    let _ring = SlotRing::create(&name, slot_opts(4, Some(1))).unwrap();
    assert!(matches!(Queue::attach(&name), Err(Error::Corrupt { .. })));
    let again = SlotRing::attach(&name).unwrap();
    assert_eq!((again.n_slots(), again.slot_bytes()), (4, 128));
    for bad in [0u32, 1 << 17] {
        assert!(matches!(
            SlotRing::create(&uniq("bad"), slot_opts(bad, None)),
            Err(Error::InvalidArgument(_))
        ));
    }
    let name2 = uniq("q");
    let _c2 = Cleanup(name2.clone());
    let _q = Queue::create(&name2, ringcast_core::QueueOptions::default()).unwrap();
    assert!(matches!(
        SlotRing::attach(&name2),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn a_finished_ring_is_recycled_only_when_nothing_uses_it() {
    let name = uniq("recycle");
    let _c = Cleanup(name.clone());
    let ring = SlotRing::create(&name, slot_opts(3, Some(10))).unwrap();
    let me = ring.join(KIND_CONSUMER, b"c").unwrap();
    let w = worker(Arc::clone(&ring));
    let mut kept = None;
    for want in 0..10u64 {
        match ring.take(Some(want), wait(10), &mut no_check).unwrap() {
            TakeResult::Block(t) if want == 9 => kept = Some(t.slot), // still leased
            TakeResult::Block(t) => ring.release(t.slot).unwrap(),
            other => panic!("task {want}: {other:?}"),
        }
    }
    assert_eq!(w.join().unwrap(), 10);
    let kept = kept.unwrap();
    // A leased slot (a view still alive) forbids it, and changes nothing.
    assert!(matches!(ring.recycle(me, Some(5)), Err(Error::Held(_))));
    assert_eq!(ring.tasks(), Some(10));
    // So does another member still attached.
    ring.release(kept).unwrap();
    let other = ring.join(KIND_WORKER, b"w").unwrap();
    assert!(matches!(ring.recycle(me, Some(5)), Err(Error::Held(_))));
    ring.leave(other);
    // Then a new run of 5 tasks, numbered from 0, on the same memory.
    ring.recycle(me, Some(5)).unwrap();
    assert_eq!(
        (ring.tasks(), ring.tasks_started(), ring.blocks_taken()),
        (Some(5), 0, 0)
    );
    assert!(!ring.stopped());
    let w = worker(Arc::clone(&ring));
    for want in 0..5u64 {
        match ring.take(Some(want), wait(10), &mut no_check).unwrap() {
            TakeResult::Block(t) => {
                assert_eq!(read_task(&ring, t.slot), want);
                ring.release(t.slot).unwrap();
            }
            other => panic!("second run, task {want}: {other:?}"),
        }
    }
    assert_eq!(
        ring.take(Some(5), wait(1), &mut no_check).unwrap(),
        TakeResult::End
    );
    assert_eq!(w.join().unwrap(), 5);
    // A stopped cyclic ring comes back unstopped.
    ring.stop();
    ring.recycle(me, None).unwrap();
    assert_eq!((ring.tasks(), ring.stopped()), (None, false));
    assert!(ring.leave(me));
}

/// An attacher that finds a ring's name reads the task limit its creator set, never the
/// unset value: the limit is written before the name appears.
#[test]
fn an_attacher_never_sees_the_task_limit_unset() {
    const ROUNDS: usize = 300;
    let base = uniq("slots-limit");
    let names: Vec<String> = (0..ROUNDS).map(|r| format!("{base}-{r}")).collect();
    let _cleanup: Vec<Cleanup> = names.iter().map(|n| Cleanup(n.clone())).collect();
    let watched = names.clone();
    let attacher = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for name in &watched {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let ring = loop {
                match SlotRing::attach(name) {
                    Ok(r) => break r,
                    Err(Error::NotFound(_)) if std::time::Instant::now() < deadline => {
                        std::hint::spin_loop()
                    }
                    Err(e) => panic!("attach {name}: {e}"),
                }
            };
            seen.push(ring.tasks());
        }
        seen
    });
    let mut rings = Vec::new();
    for name in &names {
        rings.push(SlotRing::create(name, slot_opts(2, Some(7))).unwrap());
    }
    let seen = attacher.join().unwrap();
    assert!(
        seen.iter().all(|t| *t == Some(7)),
        "an attacher saw {seen:?}"
    );
}
