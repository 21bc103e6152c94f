//! The dirty bitmap: one bit per `bytes_per_bit` bytes of data; a set bit means "this block may
//! differ from the peer's copy". In memory a `Vec<u64>`; on disk whole 4 KiB pages of plain bits
//! (bit k of the bitmap is bit k % 64 of little-endian u64 word k / 64), no per-page checksum.
//!
//! Why no checksum: the bitmap is only trusted together with the superblock flags. Bitmap pages
//! are written lazily; what protects data written after the last page write is the activity log
//! (after a Primary crash every AL extent is resynced) and FULL_SYNC (an interrupted full sync
//! starts over). A torn page write leaves each 512-byte sector either old or new, and each
//! sector on its own is a meaningful bitmap: the old bits of a region whose writes the AL still
//! covers, or the new bits. A checksum would turn such a page into "unknown", i.e. a full sync,
//! which is strictly worse. The rule that makes this safe belongs to the caller: before an
//! extent leaves the activity log, the bitmap pages covering it must be persisted.

use super::layout::{BITS_PER_PAGE, META_BLOCK_BYTES};

/// Bytes of one on-disk bitmap page.
pub const BITMAP_PAGE_BYTES: usize = META_BLOCK_BYTES as usize;
const WORDS_PER_PAGE: usize = BITMAP_PAGE_BYTES / 8;

/// The in-memory dirty bitmap with a running count of set bits and a record of which on-disk
/// pages changed since the last [`Bitmap::take_dirty_pages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    data_size_bytes: u64,
    bytes_per_bit: u64,
    bits: u64,
    words: Vec<u64>,
    set_count: u64,
    /// One flag per on-disk page: changed since the last `take_dirty_pages`.
    dirty_pages: Vec<bool>,
    dirty_page_count: usize,
}

impl Bitmap {
    /// An all-clear bitmap for `data_size_bytes` of data at `bytes_per_bit` (a power of two).
    pub fn new(data_size_bytes: u64, bytes_per_bit: u32) -> Bitmap {
        assert!(
            bytes_per_bit.is_power_of_two(),
            "bytes_per_bit {bytes_per_bit} is not a power of two"
        );
        let bits = data_size_bytes.div_ceil(u64::from(bytes_per_bit));
        let words = usize::try_from(bits.div_ceil(64)).expect("bitmap too large for memory");
        let pages = usize::try_from(bits.div_ceil(BITS_PER_PAGE)).expect("bitmap too large");
        Bitmap {
            data_size_bytes,
            bytes_per_bit: u64::from(bytes_per_bit),
            bits,
            words: vec![0; words],
            set_count: 0,
            dirty_pages: vec![false; pages],
            dirty_page_count: 0,
        }
    }

    /// Size of the data region the bitmap covers.
    pub fn data_size_bytes(&self) -> u64 {
        self.data_size_bytes
    }
    /// Data bytes per bit.
    pub fn bytes_per_bit(&self) -> u32 {
        self.bytes_per_bit as u32
    }
    /// Number of bits.
    pub fn bit_count(&self) -> u64 {
        self.bits
    }
    /// Number of 4 KiB on-disk pages.
    pub fn page_count(&self) -> usize {
        self.dirty_pages.len()
    }

    /// Number of set bits (O(1)).
    pub fn count_set(&self) -> u64 {
        self.set_count
    }

    /// Bytes out of sync: set bits × bytes_per_bit, capped at the data size (the last bit may
    /// cover less than `bytes_per_bit`).
    pub fn dirty_bytes(&self) -> u64 {
        (self.set_count * self.bytes_per_bit).min(self.data_size_bytes)
    }

