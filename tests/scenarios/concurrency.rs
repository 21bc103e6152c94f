//! Concurrent sub-block writes: with the alignment forced to 4096, 512-byte
//! writes to the same 4 KiB block from several connections (and pipelined
//! on one connection) all go through read-modify-write. A lost update
//! shows up as a sector holding an old pattern.

use std::thread;

use urbd_tests::nbdraw::{RawClient, CMD_FLUSH, CMD_WRITE};
use urbd_tests::util::{assert_same_bytes, write_at};
use urbd_tests::{make_sparse_disk, read_at, Server, TempDir, MIB};

/// `NBD_CMD_WRITE_ZEROES`
const CMD_WRITE_ZEROES: u16 = 6;
const REGION: u64 = 4 * MIB;
const BLOCKS: u64 = 256;
const SECTORS: u64 = 8;

fn sector_data(round: u8, block: u64, sector: u64) -> Vec<u8> {
    let mut v = vec![0u8; 512];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (round as u64 * 31 + block * 7 + sector * 13 + (i as u64 >> 4)) as u8 | 1;
    }
    v
}

/// Send all requests before reading any reply, then check every reply.
fn pipelined(c: &mut RawClient, reqs: &[(u16, u64, Vec<u8>)]) {
    let mut wire = Vec::new();
    for (i, (typ, off, data)) in reqs.iter().enumerate() {
        wire.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        wire.extend_from_slice(&0u16.to_be_bytes());
        wire.extend_from_slice(&typ.to_be_bytes());
        wire.extend_from_slice(&(i as u64 + 1).to_be_bytes());
        wire.extend_from_slice(&off.to_be_bytes());
        wire.extend_from_slice(&512u32.to_be_bytes());
        if *typ == CMD_WRITE {
            wire.extend_from_slice(data);
        }
    }
    // Replies (16 bytes each) fit in the socket buffers, so writing
    // everything first cannot deadlock.
    std::io::Write::write_all(&mut c.s, &wire).expect("send pipelined requests");
    let mut seen = vec![false; reqs.len()];
    for _ in 0..reqs.len() {
        let r = c.read_simple_reply().expect("pipelined reply");
        assert_eq!(r.error, 0, "pipelined request {} failed", r.cookie);
        let i = (r.cookie - 1) as usize;
        assert!(!seen[i], "duplicate reply for cookie {}", r.cookie);
        seen[i] = true;
    }
    c.send_request(0, CMD_FLUSH, 0xf1, 0, 0, &[]).unwrap();
    assert_eq!(c.read_simple_reply().unwrap().error, 0, "flush");
}

fn expected(round: u8, zero_sector: Option<u64>) -> Vec<u8> {
    let mut want = Vec::with_capacity((BLOCKS * 4096) as usize);
    for blk in 0..BLOCKS {
        for s in 0..SECTORS {
            if Some(s) == zero_sector {
                want.extend_from_slice(&[0u8; 512]);
            } else {
                want.extend_from_slice(&sector_data(round, blk, s));
            }
        }
    }
    want
}

fn sub_block_writes(t: &str, extra: &[&str]) {
    let dir = TempDir::new(t);
    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, 16);
    // Pre-fill the region so that zeroes are visible.
    write_at(&disk, REGION, &vec![0xff; (BLOCKS * 4096) as usize]);
    let mut server = Server::start(&disk, extra);

    // Rounds 1-3: 8 connections, connection s owns sector s of every block
    // (connection 7 uses WRITE_ZEROES in round 3).
    for round in 1..=3u8 {
        let handles: Vec<_> = (0..SECTORS)
            .map(|s| {
                let addr = server.addr().clone();
                let export = server.export().to_string();
                thread::spawn(move || {
                    let mut c = RawClient::connect_go(&addr, &export);
                    let reqs: Vec<_> = (0..BLOCKS)
                        .map(|blk| {
                            let off = REGION + blk * 4096 + s * 512;
                            if round == 3 && s == 7 {
                                (CMD_WRITE_ZEROES, off, Vec::new())
                            } else {
                                (CMD_WRITE, off, sector_data(round, blk, s))
                            }
                        })
                        .collect();
                    pipelined(&mut c, &reqs);
                    c.disconnect();
                })
            })
            .collect();
        for h in handles {
            h.join().expect("writer thread panicked");
        }
        let mut c = RawClient::connect_go(server.addr(), server.export());
        let got = c
            .read(1, REGION, (BLOCKS * 4096) as u32)
            .expect("read region");
        let zero = (round == 3).then_some(7);
        assert_same_bytes(
            &format!("round {round}: 8 connections"),
            &got,
            &expected(round, zero),
        );
        c.disconnect();
    }

    // Round 4: one connection, all 2048 sector writes pipelined, sectors
    // of a block interleaved with other blocks.
    let mut reqs = Vec::new();
    for s in 0..SECTORS {
        for blk in 0..BLOCKS {
            reqs.push((
                CMD_WRITE,
                REGION + blk * 4096 + s * 512,
                sector_data(4, blk, s),
            ));
        }
    }
    let mut c = RawClient::connect_go(server.addr(), server.export());
    pipelined(&mut c, &reqs);
    let got = c
        .read(2, REGION, (BLOCKS * 4096) as u32)
        .expect("read region");
    assert_same_bytes(
        "round 4: one connection, pipelined",
        &got,
        &expected(4, None),
    );
    c.disconnect();

    server.stop();
    assert_same_bytes(
        "backing file after round 4",
        &read_at(&disk, REGION, (BLOCKS * 4096) as usize),
        &expected(4, None),
    );
    // Neighbours untouched.
    assert!(read_at(&disk, REGION - 4096, 4096).iter().all(|&b| b == 0));
    assert!(read_at(&disk, REGION + BLOCKS * 4096, 4096)
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn concurrent_sub_block_writes_rmw_align_4096() {
    sub_block_writes(
        "concurrent_sub_block_writes_rmw_align_4096",
        &["--io-align-bytes", "4096"],
    );
}

#[test]
fn concurrent_sub_block_writes_rmw_align_4096_threads_engine() {
    sub_block_writes(
        "concurrent_sub_block_writes_rmw_align_4096_threads_engine",
        &["--io-align-bytes", "4096", "--disk-engine", "threads"],
    );
}

#[test]
fn concurrent_sub_block_writes_native_alignment() {
    sub_block_writes("concurrent_sub_block_writes_native_alignment", &[]);
}
