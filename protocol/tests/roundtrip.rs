//! encode → check → parse round trips for every message (PROTOCOL.md §2, §4).

mod common;

use bytes::BytesMut;
use common::{arb_message, encode};
use proptest::prelude::*;
use urbd_protocol::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    // PROTOCOL.md §2.1, §2.4, §4: every message survives encode → check → parse, the header
    // carries seq, type, flags and the exact payload length, and both parse paths agree.
    #[test]
    fn encode_check_parse_round_trips(message in arb_message(), seq in any::<u64>()) {
        let frame = encode(&message, seq);
        prop_assert_eq!(frame.len(), message.encoded_len_bytes());
        let limits = DecodeLimits::default();
        prop_assert_eq!(Frame::check(&frame, &limits), Ok(frame.len()));

        let (header, parsed) = Frame::parse(&frame).expect("valid frame parses");
        prop_assert_eq!(header.version, VERSION);
        prop_assert_eq!(header.seq, seq);
        prop_assert_eq!(header.message_type, message.message_type());
        prop_assert_eq!(header.flags, message.header_flags());
        prop_assert_eq!(header.payload_len_bytes as usize, message.payload_len_bytes());
        prop_assert_eq!(&parsed, &message);

        let (_, zero_copy) = Frame::parse_bytes(frame.freeze()).expect("valid frame parses");
        prop_assert_eq!(zero_copy, message);
    }

    // PROTOCOL.md §2.4: every strict prefix of a valid frame is Incomplete, never an error
    // and never a frame.
    #[test]
    fn every_prefix_is_incomplete(message in arb_message(), seq in any::<u64>()) {
        let frame = encode(&message, seq);
        let limits = DecodeLimits::default();
        for end in 0..frame.len() {
            prop_assert_eq!(Frame::check(&frame[..end], &limits), Err(Error::Incomplete));
        }
    }

    // PROTOCOL.md §2.4: a stream of frames decodes in order from a read buffer, with the
    // frames arriving in arbitrary pieces.
    #[test]
    fn stream_decodes_in_order(
        messages in proptest::collection::vec(arb_message(), 1..8),
        piece_bytes in 1usize..700,
    ) {
        let mut wire = BytesMut::new();
        for (seq, message) in messages.iter().enumerate() {
            message.encode(seq as u64, &mut wire);
        }
        let limits = DecodeLimits::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for piece in wire.chunks(piece_bytes) {
            buf.extend_from_slice(piece);
            while let Some((header, message)) = Frame::decode(&mut buf, &limits).expect("valid") {
                prop_assert_eq!(header.seq, decoded.len() as u64);
                decoded.push(message);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, messages);
    }
}

// PROTOCOL.md §4.8: data payloads from `parse_bytes` are slices of the frame, not copies.
#[test]
fn parse_bytes_does_not_copy_data() {
    let message = Message::Data(Data {
        offset_bytes: 4096,
        flags: WriteFlags::FUA,
        data: bytes::Bytes::from(vec![0xab; 4096]),
    });
    let frame = encode(&message, 1).freeze();
    let frame_range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
    let (_, parsed) = Frame::parse_bytes(frame.clone()).unwrap();
    let Message::Data(data) = parsed else {
        panic!("expected Data")
    };
    assert!(frame_range.contains(&(data.data.as_ptr() as usize)));
    assert_eq!(data.data.len(), 4096);
}

// PROTOCOL.md §2.3: a Data frame carrying exactly max_data_bytes fits the limit, one more byte
// does not.
#[test]
fn max_data_bytes_is_exact() {
    let limits = DecodeLimits::default();
    let max = limits.max_data_bytes() as usize;
    assert_eq!(max, 1 << 20);
    let fits = Message::Data(Data {
        offset_bytes: 0,
        flags: WriteFlags::empty(),
        data: bytes::Bytes::from(vec![1; max]),
    });
    let frame = encode(&fits, 0);
    assert_eq!(frame.len(), limits.max_frame_bytes() as usize);
    assert_eq!(Frame::check(&frame, &limits), Ok(frame.len()));

    let too_big = Message::Data(Data {
        offset_bytes: 0,
        flags: WriteFlags::empty(),
        data: bytes::Bytes::from(vec![1; max + 1]),
    });
    let frame = encode(&too_big, 0);
    assert!(matches!(
        Frame::check(&frame[..HEADER_LEN_BYTES], &limits),
        Err(Error::FrameTooLarge { .. })
    ));
}
