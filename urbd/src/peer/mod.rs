//! The peer transport: two authenticated TCP connections to the other node of a resource
//! (PROTOCOL.md §1 transport, §2 frames, §3 handshake and authentication).
//!
//! # Shape
//!
//! - [`Connector::start`] binds the listen address and runs a listener task for the
//!   connector's whole lifetime.
//! - [`Connector::connect`] dials the peer every `connect_interval_ms` and takes incoming
//!   connections until one pair of sockets (data + meta) is authenticated and the
//!   `Params`/`State` exchange is done; it returns an [`Established`] link. Dropping the future
//!   cancels the attempt (every task it started is aborted and its sockets closed).
//! - The link is driven by four tasks (a reader and a writer per socket). The engine sends with
//!   [`PeerSender`] and receives [`PeerEvent`]s from `Established::rx`; the stream of events ends
//!   with exactly one [`PeerEvent::Lost`].
//!
//! # Handshake (each socket, PROTOCOL.md §3.1)
//!
//! ```text
//! dialer                                  acceptor
//! Hello{kind} seq 0               ──▶     (validates, learns the kind)
//!                                 ◀──     Hello{same kind} seq 0
//! AuthChallenge seq 1             ──▶◀──  AuthChallenge seq 1       (64 bytes from getrandom)
//!   reflection check: a challenge equal to ours → AuthResult denied, close
//! AuthResponse seq 2              ──▶◀──  AuthResponse seq 2        HMAC-SHA256(secret, c ‖ own name)
//!   constant-time verify (hmac's verify_slice)
//! AuthResult seq 3                ──▶◀──  AuthResult seq 3          denied → close
//! ```
//!
//! Then, once both sockets of a pair are authenticated, on the data socket:
//!
//! ```text
//! decider (lower name)                    follower
//! Params seq 4, State seq 5       ──▶
//!                                 ◀──     Params seq 4, State seq 5   (answer: this pair)
//! State seq 6 (confirmation)      ──▶                                 (decider commits)
//!                                         (follower commits)
//! ```
//!
//! so the first engine frame on the data socket has seq 7 from the decider and seq 6 from the
//! follower ([`Established::data_seq_next`]), and on the meta socket seq 4 from both.
//!
//! # Who decides which pair is used (collision rule, §1.3)
//!
//! Both nodes listen and dial, so a node can hold a pair it dialed and a pair the peer dialed.
//! The node whose name is lower ([`urbd_protocol::outgoing_connection_wins`]) is the *decider*:
//! it sends `Params`+`State` first, on the pair it chose, and closes every other pair. If it
//! holds an incoming pair while its own dial is still in progress, it waits for the dial and
//! keeps its outgoing pair when that succeeds — so when both pairs exist, the lower-named node's
//! outgoing pair wins on both sides, as §1.3 says. The higher-named node answers on whichever
//! pair the decider's `Params` arrives and closes the others.
//!
//! Neither side commits to a pair the other has abandoned, nor acts on a `State` the other no
//! longer stands behind. The decider acts on the follower's `State`, which is the follower's
//! answer on this very pair from its running `connect()`. The follower does not act on the
//! decider's first `State`: it may have sat in a parked socket for seconds, written by a
//! `connect()` the decider has since given up (operator `disconnect`, promotion, writes). It
//! completes only on the decider's confirming `State`, which the decider writes after it
//! received the follower's answer and commits to the pair; an abandoned pair ends in EOF
//! there and is dropped.
//!
//! # Listener while connected
//!
//! The listener keeps running. While a link is established, a new incoming connection is
//! refused at once (accepted and closed, logged at info "refusing connection ... already
//! connected"). While not connected, incoming connections are authenticated even if no
//! `connect()` is running at that moment and parked for up to `handshake_timeout_ms`, so a peer
//! that reconnects a little sooner than our engine calls `connect()` again is not turned away.
//! Whatever the peer wrote into a parked pair may be stale; the confirmation above makes that
//! harmless (a pair the peer has given up fails instead of completing).
//! At most [`MAX_PENDING_INCOMING`] unauthenticated connections are handshaking at once; more
//! are closed immediately, except that connections from the peer's configured IP address have
//! [`MAX_PENDING_INCOMING_FROM_PEER`] slots of their own (strangers cannot keep the peer out).
//!
//! # Back-pressure
//!
//! Each socket has a bounded send queue of `send_queue_frames_max` frames. [`PeerSender::send`]
//! never blocks: when the queue is full it returns [`SendError::Congested`] **and drops the
//! link** (`Lost { reason: "send queue ... full ..." }`): a peer that stops reading can never
//! deadlock the engine, and the engine sees the same `Lost` as for any other failure. Incoming
//! events go through a bounded channel (`recv_queue_frames_max`); if the engine does not drain
//! it, the readers stop reading and TCP pushes back on the peer.

mod auth;
mod connector;
mod frames;
mod handshake;
mod link;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use urbd_protocol::{DecodeLimits, Message, Params, State};

pub use connector::Connector;
pub use link::{PeerSender, SendError};

