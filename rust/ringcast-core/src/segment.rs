//! Named POSIX shared-memory segments with a validated header.
//!
//! Layout of a segment (all offsets in bytes):
//!
//! ```text
//! 0                 header page (struct Header, 4096 bytes)
//! 4096              member table: max_members x 128-byte Member slots
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
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{fstat, ftruncate, Mode};
use rustix::io::Errno;
use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};
use rustix::shm;

use crate::error::{Error, Result};
use crate::proc;

/// `b"RINGCAST"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"RINGCAST");
/// Layout version written in every segment.
pub const VERSION: u32 = 2;
/// Segment kind: broadcast log.
pub const KIND_BROADCAST: u32 = 1;
/// Segment kind: slot ring (the HDF5 layer's read-ahead buffers).
pub const KIND_SLOTS: u32 = 2;
/// Size of the header page.
pub const HEADER_PAGE: usize = 4096;
/// Size of one member slot.
pub const MEMBER_BYTES: usize = 256;
/// Most member slots a segment may have.
pub const MAX_MEMBERS: u32 = 4096;
/// Largest ring accepted (1 TiB).
pub const MAX_RING: u64 = 1 << 40;

/// Segment state: being used.
pub const STATE_OPEN: u32 = 1;
/// Segment state: its last member left; it is being unlinked.
pub const STATE_CLOSED: u32 = 2;

/// Futex word and its waiter count, on a cache line of their own.
#[repr(C, align(64))]
pub struct WaitLine {
    pub word: AtomicU32,
    pub waiters: AtomicU32,
    pub events: AtomicU64,
    pub blocked_ns: AtomicU64,
    _pad: [AtomicU64; 5],
}

/// The header page. Every field is atomic because other processes write shared memory.
#[repr(C)]
pub struct Header {
    // --- written once at creation, validated at attach, then only read from the handle ---
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub kind: AtomicU32,
    pub total_size: AtomicU64,
    pub header_size: AtomicU64,
    pub ring_size: AtomicU64,
    pub capacity: AtomicU64,
    pub max_members: AtomicU32,
    pub align: AtomicU32,
    pub creator_pid: AtomicU32,
    pub flags: AtomicU32,
    pub creator_start: AtomicU64,
    pub created_unix_ns: AtomicU64,
    /// FNV-1a of the 80 bytes above (with the magic in place): any damage to the static
    /// fields is detected at attach.
    pub checksum: AtomicU64,
    _pad0: [AtomicU64; 5],
    // --- 128: lifecycle ---
    pub state: AtomicU32,
    pub shutdown: AtomicU32,
    pub reaped: AtomicU64,
    pub lock_recoveries: AtomicU64,
    /// Messages lossy readers missed because a writer lapped them.
    pub overruns: AtomicU64,
    /// Claims of dead group members given to another member of the group.
    pub redelivered: AtomicU64,
    /// Claims lost because every member of their group died.
    pub claims_lost: AtomicU64,
    _pad1: [AtomicU64; 2],
    // --- 192: writer side ---
    pub tail: AtomicU64,
    pub write_seq: AtomicU64,
    pub head_hint: AtomicU64,
    pub lock: AtomicU64,
    /// Start of the oldest record still intact: writers advance it (before they overwrite
    /// anything) past every record they are about to reuse. Lossy readers check it.
    pub oldest: AtomicU64,
    _pad2: [AtomicU64; 3],
    // --- 256.. : wait lines ---
    pub lock_wait: WaitLine,
    pub data_wait: WaitLine,
    pub space_wait: WaitLine,
    pub member_wait: WaitLine,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_PAGE);

/// Member kinds.
pub const KIND_HANDLE: u32 = 1;
/// A reader: its cursor holds back writers (unless it is lossy).
pub const KIND_READER: u32 = 2;
/// A consumer group: not a process, the cursor its members share.
pub const KIND_GROUP: u32 = 3;
/// A member of a consumer group.
pub const KIND_GROUP_MEMBER: u32 = 4;

/// Value of [`Member::pin`] when nothing is pinned.
pub const NO_PIN: u64 = u64::MAX;

/// [`Member::flags`] bit: a lossy reader (never holds back writers).
pub const FLAG_LOSSY: u32 = 1;

