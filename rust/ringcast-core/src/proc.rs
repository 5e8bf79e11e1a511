//! Process identity and liveness: a pid plus its start time, so a recycled pid is not
//! mistaken for the process that used it before.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Once;

/// Who a process is: pid and the kernel's start time (clock ticks since boot).
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

static FORK_GEN: AtomicU64 = AtomicU64::new(1);
static CACHE_GEN: AtomicU64 = AtomicU64::new(0);
static CACHE_PID: AtomicU32 = AtomicU32::new(0);
static CACHE_START: AtomicU64 = AtomicU64::new(0);
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

fn read_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The identity of the calling process (cached; refreshed after fork).
pub fn current() -> Ident {
    let gen = fork_generation();
    if CACHE_GEN.load(Ordering::Acquire) == gen {
        return Ident {
            pid: CACHE_PID.load(Ordering::Relaxed),
            start: CACHE_START.load(Ordering::Relaxed),
        };
    }
    let pid = std::process::id();
    let start = read_stat(pid).map(|(_, s)| s).unwrap_or(0);
    CACHE_PID.store(pid, Ordering::Relaxed);
    CACHE_START.store(start, Ordering::Relaxed);
    CACHE_GEN.store(gen, Ordering::Release);
    Ident { pid, start }
}

/// Whether the process `pid` that started at `start` still runs (a zombie counts as dead).
/// `start_mask` lets a caller compare only the low 32 bits (lock tokens carry only those).
pub fn alive(pid: u32, start: u64, start_mask: u64) -> bool {
    if pid == 0 {
        return false;
    }
    match read_stat(pid) {
        None => {
            // No /proc entry: gone, unless /proc is unreadable (then ask the kernel).
            if std::path::Path::new("/proc/self/stat").exists() {
                false
            } else {
                // SAFETY: kill with signal 0 only checks for existence.
                unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
            }
        }
        Some((state, s)) => {
            state != 'Z' && state != 'X' && (s & start_mask) == (start & start_mask)
        }
    }
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
        assert!(me.start > 0);
        assert!(alive(me.pid, me.start, u64::MAX));
        assert!(!alive(me.pid, me.start + 1, u64::MAX));
        assert!(!alive(0, 0, u64::MAX));
        assert!(!alive(u32::MAX - 1, 0, u64::MAX));
    }
}
