//! Reconnect done right: bitmap-sized resyncs after a disconnect, a SyncSource killed
//! mid-resync, repeated split brains, online verify of a disk corrupted behind urbd's back,
//! pause-sync / resume-sync, invalidate. Two real `urbd run` daemons driven by `urbdadm`, data
//! written with a raw NBD client; every test compares the backing files at the end.
//!
//! Run: `cargo build --release -p urbd && cargo test --release -p urbd-tests
//! --test reconnect -- --test-threads=1`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use urbd_tests::nbdraw::RawClient;
use urbd_tests::pair::{peer_of, Alpha, Beta, Node, Pair, RES};
use urbd_tests::util::write_at;
use urbd_tests::{Json, Prng, MIB};

const IMAGE_MIB: u64 = 32;
const BLOCK: u64 = 4096;

fn resync_config(max_mib: u64, min_mib: u64) -> String {
    format!(
        "[resync]\nrate-bytes-per-s-max = {}\nrate-bytes-per-s-min = {}\n",
        max_mib * MIB,
        min_mib * MIB
    )
}

/// A synced pair (alpha Primary) with the given resync rates.
fn synced_pair(max_mib: u64, min_mib: u64) -> Pair {
    let mut pair = Pair::new("C", IMAGE_MIB);
    pair.set_extra_config(&resync_config(max_mib, min_mib));
    pair.initial_sync();
    pair
}

/// Writes through `node`'s NBD export; returns the 4 KiB blocks touched.
fn nbd_write(pair: &Pair, node: Node, writes: &[(u64, Vec<u8>)]) -> BTreeSet<u64> {
    let mut c = RawClient::connect_go(&pair.nbd_addr(node), RES);
    let mut blocks = BTreeSet::new();
    for (i, (off, data)) in writes.iter().enumerate() {
        c.write(i as u64 + 1, *off, data)
            .unwrap_or_else(|e| panic!("NBD write at {off} on {node}: error {e}"));
        let len = data.len() as u64;
        blocks.extend(off / BLOCK..(off + len).div_ceil(BLOCK));
    }
    c.disconnect();
    blocks
}

/// `count` writes of 1..=4 blocks at scattered 4 KiB-aligned offsets below `limit`.
fn scattered(seed: u64, count: usize, limit: u64) -> Vec<(u64, Vec<u8>)> {
    let mut rng = Prng::new(seed);
    (0..count)
        .map(|_| {
            let blocks = 1 + rng.next_u64() % 4;
            let off = rng.next_u64() % (limit / BLOCK - blocks) * BLOCK;
            (off, rng.bytes((blocks * BLOCK) as usize))
        })
        .collect()
}