/// Default `handshake_timeout_ms`.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 5000;
/// Default `connect_interval_ms` (DRBD's connect-int, 10 s).
pub const CONNECT_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// Default `send_queue_frames_max` (per socket).
pub const SEND_QUEUE_FRAMES_MAX_DEFAULT: usize = 1024;
/// Default `recv_queue_frames_max`.
pub const RECV_QUEUE_FRAMES_MAX_DEFAULT: usize = 256;
/// Most incoming connections handshaking at the same time; more are closed at once.
pub const MAX_PENDING_INCOMING: usize = 16;
/// Extra handshake slots for connections from the peer's configured IP address, used when the
/// [`MAX_PENDING_INCOMING`] shared ones are taken (by strangers holding silent connections).
pub const MAX_PENDING_INCOMING_FROM_PEER: usize = 4;

/// Configuration of the transport to one peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The resource name, sent in `Hello` and required from the peer.
    pub resource: String,
    /// Our node name (sent in `Hello`, bound into our `AuthResponse`).
    pub local_name: String,
    /// The peer's node name; a `Hello` with any other name is refused.
    pub peer_name: String,
    /// Where we listen for the peer.
    pub listen: SocketAddr,
    /// Where we dial the peer.
    pub peer_addr: SocketAddr,
    /// The shared secret (non-empty).
    pub secret: Vec<u8>,
    /// Our decoder limits. Our `Params.max_frame_bytes` is always announced from these.
    pub limits: DecodeLimits,
    /// How often to dial while connecting.
    pub connect_interval_ms: u64,
    /// Bound on each socket's Hello+auth exchange, and on the Params/State exchange.
    pub handshake_timeout_ms: u64,
    /// Bound on each socket's outgoing queue (frames).
    pub send_queue_frames_max: usize,
    /// Bound on the incoming event channel (frames).
    pub recv_queue_frames_max: usize,
}

impl PeerConfig {
    /// A configuration with the defaults for everything but names, addresses and secret.
    pub fn new(
        resource: impl Into<String>,
        local_name: impl Into<String>,
        peer_name: impl Into<String>,
        listen: SocketAddr,
        peer_addr: SocketAddr,
        secret: impl Into<Vec<u8>>,
    ) -> Self {
        PeerConfig {
            resource: resource.into(),
            local_name: local_name.into(),
            peer_name: peer_name.into(),
            listen,
            peer_addr,
            secret: secret.into(),
            limits: DecodeLimits::default(),
            connect_interval_ms: CONNECT_INTERVAL_MS_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            send_queue_frames_max: SEND_QUEUE_FRAMES_MAX_DEFAULT,
            recv_queue_frames_max: RECV_QUEUE_FRAMES_MAX_DEFAULT,
        }
    }
}

/// What the engine gives the transport for one connection attempt: our `Params` and `State`.
/// `params.max_frame_bytes` is replaced by `PeerConfig::limits.max_frame_bytes()` (the
/// transport announces the limit its own decoder enforces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalHello {
    pub params: Params,
    pub state: State,
}

/// A connected, authenticated link. `peer_params.size_bytes` may differ from ours: the engine
/// decides (usable size = smaller non-zero size, §3.4). Protocol and bitmap granularity are
/// already checked equal.
#[derive(Debug)]
pub struct Established {
    pub peer_params: Params,
    pub peer_state: State,
    pub tx: PeerSender,
    pub rx: mpsc::Receiver<PeerEvent>,
    /// The seq the first engine frame on the data socket will get (a request's id, §2.5).
    pub data_seq_next: u64,
    /// The seq the first engine frame on the meta socket will get.
    pub meta_seq_next: u64,
    /// The peer's address (of the data socket).
    pub peer_addr: SocketAddr,
    /// True if we dialed the pair in use, false if the peer did.
    pub outgoing: bool,
}

/// What the link delivers to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A frame from the peer, in order per socket. `seq` is the frame's seq (for data-socket
    /// requests, the request id the replies must name).
    Message { seq: u64, msg: Message },
    /// The link is gone (both sockets closed). Always the last event, sent exactly once.
    Lost { reason: String },
}

/// Why [`Connector::start`] or [`Connector::connect`] gave up. Transient failures (peer down,
/// wrong secret, garbage, timeouts) are logged and retried, never returned.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The configuration is unusable.
    #[error("invalid peer configuration: {0}")]
    Config(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// [`Connector::start`] failed (configuration or listen address); the text says why.
    #[error("peer transport not started: {0}")]
    NotStarted(String),
    /// The peer authenticated but its `Params` are incompatible with ours (replication protocol
    /// or bitmap granularity differ, §3.4). Both sides sent `Disconnect{ConfigMismatch}`.
    /// Retrying will not help until the configuration changes.
    #[error("peer {peer} is incompatible: {reason}")]
    Incompatible { peer: String, reason: String },
}

/// Counters of the transport, shared by the connector and all its links.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Frames whose crc32c did not match (each dropped the link, §2.2).
    pub crc_errors: AtomicU64,
    /// Handshakes refused for authentication: wrong secret, reflected challenge.
    pub auth_failures: AtomicU64,
    /// Connections or links dropped for a protocol violation (bad frame, bad Hello, seq gap).
    pub protocol_errors: AtomicU64,
    /// Incoming connections refused because a link is established or too many are pending.
    pub refused_connections: AtomicU64,
    /// Links established.
    pub established: AtomicU64,
}

impl PeerStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
