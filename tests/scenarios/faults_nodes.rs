//! Node faults (issue 6, scenarios 1, 4, 5, 7, 8): real `urbd run` daemons killed with
//! SIGKILL, restarted, split, corrupted behind their back and given a blank disk, with the
//! tagged-block checker (`urbd_tests::checker`) and a real ext4 (nbdfuse + losetup) as clients.
//! Every test asserts its invariant — every acknowledged write where it must be, the data
//! regions identical at the end, only what changed resynced — and ends with a report line
//! (`urbd_tests::report::scenario`) carrying its figures.
//!
//! Random choices (when to kill, which blocks to corrupt, who loses a split brain...) come from
//! `URBD_FAULT_SEED` (`urbd_tests::report::seed`); a failing run replays with the seed it
//! printed. `scripts/soak.sh` loops these tests with a new seed per round.
//!
//! Run: `cargo build --release --bins && cargo test --release -p urbd-tests --test faults_nodes
//! -- --test-threads=1 --nocapture`. Scenario 1 needs root, /dev/fuse, loop devices, nbdfuse
//! and e2fsprogs (else it prints SKIPPED).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use urbd_tests::checker::{Checker, EndReason, RunOpts, BLOCK};
use urbd_tests::pair::{peer_of, Alpha, Beta, Node, Pair, RES};
use urbd_tests::report;
use urbd_tests::tools::{wait_timeout, wait_until, Output};
use urbd_tests::util::{read_at, write_at};
use urbd_tests::{require_root, require_tool, Cmd, Json, Prng, MIB};

const IMAGE_MIB: u64 = 32;

fn resync_config(max_mib: u64, min_mib: u64) -> String {
    format!(
        "[resync]\nrate-bytes-per-s-max = {}\nrate-bytes-per-s-min = {}\n",
        max_mib * MIB,
        min_mib * MIB
    )
}

/// A synced pair (alpha Primary, protocol C) with the given resync rates and extra TOML.
fn synced_pair(size_mib: u64, max_mib: u64, min_mib: u64, extra: &str) -> Pair {
    let mut pair = Pair::new("C", size_mib);
    pair.set_extra_config(&format!("{}{extra}", resync_config(max_mib, min_mib)));
    pair.initial_sync();
    pair
}