/// The `N` of every "resync finished: N bytes" line of `node`'s log, in order.
fn resyncs(pair: &Pair, node: Node) -> Vec<u64> {
    pair.log(node)
        .lines()
        .filter_map(|l| l.split("resync finished: ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

fn wait_resyncs(pair: &Pair, node: Node, count: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = resyncs(pair, node);
        if r.len() >= count {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{node}: no resync finished ({r:?})\n{}",
            pair.logs_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn repl(p: &Json) -> String {
    p.str_at("replication-state").to_string()
}

fn oos(p: &Json) -> u64 {
    p.u64_at("out-of-sync-bytes")
}

// ---------------------------------------------------------------------------
// (a) disconnect, write at scattered offsets, connect: only the marked blocks move
// ---------------------------------------------------------------------------

#[test]
fn reconnect_resyncs_exactly_the_marked_blocks() {
    let pair = synced_pair(50, 5);
    let before = resyncs(&pair, Alpha).len();
    pair.adm_ok(Alpha, &["disconnect", RES]);
    let writes = scattered(11, 300, pair.data_size());
    let blocks = nbd_write(&pair, Alpha, &writes);
    let marked = blocks.len() as u64 * BLOCK;
    let p = pair.peer_status(Alpha);
    assert_eq!(p.str_at("connection-state"), "StandAlone");
    assert_eq!(
        oos(&p),
        marked,
        "out-of-sync-bytes = the 4 KiB blocks written: {p}"
    );
    assert!(marked > 2 * MIB && marked < pair.data_size() / 2);

    pair.adm_ok(Alpha, &["connect", RES]);
    pair.wait_connect(Alpha, 30);
    pair.wait_sync(Alpha, 60);
    pair.wait_sync(Beta, 30);
    let moved = wait_resyncs(&pair, Alpha, before + 1)[before];
    assert_eq!(moved, marked, "the resync moved exactly the marked bytes");
    pair.down_both();
    let data = pair.assert_data_identical();
    // The last write is overlapped by none: it reads back from both disks.
    let (off, want) = writes.last().unwrap();
    assert_eq!(&data[*off as usize..*off as usize + want.len()], &want[..]);
    eprintln!("(a) marked {marked} bytes, resynced {moved} bytes");
}

// ---------------------------------------------------------------------------
// (b) kill -9 the SyncSource mid-resync: the resync resumes after restart; the target is
// never promotable meanwhile
// ---------------------------------------------------------------------------

#[test]
fn sync_source_kill9_mid_resync_resumes() {
    let pair = synced_pair(4, 1);
    pair.adm_ok(Alpha, &["disconnect", RES]);
    let writes: Vec<(u64, Vec<u8>)> = (0..16u64)
        .map(|i| (i * MIB, Prng::new(i).bytes(MIB as usize)))
        .collect();
    nbd_write(&pair, Alpha, &writes);
    assert_eq!(oos(&pair.peer_status(Alpha)), 16 * MIB);
    pair.adm_ok(Alpha, &["connect", RES]);
    // 16 MiB at 4 MiB/s: kill once a quarter or so has moved.
    pair.wait_status(Beta, "resync under way", Duration::from_secs(30), |s| {
        let p = peer_of(s);
        repl(&p) == "SyncTarget" && oos(&p) < 14 * MIB
    });
    assert_eq!(pair.status(Beta).str_at("disk-state"), "Inconsistent");
    pair.kill9(Alpha);
    let o = pair.adm(Beta, &["primary", RES]);
    assert!(!o.status.success(), "an Inconsistent target was promoted");
    let left = oos(&pair.peer_status(Beta));
    assert!(
        left > 0 && left < 16 * MIB,
        "beta's bitmap kept the rest: {left}"
    );

    pair.up(Alpha);
    pair.wait_status(Beta, "resync resumed", Duration::from_secs(30), |s| {
        repl(&peer_of(s)) == "SyncTarget"
    });
    let o = pair.adm(Beta, &["primary", RES]);
    assert!(!o.status.success(), "a SyncTarget was promoted");
    assert!(
        o.stderr.contains("SyncTarget") || o.stdout.contains("SyncTarget"),
        "{}",
        o.describe()
    );
    pair.wait_sync(Beta, 60);
    pair.wait_sync(Alpha, 30);
    let after_restart = wait_resyncs(&pair, Alpha, 1);
    assert!(
        *after_restart.last().unwrap() < 16 * MIB + 8 * MIB,
        "after the restart only what was left (plus the hot activity-log extents) moves: {after_restart:?}"
    );
    pair.down_both();
    pair.assert_data_identical();
    eprintln!("(b) left at kill {left} bytes, resynced after restart {after_restart:?}");
}

// ---------------------------------------------------------------------------
// (c) split brain, 10 rounds: detected on both nodes every time; resolved with a bitmap-sized
// resync toward the survivor's data
// ---------------------------------------------------------------------------

#[test]
fn split_brain_ten_rounds() {
    let pair = synced_pair(50, 5);
    let size = pair.data_size();
    for round in 0..10u64 {
        let before = resyncs(&pair, Alpha).len();
        pair.adm_ok(Alpha, &["disconnect", RES]);
        pair.adm_ok(Beta, &["disconnect", RES]);
        pair.adm_ok(Beta, &["primary", RES]);
        let wa = scattered(100 + round, 20, size);
        let wb = scattered(200 + round, 20, size);
        let mut blocks = nbd_write(&pair, Alpha, &wa);
        blocks.extend(nbd_write(&pair, Beta, &wb));
        pair.adm_ok(Alpha, &["connect", RES]);
        pair.adm_ok(Beta, &["connect", RES]);
        for node in Node::BOTH {
            pair.wait_status(node, "split brain", Duration::from_secs(20), |s| {
                let p = peer_of(s);
                p.bool_at("split-brain") && p.str_at("connection-state") == "StandAlone"
            });
        }
        // beta is the victim.
        pair.secondary(Beta);
        pair.adm_ok(Beta, &["connect", "--discard-my-data", RES]);
        pair.adm_ok(Alpha, &["connect", RES]);
        pair.wait_connect(Alpha, 30);
        pair.wait_sync(Alpha, 60);
        pair.wait_sync(Beta, 30);
        let moved = wait_resyncs(&pair, Alpha, before + 1)[before];
        let written = blocks.len() as u64 * BLOCK;
        assert_eq!(
            moved, written,
            "round {round}: the resync moves the blocks written on either side, not the disk"
        );
        for p in [pair.peer_status(Alpha), pair.peer_status(Beta)] {
            assert!(!p.bool_at("split-brain"), "round {round}: {p}");
        }
        eprintln!("(c) round {round}: written {written} bytes on both sides, resynced {moved}");
    }
    pair.down_both();
    pair.assert_data_identical();
}

// ---------------------------------------------------------------------------
// (d) online verify finds exactly the blocks corrupted behind urbd's back; --repair fixes them
// ---------------------------------------------------------------------------

fn wait_verify(pair: &Pair, node: Node) -> Json {
    let s = pair.wait_status(node, "verify finished", Duration::from_secs(60), |s| {
        let p = peer_of(s);
        p.has("verify") && !p.get("verify").bool_at("running")
    });
    peer_of(&s).get("verify").clone()
}

#[test]
fn verify_finds_corrupted_blocks_and_repair_fixes_them() {
    let pair = synced_pair(100, 20);
    let size = pair.data_size();
    // Corrupt blocks of beta's image while it is down (the daemon uses O_DIRECT).
    pair.down(Beta);
    let bad: Vec<u64> = vec![7, 8, 1000, 2049, (size / BLOCK) - 1];
    for &b in &bad {
        write_at(
            pair.disk(Beta),
            b * BLOCK + 100,
            b"corrupted behind urbd's back",
        );
    }
    pair.up(Beta);
    pair.wait_connect(Alpha, 30);
    pair.wait_sync(Alpha, 30);
    // Application writes during the first pass, in a range apart from the corruption.
    let writer = {
        let addr = pair.nbd_addr(Alpha);
        std::thread::spawn(move || {
            let mut c = RawClient::connect_go(&addr, RES);
            let mut rng = Prng::new(5);
            for i in 0..400u64 {
                let off = (3000 + rng.next_u64() % 1000) * BLOCK;
                c.write(i + 1, off, &rng.bytes(BLOCK as usize))
                    .expect("write");
            }
            c.disconnect();
        })
    };
    pair.adm_ok(Alpha, &["verify", RES]);
    writer.join().unwrap();
    let v = wait_verify(&pair, Alpha);
    let want = bad.len() as u64 * BLOCK;
    assert_eq!(v.u64_at("out-of-sync-found-bytes"), want, "alpha: {v}");
    assert_eq!(v.str_at("side"), "VerifyS");
    let vt = wait_verify(&pair, Beta);
    assert_eq!(vt.u64_at("out-of-sync-found-bytes"), want, "beta: {vt}");
    assert_eq!(
        oos(&pair.peer_status(Alpha)),
        want,
        "marked out of sync on alpha"
    );
    assert_eq!(
        oos(&pair.peer_status(Beta)),
        want,
        "marked out of sync on beta"
    );
    let log = pair.log(Alpha);
    assert!(
        log.contains("[28672, 36864)")
            && log.contains(&format!("[{}, {})", 1000 * BLOCK, 1001 * BLOCK)),
        "the log names the ranges\n{}",
        pair.logs_tail(20)
    );
    // --repair: verify again and resync what differs, without a reconnect.
    let before = resyncs(&pair, Alpha).len();
    pair.adm_ok(Alpha, &["verify", "--repair", RES]);
    let moved = wait_resyncs(&pair, Alpha, before + 1)[before];
    assert_eq!(moved, want, "repair resyncs exactly the differing blocks");
    pair.wait_sync(Alpha, 30);
    pair.wait_sync(Beta, 30);
    assert_eq!(oos(&pair.peer_status(Alpha)), 0);
    // A sub-range pass finds nothing now.
    pair.adm_ok(Alpha, &["verify", "--start", "0", "--stop", "1M", RES]);
    let v = wait_verify(&pair, Alpha);
    assert_eq!(v.u64_at("out-of-sync-found-bytes"), 0, "{v}");
    assert_eq!(v.u64_at("stop-bytes"), MIB);
    pair.down_both();
    pair.assert_data_identical();
    eprintln!("(d) corrupted {want} bytes, verify found {want}, repair resynced {moved}");
}

// ---------------------------------------------------------------------------
// (e) pause-sync / resume-sync visible in status; invalidate / invalidate-remote
// ---------------------------------------------------------------------------

#[test]
fn pause_resume_and_invalidate() {
    let pair = synced_pair(4, 1);
    let size = pair.data_size();
    // invalidate on beta: a full resync from alpha, paused and resumed on the way.
    let before = resyncs(&pair, Alpha).len();
    pair.adm_ok(Beta, &["invalidate", RES]);
    pair.wait_status(Beta, "SyncTarget", Duration::from_secs(10), |s| {
        repl(&peer_of(s)) == "SyncTarget" && s.str_at("disk-state") == "Inconsistent"
    });
    pair.adm_ok(Alpha, &["pause-sync", RES]);
    let s = pair.wait_status(Alpha, "PausedSyncS", Duration::from_secs(10), |s| {
        repl(&peer_of(s)) == "PausedSyncS"
    });
    pair.wait_status(Beta, "PausedSyncT", Duration::from_secs(10), |s| {
        repl(&peer_of(s)) == "PausedSyncT"
    });
    let o = pair.adm_ok(Alpha, &["status", RES]);
    assert!(o.stdout.contains("PausedSyncS"), "{}", o.stdout);
    std::thread::sleep(Duration::from_millis(500)); // what was in flight lands
    let held = oos(&pair.peer_status(Alpha));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        oos(&pair.peer_status(Alpha)),
        held,
        "nothing moves while paused: {s}"
    );
    assert!(held > 0);
    let o = pair.adm(Beta, &["resume-sync", RES]);
    assert!(
        !o.status.success(),
        "beta did not pause it: {}",
        o.describe()
    );
    pair.adm_ok(Alpha, &["resume-sync", RES]);
    pair.wait_status(Alpha, "SyncSource", Duration::from_secs(10), |s| {
        let r = repl(&peer_of(s));
        r == "SyncSource" || r == "Established"
    });
    pair.wait_sync(Beta, 60);
    let moved = wait_resyncs(&pair, Alpha, before + 1)[before];
    assert_eq!(moved, size, "invalidate: a full resync");
    // invalidate on the Primary is refused; invalidate-remote from it is a full resync too.
    let o = pair.adm(Alpha, &["invalidate", RES]);
    assert!(!o.status.success(), "{}", o.describe());
    pair.adm_ok(Alpha, &["invalidate-remote", RES]);
    pair.wait_sync(Alpha, 60);
    pair.wait_sync(Beta, 30);
    assert_eq!(wait_resyncs(&pair, Alpha, before + 2)[before + 1], size);
    pair.down_both();
    pair.assert_data_identical();
}

// ---------------------------------------------------------------------------
// (f) csums-alg: invalidate on a pair whose data is identical except a few blocks moves only
// the 64 KiB comparison units holding those blocks (PROTOCOL.md §7.6.4)
// ---------------------------------------------------------------------------

#[test]
fn csums_invalidate_sends_only_the_differing_blocks() {
    const UNIT: u64 = 64 << 10;
    let mut pair = Pair::new("C", IMAGE_MIB);
    pair.set_extra_config(&format!(
        "{}csums-alg = \"crc32c\"\n",
        resync_config(200, 20)
    ));
    pair.initial_sync();
    let size = pair.data_size();
    // Data that is not all zeroes: the comparison must see it.
    nbd_write(&pair, Alpha, &scattered(11, 300, size));
    pair.wait_sync(Alpha, 30);
    // A few blocks differ on beta, behind urbd's back (each in its own 64 KiB unit).
    pair.down(Beta);
    let bad: Vec<u64> = vec![7, 1000, 2049, (size / BLOCK) - 1];
    for &b in &bad {
        write_at(
            pair.disk(Beta),
            b * BLOCK + 100,
            b"differs before invalidate",
        );
    }
    pair.up(Beta);
    pair.wait_connect(Alpha, 30);
    pair.wait_sync(Alpha, 30);
    let before = resyncs(&pair, Alpha).len();
    pair.adm_ok(Beta, &["invalidate", RES]);
    pair.wait_sync(Beta, 60);
    pair.wait_sync(Alpha, 30);
    let done = wait_resyncs(&pair, Alpha, before + 1)[before];
    assert_eq!(done, size, "every block is in sync after a full resync");
    // The last unit is shorter when the size is not a multiple of 64 KiB.
    let want_sent: u64 = bad
        .iter()
        .map(|b| {
            let start = b * BLOCK / UNIT * UNIT;
            UNIT.min(size - start)
        })
        .sum();
    let s = pair.wait_status(Alpha, "last-resync", Duration::from_secs(10), |s| {
        peer_of(s).has("last-resync")
    });
    let last = peer_of(&s).get("last-resync").clone();
    assert_eq!(last.str_at("side"), "SyncSource", "{last}");
    assert_eq!(last.str_at("csums-alg"), "crc32c", "{last}");
    assert_eq!(
        last.u64_at("sent-bytes"),
        want_sent,
        "only the differing units: {last}"
    );
    assert_eq!(last.u64_at("in-sync-bytes"), size - want_sent, "{last}");
    let t = peer_of(&pair.status(Beta)).get("last-resync").clone();
    assert_eq!(t.str_at("side"), "SyncTarget", "{t}");
    assert_eq!(t.u64_at("sent-bytes"), want_sent, "beta received: {t}");
    let log = pair.log(Alpha);
    assert!(
        log.contains(&format!(
            "crc32c checksums: {} bytes in sync, {want_sent} bytes sent",
            size - want_sent
        )),
        "{}",
        pair.logs_tail(20)
    );
    eprintln!(
        "(f) {} blocks differed: csums resync sent {want_sent} of {size} bytes in {} ms",
        bad.len(),
        last.u64_at("duration-ms")
    );
    pair.down_both();
    pair.assert_data_identical();
}
