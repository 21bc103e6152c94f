//! The typed messages (PROTOCOL.md §4) and their payload encodings.

pub(crate) mod auth;
pub(crate) mod control;
pub(crate) mod handshake;
pub(crate) mod resync;
pub(crate) mod write;

use bytes::{BufMut, Bytes, BytesMut};

use crate::header::{Header, CRC_LEN_BYTES, HEADER_LEN_BYTES, VERSION};
use crate::wire::Reader;
use crate::{
    AuthChallenge, AuthResponse, AuthResult, BarrierAck, BitmapChunk, BlockRange, CsumRequest,
    Data, Disconnect, Error, Hello, MessageType, NegAck, Params, RangeWrite, ReadReply, ResyncData,
    ResyncStart, State, StateChange, StateChangeReply, VerifyReply, VerifyRequest, VerifyStart,
    WriteFlags,
};

/// Every message of protocol version 1. The section of PROTOCOL.md describing each is given.
/// A request's id is the `seq` of the frame that carried it (§2.5); replies name it in
/// `request_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// §4.2
    Hello(Hello),
    /// §4.3
    AuthChallenge(AuthChallenge),
    /// §4.4
    AuthResponse(AuthResponse),
    /// §4.5
    AuthResult(AuthResult),
    /// §4.6
    Params(Params),
    /// §4.7
    State(State),
    /// §4.8
    Data(Data),
    /// §4.9: protocol B, the peer received the write.
    RecvAck { request_id: u64 },
    /// §4.9: protocol C, the peer wrote the write.
    WriteAck { request_id: u64 },
    /// §4.10
    NegAck(NegAck),
    /// §4.11: closes an epoch.
    Barrier { epoch: u64 },
    /// §4.12
    BarrierAck(BarrierAck),
    /// §4.13
    FlushReq { flush_id: u64 },
    /// §4.13
    FlushAck { flush_id: u64 },
    /// §4.14
    Trim(RangeWrite),
    /// §4.14
    WriteZeroes(RangeWrite),
    /// §4.15
    Ping,
    /// §4.15
    PingAck,
    /// §4.16
    BitmapChunk(BitmapChunk),
    /// §4.17: the SyncSource's new bitmap UUID at resync start.
    SyncUuid { uuid: u64 },
    /// §4.18
    ResyncRequest(BlockRange),
    /// §4.19
    ResyncData(ResyncData),
    /// §4.20
    CsumRequest(CsumRequest),
    /// §4.21: answer to a `CsumRequest` whose digest matched.
    InSync(BlockRange),
    /// §4.22
    VerifyRequest(VerifyRequest),
    /// §4.22
    VerifyReply(VerifyReply),
    /// §4.23
    ResyncDone,
    /// §4.27: an operator-requested resync (invalidate, invalidate-remote, verify --repair).
    ResyncStart(ResyncStart),
    /// §4.28: the sender paused (`true`) or resumed (`false`) the resync (`pause-sync`).
    SyncPause { paused: bool },
    /// §4.29: an online verify of a range begins; the receiver is VerifyT.
    VerifyStart(VerifyStart),
    /// §4.24
    StateChange(StateChange),
    /// §4.25
    StateChangeReply(StateChangeReply),
    /// §4.26
    Disconnect(Disconnect),
    /// §4.30: the Primary's local read failed; the peer reads the range for it.
    ReadRequest(BlockRange),
    /// §4.30: the answer to a `ReadRequest` (its frame's seq).
    ReadReply(ReadReply),
    /// §4.30: the peer could not read the range either.
    ReadFailed { request_id: u64 },
}

