//! The superblock: one 4 KiB block, big-endian, crc32c-protected, kept in two slots so that a
//! crash in the middle of writing one always leaves the other, older state readable.
//!
//! Block format (offsets in bytes, all integers big-endian):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `b"urbd-md\0"` |
//! | 8 | 4 | format_version (1) |
//! | 12 | 4 | reserved, 0 |
//! | 16 | 8 | seq: incremented on every write |
//! | 24 | 8 | data_size_bytes |
//! | 32 | 4 | bytes_per_bit |
//! | 36 | 4 | al_extents |
//! | 40 | 4 | al_extent_bytes |
//! | 44 | 4 | flags ([`MdFlags`]) |
//! | 48 | 32 | uuids: current, bitmap, history\[0\], history\[1\] |
//! | 80 | 8 | device_uuid |
//! | 88 | 8 | created_at_unix_s |
//! | 96 | 1 | disk_state (PROTOCOL.md §4.1 numbering) |
//! | 97 | 1 | node_name length |
//! | 98 | 1 | peer_name length |
//! | 99 | 1 | reserved, 0 |
//! | 100 | 64 | node_name (UTF-8, zero padded) |
//! | 164 | 64 | peer_name (UTF-8, zero padded) |
//! | 228..4092 | | reserved, 0 |
//! | 4092 | 4 | crc32c of bytes 0..4092 |

use std::fmt;

use urbd_protocol::{DiskState, GenerationUuids};

use super::activity_log::check_al_extents;
use super::layout::{check_bytes_per_bit, is_block_aligned, META_BLOCK_BYTES};
use crate::error::Error;

/// Size of an encoded superblock.
pub const SUPERBLOCK_BYTES: usize = META_BLOCK_BYTES as usize;
/// First 8 bytes of every superblock.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"urbd-md\0";
/// The only format version this code reads and writes.
pub const SUPERBLOCK_FORMAT_VERSION: u32 = 1;
/// Longest node or peer name, in bytes.
pub const NAME_MAX_BYTES: usize = 64;

const OFF_NODE_NAME: usize = 100;
const OFF_PEER_NAME: usize = OFF_NODE_NAME + NAME_MAX_BYTES;
const OFF_RESERVED: usize = OFF_PEER_NAME + NAME_MAX_BYTES;
const OFF_CRC: usize = SUPERBLOCK_BYTES - 4;

/// Persistent metadata flags (a `u32` bit set; names as DRBD's `MDF_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MdFlags(u32);

impl MdFlags {
    /// The data is consistent (not in the middle of a resync as target, not never-synced).
    pub const CONSISTENT: MdFlags = MdFlags(1 << 0);
    /// The disk was UpToDate the last time the state was written.
    pub const WAS_UP_TO_DATE: MdFlags = MdFlags(1 << 1);
    /// This node is Primary (set on promotion, cleared on demotion).
    pub const PRIMARY_IND: MdFlags = MdFlags(1 << 2);
    /// Found PRIMARY_IND without CLEAN_SHUTDOWN at attach: the Primary crashed; its
    /// activity-log extents must be resynced (PROTOCOL.md §7.2 rule 40b).
    pub const CRASHED_PRIMARY: MdFlags = MdFlags(1 << 3);
    /// Set when the resource was shut down cleanly, cleared on attach.
    pub const CLEAN_SHUTDOWN: MdFlags = MdFlags(1 << 4);
    /// A full sync is pending (`invalidate`, an interrupted initial sync).
    pub const FULL_SYNC: MdFlags = MdFlags(1 << 5);
    /// This node marked its peer Outdated (fencing) while disconnected.
    pub const PEER_OUT_DATED: MdFlags = MdFlags(1 << 6);
    /// The activity log is empty-equivalent: nothing in it needs a resync.
    pub const AL_CLEAN: MdFlags = MdFlags(1 << 7);
    /// The operator asked to discard this node's data at the next connect.
    pub const DISCARD_MY_DATA: MdFlags = MdFlags(1 << 8);

