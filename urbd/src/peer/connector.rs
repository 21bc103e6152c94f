//! The connector: listener task, dialing, pairing of data and meta sockets, the collision rule
//! (PROTOCOL.md §1.3) and the `Params`/`State` exchange with the decider's confirmation (§3.1,
//! §3.4).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use urbd_protocol::{
    outgoing_connection_wins, ConnectionKind, Disconnect, DisconnectReason, Message, MessageType,
    Params, State,
};

use super::frames::ReadError;
use super::handshake::{self, Authenticated, Checked, HandshakeError};
use super::link::{self, LiveGuard};
use super::{
    ConnectError, Established, LocalHello, PeerConfig, PeerStats, MAX_PENDING_INCOMING,
    MAX_PENDING_INCOMING_FROM_PEER,
};

/// Parked incoming sockets kept at most (oldest dropped first).
const PARKED_MAX: usize = 4;

struct Parked {
    at: Instant,
    auth: Authenticated,
}

struct Shared {
    cfg: Checked,
    stats: Arc<PeerStats>,
    live_links: Arc<AtomicUsize>,
    parked: Mutex<VecDeque<Parked>>,
    parked_notify: Notify,
}

impl Shared {
    fn park(&self, auth: Authenticated) {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        if parked.len() >= PARKED_MAX {
            parked.pop_front();
        }
        parked.push_back(Parked {
            at: Instant::now(),
            auth,
        });
        drop(parked);
        self.parked_notify.notify_one();
    }

    /// Takes the parked sockets that are younger than the handshake timeout.
    fn take_parked(&self) -> Vec<Authenticated> {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let max_age = self.cfg.handshake_timeout;
        parked
            .drain(..)
            .filter(|p| p.at.elapsed() < max_age)
            .map(|p| p.auth)
            .collect()
    }

    fn peer_label(&self) -> String {
        format!("{} ({})", self.cfg.peer, self.cfg.peer_addr)
    }

    /// Logs a failed handshake at the right level and counts it.
    fn handshake_failed(&self, addr: SocketAddr, incoming: bool, e: &HandshakeError) {
        let dir = if incoming { "incoming" } else { "outgoing" };
        if e.is_auth() {
            PeerStats::bump(&self.stats.auth_failures);
            tracing::warn!("peer {addr} ({dir}) {e}");
        } else if e.is_config() {
            PeerStats::bump(&self.stats.protocol_errors);
            tracing::warn!("refusing {dir} connection with {addr}: {e}");
        } else if e.is_protocol() {
            PeerStats::bump(&self.stats.protocol_errors);
            tracing::info!("refusing {dir} connection with {addr}: {e}");
        } else if incoming {
            // Someone connected and did not complete the handshake (a silent or truncated
            // client included): worth a trace at the default level.
            tracing::info!("incoming connection from {addr} closed during the handshake: {e}");
        } else {
            // Dialling a peer that is not up fails every connect interval: not at info.
            tracing::debug!("{dir} connection with {addr} failed: {e}");
        }
    }
}

/// Connects to the peer (PROTOCOL.md §1.3, §3). See the module documentation.
pub struct Connector {
    running: Result<Running, String>,
}

