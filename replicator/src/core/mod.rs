//! The replication core: a deterministic, sans-IO state machine. No tokio, no files, no clock:
//! `step(now_ms, input)` takes one input (a client request, a peer message, a disk completion,
//! a tick, an operator command) and returns the actions to perform, in order (write locally,
//! send a frame, ack a client, persist metadata, emit an event). The daemon drives it with real
//! sockets and io_uring; the simulator drives the very same code with simulated ones.
//!
//! Roles and states change only here, in `step`, which dispatches per role and replication
//! state (`step_primary`, `step_secondary`, `step_sync_source`, `step_sync_target`).
//! PROTOCOL.md §5 (write path), §6 (liveness) and §7 (resync, decisions) are the spec.

/// `mutated!(Name)`: true when the deliberate bug `Name` is selected (feature `mutations`,
/// simulator tests only); a constant `false` otherwise.
macro_rules! mutated {
    ($m:ident) => {{
        #[cfg(feature = "mutations")]
        let on = $crate::core::mutation::active($crate::core::mutation::Mutation::$m);
        #[cfg(not(feature = "mutations"))]
        let on = false;
        on
    }};
}
pub(crate) use mutated;

mod admin;
mod conflicts;
mod connection;
pub mod decision;
#[cfg(feature = "mutations")]
pub mod mutation;
mod peer_read;
mod primary;
mod resync;
mod secondary;
#[cfg(test)]
mod tests;
mod types;
mod verify;

use std::collections::BTreeMap;

use urbd_protocol::{
    ConnectionState, DiskState, GenerationUuids, ReplicationProtocol, ReplicationState, Role,
};

pub use conflicts::Conflicts;
pub use peer_read::{PEER_READS_MAX, PEER_READ_BYTES_MAX};
pub use types::*;

use crate::meta::Bitmap;

/// Low bits of a frame key hold the frame's seq; the high bits the connection epoch.
const FRAME_KEY_SEQ_BITS: u32 = 44;

fn seq_of_key(key: u64) -> u64 {
    key & ((1 << FRAME_KEY_SEQ_BITS) - 1)
}

/// Fixed parameters of one resource on one node.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub node_name: String,
    pub peer_name: String,
    pub protocol: ReplicationProtocol,
    pub data_size_bytes: u64,
    pub bytes_per_bit: u32,
    /// A peer request (write, flush) unanswered this long: the peer is lost.
    pub timeout_ms: u64,
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    /// Largest resync request; a multiple of `bytes_per_bit`.
    pub resync_chunk_bytes: u32,
    pub resync_inflight_max: usize,
    /// Operations that may wait behind overlapping ones.
    pub conflicts_waiting_max: usize,
    /// Activity-log extents kept hot, and their size.
    pub al_extents: usize,
    pub al_extent_bytes: u64,
    /// Seeds new generation UUIDs (random in the daemon, the seed in the simulator): the core
    /// itself has no randomness, so a run replays exactly.
    pub uuid_seed: u64,
    /// Automatic split-brain recovery policies (all `disconnect` by default).
    pub split_brain: decision::SplitBrainPolicy,
    /// Resync (and online verify) rate ceiling, bytes per second (PROTOCOL.md §7.6.1).
    pub resync_rate_max_bytes_per_s: u64,
    /// The rate the resync is held to while application writes are in flight.
    pub resync_rate_min_bytes_per_s: u64,
    /// Digest of online verify (`verify-alg`).
    pub verify_alg: urbd_protocol::DigestAlgorithm,
    /// Checksum-based resync (`csums-alg`, PROTOCOL.md §7.6.4): a full resync from this node
    /// compares digests first and sends only the blocks that differ; `None` sends every block.
    pub csums_alg: Option<urbd_protocol::DigestAlgorithm>,
    /// `on-io-error = detach` (PROTOCOL.md §5.6): a node that is not Primary stops using a disk
    /// that failed an I/O and goes on Diskless; `false` (pass-on) only reports errors.
    pub on_io_error_detach: bool,
}

impl CoreConfig {
    /// `[resync] rate-bytes-per-s-max` default: 200 MiB/s.
    pub const RESYNC_RATE_MAX_DEFAULT: u64 = 200 << 20;
    /// `[resync] rate-bytes-per-s-min` default: 10 MiB/s.
    pub const RESYNC_RATE_MIN_DEFAULT: u64 = 10 << 20;
}

