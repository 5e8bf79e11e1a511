//! The slot ring: `n` fixed-size slots filled by workers and leased by consumers.
//!
//! A slot goes `free -> filling (worker w, task t) -> ready (task t) -> leased -> free`.
//! Workers claim a free slot *before* they take the next task number, so every task that
//! has been handed out already owns a slot: a consumer waiting for tasks in order can never
//! deadlock with workers waiting for slots. Task numbers come from one shared counter; with
//! a task limit the ring is finite (the consumer sees the end once it has taken every task),
//! without one it is cyclic (the caller maps task numbers onto its data).
//!
//! A worker that fails writes an error record (any bytes, e.g. a pickled traceback) into its
//! slot and publishes it with the error flag; the consumer gets it like a block. A worker
//! that dies while it fills a slot, or while tasks remain and no worker is left, makes the
//! consumer's wait fail with [`Error::WorkerDied`] instead of hanging. Workers stop when the
//! ring is stopped or when the ring's creator dies.
//!
//! Layout of the ring area: a page-aligned table of 64-byte [`SlotMeta`] records, then the
//! slots, each `stride` bytes (a multiple of 64).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::proc;
use crate::queue::MemberId;
use crate::segment::{
    self, Geometry, Header, Member, Segment, KIND_SLOTS, M_ACTIVE, M_CLAIMING, M_FREE,
    STATE_CLOSED, STATE_OPEN,
};
use crate::wait::{block_on, WaitPair, WaitSpec};

/// Member kind: a worker filling slots.
pub const KIND_WORKER: u32 = 5;
/// Member kind: a consumer taking blocks.
pub const KIND_CONSUMER: u32 = 6;

/// Slot states.
pub const SLOT_FREE: u32 = 0;
pub const SLOT_FILLING: u32 = 1;
pub const SLOT_READY: u32 = 2;
pub const SLOT_LEASED: u32 = 3;

/// [`SlotMeta::flags`] bit: the slot holds an error record, not data.
pub const SLOT_ERROR: u32 = 1;
/// [`SlotMeta::flags`] bit: the consumer released the block but views of it are alive, so
/// the slot stays leased until they are gone.
pub const SLOT_RETAINED: u32 = 2;

/// Metadata of one slot.
#[repr(C, align(64))]
pub struct SlotMeta {
    pub state: AtomicU32,
    /// Member slot of the worker filling it (or of the consumer leasing it).
    pub owner: AtomicU32,
    pub flags: AtomicU32,
    _pad0: AtomicU32,
    pub task: AtomicU64,
    /// Bytes of data (or of the error record) in the slot.
    pub len: AtomicU64,
    _pad: [AtomicU64; 4],
}

const _: () = assert!(std::mem::size_of::<SlotMeta>() as u64 == segment::SLOT_META_BYTES);

/// A block taken by a consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    pub slot: u32,
    pub task: u64,
    pub len: u64,
    pub error: bool,
}

/// Options of a new slot ring.
#[derive(Clone, Copy, Debug)]
pub struct SlotOptions {
    pub n_slots: u32,
    pub slot_bytes: u64,
    /// Number of tasks (`None`: cyclic, unlimited).
    pub tasks: Option<u64>,
    pub max_members: u32,
    pub mode: u32,
}

/// A slot ring mapped in this process.
pub struct SlotRing {
    seg: Segment,
}

fn pair(line: &segment::WaitLine) -> WaitPair<'_> {
    WaitPair {
        word: &line.word,
        waiters: &line.waiters,
    }
}

impl SlotRing {
    /// Create a slot ring (a stale one of the same name is replaced).
    pub fn create(name: &str, o: SlotOptions) -> Result<Arc<SlotRing>> {
        let geo = Geometry::slots(o.n_slots, o.slot_bytes, o.max_members)?;
        let seg = match Segment::create(name, geo, o.mode) {
            Err(Error::Exists(n)) => {
                if !crate::queue::remove_if_stale(name) {
                    return Err(Error::Exists(n));
                }
                Segment::create(name, geo, o.mode)?
            }
            r => r?,
        };
        let ring = SlotRing { seg };
        let h = ring.header();
        // The task limit and the counters live in words a broadcast log uses otherwise.
        h.head_hint
            .store(o.tasks.unwrap_or(u64::MAX), Ordering::Release);
        Ok(Arc::new(ring))
    }

    /// Attach to an existing slot ring.
    pub fn attach(name: &str) -> Result<Arc<SlotRing>> {
        Ok(Arc::new(SlotRing {
            seg: Segment::attach(name, KIND_SLOTS)?,
        }))
    }

