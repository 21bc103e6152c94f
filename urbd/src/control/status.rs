//! [`Status`]: what `status` answers and `urbdadm status --json` prints. The JSON field names
//! are a contract. States are DRBD's names as strings ("Primary", "UpToDate", "Connected",
//! "SyncSource", …: the `Display` of `urbd_protocol`'s state enums); the daemon fills them.
//! Generation UUIDs are hex strings: `"0x"` and 16 lower-case digits (see [`format_uuid`]).

use serde::{Deserialize, Serialize};

/// The state of one resource on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    /// Resource name.
    pub resource: String,
    /// This node's name.
    pub node: String,
    /// "Primary" | "Secondary".
    pub role: String,
    /// Local disk state: "UpToDate", "Inconsistent", "Outdated", "Consistent", "Diskless", ….
    pub disk_state: String,
    /// Usable size of the device in bytes (what NBD clients see).
    pub size_bytes: u64,
    /// "A" | "B" | "C".
    pub protocol: String,
    /// Generation UUIDs.
    pub generation: Generation,
    /// The NBD export.
    pub nbd: NbdStatus,
    /// The peer (one entry; a list for the future and for DRBD 9 likeness).
    pub peers: Vec<PeerStatus>,
}

/// Generation UUIDs as hex strings (`"0x0000000000000004"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Generation {
    /// Current UUID.
    pub current: String,
    /// Bitmap UUID (`"0x0000000000000000"` when no bitmap is being kept for the peer).
    pub bitmap: String,
    /// History UUIDs, newest first.
    pub history: Vec<String>,
}

impl Generation {
    /// From the numeric UUIDs.
    pub fn from_uuids(current: u64, bitmap: u64, history: &[u64]) -> Self {
        Generation {
            current: format_uuid(current),
            bitmap: format_uuid(bitmap),
            history: history.iter().copied().map(format_uuid).collect(),
        }
    }
}

/// `0x` and 16 lower-case hex digits.
pub fn format_uuid(uuid: u64) -> String {
    format!("0x{uuid:016x}")
}

/// Inverse of [`format_uuid`] (also accepts upper case and fewer digits).
pub fn parse_uuid(s: &str) -> Option<u64> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The NBD export of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NbdStatus {
    /// Where the export is being served (`HOST:PORT` or `unix:/path`); `null` when not
    /// serving (Secondary).
    pub address: Option<String>,
    /// Connected NBD clients.
    pub clients: u32,
}

/// This node's view of its peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PeerStatus {
    /// The peer's node name.
    pub node: String,
    /// "StandAlone", "Connecting", "Connected", … (DRBD 9 connection states).
    pub connection_state: String,
    /// "Primary" | "Secondary" | "Unknown" (not connected).
    pub peer_role: String,
    /// The peer's disk state; "DUnknown" when not connected.
    pub peer_disk_state: String,
    /// "Off" (not connected), "Established", "SyncSource", "SyncTarget", "PausedSyncS", ….
    pub replication_state: String,
    /// Bytes marked out of sync for this peer in the bitmap.
    pub out_of_sync_bytes: u64,
    /// `100 * (1 - out_of_sync / size)`, 0.0..=100.0.
    pub percent_in_sync: f64,
    /// The running resync, else `null`.
    pub resync: Option<ResyncProgress>,
    /// A split brain was detected and is not resolved.
    pub split_brain: bool,
    /// The running online verify, else the last one since the daemon started, else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyStatus>,
    /// The last finished (or interrupted) resync since the daemon started, else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resync: Option<ResyncSummary>,
}

/// A resync that ended (`peers[].last-resync`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ResyncSummary {
    /// "SyncSource" or "SyncTarget".
    pub side: String,
    /// It finished (false: the connection was lost first).
    pub finished: bool,
    /// Checksum algorithm (`csums-alg`) if it compared digests first, else `null`.
    pub csums_alg: Option<String>,
    /// Bytes marked when it started.
    pub total_bytes: u64,
    /// Bytes brought in sync.
    pub done_bytes: u64,
    /// `ResyncData` payload bytes sent (SyncSource) or received (SyncTarget).
    pub sent_bytes: u64,
    /// Bytes found identical by checksum (nothing sent for them).
    pub in_sync_bytes: u64,
    /// How long it ran.
    pub duration_ms: u64,
}

/// An online verify (`urbdadm verify`), running or finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyStatus {
    /// Still running.
    pub running: bool,
    /// This node runs it ("VerifyS") or answers it ("VerifyT").
    pub side: String,
    /// The verified range `[start, stop)` in bytes.
    pub start_bytes: u64,
    /// End of the range (exclusive).
    pub stop_bytes: u64,
    /// Compared part of the range, 0.0..=100.0.
    pub done_percent: f64,
    /// Current rate (VerifyS; 0 on VerifyT or when finished).
    pub rate_bytes_per_s: u64,
    /// Bytes found different so far (marked out of sync on both nodes).
    pub out_of_sync_found_bytes: u64,
}

/// Progress of a resync (or online verify).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ResyncProgress {
    /// Done part of this resync, 0.0..=100.0 (DRBD's `done:`).
    pub done_percent: f64,
    /// Current rate.
    pub rate_bytes_per_s: u64,
    /// Estimated seconds to go; `null` when unknown (rate 0).
    pub eta_s: Option<u64>,
    /// `ResyncData` payload bytes sent (SyncSource) or received (SyncTarget) so far.
    #[serde(default)]
    pub sent_bytes: u64,
    /// Bytes found identical by checksum so far (`csums-alg`; nothing sent for them).
    #[serde(default)]
    pub in_sync_bytes: u64,
}

impl PeerStatus {
    /// A peer not connected (connection state as given, everything else unknown).
    pub fn disconnected(node: &str, connection_state: &str) -> Self {
        PeerStatus {
            node: node.to_string(),
            connection_state: connection_state.to_string(),
            peer_role: "Unknown".to_string(),
            peer_disk_state: "DUnknown".to_string(),
            replication_state: "Off".to_string(),
            out_of_sync_bytes: 0,
            percent_in_sync: 100.0,
            resync: None,
            split_brain: false,
            verify: None,
            last_resync: None,
        }
    }

    /// Connected (`connection-state` "Connected").
    pub fn is_connected(&self) -> bool {
        self.connection_state == "Connected"
    }

    /// Connected, no resync pending or running, and the peer's disk UpToDate.
    pub fn is_in_sync(&self) -> bool {
        self.is_connected()
            && self.replication_state == "Established"
            && self.peer_disk_state == "UpToDate"
            && self.out_of_sync_bytes == 0
    }
}

impl Status {
    /// Every peer connected.
    pub fn all_connected(&self) -> bool {
        !self.peers.is_empty() && self.peers.iter().all(PeerStatus::is_connected)
    }

    /// Local disk UpToDate and every peer [`PeerStatus::is_in_sync`].
    pub fn all_in_sync(&self) -> bool {
        self.disk_state == "UpToDate"
            && !self.peers.is_empty()
            && self.peers.iter().all(PeerStatus::is_in_sync)
    }
}