    /// Bit `bit` is set. Panics past the end.
    pub fn is_set(&self, bit: u64) -> bool {
        assert!(
            bit < self.bits,
            "bit {bit} out of range ({} bits)",
            self.bits
        );
        self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    /// The bit covering data byte `offset_bytes`.
    pub fn bit_of(&self, offset_bytes: u64) -> u64 {
        offset_bytes / self.bytes_per_bit
    }

    fn check_range(&self, offset_bytes: u64, len_bytes: u64) {
        let end = offset_bytes.checked_add(len_bytes);
        assert!(
            end.is_some_and(|e| e <= self.data_size_bytes),
            "range {offset_bytes}+{len_bytes} is outside the {}-byte data region",
            self.data_size_bytes
        );
    }

    /// True if any bit touching `[offset_bytes, offset_bytes + len_bytes)` is set. Panics if the
    /// range leaves the data region.
    pub fn any_set(&self, offset_bytes: u64, len_bytes: u64) -> bool {
        self.check_range(offset_bytes, len_bytes);
        if len_bytes == 0 {
            return false;
        }
        let first = offset_bytes / self.bytes_per_bit;
        let end = (offset_bytes + len_bytes - 1) / self.bytes_per_bit + 1;
        (first..end).any(|b| self.is_set(b))
    }

    /// Sets every bit touching `[offset_bytes, offset_bytes + len_bytes)`. Panics if the range
    /// leaves the data region.
    pub fn set_range(&mut self, offset_bytes: u64, len_bytes: u64) {
        self.check_range(offset_bytes, len_bytes);
        if len_bytes == 0 {
            return;
        }
        let first = offset_bytes / self.bytes_per_bit;
        let end = (offset_bytes + len_bytes - 1) / self.bytes_per_bit + 1;
        self.apply_bits(first, end, true);
    }

    /// Clears only the bits whose whole block lies inside the range: a partially covered block
    /// may still differ from the peer in the part the range does not cover (e.g. a resync or a
    /// peer write of 512 bytes inside a 4 KiB bit says nothing about the other 3.5 KiB). The
    /// last bit, which may extend past the data end, counts as covered when the range reaches
    /// the data end.
    pub fn clear_range(&mut self, offset_bytes: u64, len_bytes: u64) {
        self.check_range(offset_bytes, len_bytes);
        if len_bytes == 0 {
            return;
        }
        let first = offset_bytes.div_ceil(self.bytes_per_bit);
        let range_end = offset_bytes + len_bytes;
        let end = if range_end == self.data_size_bytes {
            self.bits
        } else {
            range_end / self.bytes_per_bit
        };
        if first < end {
            self.apply_bits(first, end, false);
        }
    }

    /// Sets every bit.
    pub fn set_all(&mut self) {
        self.apply_bits(0, self.bits, true);
    }

    /// Clears every bit.
    pub fn clear_all(&mut self) {
        self.apply_bits(0, self.bits, false);
    }

    /// Sets bits `[first, end)` to `value`, keeping the count and the dirty pages.
    fn apply_bits(&mut self, first: u64, end: u64, value: bool) {
        assert!(
            first <= end && end <= self.bits,
            "bits {first}..{end} out of range"
        );
        let mut bit = first;
        while bit < end {
            let w = (bit / 64) as usize;
            let lo = bit % 64;
            let hi = (end - (bit - lo)).min(64); // exclusive, within this word
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            let old = self.words[w];
            let new = if value { old | mask } else { old & !mask };
            if new != old {
                self.words[w] = new;
                let (before, after) = (u64::from(old.count_ones()), u64::from(new.count_ones()));
                self.set_count = self.set_count + after - before;
                self.mark_page_dirty(w / WORDS_PER_PAGE);
            }
            bit = bit - lo + hi;
        }
    }

    /// Marks on-disk page `page` changed (e.g. again, after a failed write).
    pub fn mark_page_dirty(&mut self, page: usize) {
        if !self.dirty_pages[page] {
            self.dirty_pages[page] = true;
            self.dirty_page_count += 1;
        }
    }

    /// ORs `other` into `self` (both sides' bitmaps before a resync). Panics on different
    /// geometry.
    pub fn or_with(&mut self, other: &Bitmap) {
        assert!(
            self.data_size_bytes == other.data_size_bytes
                && self.bytes_per_bit == other.bytes_per_bit,
            "OR of bitmaps with different geometry"
        );
        for w in 0..self.words.len() {
            let old = self.words[w];
            let new = old | other.words[w];
            if new != old {
                self.words[w] = new;
                self.set_count += u64::from(new.count_ones() - old.count_ones());
                self.mark_page_dirty(w / WORDS_PER_PAGE);
            }
        }
    }

    /// The runs of set bits from the bit containing `start_offset_bytes` on, as byte ranges
    /// `(offset_bytes, len_bytes)` in increasing order; the last run is capped at the data end.
    pub fn iter_set_ranges(&self, start_offset_bytes: u64) -> SetRanges<'_> {
        SetRanges {
            bitmap: self,
            next_bit: start_offset_bytes / self.bytes_per_bit,
        }
    }

