//! Fault scenario 6: disk errors under a replicated pair (issue: fault scenarios with real
//! processes). Two real `urbd run` daemons; each node's disk goes through the daemon's test-only
//! fault plan (`[testing] disk-fault-plan`, docs/OPERATIONS.md "Disk errors"), a file the test
//! rewrites to inject EIO while the daemons run.
//!
//! - (a) write errors on the Secondary's disk → it detaches (Diskless), the Primary goes on and
//!   every acknowledged write reads back; after the disk is repaired, `down` + `up` → a bitmap
//!   resync of the marked blocks only, then identical disks.
//! - (b) read errors on the Primary's disk → the read is served from the peer (right data);
//!   with the peer away → EIO, never wrong data.
//!
//! Run: `cargo build --release --bins && cargo test --release -p urbd-tests --test faults_disk
//! -- --test-threads=1 --nocapture`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use urbd_tests::nbdraw::RawClient;
use urbd_tests::pair::{peer_of, Alpha, Beta, Node, Pair, RES};
use urbd_tests::{report, Json, Prng, MIB};

const IMAGE_MIB: u64 = 32;
const BLOCK: u64 = 4096;

/// A synced pair (alpha Primary) whose nodes each read their own fault plan file (absent: no
/// faults). Returns the pair and the two plan paths.
fn pair_with_fault_plans() -> (Pair, [PathBuf; 2]) {
    let mut pair = Pair::new("C", IMAGE_MIB);
    let secret = pair.secret(Alpha).to_string();
    // Own config dirs, so that each node's file names its own plan.
    pair.set_secret(Alpha, &secret);
    pair.set_secret(Beta, &secret);
    let plans = [pair.dir().join("alpha.plan"), pair.dir().join("beta.plan")];
    for (node, plan) in [(Alpha, &plans[0]), (Beta, &plans[1])] {
        let text = format!(
            "{}\n[testing]\ndisk-fault-plan = \"{}\"\n",
            pair.config_text(node),
            plan.display()
        );
        std::fs::write(pair.config_dir(node).join(format!("{RES}.toml")), text).unwrap();
    }
    pair.initial_sync();
    (pair, plans)
}