    /// Every flag with its name, in bit order.
    pub const NAMED: &'static [(MdFlags, &'static str)] = &[
        (Self::CONSISTENT, "CONSISTENT"),
        (Self::WAS_UP_TO_DATE, "WAS_UP_TO_DATE"),
        (Self::PRIMARY_IND, "PRIMARY_IND"),
        (Self::CRASHED_PRIMARY, "CRASHED_PRIMARY"),
        (Self::CLEAN_SHUTDOWN, "CLEAN_SHUTDOWN"),
        (Self::FULL_SYNC, "FULL_SYNC"),
        (Self::PEER_OUT_DATED, "PEER_OUT_DATED"),
        (Self::AL_CLEAN, "AL_CLEAN"),
        (Self::DISCARD_MY_DATA, "DISCARD_MY_DATA"),
    ];
    /// Union of every defined flag.
    pub const ALL_BITS: u32 = (1 << 9) - 1;

    /// No flag set.
    pub const fn empty() -> MdFlags {
        MdFlags(0)
    }
    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
    /// `None` if `bits` has an undefined bit set.
    pub const fn from_bits(bits: u32) -> Option<MdFlags> {
        if bits & !Self::ALL_BITS == 0 {
            Some(MdFlags(bits))
        } else {
            None
        }
    }
    /// Every bit of `other` is set in `self`.
    pub const fn contains(self, other: MdFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// No flag set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Sets the bits of `other`.
    pub fn insert(&mut self, other: MdFlags) {
        self.0 |= other.0;
    }
    /// Clears the bits of `other`.
    pub fn remove(&mut self, other: MdFlags) {
        self.0 &= !other.0;
    }
    /// Sets or clears the bits of `other`.
    pub fn set(&mut self, other: MdFlags, value: bool) {
        if value {
            self.insert(other)
        } else {
            self.remove(other)
        }
    }
}

impl std::ops::BitOr for MdFlags {
    type Output = MdFlags;
    fn bitor(self, rhs: MdFlags) -> MdFlags {
        MdFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for MdFlags {
    fn bitor_assign(&mut self, rhs: MdFlags) {
        self.0 |= rhs.0;
    }
}

/// `CONSISTENT|CLEAN_SHUTDOWN`, or `none`.
impl fmt::Display for MdFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        for (flag, name) in Self::NAMED {
            if self.contains(*flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        let unknown = self.0 & !Self::ALL_BITS;
        if unknown != 0 {
            write!(f, "{}0x{unknown:x}", if first { "" } else { "|" })?;
        }
        Ok(())
    }
}

impl fmt::Debug for MdFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MdFlags({self})")
    }
}

/// The decoded superblock. The crc32c is not a field: [`Superblock::encode`] computes it and
/// [`Superblock::decode`] checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Always [`SUPERBLOCK_MAGIC`].
    pub magic: [u8; 8],
    /// Always [`SUPERBLOCK_FORMAT_VERSION`].
    pub format_version: u32,
    /// Write sequence number; the slot with the higher valid seq is the current state.
    pub seq: u64,
    /// Size of the data region (= the layout's).
    pub data_size_bytes: u64,
    /// Data bytes per bitmap bit.
    pub bytes_per_bit: u32,
    /// Activity-log capacity in extents.
    pub al_extents: u32,
    /// Size of one activity-log extent.
    pub al_extent_bytes: u32,
    /// Generation UUIDs (PROTOCOL.md §7.1).
    pub uuids: GenerationUuids,
    /// Persistent flags.
    pub flags: MdFlags,
    /// The disk state to assume at attach (Inconsistent, Outdated, Consistent or UpToDate).
    pub disk_state: DiskState,
    /// This node's name (≤ 64 bytes).
    pub node_name: String,
    /// The peer's name (≤ 64 bytes).
    pub peer_name: String,
    /// Random id of this replicated device, set at create-md.
    pub device_uuid: u64,
    /// When create-md ran (seconds since the Unix epoch).
    pub created_at_unix_s: u64,
}

