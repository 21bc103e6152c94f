//! The connect-time decision (PROTOCOL.md §7.2–§7.4): given what each node knows about itself,
//! decide whether to resync, in which direction and how much, or to refuse. Pure: no I/O, no
//! clock, no randomness, total (never panics), and **mirror-symmetric**: `decide(a, b)` and
//! `decide(b, a)` always reach mirror verdicts (same kind, opposite direction, same or mirrored
//! rule number), so the two nodes never both become SyncSource or both SyncTarget, and a split
//! brain is always seen by both (DRBD once saw it on one node only).
//!
//! It follows DRBD 8.4's `drbd_uuid_compare` ([`uuid_compare`]) and `drbd_sync_handshake`
//! ([`decide`]). Sign convention: `hg > 0` "I am SyncSource", `hg < 0` "I am SyncTarget", |1| a
//! bitmap-based resync, |2| a full resync (every bit set), ±100 split brain, −1000 unrelated.
//! Bit 0 of every UUID ("was primary") is masked in every comparison; a UUID of 0 is "unset".
//!
//! # Rules of [`uuid_compare`] (first match decides)
//!
//! | rule | condition (mine/peer's, masked) | hg |
//! |---|---|---|
//! | 10 | both currents unset (0 or `UUID_JUST_CREATED`) | 0: wait for an operator |
//! | 20 / 30 | only my / only the peer's current is unset | −2 / +2 |
//! | 34 / 35 | currents equal, only I / only the peer have a bitmap UUID, and the other's history shows it finished the resync (`bitmap == other.history[0]`, `history[0] == other.history[1]`): the side with the bitmap missed "resync finished" | +1 / −1 |
//! | 36 / 37 | as 34 / 35, history does not line up (the target failed to write the sync UUID) | +1 / −1 |
//! | 40 | currents equal, no crashed-primary flag | 0 |
//! | 40 (40b) | currents equal, both Secondary, crashed-primary flag on one side | that side is source, ±1 (activity-log resync) |
//! | 40 (40b) | … on both sides | tie-break: the node with the **lower name** is source; equal names: −100 |
//! | 41 | currents equal, a crashed-primary flag set, a node is Primary now | the Primary is source ±1; both Primary: −100 |
//! | 50 / 70 | peer's bitmap == my current / my bitmap == peer's current | −1 / +1 |
//! | 51 / 71 | peer's / my `history[0]` == the other's current and that side's bitmap == `history[0] + UUID_RESYNC_BUMP` (the SyncUuid was lost) | −1 / +1 |
//! | 60 / 80 | my current in peer's history / peer's current in my history | −2 / +2 |
//! | 1001 | target evidence (50, 51, 60) **and** source evidence (70, 71, 80) both match | −100 |
//! | 90 | bitmap UUIDs equal and non-zero | +100 (policies may resolve) |
//! | 100 | any non-zero history UUIDs equal | −100 |
//! | 1000 | nothing matches | −1000: unrelated data |
//! | 1003 | nothing matches, exactly one disk Inconsistent (decided in [`decide`]) | full sync from the consistent side |
//!
//! Mirror rule numbers ([`mirror_rule`]): 20↔30, 34↔35, 36↔37, 50↔70, 51↔71, 60↔80; every other
//! rule is its own mirror.
//!
//! ## Where urbd deliberately differs from DRBD 8.4, and why
//!
//! - **Symmetric evaluation.** DRBD tries 50, 51, 60 before 70, 71, 80. If a "target" and a
//!   "source" condition both hold (a cycle: each side's generation seems to descend from the
//!   other's; impossible with fresh random UUIDs, so it means corrupted or hand-edited metadata),
//!   DRBD's order makes *both* nodes SyncTarget. urbd checks both groups and calls a conflict a
//!   split brain (rule 1001, −100): nothing is moved, an operator decides.
//! - **0 and `UUID_JUST_CREATED` are one class.** DRBD's rule 20 returns −2 on *both* sides when
//!   both currents are 0, and makes a side with current 0 the source of a just-created peer.
//!   urbd treats both as "no data generation": two such sides → rule 10 (wait for an operator).
//! - **Rule 100 ignores zero history slots** (DRBD matches 0 == 0, turning "unrelated" into
//!   "split brain" for young metadata).
//! - **Rule 41** is DRBD's: it only applies when a crashed-primary flag is set (a current
//!   Primary may have written after the crash without a UUID bump, e.g. with frozen I/O, so the
//!   Primary's data wins and the crashed side's activity-log extents are overwritten from it).
//!   With no crash flag, equal currents mean "no sync" whatever the roles (rule 40): everything
//!   either side wrote since is in its bitmap, which the caller must not drop (see below).
//! - **Tie-breaks.** DRBD uses the `RESOLVE_CONFLICTS` connection flag; urbd uses one rule
//!   everywhere (rule 40b, discard-zero-changes, discard-least-changes): *the node with the
//!   lower name (byte order) keeps its data* (is source), as the lower name also wins
//!   concurrent state changes (§7.8). Equal names cannot be arbitrated: split brain /
//!   unresolved. Node names must therefore differ (the handshake should refuse equal names).
//!
//! # [`decide`]: the handshake after the compare
//!
//! 1. Either disk not attached (below Inconsistent, or `DUnknown`) → [`Verdict::NotAttached`]
//!    (rule 1002). The caller passes the disk state the node will have (not `Negotiating`).
//! 2. −1000 → [`Verdict::Unrelated`], unless exactly one disk is Inconsistent (rule 1003): an
//!    Inconsistent disk was never Primary and holds no usable data, so a full sync from the
//!    consistent side loses nothing (DRBD refuses and needs `create-md` on the target).
//! 3. **Disk states.** If exactly one side is Inconsistent and the other better, the
//!    consistent side is source. Full sync if the compare said |2|, ±100, rule 10 (no common
//!    generation), or the opposite direction; otherwise bitmap sync (DRBD: full only for −100
//!    or |2|; urbd's extra cases are never unsafe, only slower).
//! 4. **Split brain (±100)**, in this order:
//!    - `--discard-my-data` on exactly one side: that side is target (on both sides: no effect).
//!      Bitmap resync after rule 90 (both bitmaps count from the same generation, so their OR
//!      covers every difference); **full** resync otherwise (the bitmaps do not share a base).
//!      DRBD tries the policies first and always uses a bitmap resync; urbd lets the explicit
//!      operator command win and never trusts bitmaps of unrelated generations.
//!    - The after-sb policies, by the number of current Primaries, for +100 (rule 90) only,
//!      or also for −100 when [`SplitBrainPolicy::always_asbp`] (as DRBD). Resolved +100 →
//!      bitmap resync; resolved −100 → full ("UUIDs were ambiguous").
//!    - Otherwise [`Verdict::SplitBrain`]: both nodes go StandAlone, run the split-brain
//!      handler, and move no data.
//! 5. A direction whose source disk is Inconsistent (both Inconsistent) →
//!    [`Verdict::NoConsistentSource`].
//! 6. **rr-conflict**: a direction that makes a node that is Primary now, with a Consistent or
//!    UpToDate disk, the SyncTarget → [`Verdict::RoleConflict`] (as DRBD; a Primary whose own
//!    disk is Inconsistent serves I/O from the peer and may be a target).
//! 7. Mapping: 0 → [`Verdict::NoSync`] (rule 10: [`Verdict::WaitForOperator`]); ±1 →
//!    [`Verdict::BitmapSync`] ([`Verdict::ActivityLogSync`] for rules 40b/41); ±2 →
//!    [`Verdict::FullSync`].
//!
//! ## Split-brain policies (same semantics as DRBD's `drbd_asb_recover_{0,1,2}p`)
//!
//! - after-sb-0pri `discard-younger-primary` / `discard-older-primary`: "younger" is the node
//!   that became Primary later. After rule 90 both bitmap UUIDs are the generation both shared
//!   when they split; its bit 0 is set on the node that was Primary then (the *older*
//!   Primary), clear on the one promoted later (the younger). If both bits are equal and both
//!   sides report `primary_since_ms`, the later promotion is the younger. Still undecided →
//!   falls through to discard-zero-changes, then discard-least-changes (as DRBD).
//! - `discard-zero-changes`: the side with `dirty_bits == 0` is target; both zero → tie-break;
//!   both non-zero → unresolved.
//! - `discard-least-changes`: fewer `dirty_bits` is target; equal → tie-break.
//! - `discard-node-NAME`: that node is target (a name matching neither or both → unresolved).
//! - after-sb-1pri `consensus`: the 0pri verdict, accepted only if it discards the Secondary;
//!   `discard-secondary`: the Secondary is target.
//! - after-sb-2pri: only `disconnect`.
//!
//! Both nodes must run with identical policies (checked when `Params` are exchanged, §3.4), or
//! the verdicts are not mirrors.
//!
//! # Invariants the caller must keep
//!
//! - **A [`Verdict::NoSync`] never clears a bitmap** (LINBIT/drbd#145: a "no sync" verdict that
//!   cleared a non-empty bitmap lost data; #30: both UpToDate yet out of sync). NoSync only
//!   happens with equal current UUIDs; bits either side set since stay set, and if any are set
//!   ([`needs_resync_despite_no_sync`]) the caller resyncs them (bitmap exchange, §7.5) in the
//!   direction [`no_sync_resync_direction`] gives (mirror-symmetric; `None`: keep the bits and
//!   stay out of sync) before calling the nodes in sync.
//! - Before any resync both sides OR their bitmaps (§7.5); |2| first sets every bit.
//! - For [`Verdict::ActivityLogSync`], the crashed side's hot activity-log extents must already
//!   be marked in its bitmap (done at attach after a crash); the OR carries them to the source.
//! - [`Decision::corrected_own_uuids`] (rules 34 and 71) is DRBD's repair of my own UUID tuple
//!   after a lost "resync finished" / SyncUuid; persist it before acting on the verdict.

