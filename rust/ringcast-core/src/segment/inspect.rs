//! Looking at segments without mapping them: `ringcast ls` (listing and inspecting),
//! recognising what a dead creator or dead members left behind, and `ringcast gc`.
//!
//! A creation's scratch object (see [`super::creation`]) is listed too: as being created
//! while its creator holds its lock, as abandoned (and stale) once it does not.
//!
//! Objects are opened through [`access::open_readonly`] (never through a symbolic link,
//! regular files only, never blocking), and only objects the caller owns are ever removed
//! ([`access::owned_by_caller`]): root too leaves other users' stale segments alone.

use std::mem::offset_of;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::fs::fstat;

use super::access::{self, SHM_DIR};
use super::creation::{self, claim_for_removal, is_scratch, scratch_state, Claim, Creation};
use super::layout::{
    parse_raw, read_exact_at, read_geometry, read_raw, u32_at, u64_at, Header, RawHeader,
    HEADER_PAGE, MAGIC, MEMBER_BYTES, RAW_HEADER_BYTES,
};
use super::members::{Member, KIND_GROUP, M_CLAIMING, M_FREE, M_FREEING};
use super::{now_unix_ns, shm_path, unlink};
use crate::error::{Error, Result};
use crate::proc;

/// How old a segment without live members must be before it counts as stale while its
/// creator still runs (a creator may not have joined yet).
pub const STALE_AGE: Duration = Duration::from_secs(5);

/// What `ringcast ls` shows of a segment, read without mapping it.
#[derive(Clone, Debug)]
pub struct SegmentInfo {
    pub name: String,
    pub raw: RawHeader,
    pub size: u64,
    /// The uid owning the object.
    pub owner: u32,
    pub members_alive: u32,
    pub members_dead: u32,
    /// Whether it is a finished segment, or a creation's scratch object still being made
    /// or abandoned by its creator.
    pub creation: Creation,
    /// Whether some live process has it mapped (holds its shared lock), or its lock could
    /// not be read.
    pub mapped: bool,
}

impl SegmentInfo {
    /// Whether nothing alive uses the segment any more (safe to remove).
    pub fn is_stale(&self) -> bool {
        match self.creation {
            Creation::Abandoned => return true,
            Creation::InProgress => return false,
            Creation::Done => {}
        }
        if self.mapped || self.members_alive > 0 {
            return false;
        }
        let creator_alive = proc::alive(
            self.raw.creator_pid,
            self.raw.creator_start,
            u64::MAX,
            self.raw.creator_ns,
        );
        let age = now_unix_ns().saturating_sub(self.raw.created_unix_ns);
        !creator_alive || u128::from(age) > STALE_AGE.as_nanos()
    }
}

/// Inspect a segment by name without mapping it (read-only).
pub fn inspect(name: &str) -> Result<SegmentInfo> {
    let path = shm_path(name)?;
    let bare = path[1..].to_owned();
    let fd = access::open_readonly(&bare)?;
    if is_scratch(&bare) {
        return inspect_scratch(bare, &fd);
    }
    let mapped = creation::locked_by_someone(&fd).unwrap_or(true);
    inspect_open(bare, &fd, mapped)
}

/// [`inspect`] of an open segment; `mapped` as [`SegmentInfo::mapped`].
fn inspect_open(bare: String, fd: &OwnedFd, mapped: bool) -> Result<SegmentInfo> {
    let owner = fstat(fd).map_err(|e| Error::os("stat", &bare, e))?.st_uid;
    let geo = read_geometry(&bare, fd, Duration::ZERO)?;
    let raw = read_raw(fd, geo.total_size)
        .map_err(|e| Error::os("read", &bare, e))?
        .ok_or_else(|| Error::corrupt(&bare, "its header went away while it was read"))?;
    let mut table = vec![0u8; MEMBER_BYTES * geo.max_members as usize];
    read_exact_at(fd, &mut table, HEADER_PAGE as u64).map_err(|e| Error::os("read", &bare, e))?;
    let (mut alive, mut dead) = (0, 0);
    for slot in table.chunks_exact(MEMBER_BYTES) {
        let state = u32_at(slot, offset_of!(Member, state));
        if state == M_FREE || u32_at(slot, offset_of!(Member, kind)) == KIND_GROUP {
            continue;
        }
        if state == M_FREEING {
            continue;
        }
        let pid = u32_at(slot, offset_of!(Member, pid));
        if state == M_CLAIMING && pid == 0 {
            alive += 1; // being claimed right now
            continue;
        }
        // Dead only on positive evidence: a member of another pid namespace (another
        // container) or one this process cannot judge counts as alive.
        let start = u64_at(slot, offset_of!(Member, start));
        let ns = u64_at(slot, offset_of!(Member, ns));
        if proc::liveness(pid, start, u64::MAX, ns).is_dead() {
            dead += 1;
        } else {
            alive += 1;
        }
    }
    Ok(SegmentInfo {
        name: bare,
        raw,
        size: geo.total_size,
        owner,
        members_alive: alive,
        members_dead: dead,
        creation: Creation::Done,
        mapped,
    })
}

