//! Loopback tests of the peer transport (PROTOCOL.md §1–§3).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use urbd_protocol::{
    AuthResult, ConnectionKind, Data, DecodeLimits, DiskState, GenerationUuids, Hello, Message,
    Name, Params, ReplicationProtocol, Role, State, StateFlags, WriteFlags,
    MAX_FRAME_BYTES_DEFAULT,
};

use super::frames::{Conn, ReadError};
use super::handshake::{self, Authenticated, Checked};
use super::*;

const SECRET: &[u8] = b"correct horse battery staple";
const WAIT: Duration = Duration::from_secs(10);

/// A loopback address with a port nobody listens on (bound and released).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
}

fn config(
    local: &str,
    peer: &str,
    listen: SocketAddr,
    dial: SocketAddr,
    secret: &[u8],
) -> PeerConfig {
    let mut cfg = PeerConfig::new("r0", local, peer, listen, dial, secret);
    cfg.connect_interval_ms = 100;
    cfg.handshake_timeout_ms = 2000;
    cfg
}

fn local_hello(role: Role, protocol: ReplicationProtocol) -> LocalHello {
    LocalHello {
        params: Params {
            size_bytes: 1 << 30,
            protocol,
            bitmap_granularity_bytes: 4096,
            max_frame_bytes: MAX_FRAME_BYTES_DEFAULT,
        },
        state: State {
            role,
            disk: DiskState::UpToDate,
            uuids: GenerationUuids {
                current: 0x1234_5678_9abc_def0,
                bitmap: 0,
                history: [0, 0],
            },
            flags: StateFlags::empty(),
            dirty_bits: if role == Role::Primary { 7 } else { 0 },
        },
    }
}

/// alpha (the lower name: decider) and beta, each dialing the other.
fn pair_of_connectors(secret_a: &[u8], secret_b: &[u8]) -> (Connector, Connector) {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a = Connector::try_start(config("alpha", "beta", addr_a, addr_b, secret_a)).unwrap();
    let b = Connector::try_start(config("beta", "alpha", addr_b, addr_a, secret_b)).unwrap();
    (a, b)
}

async fn connect_both(a: &mut Connector, b: &mut Connector) -> (Established, Established) {
    let both = async {
        tokio::join!(
            a.connect(local_hello(Role::Primary, ReplicationProtocol::C)),
            b.connect(local_hello(Role::Secondary, ReplicationProtocol::C))
        )
    };
    let (ea, eb) = tokio::time::timeout(WAIT, both)
        .await
        .expect("connected in time");
    (ea.expect("alpha connects"), eb.expect("beta connects"))
}

async fn next_event(rx: &mut mpsc::Receiver<PeerEvent>) -> PeerEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event in time")
        .expect("event stream open")
}

async fn expect_lost(rx: &mut mpsc::Receiver<PeerEvent>) -> String {
    loop {
        match next_event(rx).await {
            PeerEvent::Lost { reason } => return reason,
            PeerEvent::Message { .. } => continue,
        }
    }
}

fn data(offset_bytes: u64, payload: Bytes) -> Message {
    Message::Data(Data {
        offset_bytes,
        flags: WriteFlags::empty(),
        data: payload,
    })
}

/// Captures this thread's log output (the tests run on a current-thread runtime, so every
/// task logs here).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

