//! Two cores wired together in memory: in-memory disks, an ordered link, the driver contract
//! (actions in order, data from the named buffers). Table tests cite PROTOCOL.md sections.

use std::collections::{HashMap, VecDeque};

use urbd_protocol::{
    ConnectionState, DiskState, GenerationUuids, ReplicationProtocol, ReplicationState, Role,
    UUID_JUST_CREATED,
};

use super::*;
use crate::meta::Bitmap;

const SIZE: u64 = 1 << 20;
const BPB: u32 = 4096;

fn config(name: &str, peer: &str, protocol: ReplicationProtocol) -> CoreConfig {
    CoreConfig {
        node_name: name.into(),
        peer_name: peer.into(),
        protocol,
        data_size_bytes: SIZE,
        bytes_per_bit: BPB,
        timeout_ms: 6000,
        ping_interval_ms: 1000,
        ping_timeout_ms: 500,
        resync_chunk_bytes: 64 << 10,
        resync_inflight_max: 4,
        conflicts_waiting_max: 1024,
        al_extents: 8,
        al_extent_bytes: 4 << 20,
        uuid_seed: name.len() as u64 * 7919 + 1,
        split_brain: Default::default(),
        // Unlimited for the tests that do not measure the rate (§7.6.1).
        resync_rate_max_bytes_per_s: u64::MAX / 4096,
        resync_rate_min_bytes_per_s: u64::MAX / 4096,
        verify_alg: urbd_protocol::DigestAlgorithm::Crc32c,
        csums_alg: None,
        on_io_error_detach: true,
    }
}

fn fresh() -> Restored {
    Restored {
        uuids: GenerationUuids {
            current: UUID_JUST_CREATED,
            bitmap: 0,
            history: [0, 0],
        },
        disk: DiskState::Inconsistent,
        crashed_primary: false,
        bitmap: Bitmap::new(SIZE, BPB),
        al_extents: Vec::new(),
    }
}

struct Node {
    core: Core,
    disk: Vec<u8>,
    client_bufs: HashMap<u64, Vec<u8>>,
    frame_bufs: HashMap<u64, Vec<u8>>,
    read_bufs: HashMap<u64, Vec<u8>>,
    local: VecDeque<(LocalIo, LocalOp)>,
    inbox: VecDeque<(u64, PeerMsg, Option<Vec<u8>>)>,
    acks: Vec<(u64, Result<(), IoFailure>)>,
    replies: Vec<Result<(), String>>,
    wants_connect: bool,
    events: Vec<Event>,
    /// Local writes, zeroes and flushes fail (EIO).
    fail_writes: bool,
    /// The metadata of the last `Action::Detach`.
    detached: Option<MetaState>,
    /// Local reads fail (EIO).
    fail_reads: bool,
    peer_read_bufs: HashMap<u64, Vec<u8>>,
    /// Answers to `Input::ReadFromPeer`.
    reads_done: Vec<(u64, Result<Vec<u8>, IoFailure>)>,
}

impl Node {
    fn new(cfg: CoreConfig, restored: Restored) -> Node {
        Node {
            core: Core::new(cfg, restored),
            disk: vec![0; SIZE as usize],
            client_bufs: HashMap::new(),
            frame_bufs: HashMap::new(),
            read_bufs: HashMap::new(),
            local: VecDeque::new(),
            inbox: VecDeque::new(),
            acks: Vec::new(),
            replies: Vec::new(),
            wants_connect: false,
            events: Vec::new(),
            fail_writes: false,
            detached: None,
            fail_reads: false,
            peer_read_bufs: HashMap::new(),
            reads_done: Vec::new(),
        }
    }

    fn bytes(&self, source: DataSource) -> Vec<u8> {
        match source {
            DataSource::Client(id) => self.client_bufs[&id].clone(),
            DataSource::Frame(seq) => self.frame_bufs[&seq].clone(),
            DataSource::ResyncRead(off) => self.read_bufs[&off].clone(),
            DataSource::PeerRead(key) => self.peer_read_bufs[&key].clone(),
        }
    }
}

struct Pair {
    n: [Node; 2],
    now_ms: u64,
    link_up: bool,
    /// Deliver local completions only when the test says so (to look at in-between states).
    hold_local: [bool; 2],
    next_client_id: u64,
    /// ResyncData payload bytes each node sent.
    resync_sent: [u64; 2],
}

impl Pair {
    fn new(protocol: ReplicationProtocol) -> Pair {
        Pair {
            n: [
                Node::new(config("alpha", "beta", protocol), fresh()),
                Node::new(config("beta", "alpha", protocol), fresh()),
            ],
            now_ms: 1,
            link_up: true,
            hold_local: [false, false],
            next_client_id: 1,
            resync_sent: [0, 0],
        }
    }

    fn step(&mut self, i: usize, input: Input) {
        let actions = self.n[i].core.step(self.now_ms, input);
        for a in actions {
            self.apply(i, a);
        }
    }

    fn apply(&mut self, i: usize, action: Action) {
        let peer = 1 - i;
        match action {
            Action::Local { io, op } => self.n[i].local.push_back((io, op)),
            Action::Send { seq, msg } => {
                if !self.link_up || self.n[i].core.connection_state() != ConnectionState::Connected
                {
                    return;
                }
                if let PeerMsg::ResyncData { len_bytes, .. } = msg {
                    self.resync_sent[i] += len_bytes;
                }
                let payload = match msg {
                    PeerMsg::Data { source, .. }
                    | PeerMsg::ResyncData { source, .. }
                    | PeerMsg::ReadReply { source, .. } => Some(self.n[i].bytes(source)),
                    PeerMsg::Bitmap {
                        first_bit,
                        bit_count,
                    } => Some(self.n[i].core.bitmap_bits(first_bit, bit_count)),
                    _ => None,
                };
                self.n[peer]
                    .inbox
                    .push_back((seq.unwrap_or(0), msg, payload));
            }
            Action::AckClient { id, result } => self.n[i].acks.push((id, result)),
            Action::AdminReply(r) => self.n[i].replies.push(r),
            Action::StartConnecting => self.n[i].wants_connect = true,
            Action::Disconnect { .. } => self.cut(),
            Action::Release(_) | Action::Persist(_) => {}
            Action::Event(e) => self.n[i].events.push(e),
            Action::Detach { meta } => self.n[i].detached = Some(meta),
            Action::ReadDone { id, result } => {
                let n = &mut self.n[i];
                let r = result.map(|src| match src {
                    DataSource::Frame(key) => n.frame_bufs.remove(&key).expect("read payload"),
                    other => panic!("a peer read's data is a frame, not {other:?}"),
                });
                n.reads_done.push((id, r));
            }
        }
    }