use std::cmp::Ordering;

use urbd_protocol::{
    DiskState, GenerationUuids, Role, UUID_JUST_CREATED, UUID_PRIMARY_BIT, UUID_RESYNC_BUMP,
};

/// Rule numbers (DRBD's, plus urbd's 1000+).
pub mod rules {
    /// Both currents unset: wait for an operator.
    pub const BOTH_JUST_CREATED: u16 = 10;
    /// Only my current is unset: full sync, I am target.
    pub const SELF_JUST_CREATED: u16 = 20;
    /// Only the peer's current is unset: full sync, I am source.
    pub const PEER_JUST_CREATED: u16 = 30;
    /// I was SyncSource and missed "resync finished" (history lines up): I am source.
    pub const SELF_MISSED_RESYNC_FINISHED: u16 = 34;
    /// The peer was SyncSource and missed "resync finished": I am target.
    pub const PEER_MISSED_RESYNC_FINISHED: u16 = 35;
    /// I have a bitmap UUID, the peer does not, history does not line up: I am source.
    pub const PEER_FAILED_SYNC_UUID: u16 = 36;
    /// Mirror of 36: I am target.
    pub const SELF_FAILED_SYNC_UUID: u16 = 37;
    /// Currents equal: no sync, or (40b) the crashed primary is source.
    pub const EQUAL: u16 = 40;
    /// Currents equal, a crashed-primary flag, a Primary now: the Primary is source.
    pub const PRIMARY_PRESENT: u16 = 41;
    /// Peer's bitmap UUID == my current: bitmap sync, I am target.
    pub const PEER_BITMAP_IS_MY_CURRENT: u16 = 50;
    /// The peer started a resync as source; its SyncUuid never reached me: I am target.
    pub const PEER_SYNC_UUID_LOST: u16 = 51;
    /// My current is in the peer's history: full sync, I am target.
    pub const MY_CURRENT_IN_PEER_HISTORY: u16 = 60;
    /// My bitmap UUID == peer's current: bitmap sync, I am source.
    pub const MY_BITMAP_IS_PEER_CURRENT: u16 = 70;
    /// I started a resync as source; my SyncUuid never reached the peer: I am source.
    pub const MY_SYNC_UUID_LOST: u16 = 71;
    /// The peer's current is in my history: full sync, I am source.
    pub const PEER_CURRENT_IN_MY_HISTORY: u16 = 80;
    /// Bitmap UUIDs equal and non-zero: split brain, policies may resolve.
    pub const BITMAPS_EQUAL: u16 = 90;
    /// Some history UUIDs equal: split brain.
    pub const HISTORIES_MATCH: u16 = 100;
    /// Nothing matches: unrelated data.
    pub const UNRELATED: u16 = 1000;
    /// urbd: both a "target" and a "source" rule match: contradictory, split brain.
    pub const CONTRADICTORY: u16 = 1001;
    /// urbd: a side has no attached disk: no handshake.
    pub const NOT_ATTACHED: u16 = 1002;
    /// urbd: nothing matches, but exactly one disk is Inconsistent (it holds no usable data, it
    /// was never Primary with it): full sync from the consistent side.
    pub const UNRELATED_TO_INCONSISTENT: u16 = 1003;
}

/// `hg` of a split brain that the after-sb policies may resolve (rule 90).
pub const HG_SPLIT_BRAIN_AUTO: i32 = 100;
/// `hg` of a split brain only `--discard-my-data` resolves (rules 41, 100, 1001).
pub const HG_SPLIT_BRAIN: i32 = -100;
/// `hg` of unrelated data.
pub const HG_UNRELATED: i32 = -1000;

/// What one side knows about itself at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideInfo {
    /// The node's name; tie-breaks and `discard-node-NAME` use it. Must differ between peers.
    pub node_name: String,
    pub uuids: GenerationUuids,
    /// The disk state the node has (or will have after attach), not `Negotiating`.
    pub disk: DiskState,
    /// The role now.
    pub role: Role,
    /// The node was Primary and did not shut down cleanly (metadata flag CRASHED_PRIMARY).
    pub crashed_primary: bool,
    /// `connect --discard-my-data` was given on this node.
    pub discard_my_data: bool,
    /// Bits set in this node's bitmap (discard-zero/least-changes).
    pub dirty_bits: u64,
    /// When this node last became Primary, if it reports it (discard-younger/older-primary,
    /// only when the UUIDs cannot tell).
    pub primary_since_ms: Option<u64>,
}

/// Direction of a resync from my point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncDirection {
    IAmSource,
    IAmTarget,
}

impl SyncDirection {
    /// The same resync seen from the peer.
    pub const fn mirror(self) -> SyncDirection {
        match self {
            SyncDirection::IAmSource => SyncDirection::IAmTarget,
            SyncDirection::IAmTarget => SyncDirection::IAmSource,
        }
    }

    fn from_hg(hg: i32) -> SyncDirection {
        if hg > 0 {
            SyncDirection::IAmSource
        } else {
            SyncDirection::IAmTarget
        }
    }
}

/// What the two nodes do after connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Connected, nothing to resync (rule 40). Never clears a bitmap: see
    /// [`needs_resync_despite_no_sync`].
    NoSync,
    /// Rule 10: both just created; an operator starts the initial sync (`primary --force`).
    WaitForOperator,
    /// |hg| == 1: exchange and OR bitmaps, resync the marked blocks.
    BitmapSync(SyncDirection),
    /// |hg| >= 2: set every bit, then resync.
    FullSync(SyncDirection),
    /// Currents equal and a crashed primary (rules 40b, 41): OR bitmaps (which hold the crashed
    /// side's activity-log extents) and resync them.
    ActivityLogSync(SyncDirection),
    /// Unresolved split brain: both go StandAlone, run the split-brain handler, no data moved.
    /// `auto_recovery_possible`: an after-sb policy was consulted and another configuration
    /// could have resolved it (rule 90, or `always_asbp`, with fewer than two Primaries).
    SplitBrain { auto_recovery_possible: bool },
    /// −1000: refuse to connect.
    Unrelated,
    /// The verdict would make a Primary (with a consistent disk) the SyncTarget: disconnect.
    RoleConflict,
    /// Urbd: a resync is needed but its source disk is Inconsistent (both are): disconnect.
    NoConsistentSource,
    /// Urbd: a side has no usable disk (Diskless, Attaching, Failed, Negotiating, DUnknown);
    /// no sync handshake.
    NotAttached,
}

impl Verdict {
    /// The verdict the peer reaches for the same pair.
    pub const fn mirror(self) -> Verdict {
        match self {
            Verdict::BitmapSync(d) => Verdict::BitmapSync(d.mirror()),
            Verdict::FullSync(d) => Verdict::FullSync(d.mirror()),
            Verdict::ActivityLogSync(d) => Verdict::ActivityLogSync(d.mirror()),
            other => other,
        }
    }

    /// The resync direction, if data moves.
    pub const fn direction(self) -> Option<SyncDirection> {
        match self {
            Verdict::BitmapSync(d) | Verdict::FullSync(d) | Verdict::ActivityLogSync(d) => Some(d),
            _ => None,
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that decided (see [`rules`]); for a split brain resolved by a policy, the
    /// split-brain rule (90, 100, …) and `via_policy` names the policy.
    pub rule: u16,
    /// The policy or operator flag that resolved a split brain: `"discard-my-data"`,
    /// `"discard-younger-primary"`, …, `"consensus"`, `"discard-secondary"`.
    pub via_policy: Option<&'static str>,
    /// One line for logs and status.
    pub reason: String,
    /// The raw [`uuid_compare`] result.
    pub uuid_hg: i32,
    /// The final DRBD-style result after disk states and split-brain handling.
    pub hg: i32,
    /// The disk states (exactly one side Inconsistent) decided the direction.
    pub by_disk_states: bool,
    /// Rules 34 and 71: my UUID tuple as DRBD repairs it; persist before acting.
    pub corrected_own_uuids: Option<GenerationUuids>,
}

/// Split-brain recovery with no Primary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum After0Pri {
    #[default]
    Disconnect,
    DiscardYoungerPrimary,
    DiscardOlderPrimary,
    DiscardZeroChanges,
    DiscardLeastChanges,
    /// `discard-node-NAME`: that node is SyncTarget.
    DiscardNode(String),
}

/// Split-brain recovery with one Primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum After1Pri {
    #[default]
    Disconnect,
    Consensus,
    DiscardSecondary,
}

