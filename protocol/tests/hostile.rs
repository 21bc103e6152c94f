//! Hostile and corrupted input: never a panic, always a named error (PROTOCOL.md §2.2–§2.4).

mod common;

use bytes::BytesMut;
use common::{arb_message, check_and_parse, encode, raw_frame};
use proptest::prelude::*;
use urbd_protocol::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    // PROTOCOL.md §2.4: arbitrary bytes never panic any decoding entry point.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let limits = DecodeLimits::default();
        if let Ok(len) = Frame::check(&bytes, &limits) {
            let _ = Frame::parse(&bytes[..len]);
        }
        let _ = Frame::parse(&bytes);
        let _ = Frame::parse_bytes(bytes::Bytes::from(bytes.clone()));
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = Frame::decode(&mut buf, &limits) {}
    }

    // PROTOCOL.md §2.4, §4: garbage payloads behind a valid header and a correct crc reach the
    // payload decoders; they never panic and only accept what re-encodes to the same bytes.
    #[test]
    fn garbage_payload_with_valid_crc_never_panics(
        type_index in 0..MessageType::ALL.len(),
        flags in any::<u16>(),
        seq in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..160),
    ) {
        let message_type = MessageType::ALL[type_index];
        let flags = flags & message_type.defined_flags();
        let frame = raw_frame(message_type.to_wire(), flags, seq, &payload);
        if let Ok((header, message)) = check_and_parse(&frame) {
            prop_assert_eq!(header.message_type, message_type);
            // Canonical encoding: whatever decodes re-encodes to the identical frame.
            prop_assert_eq!(&encode(&message, seq)[..], &frame[..]);
        }
    }

    // PROTOCOL.md §2.2: a single flipped bit anywhere in a frame is always caught (crc32c
    // detects every single-bit error; header damage is caught even earlier).
    #[test]
    fn single_bit_flip_is_always_rejected(
        message in arb_message(),
        seq in any::<u64>(),
        bit in any::<proptest::sample::Index>(),
    ) {
        let mut frame = encode(&message, seq).to_vec();
        let bit = bit.index(frame.len() * 8);
        frame[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(check_and_parse(&frame).is_err());
    }

    // PROTOCOL.md §2.2: damage to the payload or crc (header intact) is a CrcMismatch.
    #[test]
    fn payload_damage_is_a_crc_mismatch(
        message in arb_message(),
        at in any::<proptest::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut frame = encode(&message, 9).to_vec();
        let at = HEADER_LEN_BYTES + at.index(frame.len() - HEADER_LEN_BYTES);
        frame[at] ^= xor;
        let result = check_and_parse(&frame);
        prop_assert!(matches!(result, Err(Error::CrcMismatch { .. })), "{:?}", result);
    }
}

fn header_only(message_type: MessageType, payload_len_bytes: u32) -> Vec<u8> {
    let mut out = Vec::new();
    Header {
        version: VERSION,
        message_type,
        flags: 0,
        payload_len_bytes,
        seq: 0,
    }
    .encode(&mut out);
    out
}

// PROTOCOL.md §2.3: a hostile length is refused from the header alone, before any payload.
#[test]
fn hostile_length_is_refused_early() {
    let limits = DecodeLimits::default();
    let huge = header_only(MessageType::Data, u32::MAX);
    assert_eq!(
        Frame::check(&huge, &limits),
        Err(Error::FrameTooLarge {
            frame_bytes: u64::from(u32::MAX) + 28,
            max_frame_bytes: MAX_FRAME_BYTES_DEFAULT
        })
    );
    let just_over = header_only(MessageType::Data, limits.max_payload_bytes() + 1);
    assert!(matches!(
        Frame::check(&just_over, &limits),
        Err(Error::FrameTooLarge { .. })
    ));
    let at_limit = header_only(MessageType::Data, limits.max_payload_bytes());
    assert_eq!(Frame::check(&at_limit, &limits), Err(Error::Incomplete));
}

// PROTOCOL.md §2.3, §4: fixed-size messages with a wrong length are refused from the header.
#[test]
fn impossible_payload_length_is_refused_early() {
    let limits = DecodeLimits::default();
    assert_eq!(
        Frame::check(&header_only(MessageType::Ping, 1), &limits),
        Err(Error::PayloadLength {
            message_type: MessageType::Ping,
            payload_bytes: 1,
            min_bytes: 0,
            max_bytes: 0
        })
    );
    assert!(matches!(
        Frame::check(&header_only(MessageType::WriteAck, 1 << 20), &limits),
        Err(Error::PayloadLength { .. })
    ));
    assert!(matches!(
        Frame::check(&header_only(MessageType::Data, 8), &limits),
        Err(Error::PayloadLength { .. })
    ));
}