impl Message {
    /// The header's message type for this message.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::AuthChallenge(_) => MessageType::AuthChallenge,
            Message::AuthResponse(_) => MessageType::AuthResponse,
            Message::AuthResult(_) => MessageType::AuthResult,
            Message::Params(_) => MessageType::Params,
            Message::State(_) => MessageType::State,
            Message::Data(_) => MessageType::Data,
            Message::RecvAck { .. } => MessageType::RecvAck,
            Message::WriteAck { .. } => MessageType::WriteAck,
            Message::NegAck(_) => MessageType::NegAck,
            Message::Barrier { .. } => MessageType::Barrier,
            Message::BarrierAck(_) => MessageType::BarrierAck,
            Message::FlushReq { .. } => MessageType::FlushReq,
            Message::FlushAck { .. } => MessageType::FlushAck,
            Message::Trim(_) => MessageType::Trim,
            Message::WriteZeroes(_) => MessageType::WriteZeroes,
            Message::Ping => MessageType::Ping,
            Message::PingAck => MessageType::PingAck,
            Message::BitmapChunk(_) => MessageType::BitmapChunk,
            Message::SyncUuid { .. } => MessageType::SyncUuid,
            Message::ResyncRequest(_) => MessageType::ResyncRequest,
            Message::ResyncData(_) => MessageType::ResyncData,
            Message::CsumRequest(_) => MessageType::CsumRequest,
            Message::InSync(_) => MessageType::InSync,
            Message::VerifyRequest(_) => MessageType::VerifyRequest,
            Message::VerifyReply(_) => MessageType::VerifyReply,
            Message::ResyncDone => MessageType::ResyncDone,
            Message::ResyncStart(_) => MessageType::ResyncStart,
            Message::SyncPause { .. } => MessageType::SyncPause,
            Message::VerifyStart(_) => MessageType::VerifyStart,
            Message::StateChange(_) => MessageType::StateChange,
            Message::StateChangeReply(_) => MessageType::StateChangeReply,
            Message::Disconnect(_) => MessageType::Disconnect,
            Message::ReadRequest(_) => MessageType::ReadRequest,
            Message::ReadReply(_) => MessageType::ReadReply,
            Message::ReadFailed { .. } => MessageType::ReadFailed,
        }
    }

    /// The header flags this message is sent with.
    pub fn header_flags(&self) -> u16 {
        match self {
            Message::Data(data) => data.flags.bits(),
            Message::Trim(range) | Message::WriteZeroes(range) => range.flags.bits(),
            _ => 0,
        }
    }

    /// Length of the payload alone.
    pub fn payload_len_bytes(&self) -> usize {
        match self {
            Message::Hello(hello) => hello.encoded_len_bytes(),
            Message::AuthChallenge(_) => auth::AUTH_CHALLENGE_LEN_BYTES,
            Message::AuthResponse(_) => auth::AUTH_RESPONSE_LEN_BYTES,
            Message::AuthResult(_) => 1,
            Message::Params(_) => Params::LEN_BYTES,
            Message::State(_) => State::LEN_BYTES,
            Message::Data(data) => data.encoded_len_bytes(),
            Message::RecvAck { .. }
            | Message::WriteAck { .. }
            | Message::Barrier { .. }
            | Message::FlushReq { .. }
            | Message::FlushAck { .. }
            | Message::SyncUuid { .. }
            | Message::ReadFailed { .. } => 8,
            Message::NegAck(_) => 10,
            Message::BarrierAck(_) => 12,
            Message::Trim(_) | Message::WriteZeroes(_) => 16,
            Message::Ping | Message::PingAck | Message::ResyncDone => 0,
            Message::BitmapChunk(chunk) => chunk.encoded_len_bytes(),
            Message::ResyncRequest(_) | Message::InSync(_) | Message::ReadRequest(_) => {
                BlockRange::LEN_BYTES
            }
            Message::ResyncData(data) => data.encoded_len_bytes(),
            Message::ReadReply(reply) => reply.encoded_len_bytes(),
            Message::CsumRequest(request) => request.encoded_len_bytes(),
            Message::VerifyRequest(request) => request.encoded_len_bytes(),
            Message::VerifyReply(_) => VerifyReply::LEN_BYTES,
            Message::ResyncStart(_) => ResyncStart::LEN_BYTES,
            Message::SyncPause { .. } => 1,
            Message::VerifyStart(_) => VerifyStart::LEN_BYTES,
            Message::StateChange(_) => StateChange::LEN_BYTES,
            Message::StateChangeReply(_) => StateChangeReply::LEN_BYTES,
            Message::Disconnect(_) => 2,
        }
    }

    /// Length of the whole frame `encode` appends: header + payload + crc.
    pub fn encoded_len_bytes(&self) -> usize {
        HEADER_LEN_BYTES + self.payload_len_bytes() + CRC_LEN_BYTES
    }

    /// Appends one complete frame (header, payload, crc32c) carrying this message with
    /// sequence number `seq` (PROTOCOL.md §2).
    ///
    /// # Panics
    /// If the payload is longer than `u32::MAX` bytes. Callers split writes to the peer's
    /// `max_frame_bytes` (see [`crate::DecodeLimits::max_data_bytes`]) long before that; a
    /// frame above the peer's limit but below 4 GiB is encoded and refused by the peer.
    pub fn encode(&self, seq: u64, out: &mut BytesMut) {
        let payload_len_bytes = u32::try_from(self.payload_len_bytes())
            .expect("urbd frame payload must be shorter than 4 GiB; split the write");
        out.reserve(self.encoded_len_bytes());
        let start = out.len();
        Header {
            version: VERSION,
            message_type: self.message_type(),
            flags: self.header_flags(),
            payload_len_bytes,
            seq,
        }
        .encode(out);
        self.put_payload(out);
        debug_assert_eq!(
            out.len() - start,
            HEADER_LEN_BYTES + self.payload_len_bytes()
        );
        let crc = crc32c::crc32c(out.get(start..).unwrap_or_default());
        out.put_u32(crc);
    }

    fn put_payload(&self, out: &mut BytesMut) {
        match self {
            Message::Hello(hello) => hello.put(out),
            Message::AuthChallenge(challenge) => out.put_slice(&challenge.0),
            Message::AuthResponse(response) => out.put_slice(&response.0),
            Message::AuthResult(result) => out.put_u8(result.to_wire()),
            Message::Params(params) => params.put(out),
            Message::State(state) => state.put(out),
            Message::Data(data) => data.put(out),
            Message::RecvAck { request_id } | Message::WriteAck { request_id } => {
                out.put_u64(*request_id)
            }
            Message::NegAck(nak) => nak.put(out),
            Message::Barrier { epoch } => out.put_u64(*epoch),
            Message::BarrierAck(ack) => ack.put(out),
            Message::FlushReq { flush_id } | Message::FlushAck { flush_id } => {
                out.put_u64(*flush_id)
            }
            Message::Trim(range) | Message::WriteZeroes(range) => range.put(out),
            Message::Ping | Message::PingAck | Message::ResyncDone => {}
            Message::BitmapChunk(chunk) => chunk.put(out),
            Message::SyncUuid { uuid } => out.put_u64(*uuid),
            Message::ResyncRequest(range)
            | Message::InSync(range)
            | Message::ReadRequest(range) => range.put(out),
            Message::ResyncData(data) => data.put(out),
            Message::ReadReply(reply) => reply.put(out),
            Message::ReadFailed { request_id } => out.put_u64(*request_id),
            Message::CsumRequest(request) => request.put(out),
            Message::VerifyRequest(request) => request.put(out),
            Message::VerifyReply(reply) => reply.put(out),
            Message::ResyncStart(start) => start.put(out),
            Message::SyncPause { paused } => out.put_u8(u8::from(*paused)),
            Message::VerifyStart(start) => start.put(out),
            Message::StateChange(change) => change.put(out),
            Message::StateChangeReply(reply) => reply.put(out),
            Message::Disconnect(disconnect) => disconnect.put(out),
        }
    }

    /// Decodes a payload whose header has been validated. Data payloads are zero-copy slices of
    /// `payload`.
    pub(crate) fn decode_payload(header: &Header, payload: Bytes) -> Result<Message, Error> {
        let mut reader = Reader::new(payload, header.message_type);
        let message = Self::take(header, &mut reader)?;
        reader.finish()?;
        Ok(message)
    }

    fn take(header: &Header, r: &mut Reader) -> Result<Message, Error> {
        Ok(match header.message_type {
            MessageType::Hello => Message::Hello(Hello::take(r)?),
            MessageType::AuthChallenge => {
                Message::AuthChallenge(AuthChallenge(r.array("challenge")?))
            }
            MessageType::AuthResponse => Message::AuthResponse(AuthResponse(r.array("response")?)),
            MessageType::AuthResult => Message::AuthResult(AuthResult::try_from(r.u8("result")?)?),
            MessageType::Params => Message::Params(Params::take(r)?),
            MessageType::State => Message::State(State::take(r)?),
            MessageType::Data => Message::Data(Data::take(r, write_flags(header)?)?),
            MessageType::RecvAck => Message::RecvAck {
                request_id: r.u64("request_id")?,
            },
            MessageType::WriteAck => Message::WriteAck {
                request_id: r.u64("request_id")?,
            },
            MessageType::NegAck => Message::NegAck(NegAck::take(r)?),
            MessageType::Barrier => Message::Barrier {
                epoch: r.u64("epoch")?,
            },
            MessageType::BarrierAck => Message::BarrierAck(BarrierAck::take(r)?),
            MessageType::FlushReq => Message::FlushReq {
                flush_id: r.u64("flush_id")?,
            },
            MessageType::FlushAck => Message::FlushAck {
                flush_id: r.u64("flush_id")?,
            },
            MessageType::Trim => Message::Trim(RangeWrite::take(r, write_flags(header)?)?),
            MessageType::WriteZeroes => {
                Message::WriteZeroes(RangeWrite::take(r, write_flags(header)?)?)
            }
            MessageType::Ping => Message::Ping,
            MessageType::PingAck => Message::PingAck,
            MessageType::BitmapChunk => Message::BitmapChunk(BitmapChunk::take(r)?),
            MessageType::SyncUuid => Message::SyncUuid {
                uuid: r.u64("uuid")?,
            },
            MessageType::ResyncRequest => Message::ResyncRequest(BlockRange::take(r)?),
            MessageType::ResyncData => Message::ResyncData(ResyncData::take(r)?),
            MessageType::CsumRequest => Message::CsumRequest(CsumRequest::take(r)?),
            MessageType::InSync => Message::InSync(BlockRange::take(r)?),
            MessageType::VerifyRequest => Message::VerifyRequest(VerifyRequest::take(r)?),
            MessageType::VerifyReply => Message::VerifyReply(VerifyReply::take(r)?),
            MessageType::ResyncDone => Message::ResyncDone,
            MessageType::ResyncStart => Message::ResyncStart(ResyncStart::take(r)?),
            MessageType::SyncPause => Message::SyncPause {
                paused: resync::take_bool(r, "paused")?,
            },
            MessageType::VerifyStart => Message::VerifyStart(VerifyStart::take(r)?),
            MessageType::StateChange => Message::StateChange(StateChange::take(r)?),
            MessageType::StateChangeReply => Message::StateChangeReply(StateChangeReply::take(r)?),
            MessageType::Disconnect => Message::Disconnect(Disconnect::take(r)?),
            MessageType::ReadRequest => Message::ReadRequest(BlockRange::take(r)?),
            MessageType::ReadReply => Message::ReadReply(ReadReply::take(r)?),
            MessageType::ReadFailed => Message::ReadFailed {
                request_id: r.u64("request_id")?,
            },
        })
    }
}

fn write_flags(header: &Header) -> Result<WriteFlags, Error> {
    WriteFlags::from_bits(header.flags)
}