    /// The segment name.
    pub fn name(&self) -> &str {
        self.seg.name()
    }
    fn header(&self) -> &Header {
        self.seg.header()
    }
    /// The number of slots.
    pub fn n_slots(&self) -> u32 {
        self.seg.geometry().n_slots
    }
    /// Usable bytes of one slot.
    pub fn slot_bytes(&self) -> u64 {
        self.seg.geometry().slot_layout().1
    }
    /// The task limit (`None`: cyclic).
    pub fn tasks(&self) -> Option<u64> {
        let t = self.header().head_hint.load(Ordering::Acquire);
        (t != u64::MAX).then_some(t)
    }
    fn next_task(&self) -> &AtomicU64 {
        &self.header().write_seq
    }
    fn taken(&self) -> &AtomicU64 {
        &self.header().tail
    }
    /// Tasks handed to workers so far (may exceed the limit by the number of workers).
    pub fn tasks_started(&self) -> u64 {
        self.next_task().load(Ordering::Acquire)
    }
    /// Blocks taken by consumers so far.
    pub fn blocks_taken(&self) -> u64 {
        self.taken().load(Ordering::Acquire)
    }

    fn meta(&self, slot: u32) -> Result<&SlotMeta> {
        if slot >= self.n_slots() {
            return Err(Error::InvalidArgument(format!(
                "slot {slot} out of range (the ring has {})",
                self.n_slots()
            )));
        }
        let p = self.seg.ring_at(u64::from(slot) * segment::SLOT_META_BYTES);
        // SAFETY: the metadata table lies at the start of the ring area, inside the mapping;
        // every field is atomic.
        Ok(unsafe { &*(p as *const SlotMeta) })
    }

    /// Start of slot `slot`'s data (`slot_bytes()` bytes).
    pub fn slot_ptr(&self, slot: u32) -> Result<*mut u8> {
        self.meta(slot)?;
        let (meta, stride) = self.seg.geometry().slot_layout();
        Ok(self.seg.ring_at(meta + u64::from(slot) * stride))
    }

    // ------------------------------------------------------------------ members

    /// Register this process as a worker or consumer (for liveness checks).
    pub fn join(&self, kind: u32, name: &[u8]) -> Result<MemberId> {
        let me = proc::current();
        if self.header().state.load(Ordering::Acquire) != STATE_OPEN {
            return Err(Error::Removed(self.name().to_owned()));
        }
        for (slot, m) in self.seg.members() {
            if m.state
                .compare_exchange(M_FREE, M_CLAIMING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                m.pid.store(me.pid, Ordering::Relaxed);
                m.start.store(me.start, Ordering::Relaxed);
                let gen = m.gen.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                m.kind.store(kind, Ordering::Relaxed);
                m.set_name(name);
                m.received.store(0, Ordering::Relaxed);
                m.sent.store(0, Ordering::Relaxed);
                m.state.store(M_ACTIVE, Ordering::Release);
                return Ok(MemberId { slot, gen });
            }
        }
        Err(Error::NoMemberSlot {
            name: self.name().to_owned(),
            max: self.seg.geometry().max_members,
        })
    }

    /// Leave; the last member out unlinks the segment. Returns whether it did.
    pub fn leave(&self, id: MemberId) -> bool {
        if let Some(m) = self.seg.member(id.slot) {
            if m.gen.load(Ordering::Relaxed) == id.gen
                && m.pid.load(Ordering::Relaxed) == proc::current().pid
            {
                m.state.store(M_FREE, Ordering::Release);
            }
        }
        self.reap_dead();
        let live = self
            .seg
            .members()
            .filter(|(_, m)| m.state.load(Ordering::Acquire) != M_FREE)
            .count();
        let h = self.header();
        if live == 0
            && h.state
                .compare_exchange(
                    STATE_OPEN,
                    STATE_CLOSED,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return self.seg.unlink().is_ok();
        }
        false
    }

    fn alive(m: &Member) -> bool {
        proc::alive(
            m.pid.load(Ordering::Relaxed),
            m.start.load(Ordering::Relaxed),
            u64::MAX,
        )
    }

