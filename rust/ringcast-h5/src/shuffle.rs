//! Undoing the shuffles HDF5 filters apply before compressing: the shuffle filter's byte
//! planes, and bitshuffle's bit planes (an 8x8 bit transpose per group of 8 elements).

/// Transpose an 8x8 bit matrix held in a `u64` (row `r` in byte `r`, column `c` in bit `c`).
fn transpose8(mut x: u64) -> u64 {
    let mut t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^= t ^ (t << 28);
    x
}

/// Undo bitshuffle on one block of `dst.len() / elem` elements (a multiple of 8): `src`
/// holds, for byte `j` of the element and bit `b`, a row of one bit per element (row
/// `8 * j + b`, element `i` at bit `i % 8` of byte `i / 8`).
pub(crate) fn bitunshuffle(src: &[u8], dst: &mut [u8], elem: usize) {
    let row = dst.len() / elem / 8;
    for j in 0..elem {
        let planes = &src[8 * j * row..8 * (j + 1) * row];
        for g in 0..row {
            let mut x = 0u64;
            for b in 0..8 {
                x |= u64::from(planes[b * row + g]) << (8 * b);
            }
            let t = transpose8(x).to_le_bytes();
            for (i, &v) in t.iter().enumerate() {
                dst[(8 * g + i) * elem + j] = v;
            }
        }
    }
}

/// Undo HDF5's shuffle filter: byte `j` of every element was stored together.
pub(crate) fn unshuffle(src: &[u8], dst: &mut [u8], elem: usize) {
    let n = src.len() / elem;
    for j in 0..elem {
        let plane = &src[j * n..(j + 1) * n];
        for (i, &b) in plane.iter().enumerate() {
            dst[i * elem + j] = b;
        }
    }
    let tail = n * elem;
    dst[tail..].copy_from_slice(&src[tail..]);
}
