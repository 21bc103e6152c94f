//! The real Linux kernel NBD client (nbd.ko + Debian's nbd-client) on /dev/nbdX, in a stock
//! Debian 12 kernel booted under qemu-system-x86_64 (TCG). The guest reaches our servers,
//! which listen on 127.0.0.1 only, as 10.0.2.2 through qemu's user networking.
//!
//! - `serve_plain_multiconn_bs4096`: one boot, three variants in sequence against three
//!   `urbd serve` processes: plain, `nbd-client -C 4`, `nbd-client -b 4096`. In the guest:
//!   mkfs.ext4, mount, write, sync, fstrim, umount, drop caches, remount, verify. Between the
//!   guest and each server sits a recording forwarder that parses the requests the kernel
//!   sends (sizes, FLUSH, FUA, TRIM, connections); on the host: `e2fsck -fn` of each backing
//!   file and its files compared with what the guest wrote.
//! - `failover_pair`: a replicated pair (protocol C); the guest's nbd-client (persist mode)
//!   reaches the Primary through a "virtual IP" (the forwarder); ext4 mounted and a writer
//!   writing + syncing; the Primary is SIGKILLed, the Secondary promoted, the virtual IP moved.
//!   The guest recovers as a cluster would, every file synced before the kill is verified in
//!   the guest and on the survivor's disk (`e2fsck -fn` clean), and the outage is reported.
//!
//! The guest is a test fixture built from Debian packages at test time by
//! `tests/kernel/build-fixture.sh` (cached in `target/kernel-fixture/`); its /init is
//! `tests/kernel/guest-init.sh`. Needs root and Debian's package registry on the first run;
//! prints `SKIPPED: ...` when the guest cannot be built. Env: `URBD_KERNEL_FIXTURE` (cache dir),
//! `URBD_KERNEL_TIMEOUT_S` (per boot, default 420).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use urbd_tests::pair::{Alpha, Beta, Pair, RES};
use urbd_tests::server::Addr;
use urbd_tests::tools::wait_timeout;
use urbd_tests::{make_sparse_disk, Cmd, Server, TempDir};

/// One kernel test at a time: each boots a guest that wants both cores.
static KERNEL_LOCK: Mutex<()> = Mutex::new(());

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn boot_timeout() -> Duration {
    let s = std::env::var("URBD_KERNEL_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(420);
    Duration::from_secs(s)
}

// ---------------------------------------------------------------------------
// The fixture: kernel, initramfs, qemu (tests/kernel/build-fixture.sh)
// ---------------------------------------------------------------------------

struct Fixture {
    qemu: PathBuf,
    module_dir: String,
    data_dirs: Vec<String>,
    vmlinuz: PathBuf,
    initrd: PathBuf,
    kver: String,
}

/// Builds (or reuses) the guest; None (after a SKIPPED line) when it cannot be built here.
fn fixture(test: &str) -> Option<Fixture> {
    let script = workspace().join("tests/kernel/build-fixture.sh");
    let dir = std::env::var("URBD_KERNEL_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target/kernel-fixture"));
    let t0 = Instant::now();
    // The first run downloads ~100 MB of Debian packages.
    let o = Cmd::new("bash")
        .arg(&script)
        .arg(&dir)
        .timeout(Duration::from_secs(1200))
        .output();
    if o.status.code() == Some(77) {
        println!("{} ({test})", o.stdout.trim());
        return None;
    }
    assert!(
        o.status.success(),
        "build-fixture.sh failed\n{}",
        o.describe()
    );
    eprintln!(
        "kernel fixture ready in {:.1} s\n{}",
        t0.elapsed().as_secs_f64(),
        o.stderr.trim()
    );
    let env = fs::read_to_string(dir.join("fixture.env")).expect("fixture.env");
    let kv: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| -> String {
        kv.get(k)
            .unwrap_or_else(|| panic!("fixture.env has no {k}:\n{env}"))
            .to_string()
    };
    Some(Fixture {
        qemu: get("QEMU").into(),
        module_dir: get("QEMU_MODULE_DIR"),
        data_dirs: get("QEMU_DATA_DIRS")
            .split(':')
            .map(str::to_string)
            .collect(),
        vmlinuz: get("VMLINUZ").into(),
        initrd: get("INITRD").into(),
        kver: get("KVER"),
    })
}

