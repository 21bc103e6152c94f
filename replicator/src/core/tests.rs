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
        }
    }

    fn bytes(&self, source: DataSource) -> Vec<u8> {
        match source {
            DataSource::Client(id) => self.client_bufs[&id].clone(),
            DataSource::Frame(seq) => self.frame_bufs[&seq].clone(),
            DataSource::ResyncRead(off) => self.read_bufs[&off].clone(),
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
                let payload = match msg {
                    PeerMsg::Data { source, .. } | PeerMsg::ResyncData { source, .. } => {
                        Some(self.n[i].bytes(source))
                    }
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
                            PeerMsg::Data { .. } | PeerMsg::ResyncData { .. } => {
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
            if !progressed {
                return;
            }
        }
        panic!("did not settle");
    }

    fn exec_local(&mut self, i: usize, io: LocalIo, op: LocalOp) {
        let n = &mut self.n[i];
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
                let data =
                    n.disk[offset_bytes as usize..(offset_bytes + len_bytes) as usize].to_vec();
                n.read_bufs.insert(offset_bytes, data);
            }
            LocalOp::Flush => {}
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
