//! The engine task: the one owner of the replication core. Everything that happens to the
//! resource (client requests, disk completions, peer frames, ticks, operator commands) arrives
//! here as an `EngineInput`, is stepped through the core, and the core's actions are performed
//! in order: disk I/O is started on the io_uring engine, frames handed to the peer link,
//! clients answered, metadata persisted (synchronously: `Persist` actions are barriers).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use urbd_protocol::{ConnectionState, ReplicationState, Role};
use urbd_replicator::core::{
    Action, AdminCmd, ClientRequest, Core, DataSource, Event, Input, IoFailure, LocalIo, LocalOp,
    PeerMsg, Persist,
};
use urbd_replicator::disk::{IoBuf, LocalDisk};

use super::meta::Metadata;
use super::status::StatusInfo;
use super::wire::{self, Incoming};
use crate::control::{Request, Response};
use crate::peer::{Established, PeerEvent, PeerSender};

/// Starts a connection attempt announcing the current hello; the handle aborts it.
pub type ConnectFn = Box<
    dyn Fn(mpsc::Sender<EngineInput>, watch::Receiver<HelloState>) -> tokio::task::AbortHandle
        + Send,
>;

/// A client request with its buffer.
pub enum ClientOp {
    Write {
        offset_bytes: u64,
        buf: IoBuf,
        fua: bool,
    },
    Zero {
        offset_bytes: u64,
        len_bytes: u64,
        fua: bool,
    },
    Flush,
}

/// Everything the engine reacts to.
pub enum EngineInput {
    Client {
        op: ClientOp,
        done: oneshot::Sender<Result<(), IoFailure>>,
    },
    Attach {
        done: oneshot::Sender<Result<(), String>>,
    },
    Detach,
    /// The local read of this range failed: serve it from the peer (PROTOCOL.md §5.7).
    ReadFromPeer {
        offset_bytes: u64,
        len_bytes: u64,
        done: oneshot::Sender<Result<Bytes, IoFailure>>,
    },
    LocalDone {
        io: LocalIo,
        ok: bool,
        buf: Option<IoBuf>,
    },
    /// A `LocalOp::Digest` finished (`None`: the read failed).
    DigestDone {
        io: LocalIo,
        digest: Option<urbd_protocol::Digest>,
    },
    PeerUp(Box<Established>),
    Peer {
        epoch: u64,
        event: PeerEvent,
    },
    ConnectFailed(String),
    Admin {
        req: Request,
        done: oneshot::Sender<Response>,
    },
    Subscribe(mpsc::Sender<String>),
    Tick,
}

enum AdminWaiter {
    Control(oneshot::Sender<Response>),
    Attach(oneshot::Sender<Result<(), String>>),
    /// `down` waiting for its graceful disconnect (the peer's flush).
    Down(oneshot::Sender<Response>),
}

/// What the peer link's handshake sends: refreshed after every step.
#[derive(Clone)]
pub struct HelloState {
    pub view: urbd_replicator::core::PeerView,
}