// ---------------------------------------------------------------------------
// The guest
// ---------------------------------------------------------------------------

/// A running qemu; killed (and reaped) on drop.
struct Guest {
    child: Option<Child>,
    console: PathBuf,
    booted: Instant,
    timeout: Duration,
}

impl Guest {
    /// Boots the fixture with `urbd.*` parameters for guest-init.sh; the serial console goes
    /// to `console`.
    fn boot(fx: &Fixture, params: &str, console: &Path) -> Guest {
        let mut cmd = Command::new(&fx.qemu);
        for d in &fx.data_dirs {
            cmd.arg("-L").arg(d);
        }
        cmd.args([
            "-machine",
            "pc,accel=tcg",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "512",
        ])
        .args(["-nographic", "-vga", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&fx.vmlinuz)
        .arg("-initrd")
        .arg(&fx.initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=1 loglevel=4 {params}"))
        // User networking only: the guest sees the host's 127.0.0.1 as 10.0.2.2.
        .args(["-netdev", "user,id=n0"])
        .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
        .env("QEMU_MODULE_DIR", &fx.module_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(fs::File::create(console).unwrap()))
        .stderr(Stdio::from(
            fs::File::create(console.with_extension("stderr")).unwrap(),
        ));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", fx.qemu.display()));
        eprintln!(
            "booted kernel {} (console: {}) with {params}",
            fx.kver,
            console.display()
        );
        Guest {
            child: Some(child),
            console: console.to_path_buf(),
            booted: Instant::now(),
            timeout: boot_timeout(),
        }
    }

    fn console_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// The guest's result lines ("KT: ..." without the prefix).
    fn kt_lines(&self) -> Vec<String> {
        self.console_text()
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix("KT: "))
            .map(str::to_string)
            .collect()
    }

    fn console_tail(&self) -> String {
        let text = self.console_text();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- last 60 console lines ({}) ---\n{}\n--- end console ---",
            self.console.display(),
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }

    fn deadline(&self) -> Instant {
        self.booted + self.timeout
    }

    /// Waits until a KT line satisfies `pred` (returns it); panics if the guest ends first or
    /// the boot's time limit passes.
    #[track_caller]
    fn wait_kt(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        loop {
            if let Some(l) = self.kt_lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            if let Some(l) = self
                .kt_lines()
                .into_iter()
                .find(|l| l.starts_with("RESULT"))
            {
                panic!(
                    "guest finished ({l}) before {what}\n{}",
                    self.console_tail()
                );
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(st) = exited {
                panic!("qemu exited ({st}) before {what}\n{}", self.console_tail());
            }
            if Instant::now() >= self.deadline() {
                panic!(
                    "guest: no {what} within {:?} of boot\n{}",
                    self.timeout,
                    self.console_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for qemu to power off (bounded); returns the guest's RESULT line.
    #[track_caller]
    fn wait_result(&mut self) -> (String, ExitStatus) {
        let left = self.deadline().saturating_duration_since(Instant::now());
        let child = self.child.as_mut().expect("qemu already reaped");
        let st = wait_timeout(child, left);
        let Some(st) = st else {
            panic!(
                "guest did not finish within {:?} of boot\n{}",
                self.timeout,
                self.console_tail()
            );
        };
        self.child = None;
        let result = self
            .kt_lines()
            .into_iter()
            .find(|l| l.starts_with("RESULT"))
            .unwrap_or_else(|| {
                panic!(
                    "qemu exited ({st}) without a RESULT\n{}",
                    self.console_tail()
                )
            });
        (result, st)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.console_tail());
        }
    }
}

// ---------------------------------------------------------------------------
// The forwarder: "virtual IP" and request recorder
// ---------------------------------------------------------------------------

const REQUEST_MAGIC: u32 = 0x2560_9513;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const CMD_NAMES: [&str; 8] = [
    "READ",
    "WRITE",
    "DISC",
    "FLUSH",
    "TRIM",
    "CACHE",
    "WRITE_ZEROES",
    "BLOCK_STATUS",
];
const FLAG_FUA: u16 = 1;

/// What one client connection sent (client to server direction only).
#[derive(Clone, Debug, Default)]
struct ConnStats {
    target: Option<SocketAddr>,
    /// Requests per command type (index = NBD_CMD_*).
    count: [u64; 8],
    /// Largest and smallest length per command type.
    len_max: [u32; 8],
    len_min: [u32; 8],
    /// Length histogram of READ and WRITE (power-of-two buckets, bytes).
    sizes: BTreeMap<u32, u64>,
    fua: u64,
    bytes_written: u64,
    /// READ/WRITE/TRIM/WRITE_ZEROES whose offset or length is not a multiple of 4096.
    unaligned_4k: u64,
    /// Set if the byte stream was not what the NBD protocol says (parsing then stops).
    parse_error: Option<String>,
}

impl ConnStats {
    fn requests(&self) -> u64 {
        self.count.iter().sum()
    }

    fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (i, name) in CMD_NAMES.iter().enumerate() {
            if self.count[i] > 0 {
                if matches!(i, 0 | 1 | 4 | 6) {
                    parts.push(format!(
                        "{name} {} ({}..{} B)",
                        self.count[i], self.len_min[i], self.len_max[i]
                    ));
                } else {
                    parts.push(format!("{name} {}", self.count[i]));
                }
            }
        }
        parts.push(format!("FUA {}", self.fua));
        parts.join(", ")
    }
}

/// Parses the client's half of an NBD connection: handshake options, then requests.
struct Recorder {
    stats: Arc<Mutex<Vec<ConnStats>>>,
    idx: usize,
    buf: Vec<u8>,
    skip: u64,
    flags_done: bool,
    dead: bool,
}

impl Recorder {
    fn need(&self) -> usize {
        if !self.flags_done || self.buf.len() < 4 {
            4
        } else if u32::from_be_bytes(self.buf[..4].try_into().unwrap()) == REQUEST_MAGIC {
            28
        } else {
            16
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !self.dead && !data.is_empty() {
            if self.skip > 0 {
                // A write's payload or an option's data.
                let n = self.skip.min(data.len() as u64) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            // First up to 4 bytes (the client flags, or a magic), then the whole header.
            let need = self.need();
            let take = (need - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < need {
                return; // all of `data` is buffered
            }
            if self.buf.len() == 4 && self.flags_done {
                continue; // the magic is known: need() now says 16 or 28
            }
            self.header();
        }
    }

    fn header(&mut self) {
        let b = std::mem::take(&mut self.buf);
        let mut st = self.stats.lock().unwrap();
        let st = &mut st[self.idx];
        if !self.flags_done {
            self.flags_done = true; // the client's 32-bit handshake flags
            return;
        }
        if b.len() == 16 {
            let magic = u64::from_be_bytes(b[..8].try_into().unwrap());
            if magic != IHAVEOPT {
                st.parse_error = Some(format!("neither an option nor a request: {b:02x?}"));
                self.dead = true;
                return;
            }
            self.skip = u64::from(u32::from_be_bytes(b[12..16].try_into().unwrap()));
            return;
        }
        let flags = u16::from_be_bytes(b[4..6].try_into().unwrap());
        let ty = usize::from(u16::from_be_bytes(b[6..8].try_into().unwrap()));
        let offset = u64::from_be_bytes(b[16..24].try_into().unwrap());
        let len = u32::from_be_bytes(b[24..28].try_into().unwrap());
        if ty >= CMD_NAMES.len() {
            st.parse_error = Some(format!("unknown command type {ty}"));
            self.dead = true;
            return;
        }
        st.count[ty] += 1;
        st.len_max[ty] = st.len_max[ty].max(len);
        st.len_min[ty] = if st.count[ty] == 1 {
            len
        } else {
            st.len_min[ty].min(len)
        };
        if flags & FLAG_FUA != 0 {
            st.fua += 1;
        }
        if matches!(ty, 0 | 1 | 4 | 6) && (offset % 4096 != 0 || u64::from(len) % 4096 != 0) {
            st.unaligned_4k += 1;
        }
        if matches!(ty, 0 | 1) {
            *st.sizes.entry(len.next_power_of_two()).or_default() += 1;
        }
        if ty == 1 {
            st.bytes_written += u64::from(len);
            self.skip = u64::from(len);
        }
    }
}

struct FwdShared {
    target: Mutex<Option<SocketAddr>>,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    stats: Arc<Mutex<Vec<ConnStats>>>,
}

/// A TCP forwarder on 127.0.0.1 that plays the virtual IP: while it has a target it accepts
/// connections and relays them there; without one it accepts nothing (connections wait in
/// the backlog, as SYNs to an unassigned address are retried). Records each connection's
/// requests.
struct Forwarder {
    port: u16,
    shared: Arc<FwdShared>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    fn start(target: Option<SocketAddr>) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(FwdShared {
            target: Mutex::new(target),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            stats: Arc::new(Mutex::new(Vec::new())),
        });
        let sh = shared.clone();
        let thread = thread::spawn(move || {
            while !sh.stop.load(Ordering::SeqCst) {
                let target = *sh.target.lock().unwrap();
                let Some(target) = target else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                match listener.accept() {
                    Ok((down, _)) => relay(&sh, down, target),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("forwarder accept: {e}"),
                }
            }
        });
        Forwarder {
            port,
            shared,
            thread: Some(thread),
        }
    }

    /// Points the virtual IP elsewhere (None: nowhere); connections to the old place are cut.
    fn move_to(&self, target: Option<SocketAddr>) {
        *self.shared.target.lock().unwrap() = target;
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn stats(&self) -> Vec<ConnStats> {
        self.shared.stats.lock().unwrap().clone()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.move_to(None);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(sh: &Arc<FwdShared>, down: TcpStream, target: SocketAddr) {
    down.set_nonblocking(false).unwrap();
    let Ok(up) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        eprintln!("forwarder: cannot reach {target}; dropping the client");
        return;
    };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let idx = {
        let mut st = sh.stats.lock().unwrap();
        st.push(ConnStats {
            target: Some(target),
            ..ConnStats::default()
        });
        st.len() - 1
    };
    {
        let mut conns = sh.conns.lock().unwrap();
        conns.push(down.try_clone().unwrap());
        conns.push(up.try_clone().unwrap());
    }
    let mut rec = Recorder {
        stats: sh.stats.clone(),
        idx,
        buf: Vec::new(),
        skip: 0,
        flags_done: false,
        dead: false,
    };
    let (mut d1, mut u1) = (down.try_clone().unwrap(), up.try_clone().unwrap());
    thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match d1.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    rec.feed(&buf[..n]);
                    if u1.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = d1.shutdown(Shutdown::Both);
        let _ = u1.shutdown(Shutdown::Both);
    });
    let (mut d2, mut u2) = (down, up);
    thread::spawn(move || {
        let _ = std::io::copy(&mut u2, &mut d2);
        let _ = d2.shutdown(Shutdown::Both);
        let _ = u2.shutdown(Shutdown::Both);
    });
}

/// Answers every HTTP request on 127.0.0.1 with the current state word (the guest polls it).
struct Control {
    port: u16,
    state: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Control {
    fn start() -> Control {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind control");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new("go".to_string()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut req = [0u8; 2048];
                        let _ = c.read(&mut req);
                        let body = st.lock().unwrap().clone();
                        let _ = write!(
                            c,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Control {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, s: &str) {
        *self.state.lock().unwrap() = s.to_string();
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Host-side checks
// ---------------------------------------------------------------------------

/// `e2fsck -fn IMAGE` must report a clean filesystem.
#[track_caller]
fn assert_fsck_clean(image: &Path) {
    let o = Cmd::new("e2fsck")
        .args(["-f", "-n"])
        .arg(image)
        .timeout(Duration::from_secs(120))
        .output();
    assert!(
        o.status.success(),
        "e2fsck -fn {} is not clean\n{}",
        image.display(),
        o.describe()
    );
}

/// Copies files out of an ext4 image with one debugfs run; returns their contents.
fn debugfs_dump(image: &Path, files: &[String], scratch: &Path) -> BTreeMap<String, Vec<u8>> {
    let out = scratch.join("dump");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    let mut script = String::new();
    for (i, f) in files.iter().enumerate() {
        script.push_str(&format!("dump {f} {}\n", out.join(i.to_string()).display()));
    }
    let cmds = scratch.join("debugfs.cmds");
    fs::write(&cmds, script).unwrap();
    Cmd::new("debugfs")
        .arg("-f")
        .arg(&cmds)
        .arg(image)
        .timeout(Duration::from_secs(120))
        .ok();
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let data = fs::read(out.join(i.to_string()))
                .unwrap_or_else(|e| panic!("{f} missing in {}: {e}", image.display()));
            (f.clone(), data)
        })
        .collect()
}

fn sha256_hex(path_or_data: &[u8], scratch: &Path) -> String {
    let p = scratch.join("sha-input");
    fs::write(&p, path_or_data).unwrap();
    let o = Cmd::new("sha256sum").arg(&p).ok();
    o.stdout.split_whitespace().next().unwrap().to_string()
}

/// What guest-init.sh writes in small/fN for a variant.
fn small_text(variant: &str, n: usize) -> String {
    (0..n * 7 + 1)
        .map(|i| format!("urbd kernel test {variant}/{n} line {i}\n"))
        .collect()
}

/// `key=value` from a KT line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn tcp(addr: &Addr) -> SocketAddr {
    match addr {
        Addr::Tcp(a) => *a,
        Addr::Unix(p) => panic!("want a TCP server, got {}", p.display()),
    }
}

// ---------------------------------------------------------------------------
// Part 1: urbd serve, three variants
// ---------------------------------------------------------------------------

const VARIANTS: [&str; 3] = ["plain", "multiconn", "bs4096"];

#[test]
fn serve_plain_multiconn_bs4096() {
    let _serial = KERNEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fx) = fixture("serve_plain_multiconn_bs4096") else {
        return;
    };
    let t_start = Instant::now();
    let dir = TempDir::new("kernel-serve");
    let mut servers = Vec::new();
    let mut fwds = Vec::new();
    for v in VARIANTS {
        let disk = dir.join(&format!("{v}.img"));
        make_sparse_disk(&disk, 256);
        let s = Server::start(&disk, &[]);
        fwds.push(Forwarder::start(Some(tcp(s.addr()))));
        servers.push(s);
    }
    let ports: Vec<String> = fwds.iter().map(|f| f.port.to_string()).collect();
    let params = format!(
        "urbd.mode=serve urbd.ports={} urbd.export={}",
        ports.join(","),
        servers[0].export()
    );
    let mut guest = Guest::boot(&fx, &params, &dir.join("console.log"));
    let (result, st) = guest.wait_result();
    let guest_s = guest.booted.elapsed().as_secs_f64();
    assert_eq!(
        result,
        "RESULT PASS",
        "guest failed\n{}",
        guest.console_tail()
    );
    assert!(st.success(), "qemu exited with {st}");
    let kt = guest.kt_lines();

    let mut report = Vec::new();
    for (i, v) in VARIANTS.iter().enumerate() {
        let line = kt
            .iter()
            .find(|l| l.starts_with(&format!("VARIANT {v} PASS")))
            .unwrap_or_else(|| panic!("no VARIANT {v} PASS line\n{}", guest.console_tail()));
        let data_sha = field(line, "data_sha").unwrap().to_string();
        let info = kt
            .iter()
            .find(|l| l.starts_with(&format!("INFO {v}: /dev/")))
            .cloned()
            .unwrap_or_default();

        // What reached us, per connection.
        let stats = fwds[i].stats();
        for (c, s) in stats.iter().enumerate() {
            assert!(s.parse_error.is_none(), "{v} conn {c}: {:?}", s.parse_error);
        }
        let used: Vec<&ConnStats> = stats.iter().filter(|s| s.requests() > 0).collect();
        let mut total = ConnStats::default();
        for s in &stats {
            for t in 0..8 {
                if s.count[t] > 0 {
                    total.len_min[t] = if total.count[t] == 0 {
                        s.len_min[t]
                    } else {
                        total.len_min[t].min(s.len_min[t])
                    };
                }
                total.count[t] += s.count[t];
                total.len_max[t] = total.len_max[t].max(s.len_max[t]);
            }
            total.fua += s.fua;
            total.unaligned_4k += s.unaligned_4k;
            total.bytes_written += s.bytes_written;
            for (k, n) in &s.sizes {
                *total.sizes.entry(*k).or_default() += n;
            }
        }
        let ctx = format!("{v}: {} connection(s): {}", stats.len(), total.summary());
        assert!(
            total.count[0] > 0 && total.count[1] > 0,
            "no READ/WRITE; {ctx}"
        );
        assert!(total.count[3] > 0, "the kernel sent no FLUSH; {ctx}");
        assert!(total.fua > 0, "the kernel sent no FUA write; {ctx}");
        assert!(total.count[4] > 0, "no TRIM reached us (fstrim); {ctx}");
        assert!(
            total.bytes_written >= 16 << 20,
            "less than data.bin was written; {ctx}"
        );
        assert_eq!(
            total.count[2],
            stats.len() as u64,
            "one DISC per connection; {ctx}"
        );
        match *v {
            "multiconn" => {
                assert_eq!(
                    stats.len(),
                    4,
                    "nbd-client -C 4 opened {}; {ctx}",
                    stats.len()
                );
                assert!(
                    used.len() >= 2,
                    "requests went over {} connection(s) only; {ctx}",
                    used.len()
                );
            }
            "bs4096" => {
                assert_eq!(stats.len(), 1, "{ctx}");
                assert!(
                    info.contains("logical_block_size=4096"),
                    "the kernel did not take -b 4096: {info}"
                );
                assert_eq!(
                    total.unaligned_4k, 0,
                    "requests not 4 KiB aligned with -b 4096; {ctx}"
                );
            }
            _ => assert_eq!(stats.len(), 1, "{ctx}"),
        }

        // The backing file, on the host.
        servers[i].stop();
        let image = servers[i].disk().to_path_buf();
        assert_fsck_clean(&image);
        let mut files = vec!["/hello.txt".to_string(), "/data.bin".to_string()];
        files.extend((0..40).map(|n| format!("/small/f{n}")));
        let got = debugfs_dump(&image, &files, dir.path());
        assert_eq!(
            String::from_utf8_lossy(&got["/hello.txt"]),
            format!("hello from the linux kernel nbd client, variant {v}\n"),
            "{v}: hello.txt"
        );
        assert_eq!(got["/data.bin"].len(), 16 << 20, "{v}: data.bin size");
        assert_eq!(
            sha256_hex(&got["/data.bin"], dir.path()),
            data_sha,
            "{v}: data.bin on the host differs from what the guest wrote"
        );
        for n in 0..40 {
            assert_eq!(
                String::from_utf8_lossy(&got[&format!("/small/f{n}")]),
                small_text(v, n),
                "{v}: small/f{n}"
            );
        }
        let per_conn: Vec<String> = stats
            .iter()
            .map(|s| format!("{} requests", s.requests()))
            .collect();
        report.push(format!(
            "  {v}: {}\n    connections: [{}]\n    {}\n    READ/WRITE sizes (≤ bytes: count): {:?}",
            info.trim_start_matches(&format!("INFO {v}: ")),
            per_conn.join(", "),
            total.summary(),
            total.sizes
        ));
    }
    println!(
        "kernel client vs urbd serve: guest {guest_s:.0} s, test {:.0} s; e2fsck -fn clean and files \
         identical for all three variants\n{}",
        t_start.elapsed().as_secs_f64(),
        report.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Part 2: failover of a replicated pair under a mounted ext4
// ---------------------------------------------------------------------------

/// Files synced before the Primary is killed.
const SYNCED_BEFORE_KILL: usize = 8;
/// Files synced after the guest recovered, before the host says stop.
const SYNCED_AFTER: usize = 5;

fn synced_numbers(kt: &[String]) -> Vec<usize> {
    kt.iter()
        .filter_map(|l| l.strip_prefix("SYNCED "))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

fn guest_time(line: &str, key: &str) -> f64 {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn failover_pair() {
    let _serial = KERNEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fx) = fixture("failover_pair") else {
        return;
    };
    let t_start = Instant::now();
    let mut pair = Pair::new("C", 128);
    pair.initial_sync();
    let alpha_nbd = tcp(&pair.nbd_addr(Alpha));
    let beta_nbd = tcp(&pair.nbd_addr(Beta));
    let vip = Forwarder::start(Some(alpha_nbd));
    let ctl = Control::start();
    let params = format!(
        "urbd.mode=failover urbd.port={} urbd.ctl={} urbd.export={RES} urbd.timeout=30",
        vip.port, ctl.port
    );
    let mut guest = Guest::boot(&fx, &params, &pair.dir().join("console.log"));

    // ext4 mounted through the virtual IP, the writer running.
    guest.wait_kt(&format!("{SYNCED_BEFORE_KILL} synced files"), |l| {
        l.starts_with(&format!("SYNCED {SYNCED_BEFORE_KILL} "))
    });
    // What the host has seen synced when it pulls the plug: all of it must survive.
    let synced_before = synced_numbers(&guest.kt_lines());

    // The Primary dies; the cluster promotes the other node and moves the virtual IP.
    let t_kill = Instant::now();
    pair.kill9(Alpha);
    vip.move_to(None);
    // Promote as soon as beta has noticed that its peer is gone (as Pacemaker would once the
    // node is fenced), then move the virtual IP.
    pair.wait_status(Beta, "the loss of alpha", Duration::from_secs(60), |j| {
        urbd_tests::pair::peer_of(j).str_at("connection-state") != "Connected"
    });
    pair.adm_ok(Beta, &["primary", RES]);
    vip.move_to(Some(beta_nbd));
    let failover_s = t_kill.elapsed().as_secs_f64();
    ctl.set("moved");
    eprintln!("alpha killed, beta promoted, virtual IP moved in {failover_s:.2} s");

    // The guest notices, recovers, and writes on.
    let remounted = guest.wait_kt("the filesystem back after the failover", |l| {
        l.starts_with("REMOUNTED")
    });
    let t_remounted_host = t_kill.elapsed().as_secs_f64();
    let kt = guest.kt_lines();
    let first_after = synced_numbers(&kt).into_iter().max().unwrap_or(0) + 1;
    let want = first_after + SYNCED_AFTER - 1;
    guest.wait_kt(
        &format!("{SYNCED_AFTER} files synced after the failover"),
        |l| l.starts_with(&format!("SYNCED {want} ")),
    );
    let t_resumed_host = t_kill.elapsed().as_secs_f64();
    ctl.set("stop");
    let (result, _st) = guest.wait_result();
    assert_eq!(
        result,
        "RESULT PASS",
        "guest failed\n{}",
        guest.console_tail()
    );
    let kt = guest.kt_lines();
    let guest_s = guest.booted.elapsed().as_secs_f64();

    // The client-visible outage, on the guest's clock: from the last write+sync completed
    // before the error to the first one completed after the recovery.
    let err_line = kt.iter().find(|l| l.starts_with("IOERROR"));
    let synced: Vec<&String> = kt.iter().filter(|l| l.starts_with("SYNCED ")).collect();
    let mut max_gap = (0.0f64, 0usize);
    for w in synced.windows(2) {
        let gap = guest_time(w[1], "t1") - guest_time(w[0], "t1");
        if gap > max_gap.0 {
            max_gap = (gap, synced_numbers(&[w[1].clone()])[0]);
        }
    }
    let persist = kt
        .iter()
        .find(|l| l.starts_with("PERSIST-RECONNECTED"))
        .cloned()
        .unwrap_or_else(|| "PERSIST-RECONNECTED n/a (no I/O error)".into());
    let fsck = kt
        .iter()
        .find(|l| l.starts_with("FSCK rc="))
        .cloned()
        .unwrap_or_default();
    let mut timeline = Vec::new();
    if let Some(e) = err_line {
        let t_err = guest_time(e, "t");
        for key in [
            "VIP-MOVED",
            "PERSIST-RECONNECTED",
            "DEVICE-BACK",
            "REMOUNTED",
        ] {
            if let Some(l) = kt.iter().find(|l| l.starts_with(key)) {
                timeline.push(format!("{key} +{:.1} s", guest_time(l, "t") - t_err));
            }
        }
    }
    let verified_after = field(&remounted, "verified").unwrap_or("?");

    // The survivor's disk on the host: clean, and every synced file there.
    pair.down(Beta);
    let image = pair.disk(Beta).to_path_buf();
    assert_fsck_clean(&image);
    let manifest: Vec<(String, String)> = synced
        .iter()
        .map(|l| {
            let n = synced_numbers(&[(*l).clone()])[0];
            (format!("/w/f{n}"), field(l, "sha").unwrap().to_string())
        })
        .collect();
    let names: Vec<String> = manifest.iter().map(|(f, _)| f.clone()).collect();
    let got = debugfs_dump(&image, &names, pair.dir());
    for (f, sha) in &manifest {
        assert_eq!(
            &sha256_hex(&got[f], pair.dir()),
            sha,
            "{f} on the survivor differs from what the guest synced"
        );
    }
    for n in &synced_before {
        assert!(
            manifest.iter().any(|(f, _)| *f == format!("/w/f{n}")),
            "file {n}, synced before the kill, is not in the final manifest"
        );
    }
    let conns: Vec<String> = vip
        .stats()
        .iter()
        .map(|s| {
            let who = if s.target == Some(alpha_nbd) {
                "alpha"
            } else {
                "beta"
            };
            format!("{who}: {}", s.summary())
        })
        .collect();
    println!(
        "kernel client through a failover: guest {guest_s:.0} s, test {:.0} s\n  \
         kill -> beta Primary + virtual IP moved: {failover_s:.2} s (host)\n  \
         kill -> filesystem remounted: {t_remounted_host:.1} s; kill -> {SYNCED_AFTER} more \
         files synced: {t_resumed_host:.1} s (host)\n  \
         client-visible outage (longest gap between completed write+sync, guest clock): \
         {:.1} s, ending at file {}\n  \
         guest: {} ; {persist} ; {fsck} ; after failover: {}\n  \
         files synced before the kill: {}, all intact after remount ({verified_after} verified \
         then), {} in total on beta's disk, e2fsck -fn clean\n  connections: {}",
        t_start.elapsed().as_secs_f64(),
        max_gap.0,
        max_gap.1,
        err_line.map(String::as_str).unwrap_or("no I/O error"),
        timeline.join(", "),
        synced_before.len(),
        manifest.len(),
        conns.join(" | ")
    );
}

// ---------------------------------------------------------------------------
// The forwarder itself (no guest needed)
// ---------------------------------------------------------------------------

/// The recording forwarder relays a whole session byte for byte and counts what qemu-io sent.
#[test]
fn forwarder_records_requests() {
    if !urbd_tests::require_tool("forwarder_records_requests", "qemu-io") {
        return;
    }
    let dir = TempDir::new("kernel-fwd");
    let disk = dir.join("d.img");
    make_sparse_disk(&disk, 16);
    let server = Server::start(&disk, &[]);
    let fwd = Forwarder::start(Some(tcp(server.addr())));
    let uri = format!("nbd://127.0.0.1:{}/{}", fwd.port, server.export());
    let o = Cmd::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 1M",
            "-c",
            "write -f -P 0x5b 1M 64k",
        ])
        .args([
            "-c",
            "flush",
            "-c",
            "discard 2M 1M",
            "-c",
            "read -P 0x5a 0 1M",
        ])
        .arg(&uri)
        .ok();
    assert!(!o.stdout.contains("fail"), "{}", o.describe());
    let ok = urbd_tests::tools::wait_until(Duration::from_secs(5), || {
        fwd.stats().first().is_some_and(|s| s.count[2] == 1)
    });
    let st = fwd.stats();
    assert!(ok, "no DISC recorded: {st:?}");
    assert_eq!(st.len(), 1, "{st:?}");
    let s = &st[0];
    assert!(s.parse_error.is_none(), "{s:?}");
    assert_eq!(s.bytes_written, (1 << 20) + (64 << 10), "{s:?}");
    assert!(s.fua >= 1 && s.count[3] >= 1 && s.count[4] >= 1, "{s:?}");
    assert!(s.count[0] >= 1, "{s:?}");
}
