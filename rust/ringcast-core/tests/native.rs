//! The native read path against files written here: raw, deflated and shuffled extents.

use std::io::Write;

use std::sync::Arc;
use std::time::Duration;

use ringcast_core::native::{Codec, Extent, Filler, Plan, Scratch};
use ringcast_core::slots::{SlotOptions, SlotRing, TakeResult, KIND_CONSUMER};
use ringcast_core::wait::no_check;
use ringcast_core::{Deadline, WaitSpec};

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
    ext.push(Extent {
        row0: 0,
        rows: 4,
        stored_rows: 4,
        offset: file.len() as u64,
        size: 32,
        codec: Codec::Raw,
    });
    file.extend_from_slice(&rows[..32]);
    let z = zlib(&rows[32..64]);
    ext.push(Extent {
        row0: 4,
        rows: 4,
        stored_rows: 4,
        offset: file.len() as u64,
        size: z.len() as u64,
        codec: Codec::Deflate { shuffle: 0 },
    });
    file.extend_from_slice(&z);
    let mut last = rows[64..80].to_vec();
    last.extend_from_slice(&[0u8; 16]); // the chunk stores 4 rows, 2 exist
    let z = zlib(&shuffle(&last, 4));
    ext.push(Extent {
        row0: 8,
        rows: 2,
        stored_rows: 4,
        offset: file.len() as u64,
        size: z.len() as u64,
        codec: Codec::Deflate { shuffle: 4 },
    });
    file.extend_from_slice(&z);
    let path = dir.join("native.bin");
    std::fs::write(&path, &file).unwrap();
    (path.to_str().unwrap().to_owned(), rows, ext)
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rc-native-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
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

/// `n` rows of 8 bytes, raw, in a file with a 5-byte header.
fn raw_file(dir: &std::path::Path, n: u64) -> (String, Vec<u8>) {
    let rows: Vec<u8> = (0..n * 8).map(|i| (i * 31 % 253) as u8).collect();
    let mut file = vec![9u8; 5];
    file.extend_from_slice(&rows);
    let path = dir.join("raw.bin");
    std::fs::write(&path, &file).unwrap();
    (path.to_str().unwrap().to_owned(), rows)
}

/// Take every block of a ring through `take_helping` (ordered if `ordered`); returns the
/// blocks' bytes in the order taken, with their task numbers.
fn drain_helping(ring: &SlotRing, filler: &Filler, ordered: bool, n: u64) -> Vec<(u64, Vec<u8>)> {
    let me = ring.join(KIND_CONSUMER, b"c").unwrap();
    let mut out = vec![];
    for k in 0..n {
        let spec = WaitSpec {
            deadline: Deadline::after(Some(Duration::from_secs(10))),
            spin: Duration::from_micros(10),
        };
        let want = ordered.then_some(k);
        match ring
            .take_helping(want, spec, &mut no_check, &mut || filler.help(me))
            .unwrap()
        {
            TakeResult::Block(t) => {
                assert!(!t.error, "task {} is an error record", t.task);
                let p = ring.slot_ptr(t.slot).unwrap();
                // SAFETY: the slot is leased to this consumer until released.
                let b = unsafe { std::slice::from_raw_parts(p, t.len as usize) }.to_vec();
                ring.release(t.slot).unwrap();
                out.push((t.task, b));
            }
            other => panic!("block {k}: {other:?}"),
        }
    }
    ring.leave(me);
    out
}

#[test]
fn a_consumer_with_nothing_ready_reads_blocks_itself() {
    let dir = tmpdir("help");
    let (path, rows, n, bs) = {
        let (p, r) = raw_file(&dir, 1000);
        (p, r, 1000u64, 7u64)
    };
    let ext = vec![Extent {
        row0: 0,
        rows: n,
        stored_rows: n,
        offset: 5,
        size: n * 8,
        codec: Codec::Raw,
    }];
    let block = |task: u64| {
        let a = (task * bs * 8) as usize;
        rows[a..(a + (bs * 8) as usize).min(rows.len())].to_vec()
    };
    let tasks = n.div_ceil(bs);
    let make = |tag: &str, cyclic: bool| {
        let name = format!("rc-native-help-{tag}-{}", std::process::id());
        let ring = SlotRing::create(
            &name,
            SlotOptions {
                n_slots: 3,
                slot_bytes: bs * 8,
                tasks: (!cyclic).then_some(tasks),
                max_members: 8,
                mode: 0o600,
            },
        )
        .unwrap();
        let plan = Plan::new(&path, 8, n, bs, cyclic, ext.clone()).unwrap();
        (ring, plan)
    };
    // Whatever happens, no segment stays behind (a reading thread may still be leaving).
    struct Unlink(Vec<String>);
    impl Drop for Unlink {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = ringcast_core::segment::unlink(n);
            }
        }
    }
    let _unlink = Unlink(
        ["alone", "shared", "cyclic"]
            .iter()
            .map(|t| format!("rc-native-help-{t}-{}", std::process::id()))
            .collect(),
    );

    // No reading thread: the consumer reads every block, in order.
    let (ring, plan) = make("alone", false);
    let f = Filler::new(Arc::clone(&ring), plan);
    let got = drain_helping(&ring, &f, true, tasks);
    assert_eq!(f.helped(), tasks);
    for (k, (task, bytes)) in got.iter().enumerate() {
        assert_eq!(*task, k as u64);
        assert_eq!(*bytes, block(*task), "task {task}");
    }

    // With a reading thread, unordered: every block exactly once, whoever read it.
    let (ring, plan) = make("shared", false);
    let f = Filler::start(Arc::clone(&ring), plan, 1).unwrap();
    let mut got = drain_helping(&ring, &f, false, tasks);
    got.sort_by_key(|(t, _)| *t);
    assert_eq!(got.len() as u64, tasks);
    for (k, (task, bytes)) in got.iter().enumerate() {
        assert_eq!(*task, k as u64, "a block is missing or came twice");
        assert_eq!(*bytes, block(*task), "task {task}");
    }
    assert!(f.helped() <= tasks);

    // Cyclic and ordered, past the wrap: the block that wraps holds the last and first rows.
    let (ring, plan) = make("cyclic", true);
    let f = Filler::start(Arc::clone(&ring), plan, 1).unwrap();
    let got = drain_helping(&ring, &f, true, tasks + 3);
    ring.stop();
    for (k, (task, bytes)) in got.iter().enumerate() {
        assert_eq!(*task, k as u64);
        let a = (task * bs) % n;
        let want: Vec<u8> = (a..a + bs)
            .flat_map(|r| {
                let r = (r % n) as usize;
                rows[r * 8..r * 8 + 8].to_vec()
            })
            .collect();
        assert_eq!(*bytes, want, "cyclic task {task}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

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
        for (name, stored, codec) in [
            (
                "bitshuffle",
                bitshuffle_lz4(&data, elem, 16),
                Codec::BitshuffleLz4 { elem },
            ),
            (
                "lz4",
                lz4_filter(&data, 40, &[1, 3]),
                Codec::Lz4 { shuffle: 0 },
            ),
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
