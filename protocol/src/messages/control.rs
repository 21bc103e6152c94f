//! State change requests and disconnect (PROTOCOL.md §4.24–4.26, §7.8).

use bytes::{BufMut, BytesMut};

use crate::wire::Reader;
use crate::wire_enum::wire_enum;
use crate::{DiskState, Error, Role};

const CHANGE_ROLE: u8 = 1 << 0;
const CHANGE_DISK: u8 = 1 << 1;

/// A request to change the cluster-wide state, e.g. "I want to become Primary" or "mark my
/// disk Inconsistent" (§4.24). The peer answers with `StateChangeReply`; request id = `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateChange {
    /// Requested new role of the sender, if the role is to change (never Unknown).
    pub role: Option<Role>,
    /// Requested new disk state of the sender, if it is to change (never DUnknown).
    pub disk: Option<DiskState>,
}

impl StateChange {
    pub(crate) const LEN_BYTES: usize = 3;

    pub(crate) fn put(&self, out: &mut BytesMut) {
        let mut mask = 0;
        if self.role.is_some() {
            mask |= CHANGE_ROLE;
        }
        if self.disk.is_some() {
            mask |= CHANGE_DISK;
        }
        out.put_u8(mask);
        out.put_u8(self.role.map_or(0, Role::to_wire));
        out.put_u8(self.disk.map_or(0, DiskState::to_wire));
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidField {
            field: "StateChange",
            reason,
        };
        let mask = r.u8("change mask")?;
        let role_value = r.u8("role")?;
        let disk_value = r.u8("disk")?;
        if mask & !(CHANGE_ROLE | CHANGE_DISK) != 0 {
            return Err(invalid("undefined bits in the change mask"));
        }
        if mask == 0 {
            return Err(invalid("requests no change"));
        }
        let role = if mask & CHANGE_ROLE != 0 {
            match Role::try_from(role_value)? {
                Role::Unknown => return Err(invalid("role Unknown cannot be requested")),
                role => Some(role),
            }
        } else if role_value != 0 {
            return Err(invalid("role given but not marked in the change mask"));
        } else {
            None
        };
        let disk = if mask & CHANGE_DISK != 0 {
            match DiskState::try_from(disk_value)? {
                DiskState::DUnknown => return Err(invalid("disk DUnknown cannot be requested")),
                disk => Some(disk),
            }
        } else if disk_value != 0 {
            return Err(invalid("disk given but not marked in the change mask"));
        } else {
            None
        };
        Ok(StateChange { role, disk })
    }
}

wire_enum! {
    /// Why a state change was refused (§4.25). After DRBD's `SS_*` codes.
    pub enum StateChangeRefusal: u16, kind = "state change refusal" {
        /// The change would make both nodes Primary.
        TwoPrimaries = 1 => "two-primaries",
        /// Promotion needs an UpToDate disk on the promoting node.
        NoUpToDateDisk = 2 => "no-up-to-date-disk",
        /// Not allowed while a resync runs.
        ResyncRunning = 3 => "resync-running",
        /// Another state change is in progress; retry.
        ConcurrentChange = 4 => "concurrent-change",
        /// The device is open (e.g. demotion while in use).
        DeviceInUse = 5 => "device-in-use",
        /// The change would leave a disk below Outdated where that is not allowed.
        LowerThanOutdated = 6 => "lower-than-outdated",
        /// The receiver does not implement this change.
        Unsupported = 7 => "unsupported",
    }
}

/// The result of a state change request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateChangeOutcome {
    /// Done (wire value 0).
    Accepted,
    /// Refused for a reason (wire value = the reason's code).
    Refused(StateChangeRefusal),
}

/// The answer to a `StateChange` (§4.25).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateChangeReply {
    /// The `seq` of the `StateChange` frame.
    pub request_id: u64,
    /// Accepted or refused.
    pub outcome: StateChangeOutcome,
}

impl StateChangeReply {
    pub(crate) const LEN_BYTES: usize = 10;

    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u64(self.request_id);
        out.put_u16(match self.outcome {
            StateChangeOutcome::Accepted => 0,
            StateChangeOutcome::Refused(reason) => reason.to_wire(),
        });
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        let request_id = r.u64("request_id")?;
        let outcome = match r.u16("outcome")? {
            0 => StateChangeOutcome::Accepted,
            code => StateChangeOutcome::Refused(StateChangeRefusal::try_from(code)?),
        };
        Ok(StateChangeReply {
            request_id,
            outcome,
        })
    }
}

wire_enum! {
    /// Why the sender is closing the connection (§4.26).
    pub enum DisconnectReason: u16, kind = "disconnect reason" {
        /// `disconnect` / `down` by the operator, or daemon shutdown.
        Operator = 1 => "operator",
        /// Split brain detected and not resolved automatically (§7.4).
        SplitBrain = 2 => "split-brain",
        /// The generation UUIDs share no history (§7.2, result −1000).
        UnrelatedData = 3 => "unrelated-data",
        /// The peer broke the protocol (bad frame, unexpected message).
        ProtocolError = 4 => "protocol-error",
        /// Authentication failed.
        AuthFailed = 5 => "auth-failed",
        /// `Params` or `Hello` disagree (protocol, granularity, resource, version).
        ConfigMismatch = 6 => "config-mismatch",
        /// The sender would have to become SyncTarget while Primary (§7.3).
        RrConflict = 7 => "rr-conflict",
        /// The sender's disk failed and it cannot continue as a peer.
        DiskFailed = 8 => "disk-failed",
    }
}

/// The sender is about to close both connections (§4.26).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Disconnect {
    /// Why.
    pub reason: DisconnectReason,
}

impl Disconnect {
    pub(crate) fn put(&self, out: &mut BytesMut) {
        out.put_u16(self.reason.to_wire());
    }

    pub(crate) fn take(r: &mut Reader) -> Result<Self, Error> {
        Ok(Disconnect {
            reason: DisconnectReason::try_from(r.u16("reason")?)?,
        })
    }
}
