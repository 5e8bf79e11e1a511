//! The LZ4 filter's and bitshuffle+LZ4's chunks, encoded here the slow way, decode to their
//! rows for every element size and block size; damaged chunks are errors naming the chunk.

mod common;

use common::tmpdir;
use ringcast_h5::{Codec, Extent, Plan, Scratch};

/// Bitshuffle one block of `n` elements of `elem` bytes (`n` a multiple of 8), the slow way:
/// row `8 * j + b` holds bit `b` of byte `j` of every element, element `i` at bit `i % 8`.
fn bitshuffle_block(src: &[u8], elem: usize) -> Vec<u8> {
    let n = src.len() / elem;
    let row = n / 8;
    let mut out = vec![0u8; src.len()];
    for i in 0..n {
        for j in 0..elem {
            for b in 0..8 {
                if src[i * elem + j] >> b & 1 == 1 {
                    out[(8 * j + b) * row + i / 8] |= 1 << (i % 8);
                }
            }
        }
    }
    out
}

/// A bitshuffle+LZ4 chunk of `data` in blocks of `belems` elements.
fn bitshuffle_lz4(data: &[u8], elem: usize, belems: usize) -> Vec<u8> {
    let mut out = (data.len() as u64).to_be_bytes().to_vec();
    out.extend_from_slice(&((belems * elem) as u32).to_be_bytes());
    let n = data.len() / elem;
    let mut done = 0;
    while n - done >= 8 {
        let k = belems.min((n - done) / 8 * 8);
        let packed = lz4_flex::block::compress(&bitshuffle_block(
            &data[done * elem..(done + k) * elem],
            elem,
        ));
        out.extend_from_slice(&(packed.len() as u32).to_be_bytes());
        out.extend_from_slice(&packed);
        done += k;
    }
    out.extend_from_slice(&data[done * elem..]);
    out
}

/// An LZ4-filter chunk of `data` in blocks of `bsize` bytes; blocks listed in `raw` are
/// stored as they are (as the filter does when LZ4 does not shrink them).
fn lz4_filter(data: &[u8], bsize: usize, raw: &[usize]) -> Vec<u8> {
    let mut out = (data.len() as u64).to_be_bytes().to_vec();
    out.extend_from_slice(&(bsize as u32).to_be_bytes());
    for (k, b) in data.chunks(bsize).enumerate() {
        let stored = if raw.contains(&k) {
            b.to_vec()
        } else {
            lz4_flex::block::compress(b)
        };
        out.extend_from_slice(&(stored.len() as u32).to_be_bytes());
        out.extend_from_slice(&stored);
    }
    out
}

#[test]
fn lz4_and_bitshuffle_chunks_decode_to_their_rows() {
    let dir = tmpdir("lz4");
    let mut s = Scratch::default();
    // 37 rows of 3 elements of `elem` bytes, one chunk of 37 rows: 111 elements, not a
    // multiple of 8, so a partial block and 7 leftover elements.
    for elem in [1usize, 2, 4, 8, 16] {
        let row_bytes = 3 * elem;
        let data: Vec<u8> = (0..37 * row_bytes)
            .map(|i| if i % 5 == 0 { 0 } else { (i * 131 % 251) as u8 })
            .collect();
        for (name, stored, codec, codec_elem) in [
            (
                "bitshuffle",
                bitshuffle_lz4(&data, elem, 16),
                Codec::BitshuffleLz4,
                elem,
            ),
            ("lz4", lz4_filter(&data, 40, &[1, 3]), Codec::Lz4, 0),
        ] {
            let path = dir.join(format!("{name}-{elem}.bin"));
            std::fs::write(&path, &stored).unwrap();
            let ext = vec![Extent {
                row0: 0,
                rows: 37,
                stored_rows: 37,
                offset: 0,
                size: stored.len() as u64,
                codec,
                elem: codec_elem,
            }];
            for bs in [1u64, 5, 37] {
                let plan = Plan::new(
                    path.to_str().unwrap(),
                    row_bytes as u64,
                    37,
                    bs,
                    false,
                    ext.clone(),
                )
                .unwrap();
                let mut buf = vec![0u8; bs as usize * row_bytes];
                for task in 0..37u64.div_ceil(bs) {
                    let n = plan.fill(task, &mut buf, &mut s).unwrap() as usize;
                    let a = task as usize * bs as usize * row_bytes;
                    assert_eq!(&buf[..n], &data[a..a + n], "{name}, elem {elem}, bs {bs}");
                }
            }
            // Damage: a block size past the end, a wrong total, a cut-off chunk.
            for (what, bad) in [
                ("runs past", {
                    let mut b = stored.clone();
                    b[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
                    b
                }),
                ("says", {
                    let mut b = stored.clone();
                    b[7] ^= 1;
                    b
                }),
                ("ends|runs past", stored[..stored.len() - 3].to_vec()),
            ] {
                std::fs::write(&path, &bad).unwrap();
                let mut e = ext.clone();
                e[0].size = bad.len() as u64;
                let plan =
                    Plan::new(path.to_str().unwrap(), row_bytes as u64, 37, 37, false, e).unwrap();
                let mut buf = vec![0u8; 37 * row_bytes];
                let err = plan.fill(0, &mut buf, &mut s).unwrap_err().to_string();
                assert!(
                    err.contains("chunk at row 0") && what.split('|').any(|w| err.contains(w)),
                    "{name}, elem {elem}, {what}: {err}"
                );
            }
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