/// One member slot (a queue handle, a reader, a consumer group or a group member).
#[repr(C, align(256))]
pub struct Member {
    pub state: AtomicU32,
    pub kind: AtomicU32,
    pub pid: AtomicU32,
    pub gen: AtomicU32,
    pub start: AtomicU64,
    pub cursor: AtomicU64,
    pub seq: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub waits: AtomicU64,
    pub blocked_ns: AtomicU64,
    pub name_len: AtomicU32,
    pub flags: AtomicU32,
    pub name: [AtomicU64; 5],
    /// The oldest position this member still reads from (a lease or a group claim), or
    /// [`NO_PIN`]. Writers never reuse memory at or after it.
    pub pin: AtomicU64,
    /// For a group member: the group's slot and that slot's generation.
    pub group: AtomicU32,
    pub group_gen: AtomicU32,
    /// Messages this (lossy) reader missed.
    pub missed: AtomicU64,
    /// For a group: claims of its dead members waiting to be redelivered.
    pub orphans: AtomicU64,
    /// Messages this member got as redeliveries.
    pub redelivered: AtomicU64,
    /// Leases taken by this reader.
    pub leases: AtomicU64,
    /// Messages this (lossy) reader missed since the last record it consumed: every record
    /// handed out reports them until one is consumed.
    pub missed_pending: AtomicU64,
    _pad: [AtomicU64; 10],
}

const _: () = assert!(std::mem::size_of::<Member>() == MEMBER_BYTES);

/// Member slot states.
pub const M_FREE: u32 = 0;
pub const M_CLAIMING: u32 = 1;
pub const M_ACTIVE: u32 = 2;
/// A dead group member whose claim waits for another member of its group.
pub const M_ORPHAN: u32 = 3;

/// Longest member name kept in the table (longer names are cut for display only).
pub const MEMBER_NAME_BYTES: usize = 40;

impl Member {
    /// Store a (possibly cut) display name.
    pub fn set_name(&self, name: &[u8]) {
        let n = name.len().min(MEMBER_NAME_BYTES);
        let mut buf = [0u8; MEMBER_NAME_BYTES];
        buf[..n].copy_from_slice(&name[..n]);
        for (i, w) in self.name.iter().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[i * 8..i * 8 + 8]);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        self.name_len.store(n as u32, Ordering::Release);
    }
    /// The display name (bounded by the slot size whatever shared memory says).
    pub fn name(&self) -> Vec<u8> {
        let n = (self.name_len.load(Ordering::Acquire) as usize).min(MEMBER_NAME_BYTES);
        let mut buf = Vec::with_capacity(MEMBER_NAME_BYTES);
        for w in &self.name {
            buf.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        buf.truncate(n);
        buf
    }
}

/// Geometry of a segment, validated once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub kind: u32,
    pub total_size: u64,
    pub header_size: u64,
    pub ring_size: u64,
    pub capacity: u64,
    pub max_members: u32,
    pub align: u32,
    /// Slot rings: the number of slots (0 for a broadcast log). Kept in the header's
    /// `flags` word, inside the checksummed static fields.
    pub n_slots: u32,
}

/// Bytes of one slot's metadata in a slot ring.
pub const SLOT_META_BYTES: u64 = 64;
/// Most slots a slot ring may have.
pub const MAX_SLOTS: u32 = 1 << 16;