pub struct Engine {
    pub core: Core,
    pub disk: Arc<LocalDisk>,
    pub meta: Metadata,
    pub tx: mpsc::Sender<EngineInput>,
    pub hello: watch::Sender<HelloState>,
    pub info: StatusInfo,
    pub auto_promote: bool,
    pub connect: ConnectFn,
    start: Instant,
    next_client_id: u64,
    client_done: HashMap<u64, oneshot::Sender<Result<(), IoFailure>>>,
    client_bufs: HashMap<u64, IoBuf>,
    frame_bufs: HashMap<u64, Bytes>,
    read_bufs: HashMap<u64, IoBuf>,
    admin: Option<AdminWaiter>,
    peer: Option<(u64, PeerSender)>,
    peer_size_bytes: u64,
    epoch: u64,
    connecting: bool,
    /// The running connection attempt and the state it announces.
    connect_attempt: Option<(tokio::task::AbortHandle, urbd_replicator::core::PeerView)>,
    pending_sync_uuid: Option<u64>,
    subscribers: Vec<mpsc::Sender<String>>,
    last_bitmap_save_ms: u64,
    pub exit_requested: bool,
    /// Client requests (writes, zeroes, flushes) in the core at most: `max-inflight-writes`.
    pub inflight_writes_max: usize,
    /// `[handlers]` commands.
    pub handlers: super::handlers::Handlers,
    was_sync_target: bool,
    held: std::collections::VecDeque<(ClientOp, oneshot::Sender<Result<(), IoFailure>>)>,
    /// on-io-error = detach happened: the disk is no longer used (local I/O fails at once,
    /// metadata is not written) until the daemon is restarted (`down` + `up`).
    detached: bool,
    /// A failed connection attempt is retried at this time (connect-interval-ms later).
    retry_connect_at_ms: Option<u64>,
    last_connect_error: Option<String>,
    pub connect_interval_ms: u64,
    /// Reads served to the peer (`LocalIo::PeerRead`), until sent.
    peer_read_bufs: HashMap<u64, IoBuf>,
    /// Application reads waiting for the peer's copy.
    read_waiters: HashMap<u64, oneshot::Sender<Result<Bytes, IoFailure>>>,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: Core,
        disk: Arc<LocalDisk>,
        meta: Metadata,
        tx: mpsc::Sender<EngineInput>,
        hello: watch::Sender<HelloState>,
        info: StatusInfo,
        auto_promote: bool,
        connect: ConnectFn,
    ) -> Engine {
        Engine {
            core,
            disk,
            meta,
            tx,
            hello,
            info,
            auto_promote,
            connect,
            start: Instant::now(),
            next_client_id: 1,
            client_done: HashMap::new(),
            client_bufs: HashMap::new(),
            frame_bufs: HashMap::new(),
            read_bufs: HashMap::new(),
            admin: None,
            peer: None,
            peer_size_bytes: 0,
            epoch: 0,
            connecting: false,
            connect_attempt: None,
            pending_sync_uuid: None,
            subscribers: Vec::new(),
            last_bitmap_save_ms: 0,
            exit_requested: false,
            inflight_writes_max: 1024,
            handlers: Default::default(),
            was_sync_target: false,
            held: std::collections::VecDeque::new(),
            detached: false,
            retry_connect_at_ms: None,
            last_connect_error: None,
            connect_interval_ms: 1000,
            peer_read_bufs: HashMap::new(),
            read_waiters: HashMap::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Runs until the resource is taken down.
    pub async fn run(mut self, mut rx: mpsc::Receiver<EngineInput>) {
        // The resource comes up connecting, as `drbdadm up` does.
        self.step(Input::Admin(AdminCmd::Connect {
            discard_my_data: false,
        }));
        while let Some(input) = rx.recv().await {
            self.handle(input);
            if self.exit_requested {
                return;
            }
        }
    }

    fn step(&mut self, input: Input) {
        let now = self.now_ms();
        let actions = self.core.step(now, input);
        for a in actions {
            self.perform(a);
        }
        // The handshake announces the full state, flags included (crashed primary,
        // discard-my-data: the peer's connect decision depends on them).
        let view = self.core.view();
        self.hello.send_replace(HelloState { view });
        self.check_connect_attempt(view);
    }

    /// A connection attempt must not outlive `disconnect` (it would complete a handshake the
    /// peer acts on), nor announce a state that is no longer ours: stop it, or restart it.
    fn check_connect_attempt(&mut self, view: urbd_replicator::core::PeerView) {
        let Some((handle, announced)) = &self.connect_attempt else {
            return;
        };
        if !self.connecting {
            self.connect_attempt = None;
            return;
        }
        let standalone = self.core.connection_state() == ConnectionState::StandAlone;
        // What the peer's connect decision uses (not dirty_bits, which every write changes).
        let key = |v: &urbd_replicator::core::PeerView| {
            (
                v.role,
                v.disk,
                v.uuids,
                v.crashed_primary,
                v.discard_my_data,
            )
        };
        if standalone || key(announced) != key(&view) {
            handle.abort();
            self.connect_attempt = None;
            self.connecting = false;
            if !standalone && self.core.connection_state() == ConnectionState::Connecting {
                self.start_connecting();
            }
        }
    }

    fn core_view(&self) -> urbd_replicator::core::PeerView {
        urbd_replicator::core::PeerView {
            role: self.core.role(),
            disk: self.core.disk_state(),
            uuids: self.core.uuids(),
            crashed_primary: false,
            discard_my_data: false,
            dirty_bits: self.core.bitmap().count_set(),
            size_bytes: self.core.config().data_size_bytes,
        }
    }

    fn handle(&mut self, input: EngineInput) {
        match input {
            EngineInput::Client { op, done } => {
                if self.client_done.len() >= self.inflight_writes_max {
                    // The in-flight window (`max-inflight-writes`) is full: wait for an ack.
                    self.held.push_back((op, done));
                    return;
                }
                let id = self.next_client_id;
                self.next_client_id += 1;
                self.client_done.insert(id, done);
                let req = match op {
                    ClientOp::Write {
                        offset_bytes,
                        buf,
                        fua,
                    } => {
                        let len_bytes = buf.len() as u64;
                        self.client_bufs.insert(id, buf);
                        ClientRequest::Write {
                            id,
                            offset_bytes,
                            len_bytes,
                            fua,
                        }
                    }
                    ClientOp::Zero {
                        offset_bytes,
                        len_bytes,
                        fua,
                    } => ClientRequest::Zero {
                        id,
                        offset_bytes,
                        len_bytes,
                        fua,
                    },
                    ClientOp::Flush => ClientRequest::Flush { id },
                };
                self.step(Input::Client(req));
            }
            EngineInput::Attach { done } => self.attach(done),
            EngineInput::Detach => self.step(Input::ClientDetached),
            EngineInput::ReadFromPeer {
                offset_bytes,
                len_bytes,
                done,
            } => {
                let id = self.next_client_id;
                self.next_client_id += 1;
                self.read_waiters.insert(id, done);
                self.step(Input::ReadFromPeer {
                    id,
                    offset_bytes,
                    len_bytes,
                });
            }
            EngineInput::LocalDone { io, ok, buf } => {
                match (io, buf) {
                    (LocalIo::PeerRead(key), Some(buf)) => {
                        self.peer_read_bufs.insert(key, buf);
                    }
                    (LocalIo::ResyncRead(offset), Some(buf)) => {
                        self.read_bufs.insert(offset, buf);
                    }
                    _ => {}
                }
                self.step(Input::LocalDone { io, ok });
            }
            EngineInput::DigestDone { io, digest } => self.step(Input::DigestDone { io, digest }),
            EngineInput::PeerUp(est) => self.peer_up(*est),
            EngineInput::ConnectFailed(why) => {
                self.connecting = false;
                // Said once per distinct reason (a failure that repeats, such as a listen
                // address in use, must not flood the log), retried every connect interval.
                if self.last_connect_error.as_deref() != Some(why.as_str()) {
                    tracing::warn!("connecting to the peer failed: {why}");
                    self.last_connect_error = Some(why);
                }
                if self.core.connection_state() == ConnectionState::Connecting {
                    self.retry_connect_at_ms = Some(self.now_ms() + self.connect_interval_ms);
                }
            }
            EngineInput::Peer { epoch, event } => {
                if self.peer.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    return; // from a connection already gone
                }
                match event {
                    PeerEvent::Message { seq, msg } => self.peer_message(seq, msg),
                    PeerEvent::Lost { reason } => {
                        self.peer = None;
                        self.pending_sync_uuid = None;
                        self.step(Input::PeerLost { reason });
                    }
                }
            }
            EngineInput::Admin { req, done } => self.admin(req, done),
            EngineInput::Subscribe(tx) => {
                for line in self.initial_events() {
                    let _ = tx.try_send(line);
                }
                self.subscribers.push(tx);
            }
            EngineInput::Tick => {
                self.step(Input::Tick);
                if self.retry_connect_at_ms.is_some_and(|t| self.now_ms() >= t) {
                    self.retry_connect_at_ms = None;
                    if self.core.connection_state() == ConnectionState::Connecting {
                        self.start_connecting();
                    }
                }
                let now = self.now_ms();
                let progress = self.core.resync_progress().or_else(|| {
                    self.core
                        .verify_progress()
                        .filter(|v| v.running && v.source)
                        .map(|v| (v.done_bytes, v.total_bytes))
                });
                self.info.sample_resync(now, progress);
                if now.saturating_sub(self.last_bitmap_save_ms) >= 1000 {
                    self.last_bitmap_save_ms = now;
                    self.save_bitmap();
                }
            }
        }
    }

    fn attach(&mut self, done: oneshot::Sender<Result<(), String>>) {
        if self.core.role() == Role::Primary {
            self.step(Input::ClientAttached);
            let _ = done.send(Ok(()));
            return;
        }
        let peer_primary = self.core.peer().is_some_and(|p| p.role == Role::Primary);
        if self.auto_promote && !peer_primary && self.admin.is_none() {
            self.admin = Some(AdminWaiter::Attach(done));
            self.step(Input::Admin(AdminCmd::Primary { force: false }));
            return;
        }
        let node = &self.info.node;
        let _ = done.send(Err(format!(
            "node {node} is Secondary: the export is served by the Primary (promote with `urbdadm primary`)"
        )));
    }

    fn peer_up(&mut self, est: Established) {
        self.connecting = false;
        if self.core.connection_state() != ConnectionState::Connecting {
            est.tx.close("not connecting any more");
            return;
        }
        self.epoch += 1;
        let epoch = self.epoch;
        let Established {
            peer_params,
            peer_state,
            tx,
            mut rx,
            data_seq_next,
            ..
        } = est;
        self.peer_size_bytes = peer_params.size_bytes;
        self.peer = Some((epoch, tx));
        let engine_tx = self.tx.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let lost = matches!(event, PeerEvent::Lost { .. });
                if engine_tx
                    .send(EngineInput::Peer { epoch, event })
                    .await
                    .is_err()
                    || lost
                {
                    return;
                }
            }
            let event = PeerEvent::Lost {
                reason: "peer link closed".into(),
            };
            let _ = engine_tx.send(EngineInput::Peer { epoch, event }).await;
        });
        let peer = wire::view_of(&peer_state, peer_params.size_bytes);
        self.step(Input::PeerConnected {
            peer,
            data_seq_next,
        });
    }

    fn peer_message(&mut self, seq: u64, msg: urbd_protocol::Message) {
        for incoming in wire::from_wire(msg, &mut self.pending_sync_uuid) {
            match incoming {
                Incoming::Msg(PeerMsg::State(mut v)) => {
                    v.size_bytes = self.peer_size_bytes;
                    self.step(Input::PeerMessage {
                        seq,
                        msg: PeerMsg::State(v),
                    });
                }
                Incoming::Msg(m) => self.step(Input::PeerMessage { seq, msg: m }),
                Incoming::WithPayload(m, bytes) => {
                    let key = self.core.frame_key(seq);
                    self.frame_bufs.insert(key, bytes);
                    self.step(Input::PeerMessage { seq, msg: m });
                }
                Incoming::Bitmap {
                    first_bit,
                    bit_count,
                    bits,
                } => {
                    self.step(Input::PeerBitmap {
                        first_bit,
                        bit_count,
                        bits,
                    });
                }
                Incoming::Ignore(why) => tracing::debug!("ignoring a peer frame: {why}"),
            }
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Local { io, op } => self.local(io, op),
            Action::Send { seq, msg } => self.send(seq, msg),
            Action::AckClient { id, result } => {
                if let Some(done) = self.client_done.remove(&id) {
                    let _ = done.send(result);
                }
                if let Some((op, done)) = self.held.pop_front() {
                    let tx = self.tx.clone();
                    // Re-enter through the channel: we are in the middle of performing actions.
                    tokio::spawn(async move {
                        let _ = tx.send(EngineInput::Client { op, done }).await;
                    });
                }
            }
            Action::Persist(p) => {
                if !self.detached {
                    self.persist(p);
                }
            }
            Action::Detach { meta } => {
                // Best effort: the disk that just failed may refuse this too.
                let r = tokio::task::block_in_place(|| self.meta.write_state(&meta));
                match r {
                    Ok(()) => tracing::warn!(
                        "disk detached after an I/O error; its metadata now says {}",
                        meta.disk
                    ),
                    Err(e) => tracing::error!(
                        "disk detached after an I/O error; its metadata could not be marked \
                         {} either: {e}",
                        meta.disk
                    ),
                }
                self.detached = true;
            }
            Action::StartConnecting => self.start_connecting(),
            Action::Disconnect { reason } => {
                tracing::info!("disconnecting from the peer: {reason}");
                if let Some((_, tx)) = &self.peer {
                    tx.close(&reason);
                }
            }
            Action::Release(source) => match source {
                DataSource::Client(id) => drop(self.client_bufs.remove(&id)),
                DataSource::Frame(key) => drop(self.frame_bufs.remove(&key)),
                DataSource::ResyncRead(off) => drop(self.read_bufs.remove(&off)),
                DataSource::PeerRead(key) => drop(self.peer_read_bufs.remove(&key)),
            },
            Action::ReadDone { id, result } => {
                let data = result.map(|source| match source {
                    DataSource::Frame(key) => self.frame_bufs.remove(&key).unwrap_or_default(),
                    other => unreachable!("a peer read's data is a received frame, not {other:?}"),
                });
                if let Some(done) = self.read_waiters.remove(&id) {
                    let _ = done.send(data);
                }
            }
            Action::Event(e) => self.publish(&e),
            Action::AdminReply(r) => match self.admin.take() {
                Some(AdminWaiter::Control(done)) => {
                    let _ = done.send(match r {
                        Ok(()) => Response::ok(),
                        Err(e) => Response::error(e),
                    });
                }
                Some(AdminWaiter::Attach(done)) => {
                    if r.is_ok() {
                        self.step(Input::ClientAttached);
                    }
                    let _ = done.send(r.map_err(|e| format!("auto-promote failed: {e}")));
                }
                Some(AdminWaiter::Down(done)) => {
                    // The graceful disconnect ended (flushed, or timeout-ms passed).
                    let _ = done.send(self.finish_down());
                }
                None => {}
            },
        }
    }

    fn payload(&self, source: DataSource) -> Bytes {
        match source {
            DataSource::Client(id) => Bytes::copy_from_slice(self.client_bufs[&id].as_ref()),
            DataSource::Frame(key) => self.frame_bufs[&key].clone(),
            DataSource::ResyncRead(off) => Bytes::copy_from_slice(self.read_bufs[&off].as_ref()),
            DataSource::PeerRead(key) => Bytes::copy_from_slice(self.peer_read_bufs[&key].as_ref()),
        }
    }

    fn send(&mut self, seq: Option<u64>, msg: PeerMsg) {
        let Some((_, tx)) = &self.peer else { return };
        let frames = match msg {
            PeerMsg::Bitmap {
                first_bit,
                bit_count,
            } => {
                let bits = Bytes::from(self.core.bitmap_bits(first_bit, bit_count));
                let bit_count = u32::try_from(bit_count).expect("bitmap slices are small");
                vec![urbd_protocol::Message::BitmapChunk(
                    urbd_protocol::BitmapChunk {
                        first_bit,
                        bit_count,
                        bits,
                    },
                )]
            }
            PeerMsg::ReadReply {
                source: DataSource::PeerRead(key),
                ..
            } => {
                // Sent once: the buffer goes with it.
                let frames = wire::to_wire(msg, |src| self.payload(src));
                self.peer_read_bufs.remove(&key);
                frames
            }
            msg => wire::to_wire(msg, |src| self.payload(src)),
        };
        let mut seq = seq;
        for (i, frame) in frames.into_iter().enumerate() {
            let expected = seq.map(|s| s + i as u64);
            if let Err(e) = tx.send(frame, expected) {
                tracing::warn!("peer link refused a frame ({e}); dropping the connection");
                tx.close("send queue refused a frame");
                seq = None;
                let _ = seq;
                return;
            }
        }
    }

    fn local(&mut self, io: LocalIo, op: LocalOp) {
        let disk = self.disk.clone();
        let tx = self.tx.clone();
        if self.detached {
            // No disk any more: fail at once (buffers are released by the core as usual).
            if let LocalOp::Write {
                source: DataSource::Client(id),
                ..
            } = op
            {
                self.client_bufs.remove(&id);
            }
            let done = match op {
                LocalOp::Digest { .. } => EngineInput::DigestDone { io, digest: None },
                _ => EngineInput::LocalDone {
                    io,
                    ok: false,
                    buf: None,
                },
            };
            tokio::spawn(async move {
                let _ = tx.send(done).await;
            });
            return;
        }
        match op {
            LocalOp::Write {
                offset_bytes,
                len_bytes,
                fua,
                source,
            } => {
                let buf = match source {
                    DataSource::Client(id) => self.client_bufs.remove(&id).expect("client buffer"),
                    DataSource::Frame(key) => {
                        let bytes = self.frame_bufs.remove(&key).expect("frame buffer");
                        let mut buf = disk.alloc(bytes.len());
                        buf.as_mut().copy_from_slice(&bytes);
                        buf
                    }
                    DataSource::ResyncRead(_) | DataSource::PeerRead(_) => {
                        unreachable!("reads are not written locally")
                    }
                };
                assert_eq!(buf.len() as u64, len_bytes);
                complete_in_background(
                    tx,
                    io,
                    async move { disk.write(offset_bytes, buf, fua).await },
                );
            }
            LocalOp::Zero {
                offset_bytes,
                len_bytes,
                fua,
            } => {
                complete_in_background(tx, io, async move {
                    disk.write_zeroes(offset_bytes, len_bytes, true, false, fua)
                        .await
                });
            }
            LocalOp::Read {
                offset_bytes,
                len_bytes,
            } => {
                tokio::spawn(async move {
                    let buf = disk.alloc(len_bytes as usize);
                    let r = disk.read(offset_bytes, buf).await;
                    let (ok, buf) = match r {
                        Ok(b) => (true, Some(b)),
                        Err(e) => {
                            tracing::error!("{e}");
                            (false, None)
                        }
                    };
                    let _ = tx.send(EngineInput::LocalDone { io, ok, buf }).await;
                });
            }
            LocalOp::Digest {
                offset_bytes,
                len_bytes,
                alg,
            } => {
                tokio::spawn(async move {
                    let buf = disk.alloc(len_bytes as usize);
                    let digest = match disk.read(offset_bytes, buf).await {
                        Ok(b) => Some(digest_of(alg, b.as_ref())),
                        Err(e) => {
                            tracing::error!("{e}");
                            None
                        }
                    };
                    let _ = tx.send(EngineInput::DigestDone { io, digest }).await;
                });
            }
            LocalOp::Flush => {
                complete_in_background(tx, io, async move { disk.flush().await });
            }
        }
    }

    fn persist(&mut self, p: Persist) {
        let result = tokio::task::block_in_place(|| match p {
            Persist::Superblock(m) => self.meta.write_state(&m),
            Persist::Bitmap => {
                let pages = self.core.take_dirty_bitmap_pages();
                flush_data(&self.disk)?;
                self.meta.write_bitmap(self.core.bitmap(), &pages)
            }
            Persist::ActivityLog { extents } => self.meta.write_al(extents),
        });
        if let Err(e) = result {
            // Metadata we cannot persist means we cannot keep our promises: stop here rather
            // than acknowledge writes whose tracking is not durable.
            tracing::error!("cannot persist metadata: {e}; stopping the resource");
            std::process::exit(70);
        }
    }

    fn save_bitmap(&mut self) {
        let pages = self.core.take_dirty_bitmap_pages();
        if pages.is_empty() || self.detached {
            return;
        }
        let result = tokio::task::block_in_place(|| {
            flush_data(&self.disk)?;
            self.meta.write_bitmap(self.core.bitmap(), &pages)
        });
        if let Err(e) = result {
            tracing::error!("cannot persist the bitmap: {e}; stopping the resource");
            std::process::exit(70);
        }
    }

    fn start_connecting(&mut self) {
        if self.connecting || self.peer.is_some() {
            return;
        }
        self.connecting = true;
        let handle = (self.connect)(self.tx.clone(), self.hello.subscribe());
        self.connect_attempt = Some((handle, self.hello.borrow().view));
    }

    fn admin(&mut self, req: Request, done: oneshot::Sender<Response>) {
        let cmd = match req {
            Request::Status => {
                let status = self.status();
                let _ = done.send(Response::with_status(status));
                return;
            }
            Request::Primary { force } => AdminCmd::Primary { force },
            Request::Secondary { force } => AdminCmd::Secondary { force },
            Request::Connect { discard_my_data } => AdminCmd::Connect { discard_my_data },
            Request::Disconnect => AdminCmd::Disconnect,
            Request::NewCurrentUuid { clear_bitmap } => AdminCmd::NewCurrentUuid { clear_bitmap },
            Request::Invalidate => AdminCmd::Invalidate,
            Request::InvalidateRemote => AdminCmd::InvalidateRemote,
            Request::PauseSync => AdminCmd::PauseSync,
            Request::ResumeSync => AdminCmd::ResumeSync,
            Request::Verify {
                start_bytes,
                stop_bytes,
                repair,
            } => AdminCmd::Verify {
                start_bytes,
                stop_bytes,
                repair,
            },
            Request::Down => return self.down(done),
            Request::Events => {
                let _ = done.send(Response::error("events are streamed: use `urbdadm events`"));
                return;
            }
        };
        if self.admin.is_some() {
            let _ = done.send(Response::error(
                "another state change is in progress; retry",
            ));
            return;
        }
        self.admin = Some(AdminWaiter::Control(done));
        self.step(Input::Admin(cmd));
    }

    /// `urbdadm down`: demote (refused with clients attached), disconnect, persist everything
    /// with the clean-shutdown flag, exit.
    /// `urbdadm down`: demote, disconnect gracefully (the peer flushes what it acknowledged,
    /// bounded by timeout-ms, so that nothing is marked for a resync at the next start), then
    /// save the metadata with the clean-shutdown flag and exit.
    fn down(&mut self, done: oneshot::Sender<Response>) {
        if self.admin.is_some() {
            let _ = done.send(Response::error(
                "another state change is in progress; retry",
            ));
            return;
        }
        if self.core.role() == Role::Primary {
            if self.core.clients() > 0 {
                let _ = done.send(Response::error(format!(
                    "{} NBD client(s) attached; disconnect them (or `urbdadm secondary --force`) first",
                    self.core.clients()
                )));
                return;
            }
            self.step(Input::Admin(AdminCmd::Secondary { force: false }));
            if self.core.role() == Role::Primary {
                let _ = done.send(Response::error(
                    "application requests still in flight; retry `down`",
                ));
                return;
            }
        }
        if self.core.connection_state() == ConnectionState::Connected && !self.detached {
            self.admin = Some(AdminWaiter::Down(done));
            // Replies (now, or when the peer's flush is in) through `Action::AdminReply`.
            self.step(Input::Admin(AdminCmd::Disconnect));
            return;
        }
        self.step(Input::Admin(AdminCmd::Disconnect));
        let _ = done.send(self.finish_down());
    }

    fn finish_down(&mut self) -> Response {
        if self.core.connection_state() == ConnectionState::Connected {
            // Not waiting any longer: let the core mark what the peer holds only in its cache.
            self.step(Input::PeerLost {
                reason: "resource going down".into(),
            });
        }
        if let Some((_, tx)) = self.peer.take() {
            tx.close("resource going down");
        }
        let pages = self.core.take_dirty_bitmap_pages();
        let view = self.core_view();
        if self.detached {
            // The metadata was marked at detach time; the failed disk is not written again.
            self.exit_requested = true;
            return Response::ok();
        }
        let result = tokio::task::block_in_place(|| {
            // Data durable before the bitmap and the clean-shutdown flag vouch for it.
            flush_data(&self.disk)?;
            self.meta.write_bitmap(self.core.bitmap(), &pages)?;
            self.meta.clean_shutdown(&view)
        });
        self.exit_requested = true;
        match result {
            Ok(()) => Response::ok(),
            Err(e) => Response::error(format!("metadata not saved cleanly: {e}")),
        }
    }

    fn publish(&mut self, e: &Event) {
        let line = self.info.event_line(e, &self.core);
        match e {
            Event::SplitBrain => self.handlers.run("split-brain"),
            Event::Replication(ReplicationState::SyncTarget) => {
                self.was_sync_target = true;
                self.handlers.run("before-resync-target");
            }
            Event::Replication(ReplicationState::Established) if self.was_sync_target => {
                self.was_sync_target = false;
                self.handlers.run("after-resync-target");
            }
            Event::Replication(ReplicationState::PausedSyncT) => {}
            Event::Replication(_) => self.was_sync_target = false,
            _ => {}
        }
        match e {
            Event::Message(m) => tracing::info!("{m}"),
            Event::SplitBrain => {
                tracing::warn!(
                "split brain detected on resource {}: no data moved. On the node whose changes \
                 are to be discarded run `urbdadm connect --discard-my-data {}`, then \
                 `urbdadm connect {}` on the other",
                self.info.resource, self.info.resource, self.info.resource
            )
            }
            _ => tracing::info!("{line}"),
        }
        self.subscribers.retain(|s| match s.try_send(line.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    fn initial_events(&self) -> Vec<String> {
        self.info.initial_events(&self.core)
    }

    pub fn status(&self) -> crate::control::Status {
        self.info.status(&self.core)
    }
}

/// The digest of a block for online verify (PROTOCOL.md §4.1, §7.7).
fn digest_of(alg: urbd_protocol::DigestAlgorithm, data: &[u8]) -> urbd_protocol::Digest {
    use sha2::Digest as _;
    match alg {
        urbd_protocol::DigestAlgorithm::Crc32c => {
            urbd_protocol::Digest::Crc32c(crc32c::crc32c(data))
        }
        urbd_protocol::DigestAlgorithm::Sha256 => {
            urbd_protocol::Digest::Sha256(sha2::Sha256::digest(data).into())
        }
    }
}

/// Data first, then the bitmap: cleared bits must never reach the disk before the blocks they
/// vouch for (a crash in between would leave a block differing and unmarked).
fn flush_data(disk: &LocalDisk) -> Result<(), urbd_replicator::Error> {
    tokio::runtime::Handle::current().block_on(disk.flush())
}

/// Runs a local disk operation and reports its completion to the engine (errors logged).
fn complete_in_background(
    tx: mpsc::Sender<EngineInput>,
    io: LocalIo,
    op: impl std::future::Future<Output = Result<(), urbd_replicator::Error>> + Send + 'static,
) {
    tokio::spawn(async move {
        let r = op.await;
        if let Err(e) = &r {
            tracing::error!("{e}");
        }
        let done = EngineInput::LocalDone {
            io,
            ok: r.is_ok(),
            buf: None,
        };
        let _ = tx.send(done).await;
    });
}
