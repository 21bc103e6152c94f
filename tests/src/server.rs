//! Starting and stopping the server under test.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::tools::{wait_timeout, wait_until};

/// How long a server may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `127.0.0.1:0`
    Tcp,
    /// `unix:<dir of the disk>/urbd.sock`
    Unix,
}

#[derive(Clone, Debug)]
pub enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Urbd,
    QemuNbd,
}

/// Path of the urbd binary: `URBD_BIN`, else `<workspace>/target/release/urbd`,
/// else `<workspace>/target/debug/urbd`.
pub fn urbd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("URBD_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "URBD_BIN={} does not exist", p.display());
        return p;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf();
    let mut target_dirs = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        target_dirs.push(PathBuf::from(t));
    }
    target_dirs.push(workspace.join("target"));
    for t in &target_dirs {
        for profile in ["release", "debug"] {
            let p = t.join(profile).join("urbd");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "urbd binary not found (looked in {:?} and $URBD_BIN); \
         run `cargo build --release -p urbd` first",
        target_dirs
    );
}

fn reference_mode() -> bool {
    matches!(std::env::var("URBD_TEST_SERVER").as_deref(), Ok("qemu-nbd"))
}

/// A running server process, killed (and reaped) on drop. If the test is
/// panicking, its stderr is printed.
pub struct Server {
    child: Option<Child>,
    uri: String,
    addr: Addr,
    export: String,
    disk: PathBuf,
    stderr_log: PathBuf,
    kind: Kind,
    /// stdout lines after the ready line (the contract says there are none).
    extra_stdout: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `urbd serve --disk DISK --listen 127.0.0.1:0 EXTRA...`
    pub fn start(disk: &Path, extra_args: &[&str]) -> Server {
        Server::start_with(disk, Listen::Tcp, extra_args)
    }

    pub fn start_with(disk: &Path, listen: Listen, extra_args: &[&str]) -> Server {
        let dir = disk.parent().expect("disk has a parent dir").to_path_buf();
        let export = extra_args
            .iter()
            .position(|a| *a == "--export")
            .map(|i| extra_args[i + 1].to_string())
            .unwrap_or_else(|| "urbd".to_string());
        let sock = dir.join("urbd.sock");
        let _ = fs::remove_file(&sock);
        let stem = disk.file_name().unwrap().to_string_lossy().into_owned();
        let stderr_log = unique(&dir, &format!("server-{stem}"), "stderr.log");
        if reference_mode() {
            return Server::start_qemu_nbd(disk, listen, extra_args, export, sock, stderr_log);
        }
        let listen_arg = match listen {
            Listen::Tcp => "127.0.0.1:0".to_string(),
            Listen::Unix => format!("unix:{}", sock.display()),
        };
        let bin = urbd_bin();
        let mut child = Command::new(&bin)
            .arg("serve")
            .arg("--disk")
            .arg(disk)
            .arg("--listen")
            .arg(&listen_arg)
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(fs::File::create(&stderr_log).unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));

