//! Network fault scenarios (issue 6, scenarios 2, 3, 9 and 10): two real `urbd run` daemons
//! whose peer links go through our fault proxy ([`urbd_tests::proxy`]), NBD writes on the
//! Primary with a raw client that records every acknowledged write, and assertions on what users
//! rely on: writes keep completing, losses are noticed within the ping timeout, a heal resyncs
//! only what was written meanwhile, and the two disks end identical with every acknowledged
//! write on them.
//!
//! Run: `cargo build --release --bins && cargo test --release -p urbd-tests --test
//! faults_network -- --test-threads=1 --nocapture`.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use urbd_tests::nbdraw::{RawClient, CMD_FLUSH, CMD_WRITE};
use urbd_tests::pair::{peer_of, Alpha, Beta, NetTimings, Node, Pair, RES};
use urbd_tests::proxy::{Dir, ProxiedPair};
use urbd_tests::report;
use urbd_tests::server::Addr;
use urbd_tests::{Json, Prng, MIB};

const IMAGE_MIB: u64 = 32;
const BLOCK: u64 = 4096;

fn net() -> NetTimings {
    NetTimings::default()
}

/// How late a loss may be noticed: a ping goes after ping-interval of silence and must be
/// answered within ping-timeout; plus the status polling and a loaded 2-core machine.
fn loss_bound(n: &NetTimings) -> Duration {
    Duration::from_millis(n.ping_interval_ms + n.ping_timeout_ms + 2000)
}

/// The longest an NBD write may take while the peer goes away: the peer is dropped after
/// timeout-ms at the latest, plus scheduling slack.
fn write_bound(n: &NetTimings) -> Duration {
    Duration::from_millis(n.timeout_ms + 3000)
}

// ---------------------------------------------------------------------------
// The pair behind proxies
// ---------------------------------------------------------------------------

/// A synced protocol C pair (alpha Primary) whose links go through the proxies; asserts that
/// the traffic really goes through them.
fn proxied_pair(net: NetTimings) -> ProxiedPair {
    let mut pp = ProxiedPair::new("C", IMAGE_MIB, net);
    pp.initial_sync();
    let through = pp.ab.forwarded_total() + pp.ba.forwarded_total();
    assert!(
        through >= pp.data_size(),
        "the initial sync ({} bytes) did not go through the proxies\n{}",
        pp.data_size(),
        pp.describe_proxies()
    );
    // A write moves the counters of a proxy while the status says Connected.
    let before = pp.ab.forwarded_total() + pp.ba.forwarded_total();
    let mut c = RawClient::connect_go(&pp.nbd_addr(Alpha), RES);
    c.write(1, 0, &[0x5a; 4096]).expect("first write");
    c.disconnect();
    for node in Node::BOTH {
        let p = pp.peer_status(node);
        assert_eq!(p.str_at("connection-state"), "Connected", "{node}: {p}");
    }
    let after = pp.ab.forwarded_total() + pp.ba.forwarded_total();
    assert!(
        after >= before + 4096,
        "a replicated write did not cross the proxies\n{}",
        pp.describe_proxies()
    );
    pp
}

// ---------------------------------------------------------------------------
// A writer that records what was acknowledged
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Ack {
    block: u64,
    seq: u64,
    at: Instant,
    latency: Duration,
}

/// The content of `block` written with `seq`: block and seq in the first 16 bytes, then seeded
/// noise, so nothing else can be mistaken for it.
fn block_data(seed: u64, block: u64, seq: u64) -> Vec<u8> {
    let mut v = Prng::new(seed ^ block.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (seq << 32))
        .bytes(BLOCK as usize);
    v[..8].copy_from_slice(&block.to_be_bytes());
    v[8..16].copy_from_slice(&seq.to_be_bytes());
    v
}

