//! The segment header page: its constants, the [`Header`] struct every process maps, the
//! [`Geometry`] validated once at attach, and the raw header read with `pread` before
//! anything is mapped (parsed at the offsets of [`Header`]'s fields, never at literals).
//!
//! ```text
//! 0     static fields, written once by the creator and covered by the checksum
//! 128   lifecycle: state, shutdown, counters
//! 192   the kind's own words (KIND_WORDS_BYTES: the broadcast log's or the slot ring's)
//! 256   wait lines, one cache line each
//! ```

use std::mem::offset_of;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use rustix::fs::fstat;

use super::{page_size, round_up};
use crate::error::{Error, Result};
use crate::proc;
use crate::wait::WaitPair;

/// `b"RINGCAST"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"RINGCAST");
/// Layout version written in every segment.
pub const VERSION: u32 = 3;
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
/// Record alignments a broadcast log accepts (1 is the pysyncq-compatible layout).
pub const ALIGNMENTS: [u32; 3] = [1, 8, 64];

/// Segment state: being used.
pub const STATE_OPEN: u32 = 1;
/// Segment state: its last member left; it is being unlinked.
pub const STATE_CLOSED: u32 = 2;

/// Bytes of the header covered by the checksum.
pub(super) const STATIC_BYTES: usize = offset_of!(Header, checksum);
/// Bytes of the header read with `pread` to validate it (static fields and lifecycle).
pub(super) const RAW_HEADER_BYTES: usize = offset_of!(Header, kind_words);
/// Bytes of the area each segment kind defines for its own words.
pub const KIND_WORDS_BYTES: usize = 64;
/// How long attaching waits for a live creator to finish writing the header.
pub(super) const ATTACH_GRACE: Duration = Duration::from_millis(500);
/// How often attaching looks again at a header still being written.
const INIT_POLL: Duration = Duration::from_millis(2);

/// Futex word and its waiter count, on a cache line of their own.
#[repr(C, align(64))]
pub struct WaitLine {
    pub word: AtomicU32,
    pub waiters: AtomicU32,
    pub events: AtomicU64,
    pub blocked_ns: AtomicU64,
    _pad: [AtomicU64; 5],
}

impl WaitLine {
    /// The futex word and waiter count, for [`crate::wait`].
    pub fn pair(&self) -> WaitPair<'_> {
        WaitPair {
            word: &self.word,
            waiters: &self.waiters,
        }
    }
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
    /// Slot rings: the number of slots (0 for a broadcast log).
    pub n_slots: AtomicU32,
    pub creator_start: AtomicU64,
    pub created_unix_ns: AtomicU64,
    /// FNV-1a of the static fields above (with the magic in place): any damage to them is
    /// detected at attach.
    pub checksum: AtomicU64,
    /// The creator's pid namespace ([`proc::pid_ns`]): its pid is judged only from there.
    pub creator_ns: AtomicU64,
    _pad0: [AtomicU64; 4],
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
    // --- 192: the kind's own words, see [`KindWords`] ---
    kind_words: [AtomicU64; KIND_WORDS_BYTES / 8],
    // --- 256.. : wait lines ---
    pub lock_wait: WaitLine,
    pub data_wait: WaitLine,
    pub space_wait: WaitLine,
    pub member_wait: WaitLine,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_PAGE);
const _: () = assert!(STATIC_BYTES == 80 && RAW_HEADER_BYTES == 192);

/// The words a segment kind keeps in the header's kind area (the broadcast log's write
/// position and lock, the slot ring's task counters).
///
/// # Safety
///
/// The implementing type must be `#[repr(C)]`, at most [`KIND_WORDS_BYTES`] bytes, aligned
/// to at most 8, and made only of atomics, so that any bytes in shared memory are a valid
/// value of it.
pub unsafe trait KindWords {}

