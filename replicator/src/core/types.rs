//! The vocabulary of the core: its inputs, its actions, and the ids that tie them together.
//! PROTOCOL.md §5 (write path) and §6 (liveness) describe what these mean on the wire.

use urbd_protocol::{Digest, DigestAlgorithm, DiskState, GenerationUuids, Role};

/// Identifies one local disk operation the core asked for; the driver reports its completion
/// with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LocalIo {
    /// An application write (or zeroing) on the Primary, by client request id.
    Client(u64),
    /// An application FLUSH on the Primary.
    ClientFlush(u64),
    /// A replicated write on the Secondary, by the data frame's seq.
    Peer(u64),
    /// A flush the Primary asked for (FlushReq), by flush id.
    PeerFlush(u64),
    /// A resync read on the SyncSource, by offset.
    ResyncRead(u64),
    /// The flush after a demotion: only then does the superblock stop saying "Primary".
    RoleFlush,
    /// A resync write on the SyncTarget, by the data frame's seq.
    ResyncWrite(u64),
    /// A digest of a block of the online-verify range on VerifyS, by verify block id.
    VerifyDigest(u64),
    /// A digest on VerifyT for the peer's VerifyRequest, by the request frame's key.
    PeerVerifyDigest(u64),
    /// A digest of a resync block on the SyncSource (checksum-based resync), by offset.
    ResyncDigest(u64),
    /// A digest on the SyncTarget for the peer's CsumRequest, by the request frame's key.
    PeerCsumDigest(u64),
    /// Secondary: a read for the Primary (`ReadRequest` seq, PROTOCOL.md §5.7).
    PeerRead(u64),
}

/// Where the bytes of a local write or an outgoing data frame come from. The driver holds the
/// buffers; the core only says which one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSource {
    /// The client's write payload (client request id).
    Client(u64),
    /// A received data frame's payload (its seq).
    Frame(u64),
    /// The buffer of a completed resync read (by offset).
    ResyncRead(u64),
    /// The buffer of `LocalIo::PeerRead(seq)`.
    PeerRead(u64),
}

/// A local disk operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalOp {
    Write {
        offset_bytes: u64,
        len_bytes: u64,
        fua: bool,
        source: DataSource,
    },
    /// Make the range read as zeroes (NBD TRIM and WRITE_ZEROES both map here, so both disks
    /// stay byte-identical).
    Zero {
        offset_bytes: u64,
        len_bytes: u64,
        fua: bool,
    },
    Read {
        offset_bytes: u64,
        len_bytes: u64,
    },
    Flush,
    /// Read the range and compute its digest with `alg`; the driver answers with
    /// `Input::DigestDone` (online verify, PROTOCOL.md §7.7; checksum-based resync, §7.6.4).
    /// The core never sees the bytes.
    Digest {
        offset_bytes: u64,
        len_bytes: u64,
        alg: DigestAlgorithm,
    },
}

/// What the application asks of the Primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRequest {
    Write {
        id: u64,
        offset_bytes: u64,
        len_bytes: u64,
        fua: bool,
    },
    Zero {
        id: u64,
        offset_bytes: u64,
        len_bytes: u64,
        fua: bool,
    },
    Flush {
        id: u64,
    },
}

impl ClientRequest {
    pub fn id(&self) -> u64 {
        match *self {
            ClientRequest::Write { id, .. }
            | ClientRequest::Zero { id, .. }
            | ClientRequest::Flush { id } => id,
        }
    }
}

/// The peer's announced state (PROTOCOL.md §4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    pub role: Role,
    pub disk: DiskState,
    pub uuids: GenerationUuids,
    pub crashed_primary: bool,
    pub discard_my_data: bool,
    pub dirty_bits: u64,
    pub size_bytes: u64,
}

