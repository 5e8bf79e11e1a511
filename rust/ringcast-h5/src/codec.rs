//! How an extent is stored ([`Codec`]), and the decoders of a whole chunk: zlib (HDF5's
//! deflate filter), the HDF5 LZ4 filter (id 32004) and the bitshuffle filter with LZ4 (id
//! 32008). A byte shuffle before deflate or LZ4 is undone by the caller (see `shuffle`).
//!
//! Chunks come from files: every size and offset a chunk states is checked against the
//! bytes at hand, and a decoder's error says what is wrong with the chunk.

use crate::shuffle::bitunshuffle;

/// How an extent is stored: the filter pipelines the native path decodes. Each extent gives
/// an element size with it ([`Extent::elem`](crate::Extent::elem)). Python passes the same
/// values as `ringcast._ringcast._Codec` (the bindings convert it, by name).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// The rows' bytes as they are in memory.
    Raw = 0,
    /// A zlib stream (HDF5's deflate filter), after a byte shuffle of elements of `elem`
    /// bytes when `elem` is over 1.
    Deflate = 1,
    /// The HDF5 LZ4 filter (id 32004), after a byte shuffle when `elem` is over 1.
    Lz4 = 2,
    /// The bitshuffle filter (id 32008) with LZ4 compression, on elements of `elem` bytes.
    BitshuffleLz4 = 3,
}

impl Codec {
    /// The element size of the byte shuffle to undo after decoding a chunk stored with this
    /// codec and element size `elem` (0 or 1: none).
    pub(crate) fn shuffle(self, elem: usize) -> usize {
        match self {
            Codec::Deflate | Codec::Lz4 => elem,
            Codec::Raw | Codec::BitshuffleLz4 => 0,
        }
    }
}

/// Decode a whole chunk stored with `codec` and element size `elem` into `dst`, which must
/// come out exactly full. The byte shuffle, if any, is left to the caller. Errors say what
/// is wrong with the chunk.
pub(crate) fn decode(
    codec: Codec,
    elem: usize,
    src: &[u8],
    dst: &mut [u8],
    block: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    match codec {
        Codec::Raw => {
            if src.len() != dst.len() {
                return Err(format!("stores {} bytes, not {}", src.len(), dst.len()));
            }
            dst.copy_from_slice(src);
            Ok(())
        }
        Codec::Deflate => inflate(src, dst),
        Codec::Lz4 => lz4_chunk(src, dst),
        Codec::BitshuffleLz4 => bitshuffle_lz4_chunk(src, dst, elem, block),
    }
}

fn inflate(src: &[u8], dst: &mut [u8]) -> std::result::Result<(), String> {
    let mut d = flate2::Decompress::new(true);
    let status = d
        .decompress(src, dst, flate2::FlushDecompress::Finish)
        .map_err(|e| format!("does not inflate: {e}"))?;
    if status != flate2::Status::StreamEnd || d.total_out() != dst.len() as u64 {
        return Err(format!(
            "inflates to {} bytes, not {}",
            d.total_out(),
            dst.len()
        ));
    }
    Ok(())
}

/// A big-endian integer of `N` bytes at `at`, or an error naming `what`.
fn be<const N: usize>(src: &[u8], at: usize, what: &str) -> std::result::Result<u64, String> {
    let b = src
        .get(at..at + N)
        .ok_or_else(|| format!("ends inside its {what} (byte {at} of {})", src.len()))?;
    Ok(b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
}

/// One LZ4 block of `src` into all of `dst`.
fn lz4_block(src: &[u8], dst: &mut [u8]) -> std::result::Result<(), String> {
    match lz4_flex::block::decompress_into(src, dst) {
        Ok(n) if n == dst.len() => Ok(()),
        Ok(n) => Err(format!(
            "has an LZ4 block that decodes to {n} bytes, not {}",
            dst.len()
        )),
        Err(e) => Err(format!("has an LZ4 block that does not decode: {e}")),
    }
}

/// The HDF5 LZ4 filter's chunk: the decoded size (u64, big-endian), the block size (u32),
/// then for each block its stored size (u32) and its bytes, LZ4-compressed, or as they are
/// when the stored size equals the block's.
fn lz4_chunk(src: &[u8], dst: &mut [u8]) -> std::result::Result<(), String> {
    let total = be::<8>(src, 0, "header")?;
    let bsize = be::<4>(src, 8, "header")?;
    if total != dst.len() as u64 {
        return Err(format!(
            "has a header that says {total} bytes, not {}",
            dst.len()
        ));
    }
    if bsize == 0 {
        return Err("has a header with a block size of 0".into());
    }
    let (mut pos, mut out) = (12usize, 0usize);
    while out < dst.len() {
        let n = (bsize as usize).min(dst.len() - out);
        let c = be::<4>(src, pos, "block sizes")? as usize;
        pos += 4;
        let body = src.get(pos..pos.saturating_add(c)).ok_or_else(|| {
            format!("has a block of {c} bytes at byte {pos} that runs past its end")
        })?;
        if c == n {
            dst[out..out + n].copy_from_slice(body);
        } else {
            lz4_block(body, &mut dst[out..out + n])?;
        }
        pos += c;
        out += n;
    }
    Ok(())
}

/// Elements per bitshuffle block are a multiple of this; a last partial block is cut to
/// one, and the elements left over are stored as they are.
const BSHUF_MULT: usize = 8;

/// The bitshuffle filter's chunk (LZ4): the decoded size (u64, big-endian), the block size
/// in bytes (u32), then per block its compressed size (u32) and an LZ4 block holding the
/// block's bit planes; the last `n % 8` elements follow as they are.
fn bitshuffle_lz4_chunk(
    src: &[u8],
    dst: &mut [u8],
    elem: usize,
    block: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let total = be::<8>(src, 0, "header")?;
    let bbytes = be::<4>(src, 8, "header")? as usize;
    if total != dst.len() as u64 {
        return Err(format!(
            "has a header that says {total} bytes, not {}",
            dst.len()
        ));
    }
    if elem == 0 || !dst.len().is_multiple_of(elem) {
        return Err(format!(
            "holds {} bytes, not whole elements of {elem}",
            dst.len()
        ));
    }
    let belems = bbytes / elem;
    if !bbytes.is_multiple_of(elem) || belems == 0 || !belems.is_multiple_of(BSHUF_MULT) {
        return Err(format!(
            "has a block size of {bbytes} bytes, not a multiple of 8 elements"
        ));
    }
    let n = dst.len() / elem;
    let (mut pos, mut done) = (12usize, 0usize);
    while n - done >= BSHUF_MULT {
        let k = belems.min((n - done) / BSHUF_MULT * BSHUF_MULT);
        let c = be::<4>(src, pos, "block sizes")? as usize;
        pos += 4;
        let body = src.get(pos..pos.saturating_add(c)).ok_or_else(|| {
            format!("has a block of {c} bytes at byte {pos} that runs past its end")
        })?;
        block.resize(k * elem, 0);
        lz4_block(body, block)?;
        bitunshuffle(block, &mut dst[done * elem..(done + k) * elem], elem);
        pos += c;
        done += k;
    }
    let rest = &mut dst[done * elem..];
    let tail = src
        .get(pos..pos + rest.len())
        .ok_or_else(|| format!("ends before its last {} bytes", rest.len()))?;
    rest.copy_from_slice(tail);
    Ok(())
}
