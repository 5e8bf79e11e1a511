//! Making a segment appear under its name only once it is whole, and knowing, from locks the
//! kernel drops when a process dies, who still uses a segment.
//!
//! Creating: the creator makes the object without a name (`O_TMPFILE` in `/dev/shm`), sizes
//! it and writes the header, takes a shared lock on it, and then links the finished object
//! under its name with `link(2)` (which fails if the name is taken). So a name only ever
//! refers to a finished segment: an attacher never sees a half-written header, and a creator
//! killed half-way leaves nothing at all (the kernel frees a nameless object with its last
//! descriptor). Where `O_TMPFILE` is refused, the object is made under a scratch name of the
//! creator's own ([`SCRATCH_PREFIX`]) instead, locked exclusively while it is made: a creator
//! killed half-way then leaves its scratch object unlocked, which [`scratch_state`] recognises
//! at once as abandoned (no grace period, no pid to trust) and `gc` removes; the name itself
//! was never taken.
//!
//! Using: every process that has a segment mapped keeps the descriptor it mapped it from,
//! with a shared lock on it ([`open_shared`]). Removing a segment because it looks stale
//! ([`claim_for_removal`]) takes an exclusive lock first, which fails while anyone alive has it
//! mapped, and holds it from the stale check to the unlink. An attacher takes its shared lock
//! and only then checks that the name still refers to the object it opened (device and inode),
//! so it can never end up on a copy that was unlinked and replaced: it opens the name again.
//!
//! The locks are open-file-description locks (`F_OFD_SETLK`): they belong to the descriptor
//! (and its duplicates, across fork), not to the process, so closing another descriptor of the
//! same object (as `inspect` does) never drops them, and turning the creator's exclusive lock
//! into a shared one is atomic. They are taken without blocking; the only exclusive holders of
//! a named segment are removers, which hold it for the few microseconds of a check and an
//! unlink, so an attacher that meets one polls briefly.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{fstat, FileType, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;
use rustix::shm;

use super::access::SHM_DIR;
use super::errno_to;
use crate::error::{Error, Result};

/// Names of creations in progress (or abandoned) start with this.
pub const SCRATCH_PREFIX: &str = ".rcnew-";
/// How long attaching waits for a remover's exclusive lock to go.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// How often attaching tries that lock again.
const LOCK_POLL: Duration = Duration::from_micros(200);
/// How often a creator starts over when its scratch object was removed under it.
const SCRATCH_TRIES: u32 = 8;

/// What a scratch object is, judged by its creator's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Creation {
    /// Not a scratch object: a segment under its own name.
    Done,
    /// A live creator is still making it.
    InProgress,
    /// Its creator died (or gave up) before it was linked under its name.
    Abandoned,
}

/// Whether `name` (without the leading slash) is a creation's scratch name.
pub fn is_scratch(name: &str) -> bool {
    name.strip_prefix('/')
        .unwrap_or(name)
        .starts_with(SCRATCH_PREFIX)
}

#[derive(Clone, Copy)]
enum Lock {
    Shared,
    Exclusive,
}

fn flock_of(kind: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as _;
    fl.l_whence = libc::SEEK_SET as _;
    // l_start = 0 and l_len = 0: the whole object, however large it grows.
    fl
}

/// Take (or convert to) `kind` on the open file description of `fd`, without waiting.
/// `Ok(false)`: another description holds a conflicting lock.
fn try_lock(fd: &OwnedFd, kind: Lock) -> rustix::io::Result<bool> {
    let fl = flock_of(match kind {
        Lock::Shared => libc::F_RDLCK,
        Lock::Exclusive => libc::F_WRLCK,
    });
    // SAFETY: fcntl(F_OFD_SETLK) reads the flock struct we pass and touches nothing else;
    // the descriptor is open for the borrow's duration.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == 0 {
        return Ok(true);
    }
    match Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) {
        Errno::AGAIN | Errno::ACCESS => Ok(false),
        e => Err(e),
    }
}

