//! The one blocking-wait helper of ringcast.
//!
//! Waits use process-shared futexes (never the PRIVATE flag) on words in shared memory, with a
//! monotonic deadline. A short spin comes first; then the waiter registers in a waiter count
//! (so wakers make no syscall when nobody waits) and sleeps in slices of at most
//! [`SLICE`], calling the caller's `on_slice` hook between slices (the Python bindings check
//! for signals there). Every blocking call in ringcast goes through [`block_on`].
//!
//! The spin is adaptive (see [`spin_budget`]): it is skipped while more threads are runnable
//! than the machine has CPUs (a spinning waiter would take the core the peer it waits for
//! needs), and each thread halves its spin after a spin that did not succeed and doubles it
//! again after one that did, down to no spin at all with an occasional short probe. So a spin
//! never costs more than it saves, while a ping-pong on an idle machine keeps its full spin.

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
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

/// Halvings of the spin after which a thread stops spinning (20 us: 10, 5, 2.5, then none).
const SPIN_OFF_LEVEL: u8 = 4;

/// While a thread does not spin, every this many waits it spins once (the shortest spin) to
/// see whether spinning pays again.
const SPIN_PROBE_EVERY: u8 = 8;

/// How long a look at the machine's load (`/proc/loadavg`) stays valid, in milliseconds.
const LOAD_TTL_MS: u64 = 10;

/// One thread's spin state: `level` halvings of the requested spin (`SPIN_OFF_LEVEL`: off),
/// and the waits since the last probe while off.
#[derive(Clone, Copy)]
struct SpinState {
    level: u8,
    since_probe: u8,
}

thread_local! {
    static SPIN: Cell<SpinState> = const { Cell::new(SpinState { level: 0, since_probe: 0 }) };
}

/// How long this thread should spin before sleeping, for a wait that asked for `requested`.
///
/// Zero while the machine has more runnable threads than CPUs ([`crowded`]), or while this
/// thread's recent spins did not succeed (each failure halves the spin, each success doubles
/// it back up to `requested`; once off, one wait in [`SPIN_PROBE_EVERY`] spins the shortest
/// amount to find out whether spinning pays again).
pub fn spin_budget(requested: Duration) -> Duration {
    let spin = thread_budget(requested);
    if spin.is_zero() || crowded() {
        return Duration::ZERO;
    }
    spin
}

/// This thread's share of `requested` by its recent spins alone (see [`spin_budget`]).
fn thread_budget(requested: Duration) -> Duration {
    if requested.is_zero() {
        return Duration::ZERO;
    }
    let st = SPIN.with(Cell::get);
    let level = if st.level < SPIN_OFF_LEVEL {
        st.level
    } else {
        let since = st.since_probe.saturating_add(1);
        let probe = since >= SPIN_PROBE_EVERY;
        SPIN.with(|c| {
            c.set(SpinState {
                since_probe: if probe { 0 } else { since },
                ..st
            })
        });
        if !probe {
            return Duration::ZERO;
        }
        SPIN_OFF_LEVEL - 1
    };
    requested / (1u32 << level)
}

/// Record how a spin of this thread ended: `won` if the awaited condition came true while
/// spinning.
pub fn spin_outcome(won: bool) {
    SPIN.with(|c| {
        let st = c.get();
        let level = if won {
            st.level.min(SPIN_OFF_LEVEL).saturating_sub(1)
        } else {
            (st.level + 1).min(SPIN_OFF_LEVEL)
        };
        c.set(SpinState {
            level,
            since_probe: 0,
        });
    });
}

/// Whether more threads are runnable on this machine than it has CPUs online, judged from
/// `/proc/loadavg` (its "running/total" field counts the asking thread too) and looked at no
/// more than every [`LOAD_TTL_MS`] per process. `false` where that cannot be read.
pub fn crowded() -> bool {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // (milliseconds since EPOCH + 1) << 1 | crowded; 0: never looked.
    static LOOK: AtomicU64 = AtomicU64::new(0);
    let now_ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
    let seen = LOOK.load(Ordering::Relaxed);
    if seen != 0 && now_ms.saturating_sub(seen >> 1) < LOAD_TTL_MS {
        return seen & 1 == 1;
    }
    let busy = match (runnable_threads(), online_cpus()) {
        (Some(running), Some(cpus)) => running > cpus,
        _ => false,
    };
    LOOK.store((now_ms << 1) | u64::from(busy), Ordering::Relaxed);
    busy
}

/// The machine's runnable threads, from `/proc/loadavg`.
fn runnable_threads() -> Option<u64> {
    use std::io::Read;
    let mut buf = [0u8; 128];
    let mut f = std::fs::File::open("/proc/loadavg").ok()?;
    let n = f.read(&mut buf).ok()?;
    parse_loadavg_running(buf.get(..n)?)
}

