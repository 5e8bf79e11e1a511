//! Liveness is decided only on positive evidence of death: a process out of file
//! descriptors, or one looking at a member of another pid namespace, never takes a live
//! writer's lock, never reaps a live reader, never calls a used segment stale.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{dead_pid, in_child, opts, send, uniq, Cleanup};
use ringcast_core::proc::{self, Liveness};
use ringcast_core::queue::KIND_READER;
use ringcast_core::segment;
use ringcast_core::wait::no_check;
use ringcast_core::{Deadline, Error, Queue, WaitSpec};

/// Lower this process's file-descriptor limit so that no new descriptor can be opened
/// (every fd below 3 is in use); true if `/proc/self/stat` now fails with EMFILE.
fn exhaust_fds() -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this process with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return false;
        }
        lim.rlim_cur = 3;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return false;
        }
    }
    matches!(
        std::fs::File::open("/proc/self/stat").map_err(|e| e.raw_os_error()),
        Err(Some(libc::EMFILE))
    )
}

fn spec(ms: u64) -> WaitSpec {
    WaitSpec {
        deadline: Deadline::after(Some(Duration::from_millis(ms))),
        spin: Duration::from_micros(10),
    }
}

#[test]
fn a_process_out_of_file_descriptors_never_takes_a_live_writers_lock() {
    let name = uniq("emfile-lock");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    // This (live) process holds the writer lock, as a writer in the middle of a send does.
    let me = proc::current();
    let lock = &q.log_words().lock;
    lock.store(me.token(), Ordering::SeqCst);
    q.log_words()
        .lock_ns
        .store(proc::pid_ns(), Ordering::SeqCst);
    let code = in_child(|| {
        if !exhaust_fds() {
            return 2;
        }
        // The owner (our parent) can no longer be looked at in /proc from here.
        if proc::liveness(me.pid, me.start, u64::MAX, proc::pid_ns()) != Liveness::Unknown {
            return 3;
        }
        let t0 = Instant::now();
        match q.send(b"w", b"t", &[b"stolen?"], spec(300), &mut no_check) {
            Err(Error::Timeout(..)) if t0.elapsed() >= Duration::from_millis(250) => 0,
            Err(_) => 4,
            Ok(_) => 5, // took the lock from a live writer
        }
    });
    assert_eq!(
        code, 0,
        "child failed (2: could not exhaust fds, 5: stole the lock)"
    );
    assert_eq!(lock.load(Ordering::SeqCst), me.token());
    assert_eq!(
        q.segment().header().lock_recoveries.load(Ordering::SeqCst),
        0
    );
    q.log_words().lock_ns.store(0, Ordering::SeqCst);
    lock.store(0, Ordering::SeqCst);
    send(&q, b"the real owner goes on").unwrap();
}

#[test]
fn a_process_out_of_file_descriptors_never_reaps_live_readers() {
    let name = uniq("emfile-reap");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let slow = q.join(KIND_READER, b"slow").unwrap();
    while send(&q, &[1u8; 100]).is_ok() {}
    let code = in_child(|| {
        if !exhaust_fds() {
            return 2;
        }
        match send(&q, &[2u8; 100]) {
            Err(Error::Full { .. }) => 0,
            Err(_) => 4,
            Ok(_) => 5, // reaped the live reader and overwrote its unread messages
        }
    });
    assert_eq!(
        code, 0,
        "child failed (2: could not exhaust fds, 5: reaped a live reader)"
    );
    assert_eq!(q.stats().reaped, 0);
    assert!(
        q.segment().owned(slow).is_some(),
        "the live reader lost its slot"
    );
    let _ = q.leave(slow);
}

