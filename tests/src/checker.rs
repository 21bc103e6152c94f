//! The tagged-block checker: writes uniquely tagged 4 KiB blocks with FUA through a raw NBD
//! client, records what was acknowledged, and reads everything back.
//!
//! Every block written carries a header — magic `URBDTAG1`, block index, writer id, sequence
//! number — then seeded pseudo-random filler, and a crc32 (IEEE) of everything before it in its
//! last 4 bytes. A block read back is therefore one of: all zeroes (never written), a valid
//! version of *this* block by *this* writer (its sequence number says which), or garbage (torn,
//! corrupted, misplaced, another writer's).
//!
//! The checker owns a range of blocks (`first_block .. first_block + blocks`, which must be
//! all zeroes when it starts) and writes there at random, never two requests at once to one
//! block (so "the last acknowledged version" is well defined even with `depth > 1`). Per block
//! it records the last acknowledged sequence number and the versions sent since whose reply
//! never came (the connection died, or an error reply: their outcome is unknown). A write is
//! *acknowledged* only when its reply said success.
//!
//! [`Checker::verify`] then reads every block of the range and accepts, per block, the last
//! acknowledged version or one sent after it and never acknowledged; a block never acknowledged
//! may also still be zero. Older acknowledged data (a lost write), zeroes where a write was
//! acknowledged, or garbage are failures.
//!
//! ```text
//! let ck = Checker::new(1, 0, 2048, seed);
//! let run = ck.spawn(pair.nbd_addr(Alpha), RunOpts { max_writes: 5000, ..RunOpts::default() });
//! ...                                   // kill, cut, restart things
//! let (ck, end) = run.stop_and_join();  // end.reason says why it ended
//! ck.verify(&pair.nbd_addr(Beta)).assert_ok("beta after failover");
//! ```
//!
//! A run tolerates the connection dying at any point (the run ends, what was in flight stays
//! "in flight"); the same checker can run again against another address (after a failover) and
//! its records carry over.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::nbdraw::{
    RawClient, Stream, CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, CMD_WRITE, IHAVEOPT, NBDMAGIC,
    OPT_GO, REP_ACK, REP_INFO,
};
use crate::server::Addr;
use crate::util::Prng;

/// Size of one tagged block.
pub const BLOCK: u64 = 4096;
/// First 8 bytes of every tagged block.
pub const MAGIC: [u8; 8] = *b"URBDTAG1";
/// NBD_CMD_FLAG_FUA.
const FLAG_FUA: u16 = 1 << 0;
/// NBD_FLAG_SEND_FUA (transmission flags).
const TFLAG_SEND_FUA: u16 = 1 << 3;
/// NBD_INFO_EXPORT.
const INFO_EXPORT: u16 = 0;
/// How long one request may wait for its reply before the run gives up on the connection.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// crc32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Version `seq` of `block` by `writer`: header, seeded filler, crc32 in the last 4 bytes.
pub fn tagged_block(block: u64, writer: u64, seq: u64) -> Vec<u8> {
    let seed = block.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ writer.rotate_left(32) ^ seq;
    let mut v = Prng::new(seed).bytes(BLOCK as usize);
    v[0..8].copy_from_slice(&MAGIC);
    v[8..16].copy_from_slice(&block.to_le_bytes());
    v[16..24].copy_from_slice(&writer.to_le_bytes());
    v[24..32].copy_from_slice(&seq.to_le_bytes());
    let sum = crc32(&v[..BLOCK as usize - 4]);
    v[BLOCK as usize - 4..].copy_from_slice(&sum.to_le_bytes());
    v
}

/// What a 4 KiB block read back holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// All zeroes.
    Zero,
    /// A valid tagged block (its own index, checksum right).
    Tagged { writer: u64, seq: u64 },
    /// Anything else, with why.
    Garbage(String),
}

