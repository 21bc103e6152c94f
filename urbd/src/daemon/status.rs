//! `status` and `events` as the operator sees them, built from the core's state.

use std::collections::VecDeque;

use urbd_protocol::ConnectionState;
use urbd_replicator::core::{Core, Event};

use crate::control::{Event as Ev, EventObject, EventWhat};
use crate::control::{
    Generation, NbdStatus, PeerStatus, ResyncProgress, ResyncSummary, Status, VerifyStatus,
};

/// The fixed facts of the resource, and resync rate samples.
pub struct StatusInfo {
    pub resource: String,
    pub node: String,
    pub peer: String,
    pub protocol: String,
    pub nbd_address: String,
    /// (time ms, done bytes) samples over the last few seconds.
    samples: VecDeque<(u64, u64)>,
}

const RATE_WINDOW_MS: u64 = 5000;

impl StatusInfo {
    pub fn new(
        resource: &str,
        node: &str,
        peer: &str,
        protocol: &str,
        nbd_address: &str,
    ) -> StatusInfo {
        StatusInfo {
            resource: resource.into(),
            node: node.into(),
            peer: peer.into(),
            protocol: protocol.into(),
            nbd_address: nbd_address.into(),
            samples: VecDeque::new(),
        }
    }

    pub fn sample_resync(&mut self, now_ms: u64, progress: Option<(u64, u64)>) {
        match progress {
            None => self.samples.clear(),
            Some((done, _)) => {
                self.samples.push_back((now_ms, done));
                while self
                    .samples
                    .front()
                    .is_some_and(|s| now_ms - s.0 > RATE_WINDOW_MS)
                {
                    self.samples.pop_front();
                }
            }
        }
    }