// PROTOCOL.md §2.3: limits are bounded and adjustable.
#[test]
fn decode_limits() {
    assert_eq!(DecodeLimits::default().max_frame_bytes(), (1 << 20) + 36);
    assert!(DecodeLimits::new(0).is_err());
    assert!(DecodeLimits::new(MAX_FRAME_BYTES_LOWER_BOUND - 1).is_err());
    assert!(DecodeLimits::new(MAX_FRAME_BYTES_UPPER_BOUND + 1).is_err());
    let small = DecodeLimits::for_max_data_bytes(4096).unwrap();
    assert_eq!(small.max_data_bytes(), 4096);
    assert!(DecodeLimits::for_max_data_bytes(u32::MAX).is_err());
    let frame = encode(
        &Message::Data(Data {
            offset_bytes: 0,
            flags: WriteFlags::empty(),
            data: bytes::Bytes::from(vec![0; 4097]),
        }),
        0,
    );
    assert!(matches!(
        Frame::check(&frame, &small),
        Err(Error::FrameTooLarge { .. })
    ));
}

// PROTOCOL.md §2.4: parse wants exactly one frame.
#[test]
fn parse_requires_exact_length() {
    let mut frame = encode(&Message::Ping, 0).to_vec();
    frame.push(0);
    assert!(matches!(
        Frame::parse(&frame),
        Err(Error::FrameLengthMismatch { .. })
    ));
    assert!(matches!(
        Frame::parse(&frame[..10]),
        Err(Error::FrameLengthMismatch { .. })
    ));
}

