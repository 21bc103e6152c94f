//! A TCP fault proxy of our own (this VM has no netem), and a replicated pair whose peer links go
//! through two of them.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards every accepted connection to one target
//! address, both ways. Faults are switched at run time through the proxy (or a cloned
//! [`ProxyHandle`], for other threads), per direction where it makes sense
//! ([`Dir::ToTarget`]: client → target; [`Dir::ToClient`]: target → client):
//!
//! | fault | method | what happens |
//! |---|---|---|
//! | delay | [`ProxyHandle::set_delay`] | each chunk is held until `read time + delay` (order kept) |
//! | bandwidth cap | [`ProxyHandle::set_bandwidth`] | a token bucket per direction, shared by all connections |
//! | stall | [`ProxyHandle::stall`] | stop reading and writing; sockets stay open (TCP pushes back) |
//! | cut | [`ProxyHandle::cut`] | close every connection (FIN); new ones are accepted and closed at once |
//! | blackhole | [`ProxyHandle::blackhole`] | read and drop everything, both ways; sockets stay open |
//! | one-way blackhole | [`ProxyHandle::blackhole_dir`] | the same, one direction only |
//! | reset | [`ProxyHandle::reset`] | RST every current connection (SO_LINGER 0, then close) |
//! | corruption | [`ProxyHandle::corrupt_every`] | flip one byte every N bytes of one direction |
//!
//! [`ProxyHandle::heal`] clears every fault (connections already closed stay closed; the peers
//! reconnect). Counters: bytes forwarded, dropped and corrupted per direction, connections
//! accepted, refused and open.
//!
//! Bounded: chunks of at most [`CHUNK_BYTES`], at most [`QUEUE_CHUNKS`] chunks queued per
//! direction of a connection, every blocking call has a timeout of [`POLL`], and dropping the
//! [`Proxy`] stops and joins every thread (within about two [`POLL`]s, plus a connect to the
//! target that is under way: at most [`CONNECT_TIMEOUT`]).
//!
//! Per connection four threads: for each direction a reader (source socket → bounded queue,
//! stamped with the read time) and a writer (queue → destination socket, after the delay, the
//! stall and the bandwidth cap).
//!
//! [`ProxiedPair`]: a [`Pair`] where alpha sees beta at proxy `ab` (→ beta's real port) and beta
//! sees alpha at proxy `ba` (→ alpha's real port). Each daemon dials the peer (both its TCP
//! sockets, data and meta, go through the proxy it dials) and the collision rule (PROTOCOL.md
//! §1.3) keeps one pair: the link runs through `ab` or `ba` depending on who got through first
//! (both happen), so faults meant as a partition go on both proxies
//! ([`ProxiedPair::partition`], [`ProxiedPair::partition_one_way`]), and
//! [`ProxyHandle::connections`] tells which proxy carries the link.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::pair::{Alpha, Beta, NetTimings, Node, Pair};

/// Largest chunk read from a socket at once.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks queued at most per direction of a connection (so at most 4 MiB in the proxy).
pub const QUEUE_CHUNKS: usize = 64;
/// Timeout of every blocking call in the proxy's threads: how soon they see a fault or a stop.
pub const POLL: Duration = Duration::from_millis(50);
/// Bound on connecting to the target.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Bytes the client sent, on their way to the target.
    ToTarget,
    /// Bytes the target sent, on their way back to the client.
    ToClient,
}

impl Dir {
    pub const BOTH: [Dir; 2] = [Dir::ToTarget, Dir::ToClient];

    fn idx(self) -> usize {
        match self {
            Dir::ToTarget => 0,
            Dir::ToClient => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dir::ToTarget => "to-target",
            Dir::ToClient => "to-client",
        }
    }
}

/// The faults in force (index by direction: `[ToTarget, ToClient]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Extra latency per chunk, ms.
    pub delay_ms: [u64; 2],
    /// Bytes per second at most; 0 = unlimited.
    pub bandwidth_bytes_per_s: [u64; 2],
    /// Neither read nor write (sockets stay open).
    pub stall: [bool; 2],
    /// Read and drop.
    pub blackhole: [bool; 2],
    /// Flip one byte every N bytes; 0 = off.
    pub corrupt_every: [u64; 2],
    /// New connections are accepted and closed at once.
    pub cut: bool,
}

/// One proxied connection, as the registry holds it (for cut and reset).
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    state: Arc<ConnState>,
}