    /// Breaks the link: both sides learn it, in-flight frames are lost.
    fn cut(&mut self) {
        self.link_up = false;
        for i in 0..2 {
            self.n[i].inbox.clear();
            if self.n[i].core.connection_state() == ConnectionState::Connected {
                self.step(
                    i,
                    Input::PeerLost {
                        reason: "link cut".into(),
                    },
                );
            }
        }
    }

    fn heal(&mut self) {
        self.link_up = true;
    }

    fn try_connect(&mut self) {
        let both = self.n[0].wants_connect && self.n[1].wants_connect;
        let idle = self
            .n
            .iter()
            .all(|n| n.core.connection_state() == ConnectionState::Connecting);
        if self.link_up && both && idle {
            let views = [self.n[0].core.view(), self.n[1].core.view()];
            self.n[0].wants_connect = false;
            self.n[1].wants_connect = false;
            // Both handshakes complete (each side has the other's State) before either acts.
            let a0 = self.n[0].core.step(
                self.now_ms,
                Input::PeerConnected {
                    peer: views[1],
                    data_seq_next: 0,
                },
            );
            let a1 = self.n[1].core.step(
                self.now_ms,
                Input::PeerConnected {
                    peer: views[0],
                    data_seq_next: 0,
                },
            );
            for a in a0 {
                self.apply(0, a);
            }
            for a in a1 {
                self.apply(1, a);
            }
        }
    }

    /// Runs local I/O and message delivery until nothing is left to do.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            if !self.run_once() {
                return;
            }
        }
        panic!("did not settle");
    }

    /// Up to `rounds` rounds of `run_once`.
    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            if !self.run_once() {
                return;
            }
        }
    }

    /// One local completion and one delivered message per node; false if nothing happened.
    fn run_once(&mut self) -> bool {
        {
            self.try_connect();
            let mut progressed = false;
            for i in 0..2 {
                if !self.hold_local[i] {
                    if let Some((io, op)) = self.n[i].local.pop_front() {
                        self.exec_local(i, io, op);
                        progressed = true;
                    }
                }
                if let Some((seq, msg, payload)) = self.n[i].inbox.pop_front() {
                    let payload_copy = payload.clone();
                    if let Some(p) = payload {
                        match msg {
                            PeerMsg::Data { .. }
                            | PeerMsg::ResyncData { .. }
                            | PeerMsg::ReadReply { .. } => {
                                let key = self.n[i].core.frame_key(seq);
                                self.n[i].frame_bufs.insert(key, p);
                            }
                            _ => {}
                        }
                    }
                    if let (
                        PeerMsg::Bitmap {
                            first_bit,
                            bit_count,
                        },
                        Some(bits),
                    ) = (msg, payload_copy)
                    {
                        self.step(
                            i,
                            Input::PeerBitmap {
                                first_bit,
                                bit_count,
                                bits,
                            },
                        );
                    } else {
                        self.step(i, Input::PeerMessage { seq, msg });
                    }
                    progressed = true;
                }
            }
            progressed
        }
    }

    fn exec_local(&mut self, i: usize, io: LocalIo, op: LocalOp) {
        let n = &mut self.n[i];
        if n.fail_writes
            && matches!(
                op,
                LocalOp::Write { .. } | LocalOp::Zero { .. } | LocalOp::Flush
            )
        {
            return self.step(i, Input::LocalDone { io, ok: false });
        }
        match op {
            LocalOp::Write {
                offset_bytes,
                len_bytes,
                source,
                ..
            } => {
                let data = n.bytes(source);
                assert_eq!(data.len() as u64, len_bytes);
                n.disk[offset_bytes as usize..(offset_bytes + len_bytes) as usize]
                    .copy_from_slice(&data);
            }
            LocalOp::Zero {
                offset_bytes,
                len_bytes,
                ..
            } => {
                n.disk[offset_bytes as usize..(offset_bytes + len_bytes) as usize].fill(0);
            }
            LocalOp::Read {
                offset_bytes,
                len_bytes,
            } => {
                if n.fail_reads {
                    return self.step(i, Input::LocalDone { io, ok: false });
                }
                let data =
                    n.disk[offset_bytes as usize..(offset_bytes + len_bytes) as usize].to_vec();
                if let LocalIo::PeerRead(key) = io {
                    n.peer_read_bufs.insert(key, data);
                } else {
                    n.read_bufs.insert(offset_bytes, data);
                }
            }
            LocalOp::Flush => {}
            LocalOp::Digest {
                offset_bytes,
                len_bytes,
                alg,
            } => {
                assert_eq!(alg, urbd_protocol::DigestAlgorithm::Crc32c);
                let data = &n.disk[offset_bytes as usize..(offset_bytes + len_bytes) as usize];
                let digest = Some(urbd_protocol::Digest::Crc32c(crc32c::crc32c(data)));
                self.step(i, Input::DigestDone { io, digest });
                return;
            }
        }
        self.step(i, Input::LocalDone { io, ok: true });
    }

    fn admin(&mut self, i: usize, cmd: AdminCmd) -> Result<(), String> {
        self.step(i, Input::Admin(cmd));
        self.settle();
        self.n[i].replies.pop().expect("admin reply")
    }

    fn write(&mut self, i: usize, offset_bytes: u64, data: Vec<u8>) -> u64 {
        let id = self.next_client_id;
        self.next_client_id += 1;
        let len_bytes = data.len() as u64;
        self.n[i].client_bufs.insert(id, data);
        self.step(
            i,
            Input::Client(ClientRequest::Write {
                id,
                offset_bytes,
                len_bytes,
                fua: false,
            }),
        );
        id
    }

    fn acked(&self, i: usize, id: u64) -> Option<Result<(), IoFailure>> {
        self.n[i].acks.iter().find(|a| a.0 == id).map(|a| a.1)
    }

    fn connect_both(&mut self) {
        assert_eq!(
            self.admin(
                0,
                AdminCmd::Connect {
                    discard_my_data: false
                }
            ),
            Ok(())
        );
        assert_eq!(
            self.admin(
                1,
                AdminCmd::Connect {
                    discard_my_data: false
                }
            ),
            Ok(())
        );
        self.settle();
    }

    /// Fresh pair, `primary --force` on alpha with some data: the initial full sync.
    fn synced(protocol: ReplicationProtocol) -> Pair {
        let mut p = Pair::new(protocol);
        for (k, b) in p.n[0].disk.iter_mut().enumerate() {
            *b = (k * 7 % 251) as u8;
        }
        p.connect_both();
        assert_eq!(p.admin(0, AdminCmd::Primary { force: true }), Ok(()));
        p.settle();
        // A tick sends the barrier that makes the resynced data durable on the peer.
        p.step(0, Input::Tick);
        p.settle();
        p
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| seed.wrapping_add((k % 253) as u8))
        .collect()
}

