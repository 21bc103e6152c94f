//! The activity log (AL): the set of "hot" extents (4 MiB each by default) that writes may be
//! landing in. A write into an extent that is not hot first costs one synchronous metadata
//! transaction recording the new hot set; after a Primary crash only the hot extents need a
//! resync (they are marked out of sync in the bitmap), not the whole disk.
//!
//! **Transactions.** Each transaction is the full list of hot extents after the change, in one
//! 4 KiB block (one block per transaction, so a transaction is atomic by its crc: a torn block
//! is ignored and the previous transaction, in another ring slot, still holds). The AL area is a
//! ring of `al_bytes / 4096` (≥ 2) blocks; transaction `seq` goes to slot `seq % slots`, so the
//! previous transaction is never overwritten by the next. Recovery takes the valid block with
//! the highest seq. A torn newest transaction means its write was never submitted (the
//! transaction must be durable before the write is), so the previous hot set is correct.
//!
//! **Capacity.** Extent numbers are u32 (4 MiB extents address 16 PiB); one block holds at most
//! [`AL_EXTENTS_MAX`] = 1017 of them. DRBD's default of 1237 does not fit one block, so the
//! default here is [`AL_EXTENTS_DEFAULT`] = 1000 (4000 MiB hot).
//!
//! Block format (big-endian): magic `b"urbd-al\0"` (8), seq (8), capacity al_extents (4),
//! count (4), count × extent (u32), zero padding, crc32c of bytes 0..4092 at 4092.
//!
//! **Caller's rules** (the replication core's):
//! 1. An [`AlUpdate`] must be persisted ([`super::MetaStore::write_al`]) before the write that
//!    caused it is submitted, locally or to the peer.
//! 2. Before an update that evicts an extent is persisted, writes in flight to that extent must
//!    have completed, and the bitmap pages covering it must be persisted (bitmap bits are written
//!    lazily; the AL is what covers them until then).

use std::collections::HashMap;

use super::layout::META_BLOCK_BYTES;
use super::superblock::Superblock;
use crate::error::Error;

/// Size of one AL transaction block.
pub const AL_BLOCK_BYTES: usize = META_BLOCK_BYTES as usize;
/// First 8 bytes of every AL transaction block.
pub const AL_MAGIC: [u8; 8] = *b"urbd-al\0";
/// Default size of one extent (as DRBD).
pub const AL_EXTENT_BYTES_DEFAULT: u32 = 4 << 20;
/// Most extents one transaction block holds: (4096 − 24 header − 4 crc) / 4.
pub const AL_EXTENTS_MAX: u32 = ((AL_BLOCK_BYTES - AL_HEADER_BYTES - 4) / 4) as u32;
/// Default capacity: 1000 extents of 4 MiB.
pub const AL_EXTENTS_DEFAULT: u32 = 1000;
const AL_HEADER_BYTES: usize = 24;
const _: () = assert!(
    AL_EXTENTS_DEFAULT <= AL_EXTENTS_MAX,
    "the default AL must fit one block"
);
const AL_OFF_CRC: usize = AL_BLOCK_BYTES - 4;

/// Checks an AL capacity: `1..=AL_EXTENTS_MAX`.
pub fn check_al_extents(al_extents: u32) -> Result<(), Error> {
    if !(1..=AL_EXTENTS_MAX).contains(&al_extents) {
        return Err(Error::MetaInvalidOption(format!(
            "al-extents {al_extents} must be from 1 to {AL_EXTENTS_MAX} (default \
             {AL_EXTENTS_DEFAULT})"
        )));
    }
    Ok(())
}

/// What the activity log needs to know about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlGeometry {
    /// Capacity in extents (`1..=AL_EXTENTS_MAX`).
    pub al_extents: u32,
    /// Size of one extent (a power of two).
    pub al_extent_bytes: u32,
    /// Size of the data region.
    pub data_size_bytes: u64,
}

impl AlGeometry {
    /// The geometry recorded in a superblock.
    pub fn from_superblock(sb: &Superblock) -> AlGeometry {
        AlGeometry {
            al_extents: sb.al_extents,
            al_extent_bytes: sb.al_extent_bytes,
            data_size_bytes: sb.data_size_bytes,
        }
    }

    /// Number of extents covering the data region.
    pub fn extent_count(&self) -> u64 {
        self.data_size_bytes
            .div_ceil(u64::from(self.al_extent_bytes))
    }