impl Capture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// Test 1. PROTOCOL.md §1.1, §2.5, §3.1: connect, Params/State both ways, messages on the right
// sockets with consecutive seqs, and a Ping overtakes a large data backlog.
#[tokio::test]
async fn connect_exchange_and_meta_overtakes_data_backlog() {
    let (mut a, mut b) = pair_of_connectors(SECRET, SECRET);
    let (mut ea, mut eb) = connect_both(&mut a, &mut b).await;

    assert_eq!(ea.peer_state.role, Role::Secondary);
    assert_eq!(eb.peer_state.role, Role::Primary);
    assert_eq!(eb.peer_state.dirty_bits, 7);
    assert_eq!(
        ea.peer_params,
        local_hello(Role::Secondary, ReplicationProtocol::C).params
    );
    // Hello, AuthChallenge, AuthResponse, AuthResult, Params, State: seqs 0..=5; alpha, the
    // decider, also sent the confirming State (seq 6).
    assert_eq!((ea.data_seq_next, eb.data_seq_next), (7, 6));
    assert_eq!((ea.meta_seq_next, eb.meta_seq_next), (4, 4));
    // The lower name's outgoing pair wins when both exist (§1.3); either way both agree.
    assert_eq!(ea.outgoing, !eb.outgoing);

    // Data on the data socket, with the predicted seq.
    let payload = Bytes::from(vec![0x5a; 64 * 1024]);
    ea.tx
        .send_data(ea.data_seq_next, data(4096, payload.clone()))
        .unwrap();
    match next_event(&mut eb.rx).await {
        PeerEvent::Message {
            seq,
            msg: Message::Data(d),
        } => {
            assert_eq!(seq, 7);
            assert_eq!(d.offset_bytes, 4096);
            assert_eq!(d.data, payload);
        }
        other => panic!("expected Data, got {other:?}"),
    }
    // A wrong prediction is refused without sending.
    assert!(matches!(
        ea.tx.send_data(7, data(0, Bytes::from_static(b"x"))),
        Err(SendError::SeqMismatch {
            expected: 7,
            actual: 8,
            ..
        })
    ));
    assert!(matches!(
        ea.tx.send_data(8, Message::Ping),
        Err(SendError::NotDataSocket(_))
    ));

    // Meta socket both ways: Ping from beta, WriteAck naming the request from beta.
    assert_eq!(eb.tx.send(Message::Ping, None), Ok(4));
    assert_eq!(
        eb.tx.send(Message::WriteAck { request_id: 6 }, Some(5)),
        Ok(5)
    );
    assert_eq!(
        next_event(&mut ea.rx).await,
        PeerEvent::Message {
            seq: 4,
            msg: Message::Ping
        }
    );
    assert_eq!(
        next_event(&mut ea.rx).await,
        PeerEvent::Message {
            seq: 5,
            msg: Message::WriteAck { request_id: 6 }
        }
    );

    // Backlog: 200 x 1 MiB on the data socket, then a Ping on the meta socket.
    const FRAMES: usize = 200;
    let mib = Bytes::from(vec![0xa5; 1 << 20]);
    for i in 0..FRAMES {
        let seq = 8 + i as u64;
        ea.tx
            .send_data(seq, data(i as u64 * (1 << 20), mib.clone()))
            .unwrap();
    }
    let received = Arc::new(AtomicUsize::new(0));
    let received_in_task = Arc::clone(&received);
    let b_tx = eb.tx.clone();
    let drain = tokio::spawn(async move {
        let mut ping_at = None;
        let mut next_seq = 8;
        while received_in_task.load(Ordering::SeqCst) < FRAMES {
            match next_event(&mut eb.rx).await {
                PeerEvent::Message {
                    seq,
                    msg: Message::Data(d),
                } => {
                    assert_eq!(seq, next_seq, "consecutive data seqs");
                    assert_eq!(d.data.len(), 1 << 20);
                    next_seq += 1;
                    received_in_task.fetch_add(1, Ordering::SeqCst);
                }
                PeerEvent::Message {
                    msg: Message::Ping, ..
                } => {
                    ping_at = Some(received_in_task.load(Ordering::SeqCst));
                    b_tx.send(Message::PingAck, None).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (ping_at, eb)
    });
    assert_eq!(ea.tx.send(Message::Ping, None), Ok(4));
    let ack = tokio::time::timeout(Duration::from_secs(60), ea.rx.recv()).await;
    let data_frames_at_ack = received.load(Ordering::SeqCst);
    assert_eq!(
        ack.expect("PingAck in time"),
        Some(PeerEvent::Message {
            seq: 6,
            msg: Message::PingAck
        })
    );
    let (ping_at, _eb) = tokio::time::timeout(Duration::from_secs(60), drain)
        .await
        .expect("backlog drained")
        .unwrap();
    let ping_at = ping_at.expect("beta saw the Ping");
    assert!(
        ping_at < FRAMES,
        "Ping arrived after all {FRAMES} data frames"
    );
    assert!(
        data_frames_at_ack < FRAMES,
        "PingAck round trip waited for the whole data backlog"
    );
    assert_eq!(a.crc_errors(), 0);
}

// Test 2. PROTOCOL.md §3.2: a wrong secret is refused on both sides before any state is
// exchanged; a correct peer afterwards still connects.
#[tokio::test]
async fn wrong_secret_is_refused_then_correct_peer_connects() {
    let capture = Capture::default();
    let _guard = capture.install();
    let (mut a, mut b) = pair_of_connectors(SECRET, b"wrong secret");
    let b_addr = b.local_addr().unwrap();
    let a_addr = a.local_addr().unwrap();
    let attempt = async {
        tokio::join!(
            a.connect(local_hello(Role::Primary, ReplicationProtocol::C)),
            b.connect(local_hello(Role::Secondary, ReplicationProtocol::C))
        )
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), attempt)
            .await
            .is_err(),
        "no Established on either side with a wrong secret"
    );
    assert!(a.auth_failures() >= 1, "alpha refused beta");
    assert!(b.auth_failures() >= 1, "beta refused alpha");
    assert_eq!(PeerStats::get(&a.stats().established), 0);
    let logs = capture.text();
    assert!(
        logs.matches("failed authentication (wrong secret?)")
            .count()
            >= 2,
        "both sides log the failure:\n{logs}"
    );
    assert!(!logs.contains("connected to peer"), "{logs}");

    // Replace beta with a correctly configured one on the same address.
    b.shutdown().await;
    let mut b = Connector::try_start(config("beta", "alpha", b_addr, a_addr, SECRET)).unwrap();
    let (ea, eb) = connect_both(&mut a, &mut b).await;
    assert_eq!(ea.peer_state.role, Role::Secondary);
    assert_eq!(eb.peer_state.role, Role::Primary);
}

fn checked(local: &str, peer: &str, listen: SocketAddr, dial: SocketAddr) -> Checked {
    Checked::new(config(local, peer, listen, dial, SECRET)).unwrap()
}

async fn raw_conn(addr: SocketAddr) -> Conn {
    let stream = TcpStream::connect(addr).await.unwrap();
    Conn::new(stream, addr, DecodeLimits::default())
}

// Test 3. PROTOCOL.md §3.2 reflection rule: a client that sends our own challenge back is
// denied before it sees any response of ours.
#[tokio::test]
async fn reflected_challenge_is_refused() {
    let a_addr = free_addr();
    let a = Connector::try_start(config("alpha", "beta", a_addr, free_addr(), SECRET)).unwrap();
    let mut conn = raw_conn(a_addr).await;
    let hello = Message::Hello(Hello {
        version_min: 1,
        version_max: 1,
        resource: Name::new("r0").unwrap(),
        node: Name::new("beta").unwrap(),
        connection: ConnectionKind::Data,
    });
    conn.send(&[hello]).await.unwrap();
    assert!(matches!(conn.recv(true).await, Ok(Message::Hello(_))));
    let Ok(Message::AuthChallenge(challenge)) = conn.recv(true).await else {
        panic!("expected alpha's challenge");
    };
    conn.send(&[Message::AuthChallenge(challenge)])
        .await
        .unwrap();
    // Alpha must deny, not answer the challenge.
    assert_eq!(
        conn.recv(true).await.unwrap(),
        Message::AuthResult(AuthResult::Denied)
    );
    assert!(matches!(
        conn.recv(true).await,
        Err(ReadError::Eof | ReadError::Io(_))
    ));
    tokio::time::timeout(WAIT, async {
        while a.auth_failures() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("counted as an authentication failure");
}

/// Writes `bytes` and waits until the server closes the connection.
async fn expect_closed(addr: SocketAddr, bytes: &[u8], within: Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut sink = [0u8; 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // alpha's Hello, if any
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "connection sending {:02x?}.. not closed",
        &bytes[..8.min(bytes.len())]
    );
}

fn header(message_type: u16, payload_len: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&urbd_protocol::MAGIC.to_be_bytes());
    h.extend_from_slice(&1u16.to_be_bytes());
    h.extend_from_slice(&message_type.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h.extend_from_slice(&payload_len.to_be_bytes());
    h.extend_from_slice(&0u64.to_be_bytes());
    h
}

// Test 4. PROTOCOL.md §2.3, §2.4: garbage, a truncated frame and hostile lengths on the
// listening port are refused; the real peer still connects.
#[tokio::test]
async fn garbage_on_the_listening_port_is_refused() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut cfg_a = config("alpha", "beta", addr_a, addr_b, SECRET);
    cfg_a.handshake_timeout_ms = 1000;
    let mut a = Connector::try_start(cfg_a).unwrap();
    let mut b = Connector::try_start(config("beta", "alpha", addr_b, addr_a, SECRET)).unwrap();

    let mut random = [0u8; 256];
    getrandom::fill(&mut random).unwrap();
    random[0] = 0x00; // never the magic
    let mut hello_frame = BytesMut::new();
    Message::Hello(Hello {
        version_min: 1,
        version_max: 1,
        resource: Name::new("r0").unwrap(),
        node: Name::new("beta").unwrap(),
        connection: ConnectionKind::Data,
    })
    .encode(0, &mut hello_frame);
    let truncated = &hello_frame[..30];
    let hostile_hello = header(0x0001, 0x7fff_ffff); // Hello announcing 2 GiB
    let hostile_data = header(0x0010, 0xffff_fff0); // Data before authentication, 4 GiB

    let fast = Duration::from_secs(2);
    expect_closed(addr_a, &random, fast).await;
    expect_closed(addr_a, &hostile_hello, fast).await;
    expect_closed(addr_a, &hostile_data, fast).await;
    // Nothing more arrives: closed after the 1 s handshake timeout.
    expect_closed(addr_a, truncated, Duration::from_secs(4)).await;
    assert!(PeerStats::get(&a.stats().protocol_errors) >= 3);

    let (ea, _eb) = connect_both(&mut a, &mut b).await;
    assert_eq!(ea.peer_state.role, Role::Secondary);
}

/// A hand-driven "beta" that dials alpha and completes the handshake and exchange as the
/// follower, returning its raw sockets (alpha's dials go to a dead port).
async fn raw_beta(
    a: &mut Connector,
    a_addr: SocketAddr,
) -> (Established, Authenticated, Authenticated) {
    let cfg = checked("beta", "alpha", free_addr(), a_addr);
    let raw = async {
        let mut data = handshake::dial(&cfg, ConnectionKind::Data).await.unwrap();
        let meta = handshake::dial(&cfg, ConnectionKind::Meta).await.unwrap();
        assert!(matches!(
            data.conn.recv(false).await,
            Ok(Message::Params(_))
        ));
        assert!(matches!(data.conn.recv(false).await, Ok(Message::State(_))));
        let ours = local_hello(Role::Secondary, ReplicationProtocol::C);
        data.conn
            .send(&[Message::Params(ours.params), Message::State(ours.state)])
            .await
            .unwrap();
        // Alpha, the decider, confirms after our answer (§3.1).
        assert!(matches!(data.conn.recv(false).await, Ok(Message::State(_))));
        (data, meta)
    };
    let both = async {
        tokio::join!(
            a.connect(local_hello(Role::Primary, ReplicationProtocol::C)),
            raw
        )
    };
    let (ea, (data, meta)) = tokio::time::timeout(WAIT, both).await.expect("in time");
    (ea.expect("alpha connects to the raw beta"), data, meta)
}

// Test 5. PROTOCOL.md §2.2: a corrupted frame drops the link and is counted.
#[tokio::test]
async fn crc_mismatch_drops_the_link_and_is_counted() {
    let a_addr = free_addr();
    let mut a = Connector::try_start(config("alpha", "beta", a_addr, free_addr(), SECRET)).unwrap();
    let (mut ea, mut raw_data, _meta) = raw_beta(&mut a, a_addr).await;
    let mut frame = BytesMut::new();
    data(0, Bytes::from(vec![1u8; 4096])).encode(raw_data.conn.send_seq, &mut frame);
    frame[100] ^= 0x01; // one bit in the payload
    raw_data.conn.stream.write_all(&frame).await.unwrap();
    let reason = expect_lost(&mut ea.rx).await;
    assert_eq!(reason, "crc mismatch on data frame seq 6");
    assert_eq!(a.crc_errors(), 1);
    assert!(ea.tx.is_closed());
    assert_eq!(ea.tx.send(Message::Ping, None), Err(SendError::Closed));
    // Exactly one Lost, then the stream ends.
    assert!(tokio::time::timeout(WAIT, ea.rx.recv())
        .await
        .unwrap()
        .is_none());
}

// PROTOCOL.md §2.5: a seq gap is a protocol error that drops the link.
#[tokio::test]
async fn seq_gap_drops_the_link() {
    let a_addr = free_addr();
    let mut a = Connector::try_start(config("alpha", "beta", a_addr, free_addr(), SECRET)).unwrap();
    let (mut ea, _data, mut meta) = raw_beta(&mut a, a_addr).await;
    let mut frame = BytesMut::new();
    Message::Ping.encode(meta.conn.send_seq + 1, &mut frame);
    meta.conn.stream.write_all(&frame).await.unwrap();
    let reason = expect_lost(&mut ea.rx).await;
    assert!(
        reason.contains("meta") && reason.contains("expected 4"),
        "{reason}"
    );
    assert_eq!(a.crc_errors(), 0);
}

// Test 6. PROTOCOL.md §1.1: losing the peer gives Lost promptly; connecting again works.
#[tokio::test]
async fn loss_is_reported_and_reconnect_works() {
    let (mut a, mut b) = pair_of_connectors(SECRET, SECRET);
    for round in 0..3 {
        let (ea, mut eb) = connect_both(&mut a, &mut b).await;
        // While connected, a third connection is refused at once.
        if round == 0 {
            expect_closed(a.local_addr().unwrap(), b"hello?", Duration::from_secs(2)).await;
            assert!(PeerStats::get(&a.stats().refused_connections) >= 1);
        }
        eb.tx.send(Message::Ping, None).unwrap();
        drop(ea); // alpha's engine lets go of the link
        let started = std::time::Instant::now();
        let reason = tokio::time::timeout(Duration::from_secs(3), expect_lost(&mut eb.rx))
            .await
            .expect("beta notices the loss within 3 s");
        assert!(reason.contains("peer closed"), "round {round}: {reason}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    // A local close is reported too, as the last event.
    let (mut ea, mut eb) = connect_both(&mut a, &mut b).await;
    ea.tx.close("operator said so");
    assert_eq!(
        expect_lost(&mut ea.rx).await,
        "closed locally: operator said so"
    );
    expect_lost(&mut eb.rx).await;
    // Sending a Disconnect closes the link after it is written; the peer sees it.
    let (ea, mut eb) = connect_both(&mut a, &mut b).await;
    let disconnect = Message::Disconnect(urbd_protocol::Disconnect {
        reason: urbd_protocol::DisconnectReason::Operator,
    });
    ea.tx.send(disconnect.clone(), Some(7)).unwrap();
    assert_eq!(
        next_event(&mut eb.rx).await,
        PeerEvent::Message {
            seq: 7,
            msg: disconnect
        }
    );
    let reason = expect_lost(&mut eb.rx).await;
    assert!(reason.contains("Disconnect"), "{reason}");
}

// PROTOCOL.md §3.4: different replication protocols are refused on both sides.
#[tokio::test]
async fn incompatible_params_are_refused() {
    let (mut a, mut b) = pair_of_connectors(SECRET, SECRET);
    let both = async {
        tokio::join!(
            a.connect(local_hello(Role::Primary, ReplicationProtocol::C)),
            b.connect(local_hello(Role::Secondary, ReplicationProtocol::A))
        )
    };
    let (ra, rb) = tokio::time::timeout(WAIT, both).await.expect("in time");
    for r in [ra, rb] {
        match r {
            Err(ConnectError::Incompatible { reason, .. }) => {
                assert!(reason.contains("replication protocol"), "{reason}")
            }
            other => panic!("expected Incompatible, got {other:?}"),
        }
    }
}

// A peer that stops reading cannot block the sender: the bounded queue overflows into Lost.
#[tokio::test]
async fn full_send_queue_drops_the_link() {
    let a_addr = free_addr();
    let mut cfg_a = config("alpha", "beta", a_addr, free_addr(), SECRET);
    cfg_a.send_queue_frames_max = 8;
    let mut a = Connector::try_start(cfg_a).unwrap();
    let (mut ea, _data, _meta) = raw_beta(&mut a, a_addr).await; // never reads
    let mib = Bytes::from(vec![0u8; 1 << 20]);
    let mut result = Ok(0);
    for i in 0..10_000u64 {
        result = ea.tx.send(data(i << 20, mib.clone()), None);
        if result.is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        matches!(
            result,
            Err(SendError::Congested {
                socket: "data",
                frames: 8
            })
        ),
        "{result:?}"
    );
    assert!(expect_lost(&mut ea.rx).await.contains("send queue"));
}

// Configuration errors are reported, not panicked on.
#[tokio::test]
async fn bad_configuration_is_reported() {
    let addr = free_addr();
    let same = config("alpha", "alpha", addr, free_addr(), SECRET);
    assert!(matches!(
        Connector::try_start(same),
        Err(ConnectError::Config(_))
    ));
    let empty = config("alpha", "beta", addr, free_addr(), b"");
    assert!(matches!(
        Connector::try_start(empty),
        Err(ConnectError::Config(_))
    ));
    let mut c = Connector::start(config("has space", "beta", addr, free_addr(), SECRET));
    assert!(matches!(
        c.connect(local_hello(Role::Primary, ReplicationProtocol::C))
            .await,
        Err(ConnectError::NotStarted(_))
    ));
}

/// A hand-driven "alpha" (the decider) that dials beta, authenticates both sockets and sends
/// its `Params`/`State` on the data socket (§3.1), as the real one does.
async fn raw_alpha(b_addr: SocketAddr, hello: LocalHello) -> (Authenticated, Authenticated) {
    let cfg = checked("alpha", "beta", free_addr(), b_addr);
    let mut data = handshake::dial(&cfg, ConnectionKind::Data).await.unwrap();
    let meta = handshake::dial(&cfg, ConnectionKind::Meta).await.unwrap();
    data.conn
        .send(&[Message::Params(hello.params), Message::State(hello.state)])
        .await
        .unwrap();
    (data, meta)
}

// PROTOCOL.md §3.1 confirmation (faults_nodes s5b): the decider dials while the follower is not
// connecting, the follower's listener parks the pair with the decider's Params/State in it, and
// the decider gives the pair up (operator disconnect, then promotion and writes). The
// follower's next connect() must not complete on those stale bytes; nor on a pair the decider
// leaves after reading the follower's answer, before confirming. A fresh pair then shows the
// decider's current state.
#[tokio::test]
async fn abandoned_pair_is_never_completed_on_the_deciders_stale_state() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut b = Connector::try_start(config("beta", "alpha", b_addr, a_addr, SECRET)).unwrap();
    let stale = local_hello(Role::Secondary, ReplicationProtocol::C);

    // 1. Parked, then abandoned (FIN after its Params/State) before beta's connect() starts.
    let (mut data, _meta) = raw_alpha(b_addr, stale).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // beta's listener parks the pair
    data.conn.stream.shutdown().await.unwrap();
    let watch = async {
        // Beta takes the parked pair and answers the stale Params ...
        assert!(matches!(
            data.conn.recv(false).await,
            Ok(Message::Params(_))
        ));
        assert!(matches!(data.conn.recv(false).await, Ok(Message::State(_))));
        // ... and closes it when the confirmation does not come.
        assert!(matches!(
            data.conn.recv(false).await,
            Err(ReadError::Eof | ReadError::Io(_))
        ));
    };
    let (r, watched) = tokio::join!(
        tokio::time::timeout(
            Duration::from_millis(1000),
            b.connect(local_hello(Role::Primary, ReplicationProtocol::C)),
        ),
        tokio::time::timeout(WAIT, watch)
    );
    assert!(
        r.is_err(),
        "beta completed on an abandoned parked pair: {r:?}"
    );
    watched.expect("beta answered on the parked pair, then closed it");

    // 2. Beta connecting; alpha reads beta's answer and leaves without confirming.
    let raw = async {
        let (mut data, meta) = raw_alpha(b_addr, stale).await;
        assert!(matches!(
            data.conn.recv(false).await,
            Ok(Message::Params(_))
        ));
        assert!(matches!(data.conn.recv(false).await, Ok(Message::State(_))));
        drop((data, meta));
    };
    let (r, ()) = tokio::join!(
        tokio::time::timeout(
            Duration::from_millis(1500),
            b.connect(local_hello(Role::Primary, ReplicationProtocol::C)),
        ),
        raw
    );
    assert!(r.is_err(), "beta completed without the confirmation: {r:?}");
    assert_eq!(PeerStats::get(&b.stats().established), 0);

    // 3. The real alpha, now Primary: beta sees that state, not the stale one.
    let mut a = Connector::try_start(config("alpha", "beta", a_addr, b_addr, SECRET)).unwrap();
    let (ea, eb) = connect_both(&mut a, &mut b).await;
    assert_eq!(eb.peer_state.role, Role::Primary);
    assert_eq!(eb.peer_state.dirty_bits, 7);
    assert_eq!(ea.peer_state.role, Role::Secondary);
}

// §3.1: a parked pair of a decider that is still there is used (a peer reconnecting before our
// engine calls connect() is not turned away), and the follower completes on the confirming
// State, the decider's state when it committed.
#[tokio::test]
async fn parked_pair_of_a_live_decider_completes_on_its_confirmation() {
    let b_addr = free_addr();
    let mut b = Connector::try_start(config("beta", "alpha", b_addr, free_addr(), SECRET)).unwrap();
    let first = local_hello(Role::Secondary, ReplicationProtocol::C);
    let (mut data, _meta) = raw_alpha(b_addr, first).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // parked
    let raw = async {
        assert!(matches!(
            data.conn.recv(false).await,
            Ok(Message::Params(_))
        ));
        let Ok(Message::State(theirs)) = data.conn.recv(false).await else {
            panic!("expected beta's State");
        };
        let mut confirmed = first.state;
        confirmed.dirty_bits = 3;
        data.conn.send(&[Message::State(confirmed)]).await.unwrap();
        theirs
    };
    let (eb, theirs) = tokio::time::timeout(WAIT, async {
        tokio::join!(
            b.connect(local_hello(Role::Primary, ReplicationProtocol::C)),
            raw
        )
    })
    .await
    .expect("in time");
    let eb = eb.expect("beta connects on the parked pair");
    assert_eq!(theirs.role, Role::Primary);
    assert!(!eb.outgoing);
    assert_eq!(eb.peer_state.dirty_bits, 3, "the confirming State counts");
    assert_eq!(eb.data_seq_next, 6);
    assert_eq!(data.conn.send_seq, 7);
}
