//! The per-socket handshake: `Hello` and the mutual HMAC challenge–response
//! (PROTOCOL.md §3.1–3.3).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use urbd_protocol::{
    negotiate_version, AuthResult, ConnectionKind, DecodeLimits, Hello, Message, MessageType, Name,
    VERSION_MAX, VERSION_MIN,
};

use super::auth;
use super::frames::{set_socket_options, Conn, ReadError};
use super::{ConnectError, PeerConfig};

/// A validated [`PeerConfig`].
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) resource: Name,
    pub(crate) local: Name,
    pub(crate) peer: Name,
    pub(crate) listen: SocketAddr,
    pub(crate) peer_addr: SocketAddr,
    pub(crate) secret: Vec<u8>,
    pub(crate) limits: DecodeLimits,
    pub(crate) connect_interval: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) send_queue_frames_max: usize,
    pub(crate) recv_queue_frames_max: usize,
}

impl Checked {
    pub(crate) fn new(cfg: PeerConfig) -> Result<Self, ConnectError> {
        let name = |what: &str, s: &str| {
            Name::new(s).map_err(|e| ConnectError::Config(format!("{what} {s:?}: {e}")))
        };
        let resource = name("resource name", &cfg.resource)?;
        let local = name("local node name", &cfg.local_name)?;
        let peer = name("peer node name", &cfg.peer_name)?;
        if local == peer {
            return Err(ConnectError::Config(format!(
                "local and peer node name are both {local:?}; they must differ (§1.3)"
            )));
        }
        if cfg.secret.is_empty() {
            return Err(ConnectError::Config(
                "the shared secret is empty; authentication is mandatory".into(),
            ));
        }
        if cfg.connect_interval_ms == 0 || cfg.handshake_timeout_ms == 0 {
            return Err(ConnectError::Config(
                "connect interval and handshake timeout must be positive".into(),
            ));
        }
        if cfg.send_queue_frames_max == 0 || cfg.recv_queue_frames_max == 0 {
            return Err(ConnectError::Config(
                "send and receive queues need room for at least one frame".into(),
            ));
        }
        Ok(Checked {
            resource,
            local,
            peer,
            listen: cfg.listen,
            peer_addr: cfg.peer_addr,
            secret: cfg.secret,
            limits: cfg.limits,
            connect_interval: Duration::from_millis(cfg.connect_interval_ms),
            handshake_timeout: Duration::from_millis(cfg.handshake_timeout_ms),
            send_queue_frames_max: cfg.send_queue_frames_max,
            recv_queue_frames_max: cfg.recv_queue_frames_max,
        })
    }
}

/// A socket that completed Hello and authentication.
#[derive(Debug)]
pub(crate) struct Authenticated {
    pub(crate) conn: Conn,
    pub(crate) kind: ConnectionKind,
}

/// Why a handshake failed.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    Connect(std::io::Error),
    Io(std::io::Error),
    Read(ReadError),
    Timeout,
    Rng(getrandom::Error),
    WrongResource {
        ours: Name,
        theirs: Name,
    },
    WrongNode {
        expected: Name,
        theirs: Name,
    },
    WrongKind {
        expected: ConnectionKind,
        got: ConnectionKind,
    },
    NoCommonVersion(urbd_protocol::Error),
    Expected {
        expected: MessageType,
        got: MessageType,
    },
    /// The peer sent our own challenge back (§3.2 reflection rule).
    Reflection,
    /// We found the peer's response wrong.
    AuthFailed,
    /// The peer found our response wrong.
    AuthDenied,
}

impl HandshakeError {
    /// Authentication failures (counted, logged at warn).
    pub(crate) fn is_auth(&self) -> bool {
        matches!(
            self,
            HandshakeError::Reflection | HandshakeError::AuthFailed | HandshakeError::AuthDenied
        )
    }

    /// Configuration mismatches (logged at warn).
    pub(crate) fn is_config(&self) -> bool {
        matches!(
            self,
            HandshakeError::WrongResource { .. }
                | HandshakeError::WrongNode { .. }
                | HandshakeError::NoCommonVersion(_)
        )
    }

    /// The peer broke the protocol (counted).
    pub(crate) fn is_protocol(&self) -> bool {
        match self {
            HandshakeError::Read(e) => e.is_protocol(),
            HandshakeError::WrongKind { .. } | HandshakeError::Expected { .. } => true,
            _ => false,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Connect(e) => write!(f, "connect failed: {e}"),
            HandshakeError::Io(e) => write!(f, "write error: {e}"),
            HandshakeError::Read(e) => f.write_str(&e.describe("handshake")),
            HandshakeError::Timeout => f.write_str("handshake timed out"),
            HandshakeError::Rng(e) => write!(f, "cannot generate a challenge: {e}"),
            HandshakeError::WrongResource { ours, theirs } => write!(
                f,
                "peer is for resource {theirs:?}, ours is {ours:?}: check the configuration"
            ),
            HandshakeError::WrongNode { expected, theirs } => write!(
                f,
                "peer says it is node {theirs:?}, we expect node {expected:?}: check the configuration"
            ),
            HandshakeError::WrongKind { expected, got } => {
                write!(f, "peer answered a {expected} connection with a {got} Hello")
            }
            HandshakeError::NoCommonVersion(e) => write!(f, "{e}"),
            HandshakeError::Expected { expected, got } => {
                write!(f, "protocol error: expected {expected}, got {got}")
            }
            HandshakeError::Reflection => {
                f.write_str("failed authentication: it reflected our own challenge (attack?)")
            }
            HandshakeError::AuthFailed => {
                f.write_str("failed authentication (wrong secret?): its response is wrong")
            }
            HandshakeError::AuthDenied => f.write_str(
                "failed authentication (wrong secret?): it denied our response",
            ),
        }
    }
}

