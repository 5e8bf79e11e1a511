//! Leases (pins), lossy readers, consumer groups and in-place reservations.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringcast_core::queue::{KIND_HANDLE, KIND_READER};
use ringcast_core::segment::{M_FREE, M_ORPHAN, NO_PIN};
use ringcast_core::wait::no_check;
use ringcast_core::{Deadline, Error, Filter, Queue, WaitSpec};

mod common;

use common::*;

#[test]
fn a_pin_holds_writers_back_until_released() {
    let name = uniq("pin");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let r = q.join(KIND_READER, b"r").unwrap();
    send(&q, &[7u8; 200]).unwrap();
    let rec = q.next_for(r, &Filter::default()).unwrap().unwrap();
    let (start, end, seq) = (rec.start, rec.end, rec.seq);
    let ptr = rec.body.as_ptr();
    // Lease: pin, then move the cursor on.
    q.set_pin(r, start).unwrap();
    q.consume(r, end, seq).unwrap();
    let mut n = 0;
    loop {
        match send(&q, &[9u8; 200]) {
            Ok(_) => {
                n += 1;
                let _ = recv_msg(&q, r).unwrap();
            }
            Err(Error::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(
            n < 100,
            "the pin must stop writers before they wrap onto it"
        );
    }
    // SAFETY: the pinned body is still mapped and not reused.
    let body = unsafe { std::slice::from_raw_parts(ptr, 200) };
    assert!(body.iter().all(|&b| b == 7), "pinned bytes unchanged");
    q.set_pin(r, NO_PIN).unwrap();
    for _ in 0..100 {
        send(&q, &[9u8; 200]).unwrap();
        recv_msg(&q, r).unwrap();
    }
}

#[test]
fn a_lossy_reader_never_holds_back_writers_and_counts_what_it_missed() {
    let name = uniq("lossy");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let lossy = q.join_reader(b"live view", true).unwrap();
    for i in 0u64..1000 {
        send(&q, &i.to_le_bytes()).unwrap();
    }
    let (seq, body, missed) = recv_msg(&q, lossy).unwrap();
    assert!(missed >= 1000 - 4096 / 32, "missed {missed}");
    assert_eq!(seq, missed);
    assert_eq!(u64::from_le_bytes(body.try_into().unwrap()), seq);
    // Then every remaining message, in order, without further misses.
    let mut expect = seq + 1;
    while let Some((s, b, m)) = recv_msg(&q, lossy) {
        assert_eq!((s, m), (expect, 0));
        assert_eq!(u64::from_le_bytes(b.try_into().unwrap()), s);
        expect += 1;
    }
    assert_eq!(expect, 1000);
    assert_eq!(q.stats().overruns, missed);
    // A lossy reader and a normal one: the normal one still holds writers back.
    let normal = q.join(KIND_READER, b"n").unwrap();
    let mut sent = 0;
    while send(&q, &[1u8; 64]).is_ok() {
        sent += 1;
    }
    assert!((40..60).contains(&sent), "{sent}");
    assert_eq!(recv_msg(&q, normal).unwrap().2, 0);
}

#[test]
fn a_lossy_reader_lapped_mid_stream_sees_only_intact_records() {
    let name = uniq("lossy2");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(8192, 8)).unwrap();
    let lossy = q.join_reader(b"l", true).unwrap();
    let w = std::sync::Arc::clone(&q);
    let writer = std::thread::spawn(move || {
        for i in 0u64..200_000 {
            let len = 8 + (i % 50) as usize * 8;
            let mut b = vec![(i % 251) as u8; len];
            b[..8].copy_from_slice(&i.to_le_bytes());
            send(&w, &b).unwrap();
        }
    });
    let (mut last, mut got, mut missed_total) = (None::<u64>, 0u64, 0u64);
    loop {
        match recv_msg(&q, lossy) {
            Some((s, b, m)) => {
                let i = u64::from_le_bytes(b[..8].try_into().unwrap());
                assert_eq!(i, s);
                assert!(
                    b[8..].iter().all(|&x| x == (i % 251) as u8),
                    "torn record {i}"
                );
                if let Some(l) = last {
                    assert_eq!(s, l + 1 + m, "gap must equal the reported misses");
                }
                missed_total += m;
                last = Some(s);
                got += 1;
            }
            None if writer.is_finished() => {
                if recv_msg(&q, lossy).is_none() {
                    break;
                }
            }
            None => std::thread::yield_now(),
        }
    }
    writer.join().unwrap();
    assert_eq!(last, Some(199_999));
    assert!(got > 0 && missed_total > 0);
}

#[test]
fn a_group_delivers_each_message_once_and_other_readers_get_all() {
    let name = uniq("group");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(1 << 16, 8)).unwrap();
    let a = q.join_group(b"a", b"workers").unwrap();
    let b = q.join_group(b"b", b"workers").unwrap();
    let solo = q.join(KIND_READER, b"solo").unwrap();
    assert!(matches!(
        q.join_group(b"x", b""),
        Err(Error::InvalidArgument(_))
    ));
    for i in 0u64..100 {
        send(&q, &i.to_le_bytes()).unwrap();
    }
    let mut seen = HashSet::new();
    let mut turn = 0;
    loop {
        let who = if turn % 3 == 0 { b } else { a };
        turn += 1;
        let Some(rec) = q.group_next(who).unwrap() else {
            break;
        };
        assert!(!rec.redelivered);
        assert!(seen.insert(rec.seq), "delivered twice: {}", rec.seq);
        q.group_ack(who).unwrap();
    }
    assert_eq!(seen.len(), 100);
    let mut solo_n = 0;
    while recv_msg(&q, solo).is_some() {
        solo_n += 1;
    }
    assert_eq!(solo_n, 100);
    let st = q.stats();
    let g = st.members.iter().find(|m| m.name == b"workers").unwrap();
    assert_eq!(g.lag_messages, 0);
}

