//! Thin PyO3 bindings of ringcast-core and ringcast-h5: type conversion, buffer protocol, error mapping and
//! GIL release. No queue logic lives here (handle semantics are `ringcast_core::handle`).
//!
//! One file per Python class family: [`message`], [`queue`] (`BroadcastQueue`), [`reader`],
//! [`lease`], [`reservation`], [`slots`] (`_SlotRing`, `_SlotBlock`), [`native_h5`]
//! (`_Codec`, `_native_start`) and [`segments`] (module functions). Shared by them: [`convert`]
//! (Python objects to core types), [`error`] (the one mapping of core errors to
//! `ringcast.errors`), [`gil`] (the one place the GIL is released) and [`buffer`] (the one
//! buffer-protocol export).

mod buffer;
mod convert;
mod error;
mod gil;
mod lease;
mod message;
mod native_h5;
mod queue;
mod reader;
mod reservation;
mod segments;
mod slots;

use pyo3::prelude::*;

#[pymodule]
fn _ringcast(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<queue::PyQueue>()?;
    m.add_class::<reader::PyReader>()?;
    m.add_class::<message::Message>()?;
    m.add_class::<lease::Lease>()?;
    m.add_class::<reservation::PyReservation>()?;
    m.add_class::<slots::PySlotRing>()?;
    m.add_class::<slots::SlotBlock>()?;
    m.add_function(wrap_pyfunction!(queue::_attach_queue, m)?)?;
    m.add_function(wrap_pyfunction!(message::_message, m)?)?;
    m.add_function(wrap_pyfunction!(queue::_open_queue, m)?)?;
    m.add_function(wrap_pyfunction!(segments::segments, m)?)?;
    m.add_function(wrap_pyfunction!(segments::inspect, m)?)?;
    m.add_function(wrap_pyfunction!(segments::gc, m)?)?;
    m.add_function(wrap_pyfunction!(segments::unlink, m)?)?;
    m.add_function(wrap_pyfunction!(segments::record_size, m)?)?;
    m.add_function(wrap_pyfunction!(segments::_close_all, m)?)?;
    m.add_function(wrap_pyfunction!(native_h5::_native_start, m)?)?;
    m.add_class::<native_h5::PyCodec>()?;
    m.add("RECORD_HEADER_BYTES", ringcast_core::queue::RECORD_HEADER)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