/// Classify the 4 KiB `v` read at block index `block`.
pub fn parse_block(block: u64, v: &[u8]) -> Content {
    assert_eq!(v.len(), BLOCK as usize);
    if v.iter().all(|&b| b == 0) {
        return Content::Zero;
    }
    if v[0..8] != MAGIC {
        return Content::Garbage("neither zeroes nor a tagged block (bad magic)".into());
    }
    let n = BLOCK as usize;
    let sum = u32::from_le_bytes(v[n - 4..].try_into().unwrap());
    if sum != crc32(&v[..n - 4]) {
        return Content::Garbage("torn or corrupted (crc32 mismatch)".into());
    }
    let u = |r: std::ops::Range<usize>| u64::from_le_bytes(v[r].try_into().unwrap());
    let b = u(8..16);
    if b != block {
        return Content::Garbage(format!("holds block {b}'s data (misplaced write)"));
    }
    Content::Tagged {
        writer: u(16..24),
        seq: u(24..32),
    }
}

/// Open an NBD connection and `NBD_OPT_GO` `export`, without panicking: a refused or dead
/// server is an `Err` saying why (a Secondary refusing clients, a killed node...).
pub fn try_connect_go(addr: &Addr, export: &str) -> Result<RawClient, String> {
    let s: Box<dyn Stream> = match addr {
        Addr::Tcp(a) => Box::new(TcpStream::connect(a).map_err(|e| format!("connect {a}: {e}"))?),
        Addr::Unix(p) => {
            Box::new(UnixStream::connect(p).map_err(|e| format!("connect {}: {e}", p.display()))?)
        }
    };
    s.set_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| format!("set timeout: {e}"))?;
    let mut c = RawClient {
        s,
        size: 0,
        transmission_flags: 0,
    };
    let io = |what: &str, e: io::Error| format!("{what}: {e}");
    let magic = c.read_u64().map_err(|e| io("greeting", e))?;
    let opt = c.read_u64().map_err(|e| io("greeting", e))?;
    if magic != NBDMAGIC || opt != IHAVEOPT {
        return Err(format!("bad greeting {magic:#x} {opt:#x}"));
    }
    let _flags = c.read_u16().map_err(|e| io("greeting flags", e))?;
    c.s.write_all(&(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES).to_be_bytes())
        .map_err(|e| io("client flags", e))?;
    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    c.send_option_with_magic(IHAVEOPT, OPT_GO, &d)
        .map_err(|e| io("NBD_OPT_GO", e))?;
    loop {
        let r = c.read_opt_reply().map_err(|e| io("NBD_OPT_GO reply", e))?;
        match r.typ {
            REP_INFO if r.data.len() == 12 => {
                if u16::from_be_bytes([r.data[0], r.data[1]]) == INFO_EXPORT {
                    c.size = u64::from_be_bytes(r.data[2..10].try_into().unwrap());
                    c.transmission_flags = u16::from_be_bytes([r.data[10], r.data[11]]);
                }
            }
            REP_INFO => {}
            REP_ACK => return Ok(c),
            t => {
                return Err(format!(
                    "NBD_OPT_GO refused (reply {t:#x}): {}",
                    String::from_utf8_lossy(r.data.get(4..).unwrap_or_default())
                ))
            }
        }
    }
}

/// How one run of writes goes.
#[derive(Clone, Debug)]
pub struct RunOpts {
    /// Stop after this many writes sent.
    pub max_writes: u64,
    /// Requests in flight at once (never two on one block).
    pub depth: usize,
    /// Stop at the first error reply (else count it and go on; its write stays "in flight").
    pub stop_on_error: bool,
    /// Stop after this long whatever else happens.
    pub max_time: Duration,
    /// Pause between writes (0: as fast as the server answers).
    pub pause: Duration,
}

impl Default for RunOpts {
    fn default() -> Self {
        RunOpts {
            max_writes: 10_000,
            depth: 4,
            stop_on_error: false,
            max_time: Duration::from_secs(120),
            pause: Duration::ZERO,
        }
    }
}

