//! The one blocking-wait helper of ringcast.
//!
//! Waits use process-shared futexes (never the PRIVATE flag) on words in shared memory, with a
//! monotonic deadline. A short spin comes first; then the waiter registers in a waiter count
//! (so wakers make no syscall when nobody waits) and sleeps in slices of at most
//! [`SLICE`], calling the caller's `on_slice` hook between slices (the Python bindings check
//! for signals there). Every blocking call in ringcast goes through [`block_on`].

use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The longest a waiter sleeps before it runs `on_slice` again.
pub const SLICE: Duration = Duration::from_millis(50);

/// Where no process-shared futex exists, the longest a waiter sleeps before it looks again.
#[cfg(not(target_os = "linux"))]
const POLL: Duration = Duration::from_micros(200);

/// Spin-loop hints between two attempts while spinning.
const SPINS_PER_ATTEMPT: u32 = 64;

/// Attempts between two looks at the clock while spinning.
const ATTEMPTS_PER_CLOCK: u32 = 16;

/// A futex word and the count of processes sleeping on it.
pub struct WaitPair<'a> {
    pub word: &'a AtomicU32,
    pub waiters: &'a AtomicU32,
}

impl WaitPair<'_> {
    /// Wake every sleeper, making no syscall when nobody waits.
    ///
    /// The caller must have published the state change before calling this.
    #[inline]
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) != 0 {
            self.notify_always();
        }
    }

    /// Wake every sleeper unconditionally.
    pub fn notify_always(&self) {
        self.word.fetch_add(1, Ordering::SeqCst);
        futex_wake(self.word);
    }
}

fn futex_wait(word: &AtomicU32, seen: u32, timeout: Duration) {
    #[cfg(target_os = "linux")]
    {
        use rustix::thread::futex;
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        // EAGAIN (the word moved), ETIMEDOUT and EINTR are all "go and look again".
        let _ = futex::wait(word, futex::Flags::empty(), seen, Some(&ts));
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Bounded poll where no process-shared futex is available.
        let _ = (word, seen);
        std::thread::sleep(timeout.min(POLL));
    }
}

