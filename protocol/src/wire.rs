//! A bounds-checked reader over a payload. Every read returns an error instead of panicking
//! when the payload is short; `finish` refuses trailing bytes.

use bytes::{Buf, Bytes};

use crate::{Error, MessageType};

pub(crate) struct Reader {
    buf: Bytes,
    message_type: MessageType,
}

impl Reader {
    pub(crate) fn new(payload: Bytes, message_type: MessageType) -> Self {
        Reader {
            buf: payload,
            message_type,
        }
    }

    fn too_short(&self, field: &'static str) -> Error {
        Error::PayloadTooShort {
            message_type: self.message_type,
            field,
        }
    }

    pub(crate) fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Error> {
        let array = self
            .buf
            .get(..N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or_else(|| self.too_short(field))?;
        self.buf.advance(N);
        Ok(array)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, Error> {
        self.array::<1>(field).map(u8::from_be_bytes)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, Error> {
        self.array(field).map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, Error> {
        self.array(field).map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, Error> {
        self.array(field).map(u64::from_be_bytes)
    }

    /// `len` bytes as a zero-copy slice of the frame.
    pub(crate) fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, Error> {
        if self.buf.len() < len {
            return Err(self.too_short(field));
        }
        Ok(self.buf.split_to(len))
    }

    /// Everything left, as a zero-copy slice of the frame.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn finish(self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                message_type: self.message_type,
                count: self.buf.len(),
            })
        }
    }
}

/// Checks that `offset_bytes + length_bytes` neither is empty nor overflows u64.
pub(crate) fn check_extent(
    offset_bytes: u64,
    length_bytes: u64,
    field: &'static str,
) -> Result<(), Error> {
    if length_bytes == 0 {
        return Err(Error::InvalidField {
            field,
            reason: "length is zero",
        });
    }
    if offset_bytes.checked_add(length_bytes).is_none() {
        return Err(Error::InvalidField {
            field,
            reason: "offset + length overflows u64",
        });
    }
    Ok(())
}