// PROTOCOL.md §7.2 rule 10: two fresh disks wait for the operator; `primary --force` then
// makes one the SyncSource of a full sync (§7.1).
#[test]
fn initial_sync_after_primary_force() {
    let mut p = Pair::new(ReplicationProtocol::C);
    p.connect_both();
    for n in &p.n {
        assert_eq!(n.core.connection_state(), ConnectionState::Connected);
        assert_eq!(n.core.replication_state(), ReplicationState::Established);
        assert_eq!(n.core.disk_state(), DiskState::Inconsistent);
    }
    p.n[0]
        .disk
        .iter_mut()
        .enumerate()
        .for_each(|(k, b)| *b = k as u8);
    assert_eq!(p.admin(0, AdminCmd::Primary { force: true }), Ok(()));
    p.settle();
    assert_eq!(p.n[0].core.role(), Role::Primary);
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
    assert_eq!(
        p.n[0].core.replication_state(),
        ReplicationState::Established
    );
    assert_eq!(
        p.n[1].core.replication_state(),
        ReplicationState::Established
    );
    assert!(
        p.n[0].disk == p.n[1].disk,
        "data regions identical after the initial sync"
    );
    assert_eq!(p.n[0].core.out_of_sync_bytes(), 0);
    assert_eq!(
        p.n[0].core.uuids().current & !1,
        p.n[1].core.uuids().current & !1
    );
}

// PROTOCOL.md §5.1: protocol C acks the client only after the peer's WriteAck.
#[test]
fn protocol_c_acks_after_the_peer_wrote() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    p.hold_local[1] = true;
    let id = p.write(0, 8192, pattern(3, 4096));
    p.settle();
    assert_eq!(p.acked(0, id), None, "no ack before the peer wrote");
    p.hold_local[1] = false;
    p.settle();
    assert_eq!(p.acked(0, id), Some(Ok(())));
    assert!(p.n[0].disk == p.n[1].disk);
}

// PROTOCOL.md §5.1: protocol A acks on local completion; B on the peer's RecvAck.
#[test]
fn protocols_a_and_b_ack_earlier() {
    for (protocol, acked_early) in [
        (ReplicationProtocol::A, true),
        (ReplicationProtocol::B, true),
    ] {
        let mut p = Pair::synced(protocol);
        p.hold_local[1] = true;
        let id = p.write(0, 0, pattern(9, 4096));
        p.settle();
        assert_eq!(p.acked(0, id).is_some(), acked_early, "protocol {protocol}");
        p.hold_local[1] = false;
        p.settle();
        assert!(p.n[0].disk == p.n[1].disk, "protocol {protocol}");
        assert_eq!(p.n[0].core.out_of_sync_bytes(), 0);
    }
}

// PROTOCOL.md §5.3: overlapping writes in flight are applied in the same order on both nodes.
#[test]
fn overlapping_writes_land_in_the_same_order_on_both() {
    let mut p = Pair::synced(ReplicationProtocol::A);
    p.hold_local[0] = true;
    p.hold_local[1] = true;
    let a = p.write(0, 0, pattern(1, 8192));
    let b = p.write(0, 4096, pattern(2, 8192));
    let c = p.write(0, 0, pattern(3, 4096));
    p.settle();
    // Let the secondary run first, then the primary, in arbitrary interleavings.
    p.hold_local[1] = false;
    p.settle();
    p.hold_local[0] = false;
    p.settle();
    for id in [a, b, c] {
        assert_eq!(p.acked(0, id), Some(Ok(())));
    }
    assert!(p.n[0].disk == p.n[1].disk, "replicas diverged");
    assert_eq!(&p.n[0].disk[0..4096], &pattern(3, 4096)[..]);
    assert_eq!(&p.n[0].disk[4096..12288], &pattern(2, 8192)[..]);
}

// PROTOCOL.md §5.5 and §7.2 rule 50/70: a write the peer never confirmed is marked before the
// client's ack; at reconnect only the marked blocks go over, from the Primary.
#[test]
fn peer_loss_marks_unconfirmed_writes_and_reconnect_resyncs_them() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    let uuid_before = p.n[0].core.uuids().current;
    p.hold_local[1] = true;
    let id = p.write(0, 65536, pattern(5, 8192));
    p.settle();
    p.cut();
    p.settle();
    assert_eq!(p.acked(0, id), Some(Ok(())), "the Primary goes on alone");
    assert_eq!(p.n[0].core.out_of_sync_bytes(), 8192);
    assert_ne!(
        p.n[0].core.uuids().current,
        uuid_before,
        "new data generation on peer loss"
    );
    // More writes while alone.
    let id2 = p.write(0, 0, pattern(6, 4096));
    p.settle();
    assert_eq!(p.acked(0, id2), Some(Ok(())));
    assert_eq!(p.n[0].core.out_of_sync_bytes(), 8192 + 4096);
    // The secondary's held write completes after the link is gone; its ack is lost.
    p.hold_local[1] = false;
    p.heal();
    p.settle();
    assert_eq!(p.n[0].core.connection_state(), ConnectionState::Connected);
    assert!(
        p.n[0].disk == p.n[1].disk,
        "bitmap resync made the replicas identical"
    );
    assert_eq!(p.n[0].core.out_of_sync_bytes(), 0);
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
}

