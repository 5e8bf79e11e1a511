//! Validation of what shared memory holds: garbage, truncated or altered segments, damaged
//! records and cursors are errors, never crashes; bad arguments are refused.

use std::io::Write;
use std::sync::atomic::Ordering;

use ringcast_core::queue::{record_len, KIND_READER};
use ringcast_core::segment::KIND_BROADCAST;
use ringcast_core::{Error, Filter, Queue};

mod common;

use common::*;

fn write_raw(name: &str, bytes: &[u8]) -> Cleanup {
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .unwrap();
    f.write_all(bytes).unwrap();
    Cleanup(name.to_owned())
}

#[test]
fn attaching_to_garbage_is_an_error_not_a_crash() {
    let name = uniq("garbage");
    // empty, short, random, zero header, wrong magic
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![1, 2, 3],
        (0..20000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
        vec![0u8; 8192],
        b"NOTRCAST"
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0, 8184))
            .collect(),
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let n = format!("{name}-{i}");
        let _c = write_raw(&n, bytes);
        match Queue::attach(&n) {
            Err(Error::Corrupt { .. }) => {}
            Err(e) => panic!("case {i}: unexpected error {e}"),
            Ok(_) => panic!("case {i}: garbage accepted"),
        }
    }
}

#[test]
fn truncated_or_altered_real_segments_are_rejected() {
    let name = uniq("trunc");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(8192, 8)).unwrap();
    let real = std::fs::read(format!("/dev/shm/{name}")).unwrap();
    drop(q);
    let mut k = 0;
    let mut check = |bytes: Vec<u8>| {
        let n = format!("{name}-{k}");
        k += 1;
        let _c = write_raw(&n, &bytes);
        assert!(
            matches!(Queue::attach(&n), Err(Error::Corrupt { .. })),
            "accepted altered copy {k}"
        );
    };
    for cut in [4096, real.len() - 4096, real.len() - 1] {
        check(real[..cut].to_vec());
    }
    for off in [8, 12, 16, 24, 32, 40, 48, 52, 56, 64, 72, 80] {
        let mut b = real.clone();
        b[off] ^= 0x55;
        b[off + 3] ^= 0x11;
        check(b);
    }
    assert!(matches!(
        ringcast_core::segment::Segment::attach(&name, 99, &Default::default()),
        Err(Error::Corrupt { .. })
    ));
    let _ = KIND_BROADCAST;
}

#[test]
fn corrupt_records_and_cursors_are_reported() {
    let name = uniq("corrupt");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let r = q.join(KIND_READER, b"r").unwrap();
    send(&q, b"hello").unwrap();
    // a hostile process makes the record claim a huge body
    // SAFETY: test writes into its own mapping.
    unsafe { std::ptr::write_unaligned(q.segment().ring_at(0) as *mut u32, u32::MAX) };
    assert!(matches!(
        q.next_for(r, &Filter::default()),
        Err(Error::Corrupt { .. })
    ));
    q.segment()
        .member(r.slot)
        .unwrap()
        .cursor
        .store(1 << 50, Ordering::Relaxed);
    assert!(matches!(
        q.next_for(r, &Filter::default()),
        Err(Error::Corrupt { .. })
    ));
    let _ = send(&q, &[0u8; 2000]);
    assert!(
        matches!(send(&q, &[0u8; 3000]), Err(Error::Corrupt { .. })),
        "a writer re-reading cursors notices"
    );
    // a write position no real queue can reach is refused, not wrapped around
    q.log_words().tail.store(u64::MAX - 3, Ordering::Relaxed);
    assert!(matches!(send(&q, b"x"), Err(Error::Corrupt { .. })));
}

#[test]
fn bad_arguments() {
    assert!(matches!(
        Queue::create("", opts(10, 8)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Queue::create("a/b", opts(10, 8)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Queue::create(&uniq("x"), opts(10, 3)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Queue::create(&uniq("x"), opts(1 << 41, 8)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Queue::attach(&uniq("missing")),
        Err(Error::NotFound(_))
    ));
    assert_eq!(record_len(1, 2, 3, 4), 25);
    assert_eq!(record_len(8, 2, 3, 4), 32);
}
