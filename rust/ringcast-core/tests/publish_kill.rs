//! A writer killed at any store of its write and publish sequence (a send, or a reservation
//! from `reserve` to `commit`) never breaks readers: every message published before is
//! received intact by plain, lossy and group readers, the message being published is
//! received whole or not at all, and the next writer takes the lock over and sends on,
//! wrapping the ring (issue 12, item 3). A join or leave waiting for the writer lock of a
//! live but stopped writer ends at its signal check, not after the lock grace (item 7).
//!
//! The victim writer is this test binary run again as a child process (the `victim`
//! function, selected by the `RC_FAULT_VICTIM` variable): it arms a fault-injection point
//! (`ringcast_core::fault`, compiled in for the core's own tests only) and writes one
//! message; it stops itself (SIGSTOP) at that point, and the test SIGKILLs it there.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringcast_core::fault::{self, Point};
use ringcast_core::queue::{KIND_HANDLE, KIND_READER};
use ringcast_core::wait::no_check;
use ringcast_core::{Error, MemberId, Queue};

mod common;

use common::*;

/// The variable that makes this binary the victim writer: `name,point index,how`.
const VICTIM_ENV: &str = "RC_FAULT_VICTIM";

/// Ring capacity of the test queues.
const CAP: u64 = 4096;

/// How the victim writes its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    Send,
    Reserve,
}

/// A message body naming itself, of a length that varies with `i`.
fn body(tag: &str, i: usize) -> Vec<u8> {
    let mut b = format!("{tag} {i}:").into_bytes();
    let len = 24 + (i * 37) % 180;
    let fill = b'a' + (i % 26) as u8;
    b.resize(len, fill);
    b
}

/// The victim's message: large enough that writing it always moves the oldest-intact mark
/// of a ring that has wrapped.
fn victim_body() -> Vec<u8> {
    let mut b = b"victim:".to_vec();
    b.resize(1200, b'v');
    b
}

