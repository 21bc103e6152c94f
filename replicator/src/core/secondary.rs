//! The Secondary's side of the write path (PROTOCOL.md §5): replicated writes are applied in
//! arrival order among overlapping ones, acknowledged per protocol, and a FlushReq is answered
//! only after every write received before it is written and the disk is flushed.

use urbd_protocol::{ReplicationProtocol, Role};

use super::*;

impl Core {
    pub(super) fn step_secondary(&mut self, seq: u64, msg: PeerMsg) {
        if self.role == Role::Primary {
            // Two Primaries never exchange writes (single-primary mode).
            self.emit(Action::Disconnect {
                reason: "peer sent a write while this node is Primary".into(),
            });
            return;
        }
        match msg {
            PeerMsg::Data {
                offset_bytes,
                len_bytes,
                fua,
                ..
            } => self.receive_write(
                seq,
                PeerWrite {
                    epoch: self.epoch,
                    offset_bytes,
                    len_bytes,
                    fua,
                    zero: false,
                    resync: false,
                },
            ),
            PeerMsg::Zero {
                offset_bytes,
                len_bytes,
                fua,
            } => self.receive_write(
                seq,
                PeerWrite {
                    epoch: self.epoch,
                    offset_bytes,
                    len_bytes,
                    fua,
                    zero: true,
                    resync: false,
                },
            ),
            PeerMsg::FlushReq { flush_id } => {
                // Flush once every write received before this request is written.
                let key = self.frame_key(seq);
                self.peer_flushes.push((flush_id, key));
                self.maybe_start_peer_flushes();
            }
            _ => unreachable!("not a secondary message"),
        }
    }

    pub(super) fn receive_write(&mut self, seq: u64, w: PeerWrite) {
        let key = self.frame_key(seq);
        if w.offset_bytes
            .checked_add(w.len_bytes)
            .is_none_or(|end| end > self.cfg.data_size_bytes)
        {
            self.emit(Action::Disconnect {
                reason: format!("peer write past the end (seq {seq})"),
            });
            return;
        }
        if self.cfg.protocol == ReplicationProtocol::B && !w.resync {
            self.send_meta(PeerMsg::RecvAck { request_id: seq });
        }
        self.peer_writes.insert(key, w);
        let owner = if w.resync {
            Owner::ResyncWrite(key)
        } else {
            Owner::Peer(key)
        };
        let (start, end) = if mutated!(SecondaryIgnoresConflicts) {
            // A range nobody else uses: never waits.
            let fake = self.cfg.data_size_bytes + 2 * key;
            (fake, fake + 1)
        } else {
            (w.offset_bytes, w.offset_bytes + w.len_bytes)
        };
        if self.conflicts.try_start(start, end, owner) {
            self.start_peer_write(key);
        }
    }

    pub(super) fn start_peer_write(&mut self, key: u64) {
        let w = self.peer_writes[&key];
        let io = if w.resync {
            LocalIo::ResyncWrite(key)
        } else {
            LocalIo::Peer(key)
        };
        let op = if w.zero {
            LocalOp::Zero {
                offset_bytes: w.offset_bytes,
                len_bytes: w.len_bytes,
                fua: w.fua,
            }
        } else {
            LocalOp::Write {
                offset_bytes: w.offset_bytes,
                len_bytes: w.len_bytes,
                fua: w.fua,
                source: DataSource::Frame(key),
            }
        };
        self.emit(Action::Local { io, op });
    }

    pub(super) fn peer_write_done(&mut self, key: u64, ok: bool) {
        let w = self
            .peer_writes
            .remove(&key)
            .expect("completion for a tracked peer write");
        let seq = seq_of_key(key);
        if ok {
            // In the disk's cache until a later flush: a graceful disconnect waits for the
            // peer's next barrier (its transfer log holds application and resync writes alike).
            self.cache_gen += 1;
        }
        let ack = if ok {
            PeerMsg::WriteAck { request_id: seq }
        } else {
            PeerMsg::NegAck { request_id: seq }
        };
        if w.resync && ok && w.epoch == self.epoch {
            self.bitmap.clear_range(w.offset_bytes, w.len_bytes);
            if let Some(r) = self.resync.as_mut() {
                r.done_bytes += w.len_bytes;
            }
        }
        if !ok {
            self.event(Event::Message(format!(
                "local write of a replicated block failed at offset {} ({} bytes)",
                w.offset_bytes, w.len_bytes
            )));
        }
        if w.epoch == self.epoch && self.conn == urbd_protocol::ConnectionState::Connected {
            self.send_meta(ack);
        }
        if !w.zero {
            self.emit(Action::Release(DataSource::Frame(key)));
        }
        let owner = if w.resync {
            Owner::ResyncWrite(key)
        } else {
            Owner::Peer(key)
        };
        for next in self.conflicts.finish(owner) {
            self.start_owner(next);
        }
        self.maybe_start_peer_flushes();
    }

    fn maybe_start_peer_flushes(&mut self) {
        let oldest_write = self.peer_writes.keys().min().copied();
        let mut i = 0;
        while i < self.peer_flushes.len() {
            let (flush_id, seq) = self.peer_flushes[i];
            let ready = oldest_write.is_none_or(|w| w > seq);
            if ready && seq != u64::MAX {
                self.peer_flushes[i].1 = u64::MAX; // started
                                                   // It covers every write completed so far.
                self.flush_gens.insert(flush_id, self.cache_gen);
                self.emit(Action::Local {
                    io: LocalIo::PeerFlush(flush_id),
                    op: LocalOp::Flush,
                });
            }
            i += 1;
        }
    }

    pub(super) fn peer_flush_done(&mut self, flush_id: u64, ok: bool) {
        // A flush started on a connection that is gone (its entries were dropped with the
        // peer) completes to nobody (urbd-sim seed 7 of the first runs panicked here).
        let Some(i) = self
            .peer_flushes
            .iter()
            .position(|&(f, seq)| f == flush_id && seq == u64::MAX)
        else {
            return;
        };
        self.peer_flushes.remove(i);
        let covered = self.flush_gens.remove(&flush_id);
        if ok {
            if let Some(g) = covered {
                self.flushed_gen = self.flushed_gen.max(g);
            }
            self.send_meta(PeerMsg::FlushAck { flush_id });
        } else {
            // A flush that failed leaves nothing known durable: the link cannot vouch for it.
            self.emit(Action::Disconnect {
                reason: "local flush failed".into(),
            });
        }
    }
}

impl Core {
    /// True while a replicated write this node acknowledged may still be only in its disk's
    /// cache (no peer flush has covered it yet): an operator disconnect waits for the next
    /// barrier so that the peer need not mark it (PROTOCOL.md §5.1).
    pub(super) fn peer_cache_dirty(&self) -> bool {
        self.cache_gen > self.flushed_gen
    }
}
