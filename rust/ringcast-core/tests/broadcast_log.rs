//! The broadcast log: sending and receiving, full and oversized messages, wrapping, slow
//! and dead readers, writer-lock recovery, screening, wake-ups, and a model-based property
//! test.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use ringcast_core::queue::{record_len, KIND_HANDLE, KIND_READER};
use ringcast_core::wait::no_check;
use ringcast_core::{Deadline, Error, Filter, MemberId, Queue, WaitSpec};

mod common;

use common::*;

#[test]
fn create_attach_send_recv_and_unlink_at_last_leave() {
    let name = uniq("basic");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let h = q.join(KIND_HANDLE, b"writer").unwrap();
    let q2 = Queue::attach(&name).unwrap();
    let r = q2.join(KIND_READER, b"reader").unwrap();
    assert!(matches!(
        Queue::create(&name, opts(4096, 8)),
        Err(Error::Exists(_))
    ));
    for i in 0..1000u32 {
        send(&q, &i.to_le_bytes()).unwrap();
        assert_eq!(recv(&q2, r).unwrap(), i.to_le_bytes());
    }
    assert_eq!(recv(&q2, r), None);
    let st = q.stats();
    assert_eq!(st.write_seq, 1000);
    assert_eq!(st.members.len(), 2);
    assert!(!q2.leave(r).unwrap());
    assert!(q.leave(h).unwrap(), "the last member unlinks");
    assert!(matches!(Queue::attach(&name), Err(Error::NotFound(_))));
}

#[test]
fn full_queue_and_too_large_and_exact_fit() {
    let name = uniq("full");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(100, 1)).unwrap();
    let r = q.join(KIND_READER, b"r").unwrap();
    // 16 + 1 + 1 + 82 == 100: exactly the capacity fits in an empty ring.
    send(&q, &[7u8; 82]).unwrap();
    match send(&q, b"") {
        Err(Error::Full {
            needed: 18,
            free: 0,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        send(&q, &[0u8; 83]),
        Err(Error::TooLarge {
            needed: 101,
            capacity: 100
        })
    ));
    assert_eq!(recv(&q, r).unwrap(), vec![7u8; 82]);
    send(&q, &[1u8; 82]).unwrap();
    // a blocked sender times out with Full after its deadline
    let t0 = Instant::now();
    let spec = WaitSpec {
        deadline: Deadline::after(Some(Duration::from_millis(60))),
        spin: Duration::ZERO,
    };
    assert!(matches!(
        q.send(b"w", b"t", &[b"x"], spec, &mut no_check),
        Err(Error::Full { .. })
    ));
    assert!(t0.elapsed() >= Duration::from_millis(60));
    let _ = q.leave(r);
}

#[test]
fn records_wrap_around_the_mirrored_ring() {
    let name = uniq("wrap");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let r = q.join(KIND_READER, b"r").unwrap();
    for i in 0..5000usize {
        let body: Vec<u8> = (0..(i * 37) % 3000).map(|j| (i + j) as u8).collect();
        send(&q, &body).unwrap();
        assert_eq!(recv(&q, r).unwrap(), body);
    }
    let _ = q.leave(r);
}

#[test]
fn a_slow_reader_holds_back_writers_and_a_dead_one_is_reaped() {
    let name = uniq("reap");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let slow = q.join(KIND_READER, b"slow").unwrap();
    let fast = q.join(KIND_READER, b"fast").unwrap();
    let mut sent = 0;
    while send(&q, &[1u8; 100]).is_ok() {
        sent += 1;
        recv(&q, fast).unwrap();
    }
    assert!(sent > 10);
    // Make the slow reader look like a process that has exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let m = q.segment().member(slow.slot).unwrap();
    m.pid.store(dead_pid, Ordering::Relaxed);
    send(&q, &[2u8; 100]).expect("the dead reader no longer pins the ring");
    assert_eq!(q.stats().reaped, 1);
    let _ = q.leave(fast);
}

#[test]
fn a_lock_held_by_a_dead_process_is_recovered() {
    let name = uniq("lock");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let h = q.segment().header();
    let lock = &q.log_words().lock;
    lock.store((12345u64 << 32) | u64::from(dead_pid), Ordering::SeqCst);
    // As the owner did right after taking the lock: record its pid namespace (ours).
    q.log_words()
        .lock_ns
        .store(ringcast_core::proc::pid_ns(), Ordering::SeqCst);
    let t0 = Instant::now();
    send(&q, b"after recovery").unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(h.lock_recoveries.load(Ordering::SeqCst), 1);
    assert_eq!(lock.load(Ordering::SeqCst), 0);
}

