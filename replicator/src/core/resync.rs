//! Resync (PROTOCOL.md §7): the SyncSource reads the blocks marked in its bitmap, in disk
//! order, and sends them; the SyncTarget writes them and acks; bits clear as acks arrive (on
//! the source) and as blocks land (on the target). Resync reads take part in conflict
//! detection, so a resync never overwrites newer application data on the target: an
//! application write to a range being read waits for the read, and its data frame follows the
//! resync frame on the same ordered data socket.
//!
//! Rate control (PROTOCOL.md §7.6.1): the SyncSource starts a resync read only when a token
//! bucket, refilled from `now_ms` on every step (ticks included), holds its length. The bucket
//! fills at `resync_rate_max_bytes_per_s`, or at `resync_rate_min_bytes_per_s` while the
//! application writes (a write in flight or waiting, or one started in the last
//! `LOAD_HOLD_MS`), and holds at most `BURST_MS` worth of bytes (at least one chunk). While an
//! application write waits on a conflict, no new resync read starts at all, so a write held up
//! behind a resync read waits for at most the reads already in flight.
//!
//! Pause (§7.6.2): the resync runs only while neither side has it paused (`pause-sync`); the
//! SyncSource then sends nothing new and shows PausedSyncS, the target PausedSyncT. Resume
//! continues from the cursor: the bitmap still holds every block not yet acknowledged.
//!
//! Checksum-based resync (§7.6.4, `csums-alg`, full resyncs only): for each marked block the
//! SyncSource takes the block in its conflict tracker, has the driver digest it, sends
//! `CsumRequest {range, digest}` on the data socket and only then releases the block — the
//! same cut as a resync read: an application write that held the block before is complete
//! locally and its frame precedes the request; one after waits and its frame follows. The
//! SyncTarget takes the block in its own conflict tracker (so it digests after every write
//! received before the request and before any after it), digests its copy and answers `InSync`
//! (both sides clear the bits; nothing is sent, nothing is tracked for a barrier: the target
//! already had those bytes) or `ResyncRequest`, for which the source does an ordinary resync
//! read and sends `ResyncData` — with the ordering guarantees above.

use std::collections::{BTreeMap, HashMap};

use urbd_protocol::{Digest, DigestAlgorithm, DiskState, ReplicationState, Role, UUID_RESYNC_BUMP};

use super::*;

#[derive(Debug)]
pub(super) struct Resync {
    pub(super) source: bool,
    pub(super) cursor_bytes: u64,
    /// Reads in flight (or waiting on a conflict) on the source: offset → length.
    reads: BTreeMap<u64, u64>,
    acks_outstanding: usize,
    pub(super) done_bytes: u64,
    pub(super) total_bytes: u64,
    /// Passes over the bitmap (a second pass picks up blocks a NegAck left marked).
    passes: u32,
    /// The peer's whole bitmap has been ORed into ours (always true for a full sync): only
    /// then may the source send, and finish.
    pub(super) peer_bitmap_complete: bool,
    started_ms: u64,
    /// Checksum-based resync (§7.6.4): the algorithm, on the source for the first pass (a
    /// later pass resends what the peer failed to write), on the target once a CsumRequest
    /// came.
    csums: Option<DigestAlgorithm>,
    /// Source: blocks being digested (or waiting on a conflict): offset → length.
    digests: BTreeMap<u64, u64>,
    /// Source: CsumRequests sent, waiting for InSync / ResyncRequest: offset → length.
    csum_awaiting: BTreeMap<u64, u64>,
    /// Target: CsumRequests received and not answered: frame key → (offset, length, digest).
    csum_requests: HashMap<u64, (u64, u64, Digest)>,
    /// ResyncData payload bytes sent (source) or received (target).
    sent_bytes: u64,
    /// Bytes found in sync by checksum (nothing sent for them).
    in_sync_bytes: u64,
}

/// Unit of a checksum comparison (at least one bitmap block, at most one resync chunk): a
/// block that differs anywhere resends this much.
const CSUM_BLOCK_BYTES: u64 = 64 << 10;
/// Checksum comparisons in flight at most (they are small: keep the link busy).
const CSUM_INFLIGHT_MAX: usize = 1024;

