//! A segment shrunk under a live process (another process's `ftruncate`) is an error on the
//! next call, never a `SIGBUS` that kills the process; creation reserves the memory.

use std::fs::OpenOptions;
use std::time::{Duration, Instant};

use ringcast_core::wait::no_check;
use ringcast_core::{Deadline, Error, Filter, Queue, WaitSpec};

mod common;

use common::*;

/// Shrink `/dev/shm/<name>` to `len` bytes, as another process would.
fn shrink(name: &str, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn file_len(name: &str) -> u64 {
    std::fs::metadata(format!("/dev/shm/{name}")).unwrap().len()
}

fn shrunk_error(e: &Error) -> bool {
    matches!(e, Error::Corrupt { why, .. } if why.contains("shrank the object"))
}

#[test]
fn a_writer_and_a_reader_survive_a_shrink_to_zero() {
    let name = uniq("shrink0");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(1 << 20, 8)).unwrap();
    let r = q.join_reader(b"r", false).unwrap();
    send(&q, &[7u8; 1000]).unwrap();
    shrink(&name, 0);
    // The reader's next access faults: an error, not a crash.
    let f = Filter::default();
    let got = q.next_for(r, &f).and_then(|rec| match rec {
        Some(rec) => q.consume(r, rec.end, rec.seq),
        None => Ok(()),
    });
    let e = got.expect_err("reading a shrunk segment");
    assert!(shrunk_error(&e), "{e}");
    // Every later call fails the same way.
    let e = send(&q, &[1u8; 100]).expect_err("sending into a shrunk segment");
    assert!(shrunk_error(&e), "{e}");
}

#[test]
fn a_writer_filling_a_half_shrunk_ring_gets_an_error() {
    let name = uniq("shrinkhalf");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(1 << 20, 8)).unwrap();
    let total = file_len(&name);
    shrink(&name, total / 2);
    let mut err = None;
    for _ in 0..4000 {
        if let Err(e) = send(&q, &[3u8; 4000]) {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("the writer reached the missing half");
    assert!(shrunk_error(&e), "{e}");
}

#[test]
fn a_waiting_reader_notices_a_shrink_it_never_touched() {
    let name = uniq("shrinkwait");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(1 << 20, 8)).unwrap();
    let r = q.join_reader(b"r", false).unwrap();
    let total = file_len(&name);
    let t = std::thread::spawn({
        let name = name.clone();
        move || {
            std::thread::sleep(Duration::from_millis(100));
            shrink(&name, total / 2);
        }
    });
    let t0 = Instant::now();
    let spec = WaitSpec {
        deadline: Deadline::after(Some(Duration::from_secs(10))),
        spin: Duration::ZERO,
    };
    let e = q
        .wait_readable(r, &Filter::default(), spec, &mut no_check)
        .expect_err("the wait notices the shrink");
    assert!(shrunk_error(&e), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    t.join().unwrap();
}

#[test]
fn creation_reserves_every_byte() {
    let name = uniq("reserve");
    let _c = Cleanup(name.clone());
    let _q = Queue::create(&name, opts(8 << 20, 8)).unwrap();
    let md = std::fs::metadata(format!("/dev/shm/{name}")).unwrap();
    use std::os::unix::fs::MetadataExt;
    // Allocated blocks (512-byte units) cover the whole object: not sparse.
    assert!(
        md.blocks() * 512 >= md.len(),
        "{} of {}",
        md.blocks() * 512,
        md.len()
    );
}
