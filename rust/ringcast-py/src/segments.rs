//! Module functions over segments: list, inspect, collect garbage, unlink, the cost of a
//! record, and leaving everything at interpreter exit (`_close_all`).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use ringcast_core::{handle, segment, Error};

use crate::error::BResult;
use crate::gil::enter;

/// The `inspect()` dict of a segment.
fn info_dict<'py>(py: Python<'py>, i: &segment::SegmentInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &i.name)?;
    d.set_item(
        "kind",
        match (i.creation, i.raw.geo.kind) {
            (segment::Creation::InProgress, _) => "creating",
            (segment::Creation::Abandoned, _) => "abandoned",
            (_, segment::KIND_BROADCAST) => "broadcast",
            (_, segment::KIND_SLOTS) => "slots",
            _ => "unknown",
        },
    )?;
    d.set_item("size", i.size)?;
    d.set_item("capacity", i.raw.geo.capacity)?;
    d.set_item("members_alive", i.members_alive)?;
    d.set_item("members_dead", i.members_dead)?;
    d.set_item("creator_pid", i.raw.creator_pid)?;
    d.set_item("owner", i.owner)?;
    d.set_item("stale", i.is_stale())?;
    Ok(d)
}

/// Every ringcast segment in ``/dev/shm`` with its kind, size and members alive/dead.
#[pyfunction]
pub(crate) fn segments(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let out = PyList::empty(py);
    for name in segment::list_names() {
        if let Ok(info) = segment::inspect(&name) {
            out.append(info_dict(py, &info)?)?;
        }
    }
    Ok(out)
}

/// Details of one segment (read-only; raises for a missing or foreign object).
#[pyfunction]
pub(crate) fn inspect<'py>(py: Python<'py>, name: &str) -> BResult<Bound<'py, PyDict>> {
    let info = segment::inspect(name)?;
    Ok(info_dict(py, &info)?)
}

/// Remove every segment of this user whose members are all dead; returns their names.
/// Other users' segments are never removed, even by root.
#[pyfunction]
pub(crate) fn gc() -> Vec<String> {
    ringcast_core::queue::gc()
}

/// Remove a segment name now (processes that have it mapped keep using it).
#[pyfunction]
pub(crate) fn unlink(name: &str) -> BResult<()> {
    Ok(segment::unlink(name)?)
}

/// Capacity cost in bytes of a message (``align`` 8 for BroadcastQueue, 1 for PySyncQ).
#[pyfunction]
#[pyo3(signature = (body_len, type_len=0, sender_len=0, align=8))]
pub(crate) fn record_size(
    body_len: usize,
    type_len: usize,
    sender_len: usize,
    align: u32,
) -> BResult<u64> {
    if !matches!(align, 1 | 8 | 64) {
        return Err(
            Error::InvalidArgument(format!("align must be 1, 8 or 64, got {align}")).into(),
        );
    }
    Ok(ringcast_core::queue::record_len(
        align, sender_len, type_len, body_len,
    ))
}

/// Leave every queue and reader this process still holds (run at interpreter exit).
#[pyfunction]
pub(crate) fn _close_all(py: Python<'_>) -> usize {
    enter(py, handle::close_all)
}