/// Why a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The stop flag was raised.
    Stopped,
    /// `max_writes` sent and answered.
    Limit,
    /// `max_time` passed.
    Timeout,
    /// The connection could not be opened, or failed (EOF, reset, timeout) — the writes
    /// without a reply stay in flight.
    Connection(String),
    /// An error reply with `stop_on_error`.
    ErrorReply(String),
    /// The server broke the protocol (unknown cookie, bad reply magic).
    Protocol(String),
}

impl EndReason {
    /// Ended by the connection going away (what a node kill looks like to a client).
    pub fn is_connection(&self) -> bool {
        matches!(self, EndReason::Connection(_))
    }
}

/// What one run did.
#[derive(Clone, Debug)]
pub struct RunEnd {
    pub reason: EndReason,
    /// Writes sent in this run.
    pub sent: u64,
    /// Of those, acknowledged.
    pub acked: u64,
    /// Error replies (`errno`s) in this run.
    pub errors: Vec<u32>,
    /// Writes whose reply never came in this run.
    pub unanswered: u64,
    /// The blocks written (sent) in this run.
    pub blocks: BTreeSet<u64>,
    pub elapsed: Duration,
}

impl RunEnd {
    /// Bytes of the distinct 4 KiB blocks written in this run.
    pub fn block_bytes(&self) -> u64 {
        self.blocks.len() as u64 * BLOCK
    }
}

impl fmt::Display for RunEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent, {} acked, {} error replies, {} unanswered in {:.1} s; ended: {:?}",
            self.sent,
            self.acked,
            self.errors.len(),
            self.unanswered,
            self.elapsed.as_secs_f64(),
            self.reason
        )
    }
}

/// The tagged-block writer and its records (see the module docs).
#[derive(Clone)]
pub struct Checker {
    /// Writer id, in every block header (two checkers never accept each other's data).
    pub writer: u64,
    pub first_block: u64,
    pub blocks: u64,
    rng: Prng,
    next_seq: u64,
    /// block → last acknowledged sequence number.
    acked: BTreeMap<u64, u64>,
    /// block → sequence numbers sent after its last ack and never acknowledged.
    inflight: BTreeMap<u64, Vec<u64>>,
    /// Writes acknowledged over all runs.
    pub total_acked: u64,
    /// Writes sent over all runs.
    pub total_sent: u64,
    /// Error replies over all runs.
    pub total_errors: u64,
}

impl Checker {
    /// A checker writing blocks `first_block .. first_block + blocks` (all zero at the start).
    pub fn new(writer: u64, first_block: u64, blocks: u64, seed: u64) -> Checker {
        assert!(blocks > 0);
        Checker {
            writer,
            first_block,
            blocks,
            rng: Prng::new(seed ^ writer.wrapping_mul(0xA24B_AED4_963E_E407)),
            next_seq: 1,
            acked: BTreeMap::new(),
            inflight: BTreeMap::new(),
            total_acked: 0,
            total_sent: 0,
            total_errors: 0,
        }
    }

    /// Byte range `[start, end)` the checker writes in.
    pub fn byte_range(&self) -> (u64, u64) {
        (
            self.first_block * BLOCK,
            (self.first_block + self.blocks) * BLOCK,
        )
    }

    /// Blocks with at least one acknowledged write.
    pub fn acked_blocks(&self) -> usize {
        self.acked.len()
    }

    /// Blocks with a version sent after their last ack and never acknowledged.
    pub fn inflight_blocks(&self) -> usize {
        self.inflight.values().filter(|v| !v.is_empty()).count()
    }

    /// The last acknowledged sequence number of `block`.
    pub fn last_acked(&self, block: u64) -> Option<u64> {
        self.acked.get(&block).copied()
    }

    fn pick_block(&mut self, busy: &HashMap<u64, ()>) -> u64 {
        loop {
            let b = self.first_block + self.rng.next_u64() % self.blocks;
            if !busy.contains_key(&b) {
                return b;
            }
        }
    }