/// Disk states that may be persisted.
pub const PERSISTED_DISK_STATES: &[DiskState] = &[
    DiskState::Inconsistent,
    DiskState::Outdated,
    DiskState::Consistent,
    DiskState::UpToDate,
];

fn corrupt(detail: String) -> Error {
    Error::MetaCorrupt {
        what: "superblock",
        detail,
    }
}

impl Superblock {
    /// Checks every field's range (the checks `decode` applies after the crc).
    pub fn validate(&self) -> Result<(), Error> {
        if self.magic != SUPERBLOCK_MAGIC {
            return Err(corrupt(format!("bad magic {:02x?}", self.magic)));
        }
        if self.format_version != SUPERBLOCK_FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {} is not supported (this urbd reads version {})",
                self.format_version, SUPERBLOCK_FORMAT_VERSION
            )));
        }
        check_bytes_per_bit(self.bytes_per_bit).map_err(|e| corrupt(e.to_string()))?;
        check_al_extents(self.al_extents).map_err(|e| corrupt(e.to_string()))?;
        if !self.al_extent_bytes.is_power_of_two()
            || self.al_extent_bytes < self.bytes_per_bit
            || self.al_extent_bytes < 1 << 16
            || self.al_extent_bytes > 1 << 30
        {
            return Err(corrupt(format!(
                "al-extent-bytes {} must be a power of two from 64 KiB to 1 GiB and at least \
                 bytes-per-bit {}",
                self.al_extent_bytes, self.bytes_per_bit
            )));
        }
        if self.data_size_bytes == 0 || !is_block_aligned(self.data_size_bytes) {
            return Err(corrupt(format!(
                "data size {} is not a positive multiple of 4096",
                self.data_size_bytes
            )));
        }
        if self
            .data_size_bytes
            .div_ceil(u64::from(self.al_extent_bytes))
            > u64::from(u32::MAX)
        {
            return Err(corrupt(format!(
                "data size {} has more activity-log extents than fit a u32",
                self.data_size_bytes
            )));
        }
        if !PERSISTED_DISK_STATES.contains(&self.disk_state) {
            return Err(corrupt(format!(
                "disk state {} is never persisted",
                self.disk_state
            )));
        }
        for (what, name) in [("node", &self.node_name), ("peer", &self.peer_name)] {
            if name.len() > NAME_MAX_BYTES || name.contains('\0') {
                return Err(Error::MetaInvalidOption(format!(
                    "{what} name {name:?} must be at most {NAME_MAX_BYTES} bytes without NUL"
                )));
            }
        }
        Ok(())
    }

    /// Encodes into one 4 KiB block with the crc32c in its last 4 bytes.
    ///
    /// Panics if [`Superblock::validate`] fails (callers validate user input first).
    pub fn encode(&self) -> [u8; SUPERBLOCK_BYTES] {
        if let Err(e) = self.validate() {
            panic!("encoding an invalid superblock: {e}");
        }
        let mut b = [0u8; SUPERBLOCK_BYTES];
        b[0..8].copy_from_slice(&self.magic);
        b[8..12].copy_from_slice(&self.format_version.to_be_bytes());
        b[16..24].copy_from_slice(&self.seq.to_be_bytes());
        b[24..32].copy_from_slice(&self.data_size_bytes.to_be_bytes());
        b[32..36].copy_from_slice(&self.bytes_per_bit.to_be_bytes());
        b[36..40].copy_from_slice(&self.al_extents.to_be_bytes());
        b[40..44].copy_from_slice(&self.al_extent_bytes.to_be_bytes());
        b[44..48].copy_from_slice(&self.flags.bits().to_be_bytes());
        let u = &self.uuids;
        for (i, v) in [u.current, u.bitmap, u.history[0], u.history[1]]
            .into_iter()
            .enumerate()
        {
            b[48 + 8 * i..56 + 8 * i].copy_from_slice(&v.to_be_bytes());
        }
        b[80..88].copy_from_slice(&self.device_uuid.to_be_bytes());
        b[88..96].copy_from_slice(&self.created_at_unix_s.to_be_bytes());
        b[96] = self.disk_state.to_wire();
        b[97] = self.node_name.len() as u8;
        b[98] = self.peer_name.len() as u8;
        b[OFF_NODE_NAME..OFF_NODE_NAME + self.node_name.len()]
            .copy_from_slice(self.node_name.as_bytes());
        b[OFF_PEER_NAME..OFF_PEER_NAME + self.peer_name.len()]
            .copy_from_slice(self.peer_name.as_bytes());
        let crc = crc32c::crc32c(&b[..OFF_CRC]);
        b[OFF_CRC..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes and checks a block: magic, version, crc32c, then every field's range. Never
    /// panics, whatever the input.
    pub fn decode(block: &[u8; SUPERBLOCK_BYTES]) -> Result<Superblock, Error> {
        let be32 =
            |o: usize| u32::from_be_bytes([block[o], block[o + 1], block[o + 2], block[o + 3]]);
        let be64 = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&block[o..o + 8]);
            u64::from_be_bytes(a)
        };
        if block[0..8] != SUPERBLOCK_MAGIC {
            return Err(corrupt("no superblock magic".to_string()));
        }
        let format_version = be32(8);
        if format_version != SUPERBLOCK_FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {format_version} is not supported (this urbd reads version \
                 {SUPERBLOCK_FORMAT_VERSION})"
            )));
        }
        let stored_crc = be32(OFF_CRC);
        let crc = crc32c::crc32c(&block[..OFF_CRC]);
        if stored_crc != crc {
            return Err(corrupt(format!(
                "checksum mismatch (stored {stored_crc:08x}, computed {crc:08x}): torn or \
                 damaged block"
            )));
        }
        if be32(12) != 0 || block[99] != 0 || block[OFF_RESERVED..OFF_CRC].iter().any(|&x| x != 0) {
            return Err(corrupt("reserved bytes are not zero".to_string()));
        }
        let flags = MdFlags::from_bits(be32(44))
            .ok_or_else(|| corrupt(format!("unknown flag bits 0x{:x}", be32(44))))?;
        let disk_state = DiskState::try_from(block[96])
            .map_err(|_| corrupt(format!("unknown disk state {}", block[96])))?;
        let name = |off: usize, len: u8, what: &str| -> Result<String, Error> {
            let len = usize::from(len);
            if len > NAME_MAX_BYTES {
                return Err(corrupt(format!(
                    "{what} name length {len} > {NAME_MAX_BYTES}"
                )));
            }
            if block[off + len..off + NAME_MAX_BYTES]
                .iter()
                .any(|&x| x != 0)
            {
                return Err(corrupt(format!("{what} name padding is not zero")));
            }
            String::from_utf8(block[off..off + len].to_vec())
                .map_err(|_| corrupt(format!("{what} name is not UTF-8")))
        };
        let sb = Superblock {
            magic: SUPERBLOCK_MAGIC,
            format_version,
            seq: be64(16),
            data_size_bytes: be64(24),
            bytes_per_bit: be32(32),
            al_extents: be32(36),
            al_extent_bytes: be32(40),
            flags,
            uuids: GenerationUuids {
                current: be64(48),
                bitmap: be64(56),
                history: [be64(64), be64(72)],
            },
            device_uuid: be64(80),
            created_at_unix_s: be64(88),
            disk_state,
            node_name: name(OFF_NODE_NAME, block[97], "node")?,
            peer_name: name(OFF_PEER_NAME, block[98], "peer")?,
        };
        sb.validate()?;
        Ok(sb)
    }
}

