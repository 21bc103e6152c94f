//! The Primary's write path (PROTOCOL.md §5): application writes, zeroes and flushes.
//! Protocol C acks a write when the local write and the peer's WriteAck are both in; B when the
//! local write and the peer's RecvAck are; A when the local write is done and the frame was
//! handed to the transport. Whatever the protocol, a write stays tracked until the peer's
//! WriteAck: if the peer is lost first, its range is marked in the bitmap (before any client
//! sees an ack for it, since acks are actions that follow).

use urbd_protocol::{ConnectionState, DiskState, ReplicationProtocol, ReplicationState};

use super::*;

impl Core {
    /// True when application writes are mirrored to the peer right now.
    pub(super) fn replicating(&self) -> bool {
        self.conn == ConnectionState::Connected
            && matches!(
                self.repl,
                ReplicationState::Established
                    | ReplicationState::SyncSource
                    | ReplicationState::PausedSyncS
                    | ReplicationState::VerifyS
                    | ReplicationState::VerifyT
            )
            && self.peer.as_ref().is_some_and(|p| {
                matches!(
                    p.disk,
                    DiskState::UpToDate
                        | DiskState::Inconsistent
                        | DiskState::Outdated
                        | DiskState::Consistent
                )
            })
    }

    pub(super) fn refuse_client(&mut self, req: ClientRequest) {
        self.emit(Action::AckClient {
            id: req.id(),
            result: Err(IoFailure::NotPrimary),
        });
        if let ClientRequest::Write { id, .. } = req {
            self.emit(Action::Release(DataSource::Client(id)));
        }
    }

    pub(super) fn step_primary(&mut self, req: ClientRequest) {
        match req {
            ClientRequest::Flush { id } => self.start_client_flush(id),
            ClientRequest::Write {
                id,
                offset_bytes,
                len_bytes,
                ..
            }
            | ClientRequest::Zero {
                id,
                offset_bytes,
                len_bytes,
                ..
            } => {
                assert!(
                    offset_bytes + len_bytes <= self.cfg.data_size_bytes,
                    "client I/O past the end"
                );
                self.last_app_write_ms = Some(self.now_ms);
                if self.conflicts.try_start(
                    offset_bytes,
                    offset_bytes + len_bytes,
                    Owner::Client(id),
                ) {
                    self.start_client_write(req);
                } else {
                    self.waiting_clients.insert(id, req);
                }
            }
        }
    }

    fn start_client_write(&mut self, req: ClientRequest) {
        let (id, offset_bytes, len_bytes, fua, zero) = match req {
            ClientRequest::Write {
                id,
                offset_bytes,
                len_bytes,
                fua,
            } => (id, offset_bytes, len_bytes, fua, false),
            ClientRequest::Zero {
                id,
                offset_bytes,
                len_bytes,
                fua,
            } => (id, offset_bytes, len_bytes, fua, true),
            ClientRequest::Flush { .. } => unreachable!("flushes take no range"),
        };
        self.activity_log_cover(offset_bytes, len_bytes);
        let mut w = ClientWrite {
            offset_bytes,
            len_bytes,
            local_done: false,
            local_ok: false,
            peer_seq: None,
            peer_received: false,
            acked: false,
            sent_ms: self.now_ms,
        };
        if self.replicating() {
            let msg = if zero {
                PeerMsg::Zero {
                    offset_bytes,
                    len_bytes,
                    fua,
                }
            } else {
                PeerMsg::Data {
                    offset_bytes,
                    len_bytes,
                    fua,
                    source: DataSource::Client(id),
                }
            };
            let seq = self.send_data(msg);
            self.peer_pending.insert(seq, PeerPending::Client(id));
            w.peer_seq = Some(seq);
        } else {
            // The peer misses this write: mark it before anyone sees an ack.
            if !mutated!(SkipBitmapWhileDisconnected) {
                self.bitmap.set_range(offset_bytes, len_bytes);
            }
        }
        // The frame goes out first: the peer's write overlaps ours.
        let op = if zero {
            LocalOp::Zero {
                offset_bytes,
                len_bytes,
                fua,
            }
        } else {
            LocalOp::Write {
                offset_bytes,
                len_bytes,
                fua,
                source: DataSource::Client(id),
            }
        };
        self.emit(Action::Local {
            io: LocalIo::Client(id),
            op,
        });
        self.client_writes.insert(id, w);
    }