struct ConnState {
    /// Set to make every thread of the connection exit (within a POLL).
    dead: AtomicBool,
    /// Threads of the connection still running.
    alive: AtomicUsize,
    /// Per-connection stall, per direction ([`ProxyHandle::stall_connection`]).
    stall: [AtomicBool; 2],
    /// Bytes forwarded on this connection, per direction.
    forwarded: [AtomicU64; 2],
    /// Number of the connection (1 = first accepted).
    id: u64,
}

/// An open connection through a proxy ([`ProxyHandle::connections`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Number of the connection (1 = first accepted), for [`ProxyHandle::stall_connection`].
    pub id: u64,
    /// Bytes forwarded on it, `[to-target, to-client]`.
    pub forwarded: [u64; 2],
}

enum Msg {
    Data(Instant, Vec<u8>),
    /// The source closed its sending side.
    End,
}

struct Shared {
    target: SocketAddr,
    faults: Mutex<Faults>,
    stop: AtomicBool,
    conns: Mutex<Vec<Conn>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    forwarded: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
    corrupted: [AtomicU64; 2],
    /// Bytes seen by the corrupter per direction (positions of the flips).
    corrupt_pos: [AtomicU64; 2],
    /// Token bucket per direction: when the next byte may go.
    bucket: [Mutex<Instant>; 2],
    accepted: AtomicU64,
    refused: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Controls a running proxy; cheap to clone and to send to other threads.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

/// A running proxy; dropping it stops everything (bounded).
pub struct Proxy {
    handle: ProxyHandle,
    accept_thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listen on `127.0.0.1:0` and forward every connection to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("proxy: nonblocking listener");
        let addr = listener.local_addr().unwrap();
        let now = Instant::now();
        let shared = Arc::new(Shared {
            target,
            faults: Mutex::new(Faults::default()),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            forwarded: Default::default(),
            dropped: Default::default(),
            corrupted: Default::default(),
            corrupt_pos: Default::default(),
            bucket: [Mutex::new(now), Mutex::new(now)],
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept_thread = thread::Builder::new()
            .name(format!("proxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(s, listener))
            .expect("proxy: spawn accept thread");
        Proxy {
            handle: ProxyHandle { shared, addr },
            accept_thread: Some(accept_thread),
        }
    }

    /// A handle for another thread.
    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }
}

impl Deref for Proxy {
    type Target = ProxyHandle;
    fn deref(&self) -> &ProxyHandle {
        &self.handle
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let sh = &self.handle.shared;
        sh.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        for c in lock(&sh.conns).drain(..) {
            c.state.dead.store(true, Ordering::SeqCst);
            let _ = c.client.shutdown(Shutdown::Both);
            let _ = c.upstream.shutdown(Shutdown::Both);
        }
        let threads: Vec<JoinHandle<()>> = lock(&sh.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl ProxyHandle {
    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        lock(&self.shared.faults).clone()
    }

    /// Replace every fault at once (connections are not closed: see [`ProxyHandle::cut`]).
    pub fn set_faults(&self, f: Faults) {
        *lock(&self.shared.faults) = f;
    }

    fn update(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut lock(&self.shared.faults));
    }

    /// Latency added to every chunk going `dir`.
    pub fn set_delay(&self, dir: Dir, ms: u64) {
        self.update(|f| f.delay_ms[dir.idx()] = ms);
    }

    /// Latency added both ways.
    pub fn set_delay_both(&self, ms: u64) {
        self.update(|f| f.delay_ms = [ms, ms]);
    }

    /// At most `bytes_per_s` going `dir` (0: unlimited).
    pub fn set_bandwidth(&self, dir: Dir, bytes_per_s: u64) {
        self.update(|f| f.bandwidth_bytes_per_s[dir.idx()] = bytes_per_s);
    }

    /// Stop (or resume) forwarding `dir`: nothing is read from its source nor written to its
    /// destination; sockets stay open, so TCP pushes back on the sender.
    pub fn stall(&self, dir: Dir, on: bool) {
        self.update(|f| f.stall[dir.idx()] = on);
    }

    /// The open connections, in the order they were accepted (a urbd peer link opens its data
    /// socket first, then its meta socket).
    pub fn connections(&self) -> Vec<ConnInfo> {
        let mut conns = lock(&self.shared.conns);
        conns.retain(|c| !c.state.dead.load(Ordering::SeqCst));
        conns
            .iter()
            .map(|c| ConnInfo {
                id: c.state.id,
                forwarded: [0, 1].map(|d| c.state.forwarded[d].load(Ordering::SeqCst)),
            })
            .collect()
    }

    /// Stall (or resume) `dir` of the open connection `id` only ([`ProxyHandle::connections`]).
    /// False if there is no such open connection.
    pub fn stall_connection(&self, id: u64, dir: Dir, on: bool) -> bool {
        let mut conns = lock(&self.shared.conns);
        conns.retain(|c| !c.state.dead.load(Ordering::SeqCst));
        match conns.iter().find(|c| c.state.id == id) {
            Some(c) => {
                c.state.stall[dir.idx()].store(on, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Resume every stalled connection ([`ProxyHandle::stall_connection`]).
    pub fn unstall_connections(&self) {
        for c in lock(&self.shared.conns).iter() {
            for s in &c.state.stall {
                s.store(false, Ordering::SeqCst);
            }
        }
    }

    /// Drop everything going `dir` (a one-way blackhole); sockets stay open.
    pub fn blackhole_dir(&self, dir: Dir, on: bool) {
        self.update(|f| f.blackhole[dir.idx()] = on);
    }

    /// Drop everything both ways; connections are still accepted and stay open.
    pub fn blackhole(&self, on: bool) {
        self.update(|f| f.blackhole = [on, on]);
    }

    /// Flip one byte every `n` bytes going `dir` (0: off).
    pub fn corrupt_every(&self, dir: Dir, n: u64) {
        self.update(|f| f.corrupt_every[dir.idx()] = n);
    }

    /// Close every current connection (FIN both ways) and close new ones at once, until
    /// [`ProxyHandle::heal`] (or [`ProxyHandle::uncut`]).
    pub fn cut(&self) {
        self.update(|f| f.cut = true);
        self.close_all(false);
    }

    /// Accept and forward new connections again (other faults unchanged).
    pub fn uncut(&self) {
        self.update(|f| f.cut = false);
    }

    /// Reset every current connection: SO_LINGER 0, then close, so both ends get an RST. New
    /// connections are forwarded as usual.
    pub fn reset(&self) {
        self.close_all(true);
    }

    /// Clear every fault. Connections closed by a cut or reset stay closed.
    pub fn heal(&self) {
        self.set_faults(Faults::default());
    }

    fn close_all(&self, rst: bool) {
        let conns: Vec<Conn> = lock(&self.shared.conns).drain(..).collect();
        for c in conns {
            if rst {
                for s in [&c.client, &c.upstream] {
                    set_linger_zero(s);
                }
            } else {
                let _ = c.client.shutdown(Shutdown::Both);
                let _ = c.upstream.shutdown(Shutdown::Both);
            }
            c.state.dead.store(true, Ordering::SeqCst);
            // Our duplicates of the sockets close here; the threads' ones within a POLL, and
            // the last close of each socket sends the RST (linger 0) or nothing more (FIN sent).
        }
    }

    /// Bytes written to the destination going `dir`, since the start.
    pub fn forwarded(&self, dir: Dir) -> u64 {
        self.shared.forwarded[dir.idx()].load(Ordering::SeqCst)
    }

    /// Bytes forwarded both ways.
    pub fn forwarded_total(&self) -> u64 {
        Dir::BOTH.iter().map(|&d| self.forwarded(d)).sum()
    }

    /// Bytes read and dropped by a blackhole going `dir`.
    pub fn dropped(&self, dir: Dir) -> u64 {
        self.shared.dropped[dir.idx()].load(Ordering::SeqCst)
    }

    /// Bytes flipped going `dir`.
    pub fn corrupted(&self, dir: Dir) -> u64 {
        self.shared.corrupted[dir.idx()].load(Ordering::SeqCst)
    }

    /// Connections accepted and forwarded (not counting those closed by a cut).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed at once because of a cut (or an unreachable target).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Connections currently open through the proxy.
    pub fn open_connections(&self) -> usize {
        let mut conns = lock(&self.shared.conns);
        conns.retain(|c| !c.state.dead.load(Ordering::SeqCst));
        conns.len()
    }

    /// One line for logs and reports.
    pub fn describe(&self) -> String {
        format!(
            "proxy {} -> {}: forwarded {}/{} B (to-target/to-client), dropped {}/{}, corrupted \
             {}/{}, accepted {}, refused {}, open {}",
            self.addr,
            self.shared.target,
            self.forwarded(Dir::ToTarget),
            self.forwarded(Dir::ToClient),
            self.dropped(Dir::ToTarget),
            self.dropped(Dir::ToClient),
            self.corrupted(Dir::ToTarget),
            self.corrupted(Dir::ToClient),
            self.accepted(),
            self.refused(),
            self.open_connections()
        )
    }
}

fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a properly sized linger struct
    // that outlives the call.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn accept_loop(sh: Arc<Shared>, listener: TcpListener) {
    while !sh.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if lock(&sh.faults).cut {
                    sh.refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                start_conn(&sh, client);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL / 2),
            Err(_) => thread::sleep(POLL),
        }
        // Reap finished threads and dead connections.
        lock(&sh.threads).retain(|t| !t.is_finished());
        lock(&sh.conns).retain(|c| !c.state.dead.load(Ordering::SeqCst));
    }
}

fn start_conn(sh: &Arc<Shared>, client: TcpStream) {
    let _ = client.set_nonblocking(false);
    let upstream = match TcpStream::connect_timeout(&sh.target, CONNECT_TIMEOUT) {
        Ok(u) => u,
        Err(_) => {
            sh.refused.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let setup = || -> std::io::Result<[TcpStream; 6]> {
        for s in [&client, &upstream] {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(POLL))?;
            s.set_write_timeout(Some(POLL))?;
        }
        Ok([
            client.try_clone()?,
            client.try_clone()?,
            upstream.try_clone()?,
            upstream.try_clone()?,
            client.try_clone()?,
            upstream.try_clone()?,
        ])
    };
    let Ok([c_read, c_write, u_read, u_write, c_reg, u_reg]) = setup() else {
        sh.refused.fetch_add(1, Ordering::SeqCst);
        return;
    };
    let id = sh.accepted.fetch_add(1, Ordering::SeqCst) + 1;
    let state = Arc::new(ConnState {
        dead: AtomicBool::new(false),
        alive: AtomicUsize::new(4),
        stall: Default::default(),
        forwarded: Default::default(),
        id,
    });
    lock(&sh.conns).push(Conn {
        client: c_reg,
        upstream: u_reg,
        state: state.clone(),
    });
    let mut spawned = Vec::new();
    for (dir, src, dst) in [
        (Dir::ToTarget, c_read, u_write),
        (Dir::ToClient, u_read, c_write),
    ] {
        let (tx, rx) = sync_channel::<Msg>(QUEUE_CHUNKS);
        let (s1, st1) = (sh.clone(), state.clone());
        let (s2, st2) = (sh.clone(), state.clone());
        let name = format!("proxy-{}-{id}-{}", sh.target.port(), dir.name());
        let r = thread::Builder::new()
            .name(format!("{name}-r"))
            .spawn(move || {
                reader(&s1, &st1, dir, src, tx);
                thread_done(&st1);
            });
        let w = thread::Builder::new()
            .name(format!("{name}-w"))
            .spawn(move || {
                writer(&s2, &st2, dir, dst, rx);
                thread_done(&st2);
            });
        match (r, w) {
            (Ok(r), Ok(w)) => spawned.extend([r, w]),
            (r, w) => {
                // Could not spawn: the threads that did start see `dead` and exit.
                state.dead.store(true, Ordering::SeqCst);
                spawned.extend(r.into_iter().chain(w));
            }
        }
    }
    lock(&sh.threads).extend(spawned);
}

fn thread_done(st: &ConnState) {
    if st.alive.fetch_sub(1, Ordering::SeqCst) == 1 {
        st.dead.store(true, Ordering::SeqCst);
    }
}

fn gone(sh: &Shared, st: &ConnState) -> bool {
    st.dead.load(Ordering::SeqCst) || sh.stop.load(Ordering::SeqCst)
}

/// Kill the whole connection after an error on one side.
fn kill(st: &ConnState, a: &TcpStream) {
    st.dead.store(true, Ordering::SeqCst);
    let _ = a.shutdown(Shutdown::Both);
}

fn reader(sh: &Shared, st: &ConnState, dir: Dir, mut src: TcpStream, tx: SyncSender<Msg>) {
    let d = dir.idx();
    let mut buf = vec![0u8; CHUNK_BYTES];
    while !gone(sh, st) {
        if lock(&sh.faults).stall[d] || st.stall[d].load(Ordering::SeqCst) {
            thread::sleep(POLL / 2);
            continue;
        }
        let n = match src.read(&mut buf) {
            Ok(0) => {
                // A FIN does not cross a blackhole either: it arrives once the hole heals.
                while lock(&sh.faults).blackhole[d] && !gone(sh, st) {
                    thread::sleep(POLL / 2);
                }
                let _ = tx.send(Msg::End);
                return;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                kill(st, &src);
                return;
            }
        };
        // The faults as they are once the bytes arrived (not before the read blocked).
        if lock(&sh.faults).blackhole[d] {
            sh.dropped[d].fetch_add(n as u64, Ordering::SeqCst);
            continue;
        }
        // Blocks while the queue is full (the writer is stalled or slow): back-pressure. The
        // writer exits within a POLL once the connection is dead, which ends this send.
        if tx
            .send(Msg::Data(Instant::now(), buf[..n].to_vec()))
            .is_err()
        {
            return;
        }
    }
}

fn writer(sh: &Shared, st: &ConnState, dir: Dir, mut dst: TcpStream, rx: Receiver<Msg>) {
    let d = dir.idx();
    loop {
        let msg = match rx.recv_timeout(POLL) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                if gone(sh, st) {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let (read_at, mut data) = match msg {
            Msg::Data(t, data) => (t, data),
            Msg::End => {
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
        };
        // Delay and stall.
        let f = loop {
            if gone(sh, st) {
                return;
            }
            let f = lock(&sh.faults).clone();
            let due = read_at + Duration::from_millis(f.delay_ms[d]);
            let now = Instant::now();
            if f.stall[d] || st.stall[d].load(Ordering::SeqCst) {
                thread::sleep(POLL / 2);
            } else if now < due {
                thread::sleep((due - now).min(POLL));
            } else {
                break f;
            }
        };
        if f.blackhole[d] {
            sh.dropped[d].fetch_add(data.len() as u64, Ordering::SeqCst);
            continue;
        }
        let every = f.corrupt_every[d];
        let pos = sh.corrupt_pos[d].fetch_add(data.len() as u64, Ordering::SeqCst);
        if every > 0 {
            // Flip the bytes at stream positions p with (p + 1) % every == 0.
            let first = (every - (pos % every)) - 1;
            let mut i = first;
            while i < data.len() as u64 {
                data[i as usize] ^= 0xff;
                sh.corrupted[d].fetch_add(1, Ordering::SeqCst);
                i += every;
            }
        }
        // Bandwidth cap, in slices of about 1/20 s of the rate.
        let rate = f.bandwidth_bytes_per_s[d];
        let slice = if rate > 0 {
            ((rate / 20) as usize).clamp(512, CHUNK_BYTES)
        } else {
            data.len().max(1)
        };
        for part in data.chunks(slice) {
            if rate > 0 {
                let start = {
                    let mut next = lock(&sh.bucket[d]);
                    let now = Instant::now();
                    let start = (*next).max(now);
                    *next = start + Duration::from_secs_f64(part.len() as f64 / rate as f64);
                    start
                };
                loop {
                    if gone(sh, st) {
                        return;
                    }
                    let now = Instant::now();
                    if now >= start {
                        break;
                    }
                    thread::sleep((start - now).min(POLL));
                }
            }
            if !write_all(sh, st, &mut dst, part) {
                kill(st, &dst);
                return;
            }
            sh.forwarded[d].fetch_add(part.len() as u64, Ordering::SeqCst);
            st.forwarded[d].fetch_add(part.len() as u64, Ordering::SeqCst);
        }
    }
}

/// `write_all` that gives up when the connection dies (each write times out after a POLL).
fn write_all(sh: &Shared, st: &ConnState, dst: &mut TcpStream, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        if gone(sh, st) {
            return false;
        }
        match dst.write(buf) {
            Ok(0) => return false,
            Ok(n) => buf = &buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return false,
        }
    }
    true
}

// ---------------------------------------------------------------------------
// A pair behind proxies
// ---------------------------------------------------------------------------

/// A [`Pair`] whose peer links go through two proxies: alpha dials beta at `ab`, beta dials
/// alpha at `ba`. Derefs to the [`Pair`]; each node has its own config dir (made with
/// [`Pair::set_secret`], same secret) in which the peer's address is its proxy.
pub struct ProxiedPair {
    // Field order: the pair (its daemons) goes down before the proxies stop.
    pub pair: Pair,
    /// alpha → beta: listens where alpha dials beta, forwards to beta's real port.
    pub ab: Proxy,
    /// beta → alpha: listens where beta dials alpha, forwards to alpha's real port.
    pub ba: Proxy,
}

/// The `address = "..."` of `node`'s `[[node]]` table in `config`.
fn node_address(config: &str, node: Node) -> String {
    let key = format!("name = \"{}\"\naddress = \"", node.name());
    let i = config
        .find(&key)
        .unwrap_or_else(|| panic!("no address of {node} in config:\n{config}"))
        + key.len();
    let end = config[i..].find('"').expect("unterminated address") + i;
    config[i..end].to_string()
}

impl ProxiedPair {
    /// A pair (see [`Pair::with_net`]) with both peer links through new proxies.
    pub fn new(protocol: &str, size_mib: u64, net: NetTimings) -> ProxiedPair {
        let pair = Pair::with_net(protocol, size_mib, net);
        let text = pair.config_text(Alpha);
        let alpha_real: SocketAddr = node_address(&text, Alpha).parse().unwrap();
        let beta_real: SocketAddr = node_address(&text, Beta).parse().unwrap();
        let mut pp = ProxiedPair {
            pair,
            ab: Proxy::start(beta_real),
            ba: Proxy::start(alpha_real),
        };
        pp.write_proxied_configs();
        pp
    }

    /// The proxy `node` dials its peer through.
    pub fn proxy_from(&self, node: Node) -> &Proxy {
        match node {
            Alpha => &self.ab,
            Beta => &self.ba,
        }
    }

    /// Both proxies.
    pub fn proxies(&self) -> [&Proxy; 2] {
        [&self.ab, &self.ba]
    }

    /// Appends `toml` to both config files (like [`Pair::set_extra_config`]) and keeps the
    /// proxied peer addresses.
    pub fn set_extra_config(&mut self, toml: &str) {
        self.pair.set_extra_config(toml);
        self.write_proxied_configs();
    }

    /// Give each node its own config dir and write its file with the peer at its proxy.
    fn write_proxied_configs(&mut self) {
        for node in Node::BOTH {
            let secret = self.pair.secret(node).to_string();
            self.pair.set_secret(node, &secret);
        }
        for node in Node::BOTH {
            let text = self.pair.config_text(node);
            let peer = node.peer();
            let real = node_address(&text, peer);
            let via = self.proxy_from(node).addr().to_string();
            let from = format!("name = \"{}\"\naddress = \"{real}\"", peer.name());
            let to = format!("name = \"{}\"\naddress = \"{via}\"", peer.name());
            let text = text.replacen(&from, &to, 1);
            let p = self
                .pair
                .config_dir(node)
                .join(format!("{}.toml", crate::pair::RES));
            std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        }
    }

    /// Partition both ways: `cut` (connections closed, new ones refused) or, when
    /// `blackhole`, everything read and dropped on both proxies.
    pub fn partition(&self, blackhole: bool) {
        for p in self.proxies() {
            if blackhole {
                p.blackhole(true);
            } else {
                p.cut();
            }
        }
    }

    /// Drop everything `from` sends to its peer, on both proxies (the link `from` dials and the
    /// one its peer dials); what the peer sends still arrives.
    pub fn partition_one_way(&self, from: Node) {
        // On the proxy `from` dials, `from` is the client; on the other it is the target.
        self.proxy_from(from).blackhole_dir(Dir::ToTarget, true);
        self.proxy_from(from.peer())
            .blackhole_dir(Dir::ToClient, true);
    }

    /// Clear every fault on both proxies.
    pub fn heal(&self) {
        for p in self.proxies() {
            p.heal();
        }
    }

    /// Both proxies' counters.
    pub fn describe_proxies(&self) -> String {
        format!("ab: {}\nba: {}", self.ab.describe(), self.ba.describe())
    }
}

impl Deref for ProxiedPair {
    type Target = Pair;
    fn deref(&self) -> &Pair {
        &self.pair
    }
}

impl DerefMut for ProxiedPair {
    fn deref_mut(&mut self) -> &mut Pair {
        &mut self.pair
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1:0, stopped on drop.
    struct Echo {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Echo {
        fn start() -> Echo {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            let addr = l.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let thread = thread::spawn(move || {
                let mut conns = Vec::new();
                while !s.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((c, _)) => {
                            let s2 = s.clone();
                            conns.push(thread::spawn(move || echo_conn(c, &s2)));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            });
            Echo {
                addr,
                stop,
                thread: Some(thread),
            }
        }
    }

    fn echo_conn(mut c: TcpStream, stop: &AtomicBool) {
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = [0u8; 8192];
        while !stop.load(Ordering::SeqCst) {
            match c.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn client(p: &Proxy) -> TcpStream {
        let c = TcpStream::connect(p.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    /// Send `data`, read back as many bytes.
    fn echo(c: &mut TcpStream, data: &[u8]) -> Vec<u8> {
        let mut w = c.try_clone().unwrap();
        let d = data.to_vec();
        let t = thread::spawn(move || w.write_all(&d).unwrap());
        let mut back = vec![0u8; data.len()];
        c.read_exact(&mut back).unwrap();
        t.join().unwrap();
        back
    }

    /// Whether anything (or EOF) arrives within `t`: Some(n) bytes, Some(0) for EOF, None for
    /// silence, Err kind for errors.
    fn poll_read(c: &mut TcpStream, t: Duration) -> Result<Option<usize>, ErrorKind> {
        c.set_read_timeout(Some(t)).unwrap();
        let mut b = [0u8; 65536];
        let r = match c.read(&mut b) {
            Ok(n) => Ok(Some(n)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e.kind()),
        };
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        r
    }

    #[test]
    fn forwards_and_counts() {
        let e = Echo::start();
        let p = Proxy::start(e.addr);
        let mut c = client(&p);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(echo(&mut c, &data), data);
        assert!(wait(|| p.forwarded(Dir::ToClient) == 1_000_000));
        assert_eq!(p.forwarded(Dir::ToTarget), 1_000_000);
        assert_eq!(p.accepted(), 1);
        assert_eq!(p.open_connections(), 1);
        drop(c);
        assert!(wait(|| p.open_connections() == 0), "{}", p.describe());
    }

    fn wait(mut f: impl FnMut() -> bool) -> bool {
        crate::tools::wait_until(Duration::from_secs(5), &mut f)
    }

    #[test]
    fn delay_is_applied_per_direction_and_order_kept() {
        let e = Echo::start();
        let p = Proxy::start(e.addr);
        let mut c = client(&p);
        let t = Instant::now();
        assert_eq!(echo(&mut c, b"x"), b"x");
        let base = t.elapsed();
        p.set_delay(Dir::ToTarget, 150);
        p.set_delay(Dir::ToClient, 100);
        let t = Instant::now();
        assert_eq!(echo(&mut c, b"hello"), b"hello");
        let rtt = t.elapsed();
        assert!(
            rtt >= Duration::from_millis(250) && rtt < Duration::from_millis(1000),
            "rtt {rtt:?} with 150+100 ms of delay (base {base:?})"
        );
        // Many small writes in a row come back in order.
        let mut w = c.try_clone().unwrap();
        let writer = thread::spawn(move || {
            for i in 0..200u32 {
                w.write_all(&i.to_be_bytes()).unwrap();
                thread::sleep(Duration::from_millis(1));
            }
        });
        let mut back = vec![0u8; 800];
        c.read_exact(&mut back).unwrap();
        writer.join().unwrap();
        let want: Vec<u8> = (0..200u32).flat_map(|i| i.to_be_bytes()).collect();
        assert_eq!(back, want);
    }

    #[test]
    fn cut_closes_and_refuses_until_healed() {
        let e = Echo::start();
        let p = Proxy::start(e.addr);
        let mut c = client(&p);
        assert_eq!(echo(&mut c, b"before"), b"before");
        p.cut();
        let r = poll_read(&mut c, Duration::from_secs(2));
        assert!(
            matches!(r, Ok(Some(0)) | Err(_)),
            "open connection not closed by cut: {r:?}"
        );
        let mut c2 = client(&p);
        let _ = c2.write_all(b"during");
        let r = poll_read(&mut c2, Duration::from_secs(2));
        assert!(
            matches!(r, Ok(Some(0)) | Err(_)),
            "new connection not closed during cut: {r:?}"
        );
        assert!(p.refused() >= 1);
        p.heal();
        let mut c3 = client(&p);
        assert_eq!(echo(&mut c3, b"after"), b"after");
    }

    #[test]
    fn corruption_flips_one_byte_every_n() {
        let e = Echo::start();
        let p = Proxy::start(e.addr);
        let mut c = client(&p);
        p.corrupt_every(Dir::ToClient, 1000);
        let data = vec![0x55u8; 10_000];
        let back = echo(&mut c, &data);
        let diff: Vec<usize> = (0..data.len()).filter(|&i| back[i] != data[i]).collect();
        assert_eq!(diff.len(), 10, "flipped positions {diff:?}");
        assert!(diff.iter().all(|i| (i + 1) % 1000 == 0), "{diff:?}");
        assert_eq!(p.corrupted(Dir::ToClient), 10);
        assert_eq!(p.corrupted(Dir::ToTarget), 0);
        p.corrupt_every(Dir::ToClient, 0);
        assert_eq!(echo(&mut c, &data), data);
    }

    #[test]
    fn blackhole_and_one_way_blackhole_drop() {
        let e = Echo::start();
        let p = Proxy::start(e.addr);
        let mut c = client(&p);
        p.blackhole(true);
        c.write_all(b"lost").unwrap();
        assert_eq!(poll_read(&mut c, Duration::from_millis(300)), Ok(None));
        assert!(wait(|| p.dropped(Dir::ToTarget) == 4));
        // One way: the request reaches the echo server, the answer is dropped.
        p.heal();
        p.blackhole_dir(Dir::ToClient, true);
        c.write_all(b"half").unwrap();
        assert_eq!(poll_read(&mut c, Duration::from_millis(300)), Ok(None));
        assert!(wait(|| p.dropped(Dir::ToClient) == 4), "{}", p.describe());
        assert_eq!(p.forwarded(Dir::ToTarget), 4);
        p.heal();
        assert_eq!(echo(&mut c, b"again"), b"again");
    }

    #[test]
    fn stall_holds_data_without_losing_it() {
        let e = Echo::start();
        let p = Proxy::start(e.addr);
        let mut c = client(&p);
        p.stall(Dir::ToTarget, true);
        c.write_all(b"held").unwrap();
        assert_eq!(poll_read(&mut c, Duration::from_millis(300)), Ok(None));
        assert_eq!(p.forwarded(Dir::ToTarget), 0);
        p.stall(Dir::ToTarget, false);
        let mut back = [0u8; 4];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"held");
    }

    #[test]
    fn stall_of_one_connection_leaves_the_others() {
        let e = Echo::start();
        let p = Proxy::start(e.addr);
        let mut c0 = client(&p);
        assert_eq!(echo(&mut c0, b"0"), b"0");
        let mut c1 = client(&p);
        assert_eq!(echo(&mut c1, b"1"), b"1");
        let conns = p.connections();
        assert_eq!(conns.len(), 2);
        assert_eq!(conns[0].forwarded, [1, 1]);
        assert!(p.stall_connection(conns[0].id, Dir::ToClient, true));
        assert!(!p.stall_connection(99, Dir::ToClient, true));
        c0.write_all(b"held").unwrap();
        assert_eq!(echo(&mut c1, b"free"), b"free");
        assert_eq!(poll_read(&mut c0, Duration::from_millis(300)), Ok(None));
        p.unstall_connections();
        let mut back = [0u8; 4];
        c0.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"held");
    }

    #[test]
    fn reset_sends_rst() {
        let e = Echo::start();
        let p = Proxy::start(e.addr);
        let mut c = client(&p);
        assert_eq!(echo(&mut c, b"x"), b"x");
        p.reset();
        let r = poll_read(&mut c, Duration::from_secs(2));
        assert_eq!(r, Err(ErrorKind::ConnectionReset), "want an RST");
        // New connections still work.
        let mut c2 = client(&p);
        assert_eq!(echo(&mut c2, b"y"), b"y");
    }

    #[test]
    fn bandwidth_cap_slows_transfers() {
        let e = Echo::start();
        let p = Proxy::start(e.addr);
        let mut c = client(&p);
        p.set_bandwidth(Dir::ToTarget, 1_000_000);
        let t = Instant::now();
        let data = vec![7u8; 300_000];
        assert_eq!(echo(&mut c, &data), data);
        let el = t.elapsed();
        assert!(
            el >= Duration::from_millis(250) && el < Duration::from_secs(3),
            "300 kB at 1 MB/s took {el:?}"
        );
    }

    #[test]
    fn drop_stops_everything_quickly() {
        let e = Echo::start();
        let p = Proxy::start(e.addr);
        let mut c = client(&p);
        assert_eq!(echo(&mut c, b"x"), b"x");
        let mut c2 = client(&p);
        p.stall(Dir::ToTarget, true);
        c2.write_all(&[1u8; 100_000]).unwrap();
        let t = Instant::now();
        drop(p);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "drop took {:?}",
            t.elapsed()
        );
        let r = poll_read(&mut c, Duration::from_secs(2));
        assert!(matches!(r, Ok(Some(0)) | Err(_)), "{r:?}");
    }
}