    /// Writes against `addr` until `opts` or `stop` end it (see [`EndReason`]); `progress`
    /// counts acknowledged writes as they come (for a test waiting for "load is going").
    pub fn run(
        &mut self,
        addr: &Addr,
        export: &str,
        opts: &RunOpts,
        stop: &AtomicBool,
        progress: &AtomicU64,
    ) -> RunEnd {
        let started = Instant::now();
        let mut end = RunEnd {
            reason: EndReason::Limit,
            sent: 0,
            acked: 0,
            errors: Vec::new(),
            unanswered: 0,
            blocks: BTreeSet::new(),
            elapsed: Duration::ZERO,
        };
        let depth = opts.depth.clamp(1, (self.blocks as usize).clamp(1, 64));
        let mut c = match try_connect_go(addr, export) {
            Ok(c) => c,
            Err(e) => {
                end.reason = EndReason::Connection(e);
                return end;
            }
        };
        assert_ne!(
            c.transmission_flags & TFLAG_SEND_FUA,
            0,
            "the server does not offer FUA (flags {:#x})",
            c.transmission_flags
        );
        assert!(
            (self.first_block + self.blocks) * BLOCK <= c.size,
            "checker range beyond the export ({} bytes)",
            c.size
        );
        // cookie (= seq) → block, for the requests without a reply yet.
        let mut window: HashMap<u64, u64> = HashMap::new();
        let mut busy: HashMap<u64, ()> = HashMap::new();
        let mut stopping: Option<EndReason> = None;
        loop {
            if stopping.is_none() {
                if stop.load(Ordering::Relaxed) {
                    stopping = Some(EndReason::Stopped);
                } else if started.elapsed() > opts.max_time {
                    stopping = Some(EndReason::Timeout);
                } else if end.sent >= opts.max_writes {
                    stopping = Some(EndReason::Limit);
                }
            }
            // Fill the window.
            while stopping.is_none() && window.len() < depth && end.sent < opts.max_writes {
                let block = self.pick_block(&busy);
                let seq = self.next_seq;
                self.next_seq += 1;
                let data = tagged_block(block, self.writer, seq);
                // Recorded before it leaves: from now on the block may show it.
                self.inflight.entry(block).or_default().push(seq);
                window.insert(seq, block);
                busy.insert(block, ());
                end.blocks.insert(block);
                end.sent += 1;
                self.total_sent += 1;
                if let Err(e) =
                    c.send_request(FLAG_FUA, CMD_WRITE, seq, block * BLOCK, BLOCK as u32, &data)
                {
                    stopping = Some(EndReason::Connection(format!("send: {e}")));
                    end.unanswered = window.len() as u64;
                    break;
                }
            }
            if matches!(stopping, Some(EndReason::Connection(_))) || window.is_empty() {
                break;
            }
            match c.read_simple_reply() {
                Err(e) => {
                    stopping = Some(EndReason::Connection(format!("reply: {e}")));
                    end.unanswered = window.len() as u64;
                    break;
                }
                Ok(r) => {
                    let Some(block) = window.remove(&r.cookie) else {
                        stopping = Some(EndReason::Protocol(format!(
                            "reply with unknown cookie {:#x}",
                            r.cookie
                        )));
                        end.unanswered = window.len() as u64;
                        break;
                    };
                    busy.remove(&block);
                    let seq = r.cookie;
                    if r.error == 0 {
                        self.acked.insert(block, seq);
                        if let Some(v) = self.inflight.get_mut(&block) {
                            v.retain(|&s| s > seq);
                            if v.is_empty() {
                                self.inflight.remove(&block);
                            }
                        }
                        end.acked += 1;
                        self.total_acked += 1;
                        progress.fetch_add(1, Ordering::Relaxed);
                    } else {
                        // Outcome unknown: it stays among the versions the block may show.
                        end.errors.push(r.error);
                        self.total_errors += 1;
                        if opts.stop_on_error && stopping.is_none() {
                            stopping = Some(EndReason::ErrorReply(format!(
                                "errno {} for the write of block {block}",
                                r.error
                            )));
                        }
                    }
                }
            }
            if !opts.pause.is_zero() && stopping.is_none() {
                thread::sleep(opts.pause);
            }
        }
        if stopping.as_ref().is_some_and(|r| !r.is_connection()) {
            c.disconnect();
        }
        end.reason = stopping.unwrap_or(EndReason::Limit);
        end.elapsed = started.elapsed();
        end
    }

