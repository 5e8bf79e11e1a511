//! Read plans against files written here: raw, deflated and shuffled extents, blocks of
//! every size, cyclic wrap-around, and plans or data that are wrong.

mod common;

use std::io::Write;

use common::tmpdir;
use ringcast_h5::{Codec, Extent, Plan, Scratch};

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn shuffle(src: &[u8], elem: usize) -> Vec<u8> {
    let n = src.len() / elem;
    let mut out = vec![0u8; src.len()];
    for i in 0..n {
        for j in 0..elem {
            out[j * n + i] = src[i * elem + j];
        }
    }
    out[n * elem..].copy_from_slice(&src[n * elem..]);
    out
}

/// 10 rows of 8 bytes; rows 0-3 raw, 4-7 deflated, 8-9 shuffled+deflated in a chunk of 4 rows.
fn file_and_extents(dir: &std::path::Path) -> (String, Vec<u8>, Vec<Extent>) {
    let rows: Vec<u8> = (0..80u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut file = vec![0u8; 13]; // a header to skip
    let mut ext = vec![];
    // Store `bytes` at the end of the file as the extent of `rows` rows from `row0`.
    let mut add = |row0, rows, stored_rows, bytes: &[u8], codec, elem| {
        ext.push(Extent {
            row0,
            rows,
            stored_rows,
            offset: file.len() as u64,
            size: bytes.len() as u64,
            codec,
            elem,
        });
        file.extend_from_slice(bytes);
    };
    add(0, 4, 4, &rows[..32], Codec::Raw, 0);
    add(4, 4, 4, &zlib(&rows[32..64]), Codec::Deflate, 0);
    let mut last = rows[64..80].to_vec();
    last.extend_from_slice(&[0u8; 16]); // the chunk stores 4 rows, 2 exist
    add(8, 2, 4, &zlib(&shuffle(&last, 4)), Codec::Deflate, 4);
    let path = dir.join("native.bin");
    std::fs::write(&path, &file).unwrap();
    (path.to_str().unwrap().to_owned(), rows, ext)
}

#[test]
fn blocks_across_raw_deflated_and_shuffled_extents() {
    let dir = tmpdir("blocks");
    let (path, rows, ext) = file_and_extents(&dir);
    let mut s = Scratch::default();
    for bs in 1..=10u64 {
        let plan = Plan::new(&path, 8, 10, bs, false, ext.clone()).unwrap();
        let mut buf = vec![0u8; (bs * 8) as usize];
        for task in 0..10u64.div_ceil(bs) {
            let n = plan.fill(task, &mut buf, &mut s).unwrap() as usize;
            let a = (task * bs * 8) as usize;
            assert_eq!(
                &buf[..n],
                &rows[a..(a + n).min(80)],
                "block size {bs}, task {task}"
            );
        }
    }
    // cyclic: block 3 of 4 rows wraps: rows 2,3 of... (12..16) % 10
    let plan = Plan::new(&path, 8, 10, 4, true, ext.clone()).unwrap();
    let mut buf = vec![0u8; 32];
    plan.fill(2, &mut buf, &mut s).unwrap();
    let want: Vec<u8> = [8usize, 9, 0, 1]
        .iter()
        .flat_map(|&r| rows[r * 8..r * 8 + 8].to_vec())
        .collect();
    assert_eq!(buf, want);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_plans_and_damaged_data_are_errors() {
    let dir = tmpdir("bad");
    let (path, _, mut ext) = file_and_extents(&dir);
    assert!(
        Plan::new(&path, 8, 11, 4, false, ext.clone()).is_err(),
        "rows not covered"
    );
    assert!(Plan::new(&path, 8, 10, 0, false, ext.clone()).is_err());
    assert!(Plan::new("/nonexistent/file.h5", 8, 10, 4, false, ext.clone()).is_err());
    // Task numbers come from shared memory: past the end is an error, never a panic, and a
    // cyclic plan wraps any task number.
    let plan = Plan::new(&path, 8, 10, 4, false, ext.clone()).unwrap();
    let mut buf = vec![0u8; 32];
    for task in [3, u64::MAX / 2, u64::MAX] {
        let err = plan
            .fill(task, &mut buf, &mut Scratch::default())
            .unwrap_err();
        assert!(err.to_string().contains("past the 10 rows"), "{err}");
    }
    let plan = Plan::new(&path, 8, 10, 4, true, ext.clone()).unwrap();
    assert_eq!(
        plan.fill(u64::MAX, &mut buf, &mut Scratch::default())
            .unwrap(),
        32
    );
    ext[1].size -= 3; // a truncated zlib stream
    let plan = Plan::new(&path, 8, 10, 4, false, ext.clone()).unwrap();
    let mut buf = vec![0u8; 32];
    let err = plan.fill(1, &mut buf, &mut Scratch::default()).unwrap_err();
    assert!(err.to_string().contains("row 4"), "{err}");
    ext[2].offset = 1 << 40; // past the end of the file
    let plan = Plan::new(&path, 8, 10, 4, false, ext).unwrap();
    assert!(plan.fill(2, &mut buf, &mut Scratch::default()).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}