/// Messages between the cores of two nodes, without payload bytes (the driver attaches them
/// from the named `DataSource`) and without handshake messages (the driver's job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMsg {
    /// An application write (§4.8); its request id is the frame's seq.
    Data {
        offset_bytes: u64,
        len_bytes: u64,
        fua: bool,
        source: DataSource,
    },
    /// Zeroing of a range (§4.14); request id = seq.
    Zero {
        offset_bytes: u64,
        len_bytes: u64,
        fua: bool,
    },
    RecvAck {
        request_id: u64,
    },
    WriteAck {
        request_id: u64,
    },
    NegAck {
        request_id: u64,
    },
    FlushReq {
        flush_id: u64,
    },
    FlushAck {
        flush_id: u64,
    },
    Ping,
    PingAck,
    /// A state update (§4.7), sent when role, disk state or UUIDs change while connected.
    State(PeerView),
    /// Resync payload (§4.19); acknowledged with WriteAck(seq).
    ResyncData {
        offset_bytes: u64,
        len_bytes: u64,
        source: DataSource,
    },
    /// The SyncSource has sent every marked block and they were all acknowledged (§4.24).
    ResyncDone,
    /// The SyncSource's new bitmap UUID at resync start; the target adopts it as its current
    /// (§4.17). Followed directly by `ResyncDone` it skips a sync (`new-current-uuid
    /// --clear-bitmap` on two fresh disks).
    SyncUuid {
        uuid: u64,
    },
    /// Asks the peer to agree to this node's promotion (PROTOCOL.md §7.8: a cluster-wide
    /// state change, so two nodes promoted at once cannot both win).
    PromoteRequest,
    PromoteReply {
        ok: bool,
    },
    /// `new-current-uuid --clear-bitmap` on two fresh disks: adopt this UUID and become
    /// UpToDate without a sync (the operator vouches the disks are identical).
    NewCurrentUuid {
        uuid: u64,
    },
    /// A slice of the sender's dirty bitmap (bits `first_bit..first_bit + bit_count`), sent by
    /// both sides before a bitmap-based resync so that each ORs the other's into its own
    /// (PROTOCOL.md §4.16). Outgoing, the driver encodes the bits with `Core::bitmap_bits`;
    /// incoming, they arrive through `Input::PeerBitmap`.
    Bitmap {
        first_bit: u64,
        bit_count: u64,
    },
    /// An operator-requested resync (§4.27): `invalidate` (the sender becomes SyncTarget) or
    /// `invalidate-remote` / `verify --repair` (the sender becomes SyncSource).
    ResyncStart {
        full: bool,
        sender_is_target: bool,
    },
    /// The sender paused (or resumed) the resync (§4.28).
    SyncPause {
        paused: bool,
    },
    /// An online verify of `[start_bytes, stop_bytes)` begins; the receiver is VerifyT (§4.29).
    VerifyStart {
        start_bytes: u64,
        stop_bytes: u64,
    },
    /// VerifyS's digest of a block (§4.22); request id = seq.
    VerifyRequest {
        offset_bytes: u64,
        len_bytes: u64,
        digest: Digest,
    },
    /// VerifyT's verdict on a block (§4.22).
    VerifyReply {
        offset_bytes: u64,
        len_bytes: u64,
        in_sync: bool,
    },
    /// Checksum-based resync (§4.20, §7.6.4): the SyncSource's digest of a marked block; the
    /// SyncTarget answers `InSync` or `ResyncRequest`. Request id = seq.
    CsumRequest {
        offset_bytes: u64,
        len_bytes: u64,
        digest: Digest,
    },
    /// SyncTarget → SyncSource: the digests matched, the block is in sync (§4.21).
    InSync {
        offset_bytes: u64,
        len_bytes: u64,
    },
    /// SyncTarget → SyncSource: the digests differ, send the block as `ResyncData` (§4.18).
    ResyncRequest {
        offset_bytes: u64,
        len_bytes: u64,
    },
    /// Primary → Secondary: read this range for me, my own read failed (§4.30). Request id =
    /// seq.
    ReadRequest {
        offset_bytes: u64,
        len_bytes: u64,
    },
    /// The data of a `ReadRequest`.
    ReadReply {
        request_id: u64,
        len_bytes: u64,
        source: DataSource,
    },
    /// The peer could not read the range either.
    ReadFailed {
        request_id: u64,
    },
}

impl PeerMsg {
    /// Data-socket frames this message takes on the wire (PROTOCOL.md §4): `NewCurrentUuid`
    /// travels as SyncUuid + StateChange, everything else as one frame. The core numbers
    /// data-socket frames, so it must know.
    pub fn wire_frames(&self) -> u64 {
        match self {
            PeerMsg::NewCurrentUuid { .. } => 2,
            _ => 1,
        }
    }
}

/// Operator requests (the urbdadm commands that change state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCmd {
    Primary {
        force: bool,
    },
    Secondary {
        force: bool,
    },
    Connect {
        discard_my_data: bool,
    },
    Disconnect,
    NewCurrentUuid {
        clear_bitmap: bool,
    },
    /// Discard the local data: full resync from the peer (this node becomes SyncTarget).
    Invalidate,
    /// Discard the peer's data: full resync to it (this node becomes SyncSource).
    InvalidateRemote,
    PauseSync,
    ResumeSync,
    /// Online verify of `[start_bytes, stop_bytes)` (rounded out to whole bitmap blocks;
    /// `None`: the start / the end of the device); `repair` resyncs what it finds from here.
    Verify {
        start_bytes: Option<u64>,
        stop_bytes: Option<u64>,
        repair: bool,
    },
}

/// What must be made durable before any later action is performed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persist {
    /// Role-independent metadata: UUIDs, disk state, flags.
    Superblock(MetaState),
    /// Bitmap pages changed since the last persist. The driver first makes every data write
    /// completed so far durable (flush), then writes the pages: a cleared bit never reaches
    /// the disk before the block it vouches for.
    Bitmap,
    /// Activity-log extents that must be hot before the next write lands in them.
    ActivityLog { extents: Vec<u64> },
}

