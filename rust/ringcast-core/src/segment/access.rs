//! Who may attach a segment by name, and opening segment objects without being tricked.
//!
//! `/dev/shm` is one directory shared by every user of the machine (and by every container
//! that mounts the same volume). A name is not proof of who made the object behind it, so
//! before an attach trusts an object it checks, on the open descriptor (no window between
//! the check and the use):
//!
//! - the name is not a symbolic link: objects are opened with `O_NOFOLLOW`, so a link
//!   `/dev/shm/x -> /etc/shadow` is refused before its target is opened;
//! - it is a regular file (not a FIFO, a directory, a device);
//! - its owner is this process's effective user, root, or a user the caller allowed
//!   ([`Access::allow_user`]): another user's object may be a squatter's, waiting to read
//!   this queue's messages or to forge some;
//! - neither its group nor other users may write to it, unless the caller accepted those
//!   bits ([`Access::for_mode`], a queue opened with `mode=0o660` or `0o666`).
//!
//! Failures are [`Error::Permission`]. Creating applies the requested mode exactly
//! ([`set_mode`], the umask would otherwise narrow a shared mode). Listing, inspecting and
//! collecting garbage open objects through [`open_readonly`] (no symlink, regular files
//! only, never blocking on a FIFO), and `gc` removes only objects the caller owns
//! ([`owned_by_caller`]). What this does and does not protect is in docs/security.md.

use std::os::fd::OwnedFd;

use rustix::fs::{fchmod, fstat, lstat, open, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Where shared-memory objects live (what `shm_open` uses on Linux).
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// The group and other write bits.
const SHARED_WRITE: u32 = 0o022;

/// What an attach accepts: the owners besides the caller and root, and the group/other
/// write bits. The default is private: only the caller's (or root's) objects that nobody
/// else may write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    shared_write: u32,
    allow_users: Vec<u32>,
}

impl Access {
    /// Only objects of this user (or root) without group or other write permission.
    pub fn private() -> Access {
        Access::default()
    }

    /// Accept the group/other write bits that `mode` grants (`0o660` accepts a
    /// group-writable object, `0o666` one every user may write). `mode` is checked as for
    /// creation: at most `0o777`, and the owner may read and write.
    pub fn for_mode(mode: u32) -> Result<Access> {
        check_mode(mode)?;
        Ok(Access {
            shared_write: mode & SHARED_WRITE,
            allow_users: Vec::new(),
        })
    }

    /// Also accept objects owned by `uid`.
    pub fn allow_user(mut self, uid: u32) -> Access {
        if !self.allow_users.contains(&uid) {
            self.allow_users.push(uid);
        }
        self
    }

    /// The group/other write bits accepted.
    pub fn shared_write(&self) -> u32 {
        self.shared_write
    }

    /// The users accepted as owners besides the caller and root.
    pub fn allowed_users(&self) -> &[u32] {
        &self.allow_users
    }

    /// Check an open object against this policy.
    pub fn check(&self, name: &str, fd: &OwnedFd) -> Result<()> {
        let st = fstat(fd).map_err(|e| Error::os("stat", name, e))?;
        self.check_stat(name, &st)
    }

    fn check_stat(&self, name: &str, st: &Stat) -> Result<()> {
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft != FileType::RegularFile {
            return Err(not_regular(name, ft));
        }
        let me = euid();
        let owner = st.st_uid;
        if owner != me && owner != 0 && !self.allow_users.contains(&owner) {
            return Err(Error::permission(
                name,
                format!(
                    "it is owned by uid {owner}, not by this process's user (uid {me}); another \
                     user may have created it to read or forge its messages. If that user is \
                     trusted, accept it explicitly (allow_users=[{owner}])"
                ),
            ));
        }
        let extra = st.st_mode & SHARED_WRITE & !self.shared_write;
        if extra != 0 {
            let who = match (extra & 0o020 != 0, extra & 0o002 != 0) {
                (true, true) => "its group and every other user",
                (true, false) => "its group",
                _ => "every other user",
            };
            let perm = st.st_mode & 0o777;
            return Err(Error::permission(
                name,
                format!(
                    "its mode {perm:#o} lets {who} write to it; open it with mode={perm:#o} \
                     to accept a shared segment"
                ),
            ));
        }
        Ok(())
    }
}

/// Check a mode given for a segment: permission bits only, the owner may read and write.
pub fn check_mode(mode: u32) -> Result<()> {
    if mode & !0o777 != 0 || mode & 0o600 != 0o600 {
        return Err(Error::InvalidArgument(format!(
            "mode {mode:#o} is not a segment mode: it must be at most 0o777 and let the owner \
             read and write (0o600)"
        )));
    }
    Ok(())
}

/// The effective user id of this process.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn path_of(name: &str) -> String {
    format!("{SHM_DIR}/{name}")
}

fn not_regular(name: &str, ft: FileType) -> Error {
    let what = match ft {
        FileType::Symlink => "a symbolic link (refused: attaching never follows links)",
        FileType::Directory => "a directory",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        _ => "not a regular file",
    };
    Error::permission(name, format!("it is {what}"))
}

