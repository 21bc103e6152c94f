//! Write-path messages (PROTOCOL.md §4.8–4.14, §5).

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{check_extent, Reader};
use crate::wire_enum::{wire_enum, wire_flags};
use crate::Error;

wire_flags! {
    /// Header flags of `Data`, `Trim` and `WriteZeroes` (§4.8, §5.4).
    pub struct WriteFlags: u16, kind = "write flags" {
        /// Force unit access: the receiver makes this write durable before acking it.
        const FUA = 1 << 0;
        /// The receiver flushes its disk (all earlier completed writes durable) before this write.
        const FLUSH_BEFORE = 1 << 1;
    }
}

/// An application write to replicate (§4.8). Its request id is the frame's `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Data {
    /// Byte offset into the data region.
    pub offset_bytes: u64,
    /// FUA / FLUSH_BEFORE, carried in the header's flags field.
    pub flags: WriteFlags,
    /// The bytes to write; non-empty, bounded by `max_frame_bytes`.
    pub data: Bytes,
}

impl Data {
    pub(crate) fn encoded_len_bytes(&self) -> usize {
        8 + self.data.len()
    }

    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u64(self.offset_bytes);
        out.put_slice(&self.data);
    }

    pub(crate) fn take(r: &mut Reader, flags: WriteFlags) -> Result<Self, Error> {
        let offset_bytes = r.u64("offset_bytes")?;
        let data = r.rest();
        check_extent(offset_bytes, data.len() as u64, "Data extent")?;
        Ok(Data {
            offset_bytes,
            flags,
            data,
        })
    }
}

wire_enum! {
    /// Why a peer could not complete a request (§4.10).
    pub enum WriteErrorCode: u16, kind = "write error code" {
        /// The backing disk returned an I/O error.
        IoError = 1 => "io-error",
        /// The extent lies beyond the receiver's data region.
        OutOfRange = 2 => "out-of-range",
        /// The receiver has no disk attached (Diskless/Failed).
        NoDisk = 3 => "no-disk",
        /// The receiver's disk does not support the operation (e.g. trim).
        Unsupported = 4 => "unsupported",
    }
}

/// Negative acknowledgement of a request (§4.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NegAck {
    /// The `seq` of the failed request's frame.
    pub request_id: u64,
    /// What went wrong.
    pub error: WriteErrorCode,
}

impl NegAck {
    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u64(self.request_id);
        out.put_u16(self.error.to_wire());
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let request_id = r.u64("request_id")?;
        let error = WriteErrorCode::try_from(r.u16("error")?)?;
        Ok(NegAck { request_id, error })
    }
}

/// The Secondary has written and flushed every write of an epoch (§4.12, §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BarrierAck {
    /// The epoch number from the `Barrier`.
    pub epoch: u64,
    /// How many writes (Data/Trim/WriteZeroes) the epoch held, as the Secondary counted them.
    pub write_count: u32,
}

impl BarrierAck {
    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u64(self.epoch);
        out.put_u32(self.write_count);
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        Ok(BarrierAck {
            epoch: r.u64("epoch")?,
            write_count: r.u32("write_count")?,
        })
    }
}

/// A write without payload: `Trim` (discard) or `WriteZeroes` (§4.14). Request id = `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RangeWrite {
    /// Byte offset into the data region.
    pub offset_bytes: u64,
    /// Length of the extent; non-zero, and offset + length must not overflow.
    pub length_bytes: u64,
    /// FUA / FLUSH_BEFORE, carried in the header's flags field.
    pub flags: WriteFlags,
}

impl RangeWrite {
    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u64(self.offset_bytes);
        out.put_u64(self.length_bytes);
    }

    pub(crate) fn take(r: &mut Reader, flags: WriteFlags) -> Result<Self, Error> {
        let offset_bytes = r.u64("offset_bytes")?;
        let length_bytes = r.u64("length_bytes")?;
        check_extent(offset_bytes, length_bytes, "range write extent")?;
        Ok(RangeWrite {
            offset_bytes,
            length_bytes,
            flags,
        })
    }
}
