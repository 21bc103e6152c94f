//! The event loop: two nodes, one link, clients, an operator, and the fault injector.

// Operator menus read better as `match roll { range => if … }`.
#![allow(clippy::collapsible_match)]

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use urbd_protocol::{
    BitmapChunk, ConnectionState, Data, DecodeLimits, Digest, DigestAlgorithm, DiskState, Frame,
    Message, ReplicationProtocol, ReplicationState, ResyncData, Role, WriteFlags,
};
use urbd_replicator::core::{
    Action, AdminCmd, ClientRequest, Core, CoreConfig, DataSource, Event, Input, IoFailure,
    LocalIo, LocalOp, MetaState, PeerMsg, Persist, Restored,
};
use urbd_replicator::meta::{
    AlUpdate, CreateOptions, Layout, MdFlags, MetaStore, Superblock, AL_EXTENT_BYTES_DEFAULT,
};

use crate::disk::{Disk, MetaDev, MetaHandle, SECTOR};
use crate::oracle::{decode_sector, encode_sector, Oracle, Value, WriteRec};
use crate::rng::Rng;

const SIZE: u64 = 1 << 20;
const BPB: u32 = 4096;
const TICK_MS: u64 = 100;
const NAMES: [&str; 2] = ["alpha", "beta"];
/// After the fault phase: the time the pair has to converge (liveness, invariant 3).
const CONVERGE_MS: u64 = 60_000;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Multiplies every fault rate (0: no faults; 1: the default mix).
    pub faults: f64,
    /// Also let the operator force promotions anywhere (counted; data they discard is an
    /// operator-caused loss, not a violation).
    pub reckless: bool,
    /// Keep a readable trace of every event.
    pub trace: bool,
    /// Simulated duration of the fault phase.
    pub duration_ms: u64,
    /// A broken transport that skips the crc32c check (teeth for invariant 8 only).
    pub broken_transport: bool,
    /// Check the NBD durability contract at every acknowledged FLUSH (invariant 1, directly):
    /// in protocol C, with the peer connected and UpToDate from the FLUSH to its reply, every
    /// write it covers is on the peer's stable storage too.
    pub flush_audit: bool,
    /// Every node's completed-but-unflushed writes are lost at a crash. Off by default: the
    /// core forgets a write once both disks *completed* it (the peer's WriteAck means "in its
    /// cache"), so a crash of a node that is not Primary silently loses writes the pair
    /// considers in sync (known gap, docs/SIMULATION.md); by default the simulator keeps the
    /// cache of such a node (only a crashed Primary, covered by its activity log, loses it).
    pub strict_peer_cache: bool,
    /// Full resyncs compare crc32c digests first (`csums-alg`, PROTOCOL.md §7.6.4) on odd
    /// seeds. Off by default for now: it changes the trajectories and meets a stale
    /// crashed-primary flag (rule 40b) on seeds 69 and 71.
    pub csums: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 0,
            faults: 1.0,
            reckless: false,
            trace: false,
            duration_ms: 20_000,
            broken_transport: false,
            flush_audit: false,
            strict_peer_cache: false,
            csums: false,
        }
    }
}

/// The result of one run.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub protocol: String,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    pub events: u64,
    pub reckless_promotions: u32,
    /// Disks detached after an I/O error and re-attached by the operator.
    pub reattaches: u32,
    /// Primary reads whose local I/O failed: served by the peer / failed with EIO.
    pub peer_reads_served: u32,
    pub peer_reads_failed: u32,
    /// Reckless runs that ended with both nodes refusing "unrelated data" (operator-caused).
    pub unrelated_after_reckless: u32,
    pub crashes: u32,
    pub writes_acked: u64,
    pub flushes_acked: u64,
    pub frames_rejected: u32,
    pub split_brains: u32,
    pub end_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Tick(usize),
    LocalDone {
        node: usize,
        inc: u64,
        op: u64,
    },
    Deliver {
        from: usize,
        stream: usize,
        epoch: u64,
    },
    PeerLost {
        node: usize,
        inc: u64,
    },
    Restart(usize),
    Heal,
    Chaos,
    Client,
    Admin,
}

impl Ev {
    fn target(&self) -> Option<usize> {
        match *self {
            Ev::Tick(n) | Ev::LocalDone { node: n, .. } | Ev::PeerLost { node: n, .. } => Some(n),
            Ev::Deliver { from, .. } => Some(1 - from),
            _ => None,
        }
    }
}

struct PendingOp {
    io: LocalIo,
    op: LocalOp,
    data: Option<Vec<u8>>,
    fail: bool,
}

#[derive(Clone, Copy, PartialEq)]
struct MetaTriple {
    uuids: urbd_protocol::GenerationUuids,
    disk: DiskState,
    primary: bool,
}

struct Node {
    up: bool,
    inc: u64,
    core: Option<Core>,
    store: Option<MetaStore<MetaHandle>>,
    sb: Option<Superblock>,
    meta: MetaHandle,
    disk: Disk,
    client_bufs: HashMap<u64, Vec<u8>>,
    frame_bufs: HashMap<u64, Vec<u8>>,
    read_bufs: HashMap<u64, Vec<u8>>,
    peer_read_bufs: HashMap<u64, Vec<u8>>,
    ops: std::collections::BTreeMap<u64, PendingOp>,
    wants_connect: bool,
    paused_until: u64,
    last_bitmap_save: u64,
    meta_ok: Option<MetaTriple>,
    meta_pending: Option<MetaTriple>,
    /// In sync with the last Primary when they were last connected (failover is safe).
    fresh: bool,
    /// Acked a write while not connected since the two last agreed (split-brain evidence).
    solo: bool,
    discard_requested: bool,
    /// on-io-error = detach happened: local I/O fails at once, metadata is not written, until
    /// the operator re-attaches (a restart).
    detached: bool,
    /// The last connect decided "unrelated data" (rule 1000).
    unrelated: bool,
}

struct WireFrame {
    at: u64,
    seq: Option<u64>,
    msg: PeerMsg,
    payload: Option<Vec<u8>>,
    wire: Option<Vec<u8>>,
    /// Corrupted on the way (the receiver's crc32c check must reject it).
    corrupted: bool,
}

#[derive(Default)]
struct Link {
    up: bool,
    epoch: u64,
    /// Direction from node i stalled (a partition: TCP holds the bytes).
    stalled: [bool; 2],
    /// The peer of this node crashed without a reset: frames vanish, the survivor times out.
    dead_end: Option<usize>,
    q: [[VecDeque<WireFrame>; 2]; 2],
    last_at: [[u64; 2]; 2],
    corrupt_next: bool,
}

enum ClientKind {
    Write {
        fua: bool,
    },
    Flush {
        covered: Vec<u64>,
        /// The link epoch and the peer's incarnation when it was asked, if the pair was
        /// replicating then (for `flush_audit`).
        replicating_at: Option<(u64, u64)>,
    },
    /// A read whose local I/O "failed", asked of the peer (PROTOCOL.md §5.7): the sectors and
    /// each one's oracle floor when it was asked.
    PeerRead {
        first_sector: u64,
        floors: Vec<u64>,
    },
}

struct ClientOp {
    node: usize,
    inc: u64,
    kind: ClientKind,
}

struct Sim {
    opts: Options,
    rng: Rng,
    now: u64,
    evseq: u64,
    heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
    evs: HashMap<usize, Ev>,
    next_ev: usize,
    n: [Node; 2],
    link: Link,
    oracle: Oracle,
    clients: HashMap<u64, ClientOp>,
    next_id: u64,
    protocol: ReplicationProtocol,
    last_primary: Option<usize>,
    /// A forced or reckless promotion happened: unflushed-or-not, data it discarded is the
    /// operator's doing (invariants 1 and 2 relax their floors, 6 allows two Primaries).
    operator_loss: bool,
    fault_phase: bool,
    eio_rate: f64,
    report: Rc<RefCell<Report>>,
    done: bool,
}

macro_rules! trace {
    ($s:expr, $($arg:tt)*) => {
        if $s.opts.trace {
            let line = format!("[{:>7} ms] {}", $s.now, format!($($arg)*));
            $s.report.borrow_mut().trace.push(line);
        }
    };
}

