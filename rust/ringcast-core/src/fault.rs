//! Fault injection for the core's own tests: named points on the write path where a test
//! writer process stops itself (`SIGSTOP`), so that the test can kill it exactly there or
//! keep it holding the writer lock while alive.
//!
//! The points are compiled in only with the `fault-injection` feature, which the core's own
//! tests enable (a dev-dependency of the crate on itself); the Python extension never
//! builds it. Without the feature [`point`] is an empty inline function and [`arm`] does not
//! exist.

/// A place in the write path, in the order a send passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Point {
    /// The oldest-intact mark was moved past what the record will overwrite (during the
    /// send, or during `reserve` for a reservation); nothing of the record is written yet.
    OldestMoved = 1,
    /// The record's header, sender and type are written, its body not yet (send only: a
    /// reservation writes its header at commit, after its body).
    HeadWritten = 2,
    /// The whole record is written; nothing is published.
    RecordWritten = 3,
    /// The commit point is stored: the record's end in `LogWords::publishing`.
    Committed = 4,
    /// The next sequence number is stored in `LogWords::write_seq`.
    SeqStored = 5,
    /// The tail is stored: readers see the record.
    Published = 6,
    /// The writer lock is released (waiters not yet woken).
    Unlocked = 7,
}

impl Point {
    /// Every point, in order.
    pub const ALL: [Point; 7] = [
        Point::OldestMoved,
        Point::HeadWritten,
        Point::RecordWritten,
        Point::Committed,
        Point::SeqStored,
        Point::Published,
        Point::Unlocked,
    ];
}

#[cfg(feature = "fault-injection")]
static ARMED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Stop this process (`SIGSTOP`) the next time it passes `p` (once); `None` disarms.
#[cfg(feature = "fault-injection")]
pub fn arm(p: Option<Point>) {
    ARMED.store(
        p.map_or(0, |p| p as u32),
        std::sync::atomic::Ordering::SeqCst,
    );
}

/// A fault-injection point: stops the process here if a test armed `p`.
#[inline(always)]
pub(crate) fn point(p: Point) {
    #[cfg(feature = "fault-injection")]
    {
        use std::sync::atomic::Ordering;
        if ARMED.load(Ordering::Relaxed) == p as u32
            && ARMED
                .compare_exchange(p as u32, 0, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        {
            // SAFETY: raising a signal on the calling process has no memory-safety effect.
            unsafe { libc::raise(libc::SIGSTOP) };
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = p;
}
