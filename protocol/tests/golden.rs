//! Exact bytes on the wire (PROTOCOL.md §2.1, §2.2, §2.7, §4).

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::encode;
use urbd_protocol::*;

// PROTOCOL.md §2.2: the crc is CRC-32C (Castagnoli), pinned by its standard check value.
#[test]
fn crc_is_castagnoli() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
}

// PROTOCOL.md §2.1, §2.2, §4.15: a Ping frame byte by byte.
#[test]
fn ping_frame_bytes() {
    let frame = encode(&Message::Ping, 0x0102_0304_0506_0708);
    let header = [
        0x55, 0x52, 0x42, 0x44, // magic "URBD"
        0x00, 0x01, // version
        0x00, 0x20, // type Ping
        0x00, 0x00, // flags
        0x00, 0x00, // reserved
        0x00, 0x00, 0x00, 0x00, // payload length
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // seq
    ];
    assert_eq!(&frame[..24], &header);
    assert_eq!(&frame[24..], &crc32c::crc32c(&header).to_be_bytes());
    assert_eq!(frame.len(), 28);
}

// PROTOCOL.md §2.1, §4.8: a Data frame: flags in the header, offset then data in the payload.
#[test]
fn data_frame_bytes() {
    let message = Message::Data(Data {
        offset_bytes: 0x1000,
        flags: WriteFlags::FUA | WriteFlags::FLUSH_BEFORE,
        data: Bytes::from_static(b"abc"),
    });
    let frame = encode(&message, 5);
    assert_eq!(&frame[6..8], &[0x00, 0x10], "type Data");
    assert_eq!(&frame[8..10], &[0x00, 0x03], "FUA | FLUSH_BEFORE");
    assert_eq!(&frame[12..16], &[0, 0, 0, 11], "payload length 8 + 3");
    assert_eq!(&frame[16..24], &5u64.to_be_bytes());
    assert_eq!(&frame[24..32], &0x1000u64.to_be_bytes());
    assert_eq!(&frame[32..35], b"abc");
    assert_eq!(&frame[35..], &crc32c::crc32c(&frame[..35]).to_be_bytes());
}

// PROTOCOL.md §4.2: Hello payload layout.
#[test]
fn hello_payload_bytes() {
    let message = Message::Hello(Hello {
        version_min: 1,
        version_max: 1,
        resource: Name::new("r0").unwrap(),
        node: Name::new("alpha").unwrap(),
        connection: ConnectionKind::Meta,
    });
    let frame = encode(&message, 0);
    assert_eq!(
        &frame[24..frame.len() - 4],
        &[0, 1, 0, 1, 1, 2, b'r', b'0', 5, b'a', b'l', b'p', b'h', b'a']
    );
}

// PROTOCOL.md §4.7: State payload layout.
#[test]
fn state_payload_bytes() {
    let message = Message::State(State {
        role: Role::Primary,
        disk: DiskState::UpToDate,
        uuids: GenerationUuids {
            current: 0x11,
            bitmap: 0x22,
            history: [0x33, 0x44],
        },
        flags: StateFlags::CRASHED_PRIMARY,
        dirty_bits: 7,
    });
    let frame = encode(&message, 0);
    let mut expected = vec![1, 8];
    for v in [0x11u64, 0x22, 0x33, 0x44] {
        expected.extend_from_slice(&v.to_be_bytes());
    }
    expected.extend_from_slice(&1u32.to_be_bytes());
    expected.extend_from_slice(&7u64.to_be_bytes());
    assert_eq!(&frame[24..frame.len() - 4], &expected[..]);
}