#[test]
fn a_group_holds_writers_back_and_a_dead_members_claim_is_redelivered() {
    let name = uniq("group2");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let a = q.join_group(b"a", b"g").unwrap();
    let b = q.join_group(b"b", b"g").unwrap();
    let mut sent = 0u64;
    while send(&q, &sent.to_le_bytes()).is_ok() {
        sent += 1;
    }
    assert!(sent > 20, "the group's cursor holds writers back");
    // a claims message 0 and dies with it.
    let r = q.group_next(a).unwrap().unwrap();
    assert_eq!(r.seq, 0);
    q.segment()
        .member(a.slot)
        .unwrap()
        .pid
        .store(dead_pid(), Ordering::Relaxed);
    // b consumes the rest; writers still cannot pass a's claim.
    let mut got = vec![];
    while let Some(r) = q.group_next(b).unwrap() {
        got.push(r.seq);
        if r.seq == 5 {
            break;
        }
    }
    q.group_ack(b).unwrap();
    assert_eq!(q.reap_group_peers(b).unwrap(), 1);
    assert_eq!(
        q.segment()
            .member(a.slot)
            .unwrap()
            .state
            .load(Ordering::SeqCst),
        M_ORPHAN
    );
    let r = q.group_next(b).unwrap().unwrap();
    assert!(r.redelivered);
    assert_eq!(r.seq, 0);
    q.group_ack(b).unwrap();
    assert_eq!(q.stats().redelivered, 1);
    while let Some(r) = q.group_next(b).unwrap() {
        got.push(r.seq);
    }
    q.group_ack(b).unwrap();
    got.sort_unstable();
    assert_eq!(got, (1..sent).collect::<Vec<_>>());
    assert_eq!(
        q.segment()
            .member(a.slot)
            .unwrap()
            .state
            .load(Ordering::SeqCst),
        M_FREE
    );
    // Room again.
    send(&q, b"more").unwrap();
}

#[test]
fn a_group_whose_members_all_died_is_reaped_and_its_claims_counted_lost() {
    let name = uniq("group3");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let a = q.join_group(b"a", b"g").unwrap();
    while send(&q, &[0u8; 64]).is_ok() {}
    q.group_next(a).unwrap().unwrap();
    q.segment()
        .member(a.slot)
        .unwrap()
        .pid
        .store(dead_pid(), Ordering::Relaxed);
    send(&q, &[0u8; 64]).expect("the dead group no longer holds writers back");
    let st = q.stats();
    assert_eq!(st.claims_lost, 1);
    assert!(st.members.is_empty(), "{:?}", st.members);
}

#[test]
fn a_group_wait_reports_shutdown_once_drained() {
    let name = uniq("group4");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let a = q.join_group(b"a", b"g").unwrap();
    send(&q, b"x").unwrap();
    let spec = WaitSpec {
        deadline: Deadline::after(Some(Duration::from_secs(5))),
        spin: Duration::ZERO,
    };
    assert!(q.group_wait(a, spec, &mut no_check).unwrap());
    q.group_next(a).unwrap().unwrap();
    q.shutdown();
    assert!(matches!(
        q.group_wait(a, spec, &mut no_check),
        Err(Error::ShutDown(_))
    ));
}