/// Bits per bitmap frame (64 KiB of bits: well under the smallest frame limit).
const BITMAP_CHUNK_BITS: u64 = 64 * 1024 * 8;

const RESYNC_PASSES_MAX: u32 = 3;

/// The bucket holds at most this much time's worth of bytes (at least one resync chunk).
const BURST_MS: u64 = 100;
/// An application write started this recently still counts as load.
pub(super) const LOAD_HOLD_MS: u64 = 100;

/// Token bucket of the resync/verify rate controller (§7.6.1), in milli-bytes so that integer
/// refills at any rate and tick lose nothing.
#[derive(Debug, Default)]
pub(super) struct Throttle {
    tokens_milli: u64,
    /// Last refill; `None`: a new resync or verify, the bucket starts full.
    pub(super) last_ms: Option<u64>,
}

impl Core {
    /// Application writes in flight, waiting, or started within `LOAD_HOLD_MS`.
    pub(super) fn under_app_load(&self) -> bool {
        !self.client_writes.is_empty()
            || !self.waiting_clients.is_empty()
            || self
                .last_app_write_ms
                .is_some_and(|t| self.now_ms.saturating_sub(t) < LOAD_HOLD_MS)
    }

    /// The rate the resync may go at right now.
    pub(super) fn resync_rate_bytes_per_s(&self) -> u64 {
        let max = self.cfg.resync_rate_max_bytes_per_s;
        if self.under_app_load() {
            self.cfg.resync_rate_min_bytes_per_s.min(max)
        } else {
            max
        }
    }

    /// Takes `len` bytes from the bucket (after refilling it); false if it holds fewer.
    pub(super) fn throttle_take(&mut self, len: u64) -> bool {
        let rate = self.resync_rate_bytes_per_s();
        let chunk = u64::from(self.cfg.resync_chunk_bytes);
        let cap = rate
            .saturating_mul(BURST_MS)
            .max(chunk.saturating_mul(1000));
        let now = self.now_ms;
        let t = &mut self.throttle;
        t.tokens_milli = match t.last_ms {
            None => cap,
            Some(last) => t
                .tokens_milli
                .saturating_add(rate.saturating_mul(now.saturating_sub(last))),
        }
        .min(cap);
        t.last_ms = Some(now);
        let need = len.saturating_mul(1000);
        if t.tokens_milli >= need {
            t.tokens_milli -= need;
            true
        } else {
            false
        }
    }

    /// SyncSource/PausedSyncS, SyncTarget/PausedSyncT after the pause flags.
    pub(super) fn update_sync_repl(&mut self) {
        let Some(r) = self.resync.as_ref() else {
            return;
        };
        let paused = self.sync_paused_here || self.sync_paused_by_peer;
        let state = match (r.source, paused) {
            (true, false) => ReplicationState::SyncSource,
            (true, true) => ReplicationState::PausedSyncS,
            (false, false) => ReplicationState::SyncTarget,
            (false, true) => ReplicationState::PausedSyncT,
        };
        self.set_repl(state);
    }

    pub(super) fn is_sync_target(&self) -> bool {
        matches!(
            self.repl,
            ReplicationState::SyncTarget | ReplicationState::PausedSyncT
        )
    }

    /// A resync starts or ends: no pause carries over, the bucket starts full.
    fn reset_resync_controls(&mut self) {
        self.sync_paused_here = false;
        self.sync_paused_by_peer = false;
        self.throttle.last_ms = None;
    }