fn futex_wake(word: &AtomicU32) {
    #[cfg(target_os = "linux")]
    {
        use rustix::thread::futex;
        let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = word;
}

/// A deadline on the monotonic clock; `None` waits for ever.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Option<Instant>);

impl Deadline {
    /// From a timeout in seconds: `None` is for ever, `<= 0` is "do not wait".
    pub fn after(timeout: Option<Duration>) -> Self {
        Deadline(timeout.map(|t| Instant::now() + t))
    }
    /// A deadline that has already passed.
    pub fn now() -> Self {
        Deadline(Some(Instant::now()))
    }
    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.0.is_some_and(|d| Instant::now() >= d)
    }
    /// Time left, `None` if unbounded.
    pub fn remaining(&self) -> Option<Duration> {
        self.0.map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// How a blocking call waits.
#[derive(Clone, Copy, Debug)]
pub struct WaitSpec {
    pub deadline: Deadline,
    /// How long to spin (polling, no syscall) before sleeping.
    pub spin: Duration,
}

impl WaitSpec {
    /// Do not wait at all.
    pub fn nowait() -> Self {
        WaitSpec {
            deadline: Deadline::now(),
            spin: Duration::ZERO,
        }
    }
}

/// Block until `attempt` yields a value, the deadline passes (`Ok(None)`), or `attempt` /
/// `on_slice` fail.
///
/// `attempt` is called first without waiting, then repeatedly while spinning, then after
/// every wake-up. `on_slice` runs at most every [`SLICE`] while sleeping (and at least once per
/// slice), so signals can be checked and dead peers reaped.
pub fn block_on<T>(
    pair: &WaitPair<'_>,
    spec: WaitSpec,
    mut attempt: impl FnMut() -> Result<Option<T>>,
    mut on_slice: impl FnMut() -> Result<()>,
) -> Result<Option<T>> {
    if let Some(v) = attempt()? {
        return Ok(Some(v));
    }
    if spec.deadline.expired() {
        return Ok(None);
    }
    if !spec.spin.is_zero() {
        let spin_end = Instant::now() + spec.spin;
        let mut i = 0u32;
        loop {
            for _ in 0..SPINS_PER_ATTEMPT {
                std::hint::spin_loop();
            }
            if let Some(v) = attempt()? {
                return Ok(Some(v));
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(ATTEMPTS_PER_CLOCK)
                && (Instant::now() >= spin_end || spec.deadline.expired())
            {
                break;
            }
        }
    }
    let mut last_slice = Instant::now();
    loop {
        let seen = pair.word.load(Ordering::SeqCst);
        pair.waiters.fetch_add(1, Ordering::SeqCst);
        let got = attempt();
        if !matches!(got, Ok(None)) {
            pair.waiters.fetch_sub(1, Ordering::SeqCst);
            return got;
        }
        let nap = match spec.deadline.remaining() {
            Some(r) if r.is_zero() => {
                pair.waiters.fetch_sub(1, Ordering::SeqCst);
                return Ok(None);
            }
            Some(r) => r.min(SLICE),
            None => SLICE,
        };
        futex_wait(pair.word, seen, nap);
        pair.waiters.fetch_sub(1, Ordering::SeqCst);
        if last_slice.elapsed() >= SLICE || nap == SLICE {
            last_slice = Instant::now();
            on_slice()?;
        }
    }
}

/// `on_slice` for callers that have nothing to check.
pub fn no_check() -> Result<()> {
    Ok(())
}

/// Turn a Python-style timeout (seconds, `None` = for ever) into a [`Deadline`].
pub fn deadline_from_secs(timeout: Option<f64>) -> Result<Deadline> {
    match timeout {
        None => Ok(Deadline(None)),
        Some(t) if t.is_nan() => Err(Error::InvalidArgument("timeout must not be NaN".into())),
        Some(t) if t <= 0.0 => Ok(Deadline::now()),
        Some(t) if t.is_infinite() || t > 1e9 => Ok(Deadline(None)),
        Some(t) => Ok(Deadline::after(Some(Duration::from_secs_f64(t)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn times_out_and_wakes() {
        let word = Arc::new(AtomicU32::new(0));
        let waiters = Arc::new(AtomicU32::new(0));
        let flag = Arc::new(AtomicU32::new(0));
        let pair = WaitPair {
            word: &word,
            waiters: &waiters,
        };
        let t0 = Instant::now();
        let spec = WaitSpec {
            deadline: Deadline::after(Some(Duration::from_millis(30))),
            spin: Duration::ZERO,
        };
        let r: Option<()> = block_on(&pair, spec, || Ok(None), no_check).unwrap();
        assert!(r.is_none());
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert_eq!(waiters.load(Ordering::SeqCst), 0);

        let (w2, n2, f2) = (word.clone(), waiters.clone(), flag.clone());
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            f2.store(1, Ordering::SeqCst);
            WaitPair {
                word: &w2,
                waiters: &n2,
            }
            .notify();
        });
        let t0 = Instant::now();
        let spec = WaitSpec {
            deadline: Deadline(None),
            spin: Duration::from_micros(5),
        };
        let r = block_on(
            &pair,
            spec,
            || Ok((flag.load(Ordering::SeqCst) == 1).then_some(7)),
            no_check,
        )
        .unwrap();
        assert_eq!(r, Some(7));
        assert!(
            t0.elapsed() < Duration::from_millis(45),
            "woken promptly, not by a slice"
        );
        h.join().unwrap();
    }

    #[test]
    fn on_slice_error_stops_the_wait() {
        let word = AtomicU32::new(0);
        let waiters = AtomicU32::new(0);
        let pair = WaitPair {
            word: &word,
            waiters: &waiters,
        };
        let spec = WaitSpec {
            deadline: Deadline(None),
            spin: Duration::ZERO,
        };
        let r: Result<Option<()>> = block_on(&pair, spec, || Ok(None), || Err(Error::Interrupted));
        assert!(matches!(r, Err(Error::Interrupted)));
    }

    #[test]
    fn timeouts_from_seconds() {
        assert!(deadline_from_secs(None).unwrap().0.is_none());
        assert!(deadline_from_secs(Some(0.0)).unwrap().expired());
        assert!(deadline_from_secs(Some(-1.0)).unwrap().expired());
        assert!(deadline_from_secs(Some(f64::NAN)).is_err());
        assert!(!deadline_from_secs(Some(10.0)).unwrap().expired());
    }
}
