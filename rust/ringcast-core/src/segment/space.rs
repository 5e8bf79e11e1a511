//! Room in `/dev/shm` for a new segment.
//!
//! `ftruncate` alone makes a sparse object: tmpfs supplies a page only when it is first
//! touched, and a page it cannot supply (the filesystem is full, or smaller than the
//! segment: Docker's and Kubernetes' default `/dev/shm` is 64 MiB) is a `SIGBUS` that kills
//! the process in the middle of a send. So [`reserve`] allocates every byte of a new segment
//! at creation (`fallocate`, what `posix_fallocate` does on Linux), and a lack of room is an
//! [`Error::NoSpace`] there, naming the size asked, the space free and the fix.
//!
//! The memory is then committed when the segment is created instead of page by page as the
//! ring first fills (a 64 MiB queue holds 64 MiB of `/dev/shm` at once).

use std::os::fd::OwnedFd;

use rustix::fs::{fallocate, fstatvfs, FallocateFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// How many times an allocation interrupted by a signal is started again before giving up.
const EINTR_RETRIES: u32 = 100;

/// Size and free space of the filesystem holding `fd`, in bytes: `(total, free)`; a total
/// of 0 means the filesystem has no size limit (tmpfs mounted with `size=0`) or is unknown.
pub(crate) fn room(fd: &OwnedFd) -> (u64, u64) {
    match fstatvfs(fd) {
        Ok(v) => (
            v.f_blocks.saturating_mul(v.f_frsize),
            v.f_bavail.saturating_mul(v.f_frsize),
        ),
        Err(_) => (0, 0),
    }
}

/// Allocate all `size` bytes of the new object behind `fd` (named `name`), or fail with
/// [`Error::NoSpace`]: at once when `size` exceeds the whole filesystem, or when the
/// allocation finds no room. Where the filesystem cannot preallocate (`EOPNOTSUPP`: not a
/// tmpfs), the object stays sparse as before.
pub(crate) fn reserve(fd: &OwnedFd, name: &str, size: u64) -> Result<()> {
    let (total, free) = room(fd);
    if total != 0 && size > total {
        return Err(Error::NoSpace {
            name: name.to_owned(),
            asked: size,
            free,
            total,
        });
    }
    let mut tries = 0;
    loop {
        match fallocate(fd, FallocateFlags::empty(), 0, size) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) if tries < EINTR_RETRIES => tries += 1,
            Err(Errno::NOSPC | Errno::NOMEM | Errno::FBIG) => {
                let (total, free) = room(fd);
                return Err(Error::NoSpace {
                    name: name.to_owned(),
                    asked: size,
                    free,
                    total,
                });
            }
            Err(Errno::OPNOTSUPP | Errno::NOSYS) => return Ok(()),
            Err(e) => return Err(Error::os("reserve shared memory for", name, e)),
        }
    }
}

/// `n` bytes in the unit a person reads best (B, KiB, MiB, GiB, TiB).
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The text of [`Error::NoSpace`].
pub(crate) fn no_space_message(name: &str, asked: u64, free: u64, total: u64) -> String {
    let what = format!(
        "cannot create segment '{name}': it needs {} of shared memory",
        human(asked)
    );
    let fix = "give the container a larger /dev/shm (docker run --shm-size=..., a Kubernetes \
               emptyDir volume with medium: Memory), or use a smaller capacity";
    if total != 0 && asked > total {
        format!(
            "{what} but /dev/shm holds only {} in all; {fix}",
            human(total)
        )
    } else if total != 0 {
        format!(
            "{what} but /dev/shm has only {} free (of {}); remove unused segments \
             ('ringcast gc' removes stale ones), {fix}",
            human(free),
            human(total)
        )
    } else {
        format!(
            "{what} but the system could not supply it ({} free in /dev/shm); {fix}",
            human(free)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(64 << 20), "64.0 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }

    #[test]
    fn messages_name_the_size_the_room_and_the_fix() {
        let never = no_space_message("q", 128 << 20, 60 << 20, 64 << 20);
        assert!(never.contains("128.0 MiB") && never.contains("only 64.0 MiB in all"));
        assert!(never.contains("--shm-size") && never.contains("smaller capacity"));
        let full = no_space_message("q", 32 << 20, 10 << 20, 64 << 20);
        assert!(full.contains("32.0 MiB") && full.contains("10.0 MiB free (of 64.0 MiB)"));
        assert!(full.contains("--shm-size") && full.contains("ringcast gc"));
    }
}