    /// The peer asks for a resync in a given direction (§4.27: invalidate, invalidate-remote,
    /// verify --repair).
    pub(super) fn on_peer_resync_start(&mut self, full: bool, sender_is_target: bool) {
        let busy = self.repl != ReplicationState::Established
            || self.resync.is_some()
            || self.verify.is_some();
        let refusal = if busy {
            Some(format!("replication is {}", self.repl))
        } else if sender_is_target && self.disk != DiskState::UpToDate {
            Some(format!("our disk is {}, not UpToDate", self.disk))
        } else if !sender_is_target && self.role == Role::Primary {
            Some("this node is Primary and cannot become SyncTarget".into())
        } else {
            None
        };
        if let Some(why) = refusal {
            let reason = format!("peer asked for a resync we cannot take part in: {why}");
            self.event(Event::Message(reason.clone()));
            self.emit(Action::Disconnect { reason });
            return;
        }
        if sender_is_target {
            if let Some(p) = self.peer.as_mut() {
                p.disk = DiskState::Inconsistent;
            }
            self.event(Event::PeerDisk(DiskState::Inconsistent));
            self.event(Event::Message(format!(
                "peer discards its data (invalidate): {} resync to it",
                if full { "full" } else { "bitmap" }
            )));
            self.start_sync_source(full);
        } else {
            self.event(Event::Message(format!(
                "peer overwrites our data (invalidate-remote or verify --repair): {} resync from it",
                if full { "full" } else { "bitmap" }
            )));
            self.start_sync_target(full);
            self.send_state();
        }
    }

    /// The peer paused or resumed the resync (§4.28).
    pub(super) fn on_peer_sync_pause(&mut self, paused: bool) {
        if self.resync.is_none() {
            return; // it ended meanwhile
        }
        self.sync_paused_by_peer = paused;
        self.update_sync_repl();
        self.pump_resync();
    }
}

impl Resync {
    fn new(
        source: bool,
        total_bytes: u64,
        full: bool,
        csums: Option<DigestAlgorithm>,
        now_ms: u64,
    ) -> Resync {
        Resync {
            source,
            cursor_bytes: 0,
            reads: BTreeMap::new(),
            acks_outstanding: 0,
            done_bytes: 0,
            total_bytes,
            passes: 1,
            peer_bitmap_complete: full,
            started_ms: now_ms,
            csums,
            digests: BTreeMap::new(),
            csum_awaiting: BTreeMap::new(),
            csum_requests: HashMap::new(),
            sent_bytes: 0,
            in_sync_bytes: 0,
        }
    }

    /// Offsets of the resync reads and digests started or waiting (`Owner::ResyncRead`).
    pub(super) fn read_offsets(&self) -> Vec<u64> {
        self.reads
            .keys()
            .chain(self.digests.keys())
            .copied()
            .collect()
    }

    /// Source: blocks read, digested, or waiting for the peer.
    fn inflight(&self) -> usize {
        self.reads.len() + self.digests.len() + self.csum_awaiting.len() + self.acks_outstanding
    }

    /// The checksum algorithm of this pass (source).
    fn csums_now(&self) -> Option<DigestAlgorithm> {
        self.csums.filter(|_| self.passes == 1)
    }

    pub(super) fn stats(&self, now_ms: u64) -> ResyncStats {
        ResyncStats {
            source: self.source,
            running: true,
            finished: false,
            total_bytes: self.total_bytes,
            done_bytes: self.done_bytes,
            sent_bytes: self.sent_bytes,
            in_sync_bytes: self.in_sync_bytes,
            csums: self.csums,
            elapsed_ms: now_ms.saturating_sub(self.started_ms),
        }
    }
}

