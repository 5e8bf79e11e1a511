//! Surviving a segment shrunk under this process.
//!
//! A named POSIX shared-memory object can be shrunk at any time by any process that can open
//! it (`ftruncate`, by a buggy or hostile process of the same user). The pages past the new
//! end vanish from every mapping, and the next access to one raises `SIGBUS`, which kills
//! the process. Nothing can prevent the shrink: seals exist only for `memfd` objects, which
//! have no name to attach by; `MAP_POPULATE` or `mlock` do not keep truncated pages either.
//!
//! So ringcast survives it. Every mapped segment is entered in a fixed table read without
//! locks ([`register`] in `Segment::map`, [`unregister`] in `Segment`'s drop). A process-wide
//! `SIGBUS` handler, installed with the first segment, looks the faulting address up in the
//! table: inside a ringcast mapping, it maps anonymous zero pages over the whole mapping
//! (`mmap(MAP_FIXED)`, a plain system call, safe in a signal handler), marks the segment
//! damaged and returns, so the faulting access completes on zeros. Every later call on the
//! segment in this process checks the mark ([`Segment::check_intact`], one relaxed load) and
//! fails with [`Error::Corrupt`] naming the shrink; calls that wait probe the end of the
//! mapping ([`Segment::probe`]), so a waiter notices a shrink that no access of its own
//! ran into. A fault outside every ringcast mapping goes to the handler that was installed
//! before (Python's `faulthandler`, Rust's stack-overflow handler) or, if there was none,
//! gets the default action: the process dies of `SIGBUS` as it would have without ringcast.
//!
//! The same handler covers a page tmpfs cannot supply (`/dev/shm` full) in a segment that
//! was made sparse (by an older ringcast or another tool).

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};

use super::layout::fnv1a;
use super::Segment;
use crate::error::{Error, Result};

/// Most segments mapped at once whose shrink is survived; a segment mapped while every entry
/// is taken works as usual, but a shrink kills the process as it did before.
const ENTRIES: usize = 4096;

/// One mapping: `base == 0` is a free entry. `len` is written before `base` (release) and
/// read after it (acquire). `name` is a hash of the segment's name, for [`damaged_named`].
struct Entry {
    taken: AtomicBool,
    base: AtomicUsize,
    len: AtomicUsize,
    damaged: AtomicBool,
    name: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // the array initialiser, copied per entry
const FREE: Entry = Entry {
    taken: AtomicBool::new(false),
    base: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    damaged: AtomicBool::new(false),
    name: AtomicU64::new(0),
};

static TABLE: [Entry; ENTRIES] = [FREE; ENTRIES];
/// Entries below this index have been used at least once (the handler scans only those).
static USED: AtomicUsize = AtomicUsize::new(0);
/// The `SIGBUS` action in place before ringcast's, called for faults outside its mappings.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALL: Once = Once::new();

/// The entry of one mapped segment in the table (`None` when the table was full).
#[derive(Debug)]
pub(super) struct Watch(Option<usize>);

/// Enter the mapping `[base, base + len)` of segment `name` in the table (installing the
/// handler on first use).
pub(super) fn register(name: &str, base: *mut u8, len: usize) -> Watch {
    INSTALL.call_once(install);
    for (i, e) in TABLE.iter().enumerate() {
        if e.taken
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            e.damaged.store(false, Ordering::Relaxed);
            e.name.store(fnv1a(name.as_bytes()), Ordering::Relaxed);
            e.len.store(len, Ordering::Relaxed);
            e.base.store(base as usize, Ordering::Release);
            USED.fetch_max(i + 1, Ordering::AcqRel);
            return Watch(Some(i));
        }
    }
    Watch(None)
}

/// Remove the entry (before the mapping is unmapped).
pub(super) fn unregister(w: &Watch) {
    if let Some(i) = w.0 {
        let e = &TABLE[i];
        e.base.store(0, Ordering::Release);
        e.len.store(0, Ordering::Relaxed);
        e.taken.store(false, Ordering::Release);
    }
}

/// Whether the handler found this mapping shrunk under the process.
fn damaged(w: &Watch) -> bool {
    w.0.is_some_and(|i| TABLE[i].damaged.load(Ordering::Relaxed))
}

/// Whether a segment named `name` mapped in this process was found shrunk: then whatever
/// looks damaged in it is the shrink's doing ([`Error::corrupt`] says so). Error paths only.
pub(crate) fn damaged_named(name: &str) -> bool {
    let h = fnv1a(name.as_bytes());
    let used = USED.load(Ordering::Acquire).min(ENTRIES);
    TABLE[..used].iter().any(|e| {
        e.base.load(Ordering::Acquire) != 0
            && e.damaged.load(Ordering::Relaxed)
            && e.name.load(Ordering::Relaxed) == h
    })
}