/// What `ls` shows of a creation's scratch object: whatever header it has so far.
fn inspect_scratch(name: String, fd: &OwnedFd) -> Result<SegmentInfo> {
    let size = fstat(fd).map_err(|e| Error::os("stat", &name, e))?.st_size as u64;
    let raw = match read_raw(fd, size) {
        Ok(Some(raw)) => raw,
        _ => parse_raw(&[0; RAW_HEADER_BYTES]),
    };
    Ok(SegmentInfo {
        creation: scratch_state(fd),
        name,
        raw,
        size,
        owner: fstat(fd).map(|st| st.st_uid).unwrap_or(u32::MAX),
        members_alive: 0,
        members_dead: 0,
        mapped: false,
    })
}

/// Whether `name` is what a creator killed mid-creation leaves behind: a creation's scratch
/// object whose creator no longer holds its lock, or (left by older versions under the name
/// itself) a header whose magic was never written, whose other static fields check out, and
/// whose recorded creator is dead. Anything else (including foreign objects) is not touched.
pub fn is_abandoned_creation(name: &str) -> bool {
    let Ok(path) = shm_path(name) else {
        return false;
    };
    let Ok(fd) = access::open_readonly(&path[1..]) else {
        return false;
    };
    if is_scratch(name) {
        return scratch_state(&fd) == Creation::Abandoned;
    }
    let Ok(st) = fstat(&fd) else { return false };
    let Ok(Some(raw)) = read_raw(&fd, st.st_size as u64) else {
        return false;
    };
    // A creator writes every static field and the checksum (computed with the magic in
    // place) before the magic itself: only an object whose fields check out that way, and
    // whose creator is dead, is a ringcast creation that died half-way.
    raw.magic == 0
        && raw.sealed_without_magic
        && raw.creator_pid != 0
        && proc::liveness(raw.creator_pid, raw.creator_start, u64::MAX, raw.creator_ns).is_dead()
}

/// Names of every ringcast segment in `/dev/shm` (objects with the ringcast magic), and of
/// creations in progress or abandoned (scratch objects).
pub fn list_names() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(SHM_DIR) else {
        return out;
    };
    for ent in dir.flatten() {
        let Ok(ft) = ent.file_type() else { continue };
        if !ft.is_file() {
            continue;
        }
        let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with("sem.") || shm_path(&name).is_err() {
            continue;
        }
        if is_scratch(&name) {
            out.push(name);
            continue;
        }
        // Opened again without following links: the entry may have been replaced by a
        // link or a FIFO since it was listed.
        let Ok(fd) = access::open_readonly(&name) else {
            continue;
        };
        let mut magic = [0u8; 8];
        let ok = read_exact_at(&fd, &mut magic, offset_of!(Header, magic) as u64);
        if ok.is_ok() && u64::from_ne_bytes(magic) == MAGIC {
            out.push(name);
        }
    }
    out.sort();
    out
}

/// Remove `name` if it is a ringcast segment nobody alive uses (or a creation that died)
/// and the caller owns it. Returns true if it was removed (or is gone).
///
/// The check and the unlink happen under the segment's exclusive lock, which is refused while
/// any live process has the segment mapped or is creating it, and which attachers wait for:
/// no process can attach between the check and the unlink and be left on the removed copy.
pub fn remove_if_stale(name: &str) -> bool {
    let Ok(path) = shm_path(name) else {
        return false;
    };
    match access::owned_by_caller(name) {
        Ok(true) => {}
        Err(Error::NotFound(_)) => return true,
        Ok(false) | Err(_) => return false,
    }
    let held = match claim_for_removal(&path) {
        Claim::Held(fd) => fd,
        Claim::Gone => return true,
        Claim::InUse => return false,
    };
    if creation::is_scratch(name) {
        // Held exclusively: its creator no longer holds it, so the creation was abandoned.
        return unlink(name).is_ok();
    }
    // Held exclusively: nothing alive has it mapped (the lock excludes every shared one).
    match inspect_open(path[1..].to_owned(), &held, false) {
        Ok(info) if info.is_stale() => unlink(name).is_ok(),
        Ok(_) => false,
        Err(Error::Corrupt { .. }) if is_abandoned_creation(name) => unlink(name).is_ok(),
        Err(Error::NotFound(_)) => true,
        Err(_) => false,
    }
}

/// Remove every ringcast segment of the caller's user whose members are all dead (other
/// users' segments are left alone, even by root). Returns the names removed.
pub fn gc() -> Vec<String> {
    list_names()
        .into_iter()
        .filter(|n| remove_if_stale(n))
        .collect()
}
