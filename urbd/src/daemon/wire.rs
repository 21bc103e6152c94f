//! Between the core's abstract peer messages and the wire's `urbd_protocol::Message`s
//! (PROTOCOL.md §4). Payload bytes come from / go to the engine's buffer tables.

use bytes::Bytes;
use urbd_protocol::{
    BlockRange, CsumRequest, Data, GenerationUuids, Message, NegAck, RangeWrite, ReadReply,
    ResyncData, ResyncStart, State, StateChange, StateChangeOutcome, StateChangeRefusal,
    StateChangeReply, StateFlags, VerifyReply, VerifyRequest, VerifyStart, WriteErrorCode,
    WriteFlags,
};
use urbd_replicator::core::{DataSource, PeerMsg, PeerView};

/// The request id of the StateChange that carries a promotion request.
const PROMOTE_REQUEST_ID: u64 = 1;
/// `NewCurrentUuid` travels as a SyncUuid with this marker in the reserved low bit pattern:
/// a StateChange asking for disk UpToDate right after a SyncUuid means "skip the sync".
fn flags_of(fua: bool) -> WriteFlags {
    if fua {
        WriteFlags::FUA
    } else {
        WriteFlags::empty()
    }
}

/// Encodes a core message; `payload` supplies the bytes of Data/ResyncData.
pub fn to_wire(msg: PeerMsg, payload: impl FnOnce(DataSource) -> Bytes) -> Vec<Message> {
    let one = |m| vec![m];
    match msg {
        PeerMsg::Data {
            offset_bytes,
            fua,
            source,
            ..
        } => one(Message::Data(Data {
            offset_bytes,
            flags: flags_of(fua),
            data: payload(source),
        })),
        PeerMsg::Zero {
            offset_bytes,
            len_bytes,
            fua,
        } => one(Message::WriteZeroes(RangeWrite {
            offset_bytes,
            length_bytes: len_bytes,
            flags: flags_of(fua),
        })),
        PeerMsg::RecvAck { request_id } => one(Message::RecvAck { request_id }),
        PeerMsg::WriteAck { request_id } => one(Message::WriteAck { request_id }),
        PeerMsg::NegAck { request_id } => one(Message::NegAck(NegAck {
            request_id,
            error: WriteErrorCode::IoError,
        })),
        PeerMsg::FlushReq { flush_id } => one(Message::FlushReq { flush_id }),
        PeerMsg::FlushAck { flush_id } => one(Message::FlushAck { flush_id }),
        PeerMsg::Ping => one(Message::Ping),
        PeerMsg::PingAck => one(Message::PingAck),
        PeerMsg::State(v) => one(Message::State(state_of(&v))),
        PeerMsg::ResyncData {
            offset_bytes,
            source,
            ..
        } => one(Message::ResyncData(ResyncData {
            offset_bytes,
            data: payload(source),
        })),
        PeerMsg::ResyncDone => one(Message::ResyncDone),
        PeerMsg::ReadRequest {
            offset_bytes,
            len_bytes,
        } => one(Message::ReadRequest(block_range(offset_bytes, len_bytes))),
        PeerMsg::ReadReply {
            request_id, source, ..
        } => one(Message::ReadReply(ReadReply {
            request_id,
            data: payload(source),
        })),
        PeerMsg::ReadFailed { request_id } => one(Message::ReadFailed { request_id }),
        PeerMsg::SyncUuid { uuid } => one(Message::SyncUuid { uuid }),
        PeerMsg::PromoteRequest => one(Message::StateChange(StateChange {
            role: Some(urbd_protocol::Role::Primary),
            disk: None,
        })),
        PeerMsg::PromoteReply { ok } => one(Message::StateChangeReply(StateChangeReply {
            request_id: PROMOTE_REQUEST_ID,
            outcome: if ok {
                StateChangeOutcome::Accepted
            } else {
                StateChangeOutcome::Refused(StateChangeRefusal::TwoPrimaries)
            },
        })),
        PeerMsg::Bitmap { .. } => unreachable!("bitmap slices are encoded by the engine"),
        PeerMsg::ResyncStart {
            full,
            sender_is_target,
        } => one(Message::ResyncStart(ResyncStart {
            full,
            sender_is_target,
        })),
        PeerMsg::SyncPause { paused } => one(Message::SyncPause { paused }),
        PeerMsg::VerifyStart {
            start_bytes,
            stop_bytes,
        } => one(Message::VerifyStart(VerifyStart {
            start_bytes,
            stop_bytes,
        })),
        PeerMsg::VerifyRequest {
            offset_bytes,
            len_bytes,
            digest,
        } => one(Message::VerifyRequest(VerifyRequest {
            range: block_range(offset_bytes, len_bytes),
            digest,
        })),
        PeerMsg::VerifyReply {
            offset_bytes,
            len_bytes,
            in_sync,
        } => one(Message::VerifyReply(VerifyReply {
            range: block_range(offset_bytes, len_bytes),
            in_sync,
        })),
        PeerMsg::CsumRequest {
            offset_bytes,
            len_bytes,
            digest,
        } => one(Message::CsumRequest(CsumRequest {
            range: block_range(offset_bytes, len_bytes),
            digest,
        })),
        PeerMsg::InSync {
            offset_bytes,
            len_bytes,
        } => one(Message::InSync(block_range(offset_bytes, len_bytes))),
        PeerMsg::ResyncRequest {
            offset_bytes,
            len_bytes,
        } => one(Message::ResyncRequest(block_range(offset_bytes, len_bytes))),
        // A SyncUuid immediately followed by a request to make the peer's disk UpToDate.
        PeerMsg::NewCurrentUuid { uuid } => vec![
            Message::SyncUuid { uuid },
            Message::StateChange(StateChange {
                role: None,
                disk: Some(urbd_protocol::DiskState::UpToDate),
            }),
        ],
    }
}

