//! Online verify (PROTOCOL.md §7.7). The node that runs `verify` (VerifyS) walks its range in
//! order, one bitmap block at a time: it takes the block in the conflict tracker, has the
//! driver digest it (`LocalOp::Digest`), sends `VerifyRequest {range, digest}` on the data
//! socket and only then releases the block. The peer (VerifyT) takes the block in its own
//! conflict tracker (so it digests only after every replicated write received before the
//! request, and before any received after it), digests its copy and answers `VerifyReply
//! {in_sync}`. A block that differs is marked out of sync on both nodes, counted and logged;
//! with `repair`, VerifyS then resyncs the marked blocks to the peer at once.
//!
//! Why no false positive under application writes: VerifyS is the Primary (or neither node
//! is). A write that took the block before the verify did is complete locally and its data
//! frame precedes the request on the ordered data socket; a write that comes after waits for
//! the verify locally and its frame follows the request, so VerifyT digests after the first
//! kind and before the second, exactly as VerifyS did. VerifyS reads go through the same rate
//! controller as resync reads (§7.6.1).

use std::collections::{BTreeMap, HashMap};

use urbd_protocol::{ConnectionState, Digest, DiskState, ReplicationState, Role};

use super::*;

/// Differing ranges named in the log line at the end (the rest are counted).
const RANGES_LOGGED_MAX: usize = 32;

#[derive(Debug)]
pub(super) struct Verify {
    source: bool,
    start_bytes: u64,
    stop_bytes: u64,
    cursor_bytes: u64,
    repair: bool,
    /// VerifyS: blocks taken (waiting on a conflict or being digested): id → (offset, len).
    digesting: HashMap<u64, (u64, u64)>,
    /// VerifyS: requests sent, waiting for the reply: offset → len.
    awaiting_reply: BTreeMap<u64, u64>,
    /// VerifyT: requests received and not answered: frame key → (offset, len, digest).
    requests: HashMap<u64, (u64, u64, Digest)>,
    done_bytes: u64,
    found_bytes: u64,
    /// Differing ranges, adjacent ones merged.
    found: Vec<(u64, u64)>,
}

impl Verify {
    fn new(source: bool, start_bytes: u64, stop_bytes: u64, repair: bool) -> Verify {
        Verify {
            source,
            start_bytes,
            stop_bytes,
            cursor_bytes: start_bytes,
            repair,
            digesting: HashMap::new(),
            awaiting_reply: BTreeMap::new(),
            requests: HashMap::new(),
            done_bytes: 0,
            found_bytes: 0,
            found: Vec::new(),
        }
    }

    pub(super) fn progress(&self) -> VerifyProgress {
        VerifyProgress {
            source: self.source,
            running: true,
            start_bytes: self.start_bytes,
            stop_bytes: self.stop_bytes,
            done_bytes: self.done_bytes,
            total_bytes: self.stop_bytes - self.start_bytes,
            found_bytes: self.found_bytes,
        }
    }

    fn record(&mut self, offset: u64, len: u64) {
        self.found_bytes += len;
        match self.found.last_mut() {
            Some(last) if last.0 + last.1 == offset => last.1 += len,
            _ => self.found.push((offset, len)),
        }
    }
}

impl Core {
    pub(super) fn admin_verify(
        &mut self,
        start_bytes: Option<u64>,
        stop_bytes: Option<u64>,
        repair: bool,
    ) -> Result<(), String> {
        let peer_name = self.cfg.peer_name.clone();
        let Some(peer) = self
            .peer
            .filter(|_| self.conn == ConnectionState::Connected)
        else {
            return Err(format!(
                "not connected to {peer_name} (connection {}): verify compares with the peer's data; `urbdadm connect` first",
                self.conn
            ));
        };
        if self.repl != ReplicationState::Established {
            return Err(format!(
                "replication is {}: verify needs an Established connection (wait for the resync: `urbdadm wait-sync`)",
                self.repl
            ));
        }
        if self.disk != DiskState::UpToDate || peer.disk != DiskState::UpToDate {
            return Err(format!(
                "verify compares two UpToDate disks; ours is {}, {peer_name}'s is {}",
                self.disk, peer.disk
            ));
        }
        if peer.role == Role::Primary && self.role != Role::Primary {
            return Err(format!(
                "peer {peer_name} is Primary: run `urbdadm verify` there (the Primary orders the application writes the verify must not race)"
            ));
        }
        let size = self.cfg.data_size_bytes;
        let bpb = u64::from(self.cfg.bytes_per_bit);
        let start = start_bytes.unwrap_or(0).min(size) / bpb * bpb;
        let stop = stop_bytes
            .unwrap_or(size)
            .min(size)
            .div_ceil(bpb)
            .saturating_mul(bpb)
            .min(size);
        if start >= stop {
            return Err(format!(
                "nothing to verify in [{start}, {stop}) (the device has {size} bytes)"
            ));
        }
        self.send_data(PeerMsg::VerifyStart {
            start_bytes: start,
            stop_bytes: stop,
        });
        self.verify = Some(Verify::new(true, start, stop, repair));
        self.throttle.last_ms = None;
        self.set_repl(ReplicationState::VerifyS);
        self.event(Event::Message(format!(
            "online verify of [{start}, {stop}) started ({}{})",
            self.cfg.verify_alg,
            if repair { ", repair" } else { "" }
        )));
        self.pump_verify();
        Ok(())
    }