    /// Makes sure the extents a write touches are hot in the activity log, persisting the log
    /// first when one is not (after a crash, only hot extents can differ from the peer).
    fn activity_log_cover(&mut self, offset_bytes: u64, len_bytes: u64) {
        let size = self.cfg.al_extent_bytes;
        let first = offset_bytes / size;
        let last = (offset_bytes + len_bytes.max(1) - 1) / size;
        let mut changed = false;
        for extent in first..=last {
            if let Some(i) = self.al_hot.iter().position(|&e| e == extent) {
                // Most recently used at the end.
                let e = self.al_hot.remove(i);
                self.al_hot.push(e);
            } else {
                if self.al_hot.len() >= self.cfg.al_extents {
                    self.al_hot.remove(0);
                }
                self.al_hot.push(extent);
                changed = true;
            }
        }
        if changed {
            let extents = self.al_hot.clone();
            self.emit(Action::Persist(Persist::ActivityLog { extents }));
        }
    }

    pub(super) fn client_write_done(&mut self, id: u64, ok: bool) {
        let Some(w) = self.client_writes.get_mut(&id) else {
            panic!("completion for unknown client write {id}");
        };
        assert!(!w.local_done, "client write {id} completed twice");
        w.local_done = true;
        w.local_ok = ok;
        let (offset, len) = (w.offset_bytes, w.len_bytes);
        if !ok {
            // The peer may have the new data and this disk the old: mark the range, so that the
            // next resync makes the two copies equal again (never a silent divergence).
            self.bitmap.set_range(offset, len);
            self.event(Event::Message(format!(
                "local write failed at offset {offset} ({len} bytes); the range is marked out \
                 of sync"
            )));
        }
        self.maybe_finish_client_write(id);
    }

    /// Acks the client once the protocol allows, and forgets the write once the peer has it
    /// too (or is gone).
    pub(super) fn maybe_finish_client_write(&mut self, id: u64) {
        let protocol = self.cfg.protocol;
        let Some(w) = self.client_writes.get_mut(&id) else {
            return;
        };
        if !w.local_done {
            return;
        }
        let peer_ok_for_ack = match (w.peer_seq, protocol) {
            (None, _) => true,
            (Some(_), ReplicationProtocol::A) => true,
            (Some(_), ReplicationProtocol::B) => w.peer_received,
            (Some(_), ReplicationProtocol::C) => false,
        };
        if !w.acked && peer_ok_for_ack {
            w.acked = true;
            let result = if w.local_ok {
                Ok(())
            } else {
                Err(IoFailure::Io)
            };
            let w = *w;
            self.emit(Action::AckClient { id, result });
            if let Some(seq) = w.peer_seq {
                // Still waiting for the peer's WriteAck: keep the range for the bitmap.
                self.peer_pending.insert(
                    seq,
                    PeerPending::Answered {
                        offset_bytes: w.offset_bytes,
                        len_bytes: w.len_bytes,
                    },
                );
            }
            self.finish_client_write(id);
        }
    }

    fn finish_client_write(&mut self, id: u64) {
        self.client_writes.remove(&id);
        self.emit(Action::Release(DataSource::Client(id)));
        for next in self.conflicts.finish(Owner::Client(id)) {
            self.start_owner(next);
        }
        // Resync and verify hold back while writes wait (§7.6.1): go on when they no longer do.
        if self.waiting_clients.is_empty() {
            self.pump_resync();
            self.pump_verify();
        }
    }

    /// Starts an operation that was waiting behind an overlapping one.
    pub(super) fn start_owner(&mut self, owner: Owner) {
        match owner {
            Owner::Client(id) => {
                let req = self
                    .waiting_clients
                    .remove(&id)
                    .expect("waiting client request");
                self.start_client_write(req);
            }
            Owner::ResyncRead(offset) => self.start_resync_read(offset),
            Owner::VerifyS(_) | Owner::VerifyT(_) => self.start_verify_owner(owner),
            Owner::CsumT(key) => self.start_csum_digest(key),
            Owner::Peer(seq) | Owner::ResyncWrite(seq) => self.start_peer_write(seq),
        }
    }