    /// [`Checker::run`] in a background thread; the checker comes back from
    /// [`Running::join`] with its records.
    pub fn spawn(self, addr: Addr, opts: RunOpts) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), progress.clone());
        let handle = thread::spawn(move || {
            let mut ck = self;
            let end = ck.run(&addr, crate::pair::RES, &opts, &s, &p);
            (ck, end)
        });
        Running {
            stop,
            progress,
            handle: Some(handle),
        }
    }

    /// Check the blocks of the range as `read(offset, len)` returns them (`len` a multiple of
    /// 4 KiB, at most 256 KiB).
    pub fn verify_with(&self, mut read: impl FnMut(u64, usize) -> Vec<u8>) -> Verification {
        let mut v = Verification::default();
        let chunk = 64u64;
        let mut b = self.first_block;
        let end = self.first_block + self.blocks;
        while b < end {
            let n = chunk.min(end - b);
            let data = read(b * BLOCK, (n * BLOCK) as usize);
            assert_eq!(data.len() as u64, n * BLOCK, "short read");
            for (i, blk) in data.chunks(BLOCK as usize).enumerate() {
                self.check_block(b + i as u64, blk, &mut v);
            }
            b += n;
        }
        v
    }

    fn check_block(&self, block: u64, data: &[u8], v: &mut Verification) {
        v.checked += 1;
        let acked = self.acked.get(&block).copied();
        let inflight: &[u64] = self.inflight.get(&block).map_or(&[], |x| x.as_slice());
        let got = parse_block(block, data);
        let problem = match &got {
            Content::Garbage(why) => Some(why.clone()),
            Content::Zero => match acked {
                None => {
                    v.zero += 1;
                    None
                }
                Some(a) => Some(format!("zeroes, but seq {a} was acknowledged")),
            },
            Content::Tagged { writer, .. } if *writer != self.writer => Some(format!(
                "writer {writer}'s data, not writer {}'s",
                self.writer
            )),
            Content::Tagged { seq, .. } => {
                if Some(*seq) == acked {
                    v.last_acked += 1;
                    None
                } else if inflight.contains(seq) {
                    v.inflight_seen += 1;
                    None
                } else if acked.is_some_and(|a| *seq < a) {
                    Some(format!(
                        "older data: seq {seq}, but seq {} was acknowledged after it",
                        acked.unwrap()
                    ))
                } else {
                    Some(format!("seq {seq} was never written here"))
                }
            }
        };
        if let Some(p) = problem {
            v.failures.push(format!(
                "block {block} (offset {}): {p} (last acked {acked:?}, in flight {inflight:?})",
                block * BLOCK
            ));
        }
    }

    /// Read the range back through an NBD export (panics if it cannot be read).
    pub fn verify(&self, addr: &Addr) -> Verification {
        let mut c = try_connect_go(addr, crate::pair::RES)
            .unwrap_or_else(|e| panic!("checker verify: cannot open the export: {e}"));
        let mut cookie = 0u64;
        let v = self.verify_with(|off, len| {
            cookie += 1;
            c.read(cookie, off, len as u32)
                .unwrap_or_else(|e| panic!("checker verify: READ at {off} failed: errno {e}"))
        });
        c.disconnect();
        v
    }

    /// Check a data-region image (e.g. [`crate::pair::Pair::data_region`] of a node that is
    /// down, or a backing file read directly).
    pub fn verify_image(&self, image: &[u8]) -> Verification {
        self.verify_with(|off, len| image[off as usize..off as usize + len].to_vec())
    }
}

/// A checker running in a background thread.
pub struct Running {
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
    handle: Option<JoinHandle<(Checker, RunEnd)>>,
}