impl Core {
    /// Becomes SyncSource: `full` marks every block first.
    pub(super) fn start_sync_source(&mut self, full: bool) {
        if full {
            self.bitmap.set_all();
        }
        // The target adopts this as its current UUID: until the resync ends, its data is a
        // mix that matches no generation of ours.
        if self.uuids.bitmap == 0 {
            self.uuids.bitmap = self.uuids.current & !1;
        } else {
            // DRBD's drbd_uuid_set: the previous bitmap UUID (the target's current if our last
            // SyncUuid reached it) moves to history, where rules 51/71 look for it when this
            // SyncUuid is lost (found by urbd-sim seed 0: an interrupted initial sync, then a
            // crash while persisting the second SyncUuid, left "unrelated data").
            self.uuids.history = [self.uuids.bitmap, self.uuids.history[0]];
        }
        self.uuids.bitmap = self.uuids.bitmap.wrapping_add(UUID_RESYNC_BUMP);
        let sync_uuid = self.uuids.bitmap;
        self.persist_superblock();
        self.emit(Action::Persist(Persist::Bitmap));
        self.send_data(PeerMsg::SyncUuid { uuid: sync_uuid });
        let total_bytes = self.bitmap.dirty_bytes();
        self.reset_resync_controls();
        // Checksums for full resyncs only (§7.6.4): a bitmap resync moves blocks known to have
        // changed, and a disk that never held data has nothing to compare.
        let peer_fresh = self
            .peer
            .is_some_and(|p| p.uuids.current & !1 == urbd_protocol::UUID_JUST_CREATED);
        let csums = self.cfg.csums_alg.filter(|_| full && !peer_fresh);
        if let Some(alg) = csums {
            self.event(Event::Message(format!(
                "checksum-based resync ({alg}): only blocks whose digests differ are sent"
            )));
        }
        self.resync = Some(Resync::new(true, total_bytes, full, csums, self.now_ms));
        self.update_sync_repl();
        if !full {
            self.send_bitmap();
        }
        self.pump_resync();
    }

    /// Becomes SyncTarget: Inconsistent (never promotable) until the resync ends.
    pub(super) fn start_sync_target(&mut self, full: bool) {
        if full {
            self.bitmap.set_all();
        }
        self.set_disk(DiskState::Inconsistent);
        self.persist_superblock();
        self.emit(Action::Persist(Persist::Bitmap));
        let total_bytes = self.bitmap.dirty_bytes();
        self.reset_resync_controls();
        self.resync = Some(Resync::new(false, total_bytes, full, None, self.now_ms));
        self.update_sync_repl();
        if !full {
            self.send_bitmap();
        }
    }

    /// Starts resync reads up to the in-flight bound.
    pub(super) fn pump_resync(&mut self) {
        loop {
            let Some(r) = self.resync.as_ref() else {
                return;
            };
            if !r.source || self.repl != ReplicationState::SyncSource || !r.peer_bitmap_complete {
                return;
            }
            let csums = r.csums_now().is_some();
            let chunk = u64::from(self.cfg.resync_chunk_bytes);
            let (unit, inflight_max) = if csums {
                // As many bytes in flight as a plain resync, in smaller comparison units.
                let unit = CSUM_BLOCK_BYTES
                    .min(chunk)
                    .max(u64::from(self.cfg.bytes_per_bit));
                let per_chunk = (chunk / unit) as usize;
                let max = self.cfg.resync_inflight_max;
                (unit, (max * per_chunk).clamp(max, CSUM_INFLIGHT_MAX))
            } else {
                (chunk, self.cfg.resync_inflight_max)
            };
            if r.inflight() >= inflight_max {
                return;
            }
            if !self.waiting_clients.is_empty() {
                // Application writes wait on a conflict: let them have the disk first.
                return;
            }
            let next = self
                .bitmap
                .iter_set_ranges(r.cursor_bytes)
                .next()
                .map(|(o, l)| (o, l.min(unit)));
            let Some((offset, len)) = next else {
                self.maybe_finish_sync_source();
                return;
            };
            if !self.throttle_take(len) {
                return; // the next tick or ack refills the bucket
            }
            let r = self.resync.as_mut().expect("resync running");
            r.cursor_bytes = offset + len;
            if csums {
                r.digests.insert(offset, len);
            } else {
                r.reads.insert(offset, len);
            }
            if self
                .conflicts
                .try_start(offset, offset + len, Owner::ResyncRead(offset))
            {
                self.start_resync_read(offset);
            }
        }
    }

    pub(super) fn start_resync_read(&mut self, offset_bytes: u64) {
        let digest = self.resync.as_ref().and_then(|r| {
            let len = r.digests.get(&offset_bytes)?;
            Some((*len, r.csums.expect("digests only with csums")))
        });
        if let Some((len_bytes, alg)) = digest {
            self.emit(Action::Local {
                io: LocalIo::ResyncDigest(offset_bytes),
                op: LocalOp::Digest {
                    offset_bytes,
                    len_bytes,
                    alg,
                },
            });
            return;
        }
        let len_bytes = self
            .resync
            .as_ref()
            .and_then(|r| r.reads.get(&offset_bytes))
            .copied();
        let len_bytes = len_bytes.expect("resync read is tracked");
        self.emit(Action::Local {
            io: LocalIo::ResyncRead(offset_bytes),
            op: LocalOp::Read {
                offset_bytes,
                len_bytes,
            },
        });
    }