    /// A WriteAck, RecvAck, NegAck or FlushAck from the peer.
    pub(super) fn on_peer_ack(&mut self, msg: PeerMsg) {
        match msg {
            PeerMsg::RecvAck { request_id } => {
                if let Some(PeerPending::Client(id)) = self.peer_pending.get(&request_id).copied() {
                    if let Some(w) = self.client_writes.get_mut(&id) {
                        w.peer_received = true;
                    }
                    self.maybe_finish_client_write(id);
                }
            }
            PeerMsg::WriteAck { request_id } => self.peer_write_acked(request_id, true),
            PeerMsg::NegAck { request_id } => self.peer_write_acked(request_id, false),
            PeerMsg::FlushAck { flush_id } => {
                self.peer_flushed(flush_id);
                if let Some(f) = self.client_flushes.get_mut(&flush_id) {
                    f.peer_waiting = false;
                }
                self.maybe_finish_client_flush(flush_id);
            }
            _ => unreachable!("not an ack"),
        }
    }

    fn peer_write_acked(&mut self, seq: u64, ok: bool) {
        let Some(pending) = self.peer_pending.remove(&seq) else {
            // An ack for a request we no longer track is a protocol error.
            self.emit(Action::Disconnect {
                reason: format!("peer acked unknown request {seq}"),
            });
            return;
        };
        match pending {
            PeerPending::Client(id) => {
                let w = self
                    .client_writes
                    .get_mut(&id)
                    .expect("tracked client write");
                w.peer_seq = None;
                let (o, l) = (w.offset_bytes, w.len_bytes);
                if ok {
                    self.note_peer_volatile(o, l);
                } else {
                    self.bitmap.set_range(o, l);
                }
                self.maybe_finish_client_write(id);
            }
            PeerPending::Answered {
                offset_bytes,
                len_bytes,
            } => {
                if ok {
                    self.note_peer_volatile(offset_bytes, len_bytes);
                } else {
                    self.bitmap.set_range(offset_bytes, len_bytes);
                }
            }
            PeerPending::Resync {
                offset_bytes,
                len_bytes,
            } => {
                if ok {
                    self.note_peer_volatile(offset_bytes, len_bytes);
                }
                self.resync_acked(offset_bytes, len_bytes, ok)
            }
        }
        self.maybe_finish_flushes();
    }

    fn start_client_flush(&mut self, id: u64) {
        let mut f = ClientFlush {
            local_done: false,
            local_ok: false,
            peer_waiting: false,
            sent_ms: self.now_ms,
        };
        self.emit(Action::Local {
            io: LocalIo::ClientFlush(id),
            op: LocalOp::Flush,
        });
        if self.replicating() {
            // Sent after the data frames of every write acked so far: the peer flushes once
            // those are written (PROTOCOL.md §5.4).
            self.send_data(PeerMsg::FlushReq { flush_id: id });
            self.open_flush_epoch(id);
            f.peer_waiting = !mutated!(FlushAckBeforePeer);
        }
        self.client_flushes.insert(id, f);
    }

    pub(super) fn client_flush_done(&mut self, id: u64, ok: bool) {
        let f = self
            .client_flushes
            .get_mut(&id)
            .expect("tracked client flush");
        f.local_done = true;
        f.local_ok = ok;
        self.maybe_finish_client_flush(id);
    }

    fn maybe_finish_client_flush(&mut self, id: u64) {
        let Some(f) = self.client_flushes.get(&id).copied() else {
            return;
        };
        if f.local_done && !f.peer_waiting {
            self.client_flushes.remove(&id);
            let result = if f.local_ok {
                Ok(())
            } else {
                Err(IoFailure::Io)
            };
            self.emit(Action::AckClient { id, result });
        }
    }

    fn maybe_finish_flushes(&mut self) {
        let ids: Vec<u64> = self.client_flushes.keys().copied().collect();
        for id in ids {
            self.maybe_finish_client_flush(id);
        }
    }

