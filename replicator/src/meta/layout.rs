//! Where the metadata lives on the backing disk (pure arithmetic, no I/O).
//!
//! Internal metadata sits at the **end** of the backing disk so the data region starts at offset
//! 0 and the backing disk of a Secondary holds a plain image (as with DRBD's internal metadata).
//! Everything is 4096-aligned; from offset 0:
//!
//! ```text
//! [data][bitmap][activity log ring][superblock slot A 4 KiB][superblock slot B 4 KiB][tail < 4 KiB]
//! ```
//!
//! The two superblock slots are always the last 8 KiB of the disk rounded down to 4096, whatever
//! the other parameters are, so `open` finds them before it knows the bitmap granularity.

use crate::error::Error;

/// Alignment of every metadata area, and the size of one bitmap page, AL block, superblock slot.
pub const META_BLOCK_BYTES: u64 = 4096;
/// Size of one superblock slot.
pub const SUPERBLOCK_SLOT_BYTES: u64 = META_BLOCK_BYTES;
/// Blocks in the activity-log ring (32 KiB, as DRBD's AL).
pub const AL_RING_SLOTS: u64 = 8;
/// The smallest data region `create-md` accepts.
pub const MIN_DATA_SIZE_BYTES: u64 = 1 << 20;
/// Default bitmap granularity: data bytes per bit (DRBD: 4096).
pub const BYTES_PER_BIT_DEFAULT: u32 = 4096;
/// Smallest bitmap granularity.
pub const BYTES_PER_BIT_MIN: u32 = 512;
/// Largest bitmap granularity (PROTOCOL.md §4.6).
pub const BYTES_PER_BIT_MAX: u32 = 1 << 30;
/// Data bits in one 4 KiB bitmap page.
pub const BITS_PER_PAGE: u64 = META_BLOCK_BYTES * 8;

/// The positions of the metadata areas on one backing disk. All offsets and sizes are multiples
/// of [`META_BLOCK_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The data region `[0, data_size_bytes)`: what the device exports.
    pub data_size_bytes: u64,
    /// Start of the dirty bitmap (= `data_size_bytes`).
    pub bitmap_offset_bytes: u64,
    /// Size of the bitmap area: whole 4 KiB pages.
    pub bitmap_bytes: u64,
    /// Start of the activity-log ring.
    pub al_offset_bytes: u64,
    /// Size of the activity-log ring (`AL_RING_SLOTS` blocks).
    pub al_bytes: u64,
    /// Start of superblock slot A; slot B follows it.
    pub superblock_offset_bytes: u64,
}

/// `value` is a multiple of [`META_BLOCK_BYTES`] (a power of two).
pub const fn is_block_aligned(value: u64) -> bool {
    value & (META_BLOCK_BYTES - 1) == 0
}

/// Bitmap area size for `data_size_bytes` at `bytes_per_bit`: whole 4 KiB pages.
pub fn bitmap_bytes_for(data_size_bytes: u64, bytes_per_bit: u32) -> u64 {
    let bits = data_size_bytes.div_ceil(u64::from(bytes_per_bit));
    bits.div_ceil(BITS_PER_PAGE) * META_BLOCK_BYTES
}

/// Offset of superblock slot A on a disk of `disk_size_bytes` (slot B follows), or `None` when
/// the disk cannot even hold the two slots.
pub fn superblock_offset_for(disk_size_bytes: u64) -> Option<u64> {
    (disk_size_bytes / META_BLOCK_BYTES * META_BLOCK_BYTES).checked_sub(2 * SUPERBLOCK_SLOT_BYTES)
}