fn block_data(seed: u64, block: u64) -> Vec<u8> {
    let mut rng = Prng::new(seed ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut d = vec![0u8; BLOCK as usize];
    rng.fill(&mut d);
    d
}

fn status_peer(pair: &Pair, node: Node) -> (Json, Json) {
    let s = pair.status(node);
    let p = peer_of(&s);
    (s, p)
}

fn wait_in_sync(pair: &Pair, node: Node, timeout: Duration) {
    pair.wait_status(
        node,
        "Connected, UpToDate on both, nothing out of sync",
        timeout,
        |s| {
            let p = peer_of(s);
            s.str_at("disk-state") == "UpToDate"
                && p.str_at("connection-state") == "Connected"
                && p.str_at("replication-state") == "Established"
                && p.str_at("peer-disk-state") == "UpToDate"
                && p.u64_at("out-of-sync-bytes") == 0
        },
    );
}

/// The `N` of every "resync finished: N bytes" line of `node`'s log (the SyncSource logs it).
fn resyncs(pair: &Pair, node: Node) -> Vec<u64> {
    pair.log(node)
        .lines()
        .filter_map(|l| l.split("resync finished: ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn s6a_secondary_write_errors_detach_and_reattach_resyncs() {
    let seed = report::seed();
    let (pair, plans) = pair_with_fault_plans();
    let blocks = pair.data_size() / BLOCK;
    let mut c = RawClient::connect_go(&pair.nbd_addr(Alpha), RES);
    let mut rng = Prng::new(seed);
    let mut written = std::collections::BTreeMap::new();
    let mut cookie = 1;
    for _ in 0..64 {
        let b = rng.next_u64() % (blocks / 2);
        let d = block_data(seed, b);
        c.write(cookie, b * BLOCK, &d)
            .expect("write before the fault");
        cookie += 1;
        written.insert(b, d);
    }

    // The Secondary's disk starts failing every write.
    std::fs::write(&plans[1], "write-eio 0 all\nflush-eio\n").unwrap();
    let t0 = Instant::now();
    let mut after = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let b = blocks / 2 + rng.next_u64() % (blocks / 2);
        let d = block_data(seed + 1, b);
        c.write(cookie, b * BLOCK, &d)
            .expect("the Primary goes on while the Secondary's disk fails");
        cookie += 1;
        written.insert(b, d);
        after.insert(b);
    }
    pair.wait_status(Beta, "beta Diskless", Duration::from_secs(20), |s| {
        s.str_at("disk-state") == "Diskless"
    });
    let detach_s = t0.elapsed().as_secs_f64();
    assert!(
        pair.log(Beta)
            .contains("detaching the disk (on-io-error = detach)"),
        "beta's log names the detach:\n{}",
        pair.logs_tail(30)
    );
    // The Primary sees the Diskless peer (reconnected) and marks every write since.
    pair.wait_status(
        Alpha,
        "alpha connected to a Diskless peer",
        Duration::from_secs(20),
        |s| {
            let p = peer_of(s);
            p.str_at("connection-state") == "Connected" && p.str_at("peer-disk-state") == "Diskless"
        },
    );
    for _ in 0..32 {
        let b = blocks / 2 + rng.next_u64() % (blocks / 2);
        let d = block_data(seed + 2, b);
        c.write(cookie, b * BLOCK, &d)
            .expect("writes go on with a Diskless peer");
        cookie += 1;
        written.insert(b, d);
        after.insert(b);
    }
    let (_, p) = status_peer(&pair, Alpha);
    let marked = p.u64_at("out-of-sync-bytes");
    assert!(
        marked >= after.len() as u64 * BLOCK,
        "every write since the failure is marked: {marked} bytes for {} blocks",
        after.len()
    );
    assert!(
        pair.adm(Beta, &["primary", RES]).status.code() != Some(0),
        "a Diskless node is not promotable"
    );
    // No false ack: everything acknowledged reads back from the Primary.
    for (b, d) in &written {
        let got = c.read(cookie, b * BLOCK, BLOCK as u32).expect("read");
        cookie += 1;
        assert!(&got == d, "block {b} reads back as acknowledged");
    }
    c.disconnect();

    // Repair the disk, re-attach: down + up, then a bitmap resync of the marked blocks only.
    std::fs::remove_file(&plans[1]).unwrap();
    let before = resyncs(&pair, Alpha).len();
    pair.down(Beta);
    let t1 = Instant::now();
    pair.up(Beta);
    wait_in_sync(&pair, Alpha, Duration::from_secs(60));
    wait_in_sync(&pair, Beta, Duration::from_secs(60));
    let converge_s = t1.elapsed().as_secs_f64();
    let r = resyncs(&pair, Alpha);
    assert!(r.len() > before, "beta resynced after re-attach: {r:?}");
    let moved: u64 = r[before..].iter().sum();
    assert!(
        moved >= after.len() as u64 * BLOCK && moved <= marked + 16 * MIB,
        "the resync moved the marked blocks, not the disk: {moved} bytes moved, {marked} marked"
    );
    assert!(
        moved < IMAGE_MIB * MIB,
        "not a full sync: {moved} bytes of {} MiB",
        IMAGE_MIB
    );
    pair.down_both();
    pair.assert_data_identical();
    report::scenario(
        "6a Secondary write errors",
        "the Secondary detached (Diskless, not promotable), no write failed or was lost on the \
         Primary, re-attach resynced only the marked blocks, disks identical",
        &format!(
            "detached {detach_s:.1} s after the fault, {} blocks written meanwhile, {marked} bytes \
             marked, {moved} bytes resynced after re-attach, in sync {converge_s:.1} s after `up`",
            after.len()
        ),
    );
}

#[test]
fn s6b_primary_read_errors_served_by_the_peer_or_eio() {
    let seed = report::seed();
    let (pair, plans) = pair_with_fault_plans();
    let mut c = RawClient::connect_go(&pair.nbd_addr(Alpha), RES);
    let first = 256u64; // block index of the faulty range
    let count = 16u64;
    let mut cookie = 1;
    for b in first..first + count {
        c.write(cookie, b * BLOCK, &block_data(seed, b))
            .expect("write");
        cookie += 1;
    }
    // Let a barrier make the peer's copies durable and confirmed.
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(
        &plans[0],
        format!("read-eio {} {}\n", first * BLOCK, count * BLOCK),
    )
    .unwrap();
    // Every read of the range fails locally and is served from the peer: the right data.
    let t0 = Instant::now();
    for b in first..first + count {
        let got = c
            .read(cookie, b * BLOCK, BLOCK as u32)
            .unwrap_or_else(|e| panic!("block {b}: read failed with NBD error {e}"));
        cookie += 1;
        assert!(got == block_data(seed, b), "block {b}: the peer's copy");
    }
    let served_ms = t0.elapsed().as_millis();
    assert!(
        pair.log(Alpha).contains("reading it from the peer"),
        "alpha logs that it asked the peer:\n{}",
        pair.logs_tail(30)
    );
    // A larger read spanning the range and its neighbours.
    let got = c
        .read(cookie, (first - 4) * BLOCK, ((count + 8) * BLOCK) as u32)
        .expect("a read spanning the faulty range");
    cookie += 1;
    for (k, chunk) in got.chunks(BLOCK as usize).enumerate() {
        let b = first - 4 + k as u64;
        if (first..first + count).contains(&b) {
            assert!(
                chunk == block_data(seed, b),
                "block {b} in the spanning read"
            );
        }
    }

    // The peer away: the read fails cleanly (EIO), never wrong data.
    pair.adm_ok(Alpha, &["disconnect", RES]);
    let e = c
        .read(cookie, first * BLOCK, BLOCK as u32)
        .expect_err("no peer: the read must fail");
    cookie += 1;
    assert_eq!(e, 5, "EIO (NBD error 5)");
    // Writes to other ranges go on.
    c.write(cookie, 0, &block_data(seed, 0))
        .expect("writes elsewhere go on");
    cookie += 1;
    // The disk repaired: reads are local again.
    std::fs::remove_file(&plans[0]).unwrap();
    let got = c.read(cookie, first * BLOCK, BLOCK as u32).expect("read");
    assert!(got == block_data(seed, first));
    c.disconnect();
    pair.adm_ok(Alpha, &["connect", RES]);
    wait_in_sync(&pair, Alpha, Duration::from_secs(60));
    pair.down_both();
    pair.assert_data_identical();
    report::scenario(
        "6b Primary read errors",
        "every read of a failing range returned the peer's (current) copy; with the peer away \
         it failed with EIO, never wrong data",
        &format!(
            "{count} blocks served by the peer in {served_ms} ms, EIO without the peer, disks \
             identical"
        ),
    );
}

/// Reads and counts the connection-loss lines of `node`'s log.
fn peer_losses(pair: &Pair, node: Node) -> usize {
    pair.log(node).matches("peer lost:").count()
}

#[test]
fn s6c_slow_secondary_disk_never_stalls_the_primary() {
    let seed = report::seed();
    let (pair, plans) = pair_with_fault_plans();
    let mut c = RawClient::connect_go(&pair.nbd_addr(Alpha), RES);
    let mut cookie = 1;
    let losses0 = peer_losses(&pair, Alpha);

    // Slow, below timeout-ms (4 s in the tests): writes are slower, the link stays up.
    std::fs::write(&plans[1], "write-delay-ms 300\n").unwrap();
    let t0 = Instant::now();
    for b in 0..8u64 {
        c.write(cookie, b * BLOCK, &block_data(seed, b))
            .expect("a write with a slow peer disk");
        cookie += 1;
    }
    let slow_ms = t0.elapsed().as_millis() / 8;
    assert!(
        slow_ms >= 250,
        "protocol C waits for the peer's (slow) disk: {slow_ms} ms per write"
    );
    assert_eq!(
        peer_losses(&pair, Alpha),
        losses0,
        "no disconnect while the peer's disk is slow but within timeout-ms:\n{}",
        pair.logs_tail(20)
    );

    // Hung, beyond timeout-ms: the Primary drops the peer and goes on alone.
    std::fs::write(&plans[1], "write-delay-ms 8000\n").unwrap();
    let t1 = Instant::now();
    c.write(cookie, 64 * BLOCK, &block_data(seed, 64))
        .expect("a write while the peer's disk hangs completes once the peer is dropped");
    cookie += 1;
    let stalled_s = t1.elapsed().as_secs_f64();
    assert!(
        stalled_s < 8.0,
        "the Primary did not wait for the hung disk: {stalled_s:.1} s"
    );
    assert!(
        pair.log(Alpha)
            .contains("peer did not answer a request within timeout-ms"),
        "alpha names why it dropped the peer:\n{}",
        pair.logs_tail(20)
    );
    let t2 = Instant::now();
    for b in 65..72u64 {
        c.write(cookie, b * BLOCK, &block_data(seed, b))
            .expect("writes go on");
        cookie += 1;
    }
    let alone_ms = t2.elapsed().as_millis() / 7;

    // The disk recovers: reconnect, resync, identical.
    std::fs::remove_file(&plans[1]).unwrap();
    let t3 = Instant::now();
    wait_in_sync(&pair, Alpha, Duration::from_secs(90));
    let converge_s = t3.elapsed().as_secs_f64();
    for b in (0..8u64).chain(64..72) {
        let got = c.read(cookie, b * BLOCK, BLOCK as u32).expect("read");
        cookie += 1;
        assert!(
            got == block_data(seed, b),
            "block {b} reads back as acknowledged"
        );
    }
    c.disconnect();
    pair.down_both();
    pair.assert_data_identical();
    report::scenario(
        "6c slow and hung Secondary disk",
        "a slow peer disk (below timeout-ms) causes no disconnect; a hung one is dropped after \
         timeout-ms and the Primary goes on; after recovery the pair converges, disks identical",
        &format!(
            "{slow_ms} ms per write with a 300 ms peer disk, the write behind a hung peer disk \
             took {stalled_s:.1} s, then {alone_ms} ms per write alone, in sync {converge_s:.1} s \
             after the disk recovered"
        ),
    );
}
