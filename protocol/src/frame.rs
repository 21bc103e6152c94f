//! Two-phase frame decoding (PROTOCOL.md §2.3, §2.4): `check` then `parse`.

use bytes::{Bytes, BytesMut};

use crate::header::{CRC_LEN_BYTES, FRAME_OVERHEAD_BYTES, HEADER_LEN_BYTES};
use crate::{Error, Header, Message};

/// Default `max-frame-bytes`: 1 MiB of write data plus the frame overhead (header, offset, crc).
pub const MAX_FRAME_BYTES_DEFAULT: u32 = (1 << 20) + FRAME_OVERHEAD_BYTES as u32;
/// Smallest allowed `max-frame-bytes`: every fixed-size message and one 4 KiB block must fit.
pub const MAX_FRAME_BYTES_LOWER_BOUND: u32 = 4096 + FRAME_OVERHEAD_BYTES as u32;
/// Largest allowed `max-frame-bytes` (128 MiB).
pub const MAX_FRAME_BYTES_UPPER_BOUND: u32 = 128 << 20;

/// Limits the decoder enforces before trusting a header (PROTOCOL.md §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodeLimits {
    max_frame_bytes: u32,
}

impl DecodeLimits {
    /// Limits with the given largest accepted frame (header + payload + crc), which must lie in
    /// `MAX_FRAME_BYTES_LOWER_BOUND..=MAX_FRAME_BYTES_UPPER_BOUND`.
    pub fn new(max_frame_bytes: u32) -> Result<Self, Error> {
        if (MAX_FRAME_BYTES_LOWER_BOUND..=MAX_FRAME_BYTES_UPPER_BOUND).contains(&max_frame_bytes) {
            Ok(DecodeLimits { max_frame_bytes })
        } else {
            Err(Error::InvalidMaxFrameBytes {
                value: u64::from(max_frame_bytes),
                min: MAX_FRAME_BYTES_LOWER_BOUND,
                max: MAX_FRAME_BYTES_UPPER_BOUND,
            })
        }
    }

    /// Limits that admit `Data` frames carrying up to `max_data_bytes` of write data.
    pub fn for_max_data_bytes(max_data_bytes: u32) -> Result<Self, Error> {
        let max_frame_bytes = u64::from(max_data_bytes) + FRAME_OVERHEAD_BYTES as u64;
        match u32::try_from(max_frame_bytes) {
            Ok(max_frame_bytes) => Self::new(max_frame_bytes),
            Err(_) => Err(Error::InvalidMaxFrameBytes {
                value: max_frame_bytes,
                min: MAX_FRAME_BYTES_LOWER_BOUND,
                max: MAX_FRAME_BYTES_UPPER_BOUND,
            }),
        }
    }

    /// The largest accepted frame, header and crc included.
    pub const fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// The largest payload (frame minus header and crc).
    pub const fn max_payload_bytes(&self) -> u32 {
        self.max_frame_bytes - (HEADER_LEN_BYTES + CRC_LEN_BYTES) as u32
    }

    /// The most write data one `Data` or `ResyncData` frame may carry under these limits.
    pub const fn max_data_bytes(&self) -> u32 {
        self.max_frame_bytes - FRAME_OVERHEAD_BYTES as u32
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_frame_bytes: MAX_FRAME_BYTES_DEFAULT,
        }
    }
}

/// Namespace for frame decoding. A frame is `header (24) | payload | crc32c (4)` (§2.1).
#[derive(Debug, Clone, Copy)]
pub struct Frame;

impl Frame {
    /// Phase one: is there a complete, acceptable frame at the start of `buf`?
    ///
    /// Returns the frame's length in bytes once it is fully buffered. Returns
    /// [`Error::Incomplete`] while more bytes are needed. As soon as the 24 header bytes are
    /// present the header is validated (magic, version, type, flags, reserved), the payload
    /// length is checked against the type's bounds and the frame length against
    /// `limits.max_frame_bytes()`, so a hostile length is refused before its payload arrives.
    /// The crc is verified by [`Frame::parse`].
    pub fn check(buf: &[u8], limits: &DecodeLimits) -> Result<usize, Error> {
        let Some(head) = buf.first_chunk::<HEADER_LEN_BYTES>() else {
            return Err(Error::Incomplete);
        };
        let header = Header::decode(head)?;
        header
            .message_type
            .check_payload_len(header.payload_len_bytes)?;
        let frame_bytes = header.frame_len_bytes();
        if frame_bytes > u64::from(limits.max_frame_bytes) {
            return Err(Error::FrameTooLarge {
                frame_bytes,
                max_frame_bytes: limits.max_frame_bytes,
            });
        }
        // Fits: bounded by max_frame_bytes, a u32.
        let frame_len = usize::try_from(frame_bytes).map_err(|_| Error::FrameTooLarge {
            frame_bytes,
            max_frame_bytes: limits.max_frame_bytes,
        })?;
        if buf.len() < frame_len {
            return Err(Error::Incomplete);
        }
        Ok(frame_len)
    }

    /// Phase two: decode exactly one frame, copying data payloads out of `frame`.
    /// `frame` must be exactly the length `check` returned. Verifies the crc32c.
    pub fn parse(frame: &[u8]) -> Result<(Header, Message), Error> {
        Self::parse_bytes(Bytes::copy_from_slice(frame))
    }

    /// Phase two without copying: data payloads (`Data`, `ResyncData`, `BitmapChunk`) are
    /// slices of `frame`. Same checks as [`Frame::parse`].
    pub fn parse_bytes(frame: Bytes) -> Result<(Header, Message), Error> {
        let Some(head) = frame.first_chunk::<HEADER_LEN_BYTES>() else {
            return Err(Error::FrameLengthMismatch {
                buffer_bytes: frame.len(),
                frame_bytes: (HEADER_LEN_BYTES + CRC_LEN_BYTES) as u64,
            });
        };
        let header = Header::decode(head)?;
        header
            .message_type
            .check_payload_len(header.payload_len_bytes)?;
        let frame_bytes = header.frame_len_bytes();
        if frame.len() as u64 != frame_bytes {
            return Err(Error::FrameLengthMismatch {
                buffer_bytes: frame.len(),
                frame_bytes,
            });
        }
        // frame.len() == frame_bytes >= HEADER_LEN_BYTES + CRC_LEN_BYTES, so this cannot wrap.
        let body_len = frame.len() - CRC_LEN_BYTES;
        let (Some(body), Some(trailer)) =
            (frame.get(..body_len), frame.last_chunk::<CRC_LEN_BYTES>())
        else {
            return Err(Error::Incomplete);
        };
        let carried = u32::from_be_bytes(*trailer);
        let computed = crc32c::crc32c(body);
        if carried != computed {
            return Err(Error::CrcMismatch { carried, computed });
        }
        let payload = frame.slice(HEADER_LEN_BYTES..body_len);
        let message = Message::decode_payload(&header, payload)?;
        Ok((header, message))
    }

    /// Both phases on a connection's read buffer: if a complete frame is buffered, removes it
    /// from `buf` and returns it (zero-copy); `Ok(None)` means "read more bytes". Any error
    /// means the link must be dropped (PROTOCOL.md §2.4).
    pub fn decode(
        buf: &mut BytesMut,
        limits: &DecodeLimits,
    ) -> Result<Option<(Header, Message)>, Error> {
        match Self::check(buf, limits) {
            Ok(frame_len) => Self::parse_bytes(buf.split_to(frame_len).freeze()).map(Some),
            Err(Error::Incomplete) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