/// Checks a bitmap granularity: a power of two in `BYTES_PER_BIT_MIN..=BYTES_PER_BIT_MAX`.
pub fn check_bytes_per_bit(bytes_per_bit: u32) -> Result<(), Error> {
    if !bytes_per_bit.is_power_of_two()
        || !(BYTES_PER_BIT_MIN..=BYTES_PER_BIT_MAX).contains(&bytes_per_bit)
    {
        return Err(Error::MetaInvalidOption(format!(
            "bytes-per-bit {bytes_per_bit} must be a power of two from {BYTES_PER_BIT_MIN} to \
             {BYTES_PER_BIT_MAX} (default {BYTES_PER_BIT_DEFAULT})"
        )));
    }
    Ok(())
}

impl Layout {
    /// Lays out a disk of `disk_size_bytes`: the data region is the largest multiple of 4096
    /// whose bitmap still fits in front of the activity log and the superblock slots.
    ///
    /// Errors: `bytes_per_bit` not a power of two in 512..=2^30, `al_extents` out of
    /// `1..=AL_EXTENTS_MAX`, or a disk that leaves less than [`MIN_DATA_SIZE_BYTES`] of data.
    pub fn compute(
        disk_size_bytes: u64,
        bytes_per_bit: u32,
        al_extents: u32,
    ) -> Result<Layout, Error> {
        check_bytes_per_bit(bytes_per_bit)?;
        super::activity_log::check_al_extents(al_extents)?;
        let al_bytes = AL_RING_SLOTS * META_BLOCK_BYTES;
        let too_small = || Error::MetaDiskTooSmall {
            disk: "the disk".to_string(),
            disk_size_bytes,
            min_disk_size_bytes: Self::min_disk_size_bytes(bytes_per_bit),
            min_data_size_bytes: MIN_DATA_SIZE_BYTES,
        };
        let superblock_offset_bytes =
            superblock_offset_for(disk_size_bytes).ok_or_else(too_small)?;
        let al_offset_bytes = superblock_offset_bytes
            .checked_sub(al_bytes)
            .ok_or_else(too_small)?;
        // Largest data size d (in 4 KiB units) with d + bitmap(d) <= al_offset: the left side
        // grows with d, so binary search is exact.
        let avail_units = al_offset_bytes / META_BLOCK_BYTES;
        let fits = |units: u64| {
            let data = units * META_BLOCK_BYTES;
            data + bitmap_bytes_for(data, bytes_per_bit) <= al_offset_bytes
        };
        let (mut lo, mut hi) = (0u64, avail_units);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let data_size_bytes = lo * META_BLOCK_BYTES;
        if data_size_bytes < MIN_DATA_SIZE_BYTES {
            return Err(too_small());
        }
        let bitmap_bytes = bitmap_bytes_for(data_size_bytes, bytes_per_bit);
        let layout = Layout {
            data_size_bytes,
            bitmap_offset_bytes: data_size_bytes,
            bitmap_bytes,
            al_offset_bytes: data_size_bytes + bitmap_bytes,
            al_bytes,
            superblock_offset_bytes: data_size_bytes + bitmap_bytes + al_bytes,
        };
        layout.assert_valid(disk_size_bytes);
        Ok(layout)
    }

    /// The smallest disk that [`Layout::compute`] accepts at `bytes_per_bit`.
    pub fn min_disk_size_bytes(bytes_per_bit: u32) -> u64 {
        MIN_DATA_SIZE_BYTES
            + bitmap_bytes_for(MIN_DATA_SIZE_BYTES, bytes_per_bit)
            + AL_RING_SLOTS * META_BLOCK_BYTES
            + 2 * SUPERBLOCK_SLOT_BYTES
    }

    /// Number of blocks in the activity-log ring.
    pub fn al_slots(&self) -> u64 {
        self.al_bytes / META_BLOCK_BYTES
    }

    /// Offset of superblock slot `slot` (0 = A, 1 = B).
    pub fn superblock_slot_offset_bytes(&self, slot: usize) -> u64 {
        assert!(slot < 2, "superblock slot {slot} out of range");
        self.superblock_offset_bytes + slot as u64 * SUPERBLOCK_SLOT_BYTES
    }

