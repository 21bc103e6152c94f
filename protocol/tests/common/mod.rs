//! Shared proptest strategies: a valid value of every message (PROTOCOL.md §4).

#![allow(dead_code)]

use bytes::Bytes;
use proptest::prelude::*;
use urbd_protocol::*;

pub fn arb_name() -> impl Strategy<Value = Name> {
    "[!-~]{1,64}".prop_map(|s| Name::new(s).expect("strategy yields valid names"))
}

pub fn arb_data(max_len: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 1..=max_len).prop_map(Bytes::from)
}

pub fn arb_write_flags() -> impl Strategy<Value = WriteFlags> {
    (0..=WriteFlags::ALL_BITS).prop_map(|bits| WriteFlags::from_bits(bits).expect("defined bits"))
}

pub fn arb_state_flags() -> impl Strategy<Value = StateFlags> {
    (0..=StateFlags::ALL_BITS).prop_map(|bits| StateFlags::from_bits(bits).expect("defined bits"))
}

fn pick<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(all)
}

/// (offset, length) with length > 0 and no overflow.
pub fn arb_extent_u64() -> impl Strategy<Value = (u64, u64)> {
    (1..=u64::MAX).prop_flat_map(|len| (0..=u64::MAX - len, Just(len)))
}

pub fn arb_block_range() -> impl Strategy<Value = BlockRange> {
    (1..=u32::MAX).prop_flat_map(|len| {
        (0..=u64::MAX - u64::from(len)).prop_map(move |offset_bytes| BlockRange {
            offset_bytes,
            length_bytes: len,
        })
    })
}

pub fn arb_digest() -> impl Strategy<Value = Digest> {
    prop_oneof![
        any::<u32>().prop_map(Digest::Crc32c),
        any::<[u8; 32]>().prop_map(Digest::Sha256)
    ]
}

pub fn arb_bitmap_chunk() -> impl Strategy<Value = BitmapChunk> {
    (0..=(u64::MAX / 16), 1u32..=2048, any::<u64>()).prop_flat_map(|(first_byte, bit_count, _)| {
        let len = bit_count.div_ceil(8) as usize;
        proptest::collection::vec(any::<u8>(), len).prop_map(move |mut bits| {
            let spare = bit_count % 8;
            if spare != 0 {
                if let Some(last) = bits.last_mut() {
                    *last &= (1u8 << spare) - 1;
                }
            }
            BitmapChunk {
                first_bit: first_byte * 8,
                bit_count,
                bits: Bytes::from(bits),
            }
        })
    })
}

pub fn arb_state() -> impl Strategy<Value = State> {
    (
        prop_oneof![Just(Role::Primary), Just(Role::Secondary)],
        pick(DiskState::ALL).prop_filter("DUnknown is never sent", |d| *d != DiskState::DUnknown),
        any::<[u64; 4]>(),
        arb_state_flags(),
        any::<u64>(),
    )
        .prop_map(|(role, disk, u, flags, dirty_bits)| State {
            role,
            disk,
            uuids: GenerationUuids {
                current: u[0],
                bitmap: u[1],
                history: [u[2], u[3]],
            },
            flags,
            dirty_bits,
        })
}

pub fn arb_params() -> impl Strategy<Value = Params> {
    (
        0..=(u64::MAX / SECTOR_SIZE_BYTES),
        pick(ReplicationProtocol::ALL),
        9u32..=30,
        MAX_FRAME_BYTES_LOWER_BOUND..=MAX_FRAME_BYTES_UPPER_BOUND,
    )
        .prop_map(|(sectors, protocol, shift, max_frame_bytes)| Params {
            size_bytes: sectors * SECTOR_SIZE_BYTES,
            protocol,
            bitmap_granularity_bytes: 1 << shift,
            max_frame_bytes,
        })
}

pub fn arb_hello() -> impl Strategy<Value = Hello> {
    (
        1u16..=u16::MAX,
        any::<u16>(),
        arb_name(),
        arb_name(),
        pick(ConnectionKind::ALL),
    )
        .prop_map(|(version_min, extra, resource, node, connection)| Hello {
            version_min,
            version_max: version_min.saturating_add(extra),
            resource,
            node,
            connection,
        })
}

pub fn arb_state_change() -> impl Strategy<Value = StateChange> {
    let role = prop_oneof![
        Just(None),
        Just(Some(Role::Primary)),
        Just(Some(Role::Secondary))
    ];
    let disk = prop_oneof![
        Just(None),
        pick(DiskState::ALL)
            .prop_filter("not DUnknown", |d| *d != DiskState::DUnknown)
            .prop_map(Some)
    ];
    (role, disk)
        .prop_filter("at least one change", |(r, d)| r.is_some() || d.is_some())
        .prop_map(|(role, disk)| StateChange { role, disk })
}

pub fn arb_range_write() -> impl Strategy<Value = RangeWrite> {
    (arb_extent_u64(), arb_write_flags()).prop_map(|((offset_bytes, length_bytes), flags)| {
        RangeWrite {
            offset_bytes,
            length_bytes,
            flags,
        }
    })
}

