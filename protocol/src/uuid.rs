//! Generation UUIDs (PROTOCOL.md §7.1). Only the data shape and DRBD's constants; the
//! comparison (§7.2) belongs to the replication engine.

/// Bit 0 of every generation UUID: "this node was Primary in that generation". Masked out
/// when UUIDs are compared.
pub const UUID_PRIMARY_BIT: u64 = 1;
/// The current UUID of freshly created metadata (DRBD's `UUID_JUST_CREATED`).
pub const UUID_JUST_CREATED: u64 = 4;
/// Added to the bitmap UUID by a SyncSource when a resync starts (§7.1).
pub const UUID_RESYNC_BUMP: u64 = 0x0001_0000_0000_0000;

/// Compares two generation UUIDs ignoring the "was primary" bit.
pub const fn uuid_eq_ignoring_primary_bit(a: u64, b: u64) -> bool {
    (a & !UUID_PRIMARY_BIT) == (b & !UUID_PRIMARY_BIT)
}

/// A node's generation UUID tuple (DRBD 8.4: current, bitmap, `history[2]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GenerationUuids {
    /// Identifies the data generation on this disk now.
    pub current: u64,
    /// The current UUID at the moment the bitmap started recording (0 if the bitmap is unused).
    pub bitmap: u64,
    /// The two previous generations, newest first.
    pub history: [u64; 2],
}

impl GenerationUuids {
    /// Encoded length: four u64.
    pub(crate) const LEN_BYTES: usize = 32;
}

#[cfg(test)]
mod tests {
    use super::*;

    // PROTOCOL.md §7.1: bit 0 is masked in compares.
    #[test]
    fn primary_bit_is_masked() {
        assert!(uuid_eq_ignoring_primary_bit(
            0x1234_5678_0000_0010,
            0x1234_5678_0000_0011
        ));
        assert!(!uuid_eq_ignoring_primary_bit(0x10, 0x12));
    }
}