    /// Total metadata size (bitmap + AL + both superblock slots).
    pub fn meta_bytes(&self) -> u64 {
        self.bitmap_bytes + self.al_bytes + 2 * SUPERBLOCK_SLOT_BYTES
    }

    fn assert_valid(&self, disk_size_bytes: u64) {
        let aligned = [
            self.data_size_bytes,
            self.bitmap_offset_bytes,
            self.bitmap_bytes,
            self.al_offset_bytes,
            self.al_bytes,
            self.superblock_offset_bytes,
        ];
        assert!(
            aligned.iter().all(|&v| is_block_aligned(v)),
            "layout not aligned: {self:?}"
        );
        assert!(
            self.al_slots() >= 2,
            "activity log needs at least 2 blocks: {self:?}"
        );
        assert!(
            self.superblock_offset_bytes + 2 * SUPERBLOCK_SLOT_BYTES <= disk_size_bytes
                && disk_size_bytes - (self.superblock_offset_bytes + 2 * SUPERBLOCK_SLOT_BYTES)
                    < META_BLOCK_BYTES,
            "superblock not at the end of a {disk_size_bytes}-byte disk: {self:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::activity_log::AL_EXTENTS_DEFAULT;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn one_gib_disk() {
        let l = Layout::compute(GIB, 4096, AL_EXTENTS_DEFAULT).unwrap();
        // 262144 data blocks need 32 KiB of bitmap (DRBD: 32 KiB per GiB).
        assert_eq!(l.superblock_offset_bytes, GIB - 8192);
        assert_eq!(l.al_bytes, 32768);
        assert_eq!(l.al_offset_bytes, GIB - 8192 - 32768);
        assert_eq!(l.bitmap_bytes, 32768);
        assert_eq!(l.data_size_bytes, GIB - 8192 - 32768 - 32768);
        assert_eq!(l.bitmap_offset_bytes, l.data_size_bytes);
        assert_eq!(l.meta_bytes(), 73728);
    }

    #[test]
    fn too_small_names_the_minimum() {
        let min = Layout::min_disk_size_bytes(4096);
        assert!(Layout::compute(min, 4096, 64).is_ok());
        let err = Layout::compute(min - 4096, 4096, 64).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("at least {min} bytes")), "{msg}");
        assert!(msg.contains(&format!("{} bytes", min - 4096)), "{msg}");
        assert!(Layout::compute(0, 4096, 64).is_err());
        assert!(Layout::compute(8191, 4096, 64).is_err());
    }

    #[test]
    fn bad_options() {
        assert!(Layout::compute(GIB, 3000, 64).is_err());
        assert!(Layout::compute(GIB, 256, 64).is_err());
        assert!(Layout::compute(GIB, 1 << 31, 64).is_err());
        assert!(Layout::compute(GIB, 4096, 0).is_err());
        assert!(Layout::compute(GIB, 4096, 100_000).is_err());
    }

    proptest! {
        // The data region is maximal: one more 4 KiB block would not leave room for its bitmap.
        #[test]
        fn layout_is_tight(disk in 0u64..(1 << 44), shift in 9u32..=20) {
            let bpb = 1u32 << shift;
            match Layout::compute(disk, bpb, 64) {
                Ok(l) => {
                    prop_assert!(l.data_size_bytes >= MIN_DATA_SIZE_BYTES);
                    prop_assert_eq!(l.bitmap_bytes, bitmap_bytes_for(l.data_size_bytes, bpb));
                    let bigger = l.data_size_bytes + META_BLOCK_BYTES;
                    prop_assert!(bigger + bitmap_bytes_for(bigger, bpb) > l.al_offset_bytes);
                    prop_assert_eq!(Some(l.superblock_offset_bytes), superblock_offset_for(disk));
                }
                Err(_) => prop_assert!(disk < Layout::min_disk_size_bytes(bpb)),
            }
        }
    }
}