/// The current state from the two slots: the valid one with the higher seq (A on a tie). A torn
/// or corrupt slot is ignored. `None` if neither slot is valid.
pub fn choose(
    slot_a: &[u8; SUPERBLOCK_BYTES],
    slot_b: &[u8; SUPERBLOCK_BYTES],
) -> Option<Superblock> {
    choose_slot(slot_a, slot_b).map(|(sb, _)| sb)
}

/// As [`choose`], also returning which slot (0 = A, 1 = B) holds it.
pub fn choose_slot(
    slot_a: &[u8; SUPERBLOCK_BYTES],
    slot_b: &[u8; SUPERBLOCK_BYTES],
) -> Option<(Superblock, usize)> {
    match (
        Superblock::decode(slot_a).ok(),
        Superblock::decode(slot_b).ok(),
    ) {
        (Some(a), Some(b)) => Some(if b.seq > a.seq { (b, 1) } else { (a, 0) }),
        (Some(a), None) => Some((a, 0)),
        (None, Some(b)) => Some((b, 1)),
        (None, None) => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(seq: u64) -> Superblock {
        Superblock {
            magic: SUPERBLOCK_MAGIC,
            format_version: SUPERBLOCK_FORMAT_VERSION,
            seq,
            data_size_bytes: 1 << 30,
            bytes_per_bit: 4096,
            al_extents: 1000,
            al_extent_bytes: 4 << 20,
            uuids: GenerationUuids {
                current: 0x1234_5678_9abc_def1,
                bitmap: 0x42,
                history: [0x10, 0x20],
            },
            flags: MdFlags::CONSISTENT | MdFlags::PRIMARY_IND,
            disk_state: DiskState::UpToDate,
            node_name: "alpha".to_string(),
            peer_name: "bravo".to_string(),
            device_uuid: 0xdead_beef,
            created_at_unix_s: 1_700_000_000,
        }
    }

    fn arb_superblock() -> impl Strategy<Value = Superblock> {
        (
            any::<u64>(),
            1u64..(1 << 40),
            9u32..=16,
            1u32..=1000,
            any::<[u64; 4]>(),
            0u32..=MdFlags::ALL_BITS,
            0usize..4,
            "[a-z0-9.-]{0,64}",
            "[a-zé]{0,32}",
            any::<[u64; 2]>(),
        )
            .prop_map(|(seq, units, shift, al, u, flags, ds, node, peer, ids)| {
                Superblock {
                    magic: SUPERBLOCK_MAGIC,
                    format_version: SUPERBLOCK_FORMAT_VERSION,
                    seq,
                    data_size_bytes: units * 4096,
                    bytes_per_bit: 1 << shift,
                    al_extents: al,
                    al_extent_bytes: 4 << 20,
                    uuids: GenerationUuids {
                        current: u[0],
                        bitmap: u[1],
                        history: [u[2], u[3]],
                    },
                    flags: MdFlags::from_bits(flags).unwrap(),
                    disk_state: PERSISTED_DISK_STATES[ds],
                    node_name: node,
                    peer_name: peer,
                    device_uuid: ids[0],
                    created_at_unix_s: ids[1],
                }
            })
    }

    #[test]
    fn round_trip_and_layout() {
        let sb = sample(7);
        let b = sb.encode();
        assert_eq!(&b[0..8], b"urbd-md\0");
        assert_eq!(&b[16..24], &7u64.to_be_bytes());
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
    }

    #[test]
    fn rejects_bad_blocks() {
        let good = sample(1).encode();
        assert!(Superblock::decode(&[0u8; 4096]).is_err());
        let mut b = good;
        b[200] ^= 1;
        let e = Superblock::decode(&b).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        // A valid crc over an out-of-range field is still refused.
        let mut b = good;
        b[32..36].copy_from_slice(&3000u32.to_be_bytes());
        let crc = crc32c::crc32c(&b[..OFF_CRC]);
        b[OFF_CRC..].copy_from_slice(&crc.to_be_bytes());
        assert!(Superblock::decode(&b)
            .unwrap_err()
            .to_string()
            .contains("bytes-per-bit"));
        let mut b = good;
        b[8..12].copy_from_slice(&2u32.to_be_bytes());
        assert!(Superblock::decode(&b)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
    }

    #[test]
    fn flags_display() {
        assert_eq!(MdFlags::empty().to_string(), "none");
        assert_eq!(
            (MdFlags::CONSISTENT | MdFlags::AL_CLEAN).to_string(),
            "CONSISTENT|AL_CLEAN"
        );
        assert_eq!(MdFlags::from_bits(1 << 9), None);
        let mut f = MdFlags::empty();
        f.set(MdFlags::CRASHED_PRIMARY, true);
        assert!(f.contains(MdFlags::CRASHED_PRIMARY));
        f.set(MdFlags::CRASHED_PRIMARY, false);
        assert!(f.is_empty());
    }

    #[test]
    fn choose_prefers_higher_valid_seq() {
        let a = sample(5).encode();
        let b = sample(6).encode();
        assert_eq!(choose(&a, &b).unwrap().seq, 6);
        assert_eq!(choose(&b, &a).unwrap().seq, 6);
        let zero = [0u8; 4096];
        assert_eq!(choose(&a, &zero).unwrap().seq, 5);
        assert_eq!(choose_slot(&zero, &b).unwrap().1, 1);
        assert!(choose(&zero, &zero).is_none());
    }

    /// Simulates a write of `new` over `old_slot` torn after `k` bytes.
    fn torn(new: &[u8; 4096], old_slot: &[u8; 4096], k: usize) -> [u8; 4096] {
        let mut t = *old_slot;
        t[..k].copy_from_slice(&new[..k]);
        t
    }

    // Crash-atomicity invariant: a write goes to the slot not holding the newest state; torn at
    // any 512-byte boundary, choose() returns exactly the old or the new state, never a mix.
    #[test]
    fn torn_write_at_every_sector_boundary() {
        let mut old_state = sample(10);
        let older = sample(9).encode(); // what the target slot held before
        let mut new_state = sample(11);
        old_state.uuids.current = 0x1111;
        new_state.uuids.current = 0x2222;
        new_state.flags = MdFlags::CLEAN_SHUTDOWN;
        let slot_a = old_state.encode(); // newest: the write goes to B
        for prior_b in [older, [0u8; 4096], [0xa5u8; 4096]] {
            for k in (0..=4096).step_by(512) {
                let slot_b = torn(&new_state.encode(), &prior_b, k);
                let got = choose(&slot_a, &slot_b).expect("old state must stay readable");
                if k == 4096 {
                    assert_eq!(got, new_state);
                } else {
                    assert_eq!(got, old_state, "torn at {k}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn round_trip(sb in arb_superblock()) {
            prop_assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 4096)) {
            let mut b = [0u8; 4096];
            b.copy_from_slice(&bytes);
            let _ = Superblock::decode(&b);
            // Also with a valid header and crc over garbage fields.
            b[0..8].copy_from_slice(&SUPERBLOCK_MAGIC);
            b[8..12].copy_from_slice(&1u32.to_be_bytes());
            let crc = crc32c::crc32c(&b[..OFF_CRC]);
            b[OFF_CRC..].copy_from_slice(&crc.to_be_bytes());
            if let Ok(sb) = Superblock::decode(&b) {
                prop_assert_eq!(sb.encode(), b);
            }
        }

        // Any subset of the new block's sectors reaching the disk (reordered writes): still old
        // or new, never a mix.
        #[test]
        fn torn_any_sector_subset(old in arb_superblock(), new in arb_superblock(), mask in 0u8..=255) {
            let mut old = old;
            let mut new = new;
            old.seq = 100;
            new.seq = 101;
            let slot_a = old.encode();
            let enc = new.encode();
            let mut slot_b = sample(99).encode();
            for s in 0..8 {
                if mask & (1 << s) != 0 {
                    slot_b[s * 512..(s + 1) * 512].copy_from_slice(&enc[s * 512..(s + 1) * 512]);
                }
            }
            let got = choose(&slot_a, &slot_b).unwrap();
            prop_assert!(got == old || got == new);
            if mask == 255 { prop_assert_eq!(got, new); }
        }
    }
}