/// Metadata the core starts from (read from the superblock).
#[derive(Debug, Clone)]
pub struct Restored {
    pub uuids: GenerationUuids,
    pub disk: DiskState,
    /// The node was Primary and did not shut down cleanly.
    pub crashed_primary: bool,
    pub bitmap: Bitmap,
    /// Activity-log extents hot at the crash (resynced when `crashed_primary`).
    pub al_extents: Vec<u64>,
}

#[derive(Debug, Clone, Copy)]
struct ClientWrite {
    offset_bytes: u64,
    len_bytes: u64,
    local_done: bool,
    local_ok: bool,
    /// Seq of the data frame sent for it, until the peer acks it (or is lost).
    peer_seq: Option<u64>,
    peer_received: bool,
    acked: bool,
    sent_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct ClientFlush {
    local_done: bool,
    local_ok: bool,
    peer_waiting: bool,
    sent_ms: u64,
}

/// Who holds a range in the conflict tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Client(u64),
    ResyncRead(u64),
    Peer(u64),
    ResyncWrite(u64),
    /// A block of the online-verify range on VerifyS (verify block id).
    VerifyS(u64),
    /// A VerifyRequest on VerifyT (frame key).
    VerifyT(u64),
    /// A CsumRequest on the SyncTarget (frame key).
    CsumT(u64),
}

/// The state machine of one resource on one node.
pub struct Core {
    cfg: CoreConfig,
    now_ms: u64,
    role: Role,
    disk: DiskState,
    conn: ConnectionState,
    repl: ReplicationState,
    peer: Option<PeerView>,
    uuids: GenerationUuids,
    crashed_primary: bool,
    split_brain: bool,
    discard_my_data: bool,
    /// Stay StandAlone after the link drops (operator disconnect, split brain, unrelated data).
    standalone_sticky: bool,
    /// A promotion waiting for the peer's PromoteReply (`force` flag).
    promoting: Option<bool>,
    /// A demotion whose local flush has not completed: the superblock still says Primary.
    demote_flush_pending: bool,
    /// Ranges the peer acknowledged but has not yet flushed (epoch, offset, length).
    peer_volatile: Vec<(u64, u64, u64)>,
    /// Counts FlushReqs sent; a write acknowledged in epoch e is covered by the FlushReq that
    /// closes epoch e.
    flush_epoch: u64,
    /// FlushReqs in flight → the epoch each closes.
    flush_epochs: BTreeMap<u64, u64>,
    barrier_inflight: Option<u64>,
    barrier_count: u64,
    /// An operator disconnect waiting for the peer's flush (until this time).
    disconnect_deadline_ms: Option<u64>,
    bitmap: Bitmap,
    al_hot: Vec<u64>,
    clients: u32,
    /// Counts connections; tags work that belongs to one.
    epoch: u64,
    data_seq_next: u64,
    uuid_counter: u64,
    conflicts: Conflicts<Owner>,
    // Primary side.
    client_writes: BTreeMap<u64, ClientWrite>,
    waiting_clients: BTreeMap<u64, ClientRequest>,
    /// Data frames not yet acknowledged by the peer: seq → client id (or resync offset).
    peer_pending: BTreeMap<u64, PeerPending>,
    client_flushes: BTreeMap<u64, ClientFlush>,
    // Secondary side.
    peer_writes: BTreeMap<u64, PeerWrite>,
    peer_flushes: Vec<(u64, u64)>,
    /// Replicated writes completed (`cache_gen`) and covered by a completed peer flush
    /// (`flushed_gen`); flushes in flight → the `cache_gen` they cover.
    cache_gen: u64,
    flushed_gen: u64,
    flush_gens: BTreeMap<u64, u64>,
    /// Reads this Primary asked the peer for: `ReadRequest` seq → the waiting client read.
    peer_reads: BTreeMap<u64, peer_read::PeerReadWait>,
    /// Reads the peer asked this Secondary for: frame key → (`ReadRequest` seq, length).
    serving_reads: BTreeMap<u64, (u64, u64)>,
    // Resync.
    resync: Option<resync::Resync>,
    /// Resync reads still in flight when their resync ended (the peer was lost): their
    /// completions are dropped, even if a new resync reads the same offset meanwhile.
    orphan_resync_reads: Vec<u64>,
    /// The last finished resync (for status).
    last_resync: Option<ResyncStats>,
    /// `pause-sync` on this node / on the peer (PROTOCOL.md §7.6.2).
    sync_paused_here: bool,
    sync_paused_by_peer: bool,
    /// The resync/verify rate limiter (§7.6.1).
    throttle: resync::Throttle,
    /// When the last application write started (the rate controller's "under load").
    last_app_write_ms: Option<u64>,
    // Online verify (§7.7).
    verify: Option<verify::Verify>,
    /// The last finished verify (for status).
    last_verify: Option<VerifyProgress>,
    verify_block_next: u64,
    // Liveness.
    last_rx_ms: u64,
    ping_sent_ms: Option<u64>,
    last_ping_ms: u64,
    actions: Vec<Action>,
}