/// Whether some open file description holds a lock on the object that conflicts with an
/// exclusive one (without taking anything; works on a read-only descriptor).
pub(super) fn locked_by_someone(fd: &OwnedFd) -> rustix::io::Result<bool> {
    let mut fl = flock_of(libc::F_WRLCK);
    // SAFETY: fcntl(F_OFD_GETLK) fills in the flock struct we pass, nothing else.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        return Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    Ok(fl.l_type != libc::F_UNLCK as _)
}

fn same_object(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Whether `path` (with its leading slash) still names the object open as `fd`.
fn still_named(fd: &OwnedFd, path: &str) -> rustix::io::Result<bool> {
    let mine = fstat(fd)?;
    // lstat: a symbolic link put in the name's place is never the object itself.
    match rustix::fs::lstat(format!("{SHM_DIR}{path}")) {
        Ok(now) => Ok(same_object(&mine, &now)),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Open a named segment for attaching, holding a shared lock on it (kept as long as the
/// descriptor is: the segment keeps it for its lifetime). `open` opens `path`. Waits briefly
/// for a remover that is checking the segment, and opens the name again if it was replaced
/// or removed meanwhile (so the error is then [`Error::NotFound`] from `open`).
pub(super) fn open_shared(
    path: &str,
    name: &str,
    open: impl Fn() -> Result<OwnedFd>,
) -> Result<OwnedFd> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let fd = open()?;
        if try_lock(&fd, Lock::Shared).map_err(|e| Error::os("lock", name, e))?
            && still_named(&fd, path).map_err(|e| Error::os("stat", name, e))?
        {
            return Ok(fd);
        }
        if Instant::now() >= deadline {
            return Err(Error::os("lock", name, Errno::AGAIN));
        }
        std::thread::sleep(LOCK_POLL);
    }
}

/// The outcome of [`claim_for_removal`].
pub(super) enum Claim {
    /// Nothing alive has it mapped or is creating it; the exclusive lock is held until the
    /// descriptor is dropped, so it can be checked and unlinked with nobody attaching.
    Held(OwnedFd),
    /// A live process has it mapped, is creating it, or cannot be judged: leave it.
    InUse,
    /// The name does not exist (any more).
    Gone,
}

/// Take `path` (with its leading slash) for removal: an exclusive lock, granted only while no
/// live process holds the segment's shared lock (has it mapped) or a creator's lock, and only
/// if the name still refers to the object locked.
pub(super) fn claim_for_removal(path: &str) -> Claim {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(format!("{SHM_DIR}{path}"), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Claim::Gone,
        Err(_) => return Claim::InUse,
    };
    match fstat(&fd) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
        _ => return Claim::InUse,
    }
    match (try_lock(&fd, Lock::Exclusive), still_named(&fd, path)) {
        (Ok(true), Ok(true)) => Claim::Held(fd),
        _ => Claim::InUse,
    }
}

/// Whether `name` (a scratch name) is a creation in progress or abandoned.
pub(super) fn scratch_state(fd: &OwnedFd) -> Creation {
    match locked_by_someone(fd) {
        Ok(false) => Creation::Abandoned,
        // Locked, or unknown: never judge a creation dead without positive evidence.
        _ => Creation::InProgress,
    }
}

/// A creation in progress: a nameless object, or a scratch object locked exclusively by this
/// process, which is unlinked if the creation fails (dropped before [`Draft::publish`]).
pub(super) struct Draft {
    /// The scratch name, or `None` for a nameless (`O_TMPFILE`) object.
    scratch: Option<String>,
    published: bool,
}

static SCRATCH_SEQ: AtomicU32 = AtomicU32::new(0);

fn scratch_path() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "/{SCRATCH_PREFIX}{:x}-{:x}-{nanos:x}",
        std::process::id(),
        SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

impl Draft {
    /// Start creating the segment `path` (with its leading slash): fail with
    /// [`Error::Exists`] if the name is taken, else open a new nameless object with `mode`,
    /// or, where that is refused, a scratch object with `open(scratch_path)` (which must
    /// create it exclusively), locked exclusively.
    pub(super) fn open(
        path: &str,
        name: &str,
        mode: u32,
        open: impl Fn(&str) -> Result<OwnedFd>,
    ) -> Result<(Draft, OwnedFd)> {
        match rustix::fs::stat(format!("{SHM_DIR}{path}")) {
            Ok(_) => return Err(Error::Exists(name.to_owned())),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(Error::os("stat", name, e)),
        }
        if NAMELESS.load(Ordering::Relaxed) {
            match open_nameless(mode) {
                Ok(fd) => {
                    let draft = Draft {
                        scratch: None,
                        published: false,
                    };
                    return Ok((draft, fd));
                }
                // Not supported here (old kernel, not a tmpfs): use a scratch name.
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {
                    NAMELESS.store(false, Ordering::Relaxed)
                }
                Err(e) => return Err(Error::os("create", name, e)),
            }
        }
        Draft::open_scratch(name, open)
    }

    /// The scratch-name fallback of [`Draft::open`].
    fn open_scratch(
        name: &str,
        open: impl Fn(&str) -> Result<OwnedFd>,
    ) -> Result<(Draft, OwnedFd)> {
        for _ in 0..SCRATCH_TRIES {
            let scratch = scratch_path();
            let fd = match open(&scratch) {
                Err(Error::Exists(_)) => continue,
                r => r?,
            };
            // A `gc` that met the scratch object before it was locked may have taken it for
            // abandoned and removed it; then start over under a new scratch name.
            let mine = try_lock(&fd, Lock::Exclusive).map_err(|e| Error::os("lock", name, e))?
                && still_named(&fd, &scratch).map_err(|e| Error::os("stat", name, e))?;
            if mine {
                let draft = Draft {
                    scratch: Some(scratch),
                    published: false,
                };
                return Ok((draft, fd));
            }
        }
        Err(Error::os("create", name, Errno::AGAIN))
    }

    /// The finished segment (open as `fd`, the descriptor the draft was opened with) appears
    /// under `path`; the creator keeps a shared lock on it like every attacher. Fails with
    /// [`Error::Exists`] if another process took the name meanwhile.
    pub(super) fn publish(mut self, fd: &OwnedFd, path: &str, name: &str) -> Result<()> {
        // Atomic for OFD locks: no remover can slip in between.
        if !try_lock(fd, Lock::Shared).map_err(|e| Error::os("lock", name, e))? {
            return Err(Error::os("lock", name, Errno::AGAIN));
        }
        let target = format!("{SHM_DIR}{path}");
        let linked = match &self.scratch {
            // A nameless object is linked through its /proc entry (linking the descriptor
            // itself with AT_EMPTY_PATH needs a capability).
            None => rustix::fs::linkat(
                CWD,
                format!("/proc/self/fd/{}", fd.as_raw_fd()),
                CWD,
                target,
                rustix::fs::AtFlags::SYMLINK_FOLLOW,
            ),
            Some(scratch) => rustix::fs::linkat(
                CWD,
                format!("{SHM_DIR}{scratch}"),
                CWD,
                target,
                rustix::fs::AtFlags::empty(),
            ),
        };
        linked.map_err(|e| errno_to("create", name, e))?;
        self.published = true;
        if let Some(scratch) = &self.scratch {
            let _ = shm::unlink(scratch.as_str());
        }
        Ok(())
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        if let (false, Some(scratch)) = (self.published, &self.scratch) {
            // Ours alone: removers need the exclusive lock, which this process holds.
            let _ = shm::unlink(scratch.as_str());
        }
    }
}

/// Whether nameless objects are tried (cleared for good the first time they are refused).
static NAMELESS: AtomicBool = AtomicBool::new(true);

/// Open a new nameless object in `/dev/shm` with `mode` (less the umask, as `shm_open`).
fn open_nameless(mode: u32) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        SHM_DIR,
        rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        Mode::from_bits_truncate(mode),
    )
}

/// Make creations use scratch names, as where nameless objects are refused (for tests of
/// that path).
#[doc(hidden)]
pub fn use_scratch_names_for_tests() {
    NAMELESS.store(false, Ordering::Relaxed);
}