impl Geometry {
    /// Geometry of a slot ring: `n_slots` slots of `slot_bytes` (rounded up to 64) each,
    /// after a page-aligned table of slot metadata.
    pub fn slots(n_slots: u32, slot_bytes: u64, max_members: u32) -> Result<Self> {
        if n_slots == 0 || n_slots > MAX_SLOTS {
            return Err(Error::InvalidArgument(format!(
                "a slot ring needs 1 to {MAX_SLOTS} slots, got {n_slots}"
            )));
        }
        let stride = round_up(slot_bytes.max(1), 64);
        let meta = round_up(u64::from(n_slots) * SLOT_META_BYTES, page_size());
        let data = stride
            .checked_mul(u64::from(n_slots))
            .filter(|d| *d <= MAX_RING)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{n_slots} slots of {slot_bytes} bytes exceed the maximum of {MAX_RING} bytes"
                ))
            })?;
        let mut g = Geometry::new(KIND_SLOTS, meta + data, max_members, 64)?;
        g.n_slots = n_slots;
        Ok(g)
    }

    /// For a slot ring: bytes of the metadata table and the stride of one slot.
    pub fn slot_layout(&self) -> (u64, u64) {
        let n = u64::from(self.n_slots.max(1));
        let meta = round_up(n * SLOT_META_BYTES, page_size());
        (meta, self.capacity.saturating_sub(meta) / n)
    }

    /// Compute the geometry for a new segment.
    pub fn new(kind: u32, capacity: u64, max_members: u32, align: u32) -> Result<Self> {
        if capacity > MAX_RING {
            return Err(Error::InvalidArgument(format!(
                "capacity {capacity} exceeds the maximum of {MAX_RING} bytes"
            )));
        }
        if max_members == 0 || max_members > MAX_MEMBERS {
            return Err(Error::InvalidArgument(format!(
                "max_members must be between 1 and {MAX_MEMBERS}, got {max_members}"
            )));
        }
        if !matches!(align, 1 | 8 | 64) {
            return Err(Error::InvalidArgument(format!(
                "record alignment must be 1, 8 or 64, got {align}"
            )));
        }
        let page = page_size();
        let header_size = round_up(
            (HEADER_PAGE + MEMBER_BYTES * max_members as usize) as u64,
            page,
        );
        let ring_size = round_up(capacity.max(1), page);
        Ok(Geometry {
            kind,
            total_size: header_size + ring_size,
            header_size,
            ring_size,
            capacity,
            max_members,
            align,
            n_slots: 0,
        })
    }

    /// Check a geometry read from an object of `file_size` bytes.
    fn validate(&self, file_size: u64) -> std::result::Result<(), String> {
        let page = page_size();
        if self.total_size != file_size {
            return Err(format!(
                "header says {} bytes but the object has {file_size}",
                self.total_size
            ));
        }
        if self.max_members == 0 || self.max_members > MAX_MEMBERS {
            return Err(format!("member count {} out of range", self.max_members));
        }
        let min_header = (HEADER_PAGE + MEMBER_BYTES * self.max_members as usize) as u64;
        if self.header_size < min_header || !self.header_size.is_multiple_of(page) {
            return Err(format!("header size {} invalid", self.header_size));
        }
        if self.ring_size == 0 || !self.ring_size.is_multiple_of(page) || self.ring_size > MAX_RING
        {
            return Err(format!("ring size {} invalid", self.ring_size));
        }
        if self.header_size.checked_add(self.ring_size) != Some(file_size) {
            return Err("header and ring sizes do not add up to the object size".into());
        }
        if self.capacity > self.ring_size {
            return Err(format!(
                "capacity {} larger than ring {}",
                self.capacity, self.ring_size
            ));
        }
        if !matches!(self.align, 1 | 8 | 64) {
            return Err(format!("record alignment {} invalid", self.align));
        }
        match self.kind {
            KIND_SLOTS => {
                if self.n_slots == 0 || self.n_slots > MAX_SLOTS {
                    return Err(format!("slot count {} out of range", self.n_slots));
                }
                let (meta, stride) = self.slot_layout();
                if meta > self.capacity
                    || stride == 0
                    || !stride.is_multiple_of(64)
                    || meta + stride * u64::from(self.n_slots) != self.capacity
                {
                    return Err(format!(
                        "{} slots do not fit a capacity of {} bytes",
                        self.n_slots, self.capacity
                    ));
                }
            }
            _ if self.n_slots != 0 => return Err("flags set on a broadcast segment".into()),
            _ => {}
        }
        Ok(())
    }
}

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
    if bare.is_empty() || bare.len() > 240 || bare.contains('/') || bare.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "invalid segment name {name:?}: it must be 1 to 240 characters without '/' or NUL"
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
}

