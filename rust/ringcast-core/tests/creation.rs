//! Creating and removing segments under their locks: a stale segment that a live process has
//! mapped is never replaced under it, and creations made under a scratch name (where nameless
//! objects are refused) are judged by their creator's lock. Its own binary: it switches this
//! process to scratch names.

use std::os::fd::AsRawFd;
use std::process::Command;

use ringcast_core::segment::{
    self, inspect, is_abandoned_creation, list_names, remove_if_stale, Creation, SCRATCH_PREFIX,
};
use ringcast_core::{Error, Queue};

mod common;

use common::*;

/// Run by [`a_stale_queue_mapped_by_a_live_process_is_never_replaced_under_it`] in a child
/// process: create the queue named by `RC_STALE_NAME` and exit without leaving it, so it is
/// stale (no member, dead creator).
#[test]
#[ignore = "helper run in a child process"]
fn make_stale_queue_and_exit() {
    if let Ok(name) = std::env::var("RC_STALE_NAME") {
        std::mem::forget(Queue::create(&name, opts(8192, 8)).unwrap());
    }
}

fn make_stale(name: &str) {
    let st = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "make_stale_queue_and_exit",
            "--ignored",
            "--quiet",
        ])
        .env("RC_STALE_NAME", name)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    assert!(inspect(name).unwrap().is_stale());
}

#[test]
fn a_stale_queue_mapped_by_a_live_process_is_never_replaced_under_it() {
    let name = uniq("split");
    let _c = Cleanup(name.clone());
    make_stale(&name);
    // A process that has attached but not joined yet (the moment between the two).
    let old = Queue::attach(&name).unwrap();
    let info = inspect(&name).unwrap();
    assert!(info.mapped && !info.is_stale(), "{info:?}");
    match Queue::create(&name, opts(8192, 8)) {
        Err(Error::Exists(_)) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("replaced a queue a live process has mapped: the queue is split"),
    }
    assert!(!remove_if_stale(&name));
    drop(old);
    // Nobody maps it any more: it is replaced at once.
    let new = Queue::create(&name, opts(8192, 8)).unwrap();
    assert!(!inspect(&name).unwrap().is_stale());
    drop(new);
}

fn take_write_lock(f: &std::fs::File) {
    // SAFETY: a zeroed flock is valid; fcntl reads it and touches nothing else.
    let r = unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = libc::F_WRLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl)
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn scratch_creations_are_judged_by_their_creators_lock() {
    segment::creation::use_scratch_names_for_tests();
    // A creation through a scratch name leaves nothing but the segment.
    let name = uniq("scratch");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(8192, 8)).unwrap();
    let scratch_left = |tag: &str| {
        list_names()
            .into_iter()
            .filter(|n| n.starts_with(SCRATCH_PREFIX) && n.contains(tag))
            .collect::<Vec<_>>()
    };
    assert!(scratch_left(&format!("{:x}-", std::process::id())).is_empty());
    assert!(!inspect(&name).unwrap().is_stale());
    drop(q);

    // What a creator killed half-way leaves: an unlocked scratch object, empty or not.
    for (i, size) in [0usize, 4096, 20480].into_iter().enumerate() {
        let dead = format!("{SCRATCH_PREFIX}test-{}-{i}", std::process::id());
        let _d = Cleanup(dead.clone());
        std::fs::write(format!("/dev/shm/{dead}"), vec![0u8; size]).unwrap();
        assert!(list_names().contains(&dead));
        let info = inspect(&dead).unwrap();
        assert_eq!(info.creation, Creation::Abandoned);
        assert!(info.is_stale());
        assert!(is_abandoned_creation(&dead));
        assert!(remove_if_stale(&dead));
        assert!(!std::path::Path::new(&format!("/dev/shm/{dead}")).exists());
    }

    // A live creator's scratch object (its lock held): never removed, listed as creating.
    let live = format!("{SCRATCH_PREFIX}test-{}-live", std::process::id());
    let _l = Cleanup(live.clone());
    let path = format!("/dev/shm/{live}");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let creator = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    take_write_lock(&creator);
    let info = inspect(&live).unwrap();
    assert_eq!(info.creation, Creation::InProgress);
    assert!(!info.is_stale());
    assert!(!is_abandoned_creation(&live));
    assert!(!remove_if_stale(&live));
    assert!(std::path::Path::new(&path).exists());
    // The creator dies (its descriptor closes): abandoned at once.
    drop(creator);
    assert!(is_abandoned_creation(&live));
    assert!(remove_if_stale(&live));
}