/// The "running" count of a `/proc/loadavg` line (`0.52 0.58 0.59 3/1234 5678`).
pub fn parse_loadavg_running(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let field = text.split_ascii_whitespace().nth(3)?;
    let (running, _) = field.split_once('/')?;
    running.parse().ok()
}

/// CPUs online on this machine (machine-wide, as `/proc/loadavg` is).
fn online_cpus() -> Option<u64> {
    static CPUS: OnceLock<Option<u64>> = OnceLock::new();
    *CPUS.get_or_init(|| {
        // SAFETY: sysconf only reads a configuration value; it has no memory preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        u64::try_from(n).ok().filter(|&n| n > 0)
    })
}

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
    let spin = spin_budget(spec.spin);
    if !spin.is_zero() {
        let spin_end = Instant::now() + spin;
        let mut i = 0u32;
        loop {
            for _ in 0..SPINS_PER_ATTEMPT {
                std::hint::spin_loop();
            }
            if let Some(v) = attempt()? {
                spin_outcome(true);
                return Ok(Some(v));
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(ATTEMPTS_PER_CLOCK)
                && (Instant::now() >= spin_end || spec.deadline.expired())
            {
                break;
            }
        }
        spin_outcome(false);
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

    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }

    #[test]
    fn a_spin_that_never_succeeds_backs_off() {
        // A fresh thread: the spin state is per thread.
        std::thread::spawn(|| {
            let word = AtomicU32::new(0);
            let waiters = AtomicU32::new(0);
            let pair = WaitPair {
                word: &word,
                waiters: &waiters,
            };
            let waits = 40u32;
            let spin = Duration::from_millis(1);
            let cpu0 = thread_cpu();
            for _ in 0..waits {
                let spec = WaitSpec {
                    deadline: Deadline::after(Some(Duration::from_millis(3))),
                    spin,
                };
                let r: Option<()> = block_on(&pair, spec, || Ok(None), no_check).unwrap();
                assert!(r.is_none());
            }
            let cpu = thread_cpu() - cpu0;
            // A fixed spin burns waits x 1 ms = 40 ms; backing off spins 1 + 0.5 + 0.25 +
            // 0.125 ms and then a 0.125 ms probe every 8 waits (about 2.5 ms).
            assert!(
                cpu < spin * waits / 4,
                "{cpu:?} of CPU for {waits} waits that spins never ended"
            );
            assert_eq!(spin_budget(spin), Duration::ZERO, "spinning is off");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_spin_that_succeeds_gets_its_budget_back() {
        std::thread::spawn(|| {
            let spin = Duration::from_micros(20);
            for _ in 0..SPIN_OFF_LEVEL + 2 {
                spin_outcome(false);
            }
            assert_eq!(thread_budget(spin), Duration::ZERO);
            // Off: one wait in SPIN_PROBE_EVERY probes with the shortest spin; a probe that
            // succeeds and the spins after it bring the full spin back.
            let mut budgets = vec![];
            for _ in 0..SPIN_PROBE_EVERY as u32 + SPIN_OFF_LEVEL as u32 + 2 {
                let b = thread_budget(spin);
                budgets.push(b);
                if !b.is_zero() {
                    spin_outcome(true);
                }
            }
            let probes = budgets.iter().filter(|b| !b.is_zero()).count();
            assert!(probes > SPIN_OFF_LEVEL as usize, "{budgets:?}");
            assert_eq!(budgets.last(), Some(&spin), "{budgets:?}");
            assert_eq!(SPIN.with(Cell::get).level, 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn no_spin_while_more_threads_run_than_cpus() {
        let cpus = online_cpus().expect("online CPUs") as usize;
        let stop = Arc::new(AtomicU32::new(0));
        let busy: Vec<_> = (0..cpus + 2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while stop.load(Ordering::Relaxed) == 0 {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let t0 = Instant::now();
        let mut seen = false;
        while t0.elapsed() < Duration::from_secs(2) && !seen {
            seen = crowded() && spin_budget(Duration::from_micros(20)).is_zero();
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(1, Ordering::Relaxed);
        for b in busy {
            b.join().unwrap();
        }
        assert!(
            seen,
            "{} busy threads on {cpus} CPUs never counted as crowded",
            cpus + 2
        );
    }

    #[test]
    fn loadavg_running_field() {
        assert_eq!(
            parse_loadavg_running(b"0.52 0.58 0.59 3/1234 5678\n"),
            Some(3)
        );
        assert_eq!(parse_loadavg_running(b"12.00 1 1 17/90 1"), Some(17));
        assert_eq!(parse_loadavg_running(b"0.5 0.5"), None);
        assert_eq!(parse_loadavg_running(b"a b c x/y z"), None);
        assert_eq!(parse_loadavg_running(b"\xff\xfe"), None);
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