    /// VerifyS: takes the next blocks, up to the in-flight bound and the rate budget.
    pub(super) fn pump_verify(&mut self) {
        loop {
            let Some(v) = self.verify.as_ref() else {
                return;
            };
            if !v.source || self.repl != ReplicationState::VerifyS {
                return;
            }
            if v.digesting.len() + v.awaiting_reply.len() >= self.verify_inflight_max() {
                return;
            }
            if v.cursor_bytes >= v.stop_bytes {
                self.maybe_finish_verify_source();
                return;
            }
            if !self.waiting_clients.is_empty() {
                return; // application writes first (§7.6.1)
            }
            // One bitmap block per request: what differs is found to the block.
            let len = u64::from(self.cfg.bytes_per_bit).min(v.stop_bytes - v.cursor_bytes);
            if !self.throttle_take(len) {
                return;
            }
            let id = self.verify_block_next;
            self.verify_block_next += 1;
            let v = self.verify.as_mut().expect("verify running");
            let offset = v.cursor_bytes;
            v.cursor_bytes += len;
            v.digesting.insert(id, (offset, len));
            if self
                .conflicts
                .try_start(offset, offset + len, Owner::VerifyS(id))
            {
                self.start_verify_owner(Owner::VerifyS(id));
            }
        }
    }

    /// Blocks in flight: as many bytes as the resync keeps in flight, at most 1024 blocks.
    fn verify_inflight_max(&self) -> usize {
        let per_chunk = (self.cfg.resync_chunk_bytes / self.cfg.bytes_per_bit) as usize;
        (self.cfg.resync_inflight_max * per_chunk).clamp(self.cfg.resync_inflight_max, 1024)
    }

    /// A verify block got its range: digest it.
    pub(super) fn start_verify_owner(&mut self, owner: Owner) {
        let v = self
            .verify
            .as_ref()
            .expect("verify owners exist while it runs");
        let (io, offset_bytes, len_bytes, alg) = match owner {
            Owner::VerifyS(id) => {
                let (o, l) = v.digesting[&id];
                (LocalIo::VerifyDigest(id), o, l, self.cfg.verify_alg)
            }
            Owner::VerifyT(key) => {
                let (o, l, d) = v.requests[&key];
                (LocalIo::PeerVerifyDigest(key), o, l, d.algorithm())
            }
            _ => unreachable!("not a verify owner"),
        };
        self.emit(Action::Local {
            io,
            op: LocalOp::Digest {
                offset_bytes,
                len_bytes,
                alg,
            },
        });
    }

