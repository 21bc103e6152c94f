//! A replicated pair on this machine: two `urbd run` daemons (nodes `alpha`
//! and `beta`) started and driven through the real `urbdadm`, each with its
//! own run dir and backing image, both on 127.0.0.1 with free ports.
//!
//! ```text
//! let pair = Pair::new("C", 64);
//! pair.initial_sync();                  // create-md, up, wait-connect, primary --force alpha, wait-sync
//! let uri = pair.nbd_uri(Node::Alpha);  // nbd://127.0.0.1:PORT/r0
//! ...
//! pair.down_both();
//! pair.assert_data_identical();         // byte for byte, data regions only
//! ```
//!
//! Metadata lives at the end of each backing file; the data region is the
//! first `size-bytes` bytes ([`Pair::data_size`], learned from `create-md`).
//! On drop: `urbdadm down` on both nodes (bounded), then SIGKILL for any
//! `urbd run` process of this pair still alive; when the test is panicking,
//! the tail of both daemons' logs is printed.

use std::fmt;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::json::Json;
use crate::server::{urbd_bin, Addr};
use crate::tools::{wait_timeout, wait_until, Cmd, Output};
use crate::util::{make_sparse_disk, read_at, TempDir};

/// The resource name used by every pair (also the NBD export name).
pub const RES: &str = "r0";

/// Bound for one `urbdadm` call (`wait-*` calls get their own timeout + this).
pub const ADM_TIMEOUT: Duration = Duration::from_secs(60);

/// One of the two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Alpha,
    Beta,
}

pub use Node::{Alpha, Beta};