impl Segment {
    /// Fail with [`Error::Corrupt`] if the segment's memory was taken away under this process
    /// (the object shrunk by another process): one relaxed load, for the hot paths.
    #[inline]
    pub fn check_intact(&self) -> Result<()> {
        if damaged(&self.watch) {
            return Err(shrunk(&self.name));
        }
        Ok(())
    }

    /// [`Segment::check_intact`] after touching the last page of the object, so a shrink is
    /// noticed even when no access of this process ran into it (for calls that wait).
    pub fn probe(&self) -> Result<()> {
        let last = (self.geo.header_size + self.geo.ring_size) as usize - 1;
        // SAFETY: `last` is inside the first mapping of `map` (header and ring); the read is
        // volatile so it is not elided. If the object no longer reaches that far, the read
        // faults and the handler maps zeros there before it completes.
        let _ = unsafe { std::ptr::read_volatile(self.base.as_ptr().add(last)) };
        self.check_intact()
    }
}

/// Why a segment whose memory was taken away is unusable.
pub(crate) const SHRUNK: &str = "its shared memory was taken away under this process: \
    another process shrank the object (ftruncate), or /dev/shm could not supply a page; this \
    handle can no longer be used (close it, and recreate the queue)";

/// The error of a segment whose memory was taken away.
fn shrunk(name: &str) -> Error {
    Error::Corrupt {
        name: name.to_owned(),
        why: SHRUNK.to_owned(),
    }
}

/// Install the process-wide handler, keeping the previous action for faults not ours.
fn install() {
    // SAFETY: sigaction with a zeroed (valid) struct to read the current action, then with
    // our handler; `on_sigbus` has the SA_SIGINFO signature.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
            return;
        }
        let _ = PREVIOUS.set(old);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

/// The `SIGBUS` handler. Async-signal-safe: atomics, `mmap`, `sigaction`, `raise`.
extern "C" fn on_sigbus(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; errno is the
    // thread's own and is restored before returning to the interrupted code.
    unsafe {
        let errno = *libc::__errno_location();
        if !info.is_null() && (*info).si_code > 0 && repair((*info).si_addr() as usize) {
            *libc::__errno_location() = errno;
            return;
        }
        chain(sig, info, ctx);
        *libc::__errno_location() = errno;
    }
}

/// If `addr` lies in a registered mapping: mark it damaged and map zeros over all of it.
fn repair(addr: usize) -> bool {
    let used = USED.load(Ordering::Acquire).min(ENTRIES);
    for e in &TABLE[..used] {
        let base = e.base.load(Ordering::Acquire);
        if base == 0 || addr < base {
            continue;
        }
        let len = e.len.load(Ordering::Relaxed);
        if addr - base >= len {
            continue;
        }
        e.damaged.store(true, Ordering::SeqCst);
        // SAFETY: `[base, base + len)` is a live ringcast mapping (entries are removed
        // before unmapping, and a segment is not dropped while it is in use); replacing it
        // with private zero pages of the same size keeps every pointer into it valid.
        let r = unsafe {
            mmap_anonymous(
                base as *mut c_void,
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
            )
        };
        return r.is_ok();
    }
    false
}

/// Hand a fault that is not ours to the previous action, or to the default one (death).
///
/// # Safety
/// Called only from the signal handler, with its arguments.
unsafe fn chain(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    if let Some(p) = PREVIOUS.get() {
        let h = p.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            if p.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous action was installed with SA_SIGINFO, so its handler
                // has this signature.
                let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, ctx);
            } else {
                // SAFETY: a plain handler, installed without SA_SIGINFO.
                let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
            return;
        }
    }
    // SAFETY: restoring the default action and re-raising are async-signal-safe; the
    // signal is blocked in the handler, so it is delivered (and kills) once it returns.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
        libc::raise(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_outside_every_mapping_is_not_ours() {
        assert!(!repair(1));
        assert!(!repair(usize::MAX));
    }

    #[test]
    fn entries_are_reused() {
        let mut x = [0u8; 64];
        let w = register("x", x.as_mut_ptr(), x.len());
        let i = w.0.expect("an entry");
        assert!(!damaged(&w));
        unregister(&w);
        assert_eq!(TABLE[i].base.load(Ordering::Relaxed), 0);
        assert!(
            !TABLE[i].taken.load(Ordering::Relaxed) || TABLE[i].len.load(Ordering::Relaxed) != 0
        );
    }
}