    pub(super) fn on_digest_done(&mut self, io: LocalIo, digest: Option<Digest>) {
        match io {
            LocalIo::VerifyDigest(id) => {
                let block = self.verify.as_mut().and_then(|v| v.digesting.remove(&id));
                match (block, digest) {
                    (Some((offset_bytes, len_bytes)), Some(digest)) => {
                        // Sent before the block is released: every write that waited for it
                        // sends its frame after the request (§7.7).
                        self.send_data(PeerMsg::VerifyRequest {
                            offset_bytes,
                            len_bytes,
                            digest,
                        });
                        if let Some(v) = self.verify.as_mut() {
                            v.awaiting_reply.insert(offset_bytes, len_bytes);
                        }
                    }
                    (Some((offset_bytes, _)), None) => self.verify_read_failed(offset_bytes),
                    (None, _) => {} // the verify ended (peer lost) while the digest ran
                }
                for next in self.conflicts.finish(Owner::VerifyS(id)) {
                    self.start_owner(next);
                }
                self.pump_verify();
            }
            LocalIo::PeerVerifyDigest(key) => {
                for next in self.conflicts.finish(Owner::VerifyT(key)) {
                    self.start_owner(next);
                }
                let request = self.verify.as_mut().and_then(|v| v.requests.remove(&key));
                match (request, digest) {
                    (Some((offset_bytes, len_bytes, want)), Some(got)) => {
                        let in_sync = want == got;
                        self.send_meta(PeerMsg::VerifyReply {
                            offset_bytes,
                            len_bytes,
                            in_sync,
                        });
                        self.verify_block_done(offset_bytes, len_bytes, in_sync);
                        let v = self.verify.as_ref().expect("verify running");
                        if v.done_bytes >= v.stop_bytes - v.start_bytes {
                            self.finish_verify();
                        }
                    }
                    (Some((offset_bytes, _, _)), None) => self.verify_read_failed(offset_bytes),
                    (None, _) => {}
                }
            }
            LocalIo::ResyncDigest(offset_bytes) => self.resync_digest_done(offset_bytes, digest),
            LocalIo::PeerCsumDigest(key) => self.peer_csum_digest_done(key, digest),
            other => panic!("DigestDone for {other:?}, which is not a digest"),
        }
    }

    fn verify_read_failed(&mut self, offset_bytes: u64) {
        self.event(Event::Message(format!(
            "online verify: local read failed at offset {offset_bytes}"
        )));
        self.emit(Action::Disconnect {
            reason: "local read failed during online verify".into(),
        });
    }

    /// Counts a compared block on either side; a difference is marked out of sync.
    fn verify_block_done(&mut self, offset_bytes: u64, len_bytes: u64, in_sync: bool) {
        let Some(v) = self.verify.as_mut() else {
            return;
        };
        v.done_bytes += len_bytes;
        if !in_sync {
            v.record(offset_bytes, len_bytes);
            self.bitmap.set_range(offset_bytes, len_bytes);
        }
        let p = v.progress();
        // An event per difference and per percent, not per block.
        let before = (p.done_bytes - len_bytes) * 100 / p.total_bytes.max(1);
        if in_sync && p.done_bytes * 100 / p.total_bytes.max(1) == before {
            return;
        }
        self.event(Event::VerifyProgress {
            done_bytes: p.done_bytes,
            total_bytes: p.total_bytes,
            found_bytes: p.found_bytes,
        });
    }

    pub(super) fn on_peer_verify(&mut self, seq: u64, msg: PeerMsg) {
        let size = self.cfg.data_size_bytes;
        match msg {
            PeerMsg::VerifyStart {
                start_bytes,
                stop_bytes,
            } => {
                let ok = self.repl == ReplicationState::Established
                    && self.resync.is_none()
                    && self.verify.is_none()
                    && start_bytes < stop_bytes
                    && stop_bytes <= size;
                if !ok {
                    return self.verify_protocol_error("unexpected VerifyStart");
                }
                self.verify = Some(Verify::new(false, start_bytes, stop_bytes, false));
                self.set_repl(ReplicationState::VerifyT);
                self.event(Event::Message(format!(
                    "peer runs an online verify of [{start_bytes}, {stop_bytes})"
                )));
            }
            PeerMsg::VerifyRequest {
                offset_bytes,
                len_bytes,
                digest,
            } => {
                let ok = self.verify.as_ref().is_some_and(|v| {
                    !v.source
                        && offset_bytes >= v.start_bytes
                        && offset_bytes
                            .checked_add(len_bytes)
                            .is_some_and(|end| end <= v.stop_bytes)
                });
                if !ok || len_bytes == 0 {
                    return self.verify_protocol_error("unexpected VerifyRequest");
                }
                let key = self.frame_key(seq);
                let v = self.verify.as_mut().expect("checked");
                v.requests.insert(key, (offset_bytes, len_bytes, digest));
                if self.conflicts.try_start(
                    offset_bytes,
                    offset_bytes + len_bytes,
                    Owner::VerifyT(key),
                ) {
                    self.start_verify_owner(Owner::VerifyT(key));
                }
            }
            PeerMsg::VerifyReply {
                offset_bytes,
                len_bytes,
                in_sync,
            } => {
                let known = self.verify.as_mut().is_some_and(|v| {
                    v.source && v.awaiting_reply.remove(&offset_bytes) == Some(len_bytes)
                });
                if !known {
                    return self.verify_protocol_error("unexpected VerifyReply");
                }
                self.verify_block_done(offset_bytes, len_bytes, in_sync);
                self.pump_verify();
            }
            _ => unreachable!("not a verify message"),
        }
    }

