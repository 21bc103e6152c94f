//! urbd replication wire format (see `docs/PROTOCOL.md`). Pure: bytes in, typed messages out.
//!
//! No sockets, files, clocks or async runtime live here. The connection layer owns the socket
//! and its read buffer and drives the two-phase decoder:
//!
//! 1. [`Frame::check`] looks at the bytes received so far. It validates the fixed header and the
//!    announced length against [`DecodeLimits`] as soon as the header is complete (so a hostile
//!    length is refused before the payload arrives), and returns [`Error::Incomplete`] until the
//!    whole frame is buffered; then it returns the frame length.
//! 2. [`Frame::parse`] (or the zero-copy [`Frame::parse_bytes`]) verifies the crc32c and builds
//!    the typed [`Message`].
//!
//! Encoding is [`Message::encode`], which appends one complete frame to a `BytesMut`.
//!
//! ```
//! // PROTOCOL.md §2.4: encode, then two-phase decode from a read buffer.
//! use bytes::{Bytes, BytesMut};
//! use urbd_protocol::{Data, DecodeLimits, Frame, Message, WriteFlags};
//!
//! let write = Message::Data(Data {
//!     offset_bytes: 4096,
//!     flags: WriteFlags::FUA,
//!     data: Bytes::from_static(&[0xab; 512]),
//! });
//! let mut wire = BytesMut::new();
//! write.encode(42, &mut wire);
//!
//! // The receiving side: a read buffer that fills up over time.
//! let limits = DecodeLimits::default();
//! let mut buf = BytesMut::new();
//! buf.extend_from_slice(&wire[..10]);
//! assert!(Frame::decode(&mut buf, &limits)?.is_none()); // incomplete: read more
//! buf.extend_from_slice(&wire[10..]);
//! let (header, message) = Frame::decode(&mut buf, &limits)?.expect("a whole frame");
//! assert_eq!(header.seq, 42); // the request id the ack will name
//! assert_eq!(message, write);
//! # Ok::<(), urbd_protocol::Error>(())
//! ```

mod error;
mod frame;
mod header;
mod liveness;
mod message_type;
mod messages;
mod name;
mod states;
mod uuid;
mod wire;
mod wire_enum;

pub use error::Error;
pub use frame::{
    DecodeLimits, Frame, MAX_FRAME_BYTES_DEFAULT, MAX_FRAME_BYTES_LOWER_BOUND,
    MAX_FRAME_BYTES_UPPER_BOUND,
};
pub use header::{
    Header, CRC_LEN_BYTES, DATA_PREFIX_LEN_BYTES, FRAME_OVERHEAD_BYTES, HEADER_LEN_BYTES, MAGIC,
    VERSION, VERSION_MAX, VERSION_MIN,
};
pub use liveness::{
    ACK_TIMEOUT_MS_DEFAULT, KO_COUNT_DEFAULT, PING_INTERVAL_MS_DEFAULT, PING_TIMEOUT_MS_DEFAULT,
};
pub use message_type::{MessageType, Socket};
pub use messages::auth::{
    AuthChallenge, AuthResponse, AuthResult, AUTH_CHALLENGE_LEN_BYTES, AUTH_RESPONSE_LEN_BYTES,
};
pub use messages::control::{
    Disconnect, DisconnectReason, StateChange, StateChangeOutcome, StateChangeRefusal,
    StateChangeReply,
};
pub use messages::handshake::{
    negotiate_version, outgoing_connection_wins, ConnectionKind, Hello, Params, State, StateFlags,
    BITMAP_GRANULARITY_BYTES_MAX, BITMAP_GRANULARITY_BYTES_MIN, SECTOR_SIZE_BYTES,
};
pub use messages::resync::{
    BitmapChunk, BlockRange, CsumRequest, Digest, DigestAlgorithm, ReadReply, ResyncData,
    ResyncStart, VerifyReply, VerifyRequest, VerifyStart,
};
pub use messages::write::{BarrierAck, Data, NegAck, RangeWrite, WriteErrorCode, WriteFlags};
pub use messages::Message;
pub use name::{Name, NAME_LEN_BYTES_MAX};
pub use states::{ConnectionState, DiskState, ReplicationProtocol, ReplicationState, Role};
pub use uuid::{
    uuid_eq_ignoring_primary_bit, GenerationUuids, UUID_JUST_CREATED, UUID_PRIMARY_BIT,
    UUID_RESYNC_BUMP,
};