struct Running {
    shared: Arc<Shared>,
    listener: JoinHandle<()>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.running {
            Ok(r) => f
                .debug_struct("Connector")
                .field("local", &r.shared.cfg.local)
                .field("peer", &r.shared.cfg.peer)
                .field("listen", &r.local_addr)
                .finish(),
            Err(e) => f.debug_struct("Connector").field("failed", e).finish(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl Connector {
    /// Starts the connector; never fails: an unusable configuration or listen address is
    /// logged and returned by every [`Connector::connect`] as [`ConnectError::NotStarted`].
    /// Must be called within a tokio runtime.
    pub fn start(cfg: PeerConfig) -> Connector {
        let running = Self::try_start(cfg).map(|c| c.running);
        match running {
            Ok(Ok(r)) => Connector { running: Ok(r) },
            Ok(Err(e)) => Connector { running: Err(e) },
            Err(e) => {
                tracing::error!("peer transport not started: {e}");
                Connector {
                    running: Err(e.to_string()),
                }
            }
        }
    }

    /// Validates `cfg`, binds `cfg.listen` and starts the listener task. Must be called within
    /// a tokio runtime. Established links outlive the connector.
    pub fn try_start(cfg: PeerConfig) -> Result<Connector, ConnectError> {
        let cfg = Checked::new(cfg)?;
        let listen = cfg.listen;
        let bind = || -> std::io::Result<TcpListener> {
            let std_listener = std::net::TcpListener::bind(listen)?;
            std_listener.set_nonblocking(true)?;
            TcpListener::from_std(std_listener)
        };
        let listener = bind().map_err(|source| ConnectError::Listen {
            addr: listen,
            source,
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ConnectError::Listen {
                addr: listen,
                source,
            })?;
        let shared = Arc::new(Shared {
            cfg,
            stats: Arc::new(PeerStats::default()),
            live_links: Arc::new(AtomicUsize::new(0)),
            parked: Mutex::new(VecDeque::new()),
            parked_notify: Notify::new(),
        });
        tracing::info!("listening for peer {} on {local_addr}", shared.cfg.peer);
        let task = tokio::spawn(listen_loop(listener, Arc::clone(&shared)));
        Ok(Connector {
            running: Ok(Running {
                shared,
                listener: task,
                local_addr,
            }),
        })
    }

    /// The address the listener is bound to (`None` if the connector did not start).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().ok().map(|r| r.local_addr)
    }

    /// The transport's counters (shared with every link this connector established).
    pub fn stats(&self) -> Arc<PeerStats> {
        match &self.running {
            Ok(r) => Arc::clone(&r.shared.stats),
            Err(_) => Arc::new(PeerStats::default()),
        }
    }

    /// Frames dropped for a crc32c mismatch so far (§2.2).
    pub fn crc_errors(&self) -> u64 {
        PeerStats::get(&self.stats().crc_errors)
    }

    /// Handshakes refused for authentication so far.
    pub fn auth_failures(&self) -> u64 {
        PeerStats::get(&self.stats().auth_failures)
    }

    /// Stops the listener and waits until its socket is closed (so the address can be bound
    /// again at once).
    pub async fn shutdown(self) {
        if let Ok(mut r) = self.running {
            r.listener.abort();
            let _ = (&mut r.listener).await;
        }
    }

    /// Keeps dialing and accepting until one pair of sockets is authenticated and the
    /// `Params`/`State` exchange is done. Cancel by dropping the future. Returns an error only
    /// when retrying cannot help (incompatible `Params`, connector not started).
    pub async fn connect(&mut self, hello: LocalHello) -> Result<Established, ConnectError> {
        let shared = match &self.running {
            Ok(r) => Arc::clone(&r.shared),
            Err(e) => return Err(ConnectError::NotStarted(e.clone())),
        };
        let mut hello = hello;
        hello.params.max_frame_bytes = shared.cfg.limits.max_frame_bytes();
        Attempt::new(shared, hello).run().await
    }
}

/// Two authenticated sockets from the same side's dial (or the peer's).
struct Pair {
    data: Authenticated,
    meta: Authenticated,
    outgoing: bool,
}

enum ExchangeError {
    Failed(String),
    Incompatible(String),
}

/// Most pairs the non-deciding side waits on at once.
const FOLLOWERS_MAX: usize = 4;

/// One `connect()` call. Everything it spawned is aborted when it is dropped.
struct Attempt {
    shared: Arc<Shared>,
    hello: LocalHello,
    /// We have the lower node name: we choose the pair and send `Params` first (§1.3).
    decider: bool,
    dial: JoinSet<Result<Pair, HandshakeError>>,
    exchanges: JoinSet<Result<Established, ExchangeError>>,
    in_data: Option<Authenticated>,
    in_meta: Option<Authenticated>,
    /// Decider only: an incoming pair that waits for our own dial to finish.
    held_incoming: Option<Pair>,
}

impl Attempt {
    fn new(shared: Arc<Shared>, hello: LocalHello) -> Self {
        let decider = outgoing_connection_wins(&shared.cfg.local, &shared.cfg.peer);
        Attempt {
            shared,
            hello,
            decider,
            dial: JoinSet::new(),
            exchanges: JoinSet::new(),
            in_data: None,
            in_meta: None,
            held_incoming: None,
        }
    }

    async fn run(mut self) -> Result<Established, ConnectError> {
        let shared = Arc::clone(&self.shared);
        let mut next_dial = Instant::now();
        loop {
            for auth in shared.take_parked() {
                self.incoming(auth);
            }
            if self.decider && self.exchanges.is_empty() && self.dial.is_empty() {
                if let Some(pair) = self.held_incoming.take() {
                    self.start_exchange(pair);
                }
            }
            let can_dial =
                self.dial.is_empty() && self.exchanges.is_empty() && self.held_incoming.is_none();
            tokio::select! {
                _ = tokio::time::sleep_until(next_dial), if can_dial => {
                    next_dial = Instant::now() + shared.cfg.connect_interval;
                    tracing::debug!("connecting to peer {}", shared.peer_label());
                    self.dial.spawn(dial_pair(Arc::clone(&shared)));
                }
                Some(res) = self.dial.join_next() => match res {
                    Ok(Ok(pair)) => self.on_pair(pair),
                    Ok(Err(e)) => shared.handshake_failed(shared.cfg.peer_addr, false, &e),
                    Err(e) => tracing::debug!("dial task ended: {e}"),
                },
                _ = shared.parked_notify.notified() => {}
                Some(res) = self.exchanges.join_next() => match res {
                    Ok(Ok(established)) => return Ok(established),
                    Ok(Err(ExchangeError::Incompatible(reason))) => {
                        tracing::error!(
                            "peer {} is incompatible: {reason}", shared.peer_label()
                        );
                        return Err(ConnectError::Incompatible {
                            peer: shared.peer_label(),
                            reason,
                        });
                    }
                    Ok(Err(ExchangeError::Failed(reason))) => tracing::info!(
                        "connection attempt with peer {} failed: {reason}",
                        shared.peer_label()
                    ),
                    Err(e) => tracing::debug!("exchange task ended: {e}"),
                },
            }
        }
    }

    fn incoming(&mut self, auth: Authenticated) {
        let slot = match auth.kind {
            ConnectionKind::Data => &mut self.in_data,
            ConnectionKind::Meta => &mut self.in_meta,
        };
        if let Some(old) = slot.replace(auth) {
            tracing::debug!(
                "newer incoming {} connection from {} replaces the one from {}",
                old.kind,
                self.shared.cfg.peer,
                old.conn.addr
            );
        }
        if self.in_data.is_some() && self.in_meta.is_some() {
            if let (Some(data), Some(meta)) = (self.in_data.take(), self.in_meta.take()) {
                self.on_pair(Pair {
                    data,
                    meta,
                    outgoing: false,
                });
            }
        }
    }

    /// §1.3: the decider keeps its outgoing pair when both exist and closes the other; the
    /// follower answers on whichever pair the decider's `Params` arrives.
    fn on_pair(&mut self, pair: Pair) {
        let cfg = &self.shared.cfg;
        if !self.decider {
            if self.exchanges.len() >= FOLLOWERS_MAX {
                tracing::debug!(
                    "closing connection pair with {}: too many pending",
                    pair.data.conn.addr
                );
                return;
            }
            self.start_exchange(pair);
            return;
        }
        if !self.exchanges.is_empty() {
            tracing::debug!(
                "closing redundant connection pair with {} (outgoing: {}): another pair is in use",
                pair.data.conn.addr,
                pair.outgoing
            );
            return;
        }
        if !pair.outgoing && !self.dial.is_empty() {
            // Our own dial is in progress: wait for it, it wins if it succeeds.
            self.held_incoming = Some(pair);
            return;
        }
        if pair.outgoing {
            if let Some(incoming) = self.held_incoming.take() {
                tracing::info!(
                    "connection collision with peer {}: keeping our outgoing connections \
                     (node name {} < {}), closing the ones from {}",
                    cfg.peer,
                    cfg.local,
                    cfg.peer,
                    incoming.data.conn.addr
                );
            }
        }
        self.start_exchange(pair);
    }

    fn start_exchange(&mut self, pair: Pair) {
        self.exchanges.spawn(exchange(
            Arc::clone(&self.shared),
            self.hello,
            pair,
            self.decider,
        ));
    }
}

async fn dial_pair(shared: Arc<Shared>) -> Result<Pair, HandshakeError> {
    let t = shared.cfg.handshake_timeout;
    // §1.3: the data socket first, then the meta socket.
    let data = tokio::time::timeout(t, handshake::dial(&shared.cfg, ConnectionKind::Data))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    let meta = tokio::time::timeout(t, handshake::dial(&shared.cfg, ConnectionKind::Meta))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    Ok(Pair {
        data,
        meta,
        outgoing: true,
    })
}

/// §3.4: protocol and bitmap granularity must be equal; sizes are the engine's business.
fn compatible(ours: &Params, theirs: &Params) -> Result<(), String> {
    if ours.protocol != theirs.protocol {
        return Err(format!(
            "replication protocol differs: ours {}, peer's {}",
            ours.protocol, theirs.protocol
        ));
    }
    if ours.bitmap_granularity_bytes != theirs.bitmap_granularity_bytes {
        return Err(format!(
            "bitmap granularity differs: ours {} bytes, peer's {} bytes",
            ours.bitmap_granularity_bytes, theirs.bitmap_granularity_bytes
        ));
    }
    Ok(())
}

fn read_failed(e: ReadError) -> ExchangeError {
    ExchangeError::Failed(e.describe("data"))
}

async fn recv_state(data: &mut Authenticated) -> Result<State, ExchangeError> {
    match data.conn.recv(false).await.map_err(read_failed)? {
        Message::State(s) => Ok(s),
        other => Err(ExchangeError::Failed(format!(
            "expected {}, got {}",
            MessageType::State,
            other.message_type()
        ))),
    }
}

/// `Params` then `State` on the data socket, both ways, then the decider's confirming `State`
/// (§3.1). The decider sends first; the follower waits for the decider's `Params`, which tells
/// it the decider chose this pair, and answers.
///
/// Neither side acts on a `State` the other no longer stands behind:
/// - the decider's `State` may have been written long before the follower reads it (the
///   follower's listener parks pairs while no `connect()` runs, and the decider may have
///   abandoned the pair since: its bytes are still in the socket). So the follower does not
///   complete on it: it completes only on the decider's second `State`, which the decider
///   sends after it received the follower's answer on this pair, i.e. while it is committed
///   to this pair. A pair the decider abandoned ends in EOF instead;
/// - the follower's `State` is its answer to the decider's `Params` on this pair, written by
///   the follower's running `connect()`, so it is current when the decider acts on it.
async fn exchange(
    shared: Arc<Shared>,
    hello: LocalHello,
    pair: Pair,
    lead: bool,
) -> Result<Established, ExchangeError> {
    let Pair {
        mut data,
        meta,
        outgoing,
    } = pair;
    let addr = data.conn.addr;
    let ours = [Message::Params(hello.params), Message::State(hello.state)];
    let io = |e: std::io::Error| ExchangeError::Failed(format!("write error on data socket: {e}"));
    let result = tokio::time::timeout(shared.cfg.handshake_timeout, async {
        if lead {
            data.conn.send(&ours).await.map_err(io)?;
        }
        let peer_params = match data.conn.recv(false).await.map_err(read_failed)? {
            Message::Params(p) => p,
            other => {
                return Err(ExchangeError::Failed(format!(
                    "expected {}, got {}",
                    MessageType::Params,
                    other.message_type()
                )))
            }
        };
        if !lead {
            data.conn.send(&ours).await.map_err(io)?;
        }
        if let Err(reason) = compatible(&hello.params, &peer_params) {
            let disconnect = Message::Disconnect(Disconnect {
                reason: DisconnectReason::ConfigMismatch,
            });
            let _ = data.conn.send(&[disconnect]).await;
            return Err(ExchangeError::Incompatible(reason));
        }
        let peer_state = recv_state(&mut data).await?;
        if lead {
            // The confirmation: the follower answered on this pair just now, so its `State`
            // is current and we commit to this pair.
            data.conn
                .send(&[Message::State(hello.state)])
                .await
                .map_err(io)?;
            Ok((peer_params, peer_state))
        } else {
            // The first `State` may predate the decider's abandoning this pair; only the
            // confirmation, sent after our answer, says the decider still stands behind it.
            let confirmed = recv_state(&mut data).await.map_err(|e| match e {
                ExchangeError::Failed(reason) => ExchangeError::Failed(format!(
                    "no confirmation from the peer (it abandoned this connection?): {reason}"
                )),
                e => e,
            })?;
            Ok((peer_params, confirmed))
        }
    })
    .await;
    let (peer_params, peer_state): (Params, State) = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            if matches!(e, ExchangeError::Incompatible(_)) {
                data.conn.linger_close();
            }
            return Err(e);
        }
        Err(_) => {
            return Err(ExchangeError::Failed(
                "timed out waiting for the peer's Params/State or confirmation".into(),
            ))
        }
    };
    if peer_params.size_bytes != hello.params.size_bytes {
        tracing::info!(
            "peer {}'s disk is {} bytes, ours {} bytes",
            shared.cfg.peer,
            peer_params.size_bytes,
            hello.params.size_bytes
        );
    }
    let live = LiveGuard::new(&shared.live_links);
    let started = link::start(
        data,
        meta,
        &shared.cfg,
        peer_params.max_frame_bytes,
        Arc::clone(&shared.stats),
        shared.peer_label(),
        live,
    );
    PeerStats::bump(&shared.stats.established);
    tracing::info!(
        "connected to peer {} at {addr} ({} connections); peer is {} with disk {}",
        shared.cfg.peer,
        if outgoing { "our" } else { "its" },
        peer_state.role,
        peer_state.disk
    );
    Ok(Established {
        peer_params,
        peer_state,
        tx: started.tx,
        rx: started.rx,
        data_seq_next: started.data_seq_next,
        meta_seq_next: started.meta_seq_next,
        peer_addr: addr,
        outgoing,
    })
}

async fn listen_loop(listener: TcpListener, shared: Arc<Shared>) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_INCOMING));
    // Connections from the peer's own address have slots of their own: strangers filling the
    // pending limit with silent connections cannot keep the real peer out.
    let pending_from_peer = Arc::new(Semaphore::new(MAX_PENDING_INCOMING_FROM_PEER));
    let peer_ip = shared.cfg.peer_addr.ip();
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accepting peer connections on {}: {e}", shared.cfg.listen);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if shared.live_links.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            PeerStats::bump(&shared.stats.refused_connections);
            tracing::info!(
                "refusing connection from {addr}: already connected to peer {}",
                shared.cfg.peer
            );
            continue;
        }
        let from_peer = addr.ip() == peer_ip;
        let permit = Arc::clone(&pending).try_acquire_owned().or_else(|e| {
            if from_peer {
                Arc::clone(&pending_from_peer).try_acquire_owned()
            } else {
                Err(e)
            }
        });
        let Ok(permit) = permit else {
            PeerStats::bump(&shared.stats.refused_connections);
            tracing::info!(
                "refusing connection from {addr}: {MAX_PENDING_INCOMING} handshakes pending"
            );
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            tracing::debug!("incoming connection from {addr}");
            let t = shared.cfg.handshake_timeout;
            match tokio::time::timeout(t, handshake::accept(&shared.cfg, stream, addr)).await {
                Ok(Ok(auth)) => {
                    tracing::debug!(
                        "authenticated incoming {} connection from {addr}",
                        auth.kind
                    );
                    shared.park(auth);
                }
                Ok(Err(e)) => shared.handshake_failed(addr, true, &e),
                Err(_) => shared.handshake_failed(addr, true, &HandshakeError::Timeout),
            }
        });
    }
}
