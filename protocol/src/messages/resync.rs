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

/// VerifyS → VerifyT: "send me the digest of this block" (§4.22). Request id = `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyRequest {
    /// The block.
    pub range: BlockRange,
    /// Which digest to compute.
    pub algorithm: DigestAlgorithm,
}

impl VerifyRequest {
    pub(crate) const LEN_BYTES: usize = BlockRange::LEN_BYTES + 1;

    pub(crate) fn put(&self, out: &mut BytesMut) {
        self.range.put(out);
        out.put_u8(self.algorithm.to_wire());
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let range = BlockRange::take(r)?;
        let algorithm = DigestAlgorithm::try_from(r.u8("digest algorithm")?)?;
        Ok(VerifyRequest { range, algorithm })
    }
}

/// VerifyT → VerifyS: the digest of its copy of the block (§4.22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyReply {
    /// The block, as in the request.
    pub range: BlockRange,
    /// Digest of the VerifyT's copy.
    pub digest: Digest,
}

impl VerifyReply {
    pub(crate) fn encoded_len_bytes(&self) -> usize {
        BlockRange::LEN_BYTES + self.digest.encoded_len_bytes()
    }

    pub(crate) fn put(&self, out: &mut BytesMut) {
        self.range.put(out);
        self.digest.put(out);
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        Ok(VerifyReply {
            range: BlockRange::take(r)?,
            digest: Digest::take(r)?,
        })
    }
}