/// Split-brain recovery with two Primaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum After2Pri {
    #[default]
    Disconnect,
}

/// The after-sb policies (all default to disconnect). Must be identical on both nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SplitBrainPolicy {
    pub after_sb_0pri: After0Pri,
    pub after_sb_1pri: After1Pri,
    pub after_sb_2pri: After2Pri,
    /// DRBD `always-asbp`: also try the policies for a −100 split brain (rule 100 etc.);
    /// a resolution then means a full resync.
    pub always_asbp: bool,
}

/// The mirror of a rule number: the rule the peer reports for the same pair.
pub const fn mirror_rule(rule: u16) -> u16 {
    match rule {
        20 => 30,
        30 => 20,
        34 => 35,
        35 => 34,
        36 => 37,
        37 => 36,
        50 => 70,
        70 => 50,
        51 => 71,
        71 => 51,
        60 => 80,
        80 => 60,
        other => other,
    }
}

const fn masked(uuid: u64) -> u64 {
    uuid & !UUID_PRIMARY_BIT
}

/// 0 or `UUID_JUST_CREATED` (masked): no data generation.
const fn unset(uuid: u64) -> bool {
    let m = masked(uuid);
    m == 0 || m == UUID_JUST_CREATED
}

fn is_primary(side: &SideInfo) -> bool {
    side.role == Role::Primary
}

/// The lower node name keeps its data: `Some(+1)` if that is me, `Some(-1)` if the peer,
/// `None` for equal names.
fn tie_break(me: &SideInfo, peer: &SideInfo) -> Option<i32> {
    match me.node_name.as_bytes().cmp(peer.node_name.as_bytes()) {
        Ordering::Less => Some(1),
        Ordering::Greater => Some(-1),
        Ordering::Equal => None,
    }
}

/// `x` lost the SyncUuid it sent to the side whose current is `other_current`: x's history[0]
/// is that current and x's bitmap is it plus the resync bump (rules 51/71).
fn sync_uuid_lost(x: &GenerationUuids, other_current: u64) -> bool {
    let h0 = masked(x.history[0]);
    h0 == other_current && h0.wrapping_add(UUID_RESYNC_BUMP) == masked(x.bitmap)
}

fn in_history(x: &GenerationUuids, uuid: u64) -> bool {
    x.history.iter().any(|&h| masked(h) == uuid)
}

/// The raw compare with its reason and UUID repair.
#[derive(Debug, Clone)]
struct Compare {
    hg: i32,
    rule: u16,
    reason: &'static str,
    corrected_own_uuids: Option<GenerationUuids>,
}

fn cmp(hg: i32, rule: u16, reason: &'static str) -> Compare {
    Compare {
        hg,
        rule,
        reason,
        corrected_own_uuids: None,
    }
}

/// The raw DRBD comparison (`drbd_uuid_compare`): `(hg, rule)` from my point of view, `hg` in
/// {0, ±1, ±2, ±100, −1000}. See the module doc for the rules.
pub fn uuid_compare(me: &SideInfo, peer: &SideInfo) -> (i32, u16) {
    let c = compare(me, peer);
    (c.hg, c.rule)
}

fn compare(me: &SideInfo, peer: &SideInfo) -> Compare {
    let (mu, pu) = (&me.uuids, &peer.uuids);
    let (self_cur, peer_cur) = (masked(mu.current), masked(pu.current));

    match (unset(self_cur), unset(peer_cur)) {
        (true, true) => {
            return cmp(
                0,
                rules::BOTH_JUST_CREATED,
                "both just created: waiting for an operator",
            )
        }
        (true, false) => {
            return cmp(
                -2,
                rules::SELF_JUST_CREATED,
                "my disk was just created: full sync from the peer",
            )
        }
        (false, true) => {
            return cmp(
                2,
                rules::PEER_JUST_CREATED,
                "the peer's disk was just created: full sync to the peer",
            )
        }
        (false, false) => {}
    }

    if self_cur == peer_cur {
        return compare_equal_currents(me, peer);
    }

    // Evidence that I am behind (target) and that I am ahead (source), in DRBD's order.
    let target = if masked(pu.bitmap) == self_cur {
        Some(cmp(
            if super::mutated!(SwapUuidRule50) {
                1
            } else {
                -1
            },
            rules::PEER_BITMAP_IS_MY_CURRENT,
            "the peer's bitmap starts at my current generation",
        ))
    } else if sync_uuid_lost(pu, self_cur) {
        Some(cmp(
            -1,
            rules::PEER_SYNC_UUID_LOST,
            "the peer's last SyncUuid did not reach me",
        ))
    } else if in_history(pu, self_cur) {
        Some(cmp(
            -2,
            rules::MY_CURRENT_IN_PEER_HISTORY,
            "my current generation is in the peer's history",
        ))
    } else {
        None
    };
    let source = if masked(mu.bitmap) == peer_cur {
        Some(cmp(
            1,
            rules::MY_BITMAP_IS_PEER_CURRENT,
            "my bitmap starts at the peer's current generation",
        ))
    } else if sync_uuid_lost(mu, peer_cur) {
        let mut c = cmp(
            1,
            rules::MY_SYNC_UUID_LOST,
            "my last SyncUuid did not reach the peer; undoing my resync start",
        );
        c.corrected_own_uuids = Some(GenerationUuids {
            current: mu.current,
            bitmap: mu.history[0],
            history: [mu.history[1], mu.history[1]],
        });
        Some(c)
    } else if in_history(mu, peer_cur) {
        Some(cmp(
            2,
            rules::PEER_CURRENT_IN_MY_HISTORY,
            "the peer's current generation is in my history",
        ))
    } else {
        None
    };
    match (target, source) {
        (Some(t), None) => return t,
        (None, Some(s)) => return s,
        (Some(_), Some(_)) => {
            return cmp(
                HG_SPLIT_BRAIN,
                rules::CONTRADICTORY,
                "contradictory generation UUIDs: each side seems to descend from the other",
            )
        }
        (None, None) => {}
    }

    let (self_bm, peer_bm) = (masked(mu.bitmap), masked(pu.bitmap));
    if self_bm == peer_bm && self_bm != 0 {
        return cmp(
            HG_SPLIT_BRAIN_AUTO,
            rules::BITMAPS_EQUAL,
            "split brain: both changed data since the same generation",
        );
    }
    let histories_match = mu.history.iter().any(|&a| {
        pu.history
            .iter()
            .any(|&b| masked(a) != 0 && masked(a) == masked(b))
    });
    if histories_match {
        return cmp(
            HG_SPLIT_BRAIN,
            rules::HISTORIES_MATCH,
            "split brain: the generations share only history",
        );
    }
    cmp(
        HG_UNRELATED,
        rules::UNRELATED,
        "unrelated data: no generation UUID in common",
    )
}

fn compare_equal_currents(me: &SideInfo, peer: &SideInfo) -> Compare {
    let (mu, pu) = (&me.uuids, &peer.uuids);
    let (self_bm, peer_bm) = (masked(mu.bitmap), masked(pu.bitmap));

    if self_bm != 0 && peer_bm == 0 {
        if self_bm == masked(pu.history[0]) && masked(mu.history[0]) == masked(pu.history[1]) {
            let mut c = cmp(
                1,
                rules::SELF_MISSED_RESYNC_FINISHED,
                "I was SyncSource and missed the resync-finished event; corrected myself",
            );
            c.corrected_own_uuids = Some(GenerationUuids {
                current: mu.current,
                bitmap: 0,
                history: [mu.bitmap, mu.history[0]],
            });
            return c;
        }
        return cmp(
            1,
            rules::PEER_FAILED_SYNC_UUID,
            "I was SyncSource (the peer failed to write the sync UUID)",
        );
    }
    if self_bm == 0 && peer_bm != 0 {
        if masked(mu.history[0]) == peer_bm && masked(mu.history[1]) == masked(pu.history[0]) {
            return cmp(
                -1,
                rules::PEER_MISSED_RESYNC_FINISHED,
                "I was SyncTarget; the peer missed the resync-finished event",
            );
        }
        return cmp(
            -1,
            rules::SELF_FAILED_SYNC_UUID,
            "I was SyncTarget (failed to write the sync UUID)",
        );
    }

    match (me.crashed_primary, peer.crashed_primary) {
        (false, false) => cmp(0, rules::EQUAL, "same generation, no crashed primary"),
        _ if is_primary(me) && is_primary(peer) => cmp(
            HG_SPLIT_BRAIN,
            rules::PRIMARY_PRESENT,
            "same generation after a crash, but both are Primary: cannot resolve",
        ),
        _ if is_primary(me) => cmp(
            1,
            rules::PRIMARY_PRESENT,
            "same generation after a crash; I am Primary",
        ),
        _ if is_primary(peer) => cmp(
            -1,
            rules::PRIMARY_PRESENT,
            "same generation after a crash; the peer is Primary",
        ),
        (true, false) => cmp(
            1,
            rules::EQUAL,
            "same generation; I crashed as Primary: my activity log is resynced",
        ),
        (false, true) => cmp(
            -1,
            rules::EQUAL,
            "same generation; the peer crashed as Primary: its activity log is resynced",
        ),
        (true, true) => match tie_break(me, peer) {
            Some(1) => cmp(
                1,
                rules::EQUAL,
                "same generation; both crashed as Primary: the lower node name (mine) is source",
            ),
            Some(_) => cmp(
                -1,
                rules::EQUAL,
                "same generation; both crashed as Primary: the lower node name (the peer's) is source",
            ),
            None => cmp(
                HG_SPLIT_BRAIN,
                rules::EQUAL,
                "same generation; both crashed as Primary and the node names are equal",
            ),
        },
    }
}

