//! The one error type of the core crate.

use std::io;
use std::time::Duration;

/// Everything that can go wrong in ringcast-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No segment of that name exists.
    #[error("no ringcast segment named '{0}' exists")]
    NotFound(String),
    /// A live segment of that name already exists.
    #[error("a segment named '{0}' already exists")]
    Exists(String),
    /// The object exists but is not a (valid) ringcast segment.
    #[error("'{name}' is not a usable ringcast segment: {why}")]
    Corrupt { name: String, why: String },
    /// The object may not be used by this process: owned by another user, writable by
    /// others without the caller's consent, a symbolic link, not a regular file, or not
    /// openable by this user.
    #[error("permission denied for segment '{name}': {why}")]
    Permission { name: String, why: String },
    /// A bad argument from the caller.
    #[error("{0}")]
    InvalidArgument(String),
    /// The queue has no room for the message right now.
    #[error("{needed} byte message > {free} free bytes")]
    Full { needed: u64, free: u64 },
    /// The message can never fit, however long one waits.
    #[error("a {needed} byte message can never fit in a queue of {capacity} bytes")]
    TooLarge { needed: u64, capacity: u64 },
    /// A wait (lock, members) ran out of time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// The queue was shut down by a writer and the reader has read everything.
    #[error("queue '{0}' has been shut down")]
    ShutDown(String),
    /// The handle was closed.
    #[error("this {0} is closed")]
    Closed(&'static str),
    /// The segment is being removed (its last member left).
    #[error("segment '{0}' was closed by its last member and is being removed")]
    Removed(String),
    /// No free member slot.
    #[error("segment '{name}' has no free member slot (all {max} in use)")]
    NoMemberSlot { name: String, max: u32 },
    /// The handle belongs to the process it was inherited from.
    #[error("this {0} belongs to the parent process; create a new one in the child")]
    Forked(&'static str),
    /// Another thread uses the same handle right now.
    #[error("this {0} is in use by another thread")]
    Busy(&'static str),
    /// A worker process of a slot ring died (holding the slot of `task`, if known).
    #[error("{}", worker_died(*.pid, *.task))]
    WorkerDied { pid: u32, task: Option<u64> },
    /// The handle is held in a way that forbids this call now (a lease, a reservation).
    #[error("{0}")]
    Held(String),
    /// The caller's slice callback asked to stop (e.g. a Python signal handler raised).
    #[error("interrupted")]
    Interrupted,
    /// `/dev/shm` has no room for a new segment of `asked` bytes (`free` bytes free of
    /// `total`; a `total` of 0 when unknown), or can never hold one that large.
    #[error("{}", crate::segment::space::no_space_message(name, *asked, *free, *total))]
    NoSpace {
        name: String,
        asked: u64,
        free: u64,
        total: u64,
    },
    /// An operating-system call failed.
    #[error("{op} '{name}': {source}")]
    Os {
        op: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

fn worker_died(pid: u32, task: Option<u64>) -> String {
    match (pid, task) {
        (p, Some(t)) => format!("a worker process (pid {p}) died while working on task {t}"),
        (0, None) => "every worker process has ended while work remains".to_owned(),
        (p, None) => {
            format!("a worker process (pid {p}) died and no worker is left to finish the work")
        }
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn os(op: &'static str, name: &str, e: impl Into<io::Error>) -> Self {
        Error::Os {
            op,
            name: name.to_owned(),
            source: e.into(),
        }
    }
    pub(crate) fn permission(name: &str, why: impl Into<String>) -> Self {
        Error::Permission {
            name: name.to_owned(),
            why: why.into(),
        }
    }
    /// `Corrupt`; where this process found a segment of that name shrunk under it, the
    /// damage is the shrink's doing and the error says so.
    pub(crate) fn corrupt(name: &str, why: impl Into<String>) -> Self {
        use crate::segment::sigbus;
        let why = why.into();
        let why = if sigbus::damaged_named(name) {
            format!("{} (seen as: {why})", sigbus::SHRUNK)
        } else {
            why
        };
        Error::Corrupt {
            name: name.to_owned(),
            why,
        }
    }
}
