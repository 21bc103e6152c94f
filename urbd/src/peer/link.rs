//! An established link: a reader and a writer task per socket, a supervisor that emits the
//! single `Lost`, and the engine's [`PeerSender`] (PROTOCOL.md §1.1, §2.4, §2.5).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use urbd_protocol::{ConnectionKind, DisconnectReason, Message, MessageType, Socket};

use super::frames::{FrameReader, ReadError};
use super::handshake::{Authenticated, Checked};
use super::{PeerEvent, PeerStats};

/// Frames are encoded into one buffer until it holds this much, then written at once.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// A write buffer that grew beyond this (one huge frame) is freed after use.
const WRITE_BUF_KEEP_BYTES: usize = 4 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn socket_name(kind: ConnectionKind) -> &'static str {
    match kind {
        ConnectionKind::Data => "data",
        ConnectionKind::Meta => "meta",
    }
}

/// Counts live links; the listener refuses connections while it is non-zero.
#[derive(Debug)]
pub(crate) struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        LiveGuard(Arc::clone(count))
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why [`PeerSender::send`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The link is lost or closed; a `Lost` event is (or will be) in the event stream.
    #[error("the link to the peer is closed")]
    Closed,
    /// The socket's send queue is full: the peer is not reading. The link has been dropped
    /// (a `Lost` event follows).
    #[error("the {socket} send queue is full ({frames} frames): the peer is not reading")]
    Congested { socket: &'static str, frames: usize },
    /// The caller predicted a seq that is not the socket's next one. Nothing was sent.
    #[error("{socket}-socket seq mismatch: the engine expected {expected}, the next frame gets {actual}")]
    SeqMismatch {
        socket: &'static str,
        expected: u64,
        actual: u64,
    },
    /// Handshake messages are the transport's own.
    #[error("{0} is a handshake message; the transport sends those itself")]
    HandshakeMessage(MessageType),
    /// `send_data` was given a message of the meta socket.
    #[error("{0} does not travel on the data socket")]
    NotDataSocket(MessageType),
    /// The frame exceeds the peer's announced `max_frame_bytes` (§2.3); split it.
    #[error("a frame of {frame_bytes} bytes exceeds the peer's max-frame-bytes {max_frame_bytes}")]
    TooLarge {
        frame_bytes: usize,
        max_frame_bytes: u32,
    },
}

#[derive(Debug, Default)]
struct CoreState {
    failed: bool,
    reason: Option<String>,
}

/// State shared by the tasks and the senders. Holds no event sender, so the event channel
/// closes once the tasks are gone (after `Lost`).
struct Core {
    state: Mutex<CoreState>,
    shutdown: watch::Sender<bool>,
    stats: Arc<PeerStats>,
}

impl Core {
    /// Marks the link failed (first reason wins) and tells every task to stop.
    fn fail(&self, reason: String) {
        {
            let mut st = lock(&self.state);
            if st.failed {
                return;
            }
            st.failed = true;
            st.reason = Some(reason);
        }
        self.shutdown.send_replace(true);
    }

    fn is_failed(&self) -> bool {
        lock(&self.state).failed
    }

    /// Delivers one message unless the link has failed. The failed check and the send happen
    /// under the state lock, so nothing is delivered after `Lost`.
    async fn forward(
        &self,
        events: &mpsc::Sender<PeerEvent>,
        shutdown: &mut watch::Receiver<bool>,
        event: PeerEvent,
    ) -> bool {
        let permit = tokio::select! {
            p = events.reserve() => match p {
                Ok(p) => p,
                Err(_) => {
                    self.fail("the engine dropped the link's event receiver".into());
                    return false;
                }
            },
            _ = shutdown.wait_for(|s| *s) => return false,
        };
        let st = lock(&self.state);
        if st.failed {
            return false;
        }
        permit.send(event);
        true
    }
}

struct Queued {
    seq: u64,
    msg: Message,
}

struct SendSide {
    next_seq: u64,
    tx: mpsc::Sender<Queued>,
}

struct SenderInner {
    core: Arc<Core>,
    data: Mutex<SendSide>,
    meta: Mutex<SendSide>,
    queue_frames_max: usize,
    peer_max_frame_bytes: u32,
    peer_addr: SocketAddr,
}

/// The engine's handle for sending to the peer. Cheap to clone. When every clone is dropped
/// the link is closed (a `Lost` is still delivered on the event channel).
#[derive(Clone)]
pub struct PeerSender {
    inner: Arc<SenderInner>,
}

impl fmt::Debug for PeerSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSender")
            .field("peer_addr", &self.inner.peer_addr)
            .field("data_seq_next", &self.data_seq_next())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl PeerSender {
    /// Queues `msg` on the socket its type belongs to (§2.7) and returns the seq it was given
    /// (for data-socket requests: the request id). With `expected_seq`, the frame must get
    /// exactly that seq on its socket (the engine predicts request ids, starting at
    /// [`super::Established::data_seq_next`]); on a mismatch nothing is sent. Never blocks: a
    /// full queue drops the link and returns [`SendError::Congested`].
    pub fn send(&self, msg: Message, expected_seq: Option<u64>) -> Result<u64, SendError> {
        let t = msg.message_type();
        let (side, name) = match t.socket() {
            Socket::Data => (&self.inner.data, "data"),
            Socket::Meta => (&self.inner.meta, "meta"),
            Socket::Both => return Err(SendError::HandshakeMessage(t)),
        };
        self.enqueue(side, name, expected_seq, msg)
    }

    /// Queues a data-socket message that must get seq `expected_seq`.
    pub fn send_data(&self, expected_seq: u64, msg: Message) -> Result<(), SendError> {
        let t = msg.message_type();
        match t.socket() {
            Socket::Data => {}
            Socket::Meta => return Err(SendError::NotDataSocket(t)),
            Socket::Both => return Err(SendError::HandshakeMessage(t)),
        }
        self.enqueue(&self.inner.data, "data", Some(expected_seq), msg)
            .map(|_| ())
    }

    fn enqueue(
        &self,
        side: &Mutex<SendSide>,
        name: &'static str,
        expected_seq: Option<u64>,
        msg: Message,
    ) -> Result<u64, SendError> {
        let frame_bytes = msg.encoded_len_bytes();
        if frame_bytes > self.inner.peer_max_frame_bytes as usize {
            return Err(SendError::TooLarge {
                frame_bytes,
                max_frame_bytes: self.inner.peer_max_frame_bytes,
            });
        }
        if self.inner.core.is_failed() {
            return Err(SendError::Closed);
        }
        let mut s = lock(side);
        if let Some(expected) = expected_seq {
            if expected != s.next_seq {
                return Err(SendError::SeqMismatch {
                    socket: name,
                    expected,
                    actual: s.next_seq,
                });
            }
        }
        let seq = s.next_seq;
        match s.tx.try_send(Queued { seq, msg }) {
            Ok(()) => {
                s.next_seq += 1;
                Ok(seq)
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                drop(s);
                let frames = self.inner.queue_frames_max;
                self.inner.core.fail(format!(
                    "send queue for the {name} socket full ({frames} frames): peer not reading"
                ));
                Err(SendError::Congested {
                    socket: name,
                    frames,
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// Drops the link: both sockets are closed at once (queued frames are discarded) and the
    /// event stream ends with `Lost { reason: "closed locally: <reason>" }`. To tell the peer
    /// why, `send` a `Disconnect` instead: the link closes right after it is written.
    pub fn close(&self, reason: impl fmt::Display) {
        self.inner.core.fail(format!("closed locally: {reason}"));
    }

    /// True once the link has failed or been closed.
    pub fn is_closed(&self) -> bool {
        self.inner.core.is_failed()
    }

    /// The seq the next data-socket frame will get.
    pub fn data_seq_next(&self) -> u64 {
        lock(&self.inner.data).next_seq
    }

    /// Frames waiting in a socket's send queue (for flow control of bulk traffic).
    pub fn queued_frames(&self, socket: Socket) -> usize {
        let side = match socket {
            Socket::Meta => &self.inner.meta,
            _ => &self.inner.data,
        };
        let s = lock(side);
        s.tx.max_capacity() - s.tx.capacity()
    }

    /// The peer's decoder limit: frames larger than this are refused by `send`.
    pub fn peer_max_frame_bytes(&self) -> u32 {
        self.inner.peer_max_frame_bytes
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer_addr
    }

    /// The transport's counters.
    pub fn stats(&self) -> &Arc<PeerStats> {
        &self.inner.core.stats
    }
}

/// The pieces `start` returns.
pub(crate) struct Started {
    pub(crate) tx: PeerSender,
    pub(crate) rx: mpsc::Receiver<PeerEvent>,
    pub(crate) data_seq_next: u64,
    pub(crate) meta_seq_next: u64,
}

/// Starts the tasks of a link on two authenticated sockets whose `Params`/`State` exchange is
/// done.
pub(crate) fn start(
    data: Authenticated,
    meta: Authenticated,
    cfg: &Checked,
    peer_max_frame_bytes: u32,
    stats: Arc<PeerStats>,
    peer_label: String,
    live: LiveGuard,
) -> Started {
    let queue_frames_max = cfg.send_queue_frames_max;
    let recv_queue_frames_max = cfg.recv_queue_frames_max;
    let (shutdown, _) = watch::channel(false);
    let core = Arc::new(Core {
        state: Mutex::new(CoreState::default()),
        shutdown,
        stats,
    });
    let (events_tx, events_rx) = mpsc::channel(recv_queue_frames_max);
    let peer_addr = data.conn.addr;
    let data_seq_next = data.conn.send_seq;
    let meta_seq_next = meta.conn.send_seq;

    let mut tasks = Vec::with_capacity(4);
    let mut sides = Vec::with_capacity(2);
    for auth in [data, meta] {
        let kind = auth.kind;
        let (rd, wr) = auth.conn.stream.into_split();
        let (qtx, qrx) = mpsc::channel(queue_frames_max);
        sides.push(SendSide {
            next_seq: auth.conn.send_seq,
            tx: qtx,
        });
        tasks.push(tokio::spawn(read_loop(
            rd,
            auth.conn.reader,
            kind,
            Arc::clone(&core),
            events_tx.clone(),
        )));
        tasks.push(tokio::spawn(write_loop(wr, qrx, kind, Arc::clone(&core))));
    }
    let meta_side = sides.pop();
    let data_side = sides.pop();
    let (Some(data_side), Some(meta_side)) = (data_side, meta_side) else {
        unreachable!("two sides were pushed");
    };
    tokio::spawn(supervise(
        Arc::clone(&core),
        tasks,
        events_tx,
        live,
        peer_label,
    ));
    Started {
        tx: PeerSender {
            inner: Arc::new(SenderInner {
                core,
                data: Mutex::new(data_side),
                meta: Mutex::new(meta_side),
                queue_frames_max,
                peer_max_frame_bytes,
                peer_addr,
            }),
        },
        rx: events_rx,
        data_seq_next,
        meta_seq_next,
    }
}

async fn supervise(
    core: Arc<Core>,
    tasks: Vec<JoinHandle<()>>,
    events: mpsc::Sender<PeerEvent>,
    live: LiveGuard,
    peer_label: String,
) {
    let mut shutdown = core.shutdown.subscribe();
    let _ = shutdown.wait_for(|s| *s).await;
    // Every task stops at the shutdown signal; their socket halves close with them.
    for task in tasks {
        let _ = task.await;
    }
    drop(live);
    let reason = lock(&core.state)
        .reason
        .clone()
        .unwrap_or_else(|| "link closed".into());
    tracing::info!("connection to peer {peer_label} lost: {reason}");
    if let Ok(permit) = events.reserve().await {
        permit.send(PeerEvent::Lost { reason });
    }
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    mut reader: FrameReader,
    kind: ConnectionKind,
    core: Arc<Core>,
    events: mpsc::Sender<PeerEvent>,
) {
    let socket = socket_name(kind);
    let mut shutdown = core.shutdown.subscribe();
    let mut disconnect: Option<DisconnectReason> = None;
    loop {
        let read = tokio::select! {
            r = reader.read(&mut rd, false) => r,
            _ = shutdown.wait_for(|s| *s) => return,
            _ = events.closed() => {
                core.fail("the engine dropped the link's event receiver".into());
                return;
            }
        };
        match read {
            Ok((header, msg)) => {
                let t = msg.message_type();
                if t.is_handshake() || !t.allowed_on(kind) {
                    PeerStats::bump(&core.stats.protocol_errors);
                    core.fail(format!(
                        "protocol error on {socket} socket: {t} (seq {}) is not allowed there",
                        header.seq
                    ));
                    return;
                }
                if let Message::Disconnect(d) = &msg {
                    disconnect = Some(d.reason);
                }
                let event = PeerEvent::Message {
                    seq: header.seq,
                    msg,
                };
                if !core.forward(&events, &mut shutdown, event).await {
                    return;
                }
            }
            Err(e) => {
                match &e {
                    ReadError::Crc { .. } => PeerStats::bump(&core.stats.crc_errors),
                    e if e.is_protocol() => PeerStats::bump(&core.stats.protocol_errors),
                    _ => {}
                }
                let reason = match (&e, disconnect) {
                    (ReadError::Eof | ReadError::Io(_), Some(why)) => {
                        format!("peer sent Disconnect ({why}) and closed the {socket} socket")
                    }
                    _ => e.describe(socket),
                };
                core.fail(reason);
                return;
            }
        }
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Queued>,
    kind: ConnectionKind,
    core: Arc<Core>,
) {
    let socket = socket_name(kind);
    let mut shutdown = core.shutdown.subscribe();
    let mut buf = BytesMut::new();
    let mut expected_seq: Option<u64> = None;
    loop {
        let first = tokio::select! {
            q = queue.recv() => q,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Some(mut next) = first else {
            core.fail("closed locally: every PeerSender was dropped".into());
            return;
        };
        let mut sent_disconnect = false;
        loop {
            // Seqs are assigned in queue order under the side's lock; check it anyway.
            if let Some(e) = expected_seq {
                debug_assert_eq!(next.seq, e, "{socket} send seqs must be consecutive");
            }
            expected_seq = Some(next.seq + 1);
            sent_disconnect |= matches!(next.msg, Message::Disconnect(_));
            next.msg.encode(next.seq, &mut buf);
            if buf.len() >= WRITE_BATCH_BYTES || sent_disconnect {
                break;
            }
            match queue.try_recv() {
                Ok(q) => next = q,
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            r = wr.write_all(&buf) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if let Err(e) = written {
            core.fail(format!("write error on {socket} socket: {e}"));
            return;
        }
        if sent_disconnect {
            // §4.26: Disconnect is the last frame; close both sockets after it.
            let _ = wr.shutdown().await;
            core.fail("we sent Disconnect to the peer".into());
            return;
        }
        if buf.capacity() > WRITE_BUF_KEEP_BYTES {
            buf = BytesMut::new();
        } else {
            buf.clear();
        }
    }
}