    /// The first set bit at or after `bit`.
    pub fn next_set_bit(&self, bit: u64) -> Option<u64> {
        self.next_bit_with(bit, true)
    }

    fn next_bit_with(&self, bit: u64, value: bool) -> Option<u64> {
        if bit >= self.bits {
            return None;
        }
        let mut w = (bit / 64) as usize;
        let word = |w: usize| if value { self.words[w] } else { !self.words[w] };
        let mut cur = word(w) & (u64::MAX << (bit % 64));
        loop {
            if cur != 0 {
                let found = w as u64 * 64 + u64::from(cur.trailing_zeros());
                return (found < self.bits).then_some(found);
            }
            w += 1;
            if w >= self.words.len() {
                return None;
            }
            cur = word(w);
        }
    }

    /// The on-disk pages changed since the last call, in increasing order; resets the record.
    pub fn take_dirty_pages(&mut self) -> Vec<usize> {
        let mut pages = Vec::with_capacity(self.dirty_page_count);
        for (i, d) in self.dirty_pages.iter_mut().enumerate() {
            if *d {
                pages.push(i);
                *d = false;
            }
        }
        self.dirty_page_count = 0;
        pages
    }

    /// Number of pages changed since the last [`Bitmap::take_dirty_pages`].
    pub fn dirty_page_count(&self) -> usize {
        self.dirty_page_count
    }

    /// Marks every page changed (to rewrite the whole bitmap).
    pub fn mark_all_pages_dirty(&mut self) {
        self.dirty_pages.iter_mut().for_each(|d| *d = true);
        self.dirty_page_count = self.dirty_pages.len();
    }

    /// Page `page` in its on-disk form. Panics past the last page.
    pub fn encode_page(&self, page: usize) -> [u8; BITMAP_PAGE_BYTES] {
        assert!(page < self.page_count(), "bitmap page {page} out of range");
        let mut out = [0u8; BITMAP_PAGE_BYTES];
        let first = page * WORDS_PER_PAGE;
        let last = (first + WORDS_PER_PAGE).min(self.words.len());
        for (i, w) in self.words[first..last].iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Loads page `page` from its on-disk form (`buf` is 4096 bytes). Bits past the end of the
    /// bitmap are ignored. Does not mark the page changed. Panics on a wrong page or length.
    pub fn load_page(&mut self, page: usize, buf: &[u8]) {
        assert!(page < self.page_count(), "bitmap page {page} out of range");
        assert_eq!(buf.len(), BITMAP_PAGE_BYTES, "bitmap page buffer length");
        let first = page * WORDS_PER_PAGE;
        let last = (first + WORDS_PER_PAGE).min(self.words.len());
        for w in first..last {
            let i = (w - first) * 8;
            let mut a = [0u8; 8];
            a.copy_from_slice(&buf[i..i + 8]);
            let mut new = u64::from_le_bytes(a);
            let word_first_bit = w as u64 * 64;
            if word_first_bit + 64 > self.bits {
                let valid = self.bits - word_first_bit;
                new &= (1u64 << valid) - 1;
            }
            let old = self.words[w];
            self.words[w] = new;
            self.set_count =
                self.set_count + u64::from(new.count_ones()) - u64::from(old.count_ones());
        }
    }
}

/// Iterator over runs of set bits as byte ranges; see [`Bitmap::iter_set_ranges`].
pub struct SetRanges<'a> {
    bitmap: &'a Bitmap,
    next_bit: u64,
}