/// Not a test of its own: the victim writer when this binary runs as a child (otherwise it
/// returns at once).
#[test]
fn victim() {
    let Ok(spec) = std::env::var(VICTIM_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let q = Queue::attach(parts[0]).unwrap();
    q.join(KIND_HANDLE, b"victim").unwrap();
    let point = Point::ALL[parts[1].parse::<usize>().unwrap()];
    let b = victim_body();
    fault::arm(Some(point));
    if parts[2] == "Send" {
        q.send(b"victim", b"t", &[&b], wait(10), &mut no_check)
            .unwrap();
    } else {
        let r = q
            .reserve(b"victim", b"t", b.len(), wait(10), &mut no_check)
            .unwrap();
        // SAFETY: the reservation's body is `b.len()` writable bytes, not aliased.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), r.body_ptr(), b.len()) };
        r.commit();
    }
    // The point was never passed.
    std::process::exit(3);
}

/// A victim writer stopped at its fault point (killed and reaped when dropped).
struct Victim(Child);

impl Victim {
    /// Run the victim on queue `name`; returns once it has stopped itself at `point`.
    fn stopped_at(name: &str, point: Point, how: How) -> Victim {
        let idx = Point::ALL.iter().position(|&p| p == point).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["victim", "--exact", "--nocapture", "--test-threads=1"])
            .env(VICTIM_ENV, format!("{name},{idx},{how:?}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let v = Victim(child);
        let t0 = Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: polling our own child; `status` is a local.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED | libc::WNOHANG) };
            if r == pid {
                assert!(
                    libc::WIFSTOPPED(status),
                    "the victim ended (status {status:#x}) without reaching {point:?} ({how:?})"
                );
                return v;
            }
            assert!(r == 0, "waitpid failed");
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the victim never stopped"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        // SIGKILL, then reap (both fail harmlessly if the child has ended and was reaped).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The readers of a test queue and what each has still to receive.
struct Readers {
    plain: MemberId,
    lossy: MemberId,
    group: MemberId,
}

impl Readers {
    fn join(q: &Queue) -> Readers {
        Readers {
            plain: q.join(KIND_READER, b"plain").unwrap(),
            lossy: q.join_reader(b"lossy", true).unwrap(),
            group: q.join_group(b"member", b"grp").unwrap(),
        }
    }

    /// Every reader receives exactly `want` (in order, intact, nothing missed), then
    /// nothing.
    fn expect(&self, q: &Queue, want: &[Vec<u8>], what: &str) {
        for (who, id) in [("plain", self.plain), ("lossy", self.lossy)] {
            for (k, w) in want.iter().enumerate() {
                match try_recv(q, id) {
                    Ok(Some((_, body, missed))) => {
                        assert_eq!(missed, 0, "{what}: {who} reader missed messages");
                        assert!(
                            &body == w,
                            "{what}: {who} reader got {:?}, not {:?} (message {k})",
                            String::from_utf8_lossy(&body[..body.len().min(12)]),
                            String::from_utf8_lossy(&w[..w.len().min(12)]),
                        );
                    }
                    Ok(None) => panic!("{what}: {who} reader has no message {k} of {}", want.len()),
                    Err(e) => panic!("{what}: {who} reader failed at message {k}: {e}"),
                }
            }
            assert!(
                matches!(try_recv(q, id), Ok(None)),
                "{what}: {who} reader has more than expected"
            );
        }
        for (k, w) in want.iter().enumerate() {
            let rec = q
                .group_next(self.group)
                .unwrap_or_else(|e| panic!("{what}: group reader failed at message {k}: {e}"))
                .unwrap_or_else(|| panic!("{what}: group reader has no message {k}"));
            assert!(
                rec.body == &w[..],
                "{what}: group reader message {k} differs"
            );
            q.group_ack(self.group).unwrap();
        }
        assert!(q.group_next(self.group).unwrap().is_none());
    }
}

/// [`recv_msg`] that returns errors instead of panicking.
fn try_recv(q: &Queue, id: MemberId) -> ringcast_core::Result<Option<(u64, Vec<u8>, u64)>> {
    let f = ringcast_core::Filter::default();
    loop {
        let Some(r) = q.next_for(id, &f)? else {
            return Ok(None);
        };
        let (body, start, end, seq, missed) = (r.body.to_vec(), r.start, r.end, r.seq, r.missed);
        if q.is_lossy(id) && !q.intact(start) {
            continue;
        }
        q.consume(id, end, seq)?;
        return Ok(Some((seq, body, missed)));
    }
}

/// Kill a victim writer at `point`, then check the readers and the next writer.
fn killed_at(point: Point, how: How) {
    let what = format!("killed at {point:?} ({how:?})");
    let name = uniq("kill");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(CAP, 8)).unwrap();
    let _w = q.join(KIND_HANDLE, b"w").unwrap();
    let rd = Readers::join(&q);
    // Wrap the ring a few times, so the victim reuses memory, then leave three unread.
    let mut sent = 0;
    for i in 0..60 {
        send(&q, &body("pre", i)).unwrap();
        rd.expect(&q, &[body("pre", i)], "before the victim");
        sent += 1;
    }
    let unread: Vec<Vec<u8>> = (60..63).map(|i| body("pre", i)).collect();
    for b in &unread {
        send(&q, b).unwrap();
        sent += 1;
    }
    let v = Victim::stopped_at(&name, point, how);
    drop(v); // SIGKILL, reaped

    // Before any writer takes the lock over, readers get what is published.
    let published = point >= Point::Published;
    let committed = point >= Point::Committed;
    let mut want = unread.clone();
    if published {
        want.push(victim_body());
    }
    rd.expect(&q, &want, &format!("{what}, before the next writer"));
    // The next writer takes the lock over (finishing a committed publish) and sends on,
    // wrapping the ring three times.
    let mut want = Vec::new();
    if committed && !published {
        want.push(victim_body());
    }
    let mut i = 0;
    let mut bytes = 0;
    while bytes < 3 * CAP {
        let b = body("post", i);
        q.send(b"w", b"t", &[&b], wait(5), &mut no_check)
            .unwrap_or_else(|e| panic!("{what}: the next writer failed: {e}"));
        bytes += q.record_len(1, 1, b.len());
        want.push(b);
        i += 1;
        if want.len() >= 3 {
            rd.expect(&q, &want, &format!("{what}, after the next writer"));
            want.clear();
        }
    }
    rd.expect(&q, &want, &format!("{what}, at the end"));
    let victim_n = usize::from(committed);
    assert_eq!(q.write_seq(), (sent + victim_n + i) as u64, "{what}");
    let st = q.stats();
    assert_eq!(
        st.lock_recoveries,
        u64::from(point < Point::Unlocked),
        "{what}: the lock is recovered if the victim held it"
    );
}

#[test]
fn a_sender_killed_at_any_store_never_breaks_readers() {
    for p in Point::ALL {
        killed_at(p, How::Send);
    }
}

#[test]
fn a_reservation_killed_at_any_store_never_breaks_readers() {
    for p in Point::ALL {
        if p != Point::HeadWritten {
            killed_at(p, How::Reserve);
        }
    }
}

/// A commit mark that does not match the record at the tail (garbage in shared memory) is
/// dropped by the writer that takes the lock over, not published.
#[test]
fn a_garbage_commit_mark_is_dropped_not_published() {
    let name = uniq("mark");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(CAP, 8)).unwrap();
    let rd = Readers::join(&q);
    let w = q.log_words();
    let dead = ringcast_core::proc::Ident {
        pid: dead_pid(),
        start: 1,
    };
    let mut want = Vec::new();
    let garbage = [1, 24, CAP - 8, CAP + 8, u64::MAX / 2, u64::MAX];
    for (i, g) in garbage.into_iter().enumerate() {
        let b = body("before", i);
        send(&q, &b).unwrap();
        want.push(b);
        let tail = w.tail.load(std::sync::atomic::Ordering::SeqCst);
        w.publishing
            .store(tail.saturating_add(g), std::sync::atomic::Ordering::SeqCst);
        w.lock
            .store(dead.token(), std::sync::atomic::Ordering::SeqCst);
        let b = body("after", i);
        q.send(b"w", b"t", &[&b], wait(5), &mut no_check).unwrap();
        want.push(b);
        rd.expect(&q, &want, &format!("commit mark tail + {g}"));
        want.clear();
    }
    assert_eq!(q.stats().lock_recoveries, garbage.len() as u64);
}