#[derive(Debug, Clone, Copy)]
enum PeerPending {
    Client(u64),
    Resync {
        offset_bytes: u64,
        len_bytes: u64,
    },
    /// A client write already answered (protocol A/B) whose peer copy is not yet confirmed.
    Answered {
        offset_bytes: u64,
        len_bytes: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct PeerWrite {
    /// The connection it arrived on: acks for an earlier connection's writes are never sent.
    epoch: u64,
    offset_bytes: u64,
    len_bytes: u64,
    fua: bool,
    zero: bool,
    resync: bool,
}

impl Core {
    /// A core for a node that just started (role Secondary, not connected).
    pub fn new(cfg: CoreConfig, restored: Restored) -> Core {
        assert!(cfg.bytes_per_bit.is_power_of_two());
        assert!(cfg.resync_chunk_bytes % cfg.bytes_per_bit == 0 && cfg.resync_chunk_bytes > 0);
        let mut core = Core {
            conflicts: Conflicts::new(cfg.conflicts_waiting_max),
            cfg,
            now_ms: 0,
            role: Role::Secondary,
            disk: restored.disk,
            conn: ConnectionState::StandAlone,
            repl: ReplicationState::Off,
            peer: None,
            uuids: restored.uuids,
            crashed_primary: restored.crashed_primary,
            split_brain: false,
            discard_my_data: false,
            standalone_sticky: false,
            promoting: None,
            demote_flush_pending: false,
            peer_volatile: Vec::new(),
            flush_epoch: 0,
            flush_epochs: BTreeMap::new(),
            barrier_inflight: None,
            barrier_count: 0,
            disconnect_deadline_ms: None,
            bitmap: restored.bitmap,
            al_hot: Vec::new(),
            clients: 0,
            epoch: 0,
            data_seq_next: 0,
            uuid_counter: 0,
            client_writes: BTreeMap::new(),
            waiting_clients: BTreeMap::new(),
            peer_pending: BTreeMap::new(),
            client_flushes: BTreeMap::new(),
            peer_writes: BTreeMap::new(),
            peer_flushes: Vec::new(),
            resync: None,
            orphan_resync_reads: Vec::new(),
            peer_reads: BTreeMap::new(),
            cache_gen: 0,
            flushed_gen: 0,
            flush_gens: BTreeMap::new(),
            serving_reads: BTreeMap::new(),
            last_resync: None,
            sync_paused_here: false,
            sync_paused_by_peer: false,
            throttle: resync::Throttle::default(),
            last_app_write_ms: None,
            verify: None,
            last_verify: None,
            verify_block_next: 0,
            last_rx_ms: 0,
            ping_sent_ms: None,
            last_ping_ms: 0,
            actions: Vec::new(),
        };
        if core.crashed_primary {
            // The extents hot at the crash may differ from the peer: they will be resynced.
            for extent in restored.al_extents {
                let off = extent * core.cfg.al_extent_bytes;
                let len = core
                    .cfg
                    .al_extent_bytes
                    .min(core.cfg.data_size_bytes.saturating_sub(off));
                if len > 0 {
                    core.bitmap.set_range(off, len);
                }
            }
        }
        core
    }

    /// Feeds one input at time `now_ms` and returns the actions to perform, in order.
    pub fn step(&mut self, now_ms: u64, input: Input) -> Vec<Action> {
        assert!(now_ms >= self.now_ms, "time went backwards");
        self.now_ms = now_ms;
        match input {
            Input::Tick => self.on_tick(),
            Input::Admin(cmd) => self.on_admin(cmd),
            Input::ClientAttached => self.clients += 1,
            Input::ClientDetached => {
                assert!(self.clients > 0, "client detached twice");
                self.clients -= 1;
            }
            Input::PeerConnected {
                peer,
                data_seq_next,
            } => self.on_peer_connected(peer, data_seq_next),
            Input::PeerLost { reason } => self.on_peer_lost(&reason),
            Input::Client(req) => match self.role {
                Role::Primary => self.step_primary(req),
                _ => self.refuse_client(req),
            },
            Input::PeerMessage { seq, msg } => {
                self.last_rx_ms = now_ms;
                self.on_peer_message(seq, msg);
            }
            Input::ReadFromPeer {
                id,
                offset_bytes,
                len_bytes,
            } => self.start_read_from_peer(id, offset_bytes, len_bytes),
            Input::LocalDone { io, ok } => {
                self.on_local_done(io, ok);
                if !ok {
                    let lost_writes = matches!(
                        io,
                        LocalIo::Peer(_) | LocalIo::ResyncWrite(_) | LocalIo::PeerFlush(_)
                    );
                    self.local_io_failed(&format!("{io:?}"), lost_writes);
                }
            }
            Input::DigestDone { io, digest } => {
                let failed = digest.is_none();
                self.on_digest_done(io, digest);
                if failed {
                    self.local_io_failed(&format!("{io:?}"), false);
                }
            }
            Input::PeerBitmap {
                first_bit,
                bit_count,
                bits,
            } => {
                if self.conn != ConnectionState::Connected {
                    return std::mem::take(&mut self.actions);
                }
                self.last_rx_ms = now_ms;
                self.on_peer_bitmap(first_bit, bit_count, &bits);
            }
        }
        self.check_graceful_disconnect();
        self.check_invariants();
        std::mem::take(&mut self.actions)
    }

    fn on_peer_message(&mut self, seq: u64, msg: PeerMsg) {
        if self.conn != ConnectionState::Connected {
            // A frame of a connection already gone (the driver raced its loss): never act on it.
            return;
        }
        match msg {
            PeerMsg::Ping => self.send_meta(PeerMsg::PingAck),
            PeerMsg::ReadRequest {
                offset_bytes,
                len_bytes,
            } => self.on_peer_read_request(seq, offset_bytes, len_bytes),
            PeerMsg::ReadReply { .. } | PeerMsg::ReadFailed { .. } => {
                self.on_peer_read_answer(seq, msg)
            }
            PeerMsg::PingAck => self.ping_sent_ms = None,
            PeerMsg::State(view) => self.on_peer_state(view),
            PeerMsg::RecvAck { .. }
            | PeerMsg::WriteAck { .. }
            | PeerMsg::NegAck { .. }
            | PeerMsg::FlushAck { .. } => self.on_peer_ack(msg),
            PeerMsg::Data { .. } | PeerMsg::Zero { .. } | PeerMsg::FlushReq { .. } => {
                self.step_secondary(seq, msg)
            }
            PeerMsg::ResyncData { .. }
            | PeerMsg::ResyncDone
            | PeerMsg::SyncUuid { .. }
            | PeerMsg::CsumRequest { .. } => self.step_sync_target(seq, msg),
            PeerMsg::InSync { .. } | PeerMsg::ResyncRequest { .. } => self.on_csum_reply(msg),
            PeerMsg::PromoteRequest
            | PeerMsg::PromoteReply { .. }
            | PeerMsg::NewCurrentUuid { .. } => self.on_peer_admin(msg),
            PeerMsg::Bitmap { .. } => self.emit(Action::Disconnect {
                reason: "bitmap frame without its bits".into(),
            }),
            PeerMsg::ResyncStart {
                full,
                sender_is_target,
            } => self.on_peer_resync_start(full, sender_is_target),
            PeerMsg::SyncPause { paused } => self.on_peer_sync_pause(paused),
            PeerMsg::VerifyStart { .. }
            | PeerMsg::VerifyRequest { .. }
            | PeerMsg::VerifyReply { .. } => self.on_peer_verify(seq, msg),
        }
    }

    fn on_local_done(&mut self, io: LocalIo, ok: bool) {
        match io {
            LocalIo::Client(id) => self.client_write_done(id, ok),
            LocalIo::ClientFlush(id) => self.client_flush_done(id, ok),
            LocalIo::Peer(seq) | LocalIo::ResyncWrite(seq) => self.peer_write_done(seq, ok),
            LocalIo::PeerFlush(flush_id) => self.peer_flush_done(flush_id, ok),
            LocalIo::ResyncRead(offset) => self.step_sync_source_read_done(offset, ok),
            LocalIo::PeerRead(seq) => self.peer_read_done(seq, ok),
            LocalIo::RoleFlush => {
                self.demote_flush_pending = false;
                if ok {
                    self.persist_superblock();
                } else {
                    self.event(Event::Message(
                        "flush after demotion failed: the metadata keeps saying Primary".into(),
                    ));
                }
            }
            LocalIo::VerifyDigest(_)
            | LocalIo::PeerVerifyDigest(_)
            | LocalIo::ResyncDigest(_)
            | LocalIo::PeerCsumDigest(_) => {
                panic!("a digest completes with Input::DigestDone, not LocalDone")
            }
        }
    }

    /// on-io-error = detach (PROTOCOL.md §5.6): a local I/O of a node that is not Primary failed.
    /// After a failed write (`lost_writes`) its metadata is marked Outdated (best effort: the
    /// disk may be gone) so that it is never promoted or copied from with the writes it missed
    /// (until a resync from an UpToDate peer); the driver stops using the disk, the node becomes
    /// Diskless and reconnects as such (the peer then marks every write, and its transfer log,
    /// out of sync: a bitmap resync after the disk is re-attached with `down` + `up`). A Primary
    /// does not detach: its errors go to the client and the blocks are marked out of sync.
    fn local_io_failed(&mut self, what: &str, lost_writes: bool) {
        if !self.cfg.on_io_error_detach
            || self.role == Role::Primary
            || matches!(self.disk, DiskState::Diskless | DiskState::Failed)
        {
            return;
        }
        self.event(Event::Message(format!(
            "local disk I/O failed ({what}): detaching the disk (on-io-error = detach); this \
             node is Diskless until the disk is repaired and re-attached (`urbdadm down` then \
             `urbdadm up`), then a resync brings it up to date"
        )));
        let marked = match self.disk {
            DiskState::UpToDate | DiskState::Consistent if lost_writes => DiskState::Outdated,
            d => d,
        };
        let meta = MetaState {
            disk: marked,
            ..self.meta_state()
        };
        self.set_disk(DiskState::Failed);
        self.emit(Action::Detach { meta });
        self.set_disk(DiskState::Diskless);
        if self.conn == ConnectionState::Connected {
            let reason = "the local disk failed and was detached; reconnecting Diskless";
            self.emit(Action::Disconnect {
                reason: reason.into(),
            });
            self.on_peer_lost(reason);
        }
    }

    fn emit(&mut self, action: Action) {
        self.actions.push(action);
    }

    fn event(&mut self, event: Event) {
        self.actions.push(Action::Event(event));
    }

    /// Sends a frame on the data socket, numbering it.
    fn send_data(&mut self, msg: PeerMsg) -> u64 {
        let seq = self.data_seq_next;
        self.data_seq_next += msg.wire_frames();
        self.emit(Action::Send {
            seq: Some(seq),
            msg,
        });
        seq
    }

    fn send_meta(&mut self, msg: PeerMsg) {
        self.emit(Action::Send { seq: None, msg });
    }

    fn meta_state(&self) -> MetaState {
        MetaState {
            uuids: self.uuids,
            disk: self.disk,
            primary: self.role == Role::Primary || self.demote_flush_pending,
            crashed_primary: self.crashed_primary,
        }
    }

    fn persist_superblock(&mut self) {
        let m = self.meta_state();
        self.emit(Action::Persist(Persist::Superblock(m)));
    }

    fn set_role(&mut self, role: Role) {
        if self.role != role {
            self.role = role;
            self.event(Event::Role(role));
        }
    }

    fn set_disk(&mut self, disk: DiskState) {
        if self.disk != disk {
            self.disk = disk;
            self.event(Event::Disk(disk));
        }
    }

    fn set_conn(&mut self, conn: ConnectionState) {
        if self.conn != conn {
            self.conn = conn;
            self.event(Event::Connection(conn));
        }
    }

    fn set_repl(&mut self, repl: ReplicationState) {
        if self.repl != repl {
            self.repl = repl;
            self.event(Event::Replication(repl));
        }
    }

    /// A new data generation (DRBD `uuid_new_current`): bitmap := current; current := new.
    fn new_current_uuid(&mut self, fresh: u64) {
        if self.uuids.bitmap == 0 {
            self.uuids.bitmap = self.uuids.current;
        }
        let primary_bit = u64::from(self.role == Role::Primary);
        self.uuids.current = (fresh & !1) | primary_bit;
    }

    /// A fresh UUID from the configured seed (splitmix64): never 0, never JUST_CREATED, bit 0
    /// clear.
    fn fresh_uuid(&mut self) -> u64 {
        loop {
            self.uuid_counter += 1;
            let mut z = self
                .cfg
                .uuid_seed
                .wrapping_add(self.uuid_counter.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let u = (z ^ (z >> 31)) & !1;
            if u != 0 && u != urbd_protocol::UUID_JUST_CREATED {
                return u;
            }
        }
    }

    // ---- read-only views, for status ----

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn disk_state(&self) -> DiskState {
        self.disk
    }
    pub fn connection_state(&self) -> ConnectionState {
        self.conn
    }
    pub fn replication_state(&self) -> ReplicationState {
        self.repl
    }
    pub fn peer(&self) -> Option<&PeerView> {
        self.peer.as_ref()
    }
    pub fn uuids(&self) -> GenerationUuids {
        self.uuids
    }
    pub fn split_brain(&self) -> bool {
        self.split_brain
    }
    pub fn clients(&self) -> u32 {
        self.clients
    }
    pub fn out_of_sync_bytes(&self) -> u64 {
        self.bitmap.dirty_bytes()
    }
    pub fn bitmap(&self) -> &Bitmap {
        &self.bitmap
    }
    /// Bitmap pages changed since the last call (for `Persist::Bitmap` and periodic saves).
    pub fn take_dirty_bitmap_pages(&mut self) -> Vec<usize> {
        self.bitmap.take_dirty_pages()
    }
    pub fn resync_progress(&self) -> Option<(u64, u64)> {
        self.resync.as_ref().map(|r| (r.done_bytes, r.total_bytes))
    }
    /// The running resync's counters, else the last finished one's (since this process
    /// started).
    pub fn resync_stats(&self) -> Option<ResyncStats> {
        self.resync
            .as_ref()
            .map(|r| r.stats(self.now_ms))
            .or(self.last_resync)
    }
    /// The running online verify, else the last finished one (since this process started).
    pub fn verify_progress(&self) -> Option<VerifyProgress> {
        self.verify
            .as_ref()
            .map(|v| v.progress())
            .or(self.last_verify)
    }
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// The key under which the driver keeps the payload of a data frame received with `seq` on
    /// the current connection (`DataSource::Frame(key)`): frame seqs restart with every
    /// connection, keys never repeat.
    pub fn frame_key(&self, seq: u64) -> u64 {
        assert!(seq < 1 << FRAME_KEY_SEQ_BITS, "frame seq out of range");
        (self.epoch << FRAME_KEY_SEQ_BITS) | seq
    }

    /// Invariants that must hold after every step (kept on in release builds).
    fn check_invariants(&self) {
        if matches!(
            self.repl,
            ReplicationState::SyncTarget | ReplicationState::PausedSyncT
        ) {
            assert!(
                self.disk == DiskState::Inconsistent,
                "SyncTarget with a {} disk",
                self.disk
            );
            assert!(self.role != Role::Primary, "a SyncTarget is never Primary");
        }
        if matches!(
            self.repl,
            ReplicationState::SyncSource | ReplicationState::PausedSyncS
        ) {
            assert!(
                self.disk == DiskState::UpToDate,
                "SyncSource with a {} disk",
                self.disk
            );
        }
        if self.role == Role::Primary {
            assert!(
                self.disk == DiskState::UpToDate,
                "a Primary's disk is {}, not UpToDate",
                self.disk
            );
            if let Some(p) = &self.peer {
                // Two Primaries may only meet to be told apart: a split brain, or a connection
                // being refused (unrelated data after forced promotions, urbd-sim --reckless
                // seed 34), which is torn down at once.
                assert!(
                    p.role != Role::Primary || self.split_brain || self.standalone_sticky,
                    "two Primaries"
                );
            }
        }
        if self.conn != ConnectionState::Connected {
            assert!(
                self.peer_pending.is_empty(),
                "peer requests outstanding while disconnected"
            );
            assert!(self.resync.is_none(), "resync while disconnected");
            assert!(self.verify.is_none(), "verify while disconnected");
        }
    }
}