#[test]
fn members_and_lock_owners_of_another_pid_namespace_are_never_judged() {
    let name = uniq("ns");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let foreign_ns = proc::pid_ns() ^ 0x5a5a;
    // A reader of another container: its pid means nothing here (here it is a dead pid).
    let r = q.join(KIND_READER, b"theirs").unwrap();
    let m = q.segment().member(r.slot).unwrap();
    m.ns.store(foreign_ns, Ordering::SeqCst);
    m.pid.store(dead_pid(), Ordering::SeqCst);
    assert_eq!(m.liveness(), Liveness::Unknown);
    while send(&q, &[1u8; 100]).is_ok() {}
    assert!(matches!(send(&q, &[1u8; 100]), Err(Error::Full { .. })));
    assert_eq!(
        q.stats().reaped,
        0,
        "a reader of another namespace was reaped"
    );
    // Nor does `ls`/`gc` call the queue stale, nor does our last member's leaving unlink it.
    let info = segment::inspect(&name).unwrap();
    assert_eq!((info.members_alive, info.members_dead), (1, 0));
    assert!(!segment::remove_if_stale(&name));
    let mine = q.join(KIND_READER, b"ours").unwrap();
    assert!(
        !q.leave(mine).unwrap(),
        "our last member unlinked a queue still in use"
    );
    assert!(segment::inspect(&name).is_ok());

    // A writer of another namespace holds the lock: it is waited for, never taken over.
    let lock = &q.log_words().lock;
    lock.store((7u64 << 32) | u64::from(dead_pid()), Ordering::SeqCst);
    q.log_words().lock_ns.store(foreign_ns, Ordering::SeqCst);
    let got = q.send(b"w", b"t", &[b"x"], spec(200), &mut no_check);
    assert!(matches!(got, Err(Error::Timeout(..))), "{got:?}");
    assert_eq!(
        q.segment().header().lock_recoveries.load(Ordering::SeqCst),
        0
    );

    // The same dead pid recorded in our own namespace is recovered and reaped.
    q.log_words()
        .lock_ns
        .store(proc::pid_ns(), Ordering::SeqCst);
    m.ns.store(proc::pid_ns(), Ordering::SeqCst);
    send(&q, &[3u8; 100]).expect("a dead owner and reader of our namespace are recovered");
    assert_eq!(
        q.segment().header().lock_recoveries.load(Ordering::SeqCst),
        1
    );
    assert_eq!(q.stats().reaped, 1);
}

#[test]
fn a_lock_owner_that_died_before_recording_its_namespace_is_recovered_after_a_grace() {
    let name = uniq("unrecorded");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    q.log_words()
        .lock
        .store((7u64 << 32) | u64::from(dead_pid()), Ordering::SeqCst);
    let t0 = Instant::now();
    q.send(b"w", b"t", &[b"x"], spec(5000), &mut no_check)
        .expect("recovered");
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        q.segment().header().lock_recoveries.load(Ordering::SeqCst),
        1
    );
}

#[test]
fn a_member_joined_from_a_new_pid_namespace_records_it_and_is_never_reaped_here() {
    let name = uniq("newns");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(4096, 8)).unwrap();
    let here = proc::pid_ns(); // cached in this process before any fork
    let code = in_child(|| {
        // SAFETY: unshare in a single-threaded forked child; only its children are affected.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            return 77; // not allowed here (needs root or a user namespace)
        }
        in_child(|| {
            // The first process of the new namespace: pid 1 there, and its own namespace,
            // though this process cached the parent's before the forks.
            if std::process::id() != 1 || proc::pid_ns() == here {
                return 1;
            }
            match q.join(KIND_READER, b"in a container") {
                Ok(id) if q.segment().member(id.slot).is_some() => 0, // exits as a member
                _ => 2,
            }
        })
    });
    if code == 77 {
        eprintln!("skipped: unshare(CLONE_NEWPID) is refused here");
        return;
    }
    assert_eq!(code, 0);
    let m = q
        .segment()
        .members()
        .map(|(_, m)| m)
        .find(|m| m.state.load(Ordering::Acquire) != 0)
        .expect("the member of the other namespace");
    assert_eq!(m.pid.load(Ordering::SeqCst), 1);
    assert_ne!(m.ns.load(Ordering::SeqCst), here);
    // Pid 1 here is our init: judged from here, the member would be "recycled", so dead.
    assert_eq!(m.liveness(), Liveness::Unknown);
    while send(&q, &[1u8; 100]).is_ok() {}
    assert_eq!(q.stats().reaped, 0);
    assert!(!segment::remove_if_stale(&name));
    // (That process did exit: only a process of its namespace could tell. The Cleanup guard
    // removes the segment.)
}
