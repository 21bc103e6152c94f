//! The fixed 24-byte frame header (PROTOCOL.md §2.1).

use bytes::BufMut;

use crate::{Error, MessageType};

/// Frame magic, ASCII "URBD".
pub const MAGIC: u32 = 0x5552_4244;
/// The frame/protocol version this build sends.
pub const VERSION: u16 = 1;
/// Oldest version this build accepts.
pub const VERSION_MIN: u16 = 1;
/// Newest version this build accepts.
pub const VERSION_MAX: u16 = 1;

/// Length of the fixed header.
pub const HEADER_LEN_BYTES: usize = 24;
/// Length of the crc32c trailer.
pub const CRC_LEN_BYTES: usize = 4;
/// Bytes in front of the data in a `Data` or `ResyncData` payload (the offset).
pub const DATA_PREFIX_LEN_BYTES: usize = 8;
/// Header + data prefix + crc: a frame carrying `n` data bytes is `n + FRAME_OVERHEAD_BYTES`.
pub const FRAME_OVERHEAD_BYTES: usize = HEADER_LEN_BYTES + DATA_PREFIX_LEN_BYTES + CRC_LEN_BYTES;

/// Byte offsets of the header fields (PROTOCOL.md §2.1).
pub(crate) mod offset {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const MESSAGE_TYPE: usize = 6;
    pub const FLAGS: usize = 8;
    pub const RESERVED: usize = 10;
    pub const PAYLOAD_LEN: usize = 12;
    pub const SEQ: usize = 16;
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version of this frame, within `VERSION_MIN..=VERSION_MAX`.
    pub version: u16,
    /// What the payload holds.
    pub message_type: MessageType,
    /// Message-specific flags; only bits the type defines may be set (§2.1, §4).
    pub flags: u16,
    /// Payload length, excluding header and crc.
    pub payload_len_bytes: u32,
    /// Per-socket sequence number; it is the request id of requests (§2.5).
    pub seq: u64,
}

impl Header {
    /// Total frame length: header + payload + crc.
    pub fn frame_len_bytes(&self) -> u64 {
        (HEADER_LEN_BYTES + CRC_LEN_BYTES) as u64 + u64::from(self.payload_len_bytes)
    }

    /// Decodes and validates a header: magic, version, type, flags, reserved.
    /// Length bounds are checked by the caller (they depend on the decoder's limits).
    pub fn decode(bytes: &[u8; HEADER_LEN_BYTES]) -> Result<Self, Error> {
        let magic = be_u32(bytes, offset::MAGIC);
        if magic != MAGIC {
            return Err(Error::BadMagic {
                found: magic,
                expected: MAGIC,
            });
        }
        let version = be_u16(bytes, offset::VERSION);
        if !(VERSION_MIN..=VERSION_MAX).contains(&version) {
            return Err(Error::UnsupportedVersion {
                version,
                min: VERSION_MIN,
                max: VERSION_MAX,
            });
        }
        let type_value = be_u16(bytes, offset::MESSAGE_TYPE);
        let message_type =
            MessageType::try_from(type_value).map_err(|_| Error::UnknownMessageType(type_value))?;
        let flags = be_u16(bytes, offset::FLAGS);
        if flags & !message_type.defined_flags() != 0 {
            return Err(Error::UnknownFlags {
                message_type,
                flags,
            });
        }
        let reserved = be_u16(bytes, offset::RESERVED);
        if reserved != 0 {
            return Err(Error::ReservedNotZero(reserved));
        }
        Ok(Header {
            version,
            message_type,
            flags,
            payload_len_bytes: be_u32(bytes, offset::PAYLOAD_LEN),
            seq: be_u64(bytes, offset::SEQ),
        })
    }

    /// Appends the 24 header bytes.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u32(MAGIC);
        out.put_u16(self.version);
        out.put_u16(self.message_type.to_wire());
        out.put_u16(self.flags);
        out.put_u16(0);
        out.put_u32(self.payload_len_bytes);
        out.put_u64(self.seq);
    }
}

// Fixed-offset reads from the fixed-size header array. The offsets are constants within
// HEADER_LEN_BYTES, so the fallback branch is unreachable; it exists so nothing can panic.
fn be_array<const N: usize>(bytes: &[u8; HEADER_LEN_BYTES], at: usize) -> [u8; N] {
    bytes
        .get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

fn be_u16(bytes: &[u8; HEADER_LEN_BYTES], at: usize) -> u16 {
    u16::from_be_bytes(be_array(bytes, at))
}

fn be_u32(bytes: &[u8; HEADER_LEN_BYTES], at: usize) -> u32 {
    u32::from_be_bytes(be_array(bytes, at))
}

fn be_u64(bytes: &[u8; HEADER_LEN_BYTES], at: usize) -> u64 {
    u64::from_be_bytes(be_array(bytes, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping_header() -> [u8; HEADER_LEN_BYTES] {
        let mut out = Vec::new();
        Header {
            version: VERSION,
            message_type: MessageType::Ping,
            flags: 0,
            payload_len_bytes: 0,
            seq: 7,
        }
        .encode(&mut out);
        out.try_into().expect("24 bytes")
    }

    // PROTOCOL.md §2.1: the layout byte by byte.
    #[test]
    fn header_layout_matches_spec() {
        let bytes = ping_header();
        assert_eq!(
            bytes,
            [
                0x55, 0x52, 0x42, 0x44, // magic "URBD"
                0x00, 0x01, // version 1
                0x00, 0x20, // type Ping
                0x00, 0x00, // flags
                0x00, 0x00, // reserved
                0x00, 0x00, 0x00, 0x00, // payload length
                0, 0, 0, 0, 0, 0, 0, 7, // seq
            ]
        );
    }

    // PROTOCOL.md §2.1: each header field is validated.
    #[test]
    fn header_fields_are_validated() {
        let mut bad_magic = ping_header();
        bad_magic[0] = 0;
        assert!(matches!(
            Header::decode(&bad_magic),
            Err(Error::BadMagic { .. })
        ));

        let mut bad_version = ping_header();
        bad_version[5] = 2;
        assert!(matches!(
            Header::decode(&bad_version),
            Err(Error::UnsupportedVersion { version: 2, .. })
        ));

        let mut bad_type = ping_header();
        bad_type[6] = 0xee;
        assert_eq!(
            Header::decode(&bad_type),
            Err(Error::UnknownMessageType(0xee20))
        );

        let mut bad_flags = ping_header();
        bad_flags[9] = 1;
        assert!(matches!(
            Header::decode(&bad_flags),
            Err(Error::UnknownFlags { flags: 1, .. })
        ));

        let mut bad_reserved = ping_header();
        bad_reserved[11] = 1;
        assert_eq!(
            Header::decode(&bad_reserved),
            Err(Error::ReservedNotZero(1))
        );
    }
}