    fn verify_protocol_error(&mut self, what: &str) {
        self.emit(Action::Disconnect {
            reason: format!("{what} (replication {})", self.repl),
        });
    }

    fn maybe_finish_verify_source(&mut self) {
        let done = self.verify.as_ref().is_some_and(|v| {
            v.source
                && v.cursor_bytes >= v.stop_bytes
                && v.digesting.is_empty()
                && v.awaiting_reply.is_empty()
        });
        if done {
            self.finish_verify();
        }
    }

    /// The pass is over (on either side): report, and with `repair` resync what differs.
    fn finish_verify(&mut self) {
        let v = self.verify.take().expect("verify running");
        let mut p = v.progress();
        p.running = false;
        self.last_verify = Some(p);
        self.set_repl(ReplicationState::Established);
        if v.found_bytes > 0 {
            self.emit(Action::Persist(Persist::Bitmap));
        }
        let mut ranges: Vec<String> = v
            .found
            .iter()
            .take(RANGES_LOGGED_MAX)
            .map(|(o, l)| format!("[{o}, {})", o + l))
            .collect();
        if v.found.len() > RANGES_LOGGED_MAX {
            ranges.push(format!("and {} more", v.found.len() - RANGES_LOGGED_MAX));
        }
        let found = if v.found_bytes == 0 {
            "no difference".to_owned()
        } else {
            format!(
                "{} bytes out of sync (marked) in {} range(s): {}",
                v.found_bytes,
                v.found.len(),
                ranges.join(" ")
            )
        };
        self.event(Event::Message(format!(
            "online verify of [{}, {}) done ({}): {found}",
            v.start_bytes,
            v.stop_bytes,
            if v.source { "VerifyS" } else { "VerifyT" }
        )));
        self.event(Event::VerifyProgress {
            done_bytes: p.done_bytes,
            total_bytes: p.total_bytes,
            found_bytes: p.found_bytes,
        });
        if v.source && v.found_bytes > 0 {
            if v.repair {
                self.start_verify_repair();
            } else {
                self.event(Event::Message(
                    "the differing blocks stay marked: `urbdadm verify --repair`, `invalidate`/`invalidate-remote`, or disconnect/connect resyncs them".into(),
                ));
            }
        }
    }

    /// `verify --repair`: a bitmap resync from this node, on the live connection.
    fn start_verify_repair(&mut self) {
        let peer_primary = self.peer.is_some_and(|p| p.role == Role::Primary);
        if self.disk != DiskState::UpToDate || peer_primary {
            self.event(Event::Message(
                "verify --repair: this node is not UpToDate or the peer is Primary: not resyncing; the blocks stay marked".into(),
            ));
            return;
        }
        self.event(Event::Message(
            "verify --repair: resyncing the differing blocks from this node".into(),
        ));
        self.send_data(PeerMsg::ResyncStart {
            full: false,
            sender_is_target: false,
        });
        if let Some(p) = self.peer.as_mut() {
            p.disk = DiskState::Inconsistent;
        }
        self.event(Event::PeerDisk(DiskState::Inconsistent));
        self.start_sync_source(false);
    }

    /// The peer went away: the verify ends where it is (the marks it made stay).
    pub(super) fn abort_verify(&mut self, reason: &str) {
        let Some(v) = self.verify.take() else {
            return;
        };
        self.conflicts
            .cancel_waiting(|o| matches!(o, Owner::VerifyS(_) | Owner::VerifyT(_)));
        let mut p = v.progress();
        p.running = false;
        self.last_verify = Some(p);
        if v.found_bytes > 0 {
            self.emit(Action::Persist(Persist::Bitmap));
        }
        self.event(Event::Message(format!(
            "online verify aborted at {} of {} bytes ({reason}); {} bytes found out of sync so far",
            p.done_bytes, p.total_bytes, p.found_bytes
        )));
    }
}