// PROTOCOL.md §7.8: promotion refusals.
#[test]
fn refusals() {
    let mut p = Pair::new(ReplicationProtocol::C);
    let r = p.admin(0, AdminCmd::Primary { force: false });
    assert!(
        r.unwrap_err().contains("Inconsistent"),
        "an Inconsistent disk is not promotable"
    );
    let mut p = Pair::synced(ReplicationProtocol::C);
    let r = p.admin(1, AdminCmd::Primary { force: false });
    assert!(r.unwrap_err().contains("is Primary"), "peer is Primary");
    p.step(0, Input::ClientAttached);
    let r = p.admin(0, AdminCmd::Secondary { force: false });
    assert!(r.unwrap_err().contains("attached"));
    assert_eq!(p.admin(0, AdminCmd::Secondary { force: true }), Ok(()));
    assert_eq!(p.n[1].core.peer().map(|v| v.role), Some(Role::Secondary));
    assert_eq!(p.admin(1, AdminCmd::Primary { force: false }), Ok(()));
    assert_eq!(p.n[0].core.peer().map(|v| v.role), Some(Role::Primary));
}

// PROTOCOL.md §7.1: a SyncTarget is Inconsistent and never promotable.
#[test]
fn sync_target_is_never_promotable() {
    let mut p = Pair::new(ReplicationProtocol::C);
    p.connect_both();
    p.hold_local[1] = true;
    assert_eq!(p.admin(0, AdminCmd::Primary { force: true }), Ok(()));
    p.settle();
    assert_eq!(
        p.n[1].core.replication_state(),
        ReplicationState::SyncTarget
    );
    let r = p.admin(1, AdminCmd::Primary { force: true });
    assert!(r.unwrap_err().contains("SyncTarget"));
    p.hold_local[1] = false;
    p.settle();
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
}

// PROTOCOL.md §5.4: a FLUSH is acked when both disks flushed every write acked before it.
#[test]
fn flush_waits_for_the_peer() {
    let mut p = Pair::synced(ReplicationProtocol::A);
    p.hold_local[1] = true;
    let w = p.write(0, 0, pattern(4, 4096));
    p.settle();
    assert!(p.acked(0, w).is_some(), "protocol A acked early");
    p.step(0, Input::Client(ClientRequest::Flush { id: 999 }));
    p.settle();
    assert_eq!(
        p.acked(0, 999),
        None,
        "flush waits for the peer's write and flush"
    );
    p.hold_local[1] = false;
    p.settle();
    assert_eq!(p.acked(0, 999), Some(Ok(())));
}

// PROTOCOL.md §6: a silent peer is detected by the ping timeout.
#[test]
fn ping_timeout_drops_a_silent_peer() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    p.link_up = false; // frames vanish, nobody is told
    p.now_ms += 1000;
    p.step(0, Input::Tick);
    p.now_ms += 600;
    p.step(0, Input::Tick);
    assert_ne!(p.n[0].core.connection_state(), ConnectionState::Connected);
    assert_eq!(p.n[0].core.role(), Role::Primary);
}

// PROTOCOL.md §7.4: both promoted while cut, both wrote: split brain on both sides, nothing moved.
#[test]
fn split_brain_is_seen_by_both() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    p.cut();
    p.settle();
    assert_eq!(p.admin(1, AdminCmd::Primary { force: false }), Ok(()));
    p.write(0, 0, pattern(7, 4096));
    p.write(1, 4096, pattern(8, 4096));
    p.settle();
    let before = [p.n[0].disk.clone(), p.n[1].disk.clone()];
    p.heal();
    p.settle();
    for n in &p.n {
        assert!(
            n.core.split_brain(),
            "split brain seen by {}",
            n.core.config().node_name
        );
        assert_eq!(n.core.connection_state(), ConnectionState::StandAlone);
    }
    assert!(
        p.n[0].disk == before[0] && p.n[1].disk == before[1],
        "no data moved"
    );
}

// ---- Reconnect done right: rate control, pause, invalidate, online verify ----

impl Pair {
    fn set_rates(&mut self, max: u64, min: u64) {
        for n in &mut self.n {
            n.core.cfg.resync_rate_max_bytes_per_s = max;
            n.core.cfg.resync_rate_min_bytes_per_s = min;
        }
    }

    /// Advances simulated time by `ms`, ticking both nodes every 10 ms.
    fn advance(&mut self, ms: u64) {
        for _ in 0..ms / 10 {
            self.now_ms += 10;
            self.step(0, Input::Tick);
            self.step(1, Input::Tick);
            self.settle();
        }
    }

    fn repl(&self, i: usize) -> ReplicationState {
        self.n[i].core.replication_state()
    }

    fn verify_done(&self, i: usize) -> VerifyProgress {
        let v = self.n[i].core.verify_progress().expect("a verify ran");
        assert!(!v.running, "verify still running");
        v
    }
}

const CHUNK: u64 = 64 << 10;

// PROTOCOL.md §7.6.1: the resync never sends more than the maximum rate (one burst of at most
// one chunk on top), and it does not stop.
#[test]
fn resync_rate_is_bounded_by_the_maximum() {
    let mut p = Pair::new(ReplicationProtocol::C);
    let max = 256 << 10;
    p.set_rates(max, 64 << 10);
    p.n[0]
        .disk
        .iter_mut()
        .enumerate()
        .for_each(|(k, b)| *b = k as u8);
    p.connect_both();
    assert_eq!(p.admin(0, AdminCmd::Primary { force: true }), Ok(()));
    let mut per_second = Vec::new();
    while p.repl(0) == ReplicationState::SyncSource {
        let before = p.resync_sent[0];
        p.advance(1000);
        per_second.push(p.resync_sent[0] - before);
        assert!(per_second.len() < 10, "resync stalled: {per_second:?}");
    }
    // The first second includes the full bucket at start (one chunk).
    for (s, &bytes) in per_second.iter().enumerate() {
        assert!(
            bytes <= max + CHUNK,
            "second {s}: {bytes} bytes > max {max}"
        );
    }
    assert_eq!(p.resync_sent[0], SIZE);
    assert!(
        per_second.len() >= 3,
        "1 MiB at 256 KiB/s takes ~4 s: {per_second:?}"
    );
    assert!(p.n[0].disk == p.n[1].disk);
}