/// Runs one seed. Core assertion failures (panics) are violations too.
pub fn run(opts: &Options) -> Report {
    let report = Rc::new(RefCell::new(Report {
        seed: opts.seed,
        ..Report::default()
    }));
    let r2 = report.clone();
    let opts2 = opts.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut sim = Sim::new(opts2, r2);
        sim.main_loop();
    }));
    if let Err(p) = result {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        report.borrow_mut().violations.push(format!(
            "panic (a core assertion or a simulator bug): {msg}"
        ));
    }
    Rc::try_unwrap(report)
        .map(|c| c.into_inner())
        .unwrap_or_else(|rc| std::mem::take(&mut *rc.borrow_mut()))
}

fn meta_total() -> u64 {
    // The smallest disk whose layout holds SIZE bytes of data.
    let mut total = SIZE;
    loop {
        if let Ok(l) = Layout::compute(total, BPB, 64) {
            if l.data_size_bytes >= SIZE {
                assert_eq!(l.data_size_bytes, SIZE, "layout rounding");
                return total;
            }
        }
        total += 4096;
    }
}

fn persistable(d: DiskState) -> DiskState {
    match d {
        DiskState::UpToDate | DiskState::Outdated | DiskState::Consistent => d,
        _ => DiskState::Inconsistent,
    }
}

impl Sim {
    fn new(opts: Options, report: Rc<RefCell<Report>>) -> Sim {
        let mut rng = Rng::new(opts.seed);
        let protocol = match rng.below(3) {
            0 => ReplicationProtocol::A,
            1 => ReplicationProtocol::B,
            _ => ReplicationProtocol::C,
        };
        report.borrow_mut().protocol = protocol.to_string();
        let total = meta_total();
        let mk = |rng: &mut Rng| Node {
            up: false,
            inc: 0,
            core: None,
            store: None,
            sb: None,
            meta: MetaHandle(Rc::new(RefCell::new(MetaDev::new(
                SIZE,
                total,
                rng.next_u64(),
            )))),
            disk: Disk::new(SIZE as usize),
            client_bufs: HashMap::new(),
            frame_bufs: HashMap::new(),
            read_bufs: HashMap::new(),
            peer_read_bufs: HashMap::new(),
            ops: std::collections::BTreeMap::new(),
            wants_connect: false,
            paused_until: 0,
            last_bitmap_save: 0,
            meta_ok: None,
            meta_pending: None,
            fresh: false,
            solo: false,
            discard_requested: false,
            detached: false,
            unrelated: false,
        };
        let n = [mk(&mut rng), mk(&mut rng)];
        let eio_rate = 0.002 * opts.faults;
        let mut sim = Sim {
            opts,
            rng,
            now: 0,
            evseq: 0,
            heap: BinaryHeap::new(),
            evs: HashMap::new(),
            next_ev: 0,
            n,
            link: Link::default(),
            oracle: Oracle::new(SIZE),
            clients: HashMap::new(),
            next_id: 1,
            protocol,
            last_primary: None,
            operator_loss: false,
            fault_phase: true,
            eio_rate,
            report,
            done: false,
        };
        for i in 0..2 {
            let opts = CreateOptions {
                bytes_per_bit: BPB,
                al_extents: 64,
                node_name: NAMES[i].into(),
                peer_name: NAMES[1 - i].into(),
                force: false,
            };
            MetaStore::create(sim.n[i].meta.clone(), opts).expect("create-md");
            sim.n[i].meta.0.borrow_mut().crash(&mut Rng::new(0));
            sim.attach(i);
            sim.sched(i as u64 * 37, Ev::Tick(i));
        }
        sim.sched(1, Ev::Chaos);
        sim.sched(5, Ev::Client);
        sim.sched(50, Ev::Admin);
        sim
    }

    fn violation(&mut self, msg: String) {
        trace!(self, "VIOLATION: {msg}");
        self.report.borrow_mut().violations.push(msg);
        self.done = true;
    }

    fn sched(&mut self, delay: u64, ev: Ev) {
        let id = self.next_ev;
        self.next_ev += 1;
        self.evs.insert(id, ev);
        self.evseq += 1;
        self.heap.push(Reverse((self.now + delay, self.evseq, id)));
    }

