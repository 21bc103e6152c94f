//! Operator commands and their refusal rules (PROTOCOL.md §7.8, drbdadm semantics). A refused
//! command changes nothing and answers one line: why, and what to do.

use urbd_protocol::{ConnectionState, DiskState, ReplicationState, Role};

use super::*;

impl Core {
    pub(super) fn on_admin(&mut self, cmd: AdminCmd) {
        let reply = match cmd {
            AdminCmd::Primary { force } => self.admin_primary(force),
            AdminCmd::Secondary { force } => self.admin_secondary(force),
            AdminCmd::Connect { discard_my_data } => self.admin_connect(discard_my_data),
            AdminCmd::Disconnect => self.admin_disconnect(),
            AdminCmd::NewCurrentUuid { clear_bitmap } => self.admin_new_current_uuid(clear_bitmap),
        };
        if let Some(reply) = reply {
            self.emit(Action::AdminReply(reply));
        }
    }

    /// `None` when the answer comes later (a promotion waiting for the peer's consent).
    fn admin_primary(&mut self, force: bool) -> Option<Result<(), String>> {
        if self.role == Role::Primary {
            return Some(Ok(()));
        }
        if self.promoting.is_some() {
            return Some(Err("a promotion is already in progress".into()));
        }
        if matches!(
            self.repl,
            ReplicationState::SyncTarget | ReplicationState::PausedSyncT
        ) {
            return Some(Err("this node is SyncTarget (its disk is being resynced); wait for `urbdadm wait-sync` to finish".into()));
        }
        if let Some(p) = &self.peer {
            if p.role == Role::Primary {
                let peer = &self.cfg.peer_name;
                return Some(Err(format!(
                    "peer {peer} is Primary; demote it first (`urbdadm secondary` on {peer})"
                )));
            }
        }
        if matches!(
            self.disk,
            DiskState::Diskless | DiskState::Failed | DiskState::Attaching
        ) {
            return Some(Err(format!(
                "local disk is {}: attach a working disk first",
                self.disk
            )));
        }
        if self.disk != DiskState::UpToDate && !force {
            return Some(Err(format!(
                "local disk is {}; only an UpToDate disk can be promoted (`primary --force` makes \
                 this node's data the truth and overwrites the peer's)",
                self.disk
            )));
        }
        if self.conn == ConnectionState::Connected {
            self.promoting = Some(force);
            self.send_data(PeerMsg::PromoteRequest);
            return None;
        }
        self.promote(force);
        Some(Ok(()))
    }

    fn promote(&mut self, force: bool) {
        let connected = self.conn == ConnectionState::Connected;
        if force || !connected {
            // Forced promotion, or promotion while the peer is away: a new data generation.
            if force || self.uuids.bitmap == 0 {
                let fresh = self.fresh_uuid();
                self.new_current_uuid(fresh);
            }
        }
        if force {
            self.set_disk(DiskState::UpToDate);
        }
        self.set_role(Role::Primary);
        self.uuids.current |= 1;
        self.crashed_primary = false;
        self.persist_superblock();
        self.send_state();
        let peer_needs_full = self
            .peer
            .is_some_and(|p| matches!(p.disk, DiskState::Inconsistent | DiskState::Outdated));
        if force && connected && peer_needs_full && self.repl == ReplicationState::Established {
            self.start_sync_source(true);
        }
    }

    fn admin_secondary(&mut self, force: bool) -> Option<Result<(), String>> {
        if self.role != Role::Primary {
            return Some(Ok(()));
        }
        if self.clients > 0 && !force {
            return Some(Err(format!(
                "{} NBD client(s) still attached; disconnect them first (or `secondary --force`)",
                self.clients
            )));
        }
        self.set_role(Role::Secondary);
        self.persist_superblock();
        self.send_state();
        Some(Ok(()))
    }

    fn admin_connect(&mut self, discard_my_data: bool) -> Option<Result<(), String>> {
        if self.conn != ConnectionState::StandAlone {
            return Some(Err(format!(
                "already {}; `urbdadm disconnect` first",
                self.conn
            )));
        }
        self.standalone_sticky = false;
        self.split_brain = false;
        self.discard_my_data = discard_my_data;
        self.set_conn(ConnectionState::Connecting);
        self.emit(Action::StartConnecting);
        Some(Ok(()))
    }

    fn admin_disconnect(&mut self) -> Option<Result<(), String>> {
        self.standalone_sticky = true;
        if self.conn == ConnectionState::Connected {
            self.drop_peer("disconnected by the operator");
            self.emit(Action::Disconnect {
                reason: "disconnected by the operator".into(),
            });
        }
        self.set_conn(ConnectionState::StandAlone);
        Some(Ok(()))
    }

    fn admin_new_current_uuid(&mut self, clear_bitmap: bool) -> Option<Result<(), String>> {
        if clear_bitmap {
            let fresh_pair = self.just_created()
                && self
                    .peer
                    .is_some_and(|p| p.uuids.current & !1 == urbd_protocol::UUID_JUST_CREATED)
                && self.repl == ReplicationState::Established;
            if !fresh_pair {
                return Some(Err(
                    "--clear-bitmap skips the initial sync: only on two freshly created, connected disks".into(),
                ));
            }
            let fresh = self.fresh_uuid();
            self.uuids = urbd_protocol::GenerationUuids {
                current: fresh,
                bitmap: 0,
                history: [0, 0],
            };
            self.bitmap.clear_all();
            self.set_disk(DiskState::UpToDate);
            self.persist_superblock();
            self.emit(Action::Persist(Persist::Bitmap));
            self.send_data(PeerMsg::NewCurrentUuid { uuid: fresh });
            self.send_state();
            return Some(Ok(()));
        }
        if self.disk != DiskState::UpToDate {
            return Some(Err(format!(
                "local disk is {}: a new generation needs UpToDate data",
                self.disk
            )));
        }
        let fresh = self.fresh_uuid();
        self.new_current_uuid(fresh);
        self.persist_superblock();
        self.send_state();
        Some(Ok(()))
    }

    pub(super) fn on_peer_admin(&mut self, msg: PeerMsg) {
        match msg {
            PeerMsg::PromoteRequest => {
                // Both asked at once: the lower node name wins (PROTOCOL.md §7.8).
                let we_win = self.promoting.is_some() && self.cfg.node_name < self.cfg.peer_name;
                let ok = self.role != Role::Primary && !we_win;
                self.send_meta(PeerMsg::PromoteReply { ok });
            }
            PeerMsg::PromoteReply { ok } => {
                let Some(force) = self.promoting.take() else {
                    return;
                };
                if ok {
                    self.promote(force);
                    self.emit(Action::AdminReply(Ok(())));
                } else {
                    let peer = self.cfg.peer_name.clone();
                    self.emit(Action::AdminReply(Err(format!(
                        "peer {peer} is Primary or being promoted; demote it first"
                    ))));
                }
            }
            PeerMsg::NewCurrentUuid { uuid } => {
                if !self.just_created() {
                    self.emit(Action::Disconnect {
                        reason: "peer skipped the initial sync, but our disk is not fresh".into(),
                    });
                    return;
                }
                self.uuids = urbd_protocol::GenerationUuids {
                    current: uuid,
                    bitmap: 0,
                    history: [0, 0],
                };
                self.bitmap.clear_all();
                self.set_disk(DiskState::UpToDate);
                self.persist_superblock();
                self.emit(Action::Persist(Persist::Bitmap));
            }
            _ => unreachable!("not an admin message"),
        }
    }
}