// §7.6.1: while application writes run, the resync goes at the minimum rate; when they stop,
// it goes back up to the maximum.
#[test]
fn resync_is_held_to_the_minimum_under_application_writes() {
    let mut p = Pair::new(ReplicationProtocol::C);
    let (max, min) = (512 << 10, 64 << 10);
    p.set_rates(max, min);
    p.connect_both();
    assert_eq!(p.admin(0, AdminCmd::Primary { force: true }), Ok(()));
    p.advance(100); // spend the initial burst
    let before = p.resync_sent[0];
    // 2 s of application writes, one every 50 ms.
    for k in 0..40u64 {
        p.write(0, (k % 16) * 4096, pattern(k as u8, 4096));
        p.advance(50);
    }
    let under_load = p.resync_sent[0] - before;
    assert!(
        under_load <= 2 * min + CHUNK,
        "{under_load} bytes in 2 s under load; min is {min}/s"
    );
    assert!(
        under_load >= CHUNK,
        "the resync must not starve: {under_load}"
    );
    let before = p.resync_sent[0];
    p.advance(1000);
    let idle = p.resync_sent[0] - before;
    assert!(
        idle > 2 * min + CHUNK,
        "back to the maximum when idle: {idle}"
    );
    p.advance(3000);
    assert_eq!(p.repl(0), ReplicationState::Established);
    assert!(p.n[0].disk == p.n[1].disk);
}

// §7.6.1: an application write that waits behind a resync read stops new resync reads until
// it has run.
#[test]
fn resync_reads_yield_to_a_waiting_application_write() {
    let mut p = Pair::new(ReplicationProtocol::C);
    p.connect_both();
    p.hold_local[0] = true;
    assert_eq!(p.admin(0, AdminCmd::Primary { force: true }), Ok(()));
    p.settle();
    let reads = |p: &Pair| {
        p.n[0]
            .local
            .iter()
            .filter(|(io, _)| matches!(io, LocalIo::ResyncRead(_)))
            .count()
    };
    assert_eq!(reads(&p), 4, "resync_inflight_max reads queued");
    // A write to the first block waits behind its resync read.
    let id = p.write(0, 0, pattern(1, 4096));
    assert!(p.n[0].core.waiting_clients.contains_key(&id));
    p.hold_local[0] = false;
    p.run(1); // one resync read completes: its ack frees a slot, but the write waits
    p.hold_local[0] = true;
    p.settle();
    assert!(
        p.n[0].core.waiting_clients.is_empty(),
        "the write got its range as soon as the read finished"
    );
    p.hold_local[0] = false;
    p.settle();
    assert_eq!(p.acked(0, id), Some(Ok(())));
    assert!(p.n[0].disk == p.n[1].disk);
}

// §7.6.2: pause-sync stops the SyncSource (PausedSyncS, the peer PausedSyncT) and keeps the
// resync state; resume-sync continues where it stopped. Either side may pause; only the side
// that paused resumes.
#[test]
fn pause_and_resume_sync() {
    let mut p = Pair::new(ReplicationProtocol::C);
    p.set_rates(256 << 10, 256 << 10);
    p.n[0]
        .disk
        .iter_mut()
        .enumerate()
        .for_each(|(k, b)| *b = (k / 7) as u8);
    p.connect_both();
    assert_eq!(p.admin(0, AdminCmd::Primary { force: true }), Ok(()));
    p.advance(1000);
    let sent = p.resync_sent[0];
    assert!(sent > 0 && sent < SIZE);
    assert_eq!(p.admin(0, AdminCmd::PauseSync), Ok(()));
    assert_eq!(p.repl(0), ReplicationState::PausedSyncS);
    assert_eq!(p.repl(1), ReplicationState::PausedSyncT);
    p.advance(2000);
    assert_eq!(p.resync_sent[0], sent, "nothing sent while paused");
    let (done, total) = p.n[0].core.resync_progress().unwrap();
    assert_eq!((done, total), (sent, SIZE), "resync state kept");
    assert_eq!(
        p.admin(1, AdminCmd::Primary { force: true }).unwrap_err(),
        "this node is SyncTarget (its disk is being resynced); wait for `urbdadm wait-sync` to finish"
    );
    assert_eq!(p.admin(0, AdminCmd::ResumeSync), Ok(()));
    assert_eq!(p.repl(0), ReplicationState::SyncSource);
    assert_eq!(p.repl(1), ReplicationState::SyncTarget);
    p.advance(500);
    // The target pauses; the source cannot resume it.
    assert_eq!(p.admin(1, AdminCmd::PauseSync), Ok(()));
    assert_eq!(p.repl(0), ReplicationState::PausedSyncS);
    let e = p.admin(0, AdminCmd::ResumeSync).unwrap_err();
    assert!(e.contains("paused on beta"), "{e}");
    assert_eq!(p.admin(1, AdminCmd::ResumeSync), Ok(()));
    p.advance(5000);
    assert_eq!(p.repl(0), ReplicationState::Established);
    assert_eq!(p.resync_sent[0], SIZE, "every block sent exactly once");
    assert!(p.n[0].disk == p.n[1].disk);
    assert!(p
        .admin(0, AdminCmd::PauseSync)
        .unwrap_err()
        .contains("no resync"));
}

// §7.6.3: invalidate discards the local data (full resync from the peer); invalidate-remote
// the peer's. Both need the connection Established and the would-be SyncSource UpToDate; a
// Primary never discards its data.
#[test]
fn invalidate_and_invalidate_remote() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    // invalidate on the Secondary: it becomes SyncTarget of everything.
    p.n[1].disk[4096..8192].fill(0xee);
    let sent = p.resync_sent[0];
    p.hold_local[1] = true;
    assert_eq!(p.admin(1, AdminCmd::Invalidate), Ok(()));
    assert_eq!(p.repl(1), ReplicationState::SyncTarget);
    assert_eq!(p.n[1].core.disk_state(), DiskState::Inconsistent);
    assert_eq!(p.repl(0), ReplicationState::SyncSource);
    assert!(p
        .admin(1, AdminCmd::Invalidate)
        .unwrap_err()
        .contains("SyncTarget"));
    p.hold_local[1] = false;
    p.settle();
    assert_eq!(p.resync_sent[0] - sent, SIZE, "a full resync");
    assert!(p.n[0].disk == p.n[1].disk);
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
    assert_eq!(p.repl(0), ReplicationState::Established);
    // Refusals: invalidate on the Primary, invalidate-remote toward the Primary.
    assert!(p
        .admin(0, AdminCmd::Invalidate)
        .unwrap_err()
        .contains("Primary"));
    assert!(p
        .admin(1, AdminCmd::InvalidateRemote)
        .unwrap_err()
        .contains("Primary"));
    // invalidate-remote from the Primary: the peer receives everything.
    p.n[1].disk[0..100].fill(0x11);
    let sent = p.resync_sent[0];
    assert_eq!(p.admin(0, AdminCmd::InvalidateRemote), Ok(()));
    assert_eq!(p.repl(0), ReplicationState::Established, "done already");
    assert_eq!(p.resync_sent[0] - sent, SIZE);
    assert!(p.n[0].disk == p.n[1].disk);
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
    // Not connected.
    p.cut();
    p.settle();
    assert!(p
        .admin(1, AdminCmd::Invalidate)
        .unwrap_err()
        .contains("not connected"));
    assert!(p
        .admin(0, AdminCmd::InvalidateRemote)
        .unwrap_err()
        .contains("not connected"));
    // Neither side UpToDate: nobody can be the source.
    let mut p = Pair::new(ReplicationProtocol::C);
    p.connect_both();
    let e = p.admin(0, AdminCmd::Invalidate).unwrap_err();
    assert!(e.contains("disk is Inconsistent"), "{e}");
    let e = p.admin(0, AdminCmd::InvalidateRemote).unwrap_err();
    assert!(e.contains("disk is Inconsistent"), "{e}");
}