    pub(super) fn step_sync_source_read_done(&mut self, offset_bytes: u64, ok: bool) {
        if let Some(i) = self
            .orphan_resync_reads
            .iter()
            .position(|&o| o == offset_bytes)
        {
            // A read of a resync that ended while it was in flight: nobody wants its data.
            self.orphan_resync_reads.swap_remove(i);
            self.emit(Action::Release(DataSource::ResyncRead(offset_bytes)));
            for next in self.conflicts.finish(Owner::ResyncRead(offset_bytes)) {
                self.start_owner(next);
            }
            self.pump_resync();
            return;
        }
        self.send_resync_read(offset_bytes, ok);
        // Only now may a write waiting for this range start: its data frame must follow the
        // resync frame on the data socket, or the target would overwrite it with older data.
        for next in self.conflicts.finish(Owner::ResyncRead(offset_bytes)) {
            self.start_owner(next);
        }
        self.pump_resync();
    }

    fn send_resync_read(&mut self, offset_bytes: u64, ok: bool) {
        let Some(r) = self.resync.as_mut() else {
            // The peer went away while the read was in flight.
            self.emit(Action::Release(DataSource::ResyncRead(offset_bytes)));
            return;
        };
        let len_bytes = r
            .reads
            .remove(&offset_bytes)
            .expect("resync read is tracked");
        if !ok {
            self.emit(Action::Release(DataSource::ResyncRead(offset_bytes)));
            self.event(Event::Message(format!(
                "resync read failed at offset {offset_bytes}"
            )));
            self.emit(Action::Disconnect {
                reason: "local read failed during resync".into(),
            });
            return;
        }
        r.acks_outstanding += 1;
        r.sent_bytes += len_bytes;
        let seq = self.send_data(PeerMsg::ResyncData {
            offset_bytes,
            len_bytes,
            source: DataSource::ResyncRead(offset_bytes),
        });
        self.emit(Action::Release(DataSource::ResyncRead(offset_bytes)));
        self.peer_pending.insert(
            seq,
            PeerPending::Resync {
                offset_bytes,
                len_bytes,
            },
        );
    }

    pub(super) fn resync_acked(&mut self, offset_bytes: u64, len_bytes: u64, ok: bool) {
        let Some(r) = self.resync.as_mut() else {
            return;
        };
        r.acks_outstanding -= 1;
        if ok {
            r.done_bytes += len_bytes;
            self.bitmap.clear_range(offset_bytes, len_bytes);
        }
        let (done, total) = (r.done_bytes, r.total_bytes);
        self.event(Event::ResyncProgress {
            done_bytes: done,
            total_bytes: total,
        });
        self.pump_resync();
    }

    fn maybe_finish_sync_source(&mut self) {
        let Some(r) = self.resync.as_mut() else {
            return;
        };
        if r.inflight() > 0 {
            return;
        }
        if self.bitmap.count_set() > 0 {
            if r.passes < RESYNC_PASSES_MAX {
                // Blocks the peer could not write (NegAck): one more pass.
                r.passes += 1;
                r.cursor_bytes = 0;
                self.pump_resync();
            } else {
                self.emit(Action::Disconnect {
                    reason: "resync could not write every block on the peer".into(),
                });
            }
            return;
        }
        let (done, ms) = (r.done_bytes, self.now_ms.saturating_sub(r.started_ms));
        let csums = match r.csums {
            Some(alg) => format!(
                "; {alg} checksums: {} bytes in sync, {} bytes sent",
                r.in_sync_bytes, r.sent_bytes
            ),
            None => String::new(),
        };
        self.last_resync = Some(ResyncStats {
            running: false,
            finished: true,
            ..r.stats(self.now_ms)
        });
        self.resync = None;
        self.event(Event::Message(format!(
            "resync finished: {done} bytes resynced in {ms} ms (SyncSource{csums})"
        )));
        // Resync end (DRBD): the bitmap UUID goes to history and is cleared; the target takes
        // our tuple from the State frame that precedes ResyncDone.
        self.uuids.history = [self.uuids.bitmap, self.uuids.history[0]];
        self.uuids.bitmap = 0;
        // Our crashed-primary extents went over with this resync: the flag is spent (else a
        // later crash of both would make rule 40b prefer our older data; urbd-sim --csums 69).
        self.crashed_primary = false;
        self.persist_superblock();
        self.emit(Action::Persist(Persist::Bitmap));
        self.send_state();
        self.send_data(PeerMsg::ResyncDone);
        self.reset_resync_controls();
        self.set_repl(ReplicationState::Established);
        if let Some(p) = self.peer.as_mut() {
            p.disk = DiskState::UpToDate;
        }
        self.event(Event::PeerDisk(DiskState::UpToDate));
    }