/// Usable for a sync handshake: Inconsistent, Outdated, Consistent or UpToDate.
fn attached(disk: DiskState) -> bool {
    disk >= DiskState::Inconsistent && disk != DiskState::DUnknown
}

/// A split-brain resolution: direction (+1: I am source) and a one-line explanation.
type Resolution = Option<(i32, &'static str)>;

fn zero_changes(me: &SideInfo, peer: &SideInfo) -> Resolution {
    match (me.dirty_bits, peer.dirty_bits) {
        (0, 0) => {
            tie_break(me, peer).map(|hg| (hg, "no changes on either side; lower name is source"))
        }
        (_, 0) => Some((1, "the peer has no changes")),
        (0, _) => Some((-1, "I have no changes")),
        _ => None,
    }
}

fn least_changes(me: &SideInfo, peer: &SideInfo) -> Resolution {
    match me.dirty_bits.cmp(&peer.dirty_bits) {
        Ordering::Less => Some((-1, "I have fewer changes")),
        Ordering::Greater => Some((1, "the peer has fewer changes")),
        Ordering::Equal => {
            tie_break(me, peer).map(|hg| (hg, "equal changes; lower name is source"))
        }
    }
}

/// `Some(true)` if I became Primary after the peer (I am the younger Primary).
fn i_am_younger_primary(me: &SideInfo, peer: &SideInfo) -> Option<bool> {
    let self_bit = me.uuids.bitmap & UUID_PRIMARY_BIT;
    let peer_bit = peer.uuids.bitmap & UUID_PRIMARY_BIT;
    match (self_bit, peer_bit) {
        (0, 1) => return Some(true),
        (1, 0) => return Some(false),
        _ => {}
    }
    match (me.primary_since_ms, peer.primary_since_ms) {
        (Some(a), Some(b)) if a != b => Some(a > b),
        _ => None,
    }
}

fn recover_0p(me: &SideInfo, peer: &SideInfo, policy: &After0Pri) -> Resolution {
    match policy {
        After0Pri::Disconnect => None,
        After0Pri::DiscardNode(name) => match (*name == me.node_name, *name == peer.node_name) {
            (true, false) => Some((-1, "discard-node names me")),
            (false, true) => Some((1, "discard-node names the peer")),
            _ => None,
        },
        After0Pri::DiscardYoungerPrimary | After0Pri::DiscardOlderPrimary => {
            let discard_younger = matches!(policy, After0Pri::DiscardYoungerPrimary);
            match i_am_younger_primary(me, peer) {
                Some(i_am_younger) if i_am_younger == discard_younger => {
                    Some((-1, "my data is discarded (primary age)"))
                }
                Some(_) => Some((1, "the peer's data is discarded (primary age)")),
                None => zero_changes(me, peer).or_else(|| least_changes(me, peer)),
            }
        }
        After0Pri::DiscardZeroChanges => zero_changes(me, peer),
        After0Pri::DiscardLeastChanges => least_changes(me, peer),
    }
}

fn policy_name_0p(policy: &After0Pri) -> &'static str {
    match policy {
        After0Pri::Disconnect => "disconnect",
        After0Pri::DiscardYoungerPrimary => "discard-younger-primary",
        After0Pri::DiscardOlderPrimary => "discard-older-primary",
        After0Pri::DiscardZeroChanges => "discard-zero-changes",
        After0Pri::DiscardLeastChanges => "discard-least-changes",
        After0Pri::DiscardNode(_) => "discard-node",
    }
}

/// Runs the after-sb policy for the number of Primaries: `(direction, policy name, detail)`.
fn recover(
    me: &SideInfo,
    peer: &SideInfo,
    policy: &SplitBrainPolicy,
) -> Option<(i32, &'static str, &'static str)> {
    let primaries = usize::from(is_primary(me)) + usize::from(is_primary(peer));
    match primaries {
        0 => recover_0p(me, peer, &policy.after_sb_0pri)
            .map(|(hg, why)| (hg, policy_name_0p(&policy.after_sb_0pri), why)),
        1 => match policy.after_sb_1pri {
            After1Pri::Disconnect => None,
            After1Pri::Consensus => match recover_0p(me, peer, &policy.after_sb_0pri) {
                Some((-1, why)) if !is_primary(me) => Some((-1, "consensus", why)),
                Some((1, why)) if is_primary(me) => Some((1, "consensus", why)),
                _ => None,
            },
            After1Pri::DiscardSecondary => {
                if is_primary(me) {
                    Some((1, "discard-secondary", "the peer is the Secondary"))
                } else {
                    Some((-1, "discard-secondary", "I am the Secondary"))
                }
            }
        },
        _ => match policy.after_sb_2pri {
            After2Pri::Disconnect => None,
        },
    }
}

/// The whole handshake decision (`drbd_sync_handshake`); see the module doc for the steps.
pub fn decide(me: &SideInfo, peer: &SideInfo, policy: &SplitBrainPolicy) -> Decision {
    if !attached(me.disk) || !attached(peer.disk) {
        return Decision {
            verdict: Verdict::NotAttached,
            rule: rules::NOT_ATTACHED,
            via_policy: None,
            reason: format!(
                "no sync handshake: disks {} (mine) and {} (peer's)",
                me.disk, peer.disk
            ),
            uuid_hg: 0,
            hg: 0,
            by_disk_states: false,
            corrected_own_uuids: None,
        };
    }

    let c = compare(me, peer);
    let mut d = Decision {
        verdict: Verdict::NoSync,
        rule: c.rule,
        via_policy: None,
        reason: c.reason.to_string(),
        uuid_hg: c.hg,
        hg: c.hg,
        by_disk_states: false,
        corrected_own_uuids: c.corrected_own_uuids,
    };
    // Exactly one side Inconsistent: the disk states decide the direction.
    let inconsistent = DiskState::Inconsistent;
    let one_inconsistent = (me.disk == inconsistent && peer.disk > inconsistent)
        || (peer.disk == inconsistent && me.disk > inconsistent);
    if c.hg == HG_UNRELATED {
        if !one_inconsistent {
            d.verdict = Verdict::Unrelated;
            return d;
        }
        // The Inconsistent side crashed mid-resync before it stored the source's sync UUID and
        // the source then started enough resyncs to push that generation out of its history
        // (simulator seed 362). Its data is unusable either way: a full sync loses nothing.
        d.rule = rules::UNRELATED_TO_INCONSISTENT;
        d.reason = "no generation UUID in common".to_string();
    }
    if one_inconsistent {
        let dir = if me.disk > inconsistent { 1 } else { -1 };
        let full = c.hg.abs() >= 2
            || c.rule == rules::BOTH_JUST_CREATED
            || (c.hg != 0 && c.hg.signum() != dir);
        d.hg = if full { 2 * dir } else { dir };
        d.by_disk_states = true;
        d.reason = format!(
            "{}; {} because exactly one disk is Inconsistent",
            c.reason,
            if dir > 0 {
                "I am source"
            } else {
                "I am target"
            }
        );
    }

    // Same generation, one disk Outdated (it detached after a failed write) and the other
    // UpToDate: the marked blocks go from the UpToDate side, which makes the other UpToDate.
    let (outdated, up) = (DiskState::Outdated, DiskState::UpToDate);
    if c.hg == 0
        && c.rule != rules::BOTH_JUST_CREATED
        && ((me.disk == outdated && peer.disk == up) || (peer.disk == outdated && me.disk == up))
    {
        let dir = if me.disk == up { 1 } else { -1 };
        d.hg = dir;
        d.by_disk_states = true;
        d.reason = format!(
            "{}; {} because exactly one disk is Outdated",
            c.reason,
            if dir > 0 {
                "I am source"
            } else {
                "I am target"
            }
        );
    }

    if d.hg.abs() == HG_SPLIT_BRAIN_AUTO {
        // Magnitude of a resolved split brain: bitmaps share a base only after rule 90.
        let magnitude = if d.hg == HG_SPLIT_BRAIN_AUTO { 1 } else { 2 };
        let resolved = match (me.discard_my_data, peer.discard_my_data) {
            (true, false) => Some((-1, "discard-my-data", "--discard-my-data on my side")),
            (false, true) => Some((1, "discard-my-data", "--discard-my-data on the peer")),
            _ if d.hg == HG_SPLIT_BRAIN_AUTO || policy.always_asbp => recover(me, peer, policy),
            _ => None,
        };
        match resolved {
            Some((dir, name, why)) => {
                d.hg = dir * magnitude;
                d.via_policy = Some(name);
                d.reason = format!("{}; resolved by {name}: {why}", c.reason);
            }
            None => {
                let policies_consulted = c.hg == HG_SPLIT_BRAIN_AUTO || policy.always_asbp;
                let primaries = usize::from(is_primary(me)) + usize::from(is_primary(peer));
                d.verdict = Verdict::SplitBrain {
                    auto_recovery_possible: policies_consulted && primaries < 2,
                };
                d.reason = format!("{}; split brain detected but unresolved", c.reason);
                return d;
            }
        }
    }

    if d.hg != 0 {
        let (source, target) = if d.hg > 0 { (me, peer) } else { (peer, me) };
        if source.disk <= inconsistent {
            d.verdict = Verdict::NoConsistentSource;
            d.reason = format!(
                "{}; but the SyncSource ({}) is Inconsistent",
                d.reason, source.node_name
            );
            return d;
        }
        if is_primary(target) && target.disk >= DiskState::Consistent {
            d.verdict = Verdict::RoleConflict;
            d.reason = format!(
                "{}; but the SyncTarget ({}) is Primary",
                d.reason, target.node_name
            );
            return d;
        }
    }

    let dir = SyncDirection::from_hg(d.hg);
    d.verdict = match d.hg.abs() {
        0 if c.rule == rules::BOTH_JUST_CREATED => Verdict::WaitForOperator,
        0 => Verdict::NoSync,
        1 if !d.by_disk_states
            && d.via_policy.is_none()
            && (c.rule == rules::EQUAL || c.rule == rules::PRIMARY_PRESENT) =>
        {
            Verdict::ActivityLogSync(dir)
        }
        1 => Verdict::BitmapSync(dir),
        _ => Verdict::FullSync(dir),
    };
    d
}