fn corrupt(p: &mut Pair, i: usize, blocks: &[u64]) {
    for &b in blocks {
        let off = (b * u64::from(BPB)) as usize + 17;
        p.n[i].disk[off] ^= 0x5a;
    }
}

fn marked_blocks(p: &Pair, i: usize) -> Vec<u64> {
    let bm = p.n[i].core.bitmap();
    (0..bm.bit_count()).filter(|&b| bm.is_set(b)).collect()
}

// §7.7: verify finds exactly the corrupted blocks, marks them on both nodes, changes no data;
// `--repair` then resyncs exactly those from the node that ran it.
#[test]
fn verify_finds_exactly_the_corrupted_blocks_and_repair_fixes_them() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    let bad = [3u64, 4, 5, 100, 255];
    corrupt(&mut p, 1, &bad);
    let before = p.n[1].disk.clone();
    let verify = AdminCmd::Verify {
        start_bytes: None,
        stop_bytes: None,
        repair: false,
    };
    p.step(0, Input::Admin(verify.clone()));
    assert_eq!(p.repl(0), ReplicationState::VerifyS);
    p.settle();
    assert_eq!(p.n[0].replies.pop(), Some(Ok(())));
    let v = p.verify_done(0);
    assert_eq!(v.found_bytes, bad.len() as u64 * u64::from(BPB));
    assert_eq!(v.done_bytes, SIZE);
    assert_eq!(
        p.verify_done(1).found_bytes,
        v.found_bytes,
        "VerifyT counts too"
    );
    assert_eq!(marked_blocks(&p, 0), bad);
    assert_eq!(marked_blocks(&p, 1), bad);
    assert!(p.n[1].disk == before, "verify alone changes no data");
    for i in 0..2 {
        assert_eq!(p.repl(i), ReplicationState::Established);
    }
    // A sub-range: only the blocks in it.
    p.n[0].core.bitmap.clear_all();
    p.n[1].core.bitmap.clear_all();
    let sub = AdminCmd::Verify {
        start_bytes: Some(4 * 4096 + 100),
        stop_bytes: Some(101 * 4096 - 1),
        repair: false,
    };
    assert_eq!(p.admin(0, sub), Ok(()));
    assert_eq!(marked_blocks(&p, 0), [4, 5, 100]);
    // --repair: found and resynced from alpha at once.
    p.n[0].core.bitmap.clear_all();
    p.n[1].core.bitmap.clear_all();
    let sent = p.resync_sent[0];
    let repair = AdminCmd::Verify {
        start_bytes: None,
        stop_bytes: None,
        repair: true,
    };
    assert_eq!(p.admin(0, repair), Ok(()));
    assert_eq!(p.resync_sent[0] - sent, bad.len() as u64 * u64::from(BPB));
    assert!(p.n[0].disk == p.n[1].disk, "repaired");
    assert_eq!(p.n[0].core.out_of_sync_bytes(), 0);
    assert_eq!(p.n[1].core.out_of_sync_bytes(), 0);
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
    // A second pass finds nothing.
    assert_eq!(p.admin(0, verify), Ok(()));
    assert_eq!(p.verify_done(0).found_bytes, 0);
}

// §7.7: application writes racing the verify never make it report a difference, whatever the
// interleaving of local completions and frames (protocols A and C).
#[test]
fn verify_has_no_false_positive_under_writes() {
    for protocol in [ReplicationProtocol::A, ReplicationProtocol::C] {
        for seed in 0..8u64 {
            let mut p = Pair::synced(protocol);
            p.step(
                0,
                Input::Admin(AdminCmd::Verify {
                    start_bytes: None,
                    stop_bytes: None,
                    repair: false,
                }),
            );
            let mut k = seed;
            for round in 0..200u64 {
                k = k
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let block = (k >> 33) % 256;
                let len = 4096 * (1 + (k >> 20) % 3).min(256 - block);
                p.write(0, block * 4096, pattern(round as u8, len as usize));
                p.hold_local[1] = (k >> 7) % 3 == 0;
                p.hold_local[0] = (k >> 9) % 4 == 0;
                p.run(((k >> 12) % 5) as usize);
            }
            p.hold_local = [false, false];
            p.settle();
            let v = p.verify_done(0);
            assert_eq!(v.done_bytes, SIZE);
            assert_eq!(v.found_bytes, 0, "false positive ({protocol}, seed {seed})");
            assert!(p.n[0].disk == p.n[1].disk);
            assert_eq!(p.n[0].core.out_of_sync_bytes(), 0);
        }
    }
}