    fn rate_bytes_per_s(&self) -> u64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1.saturating_sub(a.1)) * 1000 / (b.0 - a.0),
            _ => 0,
        }
    }

    pub fn status(&self, core: &Core) -> Status {
        let size_bytes = core.config().data_size_bytes;
        let oos = core.out_of_sync_bytes();
        let conn = core.connection_state();
        let stats = core.resync_stats();
        let resync = core.resync_progress().map(|(done, total)| {
            let rate = self.rate_bytes_per_s();
            let left = total.saturating_sub(done);
            let counters = stats.filter(|s| s.running);
            ResyncProgress {
                sent_bytes: counters.map_or(0, |s| s.sent_bytes),
                in_sync_bytes: counters.map_or(0, |s| s.in_sync_bytes),
                done_percent: if total == 0 {
                    100.0
                } else {
                    round2(done as f64 * 100.0 / total as f64)
                },
                rate_bytes_per_s: rate,
                eta_s: (rate > 0).then(|| left / rate),
            }
        });
        let peer = core.peer();
        let uuids = core.uuids();
        Status {
            resource: self.resource.clone(),
            node: self.node.clone(),
            role: core.role().to_string(),
            disk_state: core.disk_state().to_string(),
            size_bytes,
            protocol: self.protocol.clone(),
            generation: Generation::from_uuids(uuids.current, uuids.bitmap, &uuids.history),
            nbd: NbdStatus {
                address: (core.role() == urbd_protocol::Role::Primary)
                    .then(|| self.nbd_address.clone()),
                clients: core.clients(),
            },
            peers: vec![PeerStatus {
                node: self.peer.clone(),
                connection_state: conn.to_string(),
                peer_role: peer.map_or("Unknown".into(), |p| p.role.to_string()),
                peer_disk_state: peer.map_or("DUnknown".into(), |p| p.disk.to_string()),
                replication_state: core.replication_state().to_string(),
                out_of_sync_bytes: oos,
                percent_in_sync: round2(100.0 - oos as f64 * 100.0 / size_bytes.max(1) as f64),
                resync,
                split_brain: core.split_brain(),
                verify: core.verify_progress().map(|v| VerifyStatus {
                    running: v.running,
                    side: if v.source { "VerifyS" } else { "VerifyT" }.into(),
                    start_bytes: v.start_bytes,
                    stop_bytes: v.stop_bytes,
                    done_percent: if v.total_bytes == 0 {
                        100.0
                    } else {
                        round2(v.done_bytes as f64 * 100.0 / v.total_bytes as f64)
                    },
                    rate_bytes_per_s: if v.running && v.source {
                        self.rate_bytes_per_s()
                    } else {
                        0
                    },
                    out_of_sync_found_bytes: v.found_bytes,
                }),
                last_resync: stats.filter(|s| !s.running).map(|s| ResyncSummary {
                    side: if s.source { "SyncSource" } else { "SyncTarget" }.into(),
                    finished: s.finished,
                    csums_alg: s.csums.map(|a| a.to_string()),
                    total_bytes: s.total_bytes,
                    done_bytes: s.done_bytes,
                    sent_bytes: s.sent_bytes,
                    in_sync_bytes: s.in_sync_bytes,
                    duration_ms: s.elapsed_ms,
                }),
            }],
        }
    }

    /// One event line (JSON) for `urbdadm events`.
    pub fn event_line(&self, e: &Event, core: &Core) -> String {
        let r = &self.resource;
        let ev = match e {
            Event::Role(role) => {
                Ev::new(EventWhat::Change, EventObject::Resource, r).role(&role.to_string())
            }
            Event::Disk(d) => {
                Ev::new(EventWhat::Change, EventObject::Device, r).disk(&d.to_string())
            }
            Event::PeerRole(role) => Ev::new(EventWhat::Change, EventObject::Connection, r)
                .peer_node(&self.peer)
                .peer_role(&role.to_string()),
            Event::PeerDisk(d) => Ev::new(EventWhat::Change, EventObject::PeerDevice, r)
                .peer_node(&self.peer)
                .peer_disk(&d.to_string()),
            Event::Connection(c) => Ev::new(EventWhat::Change, EventObject::Connection, r)
                .peer_node(&self.peer)
                .connection(&c.to_string()),
            Event::Replication(s) => Ev::new(EventWhat::Change, EventObject::PeerDevice, r)
                .peer_node(&self.peer)
                .replication(&s.to_string())
                .out_of_sync_bytes(core.out_of_sync_bytes()),
            Event::ResyncProgress {
                done_bytes,
                total_bytes,
            } => {
                let done = if *total_bytes == 0 {
                    100.0
                } else {
                    round2(*done_bytes as f64 * 100.0 / *total_bytes as f64)
                };
                Ev::new(EventWhat::Change, EventObject::PeerDevice, r)
                    .peer_node(&self.peer)
                    .replication(&core.replication_state().to_string())
                    .done(done)
                    .out_of_sync_bytes(core.out_of_sync_bytes())
            }
            Event::VerifyProgress {
                done_bytes,
                total_bytes,
                ..
            } => {
                let done = if *total_bytes == 0 {
                    100.0
                } else {
                    round2(*done_bytes as f64 * 100.0 / *total_bytes as f64)
                };
                Ev::new(EventWhat::Change, EventObject::PeerDevice, r)
                    .peer_node(&self.peer)
                    .replication(&core.replication_state().to_string())
                    .done(done)
                    .out_of_sync_bytes(core.out_of_sync_bytes())
            }
            Event::SplitBrain => Ev::new(EventWhat::Change, EventObject::Connection, r)
                .peer_node(&self.peer)
                .split_brain(true),
            Event::Message(m) => {
                let mut ev = Ev::new(EventWhat::Call, EventObject::Helper, r);
                ev.helper = Some(m.clone());
                ev
            }
        };
        ev.to_line().trim_end().to_owned()
    }

    /// The `exists` lines a new `events` subscriber starts with.
    pub fn initial_events(&self, core: &Core) -> Vec<String> {
        let r = &self.resource;
        let peer = core.peer();
        let conn = core.connection_state();
        let mut out = vec![
            Ev::new(EventWhat::Exists, EventObject::Resource, r).role(&core.role().to_string()),
            Ev::new(EventWhat::Exists, EventObject::Device, r)
                .disk(&core.disk_state().to_string())
                .size_bytes(core.config().data_size_bytes),
            Ev::new(EventWhat::Exists, EventObject::Connection, r)
                .peer_node(&self.peer)
                .connection(&conn.to_string())
                .peer_role(&peer.map_or("Unknown".into(), |p| p.role.to_string())),
        ];
        if conn == ConnectionState::Connected {
            out.push(
                Ev::new(EventWhat::Exists, EventObject::PeerDevice, r)
                    .peer_node(&self.peer)
                    .replication(&core.replication_state().to_string())
                    .peer_disk(&peer.map_or("DUnknown".into(), |p| p.disk.to_string()))
                    .out_of_sync_bytes(core.out_of_sync_bytes()),
            );
        }
        out.push(Ev::end_of_initial_state());
        out.into_iter()
            .map(|e| e.to_line().trim_end().to_owned())
            .collect()
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
