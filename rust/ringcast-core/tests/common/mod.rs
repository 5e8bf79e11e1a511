//! Helpers shared by the core's integration tests: unique segment names, a guard that
//! removes a segment, options, and send/receive shortcuts.

#![allow(dead_code)] // each test file uses its own share of these

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ringcast_core::segment;
use ringcast_core::slots::SlotOptions;
use ringcast_core::wait::no_check;
use ringcast_core::{Deadline, Filter, MemberId, Queue, QueueOptions, WaitSpec};

/// A segment name no other test (or test process) uses.
pub fn uniq(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "rc-test-{}-{}-{}",
        tag,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the named segment when dropped (whatever the test left behind).
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = segment::unlink(&self.0);
    }
}

/// A pid that no process has right now (a child that has been waited for).
pub fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A wait of at most `secs` seconds, spinning a little first.
pub fn wait(secs: u64) -> WaitSpec {
    WaitSpec {
        deadline: Deadline::after(Some(Duration::from_secs(secs))),
        spin: Duration::from_micros(10),
    }
}

/// Options of a test queue: 8 members.
pub fn opts(capacity: u64, align: u32) -> QueueOptions {
    QueueOptions {
        capacity,
        max_members: 8,
        align,
        mode: 0o600,
    }
}

/// Options of a test slot ring: slots of 100 bytes, 8 members.
pub fn slot_opts(n_slots: u32, tasks: Option<u64>) -> SlotOptions {
    SlotOptions {
        n_slots,
        slot_bytes: 100,
        tasks,
        max_members: 8,
        mode: 0o600,
    }
}

/// Send `body` from sender `w` with type `t`, without waiting.
pub fn send(q: &Queue, body: &[u8]) -> ringcast_core::Result<u64> {
    q.send(b"w", b"t", &[body], WaitSpec::nowait(), &mut no_check)
}

/// Copy and consume the next record (validated for lossy readers); returns (seq, body,
/// missed).
pub fn recv_msg(q: &Queue, id: MemberId) -> Option<(u64, Vec<u8>, u64)> {
    let f = Filter::default();
    loop {
        let r = q.next_for(id, &f).unwrap()?;
        let (body, start, end, seq, missed) = (r.body.to_vec(), r.start, r.end, r.seq, r.missed);
        if q.is_lossy(id) && !q.intact(start) {
            continue;
        }
        q.consume(id, end, seq).unwrap();
        return Some((seq, body, missed));
    }
}

/// Copy and consume the next record's body.
pub fn recv(q: &Queue, id: MemberId) -> Option<Vec<u8>> {
    recv_msg(q, id).map(|(_, body, _)| body)
}

/// Fork; in the child run `child` and exit with its code (no destructors, no test harness);
/// in the parent return the child's exit code (99 if the child panicked).
pub fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `child` (shared memory of the test's queue, atomics,
    // syscalls) and leaves with `_exit`, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(99);
        // SAFETY: ends the child at once, as a forked child of a threaded process must.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child just forked.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status), "child did not exit: {status}");
    libc::WEXITSTATUS(status)
}
