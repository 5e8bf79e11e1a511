//! Process identity and liveness: a pid plus its start time, so a recycled pid is not
//! mistaken for the process that used it before, plus the pid namespace the pid belongs to,
//! so a pid from another container is never judged against this one's processes.
//!
//! Liveness is a tri-state ([`Liveness`]): a process counts as dead only on positive
//! evidence of death (`kill(pid, 0)` answers `ESRCH`, its `/proc` entry shows another start
//! time or a zombie). An error of the asking process (out of file descriptors, out of
//! memory, no permission, `/proc` missing or mounted for another namespace) or a pid from
//! another pid namespace gives [`Liveness::Unknown`], which every caller treats as alive:
//! where in doubt, wait, never reap.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Once;

/// Who a process is: pid and the kernel's start time (clock ticks since boot; 0 when it
/// could not be read, which makes the process impossible to declare dead by start time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ident {
    pub pid: u32,
    pub start: u64,
}

impl Ident {
    /// A compact token for lock ownership (pid in the low half, start time in the high half).
    pub fn token(self) -> u64 {
        (self.start << 32) | u64::from(self.pid)
    }
    /// The pid and start-time bits of a token.
    pub fn from_token(t: u64) -> (u32, u32) {
        (t as u32, (t >> 32) as u32)
    }
}

/// What the calling process can tell about another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// It runs (same pid, same start time, not a zombie).
    Alive,
    /// Positive evidence that it is gone: no such pid, another start time, or a zombie.
    Dead,
    /// It cannot be judged from here (another pid namespace, or an error of the caller such
    /// as `EMFILE`): treat it as alive.
    Unknown,
}

impl Liveness {
    /// Only positive evidence of death counts.
    pub fn is_dead(self) -> bool {
        self == Liveness::Dead
    }
}

/// A pid namespace not recorded or not readable (see [`pid_ns`]).
pub const NS_UNKNOWN: u64 = 0;

static FORK_GEN: AtomicU64 = AtomicU64::new(1);
static CACHE_GEN: AtomicU64 = AtomicU64::new(0);
static CACHE_PID: AtomicU32 = AtomicU32::new(0);
static CACHE_START: AtomicU64 = AtomicU64::new(0);
static NS_GEN: AtomicU64 = AtomicU64::new(0);
static NS_ID: AtomicU64 = AtomicU64::new(NS_UNKNOWN);
/// 1 when this process's `/proc` numbers its own pid namespace, 2 when not (see `ns_info`).
static PROC_OK: AtomicU32 = AtomicU32::new(0);
static ATFORK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GEN.fetch_add(1, Ordering::SeqCst);
}