/// The `N` of every "resync finished: N bytes" line of `node`'s log, in order.
fn resyncs(pair: &Pair, node: Node) -> Vec<u64> {
    pair.log(node)
        .lines()
        .filter_map(|l| l.split("resync finished: ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

/// Wait until `node`'s log shows `count` finished resyncs; returns them all.
#[track_caller]
fn wait_resyncs(pair: &Pair, node: Node, count: usize) -> Vec<u64> {
    let mut r = Vec::new();
    let ok = wait_until(Duration::from_secs(90), || {
        r = resyncs(pair, node);
        r.len() >= count
    });
    assert!(
        ok,
        "{node}: {count} finished resyncs wanted, log shows {r:?}\n{}",
        pair.logs_tail(40)
    );
    r
}

fn repl(p: &Json) -> String {
    p.str_at("replication-state").to_string()
}

fn oos(p: &Json) -> u64 {
    p.u64_at("out-of-sync-bytes")
}

fn conn(p: &Json) -> String {
    p.str_at("connection-state").to_string()
}

/// Connected, Established, nothing out of sync, both disks UpToDate (as `node` sees it).
#[track_caller]
fn wait_in_sync(pair: &Pair, node: Node, timeout: Duration) -> Json {
    pair.wait_status(node, "in sync", timeout, |s| {
        let p = peer_of(s);
        conn(&p) == "Connected"
            && repl(&p) == "Established"
            && oos(&p) == 0
            && p.str_at("peer-disk-state") == "UpToDate"
            && s.str_at("disk-state") == "UpToDate"
    })
}

/// The first line of a refused command's output (what an operator reads).
fn refusal(o: &Output) -> String {
    let text = if o.stderr.trim().is_empty() {
        &o.stdout
    } else {
        &o.stderr
    };
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// `urbdadm primary` on `node` must be refused; returns the refusal line.
#[track_caller]
fn assert_primary_refused(pair: &Pair, node: Node, why: &str) -> String {
    let o = pair.adm(node, &["primary", RES]);
    assert!(
        !o.status.success(),
        "{node} was promoted although {why}\n{}\n{}",
        o.describe(),
        pair.logs_tail(30)
    );
    let line = refusal(&o);
    assert!(!line.is_empty(), "refused without a word\n{}", o.describe());
    let s = pair.status(node);
    assert_eq!(
        s.str_at("role"),
        "Secondary",
        "{node} after a refused promotion: {s}"
    );
    line
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Blocks `[from, to)` as a plain string for figures.
fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / MIB as f64)
}

// ---------------------------------------------------------------------------
// Scenario 4a: the Secondary SIGKILLed and restarted under load
// ---------------------------------------------------------------------------

#[test]
fn s4a_secondary_kill9_and_restart_under_load() {
    let seed = report::seed();
    let mut rng = Prng::new(seed ^ 0x4a);
    let pair = synced_pair(IMAGE_MIB, 50, 5, "");
    let region_blocks = 2048; // 8 MiB
    let ck = Checker::new(1, 0, region_blocks, seed);
    let run = ck.spawn(
        pair.nbd_addr(Alpha),
        RunOpts {
            max_writes: 1_000_000,
            depth: 4,
            max_time: Duration::from_secs(120),
            ..RunOpts::default()
        },
    );
    assert!(
        run.wait_acked(300, Duration::from_secs(30)),
        "the checker got only {} writes acknowledged in 30 s\n{}",
        run.acked(),
        pair.logs_tail(30)
    );
    thread::sleep(Duration::from_millis(rng.next_u64() % 1000));
    let at_kill = run.acked();
    pair.kill9(Beta);
    let killed = Instant::now();
    // The Primary goes on: more acknowledged writes, no failure.
    assert!(
        run.wait_acked(at_kill + 500, Duration::from_secs(30)),
        "the Primary stopped acknowledging writes after its Secondary died ({} acked)\n{}",
        run.acked(),
        pair.logs_tail(30)
    );
    let stalled = killed.elapsed();
    let s = pair.wait_status(Alpha, "the peer lost", Duration::from_secs(15), |s| {
        conn(&peer_of(s)) != "Connected"
    });
    assert_eq!(s.str_at("role"), "Primary", "{s}");
    assert_eq!(s.str_at("disk-state"), "UpToDate", "{s}");
    thread::sleep(Duration::from_millis(500 + rng.next_u64() % 1500));
    let marked = oos(&pair.peer_status(Alpha));
    assert!(
        marked > 0 && marked <= region_blocks * BLOCK,
        "out-of-sync-bytes {marked}: the writes made while beta was away, inside the checker's \
         region"
    );
    let acked_while_away = run.acked() - at_kill;

    let before = resyncs(&pair, Alpha).len();
    let up_at = Instant::now();
    pair.up(Beta);
    wait_in_sync(&pair, Beta, Duration::from_secs(90));
    wait_in_sync(&pair, Alpha, Duration::from_secs(30));
    let converged = up_at.elapsed();
    let moved = wait_resyncs(&pair, Alpha, before + 1)[before];
    // Keep writing a little while connected again, then stop.
    let at_sync = run.acked();
    assert!(
        run.wait_acked(at_sync + 200, Duration::from_secs(30)),
        "writes stopped after the resync"
    );
    let (ck, end) = run.stop_and_join();
    assert_eq!(end.reason, EndReason::Stopped, "checker run: {end}");
    assert!(end.errors.is_empty(), "a write failed: {end}");
    assert_eq!(end.unanswered, 0, "{end}");
    assert!(
        moved >= marked && moved <= region_blocks * BLOCK,
        "the bitmap resync moves what was marked ({marked}) and at most the checker's region: \
         {moved}"
    );

    let v = ck.verify(&pair.nbd_addr(Alpha));
    v.assert_ok("alpha, the Primary");
    pair.down_both();
    ck.verify_image(&pair.data_region(Beta))
        .assert_ok("beta's disk after the resync");
    pair.assert_data_identical();
    report::scenario(
        "4a secondary SIGKILL + restart under load",
        "no write fails or stalls while the Secondary is dead; bitmap resync of what it missed \
         only; every acknowledged block on both disks; data regions identical",
        &format!(
            "{} FUA writes acked ({} while beta was away, first 500 after the kill within \
             {:.2} s), marked {}, resynced {}, converged {:.1} s after up; {v}",
            end.acked,
            acked_while_away,
            secs(stalled),
            mib(marked),
            mib(moved),
            secs(converged)
        ),
    );
}

// ---------------------------------------------------------------------------
// Scenario 4b: the Primary (SyncSource) SIGKILLed mid-resync
// ---------------------------------------------------------------------------

#[test]
fn s4b_primary_kill9_during_resync() {
    let seed = report::seed();
    let mut rng = Prng::new(seed ^ 0x4b);
    let pair = synced_pair(IMAGE_MIB, 4, 1, "");
    let region_blocks = 4096; // 16 MiB
    let mut ck = Checker::new(1, 0, region_blocks, seed);
    let no_stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    pair.adm_ok(Alpha, &["disconnect", RES]);
    let opts = RunOpts {
        max_writes: 6000 + rng.next_u64() % 3000,
        depth: 8,
        ..RunOpts::default()
    };
    let end = ck.run(&pair.nbd_addr(Alpha), RES, &opts, &no_stop, &count);
    assert_eq!(end.reason, EndReason::Limit, "{end}");
    assert!(end.errors.is_empty(), "{end}");
    let marked = oos(&pair.peer_status(Alpha));
    assert_eq!(
        marked,
        end.block_bytes(),
        "out-of-sync-bytes = the blocks written while disconnected"
    );

    pair.adm_ok(Alpha, &["connect", RES]);
    // At 4 MiB/s: kill once a quarter or so has moved, with writes going on.
    let target_left = marked * (50 + rng.next_u64() % 30) / 100;
    pair.wait_status(Beta, "resync under way", Duration::from_secs(30), |s| {
        let p = peer_of(s);
        repl(&p) == "SyncTarget" && oos(&p) < target_left
    });
    let run = ck.spawn(
        pair.nbd_addr(Alpha),
        RunOpts {
            max_writes: 1_000_000,
            depth: 4,
            ..RunOpts::default()
        },
    );
    assert!(
        run.wait_acked(100, Duration::from_secs(30)),
        "writes during the resync: {} acked\n{}",
        run.acked(),
        pair.logs_tail(30)
    );
    let s = pair.status(Beta);
    assert_eq!(
        s.str_at("disk-state"),
        "Inconsistent",
        "beta mid-resync: {s}"
    );
    pair.kill9(Alpha);
    let (mut ck, end2) = run.join();
    assert!(
        end2.reason.is_connection(),
        "the writer ends with the Primary's death: {end2}"
    );
    assert!(end2.errors.is_empty(), "{end2}");

    // The target is Inconsistent: never promotable.
    pair.wait_status(Beta, "the peer lost", Duration::from_secs(15), |s| {
        conn(&peer_of(s)) != "Connected"
    });
    let refused_1 = assert_primary_refused(&pair, Beta, "its disk is Inconsistent");
    let s = pair.status(Beta);
    assert_eq!(s.str_at("disk-state"), "Inconsistent", "{s}");
    let left = oos(&peer_of(&s));
    assert!(
        left > 0 && left <= region_blocks * BLOCK,
        "beta's bitmap keeps the rest: {left}"
    );

    let up_at = Instant::now();
    pair.up(Alpha);
    pair.wait_status(Beta, "resync resumed", Duration::from_secs(30), |s| {
        let p = peer_of(s);
        repl(&p) == "SyncTarget" || repl(&p) == "PausedSyncT"
    });
    let refused_2 = assert_primary_refused(&pair, Beta, "it is SyncTarget");
    pair.wait_sync(Beta, 90);
    pair.wait_sync(Alpha, 30);
    let converged = up_at.elapsed();
    let after = *wait_resyncs(&pair, Alpha, 1).last().unwrap();
    assert!(
        after >= left && after <= region_blocks * BLOCK,
        "after the restart what was left ({left}) plus the writes in flight and the hot \
         activity-log extents move, inside the written region: {after}"
    );
    // Both come back Secondary; the old Primary's data (acked writes, maybe in-flight ones) is
    // on both disks.
    pair.adm_ok(Alpha, &["primary", RES]);
    let v = ck.verify(&pair.nbd_addr(Alpha));
    v.assert_ok("alpha after restart and resync");
    // One more short run on the re-promoted node, then verify again.
    let end3 = ck.run(
        &pair.nbd_addr(Alpha),
        RES,
        &RunOpts {
            max_writes: 300,
            ..RunOpts::default()
        },
        &no_stop,
        &count,
    );
    assert_eq!(end3.reason, EndReason::Limit, "{end3}");
    pair.secondary(Alpha);
    pair.down_both();
    ck.verify_image(&pair.data_region(Beta)).assert_ok("beta");
    ck.verify_image(&pair.data_region(Alpha)).assert_ok("alpha");
    pair.assert_data_identical();
    report::scenario(
        "4b primary SIGKILL during resync",
        "the SyncTarget is refused promotion while Inconsistent and while SyncTarget; the resync \
         resumes after restart and completes; every acknowledged block on both; identical",
        &format!(
            "marked {} ({} writes), killed with {} left and {} writes unanswered, resynced {} \
             after restart in {:.1} s; refusals: {refused_1:?} / {refused_2:?}; {v}",
            mib(marked),
            end.acked,
            mib(left),
            end2.unanswered,
            mib(after),
            secs(converged)
        ),
    );
}

// ---------------------------------------------------------------------------
// Scenario 5: split brain, 10 rounds
// ---------------------------------------------------------------------------

#[test]
fn s5_split_brain_ten_rounds() {
    let seed = report::seed();
    let mut rng = Prng::new(seed ^ 0x5);
    let pair = synced_pair(IMAGE_MIB, 50, 5, "");
    let region_blocks = 1024;
    // The survivors' data: one checker, whichever node survives each round.
    let mut ck = Checker::new(1, 0, region_blocks, seed);
    let no_stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let mut primary = Alpha;
    let mut per_round = Vec::new();
    let started = Instant::now();
    for round in 0..10u64 {
        let secondary = primary.peer();
        let survivor = if rng.next_u64() % 2 == 0 { Alpha } else { Beta };
        let victim = survivor.peer();
        let before = resyncs(&pair, survivor).len();
        pair.adm_ok(primary, &["disconnect", RES]);
        pair.adm_ok(secondary, &["disconnect", RES]);
        pair.adm_ok(secondary, &["primary", RES]);
        let opts = RunOpts {
            max_writes: 100 + rng.next_u64() % 200,
            ..RunOpts::default()
        };
        let ends = ck.run(&pair.nbd_addr(survivor), RES, &opts, &no_stop, &count);
        assert_eq!(ends.reason, EndReason::Limit, "round {round}: {ends}");
        // The victim writes over the same region: none of it may survive the resolution.
        let mut vck = Checker::new(100 + round, 0, region_blocks, seed ^ round);
        let opts = RunOpts {
            max_writes: 100 + rng.next_u64() % 200,
            ..RunOpts::default()
        };
        let endv = vck.run(&pair.nbd_addr(victim), RES, &opts, &no_stop, &count);
        assert_eq!(endv.reason, EndReason::Limit, "round {round}: {endv}");
        let changed: BTreeSet<u64> = ends.blocks.union(&endv.blocks).copied().collect();
        // No wait: a connection attempt made during the operator's two `disconnect`s and parked
        // by the peer's listener is never completed on the stale state in it (PROTOCOL.md §3.1
        // confirmation; `s5b_stale_parked_connection_after_quick_split`).
        let t0 = Instant::now();
        pair.adm_ok(Alpha, &["connect", RES]);
        pair.adm_ok(Beta, &["connect", RES]);
        for node in Node::BOTH {
            pair.wait_status(node, "split brain", Duration::from_secs(20), |s| {
                let p = peer_of(s);
                p.bool_at("split-brain") && conn(&p) == "StandAlone"
            });
        }
        let detected = t0.elapsed();
        pair.secondary(victim);
        pair.adm_ok(victim, &["connect", "--discard-my-data", RES]);
        pair.adm_ok(survivor, &["connect", RES]);
        wait_in_sync(&pair, survivor, Duration::from_secs(60));
        wait_in_sync(&pair, victim, Duration::from_secs(30));
        let converged = t0.elapsed();
        let moved = wait_resyncs(&pair, survivor, before + 1)[before];
        assert_eq!(
            moved,
            changed.len() as u64 * BLOCK,
            "round {round}: the resync moves the blocks written on either side, not the disk"
        );
        for n in Node::BOTH {
            let p = pair.peer_status(n);
            assert!(!p.bool_at("split-brain"), "round {round} {n}: {p}");
        }
        ck.verify(&pair.nbd_addr(survivor))
            .assert_ok(&format!("round {round}, survivor {survivor}"));
        per_round.push(format!(
            "{survivor}:{}blk/{:.1}s/{:.1}s",
            moved / BLOCK,
            secs(detected),
            secs(converged)
        ));
        primary = survivor;
    }
    pair.secondary(primary);
    pair.down_both();
    for n in Node::BOTH {
        ck.verify_image(&pair.data_region(n))
            .assert_ok(&format!("{n} at the end"));
    }
    pair.assert_data_identical();
    report::scenario(
        "5 split brain x10",
        "detected on both nodes every round; connect --discard-my-data resyncs exactly the \
         blocks written on either side; the survivor's acknowledged data intact, none of the \
         victim's left; identical",
        &format!(
            "10 rounds in {:.0} s, {} survivor writes acked; per round \
             survivor:blocks resynced/detected/converged: {}",
            secs(started.elapsed()),
            ck.total_acked,
            per_round.join(" ")
        ),
    );
}

/// A quick split (the operator's `disconnect`s, promotion and writes within the 5 s handshake
/// timeout) — the sequence that made `s5_split_brain_ten_rounds` fail while its rounds did not
/// last 5.6 s. The Primary (beta) is disconnected first; the Secondary (alpha, the
/// lower node name, which sends `Params`/`State` first) dials it within one connect interval
/// and beta's listener authenticates and parks that pair with alpha's `Params`/`State` (role
/// Secondary, the old generation) buffered in it. Then alpha is disconnected (it abandons the
/// dial), promoted, and both write. `connect` on beta took the parked pair, completed the
/// exchange from the buffered bytes and decided on alpha's stale state ("rule 70: my bitmap
/// starts at the peer's current generation": SyncSource), while alpha, on a fresh pair,
/// detected split brain; beta never reported the split brain (it stayed Connecting). Fixed by
/// the decider's confirming `State` (PROTOCOL.md §3.1): beta's attempt on the parked pair
/// fails at the EOF where the confirmation should be.
#[test]
fn s5b_stale_parked_connection_after_quick_split() {
    let seed = report::seed();
    let pair = synced_pair(IMAGE_MIB, 50, 5, "");
    pair.secondary(Alpha);
    pair.adm_ok(Beta, &["primary", RES]);
    pair.adm_ok(Beta, &["disconnect", RES]);
    // alpha (Secondary) notices and dials beta at once (connect interval 300 ms).
    thread::sleep(Duration::from_millis(700));
    pair.adm_ok(Alpha, &["disconnect", RES]);
    pair.adm_ok(Alpha, &["primary", RES]);
    let no_stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let opts = RunOpts {
        max_writes: 50,
        ..RunOpts::default()
    };
    for (node, writer) in [(Alpha, 1), (Beta, 2)] {
        let mut ck = Checker::new(writer, 0, 256, seed);
        let end = ck.run(&pair.nbd_addr(node), RES, &opts, &no_stop, &count);
        assert_eq!(end.reason, EndReason::Limit, "{node}: {end}");
    }
    let from = pair.log(Beta).lines().count();
    pair.adm_ok(Beta, &["connect", RES]);
    pair.adm_ok(Alpha, &["connect", RES]);
    for node in Node::BOTH {
        pair.wait_status(node, "split brain", Duration::from_secs(20), |s| {
            let p = peer_of(s);
            p.bool_at("split-brain") && conn(&p) == "StandAlone"
        });
    }
    // Every decision beta took after `connect` saw the split brain (none on a stale pair).
    let log = pair.log(Beta);
    let decisions: Vec<&str> = log
        .lines()
        .skip(from)
        .filter(|l| l.contains("connect decision") || l.contains("connected to peer"))
        .collect();
    assert!(
        decisions
            .iter()
            .filter(|l| l.contains("connect decision"))
            .all(|l| l.contains("split brain")),
        "beta decided on something else than split brain:\n{}",
        decisions.join("\n")
    );
    report::scenario(
        "5b quick split: no decision on a stale parked connection",
        "split brain detected on both nodes although the operator's disconnects, promotion, \
         writes and connects all fit in the handshake timeout",
        "both nodes StandAlone with split-brain: true",
    );
}

// ---------------------------------------------------------------------------
// Scenario 7: silent corruption of Secondary blocks; verify finds them, --repair fixes them
// ---------------------------------------------------------------------------

fn wait_verify(pair: &Pair, node: Node) -> Json {
    let s = pair.wait_status(node, "verify finished", Duration::from_secs(90), |s| {
        let p = peer_of(s);
        p.has("verify") && !p.get("verify").bool_at("running")
    });
    peer_of(&s).get("verify").clone()
}

#[test]
fn s7_silent_corruption_verify_and_repair() {
    let seed = report::seed();
    let mut rng = Prng::new(seed ^ 0x7);
    let pair = synced_pair(IMAGE_MIB, 100, 20, "");
    let size = pair.data_size();
    let nblocks = size / BLOCK;
    // Tagged data in [0, 8 MiB); during verify a second checker writes in [16, 20) MiB.
    let mut ck = Checker::new(1, 0, 2048, seed);
    let no_stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let end = ck.run(
        &pair.nbd_addr(Alpha),
        RES,
        &RunOpts {
            max_writes: 3000,
            ..RunOpts::default()
        },
        &no_stop,
        &count,
    );
    assert_eq!(end.reason, EndReason::Limit, "{end}");
    let live = (4096u64, 1024u64);
    // Corrupt blocks: 4 in the tagged region, 3 elsewhere (not where writes go on), never
    // adjacent (the log merges adjacent ranges), the last block of the disk always.
    let mut bad = BTreeSet::new();
    bad.insert(nblocks - 1);
    let pick = |rng: &mut Prng, lo: u64, hi: u64, bad: &mut BTreeSet<u64>, n: usize| {
        let mut added = 0;
        while added < n {
            let b = lo + rng.next_u64() % (hi - lo);
            let near = bad.range(b.saturating_sub(1)..=b + 1).next().is_some();
            let in_live = b + 1 >= live.0 && b <= live.0 + live.1;
            if !near && !in_live {
                bad.insert(b);
                added += 1;
            }
        }
    };
    pick(&mut rng, 0, 2048, &mut bad, 4);
    pick(&mut rng, 2048, nblocks - 2, &mut bad, 2);
    pair.down(Beta);
    let mut corrupted_bytes = 0;
    for &b in &bad {
        // Flip every byte of a random span of the block (so it differs for sure).
        let off = rng.next_u64() % BLOCK;
        let len = 1 + rng.next_u64() % (BLOCK - off);
        let old = read_at(pair.disk(Beta), b * BLOCK + off, len as usize);
        let new: Vec<u8> = old.iter().map(|x| x ^ (rng.next_u64() as u8 | 1)).collect();
        write_at(pair.disk(Beta), b * BLOCK + off, &new);
        corrupted_bytes += len;
    }
    pair.up(Beta);
    wait_in_sync(&pair, Alpha, Duration::from_secs(30));
    // The application writes during the verify pass.
    let writer = Checker::new(2, live.0, live.1, seed).spawn(
        pair.nbd_addr(Alpha),
        RunOpts {
            max_writes: 1_000_000,
            depth: 2,
            ..RunOpts::default()
        },
    );
    assert!(writer.wait_acked(50, Duration::from_secs(30)));
    let t0 = Instant::now();
    pair.adm_ok(Alpha, &["verify", RES]);
    let v = wait_verify(&pair, Alpha);
    let verify_s = t0.elapsed();
    let (writer_ck, wend) = writer.stop_and_join();
    assert_eq!(wend.reason, EndReason::Stopped, "{wend}");
    let want = bad.len() as u64 * BLOCK;
    assert_eq!(
        v.u64_at("out-of-sync-found-bytes"),
        want,
        "verify finds exactly the corrupted blocks {bad:?} (no false positive under writes): \
         {v}\n{}",
        pair.logs_tail(20)
    );
    let vt = wait_verify(&pair, Beta);
    assert_eq!(vt.u64_at("out-of-sync-found-bytes"), want, "beta: {vt}");
    for n in Node::BOTH {
        assert_eq!(oos(&pair.peer_status(n)), want, "marked out of sync on {n}");
    }
    let log = pair.log(Alpha);
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("online verify of"))
        .unwrap_or("")
        .to_string();
    for &b in &bad {
        let r = format!("[{}, {})", b * BLOCK, (b + 1) * BLOCK);
        assert!(line.contains(&r), "the log names {r}: {line}");
    }
    let before = resyncs(&pair, Alpha).len();
    pair.adm_ok(Alpha, &["verify", "--repair", RES]);
    let moved = wait_resyncs(&pair, Alpha, before + 1)[before];
    assert_eq!(moved, want, "repair resyncs exactly the differing blocks");
    wait_in_sync(&pair, Alpha, Duration::from_secs(30));
    wait_in_sync(&pair, Beta, Duration::from_secs(30));
    // A second pass finds nothing.
    pair.adm_ok(Alpha, &["verify", RES]);
    let v2 = wait_verify(&pair, Alpha);
    assert_eq!(v2.u64_at("out-of-sync-found-bytes"), 0, "{v2}");
    ck.verify(&pair.nbd_addr(Alpha)).assert_ok("alpha");
    writer_ck.verify(&pair.nbd_addr(Alpha)).assert_ok("alpha");
    pair.down_both();
    let beta = pair.data_region(Beta);
    ck.verify_image(&beta).assert_ok("beta after repair");
    writer_ck.verify_image(&beta).assert_ok("beta after repair");
    pair.assert_data_identical();
    report::scenario(
        "7 silent corruption of the Secondary",
        "verify reports exactly the corrupted blocks (on both nodes, in the log) while the \
         application writes; verify --repair resyncs exactly them; identical",
        &format!(
            "{} blocks corrupted ({corrupted_bytes} bytes flipped): found {} bytes, repaired {}; \
             verify pass of {} in {:.1} s with {} writes acked meanwhile",
            bad.len(),
            want,
            moved,
            mib(size),
            secs(verify_s),
            wend.acked
        ),
    );
}

// ---------------------------------------------------------------------------
// Scenario 8: total loss of the Secondary's disk
// ---------------------------------------------------------------------------

#[test]
fn s8_total_disk_loss_then_full_sync() {
    let seed = report::seed();
    let mut pair = synced_pair(IMAGE_MIB, 16, 8, "");
    let size = pair.data_size();
    let mut ck = Checker::new(1, 0, 2048, seed);
    let no_stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let end = ck.run(
        &pair.nbd_addr(Alpha),
        RES,
        &RunOpts {
            max_writes: 2000,
            ..RunOpts::default()
        },
        &no_stop,
        &count,
    );
    assert_eq!(end.reason, EndReason::Limit, "{end}");
    // beta's disk is lost: the node dies, its disk comes back blank (metadata included).
    pair.kill9(Beta);
    let len = fs::metadata(pair.disk(Beta)).unwrap().len();
    {
        let f = File::options().write(true).open(pair.disk(Beta)).unwrap();
        f.set_len(0).unwrap();
        f.set_len(len).unwrap();
        f.sync_all().unwrap();
    }
    let o = pair.adm(Beta, &["up", RES]);
    let up_refused = refusal(&o);
    assert!(
        !o.status.success(),
        "`up` on a blank disk succeeded\n{}\n{}",
        o.describe(),
        pair.logs_tail(20)
    );
    // The reason is in the daemon's log (urbdadm's own line points there).
    let log = pair.log(Beta);
    let reason = log
        .lines()
        .find(|l| l.contains("no urbd metadata"))
        .unwrap_or_else(|| {
            panic!(
                "the daemon's log does not say the metadata is missing\n{}\n{}",
                o.describe(),
                pair.logs_tail(20)
            )
        })
        .trim()
        .to_string();
    assert!(reason.contains("create-md"), "{reason}");
    let said = format!("{}{}", o.stdout, o.stderr);
    assert!(
        said.contains("metadata") || said.contains(&pair.log_path(Beta).display().to_string()),
        "urbdadm up names the problem or the log holding it: {}",
        o.describe()
    );
    assert!(
        pair.daemon_pids(Beta).is_empty(),
        "a daemon runs on a blank disk"
    );
    let o = pair.adm(Beta, &["primary", RES]);
    assert!(!o.status.success(), "{}", o.describe());
    let primary_refused = refusal(&o);
    // The Primary goes on alone meanwhile.
    let s = pair.status(Alpha);
    assert_eq!(s.str_at("role"), "Primary", "{s}");

    pair.create_md(Beta);
    let before = resyncs(&pair, Alpha).len();
    let up_at = Instant::now();
    pair.up(Beta);
    // Writes go on during the full sync.
    let run = ck.spawn(
        pair.nbd_addr(Alpha),
        RunOpts {
            max_writes: 1_000_000,
            depth: 2,
            ..RunOpts::default()
        },
    );
    let s = pair.wait_status(Beta, "full sync under way", Duration::from_secs(30), |s| {
        let p = peer_of(s);
        repl(&p) == "SyncTarget" || (repl(&p) == "Established" && oos(&p) == 0)
    });
    let mut during = String::from("(sync finished before the check)");
    if repl(&peer_of(&s)) == "SyncTarget" {
        assert_eq!(s.str_at("disk-state"), "Inconsistent", "{s}");
        during = assert_primary_refused(&pair, Beta, "it is a SyncTarget of a full sync");
    }
    wait_in_sync(&pair, Beta, Duration::from_secs(90));
    wait_in_sync(&pair, Alpha, Duration::from_secs(30));
    let synced_in = up_at.elapsed();
    let moved = wait_resyncs(&pair, Alpha, before + 1)[before];
    assert_eq!(moved, size, "a full sync of the data region");
    let last = peer_of(&pair.status(Alpha)).get("last-resync").clone();
    let (ck, wend) = run.stop_and_join();
    assert_eq!(wend.reason, EndReason::Stopped, "{wend}");
    assert!(wend.errors.is_empty(), "{wend}");
    ck.verify(&pair.nbd_addr(Alpha)).assert_ok("alpha");
    pair.down_both();
    ck.verify_image(&pair.data_region(Beta))
        .assert_ok("beta after the full sync");
    pair.assert_data_identical();
    report::scenario(
        "8 total loss of the Secondary's disk",
        "a blank disk is refused by up (metadata missing) and never promotable; create-md + up \
         brings a full sync (refused promotion while SyncTarget); every acknowledged block on \
         both; identical",
        &format!(
            "full sync of {} ({} bytes, {} sent) in {:.1} s after up ({} ms in the daemon) \
             with {} writes acked meanwhile; up refused: {up_refused:?} (log: {reason:?}); \
             primary refused: {primary_refused:?}; during sync: {during:?}",
            mib(size),
            moved,
            last.u64_at("sent-bytes"),
            secs(synced_in),
            last.u64_at("duration-ms"),
            wend.acked
        ),
    );
}

// ---------------------------------------------------------------------------
// Scenario 1: the failover story with ext4
// ---------------------------------------------------------------------------

const T: Duration = Duration::from_secs(60);

/// A file name and its contents.
type NamedData = (String, Vec<u8>);

/// nbdfuse in the background; unmounted (and reaped) on drop.
struct NbdFuse {
    child: Option<Child>,
    mountdir: PathBuf,
}

impl NbdFuse {
    fn start(dir: &Path, tag: &str, uri: &str) -> NbdFuse {
        let mountdir = dir.join(format!("fuse-{tag}"));
        fs::create_dir_all(&mountdir).unwrap();
        let pidfile = dir.join(format!("nbdfuse-{tag}.pid"));
        let log = dir.join(format!("nbdfuse-{tag}.log"));
        let child = Cmd::new("nbdfuse")
            .arg("-P")
            .arg(&pidfile)
            .arg(mountdir.join("nbd"))
            .arg(uri)
            .spawn_logged(&log);
        let mut g = NbdFuse {
            child: Some(child),
            mountdir,
        };
        let file = g.file();
        if !wait_until(Duration::from_secs(15), || {
            pidfile.exists() && file.exists()
        }) {
            let st = g.child.as_mut().unwrap().try_wait();
            panic!(
                "nbdfuse did not come up (status {st:?}); log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        g
    }

    fn file(&self) -> PathBuf {
        self.mountdir.join("nbd")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Cmd::new("fusermount3")
                .arg("-u")
                .arg(&self.mountdir)
                .timeout(T)
                .output();
            if wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                let _ = Cmd::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&self.mountdir)
                    .timeout(T)
                    .output();
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for NbdFuse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loop device, detached on drop.
struct Loop(Option<String>);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let o = Cmd::new("losetup")
            .args(["-f", "--show", "--direct-io=off"])
            .arg(file)
            .timeout(T)
            .ok();
        let dev = o.stdout.trim().to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        Loop(Some(dev))
    }

    fn dev(&self) -> &str {
        self.0.as_deref().unwrap()
    }

    fn detach(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = Cmd::new("losetup").args(["-d", &d]).timeout(T).output();
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.detach();
    }
}

/// A mounted filesystem, unmounted (lazily if need be) on drop.
struct Mount(Option<PathBuf>);

impl Mount {
    fn ext4(dev: &str, dir: &Path) -> Mount {
        fs::create_dir_all(dir).unwrap();
        Cmd::new("mount")
            .args(["-t", "ext4", dev])
            .arg(dir)
            .timeout(T)
            .ok();
        Mount(Some(dir.to_path_buf()))
    }

    /// Unmount; true if a plain umount worked (false: lazily detached).
    fn umount(&mut self) -> bool {
        let Some(d) = self.0.take() else {
            return true;
        };
        let ok = Cmd::new("umount")
            .arg(&d)
            .timeout(T)
            .output()
            .status
            .success();
        if !ok {
            let _ = Cmd::new("umount").arg("-l").arg(&d).timeout(T).output();
        }
        ok
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.umount();
    }
}

/// Write `data` to `path`, fsync the file and its directory.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    File::open(path.parent().unwrap())?.sync_all()
}

#[test]
fn s1_failover_story_ext4() {
    let t = "s1_failover_story_ext4";
    if !require_root(t) {
        return;
    }
    for tool in ["nbdfuse", "fusermount3", "mkfs.ext4", "e2fsck", "losetup"] {
        if !require_tool(t, tool) {
            return;
        }
    }
    let seed = report::seed();
    let mut rng = Prng::new(seed ^ 0x1);
    // Two 4 MiB activity-log extents at most are hot when the Primary dies: the resync after
    // its return is bounded by them plus what the new Primary wrote.
    let al_extents = 2u64;
    let pair = synced_pair(64, 100, 20, &format!("[disk]\nal-extents = {al_extents}\n"));
    let size = pair.data_size();
    let dir = pair.dir().to_path_buf();

    // ext4 on alpha, files written and synced.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut fuse_a = NbdFuse::start(&dir, "alpha", &pair.nbd_uri(Alpha));
    let mut lo_a = Loop::attach(&fuse_a.file());
    Cmd::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            lo_a.dev(),
        ])
        .timeout(T)
        .ok();
    let mnt_a = dir.join("mnt-alpha");
    let mut m_a = Mount::ext4(lo_a.dev(), &mnt_a);
    for i in 0..12 {
        let len = (rng.next_u64() % (512 << 10)) as usize + 1;
        let name = format!("synced-{i:02}.bin");
        let data = rng.bytes(len);
        write_synced(&mnt_a.join(&name), &data).unwrap();
        files.push((name, data));
    }
    Cmd::new("sync").timeout(T).ok();

    // A writer keeps writing (and fsyncing) files; alpha dies in the middle of it.
    let synced_mid: Arc<Mutex<Vec<NamedData>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mnt, synced, stop) = (mnt_a.clone(), synced_mid.clone(), stop.clone());
        let mut wrng = Prng::new(seed ^ 0x11);
        thread::spawn(move || {
            for i in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    return format!("stopped after {i} files");
                }
                let name = format!("mid-{i:04}.bin");
                let data = wrng.bytes(64 << 10);
                if let Err(e) = write_synced(&mnt.join(&name), &data) {
                    return format!("{name}: {e}");
                }
                synced.lock().unwrap().push((name, data));
            }
            "op limit".into()
        })
    };
    let n_before_kill = 5 + (rng.next_u64() % 10) as usize;
    assert!(
        wait_until(Duration::from_secs(60), || synced_mid.lock().unwrap().len()
            >= n_before_kill),
        "the writer did not get going"
    );
    pair.kill9(Alpha);
    let killed = Instant::now();
    // The writer's next write or fsync fails (or it is stuck until the mount goes away).
    let writer_end = {
        let done = wait_until(Duration::from_secs(20), || writer.is_finished());
        stop.store(true, Ordering::Relaxed);
        if done {
            writer.join().unwrap()
        } else {
            "still blocked 20 s after the kill".into()
        }
    };
    let mid: Vec<(String, Vec<u8>)> = synced_mid.lock().unwrap().clone();

    // Failover: beta promoted without --force.
    pair.wait_status(Beta, "the peer lost", Duration::from_secs(15), |s| {
        conn(&peer_of(s)) != "Connected"
    });
    pair.adm_ok(Beta, &["primary", RES]);
    let promoted = killed.elapsed();
    let clean_umount = m_a.umount();
    lo_a.detach();
    fuse_a.stop();

    // ext4 on beta: the journal replays at mount; every synced file intact; write more; fsck.
    let mut fuse_b = NbdFuse::start(&dir, "beta", &pair.nbd_uri(Beta));
    let mut lo_b = Loop::attach(&fuse_b.file());
    let mnt_b = dir.join("mnt-beta");
    let mut m_b = Mount::ext4(lo_b.dev(), &mnt_b);
    for (name, data) in files.iter().chain(&mid) {
        let got = fs::read(mnt_b.join(name))
            .unwrap_or_else(|e| panic!("{name}, synced before the kill, on beta: {e}"));
        assert!(
            got == *data,
            "{name}: contents differ on beta after failover"
        );
    }
    let mut written_after = 0u64;
    let mut after_files = Vec::new();
    for i in 0..8 {
        let name = format!("after-{i}.bin");
        let data = rng.bytes(256 << 10);
        write_synced(&mnt_b.join(&name), &data).unwrap();
        written_after += data.len() as u64;
        after_files.push((name, data));
    }
    Cmd::new("sync").timeout(T).ok();
    assert!(m_b.umount(), "umount on beta failed");
    let o = Cmd::new("e2fsck")
        .args(["-fn", lo_b.dev()])
        .timeout(T)
        .output();
    assert!(
        o.status.success(),
        "e2fsck -fn on the new Primary is not clean\n{}",
        o.describe()
    );
    lo_b.detach();
    fuse_b.stop();

    // The old Primary returns: SyncTarget of only what changed (plus its hot AL extents).
    let before = resyncs(&pair, Beta).len();
    let up_at = Instant::now();
    pair.up(Alpha);
    pair.wait_status(Alpha, "connected", Duration::from_secs(30), |s| {
        conn(&peer_of(s)) == "Connected"
    });
    let o = pair.adm(Alpha, &["primary", RES]);
    assert!(
        !o.status.success(),
        "the returning old Primary was promoted while the new one is Primary\n{}",
        o.describe()
    );
    wait_in_sync(&pair, Alpha, Duration::from_secs(90));
    wait_in_sync(&pair, Beta, Duration::from_secs(30));
    let converged = up_at.elapsed();
    let moved = wait_resyncs(&pair, Beta, before + 1)[before];
    let last = peer_of(&pair.status(Alpha)).get("last-resync").clone();
    assert_eq!(
        last.str_at("side"),
        "SyncTarget",
        "alpha was the target: {last}"
    );
    let bound = written_after + al_extents * 4 * MIB + 4 * MIB;
    assert!(
        moved >= written_after && moved <= bound && moved < size / 2,
        "the old Primary receives the blocks written since ({written_after} bytes of files + \
         metadata) plus its hot activity-log extents, far less than the disk ({size}): {moved}"
    );
    pair.down_both();
    let data = pair.assert_data_identical();
    let image = dir.join("beta-copy.img");
    fs::write(&image, &data).unwrap();
    let o = Cmd::new("e2fsck")
        .arg("-fn")
        .arg(&image)
        .timeout(T)
        .output();
    assert!(
        o.status.success(),
        "e2fsck -fn of the data region\n{}",
        o.describe()
    );
    report::scenario(
        "1 failover story (ext4)",
        "Primary SIGKILLed mid-write; Secondary promoted without --force; every fsynced file \
         intact and e2fsck clean; the old Primary comes back as SyncTarget of only what changed; \
         identical",
        &format!(
            "{} files fsynced before the kill ({} while writing), writer: {writer_end:?}; \
             promoted {:.2} s after the kill; old mount unmounted cleanly: {clean_umount}; \
             {} written on the new Primary; resynced {} of {} ({:.1}%) in {:.1} s after up",
            files.len() + mid.len(),
            mid.len(),
            secs(promoted),
            mib(written_after),
            mib(moved),
            mib(size),
            100.0 * moved as f64 / size as f64,
            secs(converged)
        ),
    );
}