    pub(super) fn step_sync_target(&mut self, seq: u64, msg: PeerMsg) {
        match msg {
            PeerMsg::SyncUuid { uuid } => {
                if !self.is_sync_target() {
                    // The peer became SyncSource after the connect decision (`primary --force`
                    // on a fresh pair): a fresh or inconsistent disk receives everything.
                    if self.role == Role::Primary {
                        self.emit(Action::Disconnect {
                            reason: "peer wants to resync a Primary".into(),
                        });
                        return;
                    }
                    let full = self.just_created() || self.disk == DiskState::Inconsistent;
                    self.start_sync_target(full);
                }
                self.uuids.current = uuid;
                self.persist_superblock();
            }
            PeerMsg::ResyncData {
                offset_bytes,
                len_bytes,
                ..
            } => {
                if !self.is_sync_target() {
                    self.emit(Action::Disconnect {
                        reason: "resync data while not SyncTarget".into(),
                    });
                    return;
                }
                if let Some(r) = self.resync.as_mut() {
                    r.sent_bytes += len_bytes;
                }
                let w = PeerWrite {
                    epoch: self.epoch,
                    offset_bytes,
                    len_bytes,
                    fua: false,
                    zero: false,
                    resync: true,
                };
                self.receive_write(seq, w);
            }
            PeerMsg::CsumRequest {
                offset_bytes,
                len_bytes,
                digest,
            } => {
                let fits = len_bytes > 0
                    && offset_bytes
                        .checked_add(len_bytes)
                        .is_some_and(|end| end <= self.cfg.data_size_bytes);
                if !self.is_sync_target() || !fits {
                    self.emit(Action::Disconnect {
                        reason: "unexpected CsumRequest (not SyncTarget, or past the end)".into(),
                    });
                    return;
                }
                let key = self.frame_key(seq);
                let r = self.resync.as_mut().expect("a SyncTarget has a resync");
                r.csums.get_or_insert(digest.algorithm());
                r.csum_requests
                    .insert(key, (offset_bytes, len_bytes, digest));
                if self.conflicts.try_start(
                    offset_bytes,
                    offset_bytes + len_bytes,
                    Owner::CsumT(key),
                ) {
                    self.start_csum_digest(key);
                }
            }
            PeerMsg::ResyncDone => {
                let epoch = self.epoch;
                if self
                    .peer_writes
                    .values()
                    .any(|w| w.resync && w.epoch == epoch)
                {
                    self.emit(Action::Disconnect {
                        reason: "ResyncDone before every resync write".into(),
                    });
                    return;
                }
                if self.is_sync_target() {
                    assert_eq!(
                        self.bitmap.count_set(),
                        0,
                        "resync done with blocks still marked"
                    );
                }
                if let Some(r) = self.resync.take() {
                    self.last_resync = Some(ResyncStats {
                        running: false,
                        finished: true,
                        ..r.stats(self.now_ms)
                    });
                }
                self.bitmap.clear_all();
                if let Some(p) = self.peer {
                    let primary_bit = u64::from(self.role == Role::Primary);
                    self.uuids = p.uuids;
                    self.uuids.current = (p.uuids.current & !1) | primary_bit;
                }
                self.set_disk(DiskState::UpToDate);
                // Every block either side had marked (our crashed-primary extents included) now
                // holds the source's data: a crashed-primary flag is spent (urbd-sim seed 140:
                // a stale flag made rule 40b pick this node as source later).
                self.crashed_primary = false;
                self.reset_resync_controls();
                self.set_repl(ReplicationState::Established);
                // The resynced data durable (the bitmap barrier flushes data first), then the
                // superblock says UpToDate: a power cut in between must not leave an UpToDate
                // superblock over resync writes still in the disk's cache (urbd-sim
                // --strict-peer-cache seed 261).
                self.emit(Action::Persist(Persist::Bitmap));
                self.persist_superblock();
                self.send_state();
            }
            _ => unreachable!("not a resync message"),
        }
    }
}

