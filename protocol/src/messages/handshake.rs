//! Handshake and configuration/state exchange: `Hello`, `Params`, `State`
//! (PROTOCOL.md §3, §4.2, §4.6, §4.7).

use bytes::{BufMut, BytesMut};

use crate::frame::{MAX_FRAME_BYTES_LOWER_BOUND, MAX_FRAME_BYTES_UPPER_BOUND};
use crate::wire::Reader;
use crate::wire_enum::{wire_enum, wire_flags};
use crate::{DiskState, Error, GenerationUuids, Name, ReplicationProtocol, Role};

/// Sizes are multiples of this.
pub const SECTOR_SIZE_BYTES: u64 = 512;
/// Smallest bitmap granularity (bytes of data per bitmap bit).
pub const BITMAP_GRANULARITY_BYTES_MIN: u32 = 512;
/// Largest bitmap granularity.
pub const BITMAP_GRANULARITY_BYTES_MAX: u32 = 1 << 30;

wire_enum! {
    /// Which of the two connections a `Hello` opens (§1.1).
    pub enum ConnectionKind: u8, kind = "connection kind" {
        Data = 0 => "data",
        Meta = 1 => "meta",
    }
}

/// First message on every connection, from both sides (§4.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Oldest protocol version the sender speaks (≥ 1).
    pub version_min: u16,
    /// Newest protocol version the sender speaks (≥ `version_min`).
    pub version_max: u16,
    /// The replicated resource this connection is for; must match on both sides.
    pub resource: Name,
    /// The sender's node name.
    pub node: Name,
    /// Data or meta socket.
    pub connection: ConnectionKind,
}

impl Hello {
    pub(crate) fn encoded_len_bytes(&self) -> usize {
        5 + self.resource.encoded_len_bytes() + self.node.encoded_len_bytes()
    }

    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u16(self.version_min);
        out.put_u16(self.version_max);
        out.put_u8(self.connection.to_wire());
        self.resource.put(out);
        self.node.put(out);
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let version_min = r.u16("version_min")?;
        let version_max = r.u16("version_max")?;
        if version_min == 0 || version_min > version_max {
            return Err(Error::InvalidField {
                field: "Hello versions",
                reason: "need 1 <= version_min <= version_max",
            });
        }
        let connection = ConnectionKind::try_from(r.u8("connection")?)?;
        let resource = Name::take(r, "resource")?;
        let node = Name::take(r, "node")?;
        Ok(Hello {
            version_min,
            version_max,
            resource,
            node,
            connection,
        })
    }
}

/// The highest version both ranges contain (§3.3).
pub fn negotiate_version(
    local_min: u16,
    local_max: u16,
    peer_min: u16,
    peer_max: u16,
) -> Result<u16, Error> {
    let low = local_min.max(peer_min);
    let high = local_max.min(peer_max);
    if low <= high {
        Ok(high)
    } else {
        Err(Error::NoCommonVersion {
            local_min,
            local_max,
            peer_min,
            peer_max,
        })
    }
}

/// The connect collision rule (§1.3): when both nodes' outgoing connections of the same kind
/// succeed, the node with the byte-wise lower node name keeps its outgoing connection.
/// Returns true if `local_node`'s outgoing connection is the one to keep.
/// Equal names are a configuration error, caught when the `Hello`s are compared.
pub fn outgoing_connection_wins(local_node: &Name, peer_node: &Name) -> bool {
    local_node < peer_node
}

/// Configuration both sides must agree on, sent once after authentication (§4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Params {
    /// Size of the sender's replicated data region; a multiple of 512; 0 when diskless.
    pub size_bytes: u64,
    /// Replication protocol; must be equal on both sides.
    pub protocol: ReplicationProtocol,
    /// Bytes of data per dirty-bitmap bit; a power of two in 512..=2^30; must be equal.
    pub bitmap_granularity_bytes: u32,
    /// The largest frame the sender's decoder accepts (its `max-frame-bytes`).
    pub max_frame_bytes: u32,
}

impl Params {
    pub(crate) const LEN_BYTES: usize = 17;

    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u64(self.size_bytes);
        out.put_u8(self.protocol.to_wire());
        out.put_u32(self.bitmap_granularity_bytes);
        out.put_u32(self.max_frame_bytes);
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let size_bytes = r.u64("size_bytes")?;
        if size_bytes % SECTOR_SIZE_BYTES != 0 {
            return Err(Error::InvalidField {
                field: "size_bytes",
                reason: "not a multiple of 512",
            });
        }
        let protocol = ReplicationProtocol::try_from(r.u8("protocol")?)?;
        let bitmap_granularity_bytes = r.u32("bitmap_granularity_bytes")?;
        if !bitmap_granularity_bytes.is_power_of_two()
            || !(BITMAP_GRANULARITY_BYTES_MIN..=BITMAP_GRANULARITY_BYTES_MAX)
                .contains(&bitmap_granularity_bytes)
        {
            return Err(Error::InvalidField {
                field: "bitmap_granularity_bytes",
                reason: "not a power of two in 512..=2^30",
            });
        }
        let max_frame_bytes = r.u32("max_frame_bytes")?;
        if !(MAX_FRAME_BYTES_LOWER_BOUND..=MAX_FRAME_BYTES_UPPER_BOUND).contains(&max_frame_bytes) {
            return Err(Error::InvalidMaxFrameBytes {
                value: u64::from(max_frame_bytes),
                min: MAX_FRAME_BYTES_LOWER_BOUND,
                max: MAX_FRAME_BYTES_UPPER_BOUND,
            });
        }
        Ok(Params {
            size_bytes,
            protocol,
            bitmap_granularity_bytes,
            max_frame_bytes,
        })
    }
}

