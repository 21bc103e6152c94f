//! Resync and verify messages (PROTOCOL.md §4.16–4.23, §7).

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{check_extent, Reader};
use crate::wire_enum::wire_enum;
use crate::Error;

/// A block range for resync and verify requests (§4.18). Lengths are u32: one request is at
/// most one frame of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRange {
    /// Byte offset into the data region.
    pub offset_bytes: u64,
    /// Non-zero length; offset + length must not overflow.
    pub length_bytes: u32,
}

impl BlockRange {
    pub(crate) const LEN_BYTES: usize = 12;

    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u64(self.offset_bytes);
        out.put_u32(self.length_bytes);
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let offset_bytes = r.u64("offset_bytes")?;
        let length_bytes = r.u32("length_bytes")?;
        check_extent(offset_bytes, u64::from(length_bytes), "block range")?;
        Ok(BlockRange {
            offset_bytes,
            length_bytes,
        })
    }
}

/// A slice of a dirty bitmap (§4.16, §7.5). Bit `first_bit + i` is
/// `(bits[i / 8] >> (i % 8)) & 1` (least significant bit first).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BitmapChunk {
    /// Index of the first bit in this chunk; a multiple of 8.
    pub first_bit: u64,
    /// Number of bits in this chunk; non-zero.
    pub bit_count: u32,
    /// `ceil(bit_count / 8)` bytes; unused high bits of the last byte are zero.
    pub bits: Bytes,
}

impl BitmapChunk {
    pub(crate) fn encoded_len_bytes(&self) -> usize {
        12 + self.bits.len()
    }

    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u64(self.first_bit);
        out.put_u32(self.bit_count);
        out.put_slice(&self.bits);
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let first_bit = r.u64("first_bit")?;
        let bit_count = r.u32("bit_count")?;
        let bits = r.rest();
        let invalid = |reason| Error::InvalidField {
            field: "BitmapChunk",
            reason,
        };
        if first_bit % 8 != 0 {
            return Err(invalid("first_bit is not a multiple of 8"));
        }
        check_extent(first_bit, u64::from(bit_count), "BitmapChunk bit range")?;
        let expected_len_bytes = u64::from(bit_count).div_ceil(8);
        if bits.len() as u64 != expected_len_bytes {
            return Err(invalid("bits length is not ceil(bit_count / 8)"));
        }
        let spare_bits = bit_count % 8;
        if spare_bits != 0 {
            let last = bits.last().copied().unwrap_or(0);
            if last >> spare_bits != 0 {
                return Err(invalid("bits past bit_count are set"));
            }
        }
        Ok(BitmapChunk {
            first_bit,
            bit_count,
            bits,
        })
    }
}

/// Resync data sent by the SyncSource for a `ResyncRequest` (§4.19).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResyncData {
    /// Byte offset into the data region.
    pub offset_bytes: u64,
    /// The block's bytes; non-empty.
    pub data: Bytes,
}

impl ResyncData {
    pub(crate) fn encoded_len_bytes(&self) -> usize {
        8 + self.data.len()
    }

    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u64(self.offset_bytes);
        out.put_slice(&self.data);
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let offset_bytes = r.u64("offset_bytes")?;
        let data = r.rest();
        check_extent(offset_bytes, data.len() as u64, "ResyncData extent")?;
        Ok(ResyncData { offset_bytes, data })
    }
}

/// The data of a `ReadRequest`, read by the peer for a Primary whose own read failed (§4.30).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadReply {
    /// The seq of the `ReadRequest` frame.
    pub request_id: u64,
    /// The range's bytes; non-empty.
    pub data: Bytes,
}

impl ReadReply {
    pub(crate) fn encoded_len_bytes(&self) -> usize {
        8 + self.data.len()
    }

    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u64(self.request_id);
        out.put_slice(&self.data);
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let request_id = r.u64("request_id")?;
        let data = r.rest();
        Ok(ReadReply { request_id, data })
    }
}

wire_enum! {
    /// Digest algorithms for checksum-based resync and online verify (§4.20).
    pub enum DigestAlgorithm: u8, kind = "digest algorithm" {
        Crc32c = 1 => "crc32c",
        Sha256 = 2 => "sha256",
    }
}

impl DigestAlgorithm {
    /// Length of a digest of this algorithm.
    pub const fn digest_len_bytes(self) -> usize {
        match self {
            DigestAlgorithm::Crc32c => 4,
            DigestAlgorithm::Sha256 => 32,
        }
    }
}

/// A digest with its algorithm. On the wire: algorithm u8, then the digest bytes (§4.20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Digest {
    /// crc32c of the block (big-endian on the wire).
    Crc32c(u32),
    /// SHA-256 of the block.
    Sha256([u8; 32]),
}