    /// Free the member slots of dead processes. Returns how many.
    pub fn reap_dead(&self) -> u32 {
        let mut n = 0;
        for (_, m) in self.seg.members() {
            let st = m.state.load(Ordering::Acquire);
            if st == M_ACTIVE
                && !Self::alive(m)
                && m.state
                    .compare_exchange(st, M_FREE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Live workers right now.
    pub fn live_workers(&self) -> u32 {
        self.seg
            .members()
            .filter(|(_, m)| {
                m.state.load(Ordering::Acquire) == M_ACTIVE
                    && m.kind.load(Ordering::Relaxed) == KIND_WORKER
                    && Self::alive(m)
            })
            .count() as u32
    }

    // ------------------------------------------------------------------ workers

    /// Stop: workers get [`Error::ShutDown`] from [`SlotRing::claim`]; consumers see the
    /// end once the blocks already published are taken.
    pub fn stop(&self) {
        let h = self.header();
        h.shutdown.store(1, Ordering::Release);
        pair(&h.space_wait).notify_always();
        pair(&h.data_wait).notify_always();
    }

    /// Whether the ring was stopped.
    pub fn stopped(&self) -> bool {
        self.header().shutdown.load(Ordering::Acquire) != 0
    }

    fn creator_alive(&self) -> bool {
        let h = self.header();
        proc::alive(
            h.creator_pid.load(Ordering::Relaxed),
            h.creator_start.load(Ordering::Relaxed),
            u64::MAX,
        )
    }

    /// For worker `id`: claim a free slot, then the next task. [`Error::ShutDown`] when the
    /// ring was stopped or its creator died.
    pub fn claim(
        &self,
        id: MemberId,
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Claim> {
        let h = self.header();
        let got = block_on(
            &pair(&h.space_wait),
            spec,
            || self.try_claim(id),
            || {
                if !self.creator_alive() {
                    return Err(Error::ShutDown(self.name().to_owned()));
                }
                on_slice()
            },
        )?;
        Ok(got.unwrap_or(Claim::TimedOut))
    }

    /// [`SlotRing::claim`] without waiting: `None` when no slot is free.
    pub fn try_claim(&self, id: MemberId) -> Result<Option<Claim>> {
        if self.stopped() {
            return Err(Error::ShutDown(self.name().to_owned()));
        }
        let limit = self.tasks();
        if limit.is_some_and(|l| self.next_task().load(Ordering::Acquire) >= l) {
            return Ok(Some(Claim::NoMoreTasks));
        }
        for slot in 0..self.n_slots() {
            let m = self.meta(slot)?;
            // Look before the compare-exchange: a failed one still takes the line exclusive.
            if m.state.load(Ordering::Relaxed) != SLOT_FREE
                || m.state
                    .compare_exchange(SLOT_FREE, SLOT_FILLING, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            m.owner.store(id.slot, Ordering::Relaxed);
            m.flags.store(0, Ordering::Relaxed);
            let t = self.next_task().fetch_add(1, Ordering::AcqRel);
            if limit.is_some_and(|l| t >= l) {
                m.state.store(SLOT_FREE, Ordering::Release);
                pair(&self.header().space_wait).notify();
                return Ok(Some(Claim::NoMoreTasks));
            }
            m.task.store(t, Ordering::Relaxed);
            return Ok(Some(Claim::Slot(slot, t)));
        }
        Ok(None)
    }

    /// Publish slot `slot` (claimed by this worker) holding `len` bytes; `error` marks an
    /// error record.
    pub fn publish(&self, slot: u32, len: u64, error: bool) -> Result<()> {
        let m = self.meta(slot)?;
        if m.state.load(Ordering::Acquire) != SLOT_FILLING {
            return Err(Error::InvalidArgument(format!(
                "slot {slot} is not being filled"
            )));
        }
        if len > self.slot_bytes() {
            return Err(Error::InvalidArgument(format!(
                "{len} bytes do not fit a slot of {}",
                self.slot_bytes()
            )));
        }
        m.len.store(len, Ordering::Relaxed);
        m.flags.store(if error { 1 } else { 0 }, Ordering::Relaxed);
        m.state.store(SLOT_READY, Ordering::Release);
        pair(&self.header().data_wait).notify();
        Ok(())
    }

    // ------------------------------------------------------------------ consumers

    /// Take a ready block: the one of task `want` if given (ordered delivery), else any
    /// (lowest task first). [`TakeResult::End`] once every task has been taken (finite
    /// rings), or the ring was stopped and nothing is in flight. Fails with
    /// [`Error::WorkerDied`] when a worker died holding a slot, or work remains and no
    /// worker is alive.
    pub fn take(
        &self,
        want: Option<u64>,
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
    ) -> Result<TakeResult> {
        self.take_helping(want, spec, on_slice, &mut || Ok(false))
    }

    /// [`SlotRing::take`], where the consumer, instead of waiting while nothing is ready,
    /// may fill a slot itself: `help` is called then and returns whether it published one.
    pub fn take_helping(
        &self,
        want: Option<u64>,
        spec: WaitSpec,
        on_slice: &mut dyn FnMut() -> Result<()>,
        help: &mut dyn FnMut() -> Result<bool>,
    ) -> Result<TakeResult> {
        let h = self.header();
        let r = block_on(
            &pair(&h.data_wait),
            spec,
            || {
                if let Some(t) = self.try_take(want)? {
                    return Ok(Some(TakeResult::Block(t)));
                }
                if self.finished(want) {
                    return Ok(Some(TakeResult::End));
                }
                if help()? {
                    if let Some(t) = self.try_take(want)? {
                        return Ok(Some(TakeResult::Block(t)));
                    }
                }
                if self.all_retained() {
                    return Err(Error::Held(format!(
                        "all {} slots are held by views of earlier blocks that are still alive \
                         (views kept after their guard keep their slot): copy what you keep, \
                         or raise read_ahead",
                        self.n_slots()
                    )));
                }
                Ok(None)
            },
            || {
                self.check_workers(want)?;
                on_slice()
            },
        )?;
        Ok(r.unwrap_or(TakeResult::TimedOut))
    }

    fn try_take(&self, want: Option<u64>) -> Result<Option<Taken>> {
        let mut best: Option<(u32, u64)> = None;
        for slot in 0..self.n_slots() {
            let m = self.meta(slot)?;
            if m.state.load(Ordering::Acquire) != SLOT_READY {
                continue;
            }
            let t = m.task.load(Ordering::Relaxed);
            match want {
                Some(w) if t != w => continue,
                _ => {}
            }
            if best.is_none_or(|(_, bt)| t < bt) {
                best = Some((slot, t));
            }
        }
        let Some((slot, _)) = best else {
            return Ok(None);
        };
        let m = self.meta(slot)?;
        if m.state
            .compare_exchange(SLOT_READY, SLOT_LEASED, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Ok(None); // another consumer thread took it; the caller looks again
        }
        self.taken().fetch_add(1, Ordering::AcqRel);
        let len = m.len.load(Ordering::Relaxed).min(self.slot_bytes());
        Ok(Some(Taken {
            slot,
            task: m.task.load(Ordering::Relaxed),
            len,
            error: m.flags.load(Ordering::Relaxed) & SLOT_ERROR != 0,
        }))
    }

    /// Whether nothing more will come: every task taken, or stopped with nothing ready.
    fn finished(&self, want: Option<u64>) -> bool {
        if let Some(l) = self.tasks() {
            let done = match want {
                Some(w) => w >= l,
                None => self.taken().load(Ordering::Acquire) >= l,
            };
            if done {
                return true;
            }
        }
        self.stopped() && !self.any_in_flight()
    }

    fn any_in_flight(&self) -> bool {
        (0..self.n_slots()).any(|s| {
            self.meta(s)
                .is_ok_and(|m| matches!(m.state.load(Ordering::Acquire), SLOT_FILLING | SLOT_READY))
        })
    }

    /// Fail if a worker died holding a slot, or if work remains and no worker is alive.
    fn check_workers(&self, want: Option<u64>) -> Result<()> {
        for slot in 0..self.n_slots() {
            let m = self.meta(slot)?;
            if m.state.load(Ordering::Acquire) != SLOT_FILLING {
                continue;
            }
            let Some(w) = self.seg.member(m.owner.load(Ordering::Relaxed)) else {
                continue;
            };
            if w.kind.load(Ordering::Relaxed) == KIND_WORKER && !Self::alive(w) {
                return Err(Error::WorkerDied {
                    pid: w.pid.load(Ordering::Relaxed),
                    task: Some(m.task.load(Ordering::Relaxed)),
                });
            }
        }
        // Work that only a worker can do: tasks not handed out yet.
        let unstarted = self.tasks().is_none_or(|l| self.tasks_started() < l);
        if unstarted && !self.finished(want) && !self.stopped() && self.live_workers() == 0 {
            let dead = self
                .seg
                .members()
                .find(|(_, m)| {
                    m.state.load(Ordering::Acquire) == M_ACTIVE
                        && m.kind.load(Ordering::Relaxed) == KIND_WORKER
                })
                .map_or(0, |(_, m)| m.pid.load(Ordering::Relaxed));
            if dead != 0 || self.tasks_started() > 0 {
                return Err(Error::WorkerDied {
                    pid: dead,
                    task: None,
                });
            }
        }
        Ok(())
    }

    fn all_retained(&self) -> bool {
        (0..self.n_slots()).all(|s| {
            self.meta(s).is_ok_and(|m| {
                m.state.load(Ordering::Acquire) == SLOT_LEASED
                    && m.flags.load(Ordering::Acquire) & SLOT_RETAINED != 0
            })
        })
    }

    /// Mark a taken slot as released by the consumer but still viewed (see
    /// [`SLOT_RETAINED`]).
    pub fn retain(&self, slot: u32) -> Result<()> {
        let m = self.meta(slot)?;
        if m.state.load(Ordering::Acquire) != SLOT_LEASED {
            return Err(Error::InvalidArgument(format!("slot {slot} is not leased")));
        }
        m.flags.fetch_or(SLOT_RETAINED, Ordering::AcqRel);
        Ok(())
    }

    /// Give a taken slot back (its memory is reused from now on).
    pub fn release(&self, slot: u32) -> Result<()> {
        let m = self.meta(slot)?;
        if m.state.load(Ordering::Acquire) != SLOT_LEASED {
            return Err(Error::InvalidArgument(format!("slot {slot} is not leased")));
        }
        m.flags.store(0, Ordering::Relaxed);
        if m.state
            .compare_exchange(SLOT_LEASED, SLOT_FREE, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Err(Error::InvalidArgument(format!("slot {slot} is not leased")));
        }
        pair(&self.header().space_wait).notify();
        Ok(())
    }

    /// Live members other than `me` (dead ones are reaped first).
    pub fn others(&self, me: MemberId) -> usize {
        self.reap_dead();
        self.seg
            .members()
            .filter(|(slot, m)| *slot != me.slot && m.state.load(Ordering::Acquire) != M_FREE)
            .count()
    }

    /// Make a finished ring new again for another run of `tasks` tasks (`None`: cyclic), so
    /// its memory, already faulted in, is reused. Only member `me` may be left (workers
    /// must have left), and no slot may be filled or leased (a view of a block still
    /// alive): else [`Error::Held`] and nothing changes. The caller makes sure that none of
    /// its own threads uses the ring's previous run any more.
    pub fn recycle(&self, me: MemberId, tasks: Option<u64>) -> Result<()> {
        if self.others(me) > 0 {
            return Err(Error::Held(format!(
                "slot ring '{}' still has other members",
                self.name()
            )));
        }
        let h = self.header();
        if h.state.load(Ordering::Acquire) != STATE_OPEN {
            return Err(Error::Removed(self.name().to_owned()));
        }
        for slot in 0..self.n_slots() {
            if matches!(
                self.meta(slot)?.state.load(Ordering::Acquire),
                SLOT_LEASED | SLOT_FILLING
            ) {
                return Err(Error::Held(format!(
                    "slot {slot} of ring '{}' is still being filled or leased",
                    self.name()
                )));
            }
        }
        for slot in 0..self.n_slots() {
            let m = self.meta(slot)?;
            m.flags.store(0, Ordering::Relaxed);
            m.len.store(0, Ordering::Relaxed);
            m.task.store(0, Ordering::Relaxed);
            m.state.store(SLOT_FREE, Ordering::Release);
        }
        h.head_hint
            .store(tasks.unwrap_or(u64::MAX), Ordering::Release);
        self.next_task().store(0, Ordering::Release);
        self.taken().store(0, Ordering::Release);
        h.shutdown.store(0, Ordering::Release);
        Ok(())
    }

    /// Overwrite a member's pid (fault-injection tests: make it look dead).
    #[doc(hidden)]
    pub fn segment_member_pid(&self, slot: u32, pid: u32) {
        if let Some(m) = self.seg.member(slot) {
            m.pid.store(pid, Ordering::Relaxed);
        }
    }

    /// State of each slot (for tests and stats).
    pub fn slot_states(&self) -> Vec<u32> {
        (0..self.n_slots())
            .filter_map(|s| self.meta(s).ok())
            .map(|m| m.state.load(Ordering::Acquire))
            .collect()
    }
}

/// What [`SlotRing::claim`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A slot to fill with this task.
    Slot(u32, u64),
    /// Every task has been handed out.
    NoMoreTasks,
    /// The deadline passed with no free slot.
    TimedOut,
}

/// What [`SlotRing::take`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeResult {
    Block(Taken),
    /// Every task was taken (or the ring was stopped and drained).
    End,
    /// The deadline passed.
    TimedOut,
}