/// Map an error of opening `name` (already checked for validity) without following links.
fn open_error(op: &'static str, name: &str, e: Errno) -> Error {
    match e {
        Errno::NOENT => Error::NotFound(name.to_owned()),
        // O_NOFOLLOW on a link gives ELOOP; say what it is.
        Errno::LOOP => match lstat(path_of(name)) {
            Ok(st) => not_regular(name, FileType::from_raw_mode(st.st_mode)),
            Err(_) => not_regular(name, FileType::Symlink),
        },
        Errno::ACCESS | Errno::PERM => {
            let detail = match lstat(path_of(name)) {
                Ok(st) => format!(
                    " (owner uid {}, mode {:#o}; this process runs as uid {})",
                    st.st_uid,
                    st.st_mode & 0o777,
                    euid()
                ),
                Err(_) => String::new(),
            };
            Error::permission(name, format!("this user may not open it{detail}"))
        }
        // A FIFO or socket opened non-blocking, a directory opened for writing.
        Errno::NXIO | Errno::ISDIR => match lstat(path_of(name)) {
            Ok(st) => not_regular(name, FileType::from_raw_mode(st.st_mode)),
            Err(_) => Error::os(op, name, e),
        },
        e => Error::os(op, name, e),
    }
}

fn open_object(name: &str, flags: OFlags) -> Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    open(path_of(name), flags, Mode::empty()).map_err(|e| open_error("open", name, e))
}

/// Open the segment object `name` (without its leading slash) for reading and writing, and
/// check it against `access`: the one way attaching opens an object.
pub fn open_checked(name: &str, access: &Access) -> Result<OwnedFd> {
    let fd = open_object(name, OFlags::RDWR)?;
    access.check(name, &fd)?;
    Ok(fd)
}

/// Open `name` read-only for looking at it (`ls`, `inspect`, `gc`): no symbolic link, only
/// a regular file, never blocking (a FIFO is refused, not waited on). Any owner.
pub fn open_readonly(name: &str) -> Result<OwnedFd> {
    let fd = open_object(name, OFlags::RDONLY)?;
    let st = fstat(&fd).map_err(|e| Error::os("stat", name, e))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(not_regular(name, ft));
    }
    Ok(fd)
}

/// Give a newly created object exactly `mode` (`shm_open` applies the umask, which would
/// turn a shared `0o660` into `0o640`, a mode its group cannot attach with).
pub fn set_mode(name: &str, fd: &OwnedFd, mode: u32) -> Result<()> {
    check_mode(mode)?;
    fchmod(fd, Mode::from_raw_mode(mode)).map_err(|e| Error::os("chmod", name, e))
}

/// Whether the object `name` is a regular file owned by this process's effective user
/// (what `gc` may remove). [`Error::NotFound`] if it is gone.
pub fn owned_by_caller(name: &str) -> Result<bool> {
    let st = lstat(path_of(name)).map_err(|e| open_error("stat", name, e))?;
    Ok(FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_uid == euid())
}

/// The owner of the object `name` (not following links).
pub fn owner_of(name: &str) -> Result<u32> {
    let st = lstat(path_of(name)).map_err(|e| open_error("stat", name, e))?;
    Ok(st.st_uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_with(uid: u32, mode: u32) -> Stat {
        // SAFETY: Stat is a plain C struct; all zeroes is a valid value.
        let mut st: Stat = unsafe { std::mem::zeroed() };
        st.st_uid = uid;
        st.st_mode = libc::S_IFREG | mode;
        st
    }

    #[test]
    fn private_accepts_own_and_root_objects_only() {
        let me = euid();
        let p = Access::private();
        assert!(p.check_stat("x", &stat_with(me, 0o600)).is_ok());
        assert!(p.check_stat("x", &stat_with(0, 0o600)).is_ok());
        let other = if me == 4242 { 4243 } else { 4242 };
        let e = p.check_stat("x", &stat_with(other, 0o600)).unwrap_err();
        assert!(matches!(e, Error::Permission { .. }), "{e}");
        assert!(e.to_string().contains("allow_users=[4242"), "{e}");
        assert!(p
            .clone()
            .allow_user(other)
            .check_stat("x", &stat_with(other, 0o600))
            .is_ok());
    }

    #[test]
    fn write_bits_need_a_matching_mode() {
        let me = euid();
        let p = Access::private();
        for mode in [0o620, 0o602, 0o666] {
            let e = p.check_stat("x", &stat_with(me, mode)).unwrap_err();
            assert!(e.to_string().contains(&format!("mode={mode:#o}")), "{e}");
        }
        // Read bits for others are the owner's choice, not a way in.
        assert!(p.check_stat("x", &stat_with(me, 0o644)).is_ok());
        let g = Access::for_mode(0o660).unwrap();
        assert!(g.check_stat("x", &stat_with(me, 0o660)).is_ok());
        assert!(g.check_stat("x", &stat_with(me, 0o666)).is_err());
        let all = Access::for_mode(0o666).unwrap();
        assert!(all.check_stat("x", &stat_with(me, 0o666)).is_ok());
    }

    #[test]
    fn modes_are_checked() {
        for bad in [0o1600, 0o400, 0o200, 0o4777, 0o066] {
            assert!(
                matches!(Access::for_mode(bad), Err(Error::InvalidArgument(_))),
                "{bad:#o}"
            );
        }
        assert!(Access::for_mode(0o600).is_ok());
    }

    #[test]
    fn non_regular_objects_are_refused() {
        let mut st = stat_with(euid(), 0o600);
        st.st_mode = libc::S_IFIFO | 0o600;
        let e = Access::private().check_stat("x", &st).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
    }
}
