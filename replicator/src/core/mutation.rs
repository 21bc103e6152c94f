//! Deliberate bugs, for the simulator's "teeth" tests only (cargo feature `mutations`, off by
//! default and never in a release build): each test selects one and asserts that the simulator
//! (`sim/`) catches it within a bounded number of seeds. The setting is per thread, so tests
//! running in parallel do not see each other's bug.

use std::cell::Cell;

/// One deliberate bug (or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mutation {
    None,
    /// Losing the peer does not mark the writes it never confirmed (bitmap).
    SkipBitmapOnPeerLoss,
    /// A Primary writing without its peer does not mark the write in the bitmap.
    SkipBitmapWhileDisconnected,
    /// A client FLUSH is acked once the local flush is done, without the peer's FlushAck.
    FlushAckBeforePeer,
    /// UUID rule 50 ("the peer's bitmap is my current": I am target) decides as rule 70.
    SwapUuidRule50,
    /// `primary` does not refuse a SyncTarget (neither for its state nor for its Inconsistent
    /// disk).
    PromoteSyncTarget,
    /// A split brain is resolved silently: the node with the lower name is bitmap SyncSource.
    MergeSplitBrain,
    /// The Secondary starts replicated writes without waiting for overlapping ones.
    SecondaryIgnoresConflicts,
    /// The superblock is rewritten in place (over the newest slot) instead of the other slot.
    SuperblockInPlace,
}

thread_local! {
    static ACTIVE: Cell<Mutation> = const { Cell::new(Mutation::None) };
}

/// Selects the bug for this thread (`Mutation::None` restores the real code).
pub fn set(m: Mutation) {
    ACTIVE.with(|a| a.set(m));
}

/// The bug selected for this thread.
pub fn get() -> Mutation {
    ACTIVE.with(|a| a.get())
}

/// True when `m` is the selected bug.
pub fn active(m: Mutation) -> bool {
    get() == m
}
