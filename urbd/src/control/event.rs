//! [`Event`]: one state change, streamed by the `events` request; modelled on
//! `drbdsetup events2`.
//!
//! Text form (what `urbdadm events` prints), one line per event, stable and greppable:
//! `WHAT OBJECT name:RES [peer-node:NODE] key:value…`, keys always in this order: `role`,
//! `disk`, `size-bytes`, `connection`, `peer-role`, `replication`, `peer-disk`, `done`,
//! `out-of-sync-bytes`, `split-brain`, `helper`, `exit-code`; only the keys the event carries.
//!
//! ```text
//! exists resource name:r0 role:Secondary
//! exists device name:r0 disk:UpToDate size-bytes:1073741824
//! exists connection name:r0 peer-node:beta connection:Connected peer-role:Secondary
//! exists peer-device name:r0 peer-node:beta replication:Established peer-disk:UpToDate
//! exists -
//! change resource name:r0 role:Primary
//! change peer-device name:r0 peer-node:beta replication:SyncSource done:45.20
//! call helper name:r0 peer-node:beta helper:split-brain
//! response helper name:r0 peer-node:beta helper:split-brain exit-code:0
//! ```
//!
//! JSON form (the wire, and `urbdadm events --json`): the same keys, absent ones omitted:
//! `{"what":"change","object":"peer-device","name":"r0","peer-node":"beta",
//! "replication":"SyncSource","done":45.2}`. `exists -` is `{"what":"exists","object":"-"}`.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventWhat {
    /// Part of the initial state dump sent on subscription.
    Exists,
    /// An object appeared (e.g. the connection after `connect`).
    Create,
    /// Some of the object's fields changed (only those are given).
    Change,
    /// An object went away (e.g. the resource on `down`).
    Destroy,
    /// A handler was started.
    Call,
    /// A handler finished (`exit-code`).
    Response,
}

/// What it happened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventObject {
    /// The resource: `role`.
    Resource,
    /// The local disk: `disk`, `size-bytes`.
    Device,
    /// The connection to the peer: `connection`, `peer-role`.
    Connection,
    /// Replication to the peer: `replication`, `peer-disk`, `done`, `out-of-sync-bytes`,
    /// `split-brain`.
    PeerDevice,
    /// A handler (`[handlers]` in the config): `helper`, `exit-code`.
    Helper,
    /// End of the initial state dump (`exists -`).
    #[serde(rename = "-")]
    EndOfInitialState,
}

impl EventWhat {
    fn as_str(self) -> &'static str {
        match self {
            EventWhat::Exists => "exists",
            EventWhat::Create => "create",
            EventWhat::Change => "change",
            EventWhat::Destroy => "destroy",
            EventWhat::Call => "call",
            EventWhat::Response => "response",
        }
    }
}

impl EventObject {
    fn as_str(self) -> &'static str {
        match self {
            EventObject::Resource => "resource",
            EventObject::Device => "device",
            EventObject::Connection => "connection",
            EventObject::PeerDevice => "peer-device",
            EventObject::Helper => "helper",
            EventObject::EndOfInitialState => "-",
        }
    }
}

/// One event. Build with [`Event::new`] and the setters:
/// `Event::new(EventWhat::Change, EventObject::Resource, "r0").role("Primary")`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Event {
    /// What happened.
    pub what: EventWhat,
    /// To what.
    pub object: EventObject,
    /// The resource (absent only for the end-of-initial-state marker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The peer's node name (connection, peer-device, helper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_node: Option<String>,
    /// This node's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// This node's disk state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// The device size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Connection state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// The peer's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_role: Option<String>,
    /// Replication state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<String>,
    /// The peer's disk state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_disk: Option<String>,
    /// Resync progress in percent (text: two decimals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<f64>,
    /// Bytes out of sync with the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_sync_bytes: Option<u64>,
    /// Split brain detected (text: yes/no).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_brain: Option<bool>,
    /// Handler name (`split-brain`, `fence-peer`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper: Option<String>,
    /// Handler exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty => $conv:expr;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $field(mut self, value: $ty) -> Self {
                #[allow(clippy::redundant_closure_call)]
                {
                    self.$field = Some(($conv)(value));
                }
                self
            }
        )*
    };
}

impl Event {
    /// An event about resource `name` with no fields yet.
    pub fn new(what: EventWhat, object: EventObject, name: &str) -> Self {
        Event {
            what,
            object,
            name: Some(name.to_string()),
            peer_node: None,
            role: None,
            disk: None,
            size_bytes: None,
            connection: None,
            peer_role: None,
            replication: None,
            peer_disk: None,
            done: None,
            out_of_sync_bytes: None,
            split_brain: None,
            helper: None,
            exit_code: None,
        }
    }

    /// `exists -`: the initial state dump is complete.
    pub fn end_of_initial_state() -> Self {
        Event {
            name: None,
            ..Event::new(EventWhat::Exists, EventObject::EndOfInitialState, "")
        }
    }

    setters! {
        /// Sets `peer-node`.
        peer_node: &str => str::to_string;
        /// Sets `role`.
        role: &str => str::to_string;
        /// Sets `disk`.
        disk: &str => str::to_string;
        /// Sets `size-bytes`.
        size_bytes: u64 => std::convert::identity;
        /// Sets `connection`.
        connection: &str => str::to_string;
        /// Sets `peer-role`.
        peer_role: &str => str::to_string;
        /// Sets `replication`.
        replication: &str => str::to_string;
        /// Sets `peer-disk`.
        peer_disk: &str => str::to_string;
        /// Sets `done` (percent).
        done: f64 => std::convert::identity;
        /// Sets `out-of-sync-bytes`.
        out_of_sync_bytes: u64 => std::convert::identity;
        /// Sets `split-brain`.
        split_brain: bool => std::convert::identity;
        /// Sets `helper`.
        helper: &str => str::to_string;
        /// Sets `exit-code`.
        exit_code: i32 => std::convert::identity;
    }

    /// The event as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        super::to_line(self)
    }

    /// The text form, without newline (see the module docs).
    pub fn to_text(&self) -> String {
        self.to_string()
    }
}

/// A value without whitespace (the text form splits on spaces).
fn word(s: &str) -> String {
    if s.is_empty() {
        return "-".to_string();
    }
    s.chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = format!("{} {}", self.what.as_str(), self.object.as_str());
        let mut kv = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                let _ = write!(out, " {key}:{v}");
            }
        };
        kv("name", self.name.as_deref().map(word));
        kv("peer-node", self.peer_node.as_deref().map(word));
        kv("role", self.role.as_deref().map(word));
        kv("disk", self.disk.as_deref().map(word));
        kv("size-bytes", self.size_bytes.map(|v| v.to_string()));
        kv("connection", self.connection.as_deref().map(word));
        kv("peer-role", self.peer_role.as_deref().map(word));
        kv("replication", self.replication.as_deref().map(word));
        kv("peer-disk", self.peer_disk.as_deref().map(word));
        kv("done", self.done.map(|v| format!("{v:.2}")));
        kv(
            "out-of-sync-bytes",
            self.out_of_sync_bytes.map(|v| v.to_string()),
        );
        kv(
            "split-brain",
            self.split_brain
                .map(|v| if v { "yes" } else { "no" }.to_string()),
        );
        kv("helper", self.helper.as_deref().map(word));
        kv("exit-code", self.exit_code.map(|v| v.to_string()));
        f.write_str(&out)
    }
}