impl Running {
    /// Writes acknowledged so far in this run.
    pub fn acked(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Wait until at least `n` writes are acknowledged in this run (false after `timeout`, or
    /// if the run ended before).
    pub fn wait_acked(&self, n: u64, timeout: Duration) -> bool {
        crate::tools::wait_until(timeout, || {
            self.acked() >= n || self.handle.as_ref().is_none_or(|h| h.is_finished())
        }) && self.acked() >= n
    }

    /// The run ended (by itself: limit, connection, error).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Wait for the run to end by itself.
    pub fn join(mut self) -> (Checker, RunEnd) {
        self.handle
            .take()
            .expect("joined twice")
            .join()
            .expect("checker thread panicked")
    }

    /// Raise the stop flag and wait for the run to end (the writes in flight are answered
    /// first, if the server still answers).
    pub fn stop_and_join(self) -> (Checker, RunEnd) {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What [`Checker::verify`] found.
#[derive(Clone, Debug, Default)]
pub struct Verification {
    /// Blocks read.
    pub checked: u64,
    /// Blocks showing their last acknowledged version.
    pub last_acked: u64,
    /// Blocks showing a version sent after the last ack and never acknowledged.
    pub inflight_seen: u64,
    /// Blocks never acknowledged and still zero.
    pub zero: u64,
    /// One line per bad block.
    pub failures: Vec<String>,
}

impl Verification {
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Panics with the first failures when any block is wrong.
    #[track_caller]
    pub fn assert_ok(&self, what: &str) {
        assert!(
            self.failures.is_empty(),
            "checker ({what}): {} of {} blocks wrong:\n{}",
            self.failures.len(),
            self.checked,
            self.failures
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} blocks checked: {} last acked, {} in-flight version, {} zero, {} wrong",
            self.checked,
            self.last_acked,
            self.inflight_seen,
            self.zero,
            self.failures.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn blocks_parse_back() {
        let v = tagged_block(17, 3, 99);
        assert_eq!(parse_block(17, &v), Content::Tagged { writer: 3, seq: 99 });
        assert!(matches!(parse_block(18, &v), Content::Garbage(_)));
        let mut torn = v.clone();
        torn[2000..].copy_from_slice(&tagged_block(17, 3, 100)[2000..]);
        assert!(matches!(parse_block(17, &torn), Content::Garbage(_)));
        assert_eq!(parse_block(0, &[0u8; 4096]), Content::Zero);
        assert_ne!(
            tagged_block(17, 3, 99)[40..],
            tagged_block(17, 3, 100)[40..]
        );
    }

    #[test]
    fn verification_rules() {
        let mut ck = Checker::new(1, 10, 4, 7);
        // block 10: acked 5, then 8 in flight; block 11: only in flight 6; 12: acked 7.
        ck.acked.insert(10, 5);
        ck.inflight.insert(10, vec![8]);
        ck.inflight.insert(11, vec![6]);
        ck.acked.insert(12, 7);
        let img = |blocks: [Vec<u8>; 4]| {
            let mut v = vec![0u8; 14 * 4096];
            for (i, b) in blocks.iter().enumerate() {
                v[(10 + i) * 4096..(11 + i) * 4096].copy_from_slice(b);
            }
            v
        };
        let z = vec![0u8; 4096];
        let good = img([
            tagged_block(10, 1, 8),
            z.clone(),
            tagged_block(12, 1, 7),
            z.clone(),
        ]);
        let r = ck.verify_image(&good);
        assert!(r.is_ok(), "{:?}", r.failures);
        assert_eq!((r.last_acked, r.inflight_seen, r.zero), (1, 1, 2));
        let good2 = img([
            tagged_block(10, 1, 5),
            tagged_block(11, 1, 6),
            tagged_block(12, 1, 7),
            z.clone(),
        ]);
        assert!(ck.verify_image(&good2).is_ok());
        // Older acked data, zeroes after an ack, another writer, garbage: all caught.
        let bad = img([
            tagged_block(10, 1, 4),
            tagged_block(11, 2, 6),
            z.clone(),
            vec![0xAB; 4096],
        ]);
        let r = ck.verify_image(&bad);
        assert_eq!(r.failures.len(), 4, "{:?}", r.failures);
    }
}