// §7.7: verify needs an Established connection and two UpToDate disks; a Secondary whose peer
// is Primary sends the operator to the Primary; a VerifyT node is not promoted meanwhile.
#[test]
fn verify_refusals() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    let v = AdminCmd::Verify {
        start_bytes: None,
        stop_bytes: None,
        repair: false,
    };
    let e = p.admin(1, v.clone()).unwrap_err();
    assert!(e.contains("run `urbdadm verify` there"), "{e}");
    assert_eq!(p.admin(0, AdminCmd::Secondary { force: false }), Ok(()));
    p.hold_local[1] = true;
    p.step(0, Input::Admin(v.clone()));
    p.settle();
    assert_eq!(p.repl(1), ReplicationState::VerifyT);
    let e = p.admin(1, AdminCmd::Primary { force: false }).unwrap_err();
    assert!(e.contains("VerifyT"), "{e}");
    assert!(p.admin(0, v.clone()).unwrap_err().contains("VerifyS"));
    p.hold_local[1] = false;
    p.settle();
    assert_eq!(p.verify_done(0).found_bytes, 0);
    p.cut();
    p.settle();
    assert!(p.admin(0, v).unwrap_err().contains("not connected"));
}

// §7.7: losing the peer mid-verify ends it on both sides; the marks made so far stay.
#[test]
fn verify_ends_when_the_peer_is_lost() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    corrupt(&mut p, 1, &[1]);
    p.step(
        0,
        Input::Admin(AdminCmd::Verify {
            start_bytes: None,
            stop_bytes: None,
            repair: false,
        }),
    );
    p.run(40);
    p.cut();
    p.settle();
    for i in 0..2 {
        let v = p.n[i].core.verify_progress().expect("verify ran");
        assert!(!v.running && v.done_bytes < SIZE);
    }
    assert_eq!(marked_blocks(&p, 0), [1]);
}

// PROTOCOL.md §5.4: a write the peer acknowledged but has not flushed is still at risk (its
// cache may die with it): losing the peer before the barrier marks it out of sync; after the
// barrier's FlushAck it is durable there and nothing is marked.
#[test]
fn peer_cache_is_trusted_only_after_a_barrier() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    let id = p.write(0, 0, pattern(1, 4096));
    p.settle();
    assert_eq!(p.acked(0, id), Some(Ok(())));
    p.cut();
    p.settle();
    assert_eq!(
        p.n[0].core.out_of_sync_bytes(),
        4096,
        "acked but unflushed on the peer"
    );

    let mut p = Pair::synced(ReplicationProtocol::C);
    let id = p.write(0, 0, pattern(2, 4096));
    p.settle();
    p.step(0, Input::Tick); // the barrier: FlushReq → the peer flushes → FlushAck
    p.settle();
    assert_eq!(p.acked(0, id), Some(Ok(())));
    p.cut();
    p.settle();
    assert_eq!(
        p.n[0].core.out_of_sync_bytes(),
        0,
        "flushed on the peer before the cut"
    );
}

// ---- Checksum-based resync (csums-alg) ----

impl Pair {
    fn set_csums(&mut self, alg: Option<urbd_protocol::DigestAlgorithm>) {
        for n in &mut self.n {
            n.core.cfg.csums_alg = alg;
        }
    }
}

// PROTOCOL.md §7.6.4: with csums-alg, a full resync (here: invalidate) compares digests first:
// identical blocks are not sent, blocks that differ are (one comparison unit each, 64 KiB),
// and the data is identical after. Only the blocks sent are tracked until a barrier (§5.4):
// the target already had the others.
#[test]
fn csums_resync_sends_only_the_blocks_that_differ() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    p.set_csums(Some(urbd_protocol::DigestAlgorithm::Crc32c));
    // Identical disks: nothing is sent.
    let sent = p.resync_sent[0];
    assert_eq!(p.admin(1, AdminCmd::Invalidate), Ok(()));
    p.settle();
    assert_eq!(p.repl(0), ReplicationState::Established);
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
    assert_eq!(p.resync_sent[0] - sent, 0, "identical blocks are not sent");
    let s = p.n[0].core.resync_stats().expect("a resync ran");
    assert!(!s.running && s.source);
    assert_eq!(
        (s.in_sync_bytes, s.sent_bytes, s.done_bytes),
        (SIZE, 0, SIZE)
    );
    assert_eq!(p.n[1].core.resync_stats().unwrap().in_sync_bytes, SIZE);
    // Three comparison units differ (blocks 3 and 5 share the first): only they are sent.
    p.step(0, Input::Tick);
    p.settle();
    corrupt(&mut p, 1, &[3, 5, 100, 255]);
    let sent = p.resync_sent[0];
    assert_eq!(p.admin(1, AdminCmd::Invalidate), Ok(()));
    p.settle();
    assert_eq!(
        p.resync_sent[0] - sent,
        3 * CHUNK,
        "the differing units only"
    );
    assert!(p.n[0].disk == p.n[1].disk);
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
    let s = p.n[0].core.resync_stats().unwrap();
    assert_eq!(
        (s.sent_bytes, s.in_sync_bytes),
        (3 * CHUNK, SIZE - 3 * CHUNK)
    );
    let t = p.n[1].core.resync_stats().unwrap();
    assert_eq!(
        (t.sent_bytes, t.in_sync_bytes),
        (3 * CHUNK, SIZE - 3 * CHUNK)
    );
    // The transfer log (§5.4): losing the peer before a barrier marks the blocks it was sent,
    // not those it was found to hold already.
    p.cut();
    p.settle();
    assert_eq!(p.n[0].core.out_of_sync_bytes(), 3 * CHUNK);
    // csums-alg none: every block is sent, as before.
    let mut p = Pair::synced(ReplicationProtocol::C);
    let sent = p.resync_sent[0];
    assert_eq!(p.admin(1, AdminCmd::Invalidate), Ok(()));
    p.settle();
    assert_eq!(p.resync_sent[0] - sent, SIZE);
    assert_eq!(p.n[0].core.resync_stats().unwrap().in_sync_bytes, 0);
}

// §7.6.4: a bitmap resync (here: verify --repair) never compares digests: its blocks are
// known to differ.
#[test]
fn csums_are_for_full_resyncs_only() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    p.set_csums(Some(urbd_protocol::DigestAlgorithm::Crc32c));
    corrupt(&mut p, 1, &[7]);
    let sent = p.resync_sent[0];
    let repair = AdminCmd::Verify {
        start_bytes: None,
        stop_bytes: None,
        repair: true,
    };
    assert_eq!(p.admin(0, repair), Ok(()));
    p.settle();
    assert_eq!(p.resync_sent[0] - sent, u64::from(BPB));
    assert_eq!(p.n[0].core.resync_stats().unwrap().csums, None);
    assert!(p.n[0].disk == p.n[1].disk);
}