/// True if the handshake says [`Verdict::NoSync`] while either bitmap has bits set: the
/// caller must keep those bits and resync them (LINBIT/drbd#145, #30), never clear them.
pub fn needs_resync_despite_no_sync(me: &SideInfo, peer: &SideInfo) -> bool {
    // Policies never produce NoSync, so the default policy gives the same answer.
    decide(me, peer, &SplitBrainPolicy::default()).verdict == Verdict::NoSync
        && (me.dirty_bits > 0 || peer.dirty_bits > 0)
}

/// For a [`Verdict::NoSync`] with bits set ([`needs_resync_despite_no_sync`]): which side
/// sends the marked blocks (after both OR their bitmaps). Mirror-symmetric like [`decide`], so
/// the two nodes never both become SyncTarget. The current Primary is source (its data is
/// authoritative); with no Primary, the only UpToDate side; otherwise the lower node name.
/// `None` when no bits are set, or no direction is safe (two Primaries, equal names, an
/// Inconsistent source): the caller keeps the bits (never clears them) and retries later.
pub fn no_sync_resync_direction(me: &SideInfo, peer: &SideInfo) -> Option<SyncDirection> {
    if !needs_resync_despite_no_sync(me, peer) {
        return None;
    }
    let hg = match (is_primary(me), is_primary(peer)) {
        (true, true) => return None,
        (true, false) => 1,
        (false, true) => -1,
        (false, false) => match (
            me.disk == DiskState::UpToDate,
            peer.disk == DiskState::UpToDate,
        ) {
            (true, false) => 1,
            (false, true) => -1,
            // Only one side marked blocks: it marked them because its copy is the newer one
            // (writes the peer failed or never confirmed, urbd-sim seed 1914): it is source.
            _ => match (me.dirty_bits > 0, peer.dirty_bits > 0) {
                (true, false) => 1,
                (false, true) => -1,
                _ => tie_break(me, peer)?,
            },
        },
    };
    let (source, target) = if hg > 0 { (me, peer) } else { (peer, me) };
    if source.disk <= DiskState::Inconsistent
        || (is_primary(target) && target.disk >= DiskState::Consistent)
    {
        return None;
    }
    Some(SyncDirection::from_hg(hg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use SyncDirection::{IAmSource as Src, IAmTarget as Tgt};

    const A: u64 = 0xA0;
    const B: u64 = 0xB0;
    const C: u64 = 0xC0;
    const D: u64 = 0xD0;
    const E: u64 = 0xE0;
    const F: u64 = 0xF0;

    fn side(name: &str) -> SideInfo {
        SideInfo {
            node_name: name.to_string(),
            uuids: GenerationUuids::default(),
            disk: DiskState::UpToDate,
            role: Role::Secondary,
            crashed_primary: false,
            discard_my_data: false,
            dirty_bits: 0,
            primary_since_ms: None,
        }
    }

    impl SideInfo {
        fn u(mut self, current: u64, bitmap: u64, h0: u64, h1: u64) -> Self {
            self.uuids = GenerationUuids {
                current,
                bitmap,
                history: [h0, h1],
            };
            self
        }
        fn disk(mut self, disk: DiskState) -> Self {
            self.disk = disk;
            self
        }
        fn primary(mut self) -> Self {
            self.role = Role::Primary;
            self
        }
        fn crashed(mut self) -> Self {
            self.crashed_primary = true;
            self
        }
        fn discard(mut self) -> Self {
            self.discard_my_data = true;
            self
        }
        fn dirty(mut self, bits: u64) -> Self {
            self.dirty_bits = bits;
            self
        }
        fn since(mut self, ms: u64) -> Self {
            self.primary_since_ms = Some(ms);
            self
        }
    }

    fn p0(policy: After0Pri) -> SplitBrainPolicy {
        SplitBrainPolicy {
            after_sb_0pri: policy,
            ..SplitBrainPolicy::default()
        }
    }

    fn p1(zero: After0Pri, one: After1Pri) -> SplitBrainPolicy {
        SplitBrainPolicy {
            after_sb_0pri: zero,
            after_sb_1pri: one,
            ..SplitBrainPolicy::default()
        }
    }

    /// Asserts that the two sides reach mirror decisions: mirrored verdict, mirrored rule,
    /// same policy, mirrored hg.
    fn assert_mirror(me: &SideInfo, peer: &SideInfo, policy: &SplitBrainPolicy) -> Decision {
        let mine = decide(me, peer, policy);
        let theirs = decide(peer, me, policy);
        assert_eq!(
            theirs.verdict,
            mine.verdict.mirror(),
            "verdicts not mirrored:\n{mine:?}\n{theirs:?}"
        );
        assert_eq!(
            theirs.rule,
            mirror_rule(mine.rule),
            "rules not mirrored:\n{mine:?}\n{theirs:?}"
        );
        assert_eq!(theirs.via_policy, mine.via_policy, "{mine:?}\n{theirs:?}");
        assert_eq!(theirs.by_disk_states, mine.by_disk_states);
        let expected_hg = if mine.hg.abs() >= 100 {
            mine.hg
        } else {
            -mine.hg
        };
        assert_eq!(
            theirs.hg, expected_hg,
            "hg not mirrored:\n{mine:?}\n{theirs:?}"
        );
        let (a, b) = (uuid_compare(me, peer), uuid_compare(peer, me));
        if attached(me.disk) && attached(peer.disk) {
            assert_eq!(b.1, mirror_rule(a.1));
            assert_eq!(b.0, if a.0.abs() >= 100 { a.0 } else { -a.0 });
        }
        mine
    }

    struct Row {
        /// The PROTOCOL.md row the case checks.
        cite: &'static str,
        me: SideInfo,
        peer: SideInfo,
        policy: SplitBrainPolicy,
        verdict: Verdict,
        rule: u16,
        via: Option<&'static str>,
    }

    fn row(cite: &'static str, me: SideInfo, peer: SideInfo, verdict: Verdict, rule: u16) -> Row {
        Row {
            cite,
            me,
            peer,
            policy: SplitBrainPolicy::default(),
            verdict,
            rule,
            via: None,
        }
    }

    fn prow(
        cite: &'static str,
        me: SideInfo,
        peer: SideInfo,
        policy: SplitBrainPolicy,
        verdict: Verdict,
        rule: u16,
        via: Option<&'static str>,
    ) -> Row {
        Row {
            cite,
            me,
            peer,
            policy,
            verdict,
            rule,
            via,
        }
    }

    fn run(rows: Vec<Row>) {
        for r in rows {
            let d = assert_mirror(&r.me, &r.peer, &r.policy);
            assert_eq!(
                (d.verdict, d.rule, d.via_policy),
                (r.verdict, r.rule, r.via),
                "{}: {d:?}",
                r.cite
            );
            assert!(!d.reason.is_empty());
        }
    }

    const SB_AUTO: Verdict = Verdict::SplitBrain {
        auto_recovery_possible: true,
    };
    const SB: Verdict = Verdict::SplitBrain {
        auto_recovery_possible: false,
    };
    const INC: DiskState = DiskState::Inconsistent;

    #[test]
    #[rustfmt::skip]
    fn uuid_rules() {
        let jc = UUID_JUST_CREATED;
        let bumped = B + UUID_RESYNC_BUMP;
        run(vec![
            // PROTOCOL.md §7.2 rule 10
            row("10", side("a").u(jc, 0, 0, 0).disk(INC), side("b").u(jc, 0, 0, 0).disk(INC), Verdict::WaitForOperator, 10),
            // PROTOCOL.md §7.2 rule 10 (urbd: 0 counts as just created)
            row("10/0", side("a").u(0, 0, 0, 0).disk(INC), side("b").u(jc | 1, 0, 0, 0).disk(INC), Verdict::WaitForOperator, 10),
            row("10/00", side("a").u(0, 0, 0, 0), side("b").u(0, 0, 0, 0), Verdict::WaitForOperator, 10),
            // PROTOCOL.md §7.2 rule 20
            row("20", side("a").u(jc, 0, 0, 0), side("b").u(A, 0, 0, 0), Verdict::FullSync(Tgt), 20),
            row("20/0", side("a").u(0, 0, 0, 0), side("b").u(A, 0, 0, 0), Verdict::FullSync(Tgt), 20),
            // PROTOCOL.md §7.2 rule 30
            row("30", side("a").u(A, jc, 0, 0), side("b").u(jc, 0, 0, 0).disk(INC), Verdict::FullSync(Src), 30),
            // PROTOCOL.md §7.2 rule 34: I was source, missed "resync finished"; the peer
            // (target) already rotated: its history is [my bitmap, my history[0]].
            row("34", side("a").u(C, B, A, 0), side("b").u(C, 0, B, A), Verdict::BitmapSync(Src), 34),
            // PROTOCOL.md §7.2 rule 35
            row("35", side("a").u(C, 0, B, A), side("b").u(C, B, A, 0), Verdict::BitmapSync(Tgt), 35),
            // PROTOCOL.md §7.2 rule 36
            row("36", side("a").u(C, B, A, 0), side("b").u(C, 0, D, 0), Verdict::BitmapSync(Src), 36),
            // PROTOCOL.md §7.2 rule 37
            row("37", side("a").u(C, 0, D, 0), side("b").u(C, B, A, 0), Verdict::BitmapSync(Tgt), 37),
            // PROTOCOL.md §7.2 rule 40
            row("40", side("a").u(C, 0, B, A), side("b").u(C | 1, 0, B, A), Verdict::NoSync, 40),
            row("40/P", side("a").u(C, 0, B, A).primary(), side("b").u(C, 0, B, A), Verdict::NoSync, 40),
            // PROTOCOL.md §7.2 rule 40b
            row("40b", side("a").u(C, 0, B, 0).crashed(), side("b").u(C, 0, B, 0), Verdict::ActivityLogSync(Src), 40),
            row("40b/peer", side("a").u(C, 0, B, 0), side("b").u(C, 0, B, 0).crashed(), Verdict::ActivityLogSync(Tgt), 40),
            // PROTOCOL.md §7.2 rule 40b, both flagged: lower name is source
            row("40b/tie", side("alpha").u(C, 0, 0, 0).crashed(), side("bravo").u(C, 0, 0, 0).crashed(), Verdict::ActivityLogSync(Src), 40),
            row("40b/tie'", side("bravo").u(C, 0, 0, 0).crashed(), side("alpha").u(C, 0, 0, 0).crashed(), Verdict::ActivityLogSync(Tgt), 40),
            row("40b/same-name", side("x").u(C, 0, 0, 0).crashed(), side("x").u(C, 0, 0, 0).crashed(), SB, 40),
            // PROTOCOL.md §7.2 rule 41: the Primary now is source, even if the other crashed
            row("41", side("a").u(C, 0, 0, 0).primary(), side("b").u(C, 0, 0, 0).crashed(), Verdict::ActivityLogSync(Src), 41),
            row("41/crashed-pri", side("a").u(C, 0, 0, 0).crashed().primary(), side("b").u(C, 0, 0, 0), Verdict::ActivityLogSync(Src), 41),
            row("41/both", side("a").u(C, 0, 0, 0).primary().crashed(), side("b").u(C, 0, 0, 0).primary(), SB, 41),
            // PROTOCOL.md §7.2 rule 50 (primary bits set everywhere: masked)
            row("50", side("a").u(B | 1, 0, A, 0), side("b").u(C | 1, B, A, 0), Verdict::BitmapSync(Tgt), 50),
            // PROTOCOL.md §7.2 rule 51: the peer bumped its bitmap and rotated, I never got SyncUuid
            row("51", side("a").u(B, 0, A, 0), side("b").u(C, bumped, B, A), Verdict::BitmapSync(Tgt), 51),
            // PROTOCOL.md §7.2 rule 60
            row("60", side("a").u(A, 0, 0, 0), side("b").u(C, 0, B, A), Verdict::FullSync(Tgt), 60),
            // PROTOCOL.md §7.2 rule 70
            row("70", side("a").u(C, B, A, 0), side("b").u(B, 0, A, 0), Verdict::BitmapSync(Src), 70),
            // PROTOCOL.md §7.2 rule 71
            row("71", side("a").u(C, bumped, B, A), side("b").u(B, 0, A, 0), Verdict::BitmapSync(Src), 71),
            // PROTOCOL.md §7.2 rule 80
            row("80", side("a").u(C, 0, B, A), side("b").u(A, 0, 0, 0), Verdict::FullSync(Src), 80),
            // PROTOCOL.md §7.2 rule 1001: cycle (each side's current is the other's bitmap)
            row("1001", side("a").u(A, B, 0, 0), side("b").u(B, A, 0, 0), SB, 1001),
            row("1001/60+70", side("a").u(A, B, 0, 0), side("b").u(B, 0, A, 0), SB, 1001),
            // PROTOCOL.md §7.2 rule 90: split brain after a common generation
            row("90", side("a").u(D, C | 1, B, A), side("b").u(E, C, B, A), SB_AUTO, 90),
            // PROTOCOL.md §7.2 rule 100
            row("100", side("a").u(D, C, B, A), side("b").u(E, F, B, 0), SB, 100),
            // PROTOCOL.md §7.2 rule 100 ignores zero history slots → unrelated (rule 1000)
            row("100/0", side("a").u(D, 0, 0, 0), side("b").u(E, 0, 0, 0), Verdict::Unrelated, 1000),
            // PROTOCOL.md §7.2 last row: nothing matches
            row("1000", side("a").u(D, C, B, A), side("b").u(E, F, 0x1230, 0x4560), Verdict::Unrelated, 1000),
            // PROTOCOL.md §7.2 rule 1003 (simulator seed 362): nothing matches, the target is
            // Inconsistent → full sync from the consistent side; both Inconsistent → refused.
            row(
                "1003",
                side("a").u(D, C, B, A),
                side("b").u(E, 0, 0x1230, 0x4560).disk(DiskState::Inconsistent),
                Verdict::FullSync(Src),
                1003,
            ),
            row(
                "1003/both",
                side("a").u(D, C, B, A).disk(DiskState::Inconsistent),
                side("b").u(E, 0, 0x1230, 0x4560).disk(DiskState::Inconsistent),
                Verdict::Unrelated,
                1000,
            ),
        ]);
    }

    #[test]
    fn uuid_repairs() {
        // PROTOCOL.md §7.2 rule 34: DRBD rotates my bitmap into history.
        let d = decide(
            &side("a").u(C, B, A, 0),
            &side("b").u(C, 0, B, A),
            &SplitBrainPolicy::default(),
        );
        assert_eq!(
            d.corrected_own_uuids,
            Some(GenerationUuids {
                current: C,
                bitmap: 0,
                history: [B, A]
            })
        );
        // PROTOCOL.md §7.2 rule 71: DRBD undoes my resync start.
        let bumped = B + UUID_RESYNC_BUMP;
        let d = decide(
            &side("a").u(C, bumped, B, A),
            &side("b").u(B, 0, A, 0),
            &SplitBrainPolicy::default(),
        );
        assert_eq!(
            d.corrected_own_uuids,
            Some(GenerationUuids {
                current: C,
                bitmap: B,
                history: [A, A]
            })
        );
        // The peer side of 71 (rule 51) repairs nothing of its own.
        let d = decide(
            &side("b").u(B, 0, A, 0),
            &side("a").u(C, bumped, B, A),
            &SplitBrainPolicy::default(),
        );
        assert_eq!((d.rule, d.corrected_own_uuids), (51, None));
    }

    #[test]
    #[rustfmt::skip]
    fn handshake_rules() {
        let up = DiskState::UpToDate;
        run(vec![
            // PROTOCOL.md §7.3 disk states: rule 40 equal, I am Inconsistent → bitmap target
            row("7.3/40", side("a").u(C, 0, 0, 0).disk(INC), side("b").u(C, 0, 0, 0), Verdict::BitmapSync(Tgt), 40),
            // PROTOCOL.md §7.3: Outdated counts as better than Inconsistent
            row("7.3/outdated", side("a").u(C, 0, 0, 0).disk(INC), side("b").u(C, 0, 0, 0).disk(DiskState::Outdated), Verdict::BitmapSync(Tgt), 40),
            // PROTOCOL.md §7.3: same direction as rule 50 → stays bitmap
            row("7.3/50", side("a").u(B, 0, A, 0).disk(INC), side("b").u(C, B, A, 0), Verdict::BitmapSync(Tgt), 50),
            // PROTOCOL.md §7.3: disk states reverse rule 70 → full (urbd)
            row("7.3/reverse", side("a").u(C, B, A, 0).disk(INC), side("b").u(B, 0, A, 0), Verdict::FullSync(Tgt), 70),
            // PROTOCOL.md §7.3: a split brain with one side Inconsistent → full from the other
            row("7.3/90", side("a").u(D, C, B, A).disk(INC), side("b").u(E, C, B, A), Verdict::FullSync(Tgt), 90),
            row("7.3/100", side("a").u(D, C, B, A), side("b").u(E, F, B, 0).disk(INC), Verdict::FullSync(Src), 100),
            // PROTOCOL.md §7.3: rule 10 with one side UpToDate → full (urbd)
            row("7.3/10", side("a").u(UUID_JUST_CREATED, 0, 0, 0), side("b").u(UUID_JUST_CREATED, 0, 0, 0).disk(INC), Verdict::FullSync(Src), 10),
            // PROTOCOL.md §7.3: both Inconsistent and a direction → no usable source
            row("7.3/noc", side("a").u(B, 0, A, 0).disk(INC), side("b").u(C, B, A, 0).disk(INC), Verdict::NoConsistentSource, 50),
            row("7.3/noc-eq", side("a").u(C, 0, 0, 0).disk(INC), side("b").u(C, 0, 0, 0).disk(INC), Verdict::NoSync, 40),
            // PROTOCOL.md §7.3 rr-conflict: Primary would become SyncTarget
            row("7.3/rr", side("a").u(B, 0, A, 0).primary(), side("b").u(C, B, A, 0), Verdict::RoleConflict, 50),
            row("7.3/rr-full", side("a").u(A, 0, 0, 0).primary(), side("b").u(C, 0, B, A), Verdict::RoleConflict, 60),
            // PROTOCOL.md §7.3 rr-conflict: a Primary with an Inconsistent disk may be target
            row("7.3/rr-inc", side("a").u(B, 0, A, 0).primary().disk(INC), side("b").u(C, B, A, 0), Verdict::BitmapSync(Tgt), 50),
            // PROTOCOL.md §7.3: no handshake without a disk
            row("7.3/diskless", side("a").u(C, 0, 0, 0).disk(DiskState::Diskless), side("b").u(C, 0, 0, 0).disk(up), Verdict::NotAttached, 1002),
            row("7.3/dunknown", side("a").u(C, 0, 0, 0), side("b").u(C, 0, 0, 0).disk(DiskState::DUnknown), Verdict::NotAttached, 1002),
            row("7.3/negotiating", side("a").u(C, 0, 0, 0).disk(DiskState::Negotiating), side("b").u(C, 0, 0, 0), Verdict::NotAttached, 1002),
        ]);
    }

    /// A rule-90 split brain: both changed since C; `a` was Primary when they split (bitmap
    /// bit 0 set), `b` was promoted later.
    fn sb90(a: &str, b: &str) -> (SideInfo, SideInfo) {
        (side(a).u(D, C | 1, B, A), side(b).u(E, C, B, A))
    }

    #[test]
    #[rustfmt::skip]
    fn split_brain_policies() {
        use After0Pri::*;
        let (old, young) = sb90("a", "b");
        let dpol = SplitBrainPolicy::default;
        let (x, y) = (side("a").u(D, C, B, A), side("b").u(E, C, B, A)); // no age info
        run(vec![
            // PROTOCOL.md §7.4 discard-my-data: bitmap after rule 90
            prow("7.4/dmd", old.clone().discard(), young.clone(), dpol(), Verdict::BitmapSync(Tgt), 90, Some("discard-my-data")),
            // PROTOCOL.md §7.4 discard-my-data beats a policy that says otherwise (urbd)
            prow("7.4/dmd>policy", young.clone().discard(), old.clone(), p0(DiscardOlderPrimary), Verdict::BitmapSync(Tgt), 90, Some("discard-my-data")),
            // PROTOCOL.md §7.4 discard-my-data on both sides: unresolved
            prow("7.4/dmd-both", old.clone().discard(), young.clone().discard(), dpol(), SB_AUTO, 90, None),
            // PROTOCOL.md §7.4 discard-my-data after rule 100: full (urbd)
            prow("7.4/dmd-100", side("a").u(D, C, B, A).discard(), side("b").u(E, F, B, 0), dpol(), Verdict::FullSync(Tgt), 100, Some("discard-my-data")),
            // PROTOCOL.md §7.4 discard-my-data after rule 1001: full
            prow("7.4/dmd-1001", side("a").u(A, B, 0, 0), side("b").u(B, A, 0, 0).discard(), dpol(), Verdict::FullSync(Src), 1001, Some("discard-my-data")),
            // PROTOCOL.md §7.4 discard-my-data on a Primary: rr-conflict
            prow("7.4/dmd-pri", old.clone().discard().primary(), young.clone(), dpol(), Verdict::RoleConflict, 90, Some("discard-my-data")),
            // PROTOCOL.md §7.4 after-sb-0pri disconnect
            prow("7.4/0p-disc", old.clone(), young.clone(), dpol(), SB_AUTO, 90, None),
            // PROTOCOL.md §7.4 after-sb-0pri discard-younger-primary (bitmap primary bit)
            prow("7.4/0p-younger", old.clone(), young.clone(), p0(DiscardYoungerPrimary), Verdict::BitmapSync(Src), 90, Some("discard-younger-primary")),
            // PROTOCOL.md §7.4 after-sb-0pri discard-older-primary
            prow("7.4/0p-older", old.clone(), young.clone(), p0(DiscardOlderPrimary), Verdict::BitmapSync(Tgt), 90, Some("discard-older-primary")),
            // PROTOCOL.md §7.4 younger by primary_since_ms when the bits agree
            prow("7.4/0p-younger-since", x.clone().since(50), y.clone().since(10), p0(DiscardYoungerPrimary), Verdict::BitmapSync(Tgt), 90, Some("discard-younger-primary")),
            // PROTOCOL.md §7.4 younger undecided → zero changes → least changes (as DRBD)
            prow("7.4/0p-younger-zero", x.clone().dirty(3), y.clone(), p0(DiscardYoungerPrimary), Verdict::BitmapSync(Src), 90, Some("discard-younger-primary")),
            prow("7.4/0p-younger-least", x.clone().dirty(3), y.clone().dirty(9), p0(DiscardYoungerPrimary), Verdict::BitmapSync(Tgt), 90, Some("discard-younger-primary")),
            // PROTOCOL.md §7.4 after-sb-0pri discard-zero-changes
            prow("7.4/0p-zero", x.clone(), y.clone().dirty(7), p0(DiscardZeroChanges), Verdict::BitmapSync(Tgt), 90, Some("discard-zero-changes")),
            prow("7.4/0p-zero-both-changed", x.clone().dirty(1), y.clone().dirty(7), p0(DiscardZeroChanges), SB_AUTO, 90, None),
            prow("7.4/0p-zero-tie", x.clone(), y.clone(), p0(DiscardZeroChanges), Verdict::BitmapSync(Src), 90, Some("discard-zero-changes")),
            // PROTOCOL.md §7.4 after-sb-0pri discard-least-changes
            prow("7.4/0p-least", x.clone().dirty(2), y.clone().dirty(7), p0(DiscardLeastChanges), Verdict::BitmapSync(Tgt), 90, Some("discard-least-changes")),
            prow("7.4/0p-least-tie", x.clone().dirty(7), y.clone().dirty(7), p0(DiscardLeastChanges), Verdict::BitmapSync(Src), 90, Some("discard-least-changes")),
            prow("7.4/0p-least-same-name", x.clone().dirty(7), side("a").u(E, C, B, A).dirty(7), p0(DiscardLeastChanges), SB_AUTO, 90, None),
            // PROTOCOL.md §7.4 after-sb-0pri discard-node-NAME
            prow("7.4/0p-node", x.clone(), y.clone(), p0(DiscardNode("a".into())), Verdict::BitmapSync(Tgt), 90, Some("discard-node")),
            prow("7.4/0p-node-peer", x.clone(), y.clone(), p0(DiscardNode("b".into())), Verdict::BitmapSync(Src), 90, Some("discard-node")),
            prow("7.4/0p-node-none", x.clone(), y.clone(), p0(DiscardNode("zz".into())), SB_AUTO, 90, None),
            // PROTOCOL.md §7.4 after-sb-1pri disconnect
            prow("7.4/1p-disc", x.clone().primary(), y.clone(), p0(DiscardZeroChanges), SB_AUTO, 90, None),
            // PROTOCOL.md §7.4 after-sb-1pri consensus: 0pri discards the Secondary → accepted
            prow("7.4/1p-consensus", x.clone().primary().dirty(9), y.clone().dirty(2), p1(DiscardLeastChanges, After1Pri::Consensus), Verdict::BitmapSync(Src), 90, Some("consensus")),
            // … 0pri would discard the Primary → refused
            prow("7.4/1p-consensus-no", x.clone().primary().dirty(2), y.clone().dirty(9), p1(DiscardLeastChanges, After1Pri::Consensus), SB_AUTO, 90, None),
            // PROTOCOL.md §7.4 after-sb-1pri discard-secondary
            prow("7.4/1p-discard-secondary", x.clone(), y.clone().primary(), p1(Disconnect, After1Pri::DiscardSecondary), Verdict::BitmapSync(Tgt), 90, Some("discard-secondary")),
            // PROTOCOL.md §7.4 after-sb-2pri disconnect: nothing any policy could do
            prow("7.4/2p", x.clone().primary(), y.clone().primary(), p1(DiscardLeastChanges, After1Pri::DiscardSecondary), SB, 90, None),
            // PROTOCOL.md §7.4: policies do not apply to −100 (rule 100) …
            prow("7.4/100-no-policy", side("a").u(D, C, B, A), side("b").u(E, F, B, 0).dirty(4), p0(DiscardLeastChanges), SB, 100, None),
            // … unless always-asbp, and then the resync is full
            prow(
                "7.4/100-always-asbp",
                side("a").u(D, C, B, A),
                side("b").u(E, F, B, 0).dirty(4),
                SplitBrainPolicy { after_sb_0pri: DiscardLeastChanges, always_asbp: true, ..SplitBrainPolicy::default() },
                Verdict::FullSync(Tgt),
                100,
                Some("discard-least-changes"),
            ),
        ]);
    }

    // PROTOCOL.md §7.3: LINBIT/drbd#145 — a NoSync verdict with different currents would
    // drop the bits; it never happens, and NoSync with bits asks for a resync.
    #[test]
    fn no_sync_never_drops_bits() {
        let pol = SplitBrainPolicy::default();
        // Currents differ, dirty bits on both: never NoSync.
        let a = side("a").u(D, C, B, A).dirty(5);
        let b = side("b").u(E, C, B, A).dirty(5);
        assert_ne!(decide(&a, &b, &pol).verdict, Verdict::NoSync);
        assert!(!needs_resync_despite_no_sync(&a, &b));
        // #30: both UpToDate, same generation, but bits set → the caller must resync them.
        let a = side("a").u(C, 0, B, 0).dirty(3);
        let b = side("b").u(C, 0, B, 0);
        assert_eq!(decide(&a, &b, &pol).verdict, Verdict::NoSync);
        assert!(needs_resync_despite_no_sync(&a, &b));
        assert!(needs_resync_despite_no_sync(&b, &a));
        assert!(!needs_resync_despite_no_sync(&a.clone().dirty(0), &b));
        // A bitmap sync is not "NoSync despite bits".
        let a = side("a").u(B, 0, A, 0).dirty(3);
        let b = side("b").u(C, B, A, 0).dirty(3);
        assert!(!needs_resync_despite_no_sync(&a, &b));
        assert_eq!(no_sync_resync_direction(&a, &b), None);
    }

    // PROTOCOL.md §7.3: who sends the bits left after a NoSync verdict; never both targets.
    #[test]
    fn no_sync_resync_direction_rows() {
        let a = side("a").u(C, 0, B, 0);
        let b = side("b").u(C, 0, B, 0);
        let rows = [
            // No bits: nothing to send.
            (a.clone(), b.clone(), None),
            // Both Secondary, both UpToDate, bits on both: the lower name is source.
            (a.clone().dirty(2), b.clone().dirty(5), Some(Src)),
            (b.clone().dirty(2), a.clone().dirty(5), Some(Tgt)),
            // The Primary is source, whoever has the bits.
            (a.clone().dirty(2), b.clone().primary(), Some(Tgt)),
            (a.clone().primary(), b.clone().dirty(4), Some(Src)),
            // Only one side UpToDate (the other Consistent): it is source.
            (
                a.clone().disk(DiskState::Consistent),
                b.clone().dirty(1),
                Some(Tgt),
            ),
            // Two Primaries, or equal names: no safe direction, keep the bits.
            (a.clone().primary().dirty(1), b.clone().primary(), None),
            (a.clone().dirty(1), side("a").u(C, 0, B, 0).dirty(1), None),
            // Both Inconsistent: no source.
            (a.clone().disk(INC).dirty(1), b.clone().disk(INC), None),
        ];
        for (me, peer, want) in rows {
            assert_eq!(
                no_sync_resync_direction(&me, &peer),
                want,
                "{me:?} {peer:?}"
            );
            assert_eq!(
                no_sync_resync_direction(&peer, &me),
                want.map(SyncDirection::mirror)
            );
        }
    }

    #[test]
    fn mirror_rule_is_an_involution() {
        for r in 0..=1100u16 {
            assert_eq!(mirror_rule(mirror_rule(r)), r);
        }
        for v in [
            Verdict::NoSync,
            Verdict::BitmapSync(Src),
            SB,
            Verdict::FullSync(Tgt),
        ] {
            assert_eq!(v.mirror().mirror(), v);
        }
    }

    // A small alphabet so that matches (and the bump of rules 51/71) happen often.
    fn uuid() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(UUID_JUST_CREATED),
            Just(UUID_JUST_CREATED | 1),
            Just(A),
            Just(A | 1),
            Just(B),
            Just(B | 1),
            Just(C),
            Just(A + UUID_RESYNC_BUMP),
            Just(B + UUID_RESYNC_BUMP),
            Just(u64::MAX),
            Just(u64::MAX - UUID_RESYNC_BUMP + 2),
        ]
    }

    fn side_info() -> impl Strategy<Value = SideInfo> {
        (
            prop_oneof![Just("a"), Just("b"), Just("c")],
            (uuid(), uuid(), uuid(), uuid()),
            prop::sample::select(DiskState::ALL.to_vec()),
            prop::sample::select(vec![Role::Primary, Role::Secondary, Role::Unknown]),
            (any::<bool>(), prop::bool::weighted(0.2)),
            0u64..3,
            prop::option::of(0u64..3),
        )
            .prop_map(
                |(name, (c, b, h0, h1), disk, role, (crashed, discard), dirty, since)| SideInfo {
                    node_name: name.to_string(),
                    uuids: GenerationUuids {
                        current: c,
                        bitmap: b,
                        history: [h0, h1],
                    },
                    disk,
                    role,
                    crashed_primary: crashed,
                    discard_my_data: discard,
                    dirty_bits: dirty,
                    primary_since_ms: since,
                },
            )
    }

    fn policy() -> impl Strategy<Value = SplitBrainPolicy> {
        (
            prop_oneof![
                Just(After0Pri::Disconnect),
                Just(After0Pri::DiscardYoungerPrimary),
                Just(After0Pri::DiscardOlderPrimary),
                Just(After0Pri::DiscardZeroChanges),
                Just(After0Pri::DiscardLeastChanges),
                Just(After0Pri::DiscardNode("a".into())),
                Just(After0Pri::DiscardNode("c".into())),
            ],
            prop::sample::select(vec![
                After1Pri::Disconnect,
                After1Pri::Consensus,
                After1Pri::DiscardSecondary,
            ]),
            any::<bool>(),
        )
            .prop_map(|(zero, one, always)| SplitBrainPolicy {
                after_sb_0pri: zero,
                after_sb_1pri: one,
                after_sb_2pri: After2Pri::Disconnect,
                always_asbp: always,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6000))]

        // PROTOCOL.md §7.2–§7.4: both nodes reach mirror verdicts for any pair.
        #[test]
        fn both_sides_agree(a in side_info(), b in side_info(), pol in policy()) {
            let da = assert_mirror(&a, &b, &pol);
            let db = decide(&b, &a, &pol);
            // Never both sources or both targets.
            if let (Some(x), Some(y)) = (da.verdict.direction(), db.verdict.direction()) {
                prop_assert_ne!(x, y);
            }
            // Data only moves from a consistent source to a target that is not a working
            // Primary, and the final hg agrees with the verdict.
            if let Some(dir) = da.verdict.direction() {
                let (src, tgt) = if dir == SyncDirection::IAmSource { (&a, &b) } else { (&b, &a) };
                prop_assert!(src.disk > DiskState::Inconsistent);
                prop_assert!(!(tgt.role == Role::Primary && tgt.disk >= DiskState::Consistent));
                prop_assert_eq!(dir, SyncDirection::from_hg(da.hg));
                prop_assert!(matches!(da.hg.abs(), 1 | 2));
            }
            // The follow-up resync of a NoSync verdict is mirrored too.
            let (x, y) = (no_sync_resync_direction(&a, &b), no_sync_resync_direction(&b, &a));
            prop_assert_eq!(y, x.map(SyncDirection::mirror));
            if x.is_some() {
                prop_assert_eq!(da.verdict, Verdict::NoSync);
            }
            // #145: NoSync only with equal current generations.
            if da.verdict == Verdict::NoSync {
                prop_assert_eq!(masked(a.uuids.current), masked(b.uuids.current));
                prop_assert_eq!(da.hg, 0);
            }
        }

        // The raw compare is mirror-symmetric too.
        #[test]
        fn uuid_compare_mirrors(a in side_info(), b in side_info()) {
            let (x, y) = (uuid_compare(&a, &b), uuid_compare(&b, &a));
            prop_assert_eq!(y.1, mirror_rule(x.1));
            prop_assert_eq!(y.0, if x.0.abs() >= 100 { x.0 } else { -x.0 });
        }
    }
}