/// Join and leave waiting for the writer lock of a live writer (stopped mid-send) end at
/// their slice check's error, within a slice, instead of waiting out the lock grace.
#[test]
fn join_and_leave_waiting_for_a_held_lock_end_at_their_check() {
    let name = uniq("joinchk");
    let _c = Cleanup(name.clone());
    let q = Queue::create(&name, opts(CAP, 8)).unwrap();
    let _w = q.join(KIND_HANDLE, b"w").unwrap();
    let old = q.join(KIND_READER, b"old").unwrap();
    let v = Victim::stopped_at(&name, Point::Published, How::Send);
    // A check that fails (as a signal handler's exception does) 100 ms into the wait.
    let check = |t0: Instant| {
        move || {
            if t0.elapsed() >= Duration::from_millis(100) {
                Err(Error::Interrupted)
            } else {
                Ok(())
            }
        }
    };
    type Call<'a> = Box<dyn Fn(&mut dyn FnMut() -> ringcast_core::Result<()>) -> bool + 'a>;
    let calls: Vec<(&str, Call)> = vec![
        (
            "join",
            Box::new(|c| {
                matches!(
                    q.join_checked(KIND_READER, b"r", c),
                    Err(Error::Interrupted)
                )
            }),
        ),
        (
            "join_reader",
            Box::new(|c| {
                matches!(
                    q.join_reader_checked(b"r", true, c),
                    Err(Error::Interrupted)
                )
            }),
        ),
        (
            "join_group",
            Box::new(|c| {
                matches!(
                    q.join_group_checked(b"r", b"grp", c),
                    Err(Error::Interrupted)
                )
            }),
        ),
        (
            "leave",
            Box::new(|c| matches!(q.leave_checked(old, c), Err(Error::Interrupted))),
        ),
    ];
    for (what, call) in calls {
        let t0 = Instant::now();
        let mut chk = check(t0);
        assert!(call(&mut chk), "{what} was not interrupted");
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(400),
            "{what} took {took:?} to notice its check"
        );
    }
    assert_eq!(q.live_readers(), 0, "the interrupted leave freed its slot");
    drop(v);
    // The lock of the dead victim is taken over: joining works again.
    let r = q.join(KIND_READER, b"r").unwrap();
    assert!(!q.leave(r).unwrap());
}
