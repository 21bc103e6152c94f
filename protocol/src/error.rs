//! The crate's single error type. Every variant's message names its cause.

use crate::MessageType;

/// Everything that can go wrong turning bytes into messages (and a few constructor checks).
///
/// Only [`Error::Incomplete`] is benign (wait for more bytes); every other variant means the
/// peer sent something this build will not accept, and the connection layer should drop the
/// link (PROTOCOL.md §2.4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// More bytes are needed before the frame can be checked or parsed.
    #[error("incomplete frame: more bytes needed")]
    Incomplete,

    /// The first four bytes are not [`crate::MAGIC`].
    #[error("bad frame magic {found:#010x}, expected {expected:#010x}")]
    BadMagic { found: u32, expected: u32 },

    /// The header's version is outside what this build speaks.
    #[error("unsupported protocol version {version} (this build speaks {min}..={max})")]
    UnsupportedVersion { version: u16, min: u16, max: u16 },

    /// The header's message type number is not assigned.
    #[error("unknown message type {0:#06x}")]
    UnknownMessageType(u16),

    /// The header's reserved field is not zero.
    #[error("reserved header field is {0:#06x}, must be 0")]
    ReservedNotZero(u16),

    /// Header flag bits that the message type does not define.
    #[error("header flags {flags:#06x} are not defined for {message_type}")]
    UnknownFlags {
        message_type: MessageType,
        flags: u16,
    },

    /// The announced frame is larger than the decoder's `max_frame_bytes`.
    #[error("frame of {frame_bytes} bytes exceeds max-frame-bytes {max_frame_bytes}")]
    FrameTooLarge {
        frame_bytes: u64,
        max_frame_bytes: u32,
    },

    /// The announced payload length is impossible for the message type.
    #[error(
        "{message_type} payload of {payload_bytes} bytes is outside the allowed \
         {min_bytes}..={max_bytes}"
    )]
    PayloadLength {
        message_type: MessageType,
        payload_bytes: u32,
        min_bytes: u32,
        max_bytes: u32,
    },

    /// `Frame::parse` was given a buffer that is not exactly one frame long.
    #[error("frame buffer holds {buffer_bytes} bytes but the header announces {frame_bytes}")]
    FrameLengthMismatch {
        buffer_bytes: usize,
        frame_bytes: u64,
    },

    /// The crc32c trailer does not match header + payload: corrupted in transit.
    #[error("crc32c mismatch: frame carries {carried:#010x}, computed {computed:#010x}")]
    CrcMismatch { carried: u32, computed: u32 },

    /// The payload ended while reading a field.
    #[error("{message_type} payload is truncated in field {field}")]
    PayloadTooShort {
        message_type: MessageType,
        field: &'static str,
    },

    /// Bytes left over after the last field of a payload.
    #[error("{message_type} payload has {count} trailing bytes")]
    TrailingBytes {
        message_type: MessageType,
        count: usize,
    },

    /// An integer that should name an enum variant (role, disk state, reason, ...) does not.
    #[error("unknown {kind} value {value}")]
    UnknownValue { kind: &'static str, value: u64 },

    /// A string that should name an enum variant does not.
    #[error("unknown {kind} name {name:?}")]
    UnknownName { kind: &'static str, name: String },

    /// A field holds a value of the right type that is not allowed (zero length, overflow, ...).
    #[error("invalid {field}: {reason}")]
    InvalidField {
        field: &'static str,
        reason: &'static str,
    },

    /// A resource or node name breaks the naming rules (PROTOCOL.md §4.1).
    #[error("invalid name: {reason}")]
    InvalidName { reason: &'static str },

    /// A `max_frame_bytes` setting outside the supported bounds.
    #[error("max-frame-bytes {value} is outside {min}..={max}")]
    InvalidMaxFrameBytes { value: u64, min: u32, max: u32 },

    /// The two `Hello` version ranges do not overlap.
    #[error(
        "no common protocol version: ours {local_min}..={local_max}, peer {peer_min}..={peer_max}"
    )]
    NoCommonVersion {
        local_min: u16,
        local_max: u16,
        peer_min: u16,
        peer_max: u16,
    },
}
