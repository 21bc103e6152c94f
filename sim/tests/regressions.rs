//! Seeds that found core bugs, replayed on the real core (each must pass now). The seed
//! numbers are those of the simulator as committed; the bugs are listed in docs/SIMULATION.md.

use urbd_sim::{run, Options};

fn passes(seed: u64) {
    let r = run(&Options {
        seed,
        ..Options::default()
    });
    assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
}

/// Interrupted initial sync + crash while persisting the second SyncUuid: "unrelated data"
/// (the previous bitmap UUID was not moved to history, rules 51/71 never matched).
#[test]
fn seed_0_sync_uuid_history() {
    passes(0);
}

/// A SyncTarget crashed while persisting the SyncUuid, and the source then restarted resyncs
/// until the target's generation left its two history slots: "unrelated data" forever (rule
/// 1000). Now rule 1003: an Inconsistent target of unrelated generations gets a full sync.
#[test]
fn seed_362_unrelated_inconsistent_target() {
    passes(362);
}

/// A resync read in flight across a reconnect panicked ("resync read is tracked"); a peer
/// flush in flight across a reconnect panicked ("tracked peer flush").
#[test]
fn seeds_1_to_361_pass() {
    for seed in 1..362 {
        passes(seed);
    }
}