impl Digest {
    /// The algorithm that produced this digest.
    pub const fn algorithm(&self) -> DigestAlgorithm {
        match self {
            Digest::Crc32c(_) => DigestAlgorithm::Crc32c,
            Digest::Sha256(_) => DigestAlgorithm::Sha256,
        }
    }

    pub(crate) fn encoded_len_bytes(&self) -> usize {
        1 + self.algorithm().digest_len_bytes()
    }

    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u8(self.algorithm().to_wire());
        match self {
            Digest::Crc32c(crc) => out.put_u32(*crc),
            Digest::Sha256(digest) => out.put_slice(digest),
        }
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        match DigestAlgorithm::try_from(r.u8("digest algorithm")?)? {
            DigestAlgorithm::Crc32c => Ok(Digest::Crc32c(r.u32("crc32c digest")?)),
            DigestAlgorithm::Sha256 => Ok(Digest::Sha256(r.array("sha256 digest")?)),
        }
    }
}

/// SyncTarget → SyncSource: "send this block unless its digest matches mine" (§4.20).
/// Request id = `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CsumRequest {
    /// The block.
    pub range: BlockRange,
    /// Digest of the SyncTarget's copy.
    pub digest: Digest,
}

impl CsumRequest {
    pub(crate) fn encoded_len_bytes(&self) -> usize {
        BlockRange::LEN_BYTES + self.digest.encoded_len_bytes()
    }

    pub(crate) fn put(&self, out: &mut BytesMut) {
        self.range.put(out);
        self.digest.put(out);
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        Ok(CsumRequest {
            range: BlockRange::take(r)?,
            digest: Digest::take(r)?,
        })
    }
}

/// VerifyS → VerifyT: "here is my digest of this block; compare it with yours" (§4.22).
/// Request id = `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyRequest {
    /// The block.
    pub range: BlockRange,
    /// Digest of the VerifyS side's copy (its algorithm is the one to use).
    pub digest: Digest,
}

impl VerifyRequest {
    pub(crate) fn encoded_len_bytes(&self) -> usize {
        BlockRange::LEN_BYTES + self.digest.encoded_len_bytes()
    }

    pub(crate) fn put(&self, out: &mut BytesMut) {
        self.range.put(out);
        self.digest.put(out);
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        Ok(VerifyRequest {
            range: BlockRange::take(r)?,
            digest: Digest::take(r)?,
        })
    }
}

/// VerifyT → VerifyS: whether its copy of the block has the same digest (§4.22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyReply {
    /// The block, as in the request.
    pub range: BlockRange,
    /// The digests matched.
    pub in_sync: bool,
}

impl VerifyReply {
    pub(crate) const LEN_BYTES: usize = BlockRange::LEN_BYTES + 1;

    pub(crate) fn put(&self, out: &mut BytesMut) {
        self.range.put(out);
        out.put_u8(u8::from(self.in_sync));
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let range = BlockRange::take(r)?;
        let in_sync = take_bool(r, "in_sync")?;
        Ok(VerifyReply { range, in_sync })
    }
}

/// The start of an online verify of `[start_bytes, stop_bytes)` (§4.29): the receiver becomes
/// VerifyT and expects `VerifyRequest`s covering exactly that range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyStart {
    /// First byte verified.
    pub start_bytes: u64,
    /// End of the verified range (exclusive); above `start_bytes`.
    pub stop_bytes: u64,
}

impl VerifyStart {
    pub(crate) const LEN_BYTES: usize = 16;

    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u64(self.start_bytes);
        out.put_u64(self.stop_bytes);
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let start_bytes = r.u64("start_bytes")?;
        let stop_bytes = r.u64("stop_bytes")?;
        if start_bytes >= stop_bytes {
            return Err(Error::InvalidField {
                field: "VerifyStart",
                reason: "start_bytes is not below stop_bytes",
            });
        }
        Ok(VerifyStart {
            start_bytes,
            stop_bytes,
        })
    }
}

/// An operator-requested resync on an established connection (§4.27): `invalidate` (the
/// sender discards its data: `sender_is_target`) or `invalidate-remote` / `verify --repair`
/// (the sender is the SyncSource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResyncStart {
    /// Every block is resynced (else only the blocks marked in either bitmap, after a bitmap
    /// exchange, §7.5).
    pub full: bool,
    /// The sender becomes SyncTarget (else SyncSource).
    pub sender_is_target: bool,
}

impl ResyncStart {
    pub(crate) const LEN_BYTES: usize = 2;

    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u8(u8::from(self.full));
        out.put_u8(u8::from(self.sender_is_target));
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        Ok(ResyncStart {
            full: take_bool(r, "full")?,
            sender_is_target: take_bool(r, "sender_is_target")?,
        })
    }
}

/// A boolean byte: 0 or 1, anything else is an error.
pub(crate) fn take_bool(r: &mut Reader, field: &'static str) -> Result<bool, Error> {
    match r.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Error::InvalidField {
            field,
            reason: "a boolean byte is 0 or 1",
        }),
    }
}