impl Iterator for SetRanges<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let b = self.bitmap;
        let start = b.next_bit_with(self.next_bit, true)?;
        let end = b.next_bit_with(start, false).unwrap_or(b.bits);
        self.next_bit = end;
        let offset = start * b.bytes_per_bit;
        let end_bytes = (end * b.bytes_per_bit).min(b.data_size_bytes);
        Some((offset, end_bytes - offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basic_ops() {
        let mut bm = Bitmap::new(1 << 20, 4096); // 256 bits, one page
        assert_eq!(bm.bit_count(), 256);
        assert_eq!(bm.page_count(), 1);
        bm.set_range(100, 1); // bit 0
        bm.set_range(8191, 2); // bits 1, 2
        assert_eq!(bm.count_set(), 3);
        assert!(bm.is_set(0) && bm.is_set(1) && bm.is_set(2) && !bm.is_set(3));
        assert_eq!(
            bm.iter_set_ranges(0).collect::<Vec<_>>(),
            vec![(0, 3 * 4096)]
        );
        bm.clear_range(512, 8192); // covers bit 1 fully only
        assert!(bm.is_set(0) && !bm.is_set(1) && bm.is_set(2));
        assert_eq!(bm.dirty_bytes(), 8192);
        assert_eq!(bm.take_dirty_pages(), vec![0]);
        assert!(bm.take_dirty_pages().is_empty());
        bm.set_range(0, 1); // no change, no dirty page
        assert!(bm.take_dirty_pages().is_empty());
        bm.set_all();
        assert_eq!(bm.count_set(), 256);
        assert_eq!(bm.dirty_bytes(), 1 << 20);
        bm.clear_all();
        assert_eq!(bm.count_set(), 0);
    }

    #[test]
    fn partial_last_bit() {
        // 3 × 4096 bytes at 8192 per bit: 2 bits, the last one half outside.
        let mut bm = Bitmap::new(3 * 4096, 8192);
        assert_eq!(bm.bit_count(), 2);
        bm.set_all();
        assert_eq!(bm.dirty_bytes(), 3 * 4096);
        assert_eq!(
            bm.iter_set_ranges(0).collect::<Vec<_>>(),
            vec![(0, 3 * 4096)]
        );
        bm.clear_range(8192, 4096); // reaches the data end: bit 1 fully covered
        assert_eq!(bm.count_set(), 1);
    }

    #[test]
    fn pages_round_trip_and_dirty_tracking() {
        let data = 3 * 32768 * 4096 + 5 * 4096; // 3 full pages + 5 bits
        let mut bm = Bitmap::new(data, 4096);
        assert_eq!(bm.page_count(), 4);
        bm.set_range(32768 * 4096 + 4096 * 7, 4096);
        bm.set_range(data - 4096, 4096);
        assert_eq!(bm.take_dirty_pages(), vec![1, 3]);
        let mut copy = Bitmap::new(data, 4096);
        for p in 0..4 {
            copy.load_page(p, &bm.encode_page(p));
        }
        assert_eq!(copy.count_set(), 2);
        assert_eq!(copy.words, bm.words);
        assert!(copy.take_dirty_pages().is_empty());
        // Garbage past the end of the bitmap is ignored on load.
        let mut junk = [0xffu8; 4096];
        copy.load_page(3, &junk);
        assert_eq!(copy.count_set(), 1 + 5);
        junk.fill(0);
        copy.load_page(3, &junk);
        assert_eq!(copy.count_set(), 1);
    }

    #[test]
    fn or_with() {
        let mut a = Bitmap::new(1 << 20, 4096);
        let mut b = Bitmap::new(1 << 20, 4096);
        a.set_range(0, 4096);
        b.set_range(0, 8192);
        a.take_dirty_pages();
        a.or_with(&b);
        assert_eq!(a.count_set(), 2);
        assert_eq!(a.take_dirty_pages(), vec![0]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u64, u64),
        Clear(u64, u64),
        SetAll,
        ClearAll,
    }

    fn model_set(m: &mut [bool], bpb: u64, size: u64, off: u64, len: u64, set: bool) {
        for (i, bit) in m.iter_mut().enumerate() {
            let (s, e) = (i as u64 * bpb, ((i as u64 + 1) * bpb).min(size));
            let touches = len > 0 && s < off + len && off < e;
            let covered = len > 0 && off <= s && e <= off + len;
            if set && touches {
                *bit = true;
            }
            if !set && covered {
                *bit = false;
            }
        }
    }

    fn arb_case() -> impl Strategy<Value = (u64, u32, Vec<Op>)> {
        (1u64..300, 9u32..=13).prop_flat_map(|(units, shift)| {
            let size = units * 512;
            let range = (0..=size).prop_flat_map(move |o| (Just(o), 0..=size - o));
            let op = prop_oneof![
                4 => range.clone().prop_map(|(o, l)| Op::Set(o, l)),
                4 => range.prop_map(|(o, l)| Op::Clear(o, l)),
                1 => Just(Op::SetAll),
                1 => Just(Op::ClearAll),
            ];
            (
                Just(size),
                Just(1u32 << shift),
                proptest::collection::vec(op, 0..40),
            )
        })
    }

    proptest! {
        // The bitmap behaves like a Vec<bool> model; count, ranges and pages agree with it.
        #[test]
        fn matches_model((size, bpb, ops) in arb_case()) {
            let mut bm = Bitmap::new(size, bpb);
            let mut model = vec![false; bm.bit_count() as usize];
            for op in ops {
                match op {
                    Op::Set(o, l) => { bm.set_range(o, l); model_set(&mut model, bpb.into(), size, o, l, true) }
                    Op::Clear(o, l) => { bm.clear_range(o, l); model_set(&mut model, bpb.into(), size, o, l, false) }
                    Op::SetAll => { bm.set_all(); model.fill(true) }
                    Op::ClearAll => { bm.clear_all(); model.fill(false) }
                }
                for (i, &m) in model.iter().enumerate() {
                    prop_assert_eq!(bm.is_set(i as u64), m);
                }
                prop_assert_eq!(bm.count_set(), model.iter().filter(|&&b| b).count() as u64);
                prop_assert_eq!(bm.words.iter().map(|w| u64::from(w.count_ones())).sum::<u64>(), bm.count_set());
            }
            // Runs rebuild the model exactly.
            let mut rebuilt = vec![false; model.len()];
            let mut last_end = 0;
            for (o, l) in bm.iter_set_ranges(0) {
                prop_assert!(l > 0 && o >= last_end && o + l <= size);
                if last_end > 0 { prop_assert!(o > last_end, "runs must be maximal"); }
                last_end = o + l;
                for i in o / u64::from(bpb)..(o + l).div_ceil(u64::from(bpb)) {
                    rebuilt[i as usize] = true;
                }
            }
            prop_assert_eq!(&rebuilt, &model);
            let mut copy = Bitmap::new(size, bpb);
            for p in 0..bm.page_count() { copy.load_page(p, &bm.encode_page(p)); }
            prop_assert_eq!(copy.count_set(), bm.count_set());
        }

        #[test]
        fn iter_from_start(units in 1u64..200, bits in proptest::collection::vec(any::<bool>(), 200), start in 0u64..200) {
            let mut bm = Bitmap::new(units * 4096, 4096);
            for i in 0..units { if bits[i as usize] { bm.set_range(i * 4096, 1); } }
            let start = start.min(units - 1);
            let got: Vec<u64> = bm.iter_set_ranges(start * 4096)
                .flat_map(|(o, l)| (o / 4096)..((o + l) / 4096)).collect();
            let want: Vec<u64> = (start..units).filter(|&i| bits[i as usize]).collect();
            prop_assert_eq!(got, want);
        }
    }
}
