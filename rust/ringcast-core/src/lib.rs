//! ringcast-core: shared-memory segments, process-shared waits, member liveness and the
//! broadcast log. Pure Rust; the Python bindings live in `ringcast-py`.

pub mod error;
pub mod handle;
pub mod proc;
pub mod queue;
pub mod segment;
pub mod slots;
pub mod wait;

pub use error::{Error, Result};
pub use queue::{Filter, MemberId, Queue, QueueOptions, RecordRef, Stats};
pub use wait::{Deadline, WaitSpec};