impl Node {
    pub fn name(self) -> &'static str {
        match self {
            Alpha => "alpha",
            Beta => "beta",
        }
    }

    pub fn peer(self) -> Node {
        match self {
            Alpha => Beta,
            Beta => Alpha,
        }
    }

    fn idx(self) -> usize {
        match self {
            Alpha => 0,
            Beta => 1,
        }
    }

    pub const BOTH: [Node; 2] = [Alpha, Beta];
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[net]` timings written to the config. Defaults are shorter than the
/// product's so that tests notice losses and reconnect quickly, but not so
/// short that a busy 2-core machine makes links flap.
#[derive(Clone, Debug)]
pub struct NetTimings {
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    pub timeout_ms: u64,
    pub connect_interval_ms: u64,
}

impl Default for NetTimings {
    fn default() -> Self {
        NetTimings {
            ping_interval_ms: 1000,
            ping_timeout_ms: 1000,
            timeout_ms: 4000,
            connect_interval_ms: 300,
        }
    }
}

/// Path of `urbdadm`: `URBDADM_BIN`, else next to the urbd binary.
pub fn urbdadm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("URBDADM_BIN") {
        return PathBuf::from(p);
    }
    let urbd = urbd_bin();
    let p = urbd.with_file_name("urbdadm");
    assert!(
        p.is_file(),
        "urbdadm not found next to {} (run `cargo build --release -p urbd`)",
        urbd.display()
    );
    p
}

/// Free TCP ports on 127.0.0.1 (all bound at once so they differ; a small
/// race with other processes remains, as with any "find a free port").
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr().unwrap().port();
    }
    ports
}

pub struct Pair {
    dir: TempDir,
    urbd: PathBuf,
    adm: PathBuf,
    protocol: String,
    secrets: [String; 2],
    net: NetTimings,
    config_dirs: [PathBuf; 2],
    run_dirs: [PathBuf; 2],
    disks: [PathBuf; 2],
    repl_ports: [u16; 2],
    nbd_ports: [u16; 2],
    data_size: Option<u64>,
    /// TOML appended to both config files (e.g. a `[resync]` table).
    extra_config: String,
}

impl Pair {
    /// A pair with `protocol` ("A" | "B" | "C") and two sparse images of
    /// `size_mib` MiB; writes the config (one config dir for both nodes).
    pub fn new(protocol: &str, size_mib: u64) -> Pair {
        Pair::with_net(protocol, size_mib, NetTimings::default())
    }

    pub fn with_net(protocol: &str, size_mib: u64, net: NetTimings) -> Pair {
        let dir = TempDir::new(&format!("pair-{}", protocol.to_lowercase()));
        let conf = dir.join("conf");
        fs::create_dir_all(&conf).unwrap();
        let run_dirs = [dir.join("run-alpha"), dir.join("run-beta")];
        for r in &run_dirs {
            fs::create_dir_all(r).unwrap();
        }
        let disks = [dir.join("alpha.img"), dir.join("beta.img")];
        for d in &disks {
            make_sparse_disk(d, size_mib);
        }
        let [pa, pb, na, nb] = free_ports::<4>();
        let secret = format!("urbd-test-secret-{}", std::process::id());
        let pair = Pair {
            urbd: urbd_bin(),
            adm: urbdadm_bin(),
            protocol: protocol.to_string(),
            secrets: [secret.clone(), secret],
            net,
            config_dirs: [conf.clone(), conf],
            run_dirs,
            disks,
            repl_ports: [pa, pb],
            nbd_ports: [na, nb],
            data_size: None,
            extra_config: String::new(),
            dir,
        };
        pair.write_configs();
        pair
    }

    /// The scratch directory (for source files, fio state, ...).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Give `node` its own config dir whose file carries `secret` (the other
    /// node keeps its own). Takes effect at the next `up` of that node.
    pub fn set_secret(&mut self, node: Node, secret: &str) {
        let own = self.dir.join(&format!("conf-{}", node.name()));
        fs::create_dir_all(&own).unwrap();
        self.config_dirs[node.idx()] = own;
        self.secrets[node.idx()] = secret.to_string();
        self.write_configs();
    }

    pub fn secret(&self, node: Node) -> &str {
        &self.secrets[node.idx()]
    }

    /// The TOML of the resource as `node` sees it.
    pub fn config_text(&self, node: Node) -> String {
        let mut s = format!(
            "# written by urbd-tests (pair.rs)\nprotocol = \"{}\"\nsecret = \"{}\"\nauto-promote = false\n",
            self.protocol,
            self.secrets[node.idx()]
        );
        for n in Node::BOTH {
            s.push_str(&format!(
                "\n[[node]]\nname = \"{}\"\naddress = \"127.0.0.1:{}\"\ndisk = \"{}\"\nnbd = \"127.0.0.1:{}\"\n",
                n.name(),
                self.repl_ports[n.idx()],
                self.disks[n.idx()].display(),
                self.nbd_ports[n.idx()],
            ));
        }
        let n = &self.net;
        s.push_str(&format!(
            "\n[net]\nping-interval-ms = {}\nping-timeout-ms = {}\ntimeout-ms = {}\nconnect-interval-ms = {}\n",
            n.ping_interval_ms, n.ping_timeout_ms, n.timeout_ms, n.connect_interval_ms
        ));
        s.push_str(&self.extra_config);
        s
    }

    /// Appends `toml` (e.g. a `[resync]` table) to both nodes' config files; takes effect at
    /// the next `up`.
    pub fn set_extra_config(&mut self, toml: &str) {
        self.extra_config = format!("\n{toml}");
        self.write_configs();
    }

    fn write_configs(&self) {
        for node in Node::BOTH {
            let p = self.config_dirs[node.idx()].join(format!("{RES}.toml"));
            fs::write(&p, self.config_text(node))
                .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        }
    }

    pub fn disk(&self, node: Node) -> &Path {
        &self.disks[node.idx()]
    }

    pub fn run_dir(&self, node: Node) -> &Path {
        &self.run_dirs[node.idx()]
    }

    pub fn config_dir(&self, node: Node) -> &Path {
        &self.config_dirs[node.idx()]
    }

    pub fn log_path(&self, node: Node) -> PathBuf {
        self.run_dirs[node.idx()].join(format!("{RES}.log"))
    }

    /// The daemon log of `node` (empty if none yet).
    pub fn log(&self, node: Node) -> String {
        String::from_utf8_lossy(&fs::read(self.log_path(node)).unwrap_or_default()).into_owned()
    }

    /// The last `n` lines of both daemons' logs, labelled.
    pub fn logs_tail(&self, n: usize) -> String {
        let mut out = String::new();
        for node in Node::BOTH {
            let log = self.log(node);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(n)..].join("\n");
            out.push_str(&format!(
                "--- last {n} lines of {} ({node}) ---\n{tail}\n",
                self.log_path(node).display()
            ));
        }
        out
    }

    /// `host:port` of `node`'s NBD export.
    pub fn nbd_address(&self, node: Node) -> String {
        format!("127.0.0.1:{}", self.nbd_ports[node.idx()])
    }

    pub fn nbd_addr(&self, node: Node) -> Addr {
        let a: SocketAddr = self.nbd_address(node).parse().unwrap();
        Addr::Tcp(a)
    }

    /// `nbd://127.0.0.1:PORT/r0`
    pub fn nbd_uri(&self, node: Node) -> String {
        format!("nbd://{}/{RES}", self.nbd_address(node))
    }

    /// A `urbdadm` command line for `node` (global options filled in).
    pub fn adm_cmd(&self, node: Node, args: &[&str]) -> Cmd {
        Cmd::new(&self.adm.to_string_lossy())
            .arg("--config-dir")
            .arg(&self.config_dirs[node.idx()])
            .arg("--node")
            .arg(node.name())
            .arg("--run-dir")
            .arg(&self.run_dirs[node.idx()])
            .args(args)
            .env("URBD_BIN", &self.urbd.to_string_lossy())
            .env(
                "RUST_LOG",
                &std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .env("COLUMNS", "200")
            .timeout(ADM_TIMEOUT)
    }

    /// Run `urbdadm ARGS` as `node`, whatever the outcome.
    pub fn adm(&self, node: Node, args: &[&str]) -> Output {
        self.adm_cmd(node, args).output()
    }

    /// Run `urbdadm ARGS` as `node` and assert exit status 0 (the panic
    /// carries the output and both logs).
    #[track_caller]
    pub fn adm_ok(&self, node: Node, args: &[&str]) -> Output {
        let o = self.adm(node, args);
        assert!(
            o.status.success(),
            "urbdadm ({node}) failed\n{}\n{}",
            o.describe(),
            self.logs_tail(40)
        );
        o
    }

    /// Run `urbdadm ARGS` as `node` and assert exit code `code`.
    #[track_caller]
    pub fn adm_exit(&self, node: Node, args: &[&str], code: i32) -> Output {
        let o = self.adm(node, args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "urbdadm ({node}): want exit code {code}\n{}\n{}",
            o.describe(),
            self.logs_tail(40)
        );
        o
    }

    /// `create-md` on `node`; records and returns the data size it reports
    /// ("... (N data bytes) ...").
    #[track_caller]
    pub fn create_md(&mut self, node: Node) -> u64 {
        let o = self.adm_ok(node, &["create-md", RES]);
        let size = parse_data_bytes(&o.stdout)
            .unwrap_or_else(|| panic!("create-md did not say its data size\n{}", o.describe()));
        assert!(size > 0, "create-md: data size 0\n{}", o.describe());
        let file_len = fs::metadata(self.disk(node)).unwrap().len();
        assert!(
            size < file_len,
            "create-md: data size {size} not below the file size {file_len} (internal metadata \
             must take room at the end)"
        );
        if let Some(prev) = self.data_size {
            assert_eq!(prev, size, "the two nodes' data sizes differ");
        }
        self.data_size = Some(size);
        size
    }

    pub fn create_md_both(&mut self) -> u64 {
        self.create_md(Alpha);
        self.create_md(Beta)
    }

    /// Size of the data region (after `create_md`).
    pub fn data_size(&self) -> u64 {
        self.data_size
            .expect("data size unknown: call create_md first")
    }

    #[track_caller]
    pub fn up(&self, node: Node) {
        self.adm_ok(node, &["up", RES]);
    }

    /// `urbdadm ARGS`, retried for up to 10 s while the refusal is a transient one (an NBD
    /// client that just closed its socket is detached a moment later; requests still in flight;
    /// another state change in progress); asserts success in the end.
    #[track_caller]
    pub fn adm_ok_settled(&self, node: Node, args: &[&str]) -> Output {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = self.adm(node, args);
            let transient = ["client(s) attached", "in flight", "in progress"]
                .iter()
                .any(|t| o.stderr.contains(t) || o.stdout.contains(t));
            if o.status.success() {
                return o;
            }
            if !transient || Instant::now() >= deadline {
                panic!(
                    "urbdadm {} on {node} failed:\n{}\n{}",
                    args.join(" "),
                    o.describe(),
                    self.logs_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `urbdadm secondary` (transient refusals retried, see [`Pair::adm_ok_settled`]).
    #[track_caller]
    pub fn secondary(&self, node: Node) {
        self.adm_ok_settled(node, &["secondary", RES]);
    }

    #[track_caller]
    pub fn down(&self, node: Node) {
        self.adm_ok_settled(node, &["down", RES]);
        assert!(
            self.wait_daemon_gone(node, Duration::from_secs(10)),
            "`down` returned but the urbd run process of {node} is still alive\n{}",
            self.logs_tail(30)
        );
    }

    /// `down` the Primary side first (alpha), then beta.
    #[track_caller]
    pub fn down_both(&self) {
        self.down(Alpha);
        self.down(Beta);
    }

    #[track_caller]
    pub fn up_both(&self) {
        self.up(Alpha);
        self.up(Beta);
    }

    /// `wait-connect --timeout-s N` (asserts success).
    #[track_caller]
    pub fn wait_connect(&self, node: Node, timeout_s: u64) {
        let t = timeout_s.to_string();
        self.adm_cmd(node, &["wait-connect", RES, "--timeout-s", &t])
            .timeout(Duration::from_secs(timeout_s + 30))
            .output()
            .assert_ok_with(&self.logs_tail(40));
    }

    /// `wait-sync --timeout-s N` (asserts success).
    #[track_caller]
    pub fn wait_sync(&self, node: Node, timeout_s: u64) {
        let t = timeout_s.to_string();
        self.adm_cmd(node, &["wait-sync", RES, "--timeout-s", &t])
            .timeout(Duration::from_secs(timeout_s + 30))
            .output()
            .assert_ok_with(&self.logs_tail(40));
    }

    /// `up` both, wait until connected, `primary --force` on alpha, wait
    /// until in sync on both. `create_md` must have been run.
    #[track_caller]
    pub fn start_and_sync(&self) {
        self.up_both();
        self.wait_connect(Alpha, 30);
        self.wait_connect(Beta, 30);
        self.adm_ok(Alpha, &["primary", "--force", RES]);
        self.wait_sync(Alpha, 120);
        self.wait_sync(Beta, 60);
    }

    /// `create-md` on both, then [`Pair::start_and_sync`].
    #[track_caller]
    pub fn initial_sync(&mut self) {
        self.create_md_both();
        self.start_and_sync();
    }

    /// `status --json` of `node`, parsed.
    #[track_caller]
    pub fn status(&self, node: Node) -> Json {
        let o = self.adm_ok(node, &["status", RES, "--json"]);
        Json::parse_or_panic("urbdadm status --json", &o.stdout)
    }

    /// The (only) peer entry of `node`'s status.
    #[track_caller]
    pub fn peer_status(&self, node: Node) -> Json {
        peer_of(&self.status(node))
    }

    /// Poll `status --json` of `node` until `pred` holds; panics after
    /// `timeout` with the last status and the logs.
    #[track_caller]
    pub fn wait_status(
        &self,
        node: Node,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Json) -> bool,
    ) -> Json {
        let deadline = Instant::now() + timeout;
        loop {
            let o = self.adm(node, &["status", RES, "--json"]);
            let last = if o.status.success() {
                let j = Json::parse_or_panic("urbdadm status --json", &o.stdout);
                if pred(&j) {
                    return j;
                }
                j.to_string()
            } else {
                o.describe()
            };
            if Instant::now() >= deadline {
                panic!(
                    "{node}: waited {timeout:?} for {what}; last status:\n{last}\n{}",
                    self.logs_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Pids of the live `urbd run` processes of `node` (found by their
    /// `--run-dir`, which is unique to this pair and node).
    pub fn daemon_pids(&self, node: Node) -> Vec<i32> {
        daemon_pids_for(&self.run_dirs[node.idx()])
    }

    /// Wait until no `urbd run` process of `node` is alive.
    pub fn wait_daemon_gone(&self, node: Node, timeout: Duration) -> bool {
        wait_until(timeout, || self.daemon_pids(node).is_empty())
    }

    /// SIGKILL the daemon of `node` and wait until it is gone.
    #[track_caller]
    pub fn kill9(&self, node: Node) {
        let pids = self.daemon_pids(node);
        assert!(
            !pids.is_empty(),
            "kill9 {node}: no urbd run process with --run-dir {}",
            self.run_dir(node).display()
        );
        for pid in pids {
            // SAFETY: kill(2) with a pid we just read from /proc whose
            // cmdline names this node's run dir.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        assert!(
            self.wait_daemon_gone(node, Duration::from_secs(10)),
            "kill9 {node}: the daemon survived SIGKILL for 10 s"
        );
    }

    /// The data region of `node`'s backing file.
    pub fn data_region(&self, node: Node) -> Vec<u8> {
        read_at(self.disk(node), 0, self.data_size() as usize)
    }

    /// Assert both data regions identical byte for byte; returns alpha's.
    #[track_caller]
    pub fn assert_data_identical(&self) -> Vec<u8> {
        let a = self.data_region(Alpha);
        let b = self.data_region(Beta);
        assert_eq!(a.len(), b.len());
        if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
            let diff_bytes = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            let last = a.iter().zip(&b).rposition(|(x, y)| x != y).unwrap_or(i);
            panic!(
                "data regions differ: {diff_bytes} bytes, first at offset {i} (4K block {}), last \
                 at {last}; alpha {:#04x}, beta {:#04x}\n{}",
                i / 4096,
                a[i],
                b[i],
                self.logs_tail(30)
            );
        }
        a
    }

    /// `urbdadm events r0` of `node` in the background (stdout and stderr to
    /// a file); stop it with [`EventStream::stop`] (also on drop).
    pub fn events(&self, node: Node) -> EventStream {
        let log = self.dir.join(&format!(
            "events-{}-{}.txt",
            node.name(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let child = self.adm_cmd(node, &["events", RES]).spawn_logged(&log);
        EventStream {
            child: Some(child),
            path: log,
        }
    }
}

/// A running `urbdadm events`.
pub struct EventStream {
    child: Option<std::process::Child>,
    path: PathBuf,
}

impl EventStream {
    /// Everything printed so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.path).unwrap_or_default()).into_owned()
    }

    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_string).collect()
    }

    /// Wait until a line at index >= `from` satisfies `pred`; returns its
    /// index. Panics after `timeout` with everything printed.
    #[track_caller]
    pub fn wait_line(
        &self,
        what: &str,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> usize {
        let mut found = None;
        let ok = wait_until(timeout, || {
            found = self
                .lines()
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| pred(l))
                .map(|(i, _)| i);
            found.is_some()
        });
        assert!(
            ok,
            "events: no line {what} (from line {from}) within {timeout:?}; got:\n{}",
            self.text()
        );
        found.unwrap()
    }

    /// Kill it (if still running) and return everything it printed.
    pub fn stop(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = wait_timeout(&mut c, Duration::from_secs(5));
        }
        self.text()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.stop();
    }
}

trait AssertOk {
    fn assert_ok_with(self, context: &str) -> Output;
}

impl AssertOk for Output {
    #[track_caller]
    fn assert_ok_with(self, context: &str) -> Output {
        assert!(
            self.status.success(),
            "command failed\n{}\n{context}",
            self.describe()
        );
        self
    }
}

/// The single peer entry of a status object.
#[track_caller]
pub fn peer_of(status: &Json) -> Json {
    let peers = status.get("peers").as_array();
    assert_eq!(peers.len(), 1, "want exactly one peer in status {status}");
    peers[0].clone()
}

/// "... (12345 data bytes) ..." → 12345
fn parse_data_bytes(text: &str) -> Option<u64> {
    let i = text.find(" data bytes")?;
    let before = &text[..i];
    let start = before
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |j| j + 1);
    before[start..].parse().ok()
}

/// Live (not zombie) processes whose command line is `... run ... --run-dir
/// DIR ...` (or `--run-dir=DIR`).
pub fn daemon_pids_for(run_dir: &Path) -> Vec<i32> {
    let want = run_dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // Zombies have an empty cmdline; processes that vanished fail to read.
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.len() < 2 || !args[0].ends_with("urbd") || !args.iter().any(|a| a == "run") {
            continue;
        }
        let names_dir = args.windows(2).any(|w| w[0] == "--run-dir" && w[1] == want)
            || args.iter().any(|a| *a == format!("--run-dir={want}"));
        if names_dir {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for Pair {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("{}", self.logs_tail(80));
        }
        // `urbdadm down` on both (never panics here: plain Command with a bound).
        for node in Node::BOTH {
            let spawned = Command::new(&self.adm)
                .arg("--config-dir")
                .arg(&self.config_dirs[node.idx()])
                .arg("--node")
                .arg(node.name())
                .arg("--run-dir")
                .arg(&self.run_dirs[node.idx()])
                .args(["down", RES])
                .env("URBD_BIN", &self.urbd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            if let Ok(mut c) = spawned {
                if wait_timeout(&mut c, Duration::from_secs(15)).is_none() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        // Whatever survived (after a grace period to exit): SIGKILL (bounded).
        for node in Node::BOTH {
            self.wait_daemon_gone(node, Duration::from_secs(5));
            for _ in 0..3 {
                let pids = self.daemon_pids(node);
                if pids.is_empty() {
                    break;
                }
                eprintln!("pair drop: killing leftover urbd run of {node}: {pids:?}");
                for pid in pids {
                    // SAFETY: a pid read from /proc whose cmdline names this
                    // pair's run dir.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                self.wait_daemon_gone(node, Duration::from_secs(3));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_create_md_size() {
        let s = "r0: metadata created on /x/a.img (66846720 data bytes); start it with ...";
        assert_eq!(parse_data_bytes(s), Some(66_846_720));
        assert_eq!(parse_data_bytes("nothing"), None);
    }

    #[test]
    fn ports_differ() {
        let p = free_ports::<4>();
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(p[i], p[j]);
            }
        }
    }
}
