//! Roles, disk states, connection and replication states, replication protocol
//! (PROTOCOL.md §4.1). Display uses DRBD's exact names.

use crate::wire_enum::wire_enum;

wire_enum! {
    /// A node's role. `Unknown` is only a local notion of a disconnected peer's role; it is never
    /// sent in a `State` message.
    pub enum Role: u8, kind = "role" {
        Unknown = 0 => "Unknown",
        Primary = 1 => "Primary",
        Secondary = 2 => "Secondary",
    }
}

wire_enum! {
    /// Disk state, numbered and ordered as in DRBD 8.4 (`D_DISKLESS` .. `D_UP_TO_DATE`), so
    /// comparisons like `disk >= DiskState::Outdated` mean what they mean in DRBD.
    /// `DUnknown` is only a local notion of a disconnected peer's disk; it is never sent.
    pub enum DiskState: u8, kind = "disk state" {
        /// No backing disk attached.
        Diskless = 0 => "Diskless",
        /// Reading metadata.
        Attaching = 1 => "Attaching",
        /// I/O error; about to detach.
        Failed = 2 => "Failed",
        /// Attach on a connected node, before the sync handshake decided.
        Negotiating = 3 => "Negotiating",
        /// Data is not usable (SyncTarget, or never synced).
        Inconsistent = 4 => "Inconsistent",
        /// Consistent but known to be older than the peer's.
        Outdated = 5 => "Outdated",
        /// The peer's disk while disconnected.
        DUnknown = 6 => "DUnknown",
        /// Consistent, up-to-dateness undecided until connect.
        Consistent = 7 => "Consistent",
        /// Consistent and current: the only state that serves application I/O.
        UpToDate = 8 => "UpToDate",
    }
}

wire_enum! {
    /// When a write completes to the application (PROTOCOL.md §5.1). Default: C.
    #[derive(Default)]
    pub enum ReplicationProtocol: u8, kind = "replication protocol" {
        /// Local write done and the data is in the local send buffer.
        A = 1 => "A",
        /// Local write done and the peer has received the data (`RecvAck`).
        B = 2 => "B",
        /// Local write done and the peer has written the data (`WriteAck`). The default.
        #[default]
        C = 3 => "C",
    }
}

wire_enum! {
    /// Connection state (DRBD 9 names). Not sent on the wire; here for status output.
    pub enum ConnectionState: u8, kind = "connection state" {
        StandAlone = 0 => "StandAlone",
        Disconnecting = 1 => "Disconnecting",
        Unconnected = 2 => "Unconnected",
        Timeout = 3 => "Timeout",
        BrokenPipe = 4 => "BrokenPipe",
        NetworkFailure = 5 => "NetworkFailure",
        ProtocolError = 6 => "ProtocolError",
        TearDown = 7 => "TearDown",
        Connecting = 8 => "Connecting",
        Connected = 9 => "Connected",
    }
}

wire_enum! {
    /// Replication state of a connected peer (DRBD 9 names). Not sent on the wire.
    pub enum ReplicationState: u8, kind = "replication state" {
        Off = 0 => "Off",
        Established = 1 => "Established",
        StartingSyncS = 2 => "StartingSyncS",
        StartingSyncT = 3 => "StartingSyncT",
        WFBitMapS = 4 => "WFBitMapS",
        WFBitMapT = 5 => "WFBitMapT",
        WFSyncUUID = 6 => "WFSyncUUID",
        SyncSource = 7 => "SyncSource",
        SyncTarget = 8 => "SyncTarget",
        VerifyS = 9 => "VerifyS",
        VerifyT = 10 => "VerifyT",
        PausedSyncS = 11 => "PausedSyncS",
        PausedSyncT = 12 => "PausedSyncT",
        Ahead = 13 => "Ahead",
        Behind = 14 => "Behind",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    // PROTOCOL.md §4.1: DRBD's exact names.
    #[test]
    fn display_uses_drbd_names() {
        assert_eq!(DiskState::UpToDate.to_string(), "UpToDate");
        assert_eq!(DiskState::DUnknown.to_string(), "DUnknown");
        assert_eq!(Role::Primary.to_string(), "Primary");
        assert_eq!(ConnectionState::StandAlone.to_string(), "StandAlone");
        assert_eq!(ReplicationState::WFBitMapT.to_string(), "WFBitMapT");
        assert_eq!(ReplicationProtocol::C.to_string(), "C");
        assert_eq!(
            "SyncSource".parse::<ReplicationState>(),
            Ok(ReplicationState::SyncSource)
        );
        assert!("uptodate".parse::<DiskState>().is_err());
    }

    // PROTOCOL.md §4.1: wire values; unknown values are errors naming the kind.
    #[test]
    fn wire_values() {
        for &d in DiskState::ALL {
            assert_eq!(DiskState::try_from(u8::from(d)), Ok(d));
        }
        assert_eq!(DiskState::UpToDate.to_wire(), 8);
        assert_eq!(
            DiskState::try_from(9),
            Err(Error::UnknownValue {
                kind: "disk state",
                value: 9
            })
        );
        assert_eq!(
            Role::try_from(3).unwrap_err().to_string(),
            "unknown role value 3"
        );
        assert_eq!(ReplicationProtocol::try_from(0).map_err(|_| ()), Err(()));
    }

    // PROTOCOL.md §4.1: disk states are ordered as in DRBD 8.4.
    #[test]
    fn disk_state_order() {
        assert!(DiskState::UpToDate > DiskState::Consistent);
        assert!(DiskState::Outdated > DiskState::Inconsistent);
        assert!(DiskState::Inconsistent > DiskState::Diskless);
    }
}
