//! The filler: reading threads and a consumer that reads blocks itself share a ring's tasks,
//! every block delivered once, ordered or not, finite or cyclic.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::tmpdir;
use ringcast_core::slots::{SlotOptions, SlotRing, TakeResult, KIND_CONSUMER};
use ringcast_core::wait::no_check;
use ringcast_core::{Deadline, WaitSpec};
use ringcast_h5::{Codec, Extent, Filler, Plan};

/// `n` rows of 8 bytes, raw, in a file with a 5-byte header.
fn raw_file(dir: &std::path::Path, n: u64) -> (String, Vec<u8>) {
    let rows: Vec<u8> = (0..n * 8).map(|i| (i * 31 % 253) as u8).collect();
    let mut file = vec![9u8; 5];
    file.extend_from_slice(&rows);
    let path = dir.join("raw.bin");
    std::fs::write(&path, &file).unwrap();
    (path.to_str().unwrap().to_owned(), rows)
}

/// Take every block of a ring through `take_helping` (ordered if `ordered`); returns the
/// blocks' bytes in the order taken, with their task numbers.
fn drain_helping(ring: &SlotRing, filler: &Filler, ordered: bool, n: u64) -> Vec<(u64, Vec<u8>)> {
    let me = ring.join(KIND_CONSUMER, b"c").unwrap();
    let mut out = vec![];
    for k in 0..n {
        let spec = WaitSpec {
            deadline: Deadline::after(Some(Duration::from_secs(10))),
            spin: Duration::from_micros(10),
        };
        let want = ordered.then_some(k);
        match ring
            .take_helping(want, spec, &mut no_check, &mut || filler.help(me))
            .unwrap()
        {
            TakeResult::Block(t) => {
                assert!(!t.error, "task {} is an error record", t.task);
                let p = ring.slot_ptr(t.slot).unwrap();
                // SAFETY: the slot is leased to this consumer until released.
                let b = unsafe { std::slice::from_raw_parts(p, t.len as usize) }.to_vec();
                ring.release(t.slot).unwrap();
                out.push((t.task, b));
            }
            other => panic!("block {k}: {other:?}"),
        }
    }
    ring.leave(me);
    out
}

#[test]
fn a_consumer_with_nothing_ready_reads_blocks_itself() {
    let dir = tmpdir("help");
    let (path, rows, n, bs) = {
        let (p, r) = raw_file(&dir, 1000);
        (p, r, 1000u64, 7u64)
    };
    let ext = vec![Extent {
        row0: 0,
        rows: n,
        stored_rows: n,
        offset: 5,
        size: n * 8,
        codec: Codec::Raw,
        elem: 0,
    }];
    let block = |task: u64| {
        let a = (task * bs * 8) as usize;
        rows[a..(a + (bs * 8) as usize).min(rows.len())].to_vec()
    };
    let tasks = n.div_ceil(bs);
    let make = |tag: &str, cyclic: bool| {
        let name = format!("rc-native-help-{tag}-{}", std::process::id());
        let ring = SlotRing::create(
            &name,
            SlotOptions {
                n_slots: 3,
                slot_bytes: bs * 8,
                tasks: (!cyclic).then_some(tasks),
                max_members: 8,
                mode: 0o600,
            },
        )
        .unwrap();
        let plan = Plan::new(&path, 8, n, bs, cyclic, ext.clone()).unwrap();
        (ring, plan)
    };
    // Whatever happens, no segment stays behind (a reading thread may still be leaving).
    struct Unlink(Vec<String>);
    impl Drop for Unlink {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = ringcast_core::segment::unlink(n);
            }
        }
    }
    let _unlink = Unlink(
        ["alone", "shared", "cyclic"]
            .iter()
            .map(|t| format!("rc-native-help-{t}-{}", std::process::id()))
            .collect(),
    );

    // No reading thread: the consumer reads every block, in order.
    let (ring, plan) = make("alone", false);
    let f = Filler::new(Arc::clone(&ring), plan);
    let got = drain_helping(&ring, &f, true, tasks);
    assert_eq!(f.helped(), tasks);
    for (k, (task, bytes)) in got.iter().enumerate() {
        assert_eq!(*task, k as u64);
        assert_eq!(*bytes, block(*task), "task {task}");
    }

    // With a reading thread, unordered: every block exactly once, whoever read it.
    let (ring, plan) = make("shared", false);
    let f = Filler::start(Arc::clone(&ring), plan, 1).unwrap();
    let mut got = drain_helping(&ring, &f, false, tasks);
    got.sort_by_key(|(t, _)| *t);
    assert_eq!(got.len() as u64, tasks);
    for (k, (task, bytes)) in got.iter().enumerate() {
        assert_eq!(*task, k as u64, "a block is missing or came twice");
        assert_eq!(*bytes, block(*task), "task {task}");
    }
    assert!(f.helped() <= tasks);

    // Cyclic and ordered, past the wrap: the block that wraps holds the last and first rows.
    let (ring, plan) = make("cyclic", true);
    let f = Filler::start(Arc::clone(&ring), plan, 1).unwrap();
    let got = drain_helping(&ring, &f, true, tasks + 3);
    ring.stop();
    for (k, (task, bytes)) in got.iter().enumerate() {
        assert_eq!(*task, k as u64);
        let a = (task * bs) % n;
        let want: Vec<u8> = (a..a + bs)
            .flat_map(|r| {
                let r = (r % n) as usize;
                rows[r * 8..r * 8 + 8].to_vec()
            })
            .collect();
        assert_eq!(*bytes, want, "cyclic task {task}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