/// The parts of the superblock the core owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaState {
    pub uuids: GenerationUuids,
    pub disk: DiskState,
    pub primary: bool,
    pub crashed_primary: bool,
}

/// A state change worth telling the operator about (`urbdadm events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Role(Role),
    Disk(DiskState),
    PeerRole(Role),
    PeerDisk(DiskState),
    Connection(urbd_protocol::ConnectionState),
    Replication(urbd_protocol::ReplicationState),
    ResyncProgress {
        done_bytes: u64,
        total_bytes: u64,
    },
    /// Online verify progress; `found_bytes` differ so far.
    VerifyProgress {
        done_bytes: u64,
        total_bytes: u64,
        found_bytes: u64,
    },
    SplitBrain,
    Message(String),
}

/// An output of `step`. Actions must be performed in order; `Persist` actions are barriers:
/// the driver completes them durably before performing any later action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Local {
        io: LocalIo,
        op: LocalOp,
    },
    /// Send a frame; `seq` is set for data-socket frames (the core numbers them so that request
    /// ids are known; the driver asserts its own count agrees).
    Send {
        seq: Option<u64>,
        msg: PeerMsg,
    },
    AckClient {
        id: u64,
        result: Result<(), IoFailure>,
    },
    Persist(Persist),
    /// Begin (or keep) trying to connect to the peer every connect interval.
    StartConnecting,
    /// Close the peer connection (the driver later reports `PeerLost`).
    Disconnect {
        reason: String,
    },
    /// on-io-error = detach: write `meta` to the superblock if the disk still takes it (best
    /// effort, an error is only logged), then stop using the disk: every later `Local` fails
    /// at once and `Persist` actions are skipped.
    Detach {
        meta: MetaState,
    },
    /// The buffer named by this source is no longer needed by the core.
    Release(DataSource),
    Event(Event),
    /// The answer to an `Input::Admin`.
    AdminReply(Result<(), String>),
    /// The answer to an `Input::ReadFromPeer`: the data (a received frame's payload, which the
    /// driver hands to the client and then drops) or EIO.
    ReadDone {
        id: u64,
        result: Result<DataSource, IoFailure>,
    },
}

/// Progress (or result) of an online verify, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyProgress {
    /// This node runs it (VerifyS) rather than answers it (VerifyT).
    pub source: bool,
    pub running: bool,
    pub start_bytes: u64,
    pub stop_bytes: u64,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Bytes found different (and marked out of sync) so far.
    pub found_bytes: u64,
}

/// Counters of a resync, running or finished (for status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResyncStats {
    /// This node is (was) the SyncSource.
    pub source: bool,
    pub running: bool,
    /// It ended with ResyncDone (false while running, or when the connection was lost).
    pub finished: bool,
    /// Bytes marked when the resync started (after the bitmap exchange).
    pub total_bytes: u64,
    /// Bytes now in sync (sent and written, or found in sync by checksum).
    pub done_bytes: u64,
    /// `ResyncData` payload bytes sent (SyncSource) or received (SyncTarget).
    pub sent_bytes: u64,
    /// Bytes whose digests matched (checksum-based resync, §7.6.4): nothing sent for them.
    pub in_sync_bytes: u64,
    /// Checksum algorithm of this resync, if it compares digests first.
    pub csums: Option<DigestAlgorithm>,
    /// Time since the start (running) or its duration (finished).
    pub elapsed_ms: u64,
}

/// Why a client request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoFailure {
    /// The local disk failed and no peer could take the write.
    Io,
    /// This node is not Primary (or not UpToDate) and cannot serve the request.
    NotPrimary,
}

/// An input to `step`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Tick,
    Client(ClientRequest),
    ClientAttached,
    ClientDetached,
    LocalDone {
        io: LocalIo,
        ok: bool,
    },
    /// The driver finished the handshake (auth, params, state exchange).
    PeerConnected {
        peer: PeerView,
        data_seq_next: u64,
    },
    PeerMessage {
        seq: u64,
        msg: PeerMsg,
    },
    /// The driver's local read of an application read failed (Primary): serve it from the
    /// peer if its copy is current (PROTOCOL.md §5.7); answered by `Action::ReadDone`.
    ReadFromPeer {
        id: u64,
        offset_bytes: u64,
        len_bytes: u64,
    },
    PeerLost {
        reason: String,
    },
    Admin(AdminCmd),
    /// A `LocalOp::Digest` finished: the digest, or `None` if the read failed.
    DigestDone {
        io: LocalIo,
        digest: Option<Digest>,
    },
    /// A slice of the peer's bitmap (§4.16): bit i of `bits` (LSB first in each byte) is bit
    /// `first_bit + i`.
    PeerBitmap {
        first_bit: u64,
        bit_count: u64,
        bits: Vec<u8>,
    },
}