impl Core {
    /// Source: a resync block's digest is ready (§7.6.4): send it, then release the block.
    pub(super) fn resync_digest_done(&mut self, offset_bytes: u64, digest: Option<Digest>) {
        if let Some(i) = self
            .orphan_resync_reads
            .iter()
            .position(|&o| o == offset_bytes)
        {
            // A digest of a resync that ended while it ran.
            self.orphan_resync_reads.swap_remove(i);
        } else {
            let len = self
                .resync
                .as_mut()
                .and_then(|r| r.digests.remove(&offset_bytes));
            match (len, digest) {
                (Some(len_bytes), Some(digest)) => {
                    // Sent before the block is released: a write that waited for it sends its
                    // frame after the request, so the target digests before applying it.
                    self.send_data(PeerMsg::CsumRequest {
                        offset_bytes,
                        len_bytes,
                        digest,
                    });
                    if let Some(r) = self.resync.as_mut() {
                        r.csum_awaiting.insert(offset_bytes, len_bytes);
                    }
                }
                (Some(_), None) => {
                    self.event(Event::Message(format!(
                        "resync read failed at offset {offset_bytes}"
                    )));
                    self.emit(Action::Disconnect {
                        reason: "local read failed during resync".into(),
                    });
                }
                (None, _) => {}
            }
        }
        for next in self.conflicts.finish(Owner::ResyncRead(offset_bytes)) {
            self.start_owner(next);
        }
        self.pump_resync();
    }

    /// Source: the target's answer to a CsumRequest (§7.6.4).
    pub(super) fn on_csum_reply(&mut self, msg: PeerMsg) {
        let (offset_bytes, len_bytes, in_sync) = match msg {
            PeerMsg::InSync {
                offset_bytes,
                len_bytes,
            } => (offset_bytes, len_bytes, true),
            PeerMsg::ResyncRequest {
                offset_bytes,
                len_bytes,
            } => (offset_bytes, len_bytes, false),
            _ => unreachable!("not a checksum reply"),
        };
        let known = self
            .resync
            .as_mut()
            .is_some_and(|r| r.source && r.csum_awaiting.get(&offset_bytes) == Some(&len_bytes));
        if !known {
            self.emit(Action::Disconnect {
                reason: format!(
                    "unexpected {} for [{offset_bytes}, +{len_bytes}) (replication {})",
                    if in_sync { "InSync" } else { "ResyncRequest" },
                    self.repl
                ),
            });
            return;
        }
        let r = self.resync.as_mut().expect("checked");
        r.csum_awaiting.remove(&offset_bytes);
        if in_sync {
            // Both copies were equal at the cut; later writes are replicated as usual. The
            // target had these bytes already: nothing to track until a barrier.
            let before = r.done_bytes * 100 / r.total_bytes.max(1);
            r.done_bytes += len_bytes;
            r.in_sync_bytes += len_bytes;
            let (done, total) = (r.done_bytes, r.total_bytes);
            self.bitmap.clear_range(offset_bytes, len_bytes);
            if done * 100 / total.max(1) != before {
                self.event(Event::ResyncProgress {
                    done_bytes: done,
                    total_bytes: total,
                });
            }
            self.pump_resync();
        } else {
            // An ordinary resync read (already paid for in the rate budget).
            r.reads.insert(offset_bytes, len_bytes);
            if self.conflicts.try_start(
                offset_bytes,
                offset_bytes + len_bytes,
                Owner::ResyncRead(offset_bytes),
            ) {
                self.start_resync_read(offset_bytes);
            }
        }
    }

