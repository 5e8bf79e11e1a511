//! Named POSIX shared-memory segments with a validated header: creating, attaching and
//! mapping them. What the header holds is in [`layout`], the member table every kind shares
//! in [`members`], listing, inspecting and removing stale segments in [`mod@inspect`].
//!
//! Layout of a segment (all offsets in bytes):
//!
//! ```text
//! 0                 header page (struct Header, HEADER_PAGE bytes)
//! HEADER_PAGE       member table: max_members x MEMBER_BYTES-byte Member slots
//! header_size       ring: ring_size bytes (a multiple of the page size)
//! ```
//!
//! The ring is mapped twice, back to back, so any record of at most `ring_size` bytes is
//! contiguous in virtual memory wherever it starts. That is why the mapping is made with
//! `mmap(MAP_FIXED)` through rustix instead of memmap2, which cannot place mappings.
//!
//! Attaching reads the header with `pread` and validates every field against the real size
//! of the object before mapping anything. The geometry is then kept in the handle and never
//! read from shared memory again.

use std::ffi::c_void;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{ftruncate, Mode};
use rustix::io::Errno;
use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};
use rustix::shm;

use crate::error::{Error, Result};
use crate::proc;

pub mod access;
pub mod creation;
pub mod inspect;
pub mod layout;
pub mod members;
pub(crate) mod sigbus;
pub(crate) mod space;

pub use access::Access;
pub use creation::{is_scratch, Creation, SCRATCH_PREFIX};
pub use inspect::{
    gc, inspect, is_abandoned_creation, list_names, remove_if_stale, SegmentInfo, STALE_AGE,
};
pub use layout::{
    Geometry, Header, KindWords, RawHeader, WaitLine, ALIGNMENTS, HEADER_PAGE, KIND_BROADCAST,
    KIND_SLOTS, KIND_WORDS_BYTES, MAGIC, MAX_MEMBERS, MAX_RING, MAX_SLOTS, MEMBER_BYTES,
    SLOT_ALIGN, SLOT_META_BYTES, STATE_CLOSED, STATE_OPEN, VERSION,
};
pub use members::{
    Member, MemberId, FLAG_LOSSY, KIND_GROUP, KIND_GROUP_MEMBER, KIND_HANDLE, KIND_READER,
    MEMBER_NAME_BYTES, M_ACTIVE, M_CLAIMING, M_FREE, M_FREEING, M_ORPHAN, NO_PIN,
};

use layout::{fnv1a, read_geometry, ATTACH_GRACE, STATIC_BYTES};

/// Longest segment name (without the leading slash).
pub const MAX_NAME_LEN: usize = 240;

/// The system page size.
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// Round `x` up to a multiple of `m` (m > 0).
pub fn round_up(x: u64, m: u64) -> u64 {
    x.div_ceil(m) * m
}

/// Check a segment name and return it with the leading slash POSIX wants.
pub fn shm_path(name: &str) -> Result<String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    if bare.is_empty() || bare.len() > MAX_NAME_LEN || bare.contains('/') || bare.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "invalid segment name {name:?}: it must be 1 to {MAX_NAME_LEN} characters without \
             '/' or NUL"
        )));
    }
    Ok(format!("/{bare}"))
}

/// A mapped segment.
pub struct Segment {
    name: String,
    base: NonNull<u8>,
    map_len: usize,
    geo: Geometry,
    /// The descriptor the segment was mapped from, kept open for its shared lock: while it
    /// is held nothing removes the segment as stale (see [`creation`]).
    lock: OwnedFd,
    watch: sigbus::Watch,
}

// SAFETY: the mapping is shared memory accessed only through atomics or raw copies whose
// bounds are checked; the pointer is valid until Drop, whichever thread drops it.
unsafe impl Send for Segment {}
// SAFETY: as for Send: shared access goes through atomics (other processes write the same
// memory concurrently anyway), so sharing the handle between threads adds no hazard.
unsafe impl Sync for Segment {}