// SAFETY: the mapping is shared memory accessed only through atomics or raw copies whose
// bounds are checked; the pointer is valid until Drop.
unsafe impl Send for Segment {}
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
    /// On any failure nothing is left in `/dev/shm`.
    pub fn create(name: &str, geo: Geometry, mode: u32) -> Result<Segment> {
        let path = shm_path(name)?;
        let bare = path[1..].to_owned();
        let fd = shm::open(
            path.as_str(),
            shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
            Mode::from_bits_truncate(mode),
        )
        .map_err(|e| errno_to("create", &bare, e))?;
        let made = (|| {
            ftruncate(&fd, geo.total_size).map_err(|e| Error::os("resize", &bare, e))?;
            let seg = Segment::map(&bare, &fd, geo)?;
            let h = seg.header();
            let me = proc::current();
            h.creator_pid.store(me.pid, Ordering::Relaxed);
            h.creator_start.store(me.start, Ordering::Relaxed);
            h.version.store(VERSION, Ordering::Relaxed);
            h.kind.store(geo.kind, Ordering::Relaxed);
            h.total_size.store(geo.total_size, Ordering::Relaxed);
            h.header_size.store(geo.header_size, Ordering::Relaxed);
            h.ring_size.store(geo.ring_size, Ordering::Relaxed);
            h.capacity.store(geo.capacity, Ordering::Relaxed);
            h.max_members.store(geo.max_members, Ordering::Relaxed);
            h.align.store(geo.align, Ordering::Relaxed);
            h.flags.store(geo.n_slots, Ordering::Relaxed);
            h.created_unix_ns.store(now_unix_ns(), Ordering::Relaxed);
            h.state.store(STATE_OPEN, Ordering::Relaxed);
            let mut statics = [0u8; STATIC_BYTES];
            // SAFETY: the first STATIC_BYTES of the mapping are the header's static fields.
            unsafe {
                std::ptr::copy_nonoverlapping(seg.base.as_ptr(), statics.as_mut_ptr(), STATIC_BYTES)
            };
            statics[..8].copy_from_slice(&MAGIC.to_ne_bytes());
            h.checksum.store(fnv1a(&statics), Ordering::Relaxed);
            h.magic.store(MAGIC, Ordering::Release);
            Ok(seg)
        })();
        if made.is_err() {
            let _ = shm::unlink(path.as_str());
        }
        made
    }

    /// Attach to an existing segment of the given kind, validating its header.
    pub fn attach(name: &str, kind: u32) -> Result<Segment> {
        let path = shm_path(name)?;
        let bare = path[1..].to_owned();
        let fd = shm::open(path.as_str(), shm::OFlags::RDWR, Mode::empty())
            .map_err(|e| errno_to("open", &bare, e))?;
        let geo = read_geometry(&bare, &fd, Duration::from_millis(500))?;
        if geo.kind != kind {
            return Err(Error::corrupt(
                &bare,
                format!(
                    "it is a segment of kind {} where kind {kind} was expected",
                    geo.kind
                ),
            ));
        }
        Segment::map(&bare, &fd, geo)
    }

    fn map(name: &str, fd: &OwnedFd, geo: Geometry) -> Result<Segment> {
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

fn read_exact_at(fd: &OwnedFd, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = rustix::io::pread(fd, &mut buf[done..], off + done as u64)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        done += n;
    }
    Ok(())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}

/// Bytes of the header covered by the checksum.
const STATIC_BYTES: usize = 80;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The static part of a header as read with pread.
#[derive(Clone, Copy, Debug)]
pub struct RawHeader {
    pub magic: u64,
    pub geo: Geometry,
    pub version: u32,
    pub creator_pid: u32,
    pub creator_start: u64,
    pub created_unix_ns: u64,
    pub state: u32,
    pub checksum_ok: bool,
    /// The checksum matches once the magic is put in place (a creation that died just
    /// before writing the magic).
    pub sealed_without_magic: bool,
}

fn parse_raw(b: &[u8]) -> RawHeader {
    RawHeader {
        magic: u64_at(b, 0),
        version: u32_at(b, 8),
        geo: Geometry {
            kind: u32_at(b, 12),
            total_size: u64_at(b, 16),
            header_size: u64_at(b, 24),
            ring_size: u64_at(b, 32),
            capacity: u64_at(b, 40),
            max_members: u32_at(b, 48),
            align: u32_at(b, 52),
            n_slots: u32_at(b, 60),
        },
        creator_pid: u32_at(b, 56),
        creator_start: u64_at(b, 64),
        created_unix_ns: u64_at(b, 72),
        state: u32_at(b, 128),
        checksum_ok: fnv1a(&b[..STATIC_BYTES]) == u64_at(b, STATIC_BYTES),
        sealed_without_magic: {
            let mut st = [0u8; STATIC_BYTES];
            st.copy_from_slice(&b[..STATIC_BYTES]);
            st[..8].copy_from_slice(&MAGIC.to_ne_bytes());
            fnv1a(&st) == u64_at(b, STATIC_BYTES)
        },
    }
}

/// Read and validate the header of an open object. Waits up to `grace` for a segment that
/// is still being initialised by a live creator.
fn read_geometry(name: &str, fd: &OwnedFd, grace: Duration) -> Result<Geometry> {
    let t0 = std::time::Instant::now();
    loop {
        let size = fstat(fd).map_err(|e| Error::os("stat", name, e))?.st_size as u64;
        let mut buf = [0u8; 192];
        let raw = if size >= HEADER_PAGE as u64 {
            read_exact_at(fd, &mut buf, 0).map_err(|e| Error::os("read", name, e))?;
            Some(parse_raw(&buf))
        } else {
            None
        };
        let initialising = match raw {
            None => size == 0,
            // A live creator is still writing the header (it writes its pid first).
            Some(r) => {
                r.magic == 0
                    && r.creator_pid != 0
                    && proc::alive(r.creator_pid, r.creator_start, u64::MAX)
            }
        };
        if initialising && t0.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let Some(raw) = raw else {
            return Err(Error::corrupt(
                name,
                format!("it has {size} bytes, fewer than a ringcast header ({HEADER_PAGE})"),
            ));
        };
        if raw.magic != MAGIC {
            return Err(Error::corrupt(
                name,
                if raw.magic == 0 {
                    "its header was never initialised (creator died during creation?)".to_string()
                } else {
                    "bad magic number: not a ringcast segment".to_string()
                },
            ));
        }
        if raw.version != VERSION {
            return Err(Error::corrupt(
                name,
                format!(
                    "layout version {} (this ringcast reads version {VERSION})",
                    raw.version
                ),
            ));
        }
        if !raw.checksum_ok {
            return Err(Error::corrupt(
                name,
                "header checksum mismatch: the header is damaged",
            ));
        }
        raw.geo
            .validate(size)
            .map_err(|why| Error::corrupt(name, why))?;
        return Ok(raw.geo);
    }
}