/// A number that changes in a child process after every fork.
pub fn fork_generation() -> u64 {
    ATFORK.call_once(|| {
        // SAFETY: registering a plain extern "C" function without captured state.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
    FORK_GEN.load(Ordering::SeqCst)
}

/// Field number (1-based, see proc(5)) of the state letter in `/proc/<pid>/stat`.
const STAT_STATE: usize = 3;
/// Field number of the process start time (clock ticks since boot).
const STAT_STARTTIME: usize = 22;

/// Parse the state letter and start time out of the text of `/proc/<pid>/stat`.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    // The command name (field 2) is in parentheses and may itself contain spaces and ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(STAT_STARTTIME - STAT_STATE - 1)?.parse().ok()?;
    Some((state, start))
}

/// The text of `/proc/<what>/stat`, or the errno that stopped reading it.
fn read_stat(what: &str) -> std::result::Result<Option<(char, u64)>, i32> {
    match std::fs::read_to_string(format!("/proc/{what}/stat")) {
        Ok(text) => Ok(parse_stat(&text)),
        Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// The identity of the calling process (cached; refreshed after fork). Its start time is
/// read from `/proc/self/stat`; if that fails (e.g. out of file descriptors) the start is
/// reported as 0 and read again on the next call.
pub fn current() -> Ident {
    let gen = fork_generation();
    if CACHE_GEN.load(Ordering::Acquire) == gen {
        return Ident {
            pid: CACHE_PID.load(Ordering::Relaxed),
            start: CACHE_START.load(Ordering::Relaxed),
        };
    }
    let pid = std::process::id();
    let start = match read_stat("self") {
        Ok(Some((_, s))) => s,
        _ => return Ident { pid, start: 0 },
    };
    CACHE_PID.store(pid, Ordering::Relaxed);
    CACHE_START.store(start, Ordering::Relaxed);
    CACHE_GEN.store(gen, Ordering::Release);
    Ident { pid, start }
}

/// The pid namespace of the calling process: the device and inode of `/proc/self/ns/pid`
/// folded into one non-zero number (cached; refreshed after fork, since a child of
/// `unshare(CLONE_NEWPID)` lives in a new namespace). [`NS_UNKNOWN`] if it cannot be read
/// (no `/proc`); read with `stat`, so it needs no file descriptor.
pub fn pid_ns() -> u64 {
    ns_info().0
}

/// [`pid_ns`], and whether `/proc` numbers processes as that namespace does. Cached only
/// once both were read without error.
fn ns_info() -> (u64, bool) {
    let gen = fork_generation();
    if NS_GEN.load(Ordering::Acquire) == gen {
        return (
            NS_ID.load(Ordering::Relaxed),
            PROC_OK.load(Ordering::Relaxed) == 1,
        );
    }
    let Ok(st) = rustix::fs::stat("/proc/self/ns/pid") else {
        return (NS_UNKNOWN, false);
    };
    #[allow(clippy::unnecessary_cast)] // dev_t and ino_t are not u64 on every target
    let id = fold_ns(st.st_dev as u64, st.st_ino as u64);
    // `/proc/self` names this process as the namespace `/proc` was mounted for numbers it:
    // only if that is our own pid can `/proc/<pid>` be read for pids of our namespace.
    let Ok(link) = std::fs::read_link("/proc/self") else {
        return (id, false);
    };
    let proc_ok = link.as_os_str() == std::process::id().to_string().as_str();
    NS_ID.store(id, Ordering::Relaxed);
    PROC_OK.store(if proc_ok { 1 } else { 2 }, Ordering::Relaxed);
    NS_GEN.store(gen, Ordering::Release);
    (id, proc_ok)
}

/// One number for a namespace's (device, inode), never [`NS_UNKNOWN`].
fn fold_ns(dev: u64, ino: u64) -> u64 {
    (ino ^ dev.rotate_left(32)).max(1)
}

/// `kill(pid, 0)`: `Some(false)` only when the kernel says there is no such process (ESRCH),
/// `Some(true)` when one exists (even if not ours to signal), `None` on any other error.
fn pid_exists(pid: u32) -> Option<bool> {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return Some(false); // beyond any pid the kernel hands out
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    if unsafe { libc::kill(p, 0) } == 0 {
        return Some(true);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ESRCH) => Some(false),
        Some(libc::EPERM) => Some(true),
        _ => None,
    }
}

/// What this process can tell about the process `pid` that started at `start` in pid
/// namespace `ns` (as recorded by [`pid_ns`]). `start_mask` lets a caller compare only some
/// bits of the start time (lock tokens carry the low 32); a start of 0 means "not known"
/// and is never compared. Dead only on positive evidence; see [`Liveness`].
pub fn liveness(pid: u32, start: u64, start_mask: u64, ns: u64) -> Liveness {
    if pid == 0 {
        return Liveness::Dead; // no process has pid 0: a slot left half-written
    }
    let (mine, proc_ok) = ns_info();
    if ns != mine {
        // Another container's pid means nothing here; and if either side could not read
        // its namespace, they cannot be compared.
        return Liveness::Unknown;
    }
    match pid_exists(pid) {
        Some(false) => return Liveness::Dead,
        None => return Liveness::Unknown,
        Some(true) => {}
    }
    if !proc_ok {
        return Liveness::Unknown; // the pid exists, but its start time cannot be checked
    }
    match read_stat(&pid.to_string()) {
        Ok(Some((state, s))) => {
            let zombie = state == 'Z' || state == 'X';
            let recycled = (start & start_mask) != 0 && (s & start_mask) != (start & start_mask);
            if zombie || recycled {
                Liveness::Dead
            } else {
                Liveness::Alive
            }
        }
        // It went away between the two looks: ask the kernel again.
        Err(libc::ENOENT) | Err(libc::ESRCH) if pid_exists(pid) == Some(false) => Liveness::Dead,
        // EMFILE, ENFILE, ENOMEM, EACCES, unparsable text...: our problem, not its death.
        _ => Liveness::Unknown,
    }
}

/// Whether the process may still run: anything but positive evidence of death (see
/// [`liveness`]).
pub fn alive(pid: u32, start: u64, start_mask: u64, ns: u64) -> bool {
    !liveness(pid, start, start_mask, ns).is_dead()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_parens_and_spaces() {
        let line = "1234 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19 20";
        assert_eq!(parse_stat(line), Some(('S', 777)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn self_is_alive_and_bogus_is_not() {
        let me = current();
        let ns = pid_ns();
        assert!(me.start > 0);
        assert_ne!(ns, NS_UNKNOWN);
        assert_eq!(liveness(me.pid, me.start, u64::MAX, ns), Liveness::Alive);
        assert_eq!(liveness(me.pid, me.start + 1, u64::MAX, ns), Liveness::Dead);
        assert_eq!(liveness(0, 0, u64::MAX, ns), Liveness::Dead);
        assert_eq!(liveness(u32::MAX - 1, 0, u64::MAX, ns), Liveness::Dead);
        assert!(!alive(u32::MAX - 1, 0, u64::MAX, ns));
    }

    #[test]
    fn another_namespace_or_an_unknown_one_is_never_judged() {
        let me = current();
        let ns = pid_ns();
        for other in [ns ^ 1, NS_UNKNOWN] {
            assert_eq!(
                liveness(u32::MAX - 1, 0, u64::MAX, other),
                Liveness::Unknown
            );
            assert_eq!(
                liveness(me.pid, me.start + 1, u64::MAX, other),
                Liveness::Unknown
            );
        }
    }

    #[test]
    fn an_unknown_start_time_is_not_evidence_of_death() {
        let me = current();
        assert_eq!(liveness(me.pid, 0, u64::MAX, pid_ns()), Liveness::Alive);
    }
}
