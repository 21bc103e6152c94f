//! Reads served by the peer (PROTOCOL.md §5.7, §4.30): the Primary's own read of a range
//! failed, so it asks the peer — only when the peer's copy is known to be the current data:
//! the peer is connected and UpToDate, the range is not marked out of sync, and no write to it
//! is waiting for the peer's WriteAck (the data socket is ordered, so every write the Primary
//! sent before the `ReadRequest` has then landed on the peer). Otherwise the read fails with
//! EIO: never wrong data.

use urbd_protocol::{ConnectionState, DiskState};

use super::*;

/// `ReadRequest`s in flight at most; more reads fail at once.
pub const PEER_READS_MAX: usize = 64;
/// Largest range one `ReadRequest` asks for (the device splits larger reads).
pub const PEER_READ_BYTES_MAX: u64 = 1 << 20;

/// A read the Primary asked the peer for.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerReadWait {
    /// The client's request id.
    id: u64,
    len_bytes: u64,
    sent_ms: u64,
}

impl Core {
    fn peer_read_possible(&self, offset_bytes: u64, len_bytes: u64) -> Result<(), &'static str> {
        if self.role != Role::Primary {
            return Err("this node is not Primary");
        }
        if self.conn != ConnectionState::Connected
            || self.peer.is_none_or(|p| p.disk != DiskState::UpToDate)
        {
            return Err("the peer is not connected with an UpToDate disk");
        }
        let in_range = offset_bytes
            .checked_add(len_bytes)
            .is_some_and(|end| end <= self.cfg.data_size_bytes);
        if !in_range || len_bytes == 0 || len_bytes > PEER_READ_BYTES_MAX {
            return Err("the range is larger than one peer read");
        }
        if self.bitmap.any_set(offset_bytes, len_bytes) {
            return Err("the range is out of sync: the peer's copy is not current");
        }
        let end = offset_bytes + len_bytes;
        let overlaps = |o: u64, l: u64| o < end && offset_bytes < o + l;
        let writing = self
            .client_writes
            .values()
            .any(|w| overlaps(w.offset_bytes, w.len_bytes))
            || self.peer_pending.values().any(|p| match *p {
                PeerPending::Answered {
                    offset_bytes,
                    len_bytes,
                }
                | PeerPending::Resync {
                    offset_bytes,
                    len_bytes,
                } => overlaps(offset_bytes, len_bytes),
                PeerPending::Client(_) => false,
            });
        if writing {
            return Err("a write to the range is not yet confirmed by the peer");
        }
        if self.peer_reads.len() >= PEER_READS_MAX {
            return Err("too many reads already wait for the peer");
        }
        Ok(())
    }

    /// `Input::ReadFromPeer`: the driver's local read of this range failed.
    pub(super) fn start_read_from_peer(&mut self, id: u64, offset_bytes: u64, len_bytes: u64) {
        if let Err(why) = self.peer_read_possible(offset_bytes, len_bytes) {
            self.event(Event::Message(format!(
                "local read failed at offset {offset_bytes} ({len_bytes} bytes) and the peer \
                 cannot serve it ({why}): EIO"
            )));
            self.emit(Action::ReadDone {
                id,
                result: Err(IoFailure::Io),
            });
            return;
        }
        self.event(Event::Message(format!(
            "local read failed at offset {offset_bytes} ({len_bytes} bytes): reading it from the \
             peer"
        )));
        let seq = self.send_data(PeerMsg::ReadRequest {
            offset_bytes,
            len_bytes,
        });
        let sent_ms = self.now_ms;
        self.peer_reads.insert(
            seq,
            PeerReadWait {
                id,
                len_bytes,
                sent_ms,
            },
        );
    }

    /// `ReadReply` (its payload kept by the driver under the frame's key, as for `Data`) /
    /// `ReadFailed` from the peer.
    pub(super) fn on_peer_read_answer(&mut self, seq: u64, msg: PeerMsg) {
        let (request_id, result) = match msg {
            PeerMsg::ReadReply {
                request_id,
                len_bytes,
                ..
            } => (
                request_id,
                Ok((len_bytes, DataSource::Frame(self.frame_key(seq)))),
            ),
            PeerMsg::ReadFailed { request_id } => (request_id, Err(())),
            _ => unreachable!("not a read answer"),
        };
        let Some(w) = self.peer_reads.remove(&request_id) else {
            // Unknown id: a protocol error by the peer; drop the payload.
            if let Ok((_, source)) = result {
                self.emit(Action::Release(source));
            }
            return;
        };
        let result = match result {
            Ok((len, source)) if len == w.len_bytes => Ok(source),
            Ok((_, source)) => {
                self.emit(Action::Release(source));
                Err(IoFailure::Io)
            }
            Err(()) => Err(IoFailure::Io),
        };
        self.emit(Action::ReadDone { id: w.id, result });
    }

    /// The peer is gone: reads waiting for it fail.
    pub(super) fn fail_peer_reads(&mut self) {
        for (_, w) in std::mem::take(&mut self.peer_reads) {
            self.emit(Action::ReadDone {
                id: w.id,
                result: Err(IoFailure::Io),
            });
        }
    }

    /// The oldest read waiting for the peer (liveness: counts like a pending write).
    pub(super) fn oldest_peer_read_ms(&self) -> Option<u64> {
        self.peer_reads.values().map(|w| w.sent_ms).min()
    }

    /// Secondary: the Primary asks for a range it cannot read itself.
    pub(super) fn on_peer_read_request(&mut self, seq: u64, offset_bytes: u64, len_bytes: u64) {
        let in_range = offset_bytes
            .checked_add(len_bytes)
            .is_some_and(|end| end <= self.cfg.data_size_bytes);
        let bounded = len_bytes <= PEER_READ_BYTES_MAX && self.serving_reads.len() < PEER_READS_MAX;
        if self.disk != DiskState::UpToDate || !in_range || len_bytes == 0 || !bounded {
            self.send_meta(PeerMsg::ReadFailed { request_id: seq });
            return;
        }
        // Keyed like frames (seqs restart with every connection, keys never repeat).
        let key = self.frame_key(seq);
        self.serving_reads.insert(key, (seq, len_bytes));
        self.emit(Action::Local {
            io: LocalIo::PeerRead(key),
            op: LocalOp::Read {
                offset_bytes,
                len_bytes,
            },
        });
    }

    pub(super) fn peer_read_done(&mut self, key: u64, ok: bool) {
        let (seq, len_bytes) = self
            .serving_reads
            .remove(&key)
            .expect("completion of a tracked peer read");
        let same_connection = self.conn == ConnectionState::Connected && self.frame_key(seq) == key;
        if !same_connection {
            // Asked on a connection already gone: nobody wants the answer.
            if ok {
                self.emit(Action::Release(DataSource::PeerRead(key)));
            }
            return;
        }
        if ok {
            self.send_data(PeerMsg::ReadReply {
                request_id: seq,
                len_bytes,
                source: DataSource::PeerRead(key),
            });
        } else {
            self.send_meta(PeerMsg::ReadFailed { request_id: seq });
        }
    }
}