/// Verify blocks and checksum-resync units are at most one resync chunk: far below 4 GiB.
fn block_range(offset_bytes: u64, len_bytes: u64) -> BlockRange {
    BlockRange {
        offset_bytes,
        length_bytes: u32::try_from(len_bytes)
            .expect("verify, csum and peer-read blocks are small"),
    }
}

/// What a received wire message means to the core. `pending_sync_uuid` holds a SyncUuid until
/// we know whether a skip-sync StateChange follows it.
pub enum Incoming {
    Msg(PeerMsg),
    /// A Data/ResyncData payload to keep under the frame's key.
    WithPayload(PeerMsg, Bytes),
    /// A slice of the peer's bitmap.
    Bitmap {
        first_bit: u64,
        bit_count: u64,
        bits: Vec<u8>,
    },
    /// Not for the core (handshake leftovers, unsupported in this version).
    Ignore(&'static str),
}

pub fn from_wire(msg: Message, pending_sync_uuid: &mut Option<u64>) -> Vec<Incoming> {
    let mut out = Vec::new();
    // A held SyncUuid is released by whatever comes next.
    let held = pending_sync_uuid.take();
    match msg {
        Message::StateChange(StateChange {
            role: None,
            disk: Some(urbd_protocol::DiskState::UpToDate),
        }) => {
            if let Some(uuid) = held {
                out.push(Incoming::Msg(PeerMsg::NewCurrentUuid { uuid }));
                return out;
            }
            out.push(Incoming::Ignore(
                "disk state change request without SyncUuid",
            ));
            return out;
        }
        Message::SyncUuid { uuid } => {
            if let Some(u) = held {
                out.push(Incoming::Msg(PeerMsg::SyncUuid { uuid: u }));
            }
            *pending_sync_uuid = Some(uuid);
            return out;
        }
        _ => {}
    }
    if let Some(uuid) = held {
        out.push(Incoming::Msg(PeerMsg::SyncUuid { uuid }));
    }
    let m = match msg {
        Message::Data(d) => {
            let len_bytes = d.data.len() as u64;
            let fua = d.flags.contains(WriteFlags::FUA);
            out.push(Incoming::WithPayload(
                PeerMsg::Data {
                    offset_bytes: d.offset_bytes,
                    len_bytes,
                    fua,
                    source: DataSource::Frame(0),
                },
                d.data,
            ));
            return out;
        }
        Message::ResyncData(r) => {
            let len_bytes = r.data.len() as u64;
            out.push(Incoming::WithPayload(
                PeerMsg::ResyncData {
                    offset_bytes: r.offset_bytes,
                    len_bytes,
                    source: DataSource::Frame(0),
                },
                r.data,
            ));
            return out;
        }
        Message::ReadReply(r) => {
            let len_bytes = r.data.len() as u64;
            out.push(Incoming::WithPayload(
                PeerMsg::ReadReply {
                    request_id: r.request_id,
                    len_bytes,
                    source: DataSource::Frame(0),
                },
                r.data,
            ));
            return out;
        }
        Message::BitmapChunk(c) => {
            out.push(Incoming::Bitmap {
                first_bit: c.first_bit,
                bit_count: u64::from(c.bit_count),
                bits: c.bits.to_vec(),
            });
            return out;
        }
        Message::WriteZeroes(r) | Message::Trim(r) => PeerMsg::Zero {
            offset_bytes: r.offset_bytes,
            len_bytes: r.length_bytes,
            fua: r.flags.contains(WriteFlags::FUA),
        },
        Message::RecvAck { request_id } => PeerMsg::RecvAck { request_id },
        Message::WriteAck { request_id } => PeerMsg::WriteAck { request_id },
        Message::NegAck(n) => PeerMsg::NegAck {
            request_id: n.request_id,
        },
        Message::FlushReq { flush_id } => PeerMsg::FlushReq { flush_id },
        Message::FlushAck { flush_id } => PeerMsg::FlushAck { flush_id },
        Message::Ping => PeerMsg::Ping,
        Message::PingAck => PeerMsg::PingAck,
        Message::State(s) => PeerMsg::State(view_of(&s, 0)),
        Message::ResyncDone => PeerMsg::ResyncDone,
        Message::StateChange(StateChange {
            role: Some(urbd_protocol::Role::Primary),
            ..
        }) => PeerMsg::PromoteRequest,
        Message::StateChangeReply(r) => PeerMsg::PromoteReply {
            ok: r.outcome == StateChangeOutcome::Accepted,
        },
        Message::ResyncStart(r) => PeerMsg::ResyncStart {
            full: r.full,
            sender_is_target: r.sender_is_target,
        },
        Message::SyncPause { paused } => PeerMsg::SyncPause { paused },
        Message::VerifyStart(v) => PeerMsg::VerifyStart {
            start_bytes: v.start_bytes,
            stop_bytes: v.stop_bytes,
        },
        Message::VerifyRequest(v) => PeerMsg::VerifyRequest {
            offset_bytes: v.range.offset_bytes,
            len_bytes: u64::from(v.range.length_bytes),
            digest: v.digest,
        },
        Message::VerifyReply(v) => PeerMsg::VerifyReply {
            offset_bytes: v.range.offset_bytes,
            len_bytes: u64::from(v.range.length_bytes),
            in_sync: v.in_sync,
        },
        Message::CsumRequest(c) => PeerMsg::CsumRequest {
            offset_bytes: c.range.offset_bytes,
            len_bytes: u64::from(c.range.length_bytes),
            digest: c.digest,
        },
        Message::InSync(r) => PeerMsg::InSync {
            offset_bytes: r.offset_bytes,
            len_bytes: u64::from(r.length_bytes),
        },
        Message::ResyncRequest(r) => PeerMsg::ResyncRequest {
            offset_bytes: r.offset_bytes,
            len_bytes: u64::from(r.length_bytes),
        },
        Message::ReadRequest(r) => PeerMsg::ReadRequest {
            offset_bytes: r.offset_bytes,
            len_bytes: u64::from(r.length_bytes),
        },
        Message::ReadFailed { request_id } => PeerMsg::ReadFailed { request_id },
        _ => {
            out.push(Incoming::Ignore("message type not used by this version"));
            return out;
        }
    };
    out.push(Incoming::Msg(m));
    out
}

pub fn state_of(v: &PeerView) -> State {
    let mut flags = StateFlags::empty();
    if v.crashed_primary {
        flags = flags | StateFlags::CRASHED_PRIMARY;
    }
    if v.discard_my_data {
        flags = flags | StateFlags::DISCARD_MY_DATA;
    }
    State {
        role: v.role,
        disk: v.disk,
        uuids: v.uuids,
        flags,
        dirty_bits: v.dirty_bits,
    }
}

/// The peer's view from its State (and its data size, from its Params).
pub fn view_of(s: &State, size_bytes: u64) -> PeerView {
    PeerView {
        role: s.role,
        disk: s.disk,
        uuids: GenerationUuids { ..s.uuids },
        crashed_primary: s.flags.contains(StateFlags::CRASHED_PRIMARY),
        discard_my_data: s.flags.contains(StateFlags::DISCARD_MY_DATA),
        dirty_bits: s.dirty_bits,
        size_bytes,
    }
}
