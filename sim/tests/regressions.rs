//! Seeds that found core bugs, replayed on the real core (each must pass now). The seed
//! numbers are those of the simulator as committed; the bugs are listed in docs/SIMULATION.md.

use urbd_sim::{run, Options};

fn passes(seed: u64) {
    passes_with(Options {
        seed,
        ..Options::default()
    });
}

fn passes_with(opts: Options) {
    let seed = opts.seed;
    let r = run(&opts);
    assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
}

/// A crashed-primary flag outlived a resync as SyncTarget; after a detach (Outdated) rule 40b
/// kept picking that node as source, which an Outdated disk may not be.
#[test]
fn seed_140_crashed_primary_flag_spent_as_target() {
    passes(140);
}

/// With the Secondary's cache volatile, a power cut right after ResyncDone left an UpToDate
/// superblock over resync writes lost from the cache.
#[test]
fn strict_seed_261_target_flushes_before_up_to_date() {
    passes_with(Options {
        seed: 261,
        strict_peer_cache: true,
        ..Options::default()
    });
}

/// Two forced Primaries of unrelated generations met: the "two Primaries" assertion fired while
/// the connection was being refused.
#[test]
fn reckless_seed_34_refused_connection_of_two_primaries() {
    passes_with(Options {
        seed: 34,
        reckless: true,
        ..Options::default()
    });
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

/// Simulator operator: failed over to a node that missed writes acknowledged while the link was
/// down (its freshness was not revoked).
#[test]
fn seed_1052_no_failover_to_a_stale_node() {
    passes(1052);
}

/// Simulator: a stale "wrote alone" mark (freshness updated on ticks only) flagged a split brain
/// that was not one.
#[test]
fn reckless_seed_569_freshness_follows_every_step() {
    passes_with(Options {
        seed: 569,
        reckless: true,
        ..Options::default()
    });
}

/// A Primary demoted a moment before losing its peer marked its own unconfirmed writes but kept
/// the generation: the reconnect (rule 40, a tie-break) resynced over them. Now a node marking
/// its own unconfirmed writes starts a new generation (rule 70 makes it source).
#[test]
fn seed_1089_own_unconfirmed_writes_new_generation() {
    passes(1089);
}

/// Blocks a Primary marked after its peer's failed writes (NegAck), then demoted: with the same
/// generation a tie-break chose the peer as source. Now the only side with marked blocks is.
#[test]
fn seed_1914_the_side_with_marked_blocks_is_source() {
    passes(1914);
}