#[test]
fn screening_consumes_screened_records() {
    let name = uniq("filter");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let r = q.join(KIND_READER, b"r").unwrap();
    for (s, t) in [
        (&b"a"[..], &b"x"[..]),
        (b"b", b"x"),
        (b"a", b"y"),
        (b"c", b"z"),
    ] {
        q.send(s, t, &[b"body"], WaitSpec::nowait(), &mut no_check)
            .unwrap();
    }
    let mut f = Filter::default();
    f.exclude_senders.insert(b"a".to_vec());
    let rec = q.next_for(r, &f).unwrap().unwrap();
    assert_eq!((rec.sender, rec.typ, rec.seq), (&b"b"[..], &b"x"[..], 1));
    let (end, seq) = (rec.end, rec.seq);
    q.consume(r, end, seq).unwrap();
    f.types = Some([b"z".to_vec()].into_iter().collect());
    let rec = q.next_for(r, &f).unwrap().unwrap();
    assert_eq!(rec.seq, 3);
    assert_eq!(
        q.position(r).unwrap().1,
        3,
        "the screened record 2 was consumed"
    );
}

#[test]
fn blocked_reader_is_woken_by_a_writer_thread() {
    let name = uniq("wake");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let r = q.join(KIND_READER, b"r").unwrap();
    let q2 = Arc::clone(&q);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        send(&q2, b"hello").unwrap();
    });
    let t0 = Instant::now();
    let spec = WaitSpec {
        deadline: Deadline::after(Some(Duration::from_secs(5))),
        spin: Duration::ZERO,
    };
    assert!(q
        .wait_readable(r, &Filter::default(), spec, &mut no_check)
        .unwrap());
    assert!(t0.elapsed() < Duration::from_millis(45));
    assert_eq!(recv(&q, r).unwrap(), b"hello");
    t.join().unwrap();
    q.shutdown();
    assert!(matches!(
        q.wait_readable(r, &Filter::default(), spec, &mut no_check),
        Err(Error::ShutDown(_))
    ));
}

#[derive(Clone, Debug)]
enum Op {
    Send(usize),
    Recv(usize),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The log against a model: per-reader FIFO of every message, full exactly when the
    /// slowest reader's backlog plus the new record exceeds the capacity.
    #[test]
    fn log_matches_model(cap in 64u64..3000, align in prop::sample::select(vec![1u32, 8, 64]),
                         ops in prop::collection::vec(prop_oneof![
                             (0usize..400).prop_map(Op::Send), (0usize..3).prop_map(Op::Recv)], 1..300)) {
        let name = uniq("prop");
        let _c = Cleanup(name.clone());
        let q = Queue::create(&name, opts(cap, align)).unwrap();
        let readers: Vec<MemberId> = (0..3).map(|_| q.join(KIND_READER, b"r").unwrap()).collect();
        let mut model: Vec<VecDeque<(Vec<u8>, u64)>> = vec![VecDeque::new(); 3];
        let mut counter = 0u8;
        for op in ops {
            match op {
                Op::Send(len) => {
                    counter = counter.wrapping_add(1);
                    let body = vec![counter; len];
                    let n = record_len(align, 1, 1, len);
                    let used = model.iter().map(|m| m.iter().map(|(_, c)| c).sum::<u64>()).max().unwrap();
                    let r = send(&q, &body);
                    if n > cap {
                        prop_assert!(matches!(r, Err(Error::TooLarge { .. })), "expected too large");
                    } else if used + n > cap {
                        prop_assert!(matches!(r, Err(Error::Full { .. })), "expected full, used {} n {}", used, n);
                    } else {
                        prop_assert!(r.is_ok(), "expected ok");
                        for m in &mut model { m.push_back((body.clone(), n)); }
                    }
                }
                Op::Recv(k) => {
                    let got = recv(&q, readers[k]);
                    prop_assert_eq!(got, model[k].pop_front().map(|(b, _)| b));
                }
            }
        }
    }
}