/// What `ringcast ls` shows of a segment, read without mapping it.
#[derive(Clone, Debug)]
pub struct SegmentInfo {
    pub name: String,
    pub raw: RawHeader,
    pub size: u64,
    pub members_alive: u32,
    pub members_dead: u32,
}

impl SegmentInfo {
    /// Whether nothing alive uses the segment any more (safe to remove).
    pub fn is_stale(&self) -> bool {
        if self.members_alive > 0 {
            return false;
        }
        let creator_alive = proc::alive(self.raw.creator_pid, self.raw.creator_start, u64::MAX);
        let age = now_unix_ns().saturating_sub(self.raw.created_unix_ns);
        !creator_alive || age > 5_000_000_000
    }
}

/// Inspect a segment by name without mapping it (read-only).
pub fn inspect(name: &str) -> Result<SegmentInfo> {
    let path = shm_path(name)?;
    let bare = path[1..].to_owned();
    let fd = shm::open(path.as_str(), shm::OFlags::RDONLY, Mode::empty())
        .map_err(|e| errno_to("open", &bare, e))?;
    let geo = read_geometry(&bare, &fd, Duration::ZERO)?;
    let mut head = [0u8; 192];
    read_exact_at(&fd, &mut head, 0).map_err(|e| Error::os("read", &bare, e))?;
    let raw = parse_raw(&head);
    let mut table = vec![0u8; MEMBER_BYTES * geo.max_members as usize];
    read_exact_at(&fd, &mut table, HEADER_PAGE as u64).map_err(|e| Error::os("read", &bare, e))?;
    let (mut alive, mut dead) = (0, 0);
    for slot in table.chunks_exact(MEMBER_BYTES) {
        let state = u32_at(slot, 0);
        if state == M_FREE || u32_at(slot, 4) == KIND_GROUP {
            continue;
        }
        if proc::alive(u32_at(slot, 8), u64_at(slot, 16), u64::MAX) {
            alive += 1;
        } else {
            dead += 1;
        }
    }
    Ok(SegmentInfo {
        name: bare,
        raw,
        size: geo.total_size,
        members_alive: alive,
        members_dead: dead,
    })
}

/// Whether `name` is what a creator killed mid-creation leaves behind: an empty object
/// older than a few seconds, or a header whose magic was never written and whose recorded
/// creator is dead. Anything else (including foreign objects) is not touched.
pub fn is_abandoned_creation(name: &str) -> bool {
    let Ok(path) = shm_path(name) else {
        return false;
    };
    let Ok(fd) = shm::open(path.as_str(), shm::OFlags::RDONLY, Mode::empty()) else {
        return false;
    };
    let Ok(st) = fstat(&fd) else { return false };
    let mut head = [0u8; 192];
    if (st.st_size as u64) < HEADER_PAGE as u64 || read_exact_at(&fd, &mut head, 0).is_err() {
        return false;
    }
    let raw = parse_raw(&head);
    // A creator writes every static field and the checksum (computed with the magic in
    // place) before the magic itself: only an object whose fields check out that way, and
    // whose creator is dead, is a ringcast creation that died half-way.
    raw.magic == 0
        && raw.sealed_without_magic
        && raw.creator_pid != 0
        && !proc::alive(raw.creator_pid, raw.creator_start, u64::MAX)
}

/// Names of every ringcast segment in `/dev/shm` (objects with the ringcast magic).
pub fn list_names() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
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
        if name.starts_with("sem.") {
            continue;
        }
        let mut magic = [0u8; 8];
        let ok = std::fs::File::open(ent.path())
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, 0));
        if ok.is_ok() && u64::from_ne_bytes(magic) == MAGIC {
            out.push(name);
        }
    }
    out.sort();
    out
}
