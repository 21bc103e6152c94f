//! The block-device trait the NBD server maps commands onto. It knows nothing about NBD's wire
//! format nor about what is behind it (a local disk, a replicated resource).

use std::future::Future;

use crate::errno::Errno;
use crate::reply::Extent;

/// A failed device operation: the NBD error the client gets, and a message for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{errno}: {message}")]
pub struct DeviceError {
    pub errno: Errno,
    pub message: String,
}

impl DeviceError {
    pub fn new(errno: Errno, message: impl Into<String>) -> DeviceError {
        DeviceError {
            errno,
            message: message.into(),
        }
    }
}

/// What a device can do; becomes the export's size, transmission flags and block sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    pub size_bytes: u64,
    pub read_only: bool,
    /// TRIM and WRITE_ZEROES without NO_HOLE may deallocate.
    pub can_trim: bool,
    /// FAST_ZERO can be honoured (zeroing without writing zeros).
    pub can_fast_zero: bool,
    /// Smallest I/O the device serves without read-modify-write (advertised as preferred ≥ it).
    pub block_bytes_min: u32,
}

/// How WRITE_ZEROES may be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZeroFlags {
    /// The client allows the range to be deallocated (no NBD_CMD_FLAG_NO_HOLE).
    pub may_trim: bool,
    /// Fail with ENOTSUP rather than fall back to writing zeros (NBD_CMD_FLAG_FAST_ZERO).
    pub fast_only: bool,
    /// The zeroes must be durable before the reply (NBD_CMD_FLAG_FUA).
    pub fua: bool,
}

/// A block device served over NBD. Implementations must be safe to call from many connections
/// at once: FLUSH is device-wide (this is what lets the server advertise CAN_MULTI_CONN).
pub trait BlockDevice: Send + Sync + 'static {
    /// A buffer the device can do I/O from/into without copying (e.g. aligned for O_DIRECT).
    type Buf: AsRef<[u8]> + AsMut<[u8]> + Send + Sync + 'static;

    fn info(&self) -> DeviceInfo;

    /// A buffer of exactly `len` bytes (len ≤ the advertised maximum block size).
    fn alloc(&self, len: usize) -> Self::Buf;

    /// Fills `buf` from `offset`.
    fn read(
        &self,
        offset: u64,
        buf: Self::Buf,
    ) -> impl Future<Output = Result<Self::Buf, DeviceError>> + Send;

    /// Writes `buf` at `offset`; with `fua` the data is durable when this returns.
    fn write(
        &self,
        offset: u64,
        buf: Self::Buf,
        fua: bool,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Makes every write completed before this call durable.
    fn flush(&self) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Discards a range (reads after it return zeroes in this implementation family).
    fn trim(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;

    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Allocation status (`base:allocation`) of a range, as extents starting at `offset`.
    fn block_status(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Vec<Extent>, DeviceError>> + Send;

    /// A client finished the handshake and wants to use the export. `Err` refuses it with a
    /// message the client sees (e.g. "this node is Secondary"). May take time (auto-promote).
    fn attach_client(&self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }

    /// A client attached with `attach_client` went away.
    fn detach_client(&self) {}
}