// §7.6.4 and §7.6: application writes racing the checksum comparisons (on the blocks being
// compared, whatever the interleaving of local completions and frames) never leave old data
// on the target: the data is identical after, and both bitmaps are clear.
#[test]
fn a_write_racing_a_csum_comparison_never_leaves_old_data() {
    for protocol in [ReplicationProtocol::A, ReplicationProtocol::C] {
        for seed in 0..12u64 {
            let mut p = Pair::synced(protocol);
            p.set_csums(Some(urbd_protocol::DigestAlgorithm::Crc32c));
            p.step(0, Input::Tick);
            p.settle();
            // Differences in the first units, where the writes go too.
            corrupt(&mut p, 1, &[0, 1, 17, 18, 40, 63]);
            p.step(1, Input::Admin(AdminCmd::Invalidate));
            let mut k = seed;
            for round in 0..120u64 {
                k = k
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let block = (k >> 33) % 64;
                let len = 4096 * (1 + (k >> 20) % 3);
                p.write(0, block * 4096, pattern(round as u8, len as usize));
                p.hold_local[1] = (k >> 7) % 3 == 0;
                p.hold_local[0] = (k >> 9) % 4 == 0;
                p.run(((k >> 12) % 5) as usize);
            }
            p.hold_local = [false, false];
            p.settle();
            assert_eq!(p.repl(0), ReplicationState::Established, "seed {seed}");
            assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
            assert!(
                p.n[0].disk == p.n[1].disk,
                "old data on the target ({protocol}, seed {seed})"
            );
            assert_eq!(p.n[0].core.out_of_sync_bytes(), 0);
            assert_eq!(p.n[1].core.out_of_sync_bytes(), 0);
            let s = p.n[0].core.resync_stats().unwrap();
            assert!(s.in_sync_bytes > 0 && s.sent_bytes > 0, "{s:?}");
        }
    }
}

// PROTOCOL.md §5.6: on-io-error = detach. The Secondary's disk fails a write: the Primary's
// write is acked (its own disk has it) and marked; the Secondary detaches (metadata Outdated),
// reconnects Diskless, and every later write is marked for the resync after re-attach.
#[test]
fn secondary_write_error_detaches_and_the_primary_goes_on() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    p.n[1].fail_writes = true;
    let id = p.write(0, 4096, pattern(1, 4096));
    p.settle();
    assert_eq!(
        p.acked(0, id),
        Some(Ok(())),
        "the Primary's own write succeeded"
    );
    assert_eq!(p.n[1].core.disk_state(), DiskState::Diskless);
    assert_eq!(
        p.n[1].detached.map(|m| m.disk),
        Some(DiskState::Outdated),
        "a node that missed a write is never promoted with it"
    );
    assert!(p.n[0].core.out_of_sync_bytes() >= 4096);
    p.heal();
    p.settle();
    assert_eq!(p.n[0].core.connection_state(), ConnectionState::Connected);
    assert_eq!(
        p.n[0].core.peer().map(|v| v.disk),
        Some(DiskState::Diskless)
    );
    let before = p.n[0].core.out_of_sync_bytes();
    let id2 = p.write(0, 65536, pattern(2, 8192));
    p.settle();
    assert_eq!(p.acked(0, id2), Some(Ok(())));
    assert_eq!(p.n[0].core.out_of_sync_bytes(), before + 8192);
    assert!(
        p.admin(1, AdminCmd::Primary { force: false }).is_err(),
        "a Diskless node is not promotable"
    );
}

// PROTOCOL.md §5.6: on-io-error = pass-on: the failed write is NegAcked and marked, the
// Secondary keeps its disk and the connection.
#[test]
fn secondary_write_error_with_pass_on_only_marks() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    p.n[1].core.cfg.on_io_error_detach = false;
    p.n[1].fail_writes = true;
    let id = p.write(0, 4096, pattern(3, 4096));
    p.settle();
    assert_eq!(p.acked(0, id), Some(Ok(())));
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
    assert_eq!(p.n[1].detached, None);
    assert_eq!(p.n[0].core.connection_state(), ConnectionState::Connected);
    assert_eq!(p.n[0].core.out_of_sync_bytes(), 4096);
}

// PROTOCOL.md §5.7: the Primary's failed read is served from the peer's copy when it is
// current; otherwise EIO — never wrong data.
#[test]
fn primary_read_error_is_served_from_the_peer_or_fails_cleanly() {
    let mut p = Pair::synced(ReplicationProtocol::C);
    let id = p.write(0, 8192, pattern(9, 4096));
    p.settle();
    p.step(0, Input::Tick);
    p.settle();
    assert_eq!(p.acked(0, id), Some(Ok(())));
    // The peer's copy is current: the read comes from it.
    p.step(
        0,
        Input::ReadFromPeer {
            id: 100,
            offset_bytes: 8192,
            len_bytes: 4096,
        },
    );
    p.settle();
    let got = p.n[0].reads_done.pop().expect("answered");
    assert_eq!(got, (100, Ok(pattern(9, 4096))));
    // A range marked out of sync: the peer's copy may be old, so EIO.
    p.cut();
    let id2 = p.write(0, 16384, pattern(10, 4096));
    p.settle();
    assert_eq!(p.acked(0, id2), Some(Ok(())));
    p.heal();
    p.hold_local[1] = true;
    p.settle();
    p.step(
        0,
        Input::ReadFromPeer {
            id: 101,
            offset_bytes: 16384,
            len_bytes: 4096,
        },
    );
    p.settle();
    assert_eq!(p.n[0].reads_done.pop(), Some((101, Err(IoFailure::Io))));
    p.hold_local[1] = false;
    p.settle();
    // The peer cannot read either: EIO.
    p.n[1].fail_reads = true;
    p.n[1].core.cfg.on_io_error_detach = false;
    p.step(
        0,
        Input::ReadFromPeer {
            id: 102,
            offset_bytes: 0,
            len_bytes: 4096,
        },
    );
    p.settle();
    assert_eq!(p.n[0].reads_done.pop(), Some((102, Err(IoFailure::Io))));
    // Peer gone: EIO at once.
    p.cut();
    p.settle();
    p.step(
        0,
        Input::ReadFromPeer {
            id: 103,
            offset_bytes: 0,
            len_bytes: 4096,
        },
    );
    assert_eq!(p.n[0].reads_done.pop(), Some((103, Err(IoFailure::Io))));
}