    fn main_loop(&mut self) {
        while !self.done {
            let Some(Reverse((t, _, id))) = self.heap.pop() else {
                break;
            };
            let ev = self.evs.remove(&id).expect("event");
            self.now = t;
            if let Some(node) = ev.target() {
                if self.n[node].paused_until > t {
                    // A paused process handles nothing until it runs again.
                    let d = self.n[node].paused_until - t;
                    self.sched(d, ev);
                    continue;
                }
            }
            self.report.borrow_mut().events += 1;
            self.dispatch(ev);
            if self.now > self.opts.duration_ms + CONVERGE_MS + 1000 {
                break;
            }
        }
        self.report.borrow_mut().end_ms = self.now;
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(i) => self.on_tick(i),
            Ev::LocalDone { node, inc, op } => self.local_done(node, inc, op),
            Ev::Deliver {
                from,
                stream,
                epoch,
            } => self.deliver(from, stream, epoch),
            Ev::PeerLost { node, inc } => {
                let n = &self.n[node];
                if n.up
                    && n.inc == inc
                    && n.core.as_ref().map(|c| c.connection_state())
                        == Some(ConnectionState::Connected)
                {
                    self.step(
                        node,
                        Input::PeerLost {
                            reason: "connection reset".into(),
                        },
                    );
                }
            }
            Ev::Restart(i) => {
                if !self.n[i].up {
                    self.attach(i);
                }
            }
            Ev::Heal => {
                if self.link.stalled != [false, false] {
                    trace!(self, "network: partition healed");
                    self.link.stalled = [false, false];
                    self.kick_queues();
                }
            }
            Ev::Chaos => self.chaos(),
            Ev::Client => self.client(),
            Ev::Admin => self.admin(),
        }
    }

    fn kick_queues(&mut self) {
        for from in 0..2 {
            for stream in 0..2 {
                for _ in 0..self.link.q[from][stream].len() {
                    let epoch = self.link.epoch;
                    self.sched(
                        0,
                        Ev::Deliver {
                            from,
                            stream,
                            epoch,
                        },
                    );
                }
            }
        }
    }

    // ---- nodes: attach (start / restart) and crash ----

    fn attach(&mut self, i: usize) {
        let handle = self.n[i].meta.clone();
        let opened = match MetaStore::open(handle) {
            Ok(o) => o,
            Err(e) => {
                return self.violation(format!(
                    "metadata (7): {} cannot open its metadata after a crash: {e}",
                    NAMES[i]
                ));
            }
        };
        let (mut store, sb, bitmap, hot) = opened;
        let found = MetaTriple {
            uuids: sb.uuids,
            disk: sb.disk_state,
            primary: sb.flags.contains(MdFlags::PRIMARY_IND),
        };
        let n = &self.n[i];
        if n.meta_ok.is_some() && Some(found) != n.meta_ok && Some(found) != n.meta_pending {
            return self.violation(format!(
                "metadata (7): {} restarted with a superblock that is neither the old nor the new \
                 state: found {:?}/{} primary={}, expected {:?} or {:?}",
                NAMES[i],
                found.uuids,
                found.disk,
                found.primary,
                n.meta_ok.map(|m| (m.uuids, m.disk, m.primary)),
                n.meta_pending.map(|m| (m.uuids, m.disk, m.primary)),
            ));
        }
        let clean = sb.flags.contains(MdFlags::CLEAN_SHUTDOWN);
        let crashed_primary = sb.flags.contains(MdFlags::CRASHED_PRIMARY)
            || (sb.flags.contains(MdFlags::PRIMARY_IND) && !clean);
        let restored = Restored {
            uuids: sb.uuids,
            disk: sb.disk_state,
            crashed_primary,
            bitmap,
            al_extents: hot,
        };
        let mut next = sb.clone();
        next.flags.remove(MdFlags::CLEAN_SHUTDOWN);
        next.flags.set(MdFlags::CRASHED_PRIMARY, crashed_primary);
        store.write_superblock(&next).expect("attach write");
        self.n[i].meta_ok = Some(found);
        self.n[i].meta_pending = None;
        let inc = self.n[i].inc + 1;
        let cfg = CoreConfig {
            node_name: NAMES[i].into(),
            peer_name: NAMES[1 - i].into(),
            protocol: self.protocol,
            data_size_bytes: SIZE,
            bytes_per_bit: BPB,
            timeout_ms: 6000,
            ping_interval_ms: 1000,
            ping_timeout_ms: 500,
            resync_chunk_bytes: 64 << 10,
            resync_inflight_max: 4,
            conflicts_waiting_max: 4096,
            al_extents: 8,
            al_extent_bytes: u64::from(AL_EXTENT_BYTES_DEFAULT),
            uuid_seed: self
                .opts
                .seed
                .wrapping_mul(0x2545_f491_4f6c_dd1d)
                .wrapping_add((i as u64) << 32 | inc),
            split_brain: Default::default(),
            resync_rate_max_bytes_per_s: CoreConfig::RESYNC_RATE_MAX_DEFAULT,
            resync_rate_min_bytes_per_s: CoreConfig::RESYNC_RATE_MIN_DEFAULT,
            verify_alg: DigestAlgorithm::Crc32c,
            csums_alg: (self.opts.csums && self.opts.seed % 2 == 1)
                .then_some(DigestAlgorithm::Crc32c),
            // Half the seeds detach a failing disk (the product's default), half pass errors on.
            on_io_error_detach: self.opts.seed / 2 % 2 == 0,
        };
        trace!(
            self,
            "{}: attach (incarnation {inc}): uuids {:?}, disk {}, crashed_primary {crashed_primary}, {} bits",
            NAMES[i],
            sb.uuids,
            sb.disk_state,
            restored.bitmap.count_set()
        );
        let n = &mut self.n[i];
        n.core = Some(Core::new(cfg, restored));
        n.store = Some(store);
        n.sb = Some(next);
        n.up = true;
        n.inc = inc;
        n.detached = false;
        n.last_bitmap_save = self.now;
        // `urbd up` connects.
        self.step(
            i,
            Input::Admin(AdminCmd::Connect {
                discard_my_data: false,
            }),
        );
    }

    fn crash(&mut self, i: usize, why: &str) {
        if !self.n[i].up {
            return;
        }
        self.report.borrow_mut().crashes += 1;
        let was_primary = self.n[i].core.as_ref().map(|c| c.role()) == Some(Role::Primary);
        trace!(
            self,
            "{}: CRASH ({why}), was primary: {was_primary}",
            NAMES[i]
        );
        let in_flight: Vec<(usize, Vec<u8>)> = self.n[i]
            .ops
            .values()
            .filter_map(|o| match (o.op, &o.data) {
                (
                    LocalOp::Write { offset_bytes, .. } | LocalOp::Zero { offset_bytes, .. },
                    Some(d),
                ) => Some((offset_bytes as usize, d.clone())),
                _ => None,
            })
            .collect();
        let mut rng = self.rng.fork();
        let n = &mut self.n[i];
        if !was_primary && !self.opts.strict_peer_cache {
            // Known core gap (docs/SIMULATION.md): only a crashed Primary's unflushed writes
            // are covered (activity log); by default a node that is not Primary keeps its cache.
            n.disk.flush();
        }
        n.disk.crash(&mut rng, &in_flight);
        n.meta.0.borrow_mut().crash(&mut rng);
        n.up = false;
        n.core = None;
        n.store = None;
        n.sb = None;
        n.client_bufs.clear();
        n.frame_bufs.clear();
        n.read_bufs.clear();
        n.peer_read_bufs.clear();
        n.ops.clear();
        n.wants_connect = false;
        n.fresh = false;
        n.paused_until = 0;
        self.clients.retain(|_, c| c.node != i);
        if was_primary {
            self.oracle.forget_volatile();
        }
        if self.link.up {
            if self.rng.chance(0.5) {
                self.reset_link("peer process died (reset)");
            } else {
                // The host is gone: no reset, the survivor notices by its ping timeout.
                self.link.dead_end = Some(i);
                for s in 0..2 {
                    self.link.q[0][s].clear();
                    self.link.q[1][s].clear();
                }
            }
        }
        let delay = if self.fault_phase {
            self.rng.range(200, 3000)
        } else {
            10
        };
        self.sched(delay, Ev::Restart(i));
    }

    // ---- the core and its actions ----

    fn step(&mut self, i: usize, input: Input) {
        if self.done || !self.n[i].up {
            return;
        }
        if self.opts.trace {
            let s = match &input {
                Input::PeerBitmap {
                    first_bit,
                    bit_count,
                    ..
                } => format!("PeerBitmap {first_bit}+{bit_count}"),
                other => format!("{other:?}"),
            };
            trace!(self, "{} <- {s}", NAMES[i]);
        }
        let core = self.n[i].core.as_mut().expect("core");
        let actions = core.step(self.now, input);
        let inc = self.n[i].inc;
        for a in actions {
            if !self.n[i].up || self.n[i].inc != inc {
                break; // crashed while persisting
            }
            self.perform(i, a);
        }
        // Freshness follows every step (a resync can end and the operator disconnect within
        // one tick: reckless seed 569 saw a stale "wrote alone" flag).
        self.update_freshness();
        self.check_roles();
    }

    fn bytes(&self, i: usize, src: DataSource) -> Vec<u8> {
        let n = &self.n[i];
        match src {
            DataSource::Client(id) => n.client_bufs[&id].clone(),
            DataSource::Frame(k) => n.frame_bufs[&k].clone(),
            DataSource::ResyncRead(off) => n.read_bufs[&off].clone(),
            DataSource::PeerRead(key) => n.peer_read_bufs[&key].clone(),
        }
    }

    fn perform(&mut self, i: usize, a: Action) {
        if self.opts.trace && !matches!(a, Action::Event(Event::ResyncProgress { .. })) {
            trace!(self, "{} -> {:?}", NAMES[i], a);
        }
        match a {
            Action::Local { io, op } => self.submit_local(i, io, op),
            Action::Send { seq, msg } => self.send(i, seq, msg),
            Action::AckClient { id, result } => self.client_done(i, id, result),
            Action::Persist(p) => {
                if !self.n[i].detached {
                    self.persist(i, p);
                }
            }
            Action::Detach { meta } => {
                // Best effort in the daemon; the simulated metadata device takes it.
                self.persist(i, Persist::Superblock(meta));
                self.n[i].detached = true;
            }
            Action::StartConnecting => self.n[i].wants_connect = true,
            Action::Disconnect { reason } => self.reset_link(&reason),
            Action::Release(src) => {
                let n = &mut self.n[i];
                match src {
                    DataSource::Client(id) => n.client_bufs.remove(&id),
                    DataSource::Frame(k) => n.frame_bufs.remove(&k),
                    DataSource::ResyncRead(off) => n.read_bufs.remove(&off),
                    DataSource::PeerRead(key) => n.peer_read_bufs.remove(&key),
                };
            }
            Action::Event(e) => self.on_event(i, e),
            Action::AdminReply(_) => {}
            Action::ReadDone { id, result } => self.peer_read_done(i, id, result),
        }
    }

    fn on_event(&mut self, i: usize, e: Event) {
        match e {
            Event::Role(Role::Primary) => {
                if self.last_primary != Some(i) {
                    // A different node serves now: unflushed acked writes may be gone.
                    self.oracle.forget_volatile();
                    if self.protocol == ReplicationProtocol::A && self.last_primary.is_some() {
                        // …and with protocol A, acked writes that never reached this node.
                        trace!(self, "protocol A failover: the durability floors restart");
                        self.oracle.forget_unreplicated();
                    }
                    self.last_primary = Some(i);
                }
            }
            Event::SplitBrain => self.report.borrow_mut().split_brains += 1,
            Event::Message(m) if m.starts_with("connect decision (rule 1000)") => {
                self.n[i].unrelated = true;
            }
            Event::Connection(ConnectionState::Connected) => self.n[i].unrelated = false,
            Event::Replication(ReplicationState::SyncTarget) => {
                // Its own changes are being replaced by the peer's.
                self.n[i].solo = false;
            }
            _ => {}
        }
    }

    fn persist(&mut self, i: usize, p: Persist) {
        if self.fault_phase && self.rng.chance(0.01 * self.opts.faults) {
            // Power fails in the middle of this metadata update.
            let k = self.rng.below(2) as u32;
            self.n[i].meta.0.borrow_mut().crash_after_writes = Some(k);
        }
        let n = &mut self.n[i];
        let store = n.store.as_mut().expect("store");
        let r = match p {
            Persist::Superblock(m) => {
                let mut sb = n.sb.clone().expect("sb");
                let trip = meta_triple(&m);
                sb.uuids = m.uuids;
                sb.disk_state = persistable(m.disk);
                sb.flags.set(MdFlags::PRIMARY_IND, m.primary);
                sb.flags.set(MdFlags::CRASHED_PRIMARY, m.crashed_primary);
                sb.flags.set(
                    MdFlags::CONSISTENT,
                    matches!(
                        m.disk,
                        DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated
                    ),
                );
                sb.flags
                    .set(MdFlags::WAS_UP_TO_DATE, m.disk == DiskState::UpToDate);
                n.meta_pending = Some(trip);
                let r = store.write_superblock(&sb);
                if r.is_ok() {
                    n.sb = Some(sb);
                    n.meta_ok = Some(trip);
                    n.meta_pending = None;
                }
                r.map(|_| ())
            }
            Persist::Bitmap => {
                // The driver's contract: completed data writes are durable before the pages.
                n.disk.flush();
                let core = n.core.as_mut().expect("core");
                let pages = core.take_dirty_bitmap_pages();
                store.write_bitmap_pages(core.bitmap(), &pages)
            }
            Persist::ActivityLog { extents } => {
                let seq = store.al_state().last_seq + 1;
                store.write_al(&AlUpdate {
                    seq,
                    extents,
                    added: Vec::new(),
                    evicted: Vec::new(),
                })
            }
        };
        if r.is_err() {
            // The daemon stops when it cannot persist metadata.
            self.crash(i, "power failed during a metadata write");
        }
    }

    fn submit_local(&mut self, i: usize, io: LocalIo, op: LocalOp) {
        let data = match op {
            LocalOp::Write { source, .. } => Some(self.bytes(i, source)),
            LocalOp::Zero { len_bytes, .. } => Some(vec![0; len_bytes as usize]),
            _ => None,
        };
        if let (Some(d), LocalOp::Write { len_bytes, .. }) = (&data, op) {
            assert_eq!(d.len() as u64, len_bytes, "payload length");
        }
        // No EIO on the Primary's own application writes: the core has no on-io-error policy
        // yet (a failed local write is only reported to the client, the peer keeps its copy and
        // nothing marks the block), so it would be flagged as intended behaviour.
        let fail = !matches!(io, LocalIo::Client(_)) && self.rng.chance(self.eio_rate);
        let id = self.next_id;
        self.next_id += 1;
        if matches!(op, LocalOp::Flush) && !fail {
            // A flush covers what completed before it was issued.
            self.n[i].disk.flush();
        }
        self.n[i].ops.insert(id, PendingOp { io, op, data, fail });
        let lat = if self.rng.chance(0.05) {
            self.rng.range(5, 80)
        } else {
            self.rng.range(0, 3)
        };
        let inc = self.n[i].inc;
        self.sched(
            lat,
            Ev::LocalDone {
                node: i,
                inc,
                op: id,
            },
        );
    }

    fn local_done(&mut self, i: usize, inc: u64, id: u64) {
        if !self.n[i].up || self.n[i].inc != inc {
            return;
        }
        let Some(o) = self.n[i].ops.remove(&id) else {
            return;
        };
        if self.n[i].detached {
            // The disk is gone: everything fails, nothing reaches it.
            return match o.op {
                LocalOp::Digest { .. } => self.step(
                    i,
                    Input::DigestDone {
                        io: o.io,
                        digest: None,
                    },
                ),
                _ => self.step(
                    i,
                    Input::LocalDone {
                        io: o.io,
                        ok: false,
                    },
                ),
            };
        }
        match o.op {
            LocalOp::Write {
                offset_bytes, fua, ..
            }
            | LocalOp::Zero {
                offset_bytes, fua, ..
            } => {
                let data = o.data.expect("write data");
                // Invariant 8: nothing that is not a client's sector reaches a disk.
                for (k, s) in data.chunks(SECTOR).enumerate() {
                    let sector = offset_bytes / SECTOR as u64 + k as u64;
                    if decode_sector(sector, s) == Value::Garbage {
                        return self.violation(format!(
                            "corrupted frames (8): {} writes garbage to sector {sector} ({:?})",
                            NAMES[i], o.io
                        ));
                    }
                }
                if o.fail {
                    // An I/O error may leave part of the write behind.
                    for (k, s) in data.chunks(SECTOR).enumerate() {
                        if self.rng.chance(0.3) {
                            let off = offset_bytes as usize + k * SECTOR;
                            self.n[i].disk.write(off, s, false);
                        }
                    }
                } else {
                    let replicated = matches!(o.io, LocalIo::Peer(_) | LocalIo::ResyncWrite(_));
                    let durable = fua || (replicated && !self.opts.strict_peer_cache);
                    self.n[i].disk.write(offset_bytes as usize, &data, durable);
                }
            }
            LocalOp::Read {
                offset_bytes,
                len_bytes,
            } => {
                if !o.fail {
                    let r = offset_bytes as usize..(offset_bytes + len_bytes) as usize;
                    let d = self.n[i].disk.current[r].to_vec();
                    if let LocalIo::PeerRead(key) = o.io {
                        self.n[i].peer_read_bufs.insert(key, d);
                    } else {
                        self.n[i].read_bufs.insert(offset_bytes, d);
                    }
                }
            }
            LocalOp::Flush => {}
            LocalOp::Digest {
                offset_bytes,
                len_bytes,
                ..
            } => {
                let r = offset_bytes as usize..(offset_bytes + len_bytes) as usize;
                let digest = (!o.fail).then(|| sim_digest(&self.n[i].disk.current[r]));
                return self.step(i, Input::DigestDone { io: o.io, digest });
            }
        }
        if o.fail {
            trace!(self, "{}: injected EIO on {:?}", NAMES[i], o.io);
        }
        self.step(
            i,
            Input::LocalDone {
                io: o.io,
                ok: !o.fail,
            },
        );
    }

    // ---- the network ----

    fn reset_link(&mut self, why: &str) {
        if !self.link.up {
            return;
        }
        trace!(self, "network: connection closed ({why})");
        self.link.up = false;
        self.link.dead_end = None;
        for from in 0..2 {
            for s in 0..2 {
                self.link.q[from][s].clear();
            }
        }
        for j in 0..2 {
            let n = &self.n[j];
            if n.up {
                if self.n[1 - j].up {
                    self.n[j].fresh = false;
                }
                let inc = self.n[j].inc;
                let d = self.rng.range(0, 30);
                self.sched(d, Ev::PeerLost { node: j, inc });
            }
        }
    }

    fn try_connect(&mut self) {
        let connecting = |n: &Node| {
            n.up && n.wants_connect
                && n.paused_until <= self.now
                && n.core.as_ref().map(|c| c.connection_state())
                    == Some(ConnectionState::Connecting)
        };
        if self.link.up && self.link.dead_end.is_some() {
            let connected = |n: &Node| {
                n.up && n.core.as_ref().map(|c| c.connection_state())
                    == Some(ConnectionState::Connected)
            };
            if !connected(&self.n[0]) && !connected(&self.n[1]) {
                // Nobody is left on the half-dead connection.
                self.link.up = false;
                self.link.dead_end = None;
            }
        }
        if self.link.up
            || !connecting(&self.n[0])
            || !connecting(&self.n[1])
            || self.link.stalled != [false, false]
        {
            return;
        }
        self.link.up = true;
        self.link.epoch += 1;
        self.link.last_at = [[self.now; 2]; 2];
        let views = [
            self.n[0].core.as_ref().expect("core").view(),
            self.n[1].core.as_ref().expect("core").view(),
        ];
        let discard = [self.n[0].discard_requested, self.n[1].discard_requested];
        trace!(self, "network: connected (epoch {})", self.link.epoch);
        let mut acts = Vec::new();
        for i in 0..2 {
            self.n[i].wants_connect = false;
            self.n[i].discard_requested = false;
            let input = Input::PeerConnected {
                peer: views[1 - i],
                data_seq_next: 0,
            };
            trace!(self, "{} <- PeerConnected", NAMES[i]);
            let now = self.now;
            acts.push(self.n[i].core.as_mut().expect("core").step(now, input));
        }
        // Invariant 5: both changed the data apart → both see the split brain.
        let sb = [
            self.n[0].core.as_ref().expect("core").split_brain(),
            self.n[1].core.as_ref().expect("core").split_brain(),
        ];
        let refused = acts
            .iter()
            .flatten()
            .any(|a| matches!(a, Action::Disconnect { .. }));
        if self.n[0].solo && self.n[1].solo && !discard[0] && !discard[1] {
            if sb != [true, true] && !refused {
                self.violation(format!(
                    "split brain (5): both nodes wrote apart, but split brain seen by {:?} \
                     (alpha, beta): merged silently or seen by one side only",
                    sb
                ));
            }
        } else if sb[0] != sb[1] {
            self.violation(format!("split brain (5): seen by one node only: {sb:?}"));
        }
        for (i, actions) in acts.into_iter().enumerate() {
            let inc = self.n[i].inc;
            for a in actions {
                if !self.n[i].up || self.n[i].inc != inc {
                    break;
                }
                self.perform(i, a);
            }
        }
        self.check_roles();
    }

    fn send(&mut self, i: usize, seq: Option<u64>, msg: PeerMsg) {
        if !self.link.up || self.link.dead_end.is_some() {
            return;
        }
        let payload = match msg {
            PeerMsg::Data { source, .. }
            | PeerMsg::ResyncData { source, .. }
            | PeerMsg::ReadReply { source, .. } => {
                let bytes = self.bytes(i, source);
                if let DataSource::PeerRead(key) = source {
                    // As the daemon: a peer read's buffer goes with the frame that carries it.
                    self.n[i].peer_read_bufs.remove(&key);
                }
                Some(bytes)
            }
            PeerMsg::Bitmap {
                first_bit,
                bit_count,
            } => Some(
                self.n[i]
                    .core
                    .as_ref()
                    .expect("core")
                    .bitmap_bits(first_bit, bit_count),
            ),
            _ => None,
        };
        // The real frame encoding (and its crc32c) for the messages that carry data.
        let s = seq.unwrap_or(0);
        let wire_msg = match (&msg, &payload) {
            (
                PeerMsg::Data {
                    offset_bytes, fua, ..
                },
                Some(p),
            ) => Some(Message::Data(Data {
                offset_bytes: *offset_bytes,
                flags: if *fua {
                    WriteFlags::FUA
                } else {
                    WriteFlags::empty()
                },
                data: Bytes::copy_from_slice(p),
            })),
            (PeerMsg::ResyncData { offset_bytes, .. }, Some(p)) => {
                Some(Message::ResyncData(ResyncData {
                    offset_bytes: *offset_bytes,
                    data: Bytes::copy_from_slice(p),
                }))
            }
            (PeerMsg::ReadReply { request_id, .. }, Some(p)) => {
                Some(Message::ReadReply(urbd_protocol::ReadReply {
                    request_id: *request_id,
                    data: Bytes::copy_from_slice(p),
                }))
            }
            (
                PeerMsg::Bitmap {
                    first_bit,
                    bit_count,
                },
                Some(p),
            ) => Some(Message::BitmapChunk(BitmapChunk {
                first_bit: *first_bit,
                bit_count: *bit_count as u32,
                bits: Bytes::copy_from_slice(p),
            })),
            (PeerMsg::WriteAck { request_id }, _) => Some(Message::WriteAck {
                request_id: *request_id,
            }),
            (PeerMsg::RecvAck { request_id }, _) => Some(Message::RecvAck {
                request_id: *request_id,
            }),
            (PeerMsg::FlushReq { flush_id }, _) => Some(Message::FlushReq {
                flush_id: *flush_id,
            }),
            (PeerMsg::FlushAck { flush_id }, _) => Some(Message::FlushAck {
                flush_id: *flush_id,
            }),
            (PeerMsg::SyncUuid { uuid }, _) => Some(Message::SyncUuid { uuid: *uuid }),
            _ => None,
        };
        let mut wire = wire_msg.map(|m| {
            let mut out = BytesMut::new();
            m.encode(s, &mut out);
            out.to_vec()
        });
        let mut payload = payload;
        let mut corrupted = false;
        if self.link.corrupt_next {
            if let Some(w) = wire.as_mut() {
                self.link.corrupt_next = false;
                corrupted = true;
                let bit = self.rng.below(w.len() as u64 * 8);
                w[(bit / 8) as usize] ^= 1 << (bit % 8);
                if self.opts.broken_transport {
                    if let Some(p) = payload.as_mut() {
                        let bit = self.rng.below(p.len() as u64 * 8);
                        p[(bit / 8) as usize] ^= 1 << (bit % 8);
                    }
                }
                trace!(self, "network: corrupting a frame from {}", NAMES[i]);
            }
        }
        let stream = usize::from(seq.is_none());
        let delay = if self.fault_phase && self.rng.chance(0.02 * self.opts.faults) {
            self.rng.range(20, 400)
        } else {
            self.rng.range(0, 2)
        };
        let at = (self.now + delay).max(self.link.last_at[i][stream]);
        self.link.last_at[i][stream] = at;
        self.link.q[i][stream].push_back(WireFrame {
            at,
            seq,
            msg,
            payload,
            wire,
            corrupted,
        });
        let epoch = self.link.epoch;
        self.sched(
            at - self.now,
            Ev::Deliver {
                from: i,
                stream,
                epoch,
            },
        );
    }

    fn deliver(&mut self, from: usize, stream: usize, epoch: u64) {
        if !self.link.up || epoch != self.link.epoch || self.link.stalled[from] {
            return;
        }
        let to = 1 - from;
        match self.link.q[from][stream].front() {
            Some(f) if f.at <= self.now => {}
            _ => return,
        }
        let f = self.link.q[from][stream].pop_front().expect("frame");
        if !self.n[to].up {
            return;
        }
        let mut payload = f.payload;
        if let Some(w) = f.wire {
            let mut buf = BytesMut::from(&w[..]);
            match Frame::decode(&mut buf, &DecodeLimits::default()) {
                Ok(Some((_, m))) => match m {
                    Message::Data(d) => payload = Some(d.data.to_vec()),
                    Message::ResyncData(d) => payload = Some(d.data.to_vec()),
                    Message::ReadReply(r) => payload = Some(r.data.to_vec()),
                    Message::BitmapChunk(c) => payload = Some(c.bits.to_vec()),
                    _ => {}
                },
                Ok(None) | Err(_) if self.opts.broken_transport => {
                    trace!(self, "network: broken transport passes a corrupted frame");
                }
                Ok(None) | Err(_) => {
                    self.report.borrow_mut().frames_rejected += 1;
                    trace!(self, "network: {} rejects a corrupted frame", NAMES[to]);
                    return self.reset_link("crc32c mismatch");
                }
            }
        }
        if f.corrupted && !self.opts.broken_transport {
            unreachable!("a corrupted frame passed the crc32c check");
        }
        let seq = f.seq.unwrap_or(0);
        let input = match f.msg {
            PeerMsg::Data { len_bytes, .. }
            | PeerMsg::ResyncData { len_bytes, .. }
            | PeerMsg::ReadReply { len_bytes, .. } => {
                let p = payload.expect("payload");
                assert_eq!(p.len() as u64, len_bytes);
                let key = self.n[to].core.as_ref().expect("core").frame_key(seq);
                self.n[to].frame_bufs.insert(key, p);
                Input::PeerMessage { seq, msg: f.msg }
            }
            PeerMsg::Bitmap {
                first_bit,
                bit_count,
            } => Input::PeerBitmap {
                first_bit,
                bit_count,
                bits: payload.expect("bits"),
            },
            msg => Input::PeerMessage { seq, msg },
        };
        self.step(to, input);
    }

    // ---- periodic work ----

    fn on_tick(&mut self, i: usize) {
        self.sched(TICK_MS, Ev::Tick(i));
        if !self.n[i].up {
            return;
        }
        self.step(i, Input::Tick);
        if self.now.saturating_sub(self.n[i].last_bitmap_save) >= 1000
            && self.n[i].up
            && !self.n[i].detached
        {
            self.n[i].last_bitmap_save = self.now;
            self.persist(i, Persist::Bitmap);
        }
        self.try_connect();
        self.update_freshness();
    }

    fn states(&self, i: usize) -> Option<(Role, DiskState, ConnectionState, ReplicationState)> {
        let n = &self.n[i];
        if !n.up {
            return None;
        }
        let c = n.core.as_ref()?;
        Some((
            c.role(),
            c.disk_state(),
            c.connection_state(),
            c.replication_state(),
        ))
    }

    fn in_sync(&self) -> bool {
        let ok = |i: usize| {
            self.states(i).is_some_and(|(_, d, c, r)| {
                d == DiskState::UpToDate
                    && c == ConnectionState::Connected
                    && r == ReplicationState::Established
            }) && self.n[i]
                .core
                .as_ref()
                .is_some_and(|c| c.out_of_sync_bytes() == 0)
        };
        ok(0) && ok(1)
    }

    fn update_freshness(&mut self) {
        // A block marked out of sync (a NegAck) is stale on one side: no failover to it.
        let oos = (0..2).any(|i| {
            self.n[i]
                .core
                .as_ref()
                .is_some_and(|c| self.n[i].up && c.out_of_sync_bytes() > 0)
        });
        if oos && self.n[0].up && self.n[1].up {
            self.n[0].fresh = false;
            self.n[1].fresh = false;
        }
        if self.in_sync() {
            for n in &mut self.n {
                n.fresh = true;
                n.solo = false;
            }
        }
    }

    /// Invariant 6, after every step.
    fn check_roles(&mut self) {
        if self.done {
            return;
        }
        let (a, b) = (self.states(0), self.states(1));
        if let (Some(a), Some(b)) = (a, b) {
            if a.0 == Role::Primary && b.0 == Role::Primary && !self.operator_loss {
                return self
                    .violation("roles (6): two Primaries without a forced promotion".into());
            }
        }
        for (i, s) in [a, b].into_iter().enumerate() {
            if let Some((role, _, _, repl)) = s {
                if role == Role::Primary
                    && matches!(
                        repl,
                        ReplicationState::SyncTarget | ReplicationState::PausedSyncT
                    )
                {
                    return self
                        .violation(format!("roles (6): {} is Primary and SyncTarget", NAMES[i]));
                }
            }
        }
    }

    fn quiescent(&self) -> bool {
        self.n.iter().all(|n| n.up && n.ops.is_empty())
            && self.link.q.iter().flatten().all(|q| q.is_empty())
            && self.clients.is_empty()
            && (0..2).all(|i| {
                self.states(i).is_some_and(|s| {
                    matches!(s.3, ReplicationState::Off | ReplicationState::Established)
                })
            })
    }

    /// Invariant 4: every block that differs between the nodes is marked in a bitmap.
    fn check_bitmaps(&mut self) {
        if !self.quiescent() {
            return;
        }
        let (a, b) = (&self.n[0], &self.n[1]);
        let (ca, cb) = (
            a.core.as_ref().expect("core"),
            b.core.as_ref().expect("core"),
        );
        // Between a link loss and the moment a side notices it (ping timeout), writes the
        // Primary still tracks for the peer are not marked yet: they will be at the loss.
        let connected = |c: &Core| c.connection_state() == ConnectionState::Connected;
        if connected(ca) != connected(cb) || (connected(ca) && !self.link.up) {
            return;
        }
        for blk in 0..(SIZE / u64::from(BPB)) {
            let r = (blk * u64::from(BPB)) as usize..((blk + 1) * u64::from(BPB)) as usize;
            if a.disk.current[r.clone()] != b.disk.current[r]
                && !ca.bitmap().is_set(blk)
                && !cb.bitmap().is_set(blk)
            {
                let msg = format!(
                    "bitmap (4): block {blk} differs between the nodes but neither bitmap marks it \
                     (alpha {:?}, beta {:?})",
                    self.states(0),
                    self.states(1)
                );
                return self.violation(msg);
            }
        }
    }

    // ---- faults ----

    fn chaos(&mut self) {
        if !self.fault_phase {
            return self.final_phase();
        }
        if self.now >= self.opts.duration_ms {
            return self.end_faults();
        }
        let d = self.rng.range(20, 80);
        self.sched(d, Ev::Chaos);
        self.check_bitmaps();
        let f = self.opts.faults;
        let r = &mut self.rng;
        if r.chance(0.004 * f) {
            let i = r.below(2) as usize;
            return self.crash(i, "injected");
        }
        if r.chance(0.006 * f) && self.link.stalled == [false, false] {
            let both = r.chance(0.4);
            let dir = r.below(2) as usize;
            let heal = r.range(100, 4000);
            self.link.stalled[dir] = true;
            if both {
                self.link.stalled[1 - dir] = true;
            }
            trace!(
                self,
                "network: partition {:?} for {heal} ms",
                self.link.stalled
            );
            return self.sched(heal, Ev::Heal);
        }
        if self.rng.chance(0.004 * f) {
            return self.reset_link("injected reset");
        }
        if self.rng.chance(0.004 * f) {
            self.link.corrupt_next = true;
            return;
        }
        if self.rng.chance(0.003 * f) {
            let i = self.rng.below(2) as usize;
            if self.n[i].up {
                let d = self.rng.range(100, 2000);
                self.n[i].paused_until = self.now + d;
                trace!(self, "{}: process paused for {d} ms", NAMES[i]);
            }
        }
    }

    fn end_faults(&mut self) {
        trace!(
            self,
            "=== faults stop; the pair must converge within {CONVERGE_MS} ms ==="
        );
        self.fault_phase = false;
        self.eio_rate = 0.0;
        for i in 0..2 {
            if self.n[i].up && self.n[i].detached {
                self.reattach(i);
            }
        }
        self.link.corrupt_next = false;
        self.link.stalled = [false, false];
        self.kick_queues();
        for i in 0..2 {
            self.n[i].paused_until = 0;
        }
        self.sched(10, Ev::Chaos);
    }

    /// After the faults: a careful operator reconnects; the pair must converge.
    fn final_phase(&mut self) {
        let deadline = self.opts.duration_ms + CONVERGE_MS;
        self.check_bitmaps();
        if self.done {
            return;
        }
        let converged = self.in_sync() && self.quiescent();
        if converged {
            return self.final_checks();
        }
        if self.now > deadline && self.operator_loss && self.n[0].unrelated && self.n[1].unrelated {
            // Forced promotions rotated the generations until none is shared: both refuse, as
            // DRBD does; the remedy (`create-md` on the victim) is the operator's, not modelled.
            trace!(
                self,
                "unrelated generations after reckless promotions: operator-caused"
            );
            self.report.borrow_mut().unrelated_after_reckless += 1;
            self.done = true;
            return;
        }
        if self.now > deadline {
            let msg = format!(
                "convergence (3): not Connected/UpToDate and idle {CONVERGE_MS} ms after the faults \
                 stopped: alpha {:?} ({} B out of sync), beta {:?} ({} B out of sync)",
                self.states(0),
                self.n[0].core.as_ref().map_or(0, |c| c.out_of_sync_bytes()),
                self.states(1),
                self.n[1].core.as_ref().map_or(0, |c| c.out_of_sync_bytes()),
            );
            return self.violation(msg);
        }
        // Blocks marked while connected (a NegAck) wait for the next resync: the operator
        // reconnects (`urbdadm disconnect; urbdadm connect`).
        let established = |i: usize| {
            self.states(i).is_some_and(|s| {
                s.2 == ConnectionState::Connected && s.3 == ReplicationState::Established
            })
        };
        // Both disks still fresh (rule 10 waits for an operator): the operator does the
        // initial sync, `primary --force` on one node, as the README says.
        let fresh = |i: usize| {
            self.n[i].core.as_ref().is_some_and(|c| {
                c.disk_state() == DiskState::Inconsistent
                    && c.uuids().current & !1 == urbd_protocol::UUID_JUST_CREATED
            })
        };
        let initial_sync =
            self.quiescent() && established(0) && established(1) && fresh(0) && fresh(1);
        if self.quiescent() && established(0) && established(1) {
            if let Some(i) = (0..2).find(|&i| {
                self.n[i]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.out_of_sync_bytes() > 0)
            }) {
                self.admin_cmd(i, AdminCmd::Disconnect);
            }
        }
        if initial_sync {
            self.admin_cmd(0, AdminCmd::Primary { force: true });
        }
        // A paused resync: the operator resumes it (only the node that paused can).
        for i in 0..2 {
            let paused = self.states(i).is_some_and(|s| {
                matches!(
                    s.3,
                    ReplicationState::PausedSyncS | ReplicationState::PausedSyncT
                )
            });
            if paused {
                self.admin_cmd(i, AdminCmd::ResumeSync);
            }
        }
        // The operator: connect what is StandAlone (resolving a split brain).
        for i in 0..2 {
            if let Some((role, _, ConnectionState::StandAlone, _)) = self.states(i) {
                let sb = self.n[i].core.as_ref().is_some_and(|c| c.split_brain());
                let victim = sb && self.last_primary != Some(i);
                if victim && role == Role::Primary {
                    // Two Primaries after forced promotions: the victim steps down first.
                    self.admin_cmd(i, AdminCmd::Secondary { force: false });
                }
                self.admin_cmd(
                    i,
                    AdminCmd::Connect {
                        discard_my_data: victim,
                    },
                );
            }
        }
        self.sched(500, Ev::Chaos);
    }

    fn final_checks(&mut self) {
        let (a, b) = (&self.n[0].disk.current, &self.n[1].disk.current);
        if a != b {
            let blk = (0..SIZE as usize / BPB as usize).find(|&k| {
                a[k * BPB as usize..(k + 1) * BPB as usize]
                    != b[k * BPB as usize..(k + 1) * BPB as usize]
            });
            return self.violation(format!(
                "convergence (3): Connected/UpToDate and idle, but the data differs (block {blk:?})"
            ));
        }
        // Invariants 1 and 2 on the whole disk of whichever node serves.
        let serving = self.last_primary.unwrap_or(0);
        let floors = !self.operator_loss;
        for s in 0..(SIZE as usize / SECTOR) {
            let v = decode_sector(
                s as u64,
                &self.n[serving].disk.current[s * SECTOR..(s + 1) * SECTOR],
            );
            if let Err(e) = self.oracle.check(s, v, floors) {
                return self.violation(format!("final read on {}: {e}", NAMES[serving]));
            }
        }
        trace!(self, "=== converged; every check passed ===");
        self.done = true;
    }

    // ---- clients ----

    fn serving(&mut self) -> Option<usize> {
        let p: Vec<usize> = (0..2)
            .filter(|&i| self.states(i).is_some_and(|s| s.0 == Role::Primary))
            .collect();
        match p.len() {
            0 => None,
            1 => Some(p[0]),
            _ => Some(p[self.rng.below(2) as usize]),
        }
    }

    fn client(&mut self) {
        if !self.fault_phase {
            return;
        }
        let d = self.rng.range(1, 12);
        self.sched(d, Ev::Client);
        let Some(i) = self.serving() else { return };
        if self.n[i].paused_until > self.now || self.clients.len() >= 24 {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let inc = self.n[i].inc;
        let roll = self.rng.below(100);
        let blocks = SIZE / u64::from(BPB);
        let hot = if self.rng.chance(0.8) { 16 } else { blocks };
        let sectors_per_block = u64::from(BPB) / SECTOR as u64;
        let start_sector = self.rng.below(hot) * sectors_per_block
            + if self.rng.chance(0.3) {
                self.rng.below(sectors_per_block)
            } else {
                0
            };
        let nsec = if self.rng.chance(0.5) {
            sectors_per_block
        } else {
            self.rng.range(1, 3 * sectors_per_block)
        }
        .min(SIZE / SECTOR as u64 - start_sector);
        let off = start_sector * SECTOR as u64;
        let len = nsec * SECTOR as u64;
        if roll < 60 {
            let fua = self.rng.chance(0.15);
            let mut data = vec![0u8; len as usize];
            for (k, s) in data.chunks_mut(SECTOR).enumerate() {
                encode_sector(start_sector + k as u64, id, s);
            }
            self.oracle.issue(
                id,
                WriteRec {
                    off,
                    len,
                    zero: false,
                },
            );
            self.n[i].client_bufs.insert(id, data);
            self.clients.insert(
                id,
                ClientOp {
                    node: i,
                    inc,
                    kind: ClientKind::Write { fua },
                },
            );
            self.step(
                i,
                Input::Client(ClientRequest::Write {
                    id,
                    offset_bytes: off,
                    len_bytes: len,
                    fua,
                }),
            );
        } else if roll < 65 {
            let fua = self.rng.chance(0.15);
            self.oracle.issue(
                id,
                WriteRec {
                    off,
                    len,
                    zero: true,
                },
            );
            self.clients.insert(
                id,
                ClientOp {
                    node: i,
                    inc,
                    kind: ClientKind::Write { fua },
                },
            );
            self.step(
                i,
                Input::Client(ClientRequest::Zero {
                    id,
                    offset_bytes: off,
                    len_bytes: len,
                    fua,
                }),
            );
        } else if roll < 77 {
            let covered = self.oracle.flush_snapshot();
            let replicating_at = self
                .replicating(i)
                .then(|| (self.link.epoch, self.n[1 - i].inc));
            self.clients.insert(
                id,
                ClientOp {
                    node: i,
                    inc,
                    kind: ClientKind::Flush {
                        covered,
                        replicating_at,
                    },
                },
            );
            self.step(i, Input::Client(ClientRequest::Flush { id }));
        } else if self.rng.chance(self.eio_rate * 10.0) {
            // The Primary's local read fails (injected EIO): the core asks the peer.
            let floors = (start_sector..start_sector + nsec)
                .map(|s| {
                    if self.operator_loss {
                        0
                    } else {
                        let (vol, dur) = self.oracle.floor(s as usize);
                        vol.max(dur)
                    }
                })
                .collect();
            self.clients.insert(
                id,
                ClientOp {
                    node: i,
                    inc,
                    kind: ClientKind::PeerRead {
                        first_sector: start_sector,
                        floors,
                    },
                },
            );
            trace!(self, "{}: injected EIO on a client read", NAMES[i]);
            self.step(
                i,
                Input::ReadFromPeer {
                    id,
                    offset_bytes: start_sector * SECTOR as u64,
                    len_bytes: nsec * SECTOR as u64,
                },
            );
        } else {
            // A read, straight from the Primary's disk (as the NBD export does).
            let floors = !self.operator_loss;
            for s in start_sector..start_sector + nsec {
                let r = s as usize * SECTOR..(s as usize + 1) * SECTOR;
                let v = decode_sector(s, &self.n[i].disk.current[r]);
                if let Err(e) = self.oracle.check(s as usize, v, floors) {
                    return self.violation(format!("read on {}: {e}", NAMES[i]));
                }
            }
        }
    }

    /// A read served by the peer (or failed): its data must be at least what was acknowledged
    /// when it was asked (invariants 1 and 2); EIO is always allowed.
    fn peer_read_done(&mut self, i: usize, id: u64, result: Result<DataSource, IoFailure>) {
        let Some(c) = self.clients.remove(&id) else {
            if let Ok(DataSource::Frame(key)) = result {
                self.n[i].frame_bufs.remove(&key);
            }
            return;
        };
        let ClientKind::PeerRead {
            first_sector,
            floors,
        } = c.kind
        else {
            panic!("ReadDone for a client request that is not a read");
        };
        let data = match result {
            Ok(DataSource::Frame(key)) => self.n[i].frame_bufs.remove(&key).expect("read data"),
            Ok(other) => panic!("a peer read's data is a frame, not {other:?}"),
            Err(_) => {
                self.report.borrow_mut().peer_reads_failed += 1;
                return;
            }
        };
        self.report.borrow_mut().peer_reads_served += 1;
        assert_eq!(data.len(), floors.len() * SECTOR, "peer read length");
        for (k, (chunk, floor)) in data.chunks(SECTOR).zip(floors).enumerate() {
            let s = first_sector + k as u64;
            let v = decode_sector(s, chunk);
            if let Err(e) = self.oracle.check_floor(s as usize, v, floor) {
                return self.violation(format!("read served by the peer of {}: {e}", NAMES[i]));
            }
        }
    }

    /// True when node `i` is Primary, connected, Established, with an UpToDate peer.
    fn replicating(&self, i: usize) -> bool {
        let peer_up_to_date = self.n[i]
            .core
            .as_ref()
            .and_then(|c| c.peer())
            .is_some_and(|p| p.disk == DiskState::UpToDate);
        self.link.up
            && peer_up_to_date
            && self.states(i).is_some_and(|(r, d, c, repl)| {
                r == Role::Primary
                    && d == DiskState::UpToDate
                    && c == ConnectionState::Connected
                    && repl == ReplicationState::Established
            })
    }

    /// `flush_audit`: every write a FLUSH covered is on node `peer`'s stable storage, unless
    /// the Primary marked its block out of sync (a failed peer write: the resync owes it).
    fn audit_flush(&self, peer: usize, covered: &[u64]) -> Result<(), String> {
        let primary = self.n[1 - peer].core.as_ref().expect("core");
        for &wid in covered {
            for s in self.oracle.sectors_of(wid) {
                let bm = primary.bitmap();
                if bm.is_set(bm.bit_of((s * SECTOR) as u64)) {
                    continue;
                }
                let r = s * SECTOR..(s + 1) * SECTOR;
                let v = decode_sector(s as u64, &self.n[peer].disk.durable[r]);
                let ok = match v {
                    Value::Write(w) => w >= wid,
                    Value::Zero => self.oracle.zeroed_since(s, wid),
                    Value::Garbage => false,
                };
                if !ok {
                    return Err(format!(
                        "durability (1): a FLUSH was acknowledged but write {wid} is not on \
                         {}'s stable storage (sector {s}: {v:?})",
                        NAMES[peer]
                    ));
                }
            }
        }
        Ok(())
    }

    fn client_done(&mut self, i: usize, id: u64, result: Result<(), IoFailure>) {
        let Some(c) = self.clients.remove(&id) else {
            return;
        };
        assert_eq!(c.node, i, "ack from the wrong node");
        let _ = c.inc;
        match (c.kind, result) {
            (ClientKind::Write { fua }, Ok(())) => {
                self.report.borrow_mut().writes_acked += 1;
                self.oracle.acked(id, fua);
                let connected = self.n[i].core.as_ref().map(|c| c.connection_state())
                    == Some(ConnectionState::Connected);
                if !connected {
                    // Written alone: the other node no longer has everything (a careful
                    // operator does not fail over to it; seed 1052).
                    self.n[i].solo = true;
                    self.n[1 - i].fresh = false;
                }
            }
            (ClientKind::Write { .. }, Err(IoFailure::NotPrimary)) => self.oracle.refused(id),
            (ClientKind::Write { .. }, Err(IoFailure::Io)) => {}
            (
                ClientKind::Flush {
                    covered,
                    replicating_at,
                },
                Ok(()),
            ) => {
                self.report.borrow_mut().flushes_acked += 1;
                let still = self
                    .replicating(i)
                    .then(|| (self.link.epoch, self.n[1 - i].inc));
                if self.opts.flush_audit
                    && self.protocol == ReplicationProtocol::C
                    && replicating_at.is_some()
                    && replicating_at == still
                {
                    if let Err(e) = self.audit_flush(1 - i, &covered) {
                        return self.violation(e);
                    }
                }
                self.oracle.flush_acked(&covered);
            }
            (ClientKind::Flush { .. }, Err(_)) => {}
            (ClientKind::PeerRead { .. }, _) => panic!("a read answered as a write"),
        }
    }

    // ---- the operator ----

    fn admin_cmd(&mut self, i: usize, cmd: AdminCmd) {
        if let AdminCmd::Connect { discard_my_data } = cmd {
            self.n[i].discard_requested = discard_my_data;
            if discard_my_data {
                // The operator resolves a split brain by discarding this node's changes: the
                // writes acknowledged there since the split are lost on purpose (counted as
                // operator-caused, like a reckless promotion; invariants 1 and 2 relax).
                self.operator_loss = true;
            }
        }
        trace!(self, "operator on {}: {:?}", NAMES[i], cmd);
        self.step(i, Input::Admin(cmd));
    }

    /// The operator re-attaches a detached (repaired) disk: `urbdadm down` then `up`, which
    /// the simulator models as a restart (volatile state lost, as in a crash).
    fn reattach(&mut self, i: usize) {
        trace!(
            self,
            "operator on {}: down + up (re-attach the disk)",
            NAMES[i]
        );
        self.report.borrow_mut().reattaches += 1;
        self.crash(i, "operator: down + up to re-attach the disk");
    }

    fn careful_promotable(&self, x: usize) -> bool {
        let Some((role, disk, conn, repl)) = self.states(x) else {
            return false;
        };
        let other = self.states(1 - x);
        if role == Role::Primary
            || disk != DiskState::UpToDate
            || other.is_some_and(|o| o.0 == Role::Primary)
        {
            return false;
        }
        let peer_up_to_date = self.n[x]
            .core
            .as_ref()
            .and_then(|c| c.peer())
            .is_some_and(|p| p.disk == DiskState::UpToDate);
        // A careful operator does not switch over while blocks are out of sync (`urbdadm
        // status` shows them): the core reads locally and has no on-io-error policy yet.
        let no_oos = (0..2).all(|j| {
            self.n[j]
                .core
                .as_ref()
                .is_none_or(|c| c.out_of_sync_bytes() == 0)
        });
        (conn == ConnectionState::Connected
            && repl == ReplicationState::Established
            && peer_up_to_date
            && no_oos)
            || self.last_primary == Some(x)
            || (other.is_none() && self.n[x].fresh)
    }

    fn admin(&mut self) {
        if !self.fault_phase {
            return;
        }
        let d = self.rng.range(200, 1500);
        self.sched(d, Ev::Admin);
        let i = self.rng.below(2) as usize;
        let Some((role, disk, conn, repl)) = self.states(i) else {
            return;
        };
        if self.n[i].paused_until > self.now {
            return;
        }
        // Initial sync: two fresh disks, connected: `primary --force` on alpha.
        if self.last_primary.is_none() {
            if i == 0 && conn == ConnectionState::Connected && disk == DiskState::Inconsistent {
                self.admin_cmd(0, AdminCmd::Primary { force: true });
            }
            return;
        }
        let roll = self.rng.below(100);
        if self.n[i].detached && roll < 50 {
            return self.reattach(i);
        }
        if repl == ReplicationState::SyncTarget && roll < 30 {
            // A probe a careful operator might try: the core must refuse it.
            return self.admin_cmd(i, AdminCmd::Primary { force: false });
        }
        if conn == ConnectionState::StandAlone && roll < 70 {
            let sb = self.n[i].core.as_ref().is_some_and(|c| c.split_brain());
            let other_sb = self.n[1 - i].core.as_ref().is_some_and(|c| c.split_brain());
            if (sb || other_sb) && self.last_primary == Some(i) {
                // The survivor of a split brain waits for the victim to discard.
                return self.admin_cmd(
                    i,
                    AdminCmd::Connect {
                        discard_my_data: false,
                    },
                );
            }
            return self.admin_cmd(
                i,
                AdminCmd::Connect {
                    discard_my_data: sb,
                },
            );
        }
        if self.opts.reckless && roll < 8 {
            self.report.borrow_mut().reckless_promotions += 1;
            self.operator_loss = true;
            trace!(self, "operator (reckless): primary --force on {}", NAMES[i]);
            return self.admin_cmd(i, AdminCmd::Primary { force: true });
        }
        match roll {
            0..=29 => {
                if self.careful_promotable(i) {
                    self.admin_cmd(i, AdminCmd::Primary { force: false });
                }
            }
            30..=49 => {
                if role == Role::Primary {
                    self.admin_cmd(i, AdminCmd::Secondary { force: false });
                }
            }
            50..=57 => self.admin_cmd(i, AdminCmd::Disconnect),
            66..=69 => self.admin_cmd(i, AdminCmd::PauseSync),
            70..=75 => self.admin_cmd(i, AdminCmd::ResumeSync),
            76..=78 => {
                let repair = self.rng.chance(0.5);
                self.admin_cmd(
                    i,
                    AdminCmd::Verify {
                        start_bytes: None,
                        stop_bytes: None,
                        repair,
                    },
                )
            }
            79..=80 => {
                // A careful operator discards only the data of a node that is not serving.
                if role != Role::Primary && self.last_primary != Some(i) {
                    self.admin_cmd(i, AdminCmd::Invalidate);
                }
            }
            58..=65 => {
                // Probes a careful operator might try; the core must refuse them.
                let peer_primary = self.states(1 - i).is_some_and(|o| o.0 == Role::Primary)
                    && conn == ConnectionState::Connected;
                if repl == ReplicationState::SyncTarget || peer_primary {
                    self.admin_cmd(i, AdminCmd::Primary { force: false });
                }
            }
            _ => {}
        }
    }
}

fn meta_triple(m: &MetaState) -> MetaTriple {
    MetaTriple {
        uuids: m.uuids,
        disk: persistable(m.disk),
        primary: m.primary,
    }
}

/// The simulator's block digest (verify and checksum resync). Not crc32c: every sector the
/// simulator writes ends with its own crc32c, and the crc32c of a run of such codewords is the
/// same whatever they hold (CRCs are affine), so a crc32c digest would find any two runs of
/// valid sectors equal. A non-linear 64-bit mix, folded into the crc32c-sized digest.
fn sim_digest(data: &[u8]) -> Digest {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in data.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3);
        h ^= h >> 29;
    }
    Digest::Crc32c((h ^ (h >> 32)) as u32)
}