#[test]
fn a_reservation_publishes_only_on_commit() {
    let name = uniq("reserve");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let _h = q.join(KIND_HANDLE, b"w").unwrap();
    let r = q.join(KIND_READER, b"r").unwrap();
    let res = q
        .reserve(b"w", b"frame", 100, WaitSpec::nowait(), &mut no_check)
        .unwrap();
    // SAFETY: the reservation's body is 100 writable bytes.
    unsafe { std::ptr::write_bytes(res.body_ptr(), 3, 100) };
    assert!(recv_msg(&q, r).is_none(), "nothing visible before commit");
    assert!(matches!(
        q.try_send(b"w", b"", &[b"x"]),
        Err(Error::Busy(_))
    ));
    drop(res);
    assert!(
        recv_msg(&q, r).is_none(),
        "an aborted reservation publishes nothing"
    );
    let res = q
        .reserve(b"w", b"frame", 100, WaitSpec::nowait(), &mut no_check)
        .unwrap();
    // SAFETY: as above.
    unsafe { std::ptr::write_bytes(res.body_ptr(), 5, 100) };
    assert_eq!(res.commit(), 0);
    let (seq, body, _) = recv_msg(&q, r).unwrap();
    assert_eq!((seq, body), (0, vec![5u8; 100]));
    assert!(matches!(
        q.reserve(b"w", b"", 5000, WaitSpec::nowait(), &mut no_check),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn large_multi_part_bodies_at_odd_offsets_arrive_intact() {
    let name = uniq("big");
    let _c = Cleanup(name.clone());
    let mut o = opts(4 << 20, 8);
    o.align = 1; // odd offsets: the streaming copy starts unaligned
    let q = Queue::create(&name, o).unwrap();
    let r = q.join(KIND_READER, b"r").unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, len) in [256 * 1024, 256 * 1024 + 1, 300_001, 1 << 20, (1 << 20) + 63]
        .into_iter()
        .enumerate()
    {
        let body: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let sender = vec![b's'; i * 3 + 1];
        // Two parts, the first one odd-sized, like a header and an array.
        q.send(
            &sender,
            b"t",
            &[&body[..7], &body[7..]],
            WaitSpec::nowait(),
            &mut no_check,
        )
        .unwrap();
        let (_, got, _) = recv_msg(&q, r).unwrap();
        assert!(got == body, "body {i} of {len} bytes damaged");
    }
}

#[test]
fn a_lossy_reader_never_resyncs_onto_a_record_still_being_written() {
    // Records of more than half the capacity: reserving the second one moves the
    // oldest-intact mark to the tail itself, onto a record that is not published yet.
    let name = uniq("lossy-inflight");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(8192, 8)).unwrap();
    let lossy = q.join_reader(b"l", true).unwrap();
    send(&q, &[1u8; 5000]).unwrap();
    let res = q
        .reserve(b"w", b"t", 5000, WaitSpec::nowait(), &mut no_check)
        .unwrap();
    assert!(q.next_for(lossy, &Filter::default()).unwrap().is_none());
    // SAFETY: the reservation's body is `len()` writable bytes.
    unsafe { std::ptr::write_bytes(res.body_ptr(), 2, res.len()) };
    assert_eq!(res.commit(), 1);
    let (seq, body, missed) = recv_msg(&q, lossy).unwrap();
    assert_eq!((seq, missed), (1, 1));
    assert!(body.iter().all(|&b| b == 2));
    assert_eq!(q.missed_total(lossy), 1);
}

#[test]
fn a_lossy_reader_reports_misses_noticed_while_waiting_or_screening() {
    let name = uniq("lossy-wait");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let lossy = q.join_reader(b"l", true).unwrap();
    for i in 0u64..100 {
        send(&q, &[i as u8; 100]).unwrap();
    }
    // Waiting resyncs the lapped reader; the next record still reports what it missed.
    assert!(q
        .wait_readable(lossy, &Filter::default(), WaitSpec::nowait(), &mut no_check)
        .unwrap());
    let (seq, _, missed) = recv_msg(&q, lossy).unwrap();
    assert!(missed > 0);
    assert_eq!(
        seq, missed,
        "the first record delivered is preceded by every miss"
    );
    assert_eq!(q.missed_total(lossy), missed);
    // Screening that ends at the tail keeps the misses for the next record delivered.
    while recv_msg(&q, lossy).is_some() {}
    let before = q.missed_total(lossy);
    for i in 0u64..100 {
        q.send(
            b"w",
            b"other",
            &[&[i as u8; 100]],
            WaitSpec::nowait(),
            &mut no_check,
        )
        .unwrap();
    }
    let only_t = Filter {
        types: Some(HashSet::from([b"t".to_vec()])),
        ..Filter::default()
    };
    assert!(q.next_for(lossy, &only_t).unwrap().is_none());
    let s = send(&q, b"x").unwrap();
    let rec = q.next_for(lossy, &only_t).unwrap().unwrap();
    assert_eq!(rec.seq, s);
    assert!(rec.missed > 0);
    assert_eq!(rec.missed, q.missed_total(lossy) - before);
}