// PROTOCOL.md §4: payload rules, each with its own error (frames carry a correct crc).
#[test]
fn payload_rules_are_enforced() {
    let t = |m: MessageType| m.to_wire();
    let parse = |ty, flags, payload: &[u8]| check_and_parse(&raw_frame(ty, flags, 0, payload));

    // §4.2 Hello: version_min 0, then trailing bytes after the node name.
    let mut hello = vec![0, 0, 0, 1, 0, 2, b'r', b'0', 1, b'a'];
    assert!(matches!(
        parse(t(MessageType::Hello), 0, &hello),
        Err(Error::InvalidField { .. })
    ));
    hello[1] = 1;
    assert!(parse(t(MessageType::Hello), 0, &hello).is_ok());
    hello.push(b'x');
    assert!(matches!(
        parse(t(MessageType::Hello), 0, &hello),
        Err(Error::TrailingBytes { count: 1, .. })
    ));
    // §4.2: a name length that runs past the payload.
    let short = [0, 1, 0, 1, 0, 40, b'r', b'0', 1, b'a'];
    assert!(matches!(
        parse(t(MessageType::Hello), 0, &short),
        Err(Error::PayloadTooShort {
            field: "resource",
            ..
        })
    ));

    // §4.5 AuthResult 2.
    assert_eq!(
        parse(t(MessageType::AuthResult), 0, &[2]),
        Err(Error::UnknownValue {
            kind: "auth result",
            value: 2
        })
    );

    // §4.6 Params: size not a multiple of 512, granularity not a power of two.
    let mut params = [0u8; 17];
    params[7] = 1;
    params[8] = 3;
    params[9..13].copy_from_slice(&4096u32.to_be_bytes());
    params[13..17].copy_from_slice(&MAX_FRAME_BYTES_DEFAULT.to_be_bytes());
    assert!(matches!(
        parse(t(MessageType::Params), 0, &params),
        Err(Error::InvalidField {
            field: "size_bytes",
            ..
        })
    ));
    params[7] = 0;
    assert!(parse(t(MessageType::Params), 0, &params).is_ok());
    params[9..13].copy_from_slice(&4095u32.to_be_bytes());
    assert!(matches!(
        parse(t(MessageType::Params), 0, &params),
        Err(Error::InvalidField {
            field: "bitmap_granularity_bytes",
            ..
        })
    ));

    // §4.7 State: role 9, role Unknown, disk DUnknown, undefined flags.
    let mut state = [0u8; 46];
    state[0] = 1;
    state[1] = 8;
    assert!(parse(t(MessageType::State), 0, &state).is_ok());
    state[0] = 9;
    assert_eq!(
        parse(t(MessageType::State), 0, &state),
        Err(Error::UnknownValue {
            kind: "role",
            value: 9
        })
    );
    state[0] = 0;
    assert!(matches!(
        parse(t(MessageType::State), 0, &state),
        Err(Error::InvalidField { .. })
    ));
    state[0] = 2;
    state[1] = 6;
    assert!(matches!(
        parse(t(MessageType::State), 0, &state),
        Err(Error::InvalidField { .. })
    ));
    state[1] = 4;
    state[34..38].copy_from_slice(&(1u32 << 31).to_be_bytes());
    assert!(matches!(
        parse(t(MessageType::State), 0, &state),
        Err(Error::UnknownValue {
            kind: "state flags",
            ..
        })
    ));

    // §4.8 Data: offset + length overflows; undefined header flag is refused in the header.
    let mut data = u64::MAX.to_be_bytes().to_vec();
    data.push(1);
    assert!(matches!(
        parse(t(MessageType::Data), 0, &data),
        Err(Error::InvalidField { .. })
    ));
    assert!(matches!(
        parse(t(MessageType::Data), 4, &[0; 9]),
        Err(Error::UnknownFlags { flags: 4, .. })
    ));
    assert!(matches!(
        parse(t(MessageType::Ping), 1, &[]),
        Err(Error::UnknownFlags { .. })
    ));

    // §4.10 NegAck unknown error code.
    let mut nak = [0u8; 10];
    nak[9] = 99;
    assert!(matches!(
        parse(t(MessageType::NegAck), 0, &nak),
        Err(Error::UnknownValue { .. })
    ));

    // §4.14 Trim of zero length.
    assert!(matches!(
        parse(t(MessageType::Trim), 0, &[0; 16]),
        Err(Error::InvalidField { .. })
    ));

    // §4.16 BitmapChunk: unaligned first bit, wrong length, spare bits set.
    let chunk = |first_bit: u64, bit_count: u32, bits: &[u8]| {
        let mut p = first_bit.to_be_bytes().to_vec();
        p.extend_from_slice(&bit_count.to_be_bytes());
        p.extend_from_slice(bits);
        parse(t(MessageType::BitmapChunk), 0, &p)
    };
    assert!(chunk(8, 3, &[0b111]).is_ok());
    assert!(chunk(4, 3, &[0b111]).is_err());
    assert!(chunk(8, 3, &[0b1000]).is_err());
    assert!(chunk(8, 3, &[0, 0]).is_err());
    assert!(chunk(8, 16, &[0xff]).is_err());

    // §4.20 CsumRequest: unknown algorithm; crc32c digest with sha256 length.
    let mut csum = 0u64.to_be_bytes().to_vec();
    csum.extend_from_slice(&4096u32.to_be_bytes());
    csum.push(3);
    csum.extend_from_slice(&[0; 4]);
    assert_eq!(
        parse(t(MessageType::CsumRequest), 0, &csum),
        Err(Error::UnknownValue {
            kind: "digest algorithm",
            value: 3
        })
    );
    csum[12] = 1;
    assert!(parse(t(MessageType::CsumRequest), 0, &csum).is_ok());
    csum.extend_from_slice(&[0; 28]);
    assert!(matches!(
        parse(t(MessageType::CsumRequest), 0, &csum),
        Err(Error::TrailingBytes { count: 28, .. })
    ));

    // §4.24 StateChange: empty, undefined mask bit, value without mask bit.
    for bad in [[0, 0, 0], [4, 0, 0], [1, 1, 8], [2, 0, 6]] {
        assert!(
            matches!(
                parse(t(MessageType::StateChange), 0, &bad),
                Err(Error::InvalidField { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(parse(t(MessageType::StateChange), 0, &[3, 1, 8]).is_ok());

    // §4.27 ResyncStart, §4.28 SyncPause, §4.22 VerifyReply: boolean bytes are 0 or 1.
    assert!(parse(t(MessageType::ResyncStart), 0, &[1, 0]).is_ok());
    assert!(parse(t(MessageType::ResyncStart), 0, &[2, 0]).is_err());
    assert!(parse(t(MessageType::SyncPause), 0, &[1]).is_ok());
    assert!(parse(t(MessageType::SyncPause), 0, &[0xff]).is_err());
    let mut verify_reply = [0u8; 13];
    verify_reply[11] = 1; // length 1
    verify_reply[12] = 2;
    assert!(parse(t(MessageType::VerifyReply), 0, &verify_reply).is_err());
    // §4.29 VerifyStart: start below stop.
    let mut verify_start = [0u8; 16];
    verify_start[7] = 5;
    verify_start[15] = 5;
    assert!(parse(t(MessageType::VerifyStart), 0, &verify_start).is_err());
    verify_start[15] = 6;
    assert!(parse(t(MessageType::VerifyStart), 0, &verify_start).is_ok());

    // §4.25 StateChangeReply unknown refusal; §4.26 Disconnect unknown reason.
    let mut reply = [0u8; 10];
    reply[9] = 200;
    assert!(parse(t(MessageType::StateChangeReply), 0, &reply).is_err());
    assert!(parse(t(MessageType::Disconnect), 0, &[0, 0]).is_err());
}

// PROTOCOL.md §2.4: every error message names its cause.
#[test]
fn errors_name_their_cause() {
    let crc = Error::CrcMismatch {
        carried: 1,
        computed: 2,
    };
    assert!(crc.to_string().contains("crc32c mismatch"));
    let big = Error::FrameTooLarge {
        frame_bytes: 10,
        max_frame_bytes: 5,
    };
    assert!(big.to_string().contains("max-frame-bytes"));
    assert!(Error::UnknownMessageType(0x99)
        .to_string()
        .contains("unknown message type 0x0099"));
}