        // Read the ready line on a thread so that we can time out; the
        // thread then keeps draining stdout until the process exits.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let extra_stdout = Arc::new(Mutex::new(Vec::new()));
        let extra = extra_stdout.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let res = r.read_line(&mut line).map(|_| line);
            let _ = tx.send(res);
            let mut rest = String::new();
            while matches!(r.read_line(&mut rest), Ok(n) if n > 0) {
                eprint!("urbd stdout (after ready line): {rest}");
                extra.lock().unwrap().push(std::mem::take(&mut rest));
            }
        });
        let mut server = Server {
            child: Some(child),
            uri: String::new(),
            addr: Addr::Tcp(([127, 0, 0, 1], 0).into()),
            export,
            disk: disk.to_path_buf(),
            stderr_log,
            kind: Kind::Urbd,
            extra_stdout,
        };
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(line)) if !line.is_empty() => line,
            Ok(Ok(_)) => {
                let st = server
                    .child
                    .as_mut()
                    .and_then(|c| wait_timeout(c, Duration::from_secs(2)));
                panic!(
                    "urbd exited ({st:?}) without printing its ready line\n{}",
                    server.stderr_tail()
                );
            }
            Ok(Err(e)) => panic!("reading urbd stdout: {e}\n{}", server.stderr_tail()),
            Err(_) => panic!(
                "urbd did not print its ready line within {READY_TIMEOUT:?}\n{}",
                server.stderr_tail()
            ),
        };
        let line = line.trim_end_matches('\n');
        let prefix = format!("urbd: serving {} as ", disk.display());
        let uri = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}, want prefix {prefix:?}"));
        server.addr = parse_uri(uri, &server.export);
        if let (Listen::Unix, Addr::Unix(p)) = (listen, &server.addr) {
            assert_eq!(p, &sock, "ready line names another socket: {line:?}");
        }
        if let (Listen::Unix, Addr::Tcp(_)) = (listen, &server.addr) {
            panic!("asked for a unix socket, got {line:?}");
        }
        server.uri = uri.to_string();
        server
    }

    fn start_qemu_nbd(
        disk: &Path,
        listen: Listen,
        extra_args: &[&str],
        export: String,
        sock: PathBuf,
        stderr_log: PathBuf,
    ) -> Server {
        let mut cmd = Command::new("qemu-nbd");
        cmd.args([
            "-f",
            "raw",
            "-t",
            "-e",
            "0",
            "--discard=unmap",
            "-x",
            &export,
        ]);
        let mut it = extra_args.iter();
        while let Some(a) = it.next() {
            match *a {
                "--read-only" => {
                    cmd.arg("-r");
                }
                "--export" | "--io-align-bytes" | "--disk-engine" => {
                    it.next();
                }
                other => panic!("reference mode: unknown server arg {other}"),
            }
        }
        let (addr, uri) = match listen {
            Listen::Tcp => {
                // Reference mode only: qemu-nbd cannot bind port 0 and
                // report it, so pick a free port (small race, acceptable).
                let port = TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                cmd.args(["-b", "127.0.0.1", "-p", &port.to_string()]);
                let a: SocketAddr = ([127, 0, 0, 1], port).into();
                (Addr::Tcp(a), format!("nbd://127.0.0.1:{port}/{export}"))
            }
            Listen::Unix => {
                cmd.arg("-k").arg(&sock);
                let u = format!("nbd+unix:///{export}?socket={}", sock.display());
                (Addr::Unix(sock.clone()), u)
            }
        };
        cmd.arg(disk);
        let log = fs::File::create(&stderr_log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn qemu-nbd");
        let server = Server {
            child: Some(child),
            uri,
            addr,
            export,
            disk: disk.to_path_buf(),
            stderr_log,
            kind: Kind::QemuNbd,
            extra_stdout: Arc::new(Mutex::new(Vec::new())),
        };
        let ready = wait_until(READY_TIMEOUT, || match &server.addr {
            Addr::Tcp(a) => TcpStream::connect(a).is_ok(),
            Addr::Unix(p) => UnixStream::connect(p).is_ok(),
        });
        assert!(ready, "qemu-nbd did not start\n{}", server.stderr_tail());
        server
    }

    /// The NBD URI printed by the server.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    pub fn export(&self) -> &str {
        &self.export
    }

    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// False when running in reference mode (qemu-nbd): urbd-specific
    /// assertions (block sizes, exact error codes qemu-nbd does not share)
    /// are skipped then.
    pub fn is_urbd(&self) -> bool {
        self.kind == Kind::Urbd
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server already stopped").id()
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    #[track_caller]
    pub fn assert_alive(&mut self) {
        assert!(
            self.is_alive(),
            "server process died\n{}",
            self.stderr_tail()
        );
    }

    /// stdout lines printed after the ready line (should be none).
    pub fn extra_stdout(&self) -> Vec<String> {
        self.extra_stdout.lock().unwrap().clone()
    }

    /// SIGTERM, then wait (bounded). Panics if it does not exit in time,
    /// or (urbd) if it does not exit with status 0.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Like [`Server::stop`] with another signal (SIGINT).
    pub fn stop_with(&mut self, signal: libc::c_int) -> ExitStatus {
        let st = self.signal_and_wait(signal);
        if self.is_urbd() {
            assert!(
                st.success(),
                "urbd exited with {st} after signal {signal}\n{}",
                self.stderr_tail()
            );
        }
        st
    }

    fn signal_and_wait(&mut self, signal: libc::c_int) -> ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        // SAFETY: kill(2) on our own child's pid; the child has not been
        // reaped yet (we hold the Child), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
        match wait_timeout(&mut child, STOP_TIMEOUT) {
            Some(st) => st,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not exit within {STOP_TIMEOUT:?} of signal {signal}\n{}",
                    self.stderr_tail()
                );
            }
        }
    }

    /// The last part of the server's stderr.
    pub fn stderr_tail(&self) -> String {
        let s = fs::read(&self.stderr_log).unwrap_or_default();
        let s = String::from_utf8_lossy(&s);
        let start = s.len().saturating_sub(16 * 1024);
        let mut start = start;
        while !s.is_char_boundary(start) {
            start += 1;
        }
        format!(
            "--- server stderr ({}) ---\n{}\n--- end server stderr ---",
            self.stderr_log.display(),
            &s[start..]
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.stderr_tail());
        }
    }
}

fn unique(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    for i in 0.. {
        let p = dir.join(format!("{stem}-{i}.{ext}"));
        if !p.exists() {
            return p;
        }
    }
    unreachable!()
}

/// Parse `nbd://127.0.0.1:PORT/NAME` or `nbd+unix:///NAME?socket=/path`.
pub fn parse_uri(uri: &str, export: &str) -> Addr {
    if let Some(rest) = uri.strip_prefix("nbd://") {
        let (hostport, name) = rest
            .split_once('/')
            .unwrap_or_else(|| panic!("URI {uri:?} has no export name"));
        assert_eq!(name, export, "export name in URI {uri:?}");
        let a: SocketAddr = hostport
            .parse()
            .unwrap_or_else(|e| panic!("URI {uri:?}: bad host:port: {e}"));
        assert!(a.ip().is_loopback(), "server not on loopback: {uri}");
        assert_ne!(a.port(), 0, "URI {uri:?} has port 0");
        Addr::Tcp(a)
    } else if let Some(rest) = uri.strip_prefix("nbd+unix:///") {
        let (name, q) = rest
            .split_once("?socket=")
            .unwrap_or_else(|| panic!("URI {uri:?} has no ?socket="));
        assert_eq!(name, export, "export name in URI {uri:?}");
        Addr::Unix(PathBuf::from(q))
    } else {
        panic!("unexpected URI {uri:?}")
    }
}
