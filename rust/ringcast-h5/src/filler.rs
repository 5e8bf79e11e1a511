//! The threads that fill a slot ring from a [`Plan`]: each claims a free slot and the next
//! task, reads the task's rows into the slot and publishes it (or publishes an error record
//! when the read fails). [`Filler::help`] lets a consumer with nothing ready to take read a
//! block itself instead of waiting.

//!
//! The filler's own errors are the ring's (core errors): a read that fails is not an error
//! of the filler, it is reported to the consumer through the slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringcast_core::slots::{Claim, SlotRing, KIND_WORKER};
use ringcast_core::wait::{no_check, Deadline, WaitSpec};
use ringcast_core::{MemberId, Result};

use crate::error::Error;
use crate::plan::{Plan, Scratch};

/// Fill claimed slot `slot` with the rows of `task` and publish it; a read that fails
/// publishes an error record instead (see [`error_record`]).
fn fill_slot(
    ring: &SlotRing,
    plan: &Plan,
    slot: u32,
    task: u64,
    scratch: &mut Scratch,
) -> Result<()> {
    let n = ring.slot_bytes() as usize;
    let p = ring.slot_ptr(slot)?;
    // SAFETY: `slot_ptr` checked `slot` and points at its `slot_bytes` bytes in the mapping,
    // which `ring` keeps alive for this borrow; the claimed slot is this thread's alone until
    // it publishes it, so no other reference to these bytes exists meanwhile.
    let dst = unsafe { std::slice::from_raw_parts_mut(p, n) };
    match plan.fill(task, dst, scratch) {
        Ok(len) => ring.publish(slot, len, false),
        Err(e) => {
            let len = error_record(&e, dst);
            ring.publish(slot, len as u64, true)
        }
    }
}

/// The Python type of a read error: what the consumer raises (`ringcast.h5.ReadError`).
const READ_ERROR_TYPE: &str = "ringcast.h5.ReadError";

/// Write the error record of a read that failed with `e` into the slot `dst`, cut to the
/// slot's size; returns its length. The record is the one `ringcast._remote` reads: `RCX1`,
/// then four fields, each a `u32` little-endian length and its bytes: the exception type's
/// qualified name, the message, the traceback (empty here) and the pickled exception (empty:
/// Rust writes none).
fn error_record(e: &Error, dst: &mut [u8]) -> usize {
    let message = e.to_string();
    let mut record = Vec::with_capacity(4 + 16 + READ_ERROR_TYPE.len() + message.len());
    record.extend_from_slice(b"RCX1");
    for field in [READ_ERROR_TYPE.as_bytes(), message.as_bytes(), b"", b""] {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&field[..len as usize]);
    }
    let len = record.len().min(dst.len());
    dst[..len].copy_from_slice(&record[..len]);
    len
}

/// A ring being filled from a plan: its reading threads, and [`Filler::help`] for a consumer
/// that would otherwise wait.
pub struct Filler {
    ring: Arc<SlotRing>,
    plan: Arc<Plan>,
    spare: Mutex<Vec<Scratch>>,
    helped: AtomicU64,
}

impl Filler {
    /// A filler with no reading thread yet (see [`Filler::spawn`]).
    pub fn new(ring: Arc<SlotRing>, plan: Plan) -> Arc<Filler> {
        Arc::new(Filler {
            ring,
            plan: Arc::new(plan),
            spare: Mutex::new(Vec::new()),
            helped: AtomicU64::new(0),
        })
    }

    /// Start `threads` reading threads (at least one: a consumer that waits for a slot
    /// relies on a live worker to report a dead one) that fill the ring until its tasks
    /// run out or it is stopped.
    pub fn start(ring: Arc<SlotRing>, plan: Plan, threads: usize) -> Result<Arc<Filler>> {
        let f = Filler::new(ring, plan);
        f.spawn(threads.max(1))?;
        Ok(f)
    }

    /// Start `threads` more reading threads. Each is a member of the ring until it is
    /// done with it.
    pub fn spawn(&self, threads: usize) -> Result<()> {
        start(Arc::clone(&self.ring), Arc::clone(&self.plan), threads)
    }

    /// Blocks the consumers read themselves (through [`Filler::help`]).
    pub fn helped(&self) -> u64 {
        self.helped.load(Ordering::Relaxed)
    }

    /// For a consumer (member `id`) with nothing ready to take: claim a free slot, fill it
    /// in this thread and publish it. Returns whether it did (false: no free slot, no task
    /// left, or the ring stopped).
    pub fn help(&self, id: MemberId) -> Result<bool> {
        let Ok(Some(Claim::Slot(slot, task))) = self.ring.try_claim(id) else {
            return Ok(false);
        };
        let mut scratch = self
            .spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        let r = fill_slot(&self.ring, &self.plan, slot, task, &mut scratch);
        self.spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(scratch);
        self.helped.fetch_add(1, Ordering::Relaxed);
        r.map(|()| true)
    }
}

/// Start `threads` reading threads that fill `ring` from `plan` until its tasks run out or
/// it is stopped. A read that fails publishes an error record (see [`error_record`]).
fn start(ring: Arc<SlotRing>, plan: Arc<Plan>, threads: usize) -> Result<()> {
    for _ in 0..threads {
        let id = ring.join(KIND_WORKER, b"native reader")?;
        let (ring, plan) = (Arc::clone(&ring), Arc::clone(&plan));
        std::thread::spawn(move || {
            let mut scratch = Scratch::default();
            let spec = || WaitSpec {
                deadline: Deadline::after(Some(Duration::from_secs(3600))),
                spin: Duration::from_micros(20),
            };
            loop {
                match ring.claim(id, spec(), &mut no_check) {
                    Ok(Claim::Slot(slot, task)) => {
                        if fill_slot(&ring, &plan, slot, task, &mut scratch).is_err() {
                            break;
                        }
                    }
                    Ok(Claim::TimedOut) => continue,
                    Ok(Claim::NoMoreTasks) | Err(_) => break,
                }
            }
            ring.leave(id);
        });
    }
    Ok(())
}
