//! The smallest useful capacity of a queue.
//!
//! A record costs at least its fixed header ([`RECORD_HEADER`](super::RECORD_HEADER) bytes,
//! rounded up to the record alignment), even with no sender, no type and no body. A queue of
//! a smaller capacity can never hold a message: every send would fail with
//! [`Error::TooLarge`]. [`QueueOptions::check_capacity`] refuses such a capacity when the
//! queue is made instead (the pysyncq layer does not call it: pysyncq accepts a queue too
//! small for any message and reports it at the first append, as the original does).

use super::record::record_len;
use super::QueueOptions;
use crate::error::{Error, Result};

/// The smallest capacity that holds one message (an empty one, with empty sender and type)
/// when records are aligned to `align` bytes.
pub fn min_capacity(align: u32) -> u64 {
    record_len(align.max(1), 0, 0, 0)
}

impl QueueOptions {
    /// Fail with [`Error::InvalidArgument`], naming the minimum, if the capacity could never
    /// hold a message.
    pub fn check_capacity(&self) -> Result<()> {
        let min = min_capacity(self.align);
        if self.capacity < min {
            return Err(Error::InvalidArgument(format!(
                "capacity must be at least {min} bytes (the cost of one empty message; a \
                 message costs {min} bytes plus its sender, type and body), got {}",
                self.capacity
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_is_one_empty_record() {
        assert_eq!(min_capacity(1), 16);
        assert_eq!(min_capacity(8), 16);
        assert_eq!(min_capacity(64), 64);
        let mut o = QueueOptions::default();
        for (cap, ok) in [
            (0, false),
            (1, false),
            (15, false),
            (16, true),
            (4096, true),
        ] {
            o.capacity = cap;
            assert_eq!(o.check_capacity().is_ok(), ok, "capacity {cap}");
        }
        o.capacity = 0;
        let e = o.check_capacity().unwrap_err().to_string();
        assert!(
            e.contains("at least 16 bytes") && e.contains("got 0"),
            "{e}"
        );
    }
}