wire_flags! {
    /// Flags of a `State` message (§4.7).
    pub struct StateFlags: u32, kind = "state flags" {
        /// The node was Primary and did not shut down cleanly: its activity-log extents must be
        /// resynced (§7.2 rule 40b).
        const CRASHED_PRIMARY = 1 << 0;
        /// The operator connected with `--discard-my-data`: on split brain this node becomes
        /// SyncTarget (§7.4).
        const DISCARD_MY_DATA = 1 << 1;
        /// The metadata records a pending full sync (`invalidate`, interrupted initial sync).
        const FULL_SYNC_PENDING = 1 << 2;
        /// The sender has marked the receiver's data Outdated (fencing) while disconnected.
        const PEER_OUTDATED = 1 << 3;
    }
}

/// A node's state, sent after `Params` and whenever it changes (§4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct State {
    /// Primary or Secondary (never Unknown).
    pub role: Role,
    /// The sender's own disk state (never DUnknown).
    pub disk: DiskState,
    /// The sender's generation UUIDs.
    pub uuids: GenerationUuids,
    /// Flags.
    pub flags: StateFlags,
    /// Number of set bits in the sender's dirty bitmap.
    pub dirty_bits: u64,
}

impl State {
    pub(crate) const LEN_BYTES: usize = 2 + GenerationUuids::LEN_BYTES + 4 + 8;

    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u8(self.role.to_wire());
        out.put_u8(self.disk.to_wire());
        out.put_u64(self.uuids.current);
        out.put_u64(self.uuids.bitmap);
        out.put_u64(self.uuids.history[0]);
        out.put_u64(self.uuids.history[1]);
        out.put_u32(self.flags.bits());
        out.put_u64(self.dirty_bits);
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let role = Role::try_from(r.u8("role")?)?;
        if role == Role::Unknown {
            return Err(Error::InvalidField {
                field: "role",
                reason: "Unknown is never sent",
            });
        }
        let disk = DiskState::try_from(r.u8("disk")?)?;
        if disk == DiskState::DUnknown {
            return Err(Error::InvalidField {
                field: "disk",
                reason: "DUnknown is never sent",
            });
        }
        let current = r.u64("uuid current")?;
        let bitmap = r.u64("uuid bitmap")?;
        let history = [r.u64("uuid history[0]")?, r.u64("uuid history[1]")?];
        let flags = StateFlags::from_bits(r.u32("flags")?)?;
        let dirty_bits = r.u64("dirty_bits")?;
        Ok(State {
            role,
            disk,
            uuids: GenerationUuids {
                current,
                bitmap,
                history,
            },
            flags,
            dirty_bits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // PROTOCOL.md §3.3: the highest common version wins; disjoint ranges are an error.
    #[test]
    fn version_negotiation() {
        assert_eq!(negotiate_version(1, 1, 1, 1), Ok(1));
        assert_eq!(negotiate_version(1, 3, 2, 5), Ok(3));
        assert_eq!(negotiate_version(2, 5, 1, 3), Ok(3));
        assert!(matches!(
            negotiate_version(1, 1, 2, 3),
            Err(Error::NoCommonVersion { .. })
        ));
    }

    // PROTOCOL.md §1.3: the lower node name keeps its outgoing connection.
    #[test]
    fn collision_rule() {
        let alpha = Name::new("alpha").unwrap();
        let beta = Name::new("beta").unwrap();
        assert!(outgoing_connection_wins(&alpha, &beta));
        assert!(!outgoing_connection_wins(&beta, &alpha));
    }

    // PROTOCOL.md §4.7: undefined state flag bits are refused.
    #[test]
    fn state_flags() {
        let both = StateFlags::CRASHED_PRIMARY | StateFlags::DISCARD_MY_DATA;
        assert!(both.contains(StateFlags::CRASHED_PRIMARY));
        assert!(!both.contains(StateFlags::PEER_OUTDATED));
        assert_eq!(
            StateFlags::from_bits(0b1111).map(StateFlags::bits),
            Ok(0b1111)
        );
        assert_eq!(
            StateFlags::from_bits(1 << 4),
            Err(Error::UnknownValue {
                kind: "state flags",
                value: 16
            })
        );
    }
}