impl Header {
    /// The kind area, seen as kind `T`'s words. The caller's segment kind decides `T`.
    pub fn kind_words<T: KindWords>(&self) -> &T {
        const {
            assert!(std::mem::size_of::<T>() <= KIND_WORDS_BYTES);
            assert!(std::mem::align_of::<T>() <= 8);
        }
        // SAFETY: the area is KIND_WORDS_BYTES bytes, 8-aligned, inside the mapped header
        // page and borrowed with `self`; `T: KindWords` fits in it and is valid for any
        // bytes (atomics only), as its unsafe impl promises.
        unsafe { &*(self.kind_words.as_ptr() as *const T) }
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
    /// `n_slots` word, inside the checksummed static fields.
    pub n_slots: u32,
}

/// Bytes of one slot's metadata in a slot ring.
pub const SLOT_META_BYTES: u64 = 64;
/// Most slots a slot ring may have.
pub const MAX_SLOTS: u32 = 1 << 16;
/// Alignment of a slot's data (and of a slot ring's records).
pub const SLOT_ALIGN: u64 = 64;

impl Geometry {
    /// Geometry of a slot ring: `n_slots` slots of `slot_bytes` (rounded up to [`SLOT_ALIGN`]) each,
    /// after a page-aligned table of slot metadata.
    pub fn slots(n_slots: u32, slot_bytes: u64, max_members: u32) -> Result<Self> {
        if n_slots == 0 || n_slots > MAX_SLOTS {
            return Err(Error::InvalidArgument(format!(
                "a slot ring needs 1 to {MAX_SLOTS} slots, got {n_slots}"
            )));
        }
        let stride = round_up(slot_bytes.max(1), SLOT_ALIGN);
        let meta = round_up(u64::from(n_slots) * SLOT_META_BYTES, page_size());
        let data = stride
            .checked_mul(u64::from(n_slots))
            .filter(|d| *d <= MAX_RING)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{n_slots} slots of {slot_bytes} bytes exceed the maximum of {MAX_RING} bytes"
                ))
            })?;
        let mut g = Geometry::new(KIND_SLOTS, meta + data, max_members, SLOT_ALIGN as u32)?;
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
        if !ALIGNMENTS.contains(&align) {
            return Err(Error::InvalidArgument(format!(
                "record alignment must be one of {ALIGNMENTS:?}, got {align}"
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
    pub(super) fn validate(&self, file_size: u64) -> std::result::Result<(), String> {
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
        if !ALIGNMENTS.contains(&self.align) {
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
                    || !stride.is_multiple_of(SLOT_ALIGN)
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

/// The static part of a header as read with pread.
#[derive(Clone, Copy, Debug)]
pub struct RawHeader {
    pub magic: u64,
    pub geo: Geometry,
    pub version: u32,
    pub creator_pid: u32,
    pub creator_start: u64,
    /// The creator's pid namespace (0: not recorded).
    pub creator_ns: u64,
    pub created_unix_ns: u64,
    pub state: u32,
    pub checksum_ok: bool,
    /// The checksum matches once the magic is put in place (a creation that died just
    /// before writing the magic).
    pub sealed_without_magic: bool,
}

/// The u64 at byte `off` of `b` (native byte order, as the atomics store it).
pub(super) fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

/// The u32 at byte `off` of `b`.
pub(super) fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}

/// The FNV-1a hash the header checksum uses.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Parse the first [`RAW_HEADER_BYTES`] of a segment, at the offsets of [`Header`].
pub(super) fn parse_raw(b: &[u8; RAW_HEADER_BYTES]) -> RawHeader {
    let u64_of = |off| u64_at(b, off);
    let u32_of = |off| u32_at(b, off);
    let checksum = u64_of(offset_of!(Header, checksum));
    let mut sealed = [0u8; STATIC_BYTES];
    sealed.copy_from_slice(&b[..STATIC_BYTES]);
    sealed[..8].copy_from_slice(&MAGIC.to_ne_bytes());
    RawHeader {
        magic: u64_of(offset_of!(Header, magic)),
        version: u32_of(offset_of!(Header, version)),
        geo: Geometry {
            kind: u32_of(offset_of!(Header, kind)),
            total_size: u64_of(offset_of!(Header, total_size)),
            header_size: u64_of(offset_of!(Header, header_size)),
            ring_size: u64_of(offset_of!(Header, ring_size)),
            capacity: u64_of(offset_of!(Header, capacity)),
            max_members: u32_of(offset_of!(Header, max_members)),
            align: u32_of(offset_of!(Header, align)),
            n_slots: u32_of(offset_of!(Header, n_slots)),
        },
        creator_pid: u32_of(offset_of!(Header, creator_pid)),
        creator_start: u64_of(offset_of!(Header, creator_start)),
        creator_ns: u64_of(offset_of!(Header, creator_ns)),
        created_unix_ns: u64_of(offset_of!(Header, created_unix_ns)),
        state: u32_of(offset_of!(Header, state)),
        checksum_ok: fnv1a(&b[..STATIC_BYTES]) == checksum,
        sealed_without_magic: fnv1a(&sealed) == checksum,
    }
}

/// Read exactly `buf.len()` bytes at `off`.
pub(super) fn read_exact_at(fd: &OwnedFd, buf: &mut [u8], off: u64) -> std::io::Result<()> {
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

/// Read the raw header of an open object, if it is at least a header page long.
pub(super) fn read_raw(fd: &OwnedFd, size: u64) -> std::io::Result<Option<RawHeader>> {
    if size < HEADER_PAGE as u64 {
        return Ok(None);
    }
    let mut buf = [0u8; RAW_HEADER_BYTES];
    read_exact_at(fd, &mut buf, 0)?;
    Ok(Some(parse_raw(&buf)))
}

/// Read and validate the header of an open object. Waits up to `grace` for a segment that
/// is still being initialised by a live creator.
pub(super) fn read_geometry(name: &str, fd: &OwnedFd, grace: Duration) -> Result<Geometry> {
    let t0 = Instant::now();
    loop {
        let size = fstat(fd).map_err(|e| Error::os("stat", name, e))?.st_size as u64;
        let raw = read_raw(fd, size).map_err(|e| Error::os("read", name, e))?;
        let initialising = match raw {
            None => size == 0,
            // A live creator is still writing the header (it writes its pid first).
            Some(r) => {
                r.magic == 0
                    && r.creator_pid != 0
                    && proc::alive(r.creator_pid, r.creator_start, u64::MAX, r.creator_ns)
            }
        };
        if initialising && t0.elapsed() < grace {
            std::thread::sleep(INIT_POLL);
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