    /// The byte range of extent `extent`, capped at the data end.
    pub fn extent_range(&self, extent: u64) -> (u64, u64) {
        let eb = u64::from(self.al_extent_bytes);
        let start = extent * eb;
        assert!(
            start < self.data_size_bytes,
            "AL extent {extent} is past the data end"
        );
        (start, eb.min(self.data_size_bytes - start))
    }
}

/// A transaction to persist before a write proceeds: the whole hot set after the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlUpdate {
    /// Transaction sequence number (strictly increasing).
    pub seq: u64,
    /// Every hot extent after this transaction, sorted.
    pub extents: Vec<u64>,
    /// Extents that became hot.
    pub added: Vec<u64>,
    /// Extents evicted (least recently used); see the caller's rules in the module doc.
    pub evicted: Vec<u64>,
}

/// The result of reading the AL ring.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlRecovered {
    /// Seq of the newest valid transaction (0 if none).
    pub last_seq: u64,
    /// Its hot extents, sorted (empty if none).
    pub extents: Vec<u64>,
}

/// The in-memory activity log: an LRU set of at most `al_extents` hot extents.
#[derive(Debug, Clone)]
pub struct ActivityLog {
    geometry: AlGeometry,
    /// Hot extent → last-use tick.
    hot: HashMap<u64, u64>,
    tick: u64,
    seq: u64,
}

impl ActivityLog {
    /// An empty AL whose first transaction will have seq 1.
    pub fn new(geometry: AlGeometry) -> ActivityLog {
        Self::restore(geometry, &AlRecovered::default())
    }

    /// The AL as recovered from disk: the recovered extents are hot (least recently used first
    /// in their sorted order) and the next transaction continues after `last_seq`.
    pub fn restore(geometry: AlGeometry, recovered: &AlRecovered) -> ActivityLog {
        assert!(
            check_al_extents(geometry.al_extents).is_ok(),
            "bad AL capacity {geometry:?}"
        );
        assert!(
            geometry.al_extent_bytes.is_power_of_two(),
            "bad AL extent size {geometry:?}"
        );
        assert!(
            recovered.extents.len() <= geometry.al_extents as usize,
            "recovered AL holds more extents than its capacity"
        );
        let mut al = ActivityLog {
            geometry,
            hot: HashMap::new(),
            tick: 0,
            seq: recovered.last_seq,
        };
        for &e in &recovered.extents {
            al.tick += 1;
            al.hot.insert(e, al.tick);
        }
        al
    }

    /// The geometry.
    pub fn geometry(&self) -> AlGeometry {
        self.geometry
    }
    /// Seq of the last transaction issued (or recovered).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }
    /// Number of hot extents.
    pub fn len(&self) -> usize {
        self.hot.len()
    }
    /// No hot extent.
    pub fn is_empty(&self) -> bool {
        self.hot.is_empty()
    }
    /// Extent `extent` is hot.
    pub fn is_hot(&self, extent: u64) -> bool {
        self.hot.contains_key(&extent)
    }
    /// The extent holding data byte `offset_bytes`.
    pub fn extent_of(&self, offset_bytes: u64) -> u64 {
        offset_bytes / u64::from(self.geometry.al_extent_bytes)
    }

