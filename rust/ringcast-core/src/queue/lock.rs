//! The writer lock: one word holding its owner's pid and start time, so that a waiter that
//! finds the owner dead takes the lock over (counted in `lock_recoveries`), and a second
//! word holding the owner's pid namespace, so that only a waiter of the same namespace
//! judges the owner's pid.
//!
//! The owner stores its namespace right after taking the lock and clears it right before
//! releasing it, so a waiter that sees an owner's token sees either that owner's namespace
//! or 0 ("not recorded yet"), never a previous owner's. A waiter takes the lock over only on
//! positive evidence of the owner's death ([`proc::Liveness::Dead`]): an owner of another
//! namespace, or one this process cannot judge (say it is out of file descriptors), is
//! waited for.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Queue;
use crate::error::{Error, Result};
use crate::fault::{self, Point};
use crate::proc;
use crate::wait::{block_on, Deadline, WaitSpec};

/// Holds the writer lock; releases it on drop.
pub(super) struct LockGuard<'a> {
    q: &'a Queue,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.q.unlock();
    }
}

/// How long joining and leaving wait for the writer lock at least.
const MEMBER_LOCK_GRACE: Duration = Duration::from_secs(2);

/// How long a send waits for the writer lock at least, whatever its own deadline: lock holds
/// are short, and recovering the lock from a dead owner takes one wait slice. A send whose
/// deadline passes while a healthy writer holds the lock thus still gets its turn; a lock that
/// stays held longer by a live process raises [`Error::Timeout`].
pub(super) const SEND_LOCK_GRACE: Duration = Duration::from_millis(200);

/// How long a lock waiter spins before it sleeps (lock holds are short).
const LOCK_SPIN: Duration = Duration::from_micros(20);

/// How often a lock waiter checks whether the owner is still alive.
const OWNER_CHECK_EVERY: Duration = Duration::from_millis(5);

/// The bits of a process start time a lock token keeps (see [`proc::Ident::token`]).
const TOKEN_START_MASK: u64 = u32::MAX as u64;

/// How long an owner may stay between taking the lock and recording its namespace before
/// a waiter judges it as one of its own namespace (it died in that window, or a foreign
/// tool wrote the lock word).
const UNRECORDED_GRACE: Duration = Duration::from_secs(1);

/// The namespace to judge the lock owner `token` in, given the recorded `ns` word: `None`
/// while it is not to be judged yet (recorded as 0 for less than [`UNRECORDED_GRACE`]).
fn owner_ns(token: u64, ns: u64, unrecorded: &mut Option<(u64, Instant)>) -> Option<u64> {
    if ns != proc::NS_UNKNOWN {
        return Some(ns);
    }
    match *unrecorded {
        Some((t, since)) if t == token => (since.elapsed() >= UNRECORDED_GRACE).then(proc::pid_ns),
        _ => {
            *unrecorded = Some((token, Instant::now()));
            None
        }
    }
}

impl Queue {
    /// Take the writer lock for joining or leaving (waits at least [`MEMBER_LOCK_GRACE`]).
    pub(super) fn lock(
        &self,
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<LockGuard<'_>> {
        self.lock_with(spec, Some(MEMBER_LOCK_GRACE), on_slice)
    }

    /// Release the writer lock (held by this process) and wake a waiter.
    pub(super) fn unlock(&self) {
        self.log()
            .lock_ns
            .store(proc::NS_UNKNOWN, Ordering::Relaxed);
        self.log().lock.store(0, Ordering::Release);
        fault::point(Point::Unlocked);
        self.header().lock_wait.pair().notify();
    }

    /// Take the writer lock, waiting until the later of the caller's deadline and `grace`
    /// from now. Without `grace`, a busy lock fails at once with [`Error::Busy`].
    pub(super) fn lock_with(
        &self,
        spec: WaitSpec,
        grace: Option<Duration>,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<LockGuard<'_>> {
        let h = self.header();
        let lock = &self.log().lock;
        let me = proc::current().token();
        let my_ns = proc::pid_ns();
        let lock_ns = &self.log().lock_ns;
        if lock
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            lock_ns.store(my_ns, Ordering::Release);
            return Ok(LockGuard { q: self });
        }
        let started = Instant::now();
        let mut last_check = started;
        // An owner token seen without its namespace, and since when.
        let mut unrecorded: Option<(u64, Instant)> = None;
        let Some(grace) = grace else {
            return Err(Error::Busy("writer lock"));
        };
        let deadline = Deadline(spec.deadline.0.map(|d| d.max(started + grace)));
        let spec = WaitSpec {
            deadline,
            spin: LOCK_SPIN,
        };
        let got = block_on(
            &h.lock_wait.pair(),
            spec,
            || {
                let cur = lock.load(Ordering::Acquire);
                if cur == 0 {
                    let got = lock
                        .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok();
                    if got {
                        lock_ns.store(my_ns, Ordering::Release);
                    }
                    return Ok(got.then_some(()));
                }
                if last_check.elapsed() >= OWNER_CHECK_EVERY {
                    last_check = Instant::now();
                    let Some(ns) = owner_ns(cur, lock_ns.load(Ordering::Acquire), &mut unrecorded)
                    else {
                        return Ok(None);
                    };
                    let (pid, start32) = proc::Ident::from_token(cur);
                    let life = proc::liveness(pid, u64::from(start32), TOKEN_START_MASK, ns);
                    if life.is_dead()
                        && lock
                            .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok()
                    {
                        lock_ns.store(my_ns, Ordering::Release);
                        h.lock_recoveries.fetch_add(1, Ordering::Relaxed);
                        self.finish_publish();
                        return Ok(Some(()));
                    }
                }
                Ok(None)
            },
            &mut *on_slice,
        )?;
        match got {
            Some(()) => Ok(LockGuard { q: self }),
            None => Err(Error::Timeout(started.elapsed(), "the writer lock")),
        }
    }
}