    /// The peer is gone: every write it has not confirmed is marked out of sync, and whatever
    /// waited for it completes on the local disk alone.
    pub(super) fn forget_peer_requests(&mut self) {
        self.mark_peer_volatile();
        let pending = std::mem::take(&mut self.peer_pending);
        for (_, p) in pending {
            match p {
                PeerPending::Client(id) => {
                    let w = self
                        .client_writes
                        .get_mut(&id)
                        .expect("tracked client write");
                    w.peer_seq = None;
                    let (o, l) = (w.offset_bytes, w.len_bytes);
                    if !mutated!(SkipBitmapOnPeerLoss) {
                        self.bitmap.set_range(o, l);
                    }
                }
                PeerPending::Answered {
                    offset_bytes,
                    len_bytes,
                } => {
                    if !mutated!(SkipBitmapOnPeerLoss) {
                        self.bitmap.set_range(offset_bytes, len_bytes)
                    }
                }
                PeerPending::Resync { .. } => {}
            }
        }
        for f in self.client_flushes.values_mut() {
            f.peer_waiting = false;
        }
    }

    /// Finishes what waited for the peer (after `forget_peer_requests` and the UUID rotation).
    pub(super) fn complete_after_peer_loss(&mut self) {
        let ids: Vec<u64> = self.client_writes.keys().copied().collect();
        for id in ids {
            self.maybe_finish_client_write(id);
        }
        self.maybe_finish_flushes();
    }

    /// The oldest peer request's age, for the `timeout_ms` check.
    pub(super) fn oldest_peer_request_ms(&self) -> Option<u64> {
        let writes = self
            .client_writes
            .values()
            .filter(|w| w.peer_seq.is_some())
            .map(|w| w.sent_ms);
        let flushes = self
            .client_flushes
            .values()
            .filter(|f| f.peer_waiting)
            .map(|f| f.sent_ms);
        writes
            .chain(flushes)
            .chain(self.oldest_peer_read_ms())
            .min()
    }
}

/// Flush ids of the core's own barriers (client flush ids are client request ids, far below).
const BARRIER_ID_BASE: u64 = 1 << 63;

impl Core {
    /// A write the peer acknowledged is only in its volatile cache: keep its range until a
    /// peer flush covers it, so that losing the peer (a crash of its cache included) marks it
    /// out of sync. This is DRBD's transfer log and barrier acks (PROTOCOL.md §5.4).
    fn note_peer_volatile(&mut self, offset_bytes: u64, len_bytes: u64) {
        self.peer_volatile
            .push((self.flush_epoch, offset_bytes, len_bytes));
    }

    /// A FlushReq was sent: writes acknowledged so far belong to the epoch it closes.
    fn open_flush_epoch(&mut self, flush_id: u64) {
        self.flush_epochs.insert(flush_id, self.flush_epoch);
        self.flush_epoch += 1;
    }

    /// The peer flushed: every write it acknowledged before that FlushReq is durable there.
    fn peer_flushed(&mut self, flush_id: u64) {
        if let Some(epoch) = self.flush_epochs.remove(&flush_id) {
            self.peer_volatile.retain(|&(e, _, _)| e > epoch);
        }
        if self.barrier_inflight == Some(flush_id) {
            self.barrier_inflight = None;
        }
    }

    /// On a tick: if the peer holds acknowledged writes only in its cache, ask it to flush.
    pub(super) fn maybe_send_barrier(&mut self) {
        if self.peer_volatile.is_empty() || self.barrier_inflight.is_some() || !self.replicating() {
            return;
        }
        self.barrier_count += 1;
        let flush_id = BARRIER_ID_BASE | self.barrier_count;
        self.send_data(PeerMsg::FlushReq { flush_id });
        self.open_flush_epoch(flush_id);
        self.barrier_inflight = Some(flush_id);
    }

    /// The peer is gone: whatever it held only in its cache may be lost with it.
    pub(super) fn mark_peer_volatile(&mut self) {
        for (_, offset_bytes, len_bytes) in std::mem::take(&mut self.peer_volatile) {
            self.bitmap.set_range(offset_bytes, len_bytes);
        }
        self.flush_epochs.clear();
        self.barrier_inflight = None;
    }
}