    /// The hot extents, sorted.
    pub fn hot_extents(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.hot.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Byte ranges `(offset_bytes, len_bytes)` of the hot extents, sorted, capped at the data
    /// end: what to mark out of sync after a Primary crash.
    pub fn hot_ranges(&self) -> Vec<(u64, u64)> {
        self.hot_extents()
            .into_iter()
            .map(|e| self.geometry.extent_range(e))
            .collect()
    }

    /// Records a write of `[offset_bytes, offset_bytes + len_bytes)`. `None` if every touched
    /// extent is already hot (the write may proceed at once); else the transaction to persist
    /// first. A zero-length write touches nothing. Panics if the range leaves the data region
    /// or touches more extents than the capacity (callers split such writes; NBD's maximum
    /// request is far smaller).
    pub fn note_write(&mut self, offset_bytes: u64, len_bytes: u64) -> Option<AlUpdate> {
        let end = offset_bytes.checked_add(len_bytes);
        assert!(
            end.is_some_and(|e| e <= self.geometry.data_size_bytes),
            "write {offset_bytes}+{len_bytes} is outside the data region"
        );
        if len_bytes == 0 {
            return None;
        }
        let first = self.extent_of(offset_bytes);
        let last = self.extent_of(offset_bytes + len_bytes - 1);
        assert!(
            last - first < u64::from(self.geometry.al_extents),
            "write {offset_bytes}+{len_bytes} touches more extents than the activity log holds"
        );
        let mut added = Vec::new();
        let mut evicted = Vec::new();
        // Touch the hot ones first so that eviction never picks an extent of this write.
        for e in first..=last {
            if let Some(t) = self.hot.get_mut(&e) {
                self.tick += 1;
                *t = self.tick;
            }
        }
        for e in first..=last {
            if self.hot.contains_key(&e) {
                continue;
            }
            if self.hot.len() == self.geometry.al_extents as usize {
                let (&lru, _) = self
                    .hot
                    .iter()
                    .min_by_key(|(_, &t)| t)
                    .expect("AL is full, so not empty");
                self.hot.remove(&lru);
                evicted.push(lru);
            }
            self.tick += 1;
            self.hot.insert(e, self.tick);
            added.push(e);
        }
        if added.is_empty() {
            return None;
        }
        evicted.sort_unstable();
        self.seq += 1;
        Some(AlUpdate {
            seq: self.seq,
            extents: self.hot_extents(),
            added,
            evicted,
        })
    }

    /// Empties the AL (e.g. after every extent was resynced or at a clean shutdown); the
    /// returned transaction must be persisted like any other.
    pub fn clear(&mut self) -> AlUpdate {
        let mut evicted = self.hot_extents();
        evicted.sort_unstable();
        self.hot.clear();
        self.seq += 1;
        AlUpdate {
            seq: self.seq,
            extents: Vec::new(),
            added: Vec::new(),
            evicted,
        }
    }
}

fn corrupt(detail: String) -> Error {
    Error::MetaCorrupt {
        what: "activity log",
        detail,
    }
}

/// Encodes a transaction: `al_extents` is the capacity recorded with it.
pub fn encode_transaction(seq: u64, al_extents: u32, extents: &[u64]) -> [u8; AL_BLOCK_BYTES] {
    assert!(
        extents.len() <= al_extents as usize && al_extents <= AL_EXTENTS_MAX,
        "AL transaction too large"
    );
    let mut b = [0u8; AL_BLOCK_BYTES];
    b[0..8].copy_from_slice(&AL_MAGIC);
    b[8..16].copy_from_slice(&seq.to_be_bytes());
    b[16..20].copy_from_slice(&al_extents.to_be_bytes());
    b[20..24].copy_from_slice(&(extents.len() as u32).to_be_bytes());
    for (i, &e) in extents.iter().enumerate() {
        let e = u32::try_from(e).expect("AL extent number exceeds u32");
        let o = AL_HEADER_BYTES + 4 * i;
        b[o..o + 4].copy_from_slice(&e.to_be_bytes());
    }
    let crc = crc32c::crc32c(&b[..AL_OFF_CRC]);
    b[AL_OFF_CRC..].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Decodes one ring block. `Ok(None)`: not a transaction (never written, or torn: bad magic or
/// crc) — ignored by recovery. `Err`: a block with a valid crc whose contents are impossible.
/// Never panics.
pub fn decode_transaction(block: &[u8]) -> Result<Option<(u64, u32, Vec<u64>)>, Error> {
    if block.len() != AL_BLOCK_BYTES || block[0..8] != AL_MAGIC {
        return Ok(None);
    }
    let be32 = |o: usize| u32::from_be_bytes([block[o], block[o + 1], block[o + 2], block[o + 3]]);
    if be32(AL_OFF_CRC) != crc32c::crc32c(&block[..AL_OFF_CRC]) {
        return Ok(None);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&block[8..16]);
    let seq = u64::from_be_bytes(seq);
    let (cap, count) = (be32(16), be32(20));
    if check_al_extents(cap).is_err() || count > cap {
        return Err(corrupt(format!(
            "transaction {seq}: {count} extents, capacity {cap}"
        )));
    }
    let end = AL_HEADER_BYTES + 4 * count as usize;
    if block[end..AL_OFF_CRC].iter().any(|&x| x != 0) {
        return Err(corrupt(format!("transaction {seq}: padding is not zero")));
    }
    let extents = (0..count as usize)
        .map(|i| u64::from(be32(AL_HEADER_BYTES + 4 * i)))
        .collect();
    Ok(Some((seq, cap, extents)))
}

/// Recovers the hot set from the ring (`blocks` = the whole AL area): the valid transaction with
/// the highest seq. Torn or never-written blocks are ignored. Errors if a checksummed block
/// holds impossible contents (too many extents, extents past the data end, duplicates).
pub fn recover(blocks: &[u8], geometry: AlGeometry) -> Result<AlRecovered, Error> {
    let mut best: Option<(u64, Vec<u64>)> = None;
    for block in blocks.chunks(AL_BLOCK_BYTES) {
        let Some((seq, _cap, extents)) = decode_transaction(block)? else {
            continue;
        };
        let newer = match &best {
            Some((s, _)) => seq > *s,
            None => true,
        };
        if newer {
            best = Some((seq, extents));
        }
    }
    let Some((last_seq, mut extents)) = best else {
        return Ok(AlRecovered::default());
    };
    extents.sort_unstable();
    let n = extents.len();
    extents.dedup();
    if extents.len() != n {
        return Err(corrupt(format!(
            "transaction {last_seq} lists an extent twice"
        )));
    }
    if extents.len() > geometry.al_extents as usize {
        return Err(corrupt(format!(
            "transaction {last_seq} holds {} extents, more than al-extents {}",
            extents.len(),
            geometry.al_extents
        )));
    }
    if let Some(&e) = extents.last().filter(|&&e| e >= geometry.extent_count()) {
        return Err(corrupt(format!(
            "transaction {last_seq} names extent {e}, past the data end ({} extents)",
            geometry.extent_count()
        )));
    }
    Ok(AlRecovered { last_seq, extents })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn geom(cap: u32) -> AlGeometry {
        AlGeometry {
            al_extents: cap,
            al_extent_bytes: 4 << 20,
            data_size_bytes: 1 << 30,
        }
    }

    #[test]
    fn capacity_fits_one_block() {
        assert_eq!(AL_EXTENTS_MAX, 1017);
        let ext: Vec<u64> = (0..u64::from(AL_EXTENTS_MAX)).collect();
        let b = encode_transaction(3, AL_EXTENTS_MAX, &ext);
        assert_eq!(
            decode_transaction(&b).unwrap(),
            Some((3, AL_EXTENTS_MAX, ext))
        );
    }

    #[test]
    fn lru_behaviour() {
        let mut al = ActivityLog::new(geom(2));
        let u = al.note_write(0, 4096).unwrap();
        assert_eq!(
            (u.seq, u.extents.clone(), u.added.clone()),
            (1, vec![0], vec![0])
        );
        assert_eq!(al.note_write(4096, 4096), None); // extent 0 hot
        let u = al.note_write(4 * MIB, 10).unwrap();
        assert_eq!((u.seq, u.extents.clone()), (2, vec![0, 1]));
        assert!(u.evicted.is_empty());
        assert_eq!(al.note_write(0, 1), None); // 0 is now the most recently used
        let u = al.note_write(8 * MIB, 1).unwrap(); // evicts 1 (LRU), not 0
        assert_eq!(
            (u.seq, u.extents.clone(), u.evicted.clone()),
            (3, vec![0, 2], vec![1])
        );
        // A write spanning two extents, one hot: only the other is added; the hot one is not
        // evicted for it.
        let u = al.note_write(8 * MIB - 1, 2).unwrap(); // extents 1, 2
        assert_eq!(
            (u.added.clone(), u.evicted.clone(), u.extents.clone()),
            (vec![1], vec![0], vec![1, 2])
        );
        assert_eq!(
            al.hot_ranges(),
            vec![(4 * MIB, 4 * MIB), (8 * MIB, 4 * MIB)]
        );
        let c = al.clear();
        assert_eq!(
            (c.seq, c.extents.len(), c.evicted.clone()),
            (5, 0, vec![1, 2])
        );
        assert_eq!(al.note_write(0, 0), None);
    }

    #[test]
    fn hot_range_capped_at_data_end() {
        let g = AlGeometry {
            al_extents: 4,
            al_extent_bytes: 4 << 20,
            data_size_bytes: 5 * MIB,
        };
        let mut al = ActivityLog::new(g);
        al.note_write(5 * MIB - 1, 1).unwrap();
        assert_eq!(al.hot_ranges(), vec![(4 * MIB, MIB)]);
    }

    #[test]
    fn recovery_after_torn_transaction() {
        let g = geom(8);
        let slots = 4;
        let mut ring = vec![0u8; slots * AL_BLOCK_BYTES];
        let mut al = ActivityLog::new(g);
        let mut history = Vec::new();
        for i in 0..10u64 {
            let u = al.note_write(i * 4 * MIB, 1).unwrap();
            let slot = (u.seq % slots as u64) as usize;
            ring[slot * AL_BLOCK_BYTES..(slot + 1) * AL_BLOCK_BYTES]
                .copy_from_slice(&encode_transaction(u.seq, 8, &u.extents));
            history.push(u);
        }
        let r = recover(&ring, g).unwrap();
        assert_eq!((r.last_seq, &r.extents), (10, &history[9].extents));
        // Tear transaction 11 at every sector boundary: recovery yields 10 or 11.
        let u = al.note_write(40 * 4 * MIB, 1).unwrap();
        let enc = encode_transaction(u.seq, 8, &u.extents);
        let slot = (u.seq % slots as u64) as usize;
        for k in (0..=AL_BLOCK_BYTES).step_by(512) {
            let mut torn = ring.clone();
            torn[slot * AL_BLOCK_BYTES..slot * AL_BLOCK_BYTES + k].copy_from_slice(&enc[..k]);
            let r = recover(&torn, g).unwrap();
            if k == AL_BLOCK_BYTES {
                assert_eq!((r.last_seq, &r.extents), (11, &u.extents));
            } else {
                assert_eq!(
                    (r.last_seq, &r.extents),
                    (10, &history[9].extents),
                    "torn at {k}"
                );
            }
        }
        // Restored AL continues the sequence and knows the hot set.
        let r = recover(&ring, g).unwrap();
        let mut al2 = ActivityLog::restore(g, &r);
        assert_eq!(al2.note_write(9 * 4 * MIB, 1), None);
        assert_eq!(al2.note_write(100 * 4 * MIB, 1).unwrap().seq, 11);
    }

    #[test]
    fn recover_rejects_impossible_contents() {
        let g = geom(8);
        assert_eq!(recover(&[0u8; 8192], g).unwrap(), AlRecovered::default());
        let b = encode_transaction(1, 8, &[1, 1]);
        assert!(recover(&b, g).is_err());
        let b = encode_transaction(1, 8, &[5000]);
        assert!(recover(&b, g)
            .unwrap_err()
            .to_string()
            .contains("past the data end"));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..8192)) {
            let _ = recover(&bytes, geom(8));
            let mut b = bytes.clone();
            b.resize(AL_BLOCK_BYTES, 0);
            b[0..8].copy_from_slice(&AL_MAGIC);
            let crc = crc32c::crc32c(&b[..AL_OFF_CRC]);
            b[AL_OFF_CRC..].copy_from_slice(&crc.to_be_bytes());
            let _ = decode_transaction(&b);
            let _ = recover(&b, geom(8));
        }

        // The AL never exceeds its capacity, keeps the extents of the last write hot, and
        // every transaction's list is the hot set; seqs increase by one.
        #[test]
        fn lru_invariants(cap in 1u32..6, writes in proptest::collection::vec((0u64..40, 1u64..3), 1..100)) {
            let g = AlGeometry { al_extents: cap, al_extent_bytes: 1 << 16, data_size_bytes: 64 << 16 };
            let mut al = ActivityLog::new(g);
            let mut seq = 0;
            for (ext, n) in writes {
                let n = n.min(u64::from(cap));
                let before = al.hot_extents();
                let upd = al.note_write(ext << 16, n << 16);
                prop_assert!(al.len() <= cap as usize);
                for e in ext..ext + n { prop_assert!(al.is_hot(e)); }
                match upd {
                    None => prop_assert_eq!(al.hot_extents(), before),
                    Some(u) => {
                        seq += 1;
                        prop_assert_eq!(u.seq, seq);
                        prop_assert_eq!(&u.extents, &al.hot_extents());
                        for e in &u.evicted { prop_assert!(before.contains(e) && !al.is_hot(*e)); }
                        let dec = decode_transaction(&encode_transaction(u.seq, cap, &u.extents)).unwrap();
                        prop_assert_eq!(dec, Some((u.seq, cap, u.extents.clone())));
                    }
                }
            }
        }
    }
}