impl From<ReadError> for HandshakeError {
    fn from(e: ReadError) -> Self {
        HandshakeError::Read(e)
    }
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

/// Dials the peer and runs the handshake for a connection of `kind`.
pub(crate) async fn dial(
    cfg: &Checked,
    kind: ConnectionKind,
) -> Result<Authenticated, HandshakeError> {
    let stream = TcpStream::connect(cfg.peer_addr)
        .await
        .map_err(HandshakeError::Connect)?;
    set_socket_options(&stream).map_err(HandshakeError::Connect)?;
    let conn = Conn::new(stream, cfg.peer_addr, cfg.limits);
    handshake(cfg, conn, Some(kind)).await
}

/// Runs the handshake on an accepted connection.
pub(crate) async fn accept(
    cfg: &Checked,
    stream: TcpStream,
    addr: SocketAddr,
) -> Result<Authenticated, HandshakeError> {
    set_socket_options(&stream)?;
    handshake(cfg, Conn::new(stream, addr, cfg.limits), None).await
}

fn hello(cfg: &Checked, kind: ConnectionKind) -> Message {
    Message::Hello(Hello {
        version_min: VERSION_MIN,
        version_max: VERSION_MAX,
        resource: cfg.resource.clone(),
        node: cfg.local.clone(),
        connection: kind,
    })
}

async fn expect(conn: &mut Conn, expected: MessageType) -> Result<Message, HandshakeError> {
    let m = conn.recv(true).await?;
    if m.message_type() != expected {
        return Err(HandshakeError::Expected {
            expected,
            got: m.message_type(),
        });
    }
    Ok(m)
}

/// §3.1: `dial_kind` is `Some` for the connecting side (it sends its `Hello` first), `None`
/// for the accepting side (it reads the connector's `Hello` and echoes its kind). No state
/// leaves this function before both sides accepted.
async fn handshake(
    cfg: &Checked,
    mut conn: Conn,
    dial_kind: Option<ConnectionKind>,
) -> Result<Authenticated, HandshakeError> {
    if let Some(kind) = dial_kind {
        conn.send(&[hello(cfg, kind)]).await?;
    }
    let Message::Hello(theirs) = expect(&mut conn, MessageType::Hello).await? else {
        unreachable!("expect checked the type");
    };
    // Any failure here closes without further messages (§3.1).
    negotiate_version(
        VERSION_MIN,
        VERSION_MAX,
        theirs.version_min,
        theirs.version_max,
    )
    .map_err(HandshakeError::NoCommonVersion)?;
    if theirs.resource != cfg.resource {
        return Err(HandshakeError::WrongResource {
            ours: cfg.resource.clone(),
            theirs: theirs.resource,
        });
    }
    if theirs.node != cfg.peer {
        return Err(HandshakeError::WrongNode {
            expected: cfg.peer.clone(),
            theirs: theirs.node,
        });
    }
    let kind = match dial_kind {
        Some(kind) if theirs.connection != kind => {
            return Err(HandshakeError::WrongKind {
                expected: kind,
                got: theirs.connection,
            })
        }
        Some(kind) => kind,
        None => {
            conn.send(&[hello(cfg, theirs.connection)]).await?;
            theirs.connection
        }
    };

    // §3.2 step 1: our challenge before any response.
    let ours = auth::new_challenge().map_err(HandshakeError::Rng)?;
    conn.send(&[Message::AuthChallenge(ours)]).await?;
    let Message::AuthChallenge(their_challenge) =
        expect(&mut conn, MessageType::AuthChallenge).await?
    else {
        unreachable!("expect checked the type");
    };
    // Step 2: the reflection rule.
    if their_challenge.is_reflection_of(&ours) {
        deny(conn).await;
        return Err(HandshakeError::Reflection);
    }
    // Step 3: answer, binding our own name.
    let response = auth::respond(&cfg.secret, &their_challenge, &cfg.local);
    conn.send(&[Message::AuthResponse(response)]).await?;
    let Message::AuthResponse(their_response) =
        expect(&mut conn, MessageType::AuthResponse).await?
    else {
        unreachable!("expect checked the type");
    };
    // Step 4: constant-time check of their answer to our challenge and their name.
    if !auth::verify(&cfg.secret, &ours, &cfg.peer, &their_response) {
        deny(conn).await;
        return Err(HandshakeError::AuthFailed);
    }
    conn.send(&[Message::AuthResult(AuthResult::Accepted)])
        .await?;
    // Step 5: authenticated once we also received `accepted`.
    match expect(&mut conn, MessageType::AuthResult).await? {
        Message::AuthResult(AuthResult::Accepted) => Ok(Authenticated { conn, kind }),
        _ => Err(HandshakeError::AuthDenied),
    }
}

async fn deny(mut conn: Conn) {
    let _ = conn.send(&[Message::AuthResult(AuthResult::Denied)]).await;
    conn.linger_close();
}