/// Any valid message; data payloads up to `max_data` bytes.
pub fn arb_message() -> impl Strategy<Value = Message> {
    let max_data = 4096;
    prop_oneof![
        arb_hello().prop_map(Message::Hello),
        any::<[u8; 64]>().prop_map(|c| Message::AuthChallenge(AuthChallenge(c))),
        any::<[u8; 32]>().prop_map(|r| Message::AuthResponse(AuthResponse(r))),
        pick(AuthResult::ALL).prop_map(Message::AuthResult),
        arb_params().prop_map(Message::Params),
        arb_state().prop_map(Message::State),
        (arb_data(max_data), arb_write_flags())
            .prop_flat_map(|(data, flags)| {
                (0..=u64::MAX - data.len() as u64, Just(data), Just(flags))
            })
            .prop_map(|(offset_bytes, data, flags)| Message::Data(Data {
                offset_bytes,
                flags,
                data
            })),
        any::<u64>().prop_map(|request_id| Message::RecvAck { request_id }),
        any::<u64>().prop_map(|request_id| Message::WriteAck { request_id }),
        (any::<u64>(), pick(WriteErrorCode::ALL))
            .prop_map(|(request_id, error)| Message::NegAck(NegAck { request_id, error })),
        any::<u64>().prop_map(|epoch| Message::Barrier { epoch }),
        (any::<u64>(), any::<u32>()).prop_map(|(epoch, write_count)| Message::BarrierAck(
            BarrierAck { epoch, write_count }
        )),
        any::<u64>().prop_map(|flush_id| Message::FlushReq { flush_id }),
        any::<u64>().prop_map(|flush_id| Message::FlushAck { flush_id }),
        arb_range_write().prop_map(Message::Trim),
        arb_range_write().prop_map(Message::WriteZeroes),
        Just(Message::Ping),
        Just(Message::PingAck),
        arb_bitmap_chunk().prop_map(Message::BitmapChunk),
        any::<u64>().prop_map(|uuid| Message::SyncUuid { uuid }),
        arb_block_range().prop_map(Message::ResyncRequest),
        arb_data(max_data)
            .prop_flat_map(|data| (0..=u64::MAX - data.len() as u64, Just(data)))
            .prop_map(|(offset_bytes, data)| Message::ResyncData(ResyncData {
                offset_bytes,
                data
            })),
        (arb_block_range(), arb_digest())
            .prop_map(|(range, digest)| Message::CsumRequest(CsumRequest { range, digest })),
        arb_block_range().prop_map(Message::InSync),
        (arb_block_range(), arb_digest())
            .prop_map(|(range, digest)| Message::VerifyRequest(VerifyRequest { range, digest })),
        (arb_block_range(), any::<bool>())
            .prop_map(|(range, in_sync)| Message::VerifyReply(VerifyReply { range, in_sync })),
        Just(Message::ResyncDone),
        (any::<bool>(), any::<bool>()).prop_map(|(full, sender_is_target)| {
            Message::ResyncStart(ResyncStart {
                full,
                sender_is_target,
            })
        }),
        any::<bool>().prop_map(|paused| Message::SyncPause { paused }),
        (0..u64::MAX)
            .prop_flat_map(|start_bytes| (Just(start_bytes), start_bytes + 1..=u64::MAX))
            .prop_map(
                |(start_bytes, stop_bytes)| Message::VerifyStart(VerifyStart {
                    start_bytes,
                    stop_bytes
                })
            ),
        (any::<u64>(), 0u32..=1 << 20).prop_map(|(offset_bytes, length_bytes)| {
            Message::ReadRequest(BlockRange {
                offset_bytes: offset_bytes % (1 << 50),
                length_bytes: length_bytes.max(1),
            })
        }),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 1..64)).prop_map(
            |(request_id, data)| Message::ReadReply(ReadReply {
                request_id,
                data: Bytes::from(data),
            })
        ),
        any::<u64>().prop_map(|request_id| Message::ReadFailed { request_id }),
        arb_state_change().prop_map(Message::StateChange),
        (
            any::<u64>(),
            prop_oneof![
                Just(StateChangeOutcome::Accepted),
                pick(StateChangeRefusal::ALL).prop_map(StateChangeOutcome::Refused)
            ]
        )
            .prop_map(|(request_id, outcome)| Message::StateChangeReply(
                StateChangeReply {
                    request_id,
                    outcome
                }
            )),
        pick(DisconnectReason::ALL).prop_map(|reason| Message::Disconnect(Disconnect { reason })),
    ]
}

/// Encodes one message into a fresh buffer.
pub fn encode(message: &Message, seq: u64) -> bytes::BytesMut {
    let mut out = bytes::BytesMut::new();
    message.encode(seq, &mut out);
    out
}

/// A frame with an arbitrary payload and a correct crc, for feeding decoders bytes that pass
/// the crc but may break a payload rule.
pub fn raw_frame(message_type: u16, flags: u16, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&message_type.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// check + parse on a buffer, as the connection layer would.
pub fn check_and_parse(buf: &[u8]) -> Result<(Header, Message), Error> {
    let len = Frame::check(buf, &DecodeLimits::default())?;
    Frame::parse(&buf[..len])
}