fn errno_to(op: &'static str, name: &str, e: Errno) -> Error {
    match e {
        Errno::NOENT => Error::NotFound(name.to_owned()),
        Errno::EXIST => Error::Exists(name.to_owned()),
        e => Error::os(op, name, e),
    }
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Segment {
    /// Create a new segment. Fails with [`Error::Exists`] if the name is taken.
    /// On any failure nothing is left in `/dev/shm`. The name appears only once the segment
    /// is whole, so attachers never see it half-made.
    pub fn create(name: &str, geo: Geometry, mode: u32) -> Result<Segment> {
        Segment::create_with(name, geo, mode, |_| {})
    }

    /// [`Segment::create`], with `init` run on the new segment before its header is sealed
    /// and its name appears: the place to set a kind's own words (e.g. a slot ring's task
    /// limit), so that no attacher ever sees them unset.
    pub fn create_with(
        name: &str,
        geo: Geometry,
        mode: u32,
        init: impl FnOnce(&Segment),
    ) -> Result<Segment> {
        let path = shm_path(name)?;
        let bare = path[1..].to_owned();
        // Made under a scratch name, published under `path` once whole (see [`creation`]).
        let (draft, fd) = creation::Draft::open(&path, &bare, mode, |scratch| {
            shm::open(
                scratch,
                shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
                Mode::from_bits_truncate(mode),
            )
            .map_err(|e| errno_to("create", &bare, e))
        })?;
        let made = (|| {
            access::set_mode(&bare, &fd, mode)?;
            ftruncate(&fd, geo.total_size).map_err(|e| Error::os("resize", &bare, e))?;
            space::reserve(&fd, &bare, geo.total_size)?;
            let seg = Segment::map(&bare, fd, geo)?;
            let h = seg.header();
            let me = proc::current();
            h.creator_pid.store(me.pid, Ordering::Relaxed);
            h.creator_start.store(me.start, Ordering::Relaxed);
            h.creator_ns.store(proc::pid_ns(), Ordering::Relaxed);
            h.version.store(VERSION, Ordering::Relaxed);
            h.kind.store(geo.kind, Ordering::Relaxed);
            h.total_size.store(geo.total_size, Ordering::Relaxed);
            h.header_size.store(geo.header_size, Ordering::Relaxed);
            h.ring_size.store(geo.ring_size, Ordering::Relaxed);
            h.capacity.store(geo.capacity, Ordering::Relaxed);
            h.max_members.store(geo.max_members, Ordering::Relaxed);
            h.align.store(geo.align, Ordering::Relaxed);
            h.n_slots.store(geo.n_slots, Ordering::Relaxed);
            h.created_unix_ns.store(now_unix_ns(), Ordering::Relaxed);
            h.state.store(STATE_OPEN, Ordering::Relaxed);
            init(&seg);
            let mut statics = [0u8; STATIC_BYTES];
            // SAFETY: the first STATIC_BYTES of the mapping are the header's static fields.
            unsafe {
                std::ptr::copy_nonoverlapping(seg.base.as_ptr(), statics.as_mut_ptr(), STATIC_BYTES)
            };
            statics[..8].copy_from_slice(&MAGIC.to_ne_bytes());
            h.checksum.store(fnv1a(&statics), Ordering::Relaxed);
            h.magic.store(MAGIC, Ordering::Release);
            Ok(seg)
        })()?;
        draft.publish(&made.lock, &path, &bare)?;
        Ok(made)
    }

    /// Attach to an existing segment of the given kind, validating its header. The object
    /// must pass `policy` first (owner, write permissions, no symbolic link: [`access`]).
    pub fn attach(name: &str, kind: u32, policy: &Access) -> Result<Segment> {
        let path = shm_path(name)?;
        let bare = path[1..].to_owned();
        let fd = creation::open_shared(&path, &bare, || access::open_checked(&bare, policy))?;
        let geo = read_geometry(&bare, &fd, ATTACH_GRACE)?;
        if geo.kind != kind {
            return Err(Error::corrupt(
                &bare,
                format!(
                    "it is a segment of kind {} where kind {kind} was expected",
                    geo.kind
                ),
            ));
        }
        Segment::map(&bare, fd, geo)
    }

    fn map(name: &str, fd: OwnedFd, geo: Geometry) -> Result<Segment> {
        let hs = geo.header_size as usize;
        let rs = geo.ring_size as usize;
        let map_len = hs + 2 * rs;
        // SAFETY: a fresh PROT_NONE reservation, then two MAP_FIXED mappings inside it; on
        // failure the whole reservation is unmapped.
        unsafe {
            let base = mmap_anonymous(
                std::ptr::null_mut(),
                map_len,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
            .map_err(|e| Error::os("reserve address space for", name, e))?;
            let rw = ProtFlags::READ | ProtFlags::WRITE;
            let first = mmap(
                base,
                hs + rs,
                rw,
                MapFlags::SHARED | MapFlags::FIXED,
                fd.as_fd(),
                0,
            );
            let second = first.and_then(|_| {
                mmap(
                    (base as *mut u8).add(hs + rs) as *mut c_void,
                    rs,
                    rw,
                    MapFlags::SHARED | MapFlags::FIXED,
                    fd.as_fd(),
                    geo.header_size,
                )
            });
            if let Err(e) = second {
                let _ = munmap(base, map_len);
                return Err(Error::os("map", name, e));
            }
            Ok(Segment {
                name: name.to_owned(),
                base: NonNull::new_unchecked(base as *mut u8),
                map_len,
                geo,
                lock: fd,
                watch: sigbus::register(name, base as *mut u8, map_len),
            })
        }
    }

    /// The segment's name (without the leading slash).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The validated geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The header page.
    pub fn header(&self) -> &Header {
        // SAFETY: the header page is mapped for the segment's lifetime, all fields atomic.
        unsafe { &*(self.base.as_ptr() as *const Header) }
    }

    /// Member slot `i`; `i` must be below `max_members` (checked).
    pub fn member(&self, i: u32) -> Option<&Member> {
        if i >= self.geo.max_members {
            return None;
        }
        // SAFETY: in bounds of the member table, which lies inside the header area.
        unsafe {
            let p = self
                .base
                .as_ptr()
                .add(HEADER_PAGE + MEMBER_BYTES * i as usize);
            Some(&*(p as *const Member))
        }
    }

    /// All member slots.
    pub fn members(&self) -> impl Iterator<Item = (u32, &Member)> {
        (0..self.geo.max_members).filter_map(move |i| self.member(i).map(|m| (i, m)))
    }

    /// Pointer to ring byte `pos mod ring_size`; the `2 * ring_size` bytes after the ring
    /// start are mapped, so `len <= ring_size` bytes from here are contiguous.
    pub fn ring_at(&self, pos: u64) -> *mut u8 {
        let off = (pos % self.geo.ring_size) as usize;
        // SAFETY: off < ring_size, inside the mirrored ring mapping.
        unsafe { self.base.as_ptr().add(self.geo.header_size as usize + off) }
    }

    /// Remove the name from the system (the mapping stays valid).
    pub fn unlink(&self) -> Result<()> {
        unlink(&self.name)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        sigbus::unregister(&self.watch);
        // SAFETY: exactly the region mapped in `map`.
        unsafe {
            let _ = munmap(self.base.as_ptr() as *mut c_void, self.map_len);
        }
    }
}

/// Remove a segment name.
pub fn unlink(name: &str) -> Result<()> {
    let path = shm_path(name)?;
    shm::unlink(path.as_str()).map_err(|e| errno_to("unlink", &path[1..], e))
}