/// One example of every message type.
fn examples() -> Vec<Message> {
    let range = BlockRange {
        offset_bytes: 8192,
        length_bytes: 4096,
    };
    let extent = RangeWrite {
        offset_bytes: 0,
        length_bytes: 1 << 20,
        flags: WriteFlags::empty(),
    };
    vec![
        Message::Hello(Hello {
            version_min: 1,
            version_max: 1,
            resource: Name::new("r0").unwrap(),
            node: Name::new("a").unwrap(),
            connection: ConnectionKind::Data,
        }),
        Message::AuthChallenge(AuthChallenge([1; 64])),
        Message::AuthResponse(AuthResponse([2; 32])),
        Message::AuthResult(AuthResult::Accepted),
        Message::Params(Params {
            size_bytes: 1 << 30,
            protocol: ReplicationProtocol::C,
            bitmap_granularity_bytes: 4096,
            max_frame_bytes: MAX_FRAME_BYTES_DEFAULT,
        }),
        Message::State(State {
            role: Role::Secondary,
            disk: DiskState::Inconsistent,
            uuids: GenerationUuids::default(),
            flags: StateFlags::empty(),
            dirty_bits: 0,
        }),
        Message::Data(Data {
            offset_bytes: 0,
            flags: WriteFlags::empty(),
            data: Bytes::from_static(&[0; 512]),
        }),
        Message::RecvAck { request_id: 1 },
        Message::WriteAck { request_id: 1 },
        Message::NegAck(NegAck {
            request_id: 1,
            error: WriteErrorCode::IoError,
        }),
        Message::Barrier { epoch: 3 },
        Message::BarrierAck(BarrierAck {
            epoch: 3,
            write_count: 10,
        }),
        Message::FlushReq { flush_id: 4 },
        Message::FlushAck { flush_id: 4 },
        Message::Trim(extent),
        Message::WriteZeroes(extent),
        Message::Ping,
        Message::PingAck,
        Message::BitmapChunk(BitmapChunk {
            first_bit: 0,
            bit_count: 64,
            bits: Bytes::from_static(&[0xff; 8]),
        }),
        Message::SyncUuid {
            uuid: 0x0001_0000_0000_1234,
        },
        Message::ResyncRequest(range),
        Message::ResyncData(ResyncData {
            offset_bytes: 8192,
            data: Bytes::from_static(&[0; 4096]),
        }),
        Message::CsumRequest(CsumRequest {
            range,
            digest: Digest::Crc32c(0xdead_beef),
        }),
        Message::InSync(range),
        Message::VerifyRequest(VerifyRequest {
            range,
            digest: Digest::Sha256([9; 32]),
        }),
        Message::VerifyReply(VerifyReply {
            range,
            in_sync: false,
        }),
        Message::ResyncDone,
        Message::ResyncStart(ResyncStart {
            full: true,
            sender_is_target: true,
        }),
        Message::SyncPause { paused: true },
        Message::VerifyStart(VerifyStart {
            start_bytes: 0,
            stop_bytes: 1 << 20,
        }),
        Message::ReadRequest(range),
        Message::ReadReply(ReadReply {
            request_id: 9,
            data: Bytes::from_static(&[7; 16]),
        }),
        Message::ReadFailed { request_id: 9 },
        Message::StateChange(StateChange {
            role: Some(Role::Primary),
            disk: None,
        }),
        Message::StateChangeReply(StateChangeReply {
            request_id: 2,
            outcome: StateChangeOutcome::Refused(StateChangeRefusal::TwoPrimaries),
        }),
        Message::Disconnect(Disconnect {
            reason: DisconnectReason::SplitBrain,
        }),
    ]
}

// PROTOCOL.md §2.7: every type number is covered, appears at bytes 6..8, and round-trips.
#[test]
fn every_message_type_is_encoded_with_its_number() {
    let examples = examples();
    let covered: BTreeSet<MessageType> = examples.iter().map(Message::message_type).collect();
    let all: BTreeSet<MessageType> = MessageType::ALL.iter().copied().collect();
    assert_eq!(
        covered, all,
        "examples() must hold one message of every type"
    );
    for message in examples {
        let frame = encode(&message, 0);
        let number = u16::from_be_bytes([frame[6], frame[7]]);
        assert_eq!(number, message.message_type().to_wire());
        let (min, max) = message.message_type().payload_len_bounds_bytes();
        let payload = message.payload_len_bytes() as u32;
        assert!(
            (min..=max).contains(&payload),
            "{:?}",
            message.message_type()
        );
        assert_eq!(Frame::parse(&frame).unwrap().1, message);
    }
}

// PROTOCOL.md §2.7: the type table in the spec.
#[test]
fn type_numbers_match_spec_table() {
    let table: &[(MessageType, u16)] = &[
        (MessageType::Hello, 0x0001),
        (MessageType::AuthChallenge, 0x0002),
        (MessageType::AuthResponse, 0x0003),
        (MessageType::AuthResult, 0x0004),
        (MessageType::Params, 0x0005),
        (MessageType::State, 0x0006),
        (MessageType::Data, 0x0010),
        (MessageType::RecvAck, 0x0011),
        (MessageType::WriteAck, 0x0012),
        (MessageType::NegAck, 0x0013),
        (MessageType::Barrier, 0x0014),
        (MessageType::BarrierAck, 0x0015),
        (MessageType::FlushReq, 0x0016),
        (MessageType::FlushAck, 0x0017),
        (MessageType::Trim, 0x0018),
        (MessageType::WriteZeroes, 0x0019),
        (MessageType::Ping, 0x0020),
        (MessageType::PingAck, 0x0021),
        (MessageType::BitmapChunk, 0x0030),
        (MessageType::SyncUuid, 0x0031),
        (MessageType::ResyncRequest, 0x0032),
        (MessageType::ResyncData, 0x0033),
        (MessageType::CsumRequest, 0x0034),
        (MessageType::InSync, 0x0035),
        (MessageType::VerifyRequest, 0x0036),
        (MessageType::VerifyReply, 0x0037),
        (MessageType::ResyncDone, 0x0038),
        (MessageType::ResyncStart, 0x0039),
        (MessageType::SyncPause, 0x003a),
        (MessageType::VerifyStart, 0x003b),
        (MessageType::ReadRequest, 0x003c),
        (MessageType::ReadReply, 0x003d),
        (MessageType::ReadFailed, 0x003e),
        (MessageType::StateChange, 0x0040),
        (MessageType::StateChangeReply, 0x0041),
        (MessageType::Disconnect, 0x0042),
    ];
    assert_eq!(table.len(), MessageType::ALL.len());
    for &(message_type, number) in table {
        assert_eq!(message_type.to_wire(), number);
    }
}
