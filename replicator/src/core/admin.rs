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
            AdminCmd::Invalidate => Some(self.admin_invalidate(true)),
            AdminCmd::InvalidateRemote => Some(self.admin_invalidate(false)),
            AdminCmd::PauseSync => Some(self.admin_pause_sync()),
            AdminCmd::ResumeSync => Some(self.admin_resume_sync()),
            AdminCmd::Verify {
                start_bytes,
                stop_bytes,
                repair,
            } => Some(self.admin_verify(start_bytes, stop_bytes, repair)),
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
        ) && !mutated!(PromoteSyncTarget)
        {
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
        if self.repl == ReplicationState::VerifyT {
            let peer = &self.cfg.peer_name;
            return Some(Err(format!(
                "peer {peer} is running an online verify against this node (VerifyT); wait for it to finish"
            )));
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
        let sync_target_bug = mutated!(PromoteSyncTarget)
            && matches!(
                self.repl,
                ReplicationState::SyncTarget | ReplicationState::PausedSyncT
            );
        if self.disk != DiskState::UpToDate && !force && !sync_target_bug {
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
        let inflight =
            self.client_writes.len() + self.waiting_clients.len() + self.client_flushes.len();
        if inflight > 0 {
            // A demotion never leaves application writes behind it (urbd-sim seed 3: writes
            // queued on a conflict started after the demotion, on a Secondary).
            return Some(Err(format!(
                "{inflight} application request(s) still in flight; retry in a moment"
            )));
        }
        self.set_role(Role::Secondary);
        // The bits set while Primary must be durable before the superblock stops saying
        // "Primary": after that a crash no longer resyncs the activity log (urbd-sim seed 13
        // of the first runs: a write while disconnected, demote, crash → silent divergence).
        self.emit(Action::Persist(Persist::Bitmap));
        // And so must the data written while Primary: until this flush completes the
        // superblock keeps saying "Primary", so a crash still resyncs the activity log
        // (urbd-sim seed 37: demote, crash, writes lost from the volatile cache).
        self.demote_flush_pending = true;
        self.emit(Action::Local {
            io: LocalIo::RoleFlush,
            op: LocalOp::Flush,
        });
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
        let secondary_dirty = self.role != Role::Primary && self.peer_cache_dirty();
        if self.conn == ConnectionState::Connected
            && (!self.peer_volatile.is_empty() || secondary_dirty)
        {
            // A graceful disconnect: first the peer flushes what it acknowledged, so that only
            // the writes of the disconnected period need a resync later; on a Secondary, the
            // Primary's next barrier covers what this node acknowledged. Bounded by timeout-ms.
            self.disconnect_deadline_ms = Some(self.now_ms + self.cfg.timeout_ms);
            self.maybe_send_barrier();
            return None;
        }
        self.finish_disconnect();
        Some(Ok(()))
    }

    /// The operator's disconnect, now.
    pub(super) fn finish_disconnect(&mut self) {
        self.disconnect_deadline_ms = None;
        if self.conn == ConnectionState::Connected {
            self.drop_peer("disconnected by the operator");
            self.emit(Action::Disconnect {
                reason: "disconnected by the operator".into(),
            });
        }
        self.set_conn(ConnectionState::StandAlone);
    }

    /// A graceful disconnect waits for the peer's flush: done, or out of time?
    pub(super) fn check_graceful_disconnect(&mut self) {
        let Some(deadline) = self.disconnect_deadline_ms else {
            return;
        };
        let secondary_dirty = self.role != Role::Primary && self.peer_cache_dirty();
        if (self.peer_volatile.is_empty() && !secondary_dirty) || self.now_ms >= deadline {
            self.finish_disconnect();
            self.emit(Action::AdminReply(Ok(())));
        } else {
            self.maybe_send_barrier();
        }
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

    /// `invalidate` (`local`: discard our data, full resync from the peer) and
    /// `invalidate-remote` (discard the peer's data, full resync to it), PROTOCOL.md §7.6.3.
    fn admin_invalidate(&mut self, local: bool) -> Result<(), String> {
        let peer_name = self.cfg.peer_name.clone();
        let Some(peer) = self
            .peer
            .filter(|_| self.conn == ConnectionState::Connected)
        else {
            return Err(format!(
                "not connected to {peer_name} (connection {}): a full resync needs the peer; `urbdadm connect` first",
                self.conn
            ));
        };
        if self.repl != ReplicationState::Established {
            return Err(format!(
                "replication is {}: wait for it to finish (`urbdadm wait-sync`)",
                self.repl
            ));
        }
        if local {
            if self.role == Role::Primary {
                return Err("this node is Primary: a Primary cannot discard its data (SyncTarget); demote it first (`urbdadm secondary`)".into());
            }
            if peer.disk != DiskState::UpToDate {
                return Err(format!(
                    "peer {peer_name}'s disk is {}: only an UpToDate disk can be the SyncSource",
                    peer.disk
                ));
            }
            self.event(Event::Message(format!(
                "invalidate: discarding our data, full resync from {peer_name}"
            )));
            self.send_data(PeerMsg::ResyncStart {
                full: true,
                sender_is_target: true,
            });
            self.start_sync_target(true);
            self.send_state();
        } else {
            if peer.role == Role::Primary {
                return Err(format!(
                    "peer {peer_name} is Primary: a Primary cannot discard its data (SyncTarget); demote it first"
                ));
            }
            if self.disk != DiskState::UpToDate {
                return Err(format!(
                    "local disk is {}: only an UpToDate disk can be the SyncSource",
                    self.disk
                ));
            }
            self.event(Event::Message(format!(
                "invalidate-remote: discarding {peer_name}'s data, full resync to it"
            )));
            self.send_data(PeerMsg::ResyncStart {
                full: true,
                sender_is_target: false,
            });
            if let Some(p) = self.peer.as_mut() {
                p.disk = DiskState::Inconsistent;
            }
            self.event(Event::PeerDisk(DiskState::Inconsistent));
            self.start_sync_source(true);
        }
        Ok(())
    }

    fn admin_pause_sync(&mut self) -> Result<(), String> {
        if self.resync.is_none() {
            return Err(format!(
                "no resync is running (replication is {})",
                self.repl
            ));
        }
        if !self.sync_paused_here {
            self.sync_paused_here = true;
            self.send_data(PeerMsg::SyncPause { paused: true });
            self.update_sync_repl();
        }
        Ok(())
    }

    fn admin_resume_sync(&mut self) -> Result<(), String> {
        if self.resync.is_none() {
            return Err(format!(
                "no resync is running (replication is {})",
                self.repl
            ));
        }
        if !self.sync_paused_here {
            return Err(if self.sync_paused_by_peer {
                format!(
                    "the resync was paused on {}: run `urbdadm resume-sync` there",
                    self.cfg.peer_name
                )
            } else {
                "the resync is not paused".into()
            });
        }
        self.sync_paused_here = false;
        self.send_data(PeerMsg::SyncPause { paused: false });
        self.update_sync_repl();
        self.pump_resync();
        Ok(())
    }

    pub(super) fn on_peer_admin(&mut self, msg: PeerMsg) {
        match msg {
            PeerMsg::PromoteRequest => {
                // Both asked at once: the lower node name wins (PROTOCOL.md §7.8).
                let we_win = self.promoting.is_some() && self.cfg.node_name < self.cfg.peer_name;
                // A verify run by this node must not see the peer start writing (§7.7).
                let ok = self.role != Role::Primary && !we_win && self.verify.is_none();
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
                // The peer must learn that our disk is UpToDate now (its wait-sync waits for it).
                self.send_state();
            }
            _ => unreachable!("not an admin message"),
        }
    }
}