    /// Target: a CsumRequest got its range: digest our copy.
    pub(super) fn start_csum_digest(&mut self, key: u64) {
        let req = self
            .resync
            .as_ref()
            .and_then(|r| r.csum_requests.get(&key))
            .copied();
        let Some((offset_bytes, len_bytes, digest)) = req else {
            // The resync ended meanwhile: nothing to answer.
            for next in self.conflicts.finish(Owner::CsumT(key)) {
                self.start_owner(next);
            }
            return;
        };
        self.emit(Action::Local {
            io: LocalIo::PeerCsumDigest(key),
            op: LocalOp::Digest {
                offset_bytes,
                len_bytes,
                alg: digest.algorithm(),
            },
        });
    }

    /// Target: our digest is ready: the block is in sync, or we ask for it.
    pub(super) fn peer_csum_digest_done(&mut self, key: u64, digest: Option<Digest>) {
        let req = self
            .resync
            .as_mut()
            .and_then(|r| r.csum_requests.remove(&key));
        if let Some((offset_bytes, len_bytes, want)) = req {
            if digest == Some(want) {
                self.bitmap.clear_range(offset_bytes, len_bytes);
                let r = self.resync.as_mut().expect("checked");
                r.done_bytes += len_bytes;
                r.in_sync_bytes += len_bytes;
                self.send_meta(PeerMsg::InSync {
                    offset_bytes,
                    len_bytes,
                });
            } else {
                // Different, or our read failed: the block is overwritten either way.
                self.send_data(PeerMsg::ResyncRequest {
                    offset_bytes,
                    len_bytes,
                });
            }
        }
        for next in self.conflicts.finish(Owner::CsumT(key)) {
            self.start_owner(next);
        }
    }

    /// Sends our whole bitmap in slices (both sides do, before a bitmap-based resync).
    fn send_bitmap(&mut self) {
        let total = self.bitmap.bit_count();
        let mut first_bit = 0;
        while first_bit < total {
            let bit_count = (total - first_bit).min(BITMAP_CHUNK_BITS);
            self.send_data(PeerMsg::Bitmap {
                first_bit,
                bit_count,
            });
            first_bit += bit_count;
        }
    }

    /// ORs a slice of the peer's bitmap into ours; the last slice completes the exchange.
    pub(super) fn on_peer_bitmap(&mut self, first_bit: u64, bit_count: u64, bits: &[u8]) {
        let total = self.bitmap.bit_count();
        let fits = first_bit
            .checked_add(bit_count)
            .is_some_and(|end| end <= total)
            && bits.len() as u64 >= bit_count.div_ceil(8);
        if !fits || self.resync.is_none() {
            self.emit(Action::Disconnect {
                reason: "unexpected or malformed bitmap slice".into(),
            });
            return;
        }
        let bpb = u64::from(self.cfg.bytes_per_bit);
        let size = self.cfg.data_size_bytes;
        for i in 0..bit_count {
            if bits[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                let off = (first_bit + i) * bpb;
                self.bitmap.set_range(off, bpb.min(size - off));
            }
        }
        if first_bit + bit_count == total {
            self.emit(Action::Persist(Persist::Bitmap));
            let oos = self.bitmap.dirty_bytes();
            let r = self.resync.as_mut().expect("checked above");
            r.peer_bitmap_complete = true;
            r.total_bytes = oos;
            self.pump_resync();
        }
    }

    /// Encodes bits `first_bit..first_bit + bit_count` of our bitmap (LSB first), for the
    /// driver to put in a bitmap frame.
    pub fn bitmap_bits(&self, first_bit: u64, bit_count: u64) -> Vec<u8> {
        let mut out = vec![0u8; bit_count.div_ceil(8) as usize];
        for i in 0..bit_count {
            if self.bitmap.is_set(first_bit + i) {
                out[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        out
    }
}