/// 4 KiB writes at random blocks of `[first, first + count)` through one NBD connection, one at
/// a time, until stopped. Every write must succeed (an error or a reply later than the raw
/// client's 10 s timeout ends the writer with an error).
struct Writer {
    seed: u64,
    /// FLUSH once stopped, before disconnecting.
    flush: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    /// Set by the writer while paused (no write in flight).
    idle: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    done: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Writer {
    fn start(addr: Addr, seed: u64, first: u64, count: u64, gap: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicU64::new(0));
        let flush = Arc::new(AtomicBool::new(false));
        let (s, p, i, a, d, f) = (
            stop.clone(),
            pause.clone(),
            idle.clone(),
            acks.clone(),
            done.clone(),
            flush.clone(),
        );
        let thread = thread::spawn(move || -> Result<(), String> {
            let mut c = RawClient::connect_go(&addr, RES);
            let mut rng = Prng::new(seed);
            let mut seq = 0u64;
            while !s.load(Ordering::SeqCst) {
                if p.load(Ordering::SeqCst) {
                    i.store(true, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
                i.store(false, Ordering::SeqCst);
                seq += 1;
                let block = first + rng.next_u64() % count;
                let data = block_data(seed, block, seq);
                let t = Instant::now();
                c.send_request(0, CMD_WRITE, seq, block * BLOCK, BLOCK as u32, &data)
                    .map_err(|e| format!("write {seq} (block {block}): send: {e}"))?;
                let r = c.read_simple_reply().map_err(|e| {
                    format!(
                        "write {seq} (block {block}): no reply after {:?}: {e}",
                        t.elapsed()
                    )
                })?;
                if r.error != 0 || r.cookie != seq {
                    return Err(format!("write {seq} (block {block}): reply {r:?}"));
                }
                a.lock().unwrap().push(Ack {
                    block,
                    seq,
                    at: Instant::now(),
                    latency: t.elapsed(),
                });
                d.fetch_add(1, Ordering::SeqCst);
                thread::sleep(gap);
            }
            if f.load(Ordering::SeqCst) {
                // What a careful application does last (fsync, umount, qemu's close).
                seq += 1;
                c.send_request(0, CMD_FLUSH, seq, 0, 0, &[])
                    .map_err(|e| format!("flush: send: {e}"))?;
                let r = c
                    .read_simple_reply()
                    .map_err(|e| format!("flush: no reply: {e}"))?;
                if r.error != 0 || r.cookie != seq {
                    return Err(format!("flush: reply {r:?}"));
                }
            }
            c.disconnect();
            Ok(())
        });
        Writer {
            seed,
            flush,
            stop,
            pause,
            idle,
            acks,
            done,
            thread: Some(thread),
        }
    }

    fn count(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    /// Fails the test if the writer thread ended with an error.
    #[track_caller]
    fn check_alive(&mut self, pair: &Pair) {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let r = self.thread.take().unwrap().join();
            panic!(
                "the NBD writer stopped: {:?}\n{}",
                r.map_err(|_| "panicked"),
                pair.logs_tail(40)
            );
        }
    }

    /// Pause between writes; returns once no write is in flight.
    #[track_caller]
    fn pause(&mut self, pair: &Pair) {
        self.pause.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.idle.load(Ordering::SeqCst) {
            self.check_alive(pair);
            assert!(Instant::now() < deadline, "the writer did not pause");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn resume(&self) {
        self.idle.store(false, Ordering::SeqCst);
        self.pause.store(false, Ordering::SeqCst);
    }

    /// Stop after a last NBD FLUSH (a careful application's close).
    #[track_caller]
    fn stop_flushed(&mut self, pair: &Pair) -> Vec<Ack> {
        self.flush.store(true, Ordering::SeqCst);
        self.stop(pair)
    }

    /// Stop; panics with the writer's error if it failed.
    #[track_caller]
    fn stop(&mut self, pair: &Pair) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("the NBD writer failed: {e}\n{}", pair.logs_tail(40)),
                Err(_) => panic!("the NBD writer panicked\n{}", pair.logs_tail(40)),
            }
        }
        self.acks()
    }

    /// Every block's last acknowledged content is in `data` (a data region).
    #[track_caller]
    fn assert_acked_in(&self, what: &str, data: &[u8]) -> usize {
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for a in self.acks() {
            last.insert(a.block, a.seq);
        }
        for (&block, &seq) in &last {
            let off = (block * BLOCK) as usize;
            let got = &data[off..off + BLOCK as usize];
            if got != block_data(self.seed, block, seq).as_slice() {
                let tag = (
                    u64::from_be_bytes(got[..8].try_into().unwrap()),
                    u64::from_be_bytes(got[8..16].try_into().unwrap()),
                );
                panic!(
                    "{what}: block {block} does not hold its last acknowledged write (seq \
                     {seq}); it holds (block, seq) tag {tag:?}"
                );
            }
        }
        last.len()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Status helpers
// ---------------------------------------------------------------------------

fn conn_state(s: &Json) -> String {
    peer_of(s).str_at("connection-state").to_string()
}

/// Connected, Established, both disks UpToDate, nothing out of sync.
fn in_sync(s: &Json) -> bool {
    let p = peer_of(s);
    s.str_at("disk-state") == "UpToDate"
        && p.str_at("connection-state") == "Connected"
        && p.str_at("replication-state") == "Established"
        && p.str_at("peer-disk-state") == "UpToDate"
        && p.u64_at("out-of-sync-bytes") == 0
}

/// Polls both nodes until neither says Connected; how long after `since` each noticed (at the
/// poll that saw it).
#[track_caller]
fn wait_both_lost(pair: &Pair, since: Instant, timeout: Duration) -> [Duration; 2] {
    let mut seen: [Option<Duration>; 2] = [None, None];
    loop {
        for (i, node) in Node::BOTH.into_iter().enumerate() {
            if seen[i].is_some() {
                continue;
            }
            let o = pair.adm(node, &["status", RES, "--json"]);
            if o.status.success() {
                let s = Json::parse_or_panic("status", &o.stdout);
                if conn_state(&s) != "Connected" {
                    seen[i] = Some(since.elapsed());
                }
            }
        }
        if let [Some(a), Some(b)] = seen {
            return [a, b];
        }
        assert!(
            since.elapsed() < timeout,
            "not both nodes noticed the loss within {timeout:?} (alpha {:?}, beta {:?})\n{}",
            seen[0],
            seen[1],
            pair.logs_tail(30)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Seconds since midnight (UTC) of a daemon log line ("2026-11-23T17:32:48.351137Z ...").
fn log_time_of_day(line: &str) -> Option<f64> {
    let t = line.get(11..)?.split('Z').next()?;
    let mut it = t.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Now, in seconds since midnight (UTC), comparable with [`log_time_of_day`].
fn now_time_of_day() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// Waits until each node's log, past byte `offsets[i]`, has a "peer lost:" line; how long
/// after `t0` (a [`now_time_of_day`]) each was logged, and the lines. Catches losses that a
/// status poll misses because the link came back at once.
#[track_caller]
fn wait_both_lost_in_logs(
    pair: &Pair,
    offsets: [usize; 2],
    t0: f64,
    timeout: Duration,
) -> ([Duration; 2], [String; 2]) {
    let mut found: [Option<(Duration, String)>; 2] = [None, None];
    let ok = urbd_tests::tools::wait_until(timeout, || {
        for (i, node) in Node::BOTH.into_iter().enumerate() {
            if found[i].is_some() {
                continue;
            }
            let log = pair.log(node);
            let line = log
                .get(offsets[i]..)
                .unwrap_or("")
                .lines()
                .find(|l| l.contains("peer lost:"));
            if let Some(l) = line {
                let at = log_time_of_day(l).unwrap_or(t0);
                let after = (at - t0).rem_euclid(86_400.0);
                found[i] = Some((Duration::from_secs_f64(after), l.to_string()));
            }
        }
        found.iter().all(Option::is_some)
    });
    assert!(
        ok,
        "not both nodes logged a peer loss within {timeout:?}: {found:?}\n{}",
        pair.logs_tail(30)
    );
    let [Some((da, la)), Some((db, lb))] = found else {
        unreachable!()
    };
    ([da, db], [la, lb])
}

/// Waits until both nodes are in sync; returns how long it took.
#[track_caller]
fn wait_both_in_sync(pair: &Pair, timeout: Duration) -> Duration {
    let t = Instant::now();
    pair.wait_status(Alpha, "in sync", timeout, in_sync);
    let left = timeout.saturating_sub(t.elapsed());
    pair.wait_status(Beta, "in sync", left.max(Duration::from_secs(1)), in_sync);
    t.elapsed()
}

/// The `N` of every "resync finished: N bytes" line of `node`'s log, in order.
fn resyncs(pair: &Pair, node: Node) -> Vec<u64> {
    pair.log(node)
        .lines()
        .filter_map(|l| l.split("resync finished: ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

#[track_caller]
fn wait_resyncs(pair: &Pair, node: Node, count: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = resyncs(pair, node);
        if r.len() >= count {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{node}: resync {count} did not finish ({r:?})\n{}",
            pair.logs_tail(40)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Both daemons still run and answer `status`.
#[track_caller]
fn assert_daemons_up(pair: &Pair) {
    for node in Node::BOTH {
        assert!(
            !pair.daemon_pids(node).is_empty(),
            "the daemon of {node} is gone\n{}",
            pair.logs_tail(40)
        );
        pair.status(node);
    }
}

fn is_connection_line(l: &str) -> bool {
    (l.starts_with("change connection") || l.starts_with("exists connection"))
        && l.contains(&format!("name:{RES}"))
}

/// Event lines (from `from`) saying the connection is something else than Connected.
fn disconnect_lines(lines: &[String], from: usize) -> Vec<String> {
    lines
        .iter()
        .skip(from)
        .filter(|l| {
            is_connection_line(l)
                && l.contains(" connection:")
                && !l.contains("connection:Connected")
        })
        .cloned()
        .collect()
}

/// How many times the connection went from Connected to something else (event lines from
/// `from`).
fn losses(lines: &[String], from: usize) -> usize {
    let mut connected = true;
    let mut n = 0;
    for l in lines.iter().skip(from).filter(|l| is_connection_line(l)) {
        let Some(state) = l.split(" connection:").nth(1) else {
            continue;
        };
        let now = state.starts_with("Connected");
        if connected && !now {
            n += 1;
        }
        connected = now;
    }
    n
}

fn blocks_bytes(acks: &[Ack], pred: impl Fn(&Ack) -> bool) -> u64 {
    let set: std::collections::BTreeSet<u64> =
        acks.iter().filter(|a| pred(a)).map(|a| a.block).collect();
    set.len() as u64 * BLOCK
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------
// Scenario 2: partition during writes, both ways and one way
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Partition {
    /// Both proxies close every connection and refuse new ones.
    Cut,
    /// Both proxies read and drop everything.
    Blackhole,
    /// Everything `Node` sends is dropped; what its peer sends arrives.
    OneWay(Node),
}

#[test]
fn s2_partition_during_writes() {
    let seed = report::seed();
    let net = net();
    let pp = proxied_pair(net.clone());
    let size = pp.data_size();
    let blocks = size / BLOCK;
    let mut w = Writer::start(
        pp.nbd_addr(Alpha),
        seed,
        1,
        blocks - 1,
        Duration::from_millis(4),
    );
    let mut figures = Vec::new();
    let mut rng = Prng::new(seed ^ 2);
    for kind in [
        Partition::Cut,
        Partition::Blackhole,
        Partition::OneWay(Alpha),
        Partition::OneWay(Beta),
    ] {
        let hold = Duration::from_millis(2500 + rng.next_u64() % 1500);
        eprintln!("--- partition {kind:?}, held {hold:?} after both noticed");
        w.check_alive(&pp);
        let resyncs_before = resyncs(&pp, Alpha).len();
        thread::sleep(Duration::from_millis(500));
        let t0 = Instant::now();
        match kind {
            Partition::Cut => pp.partition(false),
            Partition::Blackhole => pp.partition(true),
            Partition::OneWay(from) => pp.partition_one_way(from),
        }
        let [la, lb] = wait_both_lost(&pp, t0, Duration::from_secs(20));
        let bound = loss_bound(&net);
        assert!(
            la <= bound && lb <= bound,
            "{kind:?}: loss noticed after {la:?} (alpha) / {lb:?} (beta); bound {bound:?}\n{}",
            pp.logs_tail(30)
        );
        let t_lost = t0 + la.max(lb);
        thread::sleep(hold);
        w.check_alive(&pp);
        // The Primary kept serving: writes were acked after the loss, none took too long.
        let acks = w.acks();
        let after_loss = acks.iter().filter(|a| a.at > t_lost).count();
        assert!(
            after_loss >= 20,
            "{kind:?}: only {after_loss} writes acked in the {hold:?} after the loss\n{}",
            pp.logs_tail(30)
        );
        let max_lat = acks
            .iter()
            .filter(|a| a.at > t0)
            .map(|a| a.latency)
            .max()
            .unwrap_or_default();
        assert!(
            max_lat <= write_bound(&net),
            "{kind:?}: a write took {max_lat:?} during the partition"
        );
        for node in Node::BOTH {
            let p = pp.peer_status(node);
            assert_ne!(
                p.str_at("connection-state"),
                "Connected",
                "{kind:?}: {node} connected during the partition: {p}\n{}",
                pp.describe_proxies()
            );
        }
        // Heal with no write in flight, so that the out-of-sync count is what must move.
        w.pause(&pp);
        let acks = w.acks();
        let oos = pp.peer_status(Alpha).u64_at("out-of-sync-bytes");
        let t_heal = Instant::now();
        let written_during = blocks_bytes(&acks, |a| a.at > t0);
        let written_after_loss = blocks_bytes(&acks, |a| a.at > t_lost);
        pp.heal();
        let converge = wait_both_in_sync(&pp, Duration::from_secs(60));
        let moved = wait_resyncs(&pp, Alpha, resyncs_before + 1)[resyncs_before];
        eprintln!(
            "{kind:?}: lost after {la:?}/{lb:?}; {} writes during ({} after the loss, max \
             latency {max_lat:?}); blocks written during {written_during} B, after the loss \
             {written_after_loss} B; out of sync at heal {oos} B; resynced {moved} B; in sync \
             {converge:?} after the heal\n{}",
            acks.iter().filter(|a| a.at > t0).count(),
            after_loss,
            pp.describe_proxies()
        );
        assert_eq!(
            moved, oos,
            "{kind:?}: the resync moved what was out of sync at the heal"
        );
        assert!(
            moved >= written_after_loss,
            "{kind:?}: resynced {moved} B < the {written_after_loss} B written after the loss"
        );
        // A bitmap resync: what was written during the partition, plus what was in flight
        // (acked by the peer but not yet covered by a barrier) when the link went.
        let inflight_slack =
            blocks_bytes(&acks, |a| a.at > t0 - Duration::from_secs(2) && a.at <= t0);
        assert!(
            moved <= written_during + inflight_slack,
            "{kind:?}: resynced {moved} B, more than the {written_during} B written during the \
             partition (+ {inflight_slack} B just before)"
        );
        assert!(
            moved < size / 4,
            "{kind:?}: looks like a full sync: {moved} B"
        );
        let _ = t_heal;
        figures.push(format!(
            "{kind:?}: noticed {}/{} (alpha/beta), {after_loss} writes acked meanwhile (max \
             {:.0} ms), resynced {} blocks (= out of sync; {} written during), in sync {} after \
             heal",
            secs(la),
            secs(lb),
            max_lat.as_secs_f64() * 1000.0,
            moved / BLOCK,
            written_during / BLOCK,
            secs(converge)
        ));
        w.resume();
    }
    thread::sleep(Duration::from_millis(500));
    w.stop(&pp);
    wait_both_in_sync(&pp, Duration::from_secs(30));
    pp.down_both();
    let data = pp.assert_data_identical();
    let checked = w.assert_acked_in("alpha/beta data region", &data);
    report::scenario(
        "2 partition during writes (cut, blackhole, one-way each way)",
        "Primary keeps acking writes; both nodes notice within ping-interval + ping-timeout (+2 s); \
         heal → bitmap resync of exactly the out-of-sync blocks; disks identical, every acked \
         write present",
        &format!(
            "{}; {} writes, {checked} blocks checked",
            figures.join("; "),
            w.acks().len()
        ),
    );
}

// ---------------------------------------------------------------------------
// Scenario 3: slow link (no false disconnects), flapping link (converges)
// ---------------------------------------------------------------------------

#[test]
fn s3_slow_and_flapping_links() {
    let seed = report::seed();
    let net = net();
    let pp = proxied_pair(net.clone());
    let blocks = pp.data_size() / BLOCK;
    let mut ev_a = pp.events(Alpha);
    let mut ev_b = pp.events(Beta);
    let t = Duration::from_secs(20);
    let start_a = ev_a.wait_line("`exists -`", 0, t, |l| l.trim() == "exists -");
    let start_b = ev_b.wait_line("`exists -`", 0, t, |l| l.trim() == "exists -");

    // Slow: 200 ms each way on both proxies (RTT 400 ms < ping-timeout 1000 ms).
    let delay = 200;
    for p in pp.proxies() {
        p.set_delay_both(delay);
    }
    // Disjoint ranges: [1, blocks/2) and [blocks/2, blocks).
    let mut w1 = Writer::start(pp.nbd_addr(Alpha), seed, 1, blocks / 2 - 1, Duration::ZERO);
    let mut w2 = Writer::start(
        pp.nbd_addr(Alpha),
        seed ^ 0xff,
        blocks / 2,
        blocks / 2,
        Duration::ZERO,
    );
    let slow_for = Duration::from_secs(10);
    let t0 = Instant::now();
    while t0.elapsed() < slow_for {
        for node in Node::BOTH {
            let s = pp.status(node);
            assert_eq!(
                conn_state(&s),
                "Connected",
                "{node} lost the link under {delay} ms of delay each way\n{}",
                pp.logs_tail(30)
            );
        }
        w1.check_alive(&pp);
        w2.check_alive(&pp);
        thread::sleep(Duration::from_millis(500));
    }
    let slow_writes = w1.count() + w2.count();
    let slow_lat: Vec<Duration> = w1
        .acks()
        .iter()
        .chain(w2.acks().iter())
        .map(|a| a.latency)
        .collect();
    let min_lat = slow_lat.iter().min().copied().unwrap_or_default();
    let max_lat = slow_lat.iter().max().copied().unwrap_or_default();
    let dis_a = disconnect_lines(&ev_a.lines(), start_a);
    let dis_b = disconnect_lines(&ev_b.lines(), start_b);
    assert!(
        dis_a.is_empty() && dis_b.is_empty(),
        "disconnects under a delay below the ping timeout: alpha {dis_a:?}, beta {dis_b:?}"
    );
    assert!(
        slow_writes >= 10,
        "only {slow_writes} writes in {slow_for:?}"
    );
    assert!(
        min_lat >= Duration::from_millis(2 * delay),
        "a protocol C write completed in {min_lat:?}, under the {} ms round trip: the delay \
         was not in the path",
        2 * delay
    );
    eprintln!(
        "slow: {slow_writes} writes in {slow_for:?}, latency {min_lat:?}..{max_lat:?}, no \
         disconnect\n{}",
        pp.describe_proxies()
    );

    // Flapping: cut and heal several times during writes.
    for p in pp.proxies() {
        p.heal();
    }
    let mut rng = Prng::new(seed ^ 3);
    let flaps = 5;
    let mark_a = ev_a.lines().len();
    let t_flap = Instant::now();
    let mut t_last_heal = t_flap;
    for i in 0..flaps {
        let down = Duration::from_millis(800 + rng.next_u64() % 2200);
        let up = Duration::from_millis(300 + rng.next_u64() % 2700);
        // Even flaps: a cut held for `down`; odd ones: an RST of every connection, after
        // which the peers may reconnect at once.
        if i % 2 == 0 {
            pp.partition(false);
            thread::sleep(down);
        } else {
            for p in pp.proxies() {
                p.reset();
            }
        }
        pp.heal();
        t_last_heal = Instant::now();
        if i + 1 < flaps {
            eprintln!("flap {i}: cut {down:?} or reset, then up {up:?}");
            thread::sleep(up);
        } else {
            eprintln!("flap {i}: cut {down:?}, then healed for good");
        }
        w1.check_alive(&pp);
        w2.check_alive(&pp);
    }
    let bound = Duration::from_secs(30);
    wait_both_in_sync(&pp, bound);
    let converge = t_last_heal.elapsed();
    assert!(
        converge <= bound,
        "converged {converge:?} after the last heal"
    );
    let flap_time = t_last_heal - t_flap;
    let losses = losses(&ev_a.lines(), mark_a);
    assert!(
        losses >= flaps / 2,
        "the flaps never took the link down (alpha's events)\n{}",
        ev_a.text()
    );
    // Still converged with the writers running; stop them and check the data.
    w1.stop(&pp);
    w2.stop(&pp);
    wait_both_in_sync(&pp, Duration::from_secs(30));
    ev_a.stop();
    ev_b.stop();
    pp.down_both();
    let data = pp.assert_data_identical();
    let c1 = w1.assert_acked_in("writer 1", &data);
    let c2 = w2.assert_acked_in("writer 2", &data);
    report::scenario(
        "3 slow and flapping links",
        &format!(
            "{delay} ms each way (ping-timeout {} ms): no disconnect event, no status change; \
             after {flaps} flaps (cuts and RSTs) during writes: Connected/UpToDate/in sync within {bound:?}, \
             disks identical, every acked write present",
            net.ping_timeout_ms
        ),
        &format!(
            "slow: {slow_writes} writes in {}, latency {:.0}..{:.0} ms; flapping {} with {losses} \
             link losses seen by alpha; converged {} after the last heal; {} blocks checked",
            secs(slow_for),
            min_lat.as_secs_f64() * 1000.0,
            max_lat.as_secs_f64() * 1000.0,
            secs(flap_time),
            secs(converge),
            c1 + c2
        ),
    );
}

// ---------------------------------------------------------------------------
// Scenario 9: hostile peers
// ---------------------------------------------------------------------------

/// CRC-32C (Castagnoli, reflected), PROTOCOL.md §2.2.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A frame: header (magic, version 1, type, flags 0, reserved 0, `len`, seq), payload, crc.
/// `len` may lie about the payload (oversized/truncated frames).
fn frame_with_len(typ: u16, seq: u64, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(28 + payload.len());
    f.extend_from_slice(&0x5552_4244u32.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&typ.to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(payload);
    let crc = crc32c(&f);
    f.extend_from_slice(&crc.to_be_bytes());
    f
}

fn frame(typ: u16, seq: u64, payload: &[u8]) -> Vec<u8> {
    frame_with_len(typ, seq, payload.len() as u32, payload)
}

const HELLO: u16 = 0x0001;
const AUTH_CHALLENGE: u16 = 0x0002;
const AUTH_RESPONSE: u16 = 0x0003;
const AUTH_RESULT: u16 = 0x0004;
const DATA: u16 = 0x0010;

/// Hello payload (§4.2): versions 1..=1, connection kind, resource, node.
fn hello(kind: u8, node: &str) -> Vec<u8> {
    let mut p = vec![0, 1, 0, 1, kind];
    for name in [RES, node] {
        p.push(name.len() as u8);
        p.extend_from_slice(name.as_bytes());
    }
    p
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads (and discards) until the daemon closes the connection; how long that took, or None if
/// it stayed open for `timeout`.
fn closed_within(s: &mut TcpStream, timeout: Duration) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while t.elapsed() < timeout {
        match s.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(t.elapsed()),
        }
    }
    None
}

/// Reads one frame (header + payload + crc); (type, payload).
fn read_frame(s: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut h = [0u8; 24];
    s.read_exact(&mut h)?;
    let typ = u16::from_be_bytes([h[6], h[7]]);
    let len = u32::from_be_bytes([h[12], h[13], h[14], h[15]]) as usize;
    assert!(len <= 4096, "unexpected frame length {len} from the daemon");
    let mut p = vec![0u8; len + 4];
    s.read_exact(&mut p)?;
    p.truncate(len);
    Ok((typ, p))
}

/// New log lines of `node` since `from` bytes that mention `needle`.
fn log_lines_since(pair: &Pair, node: Node, from: usize, needle: &str) -> Vec<String> {
    let log = pair.log(node);
    log.get(from..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[track_caller]
fn assert_logged(pair: &Pair, node: Node, from: usize, needle: &str, what: &str) -> String {
    let mut found = Vec::new();
    let ok = urbd_tests::tools::wait_until(Duration::from_secs(5), || {
        found = log_lines_since(pair, node, from, needle);
        !found.is_empty()
    });
    assert!(
        ok,
        "{what}: {node} logged nothing mentioning {needle:?}\n{}",
        pair.logs_tail(20)
    );
    found[0].clone()
}

#[test]
fn s9_hostile_peers() {
    let seed = report::seed();
    let net = net();
    let pp = proxied_pair(net.clone());
    let blocks = pp.data_size() / BLOCK;
    // The daemons' own listening addresses (the proxies' targets).
    let real = |node: Node| match node {
        Alpha => pp.ba.target(),
        Beta => pp.ab.target(),
    };
    let mut rng = Prng::new(seed ^ 9);
    let mut figures = Vec::new();
    // The main writer's blocks [1, blocks/4); the bulk writers of (d) take the rest.
    let mut w = Writer::start(
        pp.nbd_addr(Alpha),
        seed,
        1,
        blocks / 4 - 1,
        Duration::from_millis(5),
    );

    // (a) While connected: garbage on both replication ports is refused at once and the real
    // link does not notice.
    let mut ev_a = pp.events(Alpha);
    let start_a = ev_a.wait_line("`exists -`", 0, Duration::from_secs(20), |l| {
        l.trim() == "exists -"
    });
    for node in Node::BOTH {
        let mut s = connect(real(node));
        let _ = s.write_all(&rng.bytes(4096));
        let took = closed_within(&mut s, Duration::from_secs(5));
        assert!(
            took.is_some(),
            "{node}: a garbage connection stayed open while connected"
        );
    }
    thread::sleep(Duration::from_millis(500));
    let dis = disconnect_lines(&ev_a.lines(), start_a);
    assert!(
        dis.is_empty(),
        "garbage clients disturbed the link: {dis:?}"
    );
    assert_daemons_up(&pp);
    for node in Node::BOTH {
        assert_eq!(conn_state(&pp.status(node)), "Connected", "{node}");
    }
    ev_a.stop();

    // (b) While the real link is down (both nodes are handshaking with whoever comes), hostile
    // clients on both nodes' replication ports.
    pp.partition(false);
    wait_both_lost(&pp, Instant::now(), Duration::from_secs(20));
    let handshake = Duration::from_secs(5); // HANDSHAKE_TIMEOUT_MS_DEFAULT
    for node in Node::BOTH {
        let addr = real(node);
        let peer = node.peer().name();
        let log0 = pp.log(node).len();

        // Garbage bytes.
        let mut s = connect(addr);
        let me = s.local_addr().unwrap().to_string();
        let _ = s.write_all(&rng.bytes(4096));
        let took = closed_within(&mut s, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{node}: garbage connection not closed within 3 s"));
        let line = assert_logged(&pp, node, log0, &me, "garbage");
        figures.push(format!("{node} garbage: closed in {}", secs(took)));
        eprintln!("{node} garbage → {line}");

        // A correct Hello, then an oversized frame (Data announcing ~2 GiB).
        let log0 = pp.log(node).len();
        let mut s = connect(addr);
        let me = s.local_addr().unwrap().to_string();
        s.write_all(&frame(HELLO, 0, &hello(0, peer))).unwrap();
        let _ = s.write_all(&frame_with_len(DATA, 1, 0x7fff_0000, &[0u8; 64]));
        let took = closed_within(&mut s, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{node}: oversized frame: connection not closed in 3 s"));
        let line = assert_logged(&pp, node, log0, &me, "oversized frame");
        figures.push(format!("{node} oversized: closed in {}", secs(took)));
        eprintln!("{node} oversized → {line}");

        // A Hello announcing more payload than Hello may have (§2.7: 9..=135).
        let log0 = pp.log(node).len();
        let mut s = connect(addr);
        let me = s.local_addr().unwrap().to_string();
        let _ = s.write_all(&frame_with_len(HELLO, 0, 100_000, &hello(0, peer)));
        closed_within(&mut s, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{node}: long Hello: connection not closed in 3 s"));
        let line = assert_logged(&pp, node, log0, &me, "Hello too long");
        eprintln!("{node} long Hello → {line}");

        // A frame with a bad crc.
        let log0 = pp.log(node).len();
        let mut s = connect(addr);
        let me = s.local_addr().unwrap().to_string();
        let mut f = frame(HELLO, 0, &hello(0, peer));
        let n = f.len();
        f[n - 1] ^= 0x55;
        let _ = s.write_all(&f);
        closed_within(&mut s, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{node}: bad crc: connection not closed in 3 s"));
        let line = assert_logged(&pp, node, log0, &me, "bad crc");
        eprintln!("{node} bad crc → {line}");

        // Wrong secret: a proper Hello and challenge, then a made-up AuthResponse.
        let log0 = pp.log(node).len();
        let mut s = connect(addr);
        let me = s.local_addr().unwrap().to_string();
        s.write_all(&frame(HELLO, 0, &hello(0, peer))).unwrap();
        let (t, _) = read_frame(&mut s).expect("the daemon's Hello");
        assert_eq!(t, HELLO, "{node}: first frame from the daemon");
        s.write_all(&frame(AUTH_CHALLENGE, 1, &rng.bytes(64)))
            .unwrap();
        let (t, _) = read_frame(&mut s).expect("the daemon's AuthChallenge");
        assert_eq!(t, AUTH_CHALLENGE);
        s.write_all(&frame(AUTH_RESPONSE, 2, &rng.bytes(32)))
            .unwrap();
        let mut denied = None;
        // The daemon's AuthResponse, then its AuthResult (denied), then close.
        while let Ok((t, p)) = read_frame(&mut s) {
            if t == AUTH_RESULT {
                denied = Some(p == [0]);
                break;
            }
        }
        assert_eq!(
            denied,
            Some(true),
            "{node}: want AuthResult denied for a wrong AuthResponse"
        );
        closed_within(&mut s, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{node}: wrong secret: connection not closed in 3 s"));
        let line = assert_logged(&pp, node, log0, &me, "wrong secret");
        assert!(
            line.to_lowercase().contains("auth"),
            "{node}: the log line does not say authentication failed: {line}"
        );
        eprintln!("{node} wrong secret → {line}");

        // Truncated: a header announcing 40 bytes of Hello, 10 sent, then silence; and the same
        // followed by EOF.
        let mut s = connect(addr);
        let f = frame(HELLO, 0, &hello(0, peer));
        s.write_all(&f[..34]).unwrap();
        let took = closed_within(&mut s, handshake + Duration::from_secs(3)).unwrap_or_else(|| {
            panic!("{node}: truncated frame: connection open after the handshake timeout")
        });
        figures.push(format!("{node} truncated+silent: closed in {}", secs(took)));
        let mut s = connect(addr);
        s.write_all(&f[..30]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        closed_within(&mut s, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{node}: truncated frame + EOF: not closed in 3 s"));
        w.check_alive(&pp);
    }
    assert_daemons_up(&pp);

    // (c) Many silent connections (more than the pending-handshake limit) on both nodes, then
    // heal: the real peer gets in once they time out.
    let mut idle: Vec<TcpStream> = Vec::new();
    for node in Node::BOTH {
        for _ in 0..20 {
            idle.push(connect(real(node)));
        }
    }
    let t_heal = Instant::now();
    pp.heal();
    let reconnect = wait_both_in_sync(&pp, Duration::from_secs(60));
    drop(idle);
    assert!(
        reconnect <= handshake + Duration::from_secs(20),
        "reconnect took {reconnect:?} with idle connections around"
    );
    figures.push(format!(
        "40 idle connections then heal: in sync after {}",
        secs(t_heal.elapsed())
    ));

    // (d) The peer stops reading: everything alpha sends is held by the proxy (TCP pushes back)
    // while alpha writes a lot. NBD writes must not deadlock: the stuck peer is dropped and
    // writes complete within the timeout bound.
    let mut bulk: Vec<Writer> = (0..3)
        .map(|i| {
            Writer::start(
                pp.nbd_addr(Alpha),
                seed ^ (0x100 + i),
                blocks / 4 * (i + 1),
                blocks / 4,
                Duration::ZERO,
            )
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    for data_only in [true, false] {
        let what = if data_only {
            "data socket stalled (meta flows)"
        } else {
            "both sockets stalled"
        };
        let resyncs_before = resyncs(&pp, Alpha).len();
        let logs0 = [pp.log(Alpha).len(), pp.log(Beta).len()];
        let t0;
        let t0_tod;
        if data_only {
            // The link's data socket: the connection carrying the most bytes from alpha to
            // beta while the writers run (on ab alpha is the client, on ba the target).
            let sample = || -> Vec<(usize, u64, u64)> {
                let mut v = Vec::new();
                for (i, p) in pp.proxies().into_iter().enumerate() {
                    let d = if i == 0 { 0 } else { 1 };
                    v.extend(p.connections().iter().map(|c| (i, c.id, c.forwarded[d])));
                }
                v
            };
            let s0 = sample();
            thread::sleep(Duration::from_millis(500));
            let s1 = sample();
            let busiest = s1
                .iter()
                .map(|&(i, id, b)| {
                    let before = s0
                        .iter()
                        .find(|&&(j, jd, _)| j == i && jd == id)
                        .map_or(0, |x| x.2);
                    (b - before, i, id)
                })
                .max()
                .filter(|x| x.0 > 0)
                .unwrap_or_else(|| {
                    panic!(
                        "no connection carries alpha's writes\n{}",
                        pp.describe_proxies()
                    )
                });
            let (_, carrier, id) = busiest;
            let (p, dir) = if carrier == 0 {
                (&pp.ab, Dir::ToTarget)
            } else {
                (&pp.ba, Dir::ToClient)
            };
            t0 = Instant::now();
            t0_tod = now_time_of_day();
            assert!(p.stall_connection(id, dir, true));
        } else {
            t0 = Instant::now();
            t0_tod = now_time_of_day();
            pp.ab.stall(Dir::ToTarget, true);
            pp.ba.stall(Dir::ToClient, true);
        }
        // Meta flowing, only the write path can tell: timeout-ms (acks missing) or a full send
        // queue. Everything stalled: the ping timeout.
        let bound = if data_only {
            Duration::from_millis(net.timeout_ms + 3000)
        } else {
            loss_bound(&net)
        };
        let ([la, lb], [line_a, line_b]) =
            wait_both_lost_in_logs(&pp, logs0, t0_tod, bound + Duration::from_secs(10));
        eprintln!("{what}: alpha after {la:?}: {line_a}\n  beta after {lb:?}: {line_b}");
        assert!(
            la <= bound && lb <= bound,
            "{what}: loss noticed after {la:?}/{lb:?}, bound {bound:?}\n{}",
            pp.logs_tail(30)
        );
        thread::sleep(Duration::from_secs(2));
        w.check_alive(&pp);
        for b in &mut bulk {
            b.check_alive(&pp);
        }
        let all: Vec<Ack> = bulk.iter().flat_map(|b| b.acks()).chain(w.acks()).collect();
        let max_lat = all
            .iter()
            .filter(|a| a.at > t0)
            .map(|a| a.latency)
            .max()
            .unwrap_or_default();
        let after = all.iter().filter(|a| a.at > t0 + la).count();
        assert!(
            max_lat <= write_bound(&net),
            "{what}: a write took {max_lat:?} while the peer did not read"
        );
        assert!(
            after >= 20,
            "{what}: only {after} writes completed after alpha dropped the stuck peer"
        );
        for p in pp.proxies() {
            p.heal();
            p.unstall_connections();
        }
        let converge = wait_both_in_sync(&pp, Duration::from_secs(60));
        wait_resyncs(&pp, Alpha, resyncs_before + 1);
        figures.push(format!(
            "{what}: peer dropped after {}/{} (alpha/beta), max write latency {:.0} ms, {after} \
             writes after, in sync {} after heal",
            secs(la),
            secs(lb),
            max_lat.as_secs_f64() * 1000.0,
            secs(converge)
        ));
    }

    // (e) A link that corrupts what alpha sends (one byte in every 64 KiB, both proxies): the
    // receiver's crc32c check drops the link each time, nothing corrupted reaches beta's disk
    // (checked at the end), and after the heal the pair converges.
    let log_b = pp.log(Beta).len();
    let resyncs_before = resyncs(&pp, Alpha).len();
    pp.ab.corrupt_every(Dir::ToTarget, 64 * 1024);
    pp.ba.corrupt_every(Dir::ToClient, 64 * 1024);
    thread::sleep(Duration::from_secs(4));
    let crc_line = assert_logged(&pp, Beta, log_b, "crc mismatch", "corrupted link");
    let crc_drops = log_lines_since(&pp, Beta, log_b, "peer lost: crc mismatch").len();
    let flipped = pp.ab.corrupted(Dir::ToTarget) + pp.ba.corrupted(Dir::ToClient);
    eprintln!("corruption: {flipped} bytes flipped, {crc_drops} crc lines on beta: {crc_line}");
    w.check_alive(&pp);
    for b in &mut bulk {
        b.check_alive(&pp);
    }
    pp.heal();
    let converge = wait_both_in_sync(&pp, Duration::from_secs(60));
    wait_resyncs(&pp, Alpha, resyncs_before + 1);
    figures.push(format!(
        "corrupting link 4 s: {flipped} bytes flipped, {crc_drops} links dropped by beta on crc mismatch, \
         in sync {} after heal",
        secs(converge)
    ));

    for b in &mut bulk {
        b.stop(&pp);
    }
    w.stop(&pp);
    assert_daemons_up(&pp);
    wait_both_in_sync(&pp, Duration::from_secs(30));
    pp.down_both();
    let data = pp.assert_data_identical();
    let mut checked = w.assert_acked_in("writer", &data);
    for b in &bulk {
        checked += b.assert_acked_in("bulk writer", &data);
    }
    report::scenario(
        "9 hostile peers",
        "garbage, oversized/long/bad-crc/truncated frames, wrong secret, 40 idle sockets: \
         closed with a log line (timeouts within the handshake timeout), daemons up, real link \
         undisturbed or back in sync; a peer that stops reading is dropped and NBD writes \
         complete; a corrupting link is dropped on crc mismatch; disks identical, every acked write present",
        &format!("{}; {checked} blocks checked", figures.join("; ")),
    );
}

// ---------------------------------------------------------------------------
// Scenario 10: restart of both nodes after a clean `down` → no resync at all
// ---------------------------------------------------------------------------

/// Writes for 2 s (ending with a FLUSH when `flush`), `down` of both right away, `up` of both:
/// the pair must reconnect with no resync at all. Returns the report figures.
fn clean_restart(flush: bool) -> String {
    let seed = report::seed();
    let pp = proxied_pair(net());
    let blocks = pp.data_size() / BLOCK;
    let mut w = Writer::start(pp.nbd_addr(Alpha), seed, 1, blocks - 1, Duration::ZERO);
    thread::sleep(Duration::from_secs(2));
    if flush {
        w.stop_flushed(&pp);
    } else {
        w.stop(&pp);
    }
    // `down` at once, the way a cluster manager stops the resource once the application is.
    pp.down_both();
    let data = pp.assert_data_identical();
    let checked = w.assert_acked_in("before restart", &data);

    let logs0 = [pp.log(Alpha).len(), pp.log(Beta).len()];
    let bytes0 = pp.ab.forwarded_total() + pp.ba.forwarded_total();
    let t0 = Instant::now();
    pp.up_both();
    let mut evs = [pp.events(Alpha), pp.events(Beta)];
    pp.wait_connect(Alpha, 30);
    pp.wait_connect(Beta, 30);
    let connected = t0.elapsed();
    // Give a resync, if one were coming, the time to show.
    thread::sleep(Duration::from_secs(3));
    for node in Node::BOTH {
        let s = pp.status(node);
        let p = peer_of(&s);
        assert!(in_sync(&s), "{node} after a clean restart: {s}");
        assert_eq!(s.str_at("role"), "Secondary", "{node}: {s}");
        assert!(
            !p.has("last-resync"),
            "{node} ran a resync after a clean down and up: {p}\n{}",
            pp.logs_tail(20)
        );
        assert_eq!(p.get("resync"), &Json::Null, "{node}: a resync runs: {p}");
    }
    for (i, node) in Node::BOTH.into_iter().enumerate() {
        let log = pp.log(node);
        let new = log.get(logs0[i]..).unwrap_or(&log);
        let bad: Vec<&str> = new
            .lines()
            .filter(|l| {
                let l = l.to_lowercase();
                l.contains("resync") || l.contains("syncsource") || l.contains("synctarget")
            })
            .collect();
        assert!(bad.is_empty(), "{node}'s log after the restart: {bad:?}");
        let ev = evs[i].stop();
        let bad: Vec<&str> = ev
            .lines()
            .filter(|l| {
                l.contains("SyncSource") || l.contains("SyncTarget") || l.contains("StartingSync")
            })
            .collect();
        assert!(bad.is_empty(), "{node}'s events after the restart: {bad:?}");
    }
    let moved = pp.ab.forwarded_total() + pp.ba.forwarded_total() - bytes0;
    assert!(
        moved < MIB,
        "{moved} bytes crossed the link at reconnect: more than a handshake"
    );

    // The pair works: promote alpha, write, in sync, identical.
    pp.adm_ok(Alpha, &["primary", RES]);
    let mut w2 = Writer::start(pp.nbd_addr(Alpha), seed ^ 10, 1, 256, Duration::ZERO);
    thread::sleep(Duration::from_millis(500));
    w2.stop(&pp);
    wait_both_in_sync(&pp, Duration::from_secs(30));
    pp.down_both();
    let data = pp.assert_data_identical();
    w2.assert_acked_in("after restart", &data);
    format!(
        "{} writes ({checked} blocks) before down{}; connected {} after up; {moved} bytes \
         crossed the proxies at reconnect",
        w.acks().len(),
        if flush { " and a FLUSH" } else { "" },
        secs(connected)
    )
}

#[test]
fn s10_clean_restart_no_resync() {
    let figures = clean_restart(true);
    report::scenario(
        "10 clean down of both after the application's last FLUSH, restart",
        "reconnect with 0 out of sync, no SyncSource/SyncTarget in status, events or logs, no \
         last-resync; disks identical",
        &figures,
    );
}

/// The same without the application's last FLUSH: `down` disconnects gracefully (the peer's
/// next barrier covers the writes it acknowledged), so the next start resyncs nothing.
#[test]
fn s10b_clean_restart_no_resync_without_final_flush() {
    let figures = clean_restart(false);
    report::scenario(
        "10b clean down of both right after unflushed writes, restart",
        "reconnect with 0 out of sync, no resync",
        &figures,
    );
}

// ---------------------------------------------------------------------------
// A node's replication address taken by another process
// ---------------------------------------------------------------------------

/// Another process holds a node's replication address when it comes up: `up` must fail with a
/// clear error, or the daemon must say so and retry at connect-interval (not spin), and reach
/// its peer once the address is free.
#[test]
fn replication_address_in_use() {
    let net = net();
    let mut pair = Pair::with_net("C", IMAGE_MIB, net.clone());
    pair.create_md_both();
    let text = pair.config_text(Beta);
    let key = "name = \"beta\"\naddress = \"";
    let i = text.find(key).expect("beta's address") + key.len();
    let addr = &text[i..i + text[i..].find('"').unwrap()];
    let squatter = std::net::TcpListener::bind(addr).expect("bind beta's replication address");
    let o = pair.adm(Beta, &["up", RES]);
    if !o.status.success() {
        let msg = format!("{}{}", o.stdout, o.stderr);
        assert!(
            msg.contains(addr) || msg.to_lowercase().contains("in use"),
            "`up` failed without naming the address in use\n{}",
            o.describe()
        );
        report::scenario(
            "replication address in use",
            "`up` refuses with a clear error",
            o.stderr.lines().next().unwrap_or_default(),
        );
        return;
    }
    let watch = Duration::from_secs(3);
    thread::sleep(watch);
    let lines = pair.log(Beta).matches("in use").count();
    let allowed = (watch.as_millis() as u64 / net.connect_interval_ms + 5) as usize;
    assert!(
        (1..=allowed).contains(&lines),
        "{lines} log lines about the address in use in {watch:?} (want 1..={allowed}): the \
         daemon spins or does not say it\n{}",
        pair.logs_tail(5)
    );
    drop(squatter);
    pair.up(Alpha);
    pair.wait_connect(Beta, 30);
    report::scenario(
        "replication address in use",
        "the daemon says so, retries at connect-interval and connects once the address is free",
        &format!("{lines} log lines in {watch:?}"),
    );
}
